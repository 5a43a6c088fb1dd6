//! The soak: a three-node mesh foo—bar—baz (foo—bar over DTLS, bar—baz over TCP with TLS)
//! in network namespaces, for `--minutes N`, under continuous load: iperf3 from foo to baz
//! (through bar) and `dig` queries at baz for every node's name, while the foo—bar underlay
//! drops 5 % of packets each way (nftables `numgen`) and a signed configuration change is set
//! at a different node every minute.
//!
//! Each minute it prints the throughput, the DNS answers, each node's RSS, file descriptors,
//! threads and drop counters. It fails if a node dies or panics, if a minute carries no
//! traffic or answers no query, if a configuration change does not reach every node, or if a
//! node's resources grow: after the first minute (warm-up), the least-squares trend over the
//! run may add at most [`MAX_RSS_GROWTH_KIB`] of RSS (or 10 %), [`MAX_FD_GROWTH`] descriptors
//! and [`MAX_THREAD_GROWTH`] threads.
//!
//! Run it with `cargo xtask soak --minutes N` (as root); CI runs `--minutes 2`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{
    Direction, IperfOptions, LinkKind, Loss, Mesh, MeshLink, TestDir, Topology, dig, iperf3_client,
    is_root, require_tools, ssh_sign, wait_until,
};

const NODES: [&str; 3] = ["foo", "bar", "baz"];
const MAX_RSS_GROWTH_KIB: f64 = 8.0 * 1024.0;
const MAX_FD_GROWTH: f64 = 2.0;
const MAX_THREAD_GROWTH: f64 = 2.0;
const IPERF_PORT: u16 = 5201;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes = match args.as_slice() {
        [flag, n] if flag == "--minutes" => n.parse::<u32>().ok().filter(|n| *n >= 1),
        _ => None,
    };
    let Some(minutes) = minutes else {
        eprintln!("usage: soak --minutes N (N >= 1)");
        return ExitCode::FAILURE;
    };
    if !is_root() {
        eprintln!("the soak creates network namespaces and TUN devices: run it as root");
        return ExitCode::FAILURE;
    }
    match soak(minutes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("soak: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What is sampled of a node process each minute.
#[derive(Clone, Copy, Debug)]
struct Usage {
    fds: f64,
    threads: f64,
    /// Resident memory, KiB.
    rss: f64,
}

fn sample(pid: u32) -> Option<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Usage {
        fds: fds as f64,
        threads: field("Threads:")?,
        rss: field("VmRSS:")?,
    })
}

/// The growth over the samples that a least-squares line fits: slope × span.
fn fitted_growth(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() < 2 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    num / den * (n - 1.0)
}

/// DNS load: `dig` at baz for each node's name, over and over, counting answers.
struct DnsLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

fn soak(minutes: u32) -> Result<()> {
    require_tools(&["iperf3", "dig", "nft"]);
    let dir = TestDir::new("soak")?;
    let result = run(&dir, minutes);
    if result.is_err() {
        dir.keep();
        eprintln!("soak: logs kept in {}", dir.path().display());
    }
    result
}

fn run(dir: &TestDir, minutes: u32) -> Result<()> {
    let topo = Topology::line(dir, &NODES)?;
    let mut mesh = Mesh::configure(
        &topo,
        &[
            MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
            MeshLink::new("bar", "baz", LinkKind::TcpTls),
        ],
    )?;
    mesh.start_all()?;
    mesh.wait_converged(Duration::from_secs(30))?;
    let _loss = Loss::new(topo.ns("foo"), topo.iface("foo", "bar"), Direction::Both, 5)?;
    let server = topo.ns("baz").spawn(
        "iperf3",
        &["-s", "--forceflush", "-p", &IPERF_PORT.to_string()],
    )?;
    server.wait_for_output("Server listening", Duration::from_secs(5))?;

    let dns = DnsLoad {
        stop: Arc::new(AtomicBool::new(false)),
        ok: Arc::new(AtomicU64::new(0)),
        failed: Arc::new(AtomicU64::new(0)),
    };
    let original = std::fs::read_to_string(mesh.config_path())?;
    let mut samples: BTreeMap<&str, Vec<Usage>> = BTreeMap::new();
    let pids: BTreeMap<&str, u32> = NODES
        .iter()
        .map(|n| Ok((*n, mesh.process(n).context("no process")?.pid())))
        .collect::<Result<_>>()?;
    for (n, pid) in &pids {
        samples
            .entry(n)
            .or_default()
            .push(sample(*pid).context("sampling /proc")?);
    }
    println!(
        "soak: {minutes} minute(s); foo—bar loses 5 % each way; iperf3 foo -> baz, dig at baz; \
         a config change every minute"
    );
    println!(
        "minute  Mbit/s  dns ok/failed  config  | per node: RSS MiB, fds, threads, packets \
         dropped (all its drop counters)"
    );
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let addresses: Vec<(String, String)> = NODES
            .iter()
            .map(|n| (format!("{n}.connectopus.test"), mesh.address(n).to_string()))
            .collect();
        let server_addr = IpAddr::V6(mesh.address("baz"));
        let baz_ns = topo.ns("baz");
        let (stop, ok, failed) = (&dns.stop, &dns.ok, &dns.failed);
        scope.spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (name, want) = &addresses[i % addresses.len()];
                i += 1;
                let answered = dig(baz_ns, server_addr, name, "AAAA", false).is_ok_and(|a| {
                    a.answers
                        .iter()
                        .any(|r| r.rtype == "AAAA" && &r.data == want)
                });
                if answered {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let result = minutes_of_load(
            &mesh,
            &topo,
            dir,
            &original,
            minutes,
            &dns,
            &pids,
            &mut samples,
        );
        dns.stop.store(true, Ordering::Relaxed);
        result
    })?;
    drop(server);

    let mut findings = Vec::new();
    for (n, series) in &samples {
        // The first minute is warm-up: buffers, caches and the first config change settle.
        let steady = &series[1.min(series.len() - 1)..];
        let pick = |f: fn(&Usage) -> f64| steady.iter().map(f).collect::<Vec<f64>>();
        let (rss, fds, threads) = (
            fitted_growth(&pick(|u| u.rss)),
            fitted_growth(&pick(|u| u.fds)),
            fitted_growth(&pick(|u| u.threads)),
        );
        println!(
            "soak: {n}: trend after warm-up: RSS {:+.1} MiB, fds {fds:+.1}, threads {threads:+.1} \
             (RSS {:.1} -> {:.1} MiB over the run)",
            rss / 1024.0,
            series[0].rss / 1024.0,
            series[series.len() - 1].rss / 1024.0
        );
        let rss_limit = MAX_RSS_GROWTH_KIB.max(steady[0].rss * 0.1);
        if rss > rss_limit {
            findings.push(format!("{n}'s RSS grows: {:+.1} MiB", rss / 1024.0));
        }
        if fds > MAX_FD_GROWTH {
            findings.push(format!("{n}'s file descriptors grow: {fds:+.1}"));
        }
        if threads > MAX_THREAD_GROWTH {
            findings.push(format!("{n}'s threads grow: {threads:+.1}"));
        }
    }
    for n in NODES {
        let status = mesh.status(n)?;
        let drops: Vec<String> = status["drops"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter_map(|(reason, count)| {
                        count
                            .as_u64()
                            .filter(|c| *c > 0)
                            .map(|c| format!("{reason} {c}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "soak: {n}: drops at the end: {}",
            if drops.is_empty() {
                "none".to_owned()
            } else {
                drops.join(", ")
            }
        );
    }
    ensure!(findings.is_empty(), "{}", findings.join("; "));
    println!(
        "soak: passed: {minutes} minute(s) in {:.0?}, no crash, no growth trend",
        start.elapsed()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn minutes_of_load<'a>(
    mesh: &Mesh<'_>,
    topo: &Topology,
    dir: &TestDir,
    original: &str,
    minutes: u32,
    dns: &DnsLoad,
    pids: &BTreeMap<&'a str, u32>,
    samples: &mut BTreeMap<&'a str, Vec<Usage>>,
) -> Result<()> {
    let mut dns_seen = (0, 0);
    for minute in 1..=minutes {
        let began = Instant::now();
        // A signed change set at a different node each minute.
        let version = u64::from(minute) + 1;
        let at = NODES[minute as usize % NODES.len()];
        let file = dir.join(format!("v{version}.yml"));
        std::fs::write(
            &file,
            original.replace("  version: 1\n", &format!("  version: {version}\n"))
                + &format!("  # soak change {version}\n"),
        )?;
        ssh_sign(&file, mesh.admin_key(), "connectopus")?;
        let (ok, out) = mesh.config_set(at, &file)?;
        ensure!(ok, "minute {minute}: {at} refused version {version}: {out}");
        // Traffic for most of the minute; the rest checks the change and samples.
        let iperf = iperf3_client(
            topo.ns("foo"),
            mesh.address("baz"),
            &IperfOptions {
                seconds: 50,
                port: IPERF_PORT,
                ..IperfOptions::default()
            },
        )
        .with_context(|| format!("minute {minute}: iperf3 foo -> baz"))?;
        ensure!(
            iperf.bits_per_second() > 0.0,
            "minute {minute}: nothing crossed the mesh: {iperf:?}"
        );
        let versions = || -> Vec<u64> {
            NODES
                .iter()
                .map(|n| mesh.config_version(n).unwrap_or(0))
                .collect()
        };
        wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
            versions().iter().all(|v| *v == version)
        })
        .with_context(|| {
            format!(
                "minute {minute}: version {version} set at {at} did not reach every node: {:?}",
                versions()
            )
        })?;
        let (ok, failed) = (
            dns.ok.load(Ordering::Relaxed),
            dns.failed.load(Ordering::Relaxed),
        );
        let (dns_ok, dns_failed) = (ok - dns_seen.0, failed - dns_seen.1);
        dns_seen = (ok, failed);
        ensure!(
            dns_ok > 0,
            "minute {minute}: no DNS query was answered ({dns_failed} failed)"
        );
        let mut nodes = Vec::new();
        for (n, pid) in pids {
            let process = mesh.process(n).context("no process")?;
            ensure!(
                process.pid() == *pid && process.is_running(),
                "minute {minute}: {n} died\n{}",
                process.log_tails()
            );
            ensure!(
                !process.stderr().contains("panicked"),
                "minute {minute}: {n} panicked\n{}",
                process.log_tails()
            );
            let usage = sample(*pid).context("sampling /proc")?;
            samples.entry(n).or_default().push(usage);
            let status = mesh.status(n)?;
            let drops: u64 = status["drops"]
                .as_object()
                .map(|d| d.values().filter_map(serde_json::Value::as_u64).sum())
                .unwrap_or(0);
            nodes.push(format!(
                "{n} {:.1} {} {} {drops}",
                usage.rss / 1024.0,
                usage.fds,
                usage.threads
            ));
        }
        println!(
            "{minute:>6}  {:>6.1}  {:>6}/{:<6}  v{version:<5} | {}",
            iperf.bits_per_second() / 1e6,
            dns_ok,
            dns_failed,
            nodes.join(" | ")
        );
        // The next minute starts on the minute.
        if let Some(left) = Duration::from_secs(60).checked_sub(began.elapsed()) {
            std::thread::sleep(left);
        }
    }
    if dns.failed.load(Ordering::Relaxed) > dns.ok.load(Ordering::Relaxed) / 10 {
        bail!(
            "more than 10 % of DNS queries failed: {} answered, {} failed",
            dns.ok.load(Ordering::Relaxed),
            dns.failed.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
