//! Update extension kind 2: prefixes delegated to the mesh (by DHCPv6 prefix delegation),
//! sent only by nodes named in `global.delegated`. Layout in `docs/protocol.md`.

use crate::cursor::Reader;
use crate::{Prefix, WireError};

/// Flags bit 0: the prefix is being renumbered away (hosts stop preferring it).
const FLAG_DEPRECATED: u8 = 1;

/// One delegated prefix as its delegating node advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DelegatedPrefix {
    /// The delegated prefix.
    pub prefix: Prefix,
    /// The prefix is deprecated (renumbering away from it).
    pub deprecated: bool,
    /// Preferred lifetime left at origination, in milliseconds.
    pub preferred_ms: u32,
    /// Valid lifetime left at origination, in milliseconds.
    pub valid_ms: u32,
}

/// Size of one entry.
const ENTRY_LEN: usize = 16 + 1 + 1 + 4 + 4;

/// Encodes a list sorted by prefix (at most 255 entries; more are cut).
pub fn encode_delegated(list: &[DelegatedPrefix]) -> Vec<u8> {
    let list = list.get(..usize::from(u8::MAX)).unwrap_or(list);
    let mut out = Vec::with_capacity(1 + ENTRY_LEN * list.len());
    out.push(list.len() as u8);
    for d in list {
        out.extend_from_slice(&d.prefix.addr().octets());
        out.push(d.prefix.len());
        out.push(if d.deprecated { FLAG_DEPRECATED } else { 0 });
        out.extend_from_slice(&d.preferred_ms.to_be_bytes());
        out.extend_from_slice(&d.valid_ms.to_be_bytes());
    }
    out
}

/// Parses a list that fills `buf` exactly; entries must be in strictly ascending prefix order
/// and carry no unknown flag bits.
pub fn parse_delegated(buf: &[u8]) -> Result<Vec<DelegatedPrefix>, WireError> {
    let mut r = Reader::new(buf);
    let n = usize::from(r.u8()?);
    if n * ENTRY_LEN > r.remaining() {
        return Err(WireError::Truncated);
    }
    let mut out: Vec<DelegatedPrefix> = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = r.ipv6()?;
        let len = r.u8()?;
        let prefix = Prefix::new(addr, len)?;
        let flags = r.u8()?;
        if flags & !FLAG_DEPRECATED != 0 {
            return Err(WireError::BadValue);
        }
        let entry = DelegatedPrefix {
            prefix,
            deprecated: flags & FLAG_DEPRECATED != 0,
            preferred_ms: r.u32()?,
            valid_ms: r.u32()?,
        };
        if out.last().is_some_and(|prev| prev.prefix >= entry.prefix) {
            return Err(WireError::NotCanonical);
        }
        out.push(entry);
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_and_refusals() {
        let list = [
            DelegatedPrefix {
                prefix: "2001:db8:100::/56".parse().unwrap(),
                deprecated: true,
                preferred_ms: 0,
                valid_ms: 40_000,
            },
            DelegatedPrefix {
                prefix: "2001:db8:200::/56".parse().unwrap(),
                deprecated: false,
                preferred_ms: 30_000,
                valid_ms: 40_000,
            },
        ];
        let mut want = vec![2];
        want.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        want.extend_from_slice(&[56, 1, 0, 0, 0, 0, 0, 0, 0x9c, 0x40]);
        want.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        want.extend_from_slice(&[56, 0, 0, 0, 0x75, 0x30, 0, 0, 0x9c, 0x40]);
        assert_eq!(encode_delegated(&list), want);
        assert_eq!(parse_delegated(&want).unwrap(), list);
        let mut swapped = vec![2];
        swapped.extend_from_slice(&want[1 + ENTRY_LEN..]);
        swapped.extend_from_slice(&want[1..1 + ENTRY_LEN]);
        assert_eq!(parse_delegated(&swapped), Err(WireError::NotCanonical));
        let mut flags = want.clone();
        flags[18] = 3;
        assert_eq!(parse_delegated(&flags), Err(WireError::BadValue));
        let mut host_bits = want.clone();
        host_bits[10] = 1;
        assert_eq!(parse_delegated(&host_bits), Err(WireError::BadPrefix));
        assert_eq!(parse_delegated(&[3]), Err(WireError::Truncated));
        assert_eq!(parse_delegated(&[0, 0]), Err(WireError::TrailingBytes));
        assert_eq!(parse_delegated(&[0]).unwrap(), []);
    }

    proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(list) = parse_delegated(&buf) {
                prop_assert_eq!(encode_delegated(&list), buf);
            }
        }
    }
}
