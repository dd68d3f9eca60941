//! The node audit against a real Headscale holding 1, 1,000 and 10,000 fake nodes:
//! wall time and operator CPU per audit (listing the nodes and the pure audit over
//! them, i.e. everything the audit does but its status write), and the number of
//! Headscale API calls per audit. Prints figures; asserts nothing but correctness.
//!
//!     eval "$(e2e/tools.sh env)"; HSOP_E2E_DIR=$(mktemp -d) HSOP_HEADSCALE_WAIT_SECONDS=900 cargo bench --bench nodes
//!
//! (Headscale 0.29.2 needs minutes to start with 10,000 nodes: the wait must be longer.)
//!
//! Environment: HSOP_BENCH_VERSION (default: the newest built Headscale),
//! HSOP_BENCH_SIZES (default "1,1000,10000"), HSOP_BENCH_AUDITS (per size, default 5).
//!
//! The nodes are seeded (`Headscale::seed_fake_nodes`): one registered through the real
//! path, the rest cloned in Headscale's database while it is stopped, then loaded by
//! Headscale at start like any persisted node. Registering 10,000 through the CLI takes
//! about 20 minutes here and fails beyond about 2,000 at high parallelism.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headscale_operator::api::server::NodesSpec;
use headscale_operator::controller::nodes::audit::{self, Expected, Policy};
use headscale_operator::headscale::{ClientConfig, NodeId, Observer, Timings};

#[derive(Default)]
struct Calls(Mutex<HashMap<&'static str, u64>>);

impl Observer for Calls {
    fn observe(&self, op: &'static str, outcome: Result<(), &'static str>, _: Timings) {
        assert!(outcome.is_ok(), "{op} failed: {outcome:?}");
        *self.0.lock().unwrap().entry(op).or_default() += 1;
    }
}

impl Calls {
    fn take(&self) -> HashMap<&'static str, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// User plus system CPU time of this process.
fn cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let version = env("HSOP_BENCH_VERSION").unwrap_or_else(|| support::headscale_versions().pop().unwrap());
    let sizes: Vec<usize> = env("HSOP_BENCH_SIZES")
        .unwrap_or_else(|| "1,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let audits: usize = env("HSOP_BENCH_AUDITS").and_then(|v| v.parse().ok()).unwrap_or(5);

    let hs = support::Headscale::start(&version);
    hs.create_user_with_cli("bench");
    let calls = Arc::new(Calls::default());
    let client = hs.client_with(ClientConfig {
        observer: Some(calls.clone()),
        ..ClientConfig::default()
    });
    let mut spec = NodesSpec::default();
    spec.pruning.enabled = true;
    spec.pruning.dry_run = true;
    spec.pruning.stale_after = "1s".into();
    spec.pruning.restart_grace = "0s".into();
    let policy = Policy::from_spec(&spec);

    println!("node audit against Headscale {version} ({audits} audits per size, current-thread runtime)");
    println!(
        "{:>7} | {:>12} | {:>12} | {:>12} | {:>14} | {:>22}",
        "nodes", "wall p50", "wall max", "CPU/audit", "CPU/node", "API calls per audit"
    );
    let mut have = 0usize;
    for size in sizes {
        if size > have {
            let t = Instant::now();
            hs.seed_fake_nodes("bench", &format!("n{have}"), size - have);
            eprintln!(
                "created {} fake nodes in {:.1}s (including Headscale's restart to load them)",
                size - have,
                t.elapsed().as_secs_f64()
            );
            have = size;
        }
        // Warm up (version lookup, connection).
        assert_eq!(client.list_nodes(None).await.unwrap().len(), have);
        calls.take();
        let mut walls = Vec::new();
        let cpu_start = cpu();
        let mut last = None;
        for _ in 0..audits {
            let t = Instant::now();
            let nodes = client.list_nodes(None).await.unwrap();
            // Half of the nodes are accounted for by approvals.
            let expected = Expected {
                nodes: nodes
                    .iter()
                    .step_by(2)
                    .map(|n| n.id)
                    .collect::<std::collections::HashSet<NodeId>>(),
                keys: Default::default(),
            };
            // Judged a minute from now, so that no node is too new to be judged.
            let now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
            let a = audit::audit(&nodes, &expected, &policy, now, jiff::Timestamp::UNIX_EPOCH);
            walls.push(t.elapsed());
            last = Some(a);
        }
        let cpu_per = (cpu() - cpu_start) / audits as u32;
        let per_audit = calls.take();
        let a = last.unwrap();
        assert_eq!(a.inventory.total as usize, have);
        assert_eq!(a.inventory.unexpected as usize, have / 2);
        walls.sort();
        let calls_text = per_audit
            .iter()
            .map(|(op, n)| format!("{op}: {}", *n as f64 / audits as f64))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:>7} | {:>9.1} ms | {:>9.1} ms | {:>9.1} ms | {:>11.1} µs | {:>22}",
            have,
            walls[walls.len() / 2].as_secs_f64() * 1e3,
            walls.last().unwrap().as_secs_f64() * 1e3,
            cpu_per.as_secs_f64() * 1e3,
            cpu_per.as_secs_f64() * 1e6 / have as f64,
            calls_text
        );
    }
}
