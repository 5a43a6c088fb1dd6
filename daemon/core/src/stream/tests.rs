//! A deterministic two-end link simulator and the stream's behaviour over it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

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
        Self {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::ZERO,
            loss: 0.0,
            dup: 0.0,
        }
    }

    fn lossy(latency_ms: u64, jitter_ms: u64, loss: f64, dup: f64) -> Self {
        Self {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            dup,
        }
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
            ends: [
                end(c0, p0, conns[0], conns[1]),
                end(c1, p1, conns[1], conns[0]),
            ],
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
            let Some(seg) = self.ends[i].stream.poll_transmit(now) else {
                break;
            };
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
            let copies = if self.rng.random_bool(params.dup) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                if self.rng.random_bool(params.loss) {
                    continue;
                }
                let jitter = params.jitter.as_nanos() as u64;
                let extra = if jitter == 0 {
                    0
                } else {
                    self.rng.random_range(0..=jitter)
                };
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
            let Some(next) = self.next_event() else {
                return false;
            };
            if next > limit {
                return false;
            }
            self.now = self.now.max(next);
            for i in 0..2 {
                while self.ends[i]
                    .outbound
                    .peek()
                    .is_some_and(|p| p.at <= self.now)
                {
                    if let Some(p) = self.ends[i].outbound.pop() {
                        self.ends[1 - i]
                            .stream
                            .handle_segment(self.now, &p.segment());
                    }
                }
            }
            for i in 0..2 {
                self.read(i);
                if self.ends[i]
                    .stream
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    self.ends[i].stream.handle_timeout(self.now);
                }
            }
        }
    }

    /// Runs the simulation for `d` of virtual time.
    fn advance(&mut self, d: Duration) {
        let limit = self.now + d;
        self.run_until(limit, |_| false);
        self.now = self.now.max(limit);
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
        for (i, (end, expect)) in self.ends.iter().zip(expect).enumerate() {
            assert!(end.received == expect, "end {i} received corrupted data");
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i >> 8) as u8)
        })
        .collect()
}

fn secs(s: u64) -> Time {
    Time::from_duration(Duration::from_secs(s))
}

#[test]
fn ten_mib_over_lossy_reordering_link() {
    let params = LinkParams::lossy(20, 10, 0.10, 0.01);
    let mut sim = Sim::symmetric(1, StreamConfig::default(), params);
    let data = pattern(10 * 1024 * 1024, 7);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(120));
    let stats = sim.ends[0].stream.stats();
    assert!(
        stats.retransmissions > stats.segments_sent / 20,
        "{stats:?}"
    );
    assert_eq!(
        sim.ends[1].stream.stats().bytes_delivered,
        data.len() as u64
    );
    assert_eq!(sim.ends[0].max_in_flight_seen, 128);
    eprintln!(
        "10 MiB: virtual {}, {stats:?}, receiver {:?}, srtt {:?}",
        sim.now,
        sim.ends[1].stream.stats(),
        sim.ends[0].stream.smoothed_rtt()
    );
}

#[test]
fn lossless_both_directions_at_once() {
    let mut sim = Sim::symmetric(2, StreamConfig::default(), LinkParams::clean(10));
    let (d0, d1) = (pattern(300_000, 1), pattern(250_001, 2));
    sim.ends[0].stream.send(&d0).unwrap();
    sim.ends[1].stream.send(&d1).unwrap();
    sim.transfer([&d1, &d0], secs(10));
    for end in &sim.ends {
        let stats = end.stream.stats();
        assert_eq!(stats.retransmissions, 0, "{stats:?}");
    }
    // Both directions carried data, so acks rode on it: few pure acks were needed.
    assert_eq!(sim.ends[0].stream.stats().bytes_delivered, d1.len() as u64);
}

#[test]
fn many_small_sends() {
    let params = LinkParams::lossy(5, 2, 0.05, 0.0);
    let mut sim = Sim::symmetric(3, StreamConfig::default(), params);
    let mut sent = Vec::new();
    let mut rng = SmallRng::seed_from_u64(33);
    for k in 0..3000usize {
        let len = rng.random_range(1..=9);
        let chunk = pattern(len, k as u8);
        sim.ends[0].stream.send(&chunk).unwrap();
        sent.extend_from_slice(&chunk);
        if k % 3 == 0 {
            sim.advance(Duration::from_micros(300));
        }
    }
    sim.transfer([&[], &sent], secs(60));
}

#[test]
fn duplicated_segments_are_delivered_once() {
    let params = LinkParams::lossy(10, 5, 0.0, 0.5);
    let mut sim = Sim::symmetric(4, StreamConfig::default(), params);
    let data = pattern(200_000, 3);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(10));
    let sender = sim.ends[0].stream.stats();
    let receiver = sim.ends[1].stream.stats();
    assert!(
        receiver.segments_received > sender.segments_sent + sender.retransmissions,
        "no duplicates exercised: {sender:?} {receiver:?}"
    );
    assert_eq!(receiver.bytes_delivered, data.len() as u64);
}

#[test]
fn segments_for_another_conn_are_ignored() {
    let mut stream = ReliableStream::new(StreamConfig::default(), 7, 9, Time::ZERO);
    let mut segment = StreamSegment {
        conn: 8,
        seq: 7,
        ack: 9,
        sack: 0,
        window: 16,
        payload: b"stale session",
    };
    stream.handle_segment(Time::ZERO, &segment);
    assert!(stream.poll_transmit(Time::ZERO).is_none());
    assert_eq!(stream.poll_timeout(), None);
    assert_eq!(stream.stats(), StreamStats::default());
    let mut out = Vec::new();
    stream.read(&mut out);
    assert!(out.is_empty());

    segment.conn = 7;
    stream.handle_segment(Time::ZERO, &segment);
    stream.read(&mut out);
    assert_eq!(out, b"stale session");
    let ack = stream.poll_transmit(Time::ZERO).unwrap();
    assert_eq!((ack.conn, ack.ack, ack.payload), (9, 8, &[][..]));
    assert!(
        stream.poll_transmit(Time::ZERO).is_none(),
        "one pure ack at a time"
    );
}

#[test]
fn receiver_window_of_four_segments() {
    let small = StreamConfig {
        receive_window: 4,
        ..StreamConfig::default()
    };
    let params = LinkParams::lossy(10, 5, 0.05, 0.02);
    let mut sim = Sim::new(5, [StreamConfig::default(), small], [params, params]);
    let data = pattern(300_000, 4);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(60));
    assert_eq!(sim.ends[0].max_in_flight_seen, 4);
}

/// Sum of the retransmission intervals of one segment sent into the void.
fn backoff_schedule(config: &StreamConfig) -> Duration {
    (0..config.max_transmissions)
        .map(|k| {
            config
                .initial_rto
                .saturating_mul(1 << k.min(16))
                .min(config.max_rto)
        })
        .sum()
}

#[test]
fn fails_after_max_transmissions_when_peer_is_gone() {
    let gone = LinkParams::lossy(10, 0, 1.0, 0.0);
    let config = StreamConfig::default();
    let mut sim = Sim::new(
        6,
        [config.clone(), config.clone()],
        [gone, LinkParams::clean(10)],
    );
    sim.ends[0].stream.send(&pattern(10_000, 5)).unwrap();
    assert!(sim.run_until(secs(600), |s| s.ends[0].stream.failure().is_some()));
    let expected = backoff_schedule(&config);
    assert_eq!(expected, Duration::from_millis(39_500));
    assert_eq!(sim.now, Time::from_duration(expected));
    let stream = &mut sim.ends[0].stream;
    let stats = stream.stats();
    assert_eq!(
        stats.segments_sent + stats.retransmissions,
        u64::from(config.max_transmissions)
    );
    assert_eq!(stream.failure(), Some(StreamError::PeerUnresponsive));
    assert_eq!(stream.send(b"more"), Err(StreamError::PeerUnresponsive));
    assert!(stream.poll_transmit(sim.now).is_none());
    assert_eq!(stream.poll_timeout(), None);
}

#[test]
fn fails_when_peer_disappears_mid_transfer() {
    let config = StreamConfig::default();
    let mut sim = Sim::symmetric(7, config.clone(), LinkParams::lossy(10, 5, 0.05, 0.0));
    sim.ends[0].stream.send(&pattern(5_000_000, 6)).unwrap();
    sim.advance(Duration::from_secs(1));
    assert!(!sim.ends[1].received.is_empty());
    let cut = sim.now;
    sim.ends[0].params.loss = 1.0;
    sim.ends[1].params.loss = 1.0;
    assert!(sim.run_until(secs(600), |s| s.ends[0].stream.failure().is_some()));
    // However many transmissions the oldest segment had before the cut, each interval after
    // it is at most max_rto.
    let elapsed = sim.now - cut;
    assert!(
        elapsed <= config.max_rto * config.max_transmissions,
        "took {elapsed:?}"
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    let config = StreamConfig {
        max_segment_payload: 100,
        ..StreamConfig::default()
    };
    let params = LinkParams::lossy(10, 5, 0.1, 0.02);
    let conns = [u32::MAX - 20, u32::MAX - 300];
    let mut sim = Sim::with_conns(8, [config.clone(), config], [params, params], conns);
    let (d0, d1) = (pattern(100_000, 7), pattern(80_000, 8));
    sim.ends[0].stream.send(&d0).unwrap();
    sim.ends[1].stream.send(&d1).unwrap();
    sim.transfer([&d1, &d0], secs(60));
    // Both directions crossed zero: 1000 and 800 segments from just below u32::MAX.
    assert!(sim.ends[0].stream.snd_una < 1000 && sim.ends[1].stream.snd_una < 1000);
    assert!(sim.ends[0].stream.stats().retransmissions > 0);
}

#[test]
fn rtt_estimate_converges() {
    let params = LinkParams::lossy(25, 4, 0.0, 0.0);
    let mut sim = Sim::symmetric(9, StreamConfig::default(), params);
    let data = pattern(2_000_000, 9);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(30));
    // Round trip: 2 x 25 ms plus two jitters of 0..=4 ms.
    let srtt = sim.ends[0].stream.smoothed_rtt().unwrap();
    assert!(
        srtt >= Duration::from_millis(50) && srtt <= Duration::from_millis(58),
        "{srtt:?}"
    );
    let rto = sim.ends[0].stream.current_rto();
    assert!(rto >= srtt && rto <= Duration::from_millis(100), "{rto:?}");
}

#[test]
fn send_refuses_past_max_send_buffer() {
    let config = StreamConfig {
        max_send_buffer: 1000,
        ..StreamConfig::default()
    };
    let mut sim = Sim::symmetric(10, config, LinkParams::clean(5));
    let stream = &mut sim.ends[0].stream;
    stream.send(&[1; 600]).unwrap();
    assert_eq!(stream.send(&[2; 401]), Err(StreamError::BufferFull));
    assert_eq!(stream.unacknowledged_bytes(), 600);
    stream.send(&[3; 400]).unwrap();
    assert_eq!(stream.send(&[4]), Err(StreamError::BufferFull));
    let mut expect = vec![1; 600];
    expect.extend_from_slice(&[3; 400]);
    sim.transfer([&[], &expect], secs(5));
    // Acknowledged bytes free the buffer.
    sim.ends[0].stream.send(&[5; 1000]).unwrap();
}

#[test]
fn zero_window_stalls_then_resumes_without_failing() {
    let small = StreamConfig {
        receive_window: 8,
        ..StreamConfig::default()
    };
    // A pause shorter than the persist timeout is survived.
    let patient = StreamConfig {
        persist_timeout: Duration::from_secs(150),
        ..StreamConfig::default()
    };
    let params = LinkParams::lossy(10, 2, 0.05, 0.0);
    let mut sim = Sim::new(11, [patient, small], [params, params]);
    // Probes go past the closed window by design.
    sim.check_window = false;
    sim.set_reading(1, false);
    let data = pattern(200_000, 10);
    sim.ends[0].stream.send(&data).unwrap();
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.ends[0].stream.failure(), None);
    let buffered = sim.ends[1].stream.stats().bytes_delivered;
    assert!(buffered > 0 && buffered <= 8 * 1200, "{buffered}");
    let probes = sim.ends[0].stream.stats().retransmissions;
    assert!(probes > 120 / 4, "window probes every max_rto: {probes}");
    sim.set_reading(1, true);
    let resumed = sim.now;
    sim.transfer([&[], &data], secs(180));
    assert!(
        sim.now - resumed < Duration::from_secs(10),
        "resumed slowly: {}",
        sim.now
    );
}

#[test]
fn a_window_closed_past_the_persist_timeout_fails_the_stream() {
    let small = StreamConfig {
        receive_window: 8,
        ..StreamConfig::default()
    };
    let params = LinkParams::clean(10);
    let mut sim = Sim::new(12, [StreamConfig::default(), small], [params, params]);
    sim.check_window = false;
    sim.set_reading(1, false);
    sim.ends[0].stream.send(&pattern(200_000, 11)).unwrap();
    // Probes are answered (the peer is alive) but the window never opens.
    sim.advance(Duration::from_secs(29));
    assert_eq!(sim.ends[0].stream.failure(), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(
        sim.ends[0].stream.failure(),
        Some(StreamError::WindowStalled)
    );
    assert_eq!(
        sim.ends[0].stream.buffered_bytes(),
        0,
        "a failed stream lets go"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn everything_arrives_in_order_exactly_once(
        seed in any::<u64>(),
        loss in 0.0f64..0.2,
        dup in 0.0f64..0.2,
        jitter_ms in 0u64..40,
        latency_ms in 1u64..30,
        segment in 64usize..1500,
        window in 1u16..64,
        len0 in 0usize..30_000,
        len1 in 0usize..30_000,
    ) {
        let config = StreamConfig {
            max_segment_payload: segment,
            receive_window: window,
            max_in_flight: 32,
            ..StreamConfig::default()
        };
        let params = LinkParams::lossy(latency_ms, jitter_ms, loss, dup);
        let mut sim = Sim::symmetric(seed, config, params);
        let (d0, d1) = (pattern(len0, 11), pattern(len1, 12));
        // Split the sends to mix segment boundaries with send boundaries.
        for part in d0.chunks(7_000) {
            sim.ends[0].stream.send(part).unwrap();
            sim.advance(Duration::from_millis(3));
        }
        sim.ends[1].stream.send(&d1).unwrap();
        sim.transfer([&d1, &d0], secs(300));
        prop_assert_eq!(sim.ends[1].stream.stats().bytes_delivered, len0 as u64);
        prop_assert_eq!(sim.ends[0].stream.stats().bytes_delivered, len1 as u64);
    }
}

#[test]
fn ten_mib_at_thirty_percent_loss_each_way_keeps_its_pace() {
    // Nearly every ack here covers a retransmitted hole, so Karn's rule leaves no RTT
    // samples: progress alone must reset the backoff, or the RTO sits at max_rto and the
    // transfer takes minutes (365 virtual seconds before that fix; about 9 after).
    let params = LinkParams::lossy(1, 0, 0.30, 0.0);
    let mut sim = Sim::symmetric(3, StreamConfig::default(), params);
    let data = pattern(10 * 1024 * 1024, 9);
    sim.ends[0].stream.send(&data).unwrap();
    sim.transfer([&[], &data], secs(30));
    assert_eq!(
        sim.ends[1].stream.stats().bytes_delivered,
        data.len() as u64,
        "after {}: {:?}",
        sim.now,
        sim.ends[0].stream.stats()
    );
    assert!(sim.ends[0].stream.failure().is_none());
}
