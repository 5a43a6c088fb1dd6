//! `connectopus-netlink` against the kernel, in scratch namespaces: veth pairs (the peer made
//! in another namespace, or moved there by path and by descriptor), up, MTU, rename, delete;
//! addresses with and without `nodad`; routes through a device, via a gateway, host routes;
//! sysctls inside a namespace; and each operation's error, naming what it acted on. `ip -j`
//! is the independent witness of what the crate says it did, and a ping across a pair set up
//! only by the crate shows the result carries traffic.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_netlink::{
    Address, IFA_F_DEPRECATED, IFA_F_NODAD, LIFETIME_INFINITE, Netlink, Netns, Route, VethSpec,
};
use connectopus_tests::{
    NetNs, TestDir, poll_until, require_root, require_tools, run_test, wait_until,
};

fn netns(ns: &NetNs) -> Result<Netns> {
    Ok(Netns::open(&Path::new("/run/netns").join(ns.name()))?)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ip -j -n <ns> <args>` parsed.
fn ip_json(ns: &NetNs, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ns.ip(&full)?;
    serde_json::from_str(&out).with_context(|| format!("parsing `ip -j {args:?}`: {out}"))
}

fn ip_link_names(ns: &NetNs) -> Result<Vec<String>> {
    Ok(ip_json(ns, &["link", "show"])?
        .as_array()
        .context("ip link: not a list")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// The `addr_info` entries of link `name` per `ip -j addr`.
/// The entry of `ip -j address` for `local`.
fn entry_of(shown: &[serde_json::Value], local: &str) -> Result<serde_json::Value> {
    shown
        .iter()
        .find(|e| e["local"] == local)
        .cloned()
        .with_context(|| format!("ip does not show {local}: {shown:?}"))
}

fn ip_addrs(ns: &NetNs, name: &str) -> Result<Vec<serde_json::Value>> {
    let v = ip_json(ns, &["addr", "show", "dev", name])?;
    Ok(v[0]["addr_info"].as_array().cloned().unwrap_or_default())
}

fn addr_of(addrs: &[Address], address: IpAddr) -> Option<&Address> {
    addrs.iter().find(|a| a.address == address)
}

#[test]
fn veth_pair_up_mtu_rename_and_delete() {
    require_root!();
    require_tools(&["ip"]);
    run_test("netlink_veth", |dir| {
        let ns = NetNs::new(dir, "veth")?;
        let mut nl = Netlink::open_in(&netns(&ns)?)?;
        nl.add_veth(&VethSpec {
            name: "va",
            peer: "vb",
            mtu: Some(1400),
            peer_netns: None,
        })?;
        let links = nl.links()?;
        for name in ["va", "vb"] {
            let link = links
                .iter()
                .find(|l| l.name == name)
                .with_context(|| format!("{name} not listed: {links:?}"))?;
            ensure!(link.kind.as_deref() == Some("veth"), "{link:?}");
            ensure!(link.mtu == Some(1400), "{link:?}");
            ensure!(!link.is_up(), "{link:?}");
            ensure!(link.mac.len() == 6, "{link:?}");
        }
        // Not in the test's own namespace: the socket belongs to the scratch one.
        ensure!(Netlink::open()?.find_link("va")?.is_none());

        nl.set_mtu("va", 1280)?;
        nl.set_up("va")?;
        let shown = ip_json(&ns, &["link", "show", "va"])?;
        ensure!(shown[0]["mtu"] == 1280, "{shown}");
        let flags = shown[0]["flags"].to_string();
        ensure!(flags.contains("\"UP\""), "{shown}");
        ensure!(nl.link("va")?.is_up());
        let mac = nl.link("va")?.mac_string();
        ensure!(shown[0]["address"] == mac.as_str(), "{shown} vs {mac}");
        nl.set_down("va")?;
        ensure!(!nl.link("va")?.is_up());

        nl.rename("vb", "vc")?;
        ensure!(ip_link_names(&ns)?.contains(&"vc".to_owned()));
        ensure!(nl.find_link("vb")?.is_none());

        // A second pair with a taken name: EEXIST, and the message names both ends.
        let e = nl
            .add_veth(&VethSpec {
                name: "va",
                peer: "vd",
                mtu: None,
                peer_netns: None,
            })
            .unwrap_err();
        ensure!(e.is_exists(), "{e}");
        ensure!(e.to_string().contains("`va`/`vd`"), "{e}");
        let e = nl
            .add_veth(&VethSpec {
                name: "a-name-far-too-long",
                peer: "vd",
                mtu: None,
                peer_netns: None,
            })
            .unwrap_err();
        ensure!(e.to_string().contains("a-name-far-too-long"), "{e}");

        // Below the minimum MTU of a veth.
        let e = nl.set_mtu("va", 10).unwrap_err();
        ensure!(e.errno() == Some(libc::EINVAL), "{e}");
        ensure!(e.to_string().contains("`va`"), "{e}");

        // Deleting one end takes the other along; again, it is not found, naming the link.
        nl.delete_link("va")?;
        let names = ip_link_names(&ns)?;
        ensure!(!names.iter().any(|n| n == "va" || n == "vc"), "{names:?}");
        let e = nl.delete_link("va").unwrap_err();
        ensure!(e.is_not_found(), "{e}");
        ensure!(e.to_string().contains("`va`"), "{e}");
        let e = nl.set_up("nosuch0").unwrap_err();
        ensure!(
            e.is_not_found() && e.to_string().contains("`nosuch0`"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn veth_peer_made_in_and_moved_into_another_namespace() {
    require_root!();
    require_tools(&["ip", "sleep"]);
    run_test("netlink_netns", |dir| {
        let host = NetNs::new(dir, "host")?;
        let container = NetNs::new(dir, "ctr")?;
        let mut nl = Netlink::open_in(&netns(&host)?)?;

        // The peer is made straight in the container under a name the host has too.
        nl.add_veth(&VethSpec {
            name: "lo2",
            peer: "eth0",
            mtu: None,
            peer_netns: Some(netns(&container)?.raw_fd()),
        })?;
        nl.add_veth(&VethSpec {
            name: "eth0",
            peer: "h0",
            mtu: None,
            peer_netns: None,
        })?;
        let in_container = ip_link_names(&container)?;
        ensure!(
            in_container.contains(&"eth0".to_owned()),
            "{in_container:?}"
        );
        let in_host = ip_link_names(&host)?;
        ensure!(
            in_host.contains(&"lo2".to_owned()) && in_host.contains(&"eth0".to_owned()),
            "{in_host:?}"
        );

        // Moved by path (`/run/netns/…`), renamed on the way.
        nl.move_to_netns("h0", &netns(&container)?, Some("eth1"))?;
        ensure!(ip_link_names(&container)?.contains(&"eth1".to_owned()));
        ensure!(nl.find_link("h0")?.is_none());

        // Moved by descriptor: the namespace of a process living in it.
        let sleeper = container.spawn("sleep", &["600"])?;
        let pid = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            container.pids().ok()?.first().copied()
        })
        .context("sleep never entered the container")?;
        let by_pid = Netns::open(Path::new(&format!("/proc/{pid}/ns/net")))?;
        ensure!(by_pid.is_same(&netns(&container)?)?);
        ensure!(!by_pid.is_same(&netns(&host)?)?);
        nl.add_veth(&VethSpec {
            name: "m0",
            peer: "m1",
            mtu: None,
            peer_netns: None,
        })?;
        nl.move_to_netns("m1", &by_pid, None)?;
        drop(sleeper);
        ensure!(ip_link_names(&container)?.contains(&"m1".to_owned()));

        // A name taken in the target: the move fails and the link stays.
        nl.add_veth(&VethSpec {
            name: "n0",
            peer: "n1",
            mtu: None,
            peer_netns: None,
        })?;
        let e = nl
            .move_to_netns("n1", &netns(&container)?, Some("eth0"))
            .unwrap_err();
        ensure!(e.is_exists(), "{e}");
        ensure!(e.to_string().contains("`n1`"), "{e}");
        ensure!(nl.find_link("n1")?.is_some());

        // Not a network namespace.
        let e = Netns::open(Path::new("/proc/self/ns/mnt")).unwrap_err();
        ensure!(e.to_string().contains("not a network namespace"), "{e}");
        ensure!(Netns::open(Path::new("/run/netns/cx-no-such-namespace")).is_err());

        // Deleting the host end removes the peer inside the container.
        nl.delete_link("lo2")?;
        ensure!(!ip_link_names(&container)?.contains(&"eth0".to_owned()));
        Ok(())
    });
}

#[test]
fn addresses_with_and_without_nodad() {
    require_root!();
    require_tools(&["ip"]);
    run_test("netlink_addresses", |dir| {
        let ns = NetNs::new(dir, "addr")?;
        let handle = netns(&ns)?;
        let mut nl = Netlink::open_in(&handle)?;
        nl.add_veth(&VethSpec {
            name: "a0",
            peer: "a1",
            mtu: None,
            peer_netns: None,
        })?;
        // Duplicate address detection on for a0 (the scratch namespace turns it off), so
        // that `nodad` is what keeps the address from being tentative.
        handle.run(|| connectopus_netlink::write_sysctl("net/ipv6/conf/a0/accept_dad", "1"))??;
        let seen =
            handle.run(|| connectopus_netlink::read_sysctl("net/ipv6/conf/a0/accept_dad"))??;
        ensure!(seen == "1", "{seen}");
        ensure!(
            connectopus_netlink::read_sysctl("net/ipv6/conf/a0/accept_dad").is_err(),
            "a0 exists only in the scratch namespace"
        );
        nl.set_up("a1")?;
        nl.set_up("a0")?;

        let nodad = ip("fd00:cafe:0:e1::7");
        let dad = ip("fd00:cafe:0:e1::8");
        let v4 = ip("198.18.7.1");
        nl.add_address("a0", nodad, 128, true)?;
        nl.add_address("a0", dad, 64, false)?;
        nl.add_address("a0", v4, 24, true)?;

        let index = nl.link("a0")?.index;
        let addrs = nl.addresses()?;
        let a = addr_of(&addrs, nodad).context("nodad address not listed")?;
        ensure!(a.index == index && a.prefix_len == 128, "{a:?}");
        ensure!(a.flags & IFA_F_NODAD != 0, "{a:?}");
        ensure!(
            a.flags & connectopus_netlink::address::IFA_F_TENTATIVE == 0,
            "{a:?}"
        );
        let b = addr_of(&addrs, dad).context("dad address not listed")?;
        ensure!(b.flags & IFA_F_NODAD == 0 && b.prefix_len == 64, "{b:?}");
        let c = addr_of(&addrs, v4).context("IPv4 address not listed")?;
        ensure!(c.prefix_len == 24 && c.index == index, "{c:?}");

        // The witness: `ip` shows the same, and only the DAD address was ever tentative.
        let shown = ip_addrs(&ns, "a0")?;
        let entry = |addr: &str| shown.iter().find(|e| e["local"] == addr).cloned();
        let e = entry("fd00:cafe:0:e1::7").context("ip does not show the nodad address")?;
        ensure!(e["nodad"] == true && e["tentative"].is_null(), "{e}");
        ensure!(
            entry("198.18.7.1").is_some_and(|e| e["prefixlen"] == 24),
            "{shown:?}"
        );
        let e = entry("fd00:cafe:0:e1::8").context("ip does not show the DAD address")?;
        ensure!(e["nodad"].is_null(), "{e}");

        // Present already: EEXIST, naming address and link.
        let e = nl.add_address("a0", nodad, 128, true).unwrap_err();
        ensure!(e.is_exists(), "{e}");
        ensure!(
            e.to_string().contains("fd00:cafe:0:e1::7/128") && e.to_string().contains("`a0`"),
            "{e}"
        );
        // A missing link is named.
        let e = nl.add_address("nosuch0", nodad, 128, true).unwrap_err();
        ensure!(
            e.is_not_found() && e.to_string().contains("`nosuch0`"),
            "{e}"
        );
        let e = nl.add_address("a0", v4, 33, false).unwrap_err();
        ensure!(e.to_string().contains("33"), "{e}");

        // Deprecated (preferred lifetime 0, as a withdrawn mesh prefix's mirror) and back.
        nl.set_address_deprecated("a0", nodad, 128, true, true)?;
        let a = nl.addresses()?;
        let a = addr_of(&a, nodad).context("deprecated address not listed")?;
        ensure!(
            a.flags & IFA_F_DEPRECATED != 0 && a.preferred_secs == Some(0),
            "{a:?}"
        );
        ensure!(a.flags & IFA_F_NODAD != 0, "still nodad: {a:?}");
        let e = entry_of(&ip_addrs(&ns, "a0")?, "fd00:cafe:0:e1::7")?;
        ensure!(
            e["deprecated"] == true && e["preferred_life_time"] == 0,
            "ip shows it deprecated: {e}"
        );
        ensure!(
            e["valid_life_time"] == u64::from(u32::MAX),
            "valid forever: {e}"
        );
        nl.set_address_deprecated("a0", nodad, 128, true, false)?;
        let a = nl.addresses()?;
        let a = addr_of(&a, nodad).context("preferred address not listed")?;
        ensure!(
            a.flags & IFA_F_DEPRECATED == 0 && a.preferred_secs == Some(LIFETIME_INFINITE),
            "{a:?}"
        );
        let e = entry_of(&ip_addrs(&ns, "a0")?, "fd00:cafe:0:e1::7")?;
        ensure!(e["deprecated"].is_null(), "ip shows it preferred: {e}");
        // Absent: the kernel adds it, deprecated from the start.
        let absent = ip("fd00:cafe:0:e1::99");
        nl.set_address_deprecated("a0", absent, 128, true, true)?;
        let a = nl.addresses()?;
        let a = addr_of(&a, absent).context("absent address not added")?;
        ensure!(a.flags & IFA_F_DEPRECATED != 0, "{a:?}");
        nl.delete_address("a0", absent, 128)?;
        // A missing link is named.
        let e = nl
            .set_address_deprecated("nosuch0", absent, 128, true, true)
            .unwrap_err();
        ensure!(
            e.is_not_found() && e.to_string().contains("`nosuch0`"),
            "{e}"
        );

        nl.delete_address("a0", nodad, 128)?;
        nl.delete_address("a0", v4, 24)?;
        let addrs = nl.addresses()?;
        ensure!(addr_of(&addrs, nodad).is_none() && addr_of(&addrs, v4).is_none());
        ensure!(addr_of(&addrs, dad).is_some());
        ensure!(
            ip_addrs(&ns, "a0")?
                .iter()
                .all(|e| e["local"] != "fd00:cafe:0:e1::7")
        );
        let e = nl.delete_address("a0", nodad, 128).unwrap_err();
        ensure!(e.is_not_found(), "{e}");
        ensure!(e.to_string().contains("fd00:cafe:0:e1::7/128"), "{e}");
        Ok(())
    });
}

#[test]
fn routes_through_a_device_via_a_gateway_and_to_a_host() {
    require_root!();
    require_tools(&["ip"]);
    run_test("netlink_routes", |dir| {
        let ns = NetNs::new(dir, "route")?;
        let mut nl = Netlink::open_in(&netns(&ns)?)?;
        nl.add_veth(&VethSpec {
            name: "r0",
            peer: "r1",
            mtu: None,
            peer_netns: None,
        })?;
        nl.set_up("r1")?;
        nl.set_up("r0")?;
        nl.add_address("r0", ip("fd00:cafe:1::1"), 64, true)?;
        nl.add_address("r0", ip("198.18.4.1"), 24, false)?;
        let dev = nl.link("r0")?.index;

        let via6 = Route::via_device(ip("fd00:cafe:2::"), 48, dev).with_gateway(ip("fe80::1"));
        let host6 = Route::host(ip("fd00:cafe:3::7"), dev);
        let default6 = Route::via_device(ip("::"), 0, dev);
        let via4 = Route::via_device(ip("198.18.5.0"), 24, dev).with_gateway(ip("198.18.4.2"));
        let host4 = Route::host(ip("198.18.6.9"), dev).with_source(ip("198.18.4.1"));
        for route in [&via6, &host6, &default6, &via4, &host4] {
            nl.add_route(route)?;
        }
        let routes = nl.routes()?;
        let find = |want: &Route| {
            routes.iter().find(|r| {
                r.destination == want.destination
                    && r.prefix_len == want.prefix_len
                    && r.device == Some(dev)
                    && r.gateway == want.gateway
                    && r.table == 254
            })
        };
        for route in [&via6, &host6, &default6, &via4, &host4] {
            ensure!(find(route).is_some(), "{route:?} not in {routes:?}");
        }
        ensure!(find(&host4).unwrap().source == Some(ip("198.18.4.1")));

        // The witness.
        let shown = |family: &str, dst: &str| -> Result<serde_json::Value> {
            let all = ip_json(&ns, &[family, "route", "show"])?;
            all.as_array()
                .and_then(|routes| routes.iter().find(|r| r["dst"] == dst).cloned())
                .with_context(|| format!("ip does not show {dst}: {all}"))
        };
        let r = shown("-6", "fd00:cafe:2::/48")?;
        ensure!(r["gateway"] == "fe80::1" && r["dev"] == "r0", "{r}");
        ensure!(shown("-6", "fd00:cafe:3::7")?["dev"] == "r0");
        ensure!(shown("-6", "default")?["dev"] == "r0");
        let r = shown("-4", "198.18.5.0/24")?;
        ensure!(r["gateway"] == "198.18.4.2" && r["dev"] == "r0", "{r}");
        let r = shown("-4", "198.18.6.9")?;
        ensure!(
            r["dev"] == "r0" && r["scope"] == "link" && r["prefsrc"] == "198.18.4.1",
            "{r}"
        );

        // Errors: present already, an unreachable gateway, a missing device, families mixed.
        let e = nl.add_route(&host6).unwrap_err();
        ensure!(
            e.is_exists() && e.to_string().contains("fd00:cafe:3::7/128"),
            "{e}"
        );
        let far = Route::via_device(ip("198.18.8.0"), 24, dev).with_gateway(ip("198.18.9.9"));
        let e = nl.add_route(&far).unwrap_err();
        ensure!(e.errno() == Some(libc::ENETUNREACH), "{e}");
        let e = nl
            .add_route(&Route::host(ip("fd00:cafe:3::8"), 9999))
            .unwrap_err();
        ensure!(e.errno() == Some(libc::ENODEV), "{e}");
        let mixed = Route::host(ip("fd00:cafe:3::9"), dev).with_gateway(ip("198.18.4.2"));
        ensure!(nl.add_route(&mixed).is_err());

        for route in [&via6, &host6, &default6, &via4, &host4] {
            nl.delete_route(route)?;
        }
        let routes = nl.routes()?;
        for route in [&via6, &host6, &default6, &via4, &host4] {
            ensure!(
                !routes.iter().any(|r| r.destination == route.destination
                    && r.prefix_len == route.prefix_len
                    && r.table == 254),
                "{route:?} still in {routes:?}"
            );
        }
        let e = nl.delete_route(&host6).unwrap_err();
        ensure!(e.is_not_found(), "{e}");
        let e = nl.delete_route(&via4).unwrap_err();
        ensure!(
            e.is_not_found() && e.to_string().contains("198.18.5.0/24"),
            "{e}"
        );
        Ok(())
    });
}

/// What the CNI plugin will do, done only by the crate: a veth whose peer is made in the
/// container namespace, `/128` addresses with `nodad`, `fe80::1` on the host side, a host route
/// to the container and a mesh route via `fe80::1` inside it; then ping both ways.
#[test]
fn a_pair_set_up_by_the_crate_carries_traffic() {
    require_root!();
    require_tools(&["ip", "ping"]);
    run_test("netlink_ping", |dir| {
        let host = NetNs::new(dir, "host")?;
        let container = NetNs::new(dir, "ctr")?;
        let (host_ns, container_ns) = (netns(&host)?, netns(&container)?);
        let mut h = Netlink::open_in(&host_ns)?;
        let mut c = Netlink::open_in(&container_ns)?;
        h.add_veth(&VethSpec {
            name: "cx1a2b3c4d",
            peer: "eth0",
            mtu: Some(1400),
            peer_netns: Some(container_ns.raw_fd()),
        })?;
        let host_addr = ip("fd00:cafe::1");
        let container_addr = ip("fd00:cafe:0:e1::7");
        h.add_address("lo", host_addr, 128, true)?;
        h.add_address("cx1a2b3c4d", ip("fe80::1"), 64, true)?;
        h.set_up("cx1a2b3c4d")?;
        let host_dev = h.link("cx1a2b3c4d")?.index;
        h.add_route(&Route::host(container_addr, host_dev))?;

        c.add_address("eth0", container_addr, 128, true)?;
        c.set_up("eth0")?;
        let eth0 = c.link("eth0")?;
        ensure!(eth0.mtu == Some(1400), "{eth0:?}");
        c.add_route(
            &Route::via_device(ip("fd00:cafe::"), 48, eth0.index).with_gateway(ip("fe80::1")),
        )?;

        // Wait for the link-local address of eth0 (the host's replies go to it via the
        // neighbour it learns) and carrier on both ends.
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            c.link("eth0")
                .is_ok_and(|l| l.flags & connectopus_netlink::link::IFF_LOWER_UP != 0)
                && h.link("cx1a2b3c4d")
                    .is_ok_and(|l| l.flags & connectopus_netlink::link::IFF_LOWER_UP != 0)
        })
        .context("carrier on the pair")?;
        let ping = |ns: &NetNs, to: &str| -> Result<()> {
            let out = ns.exec("ping", &["-6", "-c", "1", "-W", "2", to])?;
            ensure!(
                out.status.success(),
                "ping {to} from {}: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stdout)
            );
            Ok(())
        };
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            ping(&container, "fd00:cafe::1").is_ok()
        })
        .context("the container never reached the host")?;
        ping(&container, "fd00:cafe::1")?;
        ping(&host, "fd00:cafe:0:e1::7")?;
        Ok(())
    });
}

#[test]
fn work_inside_a_namespace_stays_there() {
    require_root!();
    require_tools(&["ip"]);
    run_test("netlink_sysctl", |dir: &TestDir| {
        let ns = NetNs::new(dir, "sysctl")?;
        let handle = netns(&ns)?;
        let before = connectopus_netlink::read_sysctl("net/ipv6/conf/all/forwarding")?;
        handle.run(|| connectopus_netlink::write_sysctl("net/ipv6/conf/all/forwarding", "1"))??;
        ensure!(
            ns.exec_ok("cat", &["/proc/sys/net/ipv6/conf/all/forwarding"])?
                .trim()
                == "1"
        );
        // The calling thread and the test's namespace are untouched.
        ensure!(connectopus_netlink::read_sysctl("net/ipv6/conf/all/forwarding")? == before);
        ensure!(Netns::current()?.is_same(&Netns::open(Path::new("/proc/self/ns/net"))?)?);
        ensure!(!Netns::current()?.is_same(&handle)?);
        let e = connectopus_netlink::write_sysctl("net/../../etc/passwd", "x").unwrap_err();
        ensure!(e.to_string().contains("not a path"), "{e}");
        Ok(())
    });
}
