//! `list nodes` against a real Headscale holding 1,000 fake nodes: requests per
//! second, p50/p99 latency, and the client's own overhead (time neither throttled by
//! its rate limiter nor waiting for the server). Prints figures; asserts nothing.
//!
//!     make bench        (or: eval "$(e2e/tools.sh env)"; HSOP_E2E_DIR=$(mktemp -d) cargo bench --bench client)
//!
//! Environment: HSOP_BENCH_VERSION (default: the newest built Headscale),
//! HSOP_BENCH_NODES (default 1000), HSOP_BENCH_REQUESTS (per run, default 60).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headscale_operator::headscale::{Client, ClientConfig, Node, Observer, Timings};

#[derive(Default)]
struct Recorder(Mutex<Vec<Timings>>);

impl Observer for Recorder {
    fn observe(&self, op: &'static str, outcome: Result<(), &'static str>, timings: Timings) {
        if op == "list nodes" {
            assert!(outcome.is_ok(), "list nodes failed: {outcome:?}");
            self.0.lock().unwrap().push(timings);
        }
    }
}

impl Recorder {
    fn take(&self) -> Vec<Timings> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

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
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `requests` list calls with `concurrency` callers sharing one client.
async fn run(
    label: &str,
    hs: &support::Headscale,
    config: ClientConfig,
    concurrency: usize,
    requests: usize,
    nodes: usize,
) {
    let recorder = Arc::new(Recorder::default());
    let client = hs.client_with(ClientConfig {
        observer: Some(recorder.clone()),
        ..config
    });
    // Warm up: the version lookup, the connection, the server's caches.
    for _ in 0..3 {
        assert_eq!(client.list_nodes(None).await.unwrap().len(), nodes);
    }
    recorder.take();

    let per_caller = requests / concurrency;
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client: Client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_caller {
                    let listed: Vec<Node> = client.list_nodes(None).await.unwrap();
                    assert_eq!(listed.len(), nodes);
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    let timings = recorder.take();
    let n = timings.len();
    let mut total: Vec<_> = timings.iter().map(|t| t.total).collect();
    let mut overhead: Vec<_> = timings.iter().map(Timings::overhead).collect();
    let mut queued: Vec<_> = timings.iter().map(|t| t.queued).collect();
    total.sort();
    overhead.sort();
    queued.sort();
    let overhead_share =
        overhead.iter().sum::<Duration>().as_secs_f64() / total.iter().sum::<Duration>().as_secs_f64();
    println!(
        "{label:<52} {n:>4} req  {:>7.1} req/s  latency p50 {:>10} p99 {:>10}  queued p50 {:>9}  overhead p50 {:>8} p99 {:>8} ({:.1}% of latency)",
        n as f64 / elapsed.as_secs_f64(),
        ms(percentile(&total, 50.0)),
        ms(percentile(&total, 99.0)),
        ms(percentile(&queued, 50.0)),
        us(percentile(&overhead, 50.0)),
        us(percentile(&overhead, 99.0)),
        overhead_share * 100.0,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let version = std::env::var("HSOP_BENCH_VERSION")
        .ok()
        .or_else(|| support::headscale_versions().pop())
        .expect("no Headscale version built (HSOP_HEADSCALE_BINS)");
    let nodes = env_usize("HSOP_BENCH_NODES", 1000);
    let requests = env_usize("HSOP_BENCH_REQUESTS", 60);

    let hs = tokio::task::spawn_blocking(move || support::Headscale::start(&version))
        .await
        .unwrap();
    println!("Headscale {} at {}", hs.version, hs.url);

    let hs = Arc::new(hs);
    let started = Instant::now();
    let hs2 = hs.clone();
    tokio::task::spawn_blocking(move || {
        hs2.create_user_with_cli("bench");
        hs2.create_fake_nodes("bench", "n", nodes, 64)
    })
    .await
    .unwrap();
    println!(
        "created {nodes} fake nodes through the CLI over the unix socket (64 at a time) in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // One body, for its size and the client's decode cost alone.
    let raw = reqwest::Client::new()
        .get(format!("{}/api/v1/node", hs.url))
        .bearer_auth(&hs.api_key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rounds = 50;
    let t = Instant::now();
    #[derive(serde::Deserialize)]
    struct Listing {
        nodes: Vec<Node>,
    }
    for _ in 0..rounds {
        let listed: Listing = serde_json::from_slice(&raw).unwrap();
        assert_eq!(listed.nodes.len(), nodes);
    }
    println!(
        "GET /api/v1/node body: {:.0} KiB; decoding it into {nodes} nodes: {} per body",
        raw.len() as f64 / 1024.0,
        us(t.elapsed() / rounds)
    );
    println!();

    let unthrottled = ClientConfig {
        min_interval: Duration::ZERO,
        max_in_flight: 64,
        ..ClientConfig::default()
    };
    run(
        "default config (2 in flight, 50 ms spacing), 1 caller",
        &hs,
        ClientConfig::default(),
        1,
        requests,
        nodes,
    )
    .await;
    run(
        "default config, 4 callers",
        &hs,
        ClientConfig::default(),
        4,
        requests,
        nodes,
    )
    .await;
    for callers in [1, 2, 4] {
        run(
            &format!("unthrottled, {callers} caller(s)"),
            &hs,
            unthrottled.clone(),
            callers,
            requests,
            nodes,
        )
        .await;
    }
    println!();
    println!(
        "latency: the client call from start to decoded nodes; queued: waiting for the client's rate limiter;"
    );
    println!(
        "overhead: latency minus queued minus on-the-wire time (building the request, decoding the answer)."
    );
    println!("Every request costs the server one bcrypt comparison of the API key (~60 ms of one core).");
}
