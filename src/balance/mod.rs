//! Balancing: send each request to the best endpoint of the service.
//!
//! [`Balance`] is a `Clone` tower service over a *per-endpoint* client: a [`MakeEndpoint`]
//! factory turns each discovered [`Endpoint`] into a service (a hyper-util client dialing that
//! address, a tonic `Channel`, a mock), and every request is sent to one of them.
//!
//! # How a request is balanced
//!
//! 1. `poll_ready` is always ready. Waiting and failing happen in the response future, because
//!    tonic turns any `poll_ready` error into `UNKNOWN`.
//! 2. The request picks from the current endpoint table on the caller's task: no `Buffer`, no
//!    worker task, no lock. The [`Picker`] decides how (P2C over PeakEWMA by default).
//! 3. When the table is empty, the request waits up to
//!    [`no_endpoint_timeout`](BalanceConfigBuilder::no_endpoint_timeout) (3 s by default, as
//!    Linkerd fails fast) for discovery to publish one, then fails with
//!    [`NoEndpoint`](crate::error::NoEndpoint). It never hangs.
//! 4. The picked endpoint's client is cloned and driven with `oneshot`; the endpoint's load
//!    counts the request until the response body ends (see [`load`](crate::load)).
//! 5. The response carries [`ServedBy`] in its extensions; an error is an
//!    [`EndpointError`](crate::error::EndpointError) naming the endpoint.
//!
//! Discovery runs on a background task (see [`discover`](crate::discover)), started when the
//! balancer is built inside a tokio runtime, or at the first request otherwise. It stops when the
//! last clone is dropped.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use proxyless::balance::{Balance, BalanceConfig, ServedBy};
//! use proxyless::discover::{self, Endpoint};
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), proxyless::BoxError> {
//! // One service per endpoint; here a closure standing in for an HTTP client.
//! let make = |endpoint: &Endpoint| {
//!     let addr = endpoint.addr();
//!     service_fn(move |_req: Request<Full<Bytes>>| async move {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(addr.to_string()))))
//!     })
//! };
//! let discover = discover::fixed(["127.0.0.1:8081", "127.0.0.1:8082"])?;
//! let balance = Balance::new(discover, make, BalanceConfig::default())?;
//!
//! let rsp = balance.oneshot(Request::new(Full::default())).await?;
//! let served_by = rsp.extensions().get::<ServedBy>().unwrap();
//! assert!(served_by.0.port() == 8081 || served_by.0.port() == 8082);
//! # Ok(()) }
//! ```

mod body;
mod config;
mod driver;
mod future;
mod health;
mod pick;
mod shared;
mod table;

pub use body::ResponseBody;
pub use config::{BalanceConfig, BalanceConfigBuilder, Picker};
pub use future::ResponseFuture;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::discover::{Discover, Endpoint};
use crate::error::BuildError;
use crate::outlier::OutlierEvent;
use crate::telemetry::{DiscoverySnapshot, EndpointSnapshot, Snapshot};
use pick::NoPick;
use shared::Shared;

/// Makes the client for one endpoint.
///
/// Called by the discovery driver once per new endpoint (not per request), so it may be as
/// cheap as cloning a hyper-util builder's client: connections are dialed lazily. Any
/// `Fn(&Endpoint) -> S` is a `MakeEndpoint`.
pub trait MakeEndpoint: Send + Sync + 'static {
    /// The per-endpoint client.
    type Service;

    /// Makes the client for `endpoint`.
    fn make_endpoint(&self, endpoint: &Endpoint) -> Self::Service;
}

impl<F, S> MakeEndpoint for F
where
    F: Fn(&Endpoint) -> S + Send + Sync + 'static,
{
    type Service = S;

    fn make_endpoint(&self, endpoint: &Endpoint) -> S {
        self(endpoint)
    }
}

/// The endpoint that served a response, in the response's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServedBy(pub SocketAddr);

/// Endpoints a request has already been sent to, in its extensions: the balancer picks another
/// while any other is available (Envoy's previous-hosts retry predicate).
///
/// The [retry layer](crate::retry) sets it on every retry; a layer of your own can too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriedEndpoints(Vec<SocketAddr>);

impl TriedEndpoints {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint (once).
    pub fn insert(&mut self, addr: SocketAddr) {
        if !self.0.contains(&addr) {
            self.0.push(addr);
        }
    }

    /// Whether the endpoint was tried.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.contains(&addr)
    }

    /// The endpoints tried, in order.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.0
    }
}

/// A deadline for one attempt's response headers, in the request's extensions.
///
/// If the picked endpoint has not answered by then, the attempt fails with an
/// [`EndpointError`](crate::error::EndpointError) of kind
/// [`Timeout`](crate::error::EndpointErrorKind::Timeout) naming the endpoint, and the endpoint is
/// charged a failure. The [retry layer](crate::retry) sets it from its per-try timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptDeadline(pub tokio::time::Instant);

/// A tower [`Layer`] that balances over the per-endpoint clients made by the wrapped
/// [`MakeEndpoint`].
///
/// Each `layer` call starts its own discovery driver on a clone of the source, hence the `Clone`
/// bound; use [`Balance::new`] for a source that cannot be cloned.
///
/// ```
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use http_body_util::Empty;
/// # use bytes::Bytes;
/// use proxyless::balance::BalanceLayer;
/// use proxyless::discover::{self, Endpoint};
/// use tower::{ServiceBuilder, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), proxyless::BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(BalanceLayer::new(discover::fixed(["127.0.0.1:8081"])?))
///     .service(|_: &Endpoint| {
///         service_fn(|_: Request<Empty<Bytes>>| async {
///             Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
///         })
///     });
/// # let _ = svc; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BalanceLayer<D> {
    discover: D,
    config: BalanceConfig,
}

impl<D> BalanceLayer<D> {
    /// A layer with the default [`BalanceConfig`].
    pub fn new(discover: D) -> Self {
        Self::with_config(discover, BalanceConfig::default())
    }

    /// A layer with the given settings.
    pub fn with_config(discover: D, config: BalanceConfig) -> Self {
        Self { discover, config }
    }
}

impl<D, M> Layer<M> for BalanceLayer<D>
where
    D: Discover + Clone,
    M: MakeEndpoint,
    M::Service: Clone + Send + Sync + 'static,
{
    type Service = Balance<M::Service>;

    fn layer(&self, make: M) -> Self::Service {
        Balance::start(self.discover.clone(), make, self.config.clone())
    }
}

/// The balancing service; see the [module docs](self). `Clone`: clones share endpoints, loads and
/// the discovery driver.
pub struct Balance<S> {
    shared: Arc<Shared<S>>,
    driver: Arc<DriverHandle>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            driver: Arc::clone(&self.driver),
        }
    }
}

impl<S> std::fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("endpoints", &self.shared.table.load().len())
            .field("config", self.shared.config())
            .finish()
    }
}

type DriverFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Owns the discovery driver: dropping it (with the last balancer clone and the last request
/// waiting for an endpoint) stops the driver.
struct DriverHandle {
    _shutdown: oneshot::Sender<()>,
    started: AtomicBool,
    /// The driver, until a runtime is available to spawn it. Taken once; after that requests
    /// only read `started`.
    deferred: tokio::sync::Mutex<Option<DriverFuture>>,
}

impl DriverHandle {
    fn ensure_started(&self) -> Result<(), BuildError> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        // A caller that loses the race leaves the spawning to the winner.
        if let Ok(mut deferred) = self.deferred.try_lock() {
            if let Some(driver) = deferred.take() {
                runtime.spawn(driver);
            }
            self.started.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl<S> Balance<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// A balancer over the endpoints from `discover`, each served by a client from `make`.
    ///
    /// Fails with [`BuildError::NoRuntime`] outside a tokio runtime, since it spawns its
    /// discovery driver.
    pub fn new<D, M>(discover: D, make: M, config: BalanceConfig) -> Result<Self, BuildError>
    where
        D: Discover,
        M: MakeEndpoint<Service = S>,
    {
        let balance = Self::start(discover, make, config);
        balance.driver.ensure_started()?;
        Ok(balance)
    }

    /// Spawns the driver now if there is a runtime, else at the first request.
    fn start<D, M>(discover: D, make: M, config: BalanceConfig) -> Self
    where
        D: Discover,
        M: MakeEndpoint<Service = S>,
    {
        let shared = Arc::new(Shared::new(config));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let driver: DriverFuture = Box::pin(driver::run(
            Arc::clone(&shared),
            discover,
            make,
            shutdown_rx,
        ));
        let handle = DriverHandle {
            _shutdown: shutdown_tx,
            started: AtomicBool::new(false),
            deferred: tokio::sync::Mutex::new(Some(driver)),
        };
        // Outside a runtime the driver waits for the first request; not an error here.
        let _ = handle.ensure_started();
        Self {
            shared,
            driver: Arc::new(handle),
        }
    }
}

impl<S> Balance<S> {
    /// The balancer's settings.
    pub fn config(&self) -> &BalanceConfig {
        self.shared.config()
    }

    /// Runs an outlier-detection sweep now, besides the ones on the configured interval, and
    /// returns its decisions (ejections, returns, refusals). For tests and operator tools.
    pub fn sweep_outliers(&self) -> Vec<OutlierEvent> {
        self.shared.sweep_outliers()
    }

    /// Waits until discovery has published at least `n` endpoints, e.g. before a service starts
    /// taking traffic that needs them.
    ///
    /// It waits as long as discovery takes: wrap it in [`tokio::time::timeout`] to bound it.
    /// Requests do not need it: one sent before any endpoint is known waits for one itself, up
    /// to [`no_endpoint_timeout`](BalanceConfigBuilder::no_endpoint_timeout).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), proxyless::BoxError> {
    /// use std::time::Duration;
    /// use proxyless::balance::Balance;
    /// use proxyless::discover::{self, Endpoint};
    /// use tower::service_fn;
    ///
    /// let (pusher, source) = discover::push();
    /// let make = |_: &Endpoint| service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) });
    /// let balance = Balance::new(source, make, Default::default())?;
    /// pusher.set(vec![Endpoint::new("127.0.0.1:8080".parse()?)])?;
    /// tokio::time::timeout(Duration::from_secs(5), balance.wait_for_endpoints(1)).await?;
    /// assert_eq!(balance.snapshot().endpoints.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_endpoints(&self, n: usize) {
        loop {
            // Registered before the check: a publish in between still wakes it.
            let published = self.shared.context.changed.notified();
            if self.shared.table.load().len() >= n {
                return;
            }
            published.await;
        }
    }

    /// The endpoints as of now, with their loads and counters, and the state of discovery.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.shared.table.load();
        let now = tokio::time::Instant::now();
        let picker = self.shared.config().picker();
        let endpoints = table
            .slots
            .iter()
            .map(|slot| {
                let weight = slot.endpoint.weight();
                EndpointSnapshot {
                    addr: slot.endpoint.addr(),
                    weight,
                    zone: slot.endpoint.zone().map(str::to_owned),
                    identity: slot.endpoint.identity().cloned(),
                    in_flight: slot.load.in_flight(),
                    load: match picker {
                        Picker::P2cLeastRequest => slot.load.in_flight_cost(weight),
                        _ => slot.load.peak_ewma_cost(now, weight),
                    },
                    rtt_estimate: slot.load.rtt().estimate(now),
                    requests: slot.load.requests(),
                    failures: slot.load.failures(),
                    breaker: slot.health.breaker.state(now),
                    breaker_opened: slot.health.breaker.times_opened(),
                    outlier: slot.health.outlier.snapshot(now),
                }
            })
            .collect();
        let discovery = &self.shared.discovery;
        Snapshot {
            endpoints,
            table_version: table.version,
            table_age: now.saturating_duration_since(table.published_at),
            discovery: DiscoverySnapshot {
                updates: discovery.updates.load(Ordering::Relaxed),
                rejected: discovery.rejected.load(Ordering::Relaxed),
                errors: discovery.errors.load(Ordering::Relaxed),
                ended: discovery.ended.load(Ordering::Relaxed),
                last_error: discovery.last_error.load_full().map(|e| e.as_ref().clone()),
            },
            in_flight: self.shared.context.in_flight(),
            overloaded: self.shared.context.overloaded.load(Ordering::Relaxed),
            panic_picks: self.shared.context.panics.load(Ordering::Relaxed),
            outlier: self.shared.context.detector.stats(),
            retry: None,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Never fail or wait here: tonic maps poll_ready errors to UNKNOWN, and waiting here
        // would hold the caller without a bound.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = tracing::debug_span!("balance", endpoint = tracing::field::Empty);
        if let Err(error) = self.driver.ensure_started() {
            return ResponseFuture::failed(error.into(), span);
        }
        let extensions = request.extensions();
        let avoid = extensions
            .get::<TriedEndpoints>()
            .map_or(&[][..], TriedEndpoints::as_slice);
        let deadline = extensions.get::<AttemptDeadline>().map(|d| d.0);
        match self.shared.pick(avoid) {
            Ok(picked) => ResponseFuture::calling(picked, request, deadline, span),
            Err(NoPick::AtCapacity) => {
                ResponseFuture::failed(self.shared.overloaded().into(), span)
            }
            Err(_) if self.shared.failing_fast.load(Ordering::Relaxed) => {
                let error = self.shared.no_endpoint(std::time::Duration::ZERO);
                ResponseFuture::failed(error.into(), span)
            }
            Err(_) => {
                let avoid = avoid.to_vec();
                ResponseFuture::waiting(
                    Arc::clone(&self.shared),
                    Arc::clone(&self.driver) as _,
                    avoid,
                    request,
                    deadline,
                    span,
                )
            }
        }
    }
}
