//! Node identity: the key a node signs with, and the policy that says which keys may be who.
//!
//! A node holds one ed25519 [`NodeKey`], made by the driver from a 32-byte seed (the private key
//! file). With a key, the node signs its hellos (binding the key to the link's channel and to the
//! session) and its link-state updates. A [`TrustPolicy`], built by the driver from the signed
//! mesh configuration, lists for every authorised public key the [`Grant`] it holds: the node
//! address and name it may use, the prefixes it may originate and the attachment names it may
//! publish; and the keys that are revoked. The node checks every hello and every update against
//! it. The signed messages are defined byte by byte in `docs/protocol.md` ("Node identity").

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use connectopus_wire::{LinkStateUpdate, Prefix, SignedUpdate, UpdateSignature};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

mod certificate;

pub use certificate::{CertificateError, Claim, Issuer, sign_certificate};

/// Prefix of the message a hello signature covers.
pub const HELLO_LABEL: &[u8] = b"connectopus-hello-v1\0";

/// Prefix of the message an update signature covers.
pub const LSU_LABEL: &[u8] = b"connectopus-lsu-v1\0";

/// A public node key: 32 bytes of ed25519 public key.
pub type PublicKey = [u8; 32];

/// A node's ed25519 signing key.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
    public: PublicKey,
}

impl NodeKey {
    /// Creates the key whose 32-byte ed25519 seed (secret key) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = signing.verifying_key().to_bytes();
        Self { signing, public }
    }

    /// Returns the public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Signs `message` as it is (the caller adds the label).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl core::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the secret half.
        f.debug_struct("NodeKey")
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

/// What the mesh configuration allows one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The node name the key may use in hellos and updates.
    pub name: String,
    /// The node address the key may use.
    pub address: Ipv6Addr,
    /// Prefixes the node may advertise and bind attachment names into, besides its own /128
    /// (the driver lists delegated prefixes and the /128s of its TUN devices here, and its
    /// IPv4 addresses as IPv4-mapped /128s).
    pub prefixes: Vec<Prefix>,
    /// Attachment names the node may publish.
    pub names: Vec<String>,
    /// The pools the node issues leases from (`nodes.<name>.issue.prefix`): it signs lease
    /// certificates for their addresses, and may advertise /128s inside them and bind names to
    /// them (its containers) under any name that is not reserved.
    pub issue_pools: Vec<Prefix>,
}

impl Grant {
    /// Returns a grant for `name` at `address`, with no prefixes and no attachment names.
    pub fn new(name: impl Into<String>, address: Ipv6Addr) -> Self {
        Self {
            name: name.into(),
            address,
            prefixes: Vec::new(),
            names: Vec::new(),
            issue_pools: Vec::new(),
        }
    }

    /// Returns true if the node may originate `prefix`: it is its own /128, lies inside one of
    /// the granted prefixes, or is a /128 inside one of its issue pools.
    pub fn allows_prefix(&self, prefix: &Prefix) -> bool {
        *prefix == Prefix::host(self.address)
            || self.prefixes.iter().any(|p| p.covers(prefix))
            || (prefix.len() == 128 && self.in_issue_pool(prefix.addr()))
    }

    /// Returns true if `address` lies inside one of the node's issue pools.
    pub fn in_issue_pool(&self, address: Ipv6Addr) -> bool {
        self.issue_pools.iter().any(|p| p.contains(address))
    }

    /// Returns true if `address` is the node's own or lies inside one of its granted prefixes.
    pub fn allows_address(&self, address: Ipv6Addr) -> bool {
        address == self.address || self.prefixes.iter().any(|p| p.contains(address))
    }

    /// Returns why `update` (already known to come from this grant's key) may not be accepted,
    /// or `None` if everything it claims is granted: its name, every advertised prefix, and every
    /// attachment name with its address (a granted name, or inside an issue pool any name not in
    /// `reserved_names`).
    pub fn check_update(
        &self,
        update: &LinkStateUpdate,
        reserved_names: &BTreeSet<String>,
    ) -> Option<&'static str> {
        if update.origin != self.address || update.name != self.name {
            return Some("name");
        }
        if !update
            .prefixes
            .iter()
            .all(|p| self.allows_prefix(&p.prefix))
        {
            return Some("prefix");
        }
        let names_ok = update.names.iter().all(|b| {
            (self.names.contains(&b.name) && self.allows_address(b.address))
                || (self.in_issue_pool(b.address) && !reserved_names.contains(&b.name))
        });
        // IPv4 names: the node's own name or a granted attachment name, at an IPv4 address the
        // grant covers as an IPv4-mapped prefix.
        let names4_ok = update.names4.iter().all(|b| {
            (b.name == self.name || self.names.contains(&b.name))
                && self
                    .prefixes
                    .iter()
                    .any(|p| p.contains(b.address.to_ipv6_mapped()))
        });
        if !names_ok || !names4_ok {
            return Some("attachment_name");
        }
        None
    }
}

/// Which keys may join the mesh, as whom; and which are revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Every authorised key and what it may claim.
    pub grants: BTreeMap<PublicKey, Grant>,
    /// Keys that are refused even if granted.
    pub revoked: BTreeSet<PublicKey>,
    /// Names no ephemeral node and no issuer's container may use: every static node's and
    /// every attachment's (`tun_devs`, `namespaces`).
    pub reserved_names: BTreeSet<String>,
}

impl TrustPolicy {
    /// Returns an empty policy (trusts nobody).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the grant of `key`; returns the policy, for chaining.
    pub fn with_grant(mut self, key: PublicKey, grant: Grant) -> Self {
        self.grants.insert(key, grant);
        self
    }

    /// Marks `key` revoked; returns the policy, for chaining.
    pub fn with_revoked(mut self, key: PublicKey) -> Self {
        self.revoked.insert(key);
        self
    }

    /// Returns the grant of `key`, or `None` if it has none or is revoked.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Grant> {
        if self.revoked.contains(key) {
            return None;
        }
        self.grants.get(key)
    }

    /// Returns the key granted `address` and its grant, or `None` if no unrevoked key is, or if
    /// more than one is (an ambiguous configuration grants the address to nobody).
    ///
    /// Scans every grant; the node keeps an index instead.
    pub fn by_address(&self, address: Ipv6Addr) -> Option<(PublicKey, &Grant)> {
        let mut found = None;
        for (key, grant) in &self.grants {
            if grant.address == address && !self.revoked.contains(key) {
                if found.is_some() {
                    return None;
                }
                found = Some((*key, grant));
            }
        }
        found
    }

    /// Builds the address index the node uses for [`TrustPolicy::by_address`].
    pub(crate) fn address_index(&self) -> BTreeMap<Ipv6Addr, Option<PublicKey>> {
        let mut index: BTreeMap<Ipv6Addr, Option<PublicKey>> = BTreeMap::new();
        for (key, grant) in &self.grants {
            if self.revoked.contains(key) {
                continue;
            }
            index
                .entry(grant.address)
                .and_modify(|k| *k = None)
                .or_insert(Some(*key));
        }
        index
    }
}

/// Builds the message a hello signature covers: [`HELLO_LABEL`], the channel binding (the
/// link's exporter value, or on a link without one the challenge the receiver sent), the
/// sender's session id and epoch (big-endian), its address, and its name with a length byte.
pub fn hello_message(
    channel_binding: &[u8; 32],
    session_id: u64,
    epoch: u64,
    address: Ipv6Addr,
    name: &str,
) -> Vec<u8> {
    let name = name.as_bytes();
    let name = name.get(..usize::from(u8::MAX)).unwrap_or(name);
    let mut m = Vec::with_capacity(HELLO_LABEL.len() + 32 + 8 + 8 + 16 + 1 + name.len());
    m.extend_from_slice(HELLO_LABEL);
    m.extend_from_slice(channel_binding);
    m.extend_from_slice(&session_id.to_be_bytes());
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&address.octets());
    m.push(name.len() as u8);
    m.extend_from_slice(name);
    m
}

/// Prefix of the PRF input of a hello challenge.
const CHALLENGE_LABEL: &[u8] = b"connectopus-challenge-v1\0";

/// Returns the `n`th hello challenge of a node whose challenge secret is `secret`: the first 32
/// bytes of SHA-512 over a label, the secret and `n` (big-endian). Unpredictable without the
/// secret, and never repeated while `n` grows.
pub fn challenge(secret: &[u8; 32], n: u64) -> [u8; 32] {
    use sha2::{Digest, Sha512};
    let digest = Sha512::new()
        .chain_update(CHALLENGE_LABEL)
        .chain_update(secret)
        .chain_update(n.to_be_bytes())
        .finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest[..32]);
    out
}

/// Derives a challenge secret from a simulator seed. Predictable by design: drivers use the
/// operating system's random generator instead.
pub fn derive_secret(seed: u64) -> [u8; 32] {
    challenge(&[0; 32], seed)
}

/// Builds the message an update signature covers: [`LSU_LABEL`] followed by the body.
pub fn update_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LSU_LABEL.len() + body.len());
    m.extend_from_slice(LSU_LABEL);
    m.extend_from_slice(body);
    m
}

/// Encodes the signed-update container for `body`, signed by `key` (unsigned without one).
pub fn sign_update(key: Option<&NodeKey>, body: &[u8]) -> Vec<u8> {
    SignedUpdate {
        body,
        signature: key.map(|k| UpdateSignature {
            key: k.public(),
            signature: k.sign(&update_message(body)),
        }),
    }
    .encode()
}

/// Returns true if `signature` is `key`'s valid signature over `message` under the strict rules
/// (no small-order keys, canonical encodings; `verify_strict`).
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}

/// Formats a key as lowercase hex.
pub fn hex(key: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(key.len() * 2);
    for b in key {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed(&[n; 32])
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let k = key(1);
        let m = hello_message(&[7; 32], 5, 1, "fd00::1".parse().unwrap(), "a");
        let sig = k.sign(&m);
        assert!(verify(&k.public(), &m, &sig));
        assert!(!verify(&key(2).public(), &m, &sig));
        let other = hello_message(&[8; 32], 5, 1, "fd00::1".parse().unwrap(), "a");
        assert!(!verify(&k.public(), &other, &sig));
        // A hello signature is not an update signature over the same bytes.
        assert!(!verify(&k.public(), &update_message(&m), &sig));
    }

    #[test]
    fn hello_message_layout() {
        let m = hello_message(&[0xab; 32], 0x0102, 3, "fd00::9".parse().unwrap(), "hub");
        assert_eq!(&m[..21], b"connectopus-hello-v1\0");
        assert_eq!(&m[21..53], &[0xab; 32]);
        assert_eq!(&m[53..61], &0x0102u64.to_be_bytes());
        assert_eq!(&m[61..69], &3u64.to_be_bytes());
        assert_eq!(m[69], 0xfd);
        assert_eq!(m[84], 9);
        assert_eq!(m[85], 3);
        assert_eq!(&m[86..], b"hub");
        assert_eq!(&update_message(b"xy")[..], b"connectopus-lsu-v1\0xy");
    }

    #[test]
    fn address_lookup_ignores_revoked_and_ambiguous_grants() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        let p = TrustPolicy::new()
            .with_grant([1; 32], Grant::new("a", a))
            .with_grant([2; 32], Grant::new("b", b));
        assert_eq!(p.by_address(a).map(|(k, _)| k), Some([1; 32]));
        assert_eq!(p.address_index()[&a], Some([1; 32]));
        let revoked = p.clone().with_revoked([1; 32]);
        assert!(revoked.by_address(a).is_none());
        assert!(revoked.by_key(&[1; 32]).is_none());
        assert!(!revoked.address_index().contains_key(&a));
        let twice = p.with_grant([3; 32], Grant::new("a2", a));
        assert!(twice.by_address(a).is_none());
        assert_eq!(twice.address_index()[&a], None);
    }

    #[test]
    fn grants_bound_prefixes_and_names() {
        let mut g = Grant::new("hub", "fd00::1".parse().unwrap());
        g.prefixes.push("fd00:100::/72".parse().unwrap());
        assert!(g.allows_prefix(&"fd00::1/128".parse().unwrap()));
        assert!(g.allows_prefix(&"fd00:100::5/128".parse().unwrap()));
        assert!(!g.allows_prefix(&"fd00:100::/64".parse().unwrap()));
        assert!(!g.allows_prefix(&"fd00::2/128".parse().unwrap()));
        assert!(g.allows_address("fd00:100::7".parse().unwrap()));
        assert!(!g.allows_address("fd00::2".parse().unwrap()));
        assert!(format!("{:?}", key(1)).contains("public"));
    }
}
