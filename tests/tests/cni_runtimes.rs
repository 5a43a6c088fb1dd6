//! The CNI plugin driven by real container runtimes (dynamic-mesh.md §3.4 items 2, 3 and 4;
//! shared/reference/cni-dhcpv6.md §3): libcni, the library runtimes link, through the
//! `minicni` driver (tests/minicni) on a Kubernetes-style conflist that chains `tuning`
//! after `connectopus`; podman 4.3 with its CNI backend; containerd 1.6 with `ctr`, the
//! container joining a namespace made first or getting CNI on its task's own namespace.
//! Each runs against nodes that serve containers: containers get pool addresses, their names
//! resolve in the mesh DNS, they ping each other across the mesh, and DEL releases the lease.
//! The direct-exec tests of the plugin are in `cni.rs`; the harness both share is
//! `connectopus_tests::cni`.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::cni::{
    DOMAIN, POOL_BAR, POOL_FOO, aaaa, container_leases, in_pool, netns_path, serving_mesh,
};
use connectopus_tests::container_runtimes::{
    Containerd, Libcni, Podman, RunContainerdLeftovers, output_text, require_reference_plugin,
};
use connectopus_tests::{
    NetNs, TestDir, Topology, dig, require_root, require_tools, run_test, unique_name, wait_until,
};
use serde_json::Value;

/// The `cx` + 8 hex digit host sides of the plugin's veths in `ns`.
fn plugin_links(ns: &NetNs) -> Result<Vec<String>> {
    Ok(ns
        .ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| {
            n.len() == 10
                && n.starts_with("cx")
                && n[2..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .collect())
}

/// kubelet's `CNI_ARGS` for a pod (what it puts in libcni's `RuntimeConf.Args`).
fn kubelet_args(namespace: &str, pod: &str, sandbox_id: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
         K8S_POD_INFRA_CONTAINER_ID={sandbox_id};K8S_POD_UID=6f9e1c2a-33b4-4d0e-9a51-0c7d2e8b1f00"
    )
}

/// The hop limit `tuning` sets in the container in the Kubernetes-style conflist.
const TUNED_HOP_LIMIT: &str = "42";

/// §3.4 item 2 (reference §5 (a) 3): libcni validates a Kubernetes-style conflist (1.0.0;
/// `connectopus` then `tuning`, which gets our result as `prevResult` and sets a sysctl in the
/// container; VALIDATE asks each plugin VERSION), then runs ADD, CHECK and DEL with kubelet's
/// `CNI_ARGS`. The result parses as libcni's `types100.Result` and names the container's
/// interface and namespace; the container has the pool address and the tuned sysctl; the pod
/// name resolves in the mesh DNS, on its node and across the mesh; CHECK passes, and fails
/// once the address is gone; DEL (with the `prevResult` libcni cached) releases the lease,
/// removes the veth and the cache entry; a second DEL, with no cache, succeeds.
#[test]
fn libcni_runs_a_kubernetes_style_conflist_with_tuning_chained() {
    require_root!();
    require_tools(&["ip", "dig", "go"]);
    require_reference_plugin("tuning");
    run_test("cni_libcni", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = serving_mesh(&topo)?;
        let foo = topo.ns("foo");
        let socket = mesh.socket("foo");
        let network = unique_name();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {"type": "connectopus", "socket": socket},
                {"type": "tuning",
                 "sysctl": {"net.ipv6.conf.eth0.hop_limit": TUNED_HOP_LIMIT}},
            ],
        });
        let libcni = Libcni::new(dir, foo, &conflist)?;
        let pod = NetNs::new(dir, "pod")?;
        let netns = netns_path(&pod);
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let args = kubelet_args("default", "web-0", id);

        // libcni asks each plugin VERSION and checks the list's 1.0.0 against the answer.
        ensure!(
            libcni
                .ok("validate", &network, &netns, id, &args)?
                .contains("VALIDATE ok")
        );
        let printed = libcni.ok("add", &network, &netns, id, &args)?;
        let result: Value = serde_json::from_str(printed.trim())
            .with_context(|| format!("minicni add printed {printed}"))?;
        ensure!(result["cniVersion"] == "1.0.0", "{result}");
        let interfaces = result["interfaces"].as_array().context("no interfaces")?;
        let ip = &result["ips"][0];
        let index = ip["interface"]
            .as_u64()
            .context("ips[0] names no interface")?;
        let eth0 = interfaces
            .get(usize::try_from(index)?)
            .with_context(|| format!("interface {index} of {result}"))?;
        ensure!(
            eth0["name"] == "eth0" && eth0["sandbox"] == netns.as_str(),
            "{result}"
        );
        let (address, len) = ip["address"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .context("no address")?;
        let address: Ipv6Addr = address.parse()?;
        ensure!(len == "128" && in_pool(address, POOL_FOO), "{result}");

        // The container: the address on eth0, and tuning's sysctl (it ran after us, with our
        // result as its prevResult).
        let shown = pod.ip(&["-6", "-o", "addr", "show", "dev", "eth0"])?;
        ensure!(shown.contains(&format!("{address}/128")), "{shown}");
        let hop_limit = pod.exec_ok("cat", &["/proc/sys/net/ipv6/conf/eth0/hop_limit"])?;
        ensure!(hop_limit.trim() == TUNED_HOP_LIMIT, "hop_limit {hop_limit}");

        // The node's lease, keyed by network and container; libcni's cache holds the result.
        let leases = container_leases(&socket)?;
        ensure!(
            leases.len() == 1
                && leases[0].1 == address
                && leases[0].0.starts_with(&format!("{network}/{id}")),
            "{leases:?}"
        );
        let cached: Value =
            serde_json::from_slice(&std::fs::read(libcni.cached_result(&network, id))?)?;
        ensure!(
            cached["result"]["ips"][0]["address"] == format!("{address}/128"),
            "{cached}"
        );

        // K8S_POD_NAME is the container's name in the mesh DNS: on its node, from the
        // container, and on the other node, across the mesh.
        let fqdn = format!("web-0.{DOMAIN}");
        let server: IpAddr = result["dns"]["nameservers"][0]
            .as_str()
            .context("no nameserver in the result")?
            .parse()?;
        for (ns, server) in [
            (&pod, server),
            (topo.ns("bar"), IpAddr::V6(mesh.address("bar"))),
        ] {
            let resolved = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
                dig(ns, server, &fqdn, "AAAA", false).is_ok_and(|a| aaaa(&a) == vec![address])
            });
            ensure!(
                resolved.is_ok(),
                "{fqdn} at {server} from {}: {:?}",
                ns.name(),
                dig(ns, server, &fqdn, "AAAA", false)
            );
        }

        // CHECK through libcni (prevResult from its cache, to both plugins) passes, and fails
        // once the address is gone from the container.
        ensure!(
            libcni
                .ok("check", &network, &netns, id, &args)?
                .contains("CHECK ok")
        );
        pod.ip(&[
            "-6",
            "addr",
            "del",
            &format!("{address}/128"),
            "dev",
            "eth0",
        ])?;
        let out = libcni.run("check", &network, &netns, id, &args)?;
        ensure!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains(&address.to_string()),
            "CHECK after removing the address: {}",
            output_text(&out)
        );

        // DEL through libcni: the lease, the veth and the cache entry go; again, succeeds.
        ensure!(
            libcni
                .ok("del", &network, &netns, id, &args)?
                .contains("DEL ok")
        );
        let leases = container_leases(&socket)?;
        ensure!(leases.is_empty(), "{leases:?}");
        let links = plugin_links(foo)?;
        ensure!(links.is_empty(), "{links:?}");
        ensure!(!libcni.cached_result(&network, id).exists());
        let links = pod.ip(&["-o", "link", "show"])?;
        ensure!(
            links.lines().count() == 1 && links.contains("lo"),
            "{links}"
        );
        ensure!(
            libcni
                .ok("del", &network, &netns, id, &args)?
                .contains("DEL ok")
        );
        Ok(())
    });
}
/// §3.4 item 3: podman 4.3 runs a container on each node's network; `podman inspect` shows
/// the mesh address, container A pings container B by name across the mesh, and `podman rm
/// -f` releases the lease.
#[test]
fn podman_containers_ping_each_other_by_name_across_the_mesh() {
    require_root!();
    require_tools(&["ip", "podman", "runc", "busybox", "nsenter"]);
    run_test("cni_podman", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = serving_mesh(&topo)?;
        mesh.wait_converged(Duration::from_secs(30))?;
        // A network name of this run only: podman's libcni cache in /var/lib/cni is keyed by
        // it.
        let network = unique_name();
        let mut pods = Vec::new();
        for (node, pod, pool) in [("foo", "pod-a", POOL_FOO), ("bar", "pod-b", POOL_BAR)] {
            let podman = Podman::new(dir, node, topo.ns(node), &mesh.socket(node), &network)?;
            podman.run(pod, &network, mesh.address(node))?;
            let address = podman.address(pod, &network)?;
            ensure!(in_pool(address, pool), "{pod}: {address} outside {pool}");
            let leases = container_leases(&mesh.socket(node))?;
            ensure!(
                leases.len() == 1
                    && leases[0].1 == address
                    && leases[0].0.starts_with(&format!("{network}/")),
                "{leases:?}"
            );
            pods.push((podman, pod, address));
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let (podman, _, _) = &pods[from];
            let (_, pod, address) = &pods[to];
            let fqdn = format!("{pod}.{DOMAIN}");
            let mut last = String::new();
            let pinged =
                wait_until(
                    Duration::from_secs(30),
                    Duration::from_millis(500),
                    || match podman.command(&[
                        "exec",
                        pods[from].1,
                        "ping",
                        "-6",
                        "-c",
                        "1",
                        "-W",
                        "2",
                        &fqdn,
                    ]) {
                        Ok(mut c) => match c.output() {
                            Ok(o) => {
                                last = format!(
                                    "{}{}",
                                    String::from_utf8_lossy(&o.stdout),
                                    String::from_utf8_lossy(&o.stderr)
                                );
                                o.status.success()
                            }
                            Err(e) => {
                                last = e.to_string();
                                false
                            }
                        },
                        Err(e) => {
                            last = e.to_string();
                            false
                        }
                    },
                );
            ensure!(
                pinged.is_ok(),
                "{} cannot ping {fqdn}: {last}",
                pods[from].1
            );
            ensure!(
                last.contains(&address.to_string()),
                "{fqdn} did not resolve to {address}: {last}"
            );
        }
        // `podman rm -f` runs DEL: the lease goes.
        for (node, (podman, pod, _)) in ["foo", "bar"].iter().zip(&pods) {
            podman.ok(&["rm", "-f", "-t", "0", pod])?;
            ensure!(container_leases(&mesh.socket(node))?.is_empty(), "{node}");
        }
        Ok(())
    });
}

// ---- containerd 1.6 + ctr (reference §3.2, §5 (a) item 5) ----

/// `nameserver` lines for a container's /etc/resolv.conf: its node's mesh DNS.
fn resolv_conf(dir: &TestDir, node: &str, server: Ipv6Addr) -> Result<PathBuf> {
    let path = dir.path().join(format!("resolv-{node}.conf"));
    std::fs::write(&path, format!("nameserver {server}\nsearch {DOMAIN}\n"))?;
    Ok(path)
}

/// §3.4 item 4 (reference §3.2, §5 (a) 5): containerd 1.6 with `ctr`, a private containerd
/// in each node's namespace. On foo, as CRI does it: a namespace first, ADD through libcni,
/// then the container joins it (`--with-ns network:`). On bar: the task makes its own
/// namespace and ADD is applied to `/proc/<pid>/ns/net`. Each container has its pool address
/// on eth0 and pings the other by name across the mesh (`ctr task exec … ping -6`). Then, as
/// a runtime tears down: kill the task, DEL (for bar with the `/proc` path of a process that
/// is gone), and the leases go.
#[test]
fn containerd_containers_ping_each_other_by_name_across_the_mesh() {
    require_root!();
    require_tools(&[
        "ip",
        "go",
        "containerd",
        "ctr",
        "runc",
        "busybox",
        "nsenter",
    ]);
    run_test("cni_containerd", |dir: &TestDir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = serving_mesh(&topo)?;
        mesh.wait_converged(Duration::from_secs(30))?;
        let network = unique_name();
        let namespaces = [unique_name(), unique_name()];
        // Declared first, dropped last: after both containerds are gone.
        let _leftovers = RunContainerdLeftovers {
            namespaces: namespaces.to_vec(),
        };
        let pod_ns = NetNs::new(dir, "pod-a")?;
        let mut nodes = Vec::new();
        for (node, namespace) in ["foo", "bar"].into_iter().zip(&namespaces) {
            let ns = topo.ns(node);
            let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": network,
                "plugins": [{"type": "connectopus", "socket": mesh.socket(node)}]});
            let libcni = Libcni::new(dir, ns, &conflist)?;
            let containerd = Containerd::start(dir, ns, namespace)?;
            let resolv = resolv_conf(dir, node, mesh.address(node))?;
            nodes.push((node, libcni, containerd, resolv));
        }

        // foo: the namespace first, ADD, then the container joins it.
        let (_, libcni, containerd, resolv) = &nodes[0];
        let a_netns = netns_path(&pod_ns);
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a";
        let result: Value =
            serde_json::from_str(libcni.ok("add", &network, &a_netns, "pod-a", args)?.trim())?;
        containerd.start_container("pod-a", Some(&a_netns), resolv)?;
        // bar: the task first, ADD on its own namespace.
        let (_, libcni, containerd, resolv) = &nodes[1];
        let b_pid = containerd.start_container("pod-b", None, resolv)?;
        let b_netns = format!("/proc/{b_pid}/ns/net");
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-b";
        let result_b: Value =
            serde_json::from_str(libcni.ok("add", &network, &b_netns, "pod-b", args)?.trim())?;
        ensure!(
            result_b["interfaces"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["sandbox"] == b_netns.as_str())),
            "{result_b}"
        );

        let mut pods = Vec::new();
        for ((node, _, containerd, _), (pod, result, pool)) in nodes
            .iter()
            .zip([("pod-a", &result, POOL_FOO), ("pod-b", &result_b, POOL_BAR)])
        {
            let address: Ipv6Addr = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split_once('/'))
                .context("no address")?
                .0
                .parse()?;
            ensure!(in_pool(address, pool), "{pod}: {address} outside {pool}");
            // Inside the container, as ctr sees it.
            let shown = containerd.exec(pod, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"])?;
            ensure!(
                String::from_utf8_lossy(&shown.stdout).contains(&format!("{address}/128")),
                "{pod}: {}",
                output_text(&shown)
            );
            let leases = container_leases(&mesh.socket(node))?;
            ensure!(
                leases.len() == 1
                    && leases[0].1 == address
                    && leases[0].0.starts_with(&format!("{network}/{pod}")),
                "{node}: {leases:?}"
            );
            pods.push((pod, address));
        }

        for (from, to) in [(0, 1), (1, 0)] {
            let containerd = &nodes[from].2;
            let (pod, _) = pods[from];
            let (other, address) = pods[to];
            let fqdn = format!("{other}.{DOMAIN}");
            let mut last = String::new();
            let pinged =
                wait_until(
                    Duration::from_secs(30),
                    Duration::from_millis(500),
                    || match containerd.exec(pod, &["ping", "-6", "-c", "1", "-W", "2", &fqdn]) {
                        Ok(out) => {
                            last = output_text(&out);
                            out.status.success()
                        }
                        Err(e) => {
                            last = e.to_string();
                            false
                        }
                    },
                );
            ensure!(pinged.is_ok(), "{pod} cannot ping {fqdn}: {last}");
            ensure!(
                last.contains(&address.to_string()),
                "{fqdn} did not resolve to {address}: {last}"
            );
        }

        // Teardown as a runtime does it: kill the task, then DEL; for pod-b its namespace
        // path now names no process.
        for ((node, libcni, containerd, _), (pod, netns)) in
            nodes.iter().zip([("pod-a", &a_netns), ("pod-b", &b_netns)])
        {
            containerd.remove_container(pod)?;
            ensure!(
                libcni
                    .ok("del", &network, netns, pod, "")?
                    .contains("DEL ok")
            );
            let leases = container_leases(&mesh.socket(node))?;
            ensure!(leases.is_empty(), "{node}: {leases:?}");
            let links = plugin_links(topo.ns(node))?;
            ensure!(links.is_empty(), "{node}: {links:?}");
        }
        if Path::new(&b_netns).exists() {
            bail!("{b_netns} still exists after its task was deleted");
        }
        Ok(())
    });
}
