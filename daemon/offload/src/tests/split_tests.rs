//! Splitting TSO/USO super-packets.

use super::*;
use crate::{OffloadError, Segments};

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}

/// A 64 KB TSO packet with every flag that must be placed on one end only.
fn tso64k(v6: bool, flags: u8) -> (Tcp, VnetHeader, Vec<u8>) {
    let t = Tcp::new(v6, Vec::new());
    let hdr_len = t.header_len();
    let t = Tcp {
        flags,
        payload: payload(0, 65535 - hdr_len),
        ..t
    };
    let (hdr, pkt) = super_packet(t.build(), 1328);
    (t, hdr, pkt)
}

fn check_tcp_split(v6: bool) {
    let flags = ACK | PSH | FIN | CWR | ECE;
    let (t, hdr, pkt) = tso64k(v6, flags);
    let hlen = t.header_len();
    let total_payload = pkt.len() - hlen;
    let s = Segments::new(&hdr, &pkt).unwrap();
    assert_eq!(
        s.header_len(),
        hlen,
        "hdr_len is computed, not taken from the vnet header"
    );
    assert_eq!(s.count(), total_payload.div_ceil(1328));
    assert_eq!(s.max_segment_len(), hlen + 1328);
    assert_eq!(s.segment_len(s.count()), 0);
    let segs = split_all(&hdr, &pkt);
    assert_eq!(segs.len(), s.count());
    let last = segs.len() - 1;
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(seg.len(), s.segment_len(i));
        if i < last {
            assert_eq!(seg.len(), hlen + 1328, "all but the last are full");
        }
        assert!(ref_l4_ok(seg), "segment {i} TCP checksum");
        assert!(ref_ipv4_ok(seg), "segment {i} IPv4 header checksum");
        assert!(crate::checksum_valid(seg));
        let (ip_hlen, _) = ref_l4(seg);
        if v6 {
            assert_eq!(usize::from(be16(seg, 4)), seg.len() - 40);
        } else {
            assert_eq!(usize::from(be16(seg, 2)), seg.len());
            assert_eq!(
                be16(seg, 4),
                t.ip.id.wrapping_add(i as u16),
                "IPv4 id steps"
            );
        }
        assert_eq!(
            be32(seg, ip_hlen + 4),
            t.seq.wrapping_add((i * 1328) as u32)
        );
        assert_eq!(be32(seg, ip_hlen + 8), t.ack);
        assert_eq!(be16(seg, ip_hlen + 14), t.window);
        assert_eq!(&seg[ip_hlen + 20..hlen], &t.options[..]);
        let f = seg[ip_hlen + 13];
        assert_eq!(
            f & (FIN | PSH) != 0,
            i == last,
            "FIN/PSH only on the last ({i})"
        );
        assert_eq!(f & (FIN | PSH), if i == last { FIN | PSH } else { 0 });
        assert_eq!(f & CWR != 0, i == 0, "CWR only on the first ({i})");
        assert_eq!(f & (ACK | ECE), ACK | ECE, "other flags kept");
        joined.extend_from_slice(&seg[hlen..]);
    }
    assert!(segs[last].len() < hlen + 1328, "last segment short");
    assert_eq!(joined, t.payload);
}

#[test]
fn split_64k_tso_ipv6() {
    check_tcp_split(true);
}

#[test]
fn split_64k_tso_ipv4() {
    check_tcp_split(false);
}

#[test]
fn split_ipv4_with_options() {
    // IHL 6: csum_start 24, header checksum over 24 bytes.
    let t = Tcp::new(false, payload(0, 3000));
    let mut pkt = t.build();
    pkt.splice(20..20, [1, 1, 1, 0]); // NOP NOP NOP EOL
    pkt[0] = 0x46;
    let len = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&len.to_be_bytes());
    ref_fill_checksums(&mut pkt);
    let (hdr, pkt) = super_packet(pkt, 1000);
    assert_eq!(hdr.csum_start, 24);
    let segs = split_all(&hdr, &pkt);
    assert_eq!(segs.len(), 3);
    for seg in &segs {
        assert!(ref_l4_ok(seg) && ref_ipv4_ok(seg));
        assert_eq!(seg.len(), 24 + 32 + 1000);
    }
}

fn check_udp_split(v6: bool) {
    let data = payload(0, 40 * 1300 + 500);
    let (hdr, pkt) = super_packet(udp(v6, &data), 1300);
    let s = Segments::new(&hdr, &pkt).unwrap();
    let ip_hlen = if v6 { 40 } else { 20 };
    assert_eq!(s.header_len(), ip_hlen + 8);
    assert_eq!(s.count(), 41);
    let segs = split_all(&hdr, &pkt);
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let chunk = if i == 40 { 500 } else { 1300 };
        assert_eq!(seg.len(), ip_hlen + 8 + chunk);
        assert_eq!(usize::from(be16(seg, ip_hlen + 4)), 8 + chunk, "UDP length");
        assert!(ref_l4_ok(seg) && ref_ipv4_ok(seg), "segment {i}");
        assert!(crate::checksum_valid(seg));
        if !v6 {
            assert_eq!(be16(seg, 4), 0x1234u16.wrapping_add(i as u16));
        }
        joined.extend_from_slice(&seg[ip_hlen + 8..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn split_uso_ipv6() {
    check_udp_split(true);
}

#[test]
fn split_uso_ipv4() {
    check_udp_split(false);
}

#[test]
fn udp_zero_checksum_is_sent_as_ffff() {
    for v6 in [true, false] {
        // Choose the last two payload bytes so that the checksum comes out as 0.
        let mut data = payload(0, 100);
        data[98] = 0;
        data[99] = 0;
        let mut pkt = udp(v6, &data);
        let at = csum_field(&pkt);
        pkt[at..at + 2].fill(0);
        let mut all = ref_pseudo(&pkt);
        all.extend_from_slice(&pkt[ref_l4(&pkt).0..]);
        let sum = !rfc1071(&all); // folded sum with the adjustable word at 0
        let w = 0xFFFF - sum;
        let n = pkt.len();
        pkt[n - 2..].copy_from_slice(&w.to_be_bytes());
        ref_fill_checksums(&mut pkt);
        let (hdr, sp) = super_packet(pkt, 1000);
        let segs = split_all(&hdr, &sp);
        assert_eq!(segs.len(), 1);
        assert_eq!(be16(&segs[0], csum_field(&segs[0])), 0xFFFF, "v6={v6}");
        assert!(ref_l4_ok(&segs[0]));
    }
}

#[test]
fn exact_multiple_and_single_segment() {
    let t = Tcp::new(true, payload(0, 3 * 1000));
    let (hdr, pkt) = super_packet(t.build(), 1000);
    let s = Segments::new(&hdr, &pkt).unwrap();
    assert_eq!(s.count(), 3);
    assert_eq!(s.segment_len(2), t.header_len() + 1000);
    let t = Tcp {
        flags: ACK | PSH,
        ..Tcp::new(true, payload(0, 700))
    };
    let (hdr, pkt) = super_packet(t.build(), 1000);
    let s = Segments::new(&hdr, &pkt).unwrap();
    assert_eq!(s.count(), 1);
    assert_eq!(s.max_segment_len(), pkt.len());
    let segs = split_all(&hdr, &pkt);
    assert_eq!(
        segs[0],
        t.build(),
        "one segment: the packet with its full checksum"
    );
}

#[test]
fn no_payload_is_one_header_only_segment() {
    let t = Tcp::new(true, Vec::new());
    let (hdr, pkt) = super_packet(t.build(), 1000);
    let segs = split_all(&hdr, &pkt);
    assert_eq!(segs, vec![t.build()]);
}

#[test]
fn gso_none_is_the_packet_with_its_checksum_completed() {
    let t = Tcp::new(true, payload(0, 33));
    let good = t.build();
    let (mut hdr, pkt) = super_packet(good.clone(), 0);
    hdr.gso_type = GsoType::None;
    assert_ne!(pkt, good);
    let s = Segments::new(&hdr, &pkt).unwrap();
    assert_eq!(
        (s.count(), s.header_len(), s.max_segment_len()),
        (1, 0, pkt.len())
    );
    assert_eq!(split_all(&hdr, &pkt), vec![good]);
    // Without NEEDS_CSUM the bytes pass through untouched, whatever they are.
    let junk = [0xAAu8; 7];
    assert_eq!(split_all(&VnetHeader::NONE, &junk), vec![junk.to_vec()]);
}

#[test]
fn split_errors() {
    let t = Tcp::new(true, payload(0, 5000));
    let (hdr, pkt) = super_packet(t.build(), 1000);
    let s = Segments::new(&hdr, &pkt).unwrap();
    let mut small = [0u8; 100];
    assert_eq!(
        s.write(0, &mut small),
        Err(OffloadError::OutputTooSmall {
            need: s.segment_len(0),
            have: 100
        })
    );
    assert_eq!(
        s.write(5, &mut [0u8; 2000]),
        Err(OffloadError::NoSuchSegment { index: 5, count: 5 })
    );
    let e = |h: VnetHeader, p: &[u8]| Segments::new(&h, p).unwrap_err();
    assert_eq!(
        e(VnetHeader { gso_size: 0, ..hdr }, &pkt),
        OffloadError::ZeroGsoSize
    );
    assert_eq!(
        e(
            VnetHeader {
                csum_start: 41,
                ..hdr
            },
            &pkt
        ),
        OffloadError::CsumStartMismatch {
            csum_start: 41,
            l4_offset: 40
        }
    );
    assert_eq!(
        e(
            VnetHeader {
                gso_type: GsoType::TcpV4,
                ..hdr
            },
            &pkt
        ),
        OffloadError::GsoVersionMismatch {
            gso: GsoType::TcpV4,
            version: 6
        }
    );
    assert_eq!(
        e(
            VnetHeader {
                gso_type: GsoType::UdpL4,
                ..hdr
            },
            &pkt
        ),
        OffloadError::NotTcpUdp(6)
    );
    assert!(matches!(
        e(hdr, &pkt[..pkt.len() - 1]),
        OffloadError::LengthMismatch { .. }
    ));
    let mut bad_doff = pkt.clone();
    bad_doff[52] = 0x40;
    assert_eq!(e(hdr, &bad_doff), OffloadError::BadL4HeaderLen(16));
    let mut frag = Tcp::new(false, payload(0, 3000)).build();
    frag[6] = 0x20; // MF
    let (h4, frag) = super_packet(frag, 1000);
    assert_eq!(e(h4, &frag), OffloadError::Fragment);
    let mut routing = pkt.clone();
    routing[6] = 43;
    assert_eq!(
        e(hdr, &routing),
        OffloadError::UnsupportedExtensionHeader(43)
    );
    assert_eq!(e(hdr, &[0x50; 60]), OffloadError::NotIp(5));
    let whole = VnetHeader {
        gso_type: GsoType::None,
        csum_start: 40,
        csum_offset: 16,
        ..hdr
    };
    assert!(matches!(
        e(whole, &pkt[..57]),
        OffloadError::BadCsumStart { .. }
    ));
}

#[test]
fn ipv6_destination_options_are_walked() {
    let t = Tcp::new(true, payload(0, 2500));
    let mut pkt = t.build();
    // Insert an 8-byte destination-options header (next header TCP, PadN).
    pkt.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    pkt[6] = 60;
    let plen = (pkt.len() - 40) as u16;
    pkt[4..6].copy_from_slice(&plen.to_be_bytes());
    // Pseudo-header length is the upper-layer length (without the extension header).
    let tcp_len = (pkt.len() - 48) as u32;
    let mut all = pkt[8..40].to_vec();
    all.extend_from_slice(&tcp_len.to_be_bytes());
    all.extend_from_slice(&[0, 0, 0, 6]);
    let partial = !rfc1071(&all);
    pkt[48 + 16..48 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHeader {
        needs_csum: true,
        data_valid: false,
        gso_type: GsoType::TcpV6,
        ecn: false,
        hdr_len: 0,
        gso_size: 1000,
        csum_start: 48,
        csum_offset: 16,
    };
    let segs = split_all(&hdr, &pkt);
    assert_eq!(segs.len(), 3);
    for seg in &segs {
        assert_eq!(usize::from(be16(seg, 4)), seg.len() - 40);
        let mut all = seg[8..40].to_vec();
        all.extend_from_slice(&((seg.len() - 48) as u32).to_be_bytes());
        all.extend_from_slice(&[0, 0, 0, 6]);
        all.extend_from_slice(&seg[48..]);
        assert_eq!(rfc1071(&all), 0);
        assert!(crate::checksum_valid(seg));
    }
}
