//! The wait's deadline as a timer that lives on the ring (`IORING_OP_TIMEOUT`), armed once and
//! kept across waits, instead of a timeout passed with every `io_uring_enter`.
//!
//! A timeout passed to `io_uring_enter` (`IORING_ENTER_EXT_ARG`) starts a kernel timer at every
//! wait that sleeps and cancels it at every wake-up: a timer programmed and taken back per
//! packet turn of a thread that sleeps between packets (on a virtual machine, programming the
//! timer may trap to the hypervisor). Kept on the ring, the two nodes of a ping round trip
//! start 0.2 timers per round trip instead of 3.4 (docs/performance.md, "One timer on the ring
//! instead of one per wait"; no change in CPU time or latency measurable on that host).
//!
//! The rule: a wait that must end by `now + timeout` keeps the armed timer when it fires no
//! later than that (an earlier fire is a harmless early return: the caller computes its next
//! deadline and waits again), moves it earlier (`IORING_TIMEOUT_UPDATE`) when it would fire
//! too late, and arms one when none is. A thread whose deadline is a constant interval (a
//! worker's 100 ms) arms ten timers a second, however many packets it handles.
//!
//! Completions of the timer and of its updates carry the reserved `user_data` values below and
//! never reach the caller.

use std::io;
use std::time::{Duration, Instant};

use io_uring::types::Timespec;
use io_uring::{opcode, squeue};

use super::UringDriver;

/// The `user_data` of the deadline timer: its completion (fired or cancelled) disarms it.
pub(super) const TIMER_UD: u64 = u64::MAX - 1;
/// The `user_data` of updates to the deadline timer. Only a failed update completes
/// (`IOSQE_CQE_SKIP_SUCCESS`), with `ENOENT` when the timer fired first: its own completion
/// follows or came, and ends the wait.
pub(super) const TIMER_UPDATE_UD: u64 = u64::MAX - 2;

/// The deadline timer's state.
#[derive(Debug)]
pub(super) struct DeadlineTimer {
    /// When the armed timer fires (as this process measured it when arming: the kernel's is a
    /// little later), or `None` when no timer is armed.
    armed: Option<Instant>,
    /// The interval of the last timer or update pushed. The kernel copies it when it takes
    /// the SQE in, so it must stay put until then: boxed, freed after the ring is closed.
    timespec: Box<Timespec>,
    /// Timers armed and moved since the start.
    pub(super) programmed: u64,
}

impl DeadlineTimer {
    pub(super) fn new() -> Self {
        Self {
            armed: None,
            timespec: Box::new(Timespec::new()),
            programmed: 0,
        }
    }

    /// The timer's completion came: no timer is armed any more.
    pub(super) fn fired(&mut self) {
        self.armed = None;
    }
}

impl UringDriver {
    /// Makes sure the deadline timer fires no later than `timeout` from now, arming or moving
    /// it only when it would not. Returns false when the submission queue had no room (the
    /// caller then waits without sleeping: nothing would end the wait).
    pub(super) fn arm_deadline(&mut self, timeout: Duration) -> io::Result<bool> {
        let now = Instant::now();
        let wanted = now + timeout;
        if self.deadline.armed.is_some_and(|at| at <= wanted) {
            return Ok(true);
        }
        *self.deadline.timespec = Timespec::from(timeout);
        let ts: *const Timespec = &*self.deadline.timespec;
        let entry = if self.deadline.armed.is_some() {
            // No completion when it worked: one would end the wait it is meant to shorten.
            opcode::TimeoutUpdate::new(TIMER_UD, ts)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(TIMER_UPDATE_UD)
        } else {
            // Count 0: a pure timer, completing with ETIME when it fires.
            opcode::Timeout::new(ts).build().user_data(TIMER_UD)
        };
        if !self.push_sqe(&entry)? {
            return Ok(false);
        }
        self.deadline.armed = Some(wanted);
        self.deadline.programmed += 1;
        Ok(true)
    }
}
