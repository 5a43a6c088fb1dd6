//! Connectopus eBPF programs, built for `bpfel-unknown-none` by `cargo xtask build-ebpf` into
//! `target/ebpf/connectopus-ebpf.o` and loaded by `connectopus-fastpath`.
//!
//! Programs:
//! - `cx_tun_count_ingress`, `cx_tun_count_egress`: tc classifiers on the node's TUN device that
//!   count packets and bytes per direction into [`CX_TUN_COUNTERS`]. They never drop or change a
//!   packet.
//! - `cx_fp_tun_eg`, `cx_fp_ul_in` (module `fastpath`): the fast path for plaintext udp links,
//!   tc encapsulation on the TUN, decapsulation and transit on each underlay interface.
//! - `cx_udp_steer` (module `steer`): the `SO_REUSEPORT` program that sends each link peer's
//!   datagrams to the socket of the dataplane worker that owns the peer.
//!
//! Names and map value types come from `connectopus-ebpf-common`, which the loader shares; the
//! counter arithmetic lives there too, with host tests.

#![no_std]
#![no_main]

mod fastpath;
mod steer;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use connectopus_ebpf_common::{Direction, TunCounter};

/// Per-CPU [`TunCounter`]s indexed by [`Direction::index`]; named
/// [`connectopus_ebpf_common::MAP_TUN_COUNTERS`] in the object.
#[map]
static CX_TUN_COUNTERS: PerCpuArray<TunCounter> =
    PerCpuArray::with_max_entries(Direction::COUNT, 0);

/// The verdict of every counter program: `TC_ACT_UNSPEC` (TCX_NEXT), "no opinion".
///
/// With nothing attached after it the packet passes, exactly as with `TC_ACT_OK`; unlike
/// `TC_ACT_OK` (TCX_PASS), it also lets the programs attached after it on the same hook — the
/// future fast path — still see and redirect the packet.
const VERDICT: i32 = TC_ACT_UNSPEC;

/// Counts packets that userspace writes into the TUN (tc ingress).
#[classifier]
pub fn cx_tun_count_ingress(ctx: TcContext) -> i32 {
    try_cx_tun_count(&ctx, Direction::Ingress).unwrap_or_else(Error::verdict)
}

/// Counts packets that the kernel routes into the TUN (tc egress).
#[classifier]
pub fn cx_tun_count_egress(ctx: TcContext) -> i32 {
    try_cx_tun_count(&ctx, Direction::Egress).unwrap_or_else(Error::verdict)
}

/// Why a program could not do its work; each error maps to the verdict that keeps the packet
/// flowing ([`Error::verdict`]).
#[derive(Clone, Copy)]
enum Error {
    /// The map has no slot for the direction (cannot happen with `Direction::COUNT` entries,
    /// but the verifier needs the lookup checked).
    NoCounterSlot,
}

impl Error {
    /// Returns the tc verdict for a packet whose processing hit this error: counting is
    /// best effort and never affects the packet.
    #[inline(always)]
    fn verdict(self) -> i32 {
        match self {
            Error::NoCounterSlot => VERDICT,
        }
    }
}

#[inline(always)]
fn try_cx_tun_count(ctx: &TcContext, direction: Direction) -> Result<i32, Error> {
    let counter = CX_TUN_COUNTERS
        .get_ptr_mut(direction.index())
        .ok_or(Error::NoCounterSlot)?;
    // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is non-null,
    // aligned and points at this CPU's value; tc programs run with migration disabled, so no
    // other program invocation touches this CPU's slot while we update it.
    unsafe { (*counter).record(ctx.len()) };
    Ok(VERDICT)
}

/// The kernel requires a license; "GPL" in it allows GPL-only helpers (aya-log, later).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic leaves this infinite loop in the object, which the verifier rejects; a
    // program that loaded never gets here.
    loop {}
}
