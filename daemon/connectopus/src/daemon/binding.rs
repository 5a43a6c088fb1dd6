//! The channel binding of a link: what node hellos sign on (D)TLS links.
//!
//! Both ends of one (D)TLS session derive the same RFC 5705 exporter value, so a hello signed
//! over it cannot be replayed on another session or relayed between two. A plain TCP link has
//! none (its hellos sign the peer's challenge instead, see `docs/protocol.md`). A (D)TLS link
//! whose exporter fails is an error, never a link without a binding: it is closed.

use super::Transport;

// The RFC 5705 exporter label of the channel binding that node hellos sign (a TCP+TLS link's
// codec computes its value when rustls hands the session over).
use crate::links::tcp::CHANNEL_BINDING_LABEL;

/// Returns the link's channel binding: `Ok(None)` for plain TCP and plaintext UDP.
///
/// # Errors
/// The (D)TLS exporter failed; the caller closes the link.
pub(super) fn channel_binding(transport: &Transport) -> Result<Option<[u8; 32]>, String> {
    match transport {
        Transport::Dtls(d) => {
            let value = d
                .association
                .export_keying_material(CHANNEL_BINDING_LABEL, None, 32)
                .map_err(|e| format!("DTLS exporter: {e}"))?;
            <[u8; 32]>::try_from(value.as_slice())
                .map(Some)
                .map_err(|_| format!("DTLS exporter gave {} bytes, not 32", value.len()))
        }
        Transport::Tcp(t) => codec_binding(&t.codec),
        // Announced (and bound) before it went to a worker thread.
        Transport::TcpOnWorker { .. } => Err("the link's TLS is on a worker thread".to_owned()),
        // Plaintext: hellos sign the challenge the peer chose, as on plain TCP.
        Transport::PlainUdp(_) => Ok(None),
    }
}

/// The binding of a TCP link's codec: `Ok(None)` without TLS, an error if TLS cannot export.
fn codec_binding(codec: &crate::links::tcp::TcpCodec) -> Result<Option<[u8; 32]>, String> {
    codec
        .channel_binding()
        .map_err(|e| format!("TLS exporter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tcp::TcpCodec;
    use crate::links::tls;

    /// A TLS link whose exporter fails (here: its handshake has not finished) has no binding
    /// and is reported as an error, which `announce_if_ready` turns into closing the link;
    /// only plain TCP gets `None`.
    #[test]
    fn an_exporter_failure_is_an_error_never_a_link_without_binding() {
        let (config, name) = tls::client_config(&tls::DialerTls {
            server_name: "bar.example".into(),
            root_ca: None,
            pinned_cert: None,
            client_cert: None,
            client_key: None,
            insecure_skip_verify: true,
        })
        .unwrap();
        let session = crate::links::tls_records::TlsSession::client(&config, name).unwrap();
        let codec = TcpCodec::tls(session);
        assert!(!codec.is_ready());
        assert!(codec_binding(&codec).is_err());
        assert_eq!(codec_binding(&TcpCodec::plain()), Ok(None));
    }
}
