//! Whole-mesh behaviour of the protocol core, in the deterministic simulator.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use connectopus_core::forward::DropReason;
use connectopus_core::node::Event;
use connectopus_core::session::CloseReason;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim, udp_packet};

const SECOND: Duration = Duration::from_secs(1);

fn nodes(sim: &mut Sim, n: usize) -> Vec<NodeIdx> {
    (0..n).map(|i| sim.add_node(&format!("n{i}"))).collect()
}

fn line(sim: &mut Sim, n: usize) -> Vec<NodeIdx> {
    let v = nodes(sim, n);
    for w in v.windows(2) {
        sim.connect(w[0], w[1], LinkParams::default());
    }
    v
}

fn assert_converges(sim: &mut Sim, limit: Duration) -> Duration {
    match sim.run_until_converged(Duration::from_millis(100), limit) {
        Some(t) => t,
        None => panic!("mesh did not converge within {limit:?}"),
    }
}

#[test]
fn two_nodes_converge() {
    let mut sim = Sim::new(1);
    line(&mut sim, 2);
    let t = assert_converges(&mut sim, 5 * SECOND);
    assert!(t < SECOND, "two directly linked nodes took {t:?}");
}

#[test]
fn three_in_a_line_route_through_the_middle() {
    let mut sim = Sim::new(2);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
    assert_eq!(sim.trace(v[2], v[0]).unwrap(), vec![v[2], v[1], v[0]]);
}

#[test]
fn three_in_a_ring_use_direct_links() {
    let mut sim = Sim::new(3);
    let v = line(&mut sim, 3);
    sim.connect(v[2], v[0], LinkParams::default());
    assert_converges(&mut sim, 5 * SECOND);
    for a in &v {
        for b in &v {
            if a != b {
                assert_eq!(sim.trace(*a, *b).unwrap().len(), 2);
            }
        }
    }
}

#[test]
fn four_with_two_parallel_paths_take_the_cheaper() {
    let mut sim = Sim::new(4);
    let v = nodes(&mut sim, 4);
    sim.connect(v[0], v[1], LinkParams::default());
    sim.connect(v[1], v[3], LinkParams::default());
    sim.connect(v[0], v[2], LinkParams::default().with_cost(3.0));
    sim.connect(v[2], v[3], LinkParams::default());
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(SECOND);
    assert_eq!(sim.trace(v[0], v[3]).unwrap(), vec![v[0], v[1], v[3]]);
}

#[test]
fn eight_in_a_line_converge() {
    let mut sim = Sim::new(5);
    let v = line(&mut sim, 8);
    assert_converges(&mut sim, 10 * SECOND);
    assert_eq!(sim.trace(v[0], v[7]).unwrap(), v);
}

#[test]
fn eight_with_a_cycle_converge() {
    let mut sim = Sim::new(6);
    let v = line(&mut sim, 8);
    sim.connect(v[7], v[3], LinkParams::default());
    assert_converges(&mut sim, 10 * SECOND);
    assert_eq!(
        sim.trace(v[0], v[7]).unwrap(),
        vec![v[0], v[1], v[2], v[3], v[7]]
    );
}

#[test]
fn lossy_reordering_links_still_converge() {
    let mut sim = Sim::new(7);
    let v = nodes(&mut sim, 6);
    let lossy = LinkParams {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(15),
        loss: 0.2,
        duplicate: 0.05,
        ..LinkParams::default()
    };
    for w in v.windows(2) {
        sim.connect(w[0], w[1], lossy);
    }
    sim.connect(v[5], v[0], lossy);
    assert_converges(&mut sim, 30 * SECOND);
}

#[test]
fn cut_link_reroutes_within_dead_interval() {
    let mut sim = Sim::new(8);
    let v = nodes(&mut sim, 3);
    let cheap_ab = sim.connect(v[0], v[1], LinkParams::default());
    sim.connect(v[1], v[2], LinkParams::default());
    sim.connect(v[0], v[2], LinkParams::default().with_cost(5.0));
    assert_converges(&mut sim, 5 * SECOND);
    // Reachable first (perhaps over the costly link), then the cheap path once every update
    // is in.
    sim.run_for(SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);

    sim.cut(cheap_ab);
    // Dead interval 7 s, plus a triggered update and route computation.
    sim.run_for(8 * SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[2]]);
    assert_eq!(sim.trace(v[0], v[1]).unwrap(), vec![v[0], v[2], v[1]]);

    sim.restore(cheap_ab);
    sim.run_for(5 * SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
}

#[test]
fn partition_splits_and_heals() {
    let mut sim = Sim::new(9);
    let v = line(&mut sim, 4);
    assert_converges(&mut sim, 5 * SECOND);
    sim.partition(&v[..2]);
    sim.run_for(10 * SECOND);
    assert!(sim.trace(v[0], v[3]).is_err());
    assert!(sim.trace(v[0], v[1]).is_ok());
    sim.heal();
    assert_converges(&mut sim, 10 * SECOND);
}

#[test]
fn crashed_node_is_pruned_after_the_dead_node_interval() {
    let mut sim = Sim::new(10);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    sim.crash(v[2]);
    sim.run_for(8 * SECOND);
    // The link is gone at once (dead interval), so the route goes...
    assert!(sim.trace(v[0], v[2]).is_err());
    // ...but the origin stays in the database until the dead-node interval (60 s).
    let knows = |sim: &Sim| {
        sim.node(v[0])
            .unwrap()
            .known_nodes()
            .any(|(u, _)| u.origin == sim.address(v[2]))
    };
    assert!(knows(&sim));
    sim.run_for(60 * SECOND);
    assert!(!knows(&sim));
    let pruned = sim.take_events(v[0]).into_iter().any(|e| {
        e == Event::NodePruned {
            address: sim.address(v[2]),
        }
    });
    assert!(pruned);
}

#[test]
fn restarted_node_is_accepted_at_once() {
    let mut sim = Sim::new(11);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    sim.crash(v[2]);
    sim.run_for(2 * SECOND);
    sim.restart(v[2]);
    // New epoch: its updates win over the stored ones at once; no waiting for the old
    // session to die (the restarted node's new session replaces it).
    let t = assert_converges(&mut sim, 5 * SECOND);
    assert!(t < 2 * SECOND, "restart took {t:?} to converge");
    let epoch = sim
        .node(v[0])
        .unwrap()
        .known_nodes()
        .find(|(u, _)| u.origin == sim.address(v[2]))
        .map(|(u, _)| u.epoch);
    assert_eq!(epoch, Some(2));
}

#[test]
fn keepalives_keep_an_idle_session_up() {
    let mut sim = Sim::new(12);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    sim.take_events(v[0]);
    sim.run_for(120 * SECOND);
    let closed = sim
        .take_events(v[0])
        .into_iter()
        .any(|e| matches!(e, Event::SessionClosed { .. }));
    assert!(!closed, "an idle but healthy session was closed");
}

#[test]
fn silent_peer_is_closed_after_the_dead_interval() {
    let mut sim = Sim::new(13);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    sim.take_events(v[0]);
    sim.crash(v[1]);
    sim.run_for(6 * SECOND);
    let closed_early = sim
        .take_events(v[0])
        .into_iter()
        .any(|e| matches!(e, Event::SessionClosed { .. }));
    assert!(!closed_early);
    sim.run_for(2 * SECOND);
    let reason = sim.take_events(v[0]).into_iter().find_map(|e| match e {
        Event::SessionClosed { reason, .. } => Some(reason),
        _ => None,
    });
    assert_eq!(reason, Some(CloseReason::Timeout));
}

#[test]
fn packets_cross_the_mesh_with_hop_limit_decremented() {
    let mut sim = Sim::new(14);
    let v = line(&mut sim, 4);
    assert_converges(&mut sim, 5 * SECOND);
    let packet = udp_packet(sim.address(v[0]), sim.address(v[3]), 64, b"hello");
    sim.send_from_tun(v[0], packet);
    sim.run_for(SECOND);
    let got = sim.take_tun_packets(v[3]);
    assert_eq!(got.len(), 1);
    // Two transit nodes (v1, v2) each take one hop; the origin and the last node do not.
    assert_eq!(got[0][7], 62);
    assert_eq!(&got[0][48..], b"hello");
}

#[test]
fn hop_limit_exhaustion_gets_time_exceeded_from_the_transit_node() {
    let mut sim = Sim::new(15);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    let packet = udp_packet(sim.address(v[0]), sim.address(v[2]), 1, b"probe");
    sim.send_from_tun(v[0], packet);
    sim.run_for(SECOND);
    assert!(sim.take_tun_packets(v[2]).is_empty());
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    let icmp = &back[0];
    assert_eq!(icmp[6], 58, "next header ICMPv6");
    assert_eq!(icmp[40], 3, "time exceeded");
    assert_eq!(
        &icmp[8..24],
        &sim.address(v[1]).octets(),
        "sent by the transit node"
    );
}

#[test]
fn unknown_destination_gets_no_route() {
    let mut sim = Sim::new(16);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    let nowhere = "fd00::99:1".parse().unwrap();
    sim.send_from_tun(v[0], udp_packet(sim.address(v[0]), nowhere, 64, b"x"));
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0][40], 1, "destination unreachable");
    assert_eq!(back[0][41], 0, "code 0: no route");
}

#[test]
fn oversized_packets_get_packet_too_big_with_the_link_mtu() {
    let mut sim = Sim::new(17);
    let v = nodes(&mut sim, 2);
    sim.connect(
        v[0],
        v[1],
        LinkParams {
            mtu: 1400,
            ..LinkParams::default()
        },
    );
    assert_converges(&mut sim, 5 * SECOND);
    let big = udp_packet(sim.address(v[0]), sim.address(v[1]), 64, &[7u8; 1400]);
    sim.send_from_tun(v[0], big);
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0][40], 2, "packet too big");
    assert_eq!(
        u32::from_be_bytes(back[0][44..48].try_into().unwrap()),
        1400
    );
}

#[test]
fn icmp_errors_are_rate_limited_and_counted() {
    let mut sim = Sim::new(18);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    let nowhere = "fd00::99:1".parse().unwrap();
    for _ in 0..200 {
        sim.send_from_tun(v[0], udp_packet(sim.address(v[0]), nowhere, 64, b"x"));
    }
    let n_errors = sim.take_tun_packets(v[0]).len();
    assert!((10..200).contains(&n_errors), "{n_errors} errors sent");
    let limited = sim.node(v[0]).unwrap().counters().drops[&DropReason::IcmpRateLimited];
    assert_eq!(limited as usize + n_errors, 200);
}

#[test]
fn multicast_and_ipv4_are_dropped_and_counted() {
    let mut sim = Sim::new(19);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    let mcast = udp_packet(sim.address(v[0]), "ff02::1".parse().unwrap(), 1, b"x");
    sim.send_from_tun(v[0], mcast);
    let mut v4 = vec![0x45u8; 60];
    v4[0] = 0x45;
    sim.send_from_tun(v[0], v4);
    assert!(sim.take_tun_packets(v[0]).is_empty());
    let drops = &sim.node(v[0]).unwrap().counters().drops;
    assert_eq!(drops.get(&DropReason::Multicast), Some(&1));
    assert_eq!(drops.get(&DropReason::NotIpv6), Some(&1));
}

#[test]
fn control_datagrams_are_routed_across_the_mesh() {
    let mut sim = Sim::new(20);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    let dst = sim.address(v[2]);
    sim.with_node(v[0], |node, now| {
        node.send_control_datagram(now, 4000, dst, 277, b"ping")
            .unwrap();
    });
    sim.run_for(SECOND);
    let src = sim.address(v[0]);
    let got = sim.take_events(v[2]).into_iter().any(|e| {
        e == Event::ControlDatagram {
            src,
            src_port: 4000,
            dst_port: 277,
            payload: b"ping".to_vec(),
        }
    });
    assert!(got);
}

#[test]
fn updates_are_not_flooded_back_and_duplicates_are_suppressed() {
    let mut sim = Sim::new(21);
    let v = line(&mut sim, 3);
    sim.connect(v[2], v[0], LinkParams::default());
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(60 * SECOND);
    for i in &v {
        let c = sim.node(*i).unwrap().counters();
        assert!(c.updates_accepted > 0);
        // In a ring every update reaches each node over two paths: one copy is accepted,
        // the other is a duplicate; nothing loops.
        let dups = c
            .updates_rejected
            .get(&connectopus_core::node::UpdateRejection::Duplicate)
            .copied()
            .unwrap_or(0);
        assert!(
            dups <= c.updates_accepted + 4,
            "{dups} duplicates for {} accepted",
            c.updates_accepted
        );
    }
}

#[test]
fn a_thousand_node_mesh_converges() {
    let mut sim = Sim::new(22);
    let n = 1000;
    let v = nodes(&mut sim, n);
    // A ring plus random chords: connected, mean degree about 4.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        sim.connect(v[i], v[(i + 1) % n], LinkParams::default());
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (state >> 33) as usize % n;
        if j != i && j != (i + 1) % n {
            sim.connect(v[i], v[j], LinkParams::default());
        }
    }
    let t = assert_converges(&mut sim, 60 * SECOND);
    eprintln!("1000-node mesh converged in {t:?} of virtual time");
}

fn names_at(sim: &Sim, at: NodeIdx) -> Vec<(String, std::net::Ipv6Addr)> {
    sim.node(at)
        .unwrap()
        .names()
        .iter()
        .map(|(n, e)| (n.clone(), e.address))
        .collect()
}

#[test]
fn names_propagate_and_leave_with_their_node() {
    let mut sim = Sim::new(30);
    let v = line(&mut sim, 3);
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(SECOND);
    let expected: Vec<(String, std::net::Ipv6Addr)> = (0..3)
        .map(|i| (format!("n{i}"), sim.address(v[i])))
        .collect();
    for i in &v {
        assert_eq!(names_at(&sim, *i), expected);
    }
    sim.crash(v[2]);
    // Unreachable once the session times out (7 s dead interval): the name goes with it,
    // long before the origin is pruned from the database (60 s).
    sim.run_for(8 * SECOND);
    assert_eq!(names_at(&sim, v[0]), expected[..2].to_vec());
    sim.restart(v[2]);
    sim.run_for(2 * SECOND);
    assert_eq!(names_at(&sim, v[0]), expected);
}

#[test]
fn attachment_names_are_published_and_withdrawn() {
    use connectopus_wire::{NameBinding, PrefixAdvert};
    let mut sim = Sim::new(31);
    let v = line(&mut sim, 2);
    assert_converges(&mut sim, 5 * SECOND);
    let host: std::net::Ipv6Addr = "fd00::1:2".parse().unwrap();
    sim.with_node(v[0], |node, now| {
        node.set_attachments(
            now,
            vec![PrefixAdvert {
                prefix: connectopus_wire::Prefix::host(host),
                cost: connectopus_wire::Cost::DEFAULT,
            }],
            vec![NameBinding {
                name: "foo-tun".into(),
                address: host,
            }],
        );
    });
    sim.run_for(SECOND);
    assert!(names_at(&sim, v[1]).contains(&("foo-tun".to_owned(), host)));
    sim.with_node(v[0], |node, now| node.set_attachments(now, vec![], vec![]));
    sim.run_for(SECOND);
    assert!(!names_at(&sim, v[1]).iter().any(|(n, _)| n == "foo-tun"));
}

#[test]
fn a_name_claimed_twice_resolves_to_the_lowest_address_everywhere() {
    use connectopus_core::node::NodeConfig;
    let mut sim = Sim::new(32);
    let a = sim.add_node("twin");
    let b = sim.add_node("other");
    let c = sim.add_node_with(NodeConfig::new("fd00::99".parse().unwrap(), "twin", 1, 7));
    sim.connect(a, b, LinkParams::default());
    sim.connect(b, c, LinkParams::default());
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(SECOND);
    for i in [a, b, c] {
        let node = sim.node(i).unwrap();
        assert_eq!(node.names()["twin"].address, sim.address(a), "at {i:?}");
        assert!(
            node.name_conflicts().iter().any(|c| c.contested == "twin"),
            "conflict not reported at {i:?}"
        );
    }
}

/// Plays the driver's part for configuration offers: every node accepts any newer offer.
fn accept_offers(sim: &mut Sim, nodes: &[NodeIdx]) -> usize {
    let mut accepted = 0;
    for &i in nodes {
        for event in sim.take_events(i) {
            if let Event::ConfigOffered {
                version,
                config,
                signature,
                ..
            } = event
            {
                accepted += 1;
                sim.with_node(i, |node, now| {
                    node.propose_config(now, version, &config, &signature);
                });
            }
        }
    }
    accepted
}

#[test]
fn a_new_config_spreads_hop_by_hop_to_every_node() {
    let mut sim = Sim::new(40);
    let v = line(&mut sim, 5);
    assert_converges(&mut sim, 5 * SECOND);
    let config = b"global: {version: 2}\n".to_vec();
    sim.with_node(v[0], |node, now| node.set_config(now, 2, &config, b"sig"));
    for _ in 0..50 {
        sim.run_for(Duration::from_millis(100));
        accept_offers(&mut sim, &v);
    }
    for i in &v {
        assert_eq!(sim.node(*i).unwrap().config_version(), 2, "node {i:?}");
    }
    // Every node now advertises version 2, so nobody is offered it again.
    sim.run_for(20 * SECOND);
    assert_eq!(accept_offers(&mut sim, &v), 0);
}

#[test]
fn a_multi_megabyte_config_crosses_a_lossy_link_intact() {
    let mut sim = Sim::new(41);
    let v = nodes(&mut sim, 2);
    sim.connect(
        v[0],
        v[1],
        LinkParams {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            loss: 0.1,
            ..LinkParams::default()
        },
    );
    assert_converges(&mut sim, 10 * SECOND);
    let config: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    sim.with_node(v[0], |node, now| {
        node.set_config(now, 9, &config, b"signature")
    });
    let mut got = None;
    for _ in 0..600 {
        sim.run_for(Duration::from_millis(100));
        for event in sim.take_events(v[1]) {
            if let Event::ConfigOffered {
                version, config, ..
            } = event
            {
                got = Some((version, config));
            }
        }
        if got.is_some() {
            break;
        }
    }
    let (version, received) = got.expect("the offer never arrived");
    assert_eq!(version, 9);
    assert!(received == config, "the config arrived corrupted");
}

#[test]
fn a_cost_change_reroutes_without_touching_sessions() {
    let mut sim = Sim::new(42);
    let v = nodes(&mut sim, 3);
    sim.connect(v[0], v[1], LinkParams::default());
    sim.connect(v[1], v[2], LinkParams::default());
    sim.connect(v[0], v[2], LinkParams::default().with_cost(5.0));
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
    sim.take_events(v[0]);
    // Make the direct link cheap on both ends: the route moves, no session closes.
    let direct: Vec<connectopus_core::LinkId> = sim
        .node(v[0])
        .unwrap()
        .sessions()
        .filter(|s| s.peer().is_some_and(|p| p.address == sim.address(v[2])))
        .map(|s| s.link())
        .collect();
    let back: Vec<connectopus_core::LinkId> = sim
        .node(v[2])
        .unwrap()
        .sessions()
        .filter(|s| s.peer().is_some_and(|p| p.address == sim.address(v[0])))
        .map(|s| s.link())
        .collect();
    let cheap = connectopus_wire::Cost::from_f64(0.5);
    sim.with_node(v[0], |node, now| node.set_link_cost(now, direct[0], cheap));
    sim.with_node(v[2], |node, now| node.set_link_cost(now, back[0], cheap));
    sim.run_for(SECOND);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[2]]);
    let closed = sim
        .take_events(v[0])
        .into_iter()
        .any(|e| matches!(e, Event::SessionClosed { .. }));
    assert!(!closed);
}

#[test]
fn the_forwarding_snapshot_follows_sessions_and_routes() {
    let mut sim = Sim::new(21);
    let v = line(&mut sim, 3);
    let ab = sim.connect(v[0], v[2], LinkParams::default().with_cost(5.0));
    assert_converges(&mut sim, 5 * SECOND);
    sim.run_for(SECOND);
    let before = sim.node(v[0]).unwrap().forwarding_snapshot().clone();
    assert_eq!(before.established.len(), 2, "{before:?}");
    assert!(std::sync::Arc::ptr_eq(
        &before.table,
        sim.node(v[0]).unwrap().forwarding_table()
    ));
    sim.cut(ab);
    sim.run_for(8 * SECOND);
    let after = sim.node(v[0]).unwrap().forwarding_snapshot().clone();
    // The session on the cut link died: a newer snapshot without it, forwarding the same way.
    assert_eq!(after.established.len(), 1, "{after:?}");
    assert!(after.generation > before.generation);
    assert!(
        after
            .established
            .iter()
            .all(|l| before.established.contains(l))
    );
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
}
