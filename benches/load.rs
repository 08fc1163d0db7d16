//! Loopback load test: the raw hyper-util client, round robin, tower's balancer and proxyless,
//! measured in the same run against the same in-process HTTP/1.1 backends.
//!
//! Each scenario starts N backends on 127.0.0.1 (port 0), answering `ok` after a per-backend
//! delay (`tokio::time::sleep`; none for a fast backend). Against them, one after the other:
//!
//! | variant | client |
//! |---|---|
//! | `raw` | one hyper-util legacy client to *one* backend: the physical limit |
//! | `round_robin` | one hyper-util client per backend, picked by an atomic counter |
//! | `tower_p2c` | tower's `p2c::Balance` over `PeakEwmaDiscover` of per-backend hyper-util clients, shared through `tower::buffer::Buffer` as tonic does; `ready` then `call` on a clone |
//! | `proxyless_balance` | `proxyless::balance::Balance` over `proxyless::http::EndpointClients`, no retry layer |
//! | `proxyless` | `proxyless::Client::builder()`, the full default stack (retry, balance, health) |
//!
//! Each variant gets a short warm-up, then two phases:
//!
//! - **Closed loop** (saturation): C workers send requests back to back for D seconds. Reports
//!   throughput, p50/p99/p99.9 latency (HdrHistogram, µs) and CPU time per request. The CPU
//!   figure is the whole process's `utime + stime` from `/proc/self/stat` (100 Hz ticks) divided
//!   by the requests: the backends run in the same process and on the same cores, so it is
//!   **client + server** CPU, comparable between variants but not a client-only cost.
//! - **Open loop** at a fixed rate R (wrk2 model): requests are released by a
//!   `tokio::time::interval` with `MissedTickBehavior::Burst`, and each latency is measured from
//!   the request's *scheduled* start (coordinated-omission correction). At most `4 × C` requests
//!   are in flight; a scheduled request over that cap is dropped and counted. tokio's timer has
//!   1 ms granularity, so corrected latencies include up to about 1 ms of release lateness for
//!   every variant alike; the table also shows the uncorrected p99 (from the actual send).
//!
//! Scenarios: `homogeneous` (all backends answer at once) and `one_slow` (one backend takes
//! 10 ms, the others 1 ms; the table shows the slow backend's share of the requests, counted on
//! the server side). `raw` always talks to backend 0, which is fast.
//!
//! Every response must be `200`; failures (including a 5 s per-request timeout) are counted and
//! reported.
//!
//! # Running
//!
//! - `cargo bench --bench load`: the full configuration (N = 10, C = 32, D = 5 s,
//!   R = 5,000 req/s for 5 s), about 2 minutes. Progress goes to stderr; a markdown table per
//!   scenario goes to stdout and to `target/bench-results/load.md` (under `$CARGO_TARGET_DIR`
//!   when that is set).
//! - `cargo test --benches` runs it without `--bench`: a smoke configuration (N = 3, C = 4,
//!   200 requests per variant, open loop 200 req/s for 0.2 s) in a few seconds, which panics if
//!   any request fails. Its tables go to `target/bench-results/load-smoke.md`.
//!
//! All traffic stays on 127.0.0.1; every loop is bounded in count and in time.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxyless::balance::{Balance, BalanceConfig};
use proxyless::discover;
use proxyless::http::EndpointClients;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type SendFuture = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;
/// Sends one request through a variant and reads its body to the end.
type Sender = Arc<dyn Fn() -> SendFuture + Send + Sync>;

/// Longest wait for one request; past it the request counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the open loop's last requests after the schedule ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a balancer's discovery to publish every backend.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(10);
/// Highest latency the histograms hold (longer ones saturate): 60 s in µs.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// `/proc/self/stat` ticks per second (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

const VARIANTS: [&str; 5] = [
    "raw",
    "round_robin",
    "tower_p2c",
    "proxyless_balance",
    "proxyless",
];

/// One run's sizes.
#[derive(Clone, Copy, Debug)]
struct Config {
    /// Full run (`--bench`) or smoke test.
    full: bool,
    backends: usize,
    workers: usize,
    /// Closed loop: the time bound, and the request bound.
    closed_duration: Duration,
    closed_requests: u64,
    /// Warm-up before each variant: the time bound, and the request bound.
    warmup_duration: Duration,
    warmup_requests: u64,
    /// Open loop: requests per second, for this long.
    open_rate: u64,
    open_duration: Duration,
    /// Open loop: most requests in flight; more are dropped.
    open_cap: usize,
}

const FULL: Config = Config {
    full: true,
    backends: 10,
    workers: 32,
    closed_duration: Duration::from_secs(5),
    closed_requests: 50_000_000,
    warmup_duration: Duration::from_millis(500),
    warmup_requests: 5_000_000,
    open_rate: 5_000,
    open_duration: Duration::from_secs(5),
    open_cap: 4 * 32,
};

const SMOKE: Config = Config {
    full: false,
    backends: 3,
    workers: 4,
    closed_duration: Duration::from_secs(2),
    closed_requests: 200,
    warmup_duration: Duration::from_millis(500),
    warmup_requests: 20,
    open_rate: 200,
    open_duration: Duration::from_millis(200),
    open_cap: 4 * 4,
};

/// A set of backends and how slow each one is.
struct Scenario {
    name: &'static str,
    description: &'static str,
    delays: Vec<Duration>,
    /// The backend whose share of traffic is reported.
    slow: Option<usize>,
}

fn scenarios(config: &Config) -> Vec<Scenario> {
    let n = config.backends;
    let mut one_slow = vec![Duration::from_millis(1); n];
    one_slow[n - 1] = Duration::from_millis(10);
    vec![
        Scenario {
            name: "homogeneous",
            description: "all backends answer at once",
            delays: vec![Duration::ZERO; n],
            slow: None,
        },
        Scenario {
            name: "one_slow",
            description: "one backend takes 10 ms, the others 1 ms",
            delays: one_slow,
            slow: Some(n - 1),
        },
    ]
}

/// The running backends of a scenario: addresses and server-side request counts.
struct Backends {
    addrs: Vec<SocketAddr>,
    served: Arc<Vec<AtomicU64>>,
    tasks: JoinSet<()>,
}

impl Backends {
    async fn start(delays: &[Duration]) -> Self {
        let served: Arc<Vec<AtomicU64>> =
            Arc::new(delays.iter().map(|_| AtomicU64::new(0)).collect());
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::with_capacity(delays.len());
        for (index, &delay) in delays.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            addrs.push(listener.local_addr().expect("local address"));
            let served = Arc::clone(&served);
            tasks.spawn(serve(listener, delay, index, served));
        }
        Self {
            addrs,
            served,
            tasks,
        }
    }

    /// Requests served so far, per backend.
    fn counts(&self) -> Vec<u64> {
        self.served
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }
}

/// Accepts connections until aborted; dropping the accept task's `JoinSet` ends its connections.
async fn serve(listener: TcpListener, delay: Duration, index: usize, served: Arc<Vec<AtomicU64>>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let served = Arc::clone(&served);
        let service = service_fn(move |_request: Request<Incoming>| {
            let served = Arc::clone(&served);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                served[index].fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        connections.spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Reads a response's body to its end and returns its status.
async fn drain<B>(response: Response<B>) -> Result<StatusCode, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let mut body = pin!(response.into_body());
    while let Some(frame) = body.frame().await {
        frame.map_err(Into::into)?;
    }
    Ok(status)
}

fn request(uri: Uri) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    request
}

fn legacy_builder() -> legacy::Builder {
    legacy::Client::builder(TokioExecutor::new())
}

fn legacy_client() -> legacy::Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    legacy_builder().build(connector)
}

fn backend_uri(addr: SocketAddr) -> Uri {
    format!("http://{addr}/").parse().expect("valid URI")
}

/// Waits until `published()` reaches `n`.
async fn wait_for_discovery(n: usize, published: impl Fn() -> usize) {
    let deadline = Instant::now() + DISCOVERY_DEADLINE;
    while published() < n {
        assert!(
            Instant::now() < deadline,
            "discovery published {} of {n} endpoints",
            published()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Builds the named variant over `addrs`.
async fn variant(name: &str, addrs: &[SocketAddr]) -> Sender {
    // The logical URI for balancers that pick the address themselves.
    let logical = Uri::from_static("http://backend/");
    match name {
        "raw" => {
            let client = legacy_client();
            let uri = backend_uri(addrs[0]);
            Arc::new(move || {
                let future = client.request(request(uri.clone()));
                Box::pin(async move { drain(future.await?).await })
            })
        }
        "round_robin" => {
            let clients: Vec<_> = addrs
                .iter()
                .map(|&addr| (legacy_client(), backend_uri(addr)))
                .collect();
            let next = AtomicUsize::new(0);
            Arc::new(move || {
                let (client, uri) = &clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()];
                let future = client.request(request(uri.clone()));
                Box::pin(async move { drain(future.await?).await })
            })
        }
        "tower_p2c" => {
            let services: Vec<_> = addrs
                .iter()
                .map(|&addr| {
                    let uri = backend_uri(addr);
                    legacy_client().map_request(move |mut request: Request<Full<Bytes>>| {
                        *request.uri_mut() = uri.clone();
                        request
                    })
                })
                .collect();
            // tower's own defaults in its examples: 30 ms default RTT, 10 s decay.
            let discover = PeakEwmaDiscover::new::<Request<Full<Bytes>>>(
                ServiceList::new(services),
                Duration::from_millis(30),
                Duration::from_secs(10),
                CompleteOnResponse::default(),
            );
            let balance = tower::balance::p2c::Balance::new(discover);
            let buffer = tower::buffer::Buffer::new(balance, 1024);
            Arc::new(move || {
                let mut svc = buffer.clone();
                let request = request(logical.clone());
                Box::pin(async move {
                    let response = svc.ready().await?.call(request).await?;
                    drain(response).await
                })
            })
        }
        "proxyless_balance" => {
            let clients = EndpointClients::<Full<Bytes>>::new(legacy_builder());
            let source = discover::fixed(addrs.iter().copied()).expect("valid endpoints");
            let balance =
                Balance::new(source, clients, BalanceConfig::default()).expect("inside a runtime");
            wait_for_discovery(addrs.len(), || balance.snapshot().endpoints.len()).await;
            Arc::new(move || {
                let future = balance.clone().oneshot(request(logical.clone()));
                Box::pin(async move { drain(future.await?).await })
            })
        }
        "proxyless" => {
            let client = proxyless::Client::builder()
                .discover(discover::fixed(addrs.iter().copied()).expect("valid endpoints"))
                .build()
                .expect("valid client");
            wait_for_discovery(addrs.len(), || client.snapshot().endpoints.len()).await;
            Arc::new(move || {
                let client = client.clone();
                let request = request(logical.clone());
                Box::pin(async move { drain(client.request(request).await?).await })
            })
        }
        other => unreachable!("unknown variant {other}"),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The outcome of one request: its status, or why it failed.
async fn send_once(send: &Sender) -> Result<(), String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, send()).await {
        Ok(Ok(StatusCode::OK)) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(error)) => Err(format!("error: {error}")),
        Err(_) => Err(format!("no response in {REQUEST_TIMEOUT:?}")),
    }
}

/// Failed requests, with the first failure for the report.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if let Some(error) = other.first {
            self.first.get_or_insert(error);
        }
    }
}

/// The process's user + system CPU time so far, from `/proc/self/stat` (Linux only).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces, start with field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1_000 / TICKS_PER_SECOND,
    ))
}

/// Closed loop results.
struct Closed {
    ok: u64,
    errors: Errors,
    elapsed: Duration,
    latency: Histogram<u64>,
    cpu: Option<Duration>,
}

/// `workers` tasks send back to back until `duration` passes or `max_requests` are sent.
async fn closed_loop(
    send: &Sender,
    workers: usize,
    duration: Duration,
    max_requests: u64,
) -> Closed {
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let send = Arc::clone(send);
        let issued = Arc::clone(&issued);
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut errors = Errors::default();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let sent = Instant::now();
                match send_once(&send).await {
                    Ok(()) => latency.saturating_record(micros(sent.elapsed()).max(1)),
                    Err(error) => errors.add(error),
                }
            }
            (latency, errors)
        });
    }
    let mut latency = histogram();
    let mut errors = Errors::default();
    while let Some(joined) = tasks.join_next().await {
        let (worker_latency, worker_errors) = joined.expect("worker does not panic");
        latency.add(worker_latency).expect("same histogram bounds");
        errors.merge(worker_errors);
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Closed {
        ok: latency.len(),
        errors,
        elapsed,
        latency,
        cpu,
    }
}

/// Open loop results.
struct Open {
    ok: u64,
    errors: Errors,
    dropped: u64,
    elapsed: Duration,
    /// From each request's scheduled start (corrected).
    latency: Histogram<u64>,
    /// From each request's actual send (uncorrected).
    service: Histogram<u64>,
}

/// Sends `rate` requests a second for `duration`, each timed from its scheduled start; at most
/// `cap` in flight, the rest dropped.
async fn open_loop(send: &Sender, rate: u64, duration: Duration, cap: usize) -> Open {
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let latency = Arc::new(Mutex::new(histogram()));
    let service = Arc::new(Mutex::new(histogram()));
    let mut errors = Errors::default();
    let mut dropped = 0;
    let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
    let mut collect = |result: Result<Result<(), String>, tokio::task::JoinError>| {
        if let Err(error) = result.expect("request task does not panic") {
            errors.add(error);
        }
    };
    let start = Instant::now();
    for _ in 0..total {
        let scheduled = ticker.tick().await;
        while let Some(result) = tasks.try_join_next() {
            collect(result);
        }
        if tasks.len() >= cap {
            dropped += 1;
            continue;
        }
        let send = Arc::clone(send);
        let latency = Arc::clone(&latency);
        let service = Arc::clone(&service);
        tasks.spawn(async move {
            let sent = Instant::now();
            send_once(&send).await?;
            let now = Instant::now();
            let corrected = micros(now.saturating_duration_since(scheduled)).max(1);
            let uncorrected = micros(now.saturating_duration_since(sent)).max(1);
            latency
                .lock()
                .expect("not poisoned")
                .saturating_record(corrected);
            service
                .lock()
                .expect("not poisoned")
                .saturating_record(uncorrected);
            Ok(())
        });
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(result) = tasks.join_next().await {
            collect(result);
        }
    })
    .await;
    if drained.is_err() {
        for _ in 0..tasks.len() {
            collect(Ok(Err(format!(
                "still in flight {DRAIN_TIMEOUT:?} after the schedule"
            ))));
        }
        tasks.abort_all();
    }
    let elapsed = start.elapsed();
    let latency = std::mem::replace(&mut *latency.lock().expect("not poisoned"), histogram());
    let service = std::mem::replace(&mut *service.lock().expect("not poisoned"), histogram());
    Open {
        ok: latency.len(),
        errors,
        dropped,
        elapsed,
        latency,
        service,
    }
}

/// One variant's results in one scenario.
struct Row {
    name: &'static str,
    closed: Closed,
    closed_slow_share: Option<f64>,
    open: Open,
    open_slow_share: Option<f64>,
}

/// The slow backend's share of the requests served between two count snapshots.
fn slow_share(slow: Option<usize>, before: &[u64], after: &[u64]) -> Option<f64> {
    let slow = slow?;
    let total: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
    (total > 0).then(|| (after[slow] - before[slow]) as f64 / total as f64)
}

async fn run_scenario(config: &Config, scenario: &Scenario) -> Vec<Row> {
    let mut backends = Backends::start(&scenario.delays).await;
    let mut rows = Vec::new();
    for name in VARIANTS {
        let send = variant(name, &backends.addrs).await;
        eprintln!("load: {} / {name}: warm-up", scenario.name);
        let warmup = closed_loop(
            &send,
            config.workers,
            config.warmup_duration,
            config.warmup_requests,
        )
        .await;
        report_errors(config, scenario, name, "warm-up", &warmup.errors);

        let before = backends.counts();
        let closed = closed_loop(
            &send,
            config.workers,
            config.closed_duration,
            config.closed_requests,
        )
        .await;
        let after = backends.counts();
        let closed_slow_share = slow_share(scenario.slow, &before, &after);
        eprintln!(
            "load: {} / {name}: closed loop {} ok, {} errors, {:.0} req/s, p99 {} µs",
            scenario.name,
            closed.ok,
            closed.errors.count,
            closed.ok as f64 / closed.elapsed.as_secs_f64(),
            closed.latency.value_at_quantile(0.99),
        );
        report_errors(config, scenario, name, "closed loop", &closed.errors);

        let before = backends.counts();
        let open = open_loop(
            &send,
            config.open_rate,
            config.open_duration,
            config.open_cap,
        )
        .await;
        let after = backends.counts();
        let open_slow_share = slow_share(scenario.slow, &before, &after);
        eprintln!(
            "load: {} / {name}: open loop {} ok, {} errors, {} dropped, p99 {} µs",
            scenario.name,
            open.ok,
            open.errors.count,
            open.dropped,
            open.latency.value_at_quantile(0.99),
        );
        report_errors(config, scenario, name, "open loop", &open.errors);

        rows.push(Row {
            name,
            closed,
            closed_slow_share,
            open,
            open_slow_share,
        });
    }
    backends.tasks.abort_all();
    rows
}

/// Reports failures on stderr; in the smoke configuration a failure fails the run.
fn report_errors(config: &Config, scenario: &Scenario, name: &str, phase: &str, errors: &Errors) {
    if errors.count == 0 {
        return;
    }
    let first = errors.first.as_deref().unwrap_or("?");
    eprintln!(
        "load: {} / {name}: {phase}: {} failed requests, first: {first}",
        scenario.name, errors.count
    );
    assert!(
        config.full,
        "{} / {name}: {phase}: {} requests failed, first: {first}",
        scenario.name, errors.count
    );
}

fn ratio(value: f64, reference: f64) -> String {
    if reference > 0.0 && value.is_finite() {
        format!("{:.2}×", value / reference)
    } else {
        "—".to_owned()
    }
}

fn share(share: Option<f64>) -> String {
    share.map_or_else(|| "—".to_owned(), |share| format!("{:.1} %", share * 100.0))
}

/// CPU µs per successful request.
fn cpu_per_request(closed: &Closed) -> Option<f64> {
    let cpu = closed.cpu?;
    (closed.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / closed.ok as f64)
}

fn table(config: &Config, scenario: &Scenario, rows: &[Row]) -> String {
    let throughput = |row: &Row| row.closed.ok as f64 / row.closed.elapsed.as_secs_f64();
    let raw = rows
        .iter()
        .find(|row| row.name == "raw")
        .map_or(0.0, throughput);
    let reference = rows.iter().find(|row| row.name == "proxyless");
    let ref_p99 = reference.map_or(0.0, |row| row.closed.latency.value_at_quantile(0.99) as f64);
    let ref_cpu = reference
        .and_then(|row| cpu_per_request(&row.closed))
        .unwrap_or(0.0);
    let ref_open_p99 = reference.map_or(0.0, |row| row.open.latency.value_at_quantile(0.99) as f64);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## {}: {} backends, {}\n",
        scenario.name, config.backends, scenario.description
    );
    let _ = writeln!(
        out,
        "Closed loop: {} workers, {:?} (at most {} requests) per variant. CPU is the whole \
         process (client **and** the in-process backends), `/proc/self/stat` utime + stime, \
         sampled in 10 ms ticks (meaningless for runs of a few hundred requests).\n",
        config.workers, config.closed_duration, config.closed_requests
    );
    let _ = writeln!(
        out,
        "| variant | req/s | vs raw | p50 µs | p99 µs | p99.9 µs | p99 vs proxyless | \
         CPU µs/req (client+server) | CPU vs proxyless | slow share | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let closed = &row.closed;
        let p99 = closed.latency.value_at_quantile(0.99);
        let cpu = cpu_per_request(closed);
        let _ = writeln!(
            out,
            "| `{}` | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            throughput(row),
            ratio(throughput(row), raw),
            closed.latency.value_at_quantile(0.5),
            p99,
            closed.latency.value_at_quantile(0.999),
            ratio(p99 as f64, ref_p99),
            cpu.map_or_else(|| "n/a".to_owned(), |cpu| format!("{cpu:.1}")),
            cpu.map_or_else(|| "—".to_owned(), |cpu| ratio(cpu, ref_cpu)),
            share(row.closed_slow_share),
            closed.errors.count,
        );
    }
    let _ = writeln!(
        out,
        "\nOpen loop: {} req/s scheduled for {:?}, latency from the scheduled start \
         (coordinated-omission corrected; includes up to ~1 ms of tokio timer lateness), at most \
         {} in flight.\n",
        config.open_rate, config.open_duration, config.open_cap
    );
    let _ = writeln!(
        out,
        "| variant | achieved req/s | p50 µs | p99 µs | p99.9 µs | p99 vs proxyless | \
         uncorrected p99 µs | dropped | slow share | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let open = &row.open;
        let p99 = open.latency.value_at_quantile(0.99);
        let _ = writeln!(
            out,
            "| `{}` | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            open.ok as f64 / open.elapsed.as_secs_f64(),
            open.latency.value_at_quantile(0.5),
            p99,
            open.latency.value_at_quantile(0.999),
            ratio(p99 as f64, ref_open_p99),
            open.service.value_at_quantile(0.99),
            open.dropped,
            share(row.open_slow_share),
            open.errors.count,
        );
    }
    out
}

fn results_path(config: &Config) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let file = if config.full {
        "load.md"
    } else {
        "load-smoke.md"
    };
    target.join("bench-results").join(file)
}

fn main() {
    let config = if std::env::args().any(|arg| arg == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut report = format!(
        "# Load test ({})\n\nLoopback, HTTP/1.1, backends and clients in one process on one tokio \
         runtime ({cores} worker threads on {cores} cores), release build.\n\n",
        if config.full { "full" } else { "smoke" }
    );
    runtime.block_on(async {
        for scenario in scenarios(&config) {
            let rows = run_scenario(&config, &scenario).await;
            let table = table(&config, &scenario, &rows);
            println!("{table}");
            report.push_str(&table);
            report.push('\n');
        }
    });
    let path = results_path(&config);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, &report));
    match written {
        Ok(()) => eprintln!("load: results written to {}", path.display()),
        Err(error) => eprintln!("load: could not write {}: {error}", path.display()),
    }
    // The backends' connection tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
}
