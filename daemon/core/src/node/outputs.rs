//! What a node hands its driver: link messages ([`Transmit`]), requests ([`Command`]),
//! what happened ([`Event`]), and its counters.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

#[cfg(doc)]
use super::Node;
use super::{FastpathEntry, MeshPrefix, NameConflict};
use crate::LinkId;
use crate::forward::DropReason;
use crate::forwarder::ForwardingSnapshot;
use crate::lease_table::PersistedLeases;
use crate::session::CloseReason;
use crate::time::Time;

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
    /// The live mirror planes from now on, the whole set sorted by prefix
    /// (`docs/dynamic-mesh.md` §2.4): put φ(own address) on the TUN devices and route each
    /// plane into them; deprecated planes' addresses get `preferred_lft 0`. Issued in the turn
    /// the forwarding table gets or loses the planes' mirrors.
    SetMeshPrefixes(Arc<[MeshPrefix]>),
    /// Apply the configuration proposed with [`Node::propose_config`]: every neighbour
    /// acknowledged its offer, or the wait timed out. The node already runs its version.
    ApplyConfig {
        /// Its version.
        version: u64,
        /// Neighbours that had not acknowledged the offer when the wait timed out.
        unacknowledged: Vec<Ipv6Addr>,
    },
    /// An issuer's lease table changed: write it (temporary file, fsync, rename) and report
    /// it written with [`Node::leases_persisted`]; the grants it records wait until then.
    PersistLeases {
        /// The table's generation, handed back to [`Node::leases_persisted`].
        generation: u64,
        /// The table as it goes to disk.
        table: Arc<PersistedLeases>,
    },
    /// An ephemeral node's address changed: add it (a /128, `nodad`) and the mesh routes, or
    /// remove the old one when `address` is `None` (the lease was lost).
    SetAddress {
        /// The node's address from now on, if any.
        address: Option<Ipv6Addr>,
        /// When the holder lets go of it unless a renewal arrives first.
        expires: Option<Time>,
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
    /// Something happened to a lease, at an issuer or a holder.
    Lease(LeaseEvent),
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

/// What happened to a lease (see `docs/dynamic-mesh.md` §1.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Issuer: a grant was answered (its table is persisted).
    Granted {
        /// The address.
        address: Ipv6Addr,
        /// The holder's name.
        name: String,
        /// The lease's epoch.
        epoch: u64,
        /// The holder's key.
        key: [u8; 32],
    },
    /// Issuer: a holder released its address (held down for the grace).
    Released {
        /// The address.
        address: Ipv6Addr,
    },
    /// Issuer: leases ran out (their addresses are held down for the grace).
    Expired {
        /// How many.
        count: usize,
    },
    /// Holder: the node joined with `address` from `issuer`.
    Joined {
        /// The address.
        address: Ipv6Addr,
        /// The name.
        name: String,
        /// The issuer.
        issuer: Ipv6Addr,
        /// When the holder lets go unless renewed.
        expires: Time,
    },
    /// Holder: the lease was renewed.
    Renewed {
        /// The address.
        address: Ipv6Addr,
        /// When the holder lets go unless renewed again.
        expires: Time,
    },
    /// Holder: the address is gone (expired, or the renewal was refused).
    AddressLost {
        /// The address.
        address: Ipv6Addr,
    },
    /// Holder: an issuer refused the join (or did not answer in time).
    JoinRefused {
        /// The issuer.
        issuer: Ipv6Addr,
        /// Why.
        reason: &'static str,
    },
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
    /// The origin has no static grant and its lease certificate is missing its holder's
    /// signature on the update, does not parse, or is not a pool owner's for this origin.
    BadLease,
    /// The origin's lease certificate is superseded by a later holder's or ran out.
    ExpiredLease,
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
            UpdateRejection::BadLease => "bad_lease",
            UpdateRejection::ExpiredLease => "expired_lease",
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
    /// Lease messages and joining sessions, by what became of them (`join_in`, `grant_out`,
    /// `renew_refused`, `not_joined`, ...; see the `issuer` and `joiner` modules).
    pub leases: BTreeMap<&'static str, u64>,
}
