//! Identity checks: hellos and updates against the trust policy (static grants, and lease
//! certificates for ephemeral nodes, `docs/dynamic-mesh.md` §1.6), and policy changes at run
//! time.

use std::net::Ipv6Addr;

use connectopus_wire::{LeaseCertificate, LinkStateUpdate};

use super::{Event, Node};
use crate::LinkId;
use crate::identity::{self, CertificateError, Claim, Grant, PublicKey, TrustPolicy};
use crate::session::CloseReason;
use crate::time::Time;

/// What the trust policy makes of a hello whose claims it grants.
pub(super) enum HelloCheck {
    /// Accept it, with the peer key it proved (`None` without a policy) and, for an ephemeral
    /// peer, the lease certificate that grants its address and name.
    Verified(Option<PublicKey>, Option<Box<LeaseCertificate>>),
    /// Its signature cannot cover our challenge yet (see [`Node::check_hello`]).
    Unproven,
}

/// The value of a hello's extension `kind` when it appears exactly once.
pub(super) fn single_extension(hello: &connectopus_wire::Hello, kind: u8) -> Option<&[u8]> {
    let mut values = hello.extensions.iter().filter(|e| e.kind == kind);
    match (values.next(), values.next()) {
        (Some(e), None) => Some(e.value.as_slice()),
        _ => None,
    }
}

impl Node {
    /// Returns true if this node checks node keys (it has a trust policy).
    pub fn enforces_identity(&self) -> bool {
        self.config.trust.is_some()
    }

    /// Replaces the trust policy at run time (a new configuration: revoked, added or changed
    /// keys). Sessions whose peer key is no longer granted its address and name (or is revoked)
    /// are closed with [`CloseReason::PeerRejected`]; database entries whose origin's key or
    /// content is no longer granted are dropped and remembered like pruned origins, so their old
    /// updates are not taken back; routes and names are recomputed at once. `None` turns the
    /// checks off (existing sessions and entries stay).
    pub fn set_trust(&mut self, now: Time, trust: Option<TrustPolicy>) {
        self.trusted_addresses = trust
            .as_ref()
            .map(TrustPolicy::address_index)
            .unwrap_or_default();
        self.issuers = trust.as_ref().map(TrustPolicy::issuers).unwrap_or_default();
        self.config.trust = trust;
        if let Some(trust) = self.config.trust.as_ref() {
            let refused: Vec<LinkId> = self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.peer().is_some_and(|p| {
                        if p.address.is_unspecified() {
                            // A joining session: the issuer checks the joiner, not the policy.
                            return false;
                        }
                        let Some(key) = p.key.as_ref() else {
                            return true;
                        };
                        match trust.grants.get(key) {
                            Some(_) => !trust
                                .by_key(key)
                                .is_some_and(|g| g.address == p.address && g.name == p.name),
                            None => self
                                .current_lease(
                                    Claim {
                                        key,
                                        address: p.address,
                                        name: &p.name,
                                        epoch: p.epoch,
                                    },
                                    now,
                                )
                                .is_err(),
                        }
                    })
                })
                .map(|(link, _)| *link)
                .collect();
            let dropped: Vec<Ipv6Addr> = self
                .database
                .values()
                .filter(|e| {
                    let Some(key) = e.key else {
                        return true;
                    };
                    let granted = self
                        .trusted_addresses
                        .get(&e.update.origin)
                        .copied()
                        .flatten();
                    if e.ephemeral {
                        granted.is_some()
                            || self
                                .current_lease(Self::update_claim(&key, &e.update), now)
                                .is_err()
                            || !self.update_authorized(&key, &e.update, true)
                    } else {
                        granted != Some(key) || !self.update_authorized(&key, &e.update, false)
                    }
                })
                .map(|e| e.update.origin)
                .collect();
            for link in refused {
                self.close_session(now, link, CloseReason::PeerRejected, true);
            }
            for address in dropped {
                if let Some(entry) = self.database.remove(&address) {
                    tracing::debug!(node = %address, "dropping origin no longer trusted");
                    self.pruned
                        .insert(address, (entry.update.epoch, entry.update.sequence), now);
                    self.events.push_back(Event::NodePruned { address });
                }
            }
        }
        self.spf_at = None;
        self.recompute_routes();
        self.after_input(now);
    }

    /// Returns true if the trust policy grants `key` everything `update` claims: by its
    /// static grant, or for an `ephemeral` origin (its certificate already checked) just its
    /// own /128 and name.
    pub(super) fn update_authorized(
        &self,
        key: &PublicKey,
        update: &LinkStateUpdate,
        ephemeral: bool,
    ) -> bool {
        let Some(trust) = self.config.trust.as_ref() else {
            return false;
        };
        if ephemeral {
            return Grant::new(update.name.clone(), update.origin)
                .check_update(update, &trust.reserved_names)
                .is_none();
        }
        let Some(grant) = trust.by_key(key) else {
            return false;
        };
        let default = super::mesh_prefix::default_prefix();
        if self.is_egress_delegator(update.origin)
            && update.prefixes.iter().any(|p| p.prefix == default)
            && !grant.allows_prefix(&default)
        {
            // An egress delegator advertises `::/0` (`global.delegated[].egress`); nothing
            // else grants it that.
            let mut grant = grant.clone();
            grant.prefixes.push(default);
            return grant.check_update(update, &trust.reserved_names).is_none();
        }
        grant.check_update(update, &trust.reserved_names).is_none()
    }

    /// What an update claims for its origin, signed by `key`.
    pub(super) fn update_claim<'a>(key: &'a PublicKey, update: &'a LinkStateUpdate) -> Claim<'a> {
        Claim {
            key,
            address: update.origin,
            name: &update.name,
            epoch: update.epoch,
        }
    }

    /// Checks a lease certificate against the policy and what this node has seen of its
    /// address: it must make its holder the member `claim` describes at `now`.
    pub(super) fn check_lease(
        &self,
        cert: &LeaseCertificate,
        claim: Claim<'_>,
        now: Time,
    ) -> Result<(), CertificateError> {
        let trust = self
            .config
            .trust
            .as_ref()
            .ok_or(CertificateError::UnknownIssuer)?;
        trust.check_certificate(&self.issuers, cert, claim)?;
        self.sightings.check(cert, now)
    }

    /// Checks that the latest certificate seen for `claim.address` still makes `claim` a
    /// member at `now` (for sessions and database entries admitted earlier).
    pub(super) fn current_lease(
        &self,
        claim: Claim<'_>,
        now: Time,
    ) -> Result<(), CertificateError> {
        let seen = self
            .sightings
            .get(claim.address)
            .ok_or(CertificateError::Expired)?;
        let cert = seen.cert.clone();
        self.check_lease(&cert, claim, now)
    }

    /// Closes established sessions whose ephemeral peer's lease ran out (superseded, expired
    /// or no longer granted): such a peer sends no hello that would be refused.
    pub(super) fn close_expired_lease_sessions(&mut self, now: Time) {
        let Some(trust) = self.config.trust.as_ref() else {
            return;
        };
        let expired: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                // A joining peer (address `::`) has no lease yet; its session has its own limit.
                s.peer().is_some_and(|p| {
                    !p.address.is_unspecified()
                        && p.key.as_ref().is_some_and(|key| {
                            !trust.grants.contains_key(key)
                                && self
                                    .current_lease(
                                        Claim {
                                            key,
                                            address: p.address,
                                            name: &p.name,
                                            epoch: p.epoch,
                                        },
                                        now,
                                    )
                                    .is_err()
                        })
                })
            })
            .map(|(link, _)| *link)
            .collect();
        for link in expired {
            *self
                .counters
                .hellos_rejected
                .entry("expired_lease")
                .or_default() += 1;
            self.close_session(now, link, CloseReason::LeaseExpired, true);
        }
    }

    /// Returns how many addresses' lease certificates this node remembers.
    pub fn lease_sightings(&self) -> usize {
        self.sightings.len()
    }

    /// The earliest time after `now` a lease of an ephemeral peer runs out (the next check of
    /// [`Node::close_expired_lease_sessions`]).
    pub(super) fn next_peer_lease_expiry(&self, now: Time) -> Option<Time> {
        let trust = self.config.trust.as_ref()?;
        self.sessions
            .values()
            .filter_map(|s| s.peer())
            .filter(|p| {
                p.key
                    .as_ref()
                    .is_some_and(|k| !trust.grants.contains_key(k))
            })
            .filter_map(|p| self.sightings.get(p.address))
            .map(|seen| seen.expires() + std::time::Duration::from_millis(1))
            .filter(|t| *t > now)
            .min()
    }

    /// The node key and signature a hello carries (each extension exactly once), or why not:
    /// `no_key`, or `own_key` when the key is this node's own.
    pub(super) fn hello_key(
        &self,
        hello: &connectopus_wire::Hello,
    ) -> Result<(PublicKey, [u8; 64]), &'static str> {
        use connectopus_wire::HelloExtension;
        let value = |kind: u8| single_extension(hello, kind);
        let key: PublicKey = value(HelloExtension::NODE_KEY)
            .and_then(|v| v.try_into().ok())
            .ok_or("no_key")?;
        let signature: [u8; 64] = value(HelloExtension::SIGNATURE)
            .and_then(|v| v.try_into().ok())
            .ok_or("no_key")?;
        if self
            .config
            .identity
            .as_ref()
            .is_some_and(|own| own.public() == key)
        {
            return Err("own_key");
        }
        Ok((key, signature))
    }

    /// Checks a hello against the trust policy; returns the verified peer key, or why the hello
    /// is refused. Without a policy every hello passes, with no key.
    ///
    /// On a link without a channel binding, a hello that does not echo our session id was sent
    /// before the peer saw our hello, so its signature cannot cover our challenge yet: its
    /// claims are checked, its signature is not, and it is [`HelloCheck::Unproven`].
    pub(super) fn check_hello(
        &self,
        now: Time,
        link: LinkId,
        hello: &connectopus_wire::Hello,
    ) -> Result<HelloCheck, &'static str> {
        use connectopus_wire::HelloExtension;
        let Some(trust) = self.config.trust.as_ref() else {
            return Ok(HelloCheck::Verified(None, None));
        };
        let Some(session) = self.sessions.get(&link) else {
            return Err("no_session");
        };
        let (key, signature) = self.hello_key(hello)?;
        if trust.revoked.contains(&key) {
            return Err("revoked_key");
        }
        let mut lease = None;
        match trust.grants.get(&key) {
            Some(grant) => {
                if grant.address != hello.address {
                    return Err("address_mismatch");
                }
                if grant.name != hello.name {
                    return Err("name_mismatch");
                }
            }
            // Not a static node: an ephemeral one, if a current lease certificate grants it
            // this address and name.
            None => {
                let raw = single_extension(hello, HelloExtension::LEASE_CERTIFICATE)
                    .ok_or("unknown_key")?;
                let cert = LeaseCertificate::parse(raw).map_err(|_| "bad_lease")?;
                let claim = Claim {
                    key: &key,
                    address: hello.address,
                    name: &hello.name,
                    epoch: hello.epoch,
                };
                self.check_lease(&cert, claim, now)
                    .map_err(CertificateError::reason)?;
                lease = Some(Box::new(cert));
            }
        }
        if session
            .info()
            .expected_peer
            .as_ref()
            .is_some_and(|expected| *expected != hello.name)
        {
            return Err("unexpected_peer");
        }
        if session.verifies_by_challenge() && hello.echo_session_id != session.local_session_id() {
            return Ok(HelloCheck::Unproven);
        }
        let message = identity::hello_message(
            &session.verifying_binding(),
            hello.session_id,
            hello.epoch,
            hello.address,
            &hello.name,
        );
        if !identity::verify(&key, &message, &signature) {
            return Err("bad_signature");
        }
        Ok(HelloCheck::Verified(Some(key), lease))
    }
}
