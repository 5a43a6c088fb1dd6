//! Network namespaces ([`NetNs`]) and veth links between them ([`Veth`]).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::env::{tool, unique_name};
use crate::plan::{check_addr, host_in_24, host_in_64};
use crate::process::{ChildGuard, SharedChild, StdinMode, check_status, run_ok, run_with_timeout};
use crate::tempdir::TestDir;
use crate::wait::wait_until;

/// Default bound on a command run with [`NetNs::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `ip <args>`; fails with its stderr unless it succeeds; returns stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let mut command = Command::new(tool("ip")?);
    command.args(args);
    run_ok(command, IP_TIMEOUT)
}

/// Whether a named network namespace exists (`/run/netns/<name>`).
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A named network namespace, deleted on drop after every process in it is killed.
///
/// Created with IPv6 duplicate address detection off and ICMPv6 error rate limiting off
/// (addresses are usable at once; traceroute and ping see every error), and loopback up.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    label: String,
    dir: TestDir,
    children: Mutex<Vec<SharedChild>>,
}

impl NetNs {
    /// Creates a namespace named `cx<tag><n>-<label>`, unique across threads and processes;
    /// `label` (e.g. the node name) identifies it in logs. Its logs go to `dir`.
    pub fn new(dir: &TestDir, label: &str) -> Result<NetNs> {
        let clean: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32)
            .collect();
        let mut attempt = 0;
        let name = loop {
            let name = format!("{}-{clean}", unique_name());
            match ip(&["netns", "add", &name]) {
                Ok(_) => break name,
                // A leftover of a killed run whose pid we inherited: take the next name.
                Err(e) if attempt < 5 && e.to_string().contains("exists") => attempt += 1,
                Err(e) => return Err(e.context(format!("creating network namespace {name}"))),
            }
        };
        let ns = NetNs {
            name,
            label: clean,
            dir: dir.clone(),
            children: Mutex::new(Vec::new()),
        };
        ns.sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
        ])?;
        ns.set_up_loopback()?;
        Ok(ns)
    }

    /// The namespace name, for `ip netns exec` / `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The label given at creation (the node name in a [`Topology`](crate::Topology)).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The test directory this namespace logs to.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// A `Command` that runs `cmd args` inside the namespace. A bare `cmd` is looked up
    /// first, so a missing tool fails naming its Debian package.
    pub fn command<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<Command> {
        let program = if cmd.contains('/') {
            Path::new(cmd).to_path_buf()
        } else {
            tool(cmd)?
        };
        let mut command = Command::new(tool("ip")?);
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        Ok(command)
    }

    /// Runs `cmd args` in the namespace to completion (killed after [`EXEC_TIMEOUT`]) and
    /// returns its output, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<Output> {
        self.exec_timeout(cmd, args, EXEC_TIMEOUT)
    }

    /// [`exec`](Self::exec) with an explicit timeout.
    pub fn exec_timeout<S: AsRef<OsStr>>(
        &self,
        cmd: &str,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        run_with_timeout(self.command(cmd, args)?, timeout)
            .with_context(|| format!("in namespace {}", self.name))
    }

    /// Runs `cmd args` in the namespace; fails with its stderr unless it exits 0; returns
    /// stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<String> {
        let output = self.exec(cmd, args)?;
        check_status(&format!("{cmd} (in {})", self.name), &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `ip -n <ns> <args>`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Starts `cmd args` in the namespace, stdin from `/dev/null`, output logged to
    /// `<test dir>/<label>.<cmd>.stdout|stderr`. It is killed when the guard or this
    /// namespace is dropped, whichever comes first.
    pub fn spawn<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<ChildGuard> {
        self.spawn_with(self.command(cmd, args)?, cmd, StdinMode::Null)
    }

    /// Starts a `command` built with [`command`](Self::command) (add env vars, a working
    /// directory...), logging under `<label>.<name>`.
    pub fn spawn_with(&self, command: Command, name: &str, stdin: StdinMode) -> Result<ChildGuard> {
        let base = Path::new(name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_owned());
        let guard =
            ChildGuard::spawn(command, &self.dir, &format!("{}.{base}", self.label), stdin)?;
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(guard.shared());
        Ok(guard)
    }

    /// Brings the loopback interface up (done at creation; idempotent).
    pub fn set_up_loopback(&self) -> Result<()> {
        self.ip(&["link", "set", "lo", "up"]).map(drop)
    }

    /// Sets sysctls (dotted keys as for `sysctl`, e.g. `net.ipv6.conf.all.forwarding`) in
    /// this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut args: Vec<String> = vec![
            "-c".into(),
            r#"for kv; do printf '%s\n' "${kv#*=}" > "/proc/sys/${kv%%=*}" || exit 1; done"#.into(),
            "sh".into(),
        ];
        for (key, value) in settings {
            args.push(format!("{}={value}", key.replace('.', "/")));
        }
        self.exec_ok("sh", &args).map(drop)
    }

    /// Turns IPv6 (and IPv4) forwarding on, making this namespace a router.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctls(&[
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.ip_forward", "1"),
        ])
    }

    /// Binds a listening TCP socket at `addr` inside the namespace, from this process: the
    /// socket stays in the namespace and holds the port until it is dropped.
    ///
    /// # Errors
    /// The namespace cannot be entered or the address cannot be bound.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener> {
        let path = Path::new("/run/netns").join(&self.name);
        let ns =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // setns changes the namespace of the calling thread only: enter it on a thread of its
        // own, which ends right after the bind.
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<TcpListener> {
                    // SAFETY: `ns` is an open network namespace file for the whole call, and
                    // CLONE_NEWNET moves only this thread, which creates one socket and exits.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("entering namespace {}", self.name));
                    }
                    TcpListener::bind(addr)
                        .with_context(|| format!("binding {addr} in namespace {}", self.name))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread binding {addr} panicked"))?
        })
    }

    /// The process ids of every process in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        Ok(ip(&["netns", "pids", &self.name])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        for child in children {
            let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = child.kill_hard() {
                eprintln!("killing a process in {}: {e:#}", self.name);
            }
        }
        // Anything else still inside (grandchildren in other groups, daemons) goes too, or the
        // namespace would outlive its name.
        if let Ok(pids) = self.pids() {
            for pid in pids {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: plain signal delivery.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("deleting network namespace {}: {e:#}", self.name);
        }
    }
}

/// Addressing for a [`Veth`]: end A gets host `host_a` of the /64 `prefix` (and of the IPv4
/// /24 `v4`, if given), end B host `host_b`.
#[derive(Clone, Debug)]
pub struct VethConfig {
    /// Any address in the /64; must be in `fd00::/8` or `2001:db8::/32`.
    pub prefix: Ipv6Addr,
    /// Any address in the IPv4 /24; must be in `198.18.0.0/15`.
    pub v4: Option<Ipv4Addr>,
    /// Host number of end A (default 1).
    pub host_a: u8,
    /// Host number of end B (default 2).
    pub host_b: u8,
    /// Link MTU (default: the kernel's, 1500).
    pub mtu: Option<u32>,
}

impl VethConfig {
    /// Hosts 1 and 2 of `prefix`, no IPv4, default MTU.
    pub fn new(prefix: Ipv6Addr) -> VethConfig {
        VethConfig {
            prefix,
            v4: None,
            host_a: 1,
            host_b: 2,
            mtu: None,
        }
    }
}

/// One end of a [`Veth`].
#[derive(Clone, Debug)]
pub struct VethEnd {
    /// The namespace name.
    pub ns: String,
    /// The interface name (unique, `cx...a` / `cx...b`).
    pub ifname: String,
    /// Its IPv6 address (/64).
    pub v6: Ipv6Addr,
    /// Its IPv4 address (/24), if any.
    pub v4: Option<Ipv4Addr>,
}

/// A veth pair between two namespaces, addressed, up and usable at once (no DAD, carrier
/// checked). Dropping it deletes the pair (a no-op if a namespace is already gone).
#[derive(Debug)]
pub struct Veth {
    /// End A (in the first namespace).
    pub a: VethEnd,
    /// End B (in the second namespace).
    pub b: VethEnd,
}

impl Veth {
    /// Creates a pair between `a` and `b` with hosts ::1 (in `a`) and ::2 (in `b`) of the
    /// /64 `prefix`, and `.1` / `.2` of the IPv4 /24 `v4` if given.
    pub fn new(a: &NetNs, b: &NetNs, prefix: Ipv6Addr, v4: Option<Ipv4Addr>) -> Result<Veth> {
        Veth::with_config(
            a,
            b,
            &VethConfig {
                v4,
                ..VethConfig::new(prefix)
            },
        )
    }

    /// Creates a pair as described by `config`.
    pub fn with_config(a: &NetNs, b: &NetNs, config: &VethConfig) -> Result<Veth> {
        let v6a = host_in_64(config.prefix, config.host_a.into());
        let v6b = host_in_64(config.prefix, config.host_b.into());
        check_addr(v6a.into())?;
        let (v4a, v4b) = match config.v4 {
            Some(net) => {
                check_addr(net.into())?;
                (
                    Some(host_in_24(net, config.host_a)),
                    Some(host_in_24(net, config.host_b)),
                )
            }
            None => (None, None),
        };
        let base = unique_name();
        let end_a = VethEnd {
            ns: a.name().to_owned(),
            ifname: format!("{base}a"),
            v6: v6a,
            v4: v4a,
        };
        let end_b = VethEnd {
            ns: b.name().to_owned(),
            ifname: format!("{base}b"),
            v6: v6b,
            v4: v4b,
        };
        let mtu = config.mtu.map(|m| m.to_string());
        let mut args = vec!["link", "add", &end_a.ifname, "netns", &end_a.ns];
        if let Some(mtu) = &mtu {
            args.extend(["mtu", mtu]);
        }
        args.extend([
            "type",
            "veth",
            "peer",
            "name",
            &end_b.ifname,
            "netns",
            &end_b.ns,
        ]);
        if let Some(mtu) = &mtu {
            args.extend(["mtu", mtu]);
        }
        ip(&args).context("creating veth pair")?;
        // From here on the guard exists, so a failure below still deletes the pair.
        let veth = Veth { a: end_a, b: end_b };
        for end in [&veth.a, &veth.b] {
            let v6 = format!("{}/64", end.v6);
            ip(&[
                "-n",
                &end.ns,
                "-6",
                "addr",
                "add",
                &v6,
                "dev",
                &end.ifname,
                "nodad",
            ])?;
            if let Some(v4) = end.v4 {
                let v4 = format!("{v4}/24");
                ip(&["-n", &end.ns, "addr", "add", &v4, "dev", &end.ifname])?;
            }
            ip(&["-n", &end.ns, "link", "set", &end.ifname, "up"])?;
        }
        veth.wait_ready(Duration::from_secs(5))?;
        Ok(veth)
    }

    /// Waits until both ends are operationally up with a real qdisc attached and have no
    /// tentative IPv6 address, so the first packet is not dropped.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let ready = wait_until(timeout, Duration::from_millis(20), || {
            [&self.a, &self.b].iter().all(|end| {
                let link = ip(&["-n", &end.ns, "-o", "link", "show", "dev", &end.ifname])
                    .unwrap_or_default();
                let addrs = ip(&[
                    "-n",
                    &end.ns,
                    "-o",
                    "-6",
                    "addr",
                    "show",
                    "dev",
                    &end.ifname,
                ])
                .unwrap_or_default();
                let ok = link.contains("state UP")
                    && !link.contains("qdisc noop")
                    && !addrs.contains("tentative");
                if !ok {
                    last = format!("{link}{addrs}");
                }
                ok
            })
        });
        if ready.is_err() {
            bail!(
                "veth {} not ready within {timeout:?}: {last}",
                self.a.ifname
            );
        }
        Ok(())
    }

    /// Sets the MTU of both ends.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        for end in [&self.a, &self.b] {
            ip(&[
                "-n",
                &end.ns,
                "link",
                "set",
                "dev",
                &end.ifname,
                "mtu",
                &mtu,
            ])?;
        }
        Ok(())
    }

    /// Sets both ends administratively up or down (a link cut that keeps the addresses).
    pub fn set_up(&self, up: bool) -> Result<()> {
        for end in [&self.a, &self.b] {
            if !up {
                // Without this the kernel flushes the IPv6 addresses on the way down, and the
                // link would come back up without them.
                let keep = format!("net/ipv6/conf/{}/keep_addr_on_down=1", end.ifname);
                ip(&["netns", "exec", &end.ns, "sysctl", "-qw", &keep])?;
            }
            let state = if up { "up" } else { "down" };
            ip(&["-n", &end.ns, "link", "set", "dev", &end.ifname, state])?;
        }
        if up {
            self.wait_ready(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// The end in namespace `ns`, if either is.
    pub fn end_in(&self, ns: &NetNs) -> Option<&VethEnd> {
        [&self.a, &self.b].into_iter().find(|e| e.ns == ns.name())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; if the namespace is gone, so is the pair.
        if netns_exists(&self.a.ns)
            && let Err(e) = ip(&["-n", &self.a.ns, "link", "del", &self.a.ifname])
        {
            eprintln!("deleting veth {}: {e:#}", self.a.ifname);
        }
    }
}
