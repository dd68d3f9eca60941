//! Enrollment rules: whether a NodeApproval may be executed, checked before anything
//! is done on the server. Pure: no Kubernetes, no Headscale.

use std::time::Duration;

use crate::api::server::EnrollmentSpec;

/// What an approval asks for, in the terms the rules speak.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request<'a> {
    pub user: Option<&'a str>,
    pub tags: &'a [String],
    pub hostname: Option<&'a str>,
    /// Pre-auth keys only.
    pub key: Option<KeyRequest>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyRequest {
    pub lifetime: Duration,
    pub reusable: bool,
}

/// A broken rule: `rule` is the field of `spec.enrollment` that refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
}

fn violation(rule: &'static str, message: String) -> Result<(), Violation> {
    Err(Violation { rule, message })
}

/// Checks `req` against `rules`. `user_nodes` is how many nodes the requested user
/// owns on the server now (ignored unless a quota is set and a user is requested).
pub fn check(rules: &EnrollmentSpec, req: &Request<'_>, user_nodes: usize) -> Result<(), Violation> {
    if let Some(user) = req.user
        && !rules.allowed_users.is_empty()
        && !rules.allowed_users.iter().any(|u| u == user)
    {
        return violation(
            "allowedUsers",
            format!(
                "user {user:?} is not in the server's spec.enrollment.allowedUsers {:?}",
                rules.allowed_users
            ),
        );
    }
    if !rules.allowed_tags.is_empty()
        && let Some(tag) = req.tags.iter().find(|t| !rules.allowed_tags.contains(t))
    {
        return violation(
            "allowedTags",
            format!(
                "tag {tag:?} is not in the server's spec.enrollment.allowedTags {:?}",
                rules.allowed_tags
            ),
        );
    }
    if !rules.hostname_patterns.is_empty() {
        match req.hostname {
            None => {
                return violation(
                    "hostnamePatterns",
                    "the server restricts hostnames (spec.enrollment.hostnamePatterns) and the approval names none; set spec.hostname".into(),
                );
            }
            Some(h) if !rules.hostname_patterns.iter().any(|p| glob_match(p, h)) => {
                return violation(
                    "hostnamePatterns",
                    format!(
                        "hostname {h:?} matches none of the server's spec.enrollment.hostnamePatterns {:?}",
                        rules.hostname_patterns
                    ),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(user) = req.user
        && rules.max_nodes_per_user > 0
        && user_nodes >= rules.max_nodes_per_user as usize
    {
        return violation(
            "maxNodesPerUser",
            format!(
                "user {user:?} owns {user_nodes} node(s); the server's spec.enrollment.maxNodesPerUser is {}",
                rules.max_nodes_per_user
            ),
        );
    }
    if let Some(key) = &req.key {
        if key.reusable && !rules.allow_reusable_keys {
            return violation(
                "allowReusableKeys",
                "reusable pre-auth keys are not allowed on this server (spec.enrollment.allowReusableKeys is false)".into(),
            );
        }
        // One reusable key lets in any number of the user's nodes: it cannot be held to
        // a quota. (A tagged key's nodes are not the user's: no quota applies.)
        if key.reusable && rules.max_nodes_per_user > 0 && req.user.is_some() && req.tags.is_empty() {
            return violation(
                "maxNodesPerUser",
                format!(
                    "a reusable pre-auth key cannot be held to the server's spec.enrollment.maxNodesPerUser ({}): every node that uses it is let in; approve single-use keys",
                    rules.max_nodes_per_user
                ),
            );
        }
        match parse_duration(&rules.max_pre_auth_key_lifetime) {
            Some(max) if max.is_zero() => {
                return violation(
                    "maxPreAuthKeyLifetime",
                    "the server allows no pre-auth keys (spec.enrollment.maxPreAuthKeyLifetime is 0)".into(),
                );
            }
            Some(max) if key.lifetime > max => {
                return violation(
                    "maxPreAuthKeyLifetime",
                    format!(
                        "the key lifetime {} is longer than the server's spec.enrollment.maxPreAuthKeyLifetime {}",
                        format_duration(key.lifetime),
                        rules.max_pre_auth_key_lifetime
                    ),
                );
            }
            Some(_) => {}
            // A limit that cannot be read limits nothing: refuse rather than mint unbounded.
            None => {
                return violation(
                    "maxPreAuthKeyLifetime",
                    format!(
                        "the server's spec.enrollment.maxPreAuthKeyLifetime {:?} is not a usable duration; no key is minted until it is fixed",
                        rules.max_pre_auth_key_lifetime
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Whether the quota needs the user's node count (so the count is fetched only then).
pub fn needs_node_count(rules: &EnrollmentSpec, req: &Request<'_>) -> bool {
    req.user.is_some() && rules.max_nodes_per_user > 0
}

/// `*` matches any run of characters, `?` one; case-insensitive (hostnames are).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Durations are parsed as everywhere else in the operator (Go's units plus `d`, `w`).
pub use crate::render::parse_duration;

/// [`parse_duration`], where a value too large to hold (`99999999999999999999h`, or
/// parts that add up past `u64` milliseconds) is [`Duration::MAX`] rather than
/// unreadable: it means "very long", and reading it as anything shorter could weaken a
/// limit or a safety hold. `None` only for text that is no duration at all.
pub fn parse_duration_saturating(text: &str) -> Option<Duration> {
    if let Some(d) = parse_duration(text) {
        return Some(d);
    }
    // The same grammar as parse_duration, with no bound on the numbers.
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        rest = &rest[digits..];
        let len = if rest.starts_with("ms") {
            2
        } else if rest.starts_with(['s', 'm', 'h', 'd', 'w']) {
            1
        } else {
            return None;
        };
        rest = &rest[len..];
    }
    Some(Duration::MAX)
}

/// `90m` -> `1h30m0s`-style text for messages.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(f: impl FnOnce(&mut EnrollmentSpec)) -> EnrollmentSpec {
        let mut r = EnrollmentSpec::default();
        f(&mut r);
        r
    }

    fn key(lifetime: &str, reusable: bool) -> Option<KeyRequest> {
        Some(KeyRequest {
            lifetime: parse_duration(lifetime).unwrap(),
            reusable,
        })
    }

    #[test]
    fn each_rule_refuses_with_its_name() {
        let tags = vec!["tag:web".to_string()];
        let other = vec!["tag:db".to_string()];
        let none: Vec<String> = vec![];
        #[rustfmt::skip]
        let table: Vec<(&str, EnrollmentSpec, Request<'_>, usize, Option<&str>)> = vec![
            ("defaults allow a user", EnrollmentSpec::default(), Request { user: Some("alice"), ..Default::default() }, 100, None),
            ("user allowed", rules(|r| r.allowed_users = vec!["alice".into()]), Request { user: Some("alice"), ..Default::default() }, 0, None),
            ("user not allowed", rules(|r| r.allowed_users = vec!["alice".into()]), Request { user: Some("bob"), ..Default::default() }, 0, Some("allowedUsers")),
            ("tag-only request ignores allowedUsers", rules(|r| r.allowed_users = vec!["alice".into()]), Request { tags: &tags, ..Default::default() }, 0, None),
            ("tag allowed", rules(|r| r.allowed_tags = vec!["tag:web".into()]), Request { tags: &tags, ..Default::default() }, 0, None),
            ("tag not allowed", rules(|r| r.allowed_tags = vec!["tag:web".into()]), Request { tags: &other, ..Default::default() }, 0, Some("allowedTags")),
            ("no tags with allowedTags", rules(|r| r.allowed_tags = vec!["tag:web".into()]), Request { user: Some("a"), tags: &none, ..Default::default() }, 0, None),
            ("hostname matches", rules(|r| r.hostname_patterns = vec!["web-*".into()]), Request { user: Some("a"), hostname: Some("Web-01"), ..Default::default() }, 0, None),
            ("hostname does not match", rules(|r| r.hostname_patterns = vec!["web-*".into()]), Request { user: Some("a"), hostname: Some("db-01"), ..Default::default() }, 0, Some("hostnamePatterns")),
            ("hostname missing", rules(|r| r.hostname_patterns = vec!["web-*".into()]), Request { user: Some("a"), ..Default::default() }, 0, Some("hostnamePatterns")),
            ("under quota", rules(|r| r.max_nodes_per_user = 2), Request { user: Some("a"), ..Default::default() }, 1, None),
            ("at quota", rules(|r| r.max_nodes_per_user = 2), Request { user: Some("a"), ..Default::default() }, 2, Some("maxNodesPerUser")),
            ("quota 0 is unlimited", rules(|r| r.max_nodes_per_user = 0), Request { user: Some("a"), ..Default::default() }, 999, None),
            ("key within lifetime", EnrollmentSpec::default(), Request { user: Some("a"), key: key("24h", false), ..Default::default() }, 0, None),
            ("key too long", EnrollmentSpec::default(), Request { user: Some("a"), key: key("2d", false), ..Default::default() }, 0, Some("maxPreAuthKeyLifetime")),
            ("reusable refused by default", EnrollmentSpec::default(), Request { user: Some("a"), key: key("1h", true), ..Default::default() }, 0, Some("allowReusableKeys")),
            ("reusable allowed", rules(|r| r.allow_reusable_keys = true), Request { user: Some("a"), key: key("1h", true), ..Default::default() }, 0, None),
            ("unreadable limit refuses", rules(|r| r.max_pre_auth_key_lifetime = "99999999999999999999h".into()), Request { user: Some("a"), key: key("1h", false), ..Default::default() }, 0, Some("maxPreAuthKeyLifetime")),
            ("reusable under a quota", rules(|r| { r.allow_reusable_keys = true; r.max_nodes_per_user = 5 }), Request { user: Some("a"), key: key("1h", true), ..Default::default() }, 0, Some("maxNodesPerUser")),
            ("tagged reusable under a quota", rules(|r| { r.allow_reusable_keys = true; r.max_nodes_per_user = 5 }), Request { tags: &tags, key: key("1h", true), ..Default::default() }, 0, None),
            ("single-use under a quota", rules(|r| r.max_nodes_per_user = 5), Request { user: Some("a"), key: key("1h", false), ..Default::default() }, 0, None),
            ("a lifetime too large to hold", EnrollmentSpec::default(), Request { user: Some("a"), key: Some(KeyRequest { lifetime: Duration::MAX, reusable: false }), ..Default::default() }, 0, Some("maxPreAuthKeyLifetime")),
            ("limit 0 allows no key", rules(|r| r.max_pre_auth_key_lifetime = "0".into()), Request { user: Some("a"), key: key("1h", false), ..Default::default() }, 0, Some("maxPreAuthKeyLifetime")),
        ];
        for (name, rules, req, count, want) in table {
            let got = check(&rules, &req, count).err().map(|v| v.rule);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn messages_name_the_rule_field() {
        let r = rules(|r| r.allowed_users = vec!["alice".into()]);
        let v = check(
            &r,
            &Request {
                user: Some("bob"),
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
        assert!(
            v.message.contains("spec.enrollment.allowedUsers"),
            "{}",
            v.message
        );
    }

    #[test]
    fn a_reusable_key_under_a_quota_says_why() {
        let r = rules(|r| {
            r.allow_reusable_keys = true;
            r.max_nodes_per_user = 2
        });
        let v = check(
            &r,
            &Request {
                user: Some("alice"),
                key: key("1h", true),
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
        assert_eq!(v.rule, "maxNodesPerUser");
        assert!(
            v.message.contains("reusable pre-auth key cannot be held"),
            "{}",
            v.message
        );
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "anything", true),
            ("web-*", "web-1", true),
            ("web-*", "db-1", false),
            ("*.corp", "a.b.corp", true),
            ("n?de", "node", true),
            ("n?de", "nooode", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} {t}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90d"), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m0s");
    }

    #[test]
    fn a_duration_too_large_to_hold_is_the_longest_not_unreadable() {
        assert_eq!(parse_duration_saturating("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration_saturating("0"), Some(Duration::ZERO));
        assert_eq!(
            parse_duration_saturating("99999999999999999999h"),
            Some(Duration::MAX)
        );
        assert_eq!(parse_duration("99999999999w"), None, "past u64 milliseconds");
        assert_eq!(parse_duration_saturating("1h99999999999w"), Some(Duration::MAX));
        for bad in ["", "h", "5x", "1h5", "ms"] {
            assert_eq!(parse_duration_saturating(bad), None, "{bad}");
        }
    }
}
