//! Link messages, demultiplexed by their first byte.
//!
//! A message whose first byte has the high nibble 6 is a raw IPv6 packet with no extra header,
//! so the data path forwards packets without copying them to prepend anything.
//! Every other message starts with a one-byte [`MessageType`].
//! Layouts are in `docs/protocol.md`.

use std::net::Ipv6Addr;

use crate::WireError;

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

/// A parsed link message; borrows its payload from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// A raw IPv6 packet (the whole message).
    Ipv6(&'a [u8]),
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
        let _ = buf;
        todo!("wire: LinkMessage::parse")
    }
}

/// Returns true if a link message is a raw IPv6 packet (high nibble of the first byte is 6).
#[inline]
pub fn is_ipv6(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 4 == 6)
}

/// Opening message of a session, sent by both ends until each has seen the other's.
///
/// `session_id` is chosen at random by the sender for each session (never zero);
/// `echo_session_id` is the peer's `session_id` as last seen, or zero.
/// A session is established once a node has received the peer's hello *and* that hello echoes
/// the node's own `session_id`.
/// `extensions` carry optional fields as (kind, value) pairs; the node-identity work adds the
/// node key (kind 1) and a signature (kind 2). Unknown kinds are kept by the parser and ignored
/// by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Feature bits; none are defined yet, and unknown bits are ignored.
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
}

impl Hello {
    /// Encodes the hello as a complete link message.
    pub fn encode(&self) -> Vec<u8> {
        todo!("wire: Hello::encode")
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
    /// Encodes a keepalive probe as a complete link message.
    pub fn encode_probe(&self) -> Vec<u8> {
        todo!("wire: Keepalive::encode_probe")
    }

    /// Encodes a keepalive reply as a complete link message.
    pub fn encode_reply(&self) -> Vec<u8> {
        todo!("wire: Keepalive::encode_reply")
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
        todo!("wire: StreamSegment::encode")
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
        todo!("wire: ControlDatagram::encode")
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
    /// Encodes the notice as a complete link message.
    pub fn encode(&self) -> Vec<u8> {
        todo!("wire: Goodbye::encode")
    }
}
