//! Records carried on the reliable per-link routing stream.
//!
//! The stream is a byte stream; records are framed as a 4-byte big-endian length `L`
//! followed by `L` bytes: a one-byte [`RecordKind`] and the body.
//! Layouts are in `docs/protocol.md`.

use crate::WireError;

/// What a stream record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A signed link-state update, flooded verbatim (body: [`crate::SignedUpdate`] bytes).
    LinkStateUpdate,
    /// A signed mesh configuration offered to a lagging peer (reserved for the signed-config
    /// work; body format defined there).
    ConfigOffer,
    /// A kind this version does not know; the record is skipped.
    Unknown(u8),
}

impl RecordKind {
    /// Returns the wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::LinkStateUpdate => 1,
            Self::ConfigOffer => 2,
            Self::Unknown(v) => v,
        }
    }

    /// Decodes a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::LinkStateUpdate,
            2 => Self::ConfigOffer,
            other => Self::Unknown(other),
        }
    }
}

/// One record of the routing stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the body is.
    pub kind: RecordKind,
    /// The record body.
    pub body: Vec<u8>,
}

impl Record {
    /// Appends the framed record (length, kind, body) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!("wire: Record::encode_into")
    }
}

/// Reassembles records from stream bytes that arrive in arbitrary pieces.
///
/// Rejects a record whose declared length is zero or exceeds `max_record_len` before buffering
/// its body, so a peer cannot make the node allocate without bound.
#[derive(Debug)]
pub struct RecordDecoder {
    max_record_len: usize,
    buf: Vec<u8>,
}

impl RecordDecoder {
    /// Creates a decoder that accepts records up to `max_record_len` bytes (kind + body).
    pub fn new(max_record_len: usize) -> Self {
        Self {
            max_record_len,
            buf: Vec::new(),
        }
    }

    /// Appends stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let _ = bytes;
        todo!("wire: RecordDecoder::push")
    }

    /// Returns the next complete record, `Ok(None)` if more bytes are needed, or
    /// [`WireError::BadLength`] if the stream is corrupt (the session should be closed).
    pub fn next_record(&mut self) -> Result<Option<Record>, WireError> {
        let _ = self.max_record_len;
        todo!("wire: RecordDecoder::next_record")
    }

    /// Returns how many bytes are buffered and not yet returned as records.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
