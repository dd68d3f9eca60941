//! Condition math shared by every controller: reasons in one place, and a setter that
//! moves `lastTransitionTime` only when a condition's status flips.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
/// On a HeadscaleServer: whether the merged AclPolicy is what Headscale serves.
/// Owned by the policy controller; `Ready` and `Stalled` by the server controller.
pub const POLICY_APPLIED: &str = "PolicyApplied";

/// Condition reasons, CamelCase, used for conditions, Events and metric labels.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    pub const SECRET_KEY_INVALID: &str = "SecretKeyInvalid";
    pub const SECRET_READ_FAILED: &str = "SecretReadFailed";
    pub const API_KEY_REJECTED: &str = "ApiKeyRejected";
    pub const SERVER_UNREACHABLE: &str = "ServerUnreachable";
    pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
    pub const UNEXPECTED_RESPONSE: &str = "UnexpectedResponse";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NOT_IMPLEMENTED: &str = "NotImplemented";

    // The policy controller (AclPolicy `Ready`, HeadscaleServer `PolicyApplied`).
    /// The merged policy holding this fragment is what the server serves.
    pub const APPLIED: &str = "Applied";
    /// No fragment names the server; the `whenEmpty` default is served.
    pub const DEFAULT_APPLIED: &str = "DefaultApplied";
    /// No fragment names the server and the operator never applied a policy to it:
    /// its own policy is left alone.
    pub const NO_ACL_POLICIES: &str = "NoAclPolicies";
    pub const SERVER_NOT_FOUND: &str = "ServerNotFound";
    /// The server is not Ready (or is managed, which cannot be reached yet).
    pub const SERVER_NOT_READY: &str = "ServerNotReady";
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    pub const CONFIG_MAP_KEY_MISSING: &str = "ConfigMapKeyMissing";
    /// Headscale refused the merged policy (its check or its set call).
    pub const POLICY_REJECTED: &str = "PolicyRejected";
    /// The server keeps its policy in a file (`policy.mode: file`), so the API cannot set it.
    pub const POLICY_MODE_NOT_DATABASE: &str = "PolicyModeNotDatabase";
    /// Event: the served policy was changed outside the operator and ours re-applied.
    pub const POLICY_DRIFT_REPAIRED: &str = "PolicyDriftRepaired";

    // The nodes controller (NodeApproval `Ready`; its Events).
    /// An interactive registration was approved: the node is registered.
    pub const REGISTERED: &str = "Registered";
    /// A pre-auth key is in its Secret, not used yet.
    pub const KEY_ISSUED: &str = "KeyIssued";
    /// The pre-auth key was used: the node is registered.
    pub const KEY_USED: &str = "KeyUsed";
    /// An enrollment rule of the server forbids the approval; nothing was done.
    pub const ENROLLMENT_REFUSED: &str = "EnrollmentRefused";
    /// The auth id is unknown to Headscale: mistyped, expired (15 min), already used,
    /// or dropped by a restart. Terminal.
    pub const AUTH_ID_NOT_FOUND: &str = "AuthIdNotFound";
    /// The pre-auth key expired unused (and `renew` is off). Terminal.
    pub const KEY_EXPIRED: &str = "KeyExpired";
    /// The pre-auth key is gone from the server (deleted outside the operator). Terminal.
    pub const KEY_REVOKED: &str = "KeyRevoked";
    /// Event: an expired unused key was expired on the server and a new one minted.
    pub const KEY_RENEWED: &str = "KeyRenewed";
    pub const USER_NOT_FOUND: &str = "UserNotFound";
    /// The Secret named for the key exists and is not the approval's own.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The node was registered but Headscale refused its tags (not in `tagOwners`).
    pub const TAGS_REJECTED: &str = "TagsRejected";
    /// The node that registered reports another hostname than the approval's
    /// `spec.hostname`: the audit counts it as unexpected.
    pub const HOSTNAME_MISMATCH: &str = "HostnameMismatch";
    /// `spec.approved` is false: a request waiting for an approver.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// Headscale refused the request as invalid (e.g. a malformed auth id). Terminal.
    pub const REQUEST_REJECTED: &str = "RequestRejected";
}

/// The status of a condition, as Kubernetes spells it.
pub fn status_str(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// Sets (adds or replaces) the condition of `type_`. `lastTransitionTime` keeps its old
/// value unless the status changed, so an unchanged world produces an unchanged status.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = status_str(ok).to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = Vec::new();
        set(
            &mut c,
            READY,
            false,
            "A",
            "m1",
            Some(1),
            ts("2026-01-01T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T00:00:00Z"));
        // Same status, new reason and generation: time stays.
        set(
            &mut c,
            READY,
            false,
            "B",
            "m2",
            Some(2),
            ts("2026-01-02T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T00:00:00Z"));
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].observed_generation, Some(2));
        // Flip: time moves.
        set(
            &mut c,
            READY,
            true,
            "Ready",
            "ok",
            Some(2),
            ts("2026-01-03T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-03T00:00:00Z"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn separate_types_coexist() {
        let mut c = Vec::new();
        let now = ts("2026-01-01T00:00:00Z");
        set(&mut c, READY, true, "Ready", "", None, now);
        set(&mut c, "Reconciling", false, "Done", "", None, now);
        assert_eq!(c.len(), 2);
        assert!(find(&c, "Reconciling").is_some());
    }
}
