//! The reliable, ordered, flow-controlled byte stream that runs over each session.
//!
//! Link messages may be lost, duplicated and reordered (DTLS over UDP); routing updates and
//! configurations must not be. This is a small selective-repeat ARQ: numbered segments,
//! cumulative plus selective acknowledgements, retransmission on timeout (RTT-estimated, with
//! backoff) and on SACK evidence, a receive window for flow control.
//! It is sans-IO: segments go in through [`ReliableStream::handle_segment`] and come out of
//! [`ReliableStream::poll_transmit`], and time is passed in.

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
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_segment_payload: 1200,
            receive_window: 256,
            max_in_flight: 128,
            max_send_buffer: 256 * 1024 * 1024,
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(4),
            max_transmissions: 12,
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
#[derive(Debug)]
pub struct ReliableStream {
    _config: StreamConfig,
}

impl ReliableStream {
    /// Creates a stream. `local_conn` is the value the peer puts in [`StreamSegment::conn`]
    /// (segments with another value are dropped); `peer_conn` is what this end puts there.
    pub fn new(config: StreamConfig, local_conn: u32, peer_conn: u32, now: Time) -> Self {
        let _ = (local_conn, peer_conn, now);
        Self { _config: config }
    }

    /// Queues bytes for reliable, ordered delivery.
    ///
    /// # Errors
    /// [`StreamError::BufferFull`] if the send buffer would exceed `max_send_buffer`; nothing is
    /// queued then. [`StreamError::PeerUnresponsive`] once the stream has failed.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        let _ = bytes;
        todo!("stream: send")
    }

    /// Processes a segment received from the peer.
    pub fn handle_segment(&mut self, now: Time, segment: &StreamSegment<'_>) {
        let _ = (now, segment);
        todo!("stream: handle_segment")
    }

    /// Returns the next segment to send, or `None`; the caller encodes it
    /// ([`StreamSegment::encode`]) and sends it on the link.
    ///
    /// Poll after `send`, `handle_segment` and `handle_timeout`, until it returns `None`.
    pub fn poll_transmit(&mut self, now: Time) -> Option<StreamSegment<'_>> {
        let _ = now;
        todo!("stream: poll_transmit")
    }

    /// Moves every byte received in order so far to the end of `out`.
    pub fn read(&mut self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("stream: read")
    }

    /// Returns when [`ReliableStream::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        todo!("stream: poll_timeout")
    }

    /// Runs retransmission timers.
    pub fn handle_timeout(&mut self, now: Time) {
        let _ = now;
        todo!("stream: handle_timeout")
    }

    /// Returns the error that made the stream fail, if it has.
    pub fn failure(&self) -> Option<StreamError> {
        todo!("stream: failure")
    }

    /// Returns the number of bytes queued or in flight that the peer has not acknowledged.
    pub fn unacknowledged_bytes(&self) -> usize {
        todo!("stream: unacknowledged_bytes")
    }

    /// Returns the counters.
    pub fn stats(&self) -> StreamStats {
        todo!("stream: stats")
    }

    /// Returns the smoothed round-trip time, once measured.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        todo!("stream: smoothed_rtt")
    }
}
