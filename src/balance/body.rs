//! The response body wrapper that finishes a request's load accounting.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::load::EndpointLoad;

/// Holds one request's place in its endpoint's in-flight count until dropped, and records its
/// round trip once.
#[derive(Debug)]
pub(crate) struct Tracker {
    load: Arc<EndpointLoad>,
    start: Instant,
    sampled: bool,
}

impl Tracker {
    pub(crate) fn start(load: Arc<EndpointLoad>) -> Self {
        load.start();
        Self {
            load,
            start: Instant::now(),
            sampled: false,
        }
    }

    /// Time since dispatch.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Records a successful round trip, unless one was already recorded.
    pub(crate) fn success(&mut self) {
        if !self.sampled {
            self.sampled = true;
            let now = Instant::now();
            self.load.observe_success(now - self.start, now);
        }
    }

    /// Records a failure: counted, and charged at least the failure penalty.
    pub(crate) fn failure(&mut self) {
        self.sampled = true;
        let now = Instant::now();
        self.load.observe_failure(now - self.start, now);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.load.finish();
    }
}

pin_project_lite::pin_project! {
    /// A response body from a balanced endpoint.
    ///
    /// It passes frames through unchanged. The request counts as in flight on its endpoint until
    /// this body ends or is dropped; the round-trip sample is taken at the first frame; a body
    /// error or a gRPC failure status in the trailers is recorded as a failure.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        tracker: Option<Tracker>,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, mut tracker: Tracker) -> Self {
        let tracker = if inner.is_end_stream() {
            tracker.success();
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
            match &frame {
                Some(Ok(frame)) => {
                    tracker.success();
                    if frame.trailers_ref().is_some_and(grpc_failed) {
                        tracker.failure();
                    }
                }
                Some(Err(_)) => tracker.failure(),
                None => tracker.success(),
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

/// Whether a `grpc-status` says the server failed: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
/// UNAVAILABLE or DATA_LOSS, the codes Envoy maps to 5xx. Application errors such as NOT_FOUND
/// or INVALID_ARGUMENT say nothing about the endpoint's health.
pub(crate) fn grpc_failed(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(b"2" | b"4" | b"13" | b"14" | b"15")
    )
}
