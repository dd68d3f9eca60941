//! The keyholder (`headscale-operator keyholder`, the built binary) against a real
//! Headscale's unix socket (v0.28.0 and v0.29.2: gRPC) and the real API server, with
//! exactly the RBAC the controller gives it (`keyholder::role_rules`: one Secret,
//! get/watch/patch). Run through `make test` (needs `HSOP_E2E_DIR`).
//!
//! Not covered here: the HTTP socket of 0.30 (no release exists; unit-tested in
//! `src/keyholder/http.rs`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use headscale_operator::headscale::{ApiKeyId, ApiKeyRef, Client as Headscale, Error as HsError};
use headscale_operator::keyholder::{
    self, ANNOTATION_CONFIRMED_ID, ANNOTATION_EXPIRATION, ANNOTATION_ID, ANNOTATION_PREFIX,
    ANNOTATION_PREVIOUS_GRACE_UNTIL, ANNOTATION_PREVIOUS_ID, ANNOTATION_REJECTED, API_KEY_DATA_KEY,
};
use headscale_operator::secret::SecretString;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

const SECRET: &str = "headscale-api-key";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn keyholder_v0_28_0() {
    scenario("v0.28.0").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keyholder_v0_29_2() {
    scenario("v0.29.2").await;
}

/// The keyholder subprocess; killed on drop.
struct Keyholder {
    child: Child,
}

impl Keyholder {
    fn start(env: &Env, extra: &[&str]) -> Keyholder {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&env.log)
            .expect("keyholder log");
        let child = Command::new(env!("CARGO_BIN_EXE_headscale-operator"))
            .env("KUBECONFIG", &env.kubeconfig)
            .env("POD_NAMESPACE", &env.ns)
            .env_remove("HSOP_LOG_FORMAT")
            .env_remove("HSOP_LOG_LEVEL")
            .args(["keyholder", "--socket"])
            .arg(&env.socket)
            .args(["--secret", SECRET, "--headscale-version", &env.version])
            .args(["--interval", "1s", "--log-format", "json"])
            .args(["--log-level", "info,headscale_operator=debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the keyholder");
        Keyholder { child }
    }

    fn assert_running(&mut self, env: &Env) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the keyholder exited ({status}):\n{}", env.log_text());
        }
    }
}

impl Drop for Keyholder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    ns: String,
    version: String,
    socket: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    url: String,
    secrets: Api<Secret>,
}

impl Env {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn annotate(&self, annotations: serde_json::Value) {
        let patch = json!({"metadata": {"annotations": annotations}});
        self.secrets
            .patch(SECRET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate the Secret");
    }

    /// Waits until the Secret holds a key other than `not` (and the keyholder's
    /// annotations for it); returns it.
    async fn wait_for_key(&self, what: &str, not: Option<ApiKeyId>) -> Stored {
        wait_for(what, WAIT, || async {
            let s = self.secrets.get(SECRET).await.map_err(|e| e.to_string())?;
            let stored =
                Stored::read(&s).ok_or_else(|| format!("no key yet: {:?}", s.metadata.annotations))?;
            if Some(stored.id) == not {
                return Err(format!("still key {}", stored.id));
            }
            Ok(stored)
        })
        .await
    }

    async fn annotations(&self) -> BTreeMap<String, String> {
        let s = self.secrets.get(SECRET).await.expect("Secret");
        s.metadata.annotations.unwrap_or_default()
    }

    fn headscale(&self, key: &str) -> Headscale {
        Headscale::new(&self.url, SecretString::new(key)).expect("client")
    }

    /// Waits until Headscale lists `id` as expired.
    async fn wait_expired(&self, what: &str, id: ApiKeyId, admin: &Headscale) {
        wait_for(what, WAIT, || async {
            let keys = admin.list_api_keys().await.map_err(|e| e.to_string())?;
            let k = keys.iter().find(|k| k.id == id).ok_or("key not listed")?;
            if k.is_expired(Timestamp::now()) {
                Ok(())
            } else {
                Err(format!("key {id} still valid until {:?}", k.expiration))
            }
        })
        .await
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn probe_status(addr: &str, path: &str) -> u16 {
    let url = format!("http://{addr}/{path}");
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(&url).await {
            return r.status().as_u16();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} does not answer")
}

/// What the keyholder stored.
#[derive(Clone, Debug)]
struct Stored {
    key: String,
    id: ApiKeyId,
    prefix: String,
    expiration: Timestamp,
}

impl Stored {
    fn read(s: &Secret) -> Option<Stored> {
        let key = s.data.as_ref()?.get(API_KEY_DATA_KEY)?;
        let key = String::from_utf8(key.0.clone()).ok()?;
        let a = s.metadata.annotations.as_ref()?;
        Some(Stored {
            key,
            id: ApiKeyId(a.get(ANNOTATION_ID)?.parse().ok()?),
            prefix: a.get(ANNOTATION_PREFIX)?.clone(),
            expiration: a.get(ANNOTATION_EXPIRATION)?.parse().ok()?,
        })
    }
}

/// A ServiceAccount with exactly the controller's keyholder Role, and a kubeconfig
/// with its token.
async fn keyholder_kubeconfig(client: &kube::Client, ns: &str, dir: &Path) -> PathBuf {
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "keyholder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&pp, &sa)
        .await
        .expect("ServiceAccount");
    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("keyholder".into()),
            ..Default::default()
        },
        rules: Some(keyholder::role_rules(SECRET)),
    };
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await
        .expect("Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "keyholder"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keyholder"},
        "subjects": [{"kind": "ServiceAccount", "name": "keyholder", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &binding)
        .await
        .expect("RoleBinding");
    let out = kubectl(&["-n", ns, "create", "token", "keyholder", "--duration", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    config["users"][0]["user"] = serde_yaml::to_value(json!({"token": token})).unwrap();
    let path = dir.join("keyholder.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

async fn scenario(version: &str) {
    let client = admin_client().await;
    let hs = support::Headscale::start(version);
    let ns = namespace(&client, "keyholder").await;
    let env = Env {
        kubeconfig: keyholder_kubeconfig(&client, &ns, &hs.dir).await,
        secrets: Api::namespaced(client.clone(), &ns),
        ns,
        version: version.trim_start_matches('v').to_string(),
        socket: PathBuf::from(std::fs::read_to_string(hs.dir.join("socket")).unwrap().trim()),
        log: hs.dir.join("keyholder.log"),
        url: hs.url.clone(),
    };
    // Headscale's own key (minted by e2e/headscale.sh) to look from outside.
    let admin = hs.client();
    let mut seen_keys = Vec::new();

    // Phase A: long keys, a long grace: only a confirmation ends it early.
    let probe = free_addr();
    let mut kh = Keyholder::start(
        &env,
        &[
            "--key-lifetime",
            "1h",
            "--rotate-before",
            "10m",
            "--probe-addr",
            &probe,
        ],
    );

    // No Secret yet: the keyholder waits, it does not exit.
    wait_for("the keyholder to wait for the Secret", WAIT, || async {
        let log = env.log_text();
        log.contains("waiting for the Secret").then_some(()).ok_or(log)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kh.assert_running(&env);
    assert_eq!(probe_status(&probe, "healthz").await, 200);
    assert_eq!(probe_status(&probe, "readyz").await, 503, "no key yet");

    // The operator's empty Secret: the first key arrives.
    let empty: Secret = serde_json::from_value(json!({"metadata": {"name": SECRET}})).unwrap();
    env.secrets
        .create(&PostParams::default(), &empty)
        .await
        .expect("create the Secret");
    let first = env.wait_for_key("the first key", None).await;
    seen_keys.push(first.key.clone());
    assert!(
        first.key.starts_with(first.prefix.trim_end_matches("***")),
        "prefix {}",
        first.prefix
    );
    let lifetime = first.expiration.duration_since(Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&lifetime), "lifetime {lifetime}s");
    let listed = admin.list_api_keys().await.unwrap();
    let k = listed
        .iter()
        .find(|k| k.id == first.id)
        .expect("the key is listed");
    assert_eq!(k.prefix, first.prefix);
    assert_eq!(k.expiration, Some(first.expiration));
    // Accepted by Headscale's REST API.
    let c1 = env.headscale(&first.key);
    c1.health().await.expect("the minted key works");
    c1.list_users().await.expect("the minted key works");
    wait_for("/readyz to report the key", WAIT, || async {
        match probe_status(&probe, "readyz").await {
            200 => Ok(()),
            code => Err(format!("HTTP {code}")),
        }
    })
    .await;

    // The operator finds it rejected: a new key at once, the old one kept for the grace.
    env.annotate(json!({ANNOTATION_REJECTED: "true"})).await;
    let second = env
        .wait_for_key("a key after the rejected mark", Some(first.id))
        .await;
    seen_keys.push(second.key.clone());
    let a = env.annotations().await;
    assert!(!a.contains_key(ANNOTATION_REJECTED), "{a:?}");
    assert_eq!(a.get(ANNOTATION_PREVIOUS_ID), Some(&first.id.to_string()));
    assert!(a.contains_key(ANNOTATION_PREVIOUS_GRACE_UNTIL), "{a:?}");
    env.headscale(&second.key)
        .health()
        .await
        .expect("the new key works");
    c1.health()
        .await
        .expect("the replaced key works during the grace period");

    // The operator confirms the new key: the old one is expired.
    env.annotate(json!({ANNOTATION_CONFIRMED_ID: second.id.to_string()}))
        .await;
    env.wait_expired(
        "the replaced key to be expired after the confirmation",
        first.id,
        &admin,
    )
    .await;
    assert!(
        matches!(c1.health().await, Err(HsError::Unauthorized { .. })),
        "the expired key is refused"
    );
    wait_for("the previous-key annotations to go", WAIT, || async {
        let a = env.annotations().await;
        (!a.contains_key(ANNOTATION_PREVIOUS_ID) && !a.contains_key(ANNOTATION_PREVIOUS_GRACE_UNTIL))
            .then_some(())
            .ok_or(format!("{a:?}"))
    })
    .await;

    // Someone expires the stored key over the API: a new one is minted.
    let c2 = env.headscale(&second.key);
    c2.expire_api_key(&ApiKeyRef::Id(second.id)).await.unwrap();
    let third = env.wait_for_key("a key after the expiry", Some(second.id)).await;
    seen_keys.push(third.key.clone());
    env.headscale(&third.key)
        .health()
        .await
        .expect("the third key works");
    assert!(
        !env.annotations().await.contains_key(ANNOTATION_PREVIOUS_ID),
        "an expired key is not kept for a grace period"
    );
    drop(kh);

    // Phase B: 12 s keys rotated 8 s before their end, a 2 s grace.
    let mut kh = Keyholder::start(
        &env,
        &[
            "--key-lifetime",
            "12s",
            "--rotate-before",
            "8s",
            "--previous-key-grace",
            "2s",
        ],
    );
    // The operator deletes the key data (the other "rejected" signal).
    env.secrets
        .patch(
            SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {API_KEY_DATA_KEY: null}})),
        )
        .await
        .unwrap();
    let fourth = env
        .wait_for_key("a key after the data was deleted", Some(third.id))
        .await;
    seen_keys.push(fourth.key.clone());
    env.wait_expired("the third key after its grace", third.id, &admin)
        .await;
    // Nobody touches anything: rotation by time.
    let fifth = env.wait_for_key("a rotation by time", Some(fourth.id)).await;
    seen_keys.push(fifth.key.clone());
    env.wait_expired("the fourth key after its grace", fourth.id, &admin)
        .await;
    env.headscale(&fifth.key)
        .health()
        .await
        .expect("the rotated key works");

    // Headscale goes away (its socket with it) and comes back: the keyholder waits.
    hs.stop();
    wait_for("the keyholder to wait for the socket", WAIT, || async {
        let log = env.log_text();
        log.contains("waiting for Headscale's socket")
            .then_some(())
            .ok_or(log)
    })
    .await;
    kh.assert_running(&env);
    hs.restart();
    let sixth = env
        .wait_for_key("a rotation after the restart", Some(fifth.id))
        .await;
    seen_keys.push(sixth.key.clone());
    env.headscale(&sixth.key)
        .health()
        .await
        .expect("the key after the restart works");
    kh.assert_running(&env);
    drop(kh);

    // The log tells what happened, by id and prefix, never the key.
    let log = env.log_text();
    for reason in ["\"NoKey\"", "\"Rejected\"", "\"Expired\"", "\"ExpiresSoon\""] {
        assert!(log.contains(reason), "no mint for {reason} in the log:\n{log}");
    }
    assert!(log.contains(&first.prefix), "the log names keys by prefix");
    for key in &seen_keys {
        assert!(
            !log.contains(key.as_str()),
            "a key appears in the keyholder's log"
        );
        // `hskey-api-<12-character prefix>-<secret>`; the prefix may contain `-`.
        let secret_part = &key["hskey-api-".len() + 13..];
        assert!(secret_part.len() >= 32, "unexpected key format");
        assert!(
            !log.contains(secret_part),
            "a key's secret part appears in the keyholder's log"
        );
    }
}
