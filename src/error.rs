//! Typed errors.
//!
//! Every service in this crate fails with a [`BoxError`] whose concrete type is one of the types
//! below, so callers can `downcast_ref` to tell "no endpoint was available" from "the endpoint at
//! 10.0.0.5:8080 refused the connection". Each error names the endpoint (or the service) involved.
//!
//! With the `tonic` feature, each error's [`source()`](std::error::Error::source) is a
//! [`tonic::Status`] with the matching gRPC code, so a tonic generated client reports
//! `UNAVAILABLE` (not `UNKNOWN`) when no endpoint is available or a connection fails. The
//! original cause stays reachable through the error's own accessors.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The boxed error type used by tower services: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// No endpoint could serve the request within the configured wait.
///
/// Returned when discovery has published no endpoint (or every endpoint is unavailable) for
/// longer than [`BalanceConfig::no_endpoint_timeout`](crate::balance::BalanceConfig). The request was never
/// sent, so it is always safe to retry elsewhere; retry layers must not retry it against the same
/// balancer, since that would only wait again.
#[derive(Debug)]
pub struct NoEndpoint {
    waited: Duration,
    known: usize,
    unhealthy: usize,
    #[cfg(feature = "tonic")]
    status: tonic::Status,
}

impl NoEndpoint {
    pub(crate) fn new(waited: Duration, known: usize, unhealthy: usize) -> Self {
        Self {
            waited,
            known,
            unhealthy,
            #[cfg(feature = "tonic")]
            status: tonic::Status::unavailable(no_endpoint_message(waited, known, unhealthy)),
        }
    }

    /// How long the request waited for an endpoint before failing.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How many endpoints discovery knew of (none of them available) when the request failed.
    pub fn known_endpoints(&self) -> usize {
        self.known
    }

    /// Of those, how many were unhealthy (ejected, or with a breaker not closed).
    pub fn unhealthy_endpoints(&self) -> usize {
        self.unhealthy
    }
}

impl fmt::Display for NoEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&no_endpoint_message(
            self.waited,
            self.known,
            self.unhealthy,
        ))
    }
}

fn no_endpoint_message(waited: Duration, known: usize, unhealthy: usize) -> String {
    if known == 0 {
        format!("no endpoint available: discovery has published none after waiting {waited:?}")
    } else {
        format!(
            "no endpoint available: none of {known} known endpoints could take the request \
             ({unhealthy} unhealthy: ejected or circuit open) after waiting {waited:?}"
        )
    }
}

/// A concurrency cap was reached: the request was not sent.
///
/// Load shedding of our own: retry layers must not retry it (that would only add load).
/// tonic reports it as `RESOURCE_EXHAUSTED`.
#[derive(Debug)]
pub struct Overloaded {
    limit: u64,
    per_endpoint: bool,
    #[cfg(feature = "tonic")]
    status: tonic::Status,
}

impl Overloaded {
    pub(crate) fn service(limit: u64) -> Self {
        Self::new(limit, false)
    }

    pub(crate) fn endpoints(limit: u64) -> Self {
        Self::new(limit, true)
    }

    fn new(limit: u64, per_endpoint: bool) -> Self {
        Self {
            limit,
            per_endpoint,
            #[cfg(feature = "tonic")]
            status: tonic::Status::resource_exhausted(overloaded_message(limit, per_endpoint)),
        }
    }

    /// The cap that was reached.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether every endpoint was at its own cap (rather than the service at its cap).
    pub fn per_endpoint(&self) -> bool {
        self.per_endpoint
    }
}

fn overloaded_message(limit: u64, per_endpoint: bool) -> String {
    if per_endpoint {
        format!(
            "overloaded: every endpoint has {limit} requests in flight (max_requests_per_endpoint)"
        )
    } else {
        format!("overloaded: the service has {limit} requests in flight (max_requests)")
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&overloaded_message(self.limit, self.per_endpoint))
    }
}

impl std::error::Error for Overloaded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        return Some(&self.status);
        #[cfg(not(feature = "tonic"))]
        None
    }
}

impl std::error::Error for NoEndpoint {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        return Some(&self.status);
        #[cfg(not(feature = "tonic"))]
        None
    }
}

/// What kind of failure an [`EndpointError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointErrorKind {
    /// The connection to the endpoint could not be established: the request was never sent.
    Connect,
    /// The endpoint's client failed after the request may have been sent (reset, protocol error,
    /// ...).
    Request,
    /// The endpoint did not answer before the attempt's deadline
    /// ([`AttemptDeadline`](crate::balance::AttemptDeadline)).
    Timeout,
}

/// The attempt's deadline passed before the endpoint answered.
#[derive(Debug)]
struct AttemptTimedOut(Duration);

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no response headers after {:?}", self.0)
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The endpoint's inner client failed.
///
/// Wraps the inner service's error and names the endpoint it came from.
#[derive(Debug)]
pub struct EndpointError {
    endpoint: SocketAddr,
    kind: EndpointErrorKind,
    inner: BoxError,
    #[cfg(feature = "tonic")]
    status: tonic::Status,
}

impl EndpointError {
    pub(crate) fn new(endpoint: SocketAddr, inner: BoxError) -> Self {
        let kind = if is_connect_error(&*inner) {
            EndpointErrorKind::Connect
        } else {
            EndpointErrorKind::Request
        };
        Self::with_kind(endpoint, kind, inner)
    }

    pub(crate) fn timeout(endpoint: SocketAddr, after: Duration) -> Self {
        Self::with_kind(
            endpoint,
            EndpointErrorKind::Timeout,
            Box::new(AttemptTimedOut(after)),
        )
    }

    fn with_kind(endpoint: SocketAddr, kind: EndpointErrorKind, inner: BoxError) -> Self {
        #[cfg(feature = "tonic")]
        let status = {
            let code = match (kind, find_status(&*inner)) {
                (_, Some(code)) => code,
                (EndpointErrorKind::Timeout, None) => tonic::Code::DeadlineExceeded,
                (_, None) => tonic::Code::Unavailable,
            };
            tonic::Status::new(code, endpoint_message(endpoint, kind, &*inner))
        };
        Self {
            endpoint,
            kind,
            inner,
            #[cfg(feature = "tonic")]
            status,
        }
    }

    /// The address of the endpoint whose client failed.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Whether the connection failed (never sent) or the request itself.
    pub fn kind(&self) -> EndpointErrorKind {
        self.kind
    }

    /// Whether the request is known never to have reached the endpoint.
    pub fn is_connect(&self) -> bool {
        self.kind == EndpointErrorKind::Connect
    }

    /// The inner client's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// Takes the inner client's error.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&endpoint_message(self.endpoint, self.kind, &*self.inner))
    }
}

fn endpoint_message(
    endpoint: SocketAddr,
    kind: EndpointErrorKind,
    inner: &(dyn std::error::Error + 'static),
) -> String {
    let what = match kind {
        EndpointErrorKind::Connect => "connection failed",
        EndpointErrorKind::Request => "request failed",
        EndpointErrorKind::Timeout => "timed out",
    };
    format!("endpoint {endpoint}: {what}: {}", chain_message(inner))
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        return Some(&self.status);
        #[cfg(not(feature = "tonic"))]
        Some(&*self.inner)
    }
}

/// The configuration given to a builder was invalid, or the environment cannot run the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting was out of range; the message names it and the accepted range.
    InvalidConfig(String),
    /// The client was built outside a tokio runtime, so its discovery driver cannot start.
    NoRuntime,
    /// The given origin URI cannot be used as the logical authority of requests.
    InvalidOrigin(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            BuildError::NoRuntime => f.write_str(
                "no tokio runtime: build the client from within a tokio runtime, since it spawns its discovery driver",
            ),
            BuildError::InvalidOrigin(why) => write!(f, "invalid origin: {why}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The longest accepted duration for any setting: beyond it a value is surely a unit mistake.
const MAX_SETTING: Duration = Duration::from_secs(3_600);

/// Checks that the setting `name` lies between `min` and one hour.
pub(crate) fn check_duration(name: &str, value: Duration, min: Duration) -> Result<(), BuildError> {
    if value >= min && value <= MAX_SETTING {
        return Ok(());
    }
    let range = if min.is_zero() {
        "at most 1h".to_owned()
    } else {
        format!("between {min:?} and 1h")
    };
    Err(BuildError::InvalidConfig(format!(
        "{name} is {value:?}; it must be {range}"
    )))
}

/// Joins an error and its sources into one line: `outer: cause: root cause`.
pub(crate) fn chain_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Whether the error (or one of its sources) says the connection was never established.
fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && legacy.is_connect()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The gRPC code of a `tonic::Status` in the error's source chain, if any, so errors of an
/// inner tonic `Channel` keep their code.
#[cfg(feature = "tonic")]
fn find_status(error: &(dyn std::error::Error + 'static)) -> Option<tonic::Code> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return Some(status.code());
        }
        current = e.source();
    }
    None
}

/// The request's overall deadline passed, across its attempts and backoffs.
#[derive(Debug)]
pub struct DeadlineExceeded {
    deadline: Duration,
    attempts: u32,
    last_endpoint: Option<SocketAddr>,
    #[cfg(feature = "tonic")]
    status: tonic::Status,
}

impl DeadlineExceeded {
    pub(crate) fn new(
        deadline: Duration,
        attempts: u32,
        last_endpoint: Option<SocketAddr>,
    ) -> Self {
        Self {
            deadline,
            attempts,
            last_endpoint,
            #[cfg(feature = "tonic")]
            status: tonic::Status::deadline_exceeded(deadline_message(
                deadline,
                attempts,
                last_endpoint,
            )),
        }
    }

    /// The deadline that passed.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Attempts started, the one cut short included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The endpoint of the last finished attempt, if any finished.
    pub fn last_endpoint(&self) -> Option<SocketAddr> {
        self.last_endpoint
    }
}

fn deadline_message(
    deadline: Duration,
    attempts: u32,
    last_endpoint: Option<SocketAddr>,
) -> String {
    let mut message = format!("deadline of {deadline:?} exceeded during attempt {attempts}");
    if let Some(endpoint) = last_endpoint {
        message.push_str(&format!(" (last endpoint tried: {endpoint})"));
    }
    message
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&deadline_message(
            self.deadline,
            self.attempts,
            self.last_endpoint,
        ))
    }
}

impl std::error::Error for DeadlineExceeded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "tonic")]
        return Some(&self.status);
        #[cfg(not(feature = "tonic"))]
        None
    }
}
