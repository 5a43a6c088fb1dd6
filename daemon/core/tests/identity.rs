//! Node identity in the deterministic simulator: signed hellos bound to the link's channel,
//! signed updates checked against each origin's grant, and revocation.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::forward::RouteTarget;
use connectopus_core::identity::{self, Grant, NodeKey, TrustPolicy};
use connectopus_core::node::{Event, NodeConfig, UpdateRejection};
use connectopus_core::session::CloseReason;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim};
use connectopus_wire::{
    Adjacency, Cost, LinkStateUpdate, NameBinding, Prefix, PrefixAdvert, SignedUpdate,
};

const SECOND: Duration = Duration::from_secs(1);

fn addr(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)
}

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

/// One node of a test mesh: its name, its key seed byte, and the address its grant holds.
#[derive(Clone)]
struct Member {
    name: &'static str,
    key: u8,
    address: Ipv6Addr,
}

fn member(name: &'static str, key: u8, address: u16) -> Member {
    Member {
        name,
        key,
        address: addr(address),
    }
}

/// The policy granting every member its own name and address.
fn policy(members: &[Member]) -> TrustPolicy {
    members.iter().fold(TrustPolicy::new(), |p, m| {
        p.with_grant(key(m.key).public(), Grant::new(m.name, m.address))
    })
}

/// A node configuration for `m` with its key and `trust`.
fn config(m: &Member, trust: &TrustPolicy) -> NodeConfig {
    let mut c = NodeConfig::new(m.address, m.name, 1, u64::from(m.key) * 7919);
    c.identity = Some(key(m.key));
    c.trust = Some(trust.clone());
    c
}

fn add_all(sim: &mut Sim, members: &[Member], trust: &TrustPolicy) -> Vec<NodeIdx> {
    members
        .iter()
        .map(|m| sim.add_node_with(config(m, trust)))
        .collect()
}

fn converge(sim: &mut Sim) {
    assert!(
        sim.run_until_converged(Duration::from_millis(100), 10 * SECOND)
            .is_some(),
        "mesh did not converge"
    );
}

fn hellos_rejected(sim: &Sim, at: NodeIdx, reason: &str) -> u64 {
    sim.node(at)
        .unwrap()
        .counters()
        .hellos_rejected
        .get(reason)
        .copied()
        .unwrap_or(0)
}

fn updates_rejected(sim: &Sim, at: NodeIdx, reason: UpdateRejection) -> u64 {
    sim.node(at)
        .unwrap()
        .counters()
        .updates_rejected
        .get(&reason)
        .copied()
        .unwrap_or(0)
}

/// The (epoch, sequence) `at` has stored for `origin`.
fn stored(sim: &Sim, at: NodeIdx, origin: Ipv6Addr) -> Option<(u64, u64)> {
    sim.node(at)
        .unwrap()
        .known_nodes()
        .find(|(u, _)| u.origin == origin)
        .map(|(u, _)| (u.epoch, u.sequence))
}

fn established_peers(sim: &Sim, at: NodeIdx) -> Vec<Ipv6Addr> {
    sim.node(at)
        .unwrap()
        .sessions()
        .filter(|s| s.is_established())
        .filter_map(|s| s.peer().map(|p| p.address))
        .collect()
}

fn route(sim: &Sim, at: NodeIdx, dst: Ipv6Addr) -> Option<RouteTarget> {
    sim.node(at)
        .unwrap()
        .forwarding_table()
        .routes
        .lookup(dst)
        .map(|(_, t)| *t)
}

/// The update `at` last originated, parsed.
fn own_update(sim: &Sim, at: NodeIdx) -> LinkStateUpdate {
    let node = sim.node(at).unwrap();
    let raw = node.raw_update_for_test(node.address()).unwrap();
    LinkStateUpdate::parse_body(SignedUpdate::parse(&raw).unwrap().body).unwrap()
}

fn signed(by: &NodeKey, update: &LinkStateUpdate) -> Vec<u8> {
    identity::sign_update(Some(by), &update.encode_body())
}

#[test]
fn keyed_line_and_ring_converge_and_route() {
    let members: Vec<Member> = (1..=5)
        .map(|i| member(["a", "b", "c", "d", "e"][i - 1], i as u8, i as u16))
        .collect();
    let trust = policy(&members);

    // A line over plain TCP-like links (no channel binding).
    let mut sim = Sim::new(11);
    let v = add_all(&mut sim, &members, &trust);
    for w in v.windows(2) {
        sim.connect(w[0], w[1], LinkParams::default());
    }
    converge(&mut sim);
    assert_eq!(sim.trace(v[0], v[4]).unwrap(), v);

    // A ring over (D)TLS-like links, each with its own exporter value.
    let mut sim = Sim::new(12);
    let v = add_all(&mut sim, &members, &trust);
    for i in 0..v.len() {
        let binding = [i as u8 + 1; 32];
        sim.connect(
            v[i],
            v[(i + 1) % v.len()],
            LinkParams::default().with_channel_binding(binding),
        );
    }
    converge(&mut sim);
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
    assert_eq!(sim.trace(v[0], v[3]).unwrap(), vec![v[0], v[4], v[3]]);
    for (i, at) in v.iter().enumerate() {
        let node = sim.node(*at).unwrap();
        assert!(node.counters().hellos_rejected.is_empty(), "at {i}");
        assert_eq!(
            node.counters()
                .updates_rejected
                .get(&UpdateRejection::BadSignature),
            None
        );
        // Every session knows its peer's verified key, and updates are signed by it.
        for s in node.sessions() {
            let peer = s.peer().unwrap();
            let m = members.iter().find(|m| m.address == peer.address).unwrap();
            assert_eq!(peer.key, Some(key(m.key).public()));
        }
        let raw = node.raw_update_for_test(node.address()).unwrap();
        let sig = SignedUpdate::parse(&raw).unwrap().signature.unwrap();
        assert_eq!(sig.key, key(members[i].key).public());
        // Every origin is known, and every name resolves.
        assert_eq!(node.known_nodes().count(), 4);
        for m in &members {
            assert_eq!(node.names()[m.name].address, m.address);
        }
    }
}

#[test]
fn a_node_claiming_another_nodes_address_is_refused_and_the_owner_is_untouched() {
    let hub = member("hub", 1, 1);
    let edge1 = member("edge1", 2, 2);
    let edge2 = member("edge2", 3, 3);
    let trust = policy(&[hub.clone(), edge1.clone(), edge2.clone()]);
    let mut sim = Sim::new(21);
    let h = sim.add_node_with(config(&hub, &trust));
    let e1 = sim.add_node_with(config(&edge1, &trust));
    sim.connect(e1, h, LinkParams::default().with_channel_binding([5; 32]));
    converge(&mut sim);
    let before: Vec<_> = sim
        .node(h)
        .unwrap()
        .sessions()
        .map(|s| (s.link(), s.established_at()))
        .collect();
    assert_eq!(before.len(), 1);
    sim.take_events(h);

    // edge2 runs with its own key but edge1's address.
    let impostor = Member {
        address: edge1.address,
        ..edge2
    };
    let e2 = sim.add_node_with(config(&impostor, &trust));
    sim.connect(e2, h, LinkParams::default().with_channel_binding([6; 32]));
    sim.run_for(5 * SECOND);

    assert!(hellos_rejected(&sim, h, "address_mismatch") >= 1);
    let events = sim.take_events(h);
    assert!(events.iter().any(|e| matches!(e,
        Event::HelloRejected { claimed, reason: "address_mismatch", .. } if *claimed == edge1.address)));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::SessionClosed { link, .. } if *link == before[0].0)),
        "the owner's session must not close: {events:?}"
    );
    let after: Vec<_> = sim
        .node(h)
        .unwrap()
        .sessions()
        .filter(|s| s.is_established())
        .map(|s| (s.link(), s.established_at()))
        .collect();
    assert_eq!(after, before, "only the owner's session is established");
    assert_eq!(sim.trace(h, e1).unwrap(), vec![h, e1]);
    assert_eq!(established_peers(&sim, e2), Vec::<Ipv6Addr>::new());
    assert_eq!(sim.node(h).unwrap().names()["edge1"].address, edge1.address);
    assert!(!sim.node(h).unwrap().names().contains_key("edge2"));
}

#[test]
fn keys_without_a_grant_get_no_session() {
    let hub = member("hub", 1, 1);
    let trust = policy(std::slice::from_ref(&hub));
    let mut sim = Sim::new(31);
    let h = sim.add_node_with(config(&hub, &trust));

    // Knows the link (completes the transport) but holds a key nobody granted.
    let intruder = member("intruder", 9, 9);
    let i = sim.add_node_with(config(&intruder, &trust));
    sim.connect(i, h, LinkParams::default().with_channel_binding([1; 32]));
    // Has no key at all.
    let keyless = sim.add_node_with(NodeConfig::new(addr(8), "keyless", 1, 5));
    sim.connect(keyless, h, LinkParams::default());
    sim.run_for(5 * SECOND);

    assert!(hellos_rejected(&sim, h, "unknown_key") >= 1);
    assert!(hellos_rejected(&sim, h, "no_key") >= 1);
    assert!(established_peers(&sim, h).is_empty());
    assert_eq!(route(&sim, h, intruder.address), None);
    assert_eq!(route(&sim, h, addr(8)), None);
    assert_eq!(sim.node(h).unwrap().known_nodes().count(), 0);
}

#[test]
fn a_dialer_refuses_a_peer_with_another_name() {
    let hub = member("hub", 1, 1);
    let edge = member("edge", 2, 2);
    let other = member("other", 3, 3);
    let trust = policy(&[hub.clone(), edge.clone(), other.clone()]);
    let mut sim = Sim::new(41);
    let h = sim.add_node_with(config(&hub, &trust));
    let e = sim.add_node_with(config(&edge, &trust));
    let o = sim.add_node_with(config(&other, &trust));

    // The dialer's peer_node is "hub", but the endpoint it reaches is "other".
    sim.connect_expecting(e, o, LinkParams::default(), Some("hub"));
    sim.run_for(5 * SECOND);
    assert!(hellos_rejected(&sim, e, "unexpected_peer") >= 1);
    assert!(established_peers(&sim, e).is_empty());
    assert!(established_peers(&sim, o).is_empty());

    // The same dialer reaching the real hub gets its session.
    sim.connect_expecting(e, h, LinkParams::default(), Some("hub"));
    sim.run_for(3 * SECOND);
    assert_eq!(established_peers(&sim, e), vec![hub.address]);
}

#[test]
fn a_relay_bridging_two_channels_fails_on_both_sides() {
    let a = member("a", 1, 1);
    let b = member("b", 2, 2);
    let trust = policy(&[a.clone(), b.clone()]);
    let mut sim = Sim::new(51);
    let na = sim.add_node_with(config(&a, &trust));
    let nb = sim.add_node_with(config(&b, &trust));
    // A relay terminates one (D)TLS session with each node and copies bytes between them: each
    // end sees a different exporter value.
    let relay = LinkParams {
        channel_binding_a: Some([0xaa; 32]),
        channel_binding_b: Some([0xbb; 32]),
        ..LinkParams::default()
    };
    // The first end's hello arrives first and the other end hangs up at once, so each relayed
    // link shows the check at one end; with the dialer on either side, both ends refuse.
    sim.connect(na, nb, relay);
    sim.run_for(3 * SECOND);
    assert!(hellos_rejected(&sim, nb, "bad_signature") >= 1);
    sim.connect(nb, na, relay);
    sim.run_for(3 * SECOND);
    assert!(hellos_rejected(&sim, na, "bad_signature") >= 1);
    assert!(established_peers(&sim, na).is_empty());
    assert!(established_peers(&sim, nb).is_empty());
    assert_eq!(route(&sim, na, b.address), None);
}

/// V — H — M — X: M is a compromised member.
fn forging_mesh() -> (Sim, [NodeIdx; 4], [Member; 4]) {
    let members = [
        member("v", 1, 1),
        member("h", 2, 2),
        member("m", 3, 3),
        member("x", 4, 4),
    ];
    let trust = policy(&members);
    let mut sim = Sim::new(61);
    let v = add_all(&mut sim, &members, &trust);
    for w in v.windows(2) {
        sim.connect(
            w[0],
            w[1],
            LinkParams::default().with_channel_binding([3; 32]),
        );
    }
    converge(&mut sim);
    (sim, [v[0], v[1], v[2], v[3]], members)
}

#[test]
fn forged_replayed_and_max_sequence_updates_are_dropped() {
    let (mut sim, [v, h, m, x], members) = forging_mesh();
    let victim = members[0].address;
    let m_key = key(members[2].key);
    let old_raw = sim.node(h).unwrap().raw_update_for_test(victim).unwrap();
    sim.run_for(12 * SECOND);
    let stored_h = stored(&sim, h, victim).unwrap();
    let stored_x = stored(&sim, x, victim).unwrap();
    assert!(stored_h.1 > 1, "the victim refreshed its update");

    // M floods an update for V signed with M's own key, at the highest sequence.
    let mut forged = own_update(&sim, v);
    forged.epoch = u64::MAX;
    forged.sequence = u64::MAX;
    forged.adjacencies.clear();
    sim.with_node(m, |node, now| {
        node.flood_raw_update_for_test(now, &signed(&m_key, &forged))
    });
    // The same, claiming V's key but signed by M.
    let mut claimed = signed(&m_key, &forged);
    let at = claimed.len() - 96;
    claimed[at..at + 32].copy_from_slice(&key(members[0].key).public());
    sim.with_node(m, |node, now| node.flood_raw_update_for_test(now, &claimed));
    // And V's genuine but old update, replayed.
    sim.with_node(m, |node, now| node.flood_raw_update_for_test(now, &old_raw));
    sim.run_for(SECOND / 2);

    for at in [h, x] {
        assert_eq!(updates_rejected(&sim, at, UpdateRejection::WrongKey), 1);
        assert_eq!(updates_rejected(&sim, at, UpdateRejection::BadSignature), 1);
        assert!(updates_rejected(&sim, at, UpdateRejection::Stale) >= 1);
    }
    // Dropped, so never flooded on: V never saw its forged self.
    assert_eq!(updates_rejected(&sim, v, UpdateRejection::WrongKey), 0);
    assert_eq!(updates_rejected(&sim, v, UpdateRejection::OwnOrigin), 0);
    // Nothing moved the stored (epoch, sequence)...
    assert_eq!(stored(&sim, h, victim), Some(stored_h));
    assert_eq!(stored(&sim, x, victim), Some(stored_x));
    assert_eq!(sim.trace(x, v).unwrap(), vec![x, m, h, v]);
    // ...so V's next real update is still accepted everywhere.
    sim.run_for(11 * SECOND);
    for at in [h, m, x] {
        let now = stored(&sim, at, victim).unwrap();
        assert!(now > stored_h && now.0 == 1, "at {at:?}: {now:?}");
    }
}

/// M(1) — X — H — V: M is a compromised member with the lowest address, so without the checks
/// its claims would win every tie.
#[test]
fn a_members_own_update_can_claim_only_what_its_grant_allows() {
    let members = [
        member("m", 1, 1),
        member("x", 2, 2),
        member("hub", 3, 3),
        member("v", 4, 4),
    ];
    let delegated: Prefix = "fd00:100::/72".parse().unwrap();
    let web: Ipv6Addr = "fd00:100::5".parse().unwrap();
    let mut trust = policy(&members);
    let hub_grant = trust.grants.get_mut(&key(members[2].key).public()).unwrap();
    hub_grant.prefixes.push(delegated);
    hub_grant.names.push("web".into());
    let mut sim = Sim::new(71);
    let mut nodes = Vec::new();
    for mb in &members {
        let mut c = config(mb, &trust);
        if mb.name == "hub" {
            c.prefixes = vec![PrefixAdvert {
                prefix: delegated,
                cost: Cost::DEFAULT,
            }];
            c.names = vec![NameBinding {
                name: "web".into(),
                address: web,
            }];
        }
        nodes.push(sim.add_node_with(c));
    }
    let [m, x, h, v] = [nodes[0], nodes[1], nodes[2], nodes[3]];
    for w in nodes.windows(2) {
        sim.connect(w[0], w[1], LinkParams::default());
    }
    converge(&mut sim);
    sim.run_for(SECOND);
    // The hub's granted attachments are accepted.
    assert_eq!(route(&sim, x, web), route(&sim, x, members[2].address));
    assert_eq!(sim.node(v).unwrap().names()["web"].address, web);
    assert_eq!(sim.trace(x, v).unwrap(), vec![x, h, v]);

    // 1. M claims a cheap link to V, which V does not list: accepted, but SPF ignores the edge.
    let mut lie = own_update(&sim, m);
    lie.sequence += 1;
    lie.adjacencies.push(Adjacency {
        peer: members[3].address,
        cost: Cost::from_f64(0.001),
    });
    lie.canonicalize();
    let accepted = sim.node(x).unwrap().counters().updates_accepted;
    sim.with_node(m, |node, now| {
        node.flood_raw_update_for_test(now, &signed(&key(members[0].key), &lie))
    });
    sim.run_for(SECOND);
    assert!(sim.node(x).unwrap().counters().updates_accepted > accepted);
    assert_eq!(sim.trace(x, v).unwrap(), vec![x, h, v], "route unchanged");
    assert_eq!(sim.trace(h, v).unwrap(), vec![h, v]);
    // M's next own update reuses the sequence number of the lie (a duplicate); let it go out.
    sim.with_node(m, |node, now| node.set_attachments(now, vec![], vec![]));
    sim.run_for(SECOND);

    // 2. M advertises a more specific prefix inside the hub's delegation, and 3. publishes the
    // hub's name and the hub's attachment name for its own address.
    let before = updates_rejected(&sim, x, UpdateRejection::UnauthorizedContent);
    let m_addr = members[0].address;
    sim.with_node(m, |node, now| {
        node.set_attachments(
            now,
            vec![PrefixAdvert {
                prefix: Prefix::host(web),
                cost: Cost::DEFAULT,
            }],
            vec![],
        )
    });
    sim.run_for(SECOND);
    sim.with_node(m, |node, now| {
        node.set_attachments(
            now,
            vec![],
            vec![
                NameBinding {
                    name: "hub".into(),
                    address: m_addr,
                },
                NameBinding {
                    name: "web".into(),
                    address: m_addr,
                },
            ],
        )
    });
    sim.run_for(SECOND);
    assert!(updates_rejected(&sim, x, UpdateRejection::UnauthorizedContent) >= before + 2);
    // Rejected updates are not flooded: the hub and V never saw them.
    assert_eq!(
        updates_rejected(&sim, h, UpdateRejection::UnauthorizedContent),
        0
    );
    assert_eq!(route(&sim, x, web), route(&sim, x, members[2].address));
    assert_eq!(route(&sim, h, web), Some(RouteTarget::Local));
    for at in [x, h, v] {
        let names = sim.node(at).unwrap().names();
        assert_eq!(names["hub"].address, members[2].address, "at {at:?}");
        assert_eq!(names["web"].address, web, "at {at:?}");
        assert!(sim.node(at).unwrap().name_conflicts().is_empty());
    }
}

#[test]
fn revocation_closes_sessions_and_removes_routes_and_names() {
    let members: Vec<Member> = (1..=4)
        .map(|i| member(["n0", "n1", "n2", "n3"][i - 1], i as u8, i as u16))
        .collect();
    let trust = policy(&members);
    let mut sim = Sim::new(81);
    let v = add_all(&mut sim, &members, &trust);
    for i in 0..4 {
        sim.connect(
            v[i],
            v[(i + 1) % 4],
            LinkParams::default().with_channel_binding([9; 32]),
        );
    }
    converge(&mut sim);
    let revoked_addr = members[3].address;
    assert_eq!(sim.trace(v[0], v[3]).unwrap(), vec![v[0], v[3]]);

    let revoked = trust.clone().with_revoked(key(members[3].key).public());
    for at in &v[..3] {
        sim.take_events(*at);
        sim.with_node(*at, |node, now| node.set_trust(now, Some(revoked.clone())));
    }
    // At once: sessions closed, routes and names gone.
    for at in [v[0], v[2]] {
        let events = sim.take_events(at);
        assert!(events.iter().any(|e| matches!(e,
            Event::SessionClosed { peer: Some(p), reason: CloseReason::PeerRejected, .. } if *p == revoked_addr)));
    }
    for at in &v[..3] {
        assert!(!established_peers(&sim, *at).contains(&revoked_addr));
        assert_eq!(route(&sim, *at, revoked_addr), None, "at {at:?}");
        assert!(!sim.node(*at).unwrap().names().contains_key("n3"));
        assert_eq!(stored(&sim, *at, revoked_addr), None);
    }
    // Later: its re-dials are refused, and the rest of the mesh still routes.
    sim.run_for(5 * SECOND);
    for at in [v[0], v[2]] {
        assert!(hellos_rejected(&sim, at, "revoked_key") >= 1);
        assert!(!established_peers(&sim, at).contains(&revoked_addr));
        assert_eq!(route(&sim, at, revoked_addr), None);
    }
    assert_eq!(sim.trace(v[0], v[2]).unwrap(), vec![v[0], v[1], v[2]]);
    assert_eq!(stored(&sim, v[1], revoked_addr), None);
}

#[test]
fn a_wrong_name_or_a_copy_of_the_receivers_key_is_refused() {
    let hub = member("hub", 1, 1);
    let edge = member("edge", 2, 2);
    let trust = policy(&[hub.clone(), edge.clone()]);
    let mut sim = Sim::new(91);
    let h = sim.add_node_with(config(&hub, &trust));
    // The edge's key and address, under another name.
    let renamed = Member {
        name: "edgy",
        ..edge
    };
    let r = sim.add_node_with(config(&renamed, &trust));
    sim.connect(r, h, LinkParams::default());
    // A second node that runs with the hub's own key.
    let clone = Member {
        key: hub.key,
        ..member("edge", 1, 2)
    };
    let c = sim.add_node_with(config(&clone, &trust));
    sim.connect(c, h, LinkParams::default());
    sim.run_for(3 * SECOND);
    assert!(hellos_rejected(&sim, h, "name_mismatch") >= 1);
    assert!(hellos_rejected(&sim, h, "own_key") >= 1);
    assert!(established_peers(&sim, h).is_empty());
}
