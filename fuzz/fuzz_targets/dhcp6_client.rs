//! The DHCPv6-PD client: a sequence of datagrams and clock steps, never a panic, and a lease
//! that always keeps its invariants (T1 ≤ T2, preferred ≤ valid, at least one prefix).
//!
//! Input: a seed byte, then records `[flags, wait_ds, len_hi, len_lo, bytes…]`. Flag bit 0
//! rewrites the datagram's xid to the one the client is waiting on (so it gets past the
//! transaction check), bit 1 calls `release` after it.

#![no_main]

use std::time::Duration;

use connectopus_dhcp6::codec::parse_server_message;
use connectopus_dhcp6::{Client, ClientConfig, Duid, Time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let config = ClientConfig {
        duid: Duid::llt(1_700_000_000, [2, 0, 0, 0, 0, 1]),
        iaid: 0x0102_0304,
        length_hint: Some(56),
        prefix_hint: None,
    };
    let mut c = Client::new(config, Time::ZERO, u64::from(seed));
    let mut now = Time::ZERO;
    let mut xid = [0u8; 3];
    while let [flags, wait, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*wait) * 100);
        while let Some((t, _)) = c.poll_timeout() {
            if t > now {
                break;
            }
            c.handle_timeout(t);
        }
        while let Some(sent) = c.poll_transmit() {
            assert!(
                parse_server_message(&sent).is_some(),
                "we send well-formed messages"
            );
            xid.copy_from_slice(&sent[1..4]);
        }
        let mut datagram = datagram.to_vec();
        if flags & 1 == 1 && datagram.len() >= 4 {
            datagram[1..4].copy_from_slice(&xid);
        }
        c.handle_datagram(now, &datagram);
        while c.poll_event().is_some() {}
        if let Some(lease) = c.lease() {
            assert!(!lease.delegations.is_empty());
            assert!(lease.t1 <= lease.t2);
            for d in &lease.delegations {
                assert!(d.preferred <= d.valid && d.prefix.len <= 128);
            }
        }
        if flags & 2 == 2 {
            c.release(now);
        }
    }
});
