//! `connectopus ping NODE` and `connectopus traceroute NODE`: ICMPv6 echo requests from this
//! host to a mesh address, through the node's TUN device and across the mesh.
//!
//! The socket is a raw ICMPv6 socket (root or CAP_NET_RAW), which also sees the Time Exceeded
//! errors traceroute needs; ping falls back to an unprivileged ICMPv6 ping socket
//! (`net.ipv4.ping_group_range`) when a raw one is refused. Either way the kernel fills in
//! the ICMPv6 checksum. Names are resolved with the node's name table (`status`), and hop
//! addresses are named with it too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::control::{self, ControlReply, ControlRequest, StatusReport};

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const DESTINATION_UNREACHABLE: u8 = 1;
const TIME_EXCEEDED: u8 = 3;
/// Length of the IPv6 header quoted in an ICMPv6 error.
const IPV6_HEADER: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;

/// Which node to ask for names, for `ping` and `traceroute`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeSocket {
    /// The local node whose name table resolves NODE and names the hops.
    #[arg(long)]
    pub id: Option<String>,
    /// Its control socket, instead of the one named by --id.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// `connectopus ping`.
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// A node name (`baz` or `baz.<domain>`) or a mesh address.
    pub node: String,
    #[command(flatten)]
    pub local: NodeSocket,
    /// How many echo requests to send.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub count: u16,
    /// Seconds between requests.
    #[arg(short = 'i', long, default_value_t = 1.0)]
    pub interval: f64,
    /// Seconds to wait for the last reply.
    #[arg(short = 'W', long, default_value_t = 2.0)]
    pub timeout: f64,
    /// Payload bytes per request.
    #[arg(short = 's', long, default_value_t = 56)]
    pub size: u16,
}

/// `connectopus traceroute`.
#[derive(Debug, Clone, clap::Args)]
pub struct TracerouteArgs {
    /// A node name (`baz` or `baz.<domain>`) or a mesh address.
    pub node: String,
    #[command(flatten)]
    pub local: NodeSocket,
    /// Largest hop limit tried.
    #[arg(short = 'm', long, default_value_t = 16)]
    pub max_hops: u8,
    /// Probes per hop.
    #[arg(short = 'q', long, default_value_t = 3)]
    pub probes: u8,
    /// Seconds to wait for each probe's answer.
    #[arg(short = 'w', long, default_value_t = 1.0)]
    pub wait: f64,
}

/// Mesh names and addresses as the local node knows them.
#[derive(Debug, Default)]
pub(crate) struct Names {
    domain: String,
    by_name: BTreeMap<String, Ipv6Addr>,
    by_address: BTreeMap<Ipv6Addr, String>,
}

impl Names {
    pub(crate) fn from_report(report: &StatusReport) -> Names {
        let mut names = Names {
            domain: report.domain.clone(),
            ..Names::default()
        };
        let pairs = report
            .nodes
            .iter()
            .map(|n| (&n.name, &n.address))
            .chain(report.names.iter().map(|n| (&n.name, &n.address)))
            .chain(std::iter::once((&report.name, &report.address)));
        for (name, address) in pairs {
            if let Ok(address) = address.parse::<Ipv6Addr>() {
                names.by_name.insert(name.clone(), address);
                names
                    .by_address
                    .entry(address)
                    .or_insert_with(|| name.clone());
            }
        }
        names
    }

    /// Resolves a name (with or without the mesh domain) or an address.
    pub(crate) fn resolve(&self, node: &str) -> Result<Ipv6Addr> {
        if let Ok(address) = node.parse::<Ipv6Addr>() {
            return Ok(address);
        }
        let name = node.trim_end_matches('.');
        let name = name
            .strip_suffix(&format!(".{}", self.domain))
            .filter(|_| !self.domain.is_empty())
            .unwrap_or(name);
        match self.by_name.get(name) {
            Some(address) => Ok(*address),
            None => bail!(
                "no node or name {node:?} in the mesh (known: {})",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn label(&self, address: Ipv6Addr) -> String {
        match self.by_address.get(&address) {
            Some(name) => format!("{name} ({address})"),
            None => address.to_string(),
        }
    }
}

/// Asks the local node for its names; an address needs no node, and then neither hop names.
fn names(node: &str, local: &NodeSocket, socket: Result<PathBuf>) -> Result<Names> {
    let path = match socket {
        Ok(path) => path,
        Err(_) if node.parse::<Ipv6Addr>().is_ok() && local.id.is_none() => {
            return Ok(Names::default());
        }
        Err(error) => return Err(error),
    };
    match control::request(&path, &ControlRequest::Status)? {
        ControlReply::Status(report) => Ok(Names::from_report(&report)),
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// An ICMPv6 socket: raw, or a ping socket when raw ones are refused.
#[derive(Debug)]
pub(crate) struct IcmpSocket {
    socket: UdpSocket,
    raw: bool,
    id: u16,
}

impl IcmpSocket {
    pub(crate) fn open(need_raw: bool) -> Result<IcmpSocket> {
        let raw = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6));
        let (socket, raw) = match raw {
            Ok(socket) => (socket, true),
            Err(error) if need_raw => {
                return Err(error)
                    .context("opening a raw ICMPv6 socket (traceroute needs root or CAP_NET_RAW)");
            }
            Err(raw_error) => {
                match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::ICMPV6)) {
                    Ok(socket) => (socket, false),
                    Err(error) => bail!(
                        "opening an ICMPv6 socket: raw: {raw_error}; ping socket: {error} \
                     (run as root, or allow your group in net.ipv4.ping_group_range)"
                    ),
                }
            }
        };
        // A datagram socket API over the ICMPv6 socket: the kernel keeps message boundaries
        // and gives the sender's address, which is all recv_from/send_to need.
        let socket = UdpSocket::from(socket);
        Ok(IcmpSocket {
            socket,
            raw,
            id: (std::process::id() & 0xffff) as u16,
        })
    }

    /// Throws away what arrived since the last run (a raw socket sees every ICMPv6 message
    /// of the host), so a run on a long-lived socket only reads its own answers.
    pub(crate) fn drain(&self) {
        if self.socket.set_nonblocking(true).is_err() {
            return;
        }
        let mut buf = [0u8; 2048];
        for _ in 0..100_000 {
            if self.socket.recv_from(&mut buf).is_err() {
                break;
            }
        }
        let _ = self.socket.set_nonblocking(false);
    }

    fn send_echo(&self, to: Ipv6Addr, seq: u16, size: u16) -> Result<()> {
        let mut packet = vec![0u8; 8 + usize::from(size)];
        packet[0] = ECHO_REQUEST;
        packet[4..6].copy_from_slice(&self.id.to_be_bytes());
        packet[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, byte) in packet[8..].iter_mut().enumerate() {
            *byte = i as u8;
        }
        self.socket
            .send_to(&packet, SocketAddr::new(IpAddr::V6(to), 0))
            .with_context(|| format!("sending an echo request to {to}"))?;
        Ok(())
    }

    /// Waits until `deadline` for an answer to one of our requests.
    fn receive(&self, deadline: Instant) -> Result<Option<Answer>> {
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving ICMPv6"),
            };
            let IpAddr::V6(from) = from.ip() else {
                continue;
            };
            if let Some(answer) = self.parse(&buf[..n], from) {
                return Ok(Some(answer));
            }
        }
    }

    /// Recognises an echo reply to us, or an error quoting one of our requests.
    fn parse(&self, message: &[u8], from: Ipv6Addr) -> Option<Answer> {
        let kind = *message.first()?;
        let id_seq = |m: &[u8]| -> Option<(u16, u16)> {
            Some((
                u16::from_be_bytes([*m.get(4)?, *m.get(5)?]),
                u16::from_be_bytes([*m.get(6)?, *m.get(7)?]),
            ))
        };
        match kind {
            ECHO_REPLY => {
                let (id, seq) = id_seq(message)?;
                // A ping socket only sees its own replies (the kernel chose the id).
                (!self.raw || id == self.id).then_some(Answer {
                    from,
                    seq,
                    kind: AnswerKind::Reply,
                    len: message.len(),
                })
            }
            TIME_EXCEEDED | DESTINATION_UNREACHABLE => {
                let quoted = message.get(8..)?;
                if *quoted.get(6)? != NEXT_HEADER_ICMPV6 {
                    return None;
                }
                let echo = quoted.get(IPV6_HEADER..)?;
                let (id, seq) = id_seq(echo)?;
                (*echo.first()? == ECHO_REQUEST && id == self.id).then_some(Answer {
                    from,
                    seq,
                    kind: if kind == TIME_EXCEEDED {
                        AnswerKind::TimeExceeded
                    } else {
                        AnswerKind::Unreachable(*message.get(1)?)
                    },
                    len: message.len(),
                })
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerKind {
    Reply,
    TimeExceeded,
    Unreachable(u8),
}

#[derive(Debug, Clone, Copy)]
struct Answer {
    from: Ipv6Addr,
    seq: u16,
    kind: AnswerKind,
    len: usize,
}

/// Longest interval or wait the commands take.
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn seconds(value: f64, what: &str) -> Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if d <= MAX_WAIT => Ok(d),
        _ => bail!("{what} must be between 0 and 3600 seconds"),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `connectopus ping`: exits 0 when at least one reply came back.
///
/// # Errors
/// NODE does not resolve, or the socket cannot be opened.
pub fn ping(args: &PingArgs, socket: Result<PathBuf>) -> Result<ExitCode> {
    let names = names(&args.node, &args.local, socket)?;
    let icmp = IcmpSocket::open(false)?;
    let ok = run_ping(args, &names, &icmp, &mut std::io::stdout().lock())?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Pings as `ping` does, writing its lines to `out`; true when a reply came back.
pub(crate) fn run_ping(
    args: &PingArgs,
    names: &Names,
    icmp: &IcmpSocket,
    out: &mut dyn std::io::Write,
) -> Result<bool> {
    let target = names.resolve(&args.node)?;
    let interval = seconds(args.interval, "--interval")?;
    let timeout = seconds(args.timeout, "--timeout")?;
    writeln!(
        out,
        "PING {} through the mesh: {} data bytes",
        names.label(target),
        args.size
    )?;
    let mut sent: BTreeMap<u16, Instant> = BTreeMap::new();
    let mut rtts: Vec<Duration> = Vec::new();
    let start = Instant::now();
    for seq in 0..args.count {
        if let Err(error) = icmp.send_echo(target, seq, args.size) {
            writeln!(out, "icmp_seq={seq}: {error:#}")?;
        } else {
            sent.insert(seq, Instant::now());
        }
        let last = seq + 1 == args.count;
        let until = if last {
            Instant::now() + timeout
        } else {
            start + interval * u32::from(seq + 1)
        };
        while let Some(answer) = icmp.receive(until)? {
            let Some(at) = sent.get(&answer.seq) else {
                continue;
            };
            match answer.kind {
                AnswerKind::Reply if answer.from == target => {
                    let rtt = at.elapsed();
                    rtts.push(rtt);
                    sent.remove(&answer.seq);
                    writeln!(
                        out,
                        "{} bytes from {}: icmp_seq={} time={:.3} ms",
                        answer.len,
                        names.label(answer.from),
                        answer.seq,
                        millis(rtt)
                    )?;
                }
                AnswerKind::Reply => {}
                AnswerKind::TimeExceeded => writeln!(
                    out,
                    "from {}: icmp_seq={} hop limit exceeded",
                    names.label(answer.from),
                    answer.seq
                )?,
                AnswerKind::Unreachable(code) => writeln!(
                    out,
                    "from {}: icmp_seq={} destination unreachable (code {code})",
                    names.label(answer.from),
                    answer.seq
                )?,
            }
            if last && sent.is_empty() {
                break;
            }
        }
    }
    let transmitted = usize::from(args.count);
    let received = rtts.len();
    let loss = if transmitted == 0 {
        0.0
    } else {
        100.0 * (transmitted - received) as f64 / transmitted as f64
    };
    writeln!(out, "--- {} ping statistics ---", args.node)?;
    writeln!(
        out,
        "{transmitted} packets transmitted, {received} received, {loss:.0}% packet loss"
    )?;
    if !rtts.is_empty() {
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / received as u32;
        writeln!(
            out,
            "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            millis(min),
            millis(avg),
            millis(max)
        )?;
    }
    Ok(received > 0)
}

/// Runs `connectopus traceroute`: one line per hop limit, with the node that answered and
/// each probe's round-trip time; exits 0 when the destination answered.
///
/// # Errors
/// NODE does not resolve, or the raw socket cannot be opened.
pub fn traceroute(args: &TracerouteArgs, socket: Result<PathBuf>) -> Result<ExitCode> {
    let names = names(&args.node, &args.local, socket)?;
    let icmp = IcmpSocket::open(true)?;
    let ok = run_traceroute(args, &names, &icmp, &mut std::io::stdout().lock())?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Traces as `traceroute` does (on a raw socket), writing its lines to `out`; true when the
/// destination answered.
pub(crate) fn run_traceroute(
    args: &TracerouteArgs,
    names: &Names,
    icmp: &IcmpSocket,
    out: &mut dyn std::io::Write,
) -> Result<bool> {
    let target = names.resolve(&args.node)?;
    let wait = seconds(args.wait, "--wait")?;
    if !icmp.raw {
        bail!("traceroute needs a raw ICMPv6 socket (root or CAP_NET_RAW)");
    }
    let socket2 = socket2::SockRef::from(&icmp.socket);
    writeln!(
        out,
        "traceroute to {} through the mesh, {} hops max",
        names.label(target),
        args.max_hops
    )?;
    let mut seq: u16 = 0;
    for hop in 1..=args.max_hops {
        socket2
            .set_unicast_hops_v6(u32::from(hop))
            .context("setting the hop limit")?;
        let mut line = format!("{hop:>2}");
        let mut who: Option<Ipv6Addr> = None;
        let mut done = false;
        for _ in 0..args.probes {
            seq = seq.wrapping_add(1);
            let sent_at = Instant::now();
            icmp.send_echo(target, seq, 24)?;
            let deadline = sent_at + wait;
            let mut answered = false;
            while let Some(answer) = icmp.receive(deadline)? {
                if answer.seq != seq {
                    continue;
                }
                if who != Some(answer.from) {
                    line.push_str(&format!("  {}", names.label(answer.from)));
                    who = Some(answer.from);
                }
                line.push_str(&format!("  {:.3} ms", millis(sent_at.elapsed())));
                match answer.kind {
                    AnswerKind::Reply => done = true,
                    AnswerKind::Unreachable(code) => {
                        line.push_str(&format!(" !U{code}"));
                        done = true;
                    }
                    AnswerKind::TimeExceeded => {}
                }
                answered = true;
                break;
            }
            if !answered {
                line.push_str("  *");
            }
        }
        writeln!(out, "{line}")?;
        if done {
            // The hop limit is the socket's: leave it as a later ping expects.
            let _ = socket2.set_unicast_hops_v6(64);
            return Ok(who == Some(target));
        }
    }
    let _ = socket2.set_unicast_hops_v6(64);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> IcmpSocket {
        IcmpSocket {
            socket: UdpSocket::bind("[::1]:0").unwrap(),
            raw: true,
            id: 0x1234,
        }
    }

    #[test]
    fn replies_and_quoted_requests_are_matched_by_id() {
        let s = socket();
        let from: Ipv6Addr = "fd00::2".parse().unwrap();
        let reply = [ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 7, 1, 2];
        let answer = s.parse(&reply, from).unwrap();
        assert_eq!((answer.seq, answer.kind), (7, AnswerKind::Reply));
        let other = [ECHO_REPLY, 0, 0, 0, 0x12, 0x35, 0, 7];
        assert!(s.parse(&other, from).is_none());
        let mut error = vec![TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0];
        let mut header = [0u8; IPV6_HEADER];
        header[0] = 0x60;
        header[6] = NEXT_HEADER_ICMPV6;
        error.extend_from_slice(&header);
        error.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 9]);
        let answer = s.parse(&error, from).unwrap();
        assert_eq!((answer.seq, answer.kind), (9, AnswerKind::TimeExceeded));
        // Truncated quotes are ignored, not a panic.
        for n in 0..error.len() - 1 {
            assert!(s.parse(&error[..n], from).is_none());
        }
    }

    #[test]
    fn names_resolve_with_or_without_the_domain() {
        let mut names = Names {
            domain: "mesh.test".into(),
            ..Names::default()
        };
        let baz: Ipv6Addr = "fd00::3".parse().unwrap();
        names.by_name.insert("baz".into(), baz);
        names.by_address.insert(baz, "baz".into());
        assert_eq!(names.resolve("baz").unwrap(), baz);
        assert_eq!(names.resolve("baz.mesh.test.").unwrap(), baz);
        assert_eq!(
            names.resolve("fd00::9").unwrap(),
            "fd00::9".parse::<Ipv6Addr>().unwrap()
        );
        let error = names.resolve("qux").unwrap_err().to_string();
        assert!(error.contains("known: baz"), "{error}");
        assert_eq!(names.label(baz), "baz (fd00::3)");
    }
}
