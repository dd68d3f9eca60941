//! The transport: one [`Client`] per server, cheap to clone (connection pool, rate
//! limiter and version cache are shared). The calls themselves live in one file per
//! API area (`users.rs`, `nodes.rs`, `keys.rs`, `policy.rs`).
//!
//! - Timeouts on connect and on every request.
//! - Connection reuse (reqwest's pool, kept warm for `max_in_flight` connections).
//! - A bounded request rate ([`Limiter`]): every authenticated request costs the
//!   server a bcrypt comparison.
//! - GETs are retried a bounded number of times on transient errors; POST, PUT and
//!   DELETE never are (a repeated create or expire is not the same as one).
//! - The server's version is read from `/version` before the first authenticated
//!   call and cached; [`Client::supported_version`] refreshes it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::error::{Error, redact};
use super::limiter::Limiter;
use super::models::{Health, ServerKey, VersionInfo};
use super::version::{ApiShape, Version};
use crate::secret::SecretString;

/// The Tailscale capability version `GET /key` is asked with: any noise-era client
/// (28 or later) gets the noise key.
const NOISE_CAPABILITY_VERSION: u32 = 106;

/// How the client treats the server. The defaults suit a controller: a handful of
/// calls per reconcile, at most ~20 authenticated requests per second.
#[derive(Clone)]
pub struct ClientConfig {
    /// Whole request, connect to last body byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Minimum spacing between request starts.
    pub min_interval: Duration,
    /// Extra attempts for a GET that failed transiently.
    pub read_retries: u32,
    /// Wait before the first retry; doubles for each further one.
    pub retry_backoff: Duration,
    /// Told about every request (metrics, benchmarks).
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_in_flight: 2,
            min_interval: Duration::from_millis(50),
            read_retries: 2,
            retry_backoff: Duration::from_millis(250),
            observer: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("min_interval", &self.min_interval)
            .field("read_retries", &self.read_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Where the time of one request attempt went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting for the rate limiter.
    pub queued: Duration,
    /// From handing the request to the connection pool to the last body byte: the
    /// server's time plus the network.
    pub on_wire: Duration,
    /// Everything, including building the request and decoding the answer.
    pub total: Duration,
}

impl Timings {
    /// The client's own share: neither throttled nor waiting for the server.
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.queued + self.on_wire)
    }
}

/// Receives one call per request attempt.
pub trait Observer: Send + Sync {
    /// `outcome` is `Ok(())` or the error's [`Error::reason`].
    fn observe(&self, op: &'static str, outcome: Result<(), &'static str>, timings: Timings);
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    api_key: SecretString,
    limiter: Limiter,
    config: ClientConfig,
    version: RwLock<Option<Version>>,
    /// When a request last failed transiently (unreachable, timeout, 5xx), retried or not.
    last_transient_error: RwLock<Option<jiff::Timestamp>>,
    /// The instance key ([`Client::instance_key`]) and when it was read.
    instance_key: RwLock<Option<(String, jiff::Timestamp)>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// One request, before it is sent. Paths are given as segments so that names and
/// prefixes are escaped.
pub(crate) struct Call {
    op: &'static str,
    method: Method,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    authenticated: bool,
}

impl Call {
    pub(crate) fn new(op: &'static str, method: Method, segments: &[&str]) -> Call {
        Call {
            op,
            method,
            segments: segments.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
            authenticated: true,
        }
    }

    pub(crate) fn get(op: &'static str, segments: &[&str]) -> Call {
        Call::new(op, Method::GET, segments)
    }

    pub(crate) fn post(op: &'static str, segments: &[&str]) -> Call {
        Call::new(op, Method::POST, segments)
    }

    pub(crate) fn query(mut self, key: &'static str, value: impl ToString) -> Call {
        self.query.push((key, value.to_string()));
        self
    }

    /// The JSON body. Serializing our own request types cannot fail; if it ever did
    /// the body would be `null` and the server would say what it misses.
    pub(crate) fn json(mut self, body: &impl Serialize) -> Call {
        self.body = Some(serde_json::to_value(body).unwrap_or(serde_json::Value::Null));
        self
    }

    fn unauthenticated(mut self) -> Call {
        self.authenticated = false;
        self
    }

    #[cfg(test)]
    pub(crate) fn segments(&self) -> &[String] {
        &self.segments
    }

    #[cfg(test)]
    pub(crate) fn query_pairs(&self) -> &[(&'static str, String)] {
        &self.query
    }

    #[cfg(test)]
    pub(crate) fn body_json(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }
}

impl Client {
    /// A client for the server at `base_url` (its `server_url`), authenticating with
    /// `api_key`, with the default [`ClientConfig`].
    pub fn new(base_url: &str, api_key: SecretString) -> Result<Self, Error> {
        Self::with_config(base_url, api_key, ClientConfig::default())
    }

    pub fn with_config(base_url: &str, api_key: SecretString, config: ClientConfig) -> Result<Self, Error> {
        install_crypto_provider();
        let invalid = |reason: String| Error::InvalidUrl {
            url: without_credentials(base_url),
            reason,
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid(
                "the URL must not carry credentials (user:password@); the API key comes from the Secret"
                    .into(),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "the URL must not have a query (?...) or a fragment (#...)".into(),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .tcp_nodelay(true)
            // Never follow redirects: the Authorization header is dropped on the way, so a
            // redirected check could "succeed" without the key ever being verified.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("headscale-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let limiter = Limiter::new(config.max_in_flight, config.min_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                api_key,
                limiter,
                config,
                version: RwLock::new(None),
                last_transient_error: RwLock::new(None),
                instance_key: RwLock::new(None),
            }),
        })
    }

    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    fn url(&self, segments: &[String]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET /version`: what the server says it runs. Unauthenticated.
    pub async fn version(&self) -> Result<VersionInfo, Error> {
        self.call(Call::get("get version", &["version"]).unauthenticated())
            .await
    }

    /// The server's version, refused with [`Error::UnsupportedVersion`] when it is
    /// outside the supported range or not a release version at all. Refreshes the
    /// version the request shapes are chosen by.
    pub async fn supported_version(&self) -> Result<Version, Error> {
        let info = self.version().await?;
        let result = match Version::parse(&info.version) {
            Some(v) if v.is_supported() => Ok(v),
            _ => Err(Error::UnsupportedVersion {
                version: info.version,
                supported: Version::supported_range(),
            }),
        };
        let mut cached = self
            .inner
            .version
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *cached = result.as_ref().ok().cloned();
        result
    }

    /// The cached version and its request shapes; asks `/version` the first time.
    pub async fn api_shape(&self) -> Result<(Version, ApiShape), Error> {
        let cached = self
            .inner
            .version
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let version = match cached {
            Some(v) => v,
            None => self.supported_version().await?,
        };
        let shape = ApiShape::for_version(&version);
        Ok((version, shape))
    }

    /// `GET /key?v=106`: the server's noise public key (`mkey:…`), which identifies the
    /// Headscale instance whatever URL reaches it. Unauthenticated; a capability version
    /// is required (0.27–0.29 answer 400 without one, and nothing below 28, the first
    /// noise version). Cached: it changes only when the server's noise key file does,
    /// so it is read again only after a transient error (a possible restart) since.
    pub async fn instance_key(&self) -> Result<String, Error> {
        let cached = self
            .inner
            .instance_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some((key, read_at)) = cached
            && self.last_transient_error().is_none_or(|t| t < read_at)
        {
            return Ok(key);
        }
        let read_at = jiff::Timestamp::now();
        let answer: ServerKey = self
            .call(
                Call::get("get server key", &["key"])
                    .query("v", NOISE_CAPABILITY_VERSION)
                    .unauthenticated(),
            )
            .await?;
        let key = answer.public_key;
        let valid = key.strip_prefix("mkey:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && hex.bytes().any(|b| b != b'0')
        });
        if !valid {
            return Err(Error::UnexpectedResponse {
                op: "get server key",
                status: 200,
                message: "publicKey is not a machine public key (mkey: and 64 hex digits)".into(),
            });
        }
        *self
            .inner
            .instance_key
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((key.clone(), read_at));
        Ok(key)
    }

    /// `GET /api/v1/health` (authenticated; it also pings the database).
    pub async fn health(&self) -> Result<Health, Error> {
        self.api_shape().await?;
        self.call(Call::get("health", &["api", "v1", "health"])).await
    }

    /// Proves the API key works: [`Client::health`].
    pub async fn check_api_key(&self) -> Result<(), Error> {
        self.api_shape().await?;
        self.call::<Health>(Call::get("check API key", &["api", "v1", "health"]))
            .await
            .map(drop)
    }

    /// When a request of this client last failed transiently (the server unreachable, a
    /// timeout or a 5xx), including failures a retry then hid. A read that succeeded after
    /// such a failure may describe a server that has just restarted.
    pub fn last_transient_error(&self) -> Option<jiff::Timestamp> {
        *self
            .inner
            .last_transient_error
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `call` against `/api/v1/…` (the caller has checked the version). GETs
    /// are retried on transient errors; nothing else is.
    pub(crate) async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, Error> {
        let retries = if call.method == Method::GET {
            self.inner.config.read_retries
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let result = self.attempt(&call).await;
            if let Err(e) = &result
                && e.is_transient()
            {
                *self
                    .inner
                    .last_transient_error
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(jiff::Timestamp::now());
            }
            match result {
                Err(e) if e.is_transient() && attempt < retries => {
                    let wait = self.inner.config.retry_backoff * 2u32.saturating_pow(attempt);
                    tracing::debug!(op = call.op, attempt, error = %e, "retrying a read after a transient error");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt<T: DeserializeOwned>(&self, call: &Call) -> Result<T, Error> {
        let started = Instant::now();
        let permit = self.inner.limiter.acquire().await;
        let queued = started.elapsed();

        let mut request = self
            .inner
            .http
            .request(call.method.clone(), self.url(&call.segments));
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if call.authenticated {
            request = request.bearer_auth(self.inner.api_key.expose());
        }
        let sent = Instant::now();
        let response = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        }
        .await;
        let on_wire = sent.elapsed();
        drop(permit);

        let result = match response {
            Err(e) => Err(self.transport_error(call.op, e)),
            Ok((status, bytes)) if status.is_success() => decode(call.op, status.as_u16(), &bytes),
            Ok((status, bytes)) => Err(Error::from_response(
                call.op,
                status.as_u16(),
                &String::from_utf8_lossy(&bytes),
                &[self.inner.api_key.expose()],
            )),
        };
        if let Some(observer) = &self.inner.config.observer {
            let timings = Timings {
                queued,
                on_wire,
                total: started.elapsed(),
            };
            observer.observe(call.op, result.as_ref().map(drop).map_err(Error::reason), timings);
        }
        result
    }

    fn transport_error(&self, op: &'static str, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout {
                op,
                seconds: self.inner.config.timeout.as_secs_f64(),
            };
        }
        // Without the URL: a registration call carries the auth id in its query.
        let message = error_chain(&e.without_url());
        Error::Unreachable {
            op,
            message: redact(&message, &[self.inner.api_key.expose()]),
        }
    }

    /// The error for a call this server's version does not have; refused before
    /// anything is sent.
    pub(crate) fn unsupported(op: &'static str, version: &Version, needs: &str) -> Error {
        Error::Unsupported {
            op,
            message: format!("{needs}; the server runs Headscale {version}"),
        }
    }
}

/// The body as `T`. The message names the position, never the content: a body can
/// hold a key.
fn decode<T: DeserializeOwned>(op: &'static str, status: u16, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::UnexpectedResponse {
        op,
        status,
        message: format!(
            "the body is not the expected JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

/// The URL for messages, with any `user:password@` removed.
fn without_credentials(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => match url.split_once('@') {
            Some((_, rest)) => format!("[credentials removed]@{rest}"),
            None => url.to_string(),
        },
    }
}

/// reqwest needs a process-wide rustls provider when built without its own; kube
/// uses ring too. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
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
    fn joins_and_escapes_paths_below_a_base_path() {
        let seg = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Client::new("https://example.com/hs", SecretString::new("k")).unwrap();
        assert_eq!(
            c.url(&seg(&["api", "v1", "health"])).as_str(),
            "https://example.com/hs/api/v1/health"
        );
        let c = Client::new("http://127.0.0.1:8080", SecretString::new("k")).unwrap();
        assert_eq!(
            c.url(&seg(&["version"])).as_str(),
            "http://127.0.0.1:8080/version"
        );
        assert_eq!(
            c.url(&seg(&["api", "v1", "node", "1", "rename", "a b/c"]))
                .as_str(),
            "http://127.0.0.1:8080/api/v1/node/1/rename/a%20b%2Fc"
        );
        assert_eq!(
            c.url(&seg(&["api", "v1", "apikey", "hskey-api-abc_DEF-123-***"]))
                .as_str(),
            "http://127.0.0.1:8080/api/v1/apikey/hskey-api-abc_DEF-123-***"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = Client::new("http://127.0.0.1:1", SecretString::new("hskey-api-secretvalue")).unwrap();
        assert!(!format!("{c:?}").contains("secretvalue"));
    }

    #[test]
    fn decode_errors_do_not_quote_the_body() {
        #[derive(serde::Deserialize, Debug)]
        struct Key {
            #[allow(dead_code)]
            key: u64,
        }
        let e = decode::<Key>("op", 200, br#"{"key":"hskey-auth-abcdefghijkl-SECRETSECRET"}"#).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert_eq!(e.reason(), "UnexpectedResponse");
    }

    #[test]
    fn overhead_is_what_is_left() {
        let t = Timings {
            queued: Duration::from_millis(5),
            on_wire: Duration::from_millis(60),
            total: Duration::from_millis(66),
        };
        assert_eq!(t.overhead(), Duration::from_millis(1));
    }
}
