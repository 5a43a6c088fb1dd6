//! The container's network: a veth pair from the node's namespace into the container's, the
//! container's address, the host route to it and the container's routes via `fe80::1`
//! (dynamic-mesh.md §3.2), taken down again, and checked.

use std::net::{IpAddr, Ipv6Addr};

use connectopus_netlink::{Error, Netlink, Netns, Route, VethSpec, read_sysctl, write_sysctl};

/// The host side's link-local address, the container's gateway.
pub const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The host side's name: `cx` and 8 hex digits of a hash (FNV-1a, 32 bits) of the container
/// id and the interface name, so DEL finds it without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("cx{hash:08x}")
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The host side's name ([`host_ifname`]).
    pub host_ifname: &'a str,
    /// The container side's name (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// The container's mesh address (a /128).
    pub address: Ipv6Addr,
    /// Its addresses in delegated planes (φ(address), dynamic-mesh.md §2), /128s too.
    pub mirrors: &'a [Ipv6Addr],
    /// The container's routes, all via [`GATEWAY`].
    pub routes: &'a [(Ipv6Addr, u8)],
    pub mtu: Option<u32>,
}

/// The two ends as they came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_mac: String,
    pub container_mac: String,
}

fn sysctl_in(netns: &Netns, key: &str, value: &str) -> Result<(), Error> {
    netns
        .run(|| write_sysctl(key, value))
        .and_then(|r| r)
        .map_err(|e| Error::from_io(format!("setting {key} to {value}"), e))
}

/// Sets the pair up (the address and its mirrors on both sides): `host` is the node's namespace, `container` the container's. On an
/// error the caller removes the host side ([`detach`]), which takes the rest along.
pub fn attach(host: &Netns, container: &Netns, plan: &Plan<'_>) -> Result<Attached, Error> {
    let mut h = Netlink::open_in(host)?;
    let mut c = Netlink::open_in(container)?;
    h.add_veth(&VethSpec {
        name: plan.host_ifname,
        peer: plan.ifname,
        mtu: plan.mtu,
        peer_netns: Some(container.raw_fd()),
    })?;
    // Addresses are added with nodad; accept_dad=0 also keeps the kernel's own link-local
    // addresses from waiting.
    sysctl_in(
        host,
        &format!("net/ipv6/conf/{}/accept_dad", plan.host_ifname),
        "0",
    )?;
    sysctl_in(
        container,
        &format!("net/ipv6/conf/{}/accept_dad", plan.ifname),
        "0",
    )?;
    h.add_address(plan.host_ifname, GATEWAY.into(), 64, true)?;
    h.set_up(plan.host_ifname)?;
    let host_link = h.link(plan.host_ifname)?;
    for address in std::iter::once(&plan.address).chain(plan.mirrors) {
        h.add_route(&Route::host((*address).into(), host_link.index))?;
    }
    // The node forwards between its TUN device and the veths.
    let forwarding = host
        .run(|| read_sysctl("net/ipv6/conf/all/forwarding"))
        .and_then(|r| r)
        .map_err(|e| Error::from_io("reading net.ipv6.conf.all.forwarding".into(), e))?;
    if forwarding == "0" {
        sysctl_in(host, "net/ipv6/conf/all/forwarding", "1")?;
    }

    c.set_up("lo")?;
    for address in std::iter::once(&plan.address).chain(plan.mirrors) {
        c.add_address(plan.ifname, (*address).into(), 128, true)?;
    }
    c.set_up(plan.ifname)?;
    let container_link = c.link(plan.ifname)?;
    for (destination, prefix_len) in plan.routes {
        c.add_route(
            &Route::via_device(IpAddr::V6(*destination), *prefix_len, container_link.index)
                .with_gateway(GATEWAY.into()),
        )?;
    }
    Ok(Attached {
        host_mac: host_link.mac_string(),
        container_mac: container_link.mac_string(),
    })
}

/// Removes the host side (its peer and the host route go with it); `Ok(false)` when there was
/// none.
pub fn detach(host: &Netns, host_ifname: &str) -> Result<bool, Error> {
    let mut h = Netlink::open_in(host)?;
    match h.delete_link(host_ifname) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// What CHECK looks at: the container's interface carries the address, the host side and
/// its route exist. The first thing missing, described.
pub fn verify(host: &Netns, container: &Netns, plan: &Plan<'_>) -> Result<(), String> {
    let describe = |e: Error| e.to_string();
    let mut c = Netlink::open_in(container).map_err(describe)?;
    let link = c
        .find_link(plan.ifname)
        .map_err(describe)?
        .ok_or_else(|| format!("the container has no interface `{}`", plan.ifname))?;
    let has_address = c
        .addresses()
        .map_err(describe)?
        .iter()
        .any(|a| a.index == link.index && a.address == IpAddr::V6(plan.address));
    if !has_address {
        return Err(format!(
            "`{}` in the container does not carry {}",
            plan.ifname, plan.address
        ));
    }
    let mut h = Netlink::open_in(host).map_err(describe)?;
    let host_link = h
        .find_link(plan.host_ifname)
        .map_err(describe)?
        .ok_or_else(|| format!("the host side `{}` is gone", plan.host_ifname))?;
    let routed = h.routes().map_err(describe)?.iter().any(|r| {
        r.destination == IpAddr::V6(plan.address)
            && r.prefix_len == 128
            && r.device == Some(host_link.index)
    });
    if !routed {
        return Err(format!(
            "no route to {}/128 through `{}`",
            plan.address, plan.host_ifname
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 10);
        assert!(a.starts_with("cx"));
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(a, host_ifname("0123456789abcdee", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    }
}
