//! End-to-end tests: a real `dig` against a server on `[::1]` and a random port.
//!
//! `dig` comes from the Debian package `dnsutils`, which `cargo xtask test` installs; the
//! tests fail (rather than skip) without it so CI cannot pass vacuously.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use connectopus_dns::{DnsServer, ZoneConfig};

const DOMAIN: &str = "connectopus.test";

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn zone() -> ZoneConfig {
    ZoneConfig::new(DOMAIN, ip("fd00::"), 64, "node1", ip("fd00::1"))
}

/// Binds UDP and TCP on the same random port of `[::1]` (dig uses one port for both).
fn sockets() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("::1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on [::1]");
}

/// The flood test saturates both cores; it runs alone (write lock) while the others share
/// (read lock), so their timing assertions and dig timeouts are not starved.
static HEAVY: RwLock<()> = RwLock::new(());

fn light() -> RwLockReadGuard<'static, ()> {
    HEAVY.read().unwrap_or_else(|e| e.into_inner())
}

fn start_with(zone: ZoneConfig) -> (DnsServer, u16) {
    let (udp, tcp) = sockets();
    let server = DnsServer::start(udp, tcp, zone).unwrap();
    let port = server.udp_addr().port();
    server.update([
        ("bar", ip("fd00::2")),
        ("foo-tun", ip("fd00::3")),
        ("baz-ns", ip("fd00::4")),
    ]);
    (server, port)
}

fn start() -> (DnsServer, u16) {
    start_with(zone())
}

/// One parsed `dig` answer.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<Vec<String>>,
    authority: Vec<Vec<String>>,
    raw: String,
}

impl Dig {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The rdata (last field) of the answers of `rtype`.
    fn data(&self, rtype: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|r| r.get(3).map(String::as_str) == Some(rtype))
            .map(|r| r[4..].join(" "))
            .collect()
    }

    fn soa_serial(&self) -> u32 {
        let rec = self
            .answers
            .iter()
            .chain(&self.authority)
            .find(|r| r.get(3).map(String::as_str) == Some("SOA"))
            .unwrap_or_else(|| panic!("no SOA in\n{}", self.raw));
        rec[6].parse().unwrap()
    }
}

fn dig(port: u16, args: &[&str]) -> Dig {
    let output = match Command::new("dig")
        .args(["-p", &port.to_string(), "@::1", "+time=2", "+tries=3"])
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!(
                "`dig` not found: install the Debian package `dnsutils` (apt-get install -y dnsutils)"
            )
        }
        Err(e) => panic!("running dig: {e}"),
    };
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "dig {args:?} failed:\n{raw}");
    let mut dig = Dig {
        status: String::new(),
        flags: Vec::new(),
        answers: Vec::new(),
        authority: Vec::new(),
        raw: raw.clone(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap().to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap();
            dig.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.trim().is_empty() || line.starts_with(';') {
            section = "";
        } else {
            let fields = line.split_whitespace().map(str::to_string).collect();
            match section {
                "answer" => dig.answers.push(fields),
                "authority" => dig.authority.push(fields),
                _ => {}
            }
        }
    }
    assert!(!dig.status.is_empty(), "no status in dig output:\n{raw}");
    dig
}

#[test]
fn aaaa_over_udp_and_tcp_is_authoritative_and_case_insensitive() {
    let _shared = light();
    let (_server, port) = start();
    for transport in ["+notcp", "+tcp"] {
        for name in ["bar.connectopus.test", "BaR.CoNNecTopus.TEST"] {
            let d = dig(port, &[transport, name, "AAAA"]);
            assert_eq!(d.status, "NOERROR", "{}", d.raw);
            assert!(d.has_flag("aa"), "{}", d.raw);
            assert!(d.has_flag("qr"));
            assert!(!d.has_flag("ra"), "no recursion offered:\n{}", d.raw);
            assert_eq!(d.data("AAAA"), ["fd00::2"], "{}", d.raw);
            assert_eq!(d.answers[0][1], "10", "short TTL:\n{}", d.raw);
        }
    }
    let d = dig(port, &["foo-tun.connectopus.test.", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::3"]);
    // The node's own name, never passed to update.
    let d = dig(port, &["node1.connectopus.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::1"]);
}

#[test]
fn reverse_lookup_gives_the_mesh_name() {
    let _shared = light();
    let (_server, port) = start();
    for transport in ["+notcp", "+tcp"] {
        let d = dig(port, &[transport, "-x", "fd00::2"]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(d.has_flag("aa"));
        assert_eq!(d.data("PTR"), ["bar.connectopus.test."], "{}", d.raw);
    }
    let d = dig(port, &["-x", "fd00::1"]);
    assert_eq!(d.data("PTR"), ["node1.connectopus.test."]);
    let d = dig(port, &["-x", "fd00::99"]);
    assert_eq!(d.status, "NXDOMAIN");
    let d = dig(port, &["-x", "2001:db8::1"]);
    assert_eq!(d.status, "REFUSED", "outside the mesh subnet");
}

#[test]
fn nxdomain_nodata_and_refused() {
    let _shared = light();
    let (_server, port) = start();
    let d = dig(port, &["nope.connectopus.test", "AAAA"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.has_flag("aa"));
    assert!(d.answers.is_empty());
    assert_eq!(d.authority[0][3], "SOA", "{}", d.raw);

    for qtype in ["A", "TXT"] {
        let d = dig(port, &["bar.connectopus.test", qtype]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(d.has_flag("aa"));
        assert!(d.answers.is_empty(), "{}", d.raw);
        assert_eq!(
            d.authority[0][3], "SOA",
            "NODATA carries the SOA:\n{}",
            d.raw
        );
    }

    for transport in ["+notcp", "+tcp"] {
        let d = dig(port, &[transport, "example.com", "A"]);
        assert_eq!(d.status, "REFUSED", "{}", d.raw);
        assert!(!d.has_flag("ra"));
        assert!(!d.has_flag("aa"));
    }
    // Recursion desired (dig's default) or not, RA is never set.
    let d = dig(port, &["+norecurse", "bar.connectopus.test", "AAAA"]);
    assert!(!d.has_flag("ra") && !d.has_flag("rd"));
}

#[test]
fn soa_ns_serial_and_live_updates() {
    let _shared = light();
    let (server, port) = start();
    let d = dig(port, &["connectopus.test", "SOA"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.has_flag("aa"));
    let serial = d.soa_serial();
    assert_eq!(serial, server.serial());
    assert_eq!(d.answers[0][4], "node1.connectopus.test.");

    let d = dig(port, &["connectopus.test", "NS"]);
    assert_eq!(d.data("NS"), ["node1.connectopus.test."]);
    assert!(
        d.raw
            .contains("node1.connectopus.test.\t10\tIN\tAAAA\tfd00::1"),
        "glue:\n{}",
        d.raw
    );

    let d = dig(port, &["0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "SOA"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.soa_serial(), serial);

    // Identical set (order and case differ): serial unchanged.
    let same = server.update([
        ("baz-ns", ip("fd00::4")),
        ("BAR", ip("fd00::2")),
        ("foo-tun", ip("fd00::3")),
    ]);
    assert!(!same.changed);
    assert_eq!(dig(port, &["connectopus.test", "SOA"]).soa_serial(), serial);

    // foo-tun withdrawn, new-node added.
    let out = server.update([
        ("bar", ip("fd00::2")),
        ("baz-ns", ip("fd00::4")),
        ("new-node", ip("fd00::5")),
    ]);
    assert!(out.changed);
    let d = dig(port, &["connectopus.test", "SOA"]);
    assert_eq!(d.soa_serial(), serial.wrapping_add(1));

    let d = dig(port, &["foo-tun.connectopus.test", "AAAA"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    let d = dig(port, &["+tcp", "-x", "fd00::3"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    let d = dig(port, &["new-node.connectopus.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::5"]);
    let d = dig(port, &["+tcp", "-x", "fd00::5"]);
    assert_eq!(d.data("PTR"), ["new-node.connectopus.test."]);

    // Updating from another thread through the table handle.
    let names = server.names();
    std::thread::spawn(move || names.update([("only", ip("fd00::6"))]))
        .join()
        .unwrap();
    assert_eq!(
        dig(port, &["only.connectopus.test", "AAAA"]).data("AAAA"),
        ["fd00::6"]
    );
    assert_eq!(
        dig(port, &["bar.connectopus.test", "AAAA"]).status,
        "NXDOMAIN"
    );
    assert_eq!(
        dig(port, &["connectopus.test", "SOA"]).soa_serial(),
        serial.wrapping_add(2)
    );
}

/// A tiny deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// A valid AAAA query for `bar.connectopus.test.`, id 0x4242.
fn raw_query() -> Vec<u8> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["bar", "connectopus", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]);
    q
}

#[test]
fn garbage_does_not_hurt() {
    let _shared = light();
    let (server, port) = start();
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);

    // UDP: random datagrams of every size up to 1500, truncated headers, truncated
    // questions, a response (QR set), and a maximum-size datagram.
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    for len in 0..1500 {
        sock.send_to(&rng.bytes(len), addr).unwrap();
    }
    let query = raw_query();
    for len in 0..query.len() {
        sock.send_to(&query[..len], addr).unwrap();
    }
    let mut response = query.clone();
    response[2] |= 0x80;
    sock.send_to(&response, addr).unwrap();
    sock.send_to(&rng.bytes(65000), addr).unwrap();

    // A truncated question gets FORMERR with its id.
    // (Retried like a real client: the burst above can overflow the server's socket
    // buffer, and the kernel then drops this datagram too.)
    let quiet = UdpSocket::bind("[::1]:0").unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = (0..10)
        .find_map(|_| {
            quiet.send_to(&query[..20], addr).unwrap();
            quiet.recv_from(&mut buf).ok().map(|(n, _)| n)
        })
        .expect("an answer to the truncated question");
    assert_eq!(n, 12);
    assert_eq!(&buf[..2], &[0x42, 0x42]);
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");

    // TCP: a maximal length prefix with garbage behind it; a zero length; a short one;
    // pure garbage; a half-sent message then close; a prefix and nothing more.
    let garbage_streams: Vec<Vec<u8>> = vec![
        [vec![0xff, 0xff], rng.bytes(65535)].concat(),
        vec![0, 0],
        [vec![0, 5], rng.bytes(5)].concat(),
        rng.bytes(10_000),
        [vec![0, 200], rng.bytes(50)].concat(),
        vec![0x10],
    ];
    for stream in &garbage_streams {
        let mut conn = TcpStream::connect(addr).unwrap();
        // The server may close before taking everything; that is the point.
        let _ = conn.write_all(stream);
        drop(conn);
    }
    // A valid length with garbage content gets an answer (FORMERR or other) and the
    // connection stays usable for a real query.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut junk = vec![0x01, 0x02, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    junk.extend(rng.bytes(40));
    tcp_exchange(&mut conn, &junk);
    let answer = tcp_exchange(&mut conn, &query);
    assert_eq!(&answer[..2], &[0x42, 0x42]);
    assert_eq!(answer[3] & 0x0f, 0, "NOERROR");

    // Still answering correctly, both transports.
    for transport in ["+notcp", "+tcp"] {
        let d = dig(port, &[transport, "bar.connectopus.test", "AAAA"]);
        assert_eq!(d.data("AAAA"), ["fd00::2"], "{}", d.raw);
    }
    let stats = server.stats();
    assert!(stats.dropped >= 12, "{stats:?}");
    assert!(stats.errors >= 1, "{stats:?}");
    assert!(stats.tcp_bad_length >= 3, "{stats:?}");
}

/// Sends one length-prefixed message and reads one length-prefixed reply.
fn tcp_exchange(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    conn.write_all(&(msg.len() as u16).to_be_bytes()).unwrap();
    conn.write_all(msg).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut reply).unwrap();
    reply
}

/// Whether the server closed `conn` within `within`.
fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    }
}

#[test]
fn tcp_connections_are_capped_and_idle_ones_time_out() {
    let _shared = light();
    let mut config = zone();
    config.tcp_idle_timeout = Duration::from_secs(2);
    let (server, port) = start_with(config);
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    assert_eq!(config_default_cap(), 64);

    // Fill every slot with a working connection.
    let mut held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            tcp_exchange(&mut c, &raw_query());
            c
        })
        .collect();
    // The 65th is accepted by the kernel and closed by the server at once.
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(closed_by_server(&mut extra, Duration::from_secs(1)));
    assert_eq!(server.stats().tcp_rejected, 1);
    // UDP is unaffected.
    assert_eq!(
        dig(port, &["bar.connectopus.test", "AAAA"]).data("AAAA"),
        ["fd00::2"]
    );

    // Freeing a slot lets a new client in.
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let d = dig(port, &["+tcp", "bar.connectopus.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::2"], "{}", d.raw);

    // Idle connections are closed after the timeout (2 s here), freeing all slots.
    let start = Instant::now();
    assert!(closed_by_server(&mut held[0], Duration::from_secs(5)));
    assert!(start.elapsed() < Duration::from_secs(4));
    // A slow-loris that never finishes its message is closed too.
    let mut slow = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(&[0, 40, 1, 2, 3]).unwrap();
    assert!(closed_by_server(&mut slow, Duration::from_secs(5)));
}

fn config_default_cap() -> usize {
    zone().tcp_max_connections
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn udp_flood_does_not_grow_memory() {
    let _alone = HEAVY.write().unwrap_or_else(|e| e.into_inner());
    let (server, port) = start();
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let query = raw_query();
    // Warm up, then flood for a bounded count and time from 4 sockets that never read
    // their answers.
    assert_eq!(
        dig(port, &["bar.connectopus.test", "AAAA"]).data("AAAA"),
        ["fd00::2"]
    );
    let before = rss_kib();
    let deadline = Instant::now() + Duration::from_secs(3);
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let query = query.clone();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("[::1]:0").unwrap();
                let mut sent = 0u64;
                while sent < 200_000 && Instant::now() < deadline {
                    if sock.send_to(&query, addr).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    // TCP is served during the flood: the UDP loop yields to other tasks.
    let d = dig(port, &["+tcp", "bar.connectopus.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::2"], "{}", d.raw);
    let sent: u64 = senders.into_iter().map(|h| h.join().unwrap()).sum();
    // Right after the flood (the socket buffer may still hold some), UDP answers too.
    let d = dig(port, &["bar.connectopus.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["fd00::2"], "{}", d.raw);
    let grown = rss_kib().saturating_sub(before);
    let stats = server.stats();
    eprintln!(
        "flood: sent {sent}, server saw {} UDP queries, RSS grew {grown} KiB",
        stats.udp_queries
    );
    assert!(stats.udp_queries > 1000, "{stats:?}");
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB during the flood");
}

#[test]
fn stop_releases_the_sockets() {
    let _shared = light();
    let (server, port) = start();
    assert_eq!(
        dig(port, &["bar.connectopus.test", "AAAA"]).data("AAAA"),
        ["fd00::2"]
    );
    let mut open = TcpStream::connect(("::1", port)).unwrap();
    server.stop().unwrap();
    // The port is free again for both protocols, and open connections are closed. (Other
    // tests spawn dig concurrently; a child between fork and exec briefly holds copies of
    // every descriptor, so allow a moment.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let rebind = || UdpSocket::bind(("::1", port)).and_then(|_| TcpListener::bind(("::1", port)));
    while let Err(error) = rebind() {
        assert!(
            Instant::now() < deadline,
            "port {port} still in use: {error}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed_by_server(&mut open, Duration::from_secs(1)));
}

#[test]
fn invalid_zone_configs_are_rejected() {
    let _shared = light();
    let (udp, tcp) = sockets();
    let mut config = zone();
    config.domain = "bad domain".into();
    assert!(DnsServer::start(udp, tcp, config).is_err());
}

#[test]
fn start_and_stop_from_inside_another_runtime() {
    let _shared = light();
    // The node may call these from async code; the crate's own runtime lives on its own
    // thread, so neither nests runtimes nor drops one in an async context.
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    outer.block_on(async {
        let (server, port) = start();
        let d = dig(port, &["bar.connectopus.test", "AAAA"]);
        assert_eq!(d.data("AAAA"), ["fd00::2"]);
        server.stop().unwrap();
    });
}
