//! Identity checks: hellos and updates against the trust policy, and policy changes at run
//! time.

use std::net::Ipv6Addr;

use connectopus_wire::LinkStateUpdate;

use super::{Event, Node};
use crate::LinkId;
use crate::identity::{self, PublicKey, TrustPolicy};
use crate::session::CloseReason;
use crate::time::Time;

/// What the trust policy makes of a hello whose claims it grants.
pub(super) enum HelloCheck {
    /// Accept it, with the peer key it proved (`None` without a policy).
    Verified(Option<PublicKey>),
    /// Its signature cannot cover our challenge yet (see [`Node::check_hello`]).
    Unproven,
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
        self.config.trust = trust;
        if let Some(trust) = self.config.trust.as_ref() {
            let refused: Vec<LinkId> = self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.peer().is_some_and(|p| {
                        let granted = p.key.as_ref().and_then(|k| trust.by_key(k));
                        !granted.is_some_and(|g| g.address == p.address && g.name == p.name)
                    })
                })
                .map(|(link, _)| *link)
                .collect();
            let dropped: Vec<Ipv6Addr> = self
                .database
                .values()
                .filter(|e| {
                    let granted = self
                        .trusted_addresses
                        .get(&e.update.origin)
                        .copied()
                        .flatten();
                    !(e.key.is_some()
                        && e.key == granted
                        && e.key.is_some_and(|k| self.update_authorized(&k, &e.update)))
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

    /// Returns true if the trust policy grants `key` everything `update` claims.
    pub(super) fn update_authorized(&self, key: &PublicKey, update: &LinkStateUpdate) -> bool {
        self.config
            .trust
            .as_ref()
            .and_then(|t| t.by_key(key))
            .is_some_and(|g| g.check_update(update).is_none())
    }

    /// Checks a hello against the trust policy; returns the verified peer key, or why the hello
    /// is refused. Without a policy every hello passes, with no key.
    ///
    /// On a link without a channel binding, a hello that does not echo our session id was sent
    /// before the peer saw our hello, so its signature cannot cover our challenge yet: its
    /// claims are checked, its signature is not, and it is [`HelloCheck::Unproven`].
    pub(super) fn check_hello(
        &self,
        link: LinkId,
        hello: &connectopus_wire::Hello,
    ) -> Result<HelloCheck, &'static str> {
        use connectopus_wire::HelloExtension;
        let Some(trust) = self.config.trust.as_ref() else {
            return Ok(HelloCheck::Verified(None));
        };
        let Some(session) = self.sessions.get(&link) else {
            return Err("no_session");
        };
        let value = |kind: u8| {
            let mut values = hello.extensions.iter().filter(|e| e.kind == kind);
            match (values.next(), values.next()) {
                (Some(e), None) => Some(e.value.as_slice()),
                _ => None,
            }
        };
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
        if trust.revoked.contains(&key) {
            return Err("revoked_key");
        }
        let grant = trust.grants.get(&key).ok_or("unknown_key")?;
        if grant.address != hello.address {
            return Err("address_mismatch");
        }
        if grant.name != hello.name {
            return Err("name_mismatch");
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
        Ok(HelloCheck::Verified(Some(key)))
    }
}
