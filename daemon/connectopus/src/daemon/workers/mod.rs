//! Dataplane worker threads: with `workers: N` (N > 1, multi-queue TUN) every one of the N
//! workers is a thread (worker 0 reads queue 0 of the node's TUN device through a second
//! descriptor of it, [`TunQueue::Shared`]), and the main loop is the control plane and the slow
//! path only; with one worker, worker 0 runs on the main loop (see `worker`).
//!
//! Inside this module a worker's `index` counts from 1 for the threads (0 is the main loop: a
//! link it receives, a TCP link it holds); `status` numbers the threads from 0
//! ([`Dataplane::label`]).
//!
//! Each worker thread owns a [`Worker`] (the same type as worker 0: its own io_uring
//! [`PacketIo`] and buffer pool, its own [`connectopus_core::forwarder::Forwarder`]) and one
//! queue of the node's TUN device (`IFF_MULTI_QUEUE`: the kernel steers each flow to one queue,
//! so the packets of a flow stay on one worker, in order). It reads its queue, forwards each
//! packet by the snapshot the control plane publishes, and itself seals records for DTLS links
//! (through the association's shared sending direction, [`connectopus_dtls::Sealer`]: one
//! atomic add per GSO batch) and sends on the link's UDP socket (shared, kept open by an
//! `Arc`), or sends plaintext UDP datagrams.
//!
//! What it cannot do itself goes to the main loop through a bounded channel (a copy; dropped
//! and counted when the channel is full): packets for TCP/TLS links another worker owns (the
//! main loop hands them on to the owner) and for DTLS links without the record fast path,
//! packets for the node's other TUN devices (namespaces, `tun_devs`), and the ICMPv6 errors
//! its forwarder built. Its `DataplaneReport` reaches the node every 100 ms, so data keeps
//! sessions alive.
//!
//! TCP/TLS links (`tcp`): once a link's session is established, the main loop gives its
//! stream, codec and unsent bytes to one worker (the one with the fewest links), which reads,
//! decrypts, unframes, frames, encrypts and writes it from then on; the link's messages that
//! are not packets go to the main loop, the node's messages for it come back to the owner.
//!
//! The control plane publishes the forwarding snapshot and the table of links the workers may
//! send on in [`Slot`]s: a generation counter read once per turn, a lock only when it changed.
//!
//! Receiving (`receive`): once a DTLS link is established on the record fast path, the control
//! plane gives it to one worker thread (the running one with the fewest): for a worker
//! thread it opens a socket connected to the peer on the link's port (`SO_REUSEPORT`; the
//! kernel prefers the exactly matching connected socket, so every datagram of the peer arrives
//! there) and hands it over with the association's receiving direction
//! ([`connectopus_dtls::Opener`]: replay windows, receive epochs). The worker opens the records
//! in place, forwards the packets by the snapshot (to its own TUN queue, or sealed on to the
//! next link) and hands the rest (hellos, the routing stream, handshake records, alerts) to
//! the main loop. A datagram of such a link that still arrives at the main loop's socket is
//! handed to its worker.
//!
//! Plaintext udp links (`receive_plain`) are received the same way once their session is
//! established, on a connected socket of their own: each data datagram is forwarded where it
//! lies, control datagrams go to the main loop, and what a peer's eBPF fast path sends (partial
//! checksums, super-packets encapsulated whole) is handled on the thread too. Such a link has
//! no receiving direction to hand over: a datagram that reaches the main loop's socket is
//! handled there.
//!
//! A worker whose ring fails (or, in tests, `CONNECTOPUS_TEST_FAIL_WORKER=<index>:<packets>`)
//! ends: its TUN queue closes, the kernel steers its flows to the remaining queues, and
//! `status` shows the worker stopped with the reason.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};

use connectopus_core::forwarder::{DataplaneReport, ForwardingSnapshot};
use connectopus_core::icmp::IcmpRateLimiter;
use connectopus_core::node::Forwarded;
use connectopus_dtls::{CloseReason, Opener, Sealer};
use connectopus_offload::{GsoType, Segments, VNET_HDR_LEN, VnetHeader};
use uring_io::{BufId, Waker};

use super::plain_udp::PlainUdpCounters;
use super::*;

/// Messages a worker thread may have queued for the main loop before it drops more.
const CHANNEL_BOUND: usize = 4096;

/// How long a worker thread waits for room in the channel to hand a link back
/// (`WorkerThread::pass_ownership_to_main`): longer than the main loop is ever busy.
const OWNERSHIP_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a worker thread hands its counters to the node.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// The longest a worker thread waits for I/O before it looks at its slots again.
const WAIT: Duration = Duration::from_millis(100);

/// The environment variable that makes worker threads fail (tests only):
/// `<index>:<packets>[,<index>:<packets>…]`, the worker `index` (as `status` numbers it) ends
/// after reading that many TUN packets.
pub(crate) const FAIL_WORKER_ENV: &str = "CONNECTOPUS_TEST_FAIL_WORKER";

/// The TUN queue a worker thread reads.
#[derive(Debug)]
pub(super) enum TunQueue {
    /// A queue of its own ([`TunDevice::clone_queue`]): closing it moves its flows to the
    /// other queues.
    Own(TunDevice),
    /// Queue 0, whose device the main loop keeps (it writes what it delivers through it):
    /// a second descriptor of the same queue ([`TunDevice::share_queue`]). When this thread
    /// stops, the main loop reads the queue again ([`Dataplane::queue_zero_orphaned`]).
    Shared {
        fd: std::os::fd::OwnedFd,
        offload: crate::tun::Offload,
    },
}

impl TunQueue {
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Self::Own(tun) => tun.fd(),
            Self::Shared { fd, .. } => fd.as_raw_fd(),
        }
    }

    pub(super) fn offload(&self) -> &crate::tun::Offload {
        match self {
            Self::Own(tun) => tun.offload(),
            Self::Shared { offload, .. } => offload,
        }
    }
}

/// Something a worker thread hands to the main loop.
#[derive(Debug)]
pub(super) enum FromWorker {
    /// A packet (or a super-packet behind its virtio-net header) for a link the worker does
    /// not send on; the forwarder already took its decision and counted it.
    ToLink {
        link: LinkId,
        packet: Vec<u8>,
        header: Option<VnetHeader>,
    },
    /// A TUN read for a local destination (another of the node's TUN devices), as read
    /// (with its virtio-net header when the device has one).
    FromTun(Vec<u8>),
    /// An ICMPv6 error the worker's forwarder built.
    Originated(Forwarded, Vec<u8>),
    /// A link message that is not an IPv6 packet (hello, routing stream), opened by the worker
    /// that receives the link.
    LinkMessage { link: LinkId, message: Vec<u8> },
    /// Records of a link's datagram that only the association handles (handshake, other
    /// epochs), or a ClientHello from the peer's address; as received from `remote` on
    /// `endpoint`'s port.
    ForAssociation {
        link: LinkId,
        endpoint: usize,
        remote: SocketAddr,
        local: Option<std::net::IpAddr>,
        datagram: Vec<u8>,
    },
    /// The peer closed the association (an authentic alert the worker opened).
    PeerClosed { link: LinkId, reason: CloseReason },
    /// A link given back (the worker stops), with its receiving direction for a DTLS link.
    Returned {
        link: LinkId,
        opener: Option<Box<Opener>>,
    },
    /// A TCP/TLS link given back (the worker stops) between two complete reads and writes:
    /// its stream, codec (with a partly read frame) and unsent bytes (`tcp`).
    ReturnedTcp(Box<OwnTcp>),
    /// A TCP/TLS link this worker owned ended (the peer closed it, an I/O or TLS error, or
    /// the peer does not read); its stream is closed.
    TcpClosed { link: LinkId, reason: &'static str },
    /// A super-packet a peer's eBPF encapsulated whole, received on a plaintext udp link, for
    /// one of the node's other TUN devices: the main loop routes it (`super_packets`).
    LinkSuperPacket {
        link: LinkId,
        datagram: Vec<u8>,
        segment_size: Option<u16>,
    },
    /// What the worker counted since its last report.
    Report {
        index: usize,
        report: DataplaneReport,
        offload: datapath::OffloadCounters,
        plain: PlainUdpCounters,
    },
}

/// A message for a TCP/TLS link the main loop holds while the link's worker gives it back:
/// the bytes, and the virtio-net header of a super-packet.
pub(super) type HeldMessage = (Vec<u8>, Option<VnetHeader>);

/// A value the control plane replaces whole and workers pick up once per turn.
#[derive(Debug)]
pub(super) struct Slot<T> {
    generation: AtomicU64,
    value: Mutex<Arc<T>>,
}

impl<T> Slot<T> {
    fn new(value: Arc<T>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            value: Mutex::new(value),
        }
    }

    fn publish(&self, value: Arc<T>) {
        *self
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The value, if it changed since generation `seen` (which it updates).
    fn newer(&self, seen: &mut u64) -> Option<Arc<T>> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        *seen = generation;
        Some(
            self.value
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A link whose datagrams a worker thread receives from now on.
#[derive(Debug)]
pub(super) struct LinkReceive {
    pub(super) link: LinkId,
    pub(super) endpoint: usize,
    pub(super) remote: SocketAddr,
    pub(super) local: Option<std::net::IpAddr>,
    /// Connected to the peer, on the link's port ([`crate::dtls_link::connect_peer`]).
    pub(super) socket: UdpSocket,
    /// The association's receiving direction; `None` for a plaintext udp link (each datagram
    /// is a link message as it is).
    pub(super) opener: Option<Opener>,
    /// The link's MTU (a longer plaintext datagram is a peer's eBPF super-packet).
    pub(super) mtu: u16,
}

/// A TCP/TLS link whose stream a worker thread reads and writes from now on (or gives back):
/// handed over only while no read or write is in flight on it (see `tcp`).
#[derive(Debug)]
pub(super) struct OwnTcp {
    pub(super) link: LinkId,
    pub(super) stream: TcpStream,
    /// Framing and TLS, with what is read of a frame not complete yet.
    pub(super) codec: TcpCodec,
    /// Bytes for the socket not written yet, in order.
    pub(super) tx: VecDeque<u8>,
}

/// What the main loop hands a worker thread.
#[derive(Debug)]
pub(super) enum ToWorker {
    /// Receive this link from now on.
    Receive(Box<LinkReceive>),
    /// Read and write this TCP/TLS link from now on.
    OwnTcp(Box<OwnTcp>),
    /// A message for a TCP/TLS link this worker owns: the node's own (hello, the routing
    /// stream) or a packet another worker forwarded to it (a super-packet behind `header`),
    /// framed into the link's byte stream in the order it arrives.
    TcpSend {
        link: LinkId,
        message: Vec<u8>,
        header: Option<VnetHeader>,
    },
    /// The TCP/TLS link closed: close its stream.
    ForgetTcp(LinkId),
    /// A datagram of a link this worker receives that arrived at the main loop's socket.
    Datagram { link: LinkId, datagram: Vec<u8> },
    /// The link closed: close its socket, drop its receiving direction.
    Forget(LinkId),
    /// Receive on this socket of the DTLS port of `endpoint` (the CPU-local receive).
    Port { endpoint: usize, socket: UdpSocket },
    /// The DTLS port of `endpoint` closed.
    ForgetPort(usize),
}

/// `rx_worker` of a link every worker thread receives (the CPU-local receive).
pub(super) const EVERY_WORKER: usize = usize::MAX;

/// How a worker thread sends on a link.
#[derive(Debug, Clone)]
pub(super) enum LinkSend {
    Dtls {
        socket: Arc<UdpSocket>,
        endpoint: usize,
        remote: SocketAddr,
        source: Option<std::net::IpAddr>,
        sealer: Sealer,
        /// The receiving direction, shared by the worker threads (the CPU-local receive).
        rx: Option<Arc<Mutex<Opener>>>,
    },
    Plain {
        socket: Arc<UdpSocket>,
        endpoint: usize,
        remote: SocketAddr,
        source: Option<std::net::IpAddr>,
    },
}

/// The links worker threads send on themselves.
pub(super) type LinkTable = HashMap<LinkId, LinkSend>;

/// What the control plane shares with the worker threads.
#[derive(Debug)]
pub(super) struct Shared {
    snapshot: Slot<ForwardingSnapshot>,
    links: Slot<LinkTable>,
    /// The DTLS links by `(endpoint, peer)`, also while they shake hands (the CPU-local
    /// receive; published with the link table).
    pub(super) dtls_peers: Slot<HashMap<(usize, SocketAddr), LinkId>>,
    stop: AtomicBool,
    /// The node has TUN devices besides its own (namespaces, `tun_devs`): packets from the TUN
    /// to a local address go to the main loop, which writes them to the namespace's device
    /// (`Daemon::hairpin`).
    hairpin: AtomicBool,
    /// The node's eBPF fast path is on: its peers may send super-packets and partial checksums
    /// on plaintext udp links (`super_packets`).
    fastpath: AtomicBool,
    /// The MTU of the TUN device the fast path serves (0: off).
    tun_mtu: AtomicU32,
}

/// What `status` shows of a worker thread, kept up to date by the thread.
#[derive(Debug, Clone, Default)]
pub(super) struct ThreadStatus {
    pub(super) io_uring: String,
    /// `None` while it runs; why it stopped.
    pub(super) stopped: Option<String>,
    /// Its ring and TUN queue descriptor are gone: nothing of it reads its TUN queue any
    /// more (a failing thread goes on reading while it gives its TCP links back).
    pub(super) queue_released: bool,
    pub(super) udp_gso: String,
    /// Reads from its TUN queue (updated with each report).
    pub(super) tun_reads: u64,
    /// Packets handed to the main loop (updated with each report).
    pub(super) handed_to_main: u64,
    /// DTLS records it opened (updated with each report).
    pub(super) records_opened: u64,
    /// Links whose datagrams it receives.
    pub(super) receive_links: u64,
    /// Received messages handed to the main loop (hellos, the routing stream, handshake).
    pub(super) received_for_main: u64,
    /// The most pool buffers in use at once (updated with each report).
    pub(super) buffers_peak: u64,
    /// Pool buffers that may be resident (updated with each report).
    pub(super) buffers_touched: u64,
    /// Plaintext udp data datagrams it received (updated with each report).
    pub(super) datagrams_received: u64,
    /// The thread's id (Linux `gettid`), set when it starts.
    pub(super) thread_id: u64,
    /// TCP/TLS links it reads and writes.
    pub(super) tcp_links: u64,
    /// Reads from those links' streams (updated with each report).
    pub(super) tcp_reads: u64,
    /// How its ring waits (busy polling, idle wake-ups).
    pub(super) waiting: uring_io::Waiting,
    /// `CPU n` when pinned for the CPU-local data path, else why not.
    pub(super) cpu: String,
}

/// The door of a worker thread's channel: open while the thread takes messages. The thread
/// closes it (under the lock) before its last look at the channel, so whatever the main loop
/// sent through an open door is taken, and what it could not send stays with it (a TCP link's
/// messages wait on the main loop until the link comes back, `Daemon::hold_for_tcp`).
#[derive(Debug, Default)]
pub(super) struct Door {
    open: Mutex<bool>,
}

impl Door {
    fn opened() -> Self {
        Self {
            open: Mutex::new(true),
        }
    }

    /// Runs `send` while the door is open; false (nothing sent) once it is closed.
    fn send_if_open(&self, send: impl FnOnce() -> bool) -> bool {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *open && send()
    }

    pub(super) fn close(&self) {
        *self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }
}

#[derive(Debug)]
struct ThreadHandle {
    thread: Option<JoinHandle<()>>,
    waker: Waker,
    status: Arc<Mutex<ThreadStatus>>,
    to_thread: Sender<ToWorker>,
    door: Arc<Door>,
    /// Bytes of `ToWorker::TcpSend` messages the thread has not taken yet.
    tcp_queued: Arc<AtomicUsize>,
    /// `ToWorker::TcpSend` messages went in this turn: wake the thread once when the turn
    /// ends ([`Dataplane::wake_for_tcp`]), not once a packet.
    wake_due: AtomicBool,
}

/// The worker threads, as the main loop holds them.
#[derive(Debug)]
pub(super) struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<ThreadHandle>,
    from_workers: Receiver<FromWorker>,
    /// Messages dropped because the channel to the main loop was full.
    pub(super) channel_drops: Arc<AtomicU64>,
    /// Multi-queue TUN: `Ok(queues)`, or why the node runs one worker.
    pub(super) multi_queue: std::result::Result<usize, String>,
    published: Option<Arc<ForwardingSnapshot>>,
    /// The link table must be published again (links or sessions changed).
    pub(super) links_dirty: bool,
    /// What each worker thread counted (index 1..).
    pub(super) offload: Vec<datapath::OffloadCounters>,
    /// How many links each worker receives (index 0 is the main loop's).
    receive_load: Vec<usize>,
    /// How many TCP/TLS links each worker reads and writes (index 0 is the main loop's).
    tcp_load: Vec<usize>,
    /// Messages for TCP/TLS links whose worker thread stopped taking them, until it gives
    /// the link back (`Daemon::take_back_tcp`).
    pub(super) tcp_held: HashMap<LinkId, Vec<HeldMessage>>,
    /// The first thread reads queue 0 through a shared descriptor, and has not stopped (or
    /// the main loop has not taken the queue back yet).
    queue_zero_on_thread: bool,
    /// The CPU of each worker thread (by label) for the CPU-local data path, or why it is off.
    pub(super) cpu_local: std::result::Result<Vec<usize>, String>,
    /// The UDP endpoints whose DTLS port the worker threads receive on (`open_ports`).
    pub(super) ports: std::collections::HashSet<usize>,
}

/// How many workers a node runs: `--workers`, else the node's `workers`, else one per CPU
/// (at most [`connectopus_config::DEFAULT_MAX_WORKERS`]).
pub(super) fn wanted(flag: Option<u32>, config: Option<u32>) -> usize {
    match flag.or(config) {
        Some(n) => n.max(1) as usize,
        None => std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, connectopus_config::DEFAULT_MAX_WORKERS),
    }
}

/// The queues of the node's TUN device `tun` (made multi-queue when `multi_queue` is `Ok`)
/// for `wanted` worker threads: queue 0 shared with the main loop (which keeps `tun` for its
/// writes), and `wanted - 1` more; or why the node runs one worker (on the main loop).
pub(super) fn open_queues(
    tun: Option<&TunDevice>,
    wanted: usize,
    multi_queue: std::result::Result<(), String>,
) -> (Vec<TunQueue>, std::result::Result<usize, String>) {
    let (more, result) = open_more_queues(tun, wanted, multi_queue);
    let (Some(tun), Ok(n)) = (tun, &result) else {
        return (Vec::new(), result);
    };
    let shared = match tun.share_queue() {
        Ok(fd) => fd,
        Err(error) => {
            let why = format!("{error:#}");
            tracing::warn!(%why, "one dataplane worker, on the main loop");
            return (Vec::new(), Err(why));
        }
    };
    let n = *n;
    let mut queues = vec![TunQueue::Shared {
        fd: shared,
        offload: tun.offload().clone(),
    }];
    queues.extend(more.into_iter().map(TunQueue::Own));
    (queues, Ok(n))
}

/// Opens `wanted - 1` more queues of the node's TUN device `tun` (made multi-queue when
/// `multi_queue` is `Ok`); returns them, or why there are fewer.
fn open_more_queues(
    tun: Option<&TunDevice>,
    wanted: usize,
    multi_queue: std::result::Result<(), String>,
) -> (Vec<TunDevice>, std::result::Result<usize, String>) {
    if wanted <= 1 {
        return (
            Vec::new(),
            Err("one dataplane worker (workers: 1)".to_owned()),
        );
    }
    let Some(tun) = tun else {
        return (
            Vec::new(),
            Err("the node has no TUN device of its own".to_owned()),
        );
    };
    if let Err(why) = multi_queue {
        return (Vec::new(), Err(why));
    }
    let mut queues = Vec::new();
    for _ in 1..wanted {
        match tun.clone_queue() {
            Ok(queue) => queues.push(queue),
            Err(error) => {
                let why = format!("{} of {wanted} TUN queues: {error:#}", queues.len() + 1);
                tracing::warn!(%why, "fewer dataplane workers");
                if queues.is_empty() {
                    return (queues, Err(why));
                }
                break;
            }
        }
    }
    let n = queues.len() + 1;
    (queues, Ok(n))
}

impl Dataplane {
    /// Starts one worker thread per queue in `queues` (`status`'s workers 0.., indices 1..
    /// here); each wakes the main loop through `main` when it hands it something.
    pub(super) fn start(
        (queues, multi_queue): (Vec<TunQueue>, std::result::Result<usize, String>),
        offloads: &datapath::Offloads,
        icmp: &IcmpRateLimiter,
        main: Waker,
        started: crate::boot_clock::BootInstant,
        idle_wake: Duration,
        cpu_local: std::result::Result<Vec<usize>, String>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            snapshot: Slot::new(Arc::default()),
            links: Slot::new(Arc::default()),
            dtls_peers: Slot::new(Arc::default()),
            stop: AtomicBool::new(false),
            hairpin: AtomicBool::new(false),
            fastpath: AtomicBool::new(false),
            tun_mtu: AtomicU32::new(0),
        });
        let (tx, from_workers) = mpsc::sync_channel(CHANNEL_BOUND);
        let channel_drops = Arc::new(AtomicU64::new(0));
        let fail = fault_from_env();
        let mut threads = Vec::new();
        let queue_zero_on_thread = matches!(queues.first(), Some(TunQueue::Shared { .. }));
        // Each thread pins itself first thing; start-up waits for that (below), since the
        // seccomp filter installed after it refuses `sched_setaffinity`.
        let (pinned_tx, pinned_rx) = mpsc::channel::<()>();
        for (i, tun) in queues.into_iter().enumerate() {
            let index = i + 1;
            let label = Self::label(index);
            let io = PacketIo::new(datapath::io_config(offloads.wanted, idle_wake))
                .with_context(|| format!("starting packet I/O of worker {label}"))?;
            let status = Arc::new(Mutex::new(ThreadStatus {
                io_uring: match io.fallback_reason() {
                    None => "on".to_owned(),
                    Some(why) => format!("off: {why}"),
                },
                stopped: None,
                udp_gso: datapath::Offloads::describe(&offloads.udp_gso),
                waiting: io.waiting(),
                ..ThreadStatus::default()
            }));
            let waker = io.waker();
            let (to_thread, from_main) = mpsc::channel();
            let door = Arc::new(Door::opened());
            let tcp_queued = Arc::new(AtomicUsize::new(0));
            let thread = WorkerThread {
                index,
                worker: Worker::new(io, offloads.clone(), icmp.clone()),
                vnet: tun.offload().vnet_hdr(),
                tun,
                shared: shared.clone(),
                snapshot_seen: 0,
                links_seen: 0,
                peers_seen: 0,
                peers: Arc::default(),
                links: HashMap::new(),
                to_main: tx.clone(),
                main: main.clone(),
                channel_drops: channel_drops.clone(),
                started,
                reported: Instant::now(),
                woke_main: false,
                status: status.clone(),
                fail_after: fail.iter().find(|(w, _)| *w == label).map(|(_, n)| *n),
                handed_to_main: 0,
                hairpin: false,
                from_main,
                receiving: Vec::new(),
                ports: Vec::new(),
                shared_rx: HashMap::new(),
                records_opened: 0,
                received_for_main: 0,
                transit: Vec::new(),
                fastpath: false,
                tun_mtu: 0,
                datagrams_received: 0,
                plain_counters: PlainUdpCounters::default(),
                door: door.clone(),
                tcp_queued: tcp_queued.clone(),
                tcp: Vec::new(),
                tcp_stopping: false,
            };
            let pin = cpu_local
                .as_ref()
                .ok()
                .and_then(|cpus| cpus.get(i).copied());
            let pinned_tx = pinned_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("worker-{label}"))
                .spawn(move || {
                    let cpu = WorkerThread::pin(index, pin);
                    let _ = pinned_tx.send(());
                    thread.run(cpu);
                })
                .with_context(|| format!("spawning worker {label}"))?;
            threads.push(ThreadHandle {
                thread: Some(handle),
                waker,
                status,
                to_thread,
                door,
                tcp_queued,
                wake_due: AtomicBool::new(false),
            });
        }
        let n = threads.len();
        for _ in 0..n {
            if pinned_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                tracing::warn!("a worker thread did not start within 5 s");
                break;
            }
        }
        Ok(Self {
            shared,
            threads,
            from_workers,
            channel_drops,
            multi_queue,
            published: None,
            links_dirty: true,
            offload: vec![datapath::OffloadCounters::default(); n],
            receive_load: vec![0; n + 1],
            tcp_load: vec![0; n + 1],
            tcp_held: HashMap::new(),
            queue_zero_on_thread,
            cpu_local,
            ports: Default::default(),
        })
    }

    /// How `status` (and the thread's name) numbers worker thread `index` (1.. here): from 0,
    /// since every worker is a thread when there are threads.
    pub(super) fn label(index: usize) -> usize {
        index.saturating_sub(1)
    }

    /// Whether a worker thread reads queue 0 of the node's TUN device (the main loop then
    /// does not).
    pub(super) fn queue_zero_on_thread(&self) -> bool {
        self.queue_zero_on_thread
    }

    /// True once, when the thread that read queue 0 has stopped: the main loop reads the
    /// queue from then on (it keeps the queue open, so the kernel still steers flows to it).
    pub(super) fn queue_zero_orphaned(&mut self) -> bool {
        if !self.queue_zero_on_thread {
            return false;
        }
        // Not at `stopped`, which a failing thread sets before it gives its links back (up to
        // `GIVE_BACK_WAIT`, reading queue 0 all the while): two readers of one queue would
        // forward a flow's packets on two threads, out of order.
        let released = self.status(1).is_none_or(|s| s.queue_released);
        if released {
            self.queue_zero_on_thread = false;
        }
        released
    }

    /// Whether there are worker threads besides the main loop's.
    pub(super) fn has_threads(&self) -> bool {
        !self.threads.is_empty()
    }

    /// Publishes `snapshot` to the worker threads if it is new.
    pub(super) fn publish_snapshot(&mut self, snapshot: &Arc<ForwardingSnapshot>) {
        if self.threads.is_empty()
            || self
                .published
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, snapshot))
        {
            return;
        }
        self.published = Some(snapshot.clone());
        self.shared.snapshot.publish(snapshot.clone());
        // The established set may have changed: a new session's sealer.
        self.links_dirty = true;
        self.wake_all();
    }

    /// Tells the worker threads whether the node has namespaces to hairpin to.
    pub(super) fn set_hairpin(&self, on: bool) {
        self.shared.hairpin.store(on, Ordering::Relaxed);
    }

    /// Tells the worker threads whether the eBPF fast path is on, and its TUN device's MTU.
    pub(super) fn set_fastpath(&self, tun_mtu: Option<u16>) {
        self.shared
            .tun_mtu
            .store(tun_mtu.map_or(0, u32::from), Ordering::Relaxed);
        self.shared
            .fastpath
            .store(tun_mtu.is_some(), Ordering::Relaxed);
    }

    /// Publishes the links the worker threads send on.
    pub(super) fn publish_links(&mut self, table: LinkTable) {
        self.links_dirty = false;
        self.shared.links.publish(Arc::new(table));
        self.wake_all();
    }

    fn wake_all(&self) {
        for t in &self.threads {
            let _ = t.waker.wake();
        }
    }

    /// The next message of a worker thread, if any.
    pub(super) fn try_recv(&self) -> Option<FromWorker> {
        self.from_workers.try_recv().ok()
    }

    /// What `status` shows for worker thread `index` (1..).
    pub(super) fn status(&self, index: usize) -> Option<ThreadStatus> {
        let t = self.threads.get(index.checked_sub(1)?)?;
        Some(
            t.status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    /// The worker that should receive a new link: the running worker thread receiving (or
    /// reading and writing) the fewest links (the last on a tie); 0 (the main loop) only when
    /// no thread runs, so established links never wait behind the control plane.
    pub(super) fn least_loaded(&self) -> usize {
        let running = |i: usize| self.status(i).is_some_and(|s| s.stopped.is_none());
        (1..self.receive_load.len())
            .rev()
            .filter(|i| running(*i))
            .min_by_key(|i| self.receive_load[*i] + self.tcp_load.get(*i).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts a TCP/TLS link as owned by worker `index` (`add`), or no longer.
    pub(super) fn count_tcp(&mut self, index: usize, add: bool) {
        if let Some(n) = self.tcp_load.get_mut(index) {
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Hands a message for TCP/TLS `link` to its owner, worker thread `index`; gives it back
    /// when the thread no longer takes messages, and drops a data packet (`Ok(false)`) when
    /// the thread has more than [`MAX_TCP_BACKLOG`] bytes of them not taken yet.
    pub(super) fn send_tcp(
        &self,
        index: usize,
        link: LinkId,
        message: Vec<u8>,
        header: Option<VnetHeader>,
    ) -> std::result::Result<bool, (Vec<u8>, Option<VnetHeader>)> {
        let Some(t) = index.checked_sub(1).and_then(|i| self.threads.get(i)) else {
            return Err((message, header));
        };
        let data = is_ip_packet(&message);
        if data && t.tcp_queued.load(Ordering::Relaxed) > MAX_TCP_BACKLOG {
            return Ok(false);
        }
        let len = message.len();
        let message = ToWorker::TcpSend {
            link,
            message,
            header,
        };
        // Counted first: the thread may take it (and subtract) before `send_to` returns.
        t.tcp_queued.fetch_add(len, Ordering::Relaxed);
        if let Err(back) = self.enqueue(index, message) {
            t.tcp_queued.fetch_sub(len, Ordering::Relaxed);
            return match back {
                ToWorker::TcpSend {
                    message, header, ..
                } => Err((message, header)),
                _ => Err((Vec::new(), None)),
            };
        }
        t.wake_due.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Wakes each worker thread the main loop handed TCP messages to this turn (once a turn,
    /// when it ends, rather than an eventfd write per packet).
    pub(super) fn wake_for_tcp(&self) {
        for t in &self.threads {
            if t.wake_due.swap(false, Ordering::Relaxed) {
                let _ = t.waker.wake();
            }
        }
    }

    /// How many links worker `index` receives.
    pub(super) fn receive_load(&self, index: usize) -> usize {
        self.receive_load.get(index).copied().unwrap_or(0)
    }

    /// Counts a link as received by worker `index` (`add`), or no longer.
    pub(super) fn count_receive(&mut self, index: usize, add: bool) {
        if let Some(n) = self.receive_load.get_mut(index) {
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Hands a link (or a message) to worker thread `index` (1..) and wakes it; gives it back
    /// if that thread is gone or takes nothing any more.
    pub(super) fn send_to(
        &self,
        index: usize,
        message: ToWorker,
    ) -> std::result::Result<(), ToWorker> {
        self.enqueue(index, message)?;
        if let Some(t) = index.checked_sub(1).and_then(|i| self.threads.get(i)) {
            let _ = t.waker.wake();
        }
        Ok(())
    }

    /// [`Dataplane::send_to`] without the wake.
    fn enqueue(&self, index: usize, message: ToWorker) -> std::result::Result<(), ToWorker> {
        let Some(t) = index.checked_sub(1).and_then(|i| self.threads.get(i)) else {
            return Err(message);
        };
        let mut message = Some(message);
        let mut back = None;
        let sent = t.door.send_if_open(|| match message.take() {
            Some(m) => match t.to_thread.send(m) {
                Ok(()) => true,
                Err(e) => {
                    back = Some(e.0);
                    false
                }
            },
            None => false,
        });
        if !sent {
            return match (back, message) {
                (Some(m), _) | (None, Some(m)) => Err(m),
                (None, None) => Ok(()),
            };
        }
        Ok(())
    }

    /// How many worker threads were started (running or stopped).
    pub(super) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Stops every worker thread and waits for it.
    pub(super) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake_all();
        for t in &mut self.threads {
            if let Some(thread) = t.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `CONNECTOPUS_TEST_FAIL_WORKER=<index>:<packets>[,…]` (tests only).
fn fault_from_env() -> Vec<(usize, u64)> {
    let value = std::env::var(FAIL_WORKER_ENV).unwrap_or_default();
    value
        .split(',')
        .filter_map(|fault| {
            let (index, packets) = fault.split_once(':')?;
            Some((index.trim().parse().ok()?, packets.trim().parse().ok()?))
        })
        .collect()
}

mod main_side;
mod receive;
mod receive_local;
mod receive_plain;
mod send;
mod tcp;
mod thread;
mod transit;

use thread::WorkerThread;

#[cfg(test)]
mod tests {
    use super::*;

    /// What the main loop sends through an open door reaches the thread's channel; once the
    /// thread closed it, nothing is sent and the message stays with the sender.
    #[test]
    fn a_closed_door_sends_nothing() {
        let door = Door::opened();
        let (tx, rx) = mpsc::channel::<u32>();
        assert!(door.send_if_open(|| tx.send(1).is_ok()));
        door.close();
        let mut called = false;
        assert!(!door.send_if_open(|| {
            called = true;
            tx.send(2).is_ok()
        }));
        assert!(!called);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1]);
    }
}
