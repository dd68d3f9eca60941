//! A string that must never be printed: API keys, pre-auth keys, private keys.
//!
//! `Debug` and `Display` redact, there is no `Serialize`, and the only way to the
//! value is the explicit [`SecretString::expose`], so a key cannot reach a log line,
//! an Event, a status field or an error message by accident.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reading a secret from a response is fine; writing one out is what must not happen,
/// so there is still no `Serialize`.
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(SecretString)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretString::new("hskey-api-abcdefghijkl-supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{s}").contains("supersecret"));
        assert_eq!(s.expose(), "hskey-api-abcdefghijkl-supersecret");
    }

    #[test]
    fn deserializes_and_stays_redacted() {
        let s: SecretString = serde_json::from_str(r#""hskey-auth-x-supersecret""#).unwrap();
        assert_eq!(s.expose(), "hskey-auth-x-supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
