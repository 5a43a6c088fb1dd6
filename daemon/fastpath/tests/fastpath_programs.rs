//! Root test: each fast-path program run on hand-made packets with BPF_PROG_TEST_RUN, its maps
//! filled through [`FastpathMaps`] (the node's API). Checks the verdict, the exact bytes that
//! come out, and the per-reason and per-link counters.
//!
//! Skips (passes, saying what is missing) unless it runs as root and the object was built.
//!
//! `BPF_PROG_TEST_RUN` always builds an Ethernet frame, so egress runs here on its Ethernet
//! branch (the packet keeps its 14-byte header and gains the 48 bytes after it); the TUN branch
//! (no L2 header, `bpf_skb_change_head`) runs in `fastpath_netns.rs`. `bpf_redirect` only
//! returns TC_ACT_REDIRECT under test-run; the FIB and MTU lookups are real: the test runs in
//! a namespace with a veth `fpv0` (MTU 1500, fd00:fb::1/64, forwarding on) and a permanent
//! neighbour fd00:fb::2 → 02:00:00:00:00:02.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsFd;

use aya::Ebpf;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use connectopus_ebpf_common::fastpath::{
    MAP_FP_CONFIG, MAP_FP_LINKS, MAP_FP_LOCAL_PORTS, MAP_FP_PEERS, MAP_FP_REASONS, MAP_FP_ROUTES,
    PROG_FP_TUN_EGRESS, PROG_FP_UNDERLAY_INGRESS,
};
use connectopus_fastpath::{
    FastpathMapFds, FastpathMaps, LinkCounter, LinkEndpoints, Reason, ReasonCounts, RouteTarget,
};
use support::{NetNs, eth, ipv6, udp};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_REDIRECT: u32 = 7;

const UL_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfb, 0, 0, 0, 0, 0, 1);
const UL_PEER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfb, 0, 0, 0, 0, 0, 2);
/// On the underlay subnet, but with no neighbour entry.
const UL_UNRESOLVED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfb, 0, 0, 0, 0, 0, 3);
const MAC_LOCAL: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PORT_LOCAL: u16 = 4500;
const PORT_PEER: u16 = 4501;
const PORT_NEXT: u16 = 4502;
const SLOT_IN: u32 = 3;
const SLOT_NEXT: u32 = 4;

/// Inner addresses: our prefix, one behind the peer, one behind the next hop (transit), one
/// behind an unresolved neighbour, and one nobody routes.
const INNER_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa0, 0, 0, 0, 0, 0, 9);
/// An address of this node (inside the local prefix).
const INNER_OWN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xaa, 0, 0, 0, 0, 0, 9);
const INNER_MULTICAST: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 1);
const INNER_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xaa, 0, 0, 0, 0, 0, 1);
const INNER_REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 5);
const INNER_TRANSIT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xbb, 0, 0, 0, 0, 0, 7);
const INNER_NONEIGH: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xcc, 0, 0, 0, 0, 0, 1);
const INNER_CONTROL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xaa, 0, 0, 0, 0, 0, 0x53);
const INNER_UNKNOWN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

struct Bed {
    netns: NetNs,
    remote_route: RouteTarget,
    _inside: support::Entered,
    ebpf: Ebpf,
    maps: FastpathMaps,
}

impl Bed {
    fn new(object: &[u8]) -> Bed {
        let netns = NetNs::create("fpt");
        for args in [
            &[
                "link",
                "add",
                "fpv0",
                "address",
                "02:00:00:00:00:01",
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                "fpv1",
            ][..],
            &["addr", "add", "fd00:fb::1/64", "dev", "fpv0", "nodad"],
            &["link", "set", "fpv0", "up"],
            &["link", "set", "fpv1", "up"],
            &[
                "-6",
                "neigh",
                "replace",
                "fd00:fb::2",
                "lladdr",
                "02:00:00:00:00:02",
                "nud",
                "permanent",
                "dev",
                "fpv0",
            ],
        ] {
            netns.ip(args);
        }
        // bpf_fib_lookup answers only for interfaces that forward.
        netns.sysctl("net.ipv6.conf.fpv0.forwarding", "1");
        let ifindex = netns.ifindex("fpv0");
        let inside = netns.enter();

        let mut ebpf = Ebpf::load(object).unwrap();
        for name in [PROG_FP_TUN_EGRESS, PROG_FP_UNDERLAY_INGRESS] {
            let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            if let Err(error) = program.load() {
                panic!("loading {name}: {error:#?}");
            }
        }
        let fd = |name: &str| {
            let map = ebpf.map(name).unwrap();
            let data = match map {
                aya::maps::Map::Array(m)
                | aya::maps::Map::HashMap(m)
                | aya::maps::Map::LpmTrie(m)
                | aya::maps::Map::PerCpuArray(m) => m,
                _ => panic!("{name} has an unexpected kind"),
            };
            data.fd().as_fd().try_clone_to_owned().unwrap()
        };
        let fds = FastpathMapFds {
            routes: fd(MAP_FP_ROUTES),
            peers: fd(MAP_FP_PEERS),
            local_ports: fd(MAP_FP_LOCAL_PORTS),
            config: fd(MAP_FP_CONFIG),
            reasons: fd(MAP_FP_REASONS),
            links: fd(MAP_FP_LINKS),
        };
        let mut maps = FastpathMaps::from_fds(fds).unwrap();

        let link = |peer: Ipv6Addr, port: u16, slot: u32| {
            RouteTarget::Link(LinkEndpoints {
                local: SocketAddrV6::new(UL_LOCAL, PORT_LOCAL, 0, 0),
                peer: SocketAddrV6::new(peer, port, 0, 0),
                ifindex,
                link_slot: slot,
            })
        };
        maps.set_route(INNER_REMOTE, 64, &link(UL_PEER, PORT_PEER, SLOT_IN))
            .unwrap();
        maps.set_route(INNER_TRANSIT, 64, &link(UL_PEER, PORT_NEXT, SLOT_NEXT))
            .unwrap();
        maps.set_route(INNER_NONEIGH, 64, &link(UL_UNRESOLVED, PORT_PEER, SLOT_IN))
            .unwrap();
        maps.set_route(INNER_LOCAL, 64, &RouteTarget::Local)
            .unwrap();
        maps.set_route(INNER_CONTROL, 128, &RouteTarget::Userspace)
            .unwrap();
        maps.set_local_ports(&[PORT_LOCAL, 9999]).unwrap();
        maps.set_local_ports(&[PORT_LOCAL]).unwrap();
        maps.set_peer(
            SocketAddrV6::new(UL_PEER, PORT_PEER, 0, 0),
            SocketAddrV6::new(UL_LOCAL, PORT_LOCAL, 0, 0),
            SLOT_IN,
        )
        .unwrap();
        maps.set_tun_ifindex(netns.ifindex("fpv1")).unwrap();
        Bed {
            remote_route: link(UL_PEER, PORT_PEER, SLOT_IN),
            netns,
            _inside: inside,
            ebpf,
            maps,
        }
    }

    /// Runs `program` on `packet`; returns the verdict, the packet after it, and which
    /// reason counters moved.
    fn run(&self, program: &str, packet: &[u8]) -> (u32, Vec<u8>, ReasonCounts) {
        let before = self.maps.reasons().unwrap();
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        let moved = self.maps.reasons().unwrap().since(&before);
        (result.return_value, out, moved)
    }

    /// Runs egress on an Ethernet frame carrying `inner`.
    fn egress(&self, inner: &[u8]) -> (u32, Vec<u8>, ReasonCounts) {
        let mut frame = eth(MAC_LOCAL, MAC_PEER);
        frame.extend_from_slice(inner);
        self.run(PROG_FP_TUN_EGRESS, &frame)
    }

    /// Runs ingress on a datagram from `from` to our port carrying `payload`.
    fn ingress(
        &self,
        from: (Ipv6Addr, u16),
        dport: u16,
        payload: &[u8],
    ) -> (u32, Vec<u8>, ReasonCounts) {
        let frame = outer_frame(MAC_LOCAL, MAC_PEER, from, (UL_LOCAL, dport), payload);
        self.run(PROG_FP_UNDERLAY_INGRESS, &frame)
    }
}

/// Ethernet + IPv6 + UDP (checksum 0) around `payload`.
fn outer_frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = eth(dmac, smac);
    frame.extend_from_slice(&ipv6(src.0, dst.0, 17, 64, &udp(src.1, dst.1, payload)));
    frame
}

/// A UDP packet from this node (`INNER_OWN`, as egress sees) to `dst`.
fn outgoing(dst: Ipv6Addr, hop_limit: u8, len: usize) -> Vec<u8> {
    let mut packet = inner_udp(dst, hop_limit, len);
    packet[8..24].copy_from_slice(&INNER_OWN.octets());
    packet
}

/// A UDP packet from elsewhere in the mesh (`INNER_SRC`) to `dst` with `len` bytes of payload.
fn inner_udp(dst: Ipv6Addr, hop_limit: u8, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    ipv6(INNER_SRC, dst, 17, hop_limit, &udp(1234, 5678, &payload))
}

/// What, from whom, the UDP payload, and the reason it must be counted under.
type IngressCase = (&'static str, (Ipv6Addr, u16), Vec<u8>, Reason);

/// Only `reason` moved, by one.
fn only(moved: &ReasonCounts, reason: Reason) {
    let nonzero: Vec<_> = moved.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(nonzero, [(reason, 1)], "counters that moved");
    let mut covered = COVERED.lock().unwrap();
    if !covered.contains(&reason) {
        covered.push(reason);
    }
}

/// The reasons some case of this test produced.
static COVERED: std::sync::Mutex<Vec<Reason>> = std::sync::Mutex::new(Vec::new());

fn nothing_moved(moved: &ReasonCounts) {
    let nonzero: Vec<_> = moved.iter().filter(|(_, n)| *n > 0).collect();
    assert!(nonzero.is_empty(), "counters that moved: {nonzero:?}");
}

#[test]
fn each_program_encapsulates_decapsulates_forwards_or_passes_for_a_counted_reason() {
    let Some(object) = support::prerequisites("fastpath_programs") else {
        return;
    };
    let mut bed = Bed::new(&object);

    // --- Egress: encapsulation, exact outer bytes.
    let inner = outgoing(INNER_REMOTE, 64, 100);
    let (verdict, out, moved) = bed.egress(&inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    nothing_moved(&moved);
    let udp_len = (inner.len() + 8) as u16;
    let mut expected = eth(MAC_PEER, MAC_LOCAL);
    expected.extend_from_slice(&[0x60, 0, 0, 0]);
    expected.extend_from_slice(&udp_len.to_be_bytes());
    expected.extend_from_slice(&[17, 64]);
    expected.extend_from_slice(&UL_LOCAL.octets());
    expected.extend_from_slice(&UL_PEER.octets());
    expected.extend_from_slice(&PORT_LOCAL.to_be_bytes());
    expected.extend_from_slice(&PORT_PEER.to_be_bytes());
    expected.extend_from_slice(&udp_len.to_be_bytes());
    expected.extend_from_slice(&[0, 0]); // UDP checksum zero
    expected.extend_from_slice(&inner);
    assert_eq!(out, expected, "encapsulated frame");
    let link = bed.maps.link(SLOT_IN).unwrap();
    assert_eq!((link.tx_packets, link.tx_bytes), (1, inner.len() as u64));

    // ICMPv6 echo takes the fast path; errors and neighbour discovery do not.
    let echo = ipv6(INNER_OWN, INNER_REMOTE, 58, 64, &[128, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(bed.egress(&echo).0, TC_ACT_REDIRECT);
    for icmp_type in [1u8, 3, 135] {
        let message = ipv6(
            INNER_OWN,
            INNER_REMOTE,
            58,
            64,
            &[icmp_type, 0, 0, 0, 0, 0, 0, 0],
        );
        let (verdict, out, moved) = bed.egress(&message);
        assert_eq!(verdict, TC_ACT_UNSPEC, "ICMPv6 type {icmp_type}");
        assert_eq!(out[14..], message[..], "passed untouched");
        only(&moved, Reason::EgIcmp);
    }

    // Pass-to-userspace cases, each untouched and counted.
    let cases: [(&str, Vec<u8>, Reason); 8] = [
        (
            "source not this node's",
            inner_udp(INNER_REMOTE, 64, 100),
            Reason::EgSource,
        ),
        (
            "multicast",
            outgoing(INNER_MULTICAST, 64, 100),
            Reason::EgMulticast,
        ),
        (
            "unknown prefix",
            outgoing(INNER_UNKNOWN, 64, 100),
            Reason::EgMiss,
        ),
        (
            "hop limit 1",
            outgoing(INNER_REMOTE, 1, 100),
            Reason::EgHopLimit,
        ),
        (
            "control plane",
            outgoing(INNER_CONTROL, 64, 100),
            Reason::EgUserspace,
        ),
        (
            "local prefix",
            outgoing(INNER_LOCAL, 64, 100),
            Reason::EgUserspace,
        ),
        (
            "unresolved neighbour",
            outgoing(INNER_NONEIGH, 64, 100),
            Reason::EgNoNeigh,
        ),
        // 1453 bytes + 48 > 1500: too big once encapsulated (not GSO under test-run).
        (
            "oversized",
            outgoing(INNER_REMOTE, 64, 1453 - 48),
            Reason::EgTooBig,
        ),
    ];
    for (what, inner, reason) in cases {
        let (verdict, out, moved) = bed.egress(&inner);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(out[14..], inner[..], "{what}: passed untouched");
        only(&moved, reason);
    }
    // Exactly the largest inner packet that fits: 1452 bytes.
    assert_eq!(
        bed.egress(&outgoing(INNER_REMOTE, 64, 1452 - 48)).0,
        TC_ACT_REDIRECT
    );

    // --- Ingress: decapsulation into the TUN.
    let from_peer = (UL_PEER, PORT_PEER);
    let inner = inner_udp(INNER_LOCAL, 64, 200);
    let (verdict, out, moved) = bed.ingress(from_peer, PORT_LOCAL, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    nothing_moved(&moved);
    let mut expected = eth(MAC_LOCAL, MAC_PEER);
    expected.extend_from_slice(&inner);
    assert_eq!(out, expected, "decapsulated frame");
    let link = bed.maps.link(SLOT_IN).unwrap();
    assert_eq!((link.rx_packets, link.rx_bytes), (1, inner.len() as u64));

    // --- Transit: rewritten outer header, inner hop limit decremented.
    let inner = inner_udp(INNER_TRANSIT, 10, 300);
    let (verdict, out, moved) = bed.ingress(from_peer, PORT_LOCAL, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    nothing_moved(&moved);
    let mut forwarded = inner.clone();
    forwarded[7] = 9;
    let expected = outer_frame(
        MAC_PEER,
        MAC_LOCAL,
        (UL_LOCAL, PORT_LOCAL),
        (UL_PEER, PORT_NEXT),
        &forwarded,
    );
    assert_eq!(out, expected, "transit frame");
    let next = bed.maps.link(SLOT_NEXT).unwrap();
    assert_eq!((next.tx_packets, next.tx_bytes), (1, inner.len() as u64));
    assert_eq!(bed.maps.link(SLOT_IN).unwrap().rx_packets, 2);

    // Pass-to-userspace cases of ingress and transit, each untouched and counted.
    let mut aggregate = inner_udp(INNER_LOCAL, 64, 200);
    aggregate.extend_from_slice(&inner_udp(INNER_LOCAL, 64, 200));
    let cases: [IngressCase; 10] = [
        (
            "this node's own source",
            from_peer,
            outgoing(INNER_LOCAL, 64, 10),
            Reason::InSource,
        ),
        (
            "multicast",
            from_peer,
            inner_udp(INNER_MULTICAST, 64, 10),
            Reason::InMulticast,
        ),
        (
            "unspecified source",
            from_peer,
            {
                let mut p = inner_udp(INNER_LOCAL, 64, 10);
                p[8..24].fill(0);
                p
            },
            Reason::InSource,
        ),
        (
            "control message",
            from_peer,
            vec![0x01, 2, 3, 4],
            Reason::InCtrl,
        ),
        (
            "neither control nor data",
            from_peer,
            vec![0x70; 60],
            Reason::InNotData,
        ),
        (
            "unknown peer port",
            (UL_PEER, 4999),
            inner_udp(INNER_LOCAL, 64, 10),
            Reason::InUnknownPeer,
        ),
        ("GRO aggregate", from_peer, aggregate, Reason::InGroAgg),
        (
            "unknown prefix",
            from_peer,
            inner_udp(INNER_UNKNOWN, 64, 10),
            Reason::InNoRoute,
        ),
        (
            "control plane",
            from_peer,
            inner_udp(INNER_CONTROL, 64, 10),
            Reason::InUserspace,
        ),
        (
            "transit hop limit 1",
            from_peer,
            inner_udp(INNER_TRANSIT, 1, 10),
            Reason::TrHopLimit,
        ),
    ];
    for (what, from, payload, reason) in cases {
        let frame = outer_frame(MAC_LOCAL, MAC_PEER, from, (UL_LOCAL, PORT_LOCAL), &payload);
        let (verdict, out, moved) = bed.run(PROG_FP_UNDERLAY_INGRESS, &frame);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(out, frame, "{what}: passed untouched");
        only(&moved, reason);
    }
    // The peer's datagram to another address than this node's end of the link (another host's,
    // seen on the wire before routing, or another of this node's): no peer's, not decapsulated.
    let frame = outer_frame(
        MAC_LOCAL,
        MAC_PEER,
        from_peer,
        (UL_UNRESOLVED, PORT_LOCAL),
        &inner_udp(INNER_LOCAL, 64, 10),
    );
    let (verdict, out, moved) = bed.run(PROG_FP_UNDERLAY_INGRESS, &frame);
    assert_eq!(verdict, TC_ACT_UNSPEC, "another destination address");
    assert_eq!(out, frame, "another destination address: passed untouched");
    only(&moved, Reason::InUnknownPeer);
    // Not for one of our ports: untouched and not even counted.
    let (verdict, _, moved) = bed.ingress(from_peer, 5555, &inner_udp(INNER_LOCAL, 64, 10));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    nothing_moved(&moved);

    // More fall-backs: a length that disagrees with the skb, a hop-by-hop header, transit
    // towards an unresolved neighbour or a smaller MTU, and no TUN to decapsulate into.
    let mut padded = outgoing(INNER_REMOTE, 64, 100);
    padded.extend_from_slice(&[0; 4]);
    let (verdict, _, moved) = bed.egress(&padded);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::EgNotIpv6);
    let hop_by_hop = ipv6(INNER_OWN, INNER_REMOTE, 0, 64, &[17, 0, 1, 4, 0, 0, 0, 0]);
    let (verdict, _, moved) = bed.egress(&hop_by_hop);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::EgHopByHop);
    for (what, inner, reason) in [
        (
            "unresolved next neighbour",
            inner_udp(INNER_NONEIGH, 64, 10),
            Reason::TrNoNeigh,
        ),
        // 62 + 1453 bytes > 1500 + 14 on the next underlay.
        (
            "too big for the next link",
            inner_udp(INNER_TRANSIT, 64, 1453 - 48),
            Reason::TrTooBig,
        ),
    ] {
        let (verdict, out, moved) = bed.ingress(from_peer, PORT_LOCAL, &inner);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(out[62..], inner[..], "{what}: passed untouched");
        only(&moved, reason);
    }
    bed.maps.set_tun_ifindex(0).unwrap();
    let (verdict, _, moved) = bed.ingress(from_peer, PORT_LOCAL, &inner_udp(INNER_LOCAL, 64, 10));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::InNoTun);

    // A slot handed to a new link starts from zero.
    bed.maps.clear_link(SLOT_IN).unwrap();
    assert_eq!(bed.maps.link(SLOT_IN).unwrap(), LinkCounter::default());
    assert!(bed.maps.clear_link(1 << 20).is_err(), "slot out of range");

    // Removing the route sends the prefix back to userspace.
    assert!(bed.maps.remove_route(INNER_REMOTE, 64).unwrap());
    assert!(!bed.maps.remove_route(INNER_REMOTE, 64).unwrap());
    let (verdict, _, moved) = bed.egress(&outgoing(INNER_REMOTE, 64, 100));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::EgMiss);

    // With forwarding off on the underlay, bpf_fib_lookup refuses: to userspace, counted.
    bed.maps
        .set_route(INNER_REMOTE, 64, &bed.remote_route)
        .unwrap();
    bed.netns.sysctl("net.ipv6.conf.fpv0.forwarding", "0");
    let (verdict, _, moved) = bed.egress(&outgoing(INNER_REMOTE, 64, 100));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::EgNoFib);
    let (verdict, _, moved) = bed.ingress(
        (UL_PEER, PORT_PEER),
        PORT_LOCAL,
        &inner_udp(INNER_TRANSIT, 64, 10),
    );
    assert_eq!(verdict, TC_ACT_UNSPEC);
    only(&moved, Reason::TrNoFib);

    let covered = COVERED.lock().unwrap().clone();
    let missing: Vec<_> = Reason::ALL
        .iter()
        .filter(|r| !covered.contains(r))
        .map(|r| r.as_str())
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "RAN fastpath_programs: encap, decap, transit, and pass-to-userspace cases for {} of {} \
         reasons (not produced: {missing:?})",
        covered.len(),
        Reason::ALL.len()
    );
}
