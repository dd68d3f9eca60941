//! Naming the fragments a Headscale error message is about.
//!
//! Headscale knows only the merged document. Its messages point into it in three
//! ways, tried in this order:
//! 1. a JSON pointer (`within "/acls/3/dst/0"`) names one entry exactly;
//! 2. `test(s) failed` names `tests` entries by index (`test 0: …`) or by their
//!    `src` at the start of a line (`alice@ -> bob@:22: expected …`);
//! 3. quoted names (`group not defined in policy: "group:ops"`) name the entries
//!    that mention them. A name mentioned by every fragment tells nothing and is
//!    ignored.
//!
//! When nothing matches, no fragment is named and every fragment shares the error.

use std::collections::BTreeSet;

use serde_json::Value;

use super::merge::{Entry, Merged};

impl Merged {
    /// The fragments (sorted ids) a Headscale error `message` about this document
    /// points at; empty when it cannot be told.
    pub fn blame(&self, message: &str) -> Vec<String> {
        let tokens = quoted(message);
        for token in tokens.iter().filter(|t| t.starts_with('/')) {
            if let Some(entry) = self.pointer_entry(token) {
                return self.fragments_of([&entry]);
            }
        }
        let scope: Vec<&Entry> = if message.contains("test(s) failed") {
            self.entries()
                .map(|(e, _)| e)
                .filter(|e| matches!(e.section(), "tests" | "sshTests"))
                .collect()
        } else {
            self.entries().map(|(e, _)| e).collect()
        };
        if message.contains("test(s) failed") {
            let named: Vec<&Entry> = scope
                .iter()
                .copied()
                .filter(|e| self.test_named(e, message))
                .collect();
            if !named.is_empty() {
                return self.fragments_of(named);
            }
        }
        let everyone = self.fragments().len();
        let mut blamed = BTreeSet::new();
        for token in tokens.iter().filter(|t| !t.is_empty() && !t.starts_with('/')) {
            let hits = self.fragments_of(
                scope
                    .iter()
                    .copied()
                    .filter(|e| e.lookup(self.value()).is_some_and(|v| mentions(e, v, token))),
            );
            if everyone > 1 && hits.len() == everyone {
                continue;
            }
            blamed.extend(hits);
        }
        blamed.into_iter().collect()
    }

    fn fragments_of<'e>(&self, entries: impl IntoIterator<Item = &'e Entry>) -> Vec<String> {
        let ids: BTreeSet<String> = entries
            .into_iter()
            .flat_map(|e| self.origins(e))
            .map(|o| o.fragment.clone())
            .collect();
        ids.into_iter().collect()
    }

    /// The top-level entry a JSON pointer into the merged document falls in.
    fn pointer_entry(&self, pointer: &str) -> Option<Entry> {
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (section, rest) = match segments.as_slice() {
            [outer, inner, rest @ ..] if outer == "autoApprovers" => (format!("autoApprovers.{inner}"), rest),
            [section, rest @ ..] => (section.clone(), rest),
            [] => return None,
        };
        let candidates = [
            rest.first()
                .and_then(|i| i.parse().ok())
                .map(|index| Entry::Item {
                    section: section.clone(),
                    index,
                }),
            rest.first().map(|key| Entry::Key {
                section: section.clone(),
                key: key.clone(),
            }),
            Some(Entry::Section { section }),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|e| !self.origins(e).is_empty())
    }

    /// Whether a `tests`/`sshTests` entry is the one a failure message talks about.
    fn test_named(&self, entry: &Entry, message: &str) -> bool {
        let Entry::Item { section, index } = entry else {
            return false;
        };
        let label = if section == "tests" { "test" } else { "sshTest" };
        if message.contains(&format!("\n{label} {index}:"))
            || message.starts_with(&format!("{label} {index}:"))
        {
            return true;
        }
        let Some(src) = entry
            .lookup(self.value())
            .and_then(|t| t.get("src"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return false;
        };
        message.lines().any(|line| {
            line.strip_prefix(src).is_some_and(|rest| {
                rest.starts_with(": ") || rest.starts_with(" -> ") || rest.starts_with('/')
            })
        })
    }
}

/// Whether an entry's key or value names `token`: equal to it, or to it with a
/// `:port` suffix.
fn mentions(entry: &Entry, value: &Value, token: &str) -> bool {
    let own_name = match entry {
        Entry::Key { key, .. } => key == token,
        Entry::Section { section } => section == token,
        Entry::Item { .. } => false,
    };
    own_name || value_mentions(value, token)
}

fn value_mentions(value: &Value, token: &str) -> bool {
    match value {
        Value::String(s) => {
            let s = s.trim();
            s == token || s.strip_prefix(token).is_some_and(|rest| rest.starts_with(':'))
        }
        Value::Array(items) => items.iter().any(|v| value_mentions(v, token)),
        Value::Object(map) => map.iter().any(|(k, v)| k == token || value_mentions(v, token)),
        _ => false,
    }
}

/// The double-quoted strings of a message, unescaped (Go's `%q`).
fn quoted(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = message.chars();
    while chars.by_ref().any(|c| c == '"') {
        let mut token = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        token.push(next);
                    }
                }
                '"' => {
                    closed = true;
                    break;
                }
                c => token.push(c),
            }
        }
        if closed {
            out.push(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::policy::merge::{Fragment, merge};

    #[test]
    fn blames_fragments_from_headscale_messages() {
        let merged = merge(&[
            Fragment::new(
                "team-a/acl",
                1,
                json!({
                    "groups": {"group:eng": ["alice@"]},
                    "tagOwners": {"tag:web": ["group:eng"]},
                    "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]}],
                }),
            ),
            Fragment::new(
                "team-b/acl",
                2,
                json!({
                    "acls": [
                        {"action": "accept", "src": ["group:eng"], "dst": ["db:5432"]},
                        {"action": "accept", "src": ["group:nope"], "dst": ["tag:web:22"]},
                    ],
                    "autoApprovers": {"routes": {"10.0.0.0/8": ["alice@"]}},
                    "tests": [{"src": "alice@", "accept": ["tag:web:443"]}],
                }),
            ),
            Fragment::new(
                "team-c/acl",
                3,
                json!({
                    "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80"]}],
                    "tests": [{"src": "group:eng", "deny": ["tag:web:22"]}],
                    "postures": {"x": 1},
                }),
            ),
        ])
        .unwrap();
        // Messages as Headscale 0.29.2 wrote them for such documents.
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "pointer into a list",
                "parsing policy: parsing policy from bytes: json: cannot unmarshal JSON string into Go \
                 v2.AliasWithPorts within \"/acls/3/dst/0\": dst=\"tag:x\": port range \"x\": invalid first integer",
                &["team-c/acl"],
            ),
            (
                "pointer into a map",
                "parsing policy: parsing policy from bytes: json: cannot unmarshal JSON string into Go \
                 v2.OwnerEnc within \"/tagOwners/tag:web/0\": invalid owner format: \"alice\"",
                &["team-a/acl"],
            ),
            (
                "escaped pointer into autoApprovers",
                "json: cannot unmarshal JSON string into Go v2.AutoApproverEnc within \
                 \"/autoApprovers/routes/10.0.0.0~18/0\": invalid auto approver format: \"alice\"",
                &["team-b/acl"],
            ),
            (
                "undefined group",
                "parsing policy: group not defined in policy: \"group:nope\"",
                &["team-b/acl"],
            ),
            (
                "unknown top-level field",
                "parsing policy: unknown field: \"postures\"",
                &["team-c/acl"],
            ),
            (
                "test by index",
                "parsing policy: test(s) failed:\ntest 1: test entry must have at least one of \"accept\" or \"deny\"",
                &["team-c/acl"],
            ),
            (
                "test by source line",
                "test(s) failed:\nalice@ -> tag:web:443: expected ALLOWED, got DENIED",
                &["team-b/acl"],
            ),
            (
                "test source that fails to resolve",
                "test(s) failed:\ngroup:eng: source \"group:eng\" resolved to no IP addresses",
                &["team-c/acl"],
            ),
            (
                "a name every fragment uses tells nothing",
                "group not defined: \"group:eng\"",
                &[],
            ),
            (
                "a message with no names",
                "parsing policy: ip and app can not both be empty",
                &[],
            ),
            (
                "a name nobody uses",
                "host not defined in policy: \"printer\"",
                &[],
            ),
            (
                "a host alias with its port",
                "host not defined in policy: \"db\"",
                &["team-b/acl"],
            ),
        ];
        for (name, message, want) in cases {
            assert_eq!(merged.blame(message), *want, "{name}");
        }
    }

    #[test]
    fn blame_with_one_fragment_names_it() {
        let merged = merge(&[Fragment::new(
            "ns/only",
            1,
            json!({"groups": {"group:a": ["alice"]}}),
        )])
        .unwrap();
        assert_eq!(
            merged.blame("json: cannot unmarshal JSON object into Go v2.Groups within \"/groups\": username must contain @, got: \"alice\""),
            ["ns/only"]
        );
    }

    #[test]
    fn section_pointer_narrows_by_name() {
        let merged = merge(&[
            Fragment::new("a/x", 1, json!({"groups": {"group:a": ["alice"]}})),
            Fragment::new("a/y", 2, json!({"groups": {"group:b": ["bob@"]}})),
        ])
        .unwrap();
        // Headscale's pointer stops at "/groups"; the quoted user name decides.
        assert_eq!(
            merged.blame("cannot unmarshal JSON object into Go v2.Groups within \"/groups\": username must contain @, got: \"alice\""),
            ["a/x"]
        );
    }

    #[test]
    fn quoted_strings_are_unescaped() {
        assert_eq!(
            super::quoted(r#"a "x" b "y \"z\"" c "unterminated"#),
            ["x".to_string(), "y \"z\"".to_string()]
        );
    }
}
