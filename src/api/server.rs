//! `HeadscaleServer`: one Headscale control server, run by the operator (`managed`)
//! or governed through its API (`external`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, SecretKeySelector, conditions_schema};

/// Go-style duration with the day and week units Headscale accepts, e.g. `90d`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$";

/// Desired state of a Headscale server. Set exactly one of `managed` or `external`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "headscale.operator.dev",
    version = "v1alpha1",
    kind = "HeadscaleServer",
    doc = "A Headscale control server, run by the operator (managed) or governed through its API (external).",
    namespaced,
    status = "HeadscaleServerStatus",
    shortname = "hss",
    category = "headscale",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode","description":"Managed or External"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version","description":"Headscale version the server reports"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","priority":1,"jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"PolicyApplied\")].reason","description":"Whether the merged AclPolicy is what Headscale serves"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("oldSelf.hasValue() || !has(self.spec.managed) || !has(self.metadata.name) || size(self.metadata.name) <= 52").message("a managed server's name must be at most 52 characters (its StatefulSet's pods need the rest)").optional_old_self(true),
    validation = Rule::new("oldSelf.hasValue() || !has(self.spec.managed) || !has(self.metadata.name) || (!self.metadata.name.contains('.') && !self.metadata.name.matches('^[0-9]'))").message("a managed server's name becomes its Service's name, so it must be a DNS label: lowercase letters, digits and '-', starting with a letter and not ending with '-'").optional_old_self(true)
)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("exactly one of spec.managed or spec.external must be set"))]
#[x_kube(validation = Rule::new("has(self.managed) == has(oldSelf.managed)").message("a server cannot switch between managed and external mode (the old server's workload or state would be left behind); create a new HeadscaleServer"))]
#[serde(rename_all = "camelCase")]
pub struct HeadscaleServerSpec {
    /// Run Headscale in this cluster: the operator owns its StatefulSet, Service,
    /// configuration, keys and upgrades. Mutually exclusive with `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedSpec>,

    /// Govern a Headscale that runs elsewhere through its REST API (policy, nodes,
    /// keys). The operator deploys nothing and does not upgrade it. Mutually exclusive
    /// with `managed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSpec>,

    /// Node inventory and audit: what counts as expiring soon, what to do with nodes
    /// nobody approved, and stale-node pruning (enforced by the nodes controller).
    #[serde(default)]
    pub nodes: NodesSpec,

    /// Who may enrol which node: the rules every NodeApproval is checked against
    /// before the operator registers a node or mints a key (enforced by the nodes
    /// controller).
    #[serde(default)]
    pub enrollment: EnrollmentSpec,

    /// What the server serves when no AclPolicy names it.
    #[serde(default)]
    pub policy: PolicyDefaultsSpec,
}

/// A Headscale server that runs outside the operator's control.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSpec {
    /// Base URL of the server, e.g. `https://headscale.example.com` (the `server_url`
    /// Headscale is configured with). The REST API is reached under `/api/v1`.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("external.url must be an absolute http:// or https:// URL, e.g. https://headscale.example.com"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("external.url must not carry credentials (user:password@); the API key comes from apiKeySecretRef"))]
    #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#')").message("external.url must not have a query (?...) or a fragment (#...)"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://(\\\\[[^\\\\]]*\\\\]|[^/:?#\\\\[]*)(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#].*)?$')").message("external.url has a port outside 1-65535"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// Secret key holding an admin API key for that server (created with
    /// `headscale apikeys create`). The key is read at every reconcile and never
    /// copied anywhere else.
    pub api_key_secret_ref: SecretKeyRef,
}

/// A Headscale server run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSpec {
    /// Headscale release to run, e.g. `0.29.2`. Managed mode runs 0.28.x and 0.29.x
    /// (the configuration is rendered for the exact minor); 0.27 can still be governed
    /// in external mode.
    #[x_kube(validation = Rule::new("self.matches('^v?0\\\\.(28|29)\\\\.(0|[1-9][0-9]*)$')").message("managed mode runs Headscale 0.28.x or 0.29.x (e.g. 0.29.2); older releases can be governed in external mode"))]
    #[schemars(length(max = 32))]
    pub version: String,

    /// Number of Headscale pods. Always 1: Headscale keeps nodes, sessions and pending
    /// registrations in memory and cannot share its database with a second pod.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self == 1").message("Headscale cannot share its database: replicas must be 1"))]
    pub replicas: i32,

    /// Container image repository, e.g. `docker.io/headscale/headscale` (the default)
    /// or a mirror of it, without a tag or digest: the tag is `version`.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self != ''").message("image must name a repository, e.g. docker.io/headscale/headscale (the tag comes from version)"))]
    #[x_kube(validation = Rule::new("!self.contains('@') && !self.matches(':[^/]*$')").message("image must be a repository without a tag or digest, e.g. docker.io/headscale/headscale: the operator appends version as the tag (a registry port such as registry.local:5000/headscale is fine)"))]
    #[schemars(length(max = 512))]
    pub image: String,

    /// The URL clients use to reach this server (Headscale's `server_url`), e.g.
    /// `https://headscale.example.com`: scheme and host (and port), nothing else.
    /// Headscale serves at the root of its host, and the embedded DERP relay is
    /// announced under this host.
    #[x_kube(validation = Rule::new("(self.startsWith('http://') || self.startsWith('https://')) && isURL(self) && url(self).getHostname() != ''").message("serverUrl must be an absolute http:// or https:// URL, e.g. https://headscale.example.com"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("serverUrl must not carry credentials (user:password@)"))]
    #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#')").message("serverUrl must not have a query (?...) or a fragment (#...)"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*/')").message("serverUrl must not have a path or a trailing slash (write https://headscale.example.com): Headscale serves at the root of its host and builds its paths from this URL (https://headscale.example.com/ gives //machine/... and 404s)"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://(\\\\[[^\\\\]]*\\\\]|[^/:?#\\\\[]*)(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#].*)?$')").message("serverUrl has a port outside 1-65535"))]
    #[x_kube(validation = Rule::new("!self.matches('[^[:ascii:]]') && !self.contains('%')").message("serverUrl's host must be plain ASCII, without %-escapes: write an internationalized name in its punycode (xn--) form, e.g. https://xn--bcher-kva.example for bücher.example"))]
    #[schemars(length(min = 1, max = 2048))]
    pub server_url: String,

    /// Where Headscale keeps its state.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// Tailnet address ranges.
    #[serde(default)]
    pub prefixes: PrefixesSpec,

    /// Relay (DERP) configuration.
    #[serde(default)]
    pub derp: DerpSpec,

    /// OpenID Connect login for nodes. Unset means no OIDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSpec>,

    /// Default key expiry of untagged nodes that do not ask for one at login
    /// (Headscale's `node.expiry` on 0.29; on 0.28, which has no such setting, it
    /// applies to OIDC logins only as `oidc.expiry`). `0` means nodes never expire.
    /// Tagged nodes never expire. The default, 180 days, is Tailscale's.
    #[serde(default = "default_node_expiry")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub node_expiry: String,

    /// How long an ephemeral node may stay disconnected before Headscale deletes it
    /// (`node.ephemeral.inactivity_timeout` on 0.29, `ephemeral_node_inactivity_timeout`
    /// on 0.28). Headscale requires more than 65s.
    #[serde(default = "default_ephemeral_timeout")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub ephemeral_inactivity_timeout: String,

    /// How Headscale logs.
    #[serde(default)]
    pub logging: LoggingSpec,

    /// Upgrade policy.
    #[serde(default)]
    pub upgrades: UpgradesSpec,

    /// The operator's own API key for this server.
    #[serde(default)]
    pub api_key: ApiKeySpec,

    /// Pod-level overrides.
    #[serde(default)]
    pub pod: PodSpecOverrides,

    /// An Ingress `NAME` for the Service's `http` port (control protocol and API; never
    /// the metrics port). Unset: none (and an Ingress the operator made earlier is
    /// deleted). Its host should be `serverUrl`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// The NetworkPolicy `NAME` in front of the Headscale pod: on by default, it lets
    /// anyone reach `http` (8080/TCP) and, with the embedded DERP relay, STUN (3478/UDP),
    /// and the metrics port (9090/TCP, which also serves Headscale's `/debug` pages to
    /// any private address) only from `metricsFrom`. Egress is not restricted.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

fn default_image() -> String {
    "docker.io/headscale/headscale".to_string()
}

fn default_replicas() -> i32 {
    1
}
fn default_node_expiry() -> String {
    "180d".to_string()
}
fn default_ephemeral_timeout() -> String {
    "30m".to_string()
}

/// Database backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'Postgres' || has(self.postgres)").message("database.postgres must be set when database.type is Postgres"))]
#[x_kube(validation = Rule::new("self.type == 'Postgres' || !has(self.postgres)").message("database.postgres is only read when database.type is Postgres: set type: Postgres, or remove postgres"))]
#[x_kube(validation = Rule::new("self.type == oldSelf.type").message("database.type cannot change: Headscale would start on an empty database (its nodes, users and keys stay in the old one); migrate the data and create a new HeadscaleServer"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// `Sqlite` (recommended by Headscale) or `Postgres`.
    #[serde(default, rename = "type")]
    pub type_: DatabaseType,
    /// SQLite volume.
    #[serde(default)]
    pub sqlite: SqliteSpec,
    /// Postgres connection; required when `type` is `Postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            type_: DatabaseType::Sqlite,
            sqlite: SqliteSpec::default(),
            postgres: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DatabaseType {
    #[default]
    Sqlite,
    Postgres,
}

/// Persistent volume for the SQLite database and Headscale's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqliteSpec {
    /// Size of the volume claim. Fixed when the claim is created: a later change has
    /// no effect (resize the claim `data-NAME-0` itself, if its storage class allows).
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub storage_size: String,
    /// Storage class of the volume claim; unset uses the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the volume (and with it every node, user and key of the server) when the
    /// HeadscaleServer is deleted. Off by default: the claim `data-NAME-0` is kept, and
    /// a server created again with the same name finds its state.
    #[serde(default)]
    pub delete_on_server_deletion: bool,
}

impl Default for SqliteSpec {
    fn default() -> Self {
        Self {
            storage_size: default_storage_size(),
            storage_class_name: None,
            delete_on_server_deletion: false,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

/// Postgres connection details; the password comes from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Host name or address of the Postgres server.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[^\s'\\=]+$"))]
    pub host: String,
    /// Port of the Postgres server.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database name (no spaces, quotes or backslashes: Headscale passes it unquoted).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[^\s'\\=]+$"))]
    pub database: String,
    /// User name (no spaces, quotes or backslashes: Headscale passes it unquoted).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[^\s'\\=]+$"))]
    pub user: String,
    /// Secret key with the user's password. It reaches Headscale only as the
    /// environment variable `HEADSCALE_DATABASE_POSTGRES_PASS`, never in the
    /// configuration. Headscale passes it to the driver unquoted, so it must not
    /// contain spaces, quotes or backslashes.
    pub password_secret_ref: SecretKeySelector,
    /// libpq sslmode: `disable`, `require`, `verify-ca` or `verify-full`.
    #[serde(default = "default_ssl_mode")]
    #[schemars(regex(pattern = r"^(disable|require|verify-ca|verify-full)$"))]
    pub ssl_mode: String,
}

fn default_pg_port() -> i32 {
    5432
}
fn default_ssl_mode() -> String {
    "require".to_string()
}

/// Tailnet IP ranges. Tailscale clients only work inside 100.64.0.0/10 and
/// fd7a:115c:a1e0::/48, so each range must lie inside those; set one to `""` to run
/// single-stack (at least one is required).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.v4 != '' || self.v6 != ''").message("prefixes: at least one of v4 or v6 must be set"))]
#[serde(rename_all = "camelCase")]
pub struct PrefixesSpec {
    /// IPv4 range inside 100.64.0.0/10, e.g. `100.64.0.0/10` (default) or
    /// `100.64.0.0/24`; `""` for no IPv4 addresses.
    #[serde(default = "default_v4")]
    #[x_kube(validation = Rule::new("self == '' || (isCIDR(self) && cidr(self) == cidr(self).masked() && cidr('100.64.0.0/10').containsCIDR(self))").message("prefixes.v4 must be a network inside 100.64.0.0/10 written without host bits (e.g. 100.64.0.0/10 or 100.64.0.0/24): Tailscale clients do not work with other ranges"))]
    #[x_kube(validation = Rule::new("self == '' || !isCIDR(self) || cidr(self).prefixLength() <= 30").message("prefixes.v4 must be a /30 or larger network (e.g. 100.64.0.0/24): Headscale gives no node the network or broadcast address, so a /31 or /32 leaves none to give"))]
    #[schemars(length(max = 64))]
    pub v4: String,
    /// IPv6 range inside fd7a:115c:a1e0::/48, e.g. `fd7a:115c:a1e0::/48` (default);
    /// `""` for no IPv6 addresses.
    #[serde(default = "default_v6")]
    #[x_kube(validation = Rule::new("self == '' || (isCIDR(self) && cidr(self) == cidr(self).masked() && cidr('fd7a:115c:a1e0::/48').containsCIDR(self))").message("prefixes.v6 must be a network inside fd7a:115c:a1e0::/48 written without host bits (e.g. fd7a:115c:a1e0::/48): Tailscale clients do not work with other ranges"))]
    #[x_kube(validation = Rule::new("self == '' || !isCIDR(self) || cidr(self).prefixLength() <= 126").message("prefixes.v6 must be a /126 or larger network (e.g. fd7a:115c:a1e0::/48): Headscale gives no node the first or last address, so a /127 or /128 leaves none to give"))]
    #[schemars(length(max = 64))]
    pub v6: String,
    /// `Sequential` or `Random` address allocation.
    #[serde(default)]
    pub allocation: Allocation,
}

impl Default for PrefixesSpec {
    fn default() -> Self {
        Self {
            v4: default_v4(),
            v6: default_v6(),
            allocation: Allocation::Sequential,
        }
    }
}

fn default_v4() -> String {
    "100.64.0.0/10".to_string()
}
fn default_v6() -> String {
    "fd7a:115c:a1e0::/48".to_string()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Allocation {
    #[default]
    Sequential,
    Random,
}

/// Relays (DERP). Clients need at least one region. By default Headscale runs its own
/// relay (embedded DERP server, with STUN on UDP 3478) and nothing is fetched from the
/// internet; a DERP map is fetched only from the `urls` listed here, at every start
/// (a URL that cannot be fetched stops Headscale from starting).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.embedded || size(self.urls) > 0").message("derp needs at least one relay: keep derp.embedded: true (the default), or list a DERP map in derp.urls"))]
#[serde(rename_all = "camelCase")]
pub struct DerpSpec {
    /// Run Headscale's embedded DERP relay and announce it as a region of its own
    /// under the server URL's host (clients need UDP 3478 for STUN).
    #[serde(default = "default_true")]
    pub embedded: bool,
    /// The embedded relay's region as clients see it.
    #[serde(default)]
    pub region: DerpRegionSpec,
    /// Public IPv4 address of the embedded relay, announced to clients so they can
    /// skip DNS; unset announces only the server URL's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("derp.ipv4 must be an IPv4 address"))]
    #[schemars(length(max = 64))]
    pub ipv4: Option<String>,
    /// Public IPv6 address of the embedded relay; unset announces none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6").message("derp.ipv6 must be an IPv6 address"))]
    #[schemars(length(max = 64))]
    pub ipv6: Option<String>,
    /// DERP map URLs to fetch at start, e.g.
    /// `https://controlplane.tailscale.com/derpmap/default` (Tailscale's public relays).
    /// Empty by default: nothing is fetched from the internet.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(u, isURL(u) && url(u).getScheme() in ['http', 'https'] && url(u).getHostname() != '')").message("every derp.urls entry must be an absolute http:// or https:// URL"))]
    #[schemars(length(max = 8), inner(length(max = 2048)))]
    pub urls: Vec<String>,
}

impl Default for DerpSpec {
    fn default() -> Self {
        Self {
            embedded: true,
            region: DerpRegionSpec::default(),
            ipv4: None,
            ipv6: None,
            urls: Vec::new(),
        }
    }
}

/// The region of the embedded DERP relay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DerpRegionSpec {
    /// Region id; 900-999 are free for custom regions (Tailscale's own use lower ids).
    #[serde(default = "default_region_id")]
    #[schemars(range(min = 1, max = 65535))]
    pub id: i32,
    /// Short region code shown by `tailscale netcheck`.
    #[serde(default = "default_region_code")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9-]+$"))]
    pub code: String,
    /// Human-readable region name.
    #[serde(default = "default_region_name")]
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
}

impl Default for DerpRegionSpec {
    fn default() -> Self {
        Self {
            id: default_region_id(),
            code: default_region_code(),
            name: default_region_name(),
        }
    }
}

fn default_region_id() -> i32 {
    999
}
fn default_region_code() -> String {
    "headscale".to_string()
}
fn default_region_name() -> String {
    "Headscale Embedded DERP".to_string()
}

/// OpenID Connect settings for node login.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OidcSpec {
    /// Issuer URL of the identity provider, e.g. `https://accounts.google.com`.
    /// Headscale fetches its discovery document at every start and does not start
    /// while the provider is unreachable.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("oidc.issuer must be an absolute http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// OAuth client id.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// Secret key with the OAuth client secret; mounted as a file, never rendered
    /// into the config.
    pub client_secret_ref: SecretKeySelector,
    /// E-mail domains allowed to log in; empty allows all.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Users (e-mail addresses) allowed to log in; empty allows all.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Groups allowed to log in; empty allows all.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Use PKCE (S256).
    #[serde(default = "default_true")]
    pub pkce: bool,
}

fn default_true() -> bool {
    true
}

/// Headscale's logging.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// Log level: `trace`, `debug`, `info`, `warn` or `error`.
    #[serde(default = "default_log_level")]
    #[schemars(regex(pattern = r"^(trace|debug|info|warn|error)$"))]
    pub level: String,
    /// `json` (default, for log shipping) or `text`.
    #[serde(default = "default_log_format")]
    #[schemars(regex(pattern = r"^(json|text)$"))]
    pub format: String,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}
fn default_log_format() -> String {
    "json".to_string()
}

/// How the operator moves the server between Headscale versions. Not acted on yet:
/// today an upgrade is a change of `version` (one minor at a time, never back).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradesSpec {
    /// `Manual` (only `version` changes upgrade), `Patch` or `Minor` (follow new
    /// releases up to that level, one minor at a time).
    #[serde(default)]
    pub policy: UpgradePolicy,
    /// Back up the database before every upgrade.
    #[serde(default = "default_true")]
    pub backup: bool,
}

impl Default for UpgradesSpec {
    fn default() -> Self {
        Self {
            policy: UpgradePolicy::Manual,
            backup: true,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UpgradePolicy {
    #[default]
    Manual,
    Patch,
    Minor,
}

/// The operator's API key for a managed server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Lifetime of each key the operator mints; at most 3650d (10 years).
    #[serde(default = "default_key_lifetime")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub lifetime: String,
    /// Rotate a key when less than this is left of its lifetime.
    #[serde(default = "default_key_rotate_before")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub rotate_before: String,
}

impl Default for ApiKeySpec {
    fn default() -> Self {
        Self {
            lifetime: default_key_lifetime(),
            rotate_before: default_key_rotate_before(),
        }
    }
}

fn default_key_lifetime() -> String {
    "90d".to_string()
}
fn default_key_rotate_before() -> String {
    "30d".to_string()
}

/// The Ingress in front of Headscale. The proxy must pass the control protocol's
/// upgrade (`POST` with `Upgrade: tailscale-control-protocol`) and not buffer it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients use (usually the host of `serverUrl`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// IngressClass to use; unset uses the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host` (e.g. one cert-manager fills); unset
    /// serves no TLS at the Ingress (terminate it elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Annotations for the Ingress controller (timeouts, buffering, cert-manager issuer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The NetworkPolicy the operator puts in front of a managed server's pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Make the NetworkPolicy `NAME` (the default). `false` deletes one the operator
    /// made and leaves the pod open to every source the cluster's network allows,
    /// the metrics port and Headscale's `/debug` pages included.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may reach the metrics port (9090/TCP: `/metrics` and Headscale's `/debug`
    /// pages, which show nodes, map responses and pending registrations), as
    /// NetworkPolicy peers, e.g. `{namespaceSelector: {matchLabels:
    /// {kubernetes.io/metadata.name: monitoring}}, podSelector: {matchLabels:
    /// {app.kubernetes.io/name: prometheus}}}`. Empty (the default): nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, has(p.podSelector) || has(p.namespaceSelector) || has(p.ipBlock))").message("each spec.managed.networkPolicy.metricsFrom peer needs a podSelector, a namespaceSelector or an ipBlock"))]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_from: Vec::new(),
        }
    }
}

/// Overrides for the Headscale pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Node inventory, audit and stale-node pruning (both modes). The nodes controller
/// lists the server's nodes at every resync and whenever a NodeApproval changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesSpec {
    /// A node whose key expires within this window counts as expiring soon.
    #[serde(default = "default_expiring_soon")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub expiring_soon: String,
    /// What to do with an unexpected node, one that no NodeApproval accounts for
    /// (neither registered through an approval nor with a key an approval issued):
    /// `Report` (status, Event, metric), `Expire` (also expire its key now, so it must
    /// log in again), or `Delete` (also delete it; at most `pruning.maxDeletionsPerRun`
    /// deletions per audit, shared with pruning). `Expire` and `Delete` act on online
    /// nodes too (a rogue node is the point) and do not follow `pruning.dryRun` or
    /// `pruning.excludeTags`; they wait out `pruning.restartGrace`. Try `Report` first:
    /// `status.nodes.unexpectedNodes` lists what they would act on.
    #[serde(default)]
    pub unexpected: UnexpectedNodeAction,
    /// Count nodes that registered through OIDC as expected: the identity provider
    /// (and `spec.managed.oidc`'s allowed users and groups) authorized them.
    #[serde(default = "default_true")]
    pub expect_oidc_nodes: bool,
    /// Deleting nodes that have been offline for long.
    #[serde(default)]
    pub pruning: PruningSpec,
}

impl Default for NodesSpec {
    fn default() -> Self {
        Self {
            expiring_soon: default_expiring_soon(),
            unexpected: UnexpectedNodeAction::Report,
            expect_oidc_nodes: true,
            pruning: PruningSpec::default(),
        }
    }
}

/// Stale-node pruning. A node is stale when it is offline and was last seen (or, never
/// seen, created) longer than `staleAfter` ago. Online nodes, ephemeral nodes (Headscale
/// removes those itself) and nodes with an excluded tag are never pruned.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruningSpec {
    /// Prune at all (off by default: only the stale count is reported).
    #[serde(default)]
    pub enabled: bool,
    /// Only list the candidates in `status.nodes.pruneCandidates`; prune nothing
    /// (`spec.nodes.unexpected` is not affected).
    #[serde(default = "default_true")]
    pub dry_run: bool,
    /// A node offline and unseen for longer than this is stale.
    #[serde(default = "default_stale_after")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub stale_after: String,
    /// Nothing is pruned for this long after Headscale (re)started or the operator
    /// began watching the server: right after a start every node looks offline.
    /// A restart is recognised when the server was not Ready, or when every node went
    /// offline at once.
    #[serde(default = "default_restart_grace")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h|d|w))+)$"))]
    pub restart_grace: String,
    /// At most this many nodes are deleted per audit (oldest first).
    #[serde(default = "default_prune_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deletions_per_run: i32,
    /// Nodes with any of these tags (`tag:name`) are never pruned. This guards pruning
    /// only: `spec.nodes.unexpected` acts on unexpected nodes whatever their tags.
    #[serde(default)]
    #[schemars(inner(length(max = 128), regex(pattern = r"^tag:[A-Za-z0-9][-_.A-Za-z0-9]*$")))]
    pub exclude_tags: Vec<String>,
}

impl Default for PruningSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: true,
            stale_after: default_stale_after(),
            restart_grace: default_restart_grace(),
            max_deletions_per_run: default_prune_max(),
            exclude_tags: Vec::new(),
        }
    }
}

fn default_expiring_soon() -> String {
    "7d".to_string()
}
fn default_stale_after() -> String {
    "30d".to_string()
}
fn default_restart_grace() -> String {
    "15m".to_string()
}
fn default_prune_max() -> i32 {
    5
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UnexpectedNodeAction {
    #[default]
    Report,
    Expire,
    Delete,
}

/// Enrollment rules every NodeApproval is checked against before anything is done.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSpec {
    /// Users approvals may register nodes as; empty allows any user.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Tags approvals may use (`tag:name`); empty allows any tag.
    #[serde(default)]
    #[schemars(inner(length(max = 128), regex(pattern = r"^tag:[A-Za-z0-9][-_.A-Za-z0-9]*$")))]
    pub allowed_tags: Vec<String>,
    /// Glob patterns (`*` any run of characters, `?` one character, case-insensitive)
    /// the approval's `spec.hostname` must match; empty allows any hostname. When set,
    /// an approval without a hostname is refused.
    #[serde(default)]
    pub hostname_patterns: Vec<String>,
    /// Most nodes one user may own (counted on the server before each approval is
    /// executed); 0 means no limit.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_nodes_per_user: i32,
    /// Longest lifetime of a pre-auth key the operator mints; `0` allows no pre-auth
    /// keys at all.
    #[serde(default = "default_max_key_lifetime")]
    #[schemars(regex(pattern = r"^(0|([0-9]{1,7}(ms|s|m|h|d|w))+)$"), length(max = 64))]
    pub max_pre_auth_key_lifetime: String,
    /// Allow reusable pre-auth keys at all.
    #[serde(default)]
    pub allow_reusable_keys: bool,
    /// An external decision service (device posture, ticketing) asked after these rules
    /// pass and before anything is done on the server. Unset: no webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_webhook: Option<DecisionWebhookSpec>,
}

/// The operator POSTs an `EnrollmentReview` (JSON) to `url` and expects
/// `{"allowed": true|false, "reason": "..."}`. Anything else, an error or no answer
/// within `timeoutSeconds` is a denial (fail closed). A denied approval is asked again
/// at every resync, so a ticket approved later lets the node in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionWebhookSpec {
    /// HTTPS URL of the decision service.
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.startsWith('https:///')").message("decisionWebhook.url must be an absolute https:// URL with a host"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("decisionWebhook.url must not carry credentials (user:password@): they would show in status and logs; authenticate the service with its CA (caBundle) and network policy"))]
    #[schemars(length(max = 2048))]
    pub url: String,
    /// PEM certificates of the CAs to trust for `url` instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Seconds to wait for the decision; no answer in time is a denial.
    #[serde(default = "default_webhook_timeout")]
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: i32,
}

fn default_webhook_timeout() -> i32 {
    5
}

impl Default for EnrollmentSpec {
    fn default() -> Self {
        Self {
            allowed_users: Vec::new(),
            allowed_tags: Vec::new(),
            hostname_patterns: Vec::new(),
            max_nodes_per_user: 0,
            max_pre_auth_key_lifetime: default_max_key_lifetime(),
            allow_reusable_keys: false,
            decision_webhook: None,
        }
    }
}

fn default_max_key_lifetime() -> String {
    "24h".to_string()
}

/// Policy served when no AclPolicy names this server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDefaultsSpec {
    /// What the server serves once the last AclPolicy naming it is deleted:
    /// `DenyAll` (default, `{"acls": []}`) or `AllowAll` (`{}`). Only applied after
    /// the operator has applied a policy to the server once (see `status.policy`);
    /// a server that never had an AclPolicy keeps its own policy.
    #[serde(default)]
    pub when_empty: EmptyPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EmptyPolicy {
    #[default]
    DenyAll,
    AllowAll,
}

/// Observed state of a Headscale server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadscaleServerStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `Managed` or `External`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Headscale version the server reports at `/version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// URL the operator reaches the server at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Managed mode: the operator's API key (its id and expiry; never the key, which
    /// stays in the Secret `NAME-api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyStatus>,
    /// Managed mode: SHA-256 of the rendered config and the secrets the pod reads at
    /// start, as stamped on the pod template (a change rolls the pod once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Managed mode: the DNS the server's rendered config carries, and from which
    /// DnsConfig (written by the server controller when it renders the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ServerDnsStatus>,
    /// The ACL policy the operator applied to this server. Absent until the operator
    /// applied one (or found its merged policy already served): without it, and with
    /// no AclPolicy naming the server, the server's own policy is left alone.
    /// Written by the policy controller (field manager `headscale-operator/policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServerPolicyStatus>,
    /// The node inventory of the last audit. Written by the nodes controller (field
    /// manager `headscale-operator/nodes`), only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeInventory>,
}

/// The DNS a managed server runs with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerDnsStatus {
    /// The DnsConfig whose settings and records the server runs with; absent when
    /// none does (the safe default: no DNS settings pushed, no extra records). While a
    /// newer version of it is refused, this is still the one in force, at
    /// `configGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_ref: Option<String>,
    /// The generation of that DnsConfig the server runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<i64>,
    /// MagicDNS on.
    pub magic_dns: bool,
    /// `override_local_dns` on: clients use the tailnet's resolvers, not their own.
    pub override_local_dns: bool,
    /// Leak protection: `override_local_dns` on and at least one global resolver, so
    /// nodes' DNS queries do not go to the local network's resolver.
    pub leak_protection: bool,
    /// Number of extra records in the server's records file.
    pub extra_records: i64,
    /// SHA-256 of the DNS settings the server's config was rendered with (not the
    /// records). While the DnsConfig in force is refused, the operator keeps rendering
    /// the DNS it reads back from the config ConfigMap only if it matches this, so a
    /// ConfigMap deleted or edited meanwhile cannot change the server's DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_hash: Option<String>,
    /// SHA-256 of the extra-records file the operator wrote; the records ConfigMap is
    /// trusted the same way as the config while the DnsConfig in force is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_hash: Option<String>,
}

/// The operator's API key for a managed server, as the keyholder sidecar reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// Headscale's id of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When the key expires (RFC 3339); the keyholder rotates it before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// Counts of the server's nodes and what the audit found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInventory {
    /// Nodes Headscale lists.
    pub total: i64,
    /// Nodes connected now.
    pub online: i64,
    /// Nodes whose key expires within `spec.nodes.expiringSoon`.
    pub expiring_soon: i64,
    /// Nodes whose key has expired (they stay listed until deleted).
    pub expired: i64,
    /// Nodes offline and unseen for longer than `spec.nodes.pruning.staleAfter`.
    pub stale: i64,
    /// Nodes no NodeApproval accounts for.
    pub unexpected: i64,
    /// The first unexpected nodes, by id (at most 20; `unexpected` has the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unexpected_nodes: Vec<NodeSummary>,
    /// Dry run: the nodes pruning would delete now, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prune_candidates: Vec<NodeSummary>,
    /// Why pruning is holding back, e.g. during the restart grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning_held: Option<String>,
    /// The Headscale instance the audit reached: its noise public key (`mkey:…`, public,
    /// from `GET /key`), the same whatever URL reaches it. HeadscaleServers with the
    /// same instance key (or the same endpoint) share one Headscale, and their audits
    /// only count. Absent until the first audit that could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_key: Option<String>,
}

/// One node, as the audit reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Headscale's node id.
    pub id: String,
    /// The node's hostname.
    pub name: String,
    /// The owning user; absent for a tagged node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When Headscale last saw it (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// The policy the operator last applied to a server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPolicyStatus {
    /// SHA-256 (hex) of the applied policy in canonical form (pretty JSON, keys
    /// sorted); equals `status.mergedHash` of every Ready AclPolicy of this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When Headscale stored it (its `updatedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_time: Option<Time>,
    /// The merged AclPolicy objects (`namespace/name`), in merge order. Empty when a
    /// default policy is applied.
    #[serde(default)]
    pub fragments: Vec<String>,
    /// The default applied because no AclPolicy names the server (`DenyAll` or
    /// `AllowAll`, from `spec.policy.whenEmpty`); absent when fragments are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<EmptyPolicy>,
}

impl HeadscaleServer {
    /// `Managed` or `External`, from the spec.
    pub fn mode(&self) -> &'static str {
        if self.spec.external.is_some() {
            "External"
        } else {
            "Managed"
        }
    }
}
