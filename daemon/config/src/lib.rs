//! Connectopus mesh configuration: one YAML file describes the whole mesh.
//!
//! [`load`] parses the exact bytes it is given (the same bytes a signature is verified over),
//! validates them offline and returns a typed [`MeshConfig`]; [`check`] returns every finding,
//! errors and warnings, for `connectopus config check`. Every [`Diagnostic`] names the file,
//! line and column of the offending key or value, and renders a rustc-style snippet.
//! The reference of every key is `docs/config.md`.
//!
//! Layout:
//! - [`model`]: the typed configuration (global settings, nodes, backends, attachments).
//! - [`attach`]: what a node runs to attach applications (namespaces, services), as data.
//! - [`types`]: scalar value types (IPv6 prefixes, durations, peer addresses, SSH keys).
//! - [`secret`]: PSKs and PEM values, inline or by file, redacted everywhere.
//! - [`diag`]: diagnostics and their rendering.
//! - [`signature`]: SSHSIG config signatures (sign with a key file or ssh-agent, verify).
//! - [`agent`]: a minimal synchronous ssh-agent client.
//! - [`token`]: control-plane tokens (SSHSIG over a claims document).
//! - [`version`]: the version rule and in-place edits of the signed YAML.
//! - `span`: the location index of the document (internal).
//! - `load`: parsing and mapping of parser errors to places (internal).
//! - `validate`: semantic checks across keys and nodes (internal).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod attach;
pub mod diag;
pub mod dynamic;
mod load;
pub mod model;
pub mod secret;
pub mod signature;
mod span;
pub mod token;
pub mod types;
mod validate;
pub mod version;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use dynamic::{DelegatedConfig, EphemeralConfig, IssueConfig};
pub use model::{
    BackendConfig, CpctlConfig, DnsConfig, DtlsDialer, DtlsListener, FastpathConfig, GlobalConfig,
    MetricsConfig, NamespaceConfig, NamespaceServiceConfig, NodeConfig, PskCipher, ServiceConfig,
    TcpDialer, TcpListener, Timers, TunConfig, TunDevConfig, UdpDialer, UdpListener,
};
pub use model::{DEFAULT_MAX_WORKERS, MAX_WORKERS};
pub use secret::{Secret, SecretBytes, SecretError, SecretKind, SecretSource};
pub use signature::{ConfigSignature, ConfigSigner, SignError, SignatureError, VerifiedBy, verify};
pub use types::{ConfigDuration, Ipv4Net, Ipv6Net, PeerAddr, PeerHost, SshPublicKey};
pub use version::{
    EditError, MAX_VERSION_JUMP, VersionError, add_authorized_key, check_version, set_version,
};

use span::Pos;

/// A loaded and validated mesh configuration.
#[derive(Clone)]
pub struct MeshConfig {
    /// Mesh-wide settings.
    pub global: GlobalConfig,
    /// Every node, by name.
    pub nodes: BTreeMap<String, NodeConfig>,
    source: Arc<[u8]>,
    file_name: String,
    warnings: Vec<Diagnostic>,
    nodes_key: Pos,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The source may hold inline secrets: show its size only.
        f.debug_struct("MeshConfig")
            .field("file_name", &self.file_name)
            .field("source_len", &self.source.len())
            .field("global", &self.global)
            .field("nodes", &self.nodes)
            .field("warnings", &self.warnings.len())
            .finish()
    }
}

impl MeshConfig {
    /// Returns the exact bytes the configuration was parsed from (what signatures cover).
    pub fn source(&self) -> &Arc<[u8]> {
        &self.source
    }

    /// Returns the file name given to [`load`].
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Returns the warnings found while loading.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Returns the node called `name`, or an error listing the known nodes (for `--id`).
    #[allow(clippy::result_large_err)] // Cold path, once at startup; callers print it.
    pub fn node(&self, name: &str) -> Result<&NodeConfig, Diagnostic> {
        self.nodes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            let text = String::from_utf8_lossy(&self.source);
            Diagnostic::error(format!(
                "no node named `{name}` in this config; known nodes: {}",
                known.join(", ")
            ))
            .at(
                &self.file_name,
                &text,
                self.nodes_key.line,
                self.nodes_key.column,
                self.nodes_key.len,
            )
            .with_path("nodes")
        })
    }
}

/// Parses and validates `bytes` (read from `file_name`), returning the config or every finding.
///
/// On success, warnings are available from [`MeshConfig::warnings`]. On failure the returned
/// [`Diagnostics`] hold all errors and warnings found.
pub fn load(file_name: &str, bytes: &[u8]) -> Result<MeshConfig, Diagnostics> {
    load::load(file_name, bytes)
}

/// Parses and validates `bytes`, returning every finding (errors and warnings) in source order.
pub fn check(file_name: &str, bytes: &[u8]) -> Diagnostics {
    match load::load(file_name, bytes) {
        Ok(cfg) => Diagnostics(cfg.warnings),
        Err(diags) => diags,
    }
}
