//! Ephemeral nodes driven by `Node` itself in the simulator (`docs/dynamic-mesh.md` §1.4,
//! §1.5, §1.7, §1.9 small and hostile cases): a node that is not in the mesh joins over a
//! joining session to an issuer, the issuer grants only after its table is persisted, the
//! joiner re-addresses itself and its name resolves everywhere; leases return to the pool
//! after lease + grace, not before; unauthorised joiners, forged and replayed lease messages
//! change nothing; an issuer restart keeps its leases (or, without its table, waits them out).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::Ipv6Addr;

use connectopus_core::lease_holder::HolderState;
use connectopus_core::lease_table::PersistedLeases;
use connectopus_core::node::{Event, LeaseEvent};
use connectopus_core::sim::{LinkParams, NodeIdx, Sim, SimLinkIdx};
use connectopus_wire::lease::{LEASE_PORT, release_message, renew_message};
use connectopus_wire::{LeaseBody, LeaseCertificate, LeaseMessage};
use support::lease_world::*;

#[test]
fn a_joiner_gets_an_address_after_the_table_is_persisted_and_its_name_resolves_within_a_second() {
    let mut w = World::new(1, "fd00:0:0:e1::/112");
    w.sim.set_persist_delay(300 * MS);
    let e = w.joiner("job-1", MEMBER, None);
    assert!(w.sim.address(e).is_unspecified());
    // The backbone node does not serve joins: it refuses the join hello.
    w.sim.run_for(250 * MS);
    assert!(
        w.sim
            .node(w.b)
            .unwrap()
            .counters()
            .hellos_rejected
            .get("join_not_served")
            >= Some(&1)
    );
    // The grant is allocated, but not answered before the table that records it is on disk.
    assert!(matches!(
        w.sim.node(e).unwrap().lease_state(),
        Some(HolderState::Requesting { .. })
    ));
    assert_eq!(w.table().len(), 1);
    assert!(w.sim.disk(w.i).is_none());
    assert!(w.sim.address(e).is_unspecified());
    let took = w
        .run_until(10 * MS, 2 * SECOND, |w| w.resolves(w.b, "job-1").is_some())
        .expect("the name never resolved");
    let took = took + 250 * MS;
    assert!(took <= SECOND, "name resolved {took:?} after link up");
    let address = w.sim.address(e);
    assert!(w.pool.contains(address) && address != w.pool.addr());
    assert_eq!(w.resolves(w.b, "job-1"), Some(address));
    assert_eq!(w.resolves(w.i, "job-1"), Some(address));
    // The disk holds the lease; the node asked its driver to set the address.
    let disk: &PersistedLeases = w.sim.disk(w.i).unwrap();
    assert_eq!(disk.leases.len(), 1);
    assert_eq!(disk.leases[0].address, address);
    assert_eq!(disk.leases[0].key, key(MEMBER).public());
    assert_eq!(
        w.sim.address_changes(e),
        [(w.sim.address_changes(e)[0].0, Some(address))]
    );
    let granted = lease_events(&mut w.sim, w.i);
    assert!(granted.iter().any(|l| matches!(l, LeaseEvent::Granted { address: g, name, .. } if *g == address && name == "job-1")));
    // Packets reach it: b routes to its address (via the issuer or over their own link).
    w.sim.run_for(2 * SECOND);
    assert!(w.sim.trace(w.b, e).is_ok());
    assert!(w.sim.trace(e, w.b).is_ok());
    // Three leases long, renewals keep it and its name.
    w.sim.run_for(3 * LEASE);
    assert_eq!(w.sim.address(e), address);
    assert!(w.certificate(e).unwrap().renewal >= 5);
    assert_eq!(w.resolves(w.b, "job-1"), Some(address));
    assert_eq!(count(&w.sim, w.i, "renew_refused"), 0);
}

#[test]
fn a_lease_returns_to_the_pool_after_lease_and_grace_once_its_holder_is_gone_not_before() {
    // A /126 holds three addresses.
    let mut w = World::new(2, "fd00:0:0:e1::/126");
    let holders: Vec<NodeIdx> = (0..3)
        .map(|n| w.joiner(&format!("job-{n}"), 10 + n, Some(JOIN_KEY)))
        .collect();
    w.run_until(100 * MS, 3 * SECOND, |w| {
        holders.iter().all(|e| !w.sim.address(*e).is_unspecified())
    })
    .expect("not all bound");
    // A fourth is refused: the pool is exhausted; it keeps asking.
    let late = w.joiner("job-late", 20, Some(JOIN_KEY));
    w.sim.run_for(3 * SECOND);
    assert!(w.sim.address(late).is_unspecified());
    assert!(lease_events(&mut w.sim, late).iter().any(
        |l| matches!(l, LeaseEvent::JoinRefused { reason, .. } if *reason == "pool_exhausted")
    ));
    w.sim.run_for(LEASE);
    // A graceful shutdown releases: the address is free after the grace, not the lease.
    let released = w.sim.address(holders[0]);
    w.sim.shutdown(holders[0]);
    let shut_at = w.sim.now();
    w.sim.run_for(SECOND);
    assert_eq!(count(&w.sim, w.i, "released"), 1);
    assert!(!w.is_free(released));
    let took = w
        .run_until(100 * MS, LEASE, |w| w.sim.address(late) == released)
        .expect("the released address never came back");
    assert!(w.sim.now() - shut_at >= GRACE, "reissued after {took:?}");
    assert!(w.sim.now() - shut_at < GRACE + 3 * SECOND);
    // A crash: the address returns only after the holder's last renewal + lease + grace.
    let crashed = w.sim.address(holders[1]);
    // The issuer's expiry is the holder's last renewal + lease.
    let expires = w
        .sim
        .node(w.i)
        .unwrap()
        .leases()
        .unwrap()
        .lease_at(crashed)
        .unwrap()
        .expires;
    let next = w.joiner("job-next", 21, Some(JOIN_KEY));
    w.sim.crash(holders[1]);
    let crashed_at = w.sim.now();
    // Its name leaves the mesh by its lease (counted from the last renewal each node saw).
    w.run_until(100 * MS, LEASE + 2 * SECOND, |w| {
        w.resolves(w.b, "job-1").is_none() && w.resolves(w.i, "job-1").is_none()
    })
    .expect("the crashed holder's name stayed");
    let took = w
        .run_until(100 * MS, LEASE + GRACE + 5 * SECOND, |w| {
            w.sim.address(next) == crashed
        })
        .expect("the crashed holder's address never came back");
    let reissued = w.sim.now();
    assert!(
        reissued >= expires + GRACE,
        "reissued {took:?} after the crash, before lease + grace"
    );
    assert!(reissued <= crashed_at + LEASE + GRACE + 3 * SECOND);
    w.sim.run_for(SECOND);
    assert_eq!(w.resolves(w.b, "job-next"), Some(crashed));
    // The next holder of an address has a higher epoch than every earlier one.
    let epochs: Vec<u64> = [late, next]
        .iter()
        .map(|e| w.certificate(*e).unwrap().epoch)
        .collect();
    let survivor = w.certificate(holders[2]).unwrap().epoch;
    assert!(epochs.iter().all(|e| *e > survivor));
}

#[test]
fn joiners_without_a_valid_join_key_or_identity_are_refused() {
    let mut w = World::new(3, "fd00:0:0:e1::/112");
    // Not listed, no join key; a key that is not a join key; a static node's key.
    let nobody = w.joiner("job-a", 30, None);
    let wrong = w.joiner("job-b", 31, Some(98));
    let statics = w
        .sim
        .add_ephemeral("job-c", key(BACKBONE), None, Some(w.trust.clone()));
    w.sim.connect(
        statics,
        w.i,
        LinkParams::default().with_channel_binding([33; 32]),
    );
    // A listed key asking for a reserved name.
    let reserved = w.joiner("b", MEMBER, None);
    w.sim.run_for(5 * SECOND);
    for (e, reason) in [
        (nobody, "not_authorized"),
        (wrong, "not_authorized"),
        (reserved, "name_not_allowed"),
    ] {
        assert!(w.sim.address(e).is_unspecified());
        let events = lease_events(&mut w.sim, e);
        assert!(
            events
                .iter()
                .any(|l| matches!(l, LeaseEvent::JoinRefused { reason: r, .. } if *r == reason)),
            "{events:?}"
        );
    }
    assert!(w.sim.address(statics).is_unspecified());
    assert!(
        w.sim
            .node(w.i)
            .unwrap()
            .counters()
            .hellos_rejected
            .get("static_key")
            >= Some(&1)
    );
    assert!(w.table().is_empty());
    assert!(w.sim.disk(w.i).is_none(), "nothing to persist");
    assert_eq!(w.sim.node(w.b).unwrap().names().len(), 2);
    // A joining session carries nothing but lease messages: no routes to or from it.
    assert!(w.sim.node(nobody).unwrap().known_nodes().next().is_none());
    assert!(w.sim.trace(nobody, w.b).is_err());
}

/// The links of `at`'s established sessions whose peer has no address yet (joining sessions).
fn joining_links(sim: &Sim, at: NodeIdx) -> Vec<connectopus_core::LinkId> {
    sim.node(at)
        .unwrap()
        .sessions()
        .filter(|s| s.is_established() && s.peer().is_some_and(|p| p.address.is_unspecified()))
        .map(|s| s.link())
        .collect()
}

/// The daemon's dataplanes forward by the published snapshot without asking the node, so a
/// joining session (whose key the join policy has not even checked yet) must not be in it:
/// otherwise anyone who reaches an issuer could inject packets with any source into the mesh.
#[test]
fn joining_sessions_never_reach_the_forwarding_snapshot() {
    let mut w = World::new(4, "fd00:0:0:e1::/112");
    let nobody = w.joiner("job-a", 30, None);
    w.sim.run_for(SECOND);
    let joining = joining_links(&w.sim, w.i);
    assert!(!joining.is_empty(), "no joining session at the issuer");
    let snapshot = w.sim.node(w.i).unwrap().forwarding_snapshot().clone();
    for link in &joining {
        assert!(!snapshot.is_established(*link), "joining {link:?} forwards");
    }
    // The issuer's session with the backbone node forwards.
    assert!(!snapshot.established.is_empty());
    // On the joiner itself nothing forwards before it has an address.
    assert!(
        w.sim
            .node(nobody)
            .unwrap()
            .forwarding_snapshot()
            .established
            .is_empty()
    );
    // A granted joiner's sessions forward once it holds its address.
    let member = w.joiner("job-m", MEMBER, None);
    w.run_until(10 * MS, 3 * SECOND, |w| {
        !w.sim.address(member).is_unspecified()
    })
    .expect("the member never got an address");
    let address = w.sim.address(member);
    w.run_until(10 * MS, 3 * SECOND, |w| {
        let node = w.sim.node(w.i).unwrap();
        let snapshot = node.forwarding_snapshot();
        node.sessions().any(|s| {
            s.peer().is_some_and(|p| p.address == address) && snapshot.is_established(s.link())
        })
    })
    .expect("the granted joiner's session never reached the snapshot");
}

/// Finds the lease message `msg` that carries `cert` in what crossed a tapped link.
fn captured(messages: &[(NodeIdx, Vec<u8>)], cert: &LeaseCertificate, msg: u8) -> Vec<u8> {
    let needle = cert.encode();
    for (_, bytes) in messages {
        if let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            // msg (1), xid (8), cert_len (2), cert, holder_sig (64).
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
    }
    panic!("no such message captured");
}

#[test]
fn forged_and_replayed_lease_messages_change_nothing() {
    let mut w = World::new(4, "fd00:0:0:e1::/112");
    let e = w.joiner("job-1", MEMBER, None);
    w.run_until(100 * MS, 2 * SECOND, |w| !w.sim.address(e).is_unspecified())
        .unwrap();
    let first = w.certificate(e).unwrap();
    let address = first.address;
    // Watch the holder's link to the issuer, and let it renew once.
    // Links: 0 is i–b, 1 is e–i.
    w.sim.tap(SimLinkIdx(1));
    // Two renewals: the first Renew is then stale (one renewal older is a resend).
    w.run_until(100 * MS, 2 * LEASE, |w| {
        w.certificate(e).unwrap().renewal >= 2
    })
    .unwrap();
    let tapped = w.sim.take_tapped(SimLinkIdx(1));
    let renew = captured(&tapped, &first, 3);
    w.sim.run_for(SECOND);
    let before = w.table();
    let holder_before = w.certificate(e).unwrap();
    let i_addr = w.sim.address(w.i);
    let send_from_b = |w: &mut World, payload: Vec<u8>, to: Ipv6Addr| {
        w.sim.with_node(w.b, |n, now| {
            n.send_control_datagram(now, LEASE_PORT, to, LEASE_PORT, &payload)
                .unwrap();
        });
    };
    // 1. The holder's Renew, replayed by another node: refused, the lease is not extended.
    send_from_b(&mut w, renew, i_addr);
    // 2. A Renew of the current certificate signed by another key.
    let forged = LeaseMessage {
        xid: 77,
        body: LeaseBody::Renew {
            cert: holder_before.clone(),
            holder_sig: sign(60, &renew_message(77, &holder_before)),
        },
    };
    send_from_b(&mut w, forged.encode(), i_addr);
    // 3. A certificate altered after signing (a longer lease), signed by the holder key (as
    //    a holder cheating for itself would).
    let mut altered = holder_before.clone();
    altered.lease_ms *= 10;
    let cheat = LeaseMessage {
        xid: 78,
        body: LeaseBody::Renew {
            cert: altered.clone(),
            holder_sig: sign(MEMBER, &renew_message(78, &altered)),
        },
    };
    send_from_b(&mut w, cheat.encode(), i_addr);
    // 4. A Release signed by another key, and one for the wrong epoch signed by the holder.
    for (signer, epoch) in [(60, holder_before.epoch), (MEMBER, holder_before.epoch + 1)] {
        let release = LeaseMessage {
            xid: 79,
            body: LeaseBody::Release {
                address,
                epoch,
                holder_sig: sign(signer, &release_message(79, address, epoch)),
            },
        };
        send_from_b(&mut w, release.encode(), i_addr);
    }
    // 5. A Join as a datagram (joins travel only on joining sessions), and garbage.
    let join = LeaseMessage {
        xid: 80,
        body: LeaseBody::Join {
            hint: Ipv6Addr::UNSPECIFIED,
            name: "job-9".into(),
            proof: None,
        },
    };
    send_from_b(&mut w, join.encode(), i_addr);
    send_from_b(&mut w, vec![3, 1, 2, 3], i_addr);
    // 6. To the holder: a Refuse and a Renewed it did not ask for (in the issuer's name: a
    //    datagram's source is not authenticated, so the holder checks its transactions).
    let mut foreign = holder_before.clone();
    foreign.renewal += 5;
    for body in [
        LeaseBody::Refuse {
            code: connectopus_wire::RefuseCode::UnknownLease,
            retry_after_ms: 0,
            text: String::new(),
        },
        LeaseBody::Renewed {
            t1_ms: 1,
            cert: foreign,
        },
    ] {
        send_from_b(&mut w, LeaseMessage { xid: 12345, body }.encode(), address);
    }
    w.sim.run_for(SECOND);
    let after = w.table();
    assert_eq!(before, after, "the issuer's table changed");
    assert_eq!(w.certificate(e).unwrap(), holder_before);
    assert_eq!(count(&w.sim, w.i, "renew_refused"), 3);
    assert_eq!(count(&w.sim, w.i, "release_refused"), 2);
    assert_eq!(count(&w.sim, w.i, "join_not_joining"), 1);
    assert_eq!(count(&w.sim, w.i, "malformed"), 1);
    assert_eq!(count(&w.sim, e, "answer_ignored"), 2);
    // Nothing reached a local program, and the holder keeps its lease.
    assert!(
        !w.sim
            .take_events(w.i)
            .iter()
            .any(|ev| matches!(ev, Event::ControlDatagram { .. }))
    );
    w.sim.run_for(2 * LEASE);
    assert_eq!(w.sim.address(e), address);
    assert_eq!(w.resolves(w.b, "job-1"), Some(address));
}

#[test]
fn an_issuer_restart_keeps_its_leases_and_without_its_table_waits_them_out() {
    let mut w = World::new(5, "fd00:0:0:e1::/112");
    let e1 = w.joiner("job-1", 40, Some(JOIN_KEY));
    let e2 = w.joiner("job-2", 41, Some(JOIN_KEY));
    w.run_until(100 * MS, 3 * SECOND, |w| {
        !w.sim.address(e1).is_unspecified() && !w.sim.address(e2).is_unspecified()
    })
    .unwrap();
    let (a1, a2) = (w.sim.address(e1), w.sim.address(e2));
    let old_epochs = [
        w.certificate(e1).unwrap().epoch,
        w.certificate(e2).unwrap().epoch,
    ];
    // Restart with the disk: both leases are in the table at once; the holders keep them.
    w.sim.crash(w.i);
    w.sim.run_for(3 * SECOND);
    w.sim.restart(w.i);
    let restored: Vec<Ipv6Addr> = w.table().iter().map(|l| l.address).collect();
    assert!(restored.contains(&a1) && restored.contains(&a2));
    let e3 = w.joiner("job-3", 42, Some(JOIN_KEY));
    w.sim.run_for(2 * LEASE);
    assert_eq!((w.sim.address(e1), w.sim.address(e2)), (a1, a2));
    let a3 = w.sim.address(e3);
    assert!(!a3.is_unspecified() && a3 != a1 && a3 != a2);
    assert!(
        old_epochs
            .iter()
            .all(|e| w.certificate(e3).unwrap().epoch > *e)
    );
    assert_eq!(w.resolves(w.b, "job-3"), Some(a3));
    // Restart without it: joins are refused (`restarting`) for lease + grace, renewals
    // re-adopt the live holders' leases, and nobody gets an address someone holds.
    w.sim.crash(w.i);
    w.sim.run_for(SECOND);
    w.sim.restart_losing_state(w.i);
    let restarted = w.sim.now();
    assert!(w.table().is_empty());
    let e4 = w.joiner("job-4", 43, Some(JOIN_KEY));
    w.sim.run_for(LEASE);
    assert!(w.sim.address(e4).is_unspecified());
    assert!(
        lease_events(&mut w.sim, e4).iter().any(
            |l| matches!(l, LeaseEvent::JoinRefused { reason, .. } if *reason == "restarting")
        )
    );
    let readopted: Vec<Ipv6Addr> = w.table().iter().map(|l| l.address).collect();
    for held in [a1, a2, a3] {
        assert!(readopted.contains(&held), "{held} not re-adopted");
    }
    w.run_until(100 * MS, 2 * LEASE, |w| !w.sim.address(e4).is_unspecified())
        .expect("never joined after the quarantine");
    assert!(w.sim.now() >= restarted + LEASE + GRACE);
    let a4 = w.sim.address(e4);
    assert!(![a1, a2, a3].contains(&a4));
    assert_eq!(
        (w.sim.address(e1), w.sim.address(e2), w.sim.address(e3)),
        (a1, a2, a3)
    );
}

#[test]
fn joining_sessions_are_capped_and_time_out_and_a_real_joiner_still_gets_in() {
    let mut w = World::new(6, "fd00:0:0:e1::/112");
    // 80 joiners nobody authorised hold joining sessions open (they are refused, but keep the
    // session until the issuer closes it).
    let flood: Vec<NodeIdx> = (0..80u8)
        .map(|n| {
            let e =
                w.sim
                    .add_ephemeral(&format!("x{n}"), key(100 + n), None, Some(w.trust.clone()));
            w.sim.connect(
                e,
                w.i,
                LinkParams::default().with_channel_binding([100 + n; 32]),
            );
            e
        })
        .collect();
    let joining = |w: &World| {
        w.sim
            .node(w.i)
            .unwrap()
            .sessions()
            .filter(|s| s.peer().is_some_and(|p| p.address.is_unspecified()))
            .count()
    };
    w.sim.run_for(SECOND);
    let member = w.joiner("job-1", MEMBER, None);
    let mut most = 0;
    let bound = w.run_until(100 * MS, 30 * SECOND, |w| {
        most = most.max(joining(w));
        !w.sim.address(member).is_unspecified()
    });
    // With more joiners than sessions, a new join hello replaces the oldest unproven session
    // (see `issuer_hardening.rs`); with 64 left, nothing replaces them: past the joining
    // sessions' 10 s, the issuer closes them.
    for e in &flood[64..] {
        w.sim.crash(*e);
    }
    w.run_until(100 * MS, 12 * SECOND, |w| {
        most = most.max(joining(w));
        false
    });
    assert!(most <= 64, "{most} joining sessions at once");
    assert!(
        most >= 60,
        "the flood did not fill the joining sessions ({most})"
    );
    let node = w.sim.node(w.i).unwrap();
    assert!(node.counters().hellos_rejected.get("join_busy") >= Some(&1));
    eprintln!(
        "COUNTERS {:?} {:?} most {most}",
        node.counters().leases,
        node.counters().hellos_rejected
    );
    assert!(count(&w.sim, w.i, "joining_session_evicted") >= 1);
    assert!(count(&w.sim, w.i, "joining_session_timeout") >= 30);
    assert!(bound.is_some(), "the member never got in");
    assert!(
        flood[..64]
            .iter()
            .all(|e| w.sim.address(*e).is_unspecified())
    );
    assert_eq!(w.table().len(), 1);
}
