//! Several dataplane workers (`--workers N`): the same bytes arrive with one worker and with
//! two, through DTLS links and plaintext udp links and a transit node; parallel UDP streams
//! stay in order; the worker threads really read their TUN queues and really receive the links
//! given to them (the transit node's two links on two workers: DTLS records opened, udp
//! datagrams received on the thread); and a worker that fails ends cleanly, its flows move to
//! the other worker, its links go back to the main loop without being lost, and `status` says
//! why it stopped. TCP and TLS links are read and written on the worker thread given them
//! once their session is established; a failed worker gives its TCP link back in the middle
//! of a transfer without dropping the session, and the routing stream (a configuration
//! change) still crosses a TCP link a worker owns. With two workers both are threads of their
//! own, apart from the control plane's, and established traffic keeps flowing while the
//! control plane is blocked.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, TestDir, Topology, checked_transfer,
    checked_transfer_paced, iperf3_client, iperf3_server, require_root, require_tools, run_test,
    wait_until,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// Bytes of each checked transfer.
const BYTES: u64 = 100_000_000;

/// Sends small UDP datagrams from 64 sockets (64 flows, so the kernel's hash spreads them over
/// every TUN queue) to `[dst]:9`, `rounds` per socket, 10 ms apart.
const MANY_FLOWS: &str = r#"
import socket, sys, time
dst, rounds = sys.argv[1], int(sys.argv[2])
socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(64)]
for _ in range(rounds):
    for s in socks:
        try:
            s.sendto(b"flow", (dst, 9))
        except OSError:
            pass
    time.sleep(0.01)
print("sent", flush=True)
"#;

/// Receives on `[addr]:9` until datagrams of 64 different source ports arrived (or 60 s
/// passed), then prints how many.
const FLOW_RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9))
s.settimeout(0.5)
print("listening", flush=True)
ports, deadline = set(), time.time() + 60
while len(ports) < 64 and time.time() < deadline:
    try:
        _, addr = s.recvfrom(100)
        ports.add(addr[1])
    except socket.timeout:
        pass
print("flows %d" % len(ports), flush=True)
"#;

/// Sends 64 flows from `from` to `dst` and checks that every one of them arrived at `to`
/// (whichever worker's queue the kernel steered it to).
fn every_flow_arrives(topo: &Topology, from: &str, to: &str, dst: Ipv6Addr) -> Result<()> {
    let receiver = topo
        .ns(to)
        .spawn("python3", &["-c", FLOW_RECEIVER, &dst.to_string()])?;
    receiver.wait_for_output("listening", Duration::from_secs(10))?;
    // One sender, so each flow keeps its source port (and its queue) for all its rounds.
    send_flows(topo, from, dst, 100)?;
    let said = receiver.wait_for_output("flows", Duration::from_secs(70))?;
    ensure!(
        said.contains("flows 64"),
        "not every flow from {from} arrived at {to}: {said}"
    );
    Ok(())
}

fn workers_of(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

/// A foo—bar—baz line over links of `kind`.
fn line(dir: &TestDir, kind: LinkKind) -> Result<(Topology, Vec<MeshLink>)> {
    let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
    let links = vec![
        MeshLink::new("bar", "foo", kind),
        MeshLink::new("bar", "baz", kind),
    ];
    Ok((topo, links))
}

/// The mesh of a line over `kind` links; plaintext udp links without the eBPF fast path, so
/// userspace (the workers) carries their data.
fn mesh_of<'a>(
    topo: &'a Topology,
    links: &[MeshLink],
    kind: LinkKind,
    workers: usize,
) -> Result<Mesh<'a>> {
    let mut mesh = Mesh::configure(topo, links)?;
    mesh.set_log_level("info");
    mesh.add_args_all(&["--workers", &workers.to_string()]);
    if kind == LinkKind::Udp {
        mesh.set_env("CONNECTOPUS_DISABLE_FASTPATH", "1");
    }
    Ok(mesh)
}

fn is_tcp(kind: LinkKind) -> bool {
    matches!(kind, LinkKind::Tcp | LinkKind::TcpTls)
}

/// What a worker counts of the links it receives: DTLS records it opened, plaintext udp
/// datagrams it received, reads from the TCP/TLS streams it owns.
fn received_by(w: &Value, kind: LinkKind) -> u64 {
    let field = match kind {
        LinkKind::Udp => "datagrams_received",
        LinkKind::Tcp | LinkKind::TcpTls => "tcp_reads",
        _ => "records_opened",
    };
    w[field].as_u64().unwrap_or(0)
}

/// What a worker received of a link carrying 20 MB or more: a record or datagram per packet,
/// a TCP read per up to 64 KiB of the stream.
fn many(kind: LinkKind) -> u64 {
    if is_tcp(kind) { 200 } else { 10_000 }
}

/// The links a worker receives (DTLS, plaintext udp) or reads and writes (TCP/TLS).
fn links_of(w: &Value) -> u64 {
    w["receive_links"].as_u64().unwrap_or(0) + w["tcp_links"].as_u64().unwrap_or(0)
}

fn send_flows(topo: &Topology, from: &str, dst: Ipv6Addr, rounds: u32) -> Result<()> {
    topo.ns(from).exec_ok(
        "python3",
        &["-c", MANY_FLOWS, &dst.to_string(), &rounds.to_string()],
    )?;
    Ok(())
}

fn transfers_with(workers: usize, kind: LinkKind, dir: &TestDir) -> Result<()> {
    require_tools(&["python3"]);
    let (topo, links) = line(dir, kind)?;
    let mut mesh = mesh_of(&topo, &links, kind, workers)?;
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
    for (i, (from, to, dst)) in [("foo", "baz", baz_addr), ("baz", "foo", foo_addr)]
        .into_iter()
        .enumerate()
    {
        let transfer = checked_transfer(
            topo.ns(from),
            topo.ns(to),
            dst,
            7001 + i as u16,
            BYTES,
            i as u64 + 1,
            Duration::from_secs(180),
        )?;
        ensure!(
            transfer.intact(),
            "{from} -> {to} with {workers} worker(s) lost or changed bytes: {transfer:?}"
        );
    }
    // Many flows: with two workers the kernel steers some of them to worker 1's queue, which
    // seals their records itself; every flow arrives.
    every_flow_arrives(&topo, "foo", "baz", baz_addr)?;
    for name in ["foo", "bar", "baz"] {
        let status = mesh.status(name)?;
        let ws = workers_of(&status);
        ensure!(
            ws.len() == workers,
            "{name} runs {} workers: {status}",
            ws.len()
        );
        for w in &ws {
            ensure!(w["state"] == "running", "{name}'s worker: {w}");
            let mq = w["tun_multi_queue"].as_str().unwrap_or_default();
            if workers > 1 {
                ensure!(mq.starts_with("on"), "{name}'s worker multi-queue: {w}");
            } else {
                ensure!(mq.starts_with("off: "), "{name}'s worker multi-queue: {w}");
            }
        }
        ensure!(
            status["counters"]["udp_send_errors"].as_u64() == Some(0),
            "{name}: {}",
            status["counters"]
        );
        if workers > 1 {
            // Every worker is a thread; the main loop is the control plane and holds no
            // established link.
            let control = &status["control_plane"];
            ensure!(
                control["receive_links"] == 0 && control["tcp_links"] == 0,
                "{name}'s control plane holds no established link: {control}"
            );
            for w in &ws {
                ensure!(
                    w["thread"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("worker-")),
                    "{name}'s worker runs on a thread of its own: {w}"
                );
            }
        } else {
            ensure!(
                status["control_plane"].is_null() && ws[0]["thread"] == "main loop",
                "{name}'s one worker is the main loop: {status}"
            );
        }
    }
    if workers > 1 {
        // Worker 1 of foo read from its own TUN queue (the counters arrive every 100 ms) and
        // sealed every packet for the DTLS link (or sent it on the udp link) itself: nothing
        // went through the main loop.
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            mesh.status("foo").is_ok_and(|s| {
                workers_of(&s)
                    .get(1)
                    .and_then(|w| w["tun_reads"].as_u64())
                    .is_some_and(|n| n > 0)
            })
        })
        .map_err(|_| anyhow::anyhow!("foo's worker 1 read nothing: {:?}", mesh.status("foo")))?;
        let status = mesh.status("foo")?;
        let w1 = &workers_of(&status)[1];
        ensure!(
            w1["handed_to_main"].as_u64() == Some(0),
            "foo's worker 1 handed traffic to the main loop: {w1}"
        );
        // The transit node bar receives its two links on its two worker threads, each on a
        // socket of its own, which opened that link's records (or received its datagrams)
        // itself (200 MB went through bar).
        let bar = mesh.status("bar")?;
        let ws = workers_of(&bar);
        let links = links_of;
        ensure!(
            ws.len() == 2 && links(&ws[0]) == 1 && links(&ws[1]) == 1,
            "bar's links are received by workers 0 and 1: {ws:?}"
        );
        for w in &ws {
            ensure!(
                w["udp_reuseport"] == "on",
                "bar's worker has SO_REUSEPORT: {w}"
            );
        }
        let received_on_thread = || {
            mesh.status("bar")
                .ok()
                .and_then(|s| workers_of(&s).get(1).map(|w| received_by(w, kind)))
        };
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            received_on_thread().is_some_and(|n| n > many(kind))
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "bar's worker 1 did not receive the link given to it: {:?}",
                mesh.status("bar")
            )
        })?;
        ensure!(
            received_by(&ws[0], kind) > many(kind),
            "bar's worker 0 received the other link: {}",
            ws[0]
        );
        if is_tcp(kind) {
            // foo's one link is read and written on worker 1: the main loop (the control
            // plane) read it only until its session was established.
            let status = mesh.status("foo")?;
            let ws = workers_of(&status);
            ensure!(
                ws[1]["tcp_links"] == 1 && ws[0]["tcp_links"] == 0,
                "foo's worker 1 owns its tcp link: {ws:?}"
            );
            ensure!(
                received_by(&ws[1], kind) > many(kind) && received_by(&ws[0], kind) < 50,
                "foo's tcp link is read on worker 1: {ws:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn transfers_are_intact_with_one_worker() {
    require_root!();
    run_test("workers_1", |dir| transfers_with(1, LinkKind::DtlsPsk, dir));
}

#[test]
fn transfers_are_intact_with_two_workers() {
    require_root!();
    run_test("workers_2", |dir| transfers_with(2, LinkKind::DtlsPsk, dir));
}

/// Plaintext udp links: the transit node receives one on each worker.
#[test]
fn udp_link_transfers_are_intact_with_two_workers() {
    require_root!();
    run_test("workers_2_udp", |dir| transfers_with(2, LinkKind::Udp, dir));
}

/// Plain TCP links: each is read and written on the worker thread given to it.
#[test]
fn tcp_link_transfers_are_intact_with_two_workers() {
    require_root!();
    run_test("workers_2_tcp", |dir| transfers_with(2, LinkKind::Tcp, dir));
}

/// TLS links: decrypted and encrypted on the worker thread that owns the link.
#[test]
fn tls_link_transfers_are_intact_with_two_workers() {
    require_root!();
    run_test("workers_2_tls", |dir| {
        transfers_with(2, LinkKind::TcpTls, dir)
    });
}

/// Four parallel UDP streams through a line of `kind` links with two workers: nothing arrives
/// out of order.
fn parallel_streams_in_order(kind: LinkKind, dir: &TestDir) -> Result<()> {
    require_tools(&["iperf3"]);
    let (topo, links) = line(dir, kind)?;
    let mut mesh = mesh_of(&topo, &links, kind, 2)?;
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    let baz_addr = mesh.address("baz");
    let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz_addr)), 5201)?;
    let result = iperf3_client(
        topo.ns("foo"),
        baz_addr,
        &IperfOptions {
            seconds: 3,
            parallel: 4,
            udp_bitrate: Some("50M".to_owned()),
            ..IperfOptions::default()
        },
    )?;
    drop(server);
    ensure!(
        result.out_of_order == Some(0),
        "UDP datagrams arrived out of order over {kind:?} links: {result:?}"
    );
    Ok(())
}

#[test]
fn parallel_udp_streams_stay_in_order_with_two_workers() {
    require_root!();
    run_test("workers_udp_order", |dir| {
        parallel_streams_in_order(LinkKind::DtlsPsk, dir)
    });
}

/// The same through plaintext udp links, received (and, on the transit node, batched) on
/// worker threads.
#[test]
fn parallel_udp_streams_stay_in_order_over_udp_links_with_two_workers() {
    require_root!();
    run_test("workers_udp_order_udp", |dir| {
        parallel_streams_in_order(LinkKind::Udp, dir)
    });
}

/// Worker 1 of foo fails after 50 TUN packets (test-only fault injection): it ends, `status`
/// shows it stopped with the reason, the kernel moves its flows to worker 0's queue, the link
/// it received goes back to the main loop and on to worker 0 (the same link, not a new one),
/// and a transfer started afterwards arrives intact.
fn a_failed_worker_with(kind: LinkKind, dir: &TestDir) -> Result<()> {
    require_tools(&["python3"]);
    let (topo, links) = line(dir, kind)?;
    let mut mesh = mesh_of(&topo, &links, kind, 2)?;
    mesh.start("bar")?;
    mesh.start("baz")?;
    mesh.set_env("CONNECTOPUS_TEST_FAIL_WORKER", "1:50");
    mesh.start("foo")?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
    // foo's one link goes to worker 1 (the last worker thread on a tie).
    wait_until(CONVERGE, Duration::from_millis(100), || {
        mesh.status("foo").is_ok_and(|s| {
            workers_of(&s)
                .get(1)
                .is_some_and(|w| w["receive_links"] == 1)
        })
    })
    .map_err(|_| anyhow::anyhow!("foo's worker 1 receives its link: {:?}", mesh.status("foo")))?;
    let link_of = |status: &Value| -> Option<(u64, String)> {
        let l = status["links"].as_array()?.first()?.clone();
        Some((l["link"].as_u64()?, l["since_unix"].to_string()))
    };
    let link_before = link_of(&mesh.status("foo")?);
    // Many flows until worker 1 has read its 50 packets and failed.
    let stopped = || -> Option<String> {
        let status = mesh.status("foo").ok()?;
        let w = workers_of(&status).get(1).cloned()?;
        w["state"]
            .as_str()
            .filter(|s| s.starts_with("stopped"))
            .map(str::to_owned)
    };
    wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let _ = send_flows(&topo, "foo", baz_addr, 2);
        stopped().is_some()
    })
    .map_err(|_| anyhow::anyhow!("foo's worker 1 never failed: {:?}", mesh.status("foo")))?;
    let state = stopped().unwrap_or_default();
    ensure!(
        state.contains("CONNECTOPUS_TEST_FAIL_WORKER") && state.contains("after 50 TUN packets"),
        "the reason is shown: {state}"
    );
    let text = mesh.status_text("foo")?;
    ensure!(
        text.contains("worker 1 (worker-1) stopped: test fault"),
        "status text: {text}"
    );
    // The link came back to the main loop, which gave it to worker 0: the same link, still
    // up.
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        mesh.status("foo").is_ok_and(|s| {
            let ws = workers_of(&s);
            ws.first().is_some_and(|w| w["receive_links"] == 1)
                && ws.get(1).is_some_and(|w| w["receive_links"] == 0)
                && s["control_plane"]["receive_links"] == 0
        })
    })
    .map_err(|_| {
        anyhow::anyhow!(
            "foo's worker 0 receives the link now: {:?}",
            mesh.status("foo")
        )
    })?;
    let foo_status = mesh.status("foo")?;
    let ws = workers_of(&foo_status);
    ensure!(
        link_before.is_some() && link_of(&foo_status) == link_before,
        "foo's link survived its worker: {link_before:?} then {}",
        foo_status["links"]
    );
    let received_before = received_by(&ws[0], kind);
    // New flows (and the old ones) now all go through worker 0.
    for (i, (from, to, dst)) in [("foo", "baz", baz_addr), ("baz", "foo", foo_addr)]
        .into_iter()
        .enumerate()
    {
        let transfer = checked_transfer(
            topo.ns(from),
            topo.ns(to),
            dst,
            7101 + i as u16,
            20_000_000,
            i as u64 + 7,
            Duration::from_secs(120),
        )?;
        ensure!(
            transfer.intact(),
            "{from} -> {to} after the failure: {transfer:?}"
        );
    }
    every_flow_arrives(&topo, "foo", "baz", baz_addr)?;
    let foo_status = mesh.status("foo")?;
    let received_after = received_by(&workers_of(&foo_status)[0], kind);
    ensure!(
        received_after > received_before + 10_000,
        "foo's worker 0 received baz's 20 MB: {received_before} -> {received_after}"
    );
    ensure!(
        link_of(&foo_status) == link_before,
        "foo's link survived: {link_before:?} then {}",
        foo_status["links"]
    );
    let before = workers_of(&mesh.status("foo")?)[0]["tun_reads"]
        .as_u64()
        .unwrap_or(0);
    send_flows(&topo, "foo", baz_addr, 5)?;
    // Worker 0 is a thread: its counters reach `status` every 100 ms.
    let reads = || {
        mesh.status("foo")
            .ok()
            .and_then(|s| workers_of(&s).first().and_then(|w| w["tun_reads"].as_u64()))
            .unwrap_or(0)
    };
    let _ = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        reads() >= before + 64 * 5
    });
    let after = reads();
    ensure!(
        after >= before + 64 * 5,
        "worker 0 read every flow's packets: {before} -> {after}"
    );
    ensure!(
        mesh.process("foo").is_some_and(|p| p.is_running()),
        "foo still runs"
    );
    Ok(())
}

#[test]
fn a_failed_worker_hands_its_flows_to_the_others() {
    require_root!();
    run_test("workers_fail", |dir| {
        a_failed_worker_with(LinkKind::DtlsPsk, dir)
    });
}

#[test]
fn a_failed_worker_gives_its_udp_link_back() {
    require_root!();
    run_test("workers_fail_udp", |dir| {
        a_failed_worker_with(LinkKind::Udp, dir)
    });
}

/// Worker 1 of foo owns foo's TCP/TLS link and fails (test fault) while baz sends foo 40 MB
/// over it: the worker gives the link back between two complete reads and writes, the main
/// loop continues the same stream (the same link and session, no redial) and hands it on to
/// worker 0, and the transfer arrives intact.
fn a_failed_worker_gives_back_with(kind: LinkKind, dir: &TestDir) -> Result<()> {
    require_tools(&["python3"]);
    let (topo, links) = line(dir, kind)?;
    let mut mesh = mesh_of(&topo, &links, kind, 2)?;
    mesh.start("bar")?;
    mesh.start("baz")?;
    mesh.set_env("CONNECTOPUS_TEST_FAIL_WORKER", "1:50");
    mesh.start("foo")?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
    wait_until(CONVERGE, Duration::from_millis(100), || {
        mesh.status("foo")
            .is_ok_and(|s| workers_of(&s).get(1).is_some_and(|w| w["tcp_links"] == 1))
    })
    .map_err(|_| anyhow::anyhow!("foo's worker 1 owns its link: {:?}", mesh.status("foo")))?;
    let link_of = |status: &Value| -> Option<(u64, String)> {
        let l = status["links"].as_array()?.first()?.clone();
        Some((l["link"].as_u64()?, l["since_unix"].to_string()))
    };
    let link_before = link_of(&mesh.status("foo")?);
    let stopped = || -> bool {
        mesh.status("foo").is_ok_and(|s| {
            workers_of(&s)
                .get(1)
                .and_then(|w| w["state"].as_str().map(|s| s.starts_with("stopped")))
                .unwrap_or(false)
        })
    };
    let (transfer, tripped) = std::thread::scope(|scope| {
        // 40 MB at 4 MB/s: under way for seconds while worker 1 fails.
        let transfer = scope.spawn(|| {
            checked_transfer_paced(
                topo.ns("baz"),
                topo.ns("foo"),
                foo_addr,
                7201,
                40_000_000,
                11,
                4_000_000,
                Duration::from_secs(180),
            )
        });
        // Wait until worker 1 has read some of it, then many flows until it fails.
        let _ = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            mesh.status("foo").is_ok_and(|s| {
                workers_of(&s)
                    .get(1)
                    .is_some_and(|w| received_by(w, kind) > 20)
            })
        });
        let tripped = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            stopped() || {
                let _ = send_flows(&topo, "foo", baz_addr, 2);
                stopped()
            }
        });
        (transfer.join(), tripped)
    });
    tripped
        .map_err(|_| anyhow::anyhow!("foo's worker 1 never failed: {:?}", mesh.status("foo")))?;
    let transfer = transfer.map_err(|_| anyhow::anyhow!("the transfer thread panicked"))??;
    ensure!(
        transfer.intact(),
        "baz -> foo across the failure lost or changed bytes: {transfer:?}"
    );
    // The main loop continued the stream and gave it to worker 0 (once no read or write
    // was in flight on it).
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        mesh.status("foo").is_ok_and(|s| {
            let ws = workers_of(&s);
            ws.len() == 2
                && ws[0]["tcp_links"] == 1
                && ws[1]["tcp_links"] == 0
                && s["control_plane"]["tcp_links"] == 0
        })
    })
    .map_err(|_| {
        anyhow::anyhow!(
            "foo's worker 0 reads and writes the link now: {:?}",
            mesh.status("foo")
        )
    })?;
    let foo_status = mesh.status("foo")?;
    let ws = workers_of(&foo_status);
    ensure!(
        link_before.is_some() && link_of(&foo_status) == link_before,
        "foo's link (and its session) survived its worker: {link_before:?} then {}",
        foo_status["links"]
    );
    let received_before = received_by(&ws[0], kind);
    let transfer = checked_transfer(
        topo.ns("foo"),
        topo.ns("baz"),
        baz_addr,
        7202,
        20_000_000,
        12,
        Duration::from_secs(120),
    )?;
    ensure!(transfer.intact(), "foo -> baz afterwards: {transfer:?}");
    let transfer = checked_transfer(
        topo.ns("baz"),
        topo.ns("foo"),
        foo_addr,
        7203,
        20_000_000,
        13,
        Duration::from_secs(120),
    )?;
    ensure!(transfer.intact(), "baz -> foo afterwards: {transfer:?}");
    let foo_status = mesh.status("foo")?;
    let received_after = received_by(&workers_of(&foo_status)[0], kind);
    ensure!(
        received_after > received_before + many(kind),
        "foo's worker 0 read baz's 20 MB: {received_before} -> {received_after}"
    );
    ensure!(
        link_of(&foo_status) == link_before,
        "foo's link survived: {link_before:?} then {}",
        foo_status["links"]
    );
    Ok(())
}

#[test]
fn a_failed_worker_gives_its_tcp_link_back() {
    require_root!();
    run_test("workers_fail_tcp", |dir| {
        a_failed_worker_gives_back_with(LinkKind::Tcp, dir)
    });
}

#[test]
fn a_failed_worker_gives_its_tls_link_back() {
    require_root!();
    run_test("workers_fail_tls", |dir| {
        a_failed_worker_gives_back_with(LinkKind::TcpTls, dir)
    });
}

/// The routing stream still crosses TLS links that worker threads own: a configuration set on
/// foo (a small one, then one of about 2 MB) reaches bar and baz, byte for byte.
#[test]
fn a_config_change_crosses_tls_links_on_workers() {
    require_root!();
    run_test("workers_tls_config", |dir| {
        let (topo, links) = line(dir, LinkKind::TcpTls)?;
        let mut mesh = mesh_of(&topo, &links, LinkKind::TcpTls, 2)?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        // foo's link on its worker 1; bar's two links on its two workers.
        wait_until(CONVERGE, Duration::from_millis(100), || {
            let owned = |node: &str, i: usize| {
                mesh.status(node)
                    .is_ok_and(|s| workers_of(&s).get(i).is_some_and(|w| w["tcp_links"] == 1))
            };
            owned("foo", 1) && owned("bar", 0) && owned("bar", 1) && owned("baz", 1)
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "the links are not on the workers: {:?} {:?}",
                mesh.status("foo"),
                mesh.status("bar")
            )
        })?;
        let original = std::fs::read_to_string(mesh.config_path())?;
        for (version, extra) in [(2u64, 0u32), (3, 48_000)] {
            let mut text = original.replace("  version: 1\n", &format!("  version: {version}\n"));
            for i in 0..extra {
                text.push_str(&format!(
                    "  gen{i}:\n    address: \"fd00:cafe::{:x}:{:x}\"\n",
                    0x100 + i / 0x10000,
                    i % 0x10000
                ));
            }
            let path = dir.join(format!("v{version}.yml"));
            std::fs::write(&path, &text)?;
            connectopus_tests::ssh_sign(&path, mesh.admin_key(), "connectopus")?;
            let (ok, out) = mesh.config_set("foo", &path)?;
            ensure!(ok, "foo refused v{version}: {out}");
            wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
                ["bar", "baz"]
                    .iter()
                    .all(|n| mesh.config_version(n).is_ok_and(|v| v == version))
            })
            .map_err(|_| anyhow::anyhow!("v{version} did not reach bar and baz"))?;
            let expected = std::fs::read(&path)?;
            for node in ["bar", "baz"] {
                ensure!(
                    std::fs::read(mesh.node_config_path(node))? == expected,
                    "{node} persisted a different v{version}"
                );
            }
        }
        // Still on the workers, sessions up, and data flows.
        let status = mesh.status("foo")?;
        ensure!(
            workers_of(&status)[1]["tcp_links"] == 1,
            "foo's link is still on worker 1: {status}"
        );
        let transfer = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            mesh.address("baz"),
            7301,
            5_000_000,
            21,
            Duration::from_secs(120),
        )?;
        ensure!(
            transfer.intact(),
            "foo -> baz after the changes: {transfer:?}"
        );
        Ok(())
    });
}

/// Accepts `n` TCP connections on `[addr]:port`, reads each to its end, and prints
/// `flows <n> bytes <total>` once all ended.
const FLOWS_RECEIVER: &str = r#"
import socket, sys, threading
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(n)
print("listening", flush=True)
total, lock = [0], threading.Lock()
def drain(c):
    got = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += len(b)
    c.close()
    with lock:
        total[0] += got
threads = []
for _ in range(n):
    c, _ = s.accept()
    t = threading.Thread(target=drain, args=(c,))
    t.start()
    threads.append(t)
for t in threads:
    t.join()
print("flows %d bytes %d" % (n, total[0]), flush=True)
"#;

/// Opens `n` TCP connections to `[dst]:port` at once (each its own flow, so the kernel
/// steers them over every TUN queue) and sends `bytes` on each. Each keeps its flow hash
/// when a SYN is retransmitted (`SO_TXREHASH` 0, Linux 6.1+), so a flow the kernel steered to a
/// queue that is not read stays there rather than trying another queue.
const FLOWS_SENDER: &str = r#"
import socket, sys, threading
dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
SO_TXREHASH = 74
def send():
    c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        c.setsockopt(socket.SOL_SOCKET, SO_TXREHASH, 0)
    except OSError:
        pass
    c.settimeout(60)
    c.connect((dst, port))
    c.sendall(b"x" * size)
    c.close()
threads = [threading.Thread(target=send) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("sent", flush=True)
"#;

/// How long the test stall blocks each node's control loop (below the dead interval, 7 s).
const STALL_MS: u64 = 5_000;

/// With two workers, foo's and bar's workers are both threads (`status`: distinct thread ids,
/// none the control plane's), their link is received on a worker thread, and while both
/// control loops are blocked (a test stall, `CONNECTOPUS_TEST_STALL_CONTROL_MS`, started by
/// SIGUSR2) sixteen TCP connections through the DTLS link still complete: before the split
/// worker 0 was the control loop, so a flow the kernel steered to queue 0 waited for it.
#[test]
fn established_traffic_flows_while_the_control_plane_is_blocked() {
    require_root!();
    run_test("workers_control_stall", |dir| {
        require_tools(&["python3", "kill"]);
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let links = vec![MeshLink::new("bar", "foo", LinkKind::DtlsPsk)];
        let mut mesh = mesh_of(&topo, &links, LinkKind::DtlsPsk, 2)?;
        mesh.set_env("CONNECTOPUS_TEST_STALL_CONTROL_MS", &STALL_MS.to_string());
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        for name in ["foo", "bar"] {
            // The link goes to a worker thread once its session is established.
            wait_until(CONVERGE, Duration::from_millis(100), || {
                mesh.status(name).is_ok_and(|s| {
                    workers_of(&s)
                        .iter()
                        .map(|w| w["receive_links"].as_u64().unwrap_or(0))
                        .sum::<u64>()
                        == 1
                })
            })
            .map_err(|_| {
                anyhow::anyhow!(
                    "{name}'s link is received by a worker thread: {:?}",
                    mesh.status(name)
                )
            })?;
            let status = mesh.status(name)?;
            let control = status["control_plane"]["thread_id"].as_u64().unwrap_or(0);
            let ids: Vec<u64> = workers_of(&status)
                .iter()
                .map(|w| w["thread_id"].as_u64().unwrap_or(0))
                .collect();
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            ensure!(
                control != 0
                    && ids.len() == 2
                    && distinct.len() == 2
                    && ids.iter().all(|id| *id != 0 && *id != control),
                "{name}'s workers run on threads of their own, apart from the control plane \
                 ({control}): {ids:?} in {status}"
            );
            ensure!(
                status["control_plane"]["receive_links"] == 0,
                "{name}'s control plane receives no established link: {status}"
            );
        }
        let bar_addr = mesh.address("bar");
        let receiver = topo.ns("bar").spawn(
            "python3",
            &["-c", FLOWS_RECEIVER, &bar_addr.to_string(), "7401", "16"],
        )?;
        receiver.wait_for_output("listening", Duration::from_secs(10))?;
        // Block both control loops, and wait until both say so.
        for name in ["foo", "bar"] {
            let pid = mesh
                .process(name)
                .map(|p| p.pid())
                .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
            let killed = std::process::Command::new("kill")
                .args(["-USR2", &pid.to_string()])
                .status()?;
            ensure!(killed.success(), "kill -USR2 {name}: {killed}");
        }
        for name in ["foo", "bar"] {
            let node = mesh
                .process(name)
                .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
            node.wait_for_output(
                "test stall: the control loop sleeps",
                Duration::from_secs(10),
            )?;
        }
        topo.ns("foo").exec_ok(
            "python3",
            &[
                "-c",
                FLOWS_SENDER,
                &bar_addr.to_string(),
                "7401",
                "16",
                "131072",
            ],
        )?;
        let said = receiver.wait_for_output("flows 16", Duration::from_secs(60))?;
        // Whether a control loop already runs again: if so, the flows may have waited for it.
        let stalls_over: Vec<&str> = ["foo", "bar"]
            .into_iter()
            .filter(|name| {
                mesh.process(name)
                    .is_some_and(|p| p.stderr().contains("test stall over"))
            })
            .collect();
        ensure!(
            said.contains(&format!("bytes {}", 16 * 131_072)),
            "bar received: {said}"
        );
        ensure!(
            stalls_over.is_empty(),
            "the sixteen connections completed only after the control loop of {stalls_over:?} \
             ran again ({STALL_MS} ms stall): established traffic waited for the control plane"
        );
        // Once the stalls are over the nodes go on as before: the same link, still up.
        for name in ["foo", "bar"] {
            let node = mesh
                .process(name)
                .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
            node.wait_for_output("test stall over", Duration::from_secs(30))?;
        }
        mesh.wait_converged(CONVERGE)?;
        let transfer = checked_transfer(
            topo.ns("bar"),
            topo.ns("foo"),
            mesh.address("foo"),
            7402,
            5_000_000,
            31,
            Duration::from_secs(120),
        )?;
        ensure!(
            transfer.intact(),
            "bar -> foo after the stall: {transfer:?}"
        );
        Ok(())
    });
}

/// Worker 0 of foo (the thread reading TUN queue 0, which the main loop keeps open for its
/// writes) fails after 50 TUN packets: `status` shows it stopped with the reason, the main
/// loop reads queue 0 from then on (the kernel still steers flows to it), every one of 64 new
/// flows arrives, and 20 MB arrive intact.
#[test]
fn a_failed_worker_zero_leaves_queue_zero_to_the_main_loop() {
    require_root!();
    run_test("workers_fail_0", |dir| {
        require_tools(&["python3"]);
        let (topo, links) = line(dir, LinkKind::DtlsPsk)?;
        let mut mesh = mesh_of(&topo, &links, LinkKind::DtlsPsk, 2)?;
        mesh.start("bar")?;
        mesh.start("baz")?;
        mesh.set_env("CONNECTOPUS_TEST_FAIL_WORKER", "0:50");
        mesh.start("foo")?;
        mesh.wait_converged(CONVERGE)?;
        let baz_addr = mesh.address("baz");
        let stopped = || {
            mesh.status("foo").is_ok_and(|s| {
                workers_of(&s)
                    .first()
                    .and_then(|w| w["state"].as_str().map(|s| s.starts_with("stopped")))
                    .unwrap_or(false)
            })
        };
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            let _ = send_flows(&topo, "foo", baz_addr, 2);
            stopped()
        })
        .map_err(|_| anyhow::anyhow!("foo's worker 0 never failed: {:?}", mesh.status("foo")))?;
        let text = mesh.status_text("foo")?;
        ensure!(
            text.contains("worker 0 (worker-0) stopped: test fault"),
            "status text: {text}"
        );
        let control_reads = || -> u64 {
            mesh.status("foo")
                .ok()
                .and_then(|s| s["control_plane"]["tun_reads"].as_u64())
                .unwrap_or(0)
        };
        let before = control_reads();
        // Half the flows, about, are steered to queue 0: the main loop reads them now.
        every_flow_arrives(&topo, "foo", "baz", baz_addr)?;
        let after = control_reads();
        ensure!(
            after > before + 64,
            "foo's main loop read queue 0 after worker 0 stopped: {before} -> {after}"
        );
        let transfer = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7501,
            20_000_000,
            41,
            Duration::from_secs(120),
        )?;
        ensure!(
            transfer.intact(),
            "foo -> baz after worker 0 failed: {transfer:?}"
        );
        ensure!(
            mesh.process("foo").is_some_and(|p| p.is_running()),
            "foo still runs"
        );
        Ok(())
    });
}
