//! Outlier detection settings: Envoy's fields, names and defaults, checked when built.

use std::time::Duration;

use crate::error::BuildError;

/// Envoy's default `interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `base_ejection_time`.
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time` (raised to `base_ejection_time` when that is longer).
const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// The largest accepted `success_rate_stdev_factor`: a factor of 100. Success rates lie in
/// [0, 100], so with `n` hosts the threshold `mean − factor·stdev` can only exceed the lowest rate
/// when `factor < √(n − 1)`; a factor of 100 already needs more than 10,000 hosts.
const MAX_STDEV_FACTOR: u32 = 100_000;

/// How many hosts may be ejected at once, given `max_ejection_percent`.
///
/// With `n` hosts ejected out of `N`:
///
/// | rule | another ejection is allowed iff | 9 hosts at 10 % | 10 hosts at 10 % | any hosts at 0 % |
/// |---|---|---|---|---|
/// | [`Envoy`](Self::Envoy) | `100·(n+1)/N ≤ max`, or `always_eject_one_host` and `n = 0` | 0 (1 with `always_eject_one_host`) | 1 | 0 (1 with `always_eject_one_host`) |
/// | [`GrpcA50`](Self::GrpcA50) | `100·n/N < max` | 1 | 1 | 0 |
///
/// The rule also selects the other differences between Envoy and gRFC A50 described in the
/// [module docs](super#envoy-and-grpc-a50): the failure-percentage comparison (`≥` or `>`), the
/// order of the sweep, and the ejection-time multiplier's cap and decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum MaxEjectionRule {
    /// Envoy since 1.27 (envoyproxy/envoy#27624, #27909): an ejection is allowed only if the
    /// ejected share, counting the new one, stays within `max_ejection_percent`; under 10 hosts
    /// at the default 10 % nothing is ejected unless `always_eject_one_host` is set (Envoy 1.31,
    /// #34796).
    #[default]
    Envoy,
    /// gRFC A50 and grpc-go (and Envoy before mid-2023): an ejection is skipped only once the
    /// ejected share already reaches `max_ejection_percent`, so it may go one host over (1 of 9
    /// at 10 %); at 0 % nothing is ever ejected. `always_eject_one_host` does not apply.
    GrpcA50,
}

/// Outlier detection settings, with Envoy's field names and defaults
/// (`envoy.config.cluster.v3.OutlierDetection`).
///
/// [`OutlierConfig::default()`] is enabled with Envoy's defaults; [`OutlierConfig::disabled()`]
/// never ejects. Build anything else with [`OutlierConfig::builder()`], which starts from the
/// defaults and rejects invalid settings.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `interval` | 10 s | time between sweeps |
/// | `base_ejection_time` | 30 s | first ejection's length; the `k`-th in a row lasts `k` times this |
/// | `max_ejection_time` | 300 s, or `base_ejection_time` if longer | cap on an ejection's length |
/// | `max_ejection_time_jitter` | 0 | random extra ejection time, uniform in `[0, jitter]` (ms steps) |
/// | `max_ejection_percent` | 10 | share of hosts that may be ejected at once, by [`MaxEjectionRule`] |
/// | `always_eject_one_host` | false | Envoy's rule: one host may be ejected whatever the percentage |
/// | `consecutive_5xx` / `enforcing_consecutive_5xx` | 5 / 100 | 5xx in a row (local-origin failures included unless split) |
/// | `consecutive_gateway_failure` / `enforcing_consecutive_gateway_failure` | 5 / **0** | 502, 503, 504 in a row: detected and counted, not enforced |
/// | `split_external_local_origin_errors` | false | track local-origin failures apart |
/// | `consecutive_local_origin_failure` / `enforcing_consecutive_local_origin_failure` | 5 / 100 | local-origin failures in a row (split mode) |
/// | `success_rate_minimum_hosts` / `success_rate_request_volume` | 5 / 100 | hosts, each with this many requests in the interval, needed for the success-rate test |
/// | `success_rate_stdev_factor` | 1900 | the stdev multiplier, in thousandths (1.9) |
/// | `enforcing_success_rate` / `enforcing_local_origin_success_rate` | 100 / 100 | |
/// | `failure_percentage_threshold` | 85 | failure percentage at which a host is an outlier |
/// | `failure_percentage_minimum_hosts` / `failure_percentage_request_volume` | 5 / 50 | as for success rate |
/// | `enforcing_failure_percentage` / `enforcing_failure_percentage_local_origin` | **0** / **0** | the failure-percentage test is detected and counted, not enforced |
/// | `ejection_rule` | [`Envoy`](MaxEjectionRule::Envoy) | not an Envoy field: Envoy's rules or gRFC A50's |
///
/// Every `enforcing_*` value is the percentage chance that a detected outlier is actually ejected
/// (0 never, 100 always). Envoy's `successful_active_health_check_uneject_host` has no equivalent
/// here: the detector has no active health checker to hear from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    pub(super) enabled: bool,
    pub(super) interval: Duration,
    pub(super) base_ejection_time: Duration,
    pub(super) max_ejection_time: Duration,
    pub(super) max_ejection_time_jitter: Duration,
    pub(super) max_ejection_percent: u32,
    pub(super) always_eject_one_host: bool,
    pub(super) consecutive_5xx: u32,
    pub(super) enforcing_consecutive_5xx: u32,
    pub(super) consecutive_gateway_failure: u32,
    pub(super) enforcing_consecutive_gateway_failure: u32,
    pub(super) split_external_local_origin_errors: bool,
    pub(super) consecutive_local_origin_failure: u32,
    pub(super) enforcing_consecutive_local_origin_failure: u32,
    pub(super) success_rate_minimum_hosts: u32,
    pub(super) success_rate_request_volume: u32,
    pub(super) success_rate_stdev_factor: u32,
    pub(super) enforcing_success_rate: u32,
    pub(super) enforcing_local_origin_success_rate: u32,
    pub(super) failure_percentage_threshold: u32,
    pub(super) failure_percentage_minimum_hosts: u32,
    pub(super) failure_percentage_request_volume: u32,
    pub(super) enforcing_failure_percentage: u32,
    pub(super) enforcing_failure_percentage_local_origin: u32,
    pub(super) ejection_rule: MaxEjectionRule,
}

impl Default for OutlierConfig {
    /// Envoy's defaults, enabled; see the table on [`OutlierConfig`].
    fn default() -> Self {
        Self {
            enabled: true,
            interval: DEFAULT_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            ejection_rule: MaxEjectionRule::Envoy,
        }
    }
}

impl OutlierConfig {
    /// A builder starting from Envoy's defaults.
    pub fn builder() -> OutlierConfigBuilder {
        OutlierConfigBuilder {
            config: Self::default(),
            max_ejection_time: None,
        }
    }

    /// Outlier detection switched off: nothing is counted and no host is ever ejected (Envoy's
    /// behaviour for a cluster without an `outlier_detection` block). The other settings keep
    /// their defaults.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether outlier detection runs at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Time between sweeps (`interval`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The first ejection's length (`base_ejection_time`).
    pub fn base_ejection_time(&self) -> Duration {
        self.base_ejection_time
    }

    /// The cap on an ejection's length, jitter aside (`max_ejection_time`).
    pub fn max_ejection_time(&self) -> Duration {
        self.max_ejection_time
    }

    /// The most random time added to an ejection (`max_ejection_time_jitter`).
    pub fn max_ejection_time_jitter(&self) -> Duration {
        self.max_ejection_time_jitter
    }

    /// The share of hosts that may be ejected at once, in percent (`max_ejection_percent`).
    pub fn max_ejection_percent(&self) -> u32 {
        self.max_ejection_percent
    }

    /// Whether Envoy's rule lets one host be ejected whatever the percentage
    /// (`always_eject_one_host`).
    pub fn always_eject_one_host(&self) -> bool {
        self.always_eject_one_host
    }

    /// 5xx responses in a row that make a host an outlier (`consecutive_5xx`).
    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx
    }

    /// Chance in percent that a consecutive-5xx outlier is ejected (`enforcing_consecutive_5xx`).
    pub fn enforcing_consecutive_5xx(&self) -> u32 {
        self.enforcing_consecutive_5xx
    }

    /// Gateway failures in a row that make a host an outlier (`consecutive_gateway_failure`).
    pub fn consecutive_gateway_failure(&self) -> u32 {
        self.consecutive_gateway_failure
    }

    /// Chance in percent that a consecutive-gateway-failure outlier is ejected
    /// (`enforcing_consecutive_gateway_failure`).
    pub fn enforcing_consecutive_gateway_failure(&self) -> u32 {
        self.enforcing_consecutive_gateway_failure
    }

    /// Whether local-origin failures are tracked apart from responses
    /// (`split_external_local_origin_errors`).
    pub fn split_external_local_origin_errors(&self) -> bool {
        self.split_external_local_origin_errors
    }

    /// Local-origin failures in a row that make a host an outlier in split mode
    /// (`consecutive_local_origin_failure`).
    pub fn consecutive_local_origin_failure(&self) -> u32 {
        self.consecutive_local_origin_failure
    }

    /// Chance in percent that a consecutive-local-origin-failure outlier is ejected
    /// (`enforcing_consecutive_local_origin_failure`).
    pub fn enforcing_consecutive_local_origin_failure(&self) -> u32 {
        self.enforcing_consecutive_local_origin_failure
    }

    /// Hosts with enough requests needed before the success-rate test runs
    /// (`success_rate_minimum_hosts`).
    pub fn success_rate_minimum_hosts(&self) -> u32 {
        self.success_rate_minimum_hosts
    }

    /// Requests in the last interval a host needs to take part in the success-rate test
    /// (`success_rate_request_volume`).
    pub fn success_rate_request_volume(&self) -> u32 {
        self.success_rate_request_volume
    }

    /// The standard deviation's multiplier in thousandths (`success_rate_stdev_factor`; 1900 is
    /// 1.9).
    pub fn success_rate_stdev_factor(&self) -> u32 {
        self.success_rate_stdev_factor
    }

    /// Chance in percent that a success-rate outlier is ejected (`enforcing_success_rate`).
    pub fn enforcing_success_rate(&self) -> u32 {
        self.enforcing_success_rate
    }

    /// Chance in percent that a local-origin success-rate outlier is ejected
    /// (`enforcing_local_origin_success_rate`).
    pub fn enforcing_local_origin_success_rate(&self) -> u32 {
        self.enforcing_local_origin_success_rate
    }

    /// Failure percentage that makes a host an outlier (`failure_percentage_threshold`).
    pub fn failure_percentage_threshold(&self) -> u32 {
        self.failure_percentage_threshold
    }

    /// Hosts with enough requests needed before the failure-percentage test runs
    /// (`failure_percentage_minimum_hosts`).
    pub fn failure_percentage_minimum_hosts(&self) -> u32 {
        self.failure_percentage_minimum_hosts
    }

    /// Requests in the last interval a host needs to take part in the failure-percentage test
    /// (`failure_percentage_request_volume`).
    pub fn failure_percentage_request_volume(&self) -> u32 {
        self.failure_percentage_request_volume
    }

    /// Chance in percent that a failure-percentage outlier is ejected
    /// (`enforcing_failure_percentage`).
    pub fn enforcing_failure_percentage(&self) -> u32 {
        self.enforcing_failure_percentage
    }

    /// Chance in percent that a local-origin failure-percentage outlier is ejected
    /// (`enforcing_failure_percentage_local_origin`).
    pub fn enforcing_failure_percentage_local_origin(&self) -> u32 {
        self.enforcing_failure_percentage_local_origin
    }

    /// Envoy's rules or gRFC A50's (see [`MaxEjectionRule`]).
    pub fn ejection_rule(&self) -> MaxEjectionRule {
        self.ejection_rule
    }
}

/// Builds an [`OutlierConfig`]: one setter per Envoy field, same names; starts from Envoy's
/// defaults.
///
/// ```
/// use std::time::Duration;
/// use proxyless::outlier::{MaxEjectionRule, OutlierConfig};
///
/// let config = OutlierConfig::builder()
///     .interval(Duration::from_secs(5))
///     .max_ejection_percent(50)
///     .enforcing_failure_percentage(100)
///     .ejection_rule(MaxEjectionRule::GrpcA50)
///     .build()
///     .unwrap();
/// assert_eq!(config.max_ejection_time(), Duration::from_secs(300));
///
/// // Envoy refuses a cap below the base.
/// let invalid = OutlierConfig::builder()
///     .base_ejection_time(Duration::from_secs(60))
///     .max_ejection_time(Duration::from_secs(30))
///     .build();
/// assert!(invalid.is_err());
/// ```
#[derive(Clone, Debug)]
pub struct OutlierConfigBuilder {
    config: OutlierConfig,
    /// `None` until set: then the default is `max(300 s, base_ejection_time)`, as in Envoy.
    max_ejection_time: Option<Duration>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl OutlierConfigBuilder {
    setters! {
        /// Time between sweeps; above zero. Default 10 s.
        interval: Duration;
        /// The first ejection's length; above zero. Default 30 s.
        base_ejection_time: Duration;
        /// The most random time added to each ejection, drawn uniformly in whole milliseconds
        /// from `[0, jitter]`. Default 0.
        max_ejection_time_jitter: Duration;
        /// The share of hosts that may be ejected at once, 0 to 100. Default 10: with Envoy's rule
        /// and fewer than 10 hosts, nothing is ejected unless `always_eject_one_host` is set.
        max_ejection_percent: u32;
        /// With Envoy's rule, allow one ejection whatever `max_ejection_percent` says. Default
        /// false.
        always_eject_one_host: bool;
        /// 5xx responses in a row that make a host an outlier; at least 1. Default 5.
        consecutive_5xx: u32;
        /// Chance in percent (0 to 100) that a consecutive-5xx outlier is ejected. Default 100.
        enforcing_consecutive_5xx: u32;
        /// Gateway failures (502, 503, 504) in a row that make a host an outlier; at least 1.
        /// Default 5.
        consecutive_gateway_failure: u32;
        /// Chance in percent (0 to 100) that a consecutive-gateway-failure outlier is ejected.
        /// Default 0: detected and counted only.
        enforcing_consecutive_gateway_failure: u32;
        /// Track local-origin failures (connect failures, resets, timeouts) apart from responses.
        /// Default false: they count as 503 or 504.
        split_external_local_origin_errors: bool;
        /// Local-origin failures in a row that make a host an outlier in split mode; at least 1.
        /// Default 5.
        consecutive_local_origin_failure: u32;
        /// Chance in percent (0 to 100) that a consecutive-local-origin-failure outlier is
        /// ejected. Default 100.
        enforcing_consecutive_local_origin_failure: u32;
        /// Hosts with enough requests needed before the success-rate test runs; at least 1.
        /// Default 5.
        success_rate_minimum_hosts: u32;
        /// Requests in the last interval a host needs to take part in the success-rate test; at
        /// least 1. Default 100.
        success_rate_request_volume: u32;
        /// The standard deviation's multiplier in thousandths, at most 100000. Default 1900 (1.9).
        success_rate_stdev_factor: u32;
        /// Chance in percent (0 to 100) that a success-rate outlier is ejected. Default 100.
        enforcing_success_rate: u32;
        /// Chance in percent (0 to 100) that a local-origin success-rate outlier is ejected.
        /// Default 100.
        enforcing_local_origin_success_rate: u32;
        /// Failure percentage (0 to 100) that makes a host an outlier. Default 85.
        failure_percentage_threshold: u32;
        /// Hosts with enough requests needed before the failure-percentage test runs; at least 1.
        /// Default 5.
        failure_percentage_minimum_hosts: u32;
        /// Requests in the last interval a host needs to take part in the failure-percentage
        /// test; at least 1. Default 50.
        failure_percentage_request_volume: u32;
        /// Chance in percent (0 to 100) that a failure-percentage outlier is ejected. Default 0:
        /// detected and counted only.
        enforcing_failure_percentage: u32;
        /// Chance in percent (0 to 100) that a local-origin failure-percentage outlier is
        /// ejected. Default 0.
        enforcing_failure_percentage_local_origin: u32;
        /// Envoy's rules or gRFC A50's (see [`MaxEjectionRule`]). Default Envoy.
        ejection_rule: MaxEjectionRule;
    }

    /// The cap on an ejection's length, jitter aside; at least `base_ejection_time`. Default
    /// 300 s, or `base_ejection_time` if that is longer.
    pub fn max_ejection_time(mut self, value: Duration) -> Self {
        self.max_ejection_time = Some(value);
        self
    }

    /// Checks the settings and returns the configuration (enabled).
    ///
    /// Rejected with [`BuildError::InvalidConfig`]: a zero `interval` or `base_ejection_time`,
    /// `max_ejection_time` below `base_ejection_time` (as Envoy rejects it), any percentage,
    /// enforcement or `failure_percentage_threshold` above 100, a consecutive count, minimum host
    /// count or request volume of 0 (Envoy reads a 0 volume or host count as 1 and a 0 count as
    /// "never"; say so with the enforcement instead), and a `success_rate_stdev_factor` above
    /// 100000.
    pub fn build(self) -> Result<OutlierConfig, BuildError> {
        let mut config = self.config;
        config.enabled = true;
        config.max_ejection_time = self
            .max_ejection_time
            .unwrap_or_else(|| DEFAULT_MAX_EJECTION_TIME.max(config.base_ejection_time));
        let invalid = |why: String| {
            Err(BuildError::InvalidConfig(format!(
                "outlier detection {why}"
            )))
        };
        if config.interval.is_zero() {
            return invalid("interval is 0; it must be above zero".into());
        }
        if config.base_ejection_time.is_zero() {
            return invalid("base_ejection_time is 0; it must be above zero".into());
        }
        if config.max_ejection_time < config.base_ejection_time {
            return invalid(format!(
                "max_ejection_time ({:?}) is below base_ejection_time ({:?})",
                config.max_ejection_time, config.base_ejection_time
            ));
        }
        for (name, value) in [
            ("max_ejection_percent", config.max_ejection_percent),
            (
                "enforcing_consecutive_5xx",
                config.enforcing_consecutive_5xx,
            ),
            (
                "enforcing_consecutive_gateway_failure",
                config.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                config.enforcing_consecutive_local_origin_failure,
            ),
            ("enforcing_success_rate", config.enforcing_success_rate),
            (
                "enforcing_local_origin_success_rate",
                config.enforcing_local_origin_success_rate,
            ),
            (
                "failure_percentage_threshold",
                config.failure_percentage_threshold,
            ),
            (
                "enforcing_failure_percentage",
                config.enforcing_failure_percentage,
            ),
            (
                "enforcing_failure_percentage_local_origin",
                config.enforcing_failure_percentage_local_origin,
            ),
        ] {
            if value > 100 {
                return invalid(format!("{name} is {value}; it must be between 0 and 100"));
            }
        }
        for (name, value, hint) in [
            (
                "consecutive_5xx",
                config.consecutive_5xx,
                "; to never eject, set enforcing_consecutive_5xx to 0",
            ),
            (
                "consecutive_gateway_failure",
                config.consecutive_gateway_failure,
                "; to never eject, set enforcing_consecutive_gateway_failure to 0",
            ),
            (
                "consecutive_local_origin_failure",
                config.consecutive_local_origin_failure,
                "; to never eject, set enforcing_consecutive_local_origin_failure to 0",
            ),
            (
                "success_rate_minimum_hosts",
                config.success_rate_minimum_hosts,
                "",
            ),
            (
                "success_rate_request_volume",
                config.success_rate_request_volume,
                "",
            ),
            (
                "failure_percentage_minimum_hosts",
                config.failure_percentage_minimum_hosts,
                "",
            ),
            (
                "failure_percentage_request_volume",
                config.failure_percentage_request_volume,
                "",
            ),
        ] {
            if value == 0 {
                return invalid(format!("{name} is 0; it must be at least 1{hint}"));
            }
        }
        if config.success_rate_stdev_factor > MAX_STDEV_FACTOR {
            return invalid(format!(
                "success_rate_stdev_factor is {}; it must be at most {MAX_STDEV_FACTOR} (a factor of 100)",
                config.success_rate_stdev_factor
            ));
        }
        Ok(config)
    }
}
