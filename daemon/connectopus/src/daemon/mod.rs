//! The node's main loop: one thread that owns the TUN device, every link socket, the packet
//! buffers and the protocol core, and moves packets between them on io_uring.
//!
//! Each turn of the loop submits all queued I/O and waits once (`submit_and_wait`), handles
//! every completion of the batch, then drains the core's outputs and arms its next timer.
//! IPv6 packets are routed here with [`forward::decide`] on the current forwarding table,
//! without allocating or locking; everything else that arrives on a link goes to the core.
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
use connectopus_core::forward::{self, DropReason, ForwardingTable, Ingress};
use connectopus_core::node::{Command, Event, Node, NodeConfig};
use connectopus_core::session::LinkInfo;
use connectopus_core::{LinkId, Time};
use connectopus_wire::Cost;
use connectopus_wire::message::is_ipv6;
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

mod backend_retry;
mod binding;
mod datapath;
mod dns;
mod dtls;
mod dtls_batch;
use dtls::send_raw;
mod local_datagrams;
pub use local_datagrams::Outgoing as LocalDatagram;
mod handshake_limits;
mod offer_check;
pub(crate) use offer_check::CheckedOffer;
mod reconcile;
mod reload;
mod report;
mod resolve;
mod tcp;
mod trust;
mod tun_devs;

/// Default MTU of a TCP link: IPv6 packets up to the classic Ethernet size.
pub const TCP_LINK_MTU: u16 = 1500;

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
const TOKEN_KIND_MASK: u64 = 0xff << 56;

/// What `connectopus node` was asked to run.
#[derive(Debug)]
pub struct NodeOptions {
    /// The loaded mesh configuration.
    pub config: MeshConfig,
    /// Its signature (already verified).
    pub signature: Vec<u8>,
    /// Where it was loaded from; newer configurations received later are written there
    /// (and their signature to `<path>.sig`).
    pub config_path: PathBuf,
    /// This node's name in it.
    pub id: String,
    /// Where to serve the control socket.
    pub control_socket: PathBuf,
    /// The eBPF object file to load instead of the one embedded in the binary.
    pub ebpf_object: Option<PathBuf>,
    /// The node key file, when the node's config entry has an `identity`
    /// [default: /var/lib/connectopus/<id>/identity.key].
    pub identity_file: Option<PathBuf>,
    /// Where to serve Prometheus `/metrics` (`--metrics-listen`), overriding the node's
    /// `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// The seccomp filter installed once the node runs.
    pub seccomp: crate::privilege::SeccompMode,
    /// Whether to drop the capabilities the node no longer needs after start-up.
    pub drop_capabilities: bool,
}

/// Runs a node until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (TUN, control socket, io_uring); a backend that cannot start does not
/// stop the node, which retries it (see `backend_retry`), and a running node logs and
/// survives per-link errors.
pub fn run(options: NodeOptions) -> Result<()> {
    let NodeOptions {
        config,
        signature,
        config_path,
        id,
        control_socket,
        ebpf_object,
        identity_file,
        metrics_listen,
        seccomp,
        drop_capabilities,
    } = options;
    let node_key = trust::node_key(&config, &id, identity_file.as_deref())?;
    let node_config = config
        .node(&id)
        .map_err(|d| anyhow::anyhow!("{d}"))?
        .clone();

    let offloads = datapath::Offloads::new(!crate::tun::offload_disabled_by_env());
    let mtu = node_mtu(&node_config.backends);
    let mut tuns = Vec::new();
    match node_config.tun_name(&id) {
        Some(tun_name) => {
            let tun = TunDevice::create(
                &tun_name,
                node_config.address,
                config.global.subnet.prefix_len(),
                mtu,
                offloads.wanted,
            )?;
            tracing::info!(
                tun = %tun.name(),
                address = %node_config.address,
                %mtu,
                offload = %tun.offload().describe(),
                "tun device up"
            );
            tuns.push(tun);
        }
        None => tracing::info!("tun disabled: this node only forwards"),
    }
    // Upstream's tun_devs: extra host addresses, each on its own device, advertised as /128s.
    let mut tun_dev_names = Vec::new();
    for (name, dev) in &node_config.tun_devs {
        let tun = TunDevice::create(&dev.device, dev.address, 128, mtu, offloads.wanted)
            .with_context(|| format!("tun_devs.{name}"))?;
        tracing::info!(tun = %tun.name(), address = %dev.address, name = %name, "extra tun device up");
        tuns.push(tun);
        tun_dev_names.push(name.clone());
    }
    let (attachments, attachment_names) = tun_devs::attachments(&node_config.tun_devs, |_| true);

    let io = PacketIo::new(datapath::io_config(offloads.wanted)).context("starting packet I/O")?;
    match io.fallback_reason() {
        None => tracing::info!(backend = io.backend().as_str(), "dataplane ready"),
        Some(reason) => tracing::warn!(
            backend = io.backend().as_str(),
            reason = %reason,
            "io_uring unavailable; using the syscall fallback"
        ),
    }

    let ebpf = match tuns.first() {
        Some(tun) => attach_counters(tun.name(), ebpf_object.as_deref()),
        None => Ebpf::Off("no tun device".to_owned()),
    };

    // Before the first thread starts: capabilities are per thread, later ones inherit these.
    let needs = privilege_needs(&node_config, matches!(ebpf, Ebpf::Counters(_)));
    if drop_capabilities && let Err(error) = crate::privilege::drop_capabilities(needs) {
        tracing::warn!(error = %format!("{error:#}"), "keeping the capabilities the node started with");
    }

    let dns = dns::Dns::start(
        &config,
        &id,
        node_config.address,
        tuns.first().map(TunDevice::name),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let to_loop = LoopSender::new(tx, io.waker());
    let mut threads = Vec::new();
    threads.push(control::spawn_server(
        &control_socket,
        to_loop.clone(),
        stop.clone(),
    )?);
    let (local_datagrams, datagram_thread) = local_datagrams::start(
        &local_datagrams::base_of(&control_socket),
        to_loop.clone(),
        stop.clone(),
    )?;
    threads.push(datagram_thread);
    let (signals, signal_thread) = spawn_signal_thread(to_loop.clone())?;
    let metrics = match metrics_listen.or_else(|| node_config.metrics.listen_addr()) {
        Some(addr) => {
            let snapshot = crate::metrics::Snapshot::default();
            let (bound, thread) =
                crate::metrics::spawn_server(addr, snapshot.clone(), stop.clone())?;
            tracing::info!(listen = %bound, "metrics at /metrics");
            threads.push(thread);
            Some(snapshot)
        }
        None => None,
    };
    threads.push(signal_thread);
    let (offer_checker, offer_thread) = offer_check::OfferChecker::spawn(to_loop.clone())?;
    threads.push(offer_thread);
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let epoch = trust::next_epoch(&config_path);
    let timers = &config.global.timers;
    let mut core = NodeConfig::new(
        node_config.address,
        id.clone(),
        epoch,
        epoch ^ u64::from(std::process::id()),
    );
    core.config_version = config.global.version;
    // Hello challenges must be unpredictable: their secret comes from the OS.
    ssh_key::rand_core::RngCore::fill_bytes(
        &mut ssh_key::rand_core::OsRng,
        &mut core.challenge_secret,
    );
    if let Some(key) = node_key {
        tracing::info!(key = %connectopus_core::identity::hex(&key.public()), "node identity enforced");
        core.identity = Some(key);
        core.trust = Some(trust::policy(&config));
    }
    core.prefixes = attachments;
    core.names = attachment_names;
    core.timers.session.keepalive_idle = timers.keepalive_idle.get();
    core.timers.session.dead_interval = timers.dead_interval.get();
    core.timers.update_interval = timers.update_interval.get();
    core.timers.node_dead_after = timers.node_dead_after.get();

    let backend_configs = node_config.backends;
    let subnet = config.global.subnet.to_string();
    let mut daemon = Daemon {
        id,
        config,
        config_path,
        signature: signature.clone(),
        pending_config: None,
        local_datagrams,
        to_loop,
        backends: BTreeMap::new(),
        failed: BTreeMap::new(),
        threads: Vec::new(),
        removed: None,
        restart: false,
        node: Node::new(core, Time::ZERO),
        table: Arc::new(ForwardingTable::default()),
        io,
        offloads,
        coalescing: datapath::TunCoalescing::default(),
        dtls_batches: dtls_batch::DtlsBatches::default(),
        offload_counters: datapath::OffloadCounters::default(),
        started,
        started_wall,
        tuns: tun_devs::TunSet::new(tuns, &tun_dev_names),
        ebpf,
        dns,
        subnet,
        links: BTreeMap::new(),
        dtls_peers: std::collections::HashMap::new(),
        hello_limiter: handshake_limits::HelloLimiter::new(),
        limit_counters: handshake_limits::LimitCounters::default(),
        udp: Vec::new(),
        retiring_udp: Vec::new(),
        closing: Vec::new(),
        next_link: 1,
        rx,
        offer_checker,
        completions: Vec::with_capacity(uring_io::BATCH_SIZE * 4),
        scratch: Vec::with_capacity(u16::MAX as usize),
        scratch_out: Vec::with_capacity(u16::MAX as usize + 64),
        ranges: Vec::new(),
        stopping: None,
        metrics,
        metrics_published: None,
        spf_time: Duration::ZERO,
        seccomp: "off: not installed yet".to_owned(),
        notify: crate::notify::Notifier::from_env(),
    };
    let version = daemon.config.global.version;
    let source = daemon.config.source().clone();
    daemon
        .node
        .set_config(Time::ZERO, version, &source, &signature);
    for (name, backend) in &backend_configs {
        daemon.start_or_retry(name, backend);
    }
    daemon.seccomp = crate::privilege::install_seccomp(seccomp, needs);
    let privilege = crate::privilege::report(&daemon.seccomp);
    tracing::info!(%privilege, "privileges");
    // TUN devices, listeners (or their retry timers) and the control socket are up.
    let status = daemon.status_line();
    daemon.notify.ready(status);
    let result = daemon.run();
    stop.store(true, Ordering::Relaxed);
    for running in daemon.backends.values() {
        if let reconcile::BackendHandle::Thread(stop) = &running.handle {
            stop.store(true, Ordering::Relaxed);
        }
    }
    threads.append(&mut daemon.threads);
    let restart = daemon.restart;
    drop(daemon);
    signals.close();
    let _ = std::fs::remove_file(&control_socket);
    for thread in threads {
        let _ = thread.join();
    }
    if restart {
        return restart_process();
    }
    tracing::info!("stopped");
    result
}

/// The eBPF programs on the node's TUN device, or why there are none.
enum Ebpf {
    Counters(connectopus_fastpath::TunCounters),
    Off(String),
}

impl std::fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Ebpf {
    fn describe(&self) -> String {
        match self {
            Ebpf::Counters(c) => match c.read() {
                Ok(snapshot) => format!(
                    "tc counters on {} ({}): in {} pkts {} B, out {} pkts {} B",
                    c.ifname(),
                    c.attach_mode().as_str(),
                    snapshot.ingress.packets,
                    snapshot.ingress.bytes,
                    snapshot.egress.packets,
                    snapshot.egress.bytes
                ),
                Err(error) => format!("tc counters unreadable: {error}"),
            },
            Ebpf::Off(why) => format!("not loaded: {why}"),
        }
    }
}

/// Attaches the TUN counters when the eBPF object is available; the node runs without them
/// otherwise and says why. A helper process (`connectopus ebpf-attach`) loads the object, so
/// that aya's parse of the kernel's BTF never touches the node's memory (in process only on
/// kernels without TCX).
fn attach_counters(ifname: &str, object: Option<&std::path::Path>) -> Ebpf {
    let from = object.map_or_else(|| "embedded".to_owned(), |p| p.display().to_string());
    let attached = if object.is_none() && connectopus_fastpath::embedded_object().is_none() {
        Err(connectopus_fastpath::FastpathError::NotEmbedded)
    } else {
        let helper = crate::ebpf_helper::command();
        connectopus_fastpath::TunCounters::attach_via_helper(helper, ifname, object)
    };
    match attached {
        Ok(counters) => {
            tracing::info!(
                object = %from,
                mode = counters.attach_mode().as_str(),
                helper = counters.loaded_by_helper(),
                "ebpf counters attached"
            );
            Ebpf::Counters(counters)
        }
        Err(error) => {
            let error = format!("{:#}", anyhow::Error::from(error));
            tracing::info!(%error, "running without eBPF");
            Ebpf::Off(error)
        }
    }
}

/// What the node needs once it runs: low ports for DNS (port 53) or a listener below 1024.
fn privilege_needs(
    node: &connectopus_config::NodeConfig,
    ebpf_maps: bool,
) -> crate::privilege::Needs {
    let low_listener = node.backends.values().any(|b| match b {
        BackendConfig::DtlsListener(l) => l.port.is_some_and(|p| p < 1024),
        BackendConfig::TcpListener(l) => l.port.is_some_and(|p| p < 1024),
        _ => false,
    });
    crate::privilege::Needs {
        bind_low_ports: !node.dns.disable || low_listener,
        ebpf_at_runtime: false,
        ebpf_maps,
    }
}

/// Returns the smallest MTU among the node's backends (1500 without any).
fn node_mtu(backends: &BTreeMap<String, BackendConfig>) -> u16 {
    backends
        .values()
        .map(backend_mtu)
        .min()
        .unwrap_or(TCP_LINK_MTU)
}

fn backend_mtu(backend: &BackendConfig) -> u16 {
    let default = match backend {
        BackendConfig::DtlsDialer(_) | BackendConfig::DtlsListener(_) => crate::DTLS_LINK_MTU,
        BackendConfig::TcpDialer(_) | BackendConfig::TcpListener(_) => TCP_LINK_MTU,
    };
    backend
        .mtu()
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(default)
}

/// Turns SIGINT and SIGTERM into a shutdown and SIGHUP into a reload; the returned handle
/// ends the thread when closed.
fn spawn_signal_thread(
    to_loop: LoopSender,
) -> Result<(signal_hook::iterator::Handle, JoinHandle<()>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let message = if signal == SIGHUP {
                    tracing::info!("SIGHUP: re-reading the configuration");
                    LoopMessage::Reload
                } else {
                    tracing::info!(signal, "shutting down");
                    LoopMessage::Shutdown
                };
                if !to_loop.send(message) {
                    return;
                }
            }
        })
        .context("spawning signal thread")?;
    Ok((handle, thread))
}

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
}

#[derive(Debug)]
struct TcpLink {
    stream: TcpStream,
    codec: TcpCodec,
    /// Bytes for the socket, in order; a write in flight covers a prefix of them.
    tx: VecDeque<u8>,
    write_in_flight: bool,
    read_in_flight: bool,
}

impl TcpLink {
    fn idle(&self) -> bool {
        !self.write_in_flight && !self.read_in_flight
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
}

impl Link {
    fn is_ready(&self) -> bool {
        match &self.transport {
            Transport::Tcp(t) => t.codec.is_ready(),
            Transport::Dtls(d) => matches!(d.association.state(), DtlsState::Established),
        }
    }

    fn backlog(&self) -> usize {
        match &self.transport {
            Transport::Tcp(t) => t.tx.len(),
            Transport::Dtls(_) => 0,
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
    /// Why the node does not forward: the running configuration no longer contains it.
    removed: Option<String>,
    /// Set when the node must restart its mesh instance (exec itself) after shutting down.
    restart: bool,
    io: PacketIo,
    /// What the dataplane offloads (TUN super-packets, UDP GSO/GRO), and why not.
    offloads: datapath::Offloads,
    /// Received TCP segments being merged into super-packets for the TUN devices.
    coalescing: datapath::TunCoalescing,
    /// Records for DTLS links sealed into GSO batches, sent when the turn ends.
    dtls_batches: dtls_batch::DtlsBatches,
    offload_counters: datapath::OffloadCounters,
    node: Node,
    table: Arc<ForwardingTable>,
    started: Instant,
    started_wall: SystemTime,
    /// The node's TUN devices: its own first (unless disabled), then its `tun_devs`.
    tuns: tun_devs::TunSet,
    ebpf: Ebpf,
    dns: dns::Dns,
    subnet: String,
    links: BTreeMap<LinkId, Link>,
    /// DTLS links by (UDP endpoint, peer address), as datagrams find them.
    dtls_peers: std::collections::HashMap<(usize, SocketAddr), LinkId>,
    /// Rate limits on the ClientHellos of unknown addresses.
    hello_limiter: handshake_limits::HelloLimiter,
    /// What the limits on unauthenticated peers did.
    limit_counters: handshake_limits::LimitCounters,
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
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    scratch_out: Vec<u8>,
    ranges: Vec<Range<usize>>,
    /// Set once shutdown began: the time by which to exit.
    stopping: Option<Instant>,
    /// Where the loop publishes Prometheus metrics, when they are served.
    metrics: Option<crate::metrics::Snapshot>,
    metrics_published: Option<Instant>,
    /// Time spent in timer turns that ran a route computation.
    spf_time: Duration,
    /// The seccomp state `status` shows (`on (N syscalls)`, `off: why`).
    seccomp: String,
    /// systemd's notification socket (`Type=notify`), when there is one.
    notify: crate::notify::Notifier,
}

impl Daemon {
    fn now(&self) -> Time {
        Time::from_duration(self.started.elapsed())
    }

    fn run(&mut self) -> Result<()> {
        for (i, tun) in self.tuns.indexed() {
            self.io
                .recv_packets(tun.fd(), Token(TOKEN_TUN_RECV | i as u64))
                .context("arming TUN receive")?;
        }
        // UDP endpoints are armed by `add_udp` when their backend starts.
        self.run_dialers();
        self.drain_node();
        loop {
            let timeout = self.next_timeout();
            let mut completions = std::mem::take(&mut self.completions);
            completions.clear();
            let result = self.io.submit_and_wait(&mut completions, Some(timeout));
            if let Err(error) = result {
                self.completions = completions;
                return Err(error).context("waiting for I/O");
            }
            for completion in completions.drain(..) {
                self.handle_completion(completion);
            }
            self.completions = completions;
            self.handle_messages();
            self.run_timers();
            self.drain_node();
            self.publish_metrics();
            // Everything received this turn is merged: write the super-packets.
            self.flush_tun_writes(None);
            if !self.dtls_batches.is_empty() {
                self.flush_dtls_batches(None);
            }
            self.reap_closing();
            if let Some(deadline) = self.stopping {
                let flushed = self.links.values().all(|l| l.backlog() == 0);
                if flushed || Instant::now() >= deadline {
                    return Ok(());
                }
            }
        }
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
            (OpKind::Write, TOKEN_TUN_WRITE) => {
                if let Some(buf) = completion.buf {
                    self.io.free(buf);
                }
            }
            (OpKind::Read, TOKEN_TCP_READ) => self.on_tcp_read(id, completion),
            (OpKind::Write, TOKEN_TCP_WRITE) => self.on_tcp_written(id, completion),
            (OpKind::RecvDatagram, TOKEN_UDP_RECV) => {
                self.on_udp_datagram(id.0 as usize, completion);
            }
            (OpKind::Send, TOKEN_UDP_SEND) => {
                if let Err(errno) = completion.result {
                    // The datagrams are lost (TCP inside retransmits); say why once in a while.
                    self.offload_counters.udp_send_errors += 1;
                    if self.offload_counters.udp_send_errors.is_power_of_two() {
                        tracing::warn!(
                            %errno,
                            errors = self.offload_counters.udp_send_errors,
                            "udp send failed"
                        );
                    }
                }
                if let Some(buf) = completion.buf {
                    self.io.free(buf);
                }
            }
            (OpKind::Wake, _) => {}
            _ => {
                if let Some(buf) = completion.buf {
                    self.io.free(buf);
                }
            }
        }
    }

    fn new_link(&mut self, link: Link) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        tracing::info!(link = %id, backend = %link.backend, remote = %link.remote, kind = link.kind, "link up");
        if let Transport::Dtls(d) = &link.transport {
            self.dtls_peers.insert((d.endpoint, link.remote), id);
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
        let now = self.now();
        self.node.handle_link_up(now, link, info);
    }

    fn handle_messages(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            match message {
                LoopMessage::TcpConnected(connected) => self.add_tcp_link(connected),
                LoopMessage::Control { request, reply } => {
                    let answer = match request {
                        ControlRequest::Status => ControlReply::Status(Box::new(self.status())),
                        ControlRequest::GetConfig => self.get_config(),
                        ControlRequest::SetConfig { config, signature } => {
                            match self.accept_config(
                                config.as_bytes(),
                                signature.as_bytes(),
                                reconcile::ConfigSource::Control,
                            ) {
                                Ok(version) => ControlReply::Accepted { version },
                                Err(error) => ControlReply::Error(format!("{error:#}")),
                            }
                        }
                        ControlRequest::Reload => ControlReply::Reloaded(self.reload_with_notify()),
                        ControlRequest::LogLevel { level } => match crate::log_level::set(&level) {
                            Ok(said) => ControlReply::Done(said),
                            Err(error) => ControlReply::Error(format!("{error:#}")),
                        },
                    };
                    let _ = reply.send(answer);
                }
                LoopMessage::LocalDatagram(d) => {
                    let now = self.now();
                    if let Err(reason) = self
                        .node
                        .send_control_datagram(now, d.src_port, d.dst, d.dst_port, &d.payload)
                    {
                        tracing::debug!(dst = %d.dst, dst_port = d.dst_port, reason = ?reason, "control datagram dropped");
                    }
                }
                LoopMessage::DtlsPeerResolved { endpoint, result } => {
                    self.on_dtls_peer_resolved(endpoint, result);
                }
                LoopMessage::Shutdown => self.begin_shutdown(),
                LoopMessage::Reload => {
                    self.reload_with_notify();
                }
                LoopMessage::OfferChecked(checked) => self.offer_checked(*checked),
            }
        }
    }

    /// Reloads (SIGHUP, `connectopus reload`) between systemd's `RELOADING=1` and `READY=1`.
    fn reload_with_notify(&mut self) -> control::ReloadOutcome {
        self.notify.reloading();
        let outcome = self.reload();
        // A change that restarts the mesh instance is ready when the re-executed process says
        // so.
        if !self.restart {
            let status = self.status_line();
            self.notify.ready(status);
        }
        outcome
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
                Transport::Tcp(_) => false,
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
        self.run_dialers();
        self.retry_backends();
        let configured = self.backends.len() + self.failed.len();
        self.notify
            .tick(|| report::status_line(&self.node, configured));
    }

    fn drain_node(&mut self) {
        // Applying a configuration or taking an offer makes more output: drain until none.
        while self.drain_node_once() {}
    }

    /// Drains the core's outputs once; returns true if any command or event was handled.
    fn drain_node_once(&mut self) -> bool {
        let mut handled = false;
        while let Some(transmit) = self.node.poll_transmit() {
            self.send_packet(transmit.link, &transmit.payload);
        }
        while let Some(packet) = self.node.poll_tun_packet() {
            self.write_tun(&packet);
        }
        while let Some(command) = self.node.poll_command() {
            handled = true;
            match command {
                Command::CloseLink { link, reason } => {
                    self.close_link(link, reason.as_str());
                }
                Command::InstallForwardingTable(table) => self.table = table,
                Command::ApplyConfig {
                    version,
                    unacknowledged,
                } => self.apply_pending_config(version, &unacknowledged),
            }
        }
        while let Some(event) = self.node.poll_event() {
            handled = true;
            log_event(&event);
            if matches!(event, Event::NamesChanged { .. }) {
                self.dns.update(&self.node);
            }
            if let Event::ConfigOffered {
                link,
                version,
                config,
                signature,
            } = event
            {
                self.check_offer(link, version, config, signature);
                continue;
            }
            if let Event::ControlDatagram {
                src,
                src_port,
                dst_port,
                payload,
            } = &event
            {
                self.local_datagrams
                    .deliver(*src, *src_port, *dst_port, payload);
                continue;
            }
            if let Event::SessionEstablished { link, .. } = event
                && let Some(l) = self.links.get_mut(&link)
            {
                l.had_session = true;
            }
        }
        handled
    }

    /// Closes a link's transport; a TCP socket itself closes once no operation uses it.
    fn close_link(&mut self, link: LinkId, why: &str) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        tracing::debug!(%link, why, "closing link");
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
                let _ = tcp.stream.shutdown(Shutdown::Both);
                self.closing.push((link, tcp));
            }
            Transport::Dtls(mut dtls) => {
                if self.dtls_peers.get(&(dtls.endpoint, l.remote)) == Some(&link) {
                    self.dtls_peers.remove(&(dtls.endpoint, l.remote));
                }
                dtls.association.close();
                while let Some(datagram) = dtls.association.poll_transmit() {
                    let (endpoint, local) = (dtls.endpoint, dtls.local);
                    send_raw(
                        &mut self.io,
                        &self.udp,
                        endpoint,
                        l.remote,
                        local,
                        &datagram,
                    );
                }
                if let Some(Some(UdpEndpoint {
                    role: UdpRole::Dialer(dialer),
                    ..
                })) = self.udp.get_mut(dtls.endpoint)
                {
                    let delay = if l.had_session {
                        dialer.backoff.reset();
                        Duration::ZERO
                    } else {
                        dialer.backoff.failure()
                    };
                    dialer.next_attempt = Some(Instant::now() + delay);
                }
            }
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
    }
}

/// Replaces this process with a fresh run of the same command line: how a node restarts its
/// mesh instance (new epoch, new TUN, new links) after a configuration change that requires
/// it. The new configuration was persisted first, so the new process loads it.
fn restart_process() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the node binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(exe = %exe.display(), "restarting the mesh instance");
    let error = std::process::Command::new(exe).args(args).exec();
    Err(error).context("restarting the node")
}
