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

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, TestDir, checked_transfer, checked_transfer_paced, iperf3_client,
    iperf3_server, require_root, require_tools, run_test, transfer_both_ways, wait_until,
};
use serde_json::Value;

mod workers_common;
use workers_common::*;

fn transfers_with(workers: usize, kind: LinkKind, dir: &TestDir) -> Result<()> {
    require_tools(&["python3"]);
    let (topo, links) = line(dir, kind)?;
    let mut mesh = mesh_of(&topo, &links, kind, workers)?;
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
    transfer_both_ways(
        &topo,
        ("foo", foo_addr),
        ("baz", baz_addr),
        (7001, BYTES, 1),
        &format!("with {workers} worker(s) lost or changed bytes"),
    )?;
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
