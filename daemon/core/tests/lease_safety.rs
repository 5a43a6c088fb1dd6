//! The safety argument of `docs/dynamic-mesh.md` §1.2 on the real `LeaseIssuer` and
//! `LeaseHolder`: random joins, renewals, releases and crashes of holders, lost messages, and
//! issuer restarts with and without their persisted table. After every step:
//! - no two live holders are bound to one address (§1.9 invariant 1);
//! - every bound holder's lease is covered at the issuer: the table holds it with the same key
//!   and epoch and expires no earlier, or the table is quarantined past the holder's expiry
//!   (invariant 3);
//! - grant epochs strictly increase over all grants, across restarts (invariant 4).

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use proptest::prelude::*;

use connectopus_core::identity::NodeKey;
use connectopus_core::lease_holder::{HolderOutput, HolderState, JoinConfig, LeaseHolder};
use connectopus_core::lease_issuer::{IssuerConfig, JoinPolicy, JoinSession, LeaseIssuer};
use connectopus_core::lease_table::{LeaseTable, LeaseTableConfig, PersistedLeases};
use connectopus_core::time::Time;
use connectopus_wire::{LeaseBody, LeaseMessage};

const ISSUER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const HOLDERS: u8 = 6;

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

#[derive(Debug, Clone)]
enum Step {
    /// Let time pass (ms); every live holder runs its timers, renewals travel.
    Wait(u64),
    Join(u8),
    Crash(u8),
    Revive(u8),
    Release(u8),
    RestartIssuer {
        with_disk: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (50u64..3_000).prop_map(Step::Wait),
        3 => (0..HOLDERS).prop_map(Step::Join),
        1 => (0..HOLDERS).prop_map(Step::Crash),
        1 => (0..HOLDERS).prop_map(Step::Revive),
        1 => (0..HOLDERS).prop_map(Step::Release),
        1 => any::<bool>().prop_map(|with_disk| Step::RestartIssuer { with_disk }),
    ]
}

struct Model {
    now: Time,
    config: IssuerConfig,
    issuer: LeaseIssuer,
    disk: Option<PersistedLeases>,
    holders: Vec<Option<LeaseHolder>>,
    last_epoch: u64,
    /// Deterministic message loss: every `loss_every`th message is lost.
    loss_every: u64,
    sent: u64,
}

impl Model {
    fn unix_ms(&self) -> u64 {
        1_700_000_000_000
            + u64::try_from(self.now.saturating_since(Time::ZERO).as_millis()).unwrap()
    }

    /// The issuer's routing epoch now: the wall clock in nanoseconds, like the daemon's
    /// (`next_epoch` in the daemon also keeps it above the last one recorded). Without its
    /// table, an issuer relies on this being above every epoch it granted before: grants count
    /// up from the floor one by one, far slower than nanoseconds pass.
    fn epoch_floor(&self) -> u64 {
        self.unix_ms() * 1_000_000
    }

    fn lost(&mut self) -> bool {
        self.sent += 1;
        self.loss_every > 0 && self.sent.is_multiple_of(self.loss_every)
    }

    fn holder(n: u8) -> LeaseHolder {
        LeaseHolder::new(
            JoinConfig {
                name: format!("job-{n}"),
                join_key: None,
            },
            key(10 + n),
            u64::from(n) << 40,
        )
    }

    fn new(loss_every: u64) -> Self {
        let mut policy = JoinPolicy::default();
        for n in 0..HOLDERS {
            policy.identities.insert(key(10 + n).public());
        }
        let config = IssuerConfig {
            address: ISSUER,
            table: LeaseTableConfig {
                // 7 usable addresses for 6 holders: addresses are reused all the time.
                pool: "fd00:0:0:e1::/125".parse().unwrap(),
                lease: Duration::from_secs(10),
                grace: Duration::from_secs(3),
            },
            policy,
            epoch_floor: 0,
        };
        let mut m = Self {
            now: Time::ZERO + Duration::from_secs(1),
            issuer: LeaseIssuer::fresh(config.clone(), Some(key(1))),
            config,
            disk: None,
            holders: (0..HOLDERS).map(|n| Some(Self::holder(n))).collect(),
            last_epoch: 0,
            loss_every,
            sent: 0,
        };
        m.config.epoch_floor = m.epoch_floor();
        m.issuer = LeaseIssuer::fresh(m.config.clone(), Some(key(1)));
        m
    }

    /// Persists whatever the issuer asks to, and delivers the grants it releases.
    fn persist(&mut self) -> Vec<LeaseMessage> {
        let Some((generation, table)) = self.issuer.poll_persist(self.now, self.unix_ms()) else {
            return Vec::new();
        };
        self.disk = Some(table);
        self.issuer
            .leases_persisted(generation)
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    fn deliver_to_holder(&mut self, n: u8, message: &LeaseMessage) {
        if self.lost() {
            return;
        }
        if let LeaseBody::Grant { cert, .. } = &message.body {
            assert!(cert.epoch > self.last_epoch, "grant epochs grow");
            self.last_epoch = cert.epoch;
        }
        let now = self.now;
        if let Some(h) = self.holders[usize::from(n)].as_mut() {
            h.handle_message(now, ISSUER, message);
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Wait(ms) => {
                let end = self.now + Duration::from_millis(ms);
                // Holders run their timers at their deadlines, so none is late to let go.
                loop {
                    let next = self
                        .holders
                        .iter()
                        .flatten()
                        .filter_map(LeaseHolder::poll_timeout)
                        .filter(|t| *t <= end)
                        .min();
                    let Some(at) = next else { break };
                    self.now = self.now.max(at);
                    self.issuer.expire(self.now);
                    self.run_holder_timers();
                    self.check();
                }
                self.now = end;
                self.issuer.expire(self.now);
            }
            Step::Join(n) => {
                let now = self.now;
                let binding = [n; 32];
                let Some(join) = self.holders[usize::from(n)]
                    .as_mut()
                    .and_then(|h| h.start_join(now, ISSUER, &binding))
                else {
                    return;
                };
                if self.lost() {
                    return;
                }
                let LeaseBody::Join { hint, name, proof } = &join.body else {
                    unreachable!()
                };
                let session = JoinSession {
                    token: u64::from(n),
                    holder_key: key(10 + n).public(),
                    binding,
                };
                if let Some(refusal) = self.issuer.handle_join(
                    now,
                    session,
                    join.xid,
                    *hint,
                    name,
                    proof.as_ref(),
                    |_| None,
                    |_| false,
                ) {
                    self.deliver_to_holder(n, &refusal);
                }
                for grant in self.persist() {
                    self.deliver_to_holder(n, &grant);
                }
            }
            Step::Crash(n) => self.holders[usize::from(n)] = None,
            Step::Revive(n) => {
                let slot = &mut self.holders[usize::from(n)];
                if slot.is_none() {
                    *slot = Some(Self::holder(n));
                }
            }
            Step::Release(n) => {
                let Some(h) = self.holders[usize::from(n)].as_mut() else {
                    return;
                };
                let Some((_, message)) = h.release() else {
                    return;
                };
                if self.lost() {
                    return;
                }
                if let LeaseBody::Release {
                    address,
                    epoch,
                    holder_sig,
                } = message.body
                {
                    self.issuer
                        .handle_release(self.now, message.xid, address, epoch, &holder_sig);
                }
            }
            Step::RestartIssuer { with_disk } => {
                // A restart takes time (the old instance answers until it stops).
                self.apply(&Step::Wait(500));
                let mut config = self.config.clone();
                config.epoch_floor = self.epoch_floor();
                let disk = if with_disk { self.disk.as_ref() } else { None };
                let table = LeaseTable::restore(
                    config.table,
                    disk,
                    config.epoch_floor,
                    self.now,
                    self.unix_ms(),
                );
                self.issuer = LeaseIssuer::new(config, Some(key(1)), table);
                if !with_disk {
                    self.disk = None;
                }
            }
        }
        self.check();
    }

    fn run_holder_timers(&mut self) {
        let now = self.now;
        for n in 0..HOLDERS {
            let Some(h) = self.holders[usize::from(n)].as_mut() else {
                continue;
            };
            for out in h.handle_timeout(now) {
                let HolderOutput::Send { message, .. } = out else {
                    continue;
                };
                let LeaseBody::Renew { cert, holder_sig } = &message.body else {
                    continue;
                };
                if self.lost() {
                    continue;
                }
                let answer = self.issuer.handle_renew(now, message.xid, cert, holder_sig);
                self.deliver_to_holder(n, &answer);
            }
        }
    }

    fn check(&self) {
        let mut bound: Vec<(Ipv6Addr, u64, [u8; 32], Time)> = Vec::new();
        for h in self.holders.iter().flatten() {
            let (cert, expires) = match h.state() {
                HolderState::Bound { cert, expires, .. }
                | HolderState::Renewing { cert, expires, .. } => (cert, *expires),
                _ => continue,
            };
            // Timers run at their deadlines: a holder is never bound at or past its expiry.
            assert!(self.now < expires, "bound past its expiry");
            bound.push((cert.address, cert.epoch, cert.holder_key, expires));
        }
        for (i, x) in bound.iter().enumerate() {
            for y in &bound[i + 1..] {
                assert_ne!(x.0, y.0, "two live holders of one address: {x:?} {y:?}");
            }
            let table = self.issuer.table();
            let covered = table
                .lease_at(x.0)
                .is_some_and(|l| l.key == x.2 && l.epoch == x.1 && l.expires >= x.3);
            let quarantined = table
                .quarantined(self.now)
                .is_some_and(|until| until >= x.3);
            assert!(
                covered || quarantined,
                "holder {x:?} not covered at the issuer: {:?}",
                table.lease_at(x.0)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("LEASE_SAFETY_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn no_two_live_holders_and_every_holder_covered_at_its_issuer(
        steps in proptest::collection::vec(step(), 1..120),
        loss_every in prop_oneof![Just(0u64), 2u64..7],
    ) {
        let mut m = Model::new(loss_every);
        for s in &steps {
            m.apply(s);
        }
    }
}
