//! Per-endpoint load: requests in flight and a PeakEWMA round-trip estimate.
//!
//! Every endpoint carries its load counters, updated with atomics only, so recording a
//! request and reading loads for a pick take no lock. The balancer's cost functions:
//!
//! - **PeakEWMA** (the default): `rtt_estimate × (in_flight + 1) / weight`, as in Finagle,
//!   tower and Linkerd. See [`PeakEwma`] for the estimator.
//! - **least request**: `(in_flight + 1) / weight`.
//!
//! # New endpoints
//!
//! An endpoint with no RTT sample yet costs **zero while nothing is in flight to it**, so it is
//! probed as soon as P2C draws it, and the **default RTT** (30 ms) per request while its first
//! requests are in flight, so it is not flooded before it has shown its latency. This is
//! Finagle's rule for endpoints without history, with the default RTT as the pending charge.
//! Pricing an unsampled endpoint at the default RTT throughout would starve it whenever the
//! others answer faster than the default: it would never get the request that measures it.
//!
//! # What is measured
//!
//! - In flight counts from dispatch until the response body ends or is dropped (not only until
//!   the response headers), so long streams count as load.
//! - The RTT sample is taken at the first response body frame (Linkerd's choice), or when the
//!   body turns out to be empty, so slow bodies count while streaming responses do not distort
//!   the estimate.
//! - A failed request (transport error, 5xx, or a gRPC status meaning the server failed) records
//!   at least a *failure penalty* RTT (5 s by default, Linkerd's 2026 failure-penalising
//!   estimator). Without it an endpoint that fails fast looks like the fastest one and attracts
//!   more traffic (linkerd2#11669).

mod peak_ewma;

pub use peak_ewma::PeakEwma;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The live load counters of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointLoad {
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    rtt: PeakEwma,
    failure_penalty: Duration,
}

impl EndpointLoad {
    pub(crate) fn new(
        default_rtt: Duration,
        decay: Duration,
        failure_penalty: Duration,
        now: Instant,
    ) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rtt: PeakEwma::new(default_rtt, decay, now),
            failure_penalty,
        }
    }

    /// Counts a request as dispatched and in flight.
    pub(crate) fn start(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request as no longer in flight.
    pub(crate) fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a successful round trip.
    pub(crate) fn observe_success(&self, rtt: Duration, now: Instant) {
        self.rtt.observe(rtt, now);
    }

    /// Records a failed request: counted, and charged at least the failure penalty.
    pub(crate) fn observe_failure(&self, rtt: Duration, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.rtt.observe(rtt.max(self.failure_penalty), now);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn rtt(&self) -> &PeakEwma {
        &self.rtt
    }

    /// PeakEWMA cost: `rtt_estimate_ns × (in_flight + 1) / weight`; zero for an endpoint with
    /// no sample and nothing in flight.
    pub(crate) fn peak_ewma_cost(&self, now: Instant, weight: u32) -> f64 {
        let in_flight = self.in_flight();
        let (estimate, sampled) = self.rtt.estimate_nanos(now);
        if !sampled && in_flight == 0 {
            return 0.0;
        }
        estimate * (in_flight + 1) as f64 / f64::from(weight.max(1))
    }

    /// Least-request cost: `(in_flight + 1) / weight`.
    pub(crate) fn in_flight_cost(&self, weight: u32) -> f64 {
        (self.in_flight() + 1) as f64 / f64::from(weight.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_never_look_fast() {
        let now = Instant::now();
        let load = EndpointLoad::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_secs(5),
            now,
        );
        load.start();
        load.observe_failure(Duration::from_micros(50), now);
        load.finish();
        assert_eq!(load.rtt().estimate(now), Duration::from_secs(5));
        assert_eq!(load.failures(), 1);
        assert_eq!(load.requests(), 1);
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsampled_endpoint_is_free_until_a_request_is_in_flight() {
        let now = Instant::now();
        let load = EndpointLoad::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_secs(5),
            now,
        );
        assert_eq!(load.peak_ewma_cost(now, 1), 0.0);
        load.start();
        assert_eq!(load.peak_ewma_cost(now, 1), 60_000_000.0);
        load.observe_success(Duration::from_millis(2), now);
        load.finish();
        assert_eq!(load.peak_ewma_cost(now, 1), 2_000_000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn cost_scales_with_in_flight_and_weight() {
        let now = Instant::now();
        let load = EndpointLoad::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_secs(5),
            now,
        );
        load.observe_success(Duration::from_millis(10), now);
        assert_eq!(load.peak_ewma_cost(now, 1), 10_000_000.0);
        load.start();
        load.start();
        assert_eq!(load.peak_ewma_cost(now, 1), 30_000_000.0);
        assert_eq!(load.peak_ewma_cost(now, 3), 10_000_000.0);
        assert_eq!(load.in_flight_cost(1), 3.0);
        assert_eq!(load.in_flight_cost(2), 1.5);
    }
}
