//! The policy controller: all `AclPolicy` fragments naming one `HeadscaleServer`
//! merged, checked, applied and kept applied.
//!
//! One reconcile per server (the primary object), triggered by a change of the
//! server's spec, readiness or version, by a fragment's spec (or its deletion), by a
//! ConfigMap a fragment reads, and by a periodic resync that repairs drift:
//! dereference (fragments and their text) -> validate and build ([`build::plan`],
//! pure) -> apply (read the served policy; Headscale's check on 0.29+; write only
//! when the served policy differs) -> status (each fragment, the server's
//! `status.policy` and `PolicyApplied` condition, under the field manager
//! `headscale-operator/policy`, only when changed).
//!
//! A second, small controller on the fragments reports those whose server does not
//! exist (`ServerNotFound`): the per-server controller never sees them.

pub mod build;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Event;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use self::build::{Outcome, Plan, ServerPart, Source, Unreadable};
use super::server::Outcome as ServerOutcome;
use super::{Context, backoff, connect};
use crate::api::conditions::{self, reason};
use crate::api::{AclPolicy, AclPolicyStatus, HeadscaleServer};
use crate::headscale;
use crate::metrics::{ErrorLabels, Metrics, RejectionLabels};
use crate::policy;

pub const CONTROLLER: &str = "policy";
pub const FIELD_MANAGER: &str = "headscale-operator/policy";
/// Status writes and Events sent at once after a merge (one per fragment).
const PARALLEL_WRITES: usize = 8;

/// Errors of the Kubernetes side of a reconcile. What is wrong with the fragments
/// or what Headscale says is not an error here: it is an [`Outcome`] in status.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(transparent)]
    ReadSecret(#[from] connect::ReadSecretError),
    #[error("reading ConfigMap {name}: {source}")]
    ReadConfigMap { name: String, source: kube::Error },
    #[error("reading HeadscaleServer {name}: {source}")]
    ReadServer { name: String, source: kube::Error },
    #[error("writing the status of AclPolicy {name}: {source}")]
    PatchFragmentStatus { name: String, source: kube::Error },
    #[error("writing the policy status of the server: {0}")]
    PatchServerStatus(#[source] kube::Error),
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "ReadSecret",
            Error::ReadConfigMap { .. } => "ReadConfigMap",
            Error::ReadServer { .. } => "ReadServer",
            Error::PatchFragmentStatus { .. } => "PatchFragmentStatus",
            Error::PatchServerStatus(_) => "PatchServerStatus",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

/// What the per-server reconciles share.
struct State {
    ctx: Arc<Context>,
    /// Every AclPolicy, from the reflector that also triggers reconciles.
    fragments: Store<AclPolicy>,
    /// One client per server (connection pool, version cache), replaced when the
    /// URL, the key or the reported version changes. Keyed by `namespace/name`;
    /// the fingerprint is a hash, never the key.
    clients: Mutex<HashMap<String, (String, headscale::Client)>>,
    /// When each server was last seen serving which hash: a reconcile triggered
    /// soon after (half a resync) skips the read; the periodic resync never does.
    verified: Mutex<HashMap<String, (String, Instant)>>,
}

impl State {
    fn recently_verified(&self, key: &str, hash: &str) -> bool {
        let map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .is_some_and(|(h, at)| h == hash && at.elapsed() < self.ctx.settings.resync / 2)
    }

    fn verified(&self, key: &str, hash: &str) {
        let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.to_string(), (hash.to_string(), Instant::now()));
    }

    fn forget(&self, key: &str) {
        let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    /// A client for the server, or why there is none (the server's own reasons:
    /// a missing Secret, an invalid URL).
    async fn client_for(
        &self,
        key: &str,
        ns: &str,
        hs: &HeadscaleServer,
        access: &connect::Access,
    ) -> Result<Result<headscale::Client, String>, Error> {
        let api_key = match connect::api_key(&self.ctx.client, ns, access).await? {
            Ok(k) => k,
            Err(outcome) => return Ok(Err(outcome_message(&outcome))),
        };
        let version = hs
            .status
            .as_ref()
            .and_then(|s| s.version.clone())
            .unwrap_or_default();
        let fingerprint =
            policy::sha256_hex(format!("{}\n{}\n{version}", access.url, api_key.expose()).as_bytes());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, c)) = clients.get(key)
            && *f == fingerprint
        {
            return Ok(Ok(c.clone()));
        }
        match connect::client(access, api_key, connect::client_config(&self.ctx.metrics)) {
            Ok(c) => {
                clients.insert(key.to_string(), (fingerprint, c.clone()));
                Ok(Ok(c))
            }
            Err(outcome) => Ok(Err(outcome_message(&outcome))),
        }
    }
}

fn outcome_message(outcome: &ServerOutcome) -> String {
    match outcome {
        ServerOutcome::NotReady { reason, message, .. } => format!("{reason}: {message}"),
        ServerOutcome::Ready { .. } => String::new(),
    }
}

/// Runs the per-server controller and the orphan controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let ns = ctx.settings.watch_namespace.clone();
    let servers: Api<HeadscaleServer> = api(&client, ns.as_deref());
    let acls: Api<AclPolicy> = api(&client, ns.as_deref());
    // ConfigMaps are watched by metadata only: any change of one a fragment reads
    // brings its server back; the content is read in the reconcile.
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = api(&client, ns.as_deref());
    let wc = || watcher::Config::default().any_semantic();

    let (fragments, fragment_writer) = reflector::store();
    let fragment_triggers = super::spec_changes(
        watcher(acls.clone(), wc())
            .default_backoff()
            .reflect(fragment_writer),
    );
    let (server_store, server_writer) = reflector::store();
    let server_triggers = watcher(servers.clone(), wc())
        .default_backoff()
        .reflect(server_writer)
        .applied_objects()
        .predicate_filter(server_inputs, Default::default());

    let state = Arc::new(State {
        ctx: ctx.clone(),
        fragments: fragments.clone(),
        clients: Mutex::new(HashMap::new()),
        verified: Mutex::new(HashMap::new()),
    });
    let by_config_map = fragments.clone();
    let per_server = Controller::for_stream(server_triggers, server_store)
        .with_config(controller::Config::default().debounce(ctx.settings.policy_debounce))
        .watches_stream(fragment_triggers, |acl: AclPolicy| server_of(&acl))
        .watches(config_maps, wc(), move |cm| {
            let ns = cm.namespace();
            let name = cm.name_any();
            let servers: std::collections::HashSet<ObjectRef<HeadscaleServer>> = by_config_map
                .state()
                .iter()
                .filter(|f| {
                    f.namespace() == ns && f.spec.config_map_ref.as_ref().is_some_and(|r| r.name == name)
                })
                .filter_map(|f| server_of(f))
                .collect();
            servers
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "policy reconcile loop event");
            }
        });

    // Orphans: fragments whose server does not exist.
    let (orphan_store, orphan_writer) = reflector::store();
    let orphan_triggers = watcher(acls, wc())
        .default_backoff()
        .reflect(orphan_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let by_server = orphan_store.clone();
    let orphans = Controller::for_stream(orphan_triggers, orphan_store)
        .watches(servers, wc(), move |hs| {
            let ns = hs.namespace();
            let name = hs.name_any();
            by_server
                .state()
                .iter()
                .filter(|f| f.namespace() == ns && f.spec.server_ref.name == name)
                .map(|f| ObjectRef::from_obj(&**f))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile_orphan, orphan_error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "orphan reconcile loop event");
            }
        });
    futures::join!(per_server, orphans);
}

fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The server a fragment names.
fn server_of(acl: &AclPolicy) -> Option<ObjectRef<HeadscaleServer>> {
    let ns = acl.namespace()?;
    Some(ObjectRef::new(&acl.spec.server_ref.name).within(&ns))
}

/// What of a server the policy depends on: its spec, readiness and version. The
/// controller's own status writes change none of them, so they trigger nothing.
fn server_inputs(hs: &HeadscaleServer) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let status = hs.status.as_ref();
    let ready = status
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    let version = status.and_then(|s| s.version.clone());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (hs.metadata.generation, ready, version).hash(&mut h);
    Some(h.finish())
}

fn object_key(obj: &impl ResourceExt) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile(hs: Arc<HeadscaleServer>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::controller(CONTROLLER);
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
    let ns = hs.namespace().ok_or(Error::MissingNamespace)?;
    let name = hs.name_any();
    let key = object_key(hs);
    let ctx = &state.ctx;
    if hs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    // Dereference: the fragments naming this server and their text.
    let mut fragments: Vec<Arc<AclPolicy>> = state
        .fragments
        .state()
        .into_iter()
        .filter(|f| {
            f.namespace().as_deref() == Some(ns.as_str())
                && f.spec.server_ref.name == name
                && f.metadata.deletion_timestamp.is_none()
        })
        .collect();
    fragments.sort_by_key(|f| object_key(&**f));
    let sources = read_sources(ctx, &ns, &fragments).await?;

    // Validate and build (pure).
    let old = ServerPart::of(hs.status.as_ref());
    let built = build::plan(&sources, hs.spec.policy.when_empty, old.applied_hash().is_some());

    // Apply.
    let outcome = match &built.plan {
        Plan::LeaveAlone => Outcome::LeftAlone,
        Plan::Invalid(r) => Outcome::Rejected(r.clone()),
        Plan::Apply(desired) => match reachable(hs) {
            Err(message) => Outcome::ServerNotReady {
                message,
                desired: desired.merged.hash().to_string(),
            },
            Ok(access) => apply(state, &key, &ns, hs, &access, desired, &old).await?,
        },
    };

    // Status: the server's part first (the record of what was applied, which the
    // drift check reads), then the fragments' at once, then the Events.
    let now = Timestamp::now();
    let new = build::server_part(&old, hs.metadata.generation, &outcome, now);
    if new != old {
        patch_server(ctx, &ns, &name, &new).await?;
    }
    count(ctx, &ns, &name, &old, &new, &outcome);
    log_outcome(&key, &outcome, new.condition != old.condition);
    let no_warnings = Vec::new();
    let statuses: Vec<(&Arc<AclPolicy>, AclPolicyStatus, AclPolicyStatus)> = fragments
        .iter()
        .map(|fragment| {
            let id = object_key(&**fragment);
            let old = fragment.status.clone().unwrap_or_default();
            let warnings = built.warnings.get(&id).unwrap_or(&no_warnings);
            let new =
                build::fragment_status(&old, &id, fragment.metadata.generation, &outcome, warnings, now);
            (fragment, old, new)
        })
        .collect();
    let writes: Vec<(String, AclPolicyStatus)> = statuses
        .iter()
        .filter(|(_, old, new)| new != old)
        .map(|(fragment, _, new)| (fragment.name_any(), new.clone()))
        .collect();
    let ns_ref = ns.as_str();
    stream::iter(
        writes
            .into_iter()
            .map(|(name, status)| async move { patch_fragment(ctx, ns_ref, name, &status).await }),
    )
    .buffer_unordered(PARALLEL_WRITES)
    .try_collect::<Vec<()>>()
    .await?;
    let mut events: Vec<(ObjectReference, Event)> = build::server_events(&old, &new, &outcome)
        .into_iter()
        .map(|e| (hs.object_ref(&()), e))
        .collect();
    events.extend(statuses.iter().filter_map(|(fragment, old, new)| {
        build::transition_event(
            conditions::find(&old.conditions, conditions::READY),
            conditions::find(&new.conditions, conditions::READY),
            "MergePolicy",
        )
        .map(|e| (fragment.object_ref(&()), e))
    }));
    stream::iter(
        events
            .into_iter()
            .map(|(reference, event)| async move { publish(ctx, &reference, event).await }),
    )
    .buffer_unordered(PARALLEL_WRITES)
    .collect::<Vec<()>>()
    .await;

    let failures = format!("policy:{key}");
    Ok(match outcome {
        Outcome::Failed { .. } => {
            state.forget(&key);
            let n = ctx.record_failure(&failures);
            Action::requeue(backoff::delay(
                n,
                Duration::from_secs(2),
                ctx.settings.max_backoff,
                backoff::jitter(),
            ))
        }
        _ => {
            ctx.clear_failures(&failures);
            // The resync reads the served policy again: that is the drift check.
            Action::requeue(ctx.settings.resync)
        }
    })
}

/// How to reach the server when the policy can be applied now, else why not.
fn reachable(hs: &HeadscaleServer) -> Result<connect::Access, String> {
    let ready = hs
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match ready {
        Some(c) if c.status == "True" => connect::Access::of(hs).ok_or_else(|| {
            format!(
                "HeadscaleServer {} has no endpoint in its status yet; the policy is applied once it has",
                hs.name_any()
            )
        }),
        Some(c) => Err(format!(
            "HeadscaleServer {} is not Ready ({}: {}); the policy is applied once it is",
            hs.name_any(),
            c.reason,
            c.message
        )),
        None => Err(format!(
            "HeadscaleServer {} has not been checked yet; the policy is applied once it is Ready",
            hs.name_any()
        )),
    }
}

/// Reads each fragment's text: inline, or its ConfigMap's key (each ConfigMap once).
async fn read_sources(ctx: &Context, ns: &str, fragments: &[Arc<AclPolicy>]) -> Result<Vec<Source>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let mut config_maps: HashMap<String, Option<ConfigMap>> = HashMap::new();
    let mut sources = Vec::with_capacity(fragments.len());
    for f in fragments {
        let text = match (&f.spec.policy, &f.spec.config_map_ref) {
            (Some(text), _) => Ok(text.clone()),
            (None, Some(r)) => {
                if !config_maps.contains_key(&r.name) {
                    let cm = api
                        .get_opt(&r.name)
                        .await
                        .map_err(|source| Error::ReadConfigMap {
                            name: r.name.clone(),
                            source,
                        })?;
                    config_maps.insert(r.name.clone(), cm);
                }
                config_map_text(config_maps.get(&r.name).and_then(Option::as_ref), &r.name, &r.key)
            }
            (None, None) => Err(Unreadable {
                reason: reason::INVALID_SPEC,
                message: "set spec.policy or spec.configMapRef".into(),
            }),
        };
        sources.push(Source {
            id: object_key(&**f),
            order: f.spec.order,
            text,
        });
    }
    Ok(sources)
}

/// The text of a ConfigMap key (`data`, or UTF-8 `binaryData`), or why there is none.
pub fn config_map_text(cm: Option<&ConfigMap>, name: &str, key: &str) -> Result<String, Unreadable> {
    let Some(cm) = cm else {
        return Err(Unreadable {
            reason: reason::CONFIG_MAP_NOT_FOUND,
            message: format!("ConfigMap {name:?} (spec.configMapRef) does not exist"),
        });
    };
    let missing = |why: &str| Unreadable {
        reason: reason::CONFIG_MAP_KEY_MISSING,
        message: format!("ConfigMap {name:?} key {key:?} {why}"),
    };
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(text.clone());
    }
    match cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        Some(bytes) => String::from_utf8(bytes.0.clone()).map_err(|_| missing("is not valid UTF-8")),
        None => Err(missing("does not exist")),
    }
}

/// Makes Headscale serve `desired`, writing only when the served policy differs.
async fn apply(
    state: &State,
    key: &str,
    ns: &str,
    hs: &HeadscaleServer,
    access: &connect::Access,
    desired: &build::Desired,
    old: &ServerPart,
) -> Result<Outcome, Error> {
    let merged = &desired.merged;
    let hash = merged.hash().to_string();
    let served = |applied_time, wrote, drift| Outcome::Served {
        hash: hash.clone(),
        fragments: merged.fragments().to_vec(),
        default: desired.default,
        applied_time,
        wrote,
        drift,
    };
    let failed = |e: headscale::Error| Outcome::Failed {
        reason: e.reason(),
        message: e.to_string(),
        desired: hash.clone(),
    };
    if old.applied_hash() == Some(hash.as_str()) && state.recently_verified(key, &hash) {
        let at = old
            .policy
            .as_ref()
            .and_then(|p| p.applied_time.clone())
            .map(|t| t.0);
        return Ok(served(at, false, false));
    }
    let client = match state.client_for(key, ns, hs, access).await? {
        Ok(c) => c,
        Err(message) => {
            return Ok(Outcome::ServerNotReady {
                message,
                desired: hash.clone(),
            });
        }
    };

    // Trap 12: every PUT writes a row and pushes to every node; diff first.
    let current = match client.get_policy().await {
        Ok(p) => p,
        Err(e) => return Ok(failed(e)),
    };
    let served_hash = current
        .as_ref()
        .and_then(|p| policy::normalize(&p.policy).ok())
        .map(|text| policy::sha256_hex(text.as_bytes()));
    if served_hash.as_deref() == Some(hash.as_str()) {
        state.verified(key, &hash);
        return Ok(served(current.and_then(|p| p.updated_at), false, false));
    }
    // Someone else changed it since the operator applied its policy.
    let drift = old
        .applied_hash()
        .is_some_and(|applied| served_hash.as_deref() != Some(applied));

    let shape = match client.api_shape().await {
        Ok((_, shape)) => shape,
        Err(e) => return Ok(failed(e)),
    };
    if shape.policy_check {
        match client.check_policy(merged.text()).await {
            Ok(()) => {}
            Err(headscale::Error::PolicyRejected { message, .. }) => {
                return Ok(Outcome::Rejected(build::rejected_by_headscale(merged, &message)));
            }
            Err(e) => return Ok(failed(e)),
        }
    }
    // 0.27–0.28 have no check: the set call validates and refuses atomically.
    match client.set_policy(merged.text()).await {
        Ok(stored) => {
            state.verified(key, &hash);
            Ok(served(stored.updated_at.or(Some(Timestamp::now())), true, drift))
        }
        Err(headscale::Error::PolicyRejected { message, .. }) => {
            Ok(Outcome::Rejected(build::rejected_by_headscale(merged, &message)))
        }
        Err(e) => Ok(failed(e)),
    }
}

/// Metrics of one reconcile: writes, drift repairs, and each distinct rejection once.
fn count(ctx: &Context, ns: &str, name: &str, old: &ServerPart, new: &ServerPart, outcome: &Outcome) {
    let server = Metrics::server(ns, name);
    match outcome {
        Outcome::Served {
            wrote: true, drift, ..
        } => {
            ctx.metrics.policy_writes.get_or_create(&server).inc();
            if *drift {
                ctx.metrics.policy_drift_repairs.get_or_create(&server).inc();
            }
        }
        Outcome::Rejected(r) if new.condition != old.condition => {
            ctx.metrics
                .policy_rejections
                .get_or_create(&RejectionLabels {
                    namespace: ns.into(),
                    name: name.into(),
                    by: r.by.label().into(),
                })
                .inc();
        }
        _ => {}
    }
}

/// A change of state at info, the same state again at debug.
fn log_outcome(server: &str, outcome: &Outcome, changed: bool) {
    match outcome {
        Outcome::Served {
            hash,
            wrote: true,
            drift,
            fragments,
            ..
        } => tracing::info!(%server, %hash, drift, fragments = fragments.len(), "policy applied"),
        Outcome::Rejected(r) if changed => {
            tracing::info!(%server, reason = r.reason, by = r.by.label(), message = %r.summary, "policy rejected")
        }
        Outcome::Failed { reason, message, .. } => {
            tracing::info!(%server, %reason, %message, "policy not applied, will retry")
        }
        other if changed => tracing::info!(%server, outcome = ?other, "policy state changed"),
        other => tracing::debug!(%server, outcome = ?other, "policy unchanged"),
    }
}

async fn patch_server(ctx: &Context, ns: &str, name: &str, part: &ServerPart) -> Result<(), Error> {
    let mut status = serde_json::Map::new();
    if let Some(policy) = &part.policy {
        status.insert("policy".into(), json!(policy));
    }
    status.insert(
        "conditions".into(),
        json!(part.condition.iter().collect::<Vec<_>>()),
    );
    let patch = json!({
        "apiVersion": HeadscaleServer::api_version(&()),
        "kind": HeadscaleServer::kind(&()),
        "status": status,
    });
    let api: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::PatchServerStatus(e)),
    }
}

async fn patch_fragment(
    ctx: &Context,
    ns: &str,
    name: String,
    status: &AclPolicyStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": AclPolicy::api_version(&()),
        "kind": AclPolicy::kind(&()),
        "status": status,
    });
    let api: Api<AclPolicy> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: its server is re-merged by the deletion's trigger.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::PatchFragmentStatus { name, source }),
    }
}

async fn publish(ctx: &Context, reference: &ObjectReference, event: Event) {
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(object = ?reference.name, error = %e, "failed to publish event");
    }
}

fn report_error(
    ctx: &Arc<Context>,
    key: &str,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    error: &Error,
) -> u32 {
    tracing::warn!(object = %key, reason = error.reason(), error = %error, "policy reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER.into(),
            reason: error.reason().into(),
        })
        .inc();
    let event = Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: error.reason().into(),
        note: Some(error.to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let ctx2 = ctx.clone();
    tokio::spawn(async move { publish(&ctx2, &reference, event).await });
    ctx.record_failure(&format!("policy:{key}"))
}

fn error_policy(hs: Arc<HeadscaleServer>, error: &Error, state: Arc<State>) -> Action {
    let key = object_key(&*hs);
    state.forget(&key);
    let n = report_error(&state.ctx, &key, hs.object_ref(&()), error);
    Action::requeue(backoff::delay(
        n,
        Duration::from_secs(2),
        state.ctx.settings.max_backoff,
        backoff::jitter(),
    ))
}

/// Fragments whose server does not exist get `Ready=False, ServerNotFound`; the
/// per-server controller handles every other fragment.
async fn reconcile_orphan(acl: Arc<AclPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = acl.namespace().ok_or(Error::MissingNamespace)?;
    let server = &acl.spec.server_ref.name;
    let servers: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), &ns);
    let exists = servers
        .get_metadata_opt(server)
        .await
        .map_err(|source| Error::ReadServer {
            name: server.clone(),
            source,
        })?
        .is_some();
    if exists || acl.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let old = acl.status.clone().unwrap_or_default();
    let new = orphan_status(&old, acl.metadata.generation, server, &ns, Timestamp::now());
    if new != old {
        patch_fragment(&ctx, &ns, acl.name_any(), &new).await?;
    }
    if let Some(event) = build::transition_event(
        conditions::find(&old.conditions, conditions::READY),
        conditions::find(&new.conditions, conditions::READY),
        "MergePolicy",
    ) {
        publish(&ctx, &acl.object_ref(&()), event).await;
    }
    // The server watch brings it back when the server appears.
    Ok(Action::await_change())
}

/// The status of a fragment whose server does not exist. Pure.
pub fn orphan_status(
    old: &AclPolicyStatus,
    generation: Option<i64>,
    server: &str,
    ns: &str,
    now: Timestamp,
) -> AclPolicyStatus {
    let mut status = AclPolicyStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        merged_hash: None,
        last_applied_time: old.last_applied_time.clone(),
        warnings: Vec::new(),
    };
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        false,
        reason::SERVER_NOT_FOUND,
        format!("HeadscaleServer {server:?} does not exist in namespace {ns:?} (spec.serverRef)"),
        generation,
        now,
    );
    status
}

fn orphan_error_policy(acl: Arc<AclPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(&*acl);
    let n = report_error(&ctx, &key, acl.object_ref(&()), error);
    Action::requeue(backoff::delay(
        n,
        Duration::from_secs(2),
        ctx.settings.max_backoff,
        backoff::jitter(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use serde_json::json;

    use super::*;

    #[test]
    fn config_map_text_explains_what_is_missing() {
        assert_eq!(
            config_map_text(None, "cm", "k").unwrap_err().reason,
            "ConfigMapNotFound"
        );
        let mut cm = ConfigMap::default();
        let err = config_map_text(Some(&cm), "cm", "k").unwrap_err();
        assert_eq!(err.reason, "ConfigMapKeyMissing");
        assert!(err.message.contains("\"k\""), "{}", err.message);
        cm.binary_data = Some(BTreeMap::from([("k".to_string(), ByteString(vec![0xff]))]));
        assert_eq!(
            config_map_text(Some(&cm), "cm", "k").unwrap_err().reason,
            "ConfigMapKeyMissing"
        );
        cm.binary_data = Some(BTreeMap::from([("k".to_string(), ByteString(b"{}".to_vec()))]));
        assert_eq!(config_map_text(Some(&cm), "cm", "k").unwrap(), "{}");
        cm.data = Some(BTreeMap::from([("k".to_string(), "{\"acls\": []}".to_string())]));
        assert_eq!(config_map_text(Some(&cm), "cm", "k").unwrap(), "{\"acls\": []}");
    }

    fn acl(name: &str, server: &str, generation: i64) -> AclPolicy {
        let mut a: AclPolicy = serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "AclPolicy",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": generation},
            "spec": {"serverRef": {"name": server}, "policy": "{}"},
        }))
        .unwrap();
        a.status = None;
        a
    }

    #[tokio::test]
    async fn only_spec_changes_and_deletions_trigger() {
        let mut with_status = acl("a", "s1", 1);
        with_status.status = Some(AclPolicyStatus::default());
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(acl("a", "s1", 1))),
            Ok(watcher::Event::InitDone),
            // A status write: same generation.
            Ok(watcher::Event::Apply(with_status)),
            // A spec change.
            Ok(watcher::Event::Apply(acl("a", "s1", 2))),
            // Moved to another server: both servers re-merge.
            Ok(watcher::Event::Apply(acl("a", "s2", 3))),
            Ok(watcher::Event::Delete(acl("a", "s2", 3))),
        ];
        let out: Vec<(i64, String)> = crate::controller::spec_changes(stream::iter(events))
            .map(|r| {
                let a = r.unwrap();
                (a.metadata.generation.unwrap(), a.spec.server_ref.name)
            })
            .collect()
            .await;
        assert_eq!(
            out,
            [
                (1, "s1".to_string()),
                (2, "s1".to_string()),
                (3, "s2".to_string()),
                (3, "s1".to_string()),
                (3, "s2".to_string()),
            ]
        );
    }

    #[test]
    fn server_inputs_ignore_the_policy_status() {
        let mut hs: HeadscaleServer = serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "HeadscaleServer",
            "metadata": {"name": "s", "namespace": "ns", "generation": 1},
            "spec": {"external": {"url": "http://h", "apiKeySecretRef": {"name": "k"}}},
            "status": {"version": "v0.29.2", "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]},
        }))
        .unwrap();
        let before = server_inputs(&hs);
        let status = hs.status.as_mut().unwrap();
        status.policy = Some(crate::api::ServerPolicyStatus {
            hash: Some("h".into()),
            ..Default::default()
        });
        let now = Timestamp::now();
        conditions::set(
            &mut status.conditions,
            conditions::POLICY_APPLIED,
            true,
            "Applied",
            "",
            Some(1),
            now,
        );
        assert_eq!(server_inputs(&hs), before);
        conditions::set(
            &mut hs.status.as_mut().unwrap().conditions,
            conditions::READY,
            false,
            "ServerUnreachable",
            "",
            Some(1),
            now,
        );
        assert_ne!(server_inputs(&hs), before);
    }

    #[test]
    fn orphans_are_told_which_server_is_missing() {
        let now = Timestamp::now();
        let old = AclPolicyStatus {
            merged_hash: Some("h".into()),
            ..Default::default()
        };
        let s = orphan_status(&old, Some(2), "corp", "ns", now);
        let c = conditions::find(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ServerNotFound")
        );
        assert!(c.message.contains("\"corp\""), "{}", c.message);
        assert_eq!(s.merged_hash, None);
        assert_eq!(orphan_status(&s, Some(2), "corp", "ns", Timestamp::now()), s);
    }

    #[test]
    fn managed_and_unready_servers_are_not_reachable() {
        let server = |spec: serde_json::Value, ready: Option<&str>| -> HeadscaleServer {
            let mut v = json!({
                "apiVersion": "headscale.operator.dev/v1alpha1",
                "kind": "HeadscaleServer",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": spec,
            });
            if let Some(status) = ready {
                v["status"] = json!({"conditions": [{"type": "Ready", "status": status, "reason": "R",
                    "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
            }
            serde_json::from_value(v).unwrap()
        };
        let ext = json!({"external": {"url": "http://h", "apiKeySecretRef": {"name": "k"}}});
        let managed = json!({"managed": {"version": "0.29.2", "serverUrl": "https://h"}});
        assert!(reachable(&server(ext.clone(), Some("True"))).is_ok());
        assert!(
            reachable(&server(ext.clone(), Some("False")))
                .unwrap_err()
                .contains("not Ready (R: m)")
        );
        assert!(
            reachable(&server(ext, None))
                .unwrap_err()
                .contains("not been checked")
        );
        assert!(
            reachable(&server(managed.clone(), Some("False")))
                .unwrap_err()
                .contains("not Ready")
        );
        // Ready but no endpoint recorded: nothing to reach yet.
        assert!(
            reachable(&server(managed, Some("True")))
                .unwrap_err()
                .contains("no endpoint")
        );
    }
}
