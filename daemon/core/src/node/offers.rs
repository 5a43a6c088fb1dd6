//! Configuration offers from neighbours, gated before the driver checks them.
//!
//! Checking an offer costs the driver a signature verification and a parse of up to a whole
//! configuration (64 MiB), so a member that sends offers with forged high versions must not
//! get one check per offer. Before an offer becomes an [`Event::ConfigOffered`]:
//! - an offer whose configuration bytes equal the running configuration's is dropped (a
//!   replay of what the node already runs, whatever version it claims);
//! - so is one identical (configuration and signature) to the last one this peer's offers
//!   produced, whose check the driver already did;
//! - each peer (by address) gets at most one offer checked per `offer_interval`; an offer that
//!   arrives sooner waits in the peer's single pending slot (a later offer replaces it), and is
//!   released when the interval has passed, so a real new version is delayed, never lost.
//!
//! When a peer's last session closes its pending offer is dropped; the rest of its state (when
//! its next offer may go, the digest of its last one) is kept while it is connected or until
//! its interval has passed, so reconnecting does not buy a peer an extra check.

use std::net::Ipv6Addr;

use sha2::{Digest, Sha256};

use super::{Event, Node};
use crate::LinkId;
use crate::time::Time;

/// One peer's offer state.
#[derive(Debug, Default)]
pub(super) struct PeerOffers {
    /// When the next offer from this peer may be handed to the driver.
    next_at: Option<Time>,
    /// The latest offer that arrived too soon.
    pending: Option<Offer>,
    /// Digest of the last offer handed to the driver from this peer.
    last: Option<[u8; 32]>,
}

#[derive(Debug)]
struct Offer {
    link: LinkId,
    version: u64,
    config: Vec<u8>,
    signature: Vec<u8>,
}

fn digest(config: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update((config.len() as u64).to_be_bytes());
    d.update(config);
    d.update(signature);
    d.finalize().into()
}

impl Node {
    /// Takes a configuration offer record that arrived on `link`.
    pub(super) fn process_offer(&mut self, now: Time, link: LinkId, body: &[u8]) {
        let Ok(offer) = connectopus_wire::ConfigOffer::parse(body) else {
            *self
                .counters
                .malformed_messages
                .entry("config_offer")
                .or_default() += 1;
            return;
        };
        let Some(peer) = self
            .sessions
            .get(&link)
            .and_then(|s| s.peer())
            .map(|p| p.address)
        else {
            return;
        };
        // The peer has this version: it is never offered back to it nor waited for, and only a
        // version newer than the running and the pending one is news.
        if !self.offer_is_news(link, offer.version) {
            return;
        }
        if self.runs_config(offer.config) {
            self.count_offer("same_as_running");
            return;
        }
        let offer = Offer {
            link,
            version: offer.version,
            config: offer.config.to_vec(),
            signature: offer.signature.to_vec(),
        };
        let state = self.offers.entry(peer).or_default();
        if state.last == Some(digest(&offer.config, &offer.signature)) {
            self.count_offer("repeated");
            return;
        }
        if state.next_at.is_some_and(|t| now < t) {
            if state
                .pending
                .as_ref()
                .is_none_or(|p| p.version <= offer.version)
            {
                state.pending = Some(offer);
            }
            self.count_offer("deferred");
            return;
        }
        self.release_offer(now, peer, offer);
    }

    /// Hands the pending offers whose peer's interval has passed to the driver.
    pub(super) fn release_pending_offers(&mut self, now: Time) {
        let due: Vec<Ipv6Addr> = self
            .offers
            .iter()
            .filter(|(_, s)| s.pending.is_some() && s.next_at.is_none_or(|t| now >= t))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            let Some(offer) = self.offers.get_mut(&peer).and_then(|s| s.pending.take()) else {
                continue;
            };
            if offer.version <= self.config.config_version || self.runs_config(&offer.config) {
                continue;
            }
            if self.offers.get(&peer).and_then(|s| s.last)
                == Some(digest(&offer.config, &offer.signature))
            {
                continue;
            }
            self.release_offer(now, peer, offer);
        }
    }

    /// Returns when a pending offer is due.
    pub(super) fn next_offer_release(&self) -> Option<Time> {
        self.offers
            .values()
            .filter(|s| s.pending.is_some())
            .filter_map(|s| s.next_at)
            .min()
    }

    /// Drops `peer`'s pending offer if no session to it remains.
    pub(super) fn forget_offers_if_gone(&mut self, peer: Ipv6Addr) {
        let connected = self
            .sessions
            .values()
            .any(|s| s.peer().is_some_and(|p| p.address == peer));
        if !connected && let Some(state) = self.offers.get_mut(&peer) {
            state.pending = None;
        }
    }

    /// Forgets the state of peers that are gone and whose interval has passed.
    pub(super) fn expire_offer_state(&mut self, now: Time) {
        let connected: std::collections::BTreeSet<Ipv6Addr> = self
            .sessions
            .values()
            .filter_map(|s| s.peer().map(|p| p.address))
            .collect();
        self.offers.retain(|peer, state| {
            state.pending.is_some()
                || state.next_at.is_some_and(|t| now < t)
                || connected.contains(peer)
        });
    }

    fn release_offer(&mut self, now: Time, peer: Ipv6Addr, offer: Offer) {
        let state = self.offers.entry(peer).or_default();
        state.next_at = Some(now + self.config.timers.offer_interval);
        state.last = Some(digest(&offer.config, &offer.signature));
        self.count_offer("handed_to_driver");
        self.events.push_back(Event::ConfigOffered {
            link: offer.link,
            version: offer.version,
            config: offer.config,
            signature: offer.signature,
        });
    }

    /// Returns true if `config` is the configuration this node runs.
    fn runs_config(&self, config: &[u8]) -> bool {
        let Some(framed) = self.config_offer.as_deref() else {
            return false;
        };
        framed
            .get(connectopus_wire::record::RECORD_HEADER_LEN + 1..)
            .and_then(|body| connectopus_wire::ConfigOffer::parse(body).ok())
            .is_some_and(|running| running.config == config)
    }

    fn count_offer(&mut self, what: &'static str) {
        *self.counters.config_offers.entry(what).or_default() += 1;
    }
}
