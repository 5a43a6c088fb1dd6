//! rustls configurations for TCP+TLS backends: TLS 1.3 only, server name verified, optional
//! mutual authentication, optional pinning of the listener's exact certificate.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use connectopus_config::Secret;

/// aws-lc-rs with the TLS 1.3 suites in the order links want them: AES-128-GCM first (the
/// library's default puts AES-256-GCM first, whose 14 rounds cost about 15 % more per byte
/// with AES instructions: `openssl speed` 6.5 against 5.6 GB/s here), then AES-256-GCM and
/// ChaCha20-Poly1305 for peers that offer only those.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn certs(secret: &Secret, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = secret
        .resolve()
        .with_context(|| format!("reading {what}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes.expose())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{what}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        bail!("{what}: no certificate found");
    }
    Ok(certs)
}

fn key(secret: &Secret, what: &str) -> Result<PrivateKeyDer<'static>> {
    let bytes = secret
        .resolve()
        .with_context(|| format!("reading {what}"))?;
    PrivateKeyDer::from_pem_slice(bytes.expose())
        .map_err(|e| anyhow!("{what}: not a PEM private key: {e}"))
}

fn roots(secret: &Secret, what: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certs(secret, what)? {
        store
            .add(cert)
            .map_err(|e| anyhow!("{what}: unusable CA certificate: {e}"))?;
    }
    Ok(store)
}

/// Settings of a TLS listener.
#[derive(Debug)]
pub struct ListenerTls<'a> {
    /// The server certificate chain.
    pub server_cert: &'a Secret,
    /// The server key.
    pub server_key: &'a Secret,
    /// CA that client certificates must chain to; required when `require_client_cert`.
    pub client_ca: Option<&'a Secret>,
    /// Refuse clients without a valid certificate.
    pub require_client_cert: bool,
}

/// Builds the rustls server configuration of a TLS listener.
///
/// # Errors
/// Unreadable or invalid certificates or keys, named by the config key.
pub fn server_config(settings: &ListenerTls<'_>) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?;
    let builder = match (settings.client_ca, settings.require_client_cert) {
        (Some(ca), require) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client_ca")?),
                provider,
            );
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().context("client_ca")?)
        }
        (None, true) => bail!("require_client_cert needs client_ca"),
        (None, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            certs(settings.server_cert, "server_cert")?,
            key(settings.server_key, "server_key")?,
        )
        .context("server_cert and server_key do not match")?;
    // Tickets the client never reads turn its close into a reset.
    config.send_tls13_tickets = 0;
    // The listener's suite order decides, so a dialer of an earlier version (which put
    // AES-256-GCM first) gets AES-128-GCM too.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Settings of a TLS dialer.
#[derive(Debug)]
pub struct DialerTls<'a> {
    /// The name the listener's certificate must carry.
    pub server_name: String,
    /// CA the listener's certificate must chain to.
    pub root_ca: Option<&'a Secret>,
    /// The exact certificate the listener must present (instead of a CA).
    pub pinned_cert: Option<&'a Secret>,
    /// Client certificate for mutual authentication.
    pub client_cert: Option<&'a Secret>,
    /// Client key for mutual authentication.
    pub client_key: Option<&'a Secret>,
    /// Accept any listener certificate (unsafe; for tests and migrations).
    pub insecure_skip_verify: bool,
}

/// Builds the rustls client configuration of a TLS dialer and the name it checks.
///
/// # Errors
/// Unreadable or invalid certificates or keys, or no way to verify the listener.
pub fn client_config(settings: &DialerTls<'_>) -> Result<(Arc<ClientConfig>, ServerName<'static>)> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?;
    let algorithms = provider.signature_verification_algorithms;
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer { algorithms }))
    } else if let Some(pinned) = settings.pinned_cert {
        let pinned = certs(pinned, "pinned_cert")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("pinned_cert: no certificate"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer { pinned, algorithms }))
    } else if let Some(ca) = settings.root_ca {
        builder.with_root_certificates(roots(ca, "root_ca")?)
    } else {
        bail!("a TLS dialer needs root_ca or pinned_cert (or insecure_skip_verify)");
    };
    let config = match (settings.client_cert, settings.client_key) {
        (Some(cert), Some(k)) => builder
            .with_client_auth_cert(certs(cert, "client_cert")?, key(k, "client_key")?)
            .context("client_cert and client_key do not match")?,
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("client_cert and client_key go together"),
    };
    let name = ServerName::try_from(settings.server_name.clone())
        .map_err(|_| anyhow!("invalid server name {:?}", settings.server_name))?;
    Ok((Arc::new(config), name))
}

/// Accepts any server certificate (`insecure_skip_verify`) or exactly one (`pinned_cert`),
/// and checks handshake signatures either way.
#[derive(Debug)]
struct AnyServer {
    algorithms: WebPkiSupportedAlgorithms,
}

/// Accepts exactly one server certificate, byte for byte.
#[derive(Debug)]
struct PinnedServer {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Implements `ServerCertVerifier` from a certificate check; signatures are verified with the
/// provider's algorithms.
macro_rules! verifier {
    ($ty:ty, |$this:ident, $cert:ident| $check:expr) => {
        impl ServerCertVerifier for $ty {
            fn verify_server_cert(
                &self,
                $cert: &CertificateDer<'_>,
                _intermediates: &[CertificateDer<'_>],
                _server_name: &ServerName<'_>,
                _ocsp_response: &[u8],
                _now: UnixTime,
            ) -> Result<ServerCertVerified, rustls::Error> {
                let $this = self;
                if $check {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }

            fn verify_tls12_signature(
                &self,
                message: &[u8],
                cert: &CertificateDer<'_>,
                dss: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
            }

            fn verify_tls13_signature(
                &self,
                message: &[u8],
                cert: &CertificateDer<'_>,
                dss: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
            }

            fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
                self.algorithms.supported_schemes()
            }
        }
    };
}

verifier!(AnyServer, |_this, _end_entity| true);
verifier!(PinnedServer, |this, end_entity| end_entity.as_ref()
    == this.pinned.as_ref());

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use connectopus_config::SecretKind;

    /// A self-signed P-256 certificate for `link.test` and its key, as PEM (made with
    /// openssl, the binary's dependency).
    pub(crate) fn self_signed() -> (String, String) {
        use openssl::asn1::Asn1Time;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        use openssl::x509::extension::SubjectAlternativeName;
        use openssl::x509::{X509, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "link.test").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns("link.test")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let cert = String::from_utf8(b.build().to_pem().unwrap()).unwrap();
        let key = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (cert, key)
    }

    /// Runs a handshake in memory and returns the suite both ends agreed on.
    fn negotiate(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> rustls::CipherSuite {
        let name = ServerName::try_from("link.test").unwrap();
        let mut c = rustls::ClientConnection::new(client, name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(s.negotiated_cipher_suite().unwrap().suite(), suite);
        suite
    }

    /// A listener's and a dialer's configuration for `link.test` as the node builds them, and
    /// the self-signed certificate the dialer trusts.
    pub(crate) fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>, Secret) {
        let (cert, key) = self_signed();
        let cert = Secret::inline(SecretKind::Certificate, cert);
        let key = Secret::inline(SecretKind::PrivateKey, key);
        let server = server_config(&ListenerTls {
            server_cert: &cert,
            server_key: &key,
            client_ca: None,
            require_client_cert: false,
        })
        .unwrap();
        let (client, _) = client_config(&DialerTls {
            server_name: "link.test".into(),
            root_ca: Some(&cert),
            pinned_cert: None,
            client_cert: None,
            client_key: None,
            insecure_skip_verify: false,
        })
        .unwrap();
        (server, client, cert)
    }

    #[test]
    fn links_agree_on_aes_128_gcm_also_with_a_dialer_that_prefers_aes_256() {
        let (server, client, cert) = configs();
        assert_eq!(
            negotiate(client, server.clone()),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // A dialer with the library's order (AES-256-GCM first), as earlier nodes had.
        let mut roots = RootCertStore::empty();
        roots
            .add(certs(&cert, "root_ca").unwrap().remove(0))
            .unwrap();
        let earlier = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            negotiate(Arc::new(earlier), server),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}
