//! The control plane on a thread of its own (`--workers N`, N > 1): every dataplane worker is
//! a thread apart from the control plane's, established traffic keeps flowing while the
//! control plane is blocked, and a failed worker 0 leaves TUN queue 0 to the main loop.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::ensure;
use connectopus_tests::{
    LinkKind, MeshLink, Topology, checked_transfer, require_root, require_tools, run_test,
    wait_until,
};

mod workers_common;
use workers_common::*;

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
