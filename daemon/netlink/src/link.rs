//! Links (`RTM_*LINK`, `struct ifinfomsg`): the requests that create a veth pair, change a
//! link (up, MTU, namespace, name) and delete it, and the parser of the kernel's link
//! messages. No I/O here; [`crate::Netlink`] sends them.

use std::os::fd::RawFd;

use crate::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, ParseError, Request, attr_string, attr_u32,
    attributes,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_LOWER_UP: u32 = 0x1_0000;

/// `struct ifinfomsg` is 16 bytes.
const IFINFOMSG_LEN: usize = 16;

/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_NAME_LEN: usize = 15;

/// A link as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFF_*` flags (`IFF_UP`, `IFF_LOWER_UP`...).
    pub flags: u32,
    pub mtu: Option<u32>,
    /// The hardware address (empty for a TUN device).
    pub mac: Vec<u8>,
    /// `IFLA_INFO_KIND`: `veth`, `dummy`, `tun`...; `None` for loopback and plain devices.
    pub kind: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff` (as CNI results carry it).
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Parses the payload of an `RTM_NEWLINK` message.
    pub fn parse(payload: &[u8]) -> Result<Link, ParseError> {
        let fixed = payload
            .get(..IFINFOMSG_LEN)
            .ok_or(ParseError::Truncated("ifinfomsg"))?;
        let index = i32::from_ne_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let flags = u32::from_ne_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        let mut link = Link {
            index: u32::try_from(index).map_err(|_| ParseError::BadLength("link index"))?,
            name: String::new(),
            flags,
            mtu: None,
            mac: Vec::new(),
            kind: None,
        };
        for attr in attributes(&payload[IFINFOMSG_LEN..]) {
            let (kind, data) = attr?;
            match kind {
                IFLA_IFNAME => link.name = attr_string(data),
                IFLA_MTU => link.mtu = Some(attr_u32(data, "IFLA_MTU")?),
                IFLA_ADDRESS => link.mac = data.to_vec(),
                IFLA_LINKINFO => {
                    for info in attributes(data) {
                        let (kind, data) = info?;
                        if kind == IFLA_INFO_KIND {
                            link.kind = Some(attr_string(data));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(link)
    }
}

/// Refuses names the kernel would refuse, with the name in the message (the kernel says only
/// "Invalid argument" or "Numerical result out of range").
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "interface name `{name}` must have 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    if name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == b':' || b <= b' ') {
        return Err(format!("interface name `{name}` is not valid"));
    }
    Ok(())
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    // family AF_UNSPEC, pad, type 0
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Lists every link.
pub fn dump_request() -> Request {
    let mut r = Request::new(RTM_GETLINK, NLM_F_DUMP);
    r.fixed(&ifinfomsg(0, 0, 0));
    r
}

/// Asks for one link by name (answered with the link, then the acknowledgement).
pub fn get_request(name: &str) -> Request {
    let mut r = Request::new(RTM_GETLINK, NLM_F_ACK);
    r.fixed(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
    r
}

/// What a new veth pair looks like: the two names, the MTU of both ends, and the network
/// namespace the peer is created in (by descriptor; `None`: this one).
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub mtu: Option<u32>,
    pub peer_netns: Option<RawFd>,
}

/// Creates a veth pair (`NLM_F_EXCL`: an existing name is `EEXIST`).
pub fn veth_request(spec: &VethSpec<'_>) -> Request {
    let mut r = Request::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    r.fixed(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, spec.name);
    if let Some(mtu) = spec.mtu {
        r.attr_u32(IFLA_MTU, mtu);
    }
    let info = r.begin_nest(IFLA_LINKINFO);
    r.attr_str(IFLA_INFO_KIND, "veth");
    let data = r.begin_nest(IFLA_INFO_DATA);
    let peer = r.begin_plain(VETH_INFO_PEER);
    r.fixed(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, spec.peer);
    if let Some(mtu) = spec.mtu {
        r.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(fd) = spec.peer_netns {
        r.attr_u32(IFLA_NET_NS_FD, fd as u32);
    }
    r.end_nest(peer);
    r.end_nest(data);
    r.end_nest(info);
    r
}

/// A change to link `index`; [`LinkChange::request`] builds it.
#[derive(Debug, Clone, Default)]
pub struct LinkChange<'a> {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    /// Move into the network namespace of this descriptor.
    pub netns: Option<RawFd>,
    /// Rename (with a move: the name it gets in the other namespace).
    pub rename: Option<&'a str>,
}

impl LinkChange<'_> {
    pub fn request(&self, index: u32) -> Request {
        let (flags, change) = match self.up {
            Some(true) => (IFF_UP, IFF_UP),
            Some(false) => (0, IFF_UP),
            None => (0, 0),
        };
        let mut r = Request::new(RTM_NEWLINK, NLM_F_ACK);
        r.fixed(&ifinfomsg(index, flags, change));
        if let Some(mtu) = self.mtu {
            r.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(fd) = self.netns {
            r.attr_u32(IFLA_NET_NS_FD, fd as u32);
        }
        if let Some(name) = self.rename {
            r.attr_str(IFLA_IFNAME, name);
        }
        r
    }
}

/// Deletes link `index` (a veth takes its peer along).
pub fn delete_request(index: u32) -> Request {
    let mut r = Request::new(RTM_DELLINK, NLM_F_ACK);
    r.fixed(&ifinfomsg(index, 0, 0));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{HEADER_LEN, messages};

    fn payload(r: Request) -> Vec<u8> {
        r.finish(1)[HEADER_LEN..].to_vec()
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_ifinfomsg() {
        let bytes = payload(veth_request(&VethSpec {
            name: "cxa",
            peer: "eth0",
            mtu: Some(1400),
            peer_netns: Some(7),
        }));
        let attrs: Vec<_> = attributes(&bytes[IFINFOMSG_LEN..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(attrs[0], (IFLA_IFNAME, &b"cxa\0"[..]));
        assert_eq!(attrs[1], (IFLA_MTU, &1400u32.to_ne_bytes()[..]));
        let info: Vec<_> = attributes(attrs[2].1).map(Result::unwrap).collect();
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"veth\0"[..]));
        let data: Vec<_> = attributes(info[1].1).map(Result::unwrap).collect();
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = Link::parse(data[0].1).unwrap();
        assert_eq!(peer.name, "eth0");
        let peer_attrs: Vec<_> = attributes(&data[0].1[IFINFOMSG_LEN..])
            .map(Result::unwrap)
            .collect();
        assert!(peer_attrs.contains(&(IFLA_NET_NS_FD, &7u32.to_ne_bytes()[..])));
    }

    #[test]
    fn link_parse_reads_what_requests_write_and_refuses_garbage() {
        let mut r = Request::new(RTM_NEWLINK, 0);
        r.fixed(&ifinfomsg(5, IFF_UP | IFF_LOWER_UP, 0))
            .attr_str(IFLA_IFNAME, "veth9")
            .attr_u32(IFLA_MTU, 1500)
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
        let n = r.begin_nest(IFLA_LINKINFO);
        r.attr_str(IFLA_INFO_KIND, "veth");
        r.end_nest(n);
        let bytes = r.finish(3);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        let link = Link::parse(p).unwrap();
        assert_eq!(link.index, 5);
        assert_eq!(link.name, "veth9");
        assert_eq!(link.mtu, Some(1500));
        assert_eq!(link.mac_string(), "02:00:00:00:00:01");
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert!(link.is_up());
        for cut in 0..p.len() {
            let _ = Link::parse(&p[..cut]);
        }
        assert!(Link::parse(&p[..10]).is_err());
        let mut bad_mtu = Request::new(RTM_NEWLINK, 0);
        bad_mtu.fixed(&ifinfomsg(1, 0, 0)).attr(IFLA_MTU, &[1, 2]);
        assert!(Link::parse(&payload(bad_mtu)).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("eth0").is_ok());
        assert!(check_name("cx0123456789abc").is_ok());
        assert!(
            check_name("cx0123456789abcd")
                .unwrap_err()
                .contains("cx0123456789abcd")
        );
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }
}
