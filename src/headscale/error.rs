//! What can go wrong talking to Headscale, in terms a controller can act on, and the
//! classifier that turns an HTTP status and body into one of them.
//!
//! No variant ever carries an API key or a pre-auth key: keys travel only in a header
//! or a request body, and every message taken from a response goes through
//! [`redact`] first.

/// Longest server message kept in an error.
const MAX_MESSAGE: usize = 512;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("{op}: the API key was rejected (401 Unauthorized)")]
    Unauthorized { op: &'static str },

    #[error("{op}: not found: {message}")]
    NotFound { op: &'static str, message: String },

    #[error("{op}: conflict: {message}")]
    Conflict { op: &'static str, message: String },

    #[error("{op}: invalid input: {message}")]
    InvalidInput { op: &'static str, message: String },

    #[error("{op}: policy rejected: {message}")]
    PolicyRejected { op: &'static str, message: String },

    #[error("{op}: not supported: {message}")]
    Unsupported { op: &'static str, message: String },

    #[error("{op}: cannot reach the server: {message}")]
    Unreachable { op: &'static str, message: String },

    #[error("{op}: no answer within {seconds:.1}s")]
    Timeout { op: &'static str, seconds: f64 },

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
            Error::Conflict { .. } => "Conflict",
            Error::InvalidInput { .. } => "InvalidInput",
            Error::PolicyRejected { .. } => "PolicyRejected",
            Error::Unsupported { .. } => "UnsupportedOperation",
            Error::Unreachable { .. } => "ServerUnreachable",
            Error::Timeout { .. } => "Timeout",
            Error::ServerError { .. } => "ServerError",
            Error::UnexpectedResponse { .. } => "UnexpectedResponse",
            Error::UnsupportedVersion { .. } => "UnsupportedVersion",
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing
    /// anything (network trouble, a timeout, a server restart, a 5xx that is not an
    /// ordinary error in disguise).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::ServerError { .. }
        )
    }

    /// The error for a non-2xx response to `op`. `secrets` are values that must not
    /// appear in the message even if the server echoed them.
    pub fn from_response(op: &'static str, status: u16, body: &str, secrets: &[&str]) -> Error {
        let parsed = ErrorBody::parse(body);
        let message = redact(&parsed.message, secrets);
        match classify(status, &parsed) {
            Kind::Unauthorized => Error::Unauthorized { op },
            Kind::NotFound => Error::NotFound { op, message },
            Kind::Conflict => Error::Conflict { op, message },
            Kind::InvalidInput => Error::InvalidInput { op, message },
            Kind::PolicyRejected => Error::PolicyRejected { op, message },
            Kind::Unsupported => Error::Unsupported { op, message },
            Kind::Transient => Error::ServerError { op, status, message },
            Kind::Unexpected => Error::UnexpectedResponse { op, status, message },
        }
    }

    /// Turns a rejected input into a rejected policy: for the policy calls, a 400 is
    /// always Headscale's verdict on the policy text.
    pub(crate) fn into_policy_rejection(self) -> Error {
        match self {
            Error::InvalidInput { op, message } => Error::PolicyRejected { op, message },
            other => other,
        }
    }
}

/// What a failed response means, before it becomes an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unauthorized,
    NotFound,
    Conflict,
    InvalidInput,
    PolicyRejected,
    Unsupported,
    Transient,
    Unexpected,
}

/// The parts of an error body every version agrees on.
///
/// - 0.27–0.29 (grpc-gateway): `{"code": <grpc code>, "message": "...", "details": []}`.
/// - 0.30 (Huma): `application/problem+json` `{"title","status","detail","errors":[{"message"}]}`.
/// - 401 on every version: plain text `Unauthorized`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub grpc_code: Option<i64>,
    pub message: String,
}

impl ErrorBody {
    pub fn parse(body: &str) -> ErrorBody {
        let json = serde_json::from_str::<serde_json::Value>(body).ok();
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|m| m.as_str()).map(str::to_string);
        let (grpc_code, message) = match &json {
            Some(v) if v.is_object() => {
                let code = v.get("code").and_then(|c| c.as_i64());
                // Huma puts the context in `detail` and the cause in `errors[].message`.
                let details: Vec<String> = v
                    .get("errors")
                    .and_then(|e| e.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|e| text(e, "message"))
                    .collect();
                let head = text(v, "message")
                    .or_else(|| text(v, "detail"))
                    .or_else(|| text(v, "title"));
                let message = match (head, details.is_empty()) {
                    (Some(h), true) => h,
                    (Some(h), false) => format!("{h}: {}", details.join("; ")),
                    (None, false) => details.join("; "),
                    (None, true) => body.trim().to_string(),
                };
                (code, message)
            }
            _ => (None, body.trim().to_string()),
        };
        ErrorBody {
            grpc_code,
            message: shorten(message),
        }
    }
}

/// Message fragments (lower case) that identify an ordinary error whatever the HTTP
/// status, first match wins. 0.27–0.29 return most of these as HTTP 500 with gRPC
/// code 2 (Unknown) or 13 (Internal); 0.30 returns real 4xx codes. Every entry was
/// seen on a real server (see `tests/headscale_client.rs`) or is quoted from the
/// reference. Order matters: a policy error may mention "not found".
const MESSAGE_RULES: &[(&str, Kind)] = &[
    // PUT /policy: "setting policy: parsing policy: unknown field ...",
    // "setting policy: test(s) failed: ..."; file mode: "update is disabled for modes
    // other than 'database'".
    ("setting policy", Kind::PolicyRejected),
    ("parsing policy", Kind::PolicyRejected),
    ("test(s) failed", Kind::PolicyRejected),
    ("update is disabled for modes other than", Kind::PolicyRejected),
    // "UNIQUE constraint failed: users.name", deleting a user that owns nodes
    // ("user not empty: node(s) found"), a used single-use key.
    ("unique constraint", Kind::Conflict),
    ("already exists", Kind::Conflict),
    ("user not empty", Kind::Conflict),
    ("still has nodes", Kind::Conflict),
    ("has been used", Kind::Conflict),
    ("already in use", Kind::Conflict),
    // "user not found", "record not found", "node not found", "AuthKey not found",
    // "node not found in registration cache", "acl policy not found",
    // "node no longer exists in NodeStore: 9".
    ("not found", Kind::NotFound),
    ("no longer exists", Kind::NotFound),
    ("registration expired", Kind::NotFound),
    // Input the server refused: tag syntax, route syntax, node names, auth id
    // format, pre-auth key without user or tags, contradictory parameters.
    ("must start with the string 'tag:'", Kind::InvalidInput),
    ("are invalid or not permitted", Kind::InvalidInput),
    ("cannot remove all tags", Kind::InvalidInput),
    ("parsing route", Kind::InvalidInput),
    ("not a valid dns label", Kind::InvalidInput),
    ("invalid characters", Kind::InvalidInput),
    ("is too short", Kind::InvalidInput),
    ("is too long", Kind::InvalidInput),
    ("registration id must be", Kind::InvalidInput),
    ("auth id has invalid prefix", Kind::InvalidInput),
    // "auth ID has invalid length: expected 38, got 35" (0.29).
    ("auth id has invalid length", Kind::InvalidInput),
    ("either tagged or owned by user", Kind::InvalidInput),
    ("cannot set both", Kind::InvalidInput),
    ("provide either id or prefix", Kind::InvalidInput),
    ("must provide id or prefix", Kind::InvalidInput),
    ("invalid character", Kind::InvalidInput),
];

/// Classifies a failed response. Pure; the table tests below pin it.
///
/// Order: 401; then the message rules (they make 0.29's HTTP 500 for ordinary errors
/// mean the same as 0.30's 4xx); then the gRPC code; then the HTTP status. A 5xx that
/// matches nothing is transient.
pub fn classify(status: u16, body: &ErrorBody) -> Kind {
    if status == 401 {
        return Kind::Unauthorized;
    }
    let lower = body.message.to_lowercase();
    if let Some((_, kind)) = MESSAGE_RULES.iter().find(|(needle, _)| lower.contains(needle)) {
        return *kind;
    }
    match body.grpc_code {
        Some(3) | Some(11) => return Kind::InvalidInput, // InvalidArgument, OutOfRange
        Some(5) => return Kind::NotFound,
        Some(6) | Some(9) | Some(10) => return Kind::Conflict, // AlreadyExists, FailedPrecondition, Aborted
        Some(12) => return Kind::Unsupported,                  // Unimplemented
        Some(16) => return Kind::Unauthorized,
        Some(4) | Some(8) | Some(14) => return Kind::Transient, // Deadline, Exhausted, Unavailable
        _ => {}
    }
    match status {
        400 | 422 => Kind::InvalidInput,
        403 => Kind::Unauthorized,
        404 => Kind::NotFound,
        409 | 412 => Kind::Conflict,
        405 | 501 => Kind::Unsupported,
        408 | 429 => Kind::Transient,
        s if s >= 500 => Kind::Transient,
        _ => Kind::Unexpected,
    }
}

/// Replaces anything that looks like a Headscale secret, and each of `secrets`, with
/// a masked form. Headscale's error messages do not echo keys today; this keeps it so
/// should one ever do.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s, "[redacted]");
    }
    // hskey-api-<prefix>-<secret>, hskey-auth-<prefix>-<secret>, hskey-client-…:
    // keep the kind and the 12-character public prefix, drop the rest.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.find("hskey-") {
        result.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        let token = &tail[..end];
        let mut parts = token.splitn(3, '-');
        let (_, kind) = (parts.next(), parts.next().unwrap_or(""));
        let remainder = parts.next().unwrap_or("");
        let keep = matches!(kind, "api" | "auth" | "client") && remainder.len() > 13;
        if keep {
            result.push_str(&format!("hskey-{kind}-{}-***", &remainder[..12]));
        } else {
            result.push_str(token);
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

fn shorten(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
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

    /// Real bodies, as served by v0.27.1, v0.28.0 and v0.29.2 (observed through the
    /// contract tests), and 0.30's problem+json shapes from the reference.
    #[test]
    fn classifies_real_error_bodies() {
        use Kind::*;
        let table: &[(u16, &str, Kind)] = &[
            (401, "Unauthorized", Unauthorized),
            (
                401,
                r#"{"title":"Unauthorized","status":401,"detail":"Unauthorized"}"#,
                Unauthorized,
            ),
            // 0.27–0.29: ordinary errors as HTTP 500.
            (
                500,
                r#"{"code":2,"message":"user not found","details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2,"message":"record not found","details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2, "message":"AuthKey not found", "details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2,"message":"node not found in registration cache","details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2,"message":"node no longer exists in NodeStore: 999","details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2, "message":"node not found in NodeStore: 99", "details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":2,"message":"loading ACL from database: acl policy not found","details":[]}"#,
                NotFound,
            ),
            (
                500,
                r#"{"code":13,"message":"creating user: creating user: constraint failed: UNIQUE constraint failed: users.name (2067)","details":[]}"#,
                Conflict,
            ),
            (
                500,
                r#"{"code":2,"message":"user not empty: node(s) found","details":[]}"#,
                Conflict,
            ),
            (
                500,
                r#"{"code":2,"message":"setting policy: parsing policy: unknown field: \"bogus\"","details":[]}"#,
                PolicyRejected,
            ),
            (
                500,
                r#"{"code":2,"message":"setting policy: test(s) failed:\nalice@: source \"alice@\" resolved to no IP addresses","details":[]}"#,
                PolicyRejected,
            ),
            (
                500,
                r#"{"code":2,"message":"update is disabled for modes other than 'database'","details":[]}"#,
                PolicyRejected,
            ),
            (
                500,
                r#"{"code":2,"message":"tag must start with the string 'tag:'","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"parsing route: netip.ParsePrefix(\"bogus\"): no '/'","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"renaming node: \"bad name\" is not a valid DNS label: contains invalid character ' '","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"renaming node: hostname \"x\" is too short, must be at least 2 characters","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"registration ID must be 24 characters long","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"auth ID has invalid prefix: expected prefix \"hskey-authreq-\"","details":[]}"#,
                InvalidInput,
            ),
            (
                500,
                r#"{"code":2,"message":"auth-key must be either tagged or owned by user","details":[]}"#,
                InvalidInput,
            ),
            // Real 4xx on every version.
            (
                400,
                r#"{"code":3,"message":"requested tags [tag:web] are invalid or not permitted","details":[]}"#,
                InvalidInput,
            ),
            (
                400,
                r#"{"code":3,"message":"cannot remove all tags from a node - tagged nodes must have at least one tag","details":[]}"#,
                InvalidInput,
            ),
            (
                400,
                r#"{"code":3,"message":"cannot set both disable_expiry and expiry","details":[]}"#,
                InvalidInput,
            ),
            (
                400,
                r#"{"code":3,"message":"parsing policy: unknown field: \"bogus\"","details":[]}"#,
                PolicyRejected,
            ),
            (
                400,
                r#"{"code":3,"message":"invalid character 'o' in literal null (expecting 'u')","details":[]}"#,
                InvalidInput,
            ),
            (
                400,
                r#"{"code":3,"message":"must provide id or prefix","details":[]}"#,
                InvalidInput,
            ),
            (
                404,
                r#"{"code":5,"message":"node not found","details":[]}"#,
                NotFound,
            ),
            // A route the version does not have (policy/check on 0.28, auth/* on 0.28).
            (404, r#"{"code":5,"message":"Not Found","details":[]}"#, NotFound),
            // DELETE /preauthkey on 0.27.
            (
                501,
                r#"{"code":12, "message":"Method Not Allowed", "details":[]}"#,
                Unsupported,
            ),
            // 0.30 (Huma problem+json).
            (
                409,
                r#"{"title":"Conflict","status":409,"detail":"creating user","errors":[{"message":"user already exists"}]}"#,
                Conflict,
            ),
            (
                400,
                r#"{"title":"Bad Request","status":400,"detail":"setting policy","errors":[{"message":"parsing policy: unknown field: \"x\""}]}"#,
                PolicyRejected,
            ),
            (
                400,
                r#"{"title":"Bad Request","status":400,"detail":"deleting user","errors":[{"message":"user still has nodes"}]}"#,
                Conflict,
            ),
            (
                422,
                r#"{"title":"Unprocessable Entity","status":422,"detail":"validation failed","errors":[{"message":"unexpected property","location":"body.user_id"}]}"#,
                InvalidInput,
            ),
            (
                404,
                r#"{"title":"Not Found","status":404,"detail":"node not found"}"#,
                NotFound,
            ),
            // Genuine trouble stays transient.
            (
                500,
                r#"{"code":2,"message":"database is locked","details":[]}"#,
                Transient,
            ),
            (
                503,
                r#"{"title":"Service Unavailable","status":503,"detail":"pending auth capacity"}"#,
                Transient,
            ),
            (502, "<html>bad gateway</html>", Transient),
            (500, "", Transient),
            (429, "slow down", Transient),
            (418, "teapot", Unexpected),
        ];
        for (status, body, want) in table {
            assert_eq!(
                classify(*status, &ErrorBody::parse(body)),
                *want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn error_bodies_are_summarized() {
        let table = [
            (r#"{"code":2,"message":"boom","details":[]}"#, "boom"),
            (r#"{"title":"Unauthorized","detail":"nope"}"#, "nope"),
            (
                r#"{"title":"Bad Request","detail":"setting policy","errors":[{"message":"a"},{"message":"b"}]}"#,
                "setting policy: a; b",
            ),
            ("Unauthorized\n", "Unauthorized"),
            ("[1,2]", "[1,2]"),
        ];
        for (body, want) in table {
            assert_eq!(ErrorBody::parse(body).message, want, "{body}");
        }
        assert_eq!(ErrorBody::parse(r#"{"code":5,"message":"x"}"#).grpc_code, Some(5));
        assert!(ErrorBody::parse(&"x".repeat(2000)).message.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn transient_and_reason_per_variant() {
        let e = Error::from_response("op", 500, r#"{"code":2,"message":"user not found"}"#, &[]);
        assert_eq!((e.reason(), e.is_transient()), ("NotFound", false));
        let e = Error::from_response("op", 500, r#"{"code":2,"message":"database is locked"}"#, &[]);
        assert_eq!((e.reason(), e.is_transient()), ("ServerError", true));
        let e = Error::Timeout {
            op: "op",
            seconds: 1.0,
        };
        assert_eq!((e.reason(), e.is_transient()), ("Timeout", true));
        let e = Error::from_response("op", 401, "Unauthorized", &[]);
        assert_eq!((e.reason(), e.is_transient()), ("ApiKeyRejected", false));
    }

    #[test]
    fn messages_never_carry_keys() {
        let api = "hskey-api-K76_SfXB8rx0-a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6abcd";
        let auth = "hskey-auth-1yci6UZA_8E--kkDEjI7ELn1JJ0ZwSazkZpLj-agJu-OO9r4fRKddtBw7HHWmeUcamgk5hSniVL8e";
        let legacy = "dvZhCNN.i5v-9XwQgpCsSECRETSECRET";
        let body = format!(r#"{{"code":2,"message":"bad key {api} or {auth} or {legacy}"}}"#);
        let e = Error::from_response("op", 500, &body, &[legacy]);
        let text = e.to_string();
        assert!(!text.contains("a1b2c3d4e5f6"), "{text}");
        assert!(!text.contains("kkDEjI7ELn1JJ0"), "{text}");
        assert!(!text.contains("SECRETSECRET"), "{text}");
        assert!(text.contains("hskey-api-K76_SfXB8rx0-***"), "{text}");
        assert!(text.contains("hskey-auth-1yci6UZA_8E--***"), "{text}");
        // Masked prefixes and auth ids pass unchanged.
        for kept in [
            "hskey-api-K76_SfXB8rx0-***",
            "hskey-authreq-dneD0n8BtfXSJuObhPatkjKV",
        ] {
            assert_eq!(redact(kept, &[]), kept);
        }
    }
}
