//! Just enough IPv4/IPv6 parsing to find the L4 header of a packet.

use crate::bytes::{be16, byte};
use crate::error::OffloadError;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const IPV6_HDR_LEN: usize = 40;
pub(crate) const IPV4_MIN_HDR_LEN: usize = 20;

/// IPv6 extension headers that may sit before the L4 header without changing the
/// pseudo-header: hop-by-hop options (first only) and destination options.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_DEST_OPTS: u8 = 60;
/// More than this many extension headers is refused (there is no legitimate reason).
const MAX_EXT_HEADERS: usize = 4;

/// Where a packet's L4 header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct L4 {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Offset of the L4 header: IPv4 IHL·4, or 40 plus the IPv6 extension headers.
    pub l4_off: usize,
    /// The L4 protocol number.
    pub proto: u8,
}

/// Source and destination addresses together, as the pseudo-header takes them.
#[inline]
pub(crate) fn addrs(packet: &[u8], v6: bool) -> Option<&[u8]> {
    if v6 {
        packet.get(8..40)
    } else {
        packet.get(12..20)
    }
}

fn truncated(what: &'static str, need: usize, have: usize) -> OffloadError {
    OffloadError::Truncated { what, need, have }
}

/// Walks the IP header of a whole packet: checks the version, the length field against the
/// packet's length, refuses IPv4 fragments and IPv6 extension headers other than hop-by-hop and
/// destination options, and says where the L4 header starts.
pub(crate) fn locate_l4(packet: &[u8]) -> Result<L4, OffloadError> {
    let len = packet.len();
    let first = byte(packet, 0).ok_or(truncated("IP header", 1, 0))?;
    match first >> 4 {
        4 => {
            if len < IPV4_MIN_HDR_LEN {
                return Err(truncated("IPv4 header", IPV4_MIN_HDR_LEN, len));
            }
            let ihl = usize::from(first & 0x0F) * 4;
            if ihl < IPV4_MIN_HDR_LEN || ihl > len {
                return Err(OffloadError::BadIpHeaderLen(ihl));
            }
            let total = usize::from(be16(packet, 2).unwrap_or(0));
            if total != len {
                return Err(OffloadError::LengthMismatch {
                    field: total,
                    actual: len,
                });
            }
            if be16(packet, 6).unwrap_or(0) & 0x3FFF != 0 {
                return Err(OffloadError::Fragment);
            }
            let proto = byte(packet, 9).unwrap_or(0);
            Ok(L4 {
                v6: false,
                l4_off: ihl,
                proto,
            })
        }
        6 => {
            if len < IPV6_HDR_LEN {
                return Err(truncated("IPv6 header", IPV6_HDR_LEN, len));
            }
            let total = usize::from(be16(packet, 4).unwrap_or(0)) + IPV6_HDR_LEN;
            if total != len {
                return Err(OffloadError::LengthMismatch {
                    field: total,
                    actual: len,
                });
            }
            let mut next = byte(packet, 6).unwrap_or(0);
            let mut off = IPV6_HDR_LEN;
            for n in 0..=MAX_EXT_HEADERS {
                let allowed = next == EXT_DEST_OPTS || (next == EXT_HOP_BY_HOP && n == 0);
                if !allowed {
                    return match next {
                        EXT_HOP_BY_HOP | 43 | 44 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => {
                            Err(OffloadError::UnsupportedExtensionHeader(next))
                        }
                        proto => Ok(L4 {
                            v6: true,
                            l4_off: off,
                            proto,
                        }),
                    };
                }
                if n == MAX_EXT_HEADERS {
                    break;
                }
                let (Some(nh), Some(hl)) = (byte(packet, off), byte(packet, off + 1)) else {
                    return Err(truncated("IPv6 extension header", off + 2, len));
                };
                off += (usize::from(hl) + 1) * 8;
                if off > len {
                    return Err(truncated("IPv6 extension header", off, len));
                }
                next = nh;
            }
            Err(OffloadError::UnsupportedExtensionHeader(next))
        }
        v => Err(OffloadError::NotIp(v)),
    }
}
