//! Headscale versions: parsing what `/version` reports and the supported range.

use std::fmt;

/// A Headscale release version (`major.minor.patch`); pre-release and build suffixes
/// are kept only for display.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_forms() {
        let table = [
            ("v0.29.2", Some((0, 29, 2))),
            ("0.28.0", Some((0, 28, 0))),
            ("v0.30.0-beta.1", Some((0, 30, 0))),
            ("v0.29.3-0.20260721000000-f20f1f12abcd", Some((0, 29, 3))),
            ("v1.0.0+dirty", Some((1, 0, 0))),
            ("dev", None),
            ("", None),
            ("v0.29", None),
            ("v0.29.2.1", None),
        ];
        for (text, want) in table {
            let got = Version::parse(text).map(|v| (v.major, v.minor, v.patch));
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
}
