//! The batteries-included client speaking mTLS with SPIFFE identities to real TLS servers on
//! 127.0.0.1, with certificates made in the test: the endpoint proves the identity discovery
//! gave for it, the client presents its own, and the verified identity comes back on responses.

#![cfg(feature = "tls")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxyless::discover::{self, Endpoint};
use proxyless::error::EndpointError;
use proxyless::identity::{SpiffeId, TrustDomain};
use proxyless::retry::RetryPolicy;
use proxyless::tls::{ClientTls, Identity, PeerIdentity, Svid, TrustBundle, TrustBundleSet};
use proxyless::{BoxError, Client};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose as Eku,
    IsCa, KeyPair, KeyUsagePurpose as Ku, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

const TD: &str = "example.org";
const CLIENT: &str = "spiffe://example.org/ns/prod/sa/frontend";
const USERS: &str = "spiffe://example.org/ns/prod/sa/users";
const OTHER: &str = "spiffe://example.org/ns/prod/sa/other";

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "example.org root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// An X.509-SVID for `id`: its certificate and PKCS#8 key.
    fn svid(&self, id: &str) -> (CertificateDer<'static>, KeyPair) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
        params.key_usages = vec![Ku::DigitalSignature];
        params.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.der().clone(), key)
    }

    fn bundles(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        let td = TrustDomain::parse(TD).unwrap();
        set.insert(TrustBundle::from_der(td, vec![self.0.der().clone()]).unwrap());
        set
    }

    fn identity(&self, id: &str) -> Identity {
        let (cert, key) = self.svid(id);
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Identity::new(Svid::from_der(vec![cert], key).unwrap(), self.bundles())
    }
}

/// An HTTP server behind TLS 1.3 presenting `id`'s SVID and requiring a client certificate from
/// the CA; it answers with the client certificate's DER length, to show it saw one.
async fn tls_server(ca: &Ca, id: &str) -> SocketAddr {
    let (cert, key) = ca.svid(id);
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.0.der().clone()).unwrap();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cert_len = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map_or(0, |c| c.len());
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = format!("{:?} {client_cert_len}", req.version());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn endpoint(addr: SocketAddr, id: &str) -> Endpoint {
    Endpoint::new(addr).with_identity(SpiffeId::parse(id).unwrap())
}

fn client(ca: &Ca, endpoints: Vec<Endpoint>, tls: impl FnOnce(ClientTls) -> ClientTls) -> Client {
    Client::builder()
        .discover(discover::fixed(endpoints).unwrap())
        .tls(tls(ClientTls::new(ca.identity(CLIENT))))
        .retry(RetryPolicy::builder().max_attempts(1).build().unwrap())
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

async fn get(client: &Client) -> Result<(Option<PeerIdentity>, String), BoxError> {
    let rsp = tokio::time::timeout(Duration::from_secs(2), client.get("http://users/profile"))
        .await
        .expect("bounded")?;
    let peer = rsp.extensions().get::<PeerIdentity>().cloned();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((peer, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn the_endpoint_proves_its_identity_and_http2_is_negotiated() {
    let ca = Ca::new();
    let server = tls_server(&ca, USERS).await;
    let client = client(&ca, vec![endpoint(server, USERS)], |tls| tls);
    for _ in 0..3 {
        let (peer, body) = get(&client).await.unwrap();
        assert_eq!(peer, Some(PeerIdentity(SpiffeId::parse(USERS).unwrap())));
        let (version, client_cert_len) = body.split_once(' ').unwrap();
        assert_eq!(version, "HTTP/2.0", "ALPN chose h2");
        assert!(
            client_cert_len.parse::<usize>().unwrap() > 0,
            "the client presented its SVID"
        );
    }
}

#[tokio::test]
async fn an_endpoint_with_another_identity_is_refused_and_named() {
    let ca = Ca::new();
    let server = tls_server(&ca, OTHER).await;
    let client = client(&ca, vec![endpoint(server, USERS)], |tls| tls);
    let error = get(&client).await.unwrap_err();
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .expect("EndpointError");
    assert_eq!(endpoint_error.endpoint(), server);
    assert!(endpoint_error.is_connect(), "{endpoint_error}");
    let message = error.to_string();
    assert!(message.contains(&server.to_string()), "{message}");
    assert!(
        message.contains(OTHER),
        "names the identity presented: {message}"
    );
}

#[tokio::test]
async fn strict_mode_refuses_plaintext_and_lenient_mode_allows_it() {
    let ca = Ca::new();
    // A plaintext HTTP server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("plain"))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    // No expected identity: plaintext unless strict.
    let lenient = client(&ca, vec![Endpoint::new(plain)], |tls| tls);
    let (peer, body) = get(&lenient).await.unwrap();
    assert_eq!((peer, body.as_str()), (None, "plain"));

    let strict = client(&ca, vec![Endpoint::new(plain)], ClientTls::strict);
    let error = get(&strict).await.unwrap_err();
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .expect("EndpointError");
    assert!(endpoint_error.is_connect(), "{endpoint_error}");
}

#[tokio::test]
async fn strict_mode_accepts_any_identity_of_the_trusted_domain() {
    let ca = Ca::new();
    let server = tls_server(&ca, OTHER).await;
    let client = client(&ca, vec![Endpoint::new(server)], ClientTls::strict);
    let (peer, _) = get(&client).await.unwrap();
    assert_eq!(peer, Some(PeerIdentity(SpiffeId::parse(OTHER).unwrap())));
}
