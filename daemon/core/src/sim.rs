//! A deterministic simulator that runs many [`Node`]s over simulated links.
//!
//! Time is virtual and every random choice comes from one seeded generator, so a run is
//! exactly reproducible. Links have latency, jitter (which reorders messages), loss,
//! duplication and an MTU. The simulator plays the drivers' part: it delivers link messages,
//! runs timers, closes transports the nodes ask to close and re-dials them (like a dialer
//! backend), and lets tests cut links, partition the mesh, crash nodes and restart them with a
//! new epoch.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv6Addr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use connectopus_wire::Cost;

use crate::LinkId;
use crate::forward::RouteTarget;
use crate::node::{Command, Event, Node, NodeConfig};
use crate::session::LinkInfo;
use crate::time::Time;

mod leases;
mod raw;

pub use leases::SIM_UNIX_MS_AT_ZERO;

/// Index of a simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIdx(pub usize);

/// Index of a simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimLinkIdx(pub usize);

/// Properties of a simulated link.
#[derive(Debug, Clone, Copy)]
pub struct LinkParams {
    /// One-way delay.
    pub latency: Duration,
    /// Extra random delay, uniform in `[0, jitter)`; reorders messages.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Largest message the link carries; larger ones are dropped.
    pub mtu: u16,
    /// Cost the first node assigns to the link.
    pub cost_ab: Cost,
    /// Cost the second node assigns to the link.
    pub cost_ba: Cost,
    /// Channel binding (exporter value) the first node's end reports.
    pub channel_binding_a: Option<[u8; 32]>,
    /// Channel binding the second node's end reports. Equal to `channel_binding_a` for one
    /// (D)TLS session; different values model a relay that bridges two separate sessions.
    pub channel_binding_b: Option<[u8; 32]>,
    /// Both ends are plaintext UDP links ([`LinkInfo::plain_udp`]).
    pub plain_udp: bool,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            mtu: 1452,
            cost_ab: Cost::DEFAULT,
            cost_ba: Cost::DEFAULT,
            channel_binding_a: None,
            channel_binding_b: None,
            plain_udp: false,
        }
    }
}

impl LinkParams {
    /// Returns the parameters with both costs set to `cost`.
    pub fn with_cost(mut self, cost: f64) -> Self {
        self.cost_ab = Cost::from_f64(cost);
        self.cost_ba = Cost::from_f64(cost);
        self
    }

    /// Returns the parameters with both ends reporting the channel binding `binding`.
    pub fn with_channel_binding(mut self, binding: [u8; 32]) -> Self {
        self.channel_binding_a = Some(binding);
        self.channel_binding_b = Some(binding);
        self
    }
}

#[derive(Debug)]
struct SimNode {
    config: NodeConfig,
    node: Option<Node>,
    /// The node's open transports, mapped to simulated links.
    links: BTreeMap<LinkId, SimLinkIdx>,
    next_link_id: u64,
    wakeup: Option<Time>,
    tun_out: Vec<Vec<u8>>,
    events: Vec<Event>,
    /// The [`Command::ApplyConfig`]s the node issued.
    applied: Vec<ConfigApplied>,
    /// Its disk and address changes (see the `leases` module).
    leases: leases::NodeLeases,
}

/// A node applied a proposed configuration ([`Command::ApplyConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApplied {
    /// When.
    pub at: Time,
    /// The version.
    pub version: u64,
    /// Neighbours that had not acknowledged its offer (the wait timed out).
    pub unacknowledged: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transport {
    a_link: LinkId,
    b_link: LinkId,
}

#[derive(Debug)]
struct SimLink {
    a: NodeIdx,
    b: NodeIdx,
    params: LinkParams,
    /// Messages are silently dropped while cut.
    cut: bool,
    transport: Option<Transport>,
    redial_at: Option<Time>,
    /// The peer name the first node expects (it dials with `peer_node`).
    a_expects: Option<String>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at: Reverse<Time>,
    seq: Reverse<u64>,
    to: NodeIdx,
    link: LinkId,
    bytes: Vec<u8>,
}

/// Counters of the whole simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to links.
    pub messages_sent: u64,
    /// Messages lost to simulated loss, cuts or crashed receivers.
    pub messages_lost: u64,
    /// Messages dropped for exceeding the link MTU.
    pub messages_too_big: u64,
}

/// Why a route could not be traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceError {
    /// A node on the way has no route.
    NoRoute {
        /// Where the trace stopped.
        at: NodeIdx,
    },
    /// The path revisits a node.
    Loop {
        /// The path so far.
        path: Vec<NodeIdx>,
    },
    /// A node on the way is down, or a link it points at is not connected.
    Broken {
        /// Where the trace stopped.
        at: NodeIdx,
    },
}

/// The simulated mesh. See the module documentation.
#[derive(Debug)]
pub struct Sim {
    now: Time,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    links: Vec<SimLink>,
    queue: BinaryHeap<Delivery>,
    wakeups: BinaryHeap<Reverse<(Time, usize)>>,
    seq: u64,
    redial_delay: Duration,
    stats: SimStats,
    /// Raw links to the test and wiretaps (see the `raw` module).
    raw: raw::RawLinks,
    /// Lease tables being written (see the `leases` module).
    disks: leases::Disks,
}

impl Sim {
    /// Creates an empty simulation whose randomness comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Time::ZERO,
            rng: SmallRng::seed_from_u64(seed),
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BinaryHeap::new(),
            wakeups: BinaryHeap::new(),
            seq: 0,
            redial_delay: Duration::from_secs(1),
            stats: SimStats::default(),
            raw: raw::RawLinks::default(),
            disks: leases::Disks::default(),
        }
    }

    /// Returns the current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Returns the simulation counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Returns the number of nodes ever added.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Adds and starts a node with default settings; its address is `fd00::<index+1>`.
    pub fn add_node(&mut self, name: &str) -> NodeIdx {
        let idx = self.nodes.len();
        let address = Ipv6Addr::from(0xfd00_u128 << 112 | (idx as u128 + 1));
        let seed = self.rng.random::<u64>();
        self.add_node_with(NodeConfig::new(address, name, 1, seed))
    }

    /// Adds and starts a node with the given configuration.
    pub fn add_node_with(&mut self, config: NodeConfig) -> NodeIdx {
        let idx = NodeIdx(self.nodes.len());
        let node = Node::new(config.clone(), self.now);
        self.nodes.push(SimNode {
            config,
            node: Some(node),
            links: BTreeMap::new(),
            next_link_id: 1,
            wakeup: None,
            tun_out: Vec::new(),
            events: Vec::new(),
            applied: Vec::new(),
            leases: leases::NodeLeases::default(),
        });
        self.drain(idx);
        idx
    }

    /// Returns a node, or `None` while it is crashed.
    pub fn node(&self, idx: NodeIdx) -> Option<&Node> {
        self.nodes.get(idx.0).and_then(|n| n.node.as_ref())
    }

    /// Returns a node's current address (`::` while an ephemeral node holds none; the
    /// configured one while a node is crashed).
    pub fn address(&self, idx: NodeIdx) -> Ipv6Addr {
        let sim_node = &self.nodes[idx.0];
        leases::current_address(sim_node.node.as_ref(), sim_node.config.address)
    }

    /// Connects two nodes with a new link and brings its transport up.
    pub fn connect(&mut self, a: NodeIdx, b: NodeIdx, params: LinkParams) -> SimLinkIdx {
        self.connect_expecting(a, b, params, None)
    }

    /// Connects two nodes like [`Sim::connect`], with `a` as a dialer that expects the node
    /// named `a_expects` at the other end ([`LinkInfo::expected_peer`]).
    pub fn connect_expecting(
        &mut self,
        a: NodeIdx,
        b: NodeIdx,
        params: LinkParams,
        a_expects: Option<&str>,
    ) -> SimLinkIdx {
        let idx = SimLinkIdx(self.links.len());
        self.links.push(SimLink {
            a,
            b,
            params,
            cut: false,
            transport: None,
            redial_at: None,
            a_expects: a_expects.map(str::to_owned),
        });
        self.bring_up(idx);
        idx
    }

    /// Silently drops every message on the link until [`Sim::restore`]; the nodes notice only
    /// through their timers.
    pub fn cut(&mut self, link: SimLinkIdx) {
        self.links[link.0].cut = true;
    }

    /// Lets messages through a cut link again.
    pub fn restore(&mut self, link: SimLinkIdx) {
        self.links[link.0].cut = false;
    }

    /// Cuts every link between a node in `side` and a node outside it.
    pub fn partition(&mut self, side: &[NodeIdx]) {
        for link in &mut self.links {
            if side.contains(&link.a) != side.contains(&link.b) {
                link.cut = true;
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&mut self) {
        for link in &mut self.links {
            link.cut = false;
        }
    }

    /// Stops a node abruptly: no goodbyes; its peers find out through their timers.
    pub fn crash(&mut self, idx: NodeIdx) {
        self.lease_crash(idx);
        let node = &mut self.nodes[idx.0];
        node.node = None;
        node.links.clear();
        node.wakeup = None;
        for link in &mut self.links {
            if link.a == idx || link.b == idx {
                // The peer's end stays open (it does not know yet); no redial until restart.
                link.transport = None;
                link.redial_at = None;
            }
        }
    }

    /// Starts a crashed node again with a higher epoch, and re-dials its links.
    pub fn restart(&mut self, idx: NodeIdx) {
        self.restart_with(idx, false);
    }

    /// Restarts a node; an issuer starts from its disk unless `keep_start` (see the `leases`
    /// module).
    fn restart_with(&mut self, idx: NodeIdx, keep_start: bool) {
        let sim_node = &mut self.nodes[idx.0];
        sim_node.config.epoch += 1;
        sim_node.config.seed = sim_node.config.seed.wrapping_add(1);
        self.prepare_restart(idx, keep_start);
        let sim_node = &mut self.nodes[idx.0];
        sim_node.node = Some(Node::new(sim_node.config.clone(), self.now));
        self.drain(idx);
        let mine: Vec<SimLinkIdx> = (0..self.links.len())
            .map(SimLinkIdx)
            .filter(|l| self.links[l.0].a == idx || self.links[l.0].b == idx)
            .collect();
        for link in mine {
            self.bring_up(link);
        }
    }

    /// Hands a packet to a node as if its TUN device produced it.
    pub fn send_from_tun(&mut self, idx: NodeIdx, mut packet: Vec<u8>) {
        let now = self.now;
        if let Some(node) = self.nodes[idx.0].node.as_mut() {
            node.handle_tun_packet(now, &mut packet);
        }
        self.drain(idx);
    }

    /// Takes the packets a node wrote to its TUN device so far.
    pub fn take_tun_packets(&mut self, idx: NodeIdx) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.nodes[idx.0].tun_out)
    }

    /// Takes the events a node reported so far.
    pub fn take_events(&mut self, idx: NodeIdx) -> Vec<Event> {
        std::mem::take(&mut self.nodes[idx.0].events)
    }

    /// Takes the configurations a node applied so far (after [`Node::propose_config`]).
    pub fn take_config_applications(&mut self, idx: NodeIdx) -> Vec<ConfigApplied> {
        std::mem::take(&mut self.nodes[idx.0].applied)
    }

    /// Runs a closure on a live node and collects its outputs.
    pub fn with_node(&mut self, idx: NodeIdx, f: impl FnOnce(&mut Node, Time)) {
        let now = self.now;
        if let Some(node) = self.nodes[idx.0].node.as_mut() {
            f(node, now);
        }
        self.drain(idx);
    }

    /// Runs the simulation for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some(t) = self.next_event_time() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.process_due();
        }
        self.now = end;
    }

    /// Runs until every live node can route to every other live node, checking every `step`;
    /// returns the virtual time it took, or `None` if it did not happen within `limit`.
    pub fn run_until_converged(&mut self, step: Duration, limit: Duration) -> Option<Duration> {
        let start = self.now;
        loop {
            if self.converged() {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(step);
        }
    }

    /// Returns true if every live node has a working path to every other live node.
    pub fn converged(&self) -> bool {
        let live: Vec<NodeIdx> = (0..self.nodes.len())
            .map(NodeIdx)
            .filter(|i| self.nodes[i.0].node.is_some() && !self.address(*i).is_unspecified())
            .collect();
        // Cheap check first: every node knows a route to every other node.
        for from in &live {
            let Some(node) = self.node(*from) else {
                return false;
            };
            for to in &live {
                if node
                    .forwarding_table()
                    .routes
                    .lookup(self.address(*to))
                    .is_none()
                {
                    return false;
                }
            }
        }
        live.iter()
            .all(|from| live.iter().all(|to| self.trace(*from, *to).is_ok()))
    }

    /// Follows forwarding tables from `from` towards `to`'s address; returns the nodes visited,
    /// `from` first and `to` last.
    pub fn trace(&self, from: NodeIdx, to: NodeIdx) -> Result<Vec<NodeIdx>, TraceError> {
        let dst = self.address(to);
        let mut path = vec![from];
        let mut at = from;
        loop {
            let Some(node) = self.node(at) else {
                return Err(TraceError::Broken { at });
            };
            match node.forwarding_table().routes.lookup(dst).map(|(_, t)| *t) {
                None => return Err(TraceError::NoRoute { at }),
                Some(RouteTarget::Local) => {
                    return if at == to {
                        Ok(path)
                    } else {
                        Err(TraceError::NoRoute { at })
                    };
                }
                Some(RouteTarget::Link { link, .. }) => {
                    let Some(next) = self.other_end(at, link) else {
                        return Err(TraceError::Broken { at });
                    };
                    if path.contains(&next) {
                        path.push(next);
                        return Err(TraceError::Loop { path });
                    }
                    path.push(next);
                    at = next;
                }
            }
        }
    }

    fn other_end(&self, at: NodeIdx, link: LinkId) -> Option<NodeIdx> {
        let sim_link = self.nodes[at.0].links.get(&link)?;
        let l = &self.links[sim_link.0];
        let t = l.transport?;
        if l.a == at && t.a_link == link {
            Some(l.b)
        } else if l.b == at && t.b_link == link {
            Some(l.a)
        } else {
            None
        }
    }

    fn new_link_id(&mut self, idx: NodeIdx) -> LinkId {
        let node = &mut self.nodes[idx.0];
        let id = LinkId(node.next_link_id);
        node.next_link_id += 1;
        id
    }

    fn bring_up(&mut self, idx: SimLinkIdx) {
        let (a, b) = (self.links[idx.0].a, self.links[idx.0].b);
        if self.nodes[a.0].node.is_none() || self.nodes[b.0].node.is_none() {
            return;
        }
        if self.links[idx.0].cut {
            // The dial fails; try again later.
            self.links[idx.0].redial_at = Some(self.now + self.redial_delay);
            return;
        }
        let a_link = self.new_link_id(a);
        let b_link = self.new_link_id(b);
        let params = self.links[idx.0].params;
        let a_expects = self.links[idx.0].a_expects.clone();
        self.links[idx.0].transport = Some(Transport { a_link, b_link });
        self.links[idx.0].redial_at = None;
        self.nodes[a.0].links.insert(a_link, idx);
        self.nodes[b.0].links.insert(b_link, idx);
        let now = self.now;
        for (n, link, cost, peer, binding, expected) in [
            (
                a,
                a_link,
                params.cost_ab,
                b,
                params.channel_binding_a,
                a_expects,
            ),
            (b, b_link, params.cost_ba, a, params.channel_binding_b, None),
        ] {
            let info = LinkInfo {
                mtu: params.mtu,
                cost,
                label: format!("sim link {} to node {}", idx.0, peer.0),
                channel_binding: binding,
                expected_peer: expected,
                plain_udp: params.plain_udp,
            };
            if let Some(node) = self.nodes[n.0].node.as_mut() {
                node.handle_link_up(now, link, info);
            }
            self.drain(n);
        }
    }

    /// Closes a transport at one node's request: the other end learns of it after the
    /// latency, and the link is re-dialled after the redial delay.
    fn close_transport(&mut self, by: NodeIdx, link: LinkId) {
        if self.raw.close(by, link) {
            return;
        }
        let Some(sim_link) = self.nodes[by.0].links.remove(&link) else {
            return;
        };
        let l = &mut self.links[sim_link.0];
        let Some(t) = l.transport else {
            return;
        };
        if (l.a == by && t.a_link != link) || (l.b == by && t.b_link != link) {
            return;
        }
        l.transport = None;
        l.redial_at = Some(self.now + self.redial_delay);
        let (other, other_link) = if l.a == by {
            (l.b, t.b_link)
        } else {
            (l.a, t.a_link)
        };
        self.nodes[other.0].links.remove(&other_link);
        let now = self.now;
        if let Some(node) = self.nodes[other.0].node.as_mut() {
            node.handle_link_down(now, other_link);
        }
        self.drain(other);
    }

    /// Collects a node's outputs and reschedules its timer.
    fn drain(&mut self, idx: NodeIdx) {
        let mut transmits = Vec::new();
        let mut commands = Vec::new();
        {
            let sim_node = &mut self.nodes[idx.0];
            let Some(node) = sim_node.node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(p) = node.poll_tun_packet() {
                sim_node.tun_out.push(p);
            }
            while let Some(e) = node.poll_event() {
                sim_node.events.push(e);
            }
            while let Some(c) = node.poll_command() {
                commands.push(c);
            }
            let wakeup = node.poll_timeout().map(|(t, _)| t);
            if wakeup != sim_node.wakeup {
                sim_node.wakeup = wakeup;
                if let Some(t) = wakeup {
                    self.wakeups.push(Reverse((t, idx.0)));
                }
            }
        }
        for t in transmits {
            self.transmit(idx, t.link, t.payload);
        }
        for c in commands {
            match c {
                Command::CloseLink { link, .. } => self.close_transport(idx, link),
                Command::InstallForwarding(_)
                | Command::SetFastpathRoutes(_)
                | Command::SetMeshPrefixes(_) => {}
                Command::ApplyConfig {
                    version,
                    unacknowledged,
                } => self.nodes[idx.0].applied.push(ConfigApplied {
                    at: self.now,
                    version,
                    unacknowledged,
                }),
                Command::PersistLeases { generation, table } => {
                    self.persist(idx, generation, table);
                }
                Command::SetAddress { address, .. } => self.note_address(idx, address),
            }
        }
    }

    fn transmit(&mut self, from: NodeIdx, link: LinkId, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        if self.raw.absorb(from, link, &bytes) {
            return;
        }
        let Some(sim_link) = self.nodes[from.0].links.get(&link).copied() else {
            self.stats.messages_lost += 1;
            return;
        };
        self.raw.tap(sim_link, from, &bytes);
        let l = &self.links[sim_link.0];
        let Some(t) = l.transport else {
            self.stats.messages_lost += 1;
            return;
        };
        if bytes.len() > usize::from(l.params.mtu) {
            self.stats.messages_too_big += 1;
            return;
        }
        let (to, to_link) = if l.a == from {
            (l.b, t.b_link)
        } else {
            (l.a, t.a_link)
        };
        let params = l.params;
        if l.cut || self.rng.random_bool(params.loss.clamp(0.0, 1.0)) {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(params.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if params.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.random_range(0..params.jitter.as_nanos() as u64))
            };
            self.seq += 1;
            self.queue.push(Delivery {
                at: Reverse(self.now + params.latency + jitter),
                seq: Reverse(self.seq),
                to,
                link: to_link,
                bytes: bytes.clone(),
            });
        }
    }

    fn next_event_time(&mut self) -> Option<Time> {
        // Drop stale wakeups.
        while let Some(Reverse((t, idx))) = self.wakeups.peek().copied() {
            if self.nodes[idx].wakeup == Some(t) {
                break;
            }
            self.wakeups.pop();
        }
        let mut next = self.wakeups.peek().map(|Reverse((t, _))| *t);
        if let Some(d) = self.queue.peek() {
            next = Some(next.map_or(d.at.0, |n| n.min(d.at.0)));
        }
        for link in &self.links {
            if let Some(t) = link.redial_at {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let Some(t) = self.next_write() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    fn process_due(&mut self) {
        let now = self.now;
        while self.queue.peek().is_some_and(|d| d.at.0 <= now) {
            let Some(mut d) = self.queue.pop() else {
                break;
            };
            let sim_node = &mut self.nodes[d.to.0];
            match sim_node.node.as_mut() {
                Some(node) if sim_node.links.contains_key(&d.link) => {
                    node.handle_link_message(now, d.link, &mut d.bytes);
                    self.drain(d.to);
                }
                _ => self.stats.messages_lost += 1,
            }
        }
        while let Some(Reverse((t, idx))) = self.wakeups.peek().copied() {
            if t > now {
                break;
            }
            self.wakeups.pop();
            if self.nodes[idx].wakeup != Some(t) {
                continue;
            }
            self.nodes[idx].wakeup = None;
            if let Some(node) = self.nodes[idx].node.as_mut() {
                node.handle_timeout(now);
            }
            self.drain(NodeIdx(idx));
        }
        self.complete_writes();
        let due: Vec<SimLinkIdx> = (0..self.links.len())
            .map(SimLinkIdx)
            .filter(|l| self.links[l.0].redial_at.is_some_and(|t| t <= now))
            .collect();
        for link in due {
            self.links[link.0].redial_at = None;
            self.bring_up(link);
        }
    }
}

/// Builds an IPv6/UDP packet (checksum zero is fine for the mesh; it never inspects it).
pub fn udp_packet(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = Vec::with_capacity(40 + udp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.push(17);
    p.push(hop_limit);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&9u16.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
