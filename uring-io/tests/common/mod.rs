//! Helpers shared by the integration tests: backend parametrization, drive loops, netns + TUN.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::unwrap_used, reason = "tests")]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use uring_io::{Backend, Completion, Config, OpKind, PacketIo};

/// Both backends, each test runs against every entry.
pub const BACKENDS: [Backend; 2] = [Backend::Uring, Backend::Syscall];

/// Creates a driver on `backend`, or `None` (with a message) when io_uring is unavailable here.
pub fn new_io(backend: Backend, mut config: Config) -> Option<PacketIo> {
    config.force_syscall = backend == Backend::Syscall;
    let io = PacketIo::new(config).unwrap();
    if io.backend() != backend {
        let reason = io.fallback_reason().map(|r| format!("{r:#}"));
        eprintln!("SKIP {backend:?}: io_uring unavailable: {reason:?}");
        return None;
    }
    Some(io)
}

/// Drives `io` until `want` completions of `kind` arrived or 5 s passed; returns them. Other
/// completions are passed to `other`.
pub fn collect(
    io: &mut PacketIo,
    kind: OpKind,
    want: usize,
    mut other: impl FnMut(&mut PacketIo, Completion),
) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut out = Vec::with_capacity(256);
    while got.len() < want && Instant::now() < deadline {
        io.submit_and_wait(&mut out, Some(Duration::from_millis(50)))
            .unwrap();
        for c in out.drain(..) {
            if c.kind == kind {
                got.push(c);
            } else {
                other(io, c);
            }
        }
    }
    got
}

/// Copies the data of a successful completion and returns its buffer to the pool.
pub fn take_data(io: &mut PacketIo, c: Completion) -> Vec<u8> {
    let range = c
        .data_range()
        .unwrap_or_else(|| panic!("{:?} failed: {:?}", c.kind, c.result));
    let buf = c.buf.unwrap();
    let data = io.buf(&buf)[range].to_vec();
    io.free(buf);
    data
}

/// Fails the test on an unexpected completion, freeing its buffer otherwise.
pub fn free_other(io: &mut PacketIo, c: Completion) {
    if let Some(b) = c.buf {
        io.free(b);
    }
}

/// A payload for datagram `i` of a batch: a 4-byte index then a pattern; sizes vary.
pub fn payload(i: usize) -> Vec<u8> {
    let len = 4 + (i * 37) % 1200;
    let mut p = (i as u32).to_be_bytes().to_vec();
    p.extend((0..len - 4).map(|j| (i + j) as u8));
    p
}

/// Tells whether the tests run as root; prints why a test is skipped otherwise.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (TUN device and network namespace)");
        return false;
    }
    true
}

/// Runs `f` on a fresh thread inside a new network namespace; the namespace, and every device
/// and socket in it, disappears when the thread ends, pass or fail.
pub fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    let h = std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        f();
    });
    if let Err(p) = h.join() {
        std::panic::resume_unwind(p);
    }
}

/// Runs `ip` with `args` in the calling thread's network namespace.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TUN device (IFF_TUN | IFF_NO_PI, nonblocking); closing the fd deletes it.
pub struct Tun {
    pub fd: OwnedFd,
    pub name: String,
}

impl Tun {
    /// Creates a TUN device with a unique name in the calling thread's namespace, gives it
    /// `addr` (an fd00::/8 prefix) and brings it up.
    pub fn create(addr: &str) -> Tun {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cxt{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // SAFETY: opening a path from a NUL-terminated literal.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        assert!(
            fd >= 0,
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: libc::c_short,
            pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `ifreq`-sized struct that lives on the stack.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
        assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        ip(&["-6", "addr", "add", addr, "dev", &name, "nodad"]);
        ip(&["link", "set", &name, "up"]);
        Tun { fd, name }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Builds an IPv6/UDP packet with a correct UDP checksum.
pub fn ipv6_udp(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = Vec::with_capacity(40 + udp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.push(17); // next header: UDP
    p.push(64); // hop limit
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);

    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp_len as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&p[40..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 {
        csum = 0xffff;
    }
    p[46..48].copy_from_slice(&csum.to_be_bytes());
    p
}
