//! The attach helper: a process the node starts before it drops its capabilities and installs
//! its seccomp filter (`connectopus attach-helper`, hidden), which does on its behalf what the
//! confined node may not: create network namespaces (see `holder`) and start the programs the
//! configuration names (inetd services, per connection). It runs with the privileges the node
//! started with, and exits when the node does (its socket closes; `PR_SET_PDEATHSIG` too).
//!
//! The two talk over a `SOCK_SEQPACKET` socket pair (the helper's stdin): one JSON message per
//! packet, descriptors attached with `SCM_RIGHTS` (a namespace's TUN device, a connection).
//! The helper keeps a registry of namespaces for `connectopus nsenter`: `<control socket>.netns/
//! <name>` holds the pid of the process whose namespaces are the namespace's. It logs the
//! stderr of inetd connection processes line by line, with the service's name.
//!
//! A node that restarts its mesh instance re-executes itself already confined (fewer
//! capabilities, `no_new_privs`, seccomp), so a helper it started then could not make
//! namespaces. Instead the helper outlives the re-exec: the old image leaves its end of the
//! socket open across `execve` and names it, with the helper's pid, in `CONNECTOPUS_ATTACH_HELPER`
//! ([`Client::hand_over`]); the new image takes it over ([`Client::start`]) after checking
//! that the descriptor is a `SOCK_SEQPACKET` unix socket and the pid its own child, and asks
//! the helper to `Reset`: every namespace of the old image stops, and the new image starts
//! its own. No privilege is regained: the helper only ever had those the node started with.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::sys;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "attach-helper";

/// Largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;

/// How long a stopping namespace may take before its process is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The environment variable in which a node hands its helper to its re-executed self:
/// `<descriptor>:<pid>`.
pub const HANDOVER_ENV: &str = "CONNECTOPUS_ATTACH_HELPER";

/// How long a re-executed node waits for the helper it took over to reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest stderr line of a connection process logged whole; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;

/// What the node asks for: a namespace as its holder sets it up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceSetup {
    /// The namespace's name.
    pub name: String,
    /// Its address (a /128 on its TUN device).
    pub address: Ipv6Addr,
    /// Its IPv4 address (a /32 on its TUN device, with an IPv4 default route).
    #[serde(default)]
    pub address4: Option<std::net::Ipv4Addr>,
    /// The TUN device's MTU.
    pub mtu: u16,
    /// The search domain of its `resolv.conf`.
    pub domain: String,
    /// The name server of its `resolv.conf`.
    pub dns_server: Option<Ipv6Addr>,
    /// Long-running commands started inside, by name.
    pub services: BTreeMap<String, Vec<String>>,
}

impl NamespaceSetup {
    /// The namespace as the node's configuration describes it.
    pub fn from_spec(spec: &connectopus_config::attach::NamespaceSpec) -> Self {
        Self {
            name: spec.name.clone(),
            address: spec.address,
            address4: spec.address4,
            mtu: spec.mtu,
            domain: spec.domain.clone(),
            dns_server: spec.dns_server,
            services: spec.services.clone(),
        }
    }

    /// The TUN device's name inside the namespace: `cx-<name>`, cut to 15 bytes.
    pub fn ifname(&self) -> String {
        connectopus_config::model::default_tun_name(&self.name)
    }
}

/// A request of the node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToHelper {
    /// Create a namespace; answered with `NamespaceReady` (and its TUN device) or
    /// `NamespaceFailed`.
    StartNamespace {
        /// Names this start in the answers.
        generation: u64,
        /// What to set up.
        setup: NamespaceSetup,
    },
    /// Stop a namespace's services and let it go.
    StopNamespace {
        /// The namespace.
        name: String,
    },
    /// Stop every namespace (of a previous image of the node) and forget its connections;
    /// answered with `ResetDone`.
    Reset,
    /// Run `argv` with the attached connection as its stdin and stdout; answered with
    /// `Exited` (or `SpawnFailed`).
    Spawn {
        /// Names this connection in the answers.
        id: u64,
        /// The service, for logs.
        service: String,
        /// The command.
        argv: Vec<String>,
    },
}

/// What the helper tells the node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromHelper {
    /// The namespace runs; its TUN device is attached.
    NamespaceReady {
        /// The namespace.
        name: String,
        /// The start this answers.
        generation: u64,
        /// The process that holds it.
        pid: i32,
    },
    /// The namespace could not be made, or ended.
    NamespaceFailed {
        /// The namespace.
        name: String,
        /// The start this answers.
        generation: u64,
        /// Why.
        error: String,
    },
    /// A namespace service started (`pid`) or exited (no `pid`).
    ServiceState {
        /// The namespace.
        name: String,
        /// The start of the namespace this is about.
        generation: u64,
        /// The service.
        service: String,
        /// Its process, while it runs.
        pid: Option<i32>,
        /// How many times it was started again.
        restarts: u32,
    },
    /// The helper stopped what it ran for a previous image of the node.
    ResetDone,
    /// A connection's process could not start.
    SpawnFailed {
        /// The connection.
        id: u64,
        /// Why.
        error: String,
    },
    /// A connection's process ended.
    Exited {
        /// The connection.
        id: u64,
    },
}

/// A message and the descriptor it carried.
#[derive(Debug)]
pub struct Received<T> {
    /// The message.
    pub message: T,
    /// The descriptor, if any.
    pub fd: Option<OwnedFd>,
}

fn send<T: Serialize>(sock: RawFd, message: &T, fd: Option<RawFd>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    sys::send_message(sock, &bytes, fd)
}

/// Receives one message; `Ok(None)` at end of file.
fn recv<T: for<'de> Deserialize<'de>>(sock: RawFd) -> std::io::Result<Option<Received<T>>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fd) = sys::recv_message(sock, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let message =
        serde_json::from_slice(buf.get(..n).unwrap_or_default()).map_err(std::io::Error::other)?;
    Ok(Some(Received { message, fd }))
}

/// The registry directory of the node serving `control_socket`.
pub fn registry_dir(control_socket: &Path) -> PathBuf {
    let mut dir = control_socket.as_os_str().to_owned();
    dir.push(".netns");
    PathBuf::from(dir)
}

// ---------------------------------------------------------------------------------------------
// The node's side.

/// The node's handle on its helper.
#[derive(Debug)]
pub struct Client {
    sock: OwnedFd,
    next_id: AtomicU64,
    /// Connections whose process runs, with the counter of their service.
    connections: Mutex<HashMap<u64, Arc<AtomicU32>>>,
    /// The helper's process, until it is reaped.
    pid: Mutex<Option<libc::pid_t>>,
    /// Set when the node hands the helper to its re-executed self: the reader stops.
    detached: AtomicBool,
}

/// Whether the handed-over helper was taken already (there is one descriptor).
static TAKEN: AtomicBool = AtomicBool::new(false);

impl Client {
    /// The helper this node's previous image handed over across a re-exec, else a new one.
    /// Call it before the node drops privileges.
    ///
    /// # Errors
    /// No helper could be taken over or started.
    pub fn start(control_socket: &Path) -> Result<Arc<Client>> {
        match Self::take_over() {
            Some(Ok(client)) => {
                tracing::info!("kept the attach helper across the restart");
                Ok(client)
            }
            Some(Err(error)) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot take over the attach helper; starting another");
                Self::spawn(control_socket)
            }
            None => Self::spawn(control_socket),
        }
    }

    /// Starts a new helper.
    ///
    /// # Errors
    /// The socket pair or the process could not be made.
    pub fn spawn(control_socket: &Path) -> Result<Arc<Client>> {
        let (ours, theirs) = sys::seqpacket_pair().context("socketpair")?;
        let child = Command::new("/proc/self/exe")
            .arg(SUBCOMMAND)
            .arg("--registry")
            .arg(registry_dir(control_socket))
            .env("CONNECTOPUS_LOG_FORMAT", crate::logging::format_name())
            .env_remove(HANDOVER_ENV)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            // Its own process group: a signal to the node's group (a terminal's Ctrl-C, a
            // supervisor) stops the node, which then stops the helper in order.
            .process_group(0)
            .spawn()
            .context("starting the attach helper")?;
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // Reaped by `stop` (waitpid), also after a re-exec, where no `Child` exists.
        std::mem::forget(child);
        Ok(Arc::new(Self::new(ours, pid)))
    }

    fn new(sock: OwnedFd, pid: libc::pid_t) -> Client {
        Client {
            sock,
            next_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            pid: Mutex::new(Some(pid)),
            detached: AtomicBool::new(false),
        }
    }

    /// The helper named by [`HANDOVER_ENV`], checked and reset; `None` without one.
    fn take_over() -> Option<Result<Arc<Client>>> {
        let value = std::env::var(HANDOVER_ENV).ok()?;
        if TAKEN.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Self::adopt(&value))
    }

    fn adopt(value: &str) -> Result<Arc<Client>> {
        let (fd, pid) = value
            .split_once(':')
            .and_then(|(f, p)| Some((f.parse::<RawFd>().ok()?, p.parse::<libc::pid_t>().ok()?)))
            .with_context(|| format!("{HANDOVER_ENV}={value:?} is not <fd>:<pid>"))?;
        anyhow::ensure!(
            fd > 2 && pid > 1,
            "{HANDOVER_ENV}={value:?} is out of range"
        );
        anyhow::ensure!(
            sys::is_seqpacket_socket(fd),
            "descriptor {fd} is not a unix seqpacket socket"
        );
        anyhow::ensure!(sys::is_running_child(pid), "process {pid} is not our child");
        // SAFETY: the previous image of this process left `fd` open for us (checked above to
        // be a seqpacket socket) and named it in the environment; `TAKEN` makes this the only
        // place that takes it, once.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        sys::set_cloexec(sock.as_raw_fd(), true).context("FD_CLOEXEC")?;
        let client = Self::new(sock, pid);
        client.request(&ToHelper::Reset, None).context("reset")?;
        let deadline = Instant::now() + RESET_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "the helper did not answer the reset");
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            if sys::poll_in(&[client.sock.as_raw_fd()], ms)?.first() != Some(&true) {
                continue;
            }
            // What the helper said to the previous image before the reset is stale.
            match recv::<FromHelper>(client.sock.as_raw_fd()).context("reading the reset")? {
                Some(Received {
                    message: FromHelper::ResetDone,
                    ..
                }) => return Ok(Arc::new(client)),
                Some(_) => {}
                None => anyhow::bail!("the helper closed its socket"),
            }
        }
    }

    /// Prepares the helper for the node's re-exec: its socket stays open across `execve`.
    /// Returns the value of [`HANDOVER_ENV`] for the new image. The reader must be stopped
    /// ([`Client::detach`]) and this client kept alive until the exec.
    ///
    /// # Errors
    /// The descriptor's flags cannot be changed.
    pub fn hand_over(&self) -> Result<String> {
        let pid = self
            .pid
            .lock()
            .ok()
            .and_then(|p| *p)
            .context("the helper is gone")?;
        sys::set_cloexec(self.sock.as_raw_fd(), false).context("clearing FD_CLOEXEC")?;
        Ok(format!("{}:{pid}", self.sock.as_raw_fd()))
    }

    /// Stops the reader thread (within 200 ms) without closing the socket.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// Sends a request.
    ///
    /// # Errors
    /// The helper is gone.
    pub fn request(&self, message: &ToHelper, fd: Option<RawFd>) -> std::io::Result<()> {
        send(self.sock.as_raw_fd(), message, fd)
    }

    /// Runs `argv` for a connection of `service`; `active` counts the service's running
    /// processes and goes down when this one ends.
    ///
    /// # Errors
    /// The helper is gone; `active` is unchanged then.
    pub fn spawn_connection(
        &self,
        service: &str,
        argv: &[String],
        connection: OwnedFd,
        active: &Arc<AtomicU32>,
    ) -> std::io::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        active.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.connections.lock() {
            c.insert(id, active.clone());
        }
        let message = ToHelper::Spawn {
            id,
            service: service.to_owned(),
            argv: argv.to_vec(),
        };
        let sent = self.request(&message, Some(connection.as_raw_fd()));
        if sent.is_err() {
            self.connection_ended(id);
        }
        sent
    }

    fn connection_ended(&self, id: u64) {
        if let Ok(mut c) = self.connections.lock()
            && let Some(active) = c.remove(&id)
        {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Reads the helper's messages on a thread: connection ends are booked here, namespace
    /// messages go to `deliver`. Ends when the helper does, or at [`Client::detach`].
    ///
    /// # Errors
    /// The thread could not start.
    pub fn spawn_reader(
        self: &Arc<Self>,
        deliver: impl Fn(Received<FromHelper>) -> bool + Send + 'static,
    ) -> Result<JoinHandle<()>> {
        let client = self.clone();
        std::thread::Builder::new()
            .name("attach-helper".into())
            .spawn(move || {
                let fd = client.sock.as_raw_fd();
                while !client.detached.load(Ordering::SeqCst) {
                    match sys::poll_in(&[fd], 200) {
                        Ok(r) if r.first() == Some(&true) => {}
                        Ok(_) => continue,
                        Err(error) => {
                            tracing::warn!(%error, "polling the attach helper failed");
                            return;
                        }
                    }
                    match recv::<FromHelper>(fd) {
                        Ok(Some(received)) => match received.message {
                            FromHelper::Exited { id } => client.connection_ended(id),
                            FromHelper::SpawnFailed { id, ref error } => {
                                tracing::warn!(connection = id, %error, "service process did not start");
                                client.connection_ended(id);
                            }
                            FromHelper::ResetDone => {}
                            _ => {
                                if !deliver(received) {
                                    return;
                                }
                            }
                        },
                        Ok(None) => {
                            tracing::debug!("attach helper closed its socket");
                            return;
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(error) => {
                            tracing::warn!(%error, "reading from the attach helper failed");
                            return;
                        }
                    }
                }
            })
            .context("spawning the attach helper reader")
    }

    /// Stops the helper (and with it every namespace and service process): closes its
    /// socket's write side and reaps it.
    pub fn stop(&self) {
        // SAFETY: shutdown takes a descriptor we own and a flag.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let pid = self.pid.lock().ok().and_then(|mut p| p.take());
        if let Some(pid) = pid {
            let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
            while Instant::now() < deadline {
                if sys::try_reap(pid) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sys::kill(pid, libc::SIGKILL);
            sys::reap(pid);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The helper's side.

/// A namespace's holder process, as the helper tracks it.
#[derive(Debug)]
struct Holder {
    name: String,
    generation: u64,
    pid: libc::pid_t,
    /// Our end of its socket; `None` once asked to stop.
    sock: Option<OwnedFd>,
    ready: bool,
    /// Its socket reported end of file: not polled any more (the reaper takes it from here).
    hung_up: bool,
    stop_deadline: Option<Instant>,
}

/// The stderr of a connection process, logged line by line.
#[derive(Debug)]
struct StderrPipe {
    service: String,
    pipe: std::process::ChildStderr,
    pending: Vec<u8>,
}

impl StderrPipe {
    /// Reads what is there (the poll said it is readable); false at end of file.
    fn read(&mut self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let n = match self.pipe.read(&mut buf) {
            Ok(0) => {
                self.flush(true);
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(_) => {
                self.flush(true);
                return false;
            }
        };
        self.pending
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        self.flush(false);
        true
    }

    /// Logs every complete line (and the rest too, at the end or when it grew too long).
    fn flush(&mut self, all: bool) {
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.log(line.get(..end).unwrap_or_default());
        }
        if (all && !self.pending.is_empty()) || self.pending.len() > MAX_LINE {
            let rest = std::mem::take(&mut self.pending);
            self.log(&rest);
        }
    }

    fn log(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        tracing::warn!(service = %self.service, stream = "stderr", "{line}");
    }
}

/// Runs the helper until the node closes its socket (stdin).
pub fn run(registry: PathBuf) -> ExitCode {
    let _ = sys::die_with_parent();
    // SAFETY: the node started us with our end of the socket pair as stdin, which nothing
    // else in this process uses.
    let node = unsafe { OwnedFd::from_raw_fd(0) };
    if let Err(error) = std::fs::create_dir_all(&registry) {
        tracing::warn!(dir = %registry.display(), %error, "no namespace registry: nsenter will not find the namespaces");
    }
    let mut helper = Helper {
        node,
        registry,
        holders: Vec::new(),
        connections: BTreeMap::new(),
        stderr: Vec::new(),
    };
    helper.serve();
    helper.shut_down();
    ExitCode::SUCCESS
}

struct Helper {
    node: OwnedFd,
    registry: PathBuf,
    holders: Vec<Holder>,
    /// Connection processes by pid, with their connection id.
    connections: BTreeMap<libc::pid_t, u64>,
    /// The stderr of running connection processes.
    stderr: Vec<StderrPipe>,
}

impl Helper {
    fn serve(&mut self) {
        loop {
            let mut fds = vec![self.node.as_raw_fd()];
            let waiting: Vec<usize> = (0..self.holders.len())
                .filter(|i| self.holders[*i].sock.is_some() && !self.holders[*i].hung_up)
                .collect();
            fds.extend(
                waiting
                    .iter()
                    .filter_map(|i| self.holders[*i].sock.as_ref().map(AsRawFd::as_raw_fd)),
            );
            let pipes_from = fds.len();
            fds.extend(self.stderr.iter().map(|p| p.pipe.as_raw_fd()));
            let readable = match sys::poll_in(&fds, 100) {
                Ok(r) => r,
                Err(error) => {
                    tracing::error!(%error, "attach helper: poll failed");
                    return;
                }
            };
            if readable.first() == Some(&true) {
                match recv::<ToHelper>(self.node.as_raw_fd()) {
                    Ok(Some(request)) => self.handle(request),
                    Ok(None) => return,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::error!(%error, "attach helper: bad request");
                        return;
                    }
                }
            }
            for (k, i) in waiting.iter().enumerate() {
                if readable.get(k + 1) == Some(&true) {
                    self.holder_message(*i);
                }
            }
            let mut k = pipes_from;
            self.stderr.retain_mut(|pipe| {
                let ready = readable.get(k) == Some(&true);
                k += 1;
                !ready || pipe.read()
            });
            self.reap();
        }
    }

    fn answer(&self, message: &FromHelper, fd: Option<RawFd>) {
        if let Err(error) = send(self.node.as_raw_fd(), message, fd) {
            tracing::debug!(%error, "attach helper: the node is gone");
        }
    }

    fn handle(&mut self, request: Received<ToHelper>) {
        match request.message {
            ToHelper::StartNamespace { generation, setup } => {
                let name = setup.name.clone();
                if let Err(error) = self.start_holder(generation, setup) {
                    self.answer(
                        &FromHelper::NamespaceFailed {
                            name,
                            generation,
                            error: format!("{error:#}"),
                        },
                        None,
                    );
                }
            }
            ToHelper::StopNamespace { name } => self.stop_holder(&name),
            ToHelper::Reset => {
                let names: Vec<String> = self.holders.iter().map(|h| h.name.clone()).collect();
                for name in names {
                    self.stop_holder(&name);
                }
                // Their processes run on with their connections; their ends go unreported.
                self.connections.clear();
                tracing::info!("attach helper reset for the node's new instance");
                self.answer(&FromHelper::ResetDone, None);
            }
            ToHelper::Spawn { id, service, argv } => {
                let Some(connection) = request.fd else {
                    self.answer(
                        &FromHelper::SpawnFailed {
                            id,
                            error: "no connection attached".to_owned(),
                        },
                        None,
                    );
                    return;
                };
                match spawn_connection(&argv, connection) {
                    Ok((pid, stderr)) => {
                        tracing::debug!(%service, pid, "service connection process started");
                        self.connections.insert(pid, id);
                        self.stderr.push(StderrPipe {
                            service,
                            pipe: stderr,
                            pending: Vec::new(),
                        });
                    }
                    Err(error) => self.answer(
                        &FromHelper::SpawnFailed {
                            id,
                            error: format!("{service}: {error:#}"),
                        },
                        None,
                    ),
                }
            }
        }
    }

    fn start_holder(&mut self, generation: u64, setup: NamespaceSetup) -> Result<()> {
        let (ours, theirs) = sys::seqpacket_pair().context("socketpair")?;
        let keep = theirs.as_raw_fd();
        // SAFETY: the helper is single-threaded.
        match unsafe { sys::fork() }.context("fork")? {
            None => {
                // The holder: nothing of the helper's but its own socket stays open, so that
                // every other holder sees its socket close when the helper drops it.
                close_all_but(keep);
                super::holder::run(&setup, theirs)
            }
            Some(pid) => {
                drop(theirs);
                tracing::info!(namespace = %setup.name, pid, "namespace starting");
                self.holders.push(Holder {
                    name: setup.name,
                    generation,
                    pid,
                    sock: Some(ours),
                    ready: false,
                    hung_up: false,
                    stop_deadline: None,
                });
                Ok(())
            }
        }
    }

    fn stop_holder(&mut self, name: &str) {
        for h in self.holders.iter_mut().filter(|h| h.name == name) {
            if h.sock.take().is_some() {
                tracing::info!(namespace = %name, pid = h.pid, "namespace stopping");
                h.stop_deadline = Some(Instant::now() + STOP_GRACE);
                let _ = std::fs::remove_file(self.registry.join(name));
            }
        }
    }

    fn holder_message(&mut self, i: usize) {
        let Some(h) = self.holders.get_mut(i) else {
            return;
        };
        let Some(sock) = h.sock.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let (name, generation, pid) = (h.name.clone(), h.generation, h.pid);
        if h.ready {
            // A running namespace reports its services; its end is the reaper's business.
            match recv::<super::holder::Report>(sock) {
                Ok(Some(Received {
                    message:
                        super::holder::Report::Service {
                            service,
                            pid,
                            restarts,
                        },
                    ..
                })) => self.answer(
                    &FromHelper::ServiceState {
                        name,
                        generation,
                        service,
                        pid,
                        restarts,
                    },
                    None,
                ),
                Ok(Some(_)) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(None) | Err(_) => h.hung_up = true,
            }
            return;
        }
        match recv::<super::holder::Report>(sock) {
            Ok(Some(Received {
                message: super::holder::Report::Ready,
                fd: Some(tun),
            })) => {
                h.ready = true;
                if let Err(error) = std::fs::write(self.registry.join(&name), format!("{pid}\n")) {
                    tracing::warn!(namespace = %name, %error, "cannot register the namespace for nsenter");
                }
                self.answer(
                    &FromHelper::NamespaceReady {
                        name,
                        generation,
                        pid,
                    },
                    Some(tun.as_raw_fd()),
                );
            }
            Ok(Some(Received {
                message: super::holder::Report::Failed { error },
                ..
            })) => {
                h.sock = None;
                self.answer(
                    &FromHelper::NamespaceFailed {
                        name,
                        generation,
                        error,
                    },
                    None,
                );
            }
            Ok(Some(_)) | Ok(None) | Err(_) => {
                h.sock = None;
                self.answer(
                    &FromHelper::NamespaceFailed {
                        name,
                        generation,
                        error: "the namespace's process ended while setting up".to_owned(),
                    },
                    None,
                );
            }
        }
    }

    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_child() {
            if let Some(id) = self.connections.remove(&pid) {
                self.answer(&FromHelper::Exited { id }, None);
                continue;
            }
            if let Some(i) = self.holders.iter().position(|h| h.pid == pid) {
                let h = self.holders.remove(i);
                let how = sys::describe_status(status);
                if h.sock.is_some() {
                    // It ended by itself: the namespace is gone.
                    tracing::warn!(namespace = %h.name, pid, status = %how, "namespace ended");
                    let _ = std::fs::remove_file(self.registry.join(&h.name));
                    self.answer(
                        &FromHelper::NamespaceFailed {
                            name: h.name,
                            generation: h.generation,
                            error: format!("its process ended ({how})"),
                        },
                        None,
                    );
                } else {
                    tracing::info!(namespace = %h.name, pid, status = %how, "namespace stopped");
                }
            }
        }
        let now = Instant::now();
        for h in &mut self.holders {
            if h.stop_deadline.is_some_and(|d| d <= now) {
                tracing::warn!(namespace = %h.name, pid = h.pid, "namespace slow to stop: killing it");
                sys::kill(h.pid, libc::SIGKILL);
                h.stop_deadline = None;
            }
        }
    }

    /// Stops every namespace and connection process, then removes the registry.
    fn shut_down(&mut self) {
        let names: Vec<String> = self.holders.iter().map(|h| h.name.clone()).collect();
        for name in names {
            self.stop_holder(&name);
        }
        for pid in self.connections.keys() {
            sys::kill(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !self.holders.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        for h in &self.holders {
            sys::kill(h.pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.registry);
    }
}

/// Closes every descriptor but stdin, stdout, stderr and `keep`; stdin becomes /dev/null.
fn close_all_but(keep: RawFd) {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto stdin, which this process no longer uses.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    // Closing by listing /proc/self/fd would allocate while iterating; a bounded loop does not.
    let max = 1024.max(keep + 1);
    for fd in 3..max {
        if fd != keep {
            // SAFETY: closing descriptors this child does not use; nothing else owns them in
            // this freshly forked, single-threaded process.
            unsafe { libc::close(fd) };
        }
    }
}

/// Starts `argv` with `connection` as its stdin and stdout; returns its pid and stderr.
fn spawn_connection(
    argv: &[String],
    connection: OwnedFd,
) -> Result<(libc::pid_t, std::process::ChildStderr)> {
    let (program, args) = argv.split_first().context("empty command")?;
    let stdin = connection.try_clone().context("dup")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(connection))
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    // Reaped by `Helper::reap` (waitpid), not by `Child`.
    let pid = libc::pid_t::try_from(child.id()).context("pid")?;
    let stderr = child.stderr.take().context("stderr")?;
    std::mem::forget(child);
    Ok((pid, stderr))
}
