//! The virtio-net header, the checksum primitives and `complete_checksum`.

use proptest::prelude::*;

use super::*;
use crate::checksum::{fold, pseudo_header_sum, sum};
use crate::{OffloadError, VNET_HDR_LEN, checksum_valid, complete_checksum};

#[test]
fn vnet_header_parse_observed_read() {
    // flags=1 gso_type=4 hdr_len=72 gso_size=1328 csum_start=40 csum_offset=16 (linerate §3).
    let bytes = [1, 4, 72, 0, 0x30, 0x05, 40, 0, 16, 0, 0xEE];
    let h = VnetHeader::parse(&bytes).unwrap();
    assert_eq!(
        h,
        VnetHeader {
            needs_csum: true,
            data_valid: false,
            gso_type: GsoType::TcpV6,
            ecn: false,
            hdr_len: 72,
            gso_size: 1328,
            csum_start: 40,
            csum_offset: 16,
        }
    );
    let mut out = [0xFFu8; 12];
    h.write(&mut out).unwrap();
    assert_eq!(out[..10], bytes[..10]);
    assert_eq!(out[10..], [0xFF, 0xFF], "writes exactly VNET_HDR_LEN bytes");
}

#[test]
fn vnet_header_ecn_types_and_errors() {
    let h = VnetHeader::parse(&[2, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert!(h.ecn && h.data_valid && !h.needs_csum);
    assert_eq!(h.gso_type, GsoType::TcpV4);
    for (raw, t) in [
        (0, GsoType::None),
        (1, GsoType::TcpV4),
        (4, GsoType::TcpV6),
        (5, GsoType::UdpL4),
    ] {
        let h = VnetHeader::parse(&[0, raw, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(h.gso_type, t);
        let mut out = [0u8; VNET_HDR_LEN];
        h.write(&mut out).unwrap();
        assert_eq!(out[1], raw);
    }
    for raw in [2u8, 3, 6, 0x7F, 0x83] {
        assert_eq!(
            VnetHeader::parse(&[0, raw, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(OffloadError::UnknownGsoType(raw & 0x7F))
        );
    }
    assert_eq!(
        VnetHeader::parse(&[0; 9]),
        Err(OffloadError::Truncated {
            what: "virtio-net header",
            need: 10,
            have: 9
        })
    );
    assert_eq!(
        VnetHeader::NONE.write(&mut [0u8; 9]),
        Err(OffloadError::OutputTooSmall { need: 10, have: 9 })
    );
    let mut out = [0xFFu8; 10];
    VnetHeader::NONE.write(&mut out).unwrap();
    assert_eq!(out, [0; 10]);
}

fn any_gso() -> impl Strategy<Value = GsoType> {
    prop_oneof![
        Just(GsoType::None),
        Just(GsoType::TcpV4),
        Just(GsoType::TcpV6),
        Just(GsoType::UdpL4)
    ]
}

proptest! {
    #[test]
    fn vnet_header_round_trips(
        needs_csum: bool, data_valid: bool, gso_type in any_gso(), ecn: bool,
        hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16,
    ) {
        let h = VnetHeader { needs_csum, data_valid, gso_type, ecn, hdr_len, gso_size, csum_start, csum_offset };
        let mut out = [0u8; VNET_HDR_LEN];
        h.write(&mut out).unwrap();
        prop_assert_eq!(VnetHeader::parse(&out), Ok(h));
        prop_assert_eq!(u16::from_le_bytes([out[4], out[5]]), gso_size, "little-endian");
    }

    #[test]
    fn le_domain_sum_matches_rfc1071(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        prop_assert_eq!((!fold(sum(0, &data))).swap_bytes(), rfc1071(&data));
    }

    #[test]
    fn sums_of_even_pieces_add(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..300) {
        let cut = (cut * 2).min(data.len() & !1);
        let (a, b) = data.split_at(cut);
        prop_assert_eq!(fold(sum(sum(0, a), b)), fold(sum(0, &data)));
    }

    #[test]
    fn complete_checksum_verifies(v6: bool, tcp: bool, len in 0usize..2000) {
        let good = if tcp { Tcp::new(v6, payload(3, len)).build() } else { udp(v6, &payload(5, len)) };
        let (mut hdr, mut pkt) = super_packet(good.clone(), 0);
        hdr.gso_type = GsoType::None;
        complete_checksum(&hdr, &mut pkt).unwrap();
        prop_assert!(ref_l4_ok(&pkt));
        prop_assert!(checksum_valid(&pkt));
        // Equal to the reference, except that 0 goes out as its equivalent 0xFFFF.
        let at = csum_field(&pkt);
        if good[at..at + 2] != [0, 0] {
            prop_assert_eq!(&pkt, &good);
        }
    }
}

#[test]
fn complete_checksum_leaves_complete_packets_alone() {
    let mut p = Tcp::new(true, payload(0, 10)).build();
    let before = p.clone();
    complete_checksum(&VnetHeader::NONE, &mut p).unwrap();
    assert_eq!(p, before);
    let gso = VnetHeader {
        needs_csum: true,
        gso_type: GsoType::TcpV6,
        ..VnetHeader::NONE
    };
    assert_eq!(
        complete_checksum(&gso, &mut p),
        Err(OffloadError::GsoPacket(GsoType::TcpV6))
    );
    let far = VnetHeader {
        needs_csum: true,
        csum_start: 40,
        csum_offset: 200,
        ..VnetHeader::NONE
    };
    assert!(matches!(
        complete_checksum(&far, &mut p),
        Err(OffloadError::BadCsumStart { .. })
    ));
    assert_eq!(p, before);
}

#[test]
fn pseudo_header_matches_reference() {
    let p = Tcp::new(true, payload(0, 77)).build();
    let l4_len = (p.len() - 40) as u32;
    assert_eq!(
        fold(pseudo_header_sum(&p[8..40], l4_len, 6)).swap_bytes(),
        !rfc1071(&ref_pseudo(&p))
    );
    let p = udp(false, &payload(0, 77));
    let l4_len = (p.len() - 20) as u32;
    assert_eq!(
        fold(pseudo_header_sum(&p[12..20], l4_len, 17)).swap_bytes(),
        !rfc1071(&ref_pseudo(&p))
    );
}

#[test]
fn checksum_valid_detects_damage() {
    for v6 in [true, false] {
        for good in [
            Tcp::new(v6, payload(0, 501)).build(),
            udp(v6, &payload(0, 501)),
        ] {
            assert!(checksum_valid(&good));
            for at in [good.len() - 1, ref_l4(&good).0 + 2, 12] {
                let mut bad = good.clone();
                bad[at] ^= 0x01;
                assert!(!checksum_valid(&bad), "v6={v6} byte {at}");
            }
            assert!(!checksum_valid(&good[..good.len() - 1]));
        }
        // IPv4 header checksum alone.
        if !v6 {
            let mut bad = Tcp::new(false, payload(0, 10)).build();
            bad[8] ^= 1; // TTL: only the header checksum covers it
            assert!(!checksum_valid(&bad));
        }
    }
    // IPv4 UDP without a checksum.
    let mut p = udp(false, &payload(0, 20));
    let at = csum_field(&p);
    p[at..at + 2].fill(0);
    assert!(checksum_valid(&p));
    let mut p6 = udp(true, &payload(0, 20));
    let at6 = csum_field(&p6);
    p6[at6..at6 + 2].fill(0);
    assert!(!checksum_valid(&p6), "IPv6 UDP must carry a checksum");
    assert!(!checksum_valid(&[]));
}
