//! Retries bounded by budgets, with body replay and endpoint avoidance.
//!
//! [`RetryLayer`] sits outside the balancer: `Retry → Balance → endpoint client`. For each
//! request it:
//!
//! 1. deposits into the [`budget`] and wraps the body in a [`ReplayBody`];
//! 2. sends the attempt; the balancer records which endpoint served it
//!    ([`ServedBy`]) or names it in its error;
//! 3. asks the [`RetryPolicy`] whether the outcome is a failure worth retrying, then whether
//!    attempts are left, the body can be sent again and the budget allows a retry; if any says
//!    no, the last real response or error is returned as it is, and counted;
//! 4. waits the backoff (or what the server asked for with `Retry-After` or
//!    `grpc-retry-pushback-ms`), and sends the same bytes again with the endpoints already tried
//!    in [`TriedEndpoints`], so the balancer picks another endpoint while one is available
//!    (Envoy's previous-hosts behaviour). gRPC retries carry `grpc-previous-rpc-attempts`.
//!
//! A [per-try timeout](RetryPolicyBuilder::per_try_timeout) bounds each attempt until its
//! response headers (enforced by the balancer, whose error names the endpoint); a
//! [deadline](RetryPolicyBuilder::deadline) bounds the whole request, backoffs included, and
//! fails with [`DeadlineExceeded`].
//!
//! Like the balancer, the retry service is always ready: it sends a first attempt through its
//! inner service as soon as that is ready, and each retry through a clone of it, so it needs
//! `S: Clone`.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use proxyless::balance::{BalanceLayer, ServedBy};
//! use proxyless::discover::{self, Endpoint};
//! use proxyless::retry::{ReplayBody, RetryLayer, RetryPolicy};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), proxyless::BoxError> {
//! // Endpoint :1 always answers 503; the retry goes to :2.
//! let make = |endpoint: &Endpoint| {
//!     let port = endpoint.addr().port();
//!     service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| async move {
//!         let status = if port == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, Infallible>(Response::builder().status(status).body(Full::<Bytes>::default()).unwrap())
//!     })
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::default()))
//!     .layer(BalanceLayer::new(discover::fixed(["127.0.0.1:1", "127.0.0.1:2"])?))
//!     .service(make);
//! for _ in 0..10 {
//!     let rsp = svc.clone().oneshot(Request::new(Full::default())).await?;
//!     assert_eq!(rsp.status(), StatusCode::OK);
//!     assert_eq!(rsp.extensions().get::<ServedBy>().unwrap().0.port(), 2);
//! }
//! # Ok(()) }
//! ```

mod backoff;
pub mod budget;
mod policy;
mod replay;

pub use backoff::Backoff;
pub use budget::{GrpcThrottle, RetryBudget, TpsBudget, Unlimited};
pub use policy::{Budget, RetryPolicy, RetryPolicyBuilder};
pub use replay::ReplayBody;
use replay::Replayer;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::util::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::balance::{AttemptDeadline, ServedBy, TriedEndpoints};
use crate::error::{DeadlineExceeded, EndpointError};
use crate::rng::Rng;
use crate::telemetry::RetrySnapshot;
use policy::Verdict;

/// A tower [`Layer`] that retries failed attempts under a [`RetryPolicy`].
///
/// Every service made by one layer shares its budget and counters.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer applying `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        let rng = match policy.seed {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        Self {
            shared: Arc::new(Shared {
                policy,
                rng,
                stats: Stats::default(),
            }),
        }
    }

    /// The counters of every service made by this layer.
    pub fn snapshot(&self) -> RetrySnapshot {
        self.shared.snapshot()
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            retries: Arc::new(ForRetries {
                service: tokio::sync::Mutex::new(inner.clone()),
                shared: Arc::clone(&self.shared),
            }),
            inner,
        }
    }
}

/// The retrying service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    retries: Arc<ForRetries<S>>,
}

/// What a response future needs beyond its first attempt, behind one reference count.
#[derive(Debug)]
struct ForRetries<S> {
    /// Cloned for each retry, so that a request that is not retried clones no service. In an
    /// async mutex, only locked to clone, so that futures are `Send` without asking `S: Sync`.
    service: tokio::sync::Mutex<S>,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    /// The retry counters, shared with every clone and every service of the same layer.
    pub fn snapshot(&self) -> RetrySnapshot {
        self.retries.shared.snapshot()
    }

    /// The service inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    rng: Rng,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_denied: AtomicU64,
    exhausted: AtomicU64,
    not_replayable: AtomicU64,
    refused_by_server: AtomicU64,
    deadline_reached: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    fn snapshot(&self) -> RetrySnapshot {
        let s = &self.stats;
        RetrySnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            budget_denied: s.budget_denied.load(Ordering::Relaxed),
            exhausted: s.exhausted.load(Ordering::Relaxed),
            not_replayable: s.not_replayable.load(Ordering::Relaxed),
            refused_by_server: s.refused_by_server.load(Ordering::Relaxed),
            deadline_reached: s.deadline_reached.load(Ordering::Relaxed),
            budget_available: self.policy.budget.available(),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + Unpin + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // `call` checks the inner service's readiness for the first attempt (the future waits
        // for it if need be), and each retry drives its own clone to readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = tracing::debug_span!("retry", attempts = tracing::field::Empty);
        if tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime the inner service may be unable to start an attempt (the
            // balancer makes timers and tasks): the request waits for the future's first poll,
            // which a runtime drives.
            return ResponseFuture {
                state: State::Start {
                    request: Some(request),
                },
                service: Some(self.inner.clone()),
                retries: Arc::clone(&self.retries),
                attempts: None,
                timeout: None,
                span,
            };
        }
        let entered = span.enter();
        let mut attempts = None;
        let request = Attempts::start(&self.retries.shared, request, &mut attempts);
        // A ready service (the balancer always is) takes the first attempt right away, so the
        // future starts out polling it. One that is not ready moves into the future, which polls
        // it again with the caller's waker: it may hold a reserved slot (a semaphore permit
        // request, say) that only it can use. A fresh clone takes its place here.
        let (state, service) = match self
            .inner
            .poll_ready(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(Ok(())) => {
                let future = self.inner.call(request);
                (State::Called { future }, None)
            }
            // Judged like the inner service's own errors: the request was never sent, and
            // dropping it hands its body back for a retry.
            Poll::Ready(Err(error)) => {
                // A service that failed readiness is done with (tower's contract): later
                // requests start from the layer's own copy, as retries do.
                if let Ok(pristine) = self.retries.service.try_lock() {
                    self.inner = pristine.clone();
                }
                let error = Some(error.into());
                (State::Failed { error }, None)
            }
            Poll::Pending => {
                let request = Some(request);
                let fresh = self.inner.clone();
                let waiting = std::mem::replace(&mut self.inner, fresh);
                (State::NotReady { request }, Some(waiting))
            }
        };
        drop(entered);
        ResponseFuture {
            state,
            service,
            retries: Arc::clone(&self.retries),
            attempts,
            timeout: None,
            span,
        }
    }
}

type BoxFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future returned by [`Retry`].
    ///
    /// Inside a runtime, [`Retry::call`] hands the first attempt to the inner service at once if
    /// it is ready (so the request is counted, charged to the budget and on its way even if
    /// this future is dropped unpolled, and its deadline runs from `call`); otherwise this
    /// future does on its first poll. The attempt runs inside this future without allocating.
    /// Only a retry moves the request's state into a boxed future that waits the backoff and
    /// sends the next attempts.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
        // The service of a first attempt that was not sent from `call`.
        service: Option<S>,
        retries: Arc<ForRetries<S>>,
        // Taken by the retry loop.
        attempts: Option<Attempts<B>>,
        // Made on the first wait, as a request that is answered at once needs no timer; boxed
        // to keep every future small.
        timeout: Option<Pin<Box<tokio::time::Sleep>>>,
        span: tracing::Span,
    }

    impl<S, B> PinnedDrop for ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        fn drop(this: Pin<&mut Self>) {
            // Whatever an attempt does while it is dropped belongs to this request's span.
            let mut this = this.project();
            let _entered = this.span.enter();
            this.state.set(State::Done);
            *this.service = None;
            *this.attempts = None;
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Start {
            request: Option<Request<B>>,
        },
        Failed {
            error: Option<BoxError>,
        },
        NotReady {
            request: Option<Request<ReplayBody<B>>>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
        Retrying {
            future: BoxFuture<S::Response>,
        },
        Done,
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + Unpin + 'static,
    RB: Send + 'static,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Start { request } => {
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let request = Attempts::start(&this.retries.shared, request, this.attempts);
                    // Sent from `NotReady`, like a request whose service was not ready in `call`.
                    this.state.set(State::NotReady {
                        request: Some(request),
                    });
                    continue;
                }
                StateProj::Failed { error } => match error.take() {
                    Some(error) => Err(error),
                    None => return Poll::Ready(Err(polled_after_completion())),
                },
                StateProj::NotReady { request } => {
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    match send(this.state.as_mut(), this.service, request, cx) {
                        Sent::Called => continue,
                        Sent::Failed(error) => Err(error),
                        Sent::Parked => {
                            return timed_out(
                                this.state,
                                this.timeout,
                                this.service,
                                this.attempts,
                                &this.retries.shared,
                                cx,
                            );
                        }
                    }
                }
                StateProj::Called { future } => match future.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => {
                        return timed_out(
                            this.state,
                            this.timeout,
                            this.service,
                            this.attempts,
                            &this.retries.shared,
                            cx,
                        );
                    }
                },
                StateProj::Retrying { future } => {
                    let result = ready!(future.as_mut().poll(cx));
                    // The async loop must not be polled again once it has finished.
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            };
            // Drop the attempt (and with it a request body the inner service held on to,
            // which the replay may need) before deciding.
            this.state.set(State::Done);
            *this.timeout = None;
            let Some(attempts) = this.attempts.as_mut() else {
                return Poll::Ready(Err(polled_after_completion()));
            };
            match attempts.after(&this.retries.shared, result) {
                Next::Return(result) => {
                    *this.attempts = None;
                    *this.service = None;
                    return Poll::Ready(result);
                }
                Next::Retry { request, delay } => {
                    *this.service = None;
                    let Some(attempts) = this.attempts.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let retries = Arc::clone(this.retries);
                    let future = Box::pin(retry_loop(retries, attempts, request, delay));
                    this.state.set(State::Retrying { future });
                }
            }
        }
    }
}

/// What became of a request handed to [`send`].
enum Sent {
    /// The inner service took it: the state is `Called`.
    Called,
    /// The inner service failed before taking it; the request is dropped.
    Failed(BoxError),
    /// The inner service is not ready: the state is `NotReady`, holding the request.
    Parked,
}

/// Sends the first attempt as soon as the inner service is ready.
fn send<S, B>(
    mut state: Pin<&mut State<S, B>>,
    service: &mut Option<S>,
    request: Request<ReplayBody<B>>,
    cx: &mut Context<'_>,
) -> Sent
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError>,
{
    let Some(service) = service.as_mut() else {
        return Sent::Failed(polled_after_completion());
    };
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            let future = service.call(request);
            state.set(State::Called { future });
            Sent::Called
        }
        // Judged like the inner service's own errors: the request was never sent, and
        // dropping it hands its body back for a retry.
        Poll::Ready(Err(error)) => Sent::Failed(error.into()),
        Poll::Pending => {
            state.set(State::NotReady {
                request: Some(request),
            });
            Sent::Parked
        }
    }
}

/// Fails the request if its deadline has passed while its first attempt is pending.
fn timed_out<S, B, R>(
    mut state: Pin<&mut State<S, B>>,
    timeout: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    service: &mut Option<S>,
    attempts: &mut Option<Attempts<B>>,
    shared: &Shared,
    cx: &mut Context<'_>,
) -> Poll<Result<R, BoxError>>
where
    S: Service<Request<ReplayBody<B>>>,
{
    let Some(deadline) = attempts.as_ref().and_then(|a| a.deadline) else {
        return Poll::Pending;
    };
    let sleep = timeout.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.as_mut().poll(cx).is_pending() {
        return Poll::Pending;
    }
    state.set(State::Done);
    *timeout = None;
    *service = None;
    let Some(attempts) = attempts.take() else {
        return Poll::Ready(Err(polled_after_completion()));
    };
    bump(&shared.stats.deadline_reached);
    Poll::Ready(Err(attempts.deadline_exceeded(shared)))
}

fn polled_after_completion() -> BoxError {
    "retry response future polled after completion".into()
}

/// Waits the backoff and sends the second and later attempts.
async fn retry_loop<S, B, RB>(
    retries: Arc<ForRetries<S>>,
    mut attempts: Attempts<B>,
    mut request: Request<ReplayBody<B>>,
    mut delay: Duration,
) -> Result<Response<RB>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + Unpin,
{
    let shared = &retries.shared;
    loop {
        tokio::time::sleep(delay).await;
        attempts.attempt += 1;
        bump(&shared.stats.retries);
        if let Some(per_try) = shared.policy.per_try_timeout {
            // Not clamped to the overall deadline: when both fall due, the deadline must win
            // and say so, rather than the attempt's timeout.
            request
                .extensions_mut()
                .insert(AttemptDeadline(Instant::now() + per_try));
        }
        let service = retries.service.lock().await.clone();
        let sent = service.oneshot(request);
        let result = match attempts.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                Ok(result) => result,
                Err(_) => {
                    bump(&shared.stats.deadline_reached);
                    return Err(attempts.deadline_exceeded(shared));
                }
            },
            None => sent.await,
        };
        match attempts.after(shared, result.map_err(Into::into)) {
            Next::Return(result) => return result,
            Next::Retry {
                request: next,
                delay: wait,
            } => {
                request = next;
                delay = wait;
            }
        }
    }
}

/// What a retry needs to rebuild the request.
struct Template {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Template {
    fn build<B>(
        &self,
        body: B,
        previous_attempts: u32,
        grpc: bool,
        tried: &TriedEndpoints,
    ) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        if grpc {
            request.headers_mut().insert(
                "grpc-previous-rpc-attempts",
                HeaderValue::from(previous_attempts),
            );
        }
        request.extensions_mut().insert(tried.clone());
        request
    }
}

/// One request's retry state, from one attempt to the next.
struct Attempts<B> {
    template: Option<Template>,
    replayer: Replayer<B>,
    tried: TriedEndpoints,
    deadline: Option<Instant>,
    grpc: bool,
    method_retryable: bool,
    /// The attempt being sent, from 1.
    attempt: u32,
    /// gRFC A6: a server pushback restarts the backoff's exponent.
    retries_since_pushback: u32,
}

/// What follows an attempt.
// The request of a retry is moved on at once; boxing it would only add an allocation per retry.
#[allow(clippy::large_enum_variant)]
enum Next<B, R> {
    Return(Result<R, BoxError>),
    Retry {
        request: Request<ReplayBody<B>>,
        delay: Duration,
    },
}

impl<B: http_body::Body> Attempts<B> {
    /// Counts the request, sets up its retry state in `slot`, and makes its first attempt.
    fn start(
        shared: &Shared,
        request: Request<B>,
        slot: &mut Option<Self>,
    ) -> Request<ReplayBody<B>> {
        let policy = &shared.policy;
        bump(&shared.stats.requests);
        policy.budget.on_request();

        let (parts, body) = request.into_parts();
        // The clock is read only for a setting that needs it, and at most once.
        let now =
            (policy.deadline.is_some() || policy.per_try_timeout.is_some()).then(Instant::now);
        let deadline = policy.deadline.zip(now).map(|(d, now)| now + d);
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method_retryable = policy.retries_method(&parts.method);
        let template = (policy.max_attempts > 1).then(|| Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        });
        let (body, replayer) = ReplayBody::first(body, policy.replay_cap);
        let mut request = Request::from_parts(parts, body);
        if let Some((per_try, now)) = policy.per_try_timeout.zip(now) {
            // Not clamped to the overall deadline: when both fall due, the deadline must win
            // and say so, rather than the attempt's timeout.
            request
                .extensions_mut()
                .insert(AttemptDeadline(now + per_try));
        }
        *slot = Some(Self {
            template,
            replayer,
            tried: TriedEndpoints::new(),
            deadline,
            grpc,
            method_retryable,
            attempt: 1,
            retries_since_pushback: 0,
        });
        request
    }

    /// Decides what follows the current attempt's outcome: return it, or send the request again
    /// after a delay.
    fn after<RB>(
        &mut self,
        shared: &Shared,
        result: Result<Response<RB>, BoxError>,
    ) -> Next<B, Response<RB>> {
        let policy = &shared.policy;
        let stats = &shared.stats;
        let attempt = self.attempt;
        let verdict = match &result {
            Ok(response) => policy.judge_response(response, self.method_retryable, self.grpc),
            Err(error) => policy.judge_error(error, self.method_retryable),
        };
        if verdict == Verdict::Final {
            if result.as_ref().is_ok_and(policy::succeeded) {
                policy.budget.on_success();
            }
            tracing::Span::current().record("attempts", attempt);
            return Next::Return(result);
        }
        // Only a failure is logged with, or avoided by, its endpoint.
        let endpoint = match &result {
            Ok(response) => response.extensions().get::<ServedBy>().map(|s| s.0),
            Err(error) => error
                .downcast_ref::<EndpointError>()
                .map(EndpointError::endpoint),
        };
        let after = match verdict {
            Verdict::Final => return Next::Return(result),
            Verdict::Refused => {
                policy.budget.on_failure();
                bump(&stats.refused_by_server);
                tracing::debug!(attempt, ?endpoint, "the server asked not to retry");
                return Next::Return(give_up(result, attempt));
            }
            Verdict::Retry { after } => {
                policy.budget.on_failure();
                after
            }
        };
        if let Some(endpoint) = endpoint {
            self.tried.insert(endpoint);
        }
        if attempt >= policy.max_attempts {
            bump(&stats.exhausted);
            tracing::debug!(attempt, ?endpoint, "attempts exhausted");
            return Next::Return(give_up(result, attempt));
        }
        let Some(template) = &self.template else {
            return Next::Return(give_up(result, attempt));
        };
        let Some(body) = self.replayer.next() else {
            bump(&stats.not_replayable);
            tracing::debug!(
                attempt,
                ?endpoint,
                capped = self.replayer.is_capped(),
                "not retried: the request body cannot be sent again"
            );
            return Next::Return(give_up(result, attempt));
        };
        let delay = match after {
            Some(delay) => {
                self.retries_since_pushback = 0;
                delay
            }
            None => {
                self.retries_since_pushback += 1;
                policy
                    .backoff
                    .delay(self.retries_since_pushback, &shared.rng)
            }
        };
        if let Some(deadline) = self.deadline
            && Instant::now() + delay >= deadline
        {
            bump(&stats.deadline_reached);
            tracing::debug!(
                attempt,
                ?delay,
                "not retried: the backoff would pass the deadline"
            );
            return Next::Return(give_up(result, attempt));
        }
        if !policy.budget.try_retry() {
            bump(&stats.budget_denied);
            tracing::debug!(attempt, ?endpoint, "not retried: retry budget exhausted");
            return Next::Return(give_up(result, attempt));
        }
        tracing::debug!(attempt, ?endpoint, ?delay, "retrying");
        // The failed response is dropped here, before the wait, releasing its connection.
        drop(result);
        let request = template.build(body, attempt, self.grpc, &self.tried);
        Next::Retry { request, delay }
    }
}

impl<B> Attempts<B> {
    fn deadline_exceeded(&self, shared: &Shared) -> BoxError {
        let last: Option<SocketAddr> = self.tried.as_slice().last().copied();
        tracing::Span::current().record("attempts", self.attempt);
        Box::new(DeadlineExceeded::new(
            shared.policy.deadline.unwrap_or_default(),
            self.attempt,
            last,
        ))
    }
}

fn give_up<R>(result: Result<R, BoxError>, attempts: u32) -> Result<R, BoxError> {
    tracing::Span::current().record("attempts", attempts);
    result
}
