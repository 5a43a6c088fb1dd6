//! Node identity for the running node: its key, the trust policy the mesh config grants, and
//! the routing epoch that must never go backwards across restarts.

use std::net::Ipv6Addr;
use std::path::Path;

use connectopus_config::SshPublicKey;
use connectopus_core::identity::{Grant, NodeKey, TrustPolicy};
use connectopus_wire::Prefix;

use super::*;

/// Returns the 32-byte ed25519 key of an OpenSSH public key line, if it is ed25519.
pub(super) fn ed25519_key(line: &SshPublicKey) -> Option<[u8; 32]> {
    let key = ssh_key::PublicKey::from_openssh(&line.0).ok()?;
    key.key_data().ed25519().map(|k| k.0)
}

/// Builds the trust policy the configuration grants: every node with an `identity` may use its
/// name and address, originate its `prefixes` and its `tun_devs` and `namespaces` addresses, and
/// publish their names; `revoked_keys` are never accepted.
pub(super) fn policy(config: &MeshConfig) -> TrustPolicy {
    let mut policy = TrustPolicy::new();
    for (name, node) in &config.nodes {
        let Some(key) = node.identity.as_ref().and_then(ed25519_key) else {
            continue;
        };
        let mut grant = Grant::new(name.clone(), node.address);
        for prefix in &node.prefixes {
            if let Ok(p) = Prefix::new_truncating(prefix.addr(), prefix.prefix_len()) {
                grant.prefixes.push(p);
            }
        }
        for (dev_name, dev) in &node.tun_devs {
            grant.prefixes.push(Prefix::host(dev.address));
            grant.names.push(dev_name.clone());
        }
        for (ns_name, ns) in &node.namespaces {
            grant.prefixes.push(Prefix::host(ns.address));
            grant.names.push(ns_name.clone());
        }
        // IPv4 addresses, as the IPv4-mapped /128s they are advertised as.
        let addresses4 = node
            .address4
            .into_iter()
            .chain(node.tun_devs.values().filter_map(|d| d.address4))
            .chain(node.namespaces.values().filter_map(|n| n.address4));
        for a in addresses4 {
            grant.prefixes.push(Prefix::host(a.to_ipv6_mapped()));
        }
        // An issuer signs lease certificates in its pool and may advertise its /128s.
        grant.issue_pools.extend(super::leases::issue_pool(node));
        policy = policy.with_grant(key, grant);
    }
    policy.reserved_names = super::leases::reserved_names(config);
    for revoked in &config.global.revoked_keys {
        if let Some(key) = ed25519_key(revoked) {
            policy = policy.with_revoked(key);
        }
    }
    policy
}

/// Loads this node's key when its config entry names an `identity`, and checks that they
/// match. Returns `None` for a node without `identity` (a mesh without node keys).
pub(super) fn node_key(
    config: &MeshConfig,
    id: &str,
    key_file: Option<&Path>,
) -> Result<Option<NodeKey>> {
    let node = config.node(id).map_err(|d| anyhow::anyhow!("{d}"))?;
    let Some(expected) = node.identity.as_ref() else {
        return Ok(None);
    };
    let Some(expected) = ed25519_key(expected) else {
        anyhow::bail!("nodes.{id}.identity must be an ssh-ed25519 key");
    };
    let default = crate::identity::default_key_path(id);
    let path = key_file.unwrap_or(&default);
    let key = crate::identity::load(path).with_context(|| {
        format!(
            "nodes.{id}.identity is set, so the node needs its key: create one with \
             `connectopus identity new --file {}` or pass --identity-file",
            path.display()
        )
    })?;
    let seed = crate::identity::seed(&key)?;
    let node_key = NodeKey::from_seed(&seed);
    if node_key.public() != expected {
        anyhow::bail!(
            "the key in {} is not nodes.{id}.identity; that entry should be:\n  {}",
            path.display(),
            crate::identity::public_line(&key)?
        );
    }
    Ok(Some(node_key))
}

/// Returns a routing epoch larger than any this node used before: the wall clock in
/// nanoseconds, or one past the last epoch recorded next to the config if the clock went
/// backwards; records it.
pub(super) fn next_epoch(config_path: &Path) -> u64 {
    let path = {
        let mut p = config_path.as_os_str().to_owned();
        p.push(".epoch");
        std::path::PathBuf::from(p)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(1);
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let epoch = now.max(last.saturating_add(1));
    if let Err(error) = std::fs::write(&path, format!("{epoch}\n")) {
        tracing::warn!(path = %path.display(), %error, "cannot record the routing epoch");
    }
    epoch
}

/// Returns the address of a grant, for logs.
#[allow(dead_code, reason = "kept for diagnostics")]
pub(super) fn granted_address(policy: &TrustPolicy, key: &[u8; 32]) -> Option<Ipv6Addr> {
    policy.by_key(key).map(|g| g.address)
}
