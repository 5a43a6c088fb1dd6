//! Wrappers around the network tools that return parsed results: ping, traceroute, iperf3,
//! dig and openssl.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::env::tool;
use crate::netns::NetNs;
use crate::plan::check_addr;
use crate::process::{ChildGuard, StdinMode, run_ok};
use crate::tempdir::TestDir;

// ---------------------------------------------------------------------------------------
// ping

/// An ICMPv6 error reported to ping, e.g. `From 2001:db8:1::2 icmp_seq=1 Packet too big:
/// mtu=1280`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// The router or host that sent it.
    pub from: Option<IpAddr>,
    /// The echo request it answers, if ping printed it.
    pub seq: Option<u32>,
    /// The message, e.g. `Packet too big: mtu=1280` or
    /// `Destination unreachable: Address unreachable`.
    pub message: String,
}

/// What `ping` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Round-trip times of the replies, in milliseconds.
    pub rtts_ms: Vec<f64>,
    /// ICMP errors received instead of replies.
    pub icmp_errors: Vec<IcmpError>,
    /// Local errors ping printed (`ping: sendmsg: Network is unreachable`...).
    pub local_errors: Vec<String>,
    /// Ping's exit code (0: replies, 1: none, 2: other error).
    pub exit_code: Option<i32>,
}

impl PingResult {
    /// Whether every request was answered (and at least one was sent).
    pub fn all_received(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }

    /// Whether an ICMP error whose message contains `pattern` (e.g. `"Packet too big"`,
    /// `"Destination unreachable"`) was seen.
    pub fn saw_icmp_error(&self, pattern: &str) -> bool {
        self.icmp_errors.iter().any(|e| e.message.contains(pattern))
    }
}

/// Pings `dst` from `ns` with `count` requests of `size` payload bytes, 0.2 s apart, waiting
/// 1 s for the last reply (so about `count * 0.2 + 1` seconds in all). `extra` goes before the destination (e.g.
/// `["-M", "do"]` to forbid fragmentation, `["-I", "lo"]`). A ping with no replies is a
/// result, not an error.
pub fn ping6(
    ns: &NetNs,
    dst: Ipv6Addr,
    count: u32,
    size: usize,
    extra: &[&str],
) -> Result<PingResult> {
    check_addr(dst.into())?;
    let (count_s, size_s, dst_s) = (count.max(1).to_string(), size.to_string(), dst.to_string());
    let mut args = vec![
        "-6", "-n", "-c", &count_s, "-s", &size_s, "-i", "0.2", "-W", "1",
    ];
    args.extend_from_slice(extra);
    args.push(&dst_s);
    let timeout = Duration::from_secs(u64::from(count / 5) + 10);
    let output = ns.exec_timeout("ping", &args, timeout)?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut result = parse_ping(&text);
    result.exit_code = output.status.code();
    if result.transmitted == 0 && result.local_errors.is_empty() {
        bail!("ping printed no statistics:\n{text}");
    }
    Ok(result)
}

/// Parses iputils ping output.
pub fn parse_ping(text: &str) -> PingResult {
    let mut result = PingResult::default();
    for line in text.lines() {
        let line = line.trim();
        if line.contains(" bytes from ") {
            if let Some(ms) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("time="))
                .and_then(|t| t.parse::<f64>().ok())
            {
                result.rtts_ms.push(ms);
            }
        } else if let Some(rest) = line.strip_prefix("From ") {
            let mut words = rest.splitn(2, ' ');
            let from = words.next().and_then(|w| w.parse().ok());
            let mut message = words.next().unwrap_or("").trim();
            let mut seq = None;
            if let Some(after) = message.strip_prefix("icmp_seq=") {
                let (n, tail) = after.split_once(' ').unwrap_or((after, ""));
                seq = n.parse().ok();
                message = tail.trim();
            }
            result.icmp_errors.push(IcmpError {
                from,
                seq,
                message: message.to_owned(),
            });
        } else if line.contains("packets transmitted") {
            // "5 packets transmitted, 5 received, +2 errors, 0% packet loss, time 804ms"
            for part in line.split(',') {
                let mut words = part.split_whitespace();
                let n = words.next().and_then(|w| w.parse().ok());
                match (n, words.next()) {
                    (Some(n), Some("packets")) => result.transmitted = n,
                    (Some(n), Some("received")) => result.received = n,
                    _ => {}
                }
            }
        } else if line.starts_with("ping:") {
            result.local_errors.push(line.to_owned());
        }
    }
    result
}

// ---------------------------------------------------------------------------------------
// traceroute

/// Traces the route from `ns` to `dst` with UDP probes (`traceroute -6 -n -q 1 -w 1 -m 8`),
/// one probe per hop, all hops probed in parallel. Returns one entry per hop up to the
/// destination (or the 8-hop limit): the responding address, or `None` for a silent hop.
pub fn traceroute6(ns: &NetNs, dst: Ipv6Addr) -> Result<Vec<Option<Ipv6Addr>>> {
    check_addr(dst.into())?;
    let dst_s = dst.to_string();
    let output = ns.exec_timeout(
        "traceroute",
        &["-6", "-n", "-q", "1", "-w", "1", "-m", "8", &dst_s],
        Duration::from_secs(15),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    let hops = parse_traceroute(&text);
    if hops.is_empty() {
        bail!(
            "traceroute printed no hops ({}):\n{text}\n{}",
            crate::process::describe(output.status),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(hops)
}

/// Parses `traceroute -n -q 1` output into hops.
pub fn parse_traceroute(text: &str) -> Vec<Option<Ipv6Addr>> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<u32>().ok()?;
            Some(words.next().and_then(|w| w.parse().ok()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// iperf3

/// Options of an iperf3 client run.
#[derive(Clone, Debug)]
pub struct IperfOptions {
    /// Test length in seconds (`-t`).
    pub seconds: u32,
    /// Parallel streams (`-P`).
    pub parallel: u32,
    /// Server sends, client receives (`-R`).
    pub reverse: bool,
    /// UDP at this target rate, e.g. `"100M"` (`-u -b`); TCP when `None`.
    pub udp_bitrate: Option<String>,
    /// Server port (`-p`).
    pub port: u16,
}

impl Default for IperfOptions {
    fn default() -> Self {
        IperfOptions {
            seconds: 2,
            parallel: 1,
            reverse: false,
            udp_bitrate: None,
            port: 5201,
        }
    }
}

/// What an iperf3 client measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IperfResult {
    /// Sender-side throughput, bits per second (TCP), or the UDP rate sent.
    pub sent_bps: f64,
    /// Receiver-side throughput, bits per second (TCP); for UDP the same as `sent_bps`.
    pub received_bps: f64,
    /// TCP retransmissions, if reported.
    pub retransmits: Option<u64>,
    /// UDP datagrams lost, percent (UDP only).
    pub lost_percent: Option<f64>,
    /// UDP datagrams the receiver saw out of order, summed over streams (UDP only).
    pub out_of_order: Option<u64>,
}

impl IperfResult {
    /// The receiver-side rate (what actually arrived), bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.received_bps
    }
}

/// Starts a one-off iperf3 server (`iperf3 -s -1`) in `ns` on `port`, bound to `bind` if
/// given, and waits until it listens.
pub fn iperf3_server(ns: &NetNs, bind: Option<IpAddr>, port: u16) -> Result<ChildGuard> {
    let port_s = port.to_string();
    let mut args = vec![
        "-s".to_owned(),
        "-1".into(),
        "--forceflush".into(),
        "-p".into(),
        port_s,
    ];
    if let Some(bind) = bind {
        check_addr(bind)?;
        args.extend(["-B".into(), bind.to_string()]);
    }
    let server = ns.spawn("iperf3", &args)?;
    server.wait_for_output("Server listening", Duration::from_secs(5))?;
    Ok(server)
}

/// Runs an iperf3 client (`-6 -J`) from `ns` to `dst` and parses its JSON report.
pub fn iperf3_client(ns: &NetNs, dst: Ipv6Addr, options: &IperfOptions) -> Result<IperfResult> {
    check_addr(dst.into())?;
    let mut args: Vec<String> = vec![
        "-6".into(),
        "-J".into(),
        "--connect-timeout".into(),
        "3000".into(),
        "-c".into(),
        dst.to_string(),
        "-p".into(),
        options.port.to_string(),
        "-t".into(),
        options.seconds.to_string(),
        "-P".into(),
        options.parallel.to_string(),
    ];
    if options.reverse {
        args.push("-R".into());
    }
    if let Some(rate) = &options.udp_bitrate {
        args.extend(["-u".into(), "-b".into(), rate.clone()]);
    }
    let timeout = Duration::from_secs(u64::from(options.seconds) + 10);
    let output = ns.exec_timeout("iperf3", &args, timeout)?;
    parse_iperf3(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "iperf3 client stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Parses iperf3's `-J` report.
pub fn parse_iperf3(json: &str) -> Result<IperfResult> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("iperf3 output is not JSON: {json}"))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    let end = value.get("end").context("iperf3 report has no `end`")?;
    let num = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_f64);
    let out_of_order = end
        .get("streams")
        .and_then(serde_json::Value::as_array)
        .filter(|streams| streams.iter().any(|s| s.get("udp").is_some()))
        .map(|streams| {
            streams
                .iter()
                .filter_map(|s| s["udp"]["out_of_order"].as_u64())
                .sum()
        });
    if let Some(sent) = end.get("sum_sent") {
        let received = end.get("sum_received").context("no sum_received")?;
        return Ok(IperfResult {
            sent_bps: num(sent, "bits_per_second").context("no sent bits_per_second")?,
            received_bps: num(received, "bits_per_second")
                .context("no received bits_per_second")?,
            retransmits: sent.get("retransmits").and_then(serde_json::Value::as_u64),
            lost_percent: None,
            out_of_order,
        });
    }
    let sum = end.get("sum").context("iperf3 report has no sum")?;
    let bps = num(sum, "bits_per_second").context("no bits_per_second")?;
    Ok(IperfResult {
        sent_bps: bps,
        received_bps: bps,
        retransmits: None,
        lost_percent: num(sum, "lost_percent"),
        out_of_order,
    })
}

// ---------------------------------------------------------------------------------------
// dig

/// How a dig query ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigOutcome {
    /// A response arrived (whatever its rcode).
    Answered,
    /// No response within the time limit.
    TimedOut,
    /// No server could be reached for another reason (e.g. `connection refused`).
    Unreachable(String),
}

/// One resource record of an answer section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner name, as printed (with trailing dot).
    pub name: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Record type (`AAAA`, `A`, `PTR`...).
    pub rtype: String,
    /// The data, e.g. the address.
    pub data: String,
}

/// What dig reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigResult {
    /// Whether a response arrived.
    pub outcome: DigOutcome,
    /// The response code (`NOERROR`, `NXDOMAIN`, `SERVFAIL`...), if answered.
    pub rcode: Option<String>,
    /// Header flags (`qr`, `aa`, `rd`, `ra`...).
    pub flags: Vec<String>,
    /// The answer section.
    pub answers: Vec<DnsRecord>,
}

impl DigResult {
    /// Whether the authoritative-answer flag is set.
    pub fn aa(&self) -> bool {
        self.flags.iter().any(|f| f == "aa")
    }

    /// Whether the query timed out.
    pub fn timed_out(&self) -> bool {
        self.outcome == DigOutcome::TimedOut
    }
}

/// Asks `server` port 53 for `name`/`rtype` from `ns`, over TCP if `tcp`: one try, 2 s.
pub fn dig(ns: &NetNs, server: IpAddr, name: &str, rtype: &str, tcp: bool) -> Result<DigResult> {
    dig_at(ns, server, 53, name, rtype, tcp)
}

/// [`dig`] with an explicit server port.
pub fn dig_at(
    ns: &NetNs,
    server: IpAddr,
    port: u16,
    name: &str,
    rtype: &str,
    tcp: bool,
) -> Result<DigResult> {
    check_addr(server)?;
    let at = format!("@{server}");
    let port_s = port.to_string();
    let mut args = vec![
        at.as_str(),
        "-p",
        &port_s,
        "+noall",
        "+answer",
        "+comments",
        "+tries=1",
        "+time=2",
    ];
    if tcp {
        args.push("+tcp");
    }
    args.extend([name, rtype]);
    let output = ns.exec_timeout("dig", &args, Duration::from_secs(10))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_dig(&text)
}

/// Parses `dig +noall +answer +comments` output.
pub fn parse_dig(text: &str) -> Result<DigResult> {
    let mut result = DigResult {
        outcome: DigOutcome::Answered,
        rcode: None,
        flags: Vec::new(),
        answers: Vec::new(),
    };
    let mut failure = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix(";; ->>HEADER<<-") {
            result.rcode = header
                .split(',')
                .find_map(|p| p.trim().strip_prefix("status:"))
                .map(|s| s.trim().to_owned());
        } else if let Some(flags) = line.strip_prefix(";; flags:") {
            let flags = flags.split(';').next().unwrap_or("");
            result.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.contains("timed out") && line.starts_with(";;") {
            failure.get_or_insert(DigOutcome::TimedOut);
        } else if let Some(err) = line.strip_prefix(";; communications error to ") {
            let reason = err.rsplit(": ").next().unwrap_or(err).to_owned();
            failure.get_or_insert(DigOutcome::Unreachable(reason));
        } else if line.starts_with(";; no servers could be reached") {
            failure.get_or_insert(DigOutcome::Unreachable(
                "no servers could be reached".into(),
            ));
        } else if !line.is_empty() && !line.starts_with(';') {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 5 {
                result.answers.push(DnsRecord {
                    name: words[0].to_owned(),
                    ttl: words[1].parse().unwrap_or(0),
                    rtype: words[3].to_owned(),
                    data: words[4..].join(" "),
                });
            }
        }
    }
    if result.rcode.is_none() {
        match failure {
            Some(outcome) => result.outcome = outcome,
            None => bail!("could not understand dig output:\n{text}"),
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// openssl

/// A subject alternative name for [`Pki::issue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    /// `IP:<addr>`.
    Ip(IpAddr),
    /// `DNS:<name>`.
    Dns(String),
}

/// A certificate and its private key, PEM files.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate.
    pub cert: PathBuf,
    /// The unencrypted private key.
    pub key: PathBuf,
}

/// A throwaway certificate authority (P-256, valid 2 days) in the test directory, made with
/// the openssl command line.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
    ca: CertPair,
}

fn openssl(args: &[&str]) -> Result<String> {
    let mut command = Command::new(tool("openssl")?);
    command.args(args);
    run_ok(command, Duration::from_secs(20))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}

impl Pki {
    /// Creates the CA in `<test dir>/pki`, or opens the one already there.
    pub fn new(dir: &TestDir) -> Result<Pki> {
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let ca = CertPair {
            cert: pki_dir.join("ca.pem"),
            key: pki_dir.join("ca.key"),
        };
        // One CA per test directory: a second Pki on the same directory issues from it.
        if ca.cert.is_file() && ca.key.is_file() {
            return Ok(Pki { dir: pki_dir, ca });
        }
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            path_str(&ca.key)?,
            "-out",
            path_str(&ca.cert)?,
            "-days",
            "2",
            "-subj",
            "/CN=connectopus test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .context("creating the test CA")?;
        Ok(Pki { dir: pki_dir, ca })
    }

    /// The CA certificate (trust anchor).
    pub fn ca_cert(&self) -> &Path {
        &self.ca.cert
    }

    /// Issues a certificate for `name` (its CN), valid for both server and client
    /// authentication, with the given subject alternative names.
    pub fn issue(&self, name: &str, sans: &[San]) -> Result<CertPair> {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut alt: Vec<String> = sans
            .iter()
            .map(|s| match s {
                San::Ip(ip) => format!("IP:{ip}"),
                San::Dns(d) => format!("DNS:{d}"),
            })
            .collect();
        if alt.is_empty() {
            alt.push(format!("DNS:{name}"));
        }
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
                alt.join(",")
            ),
        )?;
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            path_str(&pair.key)?,
            "-out",
            path_str(&csr)?,
            "-subj",
            &format!("/CN={name}"),
        ])
        .with_context(|| format!("creating the key and request of {name}"))?;
        let serial = self.dir.join("ca.srl");
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&self.ca.cert)?,
            "-CAkey",
            path_str(&self.ca.key)?,
            "-CAserial",
            path_str(&serial)?,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&pair.cert)?,
        ])
        .with_context(|| format!("signing the certificate of {name}"))?;
        Ok(pair)
    }
}

/// `[addr]:port` for IPv6, `addr:port` for IPv4.
fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// Starts `openssl s_server` in `ns` on `addr`:`port` for one connection (`-naccept 1`),
/// echoing every line back reversed (`-rev`), and waits until it accepts.
pub fn tls_server(ns: &NetNs, addr: IpAddr, port: u16, cert: &CertPair) -> Result<ChildGuard> {
    check_addr(addr)?;
    let accept = host_port(addr, port);
    let server = ns.spawn(
        "openssl",
        &[
            "s_server",
            "-accept",
            &accept,
            "-naccept",
            "1",
            "-rev",
            "-cert",
            path_str(&cert.cert)?,
            "-key",
            path_str(&cert.key)?,
        ],
    )?;
    server.wait_for_output("ACCEPT", Duration::from_secs(5))?;
    Ok(server)
}

/// What a TLS client exchange showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClientResult {
    /// The `Verify return code` s_client printed (0 is success).
    pub verify_code: Option<i32>,
    /// Whether the reversed line came back from the server.
    pub echoed: bool,
    /// s_client's stdout.
    pub output: String,
}

impl TlsClientResult {
    /// Verified (code 0) and echoed.
    pub fn ok(&self) -> bool {
        self.verify_code == Some(0) && self.echoed
    }
}

/// Connects from `ns` with `openssl s_client` to `addr`:`port`, verifying the server
/// certificate against `ca` and the IP address, sends `line` and waits (up to `timeout`) for
/// a [`tls_server`] to echo it back reversed.
pub fn tls_client(
    ns: &NetNs,
    addr: IpAddr,
    port: u16,
    ca: &Path,
    line: &str,
    timeout: Duration,
) -> Result<TlsClientResult> {
    check_addr(addr)?;
    let connect = host_port(addr, port);
    let ip = addr.to_string();
    let command = ns.command(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            path_str(ca)?,
            "-verify_return_error",
            "-verify_ip",
            &ip,
        ],
    )?;
    let mut client = ns.spawn_with(command, "s_client", StdinMode::Piped)?;
    // Wait for the handshake so the line is not lost if verification fails.
    let verify = client.wait_for_output("Verify return code:", timeout);
    let mut echoed = false;
    if verify.is_ok_and(|l| l.contains("code: 0 ")) {
        // A write error means s_client has gone; its output tells why.
        if client.write_stdin(format!("{line}\n").as_bytes()).is_ok() {
            let reversed: String = line.chars().rev().collect();
            echoed = client.wait_for_output(&reversed, timeout).is_ok();
        }
    }
    client.close_stdin();
    let _ = client.wait_timeout(Duration::from_secs(2));
    let output = client.stdout();
    let verify_code = output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Verify return code: ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    Ok(TlsClientResult {
        verify_code,
        echoed,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output() {
        let text = "PING 2001:db8:1::2(2001:db8:1::2) 56 data bytes
64 bytes from 2001:db8:1::2: icmp_seq=1 ttl=64 time=0.051 ms
From 2001:db8:1::1 icmp_seq=2 Packet too big: mtu=1280
From 2001:db8:1::1 icmp_seq=3 Destination unreachable: Address unreachable

--- 2001:db8:1::2 ping statistics ---
3 packets transmitted, 1 received, +2 errors, 66.6667% packet loss, time 401ms
rtt min/avg/max/mdev = 0.051/0.051/0.051/0.000 ms
";
        let r = parse_ping(text);
        assert_eq!((r.transmitted, r.received), (3, 1));
        assert_eq!(r.rtts_ms, vec![0.051]);
        assert!(r.saw_icmp_error("Packet too big"));
        assert!(r.saw_icmp_error("Destination unreachable"));
        assert_eq!(r.icmp_errors[0].seq, Some(2));
        assert_eq!(
            r.icmp_errors[0].from,
            Some("2001:db8:1::1".parse().expect("literal"))
        );
        assert!(!r.all_received());
    }

    #[test]
    fn traceroute_output() {
        let text = "traceroute to 2001:db8:2::3 (2001:db8:2::3), 8 hops max, 80 byte packets
 1  2001:db8:1::2  0.050 ms
 2  *
 3  2001:db8:2::3  0.040 ms !X
";
        let hops = parse_traceroute(text);
        assert_eq!(hops.len(), 3);
        assert_eq!(hops[1], None);
        assert_eq!(hops[2], Some("2001:db8:2::3".parse().expect("literal")));
    }

    #[test]
    fn dig_output() {
        let answered = ";; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1

;; ANSWER SECTION:
foo.mesh.\t\t60\tIN\tAAAA\tfd00:cafe::1
";
        let r = parse_dig(answered).expect("parses");
        assert_eq!(r.outcome, DigOutcome::Answered);
        assert_eq!(r.rcode.as_deref(), Some("NOERROR"));
        assert!(r.aa());
        assert_eq!(r.answers[0].data, "fd00:cafe::1");
        assert_eq!(r.answers[0].ttl, 60);

        let timeout = ";; communications error to 2001:db8:1::99#53: timed out
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @2001:db8:1::99 foo AAAA
;; no servers could be reached
";
        assert!(parse_dig(timeout).expect("parses").timed_out());
        let refused = ";; communications error to 2001:db8:1::2#53: connection refused
;; no servers could be reached";
        assert_eq!(
            parse_dig(refused).expect("parses").outcome,
            DigOutcome::Unreachable("connection refused".into())
        );
        assert!(parse_dig("garbage").is_err());
    }

    #[test]
    fn iperf_report() {
        let tcp = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":1.5e9,"retransmits":3},
            "sum_received":{"bits_per_second":1.4e9}}}"#;
        let r = parse_iperf3(tcp).expect("parses");
        assert_eq!(r.bits_per_second(), 1.4e9);
        assert_eq!(r.retransmits, Some(3));
        let err = parse_iperf3(r#"{"start":{},"end":{},"error":"unable to connect"}"#);
        assert!(
            err.expect_err("error")
                .to_string()
                .contains("unable to connect")
        );
    }
}
