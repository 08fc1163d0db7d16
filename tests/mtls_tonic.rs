//! gRPC over mTLS on both sides: a tonic health server served by hyper-util behind
//! `TlsAcceptor` and `AuthorizeLayer`, called through `proxyless::Client` with `ClientTls` by
//! tonic's generated client. Certificates are made in the test.

#![cfg(feature = "tls")]

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use proxyless::Client;
use proxyless::discover::{self, Endpoint};
use proxyless::identity::{SpiffeId, TrustDomain};
use proxyless::retry::RetryPolicy;
use proxyless::tls::{
    AuthorizeLayer, ClientTls, Identity, IdentityPolicy, PeerIdentity, Svid, TlsAcceptor,
    TrustBundle, TrustBundleSet, WithPeerIdentity,
};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose as Eku,
    IsCa, KeyPair, KeyUsagePurpose as Ku, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer;

const CALLER: &str = "spiffe://example.org/ns/prod/sa/caller";
const STRANGER: &str = "spiffe://example.org/ns/prod/sa/stranger";
const HEALTH: &str = "spiffe://example.org/ns/prod/sa/health";

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

    fn identity(&self, id: &str) -> Identity {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
        params.key_usages = vec![Ku::DigitalSignature];
        params.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut bundles = TrustBundleSet::new();
        let td = TrustDomain::parse("example.org").unwrap();
        bundles.insert(TrustBundle::from_der(td, vec![self.0.der().clone()]).unwrap());
        Identity::new(
            Svid::from_der(vec![cert.der().clone()], key).unwrap(),
            bundles,
        )
    }
}

/// A tonic health server behind mTLS that lets only `CALLER` in.
async fn health_server(ca: &Ca) -> SocketAddr {
    let acceptor =
        TlsAcceptor::new(ca.identity(HEALTH), IdentityPolicy::AnyInTrustedDomains).unwrap();
    let authorize = AuthorizeLayer::new(IdentityPolicy::Exact(SpiffeId::parse(CALLER).unwrap()));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, authorize, health) =
                (acceptor.clone(), authorize.clone(), health.clone());
            tokio::spawn(async move {
                let Ok(conn) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = WithPeerIdentity::new(authorize.layer(health), conn.peer_identity());
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(conn, service)
                    .await;
            });
        }
    });
    addr
}

fn health_client(ca: &Ca, server: SocketAddr, me: &str) -> HealthClient<Client<tonic::body::Body>> {
    let endpoint = Endpoint::new(server).with_identity(SpiffeId::parse(HEALTH).unwrap());
    let client = Client::builder()
        .discover(discover::fixed([endpoint]).unwrap())
        .origin("http://health")
        .tls(ClientTls::new(ca.identity(me)))
        .retry(RetryPolicy::builder().max_attempts(1).build().unwrap())
        .build_with_body::<tonic::body::Body>()
        .unwrap();
    HealthClient::new(client)
}

#[tokio::test]
async fn an_authorized_caller_gets_an_answer_over_mtls() {
    let ca = Ca::new();
    let server = health_server(&ca).await;
    let mut health = health_client(&ca, server, CALLER);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = tokio::time::timeout(Duration::from_secs(2), health.check(request))
        .await
        .expect("bounded")
        .expect("check");
    assert_eq!(response.get_ref().status(), ServingStatus::Serving);
    let peer = response.extensions().get::<PeerIdentity>().cloned();
    assert_eq!(peer, Some(PeerIdentity(SpiffeId::parse(HEALTH).unwrap())));
}

#[tokio::test]
async fn an_unauthorized_caller_gets_permission_denied() {
    let ca = Ca::new();
    let server = health_server(&ca).await;
    let mut health = health_client(&ca, server, STRANGER);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let status = tokio::time::timeout(Duration::from_secs(2), health.check(request))
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}
