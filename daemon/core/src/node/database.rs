//! The link-state database: accepting, storing and flooding updates, originating this node's
//! own, and removing dead origins.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use connectopus_wire::{
    Adjacency, Cost, LinkStateUpdate, LsuExtension, Record, RecordKind, SignedUpdate,
};

use super::{Event, Node, UpdateRejection};
use crate::LinkId;
use crate::identity::{self, CertificateError, PublicKey};
use crate::session::CloseReason;
use crate::time::Time;

/// One origin's latest update.
#[derive(Debug, Clone)]
pub(super) struct DatabaseEntry {
    pub(super) update: LinkStateUpdate,
    /// The record body exactly as received, for verbatim flooding.
    pub(super) raw: Arc<[u8]>,
    pub(super) received_at: Time,
    /// The key whose signature was verified, if the node checks signatures.
    pub(super) key: Option<PublicKey>,
    /// The origin is an ephemeral node: a lease certificate, not a static grant, admitted it.
    pub(super) ephemeral: bool,
}

impl Node {
    /// Test support: sends `raw` (a signed-update container, see
    /// [`identity::sign_update`]) as an update record on every established session, exactly as
    /// if this node flooded it, so tests can play a member that forges or replays updates.
    #[doc(hidden)]
    pub fn flood_raw_update_for_test(&mut self, now: Time, raw: &[u8]) {
        let mut framed = Vec::new();
        encode_update_record(raw, &mut framed);
        for session in self.sessions.values_mut() {
            if session.is_established() {
                let _ = session.send_record(&framed);
            }
        }
        self.after_input(now);
    }

    /// Test support: returns the stored signed-update container of `origin` (this node's own
    /// latest update for its own address), byte for byte as flooded.
    #[doc(hidden)]
    pub fn raw_update_for_test(&self, origin: Ipv6Addr) -> Option<Vec<u8>> {
        if origin == self.config.address {
            return Some(self.own_update.to_vec());
        }
        self.database.get(&origin).map(|e| e.raw.to_vec())
    }

    pub(super) fn reject_update(&mut self, reason: UpdateRejection) {
        *self.counters.updates_rejected.entry(reason).or_default() += 1;
    }

    pub(super) fn process_update(&mut self, now: Time, from: LinkId, body: Vec<u8>) {
        let Ok(signed) = SignedUpdate::parse(&body) else {
            self.reject_update(UpdateRejection::Malformed);
            return;
        };
        let Ok(update) = LinkStateUpdate::parse_body(signed.body) else {
            self.reject_update(UpdateRejection::Malformed);
            return;
        };
        if update.origin == self.config.address {
            self.reject_update(UpdateRejection::OwnOrigin);
            return;
        }
        // With a trust policy: only the key granted the origin address may speak for it. This
        // is checked before the (epoch, sequence) comparison, and nothing is stored before the
        // signature verifies, so a forged update can never raise the stored sequence.
        //
        // An origin no static grant names may be an ephemeral node: its update must carry a
        // lease certificate (LSU extension kind 1) whose holder key signed it; the certificate
        // is checked fully (issuer, pool, superseded, expired) once the update is known to be
        // news.
        let mut verified_key = None;
        let mut lease = None;
        if self.config.trust.is_some() {
            let granted = match self.trusted_addresses.get(&update.origin) {
                Some(granted) => *granted,
                None => match update.lease_certificate() {
                    Some(Ok(cert)) => {
                        let holder = cert.holder_key;
                        lease = Some(cert);
                        Some(holder)
                    }
                    Some(Err(_)) => {
                        self.reject_update(UpdateRejection::BadLease);
                        return;
                    }
                    None => None,
                },
            };
            let Some(granted) = granted else {
                self.reject_update(UpdateRejection::UnknownOrigin);
                return;
            };
            let Some(signature) = signed.signature else {
                self.reject_update(UpdateRejection::Unsigned);
                return;
            };
            if signature.key != granted {
                self.reject_update(UpdateRejection::WrongKey);
                return;
            }
            verified_key = Some((granted, signature.signature));
        }
        let incoming = (update.epoch, update.sequence);
        if let Some(known) = self.database.get(&update.origin) {
            let stored = (known.update.epoch, known.update.sequence);
            if incoming == stored {
                self.reject_update(UpdateRejection::Duplicate);
                return;
            }
            if incoming < stored {
                self.reject_update(UpdateRejection::Stale);
                return;
            }
        } else if let Some(last) = self.pruned.get(&update.origin)
            && incoming <= last
        {
            self.reject_update(UpdateRejection::Stale);
            return;
        }
        if let (Some(cert), Some((key, _))) = (&lease, &verified_key)
            && let Err(error) = self.check_lease(cert, Self::update_claim(key, &update), now)
        {
            self.reject_update(match error {
                CertificateError::Superseded | CertificateError::Expired => {
                    UpdateRejection::ExpiredLease
                }
                _ => UpdateRejection::BadLease,
            });
            return;
        }
        let ephemeral = lease.is_some();
        let key = match verified_key {
            None => None,
            Some((key, signature)) => {
                if !identity::verify(&key, &identity::update_message(signed.body), &signature) {
                    self.reject_update(UpdateRejection::BadSignature);
                    return;
                }
                if !self.update_authorized(&key, &update, ephemeral) {
                    self.reject_update(UpdateRejection::UnauthorizedContent);
                    return;
                }
                Some(key)
            }
        };
        if !self.mesh_prefix_content_allowed(&update) {
            self.reject_update(UpdateRejection::UnauthorizedContent);
            return;
        }
        if let Some(cert) = &lease {
            self.sightings.record(cert, now);
        }
        self.counters.updates_accepted += 1;
        self.pruned.remove(&update.origin);
        let origin = update.origin;
        if update.config_version < self.config.config_version {
            self.offer_config_to(now, origin);
        }
        let raw: Arc<[u8]> = Arc::from(body);
        let previous = self.database.insert(
            origin,
            DatabaseEntry {
                update: update.clone(),
                raw: raw.clone(),
                received_at: now,
                key,
                ephemeral,
            },
        );
        self.absorb_mesh_prefixes(now, &update);
        let topology_changed = match &previous {
            None => {
                self.events.push_back(Event::NodeLearned {
                    address: origin,
                    name: update.name.clone(),
                });
                true
            }
            Some(old) => {
                old.update.adjacencies != update.adjacencies
                    || old.update.prefixes != update.prefixes
                    || old.update.names != update.names
                    || old.update.names4 != update.names4
                    || old.update.name != update.name
            }
        };
        if topology_changed {
            self.schedule_spf(now);
        }
        let mut framed = Vec::new();
        encode_update_record(&raw, &mut framed);
        let targets: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(link, s)| {
                **link != from
                    && s.is_established()
                    && s.peer()
                        .is_some_and(|p| p.address != origin && !p.address.is_unspecified())
            })
            .map(|(link, _)| *link)
            .collect();
        for link in targets {
            let failed = self
                .sessions
                .get_mut(&link)
                .is_some_and(|s| s.send_record(&framed).is_err());
            if failed {
                self.close_session(now, link, CloseReason::StreamFailed, true);
            }
        }
    }

    pub(super) fn trigger_update(&mut self, now: Time) {
        let at = now + self.config.timers.triggered_update_delay;
        if self.triggered_update_at.is_none_or(|t| at < t) {
            self.triggered_update_at = Some(at);
        }
    }

    pub(super) fn schedule_spf(&mut self, now: Time) {
        if self.spf_at.is_none() {
            self.spf_at = Some(now + self.config.timers.spf_delay);
        }
    }

    /// Builds, stores and floods this node's own update.
    pub(super) fn originate_update(&mut self, now: Time) {
        if self.config.address.is_unspecified() {
            // An ephemeral node without a lease originates nothing (it has no address).
            self.next_update_at = now + self.config.timers.update_interval;
            self.triggered_update_at = None;
            return;
        }
        self.own_sequence += 1;
        self.counters.updates_originated += 1;
        self.next_update_at = now + self.config.timers.update_interval;
        self.triggered_update_at = None;
        let mut best: BTreeMap<Ipv6Addr, Cost> = BTreeMap::new();
        for session in self.sessions.values() {
            if let (true, Some(peer)) = (session.is_established(), session.peer())
                && !peer.address.is_unspecified()
            {
                let cost = session.info().cost;
                best.entry(peer.address)
                    .and_modify(|c| *c = (*c).min(cost))
                    .or_insert(cost);
            }
        }
        let adjacencies: Vec<Adjacency> = best
            .into_iter()
            .map(|(peer, cost)| Adjacency { peer, cost })
            .collect();
        let mut update = LinkStateUpdate {
            origin: self.config.address,
            epoch: self.config.epoch,
            sequence: self.own_sequence,
            name: self.config.name.clone(),
            config_version: self.config.config_version,
            adjacencies: adjacencies.clone(),
            prefixes: self.own_prefixes(),
            names: self
                .config
                .names
                .iter()
                .cloned()
                .chain(self.container_names())
                .collect(),
            names4: self.own_names4(),
            extensions: self
                .own_certificate
                .iter()
                .map(|cert| LsuExtension {
                    kind: LsuExtension::LEASE_CERTIFICATE,
                    value: cert.to_vec(),
                })
                .collect(),
        };
        update.extensions.extend(self.own_delegated_extension(now));
        update.canonicalize();
        let body = update.encode_body();
        let raw: Arc<[u8]> = Arc::from(identity::sign_update(self.config.identity.as_ref(), &body));
        if adjacencies != self.own_adjacencies {
            self.own_adjacencies = adjacencies;
            self.schedule_spf(now);
        }
        self.own_update = raw.clone();
        let mut framed = Vec::new();
        encode_update_record(&raw, &mut framed);
        let targets: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.is_established() && s.peer().is_some_and(|p| !p.address.is_unspecified())
            })
            .map(|(link, _)| *link)
            .collect();
        for link in targets {
            let failed = self
                .sessions
                .get_mut(&link)
                .is_some_and(|s| s.send_record(&framed).is_err());
            if failed {
                self.close_session(now, link, CloseReason::StreamFailed, true);
            }
        }
    }

    pub(super) fn prune_dead_nodes(&mut self, now: Time) {
        self.pruned.expire(now);
        self.expire_offer_state(now);
        self.sightings
            .expire(now, self.config.timers.forget_pruned_after);
        let dead_after = self.config.timers.node_dead_after;
        // An ephemeral origin also leaves when its lease runs out (by this node's count), so a
        // vanished holder does not wait for the dead interval.
        let dead: Vec<(Ipv6Addr, &'static str)> = self
            .database
            .iter()
            .filter_map(|(a, e)| {
                if now - e.received_at >= dead_after {
                    return Some((*a, "dead node"));
                }
                let lease_over = e.ephemeral
                    && e.key.is_none_or(|k| {
                        self.current_lease(Self::update_claim(&k, &e.update), now)
                            .is_err()
                    });
                lease_over.then_some((*a, "lease over"))
            })
            .collect();
        for (address, why) in dead {
            if let Some(entry) = self.database.remove(&address) {
                tracing::debug!(node = %address, name = %entry.update.name, why, "removing origin");
                self.pruned
                    .insert(address, (entry.update.epoch, entry.update.sequence), now);
                self.events.push_back(Event::NodePruned { address });
                self.schedule_spf(now);
            }
        }
    }
}

pub(super) fn encode_update_record(raw: &[u8], out: &mut Vec<u8>) {
    Record {
        kind: RecordKind::LinkStateUpdate,
        body: raw.to_vec(),
    }
    .encode_into(out);
}
