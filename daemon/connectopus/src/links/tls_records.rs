//! The TLS 1.3 record layer of a TCP+TLS link once rustls has finished the handshake: the
//! way kTLS takes a connection over, in userspace. rustls authenticates the peer and agrees
//! the keys; the link then seals its frames into records straight into its send queue and
//! opens records straight from the socket's read buffer into its frame buffer — one pass of
//! the AEAD each way, no copy through record buffers and no allocation per record.
//!
//! The records are standard TLS 1.3 (RFC 8446 §5), so a peer that keeps its records in rustls
//! reads them as it always did. Keys move on with standard KeyUpdate messages (§4.6.3): the
//! link sends one every [`RECORDS_PER_KEY`] records and follows the peer's, which needs the
//! application traffic secrets (`ExtractedSecrets` carries only keys): rustls hands them over
//! through a [`rustls::KeyLog`] that belongs to one connection ([`TlsSession`]), and the keys
//! derived from them are checked against the ones rustls extracted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

/// Length of a TLS record header.
pub const HEADER_LEN: usize = 5;
/// Most plaintext one record carries (2^14 bytes).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Most ciphertext a record may carry (RFC 8446 §5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Most bytes a record the handshake reads may declare (TLS 1.2's bound, 2^14 + 2048, which
/// rustls applies to every record).
const MAX_HANDSHAKE_RECORD: usize = MAX_PLAINTEXT + 2048;
const TAG_LEN: usize = 16;
const APPLICATION_DATA: u8 = 23;
const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
/// A KeyUpdate handshake message that asks nothing of the peer.
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];
/// A KeyUpdate handshake message that asks the peer to move its keys on too.
#[cfg(test)]
const KEY_UPDATE_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 1];

/// Records sealed under one key before the link sends a KeyUpdate and moves to the next:
/// half of AES-GCM's 2^24 (the limit rustls observes; RFC 8446 §5.5 allows 2^24.5 full-size
/// records). At 10 Gbit/s in 16 KiB records that is one update every two minutes.
pub const RECORDS_PER_KEY: u64 = 1 << 23;

const CLIENT_SECRET_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

/// Why the record layer ends a link.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// A record failed authentication (corrupted, forged or out of order).
    #[error("a TLS record fails authentication")]
    Decrypt,
    /// A record header is not a TLS 1.3 application-data record within the size limit.
    #[error("malformed TLS record: {0}")]
    Malformed(&'static str),
    /// The peer closed its side (close_notify).
    #[error("the peer closed the TLS session")]
    Closed,
    /// The peer sent a fatal alert.
    #[error("the peer sent TLS alert {0}")]
    Alert(u8),
    /// The keys could not be taken over from rustls or moved on.
    #[error("TLS keys: {0}")]
    Keys(&'static str),
}

/// A traffic secret, wiped when dropped.
type TrafficSecret = Zeroizing<Vec<u8>>;

/// The two application traffic secrets of one connection, as rustls reports them through its
/// key log (and nothing else: every other label is declined).
#[derive(Default)]
pub struct TrafficSecretLog {
    captured: Mutex<[Option<TrafficSecret>; 2]>,
}

impl std::fmt::Debug for TrafficSecretLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecretLog")
    }
}

impl rustls::KeyLog for TrafficSecretLog {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_SECRET_LABEL || label == SERVER_SECRET_LABEL
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_SECRET_LABEL => 0,
            SERVER_SECRET_LABEL => 1,
            _ => return,
        };
        if let Ok(mut captured) = self.captured.lock()
            && let Some(entry) = captured.get_mut(slot)
        {
            *entry = Some(Zeroizing::new(secret.to_vec()));
        }
    }
}

impl TrafficSecretLog {
    /// Takes the client's and the server's secret (each once).
    fn take(&self) -> Option<(TrafficSecret, TrafficSecret)> {
        let mut captured = self.captured.lock().ok()?;
        let [client, server] = &mut *captured;
        Some((client.take()?, server.take()?))
    }
}

/// A rustls connection that is still handshaking, with the key log that will hand its
/// traffic secrets to the link's record layer.
pub struct TlsSession {
    pub(crate) connection: rustls::Connection,
    secrets: Arc<TrafficSecretLog>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.connection.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    /// Accepts a connection with a listener's configuration (copied, with this connection's
    /// own key log and secret extraction on).
    ///
    /// # Errors
    /// rustls refused the configuration.
    pub fn server(config: &Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        let secrets = Arc::new(TrafficSecretLog::default());
        let mut config = rustls::ServerConfig::clone(config);
        config.key_log = secrets.clone();
        config.enable_secret_extraction = true;
        let connection = rustls::ServerConnection::new(Arc::new(config))?;
        Ok(Self {
            connection: rustls::Connection::Server(connection),
            secrets,
        })
    }

    /// Dials with a dialer's configuration (copied, with this connection's own key log and
    /// secret extraction on).
    ///
    /// # Errors
    /// rustls refused the configuration.
    pub fn client(
        config: &Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        let secrets = Arc::new(TrafficSecretLog::default());
        let mut config = rustls::ClientConfig::clone(config);
        config.key_log = secrets.clone();
        config.enable_secret_extraction = true;
        let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
        Ok(Self {
            connection: rustls::Connection::Client(connection),
            secrets,
        })
    }

    /// Takes the keys over from rustls once its handshake is done (and its last flight
    /// written out).
    ///
    /// # Errors
    /// The handshake is not done, output is still buffered, the suite is not one the layer
    /// knows, or the logged secrets do not give the keys rustls extracted.
    pub fn into_record_layer(self) -> Result<RecordLayer, RecordError> {
        let is_client = matches!(self.connection, rustls::Connection::Client(_));
        let suite = self
            .connection
            .negotiated_cipher_suite()
            .and_then(|s| Suite::of(s.suite()))
            .ok_or(RecordError::Keys("not a TLS 1.3 suite the link knows"))?;
        let (client, server) = self
            .secrets
            .take()
            .ok_or(RecordError::Keys("rustls logged no traffic secrets"))?;
        let extracted = self
            .connection
            .dangerous_extract_secrets()
            .map_err(|_| RecordError::Keys("rustls did not hand the keys over"))?;
        let (tx_secret, rx_secret) = if is_client {
            (client, server)
        } else {
            (server, client)
        };
        let tx = Direction::new(suite, tx_secret, extracted.tx.0)?;
        let rx = Direction::new(suite, rx_secret, extracted.rx.0)?;
        if !tx.matches(&extracted.tx.1) || !rx.matches(&extracted.rx.1) {
            return Err(RecordError::Keys(
                "the logged secrets do not give rustls's keys",
            ));
        }
        Ok(RecordLayer {
            tx,
            rx,
            partial: Vec::new(),
            records_per_key: RECORDS_PER_KEY,
            is_client,
            answer_key_update: false,
            key_update_requests: 0,
            handshake_partial: Vec::new(),
        })
    }
}

/// What a TLS 1.3 suite takes: its AEAD and its hash.
#[derive(Clone, Copy)]
struct Suite {
    aead: &'static aead::Algorithm,
    hkdf: hkdf::Algorithm,
    hash_len: usize,
}

impl Suite {
    fn of(suite: rustls::CipherSuite) -> Option<Self> {
        use rustls::CipherSuite as S;
        Some(match suite {
            S::TLS13_AES_128_GCM_SHA256 => Self {
                aead: &aead::AES_128_GCM,
                hkdf: hkdf::HKDF_SHA256,
                hash_len: 32,
            },
            S::TLS13_AES_256_GCM_SHA384 => Self {
                aead: &aead::AES_256_GCM,
                hkdf: hkdf::HKDF_SHA384,
                hash_len: 48,
            },
            S::TLS13_CHACHA20_POLY1305_SHA256 => Self {
                aead: &aead::CHACHA20_POLY1305,
                hkdf: hkdf::HKDF_SHA256,
                hash_len: 32,
            },
            _ => return None,
        })
    }
}

/// The keys of one direction: the traffic secret (to move on at a KeyUpdate), the AEAD key
/// and IV derived from it, and the next record's sequence number.
struct Direction {
    suite: Suite,
    secret: TrafficSecret,
    key: LessSafeKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    key_bytes: Zeroizing<Vec<u8>>,
    seq: u64,
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    let keys = RecordError::Keys("HKDF-Expand-Label failed");
    let length = u16::try_from(out.len()).map_err(|_| keys.clone())?;
    let label_len = u8::try_from(6 + label.len()).map_err(|_| keys.clone())?;
    let length = length.to_be_bytes();
    let info: [&[u8]; 5] = [&length, &[label_len], b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(alg, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| keys)
}

impl Direction {
    fn new(suite: Suite, secret: TrafficSecret, seq: u64) -> Result<Self, RecordError> {
        if secret.len() != suite.hash_len {
            return Err(RecordError::Keys("traffic secret of the wrong length"));
        }
        let mut key_bytes = Zeroizing::new(vec![0u8; suite.aead.key_len()]);
        expand_label(suite.hkdf, &secret, b"key", &mut key_bytes)?;
        let mut iv = Zeroizing::new([0u8; NONCE_LEN]);
        expand_label(suite.hkdf, &secret, b"iv", &mut *iv)?;
        let key = UnboundKey::new(suite.aead, &key_bytes)
            .map(LessSafeKey::new)
            .map_err(|_| RecordError::Keys("AEAD key refused"))?;
        Ok(Self {
            suite,
            secret,
            key,
            iv,
            key_bytes,
            seq,
        })
    }

    /// The next generation of this direction's keys (a KeyUpdate), its sequence at zero.
    fn next(&self) -> Result<Self, RecordError> {
        let mut secret = Zeroizing::new(vec![0u8; self.suite.hash_len]);
        expand_label(self.suite.hkdf, &self.secret, b"traffic upd", &mut secret)?;
        Self::new(self.suite, secret, 0)
    }

    /// True when rustls extracted the same key and IV.
    fn matches(&self, extracted: &rustls::ConnectionTrafficSecrets) -> bool {
        use rustls::ConnectionTrafficSecrets as T;
        let (key, iv) = match extracted {
            T::Aes128Gcm { key, iv }
            | T::Aes256Gcm { key, iv }
            | T::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return false,
        };
        key.as_ref() == self.key_bytes.as_slice() && iv.as_ref() == self.iv.as_slice()
    }

    /// The nonce of the next record: the IV XOR the sequence number. The number moves on
    /// only once the record is sealed or opened ([`Direction::advance`]), so a failed seal
    /// leaves the stream as it was.
    fn nonce(&self) -> Nonce {
        let mut nonce = *self.iv;
        let seq = self.seq.to_be_bytes();
        for (n, s) in nonce.iter_mut().skip(NONCE_LEN - seq.len()).zip(seq) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Moves the sequence number on past a record sealed or opened.
    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::Keys("sequence numbers exhausted"))?;
        Ok(())
    }
}

/// Where sealed records go: a byte queue that can lend its tail.
pub trait RecordSink {
    /// Appends `len` bytes that `fill` writes; on an error nothing is appended.
    ///
    /// # Errors
    /// Whatever `fill` returned.
    fn append_with<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E>;
}

impl RecordSink for Vec<u8> {
    fn append_with<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.len();
        self.resize(start + len, 0);
        let result = fill(self.get_mut(start..).unwrap_or_default());
        if result.is_err() {
            self.truncate(start);
        }
        result
    }
}

impl RecordSink for VecDeque<u8> {
    /// Seals in place at the queue's tail; only when the new bytes would wrap around the end
    /// of the ring (once per lap of the ring) are they sealed aside and copied in.
    fn append_with<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.len();
        self.resize(start + len, 0);
        let (front, back) = self.as_mut_slices();
        let tail = if back.len() >= len {
            back.get_mut(back.len() - len..)
        } else if back.is_empty() {
            front.get_mut(front.len().saturating_sub(len)..)
        } else {
            None
        };
        let result = match tail {
            Some(tail) => fill(tail),
            None => {
                let mut aside = vec![0u8; len];
                let result = fill(&mut aside);
                if result.is_ok() {
                    for (to, from) in self.range_mut(start..).zip(aside) {
                        *to = from;
                    }
                }
                result
            }
        };
        if result.is_err() {
            self.truncate(start);
        }
        result
    }
}

/// A link's TLS 1.3 records after the handshake: seals outgoing plaintext, opens incoming
/// records, follows and sends KeyUpdates.
pub struct RecordLayer {
    tx: Direction,
    rx: Direction,
    /// The start of a record whose rest has not been read yet (at most one record).
    partial: Vec<u8>,
    records_per_key: u64,
    /// The dialing end (a server refuses NewSessionTicket, which only servers send).
    is_client: bool,
    /// The peer asked for a KeyUpdate; answered once, at the end of the read.
    answer_key_update: bool,
    /// KeyUpdate requests since the peer's last application data (at most
    /// [`MAX_KEY_UPDATE_REQUESTS`], as rustls allows).
    key_update_requests: u8,
    /// The start of a post-handshake message whose rest comes in the next handshake record
    /// (RFC 8446 §5.1 lets a peer split one across records; no other record may come between).
    handshake_partial: Vec<u8>,
}

/// KeyUpdate requests a peer may send between two application-data records (rustls's bound).
const MAX_KEY_UPDATE_REQUESTS: u8 = 32;

/// The longest post-handshake message the layer gathers across records (rustls's bound on a
/// handshake message; a NewSessionTicket is a few hundred bytes, a KeyUpdate one).
const MAX_POST_HANDSHAKE_MESSAGE: usize = 0xffff;

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .field("partial", &self.partial.len())
            .finish()
    }
}

/// The full length of the record that `bytes` begins, once its header is there.
///
/// # Errors
/// Not an application-data record of TLS 1.3 within the size limit.
fn record_len(bytes: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(&[kind, major, minor, high, low]) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if kind != APPLICATION_DATA {
        return Err(RecordError::Malformed("not an application-data record"));
    }
    if (major, minor) != (3, 3) {
        return Err(RecordError::Malformed("legacy version is not 3.3"));
    }
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Malformed(
            "record longer than 2^14 + 256 bytes",
        ));
    }
    if len < TAG_LEN + 1 {
        return Err(RecordError::Malformed("record shorter than its tag"));
    }
    Ok(Some(HEADER_LEN + len))
}

/// The full length of the handshake-time record that `bytes` begins (any content type), once
/// its header is there.
///
/// # Errors
/// A record longer than any TLS record may be.
pub fn handshake_record_len(bytes: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(&[_, _, _, high, low]) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_HANDSHAKE_RECORD {
        return Err(RecordError::Malformed(
            "record longer than 2^14 + 2048 bytes",
        ));
    }
    Ok(Some(HEADER_LEN + len))
}

impl RecordLayer {
    /// Seals `plaintext` into records of at most 16 KiB appended to `out`, each sealed where
    /// it lands; moves the keys on first (a KeyUpdate record) when the current key has sealed
    /// its share.
    ///
    /// # Errors
    /// The keys are exhausted or the AEAD failed; records already appended stay (they are
    /// part of the stream).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut impl RecordSink) -> Result<(), RecordError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.records_per_key {
                self.seal_record(HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED, out)?;
                self.tx = self.tx.next()?;
            }
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    fn seal_record(
        &mut self,
        kind: u8,
        content: &[u8],
        out: &mut impl RecordSink,
    ) -> Result<(), RecordError> {
        let len = content.len() + 1 + TAG_LEN;
        let [high, low] = u16::try_from(len)
            .map_err(|_| RecordError::Malformed("record too long"))?
            .to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, high, low];
        let nonce = self.tx.nonce();
        let key = &self.tx.key;
        out.append_with(HEADER_LEN + len, |record| {
            let (head, body) = record.split_at_mut(HEADER_LEN);
            head.copy_from_slice(&header);
            let (ciphertext, type_and_tag) = body.split_at_mut(content.len());
            key.seal_out_of_place_scatter(
                nonce,
                Aad::from(header),
                content,
                ciphertext,
                &[kind],
                type_and_tag,
            )
            .map_err(|_| RecordError::Keys("AEAD seal failed"))
        })?;
        self.tx.advance()
    }

    /// Opens the records in `bytes` (one read from the socket, cut anywhere), appending their
    /// application data to `plaintext`; a KeyUpdate the peer asks to be answered is answered
    /// into `reply`.
    ///
    /// # Errors
    /// A malformed or forged record, an alert, or close_notify: the link ends.
    pub fn open(
        &mut self,
        mut bytes: &[u8],
        plaintext: &mut Vec<u8>,
        reply: &mut impl RecordSink,
    ) -> Result<(), RecordError> {
        if !self.partial.is_empty() {
            // Complete the record an earlier read began: its header first, then its body.
            let mut partial = std::mem::take(&mut self.partial);
            let mut take_up_to = |partial: &mut Vec<u8>, want: usize| {
                let take = want.saturating_sub(partial.len()).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                partial.extend_from_slice(head);
                bytes = rest;
                partial.len() >= want
            };
            let whole = take_up_to(&mut partial, HEADER_LEN)
                && match record_len(&partial)? {
                    Some(want) => take_up_to(&mut partial, want),
                    None => false,
                };
            if !whole {
                self.partial = partial;
                return Ok(());
            }
            let result = self.open_record(&partial, plaintext);
            partial.clear();
            self.partial = partial;
            result?;
        }
        while let Some(len) = record_len(bytes)? {
            let Some((record, rest)) = bytes.split_at_checked(len) else {
                break;
            };
            self.open_record(record, plaintext)?;
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
        if std::mem::take(&mut self.answer_key_update) {
            // One answer for however many requests the read held (RFC 8446 §4.6.3 asks for
            // one before our next application data, which no flush can send before this).
            self.seal_record(HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED, reply)?;
            self.tx = self.tx.next()?;
        }
        Ok(())
    }

    /// Opens one whole record from where it lies into the end of `plaintext`.
    fn open_record(&mut self, record: &[u8], plaintext: &mut Vec<u8>) -> Result<(), RecordError> {
        let (header, body) = record
            .split_at_checked(HEADER_LEN)
            .ok_or(RecordError::Malformed("record shorter than its header"))?;
        let (ciphertext, tag) = body
            .split_at_checked(body.len().saturating_sub(TAG_LEN))
            .ok_or(RecordError::Malformed("record shorter than its tag"))?;
        if ciphertext.len() > MAX_PLAINTEXT + 1 {
            return Err(RecordError::Malformed(
                "record plaintext longer than 2^14 + 1 bytes",
            ));
        }
        let start = plaintext.len();
        plaintext.resize(start + ciphertext.len(), 0);
        let nonce = self.rx.nonce();
        let opened = self.rx.key.open_separate_gather(
            nonce,
            Aad::from(header),
            ciphertext,
            tag,
            plaintext.get_mut(start..).unwrap_or_default(),
        );
        if opened.is_err() {
            plaintext.truncate(start);
            return Err(RecordError::Decrypt);
        }
        self.rx.advance()?;
        // TLSInnerPlaintext: content, the content type, then zeros.
        let inner = plaintext.get(start..).unwrap_or_default();
        let Some(end) = inner.iter().rposition(|&b| b != 0) else {
            plaintext.truncate(start);
            return Err(RecordError::Malformed("record without a content type"));
        };
        let kind = inner.get(end).copied().unwrap_or_default();
        plaintext.truncate(start + end);
        if kind != HANDSHAKE && !self.handshake_partial.is_empty() {
            plaintext.truncate(start);
            return Err(RecordError::Malformed(
                "another record inside a split handshake message",
            ));
        }
        match kind {
            APPLICATION_DATA => {
                self.key_update_requests = 0;
                Ok(())
            }
            HANDSHAKE => {
                // Rare (a KeyUpdate every few minutes): taken out of the frame bytes, behind
                // what an earlier record began.
                if plaintext.len() == start {
                    return Err(RecordError::Malformed("empty handshake record"));
                }
                let mut messages = std::mem::take(&mut self.handshake_partial);
                messages.extend(plaintext.drain(start..));
                self.post_handshake(messages)
            }
            ALERT => {
                let alert = plaintext.get(start..).map(<[u8]>::to_vec);
                plaintext.truncate(start);
                match alert.as_deref() {
                    Some([_, 0]) => Err(RecordError::Closed),
                    Some([_, description]) => Err(RecordError::Alert(*description)),
                    _ => Err(RecordError::Malformed("alert of the wrong length")),
                }
            }
            _ => {
                plaintext.truncate(start);
                Err(RecordError::Malformed("unexpected content type"))
            }
        }
    }

    /// Handles the handshake messages after the handshake that end in one record (`bytes`:
    /// what earlier records began, then this record's): KeyUpdate (follow it; note the answer
    /// when asked) and, at a client, NewSessionTicket (ignored: links do not resume). A message
    /// the record does not finish waits for the next handshake record (this layer never splits
    /// one; rustls does not either, but a conformant peer may).
    fn post_handshake(&mut self, bytes: Vec<u8>) -> Result<(), RecordError> {
        let mut messages = bytes.as_slice();
        while let [kind, a, b, c, rest @ ..] = messages {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > MAX_POST_HANDSHAKE_MESSAGE {
                return Err(RecordError::Malformed(
                    "post-handshake message longer than 64 KiB",
                ));
            }
            let Some((body, tail)) = rest.split_at_checked(len) else {
                break;
            };
            match *kind {
                KEY_UPDATE => {
                    // A key update must end its record (RFC 8446 §5.1).
                    if !tail.is_empty() {
                        return Err(RecordError::Malformed("data after a key update"));
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(RecordError::Malformed("bad key update")),
                    };
                    self.rx = self.rx.next()?;
                    if requested {
                        self.key_update_requests += 1;
                        if self.key_update_requests > MAX_KEY_UPDATE_REQUESTS {
                            return Err(RecordError::Malformed(
                                "too many key update requests without data",
                            ));
                        }
                        self.answer_key_update = true;
                    }
                }
                // A client ignores tickets (links do not resume); only servers send them.
                NEW_SESSION_TICKET if self.is_client => {}
                _ => return Err(RecordError::Malformed("unexpected handshake message")),
            }
            messages = tail;
        }
        if !messages.is_empty() {
            // Its rest comes in the next record: nothing else may come first.
            let consumed = bytes.len() - messages.len();
            let mut bytes = bytes;
            bytes.drain(..consumed);
            self.handshake_partial = bytes;
        }
        Ok(())
    }

    /// Moves the sending keys on after `records` records instead of [`RECORDS_PER_KEY`]
    /// (tests: key updates without sealing millions of records).
    #[cfg(test)]
    pub(crate) fn set_records_per_key(&mut self, records: u64) {
        self.records_per_key = records;
    }

    /// Asks the peer to move its keys on too (tests: the answer to a request).
    #[cfg(test)]
    pub(crate) fn request_key_update(
        &mut self,
        out: &mut impl RecordSink,
    ) -> Result<(), RecordError> {
        self.seal_record(HANDSHAKE, &KEY_UPDATE_REQUESTED, out)?;
        self.tx = self.tx.next()?;
        Ok(())
    }

    /// The sequence numbers of the next record each way (tests).
    #[cfg(test)]
    pub(crate) fn sequences(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }
}

#[cfg(test)]
pub(crate) mod tests;
