//! Errors returned by this crate.

use std::io;

/// Why a [`ZoneConfig`](crate::ZoneConfig) was rejected or the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh domain is not a valid DNS name (or is the root).
    #[error("invalid mesh domain {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node's own name cannot be served under the domain.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// The subnet prefix length is larger than 128.
    #[error("invalid mesh subnet prefix length /{0} (must be 0..=128)")]
    InvalidPrefixLength(u8),
    /// A socket could not be prepared for the server (non-blocking mode, registration).
    #[error("preparing DNS sockets: {0}")]
    Io(#[from] io::Error),
    /// The server thread panicked (reported by [`DnsServer::stop`](crate::DnsServer::stop)),
    /// or ended while starting.
    #[error("the DNS server thread panicked")]
    ThreadPanicked,
}

/// Why a name from the name table is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty (or only dots).
    #[error("empty name")]
    Empty,
    /// A label is empty (`a..b`) or longer than 63 bytes.
    #[error("label length must be 1..=63 bytes")]
    BadLabelLength,
    /// A character other than ASCII letters, digits, `-` and `_`.
    #[error("character {0:?} is not allowed (only ASCII letters, digits, '-', '_')")]
    BadCharacter(char),
    /// `<name>.<domain>.` would be longer than 255 bytes on the wire.
    #[error("name is too long once the domain is appended")]
    TooLong,
    /// The name is the node's own name but with a different address; the node's own
    /// mapping wins (as in upstream's lookup order).
    #[error("the node's own name; its configured address wins")]
    OwnName,
}

/// Shorthand for results with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
