//! Managed mode: the operator runs Headscale. One reconcile:
//! validate the spec (nothing is applied while it is invalid: the running server keeps
//! its last good config) -> read the Secrets the pod will mount (their values only to
//! hash them) -> generate the keys Secret once -> render the config -> apply every
//! child whose desired form changed (an idle resync writes nothing) -> observe the
//! volume, the pod and the API with the key the keyholder sidecar minted.

pub mod build;

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Context;
use super::server::{Error, Outcome};
use crate::api::HeadscaleServer;
use crate::api::conditions::reason;
use crate::api::server::{ApiKeyStatus, DatabaseType, ManagedSpec, ServerDnsStatus};
use crate::controller::dns::build as dns_build;
use crate::headscale;
use crate::metrics::KindLabels;
use crate::render;
use crate::secret::SecretString;
use build::Names;

pub const FIELD_MANAGER: &str = super::server::FIELD_MANAGER;

/// The API key Secret's contract with the keyholder sidecar (see `crate::keyholder`).
pub use crate::keyholder::{
    ANNOTATION_CONFIRMED_ID as API_KEY_CONFIRMED_ANNOTATION,
    ANNOTATION_EXPIRATION as API_KEY_EXPIRATION_ANNOTATION, ANNOTATION_ID as API_KEY_ID_ANNOTATION,
    ANNOTATION_REJECTED as API_KEY_REJECTED_ANNOTATION, API_KEY_DATA_KEY as API_KEY_DATA,
};
/// On the server, and honoured only with `--allow-endpoint-annotation`: the URL the
/// operator reaches the server at instead of its Service (an operator running outside
/// the cluster, as in the tests, cannot resolve Service names).
pub const ENDPOINT_ANNOTATION: &str = "headscale.operator.dev/endpoint";

/// Managed-mode reasons.
pub mod why {
    /// The spec is one Headscale would refuse (or we cannot run); nothing applied.
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    /// An object the server needs exists under its name and is not the server's.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The generated keys Secret lacks a key; the operator never regenerates a noise key.
    pub const KEYS_SECRET_INVALID: &str = "KeysSecretInvalid";
    /// The data volume is not bound yet.
    pub const VOLUME_PENDING: &str = "VolumePending";
    /// The pod does not exist yet, is starting, or is being replaced.
    pub const POD_NOT_READY: &str = "PodNotReady";
    /// Headscale exited; the message has the end of its log.
    pub const HEADSCALE_FAILED: &str = "HeadscaleFailed";
    /// The keyholder has not stored an API key yet.
    pub const API_KEY_PENDING: &str = "ApiKeyPending";
    /// The API server refused an object the operator built from the spec.
    pub const APPLY_REJECTED: &str = "ApplyRejected";
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What a managed reconcile found, beyond the outcome.
#[derive(Debug, Default)]
pub struct Extra {
    pub api_key: Option<ApiKeyStatus>,
    pub config_hash: Option<String>,
    /// What became of the DNS; `None` when the reconcile stopped before it.
    pub dns: Option<DnsResult>,
}

/// The DNS a managed reconcile rendered, and whether it reached the cluster.
#[derive(Debug)]
pub struct DnsResult {
    /// The DnsConfig in force was refused (its problems, and a description of the DNS
    /// the server keeps instead).
    pub refused: Option<(Vec<render::Problem>, String)>,
    /// `status.dns` of the server for the DNS rendered.
    pub status: ServerDnsStatus,
    /// The records ConfigMap, config and StatefulSet were all applied.
    pub applied: bool,
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn stalled(reason: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::not_ready(reason, message, true)
}

fn waiting(reason: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::not_ready(reason, message, false)
}

/// The URL the operator reaches a managed server at.
pub fn endpoint(ctx: &Context, hs: &HeadscaleServer) -> String {
    if ctx.settings.allow_endpoint_annotation
        && let Some(url) = hs.annotations().get(ENDPOINT_ANNOTATION)
    {
        return url.clone();
    }
    format!(
        "http://{}.{}.svc:{}",
        Names::of(&hs.name_any()).service,
        hs.namespace().unwrap_or_default(),
        build::HTTP_PORT
    )
}

/// Reconciles a managed server's children and observes it. `dns` holds the DnsConfigs
/// naming the server.
pub async fn reconcile(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    spec: &ManagedSpec,
    dns: &dns_build::Selection,
) -> Result<(Outcome, Extra), Error> {
    let mut extra = Extra::default();
    let name = hs.name_any();
    let endpoint = endpoint(ctx, hs);

    // Validate: an invalid spec changes nothing on the cluster.
    if name.len() > build::MAX_NAME_LEN {
        return Ok((
            stalled(
                reason::INVALID_SPEC,
                format!(
                    "a managed server's name must be at most {} characters (its StatefulSet's pods need the rest); {name:?} has {}",
                    build::MAX_NAME_LEN,
                    name.len()
                ),
            ),
            extra,
        ));
    }
    let names = Names::of(&name);
    let layout = render::Layout::pod();

    // DNS: the DnsConfig in force, or, when it is refused, the DNS the running config
    // was built from (read back from its ConfigMap), so a refused DnsConfig changes
    // nothing while the rest of the spec still applies.
    let (dns, records, dns_result) = plan_dns(ctx, hs, ns, spec, dns, &names, &layout).await?;
    extra.dns = Some(dns_result);
    let target = match render::validate(spec, &dns) {
        Ok(t) => t,
        Err(problems) => {
            let reason = problems.first().map(|p| p.reason).unwrap_or(why::INVALID_CONFIG);
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Ok((
                stalled(
                    reason,
                    format!("{message} (nothing was changed: the running server keeps its config)"),
                ),
                extra,
            ));
        }
    };
    // Dereference the Secrets the pod reads at start; their values go into the hash only.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut hashed = Vec::<u8>::new();
    if let (DatabaseType::Postgres, Some(pg)) = (spec.database.type_, &spec.database.postgres) {
        match secret_value(
            &secrets,
            &pg.password_secret_ref.name,
            &pg.password_secret_ref.key,
            "spec.managed.database.postgres.passwordSecretRef",
        )
        .await?
        {
            Ok(v) => hashed.extend(Sha256::digest(v.expose().as_bytes())),
            Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
        }
    }
    if let Some(oidc) = &spec.oidc {
        match secret_value(
            &secrets,
            &oidc.client_secret_ref.name,
            &oidc.client_secret_ref.key,
            "spec.managed.oidc.clientSecretRef",
        )
        .await?
        {
            Ok(v) => hashed.extend(Sha256::digest(v.expose().as_bytes())),
            Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
        }
    }

    // The keys Secret: generated once, never overwritten.
    match ensure_keys(ctx, hs, &secrets, &names).await? {
        Ok(keys_hash) => hashed.extend(keys_hash),
        Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
    }

    // Build.
    let config = render::render_config(spec, &target, &dns, &layout);
    let mut all = config.as_bytes().to_vec();
    all.push(0);
    all.extend(&hashed);
    let config_hash = sha256_hex(&all);
    extra.config_hash = Some(config_hash.clone());

    // Apply, children first, the StatefulSet last; stop at the first refusal.
    macro_rules! step {
        ($e:expr) => {
            if let Err(outcome) = $e.await? {
                return Ok((outcome.with_endpoint(&endpoint), extra));
            }
        };
    }
    step!(create_if_absent(
        ctx,
        &secrets,
        &names.api_key_secret,
        build::api_key_secret(hs, &names),
        hs
    ));
    // The records first: the pod mounts them, and their content never rolls it.
    match &records {
        Some(json) => step!(apply::<ConfigMap>(
            ctx,
            hs,
            ns,
            build::records_config_map(hs, &names, json)
        )),
        None => step!(ensure_records(ctx, hs, ns, &names)),
    }
    step!(apply::<ConfigMap>(
        ctx,
        hs,
        ns,
        build::config_map(hs, &names, &config)
    ));
    step!(apply::<ServiceAccount>(
        ctx,
        hs,
        ns,
        build::service_account(hs, &names)
    ));
    step!(apply::<Role>(ctx, hs, ns, build::role(hs, &names)));
    step!(apply::<RoleBinding>(ctx, hs, ns, build::role_binding(hs, &names)));
    step!(apply::<Service>(ctx, hs, ns, build::service(hs, &names, spec)));
    let client = &ctx.client;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let existing = sts_api
        .get_opt(&names.statefulset)
        .await
        .map_err(kube_err("reading StatefulSet"))?;
    let settings = build::PodSettings {
        keyholder_image: ctx.settings.keyholder_image.clone(),
    };
    let inputs = build::Inputs {
        config_yaml: &config,
        config_hash: &config_hash,
        existing_claims: existing.as_ref().and_then(build::existing_claims),
        settings: &settings,
    };
    step!(apply::<StatefulSet>(
        ctx,
        hs,
        ns,
        build::statefulset(hs, &names, spec, &inputs)
    ));
    if let Some(d) = extra.dns.as_mut() {
        d.applied = true;
    }

    // Observe: the API key first (status shows it even while the pod restarts).
    let key_secret = secrets
        .get_opt(&names.api_key_secret)
        .await
        .map_err(kube_err("reading the API key Secret"))?;
    extra.api_key = key_secret.as_ref().and_then(api_key_status);

    if let Some(outcome) = observe_pod(ctx, ns, &names, &config_hash, spec).await? {
        return Ok((outcome.with_endpoint(&endpoint), extra));
    }
    let key = match super::connect::read_key(key_secret.as_ref(), &names.api_key_secret, API_KEY_DATA) {
        Ok(k) => k,
        Err(_) => {
            return Ok((
                waiting(
                    why::API_KEY_PENDING,
                    format!(
                        "Headscale is running; waiting for the keyholder sidecar to store the operator's API key in Secret {:?}",
                        names.api_key_secret
                    ),
                )
                .with_endpoint(&endpoint),
                extra,
            ));
        }
    };
    let client =
        match headscale::Client::with_config(&endpoint, key, super::connect::client_config(&ctx.metrics)) {
            Ok(c) => c,
            Err(e) => return Ok((stalled(reason::INVALID_SPEC, e.to_string()), extra)),
        };
    let outcome = super::server::probe(&client).await;
    if let Outcome::NotReady {
        reason: reason::API_KEY_REJECTED,
        ..
    } = &outcome
    {
        // Ask the keyholder for a new key; it removes the mark when it stores one.
        let patch = json!({"metadata": {"annotations": {API_KEY_REJECTED_ANNOTATION: "true"}}});
        secrets
            .patch(
                &names.api_key_secret,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_err("marking the API key rejected"))?;
        count_write(ctx, hs, "Secret");
        return Ok((
            waiting(
                reason::API_KEY_REJECTED,
                "Headscale refused the operator's API key; the keyholder sidecar mints a new one",
            )
            .with_endpoint(&endpoint),
            extra,
        ));
    }
    // The first success with a new key: tell the keyholder, so it expires the key this
    // one replaced now instead of after its grace period.
    if matches!(outcome, Outcome::Ready { .. })
        && let Some(secret) = &key_secret
        && let Some(id) = secret.annotations().get(API_KEY_ID_ANNOTATION)
        && secret.annotations().get(API_KEY_CONFIRMED_ANNOTATION) != Some(id)
    {
        let patch = json!({"metadata": {"annotations": {API_KEY_CONFIRMED_ANNOTATION: id}}});
        secrets
            .patch(
                &names.api_key_secret,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_err("confirming the API key"))?;
        count_write(ctx, hs, "Secret");
        tracing::info!(server = %format!("{ns}/{name}"), key_id = %id, "confirmed the operator's API key to the keyholder");
    }
    Ok((outcome, extra))
}

/// The DNS to render and the records file to write (`None`: leave the live one), from
/// the DnsConfig in force; when it is refused, the DNS the live config carries.
async fn plan_dns(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    spec: &ManagedSpec,
    selection: &dns_build::Selection,
    names: &Names,
    layout: &render::Layout,
) -> Result<(render::DnsInput, Option<String>, DnsResult), Error> {
    let Some(dc) = &selection.in_force else {
        let input = dns_build::default_input(layout);
        let status = dns_build::server_status(&input, None, 0);
        let result = DnsResult {
            refused: None,
            status,
            applied: false,
        };
        return Ok((input, Some(render::render_records(&[])), result));
    };
    match dns_build::candidate(&dc.spec, spec, layout) {
        Ok(c) => {
            let status = dns_build::server_status(
                &c.input,
                Some((dc.name_any(), dc.metadata.generation)),
                c.record_count,
            );
            let result = DnsResult {
                refused: None,
                status,
                applied: false,
            };
            Ok((c.input, Some(c.records), result))
        }
        Err(problems) => {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            let live = cms
                .get_opt(&names.config_map)
                .await
                .map_err(kube_err("reading the config ConfigMap"))?;
            let rendered = live
                .as_ref()
                .and_then(|cm| cm.data.as_ref()?.get(build::CONFIG_KEY))
                .and_then(|text| render::rendered_dns(text));
            let records = cms
                .get_opt(&names.dns_records)
                .await
                .map_err(kube_err("reading the DNS records ConfigMap"))?;
            let count = records
                .as_ref()
                .and_then(|cm| cm.data.as_ref()?.get(build::RECORDS_KEY))
                .and_then(|text| render::count_records(text))
                .unwrap_or(0);
            // Which DnsConfig that DNS came from: what status said when it was applied.
            let from = rendered.as_ref().and_then(|_| {
                let d = hs.status.as_ref()?.dns.as_ref()?;
                Some((d.config_ref.clone()?, d.config_generation))
            });
            let input = rendered.unwrap_or_else(|| dns_build::default_input(layout));
            let kept = match &from {
                Some((n, Some(g))) => format!("the DNS of DnsConfig {n:?} generation {g}"),
                Some((n, None)) => format!("the DNS of DnsConfig {n:?}"),
                None if input == dns_build::default_input(layout) => {
                    "the safe default DNS (no DNS settings, no extra records)".to_string()
                }
                None => "the DNS its config has now".to_string(),
            };
            let status = dns_build::server_status(&input, from, count);
            let result = DnsResult {
                refused: Some((problems, kept)),
                status,
                applied: false,
            };
            Ok((input, None, result))
        }
    }
}

/// Makes sure the records ConfigMap exists (with `[]`) without changing a live one.
async fn ensure_records(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    names: &Names,
) -> Result<Result<(), Outcome>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .get_metadata_opt(&names.dns_records)
        .await
        .map_err(kube_err(format!("reading ConfigMap {}", names.dns_records)))?
    {
        Some(live) if owned_by(&live.metadata, hs) => Ok(Ok(())),
        Some(_) => Ok(Err(conflict("ConfigMap", &names.dns_records))),
        None => {
            apply::<ConfigMap>(
                ctx,
                hs,
                ns,
                build::records_config_map(hs, names, &render::render_records(&[])),
            )
            .await
        }
    }
}

fn count_write(ctx: &Context, hs: &HeadscaleServer, kind: &str) {
    ctx.metrics
        .kube_writes
        .get_or_create(&KindLabels {
            namespace: hs.namespace().unwrap_or_default(),
            kind: kind.to_string(),
        })
        .inc();
}

/// The key id and expiry the keyholder noted on the Secret.
pub fn api_key_status(secret: &Secret) -> Option<ApiKeyStatus> {
    let a = secret.metadata.annotations.as_ref()?;
    let id = a.get(API_KEY_ID_ANNOTATION).cloned();
    let expiration = a.get(API_KEY_EXPIRATION_ANNOTATION).cloned();
    (id.is_some() || expiration.is_some()).then_some(ApiKeyStatus { id, expiration })
}

/// A referenced Secret's value, or why there is none (naming the field, never the value).
async fn secret_value(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    field: &str,
) -> Result<Result<SecretString, Outcome>, Error> {
    let secret = match secrets.get_opt(name).await {
        Ok(s) => s,
        Err(kube::Error::Api(status)) => {
            return Ok(Err(waiting(
                reason::SECRET_READ_FAILED,
                format!("cannot read Secret {name:?} ({field}): {}", status.message),
            )));
        }
        Err(e) => return Err(kube_err(format!("reading Secret {name}"))(e)),
    };
    Ok(
        super::connect::read_key(secret.as_ref(), name, key).map_err(|o| match o {
            Outcome::NotReady {
                reason,
                message,
                stalled: s,
                ..
            } => Outcome::not_ready(reason, format!("{message} ({field})"), s),
            other => other,
        }),
    )
}

/// Creates the keys Secret with fresh keys if it does not exist; returns the hash of
/// its values. An existing Secret is never overwritten: it may hold a noise key every
/// client depends on (or one brought over from an existing server).
async fn ensure_keys(
    ctx: &Context,
    hs: &HeadscaleServer,
    secrets: &Api<Secret>,
    names: &Names,
) -> Result<Result<Vec<u8>, Outcome>, Error> {
    let existing = secrets
        .get_opt(&names.keys_secret)
        .await
        .map_err(kube_err("reading the keys Secret"))?;
    let secret = match existing {
        Some(s) => s,
        None => {
            let noise = render::generate_private_key().map_err(|e| Error::Build(e.to_string()))?;
            let derp = render::generate_private_key().map_err(|e| Error::Build(e.to_string()))?;
            let obj = build::keys_secret(hs, names, noise.expose(), derp.expose());
            let secret: Secret = serde_json::from_value(obj).map_err(|e| Error::Build(e.to_string()))?;
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(s) => {
                    count_write(ctx, hs, "Secret");
                    tracing::info!(server = %format!("{}/{}", hs.namespace().unwrap_or_default(), hs.name_any()),
                        secret = %names.keys_secret, "generated the noise and DERP keys");
                    s
                }
                Err(kube::Error::Api(s)) if s.code == 409 => secrets
                    .get(&names.keys_secret)
                    .await
                    .map_err(kube_err("reading the keys Secret"))?,
                Err(e) => return Err(kube_err("creating the keys Secret")(e)),
            }
        }
    };
    let mut hash = Vec::new();
    for key in [build::NOISE_KEY, build::DERP_KEY] {
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice());
        match value {
            Some(v) if v.starts_with(b"privkey:") => hash.extend(Sha256::digest(v)),
            _ => {
                return Ok(Err(stalled(
                    why::KEYS_SECRET_INVALID,
                    format!(
                        "Secret {:?} has no valid {key:?} (Headscale's \"privkey:<hex>\" text); the operator never replaces \
                         keys on its own, because a new noise key disconnects every client: restore the key, or delete the \
                         Secret to have new keys generated",
                        names.keys_secret
                    ),
                )));
            }
        }
    }
    Ok(Ok(hash))
}

fn owned_by(meta: &kube::api::ObjectMeta, hs: &HeadscaleServer) -> bool {
    let uid = hs.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
}

fn conflict(kind: &str, name: &str) -> Outcome {
    stalled(
        why::NAME_CONFLICT,
        format!(
            "{kind} {name:?} already exists and does not belong to this HeadscaleServer; rename or delete it"
        ),
    )
}

async fn create_if_absent(
    ctx: &Context,
    api: &Api<Secret>,
    name: &str,
    obj: Value,
    hs: &HeadscaleServer,
) -> Result<Result<(), Outcome>, Error> {
    match api
        .get_metadata_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {name}")))?
    {
        Some(existing) if owned_by(&existing.metadata, hs) => Ok(Ok(())),
        Some(_) => Ok(Err(conflict("Secret", name))),
        None => {
            let secret: Secret = serde_json::from_value(obj).map_err(|e| Error::Build(e.to_string()))?;
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    count_write(ctx, hs, "Secret");
                    Ok(Ok(()))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Ok(())),
                Err(e) => Err(kube_err(format!("creating Secret {name}"))(e)),
            }
        }
    }
}

/// Server-side applies `obj` unless the live object already carries its hash.
async fn apply<K>(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    obj: Value,
) -> Result<Result<(), Outcome>, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let (obj, hash) = build::stamp(obj);
    if let Some(live) = api
        .get_metadata_opt(&name)
        .await
        .map_err(kube_err(format!("reading {kind} {name}")))?
    {
        if !owned_by(&live.metadata, hs) {
            return Ok(Err(conflict(&kind, &name)));
        }
        if live.annotations().get(build::APPLIED_HASH_ANNOTATION) == Some(&hash) {
            return Ok(Ok(()));
        }
    }
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
    {
        Ok(_) => {
            count_write(ctx, hs, &kind);
            tracing::info!(server = %format!("{ns}/{}", hs.name_any()), %kind, %name, "applied");
            Ok(Ok(()))
        }
        // The API server refused what we built from the spec (e.g. a resource quantity it
        // rejects): the user must change the spec. Nothing else is applied after it.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => Ok(Err(stalled(
            why::APPLY_REJECTED,
            format!("the API server refused {kind} {name:?}: {}", s.message),
        ))),
        Err(e) => Err(kube_err(format!("applying {kind} {name}"))(e)),
    }
}

/// Why the pod is not serving yet, or `None` when it is Ready with the current config.
async fn observe_pod(
    ctx: &Context,
    ns: &str,
    names: &Names,
    config_hash: &str,
    spec: &ManagedSpec,
) -> Result<Option<Outcome>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pod_name = format!("{}-0", names.statefulset);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(kube_err("reading the pod"))?;
    if spec.database.type_ == DatabaseType::Sqlite {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        if let Some(pvc) = pvcs
            .get_opt(&names.pvc)
            .await
            .map_err(kube_err("reading the volume claim"))?
        {
            let phase = pvc
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase != "Bound" {
                let class = pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.clone())
                    .unwrap_or_else(|| "the cluster default".into());
                return Ok(Some(waiting(
                    why::VOLUME_PENDING,
                    format!(
                        "volume claim {:?} is {phase}: no volume of storage class {class} is available",
                        names.pvc
                    ),
                )));
            }
        }
    }
    let Some(pod) = pod else {
        return Ok(Some(waiting(
            why::POD_NOT_READY,
            format!("pod {pod_name:?} does not exist yet"),
        )));
    };
    Ok(pod_problem(&pod, config_hash))
}

/// Why a pod is not serving the current config. Pure.
pub fn pod_problem(pod: &Pod, config_hash: &str) -> Option<Outcome> {
    let name = pod.name_any();
    if let Some(cs) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "headscale"))
    {
        let crashing = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
        let terminated = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
        let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(t) = terminated.or(if crashing { last } else { None })
            && t.exit_code != 0
        {
            let tail = t.message.as_deref().map(log_tail).unwrap_or_default();
            return Some(stalled(
                why::HEADSCALE_FAILED,
                format!(
                    "Headscale exited with code {} ({} restarts){}",
                    t.exit_code,
                    cs.restart_count,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {tail}")
                    }
                ),
            ));
        }
    }
    let hash = pod.annotations().get(build::CONFIG_HASH_ANNOTATION);
    if hash.map(String::as_str) != Some(config_hash) {
        return Some(waiting(
            why::POD_NOT_READY,
            format!("pod {name:?} runs an older config; the StatefulSet is replacing it"),
        ));
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        return Some(waiting(
            why::POD_NOT_READY,
            format!("pod {name:?} is {phase} and not Ready yet"),
        ));
    }
    None
}

/// The end of a log excerpt: the last line that is not empty, at most 300 bytes.
pub fn log_tail(message: &str) -> String {
    let line = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    // Headscale logs JSON: its `message` and `error` fields say the most.
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
        let err = v.get("error").and_then(Value::as_str).unwrap_or("");
        let joined = match (msg.is_empty(), err.is_empty()) {
            (false, false) => format!("{msg}: {err}"),
            (false, true) => msg.to_string(),
            (true, false) => err.to_string(),
            (true, true) => line.to_string(),
        };
        return super::truncate(&joined, 300);
    }
    super::truncate(line, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_crashing_headscale_shows_its_last_log_line() {
        let p = pod(json!({
            "metadata": {"name": "hs-0", "annotations": {build::CONFIG_HASH_ANNOTATION: "h"}},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "headscale", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message":
                    "{\"level\":\"info\",\"message\":\"starting\"}\n{\"level\":\"fatal\",\"error\":\"dns.base_domain cannot be a part of server_url\",\"message\":\"Error loading config\"}\n"}},
            }]},
        }));
        match pod_problem(&p, "h") {
            Some(Outcome::NotReady {
                reason,
                message,
                stalled,
                ..
            }) => {
                assert_eq!(reason, why::HEADSCALE_FAILED);
                assert!(stalled);
                assert!(message.contains("code 1 (3 restarts)"), "{message}");
                assert!(
                    message.ends_with("Error loading config: dns.base_domain cannot be a part of server_url"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_or_unready_pod_is_not_ready() {
        let ready = |hash: &str, ready: &str| {
            pod(json!({
                "metadata": {"name": "hs-0", "annotations": {build::CONFIG_HASH_ANNOTATION: hash}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]},
            }))
        };
        assert!(pod_problem(&ready("h", "True"), "h").is_none());
        let old = pod_problem(&ready("old", "True"), "h").unwrap();
        assert!(matches!(
            old,
            Outcome::NotReady {
                reason: why::POD_NOT_READY,
                stalled: false,
                ..
            }
        ));
        assert!(pod_problem(&ready("h", "False"), "h").is_some());
    }

    #[test]
    fn log_tail_takes_the_last_line_and_cuts_it() {
        assert_eq!(log_tail("a\nb\n\n"), "b");
        assert!(log_tail(&"x".repeat(1000)).len() < 310);
    }
}
