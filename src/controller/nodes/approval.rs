//! NodeApproval: check the server's enrollment rules, then register the pending node
//! or mint a pre-auth key into a Secret, and keep the approval's status as the record
//! of that node. A terminal outcome (approved, refused auth id, expired key) is not
//! retried until the spec changes: no retry storms against Headscale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::rules::{self, KeyRequest, Request, Violation};
use super::webhook;
use super::{CONTROLLER, FIELD_MANAGER, State, object_key};
use crate::api::approval::{AUTH_KEY_SECRET_KEY, ApprovedNode, IssuedKey, PreAuthKeySpec, RegistrationSpec};
use crate::api::conditions::{self, reason};
use crate::api::server::{DecisionWebhookSpec, EnrollmentSpec};
use crate::api::{HeadscaleServer, NodeApproval, NodeApprovalStatus};
use crate::controller::connect;
use crate::headscale::{self, Node, PreAuthKey, PreAuthKeyId};
use crate::metrics::Metrics;

const STALLED: &str = "Stalled";

pub mod phase {
    pub const REQUESTED: &str = "Requested";
    pub const PENDING: &str = "Pending";
    pub const KEY_ISSUED: &str = "KeyIssued";
    pub const APPROVED: &str = "Approved";
    pub const REFUSED: &str = "Refused";
    pub const FAILED: &str = "Failed";
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(transparent)]
    ReadSecret(#[from] connect::ReadSecretError),
    #[error("reading HeadscaleServer {name}: {source}")]
    GetServer {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Headscale(#[source] headscale::Error),
    #[error("reading Secret {name}: {source}")]
    GetSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing Secret {name}: {source}")]
    ApplySecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("object has no namespace or uid")]
    MissingMetadata,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "ReadSecret",
            Error::GetServer { .. } => "GetServer",
            Error::Headscale(e) => e.reason(),
            Error::GetSecret { .. } => "GetSecret",
            Error::ApplySecret { .. } => "ApplySecret",
            Error::PatchStatus(_) => "PatchStatus",
            Error::MissingMetadata => "MissingMetadata",
        }
    }
}

impl From<headscale::Error> for Error {
    fn from(e: headscale::Error) -> Self {
        Error::Headscale(e)
    }
}

/// What a reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `spec.approved` is false: nothing is done until an approver sets it.
    Requested,
    /// Waiting for something outside the approval (the server, a user); retried.
    Pending {
        reason: &'static str,
        message: String,
        /// A person must act (create the user, free the Secret name).
        stalled: bool,
    },
    /// An enrollment rule forbids it; nothing was done on the server.
    Refused(Violation),
    /// Terminal until the spec changes.
    Failed { reason: &'static str, message: String },
    /// A key is in its Secret, not used yet (a reusable one: still valid;
    /// `used_by` is how many nodes registered with it so far).
    KeyIssued {
        key: IssuedKey,
        renewed: bool,
        used_by: Option<usize>,
    },
    /// The node is registered (or the key was used).
    Approved {
        reason: &'static str,
        node: Option<ApprovedNode>,
        key: Option<IssuedKey>,
        /// Registered, but something after it failed (e.g. the hostname).
        warning: Option<(&'static str, String)>,
        /// Said after what was registered (e.g. how many nodes a reusable key let in).
        note: Option<String>,
    },
}

/// Why a decision stopped before an outcome: an error, or the decision webhook must
/// be asked first (with no lock held: see [`reconcile`]).
#[derive(Debug)]
pub enum Interrupt {
    Error(Error),
    Ask(Box<Ask>),
}

impl From<Error> for Interrupt {
    fn from(e: Error) -> Self {
        Interrupt::Error(e)
    }
}

impl From<headscale::Error> for Interrupt {
    fn from(e: headscale::Error) -> Self {
        Interrupt::Error(e.into())
    }
}

impl From<connect::ReadSecretError> for Interrupt {
    fn from(e: connect::ReadSecretError) -> Self {
        Interrupt::Error(e.into())
    }
}

/// A question for the decision webhook: which one, and the review to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask {
    pub hook: DecisionWebhookSpec,
    pub review: webhook::Review,
}

/// What the decision webhook said in this reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Gate {
    /// Not asked yet: the rules stop at it and return [`Interrupt::Ask`].
    #[default]
    Unasked,
    /// It allowed exactly this question (the same webhook, the same review).
    Allowed(Box<Ask>),
}

/// Whether the webhook's answer covers `ask`: the webhook allowed this very question
/// (a webhook changed or a request changed since must be asked again). Pure.
pub fn gate_allows(gate: &Gate, ask: &Ask) -> bool {
    matches!(gate, Gate::Allowed(allowed) if **allowed == *ask)
}

pub async fn reconcile(na: Arc<NodeApproval>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::controller(CONTROLLER);
    state.ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = reconcile_inner(&na, &state).await;
    state
        .ctx
        .metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The approval's record: its status, completed from memory when a write of it was
/// lost (a node registered or a key minted just before a failed status write must not
/// be registered or minted again).
fn record(na: &NodeApproval, state: &State) -> NodeApprovalStatus {
    let mut old = na.status.clone().unwrap_or_default();
    if let Some(uid) = na.uid()
        && let Some(mem) = state.remembered(&uid)
    {
        if old.node.is_none() {
            old.node = mem.node;
        }
        if old.pre_auth_key.is_none() {
            old.pre_auth_key = mem.pre_auth_key;
        }
    }
    old
}

/// Whether nothing is left to do for this generation.
pub fn settled(status: &NodeApprovalStatus, generation: Option<i64>) -> bool {
    status.observed_generation == generation
        && matches!(
            status.phase.as_deref(),
            Some(phase::APPROVED) | Some(phase::FAILED)
        )
}

async fn reconcile_inner(na: &NodeApproval, state: &State) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let ns = na.namespace().ok_or(Error::MissingMetadata)?;
    let key = object_key(na);
    let generation = na.metadata.generation;
    let live = na.status.clone().unwrap_or_default();
    if settled(&live, generation) {
        return Ok(Action::await_change());
    }
    let old = record(na, state);

    // One approval of a server at a time, from the rules to the status write: a quota
    // counts the keys other approvals hold, so two at once must not both fit in it.
    // The decision webhook is asked with no lock held (a slow one would hold up every
    // approval of the server, and interactive auth ids expire while they wait); the
    // rules are checked again under the lock before anything is done.
    let lock = state.enrollment_lock(&ns, &na.spec.server_ref.name);
    let mut gate = Gate::Unasked;
    let mut asked = 0;
    let (outcome, _one_at_a_time) = loop {
        let guard = lock.clone().lock_owned().await;
        match decide(na, state, &ns, &old, &gate).await {
            Ok(outcome) => break (outcome, Some(guard)),
            Err(Interrupt::Error(e)) => return Err(e),
            Err(Interrupt::Ask(ask)) => {
                drop(guard);
                asked += 1;
                match ask_webhook(na, &ask).await {
                    Err(v) => break (Outcome::Refused(v), None),
                    // What it allowed changed under the lock (the webhook, the request):
                    // asked again, a few times at most.
                    Ok(()) if asked > 3 => {
                        break (
                            Outcome::Refused(Violation {
                                rule: webhook::RULE,
                                message: "the decision webhook or the request kept changing while the webhook was asked; asked again at the next resync".into(),
                            }),
                            None,
                        );
                    }
                    Ok(()) => gate = Gate::Allowed(ask),
                }
            }
        }
    };
    let now = Timestamp::now();
    let new = desired_status(generation, &old, &outcome, now);
    if let Some(uid) = na.uid() {
        state.remember(&uid, &new);
    }
    if new != live {
        let api: Api<NodeApproval> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({
            "apiVersion": NodeApproval::api_version(&()),
            "kind": NodeApproval::kind(&()),
            "status": new,
        });
        api.patch_status(
            &na.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    }

    let mut events = Vec::new();
    if let Outcome::KeyIssued {
        renewed: true, key, ..
    } = &outcome
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: reason::KEY_RENEWED.into(),
            note: Some(format!(
                "the unused key expired and was expired on the server; new pre-auth key {} written to Secret {}",
                key.id, key.secret_name
            )),
            action: "MintKey".into(),
            secondary: None,
        });
    }
    if let Some(ev) = transition_event(
        conditions::find(&live.conditions, conditions::READY),
        conditions::find(&new.conditions, conditions::READY),
    ) {
        log_transition(&key, &outcome);
        events.push(ev);
    }
    for ev in events {
        publish(ctx, na, ev).await;
    }

    ctx.clear_failures(&key);
    Ok(match &outcome {
        Outcome::Pending { .. } => Action::requeue(ctx.settings.resync),
        Outcome::Requested => Action::await_change(),
        Outcome::KeyIssued { key, .. } => {
            // Look again at the resync interval (was it used?) and right after expiry.
            let until_expiry = key
                .expiration
                .as_ref()
                .map(|t| t.0.duration_since(now))
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d + Duration::from_secs(1))
                .unwrap_or(ctx.settings.resync);
            Action::requeue(until_expiry.min(ctx.settings.resync))
        }
        // A refusal is asked again at every resync: a decision webhook's ticket may be
        // approved later, and a quota may free up when a node is deleted.
        Outcome::Refused(_) => Action::requeue(ctx.settings.resync),
        Outcome::Failed { .. } | Outcome::Approved { .. } => Action::await_change(),
    })
}

fn log_transition(key: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Approved { reason, node, .. } => {
            let (id, name) = node
                .as_ref()
                .map(|n| (n.id.as_str(), n.name.as_str()))
                .unwrap_or_default();
            tracing::info!(approval = %key, %reason, node_id = %id, node = %name, "node approved")
        }
        Outcome::KeyIssued { key: k, .. } => {
            tracing::info!(approval = %key, key_id = %k.id, secret = %k.secret_name, "pre-auth key issued")
        }
        Outcome::Refused(v) => {
            tracing::info!(approval = %key, rule = %v.rule, detail = %v.message, "approval refused by an enrollment rule")
        }
        Outcome::Failed { reason, message } => {
            tracing::info!(approval = %key, %reason, detail = %message, "approval failed")
        }
        Outcome::Pending { reason, message, .. } => {
            tracing::info!(approval = %key, %reason, detail = %message, "approval pending")
        }
        Outcome::Requested => tracing::info!(approval = %key, "approval requested, waiting for an approver"),
    }
}

async fn decide(
    na: &NodeApproval,
    state: &State,
    ns: &str,
    old: &NodeApprovalStatus,
    gate: &Gate,
) -> Result<Outcome, Interrupt> {
    let ctx = &state.ctx;
    let server_name = &na.spec.server_ref.name;
    if !na.spec.approved && old.node.is_none() && old.pre_auth_key.is_none() {
        return Ok(Outcome::Requested);
    }
    // An approved registration is a record; it needs nothing from the server. What was
    // wrong with it when it was made (tags refused) stays said.
    if na.spec.registration.is_some()
        && let Some(node) = &old.node
    {
        let kept = conditions::find(&old.conditions, conditions::READY)
            .filter(|c| c.status == "False" && c.reason == reason::TAGS_REJECTED)
            .map(|c| (reason::TAGS_REJECTED, c.message.clone()));
        return Ok(Outcome::Approved {
            reason: reason::REGISTERED,
            node: Some(node.clone()),
            key: None,
            warning: hostname_mismatch(na, &node.id, &node.name).or(kept),
            note: None,
        });
    }
    let servers: Api<HeadscaleServer> = Api::namespaced(ctx.client.clone(), ns);
    let Some(hs) = servers
        .get_opt(server_name)
        .await
        .map_err(|source| Error::GetServer {
            name: server_name.clone(),
            source,
        })?
    else {
        return Ok(Outcome::Pending {
            reason: reason::SERVER_NOT_FOUND,
            message: format!("HeadscaleServer {server_name:?} does not exist in this namespace"),
            stalled: false,
        });
    };
    let client = match state.client_for(ns, &hs).await? {
        Ok(c) => c,
        Err(why) => {
            return Ok(Outcome::Pending {
                reason: reason::SERVER_NOT_READY,
                message: format!("{why}; the approval is executed once it is"),
                stalled: false,
            });
        }
    };
    match (&na.spec.registration, &na.spec.pre_auth_key) {
        (Some(reg), _) => register(na, state, &hs.spec.enrollment, &client, reg, gate).await,
        (None, Some(pak)) => {
            pre_auth_key(&ctx.client, na, ns, &hs.spec.enrollment, &client, pak, old, gate).await
        }
        (None, None) => Ok(Outcome::Failed {
            reason: reason::INVALID_SPEC,
            message: "set spec.registration or spec.preAuthKey".into(),
        }),
    }
}

/// Checks the rules (counting the user's nodes only when a quota needs it), then the
/// decision webhook's answer when the server has one: not asked yet, it stops the
/// decision ([`Interrupt::Ask`]) so that it is asked with no lock held.
async fn check_rules(
    na: &NodeApproval,
    rules: &EnrollmentSpec,
    req: &Request<'_>,
    ephemeral: bool,
    client: &headscale::Client,
    gate: &Gate,
) -> Result<Result<(), Violation>, Interrupt> {
    if let Err(v) = check_local_rules(rules, req, client).await? {
        return Ok(Err(v));
    }
    let Some(hook) = &rules.decision_webhook else {
        return Ok(Ok(()));
    };
    let ask = Ask {
        hook: hook.clone(),
        review: review(na, req, ephemeral),
    };
    if gate_allows(gate, &ask) {
        return Ok(Ok(()));
    }
    Err(Interrupt::Ask(Box::new(ask)))
}

/// What the decision webhook is asked about an approval. Pure.
pub fn review(na: &NodeApproval, req: &Request<'_>, ephemeral: bool) -> webhook::Review {
    let ns = na.namespace().unwrap_or_default();
    webhook::Review::new(webhook::ReviewRequest {
        uid: format!(
            "{}/{}",
            na.uid().unwrap_or_default(),
            na.metadata.generation.unwrap_or(0)
        ),
        server: webhook::ObjectName {
            namespace: ns.clone(),
            name: na.spec.server_ref.name.clone(),
            uid: None,
        },
        approval: webhook::ObjectName {
            namespace: ns,
            name: na.name_any(),
            uid: na.uid(),
        },
        form: if req.key.is_some() {
            "preAuthKey"
        } else {
            "registration"
        },
        user: req.user.map(str::to_string),
        tags: req.tags.to_vec(),
        hostname: req.hostname.map(str::to_string),
        pre_auth_key: req.key.as_ref().map(|k| webhook::KeyReview {
            lifetime_seconds: k.lifetime.as_secs(),
            reusable: k.reusable,
            ephemeral,
        }),
    })
}

/// Asks the decision webhook (no lock is held here) and logs the decision.
async fn ask_webhook(na: &NodeApproval, ask: &Ask) -> Result<(), Violation> {
    let decision = webhook::ask(&ask.hook, &ask.review).await;
    tracing::info!(
        approval = %object_key(na),
        webhook = %webhook::origin(&ask.hook.url),
        allowed = decision.is_ok(),
        detail = %decision.as_ref().err().map(|v| v.message.as_str()).unwrap_or(""),
        "enrollment decision webhook"
    );
    decision
}

async fn check_local_rules(
    rules: &EnrollmentSpec,
    req: &Request<'_>,
    client: &headscale::Client,
) -> Result<Result<(), Violation>, Error> {
    let count = match req.user {
        // A user Headscale does not have owns nothing (and listing its nodes is an
        // error): the rules are judged as without a quota, and the caller's user
        // lookup says UserNotFound.
        Some(user) if rules::needs_node_count(rules, req) && client.find_user(user).await?.is_some() => {
            let nodes = client
                .list_nodes(Some(user))
                .await?
                .iter()
                .filter(|n| !n.is_tagged())
                .count();
            // A key issued and not used yet is a node to come: it counts too, so that
            // approvals filed one after the other cannot each fit in the quota. (Keys
            // minted outside the operator count as well: the server is the authority.)
            let keys = client.list_pre_auth_keys().await?;
            nodes + outstanding_keys(&keys, user, Timestamp::now())
        }
        _ => 0,
    };
    Ok(rules::check(rules, req, count))
}

/// The server's keys for `user` (not tag-only) that are neither used nor expired: nodes
/// to come. Pure.
pub fn outstanding_keys(keys: &[PreAuthKey], user: &str, now: Timestamp) -> usize {
    keys.iter()
        .filter(|k| k.acl_tags.is_empty() && k.user.as_ref().is_some_and(|u| u.name == user))
        .filter(|k| !k.used && !k.is_expired(now))
        .count()
}

async fn register(
    na: &NodeApproval,
    state: &State,
    rules: &EnrollmentSpec,
    client: &headscale::Client,
    reg: &RegistrationSpec,
    gate: &Gate,
) -> Result<Outcome, Interrupt> {
    let req = Request {
        user: Some(&reg.user),
        tags: &reg.tags,
        hostname: na.spec.hostname.as_deref(),
        key: None,
    };
    if let Err(v) = check_rules(na, rules, &req, false, client, gate).await? {
        return Ok(Outcome::Refused(v));
    }
    if client.find_user(&reg.user).await?.is_none() {
        return Ok(Outcome::Pending {
            reason: reason::USER_NOT_FOUND,
            message: format!(
                "Headscale has no user {:?}; create it (the pending registration expires 15 minutes after `tailscale up`)",
                reg.user
            ),
            stalled: true,
        });
    }
    // Tags Headscale would refuse are refused before the node is let in: registered
    // untagged, it would have the user's access instead of the tagged node's.
    // (From 0.28 Headscale tags only with tags owned in the policy's tagOwners.)
    if !reg.tags.is_empty()
        && client.api_shape().await?.0.at_least(0, 28)
        && let Ok(Some(policy)) = client.get_policy().await
        && let Some(missing) = unowned_tags(&policy.policy, &reg.tags)
    {
        return Ok(Outcome::Pending {
            reason: reason::TAGS_REJECTED,
            message: format!(
                "the tags {missing:?} are not in the tagOwners of the policy Headscale serves, so Headscale would refuse them and the node would get user {:?}'s access: nothing is registered. Add them to the policy (an AclPolicy); the pending registration expires 15 minutes after `tailscale up`",
                reg.user
            ),
            stalled: true,
        });
    }
    // A registration is not idempotent: when an attempt gets no answer (a timeout, a
    // dropped connection) Headscale may have registered the node, and the next attempt
    // finds the auth id used. The attempt is remembered so that node can be found.
    let uid = na.uid().unwrap_or_default();
    let earlier = state.registration_attempt(&uid, Timestamp::now());
    let result = client.register_node(&reg.auth_id, &reg.user).await;
    if !matches!(&result, Err(e) if e.is_transient()) {
        state.forget_registration_attempt(&uid);
    }
    let node = match result {
        Ok(node) => node,
        Err(headscale::Error::NotFound { .. }) => {
            let mut message = "Headscale has no pending registration with this auth id: it is mistyped, expired (Headscale keeps one 15 minutes), already used, or was lost when Headscale restarted. Run `tailscale up` again and approve the new auth id in a new NodeApproval".to_string();
            if let Some(since) = earlier {
                let nodes = client.list_nodes(Some(&reg.user)).await?;
                let found = registered_since(&nodes, since, na.spec.hostname.as_deref());
                if let [node] = found[..] {
                    tracing::info!(approval = %object_key(na), node_id = %node.id, node = %node.name,
                        "an earlier registration got no answer; found the node it registered");
                    let node = node.clone();
                    return Ok(tag_or_remove(na, client, reg, node).await);
                }
                if !found.is_empty() {
                    let ids: Vec<String> = found.iter().map(|n| format!("{} ({})", n.id, n.name)).collect();
                    message.push_str(&format!(
                        ". An earlier attempt got no answer, so Headscale may have registered the node then: it is one of {}",
                        ids.join(", ")
                    ));
                }
            }
            return Ok(Outcome::Failed {
                reason: reason::AUTH_ID_NOT_FOUND,
                message,
            });
        }
        Err(e @ (headscale::Error::InvalidInput { .. } | headscale::Error::Conflict { .. })) => {
            return Ok(Outcome::Failed {
                reason: reason::REQUEST_REJECTED,
                message: format!("Headscale refused the registration: {e}"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    Ok(tag_or_remove(na, client, reg, node).await)
}

/// The tags of `tags` that are not keys of `tagOwners` in the policy `text` (HuJSON);
/// `None` when all are owned or the policy cannot be read (then Headscale's answer to
/// the tagging decides). Pure.
pub fn unowned_tags(text: &str, tags: &[String]) -> Option<Vec<String>> {
    let policy = crate::policy::hujson::parse(text).ok()?;
    let owners = policy.get("tagOwners").and_then(|o| o.as_object());
    let missing: Vec<String> = tags
        .iter()
        .filter(|t| owners.is_none_or(|o| !o.contains_key(t.as_str())))
        .cloned()
        .collect();
    (!missing.is_empty()).then_some(missing)
}

/// Tags a node just registered as asked. Fails closed: a node whose tags Headscale
/// refused is not left in as an untagged node of the user (it would have the user's
/// access, not the restricted tagged node's): it is deleted (expired when it cannot
/// be), the outcome is a terminal failure and the approval accounts for no node.
async fn tag_or_remove(
    na: &NodeApproval,
    client: &headscale::Client,
    reg: &RegistrationSpec,
    node: Node,
) -> Outcome {
    let mut node = node;
    if !reg.tags.is_empty() && !has_tags(&node, &reg.tags) {
        let refused = match client.set_tags(node.id, &reg.tags).await {
            Ok(tagged) if has_tags(&tagged, &reg.tags) => {
                node = tagged;
                None
            }
            Ok(tagged) => Some(format!("Headscale left the node with tags {:?}", tagged.tags)),
            // An answer lost on the way may hide a tagging that was done.
            Err(e) if e.is_transient() => match client.get_node(node.id).await {
                Ok(now) if has_tags(&now, &reg.tags) => {
                    node = now;
                    None
                }
                _ => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            let removed = match client.delete_node(node.id).await {
                Ok(()) | Err(headscale::Error::NotFound { .. }) => "was deleted".to_string(),
                Err(delete) => match client.expire_node(node.id, headscale::ExpiryChange::Now).await {
                    Ok(_) => format!("could not be deleted ({delete}) and was expired; delete it"),
                    Err(expire) => format!(
                        "could not be deleted ({delete}) nor expired ({expire}); delete it by hand. The audit counts it unexpected"
                    ),
                },
            };
            tracing::warn!(approval = %object_key(na), node_id = %node.id, tags = ?reg.tags, %why, %removed,
                "the tags of a registered node were refused: fail closed");
            return Outcome::Failed {
                reason: reason::TAGS_REJECTED,
                message: tags_rejected_message(&node, reg, &why, &removed),
            };
        }
    }
    Outcome::Approved {
        reason: reason::REGISTERED,
        node: Some(approved_node(&node, Timestamp::now())),
        key: None,
        warning: hostname_mismatch(na, &node.id.to_string(), &node.name),
        note: None,
    }
}

fn has_tags(node: &Node, tags: &[String]) -> bool {
    tags.iter().all(|t| node.tags.contains(t))
}

/// The terminal failure of a registration whose tags were refused. Pure.
pub fn tags_rejected_message(node: &Node, reg: &RegistrationSpec, why: &str, removed: &str) -> String {
    format!(
        "Headscale refused the tags {:?} ({why}), so node {} ({}) would have been an untagged node of user {:?} with that user's access: it {removed}, and this approval accounts for no node. Make the tags owned in the policy (tagOwners), run `tailscale up` again and approve the new auth id in a new NodeApproval",
        reg.tags, node.id, node.name, reg.user
    )
}

/// The node an approval let in must be the host it claimed (`spec.hostname`, which the
/// server's `hostnamePatterns` were checked against): another one is said here and
/// counted as unexpected by the audit. Case-insensitive, like hostnames. Pure.
pub fn hostname_mismatch(na: &NodeApproval, id: &str, name: &str) -> Option<(&'static str, String)> {
    let claimed = na.spec.hostname.as_deref()?;
    (!claimed.eq_ignore_ascii_case(name)).then(|| {
        (
            reason::HOSTNAME_MISMATCH,
            format!(
                "node {id} registered as hostname {name:?}, but the approval is for {claimed:?}: the audit counts it as unexpected (spec.nodes.unexpected of the server applies)"
            ),
        )
    })
}

/// The nodes of a user that an unanswered registration attempt at `since` may have made:
/// registered through the API (method CLI) from shortly before that attempt on, with
/// the claimed hostname when the approval names one. Pure.
pub fn registered_since<'a>(nodes: &'a [Node], since: Timestamp, hostname: Option<&str>) -> Vec<&'a Node> {
    let from = since.checked_sub(SignedDuration::from_secs(5)).unwrap_or(since);
    nodes
        .iter()
        .filter(|n| n.register_method == "REGISTER_METHOD_CLI" && n.pre_auth_key_id.is_none())
        .filter(|n| n.created_at.is_some_and(|c| c >= from))
        .filter(|n| hostname.is_none_or(|h| h.eq_ignore_ascii_case(&n.name)))
        .collect()
}

pub fn approved_node(node: &Node, now: Timestamp) -> ApprovedNode {
    ApprovedNode {
        id: node.id.to_string(),
        name: node.name.clone(),
        user: if node.is_tagged() {
            None
        } else {
            node.user.as_ref().map(|u| u.name.clone())
        },
        registered_time: Some(Time(node.created_at.unwrap_or(now))),
    }
}

/// Where an issued key stands on the server. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Unused,
    Used,
    Expired,
    Missing,
}

pub fn key_state(key: Option<&PreAuthKey>, now: Timestamp) -> KeyState {
    match key {
        None => KeyState::Missing,
        // Headscale never marks a reusable key used: it is usable until it expires, and
        // the nodes that registered with it say what it did.
        Some(k) if k.reusable && k.is_expired(now) => KeyState::Expired,
        Some(k) if k.reusable => KeyState::Unused,
        Some(k) if k.used => KeyState::Used,
        Some(k) if k.is_expired(now) => KeyState::Expired,
        Some(_) => KeyState::Unused,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pre_auth_key(
    kube: &kube::Client,
    na: &NodeApproval,
    ns: &str,
    rules: &EnrollmentSpec,
    client: &headscale::Client,
    pak: &PreAuthKeySpec,
    old: &NodeApprovalStatus,
    gate: &Gate,
) -> Result<Outcome, Interrupt> {
    let Some(issued) = &old.pre_auth_key else {
        return mint(kube, na, ns, rules, client, pak, false, gate).await;
    };
    let id: Option<PreAuthKeyId> = issued.id.parse().ok();
    let keys = client.list_pre_auth_keys().await?;
    let now = Timestamp::now();
    let listed = id.and_then(|id| keys.iter().find(|k| k.id == id));
    let reusable = pak.reusable || listed.is_some_and(|k| k.reusable);
    let state = key_state(listed, now);
    // The nodes that registered with a reusable key (the node list carries the key).
    let used_by: Vec<Node> = if reusable && id.is_some() && state != KeyState::Missing {
        let mut nodes: Vec<Node> = client
            .list_nodes(None)
            .await?
            .into_iter()
            .filter(|n| n.pre_auth_key_id == id)
            .collect();
        nodes.sort_by_key(|n| (n.created_at, n.id));
        nodes
    } else {
        Vec::new()
    };
    match state {
        KeyState::Unused => Ok(Outcome::KeyIssued {
            key: IssuedKey {
                used: !used_by.is_empty(),
                ..issued.clone()
            },
            renewed: false,
            used_by: reusable.then_some(used_by.len()),
        }),
        KeyState::Expired if !used_by.is_empty() => {
            // A reusable key that let nodes in did its work: a record, like a used key.
            let last = used_by.last().map(|n| approved_node(n, now));
            Ok(Outcome::Approved {
                reason: reason::KEY_USED,
                node: last,
                key: Some(IssuedKey {
                    used: true,
                    ..issued.clone()
                }),
                warning: None,
                note: Some(reusable_expired_note(&issued.id, &used_by)),
            })
        }
        KeyState::Used => {
            let nodes = client.list_nodes(None).await?;
            let node = nodes.iter().find(|n| n.pre_auth_key_id == id);
            Ok(Outcome::Approved {
                reason: reason::KEY_USED,
                node: node.map(|n| approved_node(n, now)),
                key: Some(IssuedKey {
                    used: true,
                    ..issued.clone()
                }),
                warning: node.and_then(|n| hostname_mismatch(na, &n.id.to_string(), &n.name)),
                note: None,
            })
        }
        state @ (KeyState::Expired | KeyState::Missing) => {
            if let (KeyState::Expired, Some(id)) = (state, id) {
                // Expired by time already; expiring it on the server makes it final
                // (and visible as expired by the operator in Headscale's list).
                match client.expire_pre_auth_key(id).await {
                    Ok(()) | Err(headscale::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(approval = %object_key(na), key_id = %id, "expired an unused pre-auth key on the server");
            }
            // A renewal is a new key: like the first one, it needs `approved: true`, so a
            // requester cannot get keys minted by setting `renew` on an approved record.
            if pak.renew && na.spec.approved {
                return mint(kube, na, ns, rules, client, pak, true, gate).await;
            }
            let waiting = if pak.renew {
                "; the renewal waits for an approver to set spec.approved to true"
            } else {
                "; set spec.preAuthKey.renew to mint a new one"
            };
            Ok(if state == KeyState::Expired {
                Outcome::Failed {
                    reason: reason::KEY_EXPIRED,
                    message: if reusable {
                        // Headscale does not say whether a reusable key was used; a node
                        // deleted since may have.
                        format!(
                            "reusable pre-auth key {} expired; no node that registered with it is on the server{waiting}",
                            issued.id
                        )
                    } else {
                        format!("pre-auth key {} expired unused{waiting}", issued.id)
                    },
                }
            } else {
                Outcome::Failed {
                    reason: reason::KEY_REVOKED,
                    message: format!(
                        "pre-auth key {} is no longer on the server (deleted outside the operator){}",
                        issued.id,
                        if pak.renew { waiting } else { "" }
                    ),
                }
            })
        }
    }
}

/// What an expired reusable key did. Pure.
pub fn reusable_expired_note(key_id: &str, used_by: &[Node]) -> String {
    const SHOWN: usize = 10;
    let mut ids: Vec<String> = used_by
        .iter()
        .take(SHOWN)
        .map(|n| format!("{} ({})", n.id, n.name))
        .collect();
    if used_by.len() > SHOWN {
        ids.push(format!("and {} more", used_by.len() - SHOWN));
    }
    format!(
        "reusable pre-auth key {key_id} expired; {} node(s) registered with it: {}",
        used_by.len(),
        ids.join(", ")
    )
}

/// The InvalidSpec failure of a key's `expiration` (immutable: the fix is another
/// approval). Pure.
pub fn invalid_expiration(expiration: &str, why: &str) -> Outcome {
    Outcome::Failed {
        reason: reason::INVALID_SPEC,
        message: format!(
            "spec.preAuthKey.expiration {expiration:?} {why}; it cannot be changed (a minted key cannot): create another NodeApproval with a valid one"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn mint(
    kube: &kube::Client,
    na: &NodeApproval,
    ns: &str,
    rules: &EnrollmentSpec,
    client: &headscale::Client,
    pak: &PreAuthKeySpec,
    renewed: bool,
    gate: &Gate,
) -> Result<Outcome, Interrupt> {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    // Too large to hold is the longest: the server's maxPreAuthKeyLifetime refuses it
    // by name rather than this calling it malformed.
    let Some(lifetime) = rules::parse_duration_saturating(&pak.expiration).filter(|d| !d.is_zero()) else {
        return Ok(invalid_expiration(
            &pak.expiration,
            "is not a duration of more than 0",
        ));
    };
    let req = Request {
        user: pak.user.as_deref(),
        tags: &pak.tags,
        hostname: na.spec.hostname.as_deref(),
        key: Some(KeyRequest {
            lifetime,
            reusable: pak.reusable,
        }),
    };
    if let Err(v) = check_rules(na, rules, &req, pak.ephemeral, client, gate).await? {
        return Ok(Outcome::Refused(v));
    }
    if lifetime > CENTURY {
        return Ok(invalid_expiration(&pak.expiration, "is more than 100 years"));
    }
    let user = match &pak.user {
        None => None,
        Some(name) => match client.find_user(name).await? {
            Some(u) => Some(u.id),
            None => {
                return Ok(Outcome::Pending {
                    reason: reason::USER_NOT_FOUND,
                    message: format!("Headscale has no user {name:?}; create it"),
                    stalled: true,
                });
            }
        },
    };
    let secret_name = pak.secret_name.clone().unwrap_or_else(|| na.name_any());
    let uid = na.uid().ok_or(Interrupt::Error(Error::MissingMetadata))?;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), ns);
    // Never write into somebody else's Secret: only a missing one or our own.
    let existing = secrets
        .get_metadata_opt(&secret_name)
        .await
        .map_err(|source| Error::GetSecret {
            name: secret_name.clone(),
            source,
        })
        .map_err(Interrupt::Error)?;
    if let Some(meta) = existing
        && !meta
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid)
    {
        return Ok(Outcome::Pending {
            reason: reason::SECRET_CONFLICT,
            message: secret_conflict_message(&secret_name),
            stalled: true,
        });
    }

    let expiration = Timestamp::now()
        .checked_add(SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let new = client
        .create_pre_auth_key(&headscale::PreAuthKeySpec {
            user,
            tags: pak.tags.clone(),
            reusable: pak.reusable,
            ephemeral: pak.ephemeral,
            expiration,
        })
        .await?;
    let key_id = new.info.id;
    let secret = desired_secret(na, &secret_name, &uid, &new.key);
    if let Err(source) = secrets
        .patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        // Nobody will ever see this key: take it off the server at once.
        if let Err(e) = client.expire_pre_auth_key(key_id).await {
            tracing::warn!(approval = %object_key(na), key_id = %key_id, error = %e, "could not expire an undelivered pre-auth key");
        }
        return Err(Error::ApplySecret {
            name: secret_name,
            source,
        }
        .into());
    }
    tracing::info!(
        approval = %object_key(na),
        key_id = %key_id,
        secret = %secret_name,
        user = ?pak.user,
        tags = ?pak.tags,
        ephemeral = pak.ephemeral,
        reusable = pak.reusable,
        expiration = %new.info.expiration.unwrap_or(expiration),
        "minted a pre-auth key"
    );
    Ok(Outcome::KeyIssued {
        key: IssuedKey {
            id: key_id.to_string(),
            expiration: Some(Time(new.info.expiration.unwrap_or(expiration))),
            secret_name,
            used: false,
        },
        renewed,
        used_by: pak.reusable.then_some(0),
    })
}

/// Why a key is not written into an existing Secret. It may be anybody's (the
/// server's API key, another approval's key): never invite deleting it. Pure.
pub fn secret_conflict_message(secret_name: &str) -> String {
    format!(
        "Secret {secret_name:?} exists and is not owned by this NodeApproval; the operator never writes into a Secret it does not own. Choose another name in spec.preAuthKey.secretName"
    )
}

/// The Secret a pre-auth key is delivered in, owned by its approval (garbage
/// collected with it). Pure.
pub fn desired_secret(
    na: &NodeApproval,
    name: &str,
    uid: &str,
    key: &crate::secret::SecretString,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": na.namespace(),
            "labels": {
                "app.kubernetes.io/managed-by": "headscale-operator",
                "app.kubernetes.io/component": "pre-auth-key",
                "headscale.operator.dev/node-approval": na.name_any(),
            },
            "ownerReferences": [{
                "apiVersion": NodeApproval::api_version(&()),
                "kind": NodeApproval::kind(&()),
                "name": na.name_any(),
                "uid": uid,
                "controller": true,
            }],
        },
        "type": "Opaque",
        "data": {
            AUTH_KEY_SECRET_KEY: ByteString(key.expose().as_bytes().to_vec()),
        },
    })
}

/// The status a reconcile wants. Pure.
pub fn desired_status(
    generation: Option<i64>,
    old: &NodeApprovalStatus,
    outcome: &Outcome,
    now: Timestamp,
) -> NodeApprovalStatus {
    let mut status = NodeApprovalStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        phase: old.phase.clone(),
        refused_by: None,
        node: old.node.clone(),
        pre_auth_key: old.pre_auth_key.clone(),
    };
    let (phase, ready, reason, message, stalled) = match outcome {
        Outcome::Requested => (
            phase::REQUESTED,
            false,
            reason::AWAITING_APPROVAL,
            "a request: an approver sets spec.approved to true to execute it".to_string(),
            false,
        ),
        Outcome::Pending {
            reason,
            message,
            stalled,
        } => {
            // Waiting keeps what was achieved (an issued key stays issued).
            let phase = match old.phase.as_deref() {
                Some(p @ (phase::KEY_ISSUED | phase::APPROVED)) => p,
                _ => phase::PENDING,
            };
            (phase, false, *reason, message.clone(), *stalled)
        }
        Outcome::Refused(v) => {
            status.refused_by = Some(v.rule.to_string());
            (
                phase::REFUSED,
                false,
                reason::ENROLLMENT_REFUSED,
                format!(
                    "refused by the server's enrollment rule {}: {}",
                    v.rule, v.message
                ),
                true,
            )
        }
        Outcome::Failed { reason, message } => (phase::FAILED, false, *reason, message.clone(), true),
        Outcome::KeyIssued { key, used_by, .. } => {
            let mut msg = format!(
                "{}pre-auth key {} is in Secret {} (key {AUTH_KEY_SECRET_KEY}), valid until {}",
                if used_by.is_some() { "reusable " } else { "" },
                key.id,
                key.secret_name,
                key.expiration
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            );
            if let Some(n) = used_by {
                msg.push_str(&format!("; {n} node(s) registered with it so far"));
            }
            status.pre_auth_key = Some(key.clone());
            (phase::KEY_ISSUED, true, reason::KEY_ISSUED, msg, false)
        }
        Outcome::Approved {
            reason,
            node,
            key,
            warning,
            note,
        } => {
            status.node = node.clone();
            if key.is_some() {
                status.pre_auth_key = key.clone();
            }
            let what = match node {
                Some(n) => format!("node {} ({})", n.id, n.name),
                None => "a node that no longer exists".to_string(),
            };
            match warning {
                Some((r, m)) => (phase::APPROVED, false, *r, m.clone(), true),
                None => (
                    phase::APPROVED,
                    true,
                    *reason,
                    match note {
                        Some(n) => format!("{what} is registered through this approval; {n}"),
                        None => format!("{what} is registered through this approval"),
                    },
                    false,
                ),
            }
        }
    };
    status.phase = Some(phase.to_string());
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        ready,
        reason,
        message.clone(),
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        STALLED,
        stalled,
        reason,
        if stalled { message } else { String::new() },
        generation,
        now,
    );
    status
}

/// An Event when Ready changes status or reason. Pure.
pub fn transition_event(old: Option<&Condition>, new: Option<&Condition>) -> Option<Event> {
    crate::controller::condition_event(old, new, "Approve")
}

async fn publish(ctx: &crate::controller::Context, na: &NodeApproval, event: Event) {
    crate::controller::publish(ctx, &na.object_ref(&()), event).await
}

pub fn error_policy(na: Arc<NodeApproval>, error: &Error, state: Arc<State>) -> Action {
    let key = object_key(&*na);
    crate::controller::reconcile_failed(
        &state.ctx,
        CONTROLLER,
        &key,
        Some(na.object_ref(&())),
        error.reason(),
        error.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn key(used: bool, expiration: &str) -> PreAuthKey {
        serde_json::from_value(json!({
            "id": "7", "key": "hskey-auth-abcdefghijkl-***", "used": used,
            "expiration": expiration, "aclTags": [],
        }))
        .unwrap()
    }

    fn issued() -> IssuedKey {
        IssuedKey {
            id: "7".into(),
            expiration: Some(Time(t("2026-01-01T01:00:00Z"))),
            secret_name: "laptop".into(),
            used: false,
        }
    }

    #[test]
    fn key_states() {
        let now = t("2026-01-01T00:30:00Z");
        assert_eq!(key_state(None, now), KeyState::Missing);
        assert_eq!(
            key_state(Some(&key(false, "2026-01-01T01:00:00Z")), now),
            KeyState::Unused
        );
        assert_eq!(
            key_state(Some(&key(true, "2026-01-01T01:00:00Z")), now),
            KeyState::Used
        );
        assert_eq!(
            key_state(Some(&key(false, "2026-01-01T00:00:00Z")), now),
            KeyState::Expired
        );
        // A used key is used, expired or not: its node is what matters.
        assert_eq!(
            key_state(Some(&key(true, "2026-01-01T00:00:00Z")), now),
            KeyState::Used
        );
    }

    #[test]
    fn statuses_per_outcome() {
        let now = t("2026-01-01T00:00:00Z");
        let empty = NodeApprovalStatus::default();
        #[rustfmt::skip]
        let table: Vec<(Outcome, &str, &str, &str, &str)> = vec![
            (Outcome::Requested, "Requested", "False", "AwaitingApproval", "False"),
            (Outcome::Pending { reason: reason::SERVER_NOT_READY, message: "m".into(), stalled: false }, "Pending", "False", "ServerNotReady", "False"),
            (Outcome::Pending { reason: reason::USER_NOT_FOUND, message: "m".into(), stalled: true }, "Pending", "False", "UserNotFound", "True"),
            (Outcome::Refused(Violation { rule: "allowedUsers", message: "m".into() }), "Refused", "False", "EnrollmentRefused", "True"),
            (Outcome::Failed { reason: reason::AUTH_ID_NOT_FOUND, message: "m".into() }, "Failed", "False", "AuthIdNotFound", "True"),
            (Outcome::KeyIssued { key: issued(), renewed: false, used_by: None }, "KeyIssued", "True", "KeyIssued", "False"),
            (Outcome::Approved { reason: reason::REGISTERED, node: None, key: None, warning: None, note: None }, "Approved", "True", "Registered", "False"),
            (Outcome::Approved { reason: reason::REGISTERED, node: None, key: None, warning: Some((reason::TAGS_REJECTED, "m".into())), note: None }, "Approved", "False", "TagsRejected", "True"),
        ];
        for (outcome, phase, ready, why, stalled) in table {
            let s = desired_status(Some(2), &empty, &outcome, now);
            assert_eq!(s.phase.as_deref(), Some(phase), "{outcome:?}");
            let r = conditions::find(&s.conditions, "Ready").unwrap();
            assert_eq!(
                (r.status.as_str(), r.reason.as_str()),
                (ready, why),
                "{outcome:?}"
            );
            assert_eq!(
                conditions::find(&s.conditions, "Stalled").unwrap().status,
                stalled,
                "{outcome:?}"
            );
            assert_eq!(s.observed_generation, Some(2));
        }
        let refused = desired_status(
            Some(1),
            &empty,
            &Outcome::Refused(Violation {
                rule: "maxNodesPerUser",
                message: "m".into(),
            }),
            now,
        );
        assert_eq!(refused.refused_by.as_deref(), Some("maxNodesPerUser"));
        assert!(
            conditions::find(&refused.conditions, "Ready")
                .unwrap()
                .message
                .contains("maxNodesPerUser")
        );
    }

    #[test]
    fn waiting_keeps_an_issued_key_and_unchanged_is_unchanged() {
        let now = t("2026-01-01T00:00:00Z");
        let s1 = desired_status(
            Some(1),
            &NodeApprovalStatus::default(),
            &Outcome::KeyIssued {
                key: issued(),
                renewed: false,
                used_by: None,
            },
            now,
        );
        let s2 = desired_status(
            Some(1),
            &s1,
            &Outcome::KeyIssued {
                key: issued(),
                renewed: false,
                used_by: None,
            },
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(s1, s2, "an unchanged approval needs no write");
        assert!(
            transition_event(
                conditions::find(&s1.conditions, "Ready"),
                conditions::find(&s2.conditions, "Ready")
            )
            .is_none()
        );
        let down = Outcome::Pending {
            reason: reason::SERVER_NOT_READY,
            message: "m".into(),
            stalled: false,
        };
        let s3 = desired_status(Some(1), &s2, &down, now);
        assert_eq!(s3.phase.as_deref(), Some("KeyIssued"));
        assert_eq!(s3.pre_auth_key, Some(issued()));
        let ev = transition_event(
            conditions::find(&s2.conditions, "Ready"),
            conditions::find(&s3.conditions, "Ready"),
        )
        .unwrap();
        assert_eq!(ev.type_, EventType::Warning);
    }

    #[test]
    fn terminal_phases_settle_for_their_generation_only() {
        let mut s = NodeApprovalStatus {
            observed_generation: Some(3),
            phase: Some("Failed".into()),
            ..Default::default()
        };
        assert!(settled(&s, Some(3)));
        assert!(!settled(&s, Some(4)), "a spec change is looked at again");
        s.phase = Some("Refused".into());
        assert!(
            !settled(&s, Some(3)),
            "a refusal is re-checked when the rules change"
        );
        s.phase = Some("KeyIssued".into());
        assert!(!settled(&s, Some(3)));
    }

    #[test]
    fn unused_keys_count_against_the_quota() {
        let key = |id: u64, user: Option<&str>, tags: &[&str], used: bool, expiration: &str| PreAuthKey {
            id: PreAuthKeyId(id),
            user: user.map(|u| serde_json::from_value(json!({"id": "1", "name": u})).unwrap()),
            masked_key: None,
            reusable: false,
            ephemeral: false,
            used,
            expiration: Some(expiration.parse().unwrap()),
            created_at: None,
            acl_tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        let later = "2030-01-01T00:00:00Z";
        let keys = vec![
            key(1, Some("alice"), &[], false, later),
            key(2, Some("alice"), &[], true, later),
            key(3, Some("alice"), &[], false, "2020-01-01T00:00:00Z"),
            key(4, Some("bob"), &[], false, later),
            key(5, Some("alice"), &["tag:ci"], false, later),
            key(6, None, &["tag:ci"], false, later),
            key(7, Some("alice"), &[], false, later),
        ];
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(outstanding_keys(&keys, "alice", now), 2, "1 and 7");
    }

    #[test]
    fn an_unanswered_registration_is_found_by_time_user_and_hostname() {
        let node = |id: u64, name: &str, method: &str, created: &str| -> Node {
            serde_json::from_value(json!({
                "id": id.to_string(), "name": name, "registerMethod": method,
                "createdAt": created, "online": false, "tags": [],
            }))
            .unwrap()
        };
        let nodes = vec![
            node(1, "laptop", "REGISTER_METHOD_CLI", "2026-06-01T00:00:10Z"),
            node(2, "laptop", "REGISTER_METHOD_CLI", "2026-05-31T00:00:00Z"),
            node(3, "laptop", "REGISTER_METHOD_OIDC", "2026-06-01T00:00:10Z"),
            node(4, "desk", "REGISTER_METHOD_CLI", "2026-06-01T00:00:03Z"),
        ];
        let since: Timestamp = "2026-06-01T00:00:05Z".parse().unwrap();
        let ids = |v: Vec<&Node>| v.iter().map(|n| n.id.0).collect::<Vec<_>>();
        assert_eq!(ids(registered_since(&nodes, since, Some("Laptop"))), vec![1]);
        assert_eq!(
            ids(registered_since(&nodes, since, None)),
            vec![1, 4],
            "5 s of slack"
        );
    }

    #[test]
    fn the_node_must_be_the_claimed_host() {
        let spec: crate::api::NodeApprovalSpec = serde_json::from_value(json!({
            "serverRef": {"name": "corp"}, "preAuthKey": {"user": "alice"}, "hostname": "web-1"
        }))
        .unwrap();
        let mut na = NodeApproval::new("a", spec);
        assert_eq!(hostname_mismatch(&na, "3", "WEB-1"), None, "case-insensitive");
        let (reason, message) = hostname_mismatch(&na, "3", "evil").unwrap();
        assert_eq!(reason, "HostnameMismatch");
        assert!(
            message.contains("\"evil\"") && message.contains("\"web-1\""),
            "{message}"
        );
        na.spec.hostname = None;
        assert_eq!(hostname_mismatch(&na, "3", "evil"), None, "nothing claimed");
    }

    use crate::headscale::fake_server::{FakeServer, Reply};

    /// A made-up key of the right shape (built, so it never looks like a committed one).
    fn api_key() -> String {
        format!("hskey-api-{}-{}", "a".repeat(12), "0".repeat(64))
    }

    fn fake_client(url: &str) -> headscale::Client {
        headscale::Client::with_config(
            url,
            SecretString::new(api_key()),
            headscale::ClientConfig {
                timeout: Duration::from_millis(500),
                min_interval: Duration::ZERO,
                retry_backoff: Duration::from_millis(10),
                ..headscale::ClientConfig::default()
            },
        )
        .unwrap()
    }

    fn approval(spec: serde_json::Value) -> NodeApproval {
        let mut na = NodeApproval::new("laptop", serde_json::from_value(spec).unwrap());
        na.metadata.namespace = Some("ns".into());
        na.metadata.uid = Some("uid-1".into());
        na.metadata.generation = Some(1);
        na
    }

    #[tokio::test]
    async fn a_quota_for_a_user_headscale_does_not_have_is_judged_as_without_one() {
        // Listing the nodes of a missing user is an error in Headscale.
        let server = FakeServer::start("v0.29.2", |seen, _| match seen.path() {
            "/api/v1/user" => Reply::Json(200, r#"{"users": []}"#.into()),
            _ => Reply::Json(500, r#"{"code": 2, "message": "user not found"}"#.into()),
        })
        .await;
        let client = fake_client(&server.url);
        let rules = EnrollmentSpec {
            max_nodes_per_user: 1,
            ..Default::default()
        };
        let req = Request {
            user: Some("ghost"),
            ..Default::default()
        };
        let got = check_local_rules(&rules, &req, &client).await.unwrap();
        assert_eq!(got, Ok(()), "then the caller's lookup says UserNotFound");
        assert!(
            server.seen().iter().all(|s| s.path() == "/api/v1/user"),
            "{:?}",
            server.seen()
        );
    }

    #[tokio::test]
    async fn the_webhook_is_asked_before_anything_and_its_answer_covers_only_that_question() {
        let server = FakeServer::start("v0.29.2", |_, _| Reply::Json(500, "{}".into())).await;
        let client = fake_client(&server.url);
        let hook: DecisionWebhookSpec =
            serde_json::from_value(json!({"url": "https://hook.example/decide"})).unwrap();
        let rules = EnrollmentSpec {
            decision_webhook: Some(hook.clone()),
            ..Default::default()
        };
        let na = approval(
            json!({"serverRef": {"name": "corp"}, "registration": {"authId": "a", "user": "alice"}}),
        );
        let req = Request {
            user: Some("alice"),
            ..Default::default()
        };
        let ask = match check_rules(&na, &rules, &req, false, &client, &Gate::Unasked).await {
            Err(Interrupt::Ask(ask)) => ask,
            other => panic!("{other:?}"),
        };
        assert_eq!(ask.hook, hook);
        assert!(server.seen().is_empty(), "nothing asked of Headscale");
        let allowed = Gate::Allowed(ask.clone());
        assert!(matches!(
            check_rules(&na, &rules, &req, false, &client, &allowed).await,
            Ok(Ok(()))
        ));
        // Another webhook, or another question, is asked again.
        let mut moved = rules.clone();
        moved.decision_webhook.as_mut().unwrap().url = "https://other.example/decide".into();
        assert!(matches!(
            check_rules(&na, &moved, &req, false, &client, &allowed).await,
            Err(Interrupt::Ask(_))
        ));
        let tagged = vec!["tag:ci".to_string()];
        let other = Request {
            tags: &tagged,
            ..req.clone()
        };
        assert!(matches!(
            check_rules(&na, &rules, &other, false, &client, &allowed).await,
            Err(Interrupt::Ask(_))
        ));
    }

    fn fake_node(id: u64, tags: &[&str]) -> String {
        json!({"node": {"id": id.to_string(), "name": "laptop", "user": {"id": "1", "name": "alice"},
                        "expiry": null, "tags": tags}})
        .to_string()
    }

    #[tokio::test]
    async fn refused_tags_fail_closed_the_node_is_deleted_and_accounts_for_nothing() {
        let server = FakeServer::start("v0.29.2", |seen, _| match (seen.method.as_str(), seen.path()) {
            ("POST", "/api/v1/node/5/tags") => Reply::Json(
                400,
                r#"{"code": 3, "message": "requested tags [tag:nobodyowns] are invalid or not permitted"}"#
                    .into(),
            ),
            ("DELETE", "/api/v1/node/5") => Reply::Json(200, "{}".into()),
            _ => Reply::Json(404, r#"{"code": 5, "message": "not found"}"#.into()),
        })
        .await;
        let client = fake_client(&server.url);
        let na = approval(json!({"serverRef": {"name": "corp"},
            "registration": {"authId": "a", "user": "alice", "tags": ["tag:nobodyowns"]}}));
        let reg = na.spec.registration.clone().unwrap();
        let node: Node = serde_json::from_str::<serde_json::Value>(&fake_node(5, &[]))
            .map(|v| serde_json::from_value(v["node"].clone()).unwrap())
            .unwrap();
        let outcome = tag_or_remove(&na, &client, &reg, node).await;
        let Outcome::Failed { reason, message } = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(*reason, "TagsRejected");
        assert!(
            message.contains("it was deleted") && message.contains("accounts for no node"),
            "{message}"
        );
        assert!(
            server
                .seen()
                .iter()
                .any(|s| s.method == "DELETE" && s.path() == "/api/v1/node/5"),
            "{:?}",
            server.seen()
        );
        let status = desired_status(
            Some(1),
            &NodeApprovalStatus::default(),
            &outcome,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.node, None, "the audit counts nothing for it");
    }

    #[tokio::test]
    async fn tags_applied_are_approved() {
        let server = FakeServer::start("v0.29.2", |seen, _| match seen.path() {
            "/api/v1/node/5/tags" => Reply::Json(200, fake_node(5, &["tag:ci"])),
            _ => Reply::Json(404, r#"{"code": 5, "message": "not found"}"#.into()),
        })
        .await;
        let client = fake_client(&server.url);
        let na = approval(json!({"serverRef": {"name": "corp"},
            "registration": {"authId": "a", "user": "alice", "tags": ["tag:ci"]}}));
        let reg = na.spec.registration.clone().unwrap();
        let node: Node = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(&fake_node(5, &[])).unwrap()["node"].clone(),
        )
        .unwrap();
        let outcome = tag_or_remove(&na, &client, &reg, node).await;
        let Outcome::Approved {
            node: Some(n),
            warning: None,
            ..
        } = &outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            (n.id.as_str(), n.user.as_deref()),
            ("5", None),
            "a tagged node has no user"
        );
    }

    #[test]
    fn tags_are_checked_against_the_served_tag_owners() {
        let tags = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let policy = r#"{
            // HuJSON
            "tagOwners": {"tag:ci": ["alice@"], "tag:web": []},
        }"#;
        assert_eq!(unowned_tags(policy, &tags(&["tag:ci", "tag:web"])), None);
        assert_eq!(
            unowned_tags(policy, &tags(&["tag:ci", "tag:nobodyowns"])),
            Some(tags(&["tag:nobodyowns"]))
        );
        assert_eq!(
            unowned_tags(r#"{"acls": []}"#, &tags(&["tag:ci"])),
            Some(tags(&["tag:ci"])),
            "no tagOwners: nothing is owned"
        );
        assert_eq!(
            unowned_tags("{not a policy", &tags(&["tag:ci"])),
            None,
            "unreadable: Headscale decides"
        );
    }

    fn reusable_key(expiration: &str) -> PreAuthKey {
        serde_json::from_value(json!({
            "id": "7", "key": "hskey-auth-abcdefghijkl-***", "used": false, "reusable": true,
            "expiration": expiration, "aclTags": [],
        }))
        .unwrap()
    }

    #[test]
    fn a_reusable_key_is_never_said_unused_once_nodes_used_it() {
        let now = t("2026-01-01T00:30:00Z");
        assert_eq!(
            key_state(Some(&reusable_key("2026-01-01T01:00:00Z")), now),
            KeyState::Unused
        );
        assert_eq!(
            key_state(Some(&reusable_key("2026-01-01T00:00:00Z")), now),
            KeyState::Expired
        );
        let status = desired_status(
            Some(1),
            &NodeApprovalStatus::default(),
            &Outcome::KeyIssued {
                key: issued(),
                renewed: false,
                used_by: Some(3),
            },
            now,
        );
        let ready = conditions::find(&status.conditions, "Ready").unwrap();
        assert!(
            ready.message.starts_with("reusable pre-auth key 7")
                && ready.message.contains("3 node(s) registered with it"),
            "{}",
            ready.message
        );
        let nodes: Vec<Node> = (1..=12)
            .map(|i| {
                serde_json::from_value(json!({"id": i.to_string(), "name": format!("n{i}"), "tags": []}))
                    .unwrap()
            })
            .collect();
        let note = reusable_expired_note("7", &nodes);
        assert!(
            note.contains("12 node(s)") && note.contains("1 (n1)") && note.contains("and 2 more"),
            "{note}"
        );
        assert!(!note.contains("unused"));
    }

    #[test]
    fn an_invalid_expiration_says_to_create_another_approval() {
        let Outcome::Failed { reason, message } =
            invalid_expiration("0s", "is not a duration of more than 0")
        else {
            panic!()
        };
        assert_eq!(reason, "InvalidSpec");
        assert!(message.contains("create another NodeApproval"), "{message}");
    }

    #[test]
    fn a_secret_conflict_never_invites_deleting_the_secret() {
        let m = secret_conflict_message("corp-api-key");
        assert!(!m.to_lowercase().contains("delete"), "{m}");
        assert!(
            m.contains("spec.preAuthKey.secretName") && m.contains("\"corp-api-key\""),
            "{m}"
        );
    }

    #[test]
    fn the_secret_is_owned_and_the_status_never_holds_the_key() {
        let spec: crate::api::NodeApprovalSpec = serde_json::from_value(json!({
            "serverRef": {"name": "corp"}, "preAuthKey": {"user": "alice"}
        }))
        .unwrap();
        let mut na = NodeApproval::new("laptop", spec);
        na.metadata.namespace = Some("ns".into());
        let secret = desired_secret(
            &na,
            "laptop",
            "uid-1",
            &SecretString::new("hskey-auth-abc-SECRET"),
        );
        assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "NodeApproval");
        assert!(
            !secret.to_string().contains("SECRET"),
            "the key is base64 in data"
        );
        let status = desired_status(
            None,
            &NodeApprovalStatus::default(),
            &Outcome::KeyIssued {
                key: issued(),
                renewed: false,
                used_by: None,
            },
            t("2026-01-01T00:00:00Z"),
        );
        assert!(!serde_json::to_string(&status).unwrap().contains("hskey-auth"));
    }
}
