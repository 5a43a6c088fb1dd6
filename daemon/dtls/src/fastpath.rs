//! The record-takeover fast path: key derivation and in-place AEAD record protection.

use std::ops::Range;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::prf::prf_sha256;
use crate::record::{self, RECORD_HEADER_LEN};

/// Length of the AEAD tag of both supported suites.
pub(crate) const TAG_LEN: usize = 16;
/// Length of the explicit nonce carried by AES-GCM records (RFC 5288).
pub(crate) const GCM_EXPLICIT_NONCE_LEN: usize = 8;

/// Record protection formats the fast path implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSuite {
    /// AES-128-GCM (RFC 5288): 4-byte salt from the key block, 8-byte explicit nonce, 16-byte tag.
    Aes128Gcm,
    /// ChaCha20-Poly1305 (RFC 7905): 12-byte IV XOR epoch‖seq, no explicit nonce, 16-byte tag.
    ChaCha20Poly1305,
}

impl RecordSuite {
    /// Returns the record format of an OpenSSL cipher by its two-byte IANA id, if it has one we implement.
    pub fn from_cipher_id(id: [u8; 2]) -> Option<Self> {
        match u16::from_be_bytes(id) {
            // PSK-, DHE-PSK-, ECDHE-ECDSA-, ECDHE-RSA-AES128-GCM-SHA256
            0x00A8 | 0x00AA | 0xC02B | 0xC02F => Some(Self::Aes128Gcm),
            // ECDHE-RSA-, ECDHE-ECDSA-, ECDHE-PSK-, PSK-CHACHA20-POLY1305 (all SHA-256 PRF)
            0xCCA8 | 0xCCA9 | 0xCCAC | 0xCCAB => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// Returns the offset of the payload within a record: header plus explicit nonce.
    pub const fn payload_offset(self) -> usize {
        match self {
            Self::Aes128Gcm => RECORD_HEADER_LEN + GCM_EXPLICIT_NONCE_LEN,
            Self::ChaCha20Poly1305 => RECORD_HEADER_LEN,
        }
    }

    /// Returns the bytes a record adds to its payload: header, explicit nonce and tag.
    pub const fn overhead(self) -> usize {
        self.payload_offset() + TAG_LEN
    }

    const fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::ChaCha20Poly1305 => 32,
        }
    }

    /// Bytes of key material for both directions: two keys and two IVs.
    pub(crate) const fn key_block_len(self) -> usize {
        2 * self.key_len() + 2 * self.iv_len()
    }

    const fn iv_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 4,
            Self::ChaCha20Poly1305 => 12,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's record protection state: key and implicit IV (salt for GCM).
pub(crate) struct DirectionKey {
    suite: RecordSuite,
    key: LessSafeKey,
    iv: [u8; 12],
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

/// The client and server write keys derived from one handshake.
#[derive(Debug)]
pub(crate) struct KeyPair {
    pub client_write: DirectionKey,
    pub server_write: DirectionKey,
}

/// Derives both directions' keys: key_block = PRF(master, "key expansion", server_random ‖ client_random).
pub(crate) fn derive_keys(
    suite: RecordSuite,
    master: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> Result<KeyPair, crate::DtlsError> {
    let mut seed = [0u8; 64];
    seed[..32].copy_from_slice(server_random);
    seed[32..].copy_from_slice(client_random);
    // Layout (no MAC keys for AEAD suites): client key, server key, client IV, server IV.
    let mut kb = [0u8; 2 * 32 + 2 * 12];
    let kb = &mut kb[..suite.key_block_len()];
    prf_sha256(master, b"key expansion", &seed, kb);
    let pair = KeyPair::from_block(suite, kb);
    kb.zeroize();
    pair
}

impl KeyPair {
    /// Splits a key block laid out as client key, server key, client IV, server IV.
    pub(crate) fn from_block(suite: RecordSuite, kb: &[u8]) -> Result<Self, crate::DtlsError> {
        let (kl, il) = (suite.key_len(), suite.iv_len());
        if kb.len() != suite.key_block_len() {
            return Err(crate::DtlsError::Crypto("key block length"));
        }
        let make = |key: &[u8], iv: &[u8]| -> Result<DirectionKey, crate::DtlsError> {
            let unbound = UnboundKey::new(suite.algorithm(), key)
                .map_err(|_| crate::DtlsError::Crypto("key setup"))?;
            let mut full_iv = [0u8; 12];
            full_iv[..iv.len()].copy_from_slice(iv);
            Ok(DirectionKey {
                suite,
                key: LessSafeKey::new(unbound),
                iv: full_iv,
            })
        };
        Ok(KeyPair {
            client_write: make(&kb[..kl], &kb[2 * kl..2 * kl + il])?,
            server_write: make(&kb[kl..2 * kl], &kb[2 * kl + il..2 * kl + 2 * il])?,
        })
    }
}

impl DirectionKey {
    /// The record format this key seals.
    pub(crate) fn suite(&self) -> RecordSuite {
        self.suite
    }

    fn nonce(&self, epoch_seq: u64, explicit: Option<&[u8]>) -> [u8; 12] {
        let mut n = [0u8; 12];
        match self.suite {
            RecordSuite::Aes128Gcm => {
                n[..4].copy_from_slice(&self.iv[..4]);
                match explicit {
                    Some(e) => n[4..].copy_from_slice(e),
                    None => n[4..].copy_from_slice(&epoch_seq.to_be_bytes()),
                }
            }
            RecordSuite::ChaCha20Poly1305 => {
                n = self.iv;
                for (d, s) in n[4..].iter_mut().zip(epoch_seq.to_be_bytes()) {
                    *d ^= s;
                }
            }
        }
        n
    }

    /// Seals the payload at `rec[payload_offset..payload_offset + len]` in place and writes the
    /// header, explicit nonce and tag around it; returns the record length.
    ///
    /// The caller has checked that `rec` is large enough and `len <= 2^14`.
    pub(crate) fn seal(
        &self,
        epoch_seq: u64,
        ctype: u8,
        rec: &mut [u8],
        len: usize,
    ) -> Result<usize, crate::DtlsError> {
        let off = self.suite.payload_offset();
        let total = off + len + TAG_LEN;
        record::write_header(rec, ctype, epoch_seq, total - RECORD_HEADER_LEN);
        if self.suite == RecordSuite::Aes128Gcm {
            // Explicit nonce = epoch‖seq: unique per key because one counter owns the epoch.
            rec[RECORD_HEADER_LEN..off].copy_from_slice(&epoch_seq.to_be_bytes());
        }
        let nonce = Nonce::assume_unique_for_key(self.nonce(epoch_seq, None));
        let aad = Aad::from(record::aad(epoch_seq, ctype, len));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, aad, &mut rec[off..off + len])
            .map_err(|_| crate::DtlsError::Crypto("seal"))?;
        rec[off + len..total].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens the complete record `rec` (header included) in place and returns the plaintext range
    /// within `rec`, or `None` if it is too short or does not authenticate.
    pub(crate) fn open(&self, epoch_seq: u64, ctype: u8, rec: &mut [u8]) -> Option<Range<usize>> {
        let off = self.suite.payload_offset();
        let pt_len = rec.len().checked_sub(off + TAG_LEN)?;
        let nonce = match self.suite {
            RecordSuite::Aes128Gcm => self.nonce(epoch_seq, rec.get(RECORD_HEADER_LEN..off)),
            RecordSuite::ChaCha20Poly1305 => self.nonce(epoch_seq, None),
        };
        let aad = Aad::from(record::aad(epoch_seq, ctype, pt_len));
        let pt = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad, &mut rec[off..])
            .ok()?;
        debug_assert_eq!(pt.len(), pt_len);
        Some(off..off + pt_len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair(suite: RecordSuite) -> KeyPair {
        derive_keys(suite, &[7u8; 48], &[1u8; 32], &[2u8; 32]).unwrap()
    }

    #[test]
    fn round_trip_both_suites() {
        for suite in [RecordSuite::Aes128Gcm, RecordSuite::ChaCha20Poly1305] {
            let keys = pair(suite);
            let mut buf = vec![0u8; 1400 + suite.overhead()];
            let off = suite.payload_offset();
            for (i, b) in buf[off..off + 1400].iter_mut().enumerate() {
                *b = i as u8;
            }
            let es = (1u64 << 48) | 5;
            let n = keys.client_write.seal(es, 23, &mut buf, 1400).unwrap();
            assert_eq!(n, 1400 + suite.overhead());
            assert_eq!(buf[11..13], ((n - 13) as u16).to_be_bytes());
            // The wrong direction's key must not open it.
            let mut copy = buf.clone();
            assert!(keys.server_write.open(es, 23, &mut copy).is_none());
            // A different sequence number (AAD/nonce) must not open it.
            let mut copy = buf.clone();
            assert!(keys.client_write.open(es + 1, 23, &mut copy).is_none());
            let r = keys.client_write.open(es, 23, &mut buf).unwrap();
            assert_eq!(r, off..off + 1400);
            assert!(buf[r].iter().enumerate().all(|(i, b)| *b == i as u8));
        }
    }
}
