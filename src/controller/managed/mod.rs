//! Managed mode: the operator runs Headscale. One reconcile:
//! validate the spec (nothing is applied while it is invalid: the running server keeps
//! its last good config) -> read the Secrets the pod will mount (their values only to
//! hash them) -> generate the keys Secret once -> render the config -> apply every
//! child whose desired form changed (an idle resync writes nothing) -> observe the
//! volume, the pod and the API with the key the keyholder sidecar minted.

pub mod build;
pub mod drift;

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
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
/// On the server: `"true"` lets the operator generate new noise and DERP keys for a
/// server that has run before and lost its keys Secret (every client must log in again).
pub const REGENERATE_KEYS_ANNOTATION: &str = "headscale.operator.dev/regenerate-keys";

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
    /// The pod cannot start without a person: an image that cannot be pulled, a
    /// container the runtime cannot create, or no node that can take the pod.
    pub const POD_FAILING: &str = "PodFailing";
    /// The keyholder has not stored an API key yet.
    pub const API_KEY_PENDING: &str = "ApiKeyPending";
    /// The API server refused an object the operator built from the spec.
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// The keys Secret is gone from a server that has run; new keys need a person's yes.
    pub const KEYS_SECRET_MISSING: &str = "KeysSecretMissing";
    /// `version` is older than the running one.
    pub const DOWNGRADE_REFUSED: &str = "DowngradeRefused";
    /// `version` is more than one minor release newer than the running one.
    pub const UPGRADE_SKIPS_MINOR: &str = "UpgradeSkipsMinor";
    /// The DnsConfig in force is refused and the DNS the server runs with cannot be read
    /// back (its config ConfigMap was deleted or edited): nothing is applied.
    pub const DNS_UNRECOVERABLE: &str = "DnsUnrecoverable";
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
    if let Some(problem) = check_name(&name) {
        return Ok((stalled(reason::INVALID_SPEC, problem), extra));
    }
    let names = Names::of(&name);
    let layout = render::Layout::pod();

    // DNS: the DnsConfig in force, or, when it is refused, the DNS the running config
    // was built from (read back from its ConfigMap), so a refused DnsConfig changes
    // nothing while the rest of the spec still applies.
    let (dns, records, dns_result) = match plan_dns(ctx, hs, ns, spec, dns, &names, &layout).await? {
        Ok(planned) => planned,
        Err((outcome, dns_result)) => {
            extra.dns = Some(dns_result);
            return Ok((outcome, extra));
        }
    };
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
            return Ok((stalled(reason, format!("{message}{UNCHANGED}")), extra));
        }
    };
    if let Some(problem) = check_api_key_spec(spec) {
        return Ok((
            stalled(reason::INVALID_SPEC, format!("{problem}{UNCHANGED}")),
            extra,
        ));
    }
    let running = hs.status.as_ref().and_then(|s| s.version.as_deref());
    if let Some((reason, problem)) = check_version_step(running, &spec.version) {
        return Ok((stalled(reason, format!("{problem}{UNCHANGED}")), extra));
    }

    // Dereference the Secrets the pod reads at start; their values go into the hash only.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut hashed = Vec::<u8>::new();
    let mut read_at_start = Vec::new();
    if let (DatabaseType::Postgres, Some(pg)) = (spec.database.type_, &spec.database.postgres) {
        read_at_start.push((
            &pg.password_secret_ref,
            "spec.managed.database.postgres.passwordSecretRef",
            SecretRule::PostgresPassword,
        ));
    }
    if let Some(oidc) = &spec.oidc {
        read_at_start.push((
            &oidc.client_secret_ref,
            "spec.managed.oidc.clientSecretRef",
            SecretRule::OidcClientSecret,
        ));
    }
    for (reference, field, rule) in read_at_start {
        match secret_value(&secrets, &reference.name, &reference.key, field, rule).await? {
            Ok(v) => hashed.extend(Sha256::digest(v.expose().as_bytes())),
            Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
        }
    }

    // The keys: the existing Secret's, or new ones (created only after the preflight).
    let keys = match keys(ctx, hs, ns, spec, &secrets, &names).await? {
        Ok(k) => k,
        Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
    };
    hashed.extend(&keys.hash);

    // Build.
    let config = render::render_config(spec, &target, &dns, &layout);
    let mut all = config.as_bytes().to_vec();
    all.push(0);
    all.extend(&hashed);
    let config_hash = sha256_hex(&all);

    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let existing = sts_api
        .get_opt(&names.statefulset)
        .await
        .map_err(kube_err("reading StatefulSet"))?;
    // A StatefulSet being deleted (`kubectl delete --cascade=orphan`, the way to change its
    // immutable podManagementPolicy) is made again once it is gone, not from its fields.
    if let Some(sts) = &existing
        && sts.metadata.deletion_timestamp.is_some()
    {
        return Ok((
            waiting(
                why::POD_NOT_READY,
                format!(
                    "StatefulSet {:?} is being deleted; the operator creates it again once it is gone",
                    names.statefulset
                ),
            )
            .with_endpoint(&endpoint),
            extra,
        ));
    }
    let settings = build::PodSettings {
        keyholder_image: ctx.settings.keyholder_image.clone(),
    };
    let inputs = build::Inputs {
        config_yaml: &config,
        config_hash: &config_hash,
        existing_claims: existing.as_ref().and_then(build::existing_claims),
        existing_pod_management_policy: existing.as_ref().map(build::existing_pod_management_policy),
        settings: &settings,
    };
    let mut desired = Vec::new();
    // The records first: the pod mounts them, and their content never rolls it.
    match &records {
        Some(json) => desired.push(Desired::of::<ConfigMap>(build::records_config_map(
            hs, &names, json,
        ))),
        None => match default_records(ctx, hs, ns, &names).await? {
            Ok(Some(d)) => desired.push(d),
            Ok(None) => {}
            Err(outcome) => return Ok((outcome.with_endpoint(&endpoint), extra)),
        },
    }
    desired.extend([
        Desired::of::<ConfigMap>(build::config_map(hs, &names, &config)),
        Desired::of::<ServiceAccount>(build::service_account(hs, &names)),
        Desired::of::<Role>(build::role(hs, &names)),
        Desired::of::<RoleBinding>(build::role_binding(hs, &names)),
        Desired::of::<Service>(build::service(hs, &names, spec)),
    ]);
    if let Some(obj) = build::ingress(hs, &names, spec) {
        desired.push(Desired::of::<Ingress>(obj));
    }
    if let Some(obj) = build::network_policy(hs, &names, spec) {
        desired.push(Desired::of::<NetworkPolicy>(obj));
    }
    let mut sts = Desired::of::<StatefulSet>(build::statefulset(hs, &names, spec, &inputs));
    // A StatefulSet that keeps an older podManagementPolicy is only ever replaced: were it
    // deleted meanwhile (to be made anew with the current one), an apply would create it
    // again with the old policy.
    sts.must_exist = inputs
        .existing_pod_management_policy
        .as_deref()
        .is_some_and(|p| p != build::POD_MANAGEMENT_POLICY);
    desired.push(sts);

    // Preflight, before anything is written: no name is someone else's, and the API
    // server accepts every object that changes (a server-side dry run). A refusal
    // leaves everything as it was.
    if let Some(outcome) = secret_conflict(&secrets, hs, &names.api_key_secret).await? {
        return Ok((outcome.with_endpoint(&endpoint), extra));
    }
    let mut changes = Vec::new();
    for d in desired {
        match d.plan(ctx, hs, ns).await? {
            Plan::Unchanged => {}
            Plan::Conflict(outcome) | Plan::Wait(outcome) => {
                return Ok((outcome.with_endpoint(&endpoint), extra));
            }
            Plan::Apply(d) => changes.push(d),
        }
    }
    for d in &changes {
        if let Err(outcome) = d.apply(ctx, ns, true).await? {
            return Ok((outcome.with_endpoint(&endpoint), extra));
        }
    }

    // An Ingress or NetworkPolicy the spec no longer asks for goes (only one the server
    // owns).
    if spec.ingress.is_none() {
        remove_dropped::<Ingress>(ctx, hs, ns, &names.service).await?;
    }
    if !spec.network_policy.enabled {
        remove_dropped::<NetworkPolicy>(ctx, hs, ns, &names.network_policy).await?;
    }

    // Apply: Secrets first, the StatefulSet last.
    if let Some(new_keys) = &keys.create
        && let Err(outcome) = create_keys(ctx, hs, &secrets, &names, new_keys).await?
    {
        return Ok((outcome.with_endpoint(&endpoint), extra));
    }
    if let Some(patch) = &keys.owner_patch
        && let Err(outcome) = own_keys(ctx, hs, &secrets, &names, patch).await?
    {
        return Ok((outcome.with_endpoint(&endpoint), extra));
    }
    create_if_absent(
        ctx,
        &secrets,
        &names.api_key_secret,
        build::api_key_secret(hs, &names),
        hs,
    )
    .await?;
    for d in &changes {
        if let Err(outcome) = d.apply(ctx, ns, false).await? {
            return Ok((outcome.with_endpoint(&endpoint), extra));
        }
        count_write(ctx, hs, &d.kind);
        tracing::info!(server = %format!("{ns}/{name}"), kind = %d.kind, name = %d.name, "applied");
    }
    if let Some(d) = extra.dns.as_mut() {
        d.applied = true;
    }
    // Only once applied: a config in status means the server has run (see `keys`), and a
    // refused first apply must not make a new server one that lost its keys.
    extra.config_hash = Some(config_hash.clone());

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

/// What [`plan_dns`] decided: the DNS to render, the records file to write (`None`:
/// leave the live one) and the DnsConfig report.
type PlannedDns = (render::DnsInput, Option<String>, DnsResult);

/// The DNS to render and the records file to write, from the DnsConfig in force; when
/// it is refused, the DNS the live config carries, if it is the DNS the operator
/// applied (`status.dns.settingsHash`). When that cannot be told (the ConfigMap was
/// deleted or edited meanwhile), nothing is applied: `Err` with the outcome.
async fn plan_dns(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    spec: &ManagedSpec,
    selection: &dns_build::Selection,
    names: &Names,
    layout: &render::Layout,
) -> Result<Result<PlannedDns, (Outcome, DnsResult)>, Error> {
    let Some(dc) = &selection.in_force else {
        let input = dns_build::default_input(layout);
        let records = render::render_records(&[]);
        let mut status = dns_build::server_status(&input, None, 0);
        status.records_hash = Some(sha256_hex(records.as_bytes()));
        let result = DnsResult {
            refused: None,
            status,
            applied: false,
        };
        return Ok(Ok((input, Some(records), result)));
    };
    match dns_build::candidate(&dc.spec, spec, layout) {
        Ok(c) => {
            let mut status = dns_build::server_status(
                &c.input,
                Some((dc.name_any(), dc.metadata.generation)),
                c.record_count,
            );
            status.records_hash = Some(sha256_hex(c.records.as_bytes()));
            let result = DnsResult {
                refused: None,
                status,
                applied: false,
            };
            Ok(Ok((c.input, Some(c.records), result)))
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
            let records_text = records
                .as_ref()
                .and_then(|cm| cm.data.as_ref()?.get(build::RECORDS_KEY).cloned());
            let count = records_text
                .as_deref()
                .and_then(render::count_records)
                .unwrap_or(0);
            // Which DnsConfig that DNS came from: what status said when it was applied.
            let from = rendered.as_ref().and_then(|_| {
                let d = hs.status.as_ref()?.dns.as_ref()?;
                Some((d.config_ref.clone()?, d.config_generation))
            });
            // Only the DNS the operator applied may be kept: a ConfigMap deleted or
            // edited behind its back must not change the server's DNS (a lost
            // override_local_dns would leak every client's queries).
            let applied = hs.status.as_ref().and_then(|s| s.dns.as_ref());
            let recorded = applied.and_then(|d| d.settings_hash.as_deref());
            let had_dns_config = applied.is_some_and(|d| d.config_ref.is_some());
            let candidate = rendered
                .clone()
                .unwrap_or_else(|| dns_build::default_input(layout));
            let settings_trusted = match recorded {
                Some(hash) => dns_build::settings_hash(&candidate) == hash,
                None => rendered.is_some() || !had_dns_config,
            };
            // The records file the operator wrote; a missing one is rewritten as `[]`,
            // which is right only if that is what was applied.
            let records_trusted = match applied.and_then(|d| d.records_hash.as_deref()) {
                Some(hash) => {
                    sha256_hex(
                        records_text
                            .as_deref()
                            .unwrap_or(&render::render_records(&[]))
                            .as_bytes(),
                    ) == hash
                }
                None => true,
            };
            if !settings_trusted || !records_trusted {
                let (what, edited) = if settings_trusted {
                    (&names.dns_records, records.is_some())
                } else {
                    (&names.config_map, live.is_some())
                };
                let kept = format!(
                    "the DNS its running pod has: the ConfigMap {what:?} holding the DNS the operator applied was {} \
                     outside the operator, so nothing is applied to the server until this DnsConfig is fixed",
                    if edited { "edited" } else { "deleted" }
                );
                let result = DnsResult {
                    refused: Some((problems, kept)),
                    status: applied.cloned().unwrap_or_default(),
                    applied: false,
                };
                let outcome = stalled(
                    why::DNS_UNRECOVERABLE,
                    format!(
                        "DnsConfig {:?} is refused and the DNS the server runs with cannot be read back from ConfigMap \
                         {what:?} (deleted or edited outside the operator); nothing is applied until the DnsConfig is \
                         fixed, so the server's DNS is not changed behind anyone's back",
                        dc.name_any(),
                    ),
                );
                return Ok(Err((outcome, result)));
            }
            let input = candidate;
            let kept = match &from {
                Some((n, Some(g))) => format!("the DNS of DnsConfig {n:?} generation {g}"),
                Some((n, None)) => format!("the DNS of DnsConfig {n:?}"),
                None if input == dns_build::default_input(layout) => {
                    "the safe default DNS (no DNS settings, no extra records)".to_string()
                }
                None => "the DNS its config has now".to_string(),
            };
            let mut status = dns_build::server_status(&input, from, count);
            status.records_hash = applied.and_then(|d| d.records_hash.clone());
            let result = DnsResult {
                refused: Some((problems, kept)),
                status,
                applied: false,
            };
            Ok(Ok((input, None, result)))
        }
    }
}

/// Without DNS of its own to write (a refused DnsConfig keeps the records it had),
/// the records ConfigMap is only created, holding no record, when it is missing.
async fn default_records(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    names: &Names,
) -> Result<Result<Option<Desired>, Outcome>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .get_metadata_opt(&names.dns_records)
        .await
        .map_err(kube_err(format!("reading ConfigMap {}", names.dns_records)))?
    {
        Some(live) if owned_by(&live.metadata, hs) => Ok(Ok(None)),
        Some(_) => Ok(Err(conflict("ConfigMap", &names.dns_records))),
        None => Ok(Ok(Some(Desired::of::<ConfigMap>(build::records_config_map(
            hs,
            names,
            &render::render_records(&[]),
        ))))),
    }
}

/// Deletes the optional child `name` of kind `K` (an Ingress, a NetworkPolicy) that the
/// spec no longer asks for, if the server owns it.
async fn remove_dropped<K>(ctx: &Context, hs: &HeadscaleServer, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(live) = api
        .get_metadata_opt(name)
        .await
        .map_err(kube_err(format!("reading {kind} {name}")))?
        && owned_by(&live.metadata, hs)
    {
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            // Gone meanwhile: what was asked for.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(kube_err(format!("deleting {kind} {name}"))(e)),
        }
        count_write(ctx, hs, &kind);
        tracing::info!(server = %format!("{ns}/{}", hs.name_any()), kind = %kind, name = %name, "deleted a child the spec no longer asks for");
    }
    Ok(())
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

/// What a Secret value the pod reads may hold, by what reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretRule {
    /// Headscale appends `password=VALUE` to the driver's key=value string unquoted
    /// (surrounding whitespace is skipped by the driver, so the trimmed value counts).
    PostgresPassword,
    /// Headscale reads the file and trims it; the value goes to the identity provider
    /// as it is.
    OidcClientSecret,
}

/// The rule a Secret value breaks (the rule, never the value), or `None`. Pure.
pub fn check_secret_value(rule: SecretRule, value: &str) -> Option<&'static str> {
    let broken = match rule {
        SecretRule::PostgresPassword => value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"\\".contains(c)),
        SecretRule::OidcClientSecret => value.chars().any(char::is_control),
    };
    broken.then_some(match rule {
        SecretRule::PostgresPassword => {
            "a Postgres password must not contain spaces, quotes (' or \") or backslashes: Headscale passes it to \
             the driver unquoted"
        }
        SecretRule::OidcClientSecret => "an OIDC client secret must be one line without control characters",
    })
}

/// A referenced Secret's value, or why there is none or it cannot be used (naming the
/// field and the rule, never the value).
async fn secret_value(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    field: &str,
    rule: SecretRule,
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
    Ok(secret_use(secret.as_ref(), name, key, field, rule))
}

/// The value of a referenced Secret the pod reads, or why it cannot be used: missing,
/// empty, or breaking `rule` (`SecretKeyInvalid`, stalled). Messages name the Secret,
/// the key and the field, never the value. Pure.
pub fn secret_use(
    secret: Option<&Secret>,
    name: &str,
    key: &str,
    field: &str,
    rule: SecretRule,
) -> Result<SecretString, Outcome> {
    let value = super::connect::read_value(secret, name, key).map_err(|o| match o {
        Outcome::NotReady {
            reason,
            message,
            stalled: s,
            ..
        } => Outcome::not_ready(reason, format!("{message} ({field})"), s),
        other => other,
    });
    value.and_then(|v| match check_secret_value(rule, v.expose()) {
        None => Ok(v),
        Some(why) => Err(stalled(
            reason::SECRET_KEY_INVALID,
            format!(
                "Secret {name:?} key {key:?} ({field}) cannot be used: {why}. The pod was not rolled, but it reads this \
                 Secret when it starts: fix it before the pod restarts"
            ),
        )),
    })
}

const UNCHANGED: &str = " (nothing was changed: the running server keeps its config)";

/// A managed server's name becomes a Service name (a DNS-1035 label) and a
/// StatefulSet's pod names: lowercase letters, digits and `-`, starting with a letter,
/// at most 52 characters. Pure.
pub fn check_name(name: &str) -> Option<String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let ends = name.bytes().last().is_some_and(|b| b != b'-');
    if !(ok_chars && starts && ends) {
        return Some(format!(
            "a managed server's name becomes its Service's name, so it must be a DNS label: lowercase letters, \
             digits and '-', starting with a letter and not ending with '-'; {name:?} is not (nothing was created)"
        ));
    }
    if name.len() > build::MAX_NAME_LEN {
        return Some(format!(
            "a managed server's name must be at most {} characters (its StatefulSet's pods need the rest); {name:?} has {} \
             (nothing was created)",
            build::MAX_NAME_LEN,
            name.len()
        ));
    }
    None
}

/// The keyholder refuses to start when a key would need rotating as soon as it is
/// minted; say so here instead of a crash-looping sidecar. Pure.
pub fn check_api_key_spec(spec: &ManagedSpec) -> Option<String> {
    let lifetime = render::validate::parse_duration(&spec.api_key.lifetime);
    let before = render::validate::parse_duration(&spec.api_key.rotate_before);
    match (lifetime, before) {
        (Some(l), _) if l.is_zero() => Some("spec.managed.apiKey.lifetime must be longer than 0".into()),
        (Some(l), _) if l > crate::keyholder::MAX_KEY_LIFETIME => Some(format!(
            "spec.managed.apiKey.lifetime ({}) must be at most {} (10 years)",
            spec.api_key.lifetime,
            crate::keyholder::MAX_KEY_LIFETIME_TEXT
        )),
        (Some(l), Some(b)) if b >= l => Some(format!(
            "spec.managed.apiKey.rotateBefore ({}) must be shorter than apiKey.lifetime ({}): every key would need \
             rotating as soon as it is minted",
            spec.api_key.rotate_before, spec.api_key.lifetime
        )),
        (None, _) | (_, None) => {
            Some("spec.managed.apiKey.lifetime and rotateBefore must be durations such as 90d".into())
        }
        _ => None,
    }
}

/// Headscale (0.29+) refuses to start on a database of a newer version, and upgrades
/// must go one minor at a time. `running` is what the server reported. Pure.
pub fn check_version_step(running: Option<&str>, wanted: &str) -> Option<(&'static str, String)> {
    let running = headscale::Version::parse(running?)?;
    if running.is_prerelease() {
        return None;
    }
    let wanted_v = headscale::Version::parse(wanted)?;
    let (r, w) = (
        (running.major, running.minor, running.patch),
        (wanted_v.major, wanted_v.minor, wanted_v.patch),
    );
    if w < r {
        return Some((
            why::DOWNGRADE_REFUSED,
            format!(
                "spec.managed.version {wanted} is older than the running {running}: Headscale cannot run on a database \
                 a newer version migrated (restore a backup of the old version instead)"
            ),
        ));
    }
    if w.1 > r.1 + 1 || w.0 != r.0 {
        return Some((
            why::UPGRADE_SKIPS_MINOR,
            format!(
                "spec.managed.version {wanted} skips a minor release after the running {running}: upgrade one minor at a time"
            ),
        ));
    }
    None
}

/// The keys the pod mounts: the Secret's, or new ones to create.
struct Keys {
    hash: Vec<u8>,
    create: Option<(SecretString, SecretString)>,
    /// The existing Secret's owner references do not follow the spec: this patch
    /// (metadata only) makes them.
    owner_patch: Option<Value>,
}

/// Reads the keys Secret. An existing one is never overwritten (a new noise key
/// disconnects every client); it may be one brought over from an existing server.
/// A missing one is generated, unless the server has run before (its volume exists,
/// or status shows a config): then the keys were lost, and regenerating them is only
/// done when a person asks with the `headscale.operator.dev/regenerate-keys` annotation.
async fn keys(
    ctx: &Context,
    hs: &HeadscaleServer,
    ns: &str,
    spec: &ManagedSpec,
    secrets: &Api<Secret>,
    names: &Names,
) -> Result<Result<Keys, Outcome>, Error> {
    let existing = secrets
        .get_opt(&names.keys_secret)
        .await
        .map_err(kube_err("reading the keys Secret"))?;
    if let Some(secret) = existing {
        let mut hash = Vec::new();
        for key in [build::NOISE_KEY, build::DERP_KEY] {
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.as_slice());
            match value.and_then(|v| std::str::from_utf8(v).ok()) {
                Some(v) if render::keys::is_private_key(v) => {
                    hash.extend(Sha256::digest(v.trim().as_bytes()))
                }
                _ => {
                    return Ok(Err(stalled(
                        why::KEYS_SECRET_INVALID,
                        format!(
                            "Secret {:?} has no valid {key:?} (Headscale's \"privkey:\" + 64 hex digits); the operator never \
                             replaces keys on its own, because a new noise key disconnects every client: restore the key, or \
                             delete the Secret and annotate the server {REGENERATE_KEYS_ANNOTATION}=true to have new keys generated",
                            names.keys_secret
                        ),
                    )));
                }
            }
        }
        // The annotation is a permission for one loss of the keys, not a standing order:
        // given while the keys exist, it is dropped, so a later loss asks again.
        if hs.annotations().contains_key(REGENERATE_KEYS_ANNOTATION) {
            tracing::info!(
                server = %format!("{ns}/{}", hs.name_any()),
                secret = %names.keys_secret,
                "the keys exist: the regenerate-keys annotation is removed unused"
            );
            remove_regenerate_annotation(ctx, hs).await?;
        }
        let owner_patch = build::keys_owner_patch(&secret.metadata, hs, build::keys_owned(spec));
        return Ok(Ok(Keys {
            hash,
            create: None,
            owner_patch,
        }));
    }
    let asked = hs
        .annotations()
        .get(REGENERATE_KEYS_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    let has_volume = spec.database.type_ == DatabaseType::Sqlite
        && Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
            .get_metadata_opt(&names.pvc)
            .await
            .map_err(kube_err("reading the volume claim"))?
            .is_some();
    let has_run = has_volume || hs.status.as_ref().is_some_and(|s| s.config_hash.is_some());
    if has_run && !asked {
        return Ok(Err(stalled(
            why::KEYS_SECRET_MISSING,
            format!(
                "Secret {:?} with the server's noise and DERP keys is gone, but the server has run before{}; new keys would \
                 disconnect every client. Restore the Secret from a backup, or annotate the server \
                 {REGENERATE_KEYS_ANNOTATION}=true to generate new ones",
                names.keys_secret,
                if has_volume {
                    format!(" (its volume {:?} exists)", names.pvc)
                } else {
                    String::new()
                }
            ),
        )));
    }
    let noise = render::generate_private_key().map_err(|e| Error::Build(e.to_string()))?;
    let derp = render::generate_private_key().map_err(|e| Error::Build(e.to_string()))?;
    let mut hash = Vec::new();
    hash.extend(Sha256::digest(noise.expose().as_bytes()));
    hash.extend(Sha256::digest(derp.expose().as_bytes()));
    Ok(Ok(Keys {
        hash,
        create: Some((noise, derp)),
        owner_patch: None,
    }))
}

async fn create_keys(
    ctx: &Context,
    hs: &HeadscaleServer,
    secrets: &Api<Secret>,
    names: &Names,
    (noise, derp): &(SecretString, SecretString),
) -> Result<Result<(), Outcome>, Error> {
    let owned = hs.spec.managed.as_ref().is_some_and(build::keys_owned);
    let obj = build::keys_secret(hs, names, noise.expose(), derp.expose(), owned);
    let secret: Secret = serde_json::from_value(obj).map_err(|e| Error::Build(e.to_string()))?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            count_write(ctx, hs, "Secret");
            tracing::info!(
                server = %format!("{}/{}", hs.namespace().unwrap_or_default(), hs.name_any()),
                secret = %names.keys_secret,
                "generated the noise and DERP keys"
            );
            if hs.annotations().contains_key(REGENERATE_KEYS_ANNOTATION) {
                crate::controller::publish(
                    ctx,
                    &hs.object_ref(&()),
                    Event {
                        type_: EventType::Warning,
                        reason: "KeysRegenerated".into(),
                        note: Some(format!(
                            "new noise and DERP keys in Secret {:?}, as the {REGENERATE_KEYS_ANNOTATION} annotation \
                             asked: every client must log in again",
                            names.keys_secret
                        )),
                        action: "GenerateKeys".into(),
                        secondary: None,
                    },
                )
                .await;
            }
            remove_regenerate_annotation(ctx, hs).await?;
            Ok(Ok(()))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(waiting(
            why::POD_NOT_READY,
            format!(
                "Secret {:?} appeared while the keys were generated; looking again",
                names.keys_secret
            ),
        ))),
        Err(e) => Err(kube_err("creating the keys Secret")(e)),
    }
}

/// Removes the regenerate-keys annotation (if present): the permission is for one loss.
async fn remove_regenerate_annotation(ctx: &Context, hs: &HeadscaleServer) -> Result<(), Error> {
    if !hs.annotations().contains_key(REGENERATE_KEYS_ANNOTATION) {
        return Ok(());
    }
    let servers: Api<HeadscaleServer> =
        Api::namespaced(ctx.client.clone(), &hs.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {REGENERATE_KEYS_ANNOTATION: null}}});
    servers
        .patch(&hs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err("removing the regenerate-keys annotation"))?;
    count_write(ctx, hs, "HeadscaleServer");
    Ok(())
}

/// Makes the keys Secret's ownership follow `deleteOnServerDeletion` (a metadata-only
/// patch; the keys are never rewritten): owned, it is deleted with the server; not
/// owned, it is kept with the volume, so a server of the same name finds its keys.
async fn own_keys(
    ctx: &Context,
    hs: &HeadscaleServer,
    secrets: &Api<Secret>,
    names: &Names,
    patch: &Value,
) -> Result<Result<(), Outcome>, Error> {
    match secrets
        .patch(&names.keys_secret, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {
            count_write(ctx, hs, "Secret");
            let owned = hs.spec.managed.as_ref().is_some_and(build::keys_owned);
            tracing::info!(
                server = %format!("{}/{}", hs.namespace().unwrap_or_default(), hs.name_any()),
                secret = %names.keys_secret,
                owned,
                "the keys Secret's ownership follows deleteOnServerDeletion"
            );
            Ok(Ok(()))
        }
        // Changed or deleted meanwhile: the next reconcile looks again.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Err(waiting(
            why::POD_NOT_READY,
            format!(
                "Secret {:?} changed while its ownership was updated; looking again",
                names.keys_secret
            ),
        ))),
        Err(e) => Err(kube_err("updating the keys Secret's owner")(e)),
    }
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
            "{kind} {name:?} already exists and does not belong to this HeadscaleServer; rename or delete it (nothing was created)"
        ),
    )
}

async fn secret_conflict(
    secrets: &Api<Secret>,
    hs: &HeadscaleServer,
    name: &str,
) -> Result<Option<Outcome>, Error> {
    match secrets
        .get_metadata_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {name}")))?
    {
        Some(existing) if !owned_by(&existing.metadata, hs) => Ok(Some(conflict("Secret", name))),
        _ => Ok(None),
    }
}

async fn create_if_absent(
    ctx: &Context,
    api: &Api<Secret>,
    name: &str,
    obj: Value,
    hs: &HeadscaleServer,
) -> Result<(), Error> {
    if api
        .get_metadata_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {name}")))?
        .is_some()
    {
        return Ok(());
    }
    let secret: Secret = serde_json::from_value(obj).map_err(|e| Error::Build(e.to_string()))?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            count_write(ctx, hs, "Secret");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(format!("creating Secret {name}"))(e)),
    }
}

/// One child as the spec wants it.
struct Desired {
    ar: ApiResource,
    kind: String,
    name: String,
    obj: Value,
    hash: String,
    /// Replace (PUT) the live object at this resourceVersion instead of applying: fields
    /// someone added are only removed that way (an apply keeps other managers' fields).
    replace_rv: Option<String>,
    /// Built from the live object's immutable fields: only a live object may be changed
    /// (replaced), never one created from it.
    must_exist: bool,
}

enum Plan {
    Unchanged,
    Conflict(Outcome),
    /// Changed meanwhile: the next reconcile looks again.
    Wait(Outcome),
    Apply(Desired),
}

impl Desired {
    fn of<K: Resource<DynamicType = ()>>(obj: Value) -> Self {
        let (obj, hash) = build::stamp(obj);
        Self {
            ar: ApiResource::erase::<K>(&()),
            kind: K::kind(&()).to_string(),
            name: obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            obj,
            hash,
            replace_rv: None,
            must_exist: false,
        }
    }

    /// Whether fields someone added to this kind are removed (by a replace): the
    /// StatefulSet (what runs, with which privileges) and the Service (how the pod is
    /// reached: `externalIPs`, another `type`, `loadBalancerSourceRanges`, an extra port).
    /// An apply keeps fields another manager added.
    fn removes_additions(&self) -> bool {
        matches!(self.kind.as_str(), "StatefulSet" | "Service")
    }

    /// For the kinds of [`Self::removes_additions`]: whether the live spec has more than
    /// ours, e.g. `hostNetwork` or an environment variable added to the StatefulSet by
    /// hand, `externalIPs` added to the Service. The desired object is put as a
    /// server-side dry run, so it gets exactly the defaults the live one got (for a
    /// Service the API server also keeps the allocated `clusterIP(s)`, which the desired
    /// object leaves out); any other difference is someone else's. One read-only call.
    async fn has_additions(&self, api: &Api<DynamicObject>, live: &DynamicObject) -> Result<bool, Error> {
        let mut obj: DynamicObject =
            serde_json::from_value(self.obj.clone()).map_err(|e| Error::Build(e.to_string()))?;
        obj.metadata.resource_version = live.metadata.resource_version.clone();
        let params = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_string()),
        };
        match api.replace(&self.name, &params, &obj).await {
            Ok(would) => Ok(would.data.get("spec") != live.data.get("spec")),
            // Changed meanwhile (the next reconcile looks again), or refused: no verdict.
            Err(kube::Error::Api(s)) => {
                tracing::debug!(kind = %self.kind, name = %self.name, error = %s.message, "no verdict on added fields");
                Ok(false)
            }
            Err(e) => Err(kube_err(format!("checking {} {}", self.kind, self.name))(e)),
        }
    }

    /// Whether the live object (if any) is ours and already as wanted. A live object
    /// that carries our hash but was edited since (drift) is applied again.
    async fn plan(self, ctx: &Context, hs: &HeadscaleServer, ns: &str) -> Result<Plan, Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &self.ar);
        let Some(live) = api
            .get_opt(&self.name)
            .await
            .map_err(kube_err(format!("reading {} {}", self.kind, self.name)))?
        else {
            if self.must_exist {
                return Ok(Plan::Wait(waiting(
                    why::POD_NOT_READY,
                    format!(
                        "{} {:?} was deleted meanwhile; it is made again",
                        self.kind, self.name
                    ),
                )));
            }
            return Ok(Plan::Apply(self));
        };
        if !owned_by(&live.metadata, hs) {
            return Ok(Plan::Conflict(conflict(&self.kind, &self.name)));
        }
        let stamped = live.annotations().get(build::APPLIED_HASH_ANNOTATION) == Some(&self.hash);
        let live_obj = live;
        let live = serde_json::to_value(&live_obj).map_err(|e| Error::Build(e.to_string()))?;
        // The StatefulSet and the Service are replaced when they differ in any way,
        // additions included; an apply would keep fields others added. A replace of the
        // Service leaves `clusterIP(s)` out and the API server keeps the allocated ones
        // (and the IP families); node ports someone's `type: NodePort` got are released.
        if stamped && self.removes_additions() {
            if drift::contains(&live, &self.obj) && !self.has_additions(&api, &live_obj).await? {
                return Ok(Plan::Unchanged);
            }
            tracing::info!(
                server = %format!("{ns}/{}", hs.name_any()),
                kind = %self.kind,
                name = %self.name,
                "repairing a change made outside the operator (replacing the {})",
                self.kind
            );
            return Ok(Plan::Apply(Desired {
                replace_rv: live_obj.metadata.resource_version.clone(),
                ..self
            }));
        }
        if stamped && drift::contains(&live, &self.obj) {
            return Ok(Plan::Unchanged);
        }
        if stamped {
            tracing::info!(
                server = %format!("{ns}/{}", hs.name_any()),
                kind = %self.kind,
                name = %self.name,
                "repairing a change made outside the operator"
            );
        }
        if self.must_exist {
            return Ok(Plan::Apply(Desired {
                replace_rv: live_obj.metadata.resource_version.clone(),
                ..self
            }));
        }
        Ok(Plan::Apply(self))
    }

    /// Server-side apply (as a dry run first, so a refusal writes nothing).
    async fn apply(&self, ctx: &Context, ns: &str, dry_run: bool) -> Result<Result<(), Outcome>, Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &self.ar);
        let result = match &self.replace_rv {
            Some(rv) => {
                let mut obj: DynamicObject =
                    serde_json::from_value(self.obj.clone()).map_err(|e| Error::Build(e.to_string()))?;
                obj.metadata.resource_version = Some(rv.clone());
                let params = PostParams {
                    dry_run,
                    field_manager: Some(FIELD_MANAGER.to_string()),
                };
                api.replace(&self.name, &params, &obj).await.map(drop)
            }
            None => {
                let mut params = PatchParams::apply(FIELD_MANAGER).force();
                params.dry_run = dry_run;
                api.patch(&self.name, &params, &Patch::Apply(&self.obj))
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => Ok(Ok(())),
            // Replaced or deleted meanwhile: the watch brings the next reconcile, which
            // looks again (a replace never creates).
            Err(kube::Error::Api(s)) if self.replace_rv.is_some() && matches!(s.code, 404 | 409) => {
                Ok(Ok(()))
            }
            // A dry run of an object that refers to another one of this change (a
            // RoleBinding to the Role not created yet) cannot be judged now.
            Err(kube::Error::Api(s)) if dry_run && s.code == 404 => Ok(Ok(())),
            // The API server refused what we built from the spec (e.g. a resource quantity
            // it cannot parse, which it reports as 500): the user must change the spec.
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422 | 500) => {
                let message = format!(
                    "the API server refused {} {:?}: {}{UNCHANGED}",
                    self.kind, self.name, s.message
                );
                Ok(Err(if s.code == 500 {
                    waiting(why::APPLY_REJECTED, message)
                } else {
                    stalled(why::APPLY_REJECTED, message)
                }))
            }
            Err(e) => Err(kube_err(format!("applying {} {}", self.kind, self.name))(e)),
        }
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
                    .map(|c| format!("storage class {c:?}"))
                    .unwrap_or_else(|| "the cluster's default storage class (none is set?)".into());
                return Ok(Some(waiting(
                    why::VOLUME_PENDING,
                    format!(
                        "volume claim {:?} is {phase}: no volume is available from {class}",
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
    for cs in pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
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
            let who = if cs.name == "headscale" {
                "Headscale".to_string()
            } else {
                format!("container {:?}", cs.name)
            };
            return Some(stalled(
                why::HEADSCALE_FAILED,
                format!(
                    "{who} exited with code {} ({} restarts){}",
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
    if let Some(problem) = pod_failing(pod) {
        return Some(stalled(why::POD_FAILING, problem));
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

/// Container waiting reasons the kubelet keeps retrying but that only a person can
/// fix (a wrong image or registry access, a missing Secret or ConfigMap key, a
/// container the runtime refuses). `ContainerCreating` and `PodInitializing` pass.
const NEEDS_A_PERSON: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why a pod cannot start by itself, or `None`: a container waiting for one of
/// [`NEEDS_A_PERSON`] (its name, the reason and the kubelet's message, which for a pull
/// names the image), or no node that can take it (the scheduler's message). Pure.
pub fn pod_failing(pod: &Pod) -> Option<String> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses);
    for cs in containers.flatten() {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = w.reason.as_deref().filter(|r| NEEDS_A_PERSON.contains(r)) else {
            continue;
        };
        let detail = w.message.as_deref().map(one_line).unwrap_or_default();
        return Some(format!(
            "pod {name:?}: container {:?} cannot start: {reason}{}",
            cs.name,
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {}", super::truncate(&detail, 300))
            }
        ));
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    })?;
    let detail = unschedulable.message.as_deref().map(one_line).unwrap_or_default();
    Some(format!(
        "pod {name:?} cannot be scheduled: {}",
        if detail.is_empty() {
            "no node can take it".to_string()
        } else {
            super::truncate(&detail, 300)
        }
    ))
}

/// A message on one line, runs of whitespace collapsed.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
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

    #[test]
    fn managed_names_are_dns_labels_of_at_most_52_and_the_schema_says_so_too() {
        assert_eq!(check_name("hs-1"), None);
        assert_eq!(check_name(&"a".repeat(build::MAX_NAME_LEN)), None);
        for bad in ["my.server", "1hs", "hs-", "HS"] {
            assert!(check_name(bad).is_some_and(|m| m.contains("DNS label")), "{bad}");
        }
        let long = "a".repeat(253);
        assert!(check_name(&long).is_some_and(|m| m.contains("at most 52 characters")));
        // The CRD refuses the same at creation (root rules may read metadata.name), with
        // the same words and limit: a 253-character name would break Event publishing.
        let crd = serde_json::to_value(<HeadscaleServer as kube::CustomResourceExt>::crd()).unwrap();
        let rules = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"];
        let rules = rules.as_array().expect("root-level rules");
        let text = |r: &Value| format!("{} {}", r["rule"], r["message"]);
        assert!(rules.iter().any(|r| {
            text(r).contains(&format!("size(self.metadata.name) <= {}", build::MAX_NAME_LEN))
                && text(r).contains("at most 52 characters")
                && r["optionalOldSelf"] == true
        }));
        let label = check_name("my.server").unwrap();
        let words = label.split(';').next().unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r["message"] == words && r["optionalOldSelf"] == true),
            "no root rule says {words:?}"
        );
    }

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
    fn pods_that_need_a_person_say_which_container_and_why() {
        let waiting = |reason: &str, message: &str| {
            pod(json!({
                "metadata": {"name": "hs-0", "annotations": {build::CONFIG_HASH_ANNOTATION: "h"}},
                "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        {"name": "headscale", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                         "state": {"waiting": {"reason": reason, "message": message}}},
                        {"name": "keyholder", "image": "k", "imageID": "", "ready": true, "restartCount": 0,
                         "state": {"running": {}}},
                    ]},
            }))
        };
        let failing = |p: &Pod| match pod_problem(p, "h") {
            Some(Outcome::NotReady {
                reason,
                message,
                stalled,
                ..
            }) => (reason, message, stalled),
            other => panic!("{other:?}"),
        };
        for reason in NEEDS_A_PERSON {
            let (why, message, stalled) = failing(&waiting(
                reason,
                "Back-off pulling image \"docker.io/headscale/headscale:0.29.9\"",
            ));
            assert_eq!(why, why::POD_FAILING, "{reason}");
            assert!(stalled, "{reason}: a person must act");
            assert!(
                message.contains("container \"headscale\"")
                    && message.contains(reason)
                    && message.contains("docker.io/headscale/headscale:0.29.9"),
                "{message}"
            );
        }
        // The kubelet's message is cut and kept on one line.
        let (_, message, _) = failing(&waiting(
            "CreateContainerConfigError",
            &format!("secret \"pg\" not found\n{}", "x".repeat(1000)),
        ));
        assert!(message.len() < 400 && !message.contains('\n'), "{message}");
        // Starting is not failing.
        let (why, _, stalled) = failing(&waiting("ContainerCreating", ""));
        assert_eq!((why, stalled), (why::POD_NOT_READY, false));
        // A crash keeps its own reason.
        let mut crash = waiting("CrashLoopBackOff", "back-off 5m0s");
        if let Some(cs) = crash
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .and_then(|c| c.first_mut())
        {
            cs.last_state = serde_json::from_value(json!({"terminated": {"exitCode": 1}})).ok();
        }
        assert_eq!(failing(&crash).0, why::HEADSCALE_FAILED);

        let unschedulable = pod(json!({
            "metadata": {"name": "hs-0", "annotations": {build::CONFIG_HASH_ANNOTATION: "h"}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]},
        }));
        let (why, message, stalled) = failing(&unschedulable);
        assert_eq!(why, why::POD_FAILING);
        assert!(stalled);
        assert!(
            message.contains("cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."),
            "{message}"
        );
        // Not scheduled yet, for no stated reason: just not Ready.
        let pending = pod(json!({
            "metadata": {"name": "hs-0", "annotations": {build::CONFIG_HASH_ANNOTATION: "h"}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
        }));
        assert_eq!(failing(&pending).0, why::POD_NOT_READY);
    }

    #[test]
    fn secret_values_are_checked_by_what_reads_them() {
        use SecretRule::*;
        assert_eq!(check_secret_value(PostgresPassword, "s3cr3t-P@ss_w0rd=!%"), None);
        assert_eq!(check_secret_value(PostgresPassword, "pässwörd"), None);
        for bad in [
            "it's",
            "say\"hi\"",
            "back\\slash",
            "two words",
            "tab\there",
            "nl\ninside",
        ] {
            let why = check_secret_value(PostgresPassword, bad).unwrap_or_else(|| panic!("{bad:?} passed"));
            assert!(
                why.contains("Postgres password") && why.contains("unquoted"),
                "{why}"
            );
            assert!(!why.contains(bad), "the value leaked: {why}");
        }
        assert_eq!(check_secret_value(OidcClientSecret, "a b'c\\d\"é"), None);
        assert!(check_secret_value(OidcClientSecret, "line\nbreak").is_some());

        // In status: SecretKeyInvalid, stalled, naming the Secret, key and field.
        let field = "spec.managed.database.postgres.passwordSecretRef";
        let secret = |v: &str| -> Secret {
            serde_json::from_value(json!({"metadata": {"name": "pg"}, "stringData": {"password": v}}))
                .unwrap()
        };
        match secret_use(
            Some(&secret("hunter'2")),
            "pg",
            "password",
            field,
            PostgresPassword,
        ) {
            Err(Outcome::NotReady {
                reason,
                message,
                stalled,
                ..
            }) => {
                assert_eq!(reason, "SecretKeyInvalid");
                assert!(stalled);
                assert!(
                    message.contains("\"pg\"") && message.contains("\"password\"") && message.contains(field),
                    "{message}"
                );
                assert!(!message.contains("hunter"), "the value leaked: {message}");
            }
            other => panic!("{other:?}"),
        }
        // A trailing newline (`kubectl create secret --from-file`) is not part of it.
        let ok = secret_use(
            Some(&secret("hunter2\n")),
            "pg",
            "password",
            field,
            PostgresPassword,
        );
        assert_eq!(
            ok.map(|v| v.expose().to_string()).ok().as_deref(),
            Some("hunter2")
        );
        match secret_use(None, "pg", "password", field, PostgresPassword) {
            Err(Outcome::NotReady { reason, message, .. }) => {
                assert_eq!(reason, "SecretNotFound");
                assert!(message.contains(field), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn api_key_durations_are_bounded_before_the_keyholder_sees_them() {
        let spec = |lifetime: &str, rotate_before: &str| -> ManagedSpec {
            serde_json::from_value(json!({"version": "0.29.2", "serverUrl": "https://hs.example.com",
                "apiKey": {"lifetime": lifetime, "rotateBefore": rotate_before}}))
            .unwrap()
        };
        assert_eq!(check_api_key_spec(&spec("90d", "30d")), None);
        assert_eq!(check_api_key_spec(&spec("3650d", "30d")), None);
        // Parsed by the keyholder too (it once exited above u32::MAX seconds), but far
        // beyond any rotation schedule.
        for long in ["5000000000s", "3651d", "522w"] {
            let problem = check_api_key_spec(&spec(long, "30d")).unwrap_or_else(|| panic!("{long} passed"));
            assert!(problem.contains("at most 3650d"), "{problem}");
        }
        assert!(check_api_key_spec(&spec("0", "0")).is_some());
        assert!(
            check_api_key_spec(&spec("1d", "30d"))
                .unwrap()
                .contains("rotateBefore")
        );
        assert!(
            check_api_key_spec(&spec("99999999999999999999s", "30d"))
                .unwrap()
                .contains("durations such as")
        );
    }

    #[test]
    fn log_tail_takes_the_last_line_and_cuts_it() {
        assert_eq!(log_tail("a\nb\n\n"), "b");
        assert!(log_tail(&"x".repeat(1000)).len() < 310);
    }
}
