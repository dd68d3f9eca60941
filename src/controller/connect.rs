//! Reaching an external HeadscaleServer's API: the key from its Secret and a client
//! for its URL. Every controller that talks to Headscale goes through here, so the
//! key is read one way, never copied, and every request is counted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::server::Outcome;
use crate::api::conditions::reason;
use crate::api::server::ExternalSpec;
use crate::headscale::{self, ClientConfig, Observer, Timings};
use crate::metrics::{HeadscaleCallLabels, Metrics};
use crate::secret::SecretString;

/// The Secret could not be read (the API server failed, not the user).
#[derive(thiserror::Error, Debug)]
#[error("reading Secret {name}: {source}")]
pub struct ReadSecretError {
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The API key of an external server, or the outcome that explains why there is none.
pub async fn api_key(
    client: &kube::Client,
    ns: &str,
    external: &ExternalSpec,
) -> Result<Result<SecretString, Outcome>, ReadSecretError> {
    let secret_ref = &external.api_key_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|source| ReadSecretError {
            name: secret_ref.name.clone(),
            source,
        })?;
    Ok(read_key(secret.as_ref(), &secret_ref.name, &secret_ref.key))
}

/// A client for the external server's URL with `key`; an invalid URL is the user's to fix.
pub fn client(
    external: &ExternalSpec,
    key: SecretString,
    config: ClientConfig,
) -> Result<headscale::Client, Outcome> {
    headscale::Client::with_config(&external.url, key, config)
        .map_err(|e| Outcome::not_ready(reason::INVALID_SPEC, e.to_string(), true))
}

/// The client settings every controller uses: the defaults, with each request
/// counted in `headscale_operator_headscale_requests_total`.
pub fn client_config(metrics: &Arc<Metrics>) -> ClientConfig {
    ClientConfig {
        observer: Some(Arc::new(CountRequests(metrics.clone()))),
        ..ClientConfig::default()
    }
}

struct CountRequests(Arc<Metrics>);

impl Observer for CountRequests {
    fn observe(&self, op: &'static str, outcome: Result<(), &'static str>, _: Timings) {
        self.0
            .headscale_requests
            .get_or_create(&HeadscaleCallLabels {
                op: op.to_string(),
                result: outcome.err().unwrap_or("ok").to_string(),
            })
            .inc();
    }
}

/// The API key from a Secret, or the outcome that explains why there is none.
/// The outcome's message names the Secret and key, never the value.
pub fn read_key(secret: Option<&Secret>, name: &str, key: &str) -> Result<SecretString, Outcome> {
    let Some(secret) = secret else {
        return Err(Outcome::not_ready(
            reason::SECRET_NOT_FOUND,
            format!("Secret {name:?} (spec.external.apiKeySecretRef) does not exist"),
            true,
        ));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        });
    let missing = |why: &str| {
        Outcome::not_ready(
            reason::SECRET_KEY_MISSING,
            format!("Secret {name:?} key {key:?} {why}"),
            true,
        )
    };
    let bytes = bytes.ok_or_else(|| missing("does not exist"))?;
    let text = String::from_utf8(bytes).map_err(|_| missing("is not valid UTF-8"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(missing("is empty"));
    }
    Ok(SecretString::new(trimmed))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn read_key_explains_every_failure_without_the_value() {
        assert!(matches!(
            read_key(None, "s", "api-key"),
            Err(Outcome::NotReady {
                reason: "SecretNotFound",
                ..
            })
        ));
        let mut secret = Secret::default();
        assert!(matches!(
            read_key(Some(&secret), "s", "api-key"),
            Err(Outcome::NotReady {
                reason: "SecretKeyMissing",
                ..
            })
        ));
        secret.data = Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(b"  \n".to_vec()),
        )]));
        assert!(matches!(
            read_key(Some(&secret), "s", "api-key"),
            Err(Outcome::NotReady {
                reason: "SecretKeyMissing",
                ..
            })
        ));
        secret.data = Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(vec![0xff, 0xfe]),
        )]));
        assert!(read_key(Some(&secret), "s", "api-key").is_err());
        secret.data = Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(b"hskey-api-x\n".to_vec()),
        )]));
        assert_eq!(
            read_key(Some(&secret), "s", "api-key").unwrap().expose(),
            "hskey-api-x"
        );
    }

    #[test]
    fn requests_are_counted_by_call_and_result() {
        let metrics = Metrics::new();
        let config = client_config(&metrics);
        let observer = config.observer.unwrap();
        observer.observe("get policy", Ok(()), Timings::default());
        observer.observe("get policy", Err("ServerUnreachable"), Timings::default());
        observer.observe("get policy", Ok(()), Timings::default());
        let text = metrics.encode();
        assert!(
            text.contains(r#"headscale_operator_headscale_requests_total{op="get policy",result="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"headscale_operator_headscale_requests_total{op="get policy",result="ServerUnreachable"} 1"#
            ),
            "{text}"
        );
    }
}
