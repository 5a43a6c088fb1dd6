//! The CPU-local data path (`--cpu-local`): each worker thread pinned to its own CPU, the TUN
//! steering program putting a flow in the queue of the CPU that produced it, and each DTLS
//! port's reuseport program giving a record to the worker on the CPU that received it. Pings
//! sent from one CPU are read from the TUN, opened at the peer, answered and opened again by
//! the workers of that CPU; from the other CPU by the other workers. The same bytes arrive
//! both ways through a transit node, and key updates cross the shared receiving direction.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, parse_ping, require_root, require_tools,
    run_test, transfer_both_ways,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);
const PINGS: u64 = 100;

/// The CPUs this test may use: the node pins its workers to the first two.
fn two_cpus() -> Option<(usize, usize)> {
    let cpus: Vec<usize> = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| {
            list.trim()
                .split(',')
                .flat_map(|part| {
                    let mut ends = part
                        .split('-')
                        .filter_map(|n| n.trim().parse::<usize>().ok());
                    let first = ends.next();
                    let last = ends.next().or(first);
                    first.zip(last).map(|(a, b)| a..=b).into_iter().flatten()
                })
                .collect()
        })?;
    Some((*cpus.first()?, *cpus.get(1)?))
}

fn workers_of(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

/// `field` of each worker, by worker index.
fn per_worker(status: &Value, field: &str) -> Vec<u64> {
    workers_of(status)
        .iter()
        .map(|w| w[field].as_u64().unwrap_or(0))
        .collect()
}

fn ping_from_cpu(ns: &NetNs, cpu: usize, dst: std::net::Ipv6Addr) -> Result<()> {
    let (cpu, count, dst) = (cpu.to_string(), PINGS.to_string(), dst.to_string());
    let output = ns.exec_timeout(
        "taskset",
        &[
            "-c", &cpu, "ping", "-6", "-n", "-c", &count, "-i", "0.01", "-W", "1", &dst,
        ],
        Duration::from_secs(30),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    let result = parse_ping(&text);
    ensure!(
        result.received == result.transmitted && result.transmitted == PINGS as u32,
        "pings from CPU {cpu}: {text}"
    );
    Ok(())
}

/// `PINGS` pings from foo (in `pinger_ns`) to bar sent on `cpu`: foo reads the requests from its TUN queue and
/// opens the replies, bar opens the requests and reads the replies from its queue, all on
/// worker `worker` (the one pinned to `cpu`), give or take a tenth.
fn pings_stay_on_the_worker_of_their_cpu(
    mesh: &Mesh,
    pinger_ns: &NetNs,
    worker: usize,
    cpu: usize,
) -> Result<()> {
    let (foo_before, bar_before) = (mesh.status("foo")?, mesh.status("bar")?);
    ping_from_cpu(pinger_ns, cpu, mesh.address("bar"))?;
    let (foo_after, bar_after) = (mesh.status("foo")?, mesh.status("bar")?);
    let delta = |before: &Value, after: &Value, field: &str| -> Vec<u64> {
        per_worker(after, field)
            .iter()
            .zip(per_worker(before, field))
            .map(|(a, b)| a.saturating_sub(b))
            .collect()
    };
    for (what, counts) in [
        (
            "foo's TUN reads",
            delta(&foo_before, &foo_after, "tun_reads"),
        ),
        (
            "records foo opened",
            delta(&foo_before, &foo_after, "records_opened"),
        ),
        (
            "records bar opened",
            delta(&bar_before, &bar_after, "records_opened"),
        ),
        (
            "bar's TUN reads",
            delta(&bar_before, &bar_after, "tun_reads"),
        ),
    ] {
        let here = counts.get(worker).copied().unwrap_or(0);
        ensure!(
            here >= PINGS * 9 / 10,
            "{what} for {PINGS} pings from CPU {cpu}, by worker: {counts:?} \
             (worker {worker} is on CPU {cpu})"
        );
    }
    Ok(())
}

fn cpu_local_mesh<'a>(topo: &'a Topology, links: &[MeshLink]) -> Result<Mesh<'a>> {
    let mut mesh = Mesh::configure(topo, links)?;
    mesh.set_log_level("info");
    mesh.add_args_all(&["--workers", "2", "--cpu-local"]);
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    Ok(mesh)
}

#[test]
fn a_packet_stays_on_the_workers_of_the_cpu_it_appeared_on() {
    require_root!();
    require_tools(&["ping", "taskset"]);
    let Some((first, second)) = two_cpus() else {
        eprintln!("skipped: the CPU-local data path needs two CPUs");
        return;
    };
    run_test("cpu_local_pair", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = cpu_local_mesh(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        for name in ["foo", "bar"] {
            let status = mesh.status(name)?;
            let on = status["cpu_local"].as_str().unwrap_or_default();
            ensure!(
                on == format!("on: worker 0 on CPU {first}, worker 1 on CPU {second}"),
                "{name}: {status}"
            );
            let cpus: Vec<String> = workers_of(&status)
                .iter()
                .map(|w| w["cpu"].as_str().unwrap_or_default().to_owned())
                .collect();
            ensure!(
                cpus == [format!("CPU {first}"), format!("CPU {second}")],
                "{name}'s workers: {cpus:?}"
            );
            let text = mesh.status_text(name)?;
            ensure!(text.contains("cpu-local: on"), "{name}: {text}");
        }
        for (worker, cpu) in [(0, first), (1, second), (0, first)] {
            pings_stay_on_the_worker_of_their_cpu(&mesh, topo.ns("foo"), worker, cpu)?;
        }
        Ok(())
    });
}

#[test]
fn the_same_bytes_cross_a_cpu_local_transit_node() {
    require_root!();
    require_tools(&["python3"]);
    if two_cpus().is_none() {
        eprintln!("skipped: the CPU-local data path needs two CPUs");
        return;
    }
    run_test("cpu_local_line", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let links = [
            MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
            MeshLink::new("bar", "baz", LinkKind::DtlsCert),
        ];
        let mesh = cpu_local_mesh(&topo, &links)?;
        transfer_both_ways(
            &topo,
            ("foo", mesh.address("foo")),
            ("baz", mesh.address("baz")),
            (7101, 50_000_000, 11),
            "through a cpu-local transit node",
        )?;
        let status = mesh.status("bar").context("bar's status")?;
        let opened = per_worker(&status, "records_opened");
        ensure!(
            opened.iter().sum::<u64>() >= 20_000,
            "bar's workers opened {opened:?} records of 100 MB"
        );
        Ok(())
    });
}

/// The epochs of the first link in `status`: (send, receive).
fn epochs(status: &Value) -> Option<(u64, u64)> {
    let e = &status["links"].as_array()?.first()?["dtls_epochs"];
    Some((e[0].as_u64()?, e[1].as_u64()?))
}

/// Key updates once a second while pings cross from both CPUs: the shared receiving direction
/// moves on to each new epoch (a worker opens its first record, the control plane derives the
/// keys after it) on whichever worker receives it, with nothing lost.
#[test]
fn key_updates_cross_the_shared_receiving_direction() {
    require_root!();
    require_tools(&["ping", "taskset"]);
    let Some((first, second)) = two_cpus() else {
        eprintln!("skipped: the CPU-local data path needs two CPUs");
        return;
    };
    run_test("cpu_local_rekey", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.set_env("CONNECTOPUS_TEST_DTLS_REKEY_SECS", "1");
        mesh.add_args_all(&["--workers", "2", "--cpu-local"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let status = mesh.status("foo")?;
        let link = status["links"][0]["link"].clone();
        let before = epochs(&status).context("foo's dtls epochs")?;
        // 100 pings 10 ms apart from each CPU in turn, three times: about 6 s.
        for cpu in [first, second, first, second, first, second] {
            ping_from_cpu(topo.ns("foo"), cpu, mesh.address("bar"))?;
        }
        let status = mesh.status("foo")?;
        let after = epochs(&status).context("foo's dtls epochs")?;
        ensure!(
            after.0 >= before.0 + 3 && after.1 >= before.1 + 3,
            "foo's epochs {before:?} -> {after:?} over 6 s of pings"
        );
        ensure!(
            status["links"][0]["link"] == link,
            "foo's link was replaced: {status}"
        );
        Ok(())
    });
}

/// Every worker thread of both nodes fails (`CONNECTOPUS_TEST_FAIL_WORKER`, test-only) after a
/// few packets: the main loops take back the links' shared receiving direction and forward
/// themselves, and pings keep crossing the same link.
#[test]
fn the_main_loop_takes_the_links_back_when_every_worker_stops() {
    require_root!();
    require_tools(&["ping", "taskset"]);
    let Some((first, second)) = two_cpus() else {
        eprintln!("skipped: the CPU-local data path needs two CPUs");
        return;
    };
    run_test("cpu_local_all_fail", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.set_log_level("info");
        mesh.set_env("CONNECTOPUS_TEST_FAIL_WORKER", "0:30,1:30");
        mesh.add_args_all(&["--workers", "2", "--cpu-local"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let link = mesh.status("foo")?["links"][0]["link"].clone();
        let bar = mesh.address("bar");
        // Enough packets from each CPU for both workers of both nodes to reach their fault.
        for cpu in [first, second] {
            let (c, dst) = (cpu.to_string(), bar.to_string());
            topo.ns("foo").exec_timeout(
                "taskset",
                &[
                    "-c", &c, "ping", "-6", "-n", "-c", "60", "-i", "0.01", "-W", "1", &dst,
                ],
                Duration::from_secs(30),
            )?;
        }
        let all_stopped = connectopus_tests::wait_until(
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let stopped = |name: &str| {
                    mesh.status(name).is_ok_and(|s| {
                        let ws = workers_of(&s);
                        ws.len() == 2
                            && ws.iter().all(|w| {
                                w["state"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .starts_with("stopped")
                            })
                    })
                };
                stopped("foo") && stopped("bar")
            },
        );
        ensure!(
            all_stopped.is_ok(),
            "not every worker stopped: foo {} bar {}",
            mesh.status("foo")?["workers"],
            mesh.status("bar")?["workers"]
        );
        for cpu in [first, second] {
            ping_from_cpu(topo.ns("foo"), cpu, bar)?;
        }
        let status = mesh.status("foo")?;
        ensure!(
            status["links"][0]["link"] == link,
            "foo's link was replaced: {status}"
        );
        ensure!(
            status["control_plane"]["records_opened"]
                .as_u64()
                .unwrap_or(0)
                >= PINGS,
            "foo's main loop should open the replies now: {status}"
        );
        Ok(())
    });
}

/// A change to `global` makes both nodes re-execute themselves (a new mesh instance, a new TUN
/// device) under the seccomp filter and without the capabilities they dropped, where the
/// steering program cannot be loaded and a thread could not be pinned. They come back
/// CPU-local all the same (the program handed across the exec, the pins allowed), and the
/// cost of a wake-up measured again.
#[test]
fn a_node_that_restarts_itself_stays_cpu_local() {
    require_root!();
    require_tools(&["ping", "taskset", "ssh-keygen"]);
    let Some((first, second)) = two_cpus() else {
        eprintln!("skipped: the CPU-local data path needs two CPUs");
        return;
    };
    run_test("cpu_local_restart", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = cpu_local_mesh(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.restart_instances_with_a_global_change("foo")?;
        for name in ["foo", "bar"] {
            let status = mesh.status(name)?;
            let seccomp = status["seccomp"].as_str().unwrap_or_default();
            ensure!(seccomp.starts_with("on ("), "{name}: seccomp {seccomp}");
            let on = status["cpu_local"].as_str().unwrap_or_default();
            ensure!(
                on == format!("on: worker 0 on CPU {first}, worker 1 on CPU {second}"),
                "{name} after its restart: cpu_local {on:?}"
            );
            let idle_wake = status["idle_wake"].as_str().unwrap_or_default();
            ensure!(
                !idle_wake.starts_with("not measured"),
                "{name} after its restart: idle wake-ups {idle_wake:?}"
            );
        }
        for (worker, cpu) in [(0, first), (1, second)] {
            pings_stay_on_the_worker_of_their_cpu(&mesh, topo.ns("foo"), worker, cpu)?;
        }
        Ok(())
    });
}
