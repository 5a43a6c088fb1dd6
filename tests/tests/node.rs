//! End-to-end tests of the `connectopus` node: real processes in network namespaces joined by
//! veth pairs, real TUN devices, DTLS and TCP/TLS links, probed with ping, traceroute,
//! iperf3 and openssl.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, Pki, San, Topology, iperf3_client, iperf3_server,
    ping6, require_root, require_tools, run_test, tls_client, tls_server, traceroute6, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(20);

/// Runs the checks every transport must pass on a foo—bar—baz line.
fn line_checks(kind: LinkKind, dir: &connectopus_tests::TestDir) -> Result<()> {
    require_tools(&["ping", "traceroute", "iperf3", "openssl"]);
    let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
    let mut mesh = Mesh::configure(
        &topo,
        &[
            MeshLink::new("bar", "foo", kind),
            MeshLink::new("bar", "baz", kind),
        ],
    )?;
    mesh.start_all()?;
    mesh.wait_converged(CONVERGE)?;
    let (foo_addr, bar_addr, baz_addr) = (
        mesh.address("foo"),
        mesh.address("bar"),
        mesh.address("baz"),
    );

    let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
    ensure!(ping.all_received(), "foo -> baz: {ping:?}");
    let ping = ping6(topo.ns("baz"), foo_addr, 3, 56, &[])?;
    ensure!(ping.all_received(), "baz -> foo: {ping:?}");

    let hops = traceroute6(topo.ns("foo"), baz_addr)?;
    ensure!(
        hops == vec![Some(bar_addr), Some(baz_addr)],
        "traceroute foo -> baz should show bar then baz: {hops:?}"
    );

    let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz_addr)), 5201)?;
    let result = iperf3_client(
        topo.ns("foo"),
        baz_addr,
        &IperfOptions {
            seconds: 2,
            ..IperfOptions::default()
        },
    )?;
    drop(server);
    ensure!(
        result.bits_per_second() > 1e6,
        "iperf3 foo -> baz: {result:?}"
    );

    // An ordinary TLS connection between applications on foo's and baz's sides, end to end.
    let pki = Pki::new(dir)?;
    let cert = pki.issue("app", &[San::Ip(IpAddr::V6(baz_addr))])?;
    let _server = tls_server(topo.ns("baz"), IpAddr::V6(baz_addr), 4433, &cert)?;
    let client = tls_client(
        topo.ns("foo"),
        IpAddr::V6(baz_addr),
        4433,
        pki.ca_cert(),
        "hello across the mesh",
        Duration::from_secs(10),
    )?;
    ensure!(client.ok(), "TLS across the mesh: {}", client.output);

    let status = mesh.status("bar")?;
    ensure!(
        status["links"].as_array().map(Vec::len) == Some(2),
        "{status}"
    );
    Ok(())
}

#[test]
fn line_over_dtls_psk() {
    require_root!();
    run_test("line_over_dtls_psk", |dir| {
        line_checks(LinkKind::DtlsPsk, dir)
    });
}

#[test]
fn line_over_dtls_certificates() {
    require_root!();
    run_test("line_over_dtls_certificates", |dir| {
        line_checks(LinkKind::DtlsCert, dir)
    });
}

#[test]
fn line_over_tcp_tls() {
    require_root!();
    run_test("line_over_tcp_tls", |dir| {
        line_checks(LinkKind::TcpTls, dir)
    });
}

#[test]
fn line_over_plain_tcp() {
    require_root!();
    run_test("line_over_plain_tcp", |dir| line_checks(LinkKind::Tcp, dir));
}

#[test]
fn triangle_reroutes_around_a_killed_node_and_back() {
    require_root!();
    run_test("triangle_reroutes", |dir| {
        require_tools(&["ping", "traceroute"]);
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
                MeshLink::new("baz", "foo", LinkKind::DtlsPsk).cost(5.0),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("bar")
        })
        .context("foo should reach baz over the cheap path through bar")?;
        let baz = mesh.address("baz");
        let hops = traceroute6(topo.ns("foo"), baz)?;
        ensure!(
            hops == vec![Some(mesh.address("bar")), Some(baz)],
            "{hops:?}"
        );

        mesh.kill("bar")?;
        // The dead interval is 7 s; allow for the triggered update and route computation.
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("baz")
        })
        .context("foo should reroute to the costly direct link within the dead interval")?;
        let ping = ping6(topo.ns("foo"), baz, 3, 56, &[])?;
        ensure!(ping.all_received(), "after the reroute: {ping:?}");
        let hops = traceroute6(topo.ns("foo"), baz)?;
        ensure!(hops == vec![Some(baz)], "{hops:?}");

        mesh.start("bar")?;
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("bar")
        })
        .context("the cheap path should return once bar is back")?;
        Ok(())
    });
}

#[test]
fn packet_too_big_from_a_smaller_link_teaches_the_path_mtu() {
    require_root!();
    run_test("packet_too_big", |dir| {
        require_tools(&["ping", "iperf3"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                // foo's only link is TCP (its TUN MTU is 1500); bar—baz is DTLS (MTU 1400).
                MeshLink::new("bar", "foo", LinkKind::Tcp),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let baz = mesh.address("baz");
        let ping = ping6(topo.ns("foo"), baz, 2, 1450, &["-M", "do"])?;
        ensure!(
            ping.saw_icmp_error("too big")
                || ping.saw_icmp_error("Too big")
                || ping.local_errors.iter().any(|e| e.contains("mtu")),
            "a 1498-byte packet over a 1400-byte link should get Packet Too Big: {ping:?}"
        );
        let status = mesh.status("bar")?;
        ensure!(
            status["counters"]["icmp_errors_sent"].as_u64() > Some(0),
            "bar should have sent the ICMPv6 error: {}",
            status["counters"]
        );
        // The kernel learned the path MTU: a TCP transfer works.
        let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz)), 5201)?;
        let result = iperf3_client(topo.ns("foo"), baz, &IperfOptions::default())?;
        drop(server);
        ensure!(result.bits_per_second() > 1e6, "{result:?}");
        Ok(())
    });
}

#[test]
fn garbage_and_truncated_handshakes_do_not_disturb_a_node() {
    require_root!();
    run_test("garbage_to_listeners", |dir| {
        require_tools(&["ping"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::TcpTls),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let since = |mesh: &Mesh<'_>| -> Result<Vec<f64>> {
            let status = mesh.status("bar")?;
            Ok(status["links"]
                .as_array()
                .context("links")?
                .iter()
                .filter_map(|l| l["since_unix"].as_f64())
                .collect())
        };
        let before = since(&mesh)?;
        ensure!(before.len() == 2, "two established links: {before:?}");

        // Attack bar's listeners from foo's namespace: random datagrams, truncated and
        // corrupted ClientHellos at the DTLS port; random bytes and half a TLS hello at the
        // TCP port.
        let dtls_port = SocketAddr::new(IpAddr::V6(topo.link_addr("bar", "foo")), 4000);
        let tcp_port = SocketAddr::new(IpAddr::V6(topo.link_addr("bar", "baz")), 4001);
        topo.ns("foo")
            .exec_ok("python3", &["-c", &udp_attack_script(dtls_port)])
            .context("attacking the DTLS listener")?;
        topo.ns("baz")
            .exec_ok("python3", &["-c", &tcp_attack_script(tcp_port)])
            .context("attacking the TCP+TLS listener")?;

        ensure!(
            mesh.process("bar").is_some_and(|p| p.is_running()),
            "bar died under garbage"
        );
        let ping = ping6(topo.ns("foo"), mesh.address("baz"), 3, 56, &[])?;
        ensure!(ping.all_received(), "traffic after the attack: {ping:?}");
        let after = since(&mesh)?;
        ensure!(
            before == after,
            "links were disturbed: before {before:?}, after {after:?}"
        );
        Ok(())
    });
}

/// A Python script that throws random datagrams and truncated or corrupted ClientHellos at
/// a DTLS listener.
fn udp_attack_script(dtls: SocketAddr) -> String {
    format!(
        r#"
import os, socket, random
random.seed(7)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
dst = ("{ip}", {port})
hello = bytes([22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x60, 1, 0, 0, 0x54, 0, 0, 0, 0, 0, 0, 0, 0x54])
for i in range(300):
    u.sendto(os.urandom(random.randint(1, 1500)), dst)
for cut in range(1, len(hello)):
    u.sendto(hello[:cut], dst)
for i in range(100):
    h = bytearray(hello + os.urandom(80))
    h[random.randrange(len(h))] ^= 0xff
    u.sendto(bytes(h), dst)
"#,
        ip = dtls.ip(),
        port = dtls.port()
    )
}

/// A Python script that connects to a TCP+TLS listener and sends random bytes or half a
/// TLS ClientHello, then hangs up.
fn tcp_attack_script(tcp: SocketAddr) -> String {
    format!(
        r#"
import os, socket, random
random.seed(7)
for i in range(20):
    t = socket.create_connection(("{ip}", {port}), timeout=2)
    if i % 2:
        t.sendall(os.urandom(random.randint(1, 4000)))
    else:
        t.sendall(bytes([22, 3, 1, 0x02, 0x00, 1, 0, 1, 0xfc, 3, 3]))
    t.close()
"#,
        ip = tcp.ip(),
        port = tcp.port()
    )
}

#[test]
fn wrong_psk_and_untrusted_certificates_never_connect() {
    require_root!();
    run_test("wrong_credentials", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "foo", LinkKind::TcpTls),
            ],
        )?;
        // Give foo another PSK and another CA than bar's.
        let config = std::fs::read_to_string(mesh.config_path())?;
        let wrong_psk = dir.join("wrong.psk");
        connectopus_tests::write_secret(&wrong_psk, b"not the right key")?;
        let other_dir = connectopus_tests::TestDir::new("wrong_credentials_other_ca")?;
        let other_pki = Pki::new(&other_dir)?;
        let mut lines: Vec<String> = Vec::new();
        let mut in_foo = false;
        for line in config.lines() {
            if line.starts_with("  ") && !line.starts_with("   ") {
                in_foo = line.trim() == "foo:";
            }
            let mut line = line.to_owned();
            if in_foo && line.trim_start().starts_with("psk_file:") {
                line = format!("        psk_file: {}", wrong_psk.display());
            }
            if in_foo && line.trim_start().starts_with("root_ca_file:") {
                line = format!("        root_ca_file: {}", other_pki.ca_cert().display());
            }
            lines.push(line);
        }
        std::fs::write(mesh.config_path(), lines.join("\n") + "\n")?;
        mesh.sign()?;
        mesh.start_all()?;
        std::thread::sleep(Duration::from_secs(6));
        for node in ["foo", "bar"] {
            let status = mesh.status(node)?;
            let established = status["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["state"] == "established")
                .count();
            ensure!(
                established == 0,
                "{node} got a session: {}",
                status["links"]
            );
        }
        let foo_tun_route = mesh.next_hop("foo", "bar")?;
        ensure!(
            foo_tun_route.is_none(),
            "foo has a route to bar: {foo_tun_route:?}"
        );
        Ok(())
    });
}

#[test]
fn sigterm_removes_the_tun_device_and_the_control_socket() {
    require_root!();
    run_test("clean_shutdown", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let links = topo.ns("foo").ip(&["-o", "link", "show"])?;
        ensure!(links.contains("cx-foo"), "{links}");
        let status = mesh.stop("foo")?;
        ensure!(status.success(), "foo exited with {status}");
        let links = topo.ns("foo").ip(&["-o", "link", "show"])?;
        ensure!(!links.contains("cx-foo"), "TUN left behind: {links}");
        ensure!(!mesh.socket("foo").exists(), "control socket left behind");
        let routes = topo.ns("foo").ip(&["-6", "route", "show"])?;
        ensure!(
            !routes.contains("fd00:cafe::/64"),
            "route left behind: {routes}"
        );
        Ok(())
    });
}

#[test]
fn status_json_reports_links_routes_nodes_and_drops() {
    require_root!();
    run_test("status_json", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let status = mesh.status("foo")?;
        ensure!(status["name"] == "foo", "{status}");
        ensure!(status["address"] == mesh.address("foo").to_string().as_str());
        ensure!(status["dataplane"] == "uring" || status["dataplane"] == "syscall");
        let link = &status["links"][0];
        ensure!(
            link["peer_name"] == "bar" && link["state"] == "established",
            "{link}"
        );
        ensure!(link["bytes_in"].as_u64() > Some(0));
        let nodes: Vec<&str> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["name"].as_str())
            .collect();
        ensure!(
            nodes.contains(&"bar") && nodes.contains(&"foo"),
            "{nodes:?}"
        );
        ensure!(
            status["drops"].get("no_route").is_some(),
            "{}",
            status["drops"]
        );
        // A packet to an unknown mesh address is answered with "no route" and counted.
        let nowhere: Ipv6Addr = "fd00:cafe::99".parse()?;
        let ping = ping6(topo.ns("foo"), nowhere, 1, 56, &[])?;
        ensure!(!ping.all_received());
        let status = mesh.status("foo")?;
        ensure!(
            status["counters"]["icmp_errors_sent"].as_u64() > Some(0),
            "{status}"
        );
        // With the eBPF object built (`cargo xtask build-ebpf`, which CI runs first), tc
        // counters on the TUN device count what the ping sent.
        let ebpf = status["ebpf"].as_str().unwrap_or_default().to_owned();
        if ebpf.starts_with("not loaded") {
            eprintln!("status_json: eBPF counters not checked: {ebpf}");
            ensure!(
                std::env::var_os("CI").is_none(),
                "CI builds the eBPF object, so the node must load it: {ebpf}"
            );
        } else {
            let out_packets: u64 = ebpf
                .split("out ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .context("parsing the egress counter")?;
            ensure!(out_packets >= 1, "egress counter did not move: {ebpf}");
        }
        Ok(())
    });
}

#[test]
fn tun_devs_and_the_syscall_fallback_dataplane_work() {
    require_root!();
    run_test("tun_devs_and_fallback", |dir| {
        require_tools(&["ping"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let host: Ipv6Addr = "fd00:cafe::1:2".parse()?;
        let mut mesh = Mesh::configure_with(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
            &[(
                "foo",
                "    tun_devs:\n      foo-host: {device: cxh-foo, address: \"fd00:cafe::1:2\", cost: 1}\n",
            )],
        )?;
        mesh.set_env("CONNECTOPUS_DISABLE_URING", "1");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let status = mesh.status("bar")?;
        ensure!(status["dataplane"] == "syscall", "{}", status["dataplane"]);
        ensure!(
            status["dataplane_fallback_reason"]
                .as_str()
                .is_some_and(|r| r.contains("CONNECTOPUS_DISABLE_URING")),
            "the fallback should say why: {}",
            status["dataplane_fallback_reason"]
        );
        // And so does each dataplane worker.
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        ensure!(!workers.is_empty(), "no workers in status: {status}");
        for w in &workers {
            ensure!(
                w["io_uring"].as_str().is_some_and(
                    |s| s.starts_with("off: ") && s.contains("CONNECTOPUS_DISABLE_URING")
                ),
                "worker without io_uring should say why: {w}"
            );
        }
        // The extra host address on foo's second device is routed across the mesh.
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            mesh.status("baz").is_ok_and(|s| {
                s["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["prefix"] == "fd00:cafe::1:2/128" && r["next_hop"] == "bar")
            })
        })
        .context("baz should learn foo's tun_devs address")?;
        let ping = ping6(topo.ns("baz"), host, 3, 56, &[])?;
        ensure!(ping.all_received(), "baz -> foo's host address: {ping:?}");
        let links = topo.ns("foo").ip(&["-o", "link", "show"])?;
        ensure!(links.contains("cxh-foo"), "{links}");
        Ok(())
    });
}

/// Whether `node` has an established session with `peer` (by `status --json`).
fn has_session(mesh: &Mesh, node: &str, peer: &str) -> bool {
    mesh.status(node).is_ok_and(|status| {
        status["links"].as_array().is_some_and(|links| {
            links
                .iter()
                .any(|l| l["peer_name"] == peer && l["state"] == "established")
        })
    })
}

/// The entry of `backend` in a `status --json` report.
fn backend_status(status: &serde_json::Value, backend: &str) -> serde_json::Value {
    status["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == backend))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_listener_whose_port_is_taken_is_retried_while_the_other_links_run() {
    require_root!();
    run_test("listener_port_taken", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        // bar listens for foo on DTLS (backend l0) and for baz on TCP (backend l1, port 4001).
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
        )?;
        let tcp = SocketAddr::new(IpAddr::V6(topo.link_addr("bar", "baz")), 4001);
        let holder = topo.ns("bar").bind_tcp(tcp)?;
        mesh.start_all()?;

        // The node runs with the backend that works.
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            has_session(&mesh, "bar", "foo")
        })
        .context("bar's DTLS link to foo should come up while its TCP port is taken")?;
        // It retries the other one every 5 s, showing why in status; wait for a second try.
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            mesh.status("bar").is_ok_and(|s| {
                let l1 = backend_status(&s, "l1");
                l1["state"] == "retrying" && l1["failed_attempts"].as_u64() >= Some(2)
            })
        })
        .with_context(|| format!("bar should retry l1: {:?}", mesh.status("bar")))?;
        let status = mesh.status("bar")?;
        let (l0, l1) = (backend_status(&status, "l0"), backend_status(&status, "l1"));
        ensure!(l0["state"] == "up", "{l0}");
        ensure!(
            l1["error"]
                .as_str()
                .is_some_and(|e| e.contains("Address already in use") && e.contains("4001")),
            "{l1}"
        );
        ensure!(
            l1["next_attempt_secs"].as_f64().is_some_and(|s| s <= 5.0),
            "{l1}"
        );
        ensure!(!has_session(&mesh, "bar", "baz"), "the port is still held");
        let text = mesh.status_text("bar")?;
        ensure!(
            text.lines()
                .any(|l| l.contains("l1") && l.contains("retrying") && l.contains("in use")),
            "status text should show the retrying backend:\n{text}"
        );
        // It also shows the domain, the (abbreviated) signing keys and when links came up.
        ensure!(text.contains("domain connectopus.test"), "{text}");
        ensure!(
            text.contains("authorized keys:\n  ssh-ed25519 …") && text.contains("mesh-admin"),
            "{text}"
        );
        ensure!(
            text.lines()
                .any(|l| l.contains("-> foo") && l.contains("established  since 20")),
            "{text}"
        );
        // The same error twice is logged once at warn.
        let stderr = mesh.process("bar").context("bar runs")?.stderr();
        let warnings = stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("backend failed to start"))
            .count();
        ensure!(warnings == 1, "expected one warning:\n{stderr}");

        // Once the port is free, the TCP link comes up within 10 s.
        drop(holder);
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            has_session(&mesh, "bar", "baz")
        })
        .context("bar's TCP link to baz should come up within 10 s of the port being freed")?;
        let l1 = backend_status(&mesh.status("bar")?, "l1");
        ensure!(l1["state"] == "up" && l1["error"].is_null(), "{l1}");
        ensure!(has_session(&mesh, "bar", "foo"), "the DTLS link stayed up");
        Ok(())
    });
}
