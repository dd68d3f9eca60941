//! Reaching a HeadscaleServer's API: the key from its Secret and a client for its URL
//! (external: the spec's; managed: the Secret the keyholder fills and the endpoint the
//! server controller verified). Every controller that talks to Headscale goes through here, so the
//! key is read one way, never copied, and every request is counted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::server::Outcome;
use crate::api::HeadscaleServer;
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

/// Where a server's API is and which Secret key holds the key for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub url: String,
    pub secret: String,
    pub key: String,
    /// Where the Secret comes from, for messages.
    pub field: &'static str,
}

impl Access {
    pub fn external(e: &ExternalSpec) -> Self {
        Self {
            url: e.url.clone(),
            secret: e.api_key_secret_ref.name.clone(),
            key: e.api_key_secret_ref.key.clone(),
            field: "spec.external.apiKeySecretRef",
        }
    }

    /// External: from the spec. Managed: the endpoint in status (the one the server
    /// controller verified) and the Secret the keyholder sidecar fills.
    pub fn of(hs: &HeadscaleServer) -> Option<Self> {
        if let Some(e) = &hs.spec.external {
            return Some(Self::external(e));
        }
        hs.spec.managed.as_ref()?;
        let url = hs.status.as_ref()?.endpoint.clone()?;
        Some(Self {
            url,
            secret: super::managed::build::Names::of(&hs.name_any()).api_key_secret,
            key: super::managed::API_KEY_DATA.to_string(),
            field: "the operator's API key Secret",
        })
    }
}

/// The API key of a server, or the outcome that explains why there is none.
pub async fn api_key(
    client: &kube::Client,
    ns: &str,
    access: &Access,
) -> Result<Result<SecretString, Outcome>, ReadSecretError> {
    let secret_ref = access;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match secrets.get_opt(&secret_ref.secret).await {
        Ok(secret) => secret,
        // The API server answered and refused (RBAC, a bad name): the user can see why.
        Err(kube::Error::Api(status)) => {
            return Ok(Err(Outcome::not_ready(
                reason::SECRET_READ_FAILED,
                format!(
                    "cannot read Secret {:?}: {} ({})",
                    secret_ref.secret, status.message, status.reason
                ),
                false,
            )));
        }
        Err(source) => {
            return Err(ReadSecretError {
                name: secret_ref.secret.clone(),
                source,
            });
        }
    };
    read_key(secret.as_ref(), &secret_ref.secret, &secret_ref.key)
        .map(Ok)
        .or_else(|o| {
            Ok(Err(match o {
                Outcome::NotReady {
                    reason: r @ reason::SECRET_NOT_FOUND,
                    stalled,
                    ..
                } => Outcome::not_ready(
                    r,
                    format!("Secret {:?} ({}) does not exist", access.secret, access.field),
                    stalled,
                ),
                other => other,
            }))
        })
}

/// A client for the server's URL with `key`; an invalid URL is the user's to fix.
pub fn client(
    access: &Access,
    key: SecretString,
    config: ClientConfig,
) -> Result<headscale::Client, Outcome> {
    headscale::Client::with_config(&access.url, key, config)
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
    let value = read_value(secret, name, key)?;
    // An API key travels in an HTTP header: only visible ASCII can go there. Saying so
    // beats a transport error that looks like an outage.
    if !value.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Outcome::not_ready(
            reason::SECRET_KEY_INVALID,
            format!(
                "Secret {name:?} key {key:?} holds characters an API key cannot have (spaces, control characters or \
                 non-ASCII)"
            ),
            true,
        ));
    }
    Ok(value)
}

/// A Secret's value, trimmed, or the outcome that explains why there is none (missing,
/// empty, not UTF-8). What the value may hold is the caller's rule. The outcome's
/// message names the Secret and key, never the value.
pub fn read_value(secret: Option<&Secret>, name: &str, key: &str) -> Result<SecretString, Outcome> {
    let Some(secret) = secret else {
        return Err(Outcome::not_ready(
            reason::SECRET_NOT_FOUND,
            format!("Secret {name:?} does not exist"),
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
    let bytes = bytes.ok_or_else(|| {
        let mut present: Vec<&str> = secret
            .data
            .iter()
            .flat_map(|d| d.keys())
            .map(String::as_str)
            .collect();
        present.extend(
            secret
                .string_data
                .iter()
                .flat_map(|d| d.keys())
                .map(String::as_str),
        );
        if present.is_empty() {
            missing("does not exist (the Secret has no keys)")
        } else {
            missing(&format!(
                "does not exist (the Secret has: {})",
                present.join(", ")
            ))
        }
    })?;
    let invalid = |why: &str| {
        Outcome::not_ready(
            reason::SECRET_KEY_INVALID,
            format!("Secret {name:?} key {key:?} {why}"),
            true,
        )
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("is not valid UTF-8"))?;
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

    #[test]
    fn keys_that_cannot_travel_in_a_header_are_invalid_not_an_outage() {
        let secret_with = |bytes: &[u8]| Secret {
            data: Some(BTreeMap::from([(
                "api-key".to_string(),
                ByteString(bytes.to_vec()),
            )])),
            ..Secret::default()
        };
        for bad in [
            &b"abc\r\nX-Evil: 1"[..],
            b"two words",
            b"caf\xc3\xa9",
            &[0xff, 0xfe],
        ] {
            match read_key(Some(&secret_with(bad)), "s", "api-key") {
                Err(Outcome::NotReady {
                    reason,
                    stalled,
                    message,
                    ..
                }) => {
                    assert_eq!(reason, "SecretKeyInvalid", "{bad:?}");
                    assert!(stalled, "{bad:?}: the user must fix it");
                    assert!(!message.contains("Evil"), "the value leaked: {message}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let other_keys = Secret {
            data: Some(BTreeMap::from([("token".to_string(), ByteString(b"x".to_vec()))])),
            ..Secret::default()
        };
        match read_key(Some(&other_keys), "s", "api-key") {
            Err(Outcome::NotReady {
                reason: "SecretKeyMissing",
                message,
                ..
            }) => {
                assert!(message.contains("the Secret has: token"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
