//! What the node answers on the control socket: the reply to each request, `status`'s
//! report with its parts (workers, links, routes, namespaces, leases) and a reload's outcome,
//! as serialized to one JSON line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The file is the configuration the node runs.
    Unchanged,
    /// The new configuration is applied in place.
    Applied,
    /// The new configuration is persisted and being offered to the neighbours; the node
    /// applies it once every neighbour has it (at most a few seconds later).
    Accepted,
    /// The new configuration is persisted and the mesh instance restarts on it.
    Restarting,
    /// The new configuration does not contain this node, which stopped forwarding.
    Removed,
    /// The files could not be read, or the configuration was refused; nothing changed.
    Refused,
}

/// The answer to [`ControlRequest::Reload`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// What happened.
    pub result: ReloadResult,
    /// The version the node runs afterwards.
    pub version: u64,
    /// What changed, one line each (empty unless applied, restarting or removed).
    pub changes: Vec<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// A node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// The node's state.
    Status(Box<StatusReport>),
    /// The running configuration.
    Config {
        /// The configuration file's text, exactly as signed.
        config: String,
        /// The signature file's text.
        signature: String,
    },
    /// A configuration was accepted.
    Accepted {
        /// Its version.
        version: u64,
    },
    /// The outcome of a reload.
    Reloaded(ReloadOutcome),
    /// The request was done; what the node says about it.
    Done(String),
    /// An issuer's active leases (`{"cmd":"leases"}`).
    Leases(Vec<LeaseEntry>),
    /// A container's lease (`cni_add`, docs/dynamic-mesh.md §3.3).
    CniLease(CniLease),
    /// The leases `cni_gc` released.
    CniReleased(Vec<CniReleased>),
    /// A `cni_*` request failed, with the CNI error code the plugin returns.
    CniError {
        /// The CNI code (11 try again later, 50 STATUS: not available, 100 pool exhausted,
        /// 101 the node does not serve containers, 103 CHECK mismatch).
        code: u32,
        /// What went wrong.
        msg: String,
    },
    /// The request failed.
    Error(String),
}

/// A container's lease, as the CNI plugin sets it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniLease {
    /// The container's address.
    pub address: std::net::Ipv6Addr,
    /// Its mirrors in the mesh prefixes that are live (not deprecated).
    pub mirrors: Vec<std::net::Ipv6Addr>,
    /// Prefixes the container routes via the node: the subnet and the live mirror planes.
    pub routes: Vec<String>,
    /// The node's MTU.
    pub mtu: u32,
    /// The node's DNS server, when it runs one.
    pub nameserver: Option<std::net::Ipv6Addr>,
    /// The mesh domain.
    pub domain: String,
    /// The container's name in the mesh (with a `-<4 hex>` suffix if the asked one was held).
    pub name: String,
    /// The container held the lease already (a repeated ADD).
    pub existing: bool,
}

/// A lease `cni_gc` released, and the host side of its veth pair for the plugin to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReleased {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The address it held.
    pub address: std::net::Ipv6Addr,
    /// The host side of its veth pair (`cx…`).
    pub host_ifname: String,
}

/// Everything `connectopus status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Node name.
    pub name: String,
    /// Node mesh address.
    pub address: String,
    /// Mesh subnet.
    pub subnet: String,
    /// Mesh DNS domain.
    #[serde(default)]
    pub domain: String,
    /// Leases (docs/dynamic-mesh.md): an ephemeral node's (address, issuer, seconds left),
    /// an issuer's pool and lease count (absent from older nodes and other nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseReport>,
    /// The mesh prefix planes (DHCPv6-PD, docs/dynamic-mesh.md §2) the node holds now, with
    /// its mirror address in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_prefixes: Vec<MeshPrefixReport>,
    /// The keys that may sign configurations (`global.authorized_keys` of the running one).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Routing epoch of this instance.
    pub epoch: u64,
    /// Sequence number of the latest own update.
    pub sequence: u64,
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Version of the configuration the node runs.
    pub config_version: u64,
    /// Why the node does not forward, if the running configuration no longer contains it.
    pub removed: Option<String>,
    /// Names the mesh resolves, with the node that published each.
    pub names: Vec<NameReport>,
    /// Names or addresses claimed by more than one node (the lowest address wins).
    pub name_conflicts: Vec<String>,
    /// The built-in DNS server: where it listens, or why it does not.
    pub dns: String,
    /// TUN device name.
    pub tun: String,
    /// Packet I/O backend (`io_uring` or `syscall`).
    pub dataplane: String,
    /// Why io_uring is not used, if it is not.
    pub dataplane_fallback_reason: Option<String>,
    /// What the dataplane offloads, and why something is off (absent from older nodes).
    #[serde(default)]
    pub offload: OffloadReport,
    /// The dataplane workers, each with the fallbacks it runs on (absent from older nodes).
    #[serde(default)]
    pub workers: Vec<WorkerReport>,
    /// With worker threads (`workers` > 1): the main loop, which is the control plane and the
    /// slow path only (links no worker receives, TCP links before their session, the node's
    /// other TUN devices, what the workers hand over). Absent with one worker, which runs on
    /// the main loop.
    #[serde(default)]
    pub control_plane: Option<WorkerReport>,
    /// Cores the node may run on (what `workers` would be with one worker per core).
    #[serde(default)]
    pub cores: usize,
    /// Why the workers' idle wake-ups are on or off: what a wake-up across CPUs cost at
    /// start, cold and warm, or who set them (absent from older nodes).
    #[serde(default)]
    pub idle_wake: String,
    /// The CPU-local data path (`--cpu-local`): `on: worker 0 on CPU 0, …` (what each worker
    /// thread asked for; `cpu` of each worker says whether it got it), or `off: <why>`.
    #[serde(default)]
    pub cpu_local: String,
    /// State of the eBPF program on the TUN device.
    pub ebpf: String,
    /// State of the eBPF fast path: `on (...)` or `off: <why>` (absent from older nodes).
    #[serde(default)]
    pub fastpath: String,
    /// Packets the fast path left to userspace, by reason (`eg_miss`, `in_unknown_peer`, ...).
    #[serde(default)]
    pub fastpath_fallbacks: BTreeMap<String, u64>,
    /// Effective capabilities the node runs with (e.g. `cap_net_admin`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether `no_new_privs` is set.
    #[serde(default)]
    pub no_new_privs: bool,
    /// The seccomp filter: `on (N syscalls)`, `log (N syscalls)` or `off: <why>`.
    #[serde(default)]
    pub seccomp: String,
    /// The configured backends: running, or retrying after a failed start.
    #[serde(default)]
    pub backends: Vec<BackendReport>,
    /// Links and their sessions.
    pub links: Vec<LinkReport>,
    /// The forwarding table.
    pub routes: Vec<RouteReport>,
    /// Every node in the link-state database (this one included).
    pub nodes: Vec<NodeReport>,
    /// Packets dropped, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Other counters.
    pub counters: BTreeMap<String, u64>,
    /// Seconds spent in the loop turns that ran a route computation (SPF); an upper bound of
    /// the SPF time itself (absent from older nodes).
    #[serde(default)]
    pub spf_seconds_total: f64,
    /// DNS queries answered or dropped, by result: `noerror`, `nxdomain`, `refused`,
    /// `error`, `dropped` (empty when the DNS server is off; absent from older nodes).
    #[serde(default)]
    pub dns_queries: BTreeMap<String, u64>,
    /// The node's network namespaces (`namespaces`; absent from older nodes).
    #[serde(default)]
    pub namespaces: Vec<NamespaceReport>,
    /// The node's inetd-style services (`services`; absent from older nodes).
    #[serde(default)]
    pub services: Vec<ServiceReport>,
}

/// One of the node's network namespaces.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// Its name (and DNS name).
    pub name: String,
    /// Its mesh address.
    pub address: String,
    /// Its IPv4 mesh address, if it has one.
    pub address4: Option<String>,
    /// `up`, `starting`, or `failed: <why> (retrying)`.
    pub state: String,
    /// The process that holds it, while up.
    pub pid: Option<i32>,
    /// Its long-running services.
    pub services: Vec<NamespaceServiceReport>,
}

/// A service running inside a namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceServiceReport {
    /// Its name.
    pub name: String,
    /// Its process, while it runs (none while it waits to be restarted).
    pub pid: Option<i32>,
    /// How many times it was started again after exiting.
    pub restarts: u32,
}

/// An inetd-style service on the node's mesh address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Its name.
    pub name: String,
    /// Its TCP port.
    pub port: u16,
    /// Whether its listener is bound (it retries every second until it is).
    pub listening: bool,
    /// Connections whose process runs now.
    pub active: u32,
    /// Most connections served at once.
    pub max_connections: u32,
    /// Connections handed to a process since the listener started.
    pub served: u64,
    /// Connections closed at once because `max_connections` ran.
    pub refused: u64,
}

/// The dataplane's offloads: each is "on", or "off: <why>".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OffloadReport {
    /// Per TUN device: virtio-net header with checksum, TSO and USO offloads.
    pub tun: BTreeMap<String, String>,
    /// UDP GSO: a batch of DTLS records per `sendmsg`.
    pub udp_gso: String,
    /// UDP GRO: a batch of DTLS records per receive.
    pub udp_gro: String,
}

/// One dataplane worker and what it runs on: each feature is "on", or "off: <why>" (the node
/// runs either way, on the fallback).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Its number, from 0.
    pub index: usize,
    /// The thread it runs on.
    pub thread: String,
    /// That thread's id (Linux `gettid`; 0 from older nodes): every worker thread's differs
    /// from the control plane's.
    #[serde(default)]
    pub thread_id: u64,
    /// Batched packet I/O on io_uring (off: one syscall per operation).
    pub io_uring: String,
    /// A TUN queue of its own (`IFF_MULTI_QUEUE`; off: the one queue of each device).
    pub tun_multi_queue: String,
    /// Per TUN device: virtio-net header with checksum, TSO and USO offloads.
    pub tun_offload: BTreeMap<String, String>,
    /// UDP GSO: a batch of DTLS records per `sendmsg`.
    pub udp_gso: String,
    /// UDP GRO: a batch of DTLS records per receive.
    pub udp_gro: String,
    /// Link sockets of its own (`SO_REUSEPORT`; off: the node's one socket per endpoint).
    pub udp_reuseport: String,
    /// `running`, or `stopped: <why>` (its flows moved to the other workers).
    #[serde(default)]
    pub state: String,
    /// Reads from its TUN queues so far.
    #[serde(default)]
    pub tun_reads: u64,
    /// Packets a worker thread handed to the main loop (links it does not send on, the node's
    /// other TUN devices, ICMPv6 errors); 0 for the main loop's own entry.
    #[serde(default)]
    pub handed_to_main: u64,
    /// DTLS records it opened (the links it receives, see `receive_links`).
    #[serde(default)]
    pub records_opened: u64,
    /// Plaintext udp data datagrams it received (the udp links it receives).
    #[serde(default)]
    pub datagrams_received: u64,
    /// DTLS and plaintext udp links whose datagrams it receives.
    #[serde(default)]
    pub receive_links: u64,
    /// Received link messages a worker thread handed to the main loop (hellos, the routing
    /// stream, handshake records); 0 for the main loop's own entry.
    #[serde(default)]
    pub received_for_main: u64,
    /// TCP/TLS links whose stream it reads and writes (a link goes to a worker thread once its
    /// session is established; the main loop holds it until then).
    #[serde(default)]
    pub tcp_links: u64,
    /// Reads from the streams of those links so far.
    #[serde(default)]
    pub tcp_reads: u64,
    /// The most packet buffers its pool had in use at once since the start (held, in flight,
    /// or posted for receives): its peak packet memory is this many buffers (64 KiB each
    /// with offloads).
    #[serde(default)]
    pub buffers_peak: u64,
    /// Packet buffers whose pages may be resident now (used since the pool last released
    /// them).
    #[serde(default)]
    pub buffers_touched: u64,
    /// Idle wake-ups in force, in µs: for a while after a receive, a sleep of the worker lasts
    /// at most this long (0: off, or the syscall backend; `CONNECTOPUS_IDLE_WAKE_US`).
    #[serde(default)]
    pub idle_wake_us: u64,
    /// Busy polling in force, in µs: after a busy turn the worker polls this long before it
    /// sleeps (0: off, or the syscall backend; `CONNECTOPUS_BUSY_POLL_US`).
    #[serde(default)]
    pub busy_poll_us: u64,
    /// `CPU n`: pinned there for the CPU-local data path; else `not pinned` (and why).
    #[serde(default)]
    pub cpu: String,
}

/// One configured backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    /// Backend name.
    pub name: String,
    /// Backend type (`dtls-listener`, ...).
    pub kind: String,
    /// `up` (it runs), or `retrying` (its start failed; it is tried again every 5 s).
    pub state: String,
    /// Why its last start failed, while retrying.
    pub error: Option<String>,
    /// Failed start attempts so far (0 when up).
    pub failed_attempts: u64,
    /// When its first failed attempt was, as seconds since the Unix epoch.
    pub failing_since_unix: Option<f64>,
    /// Seconds until the next attempt, while retrying.
    pub next_attempt_secs: Option<f64>,
}

/// One link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkReport {
    /// Link id.
    pub link: u64,
    /// Backend name.
    pub backend: String,
    /// Backend type and role.
    pub kind: String,
    /// Remote underlay address.
    pub remote: String,
    /// Session state (`handshaking`, `established`) or transport state.
    pub state: String,
    /// Peer node address, once its hello arrived.
    pub peer_address: Option<String>,
    /// Peer node name, once its hello arrived.
    pub peer_name: Option<String>,
    /// When the session was established, as seconds since the Unix epoch.
    pub since_unix: Option<f64>,
    /// Latest round-trip time.
    pub rtt_ms: Option<f64>,
    /// Link cost.
    pub cost: f64,
    /// Link MTU.
    pub mtu: u16,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Link messages received: data packets and routing messages (absent from older nodes).
    #[serde(default)]
    pub packets_in: u64,
    /// Link messages sent.
    #[serde(default)]
    pub packets_out: u64,
    /// DTLS links: the epochs records are sealed in and opened from (they grow at each key
    /// update, hourly or every 2^28 records).
    #[serde(default)]
    pub dtls_epochs: Option<[u16; 2]>,
    /// DTLS links: the cipher suite the handshake negotiated (OpenSSL's name).
    #[serde(default)]
    pub dtls_cipher: Option<String>,
    /// Plaintext udp links: whether the eBPF fast path carries the link, and what it carried.
    #[serde(default)]
    pub fastpath: Option<crate::daemon::LinkFastpathReport>,
}

/// One name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameReport {
    /// The name (without the mesh domain).
    pub name: String,
    /// Its address.
    pub address: String,
    /// The node that published it.
    pub owner: String,
}

/// One forwarding-table entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    /// Destination prefix.
    pub prefix: String,
    /// `local`, or the link id.
    pub via: String,
    /// Name of the next-hop node, when known.
    pub next_hop: Option<String>,
    /// Path cost, when known.
    pub cost: Option<f64>,
}

/// One node of the link-state database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// Address.
    pub address: String,
    /// Name.
    pub name: String,
    /// Epoch of its latest update.
    pub epoch: u64,
    /// Sequence of its latest update.
    pub sequence: u64,
    /// Seconds since its latest update arrived.
    pub age_secs: f64,
    /// Path cost from this node, if reachable.
    pub cost: Option<f64>,
    /// Its adjacencies as `(peer address, cost)`.
    pub adjacencies: Vec<(String, f64)>,
}

/// One active lease of an issuer's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The leased address.
    pub address: String,
    /// The holder's name.
    pub name: String,
    /// The holder's ed25519 key, hex.
    pub key: String,
    /// The lease's epoch and renewal count.
    pub epoch: u64,
    pub renewal: u32,
    /// Seconds until it expires at the issuer (before the grace); a container's lease does
    /// not expire.
    pub expires_in_secs: f64,
    /// A container's lease: `network/container_id/ifname` (absent for ephemeral nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One mesh prefix plane in `status` (docs/dynamic-mesh.md §2.5).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshPrefixReport {
    /// The plane: the subnet mirrored into the delegated prefix (`2001:db8:100::/64`).
    pub prefix: String,
    /// The prefix the delegating node was given (`2001:db8:100::/56`).
    pub delegated: String,
    /// The delegating node's address, and its name when the node knows it.
    pub origin: String,
    #[serde(default)]
    pub origin_name: Option<String>,
    /// `active`, or `deprecated` (being renumbered away, or past its preferred lifetime).
    pub state: String,
    /// Seconds until the plane is withdrawn, by this node's clock.
    pub valid_for_secs: f64,
    /// This node's address in the plane (none while an ephemeral node has no lease).
    #[serde(default)]
    pub mirror: Option<String>,
}

/// The lease side of `status` (docs/dynamic-mesh.md §1.8).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// `joining`, `bound`, `renewing` (an ephemeral node) or `issuing`.
    pub state: String,
    /// The ephemeral node's leased address.
    #[serde(default)]
    pub address: Option<String>,
    /// Its issuer's address.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Seconds until the ephemeral node's lease ends (by its own count).
    #[serde(default)]
    pub expires_in_secs: Option<f64>,
    /// The issuer's pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// The issuer's active leases.
    #[serde(default)]
    pub leases: Option<u64>,
    /// Lease tables handed to the writer thread, written to `<config>.leases`, and failed
    /// writes (each retry counts).
    #[serde(default)]
    pub tables_submitted: u64,
    #[serde(default)]
    pub tables_written: u64,
    #[serde(default)]
    pub table_write_errors: u64,
}
