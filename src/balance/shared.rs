//! State shared by every clone of a balancer and its discovery driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use super::BalanceConfig;
use super::health::Health;
use super::pick::{self, Constraints, NoPick};
use super::table::Table;
use crate::breaker::Admission;
use crate::classify::Classify;
use crate::error::{NoEndpoint, Overloaded};
use crate::load::EndpointLoad;
use crate::outlier::{Detector, OutlierEvent, OutlierHost};
use crate::padded::Padded;
use crate::rng::Rng;

pub(crate) struct Shared<S> {
    pub(crate) table: ArcSwap<Table<S>>,
    pub(crate) discovery: DiscoveryStatus,
    pub(crate) context: Arc<Accounting>,
    /// Endpoints of the current table that are ejected or whose breaker is not closed.
    pub(crate) unhealthy: AtomicUsize,
    /// Set when a request waited the full `no_endpoint_timeout` in vain; later requests then
    /// fail at once instead of waiting too, until an endpoint becomes available (Linkerd's
    /// fail-fast state).
    pub(crate) failing_fast: AtomicBool,
    config: BalanceConfig,
    rng: Rng,
    // Written by every round-robin pick.
    round_robin: Padded<AtomicUsize>,
}

/// What in-flight requests share with their balancer, whatever its endpoint client type.
pub(crate) struct Accounting {
    pub(crate) classify: Arc<dyn Classify>,
    /// Woken whenever a new table is published or an endpoint's health changes, for requests
    /// waiting for an endpoint.
    pub(crate) changed: Notify,
    /// Set by health transitions on the request path; the next pick recounts.
    health_dirty: AtomicBool,
    pub(crate) detector: Detector,
    /// Endpoints in the current table, for the outlier detector's max ejection percent.
    pub(crate) hosts: AtomicUsize,
    // Written twice per request: padded so that the fields every request reads (the classifier,
    // the host count, the limit) stay in their cores' caches.
    in_flight: Padded<AtomicU64>,
    max_requests: u64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) panics: AtomicU64,
}

impl Accounting {
    /// Takes one of the service's `max_requests` slots, or says how many there are.
    pub(crate) fn try_acquire(&self) -> Result<(), Overloaded> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_requests {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Overloaded::service(self.max_requests));
        }
        Ok(())
    }

    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// An endpoint's health changed: recount before the next pick, and wake waiting requests.
    pub(crate) fn health_changed(&self) {
        self.health_dirty.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }
}

impl<S> Shared<S> {
    pub(crate) fn new(config: BalanceConfig) -> Self {
        let rng = match config.seed() {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        Self {
            table: ArcSwap::from_pointee(Table::empty()),
            discovery: DiscoveryStatus::default(),
            context: Arc::new(Accounting {
                classify: Arc::clone(config.classify()),
                changed: Notify::new(),
                health_dirty: AtomicBool::new(false),
                detector: Detector::new(
                    config.outlier().clone(),
                    config.seed().unwrap_or_else(rand::random),
                ),
                hosts: AtomicUsize::new(0),
                in_flight: Padded(AtomicU64::new(0)),
                max_requests: config.max_requests(),
                overloaded: AtomicU64::new(0),
                panics: AtomicU64::new(0),
            }),
            unhealthy: AtomicUsize::new(0),
            failing_fast: AtomicBool::new(false),
            config,
            rng,
            round_robin: Padded(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn config(&self) -> &BalanceConfig {
        &self.config
    }

    pub(crate) fn publish(&self, table: Table<S>) {
        self.context.hosts.store(table.len(), Ordering::Relaxed);
        self.table.store(Arc::new(table));
        self.discovery.last_error.store(None);
        self.discovery.updates.fetch_add(1, Ordering::Relaxed);
        self.recount();
        self.failing_fast.store(false, Ordering::Relaxed);
        self.context.changed.notify_waiters();
    }

    /// Runs one outlier-detection sweep over the current endpoints and logs its decisions.
    pub(crate) fn sweep_outliers(&self) -> Vec<OutlierEvent> {
        let table = self.table.load();
        let hosts: Vec<(SocketAddr, &OutlierHost)> = table
            .slots
            .iter()
            .map(|slot| (slot.endpoint.addr(), &slot.health.outlier))
            .collect();
        let events = self
            .context
            .detector
            .sweep(&hosts, tokio::time::Instant::now());
        for event in &events {
            log_outlier_event(event);
        }
        if !events.is_empty() {
            self.recount();
            self.context.changed.notify_waiters();
        }
        events
    }

    /// Recounts unhealthy endpoints; called when a table is published and, through
    /// [`Accounting::health_changed`], at the first pick after a health transition.
    fn recount(&self) {
        let table = self.table.load();
        let now = tokio::time::Instant::now();
        let unhealthy = table
            .slots
            .iter()
            .filter(|s| !s.health.is_healthy(now))
            .count();
        let before = self.unhealthy.swap(unhealthy, Ordering::Relaxed);
        if unhealthy < before {
            // Something came back: let requests wait for endpoints again.
            self.failing_fast.store(false, Ordering::Relaxed);
        }
    }

    /// Picks an endpoint from the current table.
    ///
    /// The pick claims the endpoint's breaker admission; when another request took the one probe
    /// of a half-open breaker in between, it picks again (three tries).
    pub(crate) fn pick(&self, avoid: &[SocketAddr]) -> Result<Picked<S>, NoPick>
    where
        S: Clone,
    {
        // Read before swapping: a swap writes the flag's cache line on every pick, which every
        // core sending requests would then take turns owning.
        let dirty = &self.context.health_dirty;
        if dirty.load(Ordering::Acquire) && dirty.swap(false, Ordering::AcqRel) {
            self.recount();
        }
        let table = self.table.load();
        let now = tokio::time::Instant::now();
        let constraints = Constraints {
            avoid,
            max_per_endpoint: self.config.max_requests_per_endpoint(),
            unhealthy: self.unhealthy.load(Ordering::Relaxed),
            panic_threshold: self.config.panic_threshold(),
            now,
        };
        for _ in 0..3 {
            let choice = pick::pick(
                self.config.picker(),
                &table,
                &self.rng,
                &self.round_robin,
                constraints,
            )?;
            let slot = choice.slot;
            let admission = match slot.health.breaker.admit(now) {
                // Panic mode sends anyway; the breaker ignores what such requests report.
                Admission::Rejected if choice.panic => Admission::Normal,
                Admission::Rejected => continue,
                admission => admission,
            };
            if choice.panic {
                self.context.panics.fetch_add(1, Ordering::Relaxed);
            }
            if self.failing_fast.load(Ordering::Relaxed) {
                self.failing_fast.store(false, Ordering::Relaxed);
            }
            return Ok(Picked {
                addr: slot.endpoint.addr(),
                service: slot.service.clone(),
                load: Arc::clone(&slot.load),
                health: Arc::clone(&slot.health),
                admission,
                context: Arc::clone(&self.context),
                now,
            });
        }
        Err(NoPick::Unhealthy)
    }

    /// The error for a request that found every endpoint at its cap.
    pub(crate) fn overloaded(&self) -> Overloaded {
        self.context.overloaded.fetch_add(1, Ordering::Relaxed);
        Overloaded::endpoints(self.config.max_requests_per_endpoint().unwrap_or(u64::MAX))
    }

    /// The error for a request that found no endpoint, after waiting `waited`.
    pub(crate) fn no_endpoint(&self, waited: std::time::Duration) -> NoEndpoint {
        let table = self.table.load();
        NoEndpoint::new(waited, table.len(), self.unhealthy.load(Ordering::Relaxed))
    }
}

/// Logs an outlier-detection decision: ejections and returns at info, the rest at debug.
pub(crate) fn log_outlier_event(event: &OutlierEvent) {
    match event {
        OutlierEvent::Ejected { .. } | OutlierEvent::Unejected { .. } => {
            tracing::info!(endpoint = %event.addr(), "outlier detection: {event}")
        }
        _ => tracing::debug!(endpoint = %event.addr(), "outlier detection: {event}"),
    }
}

/// What a request needs of the endpoint it was given.
pub(crate) struct Picked<S> {
    pub(crate) addr: SocketAddr,
    pub(crate) service: S,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) health: Arc<Health>,
    pub(crate) admission: Admission,
    pub(crate) context: Arc<Accounting>,
    /// When it was picked: the request's start.
    pub(crate) now: tokio::time::Instant,
}

/// Counters and the last error of the discovery source, shown in snapshots.
#[derive(Default)]
pub(crate) struct DiscoveryStatus {
    pub(crate) updates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) ended: AtomicBool,
    pub(crate) last_error: ArcSwapOption<String>,
}

impl DiscoveryStatus {
    pub(crate) fn record_rejected(&self, message: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(Some(Arc::new(message)));
    }

    pub(crate) fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(Some(Arc::new(message)));
    }

    pub(crate) fn record_ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}
