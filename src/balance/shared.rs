//! State shared by every clone of a balancer and its discovery driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use super::table::Table;
use super::{BalanceConfig, pick};
use crate::classify::Classify;
use crate::load::EndpointLoad;
use crate::rng::Rng;

pub(crate) struct Shared<S> {
    pub(crate) table: ArcSwap<Table<S>>,
    /// Woken whenever a new table is published, for requests waiting for an endpoint.
    pub(crate) changed: Notify,
    pub(crate) discovery: DiscoveryStatus,
    config: BalanceConfig,
    rng: Rng,
    round_robin: AtomicUsize,
}

impl<S> Shared<S> {
    pub(crate) fn new(config: BalanceConfig) -> Self {
        let rng = match config.seed() {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        Self {
            table: ArcSwap::from_pointee(Table::empty()),
            changed: Notify::new(),
            discovery: DiscoveryStatus::default(),
            config,
            rng,
            round_robin: AtomicUsize::new(0),
        }
    }

    pub(crate) fn config(&self) -> &BalanceConfig {
        &self.config
    }

    pub(crate) fn publish(&self, table: Table<S>) {
        self.table.store(Arc::new(table));
        self.discovery.last_error.store(None);
        self.discovery.updates.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Picks an endpoint from the current table, or `None` when there is none.
    pub(crate) fn pick(&self, avoid: &[SocketAddr]) -> Option<Picked<S>>
    where
        S: Clone,
    {
        let table = self.table.load();
        let slot = pick::pick(
            self.config.picker(),
            &table,
            &self.rng,
            &self.round_robin,
            avoid,
        )?;
        Some(Picked {
            addr: slot.endpoint.addr(),
            service: slot.service.clone(),
            load: Arc::clone(&slot.load),
            classify: Arc::clone(self.config.classify()),
        })
    }
}

/// What a request needs of the endpoint it was given.
pub(crate) struct Picked<S> {
    pub(crate) addr: SocketAddr,
    pub(crate) service: S,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) classify: Arc<dyn Classify>,
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
