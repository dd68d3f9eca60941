//! Prometheus metrics of the operator itself.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub namespace: String,
    pub name: String,
    /// `operator` (parsing, merging, local checks) or `headscale` (its check or set).
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeadscaleCallLabels {
    /// The client's name for the call, e.g. `get policy`.
    pub op: String,
    /// `ok` or the error's reason.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeCountLabels {
    pub namespace: String,
    pub name: String,
    /// `total`, `online`, `expiring_soon`, `expired`, `stale`, `unexpected`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Namespace of the managed server.
    pub namespace: String,
    /// Kubernetes kind, e.g. `StatefulSet`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeActionLabels {
    pub namespace: String,
    pub name: String,
    /// `expired_unexpected`, `deleted_unexpected`, `pruned`.
    pub action: String,
}

pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// 1 when a HeadscaleServer is Ready, 0 otherwise.
    pub server_ready: Family<ServerLabels, Gauge>,
    /// Policies written to a server (`PUT /api/v1/policy` that succeeded).
    pub policy_writes: Family<ServerLabels, Counter>,
    /// Policies re-applied because someone else changed the served one.
    pub policy_drift_repairs: Family<ServerLabels, Counter>,
    /// Merged policies refused, once per distinct refusal.
    pub policy_rejections: Family<RejectionLabels, Counter>,
    /// Requests to Headscale's API, by call and result.
    pub headscale_requests: Family<HeadscaleCallLabels, Counter>,
    /// The last audit's node counts per server.
    pub nodes: Family<NodeCountLabels, Gauge>,
    /// Nodes the audit expired or deleted.
    pub node_actions: Family<NodeActionLabels, Counter>,
    /// Writes (create or apply) of a managed server's children, by kind.
    pub kube_writes: Family<KindLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let server_ready = Family::<ServerLabels, Gauge>::default();
        let policy_writes = Family::<ServerLabels, Counter>::default();
        let policy_drift_repairs = Family::<ServerLabels, Counter>::default();
        let policy_rejections = Family::<RejectionLabels, Counter>::default();
        let headscale_requests = Family::<HeadscaleCallLabels, Counter>::default();
        let nodes = Family::<NodeCountLabels, Gauge>::default();
        let node_actions = Family::<NodeActionLabels, Counter>::default();
        let kube_writes = Family::<KindLabels, Counter>::default();
        let mut registry = Registry::with_prefix("headscale_operator");
        registry.register("reconciliations", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "server_ready",
            "Whether a HeadscaleServer is Ready (1) or not (0)",
            server_ready.clone(),
        );
        registry.register(
            "policy_writes",
            "ACL policies written to a Headscale server",
            policy_writes.clone(),
        );
        registry.register(
            "policy_drift_repairs",
            "ACL policies re-applied because the served policy was changed outside the operator",
            policy_drift_repairs.clone(),
        );
        registry.register(
            "policy_rejections",
            "Merged ACL policies refused by the operator's checks or by Headscale, once per distinct refusal",
            policy_rejections.clone(),
        );
        registry.register(
            "headscale_requests",
            "Requests to Headscale's API by call and result",
            headscale_requests.clone(),
        );
        registry.register(
            "nodes",
            "Nodes of a HeadscaleServer at its last audit, by state",
            nodes.clone(),
        );
        registry.register(
            "node_actions",
            "Nodes the audit expired or deleted, by action",
            node_actions.clone(),
        );
        registry.register(
            "kube_writes",
            "Objects of managed servers the operator created or applied, by kind (an idle resync writes none)",
            kube_writes.clone(),
        );
        Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            server_ready,
            policy_writes,
            policy_drift_repairs,
            policy_rejections,
            headscale_requests,
            nodes,
            node_actions,
            kube_writes,
            registry,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn server(namespace: &str, name: &str) -> ServerLabels {
        ServerLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn controller(name: &str) -> ControllerLabels {
        ControllerLabels {
            controller: name.to_string(),
        }
    }
}
