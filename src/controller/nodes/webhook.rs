//! The enrollment decision webhook: after the server's enrollment rules pass and
//! before anything is done on Headscale, the operator POSTs an `EnrollmentReview` to
//! the server's `spec.enrollment.decisionWebhook.url` and acts only on an explicit
//! `{"allowed": true}`. A denial, an error, an unreadable answer or no answer within
//! the timeout is a refusal (fail closed) with the reason in the approval's status.
//!
//! Request (`Content-Type: application/json`):
//! ```json
//! {"apiVersion": "headscale.operator.dev/v1alpha1", "kind": "EnrollmentReview",
//!  "request": {"uid": "<approval uid>/<generation>",
//!              "server": {"namespace": "vpn", "name": "corp"},
//!              "approval": {"namespace": "vpn", "name": "alice-laptop", "uid": "..."},
//!              "form": "registration" | "preAuthKey",
//!              "user": "alice", "tags": ["tag:ci"], "hostname": "alice-laptop",
//!              "preAuthKey": {"lifetimeSeconds": 3600, "reusable": false, "ephemeral": false}}}
//! ```
//! Response: `{"allowed": true}` or `{"allowed": false, "reason": "no ticket"}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rules::Violation;
use crate::api::server::DecisionWebhookSpec;

pub const RULE: &str = "decisionWebhook";

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub request: ReviewRequest,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRequest {
    pub uid: String,
    pub server: ObjectName,
    pub approval: ObjectName,
    pub form: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_auth_key: Option<KeyReview>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyReview {
    pub lifetime_seconds: u64,
    pub reusable: bool,
    pub ephemeral: bool,
}

impl Review {
    pub fn new(request: ReviewRequest) -> Self {
        Self {
            api_version: "headscale.operator.dev/v1alpha1",
            kind: "EnrollmentReview",
            request,
        }
    }
}

#[derive(Deserialize, Debug, PartialEq)]
struct Decision {
    allowed: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

fn refused(message: String) -> Violation {
    Violation { rule: RULE, message }
}

/// What an answer means. Pure.
pub fn judge(status: u16, body: &[u8]) -> Result<(), Violation> {
    if !(200..300).contains(&status) {
        return Err(refused(format!(
            "the decision webhook answered HTTP {status}: denied (fail closed)"
        )));
    }
    let decision: Decision = serde_json::from_slice(body).map_err(|e| {
        refused(format!(
            "the decision webhook's answer is not {{\"allowed\": bool, \"reason\": string}} ({e}): denied (fail closed)"
        ))
    })?;
    match decision.allowed {
        Some(true) => Ok(()),
        Some(false) => Err(refused(match decision.reason.filter(|r| !r.trim().is_empty()) {
            Some(r) => format!(
                "the decision webhook denied it: {}",
                crate::controller::truncate(&r, 300)
            ),
            None => "the decision webhook denied it (no reason given)".into(),
        })),
        None => Err(refused(
            "the decision webhook's answer has no \"allowed\" field: denied (fail closed)".into(),
        )),
    }
}

/// Asks the webhook. Every failure is a refusal naming what went wrong.
pub async fn ask(spec: &DecisionWebhookSpec, review: &Review) -> Result<(), Violation> {
    crate::headscale::install_crypto_provider();
    // Credentials in the URL would reach the approval's status and the logs with every
    // refusal (the schema refuses them; this covers objects stored before it did).
    let url = match reqwest::Url::parse(&spec.url) {
        Ok(u) if u.username().is_empty() && u.password().is_none() => u,
        Ok(_) => {
            return Err(refused(
                "decisionWebhook.url must not carry credentials (user:password@): denied".into(),
            ));
        }
        Err(e) => return Err(refused(format!("decisionWebhook.url is not a URL ({e}): denied"))),
    };
    let timeout = Duration::from_secs(spec.timeout_seconds.clamp(1, 30) as u64);
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("headscale-operator/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = spec.ca_bundle.as_deref().filter(|p| !p.trim().is_empty()) {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            refused(format!(
                "decisionWebhook.caBundle holds no usable PEM certificate ({e}): denied"
            ))
        })?;
        if certs.is_empty() {
            return Err(refused(
                "decisionWebhook.caBundle holds no PEM certificate: denied".into(),
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    let client = builder
        .build()
        .map_err(|e| refused(format!("cannot set up the decision webhook client ({e}): denied")))?;
    let response = match client.post(url).json(review).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(refused(format!(
                "the decision webhook did not answer within {}s: denied (fail closed)",
                timeout.as_secs()
            )));
        }
        Err(e) => {
            return Err(refused(format!(
                "the decision webhook at {} could not be reached ({}): denied (fail closed)",
                origin(&spec.url),
                error_chain(&e.without_url())
            )));
        }
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return Err(refused(format!(
                "the decision webhook did not answer within {}s: denied (fail closed)",
                timeout.as_secs()
            )));
        }
        Err(e) => {
            return Err(refused(format!(
                "reading the decision webhook's answer failed ({}): denied (fail closed)",
                error_chain(&e.without_url())
            )));
        }
    };
    judge(status, &body)
}

/// The scheme, host and port of a webhook URL, for logs and messages: a path or query may
/// carry a token (`/hooks/<secret>`, `?code=...`), so they are never repeated.
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => "(unreadable URL)".into(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_allow_allows() {
        assert!(judge(200, br#"{"allowed": true}"#).is_ok());
        let deny = judge(200, br#"{"allowed": false, "reason": "no open ticket"}"#).unwrap_err();
        assert_eq!(deny.rule, RULE);
        assert!(deny.message.contains("no open ticket"), "{}", deny.message);
        assert!(
            judge(200, br#"{"allowed": false}"#)
                .unwrap_err()
                .message
                .contains("no reason")
        );
        assert!(judge(200, br#"{"allow": true}"#).is_err());
        assert!(judge(200, b"yes").is_err());
        assert!(
            judge(500, br#"{"allowed": true}"#)
                .unwrap_err()
                .message
                .contains("HTTP 500")
        );
        assert!(judge(302, b"").is_err());
    }

    #[test]
    fn the_review_is_the_documented_shape() {
        let review = Review::new(ReviewRequest {
            uid: "u/1".into(),
            server: ObjectName {
                namespace: "vpn".into(),
                name: "corp".into(),
                uid: None,
            },
            approval: ObjectName {
                namespace: "vpn".into(),
                name: "a".into(),
                uid: Some("u".into()),
            },
            form: "preAuthKey",
            user: Some("alice".into()),
            tags: vec![],
            hostname: None,
            pre_auth_key: Some(KeyReview {
                lifetime_seconds: 3600,
                reusable: false,
                ephemeral: true,
            }),
        });
        assert_eq!(
            serde_json::to_value(&review).unwrap(),
            serde_json::json!({
                "apiVersion": "headscale.operator.dev/v1alpha1", "kind": "EnrollmentReview",
                "request": {"uid": "u/1", "server": {"namespace": "vpn", "name": "corp"},
                    "approval": {"namespace": "vpn", "name": "a", "uid": "u"},
                    "form": "preAuthKey", "user": "alice", "tags": [],
                    "preAuthKey": {"lifetimeSeconds": 3600, "reusable": false, "ephemeral": true}}
            })
        );
    }

    #[tokio::test]
    async fn an_unreachable_webhook_denies() {
        let spec = DecisionWebhookSpec {
            url: "https://127.0.0.1:1/decide".into(),
            ca_bundle: None,
            timeout_seconds: 2,
        };
        let v = ask(&spec, &Review::new(ReviewRequest::default()))
            .await
            .unwrap_err();
        assert!(v.message.contains("could not be reached"), "{}", v.message);
        let bad_ca = DecisionWebhookSpec {
            ca_bundle: Some("not a pem".into()),
            ..spec
        };
        let v = ask(&bad_ca, &Review::new(ReviewRequest::default()))
            .await
            .unwrap_err();
        assert!(v.message.contains("caBundle"), "{}", v.message);
    }

    #[tokio::test]
    async fn a_path_or_query_token_is_never_repeated() {
        let spec = DecisionWebhookSpec {
            url: "https://127.0.0.1:1/hooks/pathtoken123?code=querytoken456".into(),
            ca_bundle: None,
            timeout_seconds: 2,
        };
        let v = ask(&spec, &Review::new(ReviewRequest::default()))
            .await
            .unwrap_err();
        assert!(v.message.contains("https://127.0.0.1:1"), "{}", v.message);
        assert!(!v.message.contains("pathtoken123"), "{}", v.message);
        assert!(!v.message.contains("querytoken456"), "{}", v.message);
        assert_eq!(origin("https://h.example:8443/a?b=c"), "https://h.example:8443");
        assert_eq!(origin("not a url"), "(unreadable URL)");
    }

    #[tokio::test]
    async fn credentials_in_the_url_are_refused_and_never_repeated() {
        let spec = DecisionWebhookSpec {
            url: "https://user:s3cretpass@127.0.0.1:1/decide".into(),
            ca_bundle: None,
            timeout_seconds: 2,
        };
        let v = ask(&spec, &Review::new(ReviewRequest::default()))
            .await
            .unwrap_err();
        assert!(v.message.contains("credentials"), "{}", v.message);
        assert!(!v.message.contains("s3cretpass"), "{}", v.message);
    }
}
