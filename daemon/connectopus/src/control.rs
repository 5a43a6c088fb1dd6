//! The local control socket: a Unix socket (mode 0600, so root only) that answers requests
//! such as `status` with one JSON line.
//!
//! Protocol: the client writes one JSON request terminated by a newline; the node answers with
//! one JSON reply terminated by a newline and closes the connection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::backends::{LoopMessage, LoopSender};

mod request;
pub use request::{CniAttachment, ControlRequest, parse_request};

/// Where a node's control socket lives by default.
pub fn default_socket_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/connectopus/{node}.sock"))
}

/// The first line of the file a node with `cpctl.no_socket` leaves where its socket would
/// be, so that a client can say why it cannot reach the node.
const NO_SOCKET_MARKER: &str = "connectopus: no control socket (cpctl.no_socket)";

/// Leaves the `cpctl.no_socket` marker for `node` at `path` (a stale socket or marker there is
/// replaced); what fails is only logged. [`remove_no_socket_marker`] takes it away.
pub fn mark_no_socket(path: &Path, node: &str) {
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            tracing::warn!(path = %path.display(), "another node serves a control socket here; not marking it");
            return;
        }
        let _ = std::fs::remove_file(path);
    }
    let text = format!("{NO_SOCKET_MARKER}\nnode {node}\n");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(error) = written {
        tracing::debug!(path = %path.display(), %error, "cannot leave the no_socket marker");
    }
}

/// Removes the marker [`mark_no_socket`] left (and nothing else).
pub fn remove_no_socket_marker(path: &Path) {
    if no_socket_marker(path).is_some() {
        let _ = std::fs::remove_file(path);
    }
}

/// The node named by a `cpctl.no_socket` marker at `path`, if there is one.
fn no_socket_marker(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    (lines.next()? == NO_SOCKET_MARKER).then_some(())?;
    Some(lines.next()?.strip_prefix("node ")?.to_owned())
}

/// Why no node answers at `path`, for a client's error.
fn unreachable(path: &Path) -> String {
    if let Some(node) = no_socket_marker(path) {
        return format!(
            "node {node} serves no control socket at {}: its configuration sets \
             nodes.{node}.cpctl.no_socket (with cpctl.port set, `--node {node}` through \
             another node reaches it; or remove no_socket)",
            path.display()
        );
    }
    format!(
        "connecting to {}: is the node running (and are you root)? A node whose configuration \
         sets cpctl.socket_file serves its socket there instead (pass --socket PATH)",
        path.display()
    )
}

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

/// Binds the control socket (replacing a stale one) and serves it on a thread.
///
/// # Errors
/// The socket cannot be created.
pub fn spawn_server(
    path: &Path,
    to_loop: LoopSender,
    http: crate::api::Handoff,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use: is another node with this id running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = bind_private(path)?;
    let handle = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, to_loop, http, stop))
        .context("spawning control thread")?;
    Ok(handle)
}

/// Binds a Unix socket at `path` that only this user can connect to, with no moment at which
/// anyone else could: the socket is bound inside a fresh 0700 directory (`mkdtemp` beside
/// `path`), set to 0600 there, and only then renamed to `path`. A bind-then-chmod at `path`
/// itself would leave it open to every local user for the time between the two calls.
///
/// # Errors
/// The directory or the socket cannot be created, or the rename fails.
pub fn bind_private(path: &Path) -> Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        bail!("{} is not a socket path", path.display());
    }
    let private = crate::edit::PrivateDir::new(parent, ".cx-sock-")?;
    // A one-letter name: the staged path must fit in sun_path (108 bytes) like the final one.
    let staged = private.path().join("s");
    let listener =
        UnixListener::bind(&staged).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("placing {}", path.display()))?;
    Ok(listener)
}

fn serve(
    listener: UnixListener,
    to_loop: LoopSender,
    http: crate::api::Handoff,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        // Wakes every 200 ms to notice `stop`.
        if !crate::backends::readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if let Err(error) = answer(stream, &to_loop, &http) {
            tracing::debug!(error = %format!("{error:#}"), "control request failed");
        }
    }
}

fn answer(stream: UnixStream, to_loop: &LoopSender, http: &crate::api::Handoff) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    // A request may carry a whole mesh configuration.
    let mut reader = BufReader::new((&stream).take(256 * 1024 * 1024));
    // An HTTP request line (`GET / HTTP/1.1`) instead of a JSON one: the API serves it.
    if reader
        .fill_buf()?
        .first()
        .is_some_and(u8::is_ascii_uppercase)
    {
        let prefix = reader.buffer().to_vec();
        drop(reader);
        http.unix(stream, prefix);
        return Ok(());
    }
    reader.read_line(&mut line)?;
    drop(reader);
    let reply = match parse_request(&line) {
        Ok(request) => {
            let (tx, rx) = mpsc::channel();
            if !to_loop.send(LoopMessage::Control { request, reply: tx }) {
                ControlReply::Error("node is shutting down".into())
            } else {
                rx.recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| ControlReply::Error("node did not answer".into()))
            }
        }
        Err(error) => ControlReply::Error(format!("bad request: {error}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

/// Sends `request` to the node listening on `path`, or with `--node` to that node through
/// the mesh (`api::client`), and returns its answer.
///
/// # Errors
/// The node is not running or answered garbage.
pub fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    if let Some(reply) = crate::api::client::request_remote(path, request) {
        return reply;
    }
    request_local(path, request)
}

/// Sends `request` to the node listening on `path` and returns its answer.
///
/// # Errors
/// The node is not running or answered garbage.
pub fn request_local(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    let stream = UnixStream::connect(path).with_context(|| unreachable(path))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(anyhow!("the node closed the control connection"));
    }
    serde_json::from_str(&answer).context("parsing the node's answer")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    #[test]
    fn a_no_socket_marker_says_why_and_is_replaced_by_a_socket() {
        let dir = std::env::temp_dir().join(format!("cx-nosocket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("foo.sock");
        mark_no_socket(&path, "foo");
        let error = format!(
            "{:#}",
            request_local(&path, &ControlRequest::Status).unwrap_err()
        );
        assert!(
            error.contains("node foo serves no control socket")
                && error.contains("nodes.foo.cpctl.no_socket"),
            "{error}"
        );
        // Not a marker: the generic reason, and the file stays.
        std::fs::write(dir.join("other.sock"), "x").unwrap();
        remove_no_socket_marker(&dir.join("other.sock"));
        assert!(dir.join("other.sock").exists());
        let error = format!(
            "{:#}",
            request_local(&dir.join("other.sock"), &ControlRequest::Status).unwrap_err()
        );
        assert!(error.contains("cpctl.socket_file"), "{error}");
        remove_no_socket_marker(&path);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_control_socket_is_born_private_and_works() {
        let dir = std::env::temp_dir().join(format!("cx-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // The staging directory is gone: only the socket is left.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.sock")]);
        // It accepts connections at its final path.
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        (&client).write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        (&server).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
