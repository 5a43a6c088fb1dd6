//! `struct virtio_net_hdr`: the 10-byte header a TUN device opened with `IFF_VNET_HDR` puts in
//! front of every packet it reads and expects in front of every packet written (linerate §3).

use crate::bytes::{le16, put_le16};
use crate::checksum;
use crate::error::OffloadError;

/// Length of the virtio-net header (without `num_buffers`; `TUNSETVNETHDRSZ` is not used).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum is partial; finish it from `csum_start`, store at `+csum_offset`.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified.
pub(crate) const F_DATA_VALID: u8 = 2;
/// `gso_type` bit: the TCP super-packet carries CWR (TSO with ECN).
pub(crate) const GSO_ECN: u8 = 0x80;

/// The segmentation the packet after the header asks for (`gso_type` with the ECN bit masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    /// 0: a single packet.
    None,
    /// 1: an IPv4 TCP super-packet (TSO).
    TcpV4,
    /// 4: an IPv6 TCP super-packet (TSO).
    TcpV6,
    /// 5: an IPv4 or IPv6 UDP super-packet (USO, `UDP_SEGMENT`).
    UdpL4,
}

impl GsoType {
    /// The wire value, ECN bit not included.
    #[inline]
    pub const fn to_raw(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
        }
    }

    /// The type for a wire value with the ECN bit already masked off.
    #[inline]
    pub const fn from_raw(raw: u8) -> Result<GsoType, OffloadError> {
        match raw {
            0 => Ok(GsoType::None),
            1 => Ok(GsoType::TcpV4),
            4 => Ok(GsoType::TcpV6),
            5 => Ok(GsoType::UdpL4),
            other => Err(OffloadError::UnknownGsoType(other)),
        }
    }
}

/// A parsed `struct virtio_net_hdr` in host (little-endian) byte order.
///
/// ```text
/// off size field
/// 0   u8   flags        1 NEEDS_CSUM, 2 DATA_VALID (other bits are ignored)
/// 1   u8   gso_type     0 NONE, 1 TCPV4, 4 TCPV6, 5 UDP_L4; bit 0x80 ECN
/// 2   u16  hdr_len      L3+L4 header length (advisory: never trusted)
/// 4   u16  gso_size     payload bytes per segment
/// 6   u16  csum_start   offset of the L4 header
/// 8   u16  csum_offset  16 for TCP, 6 for UDP
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHeader {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum field holds only the pseudo-header sum.
    pub needs_csum: bool,
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
    pub data_valid: bool,
    /// The segmentation asked for.
    pub gso_type: GsoType,
    /// `VIRTIO_NET_HDR_GSO_ECN`.
    pub ecn: bool,
    /// Header length as the sender claims it.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// All zero: a complete packet, checksum already correct, no segmentation.
    pub const NONE: VnetHeader = VnetHeader {
        needs_csum: false,
        data_valid: false,
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses the first [`VNET_HDR_LEN`] bytes of `bytes` (longer input is fine: it is usually
    /// the whole TUN read). Unknown flag bits are ignored; an unknown gso type is an error.
    pub fn parse(bytes: &[u8]) -> Result<VnetHeader, OffloadError> {
        let truncated = OffloadError::Truncated {
            what: "virtio-net header",
            need: VNET_HDR_LEN,
            have: bytes.len(),
        };
        let h = bytes.first_chunk::<VNET_HDR_LEN>().ok_or(truncated)?;
        let [flags, gso, ..] = *h;
        let field = |at| le16(h, at).unwrap_or(0);
        Ok(VnetHeader {
            needs_csum: flags & F_NEEDS_CSUM != 0,
            data_valid: flags & F_DATA_VALID != 0,
            gso_type: GsoType::from_raw(gso & !GSO_ECN)?,
            ecn: gso & GSO_ECN != 0,
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        })
    }

    /// Writes the header into `out[..VNET_HDR_LEN]`.
    pub fn write(&self, out: &mut [u8]) -> Result<(), OffloadError> {
        let have = out.len();
        let h = out
            .first_chunk_mut::<VNET_HDR_LEN>()
            .ok_or(OffloadError::OutputTooSmall {
                need: VNET_HDR_LEN,
                have,
            })?;
        let mut flags = 0;
        if self.needs_csum {
            flags |= F_NEEDS_CSUM;
        }
        if self.data_valid {
            flags |= F_DATA_VALID;
        }
        let mut gso = self.gso_type.to_raw();
        if self.ecn {
            gso |= GSO_ECN;
        }
        let mut bytes = [0u8; VNET_HDR_LEN];
        bytes[0] = flags;
        bytes[1] = gso;
        bytes[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        bytes[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        *h = bytes;
        Ok(())
    }

    /// Where the checksum lives for a `NEEDS_CSUM` header on a `len`-byte packet:
    /// `(csum_start, csum_start + csum_offset)`, checked to fit.
    pub(crate) fn csum_span(&self, len: usize) -> Result<(usize, usize), OffloadError> {
        let start = usize::from(self.csum_start);
        let field = start + usize::from(self.csum_offset);
        if field + 2 > len {
            return Err(OffloadError::BadCsumStart {
                csum_start: self.csum_start,
                csum_offset: self.csum_offset,
                len,
            });
        }
        Ok((start, field))
    }
}

/// Completes a packet whose header says `NEEDS_CSUM` (gso_type None): sums from `csum_start` to
/// the end (the field as it is holds the pseudo-header sum) and stores the complement at
/// `csum_start + csum_offset`. A result of 0 is stored as 0xFFFF, as the kernel does
/// (`CSUM_MANGLED_0`; equivalent for TCP, required for UDP).
///
/// A header without `NEEDS_CSUM` leaves the packet unchanged; a GSO header is an error
/// ([`OffloadError::GsoPacket`]): cut it with [`Segments`](crate::Segments), which computes
/// full checksums per segment.
pub fn complete_checksum(hdr: &VnetHeader, packet: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum {
        return Ok(());
    }
    if hdr.gso_type != GsoType::None {
        return Err(OffloadError::GsoPacket(hdr.gso_type));
    }
    let (start, field) = hdr.csum_span(packet.len())?;
    let sum = checksum::sum(0, packet.get(start..).unwrap_or(&[]));
    let c = match !checksum::fold(sum) {
        0 => 0xFFFF,
        c => c,
    };
    put_le16(packet, field, c).ok_or(OffloadError::BadCsumStart {
        csum_start: hdr.csum_start,
        csum_offset: hdr.csum_offset,
        len: packet.len(),
    })
}
