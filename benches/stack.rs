//! The full default stack against the bare inner service, in-process: what each layer adds.
//!
//! One iteration is one request on the bench thread with a no-op waker: `poll_ready`, `call`,
//! poll the response future (ready at once, since the inner mock answers at once and no retry
//! happens), read the body to its end, drop it. Ten endpoints, seeded picks.
//!
//! | benchmark | stack |
//! |---|---|
//! | `stack/inner` | the mock endpoint service alone |
//! | `stack/balance_bare` | `Balance`, breaker and outlier detection off |
//! | `stack/balance` | `Balance` with the default health gates (breaker, outlier detection) |
//! | `stack/retry_balance` | `Retry → Balance`, the default policy and budget, no retry happening |
//!
//! The differences are the costs to report: health accounting is `balance − balance_bare`, the
//! retry layer's no-retry cost is `retry_balance − balance` (body under the replay cap: empty).
//!
//! Run it with `cargo bench --bench stack`. Under `cargo test --benches` each benchmark runs once.
//!
//! Figures from the development machine, and what limits them, are in `BENCHMARKS.md`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;
use proxyless::balance::{Balance, BalanceConfig, BalanceLayer};
use proxyless::breaker::BreakerConfig;
use proxyless::discover::{self, Endpoint};
use proxyless::outlier::OutlierConfig;
use proxyless::retry::{RetryLayer, RetryPolicy};
use tokio::runtime::Runtime;
use tower::{Layer, Service};

const ENDPOINTS: usize = 10;

/// The endpoint service: always ready, answers at once with an empty body, whatever the
/// request body type.
#[derive(Clone, Copy, Debug, Default)]
struct Mock;

impl<B> Service<Request<B>> for Mock {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

fn addrs() -> impl Iterator<Item = SocketAddr> {
    (1..=ENDPOINTS as u16).map(|port| (Ipv4Addr::LOCALHOST, port).into())
}

/// One request through `svc`, on this thread.
fn one_request<S, RB>(svc: &mut S)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body + Unpin,
    RB::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let response = svc
        .call(black_box(Request::new(Empty::new())))
        .now_or_never()
        .expect("ready at once")
        .expect("succeeds");
    let mut body = black_box(response).into_body();
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
        black_box(frame.expect("no body error"));
    }
}

fn balance(runtime: &Runtime, health: bool) -> Balance<Mock> {
    let mut config = BalanceConfig::builder().seed(0x5eed);
    if !health {
        config = config
            .breaker(BreakerConfig::disabled())
            .outlier(OutlierConfig::disabled());
    }
    let config = config.build().expect("valid config");
    let _context = runtime.enter();
    let balance = Balance::new(
        discover::fixed(addrs()).expect("valid endpoints"),
        |_: &Endpoint| Mock,
        config,
    )
    .expect("inside a runtime");
    wait_for_endpoints(runtime, &balance);
    balance
}

fn wait_for_endpoints<S>(runtime: &Runtime, balance: &Balance<S>) {
    let published = balance.wait_for_endpoints(ENDPOINTS);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), published).await })
        .expect("discovery did not publish");
}

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("stack");
    group.bench_function("inner", |b| {
        let mut svc = Mock;
        b.iter(|| one_request(&mut svc));
    });
    group.bench_function("balance_bare", |b| {
        let mut svc = balance(&runtime, false);
        b.iter(|| one_request(&mut svc));
    });
    group.bench_function("balance", |b| {
        let mut svc = balance(&runtime, true);
        b.iter(|| one_request(&mut svc));
    });
    group.bench_function("retry_balance", |b| {
        let _context = runtime.enter();
        let inner = BalanceLayer::with_config(
            discover::fixed(addrs()).expect("valid endpoints"),
            BalanceConfig::builder()
                .seed(0x5eed)
                .build()
                .expect("valid"),
        )
        .layer(|_: &Endpoint| Mock);
        wait_for_endpoints(&runtime, &inner);
        let mut svc = RetryLayer::new(RetryPolicy::default()).layer(inner);
        b.iter(|| one_request(&mut svc));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = stack
}
criterion_main!(benches);
