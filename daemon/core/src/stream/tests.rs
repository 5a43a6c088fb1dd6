//! A deterministic two-end link simulator and the stream's behaviour over it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// One direction of a simulated link.
#[derive(Debug, Clone, Copy)]
struct LinkParams {
    latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter`; reorders segments.
    jitter: Duration,
    loss: f64,
    dup: f64,
}

impl LinkParams {
    fn clean(latency_ms: u64) -> Self {
        Self { latency: Duration::from_millis(latency_ms), jitter: Duration::ZERO, loss: 0.0, dup: 0.0 }
    }

    fn lossy(latency_ms: u64, jitter_ms: u64, loss: f64, dup: f64) -> Self {
        Self { latency: Duration::from_millis(latency_ms), jitter: Duration::from_millis(jitter_ms), loss, dup }
    }
}

/// A segment on the wire, owning its payload.
#[derive(Debug, Clone)]
struct Packet {
    at: Time,
    id: u64,
    conn: u32,
    seq: u32,
    ack: u32,
    sack: u32,
    window: u16,
    payload: Vec<u8>,
}

impl Packet {
    fn segment(&self) -> StreamSegment<'_> {
        StreamSegment {
            conn: self.conn,
            seq: self.seq,
            ack: self.ack,
            sack: self.sack,
            window: self.window,
            payload: &self.payload,
        }
    }
}

// BinaryHeap is a max-heap: order by earliest delivery, then by send order.
impl Ord for Packet {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.id).cmp(&(self.at, self.id))
    }
}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}
impl Eq for Packet {}

struct End {
    stream: ReliableStream,
    config: StreamConfig,
    received: Vec<u8>,
    reading: bool,
    /// Highest right edge (`ack + window`) this end has put on the wire.
    advertised_right: u32,
    /// Segments from this end to the other.
    outbound: BinaryHeap<Packet>,
    params: LinkParams,
    max_in_flight_seen: usize,
}

struct Sim {
    now: Time,
    ends: [End; 2],
    rng: SmallRng,
    next_id: u64,
    /// Asserts on every data segment that it lies inside the receiver's advertised window.
    check_window: bool,
}

/// Connection ids of end 0 and end 1; each end's sequence numbers start at the other's.
const CONNS: [u32; 2] = [0x1000, 0x2000];

impl Sim {
    fn new(seed: u64, configs: [StreamConfig; 2], params: [LinkParams; 2]) -> Self {
        Self::with_conns(seed, configs, params, CONNS)
    }

    fn with_conns(
        seed: u64,
        configs: [StreamConfig; 2],
        params: [LinkParams; 2],
        conns: [u32; 2],
    ) -> Self {
        let [c0, c1] = configs;
        let [p0, p1] = params;
        let end = |config: StreamConfig, params, local: u32, peer: u32| End {
            stream: ReliableStream::new(config.clone(), local, peer, Time::ZERO),
            config,
            received: Vec::new(),
            reading: true,
            // Before any ack the sender may only assume a one-segment window.
            advertised_right: local.wrapping_add(INITIAL_PEER_WINDOW),
            outbound: BinaryHeap::new(),
            params,
            max_in_flight_seen: 0,
        };
        Self {
            now: Time::ZERO,
            ends: [end(c0, p0, conns[0], conns[1]), end(c1, p1, conns[1], conns[0])],
            rng: SmallRng::seed_from_u64(seed),
            next_id: 0,
            check_window: true,
        }
    }

    fn symmetric(seed: u64, config: StreamConfig, params: LinkParams) -> Self {
        Self::new(seed, [config.clone(), config], [params, params])
    }

    /// Drains end `i`'s transmit queue onto its outbound link.
    fn flush(&mut self, i: usize) {
        loop {
            let now = self.now;
            let Some(seg) = self.ends[i].stream.poll_transmit(now) else { break };
            let mut packet = Packet {
                at: now,
                id: 0,
                conn: seg.conn,
                seq: seg.seq,
                ack: seg.ack,
                sack: seg.sack,
                window: seg.window,
                payload: seg.payload.to_vec(),
            };
            let right = packet.ack.wrapping_add(u32::from(packet.window));
            let end = &mut self.ends[i];
            assert!(
                !seq_lt(right, end.advertised_right),
                "end {i} shrank its window: right edge {right} < {}",
                end.advertised_right
            );
            end.advertised_right = right;
            let in_flight = end.stream.segments_in_flight();
            assert!(in_flight <= usize::from(end.config.max_in_flight));
            end.max_in_flight_seen = end.max_in_flight_seen.max(in_flight);
            if self.check_window && !packet.payload.is_empty() {
                let peer_right = self.ends[1 - i].advertised_right;
                assert!(
                    seq_lt(packet.seq, peer_right),
                    "end {i} sent segment {} past the peer's window (right edge {peer_right})",
                    packet.seq
                );
            }
            let params = self.ends[i].params;
            let copies = if self.rng.random_bool(params.dup) { 2 } else { 1 };
            for _ in 0..copies {
                if self.rng.random_bool(params.loss) {
                    continue;
                }
                let jitter = params.jitter.as_nanos() as u64;
                let extra = if jitter == 0 { 0 } else { self.rng.random_range(0..=jitter) };
                packet.at = now + params.latency + Duration::from_nanos(extra);
                packet.id = self.next_id;
                self.next_id += 1;
                self.ends[i].outbound.push(packet.clone());
            }
        }
    }

    fn next_event(&self) -> Option<Time> {
        self.ends
            .iter()
            .flat_map(|e| [e.outbound.peek().map(|p| p.at), e.stream.poll_timeout()])
            .flatten()
            .min()
    }

    fn read(&mut self, i: usize) {
        let end = &mut self.ends[i];
        if end.reading {
            end.stream.read(&mut end.received);
        }
    }

    fn set_reading(&mut self, i: usize, reading: bool) {
        self.ends[i].reading = reading;
        self.read(i);
    }

    /// Runs until `done` holds (returns true), nothing is left to happen, or virtual time would
    /// pass `limit` (returns false).
    fn run_until(&mut self, limit: Time, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            self.flush(0);
            self.flush(1);
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event() else { return false };
            if next > limit {
                return false;
            }
            self.now = self.now.max(next);
            for i in 0..2 {
                while self.ends[i].outbound.peek().is_some_and(|p| p.at <= self.now) {
                    if let Some(p) = self.ends[i].outbound.pop() {
                        self.ends[1 - i].stream.handle_segment(self.now, &p.segment());
                    }
                }
            }
            for i in 0..2 {
                self.read(i);
                if self.ends[i].stream.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.ends[i].stream.handle_timeout(self.now);
                }
            }
        }
    }

    /// Runs until each end has received `expect[i]` bytes; checks they are exactly `expect`.
    fn transfer(&mut self, expect: [&[u8]; 2], limit: Time) {
        let lens = [expect[0].len(), expect[1].len()];
        let done = self.run_until(limit, |s| {
            (0..2).all(|i| s.ends[i].received.len() >= lens[i])
                && s.ends.iter().all(|e| e.stream.unacknowledged_bytes() == 0)
        });
        for i in 0..2 {
            assert_eq!(self.ends[i].stream.failure(), None, "end {i} failed");
        }
        assert!(
            done,
            "transfer incomplete at {}: received {:?} of {lens:?}; {:?}",
            self.now,
            [self.ends[0].received.len(), self.ends[1].received.len()],
            [&self.ends[0].stream, &self.ends[1].stream]
        );
        for i in 0..2 {
            assert!(self.ends[i].received == expect[i], "end {i} received corrupted data");
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}

fn secs(s: u64) -> Time {
    Time::from_duration(Duration::from_secs(s))
}

#[test]
fn ten_mib_over_lossy_reordering_link() {
    let started = std::time::Instant::now();
    let params = LinkParams::lossy(20, 10, 0.10, 0.01);
    let mut sim = Sim::symmetric(1, StreamConfig::default(), params);
    let data = pattern(10 * 1024 * 1024, 7);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(120));
    let stats = sim.ends[0].stream.stats();
    assert!(stats.retransmissions > stats.segments_sent / 20, "{stats:?}");
    assert_eq!(sim.ends[1].stream.stats().bytes_delivered, data.len() as u64);
    assert_eq!(sim.ends[0].max_in_flight_seen, 128);
    eprintln!(
        "10 MiB: virtual {}, real {:?}, {stats:?}, receiver {:?}, srtt {:?}",
        sim.now,
        started.elapsed(),
        sim.ends[1].stream.stats(),
        sim.ends[0].stream.smoothed_rtt()
    );
}
