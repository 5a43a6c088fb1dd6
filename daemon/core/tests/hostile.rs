//! Authenticated but hostile members, in the deterministic simulator: replayed hellos, routing
//! streams that try to make a node buffer without bound, config offers that try to make it
//! parse without end, and origins that try to grow its memory of pruned nodes.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::LinkId;
use connectopus_core::forward::RouteTarget;
use connectopus_core::identity::{self, Grant, NodeKey, TrustPolicy};
use connectopus_core::node::{Event, NodeConfig};
use connectopus_core::session::{CloseReason, LinkInfo};
use connectopus_core::sim::{LinkParams, NodeIdx, Sim, SimLinkIdx};
use connectopus_wire::{
    ConfigOffer, Cost, Hello, LinkMessage, LinkStateUpdate, Record, RecordKind, StreamSegment,
};

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
    match LinkMessage::parse(bytes) {
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
    replayed_hello_is_refused(false);
}

/// The same on a plaintext UDP link (`udp-dialer`/`udp-listener`): no channel binding either,
/// and a spoofed source address is all an attacker needs to open a link, so the hello's
/// signature over V's fresh nonce is the only proof of identity.
#[test]
fn a_recorded_hello_replayed_on_a_plain_udp_link_is_refused_and_no_route_moves() {
    replayed_hello_is_refused(true);
}

fn replayed_hello_is_refused(plain_udp: bool) {
    let trust = policy(&[("a", 1), ("v", 2)]);
    let mut sim = Sim::new(5);
    let a = sim.add_node_with(keyed("a", 1, &trust));
    let v = sim.add_node_with(keyed("v", 2, &trust));
    // The tap must be in place before the link's first hellos: it is the first link.
    sim.tap(SimLinkIdx(0));
    sim.connect(
        a,
        v,
        LinkParams {
            plain_udp,
            ..LinkParams::default()
        },
    );
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
    let mut info = LinkInfo::new(1452, Cost::DEFAULT, "attacker");
    info.plain_udp = plain_udp;
    let raw = sim.open_raw_link(v, info);
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
        !events.iter().any(|e| matches!(
            e,
            Event::SessionEstablished { .. }
                | Event::SessionClosed {
                    link: _,
                    peer: Some(_),
                    ..
                }
        )),
        "no session moved: {events:?}"
    );
    assert_eq!(established(&sim, v), before_sessions);
    assert_eq!(route(&sim, v, addr(1)), before_route);
    sim.run_for(5 * SECOND);
    assert_eq!(established(&sim, v), before_sessions);
    assert_eq!(route(&sim, v, addr(1)), before_route);
}

/// The test's end of a raw link to a node: a peer that completes the hello exchange (the node
/// has no trust policy, so any hello is welcome) and then speaks the routing stream by hand.
struct HostilePeer {
    node: NodeIdx,
    link: LinkId,
    /// Our hello session id; the node's segments to us carry its low 32 bits as `conn`, and it
    /// numbers its segments from there.
    session_id: u64,
    /// The node's hello session id; our segments carry its low 32 bits, numbered from there.
    node_session_id: u64,
}

impl HostilePeer {
    fn connect(sim: &mut Sim, node: NodeIdx) -> Self {
        let link = sim.open_raw_link(node, LinkInfo::new(1452, Cost::DEFAULT, "hostile"));
        let hello = sim
            .take_raw(node, link)
            .iter()
            .find_map(|m| parse_hello(m))
            .expect("the node greets the link");
        let peer = Self {
            node,
            link,
            session_id: 0x5eed_0000_0000_0001,
            node_session_id: hello.session_id,
        };
        let ours = Hello {
            capabilities: 0,
            session_id: peer.session_id,
            echo_session_id: peer.node_session_id,
            epoch: 1,
            address: addr(0x99),
            name: "hostile".into(),
            extensions: Vec::new(),
        };
        sim.send_raw(node, link, ours.encode());
        assert!(
            sim.node(node)
                .unwrap()
                .sessions()
                .any(|s| s.link() == link && s.is_established()),
            "the hostile peer got its session"
        );
        peer
    }

    /// Sends a stream segment to the node.
    fn segment(&self, sim: &mut Sim, seq: u32, ack: u32, window: u16, payload: &[u8]) {
        let segment = StreamSegment {
            conn: self.node_session_id as u32,
            seq,
            ack,
            sack: 0,
            window,
            payload,
        };
        sim.send_raw(self.node, self.link, segment.encode());
    }

    /// The first sequence number of the node's segments, and of ours.
    fn first_seqs(&self) -> (u32, u32) {
        (self.session_id as u32, self.node_session_id as u32)
    }

    /// Answers keepalives and acknowledges every segment the node sent (in order: the
    /// simulated link neither loses nor reorders), with an open window; `next` is our next
    /// sequence number and `acked` the node's next one.
    fn keep_alive(&self, sim: &mut Sim, next: u32, acked: &mut u32) {
        for (seq, len) in self.take_segments(sim) {
            if len > 0 && seq == *acked {
                *acked = acked.wrapping_add(1);
            }
            if sim.raw_link_open(self.node, self.link) {
                self.segment(sim, next, *acked, 256, &[]);
            }
        }
    }

    /// Answers the node's keepalives; returns the stream segments it sent (seq, payload length).
    fn take_segments(&self, sim: &mut Sim) -> Vec<(u32, usize)> {
        let mut segments = Vec::new();
        for m in sim.take_raw(self.node, self.link) {
            match LinkMessage::parse(&m) {
                Ok(LinkMessage::Keepalive(k)) => {
                    sim.send_raw(self.node, self.link, k.encode_reply());
                }
                Ok(LinkMessage::Segment(s)) => segments.push((s.seq, s.payload.len())),
                _ => {}
            }
        }
        segments
    }
}

fn closed_because(events: &[Event], link: LinkId) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::SessionClosed {
            link: l, reason, ..
        } if *l == link => Some(*reason),
        _ => None,
    })
}

/// A peer sends segments that never become in order (the first one is always missing), as
/// large as a TCP frame allows, across and beyond the window: the node keeps at most its
/// window's worth of bytes (256 segments of its own 1200-byte size), not 256 frames of 60 KB.
#[test]
fn out_of_order_segments_beyond_the_window_stay_bounded() {
    let mut sim = Sim::new(7);
    let v = sim.add_node("v");
    let peer = HostilePeer::connect(&mut sim, v);
    let (node_first, our_first) = peer.first_seqs();
    let big = vec![0xab; 60_000];
    let cap = 256 * 1200;
    let mut most = 0;
    for k in 1..1000u32 {
        peer.segment(&mut sim, our_first.wrapping_add(k), node_first, 256, &big);
        most = most.max(sim.node(v).unwrap().stream_memory_in_use());
    }
    sim.run_for(SECOND);
    let session = sim
        .node(v)
        .unwrap()
        .sessions()
        .find(|s| s.link() == peer.link)
        .expect("the session stays: holes are legal, only their size is bounded");
    assert!(
        session.buffered_bytes() <= cap + 4096,
        "{}",
        session.buffered_bytes()
    );
    assert!(most <= cap + 4096, "peak {most} bytes");
}

/// A peer acknowledges the node's first segment with a zero window and never opens it,
/// answering every window probe (so it looks alive) and every keepalive. The node's buffered
/// bytes stay small, and it fails the session after the persist timeout (30 s) instead of
/// holding it forever.
#[test]
fn a_peer_that_holds_a_zero_window_is_failed_after_the_persist_timeout() {
    let mut sim = Sim::new(8);
    let v = sim.add_node("v");
    let peer = HostilePeer::connect(&mut sim, v);
    let (node_first, our_first) = peer.first_seqs();
    sim.take_events(v);
    let mut acked = node_first;
    let mut most = 0;
    let mut closed = None;
    let start = sim.now();
    while sim.now() - start < 90 * SECOND {
        sim.run_for(SECOND / 10);
        for (seq, len) in peer.take_segments(&mut sim) {
            if len > 0 && acked == node_first && seq == node_first {
                acked = node_first.wrapping_add(1);
            }
            // Every answer: what was acknowledged before, and a closed window.
            if sim.raw_link_open(v, peer.link) {
                peer.segment(&mut sim, our_first, acked, 0, &[]);
            }
        }
        most = most.max(sim.node(v).unwrap().stream_memory_in_use());
        closed = closed.or(closed_because(&sim.take_events(v), peer.link));
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(
        acked,
        node_first.wrapping_add(1),
        "the first segment was acknowledged"
    );
    assert_eq!(closed, Some(CloseReason::WindowStalled));
    // Periodic updates waited (one every 10 s), then the persist timeout ran out.
    let took = sim.now() - start;
    assert!(took >= 30 * SECOND && took <= 50 * SECOND, "{took:?}");
    assert!(most < 64 * 1024, "peak {most} bytes");
    assert!(!sim.raw_link_open(v, peer.link));
}

/// Three peers each park a window's worth of out-of-order bytes (about 300 KB): with a 500 KB
/// budget for all streams together, the node closes sessions, the largest first, so it never
/// holds more than the budget after an input.
#[test]
fn all_sessions_together_stay_within_the_memory_budget() {
    let mut sim = Sim::new(9);
    let mut config = NodeConfig::new(addr(1), "v", 1, 99);
    config.stream_memory_budget = 500_000;
    let v = sim.add_node_with(config);
    let peers: Vec<HostilePeer> = (0..3).map(|_| HostilePeer::connect(&mut sim, v)).collect();
    sim.take_events(v);
    let chunk = vec![0xcd; 1200];
    for peer in &peers {
        let (node_first, our_first) = peer.first_seqs();
        for k in 1..256u32 {
            peer.segment(&mut sim, our_first.wrapping_add(k), node_first, 256, &chunk);
            let in_use = sim.node(v).unwrap().stream_memory_in_use();
            assert!(in_use <= 500_000, "{in_use} bytes held");
        }
    }
    let closed: Vec<CloseReason> = sim
        .take_events(v)
        .iter()
        .filter_map(|e| match e {
            Event::SessionClosed { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    // The first two each grew largest in turn once the next one pushed the total over.
    assert_eq!(closed, vec![CloseReason::OverBudget; 2]);
    assert!(sim.raw_link_open(v, peers[2].link));
}

fn offer_record(version: u64, config: &[u8], signature: &[u8]) -> Vec<u8> {
    let body = ConfigOffer {
        version,
        config,
        signature,
    }
    .encode()
    .unwrap();
    Record {
        kind: RecordKind::ConfigOffer,
        body,
    }
    .encode()
}

fn offered(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ConfigOffered { version, .. } => Some(*version),
            _ => None,
        })
        .collect()
}

/// A member sends 100 configuration offers with a forged high version. Each offer the node
/// hands its driver costs a signature check and a parse of up to 64 MiB on the dataplane
/// thread, so each `ConfigOffered` event is one parse: the node emits none for its own running
/// configuration under a forged version, one for 100 copies of the same bytes, and for 100
/// different ones one at once and then one per `offer_interval` (5 s), the latest.
#[test]
fn a_hundred_forged_config_offers_cause_at_most_one_parse() {
    let running = b"global: {version: 3}\n".to_vec();
    let mut sim = Sim::new(10);
    let v = sim.add_node("v");
    sim.with_node(v, |node, now| node.set_config(now, 3, &running, b"sig"));
    let peer = HostilePeer::connect(&mut sim, v);
    let (node_first, our_first) = peer.first_seqs();
    let mut next = our_first;
    let mut acked = node_first;
    sim.take_events(v);
    let send = |sim: &mut Sim, next: &mut u32, acked: u32, record: Vec<u8>| {
        peer.segment(sim, *next, acked, 256, &record);
        *next = next.wrapping_add(1);
    };

    // 1. The running configuration, replayed under a forged version: never a parse.
    for _ in 0..100 {
        send(
            &mut sim,
            &mut next,
            acked,
            offer_record(u64::MAX, &running, b"sig"),
        );
    }
    assert_eq!(offered(&sim.take_events(v)), Vec::<u64>::new());

    // 2. The same forged bytes 100 times: one parse, then never again (not even after the
    // interval).
    for _ in 0..100 {
        send(
            &mut sim,
            &mut next,
            acked,
            offer_record(1000, &[b'x'; 5000], b"forged"),
        );
    }
    for _ in 0..200 {
        sim.run_for(SECOND / 10);
        peer.keep_alive(&mut sim, next, &mut acked);
    }
    assert_eq!(offered(&sim.take_events(v)), vec![1000]);

    // 3. 100 different forged offers within a second: one parse now; the rest wait in one
    // slot, and only the latest is handed over when the interval ends.
    for i in 0..100u64 {
        let config = format!("forged {i} {}", "y".repeat(4000));
        send(
            &mut sim,
            &mut next,
            acked,
            offer_record(2000 + i, config.as_bytes(), b"forged"),
        );
    }
    assert_eq!(offered(&sim.take_events(v)), vec![2000]);
    for _ in 0..300 {
        sim.run_for(SECOND / 10);
        peer.keep_alive(&mut sim, next, &mut acked);
    }
    assert_eq!(offered(&sim.take_events(v)), vec![2099]);
    assert!(sim.raw_link_open(v, peer.link));
    let counters = &sim.node(v).unwrap().counters().config_offers;
    assert_eq!(counters.get("same_as_running"), Some(&100));
    assert_eq!(counters.get("handed_to_driver"), Some(&3));
}

/// A node without a trust policy takes any unsigned update: a peer invents 1000 origins. Once
/// they die (60 s without updates) the node remembers at most `max_pruned_origins` (here 100)
/// of them, and forgets those after `forget_pruned_after` (600 s): the map shrinks again.
#[test]
fn the_memory_of_pruned_origins_is_bounded_and_shrinks() {
    let mut sim = Sim::new(11);
    let mut config = NodeConfig::new(addr(1), "v", 1, 77);
    config.max_pruned_origins = 100;
    let v = sim.add_node_with(config);
    let peer = HostilePeer::connect(&mut sim, v);
    let (node_first, our_first) = peer.first_seqs();
    let mut stream = Vec::new();
    for i in 0..1000u32 {
        let update = LinkStateUpdate {
            origin: Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0001_0000_0000u128 + u128::from(i)),
            epoch: 1,
            sequence: 1,
            name: format!("ghost{i}"),
            config_version: 0,
            adjacencies: Vec::new(),
            prefixes: Vec::new(),
            names: Vec::new(),
            names4: Vec::new(),
            extensions: Vec::new(),
        };
        Record {
            kind: RecordKind::LinkStateUpdate,
            body: identity::sign_update(None, &update.encode_body()),
        }
        .encode_into(&mut stream);
    }
    for (k, chunk) in stream.chunks(1200).enumerate() {
        peer.segment(
            &mut sim,
            our_first.wrapping_add(k as u32),
            node_first,
            256,
            chunk,
        );
    }
    assert_eq!(sim.node(v).unwrap().known_nodes().count(), 1000);
    sim.run_for(70 * SECOND);
    assert_eq!(sim.node(v).unwrap().known_nodes().count(), 0);
    assert_eq!(sim.node(v).unwrap().pruned_origins(), 100);
    sim.run_for(600 * SECOND);
    assert_eq!(sim.node(v).unwrap().pruned_origins(), 0);
}
