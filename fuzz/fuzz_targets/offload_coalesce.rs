//! The receive side of the TUN offloads: the coalescing loop of `connectopus-offload`'s
//! documentation run over any sequence of packets (as decrypted from a peer).
//!
//! Never a panic; a packet that starts a super-packet is copied untouched; every
//! super-packet written has a vnet header that parses and splits again into as many
//! segments as were merged, each with valid checksums.

#![no_main]

use connectopus_offload::{Append, Coalescer, Segments, VNET_HDR_LEN, VnetHeader, checksum_valid};
use libfuzzer_sys::fuzz_target;

/// Splits the input into packets, each prefixed by a two-byte big-endian length.
fn packets(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// Finishes the super-packet in a copy of the bytes it occupies (the vnet header and
/// `c.len()` packet bytes: `finish` must need no more of the buffer than that) and checks it.
fn check_super_packet(buf: &[u8], c: &Coalescer) {
    let mut out = buf
        .get(..VNET_HDR_LEN + c.len())
        .expect("the super-packet fits the buffer it was built in")
        .to_vec();
    let n = c.finish(&mut out);
    assert_eq!(n, VNET_HDR_LEN + c.len());
    let hdr = VnetHeader::parse(&out).expect("the header we wrote parses");
    let packet = &out[VNET_HDR_LEN..n];
    let segments = Segments::new(&hdr, packet).expect("the super-packet splits again");
    if c.segments() > 1 {
        assert_eq!(segments.count(), c.segments());
    }
    let mut slot = vec![0u8; segments.max_segment_len()];
    for i in 0..segments.count() {
        let len = segments.write(i, &mut slot).expect("a segment");
        assert!(
            checksum_valid(&slot[..len]),
            "segment {i} of a merged packet"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; 65_535 + VNET_HDR_LEN];
    let mut open: Option<Coalescer> = None;
    for pkt in packets(data) {
        if let Some(c) = open.as_mut() {
            match c.try_append(&mut buf, pkt) {
                Append::Appended => continue,
                Append::NotSameFlow | Append::Flush => check_super_packet(&buf, c),
            }
        }
        open = Coalescer::start(&mut buf, pkt);
        if let Some(c) = &open {
            assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()], pkt);
            assert_eq!(c.segments(), 1);
        }
    }
    if let Some(c) = &open {
        check_super_packet(&buf, c);
    }
});
