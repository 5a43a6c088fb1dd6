//! TUN and UDP offloads end to end: the same bytes arrive with offloads on and off, through
//! DTLS, TCP+TLS and plain TCP links and through a transit node, and with offloads on the
//! super-packet paths (TSO reads, UDP GSO sends, UDP GRO receives, coalesced TUN writes) are
//! the ones that carried them.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, TestDir, Topology, checked_transfer, iperf3_client,
    iperf3_server, require_root, require_tools, run_test,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// Bytes of each checked transfer: 100 MB one way, 20 MB back.
const FORWARD_BYTES: u64 = 100_000_000;
const BACKWARD_BYTES: u64 = 20_000_000;

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// Runs a foo—bar—baz line over `kind` with offloads on or off, moves checked transfers
/// between foo and baz (through bar), and checks which paths carried them.
fn transfer_checks(kind: LinkKind, offload: bool, dir: &TestDir) -> Result<()> {
    require_tools(&["python3"]);
    let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
    let mut mesh = Mesh::configure(
        &topo,
        &[
            MeshLink::new("bar", "foo", kind),
            MeshLink::new("bar", "baz", kind),
        ],
    )?;
    mesh.set_log_level("info");
    if !offload {
        mesh.set_env("CONNECTOPUS_DISABLE_OFFLOAD", "1");
    }
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, baz_addr) = (mesh.address("foo"), mesh.address("baz"));

    let there = checked_transfer(
        topo.ns("foo"),
        topo.ns("baz"),
        baz_addr,
        7001,
        FORWARD_BYTES,
        1,
        Duration::from_secs(120),
    )?;
    ensure!(
        there.intact(),
        "foo -> baz lost or changed bytes: {there:?}"
    );
    let back = checked_transfer(
        topo.ns("baz"),
        topo.ns("foo"),
        foo_addr,
        7002,
        BACKWARD_BYTES,
        2,
        Duration::from_secs(120),
    )?;
    ensure!(back.intact(), "baz -> foo lost or changed bytes: {back:?}");

    let foo_status = mesh.status("foo")?;
    let bar_status = mesh.status("bar")?;
    let baz_status = mesh.status("baz")?;
    let tun_state = foo_status["offload"]["tun"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for (name, status) in [
        ("foo", &foo_status),
        ("bar", &bar_status),
        ("baz", &baz_status),
    ] {
        ensure!(
            counter(status, "udp_send_errors") == 0,
            "{name}'s kernel refused UDP sends: {}",
            status["counters"]
        );
        // Every worker states each fallback: on, or off with the reason.
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        ensure!(!workers.is_empty(), "{name} shows no workers: {status}");
        for w in &workers {
            for feature in [
                "io_uring",
                "tun_multi_queue",
                "udp_gso",
                "udp_gro",
                "udp_reuseport",
            ] {
                let state = w[feature].as_str().unwrap_or_default();
                ensure!(
                    state == "on" || (state.starts_with("off: ") && state.len() > 5),
                    "{name}'s worker {feature}: {w}"
                );
            }
            // Idle wake-ups (200 µs, `datapath::IDLE_WAKE`) are on wherever the ring is
            // io_uring and the node measured at start that keeping its CPUs warm pays (or could
            // not measure), off where it measured that it does not; every worker runs what the
            // node says it chose, and why.
            if std::env::var_os("CONNECTOPUS_IDLE_WAKE_US").is_none() {
                let why = status["idle_wake"].as_str().unwrap_or_default();
                let chosen = if why.ends_with("keeping the CPUs warm pays")
                    || why.starts_with("not measured (")
                {
                    200
                } else {
                    ensure!(
                        why.ends_with("nothing to keep warm")
                            && why.contains(" µs after 3 ms idle"),
                        "{name} does not say why its idle wake-ups are on or off: {why:?}"
                    );
                    0
                };
                let expected = if w["io_uring"] == "on" { chosen } else { 0 };
                ensure!(
                    w["idle_wake_us"].as_u64() == Some(expected),
                    "{name}'s worker should show idle wake-ups of {expected} µs ({why}): {w}"
                );
            }
            let gso_on = w["udp_gso"] == "on";
            ensure!(
                gso_on == offload,
                "{name}'s worker: udp gso should be {} with offloads {}: {w}",
                if offload { "on" } else { "off" },
                if offload { "on" } else { "off" },
            );
            if !offload {
                ensure!(
                    w["udp_gro"]
                        .as_str()
                        .is_some_and(|s| s.contains("CONNECTOPUS_DISABLE_OFFLOAD")),
                    "{name}'s worker should say why GRO is off: {w}"
                );
            }
        }
    }
    if offload {
        ensure!(
            tun_state.starts_with("on"),
            "foo's TUN offload: {foo_status}"
        );
        ensure!(
            counter(&foo_status, "tun_super_packets_read") > 0,
            "foo read no TSO super-packet from its TUN: {}",
            foo_status["counters"]
        );
        ensure!(
            counter(&baz_status, "tun_super_packets_written") > 0,
            "baz merged no segments into a super-packet: {}",
            baz_status["counters"]
        );
        if matches!(kind, LinkKind::DtlsPsk | LinkKind::DtlsCert) {
            ensure!(
                counter(&foo_status, "udp_gso_sends") > 0,
                "foo sent no GSO batch: {}",
                foo_status["counters"]
            );
            ensure!(
                counter(&bar_status, "udp_gso_sends") > 0,
                "bar, in transit, sent no GSO batch: {}",
                bar_status["counters"]
            );
            ensure!(
                counter(&bar_status, "udp_gro_batches") > 0,
                "bar received no GRO batch: {}",
                bar_status["counters"]
            );
        }
    } else {
        ensure!(
            tun_state.starts_with("off"),
            "foo's TUN offload should be off: {foo_status}"
        );
        for (name, status) in [
            ("foo", &foo_status),
            ("bar", &bar_status),
            ("baz", &baz_status),
        ] {
            for c in [
                "tun_super_packets_read",
                "tun_super_packets_written",
                "udp_gso_sends",
                "udp_gro_batches",
            ] {
                ensure!(counter(status, c) == 0, "{name} used {c} with offloads off");
            }
        }
    }
    Ok(())
}

#[test]
fn dtls_transfers_are_intact_with_offloads() {
    require_root!();
    run_test("offload_dtls_on", |dir| {
        transfer_checks(LinkKind::DtlsPsk, true, dir)
    });
}

#[test]
fn dtls_transfers_are_intact_without_offloads() {
    require_root!();
    run_test("offload_dtls_off", |dir| {
        transfer_checks(LinkKind::DtlsPsk, false, dir)
    });
}

#[test]
fn tls_transfers_are_intact_with_offloads() {
    require_root!();
    run_test("offload_tls_on", |dir| {
        transfer_checks(LinkKind::TcpTls, true, dir)
    });
}

#[test]
fn tls_transfers_are_intact_without_offloads() {
    require_root!();
    run_test("offload_tls_off", |dir| {
        transfer_checks(LinkKind::TcpTls, false, dir)
    });
}

#[test]
fn tcp_transfers_are_intact_with_offloads() {
    require_root!();
    run_test("offload_tcp_on", |dir| {
        transfer_checks(LinkKind::Tcp, true, dir)
    });
}

#[test]
fn tcp_transfers_are_intact_without_offloads() {
    require_root!();
    run_test("offload_tcp_off", |dir| {
        transfer_checks(LinkKind::Tcp, false, dir)
    });
}

/// Four parallel UDP streams through a DTLS line with offloads: nothing arrives out of
/// order (each flow stays on its path through the batches), and most of it arrives.
#[test]
fn parallel_udp_streams_stay_in_order() {
    require_root!();
    run_test("offload_udp_order", |dir| {
        require_tools(&["iperf3"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
        )?;
        mesh.set_log_level("info");
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
            "UDP datagrams arrived out of order: {result:?}"
        );
        Ok(())
    });
}

/// Sends `count` UDP super-packets of ten 1,450-byte segments each (`UDP_SEGMENT`, so the
/// kernel hands the TUN one USO super-packet per send) to `[dst]:9`; send errors (the kernel's
/// `EMSGSIZE` once it learned a smaller path MTU) are counted, not fatal.
/// Sends `count` USO super-packets to `dst`, then keeps its socket open for half a second: the
/// kernel applies a Packet Too Big to the path only through the socket the packet left from
/// (`udpv6_err`), so an error that arrives after the sender exited teaches it nothing.
const USO_SENDER: &str = r#"
import socket, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, 1450)  # UDP_SEGMENT
errors = 0
for _ in range(count):
    try:
        s.sendto(b"x" * 1450 * 10, (dst, 9))
    except OSError:
        errors += 1
print("errors", errors, flush=True)
time.sleep(0.5)
"#;

/// A host whose TUN MTU is raised above its only link's hands the node USO super-packets whose
/// segments do not fit the link: the node answers with Packet Too Big (it checks the segment
/// length, not the whole super-packet), and the sending kernel learns the path MTU.
#[test]
fn packet_too_big_reaches_the_sender_of_a_super_packet() {
    require_root!();
    run_test("offload_ptb", |dir| {
        require_tools(&["python3"]);
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        // The DTLS link carries 1,400-byte packets; the host now sends 1,498-byte segments.
        topo.ns("foo")
            .ip(&["link", "set", "dev", "cx-foo", "mtu", "1500"])?;
        let bar = mesh.address("bar").to_string();
        let route = || -> Result<String> { topo.ns("foo").ip(&["-6", "route", "get", &bar]) };
        ensure!(!route()?.contains("mtu 1400"), "{}", route()?);
        // Send until the kernel has learned (an ICMPv6 error may be lost or rate-limited).
        connectopus_tests::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let _ = topo
                .ns("foo")
                .exec_ok("python3", &["-c", USO_SENDER, &bar, "2"]);
            route().is_ok_and(|r| r.contains("mtu 1400"))
        })
        .map_err(|_| anyhow::anyhow!("foo's kernel learned no path MTU: {:?}", route()))?;
        let foo_status = mesh.status("foo")?;
        ensure!(
            counter(&foo_status, "icmp_errors_sent") > 0,
            "foo sent no Packet Too Big: {}",
            foo_status["counters"]
        );
        ensure!(
            counter(&foo_status, "tun_super_packets_read") > 0,
            "foo read no super-packet: {}",
            foo_status["counters"]
        );
        Ok(())
    });
}
