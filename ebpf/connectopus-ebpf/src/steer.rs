//! `cx_udp_steer`: the `SO_REUSEPORT` program that sends a link peer's datagrams to the socket of
//! the dataplane worker that owns the peer (`connectopus_ebpf_common::steer` has the design).
//!
//! It never drops: every path returns `SK_PASS`, with a socket chosen (the owner's) or none (the
//! kernel's 4-tuple hash then picks, as without a program).

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action::SK_PASS},
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::{map, sk_reuseport},
    maps::{HashMap, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use connectopus_ebpf_common::fastpath::PeerKey;
use connectopus_ebpf_common::steer::{
    ETH_PROTOCOL_IPV4, ETH_PROTOCOL_IPV6, IPV4_SRC_OFFSET, IPV6_SRC_OFFSET, MAX_STEER_PEERS,
    MAX_STEER_SOCKETS, SteerOutcome,
};

/// Peer → socket index. [`connectopus_ebpf_common::steer::MAP_STEER_OWNERS`].
#[map]
static CX_STEER_OWNERS: HashMap<PeerKey, u32> = HashMap::with_max_entries(MAX_STEER_PEERS, 0);

/// The workers' sockets. [`connectopus_ebpf_common::steer::MAP_STEER_SOCKETS`].
#[map]
static CX_STEER_SOCKS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_STEER_SOCKETS, 0);

/// Datagrams per outcome. [`connectopus_ebpf_common::steer::MAP_STEER_OUTCOMES`].
#[map]
static CX_STEER_OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(SteerOutcome::COUNT, 0);

/// `IPPROTO_UDP`.
const IPPROTO_UDP: u32 = 17;

/// Length of the UDP header, which the kernel makes readable at `data` for this program.
const UDP_HEADER_LEN: usize = 8;

/// Picks the owner's socket for a datagram, or leaves the choice to the kernel's hash.
#[sk_reuseport]
pub fn cx_udp_steer(ctx: SkReuseportContext) -> u32 {
    let outcome = steer(&ctx);
    if let Some(count) = CX_STEER_OUTCOMES.get_ptr_mut(outcome.index()) {
        // SAFETY: a successful per-CPU array lookup: non-null, aligned, this CPU's slot; the
        // program runs with migration disabled, so nothing else updates the slot meanwhile.
        unsafe { *count += 1 };
    }
    SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkReuseportContext) -> SteerOutcome {
    let Some(key) = peer_key(ctx) else {
        return SteerOutcome::Unparsable;
    };
    // SAFETY: a hash map lookup by a key on the stack; the value is copied out at once.
    let Some(index) = (unsafe { CX_STEER_OWNERS.get(&key) }).copied() else {
        return SteerOutcome::NoOwner;
    };
    match CX_STEER_SOCKS.select_reuseport(ctx, index) {
        Ok(()) => SteerOutcome::Steered,
        // -ENOENT (empty slot), -EXDEV (another port's group), -EPROTOTYPE, ...: the hash
        // decides, which is what the socket set would do without the program.
        Err(_) => SteerOutcome::OwnerGone,
    }
}

/// The peer's address and port and our port, from the IP header (read relative to the network
/// header) and the UDP header (at `data`).
#[inline(always)]
fn peer_key(ctx: &SkReuseportContext) -> Option<PeerKey> {
    if ctx.ip_protocol() != IPPROTO_UDP {
        return None;
    }
    let data = ctx.data();
    if data + UDP_HEADER_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: the verifier-checked bound above makes the UDP header's first four bytes
    // readable.
    let (port, local_port) = unsafe {
        let udp = data as *const [u8; 4];
        let h = *udp;
        ([h[0], h[1]], [h[2], h[3]])
    };
    let mut addr = [0u8; 16];
    let eth = ctx.eth_protocol();
    let read = if eth == ETH_PROTOCOL_IPV6 {
        // SAFETY: the helper writes at most 16 bytes into the 16-byte buffer it is given.
        unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                IPV6_SRC_OFFSET,
                addr.as_mut_ptr().cast(),
                16,
                BPF_HDR_START_NET,
            )
        }
    } else if eth == ETH_PROTOCOL_IPV4 {
        addr[10] = 0xff;
        addr[11] = 0xff;
        // SAFETY: as above, 4 bytes into the last 4 bytes of the buffer.
        unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                IPV4_SRC_OFFSET,
                addr[12..].as_mut_ptr().cast(),
                4,
                BPF_HDR_START_NET,
            )
        }
    } else {
        return None;
    };
    if read != 0 {
        return None;
    }
    Some(PeerKey {
        addr,
        port,
        local_port,
    })
}
