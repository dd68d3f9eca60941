//! The `headscale-operator` command: `run` the controllers, print the `crd`s, or
//! print the `version`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use headscale_operator::api;
use headscale_operator::controller::{self, Settings};
use headscale_operator::http::{self, ProbeState};
use headscale_operator::keyholder;
use headscale_operator::leader::{Elector, LeaseConfig};
use headscale_operator::metrics::Metrics;
use headscale_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "headscale-operator",
    version,
    about = "Runs and governs Headscale from Kubernetes resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML, or write one file each into --dir.
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the operator's version.
    Version,
    /// Sidecar of a managed Headscale pod: mint the operator's API key over Headscale's
    /// unix socket and keep it in a Secret.
    Keyholder(keyholder::Args),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Log format.
    #[arg(long, env = "HSOP_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,headscale_operator=debug`.
    #[arg(long, env = "HSOP_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, env = "HSOP_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: SocketAddr,
    /// Only watch this namespace (empty: all namespaces).
    #[arg(long, env = "HSOP_WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// How often a healthy server is checked again, in seconds.
    #[arg(long, env = "HSOP_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// Longest wait between retries of a failing server, in seconds.
    #[arg(long, env = "HSOP_MAX_BACKOFF_SECONDS", default_value_t = 300)]
    max_backoff_seconds: u64,
    /// How long the policy controller waits for further fragment changes before it
    /// merges and applies, in milliseconds.
    #[arg(long, env = "HSOP_POLICY_DEBOUNCE_MS", default_value_t = 250)]
    policy_debounce_ms: u64,
    /// Reconcile only while holding a Lease, so several replicas can run.
    #[arg(long, env = "HSOP_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Namespace of the leader-election Lease (the chart sets the pod's namespace).
    #[arg(long, env = "HSOP_LEADER_ELECTION_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "HSOP_LEADER_ELECTION_LEASE",
        default_value = "headscale-operator"
    )]
    leader_election_lease: String,
    /// Image of the keyholder sidecar in managed servers' pods (the operator's own
    /// image; the chart sets it).
    #[arg(long, env = "HSOP_KEYHOLDER_IMAGE", default_value_t = headscale_operator::controller::default_keyholder_image())]
    keyholder_image: String,
    /// Reach a managed server at the URL in its `headscale.operator.dev/endpoint`
    /// annotation instead of its Service. For an operator running outside the cluster
    /// (development, tests); never needed in the cluster.
    #[arg(long, env = "HSOP_ALLOW_ENDPOINT_ANNOTATION", default_value_t = false)]
    allow_endpoint_annotation: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Crd { dir } => write_crds(dir),
        Command::Keyholder(args) => run_keyholder(args).await,
        Command::Version => {
            println!("headscale-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd)?;
        match &dir {
            Some(dir) => {
                let path = dir.join(api::crd_file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings {
        watch_namespace: Some(args.watch_namespace).filter(|s| !s.is_empty()),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        max_backoff: Duration::from_secs(args.max_backoff_seconds.max(1)),
        policy_debounce: Duration::from_millis(args.policy_debounce_ms),
        keyholder_image: args.keyholder_image,
        allow_endpoint_annotation: args.allow_endpoint_annotation,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = settings.watch_namespace.as_deref().unwrap_or("<all>"),
        resync_seconds = settings.resync.as_secs(),
        "starting headscale-operator"
    );
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let probe = ProbeState {
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let probe_addr = args.probe_addr;
    let mut probe_server = tokio::spawn(async move { http::serve(probe_addr, probe).await });

    let mut elector = args.leader_election.then(|| {
        Elector::new(
            client.clone(),
            LeaseConfig {
                namespace: args.leader_election_namespace.clone(),
                name: args.leader_election_lease.clone(),
                identity: identity(),
                duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            },
        )
    });
    if let Some(elector) = elector.as_mut() {
        // A standby replica is healthy and ready; it just does not reconcile.
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = elector.acquire() => {}
            res = &mut probe_server => return probe_failed(probe_addr, res),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    let hold = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = controller::run(client, settings, metrics, ready) => {
            tracing::info!("controllers stopped");
            Ok(())
        }
        res = &mut probe_server => probe_failed(probe_addr, res),
        lost = hold => Err(anyhow::Error::new(lost)),
    };
    if let Some(elector) = elector.as_mut()
        && outcome.is_ok()
    {
        elector.release().await;
    }
    outcome
}

async fn run_keyholder(args: keyholder::Args) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = keyholder::Settings::from_args(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let health = Arc::new(keyholder::Health::default());
    let probes = {
        let (health, interval) = (health.clone(), settings.interval);
        async move {
            match args.probe_addr {
                Some(addr) => keyholder::serve_probes(addr, health, interval)
                    .await
                    .with_context(|| format!("probe endpoint on {addr}")),
                None => std::future::pending().await,
            }
        }
    };
    // PID 1 in its container: SIGTERM must be handled to stop at all.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = keyholder::run(client, settings, health) => Ok(()),
        res = probes => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

/// This replica's name in the Lease: the pod name in a cluster, else host and pid.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

fn probe_failed(
    addr: SocketAddr,
    res: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match res {
        Ok(Err(e)) => anyhow::bail!("probe endpoint on {addr} failed: {e}"),
        Err(e) => anyhow::bail!("probe endpoint task failed: {e}"),
        Ok(Ok(())) => Ok(()),
    }
}
