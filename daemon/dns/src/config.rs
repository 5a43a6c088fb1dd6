//! Zone configuration and the names derived from it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};

use crate::error::{Error, NameError, Result};

/// What the server is authoritative for, and how it behaves.
///
/// Build it with [`ZoneConfig::new`] and adjust the public fields; it is
/// `#[non_exhaustive]` so fields can be added without breaking callers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZoneConfig {
    /// The mesh domain (`global.domain`), e.g. `connectopus.test`; a trailing dot is optional
    /// and case does not matter.
    pub domain: String,
    /// Any address inside the mesh subnet (`global.subnet`); host bits are ignored.
    pub subnet: Ipv6Addr,
    /// Prefix length of the mesh subnet, `0..=128`.
    pub prefix_len: u8,
    /// This node's own name (relative to the domain). `<node_name>.<domain>.` is the
    /// zones' name server (SOA MNAME and NS) and always resolves to `node_address`.
    pub node_name: String,
    /// This node's mesh address.
    pub node_address: Ipv6Addr,
    /// The mesh's IPv4 subnet (`global.subnet4`) and its prefix length, `0..=32`: its
    /// `in-addr.arpa` zones are served. `None` (the default): no IPv4 reverse zones.
    pub subnet4: Option<(Ipv4Addr, u8)>,
    /// This node's IPv4 mesh address (the `A` record of its own name), if it has one.
    pub node_address4: Option<Ipv4Addr>,
    /// TTL of every record, and the SOA minimum (the negative-caching TTL). Default 10 s:
    /// names come and go with the routing protocol, so caches must not hold them long.
    pub ttl: u32,
    /// Most TCP connections served at once (at least 1); further connections are
    /// accepted and closed at once. Default 64.
    pub tcp_max_connections: usize,
    /// A TCP connection that takes longer than this to deliver its next query (or to take
    /// its answer) is closed. Default 10 s.
    pub tcp_idle_timeout: Duration,
}

/// Default TTL of served records, in seconds.
pub const DEFAULT_TTL: u32 = 10;
/// Default cap on concurrent TCP connections.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 64;
/// Default TCP idle timeout.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

impl ZoneConfig {
    /// A configuration with the default TTL and TCP limits.
    pub fn new(
        domain: impl Into<String>,
        subnet: Ipv6Addr,
        prefix_len: u8,
        node_name: impl Into<String>,
        node_address: Ipv6Addr,
    ) -> Self {
        Self {
            domain: domain.into(),
            subnet,
            prefix_len,
            node_name: node_name.into(),
            node_address,
            subnet4: None,
            node_address4: None,
            ttl: DEFAULT_TTL,
            tcp_max_connections: DEFAULT_TCP_MAX_CONNECTIONS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }

    /// The apexes of the zones served: the domain first, then the reverse zones.
    ///
    /// See [`reverse_zones`] for how the reverse zones are chosen.
    pub fn zone_apexes(&self) -> Result<Vec<Name>> {
        let spec = ZoneSpec::new(self)?;
        Ok(spec.apexes().map(|apex| Name::from(apex.clone())).collect())
    }
}

/// The reverse zones (under `ip6.arpa.`) that cover exactly `subnet/prefix_len`.
///
/// A nibble-aligned prefix (a multiple of 4) gets one zone, whose apex holds the prefix's
/// nibbles: `fd00::/64` → `0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.`.
///
/// A prefix that is not nibble-aligned is split into the 2, 4 or 8 zones at the next longer
/// nibble boundary, as in classless reverse delegation: `fd00::/62` → the four /64 zones
/// `fd00::/64`, `fd00:0:0:1::/64`, `fd00:0:0:2::/64`, `fd00:0:0:3::/64`. The server is then
/// authoritative for exactly the subnet, not for neighbouring addresses that share its last
/// partial nibble.
///
/// Returns an error if `prefix_len > 128`.
pub fn reverse_zones(subnet: Ipv6Addr, prefix_len: u8) -> Result<Vec<Name>> {
    if prefix_len > 128 {
        return Err(Error::InvalidPrefixLength(prefix_len));
    }
    let bits = u128::from(subnet);
    let mask = match prefix_len {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n)),
    };
    let network = bits & mask;
    let nibbles = usize::from(prefix_len).div_ceil(4);
    let extra_bits = nibbles * 4 - usize::from(prefix_len);
    let mut zones = Vec::with_capacity(1 << extra_bits);
    for variant in 0..(1u128 << extra_bits) {
        // The enumerated bits sit just below the prefix, inside the last (partial) nibble.
        let addr = match nibbles {
            0 => network,
            _ => network | (variant << (128 - nibbles * 4)),
        };
        zones.push(reverse_apex(addr, nibbles));
    }
    Ok(zones)
}

/// `ip6.arpa.` name holding the first `nibbles` nibbles of `addr`.
fn reverse_apex(addr: u128, nibbles: usize) -> Name {
    let mut text = String::with_capacity(nibbles * 2 + 9);
    for i in (0..nibbles).rev() {
        let nibble = (addr >> (124 - 4 * i)) & 0xf;
        text.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
        text.push('.');
    }
    text.push_str("ip6.arpa.");
    // Only hex digits and dots: always a valid name.
    Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
}

/// The reverse zones (under `in-addr.arpa.`) that cover exactly `subnet/prefix_len`: one
/// zone per octet-aligned prefix, a prefix that is not octet-aligned split into the zones at
/// the next octet boundary (`198.18.0.0/15` → `18.198.in-addr.arpa.` and
/// `19.198.in-addr.arpa.`). Returns an error if `prefix_len > 32` or the split would give
/// more than 256 zones (a prefix shorter than /8 that is not /0).
pub fn reverse_zones4(subnet: Ipv4Addr, prefix_len: u8) -> Result<Vec<Name>> {
    if prefix_len > 32 {
        return Err(Error::InvalidPrefixLength(prefix_len));
    }
    let mask = match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n)),
    };
    let network = u32::from(subnet) & mask;
    let octets = usize::from(prefix_len).div_ceil(8);
    let extra_bits = octets * 8 - usize::from(prefix_len);
    let mut zones = Vec::with_capacity(1 << extra_bits);
    for variant in 0..(1u32 << extra_bits) {
        let addr = match octets {
            0 => network,
            _ => network | (variant << (32 - octets * 8)),
        };
        zones.push(reverse_apex4(addr, octets));
    }
    Ok(zones)
}

/// `in-addr.arpa.` name holding the first `octets` octets of `addr`.
fn reverse_apex4(addr: u32, octets: usize) -> Name {
    let bytes = addr.to_be_bytes();
    let mut text = String::with_capacity(octets * 4 + 13);
    for b in bytes.iter().take(octets).rev() {
        text.push_str(&b.to_string());
        text.push('.');
    }
    text.push_str("in-addr.arpa.");
    Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
}

/// The full reverse name of an IPv4 address (4 octets under `in-addr.arpa.`), FQDN.
pub(crate) fn reverse_name4(addr: Ipv4Addr) -> Name {
    reverse_apex4(u32::from(addr), 4)
}

/// The full reverse name of an address (32 nibbles under `ip6.arpa.`), lower-case, FQDN.
pub(crate) fn reverse_name(addr: Ipv6Addr) -> Name {
    reverse_apex(u128::from(addr), 32)
}

/// A validated [`ZoneConfig`], with names parsed once.
#[derive(Debug, Clone)]
pub(crate) struct ZoneSpec {
    /// The domain, lower-case FQDN.
    pub domain: LowerName,
    /// `<node_name>.<domain>.`
    pub ns_name: Name,
    /// `hostmaster.<domain>.`
    pub rname: Name,
    /// The node's own name, normalised (lower-case, relative).
    pub node_name: String,
    pub node_address: Ipv6Addr,
    pub node_address4: Option<Ipv4Addr>,
    pub reverse: Vec<LowerName>,
    /// Network address and mask of the IPv4 subnet (mask 0 and no zones without one).
    pub subnet4: Option<(u32, u32)>,
    /// Network address and prefix length of the subnet, for reverse coverage checks.
    pub subnet_network: u128,
    pub subnet_mask: u128,
    pub ttl: u32,
    pub tcp_max_connections: usize,
    pub tcp_idle_timeout: Duration,
}

impl ZoneSpec {
    pub fn new(config: &ZoneConfig) -> Result<Self> {
        let bad_domain = |reason: String| Error::InvalidDomain {
            domain: config.domain.clone(),
            reason,
        };
        let trimmed = config
            .domain
            .strip_suffix('.')
            .unwrap_or(&config.domain)
            .to_ascii_lowercase();
        if trimmed.is_empty() {
            return Err(bad_domain("the root cannot be the mesh domain".into()));
        }
        for label in trimmed.split('.') {
            check_label(label).map_err(|e| bad_domain(e.to_string()))?;
        }
        let mut domain =
            Name::from_ascii(&trimmed).map_err(|e| bad_domain(format!("not a DNS name: {e}")))?;
        domain.set_fqdn(true);
        // Leave room for at least a short host label.
        if domain.len() > 200 {
            return Err(bad_domain("longer than 200 bytes".into()));
        }
        let node_name = normalize_name(&config.node_name, &domain).map_err(|reason| {
            Error::InvalidNodeName {
                name: config.node_name.clone(),
                reason,
            }
        })?;
        let ns_name = qualify(&node_name, &domain);
        let rname = qualify("hostmaster", &domain);
        let mut reverse: Vec<LowerName> = reverse_zones(config.subnet, config.prefix_len)?
            .into_iter()
            .map(LowerName::from)
            .collect();
        let subnet4 = match config.subnet4 {
            Some((net, len)) => {
                reverse.extend(reverse_zones4(net, len)?.into_iter().map(LowerName::from));
                let mask = match len {
                    0 => 0,
                    n => u32::MAX << (32 - u32::from(n)),
                };
                Some((u32::from(net) & mask, mask))
            }
            None => None,
        };
        let subnet_mask = match config.prefix_len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        Ok(Self {
            domain: LowerName::from(domain),
            ns_name,
            rname,
            node_name,
            node_address: config.node_address,
            node_address4: config.node_address4,
            reverse,
            subnet4,
            subnet_network: u128::from(config.subnet) & subnet_mask,
            subnet_mask,
            ttl: config.ttl,
            tcp_max_connections: config.tcp_max_connections.max(1),
            tcp_idle_timeout: config.tcp_idle_timeout,
        })
    }

    /// All zone apexes, the domain first.
    pub fn apexes(&self) -> impl Iterator<Item = &LowerName> {
        std::iter::once(&self.domain).chain(self.reverse.iter())
    }

    /// Whether `addr` is inside the mesh subnet (so its PTR is ours to serve).
    pub fn in_subnet(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.subnet_mask == self.subnet_network
    }

    /// Whether `addr` is inside the mesh's IPv4 subnet (so its PTR is ours to serve).
    pub fn in_subnet4(&self, addr: Ipv4Addr) -> bool {
        self.subnet4
            .is_some_and(|(network, mask)| u32::from(addr) & mask == network)
    }
}

/// `<relative>.<domain>` as an FQDN. `relative` must have passed [`normalize_name`].
pub(crate) fn qualify(relative: &str, domain: &Name) -> Name {
    Name::from_ascii(relative)
        .and_then(|n| n.append_domain(domain))
        .unwrap_or_else(|_| domain.clone())
}

/// Checks a name relative to the domain and returns it lower-cased.
///
/// Names may have several labels (`a.b`); each label is 1–63 ASCII letters, digits, `-` or
/// `_`, and the whole name under the domain must fit in 255 bytes.
pub(crate) fn normalize_name(name: &str, domain: &Name) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    // Wire length: one length byte per label plus its bytes, plus the domain's wire length.
    if name.len() + 1 + domain.len() > 255 {
        return Err(NameError::TooLong);
    }
    Ok(name.to_ascii_lowercase())
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() || label.len() > 63 {
        return Err(NameError::BadLabelLength);
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NameError::BadCharacter(c));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(subnet: &str, len: u8) -> Vec<String> {
        reverse_zones(subnet.parse().unwrap(), len)
            .unwrap()
            .iter()
            .map(|n| n.to_ascii())
            .collect()
    }

    #[test]
    fn nibble_aligned_subnet_is_one_zone() {
        assert_eq!(
            names("fd00::", 64),
            ["0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."]
        );
        assert_eq!(names("fd00:1234::1", 16), ["0.0.d.f.ip6.arpa."]);
        assert_eq!(names("2001:db8::", 32), ["8.b.d.0.1.0.0.2.ip6.arpa."]);
        assert_eq!(names("::", 0), ["ip6.arpa."]);
        assert_eq!(
            names("fd00::1", 128),
            [reverse_name("fd00::1".parse().unwrap()).to_ascii()]
        );
    }

    #[test]
    fn unaligned_subnet_splits_at_next_nibble() {
        assert_eq!(
            names("fd00::", 62),
            [
                "0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
                "2.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
                "3.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
            ]
        );
        // Host bits (here the low bits of the third nibble and all after) are masked off.
        assert_eq!(
            names("fd5f::1", 10),
            [
                "4.d.f.ip6.arpa.",
                "5.d.f.ip6.arpa.",
                "6.d.f.ip6.arpa.",
                "7.d.f.ip6.arpa."
            ]
        );
        assert_eq!(names("8000::", 1).len(), 8);
        assert_eq!(names("8000::", 1)[0], "8.ip6.arpa.");
        assert_eq!(names("8000::", 1)[7], "f.ip6.arpa.");
        assert!(reverse_zones(Ipv6Addr::UNSPECIFIED, 129).is_err());
    }

    #[test]
    fn reverse_name_is_fqdn_with_32_nibbles() {
        let n = reverse_name("fd00::1:2".parse().unwrap());
        assert!(n.is_fqdn());
        assert_eq!(
            n.to_ascii(),
            "2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
        );
    }

    #[test]
    fn name_validation() {
        let d = Name::from_ascii("connectopus.test.").unwrap();
        assert_eq!(normalize_name("Foo-Tun", &d).unwrap(), "foo-tun");
        assert_eq!(normalize_name("a.B_c", &d).unwrap(), "a.b_c");
        assert_eq!(normalize_name("", &d), Err(NameError::Empty));
        assert_eq!(normalize_name("a..b", &d), Err(NameError::BadLabelLength));
        assert_eq!(normalize_name("a.", &d), Err(NameError::BadLabelLength));
        assert_eq!(
            normalize_name("my node", &d),
            Err(NameError::BadCharacter(' '))
        );
        assert_eq!(normalize_name("*", &d), Err(NameError::BadCharacter('*')));
        assert_eq!(normalize_name("é", &d), Err(NameError::BadCharacter('é')));
        assert_eq!(
            normalize_name(&"x".repeat(64), &d),
            Err(NameError::BadLabelLength)
        );
        let long = vec!["x".repeat(63); 4].join(".");
        assert_eq!(normalize_name(&long, &d), Err(NameError::TooLong));
    }

    #[test]
    fn config_validation() {
        let ok = ZoneConfig::new(
            "Connectopus.Test.",
            "fd00::".parse().unwrap(),
            64,
            "Node1",
            "fd00::1".parse().unwrap(),
        );
        let spec = ZoneSpec::new(&ok).unwrap();
        assert_eq!(spec.domain.to_string(), "connectopus.test.");
        assert_eq!(spec.ns_name.to_ascii(), "node1.connectopus.test.");
        assert!(spec.in_subnet("fd00::ffff".parse().unwrap()));
        assert!(!spec.in_subnet("fd00:0:0:1::1".parse().unwrap()));

        let mut bad = ok.clone();
        bad.domain = ".".into();
        assert!(matches!(
            ZoneSpec::new(&bad),
            Err(Error::InvalidDomain { .. })
        ));
        bad.domain = "a b".into();
        assert!(matches!(
            ZoneSpec::new(&bad),
            Err(Error::InvalidDomain { .. })
        ));
        let mut bad = ok.clone();
        bad.node_name = "".into();
        assert!(matches!(
            ZoneSpec::new(&bad),
            Err(Error::InvalidNodeName { .. })
        ));
        let mut bad = ok;
        bad.prefix_len = 200;
        assert!(matches!(
            ZoneSpec::new(&bad),
            Err(Error::InvalidPrefixLength(200))
        ));
    }
}
