//! The TCP link codec of the node (`daemon/connectopus/src/links/tcp.rs` and its TLS record
//! layer `tls_records.rs`, compiled here from the node's own source files, since they live in
//! the binary crate): 2-byte length framing, plain or inside TLS 1.3.
//!
//! Modes: plain TCP bytes in arbitrary chunks; raw bytes at a TLS server (a hostile
//! handshake); plaintext of the attacker's choosing sent by a real rustls client over an
//! established session (rustls seals, the node's record layer opens); and raw bytes at the
//! record layer after a real handshake (forged records). Never a panic; the messages that
//! come out are exactly the frames of the plaintext, as a reference parser reads them, until
//! the codec refuses the stream.

#![no_main]

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[allow(dead_code)]
#[path = "../../daemon/connectopus/src/links/tcp.rs"]
mod tcp;

#[allow(dead_code)]
#[path = "../../daemon/connectopus/src/links/tls_records.rs"]
mod tls_records;

use tcp::TcpCodec;

struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = CertificateDer::from_pem_slice(include_bytes!("../fixtures/server.crt"))
            .expect("fixture certificate");
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/server.key"))
            .expect("fixture key");
        let ca = CertificateDer::from_pem_slice(include_bytes!("../fixtures/ca.crt"))
            .expect("fixture CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("the CA");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            client: Arc::new(client),
            server: Arc::new(server),
        }
    })
}

fn server_codec() -> TcpCodec {
    TcpCodec::tls(tls_records::TlsSession::server(&tls().server).expect("server connection"))
}

/// A real rustls client and the node's server codec, handshake done.
fn established() -> (rustls::ClientConnection, TcpCodec) {
    let name = ServerName::try_from("fuzz.test").expect("a name");
    let mut client =
        rustls::ClientConnection::new(tls().client.clone(), name).expect("client connection");
    let mut server = server_codec();
    let mut to_client = Vec::new();
    for _ in 0..4 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client output");
        }
        server
            .receive(&to_server, &mut to_client)
            .expect("handshake at the server");
        let mut input = &std::mem::take(&mut to_client)[..];
        while !input.is_empty() {
            client.read_tls(&mut input).expect("client input");
            client
                .process_new_packets()
                .expect("handshake at the client");
        }
    }
    assert!(!client.is_handshaking() && server.is_ready());
    (client, server)
}

/// The frames of `stream` as the protocol defines them (zero-length frames carry nothing).
fn reference_frames(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while let Some(header) = stream.first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*header));
        let Some(body) = stream.get(2..2 + len) else {
            break;
        };
        if len > 0 {
            frames.push(body);
        }
        stream = &stream[2 + len..];
    }
    frames
}

/// Feeds `wire` to `codec` in chunks of `chunk` bytes; returns the messages popped and
/// whether the codec refused the stream.
fn drain(codec: &mut TcpCodec, wire: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut got = Vec::new();
    let mut out = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        if codec.receive(piece, &mut out).is_err() {
            return (got, true);
        }
        while let Some(range) = codec.pop_message() {
            got.push(codec.buffer_mut()[range].to_vec());
        }
    }
    (got, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode >> 2) * 7 + 1;
    match mode % 4 {
        0 => {
            let (got, refused) = drain(&mut TcpCodec::plain(), rest, chunk);
            let want = reference_frames(rest);
            if refused {
                assert!(want.starts_with(&got.iter().map(Vec::as_slice).collect::<Vec<_>>()));
            } else {
                assert_eq!(got, want);
            }
        }
        1 => {
            let mut codec = server_codec();
            let (got, _) = drain(&mut codec, rest, chunk);
            assert!(got.is_empty(), "no message before a handshake");
        }
        2 => {
            let (mut client, mut server) = established();
            // The attacker writes any plaintext (not only well-formed frames) into the session.
            client.writer().write_all(rest).expect("plaintext");
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client output");
            }
            let (got, refused) = drain(&mut server, &wire, chunk);
            let want = reference_frames(rest);
            if refused {
                assert!(want.starts_with(&got.iter().map(Vec::as_slice).collect::<Vec<_>>()));
            } else {
                assert_eq!(got, want);
            }
        }
        _ => {
            // Raw bytes where records belong: none can be opened (no key), so none may yield
            // a message.
            let (_client, mut server) = established();
            let (got, _) = drain(&mut server, rest, chunk);
            assert!(got.is_empty(), "a forged record yielded a message");
        }
    }
});
