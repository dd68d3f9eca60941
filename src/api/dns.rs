//! `DnsConfig`: the tailnet's DNS for one server.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, ServerRef};

/// DNS served to the nodes of one HeadscaleServer. At most one per server.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "DnsConfig",
    doc = "The tailnet DNS of one Headscale server: MagicDNS, resolvers, split DNS, search domains and extra records.",
    namespaced,
    status = "CommonStatus",
    shortname = "hsdns",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"MagicDNS","type":"boolean","jsonPath":".spec.magicDns"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!self.magicDns || (has(self.baseDomain) && self.baseDomain != '')").message("magicDns (on by default) needs spec.baseDomain: set baseDomain, or set magicDns: false"))]
#[x_kube(validation = Rule::new("!self.overrideLocalDns || size(self.nameservers.global) > 0").message("overrideLocalDns (on by default, so DNS queries do not leak) needs at least one spec.nameservers.global entry: add one, or set overrideLocalDns: false"))]
#[serde(rename_all = "camelCase")]
pub struct DnsConfigSpec {
    /// The HeadscaleServer this DNS configuration is for.
    pub server_ref: ServerRef,
    /// Give every node a name under `baseDomain`.
    #[serde(default = "default_true")]
    pub magic_dns: bool,
    /// Domain for MagicDNS names, e.g. `tailnet.example.com`; must not contain the
    /// server URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_domain: Option<String>,
    /// Make clients use these resolvers instead of their local ones, so queries do
    /// not leak to whatever network the device is on.
    #[serde(default = "default_true")]
    pub override_local_dns: bool,
    /// Resolvers.
    #[serde(default)]
    pub nameservers: Nameservers,
    /// Search domains pushed to clients.
    #[serde(default)]
    pub search_domains: Vec<String>,
    /// Extra A/AAAA records served over MagicDNS; changed without a restart.
    #[serde(default)]
    pub extra_records: Vec<ExtraRecord>,
}

fn default_true() -> bool {
    true
}

/// Global and split resolvers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nameservers {
    /// Resolver IP addresses or DoH URLs for all queries.
    #[serde(default)]
    pub global: Vec<String>,
    /// Per-domain resolvers: domain to resolver addresses.
    #[serde(default)]
    pub split: BTreeMap<String, Vec<String>>,
}

/// One extra DNS record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraRecord {
    /// Fully qualified name, e.g. `grafana.tailnet.example.com`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `A` or `AAAA`.
    #[serde(rename = "type")]
    pub type_: RecordType,
    /// The address.
    #[schemars(length(min = 1))]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecordType {
    A,
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
}
