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

/// What a wake-up across CPUs costs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeCost {
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
            "a wake-up across CPUs costs {} µs after {} ms idle, {} µs after {} µs: {}",
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

/// Measures [`WakeCost`] with two threads pinned to the first two CPUs the node may use.
///
/// # Errors
/// The node may use one CPU only, or pinning or the socket pair failed.
pub fn measure() -> Result<WakeCost, String> {
    let cpus = allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let &[waker_cpu, sleeper_cpu, ..] = cpus.as_slice() else {
        return Err("one CPU".to_owned());
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
        let one = choose(Err("one CPU".to_owned()), INTERVAL);
        assert_eq!(one.interval, INTERVAL);
        assert_eq!(one.why, "not measured (one CPU)");
    }

    #[test]
    fn the_measurement_wakes_a_thread_on_another_cpu_and_restores_the_affinity() {
        let before = allowed_cpus().unwrap();
        match measure() {
            Ok(cost) => {
                eprintln!(
                    "measured here: {cost:?} -> {:?}",
                    choose(Ok(cost), INTERVAL)
                );
                assert!(before.len() >= 2);
                // A wake-up takes some time, and less than the sleep before it (the socket
                // pair would have to lose the message for it to take longer).
                assert!(
                    cost.cold > Duration::ZERO && cost.warm > Duration::ZERO,
                    "{cost:?}"
                );
                assert!(cost.cold < Duration::from_secs(1), "{cost:?}");
            }
            Err(why) => {
                assert_eq!(before.len(), 1, "not measured with {before:?}: {why}");
                eprintln!("SKIP: {why}");
            }
        }
        assert_eq!(allowed_cpus().unwrap(), before, "affinity restored");
    }
}
