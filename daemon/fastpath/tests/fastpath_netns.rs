//! Root test, end to end without the daemon: two namespaces joined by a veth, each with a TUN
//! (whose fd this test holds, as the daemon would) and the fast path attached (node A's
//! programs loaded by a helper process as the node does, node B's in this process), the maps
//! filled through [`FastpathMaps`]. Ping and a TCP transfer cross from TUN to TUN through the
//! programs only (the link counters prove it, and nothing reaches the TUN fds); removing the
//! route entry sends the traffic back to userspace (it arrives on the TUN fd, counted as
//! `eg_miss`).
//!
//! Topology:
//! - A: TUN `fptun` fd00:f1::1/128, MTU 1452, route fd00:f2::/64 into it; veth `fpul`
//!   fd00:fc::1/64, MTU 1500, forwarding on; udp link port 4600.
//! - B: the mirror image (fd00:f2::1, fd00:fc::2).
//!
//! The transit test puts a middle namespace M between them (underlays fd00:fd:1::/64 and
//! fd00:fd:2::/64), which has no TUN: its ingress program forwards link to link.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connectopus_fastpath::{
    Fastpath, LinkCounter, LinkEndpoints, Reason, RouteTarget, TunCounters,
};
use support::NetNs;

const TUN: &str = "fptun";
const UNDERLAY: &str = "fpul";
const PORT: u16 = 4600;
const SLOT: u32 = 1;
/// Bytes of the TCP transfer.
const TRANSFER: usize = 32 * 1024 * 1024;

struct Node {
    netns: NetNs,
    tun: File,
    fastpath: Fastpath,
    /// The udp link to the peer.
    link: LinkEndpoints,
}

fn inner(node: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xf0 + node, 0, 0, 0, 0, 0, 1)
}

fn underlay(node: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xfc, 0, 0, 0, 0, 0, node)
}

/// Sets up the end node `me` (1 or 2) whose mesh peer is `peer`, reached over the udp link from
/// `ul_me` to `ul_next` on [`UNDERLAY`]; `load` loads its programs.
fn node(
    netns: NetNs,
    (me, peer): (u16, u16),
    (ul_me, ul_next): (Ipv6Addr, Ipv6Addr),
    load: impl FnOnce() -> Fastpath,
) -> Node {
    let tun_addr = format!("{}/128", inner(me));
    let ul_addr = format!("{ul_me}/64");
    let peer_prefix = format!("{}/64", inner(peer));
    for args in [
        &["tuntap", "add", "mode", "tun", "name", TUN][..],
        &["addr", "add", &tun_addr, "dev", TUN, "nodad"],
        &["link", "set", TUN, "mtu", "1452", "up"],
        &["-6", "route", "add", &peer_prefix, "dev", TUN],
        &["addr", "add", &ul_addr, "dev", UNDERLAY, "nodad"],
        &["link", "set", UNDERLAY, "up"],
    ] {
        netns.ip(args);
    }
    netns.sysctl(&format!("net.ipv6.conf.{UNDERLAY}.forwarding"), "1");
    let ifindex = netns.ifindex(UNDERLAY);
    let _inside = netns.enter();
    let tun = support::open_tun(TUN);
    let mut fastpath = load();
    fastpath.attach_tun(TUN).unwrap();
    fastpath.attach_underlay(UNDERLAY).unwrap();
    let maps = fastpath.maps_mut();
    let link = LinkEndpoints {
        local: SocketAddrV6::new(ul_me, PORT, 0, 0),
        peer: SocketAddrV6::new(ul_next, PORT, 0, 0),
        ifindex,
        link_slot: SLOT,
    };
    maps.set_route(inner(peer), 64, &RouteTarget::Link(link))
        .unwrap();
    maps.set_route(inner(me), 64, &RouteTarget::Local).unwrap();
    maps.set_local_ports(&[PORT]).unwrap();
    maps.set_peer(link.peer, link.local, SLOT).unwrap();
    Node {
        netns,
        tun,
        fastpath,
        link,
    }
}

#[test]
fn ping_and_tcp_cross_the_fast_path_and_a_removed_route_falls_back_to_userspace() {
    let Some(object) = support::prerequisites("fastpath_netns") else {
        return;
    };
    let ns_a = NetNs::create("fpa");
    let ns_b = NetNs::create("fpb");
    ns_a.ip(&[
        "link", "add", UNDERLAY, "mtu", "1500", "type", "veth", "peer", "name", "fppeer", "netns",
        &ns_b.name,
    ]);
    ns_b.ip(&["link", "set", "fppeer", "name", UNDERLAY]);

    // A: loaded by a helper process (this test binary, re-run as `helper_process`), as the
    // node does; B: loaded here.
    let mut a = node(ns_a, (1, 2), (underlay(1), underlay(2)), || {
        Fastpath::load_via_helper(helper_command(), support::object_path().as_deref()).unwrap()
    });
    // The helper's errors come back named, as the node would log them.
    let error = Fastpath::load_via_helper(
        helper_command(),
        Some(std::path::Path::new("/nonexistent/cx.o")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("/nonexistent/cx.o does not exist") && error.contains("in the eBPF helper"),
        "{error}"
    );
    let b = node(ns_b, (2, 1), (underlay(2), underlay(1)), || {
        Fastpath::load(&object).unwrap()
    });
    // The TUN counters stay first in A's TCX chain and still count what the fast path takes.
    let counters = {
        let _inside = a.netns.enter();
        TunCounters::attach(TUN, &object).unwrap()
    };
    assert_eq!(a.fastpath.tun(), Some(TUN));
    assert_eq!(a.fastpath.underlays().collect::<Vec<_>>(), [UNDERLAY]);

    // Ping B's TUN address from A's: both directions through the programs.
    let ping = |count: u32| {
        a.netns
            .exec("ping")
            .args([
                "-6",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "2",
            ])
            .args(["-I", &inner(1).to_string(), &inner(2).to_string()])
            .output()
            .unwrap()
    };
    // The underlay neighbours must be resolved (bpf_fib_lookup never resolves them; the
    // daemon's hellos would): one underlay ping each way.
    for (node, peer) in [(&a, 2), (&b, 1)] {
        let out = node
            .netns
            .exec("ping")
            .args([
                "-6",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                "2",
                &underlay(peer).to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "underlay ping: {out:?}");
    }
    let out = ping(5);
    assert!(
        out.status.success(),
        "ping through the fast path: {out:?}\nA: {:?}\nB: {:?}",
        reasons(&a),
        reasons(&b)
    );
    let (a_link, b_link) = (link(&a), link(&b));
    assert!(
        a_link.tx_packets >= 5 && a_link.rx_packets >= 5,
        "A {a_link:?}"
    );
    assert!(
        b_link.tx_packets >= 5 && b_link.rx_packets >= 5,
        "B {b_link:?}"
    );
    assert_eq!(drain(&a.tun), 0, "nothing reached A's TUN fd");
    let counted = counters.read().unwrap();
    assert!(
        counted.egress.packets >= 5 && counted.ingress.packets >= 5,
        "the TUN counters before the fast path: {counted:?}"
    );
    assert_eq!(drain(&b.tun), 0, "nothing reached B's TUN fd");

    // A TCP transfer A → B with the same SHA-256 on both ends.
    let before = (link(&a), link(&b));
    let (sent, received) = transfer(&a.netns, &b.netns);
    assert_eq!(sent, received, "SHA-256 of what A sent and B received");
    let (a_link, b_link) = (link(&a), link(&b));
    let carried = a_link.tx_bytes - before.0.tx_bytes;
    assert!(
        carried >= TRANSFER as u64,
        "A's fast path sent only {carried} bytes"
    );
    let decapsulated = b_link.rx_bytes - before.1.rx_bytes;
    assert!(
        decapsulated >= TRANSFER as u64,
        "B's fast path took only {decapsulated} bytes"
    );
    assert_eq!(
        drain(&a.tun),
        0,
        "nothing of the transfer reached A's TUN fd"
    );

    // Without the route entry, A's packets for B go to userspace: the TUN fd.
    let misses = a.fastpath.maps().reasons().unwrap().get(Reason::EgMiss);
    assert!(a.fastpath.maps_mut().remove_route(inner(2), 64).unwrap());
    let out = ping(1);
    assert!(
        !out.status.success(),
        "no reply without the fast path or a daemon"
    );
    let to_userspace = drain(&a.tun);
    assert!(to_userspace >= 1, "the echo request reached A's TUN fd");
    let misses = a.fastpath.maps().reasons().unwrap().get(Reason::EgMiss) - misses;
    assert!(misses >= 1, "eg_miss counted {misses}");

    let _ = writeln!(
        std::io::stderr(),
        "RAN fastpath_netns: ping and {} MiB over the fast path (A sent {} packets / {} bytes), \
         {to_userspace} packet(s) to userspace after the route was removed",
        TRANSFER >> 20,
        a_link.tx_packets,
        a_link.tx_bytes
    );

    // The node drops its capabilities after start-up but keeps CAP_NET_ADMIN (and the `bpf`
    // system call): a link coming up later must still attach and fill the maps with only that.
    let link = a.link;
    let fastpath = &mut a.fastpath;
    let netns = &a.netns;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // This thread cannot go back without CAP_SYS_ADMIN, and ends here anyway.
                std::mem::forget(netns.enter());
                keep_only_cap_net_admin();
                assert!(fastpath.detach_underlay(UNDERLAY));
                assert!(!fastpath.detach_underlay(UNDERLAY));
                fastpath.attach_underlay(UNDERLAY).unwrap();
                fastpath
                    .maps_mut()
                    .set_route(inner(2), 64, &RouteTarget::Link(link))
                    .unwrap();
            })
            .join()
            .unwrap();
    });
    let before = link_of(&a.fastpath);
    let out = ping(3);
    assert!(out.status.success(), "ping after re-attaching: {out:?}");
    let after = link_of(&a.fastpath);
    assert!(
        after.tx_packets >= before.tx_packets + 3,
        "{before:?} -> {after:?}"
    );
    assert_eq!(drain(&a.tun), 0, "nothing reached A's TUN fd");
}

/// Reduces the calling thread's effective and permitted capabilities to CAP_NET_ADMIN, as the
/// node keeps after start-up (capabilities are per thread).
fn keep_only_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let only = Data {
        effective: 1 << CAP_NET_ADMIN,
        permitted: 1 << CAP_NET_ADMIN,
        inheritable: 0,
    };
    let none = Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let data = [only, none];
    // SAFETY: capset reads a version-3 header and two data structs, which both outlive the
    // call; it changes only the calling thread's capabilities.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

fn link_of(fastpath: &Fastpath) -> LinkCounter {
    fastpath.maps().link(SLOT).unwrap()
}

/// Resolves the underlay neighbour `addr` from `netns` with one ping (the daemon's hellos do
/// it in a real node; `bpf_fib_lookup` never resolves a neighbour itself).
fn resolve(netns: &NetNs, addr: Ipv6Addr) {
    let out = netns
        .exec("ping")
        .args(["-6", "-n", "-q", "-c", "1", "-W", "2", &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "underlay ping to {addr}: {out:?}");
}

/// The reasons that counted something.
fn reasons(node: &Node) -> Vec<(Reason, u64)> {
    let counts = node.fastpath.maps().reasons().unwrap();
    counts.iter().filter(|(_, n)| *n > 0).collect()
}

/// A — M — B: M has no TUN, only the ingress program on both underlays, and forwards link to
/// link in tc (outer header rewritten, inner hop limit decremented).
#[test]
fn a_transit_node_forwards_link_to_link_and_counts_as_a_hop() {
    let Some(object) = support::prerequisites("fastpath_netns transit") else {
        return;
    };
    let (ul_a, ul_ma) = (ula(1, 1), ula(1, 2));
    let (ul_b, ul_mb) = (ula(2, 1), ula(2, 2));
    let ns_a = NetNs::create("fpta");
    let ns_m = NetNs::create("fptm");
    let ns_b = NetNs::create("fptb");
    for (ns, peer_name) in [(&ns_a, "fpula"), (&ns_b, "fpulb")] {
        ns.ip(&[
            "link", "add", UNDERLAY, "mtu", "1500", "type", "veth", "peer", "name", peer_name,
            "netns", &ns_m.name,
        ]);
    }
    let mut m = {
        for (ifname, addr) in [("fpula", ul_ma), ("fpulb", ul_mb)] {
            ns_m.ip(&["addr", "add", &format!("{addr}/64"), "dev", ifname, "nodad"]);
            ns_m.ip(&["link", "set", ifname, "up"]);
            ns_m.sysctl(&format!("net.ipv6.conf.{ifname}.forwarding"), "1");
        }
        let (if_a, if_b) = (ns_m.ifindex("fpula"), ns_m.ifindex("fpulb"));
        let _inside = ns_m.enter();
        let mut fastpath = Fastpath::load(&object).unwrap();
        fastpath.attach_underlay("fpula").unwrap();
        fastpath.attach_underlay("fpulb").unwrap();
        let maps = fastpath.maps_mut();
        maps.set_local_ports(&[PORT]).unwrap();
        for (slot, ifindex, local, peer, prefix) in [
            (1, if_a, ul_ma, ul_a, inner(1)),
            (2, if_b, ul_mb, ul_b, inner(2)),
        ] {
            let link = LinkEndpoints {
                local: SocketAddrV6::new(local, PORT, 0, 0),
                peer: SocketAddrV6::new(peer, PORT, 0, 0),
                ifindex,
                link_slot: slot,
            };
            maps.set_route(prefix, 64, &RouteTarget::Link(link))
                .unwrap();
            maps.set_peer(link.peer, link.local, slot).unwrap();
        }
        fastpath
    };
    assert_eq!(m.underlays().collect::<Vec<_>>(), ["fpula", "fpulb"]);
    let a = node(ns_a, (1, 2), (ul_a, ul_ma), || {
        Fastpath::load(&object).unwrap()
    });
    let b = node(ns_b, (2, 1), (ul_b, ul_mb), || {
        Fastpath::load(&object).unwrap()
    });
    resolve(&a.netns, ul_ma);
    resolve(&b.netns, ul_mb);
    resolve(&ns_m, ul_a);
    resolve(&ns_m, ul_b);

    let out = a
        .netns
        .exec("ping")
        .args(["-6", "-n", "-c", "5", "-i", "0.05", "-W", "2"])
        .args(["-I", &inner(1).to_string(), &inner(2).to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ping through M: {out:?}\nA: {:?}\nM: {:?}\nB: {:?}",
        reasons(&a),
        m.maps()
            .reasons()
            .unwrap()
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        reasons(&b)
    );
    // B answers with hop limit 64; only M decrements it.
    assert!(text.contains("ttl=63"), "replies crossed one hop: {text}");

    let (sent, received) = transfer(&a.netns, &b.netns);
    assert_eq!(
        sent, received,
        "SHA-256 of what A sent and B received through M"
    );
    let (from_a, to_b) = (m.maps().link(1).unwrap(), m.maps().link(2).unwrap());
    assert!(
        from_a.rx_bytes >= TRANSFER as u64,
        "M took from A: {from_a:?}"
    );
    assert!(to_b.tx_bytes >= TRANSFER as u64, "M sent to B: {to_b:?}");
    assert!(
        to_b.rx_packets >= 5 && from_a.tx_packets >= 5,
        "replies through M"
    );
    assert_eq!(drain(&a.tun), 0, "nothing reached A's TUN fd");
    assert_eq!(drain(&b.tun), 0, "nothing reached B's TUN fd");
    let _ = writeln!(
        std::io::stderr(),
        "RAN fastpath_netns transit: ping (ttl=63) and {} MiB through M ({} packets / {} bytes \
         link to link)",
        TRANSFER >> 20,
        to_b.tx_packets,
        to_b.tx_bytes
    );
    assert!(m.detach_underlay("fpula"));
}

/// fd00:fd:<subnet>::<host>, the underlay of the transit test.
fn ula(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xfd, subnet, 0, 0, 0, 0, host)
}

fn link(node: &Node) -> LinkCounter {
    node.fastpath.maps().link(SLOT).unwrap()
}

/// Reads every packet waiting on the TUN fd (waiting up to 1 s for the first); returns how
/// many IPv6 packets other than multicast housekeeping there were.
fn drain(tun: &File) -> u64 {
    let mut buf = [0u8; 65536];
    let mut seen = 0;
    let mut wait = 1000;
    loop {
        let mut pollfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pollfd` is a valid array of one element that outlives the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, wait) };
        if ready <= 0 {
            return seen;
        }
        wait = 100;
        let n = (&*tun).read(&mut buf).unwrap_or(0);
        // Multicast (ff00::/8: MLD reports, router solicitations) is the kernel's own noise.
        if n >= 40 && buf[24] != 0xff {
            seen += 1;
        }
    }
}

/// Sends [`TRANSFER`] bytes over TCP from A's TUN address to B's; returns the SHA-256 of what
/// was sent and of what was received, from `sha256sum`.
fn transfer(a: &NetNs, b: &NetNs) -> (String, String) {
    let listener = {
        let _inside = b.enter();
        TcpListener::bind(SocketAddrV6::new(inner(2), 5001, 0, 0)).unwrap()
    };
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hasher = sha256sum();
        let mut stdin = hasher.stdin.take().unwrap();
        std::io::copy(&mut stream, &mut stdin).unwrap();
        drop(stdin);
        digest(hasher)
    });
    let mut stream = {
        let _inside = a.enter();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(SocketAddrV6::new(inner(2), 5001, 0, 0)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to B: {e}"),
            }
        }
    };
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut hasher = sha256sum();
    let mut stdin = hasher.stdin.take().unwrap();
    let mut block = vec![0u8; 64 * 1024];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..TRANSFER / block.len() {
        for chunk in block.chunks_mut(8) {
            // xorshift: incompressible, reproducible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        stream.write_all(&block).unwrap();
        stdin.write_all(&block).unwrap();
    }
    drop(stdin);
    drop(stream);
    (digest(hasher), receiver.join().unwrap())
}

fn sha256sum() -> std::process::Child {
    Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn digest(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Set in the environment of this test binary when it is re-run as the helper process.
const HELPER_ENV: &str = "CX_FASTPATH_NETNS_HELPER";

/// Not a check of its own: when [`HELPER_ENV`] is set, this process is the helper that
/// `load_via_helper` started, and serves its request.
#[test]
fn helper_process() {
    support::serve_if_helper(HELPER_ENV);
}

fn helper_command() -> Command {
    support::helper_command(HELPER_ENV)
}
