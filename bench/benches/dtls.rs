//! DTLS record seal+open of a 1,400-byte payload: aws-lc-rs fast path vs OpenSSL's record layer.

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
        ("aes128gcm", PskSuite::PskAes128GcmNoForwardSecrecy),
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

criterion_group!(benches, seal_open);
criterion_main!(benches);
