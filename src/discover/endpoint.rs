//! The endpoint: one address that can serve the logical service.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::DiscoverError;
use crate::identity::SpiffeId;

/// One instance of the service: where to send requests and what to expect there.
///
/// Endpoints are keyed by [`addr`](Endpoint::addr): two endpoints with the same address in one
/// set are an error. Everything else is metadata that the balancer, mTLS and telemetry read.
///
/// ```
/// use proxyless::discover::Endpoint;
///
/// let endpoint = Endpoint::new("10.0.0.5:8080".parse().unwrap())
///     .with_weight(3)
///     .with_zone("eu-west-1a")
///     .with_label("version", "v2");
/// assert_eq!(endpoint.weight(), 3);
/// assert_eq!(endpoint.label("version"), Some("v2"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    addr: SocketAddr,
    weight: u32,
    identity: Option<SpiffeId>,
    zone: Option<Arc<str>>,
    labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `addr` with weight 1 and no identity, zone or labels.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            identity: None,
            zone: None,
            labels: BTreeMap::new(),
        }
    }

    /// Sets the relative weight (default 1); pickers divide an endpoint's cost by it.
    ///
    /// A weight of 0 is rejected when the endpoint set is validated: remove an endpoint to send
    /// it no traffic.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the identity the endpoint must prove when connections use mTLS.
    pub fn with_identity(mut self, identity: SpiffeId) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets the zone (or locality) the endpoint runs in.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(Arc::from(zone.into()));
        self
    }

    /// Adds a label, replacing any earlier value under the same key.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The socket address requests are sent to; the endpoint's key.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relative weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The identity the endpoint is expected to prove, if any.
    pub fn identity(&self) -> Option<&SpiffeId> {
        self.identity.as_ref()
    }

    /// The zone the endpoint runs in, if known.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// All labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Checks the endpoint on its own: a usable address and a non-zero weight.
    pub fn validate(&self) -> Result<(), DiscoverError> {
        let reason = if self.addr.ip().is_unspecified() {
            "the IP address is unspecified (0.0.0.0 or ::), which cannot be dialed"
        } else if self.addr.port() == 0 {
            "port 0 cannot be dialed"
        } else if self.weight == 0 {
            "weight 0 is not allowed: remove the endpoint to send it no traffic"
        } else {
            return Ok(());
        };
        Err(DiscoverError::InvalidEndpoint {
            addr: self.addr,
            reason,
        })
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::new(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.weight != 1 {
            write!(f, " weight={}", self.weight)?;
        }
        if let Some(id) = &self.identity {
            write!(f, " identity={id}")?;
        }
        if let Some(zone) = &self.zone {
            write!(f, " zone={zone}")?;
        }
        Ok(())
    }
}

/// Values that can be turned into an [`Endpoint`]: an `Endpoint`, a `SocketAddr`, or a string
/// such as `"127.0.0.1:8080"` or `"[::1]:8080"`.
pub trait IntoEndpoint {
    /// Converts, or says why the value is not an endpoint.
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError>;
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError> {
        Ok(self)
    }
}

impl IntoEndpoint for SocketAddr {
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError> {
        Ok(Endpoint::new(self))
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError> {
        self.parse::<SocketAddr>()
            .map(Endpoint::new)
            .map_err(|e| DiscoverError::Parse {
                input: self.chars().take(100).collect(),
                reason: format!("{e} (expected an IP address and port, such as 127.0.0.1:8080)"),
            })
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError> {
        self.as_str().into_endpoint()
    }
}

impl IntoEndpoint for &String {
    fn into_endpoint(self) -> Result<Endpoint, DiscoverError> {
        self.as_str().into_endpoint()
    }
}
