//! The mesh prefix by DHCPv6 prefix delegation in the simulator (`docs/dynamic-mesh.md` §2.4,
//! §2.6): a delegation reaches every node's forwarding table and packets to mirror addresses
//! arrive; renumbering spreads and deprecates the old prefix; every node withdraws a prefix
//! at the end of its valid lifetime by its own clock, also after the delegating node crashed;
//! extension kind 2 from a node `global.delegated` does not name is refused; partitions heal
//! to the newest delegation.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::Time;
use connectopus_core::node::{
    Delegation, MeshPrefix, MeshPrefixConfig, NodeConfig, UpdateRejection,
};
use connectopus_core::sim::{LinkParams, NodeIdx, Sim, udp_packet};
use connectopus_wire::Prefix;

const SECOND: Duration = Duration::from_secs(1);

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn subnet() -> Prefix {
    p("fd00:cafe::/56")
}

fn address(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet().addr()) | (0x10_u128 << 64) | (i as u128 + 1))
}

/// The mesh configuration every node runs: node 0 (`gw`) delegates.
fn mesh_prefix_config(delegators: &[usize]) -> MeshPrefixConfig {
    MeshPrefixConfig {
        subnet: subnet(),
        delegators: delegators.iter().map(|i| (address(*i), 0)).collect(),
    }
}

/// `n` nodes in a line, node 0 delegating; `rogue` nodes believe they delegate too (their
/// configuration names them), the others do not.
fn line(sim: &mut Sim, n: usize, rogue: &[usize]) -> Vec<NodeIdx> {
    let nodes: Vec<NodeIdx> = (0..n)
        .map(|i| {
            let name = if i == 0 { "gw".into() } else { format!("n{i}") };
            let mut config = NodeConfig::new(address(i), name, 1, 200 + i as u64);
            config.mesh_prefix = Some(if rogue.contains(&i) {
                mesh_prefix_config(&[0, i])
            } else {
                mesh_prefix_config(&[0])
            });
            sim.add_node_with(config)
        })
        .collect();
    for w in nodes.windows(2) {
        sim.connect(w[0], w[1], LinkParams::default());
    }
    assert!(
        sim.run_until_converged(Duration::from_millis(100), 10 * SECOND)
            .is_some()
    );
    nodes
}

fn delegation(prefix: &str, now: Time, preferred: u64, valid: u64) -> Delegation {
    Delegation {
        prefix: p(prefix),
        preferred_until: now + Duration::from_secs(preferred),
        valid_until: now + Duration::from_secs(valid),
    }
}

fn delegate(sim: &mut Sim, node: NodeIdx, delegations: Vec<Delegation>) {
    sim.with_node(node, |n, now| n.set_delegations(now, delegations));
}

/// (plane, deprecated) of every live plane of a node.
fn planes(sim: &Sim, node: NodeIdx) -> Vec<(Prefix, bool)> {
    sim.node(node)
        .unwrap()
        .mesh_prefixes()
        .iter()
        .map(|m| (m.prefix, m.deprecated))
        .collect()
}

fn plane_of(sim: &Sim, node: NodeIdx, prefix: &str) -> MeshPrefix {
    *sim.node(node)
        .unwrap()
        .mesh_prefixes()
        .iter()
        .find(|m| m.prefix == p(prefix))
        .unwrap()
}

/// Runs in steps of 50 ms until every live node in `nodes` has exactly `want`; returns the
/// virtual time it took.
fn wait_for_planes(
    sim: &mut Sim,
    nodes: &[NodeIdx],
    want: &[(&str, bool)],
    limit: Duration,
) -> Duration {
    let want: Vec<(Prefix, bool)> = want.iter().map(|(s, d)| (p(s), *d)).collect();
    let start = sim.now();
    loop {
        if nodes
            .iter()
            .filter(|n| sim.node(**n).is_some())
            .all(|n| planes(sim, *n) == want)
        {
            return sim.now() - start;
        }
        let got: BTreeMap<usize, Vec<(Prefix, bool)>> = nodes
            .iter()
            .filter(|n| sim.node(**n).is_some())
            .map(|n| (n.0, planes(sim, *n)))
            .collect();
        assert!(
            sim.now() - start < limit,
            "planes {want:?} not everywhere within {limit:?}: {got:?}"
        );
        sim.run_for(Duration::from_millis(50));
    }
}

/// Sends a UDP packet from `from`'s TUN and tells whether it arrived on `to`'s TUN.
fn delivered(sim: &mut Sim, from: NodeIdx, to: NodeIdx, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
    sim.take_tun_packets(to);
    sim.send_from_tun(from, udp_packet(src, dst, 64, b"mirror"));
    sim.run_for(SECOND);
    sim.take_tun_packets(to)
        .iter()
        .any(|pkt| pkt.get(24..40) == Some(&dst.octets()[..]) && pkt.ends_with(b"mirror"))
}

#[test]
fn a_delegation_reaches_every_forwarding_table_and_mirror_addresses_are_reachable() {
    let mut sim = Sim::new(1);
    let nodes = line(&mut sim, 4, &[]);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:100::/56", now, 30, 40)],
    );
    let took = wait_for_planes(&mut sim, &nodes, &[("2001:db8:100::/56", false)], SECOND);
    assert!(took <= SECOND);
    for (i, n) in nodes.iter().enumerate() {
        let plane = plane_of(&sim, *n, "2001:db8:100::/56");
        assert_eq!(plane.delegated, p("2001:db8:100::/56"));
        assert_eq!(plane.origin, address(0));
        let own = plane.mirror(address(i));
        assert_eq!(
            own,
            Ipv6Addr::from(0x2001_0db8_0100_0010_u128 << 64 | (i as u128 + 1))
        );
        // Every node's forwarding table mirrors every node's /128.
        let table = sim.node(*n).unwrap().forwarding_table().clone();
        for j in 0..4 {
            let mirror = plane.mirror(address(j));
            let (m, target) = table.routes.lookup(mirror).unwrap();
            let (o, original) = table.routes.lookup(address(j)).unwrap();
            assert_eq!(m.len(), o.len(), "node {i}: mirror of node {j}");
            assert_eq!(target, original, "node {i}: mirror of node {j}");
        }
    }
    // Mirror to mirror across three hops, both ways, and from the stable plane to a mirror.
    let m = plane_of(&sim, nodes[0], "2001:db8:100::/56");
    assert!(delivered(
        &mut sim,
        nodes[3],
        nodes[1],
        m.mirror(address(3)),
        m.mirror(address(1))
    ));
    assert!(delivered(
        &mut sim,
        nodes[0],
        nodes[3],
        m.mirror(address(0)),
        m.mirror(address(3))
    ));
    assert!(delivered(
        &mut sim,
        nodes[2],
        nodes[0],
        address(2),
        m.mirror(address(0))
    ));
    // An address in the plane no node holds is not delivered anywhere.
    let nobody = m.mirror(Ipv6Addr::from(u128::from(address(9)) + 0x100));
    for n in &nodes {
        assert!(!delivered(
            &mut sim,
            nodes[3],
            *n,
            m.mirror(address(3)),
            nobody
        ));
    }
}

#[test]
fn renumbering_spreads_and_the_old_prefix_is_withdrawn_at_its_deadline_after_the_delegator_crashed()
{
    let mut sim = Sim::new(2);
    let nodes = line(&mut sim, 4, &[]);
    let t0 = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:100::/56", t0, 30, 40)],
    );
    wait_for_planes(&mut sim, &nodes, &[("2001:db8:100::/56", false)], SECOND);
    sim.run_for(4 * SECOND);
    let t1 = sim.now();
    // The client's new lease holds only D2: D1 is kept, deprecated, until its deadline.
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:200::/56", t1, 300, 400)],
    );
    let took = wait_for_planes(
        &mut sim,
        &nodes,
        &[("2001:db8:100::/56", true), ("2001:db8:200::/56", false)],
        SECOND,
    );
    assert!(took <= SECOND);
    // Each node's deadline for D1 is its own count of what the delegator advertised.
    for n in &nodes {
        let old = plane_of(&sim, *n, "2001:db8:100::/56");
        assert!(old.valid_until <= t0 + 40 * SECOND + SECOND, "{old:?}");
        assert!(old.valid_until >= t0 + 39 * SECOND, "{old:?}");
    }
    sim.crash(nodes[0]);
    let rest = &nodes[1..];
    // Until just before D1's deadline the survivors keep it (the delegator is gone).
    sim.run_for((t0 + 38 * SECOND) - sim.now());
    for n in rest {
        assert_eq!(
            planes(&sim, *n),
            vec![
                (p("2001:db8:100::/56"), true),
                (p("2001:db8:200::/56"), false)
            ]
        );
    }
    // Then each withdraws it by its own timer, D2 staying.
    wait_for_planes(&mut sim, rest, &[("2001:db8:200::/56", false)], 4 * SECOND);
    for n in rest {
        let table = sim.node(*n).unwrap().forwarding_table().clone();
        let gone = Ipv6Addr::from(0x2001_0db8_0100_0010_u128 << 64 | 2);
        assert!(table.routes.lookup(gone).is_none(), "mirror route left");
    }
    // The survivors pruned the dead delegator long before D2's deadline and still keep D2
    // until it (deprecated once its preferred lifetime is over).
    sim.run_for((t1 + 295 * SECOND) - sim.now());
    for n in rest {
        assert_eq!(planes(&sim, *n), vec![(p("2001:db8:200::/56"), false)]);
    }
    sim.run_for((t1 + 395 * SECOND) - sim.now());
    for n in rest {
        assert_eq!(planes(&sim, *n), vec![(p("2001:db8:200::/56"), true)]);
        assert!(
            !sim.node(*n)
                .unwrap()
                .known_nodes()
                .any(|(u, _)| u.origin == address(0))
        );
    }
    wait_for_planes(&mut sim, rest, &[], 10 * SECOND);
}

#[test]
fn the_preferred_lifetime_ends_in_deprecation_and_a_withdrawal_spreads() {
    let mut sim = Sim::new(3);
    let nodes = line(&mut sim, 3, &[]);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:100::/56", now, 5, 600)],
    );
    wait_for_planes(&mut sim, &nodes, &[("2001:db8:100::/56", false)], SECOND);
    sim.run_for((now + 4 * SECOND) - sim.now());
    wait_for_planes(&mut sim, &nodes, &[("2001:db8:100::/56", true)], 2 * SECOND);
    // The client reports the prefix expired or released: gone everywhere within a second.
    sim.with_node(nodes[0], |n, now| {
        n.withdraw_delegations(now, &[p("2001:db8:100::/56")])
    });
    wait_for_planes(&mut sim, &nodes, &[], SECOND);
}

#[test]
fn kind_2_from_a_node_global_delegated_does_not_name_is_refused() {
    let mut sim = Sim::new(4);
    // n2 believes it delegates; nobody else does.
    let nodes = line(&mut sim, 4, &[2]);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[2],
        vec![delegation("2001:db8:666::/56", now, 30, 40)],
    );
    sim.run_for(3 * SECOND);
    for n in [nodes[0], nodes[1], nodes[3]] {
        assert_eq!(planes(&sim, n), vec![]);
    }
    // Its neighbours refuse its updates (and so do not flood them on).
    for n in [nodes[1], nodes[3]] {
        let rejected = sim.node(n).unwrap().counters().updates_rejected.clone();
        assert!(
            rejected.get(&UpdateRejection::UnauthorizedContent).copied() >= Some(1),
            "{rejected:?}"
        );
    }
    // A node global.delegated does not name cannot delegate.
    delegate(
        &mut sim,
        nodes[1],
        vec![delegation("2001:db8:777::/56", now, 30, 40)],
    );
    sim.run_for(SECOND);
    assert_eq!(planes(&sim, nodes[1]), vec![]);
    // The real delegator is still heard.
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:100::/56", now, 30, 40)],
    );
    wait_for_planes(
        &mut sim,
        &[nodes[0], nodes[1], nodes[3]],
        &[("2001:db8:100::/56", false)],
        SECOND,
    );
}

#[test]
fn delegations_too_long_or_overlapping_the_subnet_are_ignored() {
    let mut sim = Sim::new(5);
    let nodes = line(&mut sim, 3, &[]);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![
            delegation("2001:db8:100::/60", now, 30, 40),
            delegation("fd00::/16", now, 30, 40),
            delegation("2001:db8:300::/48", now, 30, 40),
        ],
    );
    // Only the /48 fits (its first /56, `use` 0).
    wait_for_planes(&mut sim, &nodes, &[("2001:db8:300::/56", false)], SECOND);
}

#[test]
fn a_delegation_of_many_prefixes_gives_at_most_max_planes_the_longest_lived() {
    let mut sim = Sim::new(7);
    let nodes = line(&mut sim, 3, &[]);
    let now = sim.now();
    let prefix = |i: u64| format!("2001:db8:{:x}00::/56", 0x10 + i);
    let many: Vec<Delegation> = (0..40)
        .map(|i| delegation(&prefix(i), now, 300 + i, 600 + i))
        .collect();
    delegate(&mut sim, nodes[0], many);
    // The 16 longest-lived (24..40), on every node.
    let kept: Vec<String> = (24..40).map(prefix).collect();
    let want: Vec<(&str, bool)> = kept.iter().map(|s| (s.as_str(), false)).collect();
    assert_eq!(want.len(), connectopus_core::node::MAX_PLANES);
    wait_for_planes(&mut sim, &nodes, &want, SECOND);
}

#[test]
fn a_healed_partition_takes_the_newest_delegation() {
    let mut sim = Sim::new(6);
    let nodes = line(&mut sim, 4, &[]);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:100::/56", now, 600, 900)],
    );
    wait_for_planes(&mut sim, &nodes, &[("2001:db8:100::/56", false)], SECOND);
    sim.partition(&nodes[..2]);
    sim.run_for(5 * SECOND);
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:200::/56", now, 600, 900)],
    );
    let renumbered = [("2001:db8:100::/56", true), ("2001:db8:200::/56", false)];
    wait_for_planes(&mut sim, &nodes[..2], &renumbered, SECOND);
    // The far side, cut off past the dead interval, keeps the old plane.
    sim.run_for(70 * SECOND);
    for n in &nodes[2..] {
        assert_eq!(planes(&sim, *n), vec![(p("2001:db8:100::/56"), false)]);
    }
    // A renumbering on the near side while cut off: the newest wins after the heal.
    let now = sim.now();
    delegate(
        &mut sim,
        nodes[0],
        vec![delegation("2001:db8:300::/56", now, 600, 900)],
    );
    sim.heal();
    let newest = [
        ("2001:db8:100::/56", true),
        ("2001:db8:200::/56", true),
        ("2001:db8:300::/56", false),
    ];
    wait_for_planes(&mut sim, &nodes, &newest, 10 * SECOND);
}
