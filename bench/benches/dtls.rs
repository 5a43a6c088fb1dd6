//! DTLS record seal+open of a 1,400-byte payload: aws-lc-rs fast path vs OpenSSL's record
//! layer; and a whole PSK handshake (both ends' CPU) per suite.

use std::hint::black_box;
use std::time::Duration;

use connectopus_dtls::PskSuite;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PAYLOAD: usize = 1400;

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("dtls_seal_open_1400");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, suite) in [
        ("chacha20poly1305", PskSuite::EcdhePskChaCha20Poly1305),
        ("aes128gcm", PskSuite::DhePskAes128GcmOrEcdhePskChaCha20),
    ] {
        for (path, fast) in [("fast", true), ("openssl", false)] {
            let (mut tx, mut rx) = bench::dtls_pair(suite, fast);
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

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("dtls_psk_handshake");
    group.sample_size(20);
    for (name, suite) in [
        (
            "dhe-psk-aes128gcm",
            PskSuite::DhePskAes128GcmOrEcdhePskChaCha20,
        ),
        ("ecdhe-psk-chacha20", PskSuite::EcdhePskChaCha20Poly1305),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(bench::dtls_pair(suite, true)))
        });
    }
    group.finish();
}

criterion_group!(benches, seal_open, handshake);
criterion_main!(benches);
