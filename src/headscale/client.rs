//! The HTTP client. One instance per server; cheap to clone (connection pool shared).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::error::Error;
use super::version::Version;
use crate::secret::SecretString;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error body kept for a message; bodies are Headscale's own text, no secrets.
const MAX_BODY_IN_MESSAGE: usize = 512;

/// What `GET /version` reports (unauthenticated, every supported version).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub version: String,
    #[serde(default)]
    pub commit: String,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    api_key: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the server at `base_url` (its `server_url`), authenticating with
    /// `api_key`.
    pub fn new(base_url: &str, api_key: SecretString) -> Result<Self, Error> {
        install_crypto_provider();
        let invalid = |reason: String| Error::InvalidUrl {
            url: base_url.to_string(),
            reason,
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".into()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("headscale-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { http, base, api_key })
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, path: &str) -> Url {
        // `path` is a constant relative path like "api/v1/health"; joining cannot fail
        // on a base that parsed, but fall back to the base rather than panic.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// `GET /version`: what the server says it runs. Unauthenticated.
    pub async fn version(&self) -> Result<VersionInfo, Error> {
        const OP: &str = "get version";
        let resp = self
            .http
            .get(self.url("version"))
            .send()
            .await
            .map_err(|e| transport(OP, e))?;
        let resp = check(OP, resp).await?;
        resp.json::<VersionInfo>()
            .await
            .map_err(|e| Error::UnexpectedResponse {
                op: OP,
                status: 200,
                message: e.to_string(),
            })
    }

    /// The server's version, refused with [`Error::UnsupportedVersion`] when it is
    /// outside the supported range or not a release version at all.
    pub async fn supported_version(&self) -> Result<Version, Error> {
        let info = self.version().await?;
        match Version::parse(&info.version) {
            Some(v) if v.is_supported() => Ok(v),
            _ => Err(Error::UnsupportedVersion {
                version: info.version,
                supported: Version::supported_range(),
            }),
        }
    }

    /// Proves the API key works: `GET /api/v1/health` (authenticated; it also pings
    /// the database).
    pub async fn check_api_key(&self) -> Result<(), Error> {
        const OP: &str = "check API key";
        let resp = self
            .http
            .get(self.url("api/v1/health"))
            .bearer_auth(self.api_key.expose())
            .send()
            .await
            .map_err(|e| transport(OP, e))?;
        check(OP, resp).await.map(drop)
    }
}

/// reqwest needs a process-wide rustls provider when built without its own; kube
/// uses ring too. Installing twice is harmless.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn transport(op: &'static str, e: reqwest::Error) -> Error {
    // reqwest's message names the URL, never headers, so the key cannot leak here.
    Error::Unreachable {
        op,
        message: error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

async fn check(op: &'static str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = summarize_body(&body);
    Err(match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { op },
        StatusCode::NOT_FOUND => Error::NotFound { op, message },
        s if s.is_server_error() => Error::ServerError {
            op,
            status: s.as_u16(),
            message,
        },
        s => Error::UnexpectedResponse {
            op,
            status: s.as_u16(),
            message,
        },
    })
}

/// Headscale's error text from a JSON body (`message`, `detail`) or the raw body,
/// shortened.
fn summarize_body(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "detail", "title"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
        });
    let mut text = from_json.unwrap_or_else(|| body.trim().to_string());
    if text.len() > MAX_BODY_IN_MESSAGE {
        let mut cut = MAX_BODY_IN_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_urls() {
        for url in ["ftp://x", "not a url", "http://", "/relative"] {
            assert!(
                matches!(
                    Client::new(url, SecretString::new("k")),
                    Err(Error::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn joins_paths_below_a_base_path() {
        let c = Client::new("https://example.com/hs", SecretString::new("k")).unwrap();
        assert_eq!(
            c.url("api/v1/health").as_str(),
            "https://example.com/hs/api/v1/health"
        );
        let c = Client::new("http://127.0.0.1:8080", SecretString::new("k")).unwrap();
        assert_eq!(c.url("version").as_str(), "http://127.0.0.1:8080/version");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = Client::new("http://127.0.0.1:1", SecretString::new("hskey-api-secretvalue")).unwrap();
        assert!(!format!("{c:?}").contains("secretvalue"));
    }

    #[test]
    fn error_bodies_are_summarized() {
        assert_eq!(
            summarize_body(r#"{"code":2,"message":"boom","details":[]}"#),
            "boom"
        );
        assert_eq!(
            summarize_body(r#"{"title":"Unauthorized","detail":"nope"}"#),
            "nope"
        );
        assert_eq!(summarize_body("Unauthorized\n"), "Unauthorized");
        assert!(summarize_body(&"x".repeat(2000)).chars().count() <= MAX_BODY_IN_MESSAGE + 1);
    }
}
