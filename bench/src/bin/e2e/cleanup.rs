//! Cleanup on Ctrl-C: the namespaces and files the harness made, and a SIGINT/SIGTERM
//! handler that stops everything running in them.
//!
//! Normal cleanup is by `Drop`: each subject's processes, then the namespaces (with every
//! process still inside) and the test directories. On SIGINT, SIGTERM or SIGHUP the handler
//! marks the run interrupted and kills every process in the harness's namespaces, so
//! whatever the main thread waits on (an iperf3 run, a ping) ends at once; the main thread
//! then stops measuring and unwinds through the same `Drop` guards. Should it not finish
//! within [`GRACE`], the handler deletes the namespaces and files itself and exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long the main thread gets to unwind after a signal.
const GRACE: Duration = Duration::from_secs(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Whether a signal asked the harness to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once a signal arrived.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Records a namespace the harness created (removed by its guard, or by the handler).
pub fn remember_namespace(name: &str) {
    NAMESPACES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(name.to_owned());
}

/// Records a file outside the test directory that a started program creates.
pub fn remember_file(path: &Path) {
    FILES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_owned());
}

/// Forgets a file its owner removed.
pub fn forget_file(path: &Path) {
    FILES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| p != path);
}

fn ip(args: &[&str]) -> Option<String> {
    let output = Command::new("ip").args(args).output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Kills (SIGKILL) every process inside the recorded namespaces.
fn kill_everything() {
    let namespaces = NAMESPACES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for ns in namespaces {
        let pids = ip(&["netns", "pids", &ns]).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid > 1 {
                // SAFETY: plain signal delivery to a process inside our own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Deletes the recorded namespaces and files (the last resort when the main thread hangs).
fn remove_everything() {
    kill_everything();
    for ns in NAMESPACES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
    {
        let _ = ip(&["netns", "del", &ns]);
    }
    for file in FILES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
    {
        let _ = std::fs::remove_file(file);
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
///
/// # Errors
/// A handler was already installed.
pub fn install_handler() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("e2e: still cleaning up; please wait");
            return;
        }
        eprintln!("e2e: interrupted; stopping everything the harness started");
        kill_everything();
        std::thread::sleep(GRACE);
        eprintln!("e2e: the main thread did not finish cleaning up; removing namespaces");
        remove_everything();
        std::process::exit(130);
    })?;
    Ok(())
}
