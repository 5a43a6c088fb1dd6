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
//!
//! Where things are: `start` starts the threads (how many, their TUN queues, each pinned for
//! the CPU-local path); `messages` holds what the main loop and the threads hand each other;
//! `shared` what the control plane publishes to them and what each shows `status`; `thread` a
//! thread's loop; `send`, `transit`, `receive`, `receive_local`, `receive_plain` and `tcp` its
//! data paths; `main_side` the main loop's half of handing links over and taking them back.

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

impl Dataplane {
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

mod main_side;
mod messages;
mod receive;
mod receive_local;
mod receive_plain;
mod send;
mod shared;
mod start;
mod tcp;
mod thread;
mod transit;

pub(super) use messages::{
    EVERY_WORKER, FromWorker, HeldMessage, LinkReceive, LinkSend, LinkTable, OwnTcp, ToWorker,
};
pub(super) use shared::ThreadStatus;
use shared::{Door, Shared, Slot};
pub(crate) use start::FAIL_WORKER_ENV;
pub(super) use start::{TunQueue, open_queues, wanted};
use thread::WorkerThread;
