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
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use connectopus_wire::message::is_ip_packet;
use connectopus_wire::{
    Adjacency, ControlDatagram, Cost, LinkMessage, LinkStateUpdate, NameBinding, NameBinding4,
    Prefix, PrefixAdvert, Record, RecordKind, RecordLimits, SignedUpdate,
};

use crate::LinkId;
use crate::forward::{DropReason, ForwardingTable, Ingress, RouteTarget};
use crate::forward4::mapped;
use crate::forwarder::{DataplaneReport, Forwarder, ForwardingSnapshot};
use crate::icmp::IcmpRateLimiter;
use crate::identity::{self, NodeKey, PublicKey, TrustPolicy};
use crate::route::{self, PrefixTable, RouteSet, SpfOptions};
use crate::session::{CloseReason, HelloOutcome, LinkInfo, Session, SessionIds, SessionTimers};
use crate::stream::StreamConfig;
use crate::time::Time;

mod budget;
mod config_rollout;
mod fastpath;
mod offers;
mod pruned;

pub use fastpath::{FastpathEntry, FastpathTarget};

/// Most bytes all sessions of a node may hold for their routing streams together, by default.
pub const DEFAULT_STREAM_MEMORY_BUDGET: usize = 256 * 1024 * 1024;

/// Node-wide timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimers {
    /// Per-session timers.
    pub session: SessionTimers,
    /// Refresh the node's own update this often.
    pub update_interval: Duration,
    /// Send a changed own update at most this long after the change.
    pub triggered_update_delay: Duration,
    /// Wait this long after a database change before recomputing routes (batches changes).
    pub spf_delay: Duration,
    /// Forget an origin not heard from for this long.
    pub node_dead_after: Duration,
    /// Look for dead origins this often.
    pub prune_interval: Duration,
    /// Longest wait for neighbours to acknowledge a proposed configuration before applying it
    /// (see [`Node::propose_config`]).
    pub config_rollout_timeout: Duration,
    /// Forget a removed origin's last (epoch, sequence) after this long.
    pub forget_pruned_after: Duration,
    /// Hand the driver at most one configuration offer per peer this often (each costs it a
    /// signature check and a parse); sooner ones wait, the latest replacing older ones.
    pub offer_interval: Duration,
}

impl Default for NodeTimers {
    fn default() -> Self {
        Self {
            session: SessionTimers::default(),
            update_interval: Duration::from_secs(10),
            triggered_update_delay: Duration::from_millis(100),
            spf_delay: Duration::from_millis(20),
            node_dead_after: Duration::from_secs(60),
            prune_interval: Duration::from_secs(2),
            config_rollout_timeout: Duration::from_secs(5),
            forget_pruned_after: Duration::from_secs(600),
            offer_interval: Duration::from_secs(5),
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's mesh address.
    pub address: Ipv6Addr,
    /// The node's IPv4 mesh address, if the mesh has IPv4 (`global.subnet4`): delivered
    /// locally, advertised as an IPv4-mapped /128 and published as the A record of its name.
    pub address4: Option<Ipv4Addr>,
    /// The node's name.
    pub name: String,
    /// Routing epoch of this instance; must grow across restarts of the node.
    pub epoch: u64,
    /// Version of the mesh configuration this node runs (0 = none).
    pub config_version: u64,
    /// Prefixes the node delivers to its TUN devices besides its own address.
    pub prefixes: Vec<PrefixAdvert>,
    /// Names of those attachments.
    pub names: Vec<NameBinding>,
    /// IPv4 addresses of those attachments' names (the node's own name comes from `address4`).
    /// IPv4 prefixes go in `prefixes` as IPv4-mapped IPv6 prefixes.
    pub names4: Vec<NameBinding4>,
    /// Timers.
    pub timers: NodeTimers,
    /// Routing stream settings.
    pub stream: StreamConfig,
    /// Largest routing-stream record accepted, by kind: an update is not a configuration.
    pub record_limits: RecordLimits,
    /// Most removed origins whose last (epoch, sequence) the node remembers (the oldest are
    /// forgotten first).
    pub max_pruned_origins: usize,
    /// Most bytes all sessions may hold for their routing streams together (send buffers,
    /// out-of-order segments, partial records); over it, the session holding the most is
    /// closed ([`CloseReason::OverBudget`]) until the rest fits.
    pub stream_memory_budget: usize,
    /// ICMPv6 errors per second, on average.
    pub icmp_per_second: u32,
    /// ICMPv6 errors allowed in a burst.
    pub icmp_burst: u32,
    /// Seed for every random choice the node makes (session ids, nonces) that need not be
    /// unpredictable.
    pub seed: u64,
    /// Secret from which the node derives its hello challenges (see `docs/protocol.md`, "Hello
    /// signature"): they must be unpredictable, so the driver fills it from the operating
    /// system's random generator. [`NodeConfig::new`] derives it from `seed`, which suits only
    /// the simulator.
    pub challenge_secret: [u8; 32],
    /// The node's signing key: with one, hellos carry the key and a signature bound to the
    /// link's channel, and own updates are signed. `None` sends neither.
    pub identity: Option<NodeKey>,
    /// Which keys may be which node: with a policy, hellos and updates are checked against it
    /// (see `docs/security.md`). `None` accepts any peer and any update, unauthenticated.
    pub trust: Option<TrustPolicy>,
    /// The node's eBPF fast path is loaded and decapsulates plaintext UDP links (the driver
    /// sets it; see [`Node::set_fastpath`]): hellos on those links advertise
    /// [`connectopus_wire::Hello::CAP_EBPF_DECAP`], and the node derives fast-path entries
    /// ([`Command::SetFastpathRoutes`]).
    pub fastpath: bool,
}

impl NodeConfig {
    /// Returns a configuration with default timers and limits.
    pub fn new(address: Ipv6Addr, name: impl Into<String>, epoch: u64, seed: u64) -> Self {
        Self {
            address,
            address4: None,
            name: name.into(),
            epoch,
            config_version: 0,
            prefixes: Vec::new(),
            names: Vec::new(),
            names4: Vec::new(),
            timers: NodeTimers::default(),
            stream: StreamConfig::default(),
            record_limits: RecordLimits::default(),
            stream_memory_budget: DEFAULT_STREAM_MEMORY_BUDGET,
            max_pruned_origins: 16 * 1024,
            icmp_per_second: 100,
            icmp_burst: 20,
            seed,
            challenge_secret: identity::derive_secret(seed),
            identity: None,
            trust: None,
            fastpath: false,
        }
    }
}

/// What the dataplane does with a packet after [`crate::forwarder::Forwarder::forward_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Write it to the TUN device.
    Deliver,
    /// Send it on this link (its session is established; its bytes are counted).
    Send(LinkId),
    /// Nothing more: the node dropped it (counted) or answered it with an ICMPv6 error.
    Done,
}

/// A link message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The link to send on.
    pub link: LinkId,
    /// The complete link message.
    pub payload: Vec<u8>,
}

/// A request to the driver.
#[derive(Debug, Clone)]
pub enum Command {
    /// Close the link's transport; the node has already forgotten the session.
    CloseLink {
        /// The link.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
    /// Forward by this snapshot from now on (each dataplane worker swaps it in whole).
    InstallForwarding(Arc<ForwardingSnapshot>),
    /// The fast path's entries from now on, the whole set sorted by prefix (see
    /// [`FastpathEntry`]): issued in the same turn as the route change, link loss or peer
    /// restart that changed them.
    SetFastpathRoutes(Arc<[FastpathEntry]>),
    /// Apply the configuration proposed with [`Node::propose_config`]: every neighbour
    /// acknowledged its offer, or the wait timed out. The node already runs its version.
    ApplyConfig {
        /// Its version.
        version: u64,
        /// Neighbours that had not acknowledged the offer when the wait timed out.
        unacknowledged: Vec<Ipv6Addr>,
    },
}

/// Something that happened, for logs, status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session was established.
    SessionEstablished {
        /// The link.
        link: LinkId,
        /// The peer's address.
        peer: Ipv6Addr,
        /// The peer's name.
        name: String,
    },
    /// A session ended.
    SessionClosed {
        /// The link.
        link: LinkId,
        /// The peer's address, if its hello had arrived.
        peer: Option<Ipv6Addr>,
        /// Why.
        reason: CloseReason,
    },
    /// A peer restarted its side of a session on the same link.
    PeerRestarted {
        /// The link.
        link: LinkId,
        /// The peer's address.
        peer: Ipv6Addr,
    },
    /// A hello was refused.
    HelloRejected {
        /// The link.
        link: LinkId,
        /// The address the hello claimed.
        claimed: Ipv6Addr,
        /// Why.
        reason: &'static str,
    },
    /// An origin appeared in the link-state database.
    NodeLearned {
        /// Its address.
        address: Ipv6Addr,
        /// Its name.
        name: String,
    },
    /// An origin was removed after the dead-node interval.
    NodePruned {
        /// Its address.
        address: Ipv6Addr,
    },
    /// The forwarding table changed.
    RoutesChanged {
        /// Number of routes now installed.
        n_routes: usize,
    },
    /// The set of names the mesh resolves changed.
    NamesChanged {
        /// Number of names now known.
        n_names: usize,
    },
    /// Two nodes claim the same name or the same attachment address.
    NameConflict(NameConflict),
    /// A neighbour offered a configuration newer than the one this node runs. The driver checks
    /// its signature against the running configuration and, if it accepts it, calls
    /// [`Node::propose_config`].
    ConfigOffered {
        /// The link it came on.
        link: LinkId,
        /// Its version.
        version: u64,
        /// The exact configuration bytes.
        config: Vec<u8>,
        /// The signature bytes.
        signature: Vec<u8>,
    },
    /// A control datagram arrived for this node.
    ControlDatagram {
        /// Source node address.
        src: Ipv6Addr,
        /// Source port.
        src_port: u16,
        /// Destination port on this node.
        dst_port: u16,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// A name the mesh resolves, and the node that published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The address the name resolves to.
    pub address: Ipv6Addr,
    /// Its IPv4 address, if the name's owner published one.
    pub address4: Option<Ipv4Addr>,
    /// The node whose update published the name.
    pub owner: Ipv6Addr,
}

/// Two or more nodes claim one name, or one address under different names. Every node resolves
/// it the same way: the claim of the node with the lowest address wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameConflict {
    /// The contested name, or the contested address as text.
    pub contested: String,
    /// The nodes that claim it, lowest address (the winner) first.
    pub claimants: Vec<Ipv6Addr>,
}

/// Why a received update was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpdateRejection {
    /// The update did not parse.
    Malformed,
    /// Same origin, epoch and sequence as the stored one.
    Duplicate,
    /// Older than the stored (or last pruned) one.
    Stale,
    /// The update claims to come from this node.
    OwnOrigin,
    /// The trust policy grants the origin address to no key.
    UnknownOrigin,
    /// The update carries no signature, but the trust policy requires one.
    Unsigned,
    /// The update is signed by a key other than the one granted the origin address.
    WrongKey,
    /// The signature does not verify.
    BadSignature,
    /// The update claims a name, prefix or attachment name the origin's grant does not allow.
    UnauthorizedContent,
}

impl UpdateRejection {
    /// Returns a short, stable name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateRejection::Malformed => "malformed",
            UpdateRejection::Duplicate => "duplicate",
            UpdateRejection::Stale => "stale",
            UpdateRejection::OwnOrigin => "own_origin",
            UpdateRejection::UnknownOrigin => "unknown_origin",
            UpdateRejection::Unsigned => "unsigned",
            UpdateRejection::WrongKey => "wrong_key",
            UpdateRejection::BadSignature => "bad_signature",
            UpdateRejection::UnauthorizedContent => "unauthorized_content",
        }
    }
}

/// Counters the node keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Packets dropped, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Updates not accepted, by reason.
    pub updates_rejected: BTreeMap<UpdateRejection, u64>,
    /// Hellos refused, by reason (the `reason` of [`Event::HelloRejected`]).
    pub hellos_rejected: BTreeMap<&'static str, u64>,
    /// Updates accepted.
    pub updates_accepted: u64,
    /// Own updates originated.
    pub updates_originated: u64,
    /// Link messages that did not parse, by error.
    pub malformed_messages: BTreeMap<&'static str, u64>,
    /// ICMPv6 errors sent.
    pub icmp_errors_sent: u64,
    /// Route computations run.
    pub spf_runs: u64,
    /// Configuration offers received, by what became of them: `handed_to_driver`,
    /// `same_as_running`, `repeated`, `deferred` (see the `offers` module).
    pub config_offers: BTreeMap<&'static str, u64>,
}

/// What the trust policy makes of a hello whose claims it grants.
enum HelloCheck {
    /// Accept it, with the peer key it proved (`None` without a policy).
    Verified(Option<PublicKey>),
    /// Its signature cannot cover our challenge yet (see [`Node::check_hello`]).
    Unproven,
}

/// One origin's latest update.
#[derive(Debug, Clone)]
struct DatabaseEntry {
    update: LinkStateUpdate,
    /// The record body exactly as received, for verbatim flooding.
    raw: Arc<[u8]>,
    received_at: Time,
    /// The key whose signature was verified, if the node checks signatures.
    key: Option<PublicKey>,
}

/// The state machine of one mesh node. See the module documentation.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    /// For every address the trust policy grants, the one key it is granted to (`None` if it is
    /// granted to several); empty without a policy.
    trusted_addresses: BTreeMap<Ipv6Addr, Option<PublicKey>>,
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
}

impl Node {
    /// Creates a node; it has no links yet.
    pub fn new(config: NodeConfig, now: Time) -> Self {
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
        let mut node = Self {
            trusted_addresses,
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

    /// Returns every name the mesh resolves right now: this node's, its attachments', and
    /// those of every reachable node (a node that becomes unreachable takes its names with it).
    pub fn names(&self) -> &BTreeMap<String, NameEntry> {
        &self.names
    }

    /// Returns the current name conflicts.
    pub fn name_conflicts(&self) -> &[NameConflict] {
        &self.name_conflicts
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

    /// Routes one IPv6 packet read from the TUN device (the simulator's TUN; the daemon calls
    /// [`crate::forwarder::Forwarder::forward_packet`] on its own buffers).
    pub fn handle_tun_packet(&mut self, now: Time, packet: &mut [u8]) {
        let forwarded = self.forward_packet(now, packet, Ingress::Tun, None);
        self.queue_forwarded(forwarded, packet);
        self.after_input(now);
    }

    /// Forwards one packet by the node's own [`Forwarder`] (the per-packet path the daemon's
    /// workers run, see [`Forwarder::forward_packet`]) and takes its counts at once; an ICMPv6
    /// error it answers with comes out of [`Node::poll_tun_packet`] or [`Node::poll_transmit`].
    pub fn forward_packet(
        &mut self,
        now: Time,
        packet: &mut [u8],
        ingress: Ingress,
        segment_len: Option<usize>,
    ) -> Forwarded {
        let forwarded = self
            .forwarder
            .forward_packet(now, packet, ingress, segment_len);
        self.absorb_own_forwarder();
        forwarded
    }

    /// Takes the own forwarder's counts and queues its ICMPv6 errors as output.
    fn absorb_own_forwarder(&mut self) {
        let mut report = std::mem::take(self.forwarder.report_mut());
        self.absorb_dataplane(&mut report);
        *self.forwarder.report_mut() = report;
        while let Some((forwarded, packet)) = self.forwarder.poll_originated() {
            match forwarded {
                Forwarded::Deliver => self.tun_packets.push_back(packet),
                Forwarded::Send(link) => self.transmits.push_back(Transmit {
                    link,
                    payload: packet,
                }),
                Forwarded::Done => {}
            }
        }
    }

    /// Takes what a dataplane worker's [`Forwarder`] counted (traffic per link, which keeps
    /// their sessions alive; drops; ICMPv6 errors) and clears the report.
    pub fn absorb_dataplane(&mut self, report: &mut DataplaneReport) {
        for (reason, n) in &report.drops {
            if *n > 0 {
                *self.counters.drops.entry(*reason).or_default() += n;
            }
        }
        for (link, traffic) in &report.links {
            if let Some(session) = self.sessions.get_mut(link) {
                session.note_traffic(traffic);
            }
        }
        self.counters.icmp_errors_sent += report.icmp_errors_sent;
        report.clear();
    }

    /// The snapshot dataplane workers forward by: install it whenever it changes (compare with
    /// [`Arc::ptr_eq`]; [`Command::InstallForwarding`] announces each new one).
    pub fn forwarding_snapshot(&self) -> &Arc<ForwardingSnapshot> {
        self.forwarder.snapshot()
    }

    /// Publishes a new forwarding snapshot if the table or the set of established sessions
    /// changed since the last one.
    fn publish_forwarding(&mut self) {
        let current = self.forwarder.snapshot();
        let same_links = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_established())
            .map(|(link, _)| *link)
            .eq(current.established.iter().copied());
        if same_links && Arc::ptr_eq(&current.table, &self.table) {
            return;
        }
        let snapshot = Arc::new(ForwardingSnapshot {
            table: self.table.clone(),
            established: self
                .sessions
                .iter()
                .filter(|(_, s)| s.is_established())
                .map(|(link, _)| *link)
                .collect(),
            generation: current.generation + 1,
        });
        self.forwarder.install(snapshot.clone());
        self.commands
            .push_back(Command::InstallForwarding(snapshot));
    }

    /// Queues a forwarded packet as the simulator's output (the daemon moves the bytes itself).
    fn queue_forwarded(&mut self, forwarded: Forwarded, packet: &[u8]) {
        match forwarded {
            Forwarded::Deliver => self.tun_packets.push_back(packet.to_vec()),
            Forwarded::Send(link) => self.transmits.push_back(Transmit {
                link,
                payload: packet.to_vec(),
            }),
            Forwarded::Done => {}
        }
    }

    /// Counts a packet the dataplane dropped.
    pub fn count_drop(&mut self, reason: DropReason) {
        *self.counters.drops.entry(reason).or_default() += 1;
    }

    /// Answers `packet`, which the dataplane rejected, with the ICMPv6 error `kind` (subject to
    /// the rate limit); the error comes out of [`Node::poll_tun_packet`] or
    /// [`Node::poll_transmit`].
    pub fn send_icmp_error(&mut self, now: Time, kind: crate::icmp::IcmpErrorKind, packet: &[u8]) {
        self.forwarder.reject(now, kind, packet);
        self.absorb_own_forwarder();
    }

    /// Sends a control datagram from `src_port` on this node to (`dst`, `dst_port`).
    ///
    /// # Errors
    /// [`DropReason::NoRoute`] if no route leads to `dst`.
    pub fn send_control_datagram(
        &mut self,
        now: Time,
        src_port: u16,
        dst: Ipv6Addr,
        dst_port: u16,
        payload: &[u8],
    ) -> Result<(), DropReason> {
        let datagram = ControlDatagram {
            hop_limit: 64,
            src: self.config.address,
            src_port,
            dst,
            dst_port,
            payload,
        };
        let result = self.route_control_datagram(now, &datagram, None);
        self.after_input(now);
        result
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
    fn update_authorized(&self, key: &PublicKey, update: &LinkStateUpdate) -> bool {
        self.config
            .trust
            .as_ref()
            .and_then(|t| t.by_key(key))
            .is_some_and(|g| g.check_update(update).is_none())
    }

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

    /// Returns the configuration version this node runs.
    pub fn config_version(&self) -> u64 {
        self.config.config_version
    }

    /// Says goodbye on every session and forgets them; the driver should then close the links.
    pub fn shutdown(&mut self, now: Time) {
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
        if now >= self.next_prune_at {
            self.prune_dead_nodes(now);
            self.next_prune_at = now + self.config.timers.prune_interval;
        }
        if now >= self.next_update_at || self.triggered_update_at.is_some_and(|t| now >= t) {
            self.originate_update(now);
        }
        self.release_pending_offers(now);
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

    fn process_link_message(&mut self, now: Time, link: LinkId, message: &mut [u8]) {
        let Some(established) = self.sessions.get(&link).map(|s| s.is_established()) else {
            return;
        };
        if is_ip_packet(message) {
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
                if established {
                    let _ = self.route_control_datagram(now, &datagram, Some(link));
                }
            }
            LinkMessage::Goodbye(_) => {
                self.close_session(now, link, CloseReason::PeerGoodbye, false);
            }
        }
    }

    fn reject_hello(&mut self, now: Time, link: LinkId, claimed: Ipv6Addr, reason: &'static str) {
        tracing::debug!(%link, %claimed, reason, "hello rejected");
        *self.counters.hellos_rejected.entry(reason).or_default() += 1;
        self.events.push_back(Event::HelloRejected {
            link,
            claimed,
            reason,
        });
        self.close_session(now, link, CloseReason::PeerRejected, true);
    }

    /// Checks a hello against the trust policy; returns the verified peer key, or why the hello
    /// is refused. Without a policy every hello passes, with no key.
    ///
    /// On a link without a channel binding, a hello that does not echo our session id was sent
    /// before the peer saw our hello, so its signature cannot cover our challenge yet: its
    /// claims are checked, its signature is not, and it is [`HelloCheck::Unproven`].
    fn check_hello(
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

    fn process_hello(&mut self, now: Time, link: LinkId, hello: &connectopus_wire::Hello) {
        if hello.address == self.config.address {
            self.reject_hello(now, link, hello.address, "own_address");
            return;
        }
        let Some(session) = self.sessions.get_mut(&link) else {
            return;
        };
        session.note_peer_hello(hello);
        let key = match self.check_hello(link, hello) {
            Ok(HelloCheck::Verified(key)) => key,
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
                    self.on_established(now, link);
                }
            }
            HelloOutcome::Established => self.on_established(now, link),
        }
    }

    fn on_established(&mut self, now: Time, link: LinkId) {
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

    fn process_record(&mut self, now: Time, link: LinkId, record: Record) {
        match record.kind {
            RecordKind::LinkStateUpdate => self.process_update(now, link, record.body),
            RecordKind::ConfigOffer => self.process_offer(now, link, &record.body),
            // Lease messages matter only to issuers and joiners; a node that is neither
            // skips them like an unknown kind.
            RecordKind::Lease | RecordKind::Unknown(_) => {}
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

    fn reject_update(&mut self, reason: UpdateRejection) {
        *self.counters.updates_rejected.entry(reason).or_default() += 1;
    }

    fn process_update(&mut self, now: Time, from: LinkId, body: Vec<u8>) {
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
        let mut verified_key = None;
        if self.config.trust.is_some() {
            let Some(granted) = self
                .trusted_addresses
                .get(&update.origin)
                .copied()
                .flatten()
            else {
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
        let key = match verified_key {
            None => None,
            Some((key, signature)) => {
                if !identity::verify(&key, &identity::update_message(signed.body), &signature) {
                    self.reject_update(UpdateRejection::BadSignature);
                    return;
                }
                if !self.update_authorized(&key, &update) {
                    self.reject_update(UpdateRejection::UnauthorizedContent);
                    return;
                }
                Some(key)
            }
        };
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
            },
        );
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
                    && s.peer().is_some_and(|p| p.address != origin)
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

    fn route_control_datagram(
        &mut self,
        now: Time,
        datagram: &ControlDatagram<'_>,
        from: Option<LinkId>,
    ) -> Result<(), DropReason> {
        if datagram.dst == self.config.address {
            self.events.push_back(Event::ControlDatagram {
                src: datagram.src,
                src_port: datagram.src_port,
                dst_port: datagram.dst_port,
                payload: datagram.payload.to_vec(),
            });
            return Ok(());
        }
        let hop_limit = if from.is_some() {
            datagram.hop_limit.saturating_sub(1)
        } else {
            datagram.hop_limit
        };
        if hop_limit == 0 {
            self.count_drop(DropReason::HopLimitExceeded);
            return Err(DropReason::HopLimitExceeded);
        }
        match self.table.routes.lookup(datagram.dst).map(|(_, t)| *t) {
            Some(RouteTarget::Link { link, .. }) => {
                let forwarded = ControlDatagram {
                    hop_limit,
                    ..*datagram
                };
                self.send_on_link(now, link, forwarded.encode());
                Ok(())
            }
            Some(RouteTarget::Local) | None => {
                self.count_drop(DropReason::NoRoute);
                Err(DropReason::NoRoute)
            }
        }
    }

    /// Answers a rejected packet with the ICMPv6 error `kind`, within the rate limit.
    fn send_on_link(&mut self, _now: Time, link: LinkId, payload: Vec<u8>) {
        match self.sessions.get_mut(&link) {
            Some(session) if session.is_established() => {
                session.note_sent(payload.len());
                self.transmits.push_back(Transmit { link, payload });
            }
            _ => self.count_drop(DropReason::LinkDown),
        }
    }

    fn close_session(&mut self, now: Time, link: LinkId, reason: CloseReason, notify_peer: bool) {
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

    fn trigger_update(&mut self, now: Time) {
        let at = now + self.config.timers.triggered_update_delay;
        if self.triggered_update_at.is_none_or(|t| at < t) {
            self.triggered_update_at = Some(at);
        }
    }

    fn schedule_spf(&mut self, now: Time) {
        if self.spf_at.is_none() {
            self.spf_at = Some(now + self.config.timers.spf_delay);
        }
    }

    /// Builds, stores and floods this node's own update.
    fn originate_update(&mut self, now: Time) {
        self.own_sequence += 1;
        self.counters.updates_originated += 1;
        self.next_update_at = now + self.config.timers.update_interval;
        self.triggered_update_at = None;
        let mut best: BTreeMap<Ipv6Addr, Cost> = BTreeMap::new();
        for session in self.sessions.values() {
            if let (true, Some(peer)) = (session.is_established(), session.peer()) {
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
            names: self.config.names.clone(),
            names4: self.own_names4(),
            extensions: Vec::new(),
        };
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
            .filter(|(_, s)| s.is_established())
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

    fn prune_dead_nodes(&mut self, now: Time) {
        self.pruned.expire(now);
        self.expire_offer_state(now);
        let dead_after = self.config.timers.node_dead_after;
        let dead: Vec<Ipv6Addr> = self
            .database
            .iter()
            .filter(|(_, e)| now - e.received_at >= dead_after)
            .map(|(a, _)| *a)
            .collect();
        for address in dead {
            if let Some(entry) = self.database.remove(&address) {
                tracing::debug!(node = %address, name = %entry.update.name, "removing dead node");
                self.pruned
                    .insert(address, (entry.update.epoch, entry.update.sequence), now);
                self.events.push_back(Event::NodePruned { address });
                self.schedule_spf(now);
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
                let hello = session
                    .hello(address, &self.config.name, epoch, key, capabilities)
                    .encode();
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
        self.publish_forwarding();
        self.update_fastpath();
    }

    /// Runs Dijkstra over the database and installs a new forwarding table if it changed.
    fn recompute_routes(&mut self) {
        self.counters.spf_runs += 1;
        let own_prefixes = self.own_prefixes();
        let own = route::NodeView {
            address: self.config.address,
            adjacencies: &self.own_adjacencies,
            prefixes: &own_prefixes,
        };
        let others = self.database.values().map(|e| route::NodeView {
            address: e.update.origin,
            adjacencies: &e.update.adjacencies,
            prefixes: &e.update.prefixes,
        });
        let routes = route::compute_routes(
            self.config.address,
            std::iter::once(own).chain(others),
            SpfOptions {
                require_bidirectional: true,
            },
        );
        let table = self.build_forwarding_table(&routes);
        self.routes = routes;
        self.rebuild_names();
        if !same_routes(&table.routes, &self.table.routes) || self.table.node_address.is_none() {
            let n_routes = table.routes.len();
            let table = Arc::new(ForwardingTable {
                generation: self.table.generation + 1,
                ..table
            });
            self.table = table;
            self.fastpath_dirty = true;
            self.events.push_back(Event::RoutesChanged { n_routes });
        }
        self.publish_forwarding();
    }

    /// Rebuilds the name table from this node and every reachable origin, resolving conflicts
    /// by the lowest claimant address.
    fn rebuild_names(&mut self) {
        // (name, address, owner) claims, from this node first.
        let mut claims: Vec<(String, Ipv6Addr, Ipv6Addr)> = Vec::new();
        let own = self.config.address;
        claims.push((self.config.name.clone(), own, own));
        for binding in &self.config.names {
            claims.push((binding.name.clone(), binding.address, own));
        }
        for entry in self.database.values() {
            let origin = entry.update.origin;
            if !self.routes.nodes.contains_key(&origin) {
                continue;
            }
            claims.push((entry.update.name.clone(), origin, origin));
            for binding in &entry.update.names {
                claims.push((binding.name.clone(), binding.address, origin));
            }
        }
        let mut by_name: BTreeMap<String, Vec<(Ipv6Addr, Ipv6Addr)>> = BTreeMap::new();
        let mut by_address: BTreeMap<Ipv6Addr, Vec<(Ipv6Addr, String)>> = BTreeMap::new();
        for (name, address, owner) in claims {
            by_address
                .entry(address)
                .or_default()
                .push((owner, name.clone()));
            by_name.entry(name).or_default().push((owner, address));
        }
        let mut names = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (name, mut owners) in by_name {
            owners.sort();
            owners.dedup();
            let Some(&(owner, address)) = owners.first() else {
                continue;
            };
            let mut claimants: Vec<Ipv6Addr> = owners.iter().map(|(o, _)| *o).collect();
            claimants.dedup();
            if claimants.len() > 1 {
                conflicts.push(NameConflict {
                    contested: name.clone(),
                    claimants,
                });
            }
            let address4 = self
                .names4_of(owner)
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a);
            names.insert(
                name,
                NameEntry {
                    address,
                    address4,
                    owner,
                },
            );
        }
        for (address, mut owners) in by_address {
            owners.sort();
            owners.dedup_by(|a, b| a.0 == b.0);
            if owners.len() > 1 {
                conflicts.push(NameConflict {
                    contested: address.to_string(),
                    claimants: owners.iter().map(|(o, _)| *o).collect(),
                });
                // The address belongs to the lowest claimant: drop other owners' names for it.
                let winner = owners[0].0;
                names.retain(|_, e| e.address != address || e.owner == winner);
            }
        }
        for conflict in &conflicts {
            if !self.name_conflicts.contains(conflict) {
                tracing::warn!(contested = %conflict.contested, claimants = ?conflict.claimants, "name conflict");
                self.events.push_back(Event::NameConflict(conflict.clone()));
            }
        }
        self.name_conflicts = conflicts;
        if names != self.names {
            self.names = names;
            self.events.push_back(Event::NamesChanged {
                n_names: self.names.len(),
            });
        }
    }

    /// Chooses, for every first-hop neighbour, the session that carries its traffic: the
    /// cheapest established one, the newest on ties.
    fn best_links(&self) -> BTreeMap<Ipv6Addr, (LinkId, u16)> {
        let mut best: BTreeMap<Ipv6Addr, (Cost, Time, LinkId, u16)> = BTreeMap::new();
        for (link, session) in &self.sessions {
            let (true, Some(peer)) = (session.is_established(), session.peer()) else {
                continue;
            };
            let candidate = (
                session.info().cost,
                session.established_at().unwrap_or(Time::ZERO),
                *link,
                session.info().mtu,
            );
            best.entry(peer.address)
                .and_modify(|current| {
                    if (candidate.0, std::cmp::Reverse(candidate.1))
                        < (current.0, std::cmp::Reverse(current.1))
                    {
                        *current = candidate;
                    }
                })
                .or_insert(candidate);
        }
        best.into_iter()
            .map(|(peer, (_, _, link, mtu))| (peer, (link, mtu)))
            .collect()
    }

    fn build_forwarding_table(&self, routes: &RouteSet) -> ForwardingTable {
        let links = self.best_links();
        let mut table: PrefixTable<RouteTarget> = PrefixTable::new();
        let target = |first_hop: Option<Ipv6Addr>| match first_hop {
            None => Some(RouteTarget::Local),
            Some(hop) => links.get(&hop).map(|(link, mtu)| RouteTarget::Link {
                link: *link,
                mtu: *mtu,
            }),
        };
        for (prefix, route) in &routes.prefixes {
            if let Some(t) = target(route.first_hop) {
                table.insert(*prefix, t);
            }
        }
        for (address, route) in &routes.nodes {
            if let Some(t) = target(route.first_hop) {
                table.insert(Prefix::host(*address), t);
            }
        }
        // A neighbour whose update has not arrived yet is still reachable directly.
        for (peer, (link, mtu)) in &links {
            let host = Prefix::host(*peer);
            if table.get(&host).is_none() {
                table.insert(
                    host,
                    RouteTarget::Link {
                        link: *link,
                        mtu: *mtu,
                    },
                );
            }
        }
        table.insert(Prefix::host(self.config.address), RouteTarget::Local);
        if let Some(address4) = self.config.address4 {
            table.insert(Prefix::host(mapped(address4)), RouteTarget::Local);
        }
        ForwardingTable {
            routes: table,
            node_address: Some(self.config.address),
            node_address4: self.config.address4,
            generation: 0,
        }
    }

    /// The prefixes this node advertises: its attachments' and its IPv4 address as an
    /// IPv4-mapped /128.
    fn own_prefixes(&self) -> Vec<PrefixAdvert> {
        let mut prefixes = self.config.prefixes.clone();
        if let Some(address4) = self.config.address4 {
            prefixes.push(PrefixAdvert {
                prefix: Prefix::host(mapped(address4)),
                cost: Cost(0),
            });
        }
        prefixes
    }

    /// The IPv4 names this node publishes: its own name at `address4` and its attachments'.
    fn own_names4(&self) -> Vec<NameBinding4> {
        let mut names4 = self.config.names4.clone();
        if let Some(address) = self.config.address4 {
            names4.push(NameBinding4 {
                name: self.config.name.clone(),
                address,
            });
        }
        names4
    }

    /// The IPv4 names `owner` (this node or a known origin) publishes.
    fn names4_of(&self, owner: Ipv6Addr) -> impl Iterator<Item = (&str, Ipv4Addr)> + '_ {
        let own = (owner == self.config.address).then(|| {
            let attachments = self
                .config
                .names4
                .iter()
                .map(|b| (b.name.as_str(), b.address));
            let node = self.config.address4.map(|a| (self.config.name.as_str(), a));
            node.into_iter().chain(attachments)
        });
        let origin = self
            .database
            .get(&owner)
            .filter(|_| owner != self.config.address)
            .map(|e| e.update.names4.iter().map(|b| (b.name.as_str(), b.address)));
        own.into_iter()
            .flatten()
            .chain(origin.into_iter().flatten())
    }
}

fn same_routes(a: &PrefixTable<RouteTarget>, b: &PrefixTable<RouteTarget>) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

fn encode_update_record(raw: &[u8], out: &mut Vec<u8>) {
    Record {
        kind: RecordKind::LinkStateUpdate,
        body: raw.to_vec(),
    }
    .encode_into(out);
}
