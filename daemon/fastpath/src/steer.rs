//! [`UdpSteering`]: the `SO_REUSEPORT` program `cx_udp_steer` and its maps, which send each link
//! peer's datagrams to the socket of the dataplane worker that owns the peer (design:
//! `connectopus_ebpf_common::steer`).
//!
//! The daemon decides who owns which peer; this only loads the program, attaches it to a
//! socket group, and writes the socket slots and owner entries.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::Ebpf;
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use connectopus_ebpf_common::fastpath::PeerKey;
use connectopus_ebpf_common::steer::{
    MAP_STEER_OUTCOMES, MAP_STEER_OWNERS, MAP_STEER_SOCKETS, PROG_UDP_STEER, SteerOutcome,
    v4_mapped,
};

use crate::FastpathError;
use crate::maps::absent_is_false;

/// `SO_ATTACH_REUSEPORT_EBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// The fds of the steering program and its maps, as a helper process passes them (or as a test
/// takes them from an object it loaded itself).
#[derive(Debug)]
pub struct UdpSteeringFds {
    /// `cx_udp_steer`.
    pub program: OwnedFd,
    /// `CX_STEER_OWNERS`.
    pub owners: OwnedFd,
    /// `CX_STEER_SOCKS`.
    pub sockets: OwnedFd,
    /// `CX_STEER_OUTCOMES`.
    pub outcomes: OwnedFd,
}

impl UdpSteeringFds {
    /// The names of the maps, in the order [`UdpSteeringFds::maps_into_array`] returns their
    /// fds (the program's fd comes separately).
    pub const MAP_NAMES: [&'static str; 3] =
        [MAP_STEER_OWNERS, MAP_STEER_SOCKETS, MAP_STEER_OUTCOMES];

    /// The program's fd and the map fds in [`UdpSteeringFds::MAP_NAMES`] order.
    pub fn into_parts(self) -> (OwnedFd, [OwnedFd; 3]) {
        (self.program, [self.owners, self.sockets, self.outcomes])
    }

    /// The inverse of [`UdpSteeringFds::into_parts`].
    pub fn from_parts(program: OwnedFd, maps: [OwnedFd; 3]) -> Self {
        let [owners, sockets, outcomes] = maps;
        UdpSteeringFds {
            program,
            owners,
            sockets,
            outcomes,
        }
    }
}

/// Datagrams per [`SteerOutcome`], summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerCounts {
    /// Sent to the owner's socket.
    pub steered: u64,
    /// From a peer without an owner entry (the kernel's hash chose).
    pub no_owner: u64,
    /// The owner entry named an empty slot or another port's socket (the hash chose).
    pub owner_gone: u64,
    /// Not readable as UDP over IP (the hash chose).
    pub unparsable: u64,
}

impl SteerCounts {
    /// The count of one outcome.
    pub fn get(&self, outcome: SteerOutcome) -> u64 {
        match outcome {
            SteerOutcome::Steered => self.steered,
            SteerOutcome::NoOwner => self.no_owner,
            SteerOutcome::OwnerGone => self.owner_gone,
            SteerOutcome::Unparsable => self.unparsable,
        }
    }

    fn set(&mut self, outcome: SteerOutcome, value: u64) {
        match outcome {
            SteerOutcome::Steered => self.steered = value,
            SteerOutcome::NoOwner => self.no_owner = value,
            SteerOutcome::OwnerGone => self.owner_gone = value,
            SteerOutcome::Unparsable => self.unparsable = value,
        }
    }
}

/// The steering program (loaded, held by fd) and its maps.
pub struct UdpSteering {
    program: OwnedFd,
    owners: HashMap<MapData, PeerKey, u32>,
    sockets: ReusePortSockArray<MapData>,
    outcomes: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for UdpSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSteering").finish_non_exhaustive()
    }
}

impl UdpSteering {
    /// Loads the program from `object` (the eBPF object's bytes) in this process. Costs this
    /// process aya's parse of the kernel's BTF; the node loads through its helper process and
    /// uses [`UdpSteering::from_fds`].
    ///
    /// # Errors
    ///
    /// [`FastpathError::BadObject`] / [`FastpathError::MissingInObject`] for an object that is
    /// not a current build; [`FastpathError::Load`] without BPF rights or if the verifier
    /// rejects the program.
    pub fn load(object: &[u8]) -> Result<Self, FastpathError> {
        let fds = load_fds(object)?;
        UdpSteering::from_fds(fds)
    }

    /// Wraps fds that a helper process (or a test) loaded.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if a map fd is not what this version expects.
    pub fn from_fds(fds: UdpSteeringFds) -> Result<Self, FastpathError> {
        fn open(fd: OwnedFd, name: &'static str) -> Result<Map, FastpathError> {
            MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(|e| map_error(name, e, true))
        }
        Ok(UdpSteering {
            program: fds.program,
            owners: HashMap::try_from(open(fds.owners, MAP_STEER_OWNERS)?)
                .map_err(|e| map_error(MAP_STEER_OWNERS, e, true))?,
            sockets: ReusePortSockArray::try_from(open(fds.sockets, MAP_STEER_SOCKETS)?)
                .map_err(|e| map_error(MAP_STEER_SOCKETS, e, true))?,
            outcomes: PerCpuArray::try_from(open(fds.outcomes, MAP_STEER_OUTCOMES)?)
                .map_err(|e| map_error(MAP_STEER_OUTCOMES, e, true))?,
        })
    }

    /// Attaches the program to the `SO_REUSEPORT` group of `socket` (a bound UDP socket with
    /// `SO_REUSEPORT`): from then on the program picks the socket for every datagram the
    /// group receives. One call per group; attaching again replaces the program.
    ///
    /// # Errors
    ///
    /// The kernel's refusal (a socket without `SO_REUSEPORT`, not bound, ...).
    pub fn attach(&self, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        let prog: libc::c_int = self.program.as_raw_fd();
        // SAFETY: `socket` is a live fd for the call; the option value is a c_int of the size
        // passed, which the kernel only reads.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                (&prog as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts `socket` (bound, `SO_REUSEPORT`, UDP) into slot `index` of the socket array,
    /// replacing what was there. A socket that closes leaves its slot by itself.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses (index out of range, socket unbound
    /// or without `SO_REUSEPORT`).
    pub fn set_socket(&mut self, index: u32, socket: BorrowedFd<'_>) -> Result<(), FastpathError> {
        self.sockets
            .set(index, &socket.as_fd(), 0)
            .map_err(|e| map_error(MAP_STEER_SOCKETS, e, false))
    }

    /// Empties slot `index`; returns whether it held a socket.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses (index out of range).
    pub fn clear_socket(&mut self, index: u32) -> Result<bool, FastpathError> {
        absent_is_false(self.sockets.clear_index(&index))
            .map_err(|e| map_error(MAP_STEER_SOCKETS, e, false))
    }

    /// Sends the datagrams from `peer` to our `local_port` to the socket in slot `index`.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the map is full (4,096 peers).
    pub fn set_owner(
        &mut self,
        peer: SocketAddr,
        local_port: u16,
        index: u32,
    ) -> Result<(), FastpathError> {
        self.owners
            .insert(peer_key(peer, local_port), index, 0)
            .map_err(|e| map_error(MAP_STEER_OWNERS, e, false))
    }

    /// Removes the owner entry of `peer` at `local_port` (its datagrams go by hash again);
    /// returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if the kernel refuses.
    pub fn remove_owner(
        &mut self,
        peer: SocketAddr,
        local_port: u16,
    ) -> Result<bool, FastpathError> {
        absent_is_false(self.owners.remove(&peer_key(peer, local_port)))
            .map_err(|e| map_error(MAP_STEER_OWNERS, e, false))
    }

    /// The slot the owner entry of `peer` at `local_port` names, if any.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if the kernel refuses the lookup.
    pub fn owner(&self, peer: SocketAddr, local_port: u16) -> Result<Option<u32>, FastpathError> {
        match self.owners.get(&peer_key(peer, local_port), 0) {
            Ok(index) => Ok(Some(index)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(MAP_STEER_OWNERS, e, true)),
        }
    }

    /// Datagrams per outcome since the program was loaded, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if the kernel refuses the lookup.
    pub fn outcomes(&self) -> Result<SteerCounts, FastpathError> {
        let mut counts = SteerCounts::default();
        for outcome in SteerOutcome::ALL {
            let per_cpu = self
                .outcomes
                .get(&outcome.index(), 0)
                .map_err(|e| map_error(MAP_STEER_OUTCOMES, e, true))?;
            counts.set(
                outcome,
                per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
            );
        }
        Ok(counts)
    }
}

/// The owner map's key for `peer` (an IPv4 peer by its IPv4-mapped address, as a dual-stack
/// socket and the program see it).
fn peer_key(peer: SocketAddr, local_port: u16) -> PeerKey {
    let addr = match peer {
        SocketAddr::V6(v6) => v6.ip().octets(),
        SocketAddr::V4(v4) => v4_mapped(v4.ip().octets()),
    };
    PeerKey::new(addr, peer.port(), local_port)
}

/// Loads the program from `object` and returns owned copies of its fd and its maps' fds;
/// everything aya allocated is dropped before returning.
pub(crate) fn load_fds(object: &[u8]) -> Result<UdpSteeringFds, FastpathError> {
    let mut ebpf = Ebpf::load(object).map_err(|source| FastpathError::BadObject {
        what: "the object".to_owned(),
        source: Some(source.into()),
    })?;
    let load_error = |source: aya::programs::ProgramError| FastpathError::Load {
        program: PROG_UDP_STEER,
        source: source.into(),
    };
    let program: &mut SkReuseport = ebpf
        .program_mut(PROG_UDP_STEER)
        .ok_or(FastpathError::MissingInObject {
            kind: "program",
            name: PROG_UDP_STEER,
        })?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    let program = program
        .fd()
        .map_err(load_error)?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| FastpathError::Load {
            program: PROG_UDP_STEER,
            source: e.into(),
        })?;
    let map_fd = |name: &'static str| -> Result<OwnedFd, FastpathError> {
        let data = match ebpf.map(name) {
            Some(Map::HashMap(m) | Map::ReusePortSockArray(m) | Map::PerCpuArray(m)) => m,
            _ => {
                return Err(FastpathError::MissingInObject { kind: "map", name });
            }
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| FastpathError::ReadMap {
                map: name,
                source: e.into(),
            })
    };
    Ok(UdpSteeringFds {
        program,
        owners: map_fd(MAP_STEER_OWNERS)?,
        sockets: map_fd(MAP_STEER_SOCKETS)?,
        outcomes: map_fd(MAP_STEER_OUTCOMES)?,
    })
}

fn map_error(map: &'static str, source: MapError, reading: bool) -> FastpathError {
    if reading {
        FastpathError::ReadMap {
            map,
            source: source.into(),
        }
    } else {
        FastpathError::WriteMap {
            map,
            source: source.into(),
        }
    }
}
