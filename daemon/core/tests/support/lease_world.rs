//! The issuer `i`, the backbone node `b` and joiners in the simulator, shared by the lease
//! tests (`joining.rs`, `issuer_hardening.rs`).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::identity::{Grant, NodeKey, TrustPolicy};
use connectopus_core::lease_issuer::{IssuerConfig, JoinPolicy};
use connectopus_core::lease_table::LeaseTableConfig;
use connectopus_core::node::{Event, IssuerSetup, IssuerStart, LeaseEvent, NodeConfig};
use connectopus_core::sim::{LinkParams, NodeIdx, SIM_UNIX_MS_AT_ZERO, Sim};
use connectopus_wire::{LeaseCertificate, Prefix};

pub const SECOND: Duration = Duration::from_secs(1);
pub const MS: Duration = Duration::from_millis(1);
pub const LEASE: Duration = Duration::from_secs(20);
pub const GRACE: Duration = Duration::from_secs(8);

pub const ISSUER: u8 = 1;
pub const BACKBONE: u8 = 2;
pub const MEMBER: u8 = 50;
pub const JOIN_KEY: u8 = 99;

pub fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

/// Signs as `key(n)` does.
pub fn sign(n: u8, message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer;
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
        .sign(message)
        .to_bytes()
}

pub fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub fn policy(pool: Prefix) -> TrustPolicy {
    let mut issuer = Grant::new("i", a("fd00::1"));
    issuer.issue_pools.push(pool);
    let mut p = TrustPolicy::new()
        .with_grant(key(ISSUER).public(), issuer)
        .with_grant(key(BACKBONE).public(), Grant::new("b", a("fd00::2")));
    p.reserved_names = ["i", "b"].map(String::from).into();
    p
}

pub fn issuer_setup(pool: Prefix, trust: &TrustPolicy) -> IssuerSetup {
    let mut join = JoinPolicy::default();
    join.identities.insert(key(MEMBER).public());
    join.join_keys.insert(key(JOIN_KEY).public());
    join.reserved_names = trust.reserved_names.clone();
    IssuerSetup {
        config: IssuerConfig {
            address: a("fd00::1"),
            table: LeaseTableConfig {
                pool,
                lease: LEASE,
                grace: GRACE,
            },
            policy: join,
            epoch_floor: 1,
        },
        start: IssuerStart::Fresh,
        unix_ms: SIM_UNIX_MS_AT_ZERO,
    }
}

/// The issuer `i` (the pool) and the backbone node `b`, linked.
pub struct World {
    pub sim: Sim,
    pub trust: TrustPolicy,
    pub i: NodeIdx,
    pub b: NodeIdx,
    pub pool: Prefix,
}

impl World {
    pub fn new(seed: u64, pool: &str) -> Self {
        let pool: Prefix = pool.parse().unwrap();
        let trust = policy(pool);
        let mut sim = Sim::new(seed);
        let mut ic = NodeConfig::new(a("fd00::1"), "i", 1, 11);
        ic.identity = Some(key(ISSUER));
        ic.trust = Some(trust.clone());
        ic.issuer = Some(issuer_setup(pool, &trust));
        let i = sim.add_node_with(ic);
        let mut bc = NodeConfig::new(a("fd00::2"), "b", 1, 12);
        bc.identity = Some(key(BACKBONE));
        bc.trust = Some(trust.clone());
        let b = sim.add_node_with(bc);
        sim.connect(i, b, LinkParams::default().with_channel_binding([1; 32]));
        sim.run_for(2 * SECOND);
        Self {
            sim,
            trust,
            i,
            b,
            pool,
        }
    }

    /// An ephemeral node `name` with key `n` (and the join key, if `join_key`), linked to the
    /// issuer and to the backbone node.
    pub fn joiner(&mut self, name: &str, n: u8, join_key: Option<u8>) -> NodeIdx {
        let e = self
            .sim
            .add_ephemeral(name, key(n), join_key.map(key), Some(self.trust.clone()));
        self.sim.connect(
            e,
            self.i,
            LinkParams::default().with_channel_binding([n; 32]),
        );
        self.sim.connect(
            e,
            self.b,
            LinkParams::default().with_channel_binding([n ^ 0x80; 32]),
        );
        e
    }

    pub fn resolves(&self, at: NodeIdx, name: &str) -> Option<Ipv6Addr> {
        self.sim.node(at)?.names().get(name).map(|e| e.address)
    }

    pub fn certificate(&self, e: NodeIdx) -> Option<LeaseCertificate> {
        self.sim.node(e)?.certificate().cloned()
    }

    pub fn table(&self) -> Vec<connectopus_core::lease_table::Lease> {
        self.sim
            .node(self.i)
            .unwrap()
            .leases()
            .unwrap()
            .leases()
            .cloned()
            .collect()
    }

    pub fn is_free(&self, address: Ipv6Addr) -> bool {
        let node = self.sim.node(self.i).unwrap();
        node.leases().unwrap().is_free(self.sim.now(), address)
    }

    /// Runs in `step`s until `done` holds; returns how long it took, or `None` past `limit`.
    pub fn run_until(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&World) -> bool,
    ) -> Option<Duration> {
        let start = self.sim.now();
        loop {
            if done(self) {
                return Some(self.sim.now() - start);
            }
            if self.sim.now() - start >= limit {
                return None;
            }
            self.sim.run_for(step);
        }
    }
}

pub fn lease_events(sim: &mut Sim, at: NodeIdx) -> Vec<LeaseEvent> {
    sim.take_events(at)
        .into_iter()
        .filter_map(|e| match e {
            Event::Lease(l) => Some(l),
            _ => None,
        })
        .collect()
}

pub fn count(sim: &Sim, at: NodeIdx, what: &str) -> u64 {
    sim.node(at)
        .unwrap()
        .counters()
        .leases
        .get(what)
        .copied()
        .unwrap_or(0)
}
