//! Test helpers: small packet builders and an independent, deliberately simple RFC 1071
//! checksum (big-endian 16-bit words, one byte at a time) that the crate's checksums are
//! checked against.

#![allow(clippy::indexing_slicing, clippy::expect_used)]

mod coalesce_tests;
mod fuzz;
mod received_tests;
mod roundtrip;
mod split_tests;
mod vnet_checksum;

use crate::{GsoType, VnetHeader};

pub(crate) const ACK: u8 = 0x10;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const FIN: u8 = 0x01;
pub(crate) const CWR: u8 = 0x80;
pub(crate) const ECE: u8 = 0x40;
pub(crate) const SYN: u8 = 0x02;

pub(crate) const SRC6: [u8; 16] = [0xfd, 0x5e, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(crate) const DST6: [u8; 16] = [0xfd, 0x5e, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub(crate) const SRC4: [u8; 4] = [10, 9, 0, 1];
pub(crate) const DST4: [u8; 4] = [10, 9, 0, 2];

/// RFC 1071 straight from the definition: the complement of the one's-complement sum of the
/// big-endian 16-bit words (an odd last byte padded with zero). A valid packet gives 0.
pub(crate) fn rfc1071(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = if i + 1 < data.len() {
            u32::from(data[i + 1])
        } else {
            0
        };
        sum += hi | lo;
        sum = (sum & 0xFFFF) + (sum >> 16);
        i += 2;
    }
    !(sum as u16)
}

/// IP header length and L4 protocol, parsed independently (no extension headers, options ok).
pub(crate) fn ref_l4(packet: &[u8]) -> (usize, u8) {
    if packet[0] >> 4 == 6 {
        (40, packet[6])
    } else {
        (usize::from(packet[0] & 0x0F) * 4, packet[9])
    }
}

/// The pseudo-header bytes for `packet` as RFC 793/768/8200 lay them out.
pub(crate) fn ref_pseudo(packet: &[u8]) -> Vec<u8> {
    let (l4_off, proto) = ref_l4(packet);
    let l4_len = packet.len() - l4_off;
    let mut ph = Vec::new();
    if packet[0] >> 4 == 6 {
        ph.extend_from_slice(&packet[8..40]);
        ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        ph.extend_from_slice(&packet[12..20]);
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    ph
}

/// True when the L4 checksum of `packet` verifies with the reference implementation.
pub(crate) fn ref_l4_ok(packet: &[u8]) -> bool {
    let (l4_off, _) = ref_l4(packet);
    let mut all = ref_pseudo(packet);
    all.extend_from_slice(&packet[l4_off..]);
    rfc1071(&all) == 0
}

/// True when the IPv4 header checksum verifies (always true for IPv6).
pub(crate) fn ref_ipv4_ok(packet: &[u8]) -> bool {
    let (ihl, _) = ref_l4(packet);
    packet[0] >> 4 == 6 || rfc1071(&packet[..ihl]) == 0
}

/// Where the L4 checksum field is.
pub(crate) fn csum_field(packet: &[u8]) -> usize {
    let (l4_off, proto) = ref_l4(packet);
    l4_off + if proto == 6 { 16 } else { 6 }
}

/// Fills in correct IPv4 header and L4 checksums with the reference implementation.
pub(crate) fn ref_fill_checksums(packet: &mut [u8]) {
    let (l4_off, _) = ref_l4(packet);
    if packet[0] >> 4 == 4 {
        packet[10..12].fill(0);
        let c = rfc1071(&packet[..l4_off]);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let at = csum_field(packet);
    packet[at..at + 2].fill(0);
    let mut all = ref_pseudo(packet);
    all.extend_from_slice(&packet[l4_off..]);
    let c = rfc1071(&all);
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Puts the folded, non-complemented pseudo-header sum in the L4 checksum field, as the kernel
/// hands out a `NEEDS_CSUM` packet.
pub(crate) fn ref_fill_pseudo(packet: &mut [u8]) {
    let at = csum_field(packet);
    let partial = !rfc1071(&ref_pseudo(packet));
    packet[at..at + 2].copy_from_slice(&partial.to_be_bytes());
}

/// An IP header for `l4_len` bytes of `proto`.
pub(crate) fn ip_header(v6: bool, proto: u8, l4_len: usize, ip: &IpFields) -> Vec<u8> {
    let mut h = Vec::new();
    if v6 {
        let first = 0x6000_0000u32 | (u32::from(ip.tos) << 20) | (ip.flow_label & 0xF_FFFF);
        h.extend_from_slice(&first.to_be_bytes());
        h.extend_from_slice(&(l4_len as u16).to_be_bytes());
        h.extend_from_slice(&[proto, ip.ttl]);
        h.extend_from_slice(&SRC6);
        h.extend_from_slice(&DST6);
    } else {
        h.extend_from_slice(&[0x45, ip.tos]);
        h.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&ip.id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0]); // DF
        h.extend_from_slice(&[ip.ttl, proto, 0, 0]);
        h.extend_from_slice(&SRC4);
        h.extend_from_slice(&DST4);
    }
    h
}

/// IP fields the merge rules look at.
#[derive(Clone, Debug)]
pub(crate) struct IpFields {
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub flow_label: u32,
}

impl Default for IpFields {
    fn default() -> Self {
        IpFields {
            tos: 0,
            ttl: 64,
            id: 0x1234,
            flow_label: 0x12345,
        }
    }
}

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub(crate) struct Tcp {
    pub v6: bool,
    pub ip: IpFields,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// A multiple of 4 bytes.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// `len` bytes of recognisable payload starting at stream offset `from`.
pub(crate) fn payload(from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect()
}

/// TCP timestamps option (kind 8) padded with two NOPs, as Linux sends it.
pub(crate) fn timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

impl Tcp {
    pub(crate) fn new(v6: bool, payload: Vec<u8>) -> Tcp {
        Tcp {
            v6,
            ip: IpFields::default(),
            src_port: 40000,
            dst_port: 5201,
            seq: 0xFFFF_F000, // wraps within a 64 KB super-packet
            ack: 0x0102_0304,
            flags: ACK,
            window: 512,
            options: timestamps(1000, 2000),
            payload,
        }
    }

    /// The packet with correct checksums.
    pub(crate) fn build(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let tcp_len = 20 + self.options.len() + self.payload.len();
        let mut p = ip_header(self.v6, 6, tcp_len, &self.ip);
        p.extend_from_slice(&self.src_port.to_be_bytes());
        p.extend_from_slice(&self.dst_port.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        let doff = ((20 + self.options.len()) / 4) as u8;
        p.extend_from_slice(&[doff << 4, self.flags]);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        p.extend_from_slice(&self.options);
        p.extend_from_slice(&self.payload);
        ref_fill_checksums(&mut p);
        p
    }

    /// The same flow's segment carrying stream bytes `[from, from + len)` after `self.seq`.
    pub(crate) fn segment(&self, from: usize, len: usize, flags: u8) -> Tcp {
        Tcp {
            seq: self.seq.wrapping_add(from as u32),
            flags,
            payload: payload(from, len),
            ..self.clone()
        }
    }

    pub(crate) fn header_len(&self) -> usize {
        (if self.v6 { 40 } else { 20 }) + 20 + self.options.len()
    }
}

/// A UDP datagram with a correct checksum.
pub(crate) fn udp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = ip_header(v6, 17, 8 + payload.len(), &IpFields::default());
    p.extend_from_slice(&4789u16.to_be_bytes());
    p.extend_from_slice(&4790u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    ref_fill_checksums(&mut p);
    p
}

/// A super-packet as the TUN device hands it out: pseudo-header sum in the L4 checksum field
/// and a `NEEDS_CSUM` GSO header (with a deliberately wrong `hdr_len`).
pub(crate) fn super_packet(mut packet: Vec<u8>, gso_size: u16) -> (VnetHeader, Vec<u8>) {
    let (l4_off, proto) = ref_l4(&packet);
    ref_fill_pseudo(&mut packet);
    let gso_type = match (proto, packet[0] >> 4) {
        (6, 6) => GsoType::TcpV6,
        (6, _) => GsoType::TcpV4,
        _ => GsoType::UdpL4,
    };
    let hdr = VnetHeader {
        needs_csum: true,
        data_valid: false,
        gso_type,
        ecn: false,
        hdr_len: packet.len().min(65535) as u16, // what the kernel may report on forwarding
        gso_size,
        csum_start: l4_off as u16,
        csum_offset: if proto == 6 { 16 } else { 6 },
    };
    (hdr, packet)
}

/// Splits with the crate, each segment into its own vector.
pub(crate) fn split_all(hdr: &VnetHeader, packet: &[u8]) -> Vec<Vec<u8>> {
    let s = crate::Segments::new(hdr, packet).expect("valid super-packet");
    (0..s.count())
        .map(|i| {
            let mut out = vec![0u8; s.segment_len(i)];
            let n = s.write(i, &mut out).expect("segment fits");
            assert_eq!(n, out.len());
            out
        })
        .collect()
}
