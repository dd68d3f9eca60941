//! The keyholder: the operator binary in a second role, run as a sidecar in a managed
//! Headscale pod. It shares Headscale's unix-socket directory (an `emptyDir` at
//! [`SOCKET_DIR`]), mints the operator's API key over the socket (which needs no
//! authentication) and keeps it in a Secret the operator created; so the operator
//! needs no `pods/exec` and the socket never leaves the pod.
//!
//! - `decide.rs`: pure: given the Secret's state, Headscale's key list and the time,
//!   what to do (mint, retire, expire).
//! - `store.rs`: pure: the Secret's state and the patches that write it.
//! - `grpc.rs`: the socket of 0.28 and 0.29 (gRPC); `http.rs`: the socket of 0.30 (HTTP).
//! - this file: the contract with the controller (names, arguments, RBAC), and the loop.
//!
//! The loop runs every `--interval`, whenever the Secret changes, and when a
//! rotation or a grace period falls due. A replaced key stays valid until the
//! operator confirms the new one ([`ANNOTATION_CONFIRMED_ID`]), Headscale lists the
//! new one as seen, or `--previous-key-grace` passes; then it is expired.

pub mod decide;
pub mod grpc;
pub mod http;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe, SeccompProfile,
    Secret, SecurityContext, VolumeMount,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};

use crate::controller::nodes::rules::format_duration;
// The operator's parser: what it accepts in `spec.managed.apiKey`, the keyholder accepts.
use crate::headscale::{ApiKey, ApiKeyId, NewApiKey, Version};
use crate::render::parse_duration;
use crate::secret::SecretString;
use crate::telemetry::LogFormat;
use decide::{Plan, Policy, SecretState};

/// `data` key of the Secret: the full API key.
pub const API_KEY_DATA_KEY: &str = "apiKey";
/// The stored key's id in Headscale.
pub const ANNOTATION_ID: &str = "headscale.operator.dev/api-key-id";
/// The stored key's expiration, RFC 3339.
pub const ANNOTATION_EXPIRATION: &str = "headscale.operator.dev/api-key-expiration";
/// The stored key's masked prefix as Headscale lists it (`hskey-api-<12>-***`; not secret).
pub const ANNOTATION_PREFIX: &str = "headscale.operator.dev/api-key-prefix";
/// Set to `"true"` by the operator when Headscale rejects the key: mint a new one now.
/// (Deleting `data.apiKey` does the same.) The keyholder removes it when it mints.
pub const ANNOTATION_REJECTED: &str = "headscale.operator.dev/api-key-rejected";
/// Set by the operator to the key id it has just used successfully: the replaced key
/// is then expired at once instead of after the grace period. Optional.
pub const ANNOTATION_CONFIRMED_ID: &str = "headscale.operator.dev/api-key-confirmed-id";
/// The id of the key the stored one replaced; it stays valid for a grace period.
pub const ANNOTATION_PREVIOUS_ID: &str = "headscale.operator.dev/previous-api-key-id";
/// When the previous key is expired at the latest, RFC 3339.
pub const ANNOTATION_PREVIOUS_GRACE_UNTIL: &str = "headscale.operator.dev/previous-api-key-grace-until";

/// Headscale's socket directory, an `emptyDir` shared by Headscale and the keyholder.
pub const SOCKET_DIR: &str = "/var/run/headscale";
/// Headscale's `unix_socket` (its default).
pub const SOCKET_PATH: &str = "/var/run/headscale/headscale.sock";
/// Name of the shared `emptyDir` volume in [`sidecar_container`].
pub const SOCKET_VOLUME: &str = "headscale-socket";
/// Name of the sidecar container.
pub const CONTAINER_NAME: &str = "keyholder";
/// The keyholder's `/healthz` and `/readyz` port.
pub const PROBE_PORT: u16 = 8081;
/// The field manager of the keyholder's writes to its Secret.
pub const FIELD_MANAGER: &str = "headscale-operator/keyholder";

/// The longest `--key-lifetime` (and `spec.managed.apiKey.lifetime`): 10 years. A key
/// that outlives any rotation schedule is as good as one without an expiration.
pub const MAX_KEY_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);
/// [`MAX_KEY_LIFETIME`] as the spec writes it.
pub const MAX_KEY_LIFETIME_TEXT: &str = "3650d";

const DEFAULT_INTERVAL: &str = "30s";
const DEFAULT_GRACE: &str = "10m";
/// Per-call timeout on the socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to look while Headscale has not created its socket yet.
const SOCKET_POLL: Duration = Duration::from_secs(1);

/// `headscale-operator keyholder ...`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Headscale's unix socket.
    #[arg(long, default_value = SOCKET_PATH)]
    pub socket: PathBuf,
    /// The Secret that receives the key (created by the operator, may not exist yet).
    #[arg(long)]
    pub secret: String,
    /// Namespace of the Secret.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Headscale's version: 0.28 and 0.29 speak gRPC on the socket, 0.30 HTTP.
    #[arg(long)]
    pub headscale_version: String,
    /// Lifetime of each minted key, e.g. `90d`.
    #[arg(long, default_value = "90d", value_parser = duration_arg)]
    pub key_lifetime: Duration,
    /// Mint a new key when less than this is left of the stored one.
    #[arg(long, default_value = "30d", value_parser = duration_arg)]
    pub rotate_before: Duration,
    /// How often to check when nothing changes.
    #[arg(long, default_value = DEFAULT_INTERVAL, value_parser = duration_arg)]
    pub interval: Duration,
    /// How long a replaced key stays valid if the operator does not confirm the new one.
    #[arg(long, default_value = DEFAULT_GRACE, value_parser = duration_arg)]
    pub previous_key_grace: Duration,
    /// Address of `/healthz` (the loop is alive) and `/readyz` (a valid key is stored).
    #[arg(long)]
    pub probe_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "HSOP_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,headscale_operator=debug`.
    #[arg(long, env = "HSOP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 30s, 10m, 12h or 90d"))
}

/// What the controller puts into the sidecar's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarArgs<'a> {
    pub secret_name: &'a str,
    /// `spec.version` of the server.
    pub headscale_version: &'a str,
    /// `spec.apiKey.lifetime`, e.g. `90d`.
    pub key_lifetime: &'a str,
    /// `spec.apiKey.rotateBefore`, e.g. `30d`.
    pub rotate_before: &'a str,
}

/// The sidecar's `args` (after the binary): one place for the contract. The
/// namespace comes from `POD_NAMESPACE` ([`container_env`]).
pub fn container_args(a: &SidecarArgs<'_>) -> Vec<String> {
    [
        "keyholder",
        "--socket",
        SOCKET_PATH,
        "--secret",
        a.secret_name,
        "--headscale-version",
        a.headscale_version,
        "--key-lifetime",
        a.key_lifetime,
        "--rotate-before",
        a.rotate_before,
        "--probe-addr",
        &format!("0.0.0.0:{PROBE_PORT}"),
        "--log-format",
        "json",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// `POD_NAMESPACE` from the downward API.
pub fn container_env() -> Vec<EnvVar> {
    vec![EnvVar {
        name: "POD_NAMESPACE".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.namespace".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

/// The whole sidecar: arguments, env, the socket volume mount, a liveness probe and a
/// restricted security context. The pod must run it with Headscale's user and group
/// (the socket is `0770`) and have an `emptyDir` volume [`SOCKET_VOLUME`] that
/// Headscale mounts at [`SOCKET_DIR`] too.
///
/// No readiness probe on purpose: a pod is Ready only when all its containers are, so
/// a missing operator key would take Headscale out of its Service. `/readyz` is there
/// for people and tests.
pub fn sidecar_container(image: &str, args: &SidecarArgs<'_>) -> Container {
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(image.into()),
        args: Some(container_args(args)),
        env: Some(container_env()),
        volume_mounts: Some(vec![VolumeMount {
            name: SOCKET_VOLUME.into(),
            mount_path: SOCKET_DIR.into(),
            ..Default::default()
        }]),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(PROBE_PORT.into()),
                ..Default::default()
            }),
            period_seconds: Some(30),
            failure_threshold: Some(4),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Role rules of the pod's ServiceAccount: that one Secret, `get`/`watch`/`patch`
/// only (the operator creates it; the keyholder never lists or creates Secrets).
pub fn role_rules(secret_name: &str) -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        resource_names: Some(vec![secret_name.into()]),
        verbs: ["get", "watch", "patch"].map(String::from).to_vec(),
        ..Default::default()
    }]
}

/// How the socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// 0.28 and 0.29.
    Grpc,
    /// 0.30 (upstream HEAD, which reports a `0.29.3-0.…` pseudo-version, included).
    Http,
}

impl Protocol {
    pub fn for_version(v: &Version) -> Result<Protocol, String> {
        if !v.at_least(0, 28) {
            return Err(format!(
                "the keyholder supports Headscale 0.28 and newer, not {v} (its API keys have no ids before 0.28)"
            ));
        }
        let head_build = v.minor_pair() == (0, 29) && v.patch >= 3 && v.is_prerelease();
        Ok(if v.at_least(0, 30) || head_build {
            Protocol::Http
        } else {
            Protocol::Grpc
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot reach Headscale's socket: {0}")]
    Connect(String),
    #[error("{op} over the socket: {message}")]
    Call { op: &'static str, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid keyholder settings: {0}")]
    InvalidSettings(String),
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("writing Secret {name}: {source}")]
    PatchSecret { name: String, source: kube::Error },
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("the new key {prefix} is missing from Headscale's list of API keys")]
    MintedKeyNotListed { prefix: String },
}

impl Error {
    /// Stable CamelCase reason, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSettings(_) => "InvalidSettings",
            Error::ReadSecret { .. } => "ReadSecret",
            Error::PatchSecret { .. } => "PatchSecret",
            Error::Socket(SocketError::Connect(_)) => "SocketUnreachable",
            Error::Socket(SocketError::Call { .. }) => "SocketCall",
            Error::MintedKeyNotListed { .. } => "MintedKeyNotListed",
        }
    }
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub socket: PathBuf,
    pub secret: String,
    pub namespace: String,
    pub protocol: Protocol,
    pub policy: Policy,
    pub interval: Duration,
}

impl Settings {
    pub fn from_args(args: &Args) -> Result<Settings, Error> {
        let invalid = |m: String| Err(Error::InvalidSettings(m));
        let Some(version) = Version::parse(&args.headscale_version) else {
            return invalid(format!(
                "--headscale-version {:?} is not a version such as 0.29.2",
                args.headscale_version
            ));
        };
        let protocol = Protocol::for_version(&version).map_err(Error::InvalidSettings)?;
        if args.secret.is_empty() || args.namespace.is_empty() {
            return invalid("--secret and --namespace (or POD_NAMESPACE) must not be empty".into());
        }
        if args.key_lifetime.is_zero() || args.rotate_before >= args.key_lifetime {
            return invalid(format!(
                "--rotate-before ({}) must be shorter than --key-lifetime ({}), or every key would be replaced at once",
                format_duration(args.rotate_before),
                format_duration(args.key_lifetime)
            ));
        }
        if args.key_lifetime > MAX_KEY_LIFETIME {
            return invalid(format!(
                "--key-lifetime ({}) must be at most {MAX_KEY_LIFETIME_TEXT} (10 years)",
                format_duration(args.key_lifetime)
            ));
        }
        if args.interval < Duration::from_secs(1) {
            return invalid("--interval must be at least 1s".into());
        }
        Ok(Settings {
            socket: args.socket.clone(),
            secret: args.secret.clone(),
            namespace: args.namespace.clone(),
            protocol,
            policy: Policy {
                lifetime: args.key_lifetime,
                rotate_before: args.rotate_before,
                grace: args.previous_key_grace,
            },
            interval: args.interval,
        })
    }
}

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds of the last finished pass (whatever its outcome).
    last_pass: AtomicI64,
    /// The Secret held a key Headscale lists as valid at the last pass.
    key_ok: AtomicBool,
}

impl Health {
    fn passed(&self, key_ok: bool) {
        self.last_pass
            .store(Timestamp::now().as_second(), Ordering::Relaxed);
        self.key_ok.store(key_ok, Ordering::Relaxed);
    }

    /// The loop is alive: a pass finished within `limit`.
    pub fn alive(&self, limit: Duration) -> bool {
        let last = self.last_pass.load(Ordering::Relaxed);
        last == 0 || Timestamp::now().as_second() - last <= limit.as_secs() as i64
    }

    pub fn key_ok(&self) -> bool {
        self.key_ok.load(Ordering::Relaxed)
    }
}

/// Serves `/healthz` and `/readyz`.
pub async fn serve_probes(addr: SocketAddr, health: Arc<Health>, interval: Duration) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    // A pass can wait a whole interval, plus socket and API timeouts.
    let limit = interval * 3 + Duration::from_secs(60);
    let h = health.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || async move {
                if h.alive(limit) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "the keyholder loop is stuck")
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if health.key_ok() {
                    (StatusCode::OK, "a valid API key is stored")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "no valid API key stored yet")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "keyholder probe endpoint listening");
    axum::serve(listener, app).await
}

/// One connection to the socket, in its protocol.
enum Socket {
    Grpc(grpc::GrpcSocket),
    Http(http::HttpSocket),
}

impl Socket {
    async fn connect(protocol: Protocol, path: &Path) -> Result<Socket, SocketError> {
        Ok(match protocol {
            Protocol::Grpc => Socket::Grpc(grpc::GrpcSocket::connect(path, SOCKET_TIMEOUT).await?),
            Protocol::Http => Socket::Http(http::HttpSocket::new(path, SOCKET_TIMEOUT)),
        })
    }

    async fn list(&mut self) -> Result<Vec<ApiKey>, SocketError> {
        match self {
            Socket::Grpc(s) => s.list_api_keys().await,
            Socket::Http(s) => s.list_api_keys().await,
        }
    }

    async fn create(&mut self, expiration: Timestamp) -> Result<SecretString, SocketError> {
        match self {
            Socket::Grpc(s) => s.create_api_key(expiration).await,
            Socket::Http(s) => s.create_api_key(expiration).await,
        }
    }

    async fn expire(&mut self, id: ApiKeyId) -> Result<(), SocketError> {
        match self {
            Socket::Grpc(s) => s.expire_api_key(id).await,
            Socket::Http(s) => s.expire_api_key(id).await,
        }
    }
}

/// Why a pass did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Secret,
    Socket,
}

/// The result of one pass.
enum Pass {
    Waiting(Waiting),
    /// Done: the Secret's resourceVersion afterwards, and when to look again at the latest.
    Done {
        resource_version: String,
        recheck_in: Option<Duration>,
    },
}

/// Runs until the task is dropped.
pub async fn run(client: kube::Client, settings: Settings, health: Arc<Health>) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    tracing::info!(
        secret = %settings.secret,
        namespace = %settings.namespace,
        socket = %settings.socket.display(),
        protocol = ?settings.protocol,
        key_lifetime = %format_duration(settings.policy.lifetime),
        rotate_before = %format_duration(settings.policy.rotate_before),
        "keyholder starting"
    );
    // What the last pass was stuck on: each new state is logged once, repeats at debug.
    let mut stuck: Option<String> = None;
    loop {
        let outcome = pass(&api, &settings).await;
        let (state, next) = match outcome {
            Ok(Pass::Done {
                resource_version,
                recheck_in,
            }) => {
                if stuck.take().is_some() {
                    tracing::info!("Secret and socket are there; the key is in order");
                }
                health.passed(true);
                let wait = recheck_in.map_or(settings.interval, |r| r.min(settings.interval));
                watch_for_change(&api, &settings.secret, &resource_version, wait).await;
                continue;
            }
            Ok(Pass::Waiting(Waiting::Secret)) => (
                format!(
                    "waiting for the Secret {}/{} to exist (the operator creates it)",
                    settings.namespace, settings.secret
                ),
                settings.interval,
            ),
            Ok(Pass::Waiting(Waiting::Socket)) => (
                format!("waiting for Headscale's socket {}", settings.socket.display()),
                SOCKET_POLL,
            ),
            Err(e) => {
                // Headscale starting or restarting (or a socket we may not use: the error says).
                let next = match e {
                    Error::Socket(SocketError::Connect(_)) => SOCKET_POLL,
                    _ => settings.interval,
                };
                let state = e.to_string();
                if stuck.as_deref() != Some(state.as_str()) {
                    tracing::warn!(reason = e.reason(), error = %state, "keyholder pass failed; retrying");
                } else {
                    tracing::debug!(reason = e.reason(), error = %state, "keyholder pass failed again");
                }
                health.passed(false);
                stuck = Some(state);
                tokio::time::sleep(next).await;
                continue;
            }
        };
        health.passed(false);
        if stuck.as_deref() != Some(state.as_str()) {
            tracing::info!("{state}");
        } else {
            tracing::debug!("{state}");
        }
        stuck = Some(state);
        tokio::time::sleep(next).await;
    }
}

/// One look: read the Secret and the key list, decide, act.
async fn pass(api: &Api<Secret>, settings: &Settings) -> Result<Pass, Error> {
    let name = &settings.secret;
    let Some(secret) = api.get_opt(name).await.map_err(|source| Error::ReadSecret {
        name: name.clone(),
        source,
    })?
    else {
        return Ok(Pass::Waiting(Waiting::Secret));
    };
    if !settings.socket.exists() {
        return Ok(Pass::Waiting(Waiting::Socket));
    }
    let state = store::secret_state(&secret);
    let mut resource_version = secret.metadata.resource_version.clone().unwrap_or_default();
    let mut socket = Socket::connect(settings.protocol, &settings.socket).await?;
    let keys = socket.list().await?;
    let now = Timestamp::now();
    let plan = decide::decide(&state, &keys, now, &settings.policy);
    if plan.is_idle() {
        return Ok(Pass::Done {
            resource_version,
            recheck_in: plan.recheck_in,
        });
    }
    act(
        api,
        settings,
        &mut socket,
        &state,
        &plan,
        &mut resource_version,
        now,
    )
    .await?;
    // The next pass, an interval from now (or sooner on a change), works out when
    // the new state falls due.
    Ok(Pass::Done {
        resource_version,
        recheck_in: None,
    })
}

async fn act(
    api: &Api<Secret>,
    settings: &Settings,
    socket: &mut Socket,
    state: &SecretState,
    plan: &Plan,
    resource_version: &mut String,
    now: Timestamp,
) -> Result<(), Error> {
    let name = &settings.secret;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patch = |value: serde_json::Value| async move {
        api.patch(name, &params, &Patch::Merge(&value))
            .await
            .map_err(|source| Error::PatchSecret {
                name: name.clone(),
                source,
            })
    };
    for id in &plan.expire {
        socket.expire(*id).await?;
        tracing::info!(key_id = %id, "expired the previous API key");
    }
    if let Some(reason) = plan.mint {
        // Whole seconds, so the annotation reads cleanly.
        let lifetime = SignedDuration::try_from(settings.policy.lifetime).unwrap_or(SignedDuration::MAX);
        let expiration = whole_seconds(now).checked_add(lifetime).unwrap_or(Timestamp::MAX);
        let key = NewApiKey::from_key(socket.create(expiration).await?);
        let listed = socket
            .list()
            .await?
            .into_iter()
            .find(|k| k.prefix == key.prefix)
            .ok_or_else(|| Error::MintedKeyNotListed {
                prefix: key.prefix.clone(),
            })?;
        let grace = SignedDuration::try_from(settings.policy.grace).unwrap_or(SignedDuration::MAX);
        let retire = plan.retire.map(|id| {
            (
                id,
                whole_seconds(now).checked_add(grace).unwrap_or(Timestamp::MAX),
            )
        });
        match patch(store::mint_patch(resource_version, &key.key, &listed, retire)).await {
            Ok(s) => *resource_version = s.metadata.resource_version.unwrap_or_default(),
            Err(e) => {
                // Not stored, so nobody can use it: do not leave it valid.
                if let Err(x) = socket.expire(listed.id).await {
                    tracing::warn!(key_id = %listed.id, error = %x, "could not expire the unstored new key");
                }
                return Err(e);
            }
        }
        tracing::info!(
            reason = reason.as_str(),
            key_id = %listed.id,
            key_prefix = %listed.prefix,
            expiration = %listed.expiration.map(|t| t.to_string()).unwrap_or_default(),
            replaced_key_id = %state.id.map(|i| i.to_string()).unwrap_or_default(),
            previous_key_grace_until = %retire.map(|(_, t)| t.to_string()).unwrap_or_default(),
            "minted and stored a new API key"
        );
    } else if plan.forget_previous {
        let s = patch(store::forget_previous_patch(resource_version)).await?;
        *resource_version = s.metadata.resource_version.unwrap_or_default();
    }
    Ok(())
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Waits until the Secret changes after `resource_version`, or `wait` passes.
async fn watch_for_change(api: &Api<Secret>, name: &str, resource_version: &str, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait.max(Duration::from_secs(1));
    let watched = async {
        // The API server may end a watch early; watch again until the deadline.
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(u32::try_from(left.as_secs()).unwrap_or(u32::MAX).clamp(1, 290));
            let stream = match api.watch(&params, resource_version).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch the Secret; polling");
                    break;
                }
            };
            let started = tokio::time::Instant::now();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)) => return,
                    Ok(WatchEvent::Bookmark(_)) => {}
                    // 410 Gone and the like: the next pass reads afresh.
                    Ok(WatchEvent::Error(e)) => {
                        tracing::debug!(code = e.code, message = %e.message, "Secret watch ended");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "Secret watch failed; polling");
                        tokio::time::sleep_until(deadline).await;
                        return;
                    }
                }
            }
            // Never a tight loop of watches that end at once.
            tokio::time::sleep_until(started + Duration::from_secs(1)).await;
        }
        tokio::time::sleep_until(deadline).await;
    };
    let _ = tokio::time::timeout_at(deadline, watched).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        Keyholder(Args),
    }

    /// What the controller renders is what the subcommand accepts.
    #[test]
    fn container_args_parse_back() {
        let args = container_args(&SidecarArgs {
            secret_name: "corp-api-key",
            headscale_version: "0.29.2",
            key_lifetime: "90d",
            rotate_before: "30d",
        });
        let mut argv = vec!["headscale-operator".to_string()];
        argv.extend(args);
        let Command::Keyholder(parsed) =
            Cli::try_parse_from(argv.iter().map(String::as_str).chain(["--namespace", "ns"]))
                .unwrap()
                .command;
        let s = Settings::from_args(&parsed).unwrap();
        assert_eq!(s.socket, Path::new(SOCKET_PATH));
        assert_eq!(s.secret, "corp-api-key");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.policy.lifetime, Duration::from_secs(90 * 86_400));
        assert_eq!(s.policy.rotate_before, Duration::from_secs(30 * 86_400));
        assert_eq!(s.policy.grace, Duration::from_secs(600));
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(
            parsed.probe_addr,
            Some(SocketAddr::from(([0, 0, 0, 0], PROBE_PORT)))
        );
        assert_eq!(parsed.log_format, LogFormat::Json);
    }

    #[test]
    fn protocol_per_version() {
        let table = [
            ("0.28.0", Ok(Protocol::Grpc)),
            ("v0.29.2", Ok(Protocol::Grpc)),
            ("v0.29.0-beta.1", Ok(Protocol::Grpc)),
            ("v0.29.3-0.20260721000000-f20f1f12abcd", Ok(Protocol::Http)),
            ("0.30.0", Ok(Protocol::Http)),
            ("v0.30.0-beta.1", Ok(Protocol::Http)),
            ("0.27.1", Err(())),
        ];
        for (v, want) in table {
            let got = Protocol::for_version(&Version::parse(v).unwrap()).map_err(drop);
            assert_eq!(got, want, "{v}");
        }
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let base = Args {
            socket: SOCKET_PATH.into(),
            secret: "s".into(),
            namespace: "ns".into(),
            headscale_version: "0.29.2".into(),
            key_lifetime: Duration::from_secs(3600),
            rotate_before: Duration::from_secs(600),
            interval: Duration::from_secs(30),
            previous_key_grace: Duration::from_secs(600),
            probe_addr: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
        };
        assert!(Settings::from_args(&base).is_ok());
        type Edit = fn(&mut Args);
        let cases: [(&str, Edit); 6] = [
            ("not a version", |a| a.headscale_version = "latest".into()),
            ("0.28 and newer", |a| a.headscale_version = "0.27.1".into()),
            ("must be shorter", |a| a.rotate_before = a.key_lifetime),
            ("at most 3650d", |a| {
                a.key_lifetime = MAX_KEY_LIFETIME + Duration::from_secs(1)
            }),
            ("must not be empty", |a| a.namespace.clear()),
            ("at least 1s", |a| a.interval = Duration::from_millis(500)),
        ];
        for (want, f) in cases {
            let mut a = base.clone();
            f(&mut a);
            let err = Settings::from_args(&a).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        assert!(duration_arg("90d").is_ok());
        assert!(
            duration_arg("ninety days")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    /// What the operator's validation accepts, the keyholder parses the same (it once
    /// failed above u32::MAX seconds and exited on a spec the operator had accepted).
    #[test]
    fn durations_parse_as_the_operator_parses_them() {
        for s in [
            "90d",
            "1h30m",
            "500ms",
            "0",
            "2w",
            "5000000000s",
            "4294967296s",
            "3650d",
            "",
            "d",
            "5x",
            "99999999999999999999s",
        ] {
            assert_eq!(duration_arg(s).ok(), crate::render::parse_duration(s), "{s:?}");
        }
        assert_eq!(
            crate::render::parse_duration(MAX_KEY_LIFETIME_TEXT),
            Some(MAX_KEY_LIFETIME)
        );
        let mut args = Args {
            socket: SOCKET_PATH.into(),
            secret: "s".into(),
            namespace: "ns".into(),
            headscale_version: "0.29.2".into(),
            key_lifetime: MAX_KEY_LIFETIME,
            rotate_before: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(30),
            previous_key_grace: Duration::from_secs(600),
            probe_addr: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
        };
        assert!(Settings::from_args(&args).is_ok(), "10 years is allowed");
        args.key_lifetime = duration_arg("5000000000s").unwrap();
        assert!(Settings::from_args(&args).is_err());
    }

    #[test]
    fn rbac_is_one_secret_three_verbs() {
        let rules = role_rules("corp-api-key");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["corp-api-key".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "watch", "patch"]);
    }

    #[test]
    fn the_sidecar_mounts_the_socket_directory() {
        let c = sidecar_container(
            "ghcr.io/x/headscale-operator:1",
            &SidecarArgs {
                secret_name: "k",
                headscale_version: "0.28.0",
                key_lifetime: "1d",
                rotate_before: "1h",
            },
        );
        let mounts = c.volume_mounts.unwrap();
        assert_eq!(
            (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
            (SOCKET_VOLUME, SOCKET_DIR)
        );
        assert!(SOCKET_PATH.starts_with(SOCKET_DIR));
        assert!(c.readiness_probe.is_none());
        assert_eq!(c.args.unwrap()[0], "keyholder");
    }
}
