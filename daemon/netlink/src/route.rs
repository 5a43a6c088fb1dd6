//! Routes (`RTM_*ROUTE`, `struct rtmsg`): the requests that add and delete a route (through a
//! device, via a gateway, host routes), and the parser of the kernel's route messages. No
//! I/O here.

use std::net::IpAddr;

use crate::address::{AF_INET, AF_INET6, family, ip_bytes, parse_ip};
use crate::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, ParseError, Request, attr_u32, attributes,
};

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

pub const RT_TABLE_MAIN: u32 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
/// In a delete: match a route of any scope.
const RT_SCOPE_NOWHERE: u8 = 255;
pub const RTN_UNICAST: u8 = 1;
/// A route that answers ICMP "no route" (as `ip route add unreachable`): dhcpcd installs
/// one for a delegated prefix so packets to its unused parts are not sent back upstream.
pub const RTN_UNREACHABLE: u8 = 7;
/// A route the kernel cloned into its cache (IPv6 exceptions), not a configured one.
const RTM_F_CLONED: u32 = 0x200;

const RTMSG_LEN: usize = 12;

/// A route to add or delete, or as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination network (`::`/0 for the default route).
    pub destination: IpAddr,
    pub prefix_len: u8,
    /// The output link's index.
    pub device: Option<u32>,
    /// The next hop (an IPv6 link-local gateway also needs `device`).
    pub gateway: Option<IpAddr>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    pub metric: Option<u32>,
    /// The table (254: main).
    pub table: u32,
    /// `RTN_*`: 1 unicast, 2 local...
    pub kind: u8,
}

impl Route {
    /// A route to `destination/prefix_len` out of link `device`, in the main table.
    pub fn via_device(destination: IpAddr, prefix_len: u8, device: u32) -> Route {
        Route {
            destination,
            prefix_len,
            device: Some(device),
            gateway: None,
            source: None,
            metric: None,
            table: RT_TABLE_MAIN,
            kind: RTN_UNICAST,
        }
    }

    /// A host route (/128 or /32) to `destination` out of link `device`.
    pub fn host(destination: IpAddr, device: u32) -> Route {
        let len = if destination.is_ipv4() { 32 } else { 128 };
        Route::via_device(destination, len, device)
    }

    /// An `unreachable` route for `destination/prefix_len` in the main table, without a
    /// device (the kernel puts it on `lo`). Longer routes inside it still win.
    pub fn unreachable(destination: IpAddr, prefix_len: u8) -> Route {
        Route {
            destination,
            prefix_len,
            device: None,
            gateway: None,
            source: None,
            metric: None,
            table: RT_TABLE_MAIN,
            kind: RTN_UNREACHABLE,
        }
    }

    /// The same route in table `table`.
    pub fn in_table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    /// Adds the next hop `gateway`.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    /// Adds the preferred source address.
    pub fn with_source(mut self, source: IpAddr) -> Route {
        self.source = Some(source);
        self
    }

    /// The destination as `fd00::/48`.
    pub fn destination_string(&self) -> String {
        format!("{}/{}", self.destination, self.prefix_len)
    }

    /// Parses the payload of an `RTM_NEWROUTE` message; `Ok(None)` for a family other than
    /// IPv4 and IPv6 and for routes the kernel cloned into its cache.
    pub fn parse(payload: &[u8]) -> Result<Option<Route>, ParseError> {
        let fixed = payload
            .get(..RTMSG_LEN)
            .ok_or(ParseError::Truncated("rtmsg"))?;
        let family = fixed[0];
        let flags = u32::from_ne_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if (family != AF_INET && family != AF_INET6) || flags & RTM_F_CLONED != 0 {
            return Ok(None);
        }
        let unspecified = if family == AF_INET {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let mut route = Route {
            destination: unspecified,
            prefix_len: fixed[1],
            device: None,
            gateway: None,
            source: None,
            metric: None,
            table: u32::from(fixed[4]),
            kind: fixed[7],
        };
        for attr in attributes(&payload[RTMSG_LEN..]) {
            let (kind, data) = attr?;
            match kind {
                RTA_DST => route.destination = parse_ip(family, data, "RTA_DST")?,
                RTA_OIF => route.device = Some(attr_u32(data, "RTA_OIF")?),
                RTA_GATEWAY => route.gateway = Some(parse_ip(family, data, "RTA_GATEWAY")?),
                RTA_PREFSRC => route.source = Some(parse_ip(family, data, "RTA_PREFSRC")?),
                RTA_PRIORITY => route.metric = Some(attr_u32(data, "RTA_PRIORITY")?),
                RTA_TABLE => route.table = attr_u32(data, "RTA_TABLE")?,
                _ => {}
            }
        }
        Ok(Some(route))
    }

    fn request(&self, kind: u16, flags: u16) -> Request {
        let family = family(&self.destination);
        let adding = kind == RTM_NEWROUTE;
        let scope = match (adding, family, self.gateway) {
            (false, AF_INET, _) => RT_SCOPE_NOWHERE,
            // An IPv4 route without a next hop is on-link, as `ip route add ... dev` makes it.
            (true, AF_INET, None) => RT_SCOPE_LINK,
            _ => RT_SCOPE_UNIVERSE,
        };
        let rtmsg: [u8; RTMSG_LEN] = [
            family,
            self.prefix_len,
            0, // src_len
            0, // tos
            u8::try_from(self.table).unwrap_or(0),
            if adding { RTPROT_BOOT } else { 0 },
            scope,
            if adding { self.kind } else { 0 },
            0,
            0,
            0,
            0, // flags
        ];
        let mut r = Request::new(kind, flags);
        r.fixed(&rtmsg);
        if self.prefix_len > 0 {
            r.attr(RTA_DST, &ip_bytes(&self.destination));
        }
        if let Some(device) = self.device {
            r.attr_u32(RTA_OIF, device);
        }
        if let Some(gateway) = &self.gateway {
            r.attr(RTA_GATEWAY, &ip_bytes(gateway));
        }
        if let Some(source) = &self.source {
            r.attr(RTA_PREFSRC, &ip_bytes(source));
        }
        if let Some(metric) = self.metric {
            r.attr_u32(RTA_PRIORITY, metric);
        }
        if self.table > 255 {
            r.attr_u32(RTA_TABLE, self.table);
        }
        r
    }

    /// Adds this route (`NLM_F_EXCL`: an equal one present is `EEXIST`).
    pub fn add_request(&self) -> Request {
        self.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes this route (absent is `ESRCH`).
    pub fn delete_request(&self) -> Request {
        self.request(RTM_DELROUTE, NLM_F_ACK)
    }
}

/// Lists the routes of `family` (0: both).
pub fn dump_request(family: u8) -> Request {
    let mut r = Request::new(RTM_GETROUTE, NLM_F_DUMP);
    r.fixed(&[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::messages;

    #[test]
    fn add_request_parses_back() {
        let route = Route::host("fd00:cafe::7".parse().unwrap(), 9)
            .with_gateway("fe80::1".parse().unwrap());
        let bytes = route.add_request().finish(1);
        let (header, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(header.kind, RTM_NEWROUTE);
        assert_eq!(Route::parse(p).unwrap().unwrap(), route);
        for cut in 0..p.len() {
            let _ = Route::parse(&p[..cut]);
        }
        let default4 = Route::via_device("0.0.0.0".parse().unwrap(), 0, 3);
        let bytes = default4.add_request().finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(p[6], RT_SCOPE_LINK);
        assert_eq!(Route::parse(p).unwrap().unwrap(), default4);
    }

    #[test]
    fn unreachable_and_table_routes_parse_back() {
        let route = Route::unreachable("2001:db8:100::".parse().unwrap(), 56);
        let bytes = route.add_request().finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(p[7], RTN_UNREACHABLE);
        assert_eq!(p[6], RT_SCOPE_UNIVERSE);
        assert_eq!(Route::parse(p).unwrap().unwrap(), route);
        // A table above 255 goes in RTA_TABLE, the header's byte says RT_TABLE_UNSPEC.
        let default = Route::via_device("::".parse().unwrap(), 0, 4).in_table(5000);
        let bytes = default.add_request().finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(p[4], 0);
        assert_eq!(Route::parse(p).unwrap().unwrap(), default);
    }

    #[test]
    fn bad_lengths_and_cloned_routes() {
        let mut r = Request::new(RTM_NEWROUTE, 0);
        r.fixed(&[AF_INET6, 64, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0])
            .attr(RTA_DST, &[0; 4]);
        let bytes = r.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(Route::parse(p), Err(ParseError::BadLength("RTA_DST")));
        let cloned = 0x200u32.to_ne_bytes();
        let mut c = Request::new(RTM_NEWROUTE, 0);
        c.fixed(&[
            AF_INET6, 128, 0, 0, 254, 3, 0, 1, cloned[0], cloned[1], cloned[2], cloned[3],
        ]);
        let bytes = c.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(Route::parse(p), Ok(None));
    }
}
