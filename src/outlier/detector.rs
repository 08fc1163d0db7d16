//! The detector: the consecutive detectors inline, the interval sweep, the ejection gate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::host::{Bucket, Counts, OutlierHost, bump, reset};
use super::{EjectionReason, MaxEjectionRule, OutlierConfig, OutlierEvent, OutlierStats};
use crate::classify::Outcome;
use crate::rng::Rng;

/// Which request counts a sweep pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    External,
    Local,
}

impl Origin {
    fn bucket(self, host: &OutlierHost) -> &Bucket {
        match self {
            Origin::External => &host.external,
            Origin::Local => &host.local,
        }
    }

    fn success_rate(self) -> EjectionReason {
        match self {
            Origin::External => EjectionReason::SuccessRate,
            Origin::Local => EjectionReason::LocalOriginSuccessRate,
        }
    }

    fn failure_percentage(self) -> EjectionReason {
        match self {
            Origin::External => EjectionReason::FailurePercentage,
            Origin::Local => EjectionReason::LocalOriginFailurePercentage,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Origin::External => "",
            Origin::Local => "local-origin ",
        }
    }
}

/// The outlier detector of one endpoint set: the configuration, the shared counters and the
/// seeded generator for enforcement rolls and jitter. Per-endpoint state lives in each
/// endpoint's [`OutlierHost`].
///
/// The balancer calls [`record`](Self::record) on the request path for every finished attempt
/// and [`sweep`](Self::sweep) from its driver every [`interval`](OutlierConfig::interval). Both
/// take `&self`: an ejection claims its host by compare-and-swap (so inline detectors and the
/// sweep never eject one host twice) and raises `ejections_active` by compare-and-swap under the
/// max-ejection-percent rule (so racing ejections of different hosts cannot both take the last
/// slot); only a sweep un-ejects.
#[derive(Debug)]
pub(crate) struct Detector {
    config: OutlierConfig,
    rng: Rng,
    active: AtomicU64,
    enforced_total: AtomicU64,
    overflow: AtomicU64,
    pub(super) detected: [AtomicU64; 7],
    pub(super) enforced: [AtomicU64; 7],
    sweeping: AtomicBool,
}

impl Detector {
    /// A detector with `config`, its random draws fixed by `seed`.
    pub(crate) fn new(config: OutlierConfig, seed: u64) -> Self {
        Self {
            config,
            rng: Rng::seeded(seed),
            active: AtomicU64::new(0),
            enforced_total: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            detected: Default::default(),
            enforced: Default::default(),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Records one attempt's outcome for `host` (at `addr`, one of `hosts` endpoints) and runs
    /// the consecutive detectors; an ejection decided here takes effect at once. Lock-free.
    ///
    /// If two detectors fire on one outcome, both are counted and the weightier event is
    /// returned (an ejection over an overflow over a lost roll).
    pub(crate) fn record(
        &self,
        host: &OutlierHost,
        addr: SocketAddr,
        outcome: Outcome,
        hosts: usize,
        now: Instant,
    ) -> Option<OutlierEvent> {
        let config = &self.config;
        if !config.enabled {
            return None;
        }
        if config.split_external_local_origin_errors {
            if outcome.is_local_origin() {
                host.count_local(false);
                if bump(&host.consecutive_local_origin_failure)
                    == config.consecutive_local_origin_failure
                {
                    return self.consecutive(
                        host,
                        addr,
                        EjectionReason::ConsecutiveLocalOriginFailure,
                        hosts,
                        now,
                    );
                }
                return None;
            }
            // The endpoint answered, so its connection worked: a local-origin success.
            host.count_local(true);
            reset(&host.consecutive_local_origin_failure);
        }
        if !outcome.is_5xx() {
            host.count_external(true);
            reset(&host.consecutive_5xx);
            reset(&host.consecutive_gateway_failure);
            return None;
        }
        host.count_external(false);
        let mut event = None;
        if outcome.is_gateway_failure() {
            if bump(&host.consecutive_gateway_failure) == config.consecutive_gateway_failure {
                event = self.consecutive(
                    host,
                    addr,
                    EjectionReason::ConsecutiveGatewayFailure,
                    hosts,
                    now,
                );
            }
        } else {
            reset(&host.consecutive_gateway_failure);
        }
        if bump(&host.consecutive_5xx) == config.consecutive_5xx {
            let second = self.consecutive(host, addr, EjectionReason::Consecutive5xx, hosts, now);
            event = match (event, second) {
                (Some(a), Some(b)) => Some(if b.weight() > a.weight() { b } else { a }),
                (a, b) => a.or(b),
            };
        }
        event
    }

    /// A consecutive counter reached its count: detect, attempt, and reset that counter.
    fn consecutive(
        &self,
        host: &OutlierHost,
        addr: SocketAddr,
        reason: EjectionReason,
        hosts: usize,
        now: Instant,
    ) -> Option<OutlierEvent> {
        // Envoy drops the detection of a host already ejected, and leaves its counter alone.
        if !host.in_service() {
            return None;
        }
        self.detected[reason.slot()].fetch_add(1, Ordering::Relaxed);
        let (counter, count, what) = match reason {
            EjectionReason::ConsecutiveGatewayFailure => (
                &host.consecutive_gateway_failure,
                self.config.consecutive_gateway_failure,
                "gateway failures",
            ),
            EjectionReason::ConsecutiveLocalOriginFailure => (
                &host.consecutive_local_origin_failure,
                self.config.consecutive_local_origin_failure,
                "local-origin failures",
            ),
            _ => (
                &host.consecutive_5xx,
                self.config.consecutive_5xx,
                "5xx responses",
            ),
        };
        let event = self.try_eject(host, addr, reason, hosts, host.nanos(now), || {
            format!("{count} consecutive {what}")
        });
        reset(counter);
        event
    }

    /// The ejection gate: the max-ejection-percent rule, then the enforcement roll.
    fn try_eject(
        &self,
        host: &OutlierHost,
        addr: SocketAddr,
        reason: EjectionReason,
        hosts: usize,
        now_ns: u64,
        detail: impl FnOnce() -> String,
    ) -> Option<OutlierEvent> {
        if !host.claim() {
            return None; // ejected meanwhile, or another attempt holds it
        }
        let hosts = hosts.max(1) as u64;
        let overflow = || {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            host.release();
            Some(OutlierEvent::Overflow { addr, reason })
        };
        let mut active = self.active.load(Ordering::Acquire);
        if !self.gate_allows(active, hosts) {
            return overflow();
        }
        if !self.roll(self.enforcing(reason)) {
            host.release();
            return Some(OutlierEvent::NotEnforced { addr, reason });
        }
        while let Err(current) = self.active.compare_exchange_weak(
            active,
            active.saturating_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            active = current;
            if !self.gate_allows(active, hosts) {
                return overflow();
            }
        }
        self.enforced_total.fetch_add(1, Ordering::Relaxed);
        self.enforced[reason.slot()].fetch_add(1, Ordering::Relaxed);
        let multiplier = host.grow_multiplier(|k| self.multiplier_may_grow(k));
        let length = self.ejection_length(multiplier);
        host.commit_ejection(reason, now_ns, length);
        Some(OutlierEvent::Ejected {
            addr,
            reason,
            duration: Duration::from_nanos(length),
            times_ejected: host.times_ejected(),
            detail: detail(),
        })
    }

    /// Whether one more host may be ejected with `active` of `hosts` ejected.
    fn gate_allows(&self, active: u64, hosts: u64) -> bool {
        let max = u128::from(self.config.max_ejection_percent.min(100));
        let (active, hosts) = (u128::from(active), u128::from(hosts));
        match self.config.ejection_rule {
            MaxEjectionRule::Envoy => {
                100 * (active + 1) <= max * hosts
                    || (self.config.always_eject_one_host && active == 0)
            }
            MaxEjectionRule::GrpcA50 => 100 * active < max * hosts,
        }
    }

    fn enforcing(&self, reason: EjectionReason) -> u32 {
        let c = &self.config;
        match reason {
            EjectionReason::Consecutive5xx => c.enforcing_consecutive_5xx,
            EjectionReason::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            EjectionReason::ConsecutiveLocalOriginFailure => {
                c.enforcing_consecutive_local_origin_failure
            }
            EjectionReason::SuccessRate => c.enforcing_success_rate,
            EjectionReason::FailurePercentage => c.enforcing_failure_percentage,
            EjectionReason::LocalOriginSuccessRate => c.enforcing_local_origin_success_rate,
            EjectionReason::LocalOriginFailurePercentage => {
                c.enforcing_failure_percentage_local_origin
            }
        }
    }

    /// True with probability `percent`/100; 0 and 100 draw nothing.
    fn roll(&self, percent: u32) -> bool {
        match percent {
            0 => false,
            100.. => true,
            p => (self.rng.below(100) as u64) < u64::from(p),
        }
    }

    /// Envoy grows the multiplier while `k·base < max + base`; A50 always (saturating).
    fn multiplier_may_grow(&self, k: u32) -> bool {
        match self.config.ejection_rule {
            MaxEjectionRule::Envoy => {
                let base = self.config.base_ejection_time.as_nanos();
                u128::from(k).saturating_mul(base)
                    < self
                        .config
                        .max_ejection_time
                        .as_nanos()
                        .saturating_add(base)
            }
            MaxEjectionRule::GrpcA50 => true,
        }
    }

    /// `min(base·k, max) + jitter` in nanoseconds, the jitter drawn in whole milliseconds.
    fn ejection_length(&self, multiplier: u32) -> u64 {
        let c = &self.config;
        let length = c
            .base_ejection_time
            .as_nanos()
            .saturating_mul(u128::from(multiplier))
            .min(c.max_ejection_time.as_nanos());
        let jitter_ms = usize::try_from(c.max_ejection_time_jitter.as_millis())
            .unwrap_or(usize::MAX)
            .min(usize::MAX - 1);
        let jitter = if jitter_ms == 0 {
            0
        } else {
            self.rng.below(jitter_ms + 1) as u128 * 1_000_000
        };
        u64::try_from(length.saturating_add(jitter)).unwrap_or(u64::MAX)
    }

    /// The interval sweep over the current endpoints, in Envoy's order (or A50's): returns every
    /// decision taken.
    pub(crate) fn sweep(
        &self,
        hosts: &[(SocketAddr, &OutlierHost)],
        now: Instant,
    ) -> Vec<OutlierEvent> {
        let mut events = Vec::new();
        if !self.config.enabled || self.sweeping.swap(true, Ordering::Acquire) {
            return events;
        }
        let _done = SweepDone(&self.sweeping);
        let interval = u64::try_from(self.config.interval.as_nanos()).unwrap_or(u64::MAX);
        match self.config.ejection_rule {
            MaxEjectionRule::Envoy => {
                for &(addr, host) in hosts {
                    self.uneject_if_due(addr, host, now, &mut events);
                    host.freeze();
                }
                self.recount(hosts);
                self.detect(hosts, Origin::External, now, &mut events);
                self.detect(hosts, Origin::Local, now, &mut events);
                for &(_, host) in hosts {
                    let back_for = host.since_unejection(host.nanos(now));
                    if host.in_service() && back_for.is_some_and(|t| t >= interval) {
                        host.decay_multiplier();
                    }
                }
            }
            MaxEjectionRule::GrpcA50 => {
                for &(_, host) in hosts {
                    host.freeze();
                }
                self.recount(hosts);
                self.detect(hosts, Origin::External, now, &mut events);
                self.detect(hosts, Origin::Local, now, &mut events);
                for &(addr, host) in hosts {
                    if host.in_service() {
                        host.decay_multiplier();
                    } else {
                        self.uneject_if_due(addr, host, now, &mut events);
                    }
                }
            }
        }
        events
    }

    fn uneject_if_due(
        &self,
        addr: SocketAddr,
        host: &OutlierHost,
        now: Instant,
        events: &mut Vec<OutlierEvent>,
    ) {
        let now_ns = host.nanos(now);
        if let Some(elapsed) = host.due_for_return(now_ns)
            && host.uneject(now_ns)
        {
            let _ = self
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            events.push(OutlierEvent::Unejected {
                addr,
                ejected_for: Duration::from_nanos(elapsed),
            });
        }
    }

    /// Sets `ejections_active` to the number of the given hosts that are ejected (or being
    /// ejected), so endpoints removed while ejected stop counting. An inline attempt racing with
    /// the recount can leave the gauge one off (high if it was refused after being counted, low
    /// if its increment landed before the store) until the next sweep recounts.
    fn recount(&self, hosts: &[(SocketAddr, &OutlierHost)]) {
        let ejected = hosts.iter().filter(|(_, host)| !host.in_service()).count();
        self.active.store(ejected as u64, Ordering::Release);
    }

    /// The success-rate and failure-percentage tests over one origin's frozen counts.
    fn detect(
        &self,
        hosts: &[(SocketAddr, &OutlierHost)],
        origin: Origin,
        now: Instant,
        events: &mut Vec<OutlierEvent>,
    ) {
        let c = &self.config;
        let a50 = c.ejection_rule == MaxEjectionRule::GrpcA50;
        let count = hosts.len() as u64;
        let sr_min = u64::from(c.success_rate_minimum_hosts);
        let fp_min = u64::from(c.failure_percentage_minimum_hosts);
        if count < sr_min && count < fp_min {
            return;
        }
        let sr_volume = u64::from(c.success_rate_request_volume);
        let fp_volume = u64::from(c.failure_percentage_request_volume);
        let mut sr_hosts: Vec<(usize, Counts)> = Vec::new();
        let mut fp_hosts: Vec<(usize, Counts)> = Vec::new();
        for (index, (_, host)) in hosts.iter().enumerate() {
            let counts = origin.bucket(host).frozen();
            if counts.total == 0 || (!a50 && !host.in_service()) {
                continue;
            }
            if origin == Origin::External && counts.total >= sr_volume.min(fp_volume) {
                host.set_success_rate(counts.rate());
            }
            if counts.total >= sr_volume {
                sr_hosts.push((index, counts));
            }
            if counts.total >= fp_volume {
                fp_hosts.push((index, counts));
            }
        }
        let total = hosts.len();
        if !sr_hosts.is_empty() && sr_hosts.len() as u64 >= sr_min {
            let n = sr_hosts.len() as f64;
            let mean = sr_hosts.iter().map(|(_, k)| k.rate()).sum::<f64>() / n;
            let variance = sr_hosts
                .iter()
                .map(|(_, k)| (k.rate() - mean).powi(2))
                .sum::<f64>()
                / n;
            let stdev = variance.sqrt();
            let threshold = mean - f64::from(c.success_rate_stdev_factor) / 1000.0 * stdev;
            for &(index, counts) in &sr_hosts {
                let rate = counts.rate();
                if rate < threshold {
                    let (addr, host) = hosts[index];
                    let detail = || {
                        format!(
                            "{}success rate {rate:.1} below threshold {threshold:.1} (mean {mean:.1}, stdev {stdev:.1}; {} requests, {} hosts)",
                            origin.label(),
                            counts.total,
                            sr_hosts.len()
                        )
                    };
                    self.detect_one(
                        host,
                        addr,
                        origin.success_rate(),
                        total,
                        now,
                        detail,
                        events,
                    );
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() as u64 >= fp_min {
            let threshold = u128::from(c.failure_percentage_threshold);
            for &(index, counts) in &fp_hosts {
                let failures = u128::from(counts.total.saturating_sub(counts.successes));
                let requests = u128::from(counts.total);
                let outlier = if a50 {
                    failures * 100 > threshold * requests
                } else {
                    failures * 100 >= threshold * requests
                };
                if outlier {
                    let (addr, host) = hosts[index];
                    let detail = || {
                        format!(
                            "{}failure percentage {:.1} {} threshold {threshold} ({} requests)",
                            origin.label(),
                            100.0 - counts.rate(),
                            if a50 { "above" } else { "at or above" },
                            counts.total,
                        )
                    };
                    let reason = origin.failure_percentage();
                    self.detect_one(host, addr, reason, total, now, detail, events);
                }
            }
        }
    }

    /// A sweep test found an outlier: count it and run the gate, unless the host is already out.
    #[allow(clippy::too_many_arguments)]
    fn detect_one(
        &self,
        host: &OutlierHost,
        addr: SocketAddr,
        reason: EjectionReason,
        hosts: usize,
        now: Instant,
        detail: impl FnOnce() -> String,
        events: &mut Vec<OutlierEvent>,
    ) {
        if !host.in_service() {
            return; // ejected by an earlier test of this sweep, or inline meanwhile
        }
        self.detected[reason.slot()].fetch_add(1, Ordering::Relaxed);
        events.extend(self.try_eject(host, addr, reason, hosts, host.nanos(now), detail));
    }

    /// Envoy's counters and gauge, now.
    pub(crate) fn stats(&self) -> OutlierStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let detected = |r: EjectionReason| load(&self.detected[r.slot()]);
        let enforced = |r: EjectionReason| load(&self.enforced[r.slot()]);
        use EjectionReason::*;
        OutlierStats {
            ejections_active: load(&self.active),
            ejections_enforced_total: load(&self.enforced_total),
            ejections_overflow: load(&self.overflow),
            ejections_detected_consecutive_5xx: detected(Consecutive5xx),
            ejections_enforced_consecutive_5xx: enforced(Consecutive5xx),
            ejections_detected_consecutive_gateway_failure: detected(ConsecutiveGatewayFailure),
            ejections_enforced_consecutive_gateway_failure: enforced(ConsecutiveGatewayFailure),
            ejections_detected_consecutive_local_origin_failure: detected(
                ConsecutiveLocalOriginFailure,
            ),
            ejections_enforced_consecutive_local_origin_failure: enforced(
                ConsecutiveLocalOriginFailure,
            ),
            ejections_detected_success_rate: detected(SuccessRate),
            ejections_enforced_success_rate: enforced(SuccessRate),
            ejections_detected_failure_percentage: detected(FailurePercentage),
            ejections_enforced_failure_percentage: enforced(FailurePercentage),
            ejections_detected_local_origin_success_rate: detected(LocalOriginSuccessRate),
            ejections_enforced_local_origin_success_rate: enforced(LocalOriginSuccessRate),
            ejections_detected_local_origin_failure_percentage: detected(
                LocalOriginFailurePercentage,
            ),
            ejections_enforced_local_origin_failure_percentage: enforced(
                LocalOriginFailurePercentage,
            ),
        }
    }
}

/// Clears the sweep flag when a sweep ends, however it ends.
struct SweepDone<'a>(&'a AtomicBool);

impl Drop for SweepDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
