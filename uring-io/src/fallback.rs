//! The plain-syscall backend: `poll(2)` plus `read`/`write`/`recvmmsg`/`sendmmsg` on
//! nonblocking file descriptors, behind the same interface as the io_uring backend.
//!
//! Operations are queued and run in [`SyscallDriver::submit_and_wait`]: consecutive sends on one
//! socket go out in one `sendmmsg`, an armed datagram receive takes up to [`BATCH_SIZE`]
//! datagrams per `recvmmsg`, and an armed packet receive reads until `EAGAIN` or a batch is full.
//! An operation that meets `EAGAIN` stays queued (order per fd and direction is kept) and its fd
//! joins the `poll` set. Buffers taken for a receive return to the pool when the call delivers
//! fewer datagrams than buffers offered.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::meta::{
    CONTROL_LEN, CmsgBuf, Completion, Errno, NAME_LEN, Op, OpKind, SockAddrBuf, Token, parse_gro,
    parse_local, parse_sockaddr, write_send_control,
};
use crate::pool::{BufId, BufferPool};
use crate::{BATCH_SIZE, MAX_RECEIVERS, Waker, is_transient};

#[derive(Clone, Copy)]
struct PendingOp {
    kind: OpKind,
    token: Token,
    fd: RawFd,
    buf: u16,
    start: u32,
    len: u32,
    dest: SockAddrBuf,
    dest_len: libc::socklen_t,
    segment_size: Option<u16>,
    source: Option<std::net::IpAddr>,
    destination: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    kind: OpKind,
    fd: RawFd,
    token: Token,
    starved: bool,
    dead: bool,
    cancelled: bool,
}

#[derive(Debug, Clone, Copy)]
enum PollSrc {
    Wake,
    Armed(usize),
    Blocked,
}

/// Per-call scratch space for `recvmmsg`/`sendmmsg`; pointers are set right before each call.
struct Scratch {
    hdrs: [libc::mmsghdr; BATCH_SIZE],
    iovs: [libc::iovec; BATCH_SIZE],
    names: [SockAddrBuf; BATCH_SIZE],
    controls: [CmsgBuf<CONTROL_LEN>; BATCH_SIZE],
    bufs: [u16; BATCH_SIZE],
    ops: [Option<PendingOp>; BATCH_SIZE],
}

/// The fallback driver.
pub(crate) struct SyscallDriver {
    pending: VecDeque<PendingOp>,
    armed: Vec<Armed>,
    wake: Waker,
    pollfds: Vec<libc::pollfd>,
    poll_src: Vec<PollSrc>,
    blocked: Vec<(RawFd, i16)>,
    scratch: Box<Scratch>,
}

impl std::fmt::Debug for SyscallDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyscallDriver")
            .field("pending", &self.pending.len())
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl SyscallDriver {
    pub(crate) fn new(pool: &BufferPool, wake: Waker) -> Self {
        let n_poll = 1 + MAX_RECEIVERS + pool.capacity();
        Self {
            pending: VecDeque::with_capacity(pool.capacity()),
            armed: Vec::with_capacity(MAX_RECEIVERS),
            wake,
            pollfds: Vec::with_capacity(n_poll),
            poll_src: Vec::with_capacity(n_poll),
            blocked: Vec::with_capacity(pool.capacity()),
            scratch: Box::new(Scratch {
                // SAFETY: `mmsghdr` and `iovec` are plain C structs; all-zero bytes are valid.
                hdrs: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iovs: unsafe { std::mem::zeroed() },
                names: [SockAddrBuf::zeroed(); BATCH_SIZE],
                controls: [CmsgBuf([0; CONTROL_LEN]); BATCH_SIZE],
                bufs: [0; BATCH_SIZE],
                ops: [None; BATCH_SIZE],
            }),
        }
    }

    pub(crate) fn queue(
        &mut self,
        op: Op,
        dest: Option<(&SocketAddr, Option<u16>, Option<std::net::IpAddr>)>,
    ) {
        let mut op = PendingOp {
            kind: op.kind,
            token: op.token,
            fd: op.fd,
            buf: op.buf,
            start: op.start,
            len: op.len,
            dest: SockAddrBuf::zeroed(),
            dest_len: 0,
            segment_size: None,
            source: None,
            destination: None,
        };
        if let Some((addr, seg, source)) = dest {
            op.dest_len = op.dest.set(addr);
            op.segment_size = seg;
            op.source = source;
            op.destination = Some(*addr);
        }
        // Within capacity: every queued operation holds one of the pool's buffers.
        self.pending.push_back(op);
    }

    pub(crate) fn arm(&mut self, kind: OpKind, fd: RawFd, token: Token) -> io::Result<bool> {
        if self.armed.len() >= MAX_RECEIVERS {
            return Ok(false);
        }
        set_nonblocking(fd)?;
        self.armed.push(Armed {
            kind,
            fd,
            token,
            starved: false,
            dead: false,
            cancelled: false,
        });
        Ok(true)
    }

    pub(crate) fn disarm(&mut self, token: Token) -> bool {
        let mut found = false;
        for a in self
            .armed
            .iter_mut()
            .filter(|a| a.token == token && !a.dead)
        {
            a.cancelled = true;
            found = true;
        }
        found
    }

    pub(crate) fn free(&mut self, pool: &mut BufferPool, buf: BufId) {
        pool.free(buf);
        for a in &mut self.armed {
            a.starved = false;
        }
    }

    pub(crate) fn submit_and_wait(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let start = out.len();
        let limit = crate::reap_limit(out);
        for a in self.armed.iter_mut().filter(|a| a.cancelled) {
            let mut c = Completion::new(a.kind, a.token, a.fd);
            c.result = Err(Errno(libc::ECANCELED));
            out.push(c);
            a.dead = true;
        }
        self.armed.retain(|a| !a.dead);
        self.run_pending(pool, out, limit);

        self.pollfds.clear();
        self.poll_src.clear();
        self.add_poll(self.wake.raw_fd(), libc::POLLIN, PollSrc::Wake);
        for i in 0..self.armed.len() {
            let a = self.armed[i];
            if !a.starved && !a.dead {
                self.add_poll(a.fd, libc::POLLIN, PollSrc::Armed(i));
            }
        }
        for i in 0..self.blocked.len() {
            let (fd, ev) = self.blocked[i];
            self.add_poll(fd, ev, PollSrc::Blocked);
        }
        let timeout_ms = if out.len() > start {
            0
        } else {
            match timeout {
                Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
                None => -1,
            }
        };
        // SAFETY: `pollfds` is a live, initialized array of `len` entries.
        let n = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(err);
        }
        if n == 0 {
            return Ok(());
        }
        let mut unblocked = false;
        for p in 0..self.pollfds.len() {
            if self.pollfds[p].revents == 0 {
                continue;
            }
            match self.poll_src[p] {
                PollSrc::Wake => {
                    self.wake.drain();
                    out.push(Completion::new(OpKind::Wake, Token(0), -1));
                }
                PollSrc::Armed(i) => {
                    if out.len() < limit {
                        match self.armed[i].kind {
                            OpKind::RecvDatagram => self.recv_datagrams(pool, i, out, limit),
                            _ => self.recv_packets(pool, i, out, limit),
                        }
                    }
                }
                PollSrc::Blocked => unblocked = true,
            }
        }
        self.armed.retain(|a| !a.dead);
        if unblocked {
            self.run_pending(pool, out, limit);
        }
        Ok(())
    }

    fn add_poll(&mut self, fd: RawFd, events: i16, src: PollSrc) {
        self.pollfds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
        self.poll_src.push(src);
    }

    /// Runs queued operations once each, in order, batching consecutive sends on one socket.
    fn run_pending(&mut self, pool: &mut BufferPool, out: &mut Vec<Completion>, limit: usize) {
        self.blocked.clear();
        let mut remaining = self.pending.len();
        while remaining > 0 && out.len() < limit {
            let Some(op) = self.pending.pop_front() else {
                break;
            };
            remaining -= 1;
            let dir = if op.kind == OpKind::Read {
                libc::POLLIN
            } else {
                libc::POLLOUT
            };
            if self.blocked.contains(&(op.fd, dir)) {
                self.pending.push_back(op);
                continue;
            }
            match op.kind {
                OpKind::Send => {
                    let mut k = 1;
                    self.scratch.ops[0] = Some(op);
                    while k < BATCH_SIZE && remaining > 0 && out.len() + k < limit {
                        match self.pending.front() {
                            Some(n) if n.kind == OpKind::Send && n.fd == op.fd => {
                                self.scratch.ops[k] = self.pending.pop_front();
                                remaining -= 1;
                                k += 1;
                            }
                            _ => break,
                        }
                    }
                    let retry = self.send_batch(pool, k, out);
                    // Unsent tail goes back to the front, in order, to be retried next.
                    for j in (k - retry..k).rev() {
                        if let Some(op) = self.scratch.ops[j].take() {
                            self.pending.push_front(op);
                            remaining += 1;
                        }
                    }
                    if retry == k {
                        // Nothing went out: EAGAIN. Move the batch to the back, keep fd order.
                        for _ in 0..k {
                            if let Some(op) = self.pending.pop_front() {
                                self.pending.push_back(op);
                                remaining -= 1;
                            }
                        }
                        self.blocked.push((op.fd, dir));
                    }
                }
                OpKind::Write | OpKind::Read => {
                    let (ptr, len) = if op.kind == OpKind::Read {
                        (
                            pool.ptr(op.buf).wrapping_add(pool.headroom()),
                            pool.rx_capacity(),
                        )
                    } else {
                        (
                            pool.ptr(op.buf).wrapping_add(op.start as usize),
                            op.len as usize,
                        )
                    };
                    // SAFETY: the buffer is kernel-owned (no Rust reference to it exists) and
                    // `ptr..ptr+len` lies inside it (checked when queued).
                    let r = unsafe {
                        if op.kind == OpKind::Read {
                            libc::read(op.fd, ptr.cast(), len)
                        } else {
                            libc::write(op.fd, ptr.cast(), len)
                        }
                    };
                    let result = if r < 0 {
                        Err(last_errno())
                    } else {
                        Ok(r as usize)
                    };
                    if result == Err(Errno(libc::EAGAIN)) {
                        self.pending.push_back(op);
                        self.blocked.push((op.fd, dir));
                        continue;
                    }
                    let mut c = Completion::new(op.kind, op.token, op.fd);
                    c.buf = Some(pool.take_from_kernel(op.buf));
                    c.result = result;
                    c.offset = if op.kind == OpKind::Read {
                        pool.headroom()
                    } else {
                        op.start as usize
                    };
                    out.push(c);
                }
                OpKind::RecvPacket | OpKind::RecvDatagram | OpKind::Wake => {}
            }
        }
    }

    /// Sends `scratch.ops[..k]` with one `sendmmsg`; returns how many were not consumed.
    fn send_batch(&mut self, pool: &mut BufferPool, k: usize, out: &mut Vec<Completion>) -> usize {
        let s = &mut *self.scratch;
        let mut fd = -1;
        for j in 0..k {
            let Some(op) = s.ops[j].as_ref() else {
                return k;
            };
            fd = op.fd;
            s.names[j] = op.dest;
            s.iovs[j] = libc::iovec {
                iov_base: pool.ptr(op.buf).wrapping_add(op.start as usize).cast(),
                iov_len: op.len as usize,
            };
            // SAFETY: `mmsghdr` is a plain C struct; all-zero bytes are valid.
            s.hdrs[j] = unsafe { std::mem::zeroed() };
            let h = &mut s.hdrs[j].msg_hdr;
            h.msg_name = (&raw mut s.names[j]).cast();
            h.msg_namelen = op.dest_len;
            h.msg_iov = &raw mut s.iovs[j];
            h.msg_iovlen = 1;
            let n = match &op.destination {
                Some(d) => write_send_control(&mut s.controls[j], op.segment_size, op.source, d),
                None => 0,
            };
            if n > 0 {
                h.msg_control = (&raw mut s.controls[j]).cast();
                h.msg_controllen = n as _;
            }
        }
        // SAFETY: `hdrs[..k]` are initialized and point into `scratch` (names, iovs, controls)
        // and into kernel-owned pool buffers, all alive for the duration of the call.
        let r = unsafe { libc::sendmmsg(fd, s.hdrs.as_mut_ptr(), k as u32, libc::MSG_DONTWAIT) };
        let (sent, first_err) = if r < 0 {
            let e = last_errno();
            if e == Errno(libc::EAGAIN) {
                return k;
            }
            (0, Some(e))
        } else {
            (r as usize, None)
        };
        for j in 0..sent {
            if let Some(op) = s.ops[j].take() {
                let mut c = Completion::new(OpKind::Send, op.token, op.fd);
                c.buf = Some(pool.take_from_kernel(op.buf));
                c.result = Ok(s.hdrs[j].msg_len as usize);
                c.offset = op.start as usize;
                out.push(c);
            }
        }
        if let Some(e) = first_err {
            // The first datagram failed for good: report it, retry the rest.
            if let Some(op) = s.ops[0].take() {
                let mut c = Completion::new(OpKind::Send, op.token, op.fd);
                c.buf = Some(pool.take_from_kernel(op.buf));
                c.result = Err(e);
                c.offset = op.start as usize;
                out.push(c);
            }
            return k - 1;
        }
        k - sent
    }

    fn recv_datagrams(
        &mut self,
        pool: &mut BufferPool,
        i: usize,
        out: &mut Vec<Completion>,
        limit: usize,
    ) {
        let a = self.armed[i];
        let Some(n) = self.take_rx_buffers(pool, i, out, limit) else {
            return;
        };
        let s = &mut *self.scratch;
        for j in 0..n {
            s.iovs[j] = libc::iovec {
                iov_base: pool.ptr(s.bufs[j]).wrapping_add(pool.headroom()).cast(),
                iov_len: pool.rx_capacity(),
            };
            // SAFETY: `mmsghdr` is a plain C struct; all-zero bytes are valid.
            s.hdrs[j] = unsafe { std::mem::zeroed() };
            let h = &mut s.hdrs[j].msg_hdr;
            h.msg_name = (&raw mut s.names[j]).cast();
            h.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_iov = &raw mut s.iovs[j];
            h.msg_iovlen = 1;
            h.msg_control = (&raw mut s.controls[j]).cast();
            h.msg_controllen = CONTROL_LEN as _;
        }
        // SAFETY: `hdrs[..n]` point into `scratch` and into the kernel-owned buffers taken above,
        // all alive for the duration of the call.
        let r = unsafe {
            libc::recvmmsg(
                a.fd,
                s.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let (got, err) = if r < 0 {
            let e = last_errno();
            (0, (e != Errno(libc::EAGAIN)).then_some(e))
        } else {
            (r as usize, None)
        };
        for j in 0..n {
            let idx = s.bufs[j];
            if j >= got {
                pool.free_kernel(idx);
                continue;
            }
            let h = &s.hdrs[j];
            let mut c = Completion::new(a.kind, a.token, a.fd);
            c.armed = true;
            c.buf = Some(pool.take_from_kernel(idx));
            c.offset = pool.headroom();
            c.result = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                Err(Errno(libc::EMSGSIZE))
            } else {
                Ok(h.msg_len as usize)
            };
            // SAFETY: the kernel wrote `msg_namelen` (<= NAME_LEN, the space offered) bytes.
            let name = unsafe {
                std::slice::from_raw_parts(
                    (&raw const s.names[j]).cast::<u8>(),
                    (h.msg_hdr.msg_namelen as usize).min(NAME_LEN),
                )
            };
            c.src = parse_sockaddr(name);
            #[allow(
                clippy::unnecessary_cast,
                reason = "msg_controllen is not usize on every libc"
            )]
            let clen = (h.msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
            c.segment_size = parse_gro(&s.controls[j].0[..clen]);
            c.local = parse_local(&s.controls[j].0[..clen]);
            out.push(c);
        }
        if let Some(e) = err {
            self.recv_error(i, e, out);
        }
    }

    fn recv_packets(
        &mut self,
        pool: &mut BufferPool,
        i: usize,
        out: &mut Vec<Completion>,
        limit: usize,
    ) {
        let a = self.armed[i];
        let Some(n) = self.take_rx_buffers(pool, i, out, limit) else {
            return;
        };
        let mut j = 0;
        while j < n {
            let idx = self.scratch.bufs[j];
            let ptr = pool.ptr(idx).wrapping_add(pool.headroom());
            // SAFETY: the buffer is kernel-owned (no Rust reference exists) and `rx_capacity`
            // bytes after the headroom lie inside it.
            let r = unsafe { libc::read(a.fd, ptr.cast(), pool.rx_capacity()) };
            if r <= 0 {
                if r == 0 {
                    let mut c = Completion::new(a.kind, a.token, a.fd);
                    c.offset = pool.headroom();
                    out.push(c);
                    self.armed[i].dead = true;
                } else {
                    let e = last_errno();
                    if e != Errno(libc::EAGAIN) {
                        self.recv_error(i, e, out);
                    }
                }
                break;
            }
            let mut c = Completion::new(a.kind, a.token, a.fd);
            c.armed = true;
            c.buf = Some(pool.take_from_kernel(idx));
            c.offset = pool.headroom();
            c.result = Ok(r as usize);
            out.push(c);
            j += 1;
        }
        for k in j..n {
            pool.free_kernel(self.scratch.bufs[k]);
        }
    }

    /// Takes up to a batch of buffers for armed receive `i`; reports `ENOBUFS` when none is free.
    fn take_rx_buffers(
        &mut self,
        pool: &mut BufferPool,
        i: usize,
        out: &mut Vec<Completion>,
        limit: usize,
    ) -> Option<usize> {
        let want = BATCH_SIZE.min(limit.saturating_sub(out.len()));
        let mut n = 0;
        while n < want {
            let Some(idx) = pool.take_for_kernel() else {
                break;
            };
            self.scratch.bufs[n] = idx;
            n += 1;
        }
        if n == 0 && want > 0 {
            let a = &mut self.armed[i];
            a.starved = true;
            let mut c = Completion::new(a.kind, a.token, a.fd);
            c.result = Err(Errno::NOBUFS);
            c.armed = true;
            out.push(c);
            return None;
        }
        (n > 0).then_some(n)
    }

    fn recv_error(&mut self, i: usize, e: Errno, out: &mut Vec<Completion>) {
        let a = &mut self.armed[i];
        let mut c = Completion::new(a.kind, a.token, a.fd);
        c.result = Err(e);
        c.armed = is_transient(e.0);
        if !c.armed {
            a.dead = true;
        }
        out.push(c);
    }
}

// SAFETY: the raw pointers in `scratch` are only meaningful during a single syscall made by the
// owning thread and point into memory owned by the driver or its pool; nothing is shared.
unsafe impl Send for SyscallDriver {}

fn last_errno() -> Errno {
    Errno(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Sets `O_NONBLOCK` on `fd` (the syscall backend must never block outside `poll`).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory preconditions; errors are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
