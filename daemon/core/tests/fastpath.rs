//! The fast path's entries follow the routing table in the same turn: routes through a
//! plaintext UDP link whose peer decapsulates in eBPF, and this node's own prefixes; a route
//! change, a link going down and a peer restarting update them before the call returns.
//!
//! Nodes are driven by hand (not through the simulator) so that one peer can restart on the
//! same link, as a UDP listener does when its dialer keeps sending from the same port.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use connectopus_core::forward::RouteTarget;
use connectopus_core::node::{Command, FastpathEntry, FastpathTarget, Node, NodeConfig};
use connectopus_core::session::LinkInfo;
use connectopus_core::{LinkId, Time};
use connectopus_wire::{Cost, Hello, LinkMessage, Prefix};

fn addr(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)
}

/// A node's end of a wire: (node index, its link id).
type End = (usize, LinkId);

/// A few nodes and the wires between them, with a virtual clock.
struct Mesh {
    now: Time,
    nodes: Vec<Node>,
    configs: Vec<NodeConfig>,
    wires: Vec<(End, End, bool)>,
    /// The entries each node issued last, and how many times it issued them.
    issued: Vec<(Option<Arc<[FastpathEntry]>>, usize)>,
    /// Every hello each node received, with its capability bits.
    capabilities_seen: Vec<Vec<u32>>,
    next_link: u64,
}

impl Mesh {
    fn new(fastpath: &[bool]) -> Self {
        let configs: Vec<NodeConfig> = fastpath
            .iter()
            .enumerate()
            .map(|(i, on)| {
                let mut c = NodeConfig::new(addr(i as u16 + 1), format!("n{i}"), 1, i as u64 + 11);
                c.fastpath = *on;
                c
            })
            .collect();
        let now = Time::ZERO;
        let nodes = configs.iter().map(|c| Node::new(c.clone(), now)).collect();
        Self {
            now,
            nodes,
            issued: vec![(None, 0); configs.len()],
            capabilities_seen: vec![Vec::new(); configs.len()],
            configs,
            wires: Vec::new(),
            next_link: 1,
        }
    }

    /// Connects `a` and `b`; returns the wire index.
    fn connect(&mut self, a: usize, b: usize, plain_udp: bool, cost: f64) -> usize {
        let (la, lb) = (LinkId(self.next_link), LinkId(self.next_link + 1));
        self.next_link += 2;
        for (n, l) in [(a, la), (b, lb)] {
            let mut info = LinkInfo::new(1400, Cost::from_f64(cost), "test");
            info.plain_udp = plain_udp;
            self.nodes[n].handle_link_up(self.now, l, info);
        }
        self.wires.push(((a, la), (b, lb), true));
        self.pump();
        self.wires.len() - 1
    }

    fn link(&self, wire: usize, node: usize) -> LinkId {
        let (a, b, _) = self.wires[wire];
        if a.0 == node { a.1 } else { b.1 }
    }

    /// Takes every node's commands, noting the fast-path entries it issued.
    fn collect(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while let Some(c) = node.poll_command() {
                if let Command::SetFastpathRoutes(entries) = c {
                    self.issued[i].0 = Some(entries);
                    self.issued[i].1 += 1;
                }
            }
        }
    }

    /// Delivers one message at a time until none is left; checks after every call that what a
    /// node issued matches its table.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    moved = true;
                    let Some(&(a, b, up)) = self
                        .wires
                        .iter()
                        .find(|(a, b, _)| *a == (i, t.link) || *b == (i, t.link))
                    else {
                        continue;
                    };
                    if !up {
                        continue;
                    }
                    let (to, link) = if a == (i, t.link) { b } else { a };
                    let mut payload = t.payload;
                    if let Ok(LinkMessage::Hello(h)) = LinkMessage::parse(&payload) {
                        self.capabilities_seen[to].push(h.capabilities);
                    }
                    let now = self.now;
                    self.nodes[to].handle_link_message(now, link, &mut payload);
                    self.collect();
                    self.check(to);
                }
            }
            if !moved {
                break;
            }
        }
        self.collect();
    }

    /// Runs the clock for `d` in 10 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                let now = self.now;
                self.nodes[i].handle_timeout(now);
                self.collect();
                self.check(i);
            }
            self.pump();
        }
    }

    /// The entries node `i` must have issued for its current table and sessions.
    fn expected(&self, i: usize) -> Vec<FastpathEntry> {
        let node = &self.nodes[i];
        if !self.configs[i].fastpath {
            return Vec::new();
        }
        let mut want: Vec<FastpathEntry> = node
            .forwarding_table()
            .routes
            .iter()
            .filter_map(|(prefix, t)| match *t {
                RouteTarget::Local => Some(FastpathEntry {
                    prefix,
                    target: FastpathTarget::Local,
                }),
                RouteTarget::Link { link, mtu } => node
                    .sessions()
                    .find(|s| s.link() == link)
                    .filter(|s| s.info().plain_udp && s.peer_decapsulates_in_ebpf())
                    .map(|_| FastpathEntry {
                        prefix,
                        target: FastpathTarget::Link { link, mtu },
                    }),
            })
            .collect();
        want.sort();
        want
    }

    /// What node `i` issued last (nothing issued: no entries).
    fn entries(&self, i: usize) -> Vec<FastpathEntry> {
        self.issued[i].0.as_deref().unwrap_or_default().to_vec()
    }

    fn check(&self, i: usize) {
        assert_eq!(
            self.entries(i),
            self.expected(i),
            "node {i} issued entries that do not match its table at {:?}",
            self.now
        );
        assert_eq!(**self.nodes[i].fastpath_entries(), *self.entries(i));
    }

    /// The link node `i`'s entry for node `j`'s address sends on, if it has one.
    fn entry_to(&self, i: usize, j: usize) -> Option<LinkId> {
        let host = Prefix::host(addr(j as u16 + 1));
        self.entries(i).iter().find_map(|e| match e.target {
            FastpathTarget::Link { link, .. } if e.prefix == host => Some(link),
            _ => None,
        })
    }

    fn converge(&mut self) {
        self.run(Duration::from_secs(2));
    }
}

#[test]
fn a_plain_udp_link_to_a_decapsulating_peer_gets_entries_and_own_address_is_local() {
    let mut m = Mesh::new(&[true, true]);
    let w = m.connect(0, 1, true, 1.0);
    m.converge();
    assert_eq!(m.entry_to(0, 1), Some(m.link(w, 0)));
    assert_eq!(m.entry_to(1, 0), Some(m.link(w, 1)));
    let own = FastpathEntry {
        prefix: Prefix::host(addr(1)),
        target: FastpathTarget::Local,
    };
    assert!(m.entries(0).contains(&own), "{:?}", m.entries(0));
    // Both hellos carried the capability.
    assert!(
        m.capabilities_seen[0]
            .iter()
            .all(|c| c & Hello::CAP_EBPF_DECAP != 0)
    );
}

#[test]
fn a_link_without_the_capability_never_gets_an_entry() {
    // Node 1 has no fast path: its hellos do not say it decapsulates.
    let mut m = Mesh::new(&[true, false, true]);
    m.connect(0, 1, true, 1.0);
    // Nodes 0 and 2 both have it, but their link is not a plaintext UDP link (DTLS, TCP).
    m.connect(0, 2, false, 1.0);
    m.converge();
    assert!(
        m.capabilities_seen[0]
            .iter()
            .all(|c| c & Hello::CAP_EBPF_DECAP == 0),
        "neither a node without the fast path nor a non-UDP link advertises it"
    );
    assert_eq!(m.entry_to(0, 1), None);
    assert_eq!(m.entry_to(0, 2), None);
    // Node 1 issues nothing at all; node 0 only its own address.
    assert_eq!(m.issued[1].1, 0);
    assert!(
        m.entries(0)
            .iter()
            .all(|e| e.target == FastpathTarget::Local)
    );
    m.run(Duration::from_secs(5));
    assert_eq!(m.entry_to(0, 1), None);
}

#[test]
fn a_route_change_moves_the_entry_in_the_same_turn() {
    // 0 reaches 2 directly (cost 1) or through 1 (cost 1 + 1).
    let mut m = Mesh::new(&[true, true, true]);
    let direct = m.connect(0, 2, true, 1.0);
    let via = m.connect(0, 1, true, 1.0);
    m.connect(1, 2, true, 1.0);
    m.converge();
    assert_eq!(m.entry_to(0, 2), Some(m.link(direct, 0)));
    // The direct link becomes expensive: the route, and with it the entry, moves to node 1
    // (`check` asserts after every call that the entries never lag the table).
    let now = m.now;
    let link = m.link(direct, 0);
    m.nodes[0].set_link_cost(now, link, Cost::from_f64(10.0));
    let (_, before) = m.issued[0];
    m.converge();
    assert_eq!(m.entry_to(0, 2), Some(m.link(via, 0)));
    assert!(m.issued[0].1 > before, "new entries were issued");
}

#[test]
fn a_link_going_down_removes_its_entries_before_the_call_returns() {
    let mut m = Mesh::new(&[true, true]);
    let w = m.connect(0, 1, true, 1.0);
    m.converge();
    assert_eq!(m.entry_to(0, 1), Some(m.link(w, 0)));
    m.wires[w].2 = false;
    let (now, link) = (m.now, m.link(w, 0));
    m.nodes[0].handle_link_down(now, link);
    m.collect();
    assert_eq!(m.entry_to(0, 1), None, "gone in the same turn");
    m.check(0);
}

#[test]
fn a_peer_restart_updates_the_entries() {
    let mut m = Mesh::new(&[true, true]);
    let w = m.connect(0, 1, true, 1.0);
    m.converge();
    let link0 = m.link(w, 0);
    assert_eq!(m.entry_to(0, 1), Some(link0));

    // Node 1 restarts (higher epoch, new session id) behind the same link, as a listener does
    // when its dialer keeps sending from the same address: first without its fast path.
    let restart = |m: &mut Mesh, fastpath: bool| {
        m.configs[1].epoch += 1;
        m.configs[1].seed += 100;
        m.configs[1].fastpath = fastpath;
        m.nodes[1] = Node::new(m.configs[1].clone(), m.now);
        m.issued[1] = (None, 0);
        let mut info = LinkInfo::new(1400, Cost::DEFAULT, "test");
        info.plain_udp = true;
        let (now, link1) = (m.now, m.link(w, 1));
        m.nodes[1].handle_link_up(now, link1, info);
        // Its first hello reaches node 0, which drops the entry at once: the session is back to
        // its handshake (`pump` checks after every message).
        let hello = m.nodes[1].poll_transmit().unwrap();
        let mut payload = hello.payload;
        m.nodes[0].handle_link_message(now, link0, &mut payload);
        m.collect();
        assert_eq!(
            m.entry_to(0, 1),
            None,
            "entry removed in the restart's turn"
        );
        m.check(0);
        m.converge();
    };
    restart(&mut m, false);
    assert_eq!(
        m.entry_to(0, 1),
        None,
        "the new instance does not decapsulate"
    );
    assert!(
        m.nodes[0]
            .sessions()
            .any(|s| s.link() == link0 && s.is_established())
    );
    // Again, with its fast path on: the entry comes back.
    restart(&mut m, true);
    assert_eq!(m.entry_to(0, 1), Some(link0));
}

#[test]
fn switching_the_fast_path_off_clears_every_entry() {
    let mut m = Mesh::new(&[true, true]);
    m.connect(0, 1, true, 1.0);
    m.converge();
    assert!(!m.entries(0).is_empty());
    let now = m.now;
    m.configs[0].fastpath = false;
    m.nodes[0].set_fastpath(now, false);
    m.collect();
    assert!(m.entries(0).is_empty());
    m.check(0);
}
