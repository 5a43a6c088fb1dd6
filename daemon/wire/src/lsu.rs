//! The link-state update: what one node says about itself, flooded through the whole mesh.
//!
//! The body has one canonical encoding (lists sorted, no duplicates, exact length), so that
//! its origin can sign the bytes and every node can flood them verbatim.
//! The [`SignedUpdate`] container wraps the body with an optional signature trailer.
//! Layouts are in `docs/protocol.md`.

use std::net::Ipv6Addr;

use crate::{Cost, Prefix, WireError};

/// Version byte at the start of every update body.
pub const LSU_VERSION: u8 = 1;

/// One node's view of itself: its live sessions, attached prefixes and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStateUpdate {
    /// Address of the node that originated the update.
    pub origin: Ipv6Addr,
    /// Origin's routing epoch; a restarted origin uses a larger one.
    pub epoch: u64,
    /// Sequence number within the epoch, starting at 1.
    pub sequence: u64,
    /// Origin's node name.
    pub name: String,
    /// Version of the mesh configuration the origin runs (0 = none).
    pub config_version: u64,
    /// Peers the origin has an established session with, sorted by peer address.
    pub adjacencies: Vec<Adjacency>,
    /// Prefixes the origin delivers locally (its `tun_devs`, namespaces, delegated prefixes),
    /// sorted by prefix.
    pub prefixes: Vec<PrefixAdvert>,
    /// Names of the origin's attachments, sorted by name.
    pub names: Vec<NameBinding>,
}

/// A directed edge from the origin to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Adjacency {
    /// The peer's node address.
    pub peer: Ipv6Addr,
    /// Cost the origin assigns to sending over this session.
    pub cost: Cost,
}

/// A prefix the origin delivers, and the cost it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixAdvert {
    /// The advertised prefix.
    pub prefix: Prefix,
    /// Cost from the origin to the prefix.
    pub cost: Cost,
}

/// A name the origin publishes for one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameBinding {
    /// The name, without the mesh domain ([`crate::check_name`]).
    pub name: String,
    /// The address it resolves to.
    pub address: Ipv6Addr,
}

impl LinkStateUpdate {
    /// Encodes the canonical body. Sorts nothing: callers build the lists sorted, and
    /// [`LinkStateUpdate::canonicalize`] does it for them.
    pub fn encode_body(&self) -> Vec<u8> {
        todo!("wire: LinkStateUpdate::encode_body")
    }

    /// Parses a canonical body; rejects unsorted or duplicate list entries with
    /// [`WireError::NotCanonical`].
    pub fn parse_body(buf: &[u8]) -> Result<Self, WireError> {
        let _ = buf;
        todo!("wire: LinkStateUpdate::parse_body")
    }

    /// Sorts the lists and removes duplicates (the first of equal peers, prefixes or names is
    /// kept), putting the update in canonical form.
    pub fn canonicalize(&mut self) {
        todo!("wire: LinkStateUpdate::canonicalize")
    }
}

/// An ed25519 signature over an update body, with the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSignature {
    /// The origin's ed25519 public key.
    pub key: [u8; 32],
    /// The signature.
    pub signature: [u8; 64],
}

/// An update as flooded: the canonical body bytes plus an optional signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedUpdate<'a> {
    /// The canonical body bytes, exactly as signed.
    pub body: &'a [u8],
    /// The origin's signature, if the mesh signs updates.
    pub signature: Option<UpdateSignature>,
}

impl<'a> SignedUpdate<'a> {
    /// Parses the container; does not parse or check the body.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let _ = buf;
        todo!("wire: SignedUpdate::parse")
    }

    /// Encodes the container.
    pub fn encode(&self) -> Vec<u8> {
        todo!("wire: SignedUpdate::encode")
    }
}
