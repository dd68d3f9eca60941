//! JSON shapes of `/api/v1`: what the client sends (camelCase keys, uint64 ids as
//! strings: accepted by every supported version, and the only form 0.30 accepts) and
//! what it reads back (lenient: ids as strings or numbers, missing fields default,
//! 0.27's `forcedTags`/`validTags` folded into `tags`).
//!
//! Secrets never live in these types except in [`NewPreAuthKey`] and [`NewApiKey`],
//! as a [`SecretString`].

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::SecretString;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        /// Always a JSON string on the wire.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        /// A JSON string (the API) or a number (CLI JSON before 0.30).
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_u64(d).map($name)
            }
        }
    };
}

id_type!(
    /// A node's id.
    NodeId
);
id_type!(
    /// A user's id.
    UserId
);
id_type!(
    /// A pre-auth key's id.
    PreAuthKeyId
);
id_type!(
    /// An API key's id.
    ApiKeyId
);

fn deserialize_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(u64),
        Text(String),
    }
    match Id::deserialize(d)? {
        Id::Number(n) => Ok(n),
        Id::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// `0001-01-01T00:00:00Z`, Go's zero time: what 0.27–0.29 emit for an unset time,
/// and the legacy "no expiry".
pub fn is_zero_time(t: &Timestamp) -> bool {
    t.as_second() == -62_135_596_800 && t.subsec_nanosecond() == 0
}

fn non_zero(t: Option<Timestamp>) -> Option<Timestamp> {
    t.filter(|t| !is_zero_time(t))
}

/// `GET /version` (unauthenticated, every supported version).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub version: String,
    #[serde(default)]
    pub commit: String,
}

/// `GET /key?v=<capability version>`: the server's noise public key, which Tailscale
/// clients fetch before registering. Unauthenticated.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerKey {
    /// `mkey:` and 64 hex digits.
    pub public_key: String,
}

/// `GET /api/v1/health`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[serde(default)]
    pub database_connectivity: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: UserId,
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub email: String,
    /// `""` or `"oidc"`.
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub provider_id: String,
    #[serde(default, deserialize_with = "zero_is_none")]
    pub created_at: Option<Timestamp>,
}

/// The synthetic owner `GET /node` shows for tagged nodes (0.28+).
pub const TAGGED_DEVICES_USER: &str = "tagged-devices";

/// When a node's key expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeExpiry {
    /// `null`, or the zero time (0.27–0.28, and untouched nodes on every version).
    Never,
    At(Timestamp),
}

impl NodeExpiry {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        matches!(self, NodeExpiry::At(t) if *t <= now)
    }
}

/// A node as listed or fetched. Note the differences between `GET /node` and
/// `GET /node/{id}` (reference trap 18): only the list fills `subnet_routes`, and a
/// tagged node's `user` is `tagged-devices` in the list but the creating user (0.28)
/// or null (0.29) in a get. Use [`Node::is_tagged`] rather than the user.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "WireNode")]
pub struct Node {
    pub id: NodeId,
    /// The hostname the client reported.
    pub name: String,
    /// The MagicDNS label (what rename sets).
    pub given_name: String,
    pub user: Option<User>,
    pub ip_addresses: Vec<String>,
    pub machine_key: String,
    pub node_key: String,
    pub register_method: String,
    pub created_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub expiry: NodeExpiry,
    /// In-memory only: false for every node right after a restart (trap 8).
    pub online: bool,
    pub tags: Vec<String>,
    pub approved_routes: Vec<String>,
    pub available_routes: Vec<String>,
    pub subnet_routes: Vec<String>,
    /// Registered with an ephemeral pre-auth key.
    pub ephemeral: bool,
    pub pre_auth_key_id: Option<PreAuthKeyId>,
}

impl Node {
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireNode {
    id: NodeId,
    #[serde(default)]
    name: String,
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    machine_key: String,
    #[serde(default)]
    node_key: String,
    #[serde(default)]
    register_method: String,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    last_seen: Option<Timestamp>,
    #[serde(default)]
    expiry: Option<Timestamp>,
    #[serde(default)]
    online: bool,
    /// 0.28+.
    #[serde(default)]
    tags: Vec<String>,
    /// 0.27: tags set through the API.
    #[serde(default)]
    forced_tags: Vec<String>,
    /// 0.27: tags the client requested that the policy allows.
    #[serde(default)]
    valid_tags: Vec<String>,
    #[serde(default)]
    approved_routes: Vec<String>,
    #[serde(default)]
    available_routes: Vec<String>,
    #[serde(default)]
    subnet_routes: Vec<String>,
    #[serde(default)]
    pre_auth_key: Option<WirePreAuthKey>,
}

impl From<WireNode> for Node {
    fn from(w: WireNode) -> Node {
        let mut tags = w.tags;
        for t in w.forced_tags.into_iter().chain(w.valid_tags) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        tags.sort();
        Node {
            id: w.id,
            name: w.name,
            given_name: w.given_name,
            user: w.user,
            ip_addresses: w.ip_addresses,
            machine_key: w.machine_key,
            node_key: w.node_key,
            register_method: w.register_method,
            created_at: non_zero(w.created_at),
            last_seen: non_zero(w.last_seen),
            expiry: match non_zero(w.expiry) {
                Some(t) => NodeExpiry::At(t),
                None => NodeExpiry::Never,
            },
            online: w.online,
            tags,
            approved_routes: w.approved_routes,
            available_routes: w.available_routes,
            subnet_routes: w.subnet_routes,
            ephemeral: w.pre_auth_key.as_ref().is_some_and(|k| k.ephemeral),
            pre_auth_key_id: w.pre_auth_key.map(|k| k.id),
        }
    }
}

/// A pre-auth key as listed. The key itself is not here: it is shown once, in
/// [`NewPreAuthKey`] (0.28+ list it masked; 0.27 lists it in full, and the client
/// drops it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "WirePreAuthKey")]
pub struct PreAuthKey {
    pub id: PreAuthKeyId,
    /// The owner; `None` for a tag-only key (0.28+).
    pub user: Option<User>,
    /// `hskey-auth-<prefix>-***` (0.28+); `None` where the server lists full keys.
    pub masked_key: Option<String>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    /// The zero time means "already expired" (trap 1), so it is kept as is.
    pub expiration: Option<Timestamp>,
    pub created_at: Option<Timestamp>,
    pub acl_tags: Vec<String>,
}

impl PreAuthKey {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expiration.is_none_or(|t| t <= now)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WirePreAuthKey {
    pub(crate) id: PreAuthKeyId,
    #[serde(default)]
    pub(crate) user: Option<User>,
    #[serde(default)]
    pub(crate) key: SecretString,
    #[serde(default)]
    reusable: bool,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    used: bool,
    #[serde(default)]
    expiration: Option<Timestamp>,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    acl_tags: Vec<String>,
}

impl From<WirePreAuthKey> for PreAuthKey {
    fn from(w: WirePreAuthKey) -> PreAuthKey {
        let masked = w.key.expose();
        PreAuthKey {
            id: w.id,
            user: w.user,
            masked_key: masked.ends_with("***").then(|| masked.to_string()),
            reusable: w.reusable,
            ephemeral: w.ephemeral,
            used: w.used,
            expiration: w.expiration,
            created_at: non_zero(w.created_at),
            acl_tags: w.acl_tags,
        }
    }
}

/// A pre-auth key just created: the only time the full key is available.
#[derive(Clone, Debug)]
pub struct NewPreAuthKey {
    pub key: SecretString,
    pub info: PreAuthKey,
}

/// What a new pre-auth key should be. The expiration is not optional: an omitted
/// one is stored as the zero time and the key is dead on arrival (trap 1).
#[derive(Clone, Debug, PartialEq)]
pub struct PreAuthKeySpec {
    /// The owner; `None` needs at least one tag (0.28+).
    pub user: Option<UserId>,
    pub tags: Vec<String>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub expiration: Timestamp,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: ApiKeyId,
    /// `hskey-api-<12>-***` (0.28+), or the 7-character prefix of a legacy key.
    /// Accepted back as an identifier.
    pub prefix: String,
    #[serde(default)]
    pub expiration: Option<Timestamp>,
    #[serde(default, deserialize_with = "zero_is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "zero_is_none")]
    pub last_seen: Option<Timestamp>,
}

impl ApiKey {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expiration.is_none_or(|t| t <= now)
    }
}

/// An API key just created: the only time the full key is available.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub key: SecretString,
    /// The prefix as `GET /apikey` shows it, to find or expire this key later.
    pub prefix: String,
}

impl NewApiKey {
    pub(crate) fn from_key(key: SecretString) -> NewApiKey {
        let prefix = listed_prefix(key.expose());
        NewApiKey { key, prefix }
    }
}

/// The listed form of an API key's prefix: `hskey-api-<12>-***` for 0.28+ keys,
/// the part before the `.` for legacy `<7>.<secret>` keys (0.27).
fn listed_prefix(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("hskey-api-")
        && rest.len() > 12
    {
        return format!("hskey-api-{}-***", &rest[..12]);
    }
    key.split_once('.')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

/// One API key, by id or by prefix (the listed, masked prefix works).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeyRef {
    Id(ApiKeyId),
    Prefix(String),
}

/// The stored policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// HuJSON text, as stored.
    pub policy: String,
    #[serde(default, deserialize_with = "zero_is_none")]
    pub updated_at: Option<Timestamp>,
}

/// How to change a node's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryChange {
    /// Expire now: the node must log in again.
    Now,
    At(Timestamp),
    /// Never expire.
    Disable,
}

fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    Ok(non_zero(Option::<Timestamp>::deserialize(d)?))
}

// Request bodies. Only camelCase keys the oldest and the strictest (0.30) version
// both know; uint64 as strings.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateUserBody<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatePreAuthKeyBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub expiration: Timestamp,
    pub acl_tags: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExpireNodeBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Timestamp>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_expiry: bool,
}

#[derive(Serialize)]
pub(crate) struct TagsBody<'a> {
    pub tags: &'a [String],
}

#[derive(Serialize)]
pub(crate) struct RoutesBody<'a> {
    pub routes: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthRegisterBody<'a> {
    pub user: &'a str,
    pub auth_id: &'a str,
}

#[derive(Serialize)]
pub(crate) struct PolicyBody<'a> {
    pub policy: &'a str,
}

#[derive(Serialize)]
pub(crate) struct ExpirationBody {
    pub expiration: Timestamp,
}

// Response envelopes.

#[derive(Deserialize)]
pub(crate) struct UsersEnvelope {
    #[serde(default)]
    pub users: Vec<User>,
}

#[derive(Deserialize)]
pub(crate) struct UserEnvelope {
    pub user: User,
}

#[derive(Deserialize)]
pub(crate) struct NodesEnvelope {
    #[serde(default)]
    pub nodes: Vec<Node>,
}

#[derive(Deserialize)]
pub(crate) struct NodeEnvelope {
    pub node: Node,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreAuthKeysEnvelope {
    #[serde(default)]
    pub pre_auth_keys: Vec<WirePreAuthKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreAuthKeyEnvelope {
    pub pre_auth_key: WirePreAuthKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKeysEnvelope {
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewApiKeyEnvelope {
    pub api_key: SecretString,
}

/// `{}` and anything else a call answers that the client does not read.
#[derive(Deserialize)]
pub(crate) struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_from_every_version() {
        // Trimmed real responses (v0.27.1 list after set-tags, v0.28.0 and v0.29.2 get).
        let v027 = json!({"id":"1","name":"fake1","givenName":"fake1","ipAddresses":["100.64.0.1"],
            "user":{"id":"1","name":"alice","createdAt":"2026-12-03T17:04:42.879817706Z"},
            "lastSeen":"2026-12-03T17:04:43.145119527Z","expiry":"0001-01-01T00:00:00Z","preAuthKey":null,
            "createdAt":"2026-12-03T17:04:43.145388203Z","registerMethod":"REGISTER_METHOD_CLI",
            "forcedTags":["tag:web"],"invalidTags":[],"validTags":["tag:db","tag:web"],"online":false,
            "approvedRoutes":[],"availableRoutes":["10.1.0.0/24"],"subnetRoutes":[]});
        let n: Node = serde_json::from_value(v027).unwrap();
        assert_eq!(n.id, NodeId(1));
        assert_eq!(n.tags, ["tag:db", "tag:web"]);
        assert_eq!(n.expiry, NodeExpiry::Never);
        assert!(n.is_tagged());

        let v029 = json!({"id":"7","name":"fake1","user":null,"lastSeen":null,"expiry":null,
            "preAuthKey":{"user":null,"id":"3","key":"hskey-auth-4_TTLz8KL96r-***","reusable":false,
              "ephemeral":true,"used":true,"expiration":"2030-01-01T00:00:00Z","createdAt":null,"aclTags":["tag:web"]},
            "createdAt":"2026-12-03T17:02:01.002138483Z","registerMethod":"REGISTER_METHOD_AUTH_KEY",
            "givenName":"fake1","online":true,"approvedRoutes":["10.1.0.0/24"],"availableRoutes":[],
            "subnetRoutes":[],"tags":["tag:web"]});
        let n: Node = serde_json::from_value(v029).unwrap();
        assert_eq!(
            (n.id, n.user.clone(), n.expiry),
            (NodeId(7), None, NodeExpiry::Never)
        );
        assert!(n.ephemeral && n.online);
        assert_eq!(n.pre_auth_key_id, Some(PreAuthKeyId(3)));

        let n: Node = serde_json::from_value(json!({"id": 9, "expiry": "2030-01-01T00:00:00Z"})).unwrap();
        assert_eq!(n.expiry, NodeExpiry::At(t("2030-01-01T00:00:00Z")));
        assert!(!n.expiry.is_expired(t("2029-12-31T23:59:59Z")));
        assert!(n.expiry.is_expired(t("2030-01-01T00:00:00Z")));
        assert!(!NodeExpiry::Never.is_expired(t("9999-01-01T00:00:00Z")));
    }

    #[test]
    fn pre_auth_keys_never_keep_the_key() {
        let full = json!({"id":"1","key":"75747170da7e69564cc0e2a4e3c467ce279ebbccc3495648",
            "user":{"id":"1","name":"alice"},"expiration":"0001-01-01T00:00:00Z","aclTags":[]});
        let k: PreAuthKey = serde_json::from_value(full).unwrap();
        assert_eq!(k.masked_key, None);
        assert!(!format!("{k:?}").contains("75747170da7e"));
        // The zero time is "already expired", not "never".
        assert!(k.is_expired(t("2026-01-01T00:00:00Z")));

        let masked = json!({"id":"2","key":"hskey-auth-NmcFGGmmEgHo-***","user":null,
            "expiration":"2030-01-01T00:00:00Z","aclTags":["tag:web"]});
        let k: PreAuthKey = serde_json::from_value(masked).unwrap();
        assert_eq!(k.masked_key.as_deref(), Some("hskey-auth-NmcFGGmmEgHo-***"));
        assert!(!k.is_expired(t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn requests_use_camel_case_and_string_ids() {
        let body = serde_json::to_value(CreatePreAuthKeyBody {
            user: Some(UserId(12)),
            reusable: true,
            ephemeral: false,
            expiration: t("2030-01-01T00:00:00Z"),
            acl_tags: &["tag:a".to_string()],
        })
        .unwrap();
        assert_eq!(
            body,
            json!({"user":"12","reusable":true,"ephemeral":false,
                   "expiration":"2030-01-01T00:00:00Z","aclTags":["tag:a"]})
        );
        let body = serde_json::to_value(ExpireNodeBody {
            expiry: None,
            disable_expiry: true,
        })
        .unwrap();
        assert_eq!(body, json!({"disableExpiry": true}));
        let body = serde_json::to_value(AuthRegisterBody {
            user: "alice",
            auth_id: "hskey-authreq-x",
        })
        .unwrap();
        assert_eq!(body, json!({"user":"alice","authId":"hskey-authreq-x"}));
        assert_eq!(serde_json::to_value(ApiKeyId(3)).unwrap(), json!("3"));
    }

    #[test]
    fn api_key_prefixes() {
        let table = [
            (
                "hskey-api-K76_SfXB8rx0-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "hskey-api-K76_SfXB8rx0-***",
            ),
            ("dvZhCNN.i5v-9XwQgpCsSECRET", "dvZhCNN"),
            ("garbage", ""),
        ];
        for (key, want) in table {
            assert_eq!(listed_prefix(key), want);
        }
    }

    #[test]
    fn zero_times_and_nulls() {
        let u: User = serde_json::from_value(json!({"id":"2147455555","name":"tagged-devices",
            "createdAt":"0001-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!((u.id, u.created_at), (UserId(2_147_455_555), None));
        let k: ApiKey =
            serde_json::from_value(json!({"id":"1","prefix":"p","expiration":null,"lastSeen":null})).unwrap();
        assert!(k.is_expired(t("2026-01-01T00:00:00Z")));
    }
}
