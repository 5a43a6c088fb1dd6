//! The DHCPv6 prefix-delegation client (`connectopus-dhcp6`, driven by `connectopus
//! pd-client`, daemon/connectopus/src/pd.rs, over a real UDP socket on port 546) against real
//! servers in a router namespace: Kea 2.2 (`kea-dhcp6`) and ISC `dhcpd -6`.
//! docs/dynamic-mesh.md §2.6.
//!
//! Kea's PD pool holds exactly one /56, so a second client getting it proves that a Release
//! freed it. Timers are short (T1 2 s, T2 4 s, preferred 10 s, valid 14 s) so Renew, Rebind
//! and expiry happen within seconds.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_dhcp6::PdState;
use connectopus_tests::{
    ChildGuard, LinkKind, Mesh, MeshLink, NetNs, StdinMode, TestDir, Topology, Veth, dig, ping6,
    require_root, require_tools, run_ok, run_test, wait_until, workspace_binary,
};

const POOL: &str = "2001:db8:100::/56";
const WAIT: Duration = Duration::from_secs(30);

/// A router namespace with a bridge, and client namespaces joined to the bridge by veths, so
/// several clients share one link to the server.
struct Lan {
    rtr: NetNs,
    clients: Vec<(NetNs, String)>,
    _veths: Vec<Veth>,
}

fn lan(dir: &TestDir, clients: usize) -> Result<Lan> {
    let rtr = NetNs::new(dir, "rtr")?;
    // No DAD on the bridge: the server must not start while its link-local is tentative.
    rtr.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ])?;
    rtr.ip(&["link", "add", "br0", "type", "bridge"])?;
    let mut veths = Vec::new();
    let mut names = Vec::new();
    for i in 0..clients {
        let ns = NetNs::new(dir, &format!("client{i}"))?;
        let prefix = format!("2001:db8:{}::", 10 + i).parse()?;
        let veth = Veth::new(&rtr, &ns, prefix, None)?;
        rtr.ip(&["link", "set", &veth.a.ifname, "master", "br0"])?;
        names.push((ns, veth.b.ifname.clone()));
        veths.push(veth);
    }
    rtr.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "br0",
        "nodad",
    ])?;
    rtr.ip(&["link", "set", "br0", "up"])?;
    // Kea opens no socket on an interface that is not running yet (DHCPSRV_OPEN_SOCKET_FAIL
    // "the interface br0 is not running") and then never serves it.
    wait_until(WAIT, Duration::from_millis(20), || {
        let link = rtr
            .ip(&["-o", "link", "show", "dev", "br0"])
            .unwrap_or_default();
        let addrs = rtr
            .ip(&["-o", "-6", "addr", "show", "dev", "br0"])
            .unwrap_or_default();
        link.contains("state UP") && addrs.contains("fe80") && !addrs.contains("tentative")
    })
    .context("br0 did not come up")?;
    Ok(Lan {
        rtr,
        clients: names,
        _veths: veths,
    })
}

fn start_kea(rtr: &NetNs, dir: &TestDir) -> Result<ChildGuard> {
    start_kea_on(rtr, dir, "br0", "2001:db8:1::/64")
}

/// Kea serving the pool on `interface`, whose addresses lie in `subnet`.
fn start_kea_on(rtr: &NetNs, dir: &TestDir, interface: &str, subnet: &str) -> Result<ChildGuard> {
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

fn pd_client(ns: &NetNs, ifname: &str, state_file: &str, extra: &[&str]) -> Result<Command> {
    let bin = workspace_binary("connectopus")?;
    let state = ns.dir().join(state_file);
    let mut args = vec![
        "pd-client",
        "--interface",
        ifname,
        "--state",
        state.to_str().context("state path")?,
    ];
    args.extend_from_slice(extra);
    ns.command(bin.to_str().context("binary path")?, &args)
}

fn start_client(ns: &NetNs, ifname: &str, state_file: &str) -> Result<ChildGuard> {
    ns.spawn_with(
        pd_client(ns, ifname, state_file, &[])?,
        "pd-client",
        StdinMode::Null,
    )
}

/// `pd-client --release`: gives the saved delegation back; returns its output.
fn release(ns: &NetNs, ifname: &str, state_file: &str) -> Result<String> {
    run_ok(pd_client(ns, ifname, state_file, &["--release"])?, WAIT)
}

/// The DUID a client saved in its state file, as Kea writes it in its lease file (`00:01:…`).
fn duid_text(dir: &TestDir, file: &str) -> Result<String> {
    let state = PdState::decode(&std::fs::read(dir.join(file))?)?;
    Ok(state.duid.to_string())
}

/// Kea's memfile lines for the pool's prefix and `duid`: (valid lifetime, expire) each.
fn kea_lease_lines(dir: &TestDir, duid: &str) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("kea-leases6.csv")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("2001:db8:100::,") && l.contains(duid))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .collect()
}

fn lines_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(marker))
        .collect()
}

#[test]
fn kea_delegates_renews_resumes_releases_and_expires() {
    require_root!();
    require_tools(&["ip", "kea-dhcp6"]);
    run_test("kea_delegates_renews_resumes_releases_and_expires", |dir| {
        let lan = lan(dir, 2)?;
        let kea = start_kea(&lan.rtr, dir)?;
        let (ns_a, if_a) = &lan.clients[0];
        let (ns_b, if_b) = &lan.clients[1];

        // Solicit, Advertise, Request, Reply: the pool's only /56.
        let a = start_client(ns_a, if_a, "a.state")?;
        let bound = a.wait_for_output("bound ", WAIT)?;
        ensure!(
            bound.starts_with(&format!("bound {POOL} preferred=10 valid=14 t1=2 t2=4 ")),
            "{bound}"
        );
        let duid_a = duid_text(dir, "a.state")?;
        wait_until(WAIT, Duration::from_millis(50), || {
            !kea_lease_lines(dir, &duid_a).is_empty()
        })
        .context("Kea's lease file names our DUID and the prefix")?;

        // Renew at T1 extends it: Kea writes the lease again with a later expiry.
        let renewed = a.wait_for_output("renewed ", WAIT)?;
        ensure!(
            renewed.starts_with(&format!("renewed {POOL} ")),
            "{renewed}"
        );
        wait_until(WAIT, Duration::from_millis(50), || {
            let lines = kea_lease_lines(dir, &duid_a);
            lines.len() >= 2 && lines.windows(2).any(|w| w[1].1 > w[0].1)
        })
        .context("Kea extended the lease")?;

        // A restarts (stopped, no Release): the same DUID Rebinds the saved, still-valid
        // prefix.
        a.terminate()?;
        let lines_before = kea_lease_lines(dir, &duid_a).len();
        let a = start_client(ns_a, if_a, "a.state")?;
        let resumed = a.wait_for_output("resumed ", WAIT)?;
        ensure!(resumed == format!("resumed {POOL}"), "{resumed}");
        let rebound = a.wait_for_output("rebound ", WAIT)?;
        ensure!(
            rebound.starts_with(&format!("rebound {POOL} ")),
            "{rebound}"
        );
        ensure!(duid_text(dir, "a.state")? == duid_a, "the DUID survived");
        ensure!(
            lines_after(&a.stdout(), "resumed").contains(&"state rebinding")
                && !a.stdout().contains("state soliciting"),
            "{}",
            a.stdout()
        );
        wait_until(WAIT, Duration::from_millis(50), || {
            kea_lease_lines(dir, &duid_a).len() > lines_before
        })
        .context("Kea extended the same lease for the restarted client")?;

        // A second client is refused while A holds the only prefix.
        let b = start_client(ns_b, if_b, "b.state")?;
        let kea_log = || std::fs::read_to_string(dir.join("kea.log")).unwrap_or_default();
        wait_until(WAIT, Duration::from_millis(50), || {
            duid_text(dir, "b.state").is_ok_and(|duid_b| {
                kea_log().contains(&format!("ALLOC_ENGINE_V6_ALLOC_FAIL duid=[{duid_b}]"))
            })
        })
        .with_context(|| format!("Kea did not refuse the second client:\n{}", kea_log()))?;
        ensure!(!b.stdout().contains("bound "), "{}", b.stdout());
        b.terminate()?;

        // A stops and `pd-client --release` gives the saved prefix back to the saved server:
        // Kea's last line for A has valid lifetime 0, and B now gets the prefix.
        a.terminate()?;
        let out = release(ns_a, if_a, "a.state")?;
        ensure!(out.contains(&format!("resumed {POOL}")), "{out}");
        ensure!(out.lines().any(|l| l == "released"), "{out}");
        wait_until(WAIT, Duration::from_millis(50), || {
            kea_lease_lines(dir, &duid_a)
                .last()
                .is_some_and(|l| l.0 == 0)
        })
        .context("Kea freed A's lease")?;
        let saved = PdState::decode(&std::fs::read(dir.join("a.state"))?)?;
        ensure!(saved.delegations.is_empty(), "{saved:?}");

        let b = start_client(ns_b, if_b, "b.state")?;
        let bound_b = b.wait_for_output("bound ", WAIT)?;
        ensure!(bound_b.starts_with(&format!("bound {POOL} ")), "{bound_b}");
        let duid_b = duid_text(dir, "b.state")?;
        ensure!(duid_b != duid_a, "two clients, two DUIDs");
        ensure!(!kea_lease_lines(dir, &duid_b).is_empty());

        // The server goes away: Renew gets no answer, Rebind at T2, expiry at the valid
        // lifetime, then Solicit again.
        kea.terminate()?;
        let gone_at = b.stdout().lines().count();
        let expired = b.wait_for_output("expired ", WAIT)?;
        ensure!(expired == format!("expired {POOL}"), "{expired}");
        let out = b.stdout();
        let after: Vec<&str> = out.lines().skip(gone_at).collect();
        let pos = |what: &str| after.iter().position(|l| *l == what);
        let rebind = pos("state rebinding").context(format!("no Rebind: {after:?}"))?;
        let expiry = pos(&expired).context("expired line")?;
        ensure!(rebind < expiry, "Rebind before expiry: {after:?}");
        ensure!(
            lines_after(&out, &expired).contains(&"state soliciting"),
            "{out}"
        );
        Ok(())
    });
}

#[test]
fn isc_dhcpd_delegates_with_zero_timers_and_releases() {
    require_root!();
    require_tools(&["ip", "dhcpd"]);
    run_test("isc_dhcpd_delegates_with_zero_timers_and_releases", |dir| {
        let lan = lan(dir, 1)?;
        let conf = dir.join("dhcpd6.conf");
        // dhcpd sends T1 = T2 = 0: the client takes 0.5 and 0.8 of the preferred lifetime.
        std::fs::write(
            &conf,
            "default-lease-time 8;\npreferred-lifetime 6;\nmax-lease-time 8;\n\
             subnet6 2001:db8:1::/64 { prefix6 fd42:beef:100:: fd42:beef:100:: /56; }\n",
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
            "br0",
        ];
        let _dhcpd = lan.rtr.spawn("dhcpd", &args)?;
        let (ns, ifname) = &lan.clients[0];
        let c = start_client(ns, ifname, "c.state")?;
        let bound = c.wait_for_output("bound ", WAIT)?;
        ensure!(
            bound.starts_with("bound fd42:beef:100::/56 preferred=6 valid=8 t1=3 t2=4 "),
            "{bound}"
        );
        c.wait_for_output("renewed fd42:beef:100::/56", WAIT)?;
        let text = || std::fs::read_to_string(&leases).unwrap_or_default();
        ensure!(
            text().contains("iaprefix fd42:beef:100::/56")
                && text().contains("binding state active"),
            "{}",
            text()
        );
        c.terminate()?;
        let out = release(ns, ifname, "c.state")?;
        ensure!(out.lines().any(|l| l == "released"), "{out}");
        wait_until(WAIT, Duration::from_millis(50), || {
            text().contains("binding state released")
        })
        .with_context(|| format!("dhcpd did not record the release:\n{}", text()))?;
        Ok(())
    });
}

/// φ(node i) in the pool's /56 with `use` 0: the tests' subnet is fd00:cafe::/64, so node i's
/// mirror is 2001:db8:100::<i+1>.
fn mirror(i: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i + 1)
}

/// `addr`'s owner name under `ip6.arpa.`.
fn ptr_name(addr: std::net::Ipv6Addr) -> String {
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    let mut labels: Vec<String> = hex.chars().rev().map(String::from).collect();
    labels.push("ip6.arpa.".to_owned());
    labels.join(".")
}

/// The addresses on a namespace's links, one per line (`ip -6 -o addr`).
fn addresses(ns: &NetNs) -> String {
    ns.ip(&["-6", "-o", "addr", "show"]).unwrap_or_default()
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
        let rtr = NetNs::new(dir, "rtr")?;
        for ns in [&rtr, topo.ns("gw")] {
            ns.sysctls(&[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])?;
        }
        let up = Veth::new(&rtr, topo.ns("gw"), "2001:db8:20::".parse()?, None)?;
        wait_until(WAIT, Duration::from_millis(20), || {
            let addrs = rtr
                .ip(&["-o", "-6", "addr", "show", "dev", &up.a.ifname])
                .unwrap_or_default();
            addrs.contains("fe80") && !addrs.contains("tentative")
        })
        .context("the upstream link did not come up")?;
        let kea = start_kea_on(&rtr, dir, &up.a.ifname, "2001:db8:20::/64")?;

        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("b", "gw", LinkKind::DtlsPsk),
                MeshLink::new("c", "b", LinkKind::Tcp),
            ],
        )?;
        let config = std::fs::read_to_string(mesh.config_path())?;
        let delegated = format!(
            "global:\n  delegated:\n    - {{node: gw, interface: {}, length: 56}}\n",
            up.b.ifname
        );
        std::fs::write(
            mesh.config_path(),
            config.replacen("global:\n", &delegated, 1),
        )?;
        mesh.sign()?;
        mesh.start_all()?;
        mesh.wait_converged(WAIT)?;

        let nodes = ["gw", "b", "c"];
        let all_mirrored = |nodes: &[&str]| {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| addresses(topo.ns(n)).contains(&format!("{}/64", mirror(i as u16))))
        };
        wait_until(WAIT, Duration::from_millis(100), || all_mirrored(&nodes)).with_context(
            || {
                format!(
                    "not every node holds its mirror:\n{}",
                    nodes
                        .iter()
                        .map(|n| format!("{n}: {}", addresses(topo.ns(n))))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            },
        )?;
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
        ensure!(all_mirrored(&nodes), "a mirror went away across renewals");

        // gw restarts (no Release): the same DUID Rebinds the same prefix, and every node holds
        // its mirror again.
        mesh.stop("gw")?;
        mesh.start("gw")?;
        mesh.wait_converged(WAIT)?;
        wait_until(WAIT, Duration::from_millis(100), || all_mirrored(&nodes))
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
                nodes
                    .iter()
                    .map(|n| format!("{n}: {}", addresses(topo.ns(n))))
                    .collect::<Vec<_>>()
                    .join("\n")
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
        let rtr = NetNs::new(dir, "rtr")?;
        for ns in [&rtr, topo.ns("gw")] {
            ns.sysctls(&[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])?;
        }
        let up = Veth::new(&rtr, topo.ns("gw"), "2001:db8:20::".parse()?, None)?;
        wait_until(WAIT, Duration::from_millis(20), || {
            let addrs = rtr
                .ip(&["-o", "-6", "addr", "show", "dev", &up.a.ifname])
                .unwrap_or_default();
            addrs.contains("fe80") && addrs.contains("2001:db8:20:") && !addrs.contains("tentative")
        })
        .context("the upstream link did not come up")?;
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
        let config = std::fs::read_to_string(mesh.config_path())?;
        let delegated = format!(
            "global:\n  delegated:\n    - {{node: gw, interface: {}, length: 56}}\n",
            up.b.ifname
        );
        std::fs::write(
            mesh.config_path(),
            config.replacen("global:\n", &delegated, 1),
        )?;
        mesh.sign()?;
        mesh.start_all()?;
        mesh.wait_converged(WAIT)?;

        let nodes = ["gw", "b"];
        wait_until(WAIT, Duration::from_millis(100), || {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| addresses(topo.ns(n)).contains(&format!("{}/64", mirror(i as u16))))
        })
        .with_context(|| {
            format!(
                "not every node holds its mirror:\n{}\ndhcpd leases:\n{}",
                nodes
                    .iter()
                    .map(|n| format!("{n}: {}", addresses(topo.ns(n))))
                    .collect::<Vec<_>>()
                    .join("\n"),
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
