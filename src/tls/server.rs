//! The server side of mTLS: [`TlsAcceptor`] terminates TLS 1.3 on accepted TCP connections,
//! verifies the client's X.509-SVID and hands back an [`Accepted`] stream that knows the
//! client's [`PeerIdentity`]; [`WithPeerIdentity`] puts that identity into every request.
//!
//! The behaviour is documented on [`TlsAcceptor`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::{TlsError, VerifyError};
use super::identity::{Identity, PeerIdentity};
use super::policy::IdentityPolicy;
use super::verify::{SpiffeClientVerifier, spiffe_id_of_verified};

/// The first byte of a TLS record carrying a handshake message (a ClientHello, here).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long peeking plus the handshake may take by default.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminates mTLS on accepted TCP connections, presenting the current SVID of an [`Identity`]
/// and verifying clients' X.509-SVIDs.
///
/// # Behaviour
///
/// - **Strict** ([`TlsAcceptor::new`]): every client must complete a TLS 1.3 handshake with a
///   certificate that verifies as an X.509-SVID of a trust domain in the [`Identity`]'s bundles
///   and that the [`IdentityPolicy`] accepts. A client without a certificate, with a refused
///   one, or speaking plaintext fails in [`TlsAcceptor::accept`].
/// - **Permissive** ([`TlsAcceptor::permissive`]): the same port also serves plaintext. The
///   first byte is peeked without being consumed: `0x16` (a TLS handshake record) means TLS,
///   anything else plaintext. TLS clients may then omit their certificate; one that presents a
///   certificate must still pass verification. Connections without a verified client have no
///   [`PeerIdentity`], so an authorization layer refuses them unless told otherwise (see
///   [`AuthorizeLayer::allow_unauthenticated`](super::AuthorizeLayer::allow_unauthenticated)).
/// - **Rotation**: the server certificate comes from [`Identity`]'s resolver and client chains
///   are verified against its bundle cell, both read on every handshake; so
///   [`Identity::rotate_svid`] and [`Identity::rotate_bundles`] apply to the next connection,
///   while established connections keep running (TLS has no renegotiation in rustls).
/// - **No resumption**: a resumed session skips certificate verification, so the acceptor
///   stores no sessions and sends no TLS 1.3 tickets; every connection is fully verified.
/// - **ALPN**: `h2` then `http/1.1`. A client sending no ALPN is served anyway (hyper-util's
///   `auto` server detects the HTTP version from the preface); one offering only other
///   protocols fails the handshake (rustls' `no_application_protocol` alert).
/// - **Bounded wait**: peeking the first byte and the handshake together must finish within
///   the handshake timeout ([`TlsAcceptor::with_handshake_timeout`], 10 s by default), so a
///   client that connects and sends nothing cannot hold an accept task forever.
/// - The crypto provider is always ring, passed explicitly; no process-wide default is used.
///
/// # Precedent
///
/// Detecting TLS from the first byte is what Linkerd's inbound proxy and Envoy's
/// `tls_inspector` (used by Istio's PERMISSIVE mode) do, minus their SNI and ALPN routing: a
/// proxyless server terminates every TLS connection itself. Like Linkerd (10 s) and unlike
/// Istio's default (no timeout), detection is bounded. Like Linkerd and spiffe-rustls,
/// resumption is off, and identity is a property of the connection, copied to each request.
///
/// # Serving with hyper
///
/// ```no_run
/// use hyper_util::rt::TokioExecutor;
/// use hyper_util::server::conn::auto;
/// use proxyless::tls::{AuthorizeLayer, IdentityPolicy, TlsAcceptor, WithPeerIdentity};
/// # async fn run(
/// #     identity: proxyless::tls::Identity,
/// #     app: impl tower::Service<
/// #             http::Request<hyper::body::Incoming>,
/// #             Response = http::Response<http_body_util::Full<bytes::Bytes>>,
/// #             Error = std::convert::Infallible,
/// #             Future: Send + 'static,
/// #         > + Clone + Send + Sync + 'static,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// let acceptor = TlsAcceptor::new(identity, IdentityPolicy::AnyInTrustedDomains)?;
/// let authorize = AuthorizeLayer::new(IdentityPolicy::Exact(
///     "spiffe://example.org/ns/prod/sa/web".parse()?,
/// ));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let (acceptor, svc) = (acceptor.clone(), tower::Layer::layer(&authorize, app.clone()));
///     tokio::spawn(async move {
///         let Ok(conn) = acceptor.accept(tcp).await else { return };
///         let svc = WithPeerIdentity::new(svc, conn.peer_identity());
///         let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(conn, svc).await;
///     });
/// }
/// # }
/// ```
///
/// tonic services (`tonic::service::Routes`) are tower services too and can be served the same
/// way; tonic's own `Server` does not know the connection's identity.
///
/// `Clone` is cheap (the rustls configurations are shared).
#[derive(Clone)]
pub struct TlsAcceptor {
    /// Client certificate mandatory.
    strict: Arc<ServerConfig>,
    /// Client certificate optional (used in permissive mode).
    optional: Arc<ServerConfig>,
    policy: IdentityPolicy,
    permissive: bool,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("policy", &self.policy.to_string())
            .field("permissive", &self.permissive)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// A strict acceptor: TLS 1.3 only, client SVIDs required and checked against `policy`
    /// (usually [`IdentityPolicy::AnyInTrustedDomains`], leaving finer decisions to
    /// [`AuthorizeLayer`](super::AuthorizeLayer)).
    ///
    /// Fails with [`TlsError::Rustls`] if rustls refuses the configuration (not expected with
    /// the ring provider).
    pub fn new(identity: Identity, policy: IdentityPolicy) -> Result<Self, TlsError> {
        Ok(Self {
            strict: Arc::new(server_config(&identity, &policy, true)?),
            optional: Arc::new(server_config(&identity, &policy, false)?),
            policy,
            permissive: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// This acceptor in permissive mode: plaintext clients are served on the same port, and TLS
    /// clients may omit their certificate. Meant for migrations; pair it with an authorization
    /// layer.
    pub fn permissive(mut self) -> Self {
        self.permissive = true;
        self
    }

    /// Bounds the time from [`accept`](Self::accept) being called to the end of the handshake
    /// (10 s by default).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether plaintext is accepted too.
    pub fn is_permissive(&self) -> bool {
        self.permissive
    }

    /// Detects the protocol, runs the TLS handshake and returns the connection with its peer's
    /// identity. Never panics; every failure is an [`AcceptError`].
    pub async fn accept(&self, stream: TcpStream) -> Result<Accepted, AcceptError> {
        let remote_addr = stream.peer_addr().ok();
        // A handshake is a few small flights each way: with Nagle's algorithm on, a flight can
        // wait for the peer's delayed ACK (tens of milliseconds per connection).
        let _ = stream.set_nodelay(true);
        let timeout = self.handshake_timeout;
        match tokio::time::timeout(timeout, self.accept_inner(stream, remote_addr)).await {
            Ok(result) => result,
            Err(_) => Err(AcceptError::TimedOut(timeout)),
        }
    }

    async fn accept_inner(
        &self,
        stream: TcpStream,
        remote_addr: Option<SocketAddr>,
    ) -> Result<Accepted, AcceptError> {
        let mut first = [0u8; 1];
        // `peek` does not consume: the handshake (or hyper) reads the byte again.
        let n = stream.peek(&mut first).await.map_err(AcceptError::Io)?;
        if n == 0 {
            return Err(AcceptError::Closed);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if !self.permissive {
                return Err(AcceptError::NotTls {
                    first_byte: first[0],
                });
            }
            tracing::debug!(remote = ?remote_addr, "tls: plaintext connection (permissive)");
            return Ok(Accepted {
                io: TokioIo::new(Conn::Plain(stream)),
                peer: None,
                alpn: None,
                remote_addr,
            });
        }

        let config = if self.permissive {
            Arc::clone(&self.optional)
        } else {
            Arc::clone(&self.strict)
        };
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(AcceptError::Handshake)?;
        let (_, conn) = tls.get_ref();
        let peer = match conn.peer_certificates().and_then(|chain| chain.first()) {
            // Verified by `SpiffeClientVerifier` during the handshake; only the ID is read here.
            Some(leaf) => Some(PeerIdentity(
                spiffe_id_of_verified(leaf)
                    .map_err(|e| AcceptError::Handshake(io::Error::other(e)))?,
            )),
            None => None,
        };
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        tracing::debug!(
            remote = ?remote_addr,
            peer = %DisplayPeer(peer.as_ref()),
            alpn = ?alpn.as_deref().map(String::from_utf8_lossy),
            "tls: handshake done"
        );
        Ok(Accepted {
            io: TokioIo::new(Conn::Tls(Box::new(tls))),
            peer,
            alpn,
            remote_addr,
        })
    }
}

/// Writes `spiffe://…` or `no identity`.
pub(crate) struct DisplayPeer<'a>(pub(crate) Option<&'a PeerIdentity>);

impl fmt::Display for DisplayPeer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(peer) => write!(f, "{}", peer.0),
            None => f.write_str("no identity"),
        }
    }
}

fn server_config(
    identity: &Identity,
    policy: &IdentityPolicy,
    mandatory: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = SpiffeClientVerifier::new(
        identity.shared_bundles(),
        policy.clone(),
        Arc::clone(&provider),
        mandatory,
    );
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity.resolver());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Why [`TlsAcceptor::accept`] failed. The connection is dropped.
///
/// [`VerifyError::find`] (or [`AcceptError::verify_error`]) tells whether the client's
/// certificate was refused, and why.
#[non_exhaustive]
#[derive(Debug)]
pub enum AcceptError {
    /// Peeking at the first byte failed.
    Io(io::Error),
    /// The client closed the connection before sending anything.
    Closed,
    /// Strict mode, and the client does not speak TLS (its first byte is not a TLS handshake
    /// record): typically a plaintext HTTP client.
    NotTls {
        /// The first byte received.
        first_byte: u8,
    },
    /// The TLS handshake failed: the client's certificate was missing or refused, or the
    /// client gave up. The `io::Error` wraps the `rustls::Error`.
    Handshake(io::Error),
    /// Detection and handshake took longer than the handshake timeout.
    TimedOut(Duration),
}

impl AcceptError {
    /// Why the client's certificate was refused, if that is what failed.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        VerifyError::find(self)
    }

    /// The rustls error behind a failed handshake, if any (for example
    /// `rustls::Error::NoCertificatesPresented` when a strict acceptor got no client
    /// certificate).
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            AcceptError::Handshake(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }
}

impl fmt::Display for AcceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcceptError::Io(e) => write!(f, "cannot read from the new connection: {e}"),
            AcceptError::Closed => {
                f.write_str("the client closed the connection before sending anything")
            }
            AcceptError::NotTls { first_byte } => write!(
                f,
                "the client does not speak TLS (first byte {first_byte:#04x}), and this port requires mTLS"
            ),
            AcceptError::Handshake(e) => match (self.verify_error(), self.rustls_error()) {
                (Some(v), _) => write!(
                    f,
                    "TLS handshake failed: the client's certificate was refused: {v}"
                ),
                (None, Some(rustls::Error::NoCertificatesPresented)) => f.write_str(
                    "TLS handshake failed: the client presented no certificate, and this port requires one",
                ),
                _ => write!(f, "TLS handshake failed: {e}"),
            },
            AcceptError::TimedOut(t) => {
                write!(f, "the TLS handshake did not finish within {t:?}")
            }
        }
    }
}

impl std::error::Error for AcceptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcceptError::Io(e) | AcceptError::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// The transport under [`Accepted`].
#[derive(Debug)]
enum Conn {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Plain(s) => s.is_write_vectored(),
        }
    }
}

/// An accepted connection, TLS or (in permissive mode) plaintext, ready for hyper: it
/// implements `hyper::rt::Read` and `hyper::rt::Write`, so it can be passed to
/// `hyper_util::server::conn::auto::Builder::serve_connection` directly.
#[derive(Debug)]
pub struct Accepted {
    io: TokioIo<Conn>,
    peer: Option<PeerIdentity>,
    alpn: Option<Vec<u8>>,
    remote_addr: Option<SocketAddr>,
}

impl Accepted {
    /// The client's verified identity: `None` for plaintext (permissive mode) and for a TLS
    /// client that sent no certificate (permissive mode).
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        self.peer.clone()
    }

    /// The protocol agreed through ALPN (`b"h2"` or `b"http/1.1"`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// Whether the connection is TLS (always, unless the acceptor is permissive).
    pub fn is_tls(&self) -> bool {
        matches!(self.io.inner(), Conn::Tls(_))
    }

    /// The client's address, if the socket could tell.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }
}

impl Read for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        Write::is_write_vectored(&self.io)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// Wraps a service so that every request carries the connection's [`PeerIdentity`] in its
/// extensions (or none, for a connection without a verified client: any `PeerIdentity` already
/// there is removed).
///
/// Make one per connection, from [`Accepted::peer_identity`]. It is a tower `Service`, and also
/// a `hyper::service::Service` (cloning the inner tower service for each request), so a tower
/// stack can be handed to hyper's `serve_connection` without further adapters.
#[derive(Clone, Debug)]
pub struct WithPeerIdentity<S> {
    inner: S,
    peer: Option<PeerIdentity>,
}

impl<S> WithPeerIdentity<S> {
    /// Wraps `inner` for a connection whose client is `peer`.
    pub fn new(inner: S, peer: Option<PeerIdentity>) -> Self {
        Self { inner, peer }
    }

    /// The connection's client identity.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn tag<B>(&self, request: &mut http::Request<B>) {
        let extensions = request.extensions_mut();
        match &self.peer {
            Some(peer) => {
                extensions.insert(peer.clone());
            }
            None => {
                extensions.remove::<PeerIdentity>();
            }
        }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for WithPeerIdentity<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        self.tag(&mut request);
        self.inner.call(request)
    }
}

impl<S, B> hyper::service::Service<http::Request<B>> for WithPeerIdentity<S>
where
    S: tower_service::Service<http::Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, http::Request<B>>;

    fn call(&self, mut request: http::Request<B>) -> Self::Future {
        self.tag(&mut request);
        tower::util::Oneshot::new(self.inner.clone(), request)
    }
}
