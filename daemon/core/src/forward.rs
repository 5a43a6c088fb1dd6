//! The per-packet forwarding decision.
//!
//! [`decide`] is a pure function over a [`ForwardingTable`] snapshot and one packet buffer:
//! it never allocates, locks or reads a clock, so the io_uring dataplane threads call it
//! directly on their pooled buffers, and the core calls the same function in the simulator.
//! ICMPv6 errors are built by [`crate::icmp`] when the decision asks for one. IPv4 packets
//! take the same path through [`crate::forward4`], with ICMPv4 errors from [`crate::icmp4`].

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::LinkId;
use crate::icmp::{self, IPV6_HEADER_LEN, IcmpErrorKind};
use crate::route::PrefixTable;

/// Where packets for a prefix go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// This node delivers them to its TUN device (its own address and attached prefixes).
    Local,
    /// Send them on this link, whose IPv6 MTU is `mtu`.
    Link {
        /// The link to the first hop.
        link: LinkId,
        /// Largest IPv6 packet the link carries.
        mtu: u16,
    },
}

/// An immutable snapshot of everything the per-packet decision needs.
///
/// The core builds a new one whenever routes, sessions or link MTUs change, and hands it to the
/// dataplane as a whole (no per-packet locking).
#[derive(Debug, Clone, Default)]
pub struct ForwardingTable {
    /// Longest-prefix-match routes.
    pub routes: PrefixTable<RouteTarget>,
    /// The node's own address: the source of the ICMPv6 errors it sends.
    pub node_address: Option<Ipv6Addr>,
    /// The node's own IPv4 address, if the mesh has IPv4: the source of its ICMPv4 errors.
    pub node_address4: Option<Ipv4Addr>,
    /// Increases with every new snapshot.
    pub generation: u64,
}

/// Where a packet entered the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// From the node's TUN device (the local host sent it).
    Tun,
    /// From a link to another node.
    Link(LinkId),
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write it to the TUN device.
    Deliver,
    /// Send it on `link` (the hop limit is already decremented in the buffer).
    Forward {
        /// The outgoing link.
        link: LinkId,
    },
    /// Drop it and answer with this ICMPv6 error to its source (see [`crate::icmp`]); the
    /// caller still applies the rate limit.
    Reject(IcmpErrorKind),
    /// Drop it silently.
    Drop(DropReason),
}

/// Why a packet was dropped; counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than an IPv6 header, or its payload length disagrees with the buffer.
    Malformed,
    /// Neither IPv6 nor IPv4 (the version nibble is something else).
    NotIpv6,
    /// Multicast destination: the mesh carries unicast only.
    Multicast,
    /// Unspecified, loopback or multicast source.
    BadSource,
    /// No route, and no ICMPv6 error may be sent about this packet.
    NoRoute,
    /// Hop limit exhausted, and no ICMPv6 error may be sent about this packet.
    HopLimitExceeded,
    /// Larger than the next link's MTU, and no ICMPv6 error may be sent about this packet.
    TooBig,
    /// An ICMPv6 error was due but the rate limit refused it.
    IcmpRateLimited,
    /// The packet came from the TUN and is addressed to this node: the kernel should have
    /// delivered it itself.
    Loop,
    /// The session to the next hop is gone.
    LinkDown,
    /// The next link's send queue is full.
    LinkCongested,
    /// The source address is not the ingress side's to use: from the TUN, a source this node
    /// does not own (not routed locally); from a link, one of this node's own addresses.
    Spoofed,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::NotIpv6,
        DropReason::Multicast,
        DropReason::BadSource,
        DropReason::NoRoute,
        DropReason::HopLimitExceeded,
        DropReason::TooBig,
        DropReason::IcmpRateLimited,
        DropReason::Loop,
        DropReason::LinkDown,
        DropReason::LinkCongested,
        DropReason::Spoofed,
    ];

    /// Returns a short, stable name for counters and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotIpv6 => "not_ipv6",
            DropReason::Multicast => "multicast",
            DropReason::BadSource => "bad_source",
            DropReason::NoRoute => "no_route",
            DropReason::HopLimitExceeded => "hop_limit_exceeded",
            DropReason::TooBig => "too_big",
            DropReason::IcmpRateLimited => "icmp_rate_limited",
            DropReason::Loop => "loop",
            DropReason::LinkDown => "link_down",
            DropReason::LinkCongested => "link_congested",
            DropReason::Spoofed => "spoofed",
        }
    }
}

/// Decides what to do with `packet`, which entered at `ingress`; decrements the hop limit in
/// place when the packet is forwarded to a link.
///
/// Rules, in order:
/// 1. malformed (shorter than 40 bytes, or payload length larger than the buffer) → drop;
///    not version 6 → drop; multicast destination → drop; bad source → drop;
///    source check ([`DropReason::Spoofed`]): from the TUN the source must route to
///    [`RouteTarget::Local`] (this node's address or an attached prefix), from a link it must
///    not;
/// 2. destination routes to [`RouteTarget::Local`]: from a link → deliver; from the TUN → drop
///    ([`DropReason::Loop`]);
/// 3. no route → reject with destination unreachable (no route) unless the packet is itself an
///    ICMPv6 error, then drop;
/// 4. packets from a link with hop limit ≤ 1 → time exceeded (same ICMPv6-error exception);
///    packets from the TUN are not decremented: the node and its host act as one host;
/// 5. longer than the link MTU → packet too big (same exception);
/// 6. forward.
///
/// IPv4 packets (version nibble 4) are decided by [`crate::forward4::decide_ipv4`] under the
/// same rules.
///
/// Details: an empty buffer is [`DropReason::Malformed`]; the version nibble is checked next,
/// so a short packet of another version counts as [`DropReason::NotIpv6`]. A buffer longer than 40 bytes +
/// payload length holds the packet in its first 40 + payload-length bytes, and that length is
/// what the MTU check sees. Jumbograms (payload length 0 with a hop-by-hop header) are
/// [`DropReason::Malformed`]. The buffer is modified only when the decision is
/// [`Decision::Forward`] from [`Ingress::Link`], and then only by decrementing byte 7 (the hop
/// limit) once; rejected and dropped packets are left intact for the ICMPv6 error.
///
/// Never allocates, locks or reads a clock.
pub fn decide(table: &ForwardingTable, packet: &mut [u8], ingress: Ingress) -> Decision {
    decide_segmented(table, packet, ingress, None)
}

/// Decides like [`decide`] for a packet that leaves as segments of at most `segment_len`
/// bytes each: a TCP or UDP super-packet the kernel handed over with segmentation offload
/// (TSO/USO), which the dataplane cuts into link-MTU packets. The MTU check (rule 5) then
/// applies to `segment_len` instead of the whole packet; `None` is [`decide`].
pub fn decide_segmented(
    table: &ForwardingTable,
    packet: &mut [u8],
    ingress: Ingress,
    segment_len: Option<usize>,
) -> Decision {
    let Some(&first) = packet.first() else {
        return Decision::Drop(DropReason::Malformed);
    };
    match first >> 4 {
        6 => {}
        4 => return crate::forward4::decide_ipv4(table, packet, ingress, segment_len),
        _ => return Decision::Drop(DropReason::NotIpv6),
    }
    let Some(header) = packet.get(..IPV6_HEADER_LEN) else {
        return Decision::Drop(DropReason::Malformed);
    };
    let payload_len = u16::from_be_bytes([header[4], header[5]]);
    let next_header = header[6];
    let hop_limit = header[7];
    if payload_len == 0 && next_header == 0 {
        // A jumbogram (RFC 2675): not supported.
        return Decision::Drop(DropReason::Malformed);
    }
    let len = IPV6_HEADER_LEN + usize::from(payload_len);
    if len > packet.len() {
        return Decision::Drop(DropReason::Malformed);
    }
    let Some((source, destination)) = addresses(packet) else {
        return Decision::Drop(DropReason::Malformed);
    };
    if destination.is_multicast() {
        return Decision::Drop(DropReason::Multicast);
    }
    if source.is_multicast() || source.is_unspecified() || source.is_loopback() {
        return Decision::Drop(DropReason::BadSource);
    }
    // BCP 38 at the mesh edge: the local host speaks only for this node's own addresses, and
    // nobody else may use them.
    let source_is_own = matches!(table.routes.lookup(source), Some((_, RouteTarget::Local)));
    if source_is_own != (ingress == Ingress::Tun) {
        return Decision::Drop(DropReason::Spoofed);
    }

    let (link, mtu) = match table.routes.lookup(destination) {
        Some((_, RouteTarget::Local)) => {
            return match ingress {
                Ingress::Link(_) => Decision::Deliver,
                Ingress::Tun => Decision::Drop(DropReason::Loop),
            };
        }
        Some((_, &RouteTarget::Link { link, mtu })) => (link, mtu),
        None => return reject_or_drop(packet, IcmpErrorKind::NoRoute, DropReason::NoRoute),
    };

    let from_link = matches!(ingress, Ingress::Link(_));
    if from_link && hop_limit <= 1 {
        return reject_or_drop(
            packet,
            IcmpErrorKind::HopLimitExceeded,
            DropReason::HopLimitExceeded,
        );
    }
    if segment_len.unwrap_or(len) > usize::from(mtu) {
        return reject_or_drop(
            packet,
            IcmpErrorKind::PacketTooBig { mtu },
            DropReason::TooBig,
        );
    }
    if from_link && let Some(hop) = packet.get_mut(7) {
        // hop_limit ≥ 2 here, so this cannot underflow.
        *hop = hop_limit - 1;
    }
    Decision::Forward { link }
}

/// Returns the error `kind` as a rejection, or a silent drop for `reason` if `packet` is itself
/// an ICMPv6 error (RFC 4443 §2.4 (e)).
fn reject_or_drop(packet: &[u8], kind: IcmpErrorKind, reason: DropReason) -> Decision {
    if icmp::is_icmpv6_error(packet) {
        Decision::Drop(reason)
    } else {
        Decision::Reject(kind)
    }
}

/// Returns the source and destination addresses of the IPv6 packet in `packet`, or `None` if it
/// is shorter than an IPv6 header (the version is not checked).
pub fn addresses(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let source: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
    let destination: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
    Some((Ipv6Addr::from(source), Ipv6Addr::from(destination)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    use connectopus_wire::Prefix;
    use proptest::prelude::*;

    use crate::icmp::tests::{a, icmp, ipv6, udp};

    const LOCAL_HOST: &str = "2001:db8:1::1";
    /// A source elsewhere in the mesh, for packets that arrive on a link.
    const FAR: &str = "2001:db8:77::7";
    const REMOTE: &str = "2001:db8:2::2";
    const REMOTE_SMALL: &str = "2001:db8:2:5::9";
    const UNROUTED: &str = "2001:db8:99::1";
    const L1: LinkId = LinkId(1);
    const L2: LinkId = LinkId(2);

    fn table() -> ForwardingTable {
        let mut routes = PrefixTable::new();
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        routes.insert(p("2001:db8:1::/48"), RouteTarget::Local);
        routes.insert(
            p("2001:db8:2::/48"),
            RouteTarget::Link {
                link: L1,
                mtu: 1400,
            },
        );
        routes.insert(
            p("2001:db8:2:5::/64"),
            RouteTarget::Link {
                link: L2,
                mtu: 1280,
            },
        );
        ForwardingTable {
            routes,
            node_address: Some(a("2001:db8:1::")),
            node_address4: None,
            generation: 1,
        }
    }

    /// Runs `decide` and checks the buffer is unchanged unless the packet was forwarded from a
    /// link, in which case exactly the hop limit went down by one.
    fn run(packet: &[u8], ingress: Ingress) -> Decision {
        let mut buf = packet.to_vec();
        let decision = decide(&table(), &mut buf, ingress);
        let decremented = matches!(
            (decision, ingress),
            (Decision::Forward { .. }, Ingress::Link(_))
        );
        let mut expected = packet.to_vec();
        if decremented {
            expected[7] -= 1;
        }
        assert_eq!(buf, expected, "buffer after {decision:?} from {ingress:?}");
        decision
    }

    fn from_link() -> Ingress {
        Ingress::Link(LinkId(7))
    }

    fn drop(reason: DropReason) -> Decision {
        Decision::Drop(reason)
    }

    #[test]
    fn malformed_and_not_ipv6() {
        assert_eq!(run(&[], from_link()), drop(DropReason::Malformed));
        let p = udp(a(LOCAL_HOST), a(REMOTE), 64, 100);
        assert_eq!(run(&p[..39], from_link()), drop(DropReason::Malformed));
        assert_eq!(run(&p[..1], Ingress::Tun), drop(DropReason::Malformed));
        // Payload length beyond the buffer.
        assert_eq!(run(&p[..99], from_link()), drop(DropReason::Malformed));
        // Jumbogram.
        let mut j = ipv6(a(LOCAL_HOST), a(REMOTE), 64, 0, &[]);
        j.extend([17, 0, 0xc2, 4, 0, 1, 0, 0]);
        assert_eq!(run(&j, from_link()), drop(DropReason::Malformed));

        // IPv4 goes to its own rules: a bad header is malformed there.
        let mut v4 = vec![0x45, 0, 0, 28];
        v4.resize(28, 0);
        assert_eq!(run(&v4, Ingress::Tun), drop(DropReason::Malformed));
        let mut v5 = p.clone();
        v5[0] = 0x55;
        assert_eq!(run(&v5, Ingress::Tun), drop(DropReason::NotIpv6));
        let mut v0 = p;
        v0[0] = 0x00;
        assert_eq!(run(&v0, from_link()), drop(DropReason::NotIpv6));
    }

    #[test]
    fn empty_payload_without_hop_by_hop_is_fine() {
        let p = ipv6(a(FAR), a(REMOTE), 64, 59, &[]);
        assert_eq!(run(&p, from_link()), Decision::Forward { link: L1 });
    }

    #[test]
    fn multicast_destination() {
        for dst in ["ff02::1", "ff0e::1234", "ff05::2"] {
            let p = udp(a(LOCAL_HOST), a(dst), 64, 100);
            assert_eq!(run(&p, Ingress::Tun), drop(DropReason::Multicast));
            assert_eq!(run(&p, from_link()), drop(DropReason::Multicast));
        }
    }

    #[test]
    fn bad_source() {
        for src in ["::", "::1", "ff02::1"] {
            let p = udp(a(src), a(REMOTE), 64, 100);
            assert_eq!(run(&p, Ingress::Tun), drop(DropReason::BadSource), "{src}");
            assert_eq!(run(&p, from_link()), drop(DropReason::BadSource), "{src}");
        }
    }

    #[test]
    fn local_destination() {
        let p = udp(a(REMOTE), a(LOCAL_HOST), 64, 100);
        assert_eq!(run(&p, from_link()), Decision::Deliver);
        let p = udp(a(LOCAL_HOST), a("2001:db8:1::2"), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), drop(DropReason::Loop));
        // Delivery is local: hop limit 1 or 0 does not matter.
        let p = udp(a(REMOTE), a(LOCAL_HOST), 1, 100);
        assert_eq!(run(&p, from_link()), Decision::Deliver);
        let p = udp(a(REMOTE), a(LOCAL_HOST), 0, 100);
        assert_eq!(run(&p, from_link()), Decision::Deliver);
    }

    #[test]
    fn no_route() {
        let p = udp(a(LOCAL_HOST), a(UNROUTED), 64, 100);
        assert_eq!(
            run(&p, Ingress::Tun),
            Decision::Reject(IcmpErrorKind::NoRoute)
        );
        let p = udp(a(FAR), a(UNROUTED), 64, 100);
        assert_eq!(
            run(&p, from_link()),
            Decision::Reject(IcmpErrorKind::NoRoute)
        );
        // Echo requests are not errors: reject, so the sender hears about it.
        let p = icmp(a(LOCAL_HOST), a(UNROUTED), 64, 128, 100);
        assert_eq!(
            run(&p, Ingress::Tun),
            Decision::Reject(IcmpErrorKind::NoRoute)
        );
        // No error about an error.
        let p = icmp(a(LOCAL_HOST), a(UNROUTED), 64, 1, 100);
        assert_eq!(run(&p, Ingress::Tun), drop(DropReason::NoRoute));
        let p = icmp(a(FAR), a(UNROUTED), 64, 1, 100);
        assert_eq!(run(&p, from_link()), drop(DropReason::NoRoute));
    }

    #[test]
    fn forward_from_link_decrements_once() {
        let p = udp(a(FAR), a(REMOTE), 64, 100);
        let mut buf = p.clone();
        assert_eq!(
            decide(&table(), &mut buf, from_link()),
            Decision::Forward { link: L1 }
        );
        assert_eq!(buf[7], 63);
        assert_eq!(buf[..7], p[..7]);
        assert_eq!(buf[8..], p[8..]);
        // Lowest hop limit that is still forwarded.
        let p = udp(a(FAR), a(REMOTE), 2, 100);
        let mut buf = p;
        assert_eq!(
            decide(&table(), &mut buf, from_link()),
            Decision::Forward { link: L1 }
        );
        assert_eq!(buf[7], 1);
    }

    #[test]
    fn forward_from_tun_does_not_decrement() {
        for hop in [0, 1, 64, 255] {
            let p = udp(a(LOCAL_HOST), a(REMOTE), hop, 100);
            let mut buf = p.clone();
            assert_eq!(
                decide(&table(), &mut buf, Ingress::Tun),
                Decision::Forward { link: L1 }
            );
            assert_eq!(buf, p);
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let p = udp(a(FAR), a(REMOTE_SMALL), 64, 100);
        assert_eq!(run(&p, from_link()), Decision::Forward { link: L2 });
        let p = udp(a(LOCAL_HOST), a(REMOTE_SMALL), 64, 1281);
        assert_eq!(
            run(&p, Ingress::Tun),
            Decision::Reject(IcmpErrorKind::PacketTooBig { mtu: 1280 })
        );
    }

    #[test]
    fn hop_limit_exceeded() {
        for hop in [0, 1] {
            let p = udp(a(FAR), a(REMOTE), hop, 100);
            assert_eq!(
                run(&p, from_link()),
                Decision::Reject(IcmpErrorKind::HopLimitExceeded)
            );
            // Traceroute probes: echo requests get their time-exceeded.
            let p = icmp(a(FAR), a(REMOTE), hop, 128, 100);
            assert_eq!(
                run(&p, from_link()),
                Decision::Reject(IcmpErrorKind::HopLimitExceeded)
            );
            let p = icmp(a(FAR), a(REMOTE), hop, 3, 100);
            assert_eq!(run(&p, from_link()), drop(DropReason::HopLimitExceeded));
        }
        // Hop limit comes before the MTU.
        let p = udp(a(FAR), a(REMOTE), 1, 1500);
        assert_eq!(
            run(&p, from_link()),
            Decision::Reject(IcmpErrorKind::HopLimitExceeded)
        );
    }

    #[test]
    fn packet_too_big_carries_link_mtu() {
        let p = udp(a(LOCAL_HOST), a(REMOTE), 64, 1401);
        let ptb = Decision::Reject(IcmpErrorKind::PacketTooBig { mtu: 1400 });
        assert_eq!(run(&p, Ingress::Tun), ptb);
        let p = udp(a(FAR), a(REMOTE), 64, 1401);
        assert_eq!(run(&p, from_link()), ptb);
        let p = udp(a(FAR), a(REMOTE), 64, 1400);
        assert_eq!(run(&p, from_link()), Decision::Forward { link: L1 });
        // No error about an error.
        let p = icmp(a(FAR), a(REMOTE), 64, 2, 1401);
        assert_eq!(run(&p, from_link()), drop(DropReason::TooBig));
        let p = icmp(a(FAR), a(REMOTE), 64, 128, 1401);
        assert_eq!(run(&p, from_link()), ptb);
    }

    #[test]
    fn a_super_packet_is_checked_by_its_segment_length() {
        // A 64 KB TSO packet whose segments fit the link is forwarded whole...
        let p = udp(a(LOCAL_HOST), a(REMOTE), 64, 60_000);
        let mut buf = p.clone();
        let fits = decide_segmented(&table(), &mut buf, Ingress::Tun, Some(1400));
        assert_eq!(fits, Decision::Forward { link: L1 });
        // ...and one whose segments do not gets Packet Too Big with the link's MTU.
        let mut buf = p.clone();
        let too_big = decide_segmented(&table(), &mut buf, Ingress::Tun, Some(1401));
        assert_eq!(
            too_big,
            Decision::Reject(IcmpErrorKind::PacketTooBig { mtu: 1400 })
        );
        // Without a segment length the whole packet counts, as in `decide`.
        let mut buf = p;
        let whole = decide_segmented(&table(), &mut buf, Ingress::Tun, None);
        assert_eq!(
            whole,
            Decision::Reject(IcmpErrorKind::PacketTooBig { mtu: 1400 })
        );
    }

    #[test]
    fn trailing_buffer_bytes_do_not_count_for_mtu() {
        let mut p = udp(a(FAR), a(REMOTE), 64, 1400);
        p.resize(2048, 0xaa);
        let mut buf = p.clone();
        assert_eq!(
            decide(&table(), &mut buf, from_link()),
            Decision::Forward { link: L1 }
        );
        assert_eq!(buf[7], 63);
        assert_eq!(buf[8..], p[8..]);
    }

    #[test]
    fn route_back_out_the_ingress_link_is_forwarded() {
        let p = udp(a(FAR), a(REMOTE), 64, 100);
        assert_eq!(run(&p, Ingress::Link(L1)), Decision::Forward { link: L1 });
    }

    #[test]
    fn every_reachable_drop_reason_is_produced() {
        let mut v7 = udp(a(LOCAL_HOST), a(REMOTE), 64, 100);
        v7[0] = 0x75;
        let cases: Vec<(Vec<u8>, Ingress)> = vec![
            (vec![0x60; 20], from_link()),
            (v7, Ingress::Tun),
            (udp(a(LOCAL_HOST), a("ff02::1"), 64, 100), from_link()),
            (udp(a("::"), a(REMOTE), 64, 100), from_link()),
            (icmp(a(FAR), a(UNROUTED), 64, 1, 100), from_link()),
            (icmp(a(FAR), a(REMOTE), 1, 3, 100), from_link()),
            (icmp(a(FAR), a(REMOTE), 64, 2, 1500), from_link()),
            (udp(a(LOCAL_HOST), a(LOCAL_HOST), 64, 100), Ingress::Tun),
            (udp(a(REMOTE), a(REMOTE_SMALL), 64, 100), Ingress::Tun),
        ];
        let produced: BTreeSet<DropReason> = cases
            .iter()
            .filter_map(|(p, ingress)| match run(p, *ingress) {
                Decision::Drop(r) => Some(r),
                _ => None,
            })
            .collect();
        // The rate limit, session state and send queues are the caller's business.
        let expected: BTreeSet<DropReason> = DropReason::ALL
            .into_iter()
            .filter(|r| {
                !matches!(
                    r,
                    DropReason::IcmpRateLimited | DropReason::LinkDown | DropReason::LinkCongested
                )
            })
            .collect();
        assert_eq!(produced, expected);
    }

    #[test]
    fn spoofed_sources_are_dropped_at_the_mesh_edge() {
        // From the TUN: only this node's own addresses (routed locally) may be sources.
        for src in [REMOTE, REMOTE_SMALL, UNROUTED, FAR] {
            let p = udp(a(src), a(REMOTE), 64, 100);
            assert_eq!(run(&p, Ingress::Tun), drop(DropReason::Spoofed), "{src}");
        }
        let p = udp(a("2001:db8:1:ffff::9"), a(REMOTE), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), Decision::Forward { link: L1 });
        // From a link: never one of this node's own addresses, whatever the destination.
        for dst in [REMOTE, LOCAL_HOST, UNROUTED] {
            let p = udp(a(LOCAL_HOST), a(dst), 64, 100);
            assert_eq!(run(&p, from_link()), drop(DropReason::Spoofed), "{dst}");
        }
        // The source check comes after the bad-source and multicast checks.
        let p = udp(a(REMOTE), a("ff02::1"), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), drop(DropReason::Multicast));
        // With an empty table the TUN owns nothing.
        let mut p = udp(a(LOCAL_HOST), a(REMOTE), 64, 100);
        assert_eq!(
            decide(&ForwardingTable::default(), &mut p, Ingress::Tun),
            drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn addresses_reads_source_and_destination() {
        let p = udp(a(LOCAL_HOST), a(REMOTE), 64, 100);
        assert_eq!(addresses(&p), Some((a(LOCAL_HOST), a(REMOTE))));
        assert_eq!(addresses(&p[..39]), None);
    }

    fn target() -> impl Strategy<Value = RouteTarget> {
        prop_oneof![
            Just(RouteTarget::Local),
            (0u64..4, 0u16..1600).prop_map(|(l, mtu)| RouteTarget::Link {
                link: LinkId(l),
                mtu
            }),
        ]
    }

    /// The first address byte: mostly one of two values, so routes often match.
    fn top() -> impl Strategy<Value = u8> {
        prop_oneof![Just(0x20u8), Just(0x30), any::<u8>()]
    }

    fn ingress() -> impl Strategy<Value = Ingress> {
        prop_oneof![
            Just(Ingress::Tun),
            (0u64..4).prop_map(|l| Ingress::Link(LinkId(l)))
        ]
    }

    proptest! {
        #[test]
        fn decide_never_panics_and_only_decrements(
            routes in proptest::collection::vec((top(), 0u8..=12, target()), 0..5),
            mut bytes in proptest::collection::vec(any::<u8>(), 0..1700),
            fix_header in proptest::bool::weighted(0.9),
            shrink in prop_oneof![Just(0usize), 0usize..64],
            dst_top in top(),
            src_top in top(),
            hop in prop_oneof![0u8..3, any::<u8>()],
            ingress in ingress(),
        ) {
            let mut table = ForwardingTable::default();
            for (top, len, target) in routes {
                let prefix = Prefix::new_truncating(Ipv6Addr::from(u128::from(top) << 120), len)
                    .unwrap();
                table.routes.insert(prefix, target);
            }
            // Mostly well-formed headers, so that every rule gets exercised.
            if fix_header && bytes.len() >= 40 {
                bytes[0] = 0x60 | (bytes[0] & 0x0f);
                let payload = u16::try_from((bytes.len() - 40).saturating_sub(shrink)).unwrap();
                bytes[4..6].copy_from_slice(&payload.to_be_bytes());
                bytes[7] = hop;
                bytes[8] = src_top;
                bytes[24] = dst_top;
            }
            // IPv4 has its own rules and property test (crate::forward4).
            if bytes.first().is_some_and(|b| b >> 4 == 4) {
                bytes[0] = 0x75;
            }
            let original = bytes.clone();
            let decision = decide(&table, &mut bytes, ingress);
            // Whatever passes has a source its ingress may use.
            if let (Decision::Forward { .. } | Decision::Deliver | Decision::Reject(_), Some((src, _))) =
                (decision, addresses(&original))
            {
                let own = matches!(table.routes.lookup(src), Some((_, RouteTarget::Local)));
                prop_assert_eq!(own, ingress == Ingress::Tun, "{:?} from {:?}", decision, ingress);
            }
            prop_assert_eq!(bytes.len(), original.len());
            for (i, (after, before)) in bytes.iter().zip(&original).enumerate() {
                if i != 7 {
                    prop_assert_eq!(after, before);
                }
            }
            if bytes.len() > 7 && bytes[7] != original[7] {
                prop_assert_eq!(bytes[7], original[7] - 1);
                prop_assert!(matches!(decision, Decision::Forward { .. }), "{:?}", decision);
                prop_assert!(matches!(ingress, Ingress::Link(_)), "{:?}", ingress);
            } else if let (Decision::Forward { .. }, Ingress::Link(_)) = (decision, ingress) {
                prop_assert!(false, "forwarded from a link without decrement");
            }
        }
    }
}
