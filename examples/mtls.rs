//! mTLS with SPIFFE identities, end to end on loopback.
//!
//! Makes a certificate authority for the trust domain `example.org` and three workloads with
//! their own X.509-SVIDs: a `frontend` client and two servers, `users` and `billing`. Each server
//! requires mTLS and authorizes callers by SPIFFE ID: `users` lets `frontend` in, `billing` only
//! lets `payments` in. The client dials each server by IP address and accepts it only if it
//! proves the identity discovery gave for it.
//!
//! ```text
//! cargo run --example mtls --features tls
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use proxyless::discover::{self, Endpoint};
use proxyless::identity::{SpiffeId, TrustDomain};
use proxyless::tls::{
    AuthorizeLayer, ClientTls, Identity, IdentityPolicy, PeerIdentity, Svid, TlsAcceptor,
    TrustBundle, TrustBundleSet, WithPeerIdentity,
};
use proxyless::{BoxError, Client};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tower::Layer;

const FRONTEND: &str = "spiffe://example.org/ns/prod/sa/frontend";
const USERS: &str = "spiffe://example.org/ns/prod/sa/users";
const BILLING: &str = "spiffe://example.org/ns/prod/sa/billing";
const PAYMENTS: &str = "spiffe://example.org/ns/prod/sa/payments";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let ca = Authority::new()?;
    println!("Trust domain example.org: a root CA made for this run.");

    let users = serve(
        ca.identity(USERS)?,
        IdentityPolicy::Exact(SpiffeId::parse(FRONTEND)?),
    )
    .await?;
    let billing = serve(
        ca.identity(BILLING)?,
        IdentityPolicy::Exact(SpiffeId::parse(PAYMENTS)?),
    )
    .await?;
    println!("users   on {users}: {USERS}, allows {FRONTEND}");
    println!("billing on {billing}: {BILLING}, allows {PAYMENTS}\n");

    let endpoints = [
        Endpoint::new(users).with_identity(SpiffeId::parse(USERS)?),
        Endpoint::new(billing).with_identity(SpiffeId::parse(BILLING)?),
    ];
    for endpoint in endpoints {
        let client = Client::builder()
            .discover(discover::fixed([endpoint.clone()])?)
            .tls(ClientTls::new(ca.identity(FRONTEND)?))
            .build()?;
        let rsp = client.get("http://service/").await?;
        let status = rsp.status();
        let peer = rsp.extensions().get::<PeerIdentity>().cloned();
        let body = rsp.into_body().collect().await?.to_bytes();
        let server = peer.map_or_else(|| "unverified".to_owned(), |p| p.0.to_string());
        println!("frontend -> {} ({server})", endpoint.addr());
        if status.is_success() {
            println!(
                "  {status}: authorized; the server saw {}",
                String::from_utf8_lossy(&body)
            );
        } else {
            println!("  {status}: refused; {server} does not allow {FRONTEND}");
        }
    }

    // A server that is not who discovery says it is: the handshake is refused.
    let impostor = Endpoint::new(billing).with_identity(SpiffeId::parse(USERS)?);
    let client = Client::builder()
        .discover(discover::fixed([impostor])?)
        .tls(ClientTls::new(ca.identity(FRONTEND)?))
        .build()?;
    match client.get("http://service/").await {
        Ok(rsp) => println!(
            "frontend -> {billing} expecting users: unexpectedly {}",
            rsp.status()
        ),
        Err(error) => println!("frontend -> {billing} expecting users: refused\n  {error}"),
    }
    Ok(())
}

/// The example's certificate authority.
struct Authority(CertifiedIssuer<'static, KeyPair>);

impl Authority {
    fn new() -> Result<Self, BoxError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "example.org root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Self(CertifiedIssuer::self_signed(
            params,
            KeyPair::generate()?,
        )?))
    }

    /// An X.509-SVID for `id`, with the trust bundle of example.org.
    fn identity(&self, id: &str) -> Result<Identity, BoxError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.0)?;
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let svid = Svid::from_der(vec![cert.der().clone()], key)?;
        let mut bundles = TrustBundleSet::new();
        let domain = TrustDomain::parse("example.org")?;
        bundles.insert(TrustBundle::from_der(domain, vec![self.0.der().clone()])?);
        Ok(Identity::new(svid, bundles))
    }
}

/// A server requiring mTLS and allowing `allow`; it answers with the caller's identity.
async fn serve(identity: Identity, allow: IdentityPolicy) -> Result<SocketAddr, BoxError> {
    let acceptor = TlsAcceptor::new(identity, IdentityPolicy::AnyInTrustedDomains)?;
    let authorize = AuthorizeLayer::new(allow);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, authorize) = (acceptor.clone(), authorize.clone());
            tokio::spawn(async move {
                let Ok(conn) = acceptor.accept(tcp).await else {
                    return;
                };
                let app = authorize.layer(tower::service_fn(
                    |req: hyper::Request<Incoming>| async move {
                        let caller = req
                            .extensions()
                            .get::<PeerIdentity>()
                            .map_or_else(|| "no identity".to_owned(), |p| p.0.to_string());
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(caller))))
                    },
                ));
                let service = WithPeerIdentity::new(app, conn.peer_identity());
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(conn, service)
                    .await;
            });
        }
    });
    Ok(addr)
}
