//! What the main loop shares with the API threads: the running configuration's keys and
//! mesh (to check tokens), and the latest status report (for the UI's polling). The loop
//! publishes, the API threads copy out an `Arc`; neither waits on the other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectopus_config::SshPublicKey;
use connectopus_config::token::TokenScope;

use crate::control::StatusReport;

/// The keys and mesh tokens are checked against: the running configuration's.
#[derive(Debug, Clone)]
pub struct AuthKeys {
    /// This mesh.
    pub scope: TokenScope,
    /// `global.authorized_keys`.
    pub authorized: Vec<SshPublicKey>,
    /// `global.revoked_keys`.
    pub revoked: Vec<SshPublicKey>,
}

impl AuthKeys {
    /// The keys of `config`.
    pub fn of(config: &connectopus_config::MeshConfig) -> AuthKeys {
        AuthKeys {
            scope: TokenScope {
                domain: config.global.domain.clone(),
                subnet: config.global.subnet.to_string(),
            },
            authorized: config.global.authorized_keys.clone(),
            revoked: config.global.revoked_keys.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    keys: Arc<AuthKeys>,
    status: Option<(Instant, Arc<StatusReport>)>,
}

/// The state the loop publishes for the API threads.
#[derive(Debug, Clone)]
pub struct ApiState(Arc<Mutex<Shared>>);

impl ApiState {
    /// Starts with the keys of the configuration the node starts with.
    pub fn new(keys: AuthKeys) -> ApiState {
        ApiState(Arc::new(Mutex::new(Shared {
            keys: Arc::new(keys),
            status: None,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        match self.0.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The keys tokens are checked against now.
    pub fn keys(&self) -> Arc<AuthKeys> {
        self.with(|s| s.keys.clone())
    }

    /// Replaces the keys (the loop, when it runs a new configuration).
    pub fn publish_keys(&self, keys: AuthKeys) {
        let keys = Arc::new(keys);
        self.with(|s| s.keys = keys);
    }

    /// The latest status report, if the loop published one at most `max_age` ago (an idle
    /// loop turns, and so publishes, only every few seconds).
    pub fn status(&self, max_age: Duration) -> Option<Arc<StatusReport>> {
        self.with(|s| {
            s.status
                .as_ref()
                .filter(|(at, _)| at.elapsed() <= max_age)
                .map(|(_, report)| report.clone())
        })
    }

    /// Replaces the status report (the loop, about once a second).
    pub fn publish_status(&self, report: StatusReport) {
        let report = Arc::new(report);
        self.with(|s| s.status = Some((Instant::now(), report)));
    }
}
