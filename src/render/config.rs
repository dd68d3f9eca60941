//! `config.yaml` for one Headscale minor version.
//!
//! The document is a typed tree serialised by serde_yaml: fields in a fixed order,
//! maps sorted, strings quoted where YAML needs it, so the same input always gives the
//! same bytes (the controller hashes them to roll the pod). A key exists in the tree
//! only for the versions that read it:
//!
//! | setting | 0.28 | 0.29 |
//! |---|---|---|
//! | ephemeral timeout | `ephemeral_node_inactivity_timeout` | `node.ephemeral.inactivity_timeout` |
//! | node expiry | `oidc.expiry` (OIDC logins only) | `node.expiry` |
//! | gRPC listener | `grpc_listen_addr` on loopback, `grpc_allow_insecure: false` | same |
//!
//! Never rendered: `randomize_client_port` (fatal on 0.29), `oidc.expiry` on 0.29
//! (fatal), `dns_config`/`acl_policy_path`/`oidc.strip_email_domain`/
//! `oidc.map_legacy_users`/`dns.use_username_in_magic_dns` (fatal on both),
//! `dns.extra_records` (exclusive with `dns.extra_records_path`), `oidc.client_secret`
//! (exclusive with `client_secret_path`, and a secret), `database.postgres.pass` (a
//! secret: [`super::POSTGRES_PASSWORD_ENV`]), TLS (terminated in front of Headscale).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::{format_duration, parse_duration};
use super::{DnsInput, Layout, Target};
use crate::api::server::{Allocation, DatabaseType, ManagedSpec};

/// `config.yaml` for `target`, from a spec [`super::validate`] accepted (with the same
/// `dns`). Deterministic: equal inputs give equal bytes.
pub fn render_config(spec: &ManagedSpec, target: &Target, dns: &DnsInput, layout: &Layout) -> String {
    let config = build(spec, target, dns, layout);
    let body = serde_yaml::to_string(&config).unwrap_or_else(|e| {
        // A tree of strings, booleans, numbers, lists and maps always serialises.
        unreachable!("serialising the rendered config failed: {e}")
    });
    format!(
        "# Headscale 0.{} configuration, rendered by headscale-operator from the HeadscaleServer.\n\
         # Do not edit: the operator rewrites it. No secret is in here: keys and the OIDC client\n\
         # secret are files, the Postgres password is the {} environment variable.\n{body}",
        target.minor(),
        super::POSTGRES_PASSWORD_ENV
    )
}

/// The DNS settings a `config.yaml` rendered by [`render_config`] carries: how the
/// controller keeps a server's last good DNS while a DnsConfig is refused (it reads
/// back what the running config was built from). `None` when the text is not such a
/// config.
pub fn rendered_dns(config_yaml: &str) -> Option<DnsInput> {
    #[derive(Deserialize)]
    struct Doc {
        dns: DnsDoc,
    }
    #[derive(Deserialize)]
    struct DnsDoc {
        magic_dns: bool,
        #[serde(default)]
        base_domain: Option<String>,
        override_local_dns: bool,
        nameservers: NameserversDoc,
        #[serde(default)]
        search_domains: Vec<String>,
        #[serde(default)]
        extra_records_path: Option<String>,
    }
    #[derive(Deserialize)]
    struct NameserversDoc {
        #[serde(default)]
        global: Vec<String>,
        #[serde(default)]
        split: BTreeMap<String, Vec<String>>,
    }
    let doc: Doc = serde_yaml::from_str(config_yaml).ok()?;
    let d = doc.dns;
    Some(DnsInput {
        magic_dns: d.magic_dns,
        base_domain: d.base_domain,
        override_local_dns: d.override_local_dns,
        global_nameservers: d.nameservers.global,
        split: d.nameservers.split,
        search_domains: d.search_domains,
        extra_records_path: d.extra_records_path.map(std::path::PathBuf::from),
    })
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Durations were checked by `validate`; an unparseable one would have been refused.
fn duration(text: &str) -> String {
    parse_duration(text)
        .map(format_duration)
        .unwrap_or_else(|| text.to_string())
}

fn build(spec: &ManagedSpec, target: &Target, dns: &DnsInput, layout: &Layout) -> Config {
    let v29 = target.minor() >= 29;
    let expiry = duration(&spec.node_expiry);
    let ephemeral = duration(&spec.ephemeral_inactivity_timeout);
    let derp = &spec.derp;
    Config {
        server_url: spec.server_url.clone(),
        listen_addr: layout.listen_addr.clone(),
        metrics_listen_addr: layout.metrics_listen_addr.clone(),
        // The remote gRPC listener starts only with TLS or grpc_allow_insecure, and we
        // render neither; loopback in case that ever changes. 0.30 removed both keys.
        grpc_listen_addr: (target.minor() <= 29).then(|| "127.0.0.1:50443".to_string()),
        grpc_allow_insecure: (target.minor() <= 29).then_some(false),
        noise: Noise {
            private_key_path: path(&layout.noise_key),
        },
        prefixes: Prefixes {
            v4: Some(spec.prefixes.v4.clone()).filter(|p| !p.is_empty()),
            v6: Some(spec.prefixes.v6.clone()).filter(|p| !p.is_empty()),
            allocation: match spec.prefixes.allocation {
                Allocation::Sequential => "sequential",
                Allocation::Random => "random",
            },
        },
        derp: Derp {
            server: if derp.embedded {
                DerpServer {
                    enabled: true,
                    region_id: Some(derp.region.id),
                    region_code: Some(derp.region.code.clone()),
                    region_name: Some(derp.region.name.clone()),
                    verify_clients: Some(true),
                    stun_listen_addr: Some(layout.stun_listen_addr.clone()),
                    private_key_path: Some(path(&layout.derp_key)),
                    automatically_add_embedded_derp_region: Some(true),
                    ipv4: derp.ipv4.clone(),
                    ipv6: derp.ipv6.clone(),
                }
            } else {
                DerpServer::disabled()
            },
            urls: derp.urls.clone(),
            paths: Vec::new(),
            auto_update_enabled: false,
        },
        ephemeral_node_inactivity_timeout: (!v29).then(|| ephemeral.clone()),
        node: v29.then(|| Node {
            expiry: expiry.clone(),
            ephemeral: Ephemeral {
                inactivity_timeout: ephemeral,
            },
        }),
        database: match (spec.database.type_, &spec.database.postgres) {
            (DatabaseType::Postgres, Some(pg)) => Database {
                type_: "postgres",
                sqlite: None,
                postgres: Some(Postgres {
                    host: pg.host.clone(),
                    port: pg.port,
                    name: pg.database.clone(),
                    user: pg.user.clone(),
                    ssl: pg.ssl_mode.clone(),
                }),
            },
            // Postgres without its settings is refused by validation (and the schema).
            _ => Database {
                type_: "sqlite",
                sqlite: Some(Sqlite {
                    path: path(&layout.sqlite),
                    write_ahead_log: true,
                }),
                postgres: None,
            },
        },
        log: Log {
            level: spec.logging.level.clone(),
            format: spec.logging.format.clone(),
        },
        policy: Policy { mode: "database" },
        dns: Dns {
            magic_dns: dns.magic_dns,
            base_domain: dns.base_domain.clone().filter(|b| !b.is_empty()),
            override_local_dns: dns.override_local_dns,
            nameservers: Nameservers {
                global: dns.global_nameservers.clone(),
                split: dns.split.clone(),
            },
            search_domains: dns.search_domains.clone(),
            extra_records_path: dns.extra_records_path.as_deref().map(path),
        },
        unix_socket: path(&layout.socket),
        unix_socket_permission: "0770",
        oidc: spec.oidc.as_ref().map(|oidc| Oidc {
            only_start_if_oidc_is_available: true,
            issuer: oidc.issuer.clone(),
            client_id: oidc.client_id.clone(),
            client_secret_path: path(&layout.oidc_client_secret),
            expiry: (!v29).then(|| expiry.clone()),
            allowed_domains: oidc.allowed_domains.clone(),
            allowed_users: oidc.allowed_users.clone(),
            allowed_groups: oidc.allowed_groups.clone(),
            pkce: Pkce {
                enabled: oidc.pkce,
                method: "S256",
            },
        }),
        logtail: Logtail { enabled: false },
        disable_check_updates: true,
    }
}

#[derive(Serialize)]
struct Config {
    server_url: String,
    listen_addr: String,
    metrics_listen_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_listen_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_allow_insecure: Option<bool>,
    noise: Noise,
    prefixes: Prefixes,
    derp: Derp,
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral_node_inactivity_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<Node>,
    database: Database,
    log: Log,
    policy: Policy,
    dns: Dns,
    unix_socket: String,
    unix_socket_permission: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    oidc: Option<Oidc>,
    logtail: Logtail,
    disable_check_updates: bool,
}

#[derive(Serialize)]
struct Noise {
    private_key_path: String,
}

#[derive(Serialize)]
struct Prefixes {
    #[serde(skip_serializing_if = "Option::is_none")]
    v4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v6: Option<String>,
    allocation: &'static str,
}

#[derive(Serialize)]
struct Derp {
    server: DerpServer,
    urls: Vec<String>,
    paths: Vec<String>,
    auto_update_enabled: bool,
}

#[derive(Serialize)]
struct DerpServer {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    region_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_clients: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stun_listen_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    automatically_add_embedded_derp_region: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
}

impl DerpServer {
    fn disabled() -> Self {
        Self {
            enabled: false,
            region_id: None,
            region_code: None,
            region_name: None,
            verify_clients: None,
            stun_listen_addr: None,
            private_key_path: None,
            automatically_add_embedded_derp_region: None,
            ipv4: None,
            ipv6: None,
        }
    }
}

#[derive(Serialize)]
struct Node {
    expiry: String,
    ephemeral: Ephemeral,
}

#[derive(Serialize)]
struct Ephemeral {
    inactivity_timeout: String,
}

#[derive(Serialize)]
struct Database {
    #[serde(rename = "type")]
    type_: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlite: Option<Sqlite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<Postgres>,
}

#[derive(Serialize)]
struct Sqlite {
    path: String,
    write_ahead_log: bool,
}

#[derive(Serialize)]
struct Postgres {
    host: String,
    port: i32,
    name: String,
    user: String,
    ssl: String,
}

#[derive(Serialize)]
struct Log {
    level: String,
    format: String,
}

#[derive(Serialize)]
struct Policy {
    mode: &'static str,
}

#[derive(Serialize)]
struct Dns {
    magic_dns: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_domain: Option<String>,
    override_local_dns: bool,
    nameservers: Nameservers,
    search_domains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_records_path: Option<String>,
}

#[derive(Serialize)]
struct Nameservers {
    global: Vec<String>,
    split: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize)]
struct Oidc {
    only_start_if_oidc_is_available: bool,
    issuer: String,
    client_id: String,
    client_secret_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry: Option<String>,
    allowed_domains: Vec<String>,
    allowed_users: Vec<String>,
    allowed_groups: Vec<String>,
    pkce: Pkce,
}

#[derive(Serialize)]
struct Pkce {
    enabled: bool,
    method: &'static str,
}

#[derive(Serialize)]
struct Logtail {
    enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::validate;
    use serde_json::json;

    fn render(version: &str, extra: serde_json::Value, dns: &DnsInput) -> serde_yaml::Value {
        let mut spec = json!({"version": version, "serverUrl": "http://127.0.0.1:8080"});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let spec: ManagedSpec = serde_json::from_value(spec).unwrap();
        let target = validate(&spec, dns).unwrap();
        let layout = Layout::local(std::path::Path::new("/t"), 1, 2, 3);
        serde_yaml::from_str(&render_config(&spec, &target, dns, &layout)).unwrap()
    }

    fn get<'a>(doc: &'a serde_yaml::Value, dotted: &str) -> Option<&'a serde_yaml::Value> {
        dotted.split('.').try_fold(doc, |v, k| v.get(k))
    }

    #[test]
    fn defaults_render_an_embedded_relay_sqlite_and_the_safe_dns() {
        let doc = render("0.29.2", json!({}), &DnsInput::safe_default());
        assert_eq!(get(&doc, "listen_addr").unwrap(), "127.0.0.1:1");
        assert_eq!(get(&doc, "metrics_listen_addr").unwrap(), "127.0.0.1:2");
        assert_eq!(get(&doc, "derp.server.stun_listen_addr").unwrap(), "127.0.0.1:3");
        assert_eq!(
            get(&doc, "derp.server.private_key_path").unwrap(),
            "/t/etc/headscale/keys/derp.key"
        );
        assert_eq!(
            get(&doc, "noise.private_key_path").unwrap(),
            "/t/etc/headscale/keys/noise.key"
        );
        assert_eq!(get(&doc, "database.type").unwrap(), "sqlite");
        assert_eq!(
            get(&doc, "database.sqlite.path").unwrap(),
            "/t/var/lib/headscale/db.sqlite"
        );
        assert_eq!(
            get(&doc, "unix_socket").unwrap(),
            "/t/var/run/headscale/headscale.sock"
        );
        assert_eq!(get(&doc, "derp.urls").unwrap().as_sequence().unwrap().len(), 0);
        assert_eq!(get(&doc, "dns.magic_dns").unwrap().as_bool(), Some(false));
        assert_eq!(
            get(&doc, "dns.override_local_dns").unwrap().as_bool(),
            Some(false)
        );
        assert!(get(&doc, "dns.base_domain").is_none());
        assert_eq!(get(&doc, "log.format").unwrap(), "json");
        assert_eq!(get(&doc, "node.expiry").unwrap(), "4320h");
        assert_eq!(get(&doc, "node.ephemeral.inactivity_timeout").unwrap(), "30m");
        assert!(get(&doc, "oidc").is_none());
    }

    #[test]
    fn the_dns_of_a_rendered_config_reads_back_as_it_was_given() {
        let spec: ManagedSpec =
            serde_json::from_value(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com"}))
                .unwrap();
        let layout = Layout::pod();
        let full = DnsInput {
            magic_dns: true,
            base_domain: Some("tailnet.example.net".into()),
            override_local_dns: true,
            global_nameservers: vec!["10.0.0.53".into(), "https://dns.example.net/dns-query".into()],
            split: BTreeMap::from([("corp.example.com".into(), vec!["10.1.0.53".into()])]),
            search_domains: vec!["corp.example.com".into()],
            extra_records_path: Some(layout.extra_records.clone()),
        };
        for dns in [DnsInput::safe_default(), full] {
            let target = validate(&spec, &dns).unwrap();
            let text = render_config(&spec, &target, &dns, &layout);
            assert_eq!(rendered_dns(&text), Some(dns));
        }
        assert_eq!(rendered_dns("server_url: x\n"), None);
        assert_eq!(rendered_dns("not: [yaml"), None);
    }

    #[test]
    fn a_disabled_relay_renders_nothing_but_enabled_false() {
        let urls = json!({"derp": {"embedded": false, "urls": ["https://derp.example.com/map.json"]}});
        let doc = render("0.29.2", urls, &DnsInput::safe_default());
        let server = get(&doc, "derp.server").unwrap().as_mapping().unwrap();
        assert_eq!(server.len(), 1);
        assert_eq!(get(&doc, "derp.server.enabled").unwrap().as_bool(), Some(false));
        assert_eq!(
            get(&doc, "derp.urls").unwrap()[0],
            "https://derp.example.com/map.json"
        );
    }

    #[test]
    fn single_stack_omits_the_other_prefix() {
        let doc = render(
            "0.28.0",
            json!({"prefixes": {"v6": ""}}),
            &DnsInput::safe_default(),
        );
        assert_eq!(get(&doc, "prefixes.v4").unwrap(), "100.64.0.0/10");
        assert!(get(&doc, "prefixes.v6").is_none());
    }

    #[test]
    fn postgres_renders_without_a_password_and_with_its_ssl_mode() {
        let pg = json!({"database": {"type": "Postgres", "postgres": {"host": "db", "database": "hs",
            "user": "hs", "passwordSecretRef": {"name": "pg", "key": "password"}, "sslMode": "disable"}}});
        let doc = render("0.28.0", pg, &DnsInput::safe_default());
        assert_eq!(get(&doc, "database.type").unwrap(), "postgres");
        assert!(get(&doc, "database.sqlite").is_none());
        let pg = get(&doc, "database.postgres").unwrap().as_mapping().unwrap();
        let keys: Vec<&str> = pg.keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(keys, ["host", "port", "name", "user", "ssl"]);
        assert_eq!(get(&doc, "database.postgres.port").unwrap(), 5432);
        assert_eq!(get(&doc, "database.postgres.ssl").unwrap(), "disable");
    }

    #[test]
    fn node_expiry_moves_between_versions() {
        let oidc = json!({"nodeExpiry": "0", "oidc": {"issuer": "https://idp.example.com",
            "clientId": "c", "clientSecretRef": {"name": "s", "key": "secret"}}});
        let old = render("0.28.0", oidc.clone(), &DnsInput::safe_default());
        assert_eq!(get(&old, "oidc.expiry").unwrap(), "0");
        assert_eq!(get(&old, "ephemeral_node_inactivity_timeout").unwrap(), "30m");
        assert!(get(&old, "node").is_none());
        let new = render("0.29.2", oidc, &DnsInput::safe_default());
        assert!(get(&new, "oidc.expiry").is_none());
        assert!(get(&new, "ephemeral_node_inactivity_timeout").is_none());
        assert_eq!(get(&new, "node.expiry").unwrap(), "0");
        assert_eq!(
            get(&new, "oidc.client_secret_path").unwrap(),
            "/t/etc/headscale/oidc/client_secret"
        );
        assert_eq!(get(&new, "oidc.pkce.enabled").unwrap().as_bool(), Some(true));
    }
}
