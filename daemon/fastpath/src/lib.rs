//! Connectopus eBPF loader: loads the programs that `cargo xtask build-ebpf` builds
//! (`ebpf/connectopus-ebpf`), attaches them to the node's TUN device, and reads their maps.
//!
//! Two things: [`TunCounters`], per-direction packet and byte counters on the TUN device, for
//! `connectopus status`; and (Linux) [`Fastpath`], the eBPF fast path for plaintext udp links
//! (tc encapsulation on the TUN, decapsulation and transit on the underlay), with
//! [`FastpathMaps`] to write its route, peer and port entries and read its counters.
//!
//! The object is embedded at build time when `cargo xtask build-ebpf` wrote it before
//! ([`embedded_object`], see `build.rs`); the daemon loads that one, or a file given with
//! `--ebpf-object` ([`node_object`]), and runs without eBPF when there is neither
//! ([`FastpathError::NotEmbedded`]). So building this crate never needs the nightly toolchain
//! or bpf-linker. Tests find the object on disk with [`find_object`] and [`load_object`].
//!
//! This crate does not open the TUN device, configure addresses or routes, or decide what goes
//! into the maps; it only loads, attaches, detaches and reads.
//!
//! Layout:
//! - `object`: locating and reading the eBPF object file.
//! - `error`: [`FastpathError`], whose messages name the fix.
//! - `linux` (Linux) / `stub` (elsewhere): [`TunCounters`], on aya.
//! - `programs` (Linux): [`Fastpath`], the fast-path programs held by fd and attached with TCX
//!   link syscalls.
//! - `maps` (Linux): [`FastpathMaps`], the fast path's maps through their fds only.
//! - `loader` (Linux): loading in a short-lived helper process ([`TunCounters::attach_via_helper`],
//!   [`serve_helper`]) so that what aya parses (the kernel's BTF, ~30 MiB of peak RSS) never
//!   touches the node's memory; the programs' fds are passed back over a Unix socket.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod object;

#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(not(target_os = "linux"), path = "stub.rs")]
mod imp;
#[cfg(target_os = "linux")]
mod loader;
#[cfg(target_os = "linux")]
mod maps;
#[cfg(target_os = "linux")]
mod programs;

pub use connectopus_ebpf_common::fastpath::{LinkCounter, Reason};
pub use connectopus_ebpf_common::{Direction, TunCounter};
pub use error::FastpathError;
pub use imp::TunCounters;
#[cfg(not(target_os = "linux"))]
pub use imp::serve_helper;
#[cfg(target_os = "linux")]
pub use loader::serve_helper;
#[cfg(target_os = "linux")]
pub use maps::{FastpathMapFds, FastpathMaps};
pub use object::{DEFAULT_OBJECT_PATH, embedded_object, find_object, load_object, node_object};
#[cfg(target_os = "linux")]
pub use programs::{Fastpath, FastpathProgramFds};

/// How the node starts the short-lived helper process that loads its eBPF programs (see the
/// `loader` module): the helper reads its request from a `SOCK_SEQPACKET` socket on stdin.
pub enum HelperStart {
    /// Runs the command as the node's child; for a node that still has the rights to load
    /// programs (`CAP_BPF`, or root).
    Spawn(std::process::Command),
    /// Gives the helper's end of the socket to `start`, which has the helper started (and
    /// reaped) by another process: a node that re-executed itself confined has lost the rights,
    /// its attach helper kept them.
    Delegate {
        /// Names the helper in errors.
        program: String,
        /// Starts the helper with the socket as its stdin.
        start: Box<dyn FnOnce(std::os::fd::OwnedFd) -> std::io::Result<()> + Send>,
    },
}

impl HelperStart {
    /// The helper's name, for errors.
    pub fn program(&self) -> String {
        match self {
            HelperStart::Spawn(command) => command.get_program().to_string_lossy().into_owned(),
            HelperStart::Delegate { program, .. } => program.clone(),
        }
    }
}

impl From<std::process::Command> for HelperStart {
    fn from(command: std::process::Command) -> Self {
        HelperStart::Spawn(command)
    }
}

impl std::fmt::Debug for HelperStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelperStart::Spawn(command) => f.debug_tuple("Spawn").field(command).finish(),
            HelperStart::Delegate { program, .. } => f
                .debug_struct("Delegate")
                .field("program", program)
                .finish(),
        }
    }
}

/// Counters of both directions of the TUN device, summed over CPUs, as read by
/// [`TunCounters::read`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Packets the daemon wrote into the TUN (tc ingress).
    pub ingress: TunCounter,
    /// Packets the kernel routed into the TUN, towards the daemon (tc egress).
    pub egress: TunCounter,
}

impl CounterSnapshot {
    /// Returns the counter of one direction.
    pub fn get(&self, direction: Direction) -> TunCounter {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    /// Returns how much each counter grew since `earlier` (zero for a counter that went back,
    /// which happens only if the programs were reloaded in between).
    #[must_use]
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            ingress: self.ingress.since(earlier.ingress),
            egress: self.egress.since(earlier.egress),
        }
    }
}

/// Where the fast path sends packets for an inner prefix ([`FastpathMaps::set_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// This node's own prefix: ingress decapsulates into the TUN.
    Local,
    /// A prefix the daemon serves itself (its control plane): both directions leave such
    /// packets to userspace.
    Userspace,
    /// A prefix reached over a plaintext udp link.
    Link(LinkEndpoints),
}

/// The underlay of a udp link, as the fast path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkEndpoints {
    /// This node's end: the outer source address and UDP port.
    pub local: std::net::SocketAddrV6,
    /// The peer's end: the outer destination address and UDP port.
    pub peer: std::net::SocketAddrV6,
    /// The underlay interface index the FIB lookup starts from.
    pub ifindex: u32,
    /// The link's counter slot (below `MAX_LINK_SLOTS`, 1024).
    pub link_slot: u32,
}

/// The fast path's per-reason fall-back counters, summed over CPUs
/// ([`FastpathMaps::reasons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCounts([u64; Reason::COUNT as usize]);

impl Default for ReasonCounts {
    fn default() -> Self {
        ReasonCounts([0; Reason::COUNT as usize])
    }
}

impl ReasonCounts {
    /// Returns the count of one reason.
    pub fn get(&self, reason: Reason) -> u64 {
        self.0.get(reason.index() as usize).copied().unwrap_or(0)
    }

    /// Sets the count of one reason.
    pub fn set(&mut self, reason: Reason, count: u64) {
        if let Some(slot) = self.0.get_mut(reason.index() as usize) {
            *slot = count;
        }
    }

    /// Every reason with its count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// Returns how much each counter grew since `earlier` (zero where it went back).
    #[must_use]
    pub fn since(&self, earlier: &ReasonCounts) -> ReasonCounts {
        let mut delta = ReasonCounts::default();
        for (reason, count) in self.iter() {
            delta.set(reason, count.saturating_sub(earlier.get(reason)));
        }
        delta
    }
}

/// What [`serve_helper`] did with the node's request (either way, the node has the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperOutcome {
    /// The programs are attached and their fds are with the node.
    Attached,
    /// Loading or attaching failed; the node got the error.
    Reported,
}

/// How [`TunCounters`] attached its programs, for `connectopus status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (kernel 6.6 and later): no qdisc, and the programs run first on their hook.
    Tcx,
    /// Classic `clsact` qdisc with direct-action filters, through netlink (older kernels).
    Netlink,
}

impl AttachMode {
    /// Returns `"tcx"` or `"netlink"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(packets: u64, bytes: u64) -> TunCounter {
        TunCounter { packets, bytes }
    }

    #[test]
    fn reason_counts_subtract_per_reason() {
        let mut before = ReasonCounts::default();
        before.set(Reason::EgMiss, 3);
        let mut after = before;
        after.set(Reason::EgMiss, 5);
        after.set(Reason::InGroAgg, 1);
        let delta = after.since(&before);
        assert_eq!(delta.get(Reason::EgMiss), 2);
        assert_eq!(delta.get(Reason::InGroAgg), 1);
        assert_eq!(delta.iter().filter(|(_, n)| *n > 0).count(), 2);
    }

    #[test]
    fn snapshot_since_subtracts_per_direction() {
        let before = CounterSnapshot {
            ingress: counter(1, 100),
            egress: counter(5, 500),
        };
        let after = CounterSnapshot {
            ingress: counter(1, 100),
            egress: counter(9, 916),
        };
        let delta = after.since(&before);
        assert_eq!(delta.get(Direction::Ingress), counter(0, 0));
        assert_eq!(delta.get(Direction::Egress), counter(4, 416));
    }
}
