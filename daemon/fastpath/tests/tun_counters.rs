//! Root test: attaches `TunCounters` to a TUN device in a fresh network namespace, in this
//! process and (as the node does) through a helper process that passes the fds back, and checks
//! that real packets are counted in both directions and still delivered.
//!
//! Skips (passes, with a message saying what is missing) unless it runs as root and the eBPF
//! object was built (`cargo xtask build-ebpf`). `cargo xtask test` does both.
//!
//! Topology, all inside the namespace `cxbpf-<pid>-<n>`: TUN `cxbpf0` with fd00:cb::1/128 and
//! the route fd00:cb::/64 into it; this test holds the TUN's file descriptor and plays the
//! daemon.
//! - Egress: `ping fd00:cb::2` sends N echo requests into the TUN; the test reads them back.
//! - Ingress: the test writes N echo requests from fd00:cb::2 to fd00:cb::1 into the TUN; the
//!   kernel answers them back into the TUN, and the test reads the N replies.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use connectopus_fastpath::{AttachMode, TunCounters, find_object, load_object};

const TUN: &str = "cxbpf0";
const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xcb, 0, 0, 0, 0, 0, 1);
const PEER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xcb, 0, 0, 0, 0, 0, 2);
/// Packets per direction.
const N: u64 = 10;
/// ICMPv6 echo payload; each packet is 40 (IPv6) + 8 (ICMPv6) + this many bytes.
const PAYLOAD: usize = 56;
const PACKET_LEN: u64 = 40 + 8 + PAYLOAD as u64;

#[test]
fn counts_both_directions_of_a_tun_and_passes_every_packet() {
    let Some((_, object)) = prerequisites() else {
        return;
    };
    run_counting_test(
        || TunCounters::attach(TUN, &object).unwrap(),
        "in process",
        has_btf(&object),
    );
}

/// The node's way: a helper process (this test binary, re-run as [`helper_process`]) loads
/// and attaches the programs and passes their fds back, then exits; the counters must keep
/// counting through the passed map, and the programs go when the links' fds are closed.
#[test]
fn counts_through_the_fds_a_helper_process_passed() {
    let Some((path, object)) = prerequisites() else {
        return;
    };
    run_counting_test(
        || {
            let counters =
                TunCounters::attach_via_helper(helper_command(), TUN, Some(&path)).unwrap();
            assert_eq!(
                counters.loaded_by_helper(),
                counters.attach_mode() == AttachMode::Tcx,
                "the helper is used exactly when TCX is"
            );
            if counters.loaded_by_helper() {
                // The helper's errors come back as the node would log them.
                let error =
                    TunCounters::attach_via_helper(helper_command(), "cxbpf-none", Some(&path))
                        .unwrap_err()
                        .to_string();
                assert!(
                    error.contains("`cxbpf-none`") && error.contains("in the eBPF helper process"),
                    "{error}"
                );
            }
            counters
        },
        "by a helper process",
        has_btf(&object),
    );
}

/// Set in the environment of this test binary when it is re-run as the helper process.
const HELPER_ENV: &str = "CX_FASTPATH_TEST_HELPER";

/// Not a check of its own: when [`HELPER_ENV`] is set, this process is the helper that
/// `attach_via_helper` started, and serves its request.
#[test]
fn helper_process() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let code = match connectopus_fastpath::serve_helper() {
        Ok(connectopus_fastpath::HelperOutcome::Attached) => 0,
        Ok(connectopus_fastpath::HelperOutcome::Reported) => 1,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "helper: {error}");
            2
        }
    };
    std::process::exit(code);
}

/// This test binary, running only [`helper_process`] as the helper.
fn helper_command() -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "helper_process",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1");
    command
}

/// Creates the namespace and TUN, attaches the counters with `attach` inside it, and checks
/// that they count real packets both ways and detach on drop.
fn run_counting_test(attach: impl FnOnce() -> TunCounters, how: &str, has_btf: bool) {
    let netns = NetNs::create();
    for args in [
        &["tuntap", "add", "mode", "tun", "name", TUN][..],
        &["addr", "add", "fd00:cb::1/128", "dev", TUN, "nodad"],
        &["link", "set", TUN, "up"],
        &["-6", "route", "add", "fd00:cb::/64", "dev", TUN],
    ] {
        netns.ip(args);
    }
    let _inside = netns.enter();
    let mut tun = open_tun(TUN);

    let counters = attach();
    assert_eq!(counters.ifname(), TUN);
    let mode = counters.attach_mode();
    if mode == AttachMode::Tcx {
        assert_eq!(tcx_programs(TcAttachType::Ingress), ["cx_tun_count_in"]);
        assert_eq!(tcx_programs(TcAttachType::Egress), ["cx_tun_count_eg"]);
        // build-ebpf links with BTF by default; the kernel must accept it (bpf-linker 0.13).
        if has_btf {
            let (_, programs) = SchedClassifier::query_tcx(TUN, TcAttachType::Egress).unwrap();
            assert!(
                programs[0].btf_id().is_some(),
                "the kernel dropped the object's BTF"
            );
        }
    }
    let start = counters.read().unwrap();

    // Egress: the kernel routes N echo requests into the TUN.
    let ping = netns
        .exec("ping")
        .args([
            "-6",
            "-n",
            "-q",
            "-c",
            &N.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .args(["-s", &PAYLOAD.to_string(), &PEER.to_string()])
        .output()
        .unwrap();
    // No reply comes back (nobody answers for fd00:cb::2), so ping exits 1; 2 means it failed.
    assert_ne!(ping.status.code(), Some(2), "ping failed: {ping:?}");
    let requests = read_icmpv6(&mut tun, ECHO_REQUEST, PEER, N);
    assert_eq!(requests, N, "echo requests read from the TUN");
    let after_egress = counters.read().unwrap();
    let egress = after_egress.since(&start).egress;
    assert!(egress.packets >= N, "egress counted {egress:?}");
    assert!(egress.bytes >= N * PACKET_LEN, "egress counted {egress:?}");

    // Ingress: the "daemon" writes N echo requests into the TUN; the kernel replies.
    for seq in 0..N {
        tun.write_all(&echo_request(PEER, LOCAL, seq as u16))
            .unwrap();
    }
    let replies = read_icmpv6(&mut tun, ECHO_REPLY, PEER, N);
    assert_eq!(replies, N, "echo replies read from the TUN");
    let delta = counters.read().unwrap().since(&after_egress);
    assert!(
        delta.ingress.packets >= N,
        "ingress counted {:?}",
        delta.ingress
    );
    assert!(
        delta.ingress.bytes >= N * PACKET_LEN,
        "ingress counted {:?}",
        delta.ingress
    );
    assert!(
        delta.egress.packets >= N,
        "replies counted {:?}",
        delta.egress
    );

    drop(counters);
    if mode == AttachMode::Tcx {
        assert!(tcx_programs(TcAttachType::Ingress).is_empty());
        assert!(tcx_programs(TcAttachType::Egress).is_empty());
    }
    // On the real stderr like `skip`, so CI logs show that the test ran.
    let _ = writeln!(
        std::io::stderr(),
        "RAN tun_counters, loaded {how}: egress {} packets / {} bytes, ingress {} / {} ({})",
        egress.packets,
        egress.bytes,
        delta.ingress.packets,
        delta.ingress.bytes,
        mode.as_str()
    );
}

/// Returns the object's path and bytes, or `None` after saying what is missing.
fn prerequisites() -> Option<(PathBuf, Vec<u8>)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        skip(&format!(
            "needs root (euid is {euid}) to create a network namespace and load eBPF"
        ));
        return None;
    }
    match find_object(None) {
        Ok(path) => {
            let bytes = load_object(&path).unwrap();
            Some((path, bytes))
        }
        Err(error) => {
            skip(&error.to_string());
            None
        }
    }
}

/// Whether the object carries BTF (a `.BTF` section).
fn has_btf(object: &[u8]) -> bool {
    object.windows(5).any(|w| w == b".BTF\0")
}

/// Says why the test is skipped, on the real stderr: libtest captures `eprintln!` of passing
/// tests, and a silent skip in CI would look like a pass.
fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED tun_counters: {reason}");
}

/// Names (truncated to 15 bytes by the kernel) of the TCX programs on one hook of [`TUN`].
fn tcx_programs(attach_type: TcAttachType) -> Vec<String> {
    let (_revision, programs) = SchedClassifier::query_tcx(TUN, attach_type).unwrap();
    programs
        .iter()
        .map(|p| String::from_utf8_lossy(p.name()).into_owned())
        .collect()
}

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// Reads packets from the TUN until `want` ICMPv6 messages of `icmp_type` involving `peer` have
/// arrived or 5 s have passed; returns how many arrived. Other packets (the kernel may send
/// MLD or router solicitations) are skipped.
fn read_icmpv6(tun: &mut File, icmp_type: u8, peer: Ipv6Addr, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    let mut buf = [0u8; 2048];
    while seen < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !readable(tun, left) {
            break;
        }
        let n = tun.read(&mut buf).unwrap();
        let packet = &buf[..n];
        let matches = n >= 48
            && packet[0] >> 4 == 6
            && packet[6] == 58
            && packet[40] == icmp_type
            && (packet[8..24] == peer.octets() || packet[24..40] == peer.octets());
        if matches {
            seen += 1;
        }
    }
    seen
}

fn readable(tun: &File, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is a valid array of one element that outlives the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
    assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
    ready > 0
}

/// Builds an ICMPv6 echo request `src` → `dst` with a [`PAYLOAD`]-byte payload and a correct
/// checksum.
fn echo_request(src: Ipv6Addr, dst: Ipv6Addr, seq: u16) -> Vec<u8> {
    let icmp_len = 8 + PAYLOAD;
    let mut p = Vec::with_capacity(40 + icmp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    p.extend_from_slice(&[58, 64]); // next header ICMPv6, hop limit
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]); // type, code, checksum (below)
    p.extend_from_slice(&0xcb_u16.to_be_bytes()); // identifier
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..PAYLOAD).map(|i| i as u8));

    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&p[40..]);
    let checksum = internet_checksum(&pseudo);
    p[42..44].copy_from_slice(&checksum.to_be_bytes());
    p
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Attaches to the existing TUN device `name` (in the calling thread's network namespace) as its
/// reader and writer, non-blocking.
fn open_tun(name: &str) -> File {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    /// `_IOW('T', 202, int)` from linux/if_tun.h.
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` matches in size (40
    // bytes) and layout for the name and flags; both outlive the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: F_SETFL on an fd we own, with flags from F_GETFL plus O_NONBLOCK.
    unsafe {
        let flags = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0);
        assert_eq!(
            libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
            0
        );
    }
    tun
}

/// A network namespace made for this test, deleted on drop (also when the test panics).
struct NetNs {
    name: String,
}

impl NetNs {
    fn create() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cxbpf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        NetNs { name }
    }

    /// Runs `ip -n <netns> <args>`.
    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Returns `ip netns exec <netns> <program>`, to add arguments to and run.
    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Moves the calling thread into the namespace until the guard drops.
    fn enter(&self) -> Entered {
        let original = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on an fd we own; it changes only the calling thread's namespace.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Entered { original }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the TUN in it; `ip netns del` works from any thread.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns the calling thread to its original network namespace on drop.
struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: setns on an fd we own; it changes only the calling thread's namespace.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 && !std::thread::panicking() {
            panic!("setns back: {}", std::io::Error::last_os_error());
        }
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?} failed: {output:?}");
}
