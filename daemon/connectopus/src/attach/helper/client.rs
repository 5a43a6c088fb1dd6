//! The node's side of the attach helper: starting it (or taking over the one a previous image
//! handed across a re-exec), asking it for namespaces and connections, and reading its replies.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{
    FromHelper, HANDOVER_ENV, RESET_TIMEOUT, Received, STOP_GRACE, SUBCOMMAND, ToHelper, recv,
    registry_dir, send,
};
use crate::attach::sys;

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
                                tracing::warn!(connection = id, %error, "a process the attach helper was asked to start did not start");
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
