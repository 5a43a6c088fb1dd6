//! Sans-IO DTLS 1.2 associations for Connectopus links.
//!
//! OpenSSL (the system `libssl`, through the `openssl` crate and a memory "BIO" made of
//! datagram queues) runs the handshake. Once it completes, the association takes over the
//! record layer of the new epoch: it seals and opens application records itself, **in place**
//! in the caller's buffer, with aws-lc-rs. That lets the io_uring dataplane encrypt packets
//! in its pooled buffers without an allocation or a copy per packet. The wire format stays
//! plain DTLS 1.2, so a peer that uses OpenSSL's `SSL_read`/`SSL_write` interoperates.
//!
//! # What it does not do
//!
//! - No I/O: the caller moves datagrams ([`DtlsAssociation::handle_datagram`],
//!   [`DtlsAssociation::poll_transmit`]) and passes the time in (`now`, a monotonic
//!   [`std::time::Duration`] since an origin of the caller's choice).
//! - No DTLS 1.3 (no OpenSSL release has it), no renegotiation (`SSL_OP_NO_RENEGOTIATION`;
//!   keys are renewed by a key update, see below), no session resumption, no demultiplexing of
//!   several peers: a listener keeps one association per peer address.
//! - No handshake timeout: the caller compares [`DtlsAssociation::handshake_started_at`] with
//!   its clock and drops associations that do not reach [`State::Established`] in time.
//!   (A wrong PSK is only noticed by OpenSSL on the side whose retransmissions run out; DTLS
//!   drops records that fail authentication silently.)
//! - Key update, not renegotiation: on the fast path each direction moves to a new epoch with
//!   keys from the session's exporter at [`RekeyPolicy`] (2^28 records or an hour); the caller
//!   only keeps calling [`DtlsAssociation::handle_timeout`] at
//!   [`DtlsAssociation::poll_timeout`]. Both ends must be this crate with the fast path (see
//!   docs/dtls.md, "Rekeying"); against plain OpenSSL use [`RekeyPolicy::never`].
//!
//! # Suites and modes
//!
//! | mode | suite (OpenSSL name) | id | record overhead | payload offset |
//! |---|---|---|---|---|
//! | PSK (default) | `ECDHE-PSK-CHACHA20-POLY1305` | 0xCCAC | 29 B | 13 |
//! | PSK, no forward secrecy (interop/benchmarks) | `PSK-AES128-GCM-SHA256` | 0x00A8 | 37 B | 21 |
//! | certificates | `ECDHE-ECDSA-AES128-GCM-SHA256`, `ECDHE-RSA-AES128-GCM-SHA256` | 0xC02B, 0xC02F | 37 B | 21 |
//!
//! The PSK mode prefers `ECDHE-PSK-CHACHA20-POLY1305` because it is forward secret: the
//! traffic keys come from an ephemeral ECDHE exchange authenticated by the PSK, so someone who
//! recorded the traffic and later learns the PSK still cannot decrypt it. With plain
//! `PSK-AES128-GCM-SHA256` the PSK alone decrypts every recorded session. OpenSSL has no
//! ECDHE-PSK AES-GCM suite for (D)TLS 1.2, hence ChaCha20-Poly1305 (RFC 7905: 12-byte IV from
//! the key block XOR epoch‖seq, no explicit nonce, 16-byte tag). AES-128-GCM records
//! (RFC 5288) carry an 8-byte explicit nonce (the fast path sends epoch‖seq) after a 4-byte salt.
//!
//! Certificate mode verifies the peer against a CA bundle plus an expected DNS name or IP
//! address (`X509VerifyParam::set_host`/`set_ip`), or against a pinned certificate or
//! SubjectPublicKeyInfo; `Insecure` accepts anything and must be configured explicitly.
//! A server can require a client certificate (mutual authentication).
//!
//! # The record takeover
//!
//! 1. **Keys from public API**: `SSL_SESSION_get_master_key` and the two randoms, then
//!    key_block = PRF-SHA256(master, "key expansion", server_random ‖ client_random). Before
//!    switching, both Finished records (already on the wire, epoch 1) must open with the
//!    derived keys (a self-test); if not, the association stays on OpenSSL's record layer.
//! 2. **Split inbound records**: application data and alerts of the current epoch go to the
//!    fast path (replay window checked before decryption, updated after the tag verified);
//!    everything else (handshake retransmissions, CCS, other epochs) goes to the `SSL` object,
//!    which lives as long as the association.
//! 3. **Re-seal what OpenSSL writes** in the taken-over epoch (a retransmitted Finished, alerts):
//!    open it with our write key and seal it again under the fast path's next sequence number,
//!    so that one counter owns the epoch and nonces never repeat.
//!
//! If the fast path is switched off ([`DtlsConfig::fast_path`]) or the self-test fails, the
//! same API runs over `SSL_write`/`SSL_read` (one copy per record, about 2.5–3.5× the CPU).
//!
//! # Ownership and threads
//!
//! An association is `Send` but not shared: one thread (the control plane) owns it and calls
//! every method. Other threads seal records for it through a [`Sealer`]
//! ([`DtlsAssociation::sealer`]): the keys of each epoch are immutable and shared, and one
//! atomic counter per association hands out sequence numbers a batch at a time, so records
//! sealed on several cores never repeat an (epoch, sequence) pair (docs/dtls.md, "Threads and
//! sequence numbers"). Nothing reads a clock; the key lock is taken only when an epoch
//! changes.
//!
//! # Listener and cookies
//!
//! A listener with one UDP socket for many peers calls [`DtlsAssociation::accept`] for a
//! datagram from an unknown address. Without a valid cookie it returns a HelloVerifyRequest
//! and keeps nothing: the cookie is an HMAC-SHA256 over the peer address and port and a 30 s
//! time bucket, under a random secret of the [`ServerConfig`]. Only a ClientHello that
//! echoes a valid cookie (proof that the sender receives at that address) creates an
//! association. What remains per spoofed ClientHello is nothing after `accept` returns.
//! A peer that really owns its address can still create one association (an OpenSSL `SSL`
//! of a few KiB) per source port; the listener should cap and expire half-open ones.

#![warn(missing_docs)]

mod association;
mod bio;
mod config;
mod error;
mod fastpath;
mod ffi;
mod opener;
mod prf;
mod record;
mod rekey;
mod replay;
mod sealer;

pub use association::{Accept, DtlsAssociation, MAX_PAYLOAD, Received, Role, State, Stats};
pub use config::{
    CertificateCredentials, CertifiedKey, ClientConfig, Credentials, DtlsConfig, ExpectedName,
    PSK_IDENTITY_HINT, PeerVerification, PskCredentials, PskSuite, ServerConfig,
};
pub use error::{CloseReason, DtlsError};
pub use fastpath::RecordSuite;
pub use opener::{Opened, Opener, RxShared};
pub use record::RECORD_HEADER_LEN;
pub use rekey::{
    DEFAULT_REKEY_INTERVAL, DEFAULT_REKEY_RECORDS, REKEY_LABEL, RX_GRACE, RekeyPolicy,
};
pub use sealer::{EpochKey, Reservation, Sealer, TxShared};
