//! The AclPolicy controller end to end: the time from `kubectl apply` of a changed
//! fragment to the new merged policy being what Headscale serves, over 50 fragments
//! on 5 servers (p50, p99), and the Headscale API calls each change costs. Prints
//! figures; asserts only that every change was served.
//!
//!     make bench        (or: eval "$(e2e/tools.sh env)"; cargo build;
//!                        HSOP_E2E_DIR=$(mktemp -d) cargo bench --bench policy)
//!
//! Environment: with an empty HSOP_E2E_DIR the bench starts its own control plane,
//! chart and operator there (default operator settings: resync 60 s, debounce
//! 250 ms; HSOP_BENCH_DEBOUNCE_MS overrides the debounce), all stopped when it exits.
//! Pointed at the environment `HSOP_KEEP=1 make test` keeps, it reuses that
//! operator (which runs with the tests' settings). HSOP_BENCH_VERSION (default: the
//! newest built Headscale), HSOP_BENCH_CHANGES (sequential changes, default 100),
//! HSOP_BENCH_ROUNDS (rounds of one change per server at once, default 20).
//!
//! "Served" is measured as the changed fragment reporting `Ready` with the new
//! merged hash (the operator writes that status only after Headscale accepted the
//! PUT, so it is an upper bound by one status write), and each change is confirmed
//! by one `GET /api/v1/policy` afterwards.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use headscale_operator::api::{AclPolicy, HeadscaleServer};
use headscale_operator::policy::{self, Fragment};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const SERVERS: usize = 5;
const FRAGMENTS: usize = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Fragment `i`: its own group, and one rule whose port is the thing that changes.
fn fragment_text(i: usize, port: u32) -> String {
    format!(
        r#"{{
  // fragment {i}
  "groups": {{"group:g{i}": ["user{i}@"]}},
  "acls": [{{"action": "accept", "src": ["group:g{i}"], "dst": ["group:g{i}:{port}"]}}],
}}"#
    )
}

fn server_of(i: usize) -> usize {
    i % SERVERS
}

fn fragment_yaml(ns: &str, i: usize, port: u32) -> String {
    let doc = json!({
        "apiVersion": "headscale.operator.dev/v1alpha1",
        "kind": "AclPolicy",
        "metadata": {"name": format!("f{i:02}"), "namespace": ns},
        "spec": {
            "serverRef": {"name": format!("s{}", server_of(i))},
            "order": i as i32,
            "policy": fragment_text(i, port),
        },
    });
    serde_json::to_string(&doc).unwrap()
}

/// The merged hash of server `s` given every fragment's current port.
fn expected_hash(ns: &str, s: usize, ports: &[u32]) -> String {
    let fragments: Vec<Fragment> = (0..FRAGMENTS)
        .filter(|i| server_of(*i) == s)
        .map(|i| {
            Fragment::from_hujson(format!("{ns}/f{i:02}"), i as i32, &fragment_text(i, ports[i])).unwrap()
        })
        .collect();
    policy::merge(&fragments).unwrap().hash().to_string()
}

fn kubectl_bin() -> String {
    std::env::var("HSOP_KUBECTL_BIN").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl apply -f -` of one fragment, as a user would.
fn kubectl_apply(yaml: &str) {
    let mut child = Command::new(kubectl_bin())
        .env("KUBECONFIG", support::kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until fragment `i` is Ready with `hash`; the time it took since `since`.
async fn wait_fragment(api: &Api<AclPolicy>, i: usize, hash: &str, since: Instant) -> Duration {
    let name = format!("f{i:02}");
    loop {
        if let Ok(f) = api.get(&name).await {
            let status = f.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            if ready && status.and_then(|s| s.merged_hash.as_deref()) == Some(hash) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "{name} never got {hash}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn confirm_served(hs: &support::Headscale, hash: &str) {
    use sha2::Digest;
    let served = hs.client().get_policy().await.unwrap().unwrap();
    let canonical = policy::normalize(&served.policy).unwrap();
    let served_hash: String = sha2::Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(served_hash, hash, "Headscale at {} does not serve {hash}", hs.url);
}

/// The operator's counters of interest: Headscale calls by op, and policy writes.
async fn counters() -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("{}/metrics", support::operator_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(rest) = series.strip_prefix("headscale_operator_headscale_requests_total{op=\"") {
            let op = rest.split('"').next().unwrap_or_default().to_string();
            *out.entry(op).or_default() += value;
        } else if series.starts_with("headscale_operator_policy_writes_total{") {
            *out.entry("(policy writes)".into()).or_default() += value;
        }
    }
    out
}

fn report_calls(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, changes: usize) {
    let mut policy_calls = 0.0;
    for (op, v) in after {
        let d = v - before.get(op).copied().unwrap_or(0.0);
        if d == 0.0 {
            continue;
        }
        let per = d / changes as f64;
        let who = match op.as_str() {
            "(policy writes)" => "policy controller: PUTs that succeeded",
            o if o.contains("policy") => {
                policy_calls += d;
                "policy controller"
            }
            "get version" | "check API key" => "server controller: its resync checks",
            _ => "another controller, reacting to the server's status update",
        };
        println!("    {op:<18} {d:>6.0} total  {per:>5.2} per change  ({who})");
    }
    println!(
        "    => {:.2} Headscale API calls per change by the policy controller",
        policy_calls / changes as f64
    );
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: {} changes  p50 {}  p90 {}  p99 {}  max {}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

/// What this bench started; stopped on drop (and by the watchdogs should it be killed).
struct Started(std::path::PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        let repo = support::repo();
        let _ = Command::new(repo.join("e2e/operator.sh"))
            .arg("stop")
            .arg(self.0.join("operator"))
            .output();
        let _ = Command::new(repo.join("e2e/cluster.sh"))
            .arg("down")
            .arg(self.0.join("cluster"))
            .output();
    }
}

/// Starts a control plane, the chart and the operator in HSOP_E2E_DIR unless one runs
/// there already.
fn ensure_environment() -> Option<Started> {
    let dir = std::path::PathBuf::from(std::env::var("HSOP_E2E_DIR").expect("HSOP_E2E_DIR"));
    if dir.join("cluster/kubeconfig").is_file() && dir.join("operator/operator.url").is_file() {
        println!("reusing the control plane and operator in {}", dir.display());
        return None;
    }
    let repo = support::repo();
    let pid = std::process::id().to_string();
    let run = |what: &str, cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let kubeconfig = dir.join("cluster/kubeconfig");
    let path = format!(
        "{}:{}",
        std::env::var("HSOP_K8S_BIN").expect("HSOP_K8S_BIN (eval \"$(e2e/tools.sh env)\")"),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let guard = Started(dir.clone());
    run(
        "e2e/cluster.sh up",
        Command::new(repo.join("e2e/cluster.sh"))
            .args(["up", &dir.join("cluster").to_string_lossy(), "--owner-pid", &pid])
            .env("PATH", &path),
    );
    run(
        "helm install",
        Command::new(std::env::var("HSOP_HELM_BIN").unwrap_or_else(|_| "helm".into()))
            .args(["install", "headscale-operator"])
            .arg(repo.join("charts/headscale-operator"))
            .args([
                "--namespace",
                "headscale-operator-system",
                "--create-namespace",
                "--wait",
                "--timeout",
                "3m",
            ])
            .env("KUBECONFIG", &kubeconfig),
    );
    let debounce = std::env::var("HSOP_BENCH_DEBOUNCE_MS").unwrap_or_else(|_| "250".into());
    run(
        "e2e/operator.sh start",
        Command::new(repo.join("e2e/operator.sh"))
            .args([
                "start",
                &dir.join("operator").to_string_lossy(),
                "--owner-pid",
                &pid,
            ])
            .args(["--", "--log-level", "info", "--policy-debounce-ms", &debounce])
            .env("KUBECONFIG", &kubeconfig)
            .env("PATH", &path),
    );
    println!(
        "started a control plane, the chart and the operator (policy debounce {debounce} ms) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Some(guard)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _environment = tokio::task::spawn_blocking(ensure_environment).await.unwrap();
    let version = std::env::var("HSOP_BENCH_VERSION")
        .ok()
        .or_else(|| support::headscale_versions().pop())
        .expect("no Headscale version built (HSOP_HEADSCALE_BINS)");
    let changes = env_usize("HSOP_BENCH_CHANGES", 100);
    let rounds = env_usize("HSOP_BENCH_ROUNDS", 20);

    let client = support::admin_client().await;
    let ns = support::namespace(&client, "bench").await;
    let started = Instant::now();
    let mut servers = Vec::new();
    for s in 0..SERVERS {
        let v = version.clone();
        let hs = tokio::task::spawn_blocking(move || support::Headscale::start(&v))
            .await
            .unwrap();
        support::create_key_secret(&client, &ns, &format!("key{s}"), &hs.api_key).await;
        let obj = json!({
            "apiVersion": "headscale.operator.dev/v1alpha1",
            "kind": "HeadscaleServer",
            "metadata": {"name": format!("s{s}")},
            "spec": {"external": {"url": hs.url, "apiKeySecretRef": {"name": format!("key{s}")}}},
        });
        Api::<HeadscaleServer>::namespaced(client.clone(), &ns)
            .patch(
                &format!("s{s}"),
                &PatchParams::apply("bench"),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap();
        servers.push(hs);
    }
    println!(
        "{SERVERS} Headscale {version} servers started and declared in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 50 fragments, 10 per server, then wait until all are served.
    let fragments: Api<AclPolicy> = Api::namespaced(client.clone(), &ns);
    let mut ports: Vec<u32> = (0..FRAGMENTS).map(|_| 1000).collect();
    let started = Instant::now();
    for (i, port) in ports.iter().enumerate() {
        let doc: serde_json::Value = serde_json::from_str(&fragment_yaml(&ns, i, *port)).unwrap();
        fragments
            .patch(
                &format!("f{i:02}"),
                &PatchParams::apply("bench"),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap();
    }
    for i in 0..FRAGMENTS {
        let hash = expected_hash(&ns, server_of(i), &ports);
        wait_fragment(&fragments, i, &hash, started).await;
    }
    for (s, hs) in servers.iter().enumerate() {
        confirm_served(hs, &expected_hash(&ns, s, &ports)).await;
    }
    println!(
        "{FRAGMENTS} fragments on {SERVERS} servers created and served in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Let the creation's echoes settle before counting calls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!();

    // Sequential: one changed fragment at a time, round-robin over all 50.
    let before = counters().await;
    let mut samples = Vec::with_capacity(changes);
    for c in 0..changes {
        let i = (c * 7) % FRAGMENTS;
        ports[i] += 1;
        let hash = expected_hash(&ns, server_of(i), &ports);
        let yaml = fragment_yaml(&ns, i, ports[i]);
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || kubectl_apply(&yaml))
            .await
            .unwrap();
        samples.push(wait_fragment(&fragments, i, &hash, t0).await);
        confirm_served(&servers[server_of(i)], &hash).await;
    }
    let after = counters().await;
    summary("one change at a time, kubectl apply -> served", samples);
    report_calls(&before, &after, changes);
    println!();

    // Parallel: one change on each of the 5 servers at once.
    let before = counters().await;
    let mut samples = Vec::with_capacity(rounds * SERVERS);
    for r in 0..rounds {
        let picks: Vec<usize> = (0..SERVERS)
            .map(|s| s + SERVERS * ((r * 3 + s) % (FRAGMENTS / SERVERS)))
            .collect();
        let mut waits = Vec::new();
        for &i in &picks {
            ports[i] += 1;
            let hash = expected_hash(&ns, server_of(i), &ports);
            let yaml = fragment_yaml(&ns, i, ports[i]);
            let fragments = fragments.clone();
            waits.push(tokio::spawn(async move {
                let t0 = Instant::now();
                tokio::task::spawn_blocking(move || kubectl_apply(&yaml))
                    .await
                    .unwrap();
                (i, hash.clone(), wait_fragment(&fragments, i, &hash, t0).await)
            }));
        }
        for w in waits {
            let (i, hash, took) = w.await.unwrap();
            confirm_served(&servers[server_of(i)], &hash).await;
            samples.push(took);
        }
    }
    let after = counters().await;
    summary(
        &format!("{SERVERS} changes at once (one per server), kubectl apply -> served"),
        samples,
    );
    report_calls(&before, &after, rounds * SERVERS);
    println!();
    println!("Served = the changed fragment Ready with the new merged hash (written after Headscale");
    println!("accepted the PUT), each confirmed by GET /api/v1/policy. kubectl apply itself (a process");
    println!("start and one request) is included. Every Headscale request costs it one bcrypt");
    println!("comparison of the API key (~60 ms of one core).");
}
