//! Polling with a deadline.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Calls `condition` every `poll` until it returns `true` (then `Ok`) or `timeout` passes
/// (then an error saying how long it waited). The condition is always tried at least once,
/// and once more at the deadline.
pub fn wait_until(
    timeout: Duration,
    poll: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    poll_until(timeout, poll, || condition().then_some(())).map(drop)
}

/// Calls `probe` every `poll` until it returns `Some(value)` (then `Ok(value)`) or `timeout`
/// passes.
pub fn poll_until<T>(
    timeout: Duration,
    poll: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let past_deadline = start.elapsed() >= timeout;
        if let Some(value) = probe() {
            return Ok(value);
        }
        if past_deadline {
            bail!("condition not met within {timeout:?}");
        }
        let left = timeout.saturating_sub(start.elapsed());
        std::thread::sleep(poll.min(left).max(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_times_out() {
        let mut n = 0;
        let ms = Duration::from_millis(1);
        assert!(
            wait_until(Duration::from_secs(1), ms, || {
                n += 1;
                n == 3
            })
            .is_ok()
        );
        assert_eq!(n, 3);
        let start = Instant::now();
        assert!(wait_until(Duration::from_millis(30), ms, || false).is_err());
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(poll_until(Duration::ZERO, ms, || Some(7)).ok(), Some(7));
    }
}
