//! Plaintext UDP links (`udp-dialer`, `udp-listener`): IPv6-in-UDP for an underlay that is
//! already trusted or encrypted below.
//!
//! Every datagram is one link message as it is, nothing around it (docs/protocol.md,
//! "Plaintext UDP links"): a data datagram is exactly one raw IPv6 packet (first nibble 6 and
//! `payload length + 40` equal to the datagram's length), a control datagram starts with a
//! message type below 0x60 (hello, keepalive, routing-stream segment, ...). So an eBPF program
//! classifies a datagram by its first byte and length, and the userspace data path sends a
//! packet from the TUN device where it lies (no copy), and a TUN super-packet as one UDP GSO
//! `sendmsg` of its segments; a UDP GRO receive is split in place.
//!
//! Identity: there is no channel binding, so each end's hello signs the fresh challenge the
//! other end chose (as on plain TCP). A listener makes a link only for a hello from an unknown
//! address (rate-limited by source prefix, and at most [`MAX_PENDING`] waiting for a session);
//! anything else from an address that is no link's peer is dropped and counted
//! (`udp_unknown_source_dropped`). Data from a link's address is forwarded only once its session
//! is established (the core checks), which with node identities means authenticated.
//! The sockets set `UDP_NO_CHECK6_RX`: the eBPF fast path sends outer UDP over IPv6 with a zero
//! checksum.

use connectopus_config::{UdpDialer, UdpListener};
use connectopus_offload::VnetHeader;
use connectopus_wire::MessageType;
use uring_io::BufId;

use super::dtls::normalize;
use super::gso_send::{Plaintext, UdpTarget};
use super::handshake_limits::{MAX_PENDING_PER_SOURCE, Pending, eviction};
use super::*;

/// Most links of one plaintext listener waiting for their session (each one a hello from a
/// new address, which costs nothing to forge).
pub(super) const MAX_PENDING: usize = 256;

/// Length of the IPv6 header.
const IPV6_HEADER_LEN: usize = 40;

/// A plaintext UDP link: which endpoint's socket carries it.
#[derive(Debug)]
pub(super) struct PlainUdpLink {
    /// Index of the UDP endpoint in `Daemon::udp`.
    pub(super) endpoint: usize,
    /// The local address the peer sent to, sent from (see `DtlsLink::local`).
    pub(super) local: Option<std::net::IpAddr>,
    /// The dataplane worker that receives the link's datagrams (0: the main loop); `None`
    /// until its session is established (see `workers::receive_plain`).
    pub(super) rx_worker: Option<usize>,
}

/// What plaintext UDP endpoints dropped (`status` counters).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PlainUdpCounters {
    /// Datagrams from an address that is no link's peer, other than hellos to a listener:
    /// spoofed, or late after the link closed.
    pub(super) unknown_source_dropped: u64,
    /// Datagrams that are neither a whole IPv6 packet nor a control message.
    pub(super) malformed_dropped: u64,
    /// Hellos from unknown addresses over the per-prefix rate limit.
    pub(super) hellos_rate_limited: u64,
    /// Data packets whose TCP/UDP checksum the peer's eBPF fast path left partial (an
    /// offload's job) and userspace completed.
    pub(super) partial_checksums_completed: u64,
    /// Super-packets the peer's eBPF fast path encapsulated whole (`super_packets.rs`).
    pub(super) super_packets: super::super_packets::SuperPacketCounters,
}

impl PlainUdpCounters {
    /// Adds what a worker thread counted.
    pub(super) fn add(&mut self, other: &Self) {
        self.unknown_source_dropped += other.unknown_source_dropped;
        self.malformed_dropped += other.malformed_dropped;
        self.hellos_rate_limited += other.hellos_rate_limited;
        self.partial_checksums_completed += other.partial_checksums_completed;
        self.super_packets.received += other.super_packets.received;
        self.super_packets.delivered_whole += other.super_packets.delivered_whole;
        self.super_packets.cut += other.super_packets.cut;
    }

    pub(super) fn report(&self, map: &mut BTreeMap<String, u64>) {
        map.insert(
            "udp_unknown_source_dropped".to_owned(),
            self.unknown_source_dropped,
        );
        map.insert("udp_malformed_dropped".to_owned(), self.malformed_dropped);
        map.insert(
            "udp_hellos_rate_limited".to_owned(),
            self.hellos_rate_limited,
        );
        map.insert(
            "udp_partial_checksums_completed".to_owned(),
            self.partial_checksums_completed,
        );
        self.super_packets.report(map);
    }
}

/// What a datagram on a plaintext link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Datagram {
    /// Exactly one IPv6 packet.
    Data,
    /// A link message for the core.
    Control,
    /// Neither.
    Malformed,
}

pub(super) fn classify(datagram: &[u8]) -> Datagram {
    match datagram.first() {
        Some(b) if b >> 4 == 6 => {
            let payload_len = datagram
                .get(4..6)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
            if payload_len.is_some_and(|p| p + IPV6_HEADER_LEN == datagram.len()) {
                Datagram::Data
            } else {
                Datagram::Malformed
            }
        }
        Some(b) if *b < 0x60 => Datagram::Control,
        _ => Datagram::Malformed,
    }
}

/// Asks the kernel to accept UDP over IPv6 with a zero checksum on `socket`
/// (`UDP_NO_CHECK6_RX`): what the eBPF fast path sends.
pub(super) fn accept_zero_checksums(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is an open socket owned by `socket` for the duration of the call, and the
    // option value points at a live c_int whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_NO_CHECK6_RX,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(super) fn zero_checksums(backend: &str, socket: &std::net::UdpSocket) {
    if let Err(error) = accept_zero_checksums(socket) {
        // Only the (future) eBPF fast path sends them; userspace links work without.
        tracing::info!(%backend, %error, "UDP_NO_CHECK6_RX unavailable");
    }
}

impl Daemon {
    /// Starts a `udp-listener`; returns its endpoint.
    pub(super) fn start_plain_udp_listener(
        &mut self,
        name: &str,
        l: &UdpListener,
        settings: &TcpBackend,
    ) -> Result<usize> {
        let ip = l
            .listen_ip
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let port = l
            .port
            .with_context(|| format!("backend {name}: a listener needs a port"))?;
        let bind = SocketAddr::new(ip, port);
        // `SO_REUSEPORT` with worker threads: each established link is received on a socket of
        // its own, connected to the peer (`workers::main_side`).
        let socket = dtls_link::bind_listener(bind, self.dataplane.has_threads())
            .with_context(|| format!("backend {name}"))?;
        zero_checksums(name, &socket);
        tracing::info!(backend = %name, %bind, "udp listener up");
        self.add_udp(UdpEndpoint {
            socket: Arc::new(socket),
            backend: name.to_owned(),
            cost: settings.cost,
            mtu: settings.mtu,
            role: UdpRole::PlainListener,
        })
    }

    /// Starts a `udp-dialer`; returns its endpoint. Its link starts at the first dial.
    pub(super) fn start_plain_udp_dialer(
        &mut self,
        name: &str,
        d: &UdpDialer,
        settings: &TcpBackend,
    ) -> Result<usize> {
        let socket = dtls_link::bind_dialer(self.dataplane.has_threads())
            .with_context(|| format!("backend {name}"))?;
        zero_checksums(name, &socket);
        self.add_udp(UdpEndpoint {
            socket: Arc::new(socket),
            backend: name.to_owned(),
            cost: settings.cost,
            mtu: settings.mtu,
            role: UdpRole::Dialer(Box::new(DialerState {
                peer: d.peer.clone(),
                config: None,
                backoff: Backoff::new(),
                next_attempt: Some(Instant::now()),
            })),
        })
    }

    /// Opens the link of `udp-dialer` endpoint `endpoint` to `remote`: there is no transport
    /// handshake, the session's hellos are the first datagrams.
    pub(super) fn dial_plain_udp(&mut self, endpoint: usize, remote: SocketAddr) {
        let Some(e) = self.udp.get(endpoint).and_then(Option::as_ref) else {
            return;
        };
        let link = Link {
            backend: e.backend.clone(),
            kind: "udp dialer",
            remote,
            cost: e.cost,
            mtu: e.mtu,
            connected_at: Instant::now(),
            announced: false,
            had_session: false,
            ended: None,
            transport: Transport::PlainUdp(PlainUdpLink {
                endpoint,
                local: None,
                rx_worker: None,
            }),
        };
        let id = self.new_link(link);
        self.announce_if_ready(id);
    }

    pub(super) fn is_plain_udp(&self, link: LinkId) -> bool {
        matches!(
            self.links.get(&link).map(|l| &l.transport),
            Some(Transport::PlainUdp(_))
        )
    }

    /// Handles a receive on a plaintext endpoint: a datagram, or a GRO batch of them.
    pub(super) fn on_plain_udp_datagram(&mut self, endpoint: usize, completion: Completion) {
        let armed = completion.armed;
        let range = completion.data_range();
        let (src, local, segment_size) =
            (completion.src, completion.local, completion.segment_size);
        let Some(buf) = completion.buf else {
            if !armed {
                self.rearm_udp(endpoint);
            }
            return;
        };
        if let (Some(range), Some(src)) = (range, src) {
            let src = normalize(src);
            match self.dtls_peers.get(&(endpoint, src)).copied() {
                Some(link) if self.holds_super_packet(link, &buf, range.clone(), segment_size) => {
                    self.route_link_super_packet(link, buf, range, segment_size);
                    if !armed {
                        self.rearm_udp(endpoint);
                    }
                    return;
                }
                Some(link) => self.on_plain_datagrams(link, &buf, range, segment_size),
                None => self.on_plain_unknown_source(endpoint, (src, local), &buf, range),
            }
        }
        self.worker.io.free(buf);
        if !armed {
            self.rearm_udp(endpoint);
        }
    }

    /// True when the receive at `buf[range]` from `link` is one IPv6 super-packet that a
    /// peer's eBPF fast path encapsulated whole (only peers this node's fast path invited do).
    fn holds_super_packet(
        &self,
        link: LinkId,
        buf: &BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) -> bool {
        let Some(l) = self.links.get(&link) else {
            return false;
        };
        self.fastpath.is_on()
            && self.worker.io.buf(buf).get(range).is_some_and(|datagram| {
                super::super_packets::is_one_long_packet(datagram, segment_size, l.mtu)
            })
    }

    /// Routes the data datagrams of `buf[range]` where they lie (a GRO batch holds datagrams of
    /// `segment_size` bytes, the last may be shorter) and hands control datagrams to the core;
    /// `buf` stays the caller's.
    fn on_plain_datagrams(
        &mut self,
        link: LinkId,
        buf: &BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        for piece in self.worker.gro_pieces(range, segment_size) {
            let kind = self
                .worker
                .io
                .buf(buf)
                .get(piece.clone())
                .map_or(Datagram::Malformed, classify);
            match kind {
                Datagram::Data => {
                    if self.fastpath.is_on()
                        && let Some(packet) = self.worker.io.buf_mut(buf).get_mut(piece.clone())
                        && connectopus_offload::complete_partial_checksum(packet)
                    {
                        // The peer's eBPF encapsulated a packet whose checksum its kernel
                        // left to an offload (it advertised to us that we decapsulate in
                        // eBPF, and this one fell back to userspace here).
                        self.plain_udp_counters.partial_checksums_completed += 1;
                    }
                    self.worker.datagrams_received += 1;
                    self.route_link_packet_in_buf(link, buf, piece);
                }
                Datagram::Control => {
                    self.worker.scratch.clear();
                    if let Some(bytes) = self.worker.io.buf(buf).get(piece) {
                        self.worker.scratch.extend_from_slice(bytes);
                    }
                    self.handle_link_message_in_scratch(link);
                }
                Datagram::Malformed => {
                    self.plain_udp_counters.malformed_dropped += 1;
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                }
            }
            if !self.links.contains_key(&link) {
                // The core closed the link (a refused hello): the rest is not its any more.
                break;
            }
        }
    }

    /// A datagram from an address that is no link's peer: a listener looks at a hello
    /// (rate-limited) and opens a link for it; everything else is dropped.
    fn on_plain_unknown_source(
        &mut self,
        endpoint: usize,
        (src, local): (SocketAddr, Option<std::net::IpAddr>),
        buf: &BufId,
        range: Range<usize>,
    ) {
        let Some(e) = self.udp.get(endpoint).and_then(Option::as_ref) else {
            return;
        };
        let hello = self.worker.io.buf(buf).get(range.start) == Some(&(MessageType::Hello as u8));
        if !matches!(e.role, UdpRole::PlainListener) || !hello {
            self.plain_udp_counters.unknown_source_dropped += 1;
            return;
        }
        if !self.hello_limiter.allow(src.ip(), self.started.elapsed()) {
            self.plain_udp_counters.hellos_rate_limited += 1;
            return;
        }
        let (backend, cost, mtu) = (e.backend.clone(), e.cost, e.mtu);
        self.make_room_for_plain_udp(endpoint, src.ip());
        let id = self.new_link(Link {
            backend,
            kind: "udp listener",
            remote: src,
            cost,
            mtu,
            connected_at: Instant::now(),
            announced: false,
            had_session: false,
            ended: None,
            transport: Transport::PlainUdp(PlainUdpLink {
                endpoint,
                local,
                rx_worker: None,
            }),
        });
        self.announce_if_ready(id);
        // A hello is never batched with other datagrams: GRO merges only a flow's equal sizes,
        // and nothing else of this source was accepted yet. Its first datagram is the hello.
        self.on_plain_datagrams(id, buf, range, None);
    }

    /// Makes room on plaintext listener `endpoint` for one more link from `source` that waits
    /// for its session.
    fn make_room_for_plain_udp(&mut self, endpoint: usize, source: std::net::IpAddr) {
        let pending: Vec<Pending> = self
            .links
            .iter()
            .filter(|(_, l)| {
                !l.had_session
                    && matches!(&l.transport, Transport::PlainUdp(p) if p.endpoint == endpoint)
            })
            .map(|(id, l)| Pending {
                link: *id,
                source: l.remote.ip(),
                since: l.connected_at,
            })
            .collect();
        if let Some(link) = eviction(&pending, source, MAX_PENDING_PER_SOURCE, MAX_PENDING) {
            self.limit_counters.handshakes_evicted += 1;
            self.close_link(link, "evicted for a newer hello");
        }
    }

    /// Where the datagrams of a DTLS or plaintext udp link go.
    pub(super) fn udp_target(&self, link: LinkId) -> Option<UdpTarget> {
        let l = self.links.get(&link)?;
        let (endpoint, source) = match &l.transport {
            Transport::Dtls(d) => (d.endpoint, d.local),
            Transport::PlainUdp(p) => (p.endpoint, p.local),
            Transport::Tcp(_) | Transport::TcpOnWorker { .. } => return None,
        };
        Some(UdpTarget {
            fd: self.udp_fd(endpoint)?,
            endpoint,
            destination: l.remote,
            source,
        })
    }

    /// Where a plaintext udp link's datagrams go (`None` for any other link: nothing goes out
    /// unsealed on a DTLS link).
    fn plain_target(&self, link: LinkId) -> Option<UdpTarget> {
        let plain = matches!(
            self.links.get(&link).map(|l| &l.transport),
            Some(Transport::PlainUdp(_))
        );
        plain.then(|| self.udp_target(link)).flatten()
    }

    /// Sends the packet at `buf[range]` as one datagram where it lies; takes ownership of `buf`.
    pub(super) fn send_plain_in_place(&mut self, link: LinkId, buf: BufId, range: Range<usize>) {
        if self.worker.dtls_batches.has(link) {
            // Datagrams go out in the order they are made.
            self.flush_dtls_batches(Some(link));
        }
        let Some(target) = self.plain_target(link) else {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        target.send(&mut self.worker.io, buf, range, None);
    }

    /// Sends one link message (from the core, or a packet from a TCP link) as one datagram,
    /// copied once.
    pub(super) fn send_plain_message(&mut self, link: LinkId, message: &[u8]) {
        if self.worker.dtls_batches.has(link) {
            self.flush_dtls_batches(Some(link));
        }
        let Some(target) = self.plain_target(link) else {
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        send_raw(
            &mut self.worker.io,
            &self.udp,
            target.endpoint,
            target.destination,
            target.source,
            message,
        );
    }

    /// Cuts the super-packet at `src[range]` into segments written back to back into send
    /// buffers (each segment one datagram) and sends each buffer with one UDP GSO `sendmsg`;
    /// takes ownership of `src`.
    pub(super) fn send_plain_segments(
        &mut self,
        link: LinkId,
        src: BufId,
        range: Range<usize>,
        header: VnetHeader,
    ) {
        if self.worker.dtls_batches.has(link) {
            self.flush_dtls_batches(Some(link));
        }
        let Some(target) = self.plain_target(link) else {
            self.worker.io.free(src);
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        self.worker
            .send_segments(link, target, &mut Plaintext, (src, range, &header));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv6(payload_len: u16, total: usize) -> Vec<u8> {
        let mut p = vec![0u8; total];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p
    }

    #[test]
    fn a_data_datagram_is_exactly_one_ipv6_packet() {
        assert_eq!(classify(&ipv6(10, 50)), Datagram::Data);
        assert_eq!(classify(&ipv6(0, 40)), Datagram::Data);
        // Trailing bytes, or a packet cut short, are not data.
        assert_eq!(classify(&ipv6(10, 51)), Datagram::Malformed);
        assert_eq!(classify(&ipv6(10, 49)), Datagram::Malformed);
        assert_eq!(classify(&[0x60, 0, 0]), Datagram::Malformed);
    }

    #[test]
    fn control_datagrams_start_below_0x60() {
        assert_eq!(classify(&[MessageType::Hello as u8, 2]), Datagram::Control);
        assert_eq!(classify(&[0x5f]), Datagram::Control);
        assert_eq!(classify(&[0x70]), Datagram::Malformed);
        assert_eq!(classify(&[0xff]), Datagram::Malformed);
        assert_eq!(classify(&[]), Datagram::Malformed);
    }
}
