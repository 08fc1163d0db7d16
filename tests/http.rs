//! Integration tests over real sockets: hyper backends on 127.0.0.1, the batteries-included
//! `proxyless::Client`, and a `ServiceBuilder` stack of `BalanceLayer` over `EndpointClients`.
//!
//! No paused time here: tokio's auto-advance would fire connect timeouts and fail-fast waits
//! while sockets are still talking.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use proxyless::balance::{Balance, BalanceConfig, BalanceLayer, Picker, ServedBy};
use proxyless::discover::{self, Discover, Endpoint};
use proxyless::error::{BuildError, EndpointError, EndpointErrorKind};
use proxyless::http::{ClientBody, EndpointClient, EndpointClients, Origin};
use proxyless::retry::RetryPolicy;
use proxyless::{BoxError, Client};
use tower::{Service, ServiceBuilder, ServiceExt};

use support::{Backend, SLOW, bounded, refusing_port, wait_until};

/// One finished exchange: status, the endpoint that served it, and the whole body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    served_by: SocketAddr,
    body: String,
}

async fn read(response: Response<ClientBody>) -> Answer {
    let status = response.status();
    let served_by = response
        .extensions()
        .get::<ServedBy>()
        .expect("every balanced response carries ServedBy")
        .0;
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Answer {
        status,
        served_by,
        body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
    }
}

/// Sends one request through any balanced service (a `Client` or a `Balance`) and reads it all.
async fn send<S>(svc: &S, uri: &str) -> Result<Answer, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ClientBody>, Error = BoxError> + Clone,
{
    let request = Request::get(uri).body(Full::default())?;
    let response = bounded(uri, svc.clone().oneshot(request)).await?;
    Ok(read(response).await)
}

fn fixed(backends: &[Backend]) -> discover::Fixed {
    discover::fixed(backends.iter().map(|b| b.addr)).expect("valid endpoints")
}

/// The batteries-included client over `discover`, with the default settings.
fn client<D: Discover>(discover: D) -> Client {
    Client::builder()
        .discover(discover)
        .build()
        .expect("client")
}

/// The batteries-included client with retries turned off.
fn client_without_retries<D: Discover>(discover: D) -> Client {
    Client::builder()
        .discover(discover)
        .retry(RetryPolicy::builder().max_attempts(1).build().unwrap())
        .build()
        .expect("client")
}

/// P2C over in-flight requests: with sequential requests every pair is a tie, so picks are
/// uniformly random. The spreading tests use it to check the HTTP plumbing (see
/// `default_picker_spreads_sequential_requests_over_every_backend` for the default picker).
fn least_request() -> BalanceConfig {
    BalanceConfig::builder()
        .picker(Picker::P2cLeastRequest)
        .build()
        .unwrap()
}

/// A `ServiceBuilder` stack over per-endpoint clients made from our own hyper-util builder.
fn stack<D: Discover + Clone>(
    discover: D,
    http2_only: bool,
) -> Balance<EndpointClient<Full<Bytes>>> {
    stack_with(discover, http2_only, BalanceConfig::default())
}

fn stack_with<D: Discover + Clone>(
    discover: D,
    http2_only: bool,
    config: BalanceConfig,
) -> Balance<EndpointClient<Full<Bytes>>> {
    let mut builder = legacy::Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .http2_only(http2_only);
    ServiceBuilder::new()
        .layer(BalanceLayer::with_config(discover, config))
        .service(EndpointClients::<Full<Bytes>>::new(builder))
}

/// Sends `n` sequential requests and checks that each is answered by the endpoint `ServedBy`
/// names; returns how many each backend answered, by name.
async fn spread<S>(svc: &S, backends: &[Backend], n: usize) -> HashMap<String, usize>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ClientBody>, Error = BoxError> + Clone,
{
    let mut counts = HashMap::new();
    for _ in 0..n {
        let answer = send(svc, "http://users/profile").await.expect("request");
        assert_eq!(answer.status, StatusCode::OK);
        let backend = backends
            .iter()
            .find(|b| b.addr == answer.served_by)
            .unwrap_or_else(|| panic!("ServedBy {} is no backend", answer.served_by));
        assert_eq!(
            answer.body, backend.name,
            "ServedBy names {} but the body came from {}",
            backend.addr, answer.body
        );
        *counts.entry(answer.body).or_insert(0) += 1;
    }
    counts
}

fn assert_spread(counts: &HashMap<String, usize>, backends: &[Backend], n: usize) {
    assert_eq!(counts.values().sum::<usize>(), n);
    for backend in backends {
        let got = counts.get(&backend.name).copied().unwrap_or(0);
        assert!(got > 0, "{} got no traffic: {counts:?}", backend.name);
        assert_eq!(
            got,
            backend.requests(),
            "{}: client and server disagree",
            backend.name
        );
    }
}

// 1. Spreading over three backends.

#[tokio::test]
async fn client_spreads_requests_over_three_backends() {
    let backends = Backend::start_n(3).await;
    let client: Client = Client::builder()
        .discover(fixed(&backends))
        .balance(least_request())
        .build()
        .unwrap();
    let counts = spread(&client, &backends, 60).await;
    assert_spread(&counts, &backends, 60);

    let snapshot = client.snapshot();
    assert_eq!(snapshot.total_requests(), 60);
    for backend in &backends {
        let endpoint = snapshot
            .endpoint(backend.addr)
            .expect("endpoint in snapshot");
        assert_eq!(endpoint.requests as usize, counts[&backend.name]);
        assert_eq!(endpoint.failures, 0);
        assert_eq!(endpoint.in_flight, 0);
    }
}

#[tokio::test]
async fn service_builder_stack_spreads_requests_over_three_backends() {
    let backends = Backend::start_n(3).await;
    let svc = stack_with(fixed(&backends), false, least_request());
    let counts = spread(&svc, &backends, 60).await;
    assert_spread(&counts, &backends, 60);
    assert_eq!(svc.snapshot().total_requests(), 60);
}

#[tokio::test]
async fn default_picker_spreads_sequential_requests_over_every_backend() {
    let backends = Backend::start_n(3).await;
    let client = client(fixed(&backends));
    let counts = spread(&client, &backends, 60).await;
    assert_spread(&counts, &backends, 60);
}

// 2. The logical authority reaches the backend.

/// The one request `backend` saw, checked to have come over `version` on the backend's port.
fn only_seen(backend: &Backend, version: Version) -> support::Seen {
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let seen = seen.into_iter().next().unwrap();
    assert_eq!(seen.version, version, "{seen:?}");
    assert_eq!(
        seen.local, backend.addr,
        "the connection went to the endpoint"
    );
    assert_eq!(seen.uri.path(), "/profile", "{seen:?}");
    seen
}

fn assert_http1_host(backend: &Backend) {
    let seen = only_seen(backend, Version::HTTP_11);
    assert_eq!(seen.hosts, ["users"], "{seen:?}");
}

fn assert_http2_authority(backend: &Backend) {
    let seen = only_seen(backend, Version::HTTP_2);
    assert_eq!(
        seen.uri.authority().map(|a| a.as_str()),
        Some("users"),
        "{seen:?}"
    );
    // hyper's HTTP/2 client sends the authority only as `:authority`.
    assert!(seen.hosts.is_empty(), "conflicting Host header: {seen:?}");
}

#[tokio::test]
async fn http1_backend_sees_the_logical_host() {
    let backend = Backend::start("a").await;
    let client = client(discover::fixed([backend.addr]).unwrap());
    let answer = send(&client, "http://users/profile").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.served_by, backend.addr);
    assert_http1_host(&backend);
}

#[tokio::test]
async fn http2_backend_sees_the_logical_authority() {
    let backend = Backend::start("a").await;
    let client: Client = Client::builder()
        .discover(discover::fixed([backend.addr]).unwrap())
        .http2_only(true)
        .build()
        .unwrap();
    let answer = send(&client, "http://users/profile").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.served_by, backend.addr);
    assert_http2_authority(&backend);
}

#[tokio::test]
async fn service_builder_stack_keeps_the_logical_authority() {
    let h1 = Backend::start("h1").await;
    let svc = stack(discover::fixed([h1.addr]).unwrap(), false);
    send(&svc, "http://users/profile").await.unwrap();
    assert_http1_host(&h1);

    let h2 = Backend::start("h2").await;
    let svc = stack(discover::fixed([h2.addr]).unwrap(), true);
    send(&svc, "http://users/profile").await.unwrap();
    assert_http2_authority(&h2);
}

// 3. Path-only URIs.

#[tokio::test]
async fn path_only_uri_gets_the_builder_origin() {
    for http2 in [false, true] {
        let backend = Backend::start("a").await;
        let client: Client = Client::builder()
            .discover(discover::fixed([backend.addr]).unwrap())
            .origin("http://users")
            .http2_only(http2)
            .build()
            .unwrap();
        let answer = send(&client, "/profile").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        if http2 {
            assert_http2_authority(&backend);
        } else {
            assert_http1_host(&backend);
        }
    }
}

#[tokio::test]
async fn path_only_uri_without_origin_gets_the_endpoint_address() {
    let backend = Backend::start("a").await;
    let svc = stack(discover::fixed([backend.addr]).unwrap(), false);
    send(&svc, "/profile").await.unwrap();
    let seen = only_seen(&backend, Version::HTTP_11);
    assert_eq!(seen.hosts, [backend.addr.to_string()], "{seen:?}");
}

#[tokio::test]
async fn endpoint_clients_origin_applies_to_path_only_uris() {
    let backend = Backend::start("a").await;
    let clients =
        EndpointClients::<Full<Bytes>>::new(legacy::Client::builder(TokioExecutor::new()))
            .origin(Origin::parse("http://users").unwrap());
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new(discover::fixed([backend.addr]).unwrap()))
        .service(clients);
    send(&svc, "/profile").await.unwrap();
    assert_http1_host(&backend);
}

// 4. Connection pooling per endpoint.

#[tokio::test]
async fn sequential_http1_requests_reuse_one_connection() {
    let backend = Backend::start("a").await;
    let client = client(discover::fixed([backend.addr]).unwrap());
    for _ in 0..20 {
        let answer = send(&client, "http://users/profile").await.unwrap();
        assert_eq!(answer.body, "a");
    }
    assert_eq!(backend.requests(), 20);
    assert_eq!(backend.connections(), 1, "20 sequential HTTP/1.1 requests");
}

#[tokio::test]
async fn concurrent_http2_requests_share_one_connection() {
    let backend = Backend::start("a").await;
    let client: Client = Client::builder()
        .discover(discover::fixed([backend.addr]).unwrap())
        .http2_only(true)
        .build()
        .unwrap();
    // Open the connection first, then 20 requests at once multiplex over it.
    send(&client, "http://users/profile").await.unwrap();
    let calls = (0..20).map(|_| send(&client, "http://users/profile"));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap().status, StatusCode::OK);
    }
    assert_eq!(backend.requests(), 21);
    assert_eq!(backend.connections(), 1, "HTTP/2 multiplexes");
}

#[tokio::test]
async fn each_endpoint_keeps_its_own_pool() {
    let backends = Backend::start_n(3).await;
    let svc = stack_with(fixed(&backends), false, least_request());
    let counts = spread(&svc, &backends, 30).await;
    assert_spread(&counts, &backends, 30);
    for backend in &backends {
        assert_eq!(backend.connections(), 1, "{}: {counts:?}", backend.name);
    }
}

// 5. Connection refused.

#[tokio::test]
async fn refused_connection_is_a_typed_connect_error() {
    let (_socket, refused) = refusing_port();
    let client = client(discover::fixed([refused]).unwrap());
    let error = send(&client, "http://users/profile").await.unwrap_err();
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .unwrap_or_else(|| panic!("not an EndpointError: {error:?}"));
    assert!(endpoint_error.is_connect(), "{endpoint_error}");
    assert_eq!(endpoint_error.kind(), EndpointErrorKind::Connect);
    assert_eq!(endpoint_error.endpoint(), refused);
    let message = error.to_string();
    assert!(message.contains(&refused.to_string()), "{message}");

    // Never sent, so retried: three attempts on the only endpoint there is.
    let snapshot = client.snapshot();
    let endpoint = snapshot.endpoint(refused).unwrap();
    assert_eq!((endpoint.requests, endpoint.failures), (3, 3));
    assert_eq!(endpoint.in_flight, 0);
    let retry = snapshot.retry.unwrap();
    assert_eq!((retry.requests, retry.retries, retry.exhausted), (1, 2, 1));
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let (_socket, refused) = refusing_port();
    let healthy = Backend::start("healthy").await;
    let client = client(discover::fixed([refused, healthy.addr]).unwrap());
    for _ in 0..20 {
        let answer = send(&client, "http://users/profile").await.unwrap();
        assert_eq!(answer.served_by, healthy.addr);
    }
    let snapshot = client.snapshot();
    let bad = snapshot.endpoint(refused).unwrap();
    let retry = snapshot.retry.clone().unwrap();
    assert!(bad.requests >= 1, "{bad:?}");
    assert_eq!(bad.failures, bad.requests);
    assert_eq!(retry.retries, bad.failures, "each refusal retried once");
    assert_eq!((retry.requests, retry.exhausted), (20, 0));
    assert_eq!(healthy.requests(), 20);
}

#[tokio::test]
async fn service_builder_stack_reports_refused_connections() {
    let (_socket, refused) = refusing_port();
    let svc = stack(discover::fixed([refused]).unwrap(), false);
    let error = send(&svc, "http://users/profile").await.unwrap_err();
    let endpoint_error = error
        .downcast_ref::<EndpointError>()
        .expect("EndpointError");
    assert!(endpoint_error.is_connect(), "{endpoint_error}");
    assert_eq!(endpoint_error.endpoint(), refused);
}

/// Sends 50 requests to one refusing and one healthy endpoint: the first two at once, so that
/// each endpoint gets one (the second pick sees the first request in flight), then 48 in turn.
/// Returns (successes, failures) after checking each outcome against the endpoint that served it.
async fn refusing_and_healthy(
    client: &Client,
    refused: SocketAddr,
    healthy: &Backend,
) -> (u64, u64) {
    let check = |result: Result<Answer, BoxError>| match result {
        Ok(answer) => {
            assert_eq!(answer.served_by, healthy.addr);
            assert_eq!(answer.body, "healthy");
            (1, 0)
        }
        Err(error) => {
            let error = error
                .downcast_ref::<EndpointError>()
                .expect("EndpointError");
            assert!(error.is_connect(), "{error}");
            assert_eq!(error.endpoint(), refused);
            (0, 1)
        }
    };
    let uri = "http://users/profile";
    let (first, second) = tokio::join!(send(client, uri), send(client, uri));
    let (mut ok, mut failed) = (0, 0);
    for result in [first, second] {
        let (o, f) = check(result);
        ok += o;
        failed += f;
    }
    assert_eq!(
        (ok, failed),
        (1, 1),
        "the first two requests go one to each endpoint"
    );
    for _ in 0..48 {
        let (o, f) = check(send(client, uri).await);
        ok += o;
        failed += f;
    }
    (ok, failed)
}

#[tokio::test]
async fn failure_penalty_steers_traffic_away_from_a_refusing_endpoint() {
    let (_socket, refused) = refusing_port();
    let healthy = Backend::start("healthy").await;
    let client = client_without_retries(discover::fixed([refused, healthy.addr]).unwrap());

    let (ok, failed) = refusing_and_healthy(&client, refused, &healthy).await;

    let snapshot = client.snapshot();
    let bad = snapshot.endpoint(refused).unwrap();
    let good = snapshot.endpoint(healthy.addr).unwrap();
    // After its one failure the refusing endpoint carries the 5 s failure penalty and loses
    // every P2C comparison against the healthy one: measured 1 of 50, every run.
    assert_eq!(
        bad.requests, 1,
        "refusing endpoint got {} of 50 requests",
        bad.requests
    );
    assert_eq!(bad.failures, 1);
    assert_eq!(failed, 1);
    assert!(bad.rtt_estimate >= Duration::from_secs(4), "{bad:?}");
    assert_eq!((ok, good.requests, good.failures), (49, 49, 0));
    assert_eq!(healthy.requests(), 49);
    assert_eq!(bad.in_flight + good.in_flight, 0);
}

// 6. Discovery through a push source.

#[tokio::test]
async fn pushed_sets_move_traffic_to_the_new_backends() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (pusher, discover) = discover::push();
    pusher.set(vec![Endpoint::new(a.addr)]).unwrap();
    let client = client(discover);

    let assert_idle = |client: &Client| {
        for endpoint in client.snapshot().endpoints {
            assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
        }
    };

    for _ in 0..5 {
        let answer = send(&client, "http://users/profile").await.unwrap();
        assert_eq!((answer.served_by, answer.body.as_str()), (a.addr, "a"));
        assert_idle(&client);
    }

    pusher.set(vec![Endpoint::new(b.addr)]).unwrap();
    wait_until("the table holds only b", || {
        let snapshot = client.snapshot();
        snapshot.endpoints.len() == 1 && snapshot.endpoint(b.addr).is_some()
    })
    .await;

    for _ in 0..10 {
        let answer = send(&client, "http://users/profile").await.unwrap();
        assert_eq!((answer.served_by, answer.body.as_str()), (b.addr, "b"));
        assert_idle(&client);
    }
    assert_eq!(a.requests(), 5);
    assert_eq!(b.requests(), 10);
    let snapshot = client.snapshot();
    assert_eq!(snapshot.endpoint(b.addr).unwrap().requests, 10);
    assert!(snapshot.endpoint(a.addr).is_none());
}

#[tokio::test]
async fn a_newly_added_endpoint_gets_traffic() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (pusher, discover) = discover::push();
    pusher.set(vec![Endpoint::new(a.addr)]).unwrap();
    let client = client(discover);
    for _ in 0..5 {
        send(&client, "http://users/profile").await.unwrap();
    }

    pusher.insert(Endpoint::new(b.addr)).unwrap();
    wait_until("b is in the table", || {
        client.snapshot().endpoint(b.addr).is_some()
    })
    .await;
    for _ in 0..20 {
        send(&client, "http://users/profile").await.unwrap();
    }
    assert!(b.requests() > 0, "scale-out: b got none of 20 requests");
}

// 7. Removing an endpoint with a request in flight.

#[tokio::test]
async fn removed_endpoint_finishes_its_in_flight_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (pusher, discover) = discover::push();
    pusher.set(vec![Endpoint::new(a.addr)]).unwrap();
    let client = client(discover);

    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let started = tokio::time::Instant::now();
            let answer = send(&client, "http://users/slow").await;
            (answer, started.elapsed())
        }
    });
    a.wait_for_requests(1).await;
    assert_eq!(client.snapshot().endpoint(a.addr).unwrap().in_flight, 1);

    pusher.set(vec![Endpoint::new(b.addr)]).unwrap();
    wait_until("a is removed", || {
        client.snapshot().endpoint(a.addr).is_none()
    })
    .await;
    // New requests already go to b while a is still answering.
    let answer = send(&client, "http://users/profile").await.unwrap();
    assert_eq!(answer.served_by, b.addr);
    assert!(
        !slow.is_finished(),
        "the slow request should still be in flight"
    );

    let (answer, took) = slow.await.unwrap();
    let answer = answer.expect("the in-flight request survives its endpoint's removal");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.served_by, a.addr);
    assert_eq!(answer.body, "a");
    assert!(took >= SLOW, "{took:?}");
    assert_eq!(a.requests(), 1);
}

// 8. Builder validation.

#[tokio::test]
async fn build_rejects_invalid_settings() {
    let endpoints = || discover::fixed(["127.0.0.1:1"]).unwrap();

    let error = Client::builder()
        .discover(endpoints())
        .connect_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(error, BuildError::InvalidConfig(_)), "{error:?}");
    assert!(error.to_string().contains("connect_timeout"), "{error}");

    for origin in [
        "http://users/x",
        "http://users?q=1",
        "not a uri",
        "users",
        "/users",
    ] {
        let error = Client::builder()
            .discover(endpoints())
            .origin(origin)
            .build()
            .unwrap_err();
        assert!(
            matches!(error, BuildError::InvalidOrigin(_)),
            "{origin}: {error:?}"
        );
    }

    // The accepted forms, for contrast.
    for origin in [
        "http://users",
        "http://users/",
        "http://users.prod.svc:8080",
    ] {
        Client::builder()
            .discover(endpoints())
            .origin(origin)
            .build()
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
    }
}

#[test]
fn build_outside_a_runtime_is_no_runtime() {
    let error = Client::builder()
        .discover(discover::fixed(["127.0.0.1:1"]).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(error, BuildError::NoRuntime);
}
