//! Per-object exponential backoff with jitter for transient failures.

use std::time::Duration;

/// The wait before retry number `failures` (1 = first failure): `base * 2^(n-1)`,
/// capped at `max`, then reduced by up to `jitter` (a fraction in 0..=1 picked by
/// the caller) so that many failing objects do not retry in lockstep.
pub fn delay(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    // Take off at most a quarter: the schedule stays recognisable.
    raw.mul_f64(1.0 - 0.25 * jitter)
}

/// A jitter fraction in 0..1 without a random-number dependency: std's per-process
/// random hasher keys are enough to spread retries.
pub fn jitter() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let h = RandomState::new().hash_one(nanos);
    (h % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        let table = [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (40, 60)];
        for (n, want) in table {
            assert_eq!(
                delay(n, base, max, 0.0),
                Duration::from_secs(want),
                "failures={n}"
            );
        }
    }

    #[test]
    fn jitter_shortens_by_at_most_a_quarter() {
        let d = delay(3, Duration::from_secs(4), Duration::from_secs(600), 1.0);
        assert_eq!(d, Duration::from_secs(12));
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
