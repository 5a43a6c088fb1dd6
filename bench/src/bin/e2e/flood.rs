//! `e2e --flood`: forwarding throughput of a DTLS listener quiet and under a spoofed
//! ClientHello flood, side by side in one run (issue 12, item 3; docs/security.md).
//!
//! The three-node line `left — mid — right` over DTLS (`mid` listens for both links); one
//! iperf3 TCP stream from `left` to `right` across `mid`, in interleaved repetitions of:
//!
//! - `quiet`: no flood;
//! - `dropped at ingress`: the flood (`hello_flood`, from `left`'s namespace, each hello from
//!   its own /64 of 2001:db8:99::/48) aimed at `mid`'s listener, dropped by an nftables rule
//!   at `mid`'s prerouting hook: what making and carrying the flood costs this machine, without
//!   the UDP stack or the node;
//! - `at the listener`: the same flood reaching the node (the kernel filter goes on);
//! - `at the listener, no filter`: the same with `CONNECTOPUS_HELLO_FILTER=off` on `mid` (the
//!   userspace limiter alone), `mid` restarted for it and back.
//!
//! Each condition's median over the repetitions, and the ratio of medians to `quiet`, go to
//! `flood.md` and `flood.json` in the output directory, with the machine, the hello rate the
//! flooder reached, its CPU time, `mid`'s CPU time and `mid`'s limiter counters.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use connectopus_tests::{
    ChildGuard, LinkKind, Mesh, MeshLink, TestDir, Topology, tool, workspace_binary,
};
use serde_json::{Value, json};

use crate::report::Machine;
use crate::stats::Summary;
use crate::subjects::Layout;
use crate::{Options, cleanup, measure};

/// The attackers' sources: a /48 of their own, one /64 per hello.
const ATTACK_PREFIX: &str = "2001:db8:99::";
const ATTACK_ROUTE: &str = "2001:db8:99::/48";
/// Seconds the flood runs before the transfer starts (the filter goes on within about 2 s).
const LEAD_IN_S: f64 = 3.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Quiet,
    DroppedAtIngress,
    AtListener,
    AtListenerNoFilter,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::Quiet,
        Condition::DroppedAtIngress,
        Condition::AtListener,
        Condition::AtListenerNoFilter,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Quiet => "quiet",
            Condition::DroppedAtIngress => "flood dropped at ingress",
            Condition::AtListener => "flood at the listener",
            Condition::AtListenerNoFilter => "flood at the listener, no kernel filter",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Condition::Quiet => "quiet",
            Condition::DroppedAtIngress => "dropped_at_ingress",
            Condition::AtListener => "at_listener",
            Condition::AtListenerNoFilter => "at_listener_no_filter",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
struct Sample {
    mbps: f64,
    /// Hellos per second the flooder sent (0 without a flood).
    hellos_per_s: f64,
    /// CPU seconds of the flooder over its whole run (lead-in included).
    flooder_cpu_s: f64,
    /// CPU seconds of `mid` during the transfer.
    mid_cpu_s: f64,
    /// Limiter refusals and kernel drops at `mid` during the condition.
    rate_limited: u64,
    kernel_drops: u64,
    /// Process ids of `mid` and of the flooder, to find them in a `perf record -a` profile.
    pids: (u32, Option<u32>),
}

/// Runs the flood benchmark and writes its reports.
pub fn run(options: &Options, machine: &Machine, rate: u32) -> Result<()> {
    for t in ["ip", "iperf3", "nft"] {
        tool(t)?;
    }
    let flooder = workspace_binary("hello_flood")?;
    let seconds = options.tcp_seconds;
    eprintln!(
        "e2e --flood: {} repetition(s), TCP {seconds} s each, {rate} hellos/s; {}; load {}",
        options.reps,
        machine.summary(),
        machine.load_before
    );
    let dir = TestDir::new("bench-flood")?;
    let topo = Topology::line_builder(Layout::Line.nodes())
        .routed(false)
        .build(&dir)?;
    for node in Layout::Line.nodes() {
        cleanup::remember_namespace(topo.ns(node).name());
    }
    let [left, mid, right] = [0, 1, 2].map(|i| Layout::Line.nodes()[i]);
    // Answers to the spoofed sources go back towards left, as a real flood's would.
    let left_addr = topo.link_addr(left, mid).to_string();
    topo.ns(mid)
        .ip(&["-6", "route", "add", ATTACK_ROUTE, "via", &left_addr])?;
    let listener = topo.link_addr(mid, left).to_string();

    let mut mesh = Mesh::configure(
        &topo,
        &[
            MeshLink::new(mid, left, LinkKind::DtlsPsk),
            MeshLink::new(mid, right, LinkKind::DtlsPsk),
        ],
    )?;
    mesh.set_log_level("info");
    mesh.start_all()?;
    mesh.wait_converged(Duration::from_secs(30))?;
    let dst = IpAddr::V6(mesh.address(right));
    measure::wait_reachable(topo.ns(left), dst, Duration::from_secs(30))?;
    let _server = measure::iperf_server(topo.ns(right))?;

    let started = Instant::now();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Condition::ALL.len()];
    let mut failure = None;
    'reps: for rep in 0..options.reps {
        for (i, condition) in Condition::ALL.into_iter().enumerate() {
            let sample = cleanup::check().and_then(|()| {
                if condition == Condition::AtListenerNoFilter {
                    restart(&mut mesh, mid, Some("off"))?;
                }
                let sample = measure_condition(
                    &topo, &mesh, condition, &flooder, &listener, rate, seconds, dst,
                );
                if condition == Condition::AtListenerNoFilter {
                    restart(&mut mesh, mid, None)?;
                }
                sample
            });
            let sample = match sample {
                Ok(sample) => sample,
                Err(error) => {
                    // Keep the nodes' logs, and report what was measured.
                    dir.keep();
                    failure = Some(error.context(format!(
                        "{} (rep {}); logs kept in {}",
                        condition.name(),
                        rep + 1,
                        dir.path().display()
                    )));
                    break 'reps;
                }
            };
            eprintln!(
                "e2e --flood: [{}/{}] {}: {:.0} Mbit/s ({:.0} hellos/s, flooder {:.2} s CPU, mid {:.2} s CPU, {} rate-limited, {} kernel drops; pids mid {} flooder {:?})",
                rep + 1,
                options.reps,
                condition.name(),
                sample.mbps,
                sample.hellos_per_s,
                sample.flooder_cpu_s,
                sample.mid_cpu_s,
                sample.rate_limited,
                sample.kernel_drops,
                sample.pids.0,
                sample.pids.1
            );
            samples[i].push(sample);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut machine = machine.clone();
    machine.load_after = Machine::load();
    write(options, &machine, rate, seconds, &samples, elapsed)?;
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Restarts `node` with the hello filter `off` (or back to normal) and waits for the mesh.
fn restart(mesh: &mut Mesh<'_>, node: &str, filter: Option<&str>) -> Result<()> {
    mesh.stop(node)?;
    mesh.set_env("CONNECTOPUS_HELLO_FILTER", filter.unwrap_or("on"));
    mesh.start(node)?;
    mesh.wait_converged(Duration::from_secs(60))
}

fn counter(mesh: &Mesh<'_>, node: &str, name: &str) -> u64 {
    mesh.status(node)
        .ok()
        .and_then(|s| s["counters"][name].as_u64())
        .unwrap_or(0)
}

/// Removes the ingress drop rule when dropped.
struct IngressDrop<'t>(&'t connectopus_tests::NetNs);

impl<'t> IngressDrop<'t> {
    fn add(ns: &'t connectopus_tests::NetNs) -> Result<Self> {
        ns.exec_ok("nft", &["add", "table", "ip6", "cxflood"])?;
        let guard = IngressDrop(ns);
        ns.exec_ok(
            "nft",
            &[
                "add",
                "chain",
                "ip6",
                "cxflood",
                "pre",
                "{",
                "type",
                "filter",
                "hook",
                "prerouting",
                "priority",
                "-300",
                ";",
                "}",
            ],
        )?;
        ns.exec_ok(
            "nft",
            &[
                "add",
                "rule",
                "ip6",
                "cxflood",
                "pre",
                "ip6",
                "saddr",
                ATTACK_ROUTE,
                "drop",
            ],
        )?;
        Ok(guard)
    }
}

impl Drop for IngressDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.exec("nft", &["delete", "table", "ip6", "cxflood"]);
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_condition(
    topo: &Topology,
    mesh: &Mesh<'_>,
    condition: Condition,
    flooder: &std::path::Path,
    listener: &str,
    rate: u32,
    seconds: u32,
    dst: IpAddr,
) -> Result<Sample> {
    let (left, mid) = (Layout::Line.nodes()[0], Layout::Line.nodes()[1]);
    let mid_pid = mesh.process(mid).context("mid is not running")?.pid();
    let limited0 = counter(mesh, mid, "dtls_hellos_rate_limited");
    let drops0 = counter(mesh, mid, "dtls_listener_kernel_drops");
    let _ingress = match condition {
        Condition::DroppedAtIngress => Some(IngressDrop::add(topo.ns(mid))?),
        _ => None,
    };
    let flood_s = LEAD_IN_S + f64::from(seconds) + 1.0;
    let flood: Option<ChildGuard> = match condition {
        Condition::Quiet => None,
        _ => {
            let program = flooder.display().to_string();
            let child = topo.ns(left).spawn(
                &program,
                &[
                    ATTACK_PREFIX,
                    listener,
                    "4000",
                    &rate.to_string(),
                    &format!("{flood_s}"),
                ],
            )?;
            std::thread::sleep(Duration::from_secs_f64(LEAD_IN_S));
            Some(child)
        }
    };
    let flooder_pid = flood.as_ref().map(ChildGuard::pid);
    let cpu0 = measure::cpu_seconds(mid_pid)?;
    let tcp = measure::tcp(topo.ns(left), dst, seconds, 1)?;
    let cpu1 = measure::cpu_seconds(mid_pid)?;
    let mut sample = Sample {
        mbps: tcp.bps / 1e6,
        mid_cpu_s: cpu1 - cpu0,
        pids: (mid_pid, flooder_pid),
        ..Sample::default()
    };
    if let Some(flood) = flood {
        flood.wait_timeout(Duration::from_secs_f64(flood_s + 30.0))?;
        let out = flood.stdout();
        let mut words = out.split_whitespace();
        let (Some("sent"), Some(sent), Some("cpu"), Some(cpu)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("the flooder's report: {out:?}");
        };
        sample.hellos_per_s = sent.parse::<f64>().context("sent")? / flood_s;
        sample.flooder_cpu_s = cpu.parse().context("cpu")?;
    }
    sample.rate_limited = counter(mesh, mid, "dtls_hellos_rate_limited").saturating_sub(limited0);
    sample.kernel_drops = counter(mesh, mid, "dtls_listener_kernel_drops").saturating_sub(drops0);
    Ok(sample)
}

fn write(
    options: &Options,
    machine: &Machine,
    rate: u32,
    seconds: u32,
    samples: &[Vec<Sample>],
    elapsed: f64,
) -> Result<()> {
    let median = |i: usize, f: fn(&Sample) -> f64| {
        Summary::of(&samples[i].iter().map(f).collect::<Vec<_>>())
    };
    let quiet = median(0, |s| s.mbps).map(|s| s.median).unwrap_or(f64::NAN);
    let mut md = String::new();
    md.push_str(&format!(
        "# Forwarding under a spoofed ClientHello flood\n\n\
         {} — {} repetition(s) of each condition, interleaved; one iperf3 TCP stream left → right \
         across mid (DTLS, PSK) for {seconds} s each; flood: `hello_flood` at {rate} hellos/s, \
         each from its own /64, from left's namespace to mid's listener. Load {} before, {} after; \
         {:.0} s. Median [min–max].\n\n",
        machine.summary(),
        options.reps,
        machine.load_before,
        machine.load_after,
        elapsed
    ));
    md.push_str(
        "| Condition | Mbit/s | % of quiet | Hellos/s sent | Flooder CPU (s) | mid CPU (s) | Rate-limited | Kernel drops |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut conditions = Vec::new();
    for (i, condition) in Condition::ALL.into_iter().enumerate() {
        let Some(mbps) = median(i, |s| s.mbps) else {
            continue;
        };
        let get = |f: fn(&Sample) -> f64| median(i, f).map(|s| s.median).unwrap_or(0.0);
        let hellos = get(|s| s.hellos_per_s);
        let flooder_cpu = get(|s| s.flooder_cpu_s);
        let mid_cpu = get(|s| s.mid_cpu_s);
        let limited = get(|s| s.rate_limited as f64);
        let drops = get(|s| s.kernel_drops as f64);
        let pct = 100.0 * mbps.median / quiet;
        md.push_str(&format!(
            "| {} | {:.0} [{:.0}–{:.0}] | {pct:.0} % | {hellos:.0} | {flooder_cpu:.2} | {mid_cpu:.2} | {limited:.0} | {drops:.0} |\n",
            condition.name(),
            mbps.median,
            mbps.min,
            mbps.max,
        ));
        conditions.push(json!({
            "condition": condition.key(),
            "mbps": mbps.to_json(),
            "percent_of_quiet": pct,
            "runs": samples[i].iter().map(|s| json!({
                "mbps": s.mbps,
                "hellos_per_s": s.hellos_per_s,
                "flooder_cpu_s": s.flooder_cpu_s,
                "mid_cpu_s": s.mid_cpu_s,
                "rate_limited": s.rate_limited,
                "kernel_drops": s.kernel_drops,
            })).collect::<Vec<Value>>(),
        }));
    }
    let report = json!({
        "machine": {
            "cpu": machine.cpu_model,
            "cores": machine.cores,
            "kernel": machine.kernel,
            "os": machine.os,
            "date": machine.date,
            "load_before": machine.load_before,
            "load_after": machine.load_after,
        },
        "reps": options.reps,
        "tcp_seconds": seconds,
        "hellos_per_second": rate,
        "conditions": conditions,
    });
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let md_path = options.out.join("flood.md");
    let json_path = options.out.join("flood.json");
    std::fs::write(&md_path, &md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    println!("{md}");
    eprintln!(
        "e2e --flood: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}
