//! Names and the built-in DNS server end to end: real `dig` against every node of a mesh in
//! network namespaces, names that follow nodes as they die and return.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    DigResult, LinkKind, Mesh, MeshLink, Topology, dig, require_root, require_tools, run_test,
    wait_until,
};

const DOMAIN: &str = "connectopus.test";

fn reverse_name(addr: Ipv6Addr) -> String {
    let mut labels: Vec<String> = addr
        .octets()
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .map(|n| format!("{n:x}"))
        .collect();
    labels.reverse();
    format!("{}.ip6.arpa", labels.join("."))
}

fn aaaa(answer: &DigResult) -> Vec<String> {
    answer
        .answers
        .iter()
        .filter(|r| r.rtype == "AAAA")
        .map(|r| r.data.clone())
        .collect()
}

/// The /etc/netns/<ns>/resolv.conf that `ip netns exec` binds over /etc/resolv.conf,
/// removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn new(ns: &str, nameserver: Ipv6Addr) -> Result<Self> {
        let dir = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\nsearch {DOMAIN}\n"),
        )?;
        Ok(Self(dir))
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_node_answers_for_the_mesh_and_names_follow_their_nodes() {
    require_root!();
    run_test("dns_mesh", |dir| {
        require_tools(&["dig", "ping"]);
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
                MeshLink::new("baz", "foo", LinkKind::DtlsPsk),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let bar = mesh.address("bar");
        let bar_name = format!("bar.{DOMAIN}");
        // Every node has learned every name before we ask.
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            ["foo", "bar", "baz"].iter().all(|n| {
                mesh.status(n)
                    .is_ok_and(|s| s["names"].as_array().is_some_and(|names| names.len() == 3))
            })
        })?;

        for side in ["foo", "bar", "baz"] {
            let server = IpAddr::V6(mesh.address(side));
            let ns = topo.ns(side);
            for tcp in [false, true] {
                let answer = dig(ns, server, &bar_name, "AAAA", tcp)?;
                ensure!(
                    aaaa(&answer) == vec![bar.to_string()] && answer.aa(),
                    "{side} (tcp {tcp}): AAAA {bar_name}: {answer:?}"
                );
            }
            let answer = dig(ns, server, &reverse_name(bar), "PTR", false)?;
            ensure!(
                answer
                    .answers
                    .iter()
                    .any(|r| r.data == format!("{bar_name}.")),
                "{side}: PTR for {bar}: {answer:?}"
            );
            let answer = dig(ns, server, &format!("nope.{DOMAIN}"), "AAAA", false)?;
            ensure!(
                answer.rcode.as_deref() == Some("NXDOMAIN"),
                "{side}: {answer:?}"
            );
            let answer = dig(ns, server, "example.com", "AAAA", false)?;
            ensure!(
                answer.rcode.as_deref() == Some("REFUSED"),
                "{side}: {answer:?}"
            );
            ensure!(
                !answer.flags.iter().any(|f| f == "ra"),
                "recursion offered: {answer:?}"
            );
        }

        // An application resolving through its node: ping by name.
        let _resolv = NetnsResolvConf::new(topo.ns("foo").name(), mesh.address("foo"))?;
        let output = topo.ns("foo").exec(
            "ping",
            &["-6", "-c", "2", "-i", "0.2", "-W", "2", &bar_name],
        )?;
        ensure!(
            output.status.success(),
            "ping -6 {bar_name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        // SIGKILL bar: its name leaves every other node within the dead interval (7 s).
        mesh.kill("bar")?;
        for side in ["foo", "baz"] {
            let server = IpAddr::V6(mesh.address(side));
            wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
                dig(topo.ns(side), server, &bar_name, "AAAA", false)
                    .is_ok_and(|a| a.rcode.as_deref() == Some("NXDOMAIN"))
            })
            .with_context(|| format!("{side} still resolves {bar_name} after bar died"))?;
        }
        mesh.start("bar")?;
        for side in ["foo", "baz"] {
            let server = IpAddr::V6(mesh.address(side));
            wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
                dig(topo.ns(side), server, &bar_name, "AAAA", false)
                    .is_ok_and(|a| aaaa(&a) == vec![bar.to_string()])
            })
            .with_context(|| format!("{side} does not resolve {bar_name} after bar returned"))?;
        }
        Ok(())
    });
}

#[test]
fn a_node_with_dns_disabled_answers_no_dns() {
    require_root!();
    run_test("dns_disabled", |dir| {
        require_tools(&["dig"]);
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure_with(
            &topo,
            &[MeshLink::new("bar", "foo", LinkKind::Tcp)],
            &[("bar", "    dns: {disable: true}\n")],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let name = format!("foo.{DOMAIN}");
        let answer = dig(
            topo.ns("foo"),
            IpAddr::V6(mesh.address("bar")),
            &name,
            "AAAA",
            false,
        )?;
        ensure!(answer.rcode.is_none(), "bar answered: {answer:?}");
        let answer = dig(
            topo.ns("foo"),
            IpAddr::V6(mesh.address("foo")),
            &name,
            "AAAA",
            false,
        )?;
        ensure!(
            aaaa(&answer) == vec![mesh.address("foo").to_string()],
            "{answer:?}"
        );
        let status = mesh.status("bar")?;
        ensure!(
            status["dns"]
                .as_str()
                .is_some_and(|d| d.contains("disabled")),
            "{}",
            status["dns"]
        );
        Ok(())
    });
}
