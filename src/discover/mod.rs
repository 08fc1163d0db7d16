//! Discovery: where the endpoints of a service are, kept up to date.
//!
//! A [`Discover`] source yields [`Update`]s: a whole new set ([`Update::Reset`]), or one endpoint
//! inserted or removed. The balancer applies them on a background task, so an idle client stays
//! current, and publishes each new endpoint table atomically; requests read the table they find.
//!
//! # Sources
//!
//! | source | for |
//! |---|---|
//! | [`fixed`] | a static list |
//! | [`push`] | your code sets the full set, inserts and removes through a [`Pusher`] |
//! | [`polling`] | an async closure returning the full set, called on an interval |
//! | [`from_changes`] | a stream of tower [`Change`](tower::discover::Change)s |
//! | [`from_stream`] | a stream of [`Update`]s |
//! | your own type | implement [`Discover`] for your registry's client |
//!
//! # Rules
//!
//! - **Diffing.** A full set is diffed against the current one: endpoints that did not change
//!   keep their load statistics and their client (so their connections); endpoints whose metadata
//!   changed but whose identity did not keep them too.
//! - **Validation.** A set with a duplicate address, an undialable address (`0.0.0.0`, port 0)
//!   or a zero weight is rejected *whole* and the last good set kept, as an xDS client NACKs a bad
//!   update. The rejection is logged at `warn` and counted in the snapshot. Inserting an
//!   endpoint that already exists replaces it, as tower's `Change::Insert` does.
//! - **Errors and ends.** A source error keeps the last good set (logged, counted, and shown in
//!   the snapshot). A source that ends keeps the last set for the life of the balancer.
//!   [`polling`] retries a failed call with jittered exponential backoff.

mod endpoint;
mod fixed;
mod polling;
mod push;
mod stream;

pub use endpoint::{Endpoint, IntoEndpoint};
pub use fixed::{Fixed, fixed};
pub use polling::{Polling, polling};
pub use push::{PushDiscover, Pusher, push};
pub use stream::{FromChanges, FromStream, from_changes, from_stream};

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use crate::BoxError;

/// One change to a service's endpoint set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// The complete current set: endpoints not in it are removed.
    Reset(Vec<Endpoint>),
    /// Adds an endpoint, or replaces the one with the same address.
    Insert(Endpoint),
    /// Removes the endpoint with this address; requests already sent to it finish.
    Remove(SocketAddr),
}

/// A source of endpoint updates for one service.
///
/// Implement it for your registry's client: wait for the next change and return it. Returning
/// `None` says the source has ended; the balancer keeps the endpoints it has. An `Err` is
/// logged, counted, and the last good set is kept; the balancer calls again afterwards, so a
/// source that needs to back off before retrying should do so inside `next_update`.
///
/// ```
/// use proxyless::discover::{Discover, Endpoint, Update};
/// use proxyless::BoxError;
///
/// struct Registry {
///     rounds: u16,
/// }
///
/// impl Discover for Registry {
///     async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
///         if self.rounds == 3 {
///             return None; // the source is done: keep the last set
///         }
///         self.rounds += 1;
///         let addr = ([127, 0, 0, 1], 8080 + self.rounds).into();
///         Some(Ok(Update::Insert(Endpoint::new(addr))))
///     }
/// }
/// ```
pub trait Discover: Send + 'static {
    /// Waits for the next update; `None` when the source has ended.
    fn next_update(&mut self) -> impl Future<Output = Option<Result<Update, BoxError>>> + Send;
}

/// Why an endpoint or an update was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoverError {
    /// Two endpoints in one set have the same address.
    Duplicate {
        /// The repeated address.
        addr: SocketAddr,
    },
    /// The endpoint cannot be used.
    InvalidEndpoint {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value could not be parsed as an endpoint.
    Parse {
        /// The input (its first 100 characters).
        input: String,
        /// Why it did not parse.
        reason: String,
    },
    /// A `tower::discover::Change::Insert` key differs from the endpoint's address.
    KeyMismatch {
        /// The change's key.
        key: SocketAddr,
        /// The endpoint's address.
        addr: SocketAddr,
    },
    /// The balancer fed by this [`Pusher`] is gone.
    Closed,
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoverError::Duplicate { addr } => {
                write!(f, "endpoint {addr} appears more than once in the set")
            }
            DiscoverError::InvalidEndpoint { addr, reason } => {
                write!(f, "endpoint {addr} is invalid: {reason}")
            }
            DiscoverError::Parse { input, reason } => {
                write!(f, "{input:?} is not an endpoint: {reason}")
            }
            DiscoverError::KeyMismatch { key, addr } => write!(
                f,
                "change key {key} differs from the address of its endpoint {addr}"
            ),
            DiscoverError::Closed => f.write_str("the balancer fed by this source is gone"),
        }
    }
}

impl std::error::Error for DiscoverError {}

/// Checks a full set: every endpoint valid, no address twice.
pub fn validate_set(endpoints: &[Endpoint]) -> Result<(), DiscoverError> {
    let mut seen = HashSet::with_capacity(endpoints.len());
    for endpoint in endpoints {
        endpoint.validate()?;
        if !seen.insert(endpoint.addr()) {
            return Err(DiscoverError::Duplicate {
                addr: endpoint.addr(),
            });
        }
    }
    Ok(())
}

/// Checks one update the way the balancer will before applying it.
pub fn validate_update(update: &Update) -> Result<(), DiscoverError> {
    match update {
        Update::Reset(endpoints) => validate_set(endpoints),
        Update::Insert(endpoint) => endpoint.validate(),
        Update::Remove(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().unwrap())
    }

    #[test]
    fn duplicates_are_rejected() {
        let set = [ep("127.0.0.1:1"), ep("127.0.0.1:2"), ep("127.0.0.1:1")];
        assert_eq!(
            validate_set(&set),
            Err(DiscoverError::Duplicate {
                addr: "127.0.0.1:1".parse().unwrap()
            })
        );
    }

    #[test]
    fn undialable_endpoints_are_rejected() {
        for bad in [
            ep("0.0.0.0:80"),
            ep("[::]:80"),
            ep("127.0.0.1:0"),
            ep("127.0.0.1:80").with_weight(0),
        ] {
            let err = validate_set(std::slice::from_ref(&bad)).unwrap_err();
            assert!(
                matches!(err, DiscoverError::InvalidEndpoint { addr, .. } if addr == bad.addr()),
                "{err}"
            );
        }
    }

    #[test]
    fn parse_errors_quote_the_input() {
        let err = "localhost:80".into_endpoint().unwrap_err();
        assert!(err.to_string().contains("\"localhost:80\""), "{err}");
    }
}
