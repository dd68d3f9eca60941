//! How Headscale (0.29, `parseAlias` in hscontrol/policy/v2) reads one alias string,
//! and how it splits `alias:port` destinations. Only as much as the local checks
//! need; anything unusual is [`Alias::Other`] and left to Headscale's own check.

use std::net::IpAddr;

/// One alias, classified in Headscale's order: an address first, then `*`, a user
/// (anything with `@`), `group:`, `tag:`, `autogroup:`, then a bare name (a host
/// alias from `hosts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alias<'a> {
    Address,
    Wildcard,
    User,
    Group(&'a str),
    Tag(&'a str),
    AutoGroup,
    /// No `@` and no `:`: Headscale looks it up in `hosts`.
    Name(&'a str),
    Other,
}

/// Classifies an alias; surrounding whitespace is ignored, as Headscale trims it.
pub(crate) fn classify(alias: &str) -> Alias<'_> {
    let s = alias.trim();
    if is_address(s) {
        Alias::Address
    } else if s == "*" {
        Alias::Wildcard
    } else if s.contains('@') {
        Alias::User
    } else if s.starts_with("group:") {
        Alias::Group(s)
    } else if s.starts_with("tag:") {
        Alias::Tag(s)
    } else if s.starts_with("autogroup:") {
        Alias::AutoGroup
    } else if !s.contains(':') {
        Alias::Name(s)
    } else {
        Alias::Other
    }
}

/// An IP address or prefix. Strings made only of digits, dots and a slash count as
/// addresses even when they do not parse, so a malformed IPv4 address is never
/// reported as a missing user or host (Headscale words that error itself).
fn is_address(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some((addr, bits)) = s.split_once('/')
        && addr.parse::<IpAddr>().is_ok()
        && bits.parse::<u8>().is_ok()
    {
        return true;
    }
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
}

/// Splits an ACL destination `alias:ports` at its last colon, after removing the
/// brackets of `[v6addr]:port`, as Headscale's `splitDestinationAndPort` does.
/// `None` when there is no colon at all.
pub(crate) fn split_port(dst: &str) -> Option<(String, String)> {
    let dst = dst.trim();
    let unbracketed;
    let s = match dst.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((host, rest)) => {
            unbracketed = format!("{host}{rest}");
            unbracketed.as_str()
        }
        None => dst,
    };
    let (alias, ports) = s.rsplit_once(':')?;
    Some((alias.to_string(), ports.to_string()))
}

/// Whether the part after the last colon can only be a mistake for a port list:
/// empty, or containing a letter (`tag:web` split into `tag` and `web`). Headscale
/// reads ports with `strconv.Atoi`, which takes no letters; anything subtler is left
/// to its check.
pub(crate) fn is_not_a_port(ports: &str) -> bool {
    ports != "*" && (ports.is_empty() || ports.bytes().any(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_headscale() {
        let cases: &[(&str, Alias)] = &[
            ("*", Alias::Wildcard),
            ("100.64.0.1", Alias::Address),
            ("10.0.0.0/8", Alias::Address),
            ("fd7a:115c:a1e0::1", Alias::Address),
            ("fd7a:115c:a1e0::/48", Alias::Address),
            ("010.1.2.3", Alias::Address),
            ("alice@", Alias::User),
            ("alice@example.com", Alias::User),
            (" alice@ ", Alias::User),
            ("group:eng", Alias::Group("group:eng")),
            ("tag:web", Alias::Tag("tag:web")),
            (" tag:web ", Alias::Tag("tag:web")),
            ("autogroup:member", Alias::AutoGroup),
            ("autogroup:internet", Alias::AutoGroup),
            ("alice", Alias::Name("alice")),
            ("db.internal", Alias::Name("db.internal")),
            ("weird:thing", Alias::Other),
        ];
        for (input, want) in cases {
            assert_eq!(classify(input), *want, "{input}");
        }
    }

    #[test]
    fn splits_destination_ports() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("tag:web:443", Some(("tag:web", "443"))),
            ("group:eng:*", Some(("group:eng", "*"))),
            ("alice@:22,80-90", Some(("alice@", "22,80-90"))),
            ("10.0.0.0/8:22", Some(("10.0.0.0/8", "22"))),
            ("[fd7a::1]:80", Some(("fd7a::1", "80"))),
            ("[fd7a::1]/128:80", Some(("fd7a::1/128", "80"))),
            ("fd7a::1:22", Some(("fd7a::1", "22"))),
            ("tag:web", Some(("tag", "web"))),
            ("alice", None),
            ("*", None),
        ];
        for (input, want) in cases {
            let got = split_port(input);
            let got = got.as_ref().map(|(a, p)| (a.as_str(), p.as_str()));
            assert_eq!(got, *want, "{input}");
        }
    }

    #[test]
    fn recognises_missing_ports() {
        let cases: &[(&str, bool)] = &[
            ("*", false),
            ("22", false),
            ("22,80-90", false),
            ("1--2", false),
            ("", true),
            ("web", true),
            ("eng", true),
            ("http", true),
        ];
        for (input, want) in cases {
            assert_eq!(is_not_a_port(input), *want, "{input:?}");
        }
    }
}
