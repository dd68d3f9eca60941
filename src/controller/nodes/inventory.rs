//! The audit loop: for each HeadscaleServer, at every resync and whenever one of its
//! NodeApprovals changes, list its nodes (one call), compute the inventory, act on
//! unexpected and stale nodes as the spec says, and write `status.nodes` when it
//! changed (field manager `headscale-operator/nodes`, only that field).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::audit::{self, Expected, Policy};
use super::{FIELD_MANAGER, State, object_key, reachable};
use crate::api::conditions;
use crate::api::{HeadscaleServer, NodeApproval};
use crate::headscale::{self, ExpiryChange, NodeId, PreAuthKeyId};
use crate::metrics::{Metrics, NodeActionLabels, NodeCountLabels};

pub const AUDIT: &str = "audit";

/// Sets `headscale_operator_nodes{namespace,name,state}` from an inventory.
pub fn set_node_gauges(metrics: &Metrics, ns: &str, name: &str, inv: &crate::api::server::NodeInventory) {
    for (s, v) in [
        ("total", inv.total),
        ("online", inv.online),
        ("expiring_soon", inv.expiring_soon),
        ("expired", inv.expired),
        ("stale", inv.stale),
        ("unexpected", inv.unexpected),
    ] {
        metrics
            .nodes
            .get_or_create(&NodeCountLabels {
                namespace: ns.to_string(),
                name: name.to_string(),
                state: s.into(),
            })
            .set(v);
    }
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(transparent)]
    ReadSecret(#[from] crate::controller::connect::ReadSecretError),
    #[error("listing NodeApprovals: {0}")]
    ListApprovals(#[source] kube::Error),
    #[error("{0}")]
    Headscale(#[from] headscale::Error),
    #[error("writing status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "ReadSecret",
            Error::ListApprovals(_) => "ListApprovals",
            Error::Headscale(e) => e.reason(),
            Error::PatchStatus(_) => "PatchStatus",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

/// What the audit remembers of a server between runs.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When this operator first audited the server: nothing is pruned for the grace
    /// period after it, since an earlier restart would be unknown.
    first: Timestamp,
    /// Nodes online at the last audit.
    online: i64,
    /// When every node went offline at once (a likely restart).
    all_offline_at: Option<Timestamp>,
    /// The unexpected nodes of the last audit (Events only for new ones).
    unexpected: HashSet<NodeId>,
    /// Since when each prune candidate has been stale in every audit.
    watched: audit::Watched,
    /// The warnings of the last audit (an Event only when they change).
    warnings: Vec<String>,
    /// When an audit of this server last expired or deleted (or tried to): the next
    /// may act a resync later ([`audit::acting_held_until`]).
    acted: Option<Timestamp>,
}

#[derive(Default)]
pub struct Memory(Mutex<HashMap<String, Seen>>);

/// The approvals' record of expected nodes and keys. Pure.
pub fn expected(approvals: &[NodeApproval], server: &str) -> Expected {
    let mut e = Expected::default();
    for a in approvals.iter().filter(|a| a.spec.server_ref.name == server) {
        let Some(status) = &a.status else { continue };
        // A node whose tags were refused (recorded so by an older operator) is not the
        // restricted tagged node that was approved.
        if conditions::find(&status.conditions, conditions::READY)
            .is_some_and(|c| c.reason == crate::api::conditions::reason::TAGS_REJECTED)
        {
            continue;
        }
        // A node that is not the host the approval claimed is not accounted for (nor is
        // anything else its key let in).
        if let (Some(claimed), Some(node)) = (&a.spec.hostname, &status.node)
            && !claimed.eq_ignore_ascii_case(&node.name)
        {
            continue;
        }
        if let Some(id) = status.node.as_ref().and_then(|n| n.id.parse().ok()) {
            e.nodes.insert(NodeId(id));
        }
        if let Some(id) = status.pre_auth_key.as_ref().and_then(|k| k.id.parse().ok()) {
            e.keys.insert(PreAuthKeyId(id));
        }
    }
    e
}

/// When the server last (re)started as far as the operator can tell: the later of its
/// first audit here, the last time it became Ready, and the last time every node went
/// offline at once. Pure.
pub fn quiet_since(hs: &HeadscaleServer, seen: &Seen) -> Timestamp {
    let ready_since = hs
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0);
    [Some(seen.first), ready_since, seen.all_offline_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(seen.first)
}

/// An endpoint as a comparable key: scheme, host (lowercase), port (the scheme's
/// default when left out) and path without trailing slashes. Pure.
pub fn endpoint_key(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or(0),
            u.path().trim_end_matches('/')
        ),
        Err(_) => url.trim().trim_end_matches('/').to_ascii_lowercase(),
    }
}

/// Where the operator reaches a server: `status.endpoint` and, for an external one,
/// `spec.external.url`.
fn endpoints(hs: &HeadscaleServer) -> HashSet<String> {
    let status = hs.status.as_ref().and_then(|s| s.endpoint.as_deref());
    let external = hs.spec.external.as_ref().map(|e| e.url.as_str());
    [status, external]
        .into_iter()
        .flatten()
        .filter(|u| !u.trim().is_empty())
        .map(endpoint_key)
        .collect()
}

/// The instance key a server's last audit recorded (`status.nodes.instanceKey`).
fn recorded_instance_key(hs: &HeadscaleServer) -> Option<&str> {
    hs.status
        .as_ref()
        .and_then(|s| s.nodes.as_ref())
        .and_then(|n| n.instance_key.as_deref())
        .filter(|k| !k.is_empty())
}

/// The other HeadscaleServer objects (`namespace/name`, sorted) that may reach the same
/// Headscale as `hs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sharing {
    /// Same endpoint (URL key), or the same instance key as `instance_key`.
    pub shared: Vec<String>,
    /// Reachable (Ready, with an endpoint) but no instance key recorded yet: they may
    /// reach it by another URL.
    pub unidentified: Vec<String>,
}

/// Which other servers share the Headscale of `hs`, whose instance key (read from the
/// server, `GET /key`) is `instance_key`. Each would count the other's approved nodes
/// as unexpected, so neither audit may act on them. The URL comparison stays: it
/// works before any instance key is known. Pure.
pub fn sharing_headscale(
    hs: &HeadscaleServer,
    all: &[Arc<HeadscaleServer>],
    instance_key: Option<&str>,
) -> Sharing {
    let mine = endpoints(hs);
    let me = (hs.namespace(), hs.name_any());
    let mut out = Sharing::default();
    for o in all
        .iter()
        .filter(|o| (o.namespace(), o.name_any()) != me)
        .filter(|o| o.metadata.deletion_timestamp.is_none())
    {
        let theirs = recorded_instance_key(o);
        if (!mine.is_empty() && !endpoints(o).is_disjoint(&mine))
            || (instance_key.is_some() && theirs == instance_key)
        {
            out.shared.push(object_key(&**o));
        } else if theirs.is_none() && reachable(o).is_ok() {
            out.unidentified.push(object_key(&**o));
        }
    }
    for v in [&mut out.shared, &mut out.unidentified] {
        v.sort();
        v.dedup();
    }
    out
}

/// What the audit says when `others` point at the same Headscale as this server.
pub fn shared_endpoint_message(others: &[String]) -> String {
    format!(
        "HeadscaleServer {} points at the same Headscale (same endpoint or same instance key): each would count the other's approved nodes as unexpected, so this audit only counts (no expire, delete or prune) until one HeadscaleServer per Headscale is left",
        others.join(", ")
    )
}

/// What the audit says when `others` have not recorded which Headscale they reach.
pub fn unidentified_message(others: &[String]) -> String {
    format!(
        "HeadscaleServer {} has not recorded which Headscale it reaches yet (status.nodes.instanceKey) and may reach this one by another URL, so this audit only counts (no expire, delete or prune) until it has",
        others.join(", ")
    )
}

/// What the audit says when this server's own instance key could not be read.
pub fn unknown_instance_message(error: &headscale::Error) -> String {
    format!(
        "the Headscale instance key could not be read ({error}): another HeadscaleServer may reach the same Headscale by another URL, so this audit only counts (no expire, delete or prune) until it can be"
    )
}

/// What the audit says when it would act but an audit of this server acted less than
/// `--resync-seconds` ago.
pub const THROTTLED: &str = "an audit of this server expired or deleted nodes less than --resync-seconds ago: this one only counts, the next acts when that much time has passed";

/// A node read again before pruning is still what the audit judged: offline, and not
/// seen since.
fn still_stale(listed: &headscale::Node, now: &headscale::Node) -> bool {
    !now.online && now.last_seen == listed.last_seen
}

pub async fn reconcile(hs: Arc<HeadscaleServer>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::controller(AUDIT);
    state.ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = reconcile_inner(&hs, &state).await;
    state
        .ctx
        .metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(hs: &HeadscaleServer, state: &State) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let ns = hs.namespace().ok_or(Error::MissingNamespace)?;
    let name = hs.name_any();
    let key = object_key(hs);
    if reachable(hs).is_err() {
        // The server controller reports why; audit once it is Ready.
        return Ok(Action::requeue(ctx.settings.resync));
    }
    let client = match state.client_for(&ns, hs).await? {
        Ok(c) => c,
        Err(_) => return Ok(Action::requeue(ctx.settings.resync)),
    };
    // Not until every server is known: another one may point at the same Headscale.
    if tokio::time::timeout(
        std::time::Duration::from_secs(30),
        state.servers.wait_until_ready(),
    )
    .await
    .map_or(true, |r| r.is_err())
    {
        return Ok(Action::requeue(audit::SETTLE));
    }
    // Which Headscale this is, whatever URL reaches it: the same one may be another
    // HeadscaleServer's by another URL (localhost, the in-cluster Service, ...).
    let instance_key = client.instance_key().await;
    let sharing = sharing_headscale(
        hs,
        &state.servers.state(),
        instance_key.as_ref().ok().map(String::as_str),
    );
    let approvals: Api<NodeApproval> = Api::namespaced(ctx.client.clone(), &ns);
    let approvals = approvals
        .list(&ListParams::default())
        .await
        .map_err(Error::ListApprovals)?
        .items;
    let expected = expected(&approvals, &name);
    let nodes = client.list_nodes(None).await?;
    let now = Timestamp::now();

    let policy = Policy::from_spec(&hs.spec.nodes);
    let mut warnings: Vec<(&'static str, String)> = Vec::new();
    // Why this audit may not act at all (it only counts).
    let mut holds: Vec<String> = Vec::new();
    if !sharing.shared.is_empty() {
        warnings.push(("SharedEndpoint", shared_endpoint_message(&sharing.shared)));
        holds.push(shared_endpoint_message(&sharing.shared));
    }
    // Not knowing which Headscale this is (or another Ready server's) holds only an
    // audit that would act: otherwise servers coming and going would rewrite every
    // idle server's status for nothing.
    let unidentified = match &instance_key {
        Err(e) => Some(unknown_instance_message(e)),
        Ok(_) if !sharing.unidentified.is_empty() => Some(unidentified_message(&sharing.unidentified)),
        Ok(_) => None,
    };
    for p in &policy.problems {
        warnings.push(("InvalidNodesSpec", p.clone()));
    }
    let (result, new_unexpected, new_warnings, acting_held) = {
        let mut memory = state.audits.0.lock().unwrap_or_else(|p| p.into_inner());
        let seen = memory.entry(key.clone()).or_insert_with(|| Seen {
            first: now,
            online: 0,
            all_offline_at: None,
            unexpected: HashSet::new(),
            watched: audit::Watched::new(),
            warnings: Vec::new(),
            acted: None,
        });
        let online = nodes.iter().filter(|n| n.online).count() as i64;
        if seen.online > 0 && online == 0 && !nodes.is_empty() {
            seen.all_offline_at = Some(now);
        }
        seen.online = online;
        // A restart the server's status has not shown yet (or never will: it was quicker
        // than the probe) still failed some request of this client, maybe one a retry hid.
        let quiet = quiet_since(hs, seen).max(client.last_transient_error().unwrap_or(seen.first));
        let mut result = audit::audit_watched(&nodes, &expected, &policy, now, quiet, Some(&seen.watched));
        if let Some(message) = unidentified
            && (!result.expire.is_empty() || !result.delete.is_empty())
        {
            warnings.push(("InstanceKeyUnknown", message.clone()));
            holds.push(message);
        }
        if !holds.is_empty() {
            audit::hold(&mut result, &holds.join("; "));
        }
        // Audits that act are a resync apart, whatever triggered this one.
        let mut acting_held = None;
        if !result.expire.is_empty() || !result.delete.is_empty() {
            match audit::acting_held_until(seen.acted, now, ctx.settings.resync) {
                None => seen.acted = Some(now),
                Some(until) => {
                    audit::hold(&mut result, THROTTLED);
                    acting_held = Some(until);
                }
            }
        }
        result.inventory.instance_key = instance_key.as_ref().ok().cloned();
        let candidates: HashSet<NodeId> = result.candidates.iter().copied().collect();
        seen.watched.retain(|id, _| candidates.contains(id));
        for id in candidates {
            seen.watched.entry(id).or_insert(now);
        }
        let current: HashSet<NodeId> = result.unexpected.iter().copied().collect();
        let mut new: Vec<NodeId> = current.difference(&seen.unexpected).copied().collect();
        new.sort();
        seen.unexpected = current;
        let said: Vec<String> = warnings.iter().map(|(_, m)| m.clone()).collect();
        let new_warnings: Vec<(&'static str, String)> = warnings
            .iter()
            .filter(|(_, m)| !seen.warnings.contains(m))
            .cloned()
            .collect();
        seen.warnings = said;
        (result, new, new_warnings, acting_held)
    };

    let by_id: HashMap<NodeId, &headscale::Node> = nodes.iter().map(|n| (n.id, n)).collect();
    // kube's Recorder folds Events with the same object, reason and action into one
    // series; naming the Headscale node as the related object keeps one per node.
    let related = |id: NodeId| {
        Some(ObjectReference {
            api_version: Some("headscale.operator.dev/v1alpha1".into()),
            kind: Some("HeadscaleNode".into()),
            namespace: Some(ns.clone()),
            name: Some(format!("{}-{id}", name)),
            ..Default::default()
        })
    };
    let describe = |id: NodeId| match by_id.get(&id) {
        Some(n) => {
            let owner = if n.is_tagged() {
                format!("tags {:?}", n.tags)
            } else {
                format!(
                    "user {:?}",
                    n.user.as_ref().map(|u| u.name.as_str()).unwrap_or("")
                )
            };
            format!("node {id} ({}, {owner})", n.name)
        }
        None => format!("node {id}"),
    };

    let mut events = Vec::new();
    for (why, message) in new_warnings {
        tracing::warn!(server = %key, reason = why, "{message}");
        events.push(Event {
            type_: EventType::Warning,
            reason: why.into(),
            note: Some(message),
            action: "Audit".into(),
            secondary: None,
        });
    }
    let acting = if !sharing.shared.is_empty() {
        format!(
            "not acted on: HeadscaleServer {} reaches the same Headscale",
            sharing.shared.join(", ")
        )
    } else if !holds.is_empty() {
        "not acted on: which Headscale other HeadscaleServers reach is not known yet".to_string()
    } else {
        format!("spec.nodes.unexpected: {:?}", policy.unexpected)
    };
    const EVENT_CAP: usize = 10;
    for id in new_unexpected.iter().take(EVENT_CAP) {
        tracing::info!(server = %key, node_id = %id, "unexpected node: no NodeApproval accounts for it");
        events.push(Event {
            type_: EventType::Warning,
            reason: "UnexpectedNode".into(),
            note: Some(format!(
                "{} is not accounted for by any NodeApproval ({acting})",
                describe(*id),
            )),
            action: "Audit".into(),
            secondary: related(*id),
        });
    }
    if new_unexpected.len() > EVENT_CAP {
        events.push(Event {
            type_: EventType::Warning,
            reason: "UnexpectedNode".into(),
            note: Some(format!(
                "{} more unexpected nodes; see status.nodes",
                new_unexpected.len() - EVENT_CAP
            )),
            action: "Audit".into(),
            secondary: None,
        });
    }

    let count = |action: &str| {
        ctx.metrics
            .node_actions
            .get_or_create(&NodeActionLabels {
                namespace: ns.clone(),
                name: name.clone(),
                action: action.into(),
            })
            .inc();
    };
    // A failed action does not stop the others, nor the Events and the status of the
    // ones done; the first failure is returned at the end (backoff, Warning Event).
    let mut failed: Option<Error> = None;
    for id in &result.expire {
        match client.expire_node(*id, ExpiryChange::Now).await {
            Ok(_) => {}
            Err(headscale::Error::NotFound { .. }) => continue,
            Err(e) => {
                tracing::warn!(server = %key, node_id = %id, error = %e, "expiring an unexpected node failed");
                failed.get_or_insert(e.into());
                continue;
            }
        }
        let what = describe(*id);
        tracing::info!(server = %key, node_id = %id, by = FIELD_MANAGER, why = "unexpected (spec.nodes.unexpected: Expire)", "expired {what}");
        count("expired_unexpected");
        events.push(Event {
            type_: EventType::Normal,
            reason: "NodeExpired".into(),
            note: Some(format!(
                "expired {what}: no NodeApproval accounts for it (spec.nodes.unexpected: Expire)"
            )),
            action: "Expire".into(),
            secondary: related(*id),
        });
    }
    for (id, why) in &result.delete {
        let pruned = why.starts_with("stale");
        // Read a stale node again right before deleting it: it may have come back since
        // the list (a deletion run takes a while at Headscale's pace).
        if pruned && let Some(listed) = by_id.get(id) {
            match client.get_node(*id).await {
                Ok(now) if still_stale(listed, &now) => {}
                Ok(_) => {
                    tracing::info!(server = %key, node_id = %id, "not pruned: the node came back since the audit listed it");
                    continue;
                }
                Err(headscale::Error::NotFound { .. }) => continue,
                Err(e) => {
                    failed.get_or_insert(e.into());
                    continue;
                }
            }
        }
        match client.delete_node(*id).await {
            Ok(()) => {}
            Err(headscale::Error::NotFound { .. }) => continue,
            Err(e) => {
                tracing::warn!(server = %key, node_id = %id, error = %e, "deleting a node failed");
                failed.get_or_insert(e.into());
                continue;
            }
        }
        let what = describe(*id);
        tracing::info!(server = %key, node_id = %id, by = FIELD_MANAGER, %why, "deleted {what}");
        count(if pruned { "pruned" } else { "deleted_unexpected" });
        events.push(Event {
            type_: EventType::Normal,
            reason: if pruned { "NodePruned" } else { "NodeDeleted" }.into(),
            note: Some(format!("deleted {what}: {why}")),
            action: "Delete".into(),
            secondary: related(*id),
        });
    }

    let inv = &result.inventory;
    set_node_gauges(&ctx.metrics, &ns, &name, inv);

    let live = hs.status.as_ref().and_then(|s| s.nodes.as_ref());
    let mut status_written = Ok(());
    if live != Some(inv) {
        let api: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({
            "apiVersion": HeadscaleServer::api_version(&()),
            "kind": HeadscaleServer::kind(&()),
            "status": {"nodes": inv},
        });
        status_written = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(|_| ())
            .map_err(Error::PatchStatus);
    }
    // Events first: a status write that fails must not lose the record of a deletion.
    for ev in events {
        if let Err(e) = ctx.recorder.publish(&ev, &hs.object_ref(&())).await {
            tracing::warn!(server = %key, error = %e, "failed to publish event");
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    status_written?;
    ctx.clear_failures(&format!("audit/{key}"));
    // A node too new to be judged is judged as soon as it may be, not a resync later.
    let settling = nodes.iter().any(|n| {
        n.created_at.is_some_and(|c| {
            now.duration_since(c) < jiff::SignedDuration::try_from(audit::SETTLE).unwrap_or_default()
        })
    });
    let mut next = if settling {
        ctx.settings.resync.min(audit::SETTLE)
    } else {
        ctx.settings.resync
    };
    // Held from acting: again as soon as it may act.
    if let Some(until) = acting_held {
        let wait = std::time::Duration::try_from(until.duration_since(Timestamp::now())).unwrap_or_default();
        next = next.min(wait.max(std::time::Duration::from_millis(500)));
    }
    Ok(Action::requeue(next))
}

pub fn error_policy(hs: Arc<HeadscaleServer>, error: &Error, state: Arc<State>) -> Action {
    let key = format!("audit/{}", object_key(&*hs));
    crate::controller::reconcile_failed(&state.ctx, AUDIT, &key, None, error.reason(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_account_for_their_nodes_and_keys_on_their_server_only() {
        let mk = |name: &str, server: &str, status: serde_json::Value| -> NodeApproval {
            serde_json::from_value(json!({
                "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"serverRef": {"name": server}, "preAuthKey": {"user": "a"}},
                "status": status,
            }))
            .unwrap()
        };
        let approvals = vec![
            mk("a", "corp", json!({"node": {"id": "4", "name": "n"}})),
            mk("b", "corp", json!({"preAuthKey": {"id": "9", "secretName": "b"}})),
            mk("c", "other", json!({"node": {"id": "5", "name": "n"}})),
            mk("d", "corp", json!({})),
        ];
        let e = expected(&approvals, "corp");
        assert_eq!(e.nodes, [NodeId(4)].into_iter().collect());
        assert_eq!(e.keys, [PreAuthKeyId(9)].into_iter().collect());

        // A node that is not the host its approval claimed accounts for nothing.
        let mut claimed = mk(
            "e",
            "corp",
            json!({"node": {"id": "6", "name": "EVIL"}, "preAuthKey": {"id": "11", "secretName": "e"}}),
        );
        claimed.spec.hostname = Some("web-1".into());
        let mut honest = mk("f", "corp", json!({"node": {"id": "7", "name": "Web-1"}}));
        honest.spec.hostname = Some("web-1".into());
        let e = expected(&[claimed, honest], "corp");
        assert_eq!(e.nodes, [NodeId(7)].into_iter().collect());
        assert!(e.keys.is_empty());

        // A node whose tags were refused is not what was approved.
        let untagged = mk(
            "g",
            "corp",
            json!({"node": {"id": "8", "name": "n"}, "conditions": [{"type": "Ready", "status": "False",
                "reason": "TagsRejected", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert!(expected(&[untagged], "corp").nodes.is_empty());
    }

    fn server(ns: &str, name: &str, url: &str, endpoint: Option<&str>) -> Arc<HeadscaleServer> {
        identified(ns, name, url, endpoint, None, false)
    }

    /// A server with `instance_key` recorded, Ready or not.
    fn identified(
        ns: &str,
        name: &str,
        url: &str,
        endpoint: Option<&str>,
        instance_key: Option<&str>,
        ready: bool,
    ) -> Arc<HeadscaleServer> {
        let conditions = if ready {
            json!([{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        } else {
            json!([])
        };
        let nodes = instance_key.map(|k| {
            json!({"total": 0, "online": 0, "expiringSoon": 0, "expired": 0, "stale": 0,
                   "unexpected": 0, "instanceKey": k})
        });
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"external": {"url": url, "apiKeySecretRef": {"name": "k"}}},
                "status": {"endpoint": endpoint, "conditions": conditions, "nodes": nodes},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn servers_pointing_at_the_same_headscale_are_found() {
        let a = server(
            "team-a",
            "corp",
            "https://hs.example.com",
            Some("https://hs.example.com"),
        );
        let all = vec![
            a.clone(),
            server(
                "team-b",
                "corp",
                "https://HS.example.com:443/",
                Some("https://hs.example.com:443/"),
            ),
            server(
                "team-c",
                "other",
                "https://other.example.com",
                Some("https://other.example.com"),
            ),
            server("team-d", "late", "https://hs.example.com/", None),
            server(
                "team-a",
                "http",
                "http://hs.example.com",
                Some("http://hs.example.com"),
            ),
        ];
        assert_eq!(
            sharing_headscale(&a, &all, None).shared,
            vec!["team-b/corp".to_string(), "team-d/late".to_string()],
            "same scheme, host and port, whatever the case and the trailing slash"
        );
        assert_eq!(
            sharing_headscale(&a, std::slice::from_ref(&a), None),
            Sharing::default(),
            "not itself"
        );
        let m = shared_endpoint_message(&sharing_headscale(&a, &all, None).shared);
        assert!(
            m.contains("team-b/corp") && m.contains("no expire, delete or prune"),
            "{m}"
        );
    }

    #[test]
    fn servers_reaching_the_same_headscale_by_other_urls_are_found_by_instance_key() {
        const K: &str = "mkey:2b3b65e3f6ad6627535e8ad237c11061d8a28d78607b5ca4c28841dcb6f02f47";
        const OTHER: &str = "mkey:9ca17e756cd263d47a43e339e25d8c331ab3b57a140f94fafa427797eb70b46a";
        let me = identified(
            "a",
            "corp",
            "http://127.0.0.1:8080",
            Some("http://127.0.0.1:8080"),
            Some(K),
            true,
        );
        let all = vec![
            me.clone(),
            // The same Headscale by another name, and by its in-cluster Service.
            identified(
                "b",
                "alias",
                "http://localhost:8080",
                Some("http://localhost:8080"),
                Some(K),
                true,
            ),
            identified(
                "c",
                "svc",
                "http://hs.c.svc:8080",
                Some("http://hs.c.svc:8080"),
                Some(K),
                false,
            ),
            // Another Headscale.
            identified(
                "d",
                "other",
                "http://other:8080",
                Some("http://other:8080"),
                Some(OTHER),
                true,
            ),
            // Ready, but which Headscale it reaches is not known yet: may be this one.
            identified(
                "e",
                "new",
                "https://hs.example.com",
                Some("https://hs.example.com"),
                None,
                true,
            ),
            // Not Ready and unknown: it cannot act either; only its URL counts.
            identified("f", "broken", "http://x:1", None, None, false),
        ];
        let s = sharing_headscale(&me, &all, Some(K));
        assert_eq!(s.shared, vec!["b/alias".to_string(), "c/svc".to_string()]);
        assert_eq!(s.unidentified, vec!["e/new".to_string()]);
        // Own key unknown: only the URL comparison finds sharing.
        let s = sharing_headscale(&me, &all, None);
        assert!(s.shared.is_empty(), "{s:?}");
        assert!(unidentified_message(&["e/new".into()]).contains("no expire, delete or prune"));
    }

    #[test]
    fn the_latest_sign_of_a_restart_counts() {
        let hs: HeadscaleServer = serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
            "metadata": {"name": "corp", "namespace": "ns"},
            "spec": {"external": {"url": "http://h", "apiKeySecretRef": {"name": "k"}}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                "lastTransitionTime": "2026-01-01T00:10:00Z"}]},
        }))
        .unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut seen = Seen {
            first: t("2026-01-01T00:00:00Z"),
            online: 0,
            all_offline_at: None,
            unexpected: HashSet::new(),
            watched: audit::Watched::new(),
            warnings: Vec::new(),
            acted: None,
        };
        assert_eq!(quiet_since(&hs, &seen), t("2026-01-01T00:10:00Z"));
        seen.all_offline_at = Some(t("2026-01-01T00:20:00Z"));
        assert_eq!(quiet_since(&hs, &seen), t("2026-01-01T00:20:00Z"));
    }
}
