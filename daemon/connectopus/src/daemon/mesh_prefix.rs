//! The mesh prefix by DHCPv6 prefix delegation on the daemon's side (`docs/dynamic-mesh.md`
//! §2.5): what the core is told about `global.delegated`, and what the node does with the
//! planes the core hands out ([`Command::SetMeshPrefixes`]).
//!
//! As of now the core's forwarding carries the mirrors of every route; the daemon logs the
//! planes. Running the DHCPv6 client on the delegating node and putting φ(own) on the TUN
//! devices are the rest of step 14 (`docs/dynamic-mesh.md` §4).

use std::collections::BTreeMap;

use connectopus_config::MeshConfig;
use connectopus_core::node::{MeshPrefix, MeshPrefixConfig};
use connectopus_wire::Prefix;

#[cfg(doc)]
use connectopus_core::node::Command;

/// The core's view of `global.delegated`: the subnet and every delegating node's address with
/// its `use`; `None` without entries (the core then refuses extension kind 2 from anyone).
pub(super) fn core_config(config: &MeshConfig) -> Option<MeshPrefixConfig> {
    if config.global.delegated.is_empty() {
        return None;
    }
    let subnet = Prefix::new_truncating(
        config.global.subnet.network(),
        config.global.subnet.prefix_len(),
    )
    .ok()?;
    let delegators: BTreeMap<_, _> = config
        .global
        .delegated
        .iter()
        .filter_map(|d| Some((config.nodes.get(&d.node)?.address, d.use_)))
        .collect();
    Some(MeshPrefixConfig { subnet, delegators })
}

/// Logs a new set of planes.
pub(super) fn log_planes(planes: &[MeshPrefix]) {
    let list: Vec<String> = planes
        .iter()
        .map(|p| {
            let state = if p.deprecated { " (deprecated)" } else { "" };
            format!("{} from {}{state}", p.prefix, p.delegated)
        })
        .collect();
    tracing::info!(planes = ?list, "mesh prefixes");
}
