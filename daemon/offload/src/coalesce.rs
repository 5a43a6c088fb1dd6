//! Receive side: consecutive TCP segments of one flow merged back into one super-packet that
//! is written to the TUN device with a `GSO_TCPV6`/`GSO_TCPV4` vnet header (linerate §7).
//!
//! The rules follow the kernel's GRO and wireguard-go's `tcpPacketsCanCoalesce`: only plain
//! data segments (flags exactly ACK or ACK|PSH, no IPv6 extension headers, no IPv4 options or
//! fragments) are taken; a segment is appended only if it continues the sequence exactly, with
//! the same ACK number, TCP options and IP fields, nothing follows a PSH or a short segment, and
//! the limits (64 segments, 65,535 IP bytes, the caller's buffer) hold.

use crate::bytes::{be16, be32, byte, copy_to, put_be16, put_byte, put_le16};
use crate::checksum::{self, fold, pseudo_header_sum};
use crate::ip::{self, IPV4_MIN_HDR_LEN, IPV6_HDR_LEN, L4, PROTO_TCP};
use crate::split::{TCP_ACK, TCP_CSUM_OFFSET, TCP_MIN_HDR_LEN, TCP_PSH};
use crate::vnet::{GsoType, VNET_HDR_LEN, VnetHeader};

/// Most segments merged into one super-packet (older kernels' `UDP_MAX_SEGMENTS`, and the
/// GRO limit).
pub const MAX_SEGMENTS: usize = 64;
/// Most IP bytes in one super-packet (the IPv4 total length / IPv6 payload length limit).
pub const MAX_IP_LEN: usize = 65_535;

/// A segment that passed the structural candidate checks.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    v6: bool,
    ip_hlen: usize,
    tcp_hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

impl Candidate {
    #[inline]
    fn hdr_len(&self) -> usize {
        self.ip_hlen + self.tcp_hlen
    }

    #[inline]
    fn l4(&self) -> L4 {
        L4 {
            v6: self.v6,
            l4_off: self.ip_hlen,
            proto: PROTO_TCP,
        }
    }
}

/// The structural candidate checks (everything but checksums).
#[inline]
fn candidate(p: &[u8]) -> Option<Candidate> {
    let first = byte(p, 0)?;
    let len = p.len();
    let (v6, ip_hlen) = match first >> 4 {
        6 if byte(p, 6)? == PROTO_TCP && usize::from(be16(p, 4)?) + IPV6_HDR_LEN == len => {
            (true, IPV6_HDR_LEN)
        }
        4 if first & 0x0F == 5
            && usize::from(be16(p, 2)?) == len
            && be16(p, 6)? & 0x3FFF == 0
            && byte(p, 9)? == PROTO_TCP =>
        {
            (false, IPV4_MIN_HDR_LEN)
        }
        _ => return None,
    };
    let tcp_hlen = usize::from(byte(p, ip_hlen + 12)? >> 4) * 4;
    let flags = byte(p, ip_hlen + 13)?;
    let hdr_len = ip_hlen + tcp_hlen;
    if tcp_hlen < TCP_MIN_HDR_LEN
        || hdr_len >= len
        || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH)
    {
        return None;
    }
    Some(Candidate {
        v6,
        ip_hlen,
        tcp_hlen,
        seq: be32(p, ip_hlen + 4)?,
        flags,
        payload: len - hdr_len,
    })
}

/// IPv4 header checksum and the TCP checksum of a candidate.
#[inline]
fn checksums_ok(p: &[u8], c: &Candidate) -> bool {
    (c.v6 || checksum::ipv4_header_ok(p, c.ip_hlen))
        && checksum::l4_sum(p, &c.l4()).is_some_and(|s| fold(s) == 0xFFFF)
}

/// True when `packet` is an IPv6 (or IPv4) TCP segment that [`Coalescer::start`] could take:
/// the cheap structural pre-check (IPv6 next header TCP, or IPv4 IHL 5 without MF/fragment
/// offset; length field consistent; flags exactly ACK or ACK|PSH; payload > 0).
/// Checksums are not looked at: `start` may still refuse a packet that passes this.
#[inline]
pub fn is_coalescable(packet: &[u8]) -> bool {
    candidate(packet).is_some()
}

/// What [`Coalescer::try_append`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Its payload now ends the super-packet.
    Appended,
    /// Another flow (IP version, addresses or ports differ) or not a TCP packet at all. The open
    /// super-packet is unaffected and may stay open.
    NotSameFlow,
    /// Same addresses and ports but it cannot follow: a gap, PSH or a short segment already at
    /// the end, a size or 64-segment limit, a different ACK number, TCP options or IP fields,
    /// flags other than ACK/ACK|PSH, no payload, or a bad checksum. The caller finishes and
    /// writes the open super-packet first, then handles the packet (start a new one with it;
    /// if `start` refuses, write it alone with [`VnetHeader::NONE`]).
    Flush,
}

/// One TCP super-packet under construction in a caller's buffer `out`, laid out as
/// `[vnet header (VNET_HDR_LEN) | IP packet …]`. `out` is passed to every call; the coalescer
/// only remembers lengths and the flow's position. Its first segment's IP and TCP headers (in
/// `out`) are the merged packet's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescer {
    v6: bool,
    ip_hlen: usize,
    tcp_hlen: usize,
    /// The first segment's payload length: the merged packet's gso_size.
    gso_size: usize,
    /// IP bytes so far.
    len: usize,
    segments: usize,
    next_seq: u32,
    /// The last segment was short or carried PSH: nothing may follow.
    closed: bool,
}

impl Coalescer {
    /// Starts a super-packet with `packet`, copied to `out[VNET_HDR_LEN..]`.
    ///
    /// Returns `None` (and leaves `out` untouched) when `packet` is not a candidate
    /// ([`is_coalescable`]), its checksum (TCP, and IPv4 header) does not verify, or `out` is
    /// shorter than `VNET_HDR_LEN + packet.len()`.
    pub fn start(out: &mut [u8], packet: &[u8]) -> Option<Coalescer> {
        let c = candidate(packet)?;
        if !checksums_ok(packet, &c) {
            return None;
        }
        copy_to(out, VNET_HDR_LEN, packet)?;
        Some(Coalescer {
            v6: c.v6,
            ip_hlen: c.ip_hlen,
            tcp_hlen: c.tcp_hlen,
            gso_size: c.payload,
            len: packet.len(),
            segments: 1,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            closed: c.flags & TCP_PSH != 0,
        })
    }

    /// Appends `packet`'s payload if it continues the super-packet (see [`Append`]).
    ///
    /// Its checksum is verified before anything is copied. A bad checksum on a packet of this
    /// flow gives [`Append::Flush`]: the open super-packet is finished first, `start` then
    /// refuses the packet, and written alone with an all-zero vnet header it is dropped by the
    /// kernel's own checksum check, in order. A bad checksum is never merged.
    ///
    /// If `out` does not hold the open super-packet (a different, shorter buffer), the answer is
    /// `Flush` and nothing is written.
    pub fn try_append(&mut self, out: &mut [u8], packet: &[u8]) -> Append {
        let Some(head) = out.get(VNET_HDR_LEN..).and_then(|h| h.get(..self.len)) else {
            return Append::Flush;
        };
        if !self.same_flow(head, packet) {
            return Append::NotSameFlow;
        }
        let Some(c) = candidate(packet) else {
            return Append::Flush;
        };
        if !self.can_follow(head, packet, &c) || !checksums_ok(packet, &c) {
            return Append::Flush;
        }
        let hdr_len = c.hdr_len();
        let end = VNET_HDR_LEN + self.len;
        let copied = packet
            .get(hdr_len..)
            .and_then(|payload| copy_to(out, end, payload));
        if copied.is_none() {
            return Append::Flush;
        }
        if c.flags & TCP_PSH != 0 {
            let at = VNET_HDR_LEN + self.ip_hlen + 13;
            if let Some(flags) = byte(out, at) {
                // `at` was just read, so the store cannot fail.
                let _ = put_byte(out, at, flags | TCP_PSH);
            }
            self.closed = true;
        }
        if c.payload < self.gso_size {
            self.closed = true;
        }
        self.len += c.payload;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(c.payload as u32);
        Append::Appended
    }

    /// Same IP version, addresses and ports as the open super-packet (`head`).
    #[inline]
    fn same_flow(&self, head: &[u8], p: &[u8]) -> bool {
        let Some(first) = byte(p, 0) else {
            return false;
        };
        let l4_off = match first >> 4 {
            6 if self.v6 && byte(p, 6) == Some(PROTO_TCP) => IPV6_HDR_LEN,
            4 if !self.v6 && byte(p, 9) == Some(PROTO_TCP) && first & 0x0F >= 5 => {
                usize::from(first & 0x0F) * 4
            }
            _ => return false,
        };
        let head_addrs = ip::addrs(head, self.v6);
        let head_ports = head.get(self.ip_hlen..self.ip_hlen + 4);
        head_addrs.is_some()
            && head_addrs == ip::addrs(p, self.v6)
            && head_ports.is_some()
            && head_ports == p.get(l4_off..l4_off + 4)
    }

    /// The merge rules beyond the flow key, for a candidate `c` of the same flow.
    #[inline]
    fn can_follow(&self, head: &[u8], p: &[u8], c: &Candidate) -> bool {
        let ip_same = if self.v6 {
            // Version, traffic class, flow label; hop limit.
            head.get(..4) == p.get(..4) && byte(head, 7) == byte(p, 7)
        } else {
            // TOS; reserved/DF/MF; TTL (IHL is 5 on both).
            byte(head, 1) == byte(p, 1)
                && byte(head, 6).map(|b| b >> 5) == byte(p, 6).map(|b| b >> 5)
                && byte(head, 8) == byte(p, 8)
        };
        let t = self.ip_hlen;
        // ACK number; data offset and reserved bits; options.
        let tcp_same = c.tcp_hlen == self.tcp_hlen
            && head.get(t + 8..t + 13) == p.get(t + 8..t + 13)
            && head.get(t + TCP_MIN_HDR_LEN..t + self.tcp_hlen)
                == p.get(t + TCP_MIN_HDR_LEN..t + self.tcp_hlen);
        let new_len = self.len + c.payload;
        ip_same
            && tcp_same
            && !self.closed
            && c.seq == self.next_seq
            && c.payload <= self.gso_size
            && self.segments < MAX_SEGMENTS
            && new_len <= MAX_IP_LEN
    }

    /// Writes the vnet header into `out[..VNET_HDR_LEN]`, fixes the IP length (and IPv4 header
    /// checksum), and returns the bytes (vnet header included) to write to the TUN device.
    ///
    /// One segment: [`VnetHeader::NONE`] and the packet untouched (its checksum is complete).
    /// More: the folded, non-complemented pseudo-header sum in the TCP checksum field, and
    /// `NEEDS_CSUM`, gso TCPV6/TCPV4, `hdr_len` = IP + TCP header, `gso_size` = the first
    /// segment's payload, `csum_start` = IP header length, `csum_offset` = 16.
    ///
    /// Returns 0 (writing nothing) only if `out` is not the buffer the super-packet was built in.
    /// May be called again after more segments are appended.
    pub fn finish(&self, out: &mut [u8]) -> usize {
        self.try_finish(out).unwrap_or(0)
    }

    fn try_finish(&self, out: &mut [u8]) -> Option<usize> {
        let total = VNET_HDR_LEN + self.len;
        let (vnet, rest) = out.get_mut(..total)?.split_at_mut_checked(VNET_HDR_LEN)?;
        if self.segments <= 1 {
            VnetHeader::NONE.write(vnet).ok()?;
            return Some(total);
        }
        let ip_hlen = self.ip_hlen;
        let gso_type = if self.v6 {
            put_be16(rest, 4, u16::try_from(self.len - IPV6_HDR_LEN).ok()?)?;
            GsoType::TcpV6
        } else {
            put_be16(rest, 2, u16::try_from(self.len).ok()?)?;
            put_be16(rest, 10, 0)?;
            let c = !fold(checksum::sum(0, rest.get(..ip_hlen)?));
            put_le16(rest, 10, c)?;
            GsoType::TcpV4
        };
        let l4_len = u32::try_from(self.len - ip_hlen).ok()?;
        let pseudo = fold(pseudo_header_sum(
            ip::addrs(rest, self.v6)?,
            l4_len,
            PROTO_TCP,
        ));
        put_le16(rest, ip_hlen + TCP_CSUM_OFFSET, pseudo)?;
        let hdr = VnetHeader {
            needs_csum: true,
            data_valid: false,
            gso_type,
            ecn: false,
            hdr_len: u16::try_from(ip_hlen + self.tcp_hlen).ok()?,
            gso_size: u16::try_from(self.gso_size).ok()?,
            csum_start: u16::try_from(ip_hlen).ok()?,
            csum_offset: TCP_CSUM_OFFSET as u16,
        };
        hdr.write(vnet).ok()?;
        Some(total)
    }

    /// Segments merged so far (at least 1).
    #[inline]
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// IP bytes so far (the super-packet's IP length; [`finish`](Coalescer::finish) returns
    /// this plus [`VNET_HDR_LEN`]).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a coalescer holds at least its first segment.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The merged packet's gso_size: the first segment's payload length.
    #[inline]
    pub fn gso_size(&self) -> usize {
        self.gso_size
    }
}
