//! The clients under test, each behind the same [`Sender`]: one request, its body read to the
//! end, its status returned.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use proxyless::balance::{Balance, BalanceConfig};
use proxyless::discover::{self, Endpoint, Pusher};
use proxyless::http::EndpointClients;
use proxyless::retry::RetryPolicy;
use proxyless::telemetry::Snapshot;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};

use crate::sidecar::{self, Sidecar};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type SendFuture = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;
/// Sends one request through a variant and reads its body to the end.
pub type Sender = Arc<dyn Fn() -> SendFuture + Send + Sync>;

/// Replaces a variant's endpoint set.
pub type SetEndpoints = Arc<dyn Fn(&[SocketAddr]) + Send + Sync>;

/// Longest wait for a balancer's discovery to publish every backend.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(10);

/// Every variant, in report order.
pub const ALL: [&str; 8] = [
    "raw",
    "round_robin",
    "tower_p2c",
    "proxyless_balance",
    "proxyless",
    "proxyless_decay_1s",
    "haproxy",
    "nginx",
];

/// Variants that only run where they answer a question: PeakEWMA with a 1 s decay instead of the
/// default 10 s, in the slow-backend scenarios.
pub const SLOW_ONLY: [&str; 1] = ["proxyless_decay_1s"];

/// The sidecar variants: skipped, and said so, where the proxy is not installed.
pub const SIDECARS: [&str; 2] = ["haproxy", "nginx"];

/// Variants whose endpoint set can change while they run (the churn scenario).
pub const DYNAMIC: [&str; 3] = ["tower_p2c", "proxyless_balance", "proxyless"];

/// HTTP version between the client and the backends (or the sidecar).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        })
    }
}

/// How every variant of a scenario is set up.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub protocol: Protocol,
    /// A per-attempt response timeout, where the variant has one (proxyless' retry policy,
    /// the sidecars' upstream timeout).
    pub per_try_timeout: Option<Duration>,
}

/// A client ready to send.
pub struct Variant {
    pub send: Sender,
    /// Replaces the endpoint set, for variants with discovery.
    pub set_endpoints: Option<SetEndpoints>,
    /// proxyless' own view of its endpoints.
    pub snapshot: Option<Box<dyn Fn() -> Snapshot + Send + Sync>>,
    /// The proxy process, for sidecar variants.
    pub sidecar: Option<Sidecar>,
}

impl Variant {
    /// A proxyless variant: its endpoints come from `pusher`, its state from `snapshot`.
    fn discovered(
        send: Sender,
        pusher: Pusher,
        snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
    ) -> Self {
        Self {
            send,
            set_endpoints: Some(Arc::new(move |addrs: &[SocketAddr]| {
                push_endpoints(&pusher, addrs)
            })),
            snapshot: Some(Box::new(snapshot)),
            sidecar: None,
        }
    }

    fn plain(send: Sender) -> Self {
        Self {
            send,
            set_endpoints: None,
            snapshot: None,
            sidecar: None,
        }
    }
}

/// Reads a response's body to its end and returns its status.
async fn drain<B>(response: Response<B>) -> Result<StatusCode, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let mut body = pin!(response.into_body());
    while let Some(frame) = body.frame().await {
        frame.map_err(Into::into)?;
    }
    Ok(status)
}

fn request(uri: Uri) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    request
}

fn legacy_builder(protocol: Protocol) -> legacy::Builder {
    let mut builder = legacy::Client::builder(TokioExecutor::new());
    builder.http2_only(protocol == Protocol::Http2);
    builder
}

fn legacy_client(protocol: Protocol) -> legacy::Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    legacy_builder(protocol).build(connector)
}

fn backend_uri(addr: SocketAddr) -> Uri {
    format!("http://{addr}/")
        .parse()
        .expect("a socket address makes a valid URI")
}

/// The raw hyper-util client, sending to one address.
fn direct(protocol: Protocol, addr: SocketAddr) -> Sender {
    let client = legacy_client(protocol);
    let uri = backend_uri(addr);
    Arc::new(move || {
        let future = client.request(request(uri.clone()));
        Box::pin(async move { drain(future.await?).await })
    })
}

/// Waits until discovery has published `n` endpoints, for at most [`DISCOVERY_DEADLINE`].
async fn wait_for_discovery(n: usize, published: impl Future<Output = ()>) -> Result<(), String> {
    tokio::time::timeout(DISCOVERY_DEADLINE, published)
        .await
        .map_err(|_| format!("discovery did not publish {n} endpoints in {DISCOVERY_DEADLINE:?}"))
}

/// One tower endpoint: a hyper-util client that sends to `addr` whatever the request's URI.
fn tower_endpoint(
    protocol: Protocol,
    addr: SocketAddr,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = legacy::Error,
    Future: Send,
> + Send
+ 'static {
    let uri = backend_uri(addr);
    legacy_client(protocol).map_request(move |mut request: Request<Full<Bytes>>| {
        *request.uri_mut() = uri.clone();
        request
    })
}

fn push_endpoints(pusher: &Pusher, addrs: &[SocketAddr]) {
    let endpoints = addrs.iter().copied().map(Endpoint::new).collect();
    if let Err(error) = pusher.set(endpoints) {
        eprintln!("load: discovery update refused: {error}");
    }
}

/// Builds the named variant over `addrs`. `Err` when it cannot run here (a sidecar that is not
/// installed), with the reason.
pub async fn build(
    name: &str,
    addrs: &[SocketAddr],
    settings: Settings,
) -> Result<Variant, String> {
    let protocol = settings.protocol;
    // The logical URI for balancers that pick the address themselves.
    let logical = Uri::from_static("http://backend/");
    match name {
        "raw" => Ok(Variant::plain(direct(protocol, addrs[0]))),
        "round_robin" => {
            let clients: Vec<_> = addrs
                .iter()
                .map(|&addr| (legacy_client(protocol), backend_uri(addr)))
                .collect();
            let next = std::sync::atomic::AtomicUsize::new(0);
            Ok(Variant::plain(Arc::new(move || {
                let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (client, uri) = &clients[turn % clients.len()];
                let future = client.request(request(uri.clone()));
                Box::pin(async move { drain(future.await?).await })
            })))
        }
        "tower_p2c" => {
            let (changes, receiver) = mpsc::unbounded_channel();
            let known = Mutex::new(HashSet::new());
            let set_endpoints = move |addrs: &[SocketAddr]| {
                let mut known = known.lock().expect("not poisoned");
                let wanted: HashSet<SocketAddr> = addrs.iter().copied().collect();
                for &gone in known.difference(&wanted) {
                    let _ = changes.send(Ok::<_, Infallible>(Change::Remove(gone)));
                }
                for &new in wanted.difference(&known) {
                    let _ = changes.send(Ok(Change::Insert(new, tower_endpoint(protocol, new))));
                }
                *known = wanted;
            };
            set_endpoints(addrs);
            // tower's own defaults in its examples: 30 ms default RTT, 10 s decay.
            let discover = PeakEwmaDiscover::new::<Request<Full<Bytes>>>(
                UnboundedReceiverStream::new(receiver),
                Duration::from_millis(30),
                Duration::from_secs(10),
                CompleteOnResponse::default(),
            );
            let balance = tower::balance::p2c::Balance::new(discover);
            // Shared the way tonic shares its balanced channel.
            let buffer = tower::buffer::Buffer::new(balance, 1024);
            let send: Sender = Arc::new(move || {
                let mut svc = buffer.clone();
                let request = request(logical.clone());
                Box::pin(async move {
                    let response = svc.ready().await?.call(request).await?;
                    drain(response).await
                })
            });
            Ok(Variant {
                send,
                set_endpoints: Some(Arc::new(set_endpoints)),
                snapshot: None,
                sidecar: None,
            })
        }
        "proxyless_balance" => {
            let (pusher, source) = discover::push();
            push_endpoints(&pusher, addrs);
            let clients = EndpointClients::<Full<Bytes>>::new(legacy_builder(protocol));
            let balance = Balance::new(source, clients, BalanceConfig::default())
                .map_err(|error| error.to_string())?;
            wait_for_discovery(addrs.len(), balance.wait_for_endpoints(addrs.len())).await?;
            let snapshot_of = balance.clone();
            let send: Sender = Arc::new(move || {
                let future = balance.clone().oneshot(request(logical.clone()));
                Box::pin(async move { drain(future.await?).await })
            });
            Ok(Variant::discovered(send, pusher, move || {
                snapshot_of.snapshot()
            }))
        }
        "proxyless" | "proxyless_decay_1s" => {
            let (pusher, source) = discover::push();
            push_endpoints(&pusher, addrs);
            let mut builder = proxyless::Client::builder()
                .discover(source)
                .http2_only(protocol == Protocol::Http2);
            if name == "proxyless_decay_1s" {
                let config = BalanceConfig::builder()
                    .decay(Duration::from_secs(1))
                    .build()
                    .map_err(|error| error.to_string())?;
                builder = builder.balance(config);
            }
            if let Some(timeout) = settings.per_try_timeout {
                let policy = RetryPolicy::builder()
                    .per_try_timeout(timeout)
                    .build()
                    .map_err(|error| error.to_string())?;
                builder = builder.retry(policy);
            }
            let client = builder.build().map_err(|error| error.to_string())?;
            wait_for_discovery(addrs.len(), client.wait_for_endpoints(addrs.len())).await?;
            let snapshot_of = client.clone();
            let send: Sender = Arc::new(move || {
                let client = client.clone();
                let request = request(logical.clone());
                Box::pin(async move { drain(client.request(request).await?).await })
            });
            Ok(Variant::discovered(send, pusher, move || {
                snapshot_of.snapshot()
            }))
        }
        "haproxy" | "nginx" => {
            let kind = if name == "haproxy" {
                sidecar::Kind::Haproxy
            } else {
                sidecar::Kind::Nginx
            };
            let options = sidecar::Options {
                http2: protocol == Protocol::Http2,
                per_try_timeout: settings.per_try_timeout,
                retries: true,
            };
            let proxy = Sidecar::start(kind, addrs, &options)?;
            Ok(Variant {
                send: direct(protocol, proxy.addr()),
                set_endpoints: None,
                snapshot: None,
                sidecar: Some(proxy),
            })
        }
        other => Err(format!("unknown variant {other}")),
    }
}
