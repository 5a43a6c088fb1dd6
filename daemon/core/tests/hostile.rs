//! Authenticated but hostile members, in the deterministic simulator: replayed hellos, routing
//! streams that try to make a node buffer without bound, config offers that try to make it
//! parse without end, and origins that try to grow its memory of pruned nodes.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::LinkId;
use connectopus_core::forward::RouteTarget;
use connectopus_core::identity::{Grant, NodeKey, TrustPolicy};
use connectopus_core::node::{Event, NodeConfig};
use connectopus_core::session::LinkInfo;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim, SimLinkIdx};
use connectopus_wire::{Cost, Hello, LinkMessage};

const SECOND: Duration = Duration::from_secs(1);

fn addr(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)
}

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

/// A keyed node `name` at `fd00::<n>` with key seed `n`, trusting `trust`.
fn keyed(name: &str, n: u8, trust: &TrustPolicy) -> NodeConfig {
    let mut c = NodeConfig::new(addr(u16::from(n)), name, 1, u64::from(n) * 7919);
    c.identity = Some(key(n));
    c.trust = Some(trust.clone());
    c
}

fn policy(members: &[(&str, u8)]) -> TrustPolicy {
    members.iter().fold(TrustPolicy::new(), |p, (name, n)| {
        p.with_grant(key(*n).public(), Grant::new(*name, addr(u16::from(*n))))
    })
}

fn route(sim: &Sim, at: NodeIdx, dst: Ipv6Addr) -> Option<RouteTarget> {
    sim.node(at)
        .unwrap()
        .forwarding_table()
        .routes
        .lookup(dst)
        .map(|(_, t)| *t)
}

fn hellos_rejected(sim: &Sim, at: NodeIdx, reason: &str) -> u64 {
    let counters = sim.node(at).unwrap().counters();
    counters.hellos_rejected.get(reason).copied().unwrap_or(0)
}

/// (link, established_at) of every established session of `at`.
fn established(sim: &Sim, at: NodeIdx) -> Vec<(LinkId, Ipv6Addr)> {
    sim.node(at)
        .unwrap()
        .sessions()
        .filter(|s| s.is_established())
        .map(|s| (s.link(), s.peer().unwrap().address))
        .collect()
}

fn parse_hello(bytes: &[u8]) -> Option<Hello> {
    let mut copy = bytes.to_vec();
    match LinkMessage::parse(&mut copy) {
        Ok(LinkMessage::Hello(h)) => Some(h),
        _ => None,
    }
}

/// Plain TCP has no channel binding. An attacker who recorded A's hellos to V (they cross the
/// wire in clear) connects to V itself and replays them, patching the echo field to V's new
/// session id. V's hello on that link carried a fresh challenge, which A never signed: refused,
/// and nothing about A moves.
#[test]
fn a_recorded_hello_replayed_on_plain_tcp_is_refused_and_no_route_moves() {
    let trust = policy(&[("a", 1), ("v", 2)]);
    let mut sim = Sim::new(5);
    let a = sim.add_node_with(keyed("a", 1, &trust));
    let v = sim.add_node_with(keyed("v", 2, &trust));
    // The tap must be in place before the link's first hellos: it is the first link.
    sim.tap(SimLinkIdx(0));
    sim.connect(a, v, LinkParams::default());
    assert!(
        sim.run_until_converged(Duration::from_millis(100), 10 * SECOND)
            .is_some()
    );
    sim.run_for(2 * SECOND);
    let recorded: Vec<Vec<u8>> = sim
        .take_tapped(SimLinkIdx(0))
        .into_iter()
        .filter(|(from, m)| *from == a && parse_hello(m).is_some())
        .map(|(_, m)| m)
        .collect();
    assert!(recorded.len() >= 2, "A's hellos were recorded");
    let before_sessions = established(&sim, v);
    let before_route = route(&sim, v, addr(1));
    assert_eq!(before_sessions.len(), 1);
    sim.take_events(v);

    // The attacker's own connection to V.
    let raw = sim.open_raw_link(v, LinkInfo::new(1452, Cost::DEFAULT, "attacker"));
    let v_hello = sim
        .take_raw(v, raw)
        .iter()
        .find_map(|m| parse_hello(m))
        .expect("V greets the new link");
    for hello in &recorded {
        let mut replay = hello.clone();
        // echo_session_id, offset 16: make it V's id on this link.
        replay[16..24].copy_from_slice(&v_hello.session_id.to_be_bytes());
        sim.send_raw(v, raw, replay);
        sim.run_for(SECOND / 10);
    }
    assert!(hellos_rejected(&sim, v, "bad_signature") >= 1);
    assert!(!sim.raw_link_open(v, raw), "V closed the attacker's link");
    let events = sim.take_events(v);
    assert!(
        !events.iter().any(|e| matches!(e, Event::SessionEstablished { .. }
            | Event::SessionClosed { link: _, peer: Some(_), .. })),
        "no session moved: {events:?}"
    );
    assert_eq!(established(&sim, v), before_sessions);
    assert_eq!(route(&sim, v, addr(1)), before_route);
    sim.run_for(5 * SECOND);
    assert_eq!(established(&sim, v), before_sessions);
    assert_eq!(route(&sim, v, addr(1)), before_route);
}
