//! The node's built-in DNS server: started on the node's mesh address, fed the live name
//! table, and registered with systemd-resolved for the mesh domain when resolved runs.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

use connectopus_dns::{DnsServer, ZoneConfig};

use super::*;

/// The DNS server of a node, or why there is none.
pub(super) enum Dns {
    Running(Box<DnsServer>),
    Off(String),
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Dns {
    /// Starts the server on `[address]:53`, UDP and TCP, for the mesh domain.
    pub(super) fn start(
        config: &MeshConfig,
        name: &str,
        address: Ipv6Addr,
        tun: Option<&str>,
    ) -> Dns {
        let node = match config.node(name) {
            Ok(node) => node,
            Err(_) => return Dns::Off("node not in the configuration".to_owned()),
        };
        if node.dns.disable {
            return Dns::Off("disabled (dns.disable)".to_owned());
        }
        let bind = SocketAddr::new(address.into(), 53);
        // The address was just put on the TUN device; give the kernel a moment if needed.
        let mut last = None;
        for _ in 0..20 {
            match UdpSocket::bind(bind)
                .and_then(|udp| TcpListener::bind(bind).map(|tcp| (udp, tcp)))
            {
                Ok((udp, tcp)) => {
                    let mut zone = ZoneConfig::new(
                        config.global.domain.clone(),
                        config.global.subnet.network(),
                        config.global.subnet.prefix_len(),
                        name.to_owned(),
                        address,
                    );
                    if let Some(subnet4) = config.global.subnet4 {
                        zone.subnet4 = Some((subnet4.network(), subnet4.prefix_len()));
                        zone.node_address4 = node.address4;
                    }
                    return match DnsServer::start(udp, tcp, zone) {
                        Ok(server) => {
                            tracing::info!(%bind, domain = %config.global.domain, "dns server up");
                            if let Some(tun) = tun {
                                register_with_resolved(tun, address, &config.global.domain);
                            }
                            Dns::Running(Box::new(server))
                        }
                        Err(error) => Dns::Off(format!("failed to start: {error}")),
                    };
                }
                Err(error) => {
                    last = Some(error);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let reason = last.map_or_else(|| "unknown".to_owned(), |e| e.to_string());
        tracing::warn!(%bind, %reason, "dns server not started");
        Dns::Off(format!("cannot bind {bind}: {reason}"))
    }

    /// Replaces the served names with the node's current name table, a node's name also at its
    /// mirror address in every active (not deprecated) mesh prefix plane: a plane being
    /// renumbered away is not handed to new clients (docs/dynamic-mesh.md §2.4). Only nodes
    /// (static and ephemeral) put their mirrors on their TUN devices; namespaces, `tun_devs`
    /// and containers do not hold theirs yet (step 15), so their names answer the mesh address
    /// only: a client preferring the global mirror would otherwise fail to connect.
    /// `subnet` is the mesh subnet: only its addresses have mirrors.
    pub(super) fn update(&self, node: &Node, subnet: &connectopus_config::Ipv6Net) {
        if let Dns::Running(server) = self {
            let in_subnet = |a: Ipv6Addr| {
                let len = u32::from(subnet.prefix_len());
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                u128::from(a) & mask == u128::from(subnet.network()) & mask
            };
            let planes: Vec<_> = node
                .mesh_prefixes()
                .iter()
                .filter(|p| !p.deprecated)
                .collect();
            let nodes: std::collections::BTreeSet<Ipv6Addr> = if planes.is_empty() {
                Default::default()
            } else {
                node.known_nodes()
                    .map(|(u, _)| u.origin)
                    .chain([node.address()])
                    .collect()
            };
            let names = node.names().iter().flat_map(|(n, e)| {
                let v6 = std::iter::once((n.as_str(), std::net::IpAddr::V6(e.address)));
                let mirrors = planes
                    .iter()
                    .filter(|_| in_subnet(e.address) && nodes.contains(&e.address))
                    .map(|p| (n.as_str(), std::net::IpAddr::V6(p.mirror(e.address))));
                let v4 = e.address4.map(|a| (n.as_str(), std::net::IpAddr::V4(a)));
                v6.chain(mirrors).chain(v4)
            });
            let zones: Vec<(Ipv6Addr, u8)> = planes
                .iter()
                .map(|p| (p.prefix.addr(), p.prefix.len()))
                .collect();
            let outcome = server.names().update_with_planes(names, &zones);
            for (name, error) in &outcome.rejected {
                tracing::debug!(%name, %error, "name not served");
            }
        }
    }

    /// Queries by result since the server started (empty when it is off).
    pub(super) fn queries(&self) -> BTreeMap<String, u64> {
        let Dns::Running(server) = self else {
            return BTreeMap::new();
        };
        let stats = server.stats();
        [
            ("noerror", stats.noerror),
            ("nxdomain", stats.nxdomain),
            ("refused", stats.refused),
            ("error", stats.errors),
            ("dropped", stats.dropped),
        ]
        .into_iter()
        .map(|(result, n)| (result.to_owned(), n))
        .collect()
    }

    /// Says where the server listens, or why it does not.
    pub(super) fn describe(&self) -> String {
        match self {
            Dns::Running(server) => format!(
                "udp {} tcp {} serial {}",
                server.udp_addr(),
                server.tcp_addr(),
                server.serial()
            ),
            Dns::Off(why) => format!("off: {why}"),
        }
    }
}

/// Tells systemd-resolved, when it runs, to send queries for the mesh domain to this node
/// over its TUN device. Without resolved, point `/etc/resolv.conf` at the node's address.
fn register_with_resolved(tun: &str, address: Ipv6Addr, domain: &str) {
    if !std::path::Path::new("/run/systemd/resolve/io.systemd.Resolve").exists() {
        tracing::debug!("systemd-resolved is not running; not registering the mesh domain");
        return;
    }
    let dns = std::process::Command::new("resolvectl")
        .args(["dns", tun, &address.to_string()])
        .status();
    let routing_domain = format!("~{domain}");
    let domain = std::process::Command::new("resolvectl")
        .args(["domain", tun, &routing_domain])
        .status();
    match (dns, domain) {
        (Ok(a), Ok(b)) if a.success() && b.success() => {
            tracing::info!(%tun, %routing_domain, "registered the mesh domain with systemd-resolved");
        }
        other => tracing::warn!(result = ?other, "registering with systemd-resolved failed"),
    }
}
