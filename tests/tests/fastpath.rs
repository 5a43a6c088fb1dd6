//! The eBPF fast path end to end: real nodes with node identities in network namespaces,
//! foo—bar—baz over plaintext UDP links. With the fast path: ping, traceroute (bar, the
//! transit node, still answers Time Exceeded: hop limit 1 goes to userspace), a checked
//! 100 MB transfer whose bytes the eBPF counters carried and the userspace link counters did
//! not, and a peer restart (entries removed, then re-added). On a triangle, the underlay of the
//! cheaper path is cut in the middle of a paced transfer: the entries follow the route to the
//! direct link. A node started without the eBPF object forwards through userspace and says why.
//! After a restart of the mesh instance (a re-exec, confined) the fast path is on again.
//! A node with a udp link and a DTLS link runs its fast path too: foo's eBPF sends TSO
//! super-packets whole, bar's userspace cuts them for the DTLS link to baz (and, in another
//! test, for a TCP link).
//!
//! Needs root and the eBPF object (`cargo xtask build-ebpf`, embedded in the node at build
//! time); skips with a message otherwise.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, Topology, checked_transfer, checked_transfer_paced, ping6,
    require_root, require_tools, run_test, traceroute6, wait_until,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// The sessions' dead interval (`global.timers.dead_interval` in the harness's mesh).
const DEAD_INTERVAL: Duration = Duration::from_secs(7);

/// The fast-path state of every link of a status report: (backend, active, packets, bytes).
fn fastpath_links(status: &Value) -> Vec<(String, bool, u64, u64)> {
    status["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| {
                    (
                        l["backend"].as_str().unwrap_or("").to_owned(),
                        l["fastpath"]["active"].as_bool().unwrap_or(false),
                        l["fastpath"]["packets"].as_u64().unwrap_or(0),
                        l["fastpath"]["bytes"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when `node` has `links` links, all established and carried by the fast path.
fn all_active(mesh: &Mesh, node: &str, links: usize) -> bool {
    mesh.status(node).is_ok_and(|s| {
        let fp = fastpath_links(&s);
        fp.len() == links
            && fp.iter().all(|(_, active, _, _)| *active)
            && s["links"]
                .as_array()
                .is_some_and(|l| l.iter().all(|l| l["state"] == "established"))
    })
}

/// Sums a field over `node`'s links.
fn link_sum(status: &Value, field: &str) -> u64 {
    status["links"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l[field].as_u64()).sum())
        .unwrap_or(0)
}

fn fastpath_bytes(status: &Value) -> u64 {
    fastpath_links(status).iter().map(|(_, _, _, b)| *b).sum()
}

/// Whether this build embeds the eBPF object with the fast-path programs.
fn fastpath_available(mesh: &Mesh, node: &str) -> Result<bool> {
    let status = mesh.status(node)?;
    let state = status["fastpath"].as_str().unwrap_or("");
    if state.starts_with("on") {
        return Ok(true);
    }
    eprintln!("SKIP: the fast path is off on {node} ({state}); run `cargo xtask build-ebpf`");
    Ok(false)
}

/// Starts `links` with node identities and waits for routes; `None` (said on stderr) when the
/// fast path is off on `node` (the eBPF object was not built).
fn fast_path_mesh<'a>(
    topo: &'a Topology,
    links: &[MeshLink],
    node: &str,
) -> Result<Option<Mesh<'a>>> {
    let mut mesh = Mesh::configure_with_identities(topo, links, &[])?;
    mesh.set_log_level("info");
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    Ok(fastpath_available(&mesh, node)?.then_some(mesh))
}

#[test]
fn line_over_the_fast_path() {
    require_root!();
    require_tools(&["ping", "traceroute", "python3"]);
    run_test("fastpath_line", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let Some(mut mesh) = fast_path_mesh(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::Udp),
            ],
            "bar",
        )?
        else {
            return Ok(());
        };
        wait_until(CONVERGE, Duration::from_millis(100), || {
            all_active(&mesh, "foo", 1)
                && all_active(&mesh, "bar", 2)
                && all_active(&mesh, "baz", 1)
        })
        .with_context(|| format!("links on the fast path: {}", mesh.status("bar").unwrap()))?;
        let (foo_addr, bar_addr, baz_addr) = (
            mesh.address("foo"),
            mesh.address("bar"),
            mesh.address("baz"),
        );
        let text = mesh.status_text("bar")?;
        ensure!(text.contains("fastpath on"), "status shows it: {text}");

        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(ping.all_received(), "foo -> baz: {ping:?}");
        let hops = traceroute6(topo.ns("foo"), baz_addr)?;
        ensure!(
            hops == vec![Some(bar_addr), Some(baz_addr)],
            "traceroute foo -> baz should show bar then baz: {hops:?}"
        );

        let (foo0, bar0) = (mesh.status("foo")?, mesh.status("bar")?);
        let there = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7001,
            100_000_000,
            1,
            Duration::from_secs(120),
        )?;
        ensure!(
            there.intact(),
            "foo -> baz lost or changed bytes: {there:?}"
        );
        let (foo1, bar1) = (mesh.status("foo")?, mesh.status("bar")?);
        // foo's link carried the transfer in eBPF (both ways: data out, acks in), bar's two
        // links carried it in transit twice (in on one, out on the other).
        let foo_fp = fastpath_bytes(&foo1) - fastpath_bytes(&foo0);
        let bar_fp = fastpath_bytes(&bar1) - fastpath_bytes(&bar0);
        ensure!(
            foo_fp >= 100_000_000 && bar_fp >= 100_000_000,
            "fast path bytes: foo {foo_fp}, bar {bar_fp}: {}",
            bar1["links"]
        );
        // The userspace path did not carry them.
        let foo_user = link_sum(&foo1, "bytes_out") - link_sum(&foo0, "bytes_out");
        let bar_user = link_sum(&bar1, "bytes_out") - link_sum(&bar0, "bytes_out");
        ensure!(
            foo_user < 10_000_000 && bar_user < 10_000_000,
            "userspace carried foo {foo_user} B, bar {bar_user} B"
        );
        ensure!(
            bar1["fastpath_fallbacks"].is_object(),
            "per-reason fall-back counters: {bar1}"
        );

        // baz restarts: bar's entries for the old link go, the new link's come.
        mesh.kill("baz")?;
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            mesh.status("bar")
                .is_ok_and(|s| fastpath_links(&s).iter().filter(|l| l.1).count() == 1)
        })
        .with_context(|| format!("bar drops baz's entries: {}", mesh.status("bar").unwrap()))?;
        mesh.start("baz")?;
        mesh.wait_converged(CONVERGE)?;
        wait_until(CONVERGE, Duration::from_millis(100), || {
            all_active(&mesh, "bar", 2) && all_active(&mesh, "baz", 1)
        })
        .with_context(|| format!("bar re-adds baz: {}", mesh.status("bar").unwrap()))?;
        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(
            ping.all_received(),
            "foo -> baz after the restart: {ping:?}"
        );
        let ping = ping6(topo.ns("baz"), foo_addr, 3, 56, &[])?;
        ensure!(
            ping.all_received(),
            "baz -> foo after the restart: {ping:?}"
        );
        Ok(())
    });
}

/// A change to `global` makes both nodes of a udp pair re-execute themselves confined
/// (without `CAP_BPF`, under seccomp): their attach helper, which kept the rights, loads the
/// programs again, so the new instance's link is on the fast path and carries a ping there.
#[test]
fn the_fast_path_comes_back_after_an_instance_restart() {
    require_root!();
    require_tools(&["ping", "ssh-keygen"]);
    run_test("fastpath_restart", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let Some(mesh) =
            fast_path_mesh(&topo, &[MeshLink::new("bar", "foo", LinkKind::Udp)], "foo")?
        else {
            return Ok(());
        };
        mesh.restart_instances_with_a_global_change("foo")?;
        for node in ["foo", "bar"] {
            let status = mesh.status(node)?;
            let state = status["fastpath"].as_str().unwrap_or_default();
            ensure!(
                state.starts_with("on"),
                "{node}'s fast path after its restart: {state}"
            );
        }
        wait_until(CONVERGE, Duration::from_millis(100), || {
            all_active(&mesh, "foo", 1) && all_active(&mesh, "bar", 1)
        })
        .with_context(|| {
            format!(
                "foo's link on the fast path: {}",
                mesh.status("foo").unwrap()
            )
        })?;
        let before = fastpath_bytes(&mesh.status("foo")?);
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 5, 1000, &[])?;
        ensure!(
            ping.all_received(),
            "foo -> bar after the restart: {ping:?}"
        );
        let carried = fastpath_bytes(&mesh.status("foo")?) - before;
        ensure!(
            carried >= 5 * 1000,
            "foo's fast path carried {carried} B of 5 pings of 1,000 B"
        );
        Ok(())
    });
}

#[test]
fn a_node_without_the_object_forwards_through_userspace() {
    require_root!();
    require_tools(&["ping", "python3"]);
    run_test("fastpath_without_object", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::Udp),
            ],
            &[],
        )?;
        let missing = dir.path().join("no-such-object.o");
        mesh.add_args("bar", &["--ebpf-object", &missing.display().to_string()]);
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let bar = mesh.status("bar")?;
        let state = bar["fastpath"].as_str().unwrap_or("");
        ensure!(
            state.starts_with("off: "),
            "bar says why it is off: {state}"
        );
        ensure!(
            bar["links"]
                .as_array()
                .is_some_and(|l| l.iter().all(|l| l["fastpath"]["active"] == false)),
            "{bar}"
        );
        let text = mesh.status_text("bar")?;
        ensure!(text.contains("fastpath off"), "status text: {text}");
        let baz_addr = mesh.address("baz");
        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(
            ping.all_received(),
            "foo -> baz through bar's userspace: {ping:?}"
        );
        let there = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7002,
            5_000_000,
            2,
            Duration::from_secs(60),
        )?;
        ensure!(there.intact(), "foo -> baz: {there:?}");
        Ok(())
    });
}

/// Whether `node`'s link to `peer` is carried by the fast path.
fn active_to(mesh: &Mesh, node: &str, peer: &str) -> bool {
    mesh.status(node).is_ok_and(|s| {
        s["links"].as_array().is_some_and(|links| {
            links.iter().any(|l| {
                l["peer_name"] == peer
                    && l["state"] == "established"
                    && l["fastpath"]["active"] == true
            })
        })
    })
}

/// Fast-path bytes on `node`'s link to `peer`.
fn bytes_to(status: &Value, peer: &str) -> u64 {
    status["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["peer_name"] == peer)
                .filter_map(|l| l["fastpath"]["bytes"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn entries_follow_a_route_change() {
    require_root!();
    require_tools(&["python3"]);
    run_test("fastpath_route_change", |dir| {
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        let Some(mesh) = fast_path_mesh(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::Udp),
                MeshLink::new("baz", "foo", LinkKind::Udp).cost(5.0),
            ],
            "foo",
        )?
        else {
            return Ok(());
        };
        wait_until(CONVERGE, Duration::from_millis(100), || {
            ["foo", "bar", "baz"]
                .iter()
                .all(|n| all_active(&mesh, n, 2))
        })
        .with_context(|| format!("links on the fast path: {}", mesh.status("foo").unwrap()))?;
        // The cheaper way, through bar, once every update is in.
        wait_until(CONVERGE, Duration::from_millis(100), || {
            mesh.next_hop("foo", "baz")
                .is_ok_and(|hop| hop.as_deref() == Some("bar"))
        })
        .context("foo routes to baz through bar")?;
        let baz_addr = mesh.address("baz");
        let before = mesh.status("foo")?;

        // A transfer held to 5 MB/s (10 s for 50 MB) runs through bar in eBPF; once 5 MB of
        // it have crossed, the foo—bar underlay goes down under it. Until the session's dead
        // interval ends, foo's entries still point at bar (packets are lost and TCP
        // retransmits); then the route and the entries move to the direct link, and the
        // transfer completes there.
        const TOTAL: u64 = 50_000_000;
        let (there, via_bar_at_cut, via_bar) = std::thread::scope(|scope| -> Result<_> {
            let transfer = scope.spawn(|| {
                checked_transfer_paced(
                    topo.ns("foo"),
                    topo.ns("baz"),
                    baz_addr,
                    7003,
                    TOTAL,
                    3,
                    5_000_000,
                    Duration::from_secs(120),
                )
            });
            let flowing = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
                mesh.status("foo")
                    .is_ok_and(|now| bytes_to(&now, "bar") >= bytes_to(&before, "bar") + 5_000_000)
            });
            let via_bar_at_cut =
                bytes_to(&mesh.status("foo")?, "bar").saturating_sub(bytes_to(&before, "bar"));
            topo.ns("foo")
                .ip(&["link", "set", topo.iface("foo", "bar"), "down"])?;
            // No packet goes to the dead link for longer than one dead interval: by then the
            // session is dead and the entries for it are gone. Meanwhile the most bar's link
            // ever counted: what went that way, delivered or lost in the cut.
            let mut via_bar = via_bar_at_cut;
            let watched = wait_until(
                DEAD_INTERVAL + Duration::from_secs(2),
                Duration::from_millis(100),
                || {
                    if let Ok(now) = mesh.status("foo") {
                        via_bar = via_bar
                            .max(bytes_to(&now, "bar").saturating_sub(bytes_to(&before, "bar")));
                    }
                    !active_to(&mesh, "foo", "bar")
                },
            );
            let there = transfer
                .join()
                .map_err(|_| anyhow::anyhow!("the transfer thread panicked"))??;
            flowing.context("5 MB of the transfer crossed bar in eBPF before the cut")?;
            watched.with_context(|| {
                format!(
                    "foo still sends to the dead link after the dead interval: {}",
                    mesh.status("foo").unwrap_or_default()
                )
            })?;
            Ok((there, via_bar_at_cut, via_bar))
        })?;
        eprintln!(
            "fastpath_route_change: {via_bar_at_cut} B through bar at the cut, {via_bar} B in all"
        );
        // The cut came in the middle: the path through bar had carried part of the data, not
        // all of it (the sender cannot be ahead of 5 MB/s).
        ensure!(
            via_bar_at_cut < TOTAL * 9 / 10,
            "the transfer had nearly finished through bar ({via_bar_at_cut} B) before the cut"
        );
        ensure!(
            there.intact(),
            "foo -> baz across the route change: {there:?}"
        );
        ensure!(
            !active_to(&mesh, "foo", "bar"),
            "foo's entries for the dead link are gone: {}",
            mesh.status("foo")?
        );
        ensure!(mesh.next_hop("foo", "baz")?.as_deref() == Some("baz"));
        let after = mesh.status("foo")?;
        // The rest crossed the direct link in eBPF: its counters count whole packets (data
        // out, acknowledgements in), so at least what never went towards bar.
        let direct = bytes_to(&after, "baz").saturating_sub(bytes_to(&before, "baz"));
        ensure!(
            direct >= TOTAL.saturating_sub(via_bar),
            "the direct link carried {direct} B in eBPF, bar's {via_bar} B: {}",
            after["links"]
        );
        Ok(())
    });
}

/// A status counter of `node`.
fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// The fast-path report of `status`'s link to `peer`.
fn link_to<'a>(status: &'a Value, peer: &str) -> Option<&'a Value> {
    status["links"]
        .as_array()?
        .iter()
        .find(|l| l["peer_name"] == peer)
}

#[test]
fn a_node_with_udp_and_dtls_links_runs_its_fast_path() {
    require_root!();
    require_tools(&["ping", "python3"]);
    run_test("fastpath_mixed", |dir| {
        // foo —udp— bar —DTLS— baz: bar's fast path carries its udp link, userspace its DTLS
        // link; foo's eBPF encapsulates foo's TSO super-packets whole towards bar.
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
            &[(
                "bar",
                "    tun_devs:\n      bar-host: {device: cxh-mix, address: \"fd00:cafe::2:2\", cost: 1}\n",
            )],
        )?;
        mesh.set_log_level("info");
        // Three workers on bar, all threads: each of its links is received on a worker thread
        // of its own (the last ones first on a tie, so worker 0 keeps none), and foo's
        // super-packets take the threads' path.
        mesh.add_args("bar", &["--workers", "3"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        if !fastpath_available(&mesh, "bar")? {
            return Ok(());
        }
        wait_until(CONVERGE, Duration::from_millis(100), || {
            active_to(&mesh, "foo", "bar") && active_to(&mesh, "bar", "foo")
        })
        .with_context(|| {
            format!(
                "bar's udp link on the fast path: {}",
                mesh.status("bar").unwrap()
            )
        })?;
        let bar = mesh.status("bar")?;
        let dtls = link_to(&bar, "baz").context("bar's link to baz")?;
        ensure!(
            dtls["fastpath"]["active"] == false
                && dtls["fastpath"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("userspace")),
            "bar's DTLS link says userspace carries it: {dtls}"
        );
        let text = mesh.status_text("bar")?;
        ensure!(text.contains("fastpath on"), "status text: {text}");
        // baz has no udp backend: no fast path, and it says why.
        let baz = mesh.status("baz")?;
        ensure!(
            baz["fastpath"]
                .as_str()
                .is_some_and(|s| s.starts_with("off: no udp-dialer/udp-listener backend")),
            "baz: {}",
            baz["fastpath"]
        );

        let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(ping.all_received(), "foo -> baz: {ping:?}");

        let (foo0, bar0) = (mesh.status("foo")?, mesh.status("bar")?);
        let there = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7004,
            100_000_000,
            4,
            Duration::from_secs(180),
        )?;
        ensure!(
            there.intact(),
            "foo -> baz lost or changed bytes: {there:?}"
        );
        let back = checked_transfer(
            topo.ns("baz"),
            topo.ns("foo"),
            foo_addr,
            7005,
            100_000_000,
            5,
            Duration::from_secs(180),
        )?;
        ensure!(back.intact(), "baz -> foo lost or changed bytes: {back:?}");
        // The worker threads hand their counters over every 100 ms.
        std::thread::sleep(Duration::from_millis(300));
        let (foo1, bar1) = (mesh.status("foo")?, mesh.status("bar")?);
        let workers = bar1["workers"].as_array().cloned().unwrap_or_default();
        let receives = |i: usize| workers.get(i).map(|w| w["receive_links"].clone());
        ensure!(
            workers.len() == 3
                && receives(0) == Some(0.into())
                && receives(1) == Some(1.into())
                && receives(2) == Some(1.into()),
            "bar's two links are received on workers 1 and 2: {workers:?}"
        );
        ensure!(
            workers
                .iter()
                .any(|w| w["datagrams_received"].as_u64().unwrap_or(0) > 0),
            "a worker thread of bar received the udp link's datagrams: {workers:?}"
        );

        // foo's eBPF carried the data towards baz. (The way back, bar's userspace sends UDP
        // GSO batches, which foo's ingress leaves to userspace as aggregates: `in_groagg`.)
        let foo_fp = bytes_to(&foo1, "bar").saturating_sub(bytes_to(&foo0, "bar"));
        eprintln!(
            "fastpath_mixed: foo's fast path {foo_fp} B; foo's fall-backs {}",
            foo1["fastpath_fallbacks"]
        );
        ensure!(
            foo_fp >= 100_000_000,
            "foo's fast path carried {foo_fp} B: {}",
            foo1["links"]
        );
        ensure!(
            link_to(&foo1, "bar").is_some_and(|l| l["fastpath"]["active"] == true)
                && link_to(&bar1, "foo").is_some_and(|l| l["fastpath"]["active"] == true),
            "the udp side stays on the fast path: {}",
            bar1["links"]
        );
        // foo sent super-packets whole; bar's userspace cut them for the DTLS link.
        let received = counter(&bar1, "udp_super_packets_received")
            - counter(&bar0, "udp_super_packets_received");
        let cut = counter(&bar1, "udp_super_packets_cut") - counter(&bar0, "udp_super_packets_cut");
        eprintln!("fastpath_mixed: bar received {received} super-packets, cut {cut}");
        ensure!(
            cut > 0 && cut <= received,
            "bar cut the super-packets foo's eBPF sent ({received} received, {cut} cut): {}",
            bar1["counters"]
        );
        ensure!(
            counter(&bar1, "udp_malformed_dropped") == counter(&bar0, "udp_malformed_dropped"),
            "nothing malformed: {}",
            bar1["counters"]
        );

        // UDP segmentation offload: each send of foo's socket is one USO super-packet of 10
        // datagrams; bar must cut it where foo's kernel would have (the segment size comes
        // with the receive), so baz's application sees 1000-byte datagrams, each whole.
        let receiver = topo.ns("baz").spawn(
            "python3",
            &["-c", USO_RECEIVER, &baz_addr.to_string(), "7006", "10"],
        )?;
        receiver.wait_for_output("listening", Duration::from_secs(10))?;
        let sender = topo.ns("foo").exec_timeout(
            "python3",
            &["-c", USO_SENDER, &baz_addr.to_string(), "7006", "10"],
            Duration::from_secs(30),
        )?;
        ensure!(
            sender.status.success(),
            "the UDP_SEGMENT sender: {}",
            String::from_utf8_lossy(&sender.stderr)
        );
        let line = receiver.wait_for_output("datagrams ", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_millis(300));
        let bar2 = mesh.status("bar")?;
        let uso_cut =
            counter(&bar2, "udp_super_packets_cut") - counter(&bar1, "udp_super_packets_cut");
        eprintln!("fastpath_mixed: UDP_SEGMENT to baz: {line}; bar cut {uso_cut} super-packets");
        // "datagrams <whole> bad <wrong size or content>": a datagram may be lost (UDP), none
        // may arrive merged, cut elsewhere or changed.
        let words: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        ensure!(
            words.len() == 2 && words[1] == 0 && words[0] >= 50,
            "baz received the segments whole: {line}"
        );
        ensure!(
            uso_cut > 0,
            "bar cut USO super-packets: {}",
            bar2["counters"]
        );

        // bar's second TUN device: its daemon delivers to it (a `Userspace` entry), so foo's
        // super-packets reach bar's userspace and go into that device whole, behind a
        // virtio-net header, for bar's kernel to take as they are.
        let host: std::net::Ipv6Addr = "fd00:cafe::2:2".parse()?;
        wait_until(CONVERGE, Duration::from_millis(200), || {
            mesh.status("foo").is_ok_and(|s| {
                s["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["prefix"] == "fd00:cafe::2:2/128" && r["next_hop"] == "bar")
            })
        })
        .context("foo routes to bar's host address")?;
        let to_host = checked_transfer(
            topo.ns("foo"),
            topo.ns("bar"),
            host,
            7007,
            20_000_000,
            6,
            Duration::from_secs(120),
        )?;
        ensure!(to_host.intact(), "foo -> bar's host address: {to_host:?}");
        let bar3 = mesh.status("bar")?;
        let whole = counter(&bar3, "udp_super_packets_delivered_whole")
            - counter(&bar2, "udp_super_packets_delivered_whole");
        eprintln!("fastpath_mixed: bar wrote {whole} super-packets whole to cxh-mix");
        ensure!(
            whole > 0,
            "bar wrote super-packets whole to its host device: {}",
            bar3["counters"]
        );
        Ok(())
    });
}

/// Sends `argv[3]` sends of 10 datagrams of 1000 bytes with `UDP_SEGMENT` (one super-packet
/// each): datagram `k` is 1000 times the byte `k % 251`.
const USO_SENDER: &str = r#"
import socket, sys, time
dst, port, sends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, 1000)  # UDP_SEGMENT
k = 0
for i in range(sends):
    payload = b"".join(bytes([(k + j) % 251]) * 1000 for j in range(10))
    k += 10
    s.sendto(payload, (dst, port))
    time.sleep(0.05)
print("sent", flush=True)
"#;

/// Counts datagrams that are 1000 times one byte (whole) and any other (bad), until
/// `argv[3] * 10` arrived or 3 s pass without one; prints `datagrams <whole> bad <bad>`.
const USO_RECEIVER: &str = r#"
import socket, sys
addr, port, sends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((addr, port))
print("listening", flush=True)
s.settimeout(3)
whole = bad = 0
try:
    while whole + bad < sends * 10:
        d = s.recv(65535)
        if len(d) == 1000 and d == bytes([d[0]]) * 1000:
            whole += 1
        else:
            bad += 1
except socket.timeout:
    pass
print("datagrams", whole, "bad", bad, flush=True)
"#;

#[test]
fn a_node_with_udp_and_tcp_links_cuts_super_packets_for_the_tcp_link() {
    require_root!();
    require_tools(&["python3"]);
    run_test("fastpath_mixed_tcp", |dir| {
        // foo —udp— bar —TCP— baz: what foo's eBPF sends whole, bar frames segment by segment
        // into its TCP link.
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let Some(mesh) = fast_path_mesh(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
            "bar",
        )?
        else {
            return Ok(());
        };
        wait_until(CONVERGE, Duration::from_millis(100), || {
            active_to(&mesh, "foo", "bar") && active_to(&mesh, "bar", "foo")
        })
        .with_context(|| {
            format!(
                "bar's udp link on the fast path: {}",
                mesh.status("bar").unwrap()
            )
        })?;
        let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));
        let bar0 = mesh.status("bar")?;
        let there = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7008,
            30_000_000,
            7,
            Duration::from_secs(120),
        )?;
        ensure!(there.intact(), "foo -> baz: {there:?}");
        let back = checked_transfer(
            topo.ns("baz"),
            topo.ns("foo"),
            foo_addr,
            7009,
            30_000_000,
            8,
            Duration::from_secs(120),
        )?;
        ensure!(back.intact(), "baz -> foo: {back:?}");
        let bar1 = mesh.status("bar")?;
        let cut = counter(&bar1, "udp_super_packets_cut") - counter(&bar0, "udp_super_packets_cut");
        eprintln!("fastpath_mixed_tcp: bar cut {cut} super-packets for its TCP link");
        ensure!(cut > 0, "bar cut super-packets: {}", bar1["counters"]);
        let tcp = link_to(&bar1, "baz").context("bar's link to baz")?;
        ensure!(
            tcp["fastpath"]["active"] == false,
            "bar's TCP link is not on the fast path: {tcp}"
        );
        Ok(())
    });
}
