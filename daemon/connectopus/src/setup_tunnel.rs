//! `connectopus setup-tunnel --config FILE --id NODE [--uid U --gid G] [--check]`: run as root
//! once, so that a node can then run as an ordinary user. For the node's own TUN device and each
//! of its `tun_devs`, it creates a persistent TUN device owned by the user and group, with the
//! address (the node's with the mesh prefix length, so the kernel routes the mesh subnet through
//! the device; a `tun_devs` address as a /128; with `global.subnet4` the IPv4 address too, the
//! node's with `subnet4`'s length, a `tun_devs` one as a /32), the node's MTU, and up. A node that finds its
//! devices so prepared opens them without any capability (see `tun::TunDevice::create`).
//!
//! `--check` changes nothing: it verifies each of those properties and exits non-zero at the
//! first mismatch, saying which.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// `IFF_PERSIST` in `/sys/class/net/<dev>/tun_flags`.
const IFF_PERSIST: u32 = 0x0800;

/// Arguments of `connectopus setup-tunnel`.
#[derive(Debug, clap::Args)]
pub struct SetupTunnelArgs {
    /// The mesh configuration.
    #[arg(long)]
    pub config: PathBuf,
    /// The node whose devices to create.
    #[arg(long)]
    pub id: String,
    /// The user who will run the node [default: $SUDO_UID, else the caller].
    #[arg(long)]
    pub uid: Option<u32>,
    /// Its group [default: $SUDO_GID, else the caller's group].
    #[arg(long)]
    pub gid: Option<u32>,
    /// Only verifies the devices; exits non-zero at the first mismatch.
    #[arg(long)]
    pub check: bool,
}

/// One device the node opens.
#[derive(Debug)]
struct Wanted {
    name: String,
    address: Ipv6Addr,
    prefix_len: u8,
    /// The IPv4 address and prefix length, with `global.subnet4`.
    address4: Option<(std::net::Ipv4Addr, u8)>,
    mtu: u16,
    /// The mesh subnet routed through it (the node's own device).
    route: Option<connectopus_config::Ipv6Net>,
    /// The IPv4 mesh subnet routed through it (the node's own device, with `address4`).
    route4: Option<connectopus_config::Ipv4Net>,
}

/// Runs the command.
///
/// # Errors
/// The configuration cannot be read, or a device cannot be made.
pub fn run(args: &SetupTunnelArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = connectopus_config::load(&args.config.display().to_string(), &bytes)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let node = config.node(&args.id).map_err(|d| anyhow::anyhow!("{d}"))?;
    let mtu = crate::daemon::node_mtu(&node.backends);
    let mut wanted = Vec::new();
    if let Some(name) = node.tun_name(&args.id) {
        wanted.push(Wanted {
            name,
            address: node.address,
            prefix_len: config.global.subnet.prefix_len(),
            address4: config
                .global
                .subnet4
                .zip(node.address4)
                .map(|(subnet4, a)| (a, subnet4.prefix_len())),
            mtu,
            route: Some(config.global.subnet),
            route4: config.global.subnet4.filter(|_| node.address4.is_some()),
        });
    }
    for dev in node.tun_devs.values() {
        wanted.push(Wanted {
            name: dev.device.clone(),
            address: dev.address,
            prefix_len: 128,
            address4: config.global.subnet4.and(dev.address4).map(|a| (a, 32)),
            mtu,
            route: None,
            route4: None,
        });
    }
    let id_of = |env: &str, own: fn() -> u32| {
        std::env::var(env)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(own)
    };
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    let uid = args
        .uid
        .unwrap_or_else(|| id_of("SUDO_UID", || unsafe { libc::getuid() }));
    // SAFETY: as above.
    let gid = args
        .gid
        .unwrap_or_else(|| id_of("SUDO_GID", || unsafe { libc::getgid() }));
    for w in &wanted {
        if args.check {
            if let Err(mismatch) = check(w, uid, gid) {
                println!("{}: {mismatch}", w.name);
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: ok", w.name);
        } else {
            create(w, uid, gid).with_context(|| format!("setting up {}", w.name))?;
            println!(
                "{}: persistent TUN device for uid {uid} gid {gid}, {}/{}, mtu {}",
                w.name, w.address, w.prefix_len, w.mtu
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(w: &Wanted, uid: u32, gid: u32) -> Result<()> {
    let device = tun_rs::DeviceBuilder::new()
        .name(&w.name)
        .inherit_enable_state()
        .build_sync()
        .context("opening or creating the TUN device (needs root or CAP_NET_ADMIN)")?;
    device.persist().context("making it persistent")?;
    // TUNSETOWNER and TUNSETGROUP take the id itself as the argument, not a pointer to it.
    tun_ioctl(&device, TUNSETOWNER, uid).context("setting its owner")?;
    tun_ioctl(&device, TUNSETGROUP, gid).context("setting its group")?;
    device.set_mtu(w.mtu).context("setting the MTU")?;
    if !has_address(&w.name, w.address, w.prefix_len) {
        device
            .add_address_v6(w.address, w.prefix_len)
            .context("adding the address")?;
    }
    if let Some((address4, len4)) = w.address4
        && !has_address4(&w.name, address4)
    {
        device
            .add_address_v4(address4, len4)
            .context("adding the IPv4 address")?;
    }
    device.enabled(true).context("bringing it up")?;
    Ok(())
}

/// `_IOW('T', 204, int)` and `_IOW('T', 206, int)` (linux/if_tun.h).
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

fn tun_ioctl(device: &tun_rs::SyncDevice, request: libc::c_ulong, value: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: both requests take an integer argument by value on a TUN descriptor we hold.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), request, libc::c_ulong::from(value)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn sys_value(dev: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/{key}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn parse_int(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Tells whether the interface `dev` holds the IPv4 address `address` (getifaddrs).
pub fn has_address4(dev: &str, address: std::net::Ipv4Addr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return false;
    }
    let mut found = false;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() != dev.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if u32::from_be(sin.sin_addr.s_addr) == u32::from(address) {
            found = true;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// Tells whether `/proc/net/if_inet6` lists `address/prefix_len` on `dev`.
pub fn has_address(dev: &str, address: Ipv6Addr, prefix_len: u8) -> bool {
    let hex: String = address
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let plen = format!("{prefix_len:02x}");
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|text| {
        text.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 6 && f[0] == hex && f[2] == plen && f[5] == dev
        })
    })
}

fn has_route(dev: &str, subnet: &connectopus_config::Ipv6Net) -> bool {
    let hex: String = subnet
        .network()
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let plen = format!("{:02x}", subnet.prefix_len());
    std::fs::read_to_string("/proc/net/ipv6_route").is_ok_and(|text| {
        text.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 10 && f[0] == hex && f[1] == plen && f[9] == dev
        })
    })
}

/// Returns the first property of the device that differs from what the node needs.
fn check(w: &Wanted, uid: u32, gid: u32) -> std::result::Result<(), String> {
    let Some(flags) = sys_value(&w.name, "tun_flags").and_then(|f| parse_int(&f)) else {
        return Err("no such TUN device".to_owned());
    };
    if flags & IFF_PERSIST == 0 {
        return Err("not persistent".to_owned());
    }
    let owner = sys_value(&w.name, "owner").and_then(|o| o.parse::<i64>().ok());
    if owner != Some(i64::from(uid)) {
        return Err(format!("owner is {owner:?}, not uid {uid}"));
    }
    let group = sys_value(&w.name, "group").and_then(|o| o.parse::<i64>().ok());
    if group != Some(i64::from(gid)) {
        return Err(format!("group is {group:?}, not gid {gid}"));
    }
    let mtu = sys_value(&w.name, "mtu").and_then(|m| m.parse::<u16>().ok());
    if mtu != Some(w.mtu) {
        return Err(format!("mtu is {mtu:?}, not {}", w.mtu));
    }
    let up = sys_value(&w.name, "flags")
        .and_then(|f| parse_int(&f))
        .is_some_and(|f| f & libc::IFF_UP as u32 != 0);
    if !up {
        return Err("down".to_owned());
    }
    if !has_address(&w.name, w.address, w.prefix_len) {
        return Err(format!("address {}/{} missing", w.address, w.prefix_len));
    }
    if let Some((address4, len4)) = w.address4
        && !has_address4(&w.name, address4)
    {
        return Err(format!("IPv4 address {address4}/{len4} missing"));
    }
    if let Some(subnet) = &w.route
        && !has_route(&w.name, subnet)
    {
        return Err(format!("no route to {subnet} through it"));
    }
    if let Some(subnet4) = &w.route4
        && !has_route4(&w.name, subnet4)
    {
        return Err(format!("no route to {subnet4} through it"));
    }
    Ok(())
}

/// Tells whether `/proc/net/route` routes `subnet` through `dev` (its destination and mask
/// are hex words in the kernel's byte order).
fn has_route4(dev: &str, subnet: &connectopus_config::Ipv4Net) -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|text| route4_listed(&text, dev, subnet))
}

fn route4_listed(table: &str, dev: &str, subnet: &connectopus_config::Ipv4Net) -> bool {
    let word = |bits: u32| format!("{:08X}", u32::from_be(bits));
    let destination = word(u32::from(subnet.network()));
    let mask = word(
        u32::MAX
            .checked_shl(32 - u32::from(subnet.prefix_len()))
            .unwrap_or(0),
    );
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8 && f[0] == dev && f[1] == destination && f[7] == mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_routes_are_read_in_the_kernels_byte_order() {
        // `ip route add 198.19.0.0/16 dev cx-foo` as /proc/net/route shows it on x86_64.
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     cx-foo\t000013C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let subnet: connectopus_config::Ipv4Net = "198.19.0.0/16".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert!(route4_listed(table, "cx-foo", &subnet));
        }
        assert!(!route4_listed(table, "cx-bar", &subnet));
        let other: connectopus_config::Ipv4Net = "198.19.0.0/24".parse().unwrap();
        assert!(!route4_listed(table, "cx-foo", &other));
    }

    #[test]
    fn sysfs_numbers_parse_in_hex_and_decimal() {
        assert_eq!(parse_int("0x1003"), Some(0x1003));
        assert_eq!(parse_int("1500"), Some(1500));
        assert_eq!(parse_int("x"), None);
    }

    #[test]
    fn a_missing_device_is_the_first_mismatch() {
        let w = Wanted {
            name: "cx-no-such-dev".to_owned(),
            address: Ipv6Addr::LOCALHOST,
            prefix_len: 128,
            address4: None,
            mtu: 1400,
            route: None,
            route4: None,
        };
        assert_eq!(check(&w, 0, 0), Err("no such TUN device".to_owned()));
    }

    #[test]
    fn ipv4_addresses_are_found_by_interface() {
        // Every network namespace's loopback holds 127.0.0.1 once it is up; a missing device
        // holds nothing.
        let lo_up = sys_value("lo", "flags")
            .and_then(|f| parse_int(&f))
            .is_some_and(|f| f & libc::IFF_UP as u32 != 0);
        if lo_up {
            assert!(has_address4("lo", std::net::Ipv4Addr::LOCALHOST));
        }
        assert!(!has_address4("lo", std::net::Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!has_address4("no-such-dev", std::net::Ipv4Addr::LOCALHOST));
    }
}
