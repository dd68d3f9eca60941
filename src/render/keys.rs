//! The private keys the operator generates for a managed server: the noise key (the
//! server's identity towards every client) and the embedded DERP server's key.
//!
//! Headscale reads both from files in its text format, `privkey:` and 64 lowercase
//! hex digits (Tailscale's `key.MachinePrivate`), and would create a missing one
//! itself; the operator creates them instead so they live in a Secret, not on a
//! volume that can be lost.

use crate::secret::SecretString;

const PREFIX: &str = "privkey:";

/// The OS could not provide randomness.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct KeyGenError(String);

/// A fresh private key in Headscale's text format, `privkey:<64 hex>`, from the OS's
/// randomness (getrandom(2)), clamped for Curve25519 as Tailscale's
/// `key.NewMachine` does. Redacted in `Debug`/`Display`.
pub fn generate_private_key() -> Result<SecretString, KeyGenError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| KeyGenError(e.to_string()))?;
    raw[0] &= 248;
    raw[31] = (raw[31] & 127) | 64;
    let mut text = String::with_capacity(PREFIX.len() + 64);
    text.push_str(PREFIX);
    for b in raw {
        text.push(hex_digit(b >> 4));
        text.push(hex_digit(b & 0x0f));
    }
    raw.fill(0);
    Ok(SecretString::new(text))
}

/// Whether `text` is a private key Headscale reads (`privkey:` and 64 hex digits;
/// Headscale trims surrounding whitespace). Use it to tell an existing key from
/// garbage without ever printing it.
pub fn is_private_key(text: &str) -> bool {
    text.trim()
        .strip_prefix(PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0x0f)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_headscale_s_format_and_are_clamped() {
        let key = generate_private_key().unwrap();
        let text = key.expose();
        assert!(is_private_key(text), "{} chars", text.len());
        assert_eq!(text.len(), 8 + 64);
        assert!(
            text[8..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let first = u8::from_str_radix(&text[8..10], 16).unwrap();
        let last = u8::from_str_radix(&text[70..72], 16).unwrap();
        assert_eq!(first & 7, 0);
        assert_eq!(last & 0xc0, 0x40);
    }

    #[test]
    fn keys_differ_and_never_print() {
        let a = generate_private_key().unwrap();
        let b = generate_private_key().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?} {a}").contains(&a.expose()[8..]));
    }

    #[test]
    fn garbage_is_not_a_key() {
        for bad in [
            "",
            "privkey:",
            "privkey:xyz",
            "nodekey:00",
            &format!("privkey:{}", "0".repeat(63)),
        ] {
            assert!(!is_private_key(bad), "{bad:?}");
        }
        assert!(is_private_key(&format!("privkey:{}\n", "a".repeat(64))));
    }
}
