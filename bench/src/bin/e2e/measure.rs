//! The measurements: iperf3 TCP and UDP, ping latency, and per-process CPU time and peak
//! memory from `/proc`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{ChildGuard, NetNs, check_addr, parse_ping};
use serde_json::Value;

use crate::stats::percentile;

/// The iperf3 server port.
pub const IPERF_PORT: u16 = 5201;

/// IPv6 plus UDP header bytes; an IPv4 packet has 20 fewer.
const V6_UDP_HEADERS: usize = 48;
const V4_UDP_HEADERS: usize = 28;

/// Starts an iperf3 server in `ns` (it serves test after test until dropped).
pub fn iperf_server(ns: &NetNs) -> Result<ChildGuard> {
    let port = IPERF_PORT.to_string();
    let server = ns.spawn("iperf3", &["-s", "--forceflush", "-p", port.as_str()])?;
    server.wait_for_output("Server listening", Duration::from_secs(5))?;
    Ok(server)
}

fn family_flag(dst: IpAddr) -> &'static str {
    if dst.is_ipv4() { "-4" } else { "-6" }
}

/// Runs an iperf3 client with `extra` arguments and returns its JSON report.
fn iperf_client(ns: &NetNs, dst: IpAddr, seconds: u32, extra: &[String]) -> Result<Value> {
    check_addr(dst)?;
    let mut args: Vec<String> = vec![
        family_flag(dst).into(),
        "-J".into(),
        "--connect-timeout".into(),
        "3000".into(),
        "-c".into(),
        dst.to_string(),
        "-p".into(),
        IPERF_PORT.to_string(),
        "-t".into(),
        seconds.to_string(),
    ];
    args.extend_from_slice(extra);
    let output = ns.exec_timeout(
        "iperf3",
        &args,
        Duration::from_secs(u64::from(seconds) + 20),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "iperf3 {} printed no JSON report: {}{}",
            args.join(" "),
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("iperf3 {}: {error}", args.join(" "));
    }
    Ok(value)
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(key)
            .with_context(|| format!("iperf3 report has no {}", path.join(".")))?;
    }
    cur.as_f64()
        .with_context(|| format!("iperf3 report's {} is not a number", path.join(".")))
}

/// What a TCP test measured.
#[derive(Clone, Copy, Debug)]
pub struct TcpResult {
    /// Receiver-side throughput, bits per second.
    pub bps: f64,
    /// Sender retransmissions.
    pub retransmits: f64,
}

/// A TCP test of `seconds` with `streams` parallel streams from `ns` to `dst`.
pub fn tcp(ns: &NetNs, dst: IpAddr, seconds: u32, streams: u32) -> Result<TcpResult> {
    let report = iperf_client(ns, dst, seconds, &["-P".into(), streams.to_string()])?;
    Ok(TcpResult {
        bps: num(&report, &["end", "sum_received", "bits_per_second"])?,
        retransmits: num(&report, &["end", "sum_sent", "retransmits"]).unwrap_or(0.0),
    })
}

/// What a UDP test measured.
#[derive(Clone, Copy, Debug)]
pub struct UdpResult {
    /// Datagrams that arrived, per second.
    pub rx_pps: f64,
    /// Datagrams sent, per second.
    pub tx_pps: f64,
    /// Percentage of sent datagrams that did not arrive.
    pub loss_pct: f64,
}

/// The iperf3 payload length that makes IP packets of `packet_size` bytes.
pub fn udp_payload(dst: IpAddr, packet_size: usize) -> usize {
    let headers = if dst.is_ipv4() {
        V4_UDP_HEADERS
    } else {
        V6_UDP_HEADERS
    };
    packet_size.saturating_sub(headers).max(16)
}

/// A UDP test: one stream, unlimited rate (`-b 0`), IP packets of `packet_size` bytes.
pub fn udp(ns: &NetNs, dst: IpAddr, seconds: u32, packet_size: usize) -> Result<UdpResult> {
    let len = udp_payload(dst, packet_size);
    let report = iperf_client(
        ns,
        dst,
        seconds,
        &[
            "-u".into(),
            "-b".into(),
            "0".into(),
            "-l".into(),
            len.to_string(),
        ],
    )?;
    parse_udp(&report)
}

/// Reads the UDP figures of an iperf3 client report: the receiver's counts come back to the
/// client in `end.sum_received` (`packets` is what the receiver expected from the sequence
/// numbers, `lost_packets` what never came).
pub fn parse_udp(report: &Value) -> Result<UdpResult> {
    let received = ["end", "sum_received"];
    let sent = ["end", "sum_sent"];
    let path = |base: &[&'static str; 2], key: &'static str| [base[0], base[1], key];
    let rx_seconds = num(report, &path(&received, "seconds"))?;
    let rx_expected = num(report, &path(&received, "packets"))?;
    let lost = num(report, &path(&received, "lost_packets"))?;
    let tx_packets = num(report, &path(&sent, "packets"))?;
    let tx_seconds = num(report, &path(&sent, "seconds"))?;
    ensure!(
        rx_seconds > 0.0 && tx_seconds > 0.0,
        "iperf3 UDP test of no duration"
    );
    let rx = (rx_expected - lost).max(0.0);
    Ok(UdpResult {
        rx_pps: rx / rx_seconds,
        tx_pps: tx_packets / tx_seconds,
        loss_pct: num(report, &path(&received, "lost_percent"))?,
    })
}

/// What a latency test measured.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median round trip, microseconds.
    pub p50_us: f64,
    /// 99th percentile round trip, microseconds.
    pub p99_us: f64,
    /// Percentage of echo requests without a reply.
    pub loss_pct: f64,
}

/// The first CPU this process may run on: where the pinned pinger runs (`ping_pinned`).
pub fn first_allowed_cpu() -> usize {
    // SAFETY: `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into `set`,
    // which is that large and initialised (zeroed); `CPU_ISSET` reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .unwrap_or(0)
    }
}

/// [`ping`] with the pinger pinned to `cpu` (`taskset`): the round trip without the
/// scheduler's choice of the CPU that wakes the pinger for each reply (on a host whose idle
/// CPUs are slow to wake, that choice alone can cost more than a tunnel's work).
pub fn ping_pinned(
    ns: &NetNs,
    dst: IpAddr,
    count: u32,
    interval: &str,
    cpu: usize,
) -> Result<Latency> {
    ping_with(ns, dst, count, interval, Some(cpu))
}

/// `count` pings of 56 bytes, `interval` seconds apart, from `ns` to `dst`.
pub fn ping(ns: &NetNs, dst: IpAddr, count: u32, interval: &str) -> Result<Latency> {
    ping_with(ns, dst, count, interval, None)
}

fn ping_with(
    ns: &NetNs,
    dst: IpAddr,
    count: u32,
    interval: &str,
    cpu: Option<usize>,
) -> Result<Latency> {
    check_addr(dst)?;
    let count_s = count.to_string();
    let dst_s = dst.to_string();
    let args = [
        family_flag(dst),
        "-n",
        "-c",
        count_s.as_str(),
        "-i",
        interval,
        "-W",
        "1",
        dst_s.as_str(),
    ];
    let interval_s: f64 = interval.parse().unwrap_or(0.2);
    let timeout = Duration::from_secs_f64(f64::from(count) * (interval_s + 0.001) + 15.0);
    let output = match cpu {
        None => ns.exec_timeout("ping", &args, timeout)?,
        Some(cpu) => {
            let cpu = cpu.to_string();
            let pinned: Vec<&str> = ["-c", cpu.as_str(), "ping"]
                .into_iter()
                .chain(args)
                .collect();
            ns.exec_timeout("taskset", &pinned, timeout)?
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let result = parse_ping(&text);
    ensure!(
        result.transmitted > 0 && !result.rtts_ms.is_empty(),
        "ping {dst} got no replies: {}{}",
        text.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let us: Vec<f64> = result.rtts_ms.iter().map(|ms| ms * 1000.0).collect();
    Ok(Latency {
        p50_us: percentile(&us, 50.0).unwrap_or(f64::NAN),
        p99_us: percentile(&us, 99.0).unwrap_or(f64::NAN),
        loss_pct: 100.0 * f64::from(result.transmitted - result.received.min(result.transmitted))
            / f64::from(result.transmitted),
    })
}

/// Pings `dst` once a quarter second until it answers (tunnels handshake on the first
/// packet), for at most `timeout`.
pub fn wait_reachable(ns: &NetNs, dst: IpAddr, timeout: Duration) -> Result<()> {
    let dst_s = dst.to_string();
    let args = [family_flag(dst), "-n", "-c", "1", "-W", "1", dst_s.as_str()];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let output = ns.exec("ping", &args)?;
        if output.status.success() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{dst} not reachable from {} within {timeout:?}: {}",
                ns.label(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU seconds used so far by process `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15 (1-based).
    let field = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("no field {n} in {path}"))
    };
    Ok((field(14)? + field(15)?) / clock_ticks())
}

/// Total CPU seconds of several processes.
pub fn total_cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Peak resident set size (`VmHWM`) of process `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmHWM:")
}

/// Resident set size now (`VmRSS`) of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_report() {
        let report: Value = serde_json::from_str(
            r#"{"end":{"sum_sent":{"seconds":1.0,"packets":2000,"lost_packets":0},
            "sum_received":{"seconds":2.0,"packets":1990,"lost_packets":990,"lost_percent":49.7}}}"#,
        )
        .unwrap_or_default();
        let r = parse_udp(&report).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.rx_pps, 500.0);
        assert_eq!(r.tx_pps, 2000.0);
        assert_eq!(r.loss_pct, 49.7);
        assert!(parse_udp(&serde_json::json!({"end": {}})).is_err());
    }

    #[test]
    fn payload_sizes() {
        let v6: IpAddr = "fd00:cafe::2".parse().unwrap_or(IpAddr::V4([0; 4].into()));
        let v4: IpAddr = "198.18.200.2".parse().unwrap_or(IpAddr::V4([0; 4].into()));
        assert_eq!(udp_payload(v6, 1400), 1352);
        assert_eq!(udp_payload(v4, 1400), 1372);
        assert_eq!(udp_payload(v6, 64), 16);
        assert_eq!(udp_payload(v4, 64), 36);
    }

    #[test]
    fn own_process_stats() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok_and(|s| s >= 0.0));
        assert!(peak_rss_kib(me).is_ok_and(|k| k > 0.0));
    }
}
