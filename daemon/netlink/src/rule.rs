//! Policy routing rules (`RTM_*RULE`, `struct fib_rule_hdr`): the requests that add and delete
//! a rule such as `ip -6 rule add from 2001:db8:100::/56 lookup 4242 priority 1000`, and the
//! parser of the kernel's rule messages. No I/O here.

use std::net::IpAddr;

use crate::address::{AF_INET, AF_INET6, family, ip_bytes, parse_ip};
use crate::message::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, ParseError, Request, attr_u32, attributes,
};

pub const RTM_NEWRULE: u16 = 32;
pub const RTM_DELRULE: u16 = 33;
pub const RTM_GETRULE: u16 = 34;

const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;

/// `FR_ACT_TO_TBL`: look the packet up in the rule's table.
pub const FR_ACT_TO_TBL: u8 = 1;
/// `RT_TABLE_UNSPEC`: the header's table byte when the table is in `FRA_TABLE`.
const RT_TABLE_UNSPEC: u8 = 0;

const FIB_RULE_HDR_LEN: usize = 12;

/// A rule to add or delete, or as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `AF_INET6` or `AF_INET`.
    pub family: u8,
    /// The source prefix matched (`from`), none for every source.
    pub source: Option<(IpAddr, u8)>,
    /// The destination prefix matched (`to`), none for every destination.
    pub destination: Option<(IpAddr, u8)>,
    /// The table looked up.
    pub table: u32,
    /// The rule's priority (lower first); none lets the kernel choose when adding and matches
    /// any when deleting.
    pub priority: Option<u32>,
    /// `suppress_prefixlength`: a route the table gives with a prefix this long or shorter
    /// is ignored (0: its default route), and the rules after this one are tried.
    pub suppress_prefix_len: Option<u32>,
    /// `FR_ACT_*`: 1 look up the table.
    pub action: u8,
}

impl Rule {
    /// `from source/len lookup table`.
    pub fn from_source(source: IpAddr, len: u8, table: u32) -> Rule {
        Rule {
            family: family(&source),
            source: Some((source, len)),
            destination: None,
            table,
            priority: None,
            suppress_prefix_len: None,
            action: FR_ACT_TO_TBL,
        }
    }

    /// The same rule with `suppress_prefixlength len`.
    pub fn suppressing_prefix_len(mut self, len: u32) -> Rule {
        self.suppress_prefix_len = Some(len);
        self
    }

    /// The same rule at `priority`.
    pub fn with_priority(mut self, priority: u32) -> Rule {
        self.priority = Some(priority);
        self
    }

    /// Parses the payload of an `RTM_NEWRULE` message; `Ok(None)` for a family other than
    /// IPv4 and IPv6.
    pub fn parse(payload: &[u8]) -> Result<Option<Rule>, ParseError> {
        let fixed = payload
            .get(..FIB_RULE_HDR_LEN)
            .ok_or(ParseError::Truncated("fib_rule_hdr"))?;
        let family = fixed[0];
        if family != AF_INET && family != AF_INET6 {
            return Ok(None);
        }
        let (dst_len, src_len) = (fixed[1], fixed[2]);
        let max = if family == AF_INET { 32 } else { 128 };
        if dst_len > max || src_len > max {
            return Err(ParseError::BadLength("fib_rule_hdr prefix length"));
        }
        let mut rule = Rule {
            family,
            source: None,
            destination: None,
            table: u32::from(fixed[4]),
            priority: None,
            suppress_prefix_len: None,
            action: fixed[7],
        };
        for attr in attributes(&payload[FIB_RULE_HDR_LEN..]) {
            let (kind, data) = attr?;
            match kind {
                FRA_SRC => rule.source = Some((parse_ip(family, data, "FRA_SRC")?, src_len)),
                FRA_DST => {
                    rule.destination = Some((parse_ip(family, data, "FRA_DST")?, dst_len));
                }
                FRA_TABLE => rule.table = attr_u32(data, "FRA_TABLE")?,
                FRA_PRIORITY => rule.priority = Some(attr_u32(data, "FRA_PRIORITY")?),
                FRA_SUPPRESS_PREFIXLEN => {
                    // The kernel lists -1 (none) for rules without it.
                    let len = attr_u32(data, "FRA_SUPPRESS_PREFIXLEN")?;
                    rule.suppress_prefix_len = (len != u32::MAX).then_some(len);
                }
                _ => {}
            }
        }
        Ok(Some(rule))
    }

    fn request(&self, kind: u16, flags: u16) -> Request {
        let src_len = self.source.map_or(0, |(_, len)| len);
        let dst_len = self.destination.map_or(0, |(_, len)| len);
        let table_byte = u8::try_from(self.table)
            .ok()
            .filter(|t| *t != 0)
            .unwrap_or(RT_TABLE_UNSPEC);
        let header: [u8; FIB_RULE_HDR_LEN] = [
            self.family,
            dst_len,
            src_len,
            0, // tos
            table_byte,
            0, // res1
            0, // res2
            self.action,
            0,
            0,
            0,
            0, // flags
        ];
        let mut r = Request::new(kind, flags);
        r.fixed(&header);
        if let Some((source, _)) = &self.source {
            r.attr(FRA_SRC, &ip_bytes(source));
        }
        if let Some((destination, _)) = &self.destination {
            r.attr(FRA_DST, &ip_bytes(destination));
        }
        if let Some(priority) = self.priority {
            r.attr_u32(FRA_PRIORITY, priority);
        }
        if let Some(len) = self.suppress_prefix_len {
            r.attr_u32(FRA_SUPPRESS_PREFIXLEN, len);
        }
        r.attr_u32(FRA_TABLE, self.table);
        r
    }

    /// Adds this rule (`NLM_F_EXCL`: an equal one present is `EEXIST`).
    pub fn add_request(&self) -> Request {
        self.request(RTM_NEWRULE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes this rule (matched by what it gives; absent is `ENOENT`).
    pub fn delete_request(&self) -> Request {
        self.request(RTM_DELRULE, NLM_F_ACK)
    }

    /// The rule as `ip rule` writes it.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(priority) = self.priority {
            s.push_str(&format!("{priority}: "));
        }
        match self.source {
            Some((a, len)) => s.push_str(&format!("from {a}/{len}")),
            None => s.push_str("from all"),
        }
        if let Some((a, len)) = self.destination {
            s.push_str(&format!(" to {a}/{len}"));
        }
        s.push_str(&format!(" lookup {}", self.table));
        if let Some(len) = self.suppress_prefix_len {
            s.push_str(&format!(" suppress_prefixlength {len}"));
        }
        s
    }
}

/// Lists the rules of `family` (`AF_INET6`, `AF_INET`).
pub fn dump_request(family: u8) -> Request {
    let mut r = Request::new(RTM_GETRULE, NLM_F_DUMP);
    r.fixed(&[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::messages;

    #[test]
    fn add_and_delete_requests_parse_back() {
        let rule =
            Rule::from_source("2001:db8:100::".parse().unwrap(), 56, 4242).with_priority(900);
        for (request, kind) in [
            (rule.add_request(), RTM_NEWRULE),
            (rule.delete_request(), RTM_DELRULE),
        ] {
            let bytes = request.finish(7);
            let (header, p) = messages(&bytes).next().unwrap().unwrap();
            assert_eq!(header.kind, kind);
            // Header: family, dst_len, src_len, tos, table (UNSPEC above 255), res, res, action.
            assert_eq!(&p[..8], &[AF_INET6, 0, 56, 0, 0, 0, 0, FR_ACT_TO_TBL]);
            assert_eq!(Rule::parse(p).unwrap().unwrap(), rule);
            for cut in 0..p.len() {
                let _ = Rule::parse(&p[..cut]);
            }
        }
        let suppress = Rule::from_source("2001:db8:100::".parse().unwrap(), 56, 254)
            .with_priority(899)
            .suppressing_prefix_len(0);
        let bytes = suppress.add_request().finish(2);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(p[4], 254);
        assert_eq!(Rule::parse(p).unwrap().unwrap(), suppress);
        assert_eq!(
            suppress.describe(),
            "899: from 2001:db8:100::/56 lookup 254 suppress_prefixlength 0"
        );
        let small = Rule::from_source("198.18.0.0".parse().unwrap(), 15, 100);
        let bytes = small.add_request().finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(p[4], 100);
        assert_eq!(Rule::parse(p).unwrap().unwrap(), small);
        assert_eq!(
            rule.describe(),
            "900: from 2001:db8:100::/56 lookup 4242".to_owned()
        );
    }

    #[test]
    fn what_the_kernel_sends_parses() {
        // `ip -6 rule` lists `0: from all lookup local`: no FRA_SRC, table 255 in the header
        // and in FRA_TABLE, priority 0.
        let mut r = Request::new(RTM_NEWRULE, 0);
        r.fixed(&[AF_INET6, 0, 0, 0, 255, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0])
            .attr_u32(FRA_TABLE, 255)
            .attr_u32(FRA_SUPPRESS_PREFIXLEN, u32::MAX)
            .attr_u32(FRA_PRIORITY, 0);
        let bytes = r.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        let local = Rule::parse(p).unwrap().unwrap();
        assert_eq!(local.source, None);
        assert_eq!((local.table, local.priority), (255, Some(0)));
        assert_eq!(local.suppress_prefix_len, None);
        // Another family is skipped; a short FRA_SRC or a too long prefix is an error.
        let mut other = Request::new(RTM_NEWRULE, 0);
        other.fixed(&[7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        let bytes = other.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(Rule::parse(p), Ok(None));
        let mut short = Request::new(RTM_NEWRULE, 0);
        short
            .fixed(&[AF_INET6, 0, 56, 0, 0, 0, 0, 1, 0, 0, 0, 0])
            .attr(FRA_SRC, &[0x20, 1]);
        let bytes = short.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(Rule::parse(p), Err(ParseError::BadLength("FRA_SRC")));
        let mut long = Request::new(RTM_NEWRULE, 0);
        long.fixed(&[AF_INET, 0, 33, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        let bytes = long.finish(1);
        let (_, p) = messages(&bytes).next().unwrap().unwrap();
        assert!(Rule::parse(p).is_err());
        assert_eq!(
            Rule::parse(&[0; 4]),
            Err(ParseError::Truncated("fib_rule_hdr"))
        );
    }
}
