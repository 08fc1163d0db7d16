//! What mTLS costs: a new connection (TLS 1.3 handshake with SPIFFE verification on both sides)
//! and a request on an established connection, against plaintext, over loopback.
//!
//! | benchmark | what one iteration does |
//! |---|---|
//! | `tls/request/{plaintext_http1,plaintext_http2,mtls_http2}` | one GET through an established, pooled connection |
//! | `tls/new_connection/{plaintext_http2,mtls_http2}` | a new `Client`, its first GET (a new connection, with the handshake for mTLS), then drop |
//!
//! Certificates are made at start (rcgen, ECDSA P-256). The servers are hyper-util on loopback,
//! the mTLS one behind `TlsAcceptor`. Run it with `cargo bench --bench tls --features tls`.
//!
//! # Results
//!
//! On the 2-core development machine (criterion medians; the client, the server and the bench
//! share the two cores):
//!
//! | | plaintext | mTLS | ratio |
//! |---|---|---|---|
//! | request on an established HTTP/2 connection | 34.8 µs | 36.7 µs | 1.05× |
//! | new connection and its first request | 152 µs | 839 µs | 5.5× |
//!
//! (Plaintext HTTP/1.1 on an established connection: 26.7 µs.) A new mTLS connection costs about
//! 0.69 ms more than a plaintext one, handshake and SPIFFE verification on both sides included:
//! about 1,200 new mTLS connections a second with client and server on the same two cores. Once
//! connections are pooled, mTLS adds about 5 % per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxyless::Client;
use proxyless::discover::{self, Endpoint};
use proxyless::identity::{SpiffeId, TrustDomain};
use proxyless::tls::{
    ClientTls, Identity, IdentityPolicy, Svid, TlsAcceptor, TrustBundle, TrustBundleSet,
};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const CLIENT: &str = "spiffe://example.org/ns/bench/sa/client";
const SERVER: &str = "spiffe://example.org/ns/bench/sa/server";

struct Authority(CertifiedIssuer<'static, KeyPair>);

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "bench root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn identity(&self, id: &str) -> Identity {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let svid = Svid::from_der(vec![cert.der().clone()], key).unwrap();
        let mut bundles = TrustBundleSet::new();
        let domain = TrustDomain::parse("example.org").unwrap();
        bundles.insert(TrustBundle::from_der(domain, vec![self.0.der().clone()]).unwrap());
        Identity::new(svid, bundles)
    }
}

async fn hello(_req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(hyper::Response::new(Full::new(Bytes::from_static(
        b"hello",
    ))))
}

/// A loopback server, behind `acceptor` when given.
async fn serve(acceptor: Option<TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // As the TLS acceptor does: no Nagle delays on small handshake flights.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(hello);
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(conn) => builder.serve_connection(conn, service).await,
                        Err(_) => return,
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    addr
}

/// A client over `endpoint`: mTLS with `tls` (HTTP/2 by ALPN), or plaintext HTTP/2 or HTTP/1.1.
fn client(endpoint: Endpoint, tls: Option<&Identity>, h2: bool) -> Client {
    let mut builder = Client::builder()
        .discover(discover::fixed([endpoint]).unwrap())
        .http2_only(h2 && tls.is_none());
    if let Some(identity) = tls {
        builder = builder.tls(ClientTls::new(identity.clone()));
    }
    builder.build().unwrap()
}

async fn get(client: &Client) {
    let rsp = client.get("http://bench/").await.unwrap();
    assert!(rsp.status().is_success());
    rsp.into_body().collect().await.unwrap();
}

fn tls(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let ca = Authority::new();
    let client_identity = ca.identity(CLIENT);
    let server_id = SpiffeId::parse(SERVER).unwrap();
    let (plain_addr, tls_addr) = runtime.block_on(async {
        let acceptor =
            TlsAcceptor::new(ca.identity(SERVER), IdentityPolicy::AnyInTrustedDomains).unwrap();
        (serve(None).await, serve(Some(acceptor)).await)
    });
    let plain_endpoint = Endpoint::new(plain_addr);
    let tls_endpoint = Endpoint::new(tls_addr).with_identity(server_id);

    let mut group = c.benchmark_group("tls/request");
    for (name, endpoint, identity, h2) in [
        ("plaintext_http1", &plain_endpoint, None, false),
        ("plaintext_http2", &plain_endpoint, None, true),
        ("mtls_http2", &tls_endpoint, Some(&client_identity), true),
    ] {
        let client = runtime.block_on(async {
            let client = client(endpoint.clone(), identity, h2);
            get(&client).await; // the connection is established before measuring
            client
        });
        group.bench_function(name, |b| b.to_async(&runtime).iter(|| get(&client)));
    }
    group.finish();

    let mut group = c.benchmark_group("tls/new_connection");
    for (name, endpoint, identity) in [
        ("plaintext_http2", &plain_endpoint, None),
        ("mtls_http2", &tls_endpoint, Some(&client_identity)),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let client = client(endpoint.clone(), identity, true);
                get(&client).await;
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = tls
}
criterion_main!(benches);
