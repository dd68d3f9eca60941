//! The keyholder's Secret: reading its state (no key material leaves here except
//! as a masked prefix) and the merge patches that write it. Pure; the run loop sends
//! the patches.

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use super::decide::SecretState;
use super::{
    ANNOTATION_CONFIRMED_ID, ANNOTATION_EXPIRATION, ANNOTATION_ID, ANNOTATION_PREFIX,
    ANNOTATION_PREVIOUS_GRACE_UNTIL, ANNOTATION_PREVIOUS_ID, ANNOTATION_REJECTED, API_KEY_DATA_KEY,
};
use crate::headscale::{ApiKey, ApiKeyId, NewApiKey};
use crate::secret::SecretString;

pub fn secret_state(secret: &Secret) -> SecretState {
    let annotation = |name: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let id = |name: &str| annotation(name).and_then(|v| v.parse().ok()).map(ApiKeyId);
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(API_KEY_DATA_KEY))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    SecretState {
        has_key: key.is_some(),
        key_prefix: key
            .map(|k| NewApiKey::from_key(SecretString::new(k)).prefix)
            .filter(|p| !p.is_empty()),
        id: id(ANNOTATION_ID),
        previous_id: id(ANNOTATION_PREVIOUS_ID),
        previous_grace_until: annotation(ANNOTATION_PREVIOUS_GRACE_UNTIL).and_then(|v| v.parse().ok()),
        rejected: annotation(ANNOTATION_REJECTED).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        confirmed_id: id(ANNOTATION_CONFIRMED_ID),
    }
}

/// Stores a freshly minted key. `resourceVersion` makes it conditional: if the
/// Secret changed since it was read, the API server refuses (409) and nothing is
/// half-written. The value holds the key: never log it.
pub fn mint_patch(
    resource_version: &str,
    key: &SecretString,
    minted: &ApiKey,
    retire: Option<(ApiKeyId, Timestamp)>,
) -> Value {
    let data = serde_json::to_value(ByteString(key.expose().as_bytes().to_vec())).unwrap_or(Value::Null);
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                ANNOTATION_ID: minted.id.to_string(),
                ANNOTATION_PREFIX: minted.prefix,
                ANNOTATION_EXPIRATION: minted.expiration.map(|t| t.to_string()),
                ANNOTATION_REJECTED: null,
                ANNOTATION_PREVIOUS_ID: retire.map(|(id, _)| id.to_string()),
                ANNOTATION_PREVIOUS_GRACE_UNTIL: retire.map(|(_, until)| until.to_string()),
            },
        },
        "data": { API_KEY_DATA_KEY: data },
    })
}

/// Drops the previous-key annotations once that key is expired or gone.
pub fn forget_previous_patch(resource_version: &str) -> Value {
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                ANNOTATION_PREVIOUS_ID: null,
                ANNOTATION_PREVIOUS_GRACE_UNTIL: null,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "hskey-api-abcdefghijkl-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn secret(value: Value) -> Secret {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn reads_the_state() {
        assert_eq!(
            secret_state(&secret(json!({"metadata": {"name": "k"}}))),
            SecretState::default()
        );
        let s = secret(json!({
            "metadata": {"name": "k", "annotations": {
                ANNOTATION_ID: "7",
                ANNOTATION_PREVIOUS_ID: "6",
                ANNOTATION_PREVIOUS_GRACE_UNTIL: "2027-01-15T08:00:00Z",
                ANNOTATION_REJECTED: "True",
                ANNOTATION_CONFIRMED_ID: "7",
            }},
            "stringData": {},
            "data": {API_KEY_DATA_KEY: ByteString(format!("{KEY}\n").into_bytes())},
        }));
        let state = secret_state(&s);
        assert_eq!(
            state,
            SecretState {
                has_key: true,
                key_prefix: Some("hskey-api-abcdefghijkl-***".into()),
                id: Some(ApiKeyId(7)),
                previous_id: Some(ApiKeyId(6)),
                previous_grace_until: Some("2027-01-15T08:00:00Z".parse().unwrap()),
                rejected: true,
                confirmed_id: Some(ApiKeyId(7)),
            }
        );
    }

    #[test]
    fn junk_reads_as_absent() {
        let s = secret(json!({
            "metadata": {"name": "k", "annotations": {
                ANNOTATION_ID: "seven",
                ANNOTATION_PREVIOUS_GRACE_UNTIL: "soon",
                ANNOTATION_REJECTED: "yes",
            }},
            "data": {API_KEY_DATA_KEY: ByteString(b"  \n".to_vec())},
        }));
        assert_eq!(secret_state(&s), SecretState::default());
        let binary = secret(json!({
            "metadata": {"name": "k"},
            "data": {API_KEY_DATA_KEY: ByteString(vec![0xff, 0xfe])},
        }));
        assert!(!secret_state(&binary).has_key);
    }

    #[test]
    fn a_mint_patch_round_trips_into_the_state() {
        let minted = ApiKey {
            id: ApiKeyId(9),
            prefix: "hskey-api-abcdefghijkl-***".into(),
            expiration: Some("2027-01-15T08:00:00Z".parse().unwrap()),
            created_at: None,
            last_seen: None,
        };
        let until: Timestamp = "2026-07-21T10:10:00Z".parse().unwrap();
        let patch = mint_patch("42", &SecretString::new(KEY), &minted, Some((ApiKeyId(8), until)));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(annotations[ANNOTATION_EXPIRATION], "2027-01-15T08:00:00Z");
        assert_eq!(annotations[ANNOTATION_REJECTED], Value::Null);

        // Apply it the way a merge patch does, to an empty Secret.
        let mut object = json!({"metadata": {"name": "k", "annotations": {ANNOTATION_REJECTED: "true"}}});
        merge(&mut object, &patch);
        let state = secret_state(&secret(object.clone()));
        assert_eq!(state.id, Some(ApiKeyId(9)));
        assert_eq!(state.key_prefix.as_deref(), Some("hskey-api-abcdefghijkl-***"));
        assert_eq!(state.previous_id, Some(ApiKeyId(8)));
        assert_eq!(state.previous_grace_until, Some(until));
        assert!(!state.rejected);

        merge(&mut object, &forget_previous_patch("43"));
        let state = secret_state(&secret(object.clone()));
        assert_eq!((state.previous_id, state.previous_grace_until), (None, None));
        assert_eq!(state.id, Some(ApiKeyId(9)));

        // Without a key to retire, stale previous annotations are removed.
        let patch = mint_patch("44", &SecretString::new(KEY), &minted, None);
        assert_eq!(
            patch["metadata"]["annotations"][ANNOTATION_PREVIOUS_ID],
            Value::Null
        );
    }

    /// RFC 7386 JSON merge patch.
    fn merge(target: &mut Value, patch: &Value) {
        let Value::Object(p) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}
