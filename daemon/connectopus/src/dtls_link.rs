//! DTLS backends (placeholder until the DTLS association is wired into the main loop).

use anyhow::{Result, bail};
use connectopus_config::BackendConfig;

use crate::backends::TcpBackend;

/// Starts a DTLS backend.
///
/// # Errors
/// Always, for now: DTLS links are not wired into the node yet.
pub fn start_backend(name: &str, _backend: &BackendConfig, _settings: &TcpBackend) -> Result<()> {
    bail!("backend {name}: DTLS backends are not supported by this build yet")
}
