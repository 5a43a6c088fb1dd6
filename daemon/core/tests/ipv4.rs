//! IPv4 over the mesh in the simulator: routes to IPv4 addresses, TTL expiry, unreachable
//! destinations and fragmentation needed, with ICMPv4 errors from the node's IPv4 address.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use connectopus_core::forward::DropReason;
use connectopus_core::icmp4::header_checksum;
use connectopus_core::node::NodeConfig;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim};

const SECOND: Duration = Duration::from_secs(1);

fn v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i)
}

/// A line of `n` nodes, node i at fd00::(i+1) and 198.18.0.(i+1) unless `without_ipv4` names it.
fn line(sim: &mut Sim, n: usize, without_ipv4: &[usize]) -> Vec<NodeIdx> {
    let v: Vec<NodeIdx> = (0..n)
        .map(|i| {
            let address = Ipv6Addr::from(0xfd00_u128 << 112 | (i as u128 + 1));
            let mut config = NodeConfig::new(address, format!("n{i}"), 1, 100 + i as u64);
            if !without_ipv4.contains(&i) {
                config.address4 = Some(v4(i as u8 + 1));
            }
            sim.add_node_with(config)
        })
        .collect();
    for w in v.windows(2) {
        sim.connect(w[0], w[1], LinkParams::default());
    }
    assert!(
        sim.run_until_converged(Duration::from_millis(100), 5 * SECOND)
            .is_some()
    );
    // Convergence looks at node routes; let the prefix adverts settle too.
    sim.run_for(SECOND);
    v
}

/// A UDP packet with a valid IPv4 header and DF set.
fn udp4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, total: usize) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, ttl, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = header_checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.resize(total, 0x5a);
    p
}

fn source(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

#[test]
fn ipv4_crosses_the_middle_node_with_one_ttl_less() {
    let mut sim = Sim::new(40);
    let v = line(&mut sim, 3, &[]);
    sim.send_from_tun(v[0], udp4(v4(1), v4(3), 64, 100));
    sim.run_for(SECOND);
    let got = sim.take_tun_packets(v[2]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][8], 63, "one router in between");
    assert_eq!(
        u16::from_be_bytes([got[0][10], got[0][11]]),
        header_checksum(&got[0][..20])
    );
    assert_eq!(source(&got[0]), v4(1));
    // Names carry the IPv4 address; a node without one has none.
    let names = sim.node(v[0]).unwrap().names();
    assert_eq!(names["n2"].address4, Some(v4(3)));
    assert_eq!(names["n0"].address4, Some(v4(1)));
}

#[test]
fn ttl_expiry_in_transit_is_icmpv4_time_exceeded_from_the_middle_node() {
    let mut sim = Sim::new(41);
    let v = line(&mut sim, 3, &[]);
    // TTL 1 from the host: the first node does not decrement, the second expires it.
    sim.send_from_tun(v[0], udp4(v4(1), v4(3), 1, 100));
    sim.run_for(SECOND);
    assert!(sim.take_tun_packets(v[2]).is_empty());
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    assert_eq!(
        source(&back[0]),
        v4(2),
        "time exceeded comes from the middle node"
    );
    assert_eq!((back[0][20], back[0][21]), (11, 0));
}

#[test]
fn unreachable_and_fragmentation_needed_carry_icmpv4() {
    let mut sim = Sim::new(42);
    let v = line(&mut sim, 2, &[]);
    sim.send_from_tun(v[0], udp4(v4(1), Ipv4Addr::new(198, 19, 9, 9), 64, 100));
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    assert_eq!((back[0][20], back[0][21]), (3, 0), "net unreachable");
    assert_eq!(source(&back[0]), v4(1));

    let mtu = sim
        .node(v[0])
        .unwrap()
        .forwarding_table()
        .routes
        .iter()
        .find_map(|(_, t)| match t {
            connectopus_core::forward::RouteTarget::Link { mtu, .. } => Some(*mtu),
            _ => None,
        });
    let mtu = mtu.unwrap();
    sim.send_from_tun(v[0], udp4(v4(1), v4(2), 64, usize::from(mtu) + 1));
    let back = sim.take_tun_packets(v[0]);
    assert_eq!(back.len(), 1);
    assert_eq!((back[0][20], back[0][21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([back[0][26], back[0][27]]), mtu);
    sim.send_from_tun(v[0], udp4(v4(1), v4(2), 64, usize::from(mtu)));
    sim.run_for(SECOND);
    assert_eq!(sim.take_tun_packets(v[1]).len(), 1);
}

#[test]
fn a_node_without_ipv4_drops_ipv4_and_sends_no_icmpv4() {
    let mut sim = Sim::new(43);
    let v = line(&mut sim, 3, &[1]);
    // The middle node has no IPv4 address but still forwards IPv4 between the others.
    sim.send_from_tun(v[0], udp4(v4(1), v4(3), 64, 100));
    sim.run_for(SECOND);
    assert_eq!(sim.take_tun_packets(v[2]).len(), 1);
    // TTL expiry there: no source for an ICMPv4 error, so nothing comes back.
    sim.send_from_tun(v[0], udp4(v4(1), v4(3), 1, 100));
    sim.run_for(SECOND);
    assert!(sim.take_tun_packets(v[0]).is_empty());
    let drops = &sim.node(v[1]).unwrap().counters().drops;
    assert_eq!(drops.get(&DropReason::Malformed), Some(&1));
    let names = sim.node(v[0]).unwrap().names();
    assert_eq!(names["n1"].address4, None);
}
