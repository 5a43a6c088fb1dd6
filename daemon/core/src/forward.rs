//! The per-packet forwarding decision.
//!
//! [`decide`] is a pure function over a [`ForwardingTable`] snapshot and one packet buffer:
//! it never allocates, locks or reads a clock, so the io_uring dataplane threads call it
//! directly on their pooled buffers, and the core calls the same function in the simulator.
//! ICMPv6 errors are built by [`crate::icmp`] when the decision asks for one.

use std::net::Ipv6Addr;

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
    /// Not IPv6 (for example IPv4 from a namespace's default route).
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
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
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
        }
    }
}

/// Decides what to do with `packet`, which entered at `ingress`; decrements the hop limit in
/// place when the packet is forwarded to a link.
///
/// Rules, in order:
/// 1. malformed (shorter than 40 bytes, or payload length larger than the buffer) → drop;
///    not version 6 → drop; multicast destination → drop; bad source → drop;
/// 2. destination routes to [`RouteTarget::Local`]: from a link → deliver; from the TUN → drop
///    ([`DropReason::Loop`]);
/// 3. no route → reject with destination unreachable (no route) unless the packet is itself an
///    ICMPv6 error, then drop;
/// 4. packets from a link with hop limit ≤ 1 → time exceeded (same ICMPv6-error exception);
///    packets from the TUN are not decremented: the node and its host act as one host;
/// 5. longer than the link MTU → packet too big (same exception);
/// 6. forward.
///
/// Details: an empty buffer is [`DropReason::Malformed`]; the version nibble is checked next,
/// so a short IPv4 packet counts as [`DropReason::NotIpv6`]. A buffer longer than 40 bytes +
/// payload length holds the packet in its first 40 + payload-length bytes, and that length is
/// what the MTU check sees. Jumbograms (payload length 0 with a hop-by-hop header) are
/// [`DropReason::Malformed`]. The buffer is modified only when the decision is
/// [`Decision::Forward`] from [`Ingress::Link`], and then only by decrementing byte 7 (the hop
/// limit) once; rejected and dropped packets are left intact for the ICMPv6 error.
///
/// Never allocates, locks or reads a clock.
pub fn decide(table: &ForwardingTable, packet: &mut [u8], ingress: Ingress) -> Decision {
    let Some(&first) = packet.first() else {
        return Decision::Drop(DropReason::Malformed);
    };
    if first >> 4 != 6 {
        return Decision::Drop(DropReason::NotIpv6);
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
    if len > usize::from(mtu) {
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
