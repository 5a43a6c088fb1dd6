//! `e2e`: the end-to-end benchmark of Connectopus against the raw link and the VPNs users
//! would pick instead. Run it as `cargo xtask bench` (which builds it and the node in release
//! mode); `e2e --help` lists the options.
//!
//! It creates two namespaces joined by a veth pair (`left — right`) and a three-node line
//! (`left — mid — right`, traffic forwarded by `mid`), then, in interleaved repetitions,
//! starts each subject on them — the raw veth (kernel forwarding on the line), Connectopus
//! over DTLS, plain TCP and TCP+TLS, and wireguard-go, boringtun and Nebula when installed —
//! and measures from `left` to `right`: ping latency, TCP throughput with one and four
//! streams, UDP packet rates at 64 and 1,400 bytes, the CPU time of the data-path processes
//! during each transfer, and their peak memory. Results go to `target/bench/` as JSON,
//! Markdown and a PNG chart. See `docs/performance.md` for the method.

mod chart;
mod cleanup;
mod flood;
mod load;
mod measure;
mod report;
mod stats;
mod subjects;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use connectopus_tests::{LinkKind, TestDir, Topology, is_root, tool};

use crate::subjects::{Kind, Layout, Subject};

/// One repetition's measurements, by metric key (see [`report::METRICS`]).
pub type Sample = BTreeMap<&'static str, f64>;

/// Options of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Short mode (CI): one repetition, short transfers, fewer pings, fewer line subjects.
    pub short: bool,
    /// Repetitions of every subject.
    pub reps: u32,
    /// Seconds of each TCP transfer.
    pub tcp_seconds: u32,
    /// Seconds of each UDP transfer.
    pub udp_seconds: u32,
    /// Pings per latency test.
    pub pings: u32,
    /// Seconds between pings, as `ping -i` takes it.
    pub ping_interval: String,
    /// CPU burners for the latency test under load (`load.rs`); 0 skips that test.
    pub load: usize,
    /// Where the JSON, Markdown and PNG go.
    pub out: PathBuf,
    /// Only subjects whose id (`pair/connectopus-dtls`...) contains one of these.
    pub only: Vec<String>,
    /// Instead of the subjects: forwarding quiet and under a spoofed ClientHello flood of
    /// this many hellos a second (`flood.rs`).
    pub flood: Option<u32>,
}

/// What to do.
#[derive(Clone, Debug)]
enum Action {
    /// Print the usage.
    Help,
    /// Measure.
    Measure(Options),
    /// Redraw the reports from a saved JSON report.
    Redraw(Options, PathBuf),
}

impl Options {
    fn parse(args: &[String]) -> Result<Action> {
        let mut options = Options {
            short: false,
            reps: 3,
            tcp_seconds: 10,
            udp_seconds: 5,
            pings: 1000,
            ping_interval: "0.002".into(),
            load: std::thread::available_parallelism().map_or(2, usize::from),
            out: default_out_dir(),
            only: Vec::new(),
            flood: None,
        };
        let short = args.iter().any(|a| a == "--short");
        if short {
            options.short = true;
            options.reps = 1;
            options.tcp_seconds = 2;
            options.udp_seconds = 2;
            options.pings = 200;
        }
        let mut redraw = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--short" => {}
                "--reps" => options.reps = value("--reps")?.parse().context("--reps")?,
                "--seconds" => {
                    options.tcp_seconds = value("--seconds")?.parse().context("--seconds")?
                }
                "--udp-seconds" => {
                    options.udp_seconds =
                        value("--udp-seconds")?.parse().context("--udp-seconds")?
                }
                "--pings" => options.pings = value("--pings")?.parse().context("--pings")?,
                "--load" => options.load = value("--load")?.parse().context("--load")?,
                "--out" => options.out = PathBuf::from(value("--out")?),
                "--only" => options.only.extend(
                    value("--only")?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                ),
                "--redraw" => redraw = Some(PathBuf::from(value("--redraw")?)),
                "--flood" => options.flood = Some(options.flood.unwrap_or(100_000)),
                "--flood-rate" => {
                    options.flood = Some(value("--flood-rate")?.parse().context("--flood-rate")?)
                }
                "-h" | "--help" => return Ok(Action::Help),
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        if options.reps == 0 || options.tcp_seconds == 0 || options.udp_seconds == 0 {
            bail!("--reps, --seconds and --udp-seconds must be at least 1");
        }
        options.pings = options.pings.max(10);
        Ok(match redraw {
            Some(json) => Action::Redraw(options, json),
            None => Action::Measure(options),
        })
    }

    fn mode(&self) -> &'static str {
        if self.short { "short" } else { "full" }
    }
}

const USAGE: &str = "usage: e2e [--short] [--reps N] [--seconds S] [--udp-seconds S] [--pings N]
           [--load N] [--out DIR] [--only ID[,ID...]]
  --short        CI mode: 1 repetition, 2 s transfers, 200 pings, fewer line subjects
  --reps N       interleaved repetitions of every subject (default 3)
  --seconds S    length of each TCP transfer (default 10)
  --udp-seconds S  length of each UDP transfer (default 5)
  --pings N      pings per latency test, 2 ms apart (default 1000)
  --load N       CPU burners (busy shells, each its own session) during a second latency
                 test, the one under load (default: one per CPU; 0 skips it)
  --out DIR      where e2e.json, e2e.md and e2e.png go (default target/bench)
  --only IDS     only subjects whose id contains one of these (e.g. pair/,dtls)
  --redraw FILE  measure nothing: rewrite the table and chart from a saved e2e.json
  --flood        instead of the subjects: forwarding across a DTLS listener quiet and under
                 100,000 spoofed ClientHellos a second, side by side (flood.md, flood.json);
                 --reps and --seconds apply
  --flood-rate N the same at N hellos a second
Needs root (network namespaces). Run through `cargo xtask bench`, which builds in release.";

/// `target/bench`, next to the profile directory this binary runs from.
fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|t| t.join("bench")))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// The subjects of a run, in the order each repetition visits them.
fn subjects(options: &Options) -> Vec<Subject> {
    let mut pair = vec![
        Kind::Raw,
        Kind::Connectopus(LinkKind::DtlsPsk),
        // The same link with the CPU-local data path (opt-in, `--cpu-local`).
        Kind::ConnectopusDtlsCpuLocal,
        // Plaintext IPv6-in-UDP, userspace (the eBPF fast path's format, without it).
        Kind::Connectopus(LinkKind::Udp),
        // The same links with the eBPF fast path.
        Kind::ConnectopusUdpEbpf,
        Kind::Connectopus(LinkKind::Tcp),
        Kind::Connectopus(LinkKind::TcpTls),
        Kind::WireguardGo,
        Kind::Boringtun,
        Kind::Nebula,
    ];
    if !options.short {
        // Certificate mode runs AES-128-GCM (PSK mode's default is ChaCha20-Poly1305).
        pair.insert(3, Kind::Connectopus(LinkKind::DtlsCert));
    }
    let line: &[Kind] = if options.short {
        &[
            Kind::Raw,
            Kind::Connectopus(LinkKind::DtlsPsk),
            Kind::Connectopus(LinkKind::Udp),
            Kind::ConnectopusUdpEbpf,
        ]
    } else {
        &[
            Kind::Raw,
            Kind::Connectopus(LinkKind::DtlsPsk),
            Kind::Connectopus(LinkKind::Udp),
            Kind::ConnectopusUdpEbpf,
            Kind::Connectopus(LinkKind::Tcp),
            Kind::Connectopus(LinkKind::TcpTls),
        ]
    };
    pair.iter()
        .map(|&kind| Subject {
            layout: Layout::Pair,
            kind,
        })
        .chain(line.iter().map(|&kind| Subject {
            layout: Layout::Line,
            kind,
        }))
        .filter(|s| options.only.is_empty() || options.only.iter().any(|o| s.id().contains(o)))
        .collect()
}

/// How a subject fared.
#[derive(Clone, Debug)]
pub enum Status {
    /// Measured (some repetitions may have failed; see the errors).
    Ran,
    /// Not measured: a program it needs is missing.
    Skipped(String),
    /// Every attempt failed.
    Failed(String),
}

/// A subject's results over the run.
#[derive(Clone, Debug)]
pub struct SubjectResult {
    /// The subject.
    pub subject: Subject,
    /// Whether it ran.
    pub status: Status,
    /// One entry per repetition; `None` where it failed or was not run.
    pub samples: Vec<Option<Sample>>,
    /// Errors of failed repetitions.
    pub errors: Vec<String>,
    /// What the subject reported about itself (Connectopus: its data path), if anything.
    pub details: Option<String>,
}

/// Everything a report needs.
#[derive(Debug)]
pub struct Run {
    /// The options used.
    pub options: Options,
    /// The machine.
    pub machine: report::Machine,
    /// Per subject.
    pub results: Vec<SubjectResult>,
    /// Wall-clock seconds of the measurements.
    pub elapsed_s: f64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("e2e: {error:#}");
            if cleanup::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let options = match Options::parse(args)? {
        Action::Help => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Action::Redraw(options, json) => {
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", json.display()))?;
            let run = report::from_json(&value, &options)?;
            for path in report::write(&run)? {
                eprintln!("e2e: wrote {}", path.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Action::Measure(options) => options,
    };
    if !is_root() {
        bail!("needs root: it creates network namespaces, veth pairs and TUN devices");
    }
    for t in ["ip", "iperf3", "ping", "taskset"] {
        tool(t)?;
    }
    cleanup::install_handler()?;
    let machine = report::Machine::probe();
    if let Some(rate) = options.flood {
        flood::run(&options, &machine, rate)?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "e2e: {} mode, {} repetition(s), TCP {} s, UDP {} s, {} pings; {}; load {}",
        options.mode(),
        options.reps,
        options.tcp_seconds,
        options.udp_seconds,
        options.pings,
        machine.summary(),
        machine.load_before
    );
    let started = Instant::now();
    let mut results: Vec<SubjectResult> = subjects(&options)
        .into_iter()
        .map(|subject| SubjectResult {
            subject,
            status: match subject.kind.available() {
                Ok(()) => Status::Ran,
                Err(reason) => Status::Skipped(reason),
            },
            samples: vec![None; options.reps as usize],
            errors: Vec::new(),
            details: None,
        })
        .collect();
    for r in &results {
        if let Status::Skipped(reason) = &r.status {
            eprintln!("e2e: skipping {}: {reason}", r.subject.id());
        }
    }
    let measured = measure_all(&options, &mut results);
    let mut machine = machine;
    machine.load_after = report::Machine::load();
    let run = Run {
        options,
        machine,
        results,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    // Write what was measured even after a failure or Ctrl-C.
    let written = report::write(&run);
    measured?;
    let paths = written?;
    for path in &paths {
        eprintln!("e2e: wrote {}", path.display());
    }
    let broken: Vec<String> = run
        .results
        .iter()
        .filter(|r| !r.subject.kind.is_peer() && !r.errors.is_empty())
        .map(|r| format!("{}: {}", r.subject.id(), r.errors.join("; ")))
        .collect();
    if !broken.is_empty() {
        eprintln!("e2e: failed:\n  {}", broken.join("\n  "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the namespaces and runs every repetition of every subject, interleaved.
fn measure_all(options: &Options, results: &mut [SubjectResult]) -> Result<()> {
    let needs = |layout: Layout| results.iter().any(|r| r.subject.layout == layout);
    let pair_dir = TestDir::new("bench-pair")?;
    let line_dir = TestDir::new("bench-line")?;
    let pair = if needs(Layout::Pair) {
        Some(topology(&pair_dir, Layout::Pair)?)
    } else {
        None
    };
    let line = if needs(Layout::Line) {
        Some(topology(&line_dir, Layout::Line)?)
    } else {
        None
    };
    let mut outcome = Ok(());
    'reps: for rep in 0..options.reps as usize {
        for result in results.iter_mut() {
            if cleanup::interrupted() {
                outcome = Err(anyhow::anyhow!("interrupted"));
                break 'reps;
            }
            if !matches!(result.status, Status::Ran) {
                continue;
            }
            let topo = match result.subject.layout {
                Layout::Pair => pair.as_ref(),
                Layout::Line => line.as_ref(),
            };
            let Some(topo) = topo else { continue };
            let id = result.subject.id();
            eprintln!("e2e: [{}/{}] {id}", rep + 1, options.reps);
            let started = Instant::now();
            match measure_one(options, result.subject, topo) {
                Ok((sample, details)) => {
                    if result.details.is_none() {
                        result.details = details;
                    }
                    eprintln!(
                        "e2e:   {} ({:.0} s)",
                        report::one_line(&sample),
                        started.elapsed().as_secs_f64()
                    );
                    result.samples[rep] = Some(sample);
                }
                Err(error) => {
                    let error = if cleanup::interrupted() {
                        // Whatever failed, it failed because the signal killed it.
                        "interrupted".to_owned()
                    } else {
                        format!("{error:#}")
                    };
                    eprintln!("e2e:   {id} failed: {error}");
                    result
                        .errors
                        .push(format!("repetition {}: {error}", rep + 1));
                    if !cleanup::interrupted() {
                        // Keep the logs of a failure.
                        pair_dir.keep();
                        line_dir.keep();
                    }
                    if result.subject.kind.is_peer() {
                        // A peer that cannot run here will not run next time either.
                        result.status = Status::Failed(error);
                    }
                }
            }
        }
    }
    // A signal during the last subject ends its measurement with an error, not the loop.
    if cleanup::interrupted() {
        outcome = Err(anyhow::anyhow!("interrupted"));
    }
    for result in results.iter_mut() {
        if matches!(result.status, Status::Ran) && result.samples.iter().all(Option::is_none) {
            result.status = if result.errors.is_empty() {
                Status::Skipped("not reached: the run was interrupted".into())
            } else {
                Status::Failed(result.errors.join("; "))
            };
        }
    }
    outcome
}

/// Creates the namespaces of a layout; the line is routed so the raw reference crosses
/// `mid` by kernel forwarding.
fn topology(dir: &TestDir, layout: Layout) -> Result<Topology> {
    let builder = Topology::line_builder(layout.nodes()).routed(layout == Layout::Line);
    let topo = builder.build(dir)?;
    for node in layout.nodes() {
        cleanup::remember_namespace(topo.ns(node).name());
    }
    Ok(topo)
}

/// How long the traffic has stopped before the settled resident memory is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(2500);

/// Starts one subject, runs every test against it once, and stops it.
fn measure_one(
    options: &Options,
    subject: Subject,
    topo: &Topology,
) -> Result<(Sample, Option<String>)> {
    let nodes = subject.layout.nodes();
    let (src, dst_ns) = (topo.ns(nodes[0]), topo.ns(nodes[nodes.len() - 1]));
    let up = subjects::start(subject, topo)?;
    let pids: Vec<u32> = up.processes.iter().map(|(_, pid)| *pid).collect();
    let server = measure::iperf_server(dst_ns)?;
    let mut sample = Sample::new();
    cleanup::check()?;

    let latency = measure::ping(src, up.dst, options.pings, &options.ping_interval)?;
    sample.insert("ping_p50_us", latency.p50_us);
    sample.insert("ping_p99_us", latency.p99_us);
    sample.insert("ping_loss_pct", latency.loss_pct);
    let pinned = measure::ping_pinned(
        src,
        up.dst,
        options.pings,
        &options.ping_interval,
        measure::first_allowed_cpu(),
    )?;
    sample.insert("ping_pinned_p50_us", pinned.p50_us);
    if options.load > 0 {
        cleanup::check()?;
        let burners = load::Burners::start(options.load)?;
        let loaded = measure::ping(src, up.dst, options.pings, &options.ping_interval);
        drop(burners);
        let loaded = loaded.context("ping under load")?;
        sample.insert("ping_loaded_p50_us", loaded.p50_us);
        sample.insert("ping_loaded_p99_us", loaded.p99_us);
    }

    // CPU seconds of the data-path processes across `f`, or None without processes.
    let with_cpu = |f: &mut dyn FnMut() -> Result<()>| -> Result<Option<f64>> {
        let before = measure::total_cpu_seconds(&pids)?;
        f()?;
        let after = measure::total_cpu_seconds(&pids)?;
        Ok((!pids.is_empty()).then_some(after - before))
    };

    for (name, streams) in [("tcp1", 1u32), ("tcp4", 4)] {
        cleanup::check()?;
        let mut result = None;
        let cpu = with_cpu(&mut || {
            result = Some(measure::tcp(src, up.dst, options.tcp_seconds, streams)?);
            Ok(())
        })?;
        let result = result.context("no TCP result")?;
        let mbps = result.bps / 1e6;
        sample.insert(metric(name, "mbps"), mbps);
        sample.insert(metric(name, "retransmits"), result.retransmits);
        if let Some(cpu) = cpu {
            sample.insert(metric(name, "cpu_s"), cpu);
            if cpu > 0.0 {
                let mbit = mbps * f64::from(options.tcp_seconds);
                sample.insert(metric(name, "mbit_per_cpu_s"), mbit / cpu);
            }
        }
    }
    // An unlimited UDP flood through a TCP or TLS link can stall iperf3 itself (its control
    // connection queues behind the flood in the same TCP stream: head-of-line blocking, a
    // known open problem of stream links). For those subjects a failed flood is reported as
    // not measured, with the reason, instead of failing the whole run.
    let stream_link = matches!(
        subject.kind,
        Kind::Connectopus(LinkKind::Tcp | LinkKind::TcpTls)
    );
    let mut udp_skipped = None;
    for (name, size) in [("udp64", 64usize), ("udp1400", 1400)] {
        cleanup::check()?;
        let mut result = None;
        let measured = with_cpu(&mut || {
            result = Some(measure::udp(src, up.dst, options.udp_seconds, size)?);
            Ok(())
        });
        let cpu = match measured {
            Ok(cpu) => cpu,
            Err(e) if stream_link => {
                eprintln!("e2e:   {name} not measured over a stream link: {e:#}");
                udp_skipped = Some(format!("UDP flood not measured ({name}: iperf3 stalled)"));
                break;
            }
            Err(e) => return Err(e),
        };
        let result = result.context("no UDP result")?;
        sample.insert(metric(name, "rx_kpps"), result.rx_pps / 1e3);
        sample.insert(metric(name, "tx_kpps"), result.tx_pps / 1e3);
        sample.insert(metric(name, "loss_pct"), result.loss_pct);
        if let Some(cpu) = cpu {
            sample.insert(metric(name, "cpu_s"), cpu);
        }
    }
    if !pids.is_empty() {
        let mut peak: f64 = 0.0;
        for pid in &pids {
            peak = peak.max(measure::peak_rss_kib(*pid)?);
        }
        sample.insert("rss_peak_mib", peak / 1024.0);
        // Resident once the traffic stopped: a Connectopus node gives idle packet buffers
        // back within two of its once-a-second trims, and the code start-up ran 5 s after
        // its start (long past by now); what a process keeps after a quiet moment is what
        // it costs a host that is not forwarding at full rate. Not in short mode (CI), to
        // keep it short.
        if !options.short {
            std::thread::sleep(SETTLE);
            let mut settled: f64 = 0.0;
            for pid in &pids {
                settled = settled.max(measure::rss_kib(*pid)?);
            }
            sample.insert("rss_settled_mib", settled / 1024.0);
        }
    }
    drop(server);
    let details = match (up.details.clone(), udp_skipped) {
        (Some(d), Some(skipped)) => Some(format!("{d}, {skipped}")),
        (d, skipped) => d.or(skipped),
    };
    up.stop();
    Ok((sample, details))
}

/// The static key `<test>_<what>` of a metric (see [`report::METRICS`]).
fn metric(test: &str, what: &str) -> &'static str {
    let key = format!("{test}_{what}");
    report::METRICS
        .iter()
        .find(|m| m.key == key)
        .map(|m| m.key)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let parse = |a: &[&str]| match Options::parse(
            &a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        ) {
            Ok(Action::Measure(o)) => o,
            other => panic!("{other:?}"),
        };
        let full = parse(&[]);
        assert_eq!((full.reps, full.tcp_seconds, full.pings), (3, 10, 1000));
        let short = parse(&["--short", "--only", "pair/,dtls"]);
        assert_eq!((short.reps, short.tcp_seconds, short.pings), (1, 2, 200));
        assert_eq!(short.only, vec!["pair/", "dtls"]);
        let ids: Vec<String> = subjects(&short).iter().map(Subject::id).collect();
        assert!(ids.contains(&"line/connectopus-dtls".to_owned()));
        let short_all: Vec<String> = subjects(&parse(&["--short"]))
            .iter()
            .map(Subject::id)
            .collect();
        for udp in [
            "pair/connectopus-udp",
            "line/connectopus-udp",
            "pair/connectopus-udp-ebpf",
            "line/connectopus-udp-ebpf",
        ] {
            assert!(short_all.contains(&udp.to_owned()), "{udp}");
            assert_eq!(Subject::from_id(udp).map(|s| s.id()).as_deref(), Some(udp));
        }
        assert!(ids.contains(&"pair/wireguard-go".to_owned()));
        assert!(!ids.contains(&"line/veth-forwarding".to_owned()));
        assert!(!ids.contains(&"pair/connectopus-dtls-cert".to_owned()));
        assert!(subjects(&full).len() > subjects(&parse(&["--short"])).len());
        assert!(Options::parse(&["--bogus".to_owned()]).is_err());
        assert_eq!(parse(&["--reps", "5"]).reps, 5);
        assert_eq!(parse(&["--flood"]).flood, Some(100_000));
        assert_eq!(parse(&["--flood-rate", "5000"]).flood, Some(5000));
        assert_eq!(parse(&[]).flood, None);
    }

    #[test]
    fn every_measured_metric_is_declared() {
        for test in ["tcp1", "tcp4"] {
            for what in ["mbps", "retransmits", "cpu_s", "mbit_per_cpu_s"] {
                assert_ne!(metric(test, what), "unknown", "{test}_{what}");
            }
        }
        for test in ["udp64", "udp1400"] {
            for what in ["rx_kpps", "tx_kpps", "loss_pct", "cpu_s"] {
                assert_ne!(metric(test, what), "unknown", "{test}_{what}");
            }
        }
    }
}
