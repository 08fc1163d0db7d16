//! How long to wait before each retry.
//!
//! Every delay is jittered, at every step including the cap, so that retries from many clients
//! do not line up (Linkerd's and Finagle's backoffs lose their jitter once capped).

use std::time::Duration;

use crate::error::BuildError;
use crate::rng::Rng;

/// A retry backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// Exponential with full jitter, as Envoy does it: retry `n` (from 1) waits a uniform random
    /// time in `[0, min(base · 2^(n−1), max))`. Default: base 25 ms, max 250 ms (Envoy, Linkerd).
    Exponential {
        /// The first ceiling.
        base: Duration,
        /// The largest ceiling.
        max: Duration,
    },
    /// gRPC's (gRFC A6 as revised in 2024): retry `n` waits
    /// `min(initial · multiplier^(n−1), max) · U(0.8, 1.2)`.
    Grpc {
        /// The first delay before jitter.
        initial: Duration,
        /// The growth factor per retry.
        multiplier: f64,
        /// The largest delay before jitter.
        max: Duration,
    },
    /// No wait.
    None,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// Exponential full-jitter backoff; `base` must be at least 1 ms and `max` at least `base`
    /// (checked when the policy is built).
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff::Exponential { base, max }
    }

    /// gRPC-style backoff; `initial` above zero, `max` at least `initial`, `multiplier` from 1
    /// to 100 (checked when the policy is built).
    pub fn grpc(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Backoff::Grpc {
            initial,
            multiplier,
            max,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), BuildError> {
        let hour = Duration::from_secs(3_600);
        match *self {
            Backoff::Exponential { base, max }
                if base < Duration::from_millis(1) || max < base || max > hour =>
            {
                Err(BuildError::InvalidConfig(format!(
                    "exponential backoff base {base:?}, max {max:?}: base must be at least 1ms, max between base and 1h"
                )))
            }
            Backoff::Grpc {
                initial,
                multiplier,
                max,
            } if initial.is_zero()
                || max < initial
                || max > hour
                || !(1.0..=100.0).contains(&multiplier) =>
            {
                Err(BuildError::InvalidConfig(format!(
                    "grpc backoff initial {initial:?}, multiplier {multiplier}, max {max:?}: initial above 0, max between initial and 1h, multiplier from 1 to 100"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The largest delay retry `retry` (from 1) can get, before jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(63) as i32;
        match *self {
            Backoff::Exponential { base, max } => base.mul_f64(2f64.powi(exponent)).min(max),
            Backoff::Grpc {
                initial,
                multiplier,
                max,
            } => initial.mul_f64(multiplier.powi(exponent).min(1e9)).min(max),
            Backoff::None => Duration::ZERO,
        }
    }

    /// The delay before retry `retry` (from 1).
    pub(crate) fn delay(&self, retry: u32, rng: &Rng) -> Duration {
        let ceiling = self.ceiling(retry);
        match self {
            Backoff::Exponential { .. } => ceiling.mul_f64(rng.unit()),
            Backoff::Grpc { .. } => ceiling.mul_f64(0.8 + 0.4 * rng.unit()),
            Backoff::None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_ceilings_double_up_to_the_cap() {
        let backoff = Backoff::default();
        let ceilings: Vec<_> = (1..=6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [25 * MS, 50 * MS, 100 * MS, 200 * MS, 250 * MS, 250 * MS]
        );
    }

    #[test]
    fn exponential_delays_fill_the_window_below_each_ceiling() {
        let backoff = Backoff::default();
        let rng = Rng::seeded(1);
        for n in 1..=6 {
            let ceiling = backoff.ceiling(n);
            let delays: Vec<_> = (0..2_000).map(|_| backoff.delay(n, &rng)).collect();
            assert!(delays.iter().all(|d| *d < ceiling), "retry {n}");
            // Full jitter: both ends of the window are used, even at the cap.
            assert!(delays.iter().any(|d| *d < ceiling / 10), "retry {n}");
            assert!(delays.iter().any(|d| *d > ceiling * 9 / 10), "retry {n}");
        }
    }

    #[test]
    fn grpc_delays_stay_within_twenty_percent() {
        let backoff = Backoff::grpc(100 * MS, 1.6, 1_000 * MS);
        backoff.validate().unwrap();
        assert_eq!(backoff.ceiling(1), 100 * MS);
        assert_eq!(backoff.ceiling(2), 160 * MS);
        assert_eq!(backoff.ceiling(3), 256 * MS);
        assert_eq!(backoff.ceiling(10), 1_000 * MS);
        let rng = Rng::seeded(2);
        for n in [1, 3, 10] {
            let ceiling = backoff.ceiling(n);
            for _ in 0..2_000 {
                let d = backoff.delay(n, &rng);
                assert!(
                    d >= ceiling.mul_f64(0.8) && d <= ceiling.mul_f64(1.2),
                    "{d:?}"
                );
            }
        }
    }

    #[test]
    fn invalid_backoffs_are_rejected() {
        assert!(
            Backoff::exponential(Duration::ZERO, 10 * MS)
                .validate()
                .is_err()
        );
        assert!(Backoff::exponential(20 * MS, 10 * MS).validate().is_err());
        assert!(Backoff::grpc(10 * MS, 0.5, 100 * MS).validate().is_err());
        assert!(
            Backoff::grpc(10 * MS, f64::NAN, 100 * MS)
                .validate()
                .is_err()
        );
        assert!(
            Backoff::grpc(Duration::ZERO, 2.0, 100 * MS)
                .validate()
                .is_err()
        );
        assert!(Backoff::default().validate().is_ok());
    }
}
