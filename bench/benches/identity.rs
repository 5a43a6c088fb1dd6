//! Micro-benchmarks of node identity: verifying signed link-state updates (what a node does
//! for every update it receives), and a full route computation preceded by verifying every
//! origin's update (a cold start).

use std::hint::black_box;
use std::net::Ipv6Addr;

use connectopus_core::identity::{self, NodeKey};
use connectopus_core::route::{NodeView, SpfOptions, compute_routes};
use connectopus_wire::{Adjacency, Cost, LinkStateUpdate, SignedUpdate};
use criterion::{Criterion, criterion_group, criterion_main};

fn addr(i: u32) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00_u128 << 112) | (u128::from(i) + 1))
}

/// `n` signed updates of a ring mesh with chords (mean degree about 4).
fn signed_updates(n: u32) -> Vec<(LinkStateUpdate, Vec<u8>, [u8; 32])> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            seed[31] = 1;
            let key = NodeKey::from_seed(&seed);
            let mut update = LinkStateUpdate {
                origin: addr(i),
                epoch: 1,
                sequence: 1,
                name: format!("n{i}"),
                config_version: 1,
                adjacencies: [1, n - 1, n / 2 + i % 7, 3]
                    .iter()
                    .map(|d| Adjacency {
                        peer: addr((i + d) % n),
                        cost: Cost::DEFAULT,
                    })
                    .collect(),
                prefixes: Vec::new(),
                names: Vec::new(),
                names4: Vec::new(),
                extensions: Vec::new(),
            };
            update.canonicalize();
            let body = update.encode_body();
            let raw = identity::sign_update(Some(&key), &body);
            (update, raw, key.public())
        })
        .collect()
}

fn verify_all(updates: &[(LinkStateUpdate, Vec<u8>, [u8; 32])]) -> usize {
    updates
        .iter()
        .filter(|(_, raw, key)| {
            let Ok(signed) = SignedUpdate::parse(raw) else {
                return false;
            };
            signed.signature.is_some_and(|s| {
                s.key == *key
                    && identity::verify(key, &identity::update_message(signed.body), &s.signature)
            })
        })
        .count()
}

fn bench(c: &mut Criterion) {
    let updates = signed_updates(10_000);
    assert_eq!(verify_all(&updates), 10_000);
    let mut group = c.benchmark_group("identity");
    group.sample_size(10);
    group.bench_function("verify_10000_updates", |b| {
        b.iter(|| black_box(verify_all(black_box(&updates))))
    });
    let small = signed_updates(1_000);
    group.bench_function("verify_and_spf_1000", |b| {
        b.iter(|| {
            let ok = verify_all(&small);
            let views = small.iter().map(|(u, _, _)| NodeView {
                address: u.origin,
                adjacencies: &u.adjacencies,
                prefixes: &u.prefixes,
            });
            let routes = compute_routes(
                addr(0),
                views,
                SpfOptions {
                    require_bidirectional: true,
                },
            );
            black_box((ok, routes.nodes.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
