//! The results: a markdown report with a table per scenario and phase, the goals checked
//! against the figures, and SVG charts, all written to the results folder.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::chart::{Bars, Lines};
use crate::{Config, Phase, Row, Scenario};

fn ratio(value: f64, reference: f64) -> String {
    if reference > 0.0 && value.is_finite() {
        format!("{:.2}×", value / reference)
    } else {
        "—".to_owned()
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "—".to_owned(), |share| format!("{:.1} %", share * 100.0))
}

fn seconds(at: Option<f64>) -> String {
    at.map_or_else(|| "—".to_owned(), |at| format!("{at:.1} s"))
}

fn per_request(cpu: Option<Duration>, phase: &Phase) -> Option<f64> {
    let cpu = cpu?;
    (phase.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / phase.ok as f64)
}

fn micros_or_na(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.1}"))
}

/// CPU columns: client, backends, sidecar, all, and requests per CPU-second.
fn cpu_columns(phase: &Phase, sidecar: bool) -> String {
    let total = phase.cpu.total(sidecar);
    let per_cpu_second = total
        .filter(|total| !total.is_zero())
        .map(|total| phase.ok as f64 / total.as_secs_f64());
    format!(
        "{} | {} | {} | {} | {}",
        micros_or_na(per_request(phase.cpu.client, phase)),
        micros_or_na(per_request(phase.cpu.backends, phase)),
        if sidecar {
            micros_or_na(per_request(phase.cpu.sidecar, phase))
        } else {
            "—".to_owned()
        },
        micros_or_na(per_request(total, phase)),
        per_cpu_second.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.0}")),
    )
}

fn is_sidecar(name: &str) -> bool {
    crate::variants::SIDECARS.contains(&name)
}

fn quantile(phase: &Phase, q: f64) -> u64 {
    phase.latency.value_at_quantile(q)
}

fn closed_table(out: &mut String, config: &Config, rows: &[Row]) {
    let raw = rows
        .iter()
        .find(|row| row.name == "raw")
        .and_then(|row| row.closed.as_ref())
        .map_or(0.0, Phase::throughput);
    let _ = writeln!(
        out,
        "Closed loop: {} workers for {:?} (at most {} requests) per variant. CPU in µs per \
         request, per process, from `/proc/<pid>/stat` (10 ms ticks).\n",
        config.workers, config.closed_duration, config.closed_requests
    );
    let _ = writeln!(
        out,
        "| variant | req/s | vs raw | p50 µs | p99 µs | p99.9 µs | CPU client | CPU backends | \
         CPU sidecar | CPU all | req per CPU-second | watched share | failed |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(phase) = &row.closed else {
            continue;
        };
        let _ = writeln!(
            out,
            "| `{}` | {:.0}{} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            phase.throughput(),
            match row.closed_spread {
                Some((low, high)) if row.runs > 1 => format!(" ({low:.0}–{high:.0})"),
                _ => String::new(),
            },
            ratio(phase.throughput(), raw),
            quantile(phase, 0.5),
            quantile(phase, 0.99),
            quantile(phase, 0.999),
            cpu_columns(phase, is_sidecar(row.name)),
            percent(phase.watched_share()),
            phase.errors.count,
        );
    }
    out.push('\n');
}

fn open_table(out: &mut String, config: &Config, scenario: &Scenario, rows: &[Row]) {
    let _ = writeln!(
        out,
        "Open loop: {} req/s scheduled for {:?}; latency from each request's scheduled start \
         (coordinated omission corrected); request \
         timeout {:?}; at most {} in flight.\n",
        config.open_rate * scenario.rate_factor,
        config.open_duration,
        config.request_timeout,
        config.open_cap
    );
    let _ = writeln!(
        out,
        "| variant | success | req/s | p50 µs | p99 µs | p99.9 µs | uncorrected p99 µs | \
         amplification | CPU all µs/req | watched share | watched traffic ends | ejected or breaker open \
         (proxyless' snapshot) | last failure | failed | dropped | first failure |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let Some(phase) = &row.open else {
            continue;
        };
        let total = phase.cpu.total(is_sidecar(row.name));
        let _ = writeln!(
            out,
            "| `{}` | {:.2} % | {:.0} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            phase.success_rate() * 100.0,
            phase.throughput(),
            quantile(phase, 0.5),
            quantile(phase, 0.99),
            match row.open_spread {
                Some((low, high)) if row.runs > 1 => format!(" ({low}–{high})"),
                _ => String::new(),
            },
            quantile(phase, 0.999),
            phase
                .service
                .as_ref()
                .map_or(0, |service| service.value_at_quantile(0.99)),
            if scenario.watched_counted {
                phase
                    .amplification()
                    .map_or_else(|| "—".to_owned(), |value| format!("{value:.3}"))
            } else {
                "not counted".to_owned()
            },
            micros_or_na(per_request(total, phase)),
            if scenario.watched_counted {
                percent(phase.watched_share())
            } else {
                "not counted".to_owned()
            },
            if scenario.failing && scenario.watched_counted {
                seconds(phase.watched_traffic_ends())
            } else {
                "—".to_owned()
            },
            seconds(phase.taken_out_at.map(|at| at.as_secs_f64())),
            seconds(phase.errors.last_at.map(|at| at.as_secs_f64())),
            phase.errors.count,
            phase.dropped,
            phase
                .errors
                .first
                .as_deref()
                .map_or_else(|| "—".to_owned(), |error| error.replace('|', "/")),
        );
    }
    out.push('\n');
}

fn latency_chart(scenario: &Scenario, rows: &[Row]) -> Bars {
    Bars {
        title: format!(
            "{}: open-loop latency by variant ({})",
            scenario.name, scenario.protocol
        ),
        unit: "latency, µs (log scale)".to_owned(),
        keys: vec!["p50".to_owned(), "p99".to_owned(), "p99.9".to_owned()],
        groups: rows
            .iter()
            .filter_map(|row| {
                let phase = row.open.as_ref()?;
                let values = [0.5, 0.99, 0.999]
                    .into_iter()
                    .map(|q| (phase.ok > 0).then(|| quantile(phase, q) as f64))
                    .collect();
                Some((row.name.to_owned(), values))
            })
            .collect(),
        log: true,
    }
}

fn share_chart(scenario: &Scenario, rows: &[Row]) -> Lines {
    Lines {
        title: format!(
            "{}: share of requests reaching {}, per 100 ms",
            scenario.name, scenario.watched_label
        ),
        x_label: "seconds since the open loop started".to_owned(),
        y_label: "share of requests, %".to_owned(),
        y_max: None,
        series: rows
            .iter()
            .filter_map(|row| {
                let phase = row.open.as_ref()?;
                let points = phase
                    .timeline
                    .iter()
                    .map(|&(at, share)| (at, share * 100.0))
                    .collect();
                Some((row.name.to_owned(), points))
            })
            .collect(),
    }
}

/// Looks up a phase by scenario and variant.
struct Lookup<'a> {
    scenarios: &'a [Scenario],
    results: &'a [Vec<Row>],
}

impl Lookup<'_> {
    fn row(&self, scenario: &str, variant: &str) -> Option<&Row> {
        let index = self.scenarios.iter().position(|s| s.name == scenario)?;
        self.results
            .get(index)?
            .iter()
            .find(|row| row.name == variant)
    }

    fn closed(&self, scenario: &str, variant: &str) -> Option<&Phase> {
        self.row(scenario, variant)?.closed.as_ref()
    }

    fn open(&self, scenario: &str, variant: &str) -> Option<&Phase> {
        self.row(scenario, variant)?.open.as_ref()
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn goals(out: &mut String, lookup: &Lookup<'_>) {
    let _ = writeln!(out, "## Goals\n");
    let _ = writeln!(out, "| goal | figure | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    for scenario in ["homogeneous", "homogeneous_h2"] {
        let full = lookup.closed(scenario, "proxyless").map(Phase::throughput);
        let raw = lookup.closed(scenario, "raw").map(Phase::throughput);
        let tower = lookup.closed(scenario, "tower_p2c").map(Phase::throughput);
        let vs_raw = full.zip(raw).map(|(full, raw)| full / raw);
        let _ = writeln!(
            out,
            "| {scenario}: full stack ≥ 0.9× raw throughput (closed loop) | {} | {} |",
            vs_raw.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
            verdict(vs_raw.map(|r| r >= 0.9)),
        );
        let vs_tower = full.zip(tower).map(|(full, tower)| full / tower);
        let _ = writeln!(
            out,
            "| {scenario}: ≥ 1.3× tower `Buffer<Balance>` throughput | {} | {} |",
            vs_tower.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
            verdict(vs_tower.map(|r| r >= 1.3)),
        );
        let added = lookup
            .open(scenario, "proxyless")
            .zip(lookup.open(scenario, "raw"))
            .map(|(full, raw)| quantile(full, 0.5) as f64 - quantile(raw, 0.5) as f64);
        let _ = writeln!(
            out,
            "| {scenario}: added median latency < 20 µs (open loop) | {} | {} |",
            added.map_or_else(|| "—".to_owned(), |a| format!("{a:.0} µs")),
            verdict(added.map(|a| a < 20.0)),
        );
        for sidecar in ["haproxy", "nginx"] {
            let p99 = |variant| lookup.open(scenario, variant).map(|p| quantile(p, 0.99));
            let cpu = |variant: &str| {
                let phase = lookup.closed(scenario, variant)?;
                per_request(phase.cpu.total(is_sidecar(variant)), phase)
            };
            let compared = p99("proxyless")
                .zip(p99(sidecar))
                .zip(cpu("proxyless").zip(cpu(sidecar)));
            let _ = writeln!(
                out,
                "| {scenario}: lower p99 and CPU per request than {sidecar} | {} | {} |",
                compared.map_or_else(
                    || "—".to_owned(),
                    |((ours, theirs), (our_cpu, their_cpu))| format!(
                        "p99 {ours} vs {theirs} µs, CPU {our_cpu:.1} vs {their_cpu:.1} µs/req"
                    )
                ),
                verdict(compared.map(|((ours, theirs), (our_cpu, their_cpu))| {
                    ours < theirs && our_cpu < their_cpu
                })),
            );
        }
    }
    for (variant, label) in [
        ("proxyless", ""),
        (
            "proxyless_decay_1s",
            " (PeakEWMA decay 1 s instead of 10 s)",
        ),
    ] {
        let slow = lookup
            .open("one_slow", variant)
            .zip(lookup.open("one_slow_removed", variant))
            .map(|(slow, fast)| quantile(slow, 0.99) as f64 / quantile(fast, 0.99).max(1) as f64);
        let _ = writeln!(
            out,
            "| one slow of ten: p99 within 1.25× of the run without it (open loop){label} | {} | {} |",
            slow.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
            verdict(slow.map(|r| r <= 1.25)),
        );
    }
    let success = lookup.open("one_503", "proxyless").map(Phase::success_rate);
    let _ = writeln!(
        out,
        "| one failing (503) of ten: success ≥ 99.9 % with retries and ejection | {} | {} |",
        success.map_or_else(|| "—".to_owned(), |s| format!("{:.3} %", s * 100.0)),
        verdict(success.map(|s| s >= 0.999)),
    );
    out.push('\n');
}

/// Renders the report, writes it and the charts to `dir`, and returns the report.
pub fn write(config: &Config, scenarios: &[Scenario], results: &[Vec<Row>], dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut out = format!(
        "# Load test ({})\n\nLoopback, {} backends per scenario in one child process, the client \
         in this process, sidecars in their own; {cores} cores shared by all of them; release \
         build.\n\n",
        if config.full { "full" } else { "smoke" },
        config.backends,
    );
    let runs = results
        .iter()
        .flatten()
        .map(|row| row.runs)
        .max()
        .unwrap_or(1);
    if runs > 1 {
        let _ = writeln!(
            out,
            "Each variant ran {runs} times, interleaved; the tables show the median run (by \
             closed-loop throughput, by open-loop p99) with the lowest–highest in parentheses.\n"
        );
    }
    let mut versions: Vec<&str> = results
        .iter()
        .flatten()
        .filter_map(|row| row.version.as_deref())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    if !versions.is_empty() {
        let _ = writeln!(out, "Sidecars: {}.\n", versions.join(", "));
    }
    let lookup = Lookup { scenarios, results };
    goals(&mut out, &lookup);
    let mut charts: Vec<(String, String)> = Vec::new();
    for (scenario, rows) in scenarios.iter().zip(results) {
        let _ = writeln!(
            out,
            "## {} ({}): {}\n",
            scenario.name, scenario.protocol, scenario.description
        );
        for row in rows {
            if let Some(reason) = &row.skipped {
                let _ = writeln!(out, "- `{}` skipped: {reason}", row.name);
            }
        }
        if rows.iter().any(|row| row.skipped.is_some()) {
            out.push('\n');
        }
        if scenario.closed {
            closed_table(&mut out, config, rows);
        }
        open_table(&mut out, config, scenario, rows);
        let latency = format!("{}-latency.svg", scenario.name);
        let _ = writeln!(out, "![{} latency]({latency})\n", scenario.name);
        charts.push((latency, latency_chart(scenario, rows).render()));
        if scenario.watched.is_some() && scenario.watched_counted {
            let share = format!("{}-share.svg", scenario.name);
            let _ = writeln!(out, "![{} traffic share]({share})\n", scenario.name);
            charts.push((share, share_chart(scenario, rows).render()));
        }
    }
    // Charts of an earlier run that this one does not redraw would otherwise stay beside it.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "svg") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join("report.md"), &out))
        .and_then(|()| {
            charts
                .iter()
                .try_for_each(|(file, svg)| std::fs::write(dir.join(file), svg))
        });
    if let Err(error) = written {
        eprintln!("load: could not write to {}: {error}", dir.display());
    }
    out
}
