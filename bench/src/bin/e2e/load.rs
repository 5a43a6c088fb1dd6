//! CPU load for the latency test under load: processes that only spin.
//!
//! Each burner is `sh -c 'while :; do :; done'` in a session of its own, so the scheduler
//! treats it as a separate job (with `kernel.sched_autogroup_enabled`, as it treats another
//! user's build or another service), at nice 0 like the subjects. They never sleep, so while
//! they run every core has a runnable task besides whatever a tunnel wakes up to forward a
//! packet: each round trip then measures how soon the scheduler runs the woken threads.
//! Dropping [`Burners`] kills them; should the harness die first, the kernel kills them
//! (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// Processes spinning on the CPUs until dropped.
#[derive(Debug)]
pub struct Burners {
    children: Vec<Child>,
}

impl Burners {
    /// Starts `n` burners and gives them a moment to be running.
    ///
    /// # Errors
    /// A burner could not be started (the ones started are killed).
    pub fn start(n: usize) -> Result<Burners> {
        let mut burners = Burners {
            children: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let mut command = Command::new("sh");
            command
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: getpid takes no arguments and cannot fail.
            let harness = unsafe { libc::getpid() };
            // SAFETY: between fork and exec the closure calls only async-signal-safe
            // functions (setsid, prctl, getppid) and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The harness died before the death signal was armed: do not spin on.
                    if libc::getppid() != harness {
                        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
            let child = command.spawn().context("starting a CPU burner (sh)")?;
            burners.children.push(child);
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(burners)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
