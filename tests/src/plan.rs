//! The address plan: which addresses tests may use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

/// Whether `addr` is an IPv6 address tests may put on a link or send to: unique local
/// (`fd00::/8`), documentation (`2001:db8::/32`), link-local (`fe80::/10`) or loopback.
pub fn allowed_v6(addr: Ipv6Addr) -> bool {
    let s = addr.segments();
    (s[0] & 0xff00) == 0xfd00
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xffc0) == 0xfe80
        || addr.is_loopback()
}

/// Whether `addr` is an IPv4 address tests may use: benchmarking space `198.18.0.0/15`, or
/// loopback. Never the RFC 1918 ranges nor public addresses.
pub fn allowed_v4(addr: Ipv4Addr) -> bool {
    let o = addr.octets();
    (o[0] == 198 && (o[1] & 0xfe) == 18) || addr.is_loopback()
}

/// Fails unless `addr` is within the address plan (see [`allowed_v6`], [`allowed_v4`]).
pub fn check_addr(addr: IpAddr) -> Result<()> {
    let ok = match addr {
        IpAddr::V6(a) => allowed_v6(a),
        IpAddr::V4(a) => allowed_v4(a),
    };
    if !ok {
        bail!(
            "{addr} is outside the test address plan (IPv6 fd00::/8 or 2001:db8::/32, \
             IPv4 198.18.0.0/15)"
        );
    }
    Ok(())
}

/// The address of host `host` in the /64 that `prefix` belongs to.
pub fn host_in_64(prefix: Ipv6Addr, host: u64) -> Ipv6Addr {
    let net = u128::from(prefix) & !u128::from(u64::MAX);
    Ipv6Addr::from(net | u128::from(host))
}

/// The address of host `host` in the /24 that `prefix` belongs to.
pub fn host_in_24(prefix: Ipv4Addr, host: u8) -> Ipv4Addr {
    let o = prefix.octets();
    Ipv4Addr::new(o[0], o[1], o[2], host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan() {
        for ok in ["fd00:cafe::1", "2001:db8:5::2", "fe80::1", "::1"] {
            assert!(allowed_v6(ok.parse().expect("literal")), "{ok}");
        }
        for bad in ["2001:db9::1", "fc00::1", "2606:4700::1111", "::"] {
            assert!(!allowed_v6(bad.parse().expect("literal")), "{bad}");
        }
        for ok in ["198.18.0.1", "198.19.255.254", "127.0.0.1"] {
            assert!(allowed_v4(ok.parse().expect("literal")), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "198.20.0.1",
            "8.8.8.8",
        ] {
            assert!(!allowed_v4(bad.parse().expect("literal")), "{bad}");
        }
        assert_eq!(
            host_in_64("2001:db8:3::77".parse().expect("literal"), 2),
            "2001:db8:3::2".parse::<Ipv6Addr>().expect("literal")
        );
    }
}
