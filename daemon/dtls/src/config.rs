//! Configuration: credentials, peer verification, and the prepared OpenSSL contexts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{hmac, rand};
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509StoreContextRef};
use zeroize::Zeroizing;

use crate::DtlsError;
use crate::RecordSuite;
use crate::ffi;

/// PSK identity hint the server announces.
pub const PSK_IDENTITY_HINT: &str = "connectopus";

/// Cipher list of the default PSK mode: forward secret either way; AES-128-GCM records (with
/// finite-field DHE, the only forward-secret PSK key exchange OpenSSL pairs with AES-GCM in
/// DTLS 1.2) where both ends offer them, else ChaCha20-Poly1305 records (a peer that offers
/// only `ECDHE-PSK-CHACHA20-POLY1305`, as nodes before this suite did). The server's
/// preference decides.
const CIPHERS_PSK_DEFAULT: &str = "DHE-PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305";
/// Cipher list of the PSK mode that offers ChaCha20-Poly1305 only (also what a server leaves
/// an association whose DHE handshake its caller did not allow).
pub(crate) const CIPHERS_ECDHE_PSK: &str = "ECDHE-PSK-CHACHA20-POLY1305";
/// Cipher list of the plain PSK mode (no forward secrecy).
const CIPHERS_PSK_AES: &str = "PSK-AES128-GCM-SHA256";
/// Cipher list of the certificate mode.
const CIPHERS_CERT: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";

/// Lifetime of one cookie time bucket; a cookie is valid in its bucket and the next.
const COOKIE_BUCKET: Duration = Duration::from_secs(30);
/// Length of the cookies we issue.
const COOKIE_LEN: usize = 16;

/// Settings shared by client and server associations.
#[derive(Clone, Debug)]
pub struct DtlsConfig {
    /// Selects PSK or certificate authentication.
    pub credentials: Credentials,
    /// Enables the record takeover fast path (default true); false keeps OpenSSL's
    /// `SSL_write`/`SSL_read` for application records (for interop tests and as a switch).
    pub fast_path: bool,
    /// Largest datagram OpenSSL may write during the handshake (default 1400).
    pub mtu: u16,
    /// First retransmission timeout of a handshake flight (default 1 s, doubled per timeout).
    pub retransmit_initial: Duration,
    /// Upper bound of the doubled retransmission timeout (default 60 s).
    pub retransmit_max: Duration,
    /// When the fast path moves each direction to new keys (default: 2^28 records or an hour).
    pub rekey: crate::RekeyPolicy,
}

impl DtlsConfig {
    /// Creates a configuration with the given credentials and default settings.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            fast_path: true,
            mtu: 1400,
            retransmit_initial: Duration::from_secs(1),
            retransmit_max: Duration::from_secs(60),
            rekey: crate::RekeyPolicy::default(),
        }
    }
}

/// How the two ends authenticate each other.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Authenticates with a pre-shared key.
    Psk(PskCredentials),
    /// Authenticates with X.509 certificates.
    Certificate(CertificateCredentials),
}

/// Pre-shared key credentials.
#[derive(Clone)]
pub struct PskCredentials {
    /// Identity the client sends (at most 128 bytes, no NUL); the server only accepts this one.
    pub identity: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    /// Selects the PSK cipher suite.
    pub suite: PskSuite,
}

impl std::fmt::Debug for PskCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskCredentials")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &"<redacted>")
            .field("suite", &self.suite)
            .finish()
    }
}

impl PskCredentials {
    /// Creates PSK credentials offering the default forward-secret suites
    /// ([`PskSuite::DhePskAes128GcmOrEcdhePskChaCha20`]).
    pub fn new(identity: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            identity: identity.into(),
            key: Zeroizing::new(key.into()),
            suite: PskSuite::default(),
        }
    }
}

/// PSK cipher suite choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PskSuite {
    /// The default: offers `DHE-PSK-AES128-GCM-SHA256` (0x00AA; finite-field ephemeral
    /// Diffie-Hellman, OpenSSL's automatic 2048-bit group) first and
    /// `ECDHE-PSK-CHACHA20-POLY1305` (0xCCAC; X25519) second; a server picks the first the
    /// client offers too. Both are forward secret; AES-128-GCM records cost about a quarter of
    /// ChaCha20-Poly1305's on CPUs with AES instructions, the DHE handshake about 3.7 ms of
    /// CPU per side more than X25519's.
    #[default]
    DhePskAes128GcmOrEcdhePskChaCha20,
    /// `ECDHE-PSK-CHACHA20-POLY1305` (0xCCAC) only: forward secret, the cheapest handshake,
    /// the better record cipher on CPUs without AES instructions.
    EcdhePskChaCha20Poly1305,
    /// `PSK-AES128-GCM-SHA256` (0x00A8): no forward secrecy (a PSK holder who recorded the
    /// traffic can decrypt it later); for interop and benchmarks only.
    PskAes128GcmNoForwardSecrecy,
}

/// Certificate credentials and peer verification.
#[derive(Clone, Debug)]
pub struct CertificateCredentials {
    /// Our certificate, chain and key; required on the server, optional on the client.
    pub identity: Option<CertifiedKey>,
    /// How the peer's certificate is verified.
    pub verify: PeerVerification,
    /// Server only: require a client certificate (mutual authentication).
    pub require_client_cert: bool,
}

/// A certificate with its private key and intermediate chain.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    /// The leaf certificate.
    pub certificate: X509,
    /// Intermediate certificates sent after the leaf.
    pub chain: Vec<X509>,
    /// The leaf's private key (EC or RSA).
    pub private_key: PKey<Private>,
}

/// How the peer's certificate is checked.
#[derive(Clone, Debug)]
pub enum PeerVerification {
    /// Verifies the chain against these roots; the client must also give the expected name.
    CaBundle {
        /// Trusted root certificates.
        roots: Vec<X509>,
        /// Name the peer certificate must carry (SAN DNS or IP); required on the client.
        expected_name: Option<ExpectedName>,
    },
    /// Accepts exactly this leaf certificate (compared as DER), regardless of issuer or expiry.
    PinnedCertificate(X509),
    /// Accepts any leaf whose SubjectPublicKeyInfo (DER) equals these bytes.
    PinnedPublicKey(Vec<u8>),
    /// Accepts any certificate. Only for tests and explicit operator opt-in.
    Insecure,
}

/// A name to check in the peer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedName {
    /// A DNS name (matched against SAN dNSName).
    Dns(String),
    /// An IP address (matched against SAN iPAddress).
    Ip(IpAddr),
}

/// Settings the association needs beyond the OpenSSL context.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub ctx: SslContext,
    pub fast_path: bool,
    pub mtu: u16,
    pub timer: ffi::TimerPolicy,
    pub expected_name: Option<ExpectedName>,
    /// Shortest body of a protected (epoch ≥ 1) record any configured suite can produce.
    pub min_sealed_body: usize,
    /// The cipher list offers DHE-PSK (servers ask before computing its key exchange).
    pub offers_dhe: bool,
    pub rekey: crate::RekeyPolicy,
}

/// A prepared client configuration; cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(crate) inner: Arc<Prepared>,
}

/// A prepared server configuration with its cookie secret; cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) inner: Arc<Prepared>,
}

impl ClientConfig {
    /// Builds the OpenSSL client context from `config`.
    pub fn new(config: &DtlsConfig) -> Result<Self, DtlsError> {
        let expected_name = match &config.credentials {
            Credentials::Certificate(CertificateCredentials {
                verify: PeerVerification::CaBundle { expected_name, .. },
                ..
            }) => {
                if expected_name.is_none() {
                    return Err(DtlsError::Config(
                        "CA verification on the client needs an expected peer name".into(),
                    ));
                }
                expected_name.clone()
            }
            _ => None,
        };
        let ctx = build_context(config, false)?;
        Ok(Self {
            inner: Arc::new(prepared(config, ctx, expected_name)),
        })
    }
}

impl ServerConfig {
    /// Builds the OpenSSL server context from `config`, with a fresh random cookie secret.
    pub fn new(config: &DtlsConfig) -> Result<Self, DtlsError> {
        if let Credentials::Certificate(c) = &config.credentials
            && c.identity.is_none()
        {
            return Err(DtlsError::Config(
                "a certificate-mode server needs a certificate".into(),
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::fill(&mut secret[..]).map_err(|_| DtlsError::Crypto("random cookie secret"))?;
        let mut ctx = builder(config, true)?;
        let key = Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &secret[..]));
        let gen_key = Arc::clone(&key);
        ctx.set_cookie_generate_cb(move |ssl, out| {
            let binding = ssl
                .ex_data(ffi::cookie_index()?)
                .cloned()
                .ok_or_else(openssl::error::ErrorStack::get)?;
            let cookie = cookie(&gen_key, &binding.peer, binding.bucket);
            let n = COOKIE_LEN.min(out.len());
            out[..n].copy_from_slice(&cookie[..n]);
            Ok(n)
        });
        ctx.set_cookie_verify_cb(move |ssl, got| verify_cookie(&key, ssl, got));
        let ctx = ctx.build();
        Ok(Self {
            inner: Arc::new(prepared(config, ctx, None)),
        })
    }
}

fn prepared(config: &DtlsConfig, ctx: SslContext, expected_name: Option<ExpectedName>) -> Prepared {
    // Before a suite is negotiated, a sealed record must be at least as long as the shortest
    // of those offered (the association checks the negotiated one's from then on).
    let suite = match &config.credentials {
        Credentials::Psk(p) => match p.suite {
            PskSuite::DhePskAes128GcmOrEcdhePskChaCha20 | PskSuite::EcdhePskChaCha20Poly1305 => {
                RecordSuite::ChaCha20Poly1305
            }
            PskSuite::PskAes128GcmNoForwardSecrecy => RecordSuite::Aes128Gcm,
        },
        Credentials::Certificate(_) => RecordSuite::Aes128Gcm,
    };
    let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1);
    Prepared {
        ctx,
        fast_path: config.fast_path,
        mtu: config.mtu,
        timer: ffi::TimerPolicy {
            initial_us: us(config.retransmit_initial),
            max_us: us(config.retransmit_max).max(us(config.retransmit_initial)),
        },
        expected_name,
        min_sealed_body: suite.overhead() - crate::RECORD_HEADER_LEN,
        offers_dhe: matches!(
            &config.credentials,
            Credentials::Psk(p) if p.suite == PskSuite::DhePskAes128GcmOrEcdhePskChaCha20
        ),
        rekey: config.rekey,
    }
}

fn cookie(key: &hmac::Key, peer: &[u8; 18], bucket: u64) -> [u8; 32] {
    let mut c = hmac::Context::with_key(key);
    c.update(&bucket.to_be_bytes());
    c.update(peer);
    let tag = c.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn verify_cookie(key: &hmac::Key, ssl: &mut SslRef, got: &[u8]) -> bool {
    let Some(binding) = ffi::cookie_index()
        .ok()
        .and_then(|i| ssl.ex_data(i))
        .cloned()
    else {
        return false;
    };
    if got.len() != COOKIE_LEN {
        return false;
    }
    [binding.bucket, binding.bucket.wrapping_sub(1)]
        .iter()
        .any(|b| ct_eq(&cookie(key, &binding.peer, *b)[..COOKIE_LEN], got))
}

/// Returns the cookie time bucket of `now`.
pub(crate) fn cookie_bucket(now: Duration) -> u64 {
    now.as_secs() / COOKIE_BUCKET.as_secs()
}

fn build_context(config: &DtlsConfig, server: bool) -> Result<SslContext, DtlsError> {
    Ok(builder(config, server)?.build())
}

fn builder(config: &DtlsConfig, server: bool) -> Result<SslContextBuilder, DtlsError> {
    let method = if server {
        SslMethod::dtls_server()
    } else {
        SslMethod::dtls_client()
    };
    let mut ctx = SslContextBuilder::new(method)?;
    ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    let mut options =
        SslOptions::NO_RENEGOTIATION | SslOptions::NO_TICKET | SslOptions::NO_QUERY_MTU;
    if server {
        options |= SslOptions::COOKIE_EXCHANGE | SslOptions::CIPHER_SERVER_PREFERENCE;
    }
    ctx.set_options(options);
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    match &config.credentials {
        Credentials::Psk(psk) => configure_psk(&mut ctx, psk, server)?,
        Credentials::Certificate(cert) => configure_cert(&mut ctx, cert, server)?,
    }
    Ok(ctx)
}

fn configure_psk(
    ctx: &mut SslContextBuilder,
    psk: &PskCredentials,
    server: bool,
) -> Result<(), DtlsError> {
    if psk.identity.is_empty() || psk.identity.len() > 128 || psk.identity.contains(&0) {
        return Err(DtlsError::Config(
            "PSK identity must be 1..=128 bytes without NUL".into(),
        ));
    }
    if psk.key.is_empty() || psk.key.len() > 256 {
        return Err(DtlsError::Config("PSK must be 1..=256 bytes".into()));
    }
    ctx.set_cipher_list(match psk.suite {
        PskSuite::DhePskAes128GcmOrEcdhePskChaCha20 => CIPHERS_PSK_DEFAULT,
        PskSuite::EcdhePskChaCha20Poly1305 => CIPHERS_ECDHE_PSK,
        PskSuite::PskAes128GcmNoForwardSecrecy => CIPHERS_PSK_AES,
    })?;
    if psk.suite == PskSuite::DhePskAes128GcmOrEcdhePskChaCha20 {
        // Security level 2 (112 bits) on both ends, whatever the library's built-in default
        // (Debian builds with 2, upstream OpenSSL 3.0 with 1): the server's automatic DHE
        // group is then 2048 bits, and a client refuses a smaller one. PSK contexts carry no
        // certificates, so the level bounds nothing else here.
        ctx.set_security_level(2);
        if server {
            ffi::set_dh_auto(ctx)?;
        }
    }
    ctx.set_verify(SslVerifyMode::NONE);
    let identity = psk.identity.clone();
    let key = psk.key.clone();
    if server {
        ffi::set_psk_identity_hint(ctx, PSK_IDENTITY_HINT)?;
        ctx.set_psk_server_callback(move |_ssl, client_identity, out| {
            // An unknown identity gets no key, which fails the handshake.
            if client_identity != Some(&identity[..]) || out.len() < key.len() {
                return Ok(0);
            }
            out[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
    } else {
        ctx.set_psk_client_callback(move |_ssl, _hint, id_out, key_out| {
            // id_out must receive a NUL-terminated identity.
            if id_out.len() <= identity.len() || key_out.len() < key.len() {
                return Ok(0);
            }
            id_out[..identity.len()].copy_from_slice(&identity);
            id_out[identity.len()] = 0;
            key_out[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
    }
    Ok(())
}

fn configure_cert(
    ctx: &mut SslContextBuilder,
    cert: &CertificateCredentials,
    server: bool,
) -> Result<(), DtlsError> {
    ctx.set_cipher_list(CIPHERS_CERT)?;
    if let Some(id) = &cert.identity {
        ctx.set_certificate(&id.certificate)?;
        for c in &id.chain {
            ctx.add_extra_chain_cert(c.clone())?;
        }
        ctx.set_private_key(&id.private_key)?;
        ctx.check_private_key()?;
    }
    let mut mode = SslVerifyMode::PEER;
    if server && cert.require_client_cert {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    match &cert.verify {
        PeerVerification::CaBundle { roots, .. } => {
            if roots.is_empty() {
                return Err(DtlsError::Config("CA bundle is empty".into()));
            }
            let mut store = X509StoreBuilder::new()?;
            for r in roots {
                store.add_cert(r.clone())?;
            }
            ctx.set_verify_cert_store(store.build())?;
            ctx.set_verify(mode);
        }
        PeerVerification::PinnedCertificate(pin) => {
            let pin = pin.to_der()?;
            ctx.set_verify_callback(mode, move |_preverified, store| {
                leaf_der(store).is_some_and(|der| ct_eq(&der, &pin))
            });
        }
        PeerVerification::PinnedPublicKey(pin) => {
            let pin = pin.clone();
            ctx.set_verify_callback(mode, move |_preverified, store| {
                leaf_spki(store).is_some_and(|der| ct_eq(&der, &pin))
            });
        }
        PeerVerification::Insecure => {
            ctx.set_verify_callback(mode, |_preverified, _store| true);
        }
    }
    Ok(())
}

/// Returns the peer's leaf certificate from a verification context.
fn leaf(store: &X509StoreContextRef) -> Option<&openssl::x509::X509Ref> {
    match store.chain().and_then(|c| c.iter().next()) {
        Some(l) => Some(l),
        None if store.error_depth() == 0 => store.current_cert(),
        None => None,
    }
}

fn leaf_der(store: &X509StoreContextRef) -> Option<Vec<u8>> {
    leaf(store)?.to_der().ok()
}

fn leaf_spki(store: &X509StoreContextRef) -> Option<Vec<u8>> {
    leaf(store)?.public_key().ok()?.public_key_to_der().ok()
}

/// Compares two byte strings in constant time (for equal lengths); never panics.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}
