//! What is measured: the raw veth, Connectopus over each backend, and the VPNs users would
//! pick instead (wireguard-go, boringtun, Nebula), each started on the harness's namespaces
//! and stopped again by dropping its [`Up`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use connectopus_tests::{
    ChildGuard, LinkKind, Mesh, MeshLink, NetNs, StdinMode, Topology, run_ok, tool, unique_name,
    wait_until,
};

use crate::cleanup;
use crate::measure::wait_reachable;

/// How long a tunnel may take from start to the first answered ping.
const REACHABLE: Duration = Duration::from_secs(20);

/// MTU the harness gives the WireGuard and Nebula tunnels (WireGuard's usual default; a
/// 1,500-byte veth carries it with IPv6 underlay headers to spare).
const TUNNEL_MTU: &str = "1420";

/// Which namespaces a subject runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layout {
    /// `left — right`: two namespaces joined by one veth pair.
    Pair,
    /// `left — mid — right`: traffic crosses `mid`, which forwards.
    Line,
}

impl Layout {
    /// `pair` or `line`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Pair => "pair",
            Layout::Line => "line",
        }
    }

    /// The node names, source first, destination last.
    pub fn nodes(self) -> &'static [&'static str] {
        match self {
            Layout::Pair => &["left", "right"],
            Layout::Line => &["left", "mid", "right"],
        }
    }
}

/// What carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The veth itself (on the line: kernel IPv6 forwarding in `mid`).
    Raw,
    /// Connectopus nodes linked by this backend (plaintext udp links with the eBPF fast path
    /// off: `CONNECTOPUS_DISABLE_FASTPATH=1`).
    Connectopus(LinkKind),
    /// Connectopus nodes linked by plaintext udp links with the eBPF fast path on.
    ConnectopusUdpEbpf,
    /// Connectopus nodes linked by DTLS (PSK) with the CPU-local data path
    /// (`--cpu-local`).
    ConnectopusDtlsCpuLocal,
    /// wireguard-go (userspace WireGuard in Go).
    WireguardGo,
    /// boringtun-cli (userspace WireGuard in Rust).
    Boringtun,
    /// Nebula (Noise-based overlay in Go).
    Nebula,
}

impl Kind {
    /// The name in reports.
    pub fn name(self, layout: Layout) -> &'static str {
        match (self, layout) {
            (Kind::Raw, Layout::Pair) => "veth",
            (Kind::Raw, Layout::Line) => "veth-forwarding",
            (Kind::Connectopus(LinkKind::DtlsPsk), _) => "connectopus-dtls",
            (Kind::Connectopus(LinkKind::DtlsCert), _) => "connectopus-dtls-cert",
            (Kind::Connectopus(LinkKind::Tcp), _) => "connectopus-tcp",
            (Kind::Connectopus(LinkKind::TcpTls), _) => "connectopus-tls",
            (Kind::Connectopus(LinkKind::Udp), _) => "connectopus-udp",
            (Kind::ConnectopusUdpEbpf, _) => "connectopus-udp-ebpf",
            (Kind::ConnectopusDtlsCpuLocal, _) => "connectopus-dtls-cpu-local",
            (Kind::WireguardGo, _) => "wireguard-go",
            (Kind::Boringtun, _) => "boringtun",
            (Kind::Nebula, _) => "nebula",
        }
    }

    /// Whether this is a VPN Connectopus is compared with.
    pub fn is_peer(self) -> bool {
        matches!(self, Kind::WireguardGo | Kind::Boringtun | Kind::Nebula)
    }

    /// Whether this is Connectopus itself.
    pub fn is_connectopus(self) -> bool {
        matches!(
            self,
            Kind::Connectopus(_) | Kind::ConnectopusUdpEbpf | Kind::ConnectopusDtlsCpuLocal
        )
    }

    /// Checks that the programs this subject needs are installed; the error says which
    /// package would provide them.
    pub fn available(self) -> Result<(), String> {
        let need = |tools: &[(&str, &str)]| -> Result<(), String> {
            let missing: Vec<String> = tools
                .iter()
                .filter(|(t, _)| find_program(t).is_none())
                .map(|(t, p)| format!("`{t}` ({p})"))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not installed: {}", missing.join(", ")))
            }
        };
        match self {
            Kind::Raw
            | Kind::Connectopus(_)
            | Kind::ConnectopusUdpEbpf
            | Kind::ConnectopusDtlsCpuLocal => Ok(()),
            Kind::WireguardGo => need(&[
                ("wireguard-go", "Debian wireguard-go"),
                ("wg", "Debian wireguard-tools"),
            ]),
            Kind::Boringtun => need(&[
                ("boringtun-cli", "cargo install boringtun-cli"),
                ("wg", "Debian wireguard-tools"),
            ]),
            Kind::Nebula => need(&[
                ("nebula", "Debian nebula"),
                ("nebula-cert", "Debian nebula"),
            ]),
        }
    }
}

/// Finds a program in `PATH`, the sbin directories, or cargo's bin directory (where
/// `cargo install` puts boringtun-cli, often not in root's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    if let Ok(path) = tool(name) {
        return Some(path);
    }
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A subject: what carries the traffic, on which layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The namespaces.
    pub layout: Layout,
    /// The data path.
    pub kind: Kind,
}

impl Subject {
    /// `layout/name`, e.g. `pair/connectopus-dtls`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.layout.name(), self.name())
    }

    /// The name in reports, e.g. `connectopus-dtls`.
    pub fn name(&self) -> &'static str {
        self.kind.name(self.layout)
    }

    /// The subject with this [`id`](Self::id), if any.
    pub fn from_id(id: &str) -> Option<Subject> {
        let kinds = [
            Kind::Raw,
            Kind::Connectopus(LinkKind::DtlsPsk),
            Kind::Connectopus(LinkKind::DtlsCert),
            Kind::Connectopus(LinkKind::Tcp),
            Kind::Connectopus(LinkKind::TcpTls),
            Kind::Connectopus(LinkKind::Udp),
            Kind::ConnectopusUdpEbpf,
            Kind::ConnectopusDtlsCpuLocal,
            Kind::WireguardGo,
            Kind::Boringtun,
            Kind::Nebula,
        ];
        [Layout::Pair, Layout::Line]
            .into_iter()
            .flat_map(|layout| kinds.map(|kind| Subject { layout, kind }))
            .find(|s| s.id() == id)
    }
}

/// A running subject: where to send traffic, and which processes carry it. Dropping it
/// stops them.
#[derive(Debug)]
pub struct Up<'t> {
    /// The destination address (in the last node's namespace).
    pub dst: IpAddr,
    /// The processes on the data path (node name, pid); none for the raw veth.
    pub processes: Vec<(String, u32)>,
    /// What the first node says about its data path (Connectopus: `status --json`'s
    /// `dataplane` and `ebpf`).
    pub details: Option<String>,
    hold: Hold<'t>,
}

/// What keeps a subject running: dropping it stops the processes (it is held only for its
/// `Drop`, hence never read).
#[derive(Debug)]
#[allow(dead_code)]
enum Hold<'t> {
    Nothing,
    Mesh(Mesh<'t>),
    Peer(PeerProcesses),
}

impl Up<'_> {
    /// Stops the subject's processes now.
    pub fn stop(mut self) {
        self.hold = Hold::Nothing;
    }
}

/// Starts `subject` on `topo` (which must be of the subject's layout), waits until its
/// destination answers pings, and returns it running.
pub fn start<'t>(subject: Subject, topo: &'t Topology) -> Result<Up<'t>> {
    let nodes = subject.layout.nodes();
    let (first, last) = (nodes[0], nodes[nodes.len() - 1]);
    let up = match subject.kind {
        Kind::Raw => {
            let before_last = nodes[nodes.len() - 2];
            Up {
                dst: IpAddr::V6(topo.link_addr(last, before_last)),
                processes: Vec::new(),
                details: None,
                hold: Hold::Nothing,
            }
        }
        Kind::Connectopus(_) | Kind::ConnectopusUdpEbpf | Kind::ConnectopusDtlsCpuLocal => {
            let (kind, fastpath) = match subject.kind {
                Kind::Connectopus(kind) => (kind, false),
                Kind::ConnectopusDtlsCpuLocal => (LinkKind::DtlsPsk, false),
                _ => (LinkKind::Udp, true),
            };
            let links: Vec<MeshLink> = nodes
                .windows(2)
                .map(|w| {
                    // The inner node listens (on the line, `mid` for both links).
                    if w[1] == last && nodes.len() > 2 {
                        MeshLink::new(w[0], w[1], kind)
                    } else {
                        MeshLink::new(w[1], w[0], kind)
                    }
                })
                .collect();
            let mut mesh = Mesh::configure(topo, &links)?;
            mesh.set_log_level("info");
            if !fastpath {
                mesh.set_env("CONNECTOPUS_DISABLE_FASTPATH", "1");
            }
            if subject.kind == Kind::ConnectopusDtlsCpuLocal {
                mesh.add_args_all(&["--cpu-local"]);
            }
            mesh.start_all()?;
            mesh.wait_converged(Duration::from_secs(30))?;
            let processes = nodes
                .iter()
                .filter_map(|n| mesh.process(n).map(|p| ((*n).to_owned(), p.pid())))
                .collect();
            let status = mesh.status(first)?;
            let field = |key: &str| match &status[key] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "?".to_owned(),
                other => other.to_string(),
            };
            if fastpath && !field("fastpath").starts_with("on") {
                bail!("the eBPF fast path is not on: {}", field("fastpath"));
            }
            if subject.kind == Kind::ConnectopusDtlsCpuLocal
                && !field("cpu_local").starts_with("on")
            {
                bail!("the CPU-local data path is not on: {}", field("cpu_local"));
            }
            let details = condense(&format!(
                "dataplane {}, ebpf {}, fastpath {}",
                field("dataplane"),
                field("ebpf"),
                field("fastpath")
            ));
            Up {
                dst: IpAddr::V6(mesh.address(last)),
                processes,
                details: Some(details),
                hold: Hold::Mesh(mesh),
            }
        }
        Kind::WireguardGo | Kind::Boringtun => {
            let peer = wireguard(subject.kind, topo, first, last)?;
            Up {
                dst: IpAddr::V6(wg_overlay(2)),
                processes: peer.processes(),
                details: None,
                hold: Hold::Peer(peer),
            }
        }
        Kind::Nebula => {
            let peer = nebula(topo, first, last)?;
            Up {
                dst: IpAddr::V4(nebula_overlay(2)),
                processes: peer.processes(),
                details: None,
                hold: Hold::Peer(peer),
            }
        }
    };
    wait_reachable(topo.ns(first), up.dst, REACHABLE)
        .with_context(|| format!("{} did not come up", subject.id()))?;
    for (node, pid) in &up.processes {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "ip" {
            bail!("pid {pid} of {node} is `ip netns exec`, not the program: CPU would be wrong");
        }
    }
    Ok(up)
}

/// Programs started for a peer VPN, and the files they leave behind.
#[derive(Debug)]
struct PeerProcesses {
    children: Vec<(String, ChildGuard)>,
    files: Vec<PathBuf>,
}

impl PeerProcesses {
    fn processes(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(n, c)| (n.clone(), c.pid()))
            .collect()
    }
}

impl Drop for PeerProcesses {
    fn drop(&mut self) {
        // SIGTERM first (each guard's drop), so the daemons remove their own sockets.
        self.children.clear();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
            cleanup::forget_file(file);
        }
    }
}

/// The WireGuard overlay address of node `i` (1-based): `fd00:77::<i>`.
fn wg_overlay(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, i)
}

/// The Nebula overlay address of node `i` (Nebula 1.6 overlays are IPv4 only).
fn nebula_overlay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 200, i)
}

const WG_PORT: u16 = 51820;

/// Runs a command outside the namespaces (key generation) and returns its trimmed stdout.
fn local(program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    Ok(run_ok(command, Duration::from_secs(10))?.trim().to_owned())
}

/// A WireGuard key pair from `wg genkey` / `wg pubkey`; the private key is written to `path`.
fn wg_keypair(wg: &Path, path: &Path) -> Result<String> {
    let wg_s = wg.display().to_string();
    let private = local(&wg_s, &["genkey"])?;
    write_private(path, &format!("{private}\n"))?;
    let path_s = path.display().to_string();
    local(
        "sh",
        &[
            "-c",
            "\"$0\" pubkey < \"$1\"",
            wg_s.as_str(),
            path_s.as_str(),
        ],
    )
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Starts a userspace WireGuard implementation on both ends and configures it with `wg set`
/// and `ip`, as a user would: the overlay is `fd00:77::/64`, the endpoints the veth's
/// addresses.
fn wireguard(kind: Kind, topo: &Topology, a: &str, b: &str) -> Result<PeerProcesses> {
    let wg = find_program("wg").context("wg is not installed")?;
    let dir = topo.dir();
    let base = unique_name();
    let ends = [
        (a, b, 1u16, format!("{base}l")),
        (b, a, 2u16, format!("{base}r")),
    ];
    let mut peer = PeerProcesses {
        children: Vec::new(),
        files: Vec::new(),
    };
    let mut publics = Vec::new();
    for (node, _, _, ifname) in &ends {
        let key = dir.join(format!("{ifname}.key"));
        publics.push(wg_keypair(&wg, &key).with_context(|| format!("keys for {node}"))?);
    }
    for (node, _, _, ifname) in &ends {
        let ns = topo.ns(node);
        let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        cleanup::remember_file(&socket);
        peer.files.push(socket.clone());
        let child = match kind {
            Kind::WireguardGo => {
                let program = find_program("wireguard-go").context("wireguard-go")?;
                let mut command = ns.command(&program.display().to_string(), &["-f", ifname])?;
                // It refuses to run on Linux otherwise (the kernel module is preferred; this
                // kernel has none).
                command.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
                ns.spawn_with(command, "wireguard-go", StdinMode::Null)?
            }
            _ => {
                let program = find_program("boringtun-cli").context("boringtun-cli")?;
                let log = dir.join(format!("{ifname}.boringtun.log"));
                let log_s = log.display().to_string();
                let command = ns.command(
                    &program.display().to_string(),
                    &[
                        "--foreground",
                        "--disable-drop-privileges",
                        "--log",
                        log_s.as_str(),
                        ifname.as_str(),
                    ],
                )?;
                ns.spawn_with(command, "boringtun", StdinMode::Null)?
            }
        };
        peer.children.push(((*node).to_owned(), child));
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            socket.exists()
        })
        .with_context(|| {
            format!(
                "{} did not create {}",
                kind.name(Layout::Pair),
                socket.display()
            )
        })?;
    }
    for (i, (node, other, host, ifname)) in ends.iter().enumerate() {
        let ns = topo.ns(node);
        let key = dir.join(format!("{ifname}.key"));
        let endpoint = format!("[{}]:{WG_PORT}", topo.link_addr(other, node));
        let allowed = format!("{}/128", wg_overlay(3 - host));
        ns.exec_ok(
            &wg.display().to_string(),
            &[
                "set",
                ifname.as_str(),
                "private-key",
                &key.display().to_string(),
                "listen-port",
                &WG_PORT.to_string(),
                "peer",
                &publics[1 - i],
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        )?;
        configure_tun(ns, ifname, &format!("{}/64", wg_overlay(*host)))?;
    }
    Ok(peer)
}

/// Addresses a tunnel device and brings it up with [`TUNNEL_MTU`].
fn configure_tun(ns: &NetNs, ifname: &str, address: &str) -> Result<()> {
    if address.contains(':') {
        ns.ip(&["-6", "addr", "add", address, "dev", ifname, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", address, "dev", ifname])?;
    }
    ns.ip(&["link", "set", "dev", ifname, "mtu", TUNNEL_MTU, "up"])?;
    Ok(())
}

/// Starts Nebula on both ends with certificates from `nebula-cert`: overlay
/// `198.18.200.0/24`, underlay the veth's IPv6 addresses, no lighthouse (a static host map),
/// firewall open, as a user would set up two hosts.
fn nebula(topo: &Topology, a: &str, b: &str) -> Result<PeerProcesses> {
    let cert_tool = find_program("nebula-cert").context("nebula-cert")?;
    let program = find_program("nebula").context("nebula")?;
    let root = topo.dir().join(format!("nebula-{}", unique_name()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let p = |name: &str| root.join(name).display().to_string();
    let cert = |args: &[&str]| -> Result<()> {
        let mut command = Command::new(&cert_tool);
        command.args(args);
        run_ok(command, Duration::from_secs(20)).map(drop)
    };
    cert(&[
        "ca",
        "-name",
        "connectopus-bench",
        "-out-crt",
        &p("ca.crt"),
        "-out-key",
        &p("ca.key"),
    ])?;
    let base = unique_name();
    let mut peer = PeerProcesses {
        children: Vec::new(),
        files: Vec::new(),
    };
    let ends = [(a, b, 1u8, 2u8), (b, a, 2u8, 1u8)];
    for (node, other, me, them) in ends {
        cert(&[
            "sign",
            "-ca-crt",
            &p("ca.crt"),
            "-ca-key",
            &p("ca.key"),
            "-name",
            node,
            "-ip",
            &format!("{}/24", nebula_overlay(me)),
            "-out-crt",
            &p(&format!("{node}.crt")),
            "-out-key",
            &p(&format!("{node}.key")),
        ])?;
        let ifname = format!("{base}{}", if me == 1 { 'l' } else { 'r' });
        let config = format!(
            "pki:\n  ca: {ca}\n  cert: {crt}\n  key: {key}\n\
             static_host_map:\n  \"{them_ip}\": [\"[{them_underlay}]:4242\"]\n\
             lighthouse:\n  am_lighthouse: false\n  interval: 60\n  hosts: []\n\
             listen:\n  host: \"[::]\"\n  port: 4242\n\
             punchy:\n  punch: false\n\
             tun:\n  disabled: false\n  dev: {ifname}\n  drop_local_broadcast: false\n  drop_multicast: false\n  tx_queue: 500\n  mtu: {TUNNEL_MTU}\n\
             logging:\n  level: warning\n  format: text\n\
             firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  inbound:\n    - port: any\n      proto: any\n      host: any\n",
            ca = p("ca.crt"),
            crt = p(&format!("{node}.crt")),
            key = p(&format!("{node}.key")),
            them_ip = nebula_overlay(them),
            them_underlay = topo.link_addr(other, node),
        );
        let path = root.join(format!("{node}.yml"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let child = topo.ns(node).spawn(
            &program.display().to_string(),
            &["-config", &path.display().to_string()],
        )?;
        peer.children.push((node.to_owned(), child));
    }
    Ok(peer)
}

/// The lasting part of a node's data-path description: `status` appends live counters to
/// the eBPF state after a colon (`tc counters on cx-left (tcx): in 0 pkts ...`), and names the
/// node's TUN device; neither belongs in a report that compares subjects.
pub fn condense(details: &str) -> String {
    let head = details.split(':').next().unwrap_or(details).trim();
    let words: Vec<&str> = head.split(' ').filter(|w| !w.starts_with("cx-")).collect();
    words.join(" ").replace(" on (", " (")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_lose_counters_and_device_names() {
        assert_eq!(
            condense("dataplane uring, ebpf tc counters on cx-left (tcx): in 0 pkts 0 B"),
            "dataplane uring, ebpf tc counters (tcx)"
        );
        assert_eq!(
            condense("dataplane syscalls, ebpf off"),
            "dataplane syscalls, ebpf off"
        );
        for id in ["pair/veth", "line/connectopus-tls", "pair/nebula"] {
            assert_eq!(Subject::from_id(id).map(|s| s.id()).as_deref(), Some(id));
        }
        assert!(Subject::from_id("pair/nope").is_none());
    }
}
