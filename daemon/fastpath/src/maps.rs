//! [`FastpathMaps`]: the node's handle on the fast path's maps, through their fds only (no
//! object, no BTF: `MapData::from_fd` asks the kernel for the map's description, nothing more).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::OwnedFd;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use connectopus_ebpf_common::fastpath::{
    FpConfig, LinkCounter, LinkKey, MAP_FP_CONFIG, MAP_FP_LINKS, MAP_FP_LOCAL_PORTS, MAP_FP_PEERS,
    MAP_FP_REASONS, MAP_FP_ROUTES, MAX_LINK_SLOTS, Peer, Reason, Route,
};

use crate::{FastpathError, ReasonCounts, RouteTarget};

/// The fds of the fast path's maps, as a helper process passes them (or as a test takes them
/// from an object it loaded itself).
#[derive(Debug)]
pub struct FastpathMapFds {
    /// `CX_FP_ROUTES`.
    pub routes: OwnedFd,
    /// `CX_FP_PEERS`.
    pub peers: OwnedFd,
    /// `CX_FP_PORTS`.
    pub local_ports: OwnedFd,
    /// `CX_FP_CONFIG`.
    pub config: OwnedFd,
    /// `CX_FP_REASONS`.
    pub reasons: OwnedFd,
    /// `CX_FP_LINKS`.
    pub links: OwnedFd,
}

impl FastpathMapFds {
    /// The names of the maps, in the order [`FastpathMapFds::into_array`] returns their fds.
    pub const NAMES: [&'static str; 6] = [
        MAP_FP_ROUTES,
        MAP_FP_PEERS,
        MAP_FP_LOCAL_PORTS,
        MAP_FP_CONFIG,
        MAP_FP_REASONS,
        MAP_FP_LINKS,
    ];

    /// The fds in [`FastpathMapFds::NAMES`] order.
    pub fn into_array(self) -> [OwnedFd; 6] {
        [
            self.routes,
            self.peers,
            self.local_ports,
            self.config,
            self.reasons,
            self.links,
        ]
    }

    /// The inverse of [`FastpathMapFds::into_array`].
    pub fn from_array(fds: [OwnedFd; 6]) -> Self {
        let [routes, peers, local_ports, config, reasons, links] = fds;
        FastpathMapFds {
            routes,
            peers,
            local_ports,
            config,
            reasons,
            links,
        }
    }
}

/// Reads and writes the fast path's maps: route entries, known peers, local ports, the TUN,
/// and the counters. What goes in is decided elsewhere (the core's forwarding snapshot); this
/// only writes it.
///
/// Every write is one map update, visible to the programs at once; a route entry is replaced
/// whole, never seen half-written.
pub struct FastpathMaps {
    routes: LpmTrie<MapData, [u8; 16], Route>,
    peers: HashMap<MapData, LinkKey, Peer>,
    local_ports: HashMap<MapData, [u8; 2], u32>,
    config: Array<MapData, FpConfig>,
    reasons: PerCpuArray<MapData, u64>,
    links: PerCpuArray<MapData, LinkCounter>,
}

impl std::fmt::Debug for FastpathMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastpathMaps").finish_non_exhaustive()
    }
}

impl FastpathMaps {
    /// Wraps the maps' fds.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if an fd is not a map of the expected type and sizes (an
    /// object from another version).
    pub fn from_fds(fds: FastpathMapFds) -> Result<Self, FastpathError> {
        fn open(fd: OwnedFd, name: &'static str) -> Result<Map, FastpathError> {
            MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(|e| read_error(name, e))
        }
        Ok(FastpathMaps {
            routes: LpmTrie::try_from(open(fds.routes, MAP_FP_ROUTES)?)
                .map_err(|e| read_error(MAP_FP_ROUTES, e))?,
            peers: HashMap::try_from(open(fds.peers, MAP_FP_PEERS)?)
                .map_err(|e| read_error(MAP_FP_PEERS, e))?,
            local_ports: HashMap::try_from(open(fds.local_ports, MAP_FP_LOCAL_PORTS)?)
                .map_err(|e| read_error(MAP_FP_LOCAL_PORTS, e))?,
            config: Array::try_from(open(fds.config, MAP_FP_CONFIG)?)
                .map_err(|e| read_error(MAP_FP_CONFIG, e))?,
            reasons: PerCpuArray::try_from(open(fds.reasons, MAP_FP_REASONS)?)
                .map_err(|e| read_error(MAP_FP_REASONS, e))?,
            links: PerCpuArray::try_from(open(fds.links, MAP_FP_LINKS)?)
                .map_err(|e| read_error(MAP_FP_LINKS, e))?,
        })
    }

    /// Sets (adds or replaces) the entry for the inner prefix `prefix/prefix_len`.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Invalid`] for a prefix length above 128 or a link slot out of range;
    /// [`FastpathError::WriteMap`] if the kernel refuses (the map is full).
    pub fn set_route(
        &mut self,
        prefix: Ipv6Addr,
        prefix_len: u8,
        target: &RouteTarget,
    ) -> Result<(), FastpathError> {
        let key = route_key(prefix, prefix_len)?;
        let value = match target {
            RouteTarget::Local => Route::local(),
            RouteTarget::Userspace => Route::userspace(),
            RouteTarget::Link(link) => {
                check_slot(link.link_slot)?;
                Route::link(
                    link.local.ip().octets(),
                    link.local.port(),
                    link.peer.ip().octets(),
                    link.peer.port(),
                    link.ifindex,
                    link.link_slot,
                )
            }
        };
        self.routes
            .insert(&key, value, 0)
            .map_err(|e| write_error(MAP_FP_ROUTES, e))
    }

    /// Removes the entry for exactly `prefix/prefix_len`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Invalid`] for a prefix length above 128; [`FastpathError::WriteMap`]
    /// if the kernel refuses.
    pub fn remove_route(
        &mut self,
        prefix: Ipv6Addr,
        prefix_len: u8,
    ) -> Result<bool, FastpathError> {
        let key = route_key(prefix, prefix_len)?;
        absent_is_false(self.routes.remove(&key)).map_err(|e| write_error(MAP_FP_ROUTES, e))
    }

    /// Accepts data datagrams from `peer` to `local` (this node's address and port for the
    /// link), counting them on `link_slot`.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Invalid`] for a link slot out of range; [`FastpathError::WriteMap`] if
    /// the kernel refuses (the map is full).
    pub fn set_peer(
        &mut self,
        peer: SocketAddrV6,
        local: SocketAddrV6,
        link_slot: u32,
    ) -> Result<(), FastpathError> {
        check_slot(link_slot)?;
        let key = peer_key(peer, local);
        let value = Peer {
            link_slot,
            flags: 0,
        };
        self.peers
            .insert(key, value, 0)
            .map_err(|e| write_error(MAP_FP_PEERS, e))
    }

    /// Stops accepting data datagrams from `peer` to `local`; returns whether it was known.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses.
    pub fn remove_peer(
        &mut self,
        peer: SocketAddrV6,
        local: SocketAddrV6,
    ) -> Result<bool, FastpathError> {
        let key = peer_key(peer, local);
        absent_is_false(self.peers.remove(&key)).map_err(|e| write_error(MAP_FP_PEERS, e))
    }

    /// Makes `ports` the set of local UDP ports ingress looks at: adds the new ones, removes
    /// the others.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses (more than 256 ports).
    pub fn set_local_ports(&mut self, ports: &[u16]) -> Result<(), FastpathError> {
        let wanted: Vec<[u8; 2]> = ports.iter().map(|p| p.to_be_bytes()).collect();
        let current: Vec<[u8; 2]> = self
            .local_ports
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| read_error(MAP_FP_LOCAL_PORTS, e))?;
        for old in current.iter().filter(|p| !wanted.contains(p)) {
            absent_is_false(self.local_ports.remove(old))
                .map_err(|e| write_error(MAP_FP_LOCAL_PORTS, e))?;
        }
        for port in wanted {
            self.local_ports
                .insert(port, 1, 0)
                .map_err(|e| write_error(MAP_FP_LOCAL_PORTS, e))?;
        }
        Ok(())
    }

    /// Sets the TUN that ingress decapsulates into (0: none, everything to userspace).
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses.
    pub fn set_tun_ifindex(&mut self, ifindex: u32) -> Result<(), FastpathError> {
        let value = FpConfig {
            tun_ifindex: ifindex,
            flags: 0,
        };
        self.config
            .set(0, value, 0)
            .map_err(|e| write_error(MAP_FP_CONFIG, e))
    }

    /// Returns the per-reason fall-back counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if the kernel refuses the lookup.
    pub fn reasons(&self) -> Result<ReasonCounts, FastpathError> {
        let mut counts = ReasonCounts::default();
        for reason in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&reason.index(), 0)
                .map_err(|e| read_error(MAP_FP_REASONS, e))?;
            counts.set(reason, per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)));
        }
        Ok(counts)
    }

    /// Returns the packet and byte counters of `link_slot`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Invalid`] for a slot out of range; [`FastpathError::ReadMap`] if the
    /// kernel refuses the lookup.
    pub fn link(&self, link_slot: u32) -> Result<LinkCounter, FastpathError> {
        check_slot(link_slot)?;
        let per_cpu = self
            .links
            .get(&link_slot, 0)
            .map_err(|e| read_error(MAP_FP_LINKS, e))?;
        Ok(per_cpu.iter().copied().sum())
    }
}

impl FastpathMaps {
    /// Zeroes the counters of `link_slot` on every CPU: for a slot given to a new link.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Invalid`] for a slot out of range; [`FastpathError::WriteMap`] if the
    /// kernel refuses.
    pub fn clear_link(&mut self, link_slot: u32) -> Result<(), FastpathError> {
        check_slot(link_slot)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| FastpathError::WriteMap {
            map: MAP_FP_LINKS,
            source: e.into(),
        })?;
        let zeroes = aya::maps::PerCpuValues::try_from(vec![LinkCounter::default(); cpus])
            .map_err(|e| FastpathError::WriteMap {
                map: MAP_FP_LINKS,
                source: e.into(),
            })?;
        self.links
            .set(link_slot, zeroes, 0)
            .map_err(|e| write_error(MAP_FP_LINKS, e))
    }
}

fn route_key(prefix: Ipv6Addr, prefix_len: u8) -> Result<Key<[u8; 16]>, FastpathError> {
    if prefix_len > 128 {
        return Err(FastpathError::Invalid {
            what: format!("prefix length {prefix_len} of {prefix} (at most 128)"),
        });
    }
    Ok(Key::new(u32::from(prefix_len), prefix.octets()))
}

fn check_slot(link_slot: u32) -> Result<(), FastpathError> {
    if link_slot >= MAX_LINK_SLOTS {
        return Err(FastpathError::Invalid {
            what: format!("link slot {link_slot} (the maps have {MAX_LINK_SLOTS})"),
        });
    }
    Ok(())
}

/// A delete of a missing key is `Ok(false)`.
fn absent_is_false(result: Result<(), MapError>) -> Result<bool, MapError> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn read_error(map: &'static str, source: MapError) -> FastpathError {
    FastpathError::ReadMap {
        map,
        source: source.into(),
    }
}

fn write_error(map: &'static str, source: MapError) -> FastpathError {
    FastpathError::WriteMap {
        map,
        source: source.into(),
    }
}

/// The `CX_FP_PEERS` key for datagrams from `peer` to `local`.
fn peer_key(peer: SocketAddrV6, local: SocketAddrV6) -> LinkKey {
    LinkKey::new(
        peer.ip().octets(),
        peer.port(),
        local.ip().octets(),
        local.port(),
    )
}
