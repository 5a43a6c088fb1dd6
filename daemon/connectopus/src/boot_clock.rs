//! The node's clock for the core: `CLOCK_BOOTTIME`, which keeps counting while the machine is
//! suspended (`CLOCK_MONOTONIC`, behind `Instant`, stops). Lease timers must count suspend
//! time: a holder that slept through its lease must find it over when it wakes, as its issuer
//! does (docs/dynamic-mesh.md §1.2, "Clock").

use std::time::Duration;

/// A point on `CLOCK_BOOTTIME`; what the loop, the workers and DTLS measure time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    pub fn now() -> Self {
        Self(boottime())
    }

    /// Time since `self`, suspend included.
    pub fn elapsed(&self) -> Duration {
        boottime().saturating_sub(self.0)
    }
}

fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at a live,
    // writable timespec; CLOCK_BOOTTIME exists since Linux 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    if rc != 0 {
        // Never on Linux; a clock that stands still is safer than a panic.
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward() {
        let start = BootInstant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
        assert!(BootInstant::now() >= start);
    }
}
