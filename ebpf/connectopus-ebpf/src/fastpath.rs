//! The fast path for plaintext udp links: tc egress encapsulation on the TUN
//! ([`cx_fp_tun_eg`]) and tc ingress decapsulation or transit on each underlay interface
//! ([`cx_fp_ul_in`]). Design and measurements: `ebpf/README.md` and
//! `shared/reference/ebpf-fastpath.md`.
//!
//! Rule of every program here: each decision that leaves a packet to userspace is taken before
//! the packet is changed, counts its [`Reason`] and returns `TC_ACT_UNSPEC` (the packet goes on
//! as if no program ran). Only a helper failing after the first change drops (counted under
//! `*_fail`, like a helper failing before it, whose packet still passes).

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams,
        bpf_hdr_start_off::BPF_HDR_START_NET,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_skb_change_head,
        bpf_skb_load_bytes_relative,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use connectopus_ebpf_common::fastpath::{
    DatagramKind, ENCAP_LEN, ETH_LEN, FpConfig, LinkCounter, LinkKey, MAX_LINK_SLOTS,
    MAX_LOCAL_PORTS, MAX_PEERS, MAX_ROUTES, OUTER_HOP_LIMIT, OUTER_LEN, Peer, ROUTE_LOCAL, Reason,
    Route, datagram_kind, egress_l2_len, icmpv6_to_userspace, is_bad_source_halves,
    one_packet_per_datagram,
};

/// Inner prefix → where it goes. [`connectopus_ebpf_common::fastpath::MAP_FP_ROUTES`].
#[map]
static CX_FP_ROUTES: LpmTrie<[u8; 16], Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Known peers per local port. [`connectopus_ebpf_common::fastpath::MAP_FP_PEERS`].
#[map]
static CX_FP_PEERS: HashMap<LinkKey, Peer> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Our udp link ports. [`connectopus_ebpf_common::fastpath::MAP_FP_LOCAL_PORTS`].
#[map]
static CX_FP_PORTS: HashMap<[u8; 2], u32> = HashMap::with_max_entries(MAX_LOCAL_PORTS, 0);

/// The TUN to decapsulate into. [`connectopus_ebpf_common::fastpath::MAP_FP_CONFIG`].
#[map]
static CX_FP_CONFIG: Array<FpConfig> = Array::with_max_entries(1, 0);

/// One counter per fall-back reason. [`connectopus_ebpf_common::fastpath::MAP_FP_REASONS`].
#[map]
static CX_FP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Per link slot packets and bytes. [`connectopus_ebpf_common::fastpath::MAP_FP_LINKS`].
#[map]
static CX_FP_LINKS: PerCpuArray<LinkCounter> = PerCpuArray::with_max_entries(MAX_LINK_SLOTS, 0);

const ETH_P_IPV6: u16 = 0x86dd;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
/// `bpf_skb_adjust_room` flags for the encapsulation: the inserted room is an IPv6 + UDP
/// tunnel header (so the kernel sets the inner header offsets and `SKB_GSO_UDP_TUNNEL`), and
/// `gso_size` stays (the TUN MTU already leaves room for the 48 bytes).
const ENCAP_FLAGS: u64 = 1 /* FIXED_GSO */ | 4 /* ENCAP_L3_IPV6 */ | 16 /* ENCAP_L4_UDP */;
/// Decapsulation keeps `gso_size` too.
const DECAP_FLAGS: u64 = 1 /* FIXED_GSO */;
/// The largest inner packet whose outer IPv6 payload (8 + inner) fits 16 bits.
const MAX_INNER_LEN: u32 = 65_535 - 8;
/// How much of an arriving frame ingress reads: Ethernet, outer IPv6 and UDP (62), inner IPv6
/// header (40).
const INGRESS_PULL: u32 = OUTER_LEN + 40;

/// The outer headers egress writes and transit rewrites, as on the wire.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Outer {
    dmac: [u8; 6],
    smac: [u8; 6],
    ethertype: [u8; 2],
    vtc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    udp_len: [u8; 2],
    udp_check: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Outer>() == OUTER_LEN as usize);

/// Why a fast-path program did not (or could not) take a packet.
#[derive(Clone, Copy)]
enum Error {
    /// Not fast-path traffic (another protocol or port): untouched and uncounted.
    NotOurs,
    /// Fast-path traffic the program leaves to userspace, untouched: counted.
    Pass(Reason),
    /// A helper failed after the packet was changed; it cannot go on: counted and dropped.
    Broken(Reason),
}

impl Error {
    /// Returns the tc verdict, counting the reason. Passing is `TC_ACT_UNSPEC`, which lets the
    /// packet continue exactly as without this program (and lets programs after it run).
    #[inline(always)]
    fn verdict(self) -> i32 {
        match self {
            Error::NotOurs => TC_ACT_UNSPEC,
            Error::Pass(reason) => {
                count(reason);
                TC_ACT_UNSPEC
            }
            Error::Broken(reason) => {
                count(reason);
                TC_ACT_SHOT as i32
            }
        }
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = CX_FP_REASONS.get_ptr_mut(reason.index()) {
        // SAFETY: a successful per-CPU array lookup: non-null, aligned, this CPU's slot; tc
        // programs run with migration disabled, so nothing else updates it meanwhile.
        unsafe { *counter = (*counter).wrapping_add(1) };
    }
}

#[inline(always)]
fn count_link(slot: u32, record: impl FnOnce(&mut LinkCounter)) {
    if let Some(counter) = CX_FP_LINKS.get_ptr_mut(slot) {
        // SAFETY: as in `count`.
        unsafe { record(&mut *counter) };
    }
}

/// tc (TCX) egress on the TUN: packets the kernel routes towards the daemon. Those whose
/// destination maps to a udp link are encapsulated and redirected to the underlay interface.
#[classifier]
pub fn cx_fp_tun_eg(ctx: TcContext) -> i32 {
    try_cx_fp_tun_eg(&ctx).unwrap_or_else(Error::verdict)
}

/// tc (TCX) ingress on an underlay interface: data datagrams from known peers are decapsulated
/// into the TUN, or rewritten and redirected to the next link (transit).
#[classifier]
pub fn cx_fp_ul_in(ctx: TcContext) -> i32 {
    try_cx_fp_ul_in(&ctx).unwrap_or_else(Error::verdict)
}

#[inline(always)]
fn try_cx_fp_tun_eg(ctx: &TcContext) -> Result<i32, Error> {
    let len = ctx.len();
    // The inner IPv6 header, relative to the network header: on the TUN that is offset 0; the
    // same code also serves an Ethernet device (and BPF_PROG_TEST_RUN).
    let mut ip = [0u8; 40];
    // SAFETY: `ip` is a writable 40-byte buffer; the helper writes at most that many bytes.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.skb.skb as *const _,
            0,
            ip.as_mut_ptr() as *mut _,
            40,
            BPF_HDR_START_NET,
        )
    };
    if rc != 0 || ip[0] >> 4 != 6 {
        return Err(Error::Pass(Reason::EgNotIpv6));
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]);
    let l2_len = egress_l2_len(len, payload_len).ok_or(Error::Pass(Reason::EgNotIpv6))?;
    let inner_len = len - l2_len;
    if ip[24] == 0xff {
        return Err(Error::Pass(Reason::EgMulticast));
    }
    // One LPM key, for the destination and then the source.
    let mut key = Key::new(128, [0u8; 16]);
    key.data.copy_from_slice(&ip[24..40]);
    // A reference into the map: entries are RCU-protected while the program runs, and
    // replaced whole by userspace.
    let route: &Route = CX_FP_ROUTES.get(&key).ok_or(Error::Pass(Reason::EgMiss))?;
    if route.flags != 0 {
        return Err(Error::Pass(Reason::EgUserspace));
    }
    // The core's rule for packets from the TUN: the source must be this node's.
    key.data.copy_from_slice(&ip[8..24]);
    match CX_FP_ROUTES.get(&key) {
        Some(entry) if entry.flags == ROUTE_LOCAL => {}
        _ => return Err(Error::Pass(Reason::EgSource)),
    }
    match ip[6] {
        IPPROTO_ICMPV6 => {
            let icmp_type: u8 = ctx
                .load(l2_len as usize + 40)
                .map_err(|_| Error::Pass(Reason::EgIcmp))?;
            if icmpv6_to_userspace(icmp_type) {
                return Err(Error::Pass(Reason::EgIcmp));
            }
        }
        IPPROTO_HOPOPTS => return Err(Error::Pass(Reason::EgHopByHop)),
        _ => {}
    }
    if ip[7] <= 1 {
        return Err(Error::Pass(Reason::EgHopLimit));
    }
    let fib = fib_lookup(ctx, route).map_err(|e| {
        Error::Pass(match e {
            FibError::NoNeigh => Reason::EgNoNeigh,
            FibError::TooBig => Reason::EgTooBig,
            FibError::Other => Reason::EgNoFib,
        })
    })?;
    // With the encapsulation the packet grows by 62 - l2_len bytes (the helper compares
    // against MTU + the device's 14-byte header). GSO packets pass: their segments are sized
    // by the TUN's MTU.
    // The outer payload length (UDP header + inner packet) must fit its 16 bits.
    if !fits_mtu(ctx, fib.ifindex, (OUTER_LEN - l2_len) as i32) || inner_len > MAX_INNER_LEN {
        return Err(Error::Pass(Reason::EgTooBig));
    }

    // From here on the packet changes.
    ctx.adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Error::Pass(Reason::EgFail))?;
    if l2_len == 0 {
        // SAFETY: the context is the program's own skb.
        let rc = unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_LEN, 0) };
        if rc != 0 {
            return Err(Error::Broken(Reason::EgFail));
        }
    }
    let outer_len = ((inner_len + 8) as u16).to_be_bytes();
    write_outer(
        ctx,
        &Outer {
            dmac: fib.dmac,
            smac: fib.smac,
            ethertype: ETH_P_IPV6.to_be_bytes(),
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: outer_len,
            next_header: IPPROTO_UDP,
            hop_limit: OUTER_HOP_LIMIT,
            src: route.src,
            dst: route.dst,
            sport: route.sport,
            dport: route.dport,
            udp_len: outer_len,
            // Zero: a GSO-preserving encapsulation cannot carry a valid IPv6 UDP checksum
            // (the receiver's socket sets UDP_NO_CHECK6_RX; RFC 6935/6936).
            udp_check: [0, 0],
        },
    )
    .map_err(|_| Error::Broken(Reason::EgFail))?;
    count_link(route.link_slot, |c| c.record_tx(inner_len));
    // SAFETY: a plain helper call with scalars.
    Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
}

#[inline(always)]
fn try_cx_fp_ul_in(ctx: &TcContext) -> Result<i32, Error> {
    let len = ctx.len();
    if len < OUTER_LEN {
        return Err(Error::NotOurs);
    }
    // Only what is there: pulling more than the packet fails (and short control messages
    // would go uncounted).
    let pull = if len < INGRESS_PULL {
        len
    } else {
        INGRESS_PULL
    };
    ctx.pull_data(pull).map_err(|_| Error::NotOurs)?;
    // Fields are read one by one from the packet (not copied out whole), to keep the stack
    // well under the verifier's 512 bytes.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + OUTER_LEN as usize > end {
        return Err(Error::NotOurs);
    }
    // SAFETY (every `at` below): the offsets read were checked to be inside the packet, the
    // first 62 bytes just above, the rest where noted.
    let ethertype: [u8; 2] = unsafe { at(data, 12) };
    let next_header: u8 = unsafe { at(data, 20) };
    if ethertype != ETH_P_IPV6.to_be_bytes() || next_header != IPPROTO_UDP {
        return Err(Error::NotOurs);
    }
    let dport: [u8; 2] = unsafe { at(data, 56) };
    // SAFETY: the map lookup only reads the key.
    if unsafe { CX_FP_PORTS.get(dport) }.is_none() {
        return Err(Error::NotOurs);
    }
    if data + OUTER_LEN as usize + 1 > end {
        return Err(Error::Pass(Reason::InCtrl));
    }
    let first: u8 = unsafe { at(data, OUTER_LEN as usize) }; // checked just above
    match datagram_kind(first) {
        DatagramKind::Control => return Err(Error::Pass(Reason::InCtrl)),
        DatagramKind::Other => return Err(Error::Pass(Reason::InNotData)),
        DatagramKind::Data => {}
    }
    // The whole outer 4-tuple: also a frame for another host (ingress sees what the interface
    // receives, before routing) or another address of this one is no peer's.
    let key = LinkKey {
        addr: unsafe { at(data, 22) },
        local_addr: unsafe { at(data, 38) },
        port: unsafe { at(data, 54) },
        local_port: dport,
    };
    // SAFETY: the value is copied out at once; entries are only replaced whole by userspace.
    let peer = *unsafe { CX_FP_PEERS.get(key) }.ok_or(Error::Pass(Reason::InUnknownPeer))?;
    if data + INGRESS_PULL as usize > end {
        return Err(Error::Pass(Reason::InNotData));
    }
    // From here the inner IPv6 header (bytes 62..102) is inside the packet: checked just above.
    let inner = OUTER_LEN as usize;
    let outer_payload_len: [u8; 2] = unsafe { at(data, 18) };
    let udp_len: [u8; 2] = unsafe { at(data, 58) };
    let inner_payload_len: [u8; 2] = unsafe { at(data, inner + 4) };
    if !one_packet_per_datagram(
        len,
        u16::from_be_bytes(outer_payload_len),
        u16::from_be_bytes(udp_len),
        u16::from_be_bytes(inner_payload_len),
    ) {
        return Err(Error::Pass(Reason::InGroAgg));
    }
    // One LPM key, for the destination and then the source.
    let mut key = Key::new(128, unsafe { at::<[u8; 16]>(data, inner + 24) });
    if key.data[0] == 0xff {
        return Err(Error::Pass(Reason::InMulticast));
    }
    let hop_limit: u8 = unsafe { at(data, inner + 7) };
    let src_high = u64::from_be_bytes(unsafe { at(data, inner + 8) });
    let src_low = u64::from_be_bytes(unsafe { at(data, inner + 16) });
    // A reference into the map: entries are RCU-protected while the program runs, and
    // replaced whole by userspace.
    let route: &Route = CX_FP_ROUTES
        .get(&key)
        .ok_or(Error::Pass(Reason::InNoRoute))?;
    // The core's rule for packets from a link: the source must not be this node's (nor a
    // multicast, unspecified or loopback address).
    if is_bad_source_halves(src_high, src_low) {
        return Err(Error::Pass(Reason::InSource));
    }
    key.data = unsafe { at(data, inner + 8) };
    if let Some(entry) = CX_FP_ROUTES.get(&key)
        && entry.flags != 0
    {
        return Err(Error::Pass(Reason::InSource));
    }
    if route.is_userspace() {
        return Err(Error::Pass(Reason::InUserspace));
    }
    let inner_len = len - OUTER_LEN;
    if route.is_local() {
        let tun = CX_FP_CONFIG
            .get(0)
            .map(|c| c.tun_ifindex)
            .filter(|&i| i != 0)
            .ok_or(Error::Pass(Reason::InNoTun))?;
        ctx.adjust_room(-(ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
            .map_err(|_| Error::Pass(Reason::InFail))?;
        count_link(peer.link_slot, |c| c.record_rx(inner_len));
        // SAFETY: a plain helper call with scalars.
        return Ok(unsafe { bpf_redirect(tun, BPF_F_INGRESS as u64) } as i32);
    }

    // Transit: the inner packet leaves on another udp link.
    if hop_limit <= 1 {
        return Err(Error::Pass(Reason::TrHopLimit));
    }
    let fib = fib_lookup(ctx, route).map_err(|e| {
        Error::Pass(match e {
            FibError::NoNeigh => Reason::TrNoNeigh,
            FibError::TooBig => Reason::TrTooBig,
            FibError::Other => Reason::TrNoFib,
        })
    })?;
    if !fits_mtu(ctx, fib.ifindex, 0) {
        return Err(Error::Pass(Reason::TrTooBig));
    }
    // The helpers may have moved the data: check again before writing.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + INGRESS_PULL as usize > end {
        return Err(Error::Pass(Reason::InFail));
    }
    // SAFETY: every write below is inside the first 102 bytes, checked just above; tc
    // programs may write packet data (the kernel unclones the skb first).
    unsafe {
        put(data, 0, fib.dmac);
        put(data, 6, fib.smac);
        put(data, 21, OUTER_HOP_LIMIT);
        put(data, 22, route.src);
        put(data, 38, route.dst);
        put(data, 54, route.sport);
        put(data, 56, route.dport);
        // Zero: the addresses changed, and the receiver takes zero-checksum datagrams.
        put(data, 60, [0u8; 2]);
        put(data, inner + 7, hop_limit - 1);
    }
    count_link(peer.link_slot, |c| c.record_rx(inner_len));
    count_link(route.link_slot, |c| c.record_tx(inner_len));
    // SAFETY: a plain helper call with scalars.
    Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
}

/// Reads a `T` at `data + offset`.
///
/// # Safety
///
/// `offset + size_of::<T>()` bytes from `data` must be inside the packet (checked against
/// `data_end` by the caller, in a way the verifier sees).
#[inline(always)]
unsafe fn at<T>(data: usize, offset: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_unaligned((data + offset) as *const T) }
}

/// Writes `value` at `data + offset`.
///
/// # Safety
///
/// As for [`at`], and the program must be allowed to write the packet (tc is).
#[inline(always)]
unsafe fn put<T>(data: usize, offset: usize, value: T) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_unaligned((data + offset) as *mut T, value) }
}

/// Writes the outer headers at the start of the packet.
#[inline(always)]
fn write_outer(ctx: &TcContext, outer: &Outer) -> Result<(), ()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + OUTER_LEN as usize > end {
        return Err(());
    }
    // SAFETY: the 62 bytes were checked to be inside the packet just above; tc programs may
    // write packet data (the kernel unclones the skb first).
    unsafe { core::ptr::write_unaligned(data as *mut Outer, *outer) };
    Ok(())
}

/// What `bpf_fib_lookup` found for a route's underlay destination.
struct Fib {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

enum FibError {
    NoNeigh,
    TooBig,
    Other,
}

/// Asks the kernel's FIB and neighbour table for the underlay next hop of `route`: the output
/// interface and both MACs. Anything but success (no route, forwarding off on the interface,
/// neighbour not resolved) is an error: the packet goes to userspace, whose own send resolves
/// the neighbour for the next one.
#[inline(always)]
fn fib_lookup(ctx: &TcContext, route: &Route) -> Result<Fib, FibError> {
    // SAFETY: all zeroes is a valid `bpf_fib_lookup` (plain integers and unions of them).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = IPPROTO_UDP;
    params.sport = u16::from_ne_bytes(route.sport);
    params.dport = u16::from_ne_bytes(route.dport);
    params.ifindex = route.ifindex;
    params.__bindgen_anon_3.ipv6_src = words(&route.src);
    params.__bindgen_anon_4.ipv6_dst = words(&route.dst);
    // SAFETY: `params` is a writable `bpf_fib_lookup` of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if rc >= 0 => Ok(Fib {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH if rc >= 0 => Err(FibError::NoNeigh),
        BPF_FIB_LKUP_RET_FRAG_NEEDED if rc >= 0 => Err(FibError::TooBig),
        _ => Err(FibError::Other),
    }
}

/// Whether the packet, grown by `len_diff` bytes, fits the MTU of `ifindex` (GSO packets always
/// do: their segments are checked against the size they were built for).
#[inline(always)]
fn fits_mtu(ctx: &TcContext, ifindex: u32, len_diff: i32) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` is a writable u32, as the helper requires.
    let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu, len_diff, 0) };
    rc == 0
}

/// The address as four `u32`s in memory order, as `bpf_fib_lookup` holds it.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
