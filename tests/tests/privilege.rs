//! Least privilege of a running node: after start-up it keeps only CAP_NET_ADMIN (and
//! CAP_NET_BIND_SERVICE for DNS on port 53), runs with `no_new_privs` and a seccomp filter
//! on every thread, and still forwards, serves DNS and spreads configuration changes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, Topology, iperf3_client, iperf3_server, ping6,
    require_root, require_tools, run_test,
};

const CONVERGE: Duration = Duration::from_secs(20);

/// CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12).
const NODE_CAPS: u64 = (1 << 10) | (1 << 12);

/// Reads the `Key:` lines of every thread's /proc/<pid>/task/<tid>/status.
fn thread_status(pid: u32) -> Result<Vec<BTreeMap<String, String>>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("status");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        threads.push(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
        );
    }
    Ok(threads)
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field, 16).unwrap_or(u64::MAX)
}

/// Checks that every thread of `pid` runs with the node's reduced privileges.
fn assert_reduced(node: &str, pid: u32) -> Result<()> {
    let threads = thread_status(pid)?;
    ensure!(threads.len() > 1, "{node}: expected several threads");
    for t in &threads {
        let name = t.get("Name").cloned().unwrap_or_default();
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let value = t.get(set).map_or(u64::MAX, |v| hex(v));
            ensure!(
                value == NODE_CAPS,
                "{node} thread {name}: {set} {value:#x}, expected {NODE_CAPS:#x}"
            );
        }
        ensure!(
            t.get("CapInh").map(|v| hex(v)) == Some(0),
            "{node} thread {name}: {t:?}"
        );
        ensure!(
            t.get("NoNewPrivs").map(String::as_str) == Some("1"),
            "{node} thread {name}: NoNewPrivs {:?}",
            t.get("NoNewPrivs")
        );
        ensure!(
            t.get("Seccomp").map(String::as_str) == Some("2"),
            "{node} thread {name}: Seccomp {:?}",
            t.get("Seccomp")
        );
    }
    Ok(())
}

#[test]
fn a_running_node_keeps_only_the_capabilities_it_needs_behind_seccomp() {
    require_root!();
    require_tools(&["ping", "iperf3"]);
    run_test("privilege_reduced", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        for node in ["foo", "bar", "baz"] {
            let pid = mesh.process(node).context("node process")?.pid();
            assert_reduced(node, pid)?;
            let status = mesh.status(node)?;
            ensure!(
                status["capabilities"]
                    == serde_json::json!(["cap_net_bind_service", "cap_net_admin"]),
                "{node}: {}",
                status["capabilities"]
            );
            ensure!(status["no_new_privs"] == true, "{status}");
            let seccomp = status["seccomp"].as_str().unwrap_or_default();
            ensure!(seccomp.starts_with("on ("), "{node}: seccomp {seccomp}");
        }
        let text = mesh.status_text("bar")?;
        ensure!(
            text.contains("privileges: capabilities cap_net_bind_service,cap_net_admin  no_new_privs on  seccomp on ("),
            "{text}"
        );

        // Forwarding, DNS and a bulk transfer work that way.
        let baz = mesh.address("baz");
        let ping = ping6(topo.ns("foo"), baz, 3, 56, &[])?;
        ensure!(ping.all_received(), "foo -> baz: {ping:?}");
        let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz)), 5201)?;
        let result = iperf3_client(
            topo.ns("foo"),
            baz,
            &IperfOptions {
                seconds: 2,
                ..IperfOptions::default()
            },
        )?;
        drop(server);
        ensure!(result.bits_per_second() > 1e6, "iperf3: {result:?}");
        Ok(())
    });
}

#[test]
fn the_seccomp_escape_hatch_leaves_the_filter_off_and_says_so() {
    require_root!();
    run_test("privilege_no_seccomp", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.set_env("CONNECTOPUS_SECCOMP", "off");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let pid = mesh.process("foo").context("node process")?.pid();
        let threads = thread_status(pid)?;
        ensure!(
            threads
                .iter()
                .all(|t| t.get("Seccomp").map(String::as_str) == Some("0")),
            "{threads:?}"
        );
        // Capabilities are still dropped.
        ensure!(
            threads
                .iter()
                .all(|t| t.get("CapEff").map(|v| hex(v)) == Some(NODE_CAPS)),
            "{threads:?}"
        );
        let status = mesh.status("foo")?;
        let seccomp = status["seccomp"].as_str().unwrap_or_default();
        ensure!(seccomp.starts_with("off: "), "{seccomp}");
        Ok(())
    });
}

/// A change to `global` makes every node re-execute itself (a new mesh instance). The new
/// process inherits the filter, no_new_privs and the reduced capabilities, and still creates
/// its TUN device and sockets and links up again.
#[test]
fn a_node_that_restarts_itself_for_a_config_change_comes_back_as_confined() {
    require_root!();
    require_tools(&["ping"]);
    run_test("privilege_restart", |dir| {
        let nodes = ["foo", "bar"];
        let topo = Topology::line(dir, &nodes)?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let ebpf_before = mesh.status("foo")?["ebpf"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Both nodes restart (same pid: execve) and come back with a new epoch at version 2.
        mesh.restart_instances_with_a_global_change("foo")?;
        for node in nodes {
            let pid = mesh.process(node).context("node process")?.pid();
            assert_reduced(node, pid)?;
            let status = mesh.status(node)?;
            let seccomp = status["seccomp"].as_str().unwrap_or_default();
            ensure!(seccomp.starts_with("on ("), "{node}: seccomp {seccomp}");
            ensure!(
                status["tun"].as_str().is_some_and(|t| !t.is_empty()),
                "{status}"
            );
            // The eBPF counters come back on the new TUN device: the attach helper, which kept
            // the rights, loads them for the confined node.
            let ebpf = status["ebpf"].as_str().unwrap_or_default();
            ensure!(
                ebpf.starts_with("tc counters on") || !ebpf_before.starts_with("tc counters on"),
                "{node}: ebpf after the restart {ebpf:?} (before: {ebpf_before:?})"
            );
            // And the cost of a wake-up was measured again (it pins threads).
            let idle_wake = status["idle_wake"].as_str().unwrap_or_default();
            ensure!(
                !idle_wake.starts_with("not measured"),
                "{node}: idle wake-ups after the restart {idle_wake:?}"
            );
        }
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 3, 56, &[])?;
        ensure!(
            ping.all_received(),
            "foo -> bar after the restart: {ping:?}"
        );
        Ok(())
    });
}
