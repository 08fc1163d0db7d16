//! Peak exponentially weighted moving average of round-trip times, without a lock.
//!
//! The algorithm is Finagle's `PeakEwma`, as tower and linkerd2-proxy use it:
//!
//! - a sample **above** the current estimate replaces it at once (the "peak"), so an endpoint that
//!   slows down is avoided immediately;
//! - a sample at or below it is blended in: `estimate · w + rtt · (1 − w)` with
//!   `w = e^(−Δt / decay)`, where `Δt` is the time since the previous sample, so an endpoint that
//!   speeds up regains traffic smoothly over about one decay period;
//! - reading the estimate decays it toward zero by the same factor for the time since the last
//!   sample, so an endpoint that has been idle becomes attractive again and gets probed. Reading
//!   does not change the stored state.
//!
//! A new endpoint starts at a default RTT (30 ms by default, as Linkerd and tower's example use).
//! Unlike tower's, the default is only a placeholder: the **first real sample replaces it**.
//! Blending the first samples into a made-up prior would hold every new endpoint near the default
//! for about one decay period (10 s): fast endpoints would look as slow as the default, and a
//! slow endpoint would keep getting traffic it should not. How the balancer prices an endpoint
//! that has no sample yet is described in [`load`](crate::load).
//!
//! # Representation
//!
//! The estimate (an `f32` of nanoseconds) and the time of the last sample (a `u32` of
//! milliseconds since the tracker was created) share one `AtomicU64`, so an update is one
//! compare-and-swap and readers always see a consistent pair. tower's `PeakEwma` keeps the same
//! state behind a `std::sync::Mutex`. Millisecond timestamps lose nothing that matters: the
//! decay is a function of elapsed time, so many samples within one millisecond amount to the
//! same total decay as they would with exact timestamps. The millisecond counter wraps after
//! about 49 days without a sample; past the decay period the estimate is near zero either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A lock-free PeakEWMA estimate of an endpoint's round-trip time.
///
/// ```
/// use std::time::Duration;
/// use proxyless::load::PeakEwma;
/// use tokio::time::Instant;
///
/// let start = Instant::now();
/// let rtt = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10), start);
/// rtt.observe(Duration::from_millis(100), start); // a peak replaces the estimate
/// assert_eq!(rtt.estimate(start).as_millis(), 100);
/// ```
#[derive(Debug)]
pub struct PeakEwma {
    /// High 32 bits: estimate in nanoseconds as `f32` bits, negated while it is still the default;
    /// low 32 bits: milliseconds since `epoch`.
    state: AtomicU64,
    epoch: Instant,
    decay_ms: f64,
}

impl PeakEwma {
    /// A tracker starting at `default_rtt` that decays with time constant `decay`.
    ///
    /// A zero `decay` is treated as one millisecond; builders reject it before it gets here.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            // The sign bit marks "no sample yet"; estimates are never negative otherwise.
            state: AtomicU64::new(pack(-(default_rtt.as_nanos() as f32), 0)),
            epoch: now,
            decay_ms: (decay.as_secs_f64() * 1_000.0).max(1.0),
        }
    }

    /// Records one round-trip time measured at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        // Through f64: converting the u128 of `as_nanos` is a slow software routine.
        let sample = (rtt.as_secs_f64() * 1e9) as f32;
        let now_ms = self.millis(now);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (estimate, at) = unpack(current);
            let next = if estimate.is_sign_negative() || sample > estimate {
                sample
            } else {
                let w = self.weight(now_ms.wrapping_sub(at));
                (f64::from(estimate) * w + f64::from(sample) * (1.0 - w)) as f32
            };
            match self.state.compare_exchange_weak(
                current,
                pack(next, now_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The current estimate, decayed toward zero for the time since the last sample.
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.estimate_nanos(now).0 as u64)
    }

    /// Whether at least one round trip has been observed.
    pub fn has_sample(&self) -> bool {
        !unpack(self.state.load(Ordering::Relaxed))
            .0
            .is_sign_negative()
    }

    /// The current estimate in nanoseconds, and whether it comes from a real sample.
    pub(crate) fn estimate_nanos(&self, now: Instant) -> (f64, bool) {
        let (estimate, at) = unpack(self.state.load(Ordering::Relaxed));
        let sampled = !estimate.is_sign_negative();
        let estimate = f64::from(estimate.abs());
        let elapsed = self.millis(now).wrapping_sub(at);
        if elapsed == 0 {
            (estimate, sampled)
        } else {
            (estimate * self.weight(elapsed), sampled)
        }
    }

    fn weight(&self, elapsed_ms: u32) -> f64 {
        if elapsed_ms == 0 {
            return 1.0;
        }
        (-f64::from(elapsed_ms) / self.decay_ms).exp()
    }

    fn millis(&self, now: Instant) -> u32 {
        // Truncation is the documented wrap-around of the sample clock.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }
}

fn pack(estimate_ns: f32, at_ms: u32) -> u64 {
    (u64::from(estimate_ns.to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(state: u64) -> (f32, u32) {
    (f32::from_bits((state >> 32) as u32), state as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn close(actual: Duration, expected_ms: f64) {
        let actual_ms = actual.as_secs_f64() * 1_000.0;
        assert!(
            (actual_ms - expected_ms).abs() < 0.05,
            "expected {expected_ms} ms, got {actual_ms} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_the_default_rtt() {
        let now = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), now);
        close(rtt.estimate(now), 30.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sample_replaces_the_default() {
        let start = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        tokio::time::advance(MS).await;
        rtt.observe(5 * MS, Instant::now());
        close(rtt.estimate(Instant::now()), 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsampled_default_decays_like_an_estimate() {
        let start = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        tokio::time::advance(Duration::from_secs(10)).await;
        close(rtt.estimate(Instant::now()), 30.0 * (-1.0f64).exp());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_replaces_the_estimate() {
        let now = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), now);
        rtt.observe(250 * MS, now);
        close(rtt.estimate(now), 250.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_decays_toward_zero_without_changing_state() {
        let start = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        rtt.observe(100 * MS, start);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        close(rtt.estimate(now), 100.0 * (-1.0f64).exp());
        close(rtt.estimate(now), 100.0 * (-1.0f64).exp());
        tokio::time::advance(Duration::from_secs(10)).await;
        close(rtt.estimate(Instant::now()), 100.0 * (-2.0f64).exp());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_sample_blends_by_elapsed_time() {
        let start = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        rtt.observe(100 * MS, start);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        rtt.observe(10 * MS, now);
        let w = (-1.0f64).exp();
        close(rtt.estimate(now), 100.0 * w + 10.0 * (1.0 - w));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_sample_in_the_same_instant_changes_nothing() {
        let now = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), now);
        rtt.observe(100 * MS, now);
        rtt.observe(MS, now);
        close(rtt.estimate(now), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn many_small_steps_decay_like_one_big_step() {
        let start = Instant::now();
        let rtt = PeakEwma::new(30 * MS, Duration::from_secs(10), start);
        rtt.observe(100 * MS, start);
        for _ in 0..1_000 {
            tokio::time::advance(10 * MS).await;
            rtt.observe(20 * MS, Instant::now());
        }
        // Ten seconds of 20 ms samples pull 100 ms most of the way down: 20 + 80·e^-1.
        close(rtt.estimate(Instant::now()), 20.0 + 80.0 * (-1.0f64).exp());
    }
}
