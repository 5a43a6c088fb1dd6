//! Addresses (`RTM_*ADDR`, `struct ifaddrmsg`): the requests that add and delete an IPv6 or
//! IPv4 address, and the parser of the kernel's address messages. No I/O here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, ParseError, Request,
    attr_string, attr_u32, attributes,
};

pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;

/// A lifetime of `IFA_CACHEINFO` that never ends ("forever").
pub const LIFETIME_INFINITE: u32 = u32::MAX;

/// No duplicate address detection: the address is usable at once (never "tentative").
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
/// The preferred lifetime is over: kept for existing connections, not chosen as a source.
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

const IFADDRMSG_LEN: usize = 8;

/// The address family number of `ip`.
pub fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The bytes of `ip` as netlink carries them.
pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Reads an address of `family` from attribute bytes.
pub fn parse_ip(family: u8, data: &[u8], what: &'static str) -> Result<IpAddr, ParseError> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data)
            .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
            .map_err(|_| ParseError::BadLength(what)),
        AF_INET6 => <[u8; 16]>::try_from(data)
            .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
            .map_err(|_| ParseError::BadLength(what)),
        _ => Err(ParseError::BadLength(what)),
    }
}

/// An address on a link, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The link's index.
    pub index: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `IFA_F_*` flags (from `IFA_FLAGS` when present, which holds all 32 bits).
    pub flags: u32,
    /// `rt_scope_t`: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// IPv4 only: the label (`eth0:1`).
    pub label: Option<String>,
    /// Seconds of preferred lifetime left ([`LIFETIME_INFINITE`]: forever), from
    /// `IFA_CACHEINFO` when the kernel sent it.
    pub preferred_secs: Option<u32>,
}

impl Address {
    /// Parses the payload of an `RTM_NEWADDR` message; `Ok(None)` for a family other than
    /// IPv4 and IPv6.
    pub fn parse(payload: &[u8]) -> Result<Option<Address>, ParseError> {
        let fixed = payload
            .get(..IFADDRMSG_LEN)
            .ok_or(ParseError::Truncated("ifaddrmsg"))?;
        let family = fixed[0];
        if family != AF_INET && family != AF_INET6 {
            return Ok(None);
        }
        let (mut local, mut address, mut label, mut preferred_secs) = (None, None, None, None);
        let mut flags = u32::from(fixed[2]);
        for attr in attributes(&payload[IFADDRMSG_LEN..]) {
            let (kind, data) = attr?;
            match kind {
                IFA_LOCAL => local = Some(parse_ip(family, data, "IFA_LOCAL")?),
                IFA_ADDRESS => address = Some(parse_ip(family, data, "IFA_ADDRESS")?),
                IFA_LABEL => label = Some(attr_string(data)),
                IFA_FLAGS => flags = attr_u32(data, "IFA_FLAGS")?,
                // struct ifa_cacheinfo: ifa_prefered, ifa_valid, cstamp, tstamp (u32 each).
                IFA_CACHEINFO => {
                    let first = data
                        .get(..4)
                        .ok_or(ParseError::BadLength("IFA_CACHEINFO"))?;
                    preferred_secs = Some(attr_u32(first, "IFA_CACHEINFO")?);
                }
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
        // point-to-point link, and the same as IFA_LOCAL otherwise.
        let address = local
            .or(address)
            .ok_or(ParseError::Truncated("address without IFA_ADDRESS"))?;
        Ok(Some(Address {
            index: u32::from_ne_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            address,
            prefix_len: fixed[1],
            flags,
            scope: fixed[3],
            label,
            preferred_secs,
        }))
    }
}

fn ifaddrmsg(family: u8, prefix_len: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut m = [0u8; IFADDRMSG_LEN];
    m[0] = family;
    m[1] = prefix_len;
    // flags (the low 8 bits; IFA_FLAGS carries them all), scope universe
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// Lists the addresses of `family` (0: both).
pub fn dump_request(family: u8) -> Request {
    let mut r = Request::new(RTM_GETADDR, NLM_F_DUMP);
    r.fixed(&ifaddrmsg(family, 0, 0));
    r
}

/// Adds `address/prefix_len` to link `index` (`NLM_F_EXCL`: present already is `EEXIST`),
/// with `flags` such as [`IFA_F_NODAD`].
pub fn add_request(index: u32, address: IpAddr, prefix_len: u8, flags: u32) -> Request {
    let mut r = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    let bytes = ip_bytes(&address);
    r.fixed(&ifaddrmsg(family(&address), prefix_len, index))
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes);
    if flags != 0 {
        r.attr_u32(IFA_FLAGS, flags);
    }
    r
}

/// Changes the lifetimes of `address/prefix_len` on link `index` (`NLM_F_REPLACE`, as
/// `ip address change`; an absent IPv6 address is added, the kernel does not look at
/// `NLM_F_CREATE` there): `preferred_secs` 0 deprecates it, the valid lifetime stays infinite. `flags` replace the address's own (keep [`IFA_F_NODAD`]).
pub fn change_lifetime_request(
    index: u32,
    address: IpAddr,
    prefix_len: u8,
    flags: u32,
    preferred_secs: u32,
) -> Request {
    let mut r = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_REPLACE);
    let bytes = ip_bytes(&address);
    let mut cacheinfo = [0u8; 16];
    cacheinfo[..4].copy_from_slice(&preferred_secs.to_ne_bytes());
    cacheinfo[4..8].copy_from_slice(&LIFETIME_INFINITE.to_ne_bytes());
    r.fixed(&ifaddrmsg(family(&address), prefix_len, index))
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes)
        .attr(IFA_CACHEINFO, &cacheinfo)
        .attr_u32(IFA_FLAGS, flags);
    r
}

/// Deletes `address/prefix_len` from link `index` (absent is `EADDRNOTAVAIL`).
pub fn delete_request(index: u32, address: IpAddr, prefix_len: u8) -> Request {
    let mut r = Request::new(RTM_DELADDR, NLM_F_ACK);
    let bytes = ip_bytes(&address);
    r.fixed(&ifaddrmsg(family(&address), prefix_len, index))
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{HEADER_LEN, messages};

    #[test]
    fn add_request_parses_back() {
        let addr: IpAddr = "fd00:cafe::7".parse().unwrap();
        let bytes = add_request(4, addr, 128, IFA_F_NODAD).finish(2);
        let (header, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(header.kind, RTM_NEWADDR);
        let parsed = Address::parse(p).unwrap().unwrap();
        assert_eq!(parsed.index, 4);
        assert_eq!(parsed.address, addr);
        assert_eq!(parsed.prefix_len, 128);
        assert_eq!(parsed.flags, IFA_F_NODAD);
        assert_eq!(parsed.preferred_secs, None);
        for cut in 0..p.len() {
            let _ = Address::parse(&p[..cut]);
        }
    }

    #[test]
    fn change_lifetime_request_carries_the_preferred_lifetime() {
        let addr: IpAddr = "2001:db8:100::3".parse().unwrap();
        let bytes = change_lifetime_request(4, addr, 64, IFA_F_NODAD, 0).finish(3);
        let (header, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(header.kind, RTM_NEWADDR);
        let parsed = Address::parse(p).unwrap().unwrap();
        assert_eq!((parsed.address, parsed.prefix_len), (addr, 64));
        assert_eq!(parsed.preferred_secs, Some(0));
        let forever = change_lifetime_request(4, addr, 64, 0, LIFETIME_INFINITE).finish(4);
        let (_, p) = messages(&forever).next().unwrap().unwrap();
        assert_eq!(
            Address::parse(p).unwrap().unwrap().preferred_secs,
            Some(LIFETIME_INFINITE)
        );
        for cut in 0..p.len() {
            let _ = Address::parse(&p[..cut]);
        }
    }

    #[test]
    fn wrong_lengths_and_families() {
        let mut r = Request::new(RTM_NEWADDR, 0);
        r.fixed(&ifaddrmsg(AF_INET6, 64, 1))
            .attr(IFA_ADDRESS, &[1, 2, 3, 4]);
        let bytes = r.finish(1);
        assert_eq!(
            Address::parse(&bytes[HEADER_LEN..]),
            Err(ParseError::BadLength("IFA_ADDRESS"))
        );
        let mut other = Request::new(RTM_NEWADDR, 0);
        other.fixed(&ifaddrmsg(17, 0, 1));
        assert_eq!(Address::parse(&other.finish(1)[HEADER_LEN..]), Ok(None));
        let mut none = Request::new(RTM_NEWADDR, 0);
        none.fixed(&ifaddrmsg(AF_INET, 24, 1));
        assert!(Address::parse(&none.finish(1)[HEADER_LEN..]).is_err());
    }
}
