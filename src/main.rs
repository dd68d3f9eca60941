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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Crd { dir } => write_crds(dir),
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
    let probe_server = tokio::spawn(async move { http::serve(probe_addr, probe).await });
    tokio::select! {
        () = controller::run(client, settings, metrics, ready) => {
            tracing::info!("controllers stopped");
        }
        res = probe_server => {
            match res {
                Ok(Err(e)) => anyhow::bail!("probe endpoint on {probe_addr} failed: {e}"),
                Err(e) => anyhow::bail!("probe endpoint task failed: {e}"),
                Ok(Ok(())) => {}
            }
        }
    }
    Ok(())
}
