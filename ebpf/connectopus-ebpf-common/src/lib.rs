//! Types shared by the Connectopus eBPF programs (`ebpf/connectopus-ebpf`) and their userspace
//! loader (`connectopus-fastpath`): map names, program names, map keys and `#[repr(C)]` map values.
//!
//! Both sides compile this crate, so a layout or name changes in one place only.
//! It is `no_std` and has no dependencies; the `user` feature adds `aya::Pod` impls for the
//! loader. Its only logic is pure: the counter arithmetic and, in [`fastpath`], the fast path's
//! classification rules, all unit tested on the host.

#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod fastpath;
pub mod steer;

/// Name of the tc program attached to the TUN device's ingress (packets userspace writes into the
/// TUN, on their way into the kernel stack).
pub const PROG_TUN_COUNT_INGRESS: &str = "cx_tun_count_ingress";

/// Name of the tc program attached to the TUN device's egress (packets the kernel routes into the
/// TUN, on their way to the daemon).
pub const PROG_TUN_COUNT_EGRESS: &str = "cx_tun_count_egress";

/// Name of the per-CPU array of [`TunCounter`]s, indexed by [`Direction::index`].
pub const MAP_TUN_COUNTERS: &str = "CX_TUN_COUNTERS";

/// Direction of a packet through the TUN device, as seen by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Direction {
    /// Into the kernel: the daemon wrote the packet into the TUN.
    Ingress = 0,
    /// Out of the kernel: the kernel routed the packet into the TUN, towards the daemon.
    Egress = 1,
}

impl Direction {
    /// Every direction, in index order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Number of entries in [`MAP_TUN_COUNTERS`].
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Returns the key of this direction in [`MAP_TUN_COUNTERS`].
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Returns `"ingress"` or `"egress"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Packet and byte counts for one direction (on one CPU in the map, or summed in userspace).
///
/// Bytes are `skb->len` at the tc hook: on a TUN device that is the IP packet, with no link-layer
/// header. A GSO super-packet counts as one packet of its full length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TunCounter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
}

impl TunCounter {
    /// Counts one packet of `len` bytes. Wraps on overflow rather than panicking (a `u64` of
    /// bytes takes decades to wrap at line rate, and the eBPF side must never trap).
    #[inline(always)]
    pub fn record(&mut self, len: u32) {
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(u64::from(len));
    }

    /// Returns how much `self` grew since `earlier`, saturating at zero if a counter went
    /// backwards (the programs were reloaded in between).
    #[must_use]
    pub fn since(self, earlier: TunCounter) -> TunCounter {
        TunCounter {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// Element-wise wrapping sum (per-CPU values add up to the total).
impl core::ops::Add for TunCounter {
    type Output = TunCounter;

    #[inline(always)]
    fn add(self, other: TunCounter) -> TunCounter {
        TunCounter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

impl core::iter::Sum for TunCounter {
    fn sum<I: Iterator<Item = TunCounter>>(iter: I) -> TunCounter {
        iter.fold(TunCounter::default(), core::ops::Add::add)
    }
}

// SAFETY: `TunCounter` is `#[repr(C)]`, `Copy`, made only of `u64`s (no padding, no pointers),
// and every bit pattern is a valid value, which is what `aya::Pod` requires.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TunCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_packets_and_bytes() {
        let mut c = TunCounter::default();
        c.record(104);
        c.record(1500);
        assert_eq!(
            c,
            TunCounter {
                packets: 2,
                bytes: 1604
            }
        );
    }

    #[test]
    fn record_wraps_instead_of_panicking() {
        let mut c = TunCounter {
            packets: u64::MAX,
            bytes: u64::MAX - 1,
        };
        c.record(3);
        assert_eq!(
            c,
            TunCounter {
                packets: 0,
                bytes: 1
            }
        );
    }

    #[test]
    fn per_cpu_values_sum_element_wise() {
        let per_cpu = [
            TunCounter {
                packets: 1,
                bytes: 100,
            },
            TunCounter::default(),
            TunCounter {
                packets: 2,
                bytes: 300,
            },
        ];
        let total: TunCounter = per_cpu.into_iter().sum();
        assert_eq!(
            total,
            TunCounter {
                packets: 3,
                bytes: 400
            }
        );
    }

    #[test]
    fn since_saturates_when_counters_restart() {
        let before = TunCounter {
            packets: 10,
            bytes: 1000,
        };
        let after = TunCounter {
            packets: 3,
            bytes: 5000,
        };
        assert_eq!(
            after.since(before),
            TunCounter {
                packets: 0,
                bytes: 4000
            }
        );
    }

    #[test]
    fn map_layout_is_two_u64s() {
        assert_eq!(core::mem::size_of::<TunCounter>(), 16);
        assert_eq!(core::mem::align_of::<TunCounter>(), 8);
        assert_eq!(Direction::Ingress.index(), 0);
        assert_eq!(Direction::Egress.index(), 1);
        assert_eq!(Direction::COUNT, 2);
    }
}
