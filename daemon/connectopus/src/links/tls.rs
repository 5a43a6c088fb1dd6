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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
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
