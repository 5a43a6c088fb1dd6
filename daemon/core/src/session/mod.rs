//! The session that runs over one link: hello exchange, liveness, and the routing stream.
//!
//! A link is one backend connection (a DTLS association or a TCP connection). When the driver
//! reports it up, the node creates a [`Session`] for it. Both ends send hellos until each has
//! seen the other's hello echoing its own session id; then the session is established and the
//! reliable routing stream starts. Any message from the peer counts as a sign of life: after
//! `keepalive_idle` of silence the session sends keepalives, after `dead_interval` it is dead.
//! The idle clock starts when the session starts, so a slow first hello is not mistaken for
//! a dead peer.
//!
//! The session never sees the IPv6 data path except to note that the peer is alive; the node
//! routes packets.

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::record::{RecordDecoder, RecordLimits};
use connectopus_wire::{
    Cost, Goodbye, GoodbyeReason, Hello, HelloExtension, Keepalive, StreamSegment,
};

use crate::LinkId;
use crate::identity::{self, NodeKey};
use crate::stream::{ReliableStream, StreamConfig, StreamError, StreamStats};
use crate::time::Time;

/// What the driver knows about a link when it comes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Largest link message (and so largest IPv6 packet) the link carries, in bytes.
    pub mtu: u16,
    /// Cost this node assigns to sending over the link.
    pub cost: Cost,
    /// Human-readable origin of the link, e.g. the backend name and remote address.
    pub label: String,
    /// The channel binding of the link's (D)TLS session: its 32-byte keying-material exporter
    /// value, the same at both ends of one session. `None` for plain TCP; hellos then carry a
    /// fresh challenge, and each end signs the challenge the other chose (so a recorded hello
    /// is worthless on another link), but a live relay between two links cannot be detected.
    /// A driver whose exporter fails must close the link, never pass `None` for it.
    pub channel_binding: Option<[u8; 32]>,
    /// The node name the dialer expects at the other end (its `peer_node`); with a trust policy,
    /// a hello from any other name is refused.
    pub expected_peer: Option<String>,
    /// The link is a plaintext UDP link (`udp-dialer`/`udp-listener`): one link message per
    /// datagram, the format the eBPF fast path encapsulates and decapsulates itself. Only such
    /// a link advertises [`connectopus_wire::Hello::CAP_EBPF_DECAP`] and gets fast-path entries.
    pub plain_udp: bool,
}

impl LinkInfo {
    /// Returns link information with no channel binding and no expected peer.
    pub fn new(mtu: u16, cost: Cost, label: impl Into<String>) -> Self {
        Self {
            mtu,
            cost,
            label: label.into(),
            channel_binding: None,
            expected_peer: None,
            plain_udp: false,
        }
    }
}

/// Session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimers {
    /// Resend the hello this often until the session is established.
    pub hello_interval: Duration,
    /// Start sending keepalives after this much silence from the peer.
    pub keepalive_idle: Duration,
    /// Send keepalives this often while the peer stays silent.
    pub keepalive_interval: Duration,
    /// Declare the session dead after this much silence (also bounds the hello exchange).
    pub dead_interval: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        Self {
            hello_interval: Duration::from_secs(1),
            keepalive_idle: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(1),
            dead_interval: Duration::from_secs(7),
        }
    }
}

/// The peer as its hello describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node address.
    pub address: Ipv6Addr,
    /// The peer's node name.
    pub name: String,
    /// The peer's routing epoch.
    pub epoch: u64,
    /// The peer's id for this session.
    pub session_id: u64,
    /// The peer's capability bits.
    pub capabilities: u32,
    /// The peer's node key, verified against the trust policy (`None` without one).
    pub key: Option<[u8; 32]>,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Exchanging hellos.
    Handshaking,
    /// Hellos exchanged; routing stream and data flow.
    Established,
}

impl SessionState {
    /// Returns a short name for `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Handshaking => "handshaking",
            SessionState::Established => "established",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseReason {
    /// Nothing heard from the peer for the dead interval.
    Timeout,
    /// The hello exchange did not finish within the dead interval.
    HandshakeTimeout,
    /// The driver reported the transport gone.
    LinkDown,
    /// The peer said goodbye.
    PeerGoodbye,
    /// The peer restarted (new epoch) and a newer session replaced this one.
    Replaced,
    /// The peer claimed this node's own address, or another identity this node refuses.
    PeerRejected,
    /// The routing stream failed or carried garbage.
    StreamFailed,
    /// The peer kept its routing-stream window closed for the persist timeout.
    WindowStalled,
    /// The node's routing streams held more than its memory budget, this session the most.
    OverBudget,
    /// This node is shutting down.
    Shutdown,
    /// The peer is an ephemeral node whose lease certificate ran out (expired, superseded by a
    /// later holder, or no longer granted).
    LeaseExpired,
}

impl CloseReason {
    /// Returns a short, stable name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Timeout => "timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::LinkDown => "link_down",
            CloseReason::PeerGoodbye => "peer_goodbye",
            CloseReason::Replaced => "replaced",
            CloseReason::PeerRejected => "peer_rejected",
            CloseReason::StreamFailed => "stream_failed",
            CloseReason::WindowStalled => "window_stalled",
            CloseReason::OverBudget => "over_budget",
            CloseReason::Shutdown => "shutdown",
            CloseReason::LeaseExpired => "lease_expired",
        }
    }

    /// Returns the goodbye reason to send for a close this node initiates, if any.
    pub fn goodbye(self) -> Option<GoodbyeReason> {
        match self {
            CloseReason::Shutdown => Some(GoodbyeReason::Shutdown),
            CloseReason::Replaced => Some(GoodbyeReason::Replaced),
            CloseReason::PeerRejected | CloseReason::LeaseExpired => Some(GoodbyeReason::Rejected),
            CloseReason::StreamFailed | CloseReason::WindowStalled | CloseReason::OverBudget => {
                Some(GoodbyeReason::ProtocolError)
            }
            CloseReason::Timeout
            | CloseReason::HandshakeTimeout
            | CloseReason::LinkDown
            | CloseReason::PeerGoodbye => None,
        }
    }
}

/// Traffic counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Link messages received.
    pub messages_in: u64,
    /// Link messages sent.
    pub messages_out: u64,
    /// Bytes received in link messages.
    pub bytes_in: u64,
    /// Bytes sent in link messages.
    pub bytes_out: u64,
}

/// What handling a hello led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HelloOutcome {
    /// Nothing changed.
    Nothing,
    /// The session just became established.
    Established,
    /// The peer started a new session on this link (it restarted); the old one is over.
    PeerRestarted {
        /// The peer before the restart.
        previous: PeerInfo,
    },
}

/// This end's random values for one session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionIds {
    /// The hello session id (never 0).
    pub(crate) session_id: u64,
    /// The hello challenge, used on a link without a channel binding.
    pub(crate) challenge: [u8; 32],
}

/// One session over one link.
#[derive(Debug)]
pub struct Session {
    link: LinkId,
    info: LinkInfo,
    timers: SessionTimers,
    stream_config: StreamConfig,
    record_limits: RecordLimits,
    local_session_id: u64,
    /// This end's challenge on a link without a channel binding (`None` on a (D)TLS link).
    local_challenge: Option<[u8; 32]>,
    /// The challenge of the peer's latest hello, if it carried one.
    peer_challenge: Option<[u8; 32]>,
    /// The session id of the peer's latest hello (verified or not), echoed in our hellos.
    echo_session_id: u64,
    state: SessionState,
    peer: Option<PeerInfo>,
    started_at: Time,
    established_at: Option<Time>,
    last_received: Time,
    next_hello_at: Option<Time>,
    next_keepalive_at: Option<Time>,
    outstanding_probe: Option<(u64, Time)>,
    rtt: Option<Duration>,
    stream: Option<ReliableStream>,
    decoder: RecordDecoder,
    counters: SessionCounters,
    /// Messages ready for the link, in order.
    outbox: Vec<Vec<u8>>,
}

impl Session {
    pub(crate) fn new(
        link: LinkId,
        info: LinkInfo,
        timers: SessionTimers,
        stream_config: StreamConfig,
        record_limits: RecordLimits,
        ids: SessionIds,
        now: Time,
    ) -> Self {
        let SessionIds {
            session_id: local_session_id,
            challenge,
        } = ids;
        let local_challenge = info.channel_binding.is_none().then_some(challenge);
        Self {
            link,
            info,
            timers,
            stream_config,
            record_limits,
            local_session_id,
            local_challenge,
            peer_challenge: None,
            echo_session_id: 0,
            state: SessionState::Handshaking,
            peer: None,
            started_at: now,
            established_at: None,
            last_received: now,
            next_hello_at: Some(now),
            next_keepalive_at: None,
            outstanding_probe: None,
            rtt: None,
            stream: None,
            decoder: RecordDecoder::with_limits(record_limits),
            counters: SessionCounters::default(),
            outbox: Vec::new(),
        }
    }

    /// Returns the link this session runs on.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// Returns what the driver said about the link.
    pub fn info(&self) -> &LinkInfo {
        &self.info
    }

    pub(crate) fn set_cost(&mut self, cost: Cost) {
        self.info.cost = cost;
    }

    /// Returns the session state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Returns true once hellos have been exchanged.
    pub fn is_established(&self) -> bool {
        self.state == SessionState::Established
    }

    /// Returns the peer, once its hello has arrived.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Returns true if the session is established and the peer said in its hello that it
    /// decapsulates this link's data in eBPF ([`connectopus_wire::Hello::CAP_EBPF_DECAP`]);
    /// the fast path may send to it only then.
    pub fn peer_decapsulates_in_ebpf(&self) -> bool {
        self.is_established()
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.capabilities & Hello::CAP_EBPF_DECAP != 0)
    }

    /// Returns this end's session id.
    pub fn local_session_id(&self) -> u64 {
        self.local_session_id
    }

    /// Returns when the link came up.
    pub fn started_at(&self) -> Time {
        self.started_at
    }

    /// Returns when the session became established (the current one, after a peer restart).
    pub fn established_at(&self) -> Option<Time> {
        self.established_at
    }

    /// Returns when the peer was last heard from.
    pub fn last_received(&self) -> Time {
        self.last_received
    }

    /// Returns the latest keepalive round-trip time, or the stream's estimate.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
            .or_else(|| self.stream.as_ref().and_then(|s| s.smoothed_rtt()))
    }

    /// Returns the traffic counters.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Returns the routing stream's counters, once established.
    pub fn stream_stats(&self) -> Option<StreamStats> {
        self.stream.as_ref().map(|s| s.stats())
    }

    /// Returns every byte the session holds for its routing stream: the stream's buffers and
    /// the part of a record received so far.
    pub fn buffered_bytes(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(0, ReliableStream::buffered_bytes)
            + self.decoder.buffered_len()
    }

    /// Returns the largest payload a stream segment may carry on this link.
    fn segment_payload(&self) -> usize {
        usize::from(self.info.mtu)
            .saturating_sub(StreamSegment::HEADER_LEN)
            .clamp(64, self.stream_config.max_segment_payload.max(64))
    }

    /// Returns what this end's hello signature covers: the link's exporter value, or on a
    /// link without one the challenge of the peer's latest hello (zeros before it arrived).
    pub(crate) fn signing_binding(&self) -> [u8; 32] {
        self.info
            .channel_binding
            .or(self.peer_challenge)
            .unwrap_or([0; 32])
    }

    /// Returns what the peer's hello signature must cover: the link's exporter value, or this
    /// end's own challenge.
    pub(crate) fn verifying_binding(&self) -> [u8; 32] {
        self.info
            .channel_binding
            .or(self.local_challenge)
            .unwrap_or([0; 32])
    }

    /// Returns true if a hello on this link can only be verified once it echoes this end's
    /// session id: the link has no channel binding, so the peer's signature covers this end's
    /// challenge, which the peer learns from this end's hello.
    pub(crate) fn verifies_by_challenge(&self) -> bool {
        self.local_challenge.is_some()
    }

    /// Notes the session id and challenge of a hello from the peer, verified or not: our next
    /// hello echoes that id and signs that challenge.
    pub(crate) fn note_peer_hello(&mut self, hello: &Hello) {
        self.echo_session_id = hello.session_id;
        let mut challenges = hello
            .extensions
            .iter()
            .filter(|e| e.kind == HelloExtension::CHALLENGE);
        self.peer_challenge = match (challenges.next(), challenges.next()) {
            (Some(e), None) => e.value.as_slice().try_into().ok(),
            _ => None,
        };
    }

    /// Makes the next hello go out at once (the peer has not seen ours yet).
    pub(crate) fn answer_hello_now(&mut self, now: Time) {
        self.next_hello_at = Some(now);
    }

    /// Builds this end's hello: on a link without a channel binding it carries this end's
    /// challenge; with a node key, it carries the key and its signature over the link's channel
    /// binding (or the peer's challenge) and the session (see
    /// [`crate::identity::hello_message`]).
    pub(crate) fn hello(
        &self,
        address: Ipv6Addr,
        name: &str,
        epoch: u64,
        key: Option<&NodeKey>,
        capabilities: u32,
        certificate: Option<&[u8]>,
    ) -> Hello {
        let mut extensions = Vec::new();
        if let Some(challenge) = self.local_challenge {
            extensions.push(HelloExtension {
                kind: HelloExtension::CHALLENGE,
                value: challenge.to_vec(),
            });
        }
        if let Some(key) = key {
            let message = identity::hello_message(
                &self.signing_binding(),
                self.local_session_id,
                epoch,
                address,
                name,
            );
            extensions.push(HelloExtension {
                kind: HelloExtension::NODE_KEY,
                value: key.public().to_vec(),
            });
            extensions.push(HelloExtension {
                kind: HelloExtension::SIGNATURE,
                value: key.sign(&message).to_vec(),
            });
        }
        if let Some(certificate) = certificate {
            extensions.push(HelloExtension {
                kind: HelloExtension::LEASE_CERTIFICATE,
                value: certificate.to_vec(),
            });
        }
        Hello {
            capabilities,
            session_id: self.local_session_id,
            echo_session_id: self.echo_session_id,
            epoch,
            address,
            name: name.to_owned(),
            extensions,
        }
    }

    /// Notes that something arrived from the peer.
    pub(crate) fn note_received(&mut self, now: Time, len: usize) {
        self.last_received = now;
        self.next_keepalive_at = None;
        self.counters.messages_in += 1;
        self.counters.bytes_in += len as u64;
    }

    /// Notes what a dataplane worker forwarded on this link since its last report: data
    /// received counts as liveness, like any message.
    pub(crate) fn note_traffic(&mut self, traffic: &crate::forwarder::LinkTraffic) {
        if let Some(at) = traffic.last_received
            && at > self.last_received
        {
            self.last_received = at;
            self.next_keepalive_at = None;
        }
        self.counters.messages_in += traffic.packets_in;
        self.counters.bytes_in += traffic.bytes_in;
        self.counters.messages_out += traffic.packets_out;
        self.counters.bytes_out += traffic.bytes_out;
    }

    /// Notes that a message was sent to the peer by the data path.
    pub(crate) fn note_sent(&mut self, len: usize) {
        self.counters.messages_out += 1;
        self.counters.bytes_out += len as u64;
    }

    /// Processes the peer's hello. The caller has checked that the peer may join, and passes
    /// the node key it verified, if any.
    pub(crate) fn handle_hello(
        &mut self,
        now: Time,
        hello: &Hello,
        key: Option<[u8; 32]>,
    ) -> HelloOutcome {
        let mut outcome = HelloOutcome::Nothing;
        self.echo_session_id = hello.session_id;
        let incoming = PeerInfo {
            address: hello.address,
            name: hello.name.clone(),
            epoch: hello.epoch,
            session_id: hello.session_id,
            capabilities: hello.capabilities,
            key,
        };
        match &self.peer {
            Some(known) if known.session_id == hello.session_id => {}
            Some(known) => {
                // A new session id on the same link: the peer restarted its side.
                let previous = known.clone();
                let was_established = self.is_established();
                self.reset_to_handshake(now);
                self.peer = Some(incoming);
                if was_established {
                    outcome = HelloOutcome::PeerRestarted { previous };
                }
            }
            None => self.peer = Some(incoming),
        }
        let echoed = hello.echo_session_id == self.local_session_id;
        if !echoed {
            // The peer has not seen our hello (or saw an old one): answer at once.
            self.next_hello_at = Some(now);
        }
        if echoed && self.state == SessionState::Handshaking {
            // Make sure the peer sees our echo of its id even if it established first.
            self.next_hello_at = Some(now);
            self.establish(now);
            if outcome == HelloOutcome::Nothing {
                outcome = HelloOutcome::Established;
            }
        }
        outcome
    }

    fn reset_to_handshake(&mut self, now: Time) {
        self.state = SessionState::Handshaking;
        self.established_at = None;
        self.stream = None;
        self.decoder = RecordDecoder::with_limits(self.record_limits);
        self.next_hello_at = Some(now);
        self.outstanding_probe = None;
    }

    fn establish(&mut self, now: Time) {
        let peer_session_id = self.peer.as_ref().map_or(0, |p| p.session_id);
        let mut config = self.stream_config.clone();
        config.max_segment_payload = self.segment_payload();
        self.stream = Some(ReliableStream::new(
            config,
            self.local_session_id as u32,
            peer_session_id as u32,
            now,
        ));
        self.state = SessionState::Established;
        self.established_at = Some(now);
    }

    /// Answers a keepalive probe.
    pub(crate) fn handle_keepalive(&mut self, probe: Keepalive) {
        self.outbox.push(probe.encode_reply());
    }

    /// Takes a keepalive reply as a round-trip sample.
    pub(crate) fn handle_keepalive_reply(&mut self, now: Time, reply: Keepalive) {
        if let Some((nonce, sent_at)) = self.outstanding_probe
            && nonce == reply.nonce
        {
            self.rtt = Some(now - sent_at);
            self.outstanding_probe = None;
        }
    }

    /// Feeds a routing-stream segment; returns the complete records that arrived.
    ///
    /// # Errors
    /// The stream is corrupt (a record frame is invalid); the session must close.
    pub(crate) fn handle_segment(
        &mut self,
        now: Time,
        segment: &StreamSegment<'_>,
        records: &mut Vec<connectopus_wire::Record>,
    ) -> Result<(), ()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        stream.handle_segment(now, segment);
        let mut bytes = Vec::new();
        stream.read(&mut bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        self.decoder.push(&bytes);
        loop {
            match self.decoder.next_record() {
                Ok(Some(record)) => records.push(record),
                Ok(None) => return Ok(()),
                Err(_) => return Err(()),
            }
        }
    }

    /// Queues a framed record on the routing stream.
    ///
    /// # Errors
    /// The stream is not established, is full or has failed.
    pub(crate) fn send_record(&mut self, framed: &[u8]) -> Result<(), StreamError> {
        match self.stream.as_mut() {
            Some(stream) => stream.send(framed),
            None => Err(StreamError::PeerUnresponsive),
        }
    }

    /// Returns the routing stream's (acknowledged offset, queued end), once established.
    pub(crate) fn stream_offsets(&self) -> Option<(u64, u64)> {
        self.stream
            .as_ref()
            .map(|s| (s.acknowledged_offset(), s.queued_end()))
    }

    /// Queues a goodbye.
    pub(crate) fn say_goodbye(&mut self, reason: GoodbyeReason) {
        self.outbox.push(Goodbye { reason }.encode());
    }

    /// Runs the session's timers; returns a reason if the session must close.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Time,
        nonce: impl FnOnce() -> u64,
    ) -> Option<CloseReason> {
        let idle = now - self.last_received;
        if idle >= self.timers.dead_interval {
            return Some(match self.state {
                SessionState::Handshaking => CloseReason::HandshakeTimeout,
                SessionState::Established => CloseReason::Timeout,
            });
        }
        if let Some(stream) = self.stream.as_mut() {
            stream.handle_timeout(now);
            match stream.failure() {
                None => {}
                Some(StreamError::WindowStalled) => return Some(CloseReason::WindowStalled),
                Some(_) => return Some(CloseReason::StreamFailed),
            }
        }
        if self.is_established() && idle >= self.timers.keepalive_idle {
            let due = self
                .next_keepalive_at
                .unwrap_or(self.last_received + self.timers.keepalive_idle);
            if now >= due {
                let probe = Keepalive { nonce: nonce() };
                self.outstanding_probe = Some((probe.nonce, now));
                self.outbox.push(probe.encode_probe());
                self.next_keepalive_at = Some(now + self.timers.keepalive_interval);
            }
        }
        None
    }

    /// Returns true if a hello is due at `now`; the caller then sends one and calls
    /// [`Session::hello_sent`].
    pub(crate) fn hello_due(&self, now: Time) -> bool {
        self.next_hello_at.is_some_and(|t| now >= t)
    }

    pub(crate) fn hello_sent(&mut self, now: Time) {
        self.next_hello_at = if self.is_established() {
            None
        } else {
            Some(now + self.timers.hello_interval)
        };
    }

    /// Returns the session's next deadline and what it is for.
    pub(crate) fn poll_timeout(&self) -> Option<(Time, &'static str)> {
        let mut next = (
            self.last_received + self.timers.dead_interval,
            "session dead interval",
        );
        let mut consider = |t: Option<Time>, why: &'static str| {
            if let Some(t) = t
                && t < next.0
            {
                next = (t, why);
            }
        };
        consider(self.next_hello_at, "hello resend");
        if self.is_established() {
            consider(
                Some(
                    self.next_keepalive_at
                        .unwrap_or(self.last_received + self.timers.keepalive_idle),
                ),
                "keepalive",
            );
        }
        consider(
            self.stream.as_ref().and_then(|s| s.poll_timeout()),
            "stream retransmission",
        );
        Some(next)
    }

    /// Moves every message ready for the link into `out`, in order.
    pub(crate) fn drain_outbox(&mut self, now: Time, out: &mut Vec<Vec<u8>>) {
        for message in self.outbox.drain(..) {
            self.counters.messages_out += 1;
            self.counters.bytes_out += message.len() as u64;
            out.push(message);
        }
        if let Some(stream) = self.stream.as_mut() {
            while let Some(segment) = stream.poll_transmit(now) {
                let message = segment.encode();
                self.counters.messages_out += 1;
                self.counters.bytes_out += message.len() as u64;
                out.push(message);
            }
        }
    }

    /// Queues an encoded hello.
    pub(crate) fn push_message(&mut self, message: Vec<u8>) {
        self.outbox.push(message);
    }
}

#[cfg(test)]
mod tests;
