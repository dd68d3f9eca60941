//! Headscale versions: parsing what `/version` reports, the supported range, and
//! [`ApiShape`]: every difference between the supported versions' `/api/v1` that the
//! client has to know about, in one table a reader can check against
//! `reference/headscale.md` §1.3–1.4 and `e2e/NOTES.md`.

use std::fmt;

/// A Headscale release version (`major.minor.patch`); pre-release and build suffixes
/// are kept for display and to recognise development builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    raw: String,
}

/// Lowest and highest supported minor releases (0.27 up to 0.30).
pub const MIN_SUPPORTED: (u64, u64) = (0, 27);
pub const MAX_SUPPORTED: (u64, u64) = (0, 30);

impl Version {
    /// Parses `v0.29.2`, `0.29.2`, `v0.30.0-beta.1` or a Go pseudo-version such as
    /// `v0.29.3-0.20260721000000-f20f1f12abcd`. Returns `None` for anything else
    /// (e.g. `dev`).
    pub fn parse(text: &str) -> Option<Version> {
        let raw = text.trim();
        let core = raw.strip_prefix('v').unwrap_or(raw);
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            raw: raw.to_string(),
        })
    }

    pub fn minor_pair(&self) -> (u64, u64) {
        (self.major, self.minor)
    }

    pub fn is_supported(&self) -> bool {
        let v = self.minor_pair();
        v >= MIN_SUPPORTED && v <= MAX_SUPPORTED
    }

    /// True when this version is at least `major.minor`.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        self.minor_pair() >= (major, minor)
    }

    /// A pre-release or a build of an untagged commit (`-beta.1`,
    /// `-0.20260721…-f20f1f12abcd`). A build of upstream HEAD after v0.29.2 reports a
    /// `v0.29.3-0.…` pseudo-version but already speaks the 0.30 API.
    pub fn is_prerelease(&self) -> bool {
        let core = self.raw.strip_prefix('v').unwrap_or(&self.raw);
        core.contains('-')
    }

    /// The supported range, for messages.
    pub fn supported_range() -> String {
        format!(
            "{}.{} to {}.{}",
            MIN_SUPPORTED.0, MIN_SUPPORTED.1, MAX_SUPPORTED.0, MAX_SUPPORTED.1
        )
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Where `POST /node/{id}/expire` reads its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryParams {
    /// 0.27–0.29 (grpc-gateway without a body rule): query only, a body is ignored.
    Query,
    /// 0.30 (Huma): JSON body only, query parameters are ignored.
    Body,
    /// A development build that may be either: send both, each reads its own half.
    QueryAndBody,
}

/// How "this node never expires" is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeverExpires {
    /// 0.27–0.28 have no `disableExpiry`; an unknown parameter is ignored and the
    /// node is expired *now*. The zero time `0001-01-01T00:00:00Z` is what these
    /// versions treat as "no expiry".
    ZeroTime,
    /// 0.29+: `disableExpiry=true` stores a null expiry.
    DisableFlag,
}

/// How a pending (interactive) registration is completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// `POST /node/register?user=<name>&key=<id>` (0.27–0.28; deprecated later).
    NodeRegister,
    /// `POST /auth/register {"user","authId"}` (0.29+).
    AuthRegister,
}

/// How one pre-auth key is named when expiring it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreAuthKeyRef {
    /// 0.27: `{"user": "<id>", "key": "<full key>"}`; an `id` is silently ignored.
    UserAndKey,
    /// 0.28+: `{"id": "<id>"}`.
    Id,
}

/// What `GET /preauthkey` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreAuthKeyListing {
    /// 0.27: one user's keys (`?user=<id>` is required), with the *full* keys.
    PerUser,
    /// 0.28+: every key, masked as `hskey-auth-<prefix>-***`.
    All,
}

/// The request shapes one Headscale version needs. Pure data: [`ApiShape::for_version`]
/// is the whole table, [`tests::the_table`] pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiShape {
    pub expiry_params: ExpiryParams,
    pub never_expires: NeverExpires,
    pub registration: Registration,
    pub pre_auth_key_ref: PreAuthKeyRef,
    pub pre_auth_key_listing: PreAuthKeyListing,
    /// `DELETE /preauthkey?id=` exists (0.28+; 0.27 answers 501).
    pub pre_auth_key_delete: bool,
    /// A pre-auth key may have tags and no user (0.28+; 0.27 needs a user).
    pub tag_only_pre_auth_keys: bool,
    /// API keys can be named by `id` (0.28+). 0.27 only knows the prefix and
    /// silently ignores an `id`, answering "record not found".
    pub api_key_by_id: bool,
    /// `POST /policy/check` exists (0.29+; 404 on 0.27–0.28).
    pub policy_check: bool,
}

impl ApiShape {
    pub fn for_version(v: &Version) -> ApiShape {
        let at_least = |minor| v.at_least(0, minor);
        ApiShape {
            expiry_params: if at_least(30) {
                ExpiryParams::Body
            } else if at_least(29) && v.is_prerelease() {
                ExpiryParams::QueryAndBody
            } else {
                ExpiryParams::Query
            },
            never_expires: if at_least(29) {
                NeverExpires::DisableFlag
            } else {
                NeverExpires::ZeroTime
            },
            registration: if at_least(29) {
                Registration::AuthRegister
            } else {
                Registration::NodeRegister
            },
            pre_auth_key_ref: if at_least(28) {
                PreAuthKeyRef::Id
            } else {
                PreAuthKeyRef::UserAndKey
            },
            pre_auth_key_listing: if at_least(28) {
                PreAuthKeyListing::All
            } else {
                PreAuthKeyListing::PerUser
            },
            pre_auth_key_delete: at_least(28),
            tag_only_pre_auth_keys: at_least(28),
            api_key_by_id: at_least(28),
            policy_check: at_least(29),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_forms() {
        let table = [
            ("v0.29.2", Some((0, 29, 2, false))),
            ("0.28.0", Some((0, 28, 0, false))),
            ("v0.30.0-beta.1", Some((0, 30, 0, true))),
            ("v0.29.3-0.20260721000000-f20f1f12abcd", Some((0, 29, 3, true))),
            ("v1.0.0+dirty", Some((1, 0, 0, false))),
            ("dev", None),
            ("", None),
            ("v0.29", None),
            ("v0.29.2.1", None),
        ];
        for (text, want) in table {
            let got = Version::parse(text).map(|v| (v.major, v.minor, v.patch, v.is_prerelease()));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn supported_range_is_027_to_030() {
        let table = [
            ("v0.26.1", false),
            ("v0.27.0", true),
            ("v0.28.0", true),
            ("v0.29.2", true),
            ("v0.30.0", true),
            ("v0.31.0", false),
            ("v1.0.0", false),
        ];
        for (text, want) in table {
            assert_eq!(Version::parse(text).unwrap().is_supported(), want, "{text}");
        }
    }

    /// The version differences, one row per version line. Each row is proven against
    /// the real server in `tests/headscale_client.rs` where that version is built.
    #[test]
    fn the_table() {
        use ExpiryParams as E;
        use NeverExpires as N;
        use PreAuthKeyListing as L;
        use PreAuthKeyRef as P;
        use Registration as R;
        #[rustfmt::skip]
        let table = [
            //  version                                  expiry        never          register          pak ref         listing   pak del tag-only api id  check
            ("v0.27.1",                                  E::Query,        N::ZeroTime,    R::NodeRegister, P::UserAndKey, L::PerUser, false, false, false, false),
            ("v0.28.0",                                  E::Query,        N::ZeroTime,    R::NodeRegister, P::Id,         L::All,     true,  true,  true,  false),
            ("v0.29.2",                                  E::Query,        N::DisableFlag, R::AuthRegister, P::Id,         L::All,     true,  true,  true,  true),
            ("v0.29.3-0.20260721000000-f20f1f12abcd",    E::QueryAndBody, N::DisableFlag, R::AuthRegister, P::Id,         L::All,     true,  true,  true,  true),
            ("v0.30.0-beta.1",                           E::Body,         N::DisableFlag, R::AuthRegister, P::Id,         L::All,     true,  true,  true,  true),
            ("v0.30.0",                                  E::Body,         N::DisableFlag, R::AuthRegister, P::Id,         L::All,     true,  true,  true,  true),
        ];
        for (v, expiry, never, reg, pak_ref, listing, pak_del, tag_only, api_id, check) in table {
            let shape = ApiShape::for_version(&Version::parse(v).unwrap());
            assert_eq!(
                shape,
                ApiShape {
                    expiry_params: expiry,
                    never_expires: never,
                    registration: reg,
                    pre_auth_key_ref: pak_ref,
                    pre_auth_key_listing: listing,
                    pre_auth_key_delete: pak_del,
                    tag_only_pre_auth_keys: tag_only,
                    api_key_by_id: api_id,
                    policy_check: check,
                },
                "{v}"
            );
        }
    }
}
