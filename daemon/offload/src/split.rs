//! Cutting a TSO/USO super-packet read from the TUN device into link-sized segments, the way
//! the kernel's `tcp_gso_segment`/`__udp_gso_segment` does (linerate §4).

use core::fmt;

use crate::bytes::{be16, be32, byte, copy_to, put_be16, put_be32, put_byte, put_le16};
use crate::checksum;
use crate::error::OffloadError;
use crate::ip::{self, IPV6_HDR_LEN, L4, PROTO_TCP, PROTO_UDP};
use crate::vnet::{GsoType, VnetHeader, complete_checksum};

/// TCP flag bits in byte 13 of the TCP header.
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;

/// Offset of the checksum in the TCP header.
pub(crate) const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum in the UDP header.
const UDP_CSUM_OFFSET: usize = 6;
const UDP_HDR_LEN: usize = 8;
pub(crate) const TCP_MIN_HDR_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// gso_type None: one segment, the packet itself; `Some(header)` when its checksum must be
    /// completed (`NEEDS_CSUM`, span already checked).
    Whole(Option<VnetHeader>),
    Tcp,
    Udp,
}

/// A super-packet read from a TUN device (the IP packet after the vnet header), validated and
/// ready to be cut into [`count`](Segments::count) segments.
///
/// Segment `i` carries payload bytes `[header_len + i·gso_size, min(+gso_size, len))` behind a
/// copy of the IP and L4 headers with its lengths, IPv4 id and header checksum, TCP sequence
/// number and flags, UDP length and full L4 checksum fixed. Every segment but the last has the
/// same length, which is what UDP GSO needs for the records built around them.
#[derive(Clone, Copy)]
pub struct Segments<'a> {
    packet: &'a [u8],
    kind: Kind,
    l4: L4,
    hdr_len: usize,
    gso_size: usize,
    count: usize,
}

impl fmt::Debug for Segments<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segments")
            .field("len", &self.packet.len())
            .field("kind", &self.kind)
            .field("l4", &self.l4)
            .field("hdr_len", &self.hdr_len)
            .field("gso_size", &self.gso_size)
            .field("count", &self.count)
            .finish()
    }
}

fn err_len(what: &'static str, need: usize, have: usize) -> OffloadError {
    OffloadError::Truncated { what, need, have }
}

impl<'a> Segments<'a> {
    /// Validates `packet` against `hdr` and prepares the cut.
    ///
    /// The header length is computed here, never taken from `hdr.hdr_len`: the L4 offset found by
    /// walking the IP header (which must equal `csum_start` when `NEEDS_CSUM` is set) plus the
    /// TCP data offset·4, or plus 8 for UDP. TCPV4 needs IPv4 TCP, TCPV6 IPv6 TCP, UDP_L4 UDP
    /// on either; the IP length field must match the packet's length.
    /// `csum_offset` of a GSO header is not used (the L4 protocol fixes it).
    ///
    /// gso_type None is one segment: the packet itself (not parsed at all), with its checksum
    /// completed in the copy if `NEEDS_CSUM` (whose `csum_start`/`csum_offset` must then fit).
    /// A GSO packet without payload is one segment of headers only.
    pub fn new(hdr: &VnetHeader, packet: &'a [u8]) -> Result<Segments<'a>, OffloadError> {
        if hdr.gso_type == GsoType::None {
            let csum = if hdr.needs_csum {
                hdr.csum_span(packet.len())?;
                Some(*hdr)
            } else {
                None
            };
            return Ok(Segments {
                packet,
                kind: Kind::Whole(csum),
                l4: L4 {
                    v6: false,
                    l4_off: 0,
                    proto: 0,
                },
                hdr_len: 0,
                gso_size: packet.len(),
                count: 1,
            });
        }
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let l4 = ip::locate_l4(packet)?;
        let version = if l4.v6 { 6 } else { 4 };
        let (want_v6, want_proto) = match hdr.gso_type {
            GsoType::TcpV4 => (Some(false), PROTO_TCP),
            GsoType::TcpV6 => (Some(true), PROTO_TCP),
            _ => (None, PROTO_UDP),
        };
        if want_v6.is_some_and(|v6| v6 != l4.v6) {
            return Err(OffloadError::GsoVersionMismatch {
                gso: hdr.gso_type,
                version,
            });
        }
        if l4.proto != want_proto {
            return Err(OffloadError::NotTcpUdp(l4.proto));
        }
        if hdr.needs_csum && usize::from(hdr.csum_start) != l4.l4_off {
            return Err(OffloadError::CsumStartMismatch {
                csum_start: hdr.csum_start,
                l4_offset: l4.l4_off,
            });
        }
        let (kind, l4_hdr_len) = if want_proto == PROTO_TCP {
            let doff = byte(packet, l4.l4_off + 12).map_or(0, |b| usize::from(b >> 4) * 4);
            (Kind::Tcp, doff)
        } else {
            (Kind::Udp, UDP_HDR_LEN)
        };
        let hdr_len = l4.l4_off + l4_hdr_len;
        let min_l4_hdr_len = if kind == Kind::Tcp {
            TCP_MIN_HDR_LEN
        } else {
            UDP_HDR_LEN
        };
        if l4_hdr_len < min_l4_hdr_len || hdr_len > packet.len() {
            return Err(OffloadError::BadL4HeaderLen(l4_hdr_len));
        }
        let gso_size = usize::from(hdr.gso_size);
        let payload = packet.len() - hdr_len;
        let count = payload.div_ceil(gso_size).max(1);
        Ok(Segments {
            packet,
            kind,
            l4,
            hdr_len,
            gso_size,
            count,
        })
    }

    /// Number of segments (at least 1).
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// The payload range of segment `i` in the super-packet.
    #[inline]
    fn chunk(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.count {
            return None;
        }
        if let Kind::Whole(_) = self.kind {
            return Some((0, self.packet.len()));
        }
        let start = self.hdr_len + i * self.gso_size;
        let end = start.saturating_add(self.gso_size).min(self.packet.len());
        Some((start, end.max(start)))
    }

    /// IP packet length of segment `i` (0 if `i >= count`).
    #[inline]
    pub fn segment_len(&self, i: usize) -> usize {
        self.chunk(i).map_or(0, |(s, e)| self.hdr_len + (e - s))
    }

    /// The longest segment: header length + gso_size, or less when the whole payload is
    /// shorter than one gso_size (then it is the single segment's length). For gso_type None,
    /// the packet's length. Every segment but the last is exactly this long.
    #[inline]
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// IP + L4 header length repeated in every segment (0 for gso_type None: the packet is
    /// copied as an opaque whole).
    #[inline]
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Writes complete segment `i` into `out[..len]` and returns `len`
    /// ([`segment_len`](Segments::segment_len)`(i)`).
    pub fn write(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        let (start, end) = self.chunk(i).ok_or(OffloadError::NoSuchSegment {
            index: i,
            count: self.count,
        })?;
        let seg_len = self.hdr_len + (end - start);
        if out.len() < seg_len {
            return Err(OffloadError::OutputTooSmall {
                need: seg_len,
                have: out.len(),
            });
        }
        let have = out.len();
        let short = || err_len("segment", seg_len, have);
        let (Some(head), Some(chunk)) =
            (self.packet.get(..self.hdr_len), self.packet.get(start..end))
        else {
            return Err(err_len("super-packet", end, self.packet.len()));
        };
        let seg = out.get_mut(..seg_len).ok_or_else(short)?;
        copy_to(seg, 0, head).ok_or_else(short)?;
        copy_to(seg, self.hdr_len, chunk).ok_or_else(short)?;
        match self.kind {
            Kind::Whole(None) => Ok(seg_len),
            Kind::Whole(Some(hdr)) => complete_checksum(&hdr, seg).map(|()| seg_len),
            Kind::Tcp | Kind::Udp => self.fix_segment(i, seg).map(|()| seg_len).ok_or_else(short),
        }
    }

    /// Fixes the headers of segment `i`, already copied into `seg` (exactly its length).
    fn fix_segment(&self, i: usize, seg: &mut [u8]) -> Option<()> {
        let seg_len = seg.len();
        let l4_off = self.l4.l4_off;
        if self.l4.v6 {
            put_be16(seg, 4, u16::try_from(seg_len - IPV6_HDR_LEN).ok()?)?;
        } else {
            put_be16(seg, 2, u16::try_from(seg_len).ok()?)?;
            // IPv4 ids are 16 bits and wrap: truncating `i` is intended.
            put_be16(seg, 4, be16(seg, 4)?.wrapping_add(i as u16))?;
            put_be16(seg, 10, 0)?;
            let c = !checksum::fold(checksum::sum(0, seg.get(..l4_off)?));
            put_le16(seg, 10, c)?;
        }
        let csum_at = if self.kind == Kind::Tcp {
            // Sequence numbers wrap modulo 2³²: truncating the offset is intended.
            let seq = be32(seg, l4_off + 4)?.wrapping_add(i.wrapping_mul(self.gso_size) as u32);
            put_be32(seg, l4_off + 4, seq)?;
            let mut flags = byte(seg, l4_off + 13)?;
            if i + 1 < self.count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            put_byte(seg, l4_off + 13, flags)?;
            l4_off + TCP_CSUM_OFFSET
        } else {
            put_be16(seg, l4_off + 4, u16::try_from(seg_len - l4_off).ok()?)?;
            l4_off + UDP_CSUM_OFFSET
        };
        put_be16(seg, csum_at, 0)?;
        let mut c = !checksum::fold(checksum::l4_sum(seg, &self.l4)?);
        if c == 0 && self.kind == Kind::Udp {
            c = 0xFFFF;
        }
        put_le16(seg, csum_at, c)
    }
}
