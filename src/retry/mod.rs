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
//! Like the balancer, the retry service is always ready and clones its inner service per
//! attempt, so it needs `S: Clone`.
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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::util::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

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

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The retrying service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    /// The retry counters, shared with every clone and every service of the same layer.
    pub fn snapshot(&self) -> RetrySnapshot {
        self.shared.snapshot()
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

/// The future returned by [`Retry`].
pub type ResponseFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

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
    type Future = ResponseFuture<Response<RB>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt drives a clone of the inner service to readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = tracing::debug_span!("retry", attempts = tracing::field::Empty);
        Box::pin(run(Arc::clone(&self.shared), self.inner.clone(), request).instrument(span))
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

async fn run<S, B, RB>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<B>,
) -> Result<Response<RB>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + Unpin,
{
    let policy = &shared.policy;
    let stats = &shared.stats;
    bump(&stats.requests);
    policy.budget.on_request();

    let (parts, body) = request.into_parts();
    let deadline = policy.deadline.map(|d| Instant::now() + d);
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
    let (body, mut replayer) = ReplayBody::first(body, policy.replay_cap);
    let mut request = Request::from_parts(parts, body);
    let mut tried = TriedEndpoints::new();
    let mut attempt = 1u32;
    // gRFC A6: a server pushback restarts the backoff's exponent.
    let mut retries_since_pushback = 0u32;

    loop {
        if let Some(per_try) = policy.per_try_timeout {
            // Not clamped to the overall deadline: when both fall due, the deadline must win
            // and say so, rather than the attempt's timeout.
            request
                .extensions_mut()
                .insert(AttemptDeadline(Instant::now() + per_try));
        }
        let sent = inner.clone().oneshot(request);
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                Ok(result) => result,
                Err(_) => {
                    bump(&stats.deadline_reached);
                    return Err(deadline_exceeded(policy, attempt, &tried));
                }
            },
            None => sent.await,
        };
        let result = result.map_err(Into::into);

        let (verdict, endpoint) = match &result {
            Ok(response) => (
                policy.judge_response(response, method_retryable, grpc),
                response.extensions().get::<ServedBy>().map(|s| s.0),
            ),
            Err(error) => (
                policy.judge_error(error, method_retryable),
                error
                    .downcast_ref::<EndpointError>()
                    .map(EndpointError::endpoint),
            ),
        };
        if let Some(endpoint) = endpoint {
            tried.insert(endpoint);
        }
        let after = match verdict {
            Verdict::Final => {
                if result.as_ref().is_ok_and(policy::succeeded) {
                    policy.budget.on_success();
                }
                tracing::Span::current().record("attempts", attempt);
                return result;
            }
            Verdict::Refused => {
                policy.budget.on_failure();
                bump(&stats.refused_by_server);
                tracing::debug!(attempt, ?endpoint, "the server asked not to retry");
                return give_up(result, attempt);
            }
            Verdict::Retry { after } => {
                policy.budget.on_failure();
                after
            }
        };
        if attempt >= policy.max_attempts {
            bump(&stats.exhausted);
            tracing::debug!(attempt, ?endpoint, "attempts exhausted");
            return give_up(result, attempt);
        }
        let Some(template) = &template else {
            return give_up(result, attempt);
        };
        let Some(body) = replayer.next() else {
            bump(&stats.not_replayable);
            tracing::debug!(
                attempt,
                ?endpoint,
                capped = replayer.is_capped(),
                "not retried: the request body cannot be sent again"
            );
            return give_up(result, attempt);
        };
        let delay = match after {
            Some(delay) => {
                retries_since_pushback = 0;
                delay
            }
            None => {
                retries_since_pushback += 1;
                policy.backoff.delay(retries_since_pushback, &shared.rng)
            }
        };
        if let Some(deadline) = deadline
            && Instant::now() + delay >= deadline
        {
            bump(&stats.deadline_reached);
            tracing::debug!(
                attempt,
                ?delay,
                "not retried: the backoff would pass the deadline"
            );
            return give_up(result, attempt);
        }
        if !policy.budget.try_retry() {
            bump(&stats.budget_denied);
            tracing::debug!(attempt, ?endpoint, "not retried: retry budget exhausted");
            return give_up(result, attempt);
        }
        tracing::debug!(attempt, ?endpoint, ?delay, "retrying");
        // The failed response is dropped before the wait, releasing its connection.
        drop(result);
        tokio::time::sleep(delay).await;
        request = template.build(body, attempt, grpc, &tried);
        attempt += 1;
        bump(&stats.retries);
    }
}

fn give_up<R>(result: Result<R, BoxError>, attempts: u32) -> Result<R, BoxError> {
    tracing::Span::current().record("attempts", attempts);
    result
}

fn deadline_exceeded(policy: &RetryPolicy, attempts: u32, tried: &TriedEndpoints) -> BoxError {
    let last: Option<SocketAddr> = tried.as_slice().last().copied();
    tracing::Span::current().record("attempts", attempts);
    Box::new(DeadlineExceeded::new(
        policy.deadline.unwrap_or_default(),
        attempts,
        last,
    ))
}
