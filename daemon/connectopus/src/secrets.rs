//! The node's local secret files, checked before it touches the network: every PSK and
//! private key file its backends name must be private to the node (mode 0600 or stricter,
//! owned by the node's user) and every PSK at least 16 bytes, or the node does not start.
//! `connectopus_config::Secret::resolve` enforces the rules; this reads each one once, early,
//! so a bad file is reported before the TUN device and the sockets exist.

use anyhow::{Result, anyhow};
use connectopus_config::MeshConfig;

/// Reads every secret of node `id`'s backends once (and drops the bytes, which wipes them).
///
/// # Errors
/// The first secret that cannot be used, named by backend and key, with the file and the
/// reason.
pub fn check(config: &MeshConfig, id: &str) -> Result<()> {
    let node = config.node(id).map_err(|d| anyhow!("{d}"))?;
    for (name, backend) in &node.backends {
        for (key, secret) in backend.secrets() {
            if let Err(error) = secret.resolve() {
                return Err(anyhow!("nodes.{id}.backends.{name}.{key}: {error}"));
            }
        }
    }
    Ok(())
}
