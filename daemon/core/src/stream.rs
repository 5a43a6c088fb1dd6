//! The reliable, ordered, flow-controlled byte stream that runs over each session.
//!
//! Link messages may be lost, duplicated and reordered (DTLS over UDP); routing updates and
//! configurations must not be. This is a small selective-repeat ARQ: numbered segments,
//! cumulative plus selective acknowledgements, retransmission on timeout (RTT-estimated, with
//! backoff) and on SACK evidence, a receive window for flow control.
//! It is sans-IO: segments go in through [`ReliableStream::handle_segment`] and come out of
//! [`ReliableStream::poll_transmit`], and time is passed in.
//!
//! Protocol choices (both ends must agree on them):
//! - Each direction numbers its segments from the `conn` value it carries, so no handshake is
//!   needed and a random session id starts the numbers anywhere in the (wrapping) u32 space.
//! - `ack + window` is a right edge that never moves backwards; segments beyond it are dropped
//!   (and acknowledged). Before the first ack a sender assumes a window of one segment.
//! - Every data segment is answered at once: the ack rides on outgoing data if there is any,
//!   otherwise one pure ack is sent (never more than one pending).
//! - Retransmission: per-segment timers from an RFC 6298 RTO with exponential backoff, and a
//!   fast retransmit of a hole once three later segments are selectively acknowledged (again
//!   at most once per smoothed RTT). When the peer's window is closed and nothing is in
//!   flight, a probe segment goes out past the window after an RTO; answers to it prove the
//!   peer alive, so a slow reader never makes the stream fail.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use connectopus_wire::StreamSegment;

use crate::time::Time;

/// Stream settings.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Largest payload per segment, in bytes; the session derives it from the link MTU.
    pub max_segment_payload: usize,
    /// Segments this end buffers beyond the cumulative ack (advertised as the window).
    pub receive_window: u16,
    /// Most segments in flight at once, whatever the peer's window.
    pub max_in_flight: u16,
    /// Most bytes queued for sending before [`ReliableStream::send`] refuses more.
    pub max_send_buffer: usize,
    /// Retransmission timeout before any RTT sample.
    pub initial_rto: Duration,
    /// Lower bound on the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound on the retransmission timeout (after backoff).
    pub max_rto: Duration,
    /// Transmissions of one segment after which the stream fails.
    pub max_transmissions: u32,
    /// How long the peer may keep its window closed while this end has data to send before
    /// the stream fails ([`StreamError::WindowStalled`]): a node reads its stream at once, so a
    /// window closed that long is a peer holding the node's memory hostage.
    pub persist_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_segment_payload: 1200,
            receive_window: 256,
            max_in_flight: 128,
            // One configuration offer (up to 64 MiB) and the database around it.
            max_send_buffer: 80 * 1024 * 1024,
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(4),
            max_transmissions: 12,
            persist_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the stream refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The send buffer is full; the caller may retry after the peer acknowledges data.
    #[error("send buffer full")]
    BufferFull,
    /// A segment went unacknowledged through every retransmission; the session must close.
    #[error("peer stopped acknowledging")]
    PeerUnresponsive,
    /// The peer kept its window closed for the persist timeout; the session must close.
    #[error("peer kept its window closed")]
    WindowStalled,
}

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Data segments sent for the first time.
    pub segments_sent: u64,
    /// Data segments sent again.
    pub retransmissions: u64,
    /// Data segments received (including duplicates).
    pub segments_received: u64,
    /// Payload bytes delivered in order.
    pub bytes_delivered: u64,
}

/// One end of a reliable stream.
///
/// Sequence numbers start at the `conn` value of their direction: this end numbers its
/// segments from `peer_conn` and expects the peer's to start at `local_conn`, so both ends agree
/// without a handshake and a random session id exercises wrap-around like any other start.
/// The receive window is a right edge (`ack + window`) that never moves backwards; until the
/// peer has advertised one, this end assumes a window of one segment.
pub struct ReliableStream {
    config: StreamConfig,
    local_conn: u32,
    peer_conn: u32,
    failed: Option<StreamError>,
    /// The latest `now` seen; lets `poll_timeout` ask for an immediate call when output is due.
    last_now: Time,
    stats: StreamStats,

    // Sender.
    /// Every byte not yet cumulatively acknowledged: in-flight segments, then unsent bytes.
    send_buf: VecDeque<u8>,
    /// Stream offset of `send_buf[0]`.
    send_base: u64,
    /// Stream offset of the first byte not yet cut into a segment.
    sent_end: u64,
    /// Oldest unacknowledged segment; `in_flight[i]` is segment `snd_una + i`.
    snd_una: u32,
    in_flight: VecDeque<Sent>,
    /// Segments to retransmit, in the order they were found lost (stale entries are skipped).
    retx_queue: VecDeque<u32>,
    /// First segment the peer has not offered to buffer (`ack + window`, never decreasing).
    peer_right: u32,
    /// Earliest retransmission deadline among `in_flight`.
    next_deadline: Option<Time>,
    /// When to send a window probe (the peer's window is closed and nothing is in flight).
    probe_at: Option<Time>,
    probe_due: bool,
    /// A segment sent past the peer's window as a probe, not yet acknowledged.
    probe_seq: Option<u32>,
    /// Since when data has waited for the peer's closed window (reset when it opens).
    stalled_since: Option<Time>,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// RTO from the estimator, before backoff.
    rto: Duration,
    /// Timeouts since the last RTT sample or ack of new data; the effective RTO is
    /// `rto << backoff`.
    backoff: u32,
    /// Holds a segment payload that straddles the end of `send_buf`'s ring.
    scratch: Vec<u8>,

    // Receiver.
    /// Next segment expected from the peer.
    rcv_nxt: u32,
    /// First segment past the window this end has offered (never decreasing).
    adv_right: u32,
    /// `out_of_order[i]` holds segment `rcv_nxt + i` if it arrived early (index 0 is always empty).
    out_of_order: VecDeque<Option<Vec<u8>>>,
    /// Payload bytes held in `out_of_order`; never above [`ReliableStream::out_of_order_cap`].
    out_of_order_bytes: usize,
    /// Bytes received in order and not yet read.
    ready: Vec<u8>,
    ack_pending: bool,
}

/// A segment sent and not yet cumulatively acknowledged.
#[derive(Debug)]
struct Sent {
    /// Stream offset of its first byte.
    offset: u64,
    len: usize,
    last_sent: Time,
    /// `None` once selectively acknowledged or while queued for retransmission.
    deadline: Option<Time>,
    /// Transmissions without a sign of life from the peer (see the zero-window probe).
    transmissions: u32,
    /// Karn's rule: no RTT sample from a segment that was ever sent twice.
    retransmitted: bool,
    sacked: bool,
    queued: bool,
}

/// Window the sender assumes before the peer has advertised one.
const INITIAL_PEER_WINDOW: u32 = 1;
/// Later segments selectively acknowledged past a hole before it is retransmitted.
const DUP_THRESHOLD: u32 = 3;
/// Bits in [`StreamSegment::sack`].
const SACK_BITS: u32 = 32;
/// Cap on the backoff exponent (the effective RTO is clamped to `max_rto` long before).
const MAX_BACKOFF: u32 = 16;
/// The RFC 6298 clock granularity term `G`.
const CLOCK_GRANULARITY: Duration = Duration::from_millis(1);

/// Returns true if sequence number `a` comes before `b`, modulo 2^32.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Returns `len` bytes of `buf` from `start` as one slice, copying into `scratch` only if they
/// straddle the ring's wrap point.
fn contiguous<'a>(
    buf: &'a VecDeque<u8>,
    scratch: &'a mut Vec<u8>,
    start: usize,
    len: usize,
) -> &'a [u8] {
    let (a, b) = buf.as_slices();
    if start + len <= a.len() {
        &a[start..start + len]
    } else if start >= a.len() {
        &b[start - a.len()..start - a.len() + len]
    } else {
        scratch.clear();
        scratch.extend_from_slice(&a[start..]);
        scratch.extend_from_slice(&b[..start + len - a.len()]);
        scratch
    }
}

impl fmt::Debug for ReliableStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReliableStream")
            .field("local_conn", &self.local_conn)
            .field("peer_conn", &self.peer_conn)
            .field("failed", &self.failed)
            .field("snd_una", &self.snd_una)
            .field("in_flight", &self.in_flight.len())
            .field("unacknowledged_bytes", &self.send_buf.len())
            .field("peer_right", &self.peer_right)
            .field("rcv_nxt", &self.rcv_nxt)
            .field("adv_right", &self.adv_right)
            .field("srtt", &self.srtt)
            .field("rto", &self.rto)
            .field("backoff", &self.backoff)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ReliableStream {
    /// Creates a stream. `local_conn` is the value the peer puts in [`StreamSegment::conn`]
    /// (segments with another value are dropped); `peer_conn` is what this end puts there.
    ///
    /// This end's segments are numbered from `peer_conn` and the peer's from `local_conn`.
    pub fn new(config: StreamConfig, local_conn: u32, peer_conn: u32, now: Time) -> Self {
        let receive_window = u32::from(config.receive_window.max(1));
        let rto = config.initial_rto.min(config.max_rto);
        Self {
            local_conn,
            peer_conn,
            failed: None,
            last_now: now,
            stats: StreamStats::default(),
            send_buf: VecDeque::new(),
            send_base: 0,
            sent_end: 0,
            snd_una: peer_conn,
            in_flight: VecDeque::new(),
            retx_queue: VecDeque::new(),
            peer_right: peer_conn.wrapping_add(INITIAL_PEER_WINDOW),
            next_deadline: None,
            probe_at: None,
            probe_due: false,
            probe_seq: None,
            stalled_since: None,
            srtt: None,
            rttvar: Duration::ZERO,
            rto,
            backoff: 0,
            scratch: Vec::new(),
            rcv_nxt: local_conn,
            adv_right: local_conn.wrapping_add(receive_window),
            out_of_order: VecDeque::new(),
            out_of_order_bytes: 0,
            ready: Vec::new(),
            ack_pending: false,
            config,
        }
    }

    /// Queues bytes for reliable, ordered delivery.
    ///
    /// # Errors
    /// [`StreamError::BufferFull`] if the send buffer would exceed `max_send_buffer`; nothing is
    /// queued then. [`StreamError::PeerUnresponsive`] once the stream has failed.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.send_buf.len().saturating_add(bytes.len()) > self.config.max_send_buffer {
            return Err(StreamError::BufferFull);
        }
        self.send_buf.extend(bytes);
        Ok(())
    }

    /// Processes a segment received from the peer.
    pub fn handle_segment(&mut self, now: Time, segment: &StreamSegment<'_>) {
        if segment.conn != self.local_conn || self.failed.is_some() {
            return;
        }
        self.last_now = now;
        self.on_ack(now, segment.ack, segment.sack, segment.window);
        if !segment.payload.is_empty() {
            self.on_data(segment.seq, segment.payload);
        }
        self.update_probe(now);
        self.update_stall(now);
    }

    /// Returns the next segment to send, or `None`; the caller encodes it
    /// ([`StreamSegment::encode`]) and sends it on the link.
    ///
    /// Poll after `send`, `handle_segment` and `handle_timeout`, until it returns `None`.
    pub fn poll_transmit(&mut self, now: Time) -> Option<StreamSegment<'_>> {
        if self.failed.is_some() {
            return None;
        }
        self.last_now = now;
        self.update_stall(now);
        let conn = self.peer_conn;
        if let Some((seq, start, len)) = self
            .next_retransmission(now)
            .or_else(|| self.next_new_segment(now))
        {
            let (ack, sack, window) = self.ack_fields();
            let payload = contiguous(&self.send_buf, &mut self.scratch, start, len);
            return Some(StreamSegment {
                conn,
                seq,
                ack,
                sack,
                window,
                payload,
            });
        }
        if self.ack_pending {
            let (ack, sack, window) = self.ack_fields();
            let seq = self.snd_nxt();
            return Some(StreamSegment {
                conn,
                seq,
                ack,
                sack,
                window,
                payload: &[],
            });
        }
        None
    }

    /// Moves every byte received in order so far to the end of `out`.
    pub fn read(&mut self, out: &mut Vec<u8>) {
        if self.ready.is_empty() {
            return;
        }
        let before = self.adv_right.wrapping_sub(self.rcv_nxt);
        if out.is_empty() {
            std::mem::swap(out, &mut self.ready);
        } else {
            out.append(&mut self.ready);
        }
        // The peer may be stalled on a (nearly) closed window; tell it the window reopened
        // rather than leaving it to a probe after an RTO.
        let threshold = (u32::from(self.config.receive_window) / 2).max(1);
        if before < threshold && self.available_window() >= threshold {
            self.ack_pending = true;
        }
    }

    /// Returns when [`ReliableStream::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.failed.is_some() {
            return None;
        }
        let output_due = self.ack_pending || self.probe_due || !self.retx_queue.is_empty();
        [
            self.next_deadline,
            self.probe_at,
            self.stalled_since.map(|t| t + self.config.persist_timeout),
            output_due.then_some(self.last_now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs retransmission timers.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.failed.is_some() {
            return;
        }
        self.last_now = now;
        self.update_stall(now);
        if self
            .stalled_since
            .is_some_and(|t| now.saturating_since(t) >= self.config.persist_timeout)
        {
            tracing::debug!("stream failed: the peer kept its window closed");
            self.fail(StreamError::WindowStalled);
            return;
        }
        let mut fired = false;
        let max_transmissions = self.config.max_transmissions;
        for (i, s) in self.in_flight.iter_mut().enumerate() {
            if s.deadline.is_some_and(|d| d <= now) {
                if s.transmissions >= max_transmissions {
                    tracing::debug!(seq = self.snd_una.wrapping_add(i as u32), "stream failed");
                    self.fail(StreamError::PeerUnresponsive);
                    return;
                }
                s.deadline = None;
                fired = true;
                if !s.queued {
                    s.queued = true;
                    self.retx_queue
                        .push_back(self.snd_una.wrapping_add(i as u32));
                }
            }
        }
        if self.probe_at.is_some_and(|t| t <= now) {
            self.probe_at = None;
            self.probe_due = true;
            fired = true;
        }
        if fired {
            self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        }
        self.recompute_deadline();
    }

    /// Returns the error that made the stream fail, if it has.
    pub fn failure(&self) -> Option<StreamError> {
        self.failed
    }

    /// Returns the number of bytes queued or in flight that the peer has not acknowledged.
    pub fn unacknowledged_bytes(&self) -> usize {
        self.send_buf.len()
    }

    /// Returns the stream offset just past the last byte queued so far: once
    /// [`ReliableStream::acknowledged_offset`] reaches it, the peer has everything sent until now.
    pub fn queued_end(&self) -> u64 {
        self.send_base + self.send_buf.len() as u64
    }

    /// Returns the stream offset up to which the peer has cumulatively acknowledged every byte.
    pub fn acknowledged_offset(&self) -> u64 {
        self.send_base
    }

    /// Returns every byte this end holds for the stream: queued or in flight, received out of
    /// order, and received in order but not yet read.
    pub fn buffered_bytes(&self) -> usize {
        self.send_buf.len() + self.out_of_order_bytes + self.ready.len()
    }

    /// Returns the payload bytes held for segments that arrived out of order.
    pub fn out_of_order_bytes(&self) -> usize {
        self.out_of_order_bytes
    }

    /// Most out-of-order payload bytes this end keeps: its window at its own segment size.
    fn out_of_order_cap(&self) -> usize {
        usize::from(self.config.receive_window.max(1))
            .saturating_mul(self.config.max_segment_payload.max(1))
    }

    /// Returns the number of segments sent and not yet cumulatively acknowledged.
    pub fn segments_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Returns the counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Returns the smoothed round-trip time, once measured.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Returns the current retransmission timeout, backoff included.
    pub fn current_rto(&self) -> Duration {
        self.rto
            .saturating_mul(1 << self.backoff)
            .min(self.config.max_rto)
    }

    fn fail(&mut self, e: StreamError) {
        self.failed = Some(e);
        self.retx_queue.clear();
        self.next_deadline = None;
        self.probe_at = None;
        self.probe_due = false;
        self.ack_pending = false;
        self.stalled_since = None;
        // A failed stream never delivers again: let go of what it buffered.
        self.out_of_order.clear();
        self.out_of_order_bytes = 0;
        self.send_buf = VecDeque::new();
    }

    fn snd_nxt(&self) -> u32 {
        self.snd_una.wrapping_add(self.in_flight.len() as u32)
    }

    fn unsent(&self) -> usize {
        self.send_buf.len() - (self.sent_end - self.send_base) as usize
    }

    /// Returns the in-flight index of `seq`, if it is in flight.
    fn index_of(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.snd_una) as usize;
        (i < self.in_flight.len()).then_some(i)
    }

    fn recompute_deadline(&mut self) {
        self.next_deadline = self.in_flight.iter().filter_map(|s| s.deadline).min();
    }

    fn arm(&mut self, deadline: Time) {
        self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// Pops the retransmission queue; returns (seq, buffer offset, len) of a segment resent.
    fn next_retransmission(&mut self, now: Time) -> Option<(u32, usize, usize)> {
        let rto = self.current_rto();
        while let Some(seq) = self.retx_queue.pop_front() {
            let Some(i) = self.index_of(seq) else {
                continue;
            };
            let s = &mut self.in_flight[i];
            s.queued = false;
            if s.sacked {
                continue;
            }
            s.transmissions += 1;
            s.retransmitted = true;
            s.last_sent = now;
            s.deadline = Some(now + rto);
            let start = (s.offset - self.send_base) as usize;
            let len = s.len;
            self.stats.retransmissions += 1;
            self.arm(now + rto);
            return Some((seq, start, len));
        }
        None
    }

    /// Cuts a new segment if the windows allow (or a probe is due).
    fn next_new_segment(&mut self, now: Time) -> Option<(u32, usize, usize)> {
        let unsent = self.unsent();
        if unsent == 0 {
            self.update_probe(now);
            return None;
        }
        let max_in_flight = usize::from(self.config.max_in_flight.max(1));
        let seq = self.snd_nxt();
        let in_window = seq_lt(seq, self.peer_right);
        if self.in_flight.len() >= max_in_flight || !(in_window || self.probe_due) {
            self.update_probe(now);
            return None;
        }
        if !in_window {
            self.probe_seq = Some(seq);
        }
        self.probe_due = false;
        self.probe_at = None;
        let len = unsent.min(self.config.max_segment_payload.max(1));
        let offset = self.sent_end;
        self.sent_end += len as u64;
        let deadline = now + self.current_rto();
        self.in_flight.push_back(Sent {
            offset,
            len,
            last_sent: now,
            deadline: Some(deadline),
            transmissions: 1,
            retransmitted: false,
            sacked: false,
            queued: false,
        });
        self.stats.segments_sent += 1;
        self.arm(deadline);
        Some((seq, (offset - self.send_base) as usize, len))
    }

    /// Starts the persist clock when data waits and the peer's window is zero (its right edge
    /// is at or before the oldest unacknowledged segment), and stops it otherwise.
    fn update_stall(&mut self, now: Time) {
        let window_zero = !self.send_buf.is_empty() && !seq_lt(self.snd_una, self.peer_right);
        if !window_zero {
            self.stalled_since = None;
        } else if self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
    }

    /// Arms the probe timer when the peer's closed window leaves nothing in flight to time out.
    fn update_probe(&mut self, now: Time) {
        let blocked = self.in_flight.is_empty()
            && self.unsent() > 0
            && !seq_lt(self.snd_una, self.peer_right);
        if !blocked {
            self.probe_at = None;
            self.probe_due = false;
        } else if self.probe_at.is_none() && !self.probe_due {
            self.probe_at = Some(now + self.current_rto());
        }
    }
}

mod acks;
mod receive;

#[cfg(test)]
mod tests;
