//! The mesh node state machine.
//!
//! A [`Node`] owns one [`Session`] per link, the link-state database (the latest update of
//! every origin it knows), its own update, the route computation and the forwarding table.
//! The driver feeds it link events, link messages, TUN packets and timeouts, and drains its
//! outputs after every call:
//! - [`Node::poll_transmit`]: link messages to send;
//! - [`Node::poll_tun_packet`]: IPv6 packets for the TUN device;
//! - [`Node::poll_command`]: requests to the driver (close a link, install a forwarding snapshot);
//! - [`Node::poll_event`]: what happened, for logs and status;
//! - [`Node::poll_timeout`]: when to call [`Node::handle_timeout`] next, and why.
//!
//! Flooding: every accepted update is sent verbatim to every established session except the
//! one it came from and its origin; a new session first receives the whole database.
//! Duplicates and outdated updates are counted and dropped, never flooded.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use connectopus_wire::{
    Adjacency, Cost, LeaseCertificate, LinkStateUpdate, NameBinding, NameBinding4, PrefixAdvert,
    Record, RecordKind,
};

use crate::LinkId;
use crate::forward::ForwardingTable;
use crate::forwarder::Forwarder;
use crate::icmp::IcmpRateLimiter;
use crate::identity::{Issuer, PublicKey, TrustPolicy};
use crate::route::RouteSet;
use crate::session::{CloseReason, Session};
use crate::time::Time;

mod budget;
mod config;
mod config_rollout;
mod containers;
mod database;
mod fastpath;
mod forwarding;
mod issuer;
mod joiner;
mod mesh_prefix;
mod names;
mod offers;
mod outputs;
mod pruned;
mod sessions;
mod sightings;
mod trust;

pub use crate::lease_table::ContainerKey;
pub use config::{DEFAULT_STREAM_MEMORY_BUDGET, NodeConfig, NodeTimers};
pub use containers::{ContainerError, ContainerLease};
pub use fastpath::{FastpathEntry, FastpathTarget};
pub use issuer::{IssuerSetup, IssuerStart};
pub use mesh_prefix::{
    Delegation, MAX_PLANES, MeshPrefix, MeshPrefixConfig, MirrorError, mirror_plane,
};
pub use names::{NameConflict, NameEntry};
pub use outputs::{Command, Event, Forwarded, LeaseEvent, NodeCounters, Transmit, UpdateRejection};

use database::{DatabaseEntry, encode_update_record};

/// The state machine of one mesh node. See the module documentation.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    /// For every address the trust policy grants, the one key it is granted to (`None` if it is
    /// granted to several); empty without a policy.
    trusted_addresses: BTreeMap<Ipv6Addr, Option<PublicKey>>,
    /// The static nodes that issue leases, by address (`TrustPolicy::issuers`); empty without a
    /// policy.
    issuers: BTreeMap<Ipv6Addr, Issuer>,
    /// Lease certificates seen, per address (see the `sightings` module).
    sightings: sightings::Sightings,
    /// This node's own lease certificate, encoded, while it is an ephemeral node.
    own_certificate: Option<Arc<[u8]>>,
    /// When the next lease of an ephemeral peer runs out.
    peer_lease_check_at: Option<Time>,
    rng: SmallRng,
    /// Hello challenges issued so far (the PRF input that makes each one fresh).
    challenges_issued: u64,
    sessions: BTreeMap<LinkId, Session>,
    database: BTreeMap<Ipv6Addr, DatabaseEntry>,
    /// (epoch, sequence) of pruned origins, so their old updates are not taken back; bounded.
    pruned: pruned::PrunedOrigins,
    own_sequence: u64,
    own_update: Arc<[u8]>,
    /// The running configuration as a framed offer record, once the driver set one.
    config_offer: Option<Arc<[u8]>>,
    /// The configuration version each link was last offered (or offered us).
    offered: BTreeMap<LinkId, u64>,
    /// A configuration offered to the neighbours and not applied yet.
    rollout: Option<config_rollout::Rollout>,
    /// Offers received, per peer (see the `offers` module).
    offers: BTreeMap<Ipv6Addr, offers::PeerOffers>,
    own_adjacencies: Vec<Adjacency>,
    next_update_at: Time,
    triggered_update_at: Option<Time>,
    spf_at: Option<Time>,
    next_prune_at: Time,
    routes: RouteSet,
    names: BTreeMap<String, NameEntry>,
    name_conflicts: Vec<NameConflict>,
    table: Arc<ForwardingTable>,
    /// The node's own per-packet path (the simulator's packets; ICMPv6 errors it is asked for),
    /// which also holds the snapshot the dataplane forwards by.
    forwarder: Forwarder,
    counters: NodeCounters,
    transmits: VecDeque<Transmit>,
    tun_packets: VecDeque<Vec<u8>>,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    /// The fast-path entries last issued.
    fastpath_entries: Arc<[FastpathEntry]>,
    /// Something the entries derive from may have changed since they were issued.
    fastpath_dirty: bool,
    /// Delegated prefixes and the mirror planes derived from them (see `mesh_prefix`).
    mesh_prefixes: mesh_prefix::MeshPrefixes,
    /// The lease issuer, if this node issues addresses (see the `issuer` module).
    issuer: Option<issuer::IssuerState>,
    /// The lease holder, if this node is an ephemeral node (see the `joiner` module).
    joiner: Option<joiner::JoinerState>,
}

impl Node {
    /// Creates a node; it has no links yet.
    pub fn new(mut config: NodeConfig, now: Time) -> Self {
        let joiner = joiner::JoinerState::start(&mut config);
        let issuer = issuer::IssuerState::start(&config, now);
        let rng = SmallRng::seed_from_u64(config.seed);
        let forwarder = Forwarder::new(IcmpRateLimiter::new(
            config.icmp_per_second,
            config.icmp_burst,
        ));
        let trusted_addresses = config
            .trust
            .as_ref()
            .map(TrustPolicy::address_index)
            .unwrap_or_default();
        let issuers = config
            .trust
            .as_ref()
            .map(TrustPolicy::issuers)
            .unwrap_or_default();
        let own_certificate = config.certificate.as_ref().map(|c| Arc::from(c.encode()));
        let mut node = Self {
            trusted_addresses,
            issuers,
            sightings: sightings::Sightings::default(),
            own_certificate,
            peer_lease_check_at: None,
            rng,
            challenges_issued: 0,
            sessions: BTreeMap::new(),
            database: BTreeMap::new(),
            pruned: pruned::PrunedOrigins::new(
                config.max_pruned_origins,
                config.timers.forget_pruned_after,
            ),
            own_sequence: 0,
            own_update: Arc::from(Vec::new()),
            config_offer: None,
            offered: BTreeMap::new(),
            rollout: None,
            offers: BTreeMap::new(),
            own_adjacencies: Vec::new(),
            next_update_at: now,
            triggered_update_at: None,
            spf_at: None,
            next_prune_at: now + config.timers.prune_interval,
            routes: RouteSet::default(),
            names: BTreeMap::new(),
            name_conflicts: Vec::new(),
            table: Arc::new(ForwardingTable::default()),
            forwarder,
            counters: NodeCounters::default(),
            transmits: VecDeque::new(),
            tun_packets: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            fastpath_entries: Arc::from(Vec::new()),
            fastpath_dirty: true,
            mesh_prefixes: mesh_prefix::MeshPrefixes::default(),
            issuer,
            joiner,
            config,
        };
        node.originate_update(now);
        node.recompute_routes();
        node
    }

    /// Returns the node's address.
    pub fn address(&self) -> Ipv6Addr {
        self.config.address
    }

    /// Returns the node's IPv4 address, if the mesh has IPv4.
    pub fn address4(&self) -> Option<Ipv4Addr> {
        self.config.address4
    }

    /// Returns the node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Returns the node's routing epoch.
    pub fn epoch(&self) -> u64 {
        self.config.epoch
    }

    /// Returns the sequence number of the node's latest own update.
    pub fn sequence(&self) -> u64 {
        self.own_sequence
    }

    /// Returns the current forwarding table.
    pub fn forwarding_table(&self) -> &Arc<ForwardingTable> {
        &self.table
    }

    /// Returns the latest route computation.
    pub fn routes(&self) -> &RouteSet {
        &self.routes
    }

    /// Returns the counters.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Returns every session, by link.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Returns how many removed origins the node remembers (bounded, see
    /// [`NodeConfig::max_pruned_origins`]).
    pub fn pruned_origins(&self) -> usize {
        self.pruned.len()
    }

    /// Returns every origin in the link-state database with its latest update and when it was
    /// received.
    pub fn known_nodes(&self) -> impl Iterator<Item = (&LinkStateUpdate, Time)> {
        self.database.values().map(|e| (&e.update, e.received_at))
    }

    /// Changes the cost of a link in place (a live config change): the session stays up, the
    /// node advertises the new cost and routes are recomputed.
    pub fn set_link_cost(&mut self, now: Time, link: LinkId, cost: Cost) {
        if let Some(session) = self.sessions.get_mut(&link) {
            session.set_cost(cost);
            self.trigger_update(now);
        }
        self.after_input(now);
    }

    /// Replaces the prefixes and names this node delivers locally; triggers an update.
    pub fn set_attachments(
        &mut self,
        now: Time,
        prefixes: Vec<PrefixAdvert>,
        names: Vec<NameBinding>,
    ) {
        self.config.prefixes = prefixes;
        self.config.names = names;
        self.trigger_update(now);
        self.schedule_spf(now);
        self.after_input(now);
    }

    /// Replaces the node's own IPv4 address and its attachments' IPv4 names; triggers an
    /// update. IPv4 attachment prefixes are set with [`Node::set_attachments`].
    pub fn set_ipv4(&mut self, now: Time, address4: Option<Ipv4Addr>, names4: Vec<NameBinding4>) {
        self.config.address4 = address4;
        self.config.names4 = names4;
        self.trigger_update(now);
        self.schedule_spf(now);
        self.after_input(now);
    }

    /// Sets the configuration this node runs (already verified by the driver): its version is
    /// advertised in every update from now on, and neighbours that advertise an older version
    /// are offered these bytes on the routing stream.
    pub fn set_config(&mut self, now: Time, version: u64, config: &[u8], signature: &[u8]) {
        let offer = connectopus_wire::ConfigOffer {
            version,
            config,
            signature,
        };
        match offer.encode() {
            Ok(body) => {
                let mut framed = Vec::with_capacity(body.len() + 5);
                Record {
                    kind: RecordKind::ConfigOffer,
                    body,
                }
                .encode_into(&mut framed);
                self.config_offer = Some(Arc::from(framed));
            }
            Err(_) => self.config_offer = None,
        }
        self.config.config_version = version;
        self.trigger_update(now);
        let laggards: Vec<Ipv6Addr> = self
            .database
            .values()
            .filter(|e| e.update.config_version < version)
            .map(|e| e.update.origin)
            .collect();
        for peer in laggards {
            self.offer_config_to(now, peer);
        }
        self.after_input(now);
    }

    /// Returns the configuration version this node runs.
    pub fn config_version(&self) -> u64 {
        self.config.config_version
    }

    /// Replaces this node's own lease certificate (an ephemeral node's renewal): hellos carry
    /// it from now on and a triggered update floods it, so every node times the lease from the
    /// new renewal. Changing the address or epoch needs new sessions (re-addressing, §1.4).
    pub fn set_certificate(&mut self, now: Time, certificate: Option<LeaseCertificate>) {
        self.own_certificate = certificate.as_ref().map(|c| Arc::from(c.encode()));
        self.config.certificate = certificate;
        self.trigger_update(now);
        self.after_input(now);
    }

    /// Returns this node's own lease certificate, while it is an ephemeral node.
    pub fn certificate(&self) -> Option<&LeaseCertificate> {
        self.config.certificate.as_ref()
    }

    /// Says goodbye on every session and forgets them; the driver should then close the links.
    pub fn shutdown(&mut self, now: Time) {
        self.release_lease(now);
        let links: Vec<LinkId> = self.sessions.keys().copied().collect();
        for link in links {
            self.close_session(now, link, CloseReason::Shutdown, true);
        }
        self.after_input(now);
    }

    /// Runs every timer that is due.
    pub fn handle_timeout(&mut self, now: Time) {
        let links: Vec<LinkId> = self.sessions.keys().copied().collect();
        for link in links {
            let mut nonce = self.rng.random::<u64>();
            let close = self.sessions.get_mut(&link).and_then(|s| {
                s.handle_timeout(now, || {
                    nonce |= 1;
                    nonce
                })
            });
            if let Some(reason) = close {
                self.close_session(now, link, reason, true);
            }
        }
        self.close_expired_lease_sessions(now);
        self.run_lease_timers(now);
        if now >= self.next_prune_at {
            self.prune_dead_nodes(now);
            self.next_prune_at = now + self.config.timers.prune_interval;
        }
        if now >= self.next_update_at || self.triggered_update_at.is_some_and(|t| now >= t) {
            self.originate_update(now);
        }
        self.release_pending_offers(now);
        self.expire_mesh_prefixes(now);
        self.after_input(now);
    }

    /// Returns when [`Node::handle_timeout`] should next be called, and why.
    pub fn poll_timeout(&self) -> Option<(Time, &'static str)> {
        let mut next = (self.next_update_at, "periodic update");
        let mut consider = |t: Option<Time>, why: &'static str| {
            if let Some(t) = t
                && t < next.0
            {
                next = (t, why);
            }
        };
        consider(self.triggered_update_at, "triggered update");
        consider(self.spf_at, "route computation");
        consider(Some(self.next_prune_at), "dead node check");
        consider(self.rollout_deadline(), "configuration rollout");
        consider(self.next_offer_release(), "pending config offer");
        consider(self.peer_lease_check_at, "peer lease expiry");
        consider(self.mesh_prefix_deadline(), "mesh prefix lifetime");
        consider(self.lease_deadline(), "lease timers");
        for session in self.sessions.values() {
            if let Some((t, why)) = session.poll_timeout() {
                consider(Some(t), why);
            }
        }
        Some(next)
    }

    /// Returns the next link message to send.
    ///
    /// Poll after every `handle_*` call and after [`Node::send_control_datagram`],
    /// [`Node::set_attachments`] and [`Node::shutdown`], until it returns `None`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Returns the next IPv6 packet for the TUN device. Poll as [`Node::poll_transmit`].
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.tun_packets.pop_front()
    }

    /// Returns the next request to the driver. Poll as [`Node::poll_transmit`].
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Returns the next event. Poll as [`Node::poll_transmit`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn random_nonzero(&mut self) -> u64 {
        loop {
            let v = self.rng.random::<u64>();
            if v != 0 {
                return v;
            }
        }
    }

    /// Offers the running configuration on every established session to `peer`, once per
    /// version.
    fn offer_config_to(&mut self, now: Time, peer: Ipv6Addr) {
        let Some(offer) = self.config_offer.clone() else {
            return;
        };
        let version = self.config.config_version;
        let links: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(link, s)| {
                s.is_established()
                    && s.peer().is_some_and(|p| p.address == peer)
                    && self.offered.get(link).is_none_or(|v| *v < version)
            })
            .map(|(link, _)| *link)
            .collect();
        for link in links {
            self.offered.insert(link, version);
            let failed = self
                .sessions
                .get_mut(&link)
                .is_some_and(|s| s.send_record(&offer).is_err());
            if failed {
                self.close_session(now, link, CloseReason::StreamFailed, true);
            }
        }
    }

    /// Sends hellos and drains every session's outbox; recomputes routes when due.
    fn after_input(&mut self, now: Time) {
        self.progress_rollout(now);
        self.enforce_stream_memory_budget(now);
        if self.spf_at.is_some_and(|t| now >= t) {
            self.spf_at = None;
            self.recompute_routes();
        }
        let address = self.config.address;
        let epoch = self.config.epoch;
        let key = self.config.identity.as_ref();
        let fastpath = self.config.fastpath;
        let mut out = Vec::new();
        for (link, session) in self.sessions.iter_mut() {
            if session.hello_due(now) {
                let capabilities = fastpath::hello_capabilities(fastpath, session.info());
                let mut hello = session.hello(
                    address,
                    &self.config.name,
                    epoch,
                    key,
                    capabilities,
                    self.own_certificate.as_deref(),
                );
                joiner::mark_join_hello(&mut hello);
                let hello = hello.encode();
                session.push_message(hello);
                session.hello_sent(now);
            }
            session.drain_outbox(now, &mut out);
            for payload in out.drain(..) {
                self.transmits.push_back(Transmit {
                    link: *link,
                    payload,
                });
            }
        }
        self.poll_lease_persist(now);
        self.publish_forwarding();
        self.update_fastpath();
        self.peer_lease_check_at = self.next_peer_lease_expiry(now);
    }
}
