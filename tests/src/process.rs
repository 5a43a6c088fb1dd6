//! Child processes with bounded lifetimes: [`ChildGuard`] and [`run_with_timeout`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tempdir::TestDir;

/// How often the harness polls a child or a condition.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// How many trailing lines of a log a failing test prints.
const TAIL_LINES: usize = 40;

/// Sends `signal` to the process group `pgid` (our children lead their own group).
fn kill_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a process group.
    // The group leader is our unreaped child, so its pid (and group id) cannot be reused.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether the child `pid` has exited, leaving it unreaped (a zombie still owns its pid and
/// process group id, so they cannot be recycled while we signal them).
fn exited_unreaped(pid: u32) -> bool {
    let pid: libc::id_t = pid;
    // SAFETY: siginfo_t is plain data; waitid writes into it and WNOWAIT leaves the child
    // waitable.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        rc == 0 && info.si_pid() != 0
    }
}

/// The state shared by a [`ChildGuard`] and the namespace that spawned it, so whichever is
/// dropped first kills the process. The child stays unreaped until we record its status, so
/// its pid cannot be recycled while we might still signal it.
#[derive(Debug)]
pub(crate) struct Shared {
    child: Child,
    status: Option<ExitStatus>,
}

impl Shared {
    /// Reaps the child if it has exited, first killing whatever it left in its process
    /// group (daemonized grandchildren), while its zombie still pins the group id.
    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() && exited_unreaped(self.child.id()) {
            kill_group(self.child.id(), libc::SIGKILL);
            self.status = self.child.try_wait().context("waiting for child")?;
        }
        Ok(self.status)
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; returns the exit status.
    pub(crate) fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.poll()? {
            return Ok(status);
        }
        kill_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.poll()? {
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        self.kill_hard()
    }

    /// SIGKILL to the group now; reaps the child.
    pub(crate) fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        kill_group(self.child.id(), libc::SIGKILL);
        let status = self.child.wait().context("reaping killed child")?;
        self.status = Some(status);
        Ok(status)
    }
}

pub(crate) type SharedChild = Arc<Mutex<Shared>>;

fn lock(shared: &SharedChild) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running process that is killed (SIGTERM, then SIGKILL after a grace period, to its whole
/// process group) when the guard is dropped. Its stdout and stderr go to files in the test
/// directory; when the guard is dropped during a panic it prints their last lines.
#[derive(Debug)]
pub struct ChildGuard {
    shared: SharedChild,
    label: String,
    pid: u32,
    stdout: PathBuf,
    stderr: PathBuf,
    stdin: Option<ChildStdin>,
    grace: Duration,
}

/// Whether a spawned process gets a pipe on stdin (else `/dev/null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinMode {
    /// Stdin is `/dev/null`.
    Null,
    /// Stdin is a pipe; write with [`ChildGuard::write_stdin`].
    Piped,
}

impl ChildGuard {
    /// Spawns `command` in its own process group with stdout and stderr captured to
    /// `<dir>/<label>.stdout` and `.stderr` (`label` is made unique in `dir`).
    pub fn spawn(
        mut command: Command,
        dir: &TestDir,
        label: &str,
        stdin: StdinMode,
    ) -> Result<ChildGuard> {
        let (stdout, stderr) = log_paths(dir.path(), label);
        let out = File::create(&stdout).with_context(|| format!("creating {stdout:?}"))?;
        let err = File::create(&stderr).with_context(|| format!("creating {stderr:?}"))?;
        command
            .stdout(out)
            .stderr(err)
            .stdin(match stdin {
                StdinMode::Null => Stdio::null(),
                StdinMode::Piped => Stdio::piped(),
            })
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        Ok(ChildGuard {
            shared: Arc::new(Mutex::new(Shared {
                child,
                status: None,
            })),
            label: label.to_owned(),
            pid,
            stdout,
            stderr,
            stdin,
            grace: Duration::from_secs(1),
        })
    }

    pub(crate) fn shared(&self) -> SharedChild {
        Arc::clone(&self.shared)
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label given at spawn time (unique within the test directory).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sets how long [`terminate`](Self::terminate) and drop wait after SIGTERM before
    /// SIGKILL (default 1 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The path of the captured stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The path of the captured stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Writes to the process's stdin (spawned with [`StdinMode::Piped`]).
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("stdin was not piped or is closed")?;
        stdin.write_all(data).context("writing to child stdin")?;
        stdin.flush().context("flushing child stdin")
    }

    /// Closes stdin (the process sees end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        lock(&self.shared).poll()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.label,
                    self.pid
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until stdout or stderr contains `pattern` (a plain substring) and returns the
    /// first line containing it. Fails on timeout, or early if the process exits without
    /// printing it; the error includes the tail of both logs.
    pub fn wait_for_output(&self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check the exit status before reading, so output written just before exit counts.
            let exited = self.try_status()?;
            for text in [self.stdout(), self.stderr()] {
                if let Some(line) = text.lines().find(|l| l.contains(pattern)) {
                    return Ok(line.to_owned());
                }
            }
            if let Some(status) = exited {
                bail!(
                    "{} exited ({status}) without printing {pattern:?}\n{}",
                    self.label,
                    self.log_tails()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {pattern:?} within {timeout:?}\n{}",
                    self.label,
                    self.log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM to the process group, SIGKILL after the grace period; returns the status.
    pub fn terminate(&self) -> Result<ExitStatus> {
        lock(&self.shared).terminate(self.grace)
    }

    /// SIGKILL to the process group now (a crash), and reaps it; returns the status.
    pub fn kill_hard(&self) -> Result<ExitStatus> {
        lock(&self.shared).kill_hard()
    }

    /// The last lines of stdout and stderr, labelled, for error messages.
    pub fn log_tails(&self) -> String {
        format!(
            "--- {} stdout ({}):\n{}--- {} stderr ({}):\n{}",
            self.label,
            self.stdout.display(),
            tail(&self.stdout(), TAIL_LINES),
            self.label,
            self.stderr.display(),
            tail(&self.stderr(), TAIL_LINES),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stdin = None;
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        if let Err(e) = lock(&self.shared).terminate(self.grace) {
            eprintln!("stopping {} (pid {}): {e:#}", self.label, self.pid);
        }
    }
}

/// Returns `<dir>/<label>[.N].stdout` and `.stderr`, picking N so no earlier log is clobbered.
fn log_paths(dir: &Path, label: &str) -> (PathBuf, PathBuf) {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut n = 0u32;
    loop {
        let stem = if n == 0 {
            clean.clone()
        } else {
            format!("{clean}.{n}")
        };
        let out = dir.join(format!("{stem}.stdout"));
        // create_new makes the reservation race-free between threads of one test.
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .is_ok()
        {
            return (out, dir.join(format!("{stem}.stderr")));
        }
        n += 1;
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of `text`, each ending in a newline.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// Prints the last lines of every `*.stdout` / `*.stderr` log in `dir` to stderr.
pub fn dump_logs(dir: &TestDir) {
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "stdout" || ext == "stderr")
        })
        .collect();
    logs.sort();
    for log in logs {
        let text = read_lossy(&log);
        if !text.is_empty() {
            eprintln!("--- {}:\n{}", log.display(), tail(&text, TAIL_LINES));
        }
    }
}

/// Runs `command` to completion with captured output, in its own process group, killing the
/// group if it runs longer than `timeout` (then the error carries the partial output).
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shown = format!("{command:?}");
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    // Readers append as they go, so a process that escaped our group and still holds a
    // pipe open cannot make us wait forever: we take what arrived and move on.
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .map(|stream| {
        let sink = Arc::new(Mutex::new((Vec::new(), false)));
        let writer = Arc::clone(&sink);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            if let Some(mut s) = stream {
                while let Ok(n @ 1..) = s.read(&mut chunk) {
                    let mut buf = writer.lock().unwrap_or_else(PoisonError::into_inner);
                    buf.0.extend_from_slice(&chunk[..n]);
                }
            }
            writer.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        });
        sink
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if exited_unreaped(child.id()) {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(POLL);
    }
    // Kill the group while the leader's zombie pins its id: on timeout that is the command
    // itself, otherwise grandchildren that would keep the pipes open.
    kill_group(child.id(), libc::SIGKILL);
    let status = child.wait().context("reaping command")?;
    let eof = Instant::now() + Duration::from_secs(2);
    while Instant::now() < eof
        && !readers
            .iter()
            .all(|r| r.lock().unwrap_or_else(PoisonError::into_inner).1)
    {
        std::thread::sleep(POLL);
    }
    let [out, err] =
        readers.map(|r| std::mem::take(&mut r.lock().unwrap_or_else(PoisonError::into_inner).0));
    let output = Output {
        status,
        stdout: out,
        stderr: err,
    };
    if timed_out {
        bail!(
            "{shown} timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Like [`run_with_timeout`] but fails unless the command exits with status 0; returns stdout.
pub fn run_ok(command: Command, timeout: Duration) -> Result<String> {
    let shown = format!("{command:?}");
    let output = run_with_timeout(command, timeout)?;
    check_status(&shown, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails with the command's stderr unless it exited with status 0.
pub(crate) fn check_status(shown: &str, output: &Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            describe(output.status),
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(())
}

/// "exit 1" or "signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Whether a process with this pid exists (`kill(pid, 0)`), zombies included.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
