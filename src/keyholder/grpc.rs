//! Headscale 0.28 and 0.29 serve gRPC (`headscale.v1.HeadscaleService`) on their unix
//! socket, without authentication. The messages are written by hand from upstream's
//! `proto/headscale/v1/apikey.proto` (identical in v0.28.0 and v0.29.2), so there is no
//! protoc and no generated code; only the three API-key calls the keyholder makes.

use std::path::Path;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tonic::transport::{Channel, Endpoint};

use super::SocketError;
use crate::headscale::{ApiKey, ApiKeyId};
use crate::secret::SecretString;

const SERVICE: &str = "headscale.v1.HeadscaleService";

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ProtoTimestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl From<Timestamp> for ProtoTimestamp {
    fn from(t: Timestamp) -> Self {
        ProtoTimestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }
    }
}

impl ProtoTimestamp {
    /// `None` for the zero time Go sends for an unset `time.Time`, or out of range.
    fn to_timestamp(self) -> Option<Timestamp> {
        Timestamp::new(self.seconds, self.nanos)
            .ok()
            .filter(|t| t.as_second() > 0)
    }
}

/// `headscale.v1.ApiKey`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyMessage {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub prefix: String,
    #[prost(message, optional, tag = "3")]
    pub expiration: Option<ProtoTimestamp>,
    #[prost(message, optional, tag = "4")]
    pub created_at: Option<ProtoTimestamp>,
    #[prost(message, optional, tag = "5")]
    pub last_seen: Option<ProtoTimestamp>,
}

impl From<ApiKeyMessage> for ApiKey {
    fn from(m: ApiKeyMessage) -> Self {
        ApiKey {
            id: ApiKeyId(m.id),
            prefix: m.prefix,
            // A zero or missing expiration is a dead key: `None` reads as expired.
            expiration: m.expiration.and_then(ProtoTimestamp::to_timestamp),
            created_at: m.created_at.and_then(ProtoTimestamp::to_timestamp),
            last_seen: m.last_seen.and_then(ProtoTimestamp::to_timestamp),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateApiKeyRequest {
    #[prost(message, optional, tag = "1")]
    pub expiration: Option<ProtoTimestamp>,
}

/// Carries the full key: its `Debug` redacts.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct CreateApiKeyResponse {
    #[prost(string, tag = "1")]
    pub api_key: String,
}

impl std::fmt::Debug for CreateApiKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CreateApiKeyResponse { api_key: [redacted] }")
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpireApiKeyRequest {
    #[prost(string, tag = "1")]
    pub prefix: String,
    #[prost(uint64, tag = "2")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpireApiKeyResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListApiKeysRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListApiKeysResponse {
    #[prost(message, repeated, tag = "1")]
    pub api_keys: Vec<ApiKeyMessage>,
}

/// One connection to the socket.
pub struct GrpcSocket {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcSocket {
    pub async fn connect(path: &Path, timeout: Duration) -> Result<GrpcSocket, SocketError> {
        let path = path.to_path_buf();
        // The URI only fills `:authority`; the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://headscale.sock")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| SocketError::Connect(error_chain(&e)))?;
        Ok(GrpcSocket {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn unary<Req, Resp>(
        &mut self,
        op: &'static str,
        method: &str,
        req: Req,
    ) -> Result<Resp, SocketError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| SocketError::Connect(error_chain(&e)))?;
        let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}")).map_err(|e| SocketError::Call {
            op,
            message: e.to_string(),
        })?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        self.grpc
            .unary(tonic::Request::new(req), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| SocketError::Call {
                op,
                message: format!("{:?}: {}", status.code(), status.message()),
            })
    }

    pub async fn list_api_keys(&mut self) -> Result<Vec<ApiKey>, SocketError> {
        let out: ListApiKeysResponse = self
            .unary("list API keys", "ListApiKeys", ListApiKeysRequest {})
            .await?;
        Ok(out.api_keys.into_iter().map(ApiKey::from).collect())
    }

    pub async fn create_api_key(&mut self, expiration: Timestamp) -> Result<SecretString, SocketError> {
        let req = CreateApiKeyRequest {
            expiration: Some(expiration.into()),
        };
        let out: CreateApiKeyResponse = self.unary("create API key", "CreateApiKey", req).await?;
        Ok(SecretString::new(out.api_key))
    }

    pub async fn expire_api_key(&mut self, id: ApiKeyId) -> Result<(), SocketError> {
        let req = ExpireApiKeyRequest {
            prefix: String::new(),
            id: id.0,
        };
        let _: ExpireApiKeyResponse = self.unary("expire API key", "ExpireApiKey", req).await?;
        Ok(())
    }
}

/// An error and its sources on one line (tonic's top-level text is just "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn wire_bytes_match_the_proto_field_numbers() {
        // Field 1 (message) holding field 1 (varint) = 1: 0a 02 08 01.
        let create = CreateApiKeyRequest {
            expiration: Some(ProtoTimestamp { seconds: 1, nanos: 0 }),
        };
        assert_eq!(create.encode_to_vec(), [0x0a, 0x02, 0x08, 0x01]);
        // Field 2 (varint) = 5; the empty prefix is not sent.
        let expire = ExpireApiKeyRequest {
            prefix: String::new(),
            id: 5,
        };
        assert_eq!(expire.encode_to_vec(), [0x10, 0x05]);
        assert!(ListApiKeysRequest {}.encode_to_vec().is_empty());
        // Field 1 (string) "k".
        let resp = CreateApiKeyResponse { api_key: "k".into() };
        assert_eq!(resp.encode_to_vec(), [0x0a, 0x01, b'k']);
    }

    #[test]
    fn a_list_round_trips_and_maps_to_the_rest_model() {
        let exp = Timestamp::from_second(1_800_000_000).unwrap();
        let list = ListApiKeysResponse {
            api_keys: vec![
                ApiKeyMessage {
                    id: 7,
                    prefix: "hskey-api-abcdefghijkl-***".into(),
                    expiration: Some(exp.into()),
                    created_at: Some(ProtoTimestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    last_seen: None,
                },
                // A key created without an expiration: Go's zero time.
                ApiKeyMessage {
                    id: 8,
                    prefix: "hskey-api-mnopqrstuvwx-***".into(),
                    expiration: Some(ProtoTimestamp {
                        seconds: -62_135_596_800,
                        nanos: 0,
                    }),
                    created_at: None,
                    last_seen: None,
                },
            ],
        };
        let decoded = ListApiKeysResponse::decode(list.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, list);
        let keys: Vec<ApiKey> = decoded.api_keys.into_iter().map(ApiKey::from).collect();
        assert_eq!(keys[0].id, ApiKeyId(7));
        assert_eq!(keys[0].expiration, Some(exp));
        assert_eq!(keys[0].created_at.unwrap().subsec_nanosecond(), 5);
        assert_eq!(keys[0].last_seen, None);
        assert_eq!(keys[1].expiration, None);
        assert!(keys[1].is_expired(exp));
    }

    #[test]
    fn timestamps_keep_their_nanoseconds() {
        let t = Timestamp::new(1_800_000_000, 123_456_789).unwrap();
        let p = ProtoTimestamp::from(t);
        assert_eq!((p.seconds, p.nanos), (1_800_000_000, 123_456_789));
        let back = ProtoTimestamp::decode(p.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.to_timestamp(), Some(t));
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = GrpcSocket::connect(&dir.path().join("hs.sock"), Duration::from_secs(1))
            .await
            .err()
            .expect("no socket, no connection");
        assert!(matches!(err, SocketError::Connect(_)), "{err}");
        assert!(err.to_string().contains("No such file"), "{err}");
    }

    #[test]
    fn the_created_key_is_not_debug_printed() {
        let resp = CreateApiKeyResponse {
            api_key: "hskey-api-abcdefghijkl-supersecret".into(),
        };
        assert!(!format!("{resp:?}").contains("supersecret"));
    }
}
