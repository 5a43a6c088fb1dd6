//! Records carried on the reliable per-link routing stream.
//!
//! The stream is a byte stream; records are framed as a 4-byte big-endian length `L`
//! followed by `L` bytes: a one-byte [`RecordKind`] and the body.
//! Layouts are in `docs/protocol.md`.

use crate::WireError;
use crate::cursor::fit;

/// Size of the record length field in bytes.
pub const RECORD_HEADER_LEN: usize = 4;

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
    ///
    /// A body longer than `u32::MAX - 1` bytes is cut to fit the length field.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body = fit(&self.body, u32::MAX as usize - 1);
        let len = (1 + body.len()) as u32;
        out.reserve(RECORD_HEADER_LEN + 1 + body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.kind.to_u8());
        out.extend_from_slice(body);
    }

    /// Returns the framed record as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Reassembles records from stream bytes that arrive in arbitrary pieces.
///
/// Rejects a record whose declared length is zero or exceeds `max_record_len` before buffering
/// its body, so a peer cannot make the node allocate without bound.
#[derive(Debug)]
pub struct RecordDecoder {
    max_record_len: usize,
    /// Received bytes; those before `start` were already returned as records.
    buf: Vec<u8>,
    /// Read offset into `buf`. Consumed bytes are dropped in [`RecordDecoder::push`] once they
    /// make up at least half of `buf`, so copying stays linear in the bytes received.
    start: usize,
}

impl RecordDecoder {
    /// Creates a decoder that accepts records up to `max_record_len` bytes (kind + body).
    pub fn new(max_record_len: usize) -> Self {
        Self {
            max_record_len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Appends stream bytes.
    ///
    /// Once the next record's header is buffered and its length is invalid, further bytes are
    /// dropped: the stream is corrupt and [`RecordDecoder::next_record`] reports it.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pending_len() == Some(Err(WireError::BadLength)) {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        if self.pending_len() == Some(Err(WireError::BadLength)) {
            // Keep only the bad header, never the body it announces.
            self.buf.truncate(self.start + RECORD_HEADER_LEN);
        }
    }

    /// Returns the next complete record, `Ok(None)` if more bytes are needed, or
    /// [`WireError::BadLength`] if the stream is corrupt (the session should be closed).
    pub fn next_record(&mut self) -> Result<Option<Record>, WireError> {
        let len = match self.pending_len() {
            None => return Ok(None),
            Some(len) => len?,
        };
        let end = RECORD_HEADER_LEN
            .checked_add(len)
            .ok_or(WireError::BadLength)?;
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let Some(framed) = avail.get(..end) else {
            return Ok(None);
        };
        let Some((&kind, body)) = framed
            .get(RECORD_HEADER_LEN..)
            .and_then(<[u8]>::split_first)
        else {
            // Unreachable: `pending_len` never returns a zero length.
            return Err(WireError::BadLength);
        };
        let record = Record {
            kind: RecordKind::from_u8(kind),
            body: body.to_vec(),
        };
        self.start += end;
        Ok(Some(record))
    }

    /// Returns how many bytes are buffered and not yet returned as records.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Reads the length of the next record: `None` if its header is not complete yet,
    /// [`WireError::BadLength`] if the length is zero or above the limit.
    fn pending_len(&self) -> Option<Result<usize, WireError>> {
        let header: [u8; RECORD_HEADER_LEN] = self
            .buf
            .get(self.start..self.start.checked_add(RECORD_HEADER_LEN)?)?
            .try_into()
            .ok()?;
        let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
        if len == 0 || len > self.max_record_len {
            Some(Err(WireError::BadLength))
        } else {
            Some(Ok(len))
        }
    }
}
