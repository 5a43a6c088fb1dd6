//! Ephemeral nodes and issuers in the simulator (`docs/dynamic-mesh.md` §1.9): a per-node
//! "disk" that [`Command::PersistLeases`] writes after a configurable delay (then the node
//! hears [`Node::leases_persisted`]), restarts with and without it, ephemeral nodes that join,
//! and graceful shutdowns (Release, goodbyes).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::{NodeIdx, Sim};
use crate::identity::{NodeKey, TrustPolicy};
use crate::lease_holder::JoinConfig;
use crate::lease_table::PersistedLeases;
#[cfg(doc)]
use crate::node::Command;
use crate::node::{IssuerStart, Node, NodeConfig};
use crate::time::Time;

/// The simulated wall clock at virtual time zero (Unix milliseconds).
pub const SIM_UNIX_MS_AT_ZERO: u64 = 1_800_000_000_000;

/// Lease state of one simulated node.
#[derive(Debug, Default)]
pub(super) struct NodeLeases {
    /// The lease table last written to the node's disk.
    disk: Option<Arc<PersistedLeases>>,
    /// Counts crashes and restarts, so a write that completes after a crash is not reported
    /// to the new instance.
    incarnation: u64,
    /// Every [`Command::SetAddress`] the node issued: (when, address).
    addresses: Vec<(Time, Option<Ipv6Addr>)>,
    /// How many tables the node asked to persist, over all its incarnations.
    persist_requests: u64,
    /// How far the node's wall clock is off at its next restart (milliseconds, negative:
    /// behind).
    wall_clock_skew_ms: i64,
}

/// A lease table being written.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PendingWrite {
    /// Earliest first, then in the order the node asked.
    at: Reverse<Time>,
    seq: Reverse<u64>,
    node: usize,
    incarnation: u64,
    generation: u64,
}

/// The writes in flight.
#[derive(Debug, Default)]
pub(super) struct Disks {
    delay: Duration,
    writes: BinaryHeap<PendingWrite>,
    tables: std::collections::BTreeMap<u64, Arc<PersistedLeases>>,
    seq: u64,
}

impl Sim {
    /// Sets how long a lease table takes to be written (default zero: at the next step).
    pub fn set_persist_delay(&mut self, delay: Duration) {
        self.disks.delay = delay;
    }

    /// Returns the simulated wall clock at the current virtual time, in Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        let ms = self.now.saturating_since(Time::ZERO).as_millis();
        SIM_UNIX_MS_AT_ZERO.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Adds and starts an ephemeral node that joins as `name` with node key `key` (and the
    /// shared `join_key`, if given); it has no address until an issuer grants one. Link it to
    /// an issuer with [`Sim::connect`].
    pub fn add_ephemeral(
        &mut self,
        name: &str,
        key: NodeKey,
        join_key: Option<NodeKey>,
        trust: Option<TrustPolicy>,
    ) -> NodeIdx {
        let seed = self.rng.random::<u64>();
        let mut config = NodeConfig::new(Ipv6Addr::UNSPECIFIED, name, 0, seed);
        config.identity = Some(key);
        config.trust = trust;
        config.join = Some(JoinConfig {
            name: name.to_owned(),
            join_key,
        });
        self.add_node_with(config)
    }

    /// Returns the lease table on a node's disk.
    pub fn disk(&self, idx: NodeIdx) -> Option<&PersistedLeases> {
        self.nodes[idx.0].leases.disk.as_deref()
    }

    /// Returns how many lease tables a node asked to persist ([`Command::PersistLeases`]).
    pub fn persist_requests(&self, idx: NodeIdx) -> u64 {
        self.nodes[idx.0].leases.persist_requests
    }

    /// Sets how far `idx`'s wall clock is off when it next restarts (negative: behind), as a
    /// machine whose clock is wrong at boot.
    pub fn set_wall_clock_skew(&mut self, idx: NodeIdx, skew_ms: i64) {
        self.nodes[idx.0].leases.wall_clock_skew_ms = skew_ms;
    }

    /// Returns every address change ([`Command::SetAddress`]) a node issued: (when, address).
    pub fn address_changes(&self, idx: NodeIdx) -> &[(Time, Option<Ipv6Addr>)] {
        &self.nodes[idx.0].leases.addresses
    }

    /// Stops a node gracefully: it releases its lease and says goodbye; the messages reach
    /// its peers, then the node is gone (like [`Sim::crash`]).
    pub fn shutdown(&mut self, idx: NodeIdx) {
        let now = self.now;
        let mut transmits = Vec::new();
        if let Some(node) = self.nodes[idx.0].node.as_mut() {
            node.shutdown(now);
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            // The links close with the node; its close requests need no answer.
            while node.poll_command().is_some() {}
        }
        for t in transmits {
            self.transmit(idx, t.link, t.payload);
        }
        self.crash(idx);
    }

    /// Restarts a crashed node that lost its disk: an issuer starts with its table lost.
    pub fn restart_losing_state(&mut self, idx: NodeIdx) {
        self.nodes[idx.0].leases.disk = None;
        if let Some(setup) = self.nodes[idx.0].config.issuer.as_mut() {
            setup.start = IssuerStart::Lost;
        }
        self.restart_with(idx, true);
    }

    /// Before a node starts again: a new incarnation; an issuer starts from its disk, with a
    /// routing epoch that keeps growing like the daemon's (wall-clock nanoseconds).
    pub(super) fn prepare_restart(&mut self, idx: NodeIdx, keep_start: bool) {
        let unix_ms = self.unix_ms();
        let now_nanos =
            u64::try_from(self.now.saturating_since(Time::ZERO).as_nanos()).unwrap_or(u64::MAX);
        let sim_node = &mut self.nodes[idx.0];
        sim_node.leases.incarnation += 1;
        let disk = sim_node.leases.disk.clone();
        if let Some(setup) = sim_node.config.issuer.as_mut() {
            if !keep_start {
                setup.start = match disk {
                    Some(table) => IssuerStart::Persisted((*table).clone()),
                    None => IssuerStart::Fresh,
                };
            }
            setup.unix_ms = unix_ms.saturating_add_signed(sim_node.leases.wall_clock_skew_ms);
            sim_node.config.epoch = sim_node.config.epoch.max(now_nanos);
        }
    }

    /// Notes a crash: writes in flight are not reported to a later instance.
    pub(super) fn lease_crash(&mut self, idx: NodeIdx) {
        self.nodes[idx.0].leases.incarnation += 1;
    }

    /// Takes a node's lease commands.
    pub(super) fn persist(&mut self, idx: NodeIdx, generation: u64, table: Arc<PersistedLeases>) {
        self.nodes[idx.0].leases.persist_requests += 1;
        self.disks.seq += 1;
        let seq = self.disks.seq;
        self.disks.tables.insert(seq, table);
        self.disks.writes.push(PendingWrite {
            at: Reverse(self.now + self.disks.delay),
            seq: Reverse(seq),
            node: idx.0,
            incarnation: self.nodes[idx.0].leases.incarnation,
            generation,
        });
    }

    pub(super) fn note_address(&mut self, idx: NodeIdx, address: Option<Ipv6Addr>) {
        let now = self.now;
        self.nodes[idx.0].leases.addresses.push((now, address));
    }

    /// The next write to complete.
    pub(super) fn next_write(&self) -> Option<Time> {
        self.disks.writes.peek().map(|w| w.at.0)
    }

    /// Completes the writes due at `now`: the disk holds the table, the node hears of it.
    pub(super) fn complete_writes(&mut self) {
        let now = self.now;
        while self.disks.writes.peek().is_some_and(|w| w.at.0 <= now) {
            let Some(write) = self.disks.writes.pop() else {
                break;
            };
            let table = self.disks.tables.remove(&write.seq.0);
            let sim_node = &mut self.nodes[write.node];
            if sim_node.leases.incarnation != write.incarnation || sim_node.node.is_none() {
                continue;
            }
            sim_node.leases.disk = table;
            if let Some(node) = sim_node.node.as_mut() {
                node.leases_persisted(now, write.generation);
            }
            self.drain(NodeIdx(write.node));
        }
    }
}

/// Returns a node's current address (`::` while an ephemeral node holds none).
pub(super) fn current_address(node: Option<&Node>, configured: Ipv6Addr) -> Ipv6Addr {
    node.map_or(configured, Node::address)
}
