//! Outlier detection: ejecting endpoints that fail more than their peers, with Envoy's rules
//! and field names, or gRFC A50's variant.
//!
//! The detector watches every attempt's [`Outcome`] per endpoint and takes endpoints out of the
//! pick set (ejects them) for a while. It follows Envoy's outlier detection
//! (`source/common/upstream/outlier_detection_impl.cc`, `outlier_detection.proto`), with the same
//! settings and defaults ([`OutlierConfig`]) and the same counters ([`OutlierStats`]).
//!
//! # What counts as what
//!
//! | outcome | default | `split_external_local_origin_errors` |
//! |---|---|---|
//! | 502, 503, 504 ([`GatewayError`](Outcome::GatewayError)) | a 5xx and a gateway failure | same |
//! | other 5xx ([`ServerError`](Outcome::ServerError)) | a 5xx; resets the gateway counter | same |
//! | anything else (2xx–4xx, 429) | a success: resets the 5xx and gateway counters | same, and a local-origin success |
//! | connect failure, reset, timeout ([`LocalOrigin`](Outcome::LocalOrigin)) | a 5xx and a gateway failure (Envoy's 503 / 504) | a local-origin failure only |
//!
//! In split mode, an endpoint that answered at all (whatever the status) had a working
//! connection, which Envoy reports as a local-origin success: it resets the local-origin counter
//! and counts as a success in the local-origin success rate. Local-origin failures never touch the
//! 5xx and gateway counters or the external success rate. (Envoy reports the connection's success
//! before a later reset or timeout on it too, so there only back-to-back connect failures reach
//! `consecutive_local_origin_failure`; here each attempt has one outcome, so every local-origin
//! failure counts, as every one counts as a 5xx without split mode.)
//!
//! # Detection
//!
//! **Inline, on every outcome** (lock-free): the consecutive counters. When one reaches its
//! count exactly (`== N`), the host is an outlier of that kind, unless it is already ejected
//! (then nothing happens and the counter keeps running, as in Envoy, until un-ejection resets
//! it). Any ejection attempt, even one refused by the gate or the enforcement roll, resets that
//! counter; un-ejection resets all three. One failure can fire two detectors (a 503 that is both
//! the fifth 5xx and the fifth gateway failure): the gateway detector runs first, as in Envoy,
//! and the 5xx detector only if that left the host in service. An ejection decided inline takes
//! effect at once.
//!
//! **At each sweep** (every `interval`, run by the balancer's driver), in Envoy's order:
//!
//! 1. un-eject every host whose ejection has run out (`now − ejected_at ≥ length`), so hosts come
//!    back only at sweeps: ejection time is effectively rounded up to a whole number of intervals
//!    from the sweep grid;
//! 2. freeze each host's request counts for the interval that just ended and start new ones;
//! 3. run the success-rate and failure-percentage tests on the external-origin counts, then on the
//!    local-origin counts (which only split mode fills);
//! 4. lower the ejection-time multiplier by one for each host in service that was un-ejected at
//!    least one interval ago.
//!
//! **Success rate (SR).** Skipped if there are fewer hosts than both minimum host counts. A
//! candidate is a host in service with at least `success_rate_request_volume` requests in the
//! frozen interval; its rate is `100·successes/requests`. With at least
//! `success_rate_minimum_hosts` candidates, take their mean and population standard deviation;
//! a candidate is an outlier if `rate < mean − stdev_factor/1000 · stdev`. Envoy's worked example:
//! rates 50, 100, 100, 100, 100 have mean 90 and stdev 20, so at the default factor 1.9 the
//! threshold is 52 and the host at 50 is an outlier.
//!
//! **Failure percentage (FP).** The same candidates, with `failure_percentage_request_volume` and
//! `failure_percentage_minimum_hosts`; a candidate is an outlier if its failure percentage
//! `100 − rate` is at least `failure_percentage_threshold` (computed exactly, in integers). Its
//! enforcement defaults to 0, so by default it is only detected and counted.
//!
//! # Ejection
//!
//! Every detected outlier passes the same gate (Envoy's `ejectHost`):
//!
//! 1. the max-ejection-percent rule ([`MaxEjectionRule`]): Envoy allows an ejection iff
//!    `100·(ejected+1)/hosts ≤ max_ejection_percent`, or `always_eject_one_host` and none is
//!    ejected. At the default 10 % that ejects nothing among fewer than 10 hosts. Refused:
//!    `ejections_overflow`, [`OutlierEvent::Overflow`];
//! 2. the enforcement roll: ejected with probability `enforcing_<type>` percent (a uniform draw
//!    below 100 from the detector's seeded generator; 0 and 100 draw nothing). Lost:
//!    [`OutlierEvent::NotEnforced`], still counted as detected;
//! 3. ejected: the multiplier `k` grows by one (while `k·base < max + base`, so it stops at
//!    `max/base + 1`), and the ejection lasts `min(base_ejection_time·k, max_ejection_time) +
//!    jitter`, the jitter uniform in whole milliseconds over `[0, max_ejection_time_jitter]`. With
//!    the defaults, ejections in a row last 30 s, 60 s, 90 s, … up to 300 s; each sweep spent back
//!    in service (from one interval after the un-ejection) takes one step back.
//!
//! `ejections_active` counts ejected hosts. It is recounted at each sweep from the hosts the sweep
//! is given, so endpoints removed while ejected stop counting. The percentage's denominator is the
//! current number of endpoints.
//!
//! # Envoy and gRPC A50
//!
//! [`MaxEjectionRule::GrpcA50`] switches to gRFC A50's rules (grpc-go's `intervalTimerAlgorithm`)
//! wherever Envoy and A50 both have the feature:
//!
//! | rule | Envoy | `GrpcA50` |
//! |---|---|---|
//! | gate | `100·(n+1)/N ≤ max`, or `always_eject_one_host` and `n = 0` | skip iff `100·n/N ≥ max`: may go one over, never at 0 % |
//! | FP outlier | `failure% ≥ threshold` | `failure% > threshold` |
//! | ejected hosts in SR and FP statistics | left out | counted (never ejected twice) |
//! | un-ejection | first step of the sweep | last step, so hosts due back still count in that sweep's gate |
//! | multiplier | capped at `max/base + 1`; −1 per sweep from one interval after un-ejection | uncapped (the length is still capped); −1 at every sweep the host starts in service |
//!
//! Kept from Envoy in both modes: un-ejection when `now − ejected_at ≥ length` (grpc-go tests
//! `now > ejected_at + length`, but its `now` is read after the sweep's own start, so on a grid of
//! sweeps it behaves as `≥`; with an exact clock `>` would add a whole interval); mean and
//! stdev over percentages rather than fractions (the same test, scaled); the [`Outcome`]
//! classification (A50 counts every non-OK RPC as a failure; map statuses with your own
//! [`Classify`](crate::classify::Classify) for that). The Envoy-only features, the consecutive
//! detectors, split mode and jitter, stay as configured: for A50 exactly, set the three
//! `enforcing_consecutive_*` to 0 and leave split mode and jitter off (the detectors still count
//! what they detect).
//!
//! # Events and counters
//!
//! Every decision comes back as an [`OutlierEvent`] for the caller to log, ejections with the
//! statistics behind them (`success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100
//! requests, 5 hosts)`). [`OutlierStats`] holds Envoy's counters under Envoy's names
//! (`cluster.<name>.outlier_detection.*`), but for the deprecated `ejections_total`,
//! `ejections_consecutive_5xx` and `ejections_success_rate`.
//!
//! # Concurrency
//!
//! Per-host state is atomics only: consecutive counters, one packed word per request bucket (so a
//! sweep takes the interval's total and successes together with one swap, and every request lands
//! in exactly one interval), and an ejection state claimed by compare-and-swap, so one attempt at
//! a time decides a host's ejection and the `ejections_active` gauge is raised by
//! compare-and-swap under the gate. Sweeps are meant to run from one task; a sweep that starts
//! while another runs returns at once with no events.

mod config;
mod detector;
mod event;
mod host;
#[cfg(test)]
mod tests;

use std::fmt;

#[cfg(doc)]
use crate::classify::Outcome;

pub use config::{MaxEjectionRule, OutlierConfig, OutlierConfigBuilder};
pub(crate) use detector::Detector;
pub use event::{OutlierEvent, OutlierStats};
pub(crate) use host::OutlierHost;
pub use host::OutlierHostSnapshot;

/// Why a host was detected as an outlier (Envoy's `OutlierEjectionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectionReason {
    /// `consecutive_5xx` 5xx responses in a row.
    Consecutive5xx,
    /// `consecutive_gateway_failure` 502, 503 or 504 responses in a row.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure` local-origin failures in a row (split mode).
    ConsecutiveLocalOriginFailure,
    /// A success rate below the set's threshold.
    SuccessRate,
    /// A failure percentage at or above `failure_percentage_threshold`.
    FailurePercentage,
    /// A local-origin success rate below the set's threshold (split mode).
    LocalOriginSuccessRate,
    /// A local-origin failure percentage at or above the threshold (split mode).
    LocalOriginFailurePercentage,
}

const REASONS: [EjectionReason; 7] = [
    EjectionReason::Consecutive5xx,
    EjectionReason::ConsecutiveGatewayFailure,
    EjectionReason::ConsecutiveLocalOriginFailure,
    EjectionReason::SuccessRate,
    EjectionReason::FailurePercentage,
    EjectionReason::LocalOriginSuccessRate,
    EjectionReason::LocalOriginFailurePercentage,
];

impl EjectionReason {
    /// Envoy's name for the reason, as it appears in the counters'
    /// `ejections_detected_<name>` and `ejections_enforced_<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consecutive5xx => "consecutive_5xx",
            Self::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Self::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Self::SuccessRate => "success_rate",
            Self::FailurePercentage => "failure_percentage",
            Self::LocalOriginSuccessRate => "local_origin_success_rate",
            Self::LocalOriginFailurePercentage => "local_origin_failure_percentage",
        }
    }

    pub(super) fn index(self) -> u32 {
        match self {
            Self::Consecutive5xx => 0,
            Self::ConsecutiveGatewayFailure => 1,
            Self::ConsecutiveLocalOriginFailure => 2,
            Self::SuccessRate => 3,
            Self::FailurePercentage => 4,
            Self::LocalOriginSuccessRate => 5,
            Self::LocalOriginFailurePercentage => 6,
        }
    }

    pub(super) fn from_index(index: u32) -> Option<Self> {
        REASONS.get(index as usize).copied()
    }

    pub(super) fn slot(self) -> usize {
        self.index() as usize
    }
}

impl fmt::Display for EjectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
