//! The per-packet cost of the DTLS data path with TUN offloads, and a check that it allocates
//! nothing in steady state.
//!
//! - `packet_path/tun_to_gso_batch/<suite>`: a 64,000-byte TCP super-packet as a TUN device
//!   with `IFF_VNET_HDR` hands it over (virtio-net header + IPv6 + TCP with timestamps, gso_size
//!   1,328) is cut with `Segments` straight into the record slots of one send buffer and each
//!   slot is sealed in place: what the daemon's `seal_segments` does before its UDP GSO
//!   `sendmsg`.
//! - `packet_path/gro_batch_to_tun/<suite>`: the sealed batch as UDP GRO delivers it (records one
//!   stride apart) is split, each record opened in place with `handle_datagram`, and the
//!   segments merged with `Coalescer` into one super-packet for the TUN write: what
//!   `on_dtls_datagram` and `coalesce` do. Every batch is freshly sealed outside the timing, so
//!   the receiver's replay window sees new sequence numbers.
//!
//! Before criterion runs, `main` checks with a counting global allocator that a steady-state
//! round trip (both directions, both suites) makes zero heap allocations, and panics otherwise:
//! `cargo bench -p bench --bench packet_path -- --test` is that check plus one run of each
//! benchmark. The allocator sees Rust allocations only; C code that calls `malloc` itself
//! (OpenSSL, aws-lc) is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use connectopus_dtls::{DtlsAssociation, PskSuite};
use connectopus_offload::checksum::{fold, pseudo_header_sum};
use connectopus_offload::{
    Append, Coalescer, GsoType, MAX_IP_LEN, Segments, VNET_HDR_LEN, VnetHeader,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group};

/// Counts every allocation (and reallocation) the program makes through the Rust allocator.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting does not touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// TCP payload bytes in one super-packet.
const PAYLOAD: usize = 64_000;
/// Payload bytes per segment: a 1,400-byte IPv6 packet with a 32-byte TCP header.
const GSO_SIZE: usize = 1328;
const IPV6_HDR_LEN: usize = 40;
/// TCP header with the timestamps option (NOP, NOP, TS).
const TCP_HDR_LEN: usize = 32;
const PROTO_TCP: u8 = 6;
/// Where the TCP checksum lives, from the start of the TCP header.
const TCP_CSUM_OFFSET: usize = 16;

const SUITES: [(&str, PskSuite); 2] = [
    ("aes128gcm", PskSuite::PskAes128GcmNoForwardSecrecy),
    ("chacha20poly1305", PskSuite::EcdhePskChaCha20Poly1305),
];

/// A TSO super-packet as the TUN device hands it to the node: virtio-net header (`NEEDS_CSUM`,
/// `GSO_TCPV6`) and an IPv6/TCP packet whose checksum field holds the pseudo-header sum.
fn super_packet() -> Vec<u8> {
    let tcp_len = TCP_HDR_LEN + PAYLOAD;
    let mut buf = vec![0u8; VNET_HDR_LEN + IPV6_HDR_LEN + tcp_len];
    VnetHeader {
        needs_csum: true,
        data_valid: false,
        gso_type: GsoType::TcpV6,
        ecn: false,
        hdr_len: (IPV6_HDR_LEN + TCP_HDR_LEN) as u16,
        gso_size: GSO_SIZE as u16,
        csum_start: IPV6_HDR_LEN as u16,
        csum_offset: TCP_CSUM_OFFSET as u16,
    }
    .write(&mut buf)
    .expect("vnet header fits");
    let ip = &mut buf[VNET_HDR_LEN..];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    ip[6] = PROTO_TCP;
    ip[7] = 64;
    let src: std::net::Ipv6Addr = "fd00:c0::1".parse().expect("address");
    let dst: std::net::Ipv6Addr = "fd00:c0::2".parse().expect("address");
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let tcp = &mut ip[IPV6_HDR_LEN..];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x9abc_def0u32.to_be_bytes());
    tcp[12] = ((TCP_HDR_LEN / 4) as u8) << 4;
    tcp[13] = 0x18; // ACK | PSH
    tcp[14..16].copy_from_slice(&0x0200u16.to_be_bytes());
    // NOP, NOP, timestamps (kind 8, length 10, TSval, TSecr).
    tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
    tcp[24..28].copy_from_slice(&0x0011_2233u32.to_be_bytes());
    tcp[28..32].copy_from_slice(&0x4455_6677u32.to_be_bytes());
    for (i, b) in tcp[TCP_HDR_LEN..].iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    let pseudo = fold(pseudo_header_sum(&ip[8..40], tcp_len as u32, PROTO_TCP));
    let at = IPV6_HDR_LEN + TCP_CSUM_OFFSET;
    ip[at..at + 2].copy_from_slice(&pseudo.to_le_bytes());
    buf
}

/// Where the records of a sealed batch lie: `count` records `stride` bytes apart (the last may
/// be shorter), `len` bytes in all, as one UDP GSO send and one GRO receive carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchShape {
    stride: usize,
    count: usize,
    len: usize,
}

/// The send buffer size for `packet`'s batch (a buffer of the daemon's pool, sized once).
fn batch_capacity(tx: &DtlsAssociation, packet: &[u8]) -> usize {
    let header = VnetHeader::parse(packet).expect("vnet header");
    let segments = Segments::new(&header, &packet[VNET_HDR_LEN..]).expect("super-packet");
    segments.count() * (segments.max_segment_len() + tx.overhead().expect("established"))
}

/// TUN → link: cuts the super-packet `packet` (vnet header first) into segments written
/// straight into record slots of `out`, sealing each in place.
fn seal_batch(tx: &mut DtlsAssociation, packet: &[u8], out: &mut [u8]) -> BatchShape {
    let header = VnetHeader::parse(packet).expect("vnet header");
    let segments = Segments::new(&header, &packet[VNET_HDR_LEN..]).expect("super-packet");
    let payload_offset = tx.payload_offset().expect("established");
    let stride = segments.max_segment_len() + tx.overhead().expect("established");
    let mut len = 0;
    for i in 0..segments.count() {
        let slot = &mut out[i * stride..(i + 1) * stride];
        let n = segments
            .write(i, &mut slot[payload_offset..])
            .expect("segment fits its slot");
        len = i * stride + tx.seal_in_place(slot, n).expect("seal");
    }
    BatchShape {
        stride,
        count: segments.count(),
        len,
    }
}

/// Link → TUN: opens every record of the GRO batch `batch` in place and merges the TCP
/// segments into one super-packet in `out` (vnet header first); returns its length.
fn open_and_coalesce(
    rx: &mut DtlsAssociation,
    batch: &mut [u8],
    shape: BatchShape,
    out: &mut [u8],
) -> usize {
    let mut open: Option<Coalescer> = None;
    for datagram in batch[..shape.len].chunks_mut(shape.stride) {
        let received = rx
            .handle_datagram(Duration::ZERO, datagram)
            .expect("open batch record");
        assert_eq!(received.len(), 1, "one record per datagram opened");
        for r in received.iter() {
            let segment = &datagram[r];
            match open.as_mut() {
                Some(c) => {
                    let appended = c.try_append(out, segment);
                    assert_eq!(appended, Append::Appended, "segment continues the flow");
                }
                None => open = Some(Coalescer::start(out, segment).expect("coalescable")),
            }
        }
    }
    open.expect("at least one segment").finish(out)
}

/// A DTLS association pair with the buffers of one round trip, allocated once.
struct Path {
    tx: DtlsAssociation,
    rx: DtlsAssociation,
    packet: Vec<u8>,
    batch: Vec<u8>,
    out: Vec<u8>,
}

impl Path {
    fn new(suite: PskSuite) -> Self {
        let (tx, rx) = bench::dtls_pair(suite, true);
        let packet = super_packet();
        let batch = vec![0u8; batch_capacity(&tx, &packet)];
        Path {
            tx,
            rx,
            packet,
            batch,
            out: vec![0u8; VNET_HDR_LEN + MAX_IP_LEN],
        }
    }

    /// Seals the super-packet into a batch and opens and coalesces it again; returns the
    /// number of segments and the length of the rebuilt super-packet in `out`.
    fn round_trip(&mut self) -> (usize, usize) {
        let shape = seal_batch(&mut self.tx, &self.packet, &mut self.batch);
        let n = open_and_coalesce(&mut self.rx, &mut self.batch, shape, &mut self.out);
        (shape.count, n)
    }
}

/// Panics unless a steady-state round trip (super-packet → sealed batch → super-packet) makes
/// zero allocations, for every suite; prints the count per packet.
fn assert_no_allocations() {
    const WARM_UP: usize = 10;
    const ROUNDS: usize = 100;
    for (name, suite) in SUITES {
        let mut path = Path::new(suite);
        let (_, n) = path.round_trip();
        assert_eq!(
            path.out[..n],
            path.packet[..],
            "{name}: the rebuilt super-packet differs from the one sent"
        );
        for _ in 0..WARM_UP {
            black_box(path.round_trip());
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut segments = 0;
        for _ in 0..ROUNDS {
            segments += black_box(path.round_trip()).0;
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "packet_path/{name}: {allocations} allocations in {ROUNDS} round trips of \
             {segments} segments: {:.3} per packet",
            allocations as f64 / segments as f64
        );
        assert_eq!(
            allocations, 0,
            "packet_path/{name}: the steady-state packet path allocated"
        );
    }
}

fn packet_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, suite) in SUITES {
        let Path {
            mut tx,
            mut rx,
            packet,
            mut batch,
            mut out,
        } = Path::new(suite);
        group.bench_function(BenchmarkId::new("tun_to_gso_batch", name), |b| {
            b.iter(|| black_box(seal_batch(&mut tx, black_box(&packet), &mut batch)));
        });
        let capacity = batch.len();
        group.bench_function(BenchmarkId::new("gro_batch_to_tun", name), |b| {
            b.iter_batched_ref(
                || {
                    let mut batch = vec![0u8; capacity];
                    let shape = seal_batch(&mut tx, &packet, &mut batch);
                    (batch, shape)
                },
                |(batch, shape)| black_box(open_and_coalesce(&mut rx, batch, *shape, &mut out)),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, packet_path);

fn main() {
    assert_no_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
