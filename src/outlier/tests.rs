//! Exact scenarios, one per rule: records and sweeps at explicit instants of paused time, a
//! fixed seed, and the numbers Envoy's and gRPC's own tests check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::classify::{LocalOrigin, Outcome};
use crate::error::BuildError;
use crate::rng::Rng;

const SEED: u64 = 42;
const FAIL: Outcome = Outcome::ServerError;
const OK: Outcome = Outcome::Success;
const GATEWAY: Outcome = Outcome::GatewayError;
const CONNECT: Outcome = Outcome::LocalOrigin(LocalOrigin::ConnectFailed);
const TIMEOUT: Outcome = Outcome::LocalOrigin(LocalOrigin::Timeout);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 8000 + i as u16))
}

/// A detector over `n` endpoints, with the clock's origin `t0`.
struct Set {
    detector: Detector,
    hosts: Vec<OutlierHost>,
    t0: Instant,
}

impl Set {
    fn new(config: OutlierConfig, n: usize) -> Self {
        let t0 = Instant::now();
        Self {
            detector: Detector::new(config, SEED),
            hosts: (0..n).map(|_| OutlierHost::new()).collect(),
            t0,
        }
    }

    fn list(&self) -> Vec<(SocketAddr, &OutlierHost)> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (addr(i), h))
            .collect()
    }

    fn record(&self, i: usize, outcome: Outcome, at: Duration) -> Option<OutlierEvent> {
        let hosts = self.hosts.len();
        self.detector
            .record(&self.hosts[i], addr(i), outcome, hosts, self.t0 + at)
    }

    /// Records `outcome` `n` times; returns the events.
    fn record_n(&self, i: usize, outcome: Outcome, n: usize, at: Duration) -> Vec<OutlierEvent> {
        (0..n).filter_map(|_| self.record(i, outcome, at)).collect()
    }

    /// Records `requests` outcomes, `failures` of them `failure`, spread so that no two failures
    /// are adjacent while successes last.
    fn traffic(&self, i: usize, requests: usize, failures: usize, failure: Outcome, at: Duration) {
        let successes = requests - failures;
        for j in 0..requests {
            let fail = if j < 2 * successes.min(failures) {
                j % 2 == 1
            } else {
                failures > successes
            };
            assert!(
                self.record(i, if fail { failure } else { OK }, at)
                    .is_none()
            );
        }
    }

    fn sweep(&self, at: Duration) -> Vec<OutlierEvent> {
        self.detector.sweep(&self.list(), self.t0 + at)
    }

    fn stats(&self) -> OutlierStats {
        self.detector.stats()
    }

    fn snapshot(&self, i: usize, at: Duration) -> OutlierHostSnapshot {
        self.hosts[i].snapshot(self.t0 + at)
    }
}

fn ejected(
    i: usize,
    reason: EjectionReason,
    duration: u64,
    times: u32,
    detail: &str,
) -> OutlierEvent {
    OutlierEvent::Ejected {
        addr: addr(i),
        reason,
        duration: secs(duration),
        times_ejected: times,
        detail: detail.to_string(),
    }
}

fn unejected(i: usize, after: u64) -> OutlierEvent {
    OutlierEvent::Unejected {
        addr: addr(i),
        ejected_for: secs(after),
    }
}

fn config() -> OutlierConfigBuilder {
    OutlierConfig::builder()
}

#[test]
fn defaults_are_envoys() {
    let c = OutlierConfig::default();
    assert!(c.is_enabled());
    assert_eq!(c.interval(), secs(10));
    assert_eq!(c.base_ejection_time(), secs(30));
    assert_eq!(c.max_ejection_time(), secs(300));
    assert_eq!(c.max_ejection_time_jitter(), Duration::ZERO);
    assert_eq!(c.max_ejection_percent(), 10);
    assert!(!c.always_eject_one_host());
    assert_eq!(
        (c.consecutive_5xx(), c.enforcing_consecutive_5xx()),
        (5, 100)
    );
    assert_eq!(
        (
            c.consecutive_gateway_failure(),
            c.enforcing_consecutive_gateway_failure()
        ),
        (5, 0)
    );
    assert!(!c.split_external_local_origin_errors());
    assert_eq!(
        (
            c.consecutive_local_origin_failure(),
            c.enforcing_consecutive_local_origin_failure()
        ),
        (5, 100)
    );
    assert_eq!(c.success_rate_minimum_hosts(), 5);
    assert_eq!(c.success_rate_request_volume(), 100);
    assert_eq!(c.success_rate_stdev_factor(), 1900);
    assert_eq!(c.enforcing_success_rate(), 100);
    assert_eq!(c.enforcing_local_origin_success_rate(), 100);
    assert_eq!(c.failure_percentage_threshold(), 85);
    assert_eq!(c.failure_percentage_minimum_hosts(), 5);
    assert_eq!(c.failure_percentage_request_volume(), 50);
    assert_eq!(c.enforcing_failure_percentage(), 0);
    assert_eq!(c.enforcing_failure_percentage_local_origin(), 0);
    assert_eq!(c.ejection_rule(), MaxEjectionRule::Envoy);
    assert_eq!(config().build().unwrap(), c);
    assert!(!OutlierConfig::disabled().is_enabled());
}

#[test]
fn invalid_configs_are_rejected() {
    let err = config()
        .base_ejection_time(secs(30))
        .max_ejection_time(secs(10))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::InvalidConfig(
            "outlier detection max_ejection_time (10s) is below base_ejection_time (30s)".into()
        )
    );
    // Unset, the cap follows a long base (Envoy: max(300 s, base)); set, it must not be below.
    let long = config().base_ejection_time(secs(400)).build().unwrap();
    assert_eq!(long.max_ejection_time(), secs(400));
    assert!(
        config()
            .base_ejection_time(secs(400))
            .max_ejection_time(secs(300))
            .build()
            .is_err()
    );
    assert!(config().max_ejection_time(secs(30)).build().is_ok());

    let over_100: [fn(OutlierConfigBuilder) -> OutlierConfigBuilder; 9] = [
        |b| b.max_ejection_percent(101),
        |b| b.enforcing_consecutive_5xx(101),
        |b| b.enforcing_consecutive_gateway_failure(101),
        |b| b.enforcing_consecutive_local_origin_failure(101),
        |b| b.enforcing_success_rate(101),
        |b| b.enforcing_local_origin_success_rate(101),
        |b| b.failure_percentage_threshold(101),
        |b| b.enforcing_failure_percentage(101),
        |b| b.enforcing_failure_percentage_local_origin(101),
    ];
    for set in over_100 {
        let err = set(config()).build().unwrap_err();
        assert!(
            err.to_string()
                .contains("is 101; it must be between 0 and 100"),
            "{err}"
        );
    }
    assert_eq!(
        config().max_ejection_percent(101).build().unwrap_err(),
        BuildError::InvalidConfig(
            "outlier detection max_ejection_percent is 101; it must be between 0 and 100".into()
        )
    );
    assert!(
        config()
            .max_ejection_percent(100)
            .enforcing_failure_percentage(100)
            .failure_percentage_threshold(100)
            .build()
            .is_ok()
    );

    let zero: [fn(OutlierConfigBuilder) -> OutlierConfigBuilder; 9] = [
        |b| b.interval(Duration::ZERO),
        |b| b.base_ejection_time(Duration::ZERO),
        |b| b.consecutive_5xx(0),
        |b| b.consecutive_gateway_failure(0),
        |b| b.consecutive_local_origin_failure(0),
        |b| b.success_rate_minimum_hosts(0),
        |b| b.success_rate_request_volume(0),
        |b| b.failure_percentage_minimum_hosts(0),
        |b| b.failure_percentage_request_volume(0),
    ];
    for set in zero {
        assert!(set(config()).build().is_err());
    }
    assert!(config().success_rate_stdev_factor(100_001).build().is_err());
    assert!(config().success_rate_stdev_factor(100_000).build().is_ok());
    assert!(config().success_rate_stdev_factor(0).build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_fires_at_exactly_n_and_a_success_resets_it() {
    let set = Set::new(OutlierConfig::default(), 10);
    let t = secs(1);
    assert!(set.record_n(0, FAIL, 4, t).is_empty());
    assert!(set.record(0, OK, t).is_none());
    assert!(set.record_n(0, FAIL, 4, t).is_empty());
    // 429 is no 5xx: a success for outlier detection.
    assert!(set.record(0, Outcome::Throttled, t).is_none());
    assert!(set.record_n(0, FAIL, 4, t).is_empty());
    assert_eq!(
        set.record(0, FAIL, t),
        Some(ejected(
            0,
            EjectionReason::Consecutive5xx,
            30,
            1,
            "5 consecutive 5xx responses"
        ))
    );
    assert!(set.hosts[0].is_ejected());
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_consecutive_5xx, 1);
    assert_eq!(stats.ejections_enforced_consecutive_5xx, 1);
    assert_eq!(stats.ejections_enforced_total, 1);
    assert_eq!(stats.ejections_active, 1);
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_are_detected_but_not_enforced_by_default() {
    // Another 5xx resets the gateway counter; five 502/503/504 in a row fire it.
    let set = Set::new(config().consecutive_5xx(1000).build().unwrap(), 10);
    let t = secs(1);
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    assert!(set.record(0, FAIL, t).is_none());
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    let not_enforced = OutlierEvent::NotEnforced {
        addr: addr(0),
        reason: EjectionReason::ConsecutiveGatewayFailure,
    };
    assert_eq!(set.record(0, GATEWAY, t), Some(not_enforced.clone()));
    // The refused attempt reset the counter: five more to fire again.
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    assert_eq!(set.record(0, GATEWAY, t), Some(not_enforced));
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_consecutive_gateway_failure, 2);
    assert_eq!(stats.ejections_enforced_consecutive_gateway_failure, 0);
    assert_eq!(stats.ejections_active, 0);

    // Enforced, it ejects.
    let set = Set::new(
        config()
            .consecutive_5xx(1000)
            .enforcing_consecutive_gateway_failure(100)
            .build()
            .unwrap(),
        10,
    );
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    assert_eq!(
        set.record(0, GATEWAY, t),
        Some(ejected(
            0,
            EjectionReason::ConsecutiveGatewayFailure,
            30,
            1,
            "5 consecutive gateway failures"
        ))
    );

    // With the defaults, the fifth 503 fires both: gateway (not enforced), then 5xx (ejected).
    let set = Set::new(OutlierConfig::default(), 10);
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    assert_eq!(
        set.record(0, GATEWAY, t),
        Some(ejected(
            0,
            EjectionReason::Consecutive5xx,
            30,
            1,
            "5 consecutive 5xx responses"
        ))
    );
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_consecutive_gateway_failure, 1);
    assert_eq!(stats.ejections_enforced_consecutive_gateway_failure, 0);
    assert_eq!(stats.ejections_detected_consecutive_5xx, 1);
    assert_eq!(stats.ejections_enforced_consecutive_5xx, 1);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_refused_by_overflow_resets_its_counter() {
    // 9 hosts at 10 %: Envoy's rule refuses every ejection.
    let set = Set::new(OutlierConfig::default(), 9);
    let t = secs(1);
    let overflow = OutlierEvent::Overflow {
        addr: addr(0),
        reason: EjectionReason::Consecutive5xx,
    };
    assert_eq!(set.record_n(0, FAIL, 5, t), vec![overflow.clone()]);
    assert!(set.record_n(0, FAIL, 4, t).is_empty());
    assert_eq!(set.record(0, FAIL, t), Some(overflow));
    let stats = set.stats();
    assert_eq!(stats.ejections_overflow, 2);
    assert_eq!(stats.ejections_detected_consecutive_5xx, 2);
    assert_eq!(stats.ejections_enforced_total, 0);
}

#[tokio::test(start_paused = true)]
async fn counters_run_on_while_ejected_and_unejection_resets_all_three() {
    let set = Set::new(
        config()
            .split_external_local_origin_errors(true)
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        1,
    );
    let t = secs(1);
    let host = &set.hosts[0];
    let counters = || {
        (
            host.consecutive_5xx.load(Ordering::Relaxed),
            host.consecutive_gateway_failure.load(Ordering::Relaxed),
            host.consecutive_local_origin_failure
                .load(Ordering::Relaxed),
        )
    };
    assert!(set.record_n(0, GATEWAY, 4, t).is_empty());
    assert!(set.record_n(0, CONNECT, 4, t).is_empty());
    assert_eq!(counters(), (4, 4, 4));
    assert_eq!(
        set.record(0, CONNECT, t),
        Some(ejected(
            0,
            EjectionReason::ConsecutiveLocalOriginFailure,
            30,
            1,
            "5 consecutive local-origin failures"
        ))
    );
    assert_eq!(counters(), (4, 4, 0));
    // While ejected, reaching the count again fires nothing and resets nothing (Envoy drops the
    // detection of an ejected host).
    assert!(set.record_n(0, GATEWAY, 3, t).is_empty());
    assert_eq!(counters(), (7, 7, 0));
    assert_eq!(set.stats().ejections_detected_consecutive_5xx, 0);
    // Ejected at 1 s for 30 s: back at the sweep at 40 s, with every counter at zero.
    for s in [10, 20, 30] {
        assert!(set.sweep(secs(s)).is_empty());
    }
    assert_eq!(set.sweep(secs(40)), vec![unejected(0, 39)]);
    assert_eq!(counters(), (0, 0, 0));
    // Without the reset the 5xx counter would be past 5 and never fire again.
    assert!(set.record_n(0, FAIL, 4, secs(41)).is_empty());
    assert_eq!(
        set.record(0, FAIL, secs(41)),
        Some(ejected(
            0,
            EjectionReason::Consecutive5xx,
            60,
            2,
            "5 consecutive 5xx responses"
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn split_mode_keeps_local_origin_failures_apart() {
    let set = Set::new(
        config()
            .split_external_local_origin_errors(true)
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        2,
    );
    let t = secs(1);
    // Local-origin failures neither count as 5xx nor reset the 5xx counter.
    assert!(set.record_n(0, FAIL, 4, t).is_empty());
    assert!(set.record(0, CONNECT, t).is_none());
    assert_eq!(
        set.record(0, FAIL, t),
        Some(ejected(
            0,
            EjectionReason::Consecutive5xx,
            30,
            1,
            "5 consecutive 5xx responses"
        ))
    );
    // Any response means the connection worked: it resets the local-origin counter.
    assert!(set.record_n(1, TIMEOUT, 4, t).is_empty());
    assert!(set.record(1, FAIL, t).is_none());
    assert!(set.record_n(1, TIMEOUT, 4, t).is_empty());
    assert_eq!(
        set.record(1, TIMEOUT, t),
        Some(ejected(
            1,
            EjectionReason::ConsecutiveLocalOriginFailure,
            30,
            1,
            "5 consecutive local-origin failures"
        ))
    );
    // The buckets: host 1 had 1 response (external) and 10 attempts (local, 1 success).
    set.sweep(secs(10));
    let external = set.hosts[1].external.frozen();
    let local = set.hosts[1].local.frozen();
    assert_eq!((external.total, external.successes), (1, 0));
    assert_eq!((local.total, local.successes), (10, 1));
}

#[tokio::test(start_paused = true)]
async fn without_split_local_origin_failures_are_5xx_and_gateway_failures() {
    let set = Set::new(OutlierConfig::default(), 10);
    let t = secs(1);
    assert!(set.record_n(0, TIMEOUT, 2, t).is_empty());
    assert!(set.record_n(0, CONNECT, 2, t).is_empty());
    assert_eq!(
        set.record(0, Outcome::LocalOrigin(LocalOrigin::Reset), t),
        Some(ejected(
            0,
            EjectionReason::Consecutive5xx,
            30,
            1,
            "5 consecutive 5xx responses"
        ))
    );
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_consecutive_gateway_failure, 1);
    assert_eq!(stats.ejections_detected_consecutive_local_origin_failure, 0);
    set.sweep(secs(10));
    let external = set.hosts[0].external.frozen();
    assert_eq!((external.total, external.successes), (5, 0));
    assert_eq!(set.hosts[0].local.frozen().total, 0);
}

#[tokio::test(start_paused = true)]
async fn ejection_ends_at_the_first_sweep_at_or_after_its_length() {
    let set = Set::new(OutlierConfig::default(), 10);
    // Ejected between sweeps, at 5 s, for 30 s.
    set.record_n(0, FAIL, 5, secs(5));
    assert_eq!(
        set.snapshot(0, secs(5)),
        OutlierHostSnapshot {
            ejected: true,
            reason: Some(EjectionReason::Consecutive5xx),
            ejected_for: Some(secs(30)),
            times_ejected: 1,
            success_rate: None,
        }
    );
    for s in [10, 20, 30] {
        assert!(set.sweep(secs(s)).is_empty(), "sweep at {s} s");
        assert!(set.hosts[0].is_ejected());
    }
    assert_eq!(set.snapshot(0, secs(30)).ejected_for, Some(secs(5)));
    // Its time ran out at 35 s, but only a sweep takes it back.
    assert_eq!(set.snapshot(0, secs(36)).ejected_for, Some(Duration::ZERO));
    assert!(set.hosts[0].is_ejected());
    assert_eq!(set.sweep(secs(40)), vec![unejected(0, 35)]);
    assert_eq!(
        set.snapshot(0, secs(40)),
        OutlierHostSnapshot {
            ejected: false,
            reason: None,
            ejected_for: None,
            times_ejected: 1,
            success_rate: None,
        }
    );
    assert_eq!(set.stats().ejections_active, 0);

    // Ejected on the grid, at 50 s: back at 80 s exactly (`≥`).
    set.record_n(1, FAIL, 5, secs(50));
    for s in [50, 60, 70] {
        assert!(set.sweep(secs(s)).is_empty(), "sweep at {s} s");
    }
    assert_eq!(set.sweep(secs(80)), vec![unejected(1, 30)]);
}

/// Ejects host 0 at `at` and sweeps every 10 s until it is back; returns the ejection's
/// length and when it came back.
fn eject_and_wait(set: &Set, at: u64, times: u32) -> (u64, u64) {
    let events = set.record_n(0, FAIL, 5, secs(at));
    let [
        OutlierEvent::Ejected {
            duration,
            times_ejected,
            ..
        },
    ] = events.as_slice()
    else {
        panic!("expected one ejection at {at} s: {events:?}");
    };
    assert_eq!(*times_ejected, times);
    let mut now = at;
    loop {
        now += 10;
        let events = set.sweep(secs(now));
        if !events.is_empty() {
            assert_eq!(events, vec![unejected(0, now - at)]);
            return (duration.as_secs(), now);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_by_base_to_the_cap() {
    let set = Set::new(OutlierConfig::default(), 10);
    let mut at = 0;
    let mut lengths = Vec::new();
    let mut multipliers = Vec::new();
    for times in 1..=13 {
        let (length, back) = eject_and_wait(&set, at, times);
        // Back at the first sweep at or after the end (lengths are whole intervals here).
        assert_eq!(back, at + length);
        lengths.push(length);
        multipliers.push(set.hosts[0].multiplier());
        at = back; // failing again at once: no healthy sweep in between
    }
    assert_eq!(
        lengths,
        [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
    );
    // The multiplier stops at max/base + 1 = 11 (`k·base < max + base`).
    assert_eq!(multipliers, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 11]);
}

#[tokio::test(start_paused = true)]
async fn the_multiplier_decays_on_healthy_sweeps() {
    let set = Set::new(OutlierConfig::default(), 10);
    assert_eq!(eject_and_wait(&set, 0, 1), (30, 30));
    assert_eq!(eject_and_wait(&set, 30, 2), (60, 90));
    assert_eq!(eject_and_wait(&set, 90, 3), (90, 180));
    // Not at the sweep that took it back (0 s ago), but at each one from an interval later.
    assert_eq!(set.hosts[0].multiplier(), 3);
    set.sweep(secs(190));
    assert_eq!(set.hosts[0].multiplier(), 2);
    set.sweep(secs(200));
    assert_eq!(set.hosts[0].multiplier(), 1);
    assert_eq!(eject_and_wait(&set, 200, 4), (60, 260));
    for s in [270, 280, 290] {
        set.sweep(secs(s));
    }
    assert_eq!(set.hosts[0].multiplier(), 0, "never below zero");
    assert_eq!(eject_and_wait(&set, 290, 5), (30, 320));
    // A host never ejected has nothing to decay.
    assert_eq!(set.hosts[1].multiplier(), 0);
}

#[tokio::test(start_paused = true)]
async fn jitter_comes_from_the_seeded_generator() {
    let set = Set::new(
        config()
            .max_ejection_time_jitter(secs(5))
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        10,
    );
    // Enforcement at 100 % draws nothing, so the jitters are the generator's first draws.
    let expected = Rng::seeded(SEED);
    for i in 0..3 {
        let events = set.record_n(i, FAIL, 5, secs(1));
        let [OutlierEvent::Ejected { duration, .. }] = events.as_slice() else {
            panic!("{events:?}");
        };
        let jitter = Duration::from_millis(expected.below(5001) as u64);
        assert_eq!(*duration, secs(30) + jitter);
        assert!(*duration <= secs(35));
    }
}

/// Five hosts with 100 requests each in the first interval: successes 50, 100, 100, 100, 100.
fn worked_example(config: OutlierConfig, volume_of_last: usize) -> Set {
    let set = Set::new(config, 5);
    set.traffic(0, 100, 50, FAIL, secs(1));
    for i in 1..4 {
        set.traffic(i, 100, 0, FAIL, secs(1));
    }
    set.traffic(4, volume_of_last, 0, FAIL, secs(1));
    set
}

#[tokio::test(start_paused = true)]
async fn success_rate_follows_envoys_worked_example() {
    // Mean 90, stdev 20, threshold 90 − 1.9·20 = 52: the host at 50 is an outlier.
    let set = worked_example(config().max_ejection_percent(20).build().unwrap(), 100);
    assert_eq!(
        set.sweep(secs(10)),
        vec![ejected(
            0,
            EjectionReason::SuccessRate,
            30,
            1,
            "success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100 requests, 5 hosts)"
        )]
    );
    assert_eq!(set.snapshot(0, secs(10)).success_rate, Some(50.0));
    assert_eq!(set.snapshot(1, secs(10)).success_rate, Some(100.0));
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_success_rate, 1);
    assert_eq!(stats.ejections_enforced_success_rate, 1);
    // The next interval had no traffic: no rates.
    assert!(set.sweep(secs(20)).is_empty());
    assert_eq!(set.snapshot(1, secs(20)).success_rate, None);

    // At the default 10 %, one host of five is 20 %: detected, refused.
    let set = worked_example(OutlierConfig::default(), 100);
    assert_eq!(
        set.sweep(secs(10)),
        vec![OutlierEvent::Overflow {
            addr: addr(0),
            reason: EjectionReason::SuccessRate
        }]
    );
    let stats = set.stats();
    assert_eq!(
        (
            stats.ejections_detected_success_rate,
            stats.ejections_overflow,
            stats.ejections_enforced_total
        ),
        (1, 1, 0)
    );

    // A factor of 2.0 puts the threshold at exactly 50: not below it, not an outlier.
    let set = worked_example(
        config()
            .max_ejection_percent(20)
            .success_rate_stdev_factor(2000)
            .build()
            .unwrap(),
        100,
    );
    assert!(set.sweep(secs(10)).is_empty());
    assert_eq!(set.stats().ejections_detected_success_rate, 0);
}

#[tokio::test(start_paused = true)]
async fn success_rate_needs_the_volume_on_enough_hosts() {
    // The fifth host has 99 requests: four candidates, below success_rate_minimum_hosts 5.
    // (Among those four, at factor 1.0, the host at 50 would be an outlier: threshold 65.8.)
    let strict = config()
        .max_ejection_percent(100)
        .success_rate_stdev_factor(1000);
    let set = worked_example(strict.clone().build().unwrap(), 99);
    assert!(set.sweep(secs(10)).is_empty());
    assert_eq!(set.stats().ejections_detected_success_rate, 0);
    let set = worked_example(strict.success_rate_minimum_hosts(4).build().unwrap(), 99);
    assert_eq!(
        set.sweep(secs(10)),
        vec![ejected(
            0,
            EjectionReason::SuccessRate,
            30,
            1,
            "success rate 50.0 below threshold 65.8 (mean 87.5, stdev 21.7; 100 requests, 4 hosts)"
        )]
    );
}

/// Six hosts with 60 requests each (below the success-rate volume of 100), but host 0 with
/// 51 failures (exactly 85 %), host 1 with 52 (86.7 %), host 2 with 49 requests, all failures.
fn failure_percentage_set(rule: MaxEjectionRule) -> Set {
    let config = config()
        .consecutive_5xx(1000)
        .enforcing_failure_percentage(100)
        .max_ejection_percent(100)
        .ejection_rule(rule)
        .build()
        .unwrap();
    let set = Set::new(config, 6);
    set.traffic(0, 60, 51, FAIL, secs(1));
    set.traffic(1, 60, 52, FAIL, secs(1));
    set.traffic(2, 49, 49, FAIL, secs(1));
    for i in 3..6 {
        set.traffic(i, 60, 0, FAIL, secs(1));
    }
    set
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_at_the_threshold() {
    // Envoy: `100 − rate ≥ threshold`, so exactly 85 % is an outlier.
    let set = failure_percentage_set(MaxEjectionRule::Envoy);
    assert_eq!(
        set.sweep(secs(10)),
        vec![
            ejected(
                0,
                EjectionReason::FailurePercentage,
                30,
                1,
                "failure percentage 85.0 at or above threshold 85 (60 requests)"
            ),
            ejected(
                1,
                EjectionReason::FailurePercentage,
                30,
                1,
                "failure percentage 86.7 at or above threshold 85 (60 requests)"
            ),
        ]
    );
    assert_eq!(set.stats().ejections_enforced_failure_percentage, 2);
    // gRFC A50: `>`, so only the host above 85 %.
    let set = failure_percentage_set(MaxEjectionRule::GrpcA50);
    assert_eq!(
        set.sweep(secs(10)),
        vec![ejected(
            1,
            EjectionReason::FailurePercentage,
            30,
            1,
            "failure percentage 86.7 above threshold 85 (60 requests)"
        )]
    );
    assert!(
        !set.hosts[2].is_ejected(),
        "49 requests are below the volume"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_is_detected_but_not_enforced_by_default() {
    // (At the default 10 %, one of five hosts would overflow first: the gate comes before the
    // roll.)
    let set = Set::new(
        config()
            .consecutive_5xx(1000)
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        5,
    );
    for i in 0..5 {
        set.traffic(i, 50, if i == 0 { 50 } else { 0 }, FAIL, secs(1));
    }
    assert_eq!(
        set.sweep(secs(10)),
        vec![OutlierEvent::NotEnforced {
            addr: addr(0),
            reason: EjectionReason::FailurePercentage
        }]
    );
    assert_eq!(set.stats().ejections_detected_failure_percentage, 1);
    assert_eq!(set.stats().ejections_enforced_failure_percentage, 0);
}

/// Tries to eject every one of `hosts` hosts inline; returns how many were ejected.
fn eject_all(rule: MaxEjectionRule, always_one: bool, percent: u32, hosts: usize) -> usize {
    let set = Set::new(
        config()
            .ejection_rule(rule)
            .always_eject_one_host(always_one)
            .max_ejection_percent(percent)
            .build()
            .unwrap(),
        hosts,
    );
    let mut ejected = 0;
    for i in 0..hosts {
        match set.record_n(i, FAIL, 5, secs(1)).as_slice() {
            [OutlierEvent::Ejected { .. }] => ejected += 1,
            [OutlierEvent::Overflow { .. }] => {}
            other => panic!("{other:?}"),
        }
    }
    let stats = set.stats();
    assert_eq!(stats.ejections_active, ejected as u64);
    assert_eq!(stats.ejections_overflow, (hosts - ejected) as u64);
    ejected
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_rules() {
    use MaxEjectionRule::{Envoy, GrpcA50};
    // (rule, always_eject_one_host, max %, hosts) → ejected
    let cases = [
        (Envoy, false, 50, 3, 1),
        (Envoy, false, 10, 9, 0),
        (Envoy, true, 10, 9, 1),
        (GrpcA50, false, 10, 9, 1),
        (Envoy, false, 10, 10, 1),
        (GrpcA50, false, 10, 10, 1),
        (Envoy, false, 20, 9, 1),
        (GrpcA50, false, 20, 9, 2),
        (Envoy, false, 20, 10, 2),
        (Envoy, false, 0, 5, 0),
        (Envoy, true, 0, 5, 1),
        (GrpcA50, false, 0, 5, 0),
        (GrpcA50, true, 0, 5, 0),
        (Envoy, false, 100, 4, 4),
        (GrpcA50, false, 100, 4, 4),
    ];
    for (rule, always, percent, hosts, expected) in cases {
        assert_eq!(
            eject_all(rule, always, percent, hosts),
            expected,
            "{rule:?}, always_eject_one_host {always}, {percent} %, {hosts} hosts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn enforcement_zero_never_ejects_but_counts_detections() {
    let set = Set::new(
        config()
            .enforcing_consecutive_5xx(0)
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        10,
    );
    for i in 0..10 {
        assert_eq!(
            set.record_n(i, FAIL, 10, secs(1)),
            vec![
                OutlierEvent::NotEnforced {
                    addr: addr(i),
                    reason: EjectionReason::Consecutive5xx
                };
                2
            ]
        );
    }
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_consecutive_5xx, 20);
    assert_eq!(stats.ejections_enforced_consecutive_5xx, 0);
    assert_eq!(stats.ejections_active, 0);
    assert_eq!(stats.ejections_overflow, 0);

    let set = worked_example(
        config()
            .max_ejection_percent(100)
            .enforcing_success_rate(0)
            .build()
            .unwrap(),
        100,
    );
    assert_eq!(
        set.sweep(secs(10)),
        vec![OutlierEvent::NotEnforced {
            addr: addr(0),
            reason: EjectionReason::SuccessRate
        }]
    );
    assert_eq!(set.stats().ejections_detected_success_rate, 1);
    assert_eq!(set.stats().ejections_enforced_success_rate, 0);
}

#[tokio::test(start_paused = true)]
async fn partial_enforcement_follows_the_seeded_rolls() {
    let set = Set::new(
        config()
            .enforcing_consecutive_5xx(30)
            .max_ejection_percent(100)
            .build()
            .unwrap(),
        40,
    );
    let rolls = Rng::seeded(SEED);
    let mut ejected = 0;
    for i in 0..40 {
        let enforced = rolls.below(100) < 30;
        let event = set.record_n(i, FAIL, 5, secs(1));
        assert_eq!(
            matches!(event.as_slice(), [OutlierEvent::Ejected { .. }]),
            enforced,
            "host {i}"
        );
        ejected += usize::from(enforced);
    }
    assert!((5..=20).contains(&ejected), "{ejected} of 40 at 30 %");
    assert_eq!(
        set.stats().ejections_enforced_consecutive_5xx,
        ejected as u64
    );
    assert_eq!(set.stats().ejections_detected_consecutive_5xx, 40);
}

#[tokio::test(start_paused = true)]
async fn hosts_removed_while_ejected_stop_counting() {
    let set = Set::new(OutlierConfig::default(), 10);
    set.record_n(0, FAIL, 5, secs(1));
    assert_eq!(set.stats().ejections_active, 1);
    let without_first = &set.list()[1..];
    set.detector.sweep(without_first, set.t0 + secs(10));
    assert_eq!(set.stats().ejections_active, 0);
    // Back in the set, it counts again.
    set.sweep(secs(20));
    assert_eq!(set.stats().ejections_active, 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_a50_unejects_after_detection() {
    // Host 0 is due back at 30 s, when host 1 turns out a failure-percentage outlier. A50
    // un-ejects after detecting, so host 0 still fills the 10 % of 10 hosts; Envoy un-ejects
    // first and ejects host 1.
    for rule in [MaxEjectionRule::Envoy, MaxEjectionRule::GrpcA50] {
        let set = Set::new(
            config()
                .consecutive_5xx(1000)
                .enforcing_consecutive_gateway_failure(100)
                .enforcing_failure_percentage(100)
                .ejection_rule(rule)
                .build()
                .unwrap(),
            10,
        );
        assert!(matches!(
            set.record_n(0, GATEWAY, 5, secs(0)).as_slice(),
            [OutlierEvent::Ejected { .. }]
        ));
        assert!(set.sweep(secs(10)).is_empty());
        assert!(set.sweep(secs(20)).is_empty());
        set.traffic(1, 50, 50, FAIL, secs(25));
        for i in 2..6 {
            set.traffic(i, 50, 0, FAIL, secs(25));
        }
        let events = set.sweep(secs(30));
        let expected = match rule {
            MaxEjectionRule::Envoy => vec![
                unejected(0, 30),
                ejected(
                    1,
                    EjectionReason::FailurePercentage,
                    30,
                    1,
                    "failure percentage 100.0 at or above threshold 85 (50 requests)",
                ),
            ],
            _ => vec![
                OutlierEvent::Overflow {
                    addr: addr(1),
                    reason: EjectionReason::FailurePercentage,
                },
                unejected(0, 30),
            ],
        };
        assert_eq!(events, expected, "{rule:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_a50_multiplier_is_uncapped_and_decays_every_sweep() {
    let set = Set::new(
        config()
            .ejection_rule(MaxEjectionRule::GrpcA50)
            .build()
            .unwrap(),
        10,
    );
    let mut at = 0;
    let mut lengths = Vec::new();
    for times in 1..=13 {
        let (length, back) = eject_and_wait(&set, at, times);
        assert_eq!(back, at + length);
        lengths.push(length);
        at = back;
    }
    assert_eq!(
        lengths,
        [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
    );
    assert_eq!(set.hosts[0].multiplier(), 13);
    // Three healthy sweeps: 10 (Envoy would be at 8, from its cap of 11), so the next
    // ejection still lasts the full 300 s.
    for s in 1..=3 {
        set.sweep(secs(at + 10 * s));
    }
    assert_eq!(set.hosts[0].multiplier(), 10);
    assert_eq!(eject_and_wait(&set, at + 30, 14).0, 300);
}

#[tokio::test(start_paused = true)]
async fn grpc_a50_counts_ejected_hosts_in_the_statistics() {
    // The worked example plus a sixth host, ejected at once but still answering (its in-flight
    // requests fail): 100 failures. Envoy leaves it out and ejects the host at 50; A50 counts it
    // (mean 75, stdev 38.2, threshold 2.4), so the host at 50 is no outlier.
    for rule in [MaxEjectionRule::Envoy, MaxEjectionRule::GrpcA50] {
        let config = config()
            .max_ejection_percent(100)
            .ejection_rule(rule)
            .build()
            .unwrap();
        let set = Set::new(config, 6);
        set.traffic(0, 100, 50, FAIL, secs(1));
        for i in 1..5 {
            set.traffic(i, 100, 0, FAIL, secs(1));
        }
        let events = set.record_n(5, FAIL, 100, secs(1));
        assert!(matches!(events.as_slice(), [OutlierEvent::Ejected { .. }]));
        let events = set.sweep(secs(10));
        match rule {
            MaxEjectionRule::Envoy => assert_eq!(
                events,
                vec![ejected(
                    0,
                    EjectionReason::SuccessRate,
                    30,
                    1,
                    "success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100 requests, 5 hosts)"
                )]
            ),
            _ => assert!(events.is_empty(), "{events:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn local_origin_success_rate_in_split_mode() {
    let set = Set::new(
        config()
            .split_external_local_origin_errors(true)
            .max_ejection_percent(20)
            .build()
            .unwrap(),
        5,
    );
    set.traffic(0, 100, 50, CONNECT, secs(1));
    for i in 1..5 {
        set.traffic(i, 100, 0, CONNECT, secs(1));
    }
    // Host 0 has only 50 responses (all successes): too few for the external test.
    assert_eq!(
        set.sweep(secs(10)),
        vec![ejected(
            0,
            EjectionReason::LocalOriginSuccessRate,
            30,
            1,
            "local-origin success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100 requests, 5 hosts)"
        )]
    );
    assert_eq!(set.snapshot(0, secs(10)).success_rate, Some(100.0));
    let stats = set.stats();
    assert_eq!(stats.ejections_detected_local_origin_success_rate, 1);
    assert_eq!(stats.ejections_enforced_local_origin_success_rate, 1);
    assert_eq!(stats.ejections_detected_success_rate, 0);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_detector_does_nothing() {
    let set = Set::new(OutlierConfig::disabled(), 1);
    assert!(set.record_n(0, FAIL, 100, secs(1)).is_empty());
    assert!(set.sweep(secs(10)).is_empty());
    assert_eq!(set.stats(), OutlierStats::default());
    assert_eq!(set.hosts[0].external.frozen().total, 0);
}

#[test]
fn counters_have_envoys_names() {
    let names: Vec<_> = OutlierStats::default()
        .counters()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "ejections_active",
            "ejections_enforced_total",
            "ejections_overflow",
            "ejections_detected_consecutive_5xx",
            "ejections_enforced_consecutive_5xx",
            "ejections_detected_consecutive_gateway_failure",
            "ejections_enforced_consecutive_gateway_failure",
            "ejections_detected_consecutive_local_origin_failure",
            "ejections_enforced_consecutive_local_origin_failure",
            "ejections_detected_success_rate",
            "ejections_enforced_success_rate",
            "ejections_detected_failure_percentage",
            "ejections_enforced_failure_percentage",
            "ejections_detected_local_origin_success_rate",
            "ejections_enforced_local_origin_success_rate",
            "ejections_detected_local_origin_failure_percentage",
            "ejections_enforced_local_origin_failure_percentage",
        ]
    );
    // Each reason's counters, found by name, are the ones `detected` and `enforced` read.
    for (n, reason) in REASONS.into_iter().enumerate() {
        let detector = Detector::new(OutlierConfig::default(), SEED);
        detector.detected[reason.slot()].store(n as u64 + 1, Ordering::Relaxed);
        detector.enforced[reason.slot()].store(n as u64 + 100, Ordering::Relaxed);
        let stats = detector.stats();
        let counters = stats.counters();
        let value = |name: String| counters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(
            value(format!("ejections_detected_{reason}")),
            Some(n as u64 + 1)
        );
        assert_eq!(
            value(format!("ejections_enforced_{reason}")),
            Some(n as u64 + 100)
        );
        assert_eq!(counters.iter().filter(|(_, v)| *v != 0).count(), 2);
        assert_eq!(stats.detected(reason), n as u64 + 1);
        assert_eq!(stats.enforced(reason), n as u64 + 100);
    }
}

#[test]
fn events_read_as_one_line() {
    let event = ejected(
        0,
        EjectionReason::SuccessRate,
        30,
        1,
        "success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100 requests, 5 hosts)",
    );
    assert_eq!(
        event.to_string(),
        "outlier detection ejected 10.0.0.1:8000 for 30s (success_rate, ejection 1): success rate 50.0 below threshold 52.0 (mean 90.0, stdev 20.0; 100 requests, 5 hosts)"
    );
    assert_eq!(
        OutlierEvent::Overflow {
            addr: addr(1),
            reason: EjectionReason::Consecutive5xx
        }
        .to_string(),
        "outlier detection found 10.0.0.1:8001 to be an outlier (consecutive_5xx) but did not eject it: max_ejection_percent reached"
    );
    assert_eq!(
        OutlierEvent::NotEnforced {
            addr: addr(1),
            reason: EjectionReason::FailurePercentage
        }
        .to_string(),
        "outlier detection found 10.0.0.1:8001 to be an outlier (failure_percentage) but did not eject it: enforcement roll lost"
    );
    assert_eq!(
        unejected(2, 35).to_string(),
        "outlier detection un-ejected 10.0.0.1:8002 after 35s"
    );
    assert_eq!(unejected(2, 35).addr(), addr(2));
}

#[test]
fn concurrent_failures_eject_a_host_once() {
    let detector = Detector::new(config().max_ejection_percent(100).build().unwrap(), SEED);
    let host = OutlierHost::new();
    let now = Instant::now();
    let events: Vec<OutlierEvent> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..1000)
                        .filter_map(|_| detector.record(&host, addr(0), FAIL, 1, now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let stats = detector.stats();
    assert_eq!(stats.ejections_detected_consecutive_5xx, 1);
    assert_eq!(stats.ejections_active, 1);
    detector.sweep(&[(addr(0), &host)], now);
    assert_eq!(host.external.frozen().total, 8000);
}

#[test]
fn concurrent_ejections_respect_the_gate() {
    // Ten hosts at 10 %: of two hosts failing at once on two threads, exactly one is ejected.
    for _ in 0..200 {
        let detector = Arc::new(Detector::new(OutlierConfig::default(), SEED));
        let hosts: Arc<Vec<OutlierHost>> = Arc::new((0..10).map(|_| OutlierHost::new()).collect());
        let now = Instant::now();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let (detector, hosts, barrier) = (detector.clone(), hosts.clone(), barrier.clone());
                std::thread::spawn(move || {
                    for _ in 0..4 {
                        detector.record(&hosts[i], addr(i), FAIL, 10, now);
                    }
                    barrier.wait();
                    detector.record(&hosts[i], addr(i), FAIL, 10, now)
                })
            })
            .collect();
        let events: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let ejections = events
            .iter()
            .filter(|e| matches!(e, Some(OutlierEvent::Ejected { .. })))
            .count();
        assert_eq!(ejections, 1, "{events:?}");
        assert_eq!(detector.stats().ejections_active, 1);
        assert_eq!(detector.stats().ejections_overflow, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn extreme_settings_do_not_panic() {
    let config = config()
        .interval(Duration::MAX)
        .base_ejection_time(Duration::MAX)
        .max_ejection_time(Duration::MAX)
        .max_ejection_time_jitter(Duration::MAX)
        .max_ejection_percent(100)
        .always_eject_one_host(true)
        .success_rate_stdev_factor(100_000)
        .success_rate_minimum_hosts(1)
        .success_rate_request_volume(1)
        .failure_percentage_minimum_hosts(1)
        .failure_percentage_request_volume(1)
        .failure_percentage_threshold(0)
        .enforcing_failure_percentage(100)
        .consecutive_5xx(1)
        .build()
        .unwrap();
    for rule in [MaxEjectionRule::Envoy, MaxEjectionRule::GrpcA50] {
        let detector = Detector::new(
            OutlierConfig {
                ejection_rule: rule,
                ..config.clone()
            },
            SEED,
        );
        let host = OutlierHost::new();
        let now = Instant::now();
        assert!(detector.record(&host, addr(0), FAIL, 0, now).is_some());
        detector.record(&host, addr(0), OK, usize::MAX, now);
        let far = now + Duration::from_secs(1 << 40);
        let _ = host.snapshot(far);
        let _ = detector.sweep(&[(addr(0), &host)], far);
        let _ = detector.sweep(&[], far);
        let early = OutlierHost::new();
        detector.record(&early, addr(1), OK, 1, now - secs(1));
        let _ = detector.sweep(&[(addr(1), &early), (addr(0), &host)], now);
        let _ = detector.stats();
    }
}
