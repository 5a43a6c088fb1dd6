//! A namespace's holder: the process (forked by the attach helper) whose network, mount and
//! UTS namespaces are the namespace's, and which runs its services.
//!
//! It moves into new namespaces (first a user namespace mapping its own uid to root when it is
//! not root, so that no privilege is needed), brings `lo` up, creates the TUN device holding
//! the namespace's address with a default route through it (the namespace's only routes are
//! the mesh's; with an IPv4 address, an IPv4 default route too, else no IPv4 route at all), bind-mounts a `resolv.conf` naming the node's DNS server and the mesh domain
//! and an `nsswitch.conf` whose hosts come from files and DNS, hands the TUN device to the
//! node (through the helper), and runs the namespace's services: their output is logged line
//! by line, one that exits is restarted after 5 s, and all of them stop when the helper closes
//! the socket (the namespace is removed, or the node stops).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use connectopus_netlink::{Netlink, Route};
use serde::{Deserialize, Serialize};

use super::helper::NamespaceSetup;
use super::sys;

/// How long after an unexpected exit a namespace service is started again.
pub const RESTART_DELAY: Duration = Duration::from_secs(5);

/// How long services get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the holder tells the helper once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The namespace is set up; its TUN device is attached.
    Ready,
    /// It could not be set up.
    Failed {
        /// Why.
        error: String,
    },
    /// A service started (`pid`) or exited (no `pid`), for `status`.
    Service {
        /// The service.
        service: String,
        /// Its process, while it runs.
        pid: Option<i32>,
        /// How many times it was started again.
        restarts: u32,
    },
}

/// Sets the namespace up, then runs its services until `sock` closes; never returns.
pub fn run(setup: &NamespaceSetup, sock: OwnedFd) -> ! {
    let _ = sys::die_with_parent();
    let tun = match set_up(setup) {
        Ok(tun) => tun,
        Err(error) => {
            let report = Report::Failed {
                error: format!("{error:#}"),
            };
            if let Ok(bytes) = serde_json::to_vec(&report) {
                let _ = sys::send_message(sock.as_raw_fd(), &bytes, None);
            }
            std::process::exit(1);
        }
    };
    let sent = serde_json::to_vec(&Report::Ready)
        .map_err(std::io::Error::other)
        .and_then(|bytes| sys::send_message(sock.as_raw_fd(), &bytes, Some(tun.as_raw_fd())));
    if sent.is_err() {
        std::process::exit(1);
    }
    // The node holds the device now.
    drop(tun);
    tracing::info!(namespace = %setup.name, address = %setup.address, "namespace ready");
    let supervisor = Supervisor::default();
    let report = sock.as_raw_fd();
    let threads: Vec<_> = setup
        .services
        .iter()
        .filter_map(|(name, argv)| {
            let sup = supervisor.clone();
            let (ns, name, argv) = (setup.name.clone(), name.clone(), argv.clone());
            std::thread::Builder::new()
                .name(format!("svc-{name}"))
                .spawn(move || sup.supervise(&ns, &name, &argv, report))
                .ok()
        })
        .collect();
    // Wait for the helper to close the socket (or die).
    let mut buf = [0u8; 256];
    loop {
        match sys::recv_message(sock.as_raw_fd(), &mut buf) {
            Ok((0, _)) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    supervisor.stop();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    supervisor.kill_all(libc::SIGKILL);
    std::process::exit(0)
}

/// Moves into the new namespaces and sets up the network and name resolution; returns the
/// TUN device's descriptor.
fn set_up(setup: &NamespaceSetup) -> Result<OwnedFd> {
    // SAFETY: geteuid and getegid take no arguments and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        sys::unshare(libc::CLONE_NEWUSER).context(
            "creating a user namespace (unprivileged user namespaces may be disabled: \
             sysctl kernel.unprivileged_userns_clone, or AppArmor's \
             kernel.apparmor_restrict_unprivileged_userns)",
        )?;
        std::fs::write("/proc/self/setgroups", "deny").context("writing setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    }
    sys::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWUTS)
        .context("creating the network, mount and UTS namespaces")?;
    sys::make_mounts_private().context("making the mounts private")?;
    let mut netlink = Netlink::open()?;
    netlink.set_up("lo")?;
    let ifname = setup.ifname();
    let mut builder = tun_rs::DeviceBuilder::new()
        .name(&ifname)
        .ipv6(setup.address, 128)
        .mtu(setup.mtu);
    if let Some(address4) = setup.address4 {
        builder = builder.ipv4(address4, 32, None);
    }
    let device = builder
        .build_sync()
        .with_context(|| format!("creating TUN device {ifname}"))?;
    let index = netlink.link(&ifname)?.index;
    netlink.add_route(&Route::via_device(Ipv6Addr::UNSPECIFIED.into(), 0, index))?;
    // IPv4 only with an address of its own: without one the namespace has no IPv4 route.
    if let Some(address4) = setup.address4 {
        netlink.add_route(
            &Route::via_device(Ipv4Addr::UNSPECIFIED.into(), 0, index).with_source(address4.into()),
        )?;
    }
    let tun = dup(&device).context("dup of the TUN device")?;
    drop(device);
    resolver_files(setup);
    Ok(tun)
}

fn dup(device: &tun_rs::SyncDevice) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    device.as_fd().try_clone_to_owned()
}

/// Bind-mounts the namespace's `resolv.conf` and `nsswitch.conf`; what fails is logged (the
/// namespace still works by address).
fn resolver_files(setup: &NamespaceSetup) {
    let mut resolv = String::new();
    if let Some(server) = setup.dns_server {
        resolv.push_str(&format!("nameserver {server}\n"));
    }
    resolv.push_str(&format!("search {}\n", setup.domain));
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let mut lines: Vec<String> = nsswitch
        .lines()
        .filter(|l| !l.trim_start().starts_with("hosts:"))
        .map(str::to_owned)
        .collect();
    lines.push("hosts: files dns".to_owned());
    let files = [
        ("/etc/resolv.conf", resolv),
        ("/etc/nsswitch.conf", lines.join("\n") + "\n"),
    ];
    for (target, text) in files {
        if let Err(error) = bind_file(target, &text) {
            tracing::warn!(namespace = %setup.name, file = target, error = %format!("{error:#}"), "cannot set up name resolution");
        }
    }
}

/// Writes `text` to a private file and bind-mounts it over `target`.
fn bind_file(target: &str, text: &str) -> Result<()> {
    let source = std::env::temp_dir().join(format!(
        "connectopus-{}-{}",
        std::process::id(),
        target.rsplit('/').next().unwrap_or("file")
    ));
    std::fs::write(&source, text).with_context(|| format!("writing {}", source.display()))?;
    let target = std::path::Path::new(target);
    if !target.exists() {
        // A dangling symlink (resolv.conf managed by a resolver that is not running):
        // nothing to mount over.
        let _ = std::fs::remove_file(&source);
        anyhow::bail!("{} does not exist", target.display());
    }
    let mounted = sys::bind_mount(&source, target);
    // The mount keeps the file; its name is no longer needed.
    let _ = std::fs::remove_file(&source);
    mounted.with_context(|| format!("bind-mounting over {}", target.display()))
}

/// The running services of a namespace.
#[derive(Debug, Clone, Default)]
struct Supervisor {
    state: Arc<(Mutex<SupervisorState>, Condvar)>,
}

#[derive(Debug, Default)]
struct SupervisorState {
    stopping: bool,
    /// Running service processes by service name.
    pids: BTreeMap<String, u32>,
}

impl Supervisor {
    /// Runs one service until the namespace stops, restarting it after unexpected exits;
    /// tells the helper on `report` (the holder's socket, open until the holder exits) each
    /// start and exit.
    fn supervise(&self, ns: &str, name: &str, argv: &[String], report: std::os::fd::RawFd) {
        let Some((program, args)) = argv.split_first() else {
            return;
        };
        let tell = |pid: Option<u32>, restarts: u32| {
            let message = Report::Service {
                service: name.to_owned(),
                pid: pid.and_then(|p| i32::try_from(p).ok()),
                restarts,
            };
            if let Ok(bytes) = serde_json::to_vec(&message) {
                let _ = sys::send_message(report, &bytes, None);
            }
        };
        let mut starts: u32 = 0;
        loop {
            let mut command = Command::new(program);
            command
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: the closure calls prctl only (async-signal-safe).
            unsafe {
                command.pre_exec(|| {
                    sys::die_with_parent()?;
                    Ok(())
                });
            }
            let spawned = {
                let (lock, _) = &*self.state;
                let mut state = match lock.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                if state.stopping {
                    return;
                }
                let spawned = command.spawn();
                if let Ok(child) = &spawned {
                    state.pids.insert(name.to_owned(), child.id());
                }
                spawned
            };
            match spawned {
                Ok(mut child) => {
                    tracing::info!(namespace = %ns, service = %name, pid = child.id(), "namespace service started");
                    tell(Some(child.id()), starts);
                    starts = starts.saturating_add(1);
                    let out = child.stdout.take().map(|o| log_lines(ns, name, o, false));
                    let err = child.stderr.take().map(|e| log_lines(ns, name, e, true));
                    let status = child.wait();
                    for t in [out, err].into_iter().flatten() {
                        let _ = t.join();
                    }
                    let (lock, _) = &*self.state;
                    if let Ok(mut state) = lock.lock() {
                        state.pids.remove(name);
                        if state.stopping {
                            return;
                        }
                    }
                    tell(None, starts.saturating_sub(1));
                    let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(namespace = %ns, service = %name, status = %how, "namespace service exited; restarting in 5 s");
                }
                Err(error) => {
                    tracing::error!(namespace = %ns, service = %name, %error, "namespace service did not start; retrying in 5 s");
                }
            }
            let (lock, wake) = &*self.state;
            let Ok(state) = lock.lock() else {
                return;
            };
            let Ok((state, _)) = wake.wait_timeout_while(state, RESTART_DELAY, |s| !s.stopping)
            else {
                return;
            };
            if state.stopping {
                return;
            }
        }
    }

    /// Stops restarting and sends SIGTERM to every service.
    fn stop(&self) {
        let (lock, wake) = &*self.state;
        if let Ok(mut state) = lock.lock() {
            state.stopping = true;
        }
        wake.notify_all();
        self.kill_all(libc::SIGTERM);
    }

    fn kill_all(&self, signal: libc::c_int) {
        let (lock, _) = &*self.state;
        if let Ok(state) = lock.lock() {
            for pid in state.pids.values() {
                if let Ok(pid) = libc::pid_t::try_from(*pid) {
                    sys::kill(pid, signal);
                }
            }
        }
    }
}

/// Logs each line `reader` yields (a service's stdout or stderr) on a thread.
fn log_lines(
    ns: &str,
    service: &str,
    reader: impl Read + Send + 'static,
    stderr: bool,
) -> std::thread::JoinHandle<()> {
    let (ns, service) = (ns.to_owned(), service.to_owned());
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else {
                break;
            };
            if stderr {
                tracing::warn!(namespace = %ns, service = %service, stream = "stderr", "{line}");
            } else {
                tracing::info!(namespace = %ns, service = %service, stream = "stdout", "{line}");
            }
        }
    })
}
