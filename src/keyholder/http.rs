//! Headscale 0.30 (upstream HEAD, unreleased) serves plain HTTP/1.1 on its unix
//! socket, the same `/api/v1` as its TCP listener, without authentication. No 0.30
//! release exists to test against: the request and response handling here is
//! unit-tested, over a real unix socket, against canned answers in 0.30's shapes
//! (upstream `hscontrol/api/v1/apikeys.go` and its golden files).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde::de::DeserializeOwned;

use super::SocketError;
use crate::headscale::models::{ApiKeysEnvelope, Empty, ExpirationBody, NewApiKeyEnvelope};
use crate::headscale::{ApiKey, ApiKeyId};
use crate::secret::SecretString;

/// Longest response body read (a list of API keys is small).
const MAX_BODY: usize = 1 << 20;

pub struct HttpSocket {
    path: PathBuf,
    timeout: Duration,
}

impl HttpSocket {
    pub fn new(path: &Path, timeout: Duration) -> HttpSocket {
        HttpSocket {
            path: path.to_path_buf(),
            timeout,
        }
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, SocketError> {
        const OP: &str = "list API keys";
        let (status, body) = self.send(OP, list_request()).await?;
        let out: ApiKeysEnvelope = parse(OP, status, &body)?;
        Ok(out.api_keys)
    }

    pub async fn create_api_key(&self, expiration: Timestamp) -> Result<SecretString, SocketError> {
        const OP: &str = "create API key";
        let (status, body) = self.send(OP, create_request(expiration)).await?;
        let out: NewApiKeyEnvelope = parse(OP, status, &body)?;
        Ok(out.api_key)
    }

    pub async fn expire_api_key(&self, id: ApiKeyId) -> Result<(), SocketError> {
        const OP: &str = "expire API key";
        let (status, body) = self.send(OP, expire_request(id)).await?;
        parse::<Empty>(OP, status, &body).map(drop)
    }

    /// One request on a fresh connection.
    async fn send(
        &self,
        op: &'static str,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), SocketError> {
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|e| SocketError::Connect(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| SocketError::Connect(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let call_err = |e: &dyn std::fmt::Display| SocketError::Call {
                op,
                message: e.to_string(),
            };
            let resp = sender.send_request(req).await.map_err(|e| call_err(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| call_err(&e))?
                .to_bytes();
            conn.abort();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SocketError::Call {
                op,
                message: format!("no answer within {:?}", self.timeout),
            })?
    }
}

fn request(method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        // HTTP/1.1 needs a Host; the socket has no name, any value does.
        .header(header::HOST, "localhost")
        .header(header::ACCEPT, "application/json");
    let req = match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body))),
        None => builder.body(Full::new(Bytes::new())),
    };
    // Static method, path and headers: cannot fail.
    req.unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

fn list_request() -> Request<Full<Bytes>> {
    request(Method::GET, "/api/v1/apikey", None)
}

/// Always with an expiration: without one 0.30 stores the zero time (a dead key).
fn create_request(expiration: Timestamp) -> Request<Full<Bytes>> {
    let body = serde_json::to_vec(&ExpirationBody { expiration }).unwrap_or_default();
    request(Method::POST, "/api/v1/apikey", Some(body))
}

/// 0.30 rejects unknown keys and wants the uint64 id as a string.
fn expire_request(id: ApiKeyId) -> Request<Full<Bytes>> {
    let body = serde_json::json!({ "id": id.to_string() });
    request(
        Method::POST,
        "/api/v1/apikey/expire",
        Some(body.to_string().into_bytes()),
    )
}

/// A 2xx body as `T`; anything else an error with 0.30's problem+json `detail`.
fn parse<T: DeserializeOwned>(op: &'static str, status: StatusCode, body: &[u8]) -> Result<T, SocketError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| SocketError::Call {
            op,
            message: format!("unexpected answer ({e})"),
        });
    }
    #[derive(serde::Deserialize)]
    struct Problem {
        #[serde(default)]
        title: String,
        #[serde(default)]
        detail: String,
    }
    let reason = match serde_json::from_slice::<Problem>(body) {
        Ok(p) if !p.detail.is_empty() => p.detail,
        Ok(p) if !p.title.is_empty() => p.title,
        _ => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    };
    Err(SocketError::Call {
        op,
        message: format!("HTTP {}: {reason}", status.as_u16()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn body_of(req: Request<Full<Bytes>>) -> String {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn request_shapes() {
        let req = list_request();
        assert_eq!((req.method(), req.uri().path()), (&Method::GET, "/api/v1/apikey"));
        assert_eq!(req.headers()[header::HOST], "localhost");

        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let req = create_request(t);
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::POST, "/api/v1/apikey")
        );
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(body_of(req).await, r#"{"expiration":"2027-01-15T08:00:00Z"}"#);

        let req = expire_request(ApiKeyId(12));
        assert_eq!(req.uri().path(), "/api/v1/apikey/expire");
        assert_eq!(body_of(req).await, r#"{"id":"12"}"#);
    }

    #[test]
    fn response_shapes() {
        // 0.30's list: string ids, null timestamps (upstream golden files).
        let list = br#"{"apiKeys":[{"createdAt":"2026-07-21T10:00:00Z","expiration":"2026-10-19T10:00:00Z","id":"1","lastSeen":null,"prefix":"hskey-api-abcdefghijkl-***"},{"createdAt":"2026-07-21T10:00:00Z","expiration":null,"id":"2","lastSeen":null,"prefix":"hskey-api-mnopqrstuvwx-***"}]}"#;
        let out: ApiKeysEnvelope = parse("list", StatusCode::OK, list).unwrap();
        assert_eq!(out.api_keys.len(), 2);
        assert_eq!(out.api_keys[0].id, ApiKeyId(1));
        assert_eq!(out.api_keys[0].prefix, "hskey-api-abcdefghijkl-***");
        assert!(out.api_keys[0].expiration.is_some());
        assert_eq!(out.api_keys[1].expiration, None);

        let created: NewApiKeyEnvelope = parse(
            "create",
            StatusCode::OK,
            br#"{"apiKey":"hskey-api-abcdefghijkl-secret"}"#,
        )
        .unwrap();
        assert_eq!(created.api_key.expose(), "hskey-api-abcdefghijkl-secret");

        parse::<Empty>("expire", StatusCode::OK, b"{}").unwrap();
    }

    #[test]
    fn errors_carry_the_problem_detail() {
        let problem = br#"{"title":"Not Found","status":404,"detail":"api key not found"}"#;
        let err = parse::<Empty>("expire API key", StatusCode::NOT_FOUND, problem)
            .err()
            .expect("an error");
        assert_eq!(
            err.to_string(),
            "expire API key over the socket: HTTP 404: api key not found"
        );
        let err = parse::<Empty>(
            "x",
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"title":"Unprocessable Entity"}"#,
        )
        .err()
        .expect("an error");
        assert!(
            err.to_string().ends_with("HTTP 422: Unprocessable Entity"),
            "{err}"
        );
        let err = parse::<Empty>("x", StatusCode::BAD_GATEWAY, b"plain text")
            .err()
            .expect("an error");
        assert!(err.to_string().ends_with("HTTP 502: plain text"), "{err}");
        // A gRPC server's binary answer is not JSON.
        let err = parse::<ApiKeysEnvelope>("list", StatusCode::OK, b"\x00\x00")
            .err()
            .expect("an error");
        assert!(err.to_string().contains("unexpected answer"), "{err}");
    }

    /// The whole exchange over a real unix socket: what bytes go out, and that the
    /// answer is read. The answering side is canned (no 0.30 release to run).
    #[tokio::test]
    async fn one_exchange_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hs.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the JSON body has arrived.
            while !seen.ends_with(b"}") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            let answer = r#"{"apiKey":"hskey-api-abcdefghijkl-0123456789"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            conn.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        let socket = HttpSocket::new(&path, Duration::from_secs(5));
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let key = socket.create_api_key(t).await.unwrap();
        assert_eq!(key.expose(), "hskey-api-abcdefghijkl-0123456789");
        let sent = server.await.unwrap().to_lowercase();
        assert!(sent.starts_with("post /api/v1/apikey http/1.1\r\n"), "{sent}");
        assert!(sent.contains("host: localhost\r\n"), "{sent}");
        assert!(sent.contains("content-length: 37\r\n"), "{sent}");
        assert!(
            sent.ends_with(r#"{"expiration":"2027-01-15t08:00:00z"}"#),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let socket = HttpSocket::new(Path::new("/nonexistent/hs.sock"), Duration::from_secs(1));
        assert!(matches!(
            socket.list_api_keys().await,
            Err(SocketError::Connect(_))
        ));
    }
}
