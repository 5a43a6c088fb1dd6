//! Micro-benchmarks of the router: longest-prefix lookup, and a full route recomputation
//! (Dijkstra plus rebuilding the prefix table) on random meshes.

use std::hint::black_box;
use std::net::Ipv6Addr;

use connectopus_core::route::{NodeView, PrefixTable, SpfOptions, compute_routes};
use connectopus_wire::{Adjacency, Cost, Prefix, PrefixAdvert};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Node address of node `i`: `fd00::/96` plus the index.
fn node_addr(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))
}

/// The /64 subnet node `i` delivers: `fd01:0:<i>::/64`.
fn subnet(i: u32) -> Prefix {
    let addr = Ipv6Addr::from(0xfd01_u128 << 112 | u128::from(i) << 64);
    Prefix::new_truncating(addr, 64).unwrap_or(Prefix::host(addr))
}

/// A table of `n` prefixes, half /128 and half /64, and addresses that hit them (alternating
/// between the two lengths, with random host bits for the /64s).
fn lookup_fixture(n: u32) -> (PrefixTable<u32>, Vec<Ipv6Addr>) {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut table = PrefixTable::new();
    let mut probes = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            table.insert(Prefix::host(node_addr(i)), i);
            probes.push(node_addr(i));
        } else {
            let prefix = subnet(i);
            table.insert(prefix, i);
            let host: u64 = rng.random();
            probes.push(Ipv6Addr::from(u128::from(prefix.addr()) | u128::from(host)));
        }
    }
    // Visit the probes in random order so the hash maps are not walked sequentially.
    for i in (1..probes.len()).rev() {
        probes.swap(i, rng.random_range(0..=i));
    }
    (table, probes)
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10u32, 1_000, 100_000] {
        let (table, probes) = lookup_fixture(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(table.lookup(black_box(probes[i])))
            });
        });
    }
    group.finish();
}

/// Owned link-state views of a random connected mesh with mean degree 4: a random spanning
/// tree plus as many extra random links, costs 1.0 to 5.0; every node advertises its /128 and
/// one /64.
struct Mesh {
    nodes: Vec<(Ipv6Addr, Vec<Adjacency>, Vec<PrefixAdvert>)>,
}

impl Mesh {
    fn random(n: u32, seed: u64) -> Mesh {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut nodes: Vec<_> = (0..n)
            .map(|i| {
                let prefixes = vec![
                    PrefixAdvert {
                        prefix: Prefix::host(node_addr(i)),
                        cost: Cost(0),
                    },
                    PrefixAdvert {
                        prefix: subnet(i),
                        cost: Cost::DEFAULT,
                    },
                ];
                (node_addr(i), Vec::new(), prefixes)
            })
            .collect();
        let mut link = |nodes: &mut Vec<(Ipv6Addr, Vec<Adjacency>, _)>, x: u32, y: u32| {
            let cost = Cost(rng.random_range(1..=5) * 1000);
            nodes[x as usize].1.push(Adjacency {
                peer: node_addr(y),
                cost,
            });
            nodes[y as usize].1.push(Adjacency {
                peer: node_addr(x),
                cost,
            });
        };
        let mut pairs = Vec::new();
        let mut pick = SmallRng::seed_from_u64(seed ^ 0x5eed);
        for i in 1..n {
            pairs.push((i, pick.random_range(0..i)));
        }
        for _ in 0..n {
            let (x, y) = (pick.random_range(0..n), pick.random_range(0..n));
            if x != y {
                pairs.push((x, y));
            }
        }
        for (x, y) in pairs {
            link(&mut nodes, x, y);
        }
        Mesh { nodes }
    }

    fn views(&self) -> impl Iterator<Item = NodeView<'_>> {
        self.nodes.iter().map(|(address, adj, pfx)| NodeView {
            address: *address,
            adjacencies: adj,
            prefixes: pfx,
        })
    }
}

/// What a node does when the link-state database changes: recompute routes and rebuild the
/// prefix table that forwarding looks up (value: the next hop, or this node for local ones).
fn rebuild(mesh: &Mesh, self_addr: Ipv6Addr) -> PrefixTable<Ipv6Addr> {
    let options = SpfOptions {
        require_bidirectional: true,
    };
    let routes = compute_routes(self_addr, mesh.views(), options);
    let mut table = PrefixTable::new();
    for (prefix, route) in &routes.prefixes {
        table.insert(*prefix, route.first_hop.unwrap_or(self_addr));
    }
    table
}

fn spf_and_table_rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("spf_and_table_rebuild");
    for n in [1_000u32, 10_000] {
        let mesh = Mesh::random(n, 42);
        let self_addr = node_addr(0);
        // Every node is reachable: each advertises two prefixes.
        assert_eq!(rebuild(&mesh, self_addr).len(), 2 * n as usize);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(rebuild(&mesh, black_box(self_addr))));
        });
    }
    group.finish();
}

criterion_group!(benches, route_lookup, spf_and_table_rebuild);
criterion_main!(benches);
