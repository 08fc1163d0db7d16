//! Per-endpoint outlier state: atomics only, written inline by requests and by the sweep.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::EjectionReason;

/// `state` phases (low two bits); the reason's index sits above them.
const IN_SERVICE: u32 = 0;
/// An ejection attempt holds the host while it checks the gate and rolls; only its owner leaves
/// this phase, to `EJECTED` or back to `IN_SERVICE`.
const CLAIMED: u32 = 1;
const EJECTED: u32 = 2;
const PHASE_MASK: u32 = 0b11;
const REASON_SHIFT: u32 = 2;

/// `unejected_at` before the first un-ejection.
const NEVER: u64 = u64::MAX;
/// `success_rate` when the last sweep computed none (an f64 NaN pattern no division yields).
const NO_RATE: u64 = u64::MAX;

/// Requests and successes in one interval, packed in one word (total high, successes low) so
/// that the sweep takes both at once.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    live: AtomicU64,
    frozen: AtomicU64,
}

/// A bucket's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) total: u64,
    pub(super) successes: u64,
}

impl Counts {
    /// The success rate in percent, as Envoy computes it (`100·successes/total`).
    pub(super) fn rate(self) -> f64 {
        self.successes as f64 * 100.0 / self.total as f64
    }
}

impl Bucket {
    /// Counts one request. A count that would overflow 32 bits halves both halves first, which
    /// keeps the rate (a 10 s interval would need 400 million requests per second to get there).
    fn record(&self, success: bool) {
        let _ = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (mut total, mut successes) = ((word >> 32) as u32, word as u32);
                if total == u32::MAX {
                    total /= 2;
                    successes /= 2;
                }
                let total = u64::from(total + 1);
                let successes = u64::from(successes + u32::from(success));
                Some(total << 32 | successes)
            });
    }

    /// Ends the interval: what was counted becomes the frozen data the tests read, and counting
    /// starts afresh. Every request lands in exactly one interval.
    fn freeze(&self) {
        let word = self.live.swap(0, Ordering::AcqRel);
        self.frozen.store(word, Ordering::Release);
    }

    /// The last interval's counts.
    pub(super) fn frozen(&self) -> Counts {
        let word = self.frozen.load(Ordering::Acquire);
        Counts {
            total: word >> 32,
            successes: word & u64::from(u32::MAX),
        }
    }
}

/// One endpoint's outlier state.
///
/// Times are nanoseconds since the host's creation (`epoch`), so that they fit in atomics; any
/// earlier instant counts as the epoch. The ejection itself is a small state machine in `state`:
/// in service → claimed (by the one attempt that won the compare-and-swap) → ejected, or back to
/// in service if the attempt was refused; only a sweep takes an ejected host back.
#[derive(Debug)]
pub(crate) struct OutlierHost {
    epoch: Instant,
    state: AtomicU32,
    ejected_at: AtomicU64,
    ejection_length: AtomicU64,
    unejected_at: AtomicU64,
    times_ejected: AtomicU32,
    multiplier: AtomicU32,
    pub(super) consecutive_5xx: AtomicU32,
    pub(super) consecutive_gateway_failure: AtomicU32,
    pub(super) consecutive_local_origin_failure: AtomicU32,
    pub(super) external: Bucket,
    pub(super) local: Bucket,
    success_rate: AtomicU64,
}

impl Default for OutlierHost {
    fn default() -> Self {
        Self::new()
    }
}

/// One endpoint's outlier state at a point in time, for the balancer's snapshot.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierHostSnapshot {
    /// Whether the endpoint is ejected (out of the pick set until a sweep takes it back).
    pub ejected: bool,
    /// Why it is ejected, while it is.
    pub reason: Option<EjectionReason>,
    /// Ejection time left, while ejected: zero once it has run out and the endpoint waits for the
    /// next sweep.
    pub ejected_for: Option<Duration>,
    /// How many times the endpoint has been ejected (Envoy's `num_ejections`).
    pub times_ejected: u32,
    /// The external-origin success rate (percent) the last sweep computed, if the endpoint had
    /// the request volume of the success-rate or failure-percentage test and was not ejected.
    pub success_rate: Option<f64>,
}

impl OutlierHost {
    /// A host in service, with no history.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            state: AtomicU32::new(IN_SERVICE),
            ejected_at: AtomicU64::new(0),
            ejection_length: AtomicU64::new(0),
            unejected_at: AtomicU64::new(NEVER),
            times_ejected: AtomicU32::new(0),
            multiplier: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway_failure: AtomicU32::new(0),
            consecutive_local_origin_failure: AtomicU32::new(0),
            external: Bucket::default(),
            local: Bucket::default(),
            success_rate: AtomicU64::new(NO_RATE),
        }
    }

    /// Whether the host is ejected.
    pub(crate) fn is_ejected(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE_MASK == EJECTED
    }

    /// The host's state at `now`.
    pub(crate) fn snapshot(&self, now: Instant) -> OutlierHostSnapshot {
        let state = self.state.load(Ordering::Acquire);
        let ejected = state & PHASE_MASK == EJECTED;
        let (reason, ejected_for) = if ejected {
            let due = self.due_at();
            let left = due.saturating_sub(self.nanos(now));
            (
                EjectionReason::from_index(state >> REASON_SHIFT),
                Some(Duration::from_nanos(left)),
            )
        } else {
            (None, None)
        };
        let rate = self.success_rate.load(Ordering::Relaxed);
        OutlierHostSnapshot {
            ejected,
            reason,
            ejected_for,
            times_ejected: self.times_ejected.load(Ordering::Relaxed),
            success_rate: (rate != NO_RATE).then(|| f64::from_bits(rate)),
        }
    }
}

impl OutlierHost {
    /// `now` in nanoseconds since the host's epoch (saturating at both ends).
    pub(super) fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the host is in service (not ejected, and no ejection attempt holds it).
    pub(super) fn in_service(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE_MASK == IN_SERVICE
    }

    /// Takes the host for an ejection attempt; false if it is ejected or another attempt holds
    /// it.
    pub(super) fn claim(&self) -> bool {
        self.state
            .compare_exchange(IN_SERVICE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives back a claimed host: the attempt was refused.
    pub(super) fn release(&self) {
        self.state.store(IN_SERVICE, Ordering::Release);
    }

    /// Ejects a claimed host at `now_ns` for `length_ns`.
    pub(super) fn commit_ejection(&self, reason: EjectionReason, now_ns: u64, length_ns: u64) {
        self.ejected_at.store(now_ns, Ordering::Relaxed);
        self.ejection_length.store(length_ns, Ordering::Relaxed);
        let _ = self
            .times_ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
        self.state
            .store(EJECTED | reason.index() << REASON_SHIFT, Ordering::Release);
    }

    /// How long the host has been ejected, if it is and `now_ns − ejected_at ≥ length`.
    pub(super) fn due_for_return(&self, now_ns: u64) -> Option<u64> {
        if !self.is_ejected() {
            return None;
        }
        let elapsed = now_ns.saturating_sub(self.ejected_at.load(Ordering::Relaxed));
        (elapsed >= self.ejection_length.load(Ordering::Relaxed)).then_some(elapsed)
    }

    /// Takes an ejected host back (sweeps only): resets the three consecutive counters, as Envoy
    /// does so that a few new errors do not eject it again at once.
    pub(super) fn uneject(&self, now_ns: u64) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state & PHASE_MASK != EJECTED
            || self
                .state
                .compare_exchange(state, IN_SERVICE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
        self.unejected_at.store(now_ns, Ordering::Relaxed);
        true
    }

    /// When the current ejection ends, in nanoseconds since the epoch.
    fn due_at(&self) -> u64 {
        self.ejected_at
            .load(Ordering::Relaxed)
            .saturating_add(self.ejection_length.load(Ordering::Relaxed))
    }

    /// Nanoseconds since the last un-ejection, if there was one.
    pub(super) fn since_unejection(&self, now_ns: u64) -> Option<u64> {
        let at = self.unejected_at.load(Ordering::Relaxed);
        (at != NEVER).then(|| now_ns.saturating_sub(at))
    }

    /// How many times the host has been ejected.
    pub(super) fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// The ejection-time multiplier (Envoy's `ejectTimeBackoff`).
    #[cfg(test)]
    pub(super) fn multiplier(&self) -> u32 {
        self.multiplier.load(Ordering::Relaxed)
    }

    /// Raises the multiplier by one if `may_grow(current)`; returns the new value.
    pub(super) fn grow_multiplier(&self, may_grow: impl Fn(u32) -> bool) -> u32 {
        match self
            .multiplier
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                may_grow(k).then(|| k.saturating_add(1))
            }) {
            Ok(old) => old.saturating_add(1),
            Err(unchanged) => unchanged,
        }
    }

    /// Lowers the multiplier by one, not below zero.
    pub(super) fn decay_multiplier(&self) {
        let _ = self
            .multiplier
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1));
    }

    /// Counts one outcome in the external-origin bucket.
    pub(super) fn count_external(&self, success: bool) {
        self.external.record(success);
    }

    /// Counts one outcome in the local-origin bucket.
    pub(super) fn count_local(&self, success: bool) {
        self.local.record(success);
    }

    /// Ends the interval for both buckets and forgets the last success rate.
    pub(super) fn freeze(&self) {
        self.external.freeze();
        self.local.freeze();
        self.success_rate.store(NO_RATE, Ordering::Relaxed);
    }

    /// Records the success rate the sweep computed, for snapshots.
    pub(super) fn set_success_rate(&self, rate: f64) {
        self.success_rate.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// Adds one to a consecutive counter and returns the new count (wrapping is harmless: only
/// equality with the configured count fires).
pub(super) fn bump(counter: &AtomicU32) -> u32 {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

/// Resets a consecutive counter.
pub(super) fn reset(counter: &AtomicU32) {
    counter.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_halves_and_keeps_its_rate() {
        let bucket = Bucket::default();
        bucket.live.store(
            u64::from(u32::MAX) << 32 | u64::from(u32::MAX - 1),
            Ordering::Relaxed,
        );
        bucket.record(true);
        bucket.freeze();
        assert_eq!(
            bucket.frozen(),
            Counts {
                total: u64::from(u32::MAX / 2 + 1),
                successes: u64::from((u32::MAX - 1) / 2 + 1),
            }
        );
        bucket.freeze();
        assert_eq!(
            bucket.frozen(),
            Counts {
                total: 0,
                successes: 0
            }
        );
    }
}
