//! Applications attached to the mesh, end to end on foo—bar—baz: a namespace on foo whose
//! only network is the mesh, with a web server started inside it, reached from baz's host by
//! address and by name, over IPv6 and IPv4 (`address4`); `connectopus nsenter`; an
//! inetd-style echo service on bar with its connection limit and its stderr in bar's log;
//! `status` listing both; namespaces and services added and removed by a live configuration
//! change; and a change that restarts foo's mesh instance (a re-exec of the confined node),
//! after which its namespace is made again and reachable. Then `setup-tunnel` (IPv6 and IPv4)
//! and a node running unprivileged on the devices it made.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, dig, require_root, require_tools, run_test,
    tool, wait_until, workspace_binary,
};

const DOMAIN: &str = "connectopus.test";
const SANDBOX: &str = "fd00:cafe::1:3";
const BOX2: &str = "fd00:cafe::1:4";
/// The mesh's IPv4 subnet (inside 198.18.0.0/15, apart from the underlay's 198.18.<link>.0/24),
/// the sandbox's and baz's IPv4 addresses in it.
const SUBNET4: &str = "198.19.0.0/16";
const SANDBOX4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 3);
const BAZ4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);
const FOO4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// The /etc/netns/<ns>/resolv.conf that `ip netns exec` binds over /etc/resolv.conf, removed
/// on drop.
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

/// Runs `connectopus nsenter --socket <foo's> --netns NS -- args` in foo's network namespace.
fn nsenter(
    mesh: &Mesh<'_>,
    ns: &NetNs,
    netns: &str,
    args: &[&str],
) -> Result<std::process::Output> {
    let binary = workspace_binary("connectopus")?;
    let socket = mesh.socket("foo").display().to_string();
    let mut full = vec![
        "nsenter",
        "--socket",
        socket.as_str(),
        "--netns",
        netns,
        "--",
    ];
    full.extend_from_slice(args);
    ns.exec(&binary.display().to_string(), &full)
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn aaaa(ns: &NetNs, server: Ipv6Addr, name: &str) -> Vec<String> {
    dig(ns, server.into(), name, "AAAA", false)
        .map(|r| {
            r.answers
                .iter()
                .filter(|a| a.rtype == "AAAA")
                .map(|a| a.data.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A Python client in `ns`: opens `n` connections to `[addr]:port` and echoes a line on each,
/// then opens one more and reports what it reads (end-of-file when the service refused it).
fn echo_clients(ns: &NetNs, addr: Ipv6Addr, port: u16, n: usize) -> Result<String> {
    let script = format!(
        r#"
import socket, sys
conns = []
for i in range({n}):
    s = socket.create_connection(("{addr}", {port}), timeout=10)
    s.sendall(b"hello %d\n" % i)
    conns.append(s)
for i, s in enumerate(conns):
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    if got != b"hello %d\n" % i:
        print("bad echo", i, got); sys.exit(1)
print("served", len(conns))
extra = socket.create_connection(("{addr}", {port}), timeout=10)
try:
    data = extra.recv(100)
except OSError as e:
    data = b"error " + str(e).encode()
print("extra", repr(data))
"#
    );
    let output = ns.exec_timeout("python3", &["-c", &script], Duration::from_secs(60))?;
    let out = text(&output);
    ensure!(output.status.success(), "echo clients failed: {out}");
    Ok(out)
}

/// Writes the candidate configuration `version` (a copy of the mesh's with `edit` applied),
/// signed with the mesh's admin key.
fn candidate(
    mesh: &Mesh<'_>,
    dir: &TestDir,
    version: u64,
    edit: impl FnOnce(String) -> String,
) -> Result<PathBuf> {
    let original = std::fs::read_to_string(mesh.config_path())?;
    let text = edit(original.replace("  version: 1\n", &format!("  version: {version}\n")));
    let path = dir.join(format!("v{version}.yml"));
    std::fs::write(&path, text)?;
    connectopus_tests::ssh_sign(&path, mesh.admin_key(), "connectopus")?;
    Ok(path)
}

fn has_route(mesh: &Mesh<'_>, node: &str, prefix: &str) -> bool {
    mesh.status(node).is_ok_and(|s| {
        s["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["prefix"] == prefix)
    })
}

/// The running processes with `needle` in their command line.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// Adds `subnet4` to the mesh file and signs it again.
fn enable_ipv4(mesh: &Mesh<'_>) -> Result<()> {
    let path = mesh.config_path();
    let yaml = std::fs::read_to_string(path)?;
    let yaml = ensure_replaced(
        &yaml,
        "  subnet: fd00:cafe::/64\n",
        &format!("  subnet: fd00:cafe::/64\n  subnet4: {SUBNET4}\n"),
    );
    std::fs::write(path, yaml)?;
    mesh.sign()
}

/// `text` with the first `from` replaced by `to`; panics (failing the test) without a `from`.
fn ensure_replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

fn registry(mesh: &Mesh<'_>, node: &str) -> PathBuf {
    let mut p = mesh.socket(node).into_os_string();
    p.push(".netns");
    PathBuf::from(p)
}

#[test]
fn namespaces_services_and_nsenter_across_the_mesh() {
    require_root!();
    run_test("attach_mesh", |dir| {
        require_tools(&["dig", "ping", "curl", "python3"]);
        let python = tool("python3")?;
        let site = dir.join("site");
        std::fs::create_dir_all(&site)?;
        std::fs::write(site.join("hello.txt"), "hello from the sandbox\n")?;
        // A megabyte, for a transfer between foo's host and its namespace.
        std::fs::write(site.join("big.bin"), vec![7u8; 1 << 20])?;
        let foo_extra = format!(
            "    address4: {FOO4}\n    namespaces:\n      sandbox:\n        address: \"{SANDBOX}\"\n        address4: {SANDBOX4}\n        cost: 2\n        services:\n          web: {{command: \"{} -m http.server --bind :: --directory {} 8080\"}}\n",
            python.display(),
            site.display()
        );
        // The echo service says something on stderr per connection, for bar's log.
        let bar_extra = "    services:\n      echo: {port: 7, command: \"/bin/sh -c 'echo echo-connection-opened >&2; exec /bin/cat'\", max_connections: 50}\n";
        let baz_extra = format!("    address4: {BAZ4}\n");
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("baz", "bar", LinkKind::Tcp),
            ],
            &[("foo", &foo_extra), ("bar", bar_extra), ("baz", &baz_extra)],
        )?;
        enable_ipv4(&mesh)?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let baz = mesh.address("baz");
        let sandbox: Ipv6Addr = SANDBOX.parse()?;

        // The namespace's address is routed to foo with its cost, and its name is published.
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            has_route(&mesh, "baz", &format!("{SANDBOX}/128"))
        })
        .context("baz should learn the sandbox's /128")?;
        let route = mesh.status("baz")?["routes"]
            .as_array()
            .context("routes")?
            .iter()
            .find(|r| r["prefix"] == format!("{SANDBOX}/128"))
            .cloned()
            .context("route")?;
        ensure!(
            route["cost"].as_f64().is_some_and(|c| c >= 2.0),
            "the namespace's cost should count: {route}"
        );
        let name = format!("sandbox.{DOMAIN}");
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            aaaa(topo.ns("baz"), baz, &name) == vec![SANDBOX.to_owned()]
        })
        .context("baz's DNS should answer sandbox's address")?;

        // The web server inside, from baz's host: by address, then by name.
        let url = format!("http://[{sandbox}]:8080/hello.txt");
        let mut last = String::new();
        let served = wait_until(
            Duration::from_secs(20),
            Duration::from_millis(300),
            || match topo
                .ns("baz")
                .exec("curl", &["-sS", "--max-time", "3", url.as_str()])
            {
                Ok(o) => {
                    last = text(&o);
                    last == "hello from the sandbox\n"
                }
                Err(_) => false,
            },
        );
        served.with_context(|| format!("curl {url} from baz: {last}"))?;
        let _resolv = NetnsResolvConf::new(topo.ns("baz").name(), baz)?;
        let by_name = format!("http://{name}:8080/hello.txt");
        let out = topo
            .ns("baz")
            .exec_ok("curl", &["-sS", "--max-time", "5", by_name.as_str()])?;
        ensure!(out == "hello from the sandbox\n", "curl {by_name}: {out}");

        // IPv4: the sandbox's address4 is routed to foo, answers ping from baz's host, and
        // its name has an A record (and the address a PTR) at baz's DNS server.
        wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
            topo.ns("baz")
                .exec(
                    "ping",
                    &["-4", "-n", "-c", "1", "-W", "1", &SANDBOX4.to_string()],
                )
                .is_ok_and(|o| o.status.success())
        })
        .context("baz should ping the sandbox's IPv4 address")?;
        let a = dig(topo.ns("baz"), IpAddr::V6(baz), &name, "A", false)?;
        ensure!(
            a.answers
                .iter()
                .any(|r| r.rtype == "A" && r.data == SANDBOX4.to_string()),
            "A {name}: {a:?}"
        );
        let ptr = dig(
            topo.ns("baz"),
            IpAddr::V6(baz),
            "3.1.19.198.in-addr.arpa",
            "PTR",
            false,
        )?;
        ensure!(
            ptr.answers
                .iter()
                .any(|r| r.rtype == "PTR" && r.data == format!("{name}.")),
            "PTR of {SANDBOX4}: {ptr:?}"
        );
        let out = topo
            .ns("baz")
            .exec_ok("curl", &["-4", "-sS", "--max-time", "5", by_name.as_str()])?;
        ensure!(
            out == "hello from the sandbox\n",
            "curl -4 {by_name}: {out}"
        );
        // foo's own host reaches the sandbox over IPv4 through foo alone (from one of its TUN
        // devices to the other, never through the mesh).
        let url4 = format!("http://{SANDBOX4}:8080/hello.txt");
        let out = topo
            .ns("foo")
            .exec_ok("curl", &["-sS", "--max-time", "5", url4.as_str()])?;
        ensure!(
            out == "hello from the sandbox\n",
            "curl {url4} from foo: {out}"
        );
        let foo_log = mesh.process("foo").context("foo")?.stderr();
        ensure!(
            foo_log.contains("service=web") && foo_log.contains("GET /hello.txt"),
            "the web server's output should be in foo's log"
        );

        // foo's own host reaches its namespace through foo, never through the mesh: a
        // megabyte from the namespace's server arrives whole.
        let big = format!("http://[{sandbox}]:8080/big.bin");
        let size = topo.ns("foo").exec_ok(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                big.as_str(),
            ],
        )?;
        ensure!(
            size.trim() == (1 << 20).to_string(),
            "foo's host got {size} bytes"
        );
        // And the other way: a megabyte from the host (TCP super-packets, cut by foo) to a
        // listener started inside with nsenter.
        let binary = workspace_binary("connectopus")?.display().to_string();
        let socket = mesh.socket("foo").display().to_string();
        let python_s = python.display().to_string();
        let sink = "import socket\ns = socket.create_server(('::', 9000), family=socket.AF_INET6)\nc, _ = s.accept()\nn = 0\nwhile True:\n    b = c.recv(65536)\n    if not b:\n        break\n    n += len(b)\nprint('received', n, flush=True)\n";
        let receiver = topo.ns("foo").spawn_with(
            topo.ns("foo").command(
                &binary,
                &[
                    "nsenter", "--socket", &socket, "--netns", "sandbox", "--", &python_s, "-c",
                    sink,
                ],
            )?,
            "sink",
            connectopus_tests::StdinMode::Null,
        )?;
        let send = format!(
            "import socket, time\nfor _ in range(50):\n    try:\n        s = socket.create_connection(('{sandbox}', 9000), timeout=5)\n        break\n    except OSError:\n        time.sleep(0.2)\ns.sendall(bytes(1 << 20))\ns.close()\n"
        );
        topo.ns("foo").exec_ok("python3", &["-c", &send])?;
        let got = receiver.wait_for_output("received", Duration::from_secs(10))?;
        ensure!(
            got.contains(&format!("received {}", 1 << 20)),
            "the namespace received: {got}"
        );

        // A namespace service that dies is started again (after 5 s) and serves again.
        let site_text = site.display().to_string();
        let old = pids_mentioning(&site_text);
        ensure!(old.len() == 1, "one web server should run: {old:?}");
        // SAFETY: kill takes integers only; the pid is the web server's.
        unsafe { libc::kill(old[0], libc::SIGKILL) };
        wait_until(Duration::from_secs(15), Duration::from_millis(300), || {
            let now = pids_mentioning(&site_text);
            now.len() == 1
                && now != old
                && topo
                    .ns("baz")
                    .exec("curl", &["-sS", "--max-time", "3", url.as_str()])
                    .is_ok_and(|o| o.stdout == b"hello from the sandbox\n")
        })
        .context("the web server should be restarted")?;
        ensure!(
            mesh.process("foo")
                .context("foo")?
                .stderr()
                .contains("restarting in 5 s"),
            "foo should log the restart"
        );

        // Inside the namespace: names resolve through the node, and the mesh is the only way out.
        let ns = topo.ns("foo");
        let baz_name = format!("baz.{DOMAIN}");
        let ping = nsenter(
            &mesh,
            ns,
            "sandbox",
            &["ping", "-6", "-c1", "-W5", &baz_name],
        )?;
        ensure!(
            ping.status.success(),
            "ping from the sandbox: {}",
            text(&ping)
        );
        let ip = tool("ip")?.display().to_string();
        let routes6 = nsenter(&mesh, ns, "sandbox", &[&ip, "-6", "route", "show"])?;
        ensure!(routes6.status.success(), "{}", text(&routes6));
        let routes6 = String::from_utf8_lossy(&routes6.stdout).into_owned();
        ensure!(
            routes6.contains("default dev cx-sandbox"),
            "no default route into the mesh: {routes6}"
        );
        for line in routes6.lines() {
            ensure!(
                line.contains("dev cx-sandbox") || line.contains("dev lo"),
                "a route that is not the mesh's: {line}"
            );
        }
        // With address4, IPv4 has a default route into the mesh too, and nothing else.
        let routes4 = nsenter(&mesh, ns, "sandbox", &[&ip, "-4", "route", "show"])?;
        ensure!(routes4.status.success(), "{}", text(&routes4));
        let routes4 = String::from_utf8_lossy(&routes4.stdout).into_owned();
        ensure!(
            routes4.contains("default dev cx-sandbox") && routes4.lines().count() == 1,
            "the sandbox's IPv4 routes: {routes4}"
        );

        // status lists the namespace, its address4 and its web server (restarted once).
        let status = mesh.status("foo")?;
        let sandbox_report = status["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == "sandbox")
            .cloned()
            .with_context(|| format!("no sandbox in foo's status: {}", status["namespaces"]))?;
        ensure!(
            sandbox_report["state"] == "up"
                && sandbox_report["address"] == SANDBOX
                && sandbox_report["address4"] == SANDBOX4.to_string()
                && sandbox_report["pid"].as_i64().is_some(),
            "{sandbox_report}"
        );
        let web = &sandbox_report["services"][0];
        ensure!(
            web["name"] == "web"
                && web["pid"].as_i64().is_some()
                && web["restarts"].as_u64().is_some_and(|r| r >= 1),
            "the web service in foo's status: {sandbox_report}"
        );
        let text_status = mesh.status_text("foo")?;
        ensure!(
            text_status.contains("namespaces:")
                && text_status.contains(&format!("sandbox [{SANDBOX} {SANDBOX4}] up")),
            "{text_status}"
        );
        let resolv = nsenter(&mesh, ns, "sandbox", &["cat", "/etc/resolv.conf"])?;
        ensure!(
            text(&resolv).contains(&format!("nameserver {}", mesh.address("foo")))
                && text(&resolv).contains(&format!("search {DOMAIN}")),
            "{}",
            text(&resolv)
        );

        // The echo service on bar: 50 connections at once are served, the 51st is closed.
        let bar = mesh.address("bar");
        let out = echo_clients(topo.ns("foo"), bar, 7, 50)?;
        ensure!(out.contains("served 50"), "{out}");
        ensure!(
            out.contains("extra b''"),
            "the 51st connection should be closed without an echo: {out}"
        );
        let bar_log = mesh.process("bar").context("bar")?.stderr();
        ensure!(
            bar_log.contains("at max_connections"),
            "bar should say why it refused"
        );
        // Each connection process's stderr line is in bar's log with the service's name.
        ensure!(
            bar_log
                .lines()
                .any(|l| l.contains("service=echo") && l.contains("echo-connection-opened")),
            "the echo service's stderr should be in bar's log"
        );
        // status counts them: 50 served, the 51st refused.
        let echo = mesh.status("bar")?["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "echo")
            .cloned()
            .context("no echo service in bar's status")?;
        ensure!(
            echo["port"] == 7
                && echo["listening"] == true
                && echo["max_connections"] == 50
                && echo["served"].as_u64().is_some_and(|n| n >= 50)
                && echo["refused"].as_u64().is_some_and(|n| n >= 1),
            "{echo}"
        );
        ensure!(
            mesh.status_text("bar")?.contains("echo port 7 listening"),
            "bar's status text should list the echo service"
        );
        // Once they ended, there is room again.
        let out = wait_until(Duration::from_secs(10), Duration::from_millis(300), || {
            echo_clients(topo.ns("foo"), bar, 7, 1).is_ok_and(|o| o.contains("served 1"))
        });
        out.context("the service should serve again once its connections ended")?;

        // Live: v2 replaces the sandbox by box2 and bar's echo by a greeting.
        let v2 = candidate(&mesh, dir, 2, |t| {
            t.replace(
                &foo_extra,
                &format!("    namespaces:\n      box2: {{address: \"{BOX2}\"}}\n"),
            )
            .replace(
                bar_extra,
                "    services:\n      greet: {port: 13, command: \"printf 'hi %s\\\\n' there\"}\n",
            )
        })?;
        ensure!(std::fs::read_to_string(&v2)?.contains("box2"));
        let (ok, out) = mesh.config_set("foo", &v2)?;
        ensure!(ok, "foo refused v2: {out}");
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            has_route(&mesh, "baz", &format!("{BOX2}/128"))
                && !has_route(&mesh, "baz", &format!("{SANDBOX}/128"))
        })
        .context("baz should learn box2 and forget the sandbox")?;
        let ping = nsenter(&mesh, ns, "box2", &["ping", "-6", "-c1", "-W5", &baz_name])?;
        ensure!(ping.status.success(), "ping from box2: {}", text(&ping));
        ensure!(
            !registry(&mesh, "foo").join("sandbox").exists(),
            "the sandbox is still registered"
        );
        let gone = nsenter(&mesh, ns, "sandbox", &["true"])?;
        ensure!(
            !gone.status.success(),
            "nsenter into the removed sandbox worked"
        );
        // box2 has no address4: no IPv4 route inside.
        let routes4 = nsenter(&mesh, ns, "box2", &[&ip, "-4", "route", "show"])?;
        ensure!(
            routes4.status.success() && routes4.stdout.is_empty(),
            "box2 (no address4) has IPv4 routes: {}",
            text(&routes4)
        );
        wait_until(Duration::from_secs(10), Duration::from_millis(300), || {
            let script = format!(
                "import socket\ns = socket.create_connection((\"{bar}\", 13), timeout=5)\nprint(s.recv(100))"
            );
            topo.ns("foo")
                .exec("python3", &["-c", &script])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("hi there"))
        })
        .context("bar should serve its new greeting")?;
        let script = format!(
            "import socket\ntry:\n    socket.create_connection((\"{bar}\", 7), timeout=5)\n    print('open')\nexcept ConnectionRefusedError:\n    print('refused')"
        );
        let closed = wait_until(Duration::from_secs(10), Duration::from_millis(300), || {
            topo.ns("foo")
                .exec("python3", &["-c", &script])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("refused"))
        });
        closed.context("bar's echo port should be closed")?;

        // v3 gives foo a prefix: that restarts its mesh instance, a re-exec of the already
        // confined node. Its attach helper (started before confinement) carries over, so box2
        // is made again, and baz reaches it.
        let v2_text = std::fs::read_to_string(&v2)?;
        let v3 = candidate(&mesh, dir, 3, |_| {
            let t = ensure_replaced(&v2_text, "  version: 2\n", "  version: 3\n");
            let foo_address = format!("    address: \"{}\"\n", mesh.address("foo"));
            ensure_replaced(
                &t,
                &foo_address,
                &format!("{foo_address}    prefixes: [\"fd00:cafe::9:0/112\"]\n"),
            )
        })?;
        let epoch = mesh.status("foo")?["epoch"].clone();
        let (ok, out) = mesh.config_set("foo", &v3)?;
        ensure!(ok, "foo refused v3: {out}");
        wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
            mesh.status("foo")
                .is_ok_and(|s| s["config_version"] == 3 && s["epoch"] != epoch)
        })
        .context("foo should restart its mesh instance for v3")?;
        let foo_log = mesh.process("foo").context("foo")?.stderr();
        ensure!(
            foo_log.contains("restarting the mesh instance")
                && foo_log.contains("kept the attach helper across the restart"),
            "foo should re-execute itself and keep its attach helper"
        );
        let box2: Ipv6Addr = BOX2.parse()?;
        wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
            connectopus_tests::ping6(topo.ns("baz"), box2, 1, 56, &["-W", "1"])
                .is_ok_and(|p| p.all_received())
        })
        .with_context(|| {
            format!(
                "baz should ping box2 after foo's restart: {:?}",
                mesh.status("foo").map(|s| s["namespaces"].clone())
            )
        })?;
        let ping = nsenter(&mesh, ns, "box2", &["ping", "-6", "-c1", "-W5", &baz_name])?;
        ensure!(
            ping.status.success(),
            "ping from box2 after the restart: {}",
            text(&ping)
        );

        // Stopping foo stops its namespaces and their processes.
        let registry = registry(&mesh, "foo");
        mesh.stop("foo")?;
        ensure!(!registry.exists(), "foo left its namespace registry");
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            pids_mentioning(&site_text).is_empty()
        })
        .context("the sandbox's web server outlived foo")?;
        Ok(())
    });
}

/// Runs `connectopus setup-tunnel` for foo in its namespace with `extra` arguments.
fn setup_tunnel(
    mesh: &Mesh<'_>,
    ns: &NetNs,
    binary: &str,
    extra: &[&str],
) -> Result<std::process::Output> {
    let config = mesh.config_path().display().to_string();
    let mut args = vec![
        "setup-tunnel",
        "--config",
        config.as_str(),
        "--id",
        "foo",
        "--uid",
        "65534",
        "--gid",
        "65534",
    ];
    args.extend_from_slice(extra);
    ns.exec(binary, &args)
}

#[test]
fn setup_tunnel_lets_a_node_run_unprivileged() {
    require_root!();
    run_test("attach_setup_tunnel", |dir| {
        require_tools(&["setpriv", "ping"]);
        let topo = Topology::line(dir, &["foo", "bar"])?;
        // A namespace too: without root, the node makes it in a user namespace of its own.
        // With subnet4 both nodes have an IPv4 address: setup-tunnel puts foo's on its device.
        let foo4 = Ipv4Addr::new(198, 19, 0, 1);
        let bar4 = Ipv4Addr::new(198, 19, 0, 2);
        let foo_extra = format!(
            "    address4: {foo4}\n    namespaces:\n      sandbox: {{address: \"{SANDBOX}\"}}\n"
        );
        let bar_extra = format!("    address4: {bar4}\n");
        let mut mesh = Mesh::configure_with(
            &topo,
            &[MeshLink::new("bar", "foo", LinkKind::Tcp)],
            &[("foo", &foo_extra), ("bar", &bar_extra)],
        )?;
        enable_ipv4(&mesh)?;
        let ns = topo.ns("foo");
        // The unprivileged user needs its own copy of the binary (the build tree may be private),
        // and a directory for the node's files.
        let home = dir.join("nobody");
        std::fs::create_dir_all(&home)?;
        let binary = home.join("connectopus");
        std::fs::copy(workspace_binary("connectopus")?, &binary)?;
        for file in ["foo.yml", "foo.yml.sig"] {
            let from = if file.ends_with(".sig") {
                format!("{}.sig", mesh.config_path().display())
            } else {
                mesh.config_path().display().to_string()
            };
            std::fs::copy(&from, home.join(file))?;
        }
        for entry in std::fs::read_dir(&home)? {
            std::os::unix::fs::chown(entry?.path(), Some(65534), Some(65534))?;
        }
        std::os::unix::fs::chown(&home, Some(65534), Some(65534))?;
        let bin = binary.display().to_string();

        let out = setup_tunnel(&mesh, ns, &bin, &[])?;
        ensure!(out.status.success(), "setup-tunnel: {}", text(&out));
        let check = setup_tunnel(&mesh, ns, &bin, &["--check"])?;
        ensure!(
            check.status.success(),
            "setup-tunnel --check: {}",
            text(&check)
        );
        // The persistent device holds the IPv4 address, and subnet4 is routed through it.
        let addr4 = ns.ip(&["-4", "addr", "show", "dev", "cx-foo"])?;
        ensure!(addr4.contains(&format!("{foo4}/16")), "{addr4}");
        let route4 = ns.ip(&["-4", "route", "show", SUBNET4])?;
        ensure!(route4.contains("dev cx-foo"), "{route4}");

        let config = home.join("foo.yml").display().to_string();
        let socket = home.join("foo.sock").display().to_string();
        let setpriv = tool("setpriv")?.display().to_string();
        // Some hosts keep /dev/net/tun root-only (Debian makes it 0666, as a node without
        // privileges needs): give the node's own mount namespace (`ip netns exec` makes one) a
        // 0666 node of the same device.
        let devdir = dir.join("dev");
        std::fs::create_dir_all(&devdir)?;
        let mut command = ns.command(
            "sh",
            &[
                "-c",
                "mount -t tmpfs none \"$CX_DEV\" && mknod -m 666 \"$CX_DEV/tun\" c 10 200 \
                 && mount --bind \"$CX_DEV/tun\" /dev/net/tun && exec \"$@\"",
                "sh",
                setpriv.as_str(),
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin.as_str(),
                "node",
                "--config",
                config.as_str(),
                "--id",
                "foo",
                "--control-socket",
                socket.as_str(),
                "--log-level",
                "debug",
            ],
        )?;
        command.env("CX_DEV", &devdir);
        let foo = ns.spawn_with(command, "foo-nobody", connectopus_tests::StdinMode::Null)?;
        mesh.start("bar")?;
        let foo_addr = mesh.address("foo");
        wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
            connectopus_tests::ping6(topo.ns("bar"), foo_addr, 1, 56, &["-W", "2"])
                .is_ok_and(|p| p.all_received())
        })
        .with_context(|| {
            format!(
                "bar should reach the unprivileged foo:\n{}",
                foo.log_tails()
            )
        })?;
        let log = foo.stderr();
        ensure!(
            log.contains("using the prepared (persistent) TUN device"),
            "foo should open the prepared device: {}",
            foo.log_tails()
        );
        ensure!(
            log.contains("running without eBPF"),
            "foo should say it runs without eBPF"
        );

        // The namespace, entered by the same unprivileged user, reaches bar.
        let bar = mesh.address("bar").to_string();
        let mut enter = ns.command(
            &setpriv,
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin.as_str(),
                "nsenter",
                "--socket",
                socket.as_str(),
                "--netns",
                "sandbox",
                "--",
                "ping",
                "-6",
                "-c1",
                "-W5",
                bar.as_str(),
            ],
        )?;
        enter.current_dir("/");
        let mut last = String::new();
        wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
            let mut again = std::process::Command::new(enter.get_program());
            again.args(enter.get_args()).current_dir("/");
            match connectopus_tests::run_with_timeout(again, Duration::from_secs(10)) {
                Ok(o) => {
                    last = text(&o);
                    o.status.success()
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        })
        .with_context(|| {
            format!(
                "ping from the rootless namespace: {last}\n{}",
                foo.log_tails()
            )
        })?;

        // IPv4 crosses to the unprivileged node too.
        wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
            topo.ns("bar")
                .exec(
                    "ping",
                    &["-4", "-n", "-c", "1", "-W", "2", &foo4.to_string()],
                )
                .is_ok_and(|o| o.status.success())
        })
        .context("bar should ping foo's IPv4 address")?;

        // The check fails once the device lost its IPv4 address, and then its address.
        ns.ip(&["-4", "addr", "del", &format!("{foo4}/16"), "dev", "cx-foo"])?;
        let check = setup_tunnel(&mesh, ns, &bin, &["--check"])?;
        ensure!(
            !check.status.success()
                && text(&check).contains(&format!("IPv4 address {foo4}/16 missing")),
            "setup-tunnel --check should fail without the IPv4 address: {}",
            text(&check)
        );
        ns.ip(&["addr", "del", &format!("{foo_addr}/64"), "dev", "cx-foo"])?;
        let check = setup_tunnel(&mesh, ns, &bin, &["--check"])?;
        ensure!(
            !check.status.success() && text(&check).contains("missing"),
            "setup-tunnel --check should fail: {}",
            text(&check)
        );
        drop(foo);
        Ok(())
    });
}
