//! What makes the mesh prefix reachable from outside the mesh (`docs/dynamic-mesh.md` §2.5):
//!
//! - **The delegating node is a router.** At start, before capabilities drop,
//!   [`enable_forwarding`] sets `accept_ra=2` on the upstream interface (a forwarding host
//!   keeps its RA default route) and `net.ipv6.conf.all.forwarding=1`; the kernel then forwards
//!   between the upstream interface and the TUN device. For each delegated prefix `D` it holds,
//!   the node installs `unreachable D` (as dhcpcd does): packets for the parts of `D` no plane
//!   uses are answered here instead of going back upstream. The route goes with `D`.
//! - **Egress.** A delegating node with `egress` advertises `::/0` (the core does); every other
//!   node sends traffic sourced from a plane `M` whose delegator has egress into the mesh:
//!   `from M lookup main suppress_prefixlength 0` (the main table's routes except its default
//!   route), then `from M lookup T` with `default dev <tun>` in table `T`. The delegating
//!   node writes such packets to its TUN device and the kernel forwards them upstream.
//!
//! Rules and routes follow the planes of every `Command::SetMeshPrefixes`; they are removed
//! when their plane goes and when the node stops or re-executes itself (the daemon drops its
//! [`MeshRoutes`] then; the TUN device's own routes go with the device).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use connectopus_core::node::MeshPrefix;
use connectopus_netlink::{Netlink, Route, Rule};
use connectopus_wire::Prefix;

/// The priority of `from M lookup main suppress_prefixlength 0`: before the main table's
/// own rule (32766), so a default route there does not take mirror-sourced traffic.
pub(crate) const RULE_PRIORITY_MAIN: u32 = 31_000;
/// The priority of `from M lookup T`.
pub(crate) const RULE_PRIORITY_EGRESS: u32 = 31_001;
const RT_TABLE_MAIN: u32 = 254;

/// The table of the egress default route for the TUN device with index `tun_index`: one per
/// device, so several nodes in one network namespace do not share it.
pub(crate) fn egress_table(tun_index: u32) -> u32 {
    0x4358_0000 | (tun_index & 0xffff)
}

/// Sets the sysctls that make the delegating node a router: `accept_ra=2` on `interface`
/// first (with forwarding on, `1` would drop the RA default route), then `all.forwarding=1`.
/// Runs before capabilities drop; a value that cannot be written is logged (a systemd unit
/// with `ProtectKernelTunables=yes` has `/proc/sys` read-only: set them in `sysctl.d`).
pub(super) fn enable_forwarding(interface: &str) {
    let settings = [
        (format!("net/ipv6/conf/{interface}/accept_ra"), "2"),
        ("net/ipv6/conf/all/forwarding".to_owned(), "1"),
    ];
    for (key, value) in settings {
        let name = key.replace('/', ".");
        match connectopus_netlink::read_sysctl(&key) {
            Ok(now) if now == value => {
                tracing::info!(sysctl = %name, value, "router sysctl already set");
                continue;
            }
            _ => {}
        }
        match connectopus_netlink::write_sysctl(&key, value) {
            Ok(()) => {
                tracing::info!(sysctl = %name, value, "router sysctl set: the kernel forwards between the upstream interface and the mesh")
            }
            Err(error) => {
                tracing::warn!(sysctl = %name, value, %error, "router sysctl not set: the delegated prefix is not reachable from outside the mesh until it is")
            }
        }
    }
}

/// The rules and routes this node has installed for the planes.
#[derive(Debug, Default)]
pub(super) struct MeshRoutes {
    /// Delegated prefixes with an `unreachable` route (on their delegating node).
    unreachable: BTreeSet<Prefix>,
    /// Planes with their two source rules, and the table they look up.
    egress: BTreeSet<(Prefix, u32)>,
    /// The table holding `default dev <tun>`, and the device's index.
    default_route: Option<(u32, u32)>,
}

fn unreachable_route(d: Prefix) -> Route {
    Route::unreachable(IpAddr::V6(d.addr()), d.len())
}

fn plane_rules(m: Prefix, table: u32) -> [Rule; 2] {
    let source = IpAddr::V6(m.addr());
    [
        Rule::from_source(source, m.len(), RT_TABLE_MAIN)
            .with_priority(RULE_PRIORITY_MAIN)
            .suppressing_prefix_len(0),
        Rule::from_source(source, m.len(), table).with_priority(RULE_PRIORITY_EGRESS),
    ]
}

fn default_route(table: u32, tun_index: u32) -> Route {
    Route::via_device(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0, tun_index).in_table(table)
}

/// Adds, taking one present already as done.
fn added(result: Result<(), connectopus_netlink::Error>, what: &str) -> bool {
    match result {
        Ok(()) => true,
        Err(error) if error.is_exists() => true,
        Err(error) => {
            tracing::warn!(%error, "{what}");
            false
        }
    }
}

/// Deletes, taking one already gone as done.
fn deleted(result: Result<(), connectopus_netlink::Error>, what: &str) {
    match result {
        Ok(()) => {}
        Err(error) if error.is_not_found() => {}
        Err(error) => tracing::warn!(%error, "{what}"),
    }
}

impl MeshRoutes {
    /// Brings the rules and routes in line with `planes`: `own` is this node's address,
    /// `egress` the delegating nodes with `egress`, `tun` the own TUN device.
    pub(super) fn apply(
        &mut self,
        netlink: &mut Netlink,
        tun: &str,
        own: Ipv6Addr,
        egress: &BTreeSet<Ipv6Addr>,
        planes: &[MeshPrefix],
    ) {
        // The delegating node: `unreachable D` for what it holds.
        let want_unreachable: BTreeSet<Prefix> = planes
            .iter()
            .filter(|p| p.origin == own && !own.is_unspecified())
            .map(|p| p.delegated)
            .collect();
        for d in self.unreachable.clone().difference(&want_unreachable) {
            deleted(
                netlink.delete_route(&unreachable_route(*d)),
                "removing an unreachable route",
            );
            tracing::info!(delegated = %d, "unreachable route removed");
            self.unreachable.remove(d);
        }
        for d in want_unreachable.difference(&self.unreachable.clone()) {
            if added(
                netlink.add_route(&unreachable_route(*d)),
                "adding an unreachable route for a delegated prefix",
            ) {
                tracing::info!(delegated = %d, "unreachable route added: the parts of the delegated prefix no plane uses are not sent back upstream");
                self.unreachable.insert(*d);
            }
        }

        // Every other node: mirror-sourced traffic leaves through the mesh.
        let index = match netlink.link(tun) {
            Ok(link) => link.index,
            Err(error) => {
                tracing::warn!(%error, "mesh prefix egress not applied");
                return;
            }
        };
        let table = egress_table(index);
        let want_egress: BTreeSet<(Prefix, u32)> = if own.is_unspecified() {
            BTreeSet::new()
        } else {
            planes
                .iter()
                .filter(|p| p.origin != own && egress.contains(&p.origin))
                .map(|p| (p.prefix, table))
                .collect()
        };
        for (m, t) in self.egress.clone().difference(&want_egress) {
            for rule in plane_rules(*m, *t) {
                deleted(netlink.delete_rule(&rule), "removing an egress rule");
            }
            tracing::info!(plane = %m, table = t, "egress rules removed");
            self.egress.remove(&(*m, *t));
        }
        let want_default = (!want_egress.is_empty()).then_some((table, index));
        if self.default_route != want_default {
            if let Some((t, i)) = self.default_route.take() {
                deleted(
                    netlink.delete_route(&default_route(t, i)),
                    "removing the egress default route",
                );
                tracing::info!(table = t, "egress default route removed");
            }
            if let Some((t, i)) = want_default
                && added(
                    netlink.add_route(&default_route(t, i)),
                    "adding the egress default route",
                )
            {
                tracing::info!(table = t, %tun, "egress default route added");
                self.default_route = want_default;
            }
        }
        for (m, t) in want_egress.difference(&self.egress.clone()) {
            let ok = plane_rules(*m, *t)
                .iter()
                .all(|rule| added(netlink.add_rule(rule), "adding an egress rule"));
            if ok {
                tracing::info!(plane = %m, table = t, "egress rules added: traffic from the plane leaves through the mesh");
                self.egress.insert((*m, *t));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.unreachable.is_empty() && self.egress.is_empty() && self.default_route.is_none()
    }
}

impl Drop for MeshRoutes {
    /// Removes what is left when the daemon stops (the TUN device's routes go with it, the
    /// rules and the unreachable routes would not).
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        let Ok(mut netlink) = Netlink::open() else {
            return;
        };
        for (m, t) in std::mem::take(&mut self.egress) {
            for rule in plane_rules(m, t) {
                let _ = netlink.delete_rule(&rule);
            }
        }
        if let Some((t, i)) = self.default_route.take() {
            let _ = netlink.delete_route(&default_route(t, i));
        }
        for d in std::mem::take(&mut self.unreachable) {
            let _ = netlink.delete_route(&unreachable_route(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_plane_gets_a_main_rule_before_its_egress_rule_and_tables_differ_per_device() {
        let m: Prefix = "2001:db8:100::/56".parse().unwrap();
        let [main, egress] = plane_rules(m, egress_table(7));
        assert_eq!(main.table, RT_TABLE_MAIN);
        assert_eq!(main.suppress_prefix_len, Some(0));
        assert_eq!(egress.table, egress_table(7));
        assert!(main.priority < egress.priority);
        assert!(egress.priority < Some(32_766));
        assert_eq!(main.source, Some((IpAddr::V6(m.addr()), 56)));
        assert_ne!(egress_table(7), egress_table(8));
        for t in [egress_table(0), egress_table(u32::MAX)] {
            assert!(t > 255, "{t} must not be a reserved table");
        }
        assert_eq!(main.family, 10);
    }
}
