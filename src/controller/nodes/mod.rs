//! The nodes controller: NodeApprovals (interactive registrations and pre-auth keys,
//! checked against the server's enrollment rules first).
//!
//! - `rules.rs`: the enrollment rules (pure).
//! - `approval.rs`: the NodeApproval reconcile and its pure status math.

pub mod approval;
pub mod audit;
pub mod inventory;
pub mod rules;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::Context;
use super::connect;
use super::server::Outcome as ServerOutcome;
use crate::api::conditions;
use crate::api::{HeadscaleServer, NodeApproval};
use crate::headscale;

pub const CONTROLLER: &str = "nodes";
pub const FIELD_MANAGER: &str = "headscale-operator/nodes";

/// The nodes controller's shared state: the context and one Headscale client per
/// server (so the version is asked once, and connections are reused).
pub struct State {
    pub ctx: Arc<Context>,
    clients: Mutex<HashMap<String, ([u8; 32], headscale::Client)>>,
    memory: Mutex<HashMap<String, Remembered>>,
    audits: inventory::Memory,
    enrolling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Registrations (by approval uid) whose last attempt got no answer, since when.
    unanswered: Mutex<HashMap<String, jiff::Timestamp>>,
    /// Every HeadscaleServer the operator watches (the audit's reflector): the audit
    /// looks for other servers pointing at the same Headscale.
    pub servers: reflector::Store<HeadscaleServer>,
}

impl State {
    /// Records a registration attempt of approval `uid` at `now`; returns when an
    /// earlier attempt that got no answer was made, if one was (kept: the earliest).
    pub fn registration_attempt(&self, uid: &str, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let mut map = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = map.get(uid).copied();
        map.entry(uid.to_string()).or_insert(now);
        earlier
    }

    /// The attempt got an answer (whatever it was).
    pub fn forget_registration_attempt(&self, uid: &str) {
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// The lock under which one approval of the server `ns/name` is decided at a time.
    pub fn enrollment_lock(&self, ns: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.enrolling.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(format!("{ns}/{name}")).or_default().clone()
    }

    /// A client for the server, or why there is none (not Ready, managed, no key).
    pub async fn client_for(
        &self,
        ns: &str,
        hs: &HeadscaleServer,
    ) -> Result<Result<headscale::Client, String>, connect::ReadSecretError> {
        let access = match reachable(hs) {
            Ok(a) => a,
            Err(why) => return Ok(Err(why)),
        };
        let api_key = match connect::api_key(&self.ctx.client, ns, &access).await? {
            Ok(k) => k,
            Err(outcome) => return Ok(Err(outcome_message(&outcome))),
        };
        let fingerprint: [u8; 32] =
            Sha256::digest(format!("{}\n{}", access.url, api_key.expose()).as_bytes()).into();
        let key = format!("{ns}/{}", hs.name_any());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, c)) = clients.get(&key)
            && *f == fingerprint
        {
            return Ok(Ok(c.clone()));
        }
        match connect::client(&access, api_key, connect::client_config(&self.ctx.metrics)) {
            Ok(c) => {
                clients.insert(key, (fingerprint, c.clone()));
                Ok(Ok(c))
            }
            Err(outcome) => Ok(Err(outcome_message(&outcome))),
        }
    }
}

fn outcome_message(outcome: &ServerOutcome) -> String {
    match outcome {
        ServerOutcome::Ready { .. } => "ready".into(),
        ServerOutcome::NotReady { reason, message, .. } => format!("{reason}: {message}"),
    }
}

/// How to reach the server when the operator can act on it now, else why not.
pub fn reachable(hs: &HeadscaleServer) -> Result<connect::Access, String> {
    let ready = hs
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match ready {
        Some(c) if c.status == "True" => connect::Access::of(hs).ok_or_else(|| {
            format!(
                "HeadscaleServer {} has no endpoint in its status yet",
                hs.name_any()
            )
        }),
        Some(c) => Err(format!(
            "HeadscaleServer {} is not Ready ({}: {})",
            hs.name_any(),
            c.reason,
            c.message
        )),
        None => Err(format!(
            "HeadscaleServer {} has not been checked yet",
            hs.name_any()
        )),
    }
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (approvals, servers): (Api<NodeApproval>, Api<HeadscaleServer>) = match &ctx.settings.watch_namespace
    {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (server_store, server_writer) = reflector::store();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        clients: Mutex::new(HashMap::new()),
        memory: Mutex::new(HashMap::new()),
        audits: inventory::Memory::default(),
        enrolling: Mutex::new(HashMap::new()),
        unanswered: Mutex::new(HashMap::new()),
        servers: server_store.clone(),
    });
    let approvals_ctl = Controller::new(approvals.clone(), watcher::Config::default().any_semantic());
    let store = approvals_ctl.store();
    // A server's change that matters (it became Ready, its enrollment rules or its
    // policy changed) wakes the approvals that name it; other status writes do not.
    let server_changes = watcher(servers.clone(), watcher::Config::default().any_semantic())
        .default_backoff()
        .applied_objects()
        .predicate_filter(
            |hs: &HeadscaleServer| Some(seen_by_approvals(hs)),
            Default::default(),
        );
    let approvals_run = approvals_ctl
        .watches_stream(server_changes, move |hs| {
            let ns = hs.namespace();
            let name = hs.name_any();
            store
                .state()
                .into_iter()
                .filter(|a| a.namespace() == ns && a.spec.server_ref.name == name)
                .map(|a| ObjectRef::from_obj(&*a))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(approval::reconcile, approval::error_policy, state.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "nodes reconcile loop event");
            }
        });
    // The audit: every server at each resync, when its spec or its reachability changes
    // (not on every status write: the audit's own, the policy controller's), and when
    // one of its approvals changes.
    let audit_triggers = watcher(servers, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(server_writer)
        .applied_objects()
        .predicate_filter(|hs: &HeadscaleServer| Some(seen_by_audit(hs)), Default::default());
    let audit_run = Controller::for_stream(audit_triggers, server_store)
        .watches(approvals, watcher::Config::default().any_semantic(), |a| {
            Some(
                ObjectRef::<HeadscaleServer>::new(&a.spec.server_ref.name)
                    .within(&a.namespace().unwrap_or_default()),
            )
        })
        .shutdown_on_signal()
        .run(inventory::reconcile, inventory::error_policy, state)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "audit loop event");
            }
        });
    futures::join!(approvals_run, audit_run);
}

/// What of a server the audit acts on: its spec and how it is reached.
fn seen_by_audit(hs: &HeadscaleServer) -> u64 {
    let mut h = DefaultHasher::new();
    hs.metadata.generation.hash(&mut h);
    let status = hs.status.as_ref();
    status
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| (&c.status, &c.reason))
        .hash(&mut h);
    status.map(|s| (&s.endpoint, &s.version)).hash(&mut h);
    status
        .and_then(|s| s.api_key.as_ref())
        .map(|k| &k.id)
        .hash(&mut h);
    h.finish()
}

/// What of a server the approvals act on: the audit's view and the applied policy
/// (tags are checked against its `tagOwners`).
fn seen_by_approvals(hs: &HeadscaleServer) -> u64 {
    let mut h = DefaultHasher::new();
    seen_by_audit(hs).hash(&mut h);
    hs.status
        .as_ref()
        .and_then(|s| s.policy.as_ref())
        .map(|p| &p.hash)
        .hash(&mut h);
    h.finish()
}

pub(crate) fn object_key(obj: &impl Resource) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    )
}

/// What the controller remembers of an approval between reconciles, in case a status
/// write is lost after a registration or a mint.
#[derive(Clone, Debug, Default)]
pub struct Remembered {
    pub node: Option<crate::api::approval::ApprovedNode>,
    pub pre_auth_key: Option<crate::api::approval::IssuedKey>,
}

impl State {
    pub fn remembered(&self, uid: &str) -> Option<Remembered> {
        let map = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).cloned()
    }

    pub fn remember(&self, uid: &str, status: &crate::api::NodeApprovalStatus) {
        let mut map = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            uid.to_string(),
            Remembered {
                node: status.node.clone(),
                pre_auth_key: status.pre_auth_key.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(status: serde_json::Value) -> HeadscaleServer {
        serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "HeadscaleServer",
            "metadata": {"name": "hs", "namespace": "ns", "generation": 3},
            "spec": {"external": {"url": "http://127.0.0.1:1", "apiKeySecretRef": {"name": "k"}}},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(status: &str) -> serde_json::Value {
        json!([{"type": "Ready", "status": status, "reason": "R", "message": "",
                "lastTransitionTime": "2026-12-04T00:00:00Z"}])
    }

    #[test]
    fn status_writes_that_do_not_matter_wake_neither_the_audit_nor_the_approvals() {
        let base = server(json!({"conditions": ready("True"), "endpoint": "http://e", "version": "v0.29.2"}));
        let with_counts = server(
            json!({"conditions": ready("True"), "endpoint": "http://e", "version": "v0.29.2",
                                        "observedGeneration": 3, "mode": "External"}),
        );
        assert_eq!(seen_by_audit(&base), seen_by_audit(&with_counts));
        assert_eq!(seen_by_approvals(&base), seen_by_approvals(&with_counts));

        let not_ready =
            server(json!({"conditions": ready("False"), "endpoint": "http://e", "version": "v0.29.2"}));
        assert_ne!(seen_by_audit(&base), seen_by_audit(&not_ready));
        let moved =
            server(json!({"conditions": ready("True"), "endpoint": "http://f", "version": "v0.29.2"}));
        assert_ne!(seen_by_audit(&base), seen_by_audit(&moved));
        let mut respec = base.clone();
        respec.metadata.generation = Some(4);
        assert_ne!(seen_by_audit(&base), seen_by_audit(&respec));

        // A new policy matters to approvals (tags are checked against it), not to the audit.
        let policy = server(
            json!({"conditions": ready("True"), "endpoint": "http://e", "version": "v0.29.2",
                                   "policy": {"hash": "abc"}}),
        );
        assert_eq!(seen_by_audit(&base), seen_by_audit(&policy));
        assert_ne!(seen_by_approvals(&base), seen_by_approvals(&policy));
    }
}
