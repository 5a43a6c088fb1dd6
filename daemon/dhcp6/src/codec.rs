//! The DHCPv6 messages this client sends and the parts of replies it reads (RFC 8415 §8,
//! §21): a small total parser and an encoder.
//!
//! Why not `dhcproto`'s decoder: in dhcproto 0.15.0 `DhcpOption::decode` computes
//! `len - 2` for a Status Code option, `len - 4` for Vendor Class/Vendor Opts and `len - 11`
//! for Authentication without checking `len`, so a 1-byte Status Code from the network
//! panics a debug build ("attempt to subtract with overflow", shown by the test
//! `dhcproto_decoder_is_not_total` in tests/codec.rs). This parser reads only what the client
//! needs, through `get`, and returns `None` for anything malformed. dhcproto stays as the
//! independent oracle in the tests: it encodes the scripted server's replies and decodes
//! every message this client sends.

use std::net::Ipv6Addr;

/// Message types (RFC 8415 §7.3).
pub mod msg {
    /// Solicit.
    pub const SOLICIT: u8 = 1;
    /// Advertise.
    pub const ADVERTISE: u8 = 2;
    /// Request.
    pub const REQUEST: u8 = 3;
    /// Renew.
    pub const RENEW: u8 = 5;
    /// Rebind.
    pub const REBIND: u8 = 6;
    /// Reply.
    pub const REPLY: u8 = 7;
    /// Release.
    pub const RELEASE: u8 = 8;
    /// Reconfigure (ignored by this client).
    pub const RECONFIGURE: u8 = 10;
}

/// Option codes (RFC 8415 §21).
pub mod opt {
    /// Client Identifier.
    pub const CLIENTID: u16 = 1;
    /// Server Identifier.
    pub const SERVERID: u16 = 2;
    /// Option Request.
    pub const ORO: u16 = 6;
    /// Preference.
    pub const PREFERENCE: u16 = 7;
    /// Elapsed Time.
    pub const ELAPSED_TIME: u16 = 8;
    /// Status Code.
    pub const STATUS_CODE: u16 = 13;
    /// Identity Association for Prefix Delegation.
    pub const IA_PD: u16 = 25;
    /// IA Prefix.
    pub const IAPREFIX: u16 = 26;
    /// SOL_MAX_RT.
    pub const SOL_MAX_RT: u16 = 82;
}

/// Status codes (RFC 8415 §21.13).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0;
    /// UnspecFail.
    pub const UNSPEC_FAIL: u16 = 1;
    /// NoAddrsAvail.
    pub const NO_ADDRS_AVAIL: u16 = 2;
    /// NoBinding.
    pub const NO_BINDING: u16 = 3;
    /// NotOnLink.
    pub const NOT_ON_LINK: u16 = 4;
    /// UseMulticast.
    pub const USE_MULTICAST: u16 = 5;
    /// NoPrefixAvail.
    pub const NO_PREFIX_AVAIL: u16 = 6;
}

/// A lifetime or timer of all ones means infinity (RFC 8415 §7.7).
pub const INFINITY: u32 = u32::MAX;

/// One prefix of an IA_PD as the server sent it (RFC 8415 §21.22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaPrefix {
    /// Preferred lifetime in seconds.
    pub preferred: u32,
    /// Valid lifetime in seconds.
    pub valid: u32,
    /// Prefix length (checked ≤ 128).
    pub len: u8,
    /// The prefix (host bits as sent).
    pub prefix: Ipv6Addr,
    /// Status Code inside the IA Prefix option, if any.
    pub status: Option<u16>,
}

/// An IA_PD as the server sent it (RFC 8415 §21.21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaPd {
    /// The IAID.
    pub iaid: u32,
    /// T1 in seconds.
    pub t1: u32,
    /// T2 in seconds.
    pub t2: u32,
    /// Well-formed IA Prefix options, in order.
    pub prefixes: Vec<IaPrefix>,
    /// Status Code inside the IA_PD option, if any.
    pub status: Option<u16>,
}

/// What the client reads from a server's message. Every field is decoded; options the client
/// does not use are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    /// Message type.
    pub msg_type: u8,
    /// Transaction id (24 bits).
    pub xid: u32,
    /// Client Identifier (a DUID).
    pub client_id: Option<Vec<u8>>,
    /// Server Identifier (a DUID).
    pub server_id: Option<Vec<u8>>,
    /// Preference (0 when absent).
    pub preference: u8,
    /// Top-level Status Code.
    pub status: Option<u16>,
    /// SOL_MAX_RT in seconds.
    pub sol_max_rt: Option<u32>,
    /// Every IA_PD option, in order.
    pub ia_pds: Vec<IaPd>,
}

/// Splits `bytes` into (code, body) options; `None` when an option runs past the end.
fn options(mut bytes: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let code = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
        let body = bytes.get(4..4 + len)?;
        out.push((code, body));
        bytes = bytes.get(4 + len..)?;
    }
    Some(out)
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn status_code(body: &[u8]) -> Option<u16> {
    // A code and a UTF-8 message (§21.13); the message is not needed.
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

fn ia_prefix(body: &[u8]) -> Option<IaPrefix> {
    let preferred = be_u32(body)?;
    let valid = be_u32(body.get(4..)?)?;
    let len = *body.get(8)?;
    if len > 128 {
        return None;
    }
    let octets: [u8; 16] = body.get(9..25)?.try_into().ok()?;
    let mut status = None;
    for (code, sub) in options(body.get(25..)?)? {
        if code == opt::STATUS_CODE {
            status = Some(status_code(sub)?);
        }
    }
    Some(IaPrefix {
        preferred,
        valid,
        len,
        prefix: Ipv6Addr::from(octets),
        status,
    })
}

fn ia_pd(body: &[u8]) -> Option<IaPd> {
    let iaid = be_u32(body)?;
    let t1 = be_u32(body.get(4..)?)?;
    let t2 = be_u32(body.get(8..)?)?;
    let mut ia = IaPd {
        iaid,
        t1,
        t2,
        prefixes: Vec::new(),
        status: None,
    };
    for (code, sub) in options(body.get(12..)?)? {
        match code {
            // A malformed IA Prefix is dropped alone; the rest of the IA_PD still counts.
            opt::IAPREFIX => ia.prefixes.extend(ia_prefix(sub)),
            opt::STATUS_CODE => ia.status = Some(status_code(sub)?),
            _ => {}
        }
    }
    Some(ia)
}

/// Parses a datagram from a server. `None` when it is not a well-formed DHCPv6 client/server
/// message (RFC 8415 §8): shorter than 4 bytes, an option running past its container, or a
/// fixed-size option of the wrong size.
pub fn parse_server_message(bytes: &[u8]) -> Option<ServerMessage> {
    let msg_type = *bytes.first()?;
    let xid = u32::from_be_bytes([0, *bytes.get(1)?, *bytes.get(2)?, *bytes.get(3)?]);
    let mut m = ServerMessage {
        msg_type,
        xid,
        ..ServerMessage::default()
    };
    for (code, body) in options(bytes.get(4..)?)? {
        match code {
            opt::CLIENTID => m.client_id = Some(body.to_vec()),
            opt::SERVERID => m.server_id = Some(body.to_vec()),
            opt::PREFERENCE => {
                let [p] = body else { return None };
                m.preference = *p;
            }
            opt::STATUS_CODE => m.status = Some(status_code(body)?),
            opt::SOL_MAX_RT => {
                if body.len() != 4 {
                    return None;
                }
                m.sol_max_rt = be_u32(body);
            }
            opt::IA_PD => {
                // An IA_PD too short for its fixed fields is dropped; the others still count.
                m.ia_pds.extend(ia_pd(body));
            }
            _ => {}
        }
    }
    Some(m)
}

/// A prefix the client names in an IA_PD it sends: a hint in Solicit, a binding in
/// Request/Renew/Rebind/Release (lifetimes are always sent as 0, §18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixHint {
    /// Prefix length.
    pub len: u8,
    /// The prefix (`::` with a length is a length-only hint).
    pub prefix: Ipv6Addr,
}

/// A message the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage<'a> {
    /// Message type.
    pub msg_type: u8,
    /// Transaction id (low 24 bits used).
    pub xid: u32,
    /// Our DUID.
    pub client_id: &'a [u8],
    /// The server's DUID (Request, Renew, Release).
    pub server_id: Option<&'a [u8]>,
    /// Elapsed time in hundredths of a second.
    pub elapsed_cs: u16,
    /// The IA_PD's IAID.
    pub iaid: u32,
    /// The prefixes inside the IA_PD.
    pub prefixes: &'a [PrefixHint],
}

fn put_option(out: &mut Vec<u8>, code: u16, body: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Every body this client builds is far below 64 KiB (a DUID is at most 130 bytes).
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(body);
}

impl ClientMessage<'_> {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(self.msg_type);
        out.extend_from_slice(&self.xid.to_be_bytes()[1..]);
        put_option(&mut out, opt::CLIENTID, self.client_id);
        if let Some(server_id) = self.server_id {
            put_option(&mut out, opt::SERVERID, server_id);
        }
        put_option(&mut out, opt::ELAPSED_TIME, &self.elapsed_cs.to_be_bytes());
        if self.msg_type == msg::SOLICIT {
            // Solicit must request SOL_MAX_RT (§18.2.1).
            put_option(&mut out, opt::ORO, &opt::SOL_MAX_RT.to_be_bytes());
        }
        let mut ia = Vec::with_capacity(12 + 29 * self.prefixes.len());
        ia.extend_from_slice(&self.iaid.to_be_bytes());
        ia.extend_from_slice(&[0; 8]); // T1, T2: the client sends 0 (§21.21)
        for hint in self.prefixes {
            let mut p = Vec::with_capacity(25);
            p.extend_from_slice(&[0; 8]); // preferred, valid
            p.push(hint.len);
            p.extend_from_slice(&hint.prefix.octets());
            put_option(&mut ia, opt::IAPREFIX, &p);
        }
        put_option(&mut out, opt::IA_PD, &ia);
        out
    }
}
