//! What can go wrong talking to Headscale, in terms a controller can act on.
//! No variant ever carries an API key: the key travels only in a request header.

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("{op}: the API key was rejected (401 Unauthorized)")]
    Unauthorized { op: &'static str },

    #[error("{op}: not found: {message}")]
    NotFound { op: &'static str, message: String },

    #[error("{op}: cannot reach the server: {message}")]
    Unreachable { op: &'static str, message: String },

    #[error("{op}: server error {status}: {message}")]
    ServerError {
        op: &'static str,
        status: u16,
        message: String,
    },

    #[error("{op}: unexpected response {status}: {message}")]
    UnexpectedResponse {
        op: &'static str,
        status: u16,
        message: String,
    },

    #[error("Headscale {version} is not supported (supported: {supported})")]
    UnsupportedVersion { version: String, supported: String },
}

impl Error {
    /// Stable PascalCase name for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "InvalidUrl",
            Error::Unauthorized { .. } => "ApiKeyRejected",
            Error::NotFound { .. } => "NotFound",
            Error::Unreachable { .. } => "ServerUnreachable",
            Error::ServerError { .. } => "ServerError",
            Error::UnexpectedResponse { .. } => "UnexpectedResponse",
            Error::UnsupportedVersion { .. } => "UnsupportedVersion",
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing
    /// anything (network trouble, a server restart, a 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::ServerError { .. })
    }
}
