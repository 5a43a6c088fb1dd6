//! DTLS 1.2 record header parsing (RFC 6347 §4.1), no I/O and no allocation.

use std::ops::Range;

/// Length of a DTLS record header: type, version, epoch, 48-bit sequence number, length.
pub const RECORD_HEADER_LEN: usize = 13;

/// Content type change_cipher_spec.
pub(crate) const CT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Content type alert.
pub(crate) const CT_ALERT: u8 = 21;
/// Content type handshake.
pub(crate) const CT_HANDSHAKE: u8 = 22;
/// Content type application_data.
pub(crate) const CT_APPLICATION_DATA: u8 = 23;

/// Record version of DTLS 1.2 on the wire.
pub(crate) const DTLS1_2_VERSION: [u8; 2] = [0xFE, 0xFD];
/// Record version of DTLS 1.0, used by some ClientHello records.
pub(crate) const DTLS1_0_VERSION: [u8; 2] = [0xFE, 0xFF];

/// Largest record body accepted (2^14 plaintext plus 2048 expansion, RFC 6347 / RFC 5246).
pub(crate) const MAX_RECORD_BODY: usize = 16384 + 2048;

/// Largest 48-bit sequence number.
pub(crate) const MAX_SEQ: u64 = (1 << 48) - 1;

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub ctype: u8,
    pub epoch: u16,
    pub seq: u64,
    /// Length of the record body (after the 13-byte header).
    pub len: usize,
}

impl RecordHeader {
    /// Returns epoch and sequence number as the 8-byte big-endian value used in nonces and AAD.
    pub fn epoch_seq(&self) -> u64 {
        (u64::from(self.epoch) << 48) | (self.seq & MAX_SEQ)
    }
}

/// Why a datagram could not be walked to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Fewer than 13 bytes remain, or the length field runs past the datagram.
    Truncated,
    /// Unknown version or content type, or an oversized length.
    Invalid,
}

/// Parses the header of the record starting at `pos` and returns it with the record's full range.
///
/// Returns `Ok(None)` at the end of the datagram.
pub(crate) fn next_record(
    datagram: &[u8],
    pos: usize,
) -> Result<Option<(RecordHeader, Range<usize>)>, Malformed> {
    let rest = match datagram.get(pos..) {
        Some(rest) if !rest.is_empty() => rest,
        _ => return Ok(None),
    };
    let Some(h) = rest.get(..RECORD_HEADER_LEN) else {
        return Err(Malformed::Truncated);
    };
    let ctype = h[0];
    if !(CT_CHANGE_CIPHER_SPEC..=CT_APPLICATION_DATA).contains(&ctype) {
        return Err(Malformed::Invalid);
    }
    let version = [h[1], h[2]];
    if version != DTLS1_2_VERSION && version != DTLS1_0_VERSION {
        return Err(Malformed::Invalid);
    }
    let epoch = u16::from_be_bytes([h[3], h[4]]);
    let seq = u64::from_be_bytes([0, 0, h[5], h[6], h[7], h[8], h[9], h[10]]);
    let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
    if len > MAX_RECORD_BODY {
        return Err(Malformed::Invalid);
    }
    if rest.len() < RECORD_HEADER_LEN + len {
        return Err(Malformed::Truncated);
    }
    let hdr = RecordHeader {
        ctype,
        epoch,
        seq,
        len,
    };
    Ok(Some((hdr, pos..pos + RECORD_HEADER_LEN + len)))
}

/// Writes a record header into `out[..13]`.
pub(crate) fn write_header(out: &mut [u8], ctype: u8, epoch_seq: u64, body_len: usize) {
    out[0] = ctype;
    out[1..3].copy_from_slice(&DTLS1_2_VERSION);
    out[3..11].copy_from_slice(&epoch_seq.to_be_bytes());
    // body_len is bounded by the callers (payload <= 2^14 plus overhead).
    out[11..13].copy_from_slice(&(body_len as u16).to_be_bytes());
}

/// Builds the 13-byte TLS 1.2 AEAD additional data: epoch‖seq, type, version, plaintext length.
pub(crate) fn aad(epoch_seq: u64, ctype: u8, plaintext_len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&epoch_seq.to_be_bytes());
    a[8] = ctype;
    a[9..11].copy_from_slice(&DTLS1_2_VERSION);
    a[11..13].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn walks_two_records_and_stops() {
        let mut d = vec![22, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 7, 0, 2, 0xAA, 0xBB];
        d.extend_from_slice(&[23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 8, 0, 0]);
        let (h, r) = next_record(&d, 0).unwrap().unwrap();
        assert_eq!(
            (h.ctype, h.epoch, h.seq, h.len, r.clone()),
            (22, 1, 7, 2, 0..15)
        );
        let (h2, r2) = next_record(&d, r.end).unwrap().unwrap();
        assert_eq!((h2.ctype, h2.seq, r2), (23, 8, 15..28));
        assert_eq!(next_record(&d, 28), Ok(None));
        assert_eq!(next_record(&d[..20], 15), Err(Malformed::Truncated));
        assert_eq!(next_record(&d[..14], 0), Err(Malformed::Truncated));
        assert_eq!(h.epoch_seq(), (1 << 48) | 7);
    }

    #[test]
    fn rejects_bad_type_and_version() {
        let d = [99, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 7, 0, 0];
        assert_eq!(next_record(&d, 0), Err(Malformed::Invalid));
        let d = [23, 0x03, 0x03, 0, 1, 0, 0, 0, 0, 0, 7, 0, 0];
        assert_eq!(next_record(&d, 0), Err(Malformed::Invalid));
    }
}
