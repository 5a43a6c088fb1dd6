//! DTLS links of the main loop: UDP endpoints, accepting and dialing associations,
//! opening and sealing records in pooled buffers.

use super::gso_send::ByAssociation;
use super::*;

/// The most bytes one UDP GSO send may carry (the largest UDP payload over IPv6 without a
/// jumbogram: 65,535 − 8 − … as the kernel checks it; 46 records of 1,437 bytes fail).
pub(super) const MAX_UDP_GSO_BYTES: usize = 65_507;

/// The most segments per UDP GSO send that every kernel since 4.18 takes (6.18 takes 128).
pub(super) const MAX_UDP_GSO_SEGMENTS: usize = 64;

/// How many datagrams of `stride` bytes one send carries: as many as fit in `room` (the rest
/// of a pool buffer) and in one UDP GSO send, or one when GSO is off.
pub(super) fn datagrams_per_send(room: usize, stride: usize, udp_gso: bool) -> usize {
    if udp_gso {
        (room / stride)
            .min(MAX_UDP_GSO_BYTES / stride)
            .clamp(1, MAX_UDP_GSO_SEGMENTS)
    } else {
        1
    }
}

impl Daemon {
    /// Returns the socket of a live UDP endpoint.
    pub(super) fn udp_fd(&self, endpoint: usize) -> Option<std::os::fd::RawFd> {
        self.udp
            .get(endpoint)
            .and_then(Option::as_ref)
            .map(|e| e.socket.as_raw_fd())
    }

    /// Seals the payload at `buf[offset..offset + len]` into a DTLS record in place and sends
    /// it; takes ownership of `buf`.
    pub(super) fn seal_and_send(
        &mut self,
        link: LinkId,
        buf: uring_io::BufId,
        offset: usize,
        len: usize,
    ) {
        if self.worker.dtls_batches.has(link) {
            // Records go out in the order they are sealed.
            self.flush_dtls_batches(Some(link));
        }
        let Some(l) = self.links.get_mut(&link) else {
            self.worker.io.free(buf);
            return;
        };
        let Transport::Dtls(dtls) = &mut l.transport else {
            self.worker.io.free(buf);
            return;
        };
        let Some(payload_offset) = dtls.association.payload_offset() else {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        let Some(record_start) = offset.checked_sub(payload_offset) else {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let sealed = dtls
            .association
            .seal_in_place(&mut self.worker.io.buf_mut(&buf)[record_start..], len);
        match sealed {
            Ok(n) => {
                let Some(target) = self.udp_target(link) else {
                    self.worker.io.free(buf);
                    return;
                };
                target.send(
                    &mut self.worker.io,
                    buf,
                    record_start..record_start + n,
                    None,
                );
            }
            Err(error) => {
                self.worker.io.free(buf);
                tracing::debug!(%link, %error, "dtls seal failed");
                self.worker.forwarder.count_drop(DropReason::LinkDown);
            }
        }
    }

    /// Sends raw datagrams (handshake flights, alerts) that an association produced.
    pub(super) fn flush_dtls(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Transport::Dtls(dtls) = &mut l.transport else {
            return;
        };
        let (endpoint, source) = (dtls.endpoint, dtls.local);
        let destination = l.remote;
        while let Some(datagram) = dtls.association.poll_transmit() {
            send_raw(
                &mut self.worker.io,
                &self.udp,
                endpoint,
                destination,
                source,
                &datagram,
            );
        }
    }

    pub(super) fn on_udp_datagram(&mut self, endpoint: usize, completion: Completion) {
        let armed = completion.armed;
        if self
            .udp
            .get(endpoint)
            .and_then(Option::as_ref)
            .is_some_and(UdpEndpoint::is_plain)
        {
            return self.on_plain_udp_datagram(endpoint, completion);
        }
        if self.udp.get(endpoint).is_none_or(Option::is_none) {
            // A retired endpoint: its socket may close once the receive is no longer armed.
            if let Some(buf) = completion.buf {
                self.worker.io.free(buf);
            }
            if !armed {
                self.retiring_udp.retain(|(i, _)| *i != endpoint);
            }
            return;
        }
        let range = completion.data_range();
        let (src, local) = (completion.src, completion.local);
        let Some(buf) = completion.buf else {
            if !armed {
                self.rearm_udp(endpoint);
            }
            return;
        };
        if let (Some(range), Some(src)) = (range, src) {
            let src = normalize(src);
            // Classified before any lookup: a ClientHello on a listener goes to the limiter
            // whether or not its address is known (a known address starting over is a peer
            // that restarted), so a flood of them costs no map lookup.
            let listener = matches!(
                self.udp
                    .get(endpoint)
                    .and_then(Option::as_ref)
                    .map(|e| &e.role),
                Some(UdpRole::Listener(_))
            );
            let hello = dtls_link::is_client_hello(&self.worker.io.buf(&buf)[range.clone()]);
            let known = if listener && hello {
                None
            } else {
                self.dtls_peers.get(&(endpoint, src)).copied()
            };
            match known {
                Some(link) => {
                    self.on_dtls_datagram(link, buf, range, completion.segment_size);
                    if !armed {
                        self.rearm_udp(endpoint);
                    }
                    return;
                }
                None if listener && hello => {
                    // Rate-limited by source prefix before OpenSSL (or an allocation) sees it.
                    if self.hello_limiter.allow(src.ip(), self.started.elapsed()) {
                        self.limit_counters.dtls_hellos_looked_at += 1;
                        let datagram = self.worker.io.buf(&buf)[range].to_vec();
                        self.accept_dtls(endpoint, (src, local), datagram);
                    } else {
                        self.limit_counters.dtls_hellos_rate_limited += 1;
                    }
                }
                // Anything else from an unknown address is not the start of an association
                // (OpenSSL would ignore it): dropped here, without spending the limiter's
                // tokens.
                None => {}
            }
        }
        self.worker.io.free(buf);
        if !armed {
            self.rearm_udp(endpoint);
        }
    }

    pub(super) fn rearm_udp(&mut self, endpoint: usize) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(fd) = self.udp_fd(endpoint)
            && let Err(error) = self
                .worker
                .io
                .recv_datagrams(fd, Token(TOKEN_UDP_RECV | endpoint as u64))
        {
            tracing::error!(%error, "re-arming udp receive failed");
        }
    }

    /// Handles a datagram from an unknown address on a DTLS listener.
    pub(super) fn accept_dtls(
        &mut self,
        endpoint: usize,
        (src, local): (SocketAddr, Option<std::net::IpAddr>),
        datagram: Vec<u8>,
    ) {
        let Some(UdpEndpoint {
            role: UdpRole::Listener(config),
            backend,
            cost,
            mtu,
            ..
        }) = self.udp.get(endpoint).and_then(Option::as_ref)
        else {
            return;
        };
        let now = self.started.elapsed();
        let (limiter, counters) = (&mut self.hello_limiter, &mut self.limit_counters);
        let allow_dhe = || {
            let allowed = limiter.allow_dhe(src.ip(), now);
            counters.dtls_handshakes_without_dhe += u64::from(!allowed);
            allowed
        };
        match DtlsAssociation::accept_admitting(config, src, now, &datagram, allow_dhe) {
            Ok(Accept::HelloVerifyRequest(reply)) => {
                send_raw(&mut self.worker.io, &self.udp, endpoint, src, local, &reply);
            }
            Ok(Accept::Association(association)) => {
                let (backend, cost, mtu) = (backend.clone(), *cost, *mtu);
                // A new handshake from a known address replaces the old association.
                if let Some(old) = self.dtls_peers.get(&(endpoint, src)).copied() {
                    self.close_link(old, "peer started a new handshake");
                }
                self.make_room_for_dtls(endpoint, src.ip());
                let id = self.new_link(Link {
                    backend,
                    kind: "dtls listener",
                    remote: src,
                    cost,
                    mtu,
                    connected_at: Instant::now(),
                    announced: false,
                    had_session: false,
                    ended: None,
                    transport: Transport::Dtls(DtlsLink {
                        endpoint,
                        local,
                        association,
                        rx_worker: None,
                        shared_rx: None,
                    }),
                });
                self.flush_dtls(id);
            }
            Ok(Accept::Ignored) => {}
            Err(error) => tracing::debug!(%src, %error, "dtls accept failed"),
        }
    }

    /// Feeds a datagram, or a GRO batch of datagrams of `segment_size` bytes each (the last
    /// may be shorter), to a link's association and routes what it opened, in place.
    pub(super) fn on_dtls_datagram(
        &mut self,
        link: LinkId,
        buf: uring_io::BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        let now = self.started.elapsed();
        // A worker thread opens this link's datagrams (with none to take them, the association
        // handles what it can without the receiving direction: handshake records, alerts).
        let receiver = self.receiver_of(link);
        for piece in self.worker.gro_pieces(range, segment_size) {
            if let Some(index) = receiver
                && let Some(datagram) = self.worker.io.buf(&buf).get(piece.clone())
            {
                let datagram = datagram.to_vec();
                if self
                    .dataplane
                    .send_to(index, workers::ToWorker::Datagram { link, datagram })
                    .is_ok()
                {
                    continue;
                }
            }
            let (
                Some(Link {
                    transport: Transport::Dtls(dtls),
                    ..
                }),
                Some(datagram),
            ) = (
                self.links.get_mut(&link),
                self.worker.io.buf_mut(&buf).get_mut(piece.clone()),
            )
            else {
                break;
            };
            match dtls.association.handle_datagram(now, datagram) {
                Ok(received) => {
                    self.worker.records_opened += received.len() as u64;
                    // Each opened record is one link message, in place in the datagram buffer.
                    for r in received.iter() {
                        let r = piece.start + r.start..piece.start + r.end;
                        self.on_link_message_in_buf(link, &buf, r);
                    }
                }
                Err(error) => {
                    tracing::debug!(%link, %error, "dtls failed");
                    break;
                }
            }
        }
        self.worker.io.free(buf);
        self.after_dtls_io(link);
    }

    /// Routes an IP packet where it lies, or hands any other link message to the core.
    fn on_link_message_in_buf(&mut self, link: LinkId, buf: &uring_io::BufId, r: Range<usize>) {
        let data = self
            .worker
            .io
            .buf(buf)
            .get(r.clone())
            .is_some_and(is_ip_packet);
        if data {
            self.route_link_packet_in_buf(link, buf, r);
        } else {
            self.worker.scratch.clear();
            if let Some(bytes) = self.worker.io.buf(buf).get(r) {
                self.worker.scratch.extend_from_slice(bytes);
            }
            self.handle_link_message_in_scratch(link);
        }
    }

    /// Cuts the super-packet at `src[range]` into segments, seals each as one record in the
    /// slots of send buffers (one record stride apart) and sends each buffer with one UDP GSO
    /// `sendmsg`; takes ownership of `src`.
    pub(super) fn seal_segments(
        &mut self,
        link: LinkId,
        src: uring_io::BufId,
        range: Range<usize>,
        header: connectopus_offload::VnetHeader,
    ) {
        if self.worker.dtls_batches.has(link) {
            self.flush_dtls_batches(Some(link));
        }
        let target = self.udp_target(link);
        let Daemon { worker, links, .. } = self;
        let association = match links.get_mut(&link).map(|l| &mut l.transport) {
            Some(Transport::Dtls(dtls)) => Some(&mut dtls.association),
            _ => None,
        };
        let (Some(target), Some(mut records)) =
            (target, association.and_then(|a| ByAssociation::new(a)))
        else {
            worker.io.free(src);
            worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        worker.send_segments(link, target, &mut records, (src, range, &header));
    }

    /// Sends what the association produced and follows its state.
    pub(super) fn after_dtls_io(&mut self, link: LinkId) {
        self.flush_dtls(link);
        let closed = match self.links.get(&link).map(|l| &l.transport) {
            Some(Transport::Dtls(d)) => matches!(d.association.state(), DtlsState::Closed(_)),
            _ => false,
        };
        if closed {
            self.close_link(link, "dtls closed");
        } else {
            self.announce_if_ready(link);
        }
    }

    /// Starts DTLS dial attempts that are due.
    pub(super) fn run_dialers(&mut self) {
        let now = Instant::now();
        for endpoint in 0..self.udp.len() {
            let Some(UdpEndpoint {
                role: UdpRole::Dialer(dialer),
                backend,
                ..
            }) = &mut self.udp[endpoint]
            else {
                continue;
            };
            if dialer.next_attempt.is_none_or(|t| t > now) || self.stopping.is_some() {
                continue;
            }
            dialer.next_attempt = None;
            // A host name is resolved on a thread of its own; the dial goes on when the
            // answer comes back (`on_dtls_peer_resolved`). An address needs no lookup.
            if !matches!(dialer.peer.host, connectopus_config::PeerHost::Ip(_)) {
                super::resolve::spawn(&self.to_loop, endpoint, backend, &dialer.peer);
                continue;
            }
            let remote = match dtls_link::resolve(&dialer.peer) {
                Ok(remote) => remote,
                Err(error) => {
                    let delay = dialer.backoff.failure();
                    tracing::debug!(backend = %backend, error = %format!("{error:#}"), retry_in = ?delay, "dial failed");
                    dialer.next_attempt = Some(now + delay);
                    continue;
                }
            };
            self.dial_dtls(endpoint, remote);
        }
    }

    /// Starts a DTLS association from dialer `endpoint` to `remote`.
    pub(super) fn dial_dtls(&mut self, endpoint: usize, remote: SocketAddr) {
        let now = Instant::now();
        if self
            .udp
            .get(endpoint)
            .and_then(Option::as_ref)
            .is_some_and(UdpEndpoint::is_plain)
        {
            return self.dial_plain_udp(endpoint, remote);
        }
        {
            let Some(UdpEndpoint {
                role: UdpRole::Dialer(dialer),
                backend,
                cost,
                mtu,
                ..
            }) = self.udp.get_mut(endpoint).and_then(Option::as_mut)
            else {
                return;
            };
            let Some(config) = &dialer.config else {
                return;
            };
            let association = match DtlsAssociation::client(config, self.started.elapsed()) {
                Ok(a) => Box::new(a),
                Err(error) => {
                    let delay = dialer.backoff.failure();
                    tracing::warn!(backend = %backend, %error, "dtls client setup failed");
                    dialer.next_attempt = Some(now + delay);
                    return;
                }
            };
            let link = Link {
                backend: backend.clone(),
                kind: "dtls dialer",
                remote,
                cost: *cost,
                mtu: *mtu,
                connected_at: now,
                announced: false,
                had_session: false,
                ended: None,
                transport: Transport::Dtls(DtlsLink {
                    endpoint,
                    local: None,
                    association,
                    rx_worker: None,
                    shared_rx: None,
                }),
            };
            let id = self.new_link(link);
            self.flush_dtls(id);
        }
    }
}

/// Returns the address as the loop keys peers by it.
pub(super) fn normalize(addr: SocketAddr) -> SocketAddr {
    addr
}

/// Copies a datagram into a pool buffer and sends it from a UDP endpoint.
pub(super) fn send_raw(
    io: &mut PacketIo,
    udp: &[Option<UdpEndpoint>],
    endpoint: usize,
    destination: SocketAddr,
    source: Option<std::net::IpAddr>,
    datagram: &[u8],
) {
    let Some(e) = udp.get(endpoint).and_then(Option::as_ref) else {
        return;
    };
    let Some(buf) = io.alloc() else {
        return;
    };
    let start = io.pool().headroom();
    let Some(slot) = io.buf_mut(&buf).get_mut(start..start + datagram.len()) else {
        io.free(buf);
        return;
    };
    slot.copy_from_slice(datagram);
    io.send_to(
        e.socket.as_raw_fd(),
        Token(TOKEN_UDP_SEND | endpoint as u64),
        uring_io::Transmit {
            destination,
            buf,
            range: start..start + datagram.len(),
            segment_size: None,
            source,
        },
    );
}
