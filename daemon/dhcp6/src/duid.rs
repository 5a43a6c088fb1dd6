//! The client's DUID (RFC 8415 §11) and IAID.

use std::fmt;

/// A DHCP Unique Identifier: made once, then saved by the driver as [`Duid::as_bytes`] and
/// read back with [`Duid::from_bytes`], so the server sees the same client after a restart
/// and hands out the same prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duid(Vec<u8>);

/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the DUID-LLT epoch (§11.2).
const DUID_EPOCH_UNIX: u64 = 946_684_800;

/// Why bytes are not a DUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuidError {
    /// Fewer than 3 or more than 130 bytes (a 2-byte type and 1..=128 bytes, §11.1).
    Length(usize),
}

impl fmt::Display for DuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DuidError::Length(n) => write!(f, "a DUID has 3 to 130 bytes, not {n}"),
        }
    }
}

impl std::error::Error for DuidError {}

impl Duid {
    /// DUID-LLT (type 1) for an Ethernet (hardware type 1) link-layer address `mac`, with the
    /// time of creation given as seconds since the Unix epoch (the driver reads the clock).
    pub fn llt(unix_secs: u64, mac: [u8; 6]) -> Duid {
        let since_2000 = unix_secs.saturating_sub(DUID_EPOCH_UNIX);
        let time = u32::try_from(since_2000 % (1 << 32)).unwrap_or(0);
        let mut b = Vec::with_capacity(14);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&time.to_be_bytes());
        b.extend_from_slice(&mac);
        Duid(b)
    }

    /// DUID-UUID (type 4, RFC 6355) from 16 random bytes, for a link without a MAC address.
    /// The version and variant bits are set as for a version-4 UUID.
    pub fn uuid(mut random: [u8; 16]) -> Duid {
        random[6] = (random[6] & 0x0f) | 0x40;
        random[8] = (random[8] & 0x3f) | 0x80;
        let mut b = Vec::with_capacity(18);
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&random);
        Duid(b)
    }

    /// A DUID read back from what [`Duid::as_bytes`] gave (any DUID type is kept as is).
    pub fn from_bytes(bytes: &[u8]) -> Result<Duid, DuidError> {
        if (3..=130).contains(&bytes.len()) {
            Ok(Duid(bytes.to_vec()))
        } else {
            Err(DuidError::Length(bytes.len()))
        }
    }

    /// The DUID as sent in the Client Identifier option and as saved.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Duid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duid({self})")
    }
}

impl fmt::Display for Duid {
    /// Colon-separated hex, as Kea and dhcpd log it (`00:01:00:01:…`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An IAID derived from the interface name (FNV-1a), so it is stable across restarts without
/// being saved.
pub fn iaid_for_interface(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
