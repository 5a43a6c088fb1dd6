//! Link messages, demultiplexed by their first byte.
//!
//! A message whose first byte has the high nibble 6 is a raw IPv6 packet, and one with the high
//! nibble 4 a raw IPv4 packet, with no extra header, so the data path forwards packets without
//! copying them to prepend anything.
//! Every other message starts with a one-byte [`MessageType`].
//! Layouts are in `docs/protocol.md`.

use std::net::Ipv6Addr;

use crate::cursor::{Reader, fit, put_name};
use crate::{PROTOCOL_VERSION, WireError};

/// The first byte of a link message that is not an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Session hello; see [`Hello`].
    Hello = 0x01,
    /// Liveness probe; see [`Keepalive`].
    Keepalive = 0x02,
    /// Answer to a keepalive, echoing its nonce.
    KeepaliveReply = 0x03,
    /// A segment of the reliable routing stream; see [`StreamSegment`].
    StreamSegment = 0x04,
    /// A mesh-wide datagram addressed by (node address, port); see [`ControlDatagram`].
    ControlDatagram = 0x05,
    /// The sender is closing the session; see [`Goodbye`].
    Goodbye = 0x06,
}

impl MessageType {
    /// Decodes a type byte; returns `None` for values no message uses.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x01 => Some(Self::Hello),
            0x02 => Some(Self::Keepalive),
            0x03 => Some(Self::KeepaliveReply),
            0x04 => Some(Self::StreamSegment),
            0x05 => Some(Self::ControlDatagram),
            0x06 => Some(Self::Goodbye),
            _ => None,
        }
    }
}

/// A parsed link message; borrows its payload from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// A raw IPv6 packet (the whole message).
    Ipv6(&'a [u8]),
    /// A raw IPv4 packet (the whole message).
    Ipv4(&'a [u8]),
    /// A session hello.
    Hello(Hello),
    /// A keepalive probe.
    Keepalive(Keepalive),
    /// A reply to a keepalive probe.
    KeepaliveReply(Keepalive),
    /// A routing-stream segment.
    Segment(StreamSegment<'a>),
    /// A mesh-wide control datagram.
    Control(ControlDatagram<'a>),
    /// A session close notice.
    Goodbye(Goodbye),
}

impl<'a> LinkMessage<'a> {
    /// Parses one link message. Never panics; every malformed input gives a [`WireError`].
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let Some(&first) = buf.first() else {
            return Err(WireError::Truncated);
        };
        match first >> 4 {
            6 => return Ok(Self::Ipv6(buf)),
            4 => return Ok(Self::Ipv4(buf)),
            _ => {}
        }
        let mut r = Reader::new(buf);
        r.u8()?;
        match MessageType::from_u8(first).ok_or(WireError::UnknownType)? {
            MessageType::Hello => Hello::parse_after_type(r).map(Self::Hello),
            MessageType::Keepalive => Keepalive::parse_after_type(r).map(Self::Keepalive),
            MessageType::KeepaliveReply => Keepalive::parse_after_type(r).map(Self::KeepaliveReply),
            MessageType::StreamSegment => StreamSegment::parse_after_type(r).map(Self::Segment),
            MessageType::ControlDatagram => ControlDatagram::parse_after_type(r).map(Self::Control),
            MessageType::Goodbye => Goodbye::parse_after_type(r).map(Self::Goodbye),
        }
    }

    /// Encodes the message; the result parses back equal (a raw IPv6 packet is copied as is).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Ipv6(packet) | Self::Ipv4(packet) => packet.to_vec(),
            Self::Hello(m) => m.encode(),
            Self::Keepalive(m) => m.encode_probe(),
            Self::KeepaliveReply(m) => m.encode_reply(),
            Self::Segment(m) => m.encode(),
            Self::Control(m) => m.encode(),
            Self::Goodbye(m) => m.encode(),
        }
    }
}

/// Returns true if a link message is a raw IPv6 packet (high nibble of the first byte is 6).
#[inline]
pub fn is_ipv6(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 4 == 6)
}

/// Returns true if a link message is a raw IPv4 packet (high nibble of the first byte is 4).
#[inline]
pub fn is_ipv4(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 4 == 4)
}

/// Returns true if a link message is a raw IP packet, IPv6 or IPv4: data for the forwarding
/// path rather than a control message.
#[inline]
pub fn is_ip_packet(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| matches!(b >> 4, 4 | 6))
}

/// Opening message of a session, sent by both ends until each has seen the other's.
///
/// `session_id` is chosen at random by the sender for each session (never zero);
/// `echo_session_id` is the peer's `session_id` as last seen, or zero.
/// A session is established once a node has received the peer's hello *and* that hello echoes
/// the node's own `session_id`.
/// `extensions` carry optional fields as (kind, value) pairs: the node key (kind 1), a signature
/// (kind 2) and, on links without a (D)TLS channel binding, the sender's challenge (kind 3).
/// Unknown kinds are kept by the parser and ignored by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Feature bits ([`Hello::CAP_EBPF_DECAP`]); unknown bits are ignored.
    pub capabilities: u32,
    /// The sender's random id for this session; never zero.
    pub session_id: u64,
    /// The peer's session id as last seen by the sender, zero if none.
    pub echo_session_id: u64,
    /// The sender's routing epoch (changes when its mesh instance restarts).
    pub epoch: u64,
    /// The sender's node address.
    pub address: Ipv6Addr,
    /// The sender's node name ([`crate::check_name`]).
    pub name: String,
    /// Optional fields, in wire order.
    pub extensions: Vec<HelloExtension>,
}

/// One optional hello field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloExtension {
    /// What the value is; see [`HelloExtension::NODE_KEY`] and [`HelloExtension::SIGNATURE`].
    pub kind: u8,
    /// The raw value, at most 65535 bytes.
    pub value: Vec<u8>,
}

impl HelloExtension {
    /// The sender's ed25519 node key (32 bytes).
    pub const NODE_KEY: u8 = 1;
    /// The sender's signature over the session binding (64 bytes).
    pub const SIGNATURE: u8 = 2;
    /// The sender's challenge for this session (32 random bytes) on a link without a (D)TLS
    /// channel binding: the peer's hello signature must cover it.
    pub const CHALLENGE: u8 = 3;
    /// The sender has no address yet and asks to join (1 byte, reserved 0): sent with address
    /// `::` by an ephemeral node, with the key and signature extensions.
    pub const JOIN: u8 = 4;
    /// The sender's lease certificate ([`crate::LeaseCertificate`]), in every hello of an
    /// ephemeral node that holds an address.
    pub const LEASE_CERTIFICATE: u8 = 5;
}

impl Hello {
    /// Capability bit: on this link the sender decapsulates data datagrams in its eBPF fast
    /// path (a plaintext UDP link only), so the receiver's fast path may send to it directly.
    pub const CAP_EBPF_DECAP: u32 = 1 << 0;

    /// Size of the fixed part, up to and including the name length byte.
    const FIXED_LEN: usize = 49;

    /// Encodes the hello as a complete link message.
    ///
    /// The name should pass [`crate::check_name`] and extension values should be at most
    /// 65535 bytes; over-long values are cut to fit their length fields.
    pub fn encode(&self) -> Vec<u8> {
        let ext_len: usize = self.extensions.iter().map(|e| 3 + e.value.len()).sum();
        let mut out = Vec::with_capacity(Self::FIXED_LEN + self.name.len() + ext_len);
        out.push(MessageType::Hello as u8);
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&self.capabilities.to_be_bytes());
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.extend_from_slice(&self.echo_session_id.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.address.octets());
        put_name(&mut out, &self.name);
        for ext in &self.extensions {
            let value = fit(&ext.value, usize::from(u16::MAX));
            out.push(ext.kind);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Parses the fields after the type byte.
    fn parse_after_type(mut r: Reader<'_>) -> Result<Self, WireError> {
        if r.u8()? != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion);
        }
        let _flags = r.u16()?;
        let capabilities = r.u32()?;
        let session_id = r.u64()?;
        if session_id == 0 {
            return Err(WireError::BadValue);
        }
        let echo_session_id = r.u64()?;
        let epoch = r.u64()?;
        let address = r.ipv6()?;
        let name = r.name()?;
        let mut extensions = Vec::new();
        while r.remaining() > 0 {
            let kind = r.u8()?;
            let len = r.u16()?;
            let value = r.take(usize::from(len))?.to_vec();
            extensions.push(HelloExtension { kind, value });
        }
        Ok(Self {
            capabilities,
            session_id,
            echo_session_id,
            epoch,
            address,
            name,
            extensions,
        })
    }
}

/// Keepalive probe or reply; the reply echoes the probe's nonce, which lets the sender
/// measure the round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Opaque value chosen by the prober.
    pub nonce: u64,
}

impl Keepalive {
    /// Size of a keepalive or keepalive reply message in bytes.
    pub const LEN: usize = 9;

    /// Encodes a keepalive probe as a complete link message.
    pub fn encode_probe(&self) -> Vec<u8> {
        self.encode_as(MessageType::Keepalive)
    }

    /// Encodes a keepalive reply as a complete link message.
    pub fn encode_reply(&self) -> Vec<u8> {
        self.encode_as(MessageType::KeepaliveReply)
    }

    /// Encodes the nonce behind the given type byte.
    fn encode_as(&self, ty: MessageType) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.push(ty as u8);
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out
    }

    /// Parses the fields after the type byte.
    fn parse_after_type(mut r: Reader<'_>) -> Result<Self, WireError> {
        let nonce = r.u64()?;
        r.finish()?;
        Ok(Self { nonce })
    }
}

/// One segment of the reliable, ordered routing stream that runs over each session.
///
/// Sequence numbers count segments, not bytes. `ack` is the next segment the sender expects
/// (everything before it arrived); bit `i` of `sack` says segment `ack + 1 + i` also arrived.
/// `window` is how many segments past `ack` the sender is willing to buffer.
/// A segment with an empty payload carries only acknowledgement information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSegment<'a> {
    /// The low 32 bits of the *receiver's* hello session id; stale segments from an earlier
    /// session are recognised and dropped.
    pub conn: u32,
    /// Segment number of the payload (meaningless when the payload is empty).
    pub seq: u32,
    /// Cumulative acknowledgement: the next segment number expected.
    pub ack: u32,
    /// Selective acknowledgement bitmap of the 32 segments after `ack`.
    pub sack: u32,
    /// Receive window in segments beyond `ack`.
    pub window: u16,
    /// Stream payload bytes (may be empty).
    pub payload: &'a [u8],
}

impl StreamSegment<'_> {
    /// Size of the segment header in bytes.
    pub const HEADER_LEN: usize = 20;

    /// Encodes the segment as a complete link message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.payload.len());
        out.push(MessageType::StreamSegment as u8);
        out.push(0);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&self.conn.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.extend_from_slice(&self.sack.to_be_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

impl<'a> StreamSegment<'a> {
    /// Parses the fields after the type byte.
    fn parse_after_type(mut r: Reader<'a>) -> Result<Self, WireError> {
        let _flags = r.u8()?;
        let window = r.u16()?;
        let conn = r.u32()?;
        let seq = r.u32()?;
        let ack = r.u32()?;
        let sack = r.u32()?;
        Ok(Self {
            conn,
            seq,
            ack,
            sack,
            window,
            payload: r.rest(),
        })
    }
}

/// A datagram routed hop by hop across the mesh to (destination node address, port).
/// It is not IP: the kernel never sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlDatagram<'a> {
    /// Remaining hops; a node drops the datagram instead of forwarding it with zero.
    pub hop_limit: u8,
    /// Source node address.
    pub src: Ipv6Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination node address.
    pub dst: Ipv6Addr,
    /// Destination port.
    pub dst_port: u16,
    /// Application payload.
    pub payload: &'a [u8],
}

impl ControlDatagram<'_> {
    /// Size of the header in bytes.
    pub const HEADER_LEN: usize = 38;

    /// Encodes the datagram as a complete link message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.payload.len());
        out.push(MessageType::ControlDatagram as u8);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&self.dst_port.to_be_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

impl<'a> ControlDatagram<'a> {
    /// Parses the fields after the type byte.
    fn parse_after_type(mut r: Reader<'a>) -> Result<Self, WireError> {
        let hop_limit = r.u8()?;
        let src = r.ipv6()?;
        let src_port = r.u16()?;
        let dst = r.ipv6()?;
        let dst_port = r.u16()?;
        Ok(Self {
            hop_limit,
            src,
            src_port,
            dst,
            dst_port,
            payload: r.rest(),
        })
    }
}

/// Notice that the sender is closing the session, so the peer need not wait for the dead
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Goodbye {
    /// Why the session is closing.
    pub reason: GoodbyeReason,
}

/// Why a node closes a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoodbyeReason {
    /// The node is shutting down.
    Shutdown,
    /// A newer session to the same peer replaced this one.
    Replaced,
    /// The peer is not allowed in the mesh.
    Rejected,
    /// The session hit a protocol error.
    ProtocolError,
    /// A reason this version does not know.
    Other(u8),
}

impl GoodbyeReason {
    /// Returns the wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Shutdown => 1,
            Self::Replaced => 2,
            Self::Rejected => 3,
            Self::ProtocolError => 4,
            Self::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values become [`GoodbyeReason::Other`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Shutdown,
            2 => Self::Replaced,
            3 => Self::Rejected,
            4 => Self::ProtocolError,
            other => Self::Other(other),
        }
    }
}

impl Goodbye {
    /// Size of a goodbye message in bytes.
    pub const LEN: usize = 2;

    /// Encodes the notice as a complete link message.
    pub fn encode(&self) -> Vec<u8> {
        vec![MessageType::Goodbye as u8, self.reason.to_u8()]
    }

    /// Parses the fields after the type byte.
    fn parse_after_type(mut r: Reader<'_>) -> Result<Self, WireError> {
        let reason = GoodbyeReason::from_u8(r.u8()?);
        r.finish()?;
        Ok(Self { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
    const B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];

    fn sample_hello() -> Hello {
        Hello {
            capabilities: 0x0102_0304,
            session_id: 0x1112_1314_1516_1718,
            echo_session_id: 0x2122_2324_2526_2728,
            epoch: 0x3132_3334_3536_3738,
            address: Ipv6Addr::from(A),
            name: "ab".to_owned(),
            extensions: vec![HelloExtension {
                kind: 7,
                value: vec![0xaa, 0xbb],
            }],
        }
    }

    fn sample_hello_bytes() -> Vec<u8> {
        let mut v = vec![
            0x01, // type
            0x02, // version
            0x00, 0x00, // flags
            0x01, 0x02, 0x03, 0x04, // capabilities
            0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // session_id
            0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // echo_session_id
            0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, // epoch
        ];
        v.extend_from_slice(&A); // address
        v.extend_from_slice(&[2, b'a', b'b']); // name
        v.extend_from_slice(&[7, 0x00, 0x02, 0xaa, 0xbb]); // extension
        v
    }

    #[test]
    fn hello_layout() {
        let bytes = sample_hello_bytes();
        assert_eq!(bytes[48], 2, "name length sits at offset 48");
        assert_eq!(sample_hello().encode(), bytes);
        assert_eq!(
            LinkMessage::parse(&bytes),
            Ok(LinkMessage::Hello(sample_hello()))
        );
    }

    #[test]
    fn hello_ignores_flags_and_keeps_unknown_extensions_in_order() {
        let mut bytes = sample_hello_bytes();
        bytes[2] = 0xff;
        bytes[3] = 0x01;
        bytes.extend_from_slice(&[HelloExtension::NODE_KEY, 0, 0, 200, 0, 1, 9]);
        let Ok(LinkMessage::Hello(hello)) = LinkMessage::parse(&bytes) else {
            panic!("hello did not parse");
        };
        let kinds: Vec<u8> = hello.extensions.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [7, HelloExtension::NODE_KEY, 200]);
        assert_eq!(hello.extensions[2].value, [9]);
    }

    #[test]
    fn hello_errors() {
        let good = sample_hello_bytes();
        let parse = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            LinkMessage::parse(&b).map(|_| ())
        };
        assert_eq!(parse(&|_| ()), Ok(()));
        assert_eq!(
            parse(&|b| b[1] = 1),
            Err(WireError::UnsupportedVersion),
            "version 1"
        );
        assert_eq!(parse(&|b| b[1] = 0), Err(WireError::UnsupportedVersion));
        assert_eq!(
            parse(&|b| b[8..16].fill(0)),
            Err(WireError::BadValue),
            "zero session id"
        );
        assert_eq!(parse(&|b| b[49] = b'A'), Err(WireError::BadName));
        assert_eq!(parse(&|b| b[49] = 0xff), Err(WireError::BadName));
        assert_eq!(parse(&|b| b[48] = 0), Err(WireError::BadName));
        // Truncated inside the fixed part, the name, and an extension header and value.
        for cut in [1, 2, 30, 48, 49, 50, 52, 53, 54] {
            assert_eq!(
                LinkMessage::parse(&good[..cut]),
                Err(WireError::Truncated),
                "cut at {cut}"
            );
        }
        // Zero-length extension values are fine.
        assert!(parse(&|b| b.extend_from_slice(&[9, 0, 0])).is_ok());
        // An extension that claims more than is left.
        assert_eq!(
            parse(&|b| b.extend_from_slice(&[9, 0, 5, 1])),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn keepalive_layout() {
        let ka = Keepalive {
            nonce: 0x0102_0304_0506_0708,
        };
        let probe = [0x02, 1, 2, 3, 4, 5, 6, 7, 8];
        let reply = [0x03, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(ka.encode_probe(), probe);
        assert_eq!(ka.encode_reply(), reply);
        assert_eq!(LinkMessage::parse(&probe), Ok(LinkMessage::Keepalive(ka)));
        assert_eq!(
            LinkMessage::parse(&reply),
            Ok(LinkMessage::KeepaliveReply(ka))
        );
        assert_eq!(
            LinkMessage::parse(&[0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err(WireError::TrailingBytes)
        );
        assert_eq!(
            LinkMessage::parse(&[0x03, 1, 2, 3, 4, 5, 6, 7]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn segment_layout() {
        let seg = StreamSegment {
            conn: 0x0405_0607,
            seq: 0x0809_0a0b,
            ack: 0x0c0d_0e0f,
            sack: 0x1011_1213,
            window: 0x0203,
            payload: b"xy",
        };
        let bytes = [
            0x04, 0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, b'x', b'y',
        ];
        assert_eq!(seg.encode(), bytes);
        assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Segment(seg)));
        // Header only: an empty payload (pure acknowledgement).
        let ack_only = &bytes[..StreamSegment::HEADER_LEN];
        let Ok(LinkMessage::Segment(parsed)) = LinkMessage::parse(ack_only) else {
            panic!("ack-only segment did not parse");
        };
        assert!(parsed.payload.is_empty());
        // Reserved flags are ignored on parse.
        let mut flagged = bytes;
        flagged[1] = 0x80;
        assert_eq!(LinkMessage::parse(&flagged), Ok(LinkMessage::Segment(seg)));
        assert_eq!(
            LinkMessage::parse(&bytes[..StreamSegment::HEADER_LEN - 1]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn control_datagram_layout() {
        let dg = ControlDatagram {
            hop_limit: 64,
            src: Ipv6Addr::from(A),
            src_port: 0x0102,
            dst: Ipv6Addr::from(B),
            dst_port: 0x0304,
            payload: b"z",
        };
        let mut bytes = vec![0x05, 64];
        bytes.extend_from_slice(&A);
        bytes.extend_from_slice(&[0x01, 0x02]);
        bytes.extend_from_slice(&B);
        bytes.extend_from_slice(&[0x03, 0x04]);
        assert_eq!(bytes.len(), ControlDatagram::HEADER_LEN);
        bytes.push(b'z');
        assert_eq!(dg.encode(), bytes);
        assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Control(dg)));
        assert_eq!(
            LinkMessage::parse(&bytes[..ControlDatagram::HEADER_LEN - 1]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn goodbye_layout() {
        let bye = Goodbye {
            reason: GoodbyeReason::Replaced,
        };
        assert_eq!(bye.encode(), [0x06, 0x02]);
        assert_eq!(
            LinkMessage::parse(&[0x06, 0x02]),
            Ok(LinkMessage::Goodbye(bye))
        );
        assert_eq!(
            LinkMessage::parse(&[0x06, 0x63]),
            Ok(LinkMessage::Goodbye(Goodbye {
                reason: GoodbyeReason::Other(0x63)
            }))
        );
        assert_eq!(
            LinkMessage::parse(&[0x06, 0x01, 0x00]),
            Err(WireError::TrailingBytes)
        );
        assert_eq!(LinkMessage::parse(&[0x06]), Err(WireError::Truncated));
    }

    #[test]
    fn demultiplexing() {
        assert_eq!(LinkMessage::parse(&[]), Err(WireError::Truncated));
        // Any first byte 0x60..=0x6f is IPv6, whatever follows; nothing else is checked.
        for first in 0x60..=0x6f {
            let buf = [first, 0xff];
            assert!(is_ipv6(&buf));
            assert_eq!(LinkMessage::parse(&buf), Ok(LinkMessage::Ipv6(&buf)));
        }
        assert_eq!(LinkMessage::parse(&[0x60]), Ok(LinkMessage::Ipv6(&[0x60])));
        // Any first byte 0x40..=0x4f is IPv4.
        for first in 0x40..=0x4f {
            let buf = [first, 0xff];
            assert!(is_ipv4(&buf) && is_ip_packet(&buf) && !is_ipv6(&buf));
            assert_eq!(LinkMessage::parse(&buf), Ok(LinkMessage::Ipv4(&buf)));
        }
        for first in [0x00, 0x07, 0x3f, 0x5f, 0x70, 0xff] {
            assert!(!is_ipv6(&[first]) && !is_ip_packet(&[first]));
            assert_eq!(LinkMessage::parse(&[first]), Err(WireError::UnknownType));
        }
        assert!(!is_ipv6(&[]));
    }

    #[test]
    fn message_type_values_round_trip() {
        for v in 0..=u8::MAX {
            if let Some(t) = MessageType::from_u8(v) {
                assert_eq!(t as u8, v);
            }
        }
        assert_eq!(MessageType::from_u8(0), None);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    fn addr() -> impl Strategy<Value = Ipv6Addr> {
        any::<u128>().prop_map(Ipv6Addr::from)
    }

    fn hello() -> impl Strategy<Value = Hello> {
        (
            any::<u32>(),
            1..=u64::MAX,
            any::<u64>(),
            any::<u64>(),
            addr(),
            name(),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..80))
                    .prop_map(|(kind, value)| HelloExtension { kind, value }),
                0..4,
            ),
        )
            .prop_map(
                |(capabilities, session_id, echo_session_id, epoch, address, name, extensions)| {
                    Hello {
                        capabilities,
                        session_id,
                        echo_session_id,
                        epoch,
                        address,
                        name,
                        extensions,
                    }
                },
            )
    }

    fn reason() -> impl Strategy<Value = GoodbyeReason> {
        any::<u8>().prop_map(GoodbyeReason::from_u8)
    }

    proptest! {
        #[test]
        fn hello_round_trips(h in hello()) {
            let bytes = h.encode();
            prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Hello(h)));
        }

        #[test]
        fn keepalive_round_trips(nonce in any::<u64>()) {
            let ka = Keepalive { nonce };
            let (probe, reply) = (ka.encode_probe(), ka.encode_reply());
            prop_assert_eq!(LinkMessage::parse(&probe), Ok(LinkMessage::Keepalive(ka)));
            prop_assert_eq!(LinkMessage::parse(&reply), Ok(LinkMessage::KeepaliveReply(ka)));
        }

        #[test]
        fn segment_round_trips(
            conn in any::<u32>(),
            seq in any::<u32>(),
            ack in any::<u32>(),
            sack in any::<u32>(),
            window in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let seg = StreamSegment { conn, seq, ack, sack, window, payload: &payload };
            let bytes = seg.encode();
            prop_assert_eq!(bytes.len(), StreamSegment::HEADER_LEN + payload.len());
            prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Segment(seg)));
        }

        #[test]
        fn control_round_trips(
            hop_limit in any::<u8>(),
            src in addr(),
            src_port in any::<u16>(),
            dst in addr(),
            dst_port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let dg = ControlDatagram { hop_limit, src, src_port, dst, dst_port, payload: &payload };
            let bytes = dg.encode();
            prop_assert_eq!(bytes.len(), ControlDatagram::HEADER_LEN + payload.len());
            prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Control(dg)));
        }

        #[test]
        fn goodbye_round_trips(reason in reason()) {
            let bye = Goodbye { reason };
            let bytes = bye.encode();
            prop_assert_eq!(reason.to_u8(), bytes[1]);
            prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Goodbye(bye)));
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(msg) = LinkMessage::parse(&buf) {
                let again = msg.encode();
                prop_assert_eq!(LinkMessage::parse(&again), Ok(msg));
            }
        }

        #[test]
        fn parse_never_panics_on_typed_input(
            ty in 0u8..8,
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut buf = vec![ty];
            buf.extend_from_slice(&rest);
            let _ = LinkMessage::parse(&buf);
        }

        #[test]
        fn truncated_hello_never_parses(h in hello(), cut in 0usize..400) {
            let bytes = h.encode();
            // Every cut inside the fixed part and name is reported as truncated.
            let fixed = Hello::FIXED_LEN + h.name.len();
            let cut = cut % fixed;
            prop_assert_eq!(LinkMessage::parse(&bytes[..cut]).err(), Some(WireError::Truncated));
        }
    }
}
