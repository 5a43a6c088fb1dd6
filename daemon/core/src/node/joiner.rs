//! The holder side of ephemeral nodes (`docs/dynamic-mesh.md` §1.4, §1.5): an ephemeral node
//! starts without an address (`::`), sends join hellos (extension 4), asks the first issuer
//! that accepts its joining session for a lease, and re-addresses itself on the grant: new
//! address, name and epoch from the certificate, [`Command::SetAddress`], and every session
//! restarted in place (new session ids, so peers treat it as a restarted node). It renews on
//! its own timers, lets go of the address at its expiry (sessions restart as join hellos)
//! and releases it on shutdown. The decisions are [`LeaseHolder`]'s.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use connectopus_wire::{Hello, HelloExtension, LeaseCertificate, LeaseMessage};

use super::issuer::LeaseRoute;
use super::{Command, Event, LeaseEvent, Node, NodeConfig};
use crate::LinkId;
use crate::identity;
use crate::lease_holder::{HolderOutput, HolderState, LeaseHolder};
use crate::session::{Session, SessionIds};
use crate::time::Time;

/// A running ephemeral node's lease.
#[derive(Debug)]
pub(super) struct JoinerState {
    holder: LeaseHolder,
    /// The name it joins as.
    name: String,
    /// Issuers that refused (or did not answer), and when they may be asked again.
    retry_at: BTreeMap<Ipv6Addr, Time>,
}

impl JoinerState {
    /// Builds the holder a configuration asks for, and makes the node start without an
    /// address. Without an identity (the holder key) the node cannot join.
    pub(super) fn start(config: &mut NodeConfig) -> Option<Self> {
        let join = config.join.clone()?;
        let Some(key) = config.identity.clone() else {
            tracing::warn!("an ephemeral node needs a node key; not joining");
            return None;
        };
        config.address = Ipv6Addr::UNSPECIFIED;
        config.certificate = None;
        config.name = join.name.clone();
        Some(Self {
            name: join.name.clone(),
            holder: LeaseHolder::new(join, key, config.seed),
            retry_at: BTreeMap::new(),
        })
    }
}

/// Adds extension 4 ("join") to a hello sent without an address.
pub(super) fn mark_join_hello(hello: &mut Hello) {
    if hello.address.is_unspecified() {
        hello.extensions.push(HelloExtension {
            kind: HelloExtension::JOIN,
            value: vec![0],
        });
    }
}

impl Node {
    /// Returns the lease holder's state, if this is an ephemeral node.
    pub fn lease_state(&self) -> Option<&HolderState> {
        self.joiner.as_ref().map(|j| j.holder.state())
    }

    /// A session became established: a joining one (this node has no address yet) is a
    /// chance to join; any other gets the usual database synchronisation.
    pub(super) fn on_established_or_joining(&mut self, now: Time, link: LinkId) {
        if self.config.address.is_unspecified() {
            self.try_join(now);
        } else {
            self.on_established(now, link);
        }
    }

    /// Sends a Join on an established joining session, if the holder is unbound; issuers
    /// never asked (or whose retry time passed) first.
    fn try_join(&mut self, now: Time) {
        let Some(joiner) = self.joiner.as_ref() else {
            return;
        };
        if *joiner.holder.state() != HolderState::Unbound || !self.config.address.is_unspecified() {
            return;
        }
        let candidate = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_established())
            .filter_map(|(link, s)| s.peer().map(|p| (*link, p.address, s.signing_binding())))
            .filter(|(_, issuer, _)| joiner.retry_at.get(issuer).is_none_or(|t| *t <= now))
            .min_by_key(|(_, issuer, _)| joiner.retry_at.get(issuer).copied());
        let Some((link, issuer, binding)) = candidate else {
            return;
        };
        let Some(joiner) = self.joiner.as_mut() else {
            return;
        };
        if let Some(join) = joiner.holder.start_join(now, issuer, &binding) {
            self.count_lease("join_out");
            self.send_lease(now, LeaseRoute::Link(link), &join);
        }
    }

    /// Sends one more valid Join (new xid, the join-key proof) on every established joining
    /// session, and ignores the answers: a test playing a joiner that floods its issuers
    /// (see [`LeaseHolder::flood_join_for_test`]). Returns how many were sent.
    pub fn flood_join_for_test(&mut self, now: Time) -> usize {
        if !self.config.address.is_unspecified() {
            return 0;
        }
        let targets: Vec<(LinkId, Ipv6Addr, [u8; 32])> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_established())
            .filter_map(|(link, s)| s.peer().map(|p| (*link, p.address, s.signing_binding())))
            .collect();
        let mut sent = 0;
        for (link, issuer, binding) in targets {
            let Some(joiner) = self.joiner.as_mut() else {
                return sent;
            };
            if let Some(join) = joiner.holder.flood_join_for_test(now, issuer, &binding) {
                self.send_lease(now, LeaseRoute::Link(link), &join);
                sent += 1;
            }
        }
        sent
    }

    /// An issuer's answer (Grant, Renewed, Refuse) arrived from `issuer`.
    pub(super) fn holder_message(&mut self, now: Time, issuer: Ipv6Addr, message: &LeaseMessage) {
        let Some(joiner) = self.joiner.as_mut() else {
            self.count_lease("not_a_joiner");
            return;
        };
        let outputs = joiner.holder.handle_message(now, issuer, message);
        if outputs.is_empty() {
            self.count_lease("answer_ignored");
        }
        self.apply_holder_outputs(now, outputs);
    }

    fn apply_holder_outputs(&mut self, now: Time, outputs: Vec<HolderOutput>) {
        for output in outputs {
            match output {
                HolderOutput::Send { issuer, message } => {
                    let route = self.route_to_issuer(issuer);
                    self.count_lease("renew_out");
                    self.send_lease(now, route, &message);
                }
                HolderOutput::Bound { cert, expires } => {
                    if cert.address == self.config.address && cert.epoch == self.config.epoch {
                        self.renewed(now, cert, expires);
                    } else {
                        self.readdress(now, cert, expires);
                    }
                }
                HolderOutput::Lost => self.lose_address(now),
                HolderOutput::Refused {
                    issuer,
                    code,
                    retry_at,
                } => {
                    if let Some(joiner) = self.joiner.as_mut() {
                        joiner.retry_at.insert(issuer, retry_at);
                    }
                    self.count_lease("join_refused_in");
                    self.events.push_back(Event::Lease(LeaseEvent::JoinRefused {
                        issuer,
                        reason: code.as_str(),
                    }));
                }
            }
        }
    }

    /// The routing stream of an established (non-joining) session with `issuer`, else a
    /// control datagram to its port 0.
    fn route_to_issuer(&self, issuer: Ipv6Addr) -> LeaseRoute {
        self.sessions
            .iter()
            .find(|(_, s)| s.is_established() && s.peer().is_some_and(|p| p.address == issuer))
            .map_or(LeaseRoute::Datagram(issuer), |(link, _)| {
                LeaseRoute::Link(*link)
            })
    }

    /// A renewal: same address and epoch, a newer certificate to carry.
    fn renewed(&mut self, now: Time, cert: LeaseCertificate, expires: Time) {
        self.events.push_back(Event::Lease(LeaseEvent::Renewed {
            address: cert.address,
            expires,
        }));
        self.own_certificate = Some(Arc::from(cert.encode()));
        self.config.certificate = Some(cert);
        self.trigger_update(now);
    }

    /// A grant: the node becomes the certificate's address, name and epoch.
    fn readdress(&mut self, now: Time, cert: LeaseCertificate, expires: Time) {
        tracing::info!(address = %cert.address, name = %cert.name, issuer = %cert.issuer, "joined");
        self.config.address = cert.address;
        self.config.epoch = cert.epoch;
        self.config.name = cert.name.clone();
        self.own_certificate = Some(Arc::from(cert.encode()));
        // An earlier instance of this node (same key, lower epoch) is not another origin.
        if let Some(entry) = self.database.remove(&cert.address) {
            self.pruned.insert(
                cert.address,
                (entry.update.epoch, entry.update.sequence),
                now,
            );
        }
        self.commands.push_back(Command::SetAddress {
            address: Some(cert.address),
            expires: Some(expires),
        });
        self.events.push_back(Event::Lease(LeaseEvent::Joined {
            address: cert.address,
            name: cert.name.clone(),
            issuer: cert.issuer,
            expires,
        }));
        self.config.certificate = Some(cert);
        if let Some(joiner) = self.joiner.as_mut() {
            joiner.retry_at.clear();
        }
        self.restart_sessions(now);
        self.originate_update(now);
        self.schedule_spf(now);
    }

    /// The lease is gone: stop originating, drop the address, join again.
    fn lose_address(&mut self, now: Time) {
        let address = self.config.address;
        tracing::info!(%address, "lease lost");
        self.config.address = Ipv6Addr::UNSPECIFIED;
        self.config.certificate = None;
        self.own_certificate = None;
        if let Some(joiner) = self.joiner.as_ref() {
            self.config.name = joiner.name.clone();
        }
        self.commands.push_back(Command::SetAddress {
            address: None,
            expires: None,
        });
        self.events
            .push_back(Event::Lease(LeaseEvent::AddressLost { address }));
        // Without an address the node is in no one's topology: forget the mesh; the next
        // grant brings a fresh synchronisation.
        self.database.clear();
        self.restart_sessions(now);
        self.spf_at = None;
        self.recompute_routes();
    }

    /// Restarts every session in place with new ids (and hellos under the current address).
    fn restart_sessions(&mut self, now: Time) {
        let links: Vec<LinkId> = self.sessions.keys().copied().collect();
        for link in links {
            let Some(old) = self.sessions.remove(&link) else {
                continue;
            };
            self.offered.remove(&link);
            let session_id = self.random_nonzero();
            self.challenges_issued += 1;
            let challenge =
                identity::challenge(&self.config.challenge_secret, self.challenges_issued);
            let session = Session::new(
                link,
                old.info().clone(),
                self.config.timers.session,
                self.config.stream.clone(),
                self.config.record_limits,
                SessionIds {
                    session_id,
                    challenge,
                },
                now,
            );
            self.sessions.insert(link, session);
        }
        self.fastpath_dirty = true;
        self.own_adjacencies.clear();
    }

    /// On shutdown: releases the lease (on the issuer's stream, sent before the goodbyes, or
    /// as a datagram to its port 0).
    pub(super) fn release_lease(&mut self, now: Time) {
        let Some(joiner) = self.joiner.as_mut() else {
            return;
        };
        let Some((issuer, message)) = joiner.holder.release() else {
            return;
        };
        let route = self.route_to_issuer(issuer);
        self.count_lease("release_out");
        self.send_lease(now, route, &message);
        if let LeaseRoute::Link(link) = route {
            self.flush_session(now, link);
        }
    }

    /// The holder's timers, and a new Join when one is due.
    pub(super) fn joiner_timers(&mut self, now: Time) {
        let Some(joiner) = self.joiner.as_mut() else {
            return;
        };
        let outputs = joiner.holder.handle_timeout(now);
        joiner.retry_at.retain(|_, t| *t > now);
        self.apply_holder_outputs(now, outputs);
        self.try_join(now);
    }

    /// The holder's next timer, or the next time a refusing issuer may be asked again.
    pub(super) fn joiner_deadline(&self) -> Option<Time> {
        let joiner = self.joiner.as_ref()?;
        let retry = if *joiner.holder.state() == HolderState::Unbound {
            joiner.retry_at.values().copied().min()
        } else {
            None
        };
        [joiner.holder.poll_timeout(), retry]
            .into_iter()
            .flatten()
            .min()
    }
}
