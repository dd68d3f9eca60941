//! Merging the fragments of one server's policy into one document.
//!
//! # Order
//! Fragments are taken in ascending `order`, then ascending id (`namespace/name`),
//! whatever order they are passed in. Lists are concatenated in that order, each
//! fragment's own items in its own order. Fragment ids must be unique.
//!
//! # Sections (Headscale 0.29 top-level keys)
//! | section | kind | rule |
//! |---|---|---|
//! | `groups`, `hosts`, `tagOwners` | map | union of keys |
//! | `autoApprovers.routes` | map | union of keys |
//! | `autoApprovers.exitNode` | set | union, first appearance kept, duplicates dropped |
//! | `acls`, `grants`, `ssh`, `nodeAttrs`, `tests`, `sshTests` | list | concatenation |
//! | `randomizeClientPort` | scalar | one value |
//! | any other key (also inside `autoApprovers`) | pass-through | one value |
//!
//! A map key defined by two fragments must be defined identically (equal JSON;
//! for a list value the order of its items counts), and a scalar or pass-through
//! key set by two fragments must have equal values; anything else is a
//! [`Problem::Conflict`] naming both fragments and the key. Section names are
//! matched case-insensitively, as Headscale does (`ACLs` is `acls`), and written
//! out in Headscale's spelling; unknown keys are passed through as written, for
//! Headscale to reject (it refuses unknown fields since 0.27). A section set to
//! `null` counts as absent, as it does in Headscale. A section that is present but
//! empty stays in the result: `"acls": []` turns the default allow-all into
//! deny-all, so dropping it would open the network.
//!
//! The result is deterministic: the same fragments in any order give the same
//! [`Merged::text`] (pretty JSON, object keys sorted) and so the same
//! [`Merged::hash`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use super::hujson::{self, ParseError};
use super::{canonical_text, sha256_hex};

/// One `AclPolicy` object's contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// `namespace/name`: names the fragment in every error and finding.
    pub id: String,
    /// Lower orders come first in merged lists; equal orders sort by `id`.
    pub order: i32,
    /// The fragment's document; it must be a JSON object.
    pub value: Value,
}

impl Fragment {
    pub fn new(id: impl Into<String>, order: i32, value: Value) -> Self {
        Fragment {
            id: id.into(),
            order,
            value,
        }
    }

    /// Parses the fragment's HuJSON text.
    pub fn from_hujson(id: impl Into<String>, order: i32, text: &str) -> Result<Self, ParseError> {
        Ok(Fragment::new(id, order, hujson::parse(text)?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    Map,
    List,
    Scalar,
    AutoApprovers,
}

/// Headscale's top-level sections, spelled as it writes them.
pub(crate) const SECTIONS: &[(&str, Kind)] = &[
    ("groups", Kind::Map),
    ("hosts", Kind::Map),
    ("tagOwners", Kind::Map),
    ("autoApprovers", Kind::AutoApprovers),
    ("acls", Kind::List),
    ("grants", Kind::List),
    ("nodeAttrs", Kind::List),
    ("ssh", Kind::List),
    ("tests", Kind::List),
    ("sshTests", Kind::List),
    ("randomizeClientPort", Kind::Scalar),
];

const ROUTES: &str = "autoApprovers.routes";
const EXIT_NODE: &str = "autoApprovers.exitNode";

fn known_section(key: &str) -> Option<(&'static str, Kind)> {
    SECTIONS
        .iter()
        .copied()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
}

/// One top-level entry of the merged document. `section` is a top-level key, or
/// `autoApprovers.routes` / `autoApprovers.exitNode` for the parts of
/// `autoApprovers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// One key of a map section: `groups["group:eng"]`.
    Key { section: String, key: String },
    /// One element of a list section, by its index in the merged document: `acls[3]`.
    Item { section: String, index: usize },
    /// A whole scalar or pass-through section: `randomizeClientPort`.
    Section { section: String },
}

impl Entry {
    pub fn section(&self) -> &str {
        match self {
            Entry::Key { section, .. } | Entry::Item { section, .. } | Entry::Section { section } => section,
        }
    }

    /// The entry's value in a merged document.
    pub(crate) fn lookup<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let section_value = |section: &str| match section.strip_prefix("autoApprovers.") {
            Some(inner) => doc.get("autoApprovers")?.get(inner),
            None => doc.get(section),
        };
        match self {
            Entry::Key { section, key } => section_value(section)?.get(key),
            Entry::Item { section, index } => section_value(section)?.get(index),
            Entry::Section { section } => section_value(section),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Key { section, key } => write!(f, "{section}[{key:?}]"),
            Entry::Item { section, index } => write!(f, "{section}[{index}]"),
            Entry::Section { section } => f.write_str(section),
        }
    }
}

/// Where an entry came from: the fragment and the path inside that fragment's own
/// document, as the fragment spells it (`ACLs[1]`, `groups["group:eng"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub fragment: String,
    pub path: String,
}

/// One reason the fragments cannot be merged.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    #[error("no fragments to merge (apply the server's default policy instead)")]
    NoFragments,

    #[error("two fragments have the id {fragment:?}")]
    DuplicateId { fragment: String },

    #[error("fragment {fragment}: the policy must be a JSON object")]
    NotAnObject { fragment: String },

    #[error("fragment {fragment}: {section} must be {expected}")]
    WrongType {
        fragment: String,
        section: String,
        expected: &'static str,
    },

    #[error("fragment {fragment}: {section} is set twice ({spellings})")]
    DuplicateSection {
        fragment: String,
        section: String,
        spellings: String,
    },

    #[error("fragments {first} and {second} define {} differently", key_name(.section, .key))]
    Conflict {
        section: String,
        /// `None` for a scalar or pass-through section.
        key: Option<String>,
        first: String,
        second: String,
    },
}

fn key_name(section: &str, key: &Option<String>) -> String {
    match key {
        Some(key) => format!("{section}[{key:?}]"),
        None => section.to_string(),
    }
}

impl Problem {
    /// Stable PascalCase name for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::NoFragments => "NoFragments",
            Problem::DuplicateId { .. } => "DuplicateFragmentId",
            Problem::NotAnObject { .. } => "FragmentNotAnObject",
            Problem::WrongType { .. } => "FragmentWrongType",
            Problem::DuplicateSection { .. } => "DuplicateSection",
            Problem::Conflict { .. } => "MergeConflict",
        }
    }

    /// The fragments at fault.
    pub fn fragments(&self) -> Vec<&str> {
        match self {
            Problem::NoFragments => vec![],
            Problem::DuplicateId { fragment }
            | Problem::NotAnObject { fragment }
            | Problem::WrongType { fragment, .. }
            | Problem::DuplicateSection { fragment, .. } => vec![fragment],
            Problem::Conflict { first, second, .. } => vec![first, second],
        }
    }
}

/// Every reason the fragments cannot be merged, in merge order.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct MergeError {
    pub problems: Vec<Problem>,
}

impl MergeError {
    /// The reason of the first problem, for a condition that can hold only one.
    pub fn reason(&self) -> &'static str {
        self.problems.first().map_or("MergeConflict", Problem::reason)
    }

    /// Every fragment at fault, sorted.
    pub fn fragments(&self) -> BTreeSet<&str> {
        self.problems.iter().flat_map(Problem::fragments).collect()
    }

    /// The problems that name `fragment`.
    pub fn problems_of<'a>(&'a self, fragment: &'a str) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |p| p.fragments().contains(&fragment))
    }
}

/// The merged policy, with where each top-level entry came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    value: Value,
    text: String,
    hash: String,
    fragments: Vec<String>,
    origins: BTreeMap<Entry, Vec<Origin>>,
}

impl Merged {
    pub(crate) fn new(value: Value, fragments: Vec<String>, origins: BTreeMap<Entry, Vec<Origin>>) -> Self {
        let text = canonical_text(&value);
        let hash = sha256_hex(text.as_bytes());
        Merged {
            value,
            text,
            hash,
            fragments,
            origins,
        }
    }

    /// The merged document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The document as sent to Headscale: pretty JSON, object keys sorted,
    /// newline-terminated. Equal inputs give equal bytes.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// SHA-256 of [`Merged::text`], lowercase hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The ids of the merged fragments, in merge order.
    pub fn fragments(&self) -> &[String] {
        &self.fragments
    }

    /// Where an entry came from: one origin, or several when fragments defined the
    /// same map key identically (or listed the same exit-node approver); the first
    /// is first in merge order. Empty for an unknown entry.
    pub fn origins(&self, entry: &Entry) -> &[Origin] {
        self.origins.get(entry).map_or(&[], Vec::as_slice)
    }

    /// Every entry with its origins, sorted by entry.
    pub fn entries(&self) -> impl Iterator<Item = (&Entry, &[Origin])> {
        self.origins.iter().map(|(e, o)| (e, o.as_slice()))
    }

    /// Whether the document has neither `acls` nor `grants`, which Headscale
    /// enforces as allow-all (checked against 0.29.2: a `tests` entry expecting a
    /// deny fails without them and passes with `"acls": []`). A fragment holding
    /// only `groups` or `hosts` leaves the network open unless another one has rules.
    pub fn allows_all(&self) -> bool {
        ["acls", "grants"]
            .iter()
            .all(|s| self.value.get(s).is_none_or(Value::is_null))
    }

    /// Whether the policy a server serves (HuJSON text, e.g. from `GET
    /// /api/v1/policy`) says the same as this one, ignoring comments, whitespace,
    /// trailing commas and key order. Text that does not parse is not the same.
    pub fn same_as(&self, served: &str) -> bool {
        hujson::parse(served).is_ok_and(|v| v == self.value)
    }
}

/// Merges all fragments of one server's policy; see the module documentation for
/// the rules. Reports every problem found, not just the first.
pub fn merge(fragments: &[Fragment]) -> Result<Merged, MergeError> {
    if fragments.is_empty() {
        return Err(MergeError {
            problems: vec![Problem::NoFragments],
        });
    }
    let mut sorted: Vec<&Fragment> = fragments.iter().collect();
    sorted.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));

    let mut builder = Builder::default();
    let mut seen_ids = BTreeSet::new();
    for fragment in &sorted {
        if !seen_ids.insert(fragment.id.as_str()) {
            builder.problems.push(Problem::DuplicateId {
                fragment: fragment.id.clone(),
            });
        }
    }
    if !builder.problems.is_empty() {
        builder.problems.dedup();
        return Err(MergeError {
            problems: builder.problems,
        });
    }
    for fragment in &sorted {
        builder.add(fragment);
    }
    if !builder.problems.is_empty() {
        return Err(MergeError {
            problems: builder.problems,
        });
    }
    let ids = sorted.iter().map(|f| f.id.clone()).collect();
    Ok(Merged::new(Value::Object(builder.out), ids, builder.origins))
}

/// Object entries sorted by key, so the merge never depends on map iteration order.
fn sorted_entries(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

#[derive(Default)]
struct Builder {
    out: Map<String, Value>,
    origins: BTreeMap<Entry, Vec<Origin>>,
    problems: Vec<Problem>,
}

impl Builder {
    fn add(&mut self, fragment: &Fragment) {
        let id = fragment.id.as_str();
        let Value::Object(doc) = &fragment.value else {
            self.problems.push(Problem::NotAnObject { fragment: id.into() });
            return;
        };
        let mut spellings: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (key, value) in sorted_entries(doc) {
            let Some((section, kind)) = known_section(key) else {
                self.scalar(id, key, key, key, false, value);
                continue;
            };
            spellings.entry(section).or_default().push(key);
            if value.is_null() {
                continue;
            }
            match kind {
                Kind::Map => self.map(id, section, key, value),
                Kind::List => self.list(id, section, key, value),
                Kind::Scalar => self.scalar(id, section, key, section, false, value),
                Kind::AutoApprovers => self.auto_approvers(id, key, value),
            }
        }
        self.duplicate_spellings(id, "", spellings);
    }

    /// Headscale matches names case-insensitively and refuses one name twice.
    fn duplicate_spellings(&mut self, id: &str, prefix: &str, spellings: BTreeMap<&str, Vec<&str>>) {
        for (section, keys) in spellings {
            if keys.len() > 1 {
                self.problems.push(Problem::DuplicateSection {
                    fragment: id.into(),
                    section: format!("{prefix}{section}"),
                    spellings: keys.join(", "),
                });
            }
        }
    }

    /// `target` is where the section lives in the output, `written` how the
    /// fragment spells it.
    fn map(&mut self, id: &str, section: &str, written: &str, value: &Value) {
        let Value::Object(entries) = value else {
            self.wrong_type(id, section, "an object");
            return;
        };
        let target = section_slot(&mut self.out, section, || Value::Object(Map::new()));
        let Some(target) = target.as_object_mut() else {
            return;
        };
        for (key, value) in sorted_entries(entries) {
            let entry = Entry::Key {
                section: section.into(),
                key: key.clone(),
            };
            let origin = Origin {
                fragment: id.into(),
                path: format!("{written}[{key:?}]"),
            };
            match target.get(key) {
                None => {
                    target.insert(key.clone(), value.clone());
                    self.origins.insert(entry, vec![origin]);
                }
                Some(existing) if existing == value => {
                    self.origins.entry(entry).or_default().push(origin);
                }
                Some(_) => {
                    let first = first_fragment(&self.origins, &entry);
                    self.problems.push(Problem::Conflict {
                        section: section.into(),
                        key: Some(key.clone()),
                        first,
                        second: id.into(),
                    });
                }
            }
        }
    }

    fn list(&mut self, id: &str, section: &str, written: &str, value: &Value) {
        let Value::Array(items) = value else {
            self.wrong_type(id, section, "a list");
            return;
        };
        let target = section_slot(&mut self.out, section, || Value::Array(Vec::new()));
        let Some(target) = target.as_array_mut() else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let entry = Entry::Item {
                section: section.into(),
                index: target.len(),
            };
            target.push(item.clone());
            self.origins.insert(
                entry,
                vec![Origin {
                    fragment: id.into(),
                    path: format!("{written}[{i}]"),
                }],
            );
        }
    }

    /// A value that must be the same wherever it is set. `key` is its key in the
    /// output, inside the `autoApprovers` object when `in_auto_approvers`.
    fn scalar(
        &mut self,
        id: &str,
        section: &str,
        written: &str,
        key: &str,
        in_auto_approvers: bool,
        value: &Value,
    ) {
        let slot = if in_auto_approvers {
            self.out.get_mut("autoApprovers").and_then(Value::as_object_mut)
        } else {
            Some(&mut self.out)
        };
        let Some(slot) = slot else { return };
        let entry = Entry::Section {
            section: section.into(),
        };
        let origin = Origin {
            fragment: id.into(),
            path: written.into(),
        };
        match slot.get(key) {
            None => {
                slot.insert(key.into(), value.clone());
                self.origins.insert(entry, vec![origin]);
            }
            Some(existing) if existing == value => {
                self.origins.entry(entry).or_default().push(origin);
            }
            Some(_) => {
                let first = first_fragment(&self.origins, &entry);
                self.problems.push(Problem::Conflict {
                    section: section.into(),
                    key: None,
                    first,
                    second: id.into(),
                });
            }
        }
    }

    fn auto_approvers(&mut self, id: &str, written: &str, value: &Value) {
        let Value::Object(parts) = value else {
            self.wrong_type(id, "autoApprovers", "an object");
            return;
        };
        self.out
            .entry("autoApprovers")
            .or_insert_with(|| Value::Object(Map::new()));
        let mut spellings: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (key, value) in sorted_entries(parts) {
            if key.eq_ignore_ascii_case("routes") {
                spellings.entry("routes").or_default().push(key);
                if !value.is_null() {
                    self.map(id, ROUTES, &format!("{written}.{key}"), value);
                }
            } else if key.eq_ignore_ascii_case("exitNode") {
                spellings.entry("exitNode").or_default().push(key);
                if !value.is_null() {
                    self.exit_node(id, &format!("{written}.{key}"), value);
                }
            } else {
                let section = format!("autoApprovers.{key}");
                self.scalar(id, &section, &format!("{written}.{key}"), key, true, value);
            }
        }
        self.duplicate_spellings(id, "autoApprovers.", spellings);
    }

    /// A set of approvers: union, first appearance kept.
    fn exit_node(&mut self, id: &str, written: &str, value: &Value) {
        let Value::Array(items) = value else {
            self.wrong_type(id, EXIT_NODE, "a list");
            return;
        };
        let target = section_slot(&mut self.out, EXIT_NODE, || Value::Array(Vec::new()));
        let Some(target) = target.as_array_mut() else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let index = match target.iter().position(|existing| existing == item) {
                Some(index) => index,
                None => {
                    target.push(item.clone());
                    target.len() - 1
                }
            };
            self.origins
                .entry(Entry::Item {
                    section: EXIT_NODE.into(),
                    index,
                })
                .or_default()
                .push(Origin {
                    fragment: id.into(),
                    path: format!("{written}[{i}]"),
                });
        }
    }

    fn wrong_type(&mut self, id: &str, section: &str, expected: &'static str) {
        self.problems.push(Problem::WrongType {
            fragment: id.into(),
            section: section.into(),
            expected,
        });
    }
}

/// The output slot of a section (`acls`, or `autoApprovers.routes` inside the
/// `autoApprovers` object), created on first use.
fn section_slot<'m>(
    out: &'m mut Map<String, Value>,
    section: &str,
    empty: impl Fn() -> Value,
) -> &'m mut Value {
    match section.strip_prefix("autoApprovers.") {
        Some(inner) => {
            let outer = out
                .entry("autoApprovers")
                .or_insert_with(|| Value::Object(Map::new()));
            if !outer.is_object() {
                *outer = Value::Object(Map::new());
            }
            match outer {
                Value::Object(map) => map.entry(inner).or_insert_with(empty),
                _ => unreachable!("made an object just above"),
            }
        }
        None => out.entry(section).or_insert_with(empty),
    }
}

fn first_fragment(origins: &BTreeMap<Entry, Vec<Origin>>, entry: &Entry) -> String {
    origins
        .get(entry)
        .and_then(|o| o.first())
        .map(|o| o.fragment.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn frag(id: &str, order: i32, value: Value) -> Fragment {
        Fragment::new(id, order, value)
    }

    fn problems(fragments: &[Fragment]) -> Vec<Problem> {
        merge(fragments).expect_err("should not merge").problems
    }

    #[test]
    fn merges_sections() {
        // (name, fragments, merged document)
        let cases: Vec<(&str, Vec<Fragment>, Value)> = vec![
            (
                "one fragment is itself",
                vec![frag(
                    "a/x",
                    100,
                    json!({"acls": [{"action": "accept"}], "groups": {"group:g": ["a@"]}}),
                )],
                json!({"acls": [{"action": "accept"}], "groups": {"group:g": ["a@"]}}),
            ),
            (
                "maps are unioned",
                vec![
                    frag(
                        "a/x",
                        100,
                        json!({"groups": {"group:a": ["a@"]}, "hosts": {"db": "10.0.0.1"}}),
                    ),
                    frag(
                        "a/y",
                        100,
                        json!({"groups": {"group:b": ["b@"]}, "tagOwners": {"tag:t": ["a@"]}}),
                    ),
                ],
                json!({
                    "groups": {"group:a": ["a@"], "group:b": ["b@"]},
                    "hosts": {"db": "10.0.0.1"},
                    "tagOwners": {"tag:t": ["a@"]},
                }),
            ),
            (
                "identical definitions are fine",
                vec![
                    frag(
                        "a/x",
                        100,
                        json!({"groups": {"group:a": ["a@"]}, "randomizeClientPort": true}),
                    ),
                    frag(
                        "a/y",
                        100,
                        json!({"groups": {"group:a": ["a@"]}, "randomizeClientPort": true}),
                    ),
                ],
                json!({"groups": {"group:a": ["a@"]}, "randomizeClientPort": true}),
            ),
            (
                "lists concatenate by order, then id",
                vec![
                    frag("ns/b", 10, json!({"acls": [{"n": "b1"}, {"n": "b2"}]})),
                    frag("ns/z", 5, json!({"acls": [{"n": "z1"}]})),
                    frag("ns/a", 10, json!({"acls": [{"n": "a1"}], "ssh": [{"n": "s"}]})),
                ],
                json!({"acls": [{"n": "z1"}, {"n": "a1"}, {"n": "b1"}, {"n": "b2"}], "ssh": [{"n": "s"}]}),
            ),
            (
                "all list sections concatenate",
                vec![
                    frag(
                        "a/x",
                        1,
                        json!({"grants": [1], "nodeAttrs": [1], "tests": [1], "sshTests": [1]}),
                    ),
                    frag(
                        "a/y",
                        2,
                        json!({"grants": [2], "nodeAttrs": [2], "tests": [2], "sshTests": [2]}),
                    ),
                ],
                json!({"grants": [1, 2], "nodeAttrs": [1, 2], "tests": [1, 2], "sshTests": [1, 2]}),
            ),
            (
                "autoApprovers: routes unioned, exitNode a set",
                vec![
                    frag(
                        "a/x",
                        1,
                        json!({"autoApprovers": {"routes": {"10.0.0.0/8": ["a@"]}, "exitNode": ["a@", "tag:e"]}}),
                    ),
                    frag(
                        "a/y",
                        2,
                        json!({"autoApprovers": {"routes": {"10.1.0.0/16": ["b@"]}, "exitNode": ["tag:e", "b@"]}}),
                    ),
                ],
                json!({"autoApprovers": {
                    "routes": {"10.0.0.0/8": ["a@"], "10.1.0.0/16": ["b@"]},
                    "exitNode": ["a@", "tag:e", "b@"],
                }}),
            ),
            (
                "section names are case-insensitive and written canonically",
                vec![
                    frag("a/x", 1, json!({"ACLs": [1], "TagOwners": {"tag:a": []}})),
                    frag(
                        "a/y",
                        2,
                        json!({"acls": [2], "autoapprovers": {"EXITNODE": ["x@"]}}),
                    ),
                ],
                json!({"acls": [1, 2], "tagOwners": {"tag:a": []}, "autoApprovers": {"exitNode": ["x@"]}}),
            ),
            (
                "empty sections are kept (grants: [] is deny-all)",
                vec![
                    frag("a/x", 1, json!({"grants": [], "groups": {}})),
                    frag("a/y", 2, json!({})),
                ],
                json!({"grants": [], "groups": {}}),
            ),
            (
                "null sections are absent",
                vec![
                    frag("a/x", 1, json!({"acls": null, "groups": null})),
                    frag("a/y", 2, json!({"hosts": {}})),
                ],
                json!({"hosts": {}}),
            ),
            (
                "unknown key set once passes through for Headscale to judge",
                vec![
                    frag("a/x", 1, json!({"postures": {"p": 1}})),
                    frag("a/y", 2, json!({"acls": []})),
                ],
                json!({"postures": {"p": 1}, "acls": []}),
            ),
            (
                "unknown key set identically twice passes through",
                vec![
                    frag("a/x", 1, json!({"derpMap": 1})),
                    frag("a/y", 2, json!({"derpMap": 1})),
                ],
                json!({"derpMap": 1}),
            ),
        ];
        for (name, fragments, want) in cases {
            let merged = merge(&fragments).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(merged.value(), &want, "{name}");
            let reparsed: Value = serde_json::from_str(merged.text()).expect("text is JSON");
            assert_eq!(reparsed, want, "{name}: text");
        }
    }

    #[test]
    fn reports_problems() {
        // (name, fragments, problems)
        let cases: Vec<(&str, Vec<Fragment>, Vec<Problem>)> = vec![
            ("no fragments", vec![], vec![Problem::NoFragments]),
            (
                "conflicting group names both fragments and the key",
                vec![
                    frag("team-a/acl", 100, json!({"groups": {"group:eng": ["alice@"]}})),
                    frag("team-b/acl", 100, json!({"groups": {"group:eng": ["bob@"]}})),
                ],
                vec![Problem::Conflict {
                    section: "groups".into(),
                    key: Some("group:eng".into()),
                    first: "team-a/acl".into(),
                    second: "team-b/acl".into(),
                }],
            ),
            (
                "the first fragment in merge order is named first",
                vec![
                    frag("z/late", 200, json!({"hosts": {"db": "10.0.0.2"}})),
                    frag("a/early", 1, json!({"hosts": {"db": "10.0.0.1"}})),
                ],
                vec![Problem::Conflict {
                    section: "hosts".into(),
                    key: Some("db".into()),
                    first: "a/early".into(),
                    second: "z/late".into(),
                }],
            ),
            (
                "same members in another order is a different definition",
                vec![
                    frag("a/x", 1, json!({"tagOwners": {"tag:t": ["a@", "b@"]}})),
                    frag("a/y", 2, json!({"tagOwners": {"tag:t": ["b@", "a@"]}})),
                ],
                vec![Problem::Conflict {
                    section: "tagOwners".into(),
                    key: Some("tag:t".into()),
                    first: "a/x".into(),
                    second: "a/y".into(),
                }],
            ),
            (
                "route approvers conflict",
                vec![
                    frag(
                        "a/x",
                        1,
                        json!({"autoApprovers": {"routes": {"10.0.0.0/8": ["a@"]}}}),
                    ),
                    frag(
                        "a/y",
                        2,
                        json!({"autoApprovers": {"routes": {"10.0.0.0/8": ["b@"]}}}),
                    ),
                ],
                vec![Problem::Conflict {
                    section: "autoApprovers.routes".into(),
                    key: Some("10.0.0.0/8".into()),
                    first: "a/x".into(),
                    second: "a/y".into(),
                }],
            ),
            (
                "scalars conflict",
                vec![
                    frag("a/x", 1, json!({"randomizeClientPort": true})),
                    frag("a/y", 2, json!({"randomizeClientPort": false})),
                ],
                vec![Problem::Conflict {
                    section: "randomizeClientPort".into(),
                    key: None,
                    first: "a/x".into(),
                    second: "a/y".into(),
                }],
            ),
            (
                "unknown keys set differently conflict",
                vec![
                    frag("a/x", 1, json!({"postures": 1})),
                    frag("a/y", 2, json!({"postures": 2})),
                ],
                vec![Problem::Conflict {
                    section: "postures".into(),
                    key: None,
                    first: "a/x".into(),
                    second: "a/y".into(),
                }],
            ),
            (
                "fragment that is not an object",
                vec![frag("a/list", 1, json!([1])), frag("a/ok", 1, json!({}))],
                vec![Problem::NotAnObject {
                    fragment: "a/list".into(),
                }],
            ),
            (
                "section of the wrong type",
                vec![frag(
                    "a/x",
                    1,
                    json!({"acls": {"a": 1}, "groups": [], "autoApprovers": {"exitNode": "a@"}}),
                )],
                vec![
                    Problem::WrongType {
                        fragment: "a/x".into(),
                        section: "acls".into(),
                        expected: "a list",
                    },
                    Problem::WrongType {
                        fragment: "a/x".into(),
                        section: "autoApprovers.exitNode".into(),
                        expected: "a list",
                    },
                    Problem::WrongType {
                        fragment: "a/x".into(),
                        section: "groups".into(),
                        expected: "an object",
                    },
                ],
            ),
            (
                "one section spelt twice in one fragment",
                vec![frag("a/x", 1, json!({"acls": [], "ACLs": []}))],
                vec![Problem::DuplicateSection {
                    fragment: "a/x".into(),
                    section: "acls".into(),
                    spellings: "ACLs, acls".into(),
                }],
            ),
            (
                "duplicate id",
                vec![frag("a/x", 1, json!({})), frag("a/x", 2, json!({}))],
                vec![Problem::DuplicateId {
                    fragment: "a/x".into(),
                }],
            ),
            (
                "every problem is reported",
                vec![
                    frag(
                        "a/x",
                        1,
                        json!({"groups": {"group:a": ["a@"]}, "hosts": {"h": "10.0.0.1"}}),
                    ),
                    frag(
                        "a/y",
                        2,
                        json!({"groups": {"group:a": ["b@"]}, "hosts": {"h": "10.0.0.2"}}),
                    ),
                ],
                vec![
                    Problem::Conflict {
                        section: "groups".into(),
                        key: Some("group:a".into()),
                        first: "a/x".into(),
                        second: "a/y".into(),
                    },
                    Problem::Conflict {
                        section: "hosts".into(),
                        key: Some("h".into()),
                        first: "a/x".into(),
                        second: "a/y".into(),
                    },
                ],
            ),
        ];
        for (name, fragments, want) in cases {
            assert_eq!(problems(&fragments), want, "{name}");
        }
    }

    #[test]
    fn merge_error_names_fragments_and_reason() {
        let err = merge(&[
            frag("team-a/acl", 1, json!({"groups": {"group:eng": ["alice@"]}})),
            frag("team-b/acl", 2, json!({"groups": {"group:eng": ["bob@"]}})),
            frag("team-c/acl", 3, json!("nope")),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fragments team-a/acl and team-b/acl define groups[\"group:eng\"] differently; \
             fragment team-c/acl: the policy must be a JSON object"
        );
        assert_eq!(err.reason(), "MergeConflict");
        assert_eq!(
            err.fragments().into_iter().collect::<Vec<_>>(),
            ["team-a/acl", "team-b/acl", "team-c/acl"]
        );
        assert_eq!(err.problems_of("team-b/acl").count(), 1);
        assert_eq!(err.problems_of("team-z/acl").count(), 0);
        let reasons: Vec<_> = [
            Problem::NoFragments,
            Problem::DuplicateId { fragment: "x".into() },
            Problem::NotAnObject { fragment: "x".into() },
            Problem::WrongType {
                fragment: "x".into(),
                section: "acls".into(),
                expected: "a list",
            },
            Problem::DuplicateSection {
                fragment: "x".into(),
                section: "acls".into(),
                spellings: String::new(),
            },
        ]
        .iter()
        .map(Problem::reason)
        .collect();
        assert_eq!(
            reasons,
            [
                "NoFragments",
                "DuplicateFragmentId",
                "FragmentNotAnObject",
                "FragmentWrongType",
                "DuplicateSection"
            ]
        );
    }

    #[test]
    fn deterministic_under_permutation() {
        let fragments = vec![
            frag(
                "ns/a",
                10,
                json!({"acls": [{"src": ["a@"], "action": "accept"}], "groups": {"group:a": ["a@"]}}),
            ),
            frag(
                "ns/b",
                10,
                json!({"acls": [{"action": "accept", "src": ["b@"]}], "hosts": {"h": "10.0.0.1"}}),
            ),
            frag(
                "ns/c",
                5,
                json!({"grants": [{"src": ["*"]}], "autoApprovers": {"exitNode": ["c@"]}}),
            ),
            frag(
                "other/a",
                10,
                json!({"autoApprovers": {"exitNode": ["a@", "c@"]}, "ssh": []}),
            ),
        ];
        let reference = merge(&fragments).unwrap();
        assert_eq!(reference.fragments(), ["ns/c", "ns/a", "ns/b", "other/a"]);
        // Every permutation of four fragments.
        let mut order = [0, 1, 2, 3];
        let mut seen = 0;
        permute(&mut order, 0, &mut |perm| {
            let shuffled: Vec<Fragment> = perm.iter().map(|&i| fragments[i].clone()).collect();
            let merged = merge(&shuffled).unwrap();
            assert_eq!(merged.text(), reference.text(), "{perm:?}");
            assert_eq!(merged.hash(), reference.hash(), "{perm:?}");
            assert_eq!(merged, reference, "{perm:?}");
            seen += 1;
        });
        assert_eq!(seen, 24);
    }

    fn permute(items: &mut [usize; 4], k: usize, visit: &mut dyn FnMut(&[usize; 4])) {
        if k == items.len() {
            visit(items);
            return;
        }
        for i in k..items.len() {
            items.swap(k, i);
            permute(items, k + 1, visit);
            items.swap(k, i);
        }
    }

    #[test]
    fn text_and_hash_are_canonical() {
        let merged = merge(&[frag(
            "a/x",
            1,
            json!({"b": 1, "a": {"z": 1, "y": [{"d": 1, "c": 2}]}}),
        )])
        .unwrap();
        assert_eq!(
            merged.text(),
            "{\n  \"a\": {\n    \"y\": [\n      {\n        \"c\": 2,\n        \"d\": 1\n      }\n    ],\n    \"z\": 1\n  },\n  \"b\": 1\n}\n"
        );
        assert_eq!(merged.hash(), sha256_hex(merged.text().as_bytes()));
        assert_eq!(merged.hash().len(), 64);
        let other = merge(&[frag("a/x", 1, json!({"b": 2}))]).unwrap();
        assert_ne!(merged.hash(), other.hash());
    }

    #[test]
    fn records_origins() {
        let merged = merge(&[
            frag(
                "ns/b",
                2,
                json!({"ACLs": [{"n": 1}, {"n": 2}], "groups": {"group:g": ["a@"]}}),
            ),
            frag(
                "ns/a",
                1,
                json!({
                    "acls": [{"n": 0}],
                    "groups": {"group:g": ["a@"], "group:h": ["h@"]},
                    "randomizeClientPort": true,
                    "autoApprovers": {"routes": {"10.0.0.0/8": ["a@"]}, "exitNode": ["x@"]},
                }),
            ),
            frag(
                "ns/c",
                3,
                json!({"autoApprovers": {"exitNode": ["x@"]}, "custom": 1}),
            ),
        ])
        .unwrap();
        let origin = |fragment: &str, path: &str| Origin {
            fragment: fragment.into(),
            path: path.into(),
        };
        let item = |section: &str, index| Entry::Item {
            section: section.into(),
            index,
        };
        let key = |section: &str, key: &str| Entry::Key {
            section: section.into(),
            key: key.into(),
        };
        let section = |section: &str| Entry::Section {
            section: section.into(),
        };
        let cases: Vec<(Entry, Vec<Origin>)> = vec![
            (item("acls", 0), vec![origin("ns/a", "acls[0]")]),
            (item("acls", 1), vec![origin("ns/b", "ACLs[0]")]),
            (item("acls", 2), vec![origin("ns/b", "ACLs[1]")]),
            (
                key("groups", "group:g"),
                vec![
                    origin("ns/a", "groups[\"group:g\"]"),
                    origin("ns/b", "groups[\"group:g\"]"),
                ],
            ),
            (
                key("groups", "group:h"),
                vec![origin("ns/a", "groups[\"group:h\"]")],
            ),
            (
                section("randomizeClientPort"),
                vec![origin("ns/a", "randomizeClientPort")],
            ),
            (
                key("autoApprovers.routes", "10.0.0.0/8"),
                vec![origin("ns/a", "autoApprovers.routes[\"10.0.0.0/8\"]")],
            ),
            (
                item("autoApprovers.exitNode", 0),
                vec![
                    origin("ns/a", "autoApprovers.exitNode[0]"),
                    origin("ns/c", "autoApprovers.exitNode[0]"),
                ],
            ),
            (section("custom"), vec![origin("ns/c", "custom")]),
            (item("acls", 3), vec![]),
        ];
        for (entry, want) in &cases {
            assert_eq!(merged.origins(entry), want.as_slice(), "{entry}");
        }
        assert_eq!(merged.entries().count(), cases.len() - 1);
        for (entry, _) in merged.entries() {
            assert!(entry.lookup(merged.value()).is_some(), "{entry} has a value");
        }
        assert_eq!(item("acls", 2).lookup(merged.value()), Some(&json!({"n": 2})));
        assert_eq!(key("groups", "group:h").to_string(), "groups[\"group:h\"]");
        assert_eq!(item("acls", 2).to_string(), "acls[2]");
        assert_eq!(section("custom").to_string(), "custom");
    }

    #[test]
    fn same_as_ignores_formatting() {
        let merged = merge(&[frag(
            "a/x",
            1,
            json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}),
        )])
        .unwrap();
        let cases: &[(&str, &str, bool)] = &[
            ("our own text", merged.text(), true),
            (
                "comments, order and trailing commas",
                "// served\n{\"acls\": [{\"dst\": [\"*:*\"], \"src\": [\"*\"], \"action\": \"accept\",},],}",
                true,
            ),
            ("different content", r#"{"acls": []}"#, false),
            ("not parseable", "{", false),
            ("empty", "", false),
        ];
        for (name, served, want) in cases {
            assert_eq!(merged.same_as(served), *want, "{name}");
        }
    }

    #[test]
    fn allows_all_without_acls_or_grants() {
        let cases = [
            (json!({"groups": {"group:a": ["a@"]}}), true),
            (json!({"acls": []}), false),
            (json!({"grants": []}), false),
            (json!({"acls": null}), true),
            (
                json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}),
                false,
            ),
        ];
        for (doc, want) in cases {
            let merged = merge(&[frag("a/x", 1, doc.clone())]).unwrap();
            assert_eq!(merged.allows_all(), want, "{doc}");
        }
    }

    #[test]
    fn fragment_from_hujson() {
        let f = Fragment::from_hujson("ns/x", 7, "{ // c\n \"acls\": [],\n}").unwrap();
        assert_eq!(f, Fragment::new("ns/x", 7, json!({"acls": []})));
        let err = Fragment::from_hujson("ns/x", 7, "{\n \"acls\": [}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 11));
    }
}
