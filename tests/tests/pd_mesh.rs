//! A mesh whose prefix comes from DHCPv6 prefix delegation (docs/dynamic-mesh.md §2.6): the
//! node `gw` is delegated a /56 by Kea 2.2 or ISC `dhcpd -6` in a router namespace on its
//! upstream link, and every node takes an address (its mirror) in the plane
//! 2001:db8:100::/64. The client alone against the same servers: `pd.rs`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_dhcp6::PdState;
use connectopus_tests::pd::{
    Upstream, addresses, all_mirrored, delegate_to, describe_addresses, kea_lease_lines, mirror,
};
use connectopus_tests::{
    ChildGuard, LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, dig, ping6, require_root,
    require_tools, run_test, run_with_timeout, wait_until, workspace_binary,
};

const WAIT: Duration = Duration::from_secs(30);

/// The namespaces of `nodes`, in order (the `i`th takes mirror `i`).
fn namespaces<'t>(topo: &'t Topology, nodes: &[&str]) -> Vec<&'t NetNs> {
    nodes.iter().map(|n| topo.ns(n)).collect()
}

/// Each node's addresses, for an error message.
fn describe(topo: &Topology, nodes: &[&str]) -> String {
    let named: Vec<(&str, &NetNs)> = nodes.iter().map(|n| (*n, topo.ns(n))).collect();
    describe_addresses(&named)
}

/// `addr`'s owner name under `ip6.arpa.`.
fn ptr_name(addr: std::net::Ipv6Addr) -> String {
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    let mut labels: Vec<String> = hex.chars().rev().map(String::from).collect();
    labels.push("ip6.arpa.".to_owned());
    labels.join(".")
}

/// `ip -6 rule` lines of a namespace that name the pool.
fn pool_rules(ns: &NetNs) -> Vec<String> {
    ns.ip(&["-6", "rule", "show"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("2001:db8:100:"))
        .map(str::to_owned)
        .collect()
}

/// The gw—b mesh over DTLS with Kea delegating to gw: the router and Kea up, the mesh file
/// with gw's `delegated` entry (then changed by `edit`, and signed), both nodes started and
/// holding their mirrors. Also returns the mesh file as it was before the entry.
fn start_gw_b_delegated<'t>(
    dir: &TestDir,
    topo: &'t Topology,
    edit: impl FnOnce(String) -> String,
) -> Result<(Upstream, ChildGuard, Mesh<'t>, String)> {
    let upstream = Upstream::new(dir, topo.ns("gw"), false)?;
    let kea = upstream.start_kea(dir)?;
    let mut mesh = Mesh::configure(topo, &[MeshLink::new("b", "gw", LinkKind::DtlsPsk)])?;
    let undelegated = std::fs::read_to_string(mesh.config_path())?;
    delegate_to(&mesh, "gw", upstream.node_ifname(), false)?;
    let config = std::fs::read_to_string(mesh.config_path())?;
    std::fs::write(mesh.config_path(), edit(config))?;
    mesh.sign()?;
    mesh.start_all()?;
    mesh.wait_converged(WAIT)?;
    let nodes = ["gw", "b"];
    wait_until(WAIT, Duration::from_millis(100), || {
        all_mirrored(&namespaces(topo, &nodes))
    })
    .with_context(|| {
        format!(
            "not every node holds its mirror:\n{}",
            describe(topo, &nodes)
        )
    })?;
    Ok((upstream, kea, mesh, undelegated))
}

/// §2.5 "Egress" against Kea: `gw` delegates with `egress: true`. gw becomes a router
/// (forwarding on, `accept_ra` 2 on its upstream interface, `unreachable` for the delegated
/// /56); b and c route traffic from the plane into the mesh (source rules and a default route
/// in a table of their own). The router, told that the /56 is behind gw (as a Kea hook would),
/// pings c's mirror two mesh hops away, and c pings the router from its mirror. Once the
/// prefix expires, the rules and routes are gone.
#[test]
fn a_mesh_prefix_with_egress_is_reachable_from_outside_the_mesh() {
    require_root!();
    require_tools(&["ip", "ping", "kea-dhcp6"]);
    run_test("pd_egress", |dir| {
        let topo = Topology::line(dir, &["gw", "b", "c"])?;
        let upstream = Upstream::new(dir, topo.ns("gw"), false)?;
        let (rtr, up) = (&upstream.rtr, &upstream.link);
        let sysctl = |ns: &NetNs, key: &str| -> Result<String> {
            Ok(ns
                .exec_ok("cat", &[&format!("/proc/sys/net/ipv6/conf/{key}")])?
                .trim()
                .to_owned())
        };
        // A fresh namespace does not forward; the node must turn it on.
        ensure!(sysctl(topo.ns("gw"), "all/forwarding")? == "0");
        ensure!(sysctl(topo.ns("gw"), &format!("{}/accept_ra", up.b.ifname))? != "2");
        let kea = upstream.start_kea(dir)?;

        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("b", "gw", LinkKind::DtlsPsk),
                MeshLink::new("c", "b", LinkKind::Tcp),
            ],
        )?;
        delegate_to(&mesh, "gw", upstream.node_ifname(), true)?;
        mesh.start_all()?;
        mesh.wait_converged(WAIT)?;

        let nodes = ["gw", "b", "c"];
        wait_until(WAIT, Duration::from_millis(100), || {
            all_mirrored(&namespaces(&topo, &nodes))
        })
        .context("not every node holds its mirror")?;

        // gw is a router for the delegated prefix.
        ensure!(sysctl(topo.ns("gw"), "all/forwarding")? == "1");
        ensure!(sysctl(topo.ns("gw"), &format!("{}/accept_ra", up.b.ifname))? == "2");
        let unreachable = || {
            topo.ns("gw")
                .ip(&["-6", "route", "show", "type", "unreachable"])
                .unwrap_or_default()
        };
        ensure!(
            unreachable().contains("2001:db8:100::/56"),
            "gw's unreachable routes: {}",
            unreachable()
        );
        ensure!(pool_rules(topo.ns("gw")).is_empty(), "gw is the egress");
        // b and c send traffic from the plane into the mesh.
        for n in ["b", "c"] {
            let ns = topo.ns(n);
            wait_until(WAIT, Duration::from_millis(100), || {
                pool_rules(ns).len() == 2
            })
            .with_context(|| format!("{n}'s rules: {:?}", pool_rules(ns)))?;
            let rules = pool_rules(ns);
            ensure!(
                rules
                    .iter()
                    .any(|r| r
                        .contains("from 2001:db8:100::/64 lookup main suppress_prefixlength 0"))
                    && rules.iter().any(
                        |r| r.contains("from 2001:db8:100::/64 lookup ") && !r.contains("main")
                    ),
                "{n}'s rules: {rules:?}"
            );
            let table = rules
                .iter()
                .find(|r| !r.contains("main"))
                .and_then(|r| r.rsplit(' ').next())
                .context("the egress table")?
                .to_owned();
            let routes = ns.ip(&["-6", "route", "show", "table", &table])?;
            ensure!(
                routes.starts_with("default dev "),
                "{n}'s table {table}: {routes}"
            );
        }

        // The router learns the /56 is behind gw (what Kea's route hook would do), then pings
        // c's mirror two hops into the mesh, and c pings the router from its mirror.
        rtr.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:100::/56",
            "via",
            &up.b.v6.to_string(),
        ])?;
        let result = ping6(rtr, mirror(2), 3, 56, &[])?;
        ensure!(result.received > 0, "rtr → c's mirror: {result:?}");
        let from_mirror = mirror(2).to_string();
        let result = ping6(topo.ns("c"), up.a.v6, 3, 56, &["-I", &from_mirror])?;
        ensure!(result.received > 0, "c's mirror → rtr: {result:?}");
        // From its mesh address c has no way out: only the plane egresses.
        let stable = mesh.address("c").to_string();
        let result = ping6(topo.ns("c"), up.a.v6, 2, 56, &["-I", &stable])?;
        ensure!(result.received == 0, "c's mesh address → rtr: {result:?}");
        // An address in the /56 outside the plane is unreachable at gw, not sent back.
        let result = ping6(rtr, "2001:db8:100:ff::1".parse()?, 2, 56, &[])?;
        ensure!(result.received == 0, "{result:?}");

        // A node that stops takes its rules along; started again, it puts them back.
        mesh.stop("b")?;
        ensure!(
            pool_rules(topo.ns("b")).is_empty(),
            "b kept its rules after stopping: {:?}",
            pool_rules(topo.ns("b"))
        );
        mesh.start("b")?;
        mesh.wait_converged(WAIT)?;
        wait_until(WAIT, Duration::from_millis(100), || {
            pool_rules(topo.ns("b")).len() == 2
        })
        .with_context(|| {
            format!(
                "b's rules after its restart: {:?}",
                pool_rules(topo.ns("b"))
            )
        })?;
        let result = ping6(rtr, mirror(2), 3, 56, &[])?;
        ensure!(
            result.received > 0,
            "rtr → c's mirror after b's restart: {result:?}"
        );

        // Kea stops; past the valid lifetime (14 s) the plane goes, and with it the rules, the
        // egress default routes and gw's unreachable route.
        kea.terminate()?;
        wait_until(WAIT, Duration::from_millis(100), || {
            nodes
                .iter()
                .all(|n| !addresses(topo.ns(n)).contains("2001:db8:100:"))
        })
        .context("mirrors left after the valid lifetime")?;
        wait_until(WAIT, Duration::from_millis(100), || {
            nodes.iter().all(|n| pool_rules(topo.ns(n)).is_empty())
                && !unreachable().contains("2001:db8:100::/56")
        })
        .with_context(|| {
            format!(
                "rules or routes left: {:?} {:?} {}",
                pool_rules(topo.ns("b")),
                pool_rules(topo.ns("c")),
                unreachable()
            )
        })?;
        for n in ["b", "c"] {
            let all = topo.ns(n).ip(&["-6", "route", "show", "table", "all"])?;
            ensure!(
                !all.lines()
                    .any(|l| l.starts_with("default dev ") && l.contains("table ")),
                "{n} kept an egress default route: {all}"
            );
        }
        Ok(())
    });
}

/// §2.6 steps 2 to 5: a three-node mesh whose `gw` is delegated Kea's /56 on its upstream
/// link; every node puts its mirror on its TUN device within the wait, pings cross the mesh
/// between mirror addresses, Renew keeps the prefix, a restarted `gw` comes back with the
/// same DUID and prefix, and once Kea is gone past the valid lifetime every node withdraws it.
#[test]
fn a_mesh_takes_keas_prefix_and_nodes_answer_at_their_mirrors() {
    require_root!();
    require_tools(&["ip", "ping", "kea-dhcp6"]);
    run_test("pd_mesh", |dir| {
        let topo = Topology::line(dir, &["gw", "b", "c"])?;
        let upstream = Upstream::new(dir, topo.ns("gw"), false)?;
        let kea = upstream.start_kea(dir)?;

        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("b", "gw", LinkKind::DtlsPsk),
                MeshLink::new("c", "b", LinkKind::Tcp),
            ],
        )?;
        delegate_to(&mesh, "gw", upstream.node_ifname(), false)?;
        mesh.start_all()?;
        mesh.wait_converged(WAIT)?;

        let nodes = ["gw", "b", "c"];
        wait_until(WAIT, Duration::from_millis(100), || {
            all_mirrored(&namespaces(&topo, &nodes))
        })
        .with_context(|| {
            format!(
                "not every node holds its mirror:\n{}",
                describe(&topo, &nodes)
            )
        })?;
        // `status` and the metrics name the plane on every node, with its mirror and origin.
        for (i, n) in nodes.iter().enumerate() {
            let status = mesh.status(n)?;
            let plane = &status["mesh_prefixes"][0];
            ensure!(
                plane["prefix"] == "2001:db8:100::/64"
                    && plane["delegated"] == "2001:db8:100::/56"
                    && plane["origin_name"] == "gw"
                    && plane["state"] == "active"
                    && plane["mirror"] == mirror(i as u16).to_string(),
                "{n}'s status: {}",
                status["mesh_prefixes"]
            );
            let text = mesh.status_text(n)?;
            ensure!(
                text.contains(
                    "mesh prefix 2001:db8:100::/64 from gw (delegated 2001:db8:100::/56), active"
                ),
                "{n}'s status text: {text}"
            );
        }
        // DNS answers in the plane too: c's name has its mirror beside its mesh address at
        // b's server, and the mirror's PTR (in the plane's own reverse zone) names c.
        let at_b = std::net::IpAddr::V6(mesh.address("b"));
        let aaaa_of_c = |ns: &NetNs| -> Result<Vec<String>> {
            let r = dig(ns, at_b, "c.connectopus.test", "AAAA", false)?;
            Ok(r.answers.iter().map(|a| a.data.clone()).collect())
        };
        wait_until(WAIT, Duration::from_millis(100), || {
            aaaa_of_c(topo.ns("c")).is_ok_and(|a| a.contains(&mirror(2).to_string()))
        })
        .with_context(|| format!("c's AAAA at b: {:?}", aaaa_of_c(topo.ns("c"))))?;
        ensure!(
            aaaa_of_c(topo.ns("c"))?.contains(&mesh.address("c").to_string()),
            "c's mesh address is still answered"
        );
        let ptr = dig(topo.ns("c"), at_b, &ptr_name(mirror(2)), "PTR", false)?;
        ensure!(
            ptr.aa() && ptr.answers.iter().any(|a| a.data == "c.connectopus.test."),
            "PTR of c's mirror at b: {ptr:?}"
        );
        let state = format!("{}.dhcp6", mesh.node_config_path("gw").display());
        let duid = PdState::decode(&std::fs::read(&state)?)?.duid.to_string();
        ensure!(
            !kea_lease_lines(dir, &duid).is_empty(),
            "Kea's lease file names gw's DUID and the prefix"
        );

        // Across the mesh on mirror addresses: c → gw (two hops), gw → c, b → c.
        for (from, to) in [("c", 0), ("gw", 2), ("b", 2), ("c", 1)] {
            let result = ping6(topo.ns(from), mirror(to), 3, 56, &[])?;
            ensure!(result.received > 0, "{from} → {}: {result:?}", mirror(to));
        }

        // Renew at T1 (2 s) keeps the prefix: Kea extends the lease, the mirrors stay.
        let lines = kea_lease_lines(dir, &duid).len();
        wait_until(WAIT, Duration::from_millis(100), || {
            kea_lease_lines(dir, &duid).len() >= lines + 2
        })
        .context("Kea did not see gw renew")?;
        ensure!(
            all_mirrored(&namespaces(&topo, &nodes)),
            "a mirror went away across renewals"
        );

        // gw restarts (no Release): the same DUID Rebinds the same prefix, and every node holds
        // its mirror again.
        mesh.stop("gw")?;
        mesh.start("gw")?;
        mesh.wait_converged(WAIT)?;
        wait_until(WAIT, Duration::from_millis(100), || {
            all_mirrored(&namespaces(&topo, &nodes))
        })
        .context("mirrors after gw's restart")?;
        let after = PdState::decode(&std::fs::read(&state)?)?;
        // The restarted gw advertises its saved prefix from its first update (and Rebinds it
        // within milliseconds here): no node took its mirror off in between.
        for n in nodes {
            let log = std::fs::read_to_string(dir.join(format!("{n}.{n}.stderr")))?;
            ensure!(
                !log.contains("mirror address removed"),
                "{n} withdrew its mirror across gw's restart"
            );
        }
        ensure!(
            after.duid.to_string() == duid,
            "the DUID changed across the restart"
        );
        let result = ping6(topo.ns("c"), mirror(0), 3, 56, &[])?;
        ensure!(result.received > 0, "c → gw after the restart: {result:?}");

        // Kea stops: gw Rebinds in vain; at the preferred lifetime's end (10 s) every node
        // deprecates its mirror (preferred_lft 0: kept for existing connections, not chosen as
        // a source), and when the valid lifetime (14 s) ends it takes it off.
        kea.terminate()?;
        let deprecated = |i: usize, n: &str| {
            addresses(topo.ns(n)).lines().any(|l| {
                l.contains(&format!("{}/64", mirror(i as u16))) && l.contains("deprecated")
            })
        };
        wait_until(WAIT, Duration::from_millis(100), || {
            nodes.iter().enumerate().all(|(i, n)| deprecated(i, n))
        })
        .with_context(|| {
            format!(
                "not every mirror deprecated at the preferred lifetime's end:\n{}",
                describe(&topo, &nodes)
            )
        })?;
        // A deprecated plane is no longer handed to new clients by DNS.
        let a = aaaa_of_c(topo.ns("c"))?;
        ensure!(
            !a.contains(&mirror(2).to_string()) && a.contains(&mesh.address("c").to_string()),
            "c's AAAA at b once the plane is deprecated: {a:?}"
        );
        let none_mirrored = || {
            nodes
                .iter()
                .all(|n| !addresses(topo.ns(n)).contains("2001:db8:100:"))
        };
        wait_until(WAIT, Duration::from_millis(100), none_mirrored)
            .context("mirrors left after the valid lifetime")?;
        let route = topo
            .ns("c")
            .ip(&["-6", "route", "get", &mirror(0).to_string()]);
        ensure!(
            route.is_err(),
            "c still routes gw's withdrawn mirror: {route:?}"
        );
        Ok(())
    });
}

/// §2.6 step 6: the first step against ISC `dhcpd -6` instead of Kea — the mesh gw–b takes
/// the /56 that dhcpd delegates to gw (its T1 = T2 = 0 answer), every node puts its mirror on
/// its TUN device, b pings gw at its mirror, and DNS answers in the plane.
#[test]
fn a_mesh_takes_dhcpds_prefix_and_nodes_answer_at_their_mirrors() {
    require_root!();
    require_tools(&["ip", "ping", "dhcpd", "dig"]);
    run_test("pd_mesh_dhcpd", |dir| {
        let topo = Topology::line(dir, &["gw", "b"])?;
        let upstream = Upstream::new(dir, topo.ns("gw"), true)?;
        let (rtr, up) = (&upstream.rtr, &upstream.link);
        let conf = dir.join("dhcpd6.conf");
        std::fs::write(
            &conf,
            "default-lease-time 60;\npreferred-lifetime 40;\nmax-lease-time 60;\n\
             subnet6 2001:db8:20::/64 { prefix6 2001:db8:100:: 2001:db8:100:: /56; }\n",
        )?;
        let leases = dir.join("dhcpd6.leases");
        std::fs::write(&leases, "")?;
        let pid = dir.join("dhcpd6.pid");
        let args = [
            "-6",
            "-f",
            "-d",
            "-cf",
            conf.to_str().context("path")?,
            "-lf",
            leases.to_str().context("path")?,
            "-pf",
            pid.to_str().context("path")?,
            up.a.ifname.as_str(),
        ];
        let _dhcpd = rtr.spawn("dhcpd", &args)?;

        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("b", "gw", LinkKind::DtlsPsk)])?;
        delegate_to(&mesh, "gw", upstream.node_ifname(), false)?;
        mesh.start_all()?;
        mesh.wait_converged(WAIT)?;

        let nodes = ["gw", "b"];
        wait_until(WAIT, Duration::from_millis(100), || {
            all_mirrored(&namespaces(&topo, &nodes))
        })
        .with_context(|| {
            format!(
                "not every node holds its mirror:\n{}\ndhcpd leases:\n{}",
                describe(&topo, &nodes),
                std::fs::read_to_string(&leases).unwrap_or_default()
            )
        })?;
        let text = std::fs::read_to_string(&leases)?;
        ensure!(
            text.contains("iaprefix 2001:db8:100::/56") && text.contains("binding state active"),
            "dhcpd's lease file: {text}"
        );
        let status = mesh.status("b")?;
        ensure!(
            status["mesh_prefixes"][0]["delegated"] == "2001:db8:100::/56"
                && status["mesh_prefixes"][0]["origin_name"] == "gw",
            "b's status: {}",
            status["mesh_prefixes"]
        );
        let result = ping6(topo.ns("b"), mirror(0), 3, 56, &[])?;
        ensure!(result.received > 0, "b → gw's mirror: {result:?}");
        let at_gw = std::net::IpAddr::V6(mesh.address("gw"));
        let answer = dig(topo.ns("b"), at_gw, "b.connectopus.test", "AAAA", false)?;
        ensure!(
            answer
                .answers
                .iter()
                .any(|a| a.data == mirror(1).to_string()),
            "b's AAAA at gw: {answer:?}"
        );
        Ok(())
    });
}

/// The delegating node with its DNS server off (so no other need keeps it able to bind a port
/// below 1024) goes on renewing after a configuration change that restarts its mesh instance:
/// the re-executed node, already confined, binds the DHCPv6 client's port 546 again. Without
/// that capability the restarted client could not open its socket, Kea would hear no more
/// Renews from gw's DUID, and the planes would go at the valid lifetime's end.
#[test]
fn a_delegating_node_without_dns_renews_across_an_instance_restart() {
    require_root!();
    require_tools(&["ip", "ping", "kea-dhcp6"]);
    run_test("pd_restart_nodns", |dir| {
        let topo = Topology::line(dir, &["gw", "b"])?;
        let (_upstream, _kea, mesh, _) = start_gw_b_delegated(dir, &topo, |config| {
            config.replacen("  gw:\n", "  gw:\n    dns: {disable: true}\n", 1)
        })?;
        ensure!(
            std::fs::read_to_string(mesh.config_path())?.contains("dns: {disable: true}"),
            "gw's DNS is not off"
        );
        let nodes = ["gw", "b"];
        let state = format!("{}.dhcp6", mesh.node_config_path("gw").display());
        let duid = PdState::decode(&std::fs::read(&state)?)?.duid.to_string();

        // A global change (a timer) restarts gw's mesh instance: the process re-executes itself.
        let original = std::fs::read_to_string(mesh.config_path())?;
        let v2 = dir.join("v2.yml");
        std::fs::write(
            &v2,
            original
                .replace("  version: 1\n", "  version: 2\n")
                .replace("dead_interval: 7s", "dead_interval: 8s"),
        )?;
        connectopus_tests::ssh_sign(&v2, mesh.admin_key(), "connectopus")?;
        let (ok, out) = mesh.config_set("gw", &v2)?;
        ensure!(ok, "gw refused v2: {out}");
        wait_until(WAIT, Duration::from_millis(200), || {
            nodes
                .iter()
                .all(|n| mesh.config_version(n).is_ok_and(|v| v == 2))
        })
        .context("v2 did not reach every node")?;
        let log = || std::fs::read_to_string(dir.join("gw.gw.stderr")).unwrap_or_default();
        wait_until(WAIT, Duration::from_millis(100), || {
            log().contains("the change needs a restart of the mesh instance")
        })
        .context("gw did not restart its mesh instance")?;
        mesh.wait_converged(WAIT)?;

        // Kea hears Renews from the restarted client (T1 is 2 s), and every node still holds
        // its mirror.
        let lines = kea_lease_lines(dir, &duid).len();
        wait_until(WAIT, Duration::from_millis(200), || {
            kea_lease_lines(dir, &duid).len() >= lines + 3
        })
        .with_context(|| {
            let text = log();
            let warnings: Vec<&str> = text.lines().filter(|l| l.contains("dhcp6")).collect();
            format!("Kea heard no Renew from the restarted gw; its dhcp6 log lines: {warnings:?}")
        })?;
        ensure!(
            all_mirrored(&namespaces(&topo, &nodes)),
            "a mirror went away after the restart:\n{}",
            describe(&topo, &nodes)
        );
        let result = ping6(topo.ns("b"), mirror(0), 3, 56, &[])?;
        ensure!(result.received > 0, "b → gw's mirror: {result:?}");
        Ok(())
    });
}

/// `connectopus pd release` on the running delegating node: gw sends Kea a Release (Kea's
/// lease line for gw's DUID drops to lifetime 0) and answers with the prefix it gave back;
/// every node takes its mirror off well before the lease could expire, and the node's
/// client stays idle (a second release has nothing to give back). A node that delegates
/// nothing refuses the command, naming why.
#[test]
fn pd_release_gives_the_prefix_back_and_the_mesh_withdraws_it() {
    require_root!();
    require_tools(&["ip", "kea-dhcp6"]);
    run_test("pd_release_live", |dir| {
        let topo = Topology::line(dir, &["gw", "b"])?;
        let (_upstream, _kea, mesh, _) = start_gw_b_delegated(dir, &topo, |config| config)?;
        let nodes = ["gw", "b"];
        let state = format!("{}.dhcp6", mesh.node_config_path("gw").display());
        let duid = PdState::decode(&std::fs::read(&state)?)?.duid.to_string();
        ensure!(
            kea_lease_lines(dir, &duid)
                .last()
                .is_some_and(|(valid, _)| *valid > 0),
            "Kea holds no lease for gw"
        );

        let release = |node: &str| -> Result<std::process::Output> {
            let mut command = std::process::Command::new(workspace_binary("connectopus")?);
            command
                .args(["pd", "release", "--socket"])
                .arg(mesh.socket(node));
            run_with_timeout(command, Duration::from_secs(60))
        };
        let out = release("gw")?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success() && said.contains("released 2001:db8:100::/56"),
            "pd release: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(WAIT, Duration::from_millis(100), || {
            kea_lease_lines(dir, &duid)
                .last()
                .is_some_and(|(valid, _)| *valid == 0)
        })
        .with_context(|| {
            format!(
                "Kea did not record the release: {:?}",
                kea_lease_lines(dir, &duid)
            )
        })?;
        // Within 6 s: gw renewed at most T1 (2 s) before, so an expiry would take 12 s more.
        wait_until(Duration::from_secs(6), Duration::from_millis(100), || {
            nodes
                .iter()
                .all(|n| !addresses(topo.ns(n)).contains("2001:db8:100:"))
        })
        .with_context(|| {
            format!(
                "mirrors left after the release:\n{}",
                describe(&topo, &nodes)
            )
        })?;
        let status = mesh.status("b")?;
        ensure!(
            status["mesh_prefixes"]
                .as_array()
                .is_none_or(|planes| planes.is_empty()),
            "b still has planes: {}",
            status["mesh_prefixes"]
        );

        let again = release("gw")?;
        let said = String::from_utf8_lossy(&again.stdout).into_owned();
        ensure!(
            again.status.success() && said.contains("nothing to release"),
            "a second pd release: {said}"
        );
        let refused = release("b")?;
        let error = String::from_utf8_lossy(&refused.stderr).into_owned();
        ensure!(
            !refused.status.success() && error.contains("no DHCPv6 prefix delegation client"),
            "pd release on b: {error}"
        );
        Ok(())
    });
}

/// A configuration change that removes gw's `global.delegated` entry makes gw Release the
/// prefix before it restarts its mesh instance: Kea logs the release for gw's DUID and its
/// lease line drops to lifetime 0 (an expiry would not: the node would simply stop
/// renewing), and every node takes its mirror off.
#[test]
fn removing_the_delegated_entry_releases_the_prefix() {
    require_root!();
    require_tools(&["ip", "kea-dhcp6"]);
    run_test("pd_entry_removed", |dir| {
        let topo = Topology::line(dir, &["gw", "b"])?;
        let (_upstream, _kea, mesh, undelegated) =
            start_gw_b_delegated(dir, &topo, |config| config)?;
        let nodes = ["gw", "b"];
        let state = format!("{}.dhcp6", mesh.node_config_path("gw").display());
        let duid = PdState::decode(&std::fs::read(&state)?)?.duid.to_string();
        let kea_log = || std::fs::read_to_string(dir.join("kea.log")).unwrap_or_default();
        ensure!(!kea_log().contains("DHCP6_RELEASE_PD"), "released already");

        let v2 = dir.join("v2.yml");
        std::fs::write(&v2, undelegated.replace("  version: 1\n", "  version: 2\n"))?;
        connectopus_tests::ssh_sign(&v2, mesh.admin_key(), "connectopus")?;
        let (ok, out) = mesh.config_set("gw", &v2)?;
        ensure!(ok, "gw refused v2: {out}");
        wait_until(WAIT, Duration::from_millis(200), || {
            nodes
                .iter()
                .all(|n| mesh.config_version(n).is_ok_and(|v| v == 2))
        })
        .context("v2 did not reach every node")?;
        wait_until(WAIT, Duration::from_millis(100), || {
            kea_log()
                .lines()
                .any(|l| l.contains("DHCP6_RELEASE_PD") && l.contains("2001:db8:100::"))
        })
        .with_context(|| format!("Kea logged no release of the prefix:\n{}", kea_log()))?;
        ensure!(
            kea_lease_lines(dir, &duid)
                .last()
                .is_some_and(|(valid, _)| *valid == 0),
            "Kea's lease lines for gw: {:?}",
            kea_lease_lines(dir, &duid)
        );
        wait_until(WAIT, Duration::from_millis(100), || {
            nodes
                .iter()
                .all(|n| !addresses(topo.ns(n)).contains("2001:db8:100:"))
        })
        .with_context(|| {
            format!(
                "mirrors left after the release:\n{}",
                describe(&topo, &nodes)
            )
        })?;
        Ok(())
    });
}
