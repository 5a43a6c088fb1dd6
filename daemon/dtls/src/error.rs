//! Typed errors of the DTLS association.

use std::fmt;

/// Errors returned by [`crate::DtlsAssociation`] and the configuration builders.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// Reports an invalid or inconsistent configuration.
    #[error("invalid DTLS configuration: {0}")]
    Config(String),
    /// Wraps an error reported by OpenSSL while building a context or session.
    #[error("OpenSSL error: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// Reports that the operation needs an established association.
    #[error("the association is not established yet")]
    NotEstablished,
    /// Reports that the association is closed.
    #[error("the association is closed: {0}")]
    Closed(CloseReason),
    /// Reports that the handshake failed; the association is now closed.
    #[error("DTLS handshake failed: {0}")]
    HandshakeFailed(String),
    /// Reports that the caller's buffer cannot hold the record.
    #[error("buffer of {have} bytes is too small, {need} bytes are needed")]
    BufferTooSmall {
        /// Bytes the record needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// Reports a payload larger than one DTLS record may carry.
    #[error("payload of {0} bytes exceeds the DTLS record limit of 16384 bytes")]
    PayloadTooLarge(usize),
    /// Reports that the 48-bit record sequence number is used up; a new handshake is needed.
    #[error("record sequence numbers exhausted; rekey with a new handshake")]
    SequenceExhausted,
    /// Reports a failure of the record protection (should not happen with valid state).
    #[error("record protection failed: {0}")]
    Crypto(&'static str),
    /// Reports that OpenSSL produced output that does not fit the record layout we expect.
    #[error("unexpected record layer output: {0}")]
    Internal(&'static str),
}

/// Why an association is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Reports that the local side called [`crate::DtlsAssociation::close`].
    LocalClose,
    /// Reports that the peer sent close_notify.
    PeerClosed,
    /// Reports that the peer sent a fatal alert with this description code.
    PeerAlert(u8),
    /// Reports that the handshake failed (verification, wrong PSK detected by OpenSSL,
    /// retransmission limit, protocol error); the text comes from OpenSSL.
    HandshakeFailed(String),
    /// Reports a fatal protocol error after the handshake.
    ProtocolError(String),
    /// Reports that the sequence number space of the epoch is exhausted.
    SequenceExhausted,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocalClose => f.write_str("closed locally"),
            Self::PeerClosed => f.write_str("peer sent close_notify"),
            Self::PeerAlert(code) => write!(f, "peer sent fatal alert {code}"),
            Self::HandshakeFailed(why) => write!(f, "handshake failed: {why}"),
            Self::ProtocolError(why) => write!(f, "protocol error: {why}"),
            Self::SequenceExhausted => f.write_str("sequence numbers exhausted"),
        }
    }
}
