//! Connectopus eBPF loader: loads the programs that `cargo xtask build-ebpf` builds
//! (`ebpf/connectopus-ebpf`), attaches them to the node's TUN device, and reads their maps.
//!
//! Today that is [`TunCounters`]: per-direction packet and byte counters on the TUN device, for
//! `connectopus status`. The eBPF fast path (tc encapsulation on the TUN, decapsulation and
//! transit on the underlay) will be loaded from the same object by this crate.
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

pub use connectopus_ebpf_common::{Direction, TunCounter};
pub use error::FastpathError;
pub use imp::TunCounters;
#[cfg(not(target_os = "linux"))]
pub use imp::serve_helper;
#[cfg(target_os = "linux")]
pub use loader::serve_helper;
pub use object::{DEFAULT_OBJECT_PATH, embedded_object, find_object, load_object, node_object};

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
