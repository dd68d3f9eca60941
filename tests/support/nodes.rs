//! The nodes controller's test setup, shared by the fake-node tests (`e2e_nodes.rs`) and the
//! real-client tests (`e2e_real_nodes.rs`): a namespace with a Ready external
//! `HeadscaleServer` named `corp` for a real Headscale, and helpers to approve nodes and
//! wait for what the operator reports.

use std::time::Duration;

use headscale_operator::api::{HeadscaleServer, NodeApproval};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::*;

pub const WAIT: Duration = Duration::from_secs(60);

/// A namespace with a Ready external server (enrollment rules `enrollment`) for a fresh
/// Headscale of `version` that has a user `alice`.
pub struct Setup {
    pub client: Client,
    pub ns: String,
    pub hs: Headscale,
}

impl Setup {
    pub async fn new(prefix: &str, version: &str, enrollment: Value) -> Setup {
        Setup::with(prefix, start_headscale(version), enrollment).await
    }

    /// As [`Setup::new`], for a Headscale already started (e.g. on a test network).
    pub async fn with(prefix: &str, hs: Headscale, enrollment: Value) -> Setup {
        let client = admin_client().await;
        let ns = namespace(&client, prefix).await;
        hs.create_user_with_cli("alice");
        create_key_secret(&client, &ns, "key", &hs.api_key).await;
        let server: HeadscaleServer = serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "HeadscaleServer",
            "metadata": {"name": "corp"},
            "spec": {
                "external": {"url": hs.url, "apiKeySecretRef": {"name": "key"}},
                "enrollment": enrollment,
            },
        }))
        .unwrap();
        Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &server)
            .await
            .unwrap();
        let setup = Setup { client, ns, hs };
        let api = Api::<HeadscaleServer>::namespaced(setup.client.clone(), &setup.ns);
        wait_for("server Ready", WAIT, || {
            let api = api.clone();
            async move {
                let hs = api.get("corp").await.map_err(|e| e.to_string())?;
                let ready = hs
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True");
                if ready {
                    Ok(())
                } else {
                    Err(format!("{:?}", hs.status))
                }
            }
        })
        .await;
        setup
    }

    pub fn approvals(&self) -> Api<NodeApproval> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn approve(&self, name: &str, spec: Value) {
        let mut spec = spec;
        spec["serverRef"] = json!({"name": "corp"});
        let obj: NodeApproval = serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "NodeApproval",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.approvals()
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating NodeApproval {name}: {e}"));
    }

    /// The approval once its phase and Ready reason are `phase` and `reason`.
    pub async fn wait_phase(&self, name: &str, phase: &str, reason: &str) -> NodeApproval {
        let api = self.approvals();
        wait_for(
            &format!(
                "{}/{name} phase {phase} reason {reason} on {}",
                self.ns, self.hs.version
            ),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let na = api.get(name).await.map_err(|e| e.to_string())?;
                    let status = na.status.clone().unwrap_or_default();
                    let r = status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.reason.clone());
                    if status.phase.as_deref() == Some(phase) && r.as_deref() == Some(reason) {
                        Ok(na)
                    } else {
                        Err(format!("{status:?}"))
                    }
                }
            },
        )
        .await
    }

    pub async fn wait_event(&self, object: &str, type_: &str, reason: &str) -> String {
        wait_for(&format!("{type_} Event {reason} on {object}"), WAIT, || async {
            let evs = events(&self.client, &self.ns).await;
            match evs.iter().find(|e| {
                e.involved_object.name.as_deref() == Some(object)
                    && e.type_.as_deref() == Some(type_)
                    && e.reason.as_deref() == Some(reason)
            }) {
                Some(e) => Ok(e.message.clone().unwrap_or_default()),
                None => Err(format!(
                    "{:?}",
                    evs.iter()
                        .map(|e| (e.reason.clone(), e.message.clone()))
                        .collect::<Vec<_>>()
                )),
            }
        })
        .await
    }

    pub fn minor(&self) -> u64 {
        headscale_operator::headscale::Version::parse(&self.hs.version)
            .unwrap()
            .minor
    }

    pub async fn secret_key(&self, name: &str) -> (String, Secret) {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get(name)
            .await
            .unwrap();
        let key = secret
            .data
            .as_ref()
            .and_then(|d| d.get("authkey"))
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
            .expect("the Secret has an authkey");
        (key, secret)
    }
}

pub fn start_headscale(version: &str) -> Headscale {
    start_retrying(version, || Headscale::start(version))
}

impl Setup {
    pub async fn set_nodes_spec(&self, nodes: Value) {
        Api::<HeadscaleServer>::namespaced(self.client.clone(), &self.ns)
            .patch(
                "corp",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"nodes": nodes}})),
            )
            .await
            .unwrap();
    }

    /// `status.nodes` once `check` accepts it.
    pub async fn wait_inventory<F>(
        &self,
        what: &str,
        check: F,
    ) -> headscale_operator::api::server::NodeInventory
    where
        F: Fn(&headscale_operator::api::server::NodeInventory) -> bool,
    {
        let api = Api::<HeadscaleServer>::namespaced(self.client.clone(), &self.ns);
        let check = &check;
        wait_for(&format!("{what} on {}", self.hs.version), WAIT, || {
            let api = api.clone();
            async move {
                let hs = api.get("corp").await.map_err(|e| e.to_string())?;
                match hs.status.and_then(|s| s.nodes) {
                    Some(inv) if check(&inv) => Ok(inv),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// Waits until the server's `Ready` condition is `want` (`"True"`/`"False"`).
    pub async fn wait_server_ready(&self, want: &str) {
        let api = Api::<HeadscaleServer>::namespaced(self.client.clone(), &self.ns);
        wait_for(&format!("{}: server Ready={want}", self.hs.version), WAIT, || {
            let api = api.clone();
            async move {
                let hs = api.get("corp").await.map_err(|e| e.to_string())?;
                let c = hs
                    .status
                    .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
                match c {
                    Some(c) if c.status == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    pub async fn count_events(&self, reason: &str) -> usize {
        events(&self.client, &self.ns)
            .await
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    }
}

pub fn status(na: &NodeApproval) -> headscale_operator::api::NodeApprovalStatus {
    na.status.clone().unwrap_or_default()
}
