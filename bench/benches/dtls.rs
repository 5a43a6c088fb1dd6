//! DTLS record seal+open of a 1,400-byte payload: aws-lc-rs fast path vs OpenSSL's record layer.

use std::hint::black_box;
use std::time::Duration;

use connectopus_dtls::{
    ClientConfig, Credentials, DtlsAssociation, DtlsConfig, PskCredentials, PskSuite, ServerConfig,
    State,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PAYLOAD: usize = 1400;
const PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 4242);

/// Runs an in-memory handshake between two associations of the given suite and path.
fn pair(suite: PskSuite, fast_path: bool) -> (DtlsAssociation, DtlsAssociation) {
    let mut creds = PskCredentials::new("bench", b"benchmark pre-shared key 0123456".to_vec());
    creds.suite = suite;
    let mut cfg = DtlsConfig::new(Credentials::Psk(creds));
    cfg.fast_path = fast_path;
    let now = Duration::ZERO;
    let client_cfg = ClientConfig::new(&cfg).expect("client config");
    let server_cfg = ServerConfig::new(&cfg).expect("server config");
    let mut c = DtlsAssociation::client(&client_cfg, now).expect("client");
    let mut s = DtlsAssociation::server(&server_cfg, PEER, now).expect("server");
    for _ in 0..100 {
        if *c.state() == State::Established && *s.state() == State::Established {
            break;
        }
        while let Some(mut d) = c.poll_transmit() {
            let _ = s.handle_datagram(now, &mut d);
        }
        while let Some(mut d) = s.poll_transmit() {
            let _ = c.handle_datagram(now, &mut d);
        }
    }
    assert_eq!(*c.state(), State::Established, "handshake failed");
    assert_eq!(c.fast_path_active(), fast_path);
    (c, s)
}

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("dtls_seal_open_1400");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, suite) in [
        ("chacha20poly1305", PskSuite::EcdhePskChaCha20Poly1305),
        ("aes128gcm", PskSuite::PskAes128GcmNoForwardSecrecy),
    ] {
        for (path, fast) in [("fast", true), ("openssl", false)] {
            let (mut tx, mut rx) = pair(suite, fast);
            let overhead = tx.overhead().expect("overhead");
            let mut buf = vec![0x5Au8; PAYLOAD + overhead];
            group.bench_function(format!("{name}/{path}/seal+open"), |b| {
                b.iter(|| {
                    let n = tx.seal_in_place(&mut buf, PAYLOAD).expect("seal");
                    let got = rx
                        .handle_datagram(Duration::ZERO, &mut buf[..n])
                        .expect("open");
                    assert_eq!(got.len(), 1);
                    black_box(got.get(0));
                });
            });
            group.bench_function(format!("{name}/{path}/seal"), |b| {
                b.iter(|| black_box(tx.seal_in_place(&mut buf, PAYLOAD).expect("seal")));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
