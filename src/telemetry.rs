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

use crate::identity::SpiffeId;

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
