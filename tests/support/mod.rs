//! Test support for the integration tests: the environment `e2e/test.sh` started
//! (control plane, chart, operator), real Headscale servers, and waiting helpers.
//! Nothing here is a stand-in for a real part.
#![allow(dead_code)]

pub mod clients;
pub mod managed;
pub mod nodes;

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

/// A scratch directory for tests that need only Headscale (no cluster):
/// `HSOP_E2E_DIR`, which `make test` sets. Missing is a failure, never a skip.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::var("HSOP_E2E_DIR").unwrap_or_else(|_| {
        panic!(
            "HSOP_E2E_DIR is not set: these tests start real Headscale servers in it; run \
             `make test`, or `eval \"$(e2e/tools.sh env)\"; HSOP_E2E_DIR=$(mktemp -d) cargo test --test <name>`"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(dir.is_dir(), "HSOP_E2E_DIR={} is not a directory", dir.display());
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
    headscale_bins().into_iter().map(|(v, _)| v).collect()
}

fn headscale_bins() -> Vec<(String, PathBuf)> {
    let bins = std::env::var("HSOP_HEADSCALE_BINS").expect("HSOP_HEADSCALE_BINS (set by e2e/tools.sh env)");
    bins.split_whitespace()
        .filter_map(|e| e.split_once('='))
        .map(|(v, p)| (v.to_string(), PathBuf::from(p)))
        .collect()
}

/// The `headscale` binary of `version` (for its CLI over the unix socket).
pub fn headscale_bin(version: &str) -> PathBuf {
    headscale_bins()
        .into_iter()
        .find(|(v, _)| v.trim_start_matches('v') == version.trim_start_matches('v'))
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no headscale {version} in HSOP_HEADSCALE_BINS"))
}

/// Starts a Headscale with `start`, up to 3 times. Many start at once in the tests, and a free
/// port can be taken between being picked and being bound ("address already in use").
pub fn start_retrying(version: &str, start: impl Fn() -> Headscale + std::panic::RefUnwindSafe) -> Headscale {
    for attempt in 1..=3 {
        match std::panic::catch_unwind(&start) {
            Ok(hs) => return hs,
            Err(e) if attempt == 3 => std::panic::resume_unwind(e),
            Err(_) => eprintln!("starting Headscale {version} failed (attempt {attempt}); retrying"),
        }
    }
    unreachable!()
}

/// A real Headscale server started by `e2e/headscale.sh`; stopped on drop.
pub struct Headscale {
    pub dir: PathBuf,
    pub version: String,
    pub url: String,
    pub api_key: String,
    /// Extra options of `e2e/headscale.sh start` (e.g. `--listen ADDR`).
    options: Vec<String>,
}

impl Headscale {
    pub fn start(version: &str) -> Headscale {
        Headscale::start_with(version, &[])
    }

    /// Starts it with extra options of `e2e/headscale.sh start`: `--listen ADDR` (the
    /// address of a test network, see [`clients::TestNet::start_headscale`]),
    /// `--ephemeral-timeout DUR`.
    pub fn start_with(version: &str, options: &[&str]) -> Headscale {
        let dir = tempfile::Builder::new()
            .prefix("hs-")
            .tempdir_in(scratch_dir())
            .expect("tempdir")
            .keep();
        let hs = Headscale {
            dir,
            version: version.to_string(),
            url: String::new(),
            api_key: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
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
                .arg(std::process::id().to_string())
                .args(&self.options);
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

    /// A REST client for this server with its API key.
    pub fn client(&self) -> headscale_operator::headscale::Client {
        self.client_with(headscale_operator::headscale::ClientConfig::default())
    }

    pub fn client_with(
        &self,
        config: headscale_operator::headscale::ClientConfig,
    ) -> headscale_operator::headscale::Client {
        headscale_operator::headscale::Client::with_config(
            &self.url,
            headscale_operator::secret::SecretString::new(self.api_key.clone()),
            config,
        )
        .expect("client")
    }

    fn minor(&self) -> u64 {
        headscale_operator::headscale::Version::parse(&self.version)
            .map(|v| v.minor)
            .unwrap_or_else(|| panic!("version {:?}", self.version))
    }

    /// Runs the `headscale` CLI of this version against this server (over its unix
    /// socket: no API key, no bcrypt) with `-o json`; panics unless it succeeds.
    /// Its JSON is *not* the REST shape (trap 17): snake_case, numeric ids.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(headscale_bin(&self.version))
            .env_remove("HEADSCALE_CLI_ADDRESS")
            .env_remove("HEADSCALE_CLI_API_KEY")
            .env_remove("HEADSCALE_CONFIG")
            .arg("-c")
            .arg(self.dir.join("config.yaml"))
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("running the headscale CLI");
        assert!(
            out.status.success(),
            "headscale {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "headscale {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A fresh id for a pending registration, in this version's format: 0.29+
    /// `hskey-authreq-` + 24 URL-safe characters, before that the 24 characters alone.
    pub fn new_auth_id(&self) -> String {
        let id = random_url_safe(24);
        if self.minor() >= 29 {
            format!("hskey-authreq-{id}")
        } else {
            id
        }
    }

    /// Plants a pending registration for a node called `name` (what a `tailscale up`
    /// without a key leaves behind) and returns its auth id. Reference §7.4: the node
    /// does not exist until the id is registered, within 15 minutes, before a restart.
    pub fn plant_pending_node(&self, user: &str, name: &str, routes: &[&str]) -> String {
        let auth_id = self.new_auth_id();
        let mut args = vec![
            "debug",
            "create-node",
            "--user",
            user,
            "--name",
            name,
            "--key",
            &auth_id,
        ];
        for r in routes {
            args.extend(["--route", r]);
        }
        self.cli(&args);
        auth_id
    }

    /// Registers a pending node through the CLI (`auth register` on 0.29+, `nodes
    /// register` before) and returns the new node's id.
    pub fn register_with_cli(&self, user: &str, auth_id: &str) -> u64 {
        let out = if self.minor() >= 29 {
            self.cli(&["auth", "register", "--user", user, "--auth-id", auth_id])
        } else {
            self.cli(&["nodes", "register", "--user", user, "--key", auth_id])
        };
        json_id(&out).unwrap_or_else(|| panic!("no node id in {out}"))
    }

    /// A fake node without a Tailscale client: plant, then register. Never online,
    /// not ephemeral, user-owned; on 0.27–0.28 `routes` show as announced routes.
    pub fn create_fake_node(&self, user: &str, name: &str, routes: &[&str]) -> u64 {
        let auth_id = self.plant_pending_node(user, name, routes);
        self.register_with_cli(user, &auth_id)
    }

    /// `count` fake nodes `{prefix}-{i}` of `user`, created by `workers` CLI
    /// processes at once (a registration waits for the server's batcher; in parallel
    /// the waits overlap). Returns the node ids in no particular order.
    pub fn create_fake_nodes(&self, user: &str, prefix: &str, count: usize, workers: usize) -> Vec<u64> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let ids = std::sync::Mutex::new(Vec::with_capacity(count));
        std::thread::scope(|s| {
            for _ in 0..workers.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= count {
                            return;
                        }
                        let id = self.create_fake_node(user, &format!("{prefix}-{i}"), &[]);
                        ids.lock().unwrap().push(id);
                    }
                });
            }
        });
        ids.into_inner().unwrap()
    }

    /// `count` more fake nodes `{prefix}-{i}` of `user`, fast enough for 10,000: one
    /// node is registered through the real path (debug create-node, then register),
    /// then Headscale is stopped, its database row is cloned `count - 1` times with
    /// fresh keys, addresses and names (Python's sqlite3), and Headscale is started
    /// again, loading them like any persisted node. For benchmarks that need many
    /// nodes to list, not many registrations. Returns the new nodes' ids.
    pub fn seed_fake_nodes(&self, user: &str, prefix: &str, count: usize) -> Vec<u64> {
        if count == 0 {
            return vec![];
        }
        let template = self.create_fake_node(user, &format!("{prefix}-0"), &[]);
        if count == 1 {
            return vec![template];
        }
        self.stop();
        let script = r#"
import sqlite3, sys, secrets, ipaddress
db, template, prefix, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = sqlite3.connect(db)
c.row_factory = sqlite3.Row
row = dict(c.execute("select * from nodes where id = ?", (template,)).fetchone())
(last_id,) = c.execute("select max(id) from nodes").fetchone()
v4 = max(int(ipaddress.ip_address(r[0])) for r in c.execute("select ipv4 from nodes where ipv4 is not null"))
v6 = max(int(ipaddress.ip_address(r[0])) for r in c.execute("select ipv6 from nodes where ipv6 is not null"))
ids = []
for i in range(1, count):
    n = dict(row)
    n["id"] = last_id + i
    n["machine_key"] = "mkey:" + secrets.token_hex(32)
    n["node_key"] = "nodekey:" + secrets.token_hex(32)
    n["ipv4"] = str(ipaddress.ip_address(v4 + i))
    n["ipv6"] = str(ipaddress.ip_address(v6 + i))
    name = f"{prefix}-{i}"
    n["hostname"] = n["given_name"] = name
    n["host_info"] = '{"Hostname":"%s"}' % name
    cols = ",".join(n)
    c.execute(f"insert into nodes ({cols}) values ({','.join('?' * len(n))})", list(n.values()))
    ids.append(n["id"])
c.commit()
print(" ".join(map(str, ids)))
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.dir.join("db.sqlite"))
            .arg(template.to_string())
            .arg(prefix)
            .arg(count.to_string())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "seeding nodes failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.restart();
        let mut ids = vec![template];
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|s| s.parse::<u64>().unwrap()),
        );
        ids
    }

    /// Creates a user through the CLI; returns its id.
    pub fn create_user_with_cli(&self, name: &str) -> u64 {
        let out = self.cli(&["users", "create", name]);
        json_id(&out).unwrap_or_else(|| panic!("no user id in {out}"))
    }
}

/// `id` from CLI JSON: a number before 0.30, a string after.
fn json_id(v: &serde_json::Value) -> Option<u64> {
    match v.get("id")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `n` characters from `[A-Za-z0-9_-]`, from the OS's randomness.
pub fn random_url_safe(n: usize) -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % 64] as char)
        .collect()
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

/// A directory written the way the kubelet writes a ConfigMap volume (its
/// AtomicWriter): the files live in a timestamped directory, `..data` points at it,
/// each visible file is a symlink through `..data`; an update writes a new directory,
/// renames a new `..data` link over the old one and removes the old directory.
pub struct KubeletDir {
    dir: PathBuf,
    generation: usize,
}

impl KubeletDir {
    pub fn new(dir: &Path) -> KubeletDir {
        std::fs::create_dir_all(dir).unwrap();
        KubeletDir {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    pub fn write(&mut self, file: &Path, content: &str) {
        use std::os::unix::fs::symlink;
        let name = file.file_name().unwrap();
        assert_eq!(file.parent(), Some(self.dir.as_path()));
        self.generation += 1;
        let stamp = format!("..2026_01_01_00_00_{:02}.{}", self.generation, std::process::id());
        std::fs::create_dir(self.dir.join(&stamp)).unwrap();
        std::fs::write(self.dir.join(&stamp).join(name), content).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        symlink(&stamp, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        if std::fs::symlink_metadata(file).is_err() {
            symlink(Path::new("..data").join(name), file).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}
