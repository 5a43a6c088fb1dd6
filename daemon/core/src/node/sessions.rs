//! Sessions per link: links coming and going, link messages, hellos, establishment (with the
//! database synchronisation a new neighbour gets) and closing.

use std::net::Ipv6Addr;

use connectopus_wire::message::is_ip_packet;
use connectopus_wire::{LinkMessage, Record, RecordKind};

use super::trust::HelloCheck;
use super::{Command, Event, Node, Transmit, encode_update_record};
use crate::LinkId;
use crate::forward::Ingress;
use crate::identity;
use crate::session::{CloseReason, HelloOutcome, LinkInfo, Session, SessionIds};
use crate::time::Time;

impl Node {
    /// Reports a new link; the node starts a session on it.
    pub fn handle_link_up(&mut self, now: Time, link: LinkId, info: LinkInfo) {
        if self.sessions.contains_key(&link) {
            return;
        }
        let session_id = self.random_nonzero();
        self.challenges_issued += 1;
        let challenge = identity::challenge(&self.config.challenge_secret, self.challenges_issued);
        let session = Session::new(
            link,
            info,
            self.config.timers.session,
            self.config.stream.clone(),
            self.config.record_limits,
            SessionIds {
                session_id,
                challenge,
            },
            now,
        );
        tracing::debug!(%link, "link up");
        self.sessions.insert(link, session);
        self.after_input(now);
    }

    /// Reports that a link's transport is gone.
    pub fn handle_link_down(&mut self, now: Time, link: LinkId) {
        self.close_session(now, link, CloseReason::LinkDown, false);
        self.after_input(now);
    }

    /// Processes one message received on `link`. IPv6 packets are forwarded in place.
    pub fn handle_link_message(&mut self, now: Time, link: LinkId, message: &mut [u8]) {
        self.process_link_message(now, link, message);
        self.after_input(now);
    }

    pub(super) fn process_link_message(&mut self, now: Time, link: LinkId, message: &mut [u8]) {
        let Some(established) = self.sessions.get(&link).map(|s| s.is_established()) else {
            return;
        };
        if is_ip_packet(message) {
            if self.is_joining_session(link) {
                self.count_lease("not_joined");
                return;
            }
            let _ = established;
            let forwarded = self.forward_packet(now, message, Ingress::Link(link), None);
            self.queue_forwarded(forwarded, message);
            return;
        }
        let parsed = match LinkMessage::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                *self
                    .counters
                    .malformed_messages
                    .entry(error.as_str())
                    .or_default() += 1;
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        session.note_received(now, message.len());
        match parsed {
            LinkMessage::Ipv6(_) | LinkMessage::Ipv4(_) => {}
            LinkMessage::Hello(hello) => self.process_hello(now, link, &hello),
            LinkMessage::Keepalive(probe) => session.handle_keepalive(probe),
            LinkMessage::KeepaliveReply(reply) => session.handle_keepalive_reply(now, reply),
            LinkMessage::Segment(segment) => {
                let mut records = Vec::new();
                if session.handle_segment(now, &segment, &mut records).is_err() {
                    self.close_session(now, link, CloseReason::StreamFailed, true);
                    return;
                }
                for record in records {
                    self.process_record(now, link, record);
                }
            }
            LinkMessage::Control(datagram) => {
                if established && !self.is_joining_session(link) {
                    let _ = self.route_control_datagram(now, &datagram, Some(link));
                }
            }
            LinkMessage::Goodbye(_) => {
                self.close_session(now, link, CloseReason::PeerGoodbye, false);
            }
        }
    }

    pub(super) fn reject_hello(
        &mut self,
        now: Time,
        link: LinkId,
        claimed: Ipv6Addr,
        reason: &'static str,
    ) {
        tracing::debug!(%link, %claimed, reason, "hello rejected");
        *self.counters.hellos_rejected.entry(reason).or_default() += 1;
        self.events.push_back(Event::HelloRejected {
            link,
            claimed,
            reason,
        });
        self.close_session(now, link, CloseReason::PeerRejected, true);
    }

    pub(super) fn process_hello(
        &mut self,
        now: Time,
        link: LinkId,
        hello: &connectopus_wire::Hello,
    ) {
        if hello.address.is_unspecified() {
            self.process_join_hello(now, link, hello);
            return;
        }
        if hello.address == self.config.address {
            self.reject_hello(now, link, hello.address, "own_address");
            return;
        }
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        session.note_peer_hello(hello);
        let key = match self.check_hello(now, link, hello) {
            Ok(HelloCheck::Verified(key, lease)) => {
                if let Some(cert) = lease {
                    self.sightings.record(&cert, now);
                }
                key
            }
            Ok(HelloCheck::Unproven) => {
                // Its claims are granted, but it cannot prove them yet: answer at once so the
                // peer learns our challenge; nothing else changes.
                if let Some(session) = self.sessions.get_mut(&link) {
                    session.answer_hello_now(now);
                }
                return;
            }
            Err(reason) => {
                self.reject_hello(now, link, hello.address, reason);
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        let outcome = session.handle_hello(now, hello, key);
        // Establishment, a restart or new capabilities change what the fast path may do.
        self.fastpath_dirty = true;
        match outcome {
            HelloOutcome::Nothing => {}
            HelloOutcome::PeerRestarted { previous } => {
                self.offered.remove(&link);
                self.events.push_back(Event::PeerRestarted {
                    link,
                    peer: previous.address,
                });
                self.trigger_update(now);
                if self.sessions.get(&link).is_some_and(|s| s.is_established()) {
                    self.on_established_or_joining(now, link);
                }
            }
            HelloOutcome::Established => self.on_established_or_joining(now, link),
        }
    }

    pub(super) fn on_established(&mut self, now: Time, link: LinkId) {
        let Some(session) = self.sessions.get(&link) else {
            return;
        };
        let Some(peer) = session.peer().cloned() else {
            return;
        };
        tracing::debug!(%link, peer = %peer.address, name = %peer.name, "session established");
        self.events.push_back(Event::SessionEstablished {
            link,
            peer: peer.address,
            name: peer.name.clone(),
        });
        // A restarted peer (higher epoch) makes its older sessions stale: replace them now.
        let stale: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(other, s)| {
                **other != link
                    && s.peer()
                        .is_some_and(|p| p.address == peer.address && p.epoch < peer.epoch)
            })
            .map(|(other, _)| *other)
            .collect();
        for other in stale {
            self.close_session(now, other, CloseReason::Replaced, true);
        }
        // Database synchronisation: the new neighbour gets everything we know.
        let mut framed = Vec::new();
        encode_update_record(&self.own_update, &mut framed);
        for entry in self.database.values() {
            if entry.update.origin != peer.address {
                encode_update_record(&entry.raw, &mut framed);
            }
        }
        if let Some(session) = self.sessions.get_mut(&link)
            && session.send_record(&framed).is_err()
        {
            self.close_session(now, link, CloseReason::StreamFailed, true);
            return;
        }
        self.trigger_update(now);
    }

    pub(super) fn process_record(&mut self, now: Time, link: LinkId, record: Record) {
        if record.kind == RecordKind::Lease {
            self.process_lease_record(now, link, &record.body);
            return;
        }
        if self.is_joining_session(link) {
            // A joining session carries lease messages only.
            self.count_lease("not_joined");
            return;
        }
        match record.kind {
            RecordKind::LinkStateUpdate => self.process_update(now, link, record.body),
            RecordKind::ConfigOffer => self.process_offer(now, link, &record.body),
            RecordKind::Lease | RecordKind::Unknown(_) => {}
        }
    }

    pub(super) fn close_session(
        &mut self,
        now: Time,
        link: LinkId,
        reason: CloseReason,
        notify_peer: bool,
    ) {
        let Some(mut session) = self.sessions.remove(&link) else {
            return;
        };
        self.offered.remove(&link);
        self.fastpath_dirty = true;
        if notify_peer && let Some(goodbye) = reason.goodbye() {
            session.say_goodbye(goodbye);
            let mut out = Vec::new();
            session.drain_outbox(now, &mut out);
            for payload in out {
                self.transmits.push_back(Transmit { link, payload });
            }
        }
        let peer = session.peer().map(|p| p.address);
        if let Some(peer) = peer {
            self.forget_offers_if_gone(peer);
        }
        tracing::debug!(%link, peer = ?peer, reason = reason.as_str(), "session closed");
        self.events
            .push_back(Event::SessionClosed { link, peer, reason });
        if reason != CloseReason::LinkDown {
            self.commands.push_back(Command::CloseLink { link, reason });
        }
        if session.is_established() {
            self.trigger_update(now);
        }
    }
}
