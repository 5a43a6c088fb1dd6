//! The issuer side of ephemeral nodes (`docs/dynamic-mesh.md` §1.3–§1.5, §1.7): joining
//! sessions, the lease messages an issuer answers (Join, Renew, Release), persist gating and
//! lease expiry. The decisions are [`LeaseIssuer`]'s; this module connects it to sessions,
//! the routing stream and mesh port 0.
//!
//! A **joining session** is a session whose peer hello has the address `::` (at the issuer)
//! or that this node runs while it has no address (at the joiner, see the `joiner` module).
//! It is never an adjacency, gets no database synchronisation and no floods, drops IPv6 and
//! control datagrams (`not_joined`) and reads only lease records. An issuer keeps at most
//! [`MAX_JOINING_SESSIONS`] and closes each after [`JOINING_SESSION_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::lease::LEASE_PORT;
use connectopus_wire::{
    ControlDatagram, Hello, HelloExtension, LeaseBody, LeaseMessage, Record, RecordKind, RefuseCode,
};

use super::{Command, Event, LeaseEvent, Node, NodeConfig, Transmit};
use crate::LinkId;
use crate::identity::{self, PublicKey};
use crate::lease_issuer::{IssuerConfig, JoinSession, LeaseIssuer};
use crate::lease_table::{LeaseTable, PersistedLeases};
use crate::session::{CloseReason, HelloOutcome};
use crate::time::Time;

/// Most joining sessions an issuer keeps at once.
pub const MAX_JOINING_SESSIONS: usize = 64;
/// A joining session is closed this long after its link came up (a joiner re-addresses its
/// sessions once granted, so only refused or stuck joiners stay this long).
pub const JOINING_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// With every joining session taken, a new join hello replaces the oldest session that has
/// not proved it may join (its key listed in `identities`, or an authorised Join) after being
/// up this long: keys made up by anyone who reaches the issuer cannot hold the slots against
/// real joiners, who prove themselves one round trip after their session is up.
pub const JOIN_PROOF_TIME: Duration = Duration::from_secs(1);
/// Tokens of Renew answers waiting for the disk (link tokens are far below).
const RENEW_TOKEN: u64 = 1 << 63;

/// How an issuer's table starts (§1.7).
#[derive(Debug, Clone)]
pub enum IssuerStart {
    /// The first start: an empty table.
    Fresh,
    /// The table persisted before ([`Command::PersistLeases`]).
    Persisted(PersistedLeases),
    /// The table was lost (missing or corrupt file): the pool is quarantined for
    /// `lease + grace` and renewals re-adopt their leases.
    Lost,
}

/// What an issuing node is configured with.
#[derive(Debug, Clone)]
pub struct IssuerSetup {
    /// The pool, lease, grace and join policy. Its `epoch_floor` is raised to the node's
    /// routing epoch.
    pub config: IssuerConfig,
    /// How the table starts.
    pub start: IssuerStart,
    /// The wall clock (Unix milliseconds) at the `now` the node is created with: persisted
    /// tables count in Unix milliseconds, and the core never reads the clock.
    pub unix_ms: u64,
}

/// A running issuer.
#[derive(Debug)]
pub(super) struct IssuerState {
    pub(super) issuer: LeaseIssuer,
    started: Time,
    unix_ms_at_start: u64,
    /// Where Renew answers waiting for the disk go, by token.
    renew_routes: BTreeMap<u64, LeaseRoute>,
    next_renew_token: u64,
    /// Joining sessions that proved they may join (see [`JOIN_PROOF_TIME`]).
    proven: BTreeSet<LinkId>,
}

impl IssuerState {
    /// Builds the issuer a configuration asks for.
    pub(super) fn start(config: &NodeConfig, now: Time) -> Option<Self> {
        let setup = config.issuer.as_ref()?;
        let mut issuer_config = setup.config.clone();
        issuer_config.epoch_floor = issuer_config.epoch_floor.max(config.epoch);
        let floor = issuer_config.epoch_floor;
        let table = match &setup.start {
            IssuerStart::Fresh => LeaseTable::new(issuer_config.table, floor),
            IssuerStart::Persisted(p) => {
                LeaseTable::restore(issuer_config.table, Some(p), floor, now, setup.unix_ms)
            }
            IssuerStart::Lost => {
                LeaseTable::restore(issuer_config.table, None, floor, now, setup.unix_ms)
            }
        };
        Some(Self {
            issuer: LeaseIssuer::new(issuer_config, config.identity.clone(), table),
            started: now,
            unix_ms_at_start: setup.unix_ms,
            renew_routes: BTreeMap::new(),
            next_renew_token: 0,
            proven: BTreeSet::new(),
        })
    }

    fn unix_ms(&self, now: Time) -> u64 {
        let since = now.saturating_since(self.started).as_millis();
        self.unix_ms_at_start
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// Where a lease message came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseRoute {
    /// The routing stream of this link's session.
    Link(LinkId),
    /// A control datagram to port 0 of this node address.
    Datagram(Ipv6Addr),
}

impl Node {
    /// Returns the issuer's lease table, if this node issues addresses.
    pub fn leases(&self) -> Option<&LeaseTable> {
        self.issuer.as_ref().map(|i| i.issuer.table())
    }

    /// The driver wrote the lease table of `generation` ([`Command::PersistLeases`]): the
    /// grants and renewals it records are answered now.
    pub fn leases_persisted(&mut self, now: Time, generation: u64) {
        let answers = match self.issuer.as_mut() {
            Some(state) => state.issuer.leases_persisted(generation),
            None => Vec::new(),
        };
        for (token, answer) in answers {
            if token & RENEW_TOKEN != 0 {
                let route = self
                    .issuer
                    .as_mut()
                    .and_then(|s| s.renew_routes.remove(&token));
                if let Some(route) = route {
                    self.count_lease("renewed_out");
                    self.send_lease(now, route, &answer);
                }
                continue;
            }
            let link = LinkId(token);
            // The joiner may have gone meanwhile: its lease then simply runs out.
            if !self.is_joining_session(link) {
                self.count_lease("grant_session_gone");
                continue;
            }
            if let LeaseBody::Grant { cert, .. } = &answer.body {
                self.events.push_back(Event::Lease(LeaseEvent::Granted {
                    address: cert.address,
                    name: cert.name.clone(),
                    epoch: cert.epoch,
                    key: cert.holder_key,
                }));
            }
            self.count_lease("grant_out");
            self.send_lease(now, LeaseRoute::Link(link), &answer);
        }
        self.after_input(now);
    }

    /// Returns true if `link`'s session is a joining session (see the module documentation).
    pub(super) fn is_joining_session(&self, link: LinkId) -> bool {
        self.config.address.is_unspecified()
            || self
                .sessions
                .get(&link)
                .and_then(|s| s.peer())
                .is_some_and(|p| p.address.is_unspecified())
    }

    pub(super) fn count_lease(&mut self, what: &'static str) {
        *self.counters.leases.entry(what).or_default() += 1;
    }

    /// A hello with the address `::`: a joiner. Only an issuer that serves joins accepts it,
    /// after checking its key and signature (always, also without a trust policy).
    pub(super) fn process_join_hello(&mut self, now: Time, link: LinkId, hello: &Hello) {
        let joins = hello
            .extensions
            .iter()
            .filter(|e| e.kind == HelloExtension::JOIN)
            .count();
        if joins != 1 || self.config.address.is_unspecified() {
            self.reject_hello(now, link, hello.address, "unspecified_address");
            return;
        }
        if self.issuer.is_none() {
            self.reject_hello(now, link, hello.address, "join_not_served");
            return;
        }
        let joining_now = self
            .sessions
            .iter()
            .filter(|(l, s)| **l != link && s.peer().is_some_and(|p| p.address.is_unspecified()))
            .count();
        let already = self
            .sessions
            .get(&link)
            .and_then(|s| s.peer())
            .is_some_and(|p| p.address.is_unspecified());
        if !already && joining_now >= MAX_JOINING_SESSIONS && !self.evict_unproven_joiner(now, link)
        {
            self.reject_hello(now, link, hello.address, "join_busy");
            return;
        }
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        session.note_peer_hello(hello);
        let key = match self.check_join_hello(link, hello) {
            Ok(Some(key)) => key,
            Ok(None) => {
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
        if let Some(state) = self.issuer.as_mut()
            && state.issuer.policy().identities.contains(&key)
        {
            // Listed as itself: it may join, whatever it asks for.
            state.proven.insert(link);
        }
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        match session.handle_hello(now, hello, Some(key)) {
            HelloOutcome::Nothing => {}
            HelloOutcome::Established => self.count_lease("joining_session"),
            HelloOutcome::PeerRestarted { previous } => {
                // A member lost its lease and joins again on the same link: no longer an
                // adjacency.
                self.offered.remove(&link);
                self.events.push_back(Event::PeerRestarted {
                    link,
                    peer: previous.address,
                });
                self.fastpath_dirty = true;
                self.trigger_update(now);
                self.count_lease("joining_session");
            }
        }
    }

    /// Closes the oldest joining session (other than `except`) that has not proved it may join
    /// within [`JOIN_PROOF_TIME`]; returns whether there was one.
    fn evict_unproven_joiner(&mut self, now: Time, except: LinkId) -> bool {
        let Some(state) = self.issuer.as_mut() else {
            return false;
        };
        let sessions = &self.sessions;
        state.proven.retain(|l| {
            sessions
                .get(l)
                .and_then(|s| s.peer())
                .is_some_and(|p| p.address.is_unspecified())
        });
        let proven = &state.proven;
        let oldest = self
            .sessions
            .iter()
            .filter(|(l, s)| {
                **l != except
                    && !proven.contains(l)
                    && s.peer().is_some_and(|p| p.address.is_unspecified())
                    && now.saturating_since(s.started_at()) >= JOIN_PROOF_TIME
            })
            .min_by_key(|(l, s)| (s.started_at(), **l))
            .map(|(l, _)| *l);
        let Some(oldest) = oldest else {
            return false;
        };
        self.count_lease("joining_session_evicted");
        self.close_session(now, oldest, CloseReason::HandshakeTimeout, true);
        true
    }

    /// Checks a join hello's key and signature; `Ok(None)` while it cannot cover our
    /// challenge yet (it does not echo our session id).
    fn check_join_hello(
        &self,
        link: LinkId,
        hello: &Hello,
    ) -> Result<Option<PublicKey>, &'static str> {
        let session = self.sessions.get(&link).ok_or("no_session")?;
        let (key, signature) = self.hello_key(hello)?;
        if let Some(trust) = self.config.trust.as_ref() {
            if trust.revoked.contains(&key) {
                return Err("revoked_key");
            }
            if trust.grants.contains_key(&key) {
                // A static node's key is that node; it never joins.
                return Err("static_key");
            }
        }
        if session.verifies_by_challenge() && hello.echo_session_id != session.local_session_id() {
            return Ok(None);
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
        Ok(Some(key))
    }

    /// A lease record arrived on `link`'s routing stream.
    pub(super) fn process_lease_record(&mut self, now: Time, link: LinkId, body: &[u8]) {
        let Ok(message) = LeaseMessage::parse(body) else {
            self.count_lease("malformed");
            return;
        };
        let Some(peer) = self.sessions.get(&link).and_then(|s| s.peer()).cloned() else {
            return;
        };
        let joining = self.is_joining_session(link);
        match &message.body {
            LeaseBody::Join { .. } if joining && peer.address.is_unspecified() => {
                self.process_join(now, link, &message);
            }
            LeaseBody::Join { .. } => self.count_lease("join_not_joining"),
            // Only Join and Grant travel on joining sessions: a joining peer cannot renew.
            LeaseBody::Renew { .. } | LeaseBody::Release { .. } if !joining => {
                self.serve_lease_request(now, LeaseRoute::Link(link), &message);
            }
            LeaseBody::Renew { .. } | LeaseBody::Release { .. } => {
                self.count_lease("request_on_joining_session");
            }
            LeaseBody::Grant { .. } | LeaseBody::Renewed { .. } | LeaseBody::Refuse { .. } => {
                self.holder_message(now, peer.address, &message);
            }
        }
    }

    /// A lease message arrived as a control datagram to port 0 of this node.
    pub(super) fn process_lease_datagram(&mut self, now: Time, src: Ipv6Addr, payload: &[u8]) {
        let Ok(message) = LeaseMessage::parse(payload) else {
            self.count_lease("malformed");
            return;
        };
        match &message.body {
            LeaseBody::Join { .. } | LeaseBody::Grant { .. } => {
                self.count_lease("join_not_joining");
            }
            LeaseBody::Renew { .. } | LeaseBody::Release { .. } => {
                self.serve_lease_request(now, LeaseRoute::Datagram(src), &message);
            }
            LeaseBody::Renewed { .. } | LeaseBody::Refuse { .. } => {
                self.holder_message(now, src, &message);
            }
        }
    }

    fn process_join(&mut self, now: Time, link: LinkId, message: &LeaseMessage) {
        let LeaseBody::Join { hint, name, proof } = &message.body else {
            return;
        };
        let Some(session) = self.sessions.get(&link) else {
            return;
        };
        let Some(holder_key) = session.peer().and_then(|p| p.key) else {
            return;
        };
        let binding = session.verifying_binding();
        self.count_lease("join_in");
        let Some(state) = self.issuer.as_mut() else {
            return;
        };
        // The key that holds `name` live in the name table: the origin's verified key, or in
        // a mesh without identities the key of the lease at that address (any other holder
        // counts as another key).
        let held = self.names.get(name.as_str()).map(|entry| {
            self.database
                .get(&entry.owner)
                .and_then(|e| e.key)
                .or_else(|| state.issuer.table().lease_at(entry.owner).map(|l| l.key))
                .unwrap_or([0; 32])
        });
        let database = &self.database;
        let recent = self.config.timers.update_interval * 2;
        // Without identities nothing evicts a holder that keeps using an expired address, so
        // an address whose origin still sends updates is not given out; with identities the
        // next holder's higher epoch wins over it (and its updates are refused).
        let guard_busy = self.config.trust.is_none();
        let answer = state.issuer.handle_join(
            now,
            JoinSession {
                token: link.0,
                holder_key,
                binding,
            },
            message.xid,
            *hint,
            name,
            proof.as_ref(),
            |_| held,
            |address| {
                guard_busy
                    && database
                        .get(&address)
                        .is_some_and(|e| now.saturating_since(e.received_at) < recent)
            },
        );
        let authorised = !matches!(&answer, Some(LeaseMessage { body: LeaseBody::Refuse { code, .. }, .. })
            if *code == RefuseCode::NotAuthorized);
        if authorised {
            state.proven.insert(link);
        }
        if let Some(refusal) = answer {
            self.count_lease("join_refused");
            self.send_lease(now, LeaseRoute::Link(link), &refusal);
        }
    }

    /// Answers a Renew, or takes a Release.
    fn serve_lease_request(&mut self, now: Time, route: LeaseRoute, message: &LeaseMessage) {
        let Some(state) = self.issuer.as_mut() else {
            self.count_lease("not_an_issuer");
            return;
        };
        match &message.body {
            LeaseBody::Renew { cert, holder_sig } => {
                let answer = state
                    .issuer
                    .handle_renew(now, message.xid, cert, holder_sig);
                if !matches!(answer.body, LeaseBody::Renewed { .. }) {
                    self.count_lease("renew_refused");
                    self.send_lease(now, route, &answer);
                    return;
                }
                // The renewal is answered once the table that records it is on disk.
                let token = RENEW_TOKEN | state.next_renew_token;
                state.next_renew_token = state.next_renew_token.wrapping_add(1) & !RENEW_TOKEN;
                match state.issuer.hold_until_persisted(token, answer) {
                    Some(answer) => {
                        self.count_lease("renewed_out");
                        self.send_lease(now, route, &answer);
                    }
                    None if state.issuer.waits(token) => {
                        state.renew_routes.insert(token, route);
                    }
                    // A resend of a Renew whose answer already waits.
                    None => {}
                }
            }
            LeaseBody::Release {
                address,
                epoch,
                holder_sig,
            } => {
                if state
                    .issuer
                    .handle_release(now, message.xid, *address, *epoch, holder_sig)
                {
                    self.count_lease("released");
                    self.events
                        .push_back(Event::Lease(LeaseEvent::Released { address: *address }));
                } else {
                    self.count_lease("release_refused");
                }
            }
            _ => {}
        }
    }

    /// Sends a lease message on a session's routing stream or as a control datagram to port 0.
    pub(super) fn send_lease(&mut self, now: Time, route: LeaseRoute, message: &LeaseMessage) {
        let body = message.encode();
        match route {
            LeaseRoute::Link(link) => {
                let mut framed = Vec::with_capacity(body.len() + 5);
                Record {
                    kind: RecordKind::Lease,
                    body,
                }
                .encode_into(&mut framed);
                let failed = self
                    .sessions
                    .get_mut(&link)
                    .is_some_and(|s| s.send_record(&framed).is_err());
                if failed {
                    self.close_session(now, link, CloseReason::StreamFailed, true);
                }
            }
            LeaseRoute::Datagram(dst) => {
                let datagram = ControlDatagram {
                    hop_limit: 64,
                    src: self.config.address,
                    src_port: LEASE_PORT,
                    dst,
                    dst_port: LEASE_PORT,
                    payload: &body,
                };
                if self.route_control_datagram(now, &datagram, None).is_err() {
                    self.count_lease("datagram_unroutable");
                }
            }
        }
    }

    /// Sends `link`'s queued messages now, before anything queued after them (a Release
    /// before the goodbye of a shutdown).
    pub(super) fn flush_session(&mut self, now: Time, link: LinkId) {
        let mut out = Vec::new();
        if let Some(session) = self.sessions.get_mut(&link) {
            session.drain_outbox(now, &mut out);
        }
        for payload in out {
            self.transmits.push_back(Transmit { link, payload });
        }
    }

    /// Hands the driver the lease table to persist when a grant waits for it.
    pub(super) fn poll_lease_persist(&mut self, now: Time) {
        let Some(state) = self.issuer.as_mut() else {
            return;
        };
        let unix_ms = state.unix_ms(now);
        if let Some((generation, table)) = state.issuer.poll_persist(now, unix_ms) {
            self.commands.push_back(Command::PersistLeases {
                generation,
                table: std::sync::Arc::new(table),
            });
        }
    }

    /// Runs the lease timers: the issuer's expiry, joining sessions past their time, the
    /// holder's renewals and expiry.
    pub(super) fn run_lease_timers(&mut self, now: Time) {
        if let Some(state) = self.issuer.as_mut() {
            let count = state.issuer.expire(now);
            if count > 0 {
                self.events
                    .push_back(Event::Lease(LeaseEvent::Expired { count }));
            }
            let stale: Vec<LinkId> = self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.peer().is_some_and(|p| p.address.is_unspecified())
                        && now.saturating_since(s.started_at()) >= JOINING_SESSION_TIMEOUT
                })
                .map(|(link, _)| *link)
                .collect();
            let sessions = &self.sessions;
            state.proven.retain(|l| sessions.contains_key(l));
            for link in stale {
                self.count_lease("joining_session_timeout");
                self.close_session(now, link, CloseReason::HandshakeTimeout, true);
            }
        }
        self.joiner_timers(now);
    }

    /// The earliest lease timer.
    pub(super) fn lease_deadline(&self) -> Option<Time> {
        let issuer = self.issuer.as_ref().and_then(|state| {
            let joining = self
                .sessions
                .values()
                .filter(|s| s.peer().is_some_and(|p| p.address.is_unspecified()))
                .map(|s| s.started_at() + JOINING_SESSION_TIMEOUT)
                .min();
            [state.issuer.table().next_deadline(), joining]
                .into_iter()
                .flatten()
                .min()
        });
        [issuer, self.joiner_deadline()].into_iter().flatten().min()
    }
}
