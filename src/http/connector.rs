//! A connector pinned to one endpoint's address, optionally speaking mTLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

use crate::BoxError;

/// Wraps a hyper-util connector so that it always dials one endpoint's address, whatever the
/// request URI says, and (with the `tls` feature) runs the mTLS handshake the endpoint needs.
///
/// This is what keeps the logical authority intact: the request keeps `http://users/...`, so
/// HTTP/1 sends `Host: users` and HTTP/2 sends `:authority: users`, while the TCP connection goes
/// to the endpoint discovery chose. Rewriting the URI instead would show the backend the
/// endpoint's address as `:authority` under HTTP/2.
#[derive(Clone, Debug)]
pub struct PinnedConnector<C> {
    inner: C,
    target: Uri,
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::EndpointTls>>,
}

impl<C> PinnedConnector<C> {
    /// A connector that dials `addr` through `inner` for every connection, in plaintext.
    pub fn new(inner: C, addr: SocketAddr) -> Self {
        let target = Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            // A socket address is always a valid authority.
            .unwrap_or_default();
        Self {
            inner,
            target,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Runs `tls`'s handshake on every connection.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(mut self, tls: Option<Arc<crate::tls::EndpointTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The URI handed to the inner connector: `http://<endpoint address>/`.
    pub fn target(&self) -> &Uri {
        &self.target
    }
}

impl<C> Service<Uri> for PinnedConnector<C>
where
    C: Service<Uri> + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
{
    type Response = Conn<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn<C::Response>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _logical: Uri) -> Self::Future {
        let connecting = self.inner.call(self.target.clone());
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            #[cfg(feature = "tls")]
            if let Some(tls) = tls {
                return tls.handshake(io).await;
            }
            Ok(Conn::plain(io))
        })
    }
}

/// A connection made by a [`PinnedConnector`]: plaintext, or (with the `tls` feature) mTLS with
/// the peer's verified identity.
#[derive(Debug)]
pub struct Conn<T> {
    inner: ConnInner<T>,
}

#[derive(Debug)]
enum ConnInner<T> {
    Plain(T),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsConn<T>>),
}

impl<T> Conn<T> {
    pub(crate) fn plain(io: T) -> Self {
        Self {
            inner: ConnInner::Plain(io),
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls(conn: crate::tls::TlsConn<T>) -> Self {
        Self {
            inner: ConnInner::Tls(Box::new(conn)),
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self.inner, ConnInner::Plain(_))
    }
}

impl<T: Connection> Connection for Conn<T> {
    fn connected(&self) -> Connected {
        match &self.inner {
            ConnInner::Plain(io) => io.connected(),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => conn.connected(),
        }
    }
}

impl<T: Read + Write + Unpin> Read for Conn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ConnInner::Plain(io) => Pin::new(io).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => Pin::new(conn.io_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: Read + Write + Unpin> Write for Conn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            ConnInner::Plain(io) => Pin::new(io).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => Pin::new(conn.io_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ConnInner::Plain(io) => Pin::new(io).poll_flush(cx),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => Pin::new(conn.io_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ConnInner::Plain(io) => Pin::new(io).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => Pin::new(conn.io_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            ConnInner::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => Pin::new(conn.io_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            ConnInner::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            ConnInner::Tls(conn) => conn.io().is_write_vectored(),
        }
    }
}
