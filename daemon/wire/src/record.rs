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
    /// A signed mesh configuration offered to a lagging peer (body: [`crate::ConfigOffer`]).
    ConfigOffer,
    /// A lease message of an ephemeral node and its issuer (body: [`crate::LeaseMessage`]).
    Lease,
    /// A kind this version does not know; the record is skipped.
    Unknown(u8),
}

impl RecordKind {
    /// Returns the wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::LinkStateUpdate => 1,
            Self::ConfigOffer => 2,
            Self::Lease => 3,
            Self::Unknown(v) => v,
        }
    }

    /// Decodes a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::LinkStateUpdate,
            2 => Self::ConfigOffer,
            3 => Self::Lease,
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

/// The largest record length (kind + body) a receiver accepts, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Link-state updates (kind 1).
    pub update: usize,
    /// Configuration offers (kind 2).
    pub config: usize,
    /// Lease messages (kind 3).
    pub lease: usize,
    /// Kinds this version does not know (skipped, so never large).
    pub other: usize,
}

impl RecordLimits {
    /// The same limit for every kind.
    pub fn uniform(max_record_len: usize) -> Self {
        Self {
            update: max_record_len,
            config: max_record_len,
            lease: max_record_len,
            other: max_record_len,
        }
    }

    /// Returns the limit of `kind`.
    pub fn of(&self, kind: RecordKind) -> usize {
        match kind {
            RecordKind::LinkStateUpdate => self.update,
            RecordKind::ConfigOffer => self.config,
            RecordKind::Lease => self.lease,
            RecordKind::Unknown(_) => self.other,
        }
    }

    /// Returns the largest limit of any kind.
    pub fn max(&self) -> usize {
        self.update.max(self.config).max(self.lease).max(self.other)
    }
}

impl Default for RecordLimits {
    /// Updates and unknown kinds up to 1 MiB, configuration offers up to 64 MiB, lease
    /// messages up to 4 KiB.
    fn default() -> Self {
        Self {
            update: 1024 * 1024,
            config: 64 * 1024 * 1024,
            lease: 1 + crate::lease::MAX_LEASE_MESSAGE_LEN,
            other: 1024 * 1024,
        }
    }
}

/// Reassembles records from stream bytes that arrive in arbitrary pieces.
///
/// Rejects a record whose declared length is zero or exceeds the limit of its kind before
/// buffering its body (the length is checked against the largest limit as soon as its 4 bytes
/// are in, and against its kind's limit as soon as the kind byte is), so a peer cannot make the
/// node allocate without bound, nor buffer a configuration-sized update.
#[derive(Debug)]
pub struct RecordDecoder {
    /// Largest accepted record length (kind + body), by kind.
    limits: RecordLimits,
    /// Received bytes; those before `start` were already returned as records.
    buf: Vec<u8>,
    /// Read offset into `buf`. Consumed bytes are dropped in [`RecordDecoder::push`] once they
    /// make up at least half of `buf`, so copying stays linear in the bytes received.
    start: usize,
}

impl RecordDecoder {
    /// Creates a decoder that accepts records of any kind up to `max_record_len` bytes
    /// (kind + body).
    pub fn new(max_record_len: usize) -> Self {
        Self::with_limits(RecordLimits::uniform(max_record_len))
    }

    /// Creates a decoder with a limit per record kind.
    pub fn with_limits(limits: RecordLimits) -> Self {
        Self {
            limits,
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
            // Keep only the bad header (with its kind byte if that made it bad), never the
            // body it announces.
            let header = if self.length_alone_is_bad() {
                RECORD_HEADER_LEN
            } else {
                RECORD_HEADER_LEN + 1
            };
            self.buf.truncate(self.start + header);
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

    /// Returns the declared length of the next record, once its 4 bytes are buffered.
    fn declared_len(&self) -> Option<usize> {
        let header: [u8; RECORD_HEADER_LEN] = self
            .buf
            .get(self.start..self.start.checked_add(RECORD_HEADER_LEN)?)?
            .try_into()
            .ok()?;
        Some(usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX))
    }

    /// Returns true if the next record's length is invalid whatever its kind.
    fn length_alone_is_bad(&self) -> bool {
        self.declared_len()
            .is_some_and(|len| len == 0 || len > self.limits.max())
    }

    /// Reads the length of the next record: `None` if its header (length and kind) is not
    /// complete yet, [`WireError::BadLength`] if the length is zero or above the limit of every
    /// kind (known from the length alone) or of its kind.
    fn pending_len(&self) -> Option<Result<usize, WireError>> {
        let len = self.declared_len()?;
        if self.length_alone_is_bad() {
            return Some(Err(WireError::BadLength));
        }
        let kind = *self.buf.get(self.start + RECORD_HEADER_LEN)?;
        if len > self.limits.of(RecordKind::from_u8(kind)) {
            Some(Err(WireError::BadLength))
        } else {
            Some(Ok(len))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(d: &mut RecordDecoder) -> Result<Vec<Record>, WireError> {
        let mut out = Vec::new();
        while let Some(r) = d.next_record()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn record_layout() {
        let rec = Record {
            kind: RecordKind::LinkStateUpdate,
            body: vec![0xaa, 0xbb, 0xcc],
        };
        assert_eq!(rec.encode(), [0, 0, 0, 4, 1, 0xaa, 0xbb, 0xcc]);
        let empty = Record {
            kind: RecordKind::ConfigOffer,
            body: Vec::new(),
        };
        assert_eq!(empty.encode(), [0, 0, 0, 1, 2]);
    }

    #[test]
    fn kind_values() {
        for v in 0..=u8::MAX {
            assert_eq!(RecordKind::from_u8(v).to_u8(), v);
        }
        assert_eq!(RecordKind::from_u8(9), RecordKind::Unknown(9));
    }

    #[test]
    fn decodes_byte_by_byte_and_unknown_kinds() {
        let mut stream = Vec::new();
        Record {
            kind: RecordKind::Unknown(0x7f),
            body: b"hi".to_vec(),
        }
        .encode_into(&mut stream);
        Record {
            kind: RecordKind::LinkStateUpdate,
            body: Vec::new(),
        }
        .encode_into(&mut stream);
        let mut d = RecordDecoder::new(100);
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d).unwrap());
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, RecordKind::Unknown(0x7f));
        assert_eq!(got[0].body, b"hi");
        assert_eq!(got[1].kind, RecordKind::LinkStateUpdate);
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn partial_record_waits_for_more() {
        let mut d = RecordDecoder::new(100);
        d.push(&[0, 0]);
        assert_eq!(d.next_record(), Ok(None));
        d.push(&[0, 3, 1, 0xaa]);
        assert_eq!(d.next_record(), Ok(None));
        assert_eq!(d.buffered_len(), 6);
        d.push(&[0xbb]);
        assert_eq!(
            d.next_record(),
            Ok(Some(Record {
                kind: RecordKind::LinkStateUpdate,
                body: vec![0xaa, 0xbb]
            }))
        );
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn zero_length_is_bad() {
        let mut d = RecordDecoder::new(100);
        d.push(&[0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        // The error is sticky.
        assert_eq!(d.next_record(), Err(WireError::BadLength));
    }

    #[test]
    fn over_long_record_is_rejected_from_its_header_alone() {
        let mut d = RecordDecoder::new(10);
        // Exactly the limit is fine.
        d.push(&[0, 0, 0, 10, 1]);
        d.push(&[0; 9]);
        assert_eq!(d.next_record().unwrap().unwrap().body.len(), 9);
        // One more is rejected as soon as the header is in, before any body byte.
        d.push(&[0, 0, 0, 11]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        let mut d = RecordDecoder::new(10);
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        // The announced body is never buffered.
        d.push(&[0; 1000]);
        assert_eq!(d.buffered_len(), 4);
        let mut d = RecordDecoder::new(10);
        d.push(&[0, 1, 0, 0, 5, 5, 5, 5, 5]);
        assert_eq!(d.buffered_len(), 4);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
    }

    #[test]
    fn each_kind_has_its_own_limit_checked_from_the_kind_byte() {
        let limits = RecordLimits {
            update: 10,
            config: 1000,
            lease: 8,
            other: 5,
        };
        // A config of 1000 bytes is fine...
        let mut d = RecordDecoder::with_limits(limits);
        d.push(&[0, 0, 0x03, 0xe8, 2]);
        d.push(&[7; 999]);
        assert_eq!(d.next_record().unwrap().unwrap().body.len(), 999);
        // ...an update of that size is refused at its kind byte, before any body byte.
        d.push(&[0, 0, 0x03, 0xe8]);
        assert_eq!(d.next_record(), Ok(None), "the kind is not known yet");
        d.push(&[1, 7, 7, 7]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        assert_eq!(d.buffered_len(), 5);
        // A lease message of 9 bytes is over its limit of 8; one of 8 is taken.
        let mut d = RecordDecoder::with_limits(limits);
        d.push(&[0, 0, 0, 9, 3]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        let mut d = RecordDecoder::with_limits(limits);
        d.push(&[0, 0, 0, 8, 3, 1, 2, 3, 4, 5, 6, 7]);
        let lease = d.next_record().unwrap().unwrap();
        assert_eq!(lease.kind, RecordKind::Lease);
        assert_eq!(lease.body.len(), 7);
        // Unknown kinds get the smallest limit; anything above every limit is refused from
        // the length alone.
        let mut d = RecordDecoder::with_limits(limits);
        d.push(&[0, 0, 0, 6, 0x7f]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        let mut d = RecordDecoder::with_limits(limits);
        d.push(&[0, 0, 0x03, 0xe9]);
        assert_eq!(d.next_record(), Err(WireError::BadLength));
        assert_eq!(
            RecordLimits::default().of(RecordKind::LinkStateUpdate),
            1 << 20
        );
        assert_eq!(
            RecordLimits::default().of(RecordKind::ConfigOffer),
            64 << 20
        );
    }

    #[test]
    fn consumed_bytes_are_compacted() {
        let mut d = RecordDecoder::new(100);
        let rec = Record {
            kind: RecordKind::LinkStateUpdate,
            body: vec![7; 10],
        };
        let framed = rec.encode();
        for _ in 0..10_000 {
            d.push(&framed);
            d.push(&framed[..3]);
            assert_eq!(d.next_record(), Ok(Some(rec.clone())));
            d.push(&framed[3..]);
            assert_eq!(d.next_record(), Ok(Some(rec.clone())));
            assert_eq!(d.next_record(), Ok(None));
        }
        assert_eq!(d.buffered_len(), 0);
        // The buffer never holds more than a few records' worth of bytes.
        assert!(d.buf.capacity() < 16 * framed.len(), "{}", d.buf.capacity());
    }

    fn record() -> impl Strategy<Value = Record> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, body)| Record {
            kind: RecordKind::from_u8(k),
            body,
        })
    }

    proptest! {
        #[test]
        fn records_round_trip_through_arbitrary_splits(
            records in proptest::collection::vec(record(), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for r in &records {
                r.encode_into(&mut stream);
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = RecordDecoder::new(64);
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.push(&stream[w[0]..w[1]]);
                got.extend(drain(&mut d).unwrap());
            }
            prop_assert_eq!(got, records);
            prop_assert_eq!(d.buffered_len(), 0);
        }

        #[test]
        fn decoder_never_panics(
            max in 0usize..100,
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10),
        ) {
            let mut d = RecordDecoder::new(max);
            for p in &pieces {
                d.push(p);
                match drain(&mut d) {
                    Ok(records) => {
                        for r in records {
                            prop_assert!(r.body.len() < max);
                        }
                    }
                    Err(e) => prop_assert_eq!(e, WireError::BadLength),
                }
            }
        }
    }
}
