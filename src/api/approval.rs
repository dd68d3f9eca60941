//! `NodeApproval`: one node's right to join a server, and the record of that node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ServerRef, conditions_schema};

/// Approves one pending interactive registration, or pre-approves a node with a
/// single-use pre-auth key. Exactly one of `registration` or `preAuthKey`.
///
/// Deleting an approval does not delete or expire its node by itself: the node stays
/// on the server and becomes an unexpected node in the server's audit, which then does
/// what the server's `spec.nodes.unexpected` says (`Report`, the default, keeps it;
/// `Expire` or `Delete` act on it). The Secret of a
/// pre-auth key is owned by the approval and goes with it; an unused key left on the
/// server expires by itself at its expiration (at most the server's
/// `enrollment.maxPreAuthKeyLifetime`). The form, the server and the key's parameters
/// and the hostname are immutable; `approved` may change, but once the node is
/// registered or the key issued the approval is a record (setting `approved: false`
/// then takes nothing back: delete the node, or expire the key, on the server).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "NodeApproval",
    doc = "One node's right to join a Headscale server: an approved interactive registration or a pre-auth key. Deleting it leaves the node to the server's spec.nodes.unexpected (Report by default).",
    namespaced,
    status = "NodeApprovalStatus",
    shortname = "hsna",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.registration) != has(self.preAuthKey)").message("exactly one of spec.registration or spec.preAuthKey must be set"))]
#[x_kube(validation = Rule::new("has(self.registration) == has(oldSelf.registration)").message("an approval keeps its form: spec.registration and spec.preAuthKey cannot be swapped; create a new NodeApproval"))]
#[x_kube(validation = Rule::new("(has(self.hostname) ? self.hostname : '') == (has(oldSelf.hostname) ? oldSelf.hostname : '')").message("spec.hostname is immutable (the approval is the record of that host, and the audit judges nodes by it); create a new NodeApproval for another host"))]
#[serde(rename_all = "camelCase")]
pub struct NodeApprovalSpec {
    /// The HeadscaleServer the node joins. Immutable: the approval is the record of a
    /// node on that server.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.serverRef is immutable; create a new NodeApproval for another server"))]
    pub server_ref: ServerRef,
    /// Approve a pending interactive registration (`tailscale up` without a key). The
    /// operator registers it once; the object then is the record of that node.
    /// Immutable: a new auth id needs a new NodeApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.registration is immutable; create a new NodeApproval for another registration"))]
    pub registration: Option<RegistrationSpec>,
    /// Pre-approve a node: the operator mints a single-use, short-lived pre-auth key
    /// and writes it into a Secret owned by this approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_auth_key: Option<PreAuthKeySpec>,
    /// `false` makes this a request: the operator does nothing (phase `Requested`)
    /// until someone allowed to approve sets it to `true`. With the chart's admission
    /// policy, only members of the approver groups may create or change an approval
    /// with `approved: true`; everyone else may only file requests.
    #[serde(default = "default_true")]
    pub approved: bool,
    /// Expected hostname of the node, checked against the server's
    /// `enrollment.hostnamePatterns` (required when the server sets patterns). When set,
    /// the node that registers must report this hostname (case-insensitive): another one
    /// is reported as `HostnameMismatch` and counted unexpected by the audit. Immutable,
    /// also on a request: a request for another host is another NodeApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
}

/// A pending registration to approve.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSpec {
    /// The auth id the client printed (`hskey-authreq-...` on 0.29+, 24 characters
    /// before). Headscale keeps a pending registration 15 minutes, in memory only: an
    /// unknown, expired, used or restart-dropped id ends in `AuthIdNotFound`, once.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub auth_id: String,
    /// Register the node as this Headscale user (a user name). Headscale registers
    /// interactive nodes only as a user.
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// Then tag the node with these tags (`tag:name`), which makes it a tagged node for
    /// good. Each tag must be owned in the policy's `tagOwners`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 128), regex(pattern = r"^tag:[A-Za-z0-9][-_.A-Za-z0-9]*$"))
    )]
    pub tags: Vec<String>,
}

/// A pre-auth key to mint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.user) || (has(self.tags) && size(self.tags) > 0)").message("preAuthKey needs a user or at least one tag"))]
#[x_kube(validation = Rule::new("(has(self.user) ? self.user : '') == (has(oldSelf.user) ? oldSelf.user : '') && (has(self.tags) ? self.tags : []) == (has(oldSelf.tags) ? oldSelf.tags : []) && (has(self.ephemeral) && self.ephemeral) == (has(oldSelf.ephemeral) && oldSelf.ephemeral) && (has(self.reusable) && self.reusable) == (has(oldSelf.reusable) && oldSelf.reusable) && (has(self.expiration) ? self.expiration : '') == (has(oldSelf.expiration) ? oldSelf.expiration : '')").message("the key's user, tags, ephemeral, reusable and expiration are immutable (a minted key cannot change); create a new NodeApproval"))]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKeySpec {
    /// Owner of the node (a Headscale user name). Without it the key is tag-only
    /// (Headscale 0.28+). Immutable, like every parameter of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub user: Option<String>,
    /// Tags for the node (`tag:name`); a tagged key makes a tagged node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 128), regex(pattern = r"^tag:[A-Za-z0-9][-_.A-Za-z0-9]*$"))
    )]
    pub tags: Vec<String>,
    /// The node is removed by Headscale when it goes offline.
    #[serde(default)]
    pub ephemeral: bool,
    /// The key may enrol more than one node (refused unless the server's
    /// `enrollment.allowReusableKeys` is true).
    #[serde(default)]
    pub reusable: bool,
    /// Key lifetime, e.g. `1h`; at most the server's `enrollment.maxPreAuthKeyLifetime`.
    #[serde(default = "default_key_expiration")]
    #[schemars(regex(pattern = r"^([0-9]{1,7}(ms|s|m|h|d|w))+$"), length(max = 64))]
    pub expiration: String,
    /// Name of the Secret (key `authkey`) the key is written to; defaults to the
    /// approval's name. The operator refuses to write into a Secret it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
    /// When the key expires unused: `true` mints a new one (the Secret is updated),
    /// `false` (default) ends in `KeyExpired`. Either way the old key is expired on
    /// the server.
    #[serde(default)]
    pub renew: bool,
}

fn default_true() -> bool {
    true
}

fn default_key_expiration() -> String {
    "1h".to_string()
}

/// The Secret key a pre-auth key is written under.
pub const AUTH_KEY_SECRET_KEY: &str = "authkey";

/// Observed state of a NodeApproval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeApprovalStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `Requested` (`spec.approved` is false), `Pending` (waiting for the server), `KeyIssued` (key in its Secret, not used
    /// yet), `Approved` (the node is registered), `Refused` (an enrollment rule
    /// forbids it; nothing was done on the server) or `Failed` (terminal: unknown auth
    /// id, expired key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The enrollment rule that refused the approval (`allowedUsers`, `allowedTags`,
    /// `hostnamePatterns`, `maxNodesPerUser`, `maxPreAuthKeyLifetime`,
    /// `allowReusableKeys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The node this approval accounts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ApprovedNode>,
    /// The pre-auth key the operator minted (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_auth_key: Option<IssuedKey>,
}

/// A node registered through an approval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovedNode {
    /// Headscale's node id.
    pub id: String,
    /// The node's hostname as Headscale lists it.
    pub name: String,
    /// The owning user, absent for a tagged node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When the operator saw it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_time: Option<Time>,
}

/// A pre-auth key minted for an approval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedKey {
    /// Headscale's pre-auth key id.
    pub id: String,
    /// When the key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// The Secret holding the key (key `authkey`).
    pub secret_name: String,
    /// A node registered with the key.
    #[serde(default)]
    pub used: bool,
}
