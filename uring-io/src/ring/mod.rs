//! The io_uring backend: ring setup and feature probe, and the driver's submission side (reaping
//! completions is in `completion.rs`; the provided-buffer ring it receives into in `buf_ring.rs`).
//!
//! # Ownership rule
//!
//! Every pointer handed to the kernel points into memory owned by [`PacketIo`](crate::PacketIo)
//! that neither moves nor is freed while an operation using it is in flight:
//!
//! - pool buffers: a buffer is in the pool's `Kernel` state from the moment an operation takes
//!   it (or it is posted to the buffer ring) until the completion that returns it has been
//!   reaped; in that state no `BufId` for it exists, so safe code cannot borrow it;
//! - `msghdr`/`iovec`/`sockaddr`/control space: one `MsgState` per operation slot, in a boxed
//!   slice reached only through a raw pointer (no Rust reference aliases what the kernel reads),
//!   rewritten only while its slot is not in flight;
//! - the provided-buffer ring and the wake counter: allocated at start, freed in `Drop`;
//! - the deadline timer's timespec (`deadline`): boxed in the driver, which outlives the ring.
//!
//! On drop, [`UringDriver::shutdown`] cancels everything in flight and reaps until no slot is in
//! flight; only then may the pool be unmapped. If that does not finish, the memory is leaked
//! instead of freed.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, opcode, register, squeue};

use crate::buf_ring::{BufRing, RX_ALWAYS, RX_FLOOR, RxTarget};
use crate::meta::{
    CONTROL_LEN, CmsgBuf, Completion, Errno, NAME_LEN, Op, OpKind, SockAddrBuf, Token,
    write_send_control,
};
use crate::pool::{BufId, BufferPool};
use crate::{Config, FallbackReason, MAX_RECEIVERS, Waker};

mod completion;
mod deadline;

use deadline::DeadlineTimer;

/// The buffer group id of the provided-buffer ring.
pub(crate) const BGID: u16 = 0;
/// The largest single registered buffer the kernel accepts.
const MAX_FIXED_BYTES: usize = 1 << 30;
/// Bytes of `io_uring_recvmsg_out` in front of the name in a multishot `recvmsg` buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// Where a multishot `recvmsg` payload starts, relative to the start of the posted area.
pub(crate) const RECVMSG_PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN;
/// Marks "no buffer" in a slot.
const NO_BUF: u16 = u16::MAX;
/// The `user_data` of cancel requests, whose completions carry nothing to report.
const CANCEL_UD: u64 = u64::MAX;

/// What an operation slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Queued in `pending`, no SQE yet.
    Pending,
    /// Submitted; its final CQE has not been reaped.
    InFlight,
    /// An armed receive that ended on `ENOBUFS`, waiting for buffers to be posted.
    Starved,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: OpKind,
    state: SlotState,
    token: Token,
    fd: RawFd,
    buf: u16,
    start: u32,
    len: u32,
    /// Set by `disarm`: the receive ends at its next final completion instead of re-arming.
    cancel: bool,
}

/// Kernel-visible per-slot state for `sendmsg`/`recvmsg`.
#[repr(C)]
struct MsgState {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: SockAddrBuf,
    control: CmsgBuf<CONTROL_LEN>,
}

/// Feature probe results that change how operations are built.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// The pool is registered as fixed buffer 0 (`ReadFixed`/`WriteFixed`).
    fixed: bool,
    /// `IORING_OP_READ_MULTISHOT` exists (Linux 6.7+); otherwise one-shot buffer-select reads.
    read_multishot: bool,
}

/// The io_uring driver; see the module docs for the ownership rule.
pub(crate) struct UringDriver {
    ring: IoUring,
    features: Features,
    slots: Box<[Slot]>,
    msgs: NonNull<MsgState>,
    n_msgs: usize,
    free_slots: Vec<u32>,
    pending: VecDeque<u32>,
    starved: Vec<u32>,
    cancels: Vec<u32>,
    /// Some slot has `cancel` set and is not free yet.
    cancelling: bool,
    n_in_flight: usize,
    n_armed: usize,
    buf_ring: BufRing,
    wake: Waker,
    wake_buf: NonNull<u64>,
    leak: bool,
    /// How long to poll for completions before sleeping, after a call that returned some.
    busy_poll: Duration,
    /// The last call returned completions: traffic is flowing, so poll before sleeping.
    busy: bool,
    /// How long a wait may sleep at most while packets arrived within the last
    /// [`IDLE_WAKE_WINDOW`](crate::IDLE_WAKE_WINDOW) (zero: no cap).
    idle_wake: Duration,
    /// When the last call returned a receive (a packet, a datagram or a stream read).
    received_at: Option<Instant>,
    /// The timer that ends a wait with a timeout (see `deadline`).
    deadline: DeadlineTimer,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("features", &self.features)
            .field("n_in_flight", &self.n_in_flight)
            .field("n_armed", &self.n_armed)
            .field("posted", &self.buf_ring.posted)
            .finish_non_exhaustive()
    }
}

impl UringDriver {
    /// Sets up a ring, probes the features the driver needs and registers the pool.
    pub(crate) fn new(
        config: &Config,
        pool: &mut BufferPool,
        wake: Waker,
    ) -> Result<Self, FallbackReason> {
        let n_slots = pool.capacity() + MAX_RECEIVERS + 1;
        let sq = config.ring_entries.clamp(8, 4096);
        let cq = (n_slots as u32 * 2).next_power_of_two().max(sq * 2);
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_clamp()
            .setup_coop_taskrun()
            // Tells a busy poll (see `poll_briefly`) when task work, such as a receive whose
            // socket became ready, waits for the next system call.
            .setup_taskrun_flag()
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).setup_clamp().build(sq))
            .map_err(FallbackReason::Setup)?;

        let params = ring.params();
        if !params.is_feature_ext_arg() {
            return Err(FallbackReason::MissingFeature("IORING_FEAT_EXT_ARG (5.11)"));
        }
        if !params.is_feature_nodrop() {
            return Err(FallbackReason::MissingFeature("IORING_FEAT_NODROP (5.5)"));
        }
        if !params.is_feature_fast_poll() {
            return Err(FallbackReason::MissingFeature(
                "IORING_FEAT_FAST_POLL (5.7)",
            ));
        }

        let mut probe = register::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(FallbackReason::Setup)?;
        let required: [(u8, &'static str); 6] = [
            (opcode::Read::CODE, "READ"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
            // Not used, but it arrived in 6.0 with multishot recvmsg and synchronous cancel,
            // which the probe cannot see directly.
            (
                opcode::SendZc::CODE,
                "SEND_ZC (stands for Linux 6.0: multishot recvmsg)",
            ),
        ];
        for (code, name) in required {
            if !probe.is_supported(code) {
                return Err(FallbackReason::MissingOpcode(name));
            }
        }
        let read_multishot = config.read_multishot && probe.is_supported(opcode::ReadMulti::CODE);

        // An on-demand pool gives idle pages back (`BufferPool::trim`), which pinned fixed
        // buffers would not survive: only a populated pool is registered.
        let fixed = config.fixed_buffers
            && !pool.is_on_demand()
            && probe.is_supported(opcode::ReadFixed::CODE)
            && probe.is_supported(opcode::WriteFixed::CODE)
            && pool.map_len() <= MAX_FIXED_BYTES
            && {
                let iov = libc::iovec {
                    iov_base: pool.base().cast(),
                    iov_len: pool.map_len(),
                };
                // SAFETY: the iovec covers exactly the pool mapping, which stays mapped until
                // after the ring is closed (`PacketIo` drops the driver before the pool, and
                // leaks the pool if the ring could not be quiesced).
                unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok()
            };

        let rx_max = config.rx_buffers.clamp(1, pool.capacity());
        let mut buf_ring = BufRing::new(&ring, rx_max, pool).map_err(FallbackReason::BufRing)?;
        // A populated pool is resident anyway: keep all posted. An on-demand one starts small
        // and grows with what the traffic takes (see `RxTarget`).
        buf_ring.target = RxTarget::new(
            if pool.is_on_demand() {
                RX_FLOOR.min(rx_max)
            } else {
                rx_max
            },
            rx_max,
        );
        buf_ring.budget = config.working_set.clamp(RX_ALWAYS, pool.capacity());
        buf_ring.top_up(pool);

        let empty = Slot {
            kind: OpKind::Read,
            state: SlotState::Free,
            token: Token(0),
            fd: -1,
            buf: NO_BUF,
            start: 0,
            len: 0,
            cancel: false,
        };
        let msgs: Box<[MsgState]> = (0..n_slots)
            .map(|_| MsgState {
                // SAFETY: `msghdr` and `iovec` are plain C structs; all-zero bytes are valid.
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                name: SockAddrBuf::zeroed(),
                control: CmsgBuf([0; CONTROL_LEN]),
            })
            .collect();
        let msgs = NonNull::from(Box::leak(msgs)).cast::<MsgState>();
        let wake_buf = NonNull::from(Box::leak(Box::new(0u64)));

        let mut driver = Self {
            ring,
            features: Features {
                fixed,
                read_multishot,
            },
            slots: vec![empty; n_slots].into_boxed_slice(),
            msgs,
            n_msgs: n_slots,
            // Popped from the end: low slot numbers first.
            free_slots: (0..n_slots as u32).rev().collect(),
            pending: VecDeque::with_capacity(n_slots),
            starved: Vec::with_capacity(MAX_RECEIVERS),
            cancels: Vec::with_capacity(MAX_RECEIVERS),
            cancelling: false,
            n_in_flight: 0,
            n_armed: 0,
            buf_ring,
            wake,
            wake_buf,
            leak: false,
            busy_poll: config.busy_poll,
            idle_wake: config.idle_wake,
            received_at: None,
            busy: false,
            deadline: DeadlineTimer::new(),
        };
        let wake_fd = driver.wake.raw_fd();
        driver.queue(Op {
            kind: OpKind::Wake,
            token: Token(0),
            fd: wake_fd,
            buf: NO_BUF,
            start: 0,
            len: 0,
        });
        Ok(driver)
    }

    /// Queues a read or write.
    pub(crate) fn queue_rw(&mut self, op: Op) {
        self.queue(op);
    }

    pub(crate) fn send(
        &mut self,
        pool: &BufferPool,
        op: Op,
        dest: &std::net::SocketAddr,
        segment_size: Option<u16>,
        source: Option<std::net::IpAddr>,
    ) {
        let (buf, start, len) = (op.buf, op.start, op.len);
        let i = self.queue(op);
        let m = self.msg(i);
        // SAFETY: slot `i` was just taken from the free list, so the kernel holds no pointer to
        // its `MsgState`; `m` points into the live `msgs` allocation. The buffer pointer stays
        // valid while the send is in flight (ownership rule in the module docs).
        unsafe {
            let namelen = (*m).name.set(dest);
            (*m).iov = libc::iovec {
                // SAFETY: `start` is within the buffer (checked by `PacketIo::send_to`).
                iov_base: pool.ptr(buf).add(start as usize).cast(),
                iov_len: len as usize,
            };
            let controllen = write_send_control(&mut (*m).control, segment_size, source, dest);
            let hdr = &raw mut (*m).hdr;
            *hdr = std::mem::zeroed();
            (*hdr).msg_name = (&raw mut (*m).name).cast();
            (*hdr).msg_namelen = namelen;
            (*hdr).msg_iov = &raw mut (*m).iov;
            (*hdr).msg_iovlen = 1;
            if controllen > 0 {
                (*hdr).msg_control = (&raw mut (*m).control).cast();
                (*hdr).msg_controllen = controllen as _;
            }
        }
    }

    pub(crate) fn arm(&mut self, kind: OpKind, fd: RawFd, token: Token) -> bool {
        if self.n_armed >= MAX_RECEIVERS {
            return false;
        }
        let i = self.queue(Op {
            kind,
            token,
            fd,
            buf: NO_BUF,
            start: 0,
            len: 0,
        });
        self.n_armed += 1;
        if kind == OpKind::RecvDatagram {
            let m = self.msg(i);
            // SAFETY: slot `i` is not in flight (just queued); `m` points into `msgs`. Only the
            // name and control lengths matter for a multishot recvmsg: the kernel writes name,
            // control and payload into the selected buffer.
            unsafe {
                let hdr = &raw mut (*m).hdr;
                *hdr = std::mem::zeroed();
                (*hdr).msg_name = (&raw mut (*m).name).cast();
                (*hdr).msg_namelen = NAME_LEN as libc::socklen_t;
                (*hdr).msg_control = (&raw mut (*m).control).cast();
                (*hdr).msg_controllen = CONTROL_LEN as _;
            }
        }
        true
    }

    /// Stops the armed receives that carry `token`; returns whether there was one.
    pub(crate) fn disarm(&mut self, token: Token) -> bool {
        let mut found = false;
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            let is_recv = matches!(s.kind, OpKind::RecvPacket | OpKind::RecvDatagram);
            if !is_recv || s.state == SlotState::Free || s.token != token || s.cancel {
                continue;
            }
            s.cancel = true;
            found = true;
            self.cancelling = true;
            if s.state == SlotState::InFlight {
                // Within capacity: at most one entry per armed receive.
                self.cancels.push(i as u32);
            }
        }
        found
    }

    /// Returns a buffer to the provided-buffer ring if it is below target, else to the pool.
    pub(crate) fn free(&mut self, pool: &mut BufferPool, buf: BufId) {
        // Out of the free list besides `buf` itself.
        let others = pool.capacity() - pool.n_free() - 1;
        if self.buf_ring.wants(others) {
            let idx = pool.give_to_kernel(buf);
            self.buf_ring.push(pool, idx);
        } else {
            pool.free(buf);
        }
    }

    /// Sets how many buffers stay posted for receives from what the traffic took since the
    /// last call (see `RxTarget::adapt`); called with the pool's trim.
    pub(crate) fn adapt_rx(&mut self) {
        self.buf_ring.target.adapt();
    }

    /// Returns how many buffers are posted for receives now, and the current target.
    pub(crate) fn rx_posted(&self) -> (usize, usize) {
        (self.buf_ring.posted, self.buf_ring.target.now)
    }

    pub(crate) fn submit_and_wait(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let start = out.len();
        let limit = crate::reap_limit(out);
        self.end_cancelled_idle(out);
        self.buf_ring.target.turn_taken = 0;
        if self.buf_ring.posted < self.buf_ring.target.now {
            self.buf_ring.top_up(pool);
        }
        if !self.starved.is_empty() && self.buf_ring.posted > 0 {
            for i in self.starved.drain(..) {
                self.slots[i as usize].state = SlotState::Pending;
                self.pending.push_back(i);
            }
        }
        self.reap(pool, out, limit);
        self.flush_pending()?;
        // The poll submits what is queued: when it found completions, nothing is left to do.
        let polled = out.len() == start && self.busy && !self.busy_poll.is_zero() && {
            self.poll_briefly(pool, out, limit)?;
            out.len() > start
        };
        let (timeout, capped) = self.cap_sleep(timeout);
        let res = if polled {
            Ok(0)
        } else if out.len() > start {
            self.ring.submit()
        } else if let Some(t) = timeout.filter(|t| capped || t.is_zero()) {
            // The idle wake-up's short sleeps are meant to wake the thread (a timer per wait);
            // a zero timeout only collects what is ready.
            let ts = Timespec::from(t);
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else if let Some(t) = timeout {
            if self.arm_deadline(t)? {
                self.ring.submit_and_wait(1)
            } else {
                self.ring.submit()
            }
        } else {
            self.ring.submit_and_wait(1)
        };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        self.reap(pool, out, limit);
        self.busy = out.len() > start;
        if !self.idle_wake.is_zero() && out[start..].iter().any(|c| c.kind.is_receive()) {
            self.received_at = Some(Instant::now());
        }
        Ok(())
    }

    /// The longest the coming wait may sleep: the caller's `timeout`, capped at `idle_wake`
    /// while packets arrived within [`IDLE_WAKE_WINDOW`](crate::IDLE_WAKE_WINDOW). A thread
    /// that wakes that often keeps its CPU from a long halt, which on virtual machines without
    /// guest halt polling makes the next wake-up of a sleeping thread cheap
    /// (docs/performance.md, "An idle round trip, hop by hop").
    /// Also says whether the cap applies (then the sleep is one of the idle wake-ups').
    fn cap_sleep(&self, timeout: Option<Duration>) -> (Option<Duration>, bool) {
        let recent = self
            .received_at
            .is_some_and(|at| at.elapsed() < crate::IDLE_WAKE_WINDOW);
        if self.idle_wake.is_zero() || !recent {
            return (timeout, false);
        }
        (
            Some(timeout.map_or(self.idle_wake, |t| t.min(self.idle_wake))),
            true,
        )
    }

    /// How many times the deadline timer was armed or moved since the start.
    pub(crate) fn deadline_timers_programmed(&self) -> u64 {
        self.deadline.programmed
    }

    /// Submits, then polls the completion queue for up to `busy_poll` without sleeping: after a
    /// turn with traffic, a reply or the next segment that comes within microseconds is caught
    /// without the wake-up of a sleeping thread. Receives complete as task work, which
    /// (`COOP_TASKRUN`) runs only at a system call: the ring's `IORING_SQ_TASKRUN` flag says
    /// when one is due, and only then does the poll enter the kernel. On cores shared with
    /// other work the poll holds a core others need (docs/performance.md, "Latency under
    /// load"), so it is off unless configured.
    fn poll_briefly(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Completion>,
        limit: usize,
    ) -> io::Result<()> {
        let start = out.len();
        if let Err(e) = self.ring.submit() {
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        let deadline = Instant::now() + self.busy_poll;
        loop {
            if self.ring.submission().taskrun() {
                // Runs the pending task work (the kernel enters with GETEVENTS for it).
                if let Err(e) = self.ring.submit() {
                    match e.raw_os_error() {
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                        _ => return Err(e),
                    }
                }
            }
            self.reap(pool, out, limit);
            if out.len() > start || Instant::now() >= deadline {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    /// Cancels everything in flight and reaps until nothing is; returns whether that worked.
    pub(crate) fn shutdown(&mut self, pool: &mut BufferPool) -> bool {
        while let Some(i) = self.pending.pop_front() {
            let s = self.slots[i as usize];
            if s.buf != NO_BUF {
                pool.free_kernel(s.buf);
            }
            self.release(i);
        }
        if self.n_in_flight > 0 {
            let _ = self.ring.submit();
            let _ = self
                .ring
                .submitter()
                .register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
        }
        for _ in 0..50 {
            if self.n_in_flight == 0 {
                return true;
            }
            let ts = Timespec::new().nsec(20_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let _ = self
                .ring
                .submitter()
                .register_sync_cancel(Some(Timespec::new().nsec(1_000_000)), CancelBuilder::any());
            self.reap_discard(pool);
        }
        self.leak = self.n_in_flight > 0;
        !self.leak
    }

    fn msg(&self, i: u32) -> *mut MsgState {
        debug_assert!((i as usize) < self.n_msgs);
        // SAFETY: `i < n_msgs`, the length of the `msgs` allocation.
        unsafe { self.msgs.as_ptr().add(i as usize) }
    }

    fn queue(&mut self, op: Op) -> u32 {
        // Cannot fail: there is one slot per pool buffer (each buffer-carrying operation holds a
        // buffer) plus one per armed receive plus the wake read.
        let i = self
            .free_slots
            .pop()
            .unwrap_or_else(|| unreachable!("operation slots exhausted"));
        self.slots[i as usize] = Slot {
            kind: op.kind,
            state: SlotState::Pending,
            token: op.token,
            fd: op.fd,
            buf: op.buf,
            start: op.start,
            len: op.len,
            cancel: false,
        };
        self.pending.push_back(i);
        i
    }

    fn release(&mut self, i: u32) {
        self.slots[i as usize].state = SlotState::Free;
        self.free_slots.push(i);
    }

    /// Ends cancelled receives that are not in flight (queued or starved), reporting each.
    fn end_cancelled_idle(&mut self, out: &mut Vec<Completion>) {
        if !self.cancelling {
            return;
        }
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.cancel && matches!(s.state, SlotState::Pending | SlotState::Starved) {
                let mut c = Completion::new(s.kind, s.token, s.fd);
                c.result = Err(Errno(libc::ECANCELED));
                out.push(c);
                let i = i as u32;
                self.pending.retain(|&p| p != i);
                self.starved.retain(|&p| p != i);
                self.n_armed -= 1;
                self.release(i);
            }
        }
        self.cancelling = self
            .slots
            .iter()
            .any(|s| s.cancel && s.state != SlotState::Free);
    }

    /// Moves cancel requests and queued operations into the submission queue, submitting
    /// whenever it fills up.
    fn flush_pending(&mut self) -> io::Result<()> {
        while let Some(&i) = self.cancels.last() {
            let entry = opcode::AsyncCancel::new(u64::from(i))
                .build()
                .user_data(CANCEL_UD);
            if !self.push_sqe(&entry)? {
                return Ok(());
            }
            self.cancels.pop();
        }
        while let Some(&i) = self.pending.front() {
            let entry = self.build_sqe(i);
            if !self.push_sqe(&entry)? {
                return Ok(());
            }
            self.pending.pop_front();
            self.slots[i as usize].state = SlotState::InFlight;
            self.n_in_flight += 1;
        }
        Ok(())
    }

    /// Pushes one SQE, submitting first when the queue is full; returns false when it is still
    /// full (retry at the next call).
    fn push_sqe(&mut self, entry: &squeue::Entry) -> io::Result<bool> {
        loop {
            // SAFETY: every pointer in `entry` follows the ownership rule in the module docs:
            // pool buffers are kernel-owned until reaped, `MsgState`, `wake_buf` and the
            // deadline's timespec live in allocations that outlive the ring's in-flight
            // operations.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(true);
            }
            match self.ring.submit() {
                Ok(_) if !self.ring.submission().is_full() => {}
                Ok(_) => return Ok(false),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR) => return Ok(false),
                    _ => return Err(e),
                },
            }
        }
    }

    fn build_sqe(&self, i: u32) -> squeue::Entry {
        let s = &self.slots[i as usize];
        let fd = Fd(s.fd);
        let pool_ptr = |start: usize| -> *mut u8 {
            // SAFETY: `start` lies within the buffer (checked when queued); `base + buf *
            // stride` is inside the pool mapping.
            unsafe {
                self.buf_ring
                    .pool_base
                    .add(s.buf as usize * self.buf_ring.stride + start)
            }
        };
        let entry = match s.kind {
            OpKind::Read => {
                let ptr = pool_ptr(self.buf_ring.headroom);
                let len = self.buf_ring.rx_len;
                if self.features.fixed {
                    opcode::ReadFixed::new(fd, ptr, len, 0)
                        .offset(u64::MAX)
                        .build()
                } else {
                    opcode::Read::new(fd, ptr, len).offset(u64::MAX).build()
                }
            }
            OpKind::Write => {
                let ptr = pool_ptr(s.start as usize);
                if self.features.fixed {
                    opcode::WriteFixed::new(fd, ptr, s.len, 0)
                        .offset(u64::MAX)
                        .build()
                } else {
                    opcode::Write::new(fd, ptr, s.len).offset(u64::MAX).build()
                }
            }
            OpKind::Send => opcode::SendMsg::new(fd, &raw const self.msg_ref(i).hdr).build(),
            OpKind::RecvPacket => {
                if self.features.read_multishot {
                    // The kernel rejects a length here (EINVAL): each read fills at most the
                    // selected buffer, whose length the ring entry carries.
                    opcode::ReadMulti::new(fd, 0, BGID).offset(u64::MAX).build()
                } else {
                    opcode::Read::new(fd, ptr::null_mut(), self.buf_ring.rx_len)
                        .offset(u64::MAX)
                        .buf_group(BGID)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT)
                }
            }
            OpKind::RecvDatagram => {
                opcode::RecvMsgMulti::new(fd, &raw const self.msg_ref(i).hdr, BGID).build()
            }
            OpKind::Wake => opcode::Read::new(fd, self.wake_buf.as_ptr().cast(), 8).build(),
        };
        entry.user_data(u64::from(i))
    }

    fn msg_ref(&self, i: u32) -> &MsgState {
        // SAFETY: called only while building the SQE for slot `i`, which is not in flight, so the
        // kernel is not writing to it; the reference is used only to take a field address.
        unsafe { &*self.msg(i) }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // The kernel must forget the buffer ring before its memory goes away.
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // SAFETY: both allocations came from `Box::leak` in `new` with these lengths and are
        // freed once; `shutdown` established that no operation is in flight.
        unsafe {
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(
                self.msgs.as_ptr(),
                self.n_msgs,
            )));
            drop(Box::from_raw(self.wake_buf.as_ptr()));
        }
        self.buf_ring.unmap();
    }
}
