//! The batteries-included client: discovery, balancing and pooled hyper-util clients.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_layer::Layer;
use tower_service::Service;

use super::{EndpointClient, EndpointClients, Origin};
use crate::BoxError;
use crate::balance::{Balance, BalanceConfig, ResponseBody};
use crate::discover::Discover;
use crate::error::{BuildError, check_duration};
use crate::retry::{ReplayBody, ResponseFuture, Retry, RetryLayer, RetryPolicy};
use crate::telemetry::Snapshot;

/// The response body of a [`Client`].
pub type ClientBody = ResponseBody<Incoming>;

/// A balanced HTTP client: `Clone`, a tower `Service`, ready to use.
///
/// Built by [`Client::builder`] over hyper-util, the full default stack:
/// `Retry → Balance → per-endpoint client`. Retries follow the default
/// [`RetryPolicy`] (budgeted, on another endpoint); balancing is P2C over PeakEWMA with a
/// bounded wait when no endpoint is available; each endpoint has its own pooled client
/// (HTTP/1.1, or HTTP/2 with [`ClientBuilder::http2_only`]). `B` is the request body type
/// (`Full<Bytes>` by default; `tonic::body::Body` for a tonic generated client).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), proxyless::BoxError> {
/// let client = proxyless::Client::builder()
///     .discover(proxyless::discover::fixed(["127.0.0.1:8081", "127.0.0.1:8082"])?)
///     .build()?;
/// let rsp = client.get("http://users/profile").await?;
/// println!("{} from {:?}", rsp.status(), rsp.extensions().get::<proxyless::balance::ServedBy>());
/// # Ok(()) }
/// ```
pub struct Client<B = Full<Bytes>> {
    stack: Retry<Balance<EndpointClient<ReplayBody<B>>>>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("stack", &self.stack)
            .finish()
    }
}

impl Client {
    /// A builder with the defaults below; it needs a discovery source.
    ///
    /// | setting | default | precedent |
    /// |---|---|---|
    /// | [`connect_timeout`](ClientBuilder::connect_timeout) | 1 s | Linkerd's outbound connect timeout |
    /// | [`http2_only`](ClientBuilder::http2_only) | off (HTTP/1.1) | plaintext cannot negotiate h2c; gRPC needs it on |
    /// | [`http2_keep_alive`](ClientBuilder::http2_keep_alive) | 20 s interval, 20 s timeout, also while idle | hyper's keep-alive timeout; detects dead HTTP/2 connections |
    /// | [`pool_idle_timeout`](ClientBuilder::pool_idle_timeout) | 90 s, enforced by a timer | hyper-util (inert there without a pool timer) |
    /// | [`balance`](ClientBuilder::balance) | [`BalanceConfig::default`] | see there |
    /// | [`retry`](ClientBuilder::retry) | [`RetryPolicy::default`] | see there |
    pub fn builder() -> ClientBuilder<()> {
        ClientBuilder {
            discover: (),
            origin: None,
            balance: BalanceConfig::default(),
            retry: RetryPolicy::default(),
            #[cfg(feature = "tls")]
            tls: None,
            connect_timeout: Duration::from_secs(1),
            http2_only: false,
            http2_keep_alive: Some(Duration::from_secs(20)),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

impl<B> Client<B> {
    /// The endpoints with their loads and counters, the state of discovery, and the retry
    /// counters.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.stack.get_ref().snapshot();
        snapshot.retry = Some(self.stack.snapshot());
        snapshot
    }

    /// The balancer inside.
    pub fn balance(&self) -> &Balance<EndpointClient<ReplayBody<B>>> {
        self.stack.get_ref()
    }

    /// Waits until discovery has published at least `n` endpoints; see
    /// [`Balance::wait_for_endpoints`].
    pub async fn wait_for_endpoints(&self, n: usize) {
        self.balance().wait_for_endpoints(n).await;
    }
}

impl<B> Client<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends a request to the best endpoint.
    pub async fn request(&self, request: Request<B>) -> Result<Response<ClientBody>, BoxError> {
        self.clone().call(request).await
    }

    /// Sends a `GET` with an empty body.
    ///
    /// Accepts an absolute URI (`http://users/profile`, whose authority the backend sees) or a
    /// path (`/profile`, given the builder's origin).
    pub async fn get<U>(&self, uri: U) -> Result<Response<ClientBody>, BoxError>
    where
        U: TryInto<Uri>,
        U::Error: Into<http::Error>,
        B: Default,
    {
        let request = Request::get(uri).body(B::default())?;
        self.request(request).await
    }
}

impl<B> Service<Request<B>> for Client<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ClientBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Balance<EndpointClient<ReplayBody<B>>>, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.stack.call(request)
    }
}

/// Builds a [`Client`]; see [`Client::builder`] for the defaults.
#[derive(Debug)]
pub struct ClientBuilder<D> {
    discover: D,
    origin: Option<String>,
    balance: BalanceConfig,
    retry: RetryPolicy,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTls>,
    connect_timeout: Duration,
    http2_only: bool,
    http2_keep_alive: Option<Duration>,
    pool_idle_timeout: Duration,
}

impl<D> ClientBuilder<D> {
    /// Sets where the endpoints come from (required).
    pub fn discover<D2: Discover>(self, discover: D2) -> ClientBuilder<D2> {
        ClientBuilder {
            discover,
            origin: self.origin,
            balance: self.balance,
            retry: self.retry,
            #[cfg(feature = "tls")]
            tls: self.tls,
            connect_timeout: self.connect_timeout,
            http2_only: self.http2_only,
            http2_keep_alive: self.http2_keep_alive,
            pool_idle_timeout: self.pool_idle_timeout,
        }
    }

    /// Sets the logical origin (`http://users`) for requests that carry only a path, as tonic's
    /// generated clients send them. Requests with an absolute URI keep theirs.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Sets the balancer's settings.
    pub fn balance(mut self, config: BalanceConfig) -> Self {
        self.balance = config;
        self
    }

    /// Sets the retry policy (budget, backoff, replay); `max_attempts(1)` turns retries off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Uses mTLS with SPIFFE identities: with every endpoint that has an expected identity, or
    /// with all of them in strict mode (see [`ClientTls`](crate::tls::ClientTls)). The HTTP
    /// version is then negotiated by ALPN; the server's verified identity is in each response's
    /// extensions as a [`PeerIdentity`](crate::tls::PeerIdentity).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the TCP connect timeout per attempt (default 1 s; 1 ms to 1 h).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speaks HTTP/2 only (prior knowledge, h2c), as gRPC needs (default off: HTTP/1.1).
    pub fn http2_only(mut self, enabled: bool) -> Self {
        self.http2_only = enabled;
        self
    }

    /// Sets the HTTP/2 keep-alive ping interval, also used as the ping timeout (default 20 s;
    /// `None` turns pings off; at least 1 s).
    pub fn http2_keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.http2_keep_alive = interval;
        self
    }

    /// Sets how long an idle pooled connection is kept (default 90 s; up to 1 h).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }
}

impl<D: Discover> ClientBuilder<D> {
    /// Checks the settings and starts a client sending `Full<Bytes>` request bodies.
    ///
    /// Fails on an invalid setting or origin, or with [`BuildError::NoRuntime`] outside a tokio
    /// runtime (the client spawns its discovery driver).
    pub fn build(self) -> Result<Client, BuildError> {
        self.build_with_body()
    }

    /// Like [`build`](Self::build), for another request body type `B`, such as
    /// `tonic::body::Body` for a tonic generated client.
    pub fn build_with_body<B>(self) -> Result<Client<B>, BuildError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        check_duration(
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(1),
        )?;
        check_duration("pool_idle_timeout", self.pool_idle_timeout, Duration::ZERO)?;
        if let Some(interval) = self.http2_keep_alive {
            check_duration("http2_keep_alive", interval, Duration::from_secs(1))?;
        }
        let origin = self.origin.as_deref().map(Origin::parse).transpose()?;

        let mut builder = legacy::Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .http2_only(self.http2_only);
        if let Some(interval) = self.http2_keep_alive {
            builder
                .http2_keep_alive_interval(interval)
                .http2_keep_alive_timeout(interval)
                .http2_keep_alive_while_idle(true);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        let mut clients = EndpointClients::with_connector(builder, connector);
        if let Some(origin) = origin {
            clients = clients.origin(origin);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            clients = clients.tls(tls);
        }
        let balance = Balance::new(self.discover, clients, self.balance)?;
        Ok(Client {
            stack: RetryLayer::new(self.retry).layer(balance),
        })
    }
}
