//! Integration tests for `proxyless::retry`: the retry layer over the balancer over mock
//! per-endpoint services.
//!
//! Every stack is `RetryLayer → BalanceLayer → mock endpoints` (or the retry layer straight over a
//! single mock where the balancer plays no part). Everything timed runs under paused tokio time
//! and every random choice is seeded, so timings and counts are exact. Time only moves as the
//! subject of a test (backoffs, timeouts, deadlines, budget windows), never to wait for a task.
//!
//! Note on timings: tokio's timer has a resolution of one millisecond and rounds every sleep up to
//! the next whole millisecond, so a backoff drawn in `[0, 25 ms)` is observed in `[0, 25 ms]`.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use proxyless::BoxError;
use proxyless::balance::{Balance, BalanceConfig, BalanceLayer, Picker, ServedBy};
use proxyless::discover::{self, Endpoint};
use proxyless::error::{DeadlineExceeded, EndpointError, EndpointErrorKind, NoEndpoint};
use proxyless::retry::{
    Backoff, Budget, ReplayBody, Retry, RetryBudget, RetryLayer, RetryPolicy, RetryPolicyBuilder,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const SEED: u64 = 0x5eed_0002;
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

// ---------------------------------------------------------------------------------------------
// Mock endpoints
// ---------------------------------------------------------------------------------------------

/// What a mock endpoint saw of one attempt.
#[derive(Clone, Debug)]
struct Seen {
    endpoint: SocketAddr,
    /// The request's `x-id` header (0 when absent).
    id: u32,
    /// Which attempt of request `id` this is, as the backend counts them (from 1).
    attempt: u32,
    method: Method,
    /// When the attempt reached the endpoint.
    at: Instant,
    /// The `grpc-previous-rpc-attempts` header, if any.
    previous_attempts: Option<String>,
    /// The whole request body, when the endpoint read it ([`Read::All`]).
    body: Option<Bytes>,
}

/// How much of the request body an endpoint reads before acting.
#[derive(Clone, Copy, Debug)]
enum Read {
    /// Drops the body without polling it.
    Nothing,
    /// Reads it to the end.
    All,
    /// Reads one frame, answers, and only then drops the body.
    FirstFrame,
}

#[derive(Clone, Debug)]
enum Outcome {
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
    },
    /// Never answers.
    Never,
    /// Fails as a refused connection would.
    ConnectRefused,
}

/// What an endpoint does with one attempt.
#[derive(Clone, Debug)]
struct Act {
    read: Read,
    delay: Duration,
    outcome: Outcome,
}

impl Act {
    fn status(status: u16) -> Self {
        Act {
            read: Read::Nothing,
            delay: Duration::ZERO,
            outcome: Outcome::Respond {
                status,
                headers: Vec::new(),
            },
        }
    }

    fn ok() -> Self {
        Self::status(200)
    }

    /// A trailers-only gRPC answer: HTTP 200 with the status in the headers.
    fn grpc(code: u32) -> Self {
        Self::status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
    }

    fn never() -> Self {
        Act {
            outcome: Outcome::Never,
            ..Self::ok()
        }
    }

    fn connect_refused() -> Self {
        Act {
            outcome: Outcome::ConnectRefused,
            ..Self::ok()
        }
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        if let Outcome::Respond { headers, .. } = &mut self.outcome {
            headers.push((name, value.to_string()));
        }
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn reading(mut self, read: Read) -> Self {
        self.read = read;
        self
    }
}

type Plan = Box<dyn Fn(&Seen) -> Act + Send + Sync>;

/// The state shared by every mock endpoint of a test: the plan and the log of attempts.
struct Backend {
    plan: Plan,
    log: Mutex<Vec<Seen>>,
    per_id: Mutex<HashMap<u32, u32>>,
}

impl Backend {
    fn new(plan: impl Fn(&Seen) -> Act + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Backend {
            plan: Box::new(plan),
            log: Mutex::new(Vec::new()),
            per_id: Mutex::new(HashMap::new()),
        })
    }

    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The attempts of request `id`, in order.
    fn attempts_of(&self, id: u32) -> Vec<Seen> {
        self.log().into_iter().filter(|s| s.id == id).collect()
    }

    /// The `MakeEndpoint` factory: one mock per endpoint, all sharing this backend.
    fn make(self: &Arc<Self>) -> impl Fn(&Endpoint) -> Mock + Send + Sync + 'static {
        let backend = Arc::clone(self);
        move |endpoint: &Endpoint| Mock {
            addr: endpoint.addr(),
            backend: Arc::clone(&backend),
        }
    }
}

/// One mock endpoint's client.
#[derive(Clone)]
struct Mock {
    addr: SocketAddr,
    backend: Arc<Backend>,
}

type MockFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>>;

impl<B> Service<Request<ReplayBody<B>>> for Mock
where
    ReplayBody<B>: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<B>>) -> MockFuture {
        let backend = Arc::clone(&self.backend);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let id = header("x-id").map_or(0, |v| v.parse().unwrap());
        let attempt = {
            let mut per_id = backend.per_id.lock().unwrap();
            let n = per_id.entry(id).or_default();
            *n += 1;
            *n
        };
        let seen = Seen {
            endpoint: self.addr,
            id,
            attempt,
            method: request.method().clone(),
            at: Instant::now(),
            previous_attempts: header("grpc-previous-rpc-attempts"),
            body: None,
        };
        let act = (backend.plan)(&seen);
        let index = {
            let mut log = backend.log.lock().unwrap();
            log.push(seen);
            log.len() - 1
        };
        let mut body = Some(request.into_body());
        if let Read::Nothing = act.read {
            drop(body.take()); // never polled: the retry layer gets it back
        }
        Box::pin(async move {
            let _still_streaming = match (act.read, body) {
                (Read::All, Some(body)) => {
                    let bytes = body.collect().await?.to_bytes();
                    backend.log.lock().unwrap()[index].body = Some(bytes);
                    None
                }
                (Read::FirstFrame, Some(mut body)) => {
                    body.frame().await.expect("a first frame")?;
                    Some(body) // dropped only once the response is out
                }
                _ => None,
            };
            if !act.delay.is_zero() {
                tokio::time::sleep(act.delay).await;
            }
            match act.outcome {
                Outcome::Never => std::future::pending().await,
                Outcome::ConnectRefused => {
                    Err(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)) as BoxError)
                }
                Outcome::Respond { status, headers } => {
                    let mut response = Response::builder().status(status);
                    for (name, value) in headers {
                        response = response.header(name, value);
                    }
                    Ok(response.body(Full::default()).unwrap())
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Stacks and requests
// ---------------------------------------------------------------------------------------------

type Stack = Retry<Balance<Mock>>;

fn policy() -> RetryPolicyBuilder {
    RetryPolicy::builder().seed(SEED)
}

fn balance_config(picker: Picker) -> BalanceConfig {
    BalanceConfig::builder()
        .picker(picker)
        .seed(1)
        .build()
        .unwrap()
}

/// `Retry → Balance(P2C PeakEWMA) → mocks` over endpoints `127.0.0.1:{ports}`.
async fn stack(policy: RetryPolicy, ports: &[u16], backend: &Arc<Backend>) -> Stack {
    stack_with(policy, ports, backend, balance_config(Picker::P2cPeakEwma)).await
}

async fn stack_with(
    policy: RetryPolicy,
    ports: &[u16],
    backend: &Arc<Backend>,
    config: BalanceConfig,
) -> Stack {
    let discover = discover::fixed(ports.iter().map(|&p| addr(p))).unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(BalanceLayer::with_config(discover, config))
        .service(backend.make());
    // Let the discovery driver publish the table (yields only, time stands still).
    let before = Instant::now();
    for _ in 0..100 {
        if svc.get_ref().snapshot().endpoints.len() == ports.len() {
            assert_eq!(Instant::now(), before);
            return svc;
        }
        tokio::task::yield_now().await;
    }
    panic!("the balancer never published {ports:?}");
}

fn request(method: Method, id: u32, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://svc.test/resource")
        .header("x-id", id)
        .body(Full::new(body.into()))
        .unwrap()
}

fn get(id: u32) -> Request<Full<Bytes>> {
    request(Method::GET, id, Bytes::new())
}

/// A unary gRPC call: POST, `content-type: application/grpc`, one length-prefixed message.
fn grpc_call(id: u32) -> Request<Full<Bytes>> {
    let mut request = request(Method::POST, id, &b"\0\0\0\0\x02hi"[..]);
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    request
}

async fn send<S, B>(svc: &S, request: Request<B>) -> Result<S::Response, BoxError>
where
    S: Service<Request<B>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(request).await
}

fn served_by<T>(response: &Response<T>) -> SocketAddr {
    response
        .extensions()
        .get::<ServedBy>()
        .expect("a balanced response carries ServedBy")
        .0
}

fn endpoints(seen: &[Seen]) -> Vec<SocketAddr> {
    seen.iter().map(|s| s.endpoint).collect()
}

/// Time between consecutive attempts of one request, as the backend saw them.
fn gaps(seen: &[Seen]) -> Vec<Duration> {
    seen.windows(2).map(|w| w[1].at - w[0].at).collect()
}

type FrameResult = Result<Frame<Bytes>, BoxError>;
type PollFrames = Box<dyn FnMut(&mut Context<'_>) -> Poll<Option<FrameResult>> + Send>;

/// A body whose frames come from a channel; it ends when the sender is dropped.
type ChannelBody = StreamBody<futures_util::stream::PollFn<PollFrames>>;

fn channel_body() -> (tokio::sync::mpsc::UnboundedSender<FrameResult>, ChannelBody) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poll: PollFrames = Box::new(move |cx| rx.poll_recv(cx));
    (tx, StreamBody::new(futures_util::stream::poll_fn(poll)))
}

fn data(bytes: &[u8]) -> FrameResult {
    Ok(Frame::data(Bytes::copy_from_slice(bytes)))
}

// ---------------------------------------------------------------------------------------------
// 1. Endpoint avoidance
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_retried_503_lands_on_the_other_endpoint() {
    // Whichever endpoint gets a request first answers 503; any later attempt succeeds.
    let backend = Backend::new(|seen| {
        if seen.attempt == 1 {
            Act::status(503)
        } else {
            Act::ok()
        }
    });
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;

    let mut first_endpoints = BTreeSet::new();
    for id in 1..=20 {
        let response = send(&svc, get(id)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {id}");
        let seen = backend.attempts_of(id);
        assert_eq!(seen.len(), 2, "request {id}: {seen:?}");
        assert_ne!(seen[0].endpoint, seen[1].endpoint, "request {id}");
        assert_eq!(served_by(&response), seen[1].endpoint, "request {id}");
        assert!(
            seen.iter().all(|s| s.previous_attempts.is_none()),
            "not gRPC"
        );
        first_endpoints.insert(seen[0].endpoint);
    }
    // Both endpoints failed a first attempt, and each failure went to the other one.
    assert_eq!(first_endpoints, BTreeSet::from([addr(1), addr(2)]));

    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 20);
    assert_eq!(snapshot.retries, 20);
    assert_eq!(
        (
            snapshot.budget_denied,
            snapshot.exhausted,
            snapshot.not_replayable
        ),
        (0, 0, 0)
    );
    // The balancer charged each endpoint exactly the failures the backend served.
    let balance = svc.get_ref().snapshot();
    for port in [1, 2] {
        let firsts = backend
            .log()
            .iter()
            .filter(|s| s.attempt == 1 && s.endpoint == addr(port))
            .count() as u64;
        let endpoint = balance.endpoint(addr(port)).unwrap();
        assert_eq!(endpoint.failures, firsts, "endpoint {port}");
        assert_eq!(
            endpoint.requests, 20,
            "endpoint {port}: 40 attempts over two"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn three_attempts_visit_three_distinct_endpoints() {
    // :1 and :2 always fail; :3 is healthy. Random picks, so the first attempt is anywhere.
    let backend = Backend::new(|seen| {
        if seen.endpoint == addr(3) {
            Act::ok()
        } else {
            Act::status(503)
        }
    });
    let svc = stack_with(
        policy().build().unwrap(),
        &[1, 2, 3],
        &backend,
        balance_config(Picker::Random),
    )
    .await;

    let mut by_attempts = [0usize; 4];
    for id in 1..=30 {
        let response = send(&svc, get(id)).await.unwrap();
        // Three attempts that never revisit an endpoint always reach the healthy one.
        assert_eq!(response.status(), StatusCode::OK, "request {id}");
        assert_eq!(served_by(&response), addr(3));
        let seen = backend.attempts_of(id);
        let visited = endpoints(&seen);
        let distinct: BTreeSet<_> = visited.iter().copied().collect();
        assert_eq!(distinct.len(), visited.len(), "request {id}: {visited:?}");
        assert_eq!(visited.last(), Some(&addr(3)));
        by_attempts[seen.len()] += 1;
    }
    assert!(
        by_attempts[3] > 0,
        "some request took three attempts: {by_attempts:?}"
    );
    assert!(by_attempts[1] > 0 && by_attempts[2] > 0, "{by_attempts:?}");
    let retries = (by_attempts[2] + 2 * by_attempts[3]) as u64;
    let snapshot = svc.snapshot();
    assert_eq!((snapshot.requests, snapshot.retries), (30, retries));
    assert_eq!(backend.log().len() as u64, 30 + retries);
}

// ---------------------------------------------------------------------------------------------
// 2. Backoff through the layer
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn default_backoff_windows_are_25_then_50_ms_with_full_jitter() {
    // Each attempt takes 10 ms to fail.
    const TAKES: Duration = Duration::from_millis(10);
    let backend = Backend::new(|_| Act::status(503).after(TAKES));
    let svc = stack(policy().build().unwrap(), &[1], &backend).await;

    let (mut first, mut second) = (Vec::new(), Vec::new());
    for id in 1..=50 {
        let start = Instant::now();
        let response = send(&svc, get(id)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let seen = backend.attempts_of(id);
        assert_eq!(seen.len(), 3, "request {id}");
        assert_eq!(seen[0].at, start);
        // The backoff runs from the end of one attempt to the start of the next.
        let waits: Vec<_> = gaps(&seen).into_iter().map(|g| g - TAKES).collect();
        first.push(waits[0]);
        second.push(waits[1]);
        assert_eq!(Instant::now(), seen[2].at + TAKES, "the last 503 at once");
    }
    // [0, 25 ms) and [0, 50 ms), observed to the millisecond above.
    assert!(first.iter().all(|d| *d <= 25 * MS), "{first:?}");
    assert!(second.iter().all(|d| *d <= 50 * MS), "{second:?}");
    // Full jitter: both ends of each window are used, and the second window is wider.
    assert!(first.iter().any(|d| *d <= 5 * MS), "{first:?}");
    assert!(first.iter().any(|d| *d >= 20 * MS), "{first:?}");
    assert!(second.iter().any(|d| *d <= 10 * MS), "{second:?}");
    assert!(second.iter().any(|d| *d > 35 * MS), "{second:?}");

    let snapshot = svc.snapshot();
    assert_eq!(snapshot.retries, 100);
    assert_eq!(snapshot.exhausted, 50);
    assert_eq!(
        snapshot.budget_denied, 0,
        "110 retries allowed: 100 + 20 % of 50"
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_backoff_windows_are_within_twenty_percent() {
    let backend = Backend::new(|_| Act::status(503));
    let policy = policy()
        .backoff(Backoff::grpc(100 * MS, 2.0, SEC))
        .build()
        .unwrap();
    let svc = stack(policy, &[1], &backend).await;

    let (mut first, mut second) = (Vec::new(), Vec::new());
    for id in 1..=20 {
        send(&svc, get(id)).await.unwrap();
        let seen = backend.attempts_of(id);
        assert_eq!(seen.len(), 3, "request {id}");
        let g = gaps(&seen);
        first.push(g[0]);
        second.push(g[1]);
    }
    assert!(
        first.iter().all(|d| (80 * MS..=120 * MS).contains(d)),
        "{first:?}"
    );
    assert!(
        second.iter().all(|d| (160 * MS..=240 * MS).contains(d)),
        "{second:?}"
    );
    // Jittered, not constant.
    assert!(first.iter().any(|d| *d < 95 * MS) && first.iter().any(|d| *d > 105 * MS));
}

// ---------------------------------------------------------------------------------------------
// 3. Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_sets_the_wait_and_a_long_one_is_refused() {
    let backend = Backend::new(|seen| match (seen.id, seen.attempt) {
        (1, 1) => Act::status(503).header("retry-after", 2),
        (2, _) => Act::status(503).header("retry-after", 60),
        (3, 1) => Act::status(503).header("retry-after", 10),
        _ => Act::ok(),
    });
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;

    // Retry-After: 2 → the retry comes exactly 2 s later, instead of the backoff.
    let start = Instant::now();
    let response = send(&svc, get(1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), 2 * SEC);
    assert_eq!(gaps(&backend.attempts_of(1)), [2 * SEC]);

    // Retry-After: 60 is over the 10 s maximum: the 503 comes back at once, not retried.
    let start = Instant::now();
    let response = send(&svc, get(2)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "60");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(backend.attempts_of(2).len(), 1);

    // Exactly the maximum is still honoured.
    let start = Instant::now();
    let response = send(&svc, get(3)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), 10 * SEC);

    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 3);
    assert_eq!(snapshot.retries, 2);
    assert_eq!(snapshot.refused_by_server, 1);
    assert_eq!(snapshot.exhausted, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. gRPC
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_is_retried_with_pushback_and_attempt_headers() {
    let backend = Backend::new(|seen| match (seen.id, seen.attempt) {
        (1, _) => Act::grpc(14),
        (2, 1) => Act::grpc(14).header("grpc-retry-pushback-ms", 300),
        (3, _) => Act::grpc(14).header("grpc-retry-pushback-ms", -1),
        (4, _) => Act::grpc(13), // INTERNAL: not a retryable code
        _ => Act::ok().header("content-type", "application/grpc"),
    });
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;

    // gRPC calls are POSTs, which the default methods leave out: a retryable grpc-status is
    // retried whatever the method. UNAVAILABLE on every attempt: three attempts, the last
    // answer returned.
    let response = send(&svc, grpc_call(1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
    let seen = backend.attempts_of(1);
    assert!(seen.iter().all(|s| s.method == Method::POST));
    let previous: Vec<_> = seen.iter().map(|s| s.previous_attempts.clone()).collect();
    assert_eq!(previous, [None, Some("1".into()), Some("2".into())]);
    assert_eq!(svc.snapshot().exhausted, 1);

    // Pushback 300 ms: the retry waits exactly that long, then succeeds.
    let start = Instant::now();
    let response = send(&svc, grpc_call(2)).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    assert_eq!(start.elapsed(), 300 * MS);
    let seen = backend.attempts_of(2);
    assert_eq!(gaps(&seen), [300 * MS]);
    assert_eq!(seen[1].previous_attempts.as_deref(), Some("1"));

    // Pushback -1: the server says stop; one attempt, counted as refused.
    let start = Instant::now();
    let response = send(&svc, grpc_call(3)).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(backend.attempts_of(3).len(), 1);

    // INTERNAL is not in the retryable codes.
    let response = send(&svc, grpc_call(4)).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "13");
    assert_eq!(backend.attempts_of(4).len(), 1);

    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 4);
    assert_eq!(snapshot.retries, 3);
    assert_eq!(snapshot.refused_by_server, 1);
    assert_eq!(snapshot.exhausted, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Which methods are retried
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn method_rules() {
    let backend = Backend::new(|seen| match (seen.id, seen.attempt) {
        (1, _) => Act::status(503),
        (2 | 6, 1) => Act::connect_refused(),
        (3..=5, 1) => Act::status(503),
        _ => Act::ok(),
    });
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;

    // POST answered 503: not idempotent, not retried.
    let response = send(&svc, request(Method::POST, 1, "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.attempts_of(1).len(), 1);

    // POST whose connection failed: never sent, so retried, on the other endpoint.
    let response = send(&svc, request(Method::POST, 2, "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.attempts_of(2);
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].endpoint, seen[1].endpoint);

    // PUT answered 503: idempotent, retried.
    let response = send(&svc, request(Method::PUT, 3, "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.attempts_of(3).len(), 2);
    assert_eq!(
        (svc.snapshot().requests, svc.snapshot().retries),
        (3, 2),
        "POST 503 not retried; POST connect error and PUT 503 retried once each"
    );

    // `methods([POST])` replaces the list: POST is retried, GET no longer is.
    let post_only = policy().methods([Method::POST]).build().unwrap();
    let svc = stack(post_only, &[1, 2], &backend).await;
    let response = send(&svc, request(Method::POST, 4, "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.attempts_of(4).len(), 2);
    let response = send(&svc, get(5)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.attempts_of(5).len(), 1);

    // What the retry layer saw of the connect failure: an EndpointError of kind Connect.
    let once = policy().max_attempts(1).build().unwrap();
    let svc = stack(once, &[1], &backend).await;
    let error = send(&svc, request(Method::POST, 6, "x")).await.unwrap_err();
    let error = error
        .downcast_ref::<EndpointError>()
        .unwrap_or_else(|| panic!("expected EndpointError, got {error:?}"));
    assert_eq!(error.kind(), EndpointErrorKind::Connect);
    assert_eq!(error.endpoint(), addr(1));
}

// ---------------------------------------------------------------------------------------------
// 6. NoEndpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn no_endpoint_is_never_retried() {
    let (_pusher, discover) = discover::push();
    let backend = Backend::new(|_| Act::ok());
    let config = BalanceConfig::builder()
        .no_endpoint_timeout(SEC)
        .seed(1)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy().build().unwrap()))
        .layer(BalanceLayer::with_config(discover, config))
        .service(backend.make());

    let start = Instant::now();
    let error = send(&svc, get(1)).await.unwrap_err();
    assert_eq!(start.elapsed(), SEC, "one wait, not three");
    let no_endpoint = error
        .downcast_ref::<NoEndpoint>()
        .unwrap_or_else(|| panic!("expected NoEndpoint, got {error:?}"));
    assert_eq!(no_endpoint.waited(), SEC);
    assert_eq!(no_endpoint.known_endpoints(), 0);
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 1);
    assert_eq!(snapshot.retries, 0);
    assert_eq!((snapshot.budget_denied, snapshot.exhausted), (0, 0));
    assert!(backend.log().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 7. The budget over a long run
// ---------------------------------------------------------------------------------------------

/// Sends `per_second` GETs at the start of each of `seconds` seconds (all of a batch at once)
/// through a retry layer over a backend that always answers 503. Returns the layer's snapshot
/// and the attempts the backend saw in each second.
async fn failing_run(
    policy: RetryPolicy,
    seconds: usize,
    per_second: usize,
) -> (proxyless::telemetry::RetrySnapshot, Vec<u64>) {
    let start = Instant::now();
    let attempts: Arc<Vec<AtomicU64>> = Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let counts = Arc::clone(&attempts);
    let backend = service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
        let second = (Instant::now() - start).as_secs() as usize;
        counts[second].fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok::<_, Infallible>(
            Response::builder()
                .status(503)
                .body(Full::<Bytes>::default())
                .unwrap(),
        ))
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(backend);

    for second in 0..seconds {
        tokio::time::sleep_until(start + SEC * second as u32).await;
        let batch = (0..per_second).map(|_| svc.clone().oneshot(Request::new(Full::default())));
        for response in futures_util::future::join_all(batch).await {
            assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        // Every request of the batch finished within its second (backoffs ≤ 75 ms).
        assert!(Instant::now() < start + SEC * (second as u32 + 1));
    }
    let attempts = attempts.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    (svc.snapshot(), attempts)
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_bounds_retries_over_a_long_run() {
    // 10,000 requests, 100 per second for 100 s, every attempt a 503; 20 % + 10/s over 10 s.
    let (snapshot, attempts) = failing_run(policy().build().unwrap(), 100, 100).await;
    let requests = 10_000u64;
    let retries_per_second: Vec<u64> = attempts.iter().map(|a| a - 100).collect();
    let total_attempts: u64 = attempts.iter().sum();
    assert_eq!(snapshot.requests, requests);
    assert_eq!(total_attempts, requests + snapshot.retries);

    // Finagle's bound holds over every window of one TTL (10 s, 1,000 requests):
    // retries ≤ 20 % of the window's requests + the reserve of 10/s × 10 s.
    for window in retries_per_second.windows(10) {
        let in_window: u64 = window.iter().sum();
        assert!(in_window <= 200 + 100, "{window:?}");
    }
    // Exactly: each window's first second spends the refilled reserve (100) and its 20
    // deposits; each following second spends just its own 20 deposits.
    for (second, retries) in retries_per_second.iter().enumerate() {
        let expected = if second % 10 == 0 { 120 } else { 20 };
        assert_eq!(*retries, expected, "second {second}");
    }
    // Over the whole run: 20 % of the requests + 10 retries per second of the run.
    assert_eq!(snapshot.retries, 3_000);
    assert!(snapshot.retries <= requests / 5 + 10 * 100);
    assert!(
        snapshot.retries >= requests / 5,
        "the ratio is used, not starved"
    );
    // Backend load: 1.3 = 1.2 + the floor (10/s over 100 requests/s).
    let load = total_attempts as f64 / requests as f64;
    assert_eq!(load, 1.3);
    assert!(load <= 1.2 + 10.0 / 100.0 + 1e-9);
    // Each request ended either out of attempts (20 per window) or refused by the budget.
    assert_eq!(snapshot.exhausted, 200);
    assert_eq!(snapshot.budget_denied, 9_800);
    assert_eq!(snapshot.exhausted + snapshot.budget_denied, requests);
    assert_eq!(snapshot.retry_ratio(), 0.3);
}

#[tokio::test(start_paused = true)]
async fn a_thirty_percent_budget_allows_exactly_thirty_percent() {
    // No floor: only the ratio. tower's TpsBudget would allow 33 % here (tower#857).
    let policy = policy()
        .budget(Budget::Tps {
            ttl: 10 * SEC,
            min_per_sec: 0,
            ratio: 0.3,
        })
        .build()
        .unwrap();
    // 20 s, so that the first window's deposits and withdrawals expire along the way.
    let (snapshot, attempts) = failing_run(policy, 20, 100).await;
    assert_eq!(snapshot.requests, 2_000);
    assert_eq!(snapshot.retries, 600);
    assert_eq!(snapshot.retry_ratio(), 0.3);
    assert!(attempts.iter().all(|a| *a == 130), "{attempts:?}");
    assert_eq!(snapshot.budget_denied, 2_000);
    assert_eq!(snapshot.exhausted, 0);
}

// ---------------------------------------------------------------------------------------------
// 8. gRPC retry throttling
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn grpc_throttling_follows_grfc_a6() {
    // Per request, the outcome of each attempt: F = UNAVAILABLE, S = OK.
    const PLANS: [&str; 8] = ["FFF", "S", "FFF", "S", "S", "FS", "FFF", "FFF"];
    let backend = Backend::new(|seen| {
        let plan = PLANS[seen.id as usize - 1].as_bytes();
        match plan[seen.attempt as usize - 1] {
            b'F' => Act::grpc(14),
            _ => Act::ok().header("content-type", "application/grpc"),
        }
    });
    let policy = policy()
        .budget(Budget::GrpcThrottle {
            max_tokens: 4.0,
            token_ratio: 1.6,
        })
        .build()
        .unwrap();
    let svc = stack(policy, &[1, 2], &backend).await;

    // Tokens start at 4; a failure takes 1, a success gives 1.6 (at most 4); a retry is allowed
    // while more than 2 remain.
    //   1 FFF: 4→3 retry, 3→2 throttled                 2 attempts
    //   2 S:   2→3.6                                     1
    //   3 FFF: 3.6→2.6 retry, 2.6→1.6 throttled          2
    //   4 S:   1.6→3.2                                   1
    //   5 S:   3.2→4 (capped)                            1
    //   6 FS:  4→3 retry, success 3→4                    2
    //   7 FFF: 4→3 retry, 3→2 throttled                  2
    //   8 FFF: 2→1 throttled                             1
    let expected_attempts = [2, 1, 2, 1, 1, 2, 2, 1];
    let expected_tokens = [2.0, 3.6, 1.6, 3.2, 4.0, 4.0, 2.0, 1.0];
    for id in 1..=8u32 {
        let response = send(&svc, grpc_call(id)).await.unwrap();
        let i = id as usize - 1;
        let failed = response.headers().get("grpc-status").is_some();
        assert_eq!(failed, PLANS[i] != "S" && PLANS[i] != "FS", "request {id}");
        assert_eq!(
            backend.attempts_of(id).len(),
            expected_attempts[i],
            "request {id}"
        );
        let tokens = svc.snapshot().budget_available;
        assert!(
            (tokens - expected_tokens[i]).abs() < 1e-9,
            "request {id}: {tokens} tokens"
        );
    }
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.retries, 4, "requests 1, 3, 6 and 7");
    assert_eq!(snapshot.budget_denied, 4, "requests 1, 3, 7 and 8");
    assert_eq!(snapshot.exhausted, 0);
}

// ---------------------------------------------------------------------------------------------
// 9. Per-try timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_the_request_to_another_endpoint() {
    // :1 never answers, :2 answers at once. Round robin: the first pick is :1.
    let backend = Backend::new(|seen| {
        if seen.endpoint == addr(1) {
            Act::never()
        } else {
            Act::ok()
        }
    });
    let policy = policy().per_try_timeout(100 * MS).build().unwrap();
    let svc = stack_with(
        policy,
        &[1, 2],
        &backend,
        balance_config(Picker::RoundRobin),
    )
    .await;

    let start = Instant::now();
    let response = send(&svc, get(1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), addr(2));
    let seen = backend.attempts_of(1);
    assert_eq!(endpoints(&seen), [addr(1), addr(2)]);
    // Timed out at exactly 100 ms, then waited the first backoff, then answered at once.
    let backoff = seen[1].at - start - 100 * MS;
    assert!(backoff <= 25 * MS, "{backoff:?}");
    assert_eq!(start.elapsed(), 100 * MS + backoff);
    let balance = svc.get_ref().snapshot();
    let slow = balance.endpoint(addr(1)).unwrap();
    assert_eq!((slow.requests, slow.failures), (1, 1));
    assert_eq!(slow.in_flight, 0, "the timed-out attempt was dropped");
    let fast = balance.endpoint(addr(2)).unwrap();
    assert_eq!((fast.requests, fast.failures), (1, 0));

    // A retry takes no round-robin turn, so the next turn is :2's; take it so that the POST
    // gets :1.
    let response = send(&svc, get(3)).await.unwrap();
    assert_eq!(served_by(&response), addr(2));

    // A POST that times out is not retried: the error names the endpoint.
    let start = Instant::now();
    let error = send(&svc, request(Method::POST, 2, "x")).await.unwrap_err();
    assert_eq!(start.elapsed(), 100 * MS);
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .unwrap_or_else(|| panic!("expected EndpointError, got {error:?}"));
    assert_eq!(endpoint_error.kind(), EndpointErrorKind::Timeout);
    assert_eq!(endpoint_error.endpoint(), addr(1));
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    assert_eq!(backend.attempts_of(2).len(), 1);

    let snapshot = svc.snapshot();
    assert_eq!((snapshot.requests, snapshot.retries), (3, 1));
    assert_eq!(
        svc.get_ref().snapshot().endpoint(addr(1)).unwrap().failures,
        2
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Overall deadline
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_deadline_ends_the_request_by_250_ms() {
    // Every attempt is a 503 after 100 ms. Attempt 2 starts at 100 ms + b1 (b1 < 25 ms) and
    // fails at 200 ms + b1. Then either the next backoff b2 would cross 250 ms, and that 503 is
    // returned at once, or attempt 3 starts before 250 ms and the deadline cuts it short.
    // Which one happens is fixed by the seed.
    #[derive(Debug, PartialEq)]
    enum Ends {
        LastResponse,
        Deadline,
    }
    for (seed, expected) in [(1, Ends::LastResponse), (3, Ends::Deadline)] {
        let backend = Backend::new(|_| Act::status(503).after(100 * MS));
        let policy = RetryPolicy::builder()
            .seed(seed)
            .deadline(250 * MS)
            .build()
            .unwrap();
        let svc = stack(policy, &[1], &backend).await;

        let start = Instant::now();
        let result = send(&svc, get(1)).await;
        let seen = backend.attempts_of(1);
        let ends = match result {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(seen.len(), 2, "seed {seed}");
                assert_eq!(Instant::now(), seen[1].at + 100 * MS, "at once");
                Ends::LastResponse
            }
            Err(error) => {
                let exceeded = error
                    .downcast_ref::<DeadlineExceeded>()
                    .unwrap_or_else(|| panic!("expected DeadlineExceeded, got {error:?}"));
                assert_eq!(exceeded.attempts(), 3);
                assert_eq!(exceeded.deadline(), 250 * MS);
                assert_eq!(exceeded.last_endpoint(), Some(addr(1)));
                assert_eq!(seen.len(), 3, "seed {seed}");
                assert!(seen[2].at < start + 250 * MS);
                assert_eq!(start.elapsed(), 250 * MS);
                Ends::Deadline
            }
        };
        assert_eq!(ends, expected, "seed {seed}: attempts at {seen:?}");
        assert!(start.elapsed() <= 250 * MS);
        let b1 = seen[1].at - start - 100 * MS;
        assert!(b1 <= 25 * MS, "{b1:?}");
    }

    // A backend that never answers: DeadlineExceeded at exactly 250 ms, during attempt 1.
    let backend = Backend::new(|_| Act::never());
    let policy = policy().deadline(250 * MS).build().unwrap();
    let svc = stack(policy, &[1], &backend).await;
    let start = Instant::now();
    let error = send(&svc, get(1)).await.unwrap_err();
    assert_eq!(start.elapsed(), 250 * MS);
    let exceeded = error
        .downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("expected DeadlineExceeded, got {error:?}"));
    assert_eq!(exceeded.attempts(), 1);
    assert_eq!(exceeded.last_endpoint(), None, "no attempt finished");
    assert!(error.to_string().contains("250ms"), "{error}");
    assert_eq!(backend.log().len(), 1);
    assert_eq!(svc.snapshot().retries, 0);
}

// ---------------------------------------------------------------------------------------------
// 11. Body replay
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_retried_post_sends_byte_identical_bodies() {
    let backend = Backend::new(|seen| {
        let act = if seen.attempt < 3 {
            Act::status(503)
        } else {
            Act::ok()
        };
        act.reading(Read::All)
    });
    let policy = policy().methods([Method::POST]).build().unwrap();
    let svc = stack(policy, &[1, 2, 3], &backend).await;

    let payload = Bytes::from_static(b"{\"order\": 42, \"items\": [1, 2, 3]}");
    let response = send(&svc, request(Method::POST, 1, payload.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.attempts_of(1);
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.body.as_ref(), Some(&payload), "attempt {}", s.attempt);
    }
    assert_eq!(svc.snapshot().retries, 2);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_over_the_replay_cap_is_sent_once() {
    let backend = Backend::new(|_| Act::status(503).reading(Read::All));
    let policy = policy()
        .methods([Method::POST])
        .replay_cap(16)
        .build()
        .unwrap();
    let svc = stack(policy, &[1, 2], &backend).await;

    let (tx, body) = channel_body();
    tx.send(data(b"0123456789")).unwrap();
    tx.send(data(b"abcdefghij")).unwrap();
    drop(tx); // 20 bytes, then the end
    let request = Request::post("http://svc.test/upload")
        .header("x-id", 1)
        .body(body)
        .unwrap();
    let response = send(&svc, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = backend.attempts_of(1);
    assert_eq!(seen.len(), 1, "not retried");
    assert_eq!(
        seen[0].body.as_deref(),
        Some(&b"0123456789abcdefghij"[..]),
        "the one attempt still sent everything"
    );
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.not_replayable, 1);
    assert_eq!(snapshot.retries, 0);
    assert_eq!(snapshot.budget_denied, 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_streaming_when_the_503_arrives_is_not_retried() {
    // The endpoint reads the first chunk and answers before the body has ended.
    let backend = Backend::new(|_| Act::status(503).reading(Read::FirstFrame));
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;

    let (tx, body) = channel_body();
    tx.send(data(b"part one")).unwrap();
    let request = Request::put("http://svc.test/upload")
        .header("x-id", 1)
        .body(body)
        .unwrap();
    let response = send(&svc, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.attempts_of(1).len(), 1);
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.not_replayable, 1);
    assert_eq!(snapshot.retries, 0);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_never_polled_large_body_is_retried_whole_after_a_connect_error() {
    let backend = Backend::new(|seen| {
        if seen.attempt == 1 {
            Act::connect_refused()
        } else {
            Act::ok().reading(Read::All)
        }
    });
    // Default methods: a POST, retried only because it was never sent.
    let policy = policy().replay_cap(16).build().unwrap();
    let svc = stack(policy, &[1, 2], &backend).await;

    let payload: Bytes = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let response = send(&svc, request(Method::POST, 1, payload.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.attempts_of(1);
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].endpoint, seen[1].endpoint);
    assert_eq!(seen[1].body.as_ref(), Some(&payload), "arrives whole");
    let snapshot = svc.snapshot();
    assert_eq!((snapshot.retries, snapshot.not_replayable), (1, 0));
}

// ---------------------------------------------------------------------------------------------
// 12. Attempt limits and counters
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_attempts_one_never_retries() {
    let backend = Backend::new(|_| Act::status(503));
    let policy = policy().max_attempts(1).build().unwrap();
    let svc = stack(policy, &[1, 2], &backend).await;
    for id in 1..=10 {
        let response = send(&svc, get(id)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(backend.log().len(), 10);
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 10);
    assert_eq!(snapshot.retries, 0);
    assert_eq!(snapshot.exhausted, 10, "each used its only attempt");
    assert_eq!(snapshot.budget_denied, 0);
    assert_eq!(snapshot.retry_ratio(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn the_counters_add_up() {
    // Request `id` fails its first `id % 4` attempts: 0, 1 or 2 retries, or out of attempts.
    let backend = Backend::new(|seen| {
        if seen.attempt <= seen.id % 4 {
            Act::status(503)
        } else {
            Act::ok()
        }
    });
    let svc = stack(policy().build().unwrap(), &[1, 2], &backend).await;
    let mut failed = 0;
    for id in 1..=12 {
        let response = send(&svc, get(id)).await.unwrap();
        if response.status() != StatusCode::OK {
            failed += 1;
        }
    }
    let snapshot = svc.snapshot();
    assert_eq!(snapshot.requests, 12);
    assert_eq!(snapshot.retries, 3 * (1 + 2 + 2));
    assert_eq!(snapshot.exhausted, 3);
    assert_eq!(failed, 3, "the exhausted ones");
    assert_eq!(
        backend.log().len() as u64,
        snapshot.requests + snapshot.retries
    );
    assert_eq!(snapshot.retry_ratio(), 15.0 / 12.0);
    assert_eq!(
        (
            snapshot.budget_denied,
            snapshot.not_replayable,
            snapshot.refused_by_server
        ),
        (0, 0, 0)
    );
    // 100 + 20 % of 12 requests − 15 retries.
    assert!((snapshot.budget_available - 87.4).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs found while writing these tests, now fixed
// ---------------------------------------------------------------------------------------------

/// A budget that allows everything and counts the retries it granted.
#[derive(Debug, Default)]
struct Counting {
    granted: AtomicU64,
}

impl RetryBudget for Counting {
    fn try_retry(&self) -> bool {
        self.granted.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn available(&self) -> f64 {
        f64::INFINITY
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_abandoned_for_the_deadline_costs_no_budget() {
    // Seed 1 ends with the last 503 because the second backoff would cross the deadline (see
    // `a_deadline_ends_the_request_by_250_ms`).
    let budget = Arc::new(Counting::default());
    let backend = Backend::new(|_| Act::status(503).after(100 * MS));
    let policy = RetryPolicy::builder()
        .seed(1)
        .deadline(250 * MS)
        .budget(Budget::Custom(budget.clone()))
        .build()
        .unwrap();
    let svc = stack(policy, &[1], &backend).await;
    let response = send(&svc, get(1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(svc.snapshot().retries, 1);
    assert_eq!(
        budget.granted.load(Ordering::Relaxed),
        1,
        "one retry, one withdrawal"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_deadline_exceeded_even_with_a_per_try_timeout() {
    let backend = Backend::new(|_| Act::never());
    let policy = policy()
        .per_try_timeout(SEC)
        .deadline(250 * MS)
        .build()
        .unwrap();
    let svc = stack(policy, &[1], &backend).await;
    let start = Instant::now();
    let error = send(&svc, get(1)).await.unwrap_err();
    assert_eq!(start.elapsed(), 250 * MS);
    assert!(
        error.is::<DeadlineExceeded>(),
        "expected DeadlineExceeded, got {error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grpc_pushback_restarts_the_backoff_exponent() {
    // Attempt 1: UNAVAILABLE with pushback 0; attempt 2: UNAVAILABLE; attempt 3: OK. The wait
    // before attempt 3 is the first backoff again: 100 ms ± 20 %, not 200 ms ± 20 %.
    let backend = Backend::new(|seen| match seen.attempt {
        1 => Act::grpc(14).header("grpc-retry-pushback-ms", 0),
        2 => Act::grpc(14),
        _ => Act::ok(),
    });
    let policy = policy()
        .backoff(Backoff::grpc(100 * MS, 2.0, SEC))
        .build()
        .unwrap();
    let svc = stack(policy, &[1], &backend).await;
    send(&svc, grpc_call(1)).await.unwrap();
    let g = gaps(&backend.attempts_of(1));
    assert_eq!(g[0], Duration::ZERO);
    assert!((80 * MS..=120 * MS).contains(&g[1]), "{g:?}");
}

#[tokio::test(start_paused = true)]
async fn a_budget_slot_idle_for_65536_generations_is_not_reused() {
    // Reserve of 10 retries (1/s over 10 s), no ratio. Spend it all at t = 0.
    let policy = policy()
        .max_attempts(2)
        .backoff(Backoff::None)
        .budget(Budget::Tps {
            ttl: 10 * SEC,
            min_per_sec: 1,
            ratio: 0.0,
        })
        .build()
        .unwrap();
    let backend = Backend::new(|_| Act::status(503));
    let svc = stack(policy, &[1], &backend).await;
    for id in 1..=11 {
        send(&svc, get(id)).await.unwrap();
    }
    assert_eq!(svc.snapshot().retries, 10);
    assert_eq!(svc.snapshot().budget_denied, 1);
    // Long after the window, the reserve is whole again, but generation 327,680 maps to slot 0
    // with tag 0, the slot and tag of the withdrawals made at t = 0.
    tokio::time::sleep(327_680 * SEC).await;
    assert_eq!(svc.snapshot().budget_available, 10.0);
}
