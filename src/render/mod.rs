//! Managed mode's Headscale configuration: validation of the managed spec, the
//! `config.yaml` rendered for the exact target version, and the private keys the
//! operator generates. Pure: no Kubernetes, no I/O (except the OS's randomness).
//!
//! - [`validate`] refuses, with a status reason, everything Headscale would refuse at
//!   start (and a few things it accepts but cannot work with), so a config we render
//!   never crash-loops a pod.
//! - [`render_config`] turns a validated spec into `config.yaml` bytes for one
//!   [`Target`] (0.28 or 0.29): only keys that version reads, never a key it removed,
//!   never two mutually exclusive keys. The same input gives the same bytes.
//! - [`generate_private_key`] makes a noise or DERP key in Headscale's text format.
//!
//! Secrets never appear in the config: the Postgres password reaches Headscale as the
//! environment variable [`POSTGRES_PASSWORD_ENV`], the OIDC client secret and the keys
//! as files ([`Layout`]).

mod config;
pub mod keys;
mod layout;
mod records;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use config::{render_config, rendered_dns};
pub use keys::{KeyGenError, generate_private_key, is_private_key};
pub use layout::Layout;
pub use records::{check_records, count_records, render_records};
pub use validate::{format_duration, parse_duration, server_host, validate, validate_dns};

/// The environment variable Headscale reads the Postgres password from. Headscale's
/// config loader (`hscontrol/types/config.go`, `LoadConfig`, the same in 0.28.0 and
/// 0.29.2) calls viper's `SetEnvPrefix("headscale")`, `SetEnvKeyReplacer(".", "_")`
/// and `AutomaticEnv()`, so `viper.GetString("database.postgres.pass")` returns this
/// variable when it is set, ahead of the file. The rendered config never has a `pass`.
pub const POSTGRES_PASSWORD_ENV: &str = "HEADSCALE_DATABASE_POSTGRES_PASS";

/// Headscale minor versions managed mode renders a configuration for (all `0.x`).
pub const SUPPORTED_MINORS: [u32; 2] = [28, 29];

/// Status reasons of [`Problem`]s (CamelCase: condition reason, Event reason).
pub mod reason {
    /// `version` outside the minors managed mode renders for.
    pub const UNSUPPORTED_VERSION: &str = crate::api::conditions::reason::UNSUPPORTED_VERSION;
    /// `serverUrl` is not an absolute http(s) URL of a host (no path, query, credentials).
    pub const INVALID_SERVER_URL: &str = "InvalidServerUrl";
    /// `replicas` other than 1.
    pub const INVALID_REPLICAS: &str = "InvalidReplicas";
    /// A prefix that does not parse, has host bits, or lies outside Tailscale's ranges;
    /// or no prefix at all.
    pub const INVALID_PREFIX: &str = "InvalidPrefix";
    /// No DERP region: embedded relay off and no DERP map URL.
    pub const DERP_MAP_EMPTY: &str = "DerpMapEmpty";
    /// A DERP map URL that is not an absolute http(s) URL, or a bad relay address.
    pub const INVALID_DERP: &str = "InvalidDerp";
    /// A duration that does not parse, or an ephemeral timeout Headscale refuses.
    pub const INVALID_DURATION: &str = "InvalidDuration";
    /// OIDC issuer or client id unusable.
    pub const INVALID_OIDC: &str = "InvalidOidc";
    /// Postgres settings Headscale cannot use.
    pub const INVALID_DATABASE: &str = "InvalidDatabase";
    /// MagicDNS on without a base domain.
    pub const MAGIC_DNS_WITHOUT_BASE_DOMAIN: &str = "MagicDnsWithoutBaseDomain";
    /// `override_local_dns` on without a global nameserver.
    pub const OVERRIDE_LOCAL_DNS_WITHOUT_NAMESERVERS: &str = "OverrideLocalDnsWithoutNameservers";
    /// The DNS base domain is the server URL's host or a parent of it.
    pub const BASE_DOMAIN_CONTAINS_SERVER: &str = "BaseDomainContainsServer";
    /// A DNS name or nameserver that is not valid.
    pub const INVALID_DNS: &str = "InvalidDns";
    /// An extra record Headscale would serve wrongly or not at all: not a DNS name, a
    /// wildcard, an address of the wrong family, listed twice, or the server's own host.
    pub const INVALID_EXTRA_RECORD: &str = "InvalidExtraRecord";
    /// The DNS settings or records are too large for the ConfigMaps that carry them.
    pub const DNS_TOO_LARGE: &str = "DnsTooLarge";
    /// Log level or format Headscale does not know.
    pub const INVALID_LOGGING: &str = "InvalidLogging";
    /// Anything else the operator cannot build the pod from: an image with its own tag
    /// or digest, a resource quantity the API server cannot decode.
    pub const INVALID_SPEC: &str = crate::api::conditions::reason::INVALID_SPEC;
}

/// Why a managed spec cannot be run: a CamelCase status reason and a message for
/// a person (which field, what is wrong, what to do). Never contains a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The Headscale release a configuration is rendered for; only [`validate`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    minor: u32,
    patch: u32,
}

impl Target {
    /// The minor version (`29` for 0.29.2): what decides the configuration keys.
    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// `0.29.2`, without a leading `v` (the container image tag).
    pub fn version(&self) -> String {
        format!("0.{}.{}", self.minor, self.patch)
    }

    /// What Headscale's `/version` reports for this release: `v0.29.2`.
    pub fn reported_version(&self) -> String {
        format!("v{}", self.version())
    }
}

/// The DNS part of the configuration. The server controller maps the `DnsConfig` in
/// force to this (`controller::dns::build::dns_input`); a server without one gets
/// [`DnsInput::safe_default`] with the records file (which then holds `[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsInput {
    /// Give nodes names under `base_domain` (Headscale's `dns.magic_dns`).
    pub magic_dns: bool,
    /// Domain of the MagicDNS names, without a trailing dot.
    pub base_domain: Option<String>,
    /// Make clients use `global_nameservers` instead of their own resolvers.
    pub override_local_dns: bool,
    /// Resolver IP addresses or DoH URLs.
    pub global_nameservers: Vec<String>,
    /// Domain -> resolvers for split DNS.
    pub split: BTreeMap<String, Vec<String>>,
    /// Search domains pushed to clients.
    pub search_domains: Vec<String>,
    /// Headscale's watched extra-records JSON file (`dns.extra_records_path`); the
    /// file must exist when Headscale starts.
    pub extra_records_path: Option<PathBuf>,
}

impl DnsInput {
    /// What a server gets when no `DnsConfig` names it: Headscale pushes no DNS
    /// settings at all. MagicDNS is off (it needs a base domain only a person can
    /// choose), `override_local_dns` is off (it needs resolvers, and picking a public
    /// resolver for someone would send their queries to a third party), no
    /// nameservers, no search domains. Nodes keep using their own resolvers, exactly
    /// as before they joined; Headscale starts with it on every supported version.
    pub fn safe_default() -> Self {
        Self {
            magic_dns: false,
            base_domain: None,
            override_local_dns: false,
            global_nameservers: Vec::new(),
            split: BTreeMap::new(),
            search_domains: Vec::new(),
            extra_records_path: None,
        }
    }
}
