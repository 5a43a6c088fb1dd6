//! Whether the dataplane's idle wake-ups pay on this host, measured once at start.
//!
//! Idle wake-ups (`uring_io::Config::idle_wake`) keep a dataplane thread waking every 200 µs
//! for a while after a receive, so that its CPU never halts long between the packets of sparse
//! traffic. On a virtual machine whose halted vCPUs take the hypervisor 100 µs or more to run
//! again, that made an idle round trip 205 → 43 µs; on a host where a halted vCPU resumes in
//! a few microseconds it buys nothing and costs: 2.2× the CPU time of the same pings
//! (docs/performance.md, "Idle wake-ups chosen per host").
//!
//! So the node measures what they would save: how long a thread blocked on another CPU takes
//! to wake up after that CPU was idle for 3 ms (cold) and after 100 µs (warm, what idle
//! wake-ups keep it at), the median of a few samples each, about 40 ms in all. When the cold
//! wake-up costs [`WORTH_KEEPING_WARM`] more than the warm one, the dataplane keeps its CPUs
//! warm. `CONNECTOPUS_IDLE_WAKE_US` skips the measurement and decides.
//!
//! A node that may use one CPU only has no other CPU to wake a thread on; there the same
//! question is asked of its one CPU: how late a thread's sleep of 3 ms ends (the timer must
//! run a CPU that was idle that long) against one of 100 µs (timer slack 1 ns for the
//! measuring thread, so the lateness is the wake-up's, not the slack's).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::cpu_local::{allowed_cpus, set_affinity};

/// How much slower a cold wake-up than a warm one makes idle wake-ups worth their CPU time.
pub const WORTH_KEEPING_WARM: Duration = Duration::from_micros(40);

/// Idle before a cold sample: long enough for an idle vCPU to halt.
const COLD_GAP: Duration = Duration::from_millis(3);
/// Idle before a warm sample: shorter than the idle wake-ups' 200 µs.
const WARM_GAP: Duration = Duration::from_micros(100);
/// Samples of each kind (odd: the median is one of them).
const SAMPLES: usize = 11;

/// What was woken in the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A thread blocked on another CPU, by a message.
    AcrossCpus,
    /// A thread sleeping on the node's one CPU, by its timer (how late it woke).
    Timer,
}

/// What a wake-up costs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeCost {
    pub woken: Woken,
    /// After the woken thread's CPU was idle for [`COLD_GAP`] (median).
    pub cold: Duration,
    /// After [`WARM_GAP`] (median).
    pub warm: Duration,
}

/// The idle wake-up interval the dataplane runs with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleWakeChoice {
    /// Zero: off.
    pub interval: Duration,
    /// What `status` shows.
    pub why: String,
}

/// Decides from what was measured (or why nothing was): idle wake-ups of `interval` when a
/// cold wake-up costs at least [`WORTH_KEEPING_WARM`] more than a warm one, or when nothing
/// could be measured (the behaviour before the measurement); off otherwise.
pub fn choose(measured: Result<WakeCost, String>, interval: Duration) -> IdleWakeChoice {
    let cost = match measured {
        Ok(cost) => cost,
        Err(why) => {
            return IdleWakeChoice {
                interval,
                why: format!("not measured ({why})"),
            };
        }
    };
    let pays = cost.cold.saturating_sub(cost.warm) >= WORTH_KEEPING_WARM;
    IdleWakeChoice {
        interval: if pays { interval } else { Duration::ZERO },
        why: format!(
            "{} {} µs after {} ms idle, {} µs after {} µs: {}",
            match cost.woken {
                Woken::AcrossCpus => "a wake-up across CPUs costs",
                Woken::Timer => "a timer wakes the one CPU late by",
            },
            cost.cold.as_micros(),
            COLD_GAP.as_millis(),
            cost.warm.as_micros(),
            WARM_GAP.as_micros(),
            if pays {
                "keeping the CPUs warm pays"
            } else {
                "nothing to keep warm"
            }
        ),
    }
}

/// Measures [`WakeCost`] with two threads pinned to the first two CPUs the node may use, or
/// with a timer when it may use one.
///
/// # Errors
/// Pinning, the socket pair or the measuring thread failed.
pub fn measure() -> Result<WakeCost, String> {
    let cpus = allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let &[waker_cpu, sleeper_cpu, ..] = cpus.as_slice() else {
        return measure_timer();
    };
    let (mut to_sleeper, mut sleeper_end) =
        UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
    let base = Instant::now();
    let sleeper = std::thread::Builder::new()
        .name("wake-cost".to_owned())
        .spawn(move || -> Result<(), String> {
            pin_to(sleeper_cpu).map_err(|e| format!("pinning to CPU {sleeper_cpu}: {e}"))?;
            // Each sample: the waker's send time in, the moment this thread ran again out.
            let mut sent = [0u8; 16];
            while sleeper_end.read_exact(&mut sent).is_ok() {
                let woke = base.elapsed().as_nanos();
                let _ = sleeper_end.write_all(&woke.to_le_bytes());
            }
            Ok(())
        })
        .map_err(|e| format!("spawning: {e}"))?;
    let measured = (|| {
        pin_to(waker_cpu).map_err(|e| format!("pinning to CPU {waker_cpu}: {e}"))?;
        let mut sample = |gap: Duration| -> Result<Duration, String> {
            std::thread::sleep(gap);
            let sent = base.elapsed().as_nanos();
            to_sleeper
                .write_all(&sent.to_le_bytes())
                .map_err(|e| format!("socket pair: {e}"))?;
            let mut woke = [0u8; 16];
            to_sleeper
                .read_exact(&mut woke)
                .map_err(|e| format!("socket pair: {e}"))?;
            let woke = u128::from_le_bytes(woke);
            Ok(Duration::from_nanos(
                u64::try_from(woke.saturating_sub(sent)).unwrap_or(u64::MAX),
            ))
        };
        let mut cold = Vec::with_capacity(SAMPLES);
        let mut warm = Vec::with_capacity(SAMPLES);
        // Alternated, so that a burst of other work on the host falls on both kinds.
        for _ in 0..SAMPLES {
            cold.push(sample(COLD_GAP)?);
            warm.push(sample(WARM_GAP)?);
        }
        Ok(WakeCost {
            woken: Woken::AcrossCpus,
            cold: median(&mut cold),
            warm: median(&mut warm),
        })
    })();
    // The original affinity back: this is the node's main thread.
    let _ = set_affinity(&cpus);
    drop(to_sleeper);
    let pinned = sleeper
        .join()
        .unwrap_or_else(|_| Err("the sleeping thread panicked".to_owned()));
    pinned?;
    measured
}

/// Measures [`WakeCost`] on one CPU: how late sleeps of [`COLD_GAP`] and [`WARM_GAP`] end, on
/// a thread of its own whose timer slack is 1 ns.
fn measure_timer() -> Result<WakeCost, String> {
    let thread = std::thread::Builder::new()
        .name("wake-cost".to_owned())
        .spawn(|| -> Result<WakeCost, String> {
            // SAFETY: PR_SET_TIMERSLACK takes the slack in nanoseconds and changes only the
            // calling thread's timers; no pointer is passed.
            if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) } != 0 {
                return Err(format!(
                    "PR_SET_TIMERSLACK: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let late = |gap: Duration| {
                let start = Instant::now();
                std::thread::sleep(gap);
                start.elapsed().saturating_sub(gap)
            };
            let mut cold = Vec::with_capacity(SAMPLES);
            let mut warm = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES {
                cold.push(late(COLD_GAP));
                warm.push(late(WARM_GAP));
            }
            Ok(WakeCost {
                woken: Woken::Timer,
                cold: median(&mut cold),
                warm: median(&mut warm),
            })
        })
        .map_err(|e| format!("spawning: {e}"))?;
    thread
        .join()
        .unwrap_or_else(|_| Err("the measuring thread panicked".to_owned()))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    set_affinity(&[cpu])
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_micros(200);

    /// The choice for a cold and a warm wake-up of so many µs.
    fn chosen(cold: u64, warm: u64) -> IdleWakeChoice {
        let us = Duration::from_micros;
        choose(
            Ok(WakeCost {
                woken: Woken::AcrossCpus,
                cold: us(cold),
                warm: us(warm),
            }),
            INTERVAL,
        )
    }

    #[test]
    fn idle_wake_ups_only_where_a_cold_wake_up_costs_more() {
        // The Intel guest: a halted vCPU takes the hypervisor ~150 µs.
        let intel = chosen(157, 9);
        assert_eq!(intel.interval, INTERVAL);
        assert_eq!(
            intel.why,
            "a wake-up across CPUs costs 157 µs after 3 ms idle, 9 µs after 100 µs: \
             keeping the CPUs warm pays"
        );
        // The AMD guest: 25 against 16.
        let amd = chosen(25, 16);
        assert_eq!(amd.interval, Duration::ZERO);
        assert!(amd.why.ends_with(": nothing to keep warm"), "{amd:?}");
        // A warm wake-up that happened to be slower decides nothing silly.
        assert_eq!(chosen(10, 90).interval, Duration::ZERO);
        // Just at the threshold: on; just below: off.
        assert_eq!(chosen(50, 10).interval, INTERVAL);
        assert_eq!(chosen(49, 10).interval, Duration::ZERO);
        // Unmeasured: as configured, and why.
        let failed = choose(Err("socket pair: out of memory".to_owned()), INTERVAL);
        assert_eq!(failed.interval, INTERVAL);
        assert_eq!(failed.why, "not measured (socket pair: out of memory)");
        // One CPU: measured with a timer, said so.
        let one = choose(
            Ok(WakeCost {
                woken: Woken::Timer,
                cold: Duration::from_micros(57),
                warm: Duration::from_micros(37),
            }),
            INTERVAL,
        );
        assert_eq!(one.interval, Duration::ZERO);
        assert_eq!(
            one.why,
            "a timer wakes the one CPU late by 57 µs after 3 ms idle, 37 µs after 100 µs: \
             nothing to keep warm"
        );
    }

    #[test]
    fn the_measurement_wakes_a_thread_on_another_cpu_and_restores_the_affinity() {
        let before = allowed_cpus().unwrap();
        if before.len() < 2 {
            eprintln!("SKIP: this process may use one CPU only ({before:?})");
            return;
        }
        match measure() {
            Ok(cost) => {
                eprintln!(
                    "measured here: {cost:?} -> {:?}",
                    choose(Ok(cost), INTERVAL)
                );
                assert_eq!(cost.woken, Woken::AcrossCpus);
                // A wake-up takes some time, and less than the sleep before it (the socket
                // pair would have to lose the message for it to take longer).
                assert!(
                    cost.cold > Duration::ZERO && cost.warm > Duration::ZERO,
                    "{cost:?}"
                );
                assert!(cost.cold < Duration::from_secs(1), "{cost:?}");
            }
            Err(why) => panic!("not measured with {before:?}: {why}"),
        }
        assert_eq!(allowed_cpus().unwrap(), before, "affinity restored");
    }

    /// Restricted to one CPU, the node measures how late a timer wakes that CPU.
    #[test]
    fn one_cpu_is_measured_with_a_timer() {
        let before = allowed_cpus().unwrap();
        let cost = std::thread::spawn(move || {
            set_affinity(&before[..1]).unwrap();
            measure()
        })
        .join()
        .unwrap()
        .unwrap();
        eprintln!("measured here: {cost:?}");
        assert_eq!(cost.woken, Woken::Timer);
        // How late a sleep ends: less than a second, and not the sleep itself again.
        assert!(cost.cold < Duration::from_secs(1), "{cost:?}");
        assert!(cost.warm < Duration::from_secs(1), "{cost:?}");
    }
}
