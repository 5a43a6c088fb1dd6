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
use connectopus_core::forward::{self, Decision, DropReason, ForwardingTable, Ingress};
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
    /// This node's name in it.
    pub id: String,
    /// Where to serve the control socket.
    pub control_socket: PathBuf,
    /// The eBPF object to load (default: found by `connectopus_fastpath::find_object`).
    pub ebpf_object: Option<PathBuf>,
}

/// Runs a node until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (TUN, sockets, bad certificates); a running node logs and survives
/// per-link errors.
pub fn run(options: NodeOptions) -> Result<()> {
    let NodeOptions {
        config,
        id,
        control_socket,
        ebpf_object,
    } = options;
    let node_config = config
        .node(&id)
        .map_err(|d| anyhow::anyhow!("{d}"))?
        .clone();

    let io = PacketIo::new(uring_io::Config::default()).context("starting packet I/O")?;
    match io.fallback_reason() {
        None => tracing::info!(backend = io.backend().as_str(), "dataplane ready"),
        Some(reason) => tracing::warn!(
            backend = io.backend().as_str(),
            reason = %reason,
            "io_uring unavailable; using the syscall fallback"
        ),
    }

    let mtu = node_mtu(&node_config.backends);
    let mut tuns = Vec::new();
    match node_config.tun_name(&id) {
        Some(tun_name) => {
            let tun = TunDevice::create(
                &tun_name,
                node_config.address,
                config.global.subnet.prefix_len(),
                mtu,
            )?;
            tracing::info!(tun = %tun.name(), address = %node_config.address, %mtu, "tun device up");
            tuns.push(tun);
        }
        None => tracing::info!("tun disabled: this node only forwards"),
    }
    // Upstream's tun_devs: extra host addresses, each on its own device, advertised as /128s.
    let mut attachments = Vec::new();
    let mut attachment_names = Vec::new();
    for (name, dev) in &node_config.tun_devs {
        let tun = TunDevice::create(&dev.device, dev.address, 128, mtu)
            .with_context(|| format!("tun_devs.{name}"))?;
        tracing::info!(tun = %tun.name(), address = %dev.address, name = %name, "extra tun device up");
        tuns.push(tun);
        attachments.push(connectopus_wire::PrefixAdvert {
            prefix: connectopus_wire::Prefix::host(dev.address),
            cost: Cost::from_f64(dev.cost),
        });
        attachment_names.push(connectopus_wire::NameBinding {
            name: name.clone(),
            address: dev.address,
        });
    }

    let ebpf = match tuns.first() {
        Some(tun) => attach_counters(tun.name(), ebpf_object.as_deref()),
        None => Ebpf::Off("no tun device".to_owned()),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let to_loop = LoopSender::new(tx, io.waker());
    let mut threads = Vec::new();
    threads.push(control::spawn_server(
        &control_socket,
        to_loop.clone(),
        stop.clone(),
    )?);
    threads.push(spawn_signal_thread(to_loop.clone())?);
    let mut udp = Vec::new();
    threads.extend(start_backends(
        &node_config.backends,
        &to_loop,
        &stop,
        &mut udp,
    )?);

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let epoch = started_wall
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(1);
    let timers = &config.global.timers;
    let mut core = NodeConfig::new(
        node_config.address,
        id,
        epoch,
        epoch ^ u64::from(std::process::id()),
    );
    core.config_version = config.global.version;
    core.prefixes = attachments;
    core.names = attachment_names;
    core.timers.session.keepalive_idle = timers.keepalive_idle.get();
    core.timers.session.dead_interval = timers.dead_interval.get();
    core.timers.update_interval = timers.update_interval.get();
    core.timers.node_dead_after = timers.node_dead_after.get();

    let mut daemon = Daemon {
        node: Node::new(core, Time::ZERO),
        table: Arc::new(ForwardingTable::default()),
        io,
        started,
        started_wall,
        tuns,
        ebpf,
        subnet: config.global.subnet.to_string(),
        links: BTreeMap::new(),
        udp,
        closing: Vec::new(),
        next_link: 1,
        rx,
        completions: Vec::with_capacity(uring_io::BATCH_SIZE * 4),
        scratch: Vec::with_capacity(u16::MAX as usize),
        scratch_out: Vec::with_capacity(u16::MAX as usize + 64),
        ranges: Vec::new(),
        stopping: None,
    };
    let result = daemon.run();
    stop.store(true, Ordering::Relaxed);
    drop(daemon);
    let _ = std::fs::remove_file(&control_socket);
    for thread in threads {
        let _ = thread.join();
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
/// otherwise and says why.
fn attach_counters(ifname: &str, object: Option<&std::path::Path>) -> Ebpf {
    let attached = connectopus_fastpath::find_object(object)
        .and_then(|path| connectopus_fastpath::load_object(&path).map(|bytes| (path, bytes)))
        .and_then(|(path, bytes)| {
            connectopus_fastpath::TunCounters::attach(ifname, &bytes).map(|c| (path, c))
        });
    match attached {
        Ok((path, counters)) => {
            tracing::info!(object = %path.display(), mode = counters.attach_mode().as_str(), "ebpf counters attached");
            Ebpf::Counters(counters)
        }
        Err(error) => {
            tracing::info!(%error, "running without eBPF");
            Ebpf::Off(error.to_string())
        }
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

fn start_backends(
    backends: &BTreeMap<String, BackendConfig>,
    to_loop: &LoopSender,
    stop: &Arc<AtomicBool>,
    udp: &mut Vec<UdpEndpoint>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for (name, backend) in backends {
        let settings = TcpBackend {
            name: name.clone(),
            cost: Cost::from_f64(backend.cost()),
            mtu: backend_mtu(backend),
        };
        match backend {
            BackendConfig::TcpListener(l) => {
                let tls = if l.tls {
                    let (Some(server_cert), Some(server_key)) = (l.server_cert(), l.server_key())
                    else {
                        anyhow::bail!("backend {name}: tls needs server_cert and server_key");
                    };
                    Some(
                        tls::server_config(&tls::ListenerTls {
                            server_cert,
                            server_key,
                            client_ca: l.client_ca(),
                            require_client_cert: l.require_client_cert,
                        })
                        .with_context(|| format!("backend {name}"))?,
                    )
                } else {
                    None
                };
                let ip = l
                    .listen_ip
                    .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
                let port = l
                    .port
                    .with_context(|| format!("backend {name}: a listener needs a port"))?;
                threads.push(backends::spawn_tcp_listener(
                    settings,
                    SocketAddr::new(ip, port),
                    tls,
                    to_loop.clone(),
                    stop.clone(),
                )?);
            }
            BackendConfig::TcpDialer(d) => {
                let tls = if d.tls {
                    let server_name = d.server_name.clone().unwrap_or_else(|| match &d.peer.host {
                        connectopus_config::PeerHost::Ip(ip) => ip.to_string(),
                        connectopus_config::PeerHost::Name(n) => n.clone(),
                    });
                    Some(
                        tls::client_config(&tls::DialerTls {
                            server_name,
                            root_ca: d.root_ca(),
                            pinned_cert: d.pinned_cert(),
                            client_cert: d.client_cert(),
                            client_key: d.client_key(),
                            insecure_skip_verify: d.insecure_skip_verify,
                        })
                        .with_context(|| format!("backend {name}"))?,
                    )
                } else {
                    None
                };
                threads.push(backends::spawn_tcp_dialer(
                    settings,
                    d.peer.clone(),
                    tls,
                    to_loop.clone(),
                    stop.clone(),
                )?);
            }
            BackendConfig::DtlsListener(l) => {
                let config = dtls_link::listener_config(l, settings.mtu)
                    .with_context(|| format!("backend {name}"))?;
                let ip = l
                    .listen_ip
                    .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
                let port = l
                    .port
                    .with_context(|| format!("backend {name}: a listener needs a port"))?;
                let bind = SocketAddr::new(ip, port);
                let socket =
                    dtls_link::bind_listener(bind).with_context(|| format!("backend {name}"))?;
                tracing::info!(backend = %name, %bind, "dtls listener up");
                udp.push(UdpEndpoint {
                    socket,
                    backend: name.clone(),
                    cost: settings.cost,
                    mtu: settings.mtu,
                    role: UdpRole::Listener(Box::new(config)),
                });
            }
            BackendConfig::DtlsDialer(d) => {
                let config = dtls_link::dialer_config(d, settings.mtu)
                    .with_context(|| format!("backend {name}"))?;
                let socket = dtls_link::bind_dialer().with_context(|| format!("backend {name}"))?;
                udp.push(UdpEndpoint {
                    socket,
                    backend: name.clone(),
                    cost: settings.cost,
                    mtu: settings.mtu,
                    role: UdpRole::Dialer(Box::new(DialerState {
                        peer: d.peer.clone(),
                        config,
                        backoff: Backoff::new(),
                        next_attempt: Some(Instant::now()),
                    })),
                });
            }
        }
    }
    Ok(threads)
}

fn spawn_signal_thread(to_loop: LoopSender) -> Result<JoinHandle<()>> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "shutting down");
                to_loop.send(LoopMessage::Shutdown);
            }
        })
        .context("spawning signal thread")
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
    io: PacketIo,
    node: Node,
    table: Arc<ForwardingTable>,
    started: Instant,
    started_wall: SystemTime,
    /// The node's TUN devices: its own first (unless disabled), then its `tun_devs`.
    tuns: Vec<TunDevice>,
    ebpf: Ebpf,
    subnet: String,
    links: BTreeMap<LinkId, Link>,
    udp: Vec<UdpEndpoint>,
    /// Links whose socket waits for in-flight operations before it may close.
    closing: Vec<(LinkId, Box<TcpLink>)>,
    next_link: u64,
    rx: Receiver<LoopMessage>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    scratch_out: Vec<u8>,
    ranges: Vec<Range<usize>>,
    /// Set once shutdown began: the time by which to exit.
    stopping: Option<Instant>,
}

impl Daemon {
    fn now(&self) -> Time {
        Time::from_duration(self.started.elapsed())
    }

    fn run(&mut self) -> Result<()> {
        for (i, tun) in self.tuns.iter().enumerate() {
            self.io
                .recv_packets(tun.fd(), Token(TOKEN_TUN_RECV | i as u64))
                .context("arming TUN receive")?;
        }
        for endpoint in 0..self.udp.len() {
            let fd = self.udp[endpoint].socket.as_raw_fd();
            self.io
                .recv_datagrams(fd, Token(TOKEN_UDP_RECV | endpoint as u64))
                .context("arming UDP receive")?;
        }
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
        for e in &self.udp {
            if let UdpRole::Dialer(d) = &e.role
                && let Some(at) = d.next_attempt
            {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
        }
        if self.stopping.is_some() {
            timeout = timeout.min(Duration::from_millis(20));
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

    fn on_tun_packet(&mut self, tun: usize, completion: Completion) {
        let armed = completion.armed;
        let range = completion.data_range();
        let Some(buf) = completion.buf else {
            return;
        };
        let mut kept = Some(buf);
        if let (Some(range), Some(buf)) = (range, kept.as_ref()) {
            let now = self.now();
            let decision = {
                let packet = &mut self.io.buf_mut(buf)[range.clone()];
                forward::decide(&self.table, packet, Ingress::Tun)
            };
            let packet = &self.io.buf(buf)[range.clone()];
            match decision {
                Decision::Forward { link } if self.is_dtls(link) => {
                    // Zero copy: seal the packet into a record where it lies and send it.
                    if let Some(buf) = kept.take() {
                        self.seal_and_send(link, buf, range.start, range.len());
                    }
                }
                Decision::Forward { link } => {
                    // The TCP codec frames into its own byte queue.
                    self.scratch.clear();
                    self.scratch.extend_from_slice(packet);
                    let message = std::mem::take(&mut self.scratch);
                    self.send_packet(link, &message);
                    self.scratch = message;
                }
                Decision::Reject(kind) => self.node.send_icmp_error(now, kind, packet),
                Decision::Drop(reason) => self.node.count_drop(reason),
                Decision::Deliver => self.node.count_drop(DropReason::Loop),
            }
        }
        if let Some(buf) = kept {
            self.io.free(buf);
        }
        if !armed
            && self.stopping.is_none()
            && let Some(fd) = self.tuns.get(tun).map(TunDevice::fd)
            && let Err(error) = self.io.recv_packets(fd, Token(TOKEN_TUN_RECV | tun as u64))
        {
            tracing::error!(%error, "re-arming TUN receive failed");
        }
    }

    fn is_dtls(&self, link: LinkId) -> bool {
        matches!(
            self.links.get(&link).map(|l| &l.transport),
            Some(Transport::Dtls(_))
        )
    }

    /// Routes one IPv6 packet that arrived on `from` (its session already credited).
    fn route_link_packet(&mut self, from: LinkId, packet: &mut [u8]) {
        let now = self.now();
        if !self.node.note_link_packet(now, from, packet.len()) {
            return;
        }
        match forward::decide(&self.table, packet, Ingress::Link(from)) {
            Decision::Deliver => self.write_tun(packet),
            Decision::Forward { link } => self.send_packet(link, packet),
            Decision::Reject(kind) => self.node.send_icmp_error(now, kind, packet),
            Decision::Drop(reason) => self.node.count_drop(reason),
        }
    }

    /// Writes a packet to the TUN device that holds its destination (the node's own device for
    /// anything else).
    fn write_tun(&mut self, packet: &[u8]) {
        let destination = forward::addresses(packet).map(|(_, dst)| dst);
        let tun = self
            .tuns
            .iter()
            .find(|t| Some(t.address()) == destination)
            .or_else(|| self.tuns.first());
        let Some(fd) = tun.map(TunDevice::fd) else {
            self.node.count_drop(DropReason::NoRoute);
            return;
        };
        let Some(buf) = self.io.alloc() else {
            self.node.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = self.io.pool().headroom();
        let end = start + packet.len();
        match self.io.buf_mut(&buf).get_mut(start..end) {
            Some(slot) => slot.copy_from_slice(packet),
            None => {
                self.io.free(buf);
                self.node.count_drop(DropReason::Malformed);
                return;
            }
        }
        self.io.write(fd, Token(TOKEN_TUN_WRITE), buf, start..end);
    }

    /// Sends one link message (data packet or control message) on `link`.
    fn send_packet(&mut self, link: LinkId, message: &[u8]) {
        let Some(l) = self.links.get_mut(&link) else {
            self.node.count_drop(DropReason::LinkDown);
            return;
        };
        let data = is_ipv6(message);
        if data && l.backlog() > MAX_TCP_BACKLOG {
            self.node.count_drop(DropReason::LinkCongested);
            return;
        }
        match &mut l.transport {
            Transport::Tcp(tcp) => {
                self.scratch_out.clear();
                if let Err(error) = tcp.codec.send_message(message, &mut self.scratch_out) {
                    tracing::debug!(%link, %error, "dropping message");
                    return;
                }
                tcp.tx.extend(self.scratch_out.iter());
                if data {
                    self.node.note_link_sent(link, message.len());
                }
                self.pump_tcp_write(link);
            }
            Transport::Dtls(_) => {
                let Some(buf) = self.io.alloc() else {
                    self.node.count_drop(DropReason::LinkCongested);
                    return;
                };
                let start = self.io.pool().headroom();
                let fits = self
                    .io
                    .buf_mut(&buf)
                    .get_mut(start..start + message.len())
                    .map(|slot| slot.copy_from_slice(message))
                    .is_some();
                if !fits {
                    self.io.free(buf);
                    self.node.count_drop(DropReason::TooBig);
                    return;
                }
                self.seal_and_send(link, buf, start, message.len());
            }
        }
    }

    /// Seals the payload at `buf[offset..offset + len]` into a DTLS record in place and sends
    /// it; takes ownership of `buf`.
    fn seal_and_send(&mut self, link: LinkId, buf: uring_io::BufId, offset: usize, len: usize) {
        let Some(l) = self.links.get_mut(&link) else {
            self.io.free(buf);
            return;
        };
        let Transport::Dtls(dtls) = &mut l.transport else {
            self.io.free(buf);
            return;
        };
        let Some(payload_offset) = dtls.association.payload_offset() else {
            self.io.free(buf);
            self.node.count_drop(DropReason::LinkDown);
            return;
        };
        let Some(record_start) = offset.checked_sub(payload_offset) else {
            self.io.free(buf);
            self.node.count_drop(DropReason::Malformed);
            return;
        };
        let sealed = dtls
            .association
            .seal_in_place(&mut self.io.buf_mut(&buf)[record_start..], len);
        match sealed {
            Ok(n) => {
                let endpoint = dtls.endpoint;
                let destination = l.remote;
                self.node.note_link_sent(link, len);
                let fd = self.udp[endpoint].socket.as_raw_fd();
                self.io.send_to(
                    fd,
                    Token(TOKEN_UDP_SEND | endpoint as u64),
                    uring_io::Transmit {
                        destination,
                        buf,
                        range: record_start..record_start + n,
                        segment_size: None,
                    },
                );
            }
            Err(error) => {
                self.io.free(buf);
                tracing::debug!(%link, %error, "dtls seal failed");
                self.node.count_drop(DropReason::LinkDown);
            }
        }
    }

    /// Sends raw datagrams (handshake flights, alerts) that an association produced.
    fn flush_dtls(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Transport::Dtls(dtls) = &mut l.transport else {
            return;
        };
        let endpoint = dtls.endpoint;
        let destination = l.remote;
        while let Some(datagram) = dtls.association.poll_transmit() {
            send_raw(&mut self.io, &self.udp, endpoint, destination, &datagram);
        }
    }

    /// Starts a write of the link's queued bytes if none is in flight.
    fn pump_tcp_write(&mut self, link: LinkId) {
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if tcp.write_in_flight || tcp.tx.is_empty() {
            return;
        }
        let Some(buf) = self.io.alloc() else {
            // Retried after the next completion frees a buffer.
            return;
        };
        let capacity = self.io.pool().buf_size();
        let n = tcp.tx.len().min(capacity);
        let slot = &mut self.io.buf_mut(&buf)[..n];
        for (dst, src) in slot.iter_mut().zip(tcp.tx.iter()) {
            *dst = *src;
        }
        tcp.write_in_flight = true;
        let fd = tcp.stream.as_raw_fd();
        self.io
            .write(fd, Token(TOKEN_TCP_WRITE | link.0), buf, 0..n);
    }

    fn start_tcp_read(&mut self, link: LinkId) {
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if tcp.read_in_flight {
            return;
        }
        let Some(buf) = self.io.alloc() else {
            return;
        };
        tcp.read_in_flight = true;
        let fd = tcp.stream.as_raw_fd();
        self.io.read(fd, Token(TOKEN_TCP_READ | link.0), buf);
    }

    fn on_tcp_written(&mut self, link: LinkId, completion: Completion) {
        if let Some(buf) = completion.buf {
            self.io.free(buf);
        }
        if let Some((_, tcp)) = self.closing.iter_mut().find(|(id, _)| *id == link) {
            tcp.write_in_flight = false;
            return;
        }
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        tcp.write_in_flight = false;
        match completion.result {
            Ok(n) => {
                tcp.tx.drain(..n.min(tcp.tx.len()));
                self.pump_tcp_write(link);
            }
            Err(errno) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => {
                self.pump_tcp_write(link);
            }
            Err(errno) => {
                tracing::debug!(%link, error = %errno.into_io(), "tcp write failed");
                self.close_link(link, "write error");
            }
        }
    }

    fn on_tcp_read(&mut self, link: LinkId, completion: Completion) {
        if let Some((_, tcp)) = self.closing.iter_mut().find(|(id, _)| *id == link) {
            tcp.read_in_flight = false;
            if let Some(buf) = completion.buf {
                self.io.free(buf);
            }
            return;
        }
        let range = completion.data_range();
        let Some(buf) = completion.buf else {
            return;
        };
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            self.io.free(buf);
            return;
        };
        tcp.read_in_flight = false;
        let result = match (completion.result, range) {
            (Ok(0), _) => Err("closed by peer".to_owned()),
            (Ok(_), Some(range)) => {
                self.scratch_out.clear();
                let data = &self.io.buf(&buf)[range];
                let r = tcp
                    .codec
                    .receive(data, &mut self.scratch_out)
                    .map_err(|e| e.to_string());
                tcp.tx.extend(self.scratch_out.iter());
                r
            }
            (Err(errno), _) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => Ok(()),
            (Err(errno), _) => Err(errno.into_io().to_string()),
            (Ok(_), None) => Ok(()),
        };
        self.io.free(buf);
        if let Err(reason) = result {
            tracing::debug!(%link, %reason, "tcp link ends");
            self.close_link(link, "transport closed");
            return;
        }
        self.announce_if_ready(link);
        self.ranges.clear();
        if let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        {
            while let Some(r) = tcp.codec.pop_message() {
                self.ranges.push(r);
            }
        }
        let ranges = std::mem::take(&mut self.ranges);
        for r in &ranges {
            let Some(Link {
                transport: Transport::Tcp(tcp),
                ..
            }) = self.links.get_mut(&link)
            else {
                break;
            };
            let Some(message) = tcp.codec.buffer_mut().get(r.clone()) else {
                continue;
            };
            // Copied out once so the core and the other links can be reached while this
            // link's codec buffer is borrowed by nobody.
            self.scratch.clear();
            self.scratch.extend_from_slice(message);
            self.handle_link_message_in_scratch(link);
        }
        self.ranges = ranges;
        self.pump_tcp_write(link);
        self.start_tcp_read(link);
    }

    /// Routes or hands to the core the link message held in `self.scratch`.
    fn handle_link_message_in_scratch(&mut self, link: LinkId) {
        let mut message = std::mem::take(&mut self.scratch);
        if is_ipv6(&message) {
            self.route_link_packet(link, &mut message);
        } else {
            let now = self.now();
            self.node.handle_link_message(now, link, &mut message);
        }
        self.scratch = message;
    }

    fn on_udp_datagram(&mut self, endpoint: usize, completion: Completion) {
        let armed = completion.armed;
        let range = completion.data_range();
        let src = completion.src;
        let Some(buf) = completion.buf else {
            if !armed {
                self.rearm_udp(endpoint);
            }
            return;
        };
        if let (Some(range), Some(src)) = (range, src) {
            let src = normalize(src);
            let known = self.links.iter().find_map(|(id, l)| match &l.transport {
                Transport::Dtls(d) if d.endpoint == endpoint && l.remote == src => Some(*id),
                _ => None,
            });
            let listener = matches!(
                self.udp.get(endpoint).map(|e| &e.role),
                Some(UdpRole::Listener(_))
            );
            let hello = dtls_link::is_client_hello(&self.io.buf(&buf)[range.clone()]);
            match known {
                Some(link) if !(listener && hello) => {
                    self.on_dtls_datagram(link, buf, range);
                    if !armed {
                        self.rearm_udp(endpoint);
                    }
                    return;
                }
                _ if listener => {
                    let datagram = self.io.buf(&buf)[range].to_vec();
                    self.accept_dtls(endpoint, src, datagram);
                }
                _ => {}
            }
        }
        self.io.free(buf);
        if !armed {
            self.rearm_udp(endpoint);
        }
    }

    fn rearm_udp(&mut self, endpoint: usize) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(e) = self.udp.get(endpoint) {
            let fd = e.socket.as_raw_fd();
            if let Err(error) = self
                .io
                .recv_datagrams(fd, Token(TOKEN_UDP_RECV | endpoint as u64))
            {
                tracing::error!(%error, "re-arming udp receive failed");
            }
        }
    }

    /// Handles a datagram from an unknown address on a DTLS listener.
    fn accept_dtls(&mut self, endpoint: usize, src: SocketAddr, datagram: Vec<u8>) {
        let Some(UdpEndpoint {
            role: UdpRole::Listener(config),
            backend,
            cost,
            mtu,
            ..
        }) = self.udp.get(endpoint)
        else {
            return;
        };
        let half_open = self
            .links
            .values()
            .filter(|l| {
                matches!(&l.transport, Transport::Dtls(d) if d.endpoint == endpoint) && !l.announced
            })
            .count();
        if half_open >= dtls_link::MAX_HALF_OPEN {
            return;
        }
        let now = self.started.elapsed();
        match DtlsAssociation::accept(config, src, now, &datagram) {
            Ok(Accept::HelloVerifyRequest(reply)) => {
                send_raw(&mut self.io, &self.udp, endpoint, src, &reply);
            }
            Ok(Accept::Association(association)) => {
                let (backend, cost, mtu) = (backend.clone(), *cost, *mtu);
                // A new handshake from a known address replaces the old association.
                let old: Vec<LinkId> = self
                    .links
                    .iter()
                    .filter(|(_, l)| {
                        matches!(&l.transport, Transport::Dtls(d) if d.endpoint == endpoint)
                            && l.remote == src
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for link in old {
                    self.close_link(link, "peer started a new handshake");
                }
                let id = self.new_link(Link {
                    backend,
                    kind: "dtls listener",
                    remote: src,
                    cost,
                    mtu,
                    connected_at: Instant::now(),
                    announced: false,
                    had_session: false,
                    ended: None,
                    transport: Transport::Dtls(DtlsLink {
                        endpoint,
                        association,
                    }),
                });
                self.flush_dtls(id);
            }
            Ok(Accept::Ignored) => {}
            Err(error) => tracing::debug!(%src, %error, "dtls accept failed"),
        }
    }

    /// Feeds a datagram to a link's association and handles what it opened.
    fn on_dtls_datagram(&mut self, link: LinkId, buf: uring_io::BufId, range: Range<usize>) {
        let now = self.started.elapsed();
        let Some(Link {
            transport: Transport::Dtls(dtls),
            ..
        }) = self.links.get_mut(&link)
        else {
            self.io.free(buf);
            return;
        };
        let Some(datagram) = self.io.buf_mut(&buf).get_mut(range.clone()) else {
            self.io.free(buf);
            return;
        };
        let result = dtls.association.handle_datagram(now, datagram);
        match result {
            Ok(received) => {
                // Each opened record is one link message, in place in the datagram buffer.
                for i in 0..received.len() {
                    let Some(r) = received.get(i) else {
                        break;
                    };
                    self.scratch.clear();
                    let r = range.start + r.start..range.start + r.end;
                    if let Some(bytes) = self.io.buf(&buf).get(r) {
                        self.scratch.extend_from_slice(bytes);
                    }
                    self.handle_link_message_in_scratch(link);
                }
            }
            Err(error) => {
                tracing::debug!(%link, %error, "dtls failed");
            }
        }
        self.io.free(buf);
        self.after_dtls_io(link);
    }

    /// Sends what the association produced and follows its state.
    fn after_dtls_io(&mut self, link: LinkId) {
        self.flush_dtls(link);
        let closed = match self.links.get(&link).map(|l| &l.transport) {
            Some(Transport::Dtls(d)) => matches!(d.association.state(), DtlsState::Closed(_)),
            _ => false,
        };
        if closed {
            self.close_link(link, "dtls closed");
        } else {
            self.announce_if_ready(link);
        }
    }

    fn new_link(&mut self, link: Link) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        tracing::info!(link = %id, backend = %link.backend, remote = %link.remote, kind = link.kind, "link up");
        self.links.insert(id, link);
        id
    }

    /// Starts DTLS dial attempts that are due.
    fn run_dialers(&mut self) {
        let now = Instant::now();
        for endpoint in 0..self.udp.len() {
            let UdpEndpoint {
                role: UdpRole::Dialer(dialer),
                backend,
                cost,
                mtu,
                ..
            } = &mut self.udp[endpoint]
            else {
                continue;
            };
            if dialer.next_attempt.is_none_or(|t| t > now) || self.stopping.is_some() {
                continue;
            }
            dialer.next_attempt = None;
            let remote = match dtls_link::resolve(&dialer.peer) {
                Ok(remote) => remote,
                Err(error) => {
                    let delay = dialer.backoff.failure();
                    tracing::debug!(backend = %backend, error = %format!("{error:#}"), retry_in = ?delay, "dial failed");
                    dialer.next_attempt = Some(now + delay);
                    continue;
                }
            };
            let association = match DtlsAssociation::client(&dialer.config, self.started.elapsed())
            {
                Ok(a) => Box::new(a),
                Err(error) => {
                    let delay = dialer.backoff.failure();
                    tracing::warn!(backend = %backend, %error, "dtls client setup failed");
                    dialer.next_attempt = Some(now + delay);
                    continue;
                }
            };
            let link = Link {
                backend: backend.clone(),
                kind: "dtls dialer",
                remote,
                cost: *cost,
                mtu: *mtu,
                connected_at: now,
                announced: false,
                had_session: false,
                ended: None,
                transport: Transport::Dtls(DtlsLink {
                    endpoint,
                    association,
                }),
            };
            let id = self.new_link(link);
            self.flush_dtls(id);
        }
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
        let info = LinkInfo {
            mtu: l.mtu,
            cost: l.cost,
            label: format!("{} {} {}", l.backend, l.kind, l.remote),
        };
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
                    };
                    let _ = reply.send(answer);
                }
                LoopMessage::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn add_tcp_link(&mut self, connected: Box<TcpConnected>) {
        let connected = *connected;
        if self.stopping.is_some() {
            return;
        }
        let kind = match (connected.ended.is_some(), connected.tls.is_some()) {
            (true, true) => "tcp+tls dialer",
            (true, false) => "tcp dialer",
            (false, true) => "tcp+tls listener",
            (false, false) => "tcp listener",
        };
        let mut codec = match connected.tls {
            Some(tls) => TcpCodec::tls(tls),
            None => TcpCodec::plain(),
        };
        self.scratch_out.clear();
        codec.poll_handshake(&mut self.scratch_out);
        let tx: VecDeque<u8> = self.scratch_out.iter().copied().collect();
        let id = self.new_link(Link {
            backend: connected.backend,
            kind,
            remote: connected.remote,
            cost: connected.cost,
            mtu: connected.mtu,
            connected_at: Instant::now(),
            announced: false,
            had_session: false,
            ended: connected.ended,
            transport: Transport::Tcp(Box::new(TcpLink {
                stream: connected.stream,
                codec,
                tx,
                write_in_flight: false,
                read_in_flight: false,
            })),
        });
        self.announce_if_ready(id);
        self.pump_tcp_write(id);
        self.start_tcp_read(id);
    }

    fn run_timers(&mut self) {
        let now = self.now();
        self.node.handle_timeout(now);
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
        self.run_dialers();
    }

    fn drain_node(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            self.send_packet(transmit.link, &transmit.payload);
        }
        while let Some(packet) = self.node.poll_tun_packet() {
            self.write_tun(&packet);
        }
        while let Some(command) = self.node.poll_command() {
            match command {
                Command::CloseLink { link, reason } => {
                    self.close_link(link, reason.as_str());
                }
                Command::InstallForwardingTable(table) => self.table = table,
            }
        }
        while let Some(event) = self.node.poll_event() {
            log_event(&event);
            if let Event::SessionEstablished { link, .. } = event
                && let Some(l) = self.links.get_mut(&link)
            {
                l.had_session = true;
            }
        }
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
                dtls.association.close();
                while let Some(datagram) = dtls.association.poll_transmit() {
                    send_raw(&mut self.io, &self.udp, dtls.endpoint, l.remote, &datagram);
                }
                if let Some(UdpEndpoint {
                    role: UdpRole::Dialer(dialer),
                    ..
                }) = self.udp.get_mut(dtls.endpoint)
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
        let now = self.now();
        self.node.shutdown(now);
        self.drain_node();
        self.stopping = Some(Instant::now() + Duration::from_secs(1));
    }

    fn wall_time(&self, t: Time) -> f64 {
        let at = self.started_wall + Duration::from_nanos(t.as_nanos());
        at.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn status(&self) -> control::StatusReport {
        let now = self.now();
        let routes = self.node.routes();
        let name_of = |addr: std::net::Ipv6Addr| -> Option<String> {
            if addr == self.node.address() {
                return Some(self.node.name().to_owned());
            }
            self.node
                .known_nodes()
                .find(|(u, _)| u.origin == addr)
                .map(|(u, _)| u.name.clone())
        };
        let mut links = Vec::new();
        for (id, l) in &self.links {
            let session = self.node.sessions().find(|s| s.link() == *id);
            let counters = session.map(|s| s.counters()).unwrap_or_default();
            links.push(LinkReport {
                link: id.0,
                backend: l.backend.clone(),
                kind: l.kind.to_owned(),
                remote: l.remote.to_string(),
                state: match session {
                    Some(s) => s.state().as_str().to_owned(),
                    None if !l.announced => "tls handshake".to_owned(),
                    None => "closing".to_owned(),
                },
                peer_address: session
                    .and_then(|s| s.peer())
                    .map(|p| p.address.to_string()),
                peer_name: session.and_then(|s| s.peer()).map(|p| p.name.clone()),
                since_unix: session
                    .and_then(|s| s.established_at())
                    .map(|t| self.wall_time(t)),
                rtt_ms: session
                    .and_then(|s| s.rtt())
                    .map(|d| d.as_secs_f64() * 1000.0),
                cost: l.cost.as_f64(),
                mtu: l.mtu,
                bytes_in: counters.bytes_in,
                bytes_out: counters.bytes_out,
            });
        }
        let mut route_reports = Vec::new();
        for (prefix, target) in self.table.routes.iter() {
            let (via, next_hop) = match target {
                forward::RouteTarget::Local => ("local".to_owned(), None),
                forward::RouteTarget::Link { link, .. } => {
                    let peer = self
                        .node
                        .sessions()
                        .find(|s| s.link() == *link)
                        .and_then(|s| s.peer())
                        .map(|p| p.name.clone());
                    (link.to_string(), peer)
                }
            };
            let cost = routes
                .nodes
                .get(&prefix.addr())
                .filter(|_| prefix.len() == 128)
                .map(|r| r.cost)
                .or_else(|| routes.prefixes.get(&prefix).map(|r| r.cost))
                .map(|c| c as f64 / 1000.0);
            route_reports.push(RouteReport {
                prefix: prefix.to_string(),
                via,
                next_hop,
                cost,
            });
        }
        let mut nodes = vec![NodeReport {
            address: self.node.address().to_string(),
            name: self.node.name().to_owned(),
            epoch: self.node.epoch(),
            sequence: self.node.sequence(),
            age_secs: 0.0,
            cost: Some(0.0),
            adjacencies: self
                .node
                .sessions()
                .filter(|s| s.is_established())
                .filter_map(|s| {
                    s.peer()
                        .map(|p| (p.address.to_string(), s.info().cost.as_f64()))
                })
                .collect(),
        }];
        for (update, received) in self.node.known_nodes() {
            nodes.push(NodeReport {
                address: update.origin.to_string(),
                name: update.name.clone(),
                epoch: update.epoch,
                sequence: update.sequence,
                age_secs: (now - received).as_secs_f64(),
                cost: routes
                    .nodes
                    .get(&update.origin)
                    .map(|r| r.cost as f64 / 1000.0),
                adjacencies: update
                    .adjacencies
                    .iter()
                    .map(|a| (a.peer.to_string(), a.cost.as_f64()))
                    .collect(),
            });
        }
        let counters = self.node.counters();
        let mut counter_map = BTreeMap::new();
        counter_map.insert("updates_accepted".to_owned(), counters.updates_accepted);
        counter_map.insert("updates_originated".to_owned(), counters.updates_originated);
        counter_map.insert("icmp_errors_sent".to_owned(), counters.icmp_errors_sent);
        counter_map.insert("spf_runs".to_owned(), counters.spf_runs);
        for (reason, n) in &counters.updates_rejected {
            counter_map.insert(format!("updates_rejected_{}", reason.as_str()), *n);
        }
        for (what, n) in &counters.malformed_messages {
            counter_map.insert(format!("malformed_messages_{what}"), *n);
        }
        let _ = name_of;
        control::StatusReport {
            name: self.node.name().to_owned(),
            address: self.node.address().to_string(),
            subnet: self.subnet.clone(),
            epoch: self.node.epoch(),
            sequence: self.node.sequence(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            tun: if self.tuns.is_empty() {
                "disabled".to_owned()
            } else {
                self.tuns
                    .iter()
                    .map(TunDevice::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            dataplane: self.io.backend().as_str().to_owned(),
            dataplane_fallback_reason: self.io.fallback_reason().map(|r| r.to_string()),
            ebpf: self.ebpf.describe(),
            links,
            routes: route_reports,
            nodes,
            drops: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        counters.drops.get(r).copied().unwrap_or(0),
                    )
                })
                .collect(),
            counters: counter_map,
        }
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
        Event::ControlDatagram { .. } => {}
    }
}

/// Returns the address as the loop keys peers by it.
fn normalize(addr: SocketAddr) -> SocketAddr {
    addr
}

/// Copies a datagram into a pool buffer and sends it from a UDP endpoint.
fn send_raw(
    io: &mut PacketIo,
    udp: &[UdpEndpoint],
    endpoint: usize,
    destination: SocketAddr,
    datagram: &[u8],
) {
    let Some(e) = udp.get(endpoint) else {
        return;
    };
    let Some(buf) = io.alloc() else {
        return;
    };
    let start = io.pool().headroom();
    let Some(slot) = io.buf_mut(&buf).get_mut(start..start + datagram.len()) else {
        io.free(buf);
        return;
    };
    slot.copy_from_slice(datagram);
    io.send_to(
        e.socket.as_raw_fd(),
        Token(TOKEN_UDP_SEND | endpoint as u64),
        uring_io::Transmit {
            destination,
            buf,
            range: start..start + datagram.len(),
            segment_size: None,
        },
    );
}
