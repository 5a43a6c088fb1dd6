//! Turning one query message into one response message, from a [`Snapshot`].
//!
//! Pure and synchronous: no I/O, no locks. Both transports call [`respond`].

use hickory_proto::op::{Edns, Message, Metadata, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};

use crate::table::Snapshot;

/// Size of the DNS header.
const HEADER_LEN: usize = 12;
/// The EDNS UDP payload size we advertise and honour at most (the 2020 DNS flag day value,
/// which avoids IP fragmentation).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;
/// Classic DNS UDP limit without EDNS.
const PLAIN_UDP_PAYLOAD: usize = 512;

/// Which transport a query came over; decides the response size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Coarse classification of a response, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// NOERROR with or without answers.
    NoError,
    NxDomain,
    Refused,
    /// FORMERR, NOTIMP, BADVERS, SERVFAIL.
    Error,
}

/// Answers one query message.
///
/// Returns `None` when nothing must be sent: messages shorter than a header (not DNS at
/// all) and responses (QR set; answering those could loop between servers or reflect).
pub(crate) fn respond(
    snap: &Snapshot,
    req: &[u8],
    transport: Transport,
) -> Option<(Vec<u8>, Kind)> {
    if req.len() < HEADER_LEN {
        return None;
    }
    let id = u16::from_be_bytes([req[0], req[1]]);
    let flags = u16::from_be_bytes([req[2], req[3]]);
    if flags & 0x8000 != 0 {
        return None;
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Some((header_only(id, flags, ResponseCode::NotImp), Kind::Error));
    }
    // Checked before parsing: hickory reserves room for QDCOUNT questions up front, so a
    // 12-byte packet claiming 65535 questions would cost megabytes to reject.
    let qdcount = u16::from_be_bytes([req[4], req[5]]);
    if qdcount != 1 {
        return Some((header_only(id, flags, ResponseCode::FormErr), Kind::Error));
    }
    let Ok(query) = Message::from_vec(req) else {
        return Some((header_only(id, flags, ResponseCode::FormErr), Kind::Error));
    };

    let mut resp = Message::response(id, query.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&query.metadata);
    resp.queries = query.queries.clone();
    let mut limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => PLAIN_UDP_PAYLOAD,
    };
    if let Some(edns) = &query.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        ours.set_version(0);
        resp.set_edns(ours);
        if transport == Transport::Udp {
            limit = usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD));
        }
        if edns.version() > 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return encode(resp, limit, id, flags);
        }
    }

    answer(snap, &query, &mut resp);
    encode(resp, limit, id, flags)
}

/// Fills in the answer for the single question of `query`.
fn answer(snap: &Snapshot, query: &Message, resp: &mut Message) {
    let Some(question) = query.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return;
    };
    if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
        resp.metadata.response_code = ResponseCode::Refused;
        return;
    }
    let qname = LowerName::new(question.name());
    let Some(zone) = snap.zone_for(&qname) else {
        resp.metadata.response_code = ResponseCode::Refused;
        return;
    };
    let qtype = question.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // No zone transfers: every node builds its own copy from the routing protocol.
        resp.metadata.response_code = ResponseCode::Refused;
        return;
    }
    resp.metadata.authoritative = true;

    let at_apex = qname == zone.apex;
    let node = snap.nodes.get(&qname);
    if node.is_none() && !at_apex {
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.authorities.push(zone.soa.clone());
        return;
    }
    let mut answers: Vec<&Record> = Vec::new();
    let mut glue = false;
    if at_apex {
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.push(&zone.soa);
        }
        if matches!(qtype, RecordType::NS | RecordType::ANY) {
            answers.push(&zone.ns);
            glue = true;
        }
    }
    if let Some(node) = node {
        if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
            answers.extend(&node.aaaa);
        }
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            answers.extend(&node.a);
        }
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            answers.extend(&node.ptr);
        }
    }
    if answers.is_empty() {
        // NODATA: the name exists but has no records of this type.
        resp.authorities.push(zone.soa.clone());
        return;
    }
    resp.answers.extend(answers.into_iter().cloned());
    if glue && let Some(ns) = snap.nodes.get(&snap.ns_name) {
        resp.additionals.extend(ns.aaaa.iter().cloned());
        resp.additionals.extend(ns.a.iter().cloned());
    }
}

/// Encodes `resp`, falling back to a truncated (TC) response if it exceeds `limit`, and to
/// a bare SERVFAIL header if it cannot be encoded at all.
fn encode(resp: Message, limit: usize, id: u16, flags: u16) -> Option<(Vec<u8>, Kind)> {
    let kind = match resp.metadata.response_code {
        ResponseCode::NoError => Kind::NoError,
        ResponseCode::NXDomain => Kind::NxDomain,
        ResponseCode::Refused => Kind::Refused,
        _ => Kind::Error,
    };
    let bytes = match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Too big for this transport: header, question and OPT only, with TC set, so the
        // client retries over TCP.
        Ok(_) => match resp.truncate().to_vec() {
            Ok(bytes) if bytes.len() <= limit => bytes,
            _ => header_only(id, flags, ResponseCode::ServFail),
        },
        Err(_) => return Some((header_only(id, flags, ResponseCode::ServFail), Kind::Error)),
    };
    Some((bytes, kind))
}

/// A response consisting of a header only: the query's id, opcode, RD and CD bits, QR set,
/// and `rcode`; all section counts zero. Used when the query cannot be (fully) parsed.
fn header_only(id: u16, query_flags: u16, rcode: ResponseCode) -> Vec<u8> {
    const QR: u16 = 0x8000;
    const OPCODE: u16 = 0x7800;
    const RD: u16 = 0x0100;
    const CD: u16 = 0x0010;
    let flags = QR | (query_flags & (OPCODE | RD | CD)) | u16::from(rcode.low());
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}
