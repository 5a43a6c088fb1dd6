//! [`TunCounters`] on Linux, with aya.

use std::io;

use aya::Ebpf;
use aya::maps::PerCpuArray;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use connectopus_ebpf_common::{
    Direction, MAP_TUN_COUNTERS, PROG_TUN_COUNT_EGRESS, PROG_TUN_COUNT_INGRESS, TunCounter,
};

use crate::{AttachMode, CounterSnapshot, FastpathError};

/// Packet and byte counters on both directions of a TUN device: two tc programs, attached on
/// [`TunCounters::attach`] and detached on drop.
///
/// The programs never drop or change a packet, and return "no verdict", so eBPF programs
/// attached after them on the same hook still run. With TCX they are attached first, so they
/// count every packet before a later program can redirect it.
#[derive(Debug)]
pub struct TunCounters {
    ebpf: Ebpf,
    ifname: String,
    mode: AttachMode,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
}

impl TunCounters {
    /// Loads the counter programs from `object` (the bytes of the eBPF object, see
    /// [`crate::load_object`]) and attaches them to the ingress and egress of `ifname`, in the
    /// calling thread's network namespace.
    ///
    /// Uses TCX links on kernel 6.6 and later, otherwise a `clsact` qdisc (added if missing, and
    /// left in place) with netlink filters; [`TunCounters::attach_mode`] tells which.
    ///
    /// # Errors
    ///
    /// [`FastpathError::BadObject`] or [`FastpathError::MissingInObject`] if `object` is not a
    /// current build, [`FastpathError::Load`] without privileges or if the verifier rejects a
    /// program, [`FastpathError::Attach`] if the interface does not exist. Nothing stays
    /// attached after an error.
    pub fn attach(ifname: &str, object: &[u8]) -> Result<Self, FastpathError> {
        let mut ebpf = Ebpf::load(object).map_err(|source| FastpathError::BadObject {
            what: "the object".to_owned(),
            source: Some(source.into()),
        })?;
        let mode = attach_mode_for_running_kernel();
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
        Ok(TunCounters {
            ebpf,
            ifname: ifname.to_owned(),
            mode,
            links,
        })
    }

    /// Returns the counters, summed over CPUs, since the programs were attached.
    ///
    /// # Errors
    ///
    /// [`FastpathError::ReadMap`] if the kernel refuses the map lookup (not expected while the
    /// programs are attached), [`FastpathError::MissingInObject`] if the object has no counter
    /// map.
    pub fn read(&self) -> Result<CounterSnapshot, FastpathError> {
        let map = self
            .ebpf
            .map(MAP_TUN_COUNTERS)
            .ok_or(FastpathError::MissingInObject {
                kind: "map",
                name: MAP_TUN_COUNTERS,
            })?;
        let read_error = |source: aya::maps::MapError| FastpathError::ReadMap {
            map: MAP_TUN_COUNTERS,
            source: source.into(),
        };
        let counters = PerCpuArray::<_, TunCounter>::try_from(map).map_err(read_error)?;
        let read = |direction: Direction| -> Result<TunCounter, FastpathError> {
            let per_cpu = counters.get(&direction.index(), 0).map_err(read_error)?;
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
}

impl Drop for TunCounters {
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

fn program_name(direction: Direction) -> &'static str {
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

fn classifier<'a>(
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
fn attach_mode_for_running_kernel() -> AttachMode {
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
