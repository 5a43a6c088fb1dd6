//! Ephemeral nodes on the wire: the lease certificate an issuer signs, and the lease messages
//! (record kind 3, or a control datagram to mesh port 0) by which a node joins, renews and
//! releases an address.
//!
//! Layouts are in `docs/protocol.md` ("Ephemeral nodes"); the design is `docs/dynamic-mesh.md`.
//! Every structure has one encoding: parsers refuse anything that would not re-encode to the
//! same bytes.

use std::net::Ipv6Addr;

use crate::WireError;
use crate::cursor::{Reader, fit, put_name};

/// Version byte of a lease certificate.
pub const CERTIFICATE_VERSION: u8 = 1;

/// Label of the issuer's signature over a certificate.
pub const CERTIFICATE_LABEL: &[u8] = b"connectopus-lease-v1\0";
/// Label of a join-key proof in a Join.
pub const JOIN_LABEL: &[u8] = b"connectopus-join-v1\0";
/// Label of the holder's signature in a Renew.
pub const RENEW_LABEL: &[u8] = b"connectopus-renew-v1\0";
/// Label of the holder's signature in a Release.
pub const RELEASE_LABEL: &[u8] = b"connectopus-release-v1\0";

/// Largest lease message a receiver takes (record kind 3 limit).
pub const MAX_LEASE_MESSAGE_LEN: usize = 4096;

/// The mesh port on which lease messages travel as control datagrams; the core handles it and
/// never hands it to local programs (they bind ports 1 to 65535).
pub const LEASE_PORT: u16 = 0;

/// Signature kind byte: no signature (a mesh without identities).
const SIG_NONE: u8 = 0;
/// Signature kind byte: an ed25519 signature (64 bytes) follows.
const SIG_ED25519: u8 = 1;

/// An issuer's statement that `holder_key` holds `address` under `name` from `epoch` on, for
/// `lease_ms` after each renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCertificate {
    /// The holder's node address, inside the issuer's pool.
    pub address: Ipv6Addr,
    /// The holder's routing epoch (its hello and update epoch).
    pub epoch: u64,
    /// 0 at the grant, one more per renewal.
    pub renewal: u32,
    /// Length of the lease in milliseconds.
    pub lease_ms: u32,
    /// The issuer's static node address.
    pub issuer: Ipv6Addr,
    /// The holder's ed25519 node key.
    pub holder_key: [u8; 32],
    /// The holder's node name ([`crate::check_name`]).
    pub name: String,
    /// The issuer's ed25519 signature over [`LeaseCertificate::signed_message`]; `None` in a
    /// mesh without identities.
    pub signature: Option<[u8; 64]>,
}

impl LeaseCertificate {
    /// Size of the fixed fields before the name length byte.
    const FIXED_LEN: usize = 81;

    /// Encodes the certificate: the signed part, then the signature kind and signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        match &self.signature {
            None => out.push(SIG_NONE),
            Some(sig) => {
                out.push(SIG_ED25519);
                out.extend_from_slice(sig);
            }
        }
        out
    }

    /// Returns the bytes the signature covers without its label: offsets `[0, 82 + N)`.
    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_LEN + 1 + self.name.len() + 65);
        out.push(CERTIFICATE_VERSION);
        out.extend_from_slice(&self.address.octets());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.renewal.to_be_bytes());
        out.extend_from_slice(&self.lease_ms.to_be_bytes());
        out.extend_from_slice(&self.issuer.octets());
        out.extend_from_slice(&self.holder_key);
        put_name(&mut out, &self.name);
        out
    }

    /// Returns the message the issuer signs: `connectopus-lease-v1\0` followed by the
    /// certificate up to and excluding the signature kind.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut out = CERTIFICATE_LABEL.to_vec();
        out.extend_from_slice(&self.signed_part());
        out
    }

    /// Parses a certificate that fills `buf` exactly.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let cert = Self::read(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    /// Reads a certificate from the reader.
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.u8()? != CERTIFICATE_VERSION {
            return Err(WireError::UnsupportedVersion);
        }
        let address = r.ipv6()?;
        let epoch = r.u64()?;
        let renewal = r.u32()?;
        let lease_ms = r.u32()?;
        let issuer = r.ipv6()?;
        let holder_key = r.array()?;
        let name = r.name()?;
        let signature = match r.u8()? {
            SIG_NONE => None,
            SIG_ED25519 => Some(r.array()?),
            _ => return Err(WireError::BadValue),
        };
        Ok(Self {
            address,
            epoch,
            renewal,
            lease_ms,
            issuer,
            holder_key,
            name,
            signature,
        })
    }
}

/// Why an issuer refused a Join or a Renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    /// The key (or join key) may not join, or no longer may.
    NotAuthorized,
    /// The name matches none of the allowed patterns, or is reserved for a static node.
    NameNotAllowed,
    /// Another key holds the name.
    NameTaken,
    /// The pool has no free address.
    PoolExhausted,
    /// The issuer restarted without its lease table and is waiting out the old leases.
    Restarting,
    /// The issuer holds no such lease (a Renew of an expired or foreign lease).
    UnknownLease,
    /// Too many joins at once; try again after `retry_after_ms`.
    Busy,
    /// A code this version does not know.
    Other(u8),
}

impl RefuseCode {
    /// Returns the wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::NotAuthorized => 1,
            Self::NameNotAllowed => 2,
            Self::NameTaken => 3,
            Self::PoolExhausted => 4,
            Self::Restarting => 5,
            Self::UnknownLease => 6,
            Self::Busy => 7,
            Self::Other(v) => v,
        }
    }

    /// Decodes a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::NotAuthorized,
            2 => Self::NameNotAllowed,
            3 => Self::NameTaken,
            4 => Self::PoolExhausted,
            5 => Self::Restarting,
            6 => Self::UnknownLease,
            7 => Self::Busy,
            other => Self::Other(other),
        }
    }

    /// Returns a short, stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::NameNotAllowed => "name_not_allowed",
            Self::NameTaken => "name_taken",
            Self::PoolExhausted => "pool_exhausted",
            Self::Restarting => "restarting",
            Self::UnknownLease => "unknown_lease",
            Self::Busy => "busy",
            Self::Other(_) => "other",
        }
    }
}

/// A join-key proof: a shared join key and its signature binding the joiner's own key, the
/// session and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinProof {
    /// The shared join key (ed25519).
    pub join_key: [u8; 32],
    /// Its signature over [`join_proof_message`].
    pub signature: [u8; 64],
}

/// What a lease message says, after its `msg` byte and `xid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseBody {
    /// A joiner asks for an address (msg 1).
    Join {
        /// The address the joiner held before, or `::`.
        hint: Ipv6Addr,
        /// The name the joiner wants.
        name: String,
        /// Proof that the joiner holds a join key (flags bit 0).
        proof: Option<JoinProof>,
    },
    /// The issuer grants an address (msg 2).
    Grant {
        /// When the holder should renew, in milliseconds after it sent the Join.
        t1_ms: u32,
        /// The signed lease.
        cert: LeaseCertificate,
    },
    /// The holder asks to extend its lease (msg 3).
    Renew {
        /// The holder's current certificate.
        cert: LeaseCertificate,
        /// The holder's signature over [`renew_message`].
        holder_sig: [u8; 64],
    },
    /// The issuer extended the lease (msg 4).
    Renewed {
        /// When the holder should renew next, in milliseconds after it sent the Renew.
        t1_ms: u32,
        /// The certificate with `renewal` one higher.
        cert: LeaseCertificate,
    },
    /// The holder gives its address back (msg 5).
    Release {
        /// The released address.
        address: Ipv6Addr,
        /// The lease's epoch.
        epoch: u64,
        /// The holder's signature over [`release_message`].
        holder_sig: [u8; 64],
    },
    /// The issuer refuses a Join or a Renew (msg 6).
    Refuse {
        /// Why.
        code: RefuseCode,
        /// How long to wait before asking this issuer again, in milliseconds.
        retry_after_ms: u32,
        /// A human-readable explanation (UTF-8, at most 255 bytes).
        text: String,
    },
}

/// One lease message: the body of a kind-3 record, or the payload of a control datagram to
/// mesh port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseMessage {
    /// Transaction id, chosen by the requester and echoed by the answer.
    pub xid: u64,
    /// What the message says.
    pub body: LeaseBody,
}

/// Join flags bit 0: a join-key proof follows the name.
const JOIN_FLAG_PROOF: u8 = 1;

impl LeaseMessage {
    /// Encodes the message. A text longer than 255 bytes is cut (at a character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(self.msg());
        out.extend_from_slice(&self.xid.to_be_bytes());
        match &self.body {
            LeaseBody::Join { hint, name, proof } => {
                out.push(if proof.is_some() { JOIN_FLAG_PROOF } else { 0 });
                out.extend_from_slice(&hint.octets());
                put_name(&mut out, name);
                if let Some(proof) = proof {
                    out.extend_from_slice(&proof.join_key);
                    out.extend_from_slice(&proof.signature);
                }
            }
            LeaseBody::Grant { t1_ms, cert } | LeaseBody::Renewed { t1_ms, cert } => {
                out.extend_from_slice(&t1_ms.to_be_bytes());
                put_cert(&mut out, cert);
            }
            LeaseBody::Renew { cert, holder_sig } => {
                put_cert(&mut out, cert);
                out.extend_from_slice(holder_sig);
            }
            LeaseBody::Release {
                address,
                epoch,
                holder_sig,
            } => {
                out.extend_from_slice(&address.octets());
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(holder_sig);
            }
            LeaseBody::Refuse {
                code,
                retry_after_ms,
                text,
            } => {
                out.push(code.to_u8());
                out.extend_from_slice(&retry_after_ms.to_be_bytes());
                let text = cut_text(text, usize::from(u8::MAX));
                out.push(text.len() as u8);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out
    }

    /// Returns the `msg` byte of the body.
    pub fn msg(&self) -> u8 {
        match self.body {
            LeaseBody::Join { .. } => 1,
            LeaseBody::Grant { .. } => 2,
            LeaseBody::Renew { .. } => 3,
            LeaseBody::Renewed { .. } => 4,
            LeaseBody::Release { .. } => 5,
            LeaseBody::Refuse { .. } => 6,
        }
    }

    /// Parses a message that fills `buf` exactly. Unknown `msg` values give
    /// [`WireError::UnknownType`], unknown join flags [`WireError::BadValue`], a `cert_len`
    /// that disagrees with the certificate [`WireError::BadLength`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() > MAX_LEASE_MESSAGE_LEN {
            return Err(WireError::BadLength);
        }
        let mut r = Reader::new(buf);
        let msg = r.u8()?;
        let xid = r.u64()?;
        let body = match msg {
            1 => {
                let flags = r.u8()?;
                // A later flag may add fields after the proof: refuse rather than misread.
                if flags & !JOIN_FLAG_PROOF != 0 {
                    return Err(WireError::BadValue);
                }
                let hint = r.ipv6()?;
                let name = r.name()?;
                let proof = if flags & JOIN_FLAG_PROOF != 0 {
                    Some(JoinProof {
                        join_key: r.array()?,
                        signature: r.array()?,
                    })
                } else {
                    None
                };
                LeaseBody::Join { hint, name, proof }
            }
            2 | 4 => {
                let t1_ms = r.u32()?;
                let cert = read_cert(&mut r)?;
                if msg == 2 {
                    LeaseBody::Grant { t1_ms, cert }
                } else {
                    LeaseBody::Renewed { t1_ms, cert }
                }
            }
            3 => LeaseBody::Renew {
                cert: read_cert(&mut r)?,
                holder_sig: r.array()?,
            },
            5 => LeaseBody::Release {
                address: r.ipv6()?,
                epoch: r.u64()?,
                holder_sig: r.array()?,
            },
            6 => {
                let code = RefuseCode::from_u8(r.u8()?);
                let retry_after_ms = r.u32()?;
                let len = r.u8()?;
                let text = core::str::from_utf8(r.take(usize::from(len))?)
                    .map_err(|_| WireError::BadValue)?
                    .to_owned();
                LeaseBody::Refuse {
                    code,
                    retry_after_ms,
                    text,
                }
            }
            _ => return Err(WireError::UnknownType),
        };
        r.finish()?;
        Ok(Self { xid, body })
    }
}

/// Appends `cert_len` (2 bytes) and the certificate.
fn put_cert(out: &mut Vec<u8>, cert: &LeaseCertificate) {
    let bytes = cert.encode();
    let bytes = fit(&bytes, usize::from(u16::MAX));
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads `cert_len` and a certificate that fills exactly that many bytes.
fn read_cert(r: &mut Reader<'_>) -> Result<LeaseCertificate, WireError> {
    let len = r.u16()?;
    let bytes = r.take(usize::from(len))?;
    LeaseCertificate::parse(bytes).map_err(|e| match e {
        WireError::Truncated | WireError::TrailingBytes => WireError::BadLength,
        other => other,
    })
}

/// Returns the longest prefix of `text` of at most `max` bytes that ends on a character
/// boundary.
fn cut_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Returns the message a join key signs in a Join: `connectopus-join-v1\0`, the session's
/// channel binding, the joiner's node key, the `xid` and the name (length byte and bytes), so a
/// recorded proof is worthless on any other session, for any other key or name.
pub fn join_proof_message(
    binding: &[u8; 32],
    holder_key: &[u8; 32],
    xid: u64,
    name: &str,
) -> Vec<u8> {
    let mut out = JOIN_LABEL.to_vec();
    out.extend_from_slice(binding);
    out.extend_from_slice(holder_key);
    out.extend_from_slice(&xid.to_be_bytes());
    put_name(&mut out, name);
    out
}

/// Returns the message the holder signs in a Renew: `connectopus-renew-v1\0`, the `xid` and
/// the encoded certificate.
pub fn renew_message(xid: u64, cert: &LeaseCertificate) -> Vec<u8> {
    let mut out = RENEW_LABEL.to_vec();
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&cert.encode());
    out
}

/// Returns the message the holder signs in a Release: `connectopus-release-v1\0`, the `xid`,
/// the address and the epoch.
pub fn release_message(xid: u64, address: Ipv6Addr, epoch: u64) -> Vec<u8> {
    let mut out = RELEASE_LABEL.to_vec();
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&address.octets());
    out.extend_from_slice(&epoch.to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
