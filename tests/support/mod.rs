//! Test support for the integration tests: the environment `e2e/test.sh` started
//! (control plane, chart, operator), real Headscale servers, and waiting helpers.
//! Nothing here is a stand-in for a real part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The run directory `e2e/test.sh` prepared. Missing means the tests were started
/// outside it: that is a failure, never a skip.
pub fn run_dir() -> PathBuf {
    let dir = std::env::var("HSOP_E2E_DIR").unwrap_or_else(|_| {
        panic!(
            "HSOP_E2E_DIR is not set: the integration tests need the real control plane, \
             chart and operator that `make test` (e2e/test.sh) starts; run that instead"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("cluster/kubeconfig").is_file(),
        "{} has no cluster/kubeconfig",
        dir.display()
    );
    dir
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kubeconfig() -> PathBuf {
    run_dir().join("cluster/kubeconfig")
}

/// An admin client (system:masters) for setting up and observing; the operator
/// itself runs with the chart's ServiceAccount.
pub async fn admin_client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig()).expect("reading kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:06x}", rand_u32() & 0xff_ffff);
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() as u32
}

pub async fn create_key_secret(client: &Client, ns: &str, name: &str, key: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"api-key": key},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
}

pub async fn replace_key_secret(client: &Client, ns: &str, name: &str, key: &str) {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"stringData": {"api-key": key}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("patch secret");
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout` with
/// the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Events about objects in a namespace.
pub async fn events(client: &Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
}

/// The versions of Headscale built for the tests (`HSOP_HEADSCALE_BINS`).
pub fn headscale_versions() -> Vec<String> {
    let bins = std::env::var("HSOP_HEADSCALE_BINS").expect("HSOP_HEADSCALE_BINS (set by e2e/tools.sh env)");
    bins.split_whitespace()
        .filter_map(|e| e.split_once('='))
        .map(|(v, _)| v.to_string())
        .collect()
}

/// A real Headscale server started by `e2e/headscale.sh`; stopped on drop.
pub struct Headscale {
    pub dir: PathBuf,
    pub version: String,
    pub url: String,
    pub api_key: String,
}

impl Headscale {
    pub fn start(version: &str) -> Headscale {
        let dir = tempfile::Builder::new()
            .prefix("hs-")
            .tempdir_in(run_dir())
            .expect("tempdir")
            .keep();
        let hs = Headscale {
            dir,
            version: version.to_string(),
            url: String::new(),
            api_key: String::new(),
        };
        hs.run_script("start");
        hs.reload()
    }

    fn reload(mut self) -> Headscale {
        self.url = read_trimmed(&self.dir.join("url"));
        self.api_key = read_trimmed(&self.dir.join("api-key"));
        self
    }

    fn run_script(&self, verb: &str) {
        let mut cmd = Command::new(repo().join("e2e/headscale.sh"));
        cmd.arg(verb).arg(&self.dir);
        if verb == "start" {
            cmd.arg(&self.version)
                .arg("--owner-pid")
                .arg(std::process::id().to_string());
        }
        let out = cmd.output().expect("running e2e/headscale.sh");
        assert!(
            out.status.success(),
            "e2e/headscale.sh {verb} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        self.run_script("stop");
    }

    /// Starts it again on the same port and database.
    pub fn restart(&self) {
        self.run_script("start");
    }
}

impl Drop for Headscale {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("e2e/headscale.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The operator's log so far.
pub fn operator_log() -> String {
    std::fs::read_to_string(run_dir().join("operator/operator.log")).unwrap_or_default()
}

pub fn operator_url() -> String {
    read_trimmed(&run_dir().join("operator/operator.url"))
}

/// Fails if any of `secrets` appears in the operator's log, the Events of `ns`, or
/// the JSON of `objects`.
pub async fn assert_no_leak(client: &Client, ns: &str, objects: &[serde_json::Value], secrets: &[&str]) {
    let log = operator_log();
    let events = serde_json::to_string(&events(client, ns).await).unwrap();
    let objects = serde_json::to_string(objects).unwrap();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!log.contains(secret), "a secret appears in the operator log");
        assert!(!events.contains(secret), "a secret appears in an Event in {ns}");
        assert!(
            !objects.contains(secret),
            "a secret appears in an object's status or spec in {ns}"
        );
    }
}

/// `kubectl` from the built tools, with the admin kubeconfig.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let bin = std::env::var("HSOP_KUBECTL_BIN").unwrap_or_else(|_| "kubectl".into());
    Command::new(bin)
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .output()
        .expect("running kubectl")
}
