//! Integration tests for endpoint health through the balancer: the per-endpoint circuit breaker
//! (triggers, the single probe, probe release, re-opening with a longer period), the concurrency
//! caps (`max_requests`, `max_requests_per_endpoint`, never retried), panic mode, the fail-fast
//! state and the 50 ms recheck of a request waiting for a breaker to let a probe through.
//!
//! Every endpoint is a mock keyed by its address that follows a script: what to do with the n-th
//! request it receives. A response can be answered at once, held (its body stays open until the
//! test drops the sender) or gated (the test decides when, and with which status, it answers).
//! Everything runs under paused tokio time with a seeded balancer, and `Picker::RoundRobin`
//! wherever the order of picks matters, so every count is exact. Time only moves as the subject
//! of a test (open periods, waits); waiting for a task is a bounded loop of `yield_now`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use proxyless::BoxError;
use proxyless::balance::{
    Balance, BalanceConfig, BalanceConfigBuilder, BalanceLayer, Picker, ResponseBody,
    ResponseFuture, ServedBy,
};
use proxyless::breaker::{BreakerConfig, BreakerState};
use proxyless::discover::{self, Endpoint};
use proxyless::error::{NoEndpoint, Overloaded};
use proxyless::retry::{RetryLayer, RetryPolicy};
use proxyless::telemetry::Snapshot;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const SEED: u64 = 0x5eed_0003;
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

const CLOSED: BreakerState = BreakerState::Closed;
const HALF_OPEN_IDLE: BreakerState = BreakerState::HalfOpen {
    probe_in_flight: false,
};
const PROBING: BreakerState = BreakerState::HalfOpen {
    probe_in_flight: true,
};

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A seeded round-robin config, to be completed by the test.
fn round_robin() -> BalanceConfigBuilder {
    BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .seed(SEED)
}

// ---------------------------------------------------------------------------------------------
// Mock endpoints
// ---------------------------------------------------------------------------------------------

/// What a mock endpoint does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answers at once with this status; the body ends at once.
    Answer(u16),
    /// Answers at once with this status; the body stays open until the test drops the sender it
    /// receives through [`Taps::held`].
    Hold(u16),
    /// Answers when the test sends a status through the [`Gate`] it receives through
    /// [`Taps::gates`]; the body then ends at once.
    Gate,
}

/// The sender of a held response body: drop it to end the body.
struct Held {
    addr: SocketAddr,
    body: mpsc::UnboundedSender<Bytes>,
}

/// A request waiting at an endpoint for the test to answer it.
struct Gate {
    addr: SocketAddr,
    answer: oneshot::Sender<u16>,
}

type Script = Box<dyn Fn(SocketAddr, usize) -> Act + Send + Sync>;

/// State shared by every mock endpoint of a test.
struct Mocks {
    /// What endpoint `addr` does with the n-th request it receives (from 1).
    script: Script,
    /// Every request received, in order, by endpoint.
    calls: Mutex<Vec<SocketAddr>>,
    held: mpsc::UnboundedSender<Held>,
    gates: mpsc::UnboundedSender<Gate>,
}

impl Mocks {
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn calls_to(&self, port: u16) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|&&a| a == addr(port)).count()
    }
}

/// What the test receives from the mocks.
struct Taps {
    held: mpsc::UnboundedReceiver<Held>,
    gates: mpsc::UnboundedReceiver<Gate>,
}

impl Taps {
    /// The senders of every body held so far.
    fn held_bodies(&mut self) -> Vec<Held> {
        std::iter::from_fn(|| self.held.try_recv().ok()).collect()
    }
}

fn mock_endpoints(
    script: impl Fn(SocketAddr, usize) -> Act + Send + Sync + 'static,
) -> (Arc<Mocks>, Taps) {
    let (held, held_rx) = mpsc::unbounded_channel();
    let (gates, gates_rx) = mpsc::unbounded_channel();
    let mocks = Mocks {
        script: Box::new(script),
        calls: Mutex::new(Vec::new()),
        held,
        gates,
    };
    let taps = Taps {
        held: held_rx,
        gates: gates_rx,
    };
    (Arc::new(mocks), taps)
}

fn factory(mocks: &Arc<Mocks>) -> impl Fn(&Endpoint) -> Mock + Send + Sync + 'static {
    let mocks = Arc::clone(mocks);
    move |endpoint: &Endpoint| Mock {
        addr: endpoint.addr(),
        mocks: Arc::clone(&mocks),
    }
}

/// A response body fed by a channel; it ends when the sender is dropped.
#[derive(Debug)]
struct ChanBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    ended: bool,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

fn response(status: u16, rx: mpsc::UnboundedReceiver<Bytes>) -> Response<ChanBody> {
    let mut response = Response::new(ChanBody { rx, ended: false });
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// One mock endpoint's client.
#[derive(Clone)]
struct Mock {
    addr: SocketAddr,
    mocks: Arc<Mocks>,
}

type MockFuture = Pin<Box<dyn Future<Output = Result<Response<ChanBody>, BoxError>> + Send>>;

// Any request body, so that the mocks also serve a retry layer's `ReplayBody`.
impl<B: Send + 'static> Service<Request<B>> for Mock {
    type Response = Response<ChanBody>;
    type Error = BoxError;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> MockFuture {
        let addr = self.addr;
        let nth = {
            let mut calls = self.mocks.calls.lock().unwrap();
            calls.push(addr);
            calls.iter().filter(|&&a| a == addr).count()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        match (self.mocks.script)(addr, nth) {
            Act::Answer(status) => {
                drop(tx);
                Box::pin(async move { Ok(response(status, rx)) })
            }
            Act::Hold(status) => {
                let held = Held { addr, body: tx };
                assert!(self.mocks.held.send(held).is_ok(), "held bodies dropped");
                Box::pin(async move { Ok(response(status, rx)) })
            }
            Act::Gate => {
                drop(tx);
                let (answer, answered) = oneshot::channel();
                let gate = Gate { addr, answer };
                assert!(self.mocks.gates.send(gate).is_ok(), "gates dropped");
                Box::pin(async move {
                    let status = answered.await.map_err(|_| "the test dropped the gate")?;
                    Ok(response(status, rx))
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Rsp = Response<ResponseBody<ChanBody>>;

/// A balancer over `127.0.0.1:{ports}` (fixed discovery), once its table is published.
async fn start(ports: &[u16], config: BalanceConfig, mocks: &Arc<Mocks>) -> Balance<Mock> {
    let discover = discover::fixed(ports.iter().map(|&p| addr(p))).unwrap();
    let balance = Balance::new(discover, factory(mocks), config).unwrap();
    settle(&balance, |s| s.table_version == 1).await;
    balance
}

async fn send(balance: &Balance<Mock>) -> Result<Rsp, BoxError> {
    balance
        .clone()
        .oneshot(Request::new(Empty::<Bytes>::new()))
        .await
}

/// Calls the balancer now: the endpoint is picked (and its breaker admission claimed) before
/// this returns. The future is not polled.
fn dispatch(balance: &Balance<Mock>) -> Pin<Box<ResponseFuture<Mock, Empty<Bytes>>>> {
    let mut svc = balance.clone();
    let mut cx = Context::from_waker(Waker::noop());
    let ready = Service::<Request<Empty<Bytes>>>::poll_ready(&mut svc, &mut cx);
    assert!(
        matches!(ready, Poll::Ready(Ok(()))),
        "a balancer is always ready"
    );
    Box::pin(svc.call(Request::new(Empty::new())))
}

/// Polls `future` once.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

fn served_by(response: &Rsp) -> SocketAddr {
    response
        .extensions()
        .get::<ServedBy>()
        .expect("a balanced response carries ServedBy")
        .0
}

/// Sends one request that must succeed at the transport level, reads its body to the end and
/// returns who served it with which status. Only for endpoints that do not hold their bodies.
async fn exchange(balance: &Balance<Mock>) -> (SocketAddr, u16) {
    let response = send(balance).await.expect("request failed");
    let by = served_by(&response);
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    (by, status)
}

/// Sends `n` requests and counts them by the endpoint that served them.
async fn spread(balance: &Balance<Mock>, n: usize) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(exchange(balance).await.0.port()).or_default() += 1;
    }
    counts
}

fn breaker(balance: &Balance<Mock>, port: u16) -> BreakerState {
    balance.snapshot().endpoint(addr(port)).unwrap().breaker
}

fn opened(balance: &Balance<Mock>, port: u16) -> u64 {
    balance
        .snapshot()
        .endpoint(addr(port))
        .unwrap()
        .breaker_opened
}

/// The time left in an open breaker's period; panics if it is not open.
fn open_for(balance: &Balance<Mock>, port: u16) -> Duration {
    match breaker(balance, port) {
        BreakerState::Open { remaining } => remaining,
        other => panic!("endpoint {port}: expected an open breaker, got {other:?}"),
    }
}

/// Yields (at most 100 times, never advancing the clock) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let before = Instant::now();
    for _ in 0..100 {
        if done() {
            assert_eq!(Instant::now(), before, "waiting must not advance time");
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not reached after 100 yields");
}

async fn settle(balance: &Balance<Mock>, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    until("balancer snapshot", || done(&balance.snapshot())).await;
    balance.snapshot()
}

/// Round robin over endpoints 1 and 2, endpoint 1 failing: five 500s (requests 1, 3, ..., 9)
/// open its breaker. Returns its open period, checked to be in [0.5 s, 1 s].
async fn trip_first_of_two(balance: &Balance<Mock>) -> Duration {
    for failure in 1..=5 {
        assert_eq!(exchange(balance).await, (addr(1), 500), "failure {failure}");
        assert_eq!(exchange(balance).await, (addr(2), 200), "failure {failure}");
    }
    let period = open_for(balance, 1);
    assert!((500 * MS..=SEC).contains(&period), "{period:?}");
    assert_eq!(opened(balance, 1), 1);
    period
}

/// Round robin over endpoints `1..=n`, all failing their first five requests: 5·n requests
/// open every breaker (with the default threshold of five).
async fn trip_all(balance: &Balance<Mock>, n: u16) {
    for round in 1..=5 {
        for port in 1..=n {
            assert_eq!(exchange(balance).await, (addr(port), 500), "round {round}");
        }
    }
    for port in 1..=n {
        open_for(balance, port);
        assert_eq!(opened(balance, port), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The breaker opens after five consecutive failures; 429s do not count
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn five_consecutive_server_errors_open_the_breaker_and_traffic_moves_away() {
    let (mocks, _taps) = mock_endpoints(|a, _| match a.port() {
        1 => Act::Answer(500),
        _ => Act::Answer(200),
    });
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;

    for failure in 1..=5u64 {
        assert_eq!(exchange(&balance).await, (addr(1), 500));
        let snapshot = balance.snapshot();
        let bad = snapshot.endpoint(addr(1)).unwrap();
        assert_eq!((bad.requests, bad.failures), (failure, failure));
        if failure < 5 {
            assert_eq!(bad.breaker, CLOSED, "after {failure} failures");
            assert_eq!(bad.breaker_opened, 0);
        } else {
            let BreakerState::Open { remaining } = bad.breaker else {
                panic!("not open after 5 failures: {:?}", bad.breaker);
            };
            // The first period is 1 s with equal jitter: [0.5 s, 1 s].
            assert!((500 * MS..=SEC).contains(&remaining), "{remaining:?}");
            assert_eq!(bad.breaker_opened, 1);
        }
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }

    for i in 0..100 {
        assert_eq!(exchange(&balance).await, (addr(2), 200), "request {i}");
    }
    assert_eq!(mocks.calls_to(1), 5);
    assert_eq!(mocks.calls_to(2), 105);
    let snapshot = balance.snapshot();
    let bad = snapshot.endpoint(addr(1)).unwrap();
    assert!(matches!(bad.breaker, BreakerState::Open { .. }));
    assert_eq!((bad.requests, bad.failures, bad.breaker_opened), (5, 5, 1));
    assert_eq!(snapshot.panic_picks, 0);
}

#[tokio::test(start_paused = true)]
async fn throttled_answers_neither_count_nor_reset_the_consecutive_failures() {
    // Endpoint 1: 429, four 500s, two 429s, one more 500.
    let (mocks, _taps) = mock_endpoints(|a, n| match (a.port(), n) {
        (1, 1 | 6 | 7) => Act::Answer(429),
        (1, _) => Act::Answer(500),
        _ => Act::Answer(200),
    });
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;

    for call in 1..=7 {
        let expected = if matches!(call, 1 | 6 | 7) { 429 } else { 500 };
        assert_eq!(exchange(&balance).await, (addr(1), expected));
        // Were 429s counted, the fifth call would open it; were they resets, the eighth would
        // not.
        assert_eq!(breaker(&balance, 1), CLOSED, "after call {call}");
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    assert_eq!(exchange(&balance).await, (addr(1), 500));
    open_for(&balance, 1);
    let snapshot = balance.snapshot();
    let bad = snapshot.endpoint(addr(1)).unwrap();
    // A 429 is still a failure for the load and the counters.
    assert_eq!((bad.requests, bad.failures, bad.breaker_opened), (8, 8, 1));
    for _ in 0..10 {
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    assert_eq!(mocks.calls_to(1), 8);
}

// ---------------------------------------------------------------------------------------------
// 2. Exactly one probe; a success closes, a failure re-opens for longer
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_the_open_period_exactly_one_probe_goes_out_and_its_success_closes_the_breaker() {
    let hold = Arc::new(AtomicBool::new(false));
    let (mocks, mut taps) = mock_endpoints({
        let hold = Arc::clone(&hold);
        move |a, n| match (a.port(), n) {
            (1, 1..=5) => Act::Answer(500),
            (1, 6) => Act::Gate,
            (1, _) => Act::Answer(200),
            _ if hold.load(Ordering::SeqCst) => Act::Hold(200),
            _ => Act::Answer(200),
        }
    });
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;
    trip_first_of_two(&balance).await;
    tokio::time::advance(SEC).await; // the longest first period
    assert_eq!(breaker(&balance, 1), HALF_OPEN_IDLE);

    // Ten requests at the same moment, the healthy endpoint holding its bodies open.
    hold.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(dispatch(&balance))).collect();
    until("the ten requests reach their endpoints", || {
        mocks.calls() == 20
    })
    .await;
    assert_eq!(mocks.calls_to(1), 6, "exactly one probe");
    assert_eq!(mocks.calls_to(2), 14);
    let probe = taps.gates.try_recv().expect("the probe waits at its gate");
    assert_eq!(probe.addr, addr(1));
    assert!(taps.gates.try_recv().is_err());
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.in_flight, 10);
    let bad = snapshot.endpoint(addr(1)).unwrap();
    assert_eq!((bad.breaker, bad.in_flight), (PROBING, 1));
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().in_flight, 9);

    // While the probe is out, everything else still goes elsewhere.
    hold.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    assert_eq!(mocks.calls_to(1), 6);
    assert_eq!(breaker(&balance, 1), PROBING);

    // The probe succeeds: closed.
    assert!(probe.answer.send(200).is_ok());
    let held = taps.held_bodies();
    assert_eq!(held.len(), 9);
    assert!(held.iter().all(|h| h.addr == addr(2)));
    drop(held);
    let mut answered = BTreeMap::new();
    for task in tasks {
        let response = task.await.unwrap().expect("every request succeeds");
        let key = (served_by(&response).port(), response.status().as_u16());
        *answered.entry(key).or_insert(0) += 1;
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(answered, BTreeMap::from([((1, 200), 1), ((2, 200), 9)]));
    assert_eq!(breaker(&balance, 1), CLOSED);
    assert_eq!(opened(&balance, 1), 1);
    assert_eq!(balance.snapshot().in_flight, 0);

    // Traffic returns: round robin over both again.
    assert_eq!(spread(&balance, 10).await, BTreeMap::from([(1, 5), (2, 5)]));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_breaker_for_a_longer_period() {
    let (mocks, mut taps) = mock_endpoints(|a, n| match (a.port(), n) {
        (1, 1..=5) => Act::Answer(500),
        (1, 6 | 7) => Act::Gate,
        (1, _) => Act::Answer(200),
        _ => Act::Answer(200),
    });
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;
    trip_first_of_two(&balance).await;
    tokio::time::advance(SEC).await;

    // Four requests at once: one probe.
    let mut probe = None;
    let mut others = Vec::new();
    for _ in 0..4 {
        let mut future = dispatch(&balance);
        match poll_once(&mut future).await {
            Poll::Pending => {
                assert!(probe.is_none(), "a second request was held: a second probe");
                probe = Some(future);
            }
            Poll::Ready(result) => others.push(result.unwrap()),
        }
    }
    let probe = probe.expect("one request probes");
    assert!(others.iter().all(|r| served_by(r) == addr(2)));
    assert_eq!(breaker(&balance, 1), PROBING);
    let gate = taps.gates.try_recv().unwrap();
    assert!(gate.answer.send(500).is_ok());
    let response = probe.await.unwrap();
    assert_eq!(
        (served_by(&response), response.status().as_u16()),
        (addr(1), 500)
    );

    // k = 2: d = 2 s, jittered into [1 s, 2 s].
    let second = open_for(&balance, 1);
    assert!((SEC..=2 * SEC).contains(&second), "{second:?}");
    assert_eq!(opened(&balance, 1), 2);

    // 0.99 × the shortest second period: still open, no traffic.
    tokio::time::advance(990 * MS).await;
    assert_eq!(open_for(&balance, 1), second - 990 * MS);
    for _ in 0..20 {
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    assert_eq!(mocks.calls_to(1), 6);

    // 2 s after the re-opening: the next probe goes out, and only one.
    tokio::time::advance(2 * SEC - 990 * MS).await;
    assert_eq!(breaker(&balance, 1), HALF_OPEN_IDLE);
    let mut probe = None;
    for _ in 0..4 {
        let mut future = dispatch(&balance);
        match poll_once(&mut future).await {
            Poll::Pending => {
                assert!(probe.is_none(), "a second request was held: a second probe");
                probe = Some(future);
            }
            Poll::Ready(result) => assert_eq!(served_by(&result.unwrap()), addr(2)),
        }
    }
    let probe = probe.expect("one request probes");
    assert_eq!(mocks.calls_to(1), 7);
    assert_eq!(breaker(&balance, 1), PROBING);
    assert!(taps.gates.try_recv().unwrap().answer.send(200).is_ok());
    assert_eq!(probe.await.unwrap().status(), StatusCode::OK);
    assert_eq!(breaker(&balance, 1), CLOSED);
    assert_eq!(opened(&balance, 1), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. A probe dropped by its caller releases the probe
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_by_its_caller_lets_another_request_probe() {
    let (mocks, mut taps) = mock_endpoints(|a, n| match (a.port(), n) {
        (1, 1..=5) => Act::Answer(500),
        (1, 6 | 7) => Act::Gate,
        (1, _) => Act::Answer(200),
        _ => Act::Answer(200),
    });
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;
    trip_first_of_two(&balance).await;
    tokio::time::advance(SEC).await;

    /// Dispatches requests until one is held at endpoint 1 (round robin: within two).
    async fn probe(balance: &Balance<Mock>) -> Pin<Box<ResponseFuture<Mock, Empty<Bytes>>>> {
        for _ in 0..2 {
            let mut future = dispatch(balance);
            match poll_once(&mut future).await {
                Poll::Pending => return future,
                Poll::Ready(result) => assert_eq!(served_by(&result.unwrap()), addr(2)),
            }
        }
        panic!("no request probed endpoint 1");
    }

    let abandoned = probe(&balance).await;
    assert_eq!(mocks.calls_to(1), 6);
    let gate = taps.gates.try_recv().unwrap();
    assert_eq!(breaker(&balance, 1), PROBING);
    // Nobody else may probe meanwhile.
    for _ in 0..4 {
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    drop(abandoned);
    assert!(gate.answer.is_closed(), "the probe's request was dropped");
    assert_eq!(breaker(&balance, 1), HALF_OPEN_IDLE);
    assert_eq!(balance.snapshot().in_flight, 0);
    assert_eq!(opened(&balance, 1), 1);

    // Another request probes, and its success closes the breaker.
    let second = probe(&balance).await;
    assert_eq!(mocks.calls_to(1), 7);
    assert_eq!(breaker(&balance, 1), PROBING);
    assert!(taps.gates.try_recv().unwrap().answer.send(200).is_ok());
    assert_eq!(second.await.unwrap().status(), StatusCode::OK);
    assert_eq!(breaker(&balance, 1), CLOSED);
}

// ---------------------------------------------------------------------------------------------
// 4. A disabled breaker never opens
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_opens() {
    let (mocks, _taps) = mock_endpoints(|a, _| match a.port() {
        1 => Act::Answer(500),
        _ => Act::Answer(200),
    });
    let config = round_robin()
        .breaker(BreakerConfig::disabled())
        .build()
        .unwrap();
    assert!(!config.breaker().is_enabled());
    let balance = start(&[1, 2], config, &mocks).await;

    for i in 0..100 {
        let expected = if i % 2 == 0 {
            (addr(1), 500)
        } else {
            (addr(2), 200)
        };
        assert_eq!(exchange(&balance).await, expected, "request {i}");
    }
    let snapshot = balance.snapshot();
    let bad = snapshot.endpoint(addr(1)).unwrap();
    assert_eq!(bad.breaker, CLOSED);
    assert_eq!(
        (bad.requests, bad.failures, bad.breaker_opened),
        (50, 50, 0)
    );
    assert_eq!(mocks.calls_to(1), 50);
}

// ---------------------------------------------------------------------------------------------
// 5. The failure-rate trigger
// ---------------------------------------------------------------------------------------------

/// Endpoint 1 alternates success (odd calls) and 500 (even calls): never two failures in a row.
fn alternating(a: SocketAddr, n: usize) -> Act {
    match (a.port(), n % 2) {
        (1, 0) => Act::Answer(500),
        _ => Act::Answer(200),
    }
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_trigger_opens_without_consecutive_failures() {
    let (mocks, _taps) = mock_endpoints(alternating);
    let breaker_config = BreakerConfig::builder()
        .failure_rate(0.5, Duration::from_secs(10), 10)
        .build()
        .unwrap();
    assert_eq!(breaker_config.consecutive_failures(), 5);
    let config = round_robin().breaker(breaker_config).build().unwrap();
    let balance = start(&[1, 2], config, &mocks).await;

    for call in 1..=10usize {
        let status = if call % 2 == 0 { 500 } else { 200 };
        assert_eq!(exchange(&balance).await, (addr(1), status));
        if call < 10 {
            // Call 8 is at 4/8 = 0.5, but under the 10 requests required.
            assert_eq!(breaker(&balance, 1), CLOSED, "after call {call}");
        }
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    // Call 10: 5 failures of 10 requests, 0.5 ≥ 0.5.
    open_for(&balance, 1);
    assert_eq!(opened(&balance, 1), 1);
    for _ in 0..10 {
        assert_eq!(exchange(&balance).await, (addr(2), 200));
    }
    assert_eq!(mocks.calls_to(1), 10);

    // The same traffic with only the consecutive trigger never opens.
    let (mocks, _taps) = mock_endpoints(alternating);
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;
    assert_eq!(
        spread(&balance, 60).await,
        BTreeMap::from([(1, 30), (2, 30)])
    );
    assert_eq!(breaker(&balance, 1), CLOSED);
    assert_eq!(opened(&balance, 1), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Concurrency caps
// ---------------------------------------------------------------------------------------------

fn overloaded(error: &BoxError) -> &Overloaded {
    error
        .downcast_ref::<Overloaded>()
        .unwrap_or_else(|| panic!("expected Overloaded, got {error:?}"))
}

#[tokio::test(start_paused = true)]
async fn max_requests_sheds_the_request_over_the_cap_at_once() {
    let (mocks, mut taps) = mock_endpoints(|_, _| Act::Hold(200));
    let config = round_robin().max_requests(3).build().unwrap();
    let balance = start(&[1, 2], config, &mocks).await;

    let mut responses = Vec::new();
    for _ in 0..3 {
        responses.push(send(&balance).await.unwrap());
    }
    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let shed = overloaded(&error);
    assert_eq!((shed.limit(), shed.per_endpoint()), (3, false));
    assert_eq!(
        error.to_string(),
        "overloaded: the service has 3 requests in flight (max_requests)"
    );
    let snapshot = balance.snapshot();
    assert_eq!((snapshot.overloaded, snapshot.in_flight), (1, 3));
    assert_eq!(snapshot.total_requests(), 3);
    assert_eq!(mocks.calls(), 3, "the shed request reached no endpoint");

    // One body ends: the next request is served.
    let mut held = taps.held_bodies();
    assert_eq!(held.len(), 3);
    let first = held.remove(0);
    assert_eq!(first.addr, addr(1));
    drop(first.body); // the first response's body ends
    responses.remove(0).into_body().collect().await.unwrap();
    assert_eq!(balance.snapshot().in_flight, 2);
    let start = Instant::now();
    let response = send(&balance).await.expect("served under the cap");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(response.status(), StatusCode::OK);
    let snapshot = balance.snapshot();
    assert_eq!((snapshot.overloaded, snapshot.in_flight), (1, 3));
    assert_eq!(mocks.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn endpoints_at_their_cap_are_skipped_until_all_are() {
    let hold = Arc::new(AtomicBool::new(true));
    let (mocks, mut taps) = mock_endpoints({
        let hold = Arc::clone(&hold);
        move |_, _| match hold.load(Ordering::SeqCst) {
            true => Act::Hold(200),
            false => Act::Answer(200),
        }
    });
    let config = round_robin().max_requests_per_endpoint(2).build().unwrap();
    let balance = start(&[1, 2], config, &mocks).await;
    let mut in_flight = Vec::new();
    let mut send_held = async |expected: u16| {
        hold.store(true, Ordering::SeqCst);
        let response = send(&balance).await.unwrap();
        assert_eq!(served_by(&response), addr(expected));
        in_flight.push(response);
        hold.store(false, Ordering::SeqCst);
    };

    // Endpoint 1 at its cap of 2, endpoint 2 idle: round robin skips endpoint 1.
    send_held(1).await;
    assert_eq!(exchange(&balance).await, (addr(2), 200));
    send_held(1).await;
    assert_eq!(spread(&balance, 10).await, BTreeMap::from([(2, 10)]));

    // Both at their cap: shed at once.
    send_held(2).await;
    send_held(2).await;
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.endpoint(addr(1)).unwrap().in_flight, 2);
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().in_flight, 2);
    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let shed = overloaded(&error);
    assert_eq!((shed.limit(), shed.per_endpoint()), (2, true));
    assert_eq!(balance.snapshot().overloaded, 1);
    assert_eq!((mocks.calls_to(1), mocks.calls_to(2)), (2, 13));
    assert_eq!(taps.held_bodies().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_request_is_not_retried() {
    // The first attempt is a 503, retried; the second is held open and fills the cap of 1.
    let (mocks, mut taps) = mock_endpoints(|_, n| match n {
        1 => Act::Answer(503),
        _ => Act::Hold(200),
    });
    let config = round_robin().max_requests(1).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::builder().seed(SEED).build().unwrap(),
        ))
        .layer(BalanceLayer::with_config(
            discover::fixed([addr(1)]).unwrap(),
            config,
        ))
        .service(factory(&mocks));
    until("the table is published", || {
        svc.get_ref().snapshot().table_version == 1
    })
    .await;

    let first = svc
        .clone()
        .oneshot(Request::new(Empty::<Bytes>::new()))
        .await
        .expect("the retry succeeds");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(svc.snapshot().retries, 1, "the layer does retry a 503");
    assert_eq!(svc.get_ref().snapshot().in_flight, 1);

    let start = Instant::now();
    let error = svc
        .clone()
        .oneshot(Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let shed = overloaded(&error);
    assert_eq!((shed.limit(), shed.per_endpoint()), (1, false));
    let retry = svc.snapshot();
    assert_eq!((retry.requests, retry.retries, retry.exhausted), (2, 1, 0));
    assert_eq!(mocks.calls(), 2, "no attempt after the Overloaded");
    assert_eq!(svc.get_ref().snapshot().overloaded, 1);
    assert_eq!(taps.held_bodies().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Panic mode
// ---------------------------------------------------------------------------------------------

/// Endpoints `1..=failing` fail their first five requests, then succeed; the others succeed.
fn first_failing(failing: u16) -> impl Fn(SocketAddr, usize) -> Act + Send + Sync + 'static {
    move |a, n| match (a.port() <= failing, n) {
        (true, 1..=5) => Act::Answer(500),
        _ => Act::Answer(200),
    }
}

/// Round robin over `1..=n` until endpoints `1..=failing` have failed five times each.
async fn trip_some(balance: &Balance<Mock>, n: u16, failing: u16) {
    for _ in 0..5 * n {
        exchange(balance).await;
    }
    for port in 1..=n {
        let state = breaker(balance, port);
        if port <= failing {
            assert!(
                matches!(state, BreakerState::Open { .. }),
                "{port}: {state:?}"
            );
        } else {
            assert_eq!(state, CLOSED, "{port}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn below_the_panic_threshold_traffic_spreads_over_every_endpoint() {
    // 1 healthy of 4: 25 % < 50 %.
    let (mocks, _taps) = mock_endpoints(first_failing(3));
    let balance = start(&[1, 2, 3, 4], round_robin().build().unwrap(), &mocks).await;
    trip_some(&balance, 4, 3).await;
    let before = balance.snapshot().panic_picks;
    let counts = spread(&balance, 100).await;
    assert_eq!(counts, BTreeMap::from([(1, 25), (2, 25), (3, 25), (4, 25)]));
    assert_eq!(balance.snapshot().panic_picks - before, 100);

    // 1 healthy of 3: 33 % < 50 %.
    let (mocks, _taps) = mock_endpoints(first_failing(2));
    let balance = start(&[1, 2, 3], round_robin().build().unwrap(), &mocks).await;
    trip_some(&balance, 3, 2).await;
    let before = balance.snapshot().panic_picks;
    let counts = spread(&balance, 99).await;
    assert_eq!(counts, BTreeMap::from([(1, 33), (2, 33), (3, 33)]));
    assert_eq!(balance.snapshot().panic_picks - before, 99);
}

#[tokio::test(start_paused = true)]
async fn at_the_panic_threshold_traffic_stays_on_healthy_endpoints() {
    // 2 healthy of 4: 50 %, not below 50 %.
    let (mocks, _taps) = mock_endpoints(first_failing(2));
    let balance = start(&[1, 2, 3, 4], round_robin().build().unwrap(), &mocks).await;
    trip_some(&balance, 4, 2).await;
    let counts = spread(&balance, 100).await;
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [3, 4]);
    assert_eq!(counts.values().sum::<usize>(), 100);
    assert_eq!(balance.snapshot().panic_picks, 0);
    assert_eq!((mocks.calls_to(1), mocks.calls_to(2)), (5, 5));

    // 1 healthy of 2: 50 %.
    let (mocks, _taps) = mock_endpoints(first_failing(1));
    let balance = start(&[1, 2], round_robin().build().unwrap(), &mocks).await;
    trip_some(&balance, 2, 1).await;
    assert_eq!(spread(&balance, 100).await, BTreeMap::from([(2, 100)]));
    assert_eq!(balance.snapshot().panic_picks, 0);
}

#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_panic_mode_spreads_over_all_of_three() {
    let (mocks, _taps) = mock_endpoints(first_failing(3));
    let balance = start(&[1, 2, 3], round_robin().build().unwrap(), &mocks).await;
    trip_all(&balance, 3).await;
    // The trip's last pick may already be a panic pick; count the 99 that follow.
    let before = balance.snapshot().panic_picks;
    let counts = spread(&balance, 99).await;
    assert_eq!(counts, BTreeMap::from([(1, 33), (2, 33), (3, 33)]));
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.panic_picks - before, 99);
    // Their successes were sent despite the breaker: it ignores them.
    for port in 1..=3 {
        let endpoint = snapshot.endpoint(addr(port)).unwrap();
        assert!(matches!(endpoint.breaker, BreakerState::Open { .. }));
        assert_eq!((endpoint.requests, endpoint.breaker_opened), (38, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_panic_mode_spreads_over_all_of_four() {
    let (mocks, _taps) = mock_endpoints(first_failing(4));
    let balance = start(&[1, 2, 3, 4], round_robin().build().unwrap(), &mocks).await;
    trip_all(&balance, 4).await;
    let before = balance.snapshot().panic_picks;
    let counts = spread(&balance, 100).await;
    assert_eq!(counts, BTreeMap::from([(1, 25), (2, 25), (3, 25), (4, 25)]));
    assert_eq!(balance.snapshot().panic_picks - before, 100);
}

#[tokio::test(start_paused = true)]
async fn without_panic_mode_every_breaker_open_means_no_endpoint() {
    let (mocks, _taps) = mock_endpoints(first_failing(4));
    let config = round_robin()
        .panic_threshold(0)
        .no_endpoint_timeout(SEC)
        // Open periods of 5 s to 10 s: none ends during the 1 s wait.
        .breaker(
            BreakerConfig::builder()
                .backoff(10 * SEC, 60 * SEC)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let balance = start(&[1, 2, 3, 4], config, &mocks).await;
    trip_all(&balance, 4).await;

    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), SEC);
    let no_endpoint = error
        .downcast_ref::<NoEndpoint>()
        .unwrap_or_else(|| panic!("expected NoEndpoint, got {error:?}"));
    assert_eq!(no_endpoint.waited(), SEC);
    assert_eq!(no_endpoint.known_endpoints(), 4);
    assert_eq!(no_endpoint.unhealthy_endpoints(), 4);
    assert_eq!(balance.snapshot().panic_picks, 0);
    assert_eq!(mocks.calls(), 20);
}

// ---------------------------------------------------------------------------------------------
// 8. The fail-fast state
// ---------------------------------------------------------------------------------------------

fn no_endpoint(error: &BoxError) -> &NoEndpoint {
    error
        .downcast_ref::<NoEndpoint>()
        .unwrap_or_else(|| panic!("expected NoEndpoint, got {error:?}"))
}

#[tokio::test(start_paused = true)]
async fn after_one_full_wait_requests_fail_fast_until_discovery_publishes() {
    let (pusher, discover) = discover::push();
    let (mocks, _taps) = mock_endpoints(|_, _| Act::Answer(200));
    let config = round_robin()
        .panic_threshold(0)
        .no_endpoint_timeout(SEC)
        .build()
        .unwrap();
    let balance = Balance::new(discover, factory(&mocks), config).unwrap();

    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(no_endpoint(&error).waited(), SEC);
    assert_eq!(no_endpoint(&error).known_endpoints(), 0);

    for _ in 0..3 {
        let start = Instant::now();
        let error = send(&balance).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(no_endpoint(&error).waited(), Duration::ZERO);
    }

    pusher.set(vec![Endpoint::new(addr(1))]).unwrap();
    settle(&balance, |s| s.table_version == 1).await;
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(exchange(&balance).await, (addr(1), 200));
    }
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The state was left: with no endpoint again, the next request waits in full once more.
    pusher.set(Vec::new()).unwrap();
    settle(&balance, |s| s.table_version == 2).await;
    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(no_endpoint(&error).waited(), SEC);
    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(no_endpoint(&error).waited(), Duration::ZERO);
    assert_eq!(mocks.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_requests_fail_fast_until_a_probe_is_due() {
    let (mocks, _taps) = mock_endpoints(first_failing(2));
    let config = round_robin()
        .panic_threshold(0)
        .no_endpoint_timeout(SEC)
        .breaker(
            BreakerConfig::builder()
                .backoff(10 * SEC, 60 * SEC)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let balance = start(&[1, 2], config, &mocks).await;
    trip_all(&balance, 2).await;
    let periods = [open_for(&balance, 1), open_for(&balance, 2)];
    assert!(
        periods.iter().all(|p| (5 * SEC..=10 * SEC).contains(p)),
        "{periods:?}"
    );

    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(no_endpoint(&error).unhealthy_endpoints(), 2);
    for _ in 0..3 {
        let start = Instant::now();
        let error = send(&balance).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(no_endpoint(&error).waited(), Duration::ZERO);
    }
    assert_eq!(mocks.calls(), 10);

    // Once the periods are over, a probe goes out at once and closes its breaker.
    tokio::time::advance(10 * SEC - SEC).await;
    let start = Instant::now();
    let (by, status) = exchange(&balance).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(status, 200);
    assert_eq!(breaker(&balance, by.port()), CLOSED);
    assert_eq!(mocks.calls(), 11);
}

// ---------------------------------------------------------------------------------------------
// 9. A waiting request is served by the probe once the open period ends
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_served_by_a_probe_within_50_ms_of_the_open_period_ending() {
    let (mocks, _taps) = mock_endpoints(first_failing(2));
    let config = round_robin()
        .panic_threshold(0)
        .no_endpoint_timeout(3 * SEC)
        .build()
        .unwrap();
    let balance = start(&[1, 2], config, &mocks).await;
    trip_all(&balance, 2).await;
    let periods = [open_for(&balance, 1), open_for(&balance, 2)];
    let end = periods[0].min(periods[1]);
    assert!((500 * MS..=SEC).contains(&end), "{periods:?}");

    let start = Instant::now();
    let (by, status) = exchange(&balance).await;
    let waited = start.elapsed();
    assert!(
        end <= waited && waited <= end + 50 * MS,
        "waited {waited:?}, open periods {periods:?}"
    );
    assert_eq!(status, 200);
    if periods[0] != periods[1] {
        let first = if periods[0] < periods[1] { 1 } else { 2 };
        assert_eq!(by, addr(first), "{periods:?}");
    }
    assert_eq!(breaker(&balance, by.port()), CLOSED);
    assert_eq!(mocks.calls(), 11);
}
