//! The machine description, the metric catalogue, and the JSON and Markdown reports.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::stats::{Summary, paired_differences, paired_ratios};
use crate::subjects::{Kind, Layout, Subject};
use crate::{Options, Run, Sample, Status, SubjectResult};

/// A measured quantity.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The key in samples and JSON.
    pub key: &'static str,
    /// A human name, with its unit.
    pub label: &'static str,
    /// Whether more is better (throughput) or worse (latency, CPU, memory).
    pub higher_is_better: bool,
}

const fn m(key: &'static str, label: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        key,
        label,
        higher_is_better,
    }
}

/// Every metric a sample may hold.
pub const METRICS: &[Metric] = &[
    m("tcp1_mbps", "TCP 1 stream, Mbit/s", true),
    m("tcp1_cpu_s", "TCP 1 stream, node CPU s", false),
    m(
        "tcp1_mbit_per_cpu_s",
        "TCP 1 stream, Mbit per node CPU-second",
        true,
    ),
    m("tcp1_retransmits", "TCP 1 stream, retransmits", false),
    m("tcp4_mbps", "TCP 4 streams, Mbit/s", true),
    m("tcp4_cpu_s", "TCP 4 streams, node CPU s", false),
    m(
        "tcp4_mbit_per_cpu_s",
        "TCP 4 streams, Mbit per node CPU-second",
        true,
    ),
    m("tcp4_retransmits", "TCP 4 streams, retransmits", false),
    m("udp64_rx_kpps", "UDP 64 B, received kpps", true),
    m("udp64_tx_kpps", "UDP 64 B, sent kpps", true),
    m("udp64_loss_pct", "UDP 64 B, loss %", false),
    m("udp64_cpu_s", "UDP 64 B, node CPU s", false),
    m("udp1400_rx_kpps", "UDP 1,400 B, received kpps", true),
    m("udp1400_tx_kpps", "UDP 1,400 B, sent kpps", true),
    m("udp1400_loss_pct", "UDP 1,400 B, loss %", false),
    m("udp1400_cpu_s", "UDP 1,400 B, node CPU s", false),
    m("ping_p50_us", "ping p50, µs", false),
    m("ping_p99_us", "ping p99, µs", false),
    m("ping_loss_pct", "ping loss %", false),
    m(
        "ping_pinned_p50_us",
        "ping p50, the pinger on one CPU, µs",
        false,
    ),
    m("ping_loaded_p50_us", "ping p50 under load, µs", false),
    m("ping_loaded_p99_us", "ping p99 under load, µs", false),
    m("rss_peak_mib", "peak RSS per process, MiB", false),
    m(
        "rss_settled_mib",
        "RSS per process 2.5 s after the traffic, MiB",
        false,
    ),
];

/// The metrics compared pair by pair between Connectopus and the references.
const RATIO_METRICS: &[&str] = &[
    "tcp1_mbps",
    "tcp4_mbps",
    "udp64_rx_kpps",
    "udp1400_rx_kpps",
    "ping_p50_us",
    "ping_p99_us",
    "ping_pinned_p50_us",
    "ping_loaded_p50_us",
    "tcp1_mbit_per_cpu_s",
];

/// The latencies whose excess over the raw link's, per repetition, the report gives.
const EXCESS_METRICS: &[&str] = &["ping_p50_us", "ping_pinned_p50_us", "ping_loaded_p50_us"];

fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

/// The machine the run measured.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// `lscpu`'s model name.
    pub cpu_model: String,
    /// CPUs available to this process.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    /// UTC date and time of the start, RFC 3339.
    pub date: String,
    /// `/proc/loadavg`'s three averages at the start.
    pub load_before: String,
    /// The same at the end.
    pub load_after: String,
}

fn command_stdout(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// Reads the machine's description.
    pub fn probe() -> Machine {
        let lscpu = command_stdout("lscpu", &[]);
        let cpu_model = lscpu
            .lines()
            .find_map(|l| l.strip_prefix("Model name:"))
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_default(),
            os,
            date: command_stdout("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            load_before: Machine::load(),
            load_after: String::new(),
        }
    }

    /// The 1, 5 and 15 minute load averages.
    pub fn load() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One line: CPU, cores, kernel, OS.
    pub fn summary(&self) -> String {
        format!(
            "{}, {} CPUs, kernel {}, {}",
            self.cpu_model, self.cores, self.kernel, self.os
        )
    }
}

/// A compact line of a sample for the progress log.
pub fn one_line(sample: &Sample) -> String {
    let get = |k: &str| sample.get(k).copied().unwrap_or(f64::NAN);
    format!(
        "tcp {:.0}/{:.0} Mbit/s, udp {:.0}/{:.0} kpps (loss {:.0}%/{:.0}%), ping p50 {:.0} µs p99 {:.0} µs, node cpu {} s (1 stream)",
        get("tcp1_mbps"),
        get("tcp4_mbps"),
        get("udp64_rx_kpps"),
        get("udp1400_rx_kpps"),
        get("udp64_loss_pct"),
        get("udp1400_loss_pct"),
        get("ping_p50_us"),
        get("ping_p99_us"),
        fmt_num(get("tcp1_cpu_s")),
    )
}

/// The values of `key` per repetition (`None` where not measured).
pub fn series(result: &SubjectResult, key: &str) -> Vec<Option<f64>> {
    result
        .samples
        .iter()
        .map(|s| s.as_ref().and_then(|s| s.get(key).copied()))
        .collect()
}

/// Summary of `key` over the repetitions.
pub fn summary(result: &SubjectResult, key: &str) -> Option<Summary> {
    let values: Vec<f64> = series(result, key).into_iter().flatten().collect();
    Summary::of(&values)
}

/// A pairwise ratio of a Connectopus subject to a reference.
#[derive(Clone, Debug)]
pub struct Ratio {
    /// The layout both ran on.
    pub layout: Layout,
    /// The Connectopus subject's name.
    pub subject: &'static str,
    /// The reference's name.
    pub reference: &'static str,
    /// The metric.
    pub metric: &'static str,
    /// Summary of subject/reference per repetition.
    pub summary: Summary,
}

/// Every Connectopus-to-reference ratio the run allows: against the raw veth of the same
/// layout, and against each peer that ran on it.
pub fn ratios(run: &Run) -> Vec<Ratio> {
    let mut out = Vec::new();
    for subject in run
        .results
        .iter()
        .filter(|r| r.subject.kind.is_connectopus())
    {
        for reference in run.results.iter().filter(|r| {
            r.subject.layout == subject.subject.layout && !r.subject.kind.is_connectopus()
        }) {
            for &key in RATIO_METRICS {
                let values = paired_ratios(&series(subject, key), &series(reference, key));
                if let (Some(summary), Some(metric)) = (Summary::of(&values), metric(key)) {
                    out.push(Ratio {
                        layout: subject.subject.layout,
                        subject: subject.subject.name(),
                        reference: reference.subject.name(),
                        metric: metric.key,
                        summary,
                    });
                }
            }
        }
    }
    out
}

/// A tunnel's round trip less the raw link's on the same layout, per repetition.
#[derive(Clone, Copy, Debug)]
pub struct Excess {
    /// The layout both ran on.
    pub layout: Layout,
    /// The tunnel's name.
    pub subject: &'static str,
    /// The latency metric.
    pub metric: &'static str,
    /// Summary of subject − raw link per repetition, µs.
    pub summary: Summary,
}

/// How much every tunnel's round trip exceeds the raw link's, paired by repetition (the
/// issue's latency target is stated that way: veth + 30 µs).
pub fn excess_over_raw(run: &Run) -> Vec<Excess> {
    let mut out = Vec::new();
    for raw in run.results.iter().filter(|r| r.subject.kind == Kind::Raw) {
        for subject in run
            .results
            .iter()
            .filter(|r| r.subject.layout == raw.subject.layout && r.subject.kind != Kind::Raw)
        {
            for &key in EXCESS_METRICS {
                let values = paired_differences(&series(subject, key), &series(raw, key));
                if let (Some(summary), Some(metric)) = (Summary::of(&values), metric(key)) {
                    out.push(Excess {
                        layout: subject.subject.layout,
                        subject: subject.subject.name(),
                        metric: metric.key,
                        summary,
                    });
                }
            }
        }
    }
    out
}

fn status_json(status: &Status) -> (&'static str, Option<&str>) {
    match status {
        Status::Ran => ("ran", None),
        Status::Skipped(reason) => ("skipped", Some(reason)),
        Status::Failed(reason) => ("failed", Some(reason)),
    }
}

/// The method, in words, for the reports.
pub fn method(run: &Run) -> String {
    let o = &run.options;
    format!(
        "{reps} interleaved repetition(s): each repetition starts every subject in turn on the same \
         namespaces, measures it and stops it. Per subject and repetition: {pings} pings of 56 bytes \
         {interval} s apart (p50 and p99 by nearest rank), then again with the pinger pinned to \
         one CPU (taskset); {load}iperf3 TCP for {tcp} s with 1 and with 4 \
         streams (receiver-side rate); iperf3 UDP for {udp} s at unlimited rate (-b 0) with IP packets \
         of 64 and 1,400 bytes (received packets per second and loss); CPU seconds of the data-path \
         processes (utime+stime from /proc/<pid>/stat) across each transfer, both ends (and mid on \
         the line); the largest peak RSS (VmHWM) among them at the end, and the largest RSS (VmRSS) \
         2.5 s after the last transfer (full mode). Medians with min and \
         max over repetitions; ratios are computed per repetition (same repetition, back to back) \
         and then summarised.",
        reps = o.reps,
        pings = o.pings,
        interval = o.ping_interval,
        load = if o.load > 0 {
            format!(
                "the same pings again while {} CPU burner(s) run (busy shells at nice 0, each in a \
                 session of its own, started 0.2 s before); ",
                o.load
            )
        } else {
            String::new()
        },
        tcp = o.tcp_seconds,
        udp = o.udp_seconds,
    )
}

/// The JSON report.
pub fn to_json(run: &Run) -> Value {
    let subjects: Vec<Value> = run
        .results
        .iter()
        .map(|r| {
            let (status, reason) = status_json(&r.status);
            let summary: serde_json::Map<String, Value> = METRICS
                .iter()
                .filter_map(|m| summary(r, m.key).map(|s| (m.key.to_owned(), s.to_json())))
                .collect();
            let samples: Vec<Value> = r
                .samples
                .iter()
                .map(|s| match s {
                    Some(s) => json!(s),
                    None => Value::Null,
                })
                .collect();
            json!({
                "id": r.subject.id(),
                "layout": r.subject.layout.name(),
                "name": r.subject.name(),
                "status": status,
                "reason": reason,
                "errors": r.errors,
                "details": r.details,
                "summary": summary,
                "samples": samples,
            })
        })
        .collect();
    let ratios: Vec<Value> = ratios(run)
        .iter()
        .map(|r| {
            json!({
                "layout": r.layout.name(),
                "subject": r.subject,
                "reference": r.reference,
                "metric": r.metric,
                "ratio": r.summary.to_json(),
            })
        })
        .collect();
    let metrics: Vec<Value> = METRICS
        .iter()
        .map(|m| json!({"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}))
        .collect();
    let o = &run.options;
    json!({
        "date": run.machine.date,
        "mode": o.mode(),
        "machine": {
            "cpu_model": run.machine.cpu_model,
            "cores": run.machine.cores,
            "kernel": run.machine.kernel,
            "os": run.machine.os,
            "load_before": run.machine.load_before,
            "load_after": run.machine.load_after,
        },
        "options": {
            "repetitions": o.reps,
            "tcp_seconds": o.tcp_seconds,
            "udp_seconds": o.udp_seconds,
            "pings": o.pings,
            "ping_interval_s": o.ping_interval,
            "load": o.load,
        },
        "elapsed_s": run.elapsed_s,
        "method": method(run),
        "metrics": metrics,
        "subjects": subjects,
        "ratios": ratios,
    })
}

/// A number with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "–".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `median (min–max)`, or just the value for a single repetition.
fn cell(s: Option<Summary>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 || s.min == s.max => fmt_num(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
    }
}

fn ratio_cell(s: Option<Summary>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 || s.min == s.max => format!("{:.2}×", s.median),
        Some(s) => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
    }
}

/// The Markdown report: machine, results table, ratio table, skipped subjects, method.
pub fn to_markdown(run: &Run) -> String {
    let mut md = String::new();
    let m = &run.machine;
    let _ = writeln!(
        md,
        "Run: {date}, `{mode}` mode, {reps} repetition(s), {secs:.0} s in all.  \nMachine: {cpu}, {cores} CPUs, kernel {kernel}, {os}; load average before {lb}, after {la}.\n",
        date = m.date,
        mode = run.options.mode(),
        reps = run.options.reps,
        secs = run.elapsed_s,
        cpu = m.cpu_model,
        cores = m.cores,
        kernel = m.kernel,
        os = m.os,
        lb = m.load_before,
        la = m.load_after,
    );
    let columns: &[(&str, &str)] = &[
        ("tcp1_mbps", "TCP 1 stream Mbit/s"),
        ("tcp4_mbps", "TCP 4 streams Mbit/s"),
        ("tcp1_mbit_per_cpu_s", "Mbit per node CPU-s (1 stream)"),
        ("udp64_rx_kpps", "UDP 64 B rx kpps"),
        ("udp64_loss_pct", "UDP 64 B loss %"),
        ("udp1400_rx_kpps", "UDP 1,400 B rx kpps"),
        ("udp1400_loss_pct", "UDP 1,400 B loss %"),
        ("ping_p50_us", "ping p50 µs"),
        ("ping_p99_us", "ping p99 µs"),
        ("ping_pinned_p50_us", "ping p50 pinger pinned µs"),
        ("ping_loaded_p50_us", "ping p50 under load µs"),
        ("rss_peak_mib", "peak RSS MiB"),
        ("rss_settled_mib", "RSS after MiB"),
    ];
    let _ = writeln!(
        md,
        "| layout | subject | {} |",
        columns
            .iter()
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(columns.len()));
    for r in run
        .results
        .iter()
        .filter(|r| matches!(r.status, Status::Ran))
    {
        let cells: Vec<String> = columns.iter().map(|(k, _)| cell(summary(r, k))).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            r.subject.layout.name(),
            r.subject.name(),
            cells.join(" | ")
        );
    }
    // Group the subjects by what their nodes reported (usually all alike).
    let mut details: Vec<(String, Vec<String>)> = Vec::new();
    for r in &run.results {
        let Some(d) = &r.details else { continue };
        let d = crate::subjects::condense(d);
        match details.iter_mut().find(|(k, _)| *k == d) {
            Some((_, ids)) => ids.push(r.subject.id()),
            None => details.push((d, vec![r.subject.id()])),
        }
    }
    for (d, ids) in &details {
        let _ = writeln!(md, "\nConnectopus nodes reported {d} ({}).", ids.join(", "));
    }
    let ratios = ratios(run);
    if !ratios.is_empty() {
        let _ = writeln!(
            md,
            "\nRatios, Connectopus ÷ reference, computed per repetition (median, min–max). \
             Above 1 is better for throughput and Mbit per CPU-second, worse for latency.\n"
        );
        let _ = writeln!(
            md,
            "| layout | Connectopus | reference | {} |",
            RATIO_METRICS
                .iter()
                .filter_map(|k| metric(k).map(|m| m.label))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(md, "|---|---|---|{}", "---:|".repeat(RATIO_METRICS.len()));
        let mut pairs: Vec<(Layout, &str, &str)> = ratios
            .iter()
            .map(|r| (r.layout, r.subject, r.reference))
            .collect();
        pairs.dedup();
        for (layout, subject, reference) in pairs {
            let cells: Vec<String> = RATIO_METRICS
                .iter()
                .map(|k| {
                    ratio_cell(
                        ratios
                            .iter()
                            .find(|r| {
                                r.layout == layout
                                    && r.subject == subject
                                    && r.reference == reference
                                    && r.metric == *k
                            })
                            .map(|r| r.summary),
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {subject} | {reference} | {} |",
                layout.name(),
                cells.join(" | ")
            );
        }
    }
    let excess = excess_over_raw(run);
    if !excess.is_empty() {
        let _ = writeln!(
            md,
            "\nRound trip over the raw link's, µs, computed per repetition (median, min–max): \
             idle, idle with the pinger pinned to one CPU, and while {} CPU burner(s) ran.\n",
            run.options.load
        );
        let _ = writeln!(
            md,
            "| layout | subject | ping p50 − raw | pinger pinned: ping p50 − raw | under load: ping p50 − raw |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        let mut rows: Vec<(Layout, &str)> = excess.iter().map(|e| (e.layout, e.subject)).collect();
        rows.dedup();
        for (layout, subject) in rows {
            let cells: Vec<String> = EXCESS_METRICS
                .iter()
                .map(|k| {
                    cell(
                        excess
                            .iter()
                            .find(|e| e.layout == layout && e.subject == subject && e.metric == *k)
                            .map(|e| e.summary),
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {subject} | {} |",
                layout.name(),
                cells.join(" | ")
            );
        }
    }
    let not_run: Vec<String> = run
        .results
        .iter()
        .filter_map(|r| match &r.status {
            Status::Ran => None,
            Status::Skipped(reason) => Some(format!("- {}: skipped ({reason})", r.subject.id())),
            Status::Failed(reason) => Some(format!("- {}: failed ({reason})", r.subject.id())),
        })
        .collect();
    let partial: Vec<String> = run
        .results
        .iter()
        .filter(|r| matches!(r.status, Status::Ran) && !r.errors.is_empty())
        .map(|r| format!("- {}: {}", r.subject.id(), r.errors.join("; ")))
        .collect();
    if !not_run.is_empty() || !partial.is_empty() {
        let _ = writeln!(md, "\nNot measured:\n");
        for line in not_run.iter().chain(&partial) {
            let _ = writeln!(md, "{line}");
        }
    }
    let _ = writeln!(md, "\nMethod: {}", method(run));
    md
}

/// Writes `e2e.json`, `e2e.md` and `e2e.png` into the output directory and returns their
/// paths.
pub fn write(run: &Run) -> Result<Vec<PathBuf>> {
    let dir = &run.options.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("e2e.json");
    let text = serde_json::to_string_pretty(&to_json(run))?;
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = dir.join("e2e.md");
    let md = to_markdown(run);
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    let png_path = dir.join("e2e.png");
    crate::chart::draw(run, &png_path)?;
    Ok(vec![json_path, md_path, png_path])
}

/// Reads back a JSON report written by [`write`] (to redraw the table and chart without
/// measuring again); `options` supplies the output directory.
pub fn from_json(value: &Value, options: &Options) -> Result<Run> {
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let number = |v: &Value, key: &str| -> Result<u32> {
        v[key]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .with_context(|| format!("report has no options.{key}"))
    };
    let o = &value["options"];
    let options = Options {
        short: value["mode"] == "short",
        reps: number(o, "repetitions")?,
        tcp_seconds: number(o, "tcp_seconds")?,
        udp_seconds: number(o, "udp_seconds")?,
        pings: number(o, "pings")?,
        ping_interval: text(o, "ping_interval_s"),
        // Reports from before the latency test under load have none.
        load: o["load"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0),
        out: options.out.clone(),
        only: Vec::new(),
        flood: None,
    };
    let m = &value["machine"];
    let machine = Machine {
        cpu_model: text(m, "cpu_model"),
        cores: m["cores"].as_u64().unwrap_or(0) as usize,
        kernel: text(m, "kernel"),
        os: text(m, "os"),
        date: text(value, "date"),
        load_before: text(m, "load_before"),
        load_after: text(m, "load_after"),
    };
    let mut results = Vec::new();
    for s in value["subjects"]
        .as_array()
        .context("report has no subjects")?
    {
        let id = text(s, "id");
        let subject = Subject::from_id(&id).with_context(|| format!("unknown subject {id}"))?;
        let reason = text(s, "reason");
        let status = match s["status"].as_str() {
            Some("ran") => Status::Ran,
            Some("skipped") => Status::Skipped(reason),
            _ => Status::Failed(reason),
        };
        let samples = s["samples"]
            .as_array()
            .map(|samples| {
                samples
                    .iter()
                    .map(|sample| {
                        sample.as_object().map(|fields| {
                            METRICS
                                .iter()
                                .filter_map(|m| fields.get(m.key)?.as_f64().map(|v| (m.key, v)))
                                .collect::<Sample>()
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let errors = s["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let details = s["details"].as_str().map(str::to_owned);
        results.push(SubjectResult {
            subject,
            status,
            samples,
            errors,
            details,
        });
    }
    Ok(Run {
        options,
        machine,
        results,
        elapsed_s: value["elapsed_s"].as_f64().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectopus_tests::LinkKind;

    fn sample(tcp: f64, p50: f64) -> Option<Sample> {
        Some(Sample::from([("tcp1_mbps", tcp), ("ping_p50_us", p50)]))
    }

    fn run() -> Run {
        let subject = |kind| Subject {
            layout: Layout::Pair,
            kind,
        };
        Run {
            options: Options {
                short: false,
                reps: 2,
                tcp_seconds: 10,
                udp_seconds: 5,
                pings: 1000,
                ping_interval: "0.002".into(),
                load: 2,
                out: std::env::temp_dir(),
                only: Vec::new(),
                flood: None,
            },
            machine: Machine::default(),
            results: vec![
                SubjectResult {
                    subject: subject(Kind::Raw),
                    status: Status::Ran,
                    samples: vec![sample(1000.0, 10.0), sample(2000.0, 10.0)],
                    errors: Vec::new(),
                    details: None,
                },
                SubjectResult {
                    subject: subject(Kind::Connectopus(LinkKind::DtlsPsk)),
                    status: Status::Ran,
                    samples: vec![sample(500.0, 40.0), None],
                    errors: vec!["repetition 2: boom".into()],
                    details: Some("dataplane io_uring, ebpf off".into()),
                },
                SubjectResult {
                    subject: subject(Kind::Nebula),
                    status: Status::Skipped("not installed: `nebula`".into()),
                    samples: vec![None, None],
                    errors: Vec::new(),
                    details: None,
                },
            ],
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn excess_over_the_raw_link_is_paired_by_repetition() {
        let mut run = run();
        // Raw 10 and 30 µs; the tunnel 40 in the first repetition only: 30, not 40 − 20.
        run.results[0].samples[1] = sample(2000.0, 30.0);
        let excess = excess_over_raw(&run);
        let idle = excess
            .iter()
            .find(|e| e.subject == "connectopus-dtls" && e.metric == "ping_p50_us")
            .unwrap_or_else(|| panic!("{excess:?}"));
        assert_eq!((idle.summary.median, idle.summary.n), (30.0, 1));
        assert!(!excess.iter().any(|e| e.subject == "veth"), "{excess:?}");
        // No test under load in these samples: no row for it.
        assert!(
            !excess.iter().any(|e| e.metric == "ping_loaded_p50_us"),
            "{excess:?}"
        );
        let md = to_markdown(&run);
        assert!(
            md.contains("| pair | connectopus-dtls | 30.0 | – |"),
            "{md}"
        );
    }

    #[test]
    fn ratios_are_paired_by_repetition() {
        let ratios = ratios(&run());
        let tcp = ratios
            .iter()
            .find(|r| r.metric == "tcp1_mbps" && r.reference == "veth")
            .unwrap_or_else(|| panic!("{ratios:?}"));
        // Only repetition 1 has both: 500 / 1000, not 500 / median(1000, 2000).
        assert_eq!((tcp.summary.median, tcp.summary.n), (0.5, 1));
        assert!(!ratios.iter().any(|r| r.reference == "nebula"));
    }

    #[test]
    fn markdown_lists_results_and_skips() {
        let md = to_markdown(&run());
        assert!(md.contains("| pair | veth | 1500 (1000–2000) |"), "{md}");
        assert!(md.contains("| pair | connectopus-dtls | 500 |"), "{md}");
        assert!(md.contains("pair/nebula: skipped (not installed"), "{md}");
        assert!(md.contains("repetition 2: boom"), "{md}");
        assert!(md.contains("0.50×"), "{md}");
        assert!(
            md.contains("reported dataplane io_uring, ebpf off (pair/connectopus-dtls)"),
            "{md}"
        );
    }

    #[test]
    fn json_round_trips() {
        let original = run();
        let json = to_json(&original);
        let back = from_json(&json, &original.options).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(to_json(&back), json);
    }
}
