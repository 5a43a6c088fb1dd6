//! Key update of the fast path: each direction moves to a new epoch at the record limit or
//! the age limit, and records keep flowing both ways across the switch with nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use connectopus_dtls::{
    DEFAULT_REKEY_INTERVAL, DEFAULT_REKEY_RECORDS, DtlsAssociation, PskSuite, RX_GRACE,
    RekeyPolicy, State,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn established(suite: PskSuite, clock: &Clock) -> (DtlsAssociation, DtlsAssociation) {
    let cfg = psk(KEY, suite, true);
    let (mut c, mut s) = new_pair(&cfg, &cfg, clock);
    assert!(
        handshake(&mut c, &mut s, clock),
        "{:?} {:?}",
        c.state(),
        s.state()
    );
    assert!(c.fast_path_active() && s.fast_path_active());
    (c, s)
}

/// Delivers one datagram at the caller time `now` and returns its payloads.
fn deliver_at(to: &mut DtlsAssociation, now: Duration, mut datagram: Vec<u8>) -> Vec<Vec<u8>> {
    let rec = to.handle_datagram(now, &mut datagram).unwrap();
    rec.iter().map(|r| datagram[r].to_vec()).collect()
}

/// Returns the epoch field of a record.
fn epoch_of(record: &[u8]) -> u16 {
    u16::from_be_bytes([record[3], record[4]])
}

#[test]
fn a_direction_near_the_record_limit_moves_to_a_new_epoch_and_nothing_is_lost() {
    for suite in [
        PskSuite::EcdhePskChaCha20Poly1305,
        PskSuite::PskAes128GcmNoForwardSecrecy,
    ] {
        let clock = Clock::new();
        let (mut c, mut s) = established(suite, &clock);
        assert_eq!(c.epochs(), Some((1, 1)));
        c.set_next_seq_for_test(DEFAULT_REKEY_RECORDS - 3);
        s.set_next_seq_for_test(DEFAULT_REKEY_RECORDS - 5);
        let mut epochs_seen = Vec::new();
        for i in 0..20u8 {
            let up = seal(&mut c, &payload(300, i));
            let down = seal(&mut s, &payload(200, i));
            epochs_seen.push((epoch_of(&up), epoch_of(&down)));
            assert_eq!(
                deliver(&mut s, &clock, up),
                vec![payload(300, i)],
                "{suite:?} up {i}"
            );
            assert_eq!(
                deliver(&mut c, &clock, down),
                vec![payload(200, i)],
                "{suite:?} down {i}"
            );
        }
        // Exactly at the limit: 3 (client) and 5 (server) records in epoch 1, then epoch 2.
        assert_eq!(epochs_seen[2], (1, 1));
        assert_eq!(epochs_seen[3], (2, 1));
        assert_eq!(epochs_seen[5], (2, 2));
        assert_eq!(c.epochs(), Some((2, 2)));
        assert_eq!(s.epochs(), Some((2, 2)));
        for a in [&c, &s] {
            let st = a.stats();
            assert_eq!((st.tx_rekeys, st.rx_rekeys), (1, 1), "{st:?}");
            assert_eq!(
                (st.auth_failed, st.replayed, st.rekey_failed),
                (0, 0, 0),
                "{st:?}"
            );
            assert_eq!(st.records_opened, 20);
            assert_eq!(*a.state(), State::Established);
        }
    }
}

#[test]
fn records_reordered_across_the_switch_open_once_until_the_grace_period_ends() {
    let clock = Clock::new();
    let (mut c, mut s) = established(PskSuite::EcdhePskChaCha20Poly1305, &clock);
    c.set_next_seq_for_test(DEFAULT_REKEY_RECORDS - 2);
    let old: Vec<_> = (0..2u8).map(|i| seal(&mut c, &[i; 40])).collect();
    let new: Vec<_> = (2..4u8).map(|i| seal(&mut c, &[i; 40])).collect();
    assert_eq!((epoch_of(&old[1]), epoch_of(&new[0])), (1, 2));
    let now = clock.now();
    // The new epoch arrives first; the receiver switches, and the late old records still open.
    assert_eq!(deliver_at(&mut s, now, new[0].clone()), vec![vec![2; 40]]);
    assert_eq!(s.epochs(), Some((1, 2)));
    assert_eq!(deliver_at(&mut s, now, old[0].clone()), vec![vec![0; 40]]);
    // Replays are refused in both epochs.
    assert!(deliver_at(&mut s, now, old[0].clone()).is_empty());
    assert!(deliver_at(&mut s, now, new[0].clone()).is_empty());
    assert_eq!(s.stats().replayed, 2);
    // After the grace period the old epoch's key is gone: a late record no longer opens.
    let later = now + RX_GRACE + Duration::from_millis(1);
    assert!(s.poll_timeout().is_some_and(|t| t <= now + RX_GRACE));
    s.handle_timeout(later);
    assert!(deliver_at(&mut s, later, old[1].clone()).is_empty());
    assert_eq!(s.stats().unknown_epoch, 1);
    assert_eq!(deliver_at(&mut s, later, new[1].clone()), vec![vec![3; 40]]);
    assert_eq!(s.stats().records_opened, 3);
}

#[test]
fn the_hourly_trigger_follows_the_callers_clock() {
    let clock = Clock::new();
    let (mut c, mut s) = established(PskSuite::EcdhePskChaCha20Poly1305, &clock);
    let t0 = clock.now();
    // The association asks to be woken up within the hour, and nothing changes before.
    let due = c.poll_timeout().expect("a rekey deadline");
    assert!(due <= t0 + DEFAULT_REKEY_INTERVAL, "{due:?}");
    assert!(
        due + Duration::from_secs(5) > t0 + DEFAULT_REKEY_INTERVAL,
        "{due:?}"
    );
    c.handle_timeout(due - Duration::from_secs(1));
    assert_eq!(c.epochs(), Some((1, 1)));
    // At the deadline (fake clock, an hour later) the client's direction moves on.
    let hour = due;
    c.handle_timeout(hour);
    assert_eq!(c.epochs(), Some((2, 1)));
    assert_eq!(c.stats().tx_rekeys, 1);
    let up = seal(&mut c, b"after an hour");
    assert_eq!(epoch_of(&up), 2);
    assert_eq!(
        deliver_at(&mut s, hour, up),
        vec![b"after an hour".to_vec()]
    );
    s.handle_timeout(hour);
    assert_eq!(s.epochs(), Some((2, 2)));
    let down = seal(&mut s, b"reply");
    assert_eq!(deliver_at(&mut c, hour, down), vec![b"reply".to_vec()]);
    // The next deadline retires the peer's old epoch; the one after is an hour after the switch.
    assert_eq!(c.poll_timeout(), Some(hour + RX_GRACE));
    c.handle_timeout(hour + RX_GRACE);
    let next = c.poll_timeout().expect("next deadline");
    assert!(
        next >= hour + DEFAULT_REKEY_INTERVAL - Duration::from_secs(1),
        "{next:?}"
    );
}

#[test]
fn a_lost_epoch_is_skipped_within_the_look_ahead() {
    let clock = Clock::new();
    let (mut c, mut s) = established(PskSuite::PskAes128GcmNoForwardSecrecy, &clock);
    let mut now = clock.now();
    // Epochs 2 and 3 each carry one record, both lost; epoch 4 arrives.
    for _ in 0..2 {
        now += DEFAULT_REKEY_INTERVAL;
        c.handle_timeout(now);
        let _lost = seal(&mut c, b"lost");
    }
    now += DEFAULT_REKEY_INTERVAL;
    c.handle_timeout(now);
    let rec = seal(&mut c, b"arrives");
    assert_eq!(epoch_of(&rec), 4);
    assert_eq!(deliver_at(&mut s, now, rec), vec![b"arrives".to_vec()]);
    assert_eq!(s.epochs(), Some((1, 4)));
    // A record of an epoch beyond the look-ahead is not ours to open (and costs no derivation).
    let mut forged = seal(&mut c, b"x");
    forged[3..5].copy_from_slice(&40u16.to_be_bytes());
    assert!(deliver_at(&mut s, now, forged).is_empty());
    assert_eq!(s.stats().unknown_epoch, 1);
    assert_eq!(s.epochs(), Some((1, 4)));
}

#[test]
fn without_key_updates_the_sequence_space_still_ends_the_association() {
    let clock = Clock::new();
    let mut cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    cfg.rekey = RekeyPolicy::never();
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    assert!(handshake(&mut c, &mut s, &clock));
    assert_eq!(c.poll_timeout(), None);
    c.set_next_seq_for_test((1 << 48) - 1);
    send_ok(&mut c, &mut s, &clock, b"last");
    let mut buf = vec![0u8; 64];
    assert!(c.seal_in_place(&mut buf, 4).is_err());
    assert_eq!(c.epochs(), None);
}

/// The receiving direction taken to another thread (as a dataplane worker holds it) opens the
/// peer's records there, follows the peer through more key updates than the look-ahead holds
/// (the association derives the next keys when `poll_timeout` asks), and comes back.
#[test]
fn an_opener_on_another_thread_follows_key_updates_the_association_derives() {
    let clock = Clock::new();
    let (mut c, mut s) = established(PskSuite::EcdhePskChaCha20Poly1305, &clock);
    let mut opener = s
        .take_opener()
        .expect("an established fast path has an opener");
    assert!(s.take_opener().is_none(), "one owner");
    let mut t = clock.now();
    for step in 0..8u8 {
        // The client's direction moves on by the clock (an hour per step, fake).
        t += DEFAULT_REKEY_INTERVAL;
        c.handle_timeout(t);
        let mut record = seal(&mut c, &payload(100, step));
        assert_eq!(epoch_of(&record), 2 + u16::from(step));
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let opened = opener.open(t, &mut record);
                    opener.flush_counts();
                    (
                        opened
                            .data
                            .iter()
                            .map(|r| record[r].to_vec())
                            .collect::<Vec<_>>(),
                        opened.advanced,
                    )
                })
                .join()
                .unwrap()
        });
        assert_eq!(opened, (vec![payload(100, step)], true), "step {step}");
        // The association sees the opener's new epoch and refills the look-ahead.
        assert!(s.poll_timeout().is_some_and(|at| at <= t), "step {step}");
        s.handle_timeout(t);
        assert_eq!(s.epochs().map(|e| e.1), Some(2 + u16::from(step)));
    }
    // While the opener is away the association opens no data record itself.
    let stray = seal(&mut c, b"stray");
    assert!(deliver_at(&mut s, t, stray).is_empty());
    let stats = s.stats();
    assert_eq!((stats.records_opened, stats.rx_rekeys), (8, 8), "{stats:?}");
    assert_eq!(stats.unknown_epoch, 1, "{stats:?}");
    // Back with the association, it opens again, with the windows the thread kept.
    s.restore_opener(opener);
    let up = seal(&mut c, b"home");
    assert_eq!(deliver_at(&mut s, t, up.clone()), vec![b"home".to_vec()]);
    assert!(deliver_at(&mut s, t, up).is_empty(), "a replay");
    assert_eq!(s.stats().records_opened, 9);
}
