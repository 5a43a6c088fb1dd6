//! The TCP link codec: 2-byte big-endian length framing, optionally inside TLS 1.3.
//!
//! Sans-IO: bytes read from the socket go in through [`TcpCodec::receive`], complete link
//! messages come out of [`TcpCodec::pop_message`], and messages to send are framed (and
//! encrypted) into a caller's byte queue by [`TcpCodec::send_message`]. On a TLS link rustls
//! runs the handshake; then the link's own record layer (`tls_records.rs`) seals and opens
//! the records.

use std::io::BufRead;
use std::ops::Range;

use super::tls_records::{RecordError, RecordLayer, RecordSink, TlsSession, handshake_record_len};

/// Largest link message a TCP frame can carry.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// The RFC 5705 exporter label of the channel binding that node hellos sign on (D)TLS links
/// (`daemon/binding.rs`); a TLS link computes it when rustls hands the session over.
pub const CHANNEL_BINDING_LABEL: &str = "EXPORTER-connectopus-hello";

/// Why a TCP link failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpLinkError {
    /// The TLS handshake failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS record layer failed (after the handshake).
    #[error("{0}")]
    Records(#[from] RecordError),
    /// A message is too large for a frame.
    #[error("message of {0} bytes exceeds the 65535-byte frame limit")]
    TooLarge(usize),
    /// The reassembly buffer grew past its limit (the peer sends faster than we process).
    #[error("receive buffer overflow")]
    Overflow,
}

/// Where a TLS link is.
// The record layer is the state for the life of the link; boxing it would add a pointer
// chase per record.
#[allow(clippy::large_enum_variant)]
enum Tls {
    /// rustls runs the handshake. It is fed whole records, one at a time, so that the bytes
    /// after its last one are left for the record layer.
    Handshake {
        session: Box<TlsSession>,
        /// Bytes read but not given to rustls yet.
        unread: Vec<u8>,
    },
    /// The link seals and opens its records itself.
    Records {
        layer: RecordLayer,
        /// The exporter value of [`CHANNEL_BINDING_LABEL`], taken at the hand-over.
        binding: [u8; 32],
    },
    /// The hand-over failed; the link must close.
    Failed,
}

/// Framing and optional TLS state of one TCP link.
pub struct TcpCodec {
    tls: Option<Tls>,
    rx: Vec<u8>,
    rx_start: usize,
    /// Framed plaintext waiting for one TLS write (TLS links only): messages queued together
    /// leave in full-size TLS records, not one record per frame header and one per message.
    staged: Vec<u8>,
}

impl std::fmt::Debug for TcpCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = match &self.tls {
            None => "none",
            Some(Tls::Handshake { .. }) => "handshake",
            Some(Tls::Records { .. }) => "records",
            Some(Tls::Failed) => "failed",
        };
        f.debug_struct("TcpCodec")
            .field("tls", &tls)
            .field("buffered", &(self.rx.len() - self.rx_start))
            .finish()
    }
}

/// Most plaintext bytes buffered while waiting for the rest of a frame.
const MAX_RX_BUFFER: usize = 4 * MAX_FRAME;

/// Most framed bytes a TLS link stages before its handshake is done (the node sends nothing
/// before it; rustls allowed 64 KiB).
pub const MAX_STAGED_BEFORE_HANDSHAKE: usize = 64 * 1024;

/// The capacity an idle link's send queue and staging buffer keep (see
/// [`TcpCodec::shrink_idle`], [`shrink_idle_queue`]): a burst may grow them to the backlog
/// bound (4 MiB, a `VecDeque` then holds 8), and a grown buffer that nothing shrinks stays
/// resident for the life of the link.
pub const KEEP_CAPACITY: usize = 64 * 1024;

/// Shrinks a link's send queue that a burst grew, once it holds no more than
/// [`KEEP_CAPACITY`] bytes (the bytes stay, in order). Called once a second, never per packet.
pub fn shrink_idle_queue(tx: &mut std::collections::VecDeque<u8>) {
    if tx.capacity() > KEEP_CAPACITY && tx.len() <= KEEP_CAPACITY {
        tx.shrink_to(KEEP_CAPACITY);
    }
}

impl TcpCodec {
    /// Creates a codec for a plain TCP link.
    pub fn plain() -> Self {
        Self {
            tls: None,
            rx: Vec::with_capacity(2 * MAX_FRAME),
            rx_start: 0,
            staged: Vec::new(),
        }
    }

    /// Creates a codec for a TLS link whose handshake has not begun.
    pub fn tls(session: TlsSession) -> Self {
        Self {
            tls: Some(Tls::Handshake {
                session: Box::new(session),
                unread: Vec::new(),
            }),
            ..Self::plain()
        }
    }

    /// Returns true once the link can carry messages (TLS handshake done, or plain TCP).
    pub fn is_ready(&self) -> bool {
        matches!(self.tls, None | Some(Tls::Records { .. }))
    }

    /// Returns the link's channel binding (the exporter value of [`CHANNEL_BINDING_LABEL`])
    /// once the TLS handshake is done, or `Ok(None)` on plain TCP.
    ///
    /// # Errors
    /// A TLS link whose handshake is not done (or whose hand-over failed): the caller must
    /// close the link rather than treat it as plain TCP.
    pub fn channel_binding(&self) -> Result<Option<[u8; 32]>, rustls::Error> {
        match &self.tls {
            None => Ok(None),
            Some(Tls::Records { binding, .. }) => Ok(Some(*binding)),
            Some(Tls::Handshake { .. } | Tls::Failed) => Err(rustls::Error::HandshakeNotComplete),
        }
    }

    /// Feeds bytes read from the socket; TLS handshake output (and a KeyUpdate the peer asks
    /// to be answered) is appended to `out`.
    ///
    /// # Errors
    /// TLS failures and receive-buffer overflow; the link must close.
    pub fn receive(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), TcpLinkError> {
        if self.rx_start > 0 && self.rx_start >= self.rx.len() / 2 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        match self.tls.as_mut() {
            None => self.rx.extend_from_slice(bytes),
            // Opened from the read buffer straight into the frame buffer.
            Some(Tls::Records { layer, .. }) => layer.open(bytes, &mut self.rx, out)?,
            Some(Tls::Handshake { .. } | Tls::Failed) => self.receive_handshake(bytes, out)?,
        }
        if self.rx.len() - self.rx_start > MAX_RX_BUFFER {
            return Err(TcpLinkError::Overflow);
        }
        Ok(())
    }

    /// Gives rustls the whole records among the bytes read so far while it handshakes, and
    /// hands the session over to the record layer once it is done.
    fn receive_handshake(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), TcpLinkError> {
        let Some(Tls::Handshake { session, unread }) = self.tls.as_mut() else {
            return Err(RecordError::Keys("the session was not handed over").into());
        };
        unread.extend_from_slice(bytes);
        let conn = &mut session.connection;
        let mut fed = 0;
        while conn.is_handshaking() {
            let rest = unread.get(fed..).unwrap_or_default();
            let Some(len) = handshake_record_len(rest)? else {
                break;
            };
            let Some(mut record) = rest.get(..len) else {
                break;
            };
            fed += len;
            while !record.is_empty() {
                if conn
                    .read_tls(&mut record)
                    .map_err(|_| TcpLinkError::Overflow)?
                    == 0
                {
                    break;
                }
                conn.process_new_packets()?;
            }
            // Application data rustls opened during the handshake (none from our nodes).
            let mut reader = conn.reader();
            while let Ok(chunk) = reader.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                self.rx.extend_from_slice(chunk);
                reader.consume(n);
            }
            while conn.wants_write() {
                if conn.write_tls(out).is_err() {
                    break;
                }
            }
        }
        unread.drain(..fed);
        if conn.is_handshaking() {
            return Ok(());
        }
        let Some(Tls::Handshake { session, unread }) = self.tls.replace(Tls::Failed) else {
            return Err(RecordError::Keys("the session was not handed over").into());
        };
        let mut binding = [0u8; 32];
        match &session.connection {
            rustls::Connection::Client(c) => {
                c.export_keying_material(&mut binding, CHANNEL_BINDING_LABEL.as_bytes(), None)?
            }
            rustls::Connection::Server(c) => {
                c.export_keying_material(&mut binding, CHANNEL_BINDING_LABEL.as_bytes(), None)?
            }
        };
        let mut layer = session.into_record_layer()?;
        // Frames queued during the handshake leave first, then what followed its last record.
        if !self.staged.is_empty() {
            layer.seal(&self.staged, out)?;
            self.staged.clear();
        }
        layer.open(&unread, &mut self.rx, out)?;
        self.tls = Some(Tls::Records { layer, binding });
        Ok(())
    }

    /// Returns the range of the next complete message in [`TcpCodec::buffer_mut`], if any.
    /// Zero-length frames are skipped.
    pub fn pop_message(&mut self) -> Option<Range<usize>> {
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

    /// Returns the receive buffer that [`TcpCodec::pop_message`] ranges point into.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.rx
    }

    /// Appends handshake bytes TLS wants to send (the client's first flight) to `out`.
    pub fn poll_handshake(&mut self, out: &mut Vec<u8>) {
        if let Some(Tls::Handshake { session, .. }) = self.tls.as_mut() {
            let conn = &mut session.connection;
            while conn.wants_write() {
                if conn.write_tls(out).is_err() {
                    break;
                }
            }
        }
    }

    /// Frames (and encrypts) one message, appending the bytes for the socket to `out`.
    ///
    /// # Errors
    /// The message is larger than a frame, or TLS refused it.
    pub fn send_message(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), TcpLinkError> {
        if message.len() > MAX_FRAME {
            return Err(TcpLinkError::TooLarge(message.len()));
        }
        self.queue_with(
            message.len(),
            |slot| {
                slot.copy_from_slice(message);
                Some(message.len())
            },
            out,
        )?;
        self.flush(out)
    }

    /// Queues one framed message whose bytes `fill` writes in place into a slot of at most
    /// `max_len` bytes, returning how many it wrote (`None`: nothing is queued). On plain TCP
    /// the frame goes straight to `out`; on TLS it waits for [`TcpCodec::flush`], so that
    /// many messages (the segments of one super-packet) are encrypted in full-size records.
    ///
    /// # Errors
    /// `max_len` is larger than a frame, or a TLS link still handshaking has
    /// [`MAX_STAGED_BEFORE_HANDSHAKE`] bytes waiting already.
    pub fn queue_with(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<bool, TcpLinkError> {
        if max_len > MAX_FRAME {
            return Err(TcpLinkError::TooLarge(max_len));
        }
        if matches!(self.tls, Some(Tls::Handshake { .. } | Tls::Failed))
            && self.staged.len() + 2 + max_len > MAX_STAGED_BEFORE_HANDSHAKE
        {
            return Err(TcpLinkError::Overflow);
        }
        let target = if self.tls.is_some() {
            &mut self.staged
        } else {
            out
        };
        let start = target.len();
        target.resize(start + 2 + max_len, 0);
        let written = target
            .get_mut(start + 2..)
            .and_then(fill)
            .filter(|n| *n <= max_len);
        let Some(n) = written else {
            target.truncate(start);
            return Ok(false);
        };
        target.truncate(start + 2 + n);
        // n <= max_len <= MAX_FRAME = u16::MAX.
        let header = (n as u16).to_be_bytes();
        if let Some(slot) = target.get_mut(start..start + 2) {
            slot.copy_from_slice(&header);
        }
        Ok(true)
    }

    /// Gives back buffer capacity a burst left behind: the staging buffer (a TLS link stages
    /// a whole burst of frames before one encryption) shrinks to [`KEEP_CAPACITY`] once it
    /// holds no more than that, and the receive buffer (plain and TLS links) to two frames
    /// once it holds no more than one, its bytes kept. Called once a second, never per
    /// packet, and never while a range from [`TcpCodec::pop_message`] is in use.
    pub fn shrink_idle(&mut self) {
        if self.staged.capacity() > KEEP_CAPACITY && self.staged.len() <= KEEP_CAPACITY {
            self.staged.shrink_to(KEEP_CAPACITY);
        }
        let buffered = self.rx.len() - self.rx_start;
        if self.rx.capacity() > 2 * MAX_FRAME && buffered <= MAX_FRAME {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
            self.rx.shrink_to(2 * MAX_FRAME);
        }
    }

    /// Seals what [`TcpCodec::queue_with`] staged (TLS links; nothing to do on plain TCP)
    /// into records appended to `out` — the link's send queue itself, each record sealed
    /// where it lands. Before the handshake is done the frames wait and leave first after it.
    /// Records already appended stay there when a later one fails (they are part of the TLS
    /// stream).
    ///
    /// # Errors
    /// The record layer failed (the link must close).
    pub fn flush(&mut self, out: &mut impl RecordSink) -> Result<(), TcpLinkError> {
        let layer = match self.tls.as_mut() {
            None | Some(Tls::Handshake { .. }) => return Ok(()),
            Some(Tls::Failed) => {
                return Err(RecordError::Keys("the session was not handed over").into());
            }
            Some(Tls::Records { layer, .. }) => layer,
        };
        if self.staged.is_empty() {
            return Ok(());
        }
        let result = layer.seal(&self.staged, out);
        self.staged.clear();
        Ok(result?)
    }

    /// The record layer of a TLS link past its handshake (tests).
    #[cfg(test)]
    pub(crate) fn record_layer(&mut self) -> Option<&mut RecordLayer> {
        match self.tls.as_mut() {
            Some(Tls::Records { layer, .. }) => Some(layer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_a_burst_grew_shrinks_once_drained_and_keeps_its_bytes() {
        let mut tx: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
        tx.extend(std::iter::repeat_n(7u8, 4 * 1024 * 1024));
        assert!(tx.capacity() >= 4 * 1024 * 1024);
        // Still full: nothing to give back.
        shrink_idle_queue(&mut tx);
        assert!(tx.capacity() >= 4 * 1024 * 1024);
        tx.drain(..tx.len() - 1000);
        tx.extend([1u8, 2, 3]);
        shrink_idle_queue(&mut tx);
        assert!(tx.capacity() <= 2 * KEEP_CAPACITY, "{}", tx.capacity());
        assert_eq!(tx.len(), 1003);
        assert!(tx.iter().take(1000).all(|&b| b == 7));
        assert_eq!(
            tx.iter().skip(1000).copied().collect::<Vec<u8>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn a_receive_buffer_a_burst_grew_shrinks_and_keeps_a_partial_frame() {
        let mut codec = TcpCodec::plain();
        let mut out = Vec::new();
        // Three whole frames and the first half of a fourth, taken apart frame by frame.
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(&(MAX_FRAME as u16).to_be_bytes());
            wire.extend(std::iter::repeat_n(9u8, MAX_FRAME));
        }
        wire.extend_from_slice(&100u16.to_be_bytes());
        wire.extend(std::iter::repeat_n(5u8, 50));
        codec
            .receive(&wire, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(codec.rx.capacity() > 2 * MAX_FRAME);
        for _ in 0..3 {
            assert!(codec.pop_message().is_some());
        }
        assert!(codec.pop_message().is_none());
        codec.shrink_idle();
        assert!(
            codec.rx.capacity() <= 2 * MAX_FRAME + 64,
            "{}",
            codec.rx.capacity()
        );
        // The partial frame survived: its second half completes it.
        codec
            .receive(&[5u8; 50], &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let range = codec.pop_message().unwrap_or_else(|| panic!("no frame"));
        assert_eq!(range.len(), 100);
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let mut sender = TcpCodec::plain();
        let mut wire = Vec::new();
        let messages: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 37]).collect();
        for m in &messages {
            sender.send_message(m, &mut wire).unwrap();
        }
        for chunk_size in [1, 2, 3, 7, 100, 5000] {
            let mut receiver = TcpCodec::plain();
            let mut got = Vec::new();
            let mut ignored = Vec::new();
            for chunk in wire.chunks(chunk_size) {
                receiver.receive(chunk, &mut ignored).unwrap();
                while let Some(r) = receiver.pop_message() {
                    got.push(receiver.buffer_mut()[r].to_vec());
                }
            }
            let expected: Vec<Vec<u8>> =
                messages.iter().filter(|m| !m.is_empty()).cloned().collect();
            assert_eq!(got, expected, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn oversized_message_is_refused() {
        let mut codec = TcpCodec::plain();
        let mut out = Vec::new();
        assert!(matches!(
            codec.send_message(&vec![0; MAX_FRAME + 1], &mut out),
            Err(TcpLinkError::TooLarge(_))
        ));
        assert!(out.is_empty());
    }

    /// A TLS client and server codec pair with the handshake done.
    fn tls_pair() -> (TcpCodec, TcpCodec) {
        crate::links::tls_records::tests::pair()
    }

    #[test]
    fn queued_messages_leave_in_full_size_tls_records_and_arrive_whole() {
        let (mut a, mut b) = tls_pair();
        // The 45 segments of a super-packet, each framed, then one flush.
        let messages: Vec<Vec<u8>> = (0..45u8).map(|i| vec![i; 1400]).collect();
        let mut wire = Vec::new();
        for m in &messages {
            let queued = a
                .queue_with(
                    m.len(),
                    |slot| {
                        slot.copy_from_slice(m);
                        Some(m.len())
                    },
                    &mut wire,
                )
                .unwrap();
            assert!(queued);
        }
        assert!(wire.is_empty(), "TLS output waits for the flush");
        a.flush(&mut wire).unwrap();
        // 45 × 1,402 framed bytes in 16 KiB records: 4 records, not 90.
        let mut records = 0;
        let mut at = 0;
        while at + 5 <= wire.len() {
            records += 1;
            at += 5 + usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        }
        assert_eq!(at, wire.len());
        assert!(records <= 5, "{records} TLS records");
        let mut ignored = Vec::new();
        b.receive(&wire, &mut ignored).unwrap();
        let mut got = Vec::new();
        while let Some(r) = b.pop_message() {
            got.push(b.buffer_mut()[r].to_vec());
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn a_flush_larger_than_the_tls_buffer_limit_is_not_lost() {
        let (mut a, mut b) = tls_pair();
        let messages: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 1400]).collect();
        let mut wire = Vec::new();
        crate::links::tls_records::tests::queue(&mut a, &messages, &mut wire);
        let mut ignored = Vec::new();
        b.receive(&wire, &mut ignored).unwrap();
        let mut n = 0;
        while let Some(r) = b.pop_message() {
            assert_eq!(b.buffer_mut()[r].to_vec(), messages[n]);
            n += 1;
        }
        assert_eq!(n, messages.len());
    }

    #[test]
    fn a_fill_that_fails_queues_nothing() {
        let mut codec = TcpCodec::plain();
        let mut out = Vec::new();
        assert!(!codec.queue_with(100, |_| None, &mut out).unwrap());
        assert!(out.is_empty());
        assert!(
            codec
                .queue_with(
                    100,
                    |slot| {
                        slot[..3].copy_from_slice(b"abc");
                        Some(3)
                    },
                    &mut out
                )
                .unwrap()
        );
        assert_eq!(out, [0, 3, b'a', b'b', b'c']);
    }
}
