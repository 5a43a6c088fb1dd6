//! The mesh prefix by DHCPv6 prefix delegation (`docs/dynamic-mesh.md` §2): the delegated
//! prefixes the delegating nodes spread in their updates (extension kind 2), the mirror
//! planes every node derives from them, and their lifetimes.
//!
//! A delegated prefix `D` maps the subnet `S` (length *s*) onto `M`, the *s*-long prefix
//! number `use` inside `D`: φ(a) = M | (a & hostmask(*s*)). Every forwarding entry inside `S`
//! gets a mirror inside every live `M` with the same target ([`Node::build_forwarding_table`]),
//! and the driver puts φ(own address) on its TUN devices ([`Command::SetMeshPrefixes`]).
//!
//! Every node times each entry on its own clock (`received_at + valid_ms`), so a prefix is
//! withdrawn at the end of its valid lifetime also when its delegating node is dead or
//! partitioned away; an entry also goes when its delegating node's newer update drops it.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use connectopus_wire::delegated::{encode_delegated, parse_delegated};
use connectopus_wire::{DelegatedPrefix, LinkStateUpdate, LsuExtension, Prefix, addr::mask};

use super::{Command, Node};
use crate::time::Time;

/// Which nodes may delegate prefixes to the mesh, and how their prefixes map the subnet
/// (`global.subnet` and `global.delegated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPrefixConfig {
    /// The mesh's stable internal plane `S` (`global.subnet`).
    pub subnet: Prefix,
    /// Every delegating node by address, with its `use`: which subnet-sized prefix inside
    /// its delegated prefix is the mirror plane.
    pub delegators: BTreeMap<Ipv6Addr, u64>,
}

/// One prefix a delegating node holds (its DHCPv6 client's lease), on this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delegation {
    /// The delegated prefix `D`.
    pub prefix: Prefix,
    /// End of its preferred lifetime.
    pub preferred_until: Time,
    /// End of its valid lifetime.
    pub valid_until: Time,
}

/// One live mirror plane, as [`Command::SetMeshPrefixes`] hands it to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeshPrefix {
    /// The mirror plane `M` (as long as the subnet).
    pub prefix: Prefix,
    /// The delegated prefix `M` lies in.
    pub delegated: Prefix,
    /// The delegating node.
    pub origin: Ipv6Addr,
    /// Renumbered away from, or past its preferred lifetime: hosts should not pick its
    /// addresses as sources (`preferred_lft 0`) and DNS should not answer with them.
    pub deprecated: bool,
    /// When this node withdraws it (end of the valid lifetime, on this node's clock).
    pub valid_until: Time,
}

impl MeshPrefix {
    /// Returns φ(`addr`): `addr`'s mirror in this plane.
    pub fn mirror(&self, addr: Ipv6Addr) -> Ipv6Addr {
        let host = mask(self.prefix.len());
        Ipv6Addr::from(u128::from(self.prefix.addr()) | (u128::from(addr) & !host))
    }
}

/// Why a delegated prefix gives no mirror plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorError {
    /// The delegated prefix is longer than the subnet: the subnet does not fit in it.
    TooLong,
    /// The delegated prefix overlaps the subnet.
    OverlapsSubnet,
    /// `use` is past the last subnet-sized prefix inside the delegated prefix.
    UseOutOfRange,
    /// The delegated prefix overlaps a range no delegation may cover ([`SPECIAL_RANGES`]:
    /// unspecified, loopback, IPv4-mapped or -compatible, discard-only, link- or site-local,
    /// multicast); a mistaken or hostile server's answer never becomes a plane.
    SpecialPurpose,
}

/// Ranges a delegated prefix must not overlap (RFC 4291, RFC 6666, RFC 3879): a mirror plane
/// there would put the mesh's addresses and routes where hosts expect something else.
pub const SPECIAL_RANGES: [(Ipv6Addr, u8); 6] = [
    // Unspecified, loopback and IPv4-compatible (::/96), IPv4-mapped (::ffff:0:0/96).
    (Ipv6Addr::UNSPECIFIED, 96),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    // Discard-only.
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // Link-local and (deprecated) site-local.
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // Multicast.
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Returns the mirror plane `M` of `delegated` for a subnet and `use`.
pub fn mirror_plane(subnet: Prefix, delegated: Prefix, use_: u64) -> Result<Prefix, MirrorError> {
    let (s, d) = (subnet.len(), delegated.len());
    if d > s {
        return Err(MirrorError::TooLong);
    }
    if delegated.overlaps(&subnet) {
        return Err(MirrorError::OverlapsSubnet);
    }
    if SPECIAL_RANGES
        .iter()
        .filter_map(|&(addr, len)| Prefix::new(addr, len).ok())
        .any(|special| delegated.overlaps(&special))
    {
        return Err(MirrorError::SpecialPurpose);
    }
    let bits = u32::from(s - d);
    if bits < 64 && use_ >> bits != 0 {
        return Err(MirrorError::UseOutOfRange);
    }
    let offset = if s == 0 {
        0
    } else {
        u128::from(use_) << (128 - u32::from(s))
    };
    let addr = Ipv6Addr::from(u128::from(delegated.addr()) | offset);
    Prefix::new(addr, s).map_err(|_| MirrorError::UseOutOfRange)
}

/// The most delegated prefixes a delegating node keeps (its client's, renumbered ones
/// included), and the most planes a node derives: each plane is a mirror address on every
/// node, reverse zones in its DNS and a mirror of every forwarding entry, so a DHCPv6 answer
/// with thousands of prefixes must not become thousands of each. The longest-lived win.
pub const MAX_PLANES: usize = 16;

/// One advertised delegation, timed on this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    prefix: Prefix,
    /// The origin flagged it deprecated (renumbering away from it).
    deprecated: bool,
    preferred_until: Time,
    valid_until: Time,
}

/// The delegations of every delegating node this node knows, and the planes last handed out.
#[derive(Debug, Default)]
pub(super) struct MeshPrefixes {
    /// Per delegating node (this one included): what it advertised last.
    by_origin: BTreeMap<Ipv6Addr, Vec<Entry>>,
    /// The planes of the last [`Command::SetMeshPrefixes`].
    active: Arc<[MeshPrefix]>,
    /// The next preferred or valid deadline after the last refresh.
    next_at: Option<Time>,
}

impl MeshPrefixes {
    fn derive(&self, config: &MeshPrefixConfig, now: Time) -> Vec<MeshPrefix> {
        let mut planes: BTreeMap<Prefix, MeshPrefix> = BTreeMap::new();
        for (origin, entries) in &self.by_origin {
            let Some(use_) = config.delegators.get(origin) else {
                continue;
            };
            for e in entries.iter().filter(|e| e.valid_until > now) {
                let Ok(prefix) = mirror_plane(config.subnet, e.prefix, *use_) else {
                    continue;
                };
                let plane = MeshPrefix {
                    prefix,
                    delegated: e.prefix,
                    origin: *origin,
                    deprecated: e.deprecated || e.preferred_until <= now,
                    valid_until: e.valid_until,
                };
                // Two origins with the same plane: the preferred one, then the longer-lived.
                planes
                    .entry(prefix)
                    .and_modify(|p| {
                        if (!plane.deprecated, plane.valid_until) > (!p.deprecated, p.valid_until) {
                            *p = plane;
                        }
                    })
                    .or_insert(plane);
            }
        }
        let mut planes: Vec<MeshPrefix> = planes.into_values().collect();
        if planes.len() > MAX_PLANES {
            // The active ones first, then the longest-lived; then back in prefix order.
            planes.sort_by_key(|p| (p.deprecated, std::cmp::Reverse(p.valid_until)));
            planes.truncate(MAX_PLANES);
            planes.sort();
        }
        planes
    }
}

/// Milliseconds left until `t`, saturating.
fn ms_until(now: Time, t: Time) -> u32 {
    u32::try_from((t - now).as_millis()).unwrap_or(u32::MAX)
}

impl Node {
    /// Sets the prefixes this node holds by DHCPv6 prefix delegation (its client's lease),
    /// on a node `global.delegated` names; ignored elsewhere. A prefix held before and missing
    /// now is a renumbering: it stays advertised, deprecated, until its valid lifetime ends.
    /// The update is originated at once, so new sessions learn the delegation with the
    /// database.
    pub fn set_delegations(&mut self, now: Time, delegations: Vec<Delegation>) {
        if !self.is_delegator() {
            tracing::warn!("delegations set on a node global.delegated does not name: ignored");
            return;
        }
        let own = self.config.address;
        let old = self
            .mesh_prefixes
            .by_origin
            .remove(&own)
            .unwrap_or_default();
        let mut entries: Vec<Entry> = delegations
            .iter()
            .filter(|d| d.valid_until > now)
            .map(|d| Entry {
                prefix: d.prefix,
                deprecated: false,
                preferred_until: d.preferred_until,
                valid_until: d.valid_until,
            })
            .collect();
        for e in old {
            if e.valid_until > now && !entries.iter().any(|n| n.prefix == e.prefix) {
                entries.push(Entry {
                    deprecated: true,
                    preferred_until: now,
                    ..e
                });
            }
        }
        entries.sort_by_key(|e| e.prefix);
        entries.dedup_by_key(|e| e.prefix);
        if entries.len() > MAX_PLANES {
            entries.sort_by_key(|e| (e.deprecated, std::cmp::Reverse(e.valid_until)));
            entries.truncate(MAX_PLANES);
            entries.sort_by_key(|e| e.prefix);
        }
        self.mesh_prefixes.by_origin.insert(own, entries);
        self.refresh_mesh_prefixes(now);
        self.originate_update(now);
        self.after_input(now);
    }

    /// Withdraws delegated prefixes this node held at once (its client reported them expired
    /// or released them).
    pub fn withdraw_delegations(&mut self, now: Time, prefixes: &[Prefix]) {
        let own = self.config.address;
        if let Some(entries) = self.mesh_prefixes.by_origin.get_mut(&own) {
            let before = entries.len();
            entries.retain(|e| !prefixes.contains(&e.prefix));
            if entries.len() != before {
                self.refresh_mesh_prefixes(now);
                self.originate_update(now);
            }
        }
        self.after_input(now);
    }

    /// Returns the live mirror planes, as last handed out by [`Command::SetMeshPrefixes`].
    pub fn mesh_prefixes(&self) -> &Arc<[MeshPrefix]> {
        &self.mesh_prefixes.active
    }

    fn is_delegator(&self) -> bool {
        self.config
            .mesh_prefix
            .as_ref()
            .is_some_and(|c| c.delegators.contains_key(&self.config.address))
    }

    /// Tells whether `update` may carry what it carries of extension kind 2: only delegating
    /// nodes may send it, and its value must parse.
    pub(super) fn mesh_prefix_content_allowed(&self, update: &LinkStateUpdate) -> bool {
        let Some(value) = update.extension(LsuExtension::DELEGATED_PREFIXES) else {
            return true;
        };
        let delegator = self
            .config
            .mesh_prefix
            .as_ref()
            .is_some_and(|c| c.delegators.contains_key(&update.origin));
        delegator && parse_delegated(value).is_ok()
    }

    /// Takes the delegations of an accepted update from a delegating node: they replace what
    /// that node advertised before (none when the extension is missing).
    pub(super) fn absorb_mesh_prefixes(&mut self, now: Time, update: &LinkStateUpdate) {
        let Some(config) = self.config.mesh_prefix.as_ref() else {
            return;
        };
        if !config.delegators.contains_key(&update.origin) {
            return;
        }
        let advertised = update
            .extension(LsuExtension::DELEGATED_PREFIXES)
            .and_then(|v| parse_delegated(v).ok())
            .unwrap_or_default();
        let entries: Vec<Entry> = advertised
            .iter()
            .filter(|d| d.valid_ms > 0)
            .map(|d| Entry {
                prefix: d.prefix,
                deprecated: d.deprecated,
                preferred_until: now + Duration::from_millis(u64::from(d.preferred_ms)),
                valid_until: now + Duration::from_millis(u64::from(d.valid_ms)),
            })
            .collect();
        let known = self.mesh_prefixes.by_origin.get(&update.origin);
        if entries.is_empty() && known.is_none() {
            return;
        }
        self.mesh_prefixes.by_origin.insert(update.origin, entries);
        self.refresh_mesh_prefixes(now);
    }

    /// Drops entries past their valid lifetime and re-derives the planes (deprecating those
    /// past their preferred lifetime); runs from [`Node::handle_timeout`].
    pub(super) fn expire_mesh_prefixes(&mut self, now: Time) {
        if self.mesh_prefixes.next_at.is_some_and(|t| t <= now) {
            let own = self.config.address;
            let own_len = |m: &MeshPrefixes| m.by_origin.get(&own).map_or(0, Vec::len);
            let own_before = own_len(&self.mesh_prefixes);
            for entries in self.mesh_prefixes.by_origin.values_mut() {
                entries.retain(|e| e.valid_until > now);
            }
            self.mesh_prefixes.by_origin.retain(|_, v| !v.is_empty());
            let own_changed = own_len(&self.mesh_prefixes) != own_before;
            self.refresh_mesh_prefixes(now);
            if own_changed {
                self.trigger_update(now);
            }
        }
    }

    /// When [`Node::handle_timeout`] should next look at the planes' lifetimes.
    pub(super) fn mesh_prefix_deadline(&self) -> Option<Time> {
        self.mesh_prefixes.next_at
    }

    /// Extension kind 2 for this node's own update: its delegations with the lifetimes left.
    pub(super) fn own_delegated_extension(&self, now: Time) -> Option<LsuExtension> {
        let entries = self.mesh_prefixes.by_origin.get(&self.config.address)?;
        let list: Vec<DelegatedPrefix> = entries
            .iter()
            .filter(|e| e.valid_until > now)
            .map(|e| DelegatedPrefix {
                prefix: e.prefix,
                deprecated: e.deprecated,
                preferred_ms: ms_until(now, e.preferred_until),
                valid_ms: ms_until(now, e.valid_until).max(1),
            })
            .collect();
        (!list.is_empty()).then(|| LsuExtension {
            kind: LsuExtension::DELEGATED_PREFIXES,
            value: encode_delegated(&list),
        })
    }

    /// Re-derives the planes; when they changed, hands them to the driver and rebuilds the
    /// forwarding table in the same turn.
    fn refresh_mesh_prefixes(&mut self, now: Time) {
        let Some(config) = self.config.mesh_prefix.as_ref() else {
            return;
        };
        let planes = self.mesh_prefixes.derive(config, now);
        self.mesh_prefixes.next_at = self
            .mesh_prefixes
            .by_origin
            .values()
            .flatten()
            .flat_map(|e| [e.preferred_until, e.valid_until])
            .filter(|t| *t > now)
            .min();
        // Deadlines move with every renewal and every periodic update; the driver hears only
        // of planes that come, go or change their deprecation.
        let key = |p: &MeshPrefix| (p.prefix, p.delegated, p.origin, p.deprecated);
        if planes
            .iter()
            .map(key)
            .eq(self.mesh_prefixes.active.iter().map(key))
        {
            self.mesh_prefixes.active = Arc::from(planes);
            return;
        }
        for p in &planes {
            if !self
                .mesh_prefixes
                .active
                .iter()
                .any(|a| a.prefix == p.prefix)
            {
                tracing::info!(plane = %p.prefix, delegated = %p.delegated, origin = %p.origin, "mesh prefix added");
            }
        }
        for a in self.mesh_prefixes.active.iter() {
            if !planes.iter().any(|p| p.prefix == a.prefix) {
                tracing::info!(plane = %a.prefix, "mesh prefix withdrawn");
            }
        }
        let planes: Arc<[MeshPrefix]> = Arc::from(planes);
        self.mesh_prefixes.active = planes.clone();
        self.commands.push_back(Command::SetMeshPrefixes(planes));
        self.recompute_routes();
    }

    /// The mirrors of `routes` (every entry inside the subnet, once per live plane).
    pub(super) fn mirror_routes<V: Copy>(&self, routes: &[(Prefix, V)]) -> Vec<(Prefix, V)> {
        let Some(config) = self.config.mesh_prefix.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for plane in self.mesh_prefixes.active.iter() {
            for (p, v) in routes {
                if config.subnet.covers(p)
                    && let Ok(m) = Prefix::new(plane.mirror(p.addr()), p.len())
                {
                    out.push((m, *v));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn planes_and_mirrors() {
        let subnet = p("fd00:cafe::/56");
        assert_eq!(
            mirror_plane(subnet, p("2001:db8:100::/56"), 0),
            Ok(p("2001:db8:100::/56"))
        );
        assert_eq!(
            mirror_plane(subnet, p("2001:db8:100::/48"), 3),
            Ok(p("2001:db8:100:300::/56"))
        );
        assert_eq!(
            mirror_plane(subnet, p("2001:db8:100::/48"), 256),
            Err(MirrorError::UseOutOfRange)
        );
        assert_eq!(
            mirror_plane(subnet, p("2001:db8:100::/60"), 0),
            Err(MirrorError::TooLong)
        );
        assert_eq!(
            mirror_plane(subnet, p("fd00::/16"), 0),
            Err(MirrorError::OverlapsSubnet)
        );
        // Special-purpose ranges, inside or around the delegation, are refused; the global
        // unicast space around them is not.
        for special in [
            "::/56",
            "::/8",
            "::ffff:0:0/96",
            "::ffff:c612:0/112",
            "100::/64",
            "fe80::/56",
            "fe80::/10",
            "fe00::/7",
            "fec0:1::/48",
            "ff02::/56",
            "ff00::/8",
        ] {
            assert_eq!(
                mirror_plane(p("fd00:cafe::/120"), p(special), 0),
                Err(MirrorError::SpecialPurpose),
                "{special}"
            );
        }
        for fine in [
            "2001:db8:100::/56",
            "64:ff9b:1::/56",
            "1::/56",
            "fc00:1::/56",
            "fe40::/56",
        ] {
            assert!(
                mirror_plane(p("fd00:cafe::/120"), p(fine), 0).is_ok(),
                "{fine}"
            );
        }
        let plane = MeshPrefix {
            prefix: p("2001:db8:100:300::/56"),
            delegated: p("2001:db8:100::/48"),
            origin: Ipv6Addr::LOCALHOST,
            deprecated: false,
            valid_until: Time::ZERO,
        };
        assert_eq!(
            plane.mirror("fd00:cafe:0:12::7".parse().unwrap()),
            "2001:db8:100:312::7".parse::<Ipv6Addr>().unwrap()
        );
    }
}
