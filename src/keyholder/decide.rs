//! What the keyholder does next, as a pure function of what it sees: the Secret's
//! state, Headscale's list of API keys and the time. No I/O in here.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::headscale::{ApiKey, ApiKeyId};

/// What the Secret says, read by [`super::store`]. Holds no key material: only
/// whether there is a key and the listed (masked) form of its prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretState {
    /// `data.apiKey` is present and not empty.
    pub has_key: bool,
    /// The listed prefix of the stored key (`hskey-api-<12>-***`), derived from it.
    pub key_prefix: Option<String>,
    /// The key's id as recorded in the annotation.
    pub id: Option<ApiKeyId>,
    /// The key this one replaced, still valid until it is expired.
    pub previous_id: Option<ApiKeyId>,
    /// Expire the previous key from then on, even if the new one was not seen in use.
    pub previous_grace_until: Option<Timestamp>,
    /// The operator found the key rejected: mint now.
    pub rejected: bool,
    /// The operator has used the key with this id successfully.
    pub confirmed_id: Option<ApiKeyId>,
}

/// How long keys live and when they are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a minted key.
    pub lifetime: Duration,
    /// Rotate when less than this is left.
    pub rotate_before: Duration,
    /// How long a replaced key stays valid when nothing shows the new one in use.
    pub grace: Duration,
}

/// Why a new key is minted. The names are log values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MintReason {
    /// The operator marked the key rejected.
    Rejected,
    /// The Secret holds no key.
    NoKey,
    /// A key without the id annotation: it cannot be checked, so it is replaced.
    NotRecorded,
    /// Headscale does not list the recorded id (deleted, or another database).
    UnknownId,
    /// The stored key is not the key the id names (edited by hand).
    PrefixMismatch,
    Expired,
    ExpiresSoon,
}

impl MintReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MintReason::Rejected => "Rejected",
            MintReason::NoKey => "NoKey",
            MintReason::NotRecorded => "NotRecorded",
            MintReason::UnknownId => "UnknownId",
            MintReason::PrefixMismatch => "PrefixMismatch",
            MintReason::Expired => "Expired",
            MintReason::ExpiresSoon => "ExpiresSoon",
        }
    }
}

/// The steps of one pass, executed in this order: expire, mint, forget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Expire these keys first (a replaced key whose time is up).
    pub expire: Vec<ApiKeyId>,
    /// Mint a new key and store it.
    pub mint: Option<MintReason>,
    /// With `mint`: the current key is still valid; record it as the previous key
    /// so it is expired after the grace period instead of at once.
    pub retire: Option<ApiKeyId>,
    /// Without `mint`: drop the previous-key annotations (expired here, or gone).
    pub forget_previous: bool,
    /// Look again no later than this (a rotation or a grace period falls due).
    pub recheck_in: Option<Duration>,
}

impl Plan {
    pub fn is_idle(&self) -> bool {
        self.expire.is_empty() && self.mint.is_none() && !self.forget_previous
    }
}

pub fn decide(secret: &SecretState, keys: &[ApiKey], now: Timestamp, policy: &Policy) -> Plan {
    let find = |id: Option<ApiKeyId>| id.and_then(|id| keys.iter().find(|k| k.id == id));
    let current = find(secret.id);
    let rotate_before = signed(policy.rotate_before);

    let mint = if secret.rejected {
        Some(MintReason::Rejected)
    } else if !secret.has_key {
        Some(MintReason::NoKey)
    } else if secret.id.is_none() {
        Some(MintReason::NotRecorded)
    } else {
        match current {
            None => Some(MintReason::UnknownId),
            Some(k) if secret.key_prefix.as_deref() != Some(k.prefix.as_str()) => {
                Some(MintReason::PrefixMismatch)
            }
            Some(k) if k.is_expired(now) => Some(MintReason::Expired),
            Some(k)
                if k.expiration
                    .is_some_and(|t| t.duration_since(now) <= rotate_before) =>
            {
                Some(MintReason::ExpiresSoon)
            }
            Some(_) => None,
        }
    };

    // The previous key, if Headscale still accepts it.
    let previous = find(secret.previous_id)
        .filter(|k| !k.is_expired(now))
        .filter(|k| Some(k.id) != secret.id);
    let mut plan = Plan::default();

    if let Some(reason) = mint {
        // Two generations back: the operator has long moved on from it.
        plan.expire.extend(previous.map(|k| k.id));
        plan.mint = Some(reason);
        plan.retire = current.filter(|k| !k.is_expired(now)).map(|k| k.id);
        return plan;
    }

    if secret.previous_id.is_some() {
        match previous {
            None => plan.forget_previous = true,
            Some(prev) => {
                let in_use = current.is_some_and(|k| k.last_seen.is_some())
                    || (secret.confirmed_id.is_some() && secret.confirmed_id == secret.id);
                let grace_over = secret.previous_grace_until.is_none_or(|t| t <= now);
                if in_use || grace_over {
                    plan.expire.push(prev.id);
                    plan.forget_previous = true;
                } else if let Some(until) = secret.previous_grace_until {
                    plan.recheck_in = Some(unsigned(until.duration_since(now)));
                }
            }
        }
    }
    // Stored key is current (checked above): recheck when its rotation falls due.
    if let Some(expiration) = current.and_then(|k| k.expiration) {
        let due = unsigned(expiration.duration_since(now) - rotate_before);
        plan.recheck_in = Some(plan.recheck_in.map_or(due, |r| r.min(due)));
    }
    plan
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn unsigned(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn at(offset_secs: i64) -> Timestamp {
        Timestamp::from_second(NOW + offset_secs).unwrap()
    }

    fn key(id: u64, expires_in: i64) -> ApiKey {
        ApiKey {
            id: ApiKeyId(id),
            prefix: format!("hskey-api-prefix{id:07}-***"),
            expiration: Some(at(expires_in)),
            created_at: Some(at(-DAY)),
            last_seen: None,
        }
    }

    fn stored(id: u64) -> SecretState {
        SecretState {
            has_key: true,
            key_prefix: Some(format!("hskey-api-prefix{id:07}-***")),
            id: Some(ApiKeyId(id)),
            ..Default::default()
        }
    }

    fn with(mut s: SecretState, f: impl FnOnce(&mut SecretState)) -> SecretState {
        f(&mut s);
        s
    }

    const POLICY: Policy = Policy {
        lifetime: Duration::from_secs(90 * 86_400),
        rotate_before: Duration::from_secs(30 * 86_400),
        grace: Duration::from_secs(600),
    };

    #[test]
    fn when_to_mint() {
        let fresh = key(1, 60 * DAY);
        let table: Vec<(&str, SecretState, Vec<ApiKey>, Option<MintReason>)> = vec![
            (
                "empty Secret",
                SecretState::default(),
                vec![],
                Some(MintReason::NoKey),
            ),
            ("valid key", stored(1), vec![fresh.clone()], None),
            (
                "rejected wins",
                with(stored(1), |s| s.rejected = true),
                vec![fresh.clone()],
                Some(MintReason::Rejected),
            ),
            (
                "data deleted, annotations kept",
                with(stored(1), |s| {
                    s.has_key = false;
                    s.key_prefix = None;
                }),
                vec![fresh.clone()],
                Some(MintReason::NoKey),
            ),
            (
                "key without id",
                with(stored(1), |s| s.id = None),
                vec![fresh.clone()],
                Some(MintReason::NotRecorded),
            ),
            (
                "id not listed",
                stored(2),
                vec![fresh.clone()],
                Some(MintReason::UnknownId),
            ),
            ("no keys at all", stored(1), vec![], Some(MintReason::UnknownId)),
            (
                "key replaced by hand",
                with(stored(1), |s| {
                    s.key_prefix = Some("hskey-api-other0000000-***".into())
                }),
                vec![fresh.clone()],
                Some(MintReason::PrefixMismatch),
            ),
            (
                "legacy key without prefix",
                with(stored(1), |s| s.key_prefix = None),
                vec![fresh.clone()],
                Some(MintReason::PrefixMismatch),
            ),
            ("expired", stored(1), vec![key(1, -1)], Some(MintReason::Expired)),
            (
                "expires this instant",
                stored(1),
                vec![key(1, 0)],
                Some(MintReason::Expired),
            ),
            (
                "no expiration (dead key)",
                stored(1),
                vec![ApiKey {
                    expiration: None,
                    ..fresh.clone()
                }],
                Some(MintReason::Expired),
            ),
            (
                "inside rotate-before",
                stored(1),
                vec![key(1, 29 * DAY)],
                Some(MintReason::ExpiresSoon),
            ),
            (
                "exactly at rotate-before",
                stored(1),
                vec![key(1, 30 * DAY)],
                Some(MintReason::ExpiresSoon),
            ),
            (
                "just outside rotate-before",
                stored(1),
                vec![key(1, 30 * DAY + 1)],
                None,
            ),
        ];
        for (name, secret, keys, want) in table {
            let plan = decide(&secret, &keys, at(0), &POLICY);
            assert_eq!(plan.mint, want, "{name}");
        }
    }

    #[test]
    fn a_rotation_keeps_the_valid_key_for_the_grace_period() {
        let plan = decide(&stored(1), &[key(1, 10 * DAY)], at(0), &POLICY);
        assert_eq!(plan.mint, Some(MintReason::ExpiresSoon));
        assert_eq!(plan.retire, Some(ApiKeyId(1)));
        assert!(plan.expire.is_empty());

        // An expired or unknown key is not worth keeping.
        let plan = decide(&stored(1), &[key(1, -5)], at(0), &POLICY);
        assert_eq!(plan.retire, None);
        let plan = decide(&stored(1), &[], at(0), &POLICY);
        assert_eq!(plan.retire, None);
    }

    #[test]
    fn minting_again_during_a_grace_period_expires_the_oldest_key() {
        let s = with(stored(2), |s| {
            s.rejected = true;
            s.previous_id = Some(ApiKeyId(1));
            s.previous_grace_until = Some(at(300));
        });
        let plan = decide(&s, &[key(1, 10 * DAY), key(2, 89 * DAY)], at(0), &POLICY);
        assert_eq!(plan.mint, Some(MintReason::Rejected));
        assert_eq!(plan.expire, vec![ApiKeyId(1)]);
        assert_eq!(plan.retire, Some(ApiKeyId(2)));
    }

    #[test]
    fn the_previous_key_is_expired_once_the_new_one_is_in_use_or_the_grace_is_over() {
        let pending = with(stored(2), |s| {
            s.previous_id = Some(ApiKeyId(1));
            s.previous_grace_until = Some(at(300));
        });
        let keys = [key(1, 10 * DAY), key(2, 89 * DAY)];

        let plan = decide(&pending, &keys, at(0), &POLICY);
        assert!(plan.is_idle(), "{plan:?}");
        assert_eq!(plan.recheck_in, Some(Duration::from_secs(300)));

        let plan = decide(&pending, &keys, at(300), &POLICY);
        assert_eq!(
            (plan.expire.clone(), plan.forget_previous),
            (vec![ApiKeyId(1)], true)
        );
        assert_eq!(plan.mint, None);

        let confirmed = with(pending.clone(), |s| s.confirmed_id = Some(ApiKeyId(2)));
        let plan = decide(&confirmed, &keys, at(0), &POLICY);
        assert_eq!(
            (plan.expire.clone(), plan.forget_previous),
            (vec![ApiKeyId(1)], true)
        );

        // A confirmation of the old key does not count.
        let stale = with(pending.clone(), |s| s.confirmed_id = Some(ApiKeyId(1)));
        assert!(decide(&stale, &keys, at(0), &POLICY).is_idle());

        let mut seen = keys.clone();
        seen[1].last_seen = Some(at(-1));
        let plan = decide(&pending, &seen, at(0), &POLICY);
        assert_eq!(
            (plan.expire.clone(), plan.forget_previous),
            (vec![ApiKeyId(1)], true)
        );

        // Without a recorded deadline the grace is over.
        let no_deadline = with(pending, |s| s.previous_grace_until = None);
        assert_eq!(
            decide(&no_deadline, &keys, at(0), &POLICY).expire,
            vec![ApiKeyId(1)]
        );
    }

    #[test]
    fn a_previous_key_that_is_gone_or_expired_is_just_forgotten() {
        let pending = with(stored(2), |s| {
            s.previous_id = Some(ApiKeyId(1));
            s.previous_grace_until = Some(at(300));
        });
        for keys in [vec![key(2, 89 * DAY)], vec![key(1, -1), key(2, 89 * DAY)]] {
            let plan = decide(&pending, &keys, at(0), &POLICY);
            assert!(plan.expire.is_empty());
            assert!(plan.forget_previous);
            assert_eq!(plan.mint, None);
        }
    }

    #[test]
    fn recheck_when_the_rotation_falls_due() {
        let plan = decide(&stored(1), &[key(1, 31 * DAY)], at(0), &POLICY);
        assert!(plan.is_idle());
        assert_eq!(plan.recheck_in, Some(Duration::from_secs(DAY as u64)));
    }
}
