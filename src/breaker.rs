//! Per-endpoint circuit breaker: stop sending to an endpoint that keeps failing, and let one
//! request at a time find out whether it has recovered.
//!
//! # The algorithm
//!
//! - **Closed.** Every request is admitted, and two triggers watch the outcomes:
//!   - *consecutive failures*: each failure adds one to a count and each
//!     [`Success`](Outcome::Success) sets it back to zero. A [`Throttled`](Outcome::Throttled)
//!     outcome (429, gRPC RESOURCE_EXHAUSTED) does neither: an endpoint that sheds load is alive,
//!     but its 429s say nothing about whether the failures around them have stopped. When the
//!     count reaches N (default 5), the breaker opens.
//!   - *failure rate* (off by default): a sliding window of `window`, kept as ten buckets of
//!     `window / 10`, counts every outcome as a request and every failure, throttled ones
//!     included, as a failure. When a failure leaves the window with at least `min_requests`
//!     requests and `failures / requests ≥ threshold`, the breaker opens. The rate is checked
//!     when a failure is recorded, so a success never opens the breaker.
//! - **Open.** Every request is rejected until the open period ends. The k-th opening in a row
//!   (k = 1 when the breaker trips, plus one for each failed probe) lasts
//!   `d = min(max, min · 2^(k−1))`, jittered uniformly into `[d/2, d]` (whole milliseconds,
//!   from `⌈d/2⌉` to `d`).
//! - **Half-open.** Once the open period has passed, exactly one request is admitted, as the
//!   probe; everyone else is still rejected. A successful probe closes the breaker, with the
//!   count, the window and k all reset. A failed probe, throttled included, opens it again with
//!   the next, longer period. A probe dropped without an outcome lets the next request probe.
//!
//! Outcomes of requests admitted while the breaker was closed that finish after it opened are
//! ignored: they were sent before the trip and add nothing to what tripped it. (One that takes
//! so long that the breaker has closed again by then is counted as a fresh outcome: an
//! admission does not say which closed period it came from.)
//!
//! # Defaults and precedent
//!
//! | setting | default | precedent |
//! |---|---|---|
//! | consecutive failures | 5 | Finagle's `FailureAccrual` (5); Linkerd's consecutive-failures accrual uses 7 |
//! | failure rate | off | Linkerd's unified accrual: 10 buckets over 10 s, at least 5 requests, success rate 0.8, 429 counted as a failure |
//! | open period | 1 s doubling to 60 s, jitter ½ | Linkerd (1 s → 60 s, ×2, jitter 0.5); Finagle uses 5 s → 300 s |
//!
//! The jitter is *equal jitter* (the name is from Marc Brooker's "Exponential Backoff And
//! Jitter", AWS Architecture Blog, 2015): half of each period is fixed and half is random. It is
//! kept at every step, **including the cap**. Linkerd's `exp-backoff` clamps its jitter to
//! `max − min`, which leaves none once the period reaches 60 s, and Finagle's backoffs become a
//! constant at their cap. Without jitter, the clients whose breakers opened together (an
//! endpoint restarting, a partition) would probe it together every 60 s; here the capped periods
//! are spread over 30 s to 60 s.
//!
//! # Representation
//!
//! The breaker's state is one `AtomicU64`, so every transition is a single compare-and-swap and
//! a reader always sees a consistent state:
//!
//! | bits | closed | open, or probe in flight |
//! |---|---|---|
//! | 63–62 | tag 0 | tag 1 (open) or 2 (probe in flight) |
//! | 61–50 | consecutive failures | k, the opening number (saturates at 4095) |
//! | 49–42 | epoch: how many times it has closed, mod 256 | the same |
//! | 41–0 | 0 | end of the open period, in ms since the breaker was created |
//!
//! Half-open is not stored: it is "open, and the end of the period has passed". The single
//! probe is claimed by the compare-and-swap from open to probe-in-flight, so among any number of
//! racing callers exactly one wins it. The end of the period is computed from the current time
//! rounded *up* to the millisecond, so a period is never cut short; 42 bits of milliseconds last
//! 139 years.
//!
//! Each window bucket is also one `AtomicU64`: an 8-bit epoch, a 16-bit slot number, and 20-bit
//! counts of requests and failures (saturating at 1,048,575 per bucket). A bucket whose epoch or
//! slot is not the one expected counts as empty, so an old slot is started afresh when it is
//! reused, and closing the breaker (which advances the epoch) empties the whole window without
//! touching a bucket.
//!
//! On the request path this costs, per request: one atomic load to admit it while closed; one
//! load to record a success with no count to reset; one compare-and-swap to record a failure.
//! With the rate trigger on, every outcome also takes one compare-and-swap on its bucket, and a
//! failure ten loads to sum the window. No lock, task or channel:
//! Linkerd's breaker is a task per endpoint fed by a bounded channel, which drops outcomes when
//! it is full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::error::BuildError;
use crate::rng::Rng;

/// Breaker settings; build them with [`BreakerConfig::builder`].
///
/// Defaults: open after 5 consecutive failures; no failure-rate trigger; open for 1 s doubling
/// up to 60 s, with equal jitter. See the [module docs](self) for the algorithm and precedent.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    consecutive_failures: u32,
    failure_rate: Option<FailureRate>,
    backoff_min: Duration,
    backoff_max: Duration,
}

#[derive(Clone, Copy, Debug)]
struct FailureRate {
    threshold: f64,
    window: Duration,
    min_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: None,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: Self::default(),
        }
    }

    /// A breaker that never opens: both triggers off.
    pub fn disabled() -> Self {
        Self {
            consecutive_failures: 0,
            failure_rate: None,
            ..Self::default()
        }
    }

    /// Whether the breaker can open at all: at least one trigger is on.
    pub fn is_enabled(&self) -> bool {
        self.consecutive_failures > 0 || self.failure_rate.is_some()
    }

    /// Consecutive failures that open the breaker; 0 when this trigger is off.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The failure-rate trigger as `(threshold, window, min_requests)`, if it is on.
    pub fn failure_rate(&self) -> Option<(f64, Duration, u32)> {
        self.failure_rate
            .map(|r| (r.threshold, r.window, r.min_requests))
    }

    /// The shortest and longest open periods, before jitter, as `(min, max)`.
    pub fn backoff(&self) -> (Duration, Duration) {
        (self.backoff_min, self.backoff_max)
    }
}

/// Builds a validated [`BreakerConfig`].
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl BreakerConfigBuilder {
    /// Sets the consecutive failures that open the breaker (default 5; 0 turns this trigger
    /// off; at most 1000).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = n;
        self
    }

    /// Turns on the failure-rate trigger: open when, over the last `window`, at least
    /// `min_requests` requests were recorded and the failed fraction is at least `threshold`.
    /// `threshold` must be above 0 and at most 1, `window` 1 s to 10 min, `min_requests` at
    /// least 1.
    pub fn failure_rate(mut self, threshold: f64, window: Duration, min_requests: u32) -> Self {
        self.config.failure_rate = Some(FailureRate {
            threshold,
            window,
            min_requests,
        });
        self
    }

    /// Sets the first open period and the longest one, before jitter (default 1 s and 60 s;
    /// `min` at least 1 ms, `max` from `min` to 1 h; used in whole milliseconds).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max;
        self
    }

    /// Checks every setting and returns the config, or says which setting is out of range.
    pub fn build(self) -> Result<BreakerConfig, BuildError> {
        let c = &self.config;
        if c.consecutive_failures > MAX_CONSECUTIVE {
            return Err(invalid(format!(
                "breaker consecutive_failures is {}; it must be between 0 (off) and {MAX_CONSECUTIVE}",
                c.consecutive_failures
            )));
        }
        if let Some(rate) = c.failure_rate {
            if !(rate.threshold > 0.0 && rate.threshold <= 1.0) {
                return Err(invalid(format!(
                    "breaker failure_rate threshold is {}; it must be above 0 and at most 1",
                    rate.threshold
                )));
            }
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&rate.window) {
                return Err(invalid(format!(
                    "breaker failure_rate window is {:?}; it must be between {MIN_WINDOW:?} and {MAX_WINDOW:?}",
                    rate.window
                )));
            }
            if rate.min_requests == 0 {
                return Err(invalid(
                    "breaker failure_rate min_requests is 0; it must be at least 1".to_owned(),
                ));
            }
        }
        if c.backoff_min < MIN_BACKOFF
            || c.backoff_max < c.backoff_min
            || c.backoff_max > MAX_BACKOFF
        {
            return Err(invalid(format!(
                "breaker backoff min {:?}, max {:?}: min must be at least {MIN_BACKOFF:?}, max between min and {MAX_BACKOFF:?}",
                c.backoff_min, c.backoff_max
            )));
        }
        Ok(self.config)
    }
}

fn invalid(why: String) -> BuildError {
    BuildError::InvalidConfig(why)
}

const MAX_CONSECUTIVE: u32 = 1_000;
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(600);
const MIN_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

/// What [`Breaker::admit`] decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The breaker is closed: send it.
    Normal,
    /// The breaker is half-open and this request is its one probe: send it, then record its
    /// outcome or cancel it.
    Probe,
    /// The breaker is open, or a probe is already out: do not send it here.
    Rejected,
}

/// A change of a breaker's state, for the caller to log and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerTransition {
    /// The breaker was closed and has opened.
    Opened {
        /// How long it stays open before a probe is let through.
        open_for: Duration,
        /// What tripped it.
        reason: TripReason,
    },
    /// A probe failed and the breaker is open again, for longer.
    Reopened {
        /// How long it stays open before the next probe.
        open_for: Duration,
    },
    /// A probe succeeded and the breaker is closed.
    Closed,
}

/// Why a closed breaker opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TripReason {
    /// This many failures in a row, with no success between them.
    ConsecutiveFailures(u32),
    /// The failed fraction of the window's requests reached the threshold.
    FailureRate {
        /// Failures in the window, throttled ones included.
        failures: u32,
        /// Requests in the window.
        requests: u32,
    },
}

/// A breaker's state, as a snapshot shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests are admitted.
    Closed,
    /// Requests are rejected.
    Open {
        /// Time left before a probe may be sent.
        remaining: Duration,
    },
    /// The open period has passed; one request at a time may probe the endpoint.
    HalfOpen {
        /// Whether the probe has been sent and its outcome is awaited.
        probe_in_flight: bool,
    },
}

// State word layout; see the module docs.
const TAG_SHIFT: u32 = 62;
const COUNT_SHIFT: u32 = 50;
const COUNT_MAX: u32 = (1 << 12) - 1;
const EPOCH_SHIFT: u32 = 42;
const UNTIL_MAX: u64 = (1 << 42) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    Probing,
}

/// The unpacked state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    phase: Phase,
    /// Consecutive failures while closed; the opening number k otherwise.
    count: u32,
    epoch: u8,
    /// End of the open period in ms since creation; 0 while closed.
    until_ms: u64,
}

impl Word {
    fn closed(count: u32, epoch: u8) -> Self {
        Self {
            phase: Phase::Closed,
            count,
            epoch,
            until_ms: 0,
        }
    }

    fn pack(self) -> u64 {
        let tag = match self.phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::Probing => 2,
        };
        (tag << TAG_SHIFT)
            | (u64::from(self.count.min(COUNT_MAX)) << COUNT_SHIFT)
            | (u64::from(self.epoch) << EPOCH_SHIFT)
            | self.until_ms.min(UNTIL_MAX)
    }

    fn unpack(word: u64) -> Self {
        let phase = match word >> TAG_SHIFT {
            0 => Phase::Closed,
            1 => Phase::Open,
            _ => Phase::Probing,
        };
        Self {
            phase,
            count: ((word >> COUNT_SHIFT) as u32) & COUNT_MAX,
            epoch: (word >> EPOCH_SHIFT) as u8,
            until_ms: word & UNTIL_MAX,
        }
    }
}

/// One endpoint's circuit breaker; every piece of state is an atomic.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU64,
    times_opened: AtomicU64,
    window: Option<Window>,
    consecutive: u32,
    min_ms: u64,
    max_ms: u64,
    created: Instant,
    rng: Rng,
}

impl Breaker {
    /// A closed breaker with `config`'s settings, its jitter drawn from `seed`.
    pub(crate) fn new(config: &BreakerConfig, seed: u64, now: Instant) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            state: AtomicU64::new(Word::closed(0, 0).pack()),
            times_opened: AtomicU64::new(0),
            window: config.failure_rate.map(|rate| Window::new(rate, now)),
            consecutive: config.consecutive_failures,
            min_ms: ms(config.backoff_min),
            max_ms: ms(config.backoff_max).max(ms(config.backoff_min)),
            created: now,
            rng: Rng::seeded(seed),
        }
    }

    /// Read-only: could a request be admitted now? (closed; or open past its deadline with no
    /// probe out)
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        let word = self.load();
        match word.phase {
            Phase::Closed => true,
            Phase::Open => self.has_passed(word.until_ms, now),
            Phase::Probing => false,
        }
    }

    /// Claims admission for one request: `Normal` when closed; `Probe` for exactly one caller
    /// once the open period has passed (compare-and-swap; every other concurrent caller gets
    /// `Rejected` until the probe's outcome is recorded or the probe is cancelled); `Rejected`
    /// while open.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let word = Word::unpack(current);
            match word.phase {
                Phase::Closed => return Admission::Normal,
                Phase::Probing => return Admission::Rejected,
                Phase::Open if !self.has_passed(word.until_ms, now) => {
                    return Admission::Rejected;
                }
                Phase::Open => {
                    let probing = Word {
                        phase: Phase::Probing,
                        ..word
                    };
                    match self.state.compare_exchange_weak(
                        current,
                        probing.pack(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Admission::Probe,
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }

    /// Records the outcome of a request admitted with `admission`. Outcomes of `Normal`
    /// requests that finish while the breaker is open or half-open are ignored (they were sent
    /// before it tripped). Returns the transition it caused, if any.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        admission: Admission,
        now: Instant,
    ) -> Option<BreakerTransition> {
        match admission {
            Admission::Normal => self.record_normal(outcome, now),
            Admission::Probe => self.record_probe(outcome, now),
            Admission::Rejected => None,
        }
    }

    /// A probe ended without an outcome (the caller dropped it): let another probe go.
    pub(crate) fn cancel_probe(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let word = Word::unpack(current);
                (word.phase == Phase::Probing).then(|| {
                    Word {
                        phase: Phase::Open,
                        ..word
                    }
                    .pack()
                })
            });
    }

    /// The state as a snapshot shows it.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        let word = self.load();
        match word.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Probing => BreakerState::HalfOpen {
                probe_in_flight: true,
            },
            Phase::Open => match self.deadline(word.until_ms) {
                Some(deadline) if now >= deadline => BreakerState::HalfOpen {
                    probe_in_flight: false,
                },
                Some(deadline) => BreakerState::Open {
                    remaining: deadline.saturating_duration_since(now),
                },
                None => BreakerState::Open {
                    remaining: Duration::MAX,
                },
            },
        }
    }

    /// Times it has opened (trips and re-opens), for snapshots.
    pub(crate) fn times_opened(&self) -> u64 {
        self.times_opened.load(Ordering::Relaxed)
    }

    fn record_normal(&self, outcome: Outcome, now: Instant) -> Option<BreakerTransition> {
        let mut current = self.state.load(Ordering::Acquire);
        let first = Word::unpack(current);
        if first.phase != Phase::Closed {
            return None;
        }
        let failure = outcome.is_failure();
        let counted = failure && outcome != Outcome::Throttled;
        let rate = self
            .window
            .as_ref()
            .and_then(|w| w.record(first.epoch, failure, now));
        let mut open_ms = None;
        loop {
            let word = Word::unpack(current);
            if word.phase != Phase::Closed || word.epoch != first.epoch {
                return None; // it tripped meanwhile, perhaps closed again: this is stale
            }
            let count = if self.consecutive == 0 || outcome == Outcome::Success {
                0
            } else if counted {
                word.count.saturating_add(1)
            } else {
                word.count
            };
            let reason = if self.consecutive > 0 && counted && count >= self.consecutive {
                Some(TripReason::ConsecutiveFailures(count))
            } else {
                rate.map(|(failures, requests)| TripReason::FailureRate { failures, requests })
            };
            let next = match reason {
                None => Word::closed(count, word.epoch),
                Some(_) => {
                    let ms = *open_ms.get_or_insert_with(|| self.open_ms(1));
                    Word {
                        phase: Phase::Open,
                        count: 1,
                        epoch: word.epoch,
                        until_ms: self.until(ms, now),
                    }
                }
            };
            if next == word {
                return None;
            }
            match self.state.compare_exchange_weak(
                current,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let reason = reason?;
                    self.times_opened.fetch_add(1, Ordering::Relaxed);
                    return Some(BreakerTransition::Opened {
                        open_for: Duration::from_millis(open_ms.unwrap_or(0)),
                        reason,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn record_probe(&self, outcome: Outcome, now: Instant) -> Option<BreakerTransition> {
        let mut current = self.state.load(Ordering::Acquire);
        let mut open_ms = None;
        loop {
            let word = Word::unpack(current);
            if word.phase != Phase::Probing {
                return None; // no probe is out: nothing to settle
            }
            let (next, transition) = if outcome == Outcome::Success {
                let next = Word::closed(0, word.epoch.wrapping_add(1));
                (next, BreakerTransition::Closed)
            } else {
                let k = word.count.saturating_add(1).min(COUNT_MAX);
                let ms = *open_ms.get_or_insert_with(|| self.open_ms(k));
                let next = Word {
                    phase: Phase::Open,
                    count: k,
                    epoch: word.epoch,
                    until_ms: self.until(ms, now),
                };
                let open_for = Duration::from_millis(ms);
                (next, BreakerTransition::Reopened { open_for })
            };
            match self.state.compare_exchange_weak(
                current,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if next.phase == Phase::Open {
                        self.times_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(transition);
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn load(&self) -> Word {
        Word::unpack(self.state.load(Ordering::Acquire))
    }

    /// The jittered length of the k-th opening in a row, in ms: `d = min(max, min · 2^(k−1))`,
    /// then uniform over `[⌈d/2⌉, d]`.
    fn open_ms(&self, k: u32) -> u64 {
        let shift = k.saturating_sub(1);
        let d = if shift < 64 && self.min_ms <= self.max_ms >> shift {
            self.min_ms << shift
        } else {
            self.max_ms
        };
        let low = d - d / 2;
        let span = d - low;
        let draw = self
            .rng
            .below(usize::try_from(span + 1).unwrap_or(usize::MAX));
        low + (draw as u64).min(span)
    }

    /// The end of an open period of `open_ms` starting now, in ms since creation. Now is rounded
    /// up, so the period is never shorter than `open_ms`.
    fn until(&self, open_ms: u64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.created);
        let now_ms = elapsed.as_millis().saturating_add(u128::from(
            !elapsed.subsec_nanos().is_multiple_of(1_000_000),
        ));
        u64::try_from(now_ms)
            .unwrap_or(u64::MAX)
            .saturating_add(open_ms)
            .min(UNTIL_MAX)
    }

    fn deadline(&self, until_ms: u64) -> Option<Instant> {
        self.created.checked_add(Duration::from_millis(until_ms))
    }

    fn has_passed(&self, until_ms: u64, now: Instant) -> bool {
        self.deadline(until_ms)
            .is_some_and(|deadline| now >= deadline)
    }
}

const BUCKETS: usize = 10;
// Bucket word layout: epoch 8 bits | slot 16 bits | requests 20 bits | failures 20 bits.
const BUCKET_COUNT_BITS: u32 = 20;
const BUCKET_COUNT_MAX: u64 = (1 << BUCKET_COUNT_BITS) - 1;
const BUCKET_TAG_SHIFT: u32 = 2 * BUCKET_COUNT_BITS;

/// The failure-rate trigger's sliding window: ten buckets keyed by time slot and epoch.
#[derive(Debug)]
struct Window {
    buckets: [AtomicU64; BUCKETS],
    slot_nanos: u128,
    threshold: f64,
    min_requests: u32,
    created: Instant,
}

impl Window {
    fn new(rate: FailureRate, now: Instant) -> Self {
        Self {
            buckets: Default::default(),
            slot_nanos: (rate.window.as_nanos() / BUCKETS as u128).max(1),
            threshold: rate.threshold,
            min_requests: rate.min_requests,
            created: now,
        }
    }

    /// Counts one outcome in the current bucket of `epoch`. After a failure, returns
    /// `(failures, requests)` in the window if they reach the trigger.
    fn record(&self, epoch: u8, failure: bool, now: Instant) -> Option<(u32, u32)> {
        let slot = self.slot(now);
        let tag = bucket_tag(epoch, slot);
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let (requests, failures) = if word >> BUCKET_TAG_SHIFT == tag {
                (
                    (word >> BUCKET_COUNT_BITS) & BUCKET_COUNT_MAX,
                    word & BUCKET_COUNT_MAX,
                )
            } else {
                (0, 0) // an older slot or epoch: start the bucket afresh
            };
            let requests = (requests + 1).min(BUCKET_COUNT_MAX);
            let failures = (failures + u64::from(failure)).min(requests);
            Some((tag << BUCKET_TAG_SHIFT) | (requests << BUCKET_COUNT_BITS) | failures)
        });
        if !failure {
            return None;
        }
        let (failures, requests) = self.totals(epoch, slot);
        let tripped = requests >= self.min_requests
            && f64::from(failures) / f64::from(requests) >= self.threshold;
        tripped.then_some((failures, requests))
    }

    /// Failures and requests over the window ending in `slot`.
    fn totals(&self, epoch: u8, slot: u64) -> (u32, u32) {
        let (mut failures, mut requests) = (0u64, 0u64);
        for (index, bucket) in self.buckets.iter().enumerate() {
            // The newest slot that maps to this bucket, if the window reaches back to it.
            let behind = (slot + BUCKETS as u64 - index as u64) % BUCKETS as u64;
            let Some(expected) = slot.checked_sub(behind) else {
                continue;
            };
            let word = bucket.load(Ordering::Relaxed);
            if word >> BUCKET_TAG_SHIFT == bucket_tag(epoch, expected) {
                requests += (word >> BUCKET_COUNT_BITS) & BUCKET_COUNT_MAX;
                failures += word & BUCKET_COUNT_MAX;
            }
        }
        // At most ten buckets of 2^20 − 1 each: well inside u32.
        (failures as u32, requests as u32)
    }

    fn slot(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.created).as_nanos();
        u64::try_from(elapsed / self.slot_nanos).unwrap_or(u64::MAX)
    }
}

fn bucket_tag(epoch: u8, slot: u64) -> u64 {
    (u64::from(epoch) << 16) | (slot & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::LocalOrigin;
    use std::sync::{Arc, Barrier};

    const SEED: u64 = 42;
    const SECOND: Duration = Duration::from_secs(1);
    const FAIL: Outcome = Outcome::ServerError;
    const OK: Outcome = Outcome::Success;
    const THROTTLED: Outcome = Outcome::Throttled;

    fn breaker(config: BreakerConfig) -> Breaker {
        Breaker::new(&config, SEED, Instant::now())
    }

    fn consecutive(n: u32) -> BreakerConfig {
        BreakerConfig::builder()
            .consecutive_failures(n)
            .build()
            .unwrap()
    }

    fn rate_only(threshold: f64, window: Duration, min_requests: u32) -> BreakerConfig {
        BreakerConfig::builder()
            .consecutive_failures(0)
            .failure_rate(threshold, window, min_requests)
            .build()
            .unwrap()
    }

    /// Records `outcome` for a request admitted now; panics if it was not admitted normally.
    fn normal(b: &Breaker, outcome: Outcome) -> Option<BreakerTransition> {
        let now = Instant::now();
        assert_eq!(b.admit(now), Admission::Normal);
        b.record(outcome, Admission::Normal, now)
    }

    fn open_for(t: Option<BreakerTransition>) -> Duration {
        match t {
            Some(BreakerTransition::Opened { open_for, .. })
            | Some(BreakerTransition::Reopened { open_for }) => open_for,
            other => panic!("expected an opening, got {other:?}"),
        }
    }

    /// Trips `b` with consecutive failures and returns the open period.
    fn trip(b: &Breaker, n: u32) -> Duration {
        for _ in 1..n {
            assert_eq!(normal(b, FAIL), None);
        }
        open_for(normal(b, FAIL))
    }

    #[test]
    fn state_words_round_trip() {
        for word in [
            Word::closed(0, 0),
            Word::closed(1_000, 255),
            Word {
                phase: Phase::Open,
                count: COUNT_MAX,
                epoch: 7,
                until_ms: UNTIL_MAX,
            },
            Word {
                phase: Phase::Probing,
                count: 3,
                epoch: 0,
                until_ms: 61_000,
            },
        ] {
            assert_eq!(Word::unpack(word.pack()), word);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trips_at_exactly_n_consecutive_failures() {
        let b = breaker(BreakerConfig::default());
        for _ in 0..4 {
            assert_eq!(normal(&b, FAIL), None);
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        let t = normal(&b, Outcome::LocalOrigin(LocalOrigin::Reset));
        let Some(BreakerTransition::Opened { open_for, reason }) = t else {
            panic!("expected Opened, got {t:?}");
        };
        assert_eq!(reason, TripReason::ConsecutiveFailures(5));
        assert_eq!(open_for, Duration::from_millis(OPEN_PERIODS_MS[0]));
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open {
                remaining: open_for
            }
        );
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        assert!(!b.is_available(Instant::now()));
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_count() {
        let b = breaker(consecutive(3));
        for _ in 0..5 {
            assert_eq!(normal(&b, FAIL), None);
            assert_eq!(normal(&b, FAIL), None);
            assert_eq!(normal(&b, OK), None);
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert_eq!(normal(&b, FAIL), None);
        assert_eq!(normal(&b, FAIL), None);
        assert_eq!(
            normal(&b, Outcome::GatewayError).map(|t| matches!(
                t,
                BreakerTransition::Opened {
                    reason: TripReason::ConsecutiveFailures(3),
                    ..
                }
            )),
            Some(true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_neither_counts_nor_resets_the_consecutive_count() {
        let b = breaker(consecutive(3));
        for _ in 0..100 {
            assert_eq!(normal(&b, THROTTLED), None, "throttled does not count");
        }
        assert_eq!(normal(&b, FAIL), None);
        assert_eq!(normal(&b, FAIL), None);
        assert_eq!(normal(&b, THROTTLED), None, "throttled does not reset");
        let t = normal(&b, FAIL);
        assert!(
            matches!(
                t,
                Some(BreakerTransition::Opened {
                    reason: TripReason::ConsecutiveFailures(3),
                    ..
                })
            ),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_counts_towards_the_failure_rate() {
        let b = breaker(rate_only(0.5, 10 * SECOND, 4));
        for _ in 0..3 {
            assert_eq!(normal(&b, THROTTLED), None);
        }
        let t = normal(&b, THROTTLED);
        assert!(
            matches!(
                t,
                Some(BreakerTransition::Opened {
                    reason: TripReason::FailureRate {
                        failures: 4,
                        requests: 4
                    },
                    ..
                })
            ),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_never_trips_below_min_requests() {
        let b = breaker(rate_only(0.5, 10 * SECOND, 10));
        for _ in 0..9 {
            assert_eq!(normal(&b, FAIL), None);
        }
        let t = normal(&b, FAIL);
        assert!(
            matches!(
                t,
                Some(BreakerTransition::Opened {
                    reason: TripReason::FailureRate {
                        failures: 10,
                        requests: 10
                    },
                    ..
                })
            ),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_trips_at_the_threshold_exactly() {
        // 0.5: 5 of 10 trips; 0.3: 3 of 10 trips although 0.3 · 10 > 3 in floating point.
        for (threshold, successes, failures) in [(0.5, 5, 5), (0.3, 7, 3), (1.0, 0, 10)] {
            let b = breaker(rate_only(threshold, 10 * SECOND, 10));
            for _ in 0..successes {
                assert_eq!(normal(&b, OK), None);
            }
            for _ in 1..failures {
                assert_eq!(normal(&b, FAIL), None, "threshold {threshold}");
            }
            let t = normal(&b, FAIL);
            let expected = TripReason::FailureRate {
                failures,
                requests: 10,
            };
            assert!(
                matches!(t, Some(BreakerTransition::Opened { reason, .. }) if reason == expected),
                "threshold {threshold}: {t:?}"
            );
        }
        // Just below: 4 of 10, then 5 of 11, then 6 of 12 trips.
        let b = breaker(rate_only(0.5, 10 * SECOND, 10));
        for _ in 0..6 {
            assert_eq!(normal(&b, OK), None);
        }
        for _ in 0..5 {
            assert_eq!(normal(&b, FAIL), None);
        }
        let t = normal(&b, FAIL);
        assert!(
            matches!(
                t,
                Some(BreakerTransition::Opened {
                    reason: TripReason::FailureRate {
                        failures: 6,
                        requests: 12
                    },
                    ..
                })
            ),
            "{t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_never_trips_the_rate() {
        let b = breaker(rate_only(0.5, 10 * SECOND, 4));
        for _ in 0..3 {
            assert_eq!(normal(&b, FAIL), None);
        }
        // 3 of 4 is over the threshold, but a success is not what opens a breaker.
        assert_eq!(normal(&b, OK), None);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert!(normal(&b, FAIL).is_some(), "4 of 5");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let b = breaker(rate_only(0.5, 10 * SECOND, 4));
        for _ in 0..3 {
            assert_eq!(normal(&b, FAIL), None);
        }
        // The failures at 0 s count until 10 s.
        tokio::time::advance(9 * SECOND).await;
        assert_eq!(normal(&b, OK), None);
        tokio::time::advance(SECOND).await;
        // At 10 s only the success at 9 s is left: 1 failure of 2 is below min_requests.
        assert_eq!(normal(&b, FAIL), None);
        assert_eq!(normal(&b, FAIL), None);
        let t = normal(&b, FAIL);
        assert!(
            matches!(
                t,
                Some(BreakerTransition::Opened {
                    reason: TripReason::FailureRate {
                        failures: 3,
                        requests: 4
                    },
                    ..
                })
            ),
            "{t:?}"
        );
    }

    /// The open periods of the first eight openings in a row with seed 42 (ms).
    const OPEN_PERIODS_MS: [u64; 8] = [871, 1_160, 2_557, 5_377, 8_304, 29_892, 36_552, 54_019];

    #[tokio::test(start_paused = true)]
    async fn open_periods_grow_with_equal_jitter_up_to_the_cap() {
        let b = breaker(BreakerConfig::default());
        let mut periods = vec![trip(&b, 5)];
        for _ in 2..=8 {
            let open = *periods.last().unwrap();
            tokio::time::advance(open - Duration::from_millis(1)).await;
            assert_eq!(b.admit(Instant::now()), Admission::Rejected, "1 ms early");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            periods.push(open_for(b.record(FAIL, Admission::Probe, Instant::now())));
        }
        let nominal = [1, 2, 4, 8, 16, 32, 60, 60];
        for (period, d) in periods.iter().zip(nominal) {
            let d = Duration::from_secs(d);
            assert!(
                d / 2 <= *period && *period <= d,
                "{period:?} not in [{d:?}/2, {d:?}]"
            );
        }
        let ms: Vec<u64> = periods.iter().map(|p| p.as_millis() as u64).collect();
        assert_eq!(ms, OPEN_PERIODS_MS);
        assert_eq!(b.times_opened(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_is_kept_at_the_cap() {
        let b = breaker(BreakerConfig::default());
        let mut open = trip(&b, 5);
        let mut capped = Vec::new();
        for k in 2..=40 {
            tokio::time::advance(open).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            open = open_for(b.record(FAIL, Admission::Probe, Instant::now()));
            if k >= 7 {
                assert!((30 * SECOND..=60 * SECOND).contains(&open), "{open:?}");
                capped.push(open);
            }
        }
        capped.sort();
        capped.dedup();
        assert!(capped.len() > 30, "capped periods are spread: {capped:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_after_the_open_period() {
        let b = breaker(BreakerConfig::default());
        let open = trip(&b, 5);
        tokio::time::advance(open).await;
        let now = Instant::now();
        assert!(b.is_available(now));
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        let admissions: Vec<Admission> = (0..100).map(|_| b.admit(now)).collect();
        assert_eq!(admissions[0], Admission::Probe);
        assert!(admissions[1..].iter().all(|a| *a == Admission::Rejected));
        assert!(!b.is_available(now));
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_among_racing_threads() {
        for round in 0..20 {
            let b = Arc::new(Breaker::new(&consecutive(1), round, Instant::now()));
            let open = open_for(normal(&b, FAIL));
            tokio::time::advance(open).await;
            let now = Instant::now();
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let b = Arc::clone(&b);
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..1_000)
                            .filter(|_| b.admit(now) == Admission::Probe)
                            .count()
                    })
                })
                .collect();
            let probes: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(probes, 1, "round {round}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_never_overlap_while_threads_cancel_and_retry() {
        let b = Arc::new(breaker(consecutive(1)));
        let open = open_for(normal(&b, FAIL));
        tokio::time::advance(open).await;
        let now = Instant::now();
        let in_flight = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, in_flight, barrier) =
                    (Arc::clone(&b), Arc::clone(&in_flight), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut probes = 0u64;
                    for _ in 0..10_000 {
                        if b.admit(now) == Admission::Probe {
                            assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0);
                            probes += 1;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            b.cancel_probe();
                        }
                    }
                    probes
                })
            })
            .collect();
        let probes: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(probes >= 1);
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn racing_failures_open_the_breaker_once() {
        let b = Arc::new(breaker(BreakerConfig::default()));
        let now = Instant::now();
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, barrier) = (Arc::clone(&b), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..1_000)
                        .filter_map(|_| b.record(FAIL, Admission::Normal, now))
                        .count()
                })
            })
            .collect();
        let transitions: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(transitions, 1);
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_and_resets_everything() {
        let b = breaker(consecutive(2));
        let open = trip(&b, 2);
        tokio::time::advance(open).await;
        // A second opening, so that closing visibly resets k.
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        let open = open_for(b.record(FAIL, Admission::Probe, Instant::now()));
        assert!((SECOND..=2 * SECOND).contains(&open), "{open:?}");
        tokio::time::advance(open).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(
            b.record(OK, Admission::Probe, Instant::now()),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert_eq!(b.admit(Instant::now()), Admission::Normal);
        // The count was reset: one failure does not trip; and k was reset: the next trip is a
        // first opening again.
        assert_eq!(normal(&b, FAIL), None);
        let open = open_for(normal(&b, FAIL));
        assert!((SECOND / 2..=SECOND).contains(&open), "{open:?}");
        assert_eq!(b.times_opened(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_empties_the_rate_window() {
        let b = breaker(rate_only(0.5, 60 * SECOND, 4));
        for _ in 0..4 {
            normal(&b, FAIL);
        }
        assert_eq!(b.times_opened(), 1);
        tokio::time::advance(SECOND).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(
            b.record(OK, Admission::Probe, Instant::now()),
            Some(BreakerTransition::Closed)
        );
        // The four failures are still inside the 60 s window but belong to the old epoch.
        for _ in 0..3 {
            assert_eq!(normal(&b, FAIL), None);
        }
        assert!(normal(&b, FAIL).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer() {
        let b = breaker(BreakerConfig::default());
        let first = trip(&b, 5);
        tokio::time::advance(first).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        // A throttled probe is a failed probe.
        let second = open_for(b.record(THROTTLED, Admission::Probe, Instant::now()));
        assert!((SECOND..=2 * SECOND).contains(&second), "{second:?}");
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open { remaining: second }
        );
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        assert_eq!(b.times_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_the_probe_lets_another_go() {
        let b = breaker(BreakerConfig::default());
        let open = trip(&b, 5);
        tokio::time::advance(open).await;
        let now = Instant::now();
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.admit(now), Admission::Rejected);
        b.cancel_probe();
        assert!(b.is_available(now));
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.admit(now), Admission::Rejected);
        // Cancelling when no probe is out changes nothing.
        assert_eq!(
            b.record(OK, Admission::Probe, now),
            Some(BreakerTransition::Closed)
        );
        b.cancel_probe();
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_requests_sent_before_the_trip_are_ignored() {
        let b = breaker(consecutive(2));
        let now = Instant::now();
        // Requests admitted while closed, finishing after the trip.
        let late: Vec<Admission> = (0..4).map(|_| b.admit(now)).collect();
        let open = trip(&b, 2);
        for outcome in [OK, FAIL, OK] {
            assert_eq!(b.record(outcome, late[0], now), None);
        }
        assert_eq!(b.state(now), BreakerState::Open { remaining: open });
        // Half-open, no probe out.
        tokio::time::advance(open).await;
        let now = Instant::now();
        assert_eq!(b.record(OK, late[1], now), None);
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        // Probe out.
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.record(OK, late[2], now), None);
        assert_eq!(b.record(FAIL, late[3], now), None);
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
        // Rejected requests were never sent.
        assert_eq!(b.record(FAIL, Admission::Rejected, now), None);
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_trips() {
        let config = BreakerConfig::disabled();
        assert!(!config.is_enabled());
        let b = breaker(config);
        for outcome in [FAIL, THROTTLED, Outcome::GatewayError] {
            for _ in 0..10_000 {
                assert_eq!(normal(&b, outcome), None);
            }
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert_eq!(b.times_opened(), 0);
        let off = BreakerConfig::builder()
            .consecutive_failures(0)
            .build()
            .unwrap();
        assert!(!off.is_enabled());
    }

    #[test]
    fn defaults_and_getters() {
        let c = BreakerConfig::default();
        assert!(c.is_enabled());
        assert_eq!(c.consecutive_failures(), 5);
        assert_eq!(c.failure_rate(), None);
        assert_eq!(c.backoff(), (SECOND, 60 * SECOND));
        let c = BreakerConfig::builder()
            .consecutive_failures(7)
            .failure_rate(0.2, 10 * SECOND, 5)
            .backoff(Duration::from_millis(500), 30 * SECOND)
            .build()
            .unwrap();
        assert_eq!(c.consecutive_failures(), 7);
        assert_eq!(c.failure_rate(), Some((0.2, 10 * SECOND, 5)));
        assert_eq!(c.backoff(), (Duration::from_millis(500), 30 * SECOND));
    }

    #[test]
    fn invalid_settings_are_rejected_by_name() {
        let cases = [
            (
                BreakerConfig::builder().consecutive_failures(1_001),
                "consecutive_failures",
            ),
            (
                BreakerConfig::builder().failure_rate(0.0, 10 * SECOND, 5),
                "failure_rate threshold",
            ),
            (
                BreakerConfig::builder().failure_rate(1.01, 10 * SECOND, 5),
                "failure_rate threshold",
            ),
            (
                BreakerConfig::builder().failure_rate(f64::NAN, 10 * SECOND, 5),
                "failure_rate threshold",
            ),
            (
                BreakerConfig::builder().failure_rate(0.5, Duration::from_millis(999), 5),
                "failure_rate window",
            ),
            (
                BreakerConfig::builder().failure_rate(0.5, 601 * SECOND, 5),
                "failure_rate window",
            ),
            (
                BreakerConfig::builder().failure_rate(0.5, 10 * SECOND, 0),
                "failure_rate min_requests",
            ),
            (
                BreakerConfig::builder().backoff(Duration::ZERO, SECOND),
                "backoff",
            ),
            (
                BreakerConfig::builder().backoff(2 * SECOND, SECOND),
                "backoff",
            ),
            (
                BreakerConfig::builder().backoff(SECOND, 3_601 * SECOND),
                "backoff",
            ),
        ];
        for (builder, name) in cases {
            let err = builder.build().unwrap_err();
            assert!(matches!(err, BuildError::InvalidConfig(_)), "{err:?}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        // The bounds themselves are accepted.
        for builder in [
            BreakerConfig::builder().consecutive_failures(1_000),
            BreakerConfig::builder().failure_rate(1.0, SECOND, 1),
            BreakerConfig::builder().failure_rate(f64::MIN_POSITIVE, 600 * SECOND, u32::MAX),
            BreakerConfig::builder().backoff(Duration::from_millis(1), Duration::from_millis(1)),
            BreakerConfig::builder().backoff(3_600 * SECOND, 3_600 * SECOND),
        ] {
            assert!(builder.build().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_and_huge_periods_stay_in_bounds() {
        let config = BreakerConfig::builder()
            .consecutive_failures(1)
            .backoff(Duration::from_millis(1), 3_600 * SECOND)
            .build()
            .unwrap();
        let b = breaker(config);
        let mut open = open_for(normal(&b, FAIL));
        assert_eq!(open, Duration::from_millis(1), "⌈1/2⌉ ms to 1 ms");
        for _ in 0..5_000 {
            tokio::time::advance(open).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            open = open_for(b.record(FAIL, Admission::Probe, Instant::now()));
            assert!(open <= 3_600 * SECOND);
        }
        assert!(open >= 1_800 * SECOND);
    }
}
