//! Batched packet I/O for the Connectopus dataplane: io_uring with pooled buffers, and a
//! plain-syscall fallback behind the same interface.
//!
//! One [`PacketIo`] belongs to one dataplane thread. It owns a [`BufferPool`] (all packet memory,
//! mapped once at start) and queues operations that run in batches: reads and writes on any fd
//! (TUN, TCP), datagram sends with optional UDP GSO, and *armed receives* that keep delivering
//! packets (TUN) or datagrams with their source address (UDP) until disarmed by an error.
//! [`PacketIo::submit_and_wait`] submits everything queued with one system call, waits for at
//! least one completion or the timeout, and appends completions to a caller-provided `Vec`.
//! A [`Waker`] wakes it from other threads. Per-packet paths neither allocate nor lock.
//!
//! This crate does not parse packets, encrypt, or decide where packets go; it moves bytes.
//!
//! # Buffers and the zero-copy forward path
//!
//! Buffers are named by [`BufId`], which is not `Copy`: holding one means owning the buffer.
//! A receive hands a buffer out inside its [`Completion`]; the caller either
//! [`free`](PacketIo::free)s it or passes it to [`write`](PacketIo::write) or
//! [`send_to`](PacketIo::send_to), whose completion hands it back. Read TUN into a buffer,
//! prepend a header in the headroom, send the same buffer: no copy.
//! Each buffer is `[headroom | data | tailroom]` (see [`Config`]).
//!
//! Why both a provided-buffer ring and fixed buffers: receives use the ring, because an armed
//! multishot receive then holds no buffer until a packet arrives (with one buffer per posted
//! read, idle sockets and TUN queues would pin most of the pool) and one SQE serves many packets.
//! Explicit reads and writes name their buffer, so they use the pool registered as one fixed
//! buffer and skip per-operation page pinning. The same mapping serves both.
//!
//! # Kernel features used (io_uring backend)
//!
//! - `IORING_REGISTER_PBUF_RING` (5.19): a provided-buffer ring fed from the pool; armed receives
//!   take a buffer only when a packet arrives, and the caller's `free` re-posts it.
//! - Multishot `IORING_OP_RECVMSG` (6.0) for datagram receives (source address and `UDP_GRO`
//!   segment size are parsed from the buffer), `IORING_OP_READ_MULTISHOT` (6.7) for TUN reads;
//!   without the latter, one-shot buffer-select reads re-armed after each completion.
//!   A multishot receive that runs out of buffers ends with `ENOBUFS`; the driver reports that,
//!   then re-arms as soon as a buffer is posted again.
//! - `IORING_REGISTER_BUFFERS`: the whole pool as one fixed buffer for `READ_FIXED` /
//!   `WRITE_FIXED` (skipped when unavailable or larger than 1 GiB).
//! - `IORING_OP_SENDMSG` with a `UDP_SEGMENT` control message for GSO.
//! - `IORING_FEAT_EXT_ARG` (5.11) for the wait timeout, `IORING_FEAT_NODROP`, `FAST_POLL`,
//!   `IORING_SETUP_COOP_TASKRUN` when available, synchronous cancel (6.0) at shutdown.
//!
//! # How it degrades
//!
//! [`PacketIo::new`] probes io_uring. When setup fails (old kernel, `io_uring_disabled` sysctl,
//! seccomp in a container), an opcode or feature above is missing, or `CONNECTOPUS_DISABLE_URING=1`
//! is set, it uses the [`Backend::Syscall`] backend and records why
//! ([`PacketIo::fallback_reason`]) for the daemon to log. That backend uses `poll(2)`, `read`,
//! `write`, `recvmmsg` and `sendmmsg` (batches of up to [`BATCH_SIZE`]) on nonblocking fds.
//!
//! # Layout
//!
//! - `pool`: [`BufferPool`] and [`BufId`].
//! - `meta`: [`Completion`], [`Transmit`], [`Token`], [`Errno`]; socket-address and control-message
//!   helpers.
//! - `ring`: io_uring setup, probe, provided-buffer ring and driver (with the buffer ownership rule).
//! - `fallback`: the syscall driver.
//! - `wake`: [`Waker`].

mod buf_ring;
mod fallback;
mod meta;
mod pool;
mod ring;
mod wake;

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::Duration;

pub use meta::{Completion, Errno, OpKind, Token, Transmit};

use meta::Op;
pub use pool::{BufId, BufferPool, MAX_BUFFERS};
pub use wake::Waker;

/// Asks the kernel to report the local address each datagram of a UDP socket was sent to
/// ([`Completion::local`]): `IPV6_RECVPKTINFO` on an IPv6 socket (and `IP_PKTINFO` for the
/// IPv4-mapped traffic of a dual-stack one), `IP_PKTINFO` on an IPv4 socket.
///
/// # Errors
/// The kernel refuses the option.
pub fn enable_pktinfo(fd: RawFd, ipv6: bool) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let set = |level: libc::c_int, name: libc::c_int| {
        // SAFETY: the caller passes an open socket; the option value points at a live c_int
        // whose size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    if ipv6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
        // Only a dual-stack socket takes it; an IPv6-only one has no IPv4 traffic to report.
        let _ = set(libc::IPPROTO_IP, libc::IP_PKTINFO);
        Ok(())
    } else {
        set(libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

use fallback::SyscallDriver;
use ring::UringDriver;

/// The number of datagrams moved per `recvmmsg`/`sendmmsg` call in the syscall backend, and the
/// default number of completions reaped per call when the output has no spare capacity.
///
/// quinn-udp uses 32 for `recvmmsg`; 64 matches the send batch the io_uring tests showed to be
/// handled without loss on loopback (reference crates.md §6).
pub const BATCH_SIZE: usize = 64;

/// The most receives that can be armed on one [`PacketIo`] at a time.
pub const MAX_RECEIVERS: usize = 16;

/// The environment variable that forces the syscall backend when set to `1`.
pub const DISABLE_URING_ENV: &str = "CONNECTOPUS_DISABLE_URING";

/// The environment variable that overrides [`Config::busy_poll`], in microseconds (`0`: never
/// poll before sleeping).
pub const BUSY_POLL_ENV: &str = "CONNECTOPUS_BUSY_POLL_US";

/// The environment variable that overrides [`Config::idle_wake`], in microseconds (`0`: sleep
/// until something completes).
pub const IDLE_WAKE_ENV: &str = "CONNECTOPUS_IDLE_WAKE_US";

/// How long after the last received packet [`Config::idle_wake`] keeps capping sleeps.
pub const IDLE_WAKE_WINDOW: Duration = Duration::from_millis(20);

/// Names the I/O backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring with a provided-buffer ring and multishot receives.
    Uring,
    /// `poll(2)` with `read`/`write`/`recvmmsg`/`sendmmsg`.
    Syscall,
}

impl Backend {
    /// Returns a short lowercase name for status output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Syscall => "syscall",
        }
    }
}

/// Explains why the syscall backend was chosen.
#[derive(Debug, thiserror::Error)]
pub enum FallbackReason {
    /// Reports that the environment asked for the fallback.
    #[error("io_uring disabled by {DISABLE_URING_ENV}=1")]
    DisabledByEnv,
    /// Reports that the configuration asked for the fallback.
    #[error("io_uring disabled by configuration")]
    DisabledByConfig,
    /// Reports that the ring could not be set up.
    #[error(
        "io_uring setup failed (kernel older than 5.19, kernel.io_uring_disabled set, or blocked by seccomp)"
    )]
    Setup(#[source] io::Error),
    /// Reports a missing io_uring opcode.
    #[error("the kernel lacks io_uring opcode {0}; Linux 6.0 or newer is needed")]
    MissingOpcode(&'static str),
    /// Reports a missing io_uring feature.
    #[error("the kernel lacks io_uring feature {0}")]
    MissingFeature(&'static str),
    /// Reports that the provided-buffer ring could not be registered.
    #[error("registering the provided-buffer ring failed (needs Linux 5.19 or newer)")]
    BufRing(#[source] io::Error),
}

/// Describes a failure of a [`PacketIo`] call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reports an unusable pool geometry or a failed mapping.
    #[error("cannot set up the buffer pool")]
    Pool(#[source] io::Error),
    /// Reports a [`BUSY_POLL_ENV`] value that is not a number of microseconds.
    #[error("{BUSY_POLL_ENV}={0:?} is not a number of microseconds")]
    BadBusyPoll(String),
    /// Reports an [`IDLE_WAKE_ENV`] value that is not a number of microseconds.
    #[error("{IDLE_WAKE_ENV}={0:?} is not a number of microseconds")]
    BadIdleWake(String),
    /// Reports that the wake eventfd could not be created.
    #[error("cannot create the wake eventfd")]
    Wake(#[source] io::Error),
    /// Reports that too many receives are armed.
    #[error("at most {MAX_RECEIVERS} receives can be armed at once")]
    TooManyReceivers,
    /// Reports that an fd could not be switched to nonblocking mode.
    #[error("cannot make fd {fd} nonblocking")]
    Nonblocking {
        /// Names the fd.
        fd: RawFd,
        /// Gives the `fcntl` error.
        #[source]
        source: io::Error,
    },
    /// Reports that `io_uring_enter` or `poll` failed.
    #[error("waiting for completions failed")]
    Wait(#[source] io::Error),
}

/// Configures a [`PacketIo`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Sets the number of buffers in the pool (at most [`MAX_BUFFERS`]).
    pub buffers: usize,
    /// Sets the size of each buffer; 65536 and up lets UDP GRO coalesce full batches.
    pub buffer_size: usize,
    /// Sets the bytes kept free in front of received data, for headers written in place
    /// (13-byte DTLS record header, 10-byte virtio-net header, 2-byte TCP length prefix).
    pub headroom: usize,
    /// Sets the bytes at the end of each buffer that receives never fill (AEAD tag, padding).
    pub tailroom: usize,
    /// Sets how many buffers the io_uring backend keeps posted for armed receives; buffers freed
    /// while fewer are posted are re-posted, the rest go to the free list for [`PacketIo::alloc`].
    /// With an on-demand pool (`fixed_buffers` false) this is the most: the backend starts with
    /// 8 and follows the traffic (see [`PacketIo::trim`]).
    pub rx_buffers: usize,
    /// Sets the most buffers the io_uring backend lets be out of the free list (held by the
    /// application, attached to sends, posted for receives) and still posts more for receives:
    /// past it, receives keep only two posted buffers until others come back, so a burst that
    /// the sends cannot drain waits in the kernel's queues (TUN queue, socket buffers)
    /// instead of in the pool. Allocations never fail for it; it bounds the working set by
    /// slowing receives. The default, the pool's size, sets no bound.
    pub working_set: usize,
    /// Sets the io_uring submission queue size.
    pub ring_entries: u32,
    /// Forces the syscall backend (tests and operators who distrust io_uring).
    pub force_syscall: bool,
    /// Maps the whole pool up front and registers it with io_uring as one fixed buffer (faster
    /// explicit reads and writes, but every byte of the pool is resident). When false, pages are
    /// touched on demand and reads and writes name plain addresses: the choice for pools of
    /// 64 KiB buffers, where the worst case is far larger than the working set.
    pub fixed_buffers: bool,
    /// Sets how long [`PacketIo::submit_and_wait`] polls for completions without sleeping
    /// after a call that returned some (io_uring backend; zero, the default: never). Traffic
    /// that flows then costs no wake-up of a sleeping thread, but the poll holds a core: on
    /// loaded cores it made round trips slower. An idle driver never polls.
    pub busy_poll: Duration,
    /// Caps each sleep of the io_uring backend at this while packets arrived within the last
    /// [`IDLE_WAKE_WINDOW`] (zero, the default: a wait sleeps until something completes or the
    /// caller's timeout). On a virtual machine whose idle vCPUs halt and take the hypervisor
    /// 100 µs or more to resume (no guest halt polling), a thread that wakes this often keeps
    /// its vCPU warm, and the first wake-up of a round trip stays cheap; each wake costs a few
    /// microseconds of CPU. The syscall backend ignores it.
    pub idle_wake: Duration,
    /// Lets the io_uring backend use `IORING_OP_READ_MULTISHOT` for packet receives when the
    /// kernel has it; when off, it re-arms one-shot buffer-select reads (the pre-6.7 path).
    pub read_multishot: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            buffers: 2048,
            buffer_size: 2048,
            headroom: 64,
            tailroom: 32,
            rx_buffers: 1024,
            working_set: 2048,
            ring_entries: 256,
            force_syscall: false,
            fixed_buffers: true,
            busy_poll: Duration::ZERO,
            idle_wake: Duration::ZERO,
            read_multishot: true,
        }
    }
}

/// What a [`PacketIo`]'s pool holds, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Buffers in the pool.
    pub buffers: usize,
    /// Bytes each buffer takes in the mapping (its size, rounded up to the page size when the
    /// pool is on demand).
    pub buffer_bytes: usize,
    /// Buffers whose pages may be resident: all of a populated pool; of an on-demand one, those
    /// used since they were last released.
    pub touched: usize,
    /// Buffers on the free list.
    pub free: usize,
    /// Buffers posted for receives (io_uring; 0 on the syscall backend).
    pub rx_posted: usize,
    /// How many the backend keeps posted now (io_uring; 0 on the syscall backend).
    pub rx_target: usize,
    /// The most buffers out of the free list at once since the start
    /// ([`BufferPool::peak_in_use`]).
    pub peak_in_use: usize,
}

/// Drives batched packet I/O for one dataplane thread.
///
/// Operations queued with [`read`](Self::read), [`write`](Self::write),
/// [`send_to`](Self::send_to), [`recv_packets`](Self::recv_packets) and
/// [`recv_datagrams`](Self::recv_datagrams) start at the next
/// [`submit_and_wait`](Self::submit_and_wait). File descriptors are borrowed: each must stay open
/// while operations on it are queued, in flight or armed, and should be nonblocking (the syscall
/// backend sets `O_NONBLOCK` on fds it arms receives on).
#[derive(Debug)]
pub struct PacketIo {
    // Field order is drop order: the driver (ring) must go before the pool it points into.
    driver: Driver,
    pool: BufferPool,
    waker: Waker,
    backend: Backend,
    fallback_reason: Option<FallbackReason>,
    waiting: Waiting,
}

/// How a [`PacketIo`] waits for I/O, as configured (and overridden by [`BUSY_POLL_ENV`] and
/// [`IDLE_WAKE_ENV`]), for status output. Both are zero on the syscall backend, which ignores
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Waiting {
    /// [`Config::busy_poll`] in force.
    pub busy_poll: Duration,
    /// [`Config::idle_wake`] in force.
    pub idle_wake: Duration,
}

#[derive(Debug)]
enum Driver {
    Uring(Box<UringDriver>),
    Syscall(Box<SyscallDriver>),
}

// SAFETY: `UringDriver` holds raw pointers only into allocations it or the pool owns, and the
// ring may be driven from any thread (no IORING_SETUP_SINGLE_ISSUER). Moving the whole
// `PacketIo` moves all of that together; nothing is shared with another thread except the
// eventfd, which `Waker` reaches through an `Arc`.
unsafe impl Send for UringDriver {}

/// Reads a number of microseconds from the environment variable `name`: `None` when unset, the
/// value as given when it is not a number.
fn micros_from_env(name: &str) -> Result<Option<Duration>, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    match value.trim().parse::<u64>() {
        Ok(us) => Ok(Some(Duration::from_micros(us))),
        Err(_) => Err(value),
    }
}

impl PacketIo {
    /// Creates the pool and picks a backend: io_uring if the probe passes, else syscalls.
    ///
    /// # Errors
    ///
    /// Fails when the pool cannot be mapped or the wake eventfd cannot be created. An unusable
    /// io_uring is not an error: see [`fallback_reason`](Self::fallback_reason).
    pub fn new(mut config: Config) -> Result<Self, Error> {
        if let Some(us) = micros_from_env(BUSY_POLL_ENV).map_err(Error::BadBusyPoll)? {
            config.busy_poll = us;
        }
        if let Some(us) = micros_from_env(IDLE_WAKE_ENV).map_err(Error::BadIdleWake)? {
            config.idle_wake = us;
        }
        let mut pool = BufferPool::with_residency(
            config.buffers,
            config.buffer_size,
            config.headroom,
            config.tailroom,
            config.fixed_buffers,
        )
        .map_err(Error::Pool)?;
        let waker = Waker::new().map_err(Error::Wake)?;
        let disabled = if config.force_syscall {
            Some(FallbackReason::DisabledByConfig)
        } else if std::env::var_os(DISABLE_URING_ENV).is_some_and(|v| v == "1") {
            Some(FallbackReason::DisabledByEnv)
        } else {
            None
        };
        let uring = match disabled {
            Some(reason) => Err(reason),
            None => UringDriver::new(&config, &mut pool, waker.clone()),
        };
        let (driver, backend, fallback_reason) = match uring {
            Ok(d) => (Driver::Uring(Box::new(d)), Backend::Uring, None),
            Err(reason) => (
                Driver::Syscall(Box::new(SyscallDriver::new(&pool, waker.clone()))),
                Backend::Syscall,
                Some(reason),
            ),
        };
        let waiting = match backend {
            Backend::Uring => Waiting {
                busy_poll: config.busy_poll,
                idle_wake: config.idle_wake,
            },
            Backend::Syscall => Waiting::default(),
        };
        Ok(Self {
            driver,
            pool,
            waker,
            backend,
            fallback_reason,
            waiting,
        })
    }

    /// Returns how this driver waits: busy polling and idle wake-ups in force.
    pub fn waiting(&self) -> Waiting {
        self.waiting
    }

    /// Returns the backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Returns why the syscall backend was chosen, or `None` on io_uring.
    pub fn fallback_reason(&self) -> Option<&FallbackReason> {
        self.fallback_reason.as_ref()
    }

    /// Returns a handle that wakes this driver from another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Returns the buffer pool (geometry and free count).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Gives idle packet memory back; call it now and then (about once a second), never per
    /// packet. On an on-demand pool it releases the pages of the free buffers that were not
    /// used since the previous call ([`BufferPool::trim`]) and, on io_uring, sets how many
    /// buffers stay posted for receives from the most any turn took since then (at least 8, at
    /// most [`Config::rx_buffers`]; doubled at once whenever a receive runs out). Returns how
    /// many buffers it released.
    pub fn trim(&mut self) -> usize {
        if let Driver::Uring(d) = &mut self.driver {
            d.adapt_rx();
        }
        self.pool.trim()
    }

    /// Returns what the pool holds now: see [`PoolUsage`].
    pub fn usage(&self) -> PoolUsage {
        let (rx_posted, rx_target) = match &self.driver {
            Driver::Uring(d) => d.rx_posted(),
            Driver::Syscall(_) => (0, 0),
        };
        PoolUsage {
            buffers: self.pool.capacity(),
            buffer_bytes: self.pool.stride(),
            touched: self.pool.touched(),
            free: self.pool.n_free(),
            rx_posted,
            rx_target,
            peak_in_use: self.pool.peak_in_use(),
        }
    }

    /// Takes a free buffer, or returns `None` when the pool is exhausted.
    ///
    /// With io_uring, buffers posted for receives are not free; see [`Config::rx_buffers`].
    pub fn alloc(&mut self) -> Option<BufId> {
        self.pool.alloc()
    }

    /// Returns a buffer: to the receive ring when it is short of buffers, else to the pool.
    ///
    /// # Panics
    ///
    /// Panics when `buf` belongs to another pool.
    pub fn free(&mut self, buf: BufId) {
        match &mut self.driver {
            Driver::Uring(d) => d.free(&mut self.pool, buf),
            Driver::Syscall(d) => d.free(&mut self.pool, buf),
        }
    }

    /// Returns the whole buffer, headroom and tailroom included.
    ///
    /// # Panics
    ///
    /// Panics when `buf` belongs to another pool.
    pub fn buf(&self, buf: &BufId) -> &[u8] {
        self.pool.buf(buf)
    }

    /// Returns the whole buffer mutably, headroom and tailroom included.
    ///
    /// # Panics
    ///
    /// Panics when `buf` belongs to another pool.
    pub fn buf_mut(&mut self, buf: &BufId) -> &mut [u8] {
        self.pool.buf_mut(buf)
    }

    /// Returns `src` to read and `dst` to write at once (see [`BufferPool::buf_pair`]).
    ///
    /// # Panics
    ///
    /// Panics when either buffer belongs to another pool or both are the same buffer.
    pub fn buf_pair(&mut self, src: &BufId, dst: &BufId) -> (&[u8], &mut [u8]) {
        self.pool.buf_pair(src, dst)
    }

    /// Arms a packet receive on `fd` (a TUN queue): every packet read arrives as an
    /// [`OpKind::RecvPacket`] completion with a fresh buffer, data at the headroom.
    ///
    /// # Errors
    ///
    /// Fails when [`MAX_RECEIVERS`] receives are armed, or (syscall backend) when `fd` cannot
    /// be made nonblocking.
    pub fn recv_packets(&mut self, fd: RawFd, token: Token) -> Result<(), Error> {
        self.arm(OpKind::RecvPacket, fd, token)
    }

    /// Arms a datagram receive on `fd` (a UDP socket): every datagram arrives as an
    /// [`OpKind::RecvDatagram`] completion with its source address and a fresh buffer; with
    /// `UDP_GRO` enabled on the socket, coalesced datagrams carry their segment size.
    ///
    /// # Errors
    ///
    /// As for [`recv_packets`](Self::recv_packets).
    pub fn recv_datagrams(&mut self, fd: RawFd, token: Token) -> Result<(), Error> {
        self.arm(OpKind::RecvDatagram, fd, token)
    }

    /// Stops the armed receives queued with `token`; returns whether there was one.
    ///
    /// Each ends with a completion whose result is `ECANCELED` and whose `armed` is false;
    /// completions already on their way may arrive before it. Close the fd only after that
    /// completion: io_uring keeps the file open while a receive is armed on it.
    pub fn disarm(&mut self, token: Token) -> bool {
        match &mut self.driver {
            Driver::Uring(d) => d.disarm(token),
            Driver::Syscall(d) => d.disarm(token),
        }
    }

    /// Returns the largest datagram an armed datagram receive delivers whole.
    ///
    /// With io_uring, the kernel writes a header, the source address and control messages
    /// (108 bytes) in front of the payload in the same buffer.
    pub fn max_datagram_len(&self) -> usize {
        match self.backend {
            Backend::Uring => self
                .pool
                .rx_capacity()
                .saturating_sub(ring::RECVMSG_PAYLOAD_OFFSET),
            Backend::Syscall => self.pool.rx_capacity(),
        }
    }

    /// Queues one read from `fd` into `buf`, after the headroom.
    ///
    /// # Panics
    ///
    /// Panics when `buf` belongs to another pool.
    pub fn read(&mut self, fd: RawFd, token: Token, buf: BufId) {
        let op = Op {
            kind: OpKind::Read,
            token,
            fd,
            buf: self.pool.give_to_kernel(buf),
            start: 0,
            len: 0,
        };
        match &mut self.driver {
            Driver::Uring(d) => d.queue_rw(op),
            Driver::Syscall(d) => d.queue(op, None),
        }
    }

    /// Queues a write of `buf[range]` to `fd` (a TUN queue or a connected stream socket).
    ///
    /// The completion reports the bytes written; a stream socket may write fewer.
    ///
    /// # Panics
    ///
    /// Panics when `range` is not inside the buffer or `buf` belongs to another pool.
    pub fn write(&mut self, fd: RawFd, token: Token, buf: BufId, range: Range<usize>) {
        let (start, len) = self.check_range(&range);
        let op = Op {
            kind: OpKind::Write,
            token,
            fd,
            buf: self.pool.give_to_kernel(buf),
            start,
            len,
        };
        match &mut self.driver {
            Driver::Uring(d) => d.queue_rw(op),
            Driver::Syscall(d) => d.queue(op, None),
        }
    }

    /// Queues a datagram send on `fd` (a UDP socket), with UDP GSO when
    /// [`Transmit::segment_size`] is set.
    ///
    /// # Panics
    ///
    /// Panics when the range is not inside the buffer or the buffer belongs to another pool.
    pub fn send_to(&mut self, fd: RawFd, token: Token, transmit: Transmit) {
        let (start, len) = self.check_range(&transmit.range);
        let op = Op {
            kind: OpKind::Send,
            token,
            fd,
            buf: self.pool.give_to_kernel(transmit.buf),
            start,
            len,
        };
        let dest = &transmit.destination;
        match &mut self.driver {
            Driver::Uring(d) => {
                d.send(&self.pool, op, dest, transmit.segment_size, transmit.source)
            }
            Driver::Syscall(d) => d.queue(op, Some((dest, transmit.segment_size, transmit.source))),
        }
    }

    /// Submits all queued operations, waits until at least one completion is ready or `timeout`
    /// passes (`None`: no limit), and appends completions to `out`; returns how many it appended.
    ///
    /// It appends at most `out.capacity() - out.len()` completions (or [`BATCH_SIZE`] when that
    /// is zero), so reserving capacity once keeps this call allocation-free. Completions left
    /// over are returned by the next call without waiting. A timeout returns `Ok(0)`; so may a
    /// signal, and (io_uring) the timer an earlier call armed for a nearer deadline: the
    /// backend keeps one timer on the ring across waits rather than starting and cancelling
    /// one per wait, so a caller waiting for a deadline of its own loops until it passed.
    ///
    /// # Errors
    ///
    /// Fails when `io_uring_enter` or `poll` fails for a reason other than a timeout or signal.
    pub fn submit_and_wait(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let before = out.len();
        match &mut self.driver {
            Driver::Uring(d) => d.submit_and_wait(&mut self.pool, out, timeout),
            Driver::Syscall(d) => d.submit_and_wait(&mut self.pool, out, timeout),
        }
        .map_err(Error::Wait)?;
        Ok(out.len() - before)
    }

    /// How many times the io_uring backend armed or moved the timer that ends waits with a
    /// timeout (kept on the ring across waits: one per deadline that came nearer, not one per
    /// wait); 0 on the syscall backend.
    pub fn deadline_timers_programmed(&self) -> u64 {
        match &self.driver {
            Driver::Uring(d) => d.deadline_timers_programmed(),
            Driver::Syscall(_) => 0,
        }
    }

    fn arm(&mut self, kind: OpKind, fd: RawFd, token: Token) -> Result<(), Error> {
        let ok = match &mut self.driver {
            Driver::Uring(d) => d.arm(kind, fd, token),
            Driver::Syscall(d) => d
                .arm(kind, fd, token)
                .map_err(|source| Error::Nonblocking { fd, source })?,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::TooManyReceivers)
        }
    }

    fn check_range(&self, range: &Range<usize>) -> (u32, u32) {
        assert!(
            range.start <= range.end && range.end <= self.pool.buf_size(),
            "range {range:?} is outside the {}-byte buffer",
            self.pool.buf_size()
        );
        // Both fit: buf_size <= u32::MAX is checked by the pool.
        (range.start as u32, (range.end - range.start) as u32)
    }
}

impl Drop for PacketIo {
    fn drop(&mut self) {
        if let Driver::Uring(d) = &mut self.driver
            && !d.shutdown(&mut self.pool)
        {
            // The kernel may still write into the pool: never unmap it.
            self.pool.leak();
        }
    }
}

/// Returns the absolute length `out` may grow to in one call.
fn reap_limit(out: &Vec<Completion>) -> usize {
    let spare = out.capacity() - out.len();
    out.len() + if spare == 0 { BATCH_SIZE } else { spare }
}

/// Tells whether a receive error leaves the fd usable, so the receive stays armed.
fn is_transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOBUFS
            | libc::EINTR
            | libc::EAGAIN
            | libc::ENOMEM
            | libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EMSGSIZE
            | libc::ETIMEDOUT
    )
}
