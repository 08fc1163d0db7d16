//! Adapters from streams: of [`Update`]s, and of tower [`Change`]s.

use std::net::SocketAddr;
use std::pin::Pin;

use futures_core::Stream;
use futures_util::StreamExt;
use tower::discover::Change;

use super::{Discover, DiscoverError, Endpoint, Update};
use crate::BoxError;

/// A source reading [`Update`]s from a stream. Made by [`from_stream`].
pub struct FromStream<S> {
    stream: Pin<Box<S>>,
}

/// Uses a stream of `Result<Update, E>` as a source; the stream's end keeps the last set.
pub fn from_stream<S, E>(stream: S) -> FromStream<S>
where
    S: Stream<Item = Result<Update, E>> + Send + 'static,
    E: Into<BoxError>,
{
    FromStream {
        stream: Box::pin(stream),
    }
}

impl<S, E> Discover for FromStream<S>
where
    S: Stream<Item = Result<Update, E>> + Send + 'static,
    E: Into<BoxError>,
{
    async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
        Some(self.stream.next().await?.map_err(Into::into))
    }
}

impl<S> std::fmt::Debug for FromStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromStream").finish_non_exhaustive()
    }
}

/// A source reading tower [`Change`]s keyed by address. Made by [`from_changes`].
pub struct FromChanges<S> {
    stream: Pin<Box<S>>,
}

/// Uses a stream of tower `Change<SocketAddr, Endpoint>` as a source.
///
/// `Insert` of a key that exists replaces that endpoint, as in tower; an `Insert` whose key
/// differs from the endpoint's address is an error (the last good set is kept).
///
/// ```
/// use proxyless::discover::{Endpoint, from_changes};
/// use tower::discover::Change;
///
/// let addr = "127.0.0.1:8080".parse().unwrap();
/// let changes = futures_util::stream::iter([
///     Ok::<_, std::convert::Infallible>(Change::Insert(addr, Endpoint::new(addr))),
/// ]);
/// let discover = from_changes(changes);
/// # drop(discover);
/// ```
pub fn from_changes<S, E>(stream: S) -> FromChanges<S>
where
    S: Stream<Item = Result<Change<SocketAddr, Endpoint>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    FromChanges {
        stream: Box::pin(stream),
    }
}

impl<S, E> Discover for FromChanges<S>
where
    S: Stream<Item = Result<Change<SocketAddr, Endpoint>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
        let change = match self.stream.next().await? {
            Ok(change) => change,
            Err(e) => return Some(Err(e.into())),
        };
        Some(match change {
            Change::Insert(key, endpoint) if key != endpoint.addr() => {
                Err(DiscoverError::KeyMismatch {
                    key,
                    addr: endpoint.addr(),
                }
                .into())
            }
            Change::Insert(_, endpoint) => Ok(Update::Insert(endpoint)),
            Change::Remove(key) => Ok(Update::Remove(key)),
        })
    }
}

impl<S> std::fmt::Debug for FromChanges<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromChanges").finish_non_exhaustive()
    }
}
