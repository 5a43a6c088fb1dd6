//! What the driver saves between runs (`<config>.dhcp6`, docs/dynamic-mesh.md §2.3): the DUID,
//! the IAID and the delegations with wall-clock deadlines, so that after a restart the client
//! Rebinds a still-valid prefix ([`Client::resume`](crate::Client::resume)) and the server,
//! seeing the same DUID and IAID, hands out the same one.
//!
//! Layout (big-endian): `"CPD6"`, version 1, DUID length (1) and DUID, IAID (4), the
//! delegating server's DUID length (1, 0 = none) and DUID, count (1), then per delegation prefix (16), length (1), preferred-until and valid-until in Unix
//! milliseconds (8 each).

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::Time;

use crate::client::{Delegation, Lease, Prefix};
use crate::duid::Duid;

const MAGIC: &[u8; 4] = b"CPD6";
const VERSION: u8 = 1;

/// A delegation with its deadlines on the wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDelegation {
    /// The prefix.
    pub prefix: Prefix,
    /// When it stops being preferred, in Unix milliseconds.
    pub preferred_until_unix_ms: u64,
    /// When it must no longer be used, in Unix milliseconds.
    pub valid_until_unix_ms: u64,
}

/// The client's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdState {
    /// The DUID, made once.
    pub duid: Duid,
    /// The IAID.
    pub iaid: u32,
    /// The DUID of the server that delegated them (empty when none), so a restarted client
    /// can Release them.
    pub server_id: Vec<u8>,
    /// The last delegations (empty after a Release or an expiry).
    pub delegations: Vec<SavedDelegation>,
}

/// Why saved bytes are not a [`PdState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Not starting with `CPD6`.
    Magic,
    /// A version this build does not know.
    Version(u8),
    /// The bytes end early, or continue past the last delegation.
    Length,
    /// A DUID (ours, or the server's) is not 3..=130 bytes.
    Duid,
    /// A prefix length above 128.
    PrefixLength(u8),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Magic => f.write_str("not a DHCPv6 state file (no CPD6 header)"),
            StateError::Version(v) => write!(f, "unknown DHCPv6 state version {v}"),
            StateError::Length => f.write_str("DHCPv6 state truncated or with trailing bytes"),
            StateError::Duid => f.write_str("DHCPv6 state holds an invalid DUID"),
            StateError::PrefixLength(l) => write!(f, "DHCPv6 state holds a /{l} prefix"),
        }
    }
}

impl std::error::Error for StateError {}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PdState {
    /// The state to save while holding `lease` (empty `delegations` for `None`); `now` and
    /// `now_unix_ms` are the same instant on the client's clock and on the wall clock.
    pub fn new(
        duid: Duid,
        iaid: u32,
        lease: Option<&Lease>,
        now: Time,
        now_unix_ms: u64,
    ) -> PdState {
        let wall = |t: Time| now_unix_ms.saturating_add(ms(t.saturating_since(now)));
        PdState {
            duid,
            iaid,
            server_id: lease.map(|l| l.server_id.clone()).unwrap_or_default(),
            delegations: lease
                .iter()
                .flat_map(|l| l.delegations.iter())
                .map(|d| SavedDelegation {
                    prefix: d.prefix,
                    preferred_until_unix_ms: wall(d.preferred_until),
                    valid_until_unix_ms: wall(d.valid_until),
                })
                .collect(),
        }
    }

    /// The saved delegations on the client's clock (`now` is `now_unix_ms`), with what is left
    /// of their lifetimes; for [`Client::resume`](crate::Client::resume), which drops the
    /// ones already over.
    pub fn delegations_at(&self, now: Time, now_unix_ms: u64) -> Vec<Delegation> {
        self.delegations
            .iter()
            .map(|d| {
                let left = |until: u64| Duration::from_millis(until.saturating_sub(now_unix_ms));
                Delegation {
                    prefix: d.prefix,
                    preferred: left(d.preferred_until_unix_ms),
                    valid: left(d.valid_until_unix_ms),
                    preferred_until: now + left(d.preferred_until_unix_ms),
                    valid_until: now + left(d.valid_until_unix_ms),
                }
            })
            .collect()
    }

    /// The bytes to save.
    pub fn encode(&self) -> Vec<u8> {
        let duid = self.duid.as_bytes();
        let mut out = Vec::with_capacity(11 + duid.len() + 33 * self.delegations.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        // A DUID is at most 130 bytes (checked by `Duid`).
        out.push(u8::try_from(duid.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(duid);
        out.extend_from_slice(&self.iaid.to_be_bytes());
        // A server DUID longer than 130 bytes is not kept (and was never valid).
        let server_id = if self.server_id.len() <= 130 {
            &self.server_id[..]
        } else {
            &[]
        };
        out.push(u8::try_from(server_id.len()).unwrap_or(0));
        out.extend_from_slice(server_id);
        let saved = &self.delegations[..self.delegations.len().min(255)];
        out.push(u8::try_from(saved.len()).unwrap_or(u8::MAX));
        for d in saved {
            out.extend_from_slice(&d.prefix.addr.octets());
            out.push(d.prefix.len);
            out.extend_from_slice(&d.preferred_until_unix_ms.to_be_bytes());
            out.extend_from_slice(&d.valid_until_unix_ms.to_be_bytes());
        }
        out
    }

    /// Reads saved bytes back; any damage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<PdState, StateError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(StateError::Magic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(StateError::Version(version));
        }
        let duid_len = usize::from(r.u8()?);
        let duid = Duid::from_bytes(r.take(duid_len)?).map_err(|_| StateError::Duid)?;
        let iaid = u32::from_be_bytes(r.array()?);
        let server_len = usize::from(r.u8()?);
        if server_len > 130 {
            return Err(StateError::Duid);
        }
        let server_id = r.take(server_len)?.to_vec();
        let count = r.u8()?;
        let mut delegations = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let addr = Ipv6Addr::from(r.array::<16>()?);
            let len = r.u8()?;
            if len > 128 {
                return Err(StateError::PrefixLength(len));
            }
            delegations.push(SavedDelegation {
                prefix: Prefix::new(addr, len),
                preferred_until_unix_ms: u64::from_be_bytes(r.array()?),
                valid_until_unix_ms: u64::from_be_bytes(r.array()?),
            });
        }
        if !r.0.is_empty() {
            return Err(StateError::Length);
        }
        Ok(PdState {
            duid,
            iaid,
            server_id,
            delegations,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let head = self.0.get(..n).ok_or(StateError::Length)?;
        self.0 = self.0.get(n..).ok_or(StateError::Length)?;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(*self.take(1)?.first().ok_or(StateError::Length)?)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        self.take(N)?.try_into().map_err(|_| StateError::Length)
    }
}
