//! Hostile peers on the link side: unauthenticated TCP connections that never say hello,
//! DTLS handshakes left half-open from many source ports, floods of spoofed ClientHellos,
//! a dialer whose resolver never answers, and a multi-homed DTLS listener dialled on the
//! address that is not the route back. Real node processes in network namespaces; the
//! attackers are the programs in `tests/hostile/` (python3) and `hello_flood` (a workspace
//! binary of this crate). docs/security.md lists each attack with its test and bound.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, NetNs, Topology, iperf3_client, iperf3_server, ping6,
    require_root, require_tools, run_test, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(20);

/// A source prefix of the attackers' own: not the /64 of any mesh link, so the per-prefix
/// limits under test tell the attacker and the honest node apart.
const ATTACKER_SOURCE: &str = "2001:db8:99::1";

fn hostile_script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("hostile")
        .join(name)
        .display()
        .to_string()
}

/// Gives `attacker_ns` the address [`ATTACKER_SOURCE`] (on its loopback) and `victim_ns` a
/// route back to it through `via`.
fn add_attacker_source(attacker_ns: &NetNs, victim_ns: &NetNs, via: Ipv6Addr) -> Result<()> {
    attacker_ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ATTACKER_SOURCE}/128"),
        "dev",
        "lo",
    ])?;
    victim_ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:99::/48",
        "via",
        &via.to_string(),
    ])?;
    Ok(())
}

/// The resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

fn counter(mesh: &Mesh<'_>, node: &str, name: &str) -> Result<u64> {
    let status = mesh.status(node)?;
    Ok(status["counters"][name].as_u64().unwrap_or(0))
}

/// A short ping across the mesh that must be answered in full.
fn ping_across(ns: &NetNs, dst: Ipv6Addr, what: &str) -> Result<f64> {
    let ping = ping6(ns, dst, 5, 56, &[])?;
    ensure!(ping.all_received(), "{what}: {ping:?}");
    Ok(ping.rtts_ms.iter().copied().fold(0.0, f64::max))
}

#[test]
fn tcp_peers_that_never_say_hello_are_closed_by_the_deadline() {
    require_root!();
    run_test("tcp_never_hello", |dir| {
        require_tools(&["ping", "python3"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Tcp),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
        )?;
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let bar_pid = mesh.process("bar").context("bar")?.pid();
        let rss_before = rss_bytes(bar_pid)?;

        // 500 connections to bar's plain TCP listener (the one foo's link uses), from foo's
        // namespace: keepalives every 2 s, never a hello, never a read.
        let listener = topo.link_addr("bar", "foo").to_string();
        let script = hostile_script("tcp_keepalive_flood.py");
        let flood = topo.ns("foo").spawn(
            "python3",
            &[script.as_str(), listener.as_str(), "4000", "500", "24"],
        )?;
        let started = Instant::now();
        let mut rss_max = rss_before;
        while started.elapsed() < Duration::from_secs(22) {
            ping_across(
                topo.ns("foo"),
                mesh.address("baz"),
                "foo -> baz during the flood",
            )?;
            rss_max = rss_max.max(rss_bytes(bar_pid)?);
        }
        flood.wait_timeout(Duration::from_secs(30))?;
        let report: serde_json::Value = serde_json::from_str(flood.stdout().trim())
            .with_context(|| format!("flood report: {}", flood.stdout()))?;
        let opened = report["opened"].as_u64().unwrap_or(0);
        ensure!(
            opened >= 400,
            "the flood could not open its connections: {report}"
        );
        ensure!(
            report["closed"] == report["opened"],
            "every connection is closed by the node: {report}"
        );
        let max_lifetime = report["max_lifetime"].as_f64().unwrap_or(f64::MAX);
        ensure!(
            max_lifetime <= 15.0 + 3.0,
            "closed within the 15 s session deadline: {report}"
        );
        let growth = rss_max.saturating_sub(rss_before);
        ensure!(
            growth < 20 << 20,
            "bar's RSS grew by {growth} bytes (from {rss_before})"
        );
        let evicted = counter(&mesh, "bar", "handshakes_evicted")?;
        let late = counter(&mesh, "bar", "session_deadline_closed")?;
        ensure!(evicted + late >= opened, "evicted {evicted}, late {late}");
        // The honest link is still the one it was.
        ping_across(
            topo.ns("foo"),
            mesh.address("baz"),
            "foo -> baz after the flood",
        )?;
        Ok(())
    });
}

#[test]
fn half_open_dtls_from_one_address_cannot_lock_another_out() {
    require_root!();
    run_test("dtls_half_open_flood", |dir| {
        require_tools(&["ping", "python3"]);
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
        add_attacker_source(topo.ns("foo"), topo.ns("bar"), topo.link_addr("foo", "bar"))?;

        // From 300 source ports of one address: cookie exchange done, then silence; again
        // and again.
        let listener = topo.link_addr("bar", "foo").to_string();
        let script = hostile_script("dtls_cookie_flood.py");
        let flood_started = Instant::now();
        let flood = topo.ns("foo").spawn(
            "python3",
            &[
                script.as_str(),
                ATTACKER_SOURCE,
                listener.as_str(),
                "4000",
                "300",
            ],
        )?;
        flood.wait_for_output("round 3:", Duration::from_secs(30))?;
        ensure!(
            !flood.stdout().contains("round 1: 0 cookies"),
            "the flood gets its cookies: {}",
            flood.stdout()
        );
        // The flood offers the DHE-PSK suite first. bar computes that costly key exchange
        // for the attacker's prefix only within its DHE budget (a burst of 8, then 2 a
        // second); every handshake past it gets the X25519 suite, none is turned away.
        let elapsed = flood_started.elapsed().as_secs_f64();
        let (dhe, ecdhe) = server_hellos(&flood.stdout())
            .with_context(|| format!("no server hello count: {}", flood.stdout()))?;
        eprintln!("flood: {dhe} DHE and {ecdhe} X25519 server hellos in {elapsed:.1} s");
        ensure!(
            dhe > 0 && ecdhe > 0,
            "the flood should get DHE within the budget and X25519 past it: dhe {dhe}, \
             ecdhe {ecdhe}"
        );
        ensure!(
            f64::from(dhe) <= 8.0 + 2.0 * elapsed + 2.0,
            "{dhe} DHE key exchanges in {elapsed:.1} s for one prefix: past its budget"
        );
        ensure!(
            counter(&mesh, "bar", "dtls_handshakes_without_dhe")? >= u64::from(ecdhe),
            "bar counts the handshakes it left without DHE (the flood saw {ecdhe})"
        );

        // foo restarts and must be back within 30 s while the flood goes on.
        mesh.kill("foo")?;
        mesh.start("foo")?;
        let restarted = Instant::now();
        let baz_addr = mesh.address("baz");
        wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
            ping6(topo.ns("foo"), baz_addr, 1, 56, &[]).is_ok_and(|p| p.all_received())
        })
        .with_context(|| format!("foo's link did not come back: {}", flood.stdout()))?;
        eprintln!("foo is back after {:?}", restarted.elapsed());
        ensure!(flood.is_running(), "the flood ran all along");
        ensure!(
            counter(&mesh, "bar", "handshakes_evicted")? > 0
                && counter(&mesh, "bar", "dtls_hellos_rate_limited")? > 0,
            "the limits did the work"
        );
        Ok(())
    });
}

/// The server hellos `dtls_cookie_flood.py` saw so far (its last round line): how many chose
/// the DHE-PSK suite and how many the X25519 one.
fn server_hellos(output: &str) -> Option<(u32, u32)> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("server hellos:"))?;
    let number_after = |key: &str| -> Option<u32> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((number_after("hellos: dhe ")?, number_after(", ecdhe ")?))
}

/// Throughput foo -> baz (across bar), bits per second, over `seconds`.
fn iperf_across(topo: &Topology, mesh: &Mesh<'_>, seconds: u32) -> Result<f64> {
    let server_addr = mesh.address("baz");
    let _server = iperf3_server(topo.ns("baz"), Some(server_addr.into()), 5201)?;
    let result = iperf3_client(
        topo.ns("foo"),
        server_addr,
        &IperfOptions {
            seconds,
            ..IperfOptions::default()
        },
    )?;
    Ok(result.bits_per_second())
}

#[test]
fn spoofed_client_hellos_are_rate_limited_and_forwarding_goes_on() {
    require_root!();
    run_test("dtls_spoofed_hellos", |dir| {
        require_tools(&["ping", "iperf3"]);
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
        // Answers to the spoofed sources go back towards foo, as a real flood's would.
        let foo_addr = topo.link_addr("foo", "bar").to_string();
        topo.ns("bar")
            .ip(&["-6", "route", "add", "2001:db8:99::/48", "via", &foo_addr])?;

        // 100,000 ClientHellos a second at the listener foo's link uses, each from its own
        // /64 of 2001:db8:99::/48 and its own port, for as long as the test runs.
        let listener = topo.link_addr("bar", "foo").to_string();
        let flood_seconds = 60.0;
        let flood = topo.ns("foo").spawn(
            env!("CARGO_BIN_EXE_hello_flood"),
            &[
                "2001:db8:99::",
                listener.as_str(),
                "4000",
                "100000",
                &flood_seconds.to_string(),
            ],
        )?;
        let flood_started = Instant::now();
        // The node sees the flood, its limiter refuses it, and it puts the kernel filter on.
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            counter(&mesh, "bar", "dtls_hello_filter_engaged").is_ok_and(|n| n >= 1)
                && counter(&mesh, "bar", "dtls_listener_kernel_drops").is_ok_and(|n| n > 10_000)
        })
        .with_context(|| {
            format!(
                "the flood is rate-limited and then filtered in the kernel: {:?}",
                mesh.status("bar").map(|s| s["counters"].clone())
            )
        })?;
        ping_across(
            topo.ns("foo"),
            mesh.address("baz"),
            "foo -> baz under the flood",
        )?;
        let loaded = iperf_across(&topo, &mesh, 2)?;
        ensure!(loaded > 0.0, "forwarding under the flood: {loaded} bit/s");

        // foo restarts: its real handshake (from a prefix that had a session) gets through
        // the flood, and forwarding across bar resumes.
        mesh.kill("foo")?;
        mesh.start("foo")?;
        let baz_addr = mesh.address("baz");
        wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
            ping6(topo.ns("foo"), baz_addr, 1, 56, &[]).is_ok_and(|p| p.all_received())
        })
        .context("foo's link did not come back under the flood")?;
        ensure!(flood.is_running(), "the flood ran all along");
        ping_across(
            topo.ns("foo"),
            mesh.address("baz"),
            "foo -> baz after foo's restart, under the flood",
        )?;

        // What the flood cost: nearly every hello was dropped before anything was allocated
        // for it (by the limiter, or in the kernel before the node was woken); OpenSSL saw at
        // most the node's budget of 1,000 a second plus its burst, and foo's own.
        let elapsed = flood_started.elapsed().as_secs_f64();
        let limited = counter(&mesh, "bar", "dtls_hellos_rate_limited")?;
        let kernel = counter(&mesh, "bar", "dtls_listener_kernel_drops")?;
        let looked_at = counter(&mesh, "bar", "dtls_hellos_looked_at")?;
        eprintln!(
            "after {elapsed:.0} s of flood: {limited} hellos rate-limited, {kernel} dropped in \
             the kernel, {looked_at} handed to OpenSSL"
        );
        ensure!(
            looked_at as f64 <= 1000.0 * elapsed + 1000.0 + 200.0,
            "OpenSSL saw {looked_at} hellos in {elapsed:.0} s"
        );
        ensure!(
            kernel + limited > 20 * looked_at,
            "most hellos dropped before OpenSSL: {limited} + {kernel} vs {looked_at}"
        );
        drop(flood);
        Ok(())
    });
}

/// A file bind-mounted over `/etc/resolv.conf` by `ip netns exec` for one namespace, removed
/// on drop.
struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    fn new(ns: &NetNs, text: &str) -> Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), text)?;
        Ok(Self { dir })
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_resolver_that_never_answers_does_not_stall_forwarding() {
    require_root!();
    run_test("dns_never_answers", |dir| {
        require_tools(&["ping", "nft"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
        )?;
        // bar gets one more dialer, to a host name its resolver will never answer for.
        let yaml = std::fs::read_to_string(mesh.config_path())?;
        let psk = dir.join("link.psk");
        let slow = format!(
            "    backends:\n      slow:\n        type: dtls-dialer\n        peer: \"peer.never-answers.test:4999\"\n        psk_file: {}\n",
            psk.display()
        );
        let bar_backends = yaml
            .find("  bar:\n")
            .and_then(|at| yaml[at..].find("    backends:\n").map(|b| at + b))
            .context("bar's backends")?;
        let yaml = format!(
            "{}{}{}",
            &yaml[..bar_backends],
            slow,
            &yaml[bar_backends + "    backends:\n".len()..]
        );
        std::fs::write(mesh.config_path(), yaml)?;
        mesh.sign()?;
        let mut mesh = mesh;

        // bar's resolver: a name server (foo's address) whose queries foo drops on arrival:
        // no answer and no ICMP error, so each lookup waits out every timeout. (Dropped on
        // bar's own output, the send would fail at once with EPERM.)
        let nameserver = topo.link_addr("foo", "bar");
        let _resolv = NetnsResolvConf::new(
            topo.ns("bar"),
            &format!("nameserver {nameserver}\noptions timeout:5 attempts:3\n"),
        )?;
        let foo_ns = topo.ns("foo");
        foo_ns.exec_ok("nft", &["add", "table", "inet", "cxdrop"])?;
        foo_ns.exec_ok(
            "nft",
            &[
                "add", "chain", "inet", "cxdrop", "in", "{", "type", "filter", "hook", "input",
                "priority", "0", ";", "}",
            ],
        )?;
        for proto in ["udp", "tcp"] {
            foo_ns.exec_ok(
                "nft",
                &[
                    "add", "rule", "inet", "cxdrop", "in", proto, "dport", "53", "drop",
                ],
            )?;
        }
        // The trap works: a lookup in bar's namespace takes seconds.
        let started = Instant::now();
        topo.ns("bar")
            .exec_timeout(
                "getent",
                &["ahosts", "peer.never-answers.test"],
                Duration::from_secs(2),
            )
            .ok();
        ensure!(
            started.elapsed() >= Duration::from_millis(1500),
            "the lookup did not hang: {:?}",
            started.elapsed()
        );
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        // Five seconds of pings across bar while its dialer waits on the resolver: each is
        // answered, at the RTT of a veth.
        for round in 0..4 {
            let rtt = ping_across(topo.ns("foo"), mesh.address("baz"), "foo -> baz")?;
            ensure!(rtt < 200.0, "round {round}: a ping took {rtt} ms");
        }
        Ok(())
    });
}

#[test]
fn a_multihomed_dtls_listener_answers_from_the_address_dialled() {
    require_root!();
    run_test("dtls_multihomed", |dir| {
        require_tools(&["ping"]);
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        // bar listens on [::]; foo dials bar's address on the bar—baz link, which foo reaches
        // through bar's foo-facing interface: the route back to foo is not that address's.
        let near = topo.link_addr("bar", "foo");
        let far = topo.link_addr("bar", "baz");
        let yaml = std::fs::read_to_string(mesh.config_path())?
            .replace(&format!("        listen_ip: \"{near}\"\n"), "")
            .replace(
                &format!("peer: \"[{near}]:4000\""),
                &format!("peer: \"[{far}]:4000\""),
            );
        ensure!(yaml.contains(&format!("[{far}]:4000")), "{yaml}");
        std::fs::write(mesh.config_path(), yaml)?;
        mesh.sign()?;
        let mut mesh = mesh;
        let far_prefix = format!(
            "{}/64",
            Ipv6Addr::from(u128::from(far) & !0xffff_ffff_ffff_ffff)
        );
        topo.ns("foo")
            .ip(&["-6", "route", "add", &far_prefix, "via", &near.to_string()])?;
        mesh.set_log_level("info");
        mesh.start("foo")?;
        mesh.start("bar")?;
        mesh.wait_converged(CONVERGE)?;
        ping_across(topo.ns("foo"), mesh.address("bar"), "foo -> bar")?;
        Ok(())
    });
}
