//! Loopback load test: the raw hyper-util client, round robin, tower's balancer, proxyless and
//! two sidecar proxies, measured in the same run against the same backends.
//!
//! The backends run in a child process (see `backend.rs`); the sidecars, haproxy and nginx, in
//! their own processes (see `sidecar.rs`; skipped, and said so in the report, when they are not
//! installed: `benches/sidecars.sh` installs them and runs this). Everything listens on
//! 127.0.0.1. The variants, one after the other in each scenario:
//!
//! | variant | client |
//! |---|---|
//! | `raw` | one hyper-util legacy client to *one* backend: the physical limit |
//! | `round_robin` | one hyper-util client per backend, picked by an atomic counter |
//! | `tower_p2c` | tower's `p2c::Balance` over `PeakEwmaDiscover` of per-backend hyper-util clients, shared through `tower::buffer::Buffer` as tonic does |
//! | `proxyless_balance` | `proxyless::balance::Balance` over `proxyless::http::EndpointClients`, no retry layer |
//! | `proxyless` | `proxyless::Client::builder()`, the full default stack (retry, balance, health) |
//! | `proxyless_decay_1s` | the full stack with a 1 s PeakEWMA decay instead of 10 s; only in the `one_slow` scenarios |
//! | `haproxy`, `nginx` | the raw hyper-util client to a local sidecar balancing over the backends (`random(2)` / `random two least_conn`, keep-alive upstream, retries on) |
//!
//! Phases:
//!
//! - **Closed loop** (saturation): C workers send back to back for D seconds: throughput and
//!   latency (HdrHistogram, µs).
//! - **Open loop** at a fixed rate (wrk2 model): a pacer thread releases each request at its
//!   scheduled time (`std::thread::sleep`, which wakes within tens of µs, where tokio's timer
//!   rounds to 1 ms) and each latency is measured from that *scheduled* start, which corrects for
//!   coordinated omission. The uncorrected p99 (from the actual send) is shown too.
//!
//! Every phase reads the CPU time (`utime + stime` from `/proc/<pid>/stat`, 10 ms ticks) of
//! each process: this one (the client), the backends' and the sidecar's, and the requests each
//! backend received (for traffic shares and retry amplification). During open loops the counts
//! are sampled every 100 ms for the traffic-share-over-time charts.
//!
//! Scenarios: `homogeneous` over HTTP/1.1 (closed loop and open loop), `homogeneous_4x` (open
//! loop at four times the rate) and `homogeneous_h2` over HTTP/2 (pure overhead); `one_slow` (one
//! backend 10 ms, the others 1 ms) and `one_slow_removed` (the same without the slow one, the
//! reference for its p99); `one_503`, `one_refusing`, `one_hanging` (one bad backend of N; open
//! loop only, from the first request, every variant with a 250 ms per-try timeout where it has
//! one); `churn` (every 500 ms a new backend joins through discovery and the oldest leaves, then
//! stops 1 s later; variants with discovery only).
//!
//! # Running
//!
//! - `cargo bench --bench load`: the full configuration (N = 10), about 8 minutes. Progress goes
//!   to stderr; the report (`report.md`) and SVG charts go to `target/bench-results/load/`
//!   (under `$CARGO_TARGET_DIR` when that is set), the report to stdout too.
//!   `-- --scenarios homogeneous,one_503 --variants raw,proxyless` runs a part (results in
//!   `load-partial/`); `-- --runs 3` runs everything three times, interleaved (each run starts
//!   with another variant), and reports the median run with the spread.
//! - `cargo test --benches` runs it without `--bench`: a smoke configuration (N = 3, a few
//!   hundred requests per variant) in about 40 seconds, which fails if a request fails where
//!   none may (no bad backend; and the full proxyless stack in every scenario) or if a variant
//!   other than an uninstalled sidecar cannot be built. Results go to
//!   `target/bench-results/load-smoke/`.
//!
//! All traffic stays on 127.0.0.1; every loop is bounded in count and in time.

mod backend;
// Cargo builds benches with `--cfg test` but runs no tests in them: the unit tests of these two
// std-only modules run from `tests/load_harness.rs`, and here their test helpers are unused.
#[cfg_attr(test, allow(dead_code))]
mod chart;
mod report;
#[cfg_attr(test, allow(dead_code))]
mod sidecar;
mod variants;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use http::StatusCode;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use backend::{Backends, Behaviour};
use variants::{Protocol, Sender, Settings, Variant};

/// Highest latency the histograms hold (longer ones saturate): 60 s in µs.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// How often open loops sample the backends' counts.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long a backend that left discovery keeps serving before it stops (churn).
const CHURN_GRACE: Duration = Duration::from_secs(1);
/// Per-try timeout in the failure scenarios, for the variants that have one.
const FAILURE_PER_TRY_TIMEOUT: Duration = Duration::from_millis(250);

/// One run's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Full run (`--bench`) or smoke test.
    pub full: bool,
    pub backends: usize,
    pub workers: usize,
    /// Closed loop: the time bound, and the request bound.
    pub closed_duration: Duration,
    pub closed_requests: u64,
    /// Warm-up before the measured phases: the time bound, and the request bound.
    warmup_duration: Duration,
    warmup_requests: u64,
    /// Open loop: requests per second, for this long.
    pub open_rate: u64,
    pub open_duration: Duration,
    /// Open loop: most requests in flight; more are dropped.
    pub open_cap: usize,
    /// Longest wait for one request; past it the request counts as failed.
    pub request_timeout: Duration,
    /// Churn: one backend replaced this often.
    pub churn_every: Duration,
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
    open_cap: 10_000,
    request_timeout: Duration::from_secs(2),
    churn_every: Duration::from_millis(500),
};

const SMOKE: Config = Config {
    full: false,
    backends: 3,
    workers: 4,
    closed_duration: Duration::from_secs(2),
    closed_requests: 200,
    warmup_duration: Duration::from_millis(500),
    warmup_requests: 20,
    open_rate: 400,
    open_duration: Duration::from_millis(500),
    open_cap: 1_000,
    request_timeout: Duration::from_secs(2),
    churn_every: Duration::from_millis(100),
};

/// A set of backends and how the variants are driven against them.
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub protocol: Protocol,
    behaviours: Vec<Behaviour>,
    /// The backend whose share of the traffic is reported (slow or failing).
    pub watched: Option<usize>,
    /// What the watched backend is, for the charts.
    pub watched_label: &'static str,
    /// Whether the watched backend's requests can be counted (not when it refuses connections;
    /// one that never answers counts connections, one per HTTP/1.1 request).
    pub watched_counted: bool,
    /// The open loop's rate, as a multiple of the configured one.
    pub rate_factor: u64,
    /// Whether it has a closed loop phase (the open loop always runs).
    pub closed: bool,
    /// Whether it replaces backends while the open loop runs.
    pub churn: bool,
    /// Whether a bad backend is in the set (failures are expected from some variants).
    pub failing: bool,
    per_try_timeout: Option<Duration>,
}

impl Scenario {
    fn variants(&self, filter: &Filter) -> Vec<&'static str> {
        let all: &[&'static str] = if self.churn {
            &variants::DYNAMIC
        } else {
            &variants::ALL
        };
        let slow = self.name.starts_with("one_slow");
        all.iter()
            .copied()
            .filter(|name| slow || !variants::SLOW_ONLY.contains(name))
            .filter(|name| filter.variants.is_empty() || filter.variants.iter().any(|v| v == name))
            .collect()
    }
}

/// Which scenarios and variants to run, how many times: `--scenarios a,b` and `--variants x,y`
/// (all when empty), `--runs N` (1 by default).
#[derive(Debug)]
struct Filter {
    scenarios: Vec<String>,
    variants: Vec<String>,
    runs: usize,
}

impl Filter {
    fn from_args() -> Self {
        let mut filter = Self {
            scenarios: Vec::new(),
            variants: Vec::new(),
            runs: 1,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--runs" {
                filter.runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
                continue;
            }
            let list = match arg.as_str() {
                "--scenarios" => &mut filter.scenarios,
                "--variants" => &mut filter.variants,
                _ => continue,
            };
            let names = args.next().unwrap_or_default();
            list.extend(
                names
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            );
        }
        filter
    }

    fn is_empty(&self) -> bool {
        self.scenarios.is_empty() && self.variants.is_empty()
    }
}

fn scenarios(config: &Config) -> Vec<Scenario> {
    let n = config.backends;
    let fast = Behaviour::Ok(Duration::ZERO);
    let ms = Behaviour::Ok(Duration::from_millis(1));
    let with_last = |last: Behaviour| {
        let mut behaviours = vec![fast; n];
        behaviours[n - 1] = last;
        behaviours
    };
    let mut one_slow = vec![ms; n];
    one_slow[n - 1] = Behaviour::Ok(Duration::from_millis(10));
    let plain = |name, description, protocol, behaviours| Scenario {
        name,
        description,
        protocol,
        behaviours,
        watched: None,
        watched_label: "",
        watched_counted: true,
        rate_factor: 1,
        closed: true,
        churn: false,
        failing: false,
        per_try_timeout: None,
    };
    let failing = |name, description, watched_label, last| Scenario {
        watched: Some(n - 1),
        watched_label,
        watched_counted: last != Behaviour::Refuse,
        closed: false,
        failing: true,
        per_try_timeout: Some(FAILURE_PER_TRY_TIMEOUT),
        ..plain(name, description, Protocol::Http1, with_last(last))
    };
    vec![
        plain(
            "homogeneous",
            "all backends answer at once",
            Protocol::Http1,
            vec![fast; n],
        ),
        Scenario {
            closed: false,
            rate_factor: 4,
            ..plain(
                "homogeneous_4x",
                "all backends answer at once; open loop at four times the rate",
                Protocol::Http1,
                vec![fast; n],
            )
        },
        plain(
            "homogeneous_h2",
            "all backends answer at once, HTTP/2 prior knowledge",
            Protocol::Http2,
            vec![fast; n],
        ),
        Scenario {
            watched: Some(n - 1),
            watched_label: "the slow backend",
            ..plain(
                "one_slow",
                "one backend takes 10 ms, the others 1 ms",
                Protocol::Http1,
                one_slow,
            )
        },
        plain(
            "one_slow_removed",
            "`one_slow` without its slow backend: every backend takes 1 ms",
            Protocol::Http1,
            vec![ms; n - 1],
        ),
        failing(
            "one_503",
            "one backend answers every request with 503",
            "the backend answering 503",
            Behaviour::Status(503),
        ),
        failing(
            "one_refusing",
            "one backend refuses connections",
            "the refusing backend",
            Behaviour::Refuse,
        ),
        failing(
            "one_hanging",
            "one backend accepts connections and never answers",
            "the hanging backend",
            Behaviour::Hang,
        ),
        Scenario {
            closed: false,
            churn: true,
            ..plain(
                "churn",
                "every churn period a new backend joins and the oldest leaves discovery, then stops",
                Protocol::Http1,
                vec![fast; n],
            )
        },
    ]
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The outcome of one request: `Ok`, or why it failed.
async fn send_once(send: &Sender, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, send()).await {
        Ok(Ok(StatusCode::OK)) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(error)) => Err(format!("error: {error}")),
        Err(_) => Err(format!("no response in {timeout:?}")),
    }
}

/// Failed requests: how many, the first, and when the last one ended.
#[derive(Debug, Default)]
pub struct Errors {
    pub count: u64,
    pub first: Option<String>,
    pub last_at: Option<Duration>,
}

impl Errors {
    fn add(&mut self, error: String, at: Duration) {
        self.count += 1;
        self.first.get_or_insert(error);
        self.last_at = self.last_at.max(Some(at));
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if let Some(error) = other.first {
            self.first.get_or_insert(error);
        }
        self.last_at = self.last_at.max(other.last_at);
    }
}

/// CPU time spent during a phase, per process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub client: Option<Duration>,
    pub backends: Option<Duration>,
    pub sidecar: Option<Duration>,
}

impl Cpu {
    fn read(backends: &Backends, variant: &Variant) -> Self {
        Self {
            client: sidecar::process_cpu(std::process::id()),
            backends: backends.cpu(),
            sidecar: variant.sidecar.as_ref().and_then(sidecar::Sidecar::cpu),
        }
    }

    fn since(self, before: Self) -> Self {
        let diff = |after: Option<Duration>, before: Option<Duration>| {
            Some(after?.saturating_sub(before?))
        };
        Self {
            client: diff(self.client, before.client),
            backends: diff(self.backends, before.backends),
            sidecar: diff(self.sidecar, before.sidecar),
        }
    }

    /// All processes together; `None` when one of them could not be read.
    pub fn total(&self, with_sidecar: bool) -> Option<Duration> {
        let sidecar = if with_sidecar {
            self.sidecar?
        } else {
            Duration::ZERO
        };
        Some(self.client? + self.backends? + sidecar)
    }
}

/// What one phase measured.
pub struct Phase {
    pub ok: u64,
    pub errors: Errors,
    /// Open loop: scheduled requests not sent because too many were in flight.
    pub dropped: u64,
    pub elapsed: Duration,
    /// Open loop: how long requests were being released.
    pub scheduled: Option<Duration>,
    /// Closed loop: from the send; open loop: from the scheduled start (corrected).
    pub latency: Histogram<u64>,
    /// Open loop: from the actual send (uncorrected).
    pub service: Option<Histogram<u64>>,
    pub cpu: Cpu,
    /// Requests the backends received during the phase, by backend index.
    pub received: Vec<u64>,
    /// The index of the backend whose share is reported.
    pub watched: Option<usize>,
    /// Open loop: (seconds since start, share of the watched backend's received requests) per
    /// sampling window.
    pub timeline: Vec<(f64, f64)>,
    /// When proxyless' snapshot first showed the watched endpoint unavailable.
    pub taken_out_at: Option<Duration>,
}

impl Phase {
    /// Requests sent (answered or failed).
    pub fn sent(&self) -> u64 {
        self.ok + self.errors.count
    }

    pub fn success_rate(&self) -> f64 {
        let attempted = self.sent() + self.dropped;
        if attempted == 0 {
            return 0.0;
        }
        self.ok as f64 / attempted as f64
    }

    /// Successful requests per second: over the schedule for an open loop (its drain, up to a
    /// request timeout long, would otherwise count), over the run for a closed loop.
    pub fn throughput(&self) -> f64 {
        let over = self.scheduled.unwrap_or(self.elapsed);
        self.ok as f64 / over.as_secs_f64().max(1e-9)
    }

    /// Share of the received requests that went to the watched backend.
    pub fn watched_share(&self) -> Option<f64> {
        let total: u64 = self.received.iter().sum();
        let watched = self.received.get(self.watched?)?;
        (total > 0).then(|| *watched as f64 / total as f64)
    }

    /// Backend requests per client request.
    pub fn amplification(&self) -> Option<f64> {
        let sent = self.sent();
        (sent > 0).then(|| self.received.iter().sum::<u64>() as f64 / sent as f64)
    }

    /// When the watched backend stopped receiving requests: the end of the last sampling window
    /// in which it received any; `None` if it received some in the last window.
    pub fn watched_traffic_ends(&self) -> Option<f64> {
        let last_window = self.timeline.last()?.0;
        let last_busy = self
            .timeline
            .iter()
            .filter(|(_, share)| *share > 0.0)
            .map(|(at, _)| *at)
            .fold(0.0, f64::max);
        (last_busy < last_window).then_some(last_busy)
    }
}

/// The harness's side of one phase: what both loops need besides the sender.
struct Harness<'a> {
    config: &'a Config,
    backends: &'a Mutex<Backends>,
    variant: &'a Variant,
    watched: Option<usize>,
    rate_factor: u64,
}

impl Harness<'_> {
    async fn counts(&self) -> Vec<u64> {
        match self.backends.lock().await.counts().await {
            Ok(counts) => counts,
            Err(error) => panic!("{error}"),
        }
    }

    async fn cpu(&self) -> Cpu {
        Cpu::read(&*self.backends.lock().await, self.variant)
    }

    /// Samples the watched backend's share every [`SAMPLE_EVERY`] (and proxyless' view of it)
    /// until `done`.
    async fn sample(
        &self,
        start: Instant,
        done: &AtomicBool,
    ) -> (Vec<(f64, f64)>, Option<Duration>) {
        let mut timeline = Vec::new();
        let mut taken_out_at = None;
        let Some(watched) = self.watched else {
            return (timeline, taken_out_at);
        };
        let watched_addr = self.backends.lock().await.addrs.get(watched).copied();
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; windows start from it.
        ticker.tick().await;
        let mut before = self.counts().await;
        while !done.load(Ordering::Acquire) {
            ticker.tick().await;
            let after = self.counts().await;
            let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
            // The drain after the schedule sees only the slowest requests: not a share.
            let scheduled = start.elapsed() <= self.config.open_duration;
            if total > 0 && scheduled {
                let share = (after[watched] - before[watched]) as f64 / total as f64;
                timeline.push((start.elapsed().as_secs_f64(), share));
            }
            before = after;
            if taken_out_at.is_none()
                && let (Some(snapshot), Some(addr)) = (&self.variant.snapshot, watched_addr)
                && snapshot()
                    .endpoints
                    .iter()
                    .any(|endpoint| endpoint.addr == addr && endpoint.availability() != "available")
            {
                taken_out_at = Some(start.elapsed());
            }
        }
        (timeline, taken_out_at)
    }

    /// Replaces the oldest backend every churn period until `done`.
    async fn churn(&self, done: &AtomicBool) {
        let Some(set_endpoints) = &self.variant.set_endpoints else {
            return;
        };
        let mut live: Vec<usize> = {
            let backends = self.backends.lock().await;
            (backends.addrs.len() - self.config.backends..backends.addrs.len()).collect()
        };
        // Backends that left discovery, and when they stop: requests already on their way to one
        // get to finish, and a balancer gets time to apply the update, whatever the load.
        let mut leaving: std::collections::VecDeque<(Instant, usize)> = Default::default();
        let mut ticker = tokio::time::interval(self.config.churn_every);
        ticker.tick().await;
        while !done.load(Ordering::Acquire) {
            ticker.tick().await;
            while let Some(&(at, index)) = leaving.front() {
                if at > Instant::now() {
                    break;
                }
                leaving.pop_front();
                if let Err(error) = self.backends.lock().await.stop(index).await {
                    panic!("churn: {error}");
                }
            }
            let mut backends = self.backends.lock().await;
            let Ok(new) = backends.start(&[Behaviour::Ok(Duration::ZERO)]).await else {
                panic!("churn: could not start a backend");
            };
            let oldest = live.remove(0);
            live.push(backends.addrs.len() - 1);
            let addrs: Vec<_> = live.iter().map(|&index| backends.addrs[index]).collect();
            debug_assert_eq!(addrs.last(), new.first());
            set_endpoints(&addrs);
            leaving.push_back((Instant::now() + CHURN_GRACE, oldest));
        }
        // The rest stop with the scenario.
    }

    async fn finish(&self, mut phase: Phase, counts_before: Vec<u64>, cpu_before: Cpu) -> Phase {
        phase.cpu = self.cpu().await.since(cpu_before);
        let after = self.counts().await;
        phase.received = after
            .iter()
            .enumerate()
            .map(|(index, count)| count - counts_before.get(index).copied().unwrap_or(0))
            .collect();
        phase.watched = self.watched;
        phase
    }
}

fn empty_phase() -> Phase {
    Phase {
        ok: 0,
        errors: Errors::default(),
        dropped: 0,
        elapsed: Duration::ZERO,
        scheduled: None,
        latency: histogram(),
        service: None,
        cpu: Cpu::default(),
        received: Vec::new(),
        watched: None,
        timeline: Vec::new(),
        taken_out_at: None,
    }
}

/// `workers` tasks send back to back until `duration` passes or `max_requests` are sent.
async fn closed_loop(harness: &Harness<'_>, duration: Duration, max_requests: u64) -> Phase {
    let send = &harness.variant.send;
    let timeout = harness.config.request_timeout;
    let counts_before = harness.counts().await;
    let cpu_before = harness.cpu().await;
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..harness.config.workers {
        let send = Arc::clone(send);
        let issued = Arc::clone(&issued);
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut errors = Errors::default();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let sent = Instant::now();
                match send_once(&send, timeout).await {
                    Ok(()) => latency.saturating_record(micros(sent.elapsed()).max(1)),
                    Err(error) => errors.add(error, start.elapsed()),
                }
            }
            (latency, errors)
        });
    }
    let mut phase = empty_phase();
    while let Some(joined) = tasks.join_next().await {
        let (latency, errors) = joined.expect("worker does not panic");
        phase.latency.add(latency).expect("same histogram bounds");
        phase.errors.merge(errors);
    }
    phase.elapsed = start.elapsed();
    phase.ok = phase.latency.len();
    harness.finish(phase, counts_before, cpu_before).await
}

/// Sends `open_rate` requests a second for `open_duration`, each timed from its scheduled start;
/// at most `open_cap` in flight, the rest dropped. Samples shares and churns alongside.
async fn open_loop(harness: &Harness<'_>, churn: bool) -> Phase {
    let counts_before = harness.counts().await;
    let cpu_before = harness.cpu().await;
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let drive = async {
        let result = drive_open(harness, start).await;
        done.store(true, Ordering::Release);
        result
    };
    let churning = async {
        if churn {
            harness.churn(&done).await;
        }
    };
    let (mut phase, (timeline, taken_out_at), ()) =
        tokio::join!(drive, harness.sample(start, &done), churning);
    phase.timeline = timeline;
    phase.taken_out_at = taken_out_at;
    harness.finish(phase, counts_before, cpu_before).await
}

type Outcome = Result<(u64, u64), (String, Duration)>;

/// Releases the open loop's requests on schedule from a blocking-pool thread: `std::thread::sleep`
/// wakes within tens of µs of the release time, where tokio's timer wheel rounds to 1 ms.
/// Returns the requests in flight, and the phase with what finished before the end and the
/// dropped count.
fn pace(
    config: Config,
    rate: u64,
    send: Sender,
    start: Instant,
) -> (JoinSet<Outcome>, Phase, Histogram<u64>) {
    let timeout = config.request_timeout;
    let rate = rate.max(1);
    let total = (rate as f64 * config.open_duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut phase = empty_phase();
    let mut service = histogram();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let origin = std::time::Instant::now();
    for index in 0..total {
        let scheduled = origin + period.mul_f64(index as f64);
        if let Some(wait) = scheduled.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        while let Some(joined) = tasks.try_join_next() {
            collect(&mut phase, &mut service, joined);
        }
        if tasks.len() >= config.open_cap {
            phase.dropped += 1;
            continue;
        }
        let send = Arc::clone(&send);
        tasks.spawn(async move {
            let sent = std::time::Instant::now();
            send_once(&send, timeout)
                .await
                .map_err(|error| (error, start.elapsed()))?;
            let now = std::time::Instant::now();
            Ok((
                micros(now.saturating_duration_since(scheduled)).max(1),
                micros(now.saturating_duration_since(sent)).max(1),
            ))
        });
    }
    (tasks, phase, service)
}

fn collect(
    phase: &mut Phase,
    service: &mut Histogram<u64>,
    joined: Result<Outcome, tokio::task::JoinError>,
) {
    match joined.expect("request task does not panic") {
        Ok((corrected, uncorrected)) => {
            phase.latency.saturating_record(corrected);
            service.saturating_record(uncorrected);
        }
        Err((error, at)) => phase.errors.add(error, at),
    }
}

async fn drive_open(harness: &Harness<'_>, start: Instant) -> Phase {
    let config = *harness.config;
    let send = Arc::clone(&harness.variant.send);
    let rate = config.open_rate * harness.rate_factor;
    let paced = tokio::task::spawn_blocking(move || pace(config, rate, send, start)).await;
    let (mut tasks, mut phase, mut service) = paced.expect("the pacer does not panic");
    // Every request has its own timeout, so this ends.
    while let Some(joined) = tasks.join_next().await {
        collect(&mut phase, &mut service, joined);
    }
    phase.elapsed = start.elapsed();
    phase.scheduled = Some(config.open_duration);
    phase.ok = phase.latency.len();
    phase.service = Some(service);
    phase
}

/// One variant's results in one scenario; `skipped` says why it did not run. With several
/// runs, each phase is the median run's (by throughput for the closed loop, by p99 for the open
/// loop), and the spreads give the lowest and highest of those figures over the runs.
pub struct Row {
    pub name: &'static str,
    /// The sidecar's version, for sidecar variants.
    pub version: Option<String>,
    pub closed: Option<Phase>,
    pub open: Option<Phase>,
    pub skipped: Option<String>,
    /// Runs measured.
    pub runs: usize,
    /// Closed-loop throughput, lowest and highest over the runs.
    pub closed_spread: Option<(f64, f64)>,
    /// Open-loop p99 (µs), lowest and highest over the runs.
    pub open_spread: Option<(u64, u64)>,
}

impl Row {
    fn from_runs(name: &'static str, mut runs: Vec<Measured>, skipped: Option<String>) -> Self {
        let version = runs.first().and_then(|run| run.version.clone());
        let count = runs.len();
        let mut closed: Vec<Phase> = runs
            .iter_mut()
            .filter_map(|run| run.closed.take())
            .collect();
        let mut open: Vec<Phase> = runs.into_iter().map(|run| run.open).collect();
        closed.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        open.sort_by_key(|phase| phase.latency.value_at_quantile(0.99));
        let closed_spread = closed
            .first()
            .zip(closed.last())
            .map(|(low, high)| (low.throughput(), high.throughput()));
        let open_spread = open.first().zip(open.last()).map(|(low, high)| {
            (
                low.latency.value_at_quantile(0.99),
                high.latency.value_at_quantile(0.99),
            )
        });
        let median = |phases: &mut Vec<Phase>| {
            let middle = phases.len() / 2;
            (!phases.is_empty()).then(|| phases.swap_remove(middle))
        };
        Self {
            name,
            version,
            closed: median(&mut closed),
            open: median(&mut open),
            skipped,
            runs: count,
            closed_spread,
            open_spread,
        }
    }
}

/// One variant's phases in one run of a scenario.
struct Measured {
    version: Option<String>,
    closed: Option<Phase>,
    open: Phase,
}

async fn run_scenario(
    config: &Config,
    filter: &Filter,
    scenario: &Scenario,
    backends: &Mutex<Backends>,
    progress: &mut Progress,
) -> Vec<Row> {
    // Backends are numbered across the whole run: `first` is this set's first index.
    let start_backends = || async {
        let mut backends = backends.lock().await;
        let first = backends.addrs.len();
        match backends.start(&scenario.behaviours).await {
            Ok(addrs) => (first, addrs),
            Err(error) => panic!("{}: {error}", scenario.name),
        }
    };
    let (mut first, mut addrs) = start_backends().await;
    let names = scenario.variants(filter);
    let mut measured: Vec<Vec<Measured>> = names.iter().map(|_| Vec::new()).collect();
    let mut skipped: Vec<Option<String>> = vec![None; names.len()];
    let mut used = false;
    for run in 0..filter.runs {
        // Each run starts with another variant, so none always goes first or last.
        for k in 0..names.len() {
            let index = (k + run) % names.len();
            let name = names[index];
            if skipped[index].is_some() {
                continue;
            }
            progress.step(scenario.name, name);
            if scenario.churn && used {
                // The previous variant's churn stopped some of them.
                (first, addrs) = start_backends().await;
            }
            used = true;
            match measure(config, scenario, backends, name, first, &addrs).await {
                Ok(result) => measured[index].push(result),
                Err(error) => {
                    // Only a proxy that is not installed may be missing from a smoke run.
                    assert!(
                        config.full || variants::SIDECARS.contains(&name),
                        "{} / {name}: {error}",
                        scenario.name
                    );
                    eprintln!("load: {} / {name}: skipped: {error}", scenario.name);
                    skipped[index] = Some(error);
                }
            }
        }
    }
    // The scenario's backends stop; later scenarios start their own.
    let mut running = backends.lock().await;
    for index in 0..running.addrs.len() {
        let _ = running.stop(index).await;
    }
    names
        .into_iter()
        .zip(measured.into_iter().zip(skipped))
        .map(|(name, (runs, skipped))| Row::from_runs(name, runs, skipped))
        .collect()
}

/// Builds `name` over `addrs` and measures it: warm-up, closed loop, open loop.
async fn measure(
    config: &Config,
    scenario: &Scenario,
    backends: &Mutex<Backends>,
    name: &'static str,
    first: usize,
    addrs: &[std::net::SocketAddr],
) -> Result<Measured, String> {
    let settings = Settings {
        protocol: scenario.protocol,
        per_try_timeout: scenario.per_try_timeout,
    };
    let variant = variants::build(name, addrs, settings).await?;
    let harness = Harness {
        config,
        backends,
        variant: &variant,
        watched: scenario.watched.map(|index| first + index),
        rate_factor: scenario.rate_factor,
    };
    // With a bad backend, time to take it out is measured from the first request.
    if !scenario.failing && !scenario.churn {
        let warmup = closed_loop(&harness, config.warmup_duration, config.warmup_requests).await;
        check(config, scenario, name, "warm-up", &warmup);
    }
    let mut closed = None;
    if scenario.closed {
        let phase = closed_loop(&harness, config.closed_duration, config.closed_requests).await;
        eprintln!(
            "load: {} / {name}: closed loop: {} ok, {} failed, {:.0} req/s, p99 {} µs",
            scenario.name,
            phase.ok,
            phase.errors.count,
            phase.throughput(),
            phase.latency.value_at_quantile(0.99),
        );
        check(config, scenario, name, "closed loop", &phase);
        closed = Some(phase);
    }
    let open = open_loop(&harness, scenario.churn).await;
    eprintln!(
        "load: {} / {name}: open loop: {} ok, {} failed, {} dropped, p99 {} µs",
        scenario.name,
        open.ok,
        open.errors.count,
        open.dropped,
        open.latency.value_at_quantile(0.99),
    );
    check(config, scenario, name, "open loop", &open);
    Ok(Measured {
        version: variant.sidecar.as_ref().map(sidecar::Sidecar::version),
        closed,
        open,
    })
}

/// Reports failures on stderr. The smoke configuration fails the run on a failed request where
/// none may fail: without a bad backend, and for the full proxyless stack in every scenario.
fn check(config: &Config, scenario: &Scenario, name: &str, phase_name: &str, phase: &Phase) {
    let errors = &phase.errors;
    if errors.count == 0 && phase.dropped == 0 {
        return;
    }
    let first = errors.first.as_deref().unwrap_or("?");
    eprintln!(
        "load: {} / {name}: {phase_name}: {} failed, {} dropped, first: {first}",
        scenario.name, errors.count, phase.dropped
    );
    let must_succeed = !scenario.failing || name == "proxyless";
    assert!(
        config.full || !must_succeed,
        "{} / {name}: {phase_name}: {} requests failed, {} dropped, first: {first}",
        scenario.name,
        errors.count,
        phase.dropped
    );
}

/// Counts the variants run so far, for the progress lines.
struct Progress {
    done: usize,
    total: usize,
    start: Instant,
}

impl Progress {
    fn step(&mut self, scenario: &str, variant: &str) {
        self.done += 1;
        eprintln!(
            "load: [{}/{}, {:.0} s] {scenario} / {variant}",
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn results_dir(config: &Config, filter: &Filter) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target
        .join("bench-results")
        .join(match (config.full, filter.is_empty()) {
            (true, true) => "load",
            (true, false) => "load-partial",
            (false, _) => "load-smoke",
        })
}

fn main() {
    if std::env::var_os(backend::ROLE_VAR).is_some() {
        backend::main();
        return;
    }
    let config = if std::env::args().any(|arg| arg == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let filter = Filter::from_args();
    let scenarios: Vec<Scenario> = scenarios(&config)
        .into_iter()
        .filter(|s| filter.scenarios.is_empty() || filter.scenarios.iter().any(|n| n == s.name))
        .collect();
    let mut results = Vec::new();
    runtime.block_on(async {
        let backends = match Backends::spawn() {
            Ok(backends) => Mutex::new(backends),
            Err(error) => panic!("{error}"),
        };
        let mut progress = Progress {
            done: 0,
            total: filter.runs
                * scenarios
                    .iter()
                    .map(|s| s.variants(&filter).len())
                    .sum::<usize>(),
            start: Instant::now(),
        };
        for scenario in &scenarios {
            let rows = run_scenario(&config, &filter, scenario, &backends, &mut progress).await;
            results.push(rows);
        }
    });
    let dir = results_dir(&config, &filter);
    let report = report::write(&config, &scenarios, &results, &dir);
    println!("{report}");
    eprintln!("load: results written to {}", dir.display());
    runtime.shutdown_timeout(Duration::from_secs(1));
}
