//! Micro-benchmarks of the link wire format (`connectopus-wire`) and of TCP link framing.
//!
//! - `wire/hello/{emit,parse}`: a session hello with the node-key and signature extensions
//!   (as the node-identity work sends it).
//! - `wire/segment_1000/{emit,parse}`: a routing-stream segment with a 1,000-byte payload.
//! - `wire/lsu_body/{emit,parse}`: a link-state update body of a well-connected node (16
//!   adjacencies, 8 prefixes, 4 names), in its canonical encoding.
//! - `tcp_framing_1400/{frame,deframe}`: 2-byte big-endian length framing of 1,400-byte link
//!   messages, as plain TCP links do. The node's codec (`TcpCodec` in
//!   `daemon/connectopus/src/links/tcp.rs`) lives in the binary crate, so [`Framer`] below
//!   repeats its plain-TCP path byte for byte: the same header, the same reassembly buffer
//!   with a start offset that is compacted once half of it is consumed, and messages handed
//!   out as ranges into that buffer. Socket reads are modelled as 16 KiB chunks.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::ops::Range;

use connectopus_wire::{
    Adjacency, Cost, Hello, HelloExtension, LinkMessage, LinkStateUpdate, NameBinding, Prefix,
    PrefixAdvert, StreamSegment,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn addr(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xcafe, 0, 0, 0, 0, 0, i)
}

fn hello() -> Hello {
    Hello {
        capabilities: 0,
        session_id: 0x0123_4567_89ab_cdef,
        echo_session_id: 0xfedc_ba98_7654_3210,
        epoch: 7,
        address: addr(1),
        name: "gateway-1".to_owned(),
        extensions: vec![
            HelloExtension {
                kind: HelloExtension::NODE_KEY,
                value: vec![0x11; 32],
            },
            HelloExtension {
                kind: HelloExtension::SIGNATURE,
                value: vec![0x22; 64],
            },
        ],
    }
}

fn lsu() -> LinkStateUpdate {
    let mut update = LinkStateUpdate {
        origin: addr(1),
        epoch: 7,
        sequence: 42,
        name: "gateway-1".to_owned(),
        config_version: 3,
        adjacencies: (2..18)
            .map(|i| Adjacency {
                peer: addr(i),
                cost: Cost(u32::from(i) * 10),
            })
            .collect(),
        prefixes: (0..8u16)
            .filter_map(|i| {
                let net = Ipv6Addr::new(0xfd01, i, 0, 0, 0, 0, 0, 0);
                Prefix::new(net, 64).ok().map(|prefix| PrefixAdvert {
                    prefix,
                    cost: Cost(1),
                })
            })
            .collect(),
        names: (0..4u16)
            .map(|i| NameBinding {
                name: format!("service-{i}"),
                address: addr(100 + i),
            })
            .collect(),
        names4: Vec::new(),
        extensions: Vec::new(),
    };
    update.canonicalize();
    update
}

fn messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");

    let hello = hello();
    let hello_bytes = hello.encode();
    group.throughput(Throughput::Bytes(hello_bytes.len() as u64));
    group.bench_function("hello/emit", |b| b.iter(|| black_box(&hello).encode()));
    group.bench_function("hello/parse", |b| {
        b.iter(|| black_box(LinkMessage::parse(black_box(&hello_bytes))))
    });

    let payload = vec![0xA5u8; 1000];
    let segment = StreamSegment {
        conn: 0x89ab_cdef,
        seq: 1000,
        ack: 977,
        sack: 0b1011,
        window: 64,
        payload: &payload,
    };
    let segment_bytes = segment.encode();
    group.throughput(Throughput::Bytes(segment_bytes.len() as u64));
    group.bench_function("segment_1000/emit", |b| {
        b.iter(|| black_box(&segment).encode())
    });
    group.bench_function("segment_1000/parse", |b| {
        b.iter(|| match LinkMessage::parse(black_box(&segment_bytes)) {
            Ok(LinkMessage::Segment(s)) => s.payload.len(),
            _ => 0,
        })
    });

    let update = lsu();
    let body = update.encode_body();
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("lsu_body/emit", |b| {
        b.iter(|| black_box(&update).encode_body())
    });
    group.bench_function("lsu_body/parse", |b| {
        b.iter(|| black_box(LinkStateUpdate::parse_body(black_box(&body))))
    });
    group.finish();
}

/// The plain-TCP path of the node's `TcpCodec`: 2-byte big-endian length, then the message.
#[derive(Debug)]
struct Framer {
    rx: Vec<u8>,
    rx_start: usize,
}

impl Framer {
    fn new() -> Self {
        Self {
            rx: Vec::with_capacity(2 * usize::from(u16::MAX)),
            rx_start: 0,
        }
    }

    /// Appends the framed message to `out` (what `send_message` does without TLS).
    fn send(message: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let len = u16::try_from(message.len()).ok()?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message);
        Some(())
    }

    /// Buffers bytes read from the socket (what `receive` does without TLS).
    fn receive(&mut self, bytes: &[u8]) {
        if self.rx_start > 0 && self.rx_start >= self.rx.len() / 2 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        self.rx.extend_from_slice(bytes);
    }

    /// The next complete message, as a range into the buffer (`pop_message`).
    fn pop(&mut self) -> Option<Range<usize>> {
        loop {
            let available = &self.rx[self.rx_start..];
            let header: [u8; 2] = available.get(..2)?.try_into().ok()?;
            let len = usize::from(u16::from_be_bytes(header));
            if available.len() < 2 + len {
                return None;
            }
            let start = self.rx_start + 2;
            self.rx_start = start + len;
            if len > 0 {
                return Some(start..start + len);
            }
        }
    }
}

const BATCH: usize = 64;
const MESSAGE: usize = 1400;
const READ: usize = 16 * 1024;

fn tcp_framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("tcp_framing_1400");
    group.throughput(Throughput::Elements(BATCH as u64));
    let message = vec![0x60u8; MESSAGE];
    let mut out = Vec::with_capacity(BATCH * (MESSAGE + 2));
    group.bench_function(format!("frame_x{BATCH}"), |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..BATCH {
                Framer::send(black_box(&message), &mut out);
            }
            out.len()
        })
    });
    let mut wire = Vec::new();
    for _ in 0..BATCH {
        Framer::send(&message, &mut wire);
    }
    let mut framer = Framer::new();
    group.bench_function(format!("deframe_x{BATCH}"), |b| {
        b.iter(|| {
            let mut total = 0;
            for chunk in black_box(&wire).chunks(READ) {
                framer.receive(chunk);
                while let Some(range) = framer.pop() {
                    total += black_box(&framer.rx[range])[0] as usize;
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, messages, tcp_framing);
criterion_main!(benches);
