//! Keys of the dynamic mesh (`docs/dynamic-mesh.md` §1.1): who may join as an ephemeral node
//! (`global.ephemeral`), which static nodes hand out addresses from which pool
//! (`nodes.<name>.issue`), and which nodes obtain a mesh prefix by DHCPv6 prefix delegation
//! (`global.delegated`, §2.2). The rules are in `validate/dynamic.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::BackendConfig;
use crate::types::{ConfigDuration, Ipv6Net, SshPublicKey};

/// Lease length without `lease` (5 minutes).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);
/// Shortest lease the configuration accepts.
pub const MIN_LEASE: Duration = Duration::from_secs(10);
/// Longest lease the configuration accepts.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Who may join the mesh as an ephemeral node (`global.ephemeral`). Without this section
/// nobody may join.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EphemeralConfig {
    /// Lease length (default 5m; 10s..=1h and at least twice `timers.update_interval`).
    #[serde(default)]
    pub lease: Option<ConfigDuration>,
    /// ed25519 keys that may join as themselves.
    #[serde(default)]
    pub identities: Vec<SshPublicKey>,
    /// Shared ed25519 join keys: whoever holds the private half may join with any node key.
    #[serde(default)]
    pub join_keys: Vec<SshPublicKey>,
    /// Name patterns ephemeral nodes may use (one `*` each); empty: any valid name that no
    /// static node or attachment holds.
    #[serde(default)]
    pub names: Vec<String>,
    /// What `connectopus node --ephemeral` dials (dialer types only).
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
}

impl EphemeralConfig {
    /// Returns the mesh-wide lease length.
    pub fn lease(&self) -> Duration {
        self.lease.map_or(DEFAULT_LEASE, |d| d.0)
    }
}

/// A static node's pool (`nodes.<name>.issue`): addresses for ephemeral nodes and containers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueConfig {
    /// The pool; inside `global.subnet`, disjoint from every other pool.
    pub prefix: Ipv6Net,
    /// Lease length of this issuer (default `global.ephemeral.lease`).
    #[serde(default)]
    pub lease: Option<ConfigDuration>,
    /// Name patterns of this issuer's own (one `*` each), on top of `global.ephemeral.names`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Serves joins (default: true when `global.ephemeral` exists).
    #[serde(default)]
    pub ephemeral: Option<bool>,
    /// Serves CNI allocations (default true).
    #[serde(default = "yes")]
    pub containers: bool,
}

/// One node that obtains a prefix by DHCPv6 prefix delegation for the mesh
/// (`global.delegated[]`): the mesh mirrors its subnet into the delegated prefix.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegatedConfig {
    /// The node that runs the DHCPv6 client (a node of `nodes`).
    pub node: String,
    /// Its upstream interface, where the client asks.
    pub interface: String,
    /// The prefix length asked for (IA_PD hint); at most the subnet's length. Without it the
    /// client asks for any length.
    #[serde(default)]
    pub length: Option<u8>,
    /// Which subnet-sized prefix inside the delegated prefix mirrors the subnet (default 0).
    #[serde(default, rename = "use")]
    pub use_: u64,
    /// The node is the mesh's way out: it advertises `::/0` while it holds a plane, and the
    /// other nodes route traffic from the plane to it (docs/dynamic-mesh.md §2.5 "Egress").
    #[serde(default)]
    pub egress: bool,
}

fn yes() -> bool {
    true
}

impl IssueConfig {
    /// Returns this issuer's lease length: its own, else the mesh-wide one, else 5 minutes.
    pub fn lease(&self, ephemeral: Option<&EphemeralConfig>) -> Duration {
        self.lease
            .map(|d| d.0)
            .or_else(|| ephemeral.map(EphemeralConfig::lease))
            .unwrap_or(DEFAULT_LEASE)
    }

    /// Tells whether this issuer serves joins.
    pub fn serves_joins(&self, ephemeral: Option<&EphemeralConfig>) -> bool {
        ephemeral.is_some() && self.ephemeral.unwrap_or(true)
    }
}

/// Checks a name pattern: exactly one `*`, the rest `a-z`, `0-9` and `-`, at most 63 bytes.
pub fn check_name_pattern(pattern: &str) -> Result<(), String> {
    let stars = pattern.matches('*').count();
    if stars != 1 {
        return Err(format!(
            "name pattern `{pattern}` must hold exactly one `*` (it has {stars})"
        ));
    }
    if pattern.len() > 63 {
        return Err(format!("name pattern `{pattern}` is longer than 63 bytes"));
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '*'))
    {
        return Err(format!(
            "name pattern `{pattern}` holds `{c}`: use a-z, 0-9, `-` and one `*`"
        ));
    }
    Ok(())
}

/// Tells whether `name` matches `pattern` (one `*` standing for one or more bytes).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return pattern == name;
    };
    name.len() > head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(check_name_pattern("job-*").is_ok());
        assert!(check_name_pattern("*-h1").is_ok());
        assert!(check_name_pattern("job").is_err());
        assert!(check_name_pattern("a*b*").is_err());
        assert!(check_name_pattern("Job-*").is_err());
        assert!(name_matches("job-*", "job-1"));
        assert!(!name_matches("job-*", "job-"));
        assert!(name_matches("*-h1", "x-h1"));
        assert!(!name_matches("*-h1", "x-h2"));
        assert!(name_matches("a*a", "aba"));
        assert!(!name_matches("a*a", "a"));
        assert!(!name_matches("a*a", "aa"));
    }
}
