//! The helper's side: the process that creates namespaces through their holders, starts the
//! configured programs per connection, logs their stderr and reaps them.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{FromHelper, MAX_LINE, NamespaceSetup, Received, STOP_GRACE, ToHelper, recv, send};
use crate::attach::sys;

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
                crate::attach::holder::run(&setup, theirs)
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
            match recv::<crate::attach::holder::Report>(sock) {
                Ok(Some(Received {
                    message:
                        crate::attach::holder::Report::Service {
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
        match recv::<crate::attach::holder::Report>(sock) {
            Ok(Some(Received {
                message: crate::attach::holder::Report::Ready,
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
                message: crate::attach::holder::Report::Failed { error },
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
