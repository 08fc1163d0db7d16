//! Why P2C over PeakEWMA, retries and retry budgets matter, in a few seconds.
//!
//! Starts five HTTP backends on loopback, one of them ten times slower than the others, and:
//!
//! 1. sends the same few thousand requests through two balanced clients, proxyless's default
//!    (power of two choices over PeakEWMA) and plain round robin, and prints each endpoint's
//!    share of the traffic and the latency percentiles side by side (also as an SVG chart);
//! 2. makes one backend answer 503 to 30 % of its requests and compares the success rate the
//!    caller sees with retries on and off;
//! 3. makes every backend answer 503 to half of its requests and shows the retry budget holding
//!    the extra load retries add to about 20 %, where unbudgeted retries would add 75 %;
//! 4. takes one backend dark (connections refused) and makes another fail every request, shows
//!    circuit breakers and outlier detection taking them out while the caller's success rate
//!    stays high, then brings both back and shows them return.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxyless::balance::{BalanceConfig, Picker, ServedBy};
use proxyless::outlier::OutlierConfig;
use proxyless::retry::{Budget, RetryPolicy};
use proxyless::telemetry::{RetrySnapshot, Snapshot};
use proxyless::{BoxError, Client, discover};
use tokio::net::TcpListener;

const REQUESTS: usize = 2_000;
const CONCURRENCY: usize = 8;
const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(50);

const FAILURE_REQUESTS: usize = 3_000;
/// Enough concurrency that the retries' backoffs do not stretch the run.
const FAILURE_CONCURRENCY: usize = 64;

struct Run {
    name: &'static str,
    requests: usize,
    shares: BTreeMap<SocketAddr, u64>,
    latency_us: Histogram<u64>,
    elapsed: Duration,
    succeeded: u64,
    retry: RetrySnapshot,
}

impl Run {
    fn success_rate(&self) -> f64 {
        100.0 * self.succeeded as f64 / self.requests as f64
    }
}

/// A loopback backend whose answers the example changes as it goes.
struct Backend {
    addr: SocketAddr,
    delay: Duration,
    /// Out of every ten requests, how many get a 503.
    failures_in_ten: Arc<AtomicU32>,
    served: Arc<AtomicU64>,
    /// While dark, the port refuses connections and open connections are cut.
    dark: Arc<AtomicBool>,
    accepting: Option<tokio::task::AbortHandle>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = Vec::new();
    for i in 0..5 {
        let delay = if i == 4 { SLOW } else { FAST };
        backends.push(Backend::spawn(delay).await?);
    }
    let slow = backends[4].addr;
    println!("Backends on loopback (each answers after its delay):");
    for backend in &backends {
        println!(
            "  {}  {:?}{}",
            backend.addr,
            backend.delay,
            if backend.addr == slow {
                "  <- 10x slower"
            } else {
                ""
            }
        );
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();

    println!("\n1. Balancing: one endpoint ten times slower\n");
    let mut runs = Vec::new();
    for (name, picker) in [
        ("p2c + PeakEWMA", Picker::P2cPeakEwma),
        ("round robin", Picker::RoundRobin),
    ] {
        let client = Client::builder()
            .discover(discover::fixed(addrs.clone())?)
            .balance(BalanceConfig::builder().picker(picker).build()?)
            .build()?;
        runs.push(drive(name, client, REQUESTS, CONCURRENCY).await?);
    }
    print_report(&addrs, slow, &runs);
    let chart = std::env::temp_dir().join("proxyless-quickstart.svg");
    std::fs::write(&chart, svg_chart(&addrs, slow, &runs))?;
    println!("\nChart: {}", chart.display());

    let flaky = backends[1].addr;
    println!("\n2. Retries: {flaky} answers 503 to 30 % of its requests\n");
    backends[1].failures_in_ten.store(3, Ordering::Relaxed);
    let mut runs = Vec::new();
    for (name, attempts) in [("retries on", 3), ("retries off", 1)] {
        let policy = RetryPolicy::builder().max_attempts(attempts).build()?;
        let client = Client::builder()
            .discover(discover::fixed(addrs.clone())?)
            .retry(policy)
            .build()?;
        runs.push(drive(name, client, FAILURE_REQUESTS, FAILURE_CONCURRENCY).await?);
    }
    print_failures(&runs, Some(flaky));
    println!(
        "\nPeakEWMA charges each failure a 5 s penalty, so traffic leaves the flaky endpoint after\n\
         its first 503s; retries, sent to another endpoint, recover the requests that still failed."
    );

    println!("\n3. Retry budget: every backend answers 503 to half of its requests\n");
    for backend in &backends {
        backend.failures_in_ten.store(5, Ordering::Relaxed);
    }
    let mut runs = Vec::new();
    for (name, budget) in [
        (
            "budget 20 %",
            Budget::Tps {
                ttl: Duration::from_secs(10),
                min_per_sec: 10,
                ratio: 0.2,
            },
        ),
        ("no budget", Budget::Unlimited),
    ] {
        let policy = RetryPolicy::builder().budget(budget).build()?;
        let client = Client::builder()
            .discover(discover::fixed(addrs.clone())?)
            .retry(policy)
            .build()?;
        runs.push(drive(name, client, FAILURE_REQUESTS, FAILURE_CONCURRENCY).await?);
    }
    print_failures(&runs, None);
    println!(
        "\nThe budget allows retries of 20 % of requests plus 10 a second (a reserve of 100) over\n\
         10 s: it gives up some success to keep the extra load on a struggling service near 20 %."
    );

    health(&mut backends).await
}

/// Part 4: an endpoint goes dark and another starts failing; both are taken out, then return.
async fn health(backends: &mut [Backend]) -> Result<(), BoxError> {
    for backend in backends.iter() {
        backend.failures_in_ten.store(0, Ordering::Relaxed);
    }
    let (dark, failing) = (backends[2].addr, backends[3].addr);
    println!("\n4. Health: {dark} goes dark, then {failing} fails every request; both come back\n");
    // Envoy's outlier detection, scaled down so the demo takes seconds: a sweep every second,
    // ejections from 2 s, and up to half of the endpoints ejected (the default 10 % of five
    // endpoints would allow none).
    let outlier = OutlierConfig::builder()
        .interval(Duration::from_secs(1))
        .base_ejection_time(Duration::from_secs(2))
        .max_ejection_percent(50)
        .build()?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let client = Client::builder()
        .discover(discover::fixed(addrs.clone())?)
        .balance(BalanceConfig::builder().outlier(outlier).build()?)
        .build()?;

    let healthy = drive("all healthy", client.clone(), 1_000, FAILURE_CONCURRENCY).await?;
    backends[2].go_dark();
    backends[3].failures_in_ten.store(10, Ordering::Relaxed);
    let before = client.snapshot();
    let degraded = drive("two failing", client.clone(), 3_000, FAILURE_CONCURRENCY).await?;
    print_health(&client, &before, &addrs, &[dark, failing]);

    backends[2].come_back().await?;
    backends[3].failures_in_ten.store(0, Ordering::Relaxed);
    let back_at = Instant::now();
    let before = client.snapshot();
    let mut recovered = None;
    for _ in 0..100 {
        drive_quietly(&client, 100).await?;
        let now = client.snapshot();
        let serving = |addr: SocketAddr| {
            let (Some(then), Some(now)) = (before.endpoint(addr), now.endpoint(addr)) else {
                return false;
            };
            now.availability() == "available"
                && now.requests - now.failures > then.requests - then.failures
        };
        if serving(dark) && serving(failing) {
            recovered = Some(back_at.elapsed());
            break;
        }
    }
    match recovered {
        Some(after) => println!(
            "\nBoth endpoints serve again {:.1} s after coming back.",
            after.as_secs_f64()
        ),
        None => println!("\nThe endpoints had not returned after 100 rounds of requests."),
    }
    let before = client.snapshot();
    let recovered_run = drive("recovered", client.clone(), 1_000, FAILURE_CONCURRENCY).await?;
    print_health(&client, &before, &addrs, &[dark, failing]);
    println!(
        "\nSuccess rate seen by the caller: {:.2}% healthy, {:.2}% with two endpoints failing, \
         {:.2}% recovered.",
        healthy.success_rate(),
        degraded.success_rate(),
        recovered_run.success_rate()
    );
    Ok(())
}

/// Sends `requests` requests without reporting progress.
async fn drive_quietly(client: &Client, requests: usize) -> Result<(), BoxError> {
    let mut results = futures_util::stream::iter(0..requests)
        .map(|_| async {
            let rsp = client.get("http://quickstart/").await?;
            rsp.into_body().collect().await?;
            Ok::<_, BoxError>(())
        })
        .buffer_unordered(FAILURE_CONCURRENCY);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Each endpoint's traffic since `before`, and whether the balancer would pick it now.
fn print_health(client: &Client, before: &Snapshot, addrs: &[SocketAddr], troubled: &[SocketAddr]) {
    let now = client.snapshot();
    println!(
        "  {:<24}{:>10}{:>10}  {:<34}{:>8}",
        "endpoint", "requests", "failures", "state", "ejected"
    );
    for addr in addrs {
        let (Some(then), Some(endpoint)) = (before.endpoint(*addr), now.endpoint(*addr)) else {
            continue;
        };
        let label = if troubled.contains(addr) {
            format!("{addr} *")
        } else {
            addr.to_string()
        };
        println!(
            "  {label:<24}{:>10}{:>10}  {:<34}{:>8}",
            endpoint.requests - then.requests,
            endpoint.failures - then.failures,
            endpoint.availability(),
            endpoint.outlier.times_ejected,
        );
    }
}

fn print_failures(runs: &[Run], flaky: Option<SocketAddr>) {
    print!("  {:<28}", "");
    for run in runs {
        print!("{:>14}", run.name);
    }
    println!();
    type Cell = fn(&Run) -> String;
    let rows: [(&str, Cell); 4] = [
        ("success rate", |r| format!("{:.2}%", r.success_rate())),
        ("retries per request", |r| {
            format!("{:.3}", r.retry.retry_ratio())
        }),
        ("backend load (attempts/req)", |r| {
            format!("{:.2}x", 1.0 + r.retry.retry_ratio())
        }),
        ("retries denied by budget", |r| {
            r.retry.budget_denied.to_string()
        }),
    ];
    for (label, value) in rows {
        print!("  {label:<28}");
        for run in runs {
            print!("{:>14}", value(run));
        }
        println!();
    }
    if let Some(flaky) = flaky {
        print!("  {:<28}", "share of the flaky endpoint");
        for run in runs {
            print!("{:>13.1}%", share(run, flaky));
        }
        println!();
    }
}

/// Sends `requests` requests, `concurrency` at a time, showing progress.
async fn drive(
    name: &'static str,
    client: Client,
    requests: usize,
    concurrency: usize,
) -> Result<Run, BoxError> {
    let start = Instant::now();
    let mut shares = BTreeMap::new();
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut succeeded = 0;
    let mut results = futures_util::stream::iter(0..requests)
        .map(|_| {
            let client = client.clone();
            async move {
                let sent = Instant::now();
                let rsp = client.get("http://quickstart/").await?;
                let served_by = rsp.extensions().get::<ServedBy>().map(|s| s.0);
                let ok = rsp.status().is_success();
                rsp.into_body().collect().await?;
                Ok::<_, BoxError>((served_by, ok, sent.elapsed()))
            }
        })
        .buffer_unordered(concurrency);
    let mut done = 0;
    let interactive = std::io::stdout().is_terminal();
    while let Some(result) = results.next().await {
        let (served_by, ok, took) = result?;
        succeeded += u64::from(ok);
        if let Some(addr) = served_by {
            *shares.entry(addr).or_default() += 1;
        }
        latency_us.record(took.as_micros() as u64)?;
        done += 1;
        if interactive && (done % 100 == 0 || done == requests) {
            print!("\r{name:>15}: {done:>5}/{requests} requests");
            std::io::stdout().flush()?;
        } else if !interactive && done % (requests / 4) == 0 {
            println!("{name:>15}: {done:>5}/{requests} requests");
        }
    }
    let elapsed = start.elapsed();
    println!("{name:>15}: done in {:.2} s", elapsed.as_secs_f64());
    Ok(Run {
        name,
        requests,
        shares,
        latency_us,
        elapsed,
        succeeded,
        retry: client.snapshot().retry.unwrap_or_default(),
    })
}

fn print_report(addrs: &[SocketAddr], slow: SocketAddr, runs: &[Run]) {
    println!("\nShare of requests per endpoint:");
    print!("  {:<24}", "endpoint");
    for run in runs {
        print!("{:>16}", run.name);
    }
    println!();
    for addr in addrs {
        let label = if *addr == slow {
            format!("{addr} (slow)")
        } else {
            addr.to_string()
        };
        print!("  {label:<24}");
        for run in runs {
            print!("{:>15.1}%", share(run, *addr));
        }
        println!();
    }

    println!("\nLatency seen by the caller (ms):");
    print!("  {:<24}", "percentile");
    for run in runs {
        print!("{:>16}", run.name);
    }
    println!();
    for q in [50.0, 90.0, 99.0, 99.9] {
        print!("  {:<24}", format!("p{q}"));
        for run in runs {
            print!(
                "{:>16.2}",
                run.latency_us.value_at_percentile(q) as f64 / 1_000.0
            );
        }
        println!();
    }
    print!("  {:<24}", "throughput (req/s)");
    for run in runs {
        print!("{:>16.0}", run.requests as f64 / run.elapsed.as_secs_f64());
    }
    println!();

    if let [p2c, rr] = runs {
        let ratio = |q: f64| {
            rr.latency_us.value_at_percentile(q) as f64
                / p2c.latency_us.value_at_percentile(q).max(1) as f64
        };
        println!(
            "\nThe slow endpoint got {:.1}% of requests with P2C/PeakEWMA and {:.1}% with round robin:",
            share(p2c, slow),
            share(rr, slow)
        );
        println!(
            "round robin's p90 is {:.1}x and its p99 {:.1}x those of P2C/PeakEWMA.",
            ratio(90.0),
            ratio(99.0)
        );
    }
}

fn share(run: &Run, addr: SocketAddr) -> f64 {
    let total: u64 = run.shares.values().sum();
    100.0 * run.shares.get(&addr).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// Two bar charts: traffic share per endpoint and latency percentiles, per picker.
fn svg_chart(addrs: &[SocketAddr], slow: SocketAddr, runs: &[Run]) -> String {
    const COLORS: [&str; 2] = ["#2b6cb0", "#dd6b20"];
    let (width, height, top, panel_h) = (900.0, 420.0, 60.0, 260.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"24\" font-size=\"16\">proxyless quickstart: 5 backends, one 10x slower</text>\n"
    );
    for (i, run) in runs.iter().enumerate() {
        svg += &format!(
            "<rect x=\"{}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"45\">{}</text>\n",
            480 + i * 160,
            COLORS[i % 2],
            496 + i * 160,
            run.name
        );
    }
    let percentiles = [50.0, 90.0, 99.0, 99.9];
    struct Panel {
        title: &'static str,
        x0: f64,
        labels: Vec<String>,
        series: Vec<Vec<f64>>,
    }
    let panels = [
        Panel {
            title: "share of requests (%)",
            x0: 20.0,
            labels: addrs
                .iter()
                .map(|a| {
                    if *a == slow {
                        format!(":{} slow", a.port())
                    } else {
                        format!(":{}", a.port())
                    }
                })
                .collect(),
            series: runs
                .iter()
                .map(|r| addrs.iter().map(|a| share(r, *a)).collect())
                .collect(),
        },
        Panel {
            title: "latency (ms)",
            x0: 470.0,
            labels: percentiles.iter().map(|q| format!("p{q}")).collect(),
            series: runs
                .iter()
                .map(|r| {
                    percentiles
                        .iter()
                        .map(|q| r.latency_us.value_at_percentile(*q) as f64 / 1_000.0)
                        .collect()
                })
                .collect(),
        },
    ];
    for Panel {
        title,
        x0,
        labels,
        series,
    } in panels
    {
        let max = series.iter().flatten().cloned().fold(1.0, f64::max) * 1.1;
        let group_w = 400.0 / labels.len() as f64;
        let bar_w = group_w * 0.8 / series.len() as f64;
        svg += &format!("<text x=\"{x0}\" y=\"{}\">{title}</text>\n", top + 10.0);
        svg += &format!(
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>\n",
            top + 20.0 + panel_h,
            x0 + 400.0,
            top + 20.0 + panel_h
        );
        for (g, label) in labels.iter().enumerate() {
            let gx = x0 + g as f64 * group_w;
            for (s, values) in series.iter().enumerate() {
                let h = values[g] / max * panel_h;
                let x = gx + group_w * 0.1 + s as f64 * bar_w;
                let y = top + 20.0 + panel_h - h;
                svg += &format!(
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{:.1}</text>\n",
                    bar_w * 0.95,
                    COLORS[s % 2],
                    x + bar_w / 2.0,
                    y - 3.0,
                    values[g]
                );
            }
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
                gx + group_w / 2.0,
                top + 36.0 + panel_h
            );
        }
    }
    svg + "</svg>\n"
}

impl Backend {
    /// An HTTP/1.1 + h2c backend on loopback that answers after `delay`.
    async fn spawn(delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut backend = Self {
            addr: listener.local_addr()?,
            delay,
            failures_in_ten: Arc::new(AtomicU32::new(0)),
            served: Arc::new(AtomicU64::new(0)),
            dark: Arc::new(AtomicBool::new(false)),
            accepting: None,
        };
        backend.serve(listener);
        Ok(backend)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (delay, failures, served, dark) = (
            self.delay,
            Arc::clone(&self.failures_in_ten),
            Arc::clone(&self.served),
            Arc::clone(&self.dark),
        );
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (failures, served, dark) = (
                    Arc::clone(&failures),
                    Arc::clone(&served),
                    Arc::clone(&dark),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let fail = n % 10 < u64::from(failures.load(Ordering::Relaxed));
                        let dark = Arc::clone(&dark);
                        async move {
                            if dark.load(Ordering::Relaxed) {
                                // Cuts the connection, as a crashed process would.
                                return Err(std::io::Error::other("gone dark"));
                            }
                            tokio::time::sleep(delay).await;
                            let status = if fail {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::OK
                            };
                            let body = Full::new(Bytes::from_static(b"ok"));
                            let mut rsp = hyper::Response::new(body);
                            *rsp.status_mut() = status;
                            Ok::<_, std::io::Error>(rsp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.accepting = Some(accepting.abort_handle());
    }

    /// Stops listening (new connections are refused) and cuts open connections.
    fn go_dark(&mut self) {
        self.dark.store(true, Ordering::Relaxed);
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
    }

    /// Listens again on the same port.
    async fn come_back(&mut self) -> std::io::Result<()> {
        // The aborted accept loop releases the port when the runtime drops it; retry briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        };
        self.dark.store(false, Ordering::Relaxed);
        self.serve(listener);
        Ok(())
    }
}
