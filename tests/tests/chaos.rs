//! Chaos with real nodes: 8 nodes in a ring with two chords, over DTLS, TCP and TCP+TLS
//! links, under a seeded schedule of faults: SIGKILL and restart of a node, a link cut (veth
//! down) and restored, 5 % or 30 % loss on a link (nftables `numgen`), 50 ms ± 20 ms delay on
//! a link (both directions, through the user-space relay `link_delay`: this kernel has no
//! netem), and a signed config change spread while a link loses 30 %.
//!
//! After each fault: every live node reaches every other (ping over the mesh) within the dead
//! interval plus the SPF delay plus slack, every node runs the same config version, names
//! resolve (dig), and no node died or panicked; file descriptors, threads and RSS are sampled
//! and their growth is bounded and reported, as is the slowest recovery. The seed is printed;
//! `CHAOS_SEED=<seed>` replays a run and `CHAOS_FAULTS=<n>` sets the number of faults
//! (default 30, about 2.5 minutes; 100 took 8).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{
    Delay, Direction, LinkKind, Loss, Mesh, MeshLink, Topology, dig, ping6, require_root, run_test,
    wait_until,
};

const NODES: [&str; 8] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"];
/// The mesh's dead interval (tests/src/mesh.rs) plus the SPF delay and slack for a loaded
/// 2-core machine running 8 debug nodes.
const RECOVER: Duration = Duration::from_secs(7 + 1 + 12);

/// xorshift64*: a small seeded generator, so a seed replays the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What is sampled of a node process to find leaks.
#[derive(Clone, Copy, Debug)]
struct Usage {
    fds: usize,
    threads: u64,
    /// Resident memory, KiB.
    rss: u64,
}

/// Open file descriptors, threads and resident memory of a process.
fn sample(pid: u32) -> Option<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Usage {
        fds,
        threads: field("Threads:")?,
        rss: field("VmRSS:")?,
    })
}

fn links() -> Vec<(usize, usize)> {
    let mut links: Vec<(usize, usize)> = (0..8).map(|i| (i, (i + 1) % 8)).collect();
    links.extend([(0, 4), (2, 6)]);
    links
}

/// Every node pings every other node's mesh address; each pair must get an answer within
/// [`RECOVER`] (pairs are retried on their own: under 30 % loss a sweep where every ping
/// must succeed at once would almost never pass). Returns how long it took.
fn all_reach(mesh: &Mesh<'_>, topo: &Topology) -> Result<Duration> {
    let start = Instant::now();
    let mut pending: Vec<(&str, &str)> = NODES
        .iter()
        .flat_map(|a| NODES.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| a != b)
        .collect();
    wait_until(RECOVER, Duration::from_millis(300), || {
        pending.retain(|(from, to)| {
            !ping6(topo.ns(from), mesh.address(to), 1, 56, &["-W", "1"])
                .is_ok_and(|p| p.all_received())
        });
        pending.is_empty()
    })
    .with_context(|| {
        let routes: Vec<String> = NODES
            .iter()
            .map(|n| format!("{n}: {:?}", mesh.status(n).map(|s| s["routes"].clone())))
            .collect();
        format!(
            "these pairs never reached each other: {pending:?}\nroutes:\n{}",
            routes.join("\n")
        )
    })?;
    Ok(start.elapsed())
}

fn same_version(mesh: &Mesh<'_>, version: u64) -> Result<()> {
    let versions = || -> Vec<u64> {
        NODES
            .iter()
            .map(|n| mesh.config_version(n).unwrap_or(0))
            .collect()
    };
    wait_until(RECOVER, Duration::from_millis(300), || {
        versions().iter().all(|v| *v == version)
    })
    .with_context(|| format!("not every node runs version {version}: {:?}", versions()))
}

fn names_resolve(mesh: &Mesh<'_>, topo: &Topology, rng: &mut Rng) -> Result<()> {
    let at = NODES[rng.below(8)];
    let name = NODES[rng.below(8)];
    let fqdn = format!("{name}.connectopus.test");
    let want = mesh.address(name).to_string();
    let server = IpAddr::V6(mesh.address(at));
    let mut last = None;
    wait_until(RECOVER, Duration::from_millis(300), || {
        let answer = dig(topo.ns(at), server, &fqdn, "AAAA", false);
        let ok = answer.as_ref().is_ok_and(|a| {
            a.answers
                .iter()
                .any(|r| r.rtype == "AAAA" && r.data == want)
        });
        last = Some(answer.map(|a| a.answers));
        ok
    })
    .with_context(|| format!("{at} does not resolve {fqdn} to {want}: {last:?}"))
}

#[test]
fn eight_nodes_survive_a_seeded_schedule_of_faults() {
    require_root!();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let faults: usize = std::env::var("CHAOS_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {faults} faults");
    run_test("chaos", |dir| {
        let start = Instant::now();
        let mut rng = Rng(seed);
        let pairs = links();
        let mut builder = Topology::builder();
        for n in NODES {
            builder = builder.node(n);
        }
        for (a, b) in &pairs {
            builder = builder.link(NODES[*a], NODES[*b]);
        }
        let topo = builder.build(dir)?;
        let kinds = [LinkKind::DtlsPsk, LinkKind::Tcp, LinkKind::TcpTls];
        let mesh_links: Vec<MeshLink> = pairs
            .iter()
            .enumerate()
            .map(|(k, (a, b))| MeshLink::new(NODES[*a], NODES[*b], kinds[k % 3]))
            .collect();
        let mut mesh = Mesh::configure(&topo, &mesh_links)?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(60))?;
        all_reach(&mesh, &topo)?;

        let pid = |mesh: &Mesh<'_>, n: &str| mesh.process(n).map(|p| p.pid());
        // Each node's process and its usage when it was (re)started and had a session.
        let mut baseline: BTreeMap<&str, (u32, Usage)> = BTreeMap::new();
        for n in NODES {
            let p = pid(&mesh, n).context("a node without a process")?;
            baseline.insert(n, (p, sample(p).context("sampling /proc")?));
        }
        let mut version = 1u64;
        let original = std::fs::read_to_string(mesh.config_path())?;
        let mut counts = [0usize; 5];
        // The slowest recovery: (how long every pair took to reach each other, which fault).
        let mut slowest = (Duration::ZERO, String::new());
        for i in 0..faults {
            let what = rng.below(5);
            counts[what] += 1;
            let description;
            let recovered;
            match what {
                0 => {
                    let n = NODES[rng.below(8)];
                    description = format!("SIGKILL and restart {n}");
                    eprintln!("chaos: fault {i}: {description}");
                    mesh.kill(n)?;
                    mesh.start(n)?;
                    let p = pid(&mesh, n).context("restarted")?;
                    // A new process: its own baseline once it answers.
                    wait_until(RECOVER, Duration::from_millis(200), || {
                        mesh.status(n).is_ok()
                    })?;
                    baseline.insert(n, (p, sample(p).context("sampling /proc")?));
                    recovered = all_reach(&mesh, &topo)?;
                }
                1 => {
                    let (a, b) = pairs[rng.below(pairs.len())];
                    description = format!("cut {}—{} and restore it", NODES[a], NODES[b]);
                    eprintln!("chaos: fault {i}: {description}");
                    let veth = &topo.link(NODES[a], NODES[b]).veth;
                    veth.set_up(false)?;
                    let cut = all_reach(&mesh, &topo);
                    veth.set_up(true)?;
                    recovered = cut.context("with the link cut")?;
                    all_reach(&mesh, &topo)?;
                }
                2 => {
                    let (a, b) = pairs[rng.below(pairs.len())];
                    let percent = [5, 30][rng.below(2)];
                    description = format!("{percent} % loss on {}—{}", NODES[a], NODES[b]);
                    eprintln!("chaos: fault {i}: {description}");
                    let loss = Loss::new(
                        topo.ns(NODES[a]),
                        topo.iface(NODES[a], NODES[b]),
                        Direction::Both,
                        percent,
                    )?;
                    recovered = all_reach(&mesh, &topo)?;
                    drop(loss);
                }
                3 => {
                    let (a, b) = pairs[rng.below(pairs.len())];
                    let (na, nb) = (NODES[a], NODES[b]);
                    description = format!("50 ± 20 ms delay each way on {na}—{nb}");
                    eprintln!("chaos: fault {i}: {description}");
                    let delays = [
                        Delay::new(topo.ns(na), topo.iface(na, nb), 50, 20, rng.next())?,
                        Delay::new(topo.ns(nb), topo.iface(nb, na), 50, 20, rng.next())?,
                    ];
                    recovered = all_reach(&mesh, &topo)?;
                    // The delay is real: a ping between the link's ends over the underlay
                    // takes at least the two 30 ms minimums.
                    let rtt = ping6(topo.ns(na), topo.link_addr(nb, na), 3, 56, &["-W", "2"])?;
                    let fastest = rtt.rtts_ms.iter().copied().reduce(f64::min);
                    ensure!(
                        fastest.is_some_and(|ms| ms >= 60.0),
                        "the delay on {na}—{nb} is not in effect: {rtt:?}"
                    );
                    drop(delays);
                }
                _ => {
                    let (a, b) = pairs[rng.below(pairs.len())];
                    let at = NODES[rng.below(8)];
                    version += 1;
                    description = format!(
                        "config version {version} set at {at} while {}—{} loses 30 %",
                        NODES[a], NODES[b]
                    );
                    eprintln!("chaos: fault {i}: {description}");
                    let loss = Loss::new(
                        topo.ns(NODES[a]),
                        topo.iface(NODES[a], NODES[b]),
                        Direction::Both,
                        30,
                    )?;
                    let v = dir.join(format!("v{version}.yml"));
                    std::fs::write(
                        &v,
                        original.replace("  version: 1\n", &format!("  version: {version}\n"))
                            + &format!("  # chaos change {version}\n"),
                    )?;
                    connectopus_tests::ssh_sign(&v, mesh.admin_key(), "connectopus")?;
                    let (ok, out) = mesh.config_set(at, &v)?;
                    ensure!(ok, "{at} refused version {version}: {out}");
                    let spread = Instant::now();
                    same_version(&mesh, version)?;
                    recovered = spread.elapsed();
                    drop(loss);
                }
            }
            if recovered > slowest.0 {
                slowest = (recovered, format!("fault {i}: {description}"));
            }
            same_version(&mesh, version).with_context(|| format!("after fault {i}"))?;
            names_resolve(&mesh, &topo, &mut rng).with_context(|| format!("after fault {i}"))?;
            for n in NODES {
                let Some(process) = mesh.process(n) else {
                    bail!("{n} has no process after fault {i}");
                };
                let p = process.pid();
                ensure!(
                    sample(p).is_some() && process.is_running(),
                    "{n} (pid {p}) died after fault {i} ({description})\n{}",
                    process.log_tails()
                );
                ensure!(
                    !process.stderr().contains("panicked"),
                    "{n} (pid {p}) panicked after fault {i} ({description})\n{}",
                    process.log_tails()
                );
            }
            eprintln!(
                "chaos: fault {i} ({description}) survived at {:.0?}, every pair reached in {recovered:.1?}",
                start.elapsed()
            );
        }
        let mut report = String::new();
        let mut leaks = Vec::new();
        for n in NODES {
            let (p, was) = baseline[n];
            let now = sample(p).context("sampling /proc")?;
            report.push_str(&format!(
                "{n}: fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB\n",
                was.fds, now.fds, was.threads, now.threads, was.rss, now.rss
            ));
            if now.fds > was.fds + 16 {
                leaks.push(format!("{n} leaks file descriptors"));
            }
            // Backends retried and DNS or config-check threads come and go; more than a few
            // extra would be a leak.
            if now.threads > was.threads + 4 {
                leaks.push(format!("{n} leaks threads"));
            }
            if now.rss > was.rss * 2 + 32 * 1024 {
                leaks.push(format!("{n}'s memory grew"));
            }
        }
        eprintln!(
            "chaos: seed {seed}: {faults} faults survived in {:.0?} ({} SIGKILL+restart, {} link \
             cuts, {} loss periods, {} delay periods, {} config changes under loss); slowest \
             recovery {:.1?} ({})\n{report}",
            start.elapsed(),
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            counts[4],
            slowest.0,
            slowest.1,
        );
        ensure!(leaks.is_empty(), "{}\n{report}", leaks.join("; "));
        Ok(())
    });
}
