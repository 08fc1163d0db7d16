//! An endpoint's health gates: its circuit breaker and its outlier-detection ejection.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use tokio::time::Instant;

use super::BalanceConfig;
use crate::breaker::{Breaker, BreakerState};
use crate::outlier::OutlierHost;

/// The health state of one endpoint, shared by its table slots and in-flight requests.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) breaker: Breaker,
    pub(crate) outlier: OutlierHost,
}

impl Health {
    pub(crate) fn new(config: &BalanceConfig, addr: SocketAddr, now: Instant) -> Self {
        Self {
            breaker: Breaker::new(config.breaker(), seed_for(config.seed(), addr), now),
            outlier: OutlierHost::new(),
        }
    }

    /// Whether a request may be sent to it now: not ejected, and its breaker closed or open
    /// long enough to probe.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        !self.outlier.is_ejected() && self.breaker.is_available(now)
    }

    /// Whether it counts as healthy for panic mode: not ejected, breaker closed.
    pub(crate) fn is_healthy(&self, now: Instant) -> bool {
        !self.outlier.is_ejected() && self.breaker.state(now) == BreakerState::Closed
    }
}

/// A seed per endpoint, so that breakers do not jitter in step: fixed by the balancer's seed
/// when there is one, random otherwise.
fn seed_for(seed: Option<u64>, addr: SocketAddr) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.unwrap_or_else(rand::random).hash(&mut hasher);
    addr.hash(&mut hasher);
    hasher.finish()
}
