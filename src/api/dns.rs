//! `DnsConfig`: the tailnet's DNS for one server.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ServerRef, conditions_schema};

/// DNS served to the nodes of one HeadscaleServer. At most one per server: the oldest
/// (by creation time, then name) is used, any other is refused with a reason naming it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "DnsConfig",
    doc = "The tailnet DNS of one Headscale server: MagicDNS, resolvers, split DNS, search domains and extra records.",
    namespaced,
    status = "DnsConfigStatus",
    shortname = "hsdns",
    category = "headscale",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"MagicDNS","type":"boolean","jsonPath":".spec.magicDns"}"#,
    printcolumn = r#"{"name":"LeakProtection","type":"boolean","jsonPath":".status.leakProtection","description":"in force, with overrideLocalDns and global resolvers: clients do not fall back to the local network's DNS"}"#,
    printcolumn = r#"{"name":"Records","type":"integer","priority":1,"jsonPath":".status.extraRecords"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!self.magicDns || (has(self.baseDomain) && self.baseDomain != '')").message("magicDns (on by default) needs spec.baseDomain: set baseDomain, or set magicDns: false"))]
#[x_kube(validation = Rule::new("!self.overrideLocalDns || size(self.nameservers.global) > 0").message("overrideLocalDns (on by default, so DNS queries do not leak) needs at least one spec.nameservers.global entry: add one, or set overrideLocalDns: false"))]
#[serde(rename_all = "camelCase")]
pub struct DnsConfigSpec {
    /// The HeadscaleServer this DNS configuration is for (a managed one: Headscale has
    /// no API for DNS, so an external server's DNS stays in its own config file).
    pub server_ref: ServerRef,
    /// Give every node a name under `baseDomain`. Defaults to true (then `baseDomain`
    /// is required).
    #[serde(default = "default_true")]
    pub magic_dns: bool,
    /// Domain for MagicDNS names, e.g. `tailnet.example.com` (lowercase, no trailing
    /// dot); must not be the server URL's host or a parent domain of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub base_domain: Option<String>,
    /// Make clients use these resolvers instead of their local ones, so queries do
    /// not leak to whatever network the device is on. Defaults to true (then at least
    /// one `nameservers.global` entry is required).
    #[serde(default = "default_true")]
    pub override_local_dns: bool,
    /// Resolvers.
    #[serde(default)]
    pub nameservers: Nameservers,
    /// Search domains pushed to clients.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub search_domains: Vec<String>,
    /// Extra A/AAAA records served over MagicDNS. Delivered through Headscale's watched
    /// records file: a change reaches clients without a restart.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub extra_records: Vec<ExtraRecord>,
}

fn default_true() -> bool {
    true
}

/// Global and split resolvers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nameservers {
    /// Resolver IP addresses or DoH URLs (`https://...`) for all queries.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 2048)))]
    pub global: Vec<String>,
    /// Split DNS: domain to resolver addresses (or DoH URLs) for names under it (at most
    /// 256 domains with 16 resolvers each: the rendered config must fit a ConfigMap).
    #[serde(default)]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 2048}}))]
    pub split: BTreeMap<String, Vec<String>>,
}

/// One extra DNS record.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("isIP(self.value) && ip(self.value).family() == (self.type == 'A' ? 4 : 6)").message("an A record's value must be an IPv4 address and an AAAA record's an IPv6 address"))]
#[serde(rename_all = "camelCase")]
pub struct ExtraRecord {
    /// Fully qualified name, e.g. `grafana.tailnet.example.com` (lowercase, no
    /// trailing dot, no wildcard).
    #[x_kube(validation = Rule::new("!self.matches('[*]')").message("extra record names cannot be wildcards: Headscale and Tailscale clients match names exactly"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `A` or `AAAA`.
    #[serde(rename = "type")]
    pub type_: RecordType,
    /// The address: IPv4 for `A`, IPv6 for `AAAA`.
    #[schemars(length(min = 1, max = 64))]
    pub value: String,
}

/// DNS record type: `A` (IPv4) or `AAAA` (IPv6), the only ones Headscale serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecordType {
    A,
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::AAAA => "AAAA",
        }
    }
}

/// Observed state of a DnsConfig.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfigStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Whether this configuration keeps clients' DNS queries on the tailnet's
    /// resolvers: it is in force and applied, with `overrideLocalDns` on and at least
    /// one global nameserver. False for one that conflicts, is refused or is not
    /// applied, whatever its spec says. Off means nodes may keep asking whatever
    /// resolver their local network hands out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_protection: Option<bool>,
    /// Number of extra records in the server's records file from this configuration
    /// (set while it is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_records: Option<i64>,
}
