//! Snapshots of balancer state, for dashboards, health pages and tests.
//!
//! [`Balance::snapshot`](crate::balance::Balance::snapshot) (and
//! [`Client::snapshot`](crate::Client::snapshot)) copy the live counters into plain values;
//! taking one reads atomics and takes no lock on the request path.
//!
//! Every request runs in a `tracing` span named `balance` with the chosen `endpoint` recorded;
//! discovery changes are logged at `debug`, rejected updates and source errors at `warn`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::breaker::BreakerState;
use crate::identity::SpiffeId;
use crate::outlier::{OutlierHostSnapshot, OutlierStats};

/// The state of a balancer at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Snapshot {
    /// The endpoints in the current table, in discovery order.
    pub endpoints: Vec<EndpointSnapshot>,
    /// Incremented each time discovery publishes a changed table (0: none yet).
    pub table_version: u64,
    /// How long ago the current table was published.
    pub table_age: Duration,
    /// The state of the discovery source.
    pub discovery: DiscoverySnapshot,
    /// Requests in flight across all endpoints (bounded by `max_requests`).
    pub in_flight: u64,
    /// Requests refused by a concurrency cap ([`Overloaded`](crate::error::Overloaded)).
    pub overloaded: u64,
    /// Picks made in panic mode, ignoring endpoint health.
    pub panic_picks: u64,
    /// Outlier detection's counters, with Envoy's names.
    pub outlier: OutlierStats,
    /// The retry counters, when a retry layer is part of the stack (as in
    /// [`Client`](crate::Client)).
    pub retry: Option<RetrySnapshot>,
}

impl Snapshot {
    /// The endpoint with this address, if it is in the table.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    /// Requests sent to all endpoints in the table.
    pub fn total_requests(&self) -> u64 {
        self.endpoints.iter().map(|e| e.requests).sum()
    }
}

/// One endpoint's state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Its relative weight.
    pub weight: u32,
    /// Its zone, if discovery gave one.
    pub zone: Option<String>,
    /// The identity it is expected to prove, if any.
    pub identity: Option<SpiffeId>,
    /// Requests dispatched and not yet finished (response body not yet ended).
    pub in_flight: u64,
    /// The cost the picker compares: PeakEWMA `rtt_ns × (in_flight + 1) / weight`, or
    /// `(in_flight + 1) / weight` for least request.
    pub load: f64,
    /// The PeakEWMA round-trip estimate, decayed to now.
    pub rtt_estimate: Duration,
    /// Requests dispatched to it since it was discovered.
    pub requests: u64,
    /// Of those, failures: transport errors, 5xx, gRPC server-failure statuses.
    pub failures: u64,
    /// Its circuit breaker's state: while open, it gets no traffic (outside panic mode).
    pub breaker: BreakerState,
    /// How many times its breaker has opened (trips and failed probes).
    pub breaker_opened: u64,
    /// Its outlier-detection state: ejected or not, why, for how long, times ejected, and the
    /// success rate of the last interval.
    pub outlier: OutlierHostSnapshot,
}

impl EndpointSnapshot {
    /// Whether the balancer would pick it now (outside panic mode), and if not, why.
    pub fn availability(&self) -> &'static str {
        if self.outlier.ejected {
            "ejected by outlier detection"
        } else if matches!(self.breaker, BreakerState::Open { .. }) {
            "circuit breaker open"
        } else if matches!(
            self.breaker,
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        ) {
            "circuit breaker half-open, probe in flight"
        } else {
            "available"
        }
    }
}

/// The state of the discovery source.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DiscoverySnapshot {
    /// Changed tables published.
    pub updates: u64,
    /// Updates rejected as invalid (duplicates, bad addresses, zero weights).
    pub rejected: u64,
    /// Errors returned by the source.
    pub errors: u64,
    /// Whether the source has ended (the last set is kept).
    pub ended: bool,
    /// The last rejection or error, cleared by the next good update: `Some` means discovery is
    /// failing now and the balancer runs on the last good set.
    pub last_error: Option<String>,
}

/// The counters of a retry layer.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RetrySnapshot {
    /// Original requests.
    pub requests: u64,
    /// Retries sent (attempts beyond the first).
    pub retries: u64,
    /// Retries the budget refused; the last response or error was returned.
    pub budget_denied: u64,
    /// Requests that used every attempt and still failed.
    pub exhausted: u64,
    /// Retries given up because the request body could not be sent again (over the replay cap,
    /// or still streaming when the response came).
    pub not_replayable: u64,
    /// Retries the server refused (negative or malformed gRPC pushback, `Retry-After` too long).
    pub refused_by_server: u64,
    /// Requests ended by their overall deadline: cut short ([`DeadlineExceeded`](crate::error::DeadlineExceeded)),
    /// or not retried because the backoff would have passed it.
    pub deadline_reached: u64,
    /// Retries the budget would allow now (tokens, for gRPC throttling).
    pub budget_available: f64,
}

impl RetrySnapshot {
    /// Retries per original request: the load retries add, as a fraction.
    pub fn retry_ratio(&self) -> f64 {
        self.retries as f64 / self.requests.max(1) as f64
    }
}
