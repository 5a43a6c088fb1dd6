//! Backends that failed to start, retried as timers of the main loop.
//!
//! A backend that cannot start (its port in use, an address not configured yet, a certificate
//! that does not load) must not take the node down with it, nor stay down once the cause is
//! gone: the node runs with the backends that work and tries a failing one again every
//! [`RETRY_INTERVAL`]. The first failure, and every change of its error, is logged at warn;
//! the same error again only at debug, so a port held for an hour does not fill the log.
//! `status` shows every backend: `up`, or `retrying` with the last error and the next try.
//!
//! The retries are timers of the main loop ([`Daemon::next_backend_retry`] bounds its wait),
//! not threads.

use super::*;

/// How long a failed backend waits before its next start attempt.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A configured backend that is not running because its start failed.
#[derive(Debug)]
pub(super) struct FailedBackend {
    /// Its configuration (what the next attempt starts).
    config: BackendConfig,
    /// The last start error.
    error: String,
    /// Failed start attempts so far.
    attempts: u64,
    /// When the first of them failed.
    since: SystemTime,
    /// When to try again.
    next_attempt: Instant,
}

impl Daemon {
    /// Starts a backend; if it cannot start, logs why and retries it every
    /// [`RETRY_INTERVAL`].
    pub(super) fn start_or_retry(&mut self, name: &str, backend: &BackendConfig) {
        if let Err(error) = self.start_backend(name, backend) {
            self.note_start_failure(name, backend, &error);
        }
    }

    /// Records a failed start attempt and schedules the next one.
    fn note_start_failure(&mut self, name: &str, backend: &BackendConfig, error: &anyhow::Error) {
        let error = format!("{error:#}");
        let next_attempt = Instant::now() + RETRY_INTERVAL;
        let retry_in = format!("{}s", RETRY_INTERVAL.as_secs());
        match self.failed.get_mut(name) {
            Some(failed) if failed.config == *backend => {
                failed.attempts += 1;
                failed.next_attempt = next_attempt;
                if failed.error == error {
                    tracing::debug!(backend = %name, %error, attempts = failed.attempts, "backend still failing to start");
                } else {
                    tracing::warn!(backend = %name, %error, %retry_in, "backend failed to start again, with another error; retrying");
                    failed.error = error;
                }
            }
            _ => {
                tracing::warn!(backend = %name, %error, %retry_in, "backend failed to start; retrying");
                self.failed.insert(
                    name.to_owned(),
                    FailedBackend {
                        config: backend.clone(),
                        error,
                        attempts: 1,
                        since: SystemTime::now(),
                        next_attempt,
                    },
                );
            }
        }
    }

    /// Tries again every failed backend whose time has come.
    pub(super) fn retry_backends(&mut self) {
        if self.stopping.is_some() || self.removed.is_some() {
            return;
        }
        let now = Instant::now();
        let due: Vec<(String, BackendConfig)> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next_attempt <= now)
            .map(|(name, f)| (name.clone(), f.config.clone()))
            .collect();
        for (name, config) in due {
            match self.start_backend(&name, &config) {
                Ok(()) => {
                    if let Some(failed) = self.failed.remove(&name) {
                        tracing::info!(backend = %name, failed_attempts = failed.attempts, "backend started");
                    }
                }
                Err(error) => self.note_start_failure(&name, &config, &error),
            }
        }
    }

    /// When the next failed backend is due, if any.
    pub(super) fn next_backend_retry(&self) -> Option<Instant> {
        self.failed.values().map(|f| f.next_attempt).min()
    }

    /// Forgets a failed backend (removed from the configuration); returns whether it was one.
    pub(super) fn forget_failed_backend(&mut self, name: &str) -> bool {
        let forgotten = self.failed.remove(name).is_some();
        if forgotten {
            tracing::info!(backend = %name, "stopping the retries of a removed backend");
        }
        forgotten
    }

    /// Gives a failed backend a new configuration for its next attempt (a cost change).
    pub(super) fn update_failed_backend(&mut self, name: &str, backend: &BackendConfig) {
        if let Some(failed) = self.failed.get_mut(name) {
            failed.config = backend.clone();
        }
    }

    /// The names of all configured backends, running or retrying.
    pub(super) fn backend_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .backends
            .keys()
            .chain(self.failed.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every configured backend as `status` shows it.
    pub(super) fn backend_reports(&self) -> Vec<control::BackendReport> {
        let now = Instant::now();
        let mut reports: Vec<control::BackendReport> = self
            .backends
            .iter()
            .map(|(name, running)| control::BackendReport {
                name: name.clone(),
                kind: running.config.type_name().to_owned(),
                state: "up".to_owned(),
                error: None,
                failed_attempts: 0,
                failing_since_unix: None,
                next_attempt_secs: None,
            })
            .collect();
        reports.extend(self.failed.iter().map(|(name, f)| {
            control::BackendReport {
                name: name.clone(),
                kind: f.config.type_name().to_owned(),
                state: "retrying".to_owned(),
                error: Some(f.error.clone()),
                failed_attempts: f.attempts,
                failing_since_unix: f
                    .since
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64()),
                next_attempt_secs: Some(
                    f.next_attempt.saturating_duration_since(now).as_secs_f64(),
                ),
            }
        }));
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }
}
