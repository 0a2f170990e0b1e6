//! Capped exponential backoff with jitter (pure; the caller supplies the randomness).

use std::time::Duration;

/// Retry delays: `base * 2^attempt`, capped, then scaled by a jitter factor in `[0.5, 1.0)` so
/// that many partitions retrying the same Redis do not hit it in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0 = first retry). `unit` is a uniform random number in
    /// `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(self.cap);
        capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 0.999_999))
    }
}

/// A uniform random number in `[0, 1)` from the std library's randomly keyed hasher (jitter
/// needs no cryptographic quality and no extra dependency).
pub fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_then_stay_at_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(
            b.delay(0, 0.999_999_9),
            Duration::from_millis(100).mul_f64(0.9999995)
        );
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(1));
        assert!(b.delay(30, 0.99) < Duration::from_secs(2));
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| jitter_unit()).collect();
        assert!(samples.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(samples.iter().any(|u| (u - samples[0]).abs() > 1e-9));
    }
}
