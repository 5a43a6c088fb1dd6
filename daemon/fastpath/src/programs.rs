//! [`Fastpath`]: the fast-path programs, held by their fds, attached by the node itself.
//!
//! Loading (aya parsing the object and the kernel's BTF) happens once, in a helper process
//! ([`Fastpath::load_via_helper`]) or in this one ([`Fastpath::load`]); what stays is a set of
//! fds: the two programs and the six maps. Attaching is then a single `BPF_LINK_CREATE`
//! (TCX) syscall with a program fd, so the node attaches the TUN egress program at start and
//! the underlay ingress program to each interface when a link comes up, with no helper and no
//! aya: the link fd it gets back is the attachment (closing it detaches).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::Ebpf;
use connectopus_ebpf_common::fastpath::{PROG_FP_TUN_EGRESS, PROG_FP_UNDERLAY_INGRESS};

use crate::imp::classifier;
use crate::maps::{FastpathMapFds, FastpathMaps};
use crate::{AttachMode, FastpathError};

/// `bpf_attach_type`: BPF_TCX_INGRESS, BPF_TCX_EGRESS.
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `bpf_cmd`: BPF_LINK_CREATE.
const BPF_LINK_CREATE: libc::c_long = 28;

/// The fds of both fast-path programs.
#[derive(Debug)]
pub struct FastpathProgramFds {
    /// `cx_fp_tun_eg`, for the TUN's egress.
    pub tun_egress: OwnedFd,
    /// `cx_fp_ul_in`, for each underlay interface's ingress.
    pub underlay_ingress: OwnedFd,
}

/// The eBPF fast path of a node: its programs (loaded, held by fd), its maps, and the TCX links
/// that attach the programs to the TUN and the underlay interfaces. Dropping it detaches
/// everything (as does the node dying: links die with their last fd).
pub struct Fastpath {
    programs: FastpathProgramFds,
    maps: FastpathMaps,
    tun: Option<(String, OwnedFd)>,
    underlays: BTreeMap<String, OwnedFd>,
}

impl std::fmt::Debug for Fastpath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fastpath")
            .field("tun", &self.tun.as_ref().map(|(name, _)| name))
            .field("underlays", &self.underlays.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Fastpath {
    /// Loads the fast-path programs from `object` (the eBPF object's bytes) in this process.
    /// Attaches nothing. Costs this process aya's parse of the kernel's BTF (~30 MiB of peak
    /// RSS); the node uses [`Fastpath::load_via_helper`].
    ///
    /// # Errors
    ///
    /// [`FastpathError::BadObject`] / [`FastpathError::MissingInObject`] for an object that is
    /// not a current build; [`FastpathError::Load`] without BPF rights or if the verifier
    /// rejects a program.
    pub fn load(object: &[u8]) -> Result<Self, FastpathError> {
        let (programs, maps) = load_fds(object)?;
        crate::imp::give_back_free_heap();
        Fastpath::from_fds(programs, maps)
    }

    /// Wraps fds that a helper process (or a test) loaded.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if a map fd is not what this version expects.
    pub fn from_fds(
        programs: FastpathProgramFds,
        maps: FastpathMapFds,
    ) -> Result<Self, FastpathError> {
        Ok(Fastpath {
            programs,
            maps: FastpathMaps::from_fds(maps)?,
            tun: None,
            underlays: BTreeMap::new(),
        })
    }

    /// Attaches the egress program to the TUN `ifname` (TCX, after the TUN counters, which
    /// attach first) and makes it the interface ingress decapsulates into. Replaces an earlier
    /// TUN attachment. Runs in the calling thread's network namespace.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Attach`] if the interface does not exist or the kernel refuses (TCX
    /// needs Linux 6.6 and CAP_NET_ADMIN).
    pub fn attach_tun(&mut self, ifname: &str) -> Result<(), FastpathError> {
        let ifindex =
            ifindex(ifname).map_err(|e| attach_error(PROG_FP_TUN_EGRESS, "egress", ifname, e))?;
        let link = tcx_link_create(self.programs.tun_egress.as_fd(), ifindex, BPF_TCX_EGRESS)
            .map_err(|e| attach_error(PROG_FP_TUN_EGRESS, "egress", ifname, e))?;
        self.maps.set_tun_ifindex(ifindex)?;
        self.tun = Some((ifname.to_owned(), link));
        Ok(())
    }

    /// Attaches the ingress program to the underlay interface `ifname` (TCX), unless it is
    /// attached there already. Call it when a udp link on that interface comes up. Runs in the
    /// calling thread's network namespace.
    ///
    /// # Errors
    ///
    /// [`FastpathError::Attach`] if the interface does not exist or the kernel refuses.
    pub fn attach_underlay(&mut self, ifname: &str) -> Result<(), FastpathError> {
        if self.underlays.contains_key(ifname) {
            return Ok(());
        }
        let fail = |e| attach_error(PROG_FP_UNDERLAY_INGRESS, "ingress", ifname, e);
        let ifindex = ifindex(ifname).map_err(fail)?;
        let link = tcx_link_create(
            self.programs.underlay_ingress.as_fd(),
            ifindex,
            BPF_TCX_INGRESS,
        )
        .map_err(fail)?;
        self.underlays.insert(ifname.to_owned(), link);
        Ok(())
    }

    /// Detaches the ingress program from `ifname`; returns whether it was attached.
    pub fn detach_underlay(&mut self, ifname: &str) -> bool {
        self.underlays.remove(ifname).is_some()
    }

    /// Detaches the egress program from the TUN (ingress then has no TUN to decapsulate into
    /// and passes everything to userspace).
    ///
    /// # Errors
    ///
    /// [`FastpathError::WriteMap`] if clearing the TUN in the configuration map fails.
    pub fn detach_tun(&mut self) -> Result<(), FastpathError> {
        self.tun = None;
        self.maps.set_tun_ifindex(0)
    }

    /// The TUN the egress program is attached to.
    pub fn tun(&self) -> Option<&str> {
        self.tun.as_ref().map(|(name, _)| name.as_str())
    }

    /// The underlay interfaces the ingress program is attached to, in name order.
    pub fn underlays(&self) -> impl Iterator<Item = &str> {
        self.underlays.keys().map(String::as_str)
    }

    /// The maps, to read counters.
    pub fn maps(&self) -> &FastpathMaps {
        &self.maps
    }

    /// The maps, to set routes, peers and ports.
    pub fn maps_mut(&mut self) -> &mut FastpathMaps {
        &mut self.maps
    }

    /// How the programs are attached (always TCX: the fast path needs Linux 6.6).
    pub fn attach_mode(&self) -> AttachMode {
        AttachMode::Tcx
    }
}

/// Loads both programs from `object` and returns owned copies of their fds and the maps' fds;
/// everything aya allocated is dropped before returning (the fds keep programs and maps alive).
pub(crate) fn load_fds(
    object: &[u8],
) -> Result<(FastpathProgramFds, FastpathMapFds), FastpathError> {
    let mut ebpf = Ebpf::load(object).map_err(|source| FastpathError::BadObject {
        what: "the object".to_owned(),
        source: Some(source.into()),
    })?;
    let mut program_fd = |name: &'static str| -> Result<OwnedFd, FastpathError> {
        let program = classifier(&mut ebpf, name)?;
        program.load().map_err(|source| FastpathError::Load {
            program: name,
            source: source.into(),
        })?;
        let fd = program.fd().map_err(|source| FastpathError::Load {
            program: name,
            source: source.into(),
        })?;
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(|source| FastpathError::Load {
                program: name,
                source: source.into(),
            })
    };
    let programs = FastpathProgramFds {
        tun_egress: program_fd(PROG_FP_TUN_EGRESS)?,
        underlay_ingress: program_fd(PROG_FP_UNDERLAY_INGRESS)?,
    };
    let mut fds = Vec::with_capacity(FastpathMapFds::NAMES.len());
    for name in FastpathMapFds::NAMES {
        let missing = FastpathError::MissingInObject { kind: "map", name };
        let fd = ebpf
            .map(name)
            .and_then(map_data)
            .ok_or(missing)?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| FastpathError::ReadMap {
                map: name,
                source: e.into(),
            })?;
        fds.push(fd);
    }
    let fds: [OwnedFd; 6] = fds.try_into().map_err(|_| FastpathError::MissingInObject {
        kind: "map",
        name: "of the fast path",
    })?;
    Ok((programs, FastpathMapFds::from_array(fds)))
}

/// The `MapData` of the map kinds the fast path uses; `None` for any other kind.
fn map_data(map: &aya::maps::Map) -> Option<&aya::maps::MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(m) | Map::HashMap(m) | Map::LpmTrie(m) | Map::PerCpuArray(m) => Some(m),
        _ => None,
    }
}

fn ifindex(ifname: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// `BPF_LINK_CREATE` of a TCX link: attaches `prog` at the end of the TCX chain of `ifindex`.
fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    /// The `link_create` member of `union bpf_attr` up to its `tcx` part, zero-padded.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        _pad: u32,
        expected_revision: u64,
        _rest: [u64; 4],
    }
    let attr = LinkCreate {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?,
        target_ifindex: ifindex,
        attach_type,
        flags: 0,
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
        _rest: [0; 4],
    };
    // SAFETY: `attr` is a properly initialised prefix of `union bpf_attr` for BPF_LINK_CREATE
    // (all other bytes zero), of the size passed; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreate,
            std::mem::size_of::<LinkCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attach_error(
    program: &'static str,
    direction: &'static str,
    ifname: &str,
    source: io::Error,
) -> FastpathError {
    FastpathError::Attach {
        program,
        direction,
        ifname: ifname.to_owned(),
        source: source.into(),
    }
}
