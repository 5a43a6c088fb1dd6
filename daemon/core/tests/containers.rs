//! Containers' leases in the simulator (`docs/dynamic-mesh.md` §3.3, step 8 of §4): an issuer
//! gives containers addresses from its pool, answers them once its table is persisted, and
//! advertises their /128s and names, which reach every node (the trust checks accept them
//! inside the issuer's pool) and go on detach and GC; names already held get a suffix; a
//! node without a pool serves none, and a node that advertises another's pool is refused;
//! a restart from the persisted table keeps them.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::forward::RouteTarget;
use connectopus_core::identity::{Grant, NodeKey, TrustPolicy};
use connectopus_core::lease_issuer::{IssuerConfig, JoinPolicy};
use connectopus_core::lease_table::LeaseTableConfig;
use connectopus_core::node::{
    ContainerError, ContainerKey, ContainerLease, IssuerSetup, IssuerStart, NodeConfig,
    UpdateRejection,
};
use connectopus_core::sim::{LinkParams, NodeIdx, SIM_UNIX_MS_AT_ZERO, Sim, udp_packet};
use connectopus_wire::{Cost, NameBinding, Prefix, PrefixAdvert};

const SECOND: Duration = Duration::from_secs(1);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn pool() -> Prefix {
    "fd00:0:0:e1::/120".parse().unwrap()
}

fn container(network: &str, id: &str) -> ContainerKey {
    ContainerKey {
        network: network.into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

/// The issuer `i` (with the pool), `b` linked to it and `c` linked to `b`, all with
/// identities.
struct World {
    sim: Sim,
    i: NodeIdx,
    b: NodeIdx,
    c: NodeIdx,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut issuer = Grant::new("i", a("fd00::1"));
        issuer.issue_pools.push(pool());
        let mut trust = TrustPolicy::new()
            .with_grant(key(1).public(), issuer)
            .with_grant(key(2).public(), Grant::new("b", a("fd00::2")))
            .with_grant(key(3).public(), Grant::new("c", a("fd00::3")));
        trust.reserved_names = ["i", "b", "c"].map(String::from).into();
        let mut sim = Sim::new(seed);
        let node = |n: u8, name: &str| {
            let mut config = NodeConfig::new(a(&format!("fd00::{n}")), name, 1, 10 + u64::from(n));
            config.identity = Some(key(n));
            config.trust = Some(trust.clone());
            config
        };
        let mut ic = node(1, "i");
        ic.issuer = Some(IssuerSetup {
            config: IssuerConfig {
                address: a("fd00::1"),
                table: LeaseTableConfig {
                    pool: pool(),
                    lease: 20 * SECOND,
                    grace: 8 * SECOND,
                },
                policy: JoinPolicy {
                    reserved_names: trust.reserved_names.clone(),
                    ..JoinPolicy::default()
                },
                epoch_floor: 1,
            },
            start: IssuerStart::Fresh,
            unix_ms: SIM_UNIX_MS_AT_ZERO,
        });
        let i = sim.add_node_with(ic);
        let b = sim.add_node_with(node(2, "b"));
        let c = sim.add_node_with(node(3, "c"));
        sim.connect(i, b, LinkParams::default().with_channel_binding([1; 32]));
        sim.connect(b, c, LinkParams::default().with_channel_binding([2; 32]));
        sim.run_for(3 * SECOND);
        Self { sim, i, b, c }
    }

    fn attach(
        &mut self,
        at: NodeIdx,
        key: &ContainerKey,
        name: &str,
    ) -> Result<ContainerLease, ContainerError> {
        let mut out = None;
        self.sim.with_node(at, |node, now| {
            out = Some(node.attach_container(now, key.clone(), name));
        });
        out.unwrap()
    }

    fn detach(&mut self, key: &ContainerKey) -> Option<ContainerLease> {
        let mut out = None;
        self.sim.with_node(self.i, |node, now| {
            out = node.detach_container(now, key);
        });
        out
    }

    fn resolves(&self, at: NodeIdx, name: &str) -> Option<Ipv6Addr> {
        self.sim.node(at)?.names().get(name).map(|e| e.address)
    }

    fn routes_to_link(&self, at: NodeIdx, address: Ipv6Addr) -> bool {
        self.sim
            .node(at)
            .unwrap()
            .forwarding_table()
            .routes
            .lookup(address)
            .is_some_and(|(p, t)| {
                p == Prefix::host(address) && matches!(t, RouteTarget::Link { .. })
            })
    }

    fn rejected(&self, at: NodeIdx) -> u64 {
        let counters = self.sim.node(at).unwrap().counters();
        counters
            .updates_rejected
            .get(&UpdateRejection::UnauthorizedContent)
            .copied()
            .unwrap_or(0)
    }

    /// Runs in 100 ms steps until `done` holds, at most `limit`.
    fn wait(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = self.sim.now() + limit;
        while self.sim.now() < end {
            if done(self) {
                return true;
            }
            self.sim.run_for(SECOND / 10);
        }
        done(self)
    }

    /// A packet from `c`'s host to `address` reaches the issuer's TUN device.
    fn delivered_at_issuer(&mut self, address: Ipv6Addr) -> bool {
        self.sim.take_tun_packets(self.i);
        let packet = udp_packet(a("fd00::3"), address, 64, b"to the container");
        self.sim.send_from_tun(self.c, packet);
        self.sim.run_for(SECOND / 2);
        self.sim
            .take_tun_packets(self.i)
            .iter()
            .any(|p| connectopus_core::forward::addresses(p).is_some_and(|(_, dst)| dst == address))
    }
}

#[test]
fn container_names_and_routes_reach_every_node_and_go_on_detach() {
    let mut w = World::new(1);
    let web = container("mesh", "0123456789abcdef");
    let lease = w.attach(w.i, &web, "web").unwrap();
    assert!(pool().contains(lease.address) && lease.address != pool().addr());
    assert_eq!((lease.name.as_str(), lease.existing), ("web", false));
    // Answered only once the table that records it is written.
    let persisted = w.sim.node(w.i).unwrap().leases_persisted_generation();
    assert!(
        persisted < lease.generation,
        "{persisted} {}",
        lease.generation
    );
    assert!(w.wait(SECOND, |w| {
        w.sim.node(w.i).unwrap().leases_persisted_generation() >= lease.generation
    }));
    assert!(
        w.sim
            .disk(w.i)
            .unwrap()
            .leases
            .iter()
            .any(|l| l.address == lease.address && l.container.as_ref() == Some(&web)),
        "the table on disk records the container"
    );
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, "web")
        == Some(lease.address)));
    assert_eq!(w.resolves(w.b, "web"), Some(lease.address));
    assert_eq!(w.resolves(w.i, "web"), Some(lease.address));
    assert!(w.routes_to_link(w.c, lease.address) && w.routes_to_link(w.b, lease.address));
    assert!(w.delivered_at_issuer(lease.address));

    // Again for the same key: the same lease, nothing new advertised.
    let again = w.attach(w.i, &web, "other-name").unwrap();
    assert_eq!(
        (again.address, again.name.as_str(), again.existing),
        (lease.address, "web", true)
    );
    assert!(again.generation <= w.sim.node(w.i).unwrap().leases_persisted_generation());

    // A name already held (by a container, or reserved for a static node) gets a suffix.
    let second = w.attach(w.i, &container("mesh", "second"), "web").unwrap();
    assert_ne!(second.address, lease.address);
    assert!(
        second.name.starts_with("web-") && second.name.len() == 8,
        "{}",
        second.name
    );
    let named_b = w.attach(w.i, &container("mesh", "third"), "b").unwrap();
    assert!(named_b.name.starts_with("b-"), "{}", named_b.name);
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, &second.name)
        == Some(second.address)
        && w.resolves(w.c, &named_b.name) == Some(named_b.address)));
    assert_eq!(w.resolves(w.c, "b"), Some(a("fd00::2")));

    // Detach: the name and the route go everywhere.
    assert_eq!(w.detach(&web).unwrap().address, lease.address);
    assert!(w.detach(&web).is_none());
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, "web").is_none()
        && w.resolves(w.b, "web").is_none()
        && !w.routes_to_link(w.c, lease.address)));
    assert!(!w.delivered_at_issuer(lease.address));
    assert_eq!(w.resolves(w.c, &second.name), Some(second.address));
    assert_eq!((w.rejected(w.b), w.rejected(w.c)), (0, 0));
}

#[test]
fn containers_outside_a_pool_are_refused() {
    let mut w = World::new(2);
    // A node without a pool serves no containers.
    assert_eq!(
        w.attach(w.b, &container("mesh", "x"), "web").unwrap_err(),
        ContainerError::NotServed
    );
    // A node that advertises a container of the issuer's pool as its own is refused, and so
    // is the issuer naming an address outside its pool.
    let stolen = a("fd00:0:0:e1::42");
    w.sim.with_node(w.b, |node, now| {
        node.set_attachments(
            now,
            vec![PrefixAdvert {
                prefix: Prefix::host(stolen),
                cost: Cost(0),
            }],
            vec![NameBinding {
                name: "thief".into(),
                address: stolen,
            }],
        );
    });
    assert!(w.wait(2 * SECOND, |w| w.rejected(w.i) >= 1 && w.rejected(w.c) >= 1));
    assert_eq!(w.resolves(w.c, "thief"), None);
    assert!(!w.routes_to_link(w.c, stolen));
    w.sim
        .with_node(w.b, |node, now| node.set_attachments(now, vec![], vec![]));
    // The issuer's own containers still get through.
    let lease = w.attach(w.i, &container("mesh", "ok"), "fine").unwrap();
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, "fine")
        == Some(lease.address)));
    let outside = a("fd00:0:0:e2::1");
    w.sim.with_node(w.i, |node, now| {
        node.set_attachments(
            now,
            vec![],
            vec![NameBinding {
                name: "outside".into(),
                address: outside,
            }],
        );
    });
    let before = w.rejected(w.b);
    assert!(w.wait(2 * SECOND, |w| w.rejected(w.b) > before));
    assert_eq!(w.resolves(w.c, "outside"), None);
}

#[test]
fn gc_releases_unlisted_containers_of_its_network() {
    let mut w = World::new(3);
    let keep = container("mesh", "keep");
    let drop1 = container("mesh", "drop1");
    let other = container("other-net", "o");
    for (k, name) in [(&keep, "keep"), (&drop1, "drop1"), (&other, "o")] {
        w.attach(w.i, k, name).unwrap();
    }
    assert!(w.wait(2 * SECOND, |w| {
        ["keep", "drop1", "o"]
            .iter()
            .all(|n| w.resolves(w.c, n).is_some())
    }));
    let mut gone = Vec::new();
    w.sim.with_node(w.i, |node, now| {
        gone = node.gc_containers(now, "mesh", std::slice::from_ref(&keep));
    });
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].key, drop1);
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, "drop1").is_none()));
    assert!(w.resolves(w.c, "keep").is_some() && w.resolves(w.c, "o").is_some());
    let left: Vec<ContainerKey> = w
        .sim
        .node(w.i)
        .unwrap()
        .containers()
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert_eq!(left, {
        let mut v = vec![keep, other];
        v.sort_by_key(|k| w.sim.node(w.i).unwrap().container(k).unwrap().address);
        v
    });
    assert!(w.wait(SECOND, |w| {
        !w.sim
            .disk(w.i)
            .unwrap()
            .leases
            .iter()
            .any(|l| l.container.as_ref() == Some(&drop1))
    }));
}

#[test]
fn a_restart_keeps_containers_from_the_persisted_table() {
    let mut w = World::new(4);
    let one = w.attach(w.i, &container("mesh", "one"), "one").unwrap();
    let two = w.attach(w.i, &container("mesh", "two"), "two").unwrap();
    assert!(w.wait(2 * SECOND, |w| w.resolves(w.c, "two").is_some()));
    w.sim.crash(w.i);
    w.sim.run_for(SECOND);
    w.sim.restart(w.i);
    // Right after the restart the node advertises them again, from the table on disk.
    let containers = w.sim.node(w.i).unwrap().containers();
    assert_eq!(containers.len(), 2);
    assert!(
        w.wait(5 * SECOND, |w| w.resolves(w.c, "one") == Some(one.address)
            && w.resolves(w.c, "two") == Some(two.address)
            && w.routes_to_link(w.c, one.address))
    );
    assert!(w.delivered_at_issuer(two.address));
    let again = w.attach(w.i, &container("mesh", "one"), "one").unwrap();
    assert_eq!((again.address, again.existing), (one.address, true));
}
