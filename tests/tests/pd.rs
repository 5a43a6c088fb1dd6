//! The DHCPv6 prefix-delegation client (`connectopus-dhcp6`, driven by `connectopus
//! pd-client`, daemon/connectopus/src/pd.rs, over a real UDP socket on port 546) against real
//! servers in a router namespace: Kea 2.2 (`kea-dhcp6`) and ISC `dhcpd -6`.
//! docs/dynamic-mesh.md §2.6. A mesh that takes its prefix from them: `pd_mesh.rs`.
//!
//! Kea's PD pool holds exactly one /56, so a second client getting it proves that a Release
//! freed it (`connectopus_tests::pd::start_kea_on` has the timers).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_dhcp6::PdState;
use connectopus_tests::pd::{DELEGATED_POOL as POOL, kea_lease_lines, start_kea_on};
use connectopus_tests::{
    ChildGuard, NetNs, StdinMode, TestDir, Veth, require_root, require_tools, run_ok, run_test,
    wait_until, workspace_binary,
};

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
