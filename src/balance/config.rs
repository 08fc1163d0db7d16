//! Balancer settings, with their defaults and precedent.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::classify::{Classify, DefaultClassify};
use crate::error::{BuildError, check_duration};
use crate::outlier::OutlierConfig;

/// How the balancer chooses an endpoint for each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Picker {
    /// Power of two choices over PeakEWMA cost (the default, as in Finagle, tower and Linkerd):
    /// draw two *distinct* endpoints at random, send to the one with the lower
    /// `rtt_estimate × (in_flight + 1) / weight`; a tie goes to the first drawn.
    ///
    /// Envoy and gRPC draw the two with replacement, so with two endpoints the busier one still
    /// wins a quarter of the picks; with distinct pairs it never does.
    #[default]
    P2cPeakEwma,
    /// Power of two choices over in-flight requests: `(in_flight + 1) / weight`.
    P2cLeastRequest,
    /// Each endpoint in turn, ignoring load and weights.
    RoundRobin,
    /// A uniformly random endpoint, ignoring load and weights.
    Random,
    /// A random endpoint with probability proportional to its weight, ignoring load.
    Weighted,
}

/// Balancer settings; build one with [`BalanceConfig::builder`].
///
/// | setting | default | precedent |
/// |---|---|---|
/// | [`picker`](BalanceConfigBuilder::picker) | [`Picker::P2cPeakEwma`] | Finagle, tower, Linkerd |
/// | [`default_rtt`](BalanceConfigBuilder::default_rtt) | 30 ms | Linkerd, tower's example |
/// | [`decay`](BalanceConfigBuilder::decay) | 10 s | Finagle, Linkerd |
/// | [`failure_penalty`](BalanceConfigBuilder::failure_penalty) | 5 s | Linkerd's failure-penalising estimator |
/// | [`no_endpoint_timeout`](BalanceConfigBuilder::no_endpoint_timeout) | 3 s | Linkerd's outbound fail-fast |
/// | [`seed`](BalanceConfigBuilder::seed) | from OS entropy | — |
/// | [`classify`](BalanceConfigBuilder::classify) | [`DefaultClassify`] | Envoy's outlier detection |
/// | [`max_requests`](BalanceConfigBuilder::max_requests) | 1024 in flight for the service | Envoy's `max_requests` |
/// | [`max_requests_per_endpoint`](BalanceConfigBuilder::max_requests_per_endpoint) | unlimited | — |
/// | [`panic_threshold`](BalanceConfigBuilder::panic_threshold) | 50 % | Envoy's `healthy_panic_threshold` |
/// | [`breaker`](BalanceConfigBuilder::breaker) | 5 consecutive failures, open 1 s → 60 s | Finagle, Linkerd |
/// | [`outlier`](BalanceConfigBuilder::outlier) | Envoy's outlier detection defaults | Envoy |
#[derive(Clone)]
pub struct BalanceConfig {
    breaker: BreakerConfig,
    outlier: OutlierConfig,
    max_requests: u64,
    max_requests_per_endpoint: Option<u64>,
    panic_threshold: u8,
    picker: Picker,
    default_rtt: Duration,
    decay: Duration,
    failure_penalty: Duration,
    no_endpoint_timeout: Duration,
    seed: Option<u64>,
    classify: Arc<dyn Classify>,
}

impl std::fmt::Debug for BalanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceConfig")
            .field("picker", &self.picker)
            .field("default_rtt", &self.default_rtt)
            .field("decay", &self.decay)
            .field("failure_penalty", &self.failure_penalty)
            .field("no_endpoint_timeout", &self.no_endpoint_timeout)
            .field("seed", &self.seed)
            .field("max_requests", &self.max_requests)
            .field("max_requests_per_endpoint", &self.max_requests_per_endpoint)
            .field("panic_threshold", &self.panic_threshold)
            .field("breaker", &self.breaker)
            .field("outlier", &self.outlier)
            .finish_non_exhaustive()
    }
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            picker: Picker::default(),
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(5),
            no_endpoint_timeout: Duration::from_secs(3),
            seed: None,
            classify: Arc::new(DefaultClassify),
            breaker: BreakerConfig::default(),
            outlier: OutlierConfig::default(),
            max_requests: 1024,
            max_requests_per_endpoint: None,
            panic_threshold: 50,
        }
    }
}

impl BalanceConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BalanceConfigBuilder {
        BalanceConfigBuilder {
            config: Self::default(),
        }
    }

    /// The picking rule.
    pub fn picker(&self) -> Picker {
        self.picker
    }

    /// The RTT a new endpoint is assumed to have.
    pub fn default_rtt(&self) -> Duration {
        self.default_rtt
    }

    /// The PeakEWMA time constant.
    pub fn decay(&self) -> Duration {
        self.decay
    }

    /// The least RTT charged for a failed request.
    pub fn failure_penalty(&self) -> Duration {
        self.failure_penalty
    }

    /// How long a request waits for an endpoint before failing with [`NoEndpoint`](crate::error::NoEndpoint).
    pub fn no_endpoint_timeout(&self) -> Duration {
        self.no_endpoint_timeout
    }

    /// The random seed, if fixed.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// What counts as a failure.
    pub fn classify(&self) -> &Arc<dyn Classify> {
        &self.classify
    }

    /// Each endpoint's circuit breaker settings.
    pub fn breaker(&self) -> &BreakerConfig {
        &self.breaker
    }

    /// Outlier detection settings.
    pub fn outlier(&self) -> &OutlierConfig {
        &self.outlier
    }

    /// The most requests in flight for the whole service.
    pub fn max_requests(&self) -> u64 {
        self.max_requests
    }

    /// The most requests in flight to one endpoint, if capped.
    pub fn max_requests_per_endpoint(&self) -> Option<u64> {
        self.max_requests_per_endpoint
    }

    /// Below this percentage of healthy endpoints, health is ignored (0: never).
    pub fn panic_threshold(&self) -> u8 {
        self.panic_threshold
    }
}

/// Builds a validated [`BalanceConfig`].
#[derive(Clone, Debug)]
pub struct BalanceConfigBuilder {
    config: BalanceConfig,
}

impl BalanceConfigBuilder {
    /// Sets the picking rule (default [`Picker::P2cPeakEwma`]).
    pub fn picker(mut self, picker: Picker) -> Self {
        self.config.picker = picker;
        self
    }

    /// Sets the RTT assumed for an endpoint with no samples yet (default 30 ms; 1 µs to 1 h).
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.config.default_rtt = rtt;
        self
    }

    /// Sets the PeakEWMA decay time constant (default 10 s; 1 ms to 1 h).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.config.decay = decay;
        self
    }

    /// Sets the least RTT charged for a failed request (default 5 s; up to 1 h, 0 disables it).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.config.failure_penalty = penalty;
        self
    }

    /// Sets how long a request waits for an endpoint (default 3 s; 0 fails at once; up to 1 h).
    pub fn no_endpoint_timeout(mut self, timeout: Duration) -> Self {
        self.config.no_endpoint_timeout = timeout;
        self
    }

    /// Fixes the random seed so that picks are reproducible (tests, simulations).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Sets each endpoint's circuit breaker (default: opens after 5 consecutive failures for
    /// 1 s, doubling up to 60 s, then lets one probe through; [`BreakerConfig::disabled`] turns
    /// it off). An endpoint whose breaker is open is not picked, and keeps its connections.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Sets outlier detection over the endpoint set (default: Envoy's defaults: eject after 5
    /// consecutive 5xx, or a success rate below mean − 1.9 stdev, for 30 s × times ejected up to
    /// 300 s, at most 10 % of endpoints, swept every 10 s; [`OutlierConfig::disabled`] turns it
    /// off). An ejected endpoint is not picked, and keeps its connections.
    pub fn outlier(mut self, outlier: OutlierConfig) -> Self {
        self.config.outlier = outlier;
        self
    }

    /// Sets the most requests in flight for the whole service (default 1024, Envoy's
    /// `max_requests`; 1 to 1,000,000). A request over it fails at once with
    /// [`Overloaded`](crate::error::Overloaded), which retry layers do not retry.
    pub fn max_requests(mut self, max: u64) -> Self {
        self.config.max_requests = max;
        self
    }

    /// Caps the requests in flight to each endpoint (default unlimited; 1 to 1,000,000). An
    /// endpoint at its cap is not picked; when every endpoint is, the request fails at once with
    /// [`Overloaded`](crate::error::Overloaded). Racing callers may exceed it by one each.
    pub fn max_requests_per_endpoint(mut self, max: u64) -> Self {
        self.config.max_requests_per_endpoint = Some(max);
        self
    }

    /// Sets the panic threshold (default 50 %, Envoy's): when fewer than this percentage of the
    /// endpoints are healthy, traffic is spread over all of them, unhealthy ones included, rather
    /// than concentrated on the few left. 0 turns panic mode off: with no healthy endpoint, a
    /// request waits `no_endpoint_timeout` and fails with [`NoEndpoint`](crate::error::NoEndpoint).
    pub fn panic_threshold(mut self, percent: u8) -> Self {
        self.config.panic_threshold = percent;
        self
    }

    /// Sets what counts as a failure (default [`DefaultClassify`]).
    pub fn classify(mut self, classify: impl Classify) -> Self {
        self.config.classify = Arc::new(classify);
        self
    }

    /// Checks every setting and returns the config, or says which setting is out of range.
    pub fn build(self) -> Result<BalanceConfig, BuildError> {
        let c = &self.config;
        check_duration("default_rtt", c.default_rtt, Duration::from_micros(1))?;
        check_duration("decay", c.decay, Duration::from_millis(1))?;
        check_duration("failure_penalty", c.failure_penalty, Duration::ZERO)?;
        check_duration("no_endpoint_timeout", c.no_endpoint_timeout, Duration::ZERO)?;
        if !(1..=1_000_000).contains(&c.max_requests) {
            return Err(BuildError::InvalidConfig(format!(
                "max_requests is {}; it must be between 1 and 1000000",
                c.max_requests
            )));
        }
        if let Some(max) = c.max_requests_per_endpoint
            && !(1..=1_000_000).contains(&max)
        {
            return Err(BuildError::InvalidConfig(format!(
                "max_requests_per_endpoint is {max}; it must be between 1 and 1000000"
            )));
        }
        if c.panic_threshold > 100 {
            return Err(BuildError::InvalidConfig(format!(
                "panic_threshold is {}; it must be a percentage, 0 to 100",
                c.panic_threshold
            )));
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = BalanceConfig::builder().build().unwrap();
        assert_eq!(config.picker(), Picker::P2cPeakEwma);
        assert_eq!(config.default_rtt(), Duration::from_millis(30));
        assert_eq!(config.decay(), Duration::from_secs(10));
        assert_eq!(config.no_endpoint_timeout(), Duration::from_secs(3));
    }

    #[test]
    fn out_of_range_settings_are_rejected_by_name() {
        let err = BalanceConfig::builder()
            .decay(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("decay"), "{err}");
        let err = BalanceConfig::builder()
            .no_endpoint_timeout(Duration::from_secs(86_400))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("no_endpoint_timeout"), "{err}");
        assert!(
            BalanceConfig::builder()
                .no_endpoint_timeout(Duration::ZERO)
                .build()
                .is_ok()
        );
    }
}
