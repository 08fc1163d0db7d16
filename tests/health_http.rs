//! Health end to end, over real HTTP servers on 127.0.0.1: an endpoint that fails every request
//! is taken out by the circuit breaker and outlier detection, traffic moves to the others, and
//! the endpoint gets traffic again once it recovers.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxyless::balance::{BalanceConfig, Picker, ServedBy};
use proxyless::outlier::{EjectionReason, OutlierConfig};
use proxyless::{Client, discover};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::bounded;

/// A backend that answers 200, or 503 while `failing` is set, and counts what it served.
struct Switchable {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Switchable {
    async fn start(failing: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let failing = Arc::new(AtomicBool::new(failing));
        let served = Arc::new(AtomicU64::new(0));
        let (f, s) = (Arc::clone(&failing), Arc::clone(&served));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (failing, served) = (Arc::clone(&f), Arc::clone(&s));
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        served.fetch_add(1, Ordering::Relaxed);
                        let status = if failing.load(Ordering::Relaxed) {
                            503
                        } else {
                            200
                        };
                        async move {
                            let mut rsp = hyper::Response::new(Full::new(Bytes::new()));
                            *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            failing,
            served,
            task,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn get(client: &Client) -> Option<SocketAddr> {
    let rsp = bounded("request", client.get("http://users/"))
        .await
        .expect("request");
    assert_eq!(rsp.status(), 200, "retries hide the failing endpoint");
    let served_by = rsp.extensions().get::<ServedBy>().map(|s| s.0);
    rsp.into_body().collect().await.expect("body");
    served_by
}

#[tokio::test]
async fn a_failing_endpoint_is_taken_out_and_returns_after_it_recovers() {
    let good = [
        Switchable::start(false).await,
        Switchable::start(false).await,
    ];
    let bad = Switchable::start(true).await;
    let addrs = [good[0].addr, good[1].addr, bad.addr];
    // Outlier detection scaled to a test: sweeps every 100 ms, ejections from 300 ms, and up to
    // half of the endpoints ejected (Envoy's default 10 % of three allows none).
    let outlier = OutlierConfig::builder()
        .interval(Duration::from_millis(100))
        .base_ejection_time(Duration::from_millis(300))
        .max_ejection_percent(50)
        .build()
        .unwrap();
    let client = Client::builder()
        .discover(discover::fixed(addrs).unwrap())
        .balance(
            // Round robin keeps sending to the bad endpoint until health takes it out; the
            // default PeakEWMA would shun it after its first failure, before any ejection.
            BalanceConfig::builder()
                .picker(Picker::RoundRobin)
                .outlier(outlier)
                .seed(7)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    // The bad endpoint is tried until five consecutive 503s trip its breaker and eject it;
    // every request still succeeds, retried on a good endpoint.
    for _ in 0..100 {
        get(&client).await;
        let snapshot = client.snapshot();
        if snapshot.endpoint(bad.addr).unwrap().outlier.ejected {
            break;
        }
    }
    let snapshot = client.snapshot();
    let taken_out = snapshot.endpoint(bad.addr).unwrap();
    assert!(taken_out.outlier.ejected, "{taken_out:?}");
    assert_eq!(
        taken_out.outlier.reason,
        Some(EjectionReason::Consecutive5xx)
    );
    assert_eq!(taken_out.availability(), "ejected by outlier detection");
    assert_eq!(snapshot.outlier.ejections_enforced_consecutive_5xx, 1);

    // While it is out, traffic goes to the two good endpoints only.
    let served_before = bad.served();
    for _ in 0..40 {
        let by = get(&client).await.unwrap();
        assert_ne!(by, bad.addr);
    }
    assert_eq!(bad.served(), served_before);

    // It recovers: once its ejection has ended (at a sweep, after 300 ms) and its breaker's
    // open period has passed (at most 1 s), a probe succeeds and it is picked again. Requests
    // keep flowing meanwhile, for at most 3 s.
    bad.failing.store(false, Ordering::Relaxed);
    let recovering = tokio::time::Instant::now();
    let mut back = false;
    while recovering.elapsed() < Duration::from_secs(3) {
        if get(&client).await == Some(bad.addr) {
            back = true;
            break;
        }
    }
    assert!(back, "the recovered endpoint never served again");
    let snapshot = client.snapshot();
    let endpoint = snapshot.endpoint(bad.addr).unwrap();
    assert!(!endpoint.outlier.ejected, "{endpoint:?}");
    assert_eq!(endpoint.outlier.times_ejected, 1);
    assert!(good.iter().all(|g| g.served() > 0));
}
