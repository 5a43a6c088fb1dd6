//! [`TunCounters`] on Linux, with aya; loading in a helper process is in `loader`.

use std::io;
use std::os::fd::OwnedFd;

use aya::Ebpf;
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use connectopus_ebpf_common::{
    Direction, MAP_TUN_COUNTERS, PROG_TUN_COUNT_EGRESS, PROG_TUN_COUNT_INGRESS, TunCounter,
};

use crate::{AttachMode, CounterSnapshot, FastpathError};

/// Packet and byte counters on both directions of a TUN device: two tc programs, attached by
/// [`TunCounters::attach_via_helper`] (or [`TunCounters::attach`]) and detached on drop.
///
/// The programs never drop or change a packet, and return "no verdict", so eBPF programs
/// attached after them on the same hook still run. With TCX they are attached first, so they
/// count every packet before a later program can redirect it.
pub struct TunCounters {
    counters: PerCpuArray<MapData, TunCounter>,
    ifname: String,
    mode: AttachMode,
    attachment: Attachment,
}

/// What keeps the programs attached.
enum Attachment {
    /// TCX links that a helper process made and passed to this one: closing the last fd of a
    /// link detaches its program (so they also go when this process dies).
    Links {
        /// Held, never read: they are what keeps the programs attached.
        _fds: Vec<OwnedFd>,
    },
    /// The object loaded in this process; dropping it detaches the programs.
    InProcess {
        /// Held, never read: dropping it detaches the programs.
        _loaded: Box<Loaded>,
    },
}

impl std::fmt::Debug for TunCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunCounters")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .field(
                "loaded",
                &match self.attachment {
                    Attachment::Links { .. } => "by a helper process",
                    Attachment::InProcess { .. } => "in this process",
                },
            )
            .finish_non_exhaustive()
    }
}

impl TunCounters {
    /// Loads the counter programs from `object` (the bytes of the eBPF object, see
    /// [`crate::load_object`]) in this process and attaches them to the ingress and egress of
    /// `ifname`, in the calling thread's network namespace.
    ///
    /// Uses TCX links on kernel 6.6 and later, otherwise a `clsact` qdisc (added if missing, and
    /// left in place) with netlink filters; [`TunCounters::attach_mode`] tells which.
    ///
    /// Loading costs this process about 30 MiB of peak resident memory (aya parses the
    /// kernel's BTF); [`TunCounters::attach_via_helper`] avoids that. Afterwards the freed heap
    /// is given back to the kernel (`malloc_trim` with glibc), so the current resident memory
    /// goes back down, but the peak stays.
    ///
    /// # Errors
    ///
    /// [`FastpathError::BadObject`] or [`FastpathError::MissingInObject`] if `object` is not a
    /// current build, [`FastpathError::Load`] without privileges or if the verifier rejects a
    /// program, [`FastpathError::Attach`] if the interface does not exist. Nothing stays
    /// attached after an error.
    pub fn attach(ifname: &str, object: &[u8]) -> Result<Self, FastpathError> {
        let mut loaded = Loaded::attach(ifname, object, attach_mode_for_running_kernel())?;
        let map = loaded
            .ebpf
            .take_map(MAP_TUN_COUNTERS)
            .ok_or(FastpathError::MissingInObject {
                kind: "map",
                name: MAP_TUN_COUNTERS,
            })?;
        let counters = TunCounters {
            counters: PerCpuArray::try_from(map).map_err(read_error)?,
            ifname: ifname.to_owned(),
            mode: loaded.mode,
            attachment: Attachment::InProcess {
                _loaded: Box::new(loaded),
            },
        };
        give_back_free_heap();
        Ok(counters)
    }

    /// Wraps what a helper process passed: the counter map and the TCX links.
    pub(crate) fn from_helper(
        ifname: &str,
        map: OwnedFd,
        links: Vec<OwnedFd>,
    ) -> Result<Self, FastpathError> {
        let map = MapData::from_fd(map)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(read_error)?;
        Ok(TunCounters {
            counters: map,
            ifname: ifname.to_owned(),
            mode: AttachMode::Tcx,
            attachment: Attachment::Links { _fds: links },
        })
    }

    /// Returns the counters, summed over CPUs, since the programs were attached.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if the kernel refuses the map lookup (not expected while the
    /// programs are attached).
    pub fn read(&self) -> Result<CounterSnapshot, FastpathError> {
        let read = |direction: Direction| -> Result<TunCounter, FastpathError> {
            let per_cpu = self
                .counters
                .get(&direction.index(), 0)
                .map_err(read_error)?;
            Ok(per_cpu.iter().copied().sum())
        };
        Ok(CounterSnapshot {
            ingress: read(Direction::Ingress)?,
            egress: read(Direction::Egress)?,
        })
    }

    /// Returns the interface the counters are attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Returns how the programs were attached.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Returns whether the programs were loaded by a helper process (see
    /// [`TunCounters::attach_via_helper`]) rather than in this one.
    pub fn loaded_by_helper(&self) -> bool {
        matches!(self.attachment, Attachment::Links { .. })
    }
}

/// Gives the heap that loading used and freed (aya's parse of the kernel's BTF, about 15 MiB
/// still resident) back to the kernel: glibc keeps it otherwise.
pub(crate) fn give_back_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn read_error(source: aya::maps::MapError) -> FastpathError {
    FastpathError::ReadMap {
        map: MAP_TUN_COUNTERS,
        source: source.into(),
    }
}

/// The eBPF object loaded in this process, its two programs attached.
pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) mode: AttachMode,
    pub(crate) links: Vec<(&'static str, SchedClassifierLinkId)>,
}

impl Loaded {
    /// Loads `object` and attaches both programs to `ifname` in `mode`.
    pub(crate) fn attach(
        ifname: &str,
        object: &[u8],
        mode: AttachMode,
    ) -> Result<Self, FastpathError> {
        let mut ebpf = Ebpf::load(object).map_err(|source| FastpathError::BadObject {
            what: "the object".to_owned(),
            source: Some(source.into()),
        })?;
        if mode == AttachMode::Netlink {
            add_clsact(ifname)?;
        }
        let mut links = Vec::with_capacity(Direction::ALL.len());
        for direction in Direction::ALL {
            let name = program_name(direction);
            let program = classifier(&mut ebpf, name)?;
            program.load().map_err(|source| FastpathError::Load {
                program: name,
                source: source.into(),
            })?;
            let options = match mode {
                AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
            };
            let link = program
                .attach_with_options(ifname, attach_type(direction), options)
                .map_err(|source| FastpathError::Attach {
                    program: name,
                    direction: direction.as_str(),
                    ifname: ifname.to_owned(),
                    source: source.into(),
                })?;
            links.push((name, link));
        }
        Ok(Loaded { ebpf, mode, links })
    }
}

impl Drop for Loaded {
    /// Detaches both programs. Dropping the `Ebpf` would do it too (and closing the link fds
    /// does it for TCX even if the process dies); detaching first makes the order explicit.
    fn drop(&mut self) {
        for (name, link) in self.links.drain(..) {
            if let Ok(program) = classifier(&mut self.ebpf, name) {
                // Best effort: the link is gone with its fd when `ebpf` drops in any case.
                let _ = program.detach(link);
            }
        }
    }
}

pub(crate) fn program_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => PROG_TUN_COUNT_INGRESS,
        Direction::Egress => PROG_TUN_COUNT_EGRESS,
    }
}

fn attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

pub(crate) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, FastpathError> {
    let missing = FastpathError::MissingInObject {
        kind: "program",
        name,
    };
    match ebpf.program_mut(name) {
        Some(program) => program.try_into().map_err(|_| missing),
        None => Err(missing),
    }
}

/// TCX exists from Linux 6.6; aya makes the same choice in `SchedClassifier::attach`.
pub(crate) fn attach_mode_for_running_kernel() -> AttachMode {
    match KernelVersion::current() {
        Ok(version) if version >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
        _ => AttachMode::Netlink,
    }
}

/// Adds the `clsact` qdisc to `ifname` unless it already has one.
fn add_clsact(ifname: &str) -> Result<(), FastpathError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) | Err(TcError::AlreadyAttached) => Ok(()),
        Err(TcError::NetlinkError(e))
            if e.raw_os_error().is_some_and(|c| {
                io::Error::from_raw_os_error(c).kind() == io::ErrorKind::AlreadyExists
            }) =>
        {
            Ok(())
        }
        Err(source) => Err(FastpathError::Attach {
            program: "clsact qdisc",
            direction: "ingress and egress",
            ifname: ifname.to_owned(),
            source: source.into(),
        }),
    }
}
