//! The server controller. External mode: read the API key, check the server's
//! version and the key, and report it. Managed mode lands later; until then it is
//! reported as `NotImplemented`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Event;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::backoff;
use super::connect;
use super::dns;
use super::managed;
use crate::api::conditions::{self, reason};
use crate::api::server::ExternalSpec;
use crate::api::{DnsConfig, HeadscaleServer, HeadscaleServerStatus};
use crate::headscale;
use crate::metrics::{Metrics, ServerLabels};

pub const CONTROLLER: &str = "server";
pub const FIELD_MANAGER: &str = "headscale-operator/server";
const STALLED: &str = "Stalled";

/// Errors of the Kubernetes side of a reconcile. What goes wrong with the user's
/// input or with Headscale is not an error here: it is an [`Outcome`] in status.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(transparent)]
    ReadSecret(#[from] connect::ReadSecretError),
    #[error("writing status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("object has no namespace")]
    MissingNamespace,
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("building an object: {0}")]
    Build(String),
    #[error("{0}")]
    DnsStatus(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "ReadSecret",
            Error::PatchStatus(_) => "PatchStatus",
            Error::MissingNamespace => "MissingNamespace",
            Error::Kube { .. } => "KubeApi",
            Error::Build(_) => "Build",
            Error::DnsStatus(_) => "PatchDnsConfigStatus",
        }
    }
}

/// What a reconcile found out about the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ready {
        version: String,
        endpoint: String,
    },
    NotReady {
        reason: &'static str,
        message: String,
        /// A user must change something (spec, Secret, server version).
        stalled: bool,
        /// Retrying may help by itself; use backoff.
        transient: bool,
        version: Option<String>,
        endpoint: Option<String>,
    },
}

impl Outcome {
    pub(crate) fn not_ready(reason: &'static str, message: impl Into<String>, stalled: bool) -> Self {
        Outcome::NotReady {
            reason,
            message: message.into(),
            stalled,
            transient: !stalled,
            version: None,
            endpoint: None,
        }
    }

    pub(crate) fn with_endpoint(mut self, ep: &str) -> Self {
        if let Outcome::NotReady { endpoint, .. } = &mut self {
            *endpoint = Some(ep.to_string());
        }
        self
    }

    fn with_version(mut self, v: &str) -> Self {
        if let Outcome::NotReady { version, .. } = &mut self {
            *version = Some(v.to_string());
        }
        self
    }
}

pub async fn run(ctx: Arc<Context>, ready: Arc<AtomicBool>) {
    let client = ctx.client.clone();
    // Secrets are watched by metadata only: the operator never caches key material.
    let (servers, secrets): (Api<HeadscaleServer>, Api<PartialObjectMeta<Secret>>) =
        match &ctx.settings.watch_namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
            None => (Api::all(client.clone()), Api::all(client)),
        };
    // Only a new spec (generation) triggers a check: status writes (this controller's
    // own, and the policy controller's after every policy it applies) do not, or each
    // applied policy would cost a version and a key check. The Secret watch and the
    // resync bring everything else.
    let (store, writer) = reflector::store();
    let triggers = watcher(servers, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        // Annotations too: the endpoint and regenerate-keys annotations are asked for now.
        .predicate_filter(
            kube::runtime::utils::Predicate::combine(predicates::generation, predicates::annotations),
            Default::default(),
        );
    let controller = Controller::for_stream(triggers, store.clone());

    let store_for_secrets = store.clone();
    let controller = controller.watches(
        secrets,
        watcher::Config::default().any_semantic(),
        move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store_for_secrets
                .state()
                .into_iter()
                .filter(|hs| hs.namespace() == ns && references_secret(hs, &name))
                .map(|hs| ObjectRef::from_obj(&*hs))
                .collect::<Vec<_>>()
        },
    );

    // A managed server's StatefulSet reports its pod's readiness and rollouts.
    let statefulsets: Api<StatefulSet> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = controller.owns(statefulsets, watcher::Config::default().any_semantic());
    // The other children, by metadata and only the operator's (by label): an edit or a
    // deletion behind the operator's back is repaired at once, not at the next resync.
    let children = watcher::Config::default()
        .labels("app.kubernetes.io/managed-by=headscale-operator")
        .any_semantic();
    macro_rules! owns_meta {
        ($controller:expr, $kind:ty) => {{
            let api: Api<PartialObjectMeta<$kind>> = match &ctx.settings.watch_namespace {
                Some(ns) => Api::namespaced(ctx.client.clone(), ns),
                None => Api::all(ctx.client.clone()),
            };
            $controller.owns_stream(watcher(api, children.clone()).default_backoff().touched_objects())
        }};
    }
    let controller = owns_meta!(controller, ConfigMap);
    let controller = owns_meta!(controller, Service);
    let controller = owns_meta!(controller, ServiceAccount);
    let controller = owns_meta!(controller, Role);
    let controller = owns_meta!(controller, RoleBinding);
    let controller = owns_meta!(controller, Ingress);
    let controller = owns_meta!(controller, NetworkPolicy);

    // DnsConfigs: a new spec, a new one or a deleted one re-renders the server it names.
    // The reconcile reads them from this cache.
    let dns_configs: Api<DnsConfig> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (dns_store, dns_writer) = reflector::store();
    let dns_triggers = super::spec_changes(
        watcher(dns_configs, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(dns_writer),
    );
    let controller = controller.watches_stream(dns_triggers, |dc: DnsConfig| dns::server_of(&dc));

    // headscale_operator_server_ready follows the cache, so deleted servers leave it.
    let metrics_store = store.clone();
    let metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            refresh_ready_metric(&metrics, &metrics_store.state());
        }
    });

    let ready_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest poller, and the
        // controller polls it too: re-poll on a timer instead of waiting once.
        loop {
            match tokio::time::timeout(Duration::from_millis(250), ready_store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    ready.store(true, Ordering::Relaxed);
                    tracing::info!("server controller caches synced");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });

    controller
        .shutdown_on_signal()
        .run(
            move |hs, ctx| {
                let dns_store = dns_store.clone();
                async move { reconcile(hs, ctx, dns_store).await }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile loop event");
            }
        })
        .await;
}

/// Rebuilds the per-server readiness gauge from the servers that exist.
/// The node counts come from each server's `status.nodes` too, so a deleted server's
/// series disappear.
pub fn refresh_ready_metric(metrics: &Metrics, servers: &[Arc<HeadscaleServer>]) {
    metrics.server_ready.clear();
    metrics.nodes.clear();
    for hs in servers {
        if let Some(inv) = hs.status.as_ref().and_then(|s| s.nodes.as_ref()) {
            super::nodes::inventory::set_node_gauges(
                metrics,
                &hs.namespace().unwrap_or_default(),
                &hs.name_any(),
                inv,
            );
        }
        let ready = hs
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, conditions::READY))
            .is_some_and(|c| c.status == "True");
        metrics
            .server_ready
            .get_or_create(&ServerLabels {
                namespace: hs.namespace().unwrap_or_default(),
                name: hs.name_any(),
            })
            .set(i64::from(ready));
    }
}

/// Whether a change of Secret `secret` concerns the server: an external server's API
/// key; a managed server's generated Secrets and the Secrets its pod mounts.
fn references_secret(hs: &HeadscaleServer, secret: &str) -> bool {
    if let Some(e) = &hs.spec.external {
        return e.api_key_secret_ref.name == secret;
    }
    let Some(m) = &hs.spec.managed else {
        return false;
    };
    let names = managed::build::Names::of(&hs.name_any());
    names.keys_secret == secret
        || names.api_key_secret == secret
        || m.oidc
            .as_ref()
            .is_some_and(|o| o.client_secret_ref.name == secret)
        || m.database
            .postgres
            .as_ref()
            .is_some_and(|p| p.password_secret_ref.name == secret)
}

fn object_key(hs: &HeadscaleServer) -> String {
    format!("{}/{}", hs.namespace().unwrap_or_default(), hs.name_any())
}

pub async fn reconcile(
    hs: Arc<HeadscaleServer>,
    ctx: Arc<Context>,
    dns_configs: reflector::Store<DnsConfig>,
) -> Result<Action, Error> {
    // Never render before every DnsConfig is known: a server rendered without its
    // DnsConfig would roll its pod to the default DNS and back.
    let synced = tokio::time::timeout(Duration::from_secs(5), dns_configs.wait_until_ready()).await;
    if !matches!(synced, Ok(Ok(()))) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let started = Instant::now();
    let labels = Metrics::controller(CONTROLLER);
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = reconcile_inner(&hs, &ctx, &dns_configs).await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(
    hs: &HeadscaleServer,
    ctx: &Context,
    dns_configs: &reflector::Store<DnsConfig>,
) -> Result<Action, Error> {
    let ns = hs.namespace().ok_or(Error::MissingNamespace)?;
    let key = object_key(hs);
    let name = hs.name_any();
    let selection = dns::build::select(
        dns_configs
            .state()
            .into_iter()
            .filter(|d| d.namespace().as_deref() == Some(ns.as_str()) && d.spec.server_ref.name == name)
            .collect(),
    );

    // Dereference and probe (managed: also apply the server's children).
    let (outcome, extra) = match (&hs.spec.external, &hs.spec.managed) {
        (Some(external), _) => (
            observe_external(ctx, &ns, external).await?,
            managed::Extra::default(),
        ),
        (None, Some(spec)) => managed::reconcile(ctx, hs, &ns, spec, &selection).await?,
        (None, None) => (
            Outcome::not_ready(reason::INVALID_SPEC, "set spec.managed or spec.external", true),
            managed::Extra::default(),
        ),
    };

    // Build (pure).
    let old_status = hs.status.clone().unwrap_or_default();
    let mut new_status = desired_status(hs, &old_status, &outcome, Timestamp::now());
    if hs.spec.managed.is_some() {
        new_status.api_key = extra.api_key.or(old_status.api_key.clone());
        new_status.config_hash = extra.config_hash.or(old_status.config_hash.clone());
        // status.dns says what the server's config carries: it moves only when applied.
        new_status.dns = match &extra.dns {
            Some(d) if d.applied => Some(d.status.clone()),
            _ => old_status.dns.clone(),
        };
    }
    let dns_report = dns_report(hs, extra.dns.as_ref(), &outcome);

    // Apply status, only when it changed. Only this controller's part is compared
    // and written: `status.policy` and the `PolicyApplied` condition belong to the
    // policy controller (another field manager), and server-side apply keeps them.
    if own_part(hs.status.as_ref()) != new_status {
        let api: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({
            "apiVersion": HeadscaleServer::api_version(&()),
            "kind": HeadscaleServer::kind(&()),
            "status": new_status,
        });
        api.patch_status(
            &hs.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    }

    let event = transition_event(
        conditions::find(&old_status.conditions, conditions::READY),
        conditions::find(&new_status.conditions, conditions::READY),
    );
    log_outcome(hs, &outcome, event.is_some());
    if let Some(event) = event {
        publish(ctx, hs, event).await;
    }

    // The DnsConfigs naming this server learn what became of them.
    if let Some(report) = &dns_report {
        dns::write_statuses(ctx, &ns, &name, &selection, report)
            .await
            .map_err(|e| Error::DnsStatus(e.to_string()))?;
    }

    let ready = matches!(outcome, Outcome::Ready { .. });
    ctx.metrics
        .server_ready
        .get_or_create(&ServerLabels {
            namespace: ns,
            name: hs.name_any(),
        })
        .set(i64::from(ready));

    Ok(match outcome {
        Outcome::NotReady { transient: true, .. } => {
            let n = ctx.record_failure(&key);
            // A managed server waits for things that change by themselves (a pod, a
            // volume, the keyholder) and must still have its children repaired: never
            // longer than the resync.
            let cap = if hs.spec.managed.is_some() {
                ctx.settings.max_backoff.min(ctx.settings.resync)
            } else {
                ctx.settings.max_backoff
            };
            Action::requeue(backoff::delay(n, Duration::from_secs(2), cap, backoff::jitter()))
        }
        _ => {
            ctx.clear_failures(&key);
            // Healthy or waiting for a user: look again at the resync interval; watches
            // on the server and its Secret bring changes sooner.
            Action::requeue(ctx.settings.resync)
        }
    })
}

/// What the DnsConfigs naming the server are told; `None` when the server's spec is
/// neither managed nor external.
fn dns_report(
    hs: &HeadscaleServer,
    dns: Option<&managed::DnsResult>,
    outcome: &Outcome,
) -> Option<dns::build::Report> {
    use dns::build::Report;
    if hs.spec.external.is_some() {
        return Some(Report::External);
    }
    hs.spec.managed.as_ref()?;
    let pending = || {
        let message = match outcome {
            Outcome::NotReady { reason, message, .. } => format!("{reason}: {message}"),
            Outcome::Ready { .. } => "not applied".to_string(),
        };
        Report::ServerPending { message }
    };
    Some(match dns {
        Some(d) => match &d.refused {
            Some((problems, kept)) => Report::Refused {
                problems: problems.clone(),
                kept: kept.clone(),
            },
            None if d.applied => Report::Applied {
                record_count: usize::try_from(d.status.extra_records).unwrap_or(0),
            },
            None => pending(),
        },
        None => pending(),
    })
}

/// Logs a change of state at info, and the same state again only at debug.
fn log_outcome(hs: &HeadscaleServer, outcome: &Outcome, changed: bool) {
    let server = object_key(hs);
    match (outcome, changed) {
        (Outcome::Ready { version, endpoint }, true) => {
            tracing::info!(%server, %version, %endpoint, "server ready")
        }
        (Outcome::NotReady { reason, message, .. }, true) => {
            tracing::info!(%server, %reason, detail = %message, "server not ready")
        }
        (outcome, false) => tracing::debug!(%server, ?outcome, "server unchanged"),
    }
}

/// Reads the API key and asks the server who it is and whether the key works.
async fn observe_external(ctx: &Context, ns: &str, external: &ExternalSpec) -> Result<Outcome, Error> {
    let access = connect::Access::external(external);
    let api_key = match connect::api_key(&ctx.client, ns, &access).await? {
        Ok(k) => k,
        Err(outcome) => return Ok(outcome.with_endpoint(&external.url)),
    };
    match connect::client(&access, api_key, connect::client_config(&ctx.metrics)) {
        Ok(client) => Ok(probe(&client).await),
        Err(outcome) => Ok(outcome),
    }
}

/// Version first (unauthenticated: tells "unreachable" from "wrong key"), then the key.
pub async fn probe(client: &headscale::Client) -> Outcome {
    let endpoint = client.base_url().trim_end_matches('/').to_string();
    let version = match client.supported_version().await {
        Ok(v) => v,
        // `/version` exists on every supported release and needs no key: a 404 means
        // whatever answers at this URL is not Headscale's root (e.g. a wrong path prefix).
        Err(headscale::Error::NotFound { .. }) => {
            let message = format!(
                "{endpoint}/version answered 404: no Headscale API at this URL; set it to Headscale's server_url (usually without a path)"
            );
            return Outcome::not_ready(reason::UNEXPECTED_RESPONSE, message, false).with_endpoint(&endpoint);
        }
        Err(e) => return outcome_from_error(&e).with_endpoint(&endpoint),
    };
    match client.check_api_key().await {
        Ok(()) => Outcome::Ready {
            version: version.to_string(),
            endpoint,
        },
        Err(e) => outcome_from_error(&e)
            .with_endpoint(&endpoint)
            .with_version(&version.to_string()),
    }
}

fn outcome_from_error(e: &headscale::Error) -> Outcome {
    use headscale::Error as H;
    let (reason, stalled) = match e {
        H::Unauthorized { .. } => (reason::API_KEY_REJECTED, true),
        H::UnsupportedVersion { .. } => (reason::UNSUPPORTED_VERSION, true),
        H::InvalidUrl { .. } => (reason::INVALID_SPEC, true),
        H::Unreachable { .. } | H::Timeout { .. } | H::ServerError { .. } => {
            (reason::SERVER_UNREACHABLE, false)
        }
        // The probe's calls (version, health) cannot produce these; if a server ever
        // answers them so, it is as unexpected as a 404.
        H::NotFound { .. }
        | H::Conflict { .. }
        | H::InvalidInput { .. }
        | H::PolicyRejected { .. }
        | H::Unsupported { .. }
        | H::UnexpectedResponse { .. } => (reason::UNEXPECTED_RESPONSE, false),
    };
    let message = match e {
        H::Unauthorized { .. } => {
            "the server rejected the API key (401); check spec.external.apiKeySecretRef".to_string()
        }
        other => other.to_string(),
    };
    Outcome::not_ready(reason, message, stalled)
}

/// The status a reconcile wants, from the old one and what it found. Pure.
pub fn desired_status(
    hs: &HeadscaleServer,
    old: &HeadscaleServerStatus,
    outcome: &Outcome,
    now: Timestamp,
) -> HeadscaleServerStatus {
    let generation = hs.metadata.generation;
    let old = own_part(Some(old));
    let mut status = HeadscaleServerStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        mode: Some(hs.mode().to_string()),
        // Keep the last known version while the server is unreachable: it is still
        // the best answer to "what runs there".
        version: old.version.clone(),
        endpoint: old.endpoint.clone(),
        api_key: old.api_key.clone(),
        config_hash: old.config_hash.clone(),
        dns: old.dns.clone(),
        policy: None,
        nodes: None,
    };
    match outcome {
        Outcome::Ready { version, endpoint } => {
            status.version = Some(version.clone());
            status.endpoint = Some(endpoint.clone());
            let msg = format!("Headscale {version} at {endpoint} accepts the API key");
            conditions::set(
                &mut status.conditions,
                conditions::READY,
                true,
                reason::READY,
                msg,
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                STALLED,
                false,
                reason::READY,
                "",
                generation,
                now,
            );
        }
        Outcome::NotReady {
            reason,
            message,
            stalled,
            version,
            endpoint,
            ..
        } => {
            // A version is only "last known" for the same endpoint: after the URL changed,
            // the old server's version would describe something else.
            if version.is_some() || (endpoint.is_some() && *endpoint != status.endpoint) {
                status.version = version.clone();
            }
            if endpoint.is_some() {
                status.endpoint = endpoint.clone();
            }
            conditions::set(
                &mut status.conditions,
                conditions::READY,
                false,
                reason,
                message.clone(),
                generation,
                now,
            );
            let stalled_msg = if *stalled {
                message.clone()
            } else {
                "not stalled: the operator retries by itself".to_string()
            };
            conditions::set(
                &mut status.conditions,
                STALLED,
                *stalled,
                reason,
                stalled_msg,
                generation,
                now,
            );
        }
    }
    status
}

/// The part of a server's status this controller writes: everything but
/// `status.policy`, `status.nodes` and the conditions other controllers own.
pub fn own_part(status: Option<&HeadscaleServerStatus>) -> HeadscaleServerStatus {
    let mut own = status.cloned().unwrap_or_default();
    own.policy = None;
    own.nodes = None;
    own.conditions
        .retain(|c| c.type_ == conditions::READY || c.type_ == STALLED);
    own
}

/// An Event when the Ready condition changes status or reason; nothing on an
/// unchanged requeue. Pure.
pub fn transition_event(old: Option<&Condition>, new: Option<&Condition>) -> Option<Event> {
    let ready = new.is_some_and(|c| c.status == "True");
    let mut event = super::condition_event(old, new, if ready { "Connect" } else { "Check" })?;
    // A managed server passes through these on every rollout: Normal, so alerts on
    // Warning Events fire for faults, not for each config change.
    if new.is_some_and(|c| PROGRESSING.contains(&c.reason.as_str())) {
        event.type_ = kube::runtime::events::EventType::Normal;
    }
    Some(event)
}

/// Ready=False reasons of a rollout in progress (not faults).
const PROGRESSING: [&str; 2] = [
    super::managed::why::POD_NOT_READY,
    super::managed::why::API_KEY_PENDING,
];

async fn publish(ctx: &Context, hs: &HeadscaleServer, event: Event) {
    super::publish(ctx, &hs.object_ref(&()), event).await
}

pub fn error_policy(hs: Arc<HeadscaleServer>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(&hs);
    super::reconcile_failed(
        &ctx,
        CONTROLLER,
        &key,
        Some(hs.object_ref(&())),
        error.reason(),
        error.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HeadscaleServerSpec;
    use crate::api::SecretKeyRef;

    fn server(generation: i64) -> HeadscaleServer {
        let spec: HeadscaleServerSpec = serde_json::from_value(json!({
            "external": {"url": "http://127.0.0.1:8080", "apiKeySecretRef": {"name": "k"}}
        }))
        .unwrap();
        let mut hs = HeadscaleServer::new("hs", spec);
        hs.metadata.namespace = Some("ns".into());
        hs.metadata.generation = Some(generation);
        hs
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn secret_key_defaults_to_api_key() {
        let r: SecretKeyRef = serde_json::from_value(json!({"name": "x"})).unwrap();
        assert_eq!(r.key, "api-key");
    }

    #[test]
    fn status_for_ready_and_back() {
        let hs = server(3);
        let ready = Outcome::Ready {
            version: "v0.29.2".into(),
            endpoint: "http://h".into(),
        };
        let s1 = desired_status(
            &hs,
            &HeadscaleServerStatus::default(),
            &ready,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(s1.observed_generation, Some(3));
        assert_eq!(s1.mode.as_deref(), Some("External"));
        assert_eq!(s1.version.as_deref(), Some("v0.29.2"));
        let r = conditions::find(&s1.conditions, "Ready").unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Ready"));

        // Same outcome later: identical status, so no write.
        let s2 = desired_status(&hs, &s1, &ready, t("2026-01-02T00:00:00Z"));
        assert_eq!(s1, s2);

        // Unreachable: not ready, not stalled, version kept.
        let down = Outcome::not_ready(reason::SERVER_UNREACHABLE, "connection refused", false);
        let s3 = desired_status(&hs, &s2, &down, t("2026-01-03T00:00:00Z"));
        let r = conditions::find(&s3.conditions, "Ready").unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "ServerUnreachable")
        );
        assert_eq!(r.last_transition_time.0, t("2026-01-03T00:00:00Z"));
        assert_eq!(
            conditions::find(&s3.conditions, "Stalled").unwrap().status,
            "False"
        );
        assert_eq!(s3.version.as_deref(), Some("v0.29.2"));
    }

    #[test]
    fn events_only_on_transitions() {
        let hs = server(1);
        let now = t("2026-01-01T00:00:00Z");
        let ready = Outcome::Ready {
            version: "v0.29.2".into(),
            endpoint: "http://h".into(),
        };
        let s1 = desired_status(&hs, &HeadscaleServerStatus::default(), &ready, now);
        let first = transition_event(None, conditions::find(&s1.conditions, "Ready")).unwrap();
        assert_eq!(first.type_, kube::runtime::events::EventType::Normal);
        let s2 = desired_status(&hs, &s1, &ready, now);
        assert!(
            transition_event(
                conditions::find(&s1.conditions, "Ready"),
                conditions::find(&s2.conditions, "Ready")
            )
            .is_none()
        );
        let bad = Outcome::not_ready(reason::API_KEY_REJECTED, "401", true);
        let s3 = desired_status(&hs, &s2, &bad, now);
        let ev = transition_event(
            conditions::find(&s2.conditions, "Ready"),
            conditions::find(&s3.conditions, "Ready"),
        )
        .unwrap();
        assert_eq!(ev.type_, kube::runtime::events::EventType::Warning);
        assert_eq!(ev.reason, "ApiKeyRejected");
        // A rollout's passing states are Normal Events, not Warnings.
        let rolling = Outcome::not_ready(crate::controller::managed::why::POD_NOT_READY, "rolling", false);
        let s4 = desired_status(&hs, &s1, &rolling, now);
        let ev = transition_event(
            conditions::find(&s1.conditions, "Ready"),
            conditions::find(&s4.conditions, "Ready"),
        )
        .unwrap();
        assert_eq!(ev.type_, kube::runtime::events::EventType::Normal);
        assert_eq!(ev.reason, "PodNotReady");
    }

    #[test]
    fn the_policy_controllers_fields_are_neither_compared_nor_written() {
        let hs = server(1);
        let now = t("2026-01-01T00:00:00Z");
        let ready = Outcome::Ready {
            version: "v0.29.2".into(),
            endpoint: "http://h".into(),
        };
        let mut live = desired_status(&hs, &HeadscaleServerStatus::default(), &ready, now);
        // The policy controller's part, written by another field manager.
        live.policy = Some(crate::api::ServerPolicyStatus {
            hash: Some("abc".into()),
            ..Default::default()
        });
        conditions::set(
            &mut live.conditions,
            conditions::POLICY_APPLIED,
            true,
            "Applied",
            "",
            Some(1),
            now,
        );
        let next = desired_status(&hs, &live, &ready, t("2026-01-02T00:00:00Z"));
        assert_eq!(next, own_part(Some(&live)), "an unchanged server needs no write");
        assert_eq!(next.policy, None);
        assert!(conditions::find(&next.conditions, conditions::POLICY_APPLIED).is_none());
        assert!(conditions::find(&next.conditions, conditions::READY).is_some());
    }

    #[test]
    fn dns_configs_learn_what_became_of_them() {
        use dns::build::Report;
        let external = server(1);
        let down = Outcome::not_ready(reason::SERVER_UNREACHABLE, "refused", false);
        assert_eq!(dns_report(&external, None, &down), Some(Report::External));
        let spec: HeadscaleServerSpec = serde_json::from_value(json!({
            "managed": {"version": "0.29.2", "serverUrl": "https://hs.example.com"}
        }))
        .unwrap();
        let managed = HeadscaleServer::new("m", spec);
        let invalid = Outcome::not_ready("InvalidDuration", "ephemeralInactivityTimeout too short", true);
        match dns_report(&managed, None, &invalid) {
            Some(Report::ServerPending { message }) => {
                assert!(message.starts_with("InvalidDuration: "), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let status = dns::build::server_status(&crate::render::DnsInput::safe_default(), None, 2);
        let mut result = managed::DnsResult {
            refused: None,
            status,
            applied: false,
        };
        assert!(matches!(
            dns_report(&managed, Some(&result), &invalid),
            Some(Report::ServerPending { .. })
        ));
        result.applied = true;
        assert_eq!(
            dns_report(&managed, Some(&result), &invalid),
            Some(Report::Applied { record_count: 2 })
        );
        result.refused = Some((vec![], "the safe default DNS".into()));
        assert!(matches!(
            dns_report(&managed, Some(&result), &invalid),
            Some(Report::Refused { .. })
        ));
    }

    #[test]
    fn managed_mode_reports_mode() {
        let spec: HeadscaleServerSpec = serde_json::from_value(json!({
            "managed": {"version": "0.29.2", "serverUrl": "https://hs.example.com"}
        }))
        .unwrap();
        let hs = HeadscaleServer::new("m", spec);
        assert_eq!(hs.mode(), "Managed");
    }

    #[test]
    fn a_new_endpoint_does_not_inherit_the_old_version() {
        let hs = server(1);
        let now = t("2026-01-01T00:00:00Z");
        let ready = Outcome::Ready {
            version: "v0.29.2".into(),
            endpoint: "http://a".into(),
        };
        let s1 = desired_status(&hs, &HeadscaleServerStatus::default(), &ready, now);
        // Same endpoint, unreachable: the last known version stays.
        let down = Outcome::not_ready(reason::SERVER_UNREACHABLE, "refused", false).with_endpoint("http://a");
        assert_eq!(
            desired_status(&hs, &s1, &down, now).version.as_deref(),
            Some("v0.29.2")
        );
        // Another endpoint that never answered: no version.
        let elsewhere =
            Outcome::not_ready(reason::SERVER_UNREACHABLE, "refused", false).with_endpoint("http://b");
        let s2 = desired_status(&hs, &s1, &elsewhere, now);
        assert_eq!(s2.version, None);
        assert_eq!(s2.endpoint.as_deref(), Some("http://b"));
    }

    #[test]
    fn the_ready_and_node_metrics_forget_deleted_servers() {
        let metrics = Metrics::default();
        let mut a = server(1);
        a.metadata.name = Some("a".into());
        let mut b = server(1);
        b.metadata.name = Some("b".into());
        b.status = Some(HeadscaleServerStatus {
            nodes: Some(crate::api::server::NodeInventory {
                total: 7,
                ..Default::default()
            }),
            ..Default::default()
        });
        refresh_ready_metric(&metrics, &[Arc::new(a.clone()), Arc::new(b)]);
        let text = metrics.encode();
        assert!(
            text.contains(r#"headscale_operator_nodes{namespace="ns",name="b",state="total"} 7"#),
            "{text}"
        );
        refresh_ready_metric(&metrics, &[Arc::new(a)]);
        let text = metrics.encode();
        assert!(
            text.contains("name=\"a\"") && !text.contains("name=\"b\""),
            "{text}"
        );
    }
}
