//! The pure part of the policy controller. From the fragments as read to the policy
//! to apply or the reason not to ([`plan`]); from what happened on the server
//! ([`Outcome`]) to each fragment's status, the server's policy status and the
//! Events. No Kubernetes client and no HTTP in here; the table tests below drive it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};

use crate::api::conditions::{self, reason};
use crate::api::{AclPolicyStatus, EmptyPolicy, HeadscaleServerStatus, ServerPolicyStatus};
use crate::policy::{self, DefaultPolicy, Fragment, Merged, ParseError, Severity};

/// Longest message kept in a condition or an Event.
const MAX_MESSAGE: usize = 2000;

/// One fragment as the controller read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// `namespace/name`.
    pub id: String,
    pub order: i32,
    /// The HuJSON text, or why there is none (a missing ConfigMap or key).
    pub text: Result<String, Unreadable>,
}

/// Why a fragment has no text.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    pub reason: &'static str,
    pub message: String,
}

/// Who refused a merged policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Reading, parsing, merging or the local checks.
    Operator,
    /// Headscale's check or set call.
    Headscale,
}

impl By {
    pub fn label(self) -> &'static str {
        match self {
            By::Operator => "operator",
            By::Headscale => "headscale",
        }
    }
}

/// Why the fragments do not make a policy the server may get.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// CamelCase, of the first problem in merge order.
    pub reason: &'static str,
    pub by: By,
    /// What is wrong, per fragment at fault. Empty when the fault cannot be
    /// attributed (then every fragment shares `summary`).
    pub at_fault: BTreeMap<String, Vec<String>>,
    /// Everything that is wrong, for the server's condition.
    pub summary: String,
    /// Hash of the merged candidate; `None` when the fragments could not be merged.
    pub candidate: Option<String>,
}

/// The policy a server should serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub merged: Merged,
    /// Set when no fragment names the server and the `whenEmpty` default applies.
    pub default: Option<EmptyPolicy>,
}

/// What the fragments ask of the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// No fragment, and the operator never applied a policy to this server: its own
    /// policy stays (adopting a running Headscale must not cut off its network).
    LeaveAlone,
    Apply(Desired),
    /// Nothing may go to the server.
    Invalid(Rejection),
}

/// The plan and the warnings (rules Headscale accepts that cannot do what was
/// meant), per fragment id.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    pub plan: Plan,
    pub warnings: BTreeMap<String, Vec<String>>,
}

/// Reads, parses, merges and checks the fragments of one server. `applied_before`:
/// the server's status records a policy the operator applied.
pub fn plan(sources: &[Source], when_empty: EmptyPolicy, applied_before: bool) -> Built {
    let none = BTreeMap::new();
    if sources.is_empty() {
        let plan = if applied_before {
            let default = match when_empty {
                EmptyPolicy::DenyAll => DefaultPolicy::DenyAll,
                EmptyPolicy::AllowAll => DefaultPolicy::AllowAll,
            };
            Plan::Apply(Desired {
                merged: policy::default_policy(default),
                default: Some(when_empty),
            })
        } else {
            Plan::LeaveAlone
        };
        return Built { plan, warnings: none };
    }
    let mut sorted: Vec<&Source> = sources.iter().collect();
    sorted.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));

    // Read and parse: every fragment's own problems.
    let mut fragments = Vec::new();
    let mut unreadable: Vec<(&str, &'static str, String)> = Vec::new();
    for source in &sorted {
        match &source.text {
            Err(u) => unreadable.push((&source.id, u.reason, u.message.clone())),
            Ok(text) => match Fragment::from_hujson(source.id.clone(), source.order, text) {
                Ok(f) => fragments.push(f),
                Err(e) => unreadable.push((&source.id, e.reason(), syntax_message(&e))),
            },
        }
    }
    if let Some((_, first_reason, _)) = unreadable.first() {
        let mut at_fault: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, _, message) in &unreadable {
            at_fault.entry(id.to_string()).or_default().push(message.clone());
        }
        let summary = unreadable
            .iter()
            .map(|(id, _, m)| format!("fragment {id}: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        return invalid(
            Rejection {
                reason: first_reason,
                by: By::Operator,
                at_fault,
                summary,
                candidate: None,
            },
            none,
        );
    }

    let merged = match policy::merge(&fragments) {
        Ok(m) => m,
        Err(e) => {
            let mut at_fault: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for id in e.fragments() {
                at_fault.insert(
                    id.to_string(),
                    e.problems_of(id).map(ToString::to_string).collect(),
                );
            }
            return invalid(
                Rejection {
                    reason: e.reason(),
                    by: By::Operator,
                    at_fault,
                    summary: e.to_string(),
                    candidate: None,
                },
                none,
            );
        }
    };

    let findings = policy::validate(&merged);
    let mut warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity == Severity::Warning) {
        for id in f.fragments() {
            warnings.entry(id.to_string()).or_default().push(f.to_string());
        }
    }
    if merged.allows_all() {
        for id in merged.fragments() {
            warnings.entry(id.clone()).or_default().push(
                "the merged policy has neither \"acls\" nor \"grants\", so Headscale allows all traffic"
                    .into(),
            );
        }
    }
    let errors: Vec<_> = findings.iter().filter(|f| f.is_error()).collect();
    if let Some(first) = errors.first() {
        let mut at_fault: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &errors {
            for id in f.fragments() {
                at_fault.entry(id.to_string()).or_default().push(f.to_string());
            }
        }
        let summary = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return invalid(
            Rejection {
                reason: first.kind.reason(),
                by: By::Operator,
                at_fault,
                summary,
                candidate: Some(merged.hash().to_string()),
            },
            warnings,
        );
    }
    Built {
        plan: Plan::Apply(Desired {
            merged,
            default: None,
        }),
        warnings,
    }
}

fn invalid(rejection: Rejection, warnings: BTreeMap<String, Vec<String>>) -> Built {
    Built {
        plan: Plan::Invalid(rejection),
        warnings,
    }
}

fn syntax_message(e: &ParseError) -> String {
    format!("HuJSON syntax error at {e}")
}

/// Headscale refused `merged` with `message`; the fragments its message points at
/// are at fault ([`Merged::blame`]).
pub fn rejected_by_headscale(merged: &Merged, message: &str) -> Rejection {
    let file_mode = message.contains("update is disabled for modes other than");
    let at_fault = merged
        .blame(message)
        .into_iter()
        .map(|id| (id, vec![format!("Headscale: {message}")]))
        .collect();
    let summary = if file_mode {
        format!(
            "Headscale keeps its policy in a file and cannot set it through the API; \
             configure `policy.mode: database` on that server ({message})"
        )
    } else {
        format!("Headscale rejected the merged policy: {message}")
    };
    Rejection {
        reason: if file_mode {
            reason::POLICY_MODE_NOT_DATABASE
        } else {
            reason::POLICY_REJECTED
        },
        by: By::Headscale,
        at_fault: if file_mode { BTreeMap::new() } else { at_fault },
        summary,
        candidate: Some(merged.hash().to_string()),
    }
}

/// What a reconcile found or did on the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The server cannot be talked to (not Ready, or managed mode). `desired`: the
    /// hash of the policy that would be applied.
    ServerNotReady {
        message: String,
        desired: String,
    },
    /// See [`Plan::LeaveAlone`].
    LeftAlone,
    Rejected(Rejection),
    /// Headscale serves the desired policy.
    Served {
        hash: String,
        fragments: Vec<String>,
        default: Option<EmptyPolicy>,
        /// When Headscale stored it; `None` if it does not say (file mode).
        applied_time: Option<Timestamp>,
        /// The operator wrote it in this reconcile.
        wrote: bool,
        /// ... because someone else had changed the served policy.
        drift: bool,
    },
    /// Headscale could not be asked or written to.
    Failed {
        reason: &'static str,
        message: String,
        /// Hash of the policy that was to be applied.
        desired: String,
    },
}

/// A Kubernetes timestamp: whole seconds, as the API server stores it, so a
/// recomputed status equals the stored one.
fn k8s_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn truncate(s: &str) -> String {
    crate::controller::truncate(s, MAX_MESSAGE)
}

/// Why fragment `id` is not applied: its own problems, or the fragments at fault.
pub fn rejection_message(r: &Rejection, id: &str) -> String {
    const NOT_APPLIED: &str = "Not applied; the server's policy was not changed.";
    let text = if let Some(own) = r.at_fault.get(id) {
        format!("{NOT_APPLIED} This fragment is at fault: {}", own.join("; "))
    } else if r.at_fault.is_empty() {
        let who = match r.by {
            By::Headscale => " (the fragment at fault could not be determined)",
            By::Operator => "",
        };
        format!("{NOT_APPLIED} {}{who}", r.summary)
    } else {
        let names: Vec<&str> = r.at_fault.keys().map(String::as_str).collect();
        let plural = if names.len() == 1 { "" } else { "s" };
        let details: Vec<String> = r.at_fault.values().flatten().cloned().collect();
        format!(
            "{NOT_APPLIED} Fragment{plural} {} at fault: {}",
            names.join(", "),
            details.join("; ")
        )
    };
    truncate(&text)
}

/// The status of fragment `id` (at `generation`) after `outcome`. Pure; an
/// unchanged world gives an unchanged status.
pub fn fragment_status(
    old: &AclPolicyStatus,
    id: &str,
    generation: Option<i64>,
    outcome: &Outcome,
    warnings: &[String],
    now: Timestamp,
) -> AclPolicyStatus {
    let mut status = AclPolicyStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        merged_hash: old.merged_hash.clone(),
        last_applied_time: old.last_applied_time.clone(),
        warnings: warnings.to_vec(),
    };
    let (ok, why, message) = match outcome {
        Outcome::ServerNotReady { message, desired } => {
            if nothing_pending(old, generation, desired) {
                // Still applied; the server's own status says it is unreachable.
                return status;
            }
            status.merged_hash = Some(desired.clone());
            (false, reason::SERVER_NOT_READY, message.clone())
        }
        // No fragment exists when the server is left alone; nothing to say.
        Outcome::LeftAlone => return status,
        Outcome::Rejected(r) => {
            status.merged_hash = r.candidate.clone();
            (false, r.reason, rejection_message(r, id))
        }
        Outcome::Served {
            hash,
            fragments,
            applied_time,
            ..
        } => {
            status.merged_hash = Some(hash.clone());
            if let Some(t) = applied_time {
                status.last_applied_time = Some(k8s_time(*t));
            }
            (
                true,
                reason::APPLIED,
                format!(
                    "Headscale serves merged policy {} of {} fragment{}",
                    short(hash),
                    fragments.len(),
                    if fragments.len() == 1 { "" } else { "s" }
                ),
            )
        }
        Outcome::Failed {
            reason,
            message,
            desired,
        } => {
            if nothing_pending(old, generation, desired) {
                // A failed re-check of what is applied changes nothing.
                return status;
            }
            status.merged_hash = Some(desired.clone());
            (false, *reason, format!("Not applied yet (will retry): {message}"))
        }
    };
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        ok,
        why,
        truncate(&message),
        generation,
        now,
    );
    status
}

/// The fragment is Ready at this generation as part of `desired`: nothing of it
/// waits to be applied.
fn nothing_pending(old: &AclPolicyStatus, generation: Option<i64>, desired: &str) -> bool {
    let ready = conditions::find(&old.conditions, conditions::READY).is_some_and(|c| c.status == "True");
    ready && old.observed_generation == generation && old.merged_hash.as_deref() == Some(desired)
}

/// The policy controller's part of a server's status: `status.policy` and the
/// `PolicyApplied` condition. Compared and written on its own.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServerPart {
    pub policy: Option<ServerPolicyStatus>,
    pub condition: Option<Condition>,
}

impl ServerPart {
    pub fn of(status: Option<&HeadscaleServerStatus>) -> ServerPart {
        ServerPart {
            policy: status.and_then(|s| s.policy.clone()),
            condition: status
                .and_then(|s| conditions::find(&s.conditions, conditions::POLICY_APPLIED).cloned()),
        }
    }

    /// The hash of the policy the operator last applied, if any.
    pub fn applied_hash(&self) -> Option<&str> {
        self.policy.as_ref().and_then(|p| p.hash.as_deref())
    }
}

/// The server's policy status after `outcome`. Pure.
pub fn server_part(
    old: &ServerPart,
    generation: Option<i64>,
    outcome: &Outcome,
    now: Timestamp,
) -> ServerPart {
    let mut part = old.clone();
    let applied = |desired: &str| {
        old.applied_hash() == Some(desired) && old.condition.as_ref().is_some_and(|c| c.status == "True")
    };
    let (ok, why, message) = match outcome {
        Outcome::ServerNotReady { desired, .. } if applied(desired) => return part,
        Outcome::ServerNotReady { message, .. } => (false, reason::SERVER_NOT_READY, message.clone()),
        Outcome::LeftAlone => (
            false,
            reason::NO_ACL_POLICIES,
            "No AclPolicy names this server and the operator never applied a policy to it, so \
             Headscale's own policy is left as it is. spec.policy.whenEmpty applies only once \
             the operator has applied a policy."
                .to_string(),
        ),
        Outcome::Rejected(r) => (false, r.reason, r.summary.clone()),
        Outcome::Served {
            hash,
            fragments,
            default,
            applied_time,
            ..
        } => {
            let applied_time = applied_time
                .map(k8s_time)
                .or_else(|| part.policy.as_ref().and_then(|p| p.applied_time.clone()));
            part.policy = Some(ServerPolicyStatus {
                hash: Some(hash.clone()),
                applied_time,
                fragments: fragments.clone(),
                default: *default,
            });
            match default {
                Some(d) => (
                    true,
                    reason::DEFAULT_APPLIED,
                    format!(
                        "No AclPolicy names this server; Headscale serves the {d:?} default ({})",
                        short(hash)
                    ),
                ),
                None => (
                    true,
                    reason::APPLIED,
                    format!(
                        "Headscale serves the merged policy {} of {} AclPolic{}",
                        short(hash),
                        fragments.len(),
                        if fragments.len() == 1 { "y" } else { "ies" }
                    ),
                ),
            }
        }
        Outcome::Failed { desired, .. } if applied(desired) => return part,
        Outcome::Failed { reason, message, .. } => {
            (false, *reason, format!("Not applied yet (will retry): {message}"))
        }
    };
    let mut conds: Vec<Condition> = part.condition.take().into_iter().collect();
    conditions::set(
        &mut conds,
        conditions::POLICY_APPLIED,
        ok,
        why,
        truncate(&message),
        generation,
        now,
    );
    part.condition = conds.pop();
    part
}

/// An Event when a condition changes status or reason; none on an unchanged requeue.
pub fn transition_event(old: Option<&Condition>, new: Option<&Condition>, action: &str) -> Option<Event> {
    crate::controller::condition_event(old, new, action)
}

/// The server's Events for one reconcile: a write is announced (`PolicyApplied`, or
/// `PolicyDriftRepaired` as a Warning); otherwise a change of the `PolicyApplied`
/// condition is.
pub fn server_events(old: &ServerPart, new: &ServerPart, outcome: &Outcome) -> Vec<Event> {
    if let Outcome::Served {
        hash,
        fragments,
        default,
        wrote: true,
        drift,
        ..
    } = outcome
    {
        let what = match default {
            Some(d) => format!("the {d:?} default policy"),
            None => format!("the merged policy of {} AclPolicies", fragments.len()),
        };
        let (type_, reason, note) = if *drift {
            (
                EventType::Warning,
                reason::POLICY_DRIFT_REPAIRED,
                format!(
                    "The policy Headscale served was changed outside the operator; re-applied {what} ({})",
                    short(hash)
                ),
            )
        } else {
            (
                EventType::Normal,
                "PolicyApplied",
                format!("Applied {what} ({})", short(hash)),
            )
        };
        return vec![Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "ApplyPolicy".into(),
            secondary: None,
        }];
    }
    transition_event(old.condition.as_ref(), new.condition.as_ref(), "ApplyPolicy")
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(id: &str, order: i32, text: &str) -> Source {
        Source {
            id: id.into(),
            order,
            text: Ok(text.into()),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const TEAM_A: &str = r#"{
        // team a
        "groups": {"group:a": ["alice@"]},
        "tagOwners": {"tag:web": ["group:a"]},
        "acls": [{"action": "accept", "src": ["group:a"], "dst": ["tag:web:443"]}],
    }"#;
    const TEAM_B: &str = r#"{
        "groups": {"group:b": ["bob@"]},
        "acls": [{"action": "accept", "src": ["group:b"], "dst": ["tag:web:80"]}],
    }"#;

    fn rejection(built: &Built) -> &Rejection {
        match &built.plan {
            Plan::Invalid(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn no_fragments_leave_alone_until_a_policy_was_applied() {
        // (when_empty, applied_before, plan text or LeaveAlone)
        let cases = [
            (EmptyPolicy::DenyAll, false, None),
            (EmptyPolicy::AllowAll, false, None),
            (EmptyPolicy::DenyAll, true, Some("{\n  \"acls\": []\n}\n")),
            (EmptyPolicy::AllowAll, true, Some("{}\n")),
        ];
        for (when_empty, before, want) in cases {
            let built = plan(&[], when_empty, before);
            match (&built.plan, want) {
                (Plan::LeaveAlone, None) => {}
                (Plan::Apply(d), Some(text)) => {
                    assert_eq!(d.merged.text(), text);
                    assert_eq!(d.default, Some(when_empty));
                }
                (other, want) => panic!("{when_empty:?} {before}: {other:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn two_fragments_merge_in_order() {
        let built = plan(
            &[src("ns/b", 20, TEAM_B), src("ns/a", 10, TEAM_A)],
            EmptyPolicy::DenyAll,
            false,
        );
        let Plan::Apply(d) = &built.plan else {
            panic!("{:?}", built.plan)
        };
        assert_eq!(d.merged.fragments(), ["ns/a", "ns/b"]);
        assert_eq!(d.default, None);
        let acls = d.merged.value()["acls"].as_array().unwrap();
        assert_eq!(acls[0]["src"][0], "group:a");
        assert_eq!(acls[1]["src"][0], "group:b");
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        // Same inputs in another order: same bytes.
        let again = plan(
            &[src("ns/a", 10, TEAM_A), src("ns/b", 20, TEAM_B)],
            EmptyPolicy::DenyAll,
            false,
        );
        assert_eq!(again, built);
    }

    #[test]
    fn every_bad_input_names_the_fragment_at_fault() {
        let unreadable = Source {
            id: "ns/cm".into(),
            order: 1,
            text: Err(Unreadable {
                reason: reason::CONFIG_MAP_NOT_FOUND,
                message: "ConfigMap \"x\" does not exist".into(),
            }),
        };
        // (name, sources, reason, fragments at fault, text in the at-fault message, merged?)
        type Case<'a> = (&'a str, Vec<Source>, &'a str, Vec<&'a str>, &'a str, bool);
        let cases: Vec<Case> = vec![
            (
                "syntax error",
                vec![src("ns/a", 10, TEAM_A), src("ns/b", 20, "{\n  \"acls\": [\n}")],
                "PolicySyntaxError",
                vec!["ns/b"],
                "line 3, column 1",
                false,
            ),
            (
                "missing ConfigMap",
                vec![src("ns/a", 10, TEAM_A), unreadable],
                "ConfigMapNotFound",
                vec!["ns/cm"],
                "does not exist",
                false,
            ),
            (
                "conflicting group",
                vec![
                    src("ns/a", 10, TEAM_A),
                    src("ns/c", 20, r#"{"groups": {"group:a": ["carol@"]}}"#),
                ],
                "MergeConflict",
                vec!["ns/a", "ns/c"],
                "fragments ns/a and ns/c define groups[\"group:a\"] differently",
                false,
            ),
            (
                "undefined group",
                vec![
                    src("ns/a", 10, TEAM_A),
                    src(
                        "ns/d",
                        20,
                        r#"{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}"#,
                    ),
                ],
                "UndefinedGroup",
                vec!["ns/d"],
                "group:nope",
                true,
            ),
            (
                "tag not in tagOwners",
                vec![
                    src("ns/a", 10, TEAM_A),
                    src(
                        "ns/e",
                        20,
                        r#"{"acls": [{"action": "accept", "src": ["group:a"], "dst": ["tag:db:5432"]}]}"#,
                    ),
                ],
                "UndefinedTag",
                vec!["ns/e"],
                "tag:db",
                true,
            ),
            (
                "user without @",
                vec![src(
                    "ns/f",
                    20,
                    r#"{"groups": {"group:f": ["frank"]}, "acls": []}"#,
                )],
                "UserWithoutAt",
                vec!["ns/f"],
                "frank@",
                true,
            ),
        ];
        for (name, sources, want_reason, want_fault, want_text, merged) in cases {
            let built = plan(&sources, EmptyPolicy::DenyAll, true);
            let r = rejection(&built);
            assert_eq!(r.reason, want_reason, "{name}");
            assert_eq!(r.by, By::Operator, "{name}");
            assert_eq!(
                r.at_fault.keys().map(String::as_str).collect::<Vec<_>>(),
                want_fault,
                "{name}"
            );
            assert_eq!(r.candidate.is_some(), merged, "{name}");
            for id in &want_fault {
                let own = rejection_message(r, id);
                assert!(own.contains("This fragment is at fault"), "{name}: {own}");
                assert!(own.contains(want_text), "{name}: {own}");
            }
            // Every other fragment is told which one is at fault.
            for s in sources.iter().filter(|s| !want_fault.contains(&s.id.as_str())) {
                let other = rejection_message(r, &s.id);
                assert!(
                    other.contains(want_fault[0]) && other.contains("at fault"),
                    "{name}: {other}"
                );
                assert!(other.contains(want_text), "{name}: {other}");
            }
        }
    }

    #[test]
    fn headscale_rejections_are_blamed_where_possible() {
        let built = plan(
            &[
                src("ns/a", 10, TEAM_A),
                src(
                    "ns/t",
                    20,
                    r#"{"tests": [{"src": "alice@", "accept": ["tag:web:22"]}]}"#,
                ),
            ],
            EmptyPolicy::DenyAll,
            false,
        );
        let Plan::Apply(d) = &built.plan else {
            panic!("{:?}", built.plan)
        };
        let message = "test(s) failed:\nalice@ -> tag:web:22: expected accept, got deny";
        let r = rejected_by_headscale(&d.merged, message);
        assert_eq!((r.reason, r.by), ("PolicyRejected", By::Headscale));
        assert_eq!(r.at_fault.keys().collect::<Vec<_>>(), ["ns/t"]);
        assert_eq!(r.candidate.as_deref(), Some(d.merged.hash()));
        assert!(rejection_message(&r, "ns/t").contains(message));
        assert!(rejection_message(&r, "ns/a").contains("Fragment ns/t at fault"));

        // Nothing to blame: everyone gets the message and is told so.
        let r = rejected_by_headscale(&d.merged, "parsing policy: unknown field: \"bogus\"");
        assert!(r.at_fault.is_empty());
        let m = rejection_message(&r, "ns/a");
        assert!(
            m.contains("unknown field") && m.contains("could not be determined"),
            "{m}"
        );

        // File mode has its own reason.
        let r = rejected_by_headscale(&d.merged, "update is disabled for modes other than 'database'");
        assert_eq!(r.reason, "PolicyModeNotDatabase");
        assert!(rejection_message(&r, "ns/a").contains("policy.mode: database"));
    }

    #[test]
    fn warnings_do_not_block() {
        let built = plan(
            &[src("ns/g", 1, r#"{"groups": {"group:g": ["gina@"]}}"#)],
            EmptyPolicy::DenyAll,
            false,
        );
        assert!(matches!(built.plan, Plan::Apply(_)));
        assert!(built.warnings["ns/g"][0].contains("allows all traffic"));
    }

    fn served(hash: &str, wrote: bool, drift: bool, at: &str) -> Outcome {
        Outcome::Served {
            hash: hash.into(),
            fragments: vec!["ns/a".into(), "ns/b".into()],
            default: None,
            applied_time: Some(t(at)),
            wrote,
            drift,
        }
    }

    #[test]
    fn fragment_status_follows_the_outcome() {
        let now = t("2026-01-01T00:00:00Z");
        let s1 = fragment_status(
            &AclPolicyStatus::default(),
            "ns/a",
            Some(1),
            &served("h1", true, false, "2026-01-01T00:00:01Z"),
            &[],
            now,
        );
        let ready = conditions::find(&s1.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Applied")
        );
        assert_eq!(s1.merged_hash.as_deref(), Some("h1"));
        assert_eq!(s1.last_applied_time, Some(Time(t("2026-01-01T00:00:01Z"))));
        assert_eq!(s1.observed_generation, Some(1));

        // Idle: the same outcome without a write gives the same status.
        let later = t("2026-01-02T00:00:00Z");
        let s2 = fragment_status(
            &s1,
            "ns/a",
            Some(1),
            &served("h1", false, false, "2026-01-01T00:00:01Z"),
            &[],
            later,
        );
        assert_eq!(s1, s2);

        // A transient failure with nothing pending changes nothing.
        let failed = Outcome::Failed {
            reason: "ServerUnreachable",
            message: "connection refused".into(),
            desired: "h1".into(),
        };
        assert_eq!(fragment_status(&s2, "ns/a", Some(1), &failed, &[], later), s2);
        // With a change pending it is reported.
        let s3 = fragment_status(&s2, "ns/a", Some(2), &failed, &[], later);
        let ready = conditions::find(&s3.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ServerUnreachable")
        );

        // So does an unreachable server; a pending change is reported.
        let down = |desired: &str| Outcome::ServerNotReady {
            message: "HeadscaleServer corp is not Ready".into(),
            desired: desired.into(),
        };
        assert_eq!(fragment_status(&s2, "ns/a", Some(1), &down("h1"), &[], later), s2);
        let pending = fragment_status(&s2, "ns/a", Some(1), &down("h9"), &[], later);
        let ready = conditions::find(&pending.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ServerNotReady")
        );
        assert_eq!(pending.merged_hash.as_deref(), Some("h9"));

        // A rejection keeps the last applied time and shows the candidate.
        let r = Rejection {
            reason: "UndefinedGroup",
            by: By::Operator,
            at_fault: BTreeMap::from([("ns/a".to_string(), vec!["bad".to_string()])]),
            summary: "bad".into(),
            candidate: Some("h2".into()),
        };
        let s4 = fragment_status(&s2, "ns/a", Some(3), &Outcome::Rejected(r), &[], later);
        let ready = conditions::find(&s4.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UndefinedGroup")
        );
        assert_eq!(ready.last_transition_time.0, later);
        assert_eq!(s4.merged_hash.as_deref(), Some("h2"));
        assert_eq!(s4.last_applied_time, s1.last_applied_time);
        assert_eq!(s4.observed_generation, Some(3));
    }

    #[test]
    fn applied_times_are_whole_seconds_so_an_idle_status_is_stable() {
        let at = "2026-01-01T00:00:01.828402822Z";
        let now = t("2026-01-01T00:00:02Z");
        let f = fragment_status(
            &AclPolicyStatus::default(),
            "ns/a",
            Some(1),
            &served("h", false, false, at),
            &[],
            now,
        );
        assert_eq!(f.last_applied_time, Some(Time(t("2026-01-01T00:00:01Z"))));
        let p = server_part(
            &ServerPart::default(),
            Some(1),
            &served("h", false, false, at),
            now,
        );
        assert_eq!(
            p.policy.as_ref().unwrap().applied_time,
            Some(Time(t("2026-01-01T00:00:01Z")))
        );
        // What the API server gives back (whole seconds) is what is computed again.
        let round_trip: ServerPart = ServerPart {
            policy: serde_json::from_value(serde_json::to_value(&p.policy).unwrap()).unwrap(),
            condition: p.condition.clone(),
        };
        assert_eq!(
            server_part(&round_trip, Some(1), &served("h", false, false, at), now),
            round_trip
        );
    }

    #[test]
    fn server_part_records_what_was_applied() {
        let now = t("2026-01-01T00:00:00Z");
        let left = server_part(&ServerPart::default(), Some(1), &Outcome::LeftAlone, now);
        assert_eq!(left.policy, None);
        assert_eq!(left.condition.as_ref().unwrap().reason, "NoAclPolicies");
        assert_eq!(left.applied_hash(), None);

        let applied = server_part(
            &left,
            Some(1),
            &served("h1", true, false, "2026-01-01T00:00:01Z"),
            now,
        );
        let policy = applied.policy.clone().unwrap();
        assert_eq!(policy.hash.as_deref(), Some("h1"));
        assert_eq!(policy.fragments, ["ns/a", "ns/b"]);
        assert_eq!(policy.applied_time, Some(Time(t("2026-01-01T00:00:01Z"))));
        let c = applied.condition.clone().unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Applied"));

        // Events: the write, not the condition flip as well.
        let events = server_events(
            &left,
            &applied,
            &served("h1", true, false, "2026-01-01T00:00:01Z"),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].reason.as_str(), events[0].type_),
            ("PolicyApplied", EventType::Normal)
        );

        // Idle: nothing changes, no Event.
        let later = t("2026-01-02T00:00:00Z");
        let idle = served("h1", false, false, "2026-01-01T00:00:01Z");
        let again = server_part(&applied, Some(1), &idle, later);
        assert_eq!(again, applied);
        assert!(server_events(&applied, &again, &idle).is_empty());

        // The server goes away: nothing pending, nothing to say here.
        let down = Outcome::ServerNotReady {
            message: "down".into(),
            desired: "h1".into(),
        };
        assert_eq!(server_part(&again, Some(1), &down, later), again);

        // Drift repaired: a Warning.
        let repaired = served("h1", true, true, "2026-01-03T00:00:00Z");
        let after = server_part(&again, Some(1), &repaired, later);
        let events = server_events(&again, &after, &repaired);
        assert_eq!(
            (events[0].reason.as_str(), events[0].type_),
            ("PolicyDriftRepaired", EventType::Warning)
        );
        assert_eq!(
            after.policy.unwrap().applied_time,
            Some(Time(t("2026-01-03T00:00:00Z")))
        );

        // A rejection keeps the applied policy on record and says why.
        let r = Outcome::Rejected(Rejection {
            reason: "PolicyRejected",
            by: By::Headscale,
            at_fault: BTreeMap::new(),
            summary: "Headscale rejected the merged policy: x".into(),
            candidate: Some("h2".into()),
        });
        let rejected = server_part(&applied, Some(1), &r, later);
        assert_eq!(rejected.applied_hash(), Some("h1"));
        let events = server_events(&applied, &rejected, &r);
        assert_eq!(
            (events[0].reason.as_str(), events[0].type_),
            ("PolicyRejected", EventType::Warning)
        );
    }

    #[test]
    fn default_policy_status() {
        let now = t("2026-01-01T00:00:00Z");
        let built = plan(&[], EmptyPolicy::DenyAll, true);
        let Plan::Apply(d) = built.plan else { panic!() };
        let outcome = Outcome::Served {
            hash: d.merged.hash().into(),
            fragments: vec![],
            default: d.default,
            applied_time: None,
            wrote: true,
            drift: false,
        };
        let part = server_part(&ServerPart::default(), Some(1), &outcome, now);
        let c = part.condition.as_ref().unwrap();
        assert_eq!(c.reason, "DefaultApplied");
        assert!(c.message.contains("DenyAll"), "{}", c.message);
        assert_eq!(part.policy.as_ref().unwrap().default, Some(EmptyPolicy::DenyAll));
        assert!(part.policy.as_ref().unwrap().fragments.is_empty());
    }
}
