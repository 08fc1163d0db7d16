//! The detector's decisions and counters.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::EjectionReason;

/// One decision of the detector, for the caller to log (ejections and un-ejections at info,
/// refusals at debug). `Display` gives a one-line message.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum OutlierEvent {
    /// The host was ejected.
    Ejected {
        /// The ejected endpoint.
        addr: SocketAddr,
        /// What it was detected for.
        reason: EjectionReason,
        /// How long the ejection lasts (the host returns at the first sweep after that).
        duration: Duration,
        /// How many times the host has been ejected, this one included.
        times_ejected: u32,
        /// The statistics behind the decision, e.g. `success rate 50.0 below threshold 52.0
        /// (mean 90.0, stdev 20.0; 100 requests, 5 hosts)`.
        detail: String,
    },
    /// The host was detected as an outlier but lost the enforcement roll (`enforcing_<type>`).
    NotEnforced {
        /// The endpoint.
        addr: SocketAddr,
        /// What it was detected for.
        reason: EjectionReason,
    },
    /// The host was detected as an outlier but the max-ejection-percent rule refused the
    /// ejection.
    Overflow {
        /// The endpoint.
        addr: SocketAddr,
        /// What it was detected for.
        reason: EjectionReason,
    },
    /// A sweep took the host back.
    Unejected {
        /// The endpoint.
        addr: SocketAddr,
        /// How long it was ejected.
        ejected_for: Duration,
    },
}

impl OutlierEvent {
    /// The endpoint the event is about.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Ejected { addr, .. }
            | Self::NotEnforced { addr, .. }
            | Self::Overflow { addr, .. }
            | Self::Unejected { addr, .. } => *addr,
        }
    }

    /// Ranks events for `record`, which returns one: an ejection over a refusal.
    pub(super) fn weight(&self) -> u8 {
        match self {
            Self::Ejected { .. } => 3,
            Self::Overflow { .. } => 2,
            Self::NotEnforced { .. } => 1,
            Self::Unejected { .. } => 0,
        }
    }
}

impl fmt::Display for OutlierEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ejected {
                addr,
                reason,
                duration,
                times_ejected,
                detail,
            } => write!(
                f,
                "outlier detection ejected {addr} for {duration:?} ({reason}, ejection {times_ejected}): {detail}"
            ),
            Self::NotEnforced { addr, reason } => write!(
                f,
                "outlier detection found {addr} to be an outlier ({reason}) but did not eject it: enforcement roll lost"
            ),
            Self::Overflow { addr, reason } => write!(
                f,
                "outlier detection found {addr} to be an outlier ({reason}) but did not eject it: max_ejection_percent reached"
            ),
            Self::Unejected { addr, ejected_for } => {
                write!(
                    f,
                    "outlier detection un-ejected {addr} after {ejected_for:?}"
                )
            }
        }
    }
}

/// Envoy's outlier detection counters and gauge, under Envoy's names
/// (`cluster.<name>.outlier_detection.<field>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierStats {
    /// Gauge: hosts ejected now.
    pub ejections_active: u64,
    /// Ejections enforced, all reasons.
    pub ejections_enforced_total: u64,
    /// Ejections refused by the max-ejection-percent rule.
    pub ejections_overflow: u64,
    /// Consecutive-5xx outliers detected.
    pub ejections_detected_consecutive_5xx: u64,
    /// Consecutive-5xx ejections enforced.
    pub ejections_enforced_consecutive_5xx: u64,
    /// Consecutive-gateway-failure outliers detected.
    pub ejections_detected_consecutive_gateway_failure: u64,
    /// Consecutive-gateway-failure ejections enforced.
    pub ejections_enforced_consecutive_gateway_failure: u64,
    /// Consecutive-local-origin-failure outliers detected.
    pub ejections_detected_consecutive_local_origin_failure: u64,
    /// Consecutive-local-origin-failure ejections enforced.
    pub ejections_enforced_consecutive_local_origin_failure: u64,
    /// Success-rate outliers detected.
    pub ejections_detected_success_rate: u64,
    /// Success-rate ejections enforced.
    pub ejections_enforced_success_rate: u64,
    /// Failure-percentage outliers detected.
    pub ejections_detected_failure_percentage: u64,
    /// Failure-percentage ejections enforced.
    pub ejections_enforced_failure_percentage: u64,
    /// Local-origin success-rate outliers detected.
    pub ejections_detected_local_origin_success_rate: u64,
    /// Local-origin success-rate ejections enforced.
    pub ejections_enforced_local_origin_success_rate: u64,
    /// Local-origin failure-percentage outliers detected.
    pub ejections_detected_local_origin_failure_percentage: u64,
    /// Local-origin failure-percentage ejections enforced.
    pub ejections_enforced_local_origin_failure_percentage: u64,
}

impl OutlierStats {
    /// Outliers of this kind detected (enforced or not).
    pub fn detected(&self, reason: EjectionReason) -> u64 {
        match reason {
            EjectionReason::Consecutive5xx => self.ejections_detected_consecutive_5xx,
            EjectionReason::ConsecutiveGatewayFailure => {
                self.ejections_detected_consecutive_gateway_failure
            }
            EjectionReason::ConsecutiveLocalOriginFailure => {
                self.ejections_detected_consecutive_local_origin_failure
            }
            EjectionReason::SuccessRate => self.ejections_detected_success_rate,
            EjectionReason::FailurePercentage => self.ejections_detected_failure_percentage,
            EjectionReason::LocalOriginSuccessRate => {
                self.ejections_detected_local_origin_success_rate
            }
            EjectionReason::LocalOriginFailurePercentage => {
                self.ejections_detected_local_origin_failure_percentage
            }
        }
    }

    /// Ejections of this kind enforced.
    pub fn enforced(&self, reason: EjectionReason) -> u64 {
        match reason {
            EjectionReason::Consecutive5xx => self.ejections_enforced_consecutive_5xx,
            EjectionReason::ConsecutiveGatewayFailure => {
                self.ejections_enforced_consecutive_gateway_failure
            }
            EjectionReason::ConsecutiveLocalOriginFailure => {
                self.ejections_enforced_consecutive_local_origin_failure
            }
            EjectionReason::SuccessRate => self.ejections_enforced_success_rate,
            EjectionReason::FailurePercentage => self.ejections_enforced_failure_percentage,
            EjectionReason::LocalOriginSuccessRate => {
                self.ejections_enforced_local_origin_success_rate
            }
            EjectionReason::LocalOriginFailurePercentage => {
                self.ejections_enforced_local_origin_failure_percentage
            }
        }
    }

    /// Every counter with its Envoy name, gauge first, for exporting as metrics.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ejections_active", self.ejections_active),
            ("ejections_enforced_total", self.ejections_enforced_total),
            ("ejections_overflow", self.ejections_overflow),
            (
                "ejections_detected_consecutive_5xx",
                self.ejections_detected_consecutive_5xx,
            ),
            (
                "ejections_enforced_consecutive_5xx",
                self.ejections_enforced_consecutive_5xx,
            ),
            (
                "ejections_detected_consecutive_gateway_failure",
                self.ejections_detected_consecutive_gateway_failure,
            ),
            (
                "ejections_enforced_consecutive_gateway_failure",
                self.ejections_enforced_consecutive_gateway_failure,
            ),
            (
                "ejections_detected_consecutive_local_origin_failure",
                self.ejections_detected_consecutive_local_origin_failure,
            ),
            (
                "ejections_enforced_consecutive_local_origin_failure",
                self.ejections_enforced_consecutive_local_origin_failure,
            ),
            (
                "ejections_detected_success_rate",
                self.ejections_detected_success_rate,
            ),
            (
                "ejections_enforced_success_rate",
                self.ejections_enforced_success_rate,
            ),
            (
                "ejections_detected_failure_percentage",
                self.ejections_detected_failure_percentage,
            ),
            (
                "ejections_enforced_failure_percentage",
                self.ejections_enforced_failure_percentage,
            ),
            (
                "ejections_detected_local_origin_success_rate",
                self.ejections_detected_local_origin_success_rate,
            ),
            (
                "ejections_enforced_local_origin_success_rate",
                self.ejections_enforced_local_origin_success_rate,
            ),
            (
                "ejections_detected_local_origin_failure_percentage",
                self.ejections_detected_local_origin_failure_percentage,
            ),
            (
                "ejections_enforced_local_origin_failure_percentage",
                self.ejections_enforced_local_origin_failure_percentage,
            ),
        ]
    }
}
