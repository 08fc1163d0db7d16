//! A request body that can be sent again.
//!
//! The first attempt streams the caller's body through unchanged and keeps a copy of each chunk
//! (a reference-counted `Bytes`, not a copy of the data) up to a cap, 64 KiB by default as in
//! Linkerd. Once the body has ended, a retry replays exactly the same bytes and trailers. The
//! body is *not* replayable when:
//!
//! - it grew past the cap (the first attempt still streams all of it; the copy is dropped), or
//!   its size hint says so up front;
//! - it had not ended when the retry was decided, i.e. it was still streaming when the response
//!   arrived.
//!
//! One exception: a body that was never polled (the request never reached a connection, say the
//! connect failed) is handed back whole when the first attempt drops it, whatever its size, so
//! never-sent requests are always retried.
//!
//! No lock is taken while streaming: the finished copy is published once through a `OnceLock`,
//! and a never-polled body is handed back through a mutex that nobody else contends.
//!
//! A body that has already ended when the request is made (an empty `GET`, say) has nothing to
//! record, so it shares no state with the retry layer at all: every retry sends an empty body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The bytes and trailers of a body that ended within the cap.
#[derive(Debug, Default)]
struct Recorded {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: u64,
}

/// What the first attempt shares with the retry layer.
#[derive(Debug)]
struct Shared<B> {
    recorded: OnceLock<Arc<Recorded>>,
    capped: AtomicBool,
    /// The caller's body, if the first attempt dropped it without polling it.
    handed_back: tokio::sync::Mutex<Option<B>>,
}

/// A request body that records what it sends so that a retry can send it again.
///
/// Made by the [retry layer](super); it is the body type the inner services see.
#[derive(Debug)]
pub struct ReplayBody<B> {
    state: State<B>,
}

#[derive(Debug)]
enum State<B> {
    First(First<B>),
    /// A body that had ended before it was sent. The first attempt keeps the caller's body so
    /// that it is dropped with the request, as a recorded one would be; retries hold nothing.
    Empty(Option<B>),
    Replay {
        recorded: Arc<Recorded>,
        next_chunk: usize,
        trailers_sent: bool,
    },
}

#[derive(Debug)]
struct First<B> {
    inner: Option<B>,
    /// A frame read ahead of the caller (see `poll_frame`).
    /// Boxed: peeking is rare enough, and keeps the common state small.
    peeked: Option<Box<Result<Frame<Bytes>, BoxError>>>,
    shared: Arc<Shared<B>>,
    chunks: Vec<Bytes>,
    // Boxed: request trailers are rare, and every request body carries this state.
    trailers: Option<Box<HeaderMap>>,
    len: u64,
    cap: u64,
    polled: bool,
    ended: bool,
}

/// The retry layer's side: makes the body for the next attempt.
#[derive(Debug)]
pub(crate) struct Replayer<B> {
    /// `None` for a body that had ended before the first attempt: retries send it empty.
    shared: Option<Arc<Shared<B>>>,
    cap: u64,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for its first attempt, keeping up to `cap` bytes.
    pub(crate) fn first(body: B, cap: u64) -> (Self, Replayer<B>) {
        // Most requests (GETs) have no body: skip the shared state and its allocation. Only a
        // body that says it is over and has no bytes left qualifies, so nothing can be lost.
        if body.is_end_stream() && body.size_hint().exact() == Some(0) {
            return (
                Self {
                    state: State::Empty(Some(body)),
                },
                Replayer { shared: None, cap },
            );
        }
        let shared = Arc::new(Shared {
            recorded: OnceLock::new(),
            capped: AtomicBool::new(false),
            handed_back: tokio::sync::Mutex::new(None),
        });
        let mut first = First {
            shared: Arc::clone(&shared),
            chunks: Vec::new(),
            trailers: None,
            len: 0,
            cap,
            polled: false,
            ended: false,
            inner: None,
            peeked: None,
        };
        if body.size_hint().lower() > cap {
            first.cap_exceeded();
        }
        if body.is_end_stream() {
            first.end();
        }
        first.inner = Some(body);
        (
            Self {
                state: State::First(first),
            },
            Replayer {
                shared: Some(shared),
                cap,
            },
        )
    }
}

impl<B> First<B> {
    fn cap_exceeded(&mut self) {
        self.shared.capped.store(true, Ordering::Relaxed);
        self.chunks = Vec::new();
        self.trailers = None;
    }

    fn record(&mut self, chunk: &Bytes) {
        if self.shared.capped.load(Ordering::Relaxed) {
            return;
        }
        self.len += chunk.len() as u64;
        if self.len > self.cap {
            self.cap_exceeded();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        if !self.shared.capped.load(Ordering::Relaxed) {
            let recorded = Recorded {
                chunks: std::mem::take(&mut self.chunks),
                trailers: self.trailers.take().map(|trailers| *trailers),
                len: self.len,
            };
            let _ = self.shared.recorded.set(Arc::new(recorded));
        }
    }
}

impl<B> First<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Polls the caller's body for one frame, recording what it yields.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.end();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                // A body that failed is not sent again.
                self.cap_exceeded();
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                self.record(&chunk);
                Frame::data(chunk)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    if !self.shared.capped.load(Ordering::Relaxed) {
                        self.trailers = Some(Box::new(trailers.clone()));
                    }
                    Frame::trailers(trailers)
                }
                // http-body 1 has only data and trailers frames.
                Err(_) => return Poll::Ready(Some(Err("unknown body frame".into()))),
            },
        };
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.end();
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<B> Drop for First<B> {
    fn drop(&mut self) {
        if !self.polled
            && let Some(inner) = self.inner.take()
            && let Ok(mut slot) = self.shared.handed_back.try_lock()
        {
            *slot = Some(inner);
        }
    }
}

impl<B: Body> Replayer<B> {
    /// The body for the next attempt, or `None` if the first one cannot be sent again.
    pub(crate) fn next(&mut self) -> Option<ReplayBody<B>> {
        let Some(shared) = &self.shared else {
            return Some(ReplayBody {
                state: State::Empty(None),
            });
        };
        if let Some(recorded) = shared.recorded.get() {
            return Some(ReplayBody {
                state: State::Replay {
                    recorded: Arc::clone(recorded),
                    next_chunk: 0,
                    trailers_sent: false,
                },
            });
        }
        let body = shared.handed_back.try_lock().ok()?.take()?;
        let (body, replayer) = ReplayBody::first(body, self.cap);
        *self = replayer;
        Some(body)
    }

    /// Whether the body outgrew the cap.
    pub(crate) fn is_capped(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.capped.load(Ordering::Relaxed))
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().state {
            State::First(first) => {
                first.polled = true;
                if let Some(frame) = first.peeked.take() {
                    return Poll::Ready(Some(*frame));
                }
                let frame = match first.poll_inner(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    other => return other,
                };
                // Look one frame ahead: a body that has sent its last frame often reports its end
                // only on the next poll (tonic's unary bodies do), and the connection may never
                // make that poll, for instance when the server answers before reading the rest.
                // Without the end, the body could not be replayed.
                if frame.is_data() && !first.ended {
                    match first.poll_inner(cx) {
                        Poll::Ready(Some(next)) => first.peeked = Some(Box::new(next)),
                        Poll::Ready(None) | Poll::Pending => {}
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // Never polls the caller's body: it said it had ended.
            State::Empty(_) => Poll::Ready(None),
            State::Replay {
                recorded,
                next_chunk,
                trailers_sent,
            } => {
                if let Some(chunk) = recorded.chunks.get(*next_chunk) {
                    *next_chunk += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                if !*trailers_sent {
                    *trailers_sent = true;
                    if let Some(trailers) = &recorded.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::First(first) => first.peeked.is_none() && first.ended,
            State::Empty(_) => true,
            State::Replay {
                recorded,
                next_chunk,
                trailers_sent,
            } => {
                *next_chunk >= recorded.chunks.len()
                    && (*trailers_sent || recorded.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::First(first) => first
                .inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            State::Empty(_) => SizeHint::with_exact(0),
            State::Replay {
                recorded,
                next_chunk,
                ..
            } => {
                let left: u64 = recorded.chunks[(*next_chunk).min(recorded.chunks.len())..]
                    .iter()
                    .map(|c| c.len() as u64)
                    .sum();
                debug_assert!(left <= recorded.len);
                SizeHint::with_exact(left)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect<B>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B: Body<Data = Bytes, Error = BoxError>,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    fn stream(frames: Vec<Frame<Bytes>>) -> StreamBody<Frames> {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn replays_the_same_bytes_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = stream(vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"world")),
            Frame::trailers(trailers.clone()),
        ]);
        let (first, mut replayer) = ReplayBody::first(body, 64 * 1024);
        assert_eq!(
            collect(first).await,
            (Bytes::from_static(b"hello world"), Some(trailers.clone()))
        );
        for _ in 0..2 {
            let again = replayer.next().expect("replayable");
            assert_eq!(again.size_hint().exact(), Some(11));
            assert_eq!(
                collect(again).await,
                (Bytes::from_static(b"hello world"), Some(trailers.clone()))
            );
        }
    }

    #[tokio::test]
    async fn a_full_body_is_replayable_once_sent() {
        let (first, mut replayer) = ReplayBody::first(Full::new(Bytes::from_static(b"abc")), 3);
        assert_eq!(collect(first).await.0, "abc");
        assert_eq!(collect(replayer.next().unwrap()).await.0, "abc");
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable_at_once() {
        let (first, mut replayer) = ReplayBody::first(http_body_util::Empty::<Bytes>::new(), 10);
        assert!(first.is_end_stream());
        // Even before (or without) being polled.
        let again = replayer.next().unwrap();
        assert!(again.is_end_stream());
        drop(first);
    }

    #[tokio::test]
    async fn an_ended_body_shares_nothing_and_every_retry_is_empty() {
        for (first, mut replayer) in [
            ReplayBody::first(Full::<Bytes>::default(), 10),
            ReplayBody::first(Full::new(Bytes::new()), 10),
        ] {
            assert!(replayer.shared.is_none(), "no state to share");
            assert!(first.is_end_stream());
            assert_eq!(first.size_hint().exact(), Some(0));
            assert!(!replayer.is_capped());
            for _ in 0..3 {
                let again = replayer.next().expect("an empty body is always replayable");
                assert!(again.is_end_stream());
                assert_eq!(again.size_hint().exact(), Some(0));
                assert_eq!(collect(again).await, (Bytes::new(), None));
            }
            assert_eq!(collect(first).await, (Bytes::new(), None));
        }
    }

    #[tokio::test]
    async fn a_body_with_trailers_only_is_still_recorded() {
        // Ended data but trailers to come: not at its end, so it takes the recording path.
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "0".parse().unwrap());
        let (first, mut replayer) =
            ReplayBody::first(stream(vec![Frame::trailers(trailers.clone())]), 10);
        assert!(replayer.shared.is_some());
        assert_eq!(collect(first).await, (Bytes::new(), Some(trailers.clone())));
        assert_eq!(
            collect(replayer.next().unwrap()).await,
            (Bytes::new(), Some(trailers))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_sent_once_and_not_replayed() {
        let body = stream(vec![
            Frame::data(Bytes::from(vec![1u8; 6])),
            Frame::data(Bytes::from(vec![2u8; 6])),
        ]);
        let (first, mut replayer) = ReplayBody::first(body, 10);
        let (bytes, _) = collect(first).await;
        assert_eq!(bytes.len(), 12, "the first attempt still sends everything");
        assert!(replayer.is_capped());
        assert!(replayer.next().is_none());
    }

    #[tokio::test]
    async fn a_size_hint_over_the_cap_disables_recording() {
        let (first, mut replayer) = ReplayBody::first(Full::new(Bytes::from(vec![0u8; 100])), 10);
        assert!(replayer.is_capped());
        assert_eq!(collect(first).await.0.len(), 100);
        assert!(replayer.next().is_none());
    }

    #[tokio::test]
    async fn a_body_still_streaming_is_not_replayable() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let (mut first, mut replayer) = ReplayBody::first(body, 1024);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part");
        assert!(replayer.next().is_none(), "not ended yet");
        drop(tx);
        assert!(first.frame().await.is_none());
        assert_eq!(collect(replayer.next().unwrap()).await.0, "part");
    }

    #[tokio::test]
    async fn a_body_that_reports_its_end_late_is_replayable_after_its_last_frame() {
        // Like tonic's unary bodies: one message, and the end only on the next poll.
        let (first, mut replayer) = ReplayBody::first(
            stream(vec![Frame::data(Bytes::from_static(b"message"))]),
            1024,
        );
        let mut first = first;
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "message");
        // The connection stops polling here (the server answered already).
        let again = replayer.next().expect("the end was seen by looking ahead");
        assert_eq!(collect(again).await.0, "message");
        assert!(first.is_end_stream());
    }

    #[tokio::test]
    async fn a_peeked_frame_is_delivered_in_order() {
        let body = stream(vec![
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::from_static(b"b")),
            Frame::data(Bytes::from_static(b"c")),
        ]);
        let (first, mut replayer) = ReplayBody::first(body, 1024);
        assert_eq!(collect(first).await.0, "abc");
        assert_eq!(collect(replayer.next().unwrap()).await.0, "abc");
    }

    #[tokio::test]
    async fn a_never_polled_body_is_handed_back_whatever_its_size() {
        let (first, mut replayer) = ReplayBody::first(Full::new(Bytes::from(vec![7u8; 100])), 10);
        assert!(replayer.next().is_none(), "still held by the first attempt");
        drop(first); // e.g. the connection could not be established
        let again = replayer.next().expect("handed back");
        assert_eq!(collect(again).await.0, vec![7u8; 100]);
        assert!(replayer.next().is_none(), "handed back only once");
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_core::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
