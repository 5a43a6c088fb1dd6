//! Root test: a node's resident memory. Two nodes on a line over DTLS, `foo` with the eBPF TUN
//! counters attached and `bar` without (`CONNECTOPUS_EBPF_OBJECT=/nonexistent...`); after a
//! ping across, `foo`'s peak (`VmHWM`) and current (`VmRSS`) resident memory must stay within
//! [`BOUND_KIB`] of `bar`'s, and `foo`'s counters must count the ping.
//!
//! Loading the eBPF object in the node's own process (aya parses the kernel's BTF, about 6 MB
//! of `/sys/kernel/btf/vmlinux`) once cost about 30 MiB of peak RSS; the node now loads it in a
//! short-lived helper process (`connectopus ebpf-attach`).
//!
//! Skips (passes, saying so) unless it runs as root and the eBPF object was built
//! (`cargo xtask build-ebpf`); under CI a missing object fails.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, Topology, ping6, require_root, require_tools, run_test, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(20);
/// How much more resident memory the node with eBPF may use (the aim is ~2 MiB; in-process
/// loading cost ~30 MiB).
const BOUND_KIB: u64 = 8 * 1024;
const PINGS: u32 = 10;

#[test]
fn ebpf_counters_add_no_resident_memory_to_a_node() {
    require_root!();
    run_test("ebpf_memory", |dir| {
        require_tools(&["ping"]);
        let Some(object) = ebpf_object() else {
            return Ok(());
        };
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        // Both at `info`, as in production and the benchmarks.
        mesh.set_log_level("info");
        mesh.set_env("CONNECTOPUS_EBPF_OBJECT", &object.display().to_string());
        mesh.start("foo")?;
        // Set later, so it wins for `bar` only.
        mesh.set_env("CONNECTOPUS_EBPF_OBJECT", "/nonexistent/connectopus-ebpf.o");
        mesh.start("bar")?;
        mesh.wait_converged(CONVERGE)?;

        let bar_ebpf = ebpf_status(&mesh, "bar")?;
        ensure!(
            bar_ebpf.starts_with("not loaded") && bar_ebpf.contains("/nonexistent"),
            "bar must run without eBPF: {bar_ebpf}"
        );
        let before = counters(&ebpf_status(&mesh, "foo")?)?;
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), PINGS, 56, &[])?;
        ensure!(ping.all_received(), "foo -> bar: {ping:?}");
        // The counters are read through the map fd the helper passed to the node.
        let mut last = String::new();
        let counted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            last = ebpf_status(&mesh, "foo").unwrap_or_default();
            counters(&last).is_ok_and(|(in_p, out_p)| {
                in_p >= before.0 + u64::from(PINGS) && out_p >= before.1 + u64::from(PINGS)
            })
        });
        ensure!(
            counted.is_ok(),
            "foo's eBPF counters did not count {PINGS} pings each way (before {before:?}): {last}"
        );
        ensure!(
            last.contains("(tcx)") || last.contains("(netlink)"),
            "{last}"
        );

        let foo = memory(mesh.process("foo").context("foo")?.pid())?;
        let bar = memory(mesh.process("bar").context("bar")?.pid())?;
        // On the real stderr (libtest captures `eprintln!`), so the numbers show in CI logs.
        let _ = writeln!(
            std::io::stderr(),
            "MEMORY with eBPF (foo): VmHWM {} KiB, VmRSS {} KiB; without (bar): VmHWM {} KiB, \
             VmRSS {} KiB; {last}",
            foo.hwm_kib,
            foo.rss_kib,
            bar.hwm_kib,
            bar.rss_kib
        );
        ensure!(
            foo.hwm_kib < bar.hwm_kib + BOUND_KIB,
            "peak RSS with eBPF {} KiB, without {} KiB: loading the eBPF object must not cost \
             the node {BOUND_KIB} KiB or more",
            foo.hwm_kib,
            bar.hwm_kib
        );
        ensure!(
            foo.rss_kib < bar.rss_kib + BOUND_KIB,
            "RSS with eBPF {} KiB, without {} KiB",
            foo.rss_kib,
            bar.rss_kib
        );
        Ok(())
    });
}

/// The eBPF object `cargo xtask build-ebpf` writes, or `None` after saying it is missing.
fn ebpf_object() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/connectopus-ebpf.o");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI builds the eBPF object first (cargo xtask build-ebpf); {} is missing",
        path.display()
    );
    eprintln!(
        "SKIPPED ebpf_memory: {} not built (cargo xtask build-ebpf)",
        path.display()
    );
    None
}

fn ebpf_status(mesh: &Mesh, node: &str) -> Result<String> {
    Ok(mesh.status(node)?["ebpf"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Parses `tc counters on <tun> (<mode>): in <n> pkts <n> B, out <n> pkts <n> B` into the
/// ingress and egress packet counts.
fn counters(status: &str) -> Result<(u64, u64)> {
    let packets = |word: &str| -> Result<u64> {
        status
            .split(word)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no `{word}` counter in eBPF status {status:?}"))
    };
    if !status.starts_with("tc counters on ") {
        bail!("eBPF counters not attached: {status}");
    }
    Ok((packets(": in ")?, packets(", out ")?))
}

#[derive(Debug)]
struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

/// Reads `VmHWM` and `VmRSS` from `/proc/<pid>/status`.
fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        hwm_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
    })
}
