//! `NodeApproval`: one node's right to join a server.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, ServerRef};

/// Approves one pending interactive registration, or pre-approves a node with a
/// single-use pre-auth key. Exactly one of `registration` or `preAuthKey`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "NodeApproval",
    doc = "One node's right to join a Headscale server: an approved interactive registration or a pre-auth key.",
    namespaced,
    status = "CommonStatus",
    shortname = "hsna",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.registration) != has(self.preAuthKey)").message("exactly one of spec.registration or spec.preAuthKey must be set"))]
#[serde(rename_all = "camelCase")]
pub struct NodeApprovalSpec {
    /// The HeadscaleServer the node joins.
    pub server_ref: ServerRef,
    /// Approve a pending interactive registration (`tailscale up` without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationSpec>,
    /// Pre-approve a node: the operator mints a single-use pre-auth key into a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_auth_key: Option<PreAuthKeySpec>,
    /// Expected hostname of the node, checked against the server's hostname patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// A pending registration to approve.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.user) != (size(self.tags) > 0)").message("set exactly one of registration.user or registration.tags"))]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSpec {
    /// The auth id the client printed (`hskey-authreq-...` on 0.29+).
    #[schemars(length(min = 1, max = 128))]
    pub auth_id: String,
    /// Register the node as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Register the node as tagged with these tags (`tag:name`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A pre-auth key to mint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.user) || size(self.tags) > 0").message("preAuthKey needs a user or at least one tag"))]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKeySpec {
    /// Owner of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tags for the node (`tag:name`); a tagged key makes a tagged node.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The node is removed when it goes offline.
    #[serde(default)]
    pub ephemeral: bool,
    /// The key may enrol more than one node (refused unless the server allows it).
    #[serde(default)]
    pub reusable: bool,
    /// Key lifetime, e.g. `1h`.
    #[serde(default = "default_key_expiration")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub expiration: String,
    /// Name of the Secret to write the key to; defaults to the approval's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

fn default_key_expiration() -> String {
    "1h".to_string()
}
