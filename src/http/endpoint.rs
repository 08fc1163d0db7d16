//! Per-endpoint hyper-util clients.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{self, connect::HttpConnector};
use tower_service::Service;

use super::PinnedConnector;
use crate::BoxError;
use crate::balance::MakeEndpoint;
use crate::discover::Endpoint;
use crate::error::BuildError;

/// The scheme and authority a request is addressed to when its URI has none (tonic's generated
/// clients send path-only URIs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// Parses an origin such as `http://users` or `http://users.prod.svc:8080`.
    pub fn parse(origin: &str) -> Result<Self, BuildError> {
        let uri: Uri = origin
            .parse()
            .map_err(|e| BuildError::InvalidOrigin(format!("{origin:?}: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(BuildError::InvalidOrigin(format!(
                "{origin:?} needs a scheme and an authority, such as http://users"
            )));
        };
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err(BuildError::InvalidOrigin(format!(
                "{origin:?} has a path or query; an origin is only scheme and authority"
            )));
        }
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The logical authority (host and optional port).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// Makes one pooled hyper-util client per endpoint from your own
/// [`legacy::Builder`](hyper_util::client::legacy::Builder): give it to a
/// [`BalanceLayer`](crate::balance::BalanceLayer).
///
/// Each endpoint gets its own connection pool and a connector pinned to its address (see
/// [`PinnedConnector`]); the request's URI keeps the logical authority the caller wrote.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::{TokioExecutor, TokioTimer};
/// use proxyless::balance::BalanceLayer;
/// use proxyless::discover;
/// use proxyless::http::EndpointClients;
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), proxyless::BoxError> {
/// let mut builder = Client::builder(TokioExecutor::new());
/// builder
///     .pool_timer(TokioTimer::new())
///     .pool_idle_timeout(Duration::from_secs(30));
///
/// let svc = ServiceBuilder::new()
///     .layer(BalanceLayer::new(discover::fixed(["127.0.0.1:8081", "127.0.0.1:8082"])?))
///     .service(EndpointClients::<Full<Bytes>>::new(builder));
/// # let _ = svc; Ok(()) }
/// ```
pub struct EndpointClients<B, C = HttpConnector> {
    builder: legacy::Builder,
    connector: C,
    origin: Option<Origin>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTls>,
    _body: PhantomData<fn(B)>,
}

impl<B> EndpointClients<B, HttpConnector> {
    /// Per-endpoint clients from `builder`, dialing with a default [`HttpConnector`]
    /// (`TCP_NODELAY` on, no connect timeout: set one with [`EndpointClients::with_connector`]).
    pub fn new(builder: legacy::Builder) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self::with_connector(builder, connector)
    }
}

impl<B, C> EndpointClients<B, C> {
    /// Per-endpoint clients from `builder`, dialing through `connector` (pinned per endpoint).
    pub fn with_connector(builder: legacy::Builder, connector: C) -> Self {
        Self {
            builder,
            connector,
            origin: None,
            #[cfg(feature = "tls")]
            tls: None,
            _body: PhantomData,
        }
    }

    /// Uses mTLS with the endpoints that need it (see [`ClientTls`](crate::tls::ClientTls)).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the origin given to requests whose URI has no scheme and authority.
    ///
    /// Without one, such requests are addressed to the endpoint's own address.
    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }
}

impl<B, C: Clone> Clone for EndpointClients<B, C> {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            connector: self.connector.clone(),
            origin: self.origin.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
            _body: PhantomData,
        }
    }
}

impl<B, C: std::fmt::Debug> std::fmt::Debug for EndpointClients<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClients")
            .field("connector", &self.connector)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl<B, C> MakeEndpoint for EndpointClients<B, C>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Service<Uri> + Clone + Send + Sync + 'static,
    PinnedConnector<C>: legacy::connect::Connect,
{
    type Service = EndpointClient<B, C>;

    fn make_endpoint(&self, endpoint: &Endpoint) -> Self::Service {
        let connector = PinnedConnector::new(self.connector.clone(), endpoint.addr());
        #[cfg(feature = "tls")]
        let connector =
            connector.with_tls(self.tls.as_ref().and_then(|tls| tls.for_endpoint(endpoint)));
        let addr = endpoint.addr();
        // A socket address always makes a valid authority; the fallback is never reached.
        let origin = self.origin.clone().unwrap_or_else(|| Origin {
            scheme: Scheme::HTTP,
            authority: Authority::try_from(addr.to_string())
                .unwrap_or_else(|_| Authority::from_static("localhost")),
        });
        EndpointClient {
            inner: Arc::new(Inner {
                client: self.builder.build(connector),
                addr,
                origin,
            }),
        }
    }
}

/// One endpoint's pooled client: a hyper-util client whose connections all go to the endpoint.
///
/// Cloning it (the balancer does, once per request) costs one reference count.
pub struct EndpointClient<B, C = HttpConnector> {
    inner: Arc<Inner<B, C>>,
}

struct Inner<B, C> {
    client: legacy::Client<PinnedConnector<C>, B>,
    addr: SocketAddr,
    /// Given to path-only URIs: the configured origin, or else the endpoint's address.
    origin: Origin,
}

impl<B, C> Clone for EndpointClient<B, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B, C> std::fmt::Debug for EndpointClient<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("addr", &self.inner.addr)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

impl<B, C> EndpointClient<B, C> {
    /// The endpoint this client dials.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Gives a path-only URI the origin's (or else the endpoint's) scheme and authority.
    fn absolute(&self, uri: Uri) -> Result<Uri, http::Error> {
        if uri.authority().is_some() {
            return Ok(uri);
        }
        let mut parts = uri.into_parts();
        parts.scheme = Some(self.inner.origin.scheme.clone());
        parts.authority = Some(self.inner.origin.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        Ok(Uri::from_parts(parts)?)
    }
}

impl<B, C> Service<Request<B>> for EndpointClient<B, C>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Clone + Send + Sync + 'static,
    PinnedConnector<C>: legacy::connect::Connect,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready; it queues on its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        match self.absolute(parts.uri) {
            Ok(uri) => {
                parts.uri = uri;
                EndpointFuture::Sending(self.inner.client.request(Request::from_parts(parts, body)))
            }
            Err(e) => EndpointFuture::Invalid(Some(e)),
        }
    }
}

/// The future of an [`EndpointClient`] request.
#[derive(Debug)]
pub enum EndpointFuture {
    /// The request is with hyper-util.
    Sending(legacy::ResponseFuture),
    /// The request's URI could not be made absolute.
    Invalid(Option<http::Error>),
}

impl Future for EndpointFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            EndpointFuture::Sending(response) => Pin::new(response).poll(cx).map_err(Into::into),
            EndpointFuture::Invalid(error) => Poll::Ready(Err(error.take().map_or_else(
                || "endpoint future polled after completion".into(),
                Into::into,
            ))),
        }
    }
}
