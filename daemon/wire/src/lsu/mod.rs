//! The link-state update: what one node says about itself, flooded through the whole mesh.
//!
//! The body has one canonical encoding (lists sorted, no duplicates, exact length), so that
//! its origin can sign the bytes and every node can flood them verbatim.
//! The [`SignedUpdate`] container wraps the body with an optional signature trailer.
//! Layouts are in `docs/protocol.md`.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::cursor::{Reader, put_name};
use crate::{Cost, Prefix, WireError};

/// Version byte of an update body without IPv4 names (identical to the first version).
pub const LSU_VERSION: u8 = 1;

/// Version byte of an update body that ends with an IPv4 name list ([`NameBinding4`]). Bodies
/// are encoded as version 1 whenever that list is empty, so a mesh without IPv4 floods exactly
/// the bytes it always did; nodes that only know version 1 reject version 2 bodies.
pub const LSU_VERSION_IPV4: u8 = 2;

/// Version byte of an update body that ends with the IPv4 name list (which may then be empty)
/// and an extension list ([`LsuExtension`]). Bodies are encoded as version 1 or 2 whenever
/// there are no extensions, so a mesh without ephemeral nodes or delegated prefixes floods
/// exactly the bytes it always did.
pub const LSU_VERSION_EXTENDED: u8 = 3;

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
    /// IPv4 addresses of the origin's names (A records), sorted by name; empty in a mesh
    /// without IPv4. IPv4 prefixes travel in `prefixes` as IPv4-mapped IPv6 prefixes
    /// (`::ffff:a.b.c.d/(96+n)`).
    pub names4: Vec<NameBinding4>,
    /// Typed extensions (version 3), sorted by kind, each kind at most once. Unknown kinds are
    /// kept (they are signed and flooded verbatim) and ignored.
    pub extensions: Vec<LsuExtension>,
}

/// One typed extension of a version-3 update.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LsuExtension {
    /// What the value is: [`LsuExtension::LEASE_CERTIFICATE`], [`LsuExtension::DELEGATED_PREFIXES`]
    /// or a kind this version does not know.
    pub kind: u8,
    /// The raw value, at most 65535 bytes.
    pub value: Vec<u8>,
}

impl LsuExtension {
    /// The origin's lease certificate ([`crate::LeaseCertificate`]); only an ephemeral origin
    /// sends it, for its own address.
    pub const LEASE_CERTIFICATE: u8 = 1;
    /// Prefixes delegated to the mesh ([`crate::lease::DelegatedPrefix`] list); only nodes
    /// named in `global.delegated` send it.
    pub const DELEGATED_PREFIXES: u8 = 2;
}

/// An IPv4 address the origin publishes for one of its names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameBinding4 {
    /// The name, without the mesh domain ([`crate::check_name`]).
    pub name: String,
    /// The IPv4 address it resolves to.
    pub address: Ipv4Addr,
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
    ///
    /// The names should pass [`crate::check_name`]; a list longer than `u32::MAX` entries is
    /// cut to fit its count field.
    pub fn encode_body(&self) -> Vec<u8> {
        let names_len: usize = self.names.iter().map(|n| 17 + n.name.len()).sum::<usize>()
            + self.names4.iter().map(|n| 5 + n.name.len()).sum::<usize>()
            + self
                .extensions
                .iter()
                .map(|e| 3 + e.value.len())
                .sum::<usize>()
            + 12;
        let mut out = Vec::with_capacity(
            Self::FIXED_LEN
                + self.name.len()
                + 12
                + ADJACENCY_LEN * self.adjacencies.len()
                + PREFIX_LEN * self.prefixes.len()
                + names_len,
        );
        out.push(self.version());
        out.extend_from_slice(&self.origin.octets());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.config_version.to_be_bytes());
        put_name(&mut out, &self.name);
        for adj in put_count(&mut out, &self.adjacencies) {
            out.extend_from_slice(&adj.peer.octets());
            out.extend_from_slice(&adj.cost.0.to_be_bytes());
        }
        for p in put_count(&mut out, &self.prefixes) {
            out.extend_from_slice(&p.prefix.addr().octets());
            out.push(p.prefix.len());
            out.extend_from_slice(&p.cost.0.to_be_bytes());
        }
        for n in put_count(&mut out, &self.names) {
            put_name(&mut out, &n.name);
            out.extend_from_slice(&n.address.octets());
        }
        if !self.names4.is_empty() || !self.extensions.is_empty() {
            for n in put_count(&mut out, &self.names4) {
                put_name(&mut out, &n.name);
                out.extend_from_slice(&n.address.octets());
            }
        }
        if !self.extensions.is_empty() {
            for e in put_count(&mut out, &self.extensions) {
                let value = crate::cursor::fit(&e.value, usize::from(u16::MAX));
                out.push(e.kind);
                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        out
    }

    /// Returns the version byte this update encodes as: the lowest that can carry its content.
    pub fn version(&self) -> u8 {
        if !self.extensions.is_empty() {
            LSU_VERSION_EXTENDED
        } else if !self.names4.is_empty() {
            LSU_VERSION_IPV4
        } else {
            LSU_VERSION
        }
    }

    /// Returns the value of the extension of `kind`, if the update carries one.
    pub fn extension(&self, kind: u8) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.value.as_slice())
    }

    /// Returns the origin's lease certificate (extension kind 1): `None` without one, an error
    /// if its value does not parse.
    pub fn lease_certificate(&self) -> Option<Result<crate::LeaseCertificate, WireError>> {
        self.extension(LsuExtension::LEASE_CERTIFICATE)
            .map(crate::LeaseCertificate::parse)
    }

    /// Parses a canonical body; rejects unsorted or duplicate list entries with
    /// [`WireError::NotCanonical`].
    pub fn parse_body(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if !matches!(
            version,
            LSU_VERSION | LSU_VERSION_IPV4 | LSU_VERSION_EXTENDED
        ) {
            return Err(WireError::UnsupportedVersion);
        }
        let origin = r.ipv6()?;
        let epoch = r.u64()?;
        let sequence = r.u64()?;
        let config_version = r.u64()?;
        let name = r.name()?;

        let n = read_count(&mut r, ADJACENCY_LEN)?;
        let mut adjacencies: Vec<Adjacency> = Vec::with_capacity(n);
        for _ in 0..n {
            let adj = Adjacency {
                peer: r.ipv6()?,
                cost: Cost(r.u32()?),
            };
            if adjacencies.last().is_some_and(|prev| prev.peer >= adj.peer) {
                return Err(WireError::NotCanonical);
            }
            adjacencies.push(adj);
        }

        let n = read_count(&mut r, PREFIX_LEN)?;
        let mut prefixes: Vec<PrefixAdvert> = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = r.ipv6()?;
            let len = r.u8()?;
            let advert = PrefixAdvert {
                prefix: Prefix::new(addr, len)?,
                cost: Cost(r.u32()?),
            };
            if prefixes
                .last()
                .is_some_and(|prev| prev.prefix >= advert.prefix)
            {
                return Err(WireError::NotCanonical);
            }
            prefixes.push(advert);
        }

        let n = read_count(&mut r, MIN_NAME_BINDING_LEN)?;
        let mut names: Vec<NameBinding> = Vec::with_capacity(n);
        for _ in 0..n {
            let binding = NameBinding {
                name: r.name()?,
                address: r.ipv6()?,
            };
            if names.last().is_some_and(|prev| prev.name >= binding.name) {
                return Err(WireError::NotCanonical);
            }
            names.push(binding);
        }

        let mut names4: Vec<NameBinding4> = Vec::new();
        if version != LSU_VERSION {
            let n = read_count(&mut r, MIN_NAME_BINDING4_LEN)?;
            // Version 2 exists to carry IPv4 names: an empty list must be version 1.
            if n == 0 && version == LSU_VERSION_IPV4 {
                return Err(WireError::NotCanonical);
            }
            names4.reserve(n);
            for _ in 0..n {
                let binding = NameBinding4 {
                    name: r.name()?,
                    address: Ipv4Addr::from(r.array::<4>()?),
                };
                if names4.last().is_some_and(|prev| prev.name >= binding.name) {
                    return Err(WireError::NotCanonical);
                }
                names4.push(binding);
            }
        }

        let mut extensions: Vec<LsuExtension> = Vec::new();
        if version == LSU_VERSION_EXTENDED {
            let n = read_count(&mut r, MIN_EXTENSION_LEN)?;
            // Version 3 exists to carry extensions: an empty list must be version 1 or 2.
            if n == 0 {
                return Err(WireError::NotCanonical);
            }
            for _ in 0..n {
                let kind = r.u8()?;
                let len = r.u16()?;
                let value = r.take(usize::from(len))?.to_vec();
                if extensions.last().is_some_and(|prev| prev.kind >= kind) {
                    return Err(WireError::NotCanonical);
                }
                extensions.push(LsuExtension { kind, value });
            }
        }

        r.finish()?;
        Ok(Self {
            origin,
            epoch,
            sequence,
            name,
            config_version,
            adjacencies,
            prefixes,
            names,
            names4,
            extensions,
        })
    }

    /// Sorts the lists and removes duplicates (the first of equal peers, prefixes or names is
    /// kept), putting the update in canonical form.
    pub fn canonicalize(&mut self) {
        // Stable sorts keep equal keys in their original order, so `dedup` keeps the first.
        self.adjacencies.sort_by_key(|a| a.peer);
        self.adjacencies.dedup_by_key(|a| a.peer);
        self.prefixes.sort_by_key(|p| p.prefix);
        self.prefixes.dedup_by_key(|p| p.prefix);
        self.names.sort_by(|a, b| a.name.cmp(&b.name));
        self.names
            .dedup_by(|later, earlier| later.name == earlier.name);
        self.names4.sort_by(|a, b| a.name.cmp(&b.name));
        self.names4
            .dedup_by(|later, earlier| later.name == earlier.name);
        self.extensions.sort_by_key(|e| e.kind);
        self.extensions.dedup_by_key(|e| e.kind);
    }

    /// Returns true if every list is strictly ascending by its key, as the wire requires.
    pub fn is_canonical(&self) -> bool {
        self.adjacencies.is_sorted_by(|a, b| a.peer < b.peer)
            && self.prefixes.is_sorted_by(|a, b| a.prefix < b.prefix)
            && self.names.is_sorted_by(|a, b| a.name < b.name)
            && self.names4.is_sorted_by(|a, b| a.name < b.name)
            && self.extensions.is_sorted_by(|a, b| a.kind < b.kind)
    }

    /// Size of the fixed part, up to and including the name length byte.
    const FIXED_LEN: usize = 42;
}

/// Size of one adjacency entry: peer address and cost.
const ADJACENCY_LEN: usize = 16 + 4;
/// Size of one prefix entry: address, length and cost.
const PREFIX_LEN: usize = 16 + 1 + 4;
/// Smallest name entry: length byte, a one-byte name and the address.
const MIN_NAME_BINDING_LEN: usize = 1 + 1 + 16;
/// Smallest IPv4 name entry: length byte, a one-byte name and the address.
const MIN_NAME_BINDING4_LEN: usize = 1 + 1 + 4;
/// Smallest extension entry: kind and length with an empty value.
const MIN_EXTENSION_LEN: usize = 1 + 2;

/// Reads a list count and checks that the rest of the buffer can hold that many entries of at
/// least `entry_len` bytes, so a lying count cannot make the parser allocate.
fn read_count(r: &mut Reader<'_>, entry_len: usize) -> Result<usize, WireError> {
    let n = usize::try_from(r.u32()?).map_err(|_| WireError::Truncated)?;
    match n.checked_mul(entry_len) {
        Some(need) if need <= r.remaining() => Ok(n),
        _ => Err(WireError::Truncated),
    }
}

/// Writes a list count (at most `u32::MAX`) and returns the entries it covers.
fn put_count<'a, T>(out: &mut Vec<u8>, list: &'a [T]) -> &'a [T] {
    let list = list.get(..u32::MAX as usize).unwrap_or(list);
    out.extend_from_slice(&(list.len() as u32).to_be_bytes());
    list
}

/// An ed25519 signature over an update body, with the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSignature {
    /// The origin's ed25519 public key.
    pub key: [u8; 32],
    /// The signature.
    pub signature: [u8; 64],
}

/// Signature kind byte: no signature follows.
const SIG_NONE: u8 = 0;
/// Signature kind byte: an ed25519 key (32 bytes) and signature (64 bytes) follow.
const SIG_ED25519: u8 = 1;

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
        let mut r = Reader::new(buf);
        let body_len = usize::try_from(r.u32()?).map_err(|_| WireError::Truncated)?;
        let body = r.take(body_len)?;
        let signature = match r.u8()? {
            SIG_NONE => None,
            SIG_ED25519 => Some(UpdateSignature {
                key: r.array()?,
                signature: r.array()?,
            }),
            _ => return Err(WireError::BadValue),
        };
        r.finish()?;
        Ok(Self { body, signature })
    }

    /// Encodes the container.
    ///
    /// A body longer than `u32::MAX` bytes is cut to fit the length field.
    pub fn encode(&self) -> Vec<u8> {
        let body = crate::cursor::fit(self.body, u32::MAX as usize);
        let mut out = Vec::with_capacity(4 + body.len() + 1 + 96);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        match &self.signature {
            None => out.push(SIG_NONE),
            Some(sig) => {
                out.push(SIG_ED25519);
                out.extend_from_slice(&sig.key);
                out.extend_from_slice(&sig.signature);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
