//! Super-packets received whole from a link (a peer's eBPF fast path encapsulated a GSO
//! packet): described by a virtio-net header, then cut, or written whole.

use super::*;
use crate::{OffloadError, Segments, received_super_packet};

/// A TCP super-packet as the peer's kernel left it: pseudo-header sum in the checksum field.
fn tcp_super(v6: bool, payload_len: usize, flags: u8) -> (Tcp, Vec<u8>) {
    let t = Tcp {
        flags,
        ..Tcp::new(v6, payload(0, payload_len))
    };
    let mut p = t.build();
    ref_fill_pseudo(&mut p);
    (t, p)
}

#[test]
fn a_tcp_super_packet_is_cut_at_the_mtu_into_valid_segments() {
    for v6 in [true, false] {
        let (t, original) = tcp_super(v6, 60_000, ACK | PSH | CWR);
        let mut packet = original.clone();
        let hdr = received_super_packet(&mut packet, None, 1400)
            .unwrap()
            .expect("a super-packet");
        assert_eq!(
            packet, original,
            "the partial checksum is what NEEDS_CSUM wants"
        );
        assert_eq!(
            hdr.gso_type,
            if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 }
        );
        assert!(hdr.needs_csum && hdr.ecn);
        let hlen = t.header_len();
        assert_eq!(usize::from(hdr.gso_size), 1400 - hlen);
        assert_eq!(usize::from(hdr.hdr_len), hlen);
        assert_eq!(usize::from(hdr.csum_offset), 16);
        let s = Segments::new(&hdr, &packet).unwrap();
        assert_eq!(s.max_segment_len(), 1400);
        let segs = split_all(&hdr, &packet);
        assert_eq!(segs.len(), 60_000usize.div_ceil(1400 - hlen));
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            assert!(seg.len() <= 1400);
            assert!(ref_l4_ok(seg) && ref_ipv4_ok(seg), "segment {i}");
            let flags = seg[ref_l4(seg).0 + 13];
            assert_eq!(flags & CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(
                flags & PSH != 0,
                i == segs.len() - 1,
                "PSH on the last only"
            );
            joined.extend_from_slice(&seg[hlen..]);
        }
        assert_eq!(joined, payload(0, 60_000));
    }
}

#[test]
fn a_received_gso_size_caps_the_tcp_segments() {
    let (t, mut packet) = tcp_super(true, 20_000, ACK);
    let hdr = received_super_packet(&mut packet, Some(1000), 1400)
        .unwrap()
        .unwrap();
    assert_eq!(hdr.gso_size, 1000);
    assert_eq!(
        Segments::new(&hdr, &packet).unwrap().max_segment_len(),
        t.header_len() + 1000
    );
}

#[test]
fn a_valid_checksum_is_turned_into_the_partial_one() {
    let (_, partial) = tcp_super(true, 5000, ACK);
    let mut complete = Tcp::new(true, payload(0, 5000)).build();
    assert!(crate::checksum_valid(&complete));
    received_super_packet(&mut complete, None, 1400)
        .unwrap()
        .unwrap();
    assert_eq!(complete, partial);
}

#[test]
fn a_damaged_super_packet_is_refused() {
    let (_, mut packet) = tcp_super(true, 5000, ACK);
    let at = csum_field(&packet);
    packet[at] ^= 0x5a;
    assert_eq!(
        received_super_packet(&mut packet, None, 1400),
        Err(OffloadError::BadChecksum)
    );
}

#[test]
fn short_packets_and_other_protocols_are_no_super_packets() {
    let (_, mut small) = tcp_super(true, 1000, ACK);
    let before = small.clone();
    assert_eq!(received_super_packet(&mut small, None, 1400), Ok(None));
    assert_eq!(small, before, "left as it was");
    // The MTU below the header: nothing sensible to cut.
    let (_, mut big) = tcp_super(true, 5000, ACK);
    assert_eq!(received_super_packet(&mut big, None, 40), Ok(None));
    // ICMPv6, and bytes that are no packet.
    let mut icmp = ip_header(true, 58, 3000, &IpFields::default());
    icmp.resize(40 + 3000, 0);
    assert_eq!(received_super_packet(&mut icmp, None, 1400), Ok(None));
    assert_eq!(received_super_packet(&mut [0x60; 7], None, 1400), Ok(None));
    assert_eq!(received_super_packet(&mut [], Some(9), 1400), Ok(None));
}

#[test]
fn udp_is_cut_only_at_the_senders_gso_size() {
    let mut packet = udp(true, &payload(0, 12_000));
    ref_fill_pseudo(&mut packet);
    let original = packet.clone();
    // Without the sender's segment size, UDP cannot be cut: one packet.
    assert_eq!(received_super_packet(&mut packet, None, 1400), Ok(None));
    let hdr = received_super_packet(&mut packet, Some(1200), 1400)
        .unwrap()
        .unwrap();
    assert_eq!(packet, original);
    assert_eq!(hdr.gso_type, GsoType::UdpL4);
    assert_eq!(hdr.gso_size, 1200);
    assert_eq!(hdr.csum_offset, 6);
    let segs = split_all(&hdr, &packet);
    assert_eq!(segs.len(), 10);
    for seg in &segs {
        assert_eq!(seg.len(), 40 + 8 + 1200);
        assert!(ref_l4_ok(seg));
    }
    // A gso_size that covers the whole payload: one datagram, not a super-packet.
    let mut one = udp(true, &payload(0, 900));
    assert_eq!(received_super_packet(&mut one, Some(1200), 1400), Ok(None));
}
