//! The client against a scripted local server: faults a real Headscale cannot produce
//! on demand (a hang, a reset, a 500 mid-call), the retry rules, the version gate, and
//! what goes on the wire.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::fake_server::{FakeServer, Reply, Seen};
use super::*;
use crate::secret::SecretString;

const KEY: &str = "hskey-api-abcdefghijkl-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn client(url: &str) -> Client {
    Client::with_config(
        url,
        SecretString::new(KEY),
        ClientConfig {
            timeout: Duration::from_millis(500),
            min_interval: Duration::ZERO,
            max_in_flight: 8,
            retry_backoff: Duration::from_millis(10),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

fn ok(body: Value) -> Reply {
    Reply::Json(200, body.to_string())
}

fn node_json(id: u64) -> Value {
    json!({"node": {"id": id.to_string(), "name": "n", "expiry": null, "tags": []}})
}

fn body(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_hang_is_a_transient_timeout() {
    let server = FakeServer::start("v0.29.2", |_, _| {
        Reply::Delay(Duration::from_secs(5), "{}".into())
    })
    .await;
    let c = Client::with_config(
        &server.url,
        SecretString::new(KEY),
        ClientConfig {
            timeout: Duration::from_millis(200),
            read_retries: 0,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let e = c.list_users().await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn a_connection_reset_is_transient_and_unreachable() {
    let server = FakeServer::start("v0.29.2", |_, _| Reply::Reset).await;
    let e = client(&server.url).create_user("alice").await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    // A write is never repeated, even after a reset.
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = client(&format!("http://127.0.0.1:{port}"))
        .version()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn reads_are_retried_after_a_500_mid_call() {
    let server = FakeServer::start("v0.29.2", |_, i| match i {
        0 => Reply::Json(
            500,
            r#"{"code":2,"message":"database is locked","details":[]}"#.into(),
        ),
        1 => Reply::Text(502, "bad gateway"),
        _ => ok(json!({"nodes": [node_json(1)["node"]]})),
    })
    .await;
    let nodes = client(&server.url).list_nodes(None).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn reads_give_up_after_the_bounded_retries() {
    let server = FakeServer::start("v0.29.2", |_, _| Reply::Text(503, "unavailable")).await;
    let e = client(&server.url).get_node(NodeId(1)).await.unwrap_err();
    assert!(matches!(e, Error::ServerError { status: 503, .. }), "{e:?}");
    assert_eq!(
        server.seen().len(),
        1 + ClientConfig::default().read_retries as usize
    );
}

#[tokio::test]
async fn writes_are_never_retried() {
    let server = FakeServer::start("v0.29.2", |_, _| {
        Reply::Json(
            500,
            r#"{"code":2,"message":"database is locked","details":[]}"#.into(),
        )
    })
    .await;
    let c = client(&server.url);
    let spec = PreAuthKeySpec {
        user: Some(UserId(1)),
        tags: vec![],
        reusable: false,
        ephemeral: false,
        expiration: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    };
    assert!(c.create_pre_auth_key(&spec).await.unwrap_err().is_transient());
    assert!(
        c.expire_node(NodeId(1), ExpiryChange::Now)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(c.delete_node(NodeId(1)).await.unwrap_err().is_transient());
    assert!(c.set_policy("{}").await.unwrap_err().is_transient());
    let methods: Vec<_> = server.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["POST", "POST", "DELETE", "PUT"]);
}

/// 0.29 answers ordinary errors with HTTP 500; they must not be retried or treated
/// as an outage.
#[tokio::test]
async fn an_ordinary_error_in_a_500_is_not_retried() {
    let server = FakeServer::start("v0.29.2", |_, _| {
        Reply::Json(
            500,
            r#"{"code":2,"message":"node no longer exists in NodeStore: 9","details":[]}"#.into(),
        )
    })
    .await;
    let e = client(&server.url).get_node(NodeId(9)).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn unsupported_versions_are_refused_before_any_authenticated_call() {
    for version in ["v0.26.1", "v0.31.0", "dev", "v1.0.0"] {
        let server = FakeServer::start(version, |_, _| ok(json!({"users": []}))).await;
        let c = client(&server.url);
        let e = c.list_users().await.unwrap_err();
        assert!(matches!(e, Error::UnsupportedVersion { .. }), "{version}: {e:?}");
        assert_eq!(e.reason(), "UnsupportedVersion");
        assert!(
            server.seen().is_empty(),
            "{version}: the key was sent to an unsupported server"
        );
    }
}

#[tokio::test]
async fn calls_a_version_lacks_are_refused_before_sending() {
    let server = FakeServer::start("v0.28.0", |_, _| ok(json!({}))).await;
    let e = client(&server.url).check_policy("{}").await.unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { message, .. } if message.contains("0.29")),
        "{e:?}"
    );
    assert!(server.seen().is_empty());

    let server = FakeServer::start("v0.27.1", |_, _| ok(json!({}))).await;
    let c = client(&server.url);
    let e = c.delete_pre_auth_key(PreAuthKeyId(1)).await.unwrap_err();
    assert_eq!(e.reason(), "UnsupportedOperation");
    let spec = PreAuthKeySpec {
        user: None,
        tags: vec!["tag:a".into()],
        reusable: false,
        ephemeral: false,
        expiration: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    };
    assert_eq!(
        c.create_pre_auth_key(&spec).await.unwrap_err().reason(),
        "UnsupportedOperation"
    );
    assert!(server.seen().is_empty());
}

/// The cached version follows an upgrade once `supported_version` is asked again.
#[tokio::test]
async fn the_version_is_cached_until_refreshed() {
    let server = FakeServer::start("v0.28.0", |_, _| ok(node_json(1))).await;
    let c = client(&server.url);
    c.expire_node(NodeId(1), ExpiryChange::Disable).await.unwrap();
    assert_eq!(c.api_shape().await.unwrap().0.to_string(), "v0.28.0");
    assert_eq!(server.seen()[0].query(), "expiry=0001-01-01T00%3A00%3A00Z");
}

/// Trap 2 on the wire: each version gets the parameters where it reads them.
#[tokio::test]
async fn expire_node_request_on_the_wire() {
    for (version, want_query, want_body) in [
        ("v0.27.1", "expiry=0001-01-01T00%3A00%3A00Z", Value::Null),
        ("v0.28.0", "expiry=0001-01-01T00%3A00%3A00Z", Value::Null),
        ("v0.29.2", "disableExpiry=true", Value::Null),
        ("v0.30.0", "", json!({"disableExpiry": true})),
    ] {
        let server = FakeServer::start(version, |_, _| ok(node_json(4))).await;
        let node = client(&server.url)
            .expire_node(NodeId(4), ExpiryChange::Disable)
            .await
            .unwrap();
        assert_eq!(node.id, NodeId(4));
        let seen = &server.seen()[0];
        assert_eq!(
            (seen.method.as_str(), seen.path()),
            ("POST", "/api/v1/node/4/expire")
        );
        assert_eq!(seen.query(), want_query, "{version}");
        assert_eq!(body(seen), want_body, "{version}");
    }
}

/// Trap 3 on the wire: camelCase keys, ids as strings, an expiration on every key,
/// and the key only in the Authorization header (never to `/version`).
#[tokio::test]
async fn request_bodies_on_the_wire() {
    let server = FakeServer::start("v0.29.2", |seen, _| match seen.path() {
        "/api/v1/preauthkey" => ok(json!({"preAuthKey": {"id": "5", "key": "hskey-auth-abcdefghijkl-SECRET", "user": null, "aclTags": ["tag:a"]}})),
        "/api/v1/apikey" => ok(json!({"apiKey": "hskey-api-abcdefghijkl-SECRETSECRET"})),
        _ => ok(json!({})),
    })
    .await;
    let c = client(&server.url);
    let expiration = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let created = c
        .create_pre_auth_key(&PreAuthKeySpec {
            user: Some(UserId(12)),
            tags: vec!["tag:a".into()],
            reusable: true,
            ephemeral: true,
            expiration,
        })
        .await
        .unwrap();
    assert_eq!(created.key.expose(), "hskey-auth-abcdefghijkl-SECRET");
    assert!(!format!("{created:?}").contains("SECRET"));
    let new_api = c.create_api_key(expiration).await.unwrap();
    assert_eq!(new_api.prefix, "hskey-api-abcdefghijkl-***");
    c.expire_pre_auth_key(PreAuthKeyId(5)).await.unwrap();
    c.expire_api_key(&ApiKeyRef::Id(ApiKeyId(3))).await.unwrap();
    c.register_node("hskey-authreq-abc", "alice").await.unwrap_err();

    let seen = server.seen();
    let bodies: Vec<Value> = seen.iter().map(body).collect();
    let exp = serde_json::to_value(expiration).unwrap();
    assert_eq!(
        bodies,
        [
            json!({"user": "12", "reusable": true, "ephemeral": true, "expiration": exp, "aclTags": ["tag:a"]}),
            json!({"expiration": exp}),
            json!({"id": "5"}),
            json!({"id": "3"}),
            json!({"user": "alice", "authId": "hskey-authreq-abc"}),
        ]
    );
    for s in &seen {
        assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    }
}

#[tokio::test]
async fn keys_that_would_be_dead_on_arrival_are_refused() {
    let server = FakeServer::start("v0.29.2", |_, _| ok(json!({}))).await;
    let c = client(&server.url);
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    assert_eq!(c.create_api_key(past).await.unwrap_err().reason(), "InvalidInput");
    let spec = PreAuthKeySpec {
        user: Some(UserId(1)),
        tags: vec![],
        reusable: false,
        ephemeral: false,
        expiration: "0001-01-01T00:00:00Z".parse().unwrap(),
    };
    assert_eq!(
        c.create_pre_auth_key(&spec).await.unwrap_err().reason(),
        "InvalidInput"
    );
    assert!(server.seen().is_empty());
}

/// Trap 19: every authenticated request costs the server a bcrypt comparison, so the
/// client bounds how many are in flight and how fast they start.
#[tokio::test]
async fn trap_19_requests_in_flight_and_their_rate_are_bounded() {
    let server = FakeServer::start("v0.29.2", |_, _| {
        Reply::Delay(Duration::from_millis(50), json!({"users": []}).to_string())
    })
    .await;
    let c = Client::with_config(
        &server.url,
        SecretString::new(KEY),
        ClientConfig {
            max_in_flight: 2,
            min_interval: Duration::from_millis(20),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    c.api_shape().await.unwrap();
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.list_users().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.peak_in_flight(), 2);
    // 8 requests of 50 ms, 2 at a time: at least 200 ms; 20 ms spacing: at least 140 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn errors_never_carry_the_key_even_if_echoed() {
    let server = FakeServer::start("v0.29.2", |seen, _| {
        let echo = seen.authorization.clone().unwrap_or_default();
        Reply::Json(
            500,
            json!({"code": 2, "message": format!("bad header {echo}")}).to_string(),
        )
    })
    .await;
    let e = client(&server.url).create_user("x1").await.unwrap_err();
    assert!(!format!("{e} {e:?}").contains("0123456789abcdef"), "{e}");
}

/// Every request attempt is reported with its timings.
#[tokio::test]
async fn the_observer_sees_every_attempt() {
    type Attempt = (&'static str, Result<(), &'static str>, Timings);
    #[derive(Default)]
    struct Record(std::sync::Mutex<Vec<Attempt>>);
    impl Observer for Record {
        fn observe(&self, op: &'static str, outcome: Result<(), &'static str>, timings: Timings) {
            self.0.lock().unwrap().push((op, outcome, timings));
        }
    }
    let server = FakeServer::start("v0.29.2", |_, i| match i {
        0 => Reply::Text(503, "x"),
        _ => Reply::Delay(Duration::from_millis(30), json!({"users": []}).to_string()),
    })
    .await;
    let record = Arc::new(Record::default());
    let c = Client::with_config(
        &server.url,
        SecretString::new(KEY),
        ClientConfig {
            observer: Some(record.clone()),
            retry_backoff: Duration::from_millis(1),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    c.list_users().await.unwrap();
    let seen = record.0.lock().unwrap();
    let ops: Vec<_> = seen.iter().map(|(op, outcome, _)| (*op, *outcome)).collect();
    assert_eq!(
        ops,
        [
            ("get version", Ok(())),
            ("list users", Err("ServerError")),
            ("list users", Ok(()))
        ]
    );
    let last = seen[2].2;
    assert!(last.on_wire >= Duration::from_millis(30));
    assert!(last.total >= last.on_wire + last.queued);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    // A redirect drops the Authorization header: following it could report a key as
    // accepted that was never checked.
    let target = FakeServer::start("v0.29.2", |_, _| ok(json!({"databaseConnectivity": true}))).await;
    let location = format!("{}/api/v1/health", target.url);
    let server = FakeServer::start("v0.29.2", move |_, _| Reply::Redirect(location.clone())).await;
    let e = client(&server.url).check_api_key().await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    assert!(target.seen().is_empty(), "the redirect was followed");
}

#[test]
fn urls_with_credentials_query_or_fragment_are_refused_without_echoing_credentials() {
    for url in [
        "https://user:pw-secret@hs.example.com",
        "https://hs.example.com/?x=y",
        "https://hs.example.com/#f",
    ] {
        let e = Client::new(url, SecretString::new(KEY)).unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{url}: {e:?}");
        assert!(!e.to_string().contains("pw-secret"), "{e}");
    }
}
