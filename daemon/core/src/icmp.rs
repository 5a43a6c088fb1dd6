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
/// authentication (51) headers are followed, at most [`MAX_EXTENSION_HEADERS`] of them. The
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
