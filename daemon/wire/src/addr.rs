//! IPv6 prefixes and link costs.

use core::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::WireError;

/// An IPv6 prefix whose host bits are zero.
///
/// Ordered by address, then by length, which is the canonical order of prefix lists on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: Ipv6Addr,
    len: u8,
}

impl Prefix {
    /// Creates a prefix; fails if `len > 128` or `addr` has bits set past `len`.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, WireError> {
        if len > 128 {
            return Err(WireError::BadPrefix);
        }
        if u128::from(addr) & !mask(len) != 0 {
            return Err(WireError::BadPrefix);
        }
        Ok(Self { addr, len })
    }

    /// Creates a prefix, clearing any host bits of `addr`; fails only if `len > 128`.
    pub fn new_truncating(addr: Ipv6Addr, len: u8) -> Result<Self, WireError> {
        if len > 128 {
            return Err(WireError::BadPrefix);
        }
        Ok(Self {
            addr: Ipv6Addr::from(u128::from(addr) & mask(len)),
            len,
        })
    }

    /// Returns the /128 prefix holding exactly `addr`.
    pub fn host(addr: Ipv6Addr) -> Self {
        Self { addr, len: 128 }
    }

    /// Returns the network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// Returns the prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Returns true for the zero-length prefix `::/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns true if `addr` lies inside this prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask(self.len) == u128::from(self.addr)
    }

    /// Returns true if every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Returns true if the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.covers(other) || other.covers(self)
    }
}

/// Returns the netmask of a prefix of length `len` (at most 128) as a `u128`.
pub fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        1..=127 => !0u128 << (128 - u32::from(len)),
        _ => !0u128,
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Error returned when a prefix string such as `fd00::/64` does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv6 prefix {0:?}: expected ADDRESS/LENGTH with LENGTH at most 128")]
pub struct PrefixParseError(pub String);

impl FromStr for Prefix {
    type Err = PrefixParseError;

    /// Parses `ADDR/LEN`, clearing host bits as `ip route` does; a bare address is a /128.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PrefixParseError(s.to_owned());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| err())?),
            None => (s, 128),
        };
        let addr: Ipv6Addr = addr.parse().map_err(|_| err())?;
        Self::new_truncating(addr, len).map_err(|_| err())
    }
}

/// The cost of a link or of reaching a prefix, in thousandths.
///
/// Configuration uses decimal costs (`cost: 1.5`); the wire and the router use integers so
/// that path sums are exact and every node computes the same routes.
/// A configured cost of zero or less means the default, 1.0 (1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost(pub u32);

impl Cost {
    /// The default cost, 1.0.
    pub const DEFAULT: Cost = Cost(1000);

    /// Converts a configured decimal cost; non-positive or non-finite values give the default,
    /// values past the range saturate.
    pub fn from_f64(value: f64) -> Cost {
        if !value.is_finite() || value <= 0.0 {
            return Cost::DEFAULT;
        }
        let millis = (value * 1000.0).round();
        if millis >= f64::from(u32::MAX) {
            Cost(u32::MAX)
        } else {
            Cost((millis as u32).max(1))
        }
    }

    /// Returns the cost as a decimal number.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl Default for Cost {
    fn default() -> Self {
        Cost::DEFAULT
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.as_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parse_truncates_host_bits() {
        let p: Prefix = "fd00::1:1/64".parse().unwrap();
        assert_eq!(p.to_string(), "fd00::/64");
        assert!(p.contains("fd00::ffff".parse().unwrap()));
        assert!(!p.contains("fd01::".parse().unwrap()));
    }

    #[test]
    fn prefix_new_rejects_host_bits_and_long_lengths() {
        assert_eq!(
            Prefix::new("fd00::1".parse().unwrap(), 64),
            Err(WireError::BadPrefix)
        );
        assert_eq!(
            Prefix::new("fd00::".parse().unwrap(), 129),
            Err(WireError::BadPrefix)
        );
        assert!("fd00::/200".parse::<Prefix>().is_err());
    }

    #[test]
    fn covers_and_overlaps() {
        let a: Prefix = "fd00::/8".parse().unwrap();
        let b: Prefix = "fd00:1::/32".parse().unwrap();
        assert!(a.covers(&b) && !b.covers(&a) && a.overlaps(&b) && b.overlaps(&a));
        let c: Prefix = "fe80::/10".parse().unwrap();
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn cost_conversion() {
        assert_eq!(Cost::from_f64(0.0), Cost::DEFAULT);
        assert_eq!(Cost::from_f64(-3.0), Cost::DEFAULT);
        assert_eq!(Cost::from_f64(0.5), Cost(500));
        assert_eq!(Cost::from_f64(5.0).to_string(), "5.00");
    }
}
