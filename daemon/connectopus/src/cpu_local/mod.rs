//! The CPU-local data path (`--cpu-local`): each dataplane worker thread pinned to its own
//! CPU, and a packet handled by the worker of the CPU it appeared on.
//!
//! On the 2-vCPU guests here a thread woken on another CPU takes about 20 µs to run, on the
//! same CPU about 3 µs (`perf bench sched pipe`: 40–46 µs against 5.5–6.3 µs a round trip).
//! A ping through a DTLS pair wakes four node threads and the pinger; with every one of them on
//! the CPU that holds the packet, the round trip over the raw link's took 55–57 µs instead of
//! 160–174 (docs/performance.md, "The CPU-local data path"). Two parts keep a packet where it
//! is:
//! - out of the TUN device, the steering program ([`steering`]) puts a flow in the queue of
//!   the CPU that produced it (and keeps a busy flow where it is, so it stays in order);
//! - into a DTLS port, the reuseport program ([`reuseport`]) gives an application-data record
//!   to the socket of the worker on the CPU that received it, and every worker thread can open
//!   every established link's records (the link's receiving direction is shared behind a
//!   lock, which one CPU takes at a time in the common case).

pub mod reuseport;
pub mod steering;

use std::io;

/// The CPU each worker thread runs on (worker `i` on `cpus[i]`), or why the data path is
/// not CPU-local.
pub fn choose(wanted: bool, threads: usize) -> Result<Vec<usize>, String> {
    if !wanted {
        return Err("not asked for (`cpu_local: true`, --cpu-local)".to_owned());
    }
    if threads < 2 {
        return Err("no worker threads".to_owned());
    }
    let cpus = allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    if cpus.len() < threads {
        return Err(format!(
            "{threads} worker threads for {} CPUs: one CPU each is needed",
            cpus.len()
        ));
    }
    Ok(cpus.into_iter().take(threads).collect())
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t whose size is passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below `CPU_SETSIZE`, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// The kernel refuses (the CPU is not allowed, or a seccomp filter forbids the call).
pub fn pin_this_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    set_affinity(&[cpu])
}

/// Lets the calling thread run on `cpus` only.
///
/// # Errors
/// The kernel refuses (no CPU of the set is allowed, or a seccomp filter forbids the call).
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below `CPU_SETSIZE`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a live cpu_set_t whose size is passed; 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    errno_unless_zero(rc)
}

/// A system call's return code `rc` as a result: `Ok` for 0, else the thread's `errno`.
fn errno_unless_zero(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_needs_asking_threads_and_a_cpu_for_each() {
        assert!(choose(false, 2).is_err());
        assert!(choose(true, 1).is_err());
        let cpus = allowed_cpus().expect("affinity");
        match choose(true, 2) {
            Ok(chosen) => assert_eq!(chosen, cpus[..2].to_vec()),
            Err(why) => {
                assert!(cpus.len() < 2);
                assert!(why.contains("one CPU each"), "{why}");
            }
        }
        assert!(choose(true, cpus.len() + 1).is_err());
    }
}
