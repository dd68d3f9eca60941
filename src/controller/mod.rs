//! The controllers. One binary runs them all on one client; each reconcile follows
//! dereference -> validate -> build (pure) -> apply -> status.

pub mod backoff;
pub mod connect;
pub mod dns;
pub mod managed;
pub mod nodes;
pub mod policy;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::metrics::Metrics;

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace to watch; `None` watches all namespaces.
    pub watch_namespace: Option<String>,
    /// How often a healthy server is checked again (drift, outages).
    pub resync: Duration,
    /// Longest wait between retries of a failing server.
    pub max_backoff: Duration,
    /// How long the policy controller waits for more fragment changes before it
    /// merges (`kubectl apply -f dir/` of several fragments makes one write).
    pub policy_debounce: Duration,
    /// Image of the keyholder sidecar in managed servers' pods (the operator's own).
    pub keyholder_image: String,
    /// Honour the `headscale.operator.dev/endpoint` annotation on managed servers
    /// (an operator outside the cluster cannot resolve Service names). Off in the chart.
    pub allow_endpoint_annotation: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            watch_namespace: None,
            resync: Duration::from_secs(60),
            max_backoff: Duration::from_secs(300),
            policy_debounce: Duration::from_millis(250),
            keyholder_image: default_keyholder_image(),
            allow_endpoint_annotation: false,
        }
    }
}

/// The operator's image at this version, for the keyholder sidecar.
pub fn default_keyholder_image() -> String {
    format!(
        "ghcr.io/headscale-operator/headscale-operator:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Consecutive transient failures per object (namespace/name), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Arc<Self> {
        let reporter = Reporter {
            controller: "headscale-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Records one more transient failure of `key` and returns the new count.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn clear_failures(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// Runs every controller until a shutdown signal.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let ctx = Context::new(client, metrics, settings);
    futures::join!(
        server::run(ctx.clone(), ready),
        policy::run(ctx.clone()),
        dns::run(ctx.clone()),
        nodes::run(ctx)
    );
}

/// A message cut to `max` bytes on a character boundary (Event notes are limited).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Publishes an Event; a failure to publish is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    event: kube::runtime::events::Event,
) {
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(object = ?reference.name, error = %e, "failed to publish event");
    }
}

/// What every controller's error policy does: log, count by reason, a Warning Event on
/// `reference` (when given), and a per-object exponential backoff keyed by `key`.
pub fn reconcile_failed(
    ctx: &Arc<Context>,
    controller: &str,
    key: &str,
    reference: Option<k8s_openapi::api::core::v1::ObjectReference>,
    reason: &'static str,
    message: String,
) -> kube::runtime::controller::Action {
    tracing::warn!(%controller, object = %key, %reason, error = %message, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            controller: controller.to_string(),
            reason: reason.to_string(),
        })
        .inc();
    let n = ctx.record_failure(key);
    if let Some(reference) = reference {
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: reason.into(),
            note: Some(truncate(&message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move { publish(&ctx, &reference, event).await });
    }
    kube::runtime::controller::Action::requeue(backoff::delay(
        n,
        Duration::from_secs(2),
        ctx.settings.max_backoff,
        backoff::jitter(),
    ))
}

/// An Event when a condition changes status or reason; none on an unchanged requeue.
/// Normal when the condition is True, Warning otherwise; the note is its message.
pub fn condition_event(old: Option<&Condition>, new: Option<&Condition>, action: &str) -> Option<Event> {
    let new = new?;
    if let Some(old) = old
        && old.status == new.status
        && old.reason == new.reason
    {
        return None;
    }
    let ok = new.status == "True";
    Some(Event {
        type_: if ok { EventType::Normal } else { EventType::Warning },
        reason: new.reason.clone(),
        note: Some(truncate(&new.message, 1000)),
        action: action.into(),
        secondary: None,
    })
}

/// A resource that names the HeadscaleServer it belongs to in `spec.serverRef`.
pub trait NamesServer: ResourceExt + Clone {
    fn server_name(&self) -> &str;
    fn set_server_name(&mut self, name: String);
}

impl NamesServer for crate::api::AclPolicy {
    fn server_name(&self) -> &str {
        &self.spec.server_ref.name
    }
    fn set_server_name(&mut self, name: String) {
        self.spec.server_ref.name = name;
    }
}

impl NamesServer for crate::api::DnsConfig {
    fn server_name(&self) -> &str {
        &self.spec.server_ref.name
    }
    fn set_server_name(&mut self, name: String) {
        self.spec.server_ref.name = name;
    }
}

/// Events of objects naming a server that can change what the server gets: a new spec
/// (generation), a new object, or a deletion. Status writes pass nothing. When an
/// object moves to another server, a copy naming the old server is passed too, so both
/// are reconciled again.
pub fn spec_changes<K: NamesServer + Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    // uid -> (generation, deleting, server)
    let mut seen: HashMap<String, (Option<i64>, bool, String)> = HashMap::new();
    events.flat_map(move |event| {
        let out: Vec<Result<K, watcher::Error>> = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let uid = obj.uid().unwrap_or_default();
                let now = (
                    obj.meta().generation,
                    obj.meta().deletion_timestamp.is_some(),
                    obj.server_name().to_string(),
                );
                match seen.insert(uid, now.clone()) {
                    Some(before) if before == now => vec![],
                    Some((_, _, old_server)) if old_server != now.2 => {
                        let mut moved = obj.clone();
                        moved.set_server_name(old_server);
                        vec![Ok(obj), Ok(moved)]
                    }
                    _ => vec![Ok(obj)],
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&obj.uid().unwrap_or_default());
                vec![Ok(obj)]
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => vec![],
            Err(e) => vec![Err(e)],
        };
        stream::iter(out)
    })
}
