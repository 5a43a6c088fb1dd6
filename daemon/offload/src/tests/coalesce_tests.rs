//! Receive coalescing: what is taken, what stops a merge, the limits.

use proptest::prelude::*;

use super::roundtrip::coalesce_all;
use super::*;
use crate::{Append, Coalescer, VNET_HDR_LEN, is_coalescable};

const MSS: usize = 1000;
const BUF: usize = VNET_HDR_LEN + 65535;

fn flow(v6: bool) -> Tcp {
    Tcp::new(v6, Vec::new())
}

/// Segments `0..n` of a flow, full size, flags ACK.
fn stream(t: &Tcp, n: usize) -> Vec<Tcp> {
    (0..n).map(|i| t.segment(i * MSS, MSS, ACK)).collect()
}

/// Starts on `first`, appends `rest` in order, returns the answers.
fn feed(first: &Tcp, rest: &[Tcp]) -> (Coalescer, Vec<u8>, Vec<Append>) {
    let mut buf = vec![0u8; BUF];
    let mut c = Coalescer::start(&mut buf, &first.build()).expect("candidate");
    let answers = rest
        .iter()
        .map(|s| c.try_append(&mut buf, &s.build()))
        .collect();
    (c, buf, answers)
}

#[test]
fn candidates() {
    for v6 in [true, false] {
        let t = flow(v6);
        let ok = t.segment(0, 100, ACK).build();
        assert!(is_coalescable(&ok));
        assert!(Coalescer::start(&mut vec![0; BUF], &ok).is_some());
        assert!(
            Coalescer::start(&mut vec![0; BUF], &t.segment(0, 100, ACK | PSH).build()).is_some()
        );
        for flags in [
            ACK | FIN,
            SYN,
            ACK | SYN,
            ACK | CWR,
            ACK | ECE,
            PSH,
            0x04 | ACK,
            ACK | 0x20,
        ] {
            let p = t.segment(0, 100, flags).build();
            assert!(!is_coalescable(&p), "flags {flags:#x}");
            assert!(Coalescer::start(&mut vec![0; BUF], &p).is_none());
        }
        let pure_ack = t.segment(0, 0, ACK).build();
        assert!(!is_coalescable(&pure_ack), "no payload");
        // Bad checksum: passes the cheap pre-check, refused by start.
        let mut bad = ok.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        assert!(is_coalescable(&bad));
        let mut buf = vec![0x55u8; BUF];
        assert!(Coalescer::start(&mut buf, &bad).is_none());
        assert!(buf.iter().all(|b| *b == 0x55), "refusal writes nothing");
        // Length field disagreeing with the bytes.
        assert!(!is_coalescable(&ok[..ok.len() - 1]));
        let mut longer = ok.clone();
        longer.push(0);
        assert!(!is_coalescable(&longer));
        // Buffer too small for the packet.
        assert!(Coalescer::start(&mut vec![0; VNET_HDR_LEN + ok.len() - 1], &ok).is_none());
        assert!(Coalescer::start(&mut vec![0; VNET_HDR_LEN + ok.len()], &ok).is_some());
        // UDP is not coalesced.
        assert!(!is_coalescable(&udp(v6, &[1, 2, 3])));
    }
    // IPv4 fragments and options; IPv6 extension headers.
    let p = flow(false).segment(0, 100, ACK).build();
    let mut mf = p.clone();
    mf[6] |= 0x20;
    ref_fill_checksums(&mut mf);
    assert!(!is_coalescable(&mf));
    let mut opts = p.clone();
    opts.splice(20..20, [1, 1, 1, 0]);
    opts[0] = 0x46;
    let l = opts.len() as u16;
    opts[2..4].copy_from_slice(&l.to_be_bytes());
    ref_fill_checksums(&mut opts);
    assert!(crate::checksum_valid(&opts));
    assert!(!is_coalescable(&opts), "IPv4 options");
    let mut bad_hdr = p;
    bad_hdr[8] ^= 1; // TTL changed, header checksum stale
    assert!(Coalescer::start(&mut vec![0; BUF], &bad_hdr).is_none());
    let mut ext = flow(true).segment(0, 100, ACK).build();
    ext.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    ext[6] = 60;
    let pl = (ext.len() - 40) as u16;
    ext[4..6].copy_from_slice(&pl.to_be_bytes());
    assert!(!is_coalescable(&ext), "IPv6 extension header");
}

#[test]
fn single_segment_is_written_untouched() {
    let p = flow(true).segment(0, 300, ACK | PSH).build();
    let mut buf = vec![0xEEu8; BUF];
    let c = Coalescer::start(&mut buf, &p).unwrap();
    assert_eq!(
        (c.segments(), c.len(), c.gso_size(), c.is_empty()),
        (1, p.len(), 300, false)
    );
    let n = c.finish(&mut buf);
    assert_eq!(n, VNET_HDR_LEN + p.len());
    assert_eq!(buf[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
    assert_eq!(&buf[VNET_HDR_LEN..n], &p[..]);
}

#[test]
fn psh_ends_and_is_kept_on_the_merged_header() {
    for v6 in [true, false] {
        let t = flow(v6);
        let mut segs = stream(&t, 4);
        segs[2].flags = ACK | PSH;
        let (c, mut buf, answers) = feed(&segs[0], &segs[1..]);
        assert_eq!(answers, [Append::Appended, Append::Appended, Append::Flush]);
        assert_eq!(c.segments(), 3);
        let n = c.finish(&mut buf);
        let ip_hlen = if v6 { 40 } else { 20 };
        assert_eq!(buf[VNET_HDR_LEN + ip_hlen + 13], ACK | PSH);
        assert_eq!(n, VNET_HDR_LEN + t.header_len() + 3 * MSS);
        // A packet started with PSH takes nothing.
        let (c, _, answers) = feed(&segs[2], &segs[3..]);
        assert_eq!((c.segments(), answers), (1, vec![Append::Flush]));
    }
}

#[test]
fn gap_short_and_larger_segments_flush() {
    let t = flow(true);
    // Gap: segment 2 missing.
    let s = stream(&t, 4);
    let (_, _, a) = feed(&s[0], &[s[1].clone(), s[3].clone()]);
    assert_eq!(a, [Append::Appended, Append::Flush]);
    // Retransmission of an earlier segment.
    let (_, _, a) = feed(&s[0], &[s[1].clone(), s[1].clone()]);
    assert_eq!(a, [Append::Appended, Append::Flush]);
    // Short segment: nothing may follow it.
    let short = t.segment(MSS, 400, ACK);
    let after = t.segment(MSS + 400, 400, ACK);
    let (c, _, a) = feed(&s[0], &[short, after]);
    assert_eq!(
        (a, c.segments()),
        (vec![Append::Appended, Append::Flush], 2)
    );
    // Larger than the first segment's payload.
    let first = t.segment(0, 500, ACK);
    let (_, _, a) = feed(&first, &[t.segment(500, 501, ACK)]);
    assert_eq!(a, [Append::Flush]);
    // Same flow but not a candidate: FIN, pure ACK.
    let (_, _, a) = feed(
        &s[0],
        &[t.segment(MSS, 10, ACK | FIN), t.segment(MSS, 0, ACK)],
    );
    assert_eq!(a, [Append::Flush, Append::Flush]);
}

#[test]
fn header_differences_flush_other_flows_do_not_match() {
    for v6 in [true, false] {
        let t = flow(v6);
        let next = t.segment(MSS, MSS, ACK);
        let variants: Vec<(Tcp, Append)> = vec![
            (
                Tcp {
                    ack: t.ack + 1,
                    ..next.clone()
                },
                Append::Flush,
            ),
            (
                Tcp {
                    options: timestamps(1001, 2000),
                    ..next.clone()
                },
                Append::Flush,
            ),
            (
                Tcp {
                    options: Vec::new(),
                    ..next.clone()
                },
                Append::Flush,
            ),
            (
                Tcp {
                    ip: IpFields {
                        tos: 1,
                        ..t.ip.clone()
                    },
                    ..next.clone()
                },
                Append::Flush,
            ),
            (
                Tcp {
                    ip: IpFields {
                        ttl: 63,
                        ..t.ip.clone()
                    },
                    ..next.clone()
                },
                Append::Flush,
            ),
            (
                Tcp {
                    window: 9,
                    ..next.clone()
                },
                Append::Appended,
            ),
            (
                Tcp {
                    ip: IpFields {
                        id: 7,
                        ..t.ip.clone()
                    },
                    ..next.clone()
                },
                Append::Appended,
            ),
            (
                Tcp {
                    src_port: 40001,
                    ..next.clone()
                },
                Append::NotSameFlow,
            ),
            (
                Tcp {
                    dst_port: 5202,
                    ..next.clone()
                },
                Append::NotSameFlow,
            ),
            (
                Tcp {
                    v6: !v6,
                    ..next.clone()
                },
                Append::NotSameFlow,
            ),
        ];
        for (i, (p, want)) in variants.into_iter().enumerate() {
            let (c, _, a) = feed(&t.segment(0, MSS, ACK), &[p]);
            assert_eq!(a, [want], "v6={v6} variant {i}");
            let merged = if want == Append::Appended { 2 } else { 1 };
            assert_eq!(c.segments(), merged);
        }
        if v6 {
            let p = Tcp {
                ip: IpFields {
                    flow_label: 9,
                    ..t.ip.clone()
                },
                ..next.clone()
            };
            assert_eq!(feed(&t.segment(0, MSS, ACK), &[p]).2, [Append::Flush]);
        }
        let mut buf = vec![0u8; BUF];
        let mut c = Coalescer::start(&mut buf, &t.segment(0, MSS, ACK).build()).unwrap();
        assert_eq!(
            c.try_append(&mut buf, &udp(v6, &[0; 100])),
            Append::NotSameFlow
        );
        assert_eq!(c.try_append(&mut buf, &[]), Append::NotSameFlow);
        // Another address.
        let mut other = next.build();
        let at = if v6 { 39 } else { 19 };
        other[at] ^= 1;
        ref_fill_checksums(&mut other);
        assert_eq!(c.try_append(&mut buf, &other), Append::NotSameFlow);
        assert_eq!(c.try_append(&mut buf, &next.build()), Append::Appended);
    }
}

#[test]
fn bad_checksum_is_never_merged() {
    let t = flow(true);
    let s = stream(&t, 3);
    let mut buf = vec![0u8; BUF];
    let mut c = Coalescer::start(&mut buf, &s[0].build()).unwrap();
    let before = buf.clone();
    let mut bad = s[1].build();
    bad[100] ^= 0x08;
    assert_eq!(c.try_append(&mut buf, &bad), Append::Flush);
    assert_eq!((c.segments(), c.len()), (1, s[0].build().len()));
    assert_eq!(buf, before, "nothing copied");
    assert_eq!(c.try_append(&mut buf, &s[1].build()), Append::Appended);
}

#[test]
fn limits_64_segments_65535_bytes_and_buffer() {
    for v6 in [true, false] {
        let t = flow(v6);
        // 64 segments.
        let segs: Vec<Tcp> = (0..70).map(|i| t.segment(i * 10, 10, ACK)).collect();
        let (c, _, a) = feed(&segs[0], &segs[1..]);
        assert_eq!(c.segments(), 64);
        assert!(a[..63].iter().all(|x| *x == Append::Appended));
        assert_eq!(a[63], Append::Flush);
        // 65,535 IP bytes.
        let mss = 1400;
        let segs: Vec<Tcp> = (0..50).map(|i| t.segment(i * mss, mss, ACK)).collect();
        let (c, _, a) = feed(&segs[0], &segs[1..]);
        let stop = a.iter().position(|x| *x == Append::Flush).unwrap();
        assert!(c.len() <= 65535 && c.len() + mss > 65535);
        assert_eq!(c.segments(), stop + 1);
        // The caller's buffer.
        let hl = t.header_len();
        let mut buf = vec![0u8; VNET_HDR_LEN + hl + 2 * MSS + MSS / 2];
        let s = stream(&t, 3);
        let mut c = Coalescer::start(&mut buf, &s[0].build()).unwrap();
        assert_eq!(c.try_append(&mut buf, &s[1].build()), Append::Appended);
        assert_eq!(c.try_append(&mut buf, &s[2].build()), Append::Flush);
        // Not the buffer it was built in.
        assert_eq!(c.try_append(&mut [0u8; 20], &s[2].build()), Append::Flush);
        assert_eq!(c.finish(&mut [0u8; 20]), 0);
        assert_eq!(c.finish(&mut buf), VNET_HDR_LEN + hl + 2 * MSS);
    }
}

#[test]
fn sequence_numbers_wrap() {
    let mut t = flow(false);
    t.seq = u32::MAX - 1500;
    let s = stream(&t, 4);
    let (c, _, a) = feed(&s[0], &s[1..]);
    assert!(a.iter().all(|x| *x == Append::Appended));
    assert_eq!(c.segments(), 4);
}

#[derive(Debug, Clone, Copy)]
enum Break {
    Psh,
    Gap,
    Short,
    Ack,
    Options,
    BadChecksum,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A stream of `n` segments with one irregularity at `k`: coalescing stops exactly there.
    #[test]
    fn coalescing_stops_at_the_break(
        v6: bool,
        n in 2usize..40,
        k_seed: usize,
        mss in 2usize..1400,
        brk in prop_oneof![
            Just(Break::Psh), Just(Break::Gap), Just(Break::Short),
            Just(Break::Ack), Just(Break::Options), Just(Break::BadChecksum)
        ],
    ) {
        let k = 1 + k_seed % (n - 1);
        let t = flow(v6);
        let short = mss / 2;
        let mut offset = 0;
        let mut packets = Vec::new();
        for i in 0..n {
            let len = if matches!(brk, Break::Short) && i == k { short } else { mss };
            let mut s = t.segment(offset, len, ACK);
            s.ip.id = t.ip.id.wrapping_add(i as u16); // as a sender's IPv4 stack numbers them
            offset += len;
            if i == k {
                match brk {
                    Break::Psh => s.flags = ACK | PSH,
                    Break::Gap => continue, // a lost segment
                    Break::Ack => s.ack = s.ack.wrapping_add(1 + k_seed as u32 % 1000),
                    Break::Options => s.options = timestamps(1000 + k as u32, 2000),
                    Break::Short | Break::BadChecksum => {}
                }
            }
            let mut p = s.build();
            if i == k && matches!(brk, Break::BadChecksum) {
                let at = p.len() - 1 - k_seed % len;
                p[at] ^= 1 << (k_seed % 8);
                prop_assert!(!ref_l4_ok(&p));
            }
            packets.push(p);
        }
        let (written, answers) = coalesce_all(&packets, BUF);
        // Answers for packets 1..: Appended up to the break, then Flush.
        let merged_first = match brk {
            Break::Psh | Break::Short => k + 1,
            _ => k,
        };
        let first_flush = merged_first - 1;
        prop_assert!(answers[..first_flush].iter().all(|a| *a == Append::Appended));
        if first_flush < answers.len() {
            prop_assert_eq!(answers[first_flush], Append::Flush);
        }
        prop_assert_eq!(written[0].2, merged_first);
        // A bad checksum is never merged: it is written alone and unchanged.
        if matches!(brk, Break::BadChecksum) {
            prop_assert_eq!(written[1].2, 1);
            prop_assert_eq!(written[1].0, VnetHeader::NONE);
            prop_assert_eq!(&written[1].1, &packets[k]);
        }
        // Whatever was merged: the far side gets exactly the packets back (bad one included).
        prop_assert_eq!(&super::roundtrip::resplit(&written), &packets);
    }
}
