//! The Internet checksum (RFC 1071), summed in the little-endian domain (linerate §8).
//!
//! Bytes are added as little-endian 32-bit words into a `u64`, which auto-vectorizes. The folded
//! result is the byte-swapped form of the network-order sum, so it is stored with
//! `to_le_bytes()`: the complement for a full checksum, as is for a partial (pseudo-header) one.
//! A correct packet sums (with its checksum field) to 0xFFFF.
//!
//! Pieces may be summed separately and added, as long as each piece starts at an even offset
//! from the start of the checksummed range.

use crate::bytes::{be16, byte, le16};
use crate::ip::{self, L4, PROTO_TCP, PROTO_UDP};

/// Adds `data` to the partial sum `acc` (little-endian domain). Up to 2³² words cannot overflow.
#[inline]
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let (words, tail) = data.as_chunks::<4>();
    for w in words {
        acc += u64::from(u32::from_le_bytes(*w));
    }
    match *tail {
        [a, b, c] => acc + u64::from(u16::from_le_bytes([a, b])) + u64::from(c),
        [a, b] => acc + u64::from(u16::from_le_bytes([a, b])),
        [a] => acc + u64::from(a),
        _ => acc,
    }
}

/// Folds a partial sum to 16 bits (end-around carry). Not complemented.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    // The loop leaves at most 0xFFFF.
    u16::try_from(acc).unwrap_or(0xFFFF)
}

/// The TCP/UDP pseudo-header as a partial sum: `addrs` is source and destination together
/// (8 bytes of IPv4 or 32 of IPv6, exactly as in the IP header), `l4_len` the upper-layer length.
#[inline]
pub fn pseudo_header_sum(addrs: &[u8], l4_len: u32, proto: u8) -> u64 {
    let swap = |v: u32| u64::from((v as u16).swap_bytes());
    sum(0, addrs) + swap(l4_len >> 16) + swap(l4_len & 0xFFFF) + swap(u32::from(proto))
}

/// True when the IPv4 header `packet[..ihl]` (checksum field included) verifies.
#[inline]
pub(crate) fn ipv4_header_ok(packet: &[u8], ihl: usize) -> bool {
    packet.get(..ihl).is_some_and(|h| fold(sum(0, h)) == 0xFFFF)
}

/// Pseudo-header plus everything from the L4 header to the end of `packet`.
#[inline]
pub(crate) fn l4_sum(packet: &[u8], l4: &L4) -> Option<u64> {
    let data = packet.get(l4.l4_off..)?;
    let len = u32::try_from(data.len()).ok()?;
    let addrs = ip::addrs(packet, l4.v6)?;
    Some(sum(pseudo_header_sum(addrs, len, l4.proto), data))
}

/// True when `packet` is a whole IPv4 or IPv6 TCP or UDP packet whose checksums verify:
/// the IP length field matches the length, IPv4's header checksum, the UDP length field, and
/// the L4 checksum over pseudo-header, header and payload.
///
/// IPv6 hop-by-hop and destination-options headers are walked; other extension headers and
/// IPv4 fragments give `false`. An IPv4 UDP checksum of 0 means "none" and is accepted.
pub fn checksum_valid(packet: &[u8]) -> bool {
    let Ok(l4) = ip::locate_l4(packet) else {
        return false;
    };
    if !l4.v6 && !ipv4_header_ok(packet, l4.l4_off) {
        return false;
    }
    let l4_len = packet.len().saturating_sub(l4.l4_off);
    match l4.proto {
        PROTO_TCP => {
            let doff = byte(packet, l4.l4_off + 12).map_or(0, |b| usize::from(b >> 4) * 4);
            if doff < 20 || doff > l4_len {
                return false;
            }
        }
        PROTO_UDP => {
            if l4_len < 8 || be16(packet, l4.l4_off + 4).map(usize::from) != Some(l4_len) {
                return false;
            }
            if !l4.v6 && le16(packet, l4.l4_off + 6) == Some(0) {
                return true;
            }
        }
        _ => return false,
    }
    l4_sum(packet, &l4).is_some_and(|s| fold(s) == 0xFFFF)
}

/// Completes the L4 checksum of a TCP or UDP packet that was left for an offload
/// (`CHECKSUM_PARTIAL`: the field holds the pseudo-header sum, not the checksum), as a packet
/// encapsulated by the eBPF fast path arrives when the receiving node's userspace handles it.
/// Leaves a packet whose checksum already verifies, or that does not verify either way,
/// unchanged; returns true when it changed the packet.
pub fn complete_partial_checksum(packet: &mut [u8]) -> bool {
    if checksum_valid(packet) {
        return false;
    }
    let Ok(l4) = ip::locate_l4(packet) else {
        return false;
    };
    let offset = match l4.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return false,
    };
    let field = l4.l4_off + offset;
    let Some(&[hi, lo]) = packet.get(field..field + 2) else {
        return false;
    };
    let original = [hi, lo];
    let Some(segment) = packet.get(l4.l4_off..) else {
        return false;
    };
    let mut checksum = !fold(sum(0, segment));
    if l4.proto == PROTO_UDP && checksum == 0 {
        checksum = 0xFFFF;
    }
    if let Some(f) = packet.get_mut(field..field + 2) {
        f.copy_from_slice(&checksum.to_le_bytes());
    }
    if checksum_valid(packet) {
        return true;
    }
    if let Some(f) = packet.get_mut(field..field + 2) {
        f.copy_from_slice(&original);
    }
    false
}

#[cfg(test)]
mod partial_tests {
    use super::*;

    /// An IPv6 UDP packet with a valid checksum.
    fn udp_packet() -> Vec<u8> {
        let payload = b"hello, partial checksum!";
        let l4_len = 8 + payload.len();
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[0x9c, 0x40, 0x1b, 0x59]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let pseudo = pseudo_header_sum(&p[8..40], l4_len as u32, 17);
        let c = !fold(sum(pseudo, &p[40..]));
        p[46..48].copy_from_slice(&c.to_le_bytes());
        assert!(checksum_valid(&p));
        p
    }

    #[test]
    fn a_partial_checksum_is_completed_and_a_valid_one_left_alone() {
        let valid = udp_packet();
        let mut same = valid.clone();
        assert!(!complete_partial_checksum(&mut same));
        assert_eq!(same, valid);
        // What an offloading sender leaves: the pseudo-header sum, not complemented.
        let mut partial = valid.clone();
        let pseudo = fold(pseudo_header_sum(&partial[8..40], 32, 17));
        partial[46..48].copy_from_slice(&pseudo.to_le_bytes());
        assert!(!checksum_valid(&partial));
        assert!(complete_partial_checksum(&mut partial));
        assert_eq!(partial, valid);
        // Garbage stays garbage.
        let mut broken = valid;
        broken[50] ^= 0xff;
        broken[46] ^= 0x55;
        let before = broken.clone();
        assert!(!complete_partial_checksum(&mut broken));
        assert_eq!(broken, before);
    }
}
