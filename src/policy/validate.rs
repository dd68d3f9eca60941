//! Local checks of a merged policy: the mistakes users make most, found before the
//! policy reaches Headscale and reported against the fragment that made them.
//!
//! Every [`Severity::Error`] is something Headscale 0.29 rejects too (its checks in
//! `hscontrol/policy/v2/types.go` were read for each one); when in doubt a check
//! stays silent and leaves the judgement to Headscale, so valid syntax
//! (`autogroup:*`, `*`, host aliases, IPs and CIDRs, `tag:x:22`, `group:x:*`,
//! e-mail addresses, `user@`, SSH login names such as `root`) is never reported.
//! A [`Severity::Warning`] is a rule Headscale accepts that cannot do what was meant
//! (no `action`, an empty `src`).
//!
//! The test tables were run through a real Headscale 0.29.2 (`POST
//! /api/v1/policy/check`): it rejected every case reported as an error, accepted every
//! warning case, and accepted the valid fixtures given matching users and nodes.
//!
//! Not checked here, left to Headscale: unknown keys, users that do not exist,
//! protocols and port ranges in detail, which autogroups fit where, and the
//! `tests` outcomes.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use super::alias::{self, Alias};
use super::merge::{Entry, Merged, Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Headscale would reject the policy.
    Error,
    /// Headscale accepts it, but it cannot be what was meant.
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// `group:x` used but not defined in `groups`.
    UndefinedGroup,
    /// `tag:x` used but not defined in `tagOwners`.
    UndefinedTag,
    /// A bare name where a user (`name@` or an e-mail address, Headscale 0.26+) or a
    /// host from `hosts` belongs.
    UserWithoutAt,
    /// An `acls`, `grants`, `ssh` or `nodeAttrs` entry with a missing, empty or
    /// malformed part.
    MalformedRule,
    /// A `tests` or `sshTests` entry with a missing or malformed part.
    MalformedTest,
}

impl FindingKind {
    /// Stable PascalCase name for conditions, Events and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            FindingKind::UndefinedGroup => "UndefinedGroup",
            FindingKind::UndefinedTag => "UndefinedTag",
            FindingKind::UserWithoutAt => "UserWithoutAt",
            FindingKind::MalformedRule => "MalformedRule",
            FindingKind::MalformedTest => "MalformedTest",
        }
    }
}

/// One thing wrong with the merged policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    /// Where in the merged document, e.g. `acls[3].src[0]`.
    pub path: String,
    /// Where in the fragments, e.g. `team-a/acl` at `acls[1].src[0]`: the fragment at
    /// fault. Several when fragments share an identical definition.
    pub locations: Vec<Origin>,
    pub message: String,
}

impl Finding {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The fragments at fault.
    pub fn fragments(&self) -> Vec<&str> {
        self.locations.iter().map(|l| l.fragment.as_str()).collect()
    }
}

impl fmt::Display for Finding {
    /// `team-a/acl acls[1].src[0]: …`, or the merged path when no fragment is known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.locations.is_empty() {
            return write!(f, "{}: {}", self.path, self.message);
        }
        for (i, l) in self.locations.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", l.fragment, l.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Checks a merged policy. Findings come in the order of [`Merged::entries`].
pub fn validate(merged: &Merged) -> Vec<Finding> {
    let doc = merged.value();
    let names = |section: &str| -> BTreeSet<String> {
        doc.get(section)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut checker = Checker {
        groups: names("groups"),
        tags: names("tagOwners"),
        hosts: names("hosts"),
        findings: Vec::new(),
    };
    for (entry, origins) in merged.entries() {
        let Some(value) = entry.lookup(doc) else { continue };
        let at = At {
            path: entry.to_string(),
            origins,
        };
        checker.entry(entry, value, &at);
    }
    checker.findings
}

/// The entry being checked: its path in the merged document and its origins.
struct At<'a> {
    path: String,
    origins: &'a [Origin],
}

struct Checker {
    groups: BTreeSet<String>,
    tags: BTreeSet<String>,
    hosts: BTreeSet<String>,
    findings: Vec<Finding>,
}

/// A field of a rule; Headscale matches field names case-insensitively.
fn field<'v>(rule: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    rule.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A list that should not be empty: `None` and `[]` are reported by the caller.
enum List<'v> {
    Missing,
    Empty,
    WrongType,
    Items(&'v [Value]),
}

fn list<'v>(rule: &'v Map<String, Value>, name: &str) -> List<'v> {
    match field(rule, name) {
        None | Some(Value::Null) => List::Missing,
        Some(Value::Array(items)) if items.is_empty() => List::Empty,
        Some(Value::Array(items)) => List::Items(items),
        Some(_) => List::WrongType,
    }
}

/// What a string in a rule names, which decides the checks.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// A source or destination alias: ACL/grant `src`/`dst`, SSH `src`/`dst`,
    /// `nodeAttrs` targets, test sources and destinations.
    Alias,
    /// A `tagOwners` owner or an auto-approver: a user, group or tag only.
    Owner,
    /// A `groups` member: a user only.
    Member,
}

impl Checker {
    fn entry(&mut self, entry: &Entry, value: &Value, at: &At) {
        match (entry.section(), entry) {
            ("groups", Entry::Key { .. }) => self.each_string(value, at, "", Role::Member),
            ("tagOwners" | "autoApprovers.routes", Entry::Key { .. }) => {
                self.each_string(value, at, "", Role::Owner)
            }
            ("autoApprovers.exitNode", Entry::Item { .. }) => {
                if let Some(s) = value.as_str() {
                    self.name(s, at, "", Role::Owner);
                }
            }
            ("acls", _) => self.acl(value, at),
            ("grants", _) => self.grant(value, at),
            ("ssh", _) => self.ssh(value, at),
            ("nodeAttrs", _) => self.node_attr(value, at),
            ("tests", _) => self.test(value, at),
            ("sshTests", _) => self.ssh_test(value, at),
            _ => {}
        }
    }

    fn report(&mut self, kind: FindingKind, severity: Severity, at: &At, suffix: &str, message: String) {
        self.findings.push(Finding {
            kind,
            severity,
            path: format!("{}{suffix}", at.path),
            locations: at
                .origins
                .iter()
                .map(|o| Origin {
                    fragment: o.fragment.clone(),
                    path: format!("{}{suffix}", o.path),
                })
                .collect(),
            message,
        });
    }

    fn malformed(&mut self, kind: FindingKind, severity: Severity, at: &At, suffix: &str, message: &str) {
        self.report(kind, severity, at, suffix, message.to_string());
    }

    fn rule<'v>(&mut self, value: &'v Value, at: &At, what: &str) -> Option<&'v Map<String, Value>> {
        let kind = if what.contains("test") {
            FindingKind::MalformedTest
        } else {
            FindingKind::MalformedRule
        };
        let rule = value.as_object();
        if rule.is_none() {
            self.report(kind, Severity::Error, at, "", format!("{what} must be an object"));
        }
        rule
    }

    /// Every string of a list value (a group's members, a tag's owners).
    fn each_string(&mut self, value: &Value, at: &At, suffix: &str, role: Role) {
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            if let Some(s) = item.as_str() {
                self.name(s, at, &format!("{suffix}[{i}]"), role);
            }
        }
    }

    /// The checks on one name: defined groups and tags, users with `@`.
    fn name(&mut self, name: &str, at: &At, suffix: &str, role: Role) {
        match (alias::classify(name), role) {
            (Alias::Group(group), Role::Alias | Role::Owner) if !self.groups.contains(group) => self.report(
                FindingKind::UndefinedGroup,
                Severity::Error,
                at,
                suffix,
                format!("{group:?} is not defined in \"groups\""),
            ),
            (Alias::Tag(tag), Role::Alias | Role::Owner) if !self.tags.contains(tag) => self.report(
                FindingKind::UndefinedTag,
                Severity::Error,
                at,
                suffix,
                format!("{tag:?} is not defined in \"tagOwners\""),
            ),
            (Alias::Name(bare), Role::Alias) if !self.hosts.contains(bare) => self.report(
                FindingKind::UserWithoutAt,
                Severity::Error,
                at,
                suffix,
                format!(
                    "{bare:?} is not a host defined in \"hosts\"; a user must be written \
                     \"{bare}@\" or as an e-mail address"
                ),
            ),
            (Alias::Name(bare), Role::Owner | Role::Member) => self.report(
                FindingKind::UserWithoutAt,
                Severity::Error,
                at,
                suffix,
                format!("users must be written \"{bare}@\" or as an e-mail address, not {bare:?}"),
            ),
            _ => {}
        }
    }

    /// A list of aliases; empty or missing lists are the caller's concern.
    fn aliases(&mut self, items: &[Value], at: &At, field: &str, kind: FindingKind) {
        for (i, item) in items.iter().enumerate() {
            let suffix = format!(".{field}[{i}]");
            match item.as_str() {
                Some(s) => self.name(s, at, &suffix, Role::Alias),
                None => self.malformed(kind, Severity::Error, at, &suffix, "entries must be strings"),
            }
        }
    }

    /// `src` or `dst` of a rule that does nothing when it is missing or empty.
    fn endpoints<'v>(&mut self, rule: &'v Map<String, Value>, at: &At, field: &str) -> &'v [Value] {
        let suffix = format!(".{field}");
        match list(rule, field) {
            List::Items(items) => return items,
            List::Missing => self.report(
                FindingKind::MalformedRule,
                Severity::Warning,
                at,
                "",
                format!("has no \"{field}\": the rule matches nothing"),
            ),
            List::Empty => self.report(
                FindingKind::MalformedRule,
                Severity::Warning,
                at,
                &suffix,
                format!("\"{field}\" is empty: the rule matches nothing"),
            ),
            List::WrongType => self.report(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                &suffix,
                format!("\"{field}\" must be a list"),
            ),
        }
        &[]
    }

    /// `alias:ports` destinations of ACLs and tests.
    fn destinations(&mut self, items: &[Value], at: &At, field: &str, kind: FindingKind) {
        for (i, item) in items.iter().enumerate() {
            let suffix = format!(".{field}[{i}]");
            let Some(dst) = item.as_str() else {
                self.malformed(kind, Severity::Error, at, &suffix, "entries must be strings");
                continue;
            };
            match alias::split_port(dst) {
                Some((target, ports)) if !alias::is_not_a_port(&ports) => {
                    self.name(&target, at, &suffix, Role::Alias)
                }
                // `tag:web`, `group:eng`, `*`, `alice@`: the port was forgotten.
                Some((target, _)) if matches!(target.trim(), "tag" | "group" | "autogroup") => {
                    self.missing_port(kind, at, &suffix, dst)
                }
                None => self.missing_port(kind, at, &suffix, dst),
                Some((_, ports)) => self.report(
                    kind,
                    Severity::Error,
                    at,
                    &suffix,
                    format!("{dst:?}: port {ports:?} is not a port number, a range or \"*\""),
                ),
            }
        }
    }

    fn missing_port(&mut self, kind: FindingKind, at: &At, suffix: &str, dst: &str) {
        let dst = dst.trim();
        self.report(
            kind,
            Severity::Error,
            at,
            suffix,
            format!("{dst:?} has no \":port\" part; write e.g. \"{dst}:*\" or \"{dst}:22\""),
        );
    }

    fn acl(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "an ACL rule") else {
            return;
        };
        match field(rule, "action") {
            None | Some(Value::Null) => self.malformed(
                FindingKind::MalformedRule,
                Severity::Warning,
                at,
                "",
                "has no \"action\"; Headscale 0.29 takes it as \"accept\", Tailscale requires \"action\": \"accept\"",
            ),
            Some(Value::String(action)) if action == "accept" => {}
            Some(action) => self.report(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".action",
                format!("action {action} is not supported: ACL rules only \"accept\""),
            ),
        }
        let src = self.endpoints(rule, at, "src");
        self.aliases(src, at, "src", FindingKind::MalformedRule);
        let dst = self.endpoints(rule, at, "dst");
        self.destinations(dst, at, "dst", FindingKind::MalformedRule);
    }

    fn grant(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "a grant") else {
            return;
        };
        let ip = field(rule, "ip");
        let app = field(rule, "app");
        if ip.is_some_and(|v| !v.is_array() && !v.is_null()) {
            self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".ip",
                "\"ip\" must be a list",
            );
        } else if app.is_some_and(|v| !v.is_object() && !v.is_null()) {
            self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".app",
                "\"app\" must be an object",
            );
        } else {
            let has_ip = ip.and_then(Value::as_array).is_some_and(|v| !v.is_empty());
            let has_app = app.and_then(Value::as_object).is_some_and(|v| !v.is_empty());
            if !has_ip && !has_app {
                self.malformed(
                    FindingKind::MalformedRule,
                    Severity::Error,
                    at,
                    "",
                    "a grant needs \"ip\" (e.g. [\"*\"] or [\"tcp:443\"]) or \"app\"",
                );
            }
        }
        let src = self.endpoints(rule, at, "src");
        self.aliases(src, at, "src", FindingKind::MalformedRule);
        let dst = self.endpoints(rule, at, "dst");
        for (i, item) in dst.iter().enumerate() {
            // `tag:web:443` is an ACL destination; in a grant it would be read as a
            // tag named "tag:web:443".
            let with_port = item.as_str().is_some_and(|s| {
                let s = s.trim();
                let name = s.strip_prefix("tag:").or_else(|| s.strip_prefix("group:"));
                name.is_some_and(|n| n.contains(':'))
            });
            if with_port {
                self.malformed(
                    FindingKind::MalformedRule,
                    Severity::Error,
                    at,
                    &format!(".dst[{i}]"),
                    "grant destinations take no port; put protocols and ports in \"ip\"",
                );
            } else {
                let suffix = format!(".dst[{i}]");
                match item.as_str() {
                    Some(s) => self.name(s, at, &suffix, Role::Alias),
                    None => self.malformed(
                        FindingKind::MalformedRule,
                        Severity::Error,
                        at,
                        &suffix,
                        "entries must be strings",
                    ),
                }
            }
        }
        if let List::Items(via) = list(rule, "via") {
            for (i, tag) in via.iter().enumerate() {
                if let Some(tag) = tag.as_str().filter(|t| t.starts_with("tag:")) {
                    self.name(tag, at, &format!(".via[{i}]"), Role::Alias);
                }
            }
        }
    }

    fn ssh(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "an SSH rule") else {
            return;
        };
        match field(rule, "action") {
            Some(Value::String(a)) if matches!(a.trim(), "accept" | "check") => {}
            None | Some(Value::Null) => self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                "",
                "has no \"action\": \"accept\" or \"check\"",
            ),
            Some(Value::String(a)) if a.trim().is_empty() => self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".action",
                "\"action\" is empty: \"accept\" or \"check\"",
            ),
            Some(action) => self.report(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".action",
                format!("action {action} is not supported: \"accept\" or \"check\""),
            ),
        }
        match list(rule, "users") {
            List::Items(users) => {
                for (i, user) in users.iter().enumerate() {
                    if user.as_str().is_some_and(|u| matches!(u.trim(), "" | "*")) {
                        self.report(
                            FindingKind::MalformedRule,
                            Severity::Error,
                            at,
                            &format!(".users[{i}]"),
                            format!(
                                "{user} is not a login user (use e.g. \"root\" or \"autogroup:nonroot\")"
                            ),
                        );
                    }
                }
            }
            List::WrongType => self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                ".users",
                "\"users\" must be a list",
            ),
            List::Missing | List::Empty => self.malformed(
                FindingKind::MalformedRule,
                Severity::Error,
                at,
                "",
                "\"users\" must name at least one login user",
            ),
        }
        let src = self.endpoints(rule, at, "src");
        self.aliases(src, at, "src", FindingKind::MalformedRule);
        let dst = self.endpoints(rule, at, "dst");
        self.aliases(dst, at, "dst", FindingKind::MalformedRule);
    }

    fn node_attr(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "a nodeAttrs entry") else {
            return;
        };
        if let List::Items(targets) = list(rule, "target") {
            self.aliases(targets, at, "target", FindingKind::MalformedRule);
        }
    }

    /// The single `src` of a test entry.
    fn test_src(&mut self, rule: &Map<String, Value>, at: &At) {
        match field(rule, "src") {
            Some(Value::String(src)) if !src.trim().is_empty() => self.name(src, at, ".src", Role::Alias),
            Some(Value::String(_)) | None | Some(Value::Null) => self.malformed(
                FindingKind::MalformedTest,
                Severity::Error,
                at,
                "",
                "a test needs a \"src\" (one user, group, tag, host or IP)",
            ),
            Some(_) => self.malformed(
                FindingKind::MalformedTest,
                Severity::Error,
                at,
                ".src",
                "\"src\" must be one string",
            ),
        }
    }

    fn test(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "a test") else {
            return;
        };
        self.test_src(rule, at);
        let mut asserts = false;
        for field in ["accept", "deny"] {
            match list(rule, field) {
                List::Items(items) => {
                    asserts = true;
                    self.destinations(items, at, field, FindingKind::MalformedTest);
                }
                List::WrongType => {
                    asserts = true;
                    self.report(
                        FindingKind::MalformedTest,
                        Severity::Error,
                        at,
                        &format!(".{field}"),
                        format!("\"{field}\" must be a list"),
                    );
                }
                List::Missing | List::Empty => {}
            }
        }
        if !asserts {
            self.malformed(
                FindingKind::MalformedTest,
                Severity::Error,
                at,
                "",
                "a test needs \"accept\" or \"deny\" destinations (\"host:port\")",
            );
        }
    }

    fn ssh_test(&mut self, value: &Value, at: &At) {
        let Some(rule) = self.rule(value, at, "an SSH test") else {
            return;
        };
        self.test_src(rule, at);
        match list(rule, "dst") {
            List::Items(items) => self.aliases(items, at, "dst", FindingKind::MalformedTest),
            List::WrongType => self.malformed(
                FindingKind::MalformedTest,
                Severity::Error,
                at,
                ".dst",
                "\"dst\" must be a list",
            ),
            List::Missing | List::Empty => self.malformed(
                FindingKind::MalformedTest,
                Severity::Error,
                at,
                "",
                "an SSH test needs at least one \"dst\"",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::merge::{Fragment, merge};

    /// (kind, severity, path in the merged document)
    type Brief = (FindingKind, Severity, String);

    /// Findings of a single-fragment policy.
    fn check(policy: Value) -> Vec<Brief> {
        let merged = merge(&[Fragment::new("ns/p", 1, policy)]).expect("merges");
        validate(&merged)
            .into_iter()
            .map(|f| (f.kind, f.severity, f.path))
            .collect()
    }

    use FindingKind::*;
    use Severity::{Error as E, Warning as W};

    fn base() -> Value {
        json!({
            "groups": {"group:eng": ["alice@", "bob@example.com"]},
            "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["tag:web", "alice@"]},
            "hosts": {"db-net": "10.1.0.0/16", "printer": "10.2.0.9"},
        })
    }

    fn with(section: &str, value: Value) -> Value {
        let mut doc = base();
        doc[section] = value;
        doc
    }

    #[test]
    fn valid_syntax_is_not_reported() {
        let valid = [
            (
                "acls",
                json!([
                    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
                    {"action": "accept", "src": ["group:eng", "alice@", "bob@example.com", "tag:web"],
                     "dst": ["tag:db:5432", "group:eng:*", "alice@:22", "db-net:443", "printer:631,9100-9102"]},
                    {"action": "accept", "src": ["autogroup:member", "100.64.0.1", "10.0.0.0/8", "fd7a:115c:a1e0::/48"],
                     "dst": ["autogroup:internet:*", "10.0.0.1:80", "[fd7a::1]:22", "fd7a::/64:443"]},
                    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
                    {"action": "accept", "proto": "icmp", "src": [" alice@ "], "dst": ["tag:web:*"], "#comment": "x"},
                    {"Action": "accept", "SRC": ["*"], "Dst": ["*:*"]},
                ]),
            ),
            (
                "grants",
                json!([
                    {"src": ["group:eng"], "dst": ["tag:web"], "ip": ["tcp:443"]},
                    {"src": ["*"], "dst": ["autogroup:internet"], "ip": ["*"], "via": ["tag:web"]},
                    {"src": ["alice@"], "dst": ["db-net", "10.0.0.0/8"], "app": {"example.com/cap": [{}]}},
                ]),
            ),
            (
                "ssh",
                json!([
                    {"action": "accept", "src": ["group:eng", "alice@"], "dst": ["tag:web", "autogroup:self"],
                     "users": ["root", "ubuntu", "autogroup:nonroot", "localpart:*@example.com"]},
                    {"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["alice"],
                     "checkPeriod": "12h"},
                ]),
            ),
            (
                "nodeAttrs",
                json!([{"target": ["group:eng", "tag:web", "*", "alice@"], "attr": ["magicdns-aaaa"]}]),
            ),
            (
                "tests",
                json!([
                    {"src": "alice@", "accept": ["tag:web:443"], "deny": ["tag:db:5432"]},
                    {"src": "group:eng", "proto": "tcp", "deny": ["printer:631"]},
                    {"src": "100.64.0.1", "accept": ["10.0.0.1:22"]},
                ]),
            ),
            (
                "sshTests",
                json!([{"src": "alice@", "dst": ["tag:web"], "accept": ["root"]}]),
            ),
            (
                "autoApprovers",
                json!({"routes": {"10.0.0.0/8": ["group:eng", "tag:web", "alice@"]}, "exitNode": ["tag:db", "bob@"]}),
            ),
        ];
        for (section, value) in valid {
            assert_eq!(check(with(section, value)), vec![], "{section}");
        }
        assert_eq!(check(base()), vec![]);
        assert_eq!(check(json!({})), vec![]);
    }

    #[test]
    fn finds_mistakes() {
        let p = |s: &str| s.to_string();
        // (name, section, value, findings)
        let cases: Vec<(&str, &str, Value, Vec<Brief>)> = vec![
            // Undefined groups, wherever they are used.
            (
                "undefined group in acl src and dst",
                "acls",
                json!([{"action": "accept", "src": ["group:ops"], "dst": ["group:dev:22"]}]),
                vec![
                    (UndefinedGroup, E, p("acls[0].src[0]")),
                    (UndefinedGroup, E, p("acls[0].dst[0]")),
                ],
            ),
            (
                "undefined group in grant, ssh, nodeAttrs",
                "grants",
                json!([{"src": ["group:ops"], "dst": ["*"], "ip": ["*"]}]),
                vec![(UndefinedGroup, E, p("grants[0].src[0]"))],
            ),
            (
                "undefined group in ssh src",
                "ssh",
                json!([{"action": "accept", "src": ["group:ops"], "dst": ["autogroup:self"], "users": ["root"]}]),
                vec![(UndefinedGroup, E, p("ssh[0].src[0]"))],
            ),
            (
                "undefined group and tag in nodeAttrs target",
                "nodeAttrs",
                json!([{"target": ["group:ops", "tag:nope"], "attr": ["x"]}]),
                vec![
                    (UndefinedGroup, E, p("nodeAttrs[0].target[0]")),
                    (UndefinedTag, E, p("nodeAttrs[0].target[1]")),
                ],
            ),
            (
                "undefined group owning a tag",
                "tagOwners",
                json!({"tag:web": ["group:ops"]}),
                vec![(UndefinedGroup, E, p("tagOwners[\"tag:web\"][0]"))],
            ),
            (
                "undefined group and tag as auto-approvers",
                "autoApprovers",
                json!({"routes": {"10.0.0.0/8": ["group:ops"]}, "exitNode": ["tag:exit"]}),
                vec![
                    (UndefinedGroup, E, p("autoApprovers.routes[\"10.0.0.0/8\"][0]")),
                    (UndefinedTag, E, p("autoApprovers.exitNode[0]")),
                ],
            ),
            // Tags not in tagOwners.
            (
                "tag not in tagOwners in acl src and dst",
                "acls",
                json!([{"action": "accept", "src": ["tag:ci"], "dst": ["tag:ci:22"]}]),
                vec![
                    (UndefinedTag, E, p("acls[0].src[0]")),
                    (UndefinedTag, E, p("acls[0].dst[0]")),
                ],
            ),
            (
                "tag not in tagOwners owning a tag",
                "tagOwners",
                json!({"tag:web": ["tag:ci"]}),
                vec![(UndefinedTag, E, p("tagOwners[\"tag:web\"][0]"))],
            ),
            (
                "tag not in tagOwners in grant dst and via",
                "grants",
                json!([{"src": ["*"], "dst": ["tag:ci"], "ip": ["*"], "via": ["tag:router"]}]),
                vec![
                    (UndefinedTag, E, p("grants[0].dst[0]")),
                    (UndefinedTag, E, p("grants[0].via[0]")),
                ],
            ),
            (
                "tag not in tagOwners in ssh dst and sshTests dst",
                "ssh",
                json!([{"action": "accept", "src": ["alice@"], "dst": ["tag:ci"], "users": ["root"]}]),
                vec![(UndefinedTag, E, p("ssh[0].dst[0]"))],
            ),
            (
                "tag not in tagOwners in tests",
                "tests",
                json!([{"src": "tag:ci", "accept": ["tag:ci:22"]}]),
                vec![
                    (UndefinedTag, E, p("tests[0].src")),
                    (UndefinedTag, E, p("tests[0].accept[0]")),
                ],
            ),
            // Users without @.
            (
                "user without @ in a group",
                "groups",
                json!({"group:eng": ["alice", "bob@"]}),
                vec![(UserWithoutAt, E, p("groups[\"group:eng\"][0]"))],
            ),
            (
                "user without @ in acl src and dst",
                "acls",
                json!([{"action": "accept", "src": ["alice"], "dst": ["bob:22", "printer:631"]}]),
                vec![
                    (UserWithoutAt, E, p("acls[0].src[0]")),
                    (UserWithoutAt, E, p("acls[0].dst[0]")),
                ],
            ),
            (
                "user without @ as tag owner and approver",
                "tagOwners",
                json!({"tag:web": ["alice"]}),
                vec![(UserWithoutAt, E, p("tagOwners[\"tag:web\"][0]"))],
            ),
            (
                "user without @ as exit-node approver",
                "autoApprovers",
                json!({"exitNode": ["alice"]}),
                vec![(UserWithoutAt, E, p("autoApprovers.exitNode[0]"))],
            ),
            (
                "user without @ in ssh src, not in users",
                "ssh",
                json!([{"action": "accept", "src": ["alice"], "dst": ["autogroup:self"], "users": ["alice"]}]),
                vec![(UserWithoutAt, E, p("ssh[0].src[0]"))],
            ),
            (
                "user without @ in a test and an ssh test",
                "sshTests",
                json!([{"src": "alice", "dst": ["tag:web"], "accept": ["root"]}]),
                vec![(UserWithoutAt, E, p("sshTests[0].src"))],
            ),
            // Malformed ACL rules.
            (
                "empty rule",
                "acls",
                json!([{}]),
                vec![
                    (MalformedRule, W, p("acls[0]")),
                    (MalformedRule, W, p("acls[0]")),
                    (MalformedRule, W, p("acls[0]")),
                ],
            ),
            (
                "action other than accept",
                "acls",
                json!([{"action": "deny", "src": ["*"], "dst": ["*:*"]}, {"action": "Accept", "src": ["*"], "dst": ["*:*"]}]),
                vec![
                    (MalformedRule, E, p("acls[0].action")),
                    (MalformedRule, E, p("acls[1].action")),
                ],
            ),
            (
                "empty src and dst lists",
                "acls",
                json!([{"action": "accept", "src": [], "dst": []}]),
                vec![
                    (MalformedRule, W, p("acls[0].src")),
                    (MalformedRule, W, p("acls[0].dst")),
                ],
            ),
            (
                "src and dst that are not lists or hold non-strings",
                "acls",
                json!([{"action": "accept", "src": "*", "dst": [1]}]),
                vec![
                    (MalformedRule, E, p("acls[0].src")),
                    (MalformedRule, E, p("acls[0].dst[0]")),
                ],
            ),
            (
                "dst without :port",
                "acls",
                json!([{"action": "accept", "src": ["*"], "dst": ["*", "tag:web", "group:eng", "10.0.0.1", "alice@", "autogroup:internet"]}]),
                vec![
                    (MalformedRule, E, p("acls[0].dst[0]")),
                    (MalformedRule, E, p("acls[0].dst[1]")),
                    (MalformedRule, E, p("acls[0].dst[2]")),
                    (MalformedRule, E, p("acls[0].dst[3]")),
                    (MalformedRule, E, p("acls[0].dst[4]")),
                    (MalformedRule, E, p("acls[0].dst[5]")),
                ],
            ),
            (
                "port that is not a number",
                "acls",
                json!([{"action": "accept", "src": ["*"], "dst": ["tag:web:http", "db-net:"]}]),
                vec![
                    (MalformedRule, E, p("acls[0].dst[0]")),
                    (MalformedRule, E, p("acls[0].dst[1]")),
                ],
            ),
            (
                "rule that is not an object",
                "acls",
                json!(["accept"]),
                vec![(MalformedRule, E, p("acls[0]"))],
            ),
            // Malformed grants.
            (
                "grant without ip or app",
                "grants",
                json!([{"src": ["*"], "dst": ["*"]}, {"src": ["*"], "dst": ["*"], "ip": [], "app": {}}]),
                vec![
                    (MalformedRule, E, p("grants[0]")),
                    (MalformedRule, E, p("grants[1]")),
                ],
            ),
            (
                "grant dst with a port",
                "grants",
                json!([{"src": ["*"], "dst": ["tag:web:443"], "ip": ["*"]}]),
                vec![(MalformedRule, E, p("grants[0].dst[0]"))],
            ),
            (
                "grant with empty src, ip not a list",
                "grants",
                json!([{"src": [], "dst": ["*"], "ip": "tcp:443"}]),
                vec![
                    (MalformedRule, E, p("grants[0].ip")),
                    (MalformedRule, W, p("grants[0].src")),
                ],
            ),
            // Malformed SSH rules.
            (
                "ssh without action or users",
                "ssh",
                json!([{"src": ["alice@"], "dst": ["autogroup:self"]}]),
                vec![(MalformedRule, E, p("ssh[0]")), (MalformedRule, E, p("ssh[0]"))],
            ),
            (
                "ssh with a bad action, empty and wildcard users",
                "ssh",
                json!([{"action": "allow", "src": ["alice@"], "dst": ["autogroup:self"], "users": ["", "*"]}]),
                vec![
                    (MalformedRule, E, p("ssh[0].action")),
                    (MalformedRule, E, p("ssh[0].users[0]")),
                    (MalformedRule, E, p("ssh[0].users[1]")),
                ],
            ),
            // Malformed tests.
            (
                "test without src or assertions",
                "tests",
                json!([{"accept": ["tag:web:22"]}, {"src": "alice@"}, {"src": " ", "accept": []}]),
                vec![
                    (MalformedTest, E, p("tests[0]")),
                    (MalformedTest, E, p("tests[1]")),
                    (MalformedTest, E, p("tests[2]")),
                    (MalformedTest, E, p("tests[2]")),
                ],
            ),
            (
                "test destination without port, test not an object",
                "tests",
                json!([{"src": "alice@", "deny": ["tag:web"]}, "x"]),
                vec![
                    (MalformedTest, E, p("tests[0].deny[0]")),
                    (MalformedTest, E, p("tests[1]")),
                ],
            ),
            (
                "ssh test without src or dst",
                "sshTests",
                json!([{"accept": ["root"]}]),
                vec![
                    (MalformedTest, E, p("sshTests[0]")),
                    (MalformedTest, E, p("sshTests[0]")),
                ],
            ),
        ];
        for (name, section, value, want) in cases {
            assert_eq!(check(with(section, value)), want, "{name}");
        }
    }

    #[test]
    fn names_the_fragment_at_fault() {
        let merged = merge(&[
            Fragment::new(
                "team-a/acl",
                1,
                json!({"groups": {"group:eng": ["alice@"]}, "tagOwners": {"tag:web": ["alice@"]}}),
            ),
            Fragment::new(
                "team-b/acl",
                2,
                json!({"acls": [
                    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]},
                    {"action": "accept", "src": ["group:ops"], "dst": ["tag:web:443"]},
                ]}),
            ),
            Fragment::new(
                "team-c/acl",
                3,
                json!({"ACLs": [{"action": "accept", "src": ["carol"], "dst": ["tag:api:*"]}]}),
            ),
        ])
        .unwrap();
        let findings = validate(&merged);
        let got: Vec<String> = findings.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "team-b/acl acls[1].src[0]: \"group:ops\" is not defined in \"groups\"",
                "team-c/acl ACLs[0].src[0]: \"carol\" is not a host defined in \"hosts\"; a user must be written \"carol@\" or as an e-mail address",
                "team-c/acl ACLs[0].dst[0]: \"tag:api\" is not defined in \"tagOwners\"",
            ]
        );
        assert_eq!(findings[0].path, "acls[1].src[0]");
        assert_eq!(findings[1].path, "acls[2].src[0]");
        assert_eq!(findings[2].fragments(), ["team-c/acl"]);
        assert!(findings.iter().all(Finding::is_error));
    }

    #[test]
    fn shared_definitions_name_every_fragment() {
        let merged = merge(&[
            Fragment::new("a/x", 1, json!({"groups": {"group:eng": ["alice"]}})),
            Fragment::new("a/y", 2, json!({"groups": {"group:eng": ["alice"]}})),
        ])
        .unwrap();
        let findings = validate(&merged);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].fragments(), ["a/x", "a/y"]);
        assert_eq!(
            findings[0].to_string(),
            "a/x groups[\"group:eng\"][0], a/y groups[\"group:eng\"][0]: \
             users must be written \"alice@\" or as an e-mail address, not \"alice\""
        );
    }

    #[test]
    fn destination_port_messages() {
        let cases = [
            (
                "tag:web",
                "\"tag:web\" has no \":port\" part; write e.g. \"tag:web:*\" or \"tag:web:22\"",
            ),
            ("*", "\"*\" has no \":port\" part; write e.g. \"*:*\" or \"*:22\""),
            (
                "tag:web:http",
                "\"tag:web:http\": port \"http\" is not a port number, a range or \"*\"",
            ),
        ];
        for (dst, want) in cases {
            let merged = merge(&[Fragment::new(
                "ns/p",
                1,
                json!({"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["*"], "dst": [dst]}]}),
            )])
            .unwrap();
            let messages: Vec<String> = validate(&merged).into_iter().map(|f| f.message).collect();
            assert_eq!(messages, [want], "{dst}");
        }
    }

    #[test]
    fn reasons_are_stable() {
        let kinds = [
            UndefinedGroup,
            UndefinedTag,
            UserWithoutAt,
            MalformedRule,
            MalformedTest,
        ];
        let reasons: Vec<_> = kinds.iter().map(|k| k.reason()).collect();
        assert_eq!(
            reasons,
            [
                "UndefinedGroup",
                "UndefinedTag",
                "UserWithoutAt",
                "MalformedRule",
                "MalformedTest"
            ]
        );
    }

    #[test]
    fn display_without_origin_uses_the_merged_path() {
        let finding = Finding {
            kind: UndefinedTag,
            severity: E,
            path: "acls[0].src[0]".into(),
            locations: vec![],
            message: "m".into(),
        };
        assert_eq!(finding.to_string(), "acls[0].src[0]: m");
    }
}
