//! Connectopus link wire format: every byte that crosses a link between two nodes.
//!
//! This crate only turns bytes into values and values into bytes.
//! It does no I/O, keeps no state, never allocates on the IPv6 data path and never panics on
//! input: every parser is total and returns a [`WireError`].
//! The byte-by-byte description lives in `docs/protocol.md`; the two must agree.
//!
//! Layout:
//! - [`addr`]: IPv6 prefixes and link costs, shared by the wire format and the router.
//! - [`message`]: link messages (raw IPv6, hello, keepalive, stream segment, control datagram,
//!   goodbye), demultiplexed by their first byte.
//! - [`record`]: records carried on the reliable per-link routing stream, and their framing.
//! - [`lsu`]: the link-state update, its canonical encoding and the signature trailer.
//! - [`offer`]: a signed mesh configuration offered to a lagging neighbour.
//! - [`lease`]: ephemeral nodes: the lease certificate and the lease messages (join, grant,
//!   renew, release, refuse).
//! - [`delegated`]: update extension kind 2, prefixes delegated to the mesh.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod addr;
mod cursor;
pub mod delegated;
pub mod lease;
pub mod lsu;
pub mod message;
pub mod offer;
pub mod record;

pub use addr::{Cost, Prefix};
pub use delegated::DelegatedPrefix;
pub use lease::{JoinProof, LeaseBody, LeaseCertificate, LeaseMessage, RefuseCode};
pub use lsu::{
    Adjacency, LinkStateUpdate, LsuExtension, NameBinding, NameBinding4, PrefixAdvert,
    SignedUpdate, UpdateSignature,
};
pub use message::{
    ControlDatagram, Goodbye, GoodbyeReason, Hello, HelloExtension, Keepalive, LinkMessage,
    MessageType, StreamSegment,
};
pub use offer::ConfigOffer;
pub use record::{Record, RecordKind, RecordLimits};

/// Version of the link protocol this crate speaks; carried in every hello.
///
/// Version 2 (this one) changed what a hello signature covers on a link without a (D)TLS
/// channel binding: the challenge the receiver sent (hello extension 3) instead of 32 zero
/// bytes. A node of version 1 and one of version 2 drop each other's hellos
/// (`UnsupportedVersion`), so they never form a session rather than fail half-way.
pub const PROTOCOL_VERSION: u8 = 2;

/// Longest node or attachment name, in bytes (one DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a buffer could not be parsed.
///
/// `Copy` and allocation-free so that the data path can count it per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer ended before the structure did.
    Truncated,
    /// Bytes were left over after a structure that must fill the buffer exactly.
    TrailingBytes,
    /// The first byte names no known message or record type.
    UnknownType,
    /// The hello or update names a protocol version this node does not speak.
    UnsupportedVersion,
    /// A name is empty, too long or contains bytes outside `[a-z0-9-]`.
    BadName,
    /// A prefix length is above 128 or the prefix has bits set past its length.
    BadPrefix,
    /// A list in a canonical encoding is unsorted or holds duplicates.
    NotCanonical,
    /// A length field disagrees with the data or exceeds a limit.
    BadLength,
    /// A field holds a value the format forbids (for example a zero session id).
    BadValue,
}

impl WireError {
    /// Returns a short, stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::UnknownType => "unknown_type",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadName => "bad_name",
            Self::BadPrefix => "bad_prefix",
            Self::NotCanonical => "not_canonical",
            Self::BadLength => "bad_length",
            Self::BadValue => "bad_value",
        }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}

/// Checks that `name` is a valid node or attachment name: 1 to 63 bytes of `[a-z0-9-]`,
/// not starting or ending with `-`.
pub fn check_name(name: &str) -> Result<(), WireError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(WireError::BadName);
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(WireError::BadName);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(WireError::BadName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordDecoder;

    /// Returns an input that makes some parser produce `err`, and that result.
    fn produce(err: WireError) -> Result<(), WireError> {
        let hello = |f: fn(&mut Vec<u8>)| {
            let mut b = Hello {
                capabilities: 0,
                session_id: 1,
                echo_session_id: 0,
                epoch: 0,
                address: std::net::Ipv6Addr::LOCALHOST,
                name: "n".to_owned(),
                extensions: Vec::new(),
            }
            .encode();
            f(&mut b);
            LinkMessage::parse(&b).map(drop)
        };
        match err {
            WireError::Truncated => LinkMessage::parse(&[]).map(drop),
            WireError::TrailingBytes => LinkMessage::parse(&[6, 1, 0]).map(drop),
            WireError::UnknownType => LinkMessage::parse(&[0x72]).map(drop),
            WireError::UnsupportedVersion => hello(|b| b[1] = 9),
            WireError::BadName => hello(|b| b[49] = b'_'),
            WireError::BadValue => hello(|b| b[15] = 0),
            WireError::BadPrefix => Prefix::new("fd00::1".parse().unwrap(), 64).map(drop),
            WireError::NotCanonical => {
                let mut u = LinkStateUpdate {
                    origin: std::net::Ipv6Addr::LOCALHOST,
                    epoch: 1,
                    sequence: 1,
                    name: "n".to_owned(),
                    config_version: 0,
                    adjacencies: Vec::new(),
                    prefixes: Vec::new(),
                    names: Vec::new(),
                    names4: Vec::new(),
                    extensions: Vec::new(),
                };
                let binding = NameBinding {
                    name: "a".to_owned(),
                    address: std::net::Ipv6Addr::LOCALHOST,
                };
                u.names = vec![binding.clone(), binding];
                LinkStateUpdate::parse_body(&u.encode_body()).map(drop)
            }
            WireError::BadLength => {
                let mut d = RecordDecoder::new(8);
                d.push(&[0, 0, 0, 9]);
                d.next_record().map(drop)
            }
        }
    }

    #[test]
    fn every_error_variant_is_produced() {
        let all = [
            WireError::Truncated,
            WireError::TrailingBytes,
            WireError::UnknownType,
            WireError::UnsupportedVersion,
            WireError::BadName,
            WireError::BadPrefix,
            WireError::NotCanonical,
            WireError::BadLength,
            WireError::BadValue,
        ];
        let mut names = std::collections::BTreeSet::new();
        for err in all {
            assert_eq!(produce(err), Err(err));
            assert_eq!(err.to_string(), err.as_str());
            assert!(names.insert(err.as_str()), "duplicate name {err}");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "a-b", "0", "node-1", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert_eq!(check_name(bad), Err(WireError::BadName), "{bad}");
        }
    }
}
