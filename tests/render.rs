//! Golden tests of the rendered Headscale configuration: for a few representative
//! managed specs and every supported version, `render_config` with the pod layout must
//! give exactly the bytes committed in `tests/golden/render/<case>-<version>.yaml`.
//! No environment needed. After an intended change, rewrite them with:
//!   UPDATE_GOLDEN=1 cargo test --test render
//! and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use headscale_operator::api::DnsConfigSpec;
use headscale_operator::api::server::ManagedSpec;
use headscale_operator::controller::dns::build::{candidate, default_input};
use headscale_operator::render::{DnsInput, Layout, render_config, validate};
use serde_json::{Value, json};

const VERSIONS: [&str; 2] = ["0.28.0", "0.29.2"];
const UPDATE: &str = "UPDATE_GOLDEN=1 cargo test --test render";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/render")
}

fn managed(version: &str, extra: Value) -> ManagedSpec {
    let mut spec = json!({"version": version, "serverUrl": "https://headscale.example.com"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(spec).unwrap()
}

/// (case, spec fields beyond version and serverUrl, DNS). Without a DnsConfig a server
/// gets the safe default with the (empty) records file: `default_input`.
fn cases() -> Vec<(&'static str, Value, DnsInput)> {
    // A DnsConfig as the controller maps it: MagicDNS, a resolver, split DNS, a record.
    let dns_config: DnsConfigSpec = serde_json::from_value(json!({
        "serverRef": {"name": "hs"},
        "baseDomain": "ts.example.net",
        "nameservers": {"global": ["192.0.2.53"], "split": {"corp.example.com": ["10.1.0.53"]}},
        "extraRecords": [{"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.10"}],
    }))
    .unwrap();
    let from_dns_config = candidate(&dns_config, &managed("0.29.2", json!({})), &Layout::pod())
        .expect("the golden DnsConfig is valid")
        .input;
    let no_dns_config = default_input(&Layout::pod());
    let full_dns = DnsInput {
        magic_dns: true,
        base_domain: Some("tailnet.example.net".into()),
        override_local_dns: true,
        global_nameservers: vec!["10.0.0.53".into(), "https://dns.example.net/dns-query".into()],
        split: BTreeMap::from([
            ("corp.example.com".to_string(), vec!["10.1.0.53".to_string()]),
            (
                "lab.example.com".to_string(),
                vec!["10.2.0.53".to_string(), "10.2.0.54".to_string()],
            ),
        ]),
        search_domains: vec!["corp.example.com".into()],
        extra_records_path: Some(Layout::pod().extra_records.clone()),
    };
    vec![
        ("minimal-sqlite", json!({}), no_dns_config.clone()),
        ("dnsconfig", json!({}), from_dns_config),
        (
            "postgres",
            json!({"database": {"type": "Postgres", "postgres": {
                "host": "pg.db.svc", "port": 5433, "database": "headscale", "user": "headscale",
                "passwordSecretRef": {"name": "pg", "key": "password"}, "sslMode": "verify-full"}}}),
            no_dns_config.clone(),
        ),
        (
            "oidc",
            json!({"oidc": {"issuer": "https://sso.example.com/realms/corp", "clientId": "headscale",
                "clientSecretRef": {"name": "oidc", "key": "client-secret"},
                "allowedDomains": ["example.com"], "allowedGroups": ["vpn-users"]}}),
            no_dns_config.clone(),
        ),
        (
            "full",
            json!({
                "prefixes": {"v4": "100.64.0.0/16", "v6": "fd7a:115c:a1e0:1::/64", "allocation": "Random"},
                "derp": {"embedded": true, "region": {"id": 950, "code": "corp", "name": "Corp relay"},
                         "ipv4": "203.0.113.10", "ipv6": "2001:db8::10",
                         "urls": ["https://controlplane.tailscale.com/derpmap/default"]},
                "oidc": {"issuer": "https://accounts.example.com", "clientId": "hs-client",
                         "clientSecretRef": {"name": "oidc", "key": "client-secret"}, "allowedUsers": ["alice@example.com"],
                         "pkce": false},
                "nodeExpiry": "90d",
                "ephemeralInactivityTimeout": "1h30m",
                "logging": {"level": "debug", "format": "text"},
            }),
            full_dns,
        ),
    ]
}

#[test]
fn rendered_configs_match_the_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = golden_dir();
    let mut stale = Vec::new();
    let mut expected = Vec::new();
    for (case, extra, dns) in cases() {
        for version in VERSIONS {
            let spec = managed(version, extra.clone());
            let target = validate(&spec, &dns)
                .unwrap_or_else(|p| panic!("{case} {version}: the golden spec is refused: {p:?}"));
            let have = render_config(&spec, &target, &dns, &Layout::pod());
            assert_eq!(
                have,
                render_config(&spec, &target, &dns, &Layout::pod()),
                "{case} {version}: rendering is not deterministic"
            );
            let name = format!("{case}-{version}.yaml");
            expected.push(name.clone());
            let path = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &have).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != have {
                stale.push(format!("{}\n--- rendered now:\n{have}", path.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "rendered configs differ from the golden files:\n{}\nIf the change is intended, rewrite them with:\n  {UPDATE}\nand review the diff",
        stale.join("\n")
    );
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present,
        expected,
        "stray golden files in {}; remove them or run {UPDATE}",
        dir.display()
    );
}

/// Every key a version removed (fatal, or deprecated with a replacement) is absent,
/// and no secret or mutually exclusive key is ever rendered.
#[test]
fn no_removed_exclusive_or_secret_keys() {
    for (case, extra, dns) in cases() {
        for version in VERSIONS {
            let spec = managed(version, extra.clone());
            let target = validate(&spec, &dns).unwrap();
            let text = render_config(&spec, &target, &dns, &Layout::pod());
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let keys = flatten(&doc);
            let has = |k: &str| keys.iter().any(|have| have == k);
            let where_ = format!("{case} {version}");
            // Fatal on both versions (old spellings).
            for k in [
                "acl_policy_path",
                "dns_config",
                "dns.use_username_in_magic_dns",
                "oidc.strip_email_domain",
                "oidc.map_legacy_users",
            ] {
                assert!(!has(k), "{where_}: {k}");
            }
            // Secrets and their mutually exclusive twins.
            for k in [
                "database.postgres.pass",
                "oidc.client_secret",
                "cli.api_key",
                "dns.extra_records",
            ] {
                assert!(!has(k), "{where_}: {k}");
            }
            assert!(!text.contains("privkey:"), "{where_}: a key in the config");
            if target.minor() >= 29 {
                for k in [
                    "randomize_client_port",
                    "oidc.expiry",
                    "ephemeral_node_inactivity_timeout",
                ] {
                    assert!(!has(k), "{where_}: {k} is removed in 0.29");
                }
                assert!(
                    has("node.expiry") && has("node.ephemeral.inactivity_timeout"),
                    "{where_}"
                );
            } else {
                assert!(!has("node"), "{where_}: node.* does not exist before 0.29");
                assert!(has("ephemeral_node_inactivity_timeout"), "{where_}");
                assert_eq!(has("oidc.expiry"), spec.oidc.is_some(), "{where_}");
            }
            // What every managed server gets.
            for (k, v) in [
                ("disable_check_updates", "true"),
                ("policy.mode", "database"),
                ("logtail.enabled", "false"),
                ("derp.auto_update_enabled", "false"),
                ("unix_socket_permission", "0770"),
                ("grpc_allow_insecure", "false"),
            ] {
                assert_eq!(scalar(&doc, k).as_deref(), Some(v), "{where_}: {k}");
            }
        }
    }
}

/// Dotted paths of every key in a YAML mapping tree.
fn flatten(doc: &serde_yaml::Value) -> Vec<String> {
    fn walk(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                walk(v, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out
}

fn scalar(doc: &serde_yaml::Value, dotted: &str) -> Option<String> {
    let mut v = doc;
    for part in dotted.split('.') {
        v = v.get(part)?;
    }
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
