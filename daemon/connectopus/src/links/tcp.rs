//! The TCP link codec: 2-byte big-endian length framing, optionally inside TLS (rustls).
//!
//! Sans-IO: bytes read from the socket go in through [`TcpCodec::receive`], complete link
//! messages come out of [`TcpCodec::pop_message`], and messages to send are framed (and
//! encrypted) into a caller's byte queue by [`TcpCodec::send_message`].

use std::io::{Read, Write};
use std::ops::Range;

/// Largest link message a TCP frame can carry.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Why a TCP link failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpLinkError {
    /// TLS failed (handshake or record layer).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A message is too large for a frame.
    #[error("message of {0} bytes exceeds the 65535-byte frame limit")]
    TooLarge(usize),
    /// The reassembly buffer grew past its limit (the peer sends faster than we process).
    #[error("receive buffer overflow")]
    Overflow,
}

/// Framing and optional TLS state of one TCP link.
pub struct TcpCodec {
    tls: Option<rustls::Connection>,
    rx: Vec<u8>,
    rx_start: usize,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for TcpCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCodec")
            .field("tls", &self.tls.is_some())
            .field("buffered", &(self.rx.len() - self.rx_start))
            .finish()
    }
}

/// Most plaintext bytes buffered while waiting for the rest of a frame.
const MAX_RX_BUFFER: usize = 4 * MAX_FRAME;

impl TcpCodec {
    /// Creates a codec for a plain TCP link.
    pub fn plain() -> Self {
        Self {
            tls: None,
            rx: Vec::with_capacity(2 * MAX_FRAME),
            rx_start: 0,
            scratch: vec![0; 16 * 1024],
        }
    }

    /// Creates a codec for a TLS link.
    pub fn tls(connection: rustls::Connection) -> Self {
        Self {
            tls: Some(connection),
            ..Self::plain()
        }
    }

    /// Returns true once the link can carry messages (TLS handshake done, or plain TCP).
    pub fn is_ready(&self) -> bool {
        self.tls.as_ref().is_none_or(|c| !c.is_handshaking())
    }

    /// Returns 32 bytes of RFC 5705 keying material for `label` once the TLS handshake is done,
    /// or `Ok(None)` on plain TCP.
    ///
    /// # Errors
    /// A TLS link whose exporter fails (for example before the handshake is done): the caller
    /// must close the link rather than treat it as plain TCP.
    pub fn exporter(&self, label: &str) -> Result<Option<[u8; 32]>, rustls::Error> {
        let Some(conn) = self.tls.as_ref() else {
            return Ok(None);
        };
        let mut out = [0u8; 32];
        match conn {
            rustls::Connection::Client(c) => {
                c.export_keying_material(&mut out, label.as_bytes(), None)?
            }
            rustls::Connection::Server(c) => {
                c.export_keying_material(&mut out, label.as_bytes(), None)?
            }
        };
        Ok(Some(out))
    }

    /// Feeds bytes read from the socket; TLS handshake output is appended to `out`.
    ///
    /// # Errors
    /// TLS failures and receive-buffer overflow; the link must close.
    pub fn receive(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), TcpLinkError> {
        if self.rx_start > 0 && self.rx_start >= self.rx.len() / 2 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        match self.tls.as_mut() {
            None => self.rx.extend_from_slice(bytes),
            Some(conn) => {
                while !bytes.is_empty() {
                    let n = conn
                        .read_tls(&mut bytes)
                        .map_err(|_| TcpLinkError::Overflow)?;
                    if n == 0 {
                        break;
                    }
                    conn.process_new_packets()?;
                    loop {
                        match conn.reader().read(&mut self.scratch) {
                            Ok(0) => break,
                            Ok(n) => self.rx.extend_from_slice(&self.scratch[..n]),
                            Err(_) => break,
                        }
                    }
                }
                while conn.wants_write() {
                    if conn.write_tls(out).is_err() {
                        break;
                    }
                }
            }
        }
        if self.rx.len() - self.rx_start > MAX_RX_BUFFER {
            return Err(TcpLinkError::Overflow);
        }
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
        if let Some(conn) = self.tls.as_mut() {
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
        let header = (message.len() as u16).to_be_bytes();
        match self.tls.as_mut() {
            None => {
                out.extend_from_slice(&header);
                out.extend_from_slice(message);
            }
            Some(conn) => {
                let mut writer = conn.writer();
                writer
                    .write_all(&header)
                    .and_then(|()| writer.write_all(message))
                    .map_err(|_| TcpLinkError::Overflow)?;
                while conn.wants_write() {
                    if conn.write_tls(out).is_err() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
