//! The audit of one server's nodes: inventory counts, unexpected nodes, stale nodes
//! and what pruning may delete. Pure: the controller lists the nodes (one call,
//! whatever the number of nodes) and acts on what this returns.
//!
//! Expected nodes (documented in the README):
//! - registered through a NodeApproval (`status.node.id`), or
//! - registered with a pre-auth key a NodeApproval issued (`status.preAuthKey.id`),
//!   which covers tagged and ephemeral nodes made with such keys, or
//! - registered through OIDC, when `spec.nodes.expectOidcNodes` (default true).
//!
//! Everything else is unexpected: nodes registered by hand with the CLI, with keys
//! minted outside the operator, tagged or ephemeral alike.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::rules::{parse_duration, parse_duration_saturating};
use crate::api::server::{NodeInventory, NodeSummary, NodesSpec, UnexpectedNodeAction};
use crate::headscale::{Node, NodeExpiry, NodeId, PreAuthKeyId};

/// At most this many nodes are listed in status (the counts are complete).
pub const LIST_CAP: usize = 20;

/// A node younger than this is not judged unexpected yet: its NodeApproval may still
/// be writing the status that accounts for it.
pub const SETTLE: Duration = Duration::from_secs(15);

pub const OIDC: &str = "REGISTER_METHOD_OIDC";

/// What the approvals of a server account for.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub nodes: HashSet<NodeId>,
    pub keys: HashSet<PreAuthKeyId>,
}

/// The audit's durations, parsed from the spec.
#[derive(Clone, Debug)]
pub struct Policy {
    pub expiring_soon: Duration,
    pub stale_after: Duration,
    pub restart_grace: Duration,
    pub prune: bool,
    pub dry_run: bool,
    pub max_deletions: usize,
    pub exclude_tags: Vec<String>,
    pub unexpected: UnexpectedNodeAction,
    pub expect_oidc: bool,
    /// Settings that could not be read, and what was assumed instead (the safest).
    pub problems: Vec<String>,
}

impl Policy {
    /// The spec's policy. A duration too large to hold is the longest one (a huge
    /// `restartGrace` holds pruning forever). One that does not parse at all (the
    /// schema refuses those; an object stored before it did) takes the safest value,
    /// not the default, and is said in `problems`: `staleAfter` and `restartGrace`
    /// the longest (nothing is pruned or deleted), `expiringSoon` the default (it only
    /// counts).
    pub fn from_spec(spec: &NodesSpec) -> Policy {
        let d = NodesSpec::default();
        let mut problems = Vec::new();
        let mut parse = |field: &str, s: &str, safest: Duration, effect: &str| {
            parse_duration_saturating(s).unwrap_or_else(|| {
                problems.push(format!(
                    "spec.nodes.{field} {s:?} is not a duration; {effect} until it is fixed"
                ));
                safest
            })
        };
        let expiring_soon = parse(
            "expiringSoon",
            &spec.expiring_soon,
            parse_duration(&d.expiring_soon).unwrap_or(Duration::ZERO),
            &format!("the default {} is used", d.expiring_soon),
        );
        let stale_after = parse(
            "pruning.staleAfter",
            &spec.pruning.stale_after,
            Duration::MAX,
            "no node counts as stale and nothing is pruned",
        );
        let restart_grace = parse(
            "pruning.restartGrace",
            &spec.pruning.restart_grace,
            Duration::MAX,
            "the audit deletes nothing (pruning and unexpected nodes alike)",
        );
        Policy {
            expiring_soon,
            stale_after,
            restart_grace,
            prune: spec.pruning.enabled,
            dry_run: spec.pruning.dry_run,
            max_deletions: spec.pruning.max_deletions_per_run.max(1) as usize,
            exclude_tags: spec.pruning.exclude_tags.clone(),
            unexpected: spec.unexpected,
            expect_oidc: spec.expect_oidc_nodes,
            problems,
        }
    }
}

/// What the audit found, and what to do about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Audit {
    pub inventory: NodeInventory,
    /// Every unexpected node, by id.
    pub unexpected: Vec<NodeId>,
    /// Unexpected nodes to expire now (`Expire`; not already expired).
    pub expire: Vec<NodeId>,
    /// Nodes to delete now, each with why (at most `maxDeletionsPerRun`).
    pub delete: Vec<(NodeId, String)>,
    /// Every prune candidate (stale, not ephemeral, not excluded), whatever the grace,
    /// dry run or cap: what the controller remembers as watched.
    pub candidates: Vec<NodeId>,
}

/// At most this many unexpected nodes are expired in one audit (the rest in the next
/// ones): a first `Expire` audit of a large tailnet is not a burst of thousands of calls.
pub const EXPIRE_CAP: usize = 100;

/// When the operator first saw each prune candidate stale, audit after audit.
pub type Watched = HashMap<NodeId, Timestamp>;

fn span(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

pub fn is_expected(node: &Node, expected: &Expected, policy: &Policy) -> bool {
    expected.nodes.contains(&node.id)
        || node.pre_auth_key_id.is_some_and(|k| expected.keys.contains(&k))
        || (policy.expect_oidc && node.register_method == OIDC)
}

/// Offline, and last seen (or, never seen, created) longer than `stale_after` ago. A
/// node with neither time is not judged.
pub fn is_stale(node: &Node, stale_after: Duration, now: Timestamp) -> bool {
    if node.online {
        return false;
    }
    match node.last_seen.or(node.created_at) {
        Some(seen) => now.duration_since(seen) > span(stale_after),
        None => false,
    }
}

pub fn summary(node: &Node) -> NodeSummary {
    NodeSummary {
        id: node.id.to_string(),
        name: node.name.clone(),
        user: if node.is_tagged() {
            None
        } else {
            node.user.as_ref().map(|u| u.name.clone())
        },
        last_seen: node.last_seen.map(|t| t.to_string()),
    }
}

/// Audits `nodes`. `quiet_since` is when the server was last (re)started as far as
/// the operator knows; pruning waits `restart_grace` after it.
pub fn audit(
    nodes: &[Node],
    expected: &Expected,
    policy: &Policy,
    now: Timestamp,
    quiet_since: Timestamp,
) -> Audit {
    audit_watched(nodes, expected, policy, now, quiet_since, None)
}

/// [`audit`], where a stale node is pruned only once this operator has seen it stale in
/// every audit for `restart_grace` (`watched`: since when). A node that was online for
/// weeks has an old `lastSeen` (Headscale writes it when a node goes away), so right
/// after a restart the operator may not have noticed, it looks stale until it
/// reconnects; being watched that long, it cannot be.
pub fn audit_watched(
    nodes: &[Node],
    expected: &Expected,
    policy: &Policy,
    now: Timestamp,
    quiet_since: Timestamp,
    watched: Option<&Watched>,
) -> Audit {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    let mut inv = NodeInventory {
        total: nodes.len() as i64,
        ..Default::default()
    };
    let mut out = Audit::default();
    let mut candidates: Vec<&Node> = Vec::new();
    for node in &nodes {
        if node.online {
            inv.online += 1;
        }
        match node.expiry {
            NodeExpiry::At(t) if t <= now => inv.expired += 1,
            NodeExpiry::At(t) if t.duration_since(now) <= span(policy.expiring_soon) => {
                inv.expiring_soon += 1
            }
            _ => {}
        }
        let stale = is_stale(node, policy.stale_after, now);
        if stale {
            inv.stale += 1;
        }
        let settling = node
            .created_at
            .is_some_and(|c| now.duration_since(c) < span(SETTLE));
        if !settling && !is_expected(node, expected, policy) {
            inv.unexpected += 1;
            out.unexpected.push(node.id);
            if inv.unexpected_nodes.len() < LIST_CAP {
                inv.unexpected_nodes.push(summary(node));
            }
            match policy.unexpected {
                UnexpectedNodeAction::Report => {}
                UnexpectedNodeAction::Expire => {
                    if !node.expiry.is_expired(now) && out.expire.len() < EXPIRE_CAP {
                        out.expire.push(node.id);
                    }
                }
                UnexpectedNodeAction::Delete => out.delete.push((
                    node.id,
                    "unexpected: no NodeApproval accounts for it (spec.nodes.unexpected: Delete)".into(),
                )),
            }
        }
        let excluded = node.tags.iter().any(|t| policy.exclude_tags.contains(t));
        if stale && !node.ephemeral && !excluded {
            candidates.push(node);
        }
    }
    // Oldest first.
    candidates.sort_by_key(|n| (n.last_seen.or(n.created_at), n.id));
    out.candidates = candidates.iter().map(|n| n.id).collect();
    let watched_long_enough = |id: NodeId| match watched {
        None => true,
        Some(w) => w
            .get(&id)
            .is_some_and(|since| now.duration_since(*since) >= span(policy.restart_grace)),
    };

    // A grace too long to add holds forever: it must never read as "not held".
    let held_until = quiet_since
        .checked_add(span(policy.restart_grace))
        .unwrap_or(Timestamp::MAX);
    let held = Some(held_until).filter(|t| *t > now);
    if policy.prune {
        if let Some(until) = held {
            let resumes = if until == Timestamp::MAX {
                "pruning does not resume (spec.nodes.pruning.restartGrace reaches past the year 9999)"
                    .to_string()
            } else {
                format!("pruning resumes at {until}")
            };
            inv.pruning_held = Some(format!(
                "restart grace: Headscale or the operator (re)started recently, or Headscale was unreachable, and every node looks offline after a start; {resumes}"
            ));
        } else if policy.dry_run {
            inv.prune_candidates = candidates.iter().take(LIST_CAP).map(|n| summary(n)).collect();
        } else {
            let stale_after = crate::controller::nodes::rules::format_duration(policy.stale_after);
            for n in &candidates {
                if out.delete.iter().any(|(id, _)| *id == n.id) || !watched_long_enough(n.id) {
                    continue;
                }
                let seen = n
                    .last_seen
                    .or(n.created_at)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                out.delete.push((
                    n.id,
                    format!("stale: offline and last seen {seen}, more than {stale_after} ago"),
                ));
            }
        }
    }
    // Unexpected deletions are held in the grace period too, and share the cap.
    if held.is_some() {
        out.delete.clear();
    }
    out.delete.truncate(policy.max_deletions);
    if !policy.problems.is_empty() {
        inv.pruning_held = Some(match inv.pruning_held.take() {
            Some(h) => format!("{}; {h}", policy.problems.join("; ")),
            None => policy.problems.join("; "),
        });
    }
    out.inventory = inv;
    out
}

/// Holds every action of an audit (expire, delete, prune), keeping its counts, and
/// says why in `pruningHeld`.
pub fn hold(audit: &mut Audit, why: &str) {
    audit.expire.clear();
    audit.delete.clear();
    audit.inventory.prune_candidates.clear();
    audit.inventory.pruning_held = Some(match audit.inventory.pruning_held.take() {
        Some(h) => format!("{why}; {h}"),
        None => why.to_string(),
    });
}

/// Whether an audit that would expire or delete may act at `now`, when the last audit
/// of this server that acted did so at `last_acted`: audits that act are at least
/// `every` (`--resync-seconds`) apart, whatever triggers them (an approval changed by
/// anyone who may annotate it, say), so `maxDeletionsPerRun` bounds deletions per
/// resync and not per trigger. `None`: act now; `Some(t)`: only count, act at `t`.
/// Pure.
pub fn acting_held_until(
    last_acted: Option<Timestamp>,
    now: Timestamp,
    every: Duration,
) -> Option<Timestamp> {
    let last = last_acted?;
    let next = last.checked_add(span(every)).unwrap_or(Timestamp::MAX);
    (now < next).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-06-01T00:00:00Z";

    #[test]
    fn audits_that_act_are_a_resync_apart() {
        let every = Duration::from_secs(60);
        assert_eq!(acting_held_until(None, t(NOW), every), None, "never acted");
        let last = t("2026-05-31T23:59:30Z");
        assert_eq!(
            acting_held_until(Some(last), t(NOW), every),
            Some(t("2026-06-01T00:00:30Z")),
            "30 s after acting: only counts, until a resync after it"
        );
        assert_eq!(
            acting_held_until(Some(last), t("2026-06-01T00:00:30Z"), every),
            None
        );
        assert_eq!(
            acting_held_until(Some(last), t("2026-06-01T00:05:00Z"), every),
            None
        );
        assert!(acting_held_until(Some(last), t(NOW), Duration::MAX).is_some());
    }

    #[test]
    fn a_brand_new_node_is_not_judged_yet() {
        let nodes = vec![
            node(1, |v| v["createdAt"] = json!("2026-05-31T23:59:55Z")),
            node(2, |_| {}),
        ];
        let a = audit(&nodes, &Expected::default(), &policy(|_| {}), t(NOW), t(LONG_AGO));
        assert_eq!(a.unexpected, vec![NodeId(2)]);
        assert_eq!(a.inventory.total, 2);
    }

    fn node(id: u64, f: impl FnOnce(&mut serde_json::Value)) -> Node {
        let mut v = json!({
            "id": id.to_string(), "name": format!("n{id}"),
            "user": {"id": "1", "name": "alice"},
            "registerMethod": "REGISTER_METHOD_CLI",
            "createdAt": "2026-01-01T00:00:00Z",
            "lastSeen": "2026-05-31T23:00:00Z",
            "expiry": null, "online": false, "tags": [],
        });
        f(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn policy(f: impl FnOnce(&mut NodesSpec)) -> Policy {
        let mut spec = NodesSpec::default();
        f(&mut spec);
        Policy::from_spec(&spec)
    }

    fn old(id: u64) -> Node {
        node(id, |v| v["lastSeen"] = json!("2026-01-01T00:00:00Z"))
    }

    fn expected(nodes: &[u64]) -> Expected {
        Expected {
            nodes: nodes.iter().map(|i| NodeId(*i)).collect(),
            keys: HashSet::new(),
        }
    }

    fn ids(v: &[(NodeId, String)]) -> Vec<u64> {
        v.iter().map(|(i, _)| i.0).collect()
    }

    const LONG_AGO: &str = "2020-01-01T00:00:00Z";

    #[test]
    fn counts() {
        let nodes = vec![
            node(1, |v| v["online"] = json!(true)),
            node(2, |v| v["expiry"] = json!("2026-06-03T00:00:00Z")),
            node(3, |v| v["expiry"] = json!("2026-05-01T00:00:00Z")),
            node(4, |v| v["expiry"] = json!("0001-01-01T00:00:00Z")),
            old(5),
            node(6, |v| v["expiry"] = json!("2026-09-01T00:00:00Z")),
        ];
        let a = audit(
            &nodes,
            &expected(&[1, 2, 3, 4, 5, 6]),
            &policy(|_| {}),
            t(NOW),
            t(LONG_AGO),
        );
        let i = &a.inventory;
        assert_eq!(
            (
                i.total,
                i.online,
                i.expiring_soon,
                i.expired,
                i.stale,
                i.unexpected
            ),
            (6, 1, 1, 1, 1, 0)
        );
        assert!(
            a.delete.is_empty() && a.expire.is_empty(),
            "pruning is off by default"
        );
    }

    #[test]
    fn what_is_expected() {
        let nodes = vec![
            node(1, |_| {}),
            node(2, |v| v["preAuthKey"] = json!({"id": "9", "ephemeral": true})),
            node(3, |v| v["registerMethod"] = json!(OIDC)),
            node(4, |v| v["preAuthKey"] = json!({"id": "10"})),
            node(5, |v| v["tags"] = json!(["tag:x"])),
        ];
        let mut e = expected(&[1]);
        e.keys.insert(PreAuthKeyId(9));
        let a = audit(&nodes, &e, &policy(|_| {}), t(NOW), t(LONG_AGO));
        assert_eq!(a.unexpected, vec![NodeId(4), NodeId(5)]);
        assert_eq!(a.inventory.unexpected_nodes.len(), 2);
        assert_eq!(a.inventory.unexpected_nodes[1].user, None, "tagged: no user");
        let strict = audit(
            &nodes,
            &e,
            &policy(|s| s.expect_oidc_nodes = false),
            t(NOW),
            t(LONG_AGO),
        );
        assert_eq!(strict.unexpected, vec![NodeId(3), NodeId(4), NodeId(5)]);
    }

    #[test]
    fn unexpected_actions() {
        let nodes = vec![
            node(1, |_| {}),
            node(2, |v| v["expiry"] = json!("2026-05-01T00:00:00Z")),
            node(3, |_| {}),
        ];
        let e = expected(&[3]);
        let report = audit(&nodes, &e, &policy(|_| {}), t(NOW), t(LONG_AGO));
        assert!(report.expire.is_empty() && report.delete.is_empty());
        let expire = audit(
            &nodes,
            &e,
            &policy(|s| s.unexpected = UnexpectedNodeAction::Expire),
            t(NOW),
            t(LONG_AGO),
        );
        assert_eq!(
            expire.expire,
            vec![NodeId(1)],
            "an expired node is not expired again"
        );
        let delete = audit(
            &nodes,
            &e,
            &policy(|s| s.unexpected = UnexpectedNodeAction::Delete),
            t(NOW),
            t(LONG_AGO),
        );
        assert_eq!(ids(&delete.delete), vec![1, 2]);
    }

    #[test]
    fn the_unexpected_list_is_capped_not_the_count() {
        let nodes: Vec<Node> = (1..=50).map(|i| node(i, |_| {})).collect();
        let a = audit(&nodes, &Expected::default(), &policy(|_| {}), t(NOW), t(LONG_AGO));
        assert_eq!(a.inventory.unexpected, 50);
        assert_eq!(a.inventory.unexpected_nodes.len(), LIST_CAP);
    }

    fn pruning(f: impl FnOnce(&mut NodesSpec)) -> Policy {
        policy(|s| {
            s.pruning.enabled = true;
            s.pruning.dry_run = false;
            s.pruning.stale_after = "30d".into();
            f(s)
        })
    }

    #[test]
    fn pruning_keeps_online_ephemeral_excluded_and_recent_nodes() {
        let nodes = vec![
            old(1),
            node(2, |v| {
                v["lastSeen"] = json!("2026-01-01T00:00:00Z");
                v["online"] = json!(true)
            }),
            node(3, |v| {
                v["lastSeen"] = json!("2026-01-01T00:00:00Z");
                v["preAuthKey"] = json!({"id": "1", "ephemeral": true})
            }),
            node(4, |v| {
                v["lastSeen"] = json!("2026-01-01T00:00:00Z");
                v["tags"] = json!(["tag:keep"])
            }),
            node(5, |_| {}),
            // Never seen: judged by its creation.
            node(6, |v| {
                v["lastSeen"] = json!(null);
                v["createdAt"] = json!("2026-01-02T00:00:00Z")
            }),
            node(7, |v| {
                v["lastSeen"] = json!(null);
                v["createdAt"] = json!(null)
            }),
        ];
        let all = expected(&[1, 2, 3, 4, 5, 6, 7]);
        let p = pruning(|s| s.pruning.exclude_tags = vec!["tag:keep".into()]);
        let a = audit(&nodes, &all, &p, t(NOW), t(LONG_AGO));
        assert_eq!(ids(&a.delete), vec![1, 6]);
        assert!(a.delete[0].1.contains("stale"), "{}", a.delete[0].1);
        assert_eq!(
            a.inventory.stale, 4,
            "online is never stale; the tagged and ephemeral ones are stale but kept"
        );
    }

    #[test]
    fn dry_run_lists_and_deletes_nothing() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        let p = pruning(|s| s.pruning.dry_run = true);
        let a = audit(&nodes, &expected(&[1, 2, 3]), &p, t(NOW), t(LONG_AGO));
        assert!(a.delete.is_empty());
        assert_eq!(a.inventory.prune_candidates.len(), 3);
    }

    #[test]
    fn the_cap_holds_oldest_first() {
        let nodes: Vec<Node> = (1..=10)
            .map(|i| {
                node(i, |v| {
                    v["lastSeen"] = json!(format!("2026-01-{:02}T00:00:00Z", 11 - i))
                })
            })
            .collect();
        let p = pruning(|s| s.pruning.max_deletions_per_run = 3);
        let a = audit(
            &nodes,
            &expected(&(1..=10).collect::<Vec<_>>()),
            &p,
            t(NOW),
            t(LONG_AGO),
        );
        assert_eq!(ids(&a.delete), vec![10, 9, 8]);
    }

    #[test]
    fn a_stale_node_is_pruned_only_once_watched_for_the_grace() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        let p = pruning(|s| s.pruning.restart_grace = "15m".into());
        let e = expected(&[1, 2, 3]);
        let mut watched = Watched::new();
        watched.insert(NodeId(1), t("2026-05-31T23:40:00Z"));
        watched.insert(NodeId(2), t("2026-05-31T23:50:00Z"));
        let a = audit_watched(&nodes, &e, &p, t(NOW), t(LONG_AGO), Some(&watched));
        assert_eq!(
            ids(&a.delete),
            vec![1],
            "2 was seen stale 10 minutes ago, 3 never"
        );
        assert_eq!(a.candidates, vec![NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[test]
    fn expiring_unexpected_nodes_is_capped() {
        let nodes: Vec<Node> = (1..=(EXPIRE_CAP as u64 + 20)).map(|i| node(i, |_| {})).collect();
        let p = policy(|s| s.unexpected = UnexpectedNodeAction::Expire);
        let a = audit(&nodes, &Expected::default(), &p, t(NOW), t(LONG_AGO));
        assert_eq!(a.expire.len(), EXPIRE_CAP);
        assert_eq!(a.inventory.unexpected, EXPIRE_CAP as i64 + 20);
    }

    #[test]
    fn a_held_audit_keeps_counting_and_does_nothing() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        let p = pruning(|s| s.unexpected = UnexpectedNodeAction::Delete);
        let mut a = audit(&nodes, &expected(&[1]), &p, t(NOW), t(LONG_AGO));
        assert!(!a.delete.is_empty());
        hold(&mut a, "shared");
        assert!(a.delete.is_empty() && a.expire.is_empty());
        assert_eq!(
            (a.inventory.total, a.inventory.unexpected, a.inventory.stale),
            (3, 2, 3)
        );
        assert_eq!(a.inventory.pruning_held.as_deref(), Some("shared"));
        let p = policy(|s| s.unexpected = UnexpectedNodeAction::Expire);
        let mut a = audit(&nodes, &Expected::default(), &p, t(NOW), t(LONG_AGO));
        assert_eq!(a.expire.len(), 3);
        hold(&mut a, "shared");
        assert!(a.expire.is_empty());
    }

    #[test]
    fn a_grace_too_long_to_add_holds_forever() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        for grace in ["2000000000w", "99999999999999999999h"] {
            let p = pruning(|s| {
                s.pruning.restart_grace = grace.into();
                s.unexpected = UnexpectedNodeAction::Delete
            });
            assert!(p.problems.is_empty(), "a huge grace is readable: {grace}");
            let a = audit(&nodes, &Expected::default(), &p, t(NOW), t(LONG_AGO));
            assert!(a.delete.is_empty(), "{grace}: {:?}", a.delete);
            assert!(
                a.inventory
                    .pruning_held
                    .as_deref()
                    .unwrap()
                    .contains("does not resume"),
                "{:?}",
                a.inventory.pruning_held
            );
        }
    }

    #[test]
    fn an_unreadable_duration_takes_the_safest_value_and_is_said() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        let p = pruning(|s| {
            s.pruning.stale_after = "soon".into();
            s.pruning.restart_grace = "1x".into();
            s.expiring_soon = "?".into();
            s.unexpected = UnexpectedNodeAction::Delete
        });
        assert_eq!(p.stale_after, Duration::MAX);
        assert_eq!(p.restart_grace, Duration::MAX);
        assert_eq!(p.expiring_soon, Duration::from_secs(7 * 86_400));
        assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
        let a = audit(&nodes, &Expected::default(), &p, t(NOW), t(LONG_AGO));
        assert!(a.delete.is_empty(), "{:?}", a.delete);
        assert_eq!(a.inventory.stale, 0);
        let held = a.inventory.pruning_held.unwrap();
        assert!(held.contains("spec.nodes.pruning.staleAfter \"soon\""), "{held}");
        assert!(held.contains("spec.nodes.pruning.restartGrace \"1x\""), "{held}");
    }

    #[test]
    fn nothing_is_deleted_during_the_restart_grace() {
        let nodes: Vec<Node> = (1..=3).map(old).collect();
        let p = pruning(|s| {
            s.pruning.restart_grace = "15m".into();
            s.unexpected = UnexpectedNodeAction::Delete
        });
        let a = audit(
            &nodes,
            &Expected::default(),
            &p,
            t(NOW),
            t("2026-05-31T23:50:00Z"),
        );
        assert!(a.delete.is_empty());
        assert!(
            a.inventory
                .pruning_held
                .as_deref()
                .unwrap()
                .contains("restart grace")
        );
        let later = audit(
            &nodes,
            &Expected::default(),
            &p,
            t(NOW),
            t("2026-05-31T23:40:00Z"),
        );
        assert_eq!(ids(&later.delete), vec![1, 2, 3]);
        assert_eq!(later.inventory.pruning_held, None);
    }
}
