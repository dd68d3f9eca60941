//! Integration tests of the nodes controller (NodeApproval): the real operator under
//! the chart's RBAC, a real kube-apiserver, real Headscale servers of every supported
//! version, and fake nodes (Headscale's debug registration, reference §7.4) standing in
//! for `tailscale up`. Run through `make test`.

mod support;

use std::time::Duration;

use headscale_operator::api::NodeApproval;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::nodes::*;
use support::*;

async fn on_every_version<F, Fut>(prefix: &str, enrollment: Value, test: F)
where
    F: Fn(Setup) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runs = headscale_versions().into_iter().map(|v| {
        let test = &test;
        let enrollment = enrollment.clone();
        async move { test(Setup::new(prefix, &v, enrollment).await).await }
    });
    futures::future::join_all(runs).await;
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_interactive_registration_is_approved_and_recorded() {
    on_every_version("na-reg", json!({}), |s| async move {
        let auth_id = s.hs.plant_pending_node("alice", "laptop", &[]);
        s.approve(
            "laptop",
            json!({"registration": {"authId": auth_id, "user": "alice"}, "hostname": "laptop"}),
        )
        .await;
        let na = s.wait_phase("laptop", "Approved", "Registered").await;
        let node = status(&na).node.expect("status.node");
        let nodes = s.hs.client().list_nodes(None).await.unwrap();
        let listed = nodes
            .iter()
            .find(|n| n.id.to_string() == node.id)
            .unwrap_or_else(|| panic!("node {} not listed by Headscale: {nodes:?}", node.id));
        assert_eq!(listed.name, "laptop");
        assert_eq!(node.name, "laptop");
        assert_eq!(node.user.as_deref(), Some("alice"));
        assert_eq!(nodes.len(), 1, "exactly one node registered");
        s.wait_event("laptop", "Normal", "Registered").await;

        // The record stays: no further calls, no status writes.
        let rv = na.resource_version();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(s.approvals().get("laptop").await.unwrap().resource_version(), rv);
        assert_eq!(s.hs.client().list_nodes(None).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn unknown_and_restart_lost_auth_ids_fail_once() {
    on_every_version("na-lost", json!({}), |s| async move {
        // Never planted: unknown (the same answer as an id older than 15 minutes).
        let unknown = s.hs.new_auth_id();
        s.approve(
            "ghost",
            json!({"registration": {"authId": unknown, "user": "alice"}}),
        )
        .await;
        let na = s.wait_phase("ghost", "Failed", "AuthIdNotFound").await;
        let stalled = status(&na)
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(stalled.status, "True");
        s.wait_event("ghost", "Warning", "AuthIdNotFound").await;
        // Terminal: not retried (the status is not rewritten, no new Events).
        let rv = na.resource_version();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(s.approvals().get("ghost").await.unwrap().resource_version(), rv);

        // Planted, then Headscale restarts before anyone approves: the pending
        // registration is gone (it lives in memory only).
        let auth_id = s.hs.plant_pending_node("alice", "lost", &[]);
        s.hs.stop();
        s.hs.restart();
        s.approve(
            "lost",
            json!({"registration": {"authId": auth_id, "user": "alice"}}),
        )
        .await;
        s.wait_phase("lost", "Failed", "AuthIdNotFound").await;
        assert!(s.hs.client().list_nodes(None).await.unwrap().is_empty());
    })
    .await;
}

/// A TCP relay to a real Headscale that swallows the answer to the first registration
/// request (Headscale registers the node; the operator never hears so): the fault a
/// real server cannot make on demand. Everything else passes through unchanged.
struct DroppingProxy {
    url: String,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DroppingProxy {
    async fn start(upstream: &str) -> DroppingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let dropped = std::sync::Arc::new(AtomicUsize::new(0));
        let armed = std::sync::Arc::new(AtomicBool::new(true));
        let count = dropped.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (armed, count) = (armed.clone(), count.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    // Set when this connection carried the registration to swallow.
                    let swallow = std::sync::Arc::new(AtomicBool::new(false));
                    let up = {
                        let swallow = swallow.clone();
                        async move {
                            let mut buf = vec![0u8; 16384];
                            loop {
                                let n = match cr.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let text = String::from_utf8_lossy(&buf[..n]);
                                if (text.contains("POST /api/v1/auth/register")
                                    || text.contains("POST /api/v1/node/register"))
                                    && armed.swap(false, Ordering::SeqCst)
                                {
                                    swallow.store(true, Ordering::SeqCst);
                                }
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if swallow.load(Ordering::SeqCst) {
                                // Headscale answered; the operator gets a closed connection.
                                count.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        DroppingProxy { url, dropped }
    }
}

/// A registration whose answer was lost (Headscale registered the node, the operator got
/// a closed connection) is not taken for a used auth id: the retry finds the node the
/// first attempt made and records it, so the node is expected.
#[tokio::test]
async fn a_registration_whose_answer_was_lost_finds_its_node() {
    let version = headscale_versions().pop().unwrap();
    let mut hs = start_headscale(&version);
    let proxy = DroppingProxy::start(&hs.url).await;
    hs.url = proxy.url.clone();
    let s = Setup::with("na-lost", hs, json!({})).await;
    let auth_id = s.hs.plant_pending_node("alice", "laptop", &[]);
    s.approve(
        "laptop",
        json!({"registration": {"authId": auth_id, "user": "alice"}, "hostname": "laptop"}),
    )
    .await;
    let na = s.wait_phase("laptop", "Approved", "Registered").await;
    assert_eq!(
        proxy.dropped.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the first answer was swallowed"
    );
    let node = status(&na).node.expect("status.node");
    let nodes = s.hs.client().list_nodes(None).await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].id.to_string(), node.id);
    // Judged once it is older than the audit's settling time: expected.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let inv = s.wait_inventory("the node audited", |i| i.total == 1).await;
    assert_eq!(inv.unexpected, 0, "{inv:?}");
}

/// A per-user quota counts the keys issued and not used yet: approvals filed one after
/// the other cannot each fit in it.
#[tokio::test]
async fn the_quota_counts_keys_not_used_yet() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new(
        "na-quota",
        &version,
        json!({"maxNodesPerUser": 1, "allowReusableKeys": true}),
    )
    .await;
    // A user Headscale does not have: as without a quota.
    s.approve("ghost", json!({"preAuthKey": {"user": "ghost"}})).await;
    s.wait_phase("ghost", "Pending", "UserNotFound").await;
    // One reusable key would let in any number of nodes.
    s.approve("many", json!({"preAuthKey": {"user": "alice", "reusable": true}}))
        .await;
    let na = s.wait_phase("many", "Refused", "EnrollmentRefused").await;
    assert_eq!(status(&na).refused_by.as_deref(), Some("maxNodesPerUser"));
    assert!(s.hs.client().list_pre_auth_keys().await.unwrap().is_empty());
    s.approve(
        "first",
        json!({"preAuthKey": {"user": "alice", "expiration": "6s"}}),
    )
    .await;
    s.wait_phase("first", "KeyIssued", "KeyIssued").await;
    s.approve("second", json!({"preAuthKey": {"user": "alice"}}))
        .await;
    let na = s.wait_phase("second", "Refused", "EnrollmentRefused").await;
    assert_eq!(status(&na).refused_by.as_deref(), Some("maxNodesPerUser"));
    assert_eq!(s.hs.client().list_pre_auth_keys().await.unwrap().len(), 1);
    // Deleting the first approval leaves its key valid on the server: it still counts.
    // Once it expired unused, the second fits (at a resync).
    s.approvals().delete("first", &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.approvals()
            .get("second")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Refused")
    );
    s.wait_phase("second", "KeyIssued", "KeyIssued").await;
}

/// A pending registration Headscale let expire ends its approval once as
/// `AuthIdNotFound`. Headscale keeps one 15 minutes; 0.29's
/// `tuning.register_cache_expiration` makes that 3 s here.
#[tokio::test]
async fn an_expired_auth_id_fails_once() {
    let version = headscale_versions().pop().unwrap();
    let hs = start_headscale(&version);
    if !hs.version.trim_start_matches('v').starts_with("0.29") {
        panic!(
            "this test needs Headscale 0.29 (tuning.register_cache_expiration), not {}",
            hs.version
        );
    }
    hs.stop();
    let config = hs.dir.join("config.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains("\ntuning:"),
        "the test config has a tuning block already"
    );
    text.push_str("\ntuning:\n  register_cache_expiration: 3s\n");
    std::fs::write(&config, text).unwrap();
    hs.restart();
    let s = Setup::with("na-late", hs, json!({})).await;
    let auth_id = s.hs.plant_pending_node("alice", "late", &[]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    s.approve(
        "late",
        json!({"registration": {"authId": auth_id, "user": "alice"}, "hostname": "late"}),
    )
    .await;
    let na = s.wait_phase("late", "Failed", "AuthIdNotFound").await;
    assert!(s.hs.client().list_nodes(None).await.unwrap().is_empty());
    // Terminal: no retries, no further status writes.
    let rv = na.resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.approvals().get("late").await.unwrap().resource_version(), rv);
}

/// The node an approval let in must be the host it claimed: one that registers under
/// another hostname is said on the approval and counted unexpected by the audit, also
/// after the approval's status was written again.
#[tokio::test]
async fn a_node_that_is_not_the_claimed_host_is_unexpected() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-host", &version, json!({"hostnamePatterns": ["web-*"]})).await;
    let auth_id = s.hs.plant_pending_node("alice", "evil", &[]);
    s.approve(
        "web-1",
        json!({"registration": {"authId": auth_id, "user": "alice"}, "hostname": "web-1"}),
    )
    .await;
    let na = s.wait_phase("web-1", "Approved", "HostnameMismatch").await;
    let node = status(&na).node.expect("status.node");
    assert_eq!(node.name, "evil");
    s.wait_event("web-1", "Warning", "HostnameMismatch").await;
    let inv = s
        .wait_inventory("the mismatched node unexpected", |i| i.unexpected == 1)
        .await;
    assert_eq!(inv.unexpected_nodes[0].name, "evil");
    // It stays said: a later reconcile of the record keeps the warning.
    s.approvals()
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.wait_phase("web-1", "Approved", "HostnameMismatch").await;
}

#[tokio::test]
async fn a_rule_violation_is_refused_and_nothing_happens_on_the_server() {
    let rules =
        json!({"allowedUsers": ["alice"], "hostnamePatterns": ["web-*"], "maxPreAuthKeyLifetime": "2h"});
    on_every_version("na-rules", rules, |s| async move {
        s.hs.create_user_with_cli("bob");
        let auth_id = s.hs.plant_pending_node("bob", "web-1", &[]);
        s.approve(
            "bob",
            json!({"registration": {"authId": auth_id, "user": "bob"}, "hostname": "web-1"}),
        )
        .await;
        let na = s.wait_phase("bob", "Refused", "EnrollmentRefused").await;
        assert_eq!(status(&na).refused_by.as_deref(), Some("allowedUsers"));
        let msg = s.wait_event("bob", "Warning", "EnrollmentRefused").await;
        assert!(msg.contains("allowedUsers"), "{msg}");

        let auth2 = s.hs.plant_pending_node("alice", "db-1", &[]);
        s.approve(
            "db",
            json!({"registration": {"authId": auth2, "user": "alice"}, "hostname": "db-1"}),
        )
        .await;
        let na = s.wait_phase("db", "Refused", "EnrollmentRefused").await;
        assert_eq!(status(&na).refused_by.as_deref(), Some("hostnamePatterns"));

        s.approve(
            "reusable",
            json!({"preAuthKey": {"user": "alice", "reusable": true}, "hostname": "web-2"}),
        )
        .await;
        let na = s.wait_phase("reusable", "Refused", "EnrollmentRefused").await;
        assert_eq!(status(&na).refused_by.as_deref(), Some("allowReusableKeys"));
        s.approve(
            "long",
            json!({"preAuthKey": {"user": "alice", "expiration": "3h"}, "hostname": "web-3"}),
        )
        .await;
        let na = s.wait_phase("long", "Refused", "EnrollmentRefused").await;
        assert_eq!(status(&na).refused_by.as_deref(), Some("maxPreAuthKeyLifetime"));

        // Nothing was done: no node, no key, and the refused registrations are still
        // pending (a person with the CLI can still register them).
        let client = s.hs.client();
        assert!(client.list_nodes(None).await.unwrap().is_empty());
        assert!(client.list_pre_auth_keys().await.unwrap().is_empty());
        s.hs.register_with_cli("bob", &auth_id);
        assert_eq!(client.list_nodes(None).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_pre_approved_node_gets_a_single_use_key_in_an_owned_secret() {
    on_every_version("na-key", json!({}), |s| async move {
        s.approve(
            "builder",
            json!({"preAuthKey": {"user": "alice", "expiration": "30m", "secretName": "builder-key"}}),
        )
        .await;
        let na = s.wait_phase("builder", "KeyIssued", "KeyIssued").await;
        let issued = status(&na).pre_auth_key.expect("status.preAuthKey");
        assert_eq!(issued.secret_name, "builder-key");
        let (key, secret) = s.secret_key("builder-key").await;
        assert!(key.starts_with("hskey-auth-") || s.minor() < 28, "a pre-auth key");
        let owner = secret.owner_references().first().cloned().expect("owned");
        assert_eq!(owner.uid, na.uid().unwrap());
        assert_eq!(owner.kind, "NodeApproval");

        let keys = s.hs.client().list_pre_auth_keys().await.unwrap();
        let listed = keys
            .iter()
            .find(|k| k.id.to_string() == issued.id)
            .unwrap_or_else(|| panic!("key {} not on the server: {keys:?}", issued.id));
        assert!(!listed.reusable && !listed.used && !listed.ephemeral);
        let expires = listed.expiration.unwrap();
        let lifetime = expires.duration_since(jiff::Timestamp::now()).as_secs();
        assert!((25 * 60..=30 * 60).contains(&lifetime), "lifetime {lifetime}s");
        assert_eq!(
            issued.expiration.as_ref().map(|t| t.0.as_second()),
            Some(expires.as_second())
        );
        if let Some(masked) = &listed.masked_key {
            let prefix = masked.trim_end_matches("***");
            assert!(key.starts_with(prefix), "the Secret holds the listed key");
        }
        s.wait_event("builder", "Normal", "KeyIssued").await;

        // A tag-only, ephemeral key (0.28+).
        if s.minor() >= 28 {
            s.approve(
                "ci",
                json!({"preAuthKey": {"tags": ["tag:ci"], "ephemeral": true, "expiration": "10m"}}),
            )
            .await;
            let na = s.wait_phase("ci", "KeyIssued", "KeyIssued").await;
            let id = status(&na).pre_auth_key.unwrap().id;
            let keys = s.hs.client().list_pre_auth_keys().await.unwrap();
            let k = keys.iter().find(|k| k.id.to_string() == id).unwrap();
            assert!(k.ephemeral && k.user.is_none());
            assert_eq!(k.acl_tags, ["tag:ci"]);
            let (ci_key, _) = s.secret_key("ci").await;
            assert!(!ci_key.is_empty());
            let objects = vec![serde_json::to_value(&na).unwrap()];
            assert_no_leak(&s.client, &s.ns, &objects, &[&ci_key]).await;
        }

        // The key never appears in the log, an Event or the approval.
        let na = s.approvals().get("builder").await.unwrap();
        let objects = vec![serde_json::to_value(&na).unwrap()];
        assert_no_leak(&s.client, &s.ns, &objects, &[&key]).await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_unused_key_is_expired_and_renewed_only_when_asked() {
    on_every_version("na-exp", json!({}), |s| async move {
        s.approve(
            "once",
            json!({"preAuthKey": {"user": "alice", "expiration": "3s"}}),
        )
        .await;
        s.approve(
            "again",
            json!({"preAuthKey": {"user": "alice", "expiration": "4s", "renew": true}}),
        )
        .await;
        let once = s.wait_phase("once", "KeyIssued", "KeyIssued").await;
        let first = s.wait_phase("again", "KeyIssued", "KeyIssued").await;
        let first_id = status(&first).pre_auth_key.unwrap().id;
        let (first_key, _) = s.secret_key("again").await;

        let na = s.wait_phase("once", "Failed", "KeyExpired").await;
        assert_eq!(
            status(&na).pre_auth_key.map(|k| k.id),
            status(&once).pre_auth_key.map(|k| k.id)
        );
        s.wait_event("once", "Warning", "KeyExpired").await;

        s.wait_event("again", "Normal", "KeyRenewed").await;
        let renewed = s.approvals().get("again").await.unwrap();
        let second_id = status(&renewed).pre_auth_key.unwrap().id;
        assert_ne!(first_id, second_id, "a new key was minted");
        let (second_key, _) = s.secret_key("again").await;
        assert_ne!(first_key, second_key, "the Secret holds the new key");

        let now = jiff::Timestamp::now();
        let keys = s.hs.client().list_pre_auth_keys().await.unwrap();
        let old = keys.iter().find(|k| k.id.to_string() == first_id).unwrap();
        assert!(old.is_expired(now), "the old key is expired on the server");

        let objects = vec![serde_json::to_value(&renewed).unwrap()];
        assert_no_leak(&s.client, &s.ns, &objects, &[&first_key, &second_key]).await;
    })
    .await;
}

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-foreign", &version, json!({})).await;
    create_key_secret(&s.client, &s.ns, "taken", "do-not-touch").await;
    s.approve("taken", json!({"preAuthKey": {"user": "alice"}})).await;
    let na = s.wait_phase("taken", "Pending", "SecretConflict").await;
    let ready = status(&na)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        !ready.message.to_lowercase().contains("delete") && ready.message.contains("secretName"),
        "never invite deleting a Secret the operator does not own: {}",
        ready.message
    );
    let secret = Api::<Secret>::namespaced(s.client.clone(), &s.ns)
        .get("taken")
        .await
        .unwrap();
    assert!(secret.data.unwrap().contains_key("api-key"));
    assert!(s.hs.client().list_pre_auth_keys().await.unwrap().is_empty());
    // Pointing the approval at a free name resolves it.
    s.approvals()
        .patch(
            "taken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"preAuthKey": {"secretName": "taken-key"}}})),
        )
        .await
        .unwrap();
    s.wait_phase("taken", "KeyIssued", "KeyIssued").await;
}

/// What a minted key or a registered node was approved for cannot be edited afterwards
/// (the API server says so), and malformed tags never reach Headscale.
#[tokio::test]
async fn an_approval_cannot_be_edited_into_another() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-immutable", &version, json!({})).await;
    s.approve("builder", json!({"preAuthKey": {"user": "alice"}}))
        .await;
    s.wait_phase("builder", "KeyIssued", "KeyIssued").await;
    let refused = |patch: Value, want: &'static str| {
        let api = s.approvals();
        async move {
            let err = api
                .patch("builder", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect_err("refused");
            assert!(err.to_string().contains(want), "{patch}: {err}");
        }
    };
    refused(json!({"spec": {"preAuthKey": {"reusable": true}}}), "immutable").await;
    refused(json!({"spec": {"preAuthKey": {"user": "bob"}}}), "immutable").await;
    refused(
        json!({"spec": {"preAuthKey": {"expiration": "23h"}}}),
        "immutable",
    )
    .await;
    refused(
        json!({"spec": {"serverRef": {"name": "other"}}}),
        "serverRef is immutable",
    )
    .await;
    refused(
        json!({"spec": {"preAuthKey": null, "registration": {"authId": "abc", "user": "alice"}}}),
        "cannot be swapped",
    )
    .await;
    // Neither set nor changed afterwards, also not together with approved: false (a
    // requester withdrawing a record to rename it over another host).
    refused(json!({"spec": {"hostname": "db-prod"}}), "hostname is immutable").await;
    refused(
        json!({"spec": {"approved": false, "hostname": "db-prod"}}),
        "hostname is immutable",
    )
    .await;
    // Where the key goes and whether to renew it may still change.
    s.approvals()
        .patch(
            "builder",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"preAuthKey": {"renew": true}}})),
        )
        .await
        .unwrap();

    for (name, tags) in [("bad-tag", json!(["not a tag"])), ("empty-tag", json!([""]))] {
        let obj = json!({
            "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval",
            "metadata": {"name": name},
            "spec": {"serverRef": {"name": "corp"}, "preAuthKey": {"tags": tags}},
        });
        let err = s
            .approvals()
            .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
            .await
            .expect_err("malformed tags are refused");
        assert!(err.to_string().contains("tags"), "{err}");
    }
    let obj = json!({
        "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval",
        "metadata": {"name": "nobody"},
        "spec": {"serverRef": {"name": "corp"}, "preAuthKey": {"expiration": "1h"}},
    });
    let err = s
        .approvals()
        .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
        .await
        .expect_err("a key for nobody is refused");
    assert!(
        err.to_string()
            .contains("preAuthKey needs a user or at least one tag"),
        "{err}"
    );
    assert!(!err.to_string().contains("no such key"), "{err}");
}

// ---------------------------------------------------------------------------------
// Inventory, audit and pruning

#[tokio::test]
async fn inventory_matches_headscale_and_unexpected_nodes_are_reported_then_expired() {
    on_every_version("na-inv", json!({}), |s| async move {
        let auth_id = s.hs.plant_pending_node("alice", "approved", &[]);
        s.approve(
            "approved",
            json!({"registration": {"authId": auth_id, "user": "alice"}}),
        )
        .await;
        let na = s.wait_phase("approved", "Approved", "Registered").await;
        let approved_id = status(&na).node.unwrap().id;
        // Two nodes registered by hand, behind the operator's back.
        let rogue: Vec<String> = ["rogue-1", "rogue-2"]
            .iter()
            .map(|n| s.hs.create_fake_node("alice", n, &[]).to_string())
            .collect();

        let inv = s
            .wait_inventory("3 nodes, 2 unexpected", |i| i.total == 3 && i.unexpected == 2)
            .await;
        let listed = s.hs.client().list_nodes(None).await.unwrap();
        let now = jiff::Timestamp::now();
        assert_eq!(inv.total, listed.len() as i64);
        assert_eq!(inv.online, listed.iter().filter(|n| n.online).count() as i64);
        assert_eq!(
            inv.expired,
            listed.iter().filter(|n| n.expiry.is_expired(now)).count() as i64
        );
        let mut reported: Vec<String> = inv.unexpected_nodes.iter().map(|n| n.id.clone()).collect();
        reported.sort();
        assert_eq!(reported, rogue);
        assert!(!reported.contains(&approved_id));
        let msg = s.wait_event("corp", "Warning", "UnexpectedNode").await;
        assert!(msg.contains("rogue-"), "{msg}");
        wait_for("one UnexpectedNode Event per rogue node", WAIT, || async {
            let n = s.count_events("UnexpectedNode").await;
            if n == 2 { Ok(()) } else { Err(n.to_string()) }
        })
        .await;
        let notes: Vec<String> = events(&s.client, &s.ns)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("UnexpectedNode"))
            .filter_map(|e| e.message)
            .collect();
        assert!(notes.iter().all(|m| !m.contains("(approved")), "{notes:?}");
        // Report only: nothing was expired.
        assert!(listed.iter().all(|n| !n.expiry.is_expired(now)));

        s.set_nodes_spec(json!({"unexpected": "Expire"})).await;
        wait_for("the unexpected nodes expired", WAIT, || async {
            let nodes = s.hs.client().list_nodes(None).await.map_err(|e| e.to_string())?;
            let now = jiff::Timestamp::now();
            let expired: Vec<String> = nodes
                .iter()
                .filter(|n| n.expiry.is_expired(now))
                .map(|n| n.id.to_string())
                .collect();
            let mut expired = expired;
            expired.sort();
            if expired == rogue {
                Ok(())
            } else {
                Err(format!("{expired:?}"))
            }
        })
        .await;
        s.wait_event("corp", "Normal", "NodeExpired").await;
        s.wait_inventory("2 expired", |i| i.expired == 2 && i.total == 3)
            .await;
    })
    .await;
}

#[tokio::test]
async fn stale_nodes_are_pruned_with_dry_run_cap_and_exclusions() {
    on_every_version("na-prune", json!({}), |s| async move {
        let client = s.hs.client();
        client
            .set_policy(r#"{"tagOwners": {"tag:keep": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#)
            .await
            .unwrap();
        let ids = s.hs.create_fake_nodes("alice", "old", 5, 5);
        let keep = ids[0];
        client
            .set_tags(headscale_operator::headscale::NodeId(keep), &["tag:keep".to_string()])
            .await
            .unwrap();
        // Fake nodes are never online and were last seen at registration: stale after 1s.
        s.set_nodes_spec(json!({"pruning": {
            "enabled": true, "dryRun": true, "staleAfter": "1s", "restartGrace": "0s",
            "maxDeletionsPerRun": 2, "excludeTags": ["tag:keep"],
        }}))
        .await;
        let inv = s
            .wait_inventory("4 prune candidates", |i| i.prune_candidates.len() == 4)
            .await;
        assert_eq!(inv.stale, 5);
        assert!(inv.prune_candidates.iter().all(|n| n.id != keep.to_string()));
        // Dry run: a few audits later nothing is deleted.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(client.list_nodes(None).await.unwrap().len(), 5);
        assert_eq!(s.count_events("NodePruned").await, 0);

        s.set_nodes_spec(json!({"pruning": {"dryRun": false}})).await;
        // Watch the count fall: never more than 2 per audit, down to the excluded node.
        let mut seen = vec![5usize];
        let start = std::time::Instant::now();
        loop {
            let n = client.list_nodes(None).await.unwrap().len();
            if n != *seen.last().unwrap() {
                seen.push(n);
            }
            if n == 1 || start.elapsed() > WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(*seen.last().unwrap(), 1, "counts seen: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] - w[1] <= 2), "more than the cap in one run: {seen:?}");
        let left = client.list_nodes(None).await.unwrap();
        assert_eq!(left[0].id.0, keep, "the excluded node stays");
        wait_for("4 NodePruned Events", WAIT, || async {
            let n = s.count_events("NodePruned").await;
            if n == 4 { Ok(()) } else { Err(n.to_string()) }
        })
        .await;
        let msg = s.wait_event("corp", "Normal", "NodePruned").await;
        assert!(msg.contains("stale") && msg.contains("old-"), "{msg}");
    })
    .await;
}

#[tokio::test]
async fn nothing_is_pruned_in_the_grace_period_after_a_restart() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-grace", &version, json!({})).await;
    let client = s.hs.client();
    s.hs.create_fake_nodes("alice", "old", 2, 2);
    s.set_nodes_spec(json!({"pruning": {
        "enabled": true, "dryRun": false, "staleAfter": "1s", "restartGrace": "12s",
    }}))
    .await;
    // The operator has just begun auditing this server: held.
    let inv = s
        .wait_inventory("pruning held", |i| i.pruning_held.is_some())
        .await;
    assert!(inv.pruning_held.unwrap().contains("restart grace"));
    assert_eq!(client.list_nodes(None).await.unwrap().len(), 2);
    wait_for("pruned after the grace period", WAIT, || async {
        let n = client.list_nodes(None).await.map_err(|e| e.to_string())?.len();
        if n == 0 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;

    // Headscale restarts (the server is seen down, then Ready again): held again, so
    // nodes that look stale right after the restart are kept for the grace period.
    s.hs.stop();
    s.wait_server_ready("False").await;
    s.hs.restart();
    s.wait_server_ready("True").await;
    s.hs.create_fake_nodes("alice", "again", 2, 2);
    s.wait_inventory("pruning held after the restart", |i| {
        i.pruning_held.is_some() && i.total == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        client.list_nodes(None).await.unwrap().len(),
        2,
        "kept in the grace period"
    );
    wait_for("pruned after the grace period", WAIT, || async {
        let n = client.list_nodes(None).await.map_err(|e| e.to_string())?.len();
        if n == 0 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Who may approve (the chart's ValidatingAdmissionPolicy)

/// A client that acts as `user` in `groups` (the admin impersonates them).
async fn client_as(user: &str, groups: &[&str]) -> Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn only_approvers_approve_others_request() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-vap", &version, json!({})).await;
    // Both may edit NodeApprovals as far as RBAC goes; the policy tells them apart.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "approvals"},
        "rules": [{"apiGroups": ["headscale.operator.dev"], "resources": ["nodeapprovals"],
                   "verbs": ["get", "create", "patch", "update"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "approvals"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approvals"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "vera"},
        ],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let mallory: Api<NodeApproval> = Api::namespaced(client_as("mallory", &["developers"]).await, &s.ns);
    let vera: Api<NodeApproval> = Api::namespaced(client_as("vera", &["headscale-approvers"]).await, &s.ns);
    let approval = |name: &str, approved: bool| -> NodeApproval {
        serde_json::from_value(json!({
            "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "NodeApproval",
            "metadata": {"name": name},
            "spec": {"serverRef": {"name": "corp"}, "approved": approved,
                     "preAuthKey": {"user": "alice", "expiration": "10m"}},
        }))
        .unwrap()
    };

    // A developer cannot approve on their own.
    let err = mallory
        .create(&PostParams::default(), &approval("self", true))
        .await
        .expect_err("a non-approver created an approved NodeApproval");
    assert!(err.to_string().contains("may approve nodes"), "{err}");
    // The policy also applies to approvals that do not say `approved` (it defaults to true).
    let mut implicit = serde_json::to_value(approval("implicit", true)).unwrap();
    implicit["spec"].as_object_mut().unwrap().remove("approved");
    let implicit: NodeApproval = serde_json::from_value(implicit).unwrap();
    assert!(mallory.create(&PostParams::default(), &implicit).await.is_err());

    // They may file a request; nothing happens on the server.
    mallory
        .create(&PostParams::default(), &approval("laptop", false))
        .await
        .unwrap();
    s.wait_phase("laptop", "Requested", "AwaitingApproval").await;
    assert!(s.hs.client().list_pre_auth_keys().await.unwrap().is_empty());
    let approve = Patch::Merge(json!({"spec": {"approved": true}}));
    let err = mallory
        .patch("laptop", &PatchParams::default(), &approve)
        .await
        .expect_err("a non-approver approved a request");
    assert!(err.to_string().contains("may approve nodes"), "{err}");

    // An approver approves it: the operator mints the key.
    vera.patch("laptop", &PatchParams::default(), &approve)
        .await
        .unwrap();
    s.wait_phase("laptop", "KeyIssued", "KeyIssued").await;
    assert_eq!(s.hs.client().list_pre_auth_keys().await.unwrap().len(), 1);

    // Metadata stays editable for the requester; the approved spec does not.
    mallory
        .patch(
            "laptop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    assert!(
        mallory
            .patch(
                "laptop",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"preAuthKey": {"renew": true}}})),
            )
            .await
            .is_err()
    );

    // Withdrawing the approval does not let a requester renew: setting `approved: false`
    // with `renew: true` on an approved record mints nothing until an approver says so.
    let mut short = serde_json::to_value(approval("short", true)).unwrap();
    short["spec"]["preAuthKey"]["expiration"] = json!("3s");
    let short: NodeApproval = serde_json::from_value(short).unwrap();
    vera.create(&PostParams::default(), &short).await.unwrap();
    let issued = s.wait_phase("short", "KeyIssued", "KeyIssued").await;
    let first = status(&issued).pre_auth_key.unwrap().id;
    mallory
        .patch(
            "short",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"approved": false, "preAuthKey": {"renew": true}}})),
        )
        .await
        .expect("a requester may withdraw an approval");
    // The 3 s key may expire before the withdrawal is seen (a loaded machine): wait for
    // the status that has seen it, not for the first KeyExpired.
    wait_for("the expired key waits for an approver", WAIT, || async {
        let expired = s.wait_phase("short", "Failed", "KeyExpired").await;
        let message = status(&expired)
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message;
        if message.contains("waits for an approver") {
            Ok(())
        } else {
            Err(message)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.hs.client().list_pre_auth_keys().await.unwrap().len(),
        2,
        "no key was minted for the withdrawn approval"
    );
    vera.patch("short", &PatchParams::default(), &approve)
        .await
        .unwrap();
    s.wait_event("short", "Normal", "KeyRenewed").await;
    let renewed = s.approvals().get("short").await.unwrap();
    assert_ne!(status(&renewed).pre_auth_key.unwrap().id, first);
}

/// A decision service on 127.0.0.1 with a self-signed certificate: it allows approvals
/// named `allow-*`, denies `deny-*` with a reason, and answers `slow-*` too late. It is
/// the user's system the webhook calls, not a stand-in for a part of ours.
struct DecisionService {
    url: String,
    ca: String,
    reviews: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl DecisionService {
    async fn start() -> DecisionService {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir_in(run_dir()).unwrap().keep();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        // A CA and a server certificate it signs (webpki refuses a CA as the server's).
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=hsop-test-ca",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/decide",
            listener.local_addr().unwrap().port()
        );
        let reviews = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let seen = reviews.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let Ok(n) = tls.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break buf[end + 4..end + 4 + len].to_vec();
                            }
                        }
                    };
                    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let name = review["request"]["approval"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let asked_before = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen
                            .iter()
                            .filter(|r| r["request"]["approval"]["name"] == name.as_str())
                            .count();
                        seen.push(review);
                        n
                    };
                    // `ticket-*`: the ticket is approved after the first ask.
                    let answer =
                        if name.starts_with("allow") || (name.starts_with("ticket") && asked_before > 0) {
                            json!({"allowed": true})
                        } else if name.starts_with("slow") {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            json!({"allowed": true})
                        } else {
                            json!({"allowed": false, "reason": "ticket INC-42 is not approved"})
                        };
                    let body = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        DecisionService { url, ca, reviews }
    }
}

#[tokio::test]
async fn the_decision_webhook_allows_denies_and_a_timeout_denies() {
    let service = DecisionService::start().await;
    let version = headscale_versions().pop().unwrap();
    let rules = json!({"decisionWebhook": {"url": service.url, "caBundle": service.ca, "timeoutSeconds": 2}});
    let s = Setup::new("na-webhook", &version, rules).await;

    s.approve(
        "allow-ci",
        json!({"preAuthKey": {"user": "alice"}, "hostname": "ci-1"}),
    )
    .await;
    s.wait_phase("allow-ci", "KeyIssued", "KeyIssued").await;
    let reviews = service.reviews.lock().unwrap().clone();
    let review = reviews
        .iter()
        .find(|r| r["request"]["approval"]["name"] == "allow-ci")
        .expect("the webhook was asked");
    assert_eq!(review["kind"], "EnrollmentReview");
    assert_eq!(review["request"]["form"], "preAuthKey");
    assert_eq!(review["request"]["user"], "alice");
    assert_eq!(review["request"]["hostname"], "ci-1");
    assert_eq!(review["request"]["server"]["name"], "corp");
    assert_eq!(review["request"]["preAuthKey"]["reusable"], false);

    let auth_id = s.hs.plant_pending_node("alice", "laptop", &[]);
    s.approve(
        "deny-laptop",
        json!({"registration": {"authId": auth_id, "user": "alice"}}),
    )
    .await;
    let na = s.wait_phase("deny-laptop", "Refused", "EnrollmentRefused").await;
    assert_eq!(status(&na).refused_by.as_deref(), Some("decisionWebhook"));
    let msg = na
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("ticket INC-42 is not approved"), "{msg}");

    s.approve("slow-box", json!({"preAuthKey": {"user": "alice"}}))
        .await;
    let na = s.wait_phase("slow-box", "Refused", "EnrollmentRefused").await;
    let msg = na
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("did not answer within 2s"), "{msg}");

    // Denied and timed-out approvals did nothing on the server: one key (allow-ci),
    // no node; the denied registration is still pending.
    let client = s.hs.client();
    assert_eq!(client.list_pre_auth_keys().await.unwrap().len(), 1);

    // A refusal is asked again at the resync: a ticket approved later lets the node in.
    s.approve("ticket-box", json!({"preAuthKey": {"user": "alice"}}))
        .await;
    s.wait_phase("ticket-box", "KeyIssued", "KeyIssued").await;
    let asked = service
        .reviews
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["request"]["approval"]["name"] == "ticket-box")
        .count();
    assert!(asked >= 2, "the webhook was asked {asked} times");
    s.wait_event("ticket-box", "Warning", "EnrollmentRefused").await;
    assert!(client.list_nodes(None).await.unwrap().is_empty());
    s.hs.register_with_cli("alice", &auth_id);
}

/// Tags that cannot be applied never leave an untagged node of the user behind (it
/// would have the user's access): refused before registering when the served policy
/// does not own them, and the node deleted when Headscale refuses them afterwards.
#[tokio::test]
async fn tags_nobody_owns_let_no_untagged_node_in() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-tags", &version, json!({})).await;
    s.hs.client()
        .set_policy(r#"{"tagOwners": {"tag:ci": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#)
        .await
        .unwrap();
    let auth_id = s.hs.plant_pending_node("alice", "tagged", &[]);
    s.approve(
        "tagged",
        json!({"registration": {"authId": auth_id, "user": "alice", "tags": ["tag:nobodyowns"]}}),
    )
    .await;
    let na = s.wait_phase("tagged", "Pending", "TagsRejected").await;
    assert!(status(&na).node.is_none());
    assert!(
        s.hs.client().list_nodes(None).await.unwrap().is_empty(),
        "nothing registered"
    );
}

/// Two HeadscaleServer objects pointing at the same Headscale each see the other's
/// approved nodes as unexpected: neither audit acts, both say why.
#[tokio::test]
async fn a_shared_endpoint_holds_the_audit() {
    let version = headscale_versions().pop().unwrap();
    let s = Setup::new("na-shared", &version, json!({})).await;
    let auth_id = s.hs.plant_pending_node("alice", "laptop", &[]);
    s.approve(
        "laptop",
        json!({"registration": {"authId": auth_id, "user": "alice"}}),
    )
    .await;
    s.wait_phase("laptop", "Approved", "Registered").await;
    // The same Headscale by another URL: only its instance key tells.
    let alias = s.hs.url.replace("127.0.0.1", "localhost");
    assert_ne!(alias, s.hs.url);
    let twin: headscale_operator::api::HeadscaleServer = serde_json::from_value(json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "HeadscaleServer",
        "metadata": {"name": "twin"},
        "spec": {
            "external": {"url": alias, "apiKeySecretRef": {"name": "key"}},
            "nodes": {"unexpected": "Delete", "pruning": {"restartGrace": "0"}},
        },
    }))
    .unwrap();
    let servers = Api::<headscale_operator::api::HeadscaleServer>::namespaced(s.client.clone(), &s.ns);
    servers.create(&PostParams::default(), &twin).await.unwrap();
    let note = s.wait_event("twin", "Warning", "SharedEndpoint").await;
    assert!(note.contains("corp"), "{note}");
    // Past the 15 s in which a new node is not judged, at a 2 s resync.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        s.hs.client().list_nodes(None).await.unwrap().len(),
        1,
        "the twin's audit deleted nothing"
    );
    let twin_nodes = servers.get("twin").await.unwrap().status.and_then(|st| st.nodes);
    let corp_nodes = servers.get("corp").await.unwrap().status.and_then(|st| st.nodes);
    let key = |n: &Option<headscale_operator::api::server::NodeInventory>| {
        n.as_ref().and_then(|n| n.instance_key.clone())
    };
    assert!(
        key(&twin_nodes).is_some_and(|k| k.starts_with("mkey:")),
        "{twin_nodes:?}"
    );
    assert_eq!(
        key(&twin_nodes),
        key(&corp_nodes),
        "one Headscale, one instance key"
    );
    let held = twin_nodes.and_then(|n| n.pruning_held).unwrap_or_default();
    assert!(
        held.contains("same endpoint or same instance key") && held.contains("corp"),
        "{held}"
    );
    servers.delete("twin", &Default::default()).await.unwrap();
}
