//! Integration tests for `proxyless::balance` over mock per-endpoint services: fail-fast,
//! discovery applied by the background driver, in-flight accounting, picker statistics through
//! the service, typed errors and use as a tower layer.
//!
//! Everything timed runs under paused tokio time and every balancer has a fixed seed, so the
//! results are exact and independent of the machine's speed. Waiting for the discovery driver is
//! a bounded loop of `yield_now` that watches the snapshot; it never advances the clock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use proxyless::BoxError;
use proxyless::balance::{Balance, BalanceConfig, BalanceLayer, Picker, ResponseBody, ServedBy};
use proxyless::discover::{self, DiscoverError, Endpoint, Update};
use proxyless::error::{BuildError, EndpointError, EndpointErrorKind, NoEndpoint};
use proxyless::telemetry::Snapshot;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const SEED: u64 = 0x5eed_0001;
const MS: Duration = Duration::from_millis(1);
const PENALTY: Duration = Duration::from_secs(5);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn ep(port: u16) -> Endpoint {
    Endpoint::new(addr(port))
}

fn config(picker: Picker) -> BalanceConfig {
    BalanceConfig::builder()
        .picker(picker)
        .seed(SEED)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Mock endpoints
// ---------------------------------------------------------------------------------------------

/// A response body whose data frames come from a channel and which ends when the sender is
/// dropped, so the test decides when data arrives and when the body ends.
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

/// What a mock endpoint does with a request.
#[derive(Clone, Debug, Default)]
struct Behavior {
    /// Time before the response headers (or the error).
    delay: Duration,
    /// The response status (200 by default).
    status: StatusCode,
    /// Fail with an `io::Error` of this kind instead of responding.
    error: Option<io::ErrorKind>,
    /// Hand the body's sender to the test (through the `Held` channel) instead of sending the
    /// endpoint's address and ending the body.
    hold: bool,
}

/// The sender of a held response body: send data, drop it to end the body.
struct Held {
    addr: SocketAddr,
    body: mpsc::UnboundedSender<Bytes>,
}

/// State shared by every mock endpoint of a test.
struct Mocks {
    behave: Box<dyn Fn(SocketAddr) -> Behavior + Send + Sync>,
    /// Calls of the `MakeEndpoint` factory.
    made: AtomicUsize,
    held: mpsc::UnboundedSender<Held>,
}

impl Mocks {
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }
}

fn mocks(
    behave: impl Fn(SocketAddr) -> Behavior + Send + Sync + 'static,
) -> (Arc<Mocks>, mpsc::UnboundedReceiver<Held>) {
    let (held, held_rx) = mpsc::unbounded_channel();
    let mocks = Mocks {
        behave: Box::new(behave),
        made: AtomicUsize::new(0),
        held,
    };
    (Arc::new(mocks), held_rx)
}

fn healthy(_: SocketAddr) -> Behavior {
    Behavior::default()
}

/// The `MakeEndpoint` factory: one mock per endpoint, counting its calls.
fn factory(mocks: &Arc<Mocks>) -> impl Fn(&Endpoint) -> Mock + Send + Sync + 'static {
    let mocks = Arc::clone(mocks);
    move |endpoint: &Endpoint| {
        mocks.made.fetch_add(1, Ordering::SeqCst);
        Mock {
            addr: endpoint.addr(),
            mocks: Arc::clone(&mocks),
        }
    }
}

/// One mock endpoint's client.
#[derive(Clone)]
struct Mock {
    addr: SocketAddr,
    mocks: Arc<Mocks>,
}

type MockFuture = Pin<Box<dyn Future<Output = Result<Response<ChanBody>, BoxError>> + Send>>;

impl Service<Request<Empty<Bytes>>> for Mock {
    type Response = Response<ChanBody>;
    type Error = BoxError;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Empty<Bytes>>) -> MockFuture {
        let addr = self.addr;
        let mocks = Arc::clone(&self.mocks);
        let behavior = (mocks.behave)(addr);
        Box::pin(async move {
            if !behavior.delay.is_zero() {
                tokio::time::sleep(behavior.delay).await;
            }
            if let Some(kind) = behavior.error {
                return Err(io::Error::new(kind, format!("mock {addr} failed")).into());
            }
            let (tx, rx) = mpsc::unbounded_channel();
            if behavior.hold {
                let held = Held { addr, body: tx };
                if mocks.held.send(held).is_err() {
                    panic!("the test dropped the receiver of held bodies");
                }
            } else {
                tx.send(Bytes::from(addr.to_string())).unwrap();
            }
            let mut response = Response::new(ChanBody { rx, ended: false });
            *response.status_mut() = behavior.status;
            Ok(response)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Rsp = Response<ResponseBody<ChanBody>>;

async fn send(balance: &Balance<Mock>) -> Result<Rsp, BoxError> {
    balance.clone().oneshot(Request::new(Empty::new())).await
}

fn served_by(response: &Rsp) -> SocketAddr {
    response
        .extensions()
        .get::<ServedBy>()
        .expect("a balanced response carries ServedBy")
        .0
}

async fn body_text(response: Rsp) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Sends one request, checks it succeeded, reads its body to the end; returns who served it.
async fn round_trip(balance: &Balance<Mock>) -> SocketAddr {
    let response = send(balance).await.expect("request failed");
    let by = served_by(&response);
    body_text(response).await;
    by
}

fn addrs(snapshot: &Snapshot) -> Vec<SocketAddr> {
    snapshot.endpoints.iter().map(|e| e.addr).collect()
}

/// Yields (at most 100 times, never advancing the clock) until the snapshot satisfies `done`.
async fn settle<S>(balance: &Balance<S>, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let before = Instant::now();
    for _ in 0..100 {
        let snapshot = balance.snapshot();
        if done(&snapshot) {
            assert_eq!(Instant::now(), before, "settling must not advance time");
            return snapshot;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "condition not reached after 100 yields; last snapshot: {:#?}",
        balance.snapshot()
    );
}

fn version(n: u64) -> impl Fn(&Snapshot) -> bool {
    move |s| s.table_version == n
}

// ---------------------------------------------------------------------------------------------
// 1. Fail-fast
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn no_endpoint_fails_after_exactly_the_configured_wait() {
    let (_pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let config = BalanceConfig::builder()
        .no_endpoint_timeout(Duration::from_secs(2))
        .seed(SEED)
        .build()
        .unwrap();
    let balance = Balance::new(discover, factory(&mocks), config).unwrap();

    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let no_endpoint = error
        .downcast_ref::<NoEndpoint>()
        .unwrap_or_else(|| panic!("expected NoEndpoint, got {error:?}"));
    assert_eq!(no_endpoint.waited(), Duration::from_secs(2));
    assert_eq!(no_endpoint.known_endpoints(), 0);
    let message = error.to_string();
    assert!(message.contains("no endpoint available"), "{message}");
    assert!(message.contains("2s"), "{message}");
    assert_eq!(mocks.made(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_endpoint_with_a_zero_timeout_fails_at_once() {
    let (_pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let config = BalanceConfig::builder()
        .no_endpoint_timeout(Duration::ZERO)
        .seed(SEED)
        .build()
        .unwrap();
    let balance = Balance::new(discover, factory(&mocks), config).unwrap();

    let start = Instant::now();
    let error = send(&balance).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let no_endpoint = error
        .downcast_ref::<NoEndpoint>()
        .unwrap_or_else(|| panic!("expected NoEndpoint, got {error:?}"));
    assert_eq!(no_endpoint.waited(), Duration::ZERO);
    assert!(error.to_string().contains("no endpoint"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// 2. A waiting request is served when discovery publishes
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_served_as_soon_as_an_endpoint_is_published() {
    let (pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let config = BalanceConfig::builder()
        .no_endpoint_timeout(Duration::from_secs(2))
        .seed(SEED)
        .build()
        .unwrap();
    let balance = Balance::new(discover, factory(&mocks), config).unwrap();

    let publisher = tokio::spawn(async move {
        tokio::time::sleep(500 * MS).await;
        pusher.set(vec![ep(1)]).unwrap();
        pusher // keep the source alive
    });
    let start = Instant::now();
    let response = send(&balance).await.expect("served once published");
    assert_eq!(start.elapsed(), 500 * MS);
    assert_eq!(served_by(&response), addr(1));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "127.0.0.1:1");
    let _pusher = publisher.await.unwrap();
    assert_eq!(balance.snapshot().endpoint(addr(1)).unwrap().requests, 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_endpoints_ends_when_discovery_has_published_enough() {
    let (pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let balance = Balance::new(discover, factory(&mocks), config(Picker::default())).unwrap();
    // Nothing to wait for.
    balance.wait_for_endpoints(0).await;

    let waiter = balance.clone();
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        waiter.wait_for_endpoints(2).await;
        start.elapsed()
    });
    tokio::time::sleep(100 * MS).await;
    pusher.set(vec![ep(1)]).unwrap();
    tokio::time::sleep(100 * MS).await;
    assert!(!waiting.is_finished(), "one endpoint of two is not enough");
    pusher.set(vec![ep(1), ep(2)]).unwrap();
    assert_eq!(waiting.await.unwrap(), 200 * MS);
    // Already there: returns at once.
    balance.wait_for_endpoints(2).await;
}

// ---------------------------------------------------------------------------------------------
// 3. An idle balancer follows discovery
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_idle_balancer_applies_discovery_updates() {
    let (pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let balance = Balance::new(discover, factory(&mocks), config(Picker::P2cPeakEwma)).unwrap();

    // The source's first (empty) set changes nothing: no table is published.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.table_version, 0);
    assert!(snapshot.endpoints.is_empty());
    assert_eq!(snapshot.discovery.updates, 0);

    pusher
        .set(vec![ep(1), ep(2).with_weight(3).with_zone("zone-b")])
        .unwrap();
    let snapshot = settle(&balance, version(1)).await;
    assert_eq!(addrs(&snapshot), [addr(1), addr(2)]);
    let second = snapshot.endpoint(addr(2)).unwrap();
    assert_eq!(second.weight, 3);
    assert_eq!(second.zone.as_deref(), Some("zone-b"));
    assert_eq!((second.requests, second.in_flight), (0, 0));
    assert_eq!(snapshot.discovery.updates, 1);
    assert_eq!(snapshot.table_age, Duration::ZERO);
    assert_eq!(mocks.made(), 2);

    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(balance.snapshot().table_age, Duration::from_secs(7));

    assert!(pusher.remove(addr(1)));
    let snapshot = settle(&balance, version(2)).await;
    assert_eq!(addrs(&snapshot), [addr(2)]);
    assert_eq!(snapshot.discovery.updates, 2);
    assert_eq!(snapshot.table_age, Duration::ZERO);
    assert_eq!(snapshot.total_requests(), 0);
    assert_eq!(snapshot.discovery.last_error, None);
}

// ---------------------------------------------------------------------------------------------
// 4. Diffing keeps state
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn discovery_diffing_keeps_the_state_of_unchanged_endpoints() {
    let (pusher, discover) = discover::push();
    pusher.set(vec![ep(1), ep(2)]).unwrap();
    let (mocks, _held) = mocks(healthy);
    let balance = Balance::new(discover, factory(&mocks), config(Picker::RoundRobin)).unwrap();
    settle(&balance, version(1)).await;
    assert_eq!(mocks.made(), 2);

    for _ in 0..6 {
        round_trip(&balance).await;
    }
    let before = balance.snapshot();
    assert_eq!(before.endpoint(addr(1)).unwrap().requests, 3);
    assert_eq!(before.endpoint(addr(2)).unwrap().requests, 3);

    // The old endpoints plus a new one: only the new one gets a client, its counters start at 0.
    pusher.set(vec![ep(1), ep(2), ep(3)]).unwrap();
    let after = settle(&balance, version(2)).await;
    assert_eq!(addrs(&after), [addr(1), addr(2), addr(3)]);
    assert_eq!(after.endpoint(addr(1)).unwrap().requests, 3);
    assert_eq!(after.endpoint(addr(2)).unwrap().requests, 3);
    assert_eq!(after.endpoint(addr(3)).unwrap().requests, 0);
    assert_eq!(mocks.made(), 3);

    // A weight change keeps the client and the counters.
    pusher
        .set(vec![ep(1).with_weight(4), ep(2), ep(3)])
        .unwrap();
    let reweighted = settle(&balance, version(3)).await;
    assert_eq!(reweighted.endpoint(addr(1)).unwrap().weight, 4);
    assert_eq!(reweighted.endpoint(addr(1)).unwrap().requests, 3);
    assert_eq!(mocks.made(), 3);

    // Republishing the same set publishes nothing and makes nothing.
    pusher
        .set(vec![ep(1).with_weight(4), ep(2), ep(3)])
        .unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(balance.snapshot().table_version, 3);
    assert_eq!(mocks.made(), 3);

    // An endpoint removed and added back is a new endpoint: a new client, fresh counters.
    pusher.set(vec![ep(2), ep(3)]).unwrap();
    settle(&balance, version(4)).await;
    pusher.set(vec![ep(1), ep(2), ep(3)]).unwrap();
    let readded = settle(&balance, version(5)).await;
    assert_eq!(readded.endpoint(addr(1)).unwrap().requests, 0);
    assert_eq!(readded.endpoint(addr(2)).unwrap().requests, 3);
    assert_eq!(mocks.made(), 4);
}

// ---------------------------------------------------------------------------------------------
// 5. Invalid updates, source errors and the source's end keep the last good set
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn invalid_updates_errors_and_the_end_of_the_source_keep_the_last_good_set() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Update, BoxError>>();
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let (mocks, _held) = mocks(healthy);
    let balance = Balance::new(
        discover::from_stream(stream),
        factory(&mocks),
        config(Picker::RoundRobin),
    )
    .unwrap();

    tx.send(Ok(Update::Reset(vec![ep(1), ep(2)]))).unwrap();
    settle(&balance, version(1)).await;

    // A full set with a duplicate address is rejected whole.
    tx.send(Ok(Update::Reset(vec![ep(3), ep(4), ep(3)])))
        .unwrap();
    let snapshot = settle(&balance, |s| s.discovery.rejected == 1).await;
    assert_eq!(addrs(&snapshot), [addr(1), addr(2)]);
    assert_eq!(snapshot.table_version, 1);
    assert_eq!(snapshot.discovery.updates, 1);
    assert_eq!(snapshot.discovery.errors, 0);
    let last_error = snapshot
        .discovery
        .last_error
        .expect("the rejection is shown");
    assert_eq!(
        last_error,
        DiscoverError::Duplicate { addr: addr(3) }.to_string()
    );
    assert!(last_error.contains("127.0.0.1:3"), "{last_error}");
    assert_eq!(mocks.made(), 2, "a rejected set makes no clients");

    // A source error keeps the set too.
    tx.send(Err("registry unreachable".into())).unwrap();
    let snapshot = settle(&balance, |s| s.discovery.errors == 1).await;
    assert_eq!(addrs(&snapshot), [addr(1), addr(2)]);
    assert_eq!(snapshot.discovery.rejected, 1);
    assert_eq!(
        snapshot.discovery.last_error.as_deref(),
        Some("registry unreachable")
    );
    assert!(!snapshot.discovery.ended);

    // The next good update, even one that changes nothing, clears the error.
    tx.send(Ok(Update::Reset(vec![ep(1), ep(2)]))).unwrap();
    let snapshot = settle(&balance, |s| s.discovery.last_error.is_none()).await;
    assert_eq!(snapshot.table_version, 1);
    assert_eq!(snapshot.discovery.errors, 1);

    // The source ends: the set stays and requests still work.
    drop(tx);
    let snapshot = settle(&balance, |s| s.discovery.ended).await;
    assert_eq!(addrs(&snapshot), [addr(1), addr(2)]);
    assert_eq!(snapshot.table_version, 1);
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(round_trip(&balance).await);
    }
    assert_eq!(served, [addr(1), addr(2), addr(1), addr(2)]);
}

// ---------------------------------------------------------------------------------------------
// 6. Removal while requests are in flight
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_endpoint_removed_mid_response_finishes_its_in_flight_request() {
    let (pusher, discover) = discover::push();
    pusher.set(vec![ep(1)]).unwrap();
    let (mocks, mut held) = mocks(|a| Behavior {
        hold: a == addr(1),
        ..Behavior::default()
    });
    let balance = Balance::new(discover, factory(&mocks), config(Picker::P2cPeakEwma)).unwrap();
    settle(&balance, version(1)).await;

    let response = send(&balance).await.unwrap();
    assert_eq!(served_by(&response), addr(1));
    let Held {
        addr: held_addr,
        body: sender,
    } = held.try_recv().expect("endpoint 1 holds its body");
    assert_eq!(held_addr, addr(1));
    let mut body = response.into_body();
    sender.send(Bytes::from_static(b"first,")).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first,");

    // Replace endpoint 1 by endpoint 2 while the response is still streaming.
    pusher.insert(ep(2)).unwrap();
    assert!(pusher.remove(addr(1)));
    let snapshot = settle(&balance, |s| addrs(s) == [addr(2)]).await;
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().requests, 0);
    for _ in 0..10 {
        assert_eq!(round_trip(&balance).await, addr(2));
    }
    assert!(held.try_recv().is_err(), "nothing else reached endpoint 1");

    // Endpoint 1's response completes with all its data.
    sender.send(Bytes::from_static(b"second,")).unwrap();
    sender.send(Bytes::from_static(b"third")).unwrap();
    drop(sender);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second,third");
    let snapshot = balance.snapshot();
    assert_eq!(addrs(&snapshot), [addr(2)]);
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().requests, 10);
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().in_flight, 0);
}

// ---------------------------------------------------------------------------------------------
// 7. In-flight accounting lasts until the body ends or is dropped
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn in_flight_counts_until_the_body_ends_or_is_dropped() {
    let (mocks, mut held) = mocks(|_| Behavior {
        delay: 100 * MS,
        hold: true,
        ..Behavior::default()
    });
    let balance = Balance::new(
        discover::fixed([addr(1)]).unwrap(),
        factory(&mocks),
        config(Picker::P2cPeakEwma),
    )
    .unwrap();
    settle(&balance, version(1)).await;
    let in_flight = |b: &Balance<Mock>| b.snapshot().endpoint(addr(1)).unwrap().in_flight;

    // Counted from dispatch, before the response headers.
    let pending = tokio::spawn({
        let balance = balance.clone();
        async move { send(&balance).await }
    });
    settle(&balance, |s| s.endpoint(addr(1)).unwrap().requests == 1).await;
    assert_eq!(in_flight(&balance), 1);
    let start = Instant::now();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), 100 * MS);

    // Still counted with the headers in hand and the body unread...
    assert_eq!(in_flight(&balance), 1);
    let sender = held.try_recv().unwrap().body;
    sender.send(Bytes::from_static(b"part")).unwrap();
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part");
    // ...and with part of the body read.
    assert_eq!(in_flight(&balance), 1);
    drop(sender);
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    assert_eq!(in_flight(&balance), 0);

    // Dropping an unread body ends the request too.
    let response = send(&balance).await.unwrap();
    let _sender = held.try_recv().unwrap().body;
    assert_eq!(in_flight(&balance), 1);
    drop(response);
    assert_eq!(in_flight(&balance), 0);

    // So does taking the inner body out of the wrapper.
    let response = send(&balance).await.unwrap();
    let _sender = held.try_recv().unwrap().body;
    assert_eq!(in_flight(&balance), 1);
    let _inner: ChanBody = response.into_body().into_inner();
    assert_eq!(in_flight(&balance), 0);

    let snapshot = balance.snapshot();
    let endpoint = snapshot.endpoint(addr(1)).unwrap();
    assert_eq!((endpoint.requests, endpoint.failures), (3, 0));
}

// ---------------------------------------------------------------------------------------------
// 8. PeakEWMA steers away from a slow endpoint
// ---------------------------------------------------------------------------------------------

fn slow_and_fast(a: SocketAddr) -> Behavior {
    Behavior {
        delay: if a == addr(1) { 100 * MS } else { 10 * MS },
        ..Behavior::default()
    }
}

async fn shares(picker: Picker, requests: usize) -> HashMap<SocketAddr, usize> {
    let (mocks, _held) = mocks(slow_and_fast);
    let balance = Balance::new(
        discover::fixed([addr(1), addr(2)]).unwrap(),
        factory(&mocks),
        config(picker),
    )
    .unwrap();
    settle(&balance, version(1)).await;
    let mut counts = HashMap::new();
    for _ in 0..requests {
        *counts.entry(round_trip(&balance).await).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_sends_few_requests_to_a_slow_endpoint() {
    let counts = shares(Picker::P2cPeakEwma, 200).await;
    let slow = counts.get(&addr(1)).copied().unwrap_or(0);
    let fast = counts.get(&addr(2)).copied().unwrap_or(0);
    assert_eq!(slow + fast, 200);
    // After one 100 ms sample the slow endpoint's estimate needs ~12 s of decay to fall under
    // the fast one's ~30 ms, and 200 requests take ~2 s: it is tried once at most at the start.
    assert!(slow <= 2, "slow endpoint got {slow} of 200 ({counts:?})");
    assert!(slow * 10 < 200, "slow endpoint got {slow} of 200");

    let counts = shares(Picker::RoundRobin, 200).await;
    assert_eq!(counts.get(&addr(1)), Some(&100));
    assert_eq!(counts.get(&addr(2)), Some(&100));
}

// ---------------------------------------------------------------------------------------------
// 9. Failures do not look fast
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_fast_failing_endpoint_is_charged_the_failure_penalty() {
    let (mocks, _held) = mocks(|a| {
        if a == addr(1) {
            Behavior {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..Behavior::default()
            }
        } else {
            Behavior {
                delay: 20 * MS,
                ..Behavior::default()
            }
        }
    });
    let balance = Balance::new(
        discover::fixed([addr(1), addr(2)]).unwrap(),
        factory(&mocks),
        config(Picker::P2cPeakEwma),
    )
    .unwrap();
    assert_eq!(balance.config().failure_penalty(), PENALTY);
    settle(&balance, version(1)).await;

    let mut failing = 0u64;
    for i in 0..200 {
        let response = send(&balance).await.unwrap();
        let by = served_by(&response);
        let status = response.status();
        body_text(response).await;
        if by == addr(1) {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            failing += 1;
            let snapshot = balance.snapshot();
            let endpoint = snapshot.endpoint(addr(1)).unwrap();
            assert_eq!(endpoint.failures, failing, "request {i}");
            assert_eq!(endpoint.requests, failing, "request {i}");
            assert!(
                endpoint.rtt_estimate >= PENALTY,
                "request {i}: a failure in 0 ms left an estimate of {:?}",
                endpoint.rtt_estimate
            );
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    let snapshot = balance.snapshot();
    let healthy = snapshot.endpoint(addr(2)).unwrap();
    assert_eq!(healthy.failures, 0);
    assert_eq!(failing + healthy.requests, 200);
    // Both start at 30 ms, so the failing one is tried early; after its first 503 its 5 s
    // estimate would need ~55 s of decay to compete with 20 ms, and the run lasts ~4 s.
    assert!(failing >= 1, "the failing endpoint was never tried");
    assert!(failing <= 2, "the failing endpoint got {failing} of 200");
}

// ---------------------------------------------------------------------------------------------
// 10. Weights
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn weighted_picks_follow_the_weights() {
    let (mocks, _held) = mocks(healthy);
    let weights = [(1u16, 1u32), (2, 2), (3, 7)];
    let endpoints = weights.map(|(port, weight)| ep(port).with_weight(weight));
    let balance = Balance::new(
        discover::fixed(endpoints).unwrap(),
        factory(&mocks),
        config(Picker::Weighted),
    )
    .unwrap();
    settle(&balance, version(1)).await;

    const N: usize = 10_000;
    let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
    for _ in 0..N {
        *counts.entry(round_trip(&balance).await).or_insert(0) += 1;
    }
    let snapshot = balance.snapshot();
    for (port, weight) in weights {
        let p = f64::from(weight) / 10.0;
        let expected = N as f64 * p;
        let sigma = (N as f64 * p * (1.0 - p)).sqrt();
        let got = counts.get(&addr(port)).copied().unwrap_or(0);
        assert!(
            (got as f64 - expected).abs() < 4.0 * sigma,
            "weight {weight}: {got} picks, expected {expected} ± {:.0}",
            4.0 * sigma
        );
        assert_eq!(snapshot.endpoint(addr(port)).unwrap().requests, got as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// 11. P2C over distinct pairs, through the service
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn p2c_never_picks_the_busier_of_two_endpoints() {
    for picker in [Picker::P2cPeakEwma, Picker::P2cLeastRequest] {
        let (pusher, discover) = discover::push();
        pusher.set(vec![ep(1)]).unwrap();
        let (mocks, mut held) = mocks(|a| Behavior {
            hold: a == addr(1),
            ..Behavior::default()
        });
        let balance = Balance::new(discover, factory(&mocks), config(picker)).unwrap();
        settle(&balance, version(1)).await;

        // Five requests held in flight on endpoint 1, the only one so far.
        let mut busy = Vec::new();
        for _ in 0..5 {
            let response = send(&balance).await.unwrap();
            assert_eq!(served_by(&response), addr(1), "{picker:?}");
            busy.push((response, held.try_recv().unwrap().body));
        }
        pusher.insert(ep(2)).unwrap();
        let snapshot = settle(&balance, version(2)).await;
        assert_eq!(snapshot.endpoint(addr(1)).unwrap().in_flight, 5);
        assert_eq!(snapshot.endpoint(addr(2)).unwrap().in_flight, 0);

        for i in 0..1_000 {
            assert_eq!(
                round_trip(&balance).await,
                addr(2),
                "{picker:?}, request {i}"
            );
        }
        let snapshot = balance.snapshot();
        assert_eq!(snapshot.endpoint(addr(1)).unwrap().requests, 5);
        assert_eq!(snapshot.endpoint(addr(2)).unwrap().requests, 1_000);

        // Releasing the held bodies ends their requests.
        for (response, sender) in busy {
            drop(sender);
            assert_eq!(body_text(response).await, "");
        }
        assert_eq!(balance.snapshot().endpoint(addr(1)).unwrap().in_flight, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Errors name the endpoint; responses carry ServedBy
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_inner_error_becomes_an_endpoint_error_naming_the_endpoint() {
    let (mocks, _held) = mocks(|a| Behavior {
        error: match a.port() {
            1 => Some(io::ErrorKind::ConnectionReset),
            2 => Some(io::ErrorKind::ConnectionRefused),
            _ => None,
        },
        ..Behavior::default()
    });
    let (pusher, discover) = discover::push();
    pusher.set(vec![ep(1)]).unwrap();
    let balance = Balance::new(discover, factory(&mocks), config(Picker::P2cPeakEwma)).unwrap();
    settle(&balance, version(1)).await;

    let error = send(&balance).await.unwrap_err();
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .unwrap_or_else(|| panic!("expected EndpointError, got {error:?}"));
    assert_eq!(endpoint_error.endpoint(), addr(1));
    assert_eq!(endpoint_error.kind(), EndpointErrorKind::Request);
    assert!(!endpoint_error.is_connect());
    assert_eq!(
        endpoint_error.inner().to_string(),
        "mock 127.0.0.1:1 failed"
    );
    let message = error.to_string();
    assert_eq!(
        message,
        "endpoint 127.0.0.1:1: request failed: mock 127.0.0.1:1 failed"
    );
    let snapshot = balance.snapshot();
    let endpoint = snapshot.endpoint(addr(1)).unwrap();
    assert_eq!((endpoint.requests, endpoint.failures), (1, 1));
    assert_eq!(endpoint.in_flight, 0);
    assert!(
        endpoint.rtt_estimate >= PENALTY,
        "{:?}",
        endpoint.rtt_estimate
    );

    // A refused connection is reported as a connect error.
    pusher.set(vec![ep(2)]).unwrap();
    settle(&balance, version(2)).await;
    let error = send(&balance).await.unwrap_err();
    let endpoint_error = error.downcast_ref::<EndpointError>().unwrap();
    assert_eq!(endpoint_error.endpoint(), addr(2));
    assert!(endpoint_error.is_connect());
    assert!(
        error.to_string().contains("127.0.0.1:2: connection failed"),
        "{error}"
    );

    // A success carries the endpoint that served it.
    pusher.set(vec![ep(3)]).unwrap();
    settle(&balance, version(3)).await;
    let response = send(&balance).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedBy>(),
        Some(&ServedBy(addr(3)))
    );
    assert_eq!(body_text(response).await, "127.0.0.1:3");
}

// ---------------------------------------------------------------------------------------------
// 13. As a layer; clones share state
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn balance_layer_in_a_service_builder_and_clones_share_state() {
    let (mocks, _held) = mocks(healthy);
    let layer = BalanceLayer::with_config(
        discover::fixed(["127.0.0.1:1", "127.0.0.1:2"]).unwrap(),
        config(Picker::RoundRobin),
    );
    let balance = ServiceBuilder::new().layer(layer).service(factory(&mocks));
    settle(&balance, version(1)).await;
    assert_eq!(mocks.made(), 2);

    let clone = balance.clone();
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(round_trip(&clone).await);
    }
    assert_eq!(served, [addr(1), addr(2), addr(1), addr(2)]);
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.total_requests(), 4);
    assert_eq!(snapshot.endpoint(addr(1)).unwrap().requests, 2);
    assert_eq!(snapshot.endpoint(addr(2)).unwrap().requests, 2);

    // The round-robin position is shared too, and so is the table: no second driver.
    assert_eq!(round_trip(&balance).await, addr(1));
    assert_eq!(round_trip(&clone).await, addr(2));
    assert_eq!(clone.snapshot().total_requests(), 6);
    assert_eq!(mocks.made(), 2);
}

// ---------------------------------------------------------------------------------------------
// 14. Outside a runtime
// ---------------------------------------------------------------------------------------------

#[test]
fn building_outside_a_runtime_fails_but_a_layered_balancer_starts_at_first_use() {
    let (mocks, _held) = mocks(healthy);
    let result = Balance::new(
        discover::fixed([addr(1)]).unwrap(),
        factory(&mocks),
        config(Picker::P2cPeakEwma),
    );
    assert_eq!(result.unwrap_err(), BuildError::NoRuntime);
    assert_eq!(mocks.made(), 0);

    let layer = BalanceLayer::with_config(
        discover::fixed([addr(1), addr(2)]).unwrap(),
        config(Picker::P2cPeakEwma),
    );
    let balance = layer.layer(factory(&mocks));
    assert_eq!(balance.snapshot().table_version, 0);
    assert_eq!(mocks.made(), 0, "no driver runs without a runtime");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let start = Instant::now();
        let response = send(&balance).await.expect("served once the driver runs");
        assert_eq!(start.elapsed(), Duration::ZERO);
        let by = served_by(&response);
        assert!(by == addr(1) || by == addr(2), "{by}");
        assert_eq!(body_text(response).await, by.to_string());
        let snapshot = balance.snapshot();
        assert_eq!(snapshot.table_version, 1);
        assert_eq!(snapshot.total_requests(), 1);
    });
    assert_eq!(mocks.made(), 2);
}

// ---------------------------------------------------------------------------------------------
// Extra: the driver stops with the last clone
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dropping_every_clone_stops_the_discovery_driver() {
    let (pusher, discover) = discover::push();
    let (mocks, _held) = mocks(healthy);
    let balance = Balance::new(discover, factory(&mocks), config(Picker::P2cPeakEwma)).unwrap();
    let clone = balance.clone();
    pusher.set(vec![ep(1)]).unwrap();
    settle(&balance, version(1)).await;

    drop(balance);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // One clone left: the driver still runs.
    pusher.set(vec![ep(1), ep(2)]).unwrap();
    settle(&clone, version(2)).await;

    drop(clone);
    let mut closed = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if pusher.set(vec![ep(3)]) == Err(DiscoverError::Closed) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the driver kept the source after the last clone was dropped"
    );
    assert_eq!(mocks.made(), 2);
}
