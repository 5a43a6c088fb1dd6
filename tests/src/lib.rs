//! Helpers for multi-node tests in network namespaces.
//!
//! End-to-end tests run real `connectopus` processes, each in its own network namespace,
//! joined by veth pairs, and probe them with the real tools: `ping`, `traceroute`, `iperf3`,
//! `openssl s_server`/`s_client` and `dig`. This crate creates and always cleans up those
//! namespaces, links and processes, and wraps the tools so tests get parsed results.
//!
//! # Layout
//!
//! - `env`: [`require_root!`] / [`require_root()`] (skip with a message when not root),
//!   [`tool`] / [`require_tools`] (a missing tool fails naming its Debian package),
//!   [`unique_name`].
//! - `tempdir`: [`TestDir`], the per-test directory (kept and printed when the test fails),
//!   and [`run_test`], which runs a body returning `Result` so failures keep it.
//! - `process`: [`ChildGuard`] (a process killed on drop, output logged to files),
//!   [`run_with_timeout`], [`process_exists`].
//! - `netns`: [`NetNs`] (a namespace deleted on drop, with everything in it killed),
//!   [`Veth`] (an addressed veth pair, usable at once).
//! - `topology`: [`Topology`] (named nodes and links with a fixed address plan),
//!   e.g. [`Topology::line`], [`Topology::triangle`].
//! - `tools`: [`ping6`], [`traceroute6`], [`iperf3_server`] / [`iperf3_client`], [`dig`],
//!   [`Pki`] / [`tls_server`] / [`tls_client`].
//! - `loss`: [`Loss`], random packet loss with nftables (there is no netem).
//! - `delay`: [`Delay`], delay with jitter through a user-space relay (`link_delay`).
//! - `mesh`: [`Mesh`], real `connectopus` node processes on a topology: the generated
//!   mesh config ([`MeshLink`], [`LinkKind`]), start, kill, `status --json`, convergence.
//! - `wait`: [`wait_until`], [`poll_until`].
//! - `cni`: the CNI plugin's harness (run it, nodes that serve containers, their leases, a
//!   busybox image, the `minicni` libcni driver); `container_runtimes`: libcni, podman and
//!   containerd of their own for it ([`container_runtimes::Libcni`], `Podman`, `Containerd`).
//! - `plan`: the address plan checks.
//!
//! # Address plan
//!
//! Tests only send traffic between namespaces they created, or over loopback, and only use
//! IPv6 unique local addresses (`fd00::/8`) or documentation addresses (`2001:db8::/32`),
//! plus IPv4 `198.18.0.0/15` where IPv4 is needed. Never `10/8`, `172.16/12`,
//! `192.168/16` or public addresses: [`Veth`] and the tool wrappers refuse them.
//! A [`Topology`] puts link `k` on the underlay `2001:db8:<k>::/64` (node `i` is host `::<i>`)
//! and, with IPv4, `198.18.<k>.0/24`; the mesh subnet is [`MESH_PREFIX`] (`fd00:cafe::/64`).
//!
//! # Cleanup and names
//!
//! Every namespace, link and process is owned by a guard whose `Drop` removes it, so a
//! failing or panicking test cleans up too. Names are `cx` + the pid in base 36 + a
//! per-process counter, so concurrent test threads and concurrent `cargo test` processes
//! never collide, and interface names stay within 15 characters.
//!
//! # Writing a test
//!
//! ```no_run
//! use std::time::Duration;
//! use connectopus_tests::{Topology, ping6, require_root, run_test};
//!
//! #[test]
//! fn foo_reaches_bar() {
//!     require_root!();
//!     run_test("foo_reaches_bar", |dir| {
//!         let topo = Topology::line(dir, &["foo", "bar"])?;
//!         let result = ping6(topo.ns("foo"), topo.underlay("bar"), 3, 56, &[])?;
//!         anyhow::ensure!(result.all_received(), "{result:?}");
//!         Ok(())
//!     });
//! }
//! ```

pub mod cni;
pub mod container_runtimes;
mod delay;
mod env;
mod loss;
mod mesh;
mod netns;
pub mod pd;
mod plan;
mod process;
mod tempdir;
mod tools;
mod topology;
mod transfer;
mod wait;

pub use delay::Delay;
pub use env::{TOOLS, is_root, package_for, require_root, require_tools, tool, unique_name};
pub use loss::{Direction, Loss};
pub use mesh::{LinkKind, Mesh, MeshLink, mesh_address, ssh_keygen, ssh_sign, write_secret};
pub use netns::{EXEC_TIMEOUT, NetNs, Veth, VethConfig, VethEnd, netns_exists};
pub use plan::{allowed_v4, allowed_v6, check_addr, host_in_24, host_in_64};
pub use process::{
    ChildGuard, StdinMode, describe, dump_logs, process_exists, run_ok, run_with_timeout,
};
pub use tempdir::{TestDir, run_test};
pub use tools::{
    CertPair, DigOutcome, DigResult, DnsRecord, IcmpError, IperfOptions, IperfResult, PingResult,
    Pki, San, TlsClientResult, dig, dig_at, iperf3_client, iperf3_server, parse_dig, parse_iperf3,
    parse_ping, parse_traceroute, ping6, tls_client, tls_server, traceroute6,
};
pub use topology::{
    Link, MESH_PREFIX, Node, Topology, TopologyBuilder, underlay_addr, underlay_prefix,
    underlay_prefix_v4,
};
pub use transfer::{Transfer, checked_transfer, checked_transfer_paced, transfer_both_ways};
pub use wait::{poll_until, wait_until};

/// Where the workspace's binaries are built (`target/<profile>`).
///
/// In order: the directory named by the environment variable `CONNECTOPUS_BIN_DIR`; else
/// found from the running executable: a test or bench executable lives in
/// `target/<profile>/deps/`, so its profile directory is the parent of `deps`; a workspace
/// binary (such as the release-built end-to-end benchmark, `target/release/e2e`) lives in
/// `target/<profile>/` itself, next to the `connectopus` binary it drives. So tests find the
/// debug node binary and a release-built harness finds the release one.
pub fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("CONNECTOPUS_BIN_DIR") {
        return Ok(std::path::PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        if d.file_name().is_some_and(|n| n == "deps")
            && let Some(parent) = d.parent()
        {
            return Ok(parent.to_path_buf());
        }
        dir = d.parent();
    }
    // Not under `deps`: a binary of the workspace (the demo, the release-built benchmark
    // harness) runs from `target/<profile>/` itself.
    exe.parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("cannot find the target directory from {}", exe.display()))
}

/// The path of a workspace binary such as `connectopus` in [`target_dir`], failing with a
/// hint to build it.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = target_dir()?;
    let path = dir.join(name);
    if !path.is_file() {
        let release = if dir.file_name().is_some_and(|n| n == "release") {
            " --release"
        } else {
            ""
        };
        anyhow::bail!(
            "{} is not built; run `cargo build{release} -p {name}` first",
            path.display()
        );
    }
    Ok(path)
}
