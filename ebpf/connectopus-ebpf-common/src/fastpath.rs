//! The fast path's shared vocabulary: program and map names, the `#[repr(C)]` map keys and
//! values, the per-reason counter indices, and the pure classification rules both sides (and the
//! host tests) use.
//!
//! Wire format (the plaintext `udp-dialer` / `udp-listener` link): one UDP socket per link; a
//! data datagram is exactly one raw inner IPv6 packet (first nibble 6, inner
//! `payload_len + 40 == UDP payload length`); a control datagram starts with a byte below 0x60
//! and always goes to userspace.
//!
//! Byte order: addresses are the 16 bytes of the IPv6 address as on the wire; ports are kept as
//! their two wire bytes (`[u8; 2]`, big-endian) so that neither side ever converts at run time.

/// tc (TCX) egress program on the TUN: encapsulates and redirects to the underlay.
pub const PROG_FP_TUN_EGRESS: &str = "cx_fp_tun_eg";
/// tc (TCX) ingress program on each underlay interface: decapsulates into the TUN, or rewrites
/// and redirects to the next underlay (transit).
pub const PROG_FP_UNDERLAY_INGRESS: &str = "cx_fp_ul_in";

/// LPM trie: inner IPv6 prefix (`Key<[u8; 16]>`) → [`Route`].
pub const MAP_FP_ROUTES: &str = "CX_FP_ROUTES";
/// Hash: [`LinkKey`] (outer source address and port, outer destination address and port) →
/// [`Peer`].
pub const MAP_FP_PEERS: &str = "CX_FP_PEERS";
/// Hash: local UDP port (wire bytes) → 1: the ports this node's udp links listen on.
pub const MAP_FP_LOCAL_PORTS: &str = "CX_FP_PORTS";
/// Array of one [`FpConfig`].
pub const MAP_FP_CONFIG: &str = "CX_FP_CONFIG";
/// Per-CPU array of `u64`, indexed by [`Reason::index`].
pub const MAP_FP_REASONS: &str = "CX_FP_REASONS";
/// Per-CPU array of [`LinkCounter`], indexed by link slot.
pub const MAP_FP_LINKS: &str = "CX_FP_LINKS";

/// Capacity of [`MAP_FP_ROUTES`].
pub const MAX_ROUTES: u32 = 16_384;
/// Capacity of [`MAP_FP_PEERS`].
pub const MAX_PEERS: u32 = 4_096;
/// Capacity of [`MAP_FP_LOCAL_PORTS`].
pub const MAX_LOCAL_PORTS: u32 = 256;
/// Link slots in [`MAP_FP_LINKS`]: a link's slot must be below this.
pub const MAX_LINK_SLOTS: u32 = 1_024;

/// Outer Ethernet (14) + IPv6 (40) + UDP (8) header: what egress writes in front of the inner
/// packet.
pub const OUTER_LEN: u32 = 62;
/// The part of [`OUTER_LEN`] that `bpf_skb_adjust_room` inserts (IPv6 + UDP).
pub const ENCAP_LEN: u32 = 48;
/// Ethernet header length.
pub const ETH_LEN: u32 = 14;
/// Hop limit of the outer IPv6 header (Linux's default for unicast sockets).
pub const OUTER_HOP_LIMIT: u8 = 64;

/// `Route::flags`: the prefix is this node's own (ingress decapsulates it into the TUN; egress
/// never sees it, and passes it to userspace if it does).
pub const ROUTE_LOCAL: u32 = 1;
/// `Route::flags`: the prefix is served by the daemon itself (its control plane, DNS, …):
/// both programs pass such packets to userspace untouched.
pub const ROUTE_USERSPACE: u32 = 2;

/// Value of [`MAP_FP_ROUTES`]: where packets for an inner prefix go.
///
/// For a prefix reached over a udp link: the link's underlay source and destination address and
/// UDP ports, the underlay interface, and the link's counter slot. Egress encapsulates towards
/// `dst`/`dport` from `src`/`sport`; a transit node rewrites an arriving outer header to the
/// same. The neighbour's MAC is not here: the programs ask `bpf_fib_lookup` every time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Route {
    /// Underlay source address (this node's end of the link).
    pub src: [u8; 16],
    /// Underlay destination address (the peer's end).
    pub dst: [u8; 16],
    /// UDP source port, wire bytes.
    pub sport: [u8; 2],
    /// UDP destination port, wire bytes.
    pub dport: [u8; 2],
    /// Underlay interface index (the FIB lookup's output interface).
    pub ifindex: u32,
    /// Index in [`MAP_FP_LINKS`].
    pub link_slot: u32,
    /// [`ROUTE_LOCAL`], [`ROUTE_USERSPACE`], or 0 for a link.
    pub flags: u32,
}

impl Route {
    /// A prefix reached over a udp link.
    pub const fn link(
        src: [u8; 16],
        sport: u16,
        dst: [u8; 16],
        dport: u16,
        ifindex: u32,
        link_slot: u32,
    ) -> Route {
        Route {
            src,
            dst,
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            ifindex,
            link_slot,
            flags: 0,
        }
    }

    /// A prefix of this node: ingress decapsulates it into the TUN.
    pub const fn local() -> Route {
        Route {
            src: [0; 16],
            dst: [0; 16],
            sport: [0; 2],
            dport: [0; 2],
            ifindex: 0,
            link_slot: 0,
            flags: ROUTE_LOCAL,
        }
    }

    /// A prefix the daemon serves itself: always to userspace.
    pub const fn userspace() -> Route {
        Route {
            flags: ROUTE_USERSPACE,
            ..Route::local()
        }
    }

    /// Returns whether packets for this prefix go to userspace in both directions.
    #[inline(always)]
    pub const fn is_userspace(&self) -> bool {
        self.flags & ROUTE_USERSPACE != 0
    }

    /// Returns whether this prefix is this node's own.
    #[inline(always)]
    pub const fn is_local(&self) -> bool {
        self.flags & ROUTE_LOCAL != 0
    }
}

/// Key of [`MAP_FP_PEERS`]: the outer 4-tuple of a link's data datagrams.
///
/// The outer source address and port identify the peer's socket; the outer destination
/// address and port are this node's end of the link: the address the peer sends to (ingress
/// sees every frame the interface receives, also those for other hosts or other addresses of
/// this one, and decapsulates none of them), and the port that tells links apart that share a
/// peer socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct LinkKey {
    /// The peer's underlay address (outer IPv6 source).
    pub addr: [u8; 16],
    /// This node's underlay address for the link (outer IPv6 destination).
    pub local_addr: [u8; 16],
    /// The peer's UDP port (outer source port), wire bytes.
    pub port: [u8; 2],
    /// Our UDP port (outer destination port), wire bytes.
    pub local_port: [u8; 2],
}

impl LinkKey {
    /// The key for datagrams from `addr`:`port` to our `local_addr`:`local_port`.
    pub const fn new(addr: [u8; 16], port: u16, local_addr: [u8; 16], local_port: u16) -> LinkKey {
        LinkKey {
            addr,
            local_addr,
            port: port.to_be_bytes(),
            local_port: local_port.to_be_bytes(),
        }
    }
}

/// Value of [`MAP_FP_PEERS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Peer {
    /// The link's index in [`MAP_FP_LINKS`] (received packets count there).
    pub link_slot: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// The one value of [`MAP_FP_CONFIG`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpConfig {
    /// The TUN's interface index: decapsulated packets are redirected into its ingress. 0 (not
    /// set) makes ingress pass everything to userspace.
    pub tun_ifindex: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// Packet and byte counters of one link slot, both directions (per CPU in the map).
///
/// Bytes are inner IPv6 packet bytes (no outer header); a GSO super-packet counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LinkCounter {
    /// Packets the fast path sent on the link (encapsulated, or transit out).
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Packets the fast path took from the link (decapsulated, or transit in).
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
}

impl LinkCounter {
    /// Counts one sent packet of `len` inner bytes.
    #[inline(always)]
    pub fn record_tx(&mut self, len: u32) {
        self.tx_packets = self.tx_packets.wrapping_add(1);
        self.tx_bytes = self.tx_bytes.wrapping_add(u64::from(len));
    }

    /// Counts one received packet of `len` inner bytes.
    #[inline(always)]
    pub fn record_rx(&mut self, len: u32) {
        self.rx_packets = self.rx_packets.wrapping_add(1);
        self.rx_bytes = self.rx_bytes.wrapping_add(u64::from(len));
    }
}

/// Element-wise wrapping sum (per-CPU values add up to the total).
impl core::ops::Add for LinkCounter {
    type Output = LinkCounter;

    #[inline(always)]
    fn add(self, o: LinkCounter) -> LinkCounter {
        LinkCounter {
            tx_packets: self.tx_packets.wrapping_add(o.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(o.tx_bytes),
            rx_packets: self.rx_packets.wrapping_add(o.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(o.rx_bytes),
        }
    }
}

impl core::iter::Sum for LinkCounter {
    fn sum<I: Iterator<Item = LinkCounter>>(iter: I) -> LinkCounter {
        iter.fold(LinkCounter::default(), core::ops::Add::add)
    }
}

/// Why a program left a packet to userspace (or, rarely, for the `*_fail` reasons, dropped it): one
/// per-CPU `u64` each in [`MAP_FP_REASONS`]. Every fall-back decision has one, so that "why is
/// this flow not on the fast path" is always answerable from the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// Egress: no route entry for the inner destination.
    EgMiss = 0,
    /// Egress: the entry is local or served by the daemon.
    EgUserspace,
    /// Egress: not an IPv6 packet, or its length disagrees with the skb.
    EgNotIpv6,
    /// Egress: inner hop limit ≤ 1.
    EgHopLimit,
    /// Egress: ICMPv6 error or neighbour discovery (the daemon handles them).
    EgIcmp,
    /// Egress: a hop-by-hop options header (MLD, router alert, jumbograms).
    EgHopByHop,
    /// Egress: `bpf_fib_lookup` found no usable route to the underlay destination (also when
    /// IPv6 forwarding is off on the underlay interface).
    EgNoFib,
    /// Egress: the underlay neighbour is not resolved yet (userspace's send resolves it).
    EgNoNeigh,
    /// Egress: a non-GSO packet too big for the underlay MTU with the 48-byte encapsulation.
    EgTooBig,
    /// Egress: a helper failed (`adjust_room`, `change_head`): the packet went to userspace if
    /// it was still unchanged, and was dropped otherwise.
    EgFail,
    /// Ingress: a control datagram (first byte below 0x60).
    InCtrl,
    /// Ingress: a datagram that is neither control nor IPv6 (first nibble 7 or more), or too
    /// short for an inner IPv6 header.
    InNotData,
    /// Ingress: from an address and port that is no fast-path peer of this port.
    InUnknownPeer,
    /// Ingress: the lengths disagree (a UDP GRO/GSO aggregate, or a malformed datagram): never
    /// decapsulated as one packet.
    InGroAgg,
    /// Ingress: no route entry for the inner destination.
    InNoRoute,
    /// Ingress: the inner destination is served by the daemon.
    InUserspace,
    /// Ingress: no TUN configured to decapsulate into.
    InNoTun,
    /// Ingress: a helper failed (`adjust_room`, a rewrite): the packet went to userspace if it
    /// was still unchanged, and was dropped otherwise.
    InFail,
    /// Transit: inner hop limit ≤ 1 (the daemon sends Time Exceeded).
    TrHopLimit,
    /// Transit: `bpf_fib_lookup` found no usable route to the next underlay destination.
    TrNoFib,
    /// Transit: the next underlay neighbour is not resolved yet.
    TrNoNeigh,
    /// Transit: too big for the next underlay's MTU.
    TrTooBig,
    /// Egress: the inner source is not one of this node's prefixes (no `ROUTE_LOCAL` entry):
    /// the daemon's spoofing check decides.
    EgSource,
    /// Egress: multicast inner destination.
    EgMulticast,
    /// Ingress and transit: the inner source is one of this node's own prefixes (spoofed, or
    /// looped), or can be no source at all (multicast, `::`, `::1`): the daemon decides.
    InSource,
    /// Ingress and transit: multicast inner destination.
    InMulticast,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 26] = [
        Reason::EgMiss,
        Reason::EgUserspace,
        Reason::EgNotIpv6,
        Reason::EgHopLimit,
        Reason::EgIcmp,
        Reason::EgHopByHop,
        Reason::EgNoFib,
        Reason::EgNoNeigh,
        Reason::EgTooBig,
        Reason::EgFail,
        Reason::InCtrl,
        Reason::InNotData,
        Reason::InUnknownPeer,
        Reason::InGroAgg,
        Reason::InNoRoute,
        Reason::InUserspace,
        Reason::InNoTun,
        Reason::InFail,
        Reason::TrHopLimit,
        Reason::TrNoFib,
        Reason::TrNoNeigh,
        Reason::TrTooBig,
        Reason::EgSource,
        Reason::EgMulticast,
        Reason::InSource,
        Reason::InMulticast,
    ];

    /// Entries in [`MAP_FP_REASONS`].
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Returns the index in [`MAP_FP_REASONS`].
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Returns the counter's name, as `status` and the docs spell it (`eg_miss`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::EgMiss => "eg_miss",
            Reason::EgUserspace => "eg_userspace",
            Reason::EgNotIpv6 => "eg_not_ipv6",
            Reason::EgHopLimit => "eg_hlim",
            Reason::EgIcmp => "eg_icmp",
            Reason::EgHopByHop => "eg_hopbyhop",
            Reason::EgNoFib => "eg_nofib",
            Reason::EgNoNeigh => "eg_noneigh",
            Reason::EgTooBig => "eg_toobig",
            Reason::EgFail => "eg_fail",
            Reason::InCtrl => "in_ctrl",
            Reason::InNotData => "in_notdata",
            Reason::InUnknownPeer => "in_unknown_peer",
            Reason::InGroAgg => "in_groagg",
            Reason::InNoRoute => "in_noroute",
            Reason::InUserspace => "in_userspace",
            Reason::InNoTun => "in_notun",
            Reason::InFail => "in_fail",
            Reason::TrHopLimit => "tr_hlim",
            Reason::TrNoFib => "tr_nofib",
            Reason::TrNoNeigh => "tr_noneigh",
            Reason::TrTooBig => "tr_toobig",
            Reason::EgSource => "eg_source",
            Reason::EgMulticast => "eg_multicast",
            Reason::InSource => "in_source",
            Reason::InMulticast => "in_multicast",
        }
    }
}

/// The length of the link-layer header in front of an IPv6 packet at tc egress, from the skb's
/// length and the IPv6 payload length: 0 on the TUN (no L2 header), 14 on an Ethernet device
/// (and in `BPF_PROG_TEST_RUN`, which always builds an Ethernet frame). `None` for anything
/// else: a length mismatch the fast path does not handle (a jumbogram, padding, garbage).
#[inline(always)]
pub const fn egress_l2_len(skb_len: u32, payload_len: u16) -> Option<u32> {
    let ip_len = 40 + payload_len as u32;
    if skb_len == ip_len {
        Some(0)
    } else if skb_len == ip_len + ETH_LEN {
        Some(ETH_LEN)
    } else {
        None
    }
}

/// Whether an outgoing ICMPv6 message of this type goes to userspace rather than the fast
/// path: errors (types below 128: the daemon builds and relays those) and neighbour discovery
/// and router messages (133–137: link-local business). Echo request and reply (128, 129) and
/// other informational types take the fast path.
#[inline(always)]
pub const fn icmpv6_to_userspace(icmp_type: u8) -> bool {
    icmp_type < 128 || (icmp_type >= 133 && icmp_type <= 137)
}

/// Whether `addr` can never be a packet's source (the core drops such packets as
/// `bad_source`): multicast, unspecified (`::`) or loopback (`::1`).
#[inline(always)]
pub const fn is_bad_source(addr: &[u8; 16]) -> bool {
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    is_bad_source_halves(high, low)
}

/// [`is_bad_source`] of the address whose big-endian halves are `high` and `low` (what the
/// programs read from the packet, two loads instead of a 16-byte copy).
#[inline(always)]
pub const fn is_bad_source_halves(high: u64, low: u64) -> bool {
    high >> 56 == 0xff || (high == 0 && low <= 1)
}

/// What the first payload byte of a datagram to a fast-path port says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A control message (first byte below 0x60): userspace.
    Control,
    /// A data message: one raw inner IPv6 packet (first nibble 6).
    Data,
    /// Neither (first nibble 7 or more): userspace, which rejects it.
    Other,
}

/// Classifies a datagram by its first payload byte.
#[inline(always)]
pub const fn datagram_kind(first_byte: u8) -> DatagramKind {
    if first_byte < 0x60 {
        DatagramKind::Control
    } else if first_byte >> 4 == 6 {
        DatagramKind::Data
    } else {
        DatagramKind::Other
    }
}

/// The one-packet-per-datagram guard of ingress: the outer IPv6 payload length, the UDP length,
/// the skb length (with its 14-byte Ethernet header) and the inner packet's payload length must
/// all describe the same single packet. A UDP GRO/GSO aggregate (whose UDP length is the total
/// while the first inner packet covers only itself) fails it, as does anything malformed.
#[inline(always)]
pub const fn one_packet_per_datagram(
    skb_len: u32,
    outer_payload_len: u16,
    udp_len: u16,
    inner_payload_len: u16,
) -> bool {
    let udp_len = udp_len as u32;
    outer_payload_len as u32 == udp_len
        && udp_len + ETH_LEN + 40 == skb_len
        && inner_payload_len as u32 + ENCAP_LEN == udp_len
}

// SAFETY (all four): `#[repr(C)]`, `Copy`, made only of integers and byte arrays laid out with
// no padding (checked by `layouts_have_no_padding`), so every bit pattern is a valid value,
// which is what `aya::Pod` requires.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Route {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LinkKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Peer {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FpConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LinkCounter {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Route>(), 16 + 16 + 2 + 2 + 4 + 4 + 4);
        assert_eq!(size_of::<LinkKey>(), 16 + 16 + 2 + 2);
        assert_eq!(size_of::<Peer>(), 8);
        assert_eq!(size_of::<FpConfig>(), 8);
        assert_eq!(size_of::<LinkCounter>(), 32);
    }

    #[test]
    fn ports_are_stored_as_wire_bytes() {
        let r = Route::link([1; 16], 4500, [2; 16], 0x1234, 7, 3);
        assert_eq!(r.sport, [0x11, 0x94]);
        assert_eq!(r.dport, [0x12, 0x34]);
        assert_eq!((r.ifindex, r.link_slot, r.flags), (7, 3, 0));
        assert!(!r.is_local() && !r.is_userspace());
        let k = LinkKey::new([3; 16], 4501, [4; 16], 4500);
        assert_eq!((k.port, k.local_port), ([0x11, 0x95], [0x11, 0x94]));
        assert_eq!((k.addr, k.local_addr), ([3; 16], [4; 16]));
        assert!(Route::local().is_local() && !Route::local().is_userspace());
        assert!(Route::userspace().is_userspace());
    }

    #[test]
    fn reasons_are_indexed_in_order_with_unique_names() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index() as usize, i);
            for other in &Reason::ALL[..i] {
                assert_ne!(reason.as_str(), other.as_str());
            }
        }
        assert_eq!(Reason::COUNT, 26);
    }

    #[test]
    fn l2_length_comes_from_the_ipv6_payload_length() {
        assert_eq!(egress_l2_len(1400, 1360), Some(0));
        assert_eq!(egress_l2_len(1414, 1360), Some(14));
        assert_eq!(egress_l2_len(1401, 1360), None);
        assert_eq!(egress_l2_len(64_000, 0), None, "jumbogram");
    }

    #[test]
    fn icmpv6_errors_and_nd_go_to_userspace_echo_does_not() {
        for t in [1, 2, 3, 4, 127, 133, 134, 135, 136, 137] {
            assert!(icmpv6_to_userspace(t), "type {t}");
        }
        for t in [128, 129, 130, 143, 138, 255] {
            assert!(!icmpv6_to_userspace(t), "type {t}");
        }
    }

    #[test]
    fn bad_sources_are_multicast_unspecified_and_loopback() {
        let addr = |s: &str| s.parse::<core::net::Ipv6Addr>().unwrap().octets();
        for bad in ["::", "::1", "ff02::1", "ff0e::5"] {
            assert!(is_bad_source(&addr(bad)), "{bad}");
        }
        for good in ["::2", "fd00::1", "2001:db8::1", "fe80::1", "::ffff:1.2.3.4"] {
            assert!(!is_bad_source(&addr(good)), "{good}");
        }
    }

    #[test]
    fn datagram_kinds() {
        assert_eq!(datagram_kind(0x00), DatagramKind::Control);
        assert_eq!(datagram_kind(0x5f), DatagramKind::Control);
        assert_eq!(datagram_kind(0x60), DatagramKind::Data);
        assert_eq!(datagram_kind(0x6f), DatagramKind::Data);
        assert_eq!(datagram_kind(0x70), DatagramKind::Other);
        assert_eq!(datagram_kind(0xff), DatagramKind::Other);
    }

    #[test]
    fn one_packet_guard_rejects_aggregates() {
        // 1400-byte inner packet: UDP 1408, outer payload 1408, skb 1408 + 54.
        assert!(one_packet_per_datagram(1462, 1408, 1408, 1360));
        // A GRO aggregate of three: lengths cover all, the first inner packet only itself.
        assert!(!one_packet_per_datagram(
            54 + 3 * 1408,
            3 * 1408,
            3 * 1408,
            1360
        ));
        // Trailing bytes after the inner packet.
        assert!(!one_packet_per_datagram(1463, 1409, 1409, 1360));
        // Outer payload length disagreeing with UDP's.
        assert!(!one_packet_per_datagram(1462, 1400, 1408, 1360));
    }

    #[test]
    fn link_counters_add_per_direction() {
        let mut a = LinkCounter::default();
        a.record_tx(100);
        a.record_rx(50);
        let mut b = LinkCounter::default();
        b.record_tx(1);
        let total: LinkCounter = [a, b].into_iter().sum();
        assert_eq!(
            total,
            LinkCounter {
                tx_packets: 2,
                tx_bytes: 101,
                rx_packets: 1,
                rx_bytes: 50
            }
        );
    }
}
