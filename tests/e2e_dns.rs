//! DnsConfig on the real control plane: the server controller renders the DnsConfig in
//! force into the managed server's config (a settings change rolls the pod once) and
//! its records into `NAME-dns-records` (a records change rolls nothing); a refused
//! DnsConfig changes nothing and says why; and, with `RealPod`, a record change reaches
//! a running real Headscale without a restart.
//!
//! Run by `make test` (e2e/test.sh) against the operator it starts.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::managed::*;
use support::*;

use headscale_operator::api::{DnsConfig, HeadscaleServer};
use headscale_operator::render::rendered_dns;

fn dns_config(name: &str, server: &str, spec: Value) -> DnsConfig {
    let mut spec = spec;
    spec["serverRef"] = json!({"name": server});
    serde_json::from_value(json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "DnsConfig",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// A DnsConfig with split DNS and one record, valid for a server under `example.test`.
fn good_spec() -> Value {
    json!({
        "baseDomain": "ts.example.net",
        "nameservers": {"global": ["192.0.2.53"], "split": {"corp.example.com": ["10.1.0.53"]}},
        "searchDomains": ["corp.example.com"],
        "extraRecords": [{"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.10"}],
    })
}

async fn create_dns(client: &Client, ns: &str, dc: DnsConfig) {
    Api::<DnsConfig>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &dc)
        .await
        .expect("create DnsConfig");
}

async fn patch_dns(client: &Client, ns: &str, name: &str, spec: Value) {
    Api::<DnsConfig>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
        .expect("patch DnsConfig");
}

/// Waits until DnsConfig `name` is `Ready` with `reason` for its current generation;
/// returns its message.
async fn wait_dns(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    wait_for(&format!("DnsConfig {ns}/{name} {reason}"), WAIT, || async {
        let dc = Api::<DnsConfig>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| e.to_string())?;
        let generation = dc.metadata.generation;
        let c = dc
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .ok_or("no Ready condition")?;
        if c.reason == reason && c.observed_generation == generation {
            Ok(c.message)
        } else {
            Err(format!("{} {}: {}", c.status, c.reason, c.message))
        }
    })
    .await
}

/// Replaces `key` of ConfigMap `cm` behind the operator's back, until the server says
/// `DnsUnrecoverable`. A reconcile that read the ConfigMap just before the edit repairs
/// it instead (as it should): then the edit is made again.
async fn edit_until_held(
    client: &Client,
    ns: &str,
    cm: &str,
    key: &str,
    text: impl Fn(&str) -> String,
) -> String {
    let cms = Api::<ConfigMap>::namespaced(client.clone(), ns);
    for _ in 0..5 {
        let mut edited = cms.get(cm).await.unwrap();
        edited.metadata.managed_fields = None;
        let data = edited.data.as_mut().unwrap();
        let new = text(&data[key]);
        data.insert(key.into(), new);
        cms.replace(cm, &PostParams::default(), &edited).await.unwrap();
        for _ in 0..20 {
            if let Some((_, reason, message)) = ready(client, ns, "hs").await
                && reason == "DnsUnrecoverable"
            {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    panic!("{ns}: the server never held after edits of {cm}");
}

async fn config_map(client: &Client, ns: &str, name: &str) -> ConfigMap {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect(name)
}

async fn pod_uid(client: &Client, ns: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get("hs-0")
        .await
        .unwrap()
        .uid()
        .unwrap()
}

async fn sts_generation(client: &Client, ns: &str) -> i64 {
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get("hs")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap()
}

/// A DnsConfig's `status.leakProtection`.
async fn dns_leak_protection(client: &Client, ns: &str, name: &str) -> Option<bool> {
    Api::<DnsConfig>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.leak_protection)
}

async fn server(client: &Client, ns: &str) -> HeadscaleServer {
    Api::<HeadscaleServer>::namespaced(client.clone(), ns)
        .get("hs")
        .await
        .unwrap()
}

/// A managed server `hs` whose DnsConfig `dns` is applied and whose pod (KWOK) runs it.
async fn server_with_dns(client: &Client, prefix: &str, spec: Value) -> String {
    let ns = namespace(client, prefix).await;
    let class = volume_for(client, &ns).await;
    // The DnsConfig first, so the first pod already has it.
    create_dns(client, &ns, dns_config("dns", "hs", spec)).await;
    create_server(client, managed("hs", &ns, "0.29.2", &class, json!({}))).await;
    wait_dns(client, &ns, "dns", "Applied").await;
    wait_reason(client, &ns, "hs", "ApiKeyPending").await;
    ns
}

async fn wait_records(client: &Client, ns: &str, needle: &str) -> String {
    wait_for(&format!("records ConfigMap with {needle:?}"), WAIT, || async {
        let text = records_file(client, ns, "hs").await;
        if text.contains(needle) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
}

#[tokio::test]
async fn a_settings_change_rolls_the_pod_once_and_a_records_change_does_not() {
    let client = admin_client().await;
    let ns = server_with_dns(&client, "dnsroll", good_spec()).await;

    // What the server runs with.
    let hs = server(&client, &ns).await;
    let dns = hs.status.unwrap().dns.expect("status.dns");
    assert_eq!(dns.config_ref.as_deref(), Some("dns"));
    assert!(dns.leak_protection && dns.magic_dns && dns.override_local_dns);
    assert_eq!(dns.extra_records, 1);
    let config = config_map(&client, &ns, "hs-config").await.data.unwrap()["config.yaml"].clone();
    let rendered = rendered_dns(&config).unwrap();
    assert_eq!(rendered.base_domain.as_deref(), Some("ts.example.net"));
    assert_eq!(rendered.split["corp.example.com"], ["10.1.0.53"]);
    assert!(!config.contains("grafana"), "records are not in the config");
    let records = records_file(&client, &ns, "hs").await;
    assert!(records.contains("\"grafana.ts.example.net\""), "{records}");
    let dc = Api::<DnsConfig>::namespaced(client.clone(), &ns)
        .get("dns")
        .await
        .unwrap();
    assert_eq!(dc.status.as_ref().unwrap().leak_protection, Some(true));

    // A records change: the records ConfigMap changes, nothing else.
    let uid = pod_uid(&client, &ns).await;
    let generation = sts_generation(&client, &ns).await;
    let config_rv = config_map(&client, &ns, "hs-config").await.resource_version();
    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"extraRecords": [
            {"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.11"},
            {"name": "db.ts.example.net", "type": "AAAA", "value": "fd7a:115c:a1e0::5"},
        ]}),
    )
    .await;
    wait_records(&client, &ns, "100.64.0.11").await;
    wait_dns(&client, &ns, "dns", "Applied").await;
    tokio::time::sleep(Duration::from_secs(4)).await; // two resyncs
    assert_eq!(
        pod_uid(&client, &ns).await,
        uid,
        "a records change replaced the pod"
    );
    assert_eq!(
        sts_generation(&client, &ns).await,
        generation,
        "a records change touched the pod template"
    );
    assert_eq!(
        config_map(&client, &ns, "hs-config").await.resource_version(),
        config_rv,
        "a records change rewrote the config"
    );
    assert_eq!(
        server(&client, &ns)
            .await
            .status
            .unwrap()
            .dns
            .unwrap()
            .extra_records,
        2
    );

    // Removing the last record writes `[]` (Headscale applies it; an empty file it
    // would ignore), still without a roll.
    patch_dns(&client, &ns, "dns", json!({"extraRecords": []})).await;
    wait_for("no records", WAIT, || async {
        let text = records_file(&client, &ns, "hs").await;
        if text.trim() == "[]" { Ok(()) } else { Err(text) }
    })
    .await;

    // A settings change rolls the pod exactly once.
    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"nameservers": {"global": ["192.0.2.53", "192.0.2.54"]}}),
    )
    .await;
    let second = wait_new_pod(&client, &ns, "hs-0", Some(uid.clone()))
        .await
        .uid()
        .unwrap();
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sts_generation(&client, &ns).await,
        generation + 1,
        "one template change"
    );
    assert_eq!(
        pod_uid(&client, &ns).await,
        second,
        "the pod was rolled more than once"
    );
    let config = config_map(&client, &ns, "hs-config").await.data.unwrap()["config.yaml"].clone();
    assert_eq!(
        rendered_dns(&config).unwrap().global_nameservers,
        ["192.0.2.53", "192.0.2.54"]
    );
}

#[tokio::test]
async fn a_refused_dns_config_changes_nothing_and_says_why() {
    let client = admin_client().await;
    let ns = server_with_dns(&client, "dnsbad", good_spec()).await;
    let before = child_versions(&client, &ns, "hs").await;
    let config_of = |cm: ConfigMap| cm.data.unwrap()["config.yaml"].clone();
    let dns_before = rendered_dns(&config_of(config_map(&client, &ns, "hs-config").await)).unwrap();

    // A base domain that is a parent of the server's host (hs.NS.example.test).
    let mut bad = good_spec();
    bad["baseDomain"] = json!(format!("{ns}.example.test"));
    patch_dns(&client, &ns, "dns", json!({"baseDomain": bad["baseDomain"]})).await;
    let msg = wait_dns(&client, &ns, "dns", "BaseDomainContainsServer").await;
    assert!(
        msg.contains("nothing was changed") && msg.contains("generation 1"),
        "{msg}"
    );
    // Its spec would protect, but it is not what clients get.
    assert_eq!(dns_leak_protection(&client, &ns, "dns").await, Some(false));
    // A duplicate record (the schema cannot tell; the controller does).
    let dup = json!({"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.10"});
    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"baseDomain": "ts.example.net", "extraRecords": [dup.clone(), dup]}),
    )
    .await;
    let msg = wait_dns(&client, &ns, "dns", "InvalidExtraRecord").await;
    assert!(msg.contains("listed twice"), "{msg}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        child_versions(&client, &ns, "hs").await,
        before,
        "a refused DnsConfig changed the server"
    );
    let status = server(&client, &ns).await.status.unwrap();
    let dns = status.dns.unwrap();
    assert_eq!(
        (dns.config_ref.as_deref(), dns.config_generation),
        (Some("dns"), Some(1))
    );
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "ApiKeyPending", "the server itself is fine");

    // The server's own change still applies, with the last good DNS.
    let generation = sts_generation(&client, &ns).await;
    patch_server(
        &client,
        &ns,
        "hs",
        json!({"spec": {"managed": {"logging": {"level": "debug"}}}}),
    )
    .await;
    let config = wait_for("the new config", WAIT, || async {
        let text = config_of(config_map(&client, &ns, "hs-config").await);
        if text.contains("level: debug") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert_eq!(
        rendered_dns(&config).unwrap(),
        dns_before,
        "the last good DNS was not kept"
    );
    assert!(records_file(&client, &ns, "hs").await.contains("100.64.0.10"));
    // The ConfigMap is written before the StatefulSet that carries its hash.
    wait_for("the StatefulSet rolled for the new config", WAIT, || async {
        let now = sts_generation(&client, &ns).await;
        if now == generation + 1 {
            Ok(())
        } else {
            Err(format!("generation {now}"))
        }
    })
    .await;
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;

    // While it is refused, the config ConfigMap is edited (another resolver) or deleted
    // behind the operator's back: the DNS it holds is no longer the one applied, so
    // nothing is applied (no rollout onto the edit, no safe default without leak
    // protection) and both the server and the DnsConfig say why.
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let text = config_of(config_map(&client, &ns, "hs-config").await);
    assert!(text.contains("192.0.2.53"), "{text}");
    let msg = edit_until_held(&client, &ns, "hs-config", "config.yaml", |t| {
        t.replace("192.0.2.53", "6.6.6.6")
    })
    .await;
    assert!(msg.contains("hs-config"), "{msg}");
    let generation = sts_generation(&client, &ns).await;
    cms.delete("hs-config", &DeleteParams::default()).await.unwrap();
    wait_for("the DnsConfig says the ConfigMap was deleted", WAIT, || async {
        let msg = wait_dns(&client, &ns, "dns", "InvalidExtraRecord").await;
        if msg.contains("deleted outside the operator") {
            Ok(())
        } else {
            Err(msg)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cms.get_opt("hs-config").await.unwrap().is_none(),
        "recreated with other DNS"
    );
    assert_eq!(sts_generation(&client, &ns).await, generation, "rolled");
    // Fixed, the DnsConfig is applied again and the ConfigMap comes back with it.
    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"extraRecords": good_spec()["extraRecords"]}),
    )
    .await;
    wait_dns(&client, &ns, "dns", "Applied").await;
    let restored = config_of(config_map(&client, &ns, "hs-config").await);
    assert!(
        restored.contains("192.0.2.53") && !restored.contains("6.6.6.6"),
        "{restored}"
    );
    wait_reason(&client, &ns, "hs", "ApiKeyPending").await;
    // Refused again (the duplicate record), to go on from there.
    let dup = json!({"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.10"});
    patch_dns(&client, &ns, "dns", json!({"extraRecords": [dup.clone(), dup]})).await;
    wait_dns(&client, &ns, "dns", "InvalidExtraRecord").await;
    // The records file is held the same way: edited while refused (Headscale would
    // serve the edit at once), the server stalls instead of adopting it.
    let msg = edit_until_held(&client, &ns, "hs-dns-records", "extra-records.json", |_| {
        r#"[{"name":"evil.ts.example.net","type":"A","value":"100.64.0.66"}]"#.into()
    })
    .await;
    assert!(msg.contains("hs-dns-records"), "{msg}");

    // A second DnsConfig for the server is refused, naming the first; not merged.
    let before = child_versions(&client, &ns, "hs").await;
    let mut other = good_spec();
    other["extraRecords"] = json!([{"name": "other.ts.example.net", "type": "A", "value": "100.64.0.99"}]);
    create_dns(&client, &ns, dns_config("dns-2", "hs", other)).await;
    let msg = wait_dns(&client, &ns, "dns-2", "DnsConfigConflict").await;
    assert!(
        msg.contains("\"dns\"") && msg.contains("Nothing of this DnsConfig is applied"),
        "{msg}"
    );
    assert_eq!(
        dns_leak_protection(&client, &ns, "dns-2").await,
        Some(false),
        "a DnsConfig not in force protects nobody"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(child_versions(&client, &ns, "hs").await, before);

    // Fixing the first applies it; deleting it hands the server to the second.
    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"extraRecords": [{"name": "fixed.ts.example.net", "type": "A", "value": "100.64.0.12"}]}),
    )
    .await;
    wait_dns(&client, &ns, "dns", "Applied").await;
    wait_records(&client, &ns, "fixed.ts.example.net").await;
    Api::<DnsConfig>::namespaced(client.clone(), &ns)
        .delete("dns", &DeleteParams::default())
        .await
        .unwrap();
    wait_dns(&client, &ns, "dns-2", "Applied").await;
    assert_eq!(dns_leak_protection(&client, &ns, "dns-2").await, Some(true));
    wait_records(&client, &ns, "other.ts.example.net").await;
    let events: Vec<String> = events(&client, &ns)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for want in [
        "BaseDomainContainsServer",
        "InvalidExtraRecord",
        "DnsConfigConflict",
        "DnsApplied",
    ] {
        assert!(events.iter().any(|r| r == want), "no {want} Event: {events:?}");
    }

    // A DnsConfig for a server that does not exist, and for an external server.
    create_dns(&client, &ns, dns_config("nowhere", "no-such-server", good_spec())).await;
    let msg = wait_dns(&client, &ns, "nowhere", "ServerNotFound").await;
    assert!(msg.contains("no-such-server"), "{msg}");
    let external: HeadscaleServer = serde_json::from_value(json!({
        "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "HeadscaleServer",
        "metadata": {"name": "ext", "namespace": ns},
        "spec": {"external": {"url": "http://127.0.0.1:1", "apiKeySecretRef": {"name": "none"}}},
    }))
    .unwrap();
    Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &external)
        .await
        .unwrap();
    create_dns(&client, &ns, dns_config("ext-dns", "ext", good_spec())).await;
    let msg = wait_dns(&client, &ns, "ext-dns", "ExternalServer").await;
    assert!(msg.contains("no API for DNS"), "{msg}");
}

#[tokio::test]
async fn a_record_change_reaches_a_running_real_headscale_without_a_restart() {
    let client = admin_client().await;
    let ns = server_with_dns(&client, "dnsreal", good_spec()).await;
    let mut pod = RealPod::start(&client, &ns, "hs", "0.29.2").await;
    let pid = pod.child.id();
    let uid = pod_uid(&client, &ns).await;
    served(&pod, &["grafana.ts.example.net A 100.64.0.10"]).await;

    patch_dns(
        &client,
        &ns,
        "dns",
        json!({"extraRecords": [
            {"name": "grafana.ts.example.net", "type": "A", "value": "100.64.0.11"},
            {"name": "db.ts.example.net", "type": "AAAA", "value": "fd7a:115c:a1e0::5"},
        ]}),
    )
    .await;
    wait_records(&client, &ns, "100.64.0.11").await;
    pod.sync_records(&client, &ns, "hs").await;
    served(
        &pod,
        &[
            "db.ts.example.net AAAA fd7a:115c:a1e0::5",
            "grafana.ts.example.net A 100.64.0.11",
        ],
    )
    .await;

    // The last record removed: `[]` clears what Headscale serves.
    patch_dns(&client, &ns, "dns", json!({"extraRecords": []})).await;
    wait_for("no records", WAIT, || async {
        let text = records_file(&client, &ns, "hs").await;
        if text.trim() == "[]" { Ok(()) } else { Err(text) }
    })
    .await;
    pod.sync_records(&client, &ns, "hs").await;
    served(&pod, &[]).await;

    assert!(pod.still_running(), "Headscale exited:\n{}", pod.log());
    assert_eq!(
        pod.child.id(),
        pid,
        "the same Headscale process serves the new records"
    );
    assert_eq!(pod_uid(&client, &ns).await, uid, "the pod was replaced");
}

/// Waits until the real Headscale serves exactly `want` (sorted `name type value`).
async fn served(pod: &RealPod, want: &[&str]) {
    wait_for(&format!("Headscale serving {want:?}"), WAIT, || async {
        let have = pod.served_records();
        if have == want {
            Ok(())
        } else {
            Err(format!("{have:?}\n{}", pod.log()))
        }
    })
    .await
}
