//! `AclPolicy`: one fragment of a server's ACL policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalObjectRef, ServerRef, conditions_schema};

/// A HuJSON policy fragment. All fragments naming one server are merged into the
/// policy that server serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "AclPolicy",
    doc = "A fragment of a Headscale server's ACL policy; all fragments for one server are merged, validated and applied.",
    namespaced,
    status = "AclPolicyStatus",
    shortname = "hsacl",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Order","type":"integer","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Merged","type":"string","priority":1,"jsonPath":".status.mergedHash","description":"SHA-256 of the merged policy this fragment is part of"}"#,
    printcolumn = r#"{"name":"Applied","type":"date","priority":1,"jsonPath":".status.lastAppliedTime"}"#,
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

/// Observed state of one fragment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// SHA-256 (hex) of the merged policy this fragment was last merged into. When
    /// `Ready` is true it is the policy the server serves (the server's
    /// `status.policy.hash`); when false it is the rejected candidate, absent when
    /// the fragments could not be merged at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_hash: Option<String>,
    /// When a merged policy holding this fragment was last written to the server
    /// (Headscale's `updatedAt`). Kept while a later version of the fragment is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Time>,
    /// Rules Headscale accepts that cannot do what was meant (a rule without
    /// `action`, an empty `src`, a merged policy that allows everything). They do not
    /// stop the policy from being applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
