//! The per-packet forwarding decision for IPv4 packets.
//!
//! IPv4 routes live in the same [`crate::route::PrefixTable`] as IPv6 ones, as IPv4-mapped
//! IPv6 prefixes (`::ffff:198.18.0.0/111` for `198.18.0.0/15`), so one table, one lookup and
//! one routing computation serve both families. [`decide_ipv4`] follows the IPv6 rules of
//! [`crate::forward::decide_segmented`] with IPv4's header: TTL instead of hop limit (with the
//! header checksum updated incrementally, RFC 1624), ICMPv4 errors ([`crate::icmp4`]) and the
//! don't-fragment bit.
//!
//! The mesh never fragments. A packet larger than the next link's MTU is answered with
//! "fragmentation needed" carrying that MTU whether DF is set or not: with DF the sender
//! lowers its path MTU (RFC 1191); without DF a Linux sender caches the same MTU and fragments
//! at the source from then on, so only the first oversized packet is lost.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::forward::{Decision, DropReason, ForwardingTable, Ingress, RouteTarget};
use crate::icmp::IcmpErrorKind;
use crate::icmp4::{self, IPV4_HEADER_LEN};

/// Returns the IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) under which IPv4 routes are kept.
#[inline]
pub fn mapped(addr: Ipv4Addr) -> Ipv6Addr {
    addr.to_ipv6_mapped()
}

/// Decides what to do with the IPv4 `packet` (version nibble already 4); see the module docs.
///
/// Rules, in order: malformed (shorter than its header, header length below 20 bytes, total
/// length beyond the buffer, bad header checksum) → drop; multicast or limited-broadcast
/// destination → drop; unspecified, loopback, multicast or broadcast source → drop; the
/// source check of IPv6 ([`DropReason::Spoofed`]); local destination → deliver from a link,
/// [`DropReason::Loop`] from the TUN; no route → destination unreachable; from a link with
/// TTL ≤ 1 → time exceeded; `segment_len` (or the total length) above the link MTU →
/// fragmentation needed with the MTU; forward. No ICMPv4 error is sent about an ICMPv4 error
/// or a non-first fragment ([`icmp4::is_no_error_about`]): those are dropped silently.
///
/// The buffer changes only for [`Decision::Forward`] from a link: the TTL (byte 8) goes down
/// by one and the header checksum (bytes 10–11) is updated to match.
pub fn decide_ipv4(
    table: &ForwardingTable,
    packet: &mut [u8],
    ingress: Ingress,
    segment_len: Option<usize>,
) -> Decision {
    let Some(header) = packet.get(..IPV4_HEADER_LEN) else {
        return Decision::Drop(DropReason::Malformed);
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let ttl = header[8];
    let stored_checksum = u16::from_be_bytes([header[10], header[11]]);
    let source = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let destination = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    if header_len < IPV4_HEADER_LEN || total < header_len || total > packet.len() {
        return Decision::Drop(DropReason::Malformed);
    }
    match packet.get(..header_len) {
        Some(full) if icmp4::header_checksum(full) == stored_checksum => {}
        _ => return Decision::Drop(DropReason::Malformed),
    }
    if destination.is_multicast() || destination.is_broadcast() {
        return Decision::Drop(DropReason::Multicast);
    }
    if source.is_multicast()
        || source.is_unspecified()
        || source.is_loopback()
        || source.is_broadcast()
    {
        return Decision::Drop(DropReason::BadSource);
    }
    let source_is_own = matches!(
        table.routes.lookup(mapped(source)),
        Some((_, RouteTarget::Local))
    );
    if source_is_own != (ingress == Ingress::Tun) {
        return Decision::Drop(DropReason::Spoofed);
    }
    let (link, mtu) = match table.routes.lookup(mapped(destination)) {
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
    if from_link && ttl <= 1 {
        return reject_or_drop(
            packet,
            IcmpErrorKind::HopLimitExceeded,
            DropReason::HopLimitExceeded,
        );
    }
    if segment_len.unwrap_or(total) > usize::from(mtu) {
        return reject_or_drop(
            packet,
            IcmpErrorKind::PacketTooBig { mtu },
            DropReason::TooBig,
        );
    }
    if from_link {
        decrement_ttl(packet);
    }
    Decision::Forward { link }
}

/// Decrements the TTL (byte 8, at least 2 here) and patches the header checksum for the change
/// of the 16-bit word holding TTL and protocol (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
fn decrement_ttl(packet: &mut [u8]) {
    let Some(header) = packet.get_mut(..IPV4_HEADER_LEN) else {
        return;
    };
    let old_word = u16::from_be_bytes([header[8], header[9]]);
    header[8] = header[8].saturating_sub(1);
    let new_word = u16::from_be_bytes([header[8], header[9]]);
    let checksum = u16::from_be_bytes([header[10], header[11]]);
    let mut sum = u32::from(!checksum) + u32::from(!old_word) + u32::from(new_word);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    header[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn reject_or_drop(packet: &[u8], kind: IcmpErrorKind, reason: DropReason) -> Decision {
    if icmp4::is_no_error_about(packet) {
        Decision::Drop(reason)
    } else {
        Decision::Reject(kind)
    }
}

/// Returns the source and destination of the IPv4 packet in `packet`, or `None` if it is
/// shorter than an IPv4 header (the version is not checked).
pub fn addresses4(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let s: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let d: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    Some((Ipv4Addr::from(s), Ipv4Addr::from(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use connectopus_wire::Prefix;
    use proptest::prelude::*;

    use crate::LinkId;
    use crate::forward::decide;
    use crate::icmp4::tests::{icmp4, ipv4, udp4, v4};
    use crate::route::PrefixTable;

    const LOCAL: &str = "198.18.1.1";
    const FAR: &str = "198.18.7.7";
    const REMOTE: &str = "198.18.2.2";
    const UNROUTED: &str = "198.19.99.1";
    const L1: LinkId = LinkId(1);

    fn p4(addr: &str, len: u8) -> Prefix {
        Prefix::new_truncating(mapped(v4(addr)), 96 + len).unwrap()
    }

    fn table() -> ForwardingTable {
        let mut routes = PrefixTable::new();
        routes.insert(p4(LOCAL, 32), RouteTarget::Local);
        routes.insert(
            p4("198.18.2.0", 24),
            RouteTarget::Link {
                link: L1,
                mtu: 1400,
            },
        );
        routes.insert(
            p4("198.18.7.0", 24),
            RouteTarget::Link {
                link: LinkId(2),
                mtu: 1400,
            },
        );
        routes.insert(
            "2001:db8:1::/48".parse().unwrap(),
            RouteTarget::Link {
                link: LinkId(3),
                mtu: 1400,
            },
        );
        ForwardingTable {
            routes,
            node_address: Some("2001:db8:1::".parse().unwrap()),
            node_address4: Some(v4(LOCAL)),
            generation: 1,
        }
    }

    fn link() -> Ingress {
        Ingress::Link(LinkId(9))
    }

    fn run(packet: &[u8], ingress: Ingress) -> Decision {
        let mut buf = packet.to_vec();
        let decision = decide(&table(), &mut buf, ingress);
        if !matches!(
            (decision, ingress),
            (Decision::Forward { .. }, Ingress::Link(_))
        ) {
            assert_eq!(buf, packet, "buffer changed after {decision:?}");
        }
        decision
    }

    #[test]
    fn forwards_from_tun_untouched_and_from_link_with_ttl_and_checksum() {
        let p = udp4(v4(LOCAL), v4(REMOTE), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), Decision::Forward { link: L1 });
        let p = udp4(v4(FAR), v4(REMOTE), 64, 100);
        let mut buf = p.clone();
        assert_eq!(
            decide(&table(), &mut buf, link()),
            Decision::Forward { link: L1 }
        );
        assert_eq!(buf[8], 63);
        assert_eq!(
            u16::from_be_bytes([buf[10], buf[11]]),
            icmp4::header_checksum(&buf[..20])
        );
        assert_eq!(buf[..8], p[..8]);
        assert_eq!(buf[12..], p[12..]);
    }

    #[test]
    fn delivers_local_and_refuses_loops_and_spoofs() {
        let p = udp4(v4(FAR), v4(LOCAL), 1, 100);
        assert_eq!(run(&p, link()), Decision::Deliver);
        let p = udp4(v4(LOCAL), v4(LOCAL), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), Decision::Drop(DropReason::Loop));
        let p = udp4(v4(FAR), v4(REMOTE), 64, 100);
        assert_eq!(run(&p, Ingress::Tun), Decision::Drop(DropReason::Spoofed));
        let p = udp4(v4(LOCAL), v4(REMOTE), 64, 100);
        assert_eq!(run(&p, link()), Decision::Drop(DropReason::Spoofed));
    }

    #[test]
    fn ttl_expiry_is_time_exceeded_unless_about_an_error() {
        for ttl in [0, 1] {
            let p = udp4(v4(FAR), v4(REMOTE), ttl, 100);
            assert_eq!(
                run(&p, link()),
                Decision::Reject(IcmpErrorKind::HopLimitExceeded)
            );
            let p = icmp4(v4(FAR), v4(REMOTE), ttl, 8);
            assert_eq!(
                run(&p, link()),
                Decision::Reject(IcmpErrorKind::HopLimitExceeded)
            );
            let p = icmp4(v4(FAR), v4(REMOTE), ttl, 11);
            assert_eq!(
                run(&p, link()),
                Decision::Drop(DropReason::HopLimitExceeded)
            );
        }
        // From the TUN the TTL is the host's business.
        let p = udp4(v4(LOCAL), v4(REMOTE), 1, 100);
        assert_eq!(run(&p, Ingress::Tun), Decision::Forward { link: L1 });
    }

    #[test]
    fn no_route_is_unreachable() {
        let p = udp4(v4(LOCAL), v4(UNROUTED), 64, 100);
        assert_eq!(
            run(&p, Ingress::Tun),
            Decision::Reject(IcmpErrorKind::NoRoute)
        );
        let p = icmp4(v4(LOCAL), v4(UNROUTED), 64, 3);
        assert_eq!(run(&p, Ingress::Tun), Decision::Drop(DropReason::NoRoute));
        let mut fragment = udp4(v4(FAR), v4(UNROUTED), 64, 100);
        fragment[6] = 0x20; // MF, offset 8 bytes
        fragment[7] = 1;
        let c = icmp4::header_checksum(&fragment[..20]);
        fragment[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(run(&fragment, link()), Decision::Drop(DropReason::NoRoute));
    }

    #[test]
    fn too_big_is_fragmentation_needed_with_the_link_mtu_with_or_without_df() {
        let mut p = udp4(v4(LOCAL), v4(REMOTE), 64, 1401);
        let frag_needed = Decision::Reject(IcmpErrorKind::PacketTooBig { mtu: 1400 });
        assert_eq!(run(&p, Ingress::Tun), frag_needed);
        p[6] = 0; // DF clear: the mesh still does not fragment.
        let c = icmp4::header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(run(&p, Ingress::Tun), frag_needed);
        let p = udp4(v4(LOCAL), v4(REMOTE), 64, 1400);
        assert_eq!(run(&p, Ingress::Tun), Decision::Forward { link: L1 });
        // A super-packet is checked by its segment length.
        let mut p = udp4(v4(LOCAL), v4(REMOTE), 64, 60_000);
        let t = table();
        assert_eq!(
            crate::forward::decide_segmented(&t, &mut p, Ingress::Tun, Some(1400)),
            Decision::Forward { link: L1 }
        );
    }

    #[test]
    fn malformed_multicast_and_bad_sources() {
        let good = udp4(v4(LOCAL), v4(REMOTE), 64, 100);
        assert_eq!(
            run(&good[..19], Ingress::Tun),
            Decision::Drop(DropReason::Malformed)
        );
        assert_eq!(
            run(&good[..99], Ingress::Tun),
            Decision::Drop(DropReason::Malformed)
        );
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 1;
        assert_eq!(
            run(&bad_sum, Ingress::Tun),
            Decision::Drop(DropReason::Malformed)
        );
        let mut short_ihl = good;
        short_ihl[0] = 0x44;
        assert_eq!(
            run(&short_ihl, Ingress::Tun),
            Decision::Drop(DropReason::Malformed)
        );
        for dst in ["224.0.0.1", "255.255.255.255"] {
            let p = udp4(v4(LOCAL), v4(dst), 64, 100);
            assert_eq!(run(&p, Ingress::Tun), Decision::Drop(DropReason::Multicast));
        }
        for src in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
            let p = udp4(v4(src), v4(REMOTE), 64, 100);
            assert_eq!(run(&p, link()), Decision::Drop(DropReason::BadSource));
        }
        // Any upper layer is forwarded alike.
        let p = ipv4(v4(LOCAL), v4(REMOTE), 64, 6, &[0; 20]);
        assert_eq!(run(&p, Ingress::Tun), Decision::Forward { link: L1 });
    }

    #[test]
    fn an_ipv4_table_does_not_route_ipv6() {
        // A table without IPv4 routes rejects IPv4 exactly like an unknown IPv6 destination.
        let mut t = ForwardingTable::default();
        let mut p = udp4(v4(LOCAL), v4(REMOTE), 64, 100);
        assert_eq!(
            decide(&t, &mut p, Ingress::Tun),
            Decision::Drop(DropReason::Spoofed)
        );
        t.routes.insert(p4(LOCAL, 32), RouteTarget::Local);
        assert_eq!(
            decide(&t, &mut p, Ingress::Tun),
            Decision::Reject(IcmpErrorKind::NoRoute)
        );
    }

    proptest! {
        #[test]
        fn decide_ipv4_never_panics_and_keeps_the_checksum_valid(
            mut bytes in proptest::collection::vec(any::<u8>(), 20..200),
            ttl in 0u8..4,
            from_tun in any::<bool>(),
        ) {
            bytes[0] = 0x45;
            let total = u16::try_from(bytes.len()).unwrap();
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
            bytes[8] = ttl;
            bytes[12..16].copy_from_slice(&v4(if from_tun { LOCAL } else { FAR }).octets());
            bytes[16..20].copy_from_slice(&v4(REMOTE).octets());
            let c = icmp4::header_checksum(&bytes[..20]);
            bytes[10..12].copy_from_slice(&c.to_be_bytes());
            let original = bytes.clone();
            let ingress = if from_tun { Ingress::Tun } else { link() };
            let decision = decide(&table(), &mut bytes, ingress);
            prop_assert_eq!(icmp4::header_checksum(&bytes[..20]), u16::from_be_bytes([bytes[10], bytes[11]]));
            if decision == (Decision::Forward { link: L1 }) && !from_tun {
                prop_assert_eq!(bytes[8], original[8] - 1);
            } else {
                prop_assert_eq!(&bytes, &original);
            }
        }
    }
}
