//! The CNI plugin `connectopus-cni`, executed directly as a runtime would (dynamic-mesh.md
//! §3.4 items 1 and 5): VERSION and every error code of the environment and the
//! configuration; ADD with the node down leaves nothing behind; DEL is idempotent without a
//! node and removes the pair; CHECK without a node says so. The plumbing ADD does (a veth made
//! into the container's namespace, /128s with `nodad`, routes via `fe80::1`) is run through
//! the library in scratch namespaces: traffic crosses it, CHECK's verification notices a
//! removed address, and 50 cycles leak nothing. Against nodes with an `issue` pool
//! (the tests at the end): every verb, GC, a restart that reconciles, containers on two
//! nodes that reach each other by name across the mesh, and 50 ADD/DEL cycles that leave no
//! lease. Real runtimes (libcni, podman, containerd) are in `cni_runtimes.rs`; the harness
//! both share is `connectopus_tests::cni`.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_cni::netns::{Plan, attach, detach, host_ifname, verify};
use connectopus_netlink::{Netlink, Netns};
use connectopus_tests::cni::{
    DOMAIN, POOL_BAR, POOL_FOO, Runtime, aaaa, container_leases, control, error_of, in_pool,
    netns_path, plugin, result_address, serving_mesh,
};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, dig, require_root, require_tools, run_test,
    wait_until, workspace_binary,
};
use serde_json::Value;

const CONF_1_1: &str = r#"{"cniVersion":"1.1.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock"}"#;
const GC_1_1: &str = r#"{"cniVersion":"1.1.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#;
const CONF: &str = r#"{"cniVersion":"1.0.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock"}"#;

/// The environment, stdin, the expected code and a word the message must hold.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u64, &'a str);

#[test]
fn version_and_the_error_codes_by_direct_exec() {
    run_test("cni_direct_exec", |_dir| {
        let out = plugin(
            None,
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"1.0.0"}"#,
        )?;
        ensure!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["cniVersion"] == "1.0.0", "{v}");
        ensure!(
            v["supportedVersions"] == serde_json::json!(["1.0.0", "1.1.0"]),
            "{v}"
        );
        // VERSION answers whatever the stdin, in the newest version unless asked otherwise.
        let out = plugin(None, &[("CNI_COMMAND", "VERSION")], "")?;
        ensure!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["cniVersion"] == "1.1.0", "{v}");

        let cases: &[Case<'_>] = &[
            (&[], CONF, 4, "CNI_COMMAND"),
            (&[("CNI_COMMAND", "ADD")], "{not json", 6, "not JSON"),
            (
                &[("CNI_COMMAND", "ADD")],
                r#"{"cniVersion":"1.0.0"}"#,
                7,
                "name",
            ),
            (
                &[("CNI_COMMAND", "ADD")],
                r#"{"cniVersion":"0.4.0","name":"mesh","type":"connectopus"}"#,
                1,
                "0.4.0",
            ),
            (
                &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
                CONF,
                4,
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                4,
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_NETNS", "/proc/self/ns/net"),
                    ("CNI_IFNAME", "an-interface-name-too-long"),
                ],
                CONF,
                4,
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_NETNS", "/proc/self/ns/mnt"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                4,
                "not a network namespace",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_NETNS", "/proc/self/ns/net"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                7,
                "prevResult",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"1.0.0","name":"mesh","type":"connectopus","routes":"some"}"#,
                7,
                "routes",
            ),
            (&[("CNI_COMMAND", "FOO")], CONF, 4, "FOO"),
            (&[("CNI_COMMAND", "GC")], CONF, 7, "valid-attachments"),
            // The node is down: ADD is to be tried later; STATUS says the containers lost
            // the mesh; GC cannot ask which leases to release.
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_NETNS", "/proc/self/ns/net"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF_1_1,
                11,
                "unreachable",
            ),
            (&[("CNI_COMMAND", "STATUS")], CONF_1_1, 51, "unreachable"),
            (&[("CNI_COMMAND", "GC")], GC_1_1, 11, "unreachable"),
        ];
        let out = plugin(None, &[("CNI_COMMAND", "STATUS")], CONF_1_1)?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["cniVersion"] == "1.1.0", "{v}");
        for (env, stdin, code, needle) in cases {
            let out = plugin(None, env, stdin)?;
            let (got, msg) = error_of(&out).with_context(|| format!("{env:?} {stdin}"))?;
            ensure!(
                got == *code && msg.contains(needle),
                "{env:?} {stdin}: code {got} `{msg}`, expected {code} mentioning `{needle}`"
            );
        }
        Ok(())
    });
}

/// The reference plugin, from Debian's `containernetworking-plugins`.
const PTP: &str = "/usr/lib/cni/ptp";

/// Runs `program` with exactly `env` and `stdin`.
fn exec_with(program: &Path, env: &[(&str, &str)], stdin: &str) -> Result<Output> {
    let mut child = Command::new(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// The same inputs through `ptp` (where its verb exists) give the same codes and shapes.
#[test]
fn the_reference_plugin_gives_the_same_codes() {
    run_test("cni_versus_ptp", |_dir| {
        ensure!(
            Path::new(PTP).is_file(),
            "{PTP} is missing: install the Debian package `containernetworking-plugins`"
        );
        let ours = workspace_binary("connectopus-cni")?;
        let both = |env: &[(&str, &str)], stdin: &str| -> Result<(Output, Output)> {
            Ok((
                exec_with(&ours, env, stdin)?,
                exec_with(Path::new(PTP), env, stdin)?,
            ))
        };
        let (a, b) = both(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#)?;
        for out in [&a, &b] {
            ensure!(out.status.success(), "{out:?}");
            let v: Value = serde_json::from_slice(&out.stdout)?;
            ensure!(v["cniVersion"] == "1.0.0", "{v}");
            let versions = v["supportedVersions"]
                .as_array()
                .context("supportedVersions")?;
            ensure!(versions.contains(&Value::from("1.0.0")), "{v}");
        }
        let conf = r#"{"cniVersion":"1.0.0","name":"mesh","type":"x"}"#;
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        let cases: &[Case<'_>] = &[
            (&full, "{not json", 6, ""),
            (
                &full,
                r#"{"cniVersion":"9.9.9","name":"mesh","type":"x"}"#,
                1,
                "",
            ),
            (&full, r#"{"cniVersion":"1.0.0","type":"x"}"#, 7, ""),
            (&[full[0], full[1], full[3]], conf, 4, "CNI_NETNS"),
            (&[full[0], full[2], full[3]], conf, 4, "CNI_CONTAINERID"),
            (
                &[("CNI_COMMAND", "FOO"), full[1], full[2], full[3]],
                conf,
                4,
                "FOO",
            ),
        ];
        for (env, stdin, code, needle) in cases {
            let (a, b) = both(env, stdin)?;
            let (ours_code, ours_msg) = error_of(&a).with_context(|| format!("ours: {env:?}"))?;
            ensure!(b.status.code() == Some(1), "ptp {env:?} {stdin}: {b:?}");
            let theirs: Value = serde_json::from_slice(&b.stdout)?;
            ensure!(
                ours_code == *code && theirs["code"] == *code,
                "{env:?} {stdin}: ours {ours_code} `{ours_msg}`, ptp {theirs}"
            );
            ensure!(
                ours_msg.contains(needle)
                    && theirs["msg"].as_str().is_some_and(|m| m.contains(needle)),
                "{env:?}: `{ours_msg}` vs {theirs}"
            );
        }
        Ok(())
    });
}

fn netns(ns: &NetNs) -> Result<Netns> {
    Ok(Netns::open(&Path::new("/run/netns").join(ns.name()))?)
}

fn cx_links(ns: &NetNs) -> Result<Vec<String>> {
    Ok(Netlink::open_in(&netns(ns)?)?
        .links()?
        .into_iter()
        .map(|l| l.name)
        // The plugin's host sides (`cx` and 8 hex digits), not a node's TUN device.
        .filter(|n| {
            n.len() == 10
                && n.starts_with("cx")
                && n[2..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .collect())
}

fn host_routes(ns: &NetNs) -> Result<Vec<IpAddr>> {
    Ok(Netlink::open_in(&netns(ns)?)?
        .routes()?
        .into_iter()
        .filter(|r| r.prefix_len == 128 && r.table == 254 && r.kind == 1)
        .map(|r| r.destination)
        .collect())
}

#[test]
fn add_with_the_node_down_leaves_nothing_and_del_always_succeeds() {
    require_root!();
    require_tools(&["ip"]);
    run_test("cni_node_down", |dir: &TestDir| {
        let node = NetNs::new(dir, "node")?;
        let container = NetNs::new(dir, "ctr")?;
        let path = netns_path(&container);
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "0123456789abcdef"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=web-1"),
        ];
        let (code, msg) = error_of(&plugin(Some(&node), &add, CONF)?)?;
        ensure!(code == 11 && msg.contains("unreachable"), "{code} {msg}");
        ensure!(cx_links(&node)?.is_empty());

        // A pair as ADD leaves it, made through the library.
        let host_name = host_ifname("0123456789abcdef", "eth0");
        let address: Ipv6Addr = "fd42:a::7".parse()?;
        let plan = Plan {
            host_ifname: &host_name,
            ifname: "eth0",
            address,
            mirrors: &[],
            routes: &[("fd42::".parse()?, 16)],
            mtu: Some(1400),
        };
        attach(&netns(&node)?, &netns(&container)?, &plan)?;
        ensure!(cx_links(&node)? == vec![host_name.clone()]);
        ensure!(host_routes(&node)?.contains(&IpAddr::V6(address)));

        // CHECK needs the node: without it, try again later.
        let prev = serde_json::json!({
            "cniVersion": "1.0.0", "name": "mesh", "type": "connectopus",
            "socket": "/run/connectopus/cx-no-such-node.sock",
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": host_name}, {"name": "eth0", "sandbox": path}],
                "ips": [{"interface": 1, "address": "fd42:a::7/128", "gateway": "fe80::1"}]}
        })
        .to_string();
        let check = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "0123456789abcdef"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let (code, _) = error_of(&plugin(Some(&node), &check, &prev)?)?;
        ensure!(code == 11, "{code}");

        // DEL with the node down removes the pair and the host route; again, and without a
        // netns, it still succeeds.
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "0123456789abcdef"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        for env in [&del[..], &del[..], &[del[0], del[1], del[3]][..]] {
            let out = plugin(Some(&node), env, CONF)?;
            ensure!(
                out.status.success() && out.stdout.is_empty(),
                "DEL {env:?}: {out:?}"
            );
        }
        ensure!(cx_links(&node)?.is_empty());
        ensure!(!host_routes(&node)?.contains(&IpAddr::V6(address)));
        let left = Netlink::open_in(&netns(&container)?)?.find_link("eth0")?;
        ensure!(left.is_none(), "{left:?}");
        Ok(())
    });
}

#[test]
fn the_plumbing_carries_traffic_is_checked_and_leaks_nothing() {
    require_root!();
    require_tools(&["ip", "ping"]);
    run_test("cni_plumbing", |dir: &TestDir| {
        let node = NetNs::new(dir, "node")?;
        let container = NetNs::new(dir, "ctr")?;
        let (node_ns, container_ns) = (netns(&node)?, netns(&container)?);
        Netlink::open_in(&node_ns)?.add_address("lo", "fd42::1".parse()?, 128, true)?;
        let host_name = host_ifname("c0ffee", "eth0");
        let address: Ipv6Addr = "fd42:a::9".parse()?;
        let mirror: Ipv6Addr = "2001:db8:100:e1::9".parse()?;
        let routes = [("fd42::".parse()?, 16)];
        let plan = Plan {
            host_ifname: &host_name,
            ifname: "eth0",
            address,
            mirrors: &[mirror],
            routes: &routes,
            mtu: Some(1400),
        };
        let attached = attach(&node_ns, &container_ns, &plan)?;
        ensure!(attached.host_mac.len() == 17 && attached.container_mac.len() == 17);
        verify(&node_ns, &container_ns, &plan).map_err(anyhow::Error::msg)?;
        ensure!(
            node.exec_ok("cat", &["/proc/sys/net/ipv6/conf/all/forwarding"])?
                .trim()
                == "1"
        );

        let out = container.exec("ping", &["-6", "-c", "1", "-W", "5", "fd42::1"])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for to in ["fd42:a::9", "2001:db8:100:e1::9"] {
            let out = node.exec("ping", &["-6", "-c", "1", "-W", "5", to])?;
            ensure!(
                out.status.success(),
                "{to}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }

        // CHECK's verification notices an address taken away, then the route, then the pair.
        container.ip(&["addr", "del", "fd42:a::9/128", "dev", "eth0"])?;
        let why = verify(&node_ns, &container_ns, &plan).unwrap_err();
        ensure!(why.contains("fd42:a::9"), "{why}");
        container.ip(&["addr", "add", "fd42:a::9/128", "dev", "eth0", "nodad"])?;
        node.ip(&["-6", "route", "del", "fd42:a::9/128"])?;
        let why = verify(&node_ns, &container_ns, &plan).unwrap_err();
        ensure!(why.contains("no route"), "{why}");
        ensure!(detach(&node_ns, &host_name)?);
        let why = verify(&node_ns, &container_ns, &plan).unwrap_err();
        ensure!(why.contains("eth0"), "{why}");
        ensure!(!detach(&node_ns, &host_name)?);

        // 50 cycles leave no link and no route behind.
        for _ in 0..50 {
            attach(&node_ns, &container_ns, &plan)?;
            ensure!(detach(&node_ns, &host_name)?);
        }
        ensure!(cx_links(&node)?.is_empty());
        let left = host_routes(&node)?;
        ensure!(!left.contains(&IpAddr::V6(address)) && !left.contains(&IpAddr::V6(mirror)));
        let container_links: Vec<String> = Netlink::open_in(&container_ns)?
            .links()?
            .into_iter()
            .map(|l| l.name)
            .collect();
        ensure!(
            container_links == vec!["lo".to_owned()],
            "{container_links:?}"
        );
        Ok(())
    });
}

/// A node without an `issue` pool serves no containers (dynamic-mesh.md §3.3): ADD says so
/// with code 101 and the node's message, and creates nothing; DEL still succeeds; STATUS says
/// 50 (cannot serve ADD), GC 101. Nor does one whose pool has `containers: false`.
#[test]
fn a_node_that_serves_no_containers_refuses_add_with_101() {
    require_root!();
    require_tools(&["ip"]);
    run_test("cni_not_served", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        // bar has a pool but `containers: false`: it serves no containers either.
        let bar_issue = format!("    issue: {{prefix: \"{POOL_BAR}\", containers: false}}\n");
        let mut mesh = Mesh::configure_with(
            &topo,
            &[MeshLink::new("bar", "foo", LinkKind::Tcp)],
            &[("bar", bar_issue.as_str())],
        )?;
        mesh.start("foo")?;
        mesh.start("bar")?;
        let socket = mesh.socket("foo");
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .context("foo's control socket")?;
        let container = NetNs::new(dir, "ctr")?;
        let path = netns_path(&container);
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "mesh",
            "type": "connectopus", "socket": socket})
        .to_string();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "feedface"),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let foo = topo.ns("foo");
        let (code, msg) = error_of(&plugin(Some(foo), &env, &conf)?)?;
        ensure!(
            code == 101 && msg.contains("does not serve containers") && msg.contains("cni_add"),
            "{code} {msg}"
        );
        let host_name = host_ifname("feedface", "eth0");
        ensure!(!cx_links(foo)?.contains(&host_name));
        let del = [env[1], env[2], env[3], ("CNI_COMMAND", "DEL")];
        let out = plugin(Some(foo), &del, &conf)?;
        ensure!(out.status.success(), "{out:?}");
        let conf_1_1 = serde_json::json!({"cniVersion": "1.1.0", "name": "mesh",
            "type": "connectopus", "socket": socket, "cni.dev/valid-attachments": []})
        .to_string();
        let (code, msg) = error_of(&plugin(Some(foo), &[("CNI_COMMAND", "STATUS")], &conf_1_1)?)?;
        ensure!(
            code == 50 && msg.contains("does not serve containers"),
            "{code} {msg}"
        );
        let (code, msg) = error_of(&plugin(Some(foo), &[("CNI_COMMAND", "GC")], &conf_1_1)?)?;
        ensure!(code == 101 && msg.contains("cni_gc"), "{code} {msg}");

        let bar_socket = mesh.socket("bar");
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            std::os::unix::net::UnixStream::connect(&bar_socket).is_ok()
        })
        .context("bar's control socket")?;
        let bar_conf = serde_json::json!({"cniVersion": "1.0.0", "name": "mesh",
            "type": "connectopus", "socket": bar_socket})
        .to_string();
        let (code, msg) = error_of(&plugin(Some(topo.ns("bar")), &env, &bar_conf)?)?;
        ensure!(
            code == 101 && msg.contains("containers: false"),
            "{code} {msg}"
        );
        ensure!(container_leases(&bar_socket)?.is_empty());
        Ok(())
    });
}

// ---- Against nodes that serve containers (dynamic-mesh.md §3.3, §3.4 items 1 and 5) ----

#[test]
fn a_serving_node_answers_every_verb_gc_and_reconciles_at_start() {
    require_root!();
    require_tools(&["ip"]);
    run_test("cni_serving", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = serving_mesh(&topo)?;
        let socket = mesh.socket("foo");
        let foo = topo.ns("foo");
        let rt = Runtime {
            node: foo,
            socket: socket.display().to_string(),
        };
        let c1 = NetNs::new(dir, "c1")?;
        let c2 = NetNs::new(dir, "c2")?;
        let (p1, p2) = (netns_path(&c1), netns_path(&c2));

        // ADD at 1.0.0: an address of the pool on the container's eth0, its name, the node's
        // DNS; `interfaces[].mtu` only from 1.1.0 on.
        let r1 = rt.add("1.0.0", "c1c1c1c1", &p1, "K8S_POD_NAME=web-1")?;
        ensure!(r1["cniVersion"] == "1.0.0", "{r1}");
        let a1 = result_address(&r1)?;
        ensure!(in_pool(a1, POOL_FOO), "{a1} outside {POOL_FOO}");
        ensure!(r1["ips"][0]["interface"] == 1, "{r1}");
        ensure!(r1["interfaces"][1]["name"] == "eth0", "{r1}");
        ensure!(r1["interfaces"][1]["sandbox"] == p1.as_str(), "{r1}");
        ensure!(
            r1["interfaces"][0]["name"] == host_ifname("c1c1c1c1", "eth0").as_str(),
            "{r1}"
        );
        ensure!(r1["interfaces"][1].get("mtu").is_none(), "{r1}");
        ensure!(r1["dns"]["domain"] == DOMAIN, "{r1}");
        ensure!(
            r1["dns"]["nameservers"] == serde_json::json!([mesh.address("foo").to_string()]),
            "{r1}"
        );
        ensure!(
            r1["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["dst"] == "fd00:cafe::/64")),
            "{r1}"
        );
        let on_eth0 = c1.ip(&["-6", "addr", "show", "dev", "eth0"])?;
        ensure!(on_eth0.contains(&format!("{a1}/128")), "{on_eth0}");
        // The node resolves the name to it (once its next route computation ran).
        let fqdn = format!("web-1.{DOMAIN}");
        let server = IpAddr::V6(mesh.address("foo"));
        let resolved = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            dig(foo, server, &fqdn, "AAAA", false).is_ok_and(|a| aaaa(&a) == vec![a1])
        });
        ensure!(
            resolved.is_ok(),
            "{fqdn}: {:?}",
            dig(foo, server, &fqdn, "AAAA", false)
        );

        // A second ADD for the same container: the same address.
        let again = rt.add("1.0.0", "c1c1c1c1", &p1, "K8S_POD_NAME=web-1")?;
        ensure!(result_address(&again)? == a1, "{again}");
        let links = cx_links(foo)?;
        ensure!(links == vec![host_ifname("c1c1c1c1", "eth0")], "{links:?}");

        // The node's side directly: a name already held gets a suffix, the same key the same
        // lease again (`existing`), an interface name the kernel refuses is code 7.
        let raw = r#"{"cmd":"cni_add","network":"mesh","container_id":"raw","ifname":"eth0","name":"web-1"}"#;
        let first = control(&socket, raw)?;
        let lease = &first["cni_lease"];
        let suffixed = lease["name"].as_str().unwrap_or_default().to_owned();
        ensure!(
            suffixed.starts_with("web-1-") && suffixed.len() == 10 && lease["existing"] == false,
            "{first}"
        );
        let second = control(&socket, raw)?;
        ensure!(
            second["cni_lease"]["address"] == lease["address"]
                && second["cni_lease"]["existing"] == true,
            "{second}"
        );
        let bad = control(
            &socket,
            r#"{"cmd":"cni_add","network":"mesh","container_id":"raw","ifname":"a/b","name":"x"}"#,
        )?;
        ensure!(bad["cni_error"]["code"] == 7, "{bad}");
        let del = control(
            &socket,
            r#"{"cmd":"cni_del","network":"mesh","container_id":"raw","ifname":"eth0"}"#,
        )?;
        ensure!(
            del["done"]
                .as_str()
                .is_some_and(|d| d.starts_with("released")),
            "{del}"
        );

        // ADD at 1.1.0: another address, with the MTU.
        let r2 = rt.add("1.1.0", "c2c2c2c2", &p2, "")?;
        ensure!(r2["cniVersion"] == "1.1.0", "{r2}");
        let a2 = result_address(&r2)?;
        ensure!(in_pool(a2, POOL_FOO) && a2 != a1, "{a2}");
        ensure!(
            r2["interfaces"][1]["mtu"]
                .as_u64()
                .is_some_and(|m| m >= 1280),
            "{r2}"
        );
        let mut leases = container_leases(&socket)?;
        leases.sort();
        ensure!(
            leases
                == vec![
                    ("mesh/c1c1c1c1/eth0".to_owned(), a1),
                    ("mesh/c2c2c2c2/eth0".to_owned(), a2)
                ],
            "{leases:?}"
        );

        // CHECK passes, then gives 103 once the container's address is gone.
        let check_conf = rt.conf("1.0.0", &[("prevResult", r1)]);
        let out = rt.run("CHECK", "c1c1c1c1", Some(&p1), "", &check_conf)?;
        ensure!(out.status.success(), "CHECK: {out:?}");
        c1.ip(&["addr", "del", &format!("{a1}/128"), "dev", "eth0"])?;
        let (code, msg) = error_of(&rt.run("CHECK", "c1c1c1c1", Some(&p1), "", &check_conf)?)?;
        ensure!(code == 103 && msg.contains(&a1.to_string()), "{code} {msg}");
        // The node's side of CHECK: another address is not the container's.
        let other = rt.conf("1.0.0", &[("prevResult", r2)]);
        let (code, msg) = error_of(&rt.run("CHECK", "c1c1c1c1", Some(&p1), "", &other)?)?;
        ensure!(code == 103 && msg.contains("does not hold"), "{code} {msg}");

        // STATUS from a serving node: 0.
        let out = rt.run("STATUS", "", None, "", &rt.conf("1.1.0", &[]))?;
        ensure!(
            out.status.success() && out.stdout.is_empty(),
            "STATUS: {out:?}"
        );

        // GC keeping c2 releases c1 (the node's table confirms) and deletes its pair.
        let keep = serde_json::json!([{"containerID": "c2c2c2c2", "ifname": "eth0"}]);
        let gc = rt.conf("1.1.0", &[("cni.dev/valid-attachments", keep)]);
        let out = rt.run("GC", "", None, "", &gc)?;
        ensure!(out.status.success(), "GC: {out:?}");
        ensure!(
            container_leases(&socket)? == vec![("mesh/c2c2c2c2/eth0".to_owned(), a2)],
            "{:?}",
            container_leases(&socket)?
        );
        ensure!(cx_links(foo)? == vec![host_ifname("c2c2c2c2", "eth0")]);

        // DEL, DEL again, DEL without a netns: all succeed, and the lease is gone.
        rt.del("c2c2c2c2", Some(&p2))?;
        rt.del("c2c2c2c2", Some(&p2))?;
        rt.del("c2c2c2c2", None)?;
        ensure!(container_leases(&socket)?.is_empty());
        ensure!(cx_links(foo)?.is_empty());

        // A container DELeted while the node is down: the node releases its lease when it
        // starts again (its veth is gone); one whose veth is still there keeps its lease.
        let r3 = rt.add("1.0.0", "c3c3c3c3", &p1, "")?;
        let a3 = result_address(&r3)?;
        let r4 = rt.add("1.0.0", "c4c4c4c4", &p2, "")?;
        let a4 = result_address(&r4)?;
        mesh.kill("foo")?;
        rt.del("c3c3c3c3", Some(&p1))?;
        mesh.start("foo")?;
        let ready = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            container_leases(&socket)
                .is_ok_and(|l| l == vec![("mesh/c4c4c4c4/eth0".to_owned(), a4)])
        });
        ensure!(
            ready.is_ok(),
            "after the restart: {:?}",
            container_leases(&socket)
        );
        ensure!(a3 != a4);
        let again = rt.add("1.0.0", "c4c4c4c4", &p2, "")?;
        ensure!(result_address(&again)? == a4, "{again}");
        rt.del("c4c4c4c4", Some(&p2))?;
        Ok(())
    });
}

/// §3.4's acceptance: a container on each node; each resolves the other's name through its
/// node's DNS and pings it across the mesh.
#[test]
fn containers_on_two_nodes_reach_each_other_by_name() {
    require_root!();
    require_tools(&["ip", "ping", "dig"]);
    run_test("cni_two_nodes", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = serving_mesh(&topo)?;
        mesh.wait_converged(Duration::from_secs(30))?;
        let ca = NetNs::new(dir, "ca")?;
        let cb = NetNs::new(dir, "cb")?;
        let mut seen = Vec::new();
        for (node, ctr, id, name, pool) in [
            ("foo", &ca, "aaaa0001", "pod-a", POOL_FOO),
            ("bar", &cb, "bbbb0002", "pod-b", POOL_BAR),
        ] {
            let rt = Runtime {
                node: topo.ns(node),
                socket: mesh.socket(node).display().to_string(),
            };
            let result = rt.add(
                "1.1.0",
                id,
                &netns_path(ctr),
                &format!("K8S_POD_NAME={name}"),
            )?;
            let address = result_address(&result)?;
            ensure!(in_pool(address, pool), "{address} outside {pool}");
            let server: IpAddr = result["dns"]["nameservers"][0]
                .as_str()
                .context("no nameserver")?
                .parse()?;
            seen.push((ctr, name, address, server));
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let (ctr, _, _, server) = seen[from];
            let (_, name, address, _) = seen[to];
            let fqdn = format!("{name}.{DOMAIN}");
            // The name spreads with the other node's update: wait for it.
            let resolved = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
                dig(ctr, server, &fqdn, "AAAA", false).is_ok_and(|a| aaaa(&a) == vec![address])
            });
            ensure!(
                resolved.is_ok(),
                "{fqdn} from {}: {:?}",
                ctr.name(),
                dig(ctr, server, &fqdn, "AAAA", false)
            );
            let target = address.to_string();
            let pinged = wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
                ctr.exec("ping", &["-6", "-c", "1", "-W", "2", target.as_str()])
                    .is_ok_and(|o| o.status.success())
            });
            ensure!(
                pinged.is_ok(),
                "{} cannot ping {fqdn} ({address})",
                ctr.name()
            );
        }
        Ok(())
    });
}

/// §3.4 item 5: 50 ADD/DEL cycles leave no `cx*` link, no /128 route and no lease.
#[test]
fn fifty_add_del_cycles_leave_no_lease() {
    require_root!();
    require_tools(&["ip"]);
    run_test("cni_churn", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = serving_mesh(&topo)?;
        let socket = mesh.socket("foo");
        let foo = topo.ns("foo");
        let rt = Runtime {
            node: foo,
            socket: socket.display().to_string(),
        };
        let ctr = NetNs::new(dir, "ctr")?;
        let path = netns_path(&ctr);
        let mut addresses = std::collections::BTreeSet::new();
        for i in 0..50 {
            let id = format!("churn{:04}", i % 5);
            let result = rt.add("1.0.0", &id, &path, "")?;
            let address = result_address(&result)?;
            ensure!(in_pool(address, POOL_FOO), "{address}");
            addresses.insert(address);
            ensure!(container_leases(&socket)?.len() == 1, "cycle {i}");
            rt.del(&id, Some(&path))?;
        }
        ensure!(container_leases(&socket)?.is_empty());
        let links = cx_links(foo)?;
        ensure!(links.is_empty(), "{links:?}");
        let left: Vec<IpAddr> = host_routes(foo)?
            .into_iter()
            .filter(|a| matches!(a, IpAddr::V6(v6) if in_pool(*v6, POOL_FOO)))
            .collect();
        ensure!(left.is_empty(), "{left:?}");
        let ctr_links: Vec<String> = Netlink::open_in(&netns(&ctr)?)?
            .links()?
            .into_iter()
            .map(|l| l.name)
            .collect();
        ensure!(ctr_links == vec!["lo".to_owned()], "{ctr_links:?}");
        ensure!(addresses.len() >= 2, "{addresses:?}");
        Ok(())
    });
}
