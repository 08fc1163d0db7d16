//! Tests of [`TlsAcceptor`], [`WithPeerIdentity`] and [`AuthorizeLayer`] with real handshakes on
//! loopback: a hyper-util `auto` server behind the acceptor, hyper clients over tokio-rustls,
//! certificates made by rcgen.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair, KeyUsagePurpose as Ku, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::{Duration, OffsetDateTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::Layer;

use super::*;
use crate::identity::{SpiffeId, TrustDomain};

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

const TD: &str = "a.test";
const SERVER: &str = "spiffe://a.test/ns/prod/sa/api";
const WEB: &str = "spiffe://a.test/ns/prod/sa/web";
const BATCH: &str = "spiffe://a.test/ns/prod/sa/batch";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn san(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

/// A root CA of trust domain `a.test`.
struct Root(CertifiedIssuer<'static, KeyPair>);

impl Root {
    fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "a.test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        params.subject_alt_names = vec![san("spiffe://a.test")];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn bundles(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        set.insert(
            TrustBundle::from_der(TrustDomain::parse(TD).unwrap(), vec![self.0.der().clone()])
                .unwrap(),
        );
        set
    }

    /// A leaf X.509-SVID for `spiffe_id`, valid from `not_before` to `not_after` (from now).
    fn leaf(
        &self,
        spiffe_id: &str,
        not_before: Duration,
        not_after: Duration,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![san(spiffe_id)];
        params.key_usages = vec![Ku::DigitalSignature, Ku::KeyEncipherment];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        params.not_before = now + not_before;
        params.not_after = now + not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        (cert.der().clone(), key)
    }

    fn svid(&self, spiffe_id: &str) -> Svid {
        let (cert, key) = self.leaf(spiffe_id, -Duration::minutes(5), Duration::hours(1));
        Svid::from_der(vec![cert], key).unwrap()
    }

    fn identity(&self, spiffe_id: &str) -> Identity {
        Identity::new(self.svid(spiffe_id), self.bundles())
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// The application: answers with the caller's identity as seen in the request extensions.
async fn echo_identity(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen = match request.extensions().get::<PeerIdentity>() {
        Some(peer) => peer.0.to_string(),
        None => "none".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(seen))))
}

struct Server {
    addr: SocketAddr,
    /// Failed accepts, in order.
    refused: mpsc::UnboundedReceiver<AcceptError>,
}

/// Serves `echo_identity` behind `acceptor`, `WithPeerIdentity` and `authorize` on a loopback
/// port, until the test's runtime ends.
async fn serve(acceptor: TlsAcceptor, authorize: AuthorizeLayer) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, refused) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = authorize.layer(tower::service_fn(echo_identity));
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(conn) => {
                        let svc = WithPeerIdentity::new(app, conn.peer_identity());
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(conn, svc)
                            .await;
                    }
                    Err(e) => {
                        let _ = tx.send(e);
                    }
                }
            });
        }
    });
    Server { addr, refused }
}

fn any_client() -> IdentityPolicy {
    IdentityPolicy::AnyInTrustedDomains
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

enum ClientCert {
    None,
    Svid(Identity),
    Raw(CertificateDer<'static>, PrivateKeyDer<'static>),
}

/// A TLS 1.3 client config offering `h2`, expecting the server to be `SERVER`.
fn client_config(root: &Root, cert: ClientCert) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let trust = Identity::new(root.svid(WEB), root.bundles());
    let verifier = SpiffeServerVerifier::new(
        trust.shared_bundles(),
        IdentityPolicy::Exact(id(SERVER)),
        Arc::clone(&provider),
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert {
        ClientCert::None => builder.with_no_client_auth(),
        ClientCert::Svid(me) => builder.with_client_cert_resolver(me.resolver()),
        ClientCert::Raw(cert, key) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<ClientTlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/2 connection over `tls`.
async fn h2(tls: ClientTlsStream) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn collect(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn request(addr: SocketAddr, grpc: bool) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder()
        .uri(format!("https://{addr}/pkg.Svc/Method"))
        .header(http::header::HOST, addr.to_string());
    if grpc {
        builder = builder
            .method(http::Method::POST)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers");
    }
    builder.body(Empty::new()).unwrap()
}

/// One HTTP/2 request over a new mTLS connection.
async fn call_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>, grpc: bool) -> Answer {
    let tls = connect_tls(addr, config).await.expect("client handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2(tls).await;
    let response = sender.send_request(request(addr, grpc)).await.unwrap();
    collect(response).await
}

/// One HTTP/1.1 request over plaintext.
async fn call_plaintext(addr: SocketAddr) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri("/plain")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    collect(sender.send_request(request).await.unwrap()).await
}

/// A log sink for one test (the current-thread runtime runs the server on this thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        let logs = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&logs).into_owned()
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_allowed_caller_is_served_and_its_identity_reaches_the_handler() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client()).unwrap();
    assert!(!acceptor.is_permissive());
    let server = serve(
        acceptor,
        AuthorizeLayer::new(IdentityPolicy::Exact(id(WEB))),
    )
    .await;

    let client = client_config(&root, ClientCert::Svid(root.identity(WEB)));
    let answer = call_tls(server.addr, client, false).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, WEB);
}

#[tokio::test]
async fn an_authenticated_but_unauthorized_caller_gets_403_and_is_logged() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client()).unwrap();
    let server = serve(
        acceptor,
        AuthorizeLayer::new(IdentityPolicy::Exact(id(WEB))),
    )
    .await;

    let client = client_config(&root, ClientCert::Svid(root.identity(BATCH)));
    let answer = call_tls(server.addr, client, false).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.is_empty());

    let text = logs.text();
    assert!(text.contains("INFO"), "{text}");
    assert!(text.contains("authorize: request refused"), "{text}");
    assert!(text.contains(&format!("peer={BATCH}")), "{text}");
    assert!(text.contains(&format!("policy=exactly {WEB}")), "{text}");
}

#[tokio::test]
async fn an_unauthorized_grpc_call_gets_permission_denied() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client()).unwrap();
    let server = serve(
        acceptor,
        AuthorizeLayer::new(IdentityPolicy::Exact(id(WEB))),
    )
    .await;

    let client = client_config(&root, ClientCert::Svid(root.identity(BATCH)));
    let answer = call_tls(server.addr, client, true).await;
    // Trailers-only: HTTP 200, the status in the headers, no body.
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["grpc-status"], "7");
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(
        answer.headers["grpc-message"],
        format!("caller {BATCH} is not authorized").as_str()
    );
    assert!(answer.body.is_empty());
}

#[tokio::test]
async fn strict_mode_refuses_clients_without_certificate_and_plaintext() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client()).unwrap();
    let mut server = serve(acceptor, AuthorizeLayer::new(any_client())).await;

    // TLS without a client certificate: the server refuses during the handshake. A TLS 1.3
    // client finishes first and sees the alert on its first read.
    let client = client_config(&root, ClientCert::None);
    if let Ok(tls) = connect_tls(server.addr, client).await {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_or((None, None), |(s, c)| (Some(s), Some(c)));
        if let Some(conn) = conn {
            tokio::spawn(conn);
        }
        if let Some(sender) = sender.as_mut() {
            assert!(
                sender
                    .send_request(request(server.addr, false))
                    .await
                    .is_err()
            );
        }
    }
    let error = server.refused.recv().await.expect("a refused accept");
    assert!(
        matches!(error, AcceptError::Handshake(_)),
        "unexpected error {error:?}"
    );
    assert_eq!(
        error.rustls_error(),
        Some(&rustls::Error::NoCertificatesPresented)
    );
    assert!(
        error.to_string().contains("presented no certificate"),
        "{error}"
    );

    // Plaintext on a strict port.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let error = server.refused.recv().await.expect("a refused accept");
    assert!(
        matches!(error, AcceptError::NotTls { first_byte: b'G' }),
        "unexpected error {error:?}"
    );
}

#[tokio::test]
async fn permissive_mode_serves_plaintext_and_mtls_on_one_port() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client())
        .unwrap()
        .permissive();
    assert!(acceptor.is_permissive());
    let strict_authz = serve(
        acceptor.clone(),
        AuthorizeLayer::new(IdentityPolicy::Exact(id(WEB))),
    )
    .await;
    let lenient_authz = serve(
        acceptor,
        AuthorizeLayer::new(IdentityPolicy::Exact(id(WEB))).allow_unauthenticated(),
    )
    .await;
    let mtls = client_config(&root, ClientCert::Svid(root.identity(WEB)));

    // Identity-based authorization refuses plaintext callers ...
    let plain = call_plaintext(strict_authz.addr).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    let tls = call_tls(strict_authz.addr, Arc::clone(&mtls), false).await;
    assert_eq!((tls.status, tls.body.as_str()), (StatusCode::OK, WEB));

    // ... unless told to let them in; they then carry no identity.
    let plain = call_plaintext(lenient_authz.addr).await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (StatusCode::OK, "none")
    );
    let tls = call_tls(lenient_authz.addr, Arc::clone(&mtls), false).await;
    assert_eq!((tls.status, tls.body.as_str()), (StatusCode::OK, WEB));
    // A TLS client without certificate is let in without identity too.
    let anonymous = call_tls(
        lenient_authz.addr,
        client_config(&root, ClientCert::None),
        false,
    )
    .await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (StatusCode::OK, "none")
    );
    // But an authenticated caller the policy refuses stays refused.
    let batch = client_config(&root, ClientCert::Svid(root.identity(BATCH)));
    let refused = call_tls(lenient_authz.addr, batch, false).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rotation_applies_to_new_handshakes_and_spares_live_connections() {
    let root = Root::new();
    let identity = root.identity(SERVER);
    let first = identity.svid();
    let acceptor = TlsAcceptor::new(identity.clone(), any_client()).unwrap();
    let server = serve(acceptor, AuthorizeLayer::new(any_client())).await;
    let client = client_config(&root, ClientCert::Svid(root.identity(WEB)));

    let tls = connect_tls(server.addr, Arc::clone(&client)).await.unwrap();
    let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(seen, first.chain()[0]);
    let mut long_lived = h2(tls).await;
    let answer = collect(
        long_lived
            .send_request(request(server.addr, false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    let second = root.svid(SERVER);
    assert_ne!(second.serial_hex(), first.serial_hex());
    identity.rotate_svid(second.clone());

    // The live connection keeps serving.
    for _ in 0..3 {
        let answer = collect(
            long_lived
                .send_request(request(server.addr, false))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, WEB));
    }

    // A new handshake presents the new certificate.
    let tls = connect_tls(server.addr, client).await.unwrap();
    let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(seen, second.chain()[0]);
    let serial = x509_parser::parse_x509_certificate(&seen)
        .unwrap()
        .1
        .raw_serial_as_string();
    // As numbers: DER puts a zero byte before a serial whose top bit is set; `serial_hex`
    // does not.
    let digits = |hex: String| {
        let hex = hex.replace(':', "").to_ascii_lowercase();
        hex.trim_start_matches('0').to_owned()
    };
    assert_eq!(digits(serial), digits(second.serial_hex()));
    let mut fresh = h2(tls).await;
    let answer = collect(
        fresh
            .send_request(request(server.addr, false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_as_expired() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client()).unwrap();
    let mut server = serve(acceptor, AuthorizeLayer::new(any_client())).await;

    let (cert, key) = root.leaf(WEB, -Duration::hours(2), -Duration::hours(1));
    let client = client_config(&root, ClientCert::Raw(cert, key));
    if let Ok(mut tls) = connect_tls(server.addr, client).await {
        // TLS 1.3: the refusal arrives on the first read.
        let mut buf = [0u8; 1];
        assert!(
            tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
                .await
                .map_or(true, |n| n == 0)
        );
    }
    let error = server.refused.recv().await.expect("a refused accept");
    assert!(
        matches!(error.verify_error(), Some(VerifyError::Expired { .. })),
        "unexpected error {error:?}"
    );
    assert!(error.to_string().contains("expired"), "{error}");
}

#[tokio::test]
async fn a_silent_client_times_out_and_an_early_close_is_reported() {
    let root = Root::new();
    let acceptor = TlsAcceptor::new(root.identity(SERVER), any_client())
        .unwrap()
        .with_handshake_timeout(std::time::Duration::from_millis(50));
    let mut server = serve(acceptor, AuthorizeLayer::new(any_client())).await;

    let silent = TcpStream::connect(server.addr).await.unwrap();
    let error = server.refused.recv().await.expect("a refused accept");
    assert!(matches!(error, AcceptError::TimedOut(_)), "{error:?}");
    drop(silent);

    drop(TcpStream::connect(server.addr).await.unwrap());
    let error = server.refused.recv().await.expect("a refused accept");
    assert!(matches!(error, AcceptError::Closed), "{error:?}");
}

#[tokio::test]
async fn the_authorize_layer_fits_a_tonic_server() {
    // Compile-time check that tonic's `Server::builder().layer(..)` accepts the layer; serving
    // is not needed.
    let (_, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder()
        .layer(AuthorizeLayer::new(IdentityPolicy::AnyInTrustedDomains))
        .add_service(health);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let serving = router.serve_with_incoming_shutdown(incoming, async {});
    // Shut down at once.
    serving.await.unwrap();
}
