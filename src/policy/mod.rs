//! A server's ACL policy as data: parsing HuJSON fragments, merging them, checking
//! the result locally, and comparing it with what Headscale serves. No Kubernetes,
//! no HTTP: the `AclPolicy` controller feeds fragments in and sends the result out.
//!
//! The pipeline a controller runs, in order:
//! 1. [`hujson::parse`] (or [`Fragment::from_hujson`]) each fragment: a
//!    [`ParseError`] has line and column and belongs to that fragment alone.
//! 2. [`merge()`] them: a [`MergeError`] lists every conflict with the fragments at
//!    fault (see [`merge`](mod@merge) for the order and the conflict rules).
//! 3. [`validate()`] the result: [`Severity::Error`] findings are mistakes Headscale
//!    would reject too, reported earlier and with the fragment named; warnings are
//!    rules Headscale accepts that almost certainly do not do what was meant.
//! 4. Headscale's own check (`POST /api/v1/policy/check`, 0.29+), which also knows
//!    users, nodes and unknown keys; [`Merged::blame`] names the fragments its
//!    message points at, where that can be told.
//! 5. Apply only when `!merged.same_as(served)`.
//!
//! With no fragments left, apply [`default_policy`]. A merge with neither `acls` nor
//! `grants` is allow-all in Headscale ([`Merged::allows_all`]), worth a warning.

pub(crate) mod alias;
mod blame;
pub mod hujson;
pub mod merge;
pub mod validate;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use hujson::ParseError;
pub use merge::{Entry, Fragment, MergeError, Merged, Origin, Problem, merge};
pub use validate::{Finding, FindingKind, Severity, validate};

/// What a server enforces when no fragment names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllowAll,
    DenyAll,
}

/// The document applied when a server has no fragments.
///
/// Headscale allows everything when the policy has neither `acls` nor `grants`
/// (0.29 `hscontrol/policy/v2/policy.go`: `pm.pol.ACLs == nil && pm.pol.Grants ==
/// nil` gives `FilterAllowAll`; 0.27 and 0.28 test `pol.ACLs == nil` in
/// `filter.go`), so allow-all is `{}`. A present but empty list is not nil, so deny-all
/// is `{"acls": []}`. The reference's `"grants": []` is deny-all in 0.29 too, but
/// 0.27 and 0.28 have no `grants` and reject it as an unknown field; `acls` works
/// in every supported version. Checked against real servers: 0.27.1 and 0.28.0
/// store `{"acls": []}` and `{}` and refuse `{"grants": []}`; on 0.29.2 a `tests`
/// entry expecting `alice@ -> bob@:22` denied fails with no `acls` and passes with
/// `"acls": []`.
pub fn default_policy(default: DefaultPolicy) -> Merged {
    let value = match default {
        DefaultPolicy::AllowAll => Value::Object(Map::new()),
        DefaultPolicy::DenyAll => serde_json::json!({ "acls": [] }),
    };
    Merged::new(value, Vec::new(), Default::default())
}

/// HuJSON text in canonical form ([`canonical_text`]), for comparing a served
/// policy with ours when [`Merged::same_as`] is not enough, e.g. in a diff.
pub fn normalize(text: &str) -> Result<String, ParseError> {
    Ok(canonical_text(&hujson::parse(text)?))
}

/// Pretty JSON with object keys sorted at every level and a final newline.
/// Sorting here, not in serde_json, keeps the bytes the same even if some crate
/// turns on serde_json's `preserve_order`.
pub fn canonical_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn default_policies() {
        // (default, document, fragments)
        let cases = [
            (DefaultPolicy::AllowAll, "{}\n"),
            (DefaultPolicy::DenyAll, "{\n  \"acls\": []\n}\n"),
        ];
        for (default, text) in cases {
            let merged = default_policy(default);
            assert_eq!(merged.text(), text, "{default:?}");
            assert_eq!(merged.hash(), sha256_hex(text.as_bytes()), "{default:?}");
            assert!(merged.fragments().is_empty());
            assert_eq!(merged.entries().count(), 0);
            assert!(validate(&merged).is_empty(), "{default:?}");
        }
        assert!(default_policy(DefaultPolicy::DenyAll).same_as("// deny\n{\"acls\": [],}"));
        assert!(!default_policy(DefaultPolicy::AllowAll).same_as("{\"acls\": []}"));
    }

    #[test]
    fn normalizes_text() {
        // (name, text, canonical text or the error's line and column)
        type Case<'a> = (&'a str, &'a str, Result<&'a str, (usize, usize)>);
        let cases: &[Case] = &[
            (
                "sorted and pretty",
                r#"{"b": 1, "a": [2]}"#,
                Ok("{\n  \"a\": [\n    2\n  ],\n  \"b\": 1\n}\n"),
            ),
            (
                "comments and commas dropped",
                "{ /* x */ \"a\": 1, // y\n}",
                Ok("{\n  \"a\": 1\n}\n"),
            ),
            (
                "nested keys sorted",
                r#"{"a": {"d": 1, "c": 2}}"#,
                Ok("{\n  \"a\": {\n    \"c\": 2,\n    \"d\": 1\n  }\n}\n"),
            ),
            ("syntax error", "{\n\"a\" 1}", Err((2, 5))),
        ];
        for (name, text, want) in cases {
            let got = normalize(text).map_err(|e| (e.line, e.column));
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{name}");
        }
        assert_eq!(
            normalize("{\"b\": 1, /* c */ \"a\": 2}").unwrap(),
            normalize("{\"a\": 2, \"b\": 1}").unwrap()
        );
    }

    #[test]
    fn canonical_text_sorts_every_level() {
        let value = json!({"z": [{"b": 1, "a": 2}], "a": null});
        assert_eq!(
            canonical_text(&value),
            "{\n  \"a\": null,\n  \"z\": [\n    {\n      \"a\": 2,\n      \"b\": 1\n    }\n  ]\n}\n"
        );
    }

    #[test]
    fn sha256_matches_known_vectors() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(sha256_hex(input), *want);
        }
    }
}
