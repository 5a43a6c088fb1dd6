//! Reloading the configuration files (SIGHUP or `connectopus reload`), and saying what it did.

use super::*;
use crate::control::{ReloadOutcome, ReloadResult};

impl Daemon {
    /// Re-reads the configuration file and its signature and takes them like any candidate
    /// (signature, version rule, persist, apply). Returns what happened and what changed.
    pub(super) fn reload(&mut self) -> ReloadOutcome {
        let version = self.config.global.version;
        let refused = |error: String| ReloadOutcome {
            result: ReloadResult::Refused,
            version,
            changes: Vec::new(),
            error: Some(error),
        };
        let read = std::fs::read(&self.config_path).and_then(|bytes| {
            std::fs::read(crate::config_cli::signature_path(&self.config_path))
                .map(|sig| (bytes, sig))
        });
        let (bytes, signature) = match read {
            Ok(pair) => pair,
            Err(error) => {
                tracing::error!(path = %self.config_path.display(), %error, "reload failed");
                return refused(format!(
                    "reading {} and its signature: {error}",
                    self.config_path.display()
                ));
            }
        };
        if bytes.as_slice() == &**self.config.source() {
            tracing::info!("reload: the configuration file is unchanged");
            return ReloadOutcome {
                result: ReloadResult::Unchanged,
                version,
                changes: Vec::new(),
                error: None,
            };
        }
        let old = self.config.clone();
        match self.accept_config(&bytes, &signature, reconcile::ConfigSource::Reload) {
            Ok(version) => {
                // The core offers it to the neighbours first (it may apply at once when there
                // are none): describe the change against what will run.
                let pending = self
                    .pending_config
                    .as_ref()
                    .filter(|(p, _)| p.global.version == version);
                let result = if pending.is_some() {
                    ReloadResult::Accepted
                } else if self.removed.is_some() {
                    ReloadResult::Removed
                } else if self.restart {
                    ReloadResult::Restarting
                } else {
                    ReloadResult::Applied
                };
                let new = pending.map_or(&self.config, |(p, _)| p);
                ReloadOutcome {
                    result,
                    version,
                    changes: describe_changes(&old, new, &self.id),
                    error: None,
                }
            }
            Err(error) => {
                let error = format!("{error:#}");
                tracing::error!(%error, "reload refused");
                refused(error)
            }
        }
    }
}

/// Says what differs between two configurations, from this node's point of view.
pub(super) fn describe_changes(old: &MeshConfig, new: &MeshConfig, id: &str) -> Vec<String> {
    let mut changes = Vec::new();
    let (a, b) = (&old.global, &new.global);
    if a.version != b.version {
        changes.push(format!("global.version {} -> {}", a.version, b.version));
    }
    if a.domain != b.domain {
        changes.push(format!("global.domain {} -> {}", a.domain, b.domain));
    }
    if a.subnet != b.subnet {
        changes.push(format!("global.subnet {} -> {}", a.subnet, b.subnet));
    }
    if a.authorized_keys != b.authorized_keys {
        changes.push("global.authorized_keys changed".to_owned());
    }
    if a.revoked_keys != b.revoked_keys {
        changes.push("global.revoked_keys changed".to_owned());
    }
    if a.timers != b.timers {
        changes.push("global.timers changed".to_owned());
    }
    if a.ephemeral != b.ephemeral {
        changes.push("global.ephemeral changed".to_owned());
    }
    for name in old.nodes.keys() {
        if !new.nodes.contains_key(name) {
            changes.push(format!("nodes.{name} removed"));
        }
    }
    for (name, node) in &new.nodes {
        match old.nodes.get(name) {
            None => changes.push(format!("nodes.{name} added")),
            Some(before) if before == node => {}
            Some(before) if name == id => {
                let mut rest = before.clone();
                rest.backends = node.backends.clone();
                if &rest != node {
                    changes.push(format!("nodes.{name} changed (besides its backends)"));
                }
                for backend in before.backends.keys() {
                    if !node.backends.contains_key(backend) {
                        changes.push(format!("nodes.{name}.backends.{backend} removed"));
                    }
                }
                for (backend, config) in &node.backends {
                    match before.backends.get(backend) {
                        None => changes.push(format!("nodes.{name}.backends.{backend} added")),
                        Some(was) if was == config => {}
                        Some(was) if was.cost() != config.cost() => {
                            changes.push(format!(
                                "nodes.{name}.backends.{backend} changed (cost {} -> {})",
                                was.cost(),
                                config.cost()
                            ));
                        }
                        Some(_) => {
                            changes.push(format!("nodes.{name}.backends.{backend} changed"));
                        }
                    }
                }
            }
            Some(_) => changes.push(format!("nodes.{name} changed")),
        }
    }
    changes
}
