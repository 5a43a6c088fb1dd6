//! Split then coalesce gives back the super-packet (proptest), and the shared coalescing loop
//! the other tests use.

use proptest::prelude::*;

use super::*;
use crate::{Append, Coalescer, Segments, VNET_HDR_LEN, checksum_valid, complete_checksum};

/// What the receive loop wrote to the TUN device: `(vnet header, IP packet, segments merged)`.
pub(crate) type Written = (VnetHeader, Vec<u8>, usize);

/// The receive loop of the crate docs: one open super-packet, flushed whenever a packet does
/// not append; refused packets are written alone with an all-zero header.
pub(crate) fn coalesce_all(packets: &[Vec<u8>], buf_len: usize) -> (Vec<Written>, Vec<Append>) {
    let mut buf = vec![0u8; buf_len];
    let mut out = Vec::new();
    let mut answers = Vec::new();
    let mut open: Option<Coalescer> = None;
    let emit = |c: &Coalescer, buf: &mut [u8], out: &mut Vec<Written>| {
        let n = c.finish(buf);
        assert_eq!(n, VNET_HDR_LEN + c.len());
        let hdr = VnetHeader::parse(&buf[..n]).unwrap();
        out.push((hdr, buf[VNET_HDR_LEN..n].to_vec(), c.segments()));
    };
    for p in packets {
        if let Some(c) = open.as_mut() {
            let a = c.try_append(&mut buf, p);
            answers.push(a);
            if a == Append::Appended {
                continue;
            }
            emit(c, &mut buf, &mut out);
        }
        open = Coalescer::start(&mut buf, p);
        if open.is_none() {
            out.push((VnetHeader::NONE, p.clone(), 1));
        }
    }
    if let Some(c) = open {
        emit(&c, &mut buf, &mut out);
    }
    (out, answers)
}

/// What was written, cut again as the far side's TUN device would: the segments themselves.
pub(crate) fn resplit(written: &[Written]) -> Vec<Vec<u8>> {
    written
        .iter()
        .flat_map(|(h, p, _)| split_all(h, p))
        .collect()
}

fn flags_strategy() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(ACK),
        Just(ACK | PSH),
        Just(ACK | FIN),
        Just(ACK | PSH | FIN),
        Just(ACK | CWR),
        Just(ACK | PSH | ECE | CWR),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn split_then_coalesce_round_trips(
        v6: bool,
        gso_size in prop_oneof![1u16..64, 500u16..1460, 1460u16..9000],
        len_seed: u32,
        flags in flags_strategy(),
        seq: u32,
        with_options: bool,
        ip_id: u16,
    ) {
        let mut t = Tcp::new(v6, Vec::new());
        t.seq = seq;
        t.flags = flags;
        t.ip.id = ip_id;
        if !with_options {
            t.options.clear();
        }
        let hlen = t.header_len();
        let max_payload = 65535 - hlen;
        let len = 1 + len_seed as usize % max_payload;
        t.payload = payload(0, len);
        let (hdr, sp) = super_packet(t.build(), gso_size);
        let segs = split_all(&hdr, &sp);
        let count = segs.len();
        prop_assert_eq!(count, len.div_ceil(usize::from(gso_size)));

        let (written, _) = coalesce_all(&segs, VNET_HDR_LEN + 65535);
        // The far side gets exactly the same segments back, in order.
        prop_assert_eq!(&resplit(&written), &segs);

        // Every write is a valid TUN write.
        for (h, p, n) in &written {
            prop_assert!(*n <= 64 && p.len() <= 65535);
            if *n == 1 {
                prop_assert_eq!(*h, VnetHeader::NONE);
                prop_assert!(checksum_valid(p));
            } else {
                let ip_hlen = if v6 { 40 } else { 20 };
                prop_assert_eq!(h.gso_type, if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 });
                prop_assert!(h.needs_csum && !h.data_valid && !h.ecn);
                prop_assert_eq!(usize::from(h.hdr_len), hlen);
                prop_assert_eq!(usize::from(h.csum_start), ip_hlen);
                prop_assert_eq!(h.csum_offset, 16);
                prop_assert_eq!(h.gso_size, gso_size.min(len as u16));
                // The field holds the pseudo-header sum: completing it gives a valid packet.
                let mut done = p.clone();
                let whole = VnetHeader { gso_type: GsoType::None, ..*h };
                complete_checksum(&whole, &mut done).unwrap();
                prop_assert!(ref_l4_ok(&done) && ref_ipv4_ok(&done));
            }
        }

        // Plain data segments in one super-packet's limits come back as exactly one.
        let plain = flags == ACK || flags == ACK | PSH;
        if plain && count <= 64 {
            prop_assert_eq!(written.len(), 1);
            let (h, p, n) = &written[0];
            prop_assert_eq!(*n, count);
            // Headers equal the original's (its checksum field aside), payload equal.
            let at = csum_field(p);
            prop_assert_eq!(&p[..at], &sp[..at]);
            prop_assert_eq!(&p[at + 2..hlen], &sp[at + 2..hlen]);
            prop_assert_eq!(&p[hlen..], &t.payload[..]);
            if count > 1 {
                // Same vnet header as the TUN device gave us (hdr_len is ours, not its).
                prop_assert_eq!(*h, VnetHeader { hdr_len: hlen as u16, ..hdr });
                prop_assert_eq!(&p[at..at + 2], &sp[at..at + 2], "pseudo-header sum");
            }
        }
        if plain {
            prop_assert_eq!(written.len(), count.div_ceil(64), "only the 64-segment limit cuts");
        }
    }
}

#[test]
fn coalesce_64k_tso_both_versions() {
    for v6 in [true, false] {
        let t = Tcp::new(v6, Vec::new());
        let t = Tcp {
            flags: ACK | PSH,
            payload: payload(0, 65535 - t.header_len()),
            ..t
        };
        let (hdr, sp) = super_packet(t.build(), 1328);
        let segs = split_all(&hdr, &sp);
        assert_eq!(segs.len(), 50);
        let (written, answers) = coalesce_all(&segs, VNET_HDR_LEN + 65535);
        assert!(answers.iter().all(|a| *a == Append::Appended));
        assert_eq!(written.len(), 1);
        assert_eq!(
            written[0].0,
            VnetHeader {
                hdr_len: t.header_len() as u16,
                ..hdr
            }
        );
        assert_eq!(written[0].1.len(), 65535);
        let s = Segments::new(&written[0].0, &written[0].1).unwrap();
        assert_eq!(s.count(), 50);
    }
}
