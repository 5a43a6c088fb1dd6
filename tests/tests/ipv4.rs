//! IPv4 over the mesh, end to end: foo—bar—baz in network namespaces with `global.subnet4`,
//! probed with ping, traceroute, iperf3 and dig; and the same line without `subnet4` keeps
//! no IPv4 anywhere.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, Topology, dig, parse_ping, require_root, require_tools, run_test,
    wait_until,
};

const CONVERGE: Duration = Duration::from_secs(20);
/// The mesh's IPv4 subnet: inside 198.18.0.0/15, apart from the underlay's 198.18.<link>.0/24.
const SUBNET4: &str = "198.19.0.0/16";

fn addr4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, i)
}

/// Adds `subnet4` to the mesh file and signs it again.
fn enable_ipv4(mesh: &Mesh<'_>) -> Result<()> {
    let path = mesh.config_path();
    let yaml = std::fs::read_to_string(path)?;
    let yaml = yaml.replacen(
        "  subnet: fd00:cafe::/64\n",
        &format!("  subnet: fd00:cafe::/64\n  subnet4: {SUBNET4}\n"),
        1,
    );
    ensure!(yaml.contains("subnet4"), "no subnet line in {yaml}");
    std::fs::write(path, yaml)?;
    mesh.sign()
}

/// The hops `traceroute -4 -n -q 1` printed.
fn traceroute4(ns: &connectopus_tests::NetNs, dst: Ipv4Addr) -> Result<Vec<Option<Ipv4Addr>>> {
    let dst_s = dst.to_string();
    let output = ns.exec_timeout(
        "traceroute",
        &["-4", "-n", "-q", "1", "-w", "1", "-m", "8", &dst_s],
        Duration::from_secs(15),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<u32>().ok()?;
            Some(words.next().and_then(|w| w.parse().ok()))
        })
        .collect())
}

#[test]
fn ipv4_crosses_the_mesh_with_ping_traceroute_iperf3_and_dns() {
    require_root!();
    run_test("ipv4_line", |dir| {
        require_tools(&["ping", "traceroute", "iperf3", "dig"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
            &[
                ("foo", &format!("    address4: {}\n", addr4(1))),
                ("bar", &format!("    address4: {}\n", addr4(2))),
                ("baz", &format!("    address4: {}\n", addr4(3))),
            ],
        )?;
        enable_ipv4(&mesh)?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let (foo4, bar4, baz4) = (addr4(1), addr4(2), addr4(3));

        // The TUN holds the IPv4 address and the kernel routes subnet4 into the mesh.
        let routes = topo
            .ns("foo")
            .ip(&["-4", "route", "get", &baz4.to_string()])?;
        ensure!(routes.contains("dev cx-foo"), "{routes}");

        // Ping both ways (the first may race the last update: wait for one to get through).
        wait_until(Duration::from_secs(10), Duration::from_millis(300), || {
            topo.ns("foo")
                .exec(
                    "ping",
                    &["-4", "-n", "-c", "1", "-W", "1", &baz4.to_string()],
                )
                .is_ok_and(|out| out.status.success())
        })
        .context("foo -> baz over IPv4")?;
        for (from, to) in [("foo", baz4), ("baz", foo4)] {
            let out = topo.ns(from).exec(
                "ping",
                &[
                    "-4",
                    "-n",
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    &to.to_string(),
                ],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let ping = parse_ping(&text);
            ensure!(ping.all_received(), "{from} -> {to}: {text}");
        }

        // traceroute: bar answers with an ICMPv4 time exceeded from its IPv4 address.
        let hops = traceroute4(topo.ns("foo"), baz4)?;
        ensure!(
            hops == vec![Some(bar4), Some(baz4)],
            "traceroute -4 foo -> baz should show bar then baz: {hops:?}"
        );

        // An iperf3 TCP run between the IPv4 mesh addresses (the kernel hands TSO4 super-packets
        // to the node, which segments them for the links).
        let server = topo.ns("baz").spawn(
            "iperf3",
            &[
                "-s",
                "-1",
                "--forceflush",
                "-p",
                "5201",
                "-B",
                &baz4.to_string(),
            ],
        )?;
        server.wait_for_output("Server listening", Duration::from_secs(5))?;
        let out = topo.ns("foo").exec_timeout(
            "iperf3",
            &[
                "-4",
                "-J",
                "--connect-timeout",
                "3000",
                "-c",
                &baz4.to_string(),
                "-t",
                "2",
                "-p",
                "5201",
            ],
            Duration::from_secs(30),
        )?;
        drop(server);
        let report = connectopus_tests::parse_iperf3(&String::from_utf8_lossy(&out.stdout))?;
        ensure!(
            report.bits_per_second() > 0.0,
            "iperf3 -4 foo -> baz: {report:?}"
        );

        // DNS: A for baz and PTR for its address, from foo's own node.
        let name = "baz.connectopus.test";
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            dig(
                topo.ns("foo"),
                IpAddr::V6(mesh.address("foo")),
                name,
                "A",
                false,
            )
            .is_ok_and(|r| {
                r.answers
                    .iter()
                    .any(|a| a.rtype == "A" && a.data == baz4.to_string())
            })
        })
        .context("A record of baz")?;
        let reverse = "3.0.19.198.in-addr.arpa";
        let r = dig(
            topo.ns("foo"),
            IpAddr::V6(mesh.address("foo")),
            reverse,
            "PTR",
            false,
        )?;
        ensure!(
            r.answers
                .iter()
                .any(|a| a.rtype == "PTR" && a.data == "baz.connectopus.test."),
            "{r:?}"
        );
        Ok(())
    });
}

#[test]
fn a_mesh_without_subnet4_has_no_ipv4() {
    require_root!();
    run_test("ipv6_only_line", |dir| {
        require_tools(&["ping", "dig"]);
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let addrs = topo
            .ns("foo")
            .ip(&["-4", "addr", "show", "dev", "cx-foo"])?;
        ensure!(
            !addrs.contains("inet "),
            "IPv4 on an IPv6-only mesh's TUN: {addrs}"
        );
        let server = IpAddr::V6(mesh.address("foo"));
        // Wait until foo has learned bar's name (its AAAA), then ask for its A.
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            dig(
                topo.ns("foo"),
                server,
                "bar.connectopus.test",
                "AAAA",
                false,
            )
            .is_ok_and(|r| !r.answers.is_empty())
        })
        .context("AAAA record of bar")?;
        let r = dig(topo.ns("foo"), server, "bar.connectopus.test", "A", false)?;
        ensure!(
            r.rcode.as_deref() == Some("NOERROR") && r.answers.is_empty(),
            "A on an IPv6-only mesh: {r:?}"
        );
        // IPv6 still works.
        let out = topo.ns("foo").exec(
            "ping",
            &[
                "-6",
                "-n",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                &mesh.address("bar").to_string(),
            ],
        )?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    });
}
