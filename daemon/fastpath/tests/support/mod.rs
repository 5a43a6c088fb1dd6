//! What the fast-path root tests share: prerequisites (root, the object), network namespaces
//! deleted on drop, TUN devices, and packet builders.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use connectopus_fastpath::{find_object, load_object};

/// Returns the object's bytes, or `None` after saying (as `test`) what is missing.
pub fn prerequisites(test: &str) -> Option<Vec<u8>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        skip(
            test,
            &format!("needs root (euid is {euid}) to create network namespaces and load eBPF"),
        );
        return None;
    }
    match find_object(None) {
        Ok(path) => Some(load_object(&path).unwrap()),
        Err(error) => {
            skip(test, &error.to_string());
            None
        }
    }
}

/// Says why the test is skipped, on the real stderr (libtest captures `eprintln!`).
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// A network namespace made for a test, deleted on drop (also when the test panics).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(tag: &str) -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cx{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <netns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Sets the sysctl `key` (dotted, as `sysctl` spells it) to `value` in the namespace,
    /// through /proc/sys (no dependency on procps).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run(self
            .exec("sh")
            .args(["-c", &format!("echo {value} > {path}")]));
    }

    /// Returns `ip netns exec <netns> <program>`, to add arguments to and run.
    pub fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Entered {
        let original = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on an fd we own; it changes only the calling thread's namespace.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Entered { original }
    }

    /// The interface index of `ifname` in the namespace (`ip netns exec` mounts the
    /// namespace's /sys).
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self
            .exec("cat")
            .arg(format!("/sys/class/net/{ifname}/ifindex"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns the calling thread to its original network namespace on drop.
pub struct Entered {
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

pub fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?} failed: {output:?}");
}

/// An IPv6 header `src` → `dst` with `next_header`, `hop_limit` and `payload` after it.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, hop_limit]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An Ethernet header.
pub fn eth(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut e = Vec::with_capacity(14);
    e.extend_from_slice(&dst);
    e.extend_from_slice(&src);
    e.extend_from_slice(&[0x86, 0xdd]);
    e
}

/// A UDP header with a zero checksum, then `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// Opens the existing TUN `name` (in the calling thread's namespace), non-blocking.
pub fn open_tun(name: &str) -> File {
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
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` matches in size and
    // layout for the name and flags; both outlive the call.
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

/// The object's path, if built (for requests to a helper process).
pub fn object_path() -> Option<std::path::PathBuf> {
    connectopus_fastpath::find_object(None).ok()
}

/// The test binary's `helper_process` test, in a process whose environment has `env` set, is
/// the helper process that `load_via_helper` starts: it serves the node's request and exits.
/// Elsewhere (without `env`) it returns at once.
pub fn serve_if_helper(env: &str) {
    if std::env::var_os(env).is_none() {
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

/// This test binary, running only its `helper_process` test with `env` set (see
/// [`serve_if_helper`]).
pub fn helper_command(env: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "helper_process",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(env, "1");
    command
}
