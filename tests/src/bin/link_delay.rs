//! Delays every frame an interface sends by a fixed time plus random jitter, for the chaos
//! test (`tests/tests/chaos.rs`, through `connectopus_tests::Delay`). The test kernel has no
//! netem (nor `fq`, whose departure times a BPF program could set), so `tc` alone cannot
//! delay a packet; this program does it in user space:
//!
//! 1. it creates a TAP device (`TAP`, IPv6 off so it sends nothing of its own) and prints
//!    `ready`;
//! 2. the caller then redirects `DEV`'s egress to it with `tc` (clsact, u32 match-all,
//!    `mirred egress redirect dev TAP`); the kernel segments and checksums offloaded packets
//!    on the way, since the TAP device offers no offloads;
//! 3. each frame read from the TAP is held until `now + DELAY_MS ± JITTER_MS` (uniform, so
//!    frames may overtake each other, as on a jittery path) and then sent out of `DEV` by an
//!    `AF_PACKET` socket with `PACKET_QDISC_BYPASS`, which skips the `tc` hook that sent it
//!    here.
//!
//! Run in the interface's namespace (`ip netns exec`); root. Frames queued when it exits are
//! lost, like packets on a cable that is pulled. Prints `forwarded N` on SIGTERM.
//!
//! usage: link_delay DEV TAP DELAY_MS JITTER_MS SEED

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Frames held at once; beyond this the newest is dropped (a full queue, as on a router).
const MAX_QUEUED: usize = 20_000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dev, tap, delay, jitter, seed] = args.as_slice() else {
        bail!("usage: link_delay DEV TAP DELAY_MS JITTER_MS SEED");
    };
    let delay = Duration::from_millis(delay.parse().context("DELAY_MS")?);
    let jitter: u64 = jitter.parse().context("JITTER_MS")?;
    let jitter = Duration::from_millis(jitter.min(delay.as_millis() as u64));
    let seed: u64 = seed.parse().context("SEED")?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))
        .context("SIGTERM handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))
        .context("SIGINT handler")?;

    let tap_fd = open_tap(tap)?;
    // No addresses, router solicitations or neighbour discovery of its own.
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1")
        .with_context(|| format!("disabling IPv6 on {tap}"))?;
    let status = std::process::Command::new("ip")
        .args(["link", "set", tap, "up"])
        .status()
        .context("running ip link set up")?;
    if !status.success() {
        bail!("ip link set {tap} up failed with {status}");
    }
    let out = PacketSocket::bind(dev)?;
    println!("ready");

    let mut rng = seed | 1;
    let mut next_random = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    // (due, arrival order, frame): a min-heap on the due time.
    let mut queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut order = 0u64;
    let (mut forwarded, mut dropped) = (0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(Reverse((due, _, _))) = queue.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, frame))) = queue.pop() else {
                break;
            };
            // A full device queue or a link that is down loses the frame, as a cable would.
            if out.send(&frame) {
                forwarded += 1;
            } else {
                dropped += 1;
            }
        }
        let wait = queue
            .peek()
            .map_or(Duration::from_millis(100), |Reverse((due, _, _))| {
                due.saturating_duration_since(now)
            });
        if !readable(tap_fd.as_raw_fd(), wait)? {
            continue;
        }
        // Drain what is there: the TAP is non-blocking.
        loop {
            // SAFETY: reading into a buffer we own, at most its length.
            let n = unsafe {
                libc::read(
                    tap_fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    break;
                }
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).context("reading the TAP device");
            }
            let n = n as usize;
            if n == 0 {
                break;
            }
            if queue.len() >= MAX_QUEUED {
                dropped += 1;
                continue;
            }
            let spread = if jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(next_random() % (2 * jitter.as_micros() as u64 + 1))
            };
            let due = Instant::now() + delay - jitter + spread;
            queue.push(Reverse((due, order, buf[..n].to_vec())));
            order += 1;
        }
    }
    println!(
        "forwarded {forwarded} dropped {dropped} queued {}",
        queue.len()
    );
    Ok(())
}

/// Waits up to `timeout` for `fd` to be readable; false on timeout or a signal.
fn readable(fd: libc::c_int, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(0, 1000) as libc::c_int;
    // A due time less than a millisecond away: poll without waiting.
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error).context("poll");
    }
    Ok(n > 0)
}

/// `struct ifreq` as TUNSETIFF takes it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a non-blocking TAP device named `name` (frames without a packet-information header).
fn open_tap(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("TAP name {name:?} must have 1 to 15 characters");
    }
    let path = CString::new("/dev/net/tun").context("path")?;
    // SAFETY: open(2) with a valid C string; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    for (slot, byte) in req.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(owned)
}

/// An `AF_PACKET` socket that sends whole Ethernet frames out of one interface, around its
/// queueing discipline and `tc` hooks.
struct PacketSocket {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
}

impl PacketSocket {
    fn bind(dev: &str) -> Result<PacketSocket> {
        let name = CString::new(dev).context("interface name")?;
        // SAFETY: a valid C string; 0 means no such interface.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("interface {dev}"));
        }
        // Protocol 0: this socket only sends, it receives nothing.
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int; `one` outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        // SAFETY: sockaddr_ll is a plain C struct; all-zero bytes are valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as libc::c_ushort;
        to.sll_ifindex = index as libc::c_int;
        to.sll_halen = 6;
        Ok(PacketSocket { fd, to })
    }

    /// Sends one frame; false if the kernel refused it (queue full, link down).
    fn send(&self, frame: &[u8]) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let mut to = self.to;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // The EtherType, already in network byte order.
        to.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        // SAFETY: the frame and address are valid for the call's duration.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        n == frame.len() as isize
    }
}
