//! The per-packet forwarding decision.
//!
//! [`decide`] is a pure function over a [`ForwardingTable`] snapshot and one packet buffer:
//! it never allocates, locks or reads a clock, so the io_uring dataplane threads call it
//! directly on their pooled buffers, and the core calls the same function in the simulator.
//! ICMPv6 errors are built by [`crate::icmp`] when the decision asks for one.

use std::net::Ipv6Addr;

use crate::LinkId;
use crate::icmp::IcmpErrorKind;
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
pub fn decide(table: &ForwardingTable, packet: &mut [u8], ingress: Ingress) -> Decision {
    let _ = (table, packet, ingress);
    todo!("forward: decide")
}
