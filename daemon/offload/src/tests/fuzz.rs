//! Every public function on arbitrary bytes: no panic (debug builds also trap overflow).

use proptest::prelude::*;

use super::*;
use crate::{Coalescer, Segments, VNET_HDR_LEN, checksum_valid, complete_checksum, is_coalescable};

/// Runs every entry point on `vnet ‖ packet` and `packet`, with output buffers of `out_len`.
fn exercise(vnet: &[u8], packet: &[u8], out_len: usize, other: &[u8]) {
    let _ = VnetHeader::parse(vnet);
    let hdr = VnetHeader::parse(vnet).unwrap_or(VnetHeader::NONE);
    let mut out = vec![0u8; out_len];
    let _ = hdr.write(&mut out);
    let mut copy = packet.to_vec();
    let _ = complete_checksum(&hdr, &mut copy);
    // A packet received whole from a link: what it is described as can be cut, TCP no longer
    // than the limit asked for.
    let mut received = packet.to_vec();
    let limit = out_len.max(1);
    if let Ok(Some(h)) =
        crate::received_super_packet(&mut received, Some(hdr.gso_size).filter(|g| *g > 0), limit)
    {
        let s = Segments::new(&h, &received).expect("a described super-packet can be cut");
        if h.gso_type != GsoType::UdpL4 {
            assert!(s.max_segment_len() <= limit);
        }
    }
    let _ = checksum_valid(packet);
    let _ = is_coalescable(packet);
    let _ = crate::checksum::fold(crate::checksum::sum(0, packet));
    let _ = crate::checksum::pseudo_header_sum(packet, packet.len() as u32, 6);
    if let Ok(s) = Segments::new(&hdr, packet) {
        let n = s.count();
        assert!(n >= 1);
        let _ = (
            s.max_segment_len(),
            s.header_len(),
            s.segment_len(n),
            s.segment_len(usize::MAX),
        );
        for i in (0..n.min(3))
            .chain(n.saturating_sub(3)..n)
            .chain([n, usize::MAX])
        {
            let r = s.write(i, &mut out);
            if let Ok(len) = r {
                assert_eq!(len, s.segment_len(i));
            }
        }
    }
    if let Some(mut c) = Coalescer::start(&mut out, packet) {
        let _ = c.try_append(&mut out, other);
        let _ = c.try_append(&mut out, packet);
        let _ = c.try_append(&mut [0u8; 3], other);
        let n = c.finish(&mut out);
        assert!(n <= out.len());
        let _ = c.finish(&mut [0u8; 12]);
    }
}

/// A valid packet of some kind to mutate.
fn seed_packet(kind: u8, len: usize) -> (VnetHeader, Vec<u8>) {
    let v6 = kind & 1 == 0;
    match kind % 4 {
        0 | 1 => super_packet(
            Tcp::new(v6, payload(0, len)).build(),
            1 + (len as u16 % 1400),
        ),
        2 => super_packet(udp(v6, &payload(0, len)), 1 + (len as u16 % 1400)),
        _ => (VnetHeader::NONE, Tcp::new(v6, payload(0, len)).build()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(
        vnet in proptest::collection::vec(any::<u8>(), 0..12),
        packet in proptest::collection::vec(any::<u8>(), 0..200),
        other in proptest::collection::vec(any::<u8>(), 0..200),
        out_len in 0usize..400,
    ) {
        exercise(&vnet, &packet, out_len, &other);
    }

    #[test]
    fn mutated_packets_never_panic(
        kind: u8,
        len in 0usize..5000,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        truncate in proptest::option::of(any::<usize>()),
        hdr_edits in proptest::collection::vec((0usize..VNET_HDR_LEN, any::<u8>()), 0..3),
        out_len in prop_oneof![0usize..200, 1000usize..6000],
    ) {
        let (hdr, mut p) = seed_packet(kind, len);
        let mut vnet = [0u8; VNET_HDR_LEN];
        hdr.write(&mut vnet).unwrap();
        for (at, v) in hdr_edits {
            vnet[at] = v;
        }
        for (at, v) in edits {
            if !p.is_empty() {
                let n = p.len();
                p[at % n] = v;
            }
        }
        if let Some(t) = truncate {
            p.truncate(t % (p.len() + 1));
        }
        let other = seed_packet(kind, len / 2).1;
        exercise(&vnet, &p, out_len, &other);
        exercise(&vnet, &p, out_len, &p);
    }
}
