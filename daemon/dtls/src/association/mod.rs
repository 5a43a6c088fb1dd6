//! The DTLS association: OpenSSL handshake over memory queues, then the record takeover.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{ErrorCode, Ssl, SslStream, SslVersion};
use openssl::x509::X509;
use zeroize::Zeroizing;

use crate::bio::MemoryBio;
use crate::config::{ClientConfig, ExpectedName, Prepared, ServerConfig, cookie_bucket};
use crate::error::{CloseReason, DtlsError};
use crate::fastpath::{RecordSuite, derive_keys};
use crate::ffi;
use crate::opener::{Opener, RxCounts, RxShared};
use crate::record::{self, CT_ALERT, CT_HANDSHAKE, next_record};
use crate::rekey::{self, TxKeys};
use crate::replay::ReplayWindow;
use crate::sealer::{EpochKey, Sealer};

mod inbound;
mod received;
mod takeover;

pub use received::Received;

/// Largest application payload of one record (2^14 bytes, RFC 6347).
pub const MAX_PAYLOAD: usize = 16384;

/// Peer Finished candidates kept for the self-test (bounds what a spoofer can make us store).
const MAX_FINISHED_CANDIDATES: usize = 4;

/// Which side of the handshake an association is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends the ClientHello.
    Client,
    /// Answers it.
    Server,
}

/// Life-cycle state of an association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The handshake is running; application records cannot be sealed yet.
    Handshaking,
    /// The handshake completed and the peer is authenticated.
    Established,
    /// The association is finished and will not send or accept application data.
    Closed(CloseReason),
}

/// Counters of what an association dropped or processed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Application records sealed by [`DtlsAssociation::seal_in_place`].
    pub records_sealed: u64,
    /// Application records opened and handed to the caller.
    pub records_opened: u64,
    /// Datagrams whose record framing was broken (the well-formed prefix was still used).
    pub malformed: u64,
    /// Records dropped by the replay window (duplicates or too old).
    pub replayed: u64,
    /// Records that failed authentication.
    pub auth_failed: u64,
    /// OpenSSL-written records re-sealed with the fast path's sequence numbers (rule 3).
    pub resealed: u64,
    /// Application records that arrived before our handshake completed (dropped, like loss).
    pub early_app_data_dropped: u64,
    /// Fallback-path plaintext that did not fit the caller's datagram buffer (dropped).
    pub fallback_dropped: u64,
    /// Whether the post-handshake self-test failed, leaving the association on the fallback path.
    pub self_test_failed: bool,
    /// Times our sending direction moved to a new epoch (key update, see `rekey`).
    pub tx_rekeys: u64,
    /// Times the peer's direction moved to a new epoch that we followed.
    pub rx_rekeys: u64,
    /// Key updates that could not happen (exporter failure, epochs used up).
    pub rekey_failed: u64,
    /// Protected records of an epoch without a key here (retired after the grace period,
    /// or too far ahead), dropped.
    pub unknown_epoch: u64,
}

/// Result of [`DtlsAssociation::accept`] on a datagram from an unknown peer.
#[derive(Debug)]
pub enum Accept {
    /// Sends this HelloVerifyRequest back to the peer; no state was kept.
    HelloVerifyRequest(Vec<u8>),
    /// The ClientHello carried a valid cookie: a new association, already answering it.
    Association(Box<DtlsAssociation>),

    /// The datagram is not a ClientHello (or is malformed); drop it.
    Ignored,
}

/// The record layer after takeover: our keys, sequence counters and replay windows, per epoch.
#[derive(Debug)]
struct FastPath {
    tx: TxKeys,
    /// The receiving direction, while this association owns it; `None` while a dataplane
    /// worker does ([`DtlsAssociation::take_opener`]).
    rx: Option<Opener>,
    /// What the association shares with the opener: the keys it derives ahead.
    rx_shared: Arc<RxShared>,
    /// The look-ahead keys cannot be derived (exporter failure, epochs used up).
    rx_stuck: bool,
    /// Body length of the shortest valid protected record of the suite.
    min_sealed_body: usize,
}

/// Records captured during the handshake for the takeover self-test.
#[derive(Debug, Default)]
struct Capture {
    /// The first epoch≥1 handshake record OpenSSL wrote (our Finished).
    own_finished: Option<Vec<u8>>,
    /// Highest sequence number OpenSSL wrote in the epoch of `own_finished`.
    own_max_seq: Option<u64>,
    /// Epoch≥1 handshake records received (the peer's Finished, maybe retransmitted).
    peer_finished: Vec<Vec<u8>>,
}

/// One DTLS 1.2 association with one peer: sans-IO, owned by one thread.
pub struct DtlsAssociation {
    role: Role,
    config: Arc<Prepared>,
    stream: SslStream<MemoryBio>,
    state: State,
    handshake_started_at: Duration,
    established_at: Option<Duration>,
    deadline: Option<Duration>,
    transmit: VecDeque<Vec<u8>>,
    suite: Option<RecordSuite>,
    fast: Option<FastPath>,
    capture: Capture,
    scratch: Vec<u8>,
    stats: Stats,
    /// The receiving direction's shared counters (kept after the fast path ends).
    rx_counts: Option<Arc<RxShared>>,
    /// The latest caller time seen (sealing takes no `now`; a key update started by the
    /// record count dates its epoch with it).
    now: Duration,
}

impl std::fmt::Debug for DtlsAssociation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsAssociation")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("suite", &self.suite)
            .field("fast_path", &self.fast.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn new_ssl(config: &Prepared) -> Result<Ssl, DtlsError> {
    let mut ssl = Ssl::new(&config.ctx)?;
    ssl.set_mtu(u32::from(config.mtu))?;
    ffi::set_timer_policy(&mut ssl, config.timer)?;
    Ok(ssl)
}

/// Binds a cookie to the peer's address: IPv6 (IPv4 mapped) plus port.
fn address_bytes(peer: SocketAddr) -> [u8; 18] {
    let ip = match peer {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    };
    let mut out = [0u8; 18];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&peer.port().to_be_bytes());
    out
}

fn server_ssl(config: &ServerConfig, peer: SocketAddr, now: Duration) -> Result<Ssl, DtlsError> {
    let mut ssl = new_ssl(&config.inner)?;
    ssl.set_accept_state();
    ssl.set_ex_data(
        ffi::cookie_index()?,
        ffi::CookieBinding {
            peer: address_bytes(peer),
            bucket: cookie_bucket(now),
        },
    );
    Ok(ssl)
}

/// Returns whether `datagram` starts with an epoch-0 handshake record holding a ClientHello.
fn looks_like_client_hello(datagram: &[u8]) -> bool {
    match next_record(datagram, 0) {
        Ok(Some((h, r))) => {
            h.ctype == CT_HANDSHAKE
                && h.epoch == 0
                && datagram.get(r.start + record::RECORD_HEADER_LEN) == Some(&1)
        }
        _ => false,
    }
}

/// Returns whether OpenSSL may see this record: a protected record shorter than nonce + tag
/// is dropped here, because OpenSSL 3.0 treats it as a fatal internal error (one spoofed
/// datagram would kill the association) instead of silently discarding it as DTLS requires.
fn safe_for_openssl(h: &record::RecordHeader, min_sealed_body: usize) -> bool {
    h.epoch == 0 || h.len >= min_sealed_body
}

/// Returns whether `pt` is a Finished handshake message (12-byte DTLS header + 12-byte verify_data).
fn is_finished(pt: &[u8]) -> bool {
    pt.len() == 24 && pt[0] == 20
}

impl DtlsAssociation {
    /// Creates a client association and queues its ClientHello (see [`Self::poll_transmit`]).
    pub fn client(config: &ClientConfig, now: Duration) -> Result<Self, DtlsError> {
        let mut ssl = new_ssl(&config.inner)?;
        ssl.set_connect_state();
        match &config.inner.expected_name {
            Some(ExpectedName::Dns(host)) => ssl.param_mut().set_host(host)?,
            Some(ExpectedName::Ip(ip)) => ssl.param_mut().set_ip(*ip)?,
            None => {}
        }
        let stream = SslStream::new(ssl, MemoryBio::default())?;
        let mut a = Self::from_stream(Role::Client, Arc::clone(&config.inner), stream, now);
        a.drive_handshake(now);
        if let State::Closed(reason) = &a.state {
            return Err(DtlsError::HandshakeFailed(reason.to_string()));
        }
        Ok(a)
    }

    /// Creates a server association for a new peer address; OpenSSL answers the first
    /// ClientHello with a HelloVerifyRequest from within this (stateful) association.
    ///
    /// A listener should prefer [`Self::accept`], which keeps no state until the cookie is valid.
    pub fn server(
        config: &ServerConfig,
        peer: SocketAddr,
        now: Duration,
    ) -> Result<Self, DtlsError> {
        let ssl = server_ssl(config, peer, now)?;
        let stream = SslStream::new(ssl, MemoryBio::default())?;
        Ok(Self::from_stream(
            Role::Server,
            Arc::clone(&config.inner),
            stream,
            now,
        ))
    }

    /// Handles the first datagram of an unknown peer statelessly (`DTLSv1_listen`).
    ///
    /// Without a valid cookie the answer is a HelloVerifyRequest and nothing is kept; with one,
    /// a new server association is returned that has already processed the ClientHello.
    pub fn accept(
        config: &ServerConfig,
        peer: SocketAddr,
        now: Duration,
        datagram: &[u8],
    ) -> Result<Accept, DtlsError> {
        Self::accept_admitting(config, peer, now, datagram, || true)
    }

    /// Like [`Self::accept`], but where the configuration offers the DHE-PSK suite (whose
    /// key exchange costs the server milliseconds of CPU), asks `allow_dhe` once a
    /// ClientHello's cookie has proved the peer's address, before anything is computed:
    /// `false` leaves this association only the X25519 suite (`ECDHE-PSK-CHACHA20-POLY1305`),
    /// so a peer that makes many handshakes gets cheap ones, never none.
    pub fn accept_admitting(
        config: &ServerConfig,
        peer: SocketAddr,
        now: Duration,
        datagram: &[u8],
        allow_dhe: impl FnOnce() -> bool,
    ) -> Result<Accept, DtlsError> {
        if !looks_like_client_hello(datagram) {
            return Ok(Accept::Ignored);
        }
        let ssl = server_ssl(config, peer, now)?;
        let mut bio = MemoryBio::default();
        bio.inbound.push_back(datagram.to_vec());
        let mut stream = SslStream::new(ssl, bio)?;
        match ffi::dtls_listen(stream.ssl()) {
            ffi::ListenResult::Accepted => {
                if config.inner.offers_dhe && !allow_dhe() {
                    ffi::set_ssl_cipher_list(stream.ssl(), crate::config::CIPHERS_ECDHE_PSK)?;
                }
                let mut a = Self::from_stream(Role::Server, Arc::clone(&config.inner), stream, now);
                a.drive_handshake(now);
                Ok(Accept::Association(Box::new(a)))
            }
            ffi::ListenResult::NotYet => {
                drop(ErrorStack::get());
                Ok(match stream.get_mut().outbound.pop_front() {
                    Some(hvr) => Accept::HelloVerifyRequest(hvr),
                    None => Accept::Ignored,
                })
            }
            ffi::ListenResult::Error => {
                drop(ErrorStack::get());
                Ok(Accept::Ignored)
            }
        }
    }

    fn from_stream(
        role: Role,
        config: Arc<Prepared>,
        stream: SslStream<MemoryBio>,
        now: Duration,
    ) -> Self {
        Self {
            role,
            config,
            stream,
            state: State::Handshaking,
            handshake_started_at: now,
            established_at: None,
            deadline: None,
            transmit: VecDeque::new(),
            suite: None,
            fast: None,
            capture: Capture::default(),
            scratch: Vec::new(),
            stats: Stats::default(),
            rx_counts: None,
            now,
        }
    }

    /// Returns the role of this association.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Returns the current life-cycle state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Returns the caller time at which the handshake started (for the caller's handshake timeout).
    pub fn handshake_started_at(&self) -> Duration {
        self.handshake_started_at
    }

    /// Returns the caller time at which the handshake completed, if it did.
    pub fn established_at(&self) -> Option<Duration> {
        self.established_at
    }

    /// Returns the counters of this association (the receiving direction's included, also
    /// what an opener on another thread flushed).
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        let pending = self
            .fast
            .as_ref()
            .and_then(|fp| fp.rx.as_ref())
            .map(Opener::pending_counts)
            .unwrap_or_default();
        let shared = self
            .rx_counts
            .as_ref()
            .map(|s| s.counts())
            .unwrap_or_default();
        for c in [pending, shared] {
            let RxCounts {
                records_opened,
                replayed,
                auth_failed,
                unknown_epoch,
                malformed,
                rx_rekeys,
            } = c;
            stats.records_opened += records_opened;
            stats.replayed += replayed;
            stats.auth_failed += auth_failed;
            stats.unknown_epoch += unknown_epoch;
            stats.malformed += malformed;
            stats.rx_rekeys += rx_rekeys;
        }
        stats
    }

    /// Returns whether application records go through the aws-lc-rs fast path.
    pub fn fast_path_active(&self) -> bool {
        self.fast.is_some()
    }

    /// Returns the negotiated record format, once established.
    pub fn record_suite(&self) -> Option<RecordSuite> {
        self.suite
    }

    /// Returns OpenSSL's name of the negotiated cipher suite, once negotiated.
    pub fn cipher_name(&self) -> Option<&'static str> {
        self.stream.ssl().current_cipher().map(|c| c.name())
    }

    /// Returns the size in bits of the peer's ephemeral key-exchange key (on a client: the
    /// server's DHE or ECDHE share), once received.
    pub fn peer_key_exchange_bits(&self) -> Option<u32> {
        self.stream.ssl().peer_tmp_key().ok().map(|k| k.bits())
    }

    /// Returns the peer's certificate (certificate mode), once received.
    pub fn peer_certificate(&self) -> Option<X509> {
        self.stream.ssl().peer_certificate()
    }

    /// Returns where the caller writes the payload in a record buffer (13 for ChaCha20, 21 for AES-GCM).
    pub fn payload_offset(&self) -> Option<usize> {
        self.suite.map(RecordSuite::payload_offset)
    }

    /// Returns the bytes a record adds to its payload (29 for ChaCha20, 37 for AES-GCM).
    pub fn overhead(&self) -> Option<usize> {
        self.suite.map(RecordSuite::overhead)
    }

    /// Returns the caller time at which [`Self::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if matches!(self.state, State::Closed(_)) {
            return None;
        }
        let rekey = self.fast.as_ref().and_then(|fp| {
            // A sealer on another thread switched epochs, or the next key is still to derive.
            // Or an opener (maybe on another thread) moved to a later epoch: derive ahead.
            let upkeep = (fp.tx.needs_upkeep(&self.config.rekey)
                || (!fp.rx_stuck && fp.rx_shared.wants().is_some()))
            .then_some(self.now);
            let tx = fp.tx.rekey_at(&self.config.rekey);
            let retire = fp.rx.as_ref().and_then(Opener::retire_at);
            [upkeep, tx, retire].into_iter().flatten().min()
        });
        [self.deadline, rekey].into_iter().flatten().min()
    }

    /// Returns the epochs records are sealed in and opened from (after the handshake).
    pub fn epochs(&self) -> Option<(u16, u16)> {
        self.fast
            .as_ref()
            .map(|fp| (fp.tx.shared.epoch(), fp.rx_shared.epoch()))
    }

    /// Sets the sequence number of the next record sealed (tests of the key update only).
    #[doc(hidden)]
    pub fn set_next_seq_for_test(&mut self, seq: u64) {
        if let Some(fp) = self.fast.as_mut() {
            fp.tx.shared.set_next_seq(seq);
        }
    }

    /// A handle that seals records for this association on another thread, sharing its
    /// sending direction (keys per epoch, one sequence counter; see [`Sealer`]); `None`
    /// before the record takeover (or without the fast path).
    pub fn sealer(&self) -> Option<Sealer> {
        if !matches!(self.state, State::Established) {
            return None;
        }
        self.fast
            .as_ref()
            .map(|fp| Sealer::new(fp.tx.shared.clone()))
    }

    /// Hands the receiving direction (replay windows, receive epochs) to the thread that
    /// will open this association's records from now on; `None` before the record takeover,
    /// without the fast path, or while another thread holds it. Until it comes back
    /// ([`Self::restore_opener`]), [`Self::handle_datagram`] opens no application record: it
    /// takes only what [`Opened::for_association`](crate::Opened) left.
    pub fn take_opener(&mut self) -> Option<Opener> {
        if !matches!(self.state, State::Established) {
            return None;
        }
        self.fast.as_mut().and_then(|fp| fp.rx.take())
    }

    /// Takes back the receiving direction [`Self::take_opener`] handed out (ignored if it is
    /// another association's, or this one holds its own).
    pub fn restore_opener(&mut self, mut opener: Opener) {
        opener.flush_counts();
        if let Some(fp) = self.fast.as_mut()
            && fp.rx.is_none()
            && Arc::ptr_eq(opener.shared(), &fp.rx_shared)
        {
            fp.rx = Some(opener);
        }
    }

    /// The peer closed the association: an opener on another thread opened an authentic
    /// close_notify or fatal alert ([`Opened::closed`](crate::Opened)).
    pub fn peer_closed(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Established) {
            self.fail(reason);
        }
    }

    /// Returns the next handshake or alert datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Drives OpenSSL's retransmission timer; call when `now` reaches [`Self::poll_timeout`].
    ///
    /// OpenSSL's timer runs on the system clock, so a call before OpenSSL considers the timer
    /// expired only re-arms [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Duration) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        self.now = self.now.max(now);
        if let Some(fp) = self.fast.as_mut() {
            if let Some(opener) = fp.rx.as_mut() {
                opener.expire(now);
            }
            if fp.tx.due_by_clock(&self.config.rekey, now) {
                fp.tx.shared.switch_now();
            }
            self.tx_upkeep(now);
            self.fill_rx_lookahead();
        }
        match self.deadline {
            Some(deadline) if now >= deadline => {}
            _ => return,
        }
        let ret = ffi::dtls_handle_timeout(self.stream.ssl());
        if ret < 0 {
            let err = ErrorStack::get();
            self.drain_output();
            let why = format!("retransmission failed: {err}");
            self.fail(match self.state {
                State::Handshaking => CloseReason::HandshakeFailed(why),
                _ => CloseReason::ProtocolError(why),
            });
            return;
        }
        self.drain_output();
        self.refresh_timer(now);
    }

    /// Runs `SSL_do_handshake` and reacts to its outcome.
    fn drive_handshake(&mut self, now: Duration) {
        match self.stream.do_handshake() {
            Ok(()) => {
                self.drain_output();
                self.on_handshake_complete(now);
            }
            Err(e) => {
                self.drain_output();
                match e.code() {
                    ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => {}
                    _ => self.fail(CloseReason::HandshakeFailed(e.to_string())),
                }
            }
        }
        self.refresh_timer(now);
    }

    fn refresh_timer(&mut self, now: Duration) {
        self.deadline = match self.state {
            State::Closed(_) => None,
            _ => ffi::dtls_get_timeout(self.stream.ssl()).map(|left| now + left),
        };
    }

    fn fail(&mut self, reason: CloseReason) {
        if !matches!(self.state, State::Closed(_)) {
            self.state = State::Closed(reason);
        }
        if let Some(opener) = self.fast.as_mut().and_then(|fp| fp.rx.as_mut()) {
            opener.flush_counts();
        }
        self.fast = None;
        self.deadline = None;
    }

    fn check_established(&self) -> Result<(), DtlsError> {
        match &self.state {
            State::Established => Ok(()),
            State::Handshaking => Err(DtlsError::NotEstablished),
            State::Closed(reason) => Err(DtlsError::Closed(reason.clone())),
        }
    }

    /// Seals the application payload at `buf[payload_offset()..][..payload_len]` in place.
    ///
    /// Writes the header (and explicit nonce) before the payload and the tag after it; `buf`
    /// must hold `overhead() + payload_len` bytes. Returns the record length to send.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, DtlsError> {
        self.check_established()?;
        let suite = self.suite.ok_or(DtlsError::NotEstablished)?;
        if payload_len > MAX_PAYLOAD {
            return Err(DtlsError::PayloadTooLarge(payload_len));
        }
        let need = suite.overhead() + payload_len;
        if buf.len() < need {
            return Err(DtlsError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        if let Some(fp) = self.fast.as_mut() {
            let sealed = fp
                .tx
                .sealer
                .reserve(1)
                .and_then(|r| r.seal(0, buf, payload_len));
            let n = match sealed {
                Ok(n) => n,
                Err(DtlsError::SequenceExhausted) => {
                    self.fail(CloseReason::SequenceExhausted);
                    return Err(DtlsError::SequenceExhausted);
                }
                Err(e) => return Err(e),
            };
            self.stats.records_sealed += 1;
            if fp.tx.needs_upkeep(&self.config.rekey) {
                self.tx_upkeep(self.now);
            }
            return Ok(n);
        }
        self.seal_fallback(suite, buf, payload_len, need)
    }

    fn seal_fallback(
        &mut self,
        suite: RecordSuite,
        buf: &mut [u8],
        payload_len: usize,
        need: usize,
    ) -> Result<usize, DtlsError> {
        if payload_len == 0 {
            return Err(DtlsError::Internal(
                "the fallback path cannot send empty records",
            ));
        }
        let off = suite.payload_offset();
        match self.stream.ssl_write(&buf[off..off + payload_len]) {
            Ok(n) if n == payload_len => {}
            Ok(_) => return Err(DtlsError::Internal("short SSL_write")),
            Err(e) => {
                let reason = CloseReason::ProtocolError(e.to_string());
                self.fail(reason.clone());
                return Err(DtlsError::Closed(reason));
            }
        }
        let bio = self.stream.get_mut();
        let Some(d) = bio.outbound.pop_front() else {
            return Err(DtlsError::Internal("SSL_write produced no record"));
        };
        if d.len() != need {
            bio.recycle(d);
            return Err(DtlsError::Internal(
                "SSL_write produced an unexpected record length",
            ));
        }
        buf[..need].copy_from_slice(&d);
        bio.recycle(d);
        self.drain_output();
        self.stats.records_sealed += 1;
        Ok(need)
    }

    /// Sends close_notify (queued for [`Self::poll_transmit`]) and closes the association.
    pub fn close(&mut self) {
        match &self.state {
            State::Closed(_) => return,
            State::Established if self.fast.is_some() => {
                if let (Some(fp), Some(suite)) = (self.fast.as_mut(), self.suite)
                    && let Ok(reservation) = fp.tx.sealer.reserve(1)
                {
                    let off = suite.payload_offset();
                    let mut rec = vec![0u8; suite.overhead() + 2];
                    rec[off..off + 2].copy_from_slice(&[1, 0]);
                    if reservation.seal_as(0, CT_ALERT, &mut rec, 2).is_ok() {
                        self.transmit.push_back(rec);
                    }
                }
            }
            _ => {
                // During the handshake OpenSSL refuses; the error is irrelevant.
                if self.stream.shutdown().is_err() {
                    drop(ErrorStack::get());
                }
                self.drain_output();
            }
        }
        self.fail(CloseReason::LocalClose);
    }

    /// Derives keying material from the session (RFC 5705), e.g. for channel binding.
    pub fn export_keying_material(
        &self,
        label: &str,
        context: Option<&[u8]>,
        len: usize,
    ) -> Result<Vec<u8>, DtlsError> {
        self.check_established()?;
        let mut out = vec![0u8; len];
        self.stream
            .ssl()
            .export_keying_material(&mut out, label, context)?;
        Ok(out)
    }
}
