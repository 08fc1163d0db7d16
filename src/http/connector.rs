//! A connector pinned to one endpoint's address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use tower_service::Service;

use crate::BoxError;

/// Wraps a hyper-util connector so that it always dials one endpoint's address, whatever the
/// request URI says.
///
/// This is what keeps the logical authority intact: the request keeps `http://users/...`, so
/// HTTP/1 sends `Host: users` and HTTP/2 sends `:authority: users`, while the TCP connection goes
/// to the endpoint discovery chose. Rewriting the URI instead would show the backend the
/// endpoint's address as `:authority` under HTTP/2.
#[derive(Clone, Debug)]
pub struct PinnedConnector<C> {
    inner: C,
    target: Uri,
}

impl<C> PinnedConnector<C> {
    /// A connector that dials `addr` through `inner` for every connection.
    pub fn new(inner: C, addr: SocketAddr) -> Self {
        let target = Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            // A socket address is always a valid authority.
            .unwrap_or_default();
        Self { inner, target }
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
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _logical: Uri) -> Self::Future {
        let connecting = self.inner.call(self.target.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}
