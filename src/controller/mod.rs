//! The controllers. One binary runs them all on one client; each reconcile follows
//! dereference -> validate -> build (pure) -> apply -> status.

pub mod backoff;
pub mod connect;
pub mod nodes;
pub mod policy;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            watch_namespace: None,
            resync: Duration::from_secs(60),
            max_backoff: Duration::from_secs(300),
            policy_debounce: Duration::from_millis(250),
        }
    }
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
        nodes::run(ctx)
    );
}
