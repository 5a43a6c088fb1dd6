//! What a node is configured with: [`NodeConfig`] and its [`NodeTimers`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use connectopus_wire::{LeaseCertificate, NameBinding, NameBinding4, PrefixAdvert, RecordLimits};

use super::MeshPrefixConfig;
use super::issuer::IssuerSetup;
#[cfg(doc)]
use super::{Command, Node};
use crate::identity::{self, NodeKey, TrustPolicy};
use crate::lease_holder::JoinConfig;
#[cfg(doc)]
use crate::session::CloseReason;
use crate::session::SessionTimers;
use crate::stream::StreamConfig;

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
    /// The node's lease certificate if it is an ephemeral node (`docs/dynamic-mesh.md` §1.3):
    /// its `address`, `name` and `epoch` must be the certificate's, and `identity` its holder
    /// key. Hellos carry it (extension 5) and own updates carry it (LSU extension kind 1).
    pub certificate: Option<LeaseCertificate>,
    /// The subnet and the nodes that may delegate prefixes to the mesh (`global.delegated`,
    /// `docs/dynamic-mesh.md` §2); `None`: no mesh prefix, and extension kind 2 is refused.
    pub mesh_prefix: Option<MeshPrefixConfig>,
    /// The node issues leases from a pool (`docs/dynamic-mesh.md` §1.4): it serves joining
    /// sessions, renewals and releases, and asks the driver to persist its table
    /// ([`Command::PersistLeases`]) before it answers a grant.
    pub issuer: Option<IssuerSetup>,
    /// The node is an ephemeral node that joins with an address an issuer grants: it starts
    /// with the address `::` (whatever `address` says), sends join hellos, and re-addresses
    /// itself on the grant ([`Command::SetAddress`]). Needs `identity` (the holder key).
    pub join: Option<JoinConfig>,
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
            certificate: None,
            mesh_prefix: None,
            issuer: None,
            join: None,
        }
    }
}
