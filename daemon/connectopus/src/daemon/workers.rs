//! Dataplane worker threads 1..N-1 (worker 0 runs on the main loop, see `worker`).
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
//! and counted when the channel is full): packets for TCP/TLS links and for DTLS links without
//! the record fast path, packets for the node's other TUN devices (namespaces, `tun_devs`),
//! and the ICMPv6 errors its forwarder built. Its `DataplaneReport` reaches the node every
//! 100 ms, so data keeps sessions alive.
//!
//! The control plane publishes the forwarding snapshot and the table of links the workers may
//! send on in [`Slot`]s: a generation counter read once per turn, a lock only when it changed.
//!
//! A worker whose ring fails (or, in tests, `CONNECTOPUS_TEST_FAIL_WORKER=<index>:<packets>`)
//! ends: its TUN queue closes, the kernel steers its flows to the remaining queues, and
//! `status` shows the worker stopped with the reason.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use connectopus_core::forwarder::{DataplaneReport, ForwardingSnapshot};
use connectopus_core::icmp::IcmpRateLimiter;
use connectopus_core::node::Forwarded;
use connectopus_dtls::Sealer;
use connectopus_offload::{GsoType, Segments, VNET_HDR_LEN, VnetHeader};
use uring_io::{BufId, Waker};

use super::*;

/// Messages a worker thread may have queued for the main loop before it drops more.
const CHANNEL_BOUND: usize = 4096;

/// How often a worker thread hands its counters to the node.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// The longest a worker thread waits for I/O before it looks at its slots again.
const WAIT: Duration = Duration::from_millis(100);

/// The environment variable that makes a worker thread fail (tests only):
/// `<index>:<packets>`, the worker `index` ends after reading that many TUN packets.
pub(crate) const FAIL_WORKER_ENV: &str = "CONNECTOPUS_TEST_FAIL_WORKER";

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
    /// What the worker counted since its last report.
    Report {
        index: usize,
        report: DataplaneReport,
        offload: datapath::OffloadCounters,
    },
}

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

/// How a worker thread sends on a link.
#[derive(Debug, Clone)]
pub(super) enum LinkSend {
    Dtls {
        socket: Arc<UdpSocket>,
        endpoint: usize,
        remote: SocketAddr,
        source: Option<std::net::IpAddr>,
        sealer: Sealer,
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
    stop: AtomicBool,
    /// The node has TUN devices besides its own (namespaces, `tun_devs`): packets from the TUN
    /// to a local address go to the main loop, which writes them to the namespace's device
    /// (`Daemon::hairpin`).
    hairpin: AtomicBool,
}

/// What `status` shows of a worker thread, kept up to date by the thread.
#[derive(Debug, Clone, Default)]
pub(super) struct ThreadStatus {
    pub(super) io_uring: String,
    /// `None` while it runs; why it stopped.
    pub(super) stopped: Option<String>,
    pub(super) udp_gso: String,
    /// Reads from its TUN queue (updated with each report).
    pub(super) tun_reads: u64,
    /// Packets handed to the main loop (updated with each report).
    pub(super) handed_to_main: u64,
}

#[derive(Debug)]
struct ThreadHandle {
    thread: Option<JoinHandle<()>>,
    waker: Waker,
    status: Arc<Mutex<ThreadStatus>>,
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

/// Opens `wanted - 1` more queues of the node's TUN device `tun` (made multi-queue when
/// `multi_queue` is `Ok`); returns them, or why there are fewer.
pub(super) fn open_queues(
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
    /// Starts one worker thread per queue in `queues` (workers 1..); each wakes the main loop
    /// through `main` when it hands it something.
    pub(super) fn start(
        queues: Vec<TunDevice>,
        multi_queue: std::result::Result<usize, String>,
        offloads: &datapath::Offloads,
        icmp: &IcmpRateLimiter,
        main: Waker,
        started: Instant,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            snapshot: Slot::new(Arc::default()),
            links: Slot::new(Arc::default()),
            stop: AtomicBool::new(false),
            hairpin: AtomicBool::new(false),
        });
        let (tx, from_workers) = mpsc::sync_channel(CHANNEL_BOUND);
        let channel_drops = Arc::new(AtomicU64::new(0));
        let fail = fault_from_env();
        let mut threads = Vec::new();
        for (i, tun) in queues.into_iter().enumerate() {
            let index = i + 1;
            let io = PacketIo::new(datapath::io_config(offloads.wanted))
                .with_context(|| format!("starting packet I/O of worker {index}"))?;
            let status = Arc::new(Mutex::new(ThreadStatus {
                io_uring: match io.fallback_reason() {
                    None => "on".to_owned(),
                    Some(why) => format!("off: {why}"),
                },
                stopped: None,
                udp_gso: datapath::Offloads::describe(&offloads.udp_gso),
                tun_reads: 0,
                handed_to_main: 0,
            }));
            let waker = io.waker();
            let thread = WorkerThread {
                index,
                worker: Worker::new(io, offloads.clone(), icmp.clone()),
                vnet: tun.offload().vnet_hdr(),
                tun,
                shared: shared.clone(),
                snapshot_seen: 0,
                links_seen: 0,
                links: HashMap::new(),
                to_main: tx.clone(),
                main: main.clone(),
                channel_drops: channel_drops.clone(),
                started,
                reported: Instant::now(),
                woke_main: false,
                status: status.clone(),
                fail_after: fail.filter(|(w, _)| *w == index).map(|(_, n)| n),
                handed_to_main: 0,
                hairpin: false,
            };
            let handle = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || thread.run())
                .with_context(|| format!("spawning worker {index}"))?;
            threads.push(ThreadHandle {
                thread: Some(handle),
                waker,
                status,
            });
        }
        let n = threads.len();
        Ok(Self {
            shared,
            threads,
            from_workers,
            channel_drops,
            multi_queue,
            published: None,
            links_dirty: true,
            offload: vec![datapath::OffloadCounters::default(); n],
        })
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

/// `CONNECTOPUS_TEST_FAIL_WORKER=<index>:<packets>` (tests only).
fn fault_from_env() -> Option<(usize, u64)> {
    let value = std::env::var(FAIL_WORKER_ENV).ok()?;
    let (index, packets) = value.split_once(':')?;
    Some((index.parse().ok()?, packets.parse().ok()?))
}

/// One worker thread: a [`Worker`] and its TUN queue.
struct WorkerThread {
    index: usize,
    worker: Worker,
    tun: TunDevice,
    vnet: bool,
    shared: Arc<Shared>,
    snapshot_seen: u64,
    links_seen: u64,
    /// This thread's copy of the link table (its sealers cache their epoch's key).
    links: LinkTable,
    to_main: SyncSender<FromWorker>,
    main: Waker,
    channel_drops: Arc<AtomicU64>,
    started: Instant,
    reported: Instant,
    woke_main: bool,
    status: Arc<Mutex<ThreadStatus>>,
    fail_after: Option<u64>,
    handed_to_main: u64,
    /// A copy of [`Shared::hairpin`], taken once per turn.
    hairpin: bool,
}

impl WorkerThread {
    fn run(mut self) {
        let reason = match self.serve() {
            Ok(()) => None,
            Err(error) => Some(format!("{error:#}")),
        };
        if let Some(why) = &reason {
            tracing::error!(worker = self.index, reason = %why, "dataplane worker stopped; its flows move to the other workers");
        }
        // Whatever it counted still reaches the node.
        self.report(true);
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped = Some(reason.unwrap_or_else(|| "node stopping".to_owned()));
        // Dropping `self` closes the TUN queue: the kernel moves its flows to the others.
    }

    fn serve(&mut self) -> Result<()> {
        self.worker
            .io
            .recv_packets(self.tun.fd(), Token(TOKEN_TUN_RECV))
            .context("arming the TUN queue's receive")?;
        let mut completions = Vec::with_capacity(uring_io::BATCH_SIZE * 4);
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            completions.clear();
            self.worker
                .io
                .submit_and_wait(&mut completions, Some(WAIT))
                .context("waiting for I/O")?;
            // Once per turn: a newer snapshot or link table.
            if let Some(snapshot) = self.shared.snapshot.newer(&mut self.snapshot_seen) {
                self.worker.forwarder.install(snapshot);
            }
            if let Some(links) = self.shared.links.newer(&mut self.links_seen) {
                self.links = (*links).clone();
            }
            self.hairpin = self.shared.hairpin.load(Ordering::Relaxed);
            for completion in completions.drain(..) {
                self.handle(completion)?;
            }
            if self.reported.elapsed() >= REPORT_EVERY {
                self.report(false);
            }
            // Idle pool buffers go back to the kernel once a second, as on worker 0.
            self.worker.trim_if_due(Instant::now());
            if std::mem::take(&mut self.woke_main) {
                let _ = self.main.wake();
            }
        }
    }

    fn handle(&mut self, completion: Completion) -> Result<()> {
        match (completion.kind, completion.token.0 & TOKEN_KIND_MASK) {
            (OpKind::RecvPacket, TOKEN_TUN_RECV) => {
                let armed = completion.armed;
                let range = completion.data_range();
                let (buf, completion_buf_without_data) = match range {
                    Some(_) => (completion.buf, None),
                    None => (None, completion.buf),
                };
                if let (Some(buf), Some(range)) = (buf, range) {
                    if self.fail_after.is_some_and(|n| self.worker.tun_reads >= n) {
                        self.worker.io.free(buf);
                        anyhow::bail!(
                            "test fault ({FAIL_WORKER_ENV}) after {} TUN packets",
                            self.worker.tun_reads
                        );
                    }
                    self.worker.tun_reads += 1;
                    self.on_tun_read(buf, range);
                } else if let Some(buf) = completion_buf_without_data {
                    self.worker.io.free(buf);
                }
                if !armed {
                    self.worker
                        .io
                        .recv_packets(self.tun.fd(), Token(TOKEN_TUN_RECV))
                        .context("re-arming the TUN queue's receive")?;
                }
            }
            (OpKind::Send, _) => {
                if completion.result.is_err() {
                    self.worker.offload_counters.udp_send_errors += 1;
                }
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
            _ => {
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
        }
        Ok(())
    }

    /// Hands something to the main loop; counts it when the channel is full.
    fn hand_to_main(&mut self, message: FromWorker) {
        match self.to_main.try_send(message) {
            Ok(()) => {
                self.woke_main = true;
                self.handed_to_main += 1;
            }
            Err(TrySendError::Full(_)) => {
                self.channel_drops.fetch_add(1, Ordering::Relaxed);
                self.worker.forwarder.count_drop(DropReason::LinkCongested);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn report(&mut self, last: bool) {
        self.reported = Instant::now();
        {
            let mut status = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            status.tun_reads = self.worker.tun_reads;
            status.handed_to_main = self.handed_to_main;
        }
        while let Some((forwarded, packet)) = self.worker.forwarder.poll_originated() {
            self.hand_to_main(FromWorker::Originated(forwarded, packet));
        }
        let report = std::mem::take(self.worker.forwarder.report_mut());
        let offload = std::mem::take(&mut self.worker.offload_counters);
        let _ = self.to_main.try_send(FromWorker::Report {
            index: self.index,
            report,
            offload,
        });
        self.woke_main = true;
        if last {
            let _ = self.main.wake();
        }
    }

    /// Routes what the TUN queue handed over in `buf[range]`; takes ownership of `buf`.
    fn on_tun_read(&mut self, buf: BufId, range: Range<usize>) {
        if !self.vnet {
            return self.forward(buf, range.clone(), range, None);
        }
        let header = VnetHeader::parse(
            self.worker
                .io
                .buf(&buf)
                .get(range.clone())
                .unwrap_or_default(),
        );
        let packet = range.start + VNET_HDR_LEN..range.end;
        match header {
            Ok(h) if h.gso_type == GsoType::None => {
                let completed = self
                    .worker
                    .io
                    .buf_mut(&buf)
                    .get_mut(packet.clone())
                    .map(|p| connectopus_offload::complete_checksum(&h, p));
                if let Some(Ok(())) = completed {
                    self.forward(buf, range, packet, None);
                } else {
                    self.worker.io.free(buf);
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                }
            }
            Ok(h) => {
                self.worker.offload_counters.tun_super_packets_read += 1;
                self.forward(buf, range, packet, Some(h));
            }
            Err(_) => {
                self.worker.io.free(buf);
                self.worker.forwarder.count_drop(DropReason::Malformed);
            }
        }
    }

    /// Forwards the packet (or super-packet with `header`) at `buf[packet]`, read as
    /// `buf[read]`; takes ownership of `buf`.
    fn forward(
        &mut self,
        buf: BufId,
        read: Range<usize>,
        packet: Range<usize>,
        header: Option<VnetHeader>,
    ) {
        let segment_len = match &header {
            None => None,
            Some(h) => {
                let len = self
                    .worker
                    .io
                    .buf(&buf)
                    .get(packet.clone())
                    .and_then(|p| Segments::new(h, p).ok())
                    .map(|s| s.max_segment_len());
                if len.is_none() {
                    self.worker.io.free(buf);
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                    return;
                }
                len
            }
        };
        if self.hairpin && self.is_local(&buf, packet.clone()) {
            // For one of the node's namespaces (or a loop): the main loop decides.
            return self.hand_read_to_main(buf, read, header.is_none());
        }
        let now = Time::from_duration(self.started.elapsed());
        let forwarded = match self.worker.io.buf_mut(&buf).get_mut(packet.clone()) {
            Some(p) => self
                .worker
                .forwarder
                .forward_packet(now, p, Ingress::Tun, segment_len),
            None => {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                Forwarded::Done
            }
        };
        match forwarded {
            Forwarded::Send(link) => match self.links.get(&link) {
                Some(LinkSend::Dtls { .. }) => match header {
                    None => return self.seal_one(link, buf, packet),
                    Some(h) => return self.seal_segments(link, buf, packet, h),
                },
                Some(LinkSend::Plain { .. }) => match header {
                    None => return self.send_plain(link, buf, packet),
                    Some(h) => return self.send_plain_segments(link, buf, packet, h),
                },
                None => {
                    let bytes = self
                        .worker
                        .io
                        .buf(&buf)
                        .get(packet)
                        .unwrap_or_default()
                        .to_vec();
                    self.hand_to_main(FromWorker::ToLink {
                        link,
                        packet: bytes,
                        header,
                    });
                }
            },
            Forwarded::Deliver => {
                return self.hand_read_to_main(buf, read, header.is_none());
            }
            Forwarded::Done => {}
        }
        self.worker.io.free(buf);
    }

    /// Whether the packet at `buf[packet]` is for an address this node delivers itself.
    fn is_local(&self, buf: &BufId, packet: Range<usize>) -> bool {
        let Some(p) = self.worker.io.buf(buf).get(packet) else {
            return false;
        };
        let destination = if p.first().is_some_and(|b| b >> 4 == 4) {
            connectopus_core::forward4::addresses4(p).map(|(_, d)| d.to_ipv6_mapped())
        } else {
            forward::addresses(p).map(|(_, d)| d)
        };
        destination.is_some_and(|d| {
            matches!(
                self.worker.forwarder.snapshot().table.routes.lookup(d),
                Some((_, forward::RouteTarget::Local))
            )
        })
    }

    /// Hands the TUN read at `buf[read]` to the main loop as it came (its checksum marked
    /// complete when `completed`); takes ownership of `buf`.
    fn hand_read_to_main(&mut self, buf: BufId, read: Range<usize>, completed: bool) {
        let mut bytes = self
            .worker
            .io
            .buf(&buf)
            .get(read)
            .unwrap_or_default()
            .to_vec();
        self.worker.io.free(buf);
        if self.vnet && completed {
            // Its checksum is complete now: the main loop must not complete it again.
            let _ = VnetHeader::NONE.write(&mut bytes);
        }
        self.hand_to_main(FromWorker::FromTun(bytes));
    }

    /// Seals the packet at `buf[packet]` into one record where it lies and sends it.
    fn seal_one(&mut self, link: LinkId, buf: BufId, packet: Range<usize>) {
        let Some(LinkSend::Dtls {
            socket,
            endpoint,
            remote,
            source,
            sealer,
        }) = self.links.get_mut(&link)
        else {
            self.worker.io.free(buf);
            return;
        };
        let io = &mut self.worker.io;
        let Some(record_start) = packet.start.checked_sub(sealer.payload_offset()) else {
            io.free(buf);
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let sealed = sealer.reserve(1).and_then(|r| {
            let record = io.buf_mut(&buf).get_mut(record_start..).unwrap_or_default();
            r.seal(0, record, packet.len())
        });
        match sealed {
            Ok(n) => io.send_to(
                socket.as_raw_fd(),
                Token(TOKEN_UDP_SEND | *endpoint as u64),
                uring_io::Transmit {
                    destination: *remote,
                    buf,
                    range: record_start..record_start + n,
                    segment_size: None,
                    source: *source,
                },
            ),
            Err(error) => {
                io.free(buf);
                tracing::debug!(%link, %error, worker = self.index, "dtls seal failed");
                self.worker.forwarder.count_drop(DropReason::LinkDown);
            }
        }
    }

    /// Cuts the super-packet at `src[range]` into segments, seals them as records into send
    /// buffers (one reservation of sequence numbers per send) and sends each buffer with one
    /// UDP GSO `sendmsg`; takes ownership of `src`.
    fn seal_segments(&mut self, link: LinkId, src: BufId, range: Range<usize>, header: VnetHeader) {
        let Some(LinkSend::Dtls {
            socket,
            endpoint,
            remote,
            source,
            sealer,
        }) = self.links.get_mut(&link)
        else {
            self.worker.io.free(src);
            return;
        };
        let Worker {
            io,
            forwarder,
            offloads,
            offload_counters,
            ..
        } = &mut self.worker;
        let (payload_offset, overhead) = (sealer.payload_offset(), sealer.overhead());
        let shape = io
            .buf(&src)
            .get(range.clone())
            .and_then(|p| Segments::new(&header, p).ok())
            .map(|s| (s.count(), s.max_segment_len()));
        let Some((count, max_len)) = shape else {
            io.free(src);
            forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let stride = max_len + overhead;
        let start = io.pool().headroom();
        let room = io.pool().buf_size() - start;
        let per_send = dtls::datagrams_per_send(room, stride, offloads.udp_gso.is_ok());
        let mut i = 0;
        while i < count {
            let batch = per_send.min(count - i);
            let Some(out) = io.alloc() else {
                forwarder.count_drop(DropReason::LinkCongested);
                break;
            };
            // One atomic add reserves the sequence numbers of the whole send.
            let reservation = match sealer.reserve(batch) {
                Ok(r) => r,
                Err(error) => {
                    io.free(out);
                    tracing::debug!(%link, %error, worker = self.index, "dtls reservation failed");
                    forwarder.count_drop(DropReason::LinkDown);
                    break;
                }
            };
            let mut sent = 0usize;
            let mut end = start;
            let mut failed = false;
            {
                let (from, to) = io.buf_pair(&src, &out);
                let segments = from
                    .get(range.clone())
                    .and_then(|p| Segments::new(&header, p).ok());
                if let Some(segments) = segments {
                    while sent < batch {
                        let slot = start + sent * stride;
                        let Some(record) = to.get_mut(slot..slot + stride) else {
                            break;
                        };
                        let Some(payload) = record.get_mut(payload_offset..) else {
                            break;
                        };
                        let Ok(n) = segments.write(i, payload) else {
                            failed = true;
                            break;
                        };
                        match reservation.seal(sent, record, n) {
                            Ok(len) => end = slot + len,
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                        i += 1;
                        sent += 1;
                    }
                } else {
                    failed = true;
                }
            }
            if sent == 0 {
                io.free(out);
                forwarder.count_drop(if failed {
                    DropReason::LinkDown
                } else {
                    DropReason::TooBig
                });
                break;
            }
            if sent > 1 {
                offload_counters.udp_gso_sends += 1;
            }
            io.send_to(
                socket.as_raw_fd(),
                Token(TOKEN_UDP_SEND | *endpoint as u64),
                uring_io::Transmit {
                    destination: *remote,
                    buf: out,
                    range: start..end,
                    segment_size: (sent > 1).then_some(stride as u16),
                    source: *source,
                },
            );
            if failed {
                forwarder.count_drop(DropReason::LinkDown);
                break;
            }
        }
        io.free(src);
    }

    /// Sends the packet at `buf[packet]` as one plaintext datagram where it lies.
    fn send_plain(&mut self, link: LinkId, buf: BufId, packet: Range<usize>) {
        let Some(LinkSend::Plain {
            socket,
            endpoint,
            remote,
            source,
        }) = self.links.get(&link)
        else {
            self.worker.io.free(buf);
            return;
        };
        self.worker.io.send_to(
            socket.as_raw_fd(),
            Token(TOKEN_UDP_SEND | *endpoint as u64),
            uring_io::Transmit {
                destination: *remote,
                buf,
                range: packet,
                segment_size: None,
                source: *source,
            },
        );
    }

    /// Cuts a super-packet into plaintext datagrams, back to back, one GSO send per buffer.
    fn send_plain_segments(
        &mut self,
        link: LinkId,
        src: BufId,
        range: Range<usize>,
        header: VnetHeader,
    ) {
        let Some(LinkSend::Plain {
            socket,
            endpoint,
            remote,
            source,
        }) = self.links.get(&link)
        else {
            self.worker.io.free(src);
            return;
        };
        let Worker {
            io,
            forwarder,
            offloads,
            offload_counters,
            ..
        } = &mut self.worker;
        let shape = io
            .buf(&src)
            .get(range.clone())
            .and_then(|p| Segments::new(&header, p).ok())
            .map(|s| (s.count(), s.max_segment_len()));
        let Some((count, stride)) = shape.filter(|(_, len)| *len > 0) else {
            io.free(src);
            forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let start = io.pool().headroom();
        let room = io.pool().buf_size() - start;
        let per_send = dtls::datagrams_per_send(room, stride, offloads.udp_gso.is_ok());
        let mut i = 0;
        while i < count {
            let Some(out) = io.alloc() else {
                forwarder.count_drop(DropReason::LinkCongested);
                break;
            };
            let mut sent = 0usize;
            let mut end = start;
            {
                let (from, to) = io.buf_pair(&src, &out);
                let segments = from
                    .get(range.clone())
                    .and_then(|p| Segments::new(&header, p).ok());
                if let Some(segments) = segments {
                    while i < count && sent < per_send {
                        let slot = start + sent * stride;
                        let Some(datagram) = to.get_mut(slot..slot + stride) else {
                            break;
                        };
                        let Ok(n) = segments.write(i, datagram) else {
                            break;
                        };
                        end = slot + n;
                        i += 1;
                        sent += 1;
                        if n < stride {
                            break;
                        }
                    }
                }
            }
            if sent == 0 {
                io.free(out);
                forwarder.count_drop(DropReason::Malformed);
                break;
            }
            if sent > 1 {
                offload_counters.udp_gso_sends += 1;
            }
            io.send_to(
                socket.as_raw_fd(),
                Token(TOKEN_UDP_SEND | *endpoint as u64),
                uring_io::Transmit {
                    destination: *remote,
                    buf: out,
                    range: start..end,
                    segment_size: (sent > 1).then_some(stride as u16),
                    source: *source,
                },
            );
        }
        io.free(src);
    }
}

impl Daemon {
    /// The links worker threads may send on themselves: established DTLS links on the record
    /// fast path, and plaintext UDP links.
    pub(super) fn link_table(&self) -> LinkTable {
        let mut table = LinkTable::new();
        for (id, l) in &self.links {
            let entry = match &l.transport {
                Transport::Dtls(d) => {
                    let (Some(sealer), Some(e)) = (
                        d.association.sealer(),
                        self.udp.get(d.endpoint).and_then(Option::as_ref),
                    ) else {
                        continue;
                    };
                    LinkSend::Dtls {
                        socket: e.socket.clone(),
                        endpoint: d.endpoint,
                        remote: l.remote,
                        source: d.local,
                        sealer,
                    }
                }
                Transport::PlainUdp(p) => {
                    let Some(e) = self.udp.get(p.endpoint).and_then(Option::as_ref) else {
                        continue;
                    };
                    LinkSend::Plain {
                        socket: e.socket.clone(),
                        endpoint: p.endpoint,
                        remote: l.remote,
                        source: p.local,
                    }
                }
                Transport::Tcp(_) => continue,
            };
            table.insert(*id, entry);
        }
        table
    }

    /// Takes what the worker threads handed over, and publishes the link table if it changed.
    pub(super) fn drain_workers(&mut self) {
        if !self.dataplane.has_threads() {
            return;
        }
        // Namespaces and `tun_devs` are devices of worker 0.
        self.dataplane
            .set_hairpin(self.tuns.indexed().nth(1).is_some());
        if self.dataplane.links_dirty {
            let table = self.link_table();
            self.dataplane.publish_links(table);
        }
        // Bounded per turn, so the workers cannot starve the control plane.
        for _ in 0..CHANNEL_BOUND {
            let Some(message) = self.dataplane.try_recv() else {
                break;
            };
            match message {
                FromWorker::ToLink {
                    link,
                    packet,
                    header,
                } => self.send_from_worker(link, &packet, header),
                FromWorker::FromTun(read) => self.route_from_worker_tun(&read),
                FromWorker::Originated(forwarded, packet) => match forwarded {
                    Forwarded::Deliver => self.write_tun(&packet),
                    Forwarded::Send(link) => self.send_packet(link, &packet),
                    Forwarded::Done => {}
                },
                FromWorker::Report {
                    index,
                    mut report,
                    offload,
                } => {
                    self.node.absorb_dataplane(&mut report);
                    if let Some(total) = self.dataplane.offload.get_mut(index - 1) {
                        total.add(&offload);
                    }
                }
            }
        }
    }

    /// Sends a packet (or the segments of a super-packet) a worker thread handed over.
    fn send_from_worker(&mut self, link: LinkId, packet: &[u8], header: Option<VnetHeader>) {
        let Some(header) = header else {
            return self.send_packet(link, packet);
        };
        let Ok(segments) = Segments::new(&header, packet) else {
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let mut segment = std::mem::take(&mut self.worker.scratch);
        for i in 0..segments.count() {
            segment.resize(segments.max_segment_len(), 0);
            match segments.write(i, &mut segment) {
                Ok(n) => {
                    segment.truncate(n);
                    self.send_packet(link, &segment);
                }
                Err(_) => {
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                    break;
                }
            }
        }
        self.worker.scratch = segment;
    }

    /// Routes a TUN read a worker thread handed over (a packet for another of the node's TUN
    /// devices) as if the main loop had read it from the node's own device.
    fn route_from_worker_tun(&mut self, read: &[u8]) {
        let Some(buf) = self.worker.io.alloc() else {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = self.worker.io.pool().headroom();
        let fits = self
            .worker
            .io
            .buf_mut(&buf)
            .get_mut(start..start + read.len())
            .map(|slot| slot.copy_from_slice(read))
            .is_some();
        if !fits {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::TooBig);
            return;
        }
        self.forward_from_tun(0, buf, start..start + read.len());
    }
}
