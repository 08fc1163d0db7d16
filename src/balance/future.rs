//! The response future: waits for an endpoint if there is none, then drives the request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tokio::time::{Instant, Sleep};
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

use super::ServedBy;
use super::body::{ResponseBody, Tracker};
use super::pick::NoPick;
use super::shared::{Picked, Shared};
use crate::BoxError;
use crate::classify::{LocalOrigin, Outcome};
use crate::error::EndpointError;
use std::sync::atomic::Ordering;

type WaitFuture<S> = Pin<Box<dyn Future<Output = Result<Picked<S>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future returned by [`Balance`](super::Balance).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        span: tracing::Span,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Waiting {
            wait: WaitFuture<S>,
            request: Option<Request<B>>,
            deadline: Option<Instant>,
        },
        Calling {
            #[pin]
            call: Oneshot<S, Request<B>>,
            addr: SocketAddr,
            tracker: Option<Tracker>,
            // Boxed: most requests have no attempt deadline and should not carry a timer.
            timeout: Option<Pin<Box<Sleep>>>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(
        picked: Picked<S>,
        request: Request<B>,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self {
        span.record("endpoint", tracing::field::display(picked.addr));
        Self {
            state: State::calling(picked, request, deadline),
            span,
        }
    }

    /// Waits for discovery; `driver` keeps the discovery driver running meanwhile, even if the
    /// balancer itself is dropped (as `oneshot` does once the request is handed over).
    pub(crate) fn waiting(
        shared: Arc<Shared<S>>,
        driver: Arc<dyn std::any::Any + Send + Sync>,
        avoid: Vec<SocketAddr>,
        request: Request<B>,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self
    where
        S: Clone + Send + Sync + 'static,
    {
        Self {
            state: State::Waiting {
                wait: Box::pin(async move {
                    let picked = wait_for_endpoint(shared, &avoid).await;
                    drop(driver);
                    picked
                }),
                request: Some(request),
                deadline,
            },
            span,
        }
    }

    pub(crate) fn failed(error: BoxError, span: tracing::Span) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            span,
        }
    }
}

impl<S, B> State<S, B>
where
    S: Service<Request<B>>,
{
    fn calling(picked: Picked<S>, request: Request<B>, deadline: Option<Instant>) -> Self {
        let addr = picked.addr;
        match Tracker::start(
            addr,
            picked.load,
            picked.health,
            picked.admission,
            picked.context,
            picked.now,
        ) {
            Ok(tracker) => State::Calling {
                tracker: Some(tracker),
                call: picked.service.oneshot(request),
                addr,
                timeout: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            },
            Err(overloaded) => {
                tracing::debug!(%overloaded, "shedding load");
                State::Failed {
                    error: Some(overloaded.into()),
                }
            }
        }
    }
}

/// How often a request waiting for an endpoint looks again when nothing woke it.
const HEALTH_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits up to the configured time for an endpoint to become available (discovery publishes
/// one, an ejected one returns, a breaker closes).
async fn wait_for_endpoint<S: Clone>(
    shared: Arc<Shared<S>>,
    avoid: &[SocketAddr],
) -> Result<Picked<S>, BoxError> {
    let start = Instant::now();
    let deadline = start + shared.config().no_endpoint_timeout();
    loop {
        let changed = shared.context.changed.notified();
        tokio::pin!(changed);
        // Register before looking, so a change published in between is not missed.
        changed.as_mut().enable();
        match shared.pick(avoid) {
            Ok(picked) => {
                tracing::debug!(waited = ?start.elapsed(), "an endpoint became available");
                return Ok(picked);
            }
            Err(NoPick::AtCapacity) => return Err(shared.overloaded().into()),
            Err(NoPick::Empty | NoPick::Unhealthy) => {}
        }
        // A breaker's open period ends with no event to wake on: look again now and then while
        // there are endpoints that may come back.
        let wake = if shared.table.load().len() > 0 {
            deadline.min(Instant::now() + HEALTH_RECHECK)
        } else {
            deadline
        };
        if tokio::time::timeout_at(wake, changed).await.is_err() && Instant::now() >= deadline {
            shared.failing_fast.store(true, Ordering::Relaxed);
            let error = shared.no_endpoint(start.elapsed());
            tracing::debug!(%error, "failing fast");
            return Err(error.into());
        }
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Output = Result<Response<ResponseBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    wait,
                    request,
                    deadline,
                } => {
                    let picked = ready!(wait.as_mut().poll(cx))?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    this.span
                        .record("endpoint", tracing::field::display(picked.addr));
                    let deadline = *deadline;
                    this.state.set(State::calling(picked, request, deadline));
                }
                StateProj::Calling {
                    call,
                    addr,
                    tracker,
                    timeout,
                } => {
                    let result = match call.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            let Some(sleep) = timeout else {
                                return Poll::Pending;
                            };
                            ready!(sleep.as_mut().poll(cx));
                            let Some(mut tracker) = tracker.take() else {
                                return Poll::Ready(Err(polled_after_completion()));
                            };
                            tracker.complete(
                                Outcome::LocalOrigin(LocalOrigin::Timeout),
                                Instant::now(),
                            );
                            let error = EndpointError::timeout(*addr, tracker.elapsed());
                            tracing::debug!(%error, "attempt timed out");
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    let Some(mut tracker) = tracker.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let now = Instant::now();
                            tracker.response(response.status(), response.headers(), now);
                            let (mut parts, body) = response.into_parts();
                            parts.extensions.insert(ServedBy(*addr));
                            Ok(Response::from_parts(
                                parts,
                                ResponseBody::new(body, tracker, now),
                            ))
                        }
                        Err(error) => {
                            let error = EndpointError::new(*addr, error.into());
                            tracker.error(&error, Instant::now());
                            tracing::debug!(%error, "endpoint failed");
                            Err(error.into())
                        }
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "balance response future polled after completion".into()
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
