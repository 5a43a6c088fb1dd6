//! The one error type of the crate.

use crate::vnet::GsoType;

/// Why a virtio-net header or a packet cannot be handled.
///
/// Every public function of the crate is total: malformed input gives one of these, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The input ends before a field that must be there.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The virtio-net `gso_type` (ECN bit masked off) is not NONE, TCPV4, TCPV6 or UDP_L4
    /// (3, the old UFO, is refused too: TUN devices do not produce it without `TUN_F_UFO`).
    #[error("unknown virtio-net gso_type {0:#04x}")]
    UnknownGsoType(u8),
    /// `csum_start + csum_offset + 2` goes past the end of the packet.
    #[error("csum_start {csum_start} + csum_offset {csum_offset} does not fit a {len}-byte packet")]
    BadCsumStart {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// Length of the packet.
        len: usize,
    },
    /// `csum_start` of a GSO packet is not where the IP header says the L4 header begins.
    #[error("csum_start {csum_start} is not the L4 header offset {l4_offset}")]
    CsumStartMismatch {
        /// The header's `csum_start`.
        csum_start: u16,
        /// Offset of the L4 header found by walking the IP header.
        l4_offset: usize,
    },
    /// [`complete_checksum`](crate::complete_checksum) was given a GSO super-packet; cut it
    /// with [`Segments`](crate::Segments) instead.
    #[error("gso_type {0:?} packet: split it, its checksum cannot be completed as a whole")]
    GsoPacket(GsoType),
    /// The version nibble is neither 4 nor 6.
    #[error("not an IP packet: version {0}")]
    NotIp(u8),
    /// The gso type names the other IP version (TCPV4 on IPv6 or TCPV6 on IPv4).
    #[error("gso_type {gso:?} on an IPv{version} packet")]
    GsoVersionMismatch {
        /// The header's gso type.
        gso: GsoType,
        /// The packet's IP version.
        version: u8,
    },
    /// The L4 protocol is not the TCP or UDP that the gso type (or the operation) needs.
    #[error("not TCP/UDP as required: protocol {0}")]
    NotTcpUdp(u8),
    /// The IPv4 total length or IPv6 payload length disagrees with the bytes received.
    #[error("IP length field says {field} bytes, the packet has {actual}")]
    LengthMismatch {
        /// Length the IP header claims (whole IP packet).
        field: usize,
        /// Length actually present.
        actual: usize,
    },
    /// IPv4 IHL below 5 or past the end of the packet.
    #[error("bad IPv4 header length {0}")]
    BadIpHeaderLen(usize),
    /// An IPv4 fragment (MF set or a fragment offset): it has no L4 header to cut.
    #[error("IPv4 fragment")]
    Fragment,
    /// An IPv6 extension header other than hop-by-hop or destination options (routing headers
    /// change the pseudo-header, fragments cannot be segmented).
    #[error("unsupported IPv6 extension header {0}")]
    UnsupportedExtensionHeader(u8),
    /// TCP data offset below 5 words, or the TCP/UDP header runs past the end.
    #[error("bad L4 header length {0}")]
    BadL4HeaderLen(usize),
    /// A super-packet received from a link whose checksum field holds neither the
    /// pseudo-header sum (left to an offload) nor a valid checksum: damaged on the way.
    #[error("super-packet checksum field is neither partial nor valid")]
    BadChecksum,
    /// A GSO packet with `gso_size` 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// A segment index at or past [`Segments::count`](crate::Segments::count).
    #[error("segment {index} out of range: there are {count}")]
    NoSuchSegment {
        /// The index asked for.
        index: usize,
        /// Number of segments.
        count: usize,
    },
    /// The output buffer cannot take what must be written.
    #[error("output too small: need {need} bytes, have {have}")]
    OutputTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}
