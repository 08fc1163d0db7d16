//! Retry budgets: how many retries a client may add on top of its requests.
//!
//! A retry policy bounds one request's attempts; a budget bounds the whole client's, so that when
//! a service is failing, retries cannot multiply the load on it (a retry storm). Two kinds:
//!
//! - [`TpsBudget`] (the default), Finagle's and Linkerd's: every request deposits a fraction of a
//!   retry, every retry withdraws one, deposits expire after a window, and a floor allows a
//!   minimum rate of retries at low traffic. Defaults: 20 % of requests plus 10 retries per
//!   second over a 10 s window. Offered load stays at most `1.2 × requests + 10/s`.
//! - [`GrpcThrottle`], gRPC's retry throttling (gRFC A6): a token bucket that loses a token per
//!   failure and gains `token_ratio` per success; retries stop while it is half empty or less.
//!
//! Both are lock-free (atomics only) and exact in integer arithmetic: tower's `TpsBudget` rounds
//! the withdrawal cost down to an integer, so 30 % acts as 33 % and 60 % as 100 % (tower#857);
//! here, as in Finagle, a retry costs 1000 units and a request deposits `ratio × 1000`, exact to
//! a tenth of a percent.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::BuildError;

/// A budget shared by every request through one retry layer.
///
/// The retry layer calls [`on_request`](Self::on_request) once per original request,
/// [`on_failure`](Self::on_failure) for each attempt that failed in a way the policy retries,
/// [`on_success`](Self::on_success) when a request ends without such a failure, and
/// [`try_retry`](Self::try_retry) before each retry. Implement it to plug in your own.
pub trait RetryBudget: Send + Sync + 'static {
    /// An original request is being sent.
    fn on_request(&self) {}

    /// An attempt failed in a way the policy would retry.
    fn on_failure(&self) {}

    /// A request ended without a retryable failure.
    fn on_success(&self) {}

    /// Whether one more retry may be sent now; when it may, its cost is taken.
    fn try_retry(&self) -> bool;

    /// The retries the budget would allow right now, for snapshots.
    fn available(&self) -> f64;
}

/// No budget: the policy's attempt limit is the only bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl RetryBudget for Unlimited {
    fn try_retry(&self) -> bool {
        true
    }

    fn available(&self) -> f64 {
        f64::INFINITY
    }
}

/// The cost of one retry, in budget units (Finagle's scale).
const RETRY_COST: i64 = 1_000;
const SLOTS: usize = 10;
/// Slot words: the low 32 bits hold a signed amount (saturating), the high 32 bits the slot's
/// generation, which wraps only after 2^32 slots (136 years of 1 s slots).
const VALUE_BITS: u32 = 32;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const VALUE_MIN: i64 = i32::MIN as i64;
const VALUE_MAX: i64 = i32::MAX as i64;
const TAG_MASK: u64 = u32::MAX as u64;

/// Finagle's retry budget, as Linkerd uses it: deposits per request, withdrawals per retry.
///
/// Over any window of `ttl`, retries ≤ `ratio` × requests + `min_per_sec` × `ttl` (the floor,
/// which a cold client may spend at once, as in Finagle and tower).
///
/// ```
/// use std::time::Duration;
/// use proxyless::retry::{RetryBudget, TpsBudget};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // No floor: exactly 30 % of requests may be retried.
/// let budget = TpsBudget::new(Duration::from_secs(10), 0, 0.3).unwrap();
/// for _ in 0..10 {
///     budget.on_request();
/// }
/// assert!(budget.try_retry() && budget.try_retry() && budget.try_retry());
/// assert!(!budget.try_retry());
/// # }
/// ```
#[derive(Debug)]
pub struct TpsBudget {
    start: Instant,
    /// Slot length in nanoseconds, at least 1: `u64` keeps the per-request division cheap.
    slot_nanos: u64,
    slots: [AtomicU64; SLOTS],
    deposit: i64,
    reserve: i64,
    ttl: Duration,
    min_per_sec: u32,
    ratio: f64,
}

impl Default for TpsBudget {
    /// 20 % of requests plus 10 retries per second, over a 10 s window (Finagle, Linkerd).
    fn default() -> Self {
        Self::build(Duration::from_secs(10), 10, 0.2)
    }
}

impl TpsBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_sec` retries per second,
    /// with deposits expiring after `ttl`.
    ///
    /// `ttl` must be 1 s to 60 s and `ratio` 0 to 1000 (Linkerd's bounds).
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, BuildError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(BuildError::InvalidConfig(format!(
                "retry budget ttl is {ttl:?}; it must be between 1s and 60s"
            )));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(BuildError::InvalidConfig(format!(
                "retry budget ratio is {ratio}; it must be between 0 and 1000"
            )));
        }
        Ok(Self::build(ttl, min_per_sec, ratio))
    }

    fn build(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        let reserve = (f64::from(min_per_sec) * ttl.as_secs_f64() * RETRY_COST as f64) as i64;
        Self {
            start: Instant::now(),
            slot_nanos: u64::try_from((ttl / SLOTS as u32).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            slots: Default::default(),
            deposit: (ratio * RETRY_COST as f64).round() as i64,
            reserve,
            ttl,
            min_per_sec,
            ratio,
        }
    }

    /// The window over which deposits count.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Retries per request.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Retries per second allowed whatever the traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    fn generation(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        // Saturates only after 584 years.
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) / self.slot_nanos
    }

    fn add(&self, amount: i64) {
        let generation = self.generation();
        let slot = &self.slots[(generation % SLOTS as u64) as usize];
        let tag = generation & TAG_MASK;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let base = if current >> VALUE_BITS == tag {
                unpack_value(current)
            } else {
                0 // the slot holds an expired window: start it afresh
            };
            let next = (tag << VALUE_BITS) | pack_value(base.saturating_add(amount));
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Reserve plus every unexpired deposit and withdrawal, in budget units.
    fn balance(&self) -> i64 {
        let generation = self.generation();
        let mut sum = self.reserve;
        for (index, slot) in self.slots.iter().enumerate() {
            // The newest generation that maps to this slot, if it is inside the window.
            let behind = (generation + SLOTS as u64 - index as u64) % SLOTS as u64;
            let Some(expected) = generation.checked_sub(behind) else {
                continue;
            };
            let word = slot.load(Ordering::Relaxed);
            if word >> VALUE_BITS == expected & TAG_MASK {
                sum = sum.saturating_add(unpack_value(word));
            }
        }
        sum
    }
}

fn pack_value(value: i64) -> u64 {
    (value.clamp(VALUE_MIN, VALUE_MAX) as u64) & VALUE_MASK
}

fn unpack_value(word: u64) -> i64 {
    // Sign-extend the low 48 bits.
    (((word & VALUE_MASK) << (64 - VALUE_BITS)) as i64) >> (64 - VALUE_BITS)
}

impl RetryBudget for TpsBudget {
    fn on_request(&self) {
        if self.deposit > 0 {
            self.add(self.deposit);
        }
    }

    fn try_retry(&self) -> bool {
        // Check-then-take: two racing retries may both pass with one retry's worth left, an
        // overdraft of at most one retry per racing caller, as in Finagle.
        if self.balance() >= RETRY_COST {
            self.add(-RETRY_COST);
            true
        } else {
            false
        }
    }

    fn available(&self) -> f64 {
        (self.balance() as f64 / RETRY_COST as f64).max(0.0)
    }
}

/// gRPC retry throttling (gRFC A6): a token bucket shared by all requests.
///
/// Tokens start at `max_tokens`. Each retryable failure takes one token (not below zero), each
/// success adds `token_ratio` (not above the maximum), and a retry is allowed only while more
/// than half the tokens remain. Tokens are counted in thousandths, as gRPC C-core does, so the
/// ratio keeps three decimals (0.5466 acts as 0.546).
///
/// ```
/// use proxyless::retry::{GrpcThrottle, RetryBudget};
///
/// // gRFC A6's example: 4 tokens, ratio 1.6.
/// let throttle = GrpcThrottle::new(4.0, 1.6).unwrap();
/// throttle.on_failure(); // 3 tokens > 2: retries allowed
/// assert!(throttle.try_retry());
/// throttle.on_failure(); // 2 tokens, not > 2: throttled
/// assert!(!throttle.try_retry());
/// throttle.on_success(); // 3.6 tokens
/// assert!(throttle.try_retry());
/// ```
#[derive(Debug)]
pub struct GrpcThrottle {
    milli_tokens: AtomicI64,
    max: i64,
    ratio: i64,
}

impl GrpcThrottle {
    /// A bucket of `max_tokens` (above 0, at most 1000) refilled by `token_ratio` (above 0) per
    /// success.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<Self, BuildError> {
        if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
            return Err(BuildError::InvalidConfig(format!(
                "retry throttling max_tokens is {max_tokens}; it must be above 0 and at most 1000"
            )));
        }
        let ratio = (token_ratio * 1000.0).trunc() as i64;
        if !(token_ratio > 0.0 && ratio > 0) {
            return Err(BuildError::InvalidConfig(format!(
                "retry throttling token_ratio is {token_ratio}; it must be at least 0.001"
            )));
        }
        let max = (max_tokens * 1000.0) as i64;
        Ok(Self {
            milli_tokens: AtomicI64::new(max),
            max,
            ratio,
        })
    }

    /// The tokens left.
    pub fn tokens(&self) -> f64 {
        self.milli_tokens.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn update(&self, f: impl Fn(i64) -> i64) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(f(t)));
    }
}

impl RetryBudget for GrpcThrottle {
    fn on_failure(&self) {
        self.update(|t| (t - 1000).max(0));
    }

    fn on_success(&self) {
        let max = self.max;
        self.update(|t| (t + self.ratio).min(max));
    }

    fn try_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Relaxed) * 2 > self.max
    }

    fn available(&self) -> f64 {
        self.tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_48_bits() {
        for v in [0, 1, -1, 1_000_000, -5_000_000, VALUE_MAX, VALUE_MIN] {
            assert_eq!(unpack_value(pack_value(v)), v);
        }
        assert_eq!(unpack_value(pack_value(i64::MAX)), VALUE_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_is_a_reserve_of_min_per_sec_times_ttl() {
        let budget = TpsBudget::default();
        let mut allowed = 0;
        while budget.try_retry() {
            allowed += 1;
        }
        assert_eq!(allowed, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_ratios_are_exact() {
        for (ratio, requests, expected) in
            [(0.3, 1_000, 300), (0.6, 1_000, 600), (0.15, 1_000, 150)]
        {
            let budget = TpsBudget::new(Duration::from_secs(10), 0, ratio).unwrap();
            for _ in 0..requests {
                budget.on_request();
            }
            let mut allowed = 0;
            while budget.try_retry() {
                allowed += 1;
            }
            assert_eq!(allowed, expected, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = TpsBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
        for _ in 0..5 {
            budget.on_request();
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(budget.available(), 5.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(budget.available(), 0.0);
        assert!(!budget.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_too() {
        let budget = TpsBudget::new(Duration::from_secs(10), 1, 0.0).unwrap();
        for _ in 0..10 {
            assert!(budget.try_retry());
        }
        assert!(!budget.try_retry());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.available(), 10.0);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(TpsBudget::new(Duration::from_millis(500), 10, 0.2).is_err());
        assert!(TpsBudget::new(Duration::from_secs(61), 10, 0.2).is_err());
        assert!(TpsBudget::new(Duration::from_secs(10), 10, -0.1).is_err());
        assert!(TpsBudget::new(Duration::from_secs(10), 10, f64::NAN).is_err());
        assert!(GrpcThrottle::new(0.0, 1.0).is_err());
        assert!(GrpcThrottle::new(1001.0, 1.0).is_err());
        assert!(GrpcThrottle::new(10.0, 0.0).is_err());
        assert!(GrpcThrottle::new(10.0, 0.0005).is_err());
        assert!(GrpcThrottle::new(f64::NAN, 1.0).is_err());
    }

    #[test]
    fn throttle_tokens_follow_grfc_a6() {
        // Milli-token arithmetic: the ratio keeps three decimals.
        let throttle = GrpcThrottle::new(10.0, 0.5466).unwrap();
        for _ in 0..4 {
            throttle.on_failure();
        }
        assert_eq!(throttle.tokens(), 6.0);
        assert!(throttle.try_retry());
        throttle.on_failure();
        assert_eq!(throttle.tokens(), 5.0);
        assert!(!throttle.try_retry(), "5 is not more than half of 10");
        throttle.on_success();
        assert_eq!(throttle.tokens(), 5.546);
        assert!(throttle.try_retry());
        for _ in 0..20 {
            throttle.on_failure();
        }
        assert_eq!(throttle.tokens(), 0.0, "never below zero");
        for _ in 0..100 {
            throttle.on_success();
        }
        assert_eq!(throttle.tokens(), 10.0, "never above the maximum");
    }
}
