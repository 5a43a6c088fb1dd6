//! Arbitrary datagrams never panic the client, in any state, and never leave it holding a
//! lease that breaks its own invariants.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use connectopus_dhcp6::codec::{opt, parse_server_message};
use connectopus_dhcp6::{Client, ClientConfig, Duid, Time};
use proptest::prelude::*;

const IAID: u32 = 7;

fn config() -> ClientConfig {
    ClientConfig {
        duid: Duid::llt(1_700_000_000, [2, 0, 0, 0, 0, 9]),
        iaid: IAID,
        length_hint: Some(56),
        prefix_hint: None,
    }
}

fn option(code: u16, body: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A server message with the right xid and client id, a server id, and `rest` as further
/// option bytes: this reaches the IA_PD handling, not just the header checks.
fn targeted(msg_type: u8, xid: u32, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![msg_type];
    m.extend_from_slice(&xid.to_be_bytes()[1..]);
    m.extend(option(opt::CLIENTID, config().duid.as_bytes()));
    m.extend(option(opt::SERVERID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]));
    m.extend_from_slice(rest);
    m
}

fn ia_pd(t1: u32, t2: u32, inner: &[u8]) -> Vec<u8> {
    let mut b = IAID.to_be_bytes().to_vec();
    b.extend_from_slice(&t1.to_be_bytes());
    b.extend_from_slice(&t2.to_be_bytes());
    b.extend_from_slice(inner);
    option(opt::IA_PD, &b)
}

fn ia_prefix(preferred: u32, valid: u32, len: u8, tail: &[u8]) -> Vec<u8> {
    let mut b = preferred.to_be_bytes().to_vec();
    b.extend_from_slice(&valid.to_be_bytes());
    b.push(len);
    b.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(tail);
    option(opt::IAPREFIX, &b)
}

/// The xid the client is waiting on, read from what it last sent.
fn xid_of(sent: &[u8]) -> u32 {
    u32::from_be_bytes([0, sent[1], sent[2], sent[3]])
}

fn check(c: &Client) {
    if let Some(lease) = c.lease() {
        assert!(!lease.delegations.is_empty());
        assert!(lease.t1 <= lease.t2, "{lease:?}");
        for d in &lease.delegations {
            assert!(d.preferred <= d.valid, "{d:?}");
            assert!(d.prefix.len <= 128);
        }
    }
}

/// One step: (kind, T1, T2, preferred, valid, prefix length, junk bytes, wait in ms).
type Step = (u8, u32, u32, u32, u32, u8, Vec<u8>, u16);

fn drive(seed: u64, steps: Vec<Step>) {
    let mut c = Client::new(config(), Time::ZERO, seed);
    let mut now = Time::ZERO;
    let mut last_sent: Vec<u8> = vec![1, 0, 0, 0];
    for (kind, t1, t2, pref, valid, len, junk, wait_ms) in steps {
        now += Duration::from_millis(u64::from(wait_ms));
        while let Some((t, _)) = c.poll_timeout() {
            if t > now {
                break;
            }
            c.handle_timeout(t);
        }
        while let Some(b) = c.poll_transmit() {
            last_sent = b;
        }
        let xid = xid_of(&last_sent);
        let msg_type = [2u8, 7, 7, 10, kind][usize::from(kind % 5)];
        let datagram = match kind % 4 {
            0 => junk.clone(),
            1 => targeted(msg_type, xid, &junk),
            2 => targeted(
                msg_type,
                xid,
                &ia_pd(t1, t2, &ia_prefix(pref, valid, len, &junk)),
            ),
            _ => {
                let mut m = targeted(
                    msg_type,
                    xid,
                    &ia_pd(t1, t2, &ia_prefix(pref, valid, len, &[])),
                );
                // Flip or cut bytes of an otherwise plausible message.
                if let Some((&i, rest)) = junk.split_first() {
                    let at = usize::from(i) % m.len();
                    m[at] ^= rest.first().copied().unwrap_or(0xff);
                    if rest.len() > 1 {
                        m.truncate(at.max(1));
                    }
                }
                m
            }
        };
        // The parser alone is total too.
        let _ = parse_server_message(&datagram);
        c.handle_datagram(now, &datagram);
        while c.poll_event().is_some() {}
        check(&c);
        if kind == 0xff {
            c.release(now);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_datagrams_never_panic(
        seed in any::<u64>(),
        steps in proptest::collection::vec(
            (any::<u8>(), any::<u32>(), any::<u32>(),
             prop_oneof![Just(0u32), Just(30), Just(u32::MAX), any::<u32>()],
             prop_oneof![Just(0u32), Just(40), Just(u32::MAX), any::<u32>()],
             prop_oneof![Just(56u8), Just(128), Just(129), any::<u8>()],
             proptest::collection::vec(any::<u8>(), 0..80),
             0u16..20_000),
            1..40),
    ) {
        drive(seed, steps);
    }
}
