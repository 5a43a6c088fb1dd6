//! ICMPv6 errors built by the node (RFC 4443), and their rate limit.

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::time::Time;

/// Which ICMPv6 error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpErrorKind {
    /// Destination unreachable, code 0 (no route to destination).
    NoRoute,
    /// Time exceeded, code 0 (hop limit exceeded in transit).
    HopLimitExceeded,
    /// Packet too big, with the MTU of the next link.
    PacketTooBig {
        /// The largest packet the next link carries.
        mtu: u16,
    },
}

/// Largest ICMPv6 error the node builds: the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
pub const MAX_ICMP_ERROR_LEN: usize = 1280;

/// Hop limit of ICMPv6 errors the node originates.
pub const ICMP_HOP_LIMIT: u8 = 64;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// Length of the ICMPv6 error header: type, code, checksum and four type-specific bytes.
pub const ICMP_ERROR_HEADER_LEN: usize = 8;

/// IPv6 next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;

/// Extension headers [`is_icmpv6_error`] follows before giving up (and answering true).
const MAX_EXTENSION_HEADERS: usize = 16;

/// Returns true if `packet` is an ICMPv6 error message (type below 128), so that no error is
/// sent about it. Follows the extension-header chain; a malformed chain counts as an error
/// message (the safe answer: send nothing).
///
/// Hop-by-hop options (0), routing (43), fragment (44), destination options (60) and
/// authentication (51) headers are followed, at most 16 of them. The
/// packet ends where its payload length says (a longer buffer is fine). A non-first fragment
/// does not show its upper-layer type, so it counts as *not* an error (RFC 4443 §2.4 (e) only
/// forbids errors about errors we can identify); so does any other upper layer.
pub fn is_icmpv6_error(packet: &[u8]) -> bool {
    let Some(packet) = ipv6_packet(packet) else {
        return true;
    };
    let Some(&first_next) = packet.get(6) else {
        return true;
    };
    let mut next = first_next;
    let mut offset = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            NEXT_HEADER_ICMPV6 => {
                return match packet.get(offset) {
                    Some(&icmp_type) => icmp_type < 128,
                    None => true,
                };
            }
            // Hop-by-hop options, routing, destination options: length in 8-octet units,
            // not counting the first 8 octets.
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (packet.get(offset), packet.get(offset + 1)) else {
                    return true;
                };
                next = n;
                offset += (usize::from(len) + 1) * 8;
            }
            // Fragment: fixed 8 octets; only the first fragment shows the upper layer.
            44 => {
                let Some(header) = packet.get(offset..offset + 8) else {
                    return true;
                };
                let fragment_offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
                if fragment_offset != 0 {
                    return false;
                }
                next = header[0];
                offset += 8;
            }
            // Authentication header: length in 4-octet units, not counting the first 8 octets.
            51 => {
                let (Some(&n), Some(&len)) = (packet.get(offset), packet.get(offset + 1)) else {
                    return true;
                };
                next = n;
                offset += (usize::from(len) + 2) * 4;
            }
            _ => return false,
        }
    }
    true
}

/// Returns the IPv6 packet at the start of `buf`: its first 40 + payload-length bytes, or
/// `None` if `buf` is shorter than that.
fn ipv6_packet(buf: &[u8]) -> Option<&[u8]> {
    let header = buf.get(..IPV6_HEADER_LEN)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    buf.get(..IPV6_HEADER_LEN + payload_len)
}

/// Writes a complete IPv6 packet carrying the ICMPv6 error `kind` about `offending`, from
/// `source` to the offending packet's source, into `out`; returns its length.
///
/// The body holds as much of `offending` as fits in [`MAX_ICMP_ERROR_LEN`] (bytes past the end
/// its payload length gives are left out, so a pooled buffer's tail never leaks). The checksum
/// is computed. Returns `None` if `offending` is shorter than an IPv6 header or `out` is shorter
/// than the packet would be. Never allocates.
pub fn write_error(
    kind: IcmpErrorKind,
    source: Ipv6Addr,
    offending: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let header = offending.get(..IPV6_HEADER_LEN)?;
    let offending = ipv6_packet(offending).unwrap_or(offending);
    let mut destination = [0u8; 16];
    destination.copy_from_slice(&header[8..24]);

    let body_len = offending
        .len()
        .min(MAX_ICMP_ERROR_LEN - IPV6_HEADER_LEN - ICMP_ERROR_HEADER_LEN);
    let icmp_len = ICMP_ERROR_HEADER_LEN + body_len;
    let total = IPV6_HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    let icmp_len16 = u16::try_from(icmp_len).ok()?;

    let (ip, icmp) = out.split_at_mut(IPV6_HEADER_LEN);
    ip[0] = 0x60;
    ip[1..4].fill(0);
    ip[4..6].copy_from_slice(&icmp_len16.to_be_bytes());
    ip[6] = NEXT_HEADER_ICMPV6;
    ip[7] = ICMP_HOP_LIMIT;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&destination);

    let (icmp_type, rest) = match kind {
        IcmpErrorKind::NoRoute => (1, [0; 4]),
        IcmpErrorKind::HopLimitExceeded => (3, [0; 4]),
        IcmpErrorKind::PacketTooBig { mtu } => (2, u32::from(mtu).to_be_bytes()),
    };
    icmp[0] = icmp_type;
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&rest);
    icmp[ICMP_ERROR_HEADER_LEN..].copy_from_slice(&offending[..body_len]);

    let checksum = checksum(&source.octets(), &destination, icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

/// Computes the ICMPv6 checksum of `icmp` (checksum field zero) over the IPv6 pseudo-header
/// (RFC 8200 §8.1).
fn checksum(source: &[u8; 16], destination: &[u8; 16], icmp: &[u8]) -> u16 {
    // Lengths here are at most MAX_ICMP_ERROR_LEN, so the u64 sum cannot overflow.
    let len = icmp.len() as u64;
    let mut sum = sum_words(source) + sum_words(destination);
    sum += (len >> 16) + (len & 0xffff);
    sum += u64::from(NEXT_HEADER_ICMPV6);
    sum += sum_words(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // `sum` now fits in 16 bits.
    !(sum as u16)
}

/// Sums `data` as big-endian 16-bit words, padding an odd last byte with zero.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Default average rate of ICMPv6 errors per second.
pub const DEFAULT_ICMP_PER_SECOND: u32 = 100;

/// Default burst of ICMPv6 errors.
pub const DEFAULT_ICMP_BURST: u32 = 20;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Token-bucket limit on the ICMPv6 errors one node sends (RFC 4443 §2.4 (f)).
///
/// Integer arithmetic only: the bucket holds credit in nanoseconds, one token costs one
/// [`interval`](Self::interval), and the credit is capped at `burst` intervals. The bucket starts
/// full, whatever time the first call brings; time that goes backwards adds nothing. The
/// default is [`DEFAULT_ICMP_PER_SECOND`] errors per second with a burst of
/// [`DEFAULT_ICMP_BURST`].
#[derive(Debug, Clone)]
pub struct IcmpRateLimiter {
    /// Cost of one token, in nanoseconds.
    interval_ns: u64,
    /// Largest credit: `burst` tokens.
    capacity_ns: u64,
    /// Credit available at `last`.
    credit_ns: u64,
    /// Time of the latest refill; `None` before the first call.
    last: Option<Time>,
}

impl Default for IcmpRateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_ICMP_PER_SECOND, DEFAULT_ICMP_BURST)
    }
}

impl IcmpRateLimiter {
    /// Allows `burst` errors at once and `per_second` on average.
    ///
    /// `per_second` or `burst` zero allows no error at all.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let (interval_ns, capacity_ns) = if per_second == 0 {
            (u64::MAX, 0)
        } else {
            // At least 1 ns, so rates above 10⁹/s still cost something.
            let interval = (NANOS_PER_SECOND / u64::from(per_second)).max(1);
            (interval, interval.saturating_mul(u64::from(burst)))
        };
        Self {
            interval_ns,
            capacity_ns,
            credit_ns: capacity_ns,
            last: None,
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn allow(&mut self, now: Time) -> bool {
        match self.last {
            None => self.last = Some(now),
            Some(last) if now > last => {
                let elapsed = now.as_nanos() - last.as_nanos();
                self.credit_ns = self.credit_ns.saturating_add(elapsed).min(self.capacity_ns);
                self.last = Some(now);
            }
            Some(_) => {}
        }
        if self.credit_ns >= self.interval_ns {
            self.credit_ns -= self.interval_ns;
            true
        } else {
            false
        }
    }

    /// Returns the refill interval (for documentation and tests): one second divided by the
    /// rate, or [`Duration::MAX`] if the rate is zero.
    pub fn interval(&self) -> Duration {
        if self.interval_ns == u64::MAX {
            Duration::MAX
        } else {
            Duration::from_nanos(self.interval_ns)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice, icmpv6};
    use proptest::prelude::*;

    /// Builds an IPv6 packet with `payload` after the fixed header.
    pub(crate) fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0x01, 0x23, 0x45];
        p.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        p.push(next);
        p.push(hop);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// Builds an IPv6/UDP packet of `len` bytes in total (at least 48).
    pub(crate) fn udp(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, len: usize) -> Vec<u8> {
        let udp_len = len - IPV6_HEADER_LEN;
        let mut payload = vec![0x30, 0x39, 0x00, 0x35];
        payload.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend((0..udp_len - 8).map(|i| i as u8));
        ipv6(src, dst, hop, 17, &payload)
    }

    /// Builds an IPv6/ICMPv6 packet of type `icmp_type`, `len` bytes in total (at least 48).
    pub(crate) fn icmp(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop: u8,
        icmp_type: u8,
        len: usize,
    ) -> Vec<u8> {
        let mut payload = vec![icmp_type, 0, 0, 0, 0x12, 0x34, 0x00, 0x01];
        payload.extend((0..len - IPV6_HEADER_LEN - 8).map(|i| (i * 7) as u8));
        ipv6(src, dst, hop, NEXT_HEADER_ICMPV6, &payload)
    }

    pub(crate) fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    const SRC: &str = "2001:db8:1::1";
    const DST: &str = "2001:db8:2::2";

    /// An 8-octet extension header (hop-by-hop, routing or destination options) with `next`.
    fn ext8(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    fn with_exts(kinds: &[u8], upper: u8, upper_payload: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (i, _) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(upper);
            payload.extend(ext8(next));
        }
        payload.extend_from_slice(upper_payload);
        ipv6(
            a(SRC),
            a(DST),
            64,
            kinds.first().copied().unwrap_or(upper),
            &payload,
        )
    }

    fn fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let word = (offset << 3) | u16::from(more);
        let w = word.to_be_bytes();
        vec![next, 0, w[0], w[1], 0xde, 0xad, 0xbe, 0xef]
    }

    #[test]
    fn icmp_types_below_128_are_errors() {
        for t in [1, 2, 3, 4, 100, 127] {
            assert!(
                is_icmpv6_error(&icmp(a(SRC), a(DST), 64, t, 64)),
                "type {t}"
            );
        }
        for t in [128, 129, 133, 135, 255] {
            assert!(
                !is_icmpv6_error(&icmp(a(SRC), a(DST), 64, t, 64)),
                "type {t}"
            );
        }
    }

    #[test]
    fn other_upper_layers_are_not_errors() {
        assert!(!is_icmpv6_error(&udp(a(SRC), a(DST), 64, 100)));
        assert!(!is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 6, &[0; 20])));
        // No next header.
        assert!(!is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 59, &[])));
    }

    #[test]
    fn extension_headers_are_followed() {
        let error = [1, 0, 0, 0, 0, 0, 0, 0];
        let echo = [128, 0, 0, 0, 0, 0, 0, 0];
        assert!(is_icmpv6_error(&with_exts(&[0], 58, &error)));
        assert!(is_icmpv6_error(&with_exts(&[0, 60, 43, 60], 58, &error)));
        assert!(!is_icmpv6_error(&with_exts(&[0, 60, 43, 60], 58, &echo)));
        assert!(!is_icmpv6_error(&with_exts(&[0, 60], 17, &[0; 8])));

        // Longer options header: length 2 → 24 octets.
        let mut payload = vec![58, 2];
        payload.extend([0; 22]);
        payload.extend(error);
        assert!(is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 60, &payload)));

        // Authentication header: payload length 4 → (4 + 2) * 4 = 24 octets.
        let mut payload = vec![58, 4];
        payload.extend([0; 22]);
        payload.extend(error);
        assert!(is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 51, &payload)));
    }

    #[test]
    fn fragments() {
        let error = [3, 0, 0, 0, 0, 0, 0, 0];
        let mut first = fragment(58, 0, true);
        first.extend(error);
        assert!(is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 44, &first)));

        let mut first_echo = fragment(58, 0, true);
        first_echo.extend([128, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 44, &first_echo)));

        // A later fragment does not show its type: not identifiable as an error.
        let mut later = fragment(58, 185, false);
        later.extend(error);
        assert!(!is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 44, &later)));

        // Truncated fragment header.
        assert!(is_icmpv6_error(&ipv6(a(SRC), a(DST), 64, 44, &[58, 0, 0])));
    }

    #[test]
    fn malformed_counts_as_error() {
        // Shorter than the header.
        assert!(is_icmpv6_error(&[]));
        assert!(is_icmpv6_error(&[0x60; 39]));
        // Payload length beyond the buffer.
        let mut p = udp(a(SRC), a(DST), 64, 100);
        p.truncate(90);
        assert!(is_icmpv6_error(&p));
        // ICMPv6 without a type byte; a byte past the payload length does not count.
        let mut p = ipv6(a(SRC), a(DST), 64, 58, &[]);
        assert!(is_icmpv6_error(&p));
        p.push(128);
        assert!(is_icmpv6_error(&p));
        // Extension header running past the end.
        let p = ipv6(a(SRC), a(DST), 64, 0, &[58, 3, 0, 0, 0, 0, 0, 0]);
        assert!(is_icmpv6_error(&p));
        let p = ipv6(a(SRC), a(DST), 64, 0, &[58]);
        assert!(is_icmpv6_error(&p));
    }

    #[test]
    fn extension_chain_is_bounded() {
        let kinds = [60u8; 40];
        assert!(is_icmpv6_error(&with_exts(&kinds, 17, &[0; 8])));
        let kinds = [60u8; MAX_EXTENSION_HEADERS - 1];
        assert!(!is_icmpv6_error(&with_exts(&kinds, 17, &[0; 8])));
    }

    #[test]
    fn trailing_bytes_past_payload_length_are_ignored() {
        let mut p = icmp(a(SRC), a(DST), 64, 128, 64);
        p.extend([1; 100]);
        assert!(!is_icmpv6_error(&p));
    }

    /// Parses `packet` with etherparse and checks it is a valid ICMPv6 error about `offending`.
    fn check_error(packet: &[u8], source: Ipv6Addr, offending: &[u8]) -> Icmpv6Type {
        assert!(packet.len() <= MAX_ICMP_ERROR_LEN);
        let sliced = SlicedPacket::from_ip(packet).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6: {:?}", sliced.net);
        };
        let header = ip.header();
        assert_eq!(header.version(), 6);
        assert_eq!(header.traffic_class(), 0);
        assert_eq!(header.flow_label().value(), 0);
        assert_eq!(header.hop_limit(), ICMP_HOP_LIMIT);
        assert_eq!(header.next_header().0, NEXT_HEADER_ICMPV6);
        assert_eq!(usize::from(header.payload_length()), packet.len() - 40);
        assert_eq!(header.source_addr(), source);
        assert_eq!(
            header.destination(),
            <[u8; 16]>::try_from(&offending[8..24]).unwrap()
        );
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6: {:?}", sliced.transport);
        };
        assert!(icmp.is_checksum_valid(header.source(), header.destination()));
        // Independent check: etherparse computes the same checksum.
        let computed = icmp
            .icmp_type()
            .calc_checksum(header.source(), header.destination(), icmp.payload())
            .unwrap();
        assert_eq!(computed, icmp.checksum());
        let body = icmp.payload();
        assert!(!body.is_empty());
        assert_eq!(body, &offending[..body.len()]);
        icmp.icmp_type()
    }

    #[test]
    fn write_error_kinds() {
        let node = a("2001:db8:ff::1");
        let offending = udp(a(SRC), a(DST), 1, 200);
        let mut out = [0u8; 2000];
        let cases = [
            (
                IcmpErrorKind::NoRoute,
                Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::NoRoute),
            ),
            (
                IcmpErrorKind::HopLimitExceeded,
                Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
            ),
            (
                IcmpErrorKind::PacketTooBig { mtu: 1400 },
                Icmpv6Type::PacketTooBig { mtu: 1400 },
            ),
        ];
        for (kind, expected) in cases {
            let n = write_error(kind, node, &offending, &mut out).unwrap();
            assert_eq!(n, 48 + offending.len());
            assert_eq!(check_error(&out[..n], node, &offending), expected);
            assert_eq!(&out[48..n], &offending[..]);
        }
        // Raw bytes: type/code and the four type-specific bytes.
        let n = write_error(IcmpErrorKind::NoRoute, node, &offending, &mut out).unwrap();
        assert_eq!(out[40..42], [1, 0]);
        assert_eq!(out[44..48], [0; 4]);
        write_error(IcmpErrorKind::HopLimitExceeded, node, &offending, &mut out).unwrap();
        assert_eq!(out[40..42], [3, 0]);
        assert_eq!(out[44..48], [0; 4]);
        write_error(
            IcmpErrorKind::PacketTooBig { mtu: 1280 },
            node,
            &offending,
            &mut out,
        )
        .unwrap();
        assert_eq!(out[40..42], [2, 0]);
        assert_eq!(out[44..48], 1280u32.to_be_bytes());
        assert_eq!(n, 248);
    }

    #[test]
    fn write_error_truncates_to_minimum_mtu() {
        let node = a("2001:db8:ff::1");
        let offending = udp(a(SRC), a(DST), 64, 1500);
        let mut out = [0u8; 1500];
        let n = write_error(
            IcmpErrorKind::PacketTooBig { mtu: 1400 },
            node,
            &offending,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, MAX_ICMP_ERROR_LEN);
        assert_eq!(
            check_error(&out[..n], node, &offending),
            Icmpv6Type::PacketTooBig { mtu: 1400 }
        );
        assert_eq!(&out[48..n], &offending[..n - 48]);
        // `out` exactly large enough works; one byte less does not.
        let mut exact = [0u8; MAX_ICMP_ERROR_LEN];
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &offending, &mut exact),
            Some(MAX_ICMP_ERROR_LEN)
        );
        let mut short = [0u8; MAX_ICMP_ERROR_LEN - 1];
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &offending, &mut short),
            None
        );
    }

    #[test]
    fn write_error_odd_length_and_trailing_bytes() {
        let node = a("2001:db8:ff::1");
        // Odd length: 40 + 9 bytes of payload.
        let offending = ipv6(a(SRC), a(DST), 64, 17, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut out = [0u8; 200];
        let n = write_error(IcmpErrorKind::NoRoute, node, &offending, &mut out).unwrap();
        assert_eq!(n, 48 + 49);
        check_error(&out[..n], node, &offending);
        // Bytes past the payload length (a pooled buffer's tail) are not echoed.
        let mut buffer = offending.clone();
        buffer.extend([0xaa; 50]);
        let m = write_error(IcmpErrorKind::NoRoute, node, &buffer, &mut out).unwrap();
        assert_eq!(m, n);
        assert_eq!(&out[48..m], &offending[..]);
    }

    #[test]
    fn write_error_rejects_short_input() {
        let mut out = [0u8; 2000];
        let node = a("2001:db8:ff::1");
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &[0x60; 39], &mut out),
            None
        );
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &[], &mut out),
            None
        );
        let offending = udp(a(SRC), a(DST), 64, 100);
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &offending, &mut out[..147]),
            None
        );
        assert_eq!(
            write_error(IcmpErrorKind::NoRoute, node, &offending, &mut out[..148]),
            Some(148)
        );
    }

    #[test]
    fn checksum_matches_rfc_example_shape() {
        // An all-zero message still has a non-trivial checksum from the pseudo-header.
        let c = checksum(&[0; 16], &[0; 16], &[0; 8]);
        assert_eq!(c, !(8u16 + 58));
    }

    proptest! {
        #[test]
        fn write_error_always_valid(
            body in proptest::collection::vec(any::<u8>(), 40..1600),
            mtu in any::<u16>(),
            which in 0u8..3,
        ) {
            let node = a("2001:db8:ff::1");
            let kind = match which {
                0 => IcmpErrorKind::NoRoute,
                1 => IcmpErrorKind::HopLimitExceeded,
                _ => IcmpErrorKind::PacketTooBig { mtu },
            };
            let mut out = [0u8; MAX_ICMP_ERROR_LEN];
            let n = write_error(kind, node, &body, &mut out).unwrap();
            prop_assert!(n <= MAX_ICMP_ERROR_LEN);
            let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
            let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
                panic!("not ICMPv6");
            };
            let dst: [u8; 16] = body[8..24].try_into().unwrap();
            prop_assert!(icmp.is_checksum_valid(node.octets(), dst));
            prop_assert_eq!(icmp.payload(), &body[..icmp.payload().len()]);
        }

        #[test]
        fn is_icmpv6_error_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = is_icmpv6_error(&bytes);
        }
    }

    fn t(nanos: u64) -> Time {
        Time::from_nanos(nanos)
    }

    #[test]
    fn rate_limiter_burst_then_refusal_then_refill() {
        let mut rl = IcmpRateLimiter::new(10, 3);
        assert_eq!(rl.interval(), Duration::from_millis(100));
        // The first call may come at any time.
        let start = 12_345 * NANOS_PER_SECOND + 17;
        for _ in 0..3 {
            assert!(rl.allow(t(start)));
        }
        assert!(!rl.allow(t(start)));
        let interval = 100_000_000;
        assert!(!rl.allow(t(start + interval - 1)));
        assert!(rl.allow(t(start + interval)));
        assert!(!rl.allow(t(start + interval)));
        // Refill is capped at the burst.
        let later = start + 1_000 * interval;
        for _ in 0..3 {
            assert!(rl.allow(t(later)));
        }
        assert!(!rl.allow(t(later)));
    }

    #[test]
    fn rate_limiter_first_call_at_zero_and_backwards_time() {
        let mut rl = IcmpRateLimiter::new(1, 1);
        assert!(rl.allow(Time::ZERO));
        assert!(!rl.allow(Time::ZERO));
        assert!(!rl.allow(t(NANOS_PER_SECOND - 1)));
        // Time going backwards adds nothing and does not reset the clock.
        assert!(!rl.allow(Time::ZERO));
        assert!(rl.allow(t(NANOS_PER_SECOND)));
    }

    #[test]
    fn rate_limiter_long_idle_does_not_overflow() {
        let mut rl = IcmpRateLimiter::new(1, u32::MAX);
        assert!(rl.allow(Time::ZERO));
        assert!(rl.allow(t(u64::MAX)));
        let mut rl = IcmpRateLimiter::new(u32::MAX, u32::MAX);
        assert!(rl.allow(Time::ZERO));
        assert!(rl.allow(t(u64::MAX)));
        let mut rl = IcmpRateLimiter::default();
        for _ in 0..DEFAULT_ICMP_BURST {
            assert!(rl.allow(Time::ZERO));
        }
        assert!(!rl.allow(Time::ZERO));
        for _ in 0..DEFAULT_ICMP_BURST {
            assert!(rl.allow(t(u64::MAX)));
        }
        assert!(!rl.allow(t(u64::MAX)));
    }

    #[test]
    fn rate_limiter_average_rate() {
        let mut rl = IcmpRateLimiter::default();
        assert_eq!(rl.interval(), Duration::from_millis(10));
        // One attempt per millisecond for ten seconds.
        let allowed = (0..10_000u64)
            .filter(|ms| rl.allow(t(ms * 1_000_000)))
            .count();
        // The burst, plus one per 10 ms after the start.
        assert_eq!(allowed, 20 + 999);
    }

    #[test]
    fn rate_limiter_zero_allows_nothing() {
        let mut rl = IcmpRateLimiter::new(0, 20);
        assert_eq!(rl.interval(), Duration::MAX);
        assert!(!rl.allow(Time::ZERO));
        assert!(!rl.allow(t(u64::MAX)));
        let mut rl = IcmpRateLimiter::new(100, 0);
        assert!(!rl.allow(Time::ZERO));
        assert!(!rl.allow(t(u64::MAX)));
    }
}
