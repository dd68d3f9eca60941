//! Contract tests: the Headscale client against real Headscale servers of every
//! version in `HSOP_HEADSCALE_BINS` (v0.27.1, v0.28.0, v0.29.2), each scenario on
//! fresh servers started by `e2e/headscale.sh`. Fake nodes come from the CLI
//! (`debug create-node` + registration, reference §7.4). Run through `make test`, or
//! `eval "$(e2e/tools.sh env)"; HSOP_E2E_DIR=$(mktemp -d) cargo test --test headscale_client`.
//!
//! Tests named `trap_NN_…` prove the reference's trap NN on the real server and show
//! how the client handles it. Faults a real server cannot produce on demand are in
//! `src/headscale/faults.rs`.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use headscale_operator::headscale::{
    ApiKeyRef, ApiShape, Client, Error, ExpiryChange, NodeExpiry, NodeId, PreAuthKeySpec,
    TAGGED_DEVICES_USER, UserId, Version,
};
use headscale_operator::secret::SecretString;
use jiff::{SignedDuration, Timestamp};
use support::*;

/// Runs `scenario` against a fresh server of every built version, concurrently, and
/// fails naming every version that failed.
async fn on_every_version<F, Fut>(scenario: F)
where
    F: Fn(Arc<Headscale>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let versions = headscale_versions();
    assert!(!versions.is_empty(), "HSOP_HEADSCALE_BINS names no version");
    let mut tasks = Vec::new();
    for version in versions {
        let v = version.clone();
        let hs = tokio::task::spawn_blocking(move || Arc::new(Headscale::start(&v)))
            .await
            .expect("starting headscale");
        tasks.push((version, tokio::spawn(scenario(hs))));
    }
    let mut failed = Vec::new();
    for (version, task) in tasks {
        if let Err(e) = task.await {
            let why = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "cancelled".into());
            failed.push(format!("{version}: {why}"));
        }
    }
    assert!(failed.is_empty(), "failed on:\n{}", failed.join("\n"));
}

fn minor(hs: &Headscale) -> u64 {
    Version::parse(&hs.version).unwrap().minor
}

fn in_hours(h: i64) -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(h)
}

/// `reason()` of the error, or "Ok".
fn reason<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.reason(),
    }
}

fn message<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => e.to_string(),
    }
}

/// A raw authenticated request, to show what the server does with shapes the client
/// never sends. Returns the status and body.
async fn raw(
    hs: &Headscale,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path_and_query}", hs.url))
        .bearer_auth(&hs.api_key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("raw request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

const TAG_POLICY: &str = r#"{
  // HuJSON: comments and trailing commas are fine.
  "tagOwners": {"tag:web": ["alice@"], "tag:db": ["alice@"],},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn version_health_and_shape() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let info = c.version().await.unwrap();
        assert_eq!(info.version, hs.version);
        let v = c.supported_version().await.unwrap();
        assert_eq!(v.to_string(), hs.version);
        let (cached, shape) = c.api_shape().await.unwrap();
        assert_eq!((cached, shape), (v.clone(), ApiShape::for_version(&v)));
        assert!(c.health().await.unwrap().database_connectivity);
        c.check_api_key().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn the_instance_key_is_the_same_by_any_url_and_needs_no_api_key() {
    on_every_version(|hs| async move {
        let key = hs.client().instance_key().await.unwrap();
        assert!(key.starts_with("mkey:") && key.len() == 69, "{key}");
        // Another URL of the same server, and a client without a working API key.
        let alias = hs.url.replace("127.0.0.1", "localhost");
        let other = Client::new(&alias, SecretString::new("hskey-api-xxxxxxxxxxxx-yyyy")).unwrap();
        assert_eq!(other.instance_key().await.unwrap(), key);
        // Without a capability version the server refuses (400), so the client sends one.
        let plain = reqwest::get(format!("{}/key", hs.url)).await.unwrap();
        assert_eq!(plain.status().as_u16(), 400);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_wrong_key_is_unauthorized() {
    on_every_version(|hs| async move {
        let bad = Client::new(&hs.url, SecretString::new("hskey-api-xxxxxxxxxxxx-yyyy")).unwrap();
        let r = bad.list_users().await;
        assert_eq!(reason(&r), "ApiKeyRejected");
        assert!(!r.unwrap_err().is_transient());
        assert_eq!(reason(&bad.check_api_key().await), "ApiKeyRejected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn users_lifecycle() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let alice = c.create_user("alice").await.unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.created_at.is_some());

        let dup = c.create_user("alice").await;
        assert_eq!(reason(&dup), "Conflict", "{}", message(dup));
        // 0.27–0.29 would create a user named after its id.
        assert_eq!(reason(&c.create_user(" ").await), "InvalidInput");
        // The reference's name rules (2+ characters, a letter first, no spaces, one
        // `@`) are not enforced by 0.27–0.29: callers must validate names themselves.
        for odd in ["a", "1st", "a b", "x@y@z", "-x"] {
            assert_eq!(c.create_user(odd).await.unwrap().name, odd);
        }

        assert!(c.list_users().await.unwrap().iter().any(|u| u.id == alice.id));
        assert_eq!(c.find_user("alice").await.unwrap().map(|u| u.id), Some(alice.id));
        assert_eq!(c.find_user("nobody").await.unwrap(), None);

        hs.create_fake_node("alice", "laptop", &[]);
        let busy = c.delete_user(alice.id).await;
        assert_eq!(reason(&busy), "Conflict", "{}", message(busy));
        assert_eq!(reason(&c.delete_user(UserId(9999)).await), "NotFound");

        let bob = c.create_user("bob").await.unwrap();
        c.delete_user(bob.id).await.unwrap();
        assert_eq!(c.find_user("bob").await.unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn nodes_lifecycle() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let id1 = NodeId(hs.create_fake_node("alice", "node-1", &["10.1.0.0/24"]));
        let id2 = NodeId(hs.create_fake_node("alice", "node-2", &[]));

        let all = c.list_nodes(None).await.unwrap();
        assert_eq!(all.iter().map(|n| n.id).collect::<Vec<_>>(), [id1, id2]);
        assert_eq!(c.list_nodes(Some("alice")).await.unwrap().len(), 2);
        assert_eq!(reason(&c.list_nodes(Some("nobody")).await), "NotFound");

        let n1 = c.get_node(id1).await.unwrap();
        assert_eq!((n1.name.as_str(), n1.given_name.as_str()), ("node-1", "node-1"));
        assert_eq!(n1.user.as_ref().map(|u| u.name.as_str()), Some("alice"));
        assert_eq!(n1.register_method, "REGISTER_METHOD_CLI");
        assert_eq!(n1.expiry, NodeExpiry::Never);
        assert!(!n1.online && !n1.ephemeral && !n1.is_tagged());
        assert!(!n1.ip_addresses.is_empty() && n1.last_seen.is_some());
        assert_eq!(reason(&c.get_node(NodeId(9999)).await), "NotFound");

        // Rename.
        let renamed = c.rename_node(id1, "web-1").await.unwrap();
        assert_eq!(renamed.given_name, "web-1");
        let bad = c.rename_node(id1, "bad name").await;
        assert_eq!(reason(&bad), "InvalidInput", "{}", message(bad));
        assert_eq!(reason(&c.rename_node(NodeId(9999), "abc").await), "NotFound");

        // Routes: the list replaces the approved set.
        let routed = c.approve_routes(id1, &["10.1.0.0/24".into()]).await.unwrap();
        assert_eq!(routed.approved_routes, ["10.1.0.0/24"]);
        let bad = c.approve_routes(id1, &["bogus".into()]).await;
        assert_eq!(reason(&bad), "InvalidInput", "{}", message(bad));
        assert!(
            c.approve_routes(id1, &[])
                .await
                .unwrap()
                .approved_routes
                .is_empty()
        );
        assert_eq!(reason(&c.approve_routes(NodeId(9999), &[]).await), "NotFound");

        // Expiry: a date, never, now.
        let at: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            c.expire_node(id2, ExpiryChange::At(at)).await.unwrap().expiry,
            NodeExpiry::At(at)
        );
        assert_eq!(c.get_node(id2).await.unwrap().expiry, NodeExpiry::At(at));
        assert_eq!(
            c.expire_node(id2, ExpiryChange::Disable).await.unwrap().expiry,
            NodeExpiry::Never
        );
        assert_eq!(c.get_node(id2).await.unwrap().expiry, NodeExpiry::Never);
        let before = Timestamp::now() - SignedDuration::from_secs(5);
        let expired = c.expire_node(id2, ExpiryChange::Now).await.unwrap();
        match expired.expiry {
            NodeExpiry::At(t) => assert!(t >= before && t <= Timestamp::now(), "{t}"),
            NodeExpiry::Never => panic!("expire now left the node without expiry"),
        }
        assert!(expired.expiry.is_expired(Timestamp::now()));
        assert_eq!(
            reason(&c.expire_node(NodeId(9999), ExpiryChange::Now).await),
            "NotFound"
        );

        // Delete.
        c.delete_node(id2).await.unwrap();
        assert_eq!(reason(&c.get_node(id2).await), "NotFound");
        assert_eq!(reason(&c.delete_node(id2).await), "NotFound");
        assert_eq!(c.list_nodes(None).await.unwrap().len(), 1);
    })
    .await;
}

/// Both registration forms: `auth/register` (0.29+) and `node/register` (before).
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn registering_pending_nodes() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let auth_id = hs.plant_pending_node("alice", "desk", &[]);
        let node = c.register_node(&auth_id, "alice").await.unwrap();
        assert_eq!(node.name, "desk");
        assert_eq!(node.user.as_ref().map(|u| u.name.as_str()), Some("alice"));
        assert_eq!(
            c.get_node(node.id).await.unwrap().register_method,
            "REGISTER_METHOD_CLI"
        );

        // Used up, unknown, malformed, unknown user.
        let again = c.register_node(&auth_id, "alice").await;
        assert_eq!(reason(&again), "NotFound", "{}", message(again));
        assert_eq!(
            reason(&c.register_node(&hs.new_auth_id(), "alice").await),
            "NotFound"
        );
        let malformed = c.register_node("short", "alice").await;
        assert_eq!(reason(&malformed), "InvalidInput", "{}", message(malformed));
        let pending = hs.plant_pending_node("alice", "desk-2", &[]);
        assert_eq!(reason(&c.register_node(&pending, "nobody").await), "NotFound");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn pre_auth_keys_lifecycle() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let alice = c.create_user("alice").await.unwrap();
        let expiration = in_hours(1);
        let spec = |user, tags: &[&str], reusable, ephemeral| PreAuthKeySpec {
            user,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            reusable,
            ephemeral,
            expiration,
        };

        let owned = c
            .create_pre_auth_key(&spec(Some(alice.id), &[], true, false))
            .await
            .unwrap();
        assert!(owned.key.expose().len() >= 40);
        if minor(&hs) >= 28 {
            assert!(owned.key.expose().starts_with("hskey-auth-"));
        }
        assert_eq!(owned.info.user.as_ref().map(|u| u.id), Some(alice.id));
        assert!(owned.info.reusable && !owned.info.ephemeral && !owned.info.used);
        // Trap 1: the expiration sent is the one stored.
        assert_eq!(
            owned.info.expiration.map(|t| t.as_second()),
            Some(expiration.as_second())
        );

        let ephemeral = c
            .create_pre_auth_key(&spec(Some(alice.id), &["tag:web"], false, true))
            .await
            .unwrap();
        assert!(ephemeral.info.ephemeral);
        assert_eq!(ephemeral.info.acl_tags, ["tag:web"]);

        let tag_only = c
            .create_pre_auth_key(&spec(None, &["tag:web"], false, false))
            .await;
        if minor(&hs) >= 28 {
            let k = tag_only.unwrap();
            assert_eq!(
                (k.info.user.clone(), k.info.acl_tags.clone()),
                (None, vec!["tag:web".to_string()])
            );
        } else {
            assert_eq!(reason(&tag_only), "UnsupportedOperation");
        }
        let neither = c.create_pre_auth_key(&spec(None, &[], false, false)).await;
        let want = if minor(&hs) >= 28 {
            "InvalidInput"
        } else {
            "UnsupportedOperation"
        };
        assert_eq!(reason(&neither), want, "{}", message(neither));
        let bad_tag = c
            .create_pre_auth_key(&spec(Some(alice.id), &["web"], false, false))
            .await;
        assert_eq!(reason(&bad_tag), "InvalidInput", "{}", message(bad_tag));
        assert_eq!(
            reason(
                &c.create_pre_auth_key(&spec(Some(UserId(9999)), &[], false, false))
                    .await
            ),
            "NotFound"
        );

        // Listed without the key (masked on 0.28+; 0.27 lists full keys, the client drops them).
        let listed = c.list_pre_auth_keys().await.unwrap();
        let mine = listed.iter().find(|k| k.id == owned.info.id).unwrap();
        assert!(!mine.is_expired(Timestamp::now()));
        assert!(!format!("{listed:?}").contains(&owned.key.expose()[20..]));
        if minor(&hs) >= 28 {
            let masked = mine.masked_key.clone().unwrap();
            assert!(
                owned.key.expose().starts_with(masked.trim_end_matches("***")),
                "{masked}"
            );
        } else {
            assert_eq!(mine.masked_key, None);
        }

        // Expire: by id on 0.28+, by user and key (found through the listing) on 0.27.
        c.expire_pre_auth_key(owned.info.id).await.unwrap();
        let after = c.list_pre_auth_keys().await.unwrap();
        assert!(
            after
                .iter()
                .find(|k| k.id == owned.info.id)
                .unwrap()
                .is_expired(Timestamp::now())
        );
        assert!(
            !after
                .iter()
                .find(|k| k.id == ephemeral.info.id)
                .unwrap()
                .is_expired(Timestamp::now())
        );
        // An unknown id: 0.28–0.29 answer success, 0.27 (through the listing) NotFound.
        let unknown = c
            .expire_pre_auth_key(headscale_operator::headscale::PreAuthKeyId(9999))
            .await;
        assert_eq!(reason(&unknown), if minor(&hs) >= 28 { "Ok" } else { "NotFound" });

        // Delete (0.28+).
        let deleted = c.delete_pre_auth_key(ephemeral.info.id).await;
        if minor(&hs) >= 28 {
            deleted.unwrap();
            assert!(
                !c.list_pre_auth_keys()
                    .await
                    .unwrap()
                    .iter()
                    .any(|k| k.id == ephemeral.info.id)
            );
        } else {
            assert_eq!(reason(&deleted), "UnsupportedOperation");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn api_keys_lifecycle() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let using = |key: &SecretString| Client::new(&hs.url, key.clone()).unwrap();

        // Create, list, use.
        let first = c.create_api_key(in_hours(2)).await.unwrap();
        let listed = c.list_api_keys().await.unwrap();
        let entry = listed
            .iter()
            .find(|k| k.prefix == first.prefix)
            .expect("the new key is listed by its prefix");
        assert!(!entry.is_expired(Timestamp::now()));
        assert!(!format!("{listed:?}").contains(first.key.expose()));
        using(&first.key).list_users().await.unwrap();

        // Expire by id (0.27: resolved to the prefix; it ignores an id).
        c.expire_api_key(&ApiKeyRef::Id(entry.id)).await.unwrap();
        assert_eq!(reason(&using(&first.key).list_users().await), "ApiKeyRejected");
        let expired = c.list_api_keys().await.unwrap();
        assert!(
            expired
                .iter()
                .find(|k| k.id == entry.id)
                .unwrap()
                .is_expired(Timestamp::now())
        );

        // Expire by prefix.
        let second = c.create_api_key(in_hours(2)).await.unwrap();
        using(&second.key).check_api_key().await.unwrap();
        c.expire_api_key(&ApiKeyRef::Prefix(second.prefix.clone()))
            .await
            .unwrap();
        assert_eq!(
            reason(&using(&second.key).check_api_key().await),
            "ApiKeyRejected"
        );

        // Delete by id and by prefix.
        c.delete_api_key(&ApiKeyRef::Id(entry.id)).await.unwrap();
        c.delete_api_key(&ApiKeyRef::Prefix(second.prefix.clone()))
            .await
            .unwrap();
        let left = c.list_api_keys().await.unwrap();
        assert!(
            !left.iter().any(|k| k.id == entry.id || k.prefix == second.prefix),
            "{left:?}"
        );
        assert_eq!(left.len(), 1, "only the test's own key is left: {left:?}");

        // Unknown keys.
        assert_eq!(
            reason(
                &c.expire_api_key(&ApiKeyRef::Id(headscale_operator::headscale::ApiKeyId(9999)))
                    .await
            ),
            "NotFound"
        );
        assert_eq!(
            reason(&c.expire_api_key(&ApiKeyRef::Prefix("nope".into())).await),
            "NotFound"
        );
        assert_eq!(
            reason(&c.delete_api_key(&ApiKeyRef::Prefix("nope".into())).await),
            "NotFound"
        );
        assert_eq!(
            reason(
                &c.delete_api_key(&ApiKeyRef::Id(headscale_operator::headscale::ApiKeyId(9999)))
                    .await
            ),
            "NotFound"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn policy_lifecycle() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        assert_eq!(c.get_policy().await.unwrap(), None);

        let invalid = r#"{"bogus": 1}"#;
        let checked = c.check_policy(TAG_POLICY).await;
        let checked_bad = c.check_policy(invalid).await;
        if minor(&hs) >= 29 {
            checked.unwrap();
            assert_eq!(reason(&checked_bad), "PolicyRejected");
            assert!(message(checked_bad).contains("bogus"));
        } else {
            // 0.27–0.28 have no policy/check: refused before sending.
            assert_eq!(reason(&checked), "UnsupportedOperation");
            assert_eq!(reason(&checked_bad), "UnsupportedOperation");
        }

        let rejected = c.set_policy(invalid).await;
        assert_eq!(reason(&rejected), "PolicyRejected");
        assert!(message(rejected).contains("bogus"));
        assert_eq!(
            c.get_policy().await.unwrap(),
            None,
            "a rejected policy changed the server"
        );

        let stored = c.set_policy(TAG_POLICY).await.unwrap();
        assert_eq!(stored.policy, TAG_POLICY);
        let got = c.get_policy().await.unwrap().unwrap();
        assert_eq!(got.policy, TAG_POLICY);
        assert!(got.updated_at.is_some());

        // A failing `tests` block (0.29+ run them on set and check).
        if minor(&hs) >= 29 {
            let failing = r#"{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}],
                              "tests": [{"src": "alice@", "deny": ["alice@:22"]}]}"#;
            let r = c.check_policy(failing).await;
            assert_eq!(reason(&r), "PolicyRejected");
            assert!(message(r).contains("test(s) failed"));
            assert_eq!(reason(&c.set_policy(failing).await), "PolicyRejected");
            assert_eq!(c.get_policy().await.unwrap().unwrap().policy, TAG_POLICY);
        }
    })
    .await;
}

/// Trap 1: an omitted expiration is stored as the zero time, so the key is dead on
/// arrival. The client's API has no way to omit it, and refuses a past one.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_01_zero_expiration_means_already_expired() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let (status, body) = raw(
            &hs,
            reqwest::Method::POST,
            "/api/v1/apikey",
            Some(serde_json::json!({})),
        )
        .await;
        assert_eq!(status, 200);
        let dead: serde_json::Value = serde_json::from_str(&body).unwrap();
        let dead = SecretString::new(dead["apiKey"].as_str().unwrap());
        let r = Client::new(&hs.url, dead).unwrap().list_users().await;
        assert_eq!(
            reason(&r),
            "ApiKeyRejected",
            "a key created without expiration works"
        );

        let past = Timestamp::now() - SignedDuration::from_secs(1);
        assert_eq!(reason(&c.create_api_key(past).await), "InvalidInput");
        let key = c.create_api_key(in_hours(1)).await.unwrap();
        Client::new(&hs.url, key.key).unwrap().list_users().await.unwrap();
    })
    .await;
}

/// Trap 2: where the expiry parameters go flips between versions, and the wrong
/// place expires the node at once instead of disabling its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_02_node_expiry_parameter_location() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let id = hs.create_fake_node("alice", "box", &[]);
        let at = "2030-01-01T00:00:00Z";
        let wrong = |path: String, body| {
            let hs = hs.clone();
            async move { raw(&hs, reqwest::Method::POST, &path, body).await }
        };

        // The wrong shape for this version: 0.29 reads no body; 0.27–0.28 have no
        // disableExpiry at all.
        c.expire_node(NodeId(id), ExpiryChange::At(at.parse().unwrap()))
            .await
            .unwrap();
        let (status, _) = if minor(&hs) >= 29 {
            wrong(
                format!("/api/v1/node/{id}/expire"),
                Some(serde_json::json!({"disableExpiry": true})),
            )
            .await
        } else {
            wrong(format!("/api/v1/node/{id}/expire?disableExpiry=true"), None).await
        };
        assert_eq!(status, 200);
        assert!(
            c.get_node(NodeId(id))
                .await
                .unwrap()
                .expiry
                .is_expired(Timestamp::now()),
            "the wrong shape did not expire the node (the trap is gone?)"
        );

        // The client's shape disables expiry on every version.
        let node = c.expire_node(NodeId(id), ExpiryChange::Disable).await.unwrap();
        assert_eq!(node.expiry, NodeExpiry::Never);
        assert_eq!(c.get_node(NodeId(id)).await.unwrap().expiry, NodeExpiry::Never);
    })
    .await;
}

/// Trap 3: camelCase keys and string ids. 0.27–0.29 silently ignore a key they do
/// not know (0.30 rejects it), so a misspelt field is not an error there: it is a
/// silently different request. The client's shapes must be read by every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_03_camel_case_and_string_ids_are_read_by_every_version() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let alice = c.create_user("alice").await.unwrap();
        // An unknown key is ignored, not refused: the key is created without tags.
        let (status, body) = raw(
            &hs,
            reqwest::Method::POST,
            "/api/v1/preauthkey",
            Some(serde_json::json!({"user": alice.id.to_string(), "expiration": in_hours(1), "aclTagz": ["tag:web"]})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""aclTags":[]"#) || body.contains(r#""aclTags": []"#), "{body}");

        // Every field the client sends is read: user (string id), tags, flags, expiration.
        let k = c
            .create_pre_auth_key(&PreAuthKeySpec {
                user: Some(alice.id),
                tags: vec!["tag:db".into()],
                reusable: true,
                ephemeral: true,
                expiration: in_hours(3),
            })
            .await
            .unwrap();
        assert_eq!(k.info.user.map(|u| u.id), Some(alice.id));
        assert_eq!(k.info.acl_tags, ["tag:db"]);
        assert!(k.info.reusable && k.info.ephemeral);
        assert!(k.info.expiration.unwrap() > in_hours(2));
    })
    .await;
}

/// Trap 4: ordinary errors come back as HTTP 500 (and 401 as plain text); the client
/// classifies them by what they mean, not as outages.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_04_http_500_for_ordinary_errors() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let cases = [
            (
                reqwest::Method::POST,
                "/api/v1/user",
                Some(serde_json::json!({"name": "alice"})),
                "Conflict",
            ),
            (reqwest::Method::DELETE, "/api/v1/user/9999", None, "NotFound"),
            (
                reqwest::Method::PUT,
                "/api/v1/policy",
                Some(serde_json::json!({"policy": "{\"x\":1}"})),
                "PolicyRejected",
            ),
            (reqwest::Method::GET, "/api/v1/policy", None, "NotFound"),
        ];
        for (method, path, body, want) in cases {
            let (status, text) = raw(&hs, method.clone(), path, body).await;
            assert_eq!(status, 500, "{method} {path}: {text}");
            let e = Error::from_response("raw", status, &text, &[]);
            assert_eq!(e.reason(), want, "{method} {path}: {text}");
            assert!(!e.is_transient());
        }
        // And through the client.
        assert_eq!(reason(&c.create_user("alice").await), "Conflict");
        assert_eq!(reason(&c.delete_user(UserId(9999)).await), "NotFound");
        assert_eq!(reason(&c.set_policy(r#"{"x":1}"#).await), "PolicyRejected");

        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/user", hs.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.text().await.unwrap().trim(), "Unauthorized");
    })
    .await;
}

/// Trap 5: keys are shown once. The full value exists only in what `create_*`
/// returns; lists, Debug, Display and errors never show it, even on 0.27, which
/// lists pre-auth keys in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_05_secrets_are_shown_once() {
    on_every_version(|hs| async move {
        let c = hs.client();
        let alice = c.create_user("alice").await.unwrap();
        let pak = c
            .create_pre_auth_key(&PreAuthKeySpec {
                user: Some(alice.id),
                tags: vec![],
                reusable: false,
                ephemeral: false,
                expiration: in_hours(1),
            })
            .await
            .unwrap();
        let api = c.create_api_key(in_hours(1)).await.unwrap();
        let secrets = [
            pak.key.expose().to_string(),
            api.key.expose().to_string(),
            hs.api_key.clone(),
        ];

        let (_, raw_list) = raw(
            &hs,
            reqwest::Method::GET,
            &format!("/api/v1/preauthkey?user={}", alice.id),
            None,
        )
        .await;
        assert_eq!(
            raw_list.contains(pak.key.expose()),
            minor(&hs) < 28,
            "0.27 lists full keys, 0.28+ masked"
        );

        let mut shown = format!("{pak:?} {api:?} {} {}", pak.key, api.key);
        shown += &format!("{:?}", c.list_pre_auth_keys().await.unwrap());
        shown += &format!("{:?}", c.list_api_keys().await.unwrap());
        shown += &format!("{c:?}");
        for e in [
            c.create_user("alice").await.unwrap_err(),
            // A pre-auth key is not an API key.
            Client::new(&hs.url, pak.key.clone())
                .unwrap()
                .list_users()
                .await
                .unwrap_err(),
            Client::new(&hs.url, api.key.clone())
                .unwrap()
                .delete_node(NodeId(9999))
                .await
                .unwrap_err(),
        ] {
            shown += &format!("{e} {e:?}");
        }
        for s in &secrets {
            // The public 12-character prefix may show; the secret part must not.
            let secret_part = &s[s.len() - 24..];
            assert!(!shown.contains(secret_part), "a secret was shown");
        }
    })
    .await;
}

/// Trap 6: pending registrations live in memory only; after a restart the auth id is
/// unknown, and the client says NotFound (not an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_06_pending_registrations_are_lost_on_restart() {
    on_every_version(|hs| async move {
        hs.client().create_user("alice").await.unwrap();
        let auth_id = hs.plant_pending_node("alice", "lost", &[]);
        let hs2 = hs.clone();
        tokio::task::spawn_blocking(move || {
            hs2.stop();
            hs2.restart();
        })
        .await
        .unwrap();
        let r = hs.client().register_node(&auth_id, "alice").await;
        assert_eq!(reason(&r), "NotFound", "{}", message(r));
    })
    .await;
}

/// Trap 7: from 0.28 every tag must be owned in the policy's `tagOwners` (0.27 takes
/// any syntactically valid tag), a tagged node keeps at least one tag, and tagging is
/// one-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_07_tags_need_tag_owners_and_are_one_way() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let id = NodeId(hs.create_fake_node("alice", "srv", &[]));
        let web = ["tag:web".to_string()];

        let unowned = c.set_tags(id, &web).await;
        if minor(&hs) >= 28 {
            assert_eq!(reason(&unowned), "InvalidInput", "{}", message(unowned));
            c.set_policy(TAG_POLICY).await.unwrap();
        } else {
            assert_eq!(unowned.unwrap().tags, web);
        }
        let tagged = c.set_tags(id, &web).await.unwrap();
        assert_eq!(tagged.tags, web);
        assert!(tagged.is_tagged());
        let bad = c.set_tags(id, &["web".to_string()]).await;
        assert_eq!(reason(&bad), "InvalidInput", "{}", message(bad));

        let cleared = c.set_tags(id, &[]).await;
        if minor(&hs) >= 28 {
            assert_eq!(reason(&cleared), "InvalidInput", "{}", message(cleared));
            assert!(c.get_node(id).await.unwrap().is_tagged(), "tagging is one-way");
        } else {
            assert!(cleared.unwrap().tags.is_empty());
        }
    })
    .await;
}

/// Trap 8: `online` is in memory only; fake nodes are never online, and after a
/// restart nobody is. The client reports it as the server says.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_08_online_is_false_for_fake_nodes_and_after_a_restart() {
    on_every_version(|hs| async move {
        hs.client().create_user("alice").await.unwrap();
        let id = NodeId(hs.create_fake_node("alice", "ghost", &[]));
        let hs2 = hs.clone();
        tokio::task::spawn_blocking(move || {
            hs2.stop();
            hs2.restart();
        })
        .await
        .unwrap();
        let nodes = hs.client().list_nodes(None).await.unwrap();
        let node = nodes
            .iter()
            .find(|n| n.id == id)
            .expect("the node survives a restart");
        assert!(!node.online);
        assert!(node.last_seen.is_some());
    })
    .await;
}

/// Trap 12: with nothing stored, GET policy is a 500 (the client: `None`); every PUT
/// writes a new row, even an identical one, so callers diff before writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_12_policy_get_without_policy_and_identical_puts() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        let (status, _) = raw(&hs, reqwest::Method::GET, "/api/v1/policy", None).await;
        assert_eq!(status, 500);
        assert_eq!(c.get_policy().await.unwrap(), None);

        let first = c.set_policy(TAG_POLICY).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = c.set_policy(TAG_POLICY).await.unwrap();
        assert!(
            second.updated_at > first.updated_at,
            "an identical PUT was not written again: {:?} {:?}",
            first.updated_at,
            second.updated_at
        );
        assert_eq!(
            c.get_policy().await.unwrap().map(|p| p.policy),
            Some(TAG_POLICY.to_string())
        );
    })
    .await;
}

/// Trap 17: the CLI's JSON is not the REST shape (snake_case, numeric ids, timestamps
/// as `{seconds,nanos}`); the test helpers read it separately, the client never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_17_cli_json_is_not_the_rest_shape() {
    on_every_version(|hs| async move {
        let cli_id = hs.create_user_with_cli("carol");
        let cli = hs.cli(&["users", "list"]);
        let carol = cli
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "carol")
            .unwrap()
            .clone();
        assert!(carol["id"].is_number(), "{carol}");
        assert!(
            carol.get("created_at").is_some() && carol.get("createdAt").is_none(),
            "{carol}"
        );
        assert!(carol["created_at"].get("seconds").is_some(), "{carol}");

        let rest = hs.client().find_user("carol").await.unwrap().unwrap();
        assert_eq!(rest.id, UserId(cli_id));
        let (_, body) = raw(&hs, reqwest::Method::GET, "/api/v1/user?name=carol", None).await;
        assert!(body.contains(&format!(r#""id":"{cli_id}""#)), "{body}");
    })
    .await;
}

/// Trap 18: `GET /node` and `GET /node/{id}` disagree on a tagged node's user (the
/// synthetic `tagged-devices` vs the creator or null) and on `subnetRoutes`. Use
/// `Node::is_tagged`, which agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn trap_18_list_and_get_disagree() {
    on_every_version(|hs| async move {
        let c = hs.client();
        c.create_user("alice").await.unwrap();
        c.set_policy(TAG_POLICY).await.unwrap();
        let id = NodeId(hs.create_fake_node("alice", "gw", &["10.9.0.0/24"]));
        c.approve_routes(id, &["10.9.0.0/24".into()]).await.unwrap();
        c.set_tags(id, &["tag:web".into()]).await.unwrap();

        let listed = c
            .list_nodes(None)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.id == id)
            .unwrap();
        let got = c.get_node(id).await.unwrap();
        assert!(listed.is_tagged() && got.is_tagged());
        let user = |n: &headscale_operator::headscale::Node| n.user.as_ref().map(|u| u.name.clone());
        match minor(&hs) {
            27 => assert_eq!(
                (user(&listed), user(&got)),
                (Some("alice".into()), Some("alice".into()))
            ),
            28 => assert_eq!(
                (user(&listed), user(&got)),
                (Some(TAGGED_DEVICES_USER.into()), Some("alice".into()))
            ),
            _ => assert_eq!(
                (user(&listed), user(&got)),
                (Some(TAGGED_DEVICES_USER.into()), None)
            ),
        }
        // Fake nodes announce their routes on 0.27–0.28 only (reference §7.4 is right
        // for 0.29); where announced and approved, only the list shows them served.
        if minor(&hs) <= 28 {
            assert_eq!(listed.available_routes, ["10.9.0.0/24"]);
            assert_eq!(listed.subnet_routes, ["10.9.0.0/24"]);
        } else {
            assert!(listed.available_routes.is_empty() && listed.subnet_routes.is_empty());
        }
        assert!(got.subnet_routes.is_empty());
    })
    .await;
}
