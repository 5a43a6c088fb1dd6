//! An issuer under a slow disk, floods, replays and a wrong clock (`docs/dynamic-mesh.md`
//! §1.4, §1.7, issue 16's review): a joining session that floods Joins makes few tables to
//! write, a disk slower than the joiner's Join timeout does not livelock joining, a Renew
//! replayed after a restart from disk is refused (a resend still answered), joiners with
//! made-up keys cannot keep a real one out, and a clock behind at restart stretches nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::Ipv6Addr;

use connectopus_core::lease_holder::HolderState;
use connectopus_core::lease_issuer::JOIN_INTERVAL;
use connectopus_core::sim::{LinkParams, NodeIdx, SimLinkIdx};
use connectopus_wire::LeaseMessage;
use connectopus_wire::lease::LEASE_PORT;
use support::lease_world::*;

fn bound(w: &World, e: NodeIdx) -> bool {
    matches!(
        w.sim.node(e).unwrap().lease_state(),
        Some(HolderState::Bound { .. } | HolderState::Renewing { .. })
    )
}

#[test]
fn a_joining_session_flooding_joins_makes_few_tables_to_write() {
    let mut w = World::new(21, "fd00:0:0:e1::/112");
    w.sim.set_persist_delay(50 * MS);
    let e = w.joiner("job-1", 40, Some(JOIN_KEY));
    // From the moment its joining session is up, before its own Join is answered: 8 s of
    // valid Joins (fresh xid, good proof) every 20 ms on that session. The joiner ignores
    // the answers (their xids are not the one it waits for), so it keeps asking.
    w.run_until(MS, 2 * SECOND, |w| {
        w.sim
            .node(e)
            .unwrap()
            .sessions()
            .any(|s| s.is_established())
    })
    .expect("no joining session");
    let before = w.sim.persist_requests(w.i);
    let flood = 8 * SECOND;
    let mut sent = 0;
    let start = w.sim.now();
    while w.sim.now() - start < flood {
        w.sim
            .with_node(e, |n, now| sent += n.flood_join_for_test(now));
        w.sim.run_for(20 * MS);
    }
    let requests = w.sim.persist_requests(w.i) - before;
    let most = (flood.as_millis() / JOIN_INTERVAL.as_millis()) as u64 + 2;
    eprintln!("{sent} Joins flooded, {requests} tables to persist (at most {most})");
    assert!(
        sent >= 300,
        "only {sent} Joins sent (the joiner bound during the flood)"
    );
    assert!(
        requests <= most,
        "{requests} tables to persist for {sent} Joins on one session"
    );
    assert!(count(&w.sim, w.i, "join_in") >= 300);
    // The flood over, the joiner still gets in (on this session, or a new one), and holds
    // one lease.
    w.run_until(100 * MS, 15 * SECOND, |w| bound(w, e))
        .expect("the joiner never bound after the flood");
    assert_eq!(w.table().len(), 1);
}

#[test]
fn a_disk_slower_than_the_join_timeout_does_not_livelock_joining() {
    let mut w = World::new(22, "fd00:0:0:e1::/112");
    // Each table takes 3 s to be written; the joiner gives up on a Join after 2 s and asks
    // again: every new Join used to allocate a new epoch and a new table, whose grant then
    // answered a Join the joiner had given up on.
    w.sim.set_persist_delay(3 * SECOND);
    let e = w.joiner("job-1", 40, Some(JOIN_KEY));
    let took = w
        .run_until(100 * MS, 20 * SECOND, |w| bound(w, e))
        .expect("never bound: each grant answered a Join given up on");
    eprintln!("bound after {took:?}");
    assert!(took <= 7 * SECOND, "bound only after {took:?}");
    assert!(w.sim.persist_requests(w.i) <= 2);
    assert!(!w.sim.address(e).is_unspecified());
}

#[test]
fn a_renew_replayed_after_an_issuer_restart_from_disk_is_refused_and_a_resend_answered() {
    let mut w = World::new(23, "fd00:0:0:e1::/112");
    let e = w.joiner("job-1", MEMBER, None);
    w.run_until(100 * MS, 2 * SECOND, |w| !w.sim.address(e).is_unspecified())
        .unwrap();
    let first = w.certificate(e).unwrap();
    // Links: 0 is i–b, 1 is e–i, 2 is e–b.
    w.sim.tap(SimLinkIdx(1));
    w.run_until(100 * MS, 2 * LEASE, |w| {
        w.certificate(e).unwrap().renewal >= 2
    })
    .unwrap();
    let tapped = w.sim.take_tapped(SimLinkIdx(1));
    // The first Renew (certificate renewal 0), and the last one (renewal 1, whose answer made
    // the current certificate, renewal 2).
    let replay = captured(&tapped, &first, 3);
    let len = first.encode().len();
    let second = tapped
        .iter()
        .find_map(|(_, bytes)| {
            bytes.windows(len).find_map(|window| {
                let cert = connectopus_wire::LeaseCertificate::parse(window).ok()?;
                (cert.renewal == 1 && cert.address == first.address && cert.epoch == first.epoch)
                    .then_some(cert)
            })
        })
        .expect("the certificate of renewal 1 was not seen");
    let resend = captured(&tapped, &second, 3);
    // The issuer crashes and comes back from its disk.
    w.sim.crash(w.i);
    w.sim.run_for(SECOND);
    w.sim.restart(w.i);
    w.sim.run_for(3 * SECOND);
    let expires = |w: &World| {
        w.table()
            .iter()
            .find(|l| l.address == first.address)
            .map(|l| (l.renewal, l.expires))
    };
    let before = expires(&w).expect("the lease was not restored");
    assert_eq!(before.0, 2, "the disk does not hold the last renewal");
    let i_addr = w.sim.address(w.i);
    let send_from_b = |w: &mut World, payload: Vec<u8>| {
        w.sim.with_node(w.b, |n, now| {
            n.send_control_datagram(now, LEASE_PORT, i_addr, LEASE_PORT, &payload)
                .unwrap();
        });
    };
    let refused = count(&w.sim, w.i, "renew_refused");
    let renewed = count(&w.sim, w.i, "renewed_out");
    send_from_b(&mut w, replay);
    w.sim.run_for(SECOND);
    assert_eq!(count(&w.sim, w.i, "renew_refused"), refused + 1);
    assert_eq!(
        expires(&w),
        Some(before),
        "a replayed Renew extended the lease"
    );
    // The resend of the Renew that made the current renewal is answered (current
    // certificate), without extending the lease either.
    send_from_b(&mut w, resend);
    w.sim.run_for(SECOND);
    assert_eq!(count(&w.sim, w.i, "renewed_out"), renewed + 1);
    assert_eq!(expires(&w), Some(before));
    // The holder keeps its lease through it all.
    w.sim.run_for(2 * LEASE);
    assert_eq!(w.sim.address(e), first.address);
}

/// Finds the lease message `msg` that carries `cert` in what crossed a tapped link.
fn captured(
    messages: &[(NodeIdx, Vec<u8>)],
    cert: &connectopus_wire::LeaseCertificate,
    msg: u8,
) -> Vec<u8> {
    let needle = cert.encode();
    for (_, bytes) in messages {
        let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        else {
            continue;
        };
        let Some(start) = at.checked_sub(11) else {
            continue;
        };
        let end = at + needle.len() + 64;
        if bytes.get(start) == Some(&msg) && end <= bytes.len() {
            let body = bytes[start..end].to_vec();
            if LeaseMessage::parse(&body).is_ok() {
                return body;
            }
        }
    }
    panic!("no such message captured");
}

#[test]
fn joiners_with_made_up_keys_holding_every_joining_session_do_not_keep_a_real_joiner_out() {
    let mut w = World::new(24, "fd00:0:0:e1::/112");
    // 80 joiners nobody authorised: they take all 64 joining sessions (and try again).
    for n in 0..80u8 {
        let e = w
            .sim
            .add_ephemeral(&format!("x{n}"), key(100 + n), None, Some(w.trust.clone()));
        w.sim.connect(
            e,
            w.i,
            LinkParams::default().with_channel_binding([100 + n; 32]),
        );
    }
    w.sim.run_for(2 * SECOND);
    let joining = w
        .sim
        .node(w.i)
        .unwrap()
        .sessions()
        .filter(|s| s.peer().is_some_and(|p| p.address.is_unspecified()))
        .count();
    assert!(
        joining >= 60,
        "the flood holds only {joining} joining sessions"
    );
    // A joiner with the join key, and one listed by its own key, get in long before the
    // flood's sessions time out (10 s).
    let with_join_key = w.joiner("job-1", 40, Some(JOIN_KEY));
    let listed = w.joiner("job-2", MEMBER, None);
    let took = w
        .run_until(100 * MS, 8 * SECOND, |w| {
            bound(w, with_join_key) && bound(w, listed)
        })
        .expect("the real joiners were kept out");
    eprintln!("real joiners bound after {took:?}");
    assert!(took <= 3 * SECOND, "bound only after {took:?}");
    assert!(count(&w.sim, w.i, "joining_session_evicted") >= 1);
    assert_eq!(w.table().len(), 2);
}

#[test]
fn an_issuer_restarted_with_its_clock_behind_stretches_no_lease_or_hold_down() {
    let mut w = World::new(25, "fd00:0:0:e1::/112");
    let live = w.joiner("job-1", 40, Some(JOIN_KEY));
    let gone = w.joiner("job-2", 41, Some(JOIN_KEY));
    w.run_until(100 * MS, 3 * SECOND, |w| bound(w, live) && bound(w, gone))
        .unwrap();
    let _ = &mut w;
    let released: Ipv6Addr = w.sim.address(gone);
    // A graceful stop: the address is held down for the grace; the next grant writes the
    // table with the hold-down.
    w.sim.shutdown(gone);
    w.sim.run_for(SECOND);
    let next = w.joiner("job-3", 42, Some(JOIN_KEY));
    w.run_until(10 * MS, 3 * SECOND, |w| {
        w.sim
            .disk(w.i)
            .is_some_and(|d| d.hold_down.iter().any(|(a, _)| *a == released))
    })
    .expect("the hold-down never reached the disk");
    // The issuer comes back at once, but its wall clock reads an hour early.
    w.sim.crash(w.i);
    w.sim.set_wall_clock_skew(w.i, -3_600_000);
    w.sim.restart(w.i);
    let restarted = w.sim.now();
    let node = w.sim.node(w.i).unwrap();
    let table = node.leases().unwrap();
    for lease in table.leases() {
        assert!(
            lease.expires <= restarted + LEASE,
            "a lease runs {:?} past the restart",
            lease.expires - restarted
        );
    }
    // The released address is free after the grace, not an hour later.
    let free_by = table
        .next_deadline()
        .expect("nothing pending after the restart");
    assert!(free_by <= restarted + LEASE, "{:?}", free_by - restarted);
    w.sim.run_for(GRACE + SECOND);
    assert!(
        w.is_free(released),
        "the hold-down was stretched by the clock"
    );
    // The live holders keep their addresses.
    w.sim.run_for(LEASE);
    assert!(bound(&w, live) && bound(&w, next));
}
