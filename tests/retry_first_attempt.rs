//! The retry layer's first attempt, which runs inside its response future: empty bodies sent
//! again, answers that need no retry machinery, and inner services that are not ready at once.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use proxyless::BoxError;
use proxyless::balance::{BalanceLayer, ServedBy};
use proxyless::discover::{self, Endpoint};
use proxyless::retry::{Budget, ReplayBody, RetryBudget, RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the healthy endpoint saw of a request body.
#[derive(Debug, PartialEq, Eq)]
struct SeenBody {
    ended_before_reading: bool,
    exact_size: Option<u64>,
    bytes: Bytes,
    trailers: bool,
}

async fn empty_bodies_arrive_empty<B>(make_body: impl Fn() -> B)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let make = {
        let seen = Arc::clone(&seen);
        move |endpoint: &Endpoint| {
            let port = endpoint.addr().port();
            let seen = Arc::clone(&seen);
            service_fn(move |request: Request<ReplayBody<B>>| {
                let seen = Arc::clone(&seen);
                async move {
                    if port == 1 {
                        // Answers without reading the body, as a server failing early does.
                        let rsp = Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .body(Empty::<Bytes>::new())?;
                        return Ok::<_, BoxError>(rsp);
                    }
                    let body = request.into_body();
                    let ended_before_reading = body.is_end_stream();
                    let exact_size = body.size_hint().exact();
                    let collected = body.collect().await?;
                    seen.lock().unwrap().push(SeenBody {
                        ended_before_reading,
                        exact_size,
                        trailers: collected.trailers().is_some(),
                        bytes: collected.to_bytes(),
                    });
                    Ok(Response::new(Empty::<Bytes>::new()))
                }
            })
        }
    };
    let layer = RetryLayer::new(RetryPolicy::builder().seed(7).build().unwrap());
    let balance =
        BalanceLayer::new(discover::fixed(["127.0.0.1:1", "127.0.0.1:2"]).unwrap()).layer(make);
    let svc = layer.layer(balance);
    for _ in 0..20 {
        let request = Request::get("http://svc/").body(make_body()).unwrap();
        let rsp = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.extensions().get::<ServedBy>().unwrap().0.port(), 2);
    }
    assert!(
        layer.snapshot().retries > 0,
        "some first attempts went to the failing endpoint"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    for body in seen.iter() {
        assert_eq!(
            *body,
            SeenBody {
                ended_before_reading: true,
                exact_size: Some(0),
                bytes: Bytes::new(),
                trailers: false,
            }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_retried_on_another_endpoint_arrives_empty() {
    empty_bodies_arrive_empty(Empty::<Bytes>::new).await;
    empty_bodies_arrive_empty(Full::<Bytes>::default).await;
    empty_bodies_arrive_empty(|| Full::new(Bytes::new())).await;
}

/// Counts what the retry layer asks of its budget.
#[derive(Debug, Default)]
struct CountingBudget {
    requests: AtomicU32,
    successes: AtomicU32,
    failures: AtomicU32,
    retries_asked: AtomicU32,
}

impl RetryBudget for CountingBudget {
    fn on_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn on_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn on_success(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry(&self) -> bool {
        self.retries_asked.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn available(&self) -> f64 {
        f64::INFINITY
    }
}

#[test]
fn an_answer_that_needs_no_retry_is_ready_on_the_first_poll_without_a_runtime() {
    // Outside any runtime, a retry (its backoff) or a deadline timer could not even be made:
    // an attempt that succeeds at once must need neither.
    let budget = Arc::new(CountingBudget::default());
    let layer = RetryLayer::new(
        RetryPolicy::builder()
            .deadline(Duration::from_secs(1))
            .per_try_timeout(Duration::from_millis(100))
            .budget(Budget::Custom(budget.clone()))
            .build()
            .unwrap(),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = Arc::clone(&calls);
        service_fn(move |_: Request<ReplayBody<Empty<Bytes>>>| {
            calls.fetch_add(1, Ordering::Relaxed);
            ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        })
    };
    let mut svc = layer.layer(inner);
    for round in 1..=3 {
        let future = svc.call(Request::new(Empty::new()));
        let rsp = future
            .now_or_never()
            .expect("ready on the first poll")
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::Relaxed), round);
    }
    assert_eq!(budget.requests.load(Ordering::Relaxed), 3);
    assert_eq!(budget.successes.load(Ordering::Relaxed), 3);
    assert_eq!(budget.failures.load(Ordering::Relaxed), 0);
    assert_eq!(budget.retries_asked.load(Ordering::Relaxed), 0);
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.requests, snapshot.retries), (3, 0));
}

/// A service that is not ready until opened, and fails its first readiness check if told to.
#[derive(Clone, Debug, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    fail_first_ready: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for Gate {
    type Response = Response<Empty<Bytes>>;
    type Error = BoxError;
    type Future = Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.fail_first_ready.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Err("not ready, and never will be".into()));
        }
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, request: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        // Full bodies of a replay or a never-polled first attempt are ready at once.
        let bytes = request
            .into_body()
            .collect()
            .now_or_never()
            .expect("a full body is ready")
            .expect("no body error")
            .to_bytes();
        self.bodies.lock().unwrap().push(bytes);
        ready(Ok(Response::new(Empty::new())))
    }
}

#[tokio::test(start_paused = true)]
async fn an_inner_service_not_ready_at_first_is_waited_for() {
    let gate = Gate::default();
    let layer = RetryLayer::new(RetryPolicy::default());
    let svc = layer.layer(gate.clone());
    let request = Request::post("/").body(Full::from("payload")).unwrap();
    let task = tokio::spawn(svc.oneshot(request));
    tokio::task::yield_now().await;
    assert!(!task.is_finished(), "the inner service is not ready");
    gate.open();
    let rsp = task.await.unwrap().unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(*gate.bodies.lock().unwrap(), [Bytes::from("payload")]);
    assert_eq!(layer.snapshot().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_is_judged_like_an_attempt_error() {
    // A GET's failed attempt is retried, with the body it never sent.
    let gate = Gate::default();
    gate.open();
    gate.fail_first_ready.store(true, Ordering::SeqCst);
    let layer = RetryLayer::new(RetryPolicy::builder().seed(3).build().unwrap());
    let request = Request::get("/").body(Full::from("query")).unwrap();
    let rsp = layer.layer(gate.clone()).oneshot(request).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(*gate.bodies.lock().unwrap(), [Bytes::from("query")]);
    assert_eq!(layer.snapshot().retries, 1);

    // A POST's is not: its error is returned as it is.
    gate.fail_first_ready.store(true, Ordering::SeqCst);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/")
        .body(Full::from("order"))
        .unwrap();
    let error = layer
        .layer(gate.clone())
        .oneshot(request)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "not ready, and never will be");
    assert_eq!(gate.bodies.lock().unwrap().len(), 1);
    assert_eq!(layer.snapshot().retries, 1);
}

#[test]
fn a_request_made_outside_a_runtime_is_sent_when_a_runtime_polls_it() {
    // The balancer makes a timer for the per-try timeout when it takes an attempt, which needs a
    // runtime: the retry layer must not hand it the attempt from a `call` made outside one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = RetryLayer::new(
        RetryPolicy::builder()
            .per_try_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let mut svc = {
        let _context = runtime.enter();
        let balance =
            BalanceLayer::new(discover::fixed(["127.0.0.1:1"]).unwrap()).layer(|_: &Endpoint| {
                service_fn(|_: Request<ReplayBody<Empty<Bytes>>>| async {
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                })
            });
        layer.layer(balance)
    };
    // Inside the runtime first, so that discovery has started.
    let warm_up = svc.clone().oneshot(Request::new(Empty::new()));
    assert_eq!(runtime.block_on(warm_up).unwrap().status(), StatusCode::OK);

    let future = svc.call(Request::new(Empty::new()));
    let rsp = runtime.block_on(future).unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.extensions().get::<ServedBy>().unwrap().0.port(), 1);
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.requests, snapshot.retries), (2, 0));
}

/// A concurrency limit of one, shaped like tower's `ConcurrencyLimit`: `poll_ready` queues for a
/// permit that only this instance can then use, and clones start with none.
struct LimitOfOne {
    semaphore: Arc<tokio::sync::Semaphore>,
    acquiring: Option<PermitFuture>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

type PermitFuture = std::pin::Pin<
    Box<
        dyn Future<Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send,
    >,
>;

impl Clone for LimitOfOne {
    fn clone(&self) -> Self {
        Self {
            semaphore: Arc::clone(&self.semaphore),
            acquiring: None,
            permit: None,
        }
    }
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for LimitOfOne {
    type Response = Response<Empty<Bytes>>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_none() {
            let semaphore = Arc::clone(&self.semaphore);
            let acquiring = self
                .acquiring
                .get_or_insert_with(|| Box::pin(semaphore.acquire_owned()));
            let permit = std::task::ready!(acquiring.as_mut().poll(cx))?;
            self.acquiring = None;
            self.permit = Some(permit);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        let permit = self.permit.take();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(permit);
            Ok(Response::new(Empty::new()))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_a_concurrency_slot_gets_it_when_one_frees() {
    let limit = LimitOfOne {
        semaphore: Arc::new(tokio::sync::Semaphore::new(1)),
        acquiring: None,
        permit: None,
    };
    let mut svc = RetryLayer::new(RetryPolicy::default()).layer(limit);
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    // The slot is taken: this one waits in its future for the permit it queued for.
    let second = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    let (first, second) = tokio::join!(first, tokio::time::timeout(Duration::from_secs(2), second));
    first.unwrap();
    second
        .expect("the waiting request got the freed slot")
        .unwrap();
    assert_eq!(svc.snapshot().retries, 0);
}
