//! Rules of the dynamic mesh keys (`global.ephemeral`, `nodes.<name>.issue`), as
//! `docs/dynamic-mesh.md` §1.1 states them: pools lie in the subnet, are pairwise disjoint and
//! hold no static address; joining is never anonymous; every key is an unrevoked ed25519 key
//! that is no static node's identity; ephemeral nodes only dial.

use std::collections::BTreeMap;

use super::backends::backend_checks;
use super::{At, Ctx, Owners, in_source_order, strs};
use crate::dynamic::{MAX_LEASE, MIN_LEASE, check_name_pattern};
use crate::model::{BackendConfig, RawMesh};
use crate::types::{ConfigDuration, Ipv6Net, SshPublicKey};

pub(super) fn check(cx: &mut Ctx<'_>, raw: &RawMesh, owners: &Owners) {
    delegated(cx, raw);
    let ephemeral = raw.global.ephemeral.as_ref();
    if let Some(e) = ephemeral {
        global_ephemeral(cx, raw, e);
    }
    let mut pools: Vec<(Ipv6Net, String)> = Vec::new();
    for (name, node) in in_source_order(cx.tree, &["nodes"], &raw.nodes) {
        let Some(issue) = &node.issue else {
            continue;
        };
        let path = |key: &'static str| ["nodes", name.as_str(), "issue", key];
        if let Some(lease) = issue.lease {
            lease_rule(cx, raw, &path("lease"), lease);
        }
        patterns(cx, &["nodes", name, "issue", "names"], &issue.names);
        if issue.ephemeral == Some(true) && ephemeral.is_none() {
            cx.error(
                &path("ephemeral"),
                At::Key,
                "issue.ephemeral needs global.ephemeral, which says who may join",
            );
        }
        pool_rules(cx, raw, owners, name, issue.prefix, &mut pools);
    }
    if let Some(e) = ephemeral {
        let serving = raw
            .nodes
            .values()
            .filter_map(|n| n.issue.as_ref())
            .any(|i| i.serves_joins(Some(e)));
        if !serving {
            cx.warn(
                &["global", "ephemeral"],
                At::Key,
                "global.ephemeral without a node whose `issue` serves joins: nobody can join yet",
            );
        }
    }
}

/// `global.delegated` (`docs/dynamic-mesh.md` §2.2): each entry names a node of the mesh,
/// once; an interface name the kernel accepts; a length the subnet fits in; a `use` inside it.
fn delegated(cx: &mut Ctx<'_>, raw: &RawMesh) {
    let subnet_len = raw.global.subnet.prefix_len();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, d) in raw.global.delegated.iter().enumerate() {
        let index = i.to_string();
        let path = |key: &'static str| ["global", "delegated", index.as_str(), key].to_vec();
        if !raw.nodes.contains_key(&d.node) {
            cx.error(
                &path("node"),
                At::Value,
                format!("delegated.node `{}` is not a node of this mesh", d.node),
            );
        } else if let Some(first) = seen.insert(d.node.as_str(), i) {
            cx.error(
                &path("node"),
                At::Value,
                format!(
                    "node `{}` already delegates in global.delegated[{first}]: one entry per node",
                    d.node
                ),
            );
        }
        let bad_name = d.interface.is_empty()
            || d.interface.len() > 15
            || d.interface == "."
            || d.interface == ".."
            || d.interface
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if bad_name {
            cx.error(
                &path("interface"),
                At::Value,
                format!(
                    "interface `{}` is not an interface name (1 to 15 bytes, no `/`, `:` or space)",
                    d.interface
                ),
            );
        }
        let fits = match d.length {
            Some(length) if length == 0 || length > subnet_len => {
                cx.error(
                    &path("length"),
                    At::Value,
                    format!(
                        "length {length} must be 1..={subnet_len}: the delegated prefix must hold a prefix as long as global.subnet"
                    ),
                );
                None
            }
            Some(length) => Some(u32::from(subnet_len - length)),
            None => None,
        };
        if let Some(bits) = fits
            && bits < 64
            && d.use_ >> bits != 0
        {
            cx.error(
                &path("use"),
                At::Value,
                format!(
                    "use {} is past the last /{subnet_len} inside a /{}: at most {}",
                    d.use_,
                    subnet_len - bits as u8,
                    (1u64 << bits) - 1
                ),
            );
        }
    }
}

fn global_ephemeral(cx: &mut Ctx<'_>, raw: &RawMesh, e: &crate::dynamic::EphemeralConfig) {
    if let Some(lease) = e.lease {
        lease_rule(cx, raw, &["global", "ephemeral", "lease"], lease);
    }
    if e.identities.is_empty() && e.join_keys.is_empty() {
        cx.error(
            &["global", "ephemeral"],
            At::Key,
            "global.ephemeral lists no key in `identities` or `join_keys`: joining is never anonymous",
        );
    }
    keys(cx, raw, "identities", &e.identities);
    keys(cx, raw, "join_keys", &e.join_keys);
    patterns(cx, &["global", "ephemeral", "names"], &e.names);
    let order = in_source_order(cx.tree, &["global", "ephemeral", "backends"], &e.backends);
    // Ephemeral nodes listen on nothing, so the port maps stay empty.
    let (mut udp, mut tcp) = (BTreeMap::new(), BTreeMap::new());
    for (b, backend) in order {
        let here = ["global", "ephemeral", "backends", b.as_str()];
        if !matches!(
            backend,
            BackendConfig::DtlsDialer(_)
                | BackendConfig::TcpDialer(_)
                | BackendConfig::UdpDialer(_)
        ) {
            cx.error(
                &["global", "ephemeral", "backends", b, "type"],
                At::Value,
                format!(
                    "an ephemeral node only dials: `{}` is not a dialer (use dtls-dialer, tcp-dialer or udp-dialer)",
                    backend.type_name()
                ),
            );
            continue;
        }
        backend_checks(cx, raw, here, backend, &mut udp, &mut tcp);
    }
}

/// A lease lies in 10s..=1h and is at least twice `update_interval`, so a holder renews (at
/// half the lease) well before its updates would lapse.
fn lease_rule(cx: &mut Ctx<'_>, raw: &RawMesh, path: &[&str], lease: ConfigDuration) {
    let update = raw.global.timers.update_interval;
    if lease.0 < MIN_LEASE || lease.0 > MAX_LEASE {
        cx.error(
            path,
            At::Value,
            format!("lease {lease} is out of range: 10s..=1h"),
        );
    } else if lease.0 < update.0.saturating_mul(2) {
        cx.error(
            path,
            At::Value,
            format!("lease {lease} must be at least twice timers.update_interval ({update})"),
        );
    }
}

fn keys(cx: &mut Ctx<'_>, raw: &RawMesh, list: &str, keys: &[SshPublicKey]) {
    let mut seen: Vec<&SshPublicKey> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let idx = i.to_string();
        let path = ["global", "ephemeral", list, &idx];
        if let Err(e) = k.check() {
            cx.error(&path, At::Value, format!("malformed key in {list}: {e}"));
        } else if k.key_type() != "ssh-ed25519" {
            cx.error(
                &path,
                At::Value,
                format!(
                    "{list} keys must be ssh-ed25519 (node keys are ed25519), not {}",
                    k.key_type()
                ),
            );
        } else if raw.global.revoked_keys.iter().any(|r| r.same_key(k)) {
            cx.error(&path, At::Value, "key is listed in global.revoked_keys");
        } else if let Some(owner) = raw
            .nodes
            .iter()
            .find(|(_, n)| n.identity.as_ref().is_some_and(|id| id.same_key(k)))
            .map(|(name, _)| name)
        {
            let at = cx.loc(&["nodes", owner, "identity"], At::Value);
            cx.error(
                &path,
                At::Value,
                format!("key is the identity of static node {owner} ({at})"),
            );
        } else if seen.iter().any(|s| s.same_key(k)) {
            cx.warn(&path, At::Value, format!("key listed twice in {list}"));
        }
        seen.push(k);
    }
}

fn patterns(cx: &mut Ctx<'_>, path: &[&str], list: &[String]) {
    for (i, pattern) in list.iter().enumerate() {
        if let Err(why) = check_name_pattern(pattern) {
            let idx = i.to_string();
            let mut p = path.to_vec();
            p.push(&idx);
            cx.error(&p, At::Value, why);
        }
    }
}

fn pool_rules(
    cx: &mut Ctx<'_>,
    raw: &RawMesh,
    owners: &Owners,
    name: &str,
    pool: Ipv6Net,
    pools: &mut Vec<(Ipv6Net, String)>,
) {
    let path = ["nodes", name, "issue", "prefix"];
    let subnet = raw.global.subnet;
    if !subnet.contains_net(&pool) {
        cx.error(
            &path,
            At::Value,
            format!("pool {pool} is outside global.subnet {subnet}"),
        );
    }
    if pool.prefix_len() > 126 {
        cx.error(
            &path,
            At::Value,
            format!(
                "pool {pool} is too small: it needs at least 2 usable addresses (offset 0 is never issued)"
            ),
        );
    }
    if pool.has_host_bits() {
        cx.warn(
            &path,
            At::Value,
            format!(
                "pool {pool} has host bits set; it is used as {}/{}",
                pool.network(),
                pool.prefix_len()
            ),
        );
    }
    if let Some((other, owner)) = pools.iter().find(|(p, _)| p.overlaps(&pool)) {
        let at = cx.loc(&["nodes", owner, "issue", "prefix"], At::Value);
        cx.error(
            &path,
            At::Value,
            format!(
                "pool {pool} overlaps {other}, the pool of node {owner} ({at}): pools must be disjoint so that every address has one issuer"
            ),
        );
    }
    pools.push((pool, name.to_owned()));
    let mut static_addrs: Vec<_> = owners
        .addresses
        .iter()
        .filter(|(a, _)| pool.contains(**a))
        .collect();
    static_addrs.sort();
    if let Some((addr, owner)) = static_addrs.first() {
        let at = cx.loc(&strs(owner), At::Value);
        cx.error(
            &path,
            At::Value,
            format!(
                "pool {pool} contains {addr}, the static address of {} ({at})",
                owner.join(".")
            ),
        );
    }
    if let Some((prefix, owner, first)) = owners.prefixes.iter().find(|(p, _, _)| p.overlaps(&pool))
    {
        let at = cx.loc(&strs(first), At::Value);
        cx.error(
            &path,
            At::Value,
            format!("pool {pool} overlaps {prefix}, a prefix of node {owner} ({at})"),
        );
    }
}
