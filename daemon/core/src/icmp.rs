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

/// Returns true if `packet` is an ICMPv6 error message (type below 128), so that no error is
/// sent about it. Follows the extension-header chain; a malformed chain counts as an error
/// message (the safe answer: send nothing).
pub fn is_icmpv6_error(packet: &[u8]) -> bool {
    let _ = packet;
    todo!("icmp: is_icmpv6_error")
}

/// Writes a complete IPv6 packet carrying the ICMPv6 error `kind` about `offending`, from
/// `source` to the offending packet's source, into `out`; returns its length.
///
/// The body holds as much of `offending` as fits in [`MAX_ICMP_ERROR_LEN`]. The checksum is
/// computed. Returns `None` if `offending` is shorter than an IPv6 header or `out` is shorter
/// than the packet would be.
pub fn write_error(
    kind: IcmpErrorKind,
    source: Ipv6Addr,
    offending: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let _ = (kind, source, offending, out);
    todo!("icmp: write_error")
}

/// Token-bucket limit on the ICMPv6 errors one node sends (RFC 4443 §2.4 (f)).
#[derive(Debug, Clone)]
pub struct IcmpRateLimiter {
    _p: (),
}

impl IcmpRateLimiter {
    /// Allows `burst` errors at once and `per_second` on average.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let _ = (per_second, burst);
        todo!("icmp: IcmpRateLimiter::new")
    }

    /// Takes a token if one is available at `now`.
    pub fn allow(&mut self, now: Time) -> bool {
        let _ = now;
        todo!("icmp: IcmpRateLimiter::allow")
    }

    /// Returns the refill interval (for documentation and tests).
    pub fn interval(&self) -> Duration {
        todo!("icmp: IcmpRateLimiter::interval")
    }
}
