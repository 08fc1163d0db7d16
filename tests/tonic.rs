//! A tonic generated client (tonic-health's) over `proxyless::Client`, against real tonic
//! servers on 127.0.0.1. Needs the `tonic` feature, which makes proxyless errors carry a
//! `tonic::Status` (UNAVAILABLE) instead of reaching the caller as UNKNOWN.

#![cfg(feature = "tonic")]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use proxyless::Client;
use proxyless::balance::{BalanceConfig, ServedBy};
use proxyless::discover::{self, Discover};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use support::{bounded, refusing_port};

/// A tonic server with the standard health service (service `""` is SERVING).
struct GrpcServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcServer {
    /// Binds before returning, so clients can connect at once.
    async fn start() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("tonic server");
        });
        GrpcServer { addr, task }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Health = HealthClient<Client<tonic::body::Body>>;

/// The balanced client as a tonic client needs it: HTTP/2 with prior knowledge and an origin
/// for the path-only URIs tonic sends.
fn health_client<D: Discover>(
    discover: D,
    config: BalanceConfig,
) -> (Health, Client<tonic::body::Body>) {
    let client = Client::builder()
        .discover(discover)
        .http2_only(true)
        .origin("http://health")
        .balance(config)
        .build_with_body::<tonic::body::Body>()
        .expect("client");
    (HealthClient::new(client.clone()), client)
}

fn check_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

async fn check(
    health: &Health,
    service: &str,
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut health = health.clone();
    bounded("health check", health.check(check_request(service))).await
}

#[tokio::test]
async fn unary_calls_are_served_and_spread_over_three_servers() {
    let servers = [
        GrpcServer::start().await,
        GrpcServer::start().await,
        GrpcServer::start().await,
    ];
    let (health, client) = health_client(
        discover::fixed(servers.iter().map(|s| s.addr)).unwrap(),
        BalanceConfig::default(),
    );

    // 30 calls at once: while they are in flight, PeakEWMA's `(in_flight + 1)` factor spreads
    // them over every server.
    let calls = (0..30).map(|_| check(&health, ""));
    let mut served: HashMap<SocketAddr, u64> = HashMap::new();
    for response in futures_util::future::join_all(calls).await {
        let response = response.expect("check");
        let served_by = response
            .extensions()
            .get::<ServedBy>()
            .expect("ServedBy survives into the tonic response")
            .0;
        *served.entry(served_by).or_default() += 1;
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    }

    let snapshot = client.snapshot();
    assert_eq!(snapshot.total_requests(), 30);
    for server in &servers {
        let endpoint = snapshot.endpoint(server.addr).expect("in snapshot");
        assert!(
            endpoint.requests > 0,
            "{} got no calls: {served:?}",
            server.addr
        );
        assert_eq!(
            Some(&endpoint.requests),
            served.get(&server.addr),
            "{served:?}"
        );
        assert_eq!(endpoint.failures, 0);
        assert_eq!(endpoint.in_flight, 0);
    }
}

#[tokio::test]
async fn no_endpoint_is_unavailable() {
    let (_pusher, discover) = discover::push();
    let config = BalanceConfig::builder()
        .no_endpoint_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let (health, _client) = health_client(discover, config);

    let started = tokio::time::Instant::now();
    let status = check(&health, "").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no endpoint"), "{status:?}");
    assert!(
        (Duration::from_millis(100)..Duration::from_secs(1)).contains(&waited),
        "failed after {waited:?}"
    );
}

#[tokio::test]
async fn refused_connections_are_unavailable_and_name_the_endpoint() {
    let (_socket, refused) = refusing_port();
    let (health, client) = health_client(
        discover::fixed([refused]).unwrap(),
        BalanceConfig::default(),
    );
    let status = check(&health, "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&refused.to_string()),
        "{status:?}"
    );
    // Never sent, so retried twice (the default three attempts) before giving up.
    let endpoint = client.snapshot().endpoint(refused).cloned().unwrap();
    assert_eq!((endpoint.requests, endpoint.failures), (3, 3));
}

#[tokio::test]
async fn every_endpoint_refusing_is_unavailable() {
    let (_s1, first) = refusing_port();
    let (_s2, second) = refusing_port();
    let (health, client) = health_client(
        discover::fixed([first, second]).unwrap(),
        BalanceConfig::default(),
    );

    let mut named = BTreeSet::new();
    for _ in 0..2 {
        let status = check(&health, "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let addr = [first, second]
            .into_iter()
            .find(|a| status.message().contains(&a.to_string()))
            .unwrap_or_else(|| panic!("names neither endpoint: {status:?}"));
        named.insert(addr);
    }
    assert!(!named.is_empty());
    // Each call makes three attempts, and its retry avoids the endpoint it just tried, so
    // both endpoints are tried by both calls.
    let snapshot = client.snapshot();
    for addr in [first, second] {
        let endpoint = snapshot.endpoint(addr).unwrap();
        assert_eq!(endpoint.failures, endpoint.requests, "{endpoint:?}");
        assert!(endpoint.requests >= 2, "{endpoint:?}");
    }
    assert_eq!(snapshot.total_requests(), 6);
    let retry = snapshot.retry.unwrap();
    assert_eq!((retry.requests, retry.retries, retry.exhausted), (2, 4, 2));
}

#[tokio::test]
async fn application_status_passes_through_and_is_no_failure() {
    let server = GrpcServer::start().await;
    let (health, client) = health_client(
        discover::fixed([server.addr]).unwrap(),
        BalanceConfig::default(),
    );

    let status = check(&health, "no.such.Service").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A healthy call on the same client, for contrast.
    let response = check(&health, "").await.unwrap();
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);

    let endpoint = client.snapshot().endpoint(server.addr).cloned().unwrap();
    assert_eq!(endpoint.requests, 2);
    assert_eq!(
        endpoint.failures, 0,
        "NOT_FOUND says nothing about the endpoint's health"
    );
    assert_eq!(endpoint.in_flight, 0);
}

/// A tonic `Channel` per endpoint, made by the balancer's factory: the balancer picks, each
/// channel keeps its own HTTP/2 connection.
#[tokio::test]
async fn a_tonic_channel_per_endpoint() {
    use proxyless::balance::BalanceLayer;
    use proxyless::discover::Endpoint;
    use tonic::transport::Channel;
    use tower::ServiceBuilder;

    let servers = [
        GrpcServer::start().await,
        GrpcServer::start().await,
        GrpcServer::start().await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let balance = ServiceBuilder::new()
        .layer(BalanceLayer::new(discover::fixed(addrs.clone()).unwrap()))
        .service(|endpoint: &Endpoint| {
            Channel::from_shared(format!("http://{}", endpoint.addr()))
                .expect("a socket address is a valid URI")
                .connect_lazy()
        });
    let health = HealthClient::new(balance.clone());
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let mut health = health.clone();
        let response = bounded("check", health.check(check_request("")))
            .await
            .expect("check");
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        if let Some(by) = response.extensions().get::<ServedBy>() {
            served.insert(by.0);
        }
    }
    let snapshot = balance.snapshot();
    assert_eq!(snapshot.total_requests(), 30);
    for addr in &addrs {
        let endpoint = snapshot.endpoint(*addr).unwrap();
        assert!(endpoint.requests > 0, "{endpoint:?}");
        assert_eq!(
            (endpoint.failures, endpoint.in_flight),
            (0, 0),
            "{endpoint:?}"
        );
    }
    assert_eq!(served.len(), 3, "{served:?}");
}
