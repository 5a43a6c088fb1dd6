//! The transmit side of the TUN offloads: `VnetHeader::parse` on what the kernel (or anyone
//! who can write to the TUN device) puts in front of a packet, `Segments::new` on the packet,
//! and `Segments::write` of every segment.
//!
//! Never a panic; each segment is written at exactly `segment_len(i)` bytes, no longer than
//! `max_segment_len`; the segments carry exactly the packet's payload; a segmented TCP or UDP
//! packet comes out with complete, valid checksums.

#![no_main]

use connectopus_offload::{GsoType, Segments, VNET_HDR_LEN, VnetHeader, checksum_valid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VnetHeader::parse(data) else {
        return;
    };
    let mut again = [0u8; VNET_HDR_LEN];
    hdr.write(&mut again).expect("a header fits its own length");
    assert_eq!(VnetHeader::parse(&again).ok(), Some(hdr));
    let packet = &data[VNET_HDR_LEN..];
    let Ok(segments) = Segments::new(&hdr, packet) else {
        return;
    };
    assert!(segments.count() >= 1);
    let mut slot = vec![0u8; segments.max_segment_len() + 64];
    let mut payload = 0;
    for i in 0..segments.count() {
        let len = segments
            .write(i, &mut slot)
            .expect("a segment fits a max-size slot");
        assert_eq!(len, segments.segment_len(i));
        assert!(len <= segments.max_segment_len());
        payload += len - segments.header_len();
        if hdr.gso_type != GsoType::None {
            assert!(
                checksum_valid(&slot[..len]),
                "segment {i} has a bad checksum"
            );
        }
    }
    assert_eq!(payload, packet.len() - segments.header_len());
    assert!(segments.write(segments.count(), &mut slot).is_err());
});
