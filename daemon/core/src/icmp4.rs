//! ICMPv4 errors built by the node (RFC 792, RFC 1191, RFC 1812 §4.3).
//!
//! The forwarding decision names the error with the same [`IcmpErrorKind`] as for IPv6; this
//! module writes it as ICMPv4: destination unreachable (net unreachable), time exceeded (TTL
//! exceeded in transit) or destination unreachable, fragmentation needed with the next-hop MTU.

use std::net::Ipv4Addr;

use crate::icmp::IcmpErrorKind;

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

/// IPv4 protocol number of ICMP.
pub const PROTOCOL_ICMP: u8 = 1;

/// Largest ICMPv4 error the node builds (RFC 1812 §4.3.2.3: no more than 576 bytes).
pub const MAX_ICMP4_ERROR_LEN: usize = 576;

/// TTL of ICMPv4 errors the node originates.
pub const ICMP4_TTL: u8 = 64;

/// Returns the IPv4 packet at the start of `buf` (its first total-length bytes) and its header
/// length, or `None` if the header is malformed or the buffer shorter than the total length.
pub fn ipv4_packet(buf: &[u8]) -> Option<(&[u8], usize)> {
    let header = buf.get(..IPV4_HEADER_LEN)?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header_len < IPV4_HEADER_LEN || total < header_len {
        return None;
    }
    Some((buf.get(..total)?, header_len))
}

/// Returns true if no ICMPv4 error may be sent about `packet` (RFC 1812 §4.3.2.7): it is an
/// ICMPv4 error itself (or an ICMP message whose type cannot be read), or a fragment other
/// than the first. A malformed packet counts as such (the safe answer: send nothing).
pub fn is_no_error_about(packet: &[u8]) -> bool {
    let Some((packet, header_len)) = ipv4_packet(packet) else {
        return true;
    };
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return true;
    }
    if packet[9] != PROTOCOL_ICMP {
        return false;
    }
    match packet.get(header_len) {
        // Echo reply (0), echo (8), router advertisement/solicitation (9, 10), timestamp (13,
        // 14), information (15, 16), address mask (17, 18) are queries; the rest are errors.
        Some(&icmp_type) => !matches!(icmp_type, 0 | 8 | 9 | 10 | 13..=18),
        None => true,
    }
}

/// Returns the IPv4 header checksum of `header` (its checksum field read as zero).
pub fn header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, pair) in header.chunks(2).enumerate() {
        if i == 5 {
            continue;
        }
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    fold(sum)
}

/// Folds a 32-bit one's-complement sum into 16 bits and complements it.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes a complete IPv4 packet carrying the ICMPv4 error `kind` about `offending`, from
/// `source` to the offending packet's source, into `out`; returns its length.
///
/// The body holds the offending header and as much of its payload as fits in
/// [`MAX_ICMP4_ERROR_LEN`] (never bytes past its total length). Returns `None` if `offending`
/// is not a well-formed IPv4 packet or `out` is too short. Never allocates.
pub fn write_error4(
    kind: IcmpErrorKind,
    source: Ipv4Addr,
    offending: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let (offending, _) = ipv4_packet(offending)?;
    let quoted_len = offending
        .len()
        .min(MAX_ICMP4_ERROR_LEN - IPV4_HEADER_LEN - 8);
    let icmp_len = 8 + quoted_len;
    let total = IPV4_HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    let (icmp_type, code, rest) = match kind {
        IcmpErrorKind::NoRoute => (3u8, 0u8, [0u8; 4]),
        IcmpErrorKind::HopLimitExceeded => (11, 0, [0; 4]),
        IcmpErrorKind::PacketTooBig { mtu } => {
            let m = mtu.to_be_bytes();
            (3, 4, [0, 0, m[0], m[1]])
        }
    };
    let total16 = u16::try_from(total).ok()?;
    let (header, icmp) = out.split_at_mut(IPV4_HEADER_LEN);
    header[0] = 0x45;
    header[1] = 0xc0; // Internetwork control (RFC 1812 §4.3.2.5).
    header[2..4].copy_from_slice(&total16.to_be_bytes());
    header[4..8].fill(0); // Identification 0; not a fragment, DF clear.
    header[8] = ICMP4_TTL;
    header[9] = PROTOCOL_ICMP;
    header[10..12].fill(0);
    header[12..16].copy_from_slice(&source.octets());
    header[16..20].copy_from_slice(&offending[12..16]);
    let checksum = header_checksum(header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());

    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&rest);
    icmp[8..].copy_from_slice(&offending[..quoted_len]);
    let mut sum: u32 = 0;
    for pair in icmp.chunks(2) {
        sum += u32::from(match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        });
    }
    let checksum = fold(sum);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an IPv4 packet with a valid header checksum and a zeroed payload.
    pub(crate) fn ipv4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        protocol: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let total = u16::try_from(IPV4_HEADER_LEN + payload.len()).unwrap();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // DF set
        p.extend_from_slice(&[ttl, protocol, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let c = header_checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    pub(crate) fn udp4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, len: usize) -> Vec<u8> {
        ipv4(src, dst, ttl, 17, &vec![0u8; len - IPV4_HEADER_LEN])
    }

    pub(crate) fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, icmp_type: u8) -> Vec<u8> {
        ipv4(
            src,
            dst,
            ttl,
            PROTOCOL_ICMP,
            &[icmp_type, 0, 0, 0, 0, 0, 0, 0],
        )
    }

    pub(crate) fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn errors_parse_with_etherparse_and_quote_the_packet() {
        let offending = udp4(v4("198.18.1.1"), v4("198.18.2.2"), 1, 1000);
        let mut out = [0u8; MAX_ICMP4_ERROR_LEN];
        for (kind, ty, code, mtu) in [
            (IcmpErrorKind::NoRoute, 3, 0, 0),
            (IcmpErrorKind::HopLimitExceeded, 11, 0, 0),
            (IcmpErrorKind::PacketTooBig { mtu: 1380 }, 3, 4, 1380),
        ] {
            let len = write_error4(kind, v4("198.18.0.9"), &offending, &mut out).unwrap();
            assert_eq!(len, MAX_ICMP4_ERROR_LEN);
            let sliced = etherparse::SlicedPacket::from_ip(&out[..len]).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
                panic!("not IPv4");
            };
            assert_eq!(ip.header().source_addr(), v4("198.18.0.9"));
            assert_eq!(ip.header().destination_addr(), v4("198.18.1.1"));
            assert_eq!(ip.header().ttl(), ICMP4_TTL);
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let Some(etherparse::TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
                panic!("not ICMPv4");
            };
            assert_eq!(icmp.type_u8(), ty);
            assert_eq!(icmp.code_u8(), code);
            assert_eq!(
                icmp.icmp_type().calc_checksum(icmp.payload()),
                icmp.checksum()
            );
            assert_eq!(u16::from_be_bytes([out[26], out[27]]), mtu);
            assert_eq!(&out[28..len], &offending[..len - 28]);
        }
        // Short packets are quoted whole, never past their total length.
        let mut short = icmp4(v4("198.18.1.1"), v4("198.18.2.2"), 1, 8);
        short.extend_from_slice(&[0xaa; 64]);
        let len = write_error4(IcmpErrorKind::NoRoute, v4("198.18.0.9"), &short, &mut out);
        assert_eq!(len, Some(20 + 8 + 28));
        assert_eq!(
            write_error4(
                IcmpErrorKind::NoRoute,
                v4("1.1.1.1"),
                &short[..19],
                &mut out
            ),
            None
        );
        assert_eq!(
            write_error4(
                IcmpErrorKind::NoRoute,
                v4("1.1.1.1"),
                &short,
                &mut out[..30]
            ),
            None
        );
    }

    #[test]
    fn no_error_about_errors_or_later_fragments() {
        let (a, b) = (v4("198.18.1.1"), v4("198.18.2.2"));
        assert!(!is_no_error_about(&udp4(a, b, 64, 100)));
        assert!(!is_no_error_about(&icmp4(a, b, 64, 8)));
        assert!(!is_no_error_about(&icmp4(a, b, 64, 0)));
        for error in [3, 4, 5, 11, 12] {
            assert!(is_no_error_about(&icmp4(a, b, 64, error)), "{error}");
        }
        let mut fragment = udp4(a, b, 64, 100);
        fragment[7] = 1;
        assert!(is_no_error_about(&fragment));
        assert!(is_no_error_about(&[0x45, 0, 0]));
    }
}
