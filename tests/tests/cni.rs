//! The CNI plugin `connectopus-cni`, executed directly as a runtime would (dynamic-mesh.md
//! §3.4 step 1, the parts that need no node serving containers yet): VERSION and every error
//! code of the environment and the configuration; ADD with the node down leaves nothing
//! behind; DEL is idempotent without a node and removes the pair; CHECK without a node says
//! so. The plumbing ADD does (a veth made into the container's namespace, /128s with
//! `nodad`, routes via `fe80::1`) is run through the library in scratch namespaces: traffic
//! crosses it, CHECK's verification notices a removed address, and 50 cycles leak nothing.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_cni::netns::{Plan, attach, detach, host_ifname, verify};
use connectopus_netlink::{Netlink, Netns};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, require_root, require_tools, run_test,
    wait_until, workspace_binary,
};
use serde_json::Value;

const CONF_1_1: &str = r#"{"cniVersion":"1.1.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock"}"#;
const GC_1_1: &str = r#"{"cniVersion":"1.1.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#;
const CONF: &str = r#"{"cniVersion":"1.0.0","name":"mesh","type":"connectopus","socket":"/run/connectopus/cx-no-such-node.sock"}"#;

/// Runs the plugin with exactly `env` (nothing inherited) and `stdin`; inside `ns` if given.
fn plugin(ns: Option<&NetNs>, env: &[(&str, &str)], stdin: &str) -> Result<Output> {
    let binary = workspace_binary("connectopus-cni")?;
    let mut command = match ns {
        Some(ns) => ns.command(&binary.display().to_string(), &[] as &[&str])?,
        None => Command::new(&binary),
    };
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting connectopus-cni")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// The error object of a failed run: its code and message.
fn error_of(out: &Output) -> Result<(u64, String)> {
    ensure!(
        out.status.code() == Some(1),
        "expected exit 1, got {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("error output: {}", String::from_utf8_lossy(&out.stdout)))?;
    ensure!(v["cniVersion"].is_string(), "{v}");
    Ok((
        v["code"].as_u64().context("no code")?,
        v["msg"].as_str().context("no msg")?.to_owned(),
    ))
}

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

fn netns_path(ns: &NetNs) -> String {
    format!("/run/netns/{}", ns.name())
}

fn cx_links(ns: &NetNs) -> Result<Vec<String>> {
    Ok(Netlink::open_in(&netns(ns)?)?
        .links()?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("cx"))
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

/// Today's node does not answer `cni_*` (dynamic-mesh.md steps 8 and 10): ADD says so with
/// code 101 and its message, and creates nothing; DEL still succeeds; STATUS says 50 (cannot
/// serve ADD), GC 101.
#[test]
fn a_node_that_serves_no_containers_refuses_add_with_101() {
    require_root!();
    require_tools(&["ip"]);
    run_test("cni_not_served", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start("foo")?;
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
        Ok(())
    });
}
