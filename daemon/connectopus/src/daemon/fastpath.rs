//! The eBPF fast path, daemon side: the core decides ([`Command::SetFastpathRoutes`]), this
//! module writes the maps, in the same turn.
//!
//! At start the node loads the fast-path programs through its eBPF helper process (as it does
//! the TUN counters; aya never runs in the node) and attaches the egress program to its TUN
//! device. Then, for every set of entries the core issues:
//! - each plaintext udp link an entry points to, and each established plaintext udp link, gets
//!   its underlay resolved once (this node's address and port, the peer's, the interface that
//!   holds the local address and its MTU), a counter slot, a `CX_FP_PEERS` entry, and the ingress
//!   program on its interface (attached with the interface's first link, detached with its last;
//!   IPv6 forwarding is switched on there, which `bpf_fib_lookup` needs);
//! - each prefix becomes a `CX_FP_ROUTES` entry: `Local` for the node's own, `Userspace` for the
//!   addresses of its other TUN devices (the daemon delivers to those), the link's underlay for
//!   the rest; entries whose link is not usable (IPv4 underlay, MTU rule broken) are left out,
//!   and that link's status says why;
//! - whatever is no longer wanted is removed.
//!
//! A packet without an entry goes through userspace as before, so an error here costs speed,
//! never connectivity: it is logged and shown in `status`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;

use connectopus_core::LinkId;
use connectopus_core::node::{FastpathEntry, FastpathTarget};
use connectopus_fastpath::{Fastpath, LinkEndpoints, Reason, ReasonCounts, RouteTarget};
use serde::{Deserialize, Serialize};

/// Bytes the fast path puts around a packet: outer IPv6 (40) and UDP (8) headers.
pub(super) const ENCAP_OVERHEAD: u16 = 48;

/// Most counter slots (`MAX_LINK_SLOTS` in the eBPF programs).
const MAX_LINK_SLOTS: u32 = 1024;

/// The environment switch that turns the fast path off (benchmarks).
pub(super) const DISABLE_ENV: &str = "CONNECTOPUS_DISABLE_FASTPATH";

/// A link's fast-path state, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFastpathReport {
    /// Whether the fast path carries packets on this link (a peer entry, and route entries
    /// if any prefix is routed over it).
    pub active: bool,
    /// Packets the eBPF programs carried on this link (both directions).
    pub packets: u64,
    /// Their bytes (inner IPv6 packets).
    pub bytes: u64,
    /// Why the fast path does not carry this link, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The underlay of one plaintext udp link, as the daemon knows it.
#[derive(Debug, Clone)]
pub(super) struct LinkUnderlay {
    /// The peer's address and port.
    pub(super) peer: SocketAddr,
    /// This node's port.
    pub(super) local_port: u16,
    /// This node's address, when the socket knows it (a listener answers from the address it
    /// was dialled on); otherwise the route to the peer chooses.
    pub(super) local_ip: Option<IpAddr>,
}

/// One link the maps know.
#[derive(Debug, Clone)]
struct Installed {
    endpoints: LinkEndpoints,
    ifname: String,
}

/// The fast path's maps as this node keeps them.
pub(super) struct FastpathDriver {
    fastpath: Fastpath,
    tun_mtu: u16,
    /// Addresses of the node's other TUN devices: the daemon delivers to them.
    userspace: Vec<Ipv6Addr>,
    links: BTreeMap<LinkId, Installed>,
    /// Why a plaintext link is not carried.
    refused: BTreeMap<LinkId, String>,
    routes: BTreeMap<(Ipv6Addr, u8), RouteTarget>,
    underlays: BTreeMap<String, usize>,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// Errors from the last map writes, for status.
    last_error: Option<String>,
}

/// The fast path, or why the node runs without it.
pub(super) enum FastpathState {
    On(Box<FastpathDriver>),
    Off(String),
}

impl std::fmt::Debug for FastpathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl FastpathState {
    /// Loads the programs through the helper process and attaches the egress program to
    /// `tun`; off, with the reason, when that is impossible or disabled.
    pub(super) fn start(
        disabled_by_config: bool,
        has_plain_udp_backend: bool,
        tun: Option<(&str, u16)>,
        object: Option<&Path>,
        helper: connectopus_fastpath::HelperStart,
    ) -> FastpathState {
        if disabled_by_config {
            return FastpathState::Off("disabled by the configuration (fastpath.disable)".into());
        }
        if !has_plain_udp_backend {
            // DTLS and TCP links go through userspace whatever happens; the programs would
            // only cost every TUN packet a lookup.
            return FastpathState::Off(
                "no udp-dialer/udp-listener backend: the fast path carries plaintext udp links only"
                    .into(),
            );
        }
        if std::env::var(DISABLE_ENV).is_ok_and(|v| v == "1") {
            return FastpathState::Off(format!("disabled by {DISABLE_ENV}=1"));
        }
        let Some((tun, tun_mtu)) = tun else {
            return FastpathState::Off("no tun device".into());
        };
        if object.is_none() && connectopus_fastpath::embedded_object().is_none() {
            return FastpathState::Off(
                connectopus_fastpath::FastpathError::NotEmbedded.to_string(),
            );
        }
        let loaded = Fastpath::load_via_helper(helper, object).and_then(|mut fastpath| {
            fastpath.attach_tun(tun)?;
            Ok(fastpath)
        });
        match loaded {
            Ok(fastpath) => {
                tracing::info!(%tun, "ebpf fast path loaded");
                FastpathState::On(Box::new(FastpathDriver {
                    fastpath,
                    tun_mtu,
                    userspace: Vec::new(),
                    links: BTreeMap::new(),
                    refused: BTreeMap::new(),
                    routes: BTreeMap::new(),
                    underlays: BTreeMap::new(),
                    free_slots: Vec::new(),
                    next_slot: 0,
                    last_error: None,
                }))
            }
            Err(error) => {
                let error = format!("{:#}", anyhow::Error::from(error));
                tracing::info!(%error, "running without the ebpf fast path");
                FastpathState::Off(error)
            }
        }
    }

    pub(super) fn is_on(&self) -> bool {
        matches!(self, FastpathState::On(_))
    }

    /// The MTU of the TUN device the fast path serves, when it is on.
    pub(super) fn tun_mtu(&self) -> Option<u16> {
        match self {
            FastpathState::On(d) => Some(d.tun_mtu),
            FastpathState::Off(_) => None,
        }
    }

    pub(super) fn driver_mut(&mut self) -> Option<&mut FastpathDriver> {
        match self {
            FastpathState::On(d) => Some(d),
            FastpathState::Off(_) => None,
        }
    }

    /// One line for `status`: `on (tun X, underlays a, b)` or `off: why`.
    pub(super) fn describe(&self) -> String {
        match self {
            FastpathState::On(d) => {
                let underlays: Vec<&str> = d.fastpath.underlays().collect();
                let mut line = format!(
                    "on (tun {}, underlays {}, {} routes, {} links)",
                    d.fastpath.tun().unwrap_or("-"),
                    if underlays.is_empty() {
                        "none yet".to_owned()
                    } else {
                        underlays.join(", ")
                    },
                    d.routes.len(),
                    d.links.len()
                );
                if let Some(error) = &d.last_error {
                    line.push_str(&format!("; last error: {error}"));
                }
                line
            }
            FastpathState::Off(why) => format!("off: {why}"),
        }
    }

    /// The per-reason counts of packets the programs left to userspace (empty when off).
    pub(super) fn reasons(&self) -> BTreeMap<String, u64> {
        let FastpathState::On(d) = self else {
            return BTreeMap::new();
        };
        let counts = d.fastpath.maps().reasons().unwrap_or_else(|error| {
            tracing::debug!(%error, "fast path reasons unreadable");
            ReasonCounts::default()
        });
        counts
            .iter()
            .map(|(reason, n): (Reason, u64)| (reason.as_str().to_owned(), n))
            .collect()
    }

    /// The fast-path state of `link` (of `kind`, e.g. `dtls dialer`) for status; `None` for a
    /// DTLS or TCP link while the fast path is off (it would not carry them either way).
    pub(super) fn link_report(
        &self,
        link: LinkId,
        kind: &str,
        plain_udp: bool,
    ) -> Option<LinkFastpathReport> {
        if !plain_udp {
            // On a node whose udp links are fast, say that this one is not.
            return self.is_on().then(|| LinkFastpathReport {
                reason: Some(format!(
                    "{kind} link: carried by userspace; the fast path carries plaintext udp links only"
                )),
                ..LinkFastpathReport::default()
            });
        }
        match self {
            FastpathState::Off(why) => Some(LinkFastpathReport {
                reason: Some(format!("fast path off: {why}")),
                ..LinkFastpathReport::default()
            }),
            FastpathState::On(d) => Some(d.link_report(link)),
        }
    }
}

impl FastpathDriver {
    /// Sets the addresses of the node's other TUN devices (the daemon delivers to them).
    pub(super) fn set_userspace_addresses(&mut self, addresses: Vec<Ipv6Addr>) {
        self.userspace = addresses;
    }

    fn link_report(&self, link: LinkId) -> LinkFastpathReport {
        match self.links.get(&link) {
            Some(installed) => {
                let counter = self
                    .fastpath
                    .maps()
                    .link(installed.endpoints.link_slot)
                    .unwrap_or_default();
                LinkFastpathReport {
                    active: true,
                    packets: counter.tx_packets + counter.rx_packets,
                    bytes: counter.tx_bytes + counter.rx_bytes,
                    reason: None,
                }
            }
            None => LinkFastpathReport {
                reason: Some(
                    self.refused
                        .get(&link)
                        .cloned()
                        .unwrap_or_else(|| "no established session with a fast-path peer".into()),
                ),
                ..LinkFastpathReport::default()
            },
        }
    }

    /// Makes the maps hold `entries` (the core's latest set) and peers for `established`
    /// (the plaintext udp links with an established session); `underlay` tells a link's
    /// addresses.
    pub(super) fn apply(
        &mut self,
        entries: &[FastpathEntry],
        established: &BTreeSet<LinkId>,
        underlay: impl Fn(LinkId) -> Option<LinkUnderlay>,
    ) {
        let mut errors = Vec::new();
        // Links: every established plaintext link decapsulates here (its peer's datagrams
        // have the same format whether its own fast path made them or not); links that
        // routes point to are established too, or the core would not name them.
        let mut wanted: BTreeSet<LinkId> = established.clone();
        for entry in entries {
            if let FastpathTarget::Link { link, .. } = entry.target {
                wanted.insert(link);
            }
        }
        let gone: Vec<LinkId> = self
            .links
            .keys()
            .filter(|l| !wanted.contains(l))
            .copied()
            .collect();
        self.refused.retain(|l, _| wanted.contains(l));
        for link in &wanted {
            if self.links.contains_key(link) {
                continue;
            }
            match underlay(*link)
                .ok_or_else(|| "the link is gone".to_owned())
                .and_then(|u| self.install_link(*link, &u))
            {
                Ok(()) => {
                    self.refused.remove(link);
                }
                Err(why) => {
                    tracing::info!(%link, %why, "link not on the fast path");
                    self.refused.insert(*link, why);
                }
            }
        }

        // Routes.
        let mut routes: BTreeMap<(Ipv6Addr, u8), RouteTarget> = BTreeMap::new();
        for entry in entries {
            let key = (entry.prefix.addr(), entry.prefix.len());
            let target = match entry.target {
                FastpathTarget::Local => RouteTarget::Local,
                FastpathTarget::Link { link, .. } => match self.links.get(&link) {
                    Some(installed) => RouteTarget::Link(installed.endpoints),
                    None => continue,
                },
            };
            routes.insert(key, target);
        }
        if !routes.is_empty() {
            for address in &self.userspace {
                routes.insert((*address, 128), RouteTarget::Userspace);
            }
        }
        let maps = self.fastpath.maps_mut();
        for (key, target) in &routes {
            if self.routes.get(key) != Some(target)
                && let Err(error) = maps.set_route(key.0, key.1, target)
            {
                errors.push(format!("route {}/{}: {error}", key.0, key.1));
            }
        }
        for key in self.routes.keys() {
            if !routes.contains_key(key)
                && let Err(error) = maps.remove_route(key.0, key.1)
            {
                errors.push(format!("removing route {}/{}: {error}", key.0, key.1));
            }
        }
        self.routes = routes;

        for link in gone {
            self.remove_link(link);
        }
        let ports: BTreeSet<u16> = self
            .links
            .values()
            .map(|l| l.endpoints.local.port())
            .collect();
        let ports: Vec<u16> = ports.into_iter().collect();
        if let Err(error) = self.fastpath.maps_mut().set_local_ports(&ports) {
            errors.push(format!("local ports: {error}"));
        }
        if !errors.is_empty() {
            let joined = errors.join("; ");
            tracing::warn!(errors = %joined, "fast path map writes failed");
            self.last_error = Some(joined);
        }
    }

    /// Resolves a link's underlay and writes its peer entry; says why not.
    fn install_link(&mut self, link: LinkId, u: &LinkUnderlay) -> Result<(), String> {
        let SocketAddr::V6(peer) = u.peer else {
            return Err("IPv4 underlay: the fast path encapsulates in IPv6 only".into());
        };
        if peer.ip().to_ipv4_mapped().is_some() {
            return Err("IPv4 underlay: the fast path encapsulates in IPv6 only".into());
        }
        let local_ip = match u.local_ip {
            Some(IpAddr::V6(ip)) if !ip.is_unspecified() => ip,
            Some(IpAddr::V4(_)) => return Err("IPv4 underlay".into()),
            _ => source_address_to(peer).map_err(|e| format!("no route to the peer: {e}"))?,
        };
        let (ifindex, ifname) = interface_of(local_ip)
            .ok_or_else(|| format!("no interface holds the local address {local_ip}"))?;
        let underlay_mtu = interface_mtu(&ifname)
            .ok_or_else(|| format!("cannot read the MTU of underlay {ifname}"))?;
        if u32::from(self.tun_mtu) + u32::from(ENCAP_OVERHEAD) > underlay_mtu {
            return Err(format!(
                "MTU rule: tun MTU {} is above underlay {ifname} MTU {underlay_mtu} - {ENCAP_OVERHEAD}",
                self.tun_mtu
            ));
        }
        enable_forwarding(&ifname).map_err(|e| {
            format!("cannot set net.ipv6.conf.{ifname}.forwarding=1 (bpf_fib_lookup needs it): {e}")
        })?;
        self.fastpath
            .attach_underlay(&ifname)
            .map_err(|e| format!("attaching to {ifname}: {e}"))?;
        *self.underlays.entry(ifname.clone()).or_insert(0) += 1;
        let Some(slot) = self.free_slots.pop().or_else(|| {
            (self.next_slot < MAX_LINK_SLOTS).then(|| {
                self.next_slot += 1;
                self.next_slot - 1
            })
        }) else {
            self.release_underlay(&ifname);
            return Err("no free counter slot".into());
        };
        let local = SocketAddrV6::new(local_ip, u.local_port, 0, 0);
        let maps = self.fastpath.maps_mut();
        let written = maps
            .clear_link(slot)
            .and_then(|()| maps.set_peer(peer, local, slot));
        if let Err(error) = written {
            self.free_slots.push(slot);
            self.release_underlay(&ifname);
            return Err(format!("peer entry: {error}"));
        }
        let endpoints = LinkEndpoints {
            local,
            peer: SocketAddrV6::new(*peer.ip(), peer.port(), 0, 0),
            ifindex,
            link_slot: slot,
        };
        tracing::info!(%link, local = %endpoints.local, peer = %endpoints.peer, underlay = %ifname, slot, "link on the fast path");
        self.links.insert(link, Installed { endpoints, ifname });
        Ok(())
    }

    fn remove_link(&mut self, link: LinkId) {
        let Some(installed) = self.links.remove(&link) else {
            return;
        };
        let peer = installed.endpoints.peer;
        if let Err(error) = self
            .fastpath
            .maps_mut()
            .remove_peer(peer, installed.endpoints.local)
        {
            tracing::warn!(%link, %error, "removing the fast path's peer entry");
        }
        self.free_slots.push(installed.endpoints.link_slot);
        self.release_underlay(&installed.ifname);
        tracing::info!(%link, "link off the fast path");
    }

    fn release_underlay(&mut self, ifname: &str) {
        let Some(users) = self.underlays.get_mut(ifname) else {
            return;
        };
        *users = users.saturating_sub(1);
        if *users == 0 {
            self.underlays.remove(ifname);
            self.fastpath.detach_underlay(ifname);
        }
    }
}

/// The source address the kernel picks to reach `peer` (a connected UDP socket sends nothing).
fn source_address_to(peer: SocketAddrV6) -> std::io::Result<Ipv6Addr> {
    let socket = std::net::UdpSocket::bind("[::]:0")?;
    socket.connect(peer)?;
    match socket.local_addr()? {
        SocketAddr::V6(local) => Ok(*local.ip()),
        SocketAddr::V4(_) => Err(std::io::Error::other("IPv4 source")),
    }
}

/// The interface holding `address`, from `/proc/net/if_inet6` (address in hex, index, prefix
/// length, scope, flags, name).
fn interface_of(address: Ipv6Addr) -> Option<(u32, String)> {
    let table = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    let wanted = address
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [addr, index, _, _, _, name] if *addr == wanted => {
                Some((u32::from_str_radix(index, 16).ok()?, (*name).to_owned()))
            }
            _ => None,
        }
    })
}

fn interface_mtu(ifname: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sets `net.ipv6.conf.<ifname>.forwarding=1` unless it is set: `bpf_fib_lookup` answers only
/// on interfaces that forward.
fn enable_forwarding(ifname: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding");
    if std::fs::read_to_string(&path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(&path, "1")?;
    tracing::info!(%ifname, "net.ipv6.conf.{ifname}.forwarding=1 for the fast path");
    Ok(())
}

impl super::Daemon {
    /// Writes the core's fast-path entries into the maps (no-op when the fast path is off).
    pub(super) fn apply_fastpath(&mut self, entries: &[FastpathEntry]) {
        // The daemon delivers to its other TUN devices (tun_devs, namespaces) itself.
        let other_tuns: Vec<Ipv6Addr> = self
            .tuns
            .iter()
            .skip(1)
            .map(crate::tun::TunDevice::address)
            .collect();
        let Some(driver) = self.fastpath.driver_mut() else {
            return;
        };
        driver.set_userspace_addresses(other_tuns);
        // The forwarding snapshot's links: established sessions, never a joining one.
        let forwarding = self.node.forwarding_snapshot().clone();
        let established: BTreeSet<LinkId> = self
            .node
            .sessions()
            .filter(|s| s.info().plain_udp && forwarding.is_established(s.link()))
            .map(|s| s.link())
            .collect();
        let links = &self.links;
        let udp = &self.udp;
        driver.apply(entries, &established, |link| {
            let l = links.get(&link)?;
            let super::Transport::PlainUdp(p) = &l.transport else {
                return None;
            };
            let socket = udp.get(p.endpoint)?.as_ref()?;
            let bound = socket.socket.local_addr().ok()?;
            Some(LinkUnderlay {
                peer: l.remote,
                local_port: bound.port(),
                local_ip: p
                    .local
                    .or_else(|| (!bound.ip().is_unspecified()).then(|| bound.ip())),
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_address() {
        if !Path::new("/proc/net/if_inet6").exists() {
            return;
        }
        if let Some((index, name)) = interface_of(Ipv6Addr::LOCALHOST) {
            assert_eq!(name, "lo");
            assert!(index > 0);
        }
    }

    #[test]
    fn disabled_by_configuration_says_so() {
        let state = FastpathState::start(
            true,
            true,
            Some(("cx-x", 1400)),
            None,
            crate::ebpf_helper::start(None),
        );
        assert!(!state.is_on());
        assert!(state.describe().contains("fastpath.disable"));
        let state = FastpathState::start(
            false,
            false,
            Some(("cx-x", 1400)),
            None,
            crate::ebpf_helper::start(None),
        );
        assert!(!state.is_on());
        assert!(
            state
                .describe()
                .contains("no udp-dialer/udp-listener backend")
        );
    }
}
