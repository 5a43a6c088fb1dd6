//! Real container runtimes for the CNI plugin's tests (`tests/tests/cni_runtimes.rs`,
//! shared/reference/cni-dhcpv6.md §3): libcni through the `minicni` driver, a podman 4.3 and
//! a containerd 1.6 of their own, each configured under the test directory, run in a node's
//! namespace and cleaned up on drop, also on failure.

use std::cell::RefCell;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::cni::{build_minicni, busybox_oci_archive, busybox_rootfs_tar, netns_path};
use crate::{
    ChildGuard, NetNs, StdinMode, TestDir, run_with_timeout, tool, wait_until, workspace_binary,
};

/// The reference plugins (Debian's `containernetworking-plugins`), where `tuning` lives.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How long one runtime command may take on a loaded machine.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails naming the package unless the reference plugin `name` is installed.
pub fn require_reference_plugin(name: &str) {
    let path = Path::new(REFERENCE_PLUGINS).join(name);
    assert!(
        path.is_file(),
        "{} is missing: install the Debian package `containernetworking-plugins` \
         (`cargo xtask install-deps` installs it)",
        path.display()
    );
}

/// The combined output of a command, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- libcni (reference §1.2, §5 (a) item 3) ----

/// libcni as a runtime uses it: `minicni` (built from tests/minicni with Debian's Go and
/// libcni), a directory of conflists, a plugin path (ours as type `connectopus`, then the
/// reference plugins) and libcni's result cache, all under the test directory. It runs in
/// the node's namespace, where the plugin puts the host side of the veth.
#[derive(Debug)]
pub struct Libcni<'a> {
    binary: PathBuf,
    node: &'a NetNs,
    root: PathBuf,
}

impl<'a> Libcni<'a> {
    pub fn new(dir: &TestDir, node: &'a NetNs, conflist: &Value) -> Result<Self> {
        let root = dir.path().join(format!("libcni-{}", node.label()));
        let plugins = root.join("plugins");
        let nets = root.join("net.d");
        std::fs::create_dir_all(&plugins)?;
        std::fs::create_dir_all(&nets)?;
        std::os::unix::fs::symlink(
            workspace_binary("connectopus-cni")?,
            plugins.join("connectopus"),
        )?;
        let name = conflist["name"].as_str().context("conflist without name")?;
        std::fs::write(
            nets.join(format!("10-{name}.conflist")),
            serde_json::to_string_pretty(conflist)?,
        )?;
        Ok(Self {
            binary: build_minicni(dir)?,
            node,
            root,
        })
    }

    /// libcni's cache of the result of ADD for (`network`, `id`, eth0).
    pub fn cached_result(&self, network: &str, id: &str) -> PathBuf {
        self.root
            .join("cache/results")
            .join(format!("{network}-{id}-eth0"))
    }

    /// `minicni VERB NETWORK NETNS ID eth0` with `CNI_ARGS` = `args`, to completion.
    pub fn run(
        &self,
        verb: &str,
        network: &str,
        netns: &str,
        id: &str,
        args: &str,
    ) -> Result<Output> {
        let binary = self.binary.display().to_string();
        let mut command = self
            .node
            .command(&binary, &[verb, network, netns, id, "eth0"])?;
        command
            .env("NETCONFPATH", self.root.join("net.d"))
            .env(
                "CNI_PATH",
                format!(
                    "{}:{REFERENCE_PLUGINS}",
                    self.root.join("plugins").display()
                ),
            )
            .env("CNI_CACHE_DIR", self.root.join("cache"))
            .env("CNI_ARGS", args)
            .stdin(Stdio::null());
        run_with_timeout(command, COMMAND_TIMEOUT)
    }

    /// [`run`](Self::run), which must succeed; its stdout.
    pub fn ok(
        &self,
        verb: &str,
        network: &str,
        netns: &str,
        id: &str,
        args: &str,
    ) -> Result<String> {
        let out = self.run(verb, network, netns, id, args)?;
        ensure!(
            out.status.success(),
            "minicni {verb} {id}: {}",
            output_text(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A podman 4.3 of its own (CNI backend, runc, cgroupfs; storage, run state and network
/// configurations under the test directory, ref Appendix A) run in a node's namespace with
/// `nsenter --net=` (`ip netns exec` remounts /sys, which runc refuses), with one network of
/// type `connectopus` that asks that node.
#[derive(Debug)]
pub struct Podman {
    root: std::path::PathBuf,
    netns: String,
    network: String,
    /// Containers to remove at the end, also on failure.
    started: std::cell::RefCell<Vec<String>>,
}

impl Podman {
    pub fn new(
        dir: &TestDir,
        label: &str,
        node: &NetNs,
        socket: &Path,
        network: &str,
    ) -> Result<Self> {
        let root = dir.path().join(format!("podman-{label}"));
        let plugins = root.join("plugins");
        let nets = root.join("net");
        std::fs::create_dir_all(&plugins)?;
        std::fs::create_dir_all(&nets)?;
        std::os::unix::fs::symlink(
            workspace_binary("connectopus-cni")?,
            plugins.join("connectopus"),
        )?;
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": network,
            "plugins": [{"type": "connectopus", "socket": socket}]});
        std::fs::write(
            nets.join(format!("{network}.conflist")),
            conflist.to_string(),
        )?;
        let r = root.display();
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{r}/events.log\"\nruntime = \"runc\"\n\
                 tmp_dir = \"{r}/libpod-tmp\"\n[network]\nnetwork_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{r}/plugins\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{r}/net\"\ndefault_subnet = \"198.18.0.0/24\"\n"
            ),
        )?;
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{r}/storage\"\nrunroot = \"{r}/run\"\n"
            ),
        )?;
        let podman = Self {
            root,
            netns: netns_path(node),
            network: network.to_owned(),
            started: std::cell::RefCell::new(Vec::new()),
        };
        podman.import_busybox()?;
        Ok(podman)
    }

    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut command = Command::new(tool("nsenter")?);
        command
            .arg(format!("--net={}", self.netns))
            .arg(tool("podman")?)
            .args(args)
            .env("CONTAINERS_CONF", self.root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.root.join("storage.conf"))
            .env("XDG_CONFIG_HOME", self.root.join("xdg"))
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Runs podman to completion; the output must be a success.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args)?.output()?;
        ensure!(
            out.status.success(),
            "podman {args:?}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A busybox image (`localhost/cx-busybox`) from the host's static busybox.
    pub fn import_busybox(&self) -> Result<()> {
        let tar = busybox_rootfs_tar(&self.root)?;
        self.ok(&[
            "import",
            &tar.display().to_string(),
            "localhost/cx-busybox:latest",
        ])?;
        Ok(())
    }

    /// `podman run -d` of a container that sleeps, on the network, with `dns` as its resolver.
    pub fn run(&self, name: &str, network: &str, dns: Ipv6Addr) -> Result<String> {
        self.started.borrow_mut().push(name.to_owned());
        let dns = dns.to_string();
        let id = self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--dns",
            &dns,
            "localhost/cx-busybox:latest",
            "sleep",
            "600",
        ])?;
        Ok(id.trim().to_owned())
    }

    /// The container's address on the network, as `podman inspect` shows it.
    pub fn address(&self, name: &str, network: &str) -> Result<Ipv6Addr> {
        let out = self.ok(&["inspect", name])?;
        let v: Value = serde_json::from_str(&out)?;
        let address = v[0]["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]
            .as_str()
            .with_context(|| format!("no GlobalIPv6Address in {}", v[0]["NetworkSettings"]))?;
        Ok(address.parse()?)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.started.borrow().iter() {
            if let Ok(mut c) = self.command(&["rm", "-f", "-t", "0", name]) {
                let _ = c.output();
            }
        }
        // podman's libcni cache of this network's results, which it keeps outside the test
        // directory (`/var/lib/cni/results/<network>-<id>-<ifname>`).
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.network);
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

// ---- containerd 1.6 + ctr (reference §3.2, §5 (a) item 5) ----

/// The image the containerd tests run.
pub const CTR_IMAGE: &str = "localhost/cx-busybox:latest";

/// What the runc shim leaves in `/run/containerd` whatever containerd's configured state
/// directory (reference §3.2): on drop, this run's namespace directory there, then each of
/// the shim's directories and `/run/containerd` itself if they are empty (another
/// containerd's are not).
#[derive(Debug)]
pub struct RunContainerdLeftovers {
    pub namespaces: Vec<String>,
}

impl Drop for RunContainerdLeftovers {
    fn drop(&mut self) {
        let run = Path::new("/run/containerd");
        for namespace in &self.namespaces {
            let _ = std::fs::remove_dir_all(run.join("runc").join(namespace));
        }
        for sub in ["fifo", "runc", "s", "io.containerd.runtime.v2.task"] {
            let _ = std::fs::remove_dir(run.join(sub));
        }
        let _ = std::fs::remove_dir(run);
    }
}

/// A containerd of its own, started in a node's namespace with `nsenter --net=` (as a node's
/// runtime would run), its config, root, state and sockets under the test directory, the CRI
/// plugin disabled, and the busybox image imported into a namespace of this run. On drop:
/// its tasks killed and deleted, containers and the image removed, containerd stopped, its
/// directories removed.
#[derive(Debug)]
pub struct Containerd {
    root: PathBuf,
    socket: PathBuf,
    namespace: String,
    /// Containers to remove at the end, also on failure, with the pid of their task.
    containers: RefCell<Vec<(String, Option<u32>)>>,
    process: Option<ChildGuard>,
    exec_count: std::cell::Cell<u32>,
}

impl Containerd {
    pub fn start(dir: &TestDir, node: &NetNs, namespace: &str) -> Result<Self> {
        let root = dir.path().join(format!("containerd-{}", node.label()));
        std::fs::create_dir_all(&root)?;
        let socket = root.join("containerd.sock");
        let r = root.display();
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{r}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{r}/containerd.sock.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{r}/opt\"\n"
            ),
        )?;
        let mut command = Command::new(tool("nsenter")?);
        command
            .arg(format!("--net={}", netns_path(node)))
            .arg(tool("containerd")?)
            .arg("--config")
            .arg(&config);
        let process = ChildGuard::spawn(
            command,
            dir,
            &format!("containerd-{}", node.label()),
            StdinMode::Null,
        )?;
        let containerd = Self {
            root,
            socket,
            namespace: namespace.to_owned(),
            containers: RefCell::new(Vec::new()),
            process: Some(process),
            exec_count: std::cell::Cell::new(0),
        };
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            containerd.ok(&["version"]).is_ok()
        })
        .with_context(|| format!("containerd in {} did not come up", node.name()))?;
        let archive = busybox_oci_archive(&containerd.root, CTR_IMAGE)?;
        containerd.ok(&["images", "import", &archive.display().to_string()])?;
        Ok(containerd)
    }

    /// `ctr` against this containerd, in this run's namespace, with the native snapshotter
    /// (the test directory may be on overlayfs).
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut command = Command::new(tool("ctr")?);
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", "native")
            .stdin(Stdio::null());
        Ok(command)
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        run_with_timeout(self.command(args)?, COMMAND_TIMEOUT)
    }

    /// `ctr args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(out.status.success(), "ctr {args:?}: {}", output_text(&out));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pid of `name`'s task, as `ctr task ls` lists it.
    pub fn task_pid(&self, name: &str) -> Result<u32> {
        let listed = self.ok(&["task", "ls"])?;
        listed
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                Some((fields.next()?, fields.next()?.parse::<u32>().ok()?))
            })
            .find(|(task, _)| *task == name)
            .map(|(_, pid)| pid)
            .with_context(|| format!("no task {name} in {listed}"))
    }

    /// Starts a container `name` that sleeps, with `resolv` as its /etc/resolv.conf and, if
    /// given, joining the network namespace `netns` (else in one of its own); returns its
    /// task's pid.
    pub fn start_container(&self, name: &str, netns: Option<&str>, resolv: &Path) -> Result<u32> {
        self.containers.borrow_mut().push((name.to_owned(), None));
        let mount = format!(
            "type=bind,src={},dst=/etc/resolv.conf,options=rbind:ro",
            resolv.display()
        );
        let mut args = vec!["containers", "create", "--mount", &mount];
        let with_ns = netns.map(|path| format!("network:{path}"));
        if let Some(with_ns) = &with_ns {
            args.extend(["--with-ns", with_ns.as_str()]);
        }
        args.extend([CTR_IMAGE, name, "sleep", "600"]);
        self.ok(&args)?;
        self.ok(&["task", "start", "--detach", name])?;
        let pid = self.task_pid(name)?;
        if let Some(entry) = self
            .containers
            .borrow_mut()
            .iter_mut()
            .find(|(n, _)| n == name)
        {
            entry.1 = Some(pid);
        }
        Ok(pid)
    }

    /// `ctr task exec` of `args` in `name`'s task, to completion, whatever its status.
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<Output> {
        let n = self.exec_count.get() + 1;
        self.exec_count.set(n);
        let exec_id = format!("e{n}");
        let mut full = vec!["task", "exec", "--exec-id", exec_id.as_str(), name];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// Kills `name`'s task (SIGKILL) and deletes it and the container.
    pub fn remove_container(&self, name: &str) -> Result<()> {
        let _ = self.run(&["task", "kill", "--signal", "SIGKILL", name]);
        // The task must have exited before it can be deleted.
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            self.run(&["task", "delete", name])
                .is_ok_and(|o| o.status.success())
                || self
                    .ok(&["task", "ls"])
                    .is_ok_and(|l| !l.lines().any(|t| t.split_whitespace().next() == Some(name)))
        })
        .with_context(|| format!("deleting task {name}"))?;
        self.ok(&["containers", "delete", name])?;
        self.containers.borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let left: Vec<(String, Option<u32>)> = self.containers.borrow().clone();
        for (name, pid) in left {
            if self.remove_container(&name).is_err()
                && let Some(pid) = pid
            {
                // containerd could not: the task's process itself.
                // SAFETY: kill(2) with a pid this test started and a valid signal.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        let _ = self.run(&["images", "remove", CTR_IMAGE]);
        // Stop containerd before removing its directories.
        drop(self.process.take());
        for sub in ["root", "state", "opt"] {
            let _ = std::fs::remove_dir_all(self.root.join(sub));
        }
    }
}
