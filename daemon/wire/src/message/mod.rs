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
mod tests;
