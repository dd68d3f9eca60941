//! DnsConfig: the tailnet DNS of a managed server. The server controller does the
//! work (a DnsConfig change re-reconciles the server it names, see [`super::spec_changes`]):
//! it picks the DnsConfig in force ([`build::select`]), renders its settings into the
//! config and its records into the `NAME-dns-records` ConfigMap, and writes every
//! DnsConfig's status ([`write_statuses`]). What is left here is the small controller
//! for DnsConfigs whose server does not exist (the server controller never sees them).
//!
//! Status is written with server-side apply under the field manager
//! `headscale-operator/dns`, only when it changed.

pub mod build;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use crate::api::conditions;
use crate::api::{DnsConfig, DnsConfigStatus, HeadscaleServer};
use crate::metrics::Metrics;

pub const CONTROLLER: &str = "dns";
pub const FIELD_MANAGER: &str = "headscale-operator/dns";

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("reading HeadscaleServer {name}: {source}")]
    ReadServer { name: String, source: kube::Error },
    #[error("writing the status of DnsConfig {name}: {source}")]
    PatchStatus { name: String, source: kube::Error },
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadServer { .. } => "ReadServer",
            Error::PatchStatus { .. } => "PatchDnsConfigStatus",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

/// The server a DnsConfig names.
pub fn server_of(dc: &DnsConfig) -> Option<ObjectRef<HeadscaleServer>> {
    let ns = dc.namespace()?;
    Some(ObjectRef::new(&dc.spec.server_ref.name).within(&ns))
}

/// Writes the status of every DnsConfig naming server `server` (those in `selection`)
/// from what the server's reconcile did, and an Event on each change of `Ready`.
pub async fn write_statuses(
    ctx: &Context,
    ns: &str,
    server: &str,
    selection: &build::Selection,
    report: &build::Report,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let mut updates: Vec<(&Arc<DnsConfig>, DnsConfigStatus)> = Vec::new();
    if let Some(dc) = &selection.in_force {
        updates.push((dc, build::config_status(dc, server, Ok(report), now)));
        let older = dc.name_any();
        for other in &selection.refused {
            updates.push((other, build::config_status(other, server, Err(&older), now)));
        }
    }
    for (dc, status) in updates {
        write_status(ctx, ns, dc, status).await?;
    }
    Ok(())
}

async fn write_status(ctx: &Context, ns: &str, dc: &DnsConfig, status: DnsConfigStatus) -> Result<(), Error> {
    let old = dc.status.clone().unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let name = dc.name_any();
    let api: Api<DnsConfig> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": DnsConfig::api_version(&()),
        "kind": DnsConfig::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(source) => return Err(Error::PatchStatus { name, source }),
    }
    let old_ready = conditions::find(&old.conditions, conditions::READY);
    let new_ready = conditions::find(&status.conditions, conditions::READY);
    if let Some(event) = build::transition_event(old_ready, new_ready) {
        if let Some(c) = new_ready {
            tracing::info!(dns_config = %format!("{ns}/{name}"), reason = %c.reason, detail = %c.message, "DnsConfig status changed");
        }
        super::publish(ctx, &dc.object_ref(&()), event).await;
    }
    Ok(())
}

/// Runs the controller for DnsConfigs whose server does not exist, until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (configs, servers): (Api<DnsConfig>, Api<HeadscaleServer>) = match &ctx.settings.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let wc = || watcher::Config::default().any_semantic();
    let (store, writer) = kube::runtime::reflector::store();
    let triggers = watcher(configs, wc())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let by_server = store.clone();
    Controller::for_stream(triggers, store)
        .watches(servers, wc(), move |hs| {
            let ns = hs.namespace();
            let name = hs.name_any();
            by_server
                .state()
                .iter()
                .filter(|d| d.namespace() == ns && d.spec.server_ref.name == name)
                .map(|d| ObjectRef::from_obj(&**d))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile_orphan, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "dns reconcile loop event");
            }
        })
        .await;
}

async fn reconcile_orphan(dc: Arc<DnsConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::controller(CONTROLLER);
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = async {
        let ns = dc.namespace().ok_or(Error::MissingNamespace)?;
        if dc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let servers: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), &ns);
        let name = &dc.spec.server_ref.name;
        let exists = servers
            .get_metadata_opt(name)
            .await
            .map_err(|source| Error::ReadServer {
                name: name.clone(),
                source,
            })?
            .is_some();
        if !exists {
            write_status(&ctx, &ns, &dc, build::orphan_status(&dc, Timestamp::now())).await?;
        }
        // An existing server's reconcile reports on its DnsConfigs; its deletion brings
        // this one back.
        Ok(Action::await_change())
    }
    .await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(dc: Arc<DnsConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("dns:{}/{}", dc.namespace().unwrap_or_default(), dc.name_any());
    super::reconcile_failed(
        &ctx,
        CONTROLLER,
        &key,
        Some(dc.object_ref(&())),
        error.reason(),
        error.to_string(),
    )
}
