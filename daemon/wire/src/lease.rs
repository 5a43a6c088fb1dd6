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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xcafe, 0xe1, 0, 0, 0, 0, last)
    }

    fn cert() -> LeaseCertificate {
        LeaseCertificate {
            address: ip(7),
            epoch: 0x0102_0304_0506_0708,
            renewal: 2,
            lease_ms: 120_000,
            issuer: Ipv6Addr::new(0xfd00, 0xcafe, 0, 0, 0, 0, 0, 1),
            holder_key: [0x11; 32],
            name: "job-1".to_owned(),
            signature: Some([0x22; 64]),
        }
    }

    fn cert_bytes() -> Vec<u8> {
        let mut v = vec![1]; // version
        v.extend_from_slice(&ip(7).octets());
        v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // epoch
        v.extend_from_slice(&[0, 0, 0, 2]); // renewal
        v.extend_from_slice(&[0, 1, 0xd4, 0xc0]); // lease_ms = 120000
        v.extend_from_slice(&[0xfd, 0, 0xca, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v.extend_from_slice(&[0x11; 32]);
        v.extend_from_slice(&[5, b'j', b'o', b'b', b'-', b'1']);
        v.push(1); // sig_kind
        v.extend_from_slice(&[0x22; 64]);
        v
    }

    #[test]
    fn certificate_layout() {
        let bytes = cert_bytes();
        assert_eq!(bytes.len(), 83 + 5 + 64);
        assert_eq!(cert().encode(), bytes);
        assert_eq!(LeaseCertificate::parse(&bytes), Ok(cert()));
        // The signature covers the label and bytes [0, 82 + N).
        let mut signed = b"connectopus-lease-v1\0".to_vec();
        signed.extend_from_slice(&bytes[..82 + 5]);
        assert_eq!(cert().signed_message(), signed);
        // Unsigned (a mesh without identities).
        let unsigned = LeaseCertificate {
            signature: None,
            ..cert()
        };
        let mut want = bytes[..82 + 5].to_vec();
        want.push(0);
        assert_eq!(unsigned.encode(), want);
        assert_eq!(LeaseCertificate::parse(&want), Ok(unsigned));
    }

    #[test]
    fn certificate_refusals() {
        let modified = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = cert_bytes();
            f(&mut b);
            LeaseCertificate::parse(&b)
        };
        assert_eq!(modified(&|b| b[0] = 2), Err(WireError::UnsupportedVersion));
        assert_eq!(modified(&|b| b[82] = b'J'), Err(WireError::BadName));
        assert_eq!(modified(&|b| b[87] = 2), Err(WireError::BadValue));
        assert_eq!(modified(&|b| b.push(0)), Err(WireError::TrailingBytes));
        assert_eq!(modified(&|b| b.truncate(100)), Err(WireError::Truncated));
        // Unsigned with a signature after it is not canonical: trailing bytes.
        assert_eq!(modified(&|b| b[87] = 0), Err(WireError::TrailingBytes));
        assert_eq!(LeaseCertificate::parse(&[]), Err(WireError::Truncated));
    }

    #[test]
    fn message_layouts() {
        let xid = [0, 0, 0, 0, 0, 0, 0x12, 0x34];
        let join = LeaseMessage {
            xid: 0x1234,
            body: LeaseBody::Join {
                hint: Ipv6Addr::UNSPECIFIED,
                name: "a".to_owned(),
                proof: None,
            },
        };
        let mut want = vec![1];
        want.extend_from_slice(&xid);
        want.push(0);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[1, b'a']);
        assert_eq!(join.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(join));

        let proof = JoinProof {
            join_key: [3; 32],
            signature: [4; 64],
        };
        let join = LeaseMessage {
            xid: 0x1234,
            body: LeaseBody::Join {
                hint: ip(9),
                name: "a".to_owned(),
                proof: Some(proof),
            },
        };
        let mut want = vec![1];
        want.extend_from_slice(&xid);
        want.push(1);
        want.extend_from_slice(&ip(9).octets());
        want.extend_from_slice(&[1, b'a']);
        want.extend_from_slice(&[3; 32]);
        want.extend_from_slice(&[4; 64]);
        assert_eq!(join.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(join));

        for (msg, body) in [
            (
                2,
                LeaseBody::Grant {
                    t1_ms: 60_000,
                    cert: cert(),
                },
            ),
            (
                4,
                LeaseBody::Renewed {
                    t1_ms: 60_000,
                    cert: cert(),
                },
            ),
        ] {
            let m = LeaseMessage { xid: 0x1234, body };
            let mut want = vec![msg];
            want.extend_from_slice(&xid);
            want.extend_from_slice(&[0, 0, 0xea, 0x60]);
            want.extend_from_slice(&(cert_bytes().len() as u16).to_be_bytes());
            want.extend_from_slice(&cert_bytes());
            assert_eq!(m.encode(), want);
            assert_eq!(LeaseMessage::parse(&want), Ok(m));
        }

        let renew = LeaseMessage {
            xid: 0x1234,
            body: LeaseBody::Renew {
                cert: cert(),
                holder_sig: [5; 64],
            },
        };
        let mut want = vec![3];
        want.extend_from_slice(&xid);
        want.extend_from_slice(&(cert_bytes().len() as u16).to_be_bytes());
        want.extend_from_slice(&cert_bytes());
        want.extend_from_slice(&[5; 64]);
        assert_eq!(renew.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(renew));

        let release = LeaseMessage {
            xid: 0x1234,
            body: LeaseBody::Release {
                address: ip(7),
                epoch: 9,
                holder_sig: [6; 64],
            },
        };
        let mut want = vec![5];
        want.extend_from_slice(&xid);
        want.extend_from_slice(&ip(7).octets());
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        want.extend_from_slice(&[6; 64]);
        assert_eq!(release.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(release));

        let refuse = LeaseMessage {
            xid: 0x1234,
            body: LeaseBody::Refuse {
                code: RefuseCode::PoolExhausted,
                retry_after_ms: 2000,
                text: "full".to_owned(),
            },
        };
        let mut want = vec![6];
        want.extend_from_slice(&xid);
        want.extend_from_slice(&[4, 0, 0, 0x07, 0xd0, 4]);
        want.extend_from_slice(b"full");
        assert_eq!(refuse.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(refuse));
    }

    #[test]
    fn message_refusals() {
        let grant = LeaseMessage {
            xid: 1,
            body: LeaseBody::Grant {
                t1_ms: 1,
                cert: cert(),
            },
        }
        .encode();
        // cert_len one too long and one too short.
        let mut long = grant.clone();
        long[14] += 1;
        long.push(0);
        assert_eq!(LeaseMessage::parse(&long), Err(WireError::BadLength));
        let mut short = grant.clone();
        short[14] -= 1;
        assert_eq!(LeaseMessage::parse(&short), Err(WireError::BadLength));
        let mut trailing = grant.clone();
        trailing.push(0);
        assert_eq!(
            LeaseMessage::parse(&trailing),
            Err(WireError::TrailingBytes)
        );
        assert_eq!(
            LeaseMessage::parse(&grant[..grant.len() - 1]),
            Err(WireError::Truncated)
        );
        // Unknown msg values, unknown join flags, a bad Refuse text.
        for msg in [0, 7, 0xff] {
            let mut b = grant.clone();
            b[0] = msg;
            assert_eq!(LeaseMessage::parse(&b), Err(WireError::UnknownType));
        }
        let mut join = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        join.extend_from_slice(&[0; 16]);
        join.extend_from_slice(&[1, b'a']);
        assert_eq!(LeaseMessage::parse(&join), Err(WireError::BadValue));
        join[9] = 0;
        assert!(LeaseMessage::parse(&join).is_ok());
        join[27] = b'_';
        assert_eq!(LeaseMessage::parse(&join), Err(WireError::BadName));
        let refuse = [6, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0xff];
        assert_eq!(LeaseMessage::parse(&refuse), Err(WireError::BadValue));
        assert_eq!(
            LeaseMessage::parse(&[0; MAX_LEASE_MESSAGE_LEN + 1]),
            Err(WireError::BadLength)
        );
        assert_eq!(LeaseMessage::parse(&[]), Err(WireError::Truncated));
    }

    #[test]
    fn refuse_codes_and_texts() {
        for v in 0..=u8::MAX {
            assert_eq!(RefuseCode::from_u8(v).to_u8(), v);
        }
        assert_eq!(RefuseCode::from_u8(7).as_str(), "busy");
        assert_eq!(RefuseCode::from_u8(0), RefuseCode::Other(0));
        // Text over 255 bytes is cut at a character boundary.
        let m = LeaseMessage {
            xid: 1,
            body: LeaseBody::Refuse {
                code: RefuseCode::Busy,
                retry_after_ms: 0,
                text: "é".repeat(200),
            },
        };
        let LeaseBody::Refuse { text, .. } = LeaseMessage::parse(&m.encode()).unwrap().body else {
            panic!("not a refuse");
        };
        assert_eq!(text, "é".repeat(127));
    }

    #[test]
    fn signed_messages_have_their_labels() {
        let m = join_proof_message(&[1; 32], &[2; 32], 3, "ab");
        let mut want = b"connectopus-join-v1\0".to_vec();
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&[2; 32]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 2, b'a', b'b']);
        assert_eq!(m, want);
        let m = renew_message(3, &cert());
        assert_eq!(&m[..21], b"connectopus-renew-v1\0");
        assert_eq!(&m[21..29], &[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(&m[29..], &cert_bytes()[..]);
        let m = release_message(3, ip(7), 9);
        assert_eq!(&m[..23], b"connectopus-release-v1\0");
        assert_eq!(m.len(), 23 + 8 + 16 + 8);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    fn certificate() -> impl Strategy<Value = LeaseCertificate> {
        (
            any::<u128>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u128>(),
            any::<[u8; 32]>(),
            name(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 64)),
        )
            .prop_map(
                |(address, epoch, renewal, lease_ms, issuer, holder_key, name, sig)| {
                    LeaseCertificate {
                        address: Ipv6Addr::from(address),
                        epoch,
                        renewal,
                        lease_ms,
                        issuer: Ipv6Addr::from(issuer),
                        holder_key,
                        name,
                        signature: sig.map(|s| {
                            let mut out = [0u8; 64];
                            out.copy_from_slice(&s);
                            out
                        }),
                    }
                },
            )
    }

    fn sig() -> impl Strategy<Value = [u8; 64]> {
        proptest::collection::vec(any::<u8>(), 64).prop_map(|s| {
            let mut out = [0u8; 64];
            out.copy_from_slice(&s);
            out
        })
    }

    fn message() -> impl Strategy<Value = LeaseMessage> {
        let body = prop_oneof![
            (
                any::<u128>(),
                name(),
                proptest::option::of((any::<[u8; 32]>(), sig()))
            )
                .prop_map(|(hint, name, proof)| LeaseBody::Join {
                    hint: Ipv6Addr::from(hint),
                    name,
                    proof: proof.map(|(join_key, signature)| JoinProof {
                        join_key,
                        signature
                    }),
                }),
            (any::<u32>(), certificate())
                .prop_map(|(t1_ms, cert)| LeaseBody::Grant { t1_ms, cert }),
            (certificate(), sig())
                .prop_map(|(cert, holder_sig)| LeaseBody::Renew { cert, holder_sig }),
            (any::<u32>(), certificate())
                .prop_map(|(t1_ms, cert)| LeaseBody::Renewed { t1_ms, cert }),
            (any::<u128>(), any::<u64>(), sig()).prop_map(|(a, epoch, holder_sig)| {
                LeaseBody::Release {
                    address: Ipv6Addr::from(a),
                    epoch,
                    holder_sig,
                }
            }),
            (any::<u8>(), any::<u32>(), "\\PC{0,60}").prop_map(|(c, retry_after_ms, text)| {
                LeaseBody::Refuse {
                    code: RefuseCode::from_u8(c),
                    retry_after_ms,
                    text,
                }
            }),
        ];
        (any::<u64>(), body).prop_map(|(xid, body)| LeaseMessage { xid, body })
    }

    proptest! {
        #[test]
        fn certificates_round_trip(c in certificate()) {
            let bytes = c.encode();
            prop_assert_eq!(LeaseCertificate::parse(&bytes), Ok(c));
        }

        #[test]
        fn messages_round_trip(m in message()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= MAX_LEASE_MESSAGE_LEN);
            prop_assert_eq!(LeaseMessage::parse(&bytes), Ok(m));
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(m) = LeaseMessage::parse(&buf) {
                prop_assert_eq!(m.encode(), buf.clone());
            }
            if let Ok(c) = LeaseCertificate::parse(&buf) {
                prop_assert_eq!(c.encode(), buf);
            }
        }

        #[test]
        fn mutated_messages_never_panic(m in message(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
            let mut bytes = m.encode();
            let i = at.index(bytes.len());
            bytes[i] = v;
            if let Ok(parsed) = LeaseMessage::parse(&bytes) {
                prop_assert_eq!(parsed.encode(), bytes);
            }
        }
    }
}
