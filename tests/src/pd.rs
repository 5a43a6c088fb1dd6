//! DHCPv6 prefix delegation in tests: Kea serving a /56 in a router namespace, the upstream
//! link from that router to a mesh node, and the addresses (mirrors) nodes derive in the
//! delegated plane. docs/dynamic-mesh.md §2.6.

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{ChildGuard, Mesh, NetNs, StdinMode, TestDir, Veth, wait_until};

/// The /56 the servers in these tests delegate.
pub const DELEGATED_POOL: &str = "2001:db8:100::/56";

/// A router namespace joined to a mesh node's namespace by a veth in 2001:db8:20::/64, with
/// DAD off on both sides so a server never starts on a tentative address.
#[derive(Debug)]
pub struct Upstream {
    pub rtr: NetNs,
    pub link: Veth,
}

impl Upstream {
    /// The router `rtr` and its link to `node`, up with its link-local address (and, with
    /// `wait_global`, its global one) usable.
    pub fn new(dir: &TestDir, node: &NetNs, wait_global: bool) -> Result<Upstream> {
        let rtr = NetNs::new(dir, "rtr")?;
        for ns in [&rtr, node] {
            ns.sysctls(&[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])?;
        }
        let link = Veth::new(&rtr, node, "2001:db8:20::".parse()?, None)?;
        wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            let addrs = rtr
                .ip(&["-o", "-6", "addr", "show", "dev", &link.a.ifname])
                .unwrap_or_default();
            addrs.contains("fe80")
                && (!wait_global || addrs.contains("2001:db8:20:"))
                && !addrs.contains("tentative")
        })
        .context("the upstream link did not come up")?;
        Ok(Upstream { rtr, link })
    }

    /// Kea on the router's side of the link.
    pub fn start_kea(&self, dir: &TestDir) -> Result<ChildGuard> {
        start_kea_on(&self.rtr, dir, &self.link.a.ifname, "2001:db8:20::/64")
    }

    /// The node's side of the link: the interface the mesh's `delegated` entry names.
    pub fn node_ifname(&self) -> &str {
        &self.link.b.ifname
    }
}

/// Kea serving [`DELEGATED_POOL`] (one /56, so a second client getting it proves a Release
/// freed it) on `interface`, whose addresses lie in `subnet`. Timers are short (T1 2 s, T2
/// 4 s, preferred 10 s, valid 14 s) so Renew, Rebind and expiry happen within seconds. The
/// lease file is `kea-leases6.csv` in `dir` ([`kea_lease_lines`]).
pub fn start_kea_on(
    rtr: &NetNs,
    dir: &TestDir,
    interface: &str,
    subnet: &str,
) -> Result<ChildGuard> {
    let run = dir.join("kea-run");
    std::fs::create_dir_all(&run)?;
    let config = format!(
        r#"{{"Dhcp6": {{
  "interfaces-config": {{"interfaces": ["{interface}"], "service-sockets-max-retries": 100,
                         "service-sockets-retry-wait-time": 100}},
  "lease-database": {{"type": "memfile", "persist": true, "name": "{leases}", "lfc-interval": 0}},
  "server-id": {{"type": "LLT", "persist": false}},
  "preferred-lifetime": 10, "valid-lifetime": 14, "renew-timer": 2, "rebind-timer": 4,
  "subnet6": [{{"id": 1, "subnet": "{subnet}", "interface": "{interface}",
               "pd-pools": [{{"prefix": "2001:db8:100::", "prefix-len": 56, "delegated-len": 56}}]}}],
  "loggers": [{{"name": "kea-dhcp6", "output_options": [{{"output": "{log}"}}], "severity": "INFO"}}]}}}}"#,
        leases = dir.join("kea-leases6.csv").display(),
        log = dir.join("kea.log").display(),
    );
    let path = dir.join("kea6.json");
    std::fs::write(&path, config)?;
    let mut cmd = rtr.command("kea-dhcp6", &[std::ffi::OsStr::new("-c"), path.as_os_str()])?;
    cmd.env("KEA_PIDFILE_DIR", &run)
        .env("KEA_LOCKFILE_DIR", &run);
    rtr.spawn_with(cmd, "kea-dhcp6", StdinMode::Null)
}

/// Kea's memfile lines for the pool's prefix and `duid`: (valid lifetime, expire) each.
pub fn kea_lease_lines(dir: &TestDir, duid: &str) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("kea-leases6.csv")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("2001:db8:100::,") && l.contains(duid))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .collect()
}

/// Rewrites the mesh's configuration so that `node` is delegated a /56 on `interface`
/// (`global.delegated`, with `egress: true` if asked), and signs it again. Call before the
/// nodes start.
pub fn delegate_to(mesh: &Mesh, node: &str, interface: &str, egress: bool) -> Result<()> {
    let config = std::fs::read_to_string(mesh.config_path())?;
    let egress = if egress { ", egress: true" } else { "" };
    let delegated = format!(
        "global:\n  delegated:\n    - {{node: {node}, interface: {interface}, length: 56{egress}}}\n"
    );
    std::fs::write(
        mesh.config_path(),
        config.replacen("global:\n", &delegated, 1),
    )?;
    mesh.sign()
}

/// The address the `i`th node of a test's topology takes in the delegated plane
/// 2001:db8:100::/64 (its mirror): φ(node i) in the pool's /56 with `use` 0; the tests'
/// subnet is fd00:cafe::/64, so node i's mirror is 2001:db8:100::<i+1>.
pub fn mirror(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i + 1)
}

/// The addresses on a namespace's links, one per line (`ip -6 -o addr`).
pub fn addresses(ns: &NetNs) -> String {
    ns.ip(&["-6", "-o", "addr", "show"]).unwrap_or_default()
}

/// Whether each of `nodes` (the `i`th in `namespaces` order) holds its mirror.
pub fn all_mirrored(namespaces: &[&NetNs]) -> bool {
    namespaces
        .iter()
        .enumerate()
        .all(|(i, ns)| addresses(ns).contains(&format!("{}/64", mirror(i as u16))))
}

/// Each node's addresses, one node per line, for an error message.
pub fn describe_addresses(nodes: &[(&str, &NetNs)]) -> String {
    nodes
        .iter()
        .map(|(name, ns)| format!("{name}: {}", addresses(ns)))
        .collect::<Vec<_>>()
        .join("\n")
}
