//! What the loop publishes for the API threads (`crate::api::state`): the running
//! configuration's token keys as soon as it changes (a revocation applies at the next turn),
//! and, while the mesh API port is served, the status report once a second.

use super::*;

/// How often the status report for the API is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The loop's side of the API state.
#[derive(Debug)]
pub(crate) struct ApiPublisher {
    state: crate::api::ApiState,
    keys_version: u64,
    keys_source: Option<Arc<[u8]>>,
    /// Publish status reports (the mesh port is served).
    status: bool,
    status_at: Option<Instant>,
}

impl ApiPublisher {
    pub(crate) fn new(state: crate::api::ApiState, config: &MeshConfig, status: bool) -> Self {
        Self {
            state,
            keys_version: config.global.version,
            keys_source: Some(config.source().clone()),
            status,
            status_at: None,
        }
    }
}

impl Daemon {
    /// Publishes the token keys when the running configuration changed, and the status report
    /// when it is served and a second has passed.
    pub(super) fn publish_api(&mut self) {
        let changed = self.api.keys_version != self.config.global.version
            || !self
                .api
                .keys_source
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, self.config.source()));
        if changed {
            self.api
                .state
                .publish_keys(crate::api::AuthKeys::of(&self.config));
            self.api.keys_version = self.config.global.version;
            self.api.keys_source = Some(self.config.source().clone());
        }
        if self.api.status
            && self
                .api
                .status_at
                .is_none_or(|at| at.elapsed() >= STATUS_INTERVAL)
        {
            let report = self.status();
            self.api.state.publish_status(report);
            self.api.status_at = Some(Instant::now());
        }
    }
}
