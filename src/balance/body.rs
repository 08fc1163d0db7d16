//! The response body wrapper that finishes a request's accounting.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use std::net::SocketAddr;

use super::health::Health;
use super::shared::{Accounting, log_outlier_event};
use crate::breaker::{Admission, BreakerTransition};
use crate::classify::{LocalOrigin, Outcome};
use crate::error::Overloaded;
use crate::load::EndpointLoad;
use crate::outlier::OutlierEvent;
use std::sync::atomic::Ordering;

/// One request's accounting on its endpoint: holds its place in the in-flight count until
/// dropped, takes the round-trip sample once (at the first response frame), and records the
/// request's [`Outcome`] once, as soon as it is known.
pub(crate) struct Tracker {
    addr: SocketAddr,
    load: Arc<EndpointLoad>,
    health: Arc<Health>,
    admission: Admission,
    context: Arc<Accounting>,
    start: Instant,
    sampled: bool,
    outcome: Option<Outcome>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("start", &self.start)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Dispatches a request: takes a slot under the service's `max_requests` (or fails) and
    /// counts it in flight on its endpoint.
    pub(crate) fn start(
        addr: SocketAddr,
        load: Arc<EndpointLoad>,
        health: Arc<Health>,
        admission: Admission,
        context: Arc<Accounting>,
        now: Instant,
    ) -> Result<Self, Overloaded> {
        if let Err(overloaded) = context.try_acquire() {
            if admission == Admission::Probe {
                health.breaker.cancel_probe();
                context.health_changed();
            }
            return Err(overloaded);
        }
        load.start();
        Ok(Self {
            addr,
            load,
            health,
            admission,
            context,
            start: now,
            sampled: false,
            outcome: None,
        })
    }

    /// Time since dispatch.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// The first response frame arrived (or the body turned out empty): the round trip.
    fn first_frame(&mut self, now: Instant) {
        if !self.sampled {
            self.sampled = true;
            self.load.observe_success(now - self.start, now);
        }
    }

    /// Records the request's outcome, once; a failure is counted and charged at least the
    /// failure penalty instead of its round trip.
    pub(crate) fn complete(&mut self, outcome: Outcome, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        if outcome.is_failure() {
            self.sampled = true;
            self.load.observe_failure(now - self.start, now);
        }
        if let Some(transition) = self.health.breaker.record(outcome, self.admission, now) {
            log_transition(self.addr, transition, outcome);
            self.context.health_changed();
        }
        let hosts = self.context.hosts.load(Ordering::Relaxed);
        let detector = &self.context.detector;
        if let Some(event) = detector.record(&self.health.outlier, self.addr, outcome, hosts, now) {
            log_outlier_event(&event);
            if matches!(event, OutlierEvent::Ejected { .. }) {
                self.context.health_changed();
            }
        }
    }

    /// Classifies response headers, completing the request unless the trailers will decide.
    pub(crate) fn response(&mut self, status: StatusCode, headers: &HeaderMap, now: Instant) {
        if let Some(outcome) = self.context.classify.classify_response(status, headers) {
            self.complete(outcome, now);
        }
    }

    /// Classifies an error from the endpoint's client.
    pub(crate) fn error(&mut self, error: &(dyn std::error::Error + 'static), now: Instant) {
        let outcome = self.context.classify.classify_error(error);
        self.complete(outcome, now);
    }

    /// The response ended, with its trailers if it had any.
    fn end(&mut self, trailers: Option<&HeaderMap>, now: Instant) {
        self.first_frame(now);
        if self.outcome.is_none() {
            let outcome = self.context.classify.classify_end(trailers);
            self.complete(outcome, now);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.load.finish();
        self.context.release();
        if self.outcome.is_none() && self.admission == Admission::Probe {
            // The caller gave the probe up: let another request probe.
            self.health.breaker.cancel_probe();
            self.context.health_changed();
        }
    }
}

fn log_transition(addr: SocketAddr, transition: BreakerTransition, outcome: Outcome) {
    match transition {
        BreakerTransition::Opened { open_for, reason } => tracing::info!(
            endpoint = %addr,
            ?open_for,
            ?reason,
            ?outcome,
            "circuit breaker opened"
        ),
        BreakerTransition::Reopened { open_for } => tracing::debug!(
            endpoint = %addr,
            ?open_for,
            ?outcome,
            "circuit breaker probe failed; open again"
        ),
        BreakerTransition::Closed => {
            tracing::info!(endpoint = %addr, "circuit breaker probe succeeded; closed")
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from a balanced endpoint.
    ///
    /// It passes frames through unchanged. The request counts as in flight on its endpoint until
    /// this body ends or is dropped; the round-trip sample is taken at the first frame; a gRPC
    /// status in the trailers (or its absence) and body errors are classified.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        tracker: Option<Tracker>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps `inner`, whose headers arrived at `now`.
    pub(crate) fn new(inner: B, mut tracker: Tracker, now: Instant) -> Self {
        let tracker = if inner.is_end_stream() {
            tracker.end(None, now);
            None
        } else {
            Some(tracker)
        };
        Self { inner, tracker }
    }

    /// Takes the wrapped body; the request stops counting as in flight.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(tracker) = this.tracker {
            let now = Instant::now();
            match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => tracker.end(Some(trailers), now),
                    None if this.inner.is_end_stream() => tracker.end(None, now),
                    None => tracker.first_frame(now),
                },
                Some(Err(_)) => tracker.complete(Outcome::LocalOrigin(LocalOrigin::Reset), now),
                None => tracker.end(None, now),
            }
            if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
                *this.tracker = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
