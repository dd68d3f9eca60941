//! `AclPolicy`: one fragment of a server's ACL policy.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, LocalObjectRef, ServerRef};

/// A HuJSON policy fragment. All fragments naming one server are merged into the
/// policy that server serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "AclPolicy",
    doc = "A fragment of a Headscale server's ACL policy; all fragments for one server are merged, validated and applied.",
    namespaced,
    status = "CommonStatus",
    shortname = "hsacl",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Order","type":"integer","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.policy) != has(self.configMapRef)").message("exactly one of spec.policy or spec.configMapRef must be set"))]
#[serde(rename_all = "camelCase")]
pub struct AclPolicySpec {
    /// The HeadscaleServer this fragment belongs to.
    pub server_ref: ServerRef,
    /// The fragment as HuJSON text (JSON with comments and trailing commas), with any
    /// top-level policy section Headscale accepts (groups, hosts, tagOwners, acls,
    /// grants, ssh, autoApprovers, nodeAttrs, tests, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub policy: Option<String>,
    /// A ConfigMap key holding the fragment, instead of `policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectRef>,
    /// Merge order: lists from lower orders come first; equal orders sort by name.
    #[serde(default = "default_order")]
    #[schemars(range(min = 0, max = 10000))]
    pub order: i32,
}

fn default_order() -> i32 {
    100
}
