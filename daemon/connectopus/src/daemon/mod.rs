//! The node's main loop: one thread that owns the TUN device, every link socket, the packet
//! buffers and the protocol core, and moves packets between them on io_uring.
//!
//! Each turn of the loop submits all queued I/O and waits once (`submit_and_wait`), handles
//! every completion of the batch, then drains the core's outputs and arms its next timer.
//! IPv6 packets are routed by the dataplane worker's per-packet path (`Forwarder::forward_packet`
//! over the node's latest snapshot, see `worker` and `datapath`), without allocating or
//! locking; everything else that arrives on a link goes to the core.
//! Accepting and dialing TCP connections, the control socket and signal handling run on small
//! helper threads that hand their results to the loop through a channel and wake it.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use connectopus_config::{BackendConfig, MeshConfig};
use connectopus_core::forward::{self, DropReason, Ingress};
use connectopus_core::node::{Command, Event, Node, NodeConfig};
use connectopus_core::session::LinkInfo;
use connectopus_core::{LinkId, Time};
use connectopus_wire::Cost;
use connectopus_wire::message::is_ip_packet;
use uring_io::{Completion, OpKind, PacketIo, Token};

use connectopus_dtls::{Accept, DtlsAssociation, State as DtlsState};

use crate::backends::{
    self, Backoff, LinkEnded, LoopMessage, LoopSender, TcpBackend, TcpConnected,
};
use crate::control::{self, ControlReply, ControlRequest, LinkReport, NodeReport, RouteReport};
use crate::dtls_link::{self, DialerState, UdpEndpoint, UdpRole};
use crate::links::tcp::TcpCodec;
use crate::links::tls;
use crate::tun::TunDevice;

mod api_publish;
mod attachments;
mod backend_retry;
mod binding;
mod cni;
mod datapath;
mod dns;
mod dtls;
mod dtls_batch;
mod fastpath;
mod gso_send;
use dtls::send_raw;
pub use fastpath::LinkFastpathReport;
mod local_datagrams;
mod loop_messages;
mod mesh_prefix;
mod mesh_routes;
mod node_outputs;
pub(crate) use lease_writer::WriterReport;
pub use local_datagrams::Outgoing as LocalDatagram;
pub(crate) use mesh_prefix::PdUpdate;
mod handshake_limits;
mod lease_file;
mod lease_writer;
mod leases;
pub use leases::EphemeralOptions;
pub(crate) use leases::ephemeral_entry;
mod hello_filter;
mod offer_check;
pub(crate) use offer_check::CheckedOffer;
mod plain_udp;
mod reconcile;
mod start;
mod super_packets;
pub(crate) use start::node_mtu;
use start::{Ebpf, backend_mtu};
pub use start::{NodeOptions, run};
mod reload;
mod report;
mod resolve;
mod tcp;
mod trust;
mod tun_devs;
mod worker;
use worker::Worker;
mod workers;

/// Default MTU of a TCP link: IPv6 packets up to the classic Ethernet size.
pub const TCP_LINK_MTU: u16 = 1500;

/// How long after start-up, or after a configuration change applied in place, the node gives
/// back the code pages they touched ([`Daemon::unmap_idle_code_if_due`]): long enough for the
/// links' handshakes to be done.
const CODE_UNMAP_DELAY: Duration = Duration::from_secs(5);

/// `CONNECTOPUS_TEST_KEEP_CODE_PAGES=1` (tests only): the node never gives code pages back,
/// so a test can hold it up against one that does.
const TEST_KEEP_CODE_PAGES_ENV: &str = "CONNECTOPUS_TEST_KEEP_CODE_PAGES";

/// When a node that started (or reconfigured) now gives its idle code pages back; `None`
/// under [`TEST_KEEP_CODE_PAGES_ENV`].
fn code_unmap_deadline() -> Option<Instant> {
    if std::env::var_os(TEST_KEEP_CODE_PAGES_ENV).is_some_and(|v| v == "1") {
        return None;
    }
    Some(Instant::now() + CODE_UNMAP_DELAY)
}

/// Most bytes queued for one TCP link before data packets are dropped.
const MAX_TCP_BACKLOG: usize = 4 * 1024 * 1024;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Token kinds, in the top byte of a [`Token`].
const TOKEN_TUN_RECV: u64 = 1 << 56;
const TOKEN_TUN_WRITE: u64 = 2 << 56;
const TOKEN_TCP_READ: u64 = 3 << 56;
const TOKEN_TCP_WRITE: u64 = 4 << 56;
const TOKEN_UDP_RECV: u64 = 5 << 56;
const TOKEN_UDP_SEND: u64 = 6 << 56;
/// A worker thread's socket on a DTLS port (the CPU-local receive).
const TOKEN_PORT_RECV: u64 = 7 << 56;
const TOKEN_KIND_MASK: u64 = 0xff << 56;

/// One link as the loop sees it: its transport and who made it.
#[derive(Debug)]
struct Link {
    backend: String,
    kind: &'static str,
    remote: SocketAddr,
    cost: Cost,
    mtu: u16,
    connected_at: Instant,
    /// The core knows the link (its transport is ready).
    announced: bool,
    had_session: bool,
    ended: Option<Sender<LinkEnded>>,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Tcp(Box<TcpLink>),
    Dtls(DtlsLink),
    /// A plaintext UDP link (`udp-dialer`, `udp-listener`), see `plain_udp`.
    PlainUdp(plain_udp::PlainUdpLink),
    /// A TCP/TLS link whose stream, codec and unsent bytes worker thread `worker` holds (see
    /// `workers::tcp`); the main loop hands it the node's messages for the link.
    TcpOnWorker {
        worker: usize,
    },
}

#[derive(Debug)]
struct TcpLink {
    stream: TcpStream,
    codec: TcpCodec,
    /// Bytes for the socket, in order; a write in flight covers a prefix of them.
    tx: VecDeque<u8>,
    write_in_flight: bool,
    read_in_flight: bool,
    /// The worker chosen to read and write it once its session is established (`None`: not
    /// chosen yet; `Some(0)`: the main loop keeps it). Any other: it goes to that worker
    /// thread once no read or write is in flight (none is started any more).
    worker: Option<usize>,
}

impl TcpLink {
    fn idle(&self) -> bool {
        !self.write_in_flight && !self.read_in_flight
    }

    /// It waits to go to a worker thread: no read or write is started.
    fn moving(&self) -> bool {
        self.worker.is_some_and(|w| w > 0)
    }
}

#[derive(Debug)]
struct DtlsLink {
    /// Index of the UDP endpoint in `Daemon::udp`.
    endpoint: usize,
    /// The local address the peer sent to, sent from (a listener bound to a wildcard address
    /// answers from the address it was dialled on); `None`: the route's choice.
    local: Option<std::net::IpAddr>,
    association: Box<DtlsAssociation>,
    /// The dataplane worker that receives the link's datagrams (0: the main loop;
    /// [`workers::EVERY_WORKER`]: the CPU-local receive); `None` until it is established on
    /// the record fast path (see `workers::receive`).
    rx_worker: Option<usize>,
    /// The receiving direction every worker thread opens the link's records with (the
    /// CPU-local receive, `workers::receive_local`).
    shared_rx: Option<std::sync::Arc<std::sync::Mutex<connectopus_dtls::Opener>>>,
}

impl Link {
    fn is_ready(&self) -> bool {
        match &self.transport {
            Transport::Tcp(t) => t.codec.is_ready(),
            Transport::Dtls(d) => matches!(d.association.state(), DtlsState::Established),
            Transport::PlainUdp(_) | Transport::TcpOnWorker { .. } => true,
        }
    }

    fn backlog(&self) -> usize {
        match &self.transport {
            Transport::Tcp(t) => t.tx.len(),
            Transport::Dtls(_) | Transport::PlainUdp(_) | Transport::TcpOnWorker { .. } => 0,
        }
    }
}

struct Daemon {
    /// This node's name.
    id: String,
    /// The configuration the node runs.
    config: MeshConfig,
    /// Where newer configurations are persisted.
    config_path: PathBuf,
    /// The running configuration's signature, as `config get` shows it.
    signature: Vec<u8>,
    /// A newer configuration and its signature, accepted and persisted, that the core is
    /// offering to the neighbours; applied on [`Command::ApplyConfig`].
    pending_config: Option<(MeshConfig, Vec<u8>)>,
    /// Control datagrams to and from local programs.
    local_datagrams: local_datagrams::LocalDatagrams,
    /// For backend threads started later.
    to_loop: LoopSender,
    /// The backends, by name.
    backends: BTreeMap<String, reconcile::RunningBackend>,
    /// Configured backends that failed to start, retried by the loop's timers.
    failed: BTreeMap<String, backend_retry::FailedBackend>,
    /// Backend threads (joined at exit).
    threads: Vec<JoinHandle<()>>,
    /// The mirror addresses this node put on its TUN device (`mesh_prefix`).
    mesh_addresses: mesh_prefix::MirrorAddresses,
    /// The unreachable routes and egress rules of the planes.
    mesh_routes: mesh_routes::MeshRoutes,
    /// The DHCPv6 client's thread, on the node `global.delegated` names.
    pd_commands: Option<std::sync::mpsc::Sender<mesh_prefix::PdCommand>>,
    /// When the node next gives back the code pages start-up or a reconfiguration touched
    /// ([`Daemon::unmap_idle_code_if_due`]), and what it gave back so far.
    code_unmap_at: Option<Instant>,
    code_unmapped: crate::code_pages::Unmapped,
    /// Why the node does not forward: the running configuration no longer contains it.
    removed: Option<String>,
    /// Set when the node must restart its mesh instance (exec itself) after shutting down.
    restart: bool,
    /// The dataplane: the ring, the buffers, the per-packet path and the offload state.
    worker: Worker,
    /// The dataplane worker threads (all N of them with `workers: N > 1`; see `workers`).
    dataplane: workers::Dataplane,
    /// The control plane's protocol core.
    node: Node,
    /// `CLOCK_BOOTTIME` at start: the core's `Time::ZERO` (see `boot_clock`).
    started: crate::boot_clock::BootInstant,
    started_wall: SystemTime,
    /// The node's TUN devices: its own first (unless disabled), then its `tun_devs`, then its
    /// namespaces' as they come up.
    tuns: tun_devs::TunSet,
    /// Namespaces and services, and the helper that runs them.
    attachments: attachments::Attachments,
    ebpf: Ebpf,
    /// The eBPF fast path for plaintext udp links, or why it is off.
    fastpath: fastpath::FastpathState,
    dns: dns::Dns,
    subnet: String,
    links: BTreeMap<LinkId, Link>,
    /// DTLS and plaintext UDP links by (UDP endpoint, peer address), as datagrams find them.
    dtls_peers: std::collections::HashMap<(usize, SocketAddr), LinkId>,
    /// Rate limits on the ClientHellos of unknown addresses.
    hello_limiter: handshake_limits::HelloLimiter,
    /// When the kernel filter on DTLS listeners drops most ClientHellos (a flood is on).
    flood_detector: hello_filter::FloodDetector,
    /// What the limits on unauthenticated peers did.
    limit_counters: handshake_limits::LimitCounters,
    /// What plaintext UDP endpoints dropped.
    plain_udp_counters: plain_udp::PlainUdpCounters,
    /// UDP endpoints by index (indices are never reused: tokens name them); `None` once
    /// retired.
    udp: Vec<Option<UdpEndpoint>>,
    /// Retired endpoints whose receive is still armed; dropped when its last completion comes.
    retiring_udp: Vec<(usize, UdpEndpoint)>,
    /// Links whose socket waits for in-flight operations before it may close.
    closing: Vec<(LinkId, Box<TcpLink>)>,
    next_link: u64,
    rx: Receiver<LoopMessage>,
    /// Checks neighbours' configuration offers off the loop.
    offer_checker: offer_check::OfferChecker,
    /// Set once shutdown began: the time by which to exit.
    stopping: Option<Instant>,
    /// Where the loop publishes Prometheus metrics, when they are served.
    metrics: Option<crate::metrics::Snapshot>,
    metrics_published: Option<Instant>,
    /// What the API threads read: token keys, status (see `api_publish`).
    api: api_publish::ApiPublisher,
    /// Time spent in timer turns that ran a route computation.
    spf_time: Duration,
    /// The seccomp state `status` shows (`on (N syscalls)`, `off: why`).
    seccomp: String,
    /// Why the dataplane's idle wake-ups are on or off (`crate::wake_cost`), for `status`.
    idle_wake: String,
    /// systemd's notification socket (`Type=notify`), when there is one.
    notify: crate::notify::Notifier,
    /// Lease tables to write, and an ephemeral node's address (see `leases`).
    leases: leases::LeaseDriver,
    /// `cni_*` answers waiting for the lease table (see `cni`).
    cni: cni::CniReplies,
}

impl Daemon {
    fn now(&self) -> Time {
        Time::from_duration(self.started.elapsed())
    }

    fn run(&mut self) -> Result<()> {
        for (i, tun) in self.tuns.indexed() {
            // With worker threads, worker 0's thread reads queue 0 of the node's own device;
            // the main loop only writes to it (until that thread stops).
            if i == 0 && self.dataplane.queue_zero_on_thread() {
                continue;
            }
            self.worker
                .io
                .recv_packets(tun.fd(), Token(TOKEN_TUN_RECV | i as u64))
                .context("arming TUN receive")?;
        }
        // UDP endpoints are armed by `add_udp` when their backend starts.
        self.reconcile_containers();
        self.run_dialers();
        self.drain_node();
        loop {
            let timeout = self.next_timeout();
            let mut completions = std::mem::take(&mut self.worker.completions);
            completions.clear();
            let result = self
                .worker
                .io
                .submit_and_wait(&mut completions, Some(timeout));
            if let Err(error) = result {
                self.worker.completions = completions;
                return Err(error).context("waiting for I/O");
            }
            for completion in completions.drain(..) {
                self.handle_completion(completion);
                self.sync_forwarding();
            }
            self.worker.completions = completions;
            self.absorb_worker();
            self.drain_workers();
            self.handle_messages();
            self.run_timers();
            self.drain_node();
            self.persist_leases();
            self.answer_persisted_cni();
            self.publish_metrics();
            self.publish_api();
            // Everything received this turn is merged: write the super-packets.
            self.flush_tun_writes(None);
            if !self.worker.dtls_batches.is_empty() {
                self.flush_dtls_batches(None);
            }
            self.resume_tcp_io();
            self.dataplane.wake_for_tcp();
            self.reap_closing();
            if self.worker.trim_if_due(Instant::now()) {
                for link in self.links.values_mut() {
                    if let Transport::Tcp(tcp) = &mut link.transport {
                        crate::links::tcp::shrink_idle_queue(&mut tcp.tx);
                        tcp.codec.shrink_idle();
                    }
                }
            }
            self.unmap_idle_code_if_due(Instant::now());
            if let Some(deadline) = self.stopping {
                let flushed = self.links.values().all(|l| l.backlog() == 0);
                if flushed || Instant::now() >= deadline {
                    self.submit_last();
                    return Ok(());
                }
            }
        }
    }

    /// Gives back the pages of code and read-only data that start-up or the last
    /// reconfiguration touched ([`crate::code_pages`]), once [`CODE_UNMAP_DELAY`] after either:
    /// what the node runs after that faults back in from the page cache.
    fn unmap_idle_code_if_due(&mut self, now: Instant) {
        if self.code_unmap_at.is_none_or(|at| now < at) {
            return;
        }
        self.code_unmap_at = None;
        match crate::code_pages::unmap_idle_code() {
            Ok(done) => {
                tracing::debug!(
                    mappings = done.mappings,
                    kib = done.resident_bytes / 1024,
                    "code pages given back"
                );
                self.code_unmapped.mappings += done.mappings;
                self.code_unmapped.resident_bytes += done.resident_bytes;
            }
            Err(error) => tracing::debug!(%error, "code pages not given back"),
        }
    }

    /// Submits what the last turn queued before the loop ends: the goodbyes, an ephemeral
    /// node's Release and DTLS close notifications would otherwise never leave the ring.
    fn submit_last(&mut self) {
        let mut completions = std::mem::take(&mut self.worker.completions);
        completions.clear();
        let _ = self
            .worker
            .io
            .submit_and_wait(&mut completions, Some(Duration::ZERO));
        for completion in completions.drain(..) {
            if let Some(buf) = completion.buf {
                self.worker.io.free(buf);
            }
        }
        self.worker.completions = completions;
    }

    fn next_timeout(&self) -> Duration {
        let mut timeout = Duration::from_secs(1);
        if let Some((at, _why)) = self.node.poll_timeout() {
            timeout = timeout.min(at.saturating_since(self.now()));
        }
        let elapsed = self.started.elapsed();
        for l in self.links.values() {
            if let Transport::Dtls(d) = &l.transport
                && let Some(at) = d.association.poll_timeout()
            {
                timeout = timeout.min(at.saturating_sub(elapsed));
            }
        }
        let now = Instant::now();
        if let Some(at) = self.next_backend_retry() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.next_namespace_retry() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        for e in self.udp.iter().flatten() {
            if let UdpRole::Dialer(d) = &e.role
                && let Some(at) = d.next_attempt
            {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
        }
        if self.stopping.is_some() {
            timeout = timeout.min(Duration::from_millis(20));
        }
        if let Some(watchdog) = self.notify.next_tick_in() {
            timeout = timeout.min(watchdog);
        }
        timeout
    }

    fn handle_completion(&mut self, completion: Completion) {
        let kind = completion.token.0 & TOKEN_KIND_MASK;
        let id = LinkId(completion.token.0 & !TOKEN_KIND_MASK);
        match (completion.kind, kind) {
            (OpKind::RecvPacket, TOKEN_TUN_RECV) => self.on_tun_packet(id.0 as usize, completion),
            (OpKind::Write, TOKEN_TUN_WRITE) => self.worker.tun_written(completion),
            (OpKind::Read, TOKEN_TCP_READ) => self.on_tcp_read(id, completion),
            (OpKind::Write, TOKEN_TCP_WRITE) => self.on_tcp_written(id, completion),
            (OpKind::RecvDatagram, TOKEN_UDP_RECV) => {
                self.on_udp_datagram(id.0 as usize, completion);
            }
            (OpKind::Send, TOKEN_UDP_SEND) => {
                if let Err(errno) = completion.result {
                    // The datagrams are lost (TCP inside retransmits); say why once in a while.
                    self.worker.offload_counters.udp_send_errors += 1;
                    if self
                        .worker
                        .offload_counters
                        .udp_send_errors
                        .is_power_of_two()
                    {
                        tracing::warn!(
                            %errno,
                            errors = self.worker.offload_counters.udp_send_errors,
                            "udp send failed"
                        );
                    }
                }
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
            (OpKind::Wake, _) => {}
            _ => {
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
        }
    }

    fn new_link(&mut self, link: Link) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        tracing::info!(link = %id, backend = %link.backend, remote = %link.remote, kind = link.kind, "link up");
        match &link.transport {
            Transport::Dtls(d) => {
                self.dtls_peers.insert((d.endpoint, link.remote), id);
                if self.dataplane.has_ports(d.endpoint) {
                    // The CPU-local receive: the workers learn the peer before its first
                    // record can reach them (they hand it to the main loop until the link is
                    // established and shared).
                    self.dataplane.links_dirty = true;
                }
            }
            Transport::PlainUdp(p) => {
                self.dtls_peers.insert((p.endpoint, link.remote), id);
            }
            Transport::Tcp(_) | Transport::TcpOnWorker { .. } => {}
        }
        self.links.insert(id, link);
        id
    }

    /// Tells the core about a link once its transport can carry messages.
    fn announce_if_ready(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.announced || !l.is_ready() {
            return;
        }
        l.announced = true;
        if let Transport::Dtls(d) = &l.transport
            && self.dataplane.has_ports(d.endpoint)
        {
            // The CPU-local receive: share the link's receiving direction now, before its
            // first application record reaches a worker.
            self.dataplane.links_dirty = true;
        }
        let channel_binding = match binding::channel_binding(&l.transport) {
            Ok(binding) => binding,
            Err(error) => {
                // Never bound to zeros: a (D)TLS link without its binding is closed.
                tracing::warn!(%link, %error, "closing link: no channel binding");
                self.close_link(link, "channel binding failed");
                return;
            }
        };
        let expected_peer = self
            .backends
            .get(&l.backend)
            .and_then(|b| b.config.peer_node().map(str::to_owned))
            .filter(|_| l.kind.ends_with("dialer"));
        let mut info = LinkInfo::new(
            l.mtu,
            l.cost,
            format!("{} {} {}", l.backend, l.kind, l.remote),
        );
        info.channel_binding = channel_binding;
        info.expected_peer = expected_peer;
        info.plain_udp = matches!(l.transport, Transport::PlainUdp(_));
        let now = self.now();
        self.node.handle_link_up(now, link, info);
    }

    fn run_timers(&mut self) {
        let now = self.now();
        let spf_runs = self.node.counters().spf_runs;
        let turn = Instant::now();
        self.node.handle_timeout(now);
        if self.node.counters().spf_runs != spf_runs {
            self.spf_time += turn.elapsed();
        }
        let elapsed = self.started.elapsed();
        let due: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| match &l.transport {
                Transport::Dtls(d) => d.association.poll_timeout().is_some_and(|t| t <= elapsed),
                Transport::Tcp(_) | Transport::PlainUdp(_) | Transport::TcpOnWorker { .. } => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for link in due {
            if let Some(Link {
                transport: Transport::Dtls(d),
                ..
            }) = self.links.get_mut(&link)
            {
                d.association.handle_timeout(elapsed);
            }
            self.after_dtls_io(link);
        }
        let stale: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.announced && l.connected_at.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for link in stale {
            tracing::info!(%link, "handshake timed out");
            self.close_link(link, "handshake timeout");
        }
        self.enforce_session_deadline();
        self.watch_for_hello_floods();
        self.run_dialers();
        self.retry_backends();
        self.retry_namespaces();
        let configured = self.backends.len() + self.failed.len();
        self.notify
            .tick(|| report::status_line(&self.node, configured));
    }

    /// Closes a link's transport; a TCP socket itself closes once no operation uses it.
    fn close_link(&mut self, link: LinkId, why: &str) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        tracing::debug!(%link, why, "closing link");
        self.dataplane.links_dirty = true;
        let now = self.now();
        // The core may already have forgotten it (it asked for the close); then this is a no-op.
        self.node.handle_link_down(now, link);
        if let Some(ended) = &l.ended {
            let _ = ended.send(LinkEnded {
                had_session: l.had_session,
            });
        }
        match l.transport {
            Transport::Tcp(tcp) => {
                if let Some(worker) = tcp.worker {
                    self.dataplane.count_tcp(worker, false);
                }
                let _ = tcp.stream.shutdown(Shutdown::Both);
                self.closing.push((link, tcp));
            }
            Transport::TcpOnWorker { worker } => self.forget_tcp_owner(link, worker),
            Transport::Dtls(mut dtls) => {
                self.forget_receiver(link, dtls.rx_worker);
                if self.dtls_peers.get(&(dtls.endpoint, l.remote)) == Some(&link) {
                    self.dtls_peers.remove(&(dtls.endpoint, l.remote));
                }
                dtls.association.close();
                while let Some(datagram) = dtls.association.poll_transmit() {
                    let (endpoint, local) = (dtls.endpoint, dtls.local);
                    send_raw(
                        &mut self.worker.io,
                        &self.udp,
                        endpoint,
                        l.remote,
                        local,
                        &datagram,
                    );
                }
                self.redial_later(dtls.endpoint, l.had_session);
            }
            Transport::PlainUdp(plain) => {
                self.forget_receiver(link, plain.rx_worker);
                if self.dtls_peers.get(&(plain.endpoint, l.remote)) == Some(&link) {
                    self.dtls_peers.remove(&(plain.endpoint, l.remote));
                }
                self.redial_later(plain.endpoint, l.had_session);
            }
        }
    }

    /// Schedules the next attempt of the UDP dialer `endpoint` (no-op for a listener) after its
    /// link ended: at once after a session, after a backoff otherwise.
    fn redial_later(&mut self, endpoint: usize, had_session: bool) {
        if let Some(Some(UdpEndpoint {
            role: UdpRole::Dialer(dialer),
            ..
        })) = self.udp.get_mut(endpoint)
        {
            let delay = if had_session {
                dialer.backoff.reset();
                Duration::ZERO
            } else {
                dialer.backoff.failure()
            };
            dialer.next_attempt = Some(Instant::now() + delay);
        }
    }

    fn reap_closing(&mut self) {
        self.closing.retain(|(_, tcp)| !tcp.idle());
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        // Restarting the mesh instance re-executes this process (same pid), which sends READY=1:
        // for systemd that is a reload, not a stop (STOPPING=1 would make it kill the node).
        if self.restart {
            self.notify.reloading();
        } else {
            self.notify.stopping();
        }
        // The planes' rules and unreachable routes go now (a re-executed image puts back what
        // its planes want); the TUN device's routes go with the device.
        self.mesh_routes = Default::default();
        let now = self.now();
        self.node.shutdown(now);
        self.drain_node();
        self.stopping = Some(Instant::now() + Duration::from_secs(1));
    }
}

fn log_event(event: &Event) {
    match event {
        Event::SessionEstablished { link, peer, name } => {
            tracing::info!(%link, %peer, %name, "session established");
        }
        Event::SessionClosed { link, peer, reason } => {
            tracing::info!(%link, peer = ?peer, reason = reason.as_str(), "session closed");
        }
        Event::PeerRestarted { link, peer } => tracing::info!(%link, %peer, "peer restarted"),
        Event::HelloRejected {
            link,
            claimed,
            reason,
        } => tracing::warn!(%link, %claimed, reason, "hello rejected"),
        Event::NodeLearned { address, name } => tracing::info!(%address, %name, "node learned"),
        Event::NodePruned { address } => tracing::info!(%address, "removing dead node"),
        Event::RoutesChanged { n_routes } => tracing::debug!(n_routes, "routes changed"),
        Event::NamesChanged { n_names } => tracing::debug!(n_names, "names changed"),
        Event::NameConflict(conflict) => tracing::warn!(
            contested = %conflict.contested,
            claimants = ?conflict.claimants,
            "name conflict: the lowest address wins"
        ),
        Event::ConfigOffered { link, version, .. } => {
            tracing::info!(%link, version, "newer configuration offered");
        }
        Event::ControlDatagram {
            src,
            src_port,
            dst_port,
            payload,
        } => tracing::trace!(%src, src_port, dst_port, len = payload.len(), "control datagram"),
        Event::Lease(lease) => tracing::info!(?lease, "lease"),
    }
}
