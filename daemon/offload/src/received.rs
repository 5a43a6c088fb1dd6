//! A TCP or UDP super-packet that arrived whole from a link: what a peer's eBPF fast path sends
//! when it encapsulates a GSO packet from its TUN device (its kernel keeps the packet whole,
//! `BPF_F_ADJ_ROOM_FIXED_GSO`, and segments only the outer datagram if at all), and what the
//! receiving node's userspace gets when its own programs leave such a datagram to it.
//!
//! [`received_super_packet`] turns it into what a TUN read of the same packet would have
//! given: a virtio-net header with `NEEDS_CSUM` and a gso type, and the pseudo-header sum in
//! the checksum field. From there the packet takes the paths of the transmit side: cut by
//! [`Segments`](crate::Segments) for a link or a TUN device without offloads, or written whole
//! behind the header to a TUN device with them.

use crate::bytes::{byte, le16, put_le16};
use crate::checksum::{checksum_valid, fold, pseudo_header_sum};
use crate::error::OffloadError;
use crate::ip::{self, PROTO_TCP, PROTO_UDP};
use crate::split::{TCP_CSUM_OFFSET, TCP_CWR, TCP_MIN_HDR_LEN};
use crate::vnet::{GsoType, VnetHeader};

const UDP_HDR_LEN: usize = 8;
const UDP_CSUM_OFFSET: usize = 6;

/// Describes `packet`, a whole IPv4 or IPv6 packet received from a link, as a super-packet
/// when it is one, and makes its checksum field what the returned header says.
///
/// - TCP: a super-packet when it is longer than `max_segment_len` (the IP length of the
///   segments it will be cut into: the MTU of where it goes). TCP may be cut anywhere, so the
///   segments carry `max_segment_len - header length` payload bytes each (fewer when the
///   receive reported a smaller `gso_size`).
/// - UDP: a super-packet only when the receive reported the sender's `gso_size` (the
///   socket's `UDP_GRO` control message) and the payload is longer than it: each segment is a
///   datagram of its own to the application, so UDP is cut only where the sender's kernel
///   would have cut it.
///
/// For a super-packet, the checksum field must hold either the pseudo-header sum of the whole
/// packet (the sender's kernel left the checksum to an offload, which is how GSO packets
/// travel) or a valid checksum; it is then set to the pseudo-header sum, as `NEEDS_CSUM`
/// requires. Any other value is [`OffloadError::BadChecksum`]: the packet was damaged.
///
/// `Ok(None)`: not a super-packet (short enough, another protocol, no `gso_size` for UDP, or
/// not parseable as a whole TCP/UDP packet); the caller handles it as one packet.
pub fn received_super_packet(
    packet: &mut [u8],
    gso_size: Option<u16>,
    max_segment_len: usize,
) -> Result<Option<VnetHeader>, OffloadError> {
    let Ok(l4) = ip::locate_l4(packet) else {
        return Ok(None);
    };
    let len = packet.len();
    let hint = gso_size.map(usize::from).filter(|g| *g > 0);
    let (gso_type, l4_hdr_len, segment_payload, csum_offset) = match l4.proto {
        PROTO_TCP => {
            let doff = byte(packet, l4.l4_off + 12).map_or(0, |b| usize::from(b >> 4) * 4);
            let hdr_len = l4.l4_off + doff;
            if doff < TCP_MIN_HDR_LEN || hdr_len > len {
                return Ok(None);
            }
            if len <= max_segment_len || max_segment_len <= hdr_len {
                return Ok(None);
            }
            let payload = (max_segment_len - hdr_len).min(hint.unwrap_or(usize::MAX));
            let gso_type = if l4.v6 {
                GsoType::TcpV6
            } else {
                GsoType::TcpV4
            };
            (gso_type, doff, payload, TCP_CSUM_OFFSET)
        }
        PROTO_UDP => {
            let Some(hint) = hint else {
                return Ok(None);
            };
            let hdr_len = l4.l4_off + UDP_HDR_LEN;
            if hdr_len > len || len - hdr_len <= hint {
                return Ok(None);
            }
            (GsoType::UdpL4, UDP_HDR_LEN, hint, UDP_CSUM_OFFSET)
        }
        _ => return Ok(None),
    };
    let field = l4.l4_off + csum_offset;
    let l4_len = u32::try_from(len - l4.l4_off).map_err(|_| OffloadError::BadChecksum)?;
    let addrs = ip::addrs(packet, l4.v6).ok_or(OffloadError::BadChecksum)?;
    let pseudo = fold(pseudo_header_sum(addrs, l4_len, l4.proto));
    let stored = le16(packet, field).ok_or(OffloadError::BadChecksum)?;
    if stored != pseudo && !checksum_valid(packet) {
        return Err(OffloadError::BadChecksum);
    }
    put_le16(packet, field, pseudo).ok_or(OffloadError::BadChecksum)?;
    let cwr = l4.proto == PROTO_TCP
        && byte(packet, l4.l4_off + 13).is_some_and(|flags| flags & TCP_CWR != 0);
    let narrow = |v: usize| u16::try_from(v).map_err(|_| OffloadError::BadChecksum);
    Ok(Some(VnetHeader {
        needs_csum: true,
        data_valid: false,
        gso_type,
        ecn: cwr,
        hdr_len: narrow(l4.l4_off + l4_hdr_len)?,
        gso_size: narrow(segment_payload)?,
        csum_start: narrow(l4.l4_off)?,
        csum_offset: narrow(csum_offset)?,
    }))
}
