//! Ephemeral nodes in the simulator with the real issuer and holder logic
//! (`docs/dynamic-mesh.md` §1.9). `LeaseIssuer` and `LeaseHolder` are not driven by `Node`
//! yet (§4 step 5), so this test plays their wiring: it carries Join, Grant, Renew and Renewed
//! between them directly and gives each bound holder a simulated node with its certificate.
//! What it checks is the mesh's side: the issuer's certificates admit their holders everywhere,
//! renewals keep them, and an address is re-issued only after its lease and grace, to a higher
//! epoch that wins over an expired holder that keeps squatting.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::identity::{Grant, NodeKey, TrustPolicy};
use connectopus_core::lease_holder::{HolderOutput, JoinConfig, LeaseHolder};
use connectopus_core::lease_issuer::{IssuerConfig, JoinPolicy, JoinSession, LeaseIssuer};
use connectopus_core::lease_table::LeaseTableConfig;
use connectopus_core::node::NodeConfig;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim};
use connectopus_core::time::Time;
use connectopus_wire::{LeaseBody, LeaseCertificate};

const SECOND: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(8);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const ISSUER: u8 = 1;
const BACKBONE: u8 = 2;

fn policy() -> TrustPolicy {
    let mut issuer = Grant::new("i", a("fd00::1"));
    issuer
        .issue_pools
        .push("fd00:0:0:e1::/112".parse().unwrap());
    let mut p = TrustPolicy::new()
        .with_grant(key(ISSUER).public(), issuer)
        .with_grant(key(BACKBONE).public(), Grant::new("b", a("fd00::2")));
    p.reserved_names = ["i", "b"].map(String::from).into();
    p
}

/// The test's stand-in for the node wiring of one ephemeral node.
struct Ephemeral {
    holder: LeaseHolder,
    node: Option<NodeIdx>,
    /// Keeps running on its old certificate after losing it (a hostile holder).
    squats: bool,
}

struct World {
    sim: Sim,
    trust: TrustPolicy,
    issuer: LeaseIssuer,
    i: NodeIdx,
    b: NodeIdx,
}

impl World {
    fn new(seed: u64) -> Self {
        let trust = policy();
        let mut sim = Sim::new(seed);
        let statics = [("i", ISSUER, "fd00::1"), ("b", BACKBONE, "fd00::2")].map(|(n, k, ad)| {
            let mut c = NodeConfig::new(a(ad), n, 1, u64::from(k));
            c.identity = Some(key(k));
            c.trust = Some(trust.clone());
            sim.add_node_with(c)
        });
        let [i, b] = statics;
        sim.connect(i, b, LinkParams::default().with_channel_binding([1; 32]));
        let mut join_policy = JoinPolicy::default();
        join_policy.join_keys.insert(key(99).public());
        join_policy.reserved_names = trust.reserved_names.clone();
        let issuer = LeaseIssuer::fresh(
            IssuerConfig {
                address: a("fd00::1"),
                table: LeaseTableConfig {
                    pool: "fd00:0:0:e1::/112".parse().unwrap(),
                    lease: LEASE,
                    grace: GRACE,
                },
                policy: join_policy,
                epoch_floor: 1,
            },
            Some(key(ISSUER)),
        );
        sim.run_for(2 * SECOND);
        Self {
            sim,
            trust,
            issuer,
            i,
            b,
        }
    }

    fn now(&self) -> Time {
        self.sim.now()
    }

    /// Runs a Join for `e` with a fresh binding; returns the certificate if granted.
    fn join(&mut self, e: &mut Ephemeral, n: u8) -> Option<LeaseCertificate> {
        let now = self.now();
        let binding = [n; 32];
        let join = e.holder.start_join(now, a("fd00::1"), &binding)?;
        let LeaseBody::Join { hint, name, proof } = &join.body else {
            panic!("not a join");
        };
        let session = JoinSession {
            token: u64::from(n),
            holder_key: key(n).public(),
            binding,
        };
        // Static names are reserved in the policy and leased names are checked by the table;
        // the node's live name table (`name_held`) adds nothing in this mesh.
        let answer = self.issuer.handle_join(
            now,
            session,
            join.xid,
            *hint,
            name,
            proof.as_ref(),
            |_| None,
            |_| false,
        );
        let reply = match answer {
            Some(refused) => refused,
            None => {
                let (generation, _) = self.issuer.poll_persist(now, 0).unwrap();
                self.issuer.leases_persisted(generation).pop().unwrap().1
            }
        };
        match e.holder.handle_message(now, a("fd00::1"), &reply).pop()? {
            HolderOutput::Bound { cert, .. } => Some(cert),
            _ => None,
        }
    }

    /// Gives a bound holder its node, linked to the backbone node.
    fn start_node(&mut self, e: &mut Ephemeral, n: u8, cert: &LeaseCertificate) {
        let mut c = NodeConfig::new(cert.address, cert.name.clone(), cert.epoch, u64::from(n));
        c.identity = Some(key(n));
        c.trust = Some(self.trust.clone());
        c.certificate = Some(cert.clone());
        let idx = self.sim.add_node_with(c);
        self.sim.connect(
            idx,
            self.b,
            LinkParams::default().with_channel_binding([n; 32]),
        );
        e.node = Some(idx);
    }

    /// Runs `duration` in 100 ms steps, carrying every holder's renewals to the issuer and
    /// the answers back (renewed certificates go to the holder's node).
    fn run(&mut self, duration: Duration, ephemerals: &mut [&mut Ephemeral]) {
        let end = self.now() + duration;
        while self.now() < end {
            self.sim.run_for(SECOND / 10);
            let now = self.now();
            self.issuer.expire(now);
            for e in ephemerals.iter_mut() {
                let Some(idx) = e.node else { continue };
                for out in e.holder.handle_timeout(now) {
                    match out {
                        HolderOutput::Send { message, .. } => {
                            let LeaseBody::Renew { cert, holder_sig } = &message.body else {
                                continue;
                            };
                            let answer =
                                self.issuer.handle_renew(now, message.xid, cert, holder_sig);
                            for reply in e.holder.handle_message(now, a("fd00::1"), &answer) {
                                if let HolderOutput::Bound { cert, .. } = reply {
                                    self.sim.with_node(idx, |node, t| {
                                        node.set_certificate(t, Some(cert))
                                    });
                                }
                            }
                        }
                        HolderOutput::Lost if !e.squats => {
                            self.sim.crash(idx);
                            e.node = None;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn resolves(&self, at: NodeIdx, name: &str) -> Option<Ipv6Addr> {
        self.sim
            .node(at)
            .unwrap()
            .names()
            .get(name)
            .map(|e| e.address)
    }
}

fn ephemeral(n: u8, squats: bool) -> Ephemeral {
    Ephemeral {
        holder: LeaseHolder::new(
            JoinConfig {
                name: format!("job-{n}"),
                join_key: Some(key(99)),
            },
            key(n),
            u64::from(n),
        ),
        node: None,
        squats,
    }
}

#[test]
fn issued_certificates_admit_holders_renewals_keep_them_and_lost_leases_free_the_address() {
    let mut w = World::new(1);
    let mut e1 = ephemeral(10, false);
    let mut e2 = ephemeral(11, false);
    let c1 = w.join(&mut e1, 10).unwrap();
    let c2 = w.join(&mut e2, 11).unwrap();
    assert_ne!(c1.address, c2.address);
    w.start_node(&mut e1, 10, &c1);
    w.start_node(&mut e2, 11, &c2);
    w.run(SECOND, &mut [&mut e1, &mut e2]);
    for at in [w.i, w.b] {
        assert_eq!(w.resolves(at, "job-10"), Some(c1.address));
        assert_eq!(w.resolves(at, "job-11"), Some(c2.address));
    }
    // Three leases long, renewals keep both.
    w.run(3 * LEASE, &mut [&mut e1, &mut e2]);
    assert!(e1.holder.certificate().unwrap().renewal >= 5);
    assert_eq!(w.resolves(w.i, "job-10"), Some(c1.address));
    // e1 crashes: no more renewals. Its address is not issuable before the issuer's expiry
    // plus grace, and e1's name leaves the mesh by the lease (counted from first sight).
    let crashed_at = w.now();
    let expires = w.issuer.table().lease_at(c1.address).unwrap().expires;
    w.sim.crash(e1.node.take().unwrap());
    w.run(LEASE + 3 * SECOND, &mut [&mut e2]);
    assert!(w.resolves(w.i, "job-10").is_none());
    assert!(!w.issuer.table().is_free(w.now(), c1.address));
    assert!(w.issuer.table().is_free(expires + GRACE, c1.address));
    assert!(expires + GRACE <= crashed_at + LEASE + GRACE);
    // After the issuer's expiry plus grace the address is free again, and the next grant has
    // a higher epoch than every earlier one.
    let mut e3 = ephemeral(12, false);
    w.run(expires + GRACE - w.now(), &mut [&mut e2]);
    assert!(w.issuer.table().is_free(w.now(), c1.address));
    let c3 = w.join(&mut e3, 12).unwrap();
    assert!(c3.epoch > c1.epoch && c3.epoch > c2.epoch);
    w.start_node(&mut e3, 12, &c3);
    w.run(2 * SECOND, &mut [&mut e2, &mut e3]);
    assert_eq!(w.resolves(w.b, "job-12"), Some(c3.address));
    assert_eq!(w.resolves(w.b, "job-11"), Some(c2.address));
}

#[test]
fn an_expired_holder_that_keeps_squatting_loses_to_the_next_holder_of_its_address() {
    let mut w = World::new(2);
    let mut squatter = ephemeral(20, true);
    let c1 = w.join(&mut squatter, 20).unwrap();
    w.start_node(&mut squatter, 20, &c1);
    w.run(2 * SECOND, &mut [&mut squatter]);
    assert_eq!(w.resolves(w.i, "job-20"), Some(c1.address));
    // The squatter's renewals stop reaching the issuer (it is cut off from it), but its node
    // keeps running on its old certificate.
    let idx = squatter.node.unwrap();
    w.run(LEASE + GRACE + SECOND, &mut []);
    assert!(w.issuer.table().is_free(w.now(), c1.address));
    // Its lease is over everywhere: the mesh dropped it.
    assert!(w.resolves(w.i, "job-20").is_none());
    assert!(w.resolves(w.b, "job-20").is_none());
    // The next holder asks for that very address (as a previous holder's hint would).
    let mut next = ephemeral(21, false);
    let join = next
        .holder
        .start_join(w.now(), a("fd00::1"), &[21; 32])
        .unwrap();
    let LeaseBody::Join { name, proof, .. } = &join.body else {
        panic!("not a join");
    };
    let session = JoinSession {
        token: 21,
        holder_key: key(21).public(),
        binding: [21; 32],
    };
    let now = w.now();
    assert_eq!(
        w.issuer.handle_join(
            now,
            session,
            join.xid,
            c1.address,
            name,
            proof.as_ref(),
            |_| None,
            |_| false
        ),
        None
    );
    let (generation, _) = w.issuer.poll_persist(now, 0).unwrap();
    let grant = w.issuer.leases_persisted(generation).pop().unwrap().1;
    let Some(HolderOutput::Bound { cert: c2, .. }) =
        next.holder.handle_message(now, a("fd00::1"), &grant).pop()
    else {
        panic!("not bound");
    };
    assert_eq!(c2.address, c1.address);
    assert!(c2.epoch > c1.epoch);
    w.start_node(&mut next, 21, &c2);
    w.run(3 * SECOND, &mut [&mut next]);
    for at in [w.i, w.b] {
        assert_eq!(w.resolves(at, "job-21"), Some(c2.address));
        assert!(w.resolves(at, "job-20").is_none());
    }
    // The squatter is still running but has no session with the backbone.
    let squatter_peers = w
        .sim
        .node(idx)
        .unwrap()
        .sessions()
        .filter(|s| s.is_established())
        .count();
    assert_eq!(squatter_peers, 0);
    assert_eq!(w.sim.trace(w.i, next.node.unwrap()).unwrap().len(), 3);
}
