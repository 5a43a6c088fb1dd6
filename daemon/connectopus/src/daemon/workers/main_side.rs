//! The main loop's side of the worker threads: the link table it publishes, and what it takes
//! back from them.

use super::*;

impl Daemon {
    /// The links worker threads may send on themselves: established DTLS links on the record
    /// fast path, and plaintext UDP links.
    pub(in crate::daemon) fn link_table(&self) -> LinkTable {
        let mut table = LinkTable::new();
        for (id, l) in &self.links {
            let entry = match &l.transport {
                Transport::Dtls(d) => {
                    let (Some(sealer), Some(e)) = (
                        d.association.sealer(),
                        self.udp.get(d.endpoint).and_then(Option::as_ref),
                    ) else {
                        continue;
                    };
                    LinkSend::Dtls {
                        socket: e.socket.clone(),
                        endpoint: d.endpoint,
                        remote: l.remote,
                        source: d.local,
                        sealer,
                        rx: d
                            .shared_rx
                            .clone()
                            .filter(|_| !self.dataplane.shared_receives_orphaned()),
                    }
                }
                Transport::PlainUdp(p) => {
                    let Some(e) = self.udp.get(p.endpoint).and_then(Option::as_ref) else {
                        continue;
                    };
                    LinkSend::Plain {
                        socket: e.socket.clone(),
                        endpoint: p.endpoint,
                        remote: l.remote,
                        source: p.local,
                    }
                }
                Transport::Tcp(_) | Transport::TcpOnWorker { .. } => continue,
            };
            table.insert(*id, entry);
        }
        table
    }

    /// Takes what the worker threads handed over, and publishes the link table if it changed.
    pub(in crate::daemon) fn drain_workers(&mut self) {
        if !self.dataplane.has_threads() {
            return;
        }
        if self.dataplane.queue_zero_orphaned() && self.stopping.is_none() {
            // Worker 0's thread stopped: queue 0 stays open (the main loop writes through
            // it), so the kernel still steers flows to it, and the main loop reads them.
            tracing::warn!("worker 0 stopped: the main loop reads TUN queue 0");
            if let Some(fd) = self.tuns.get(0).map(TunDevice::fd)
                && let Err(error) = self.worker.io.recv_packets(fd, Token(TOKEN_TUN_RECV))
            {
                tracing::error!(%error, "arming TUN queue 0 on the main loop failed");
            }
        }
        // Namespaces and `tun_devs` are the main loop's devices.
        self.dataplane
            .set_hairpin(self.tuns.indexed().nth(1).is_some());
        self.dataplane.set_fastpath(self.fastpath.tun_mtu());
        self.reclaim_shared_receives();
        if self.dataplane.links_dirty {
            self.assign_receivers();
            self.assign_tcp_owners();
            let table = self.link_table();
            if !self.dataplane.ports.is_empty() {
                // The CPU-local receive: every DTLS peer, also while it shakes hands.
                let peers = self
                    .dtls_peers
                    .iter()
                    .filter(|((endpoint, _), _)| self.dataplane.ports.contains(endpoint))
                    .map(|(key, link)| (*key, *link))
                    .collect();
                self.dataplane.shared.dtls_peers.publish(Arc::new(peers));
            }
            self.dataplane.publish_links(table);
        }
        // Bounded per turn, so the workers cannot starve the control plane.
        for _ in 0..CHANNEL_BOUND {
            let Some(message) = self.dataplane.try_recv() else {
                break;
            };
            match message {
                FromWorker::ToLink {
                    link,
                    packet,
                    header,
                } => self.send_from_worker(link, &packet, header),
                FromWorker::FromTun(read) => self.route_from_worker_tun(&read),
                FromWorker::Originated(forwarded, packet) => match forwarded {
                    Forwarded::Deliver => self.write_tun(&packet),
                    Forwarded::Send(link) => self.send_packet(link, &packet),
                    Forwarded::Done => {}
                },
                FromWorker::LinkMessage { link, mut message } => {
                    let now = self.now();
                    self.node.handle_link_message(now, link, &mut message);
                }
                FromWorker::ForAssociation {
                    link,
                    endpoint,
                    remote,
                    local,
                    datagram,
                } => self.for_association(link, endpoint, (remote, local), datagram),
                FromWorker::PeerClosed { link, reason } => {
                    if let Some(Link {
                        transport: Transport::Dtls(d),
                        ..
                    }) = self.links.get_mut(&link)
                    {
                        d.association.peer_closed(reason);
                    }
                    self.after_dtls_io(link);
                }
                FromWorker::Returned { link, opener } => self.take_back_receive(link, opener),
                FromWorker::ReturnedTcp(own) => self.take_back_tcp(*own),
                FromWorker::TcpClosed { link, reason } => {
                    if matches!(
                        self.links.get(&link).map(|l| &l.transport),
                        Some(Transport::TcpOnWorker { .. })
                    ) {
                        if reason == super::tcp::PEER_DOES_NOT_READ {
                            self.limit_counters.tcp_queue_overflow_closed += 1;
                        }
                        self.close_link(link, reason);
                    }
                }
                FromWorker::LinkSuperPacket {
                    link,
                    datagram,
                    segment_size,
                } => self.route_worker_super_packet(link, &datagram, segment_size),
                FromWorker::Report {
                    index,
                    mut report,
                    offload,
                    plain,
                } => {
                    self.node.absorb_dataplane(&mut report);
                    self.plain_udp_counters.add(&plain);
                    if let Some(total) = self.dataplane.offload.get_mut(index - 1) {
                        total.add(&offload);
                    }
                }
            }
        }
    }

    /// Sends a packet (or the segments of a super-packet) a worker thread handed over.
    pub(in crate::daemon) fn send_from_worker(
        &mut self,
        link: LinkId,
        packet: &[u8],
        header: Option<VnetHeader>,
    ) {
        if let Some(Transport::TcpOnWorker { worker }) = self.links.get(&link).map(|l| &l.transport)
        {
            // Its owner frames it, a super-packet cut there.
            let index = *worker;
            return self.send_to_tcp_owner(link, index, packet.to_vec(), header);
        }
        let Some(header) = header else {
            return self.send_packet(link, packet);
        };
        let Ok(segments) = Segments::new(&header, packet) else {
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let mut segment = std::mem::take(&mut self.worker.scratch);
        for i in 0..segments.count() {
            segment.resize(segments.max_segment_len(), 0);
            match segments.write(i, &mut segment) {
                Ok(n) => {
                    segment.truncate(n);
                    self.send_packet(link, &segment);
                }
                Err(_) => {
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                    break;
                }
            }
        }
        self.worker.scratch = segment;
    }

    /// Routes a TUN read a worker thread handed over (a packet for another of the node's TUN
    /// devices) as if the main loop had read it from the node's own device.
    fn route_from_worker_tun(&mut self, read: &[u8]) {
        if let Some((buf, range)) = self.worker.copy_to_buf(read) {
            self.forward_from_tun(0, buf, range);
        }
    }

    /// Routes a super-packet a worker thread received whole on plaintext udp link `link` (for
    /// one of the node's other TUN devices) as if the main loop had received it.
    fn route_worker_super_packet(
        &mut self,
        link: LinkId,
        datagram: &[u8],
        segment_size: Option<u16>,
    ) {
        // Headroom in front, as a receive leaves it, for the virtio-net header.
        if let Some((buf, range)) = self.worker.copy_to_buf(datagram) {
            self.route_link_super_packet(link, buf, range, segment_size);
        }
    }

    /// Gives each established DTLS link on the record fast path, and each plaintext udp link
    /// whose session was established, that no worker receives yet to the worker receiving the
    /// fewest: for a worker thread, a socket connected to the peer on the link's port (and a
    /// DTLS association's receiving direction) go to the thread. Where that cannot be (no
    /// `SO_REUSEPORT` on the port, a socket refused), the main loop keeps receiving it.
    fn assign_receivers(&mut self) {
        let Daemon {
            links,
            udp,
            dataplane,
            worker,
            ..
        } = self;
        let gro = worker.offloads.udp_gro.is_ok();
        for (id, l) in links.iter_mut() {
            if let Transport::Dtls(d) = &mut l.transport
                && d.rx_worker.is_none()
                && d.association.sealer().is_some()
                && dataplane.has_ports(d.endpoint)
            {
                // The CPU-local receive: every worker thread opens the link's records.
                if let Some(opener) = d.association.take_opener() {
                    d.rx_worker = Some(EVERY_WORKER);
                    d.shared_rx = Some(Arc::new(Mutex::new(opener)));
                    tracing::debug!(link = %id, "link received by every worker");
                }
                continue;
            }
            let (mtu, remote, had_session) = (l.mtu, l.remote, l.had_session);
            let (endpoint, local, rx_worker, dtls) = match &mut l.transport {
                Transport::Dtls(d) => {
                    if d.association.sealer().is_none() {
                        continue;
                    }
                    (
                        d.endpoint,
                        d.local,
                        &mut d.rx_worker,
                        Some(&mut d.association),
                    )
                }
                // Only once its session is established: a hello from a new address (which
                // costs nothing to forge) gets no socket of its own.
                Transport::PlainUdp(p) if had_session => {
                    (p.endpoint, p.local, &mut p.rx_worker, None)
                }
                _ => continue,
            };
            if rx_worker.is_some() {
                continue;
            }
            let index = dataplane.least_loaded();
            let shared = udp.get(endpoint).and_then(Option::as_ref);
            let assigned = match (index, shared) {
                (0, _) | (_, None) => 0,
                (index, Some(e)) => match dtls_link::connect_peer(&e.socket, local, remote, gro) {
                    Ok(socket) => {
                        let opener = match dtls {
                            Some(association) => association.take_opener().map(Some),
                            None => {
                                // The peer's eBPF fast path sends zero UDP checksums.
                                super::super::plain_udp::zero_checksums(&e.backend, &socket);
                                Some(None)
                            }
                        };
                        match opener {
                            Some(opener) => {
                                let receive = LinkReceive {
                                    link: *id,
                                    endpoint,
                                    remote,
                                    local,
                                    socket,
                                    opener,
                                    mtu,
                                };
                                match dataplane.send_to(index, ToWorker::Receive(Box::new(receive)))
                                {
                                    Ok(()) => index,
                                    Err(ToWorker::Receive(back)) => {
                                        if let (Some(opener), Transport::Dtls(d)) =
                                            (back.opener, &mut l.transport)
                                        {
                                            d.association.restore_opener(opener);
                                        }
                                        0
                                    }
                                    Err(_) => 0,
                                }
                            }
                            None => 0,
                        }
                    }
                    Err(error) => {
                        tracing::debug!(link = %id, %error, "the main loop receives the link");
                        0
                    }
                },
            };
            tracing::debug!(link = %id, worker = assigned, "link received by worker");
            match &mut l.transport {
                Transport::Dtls(d) => d.rx_worker = Some(assigned),
                Transport::PlainUdp(p) => p.rx_worker = Some(assigned),
                Transport::Tcp(_) | Transport::TcpOnWorker { .. } => {}
            }
            dataplane.count_receive(assigned, true);
        }
    }

    /// A link closes: the worker thread receiving it closes its socket.
    pub(in crate::daemon) fn forget_receiver(&mut self, link: LinkId, rx_worker: Option<usize>) {
        let Some(index) = rx_worker else {
            return;
        };
        self.dataplane.count_receive(index, false);
        if index > 0 && index != EVERY_WORKER {
            let _ = self.dataplane.send_to(index, ToWorker::Forget(link));
        }
    }

    /// The worker thread that opens the datagrams of DTLS `link` which still arrive at the
    /// main loop's socket (queued there before the thread's own socket existed, or, on the
    /// CPU-local receive, any running thread); `None` when the main loop opens them itself.
    pub(in crate::daemon) fn receiver_of(&self, link: LinkId) -> Option<usize> {
        let Some(Transport::Dtls(d)) = self.links.get(&link).map(|l| &l.transport) else {
            return None;
        };
        let index = match d.rx_worker {
            Some(EVERY_WORKER) => self.dataplane.any_running(),
            w => w.unwrap_or(0),
        };
        (index > 0).then_some(index)
    }

    /// Records of a link's datagram that its worker thread left for the association (or a
    /// ClientHello from its peer's address).
    fn for_association(
        &mut self,
        link: LinkId,
        endpoint: usize,
        (remote, local): (SocketAddr, Option<std::net::IpAddr>),
        mut datagram: Vec<u8>,
    ) {
        let listener = matches!(
            self.udp
                .get(endpoint)
                .and_then(Option::as_ref)
                .map(|e| &e.role),
            Some(UdpRole::Listener(_))
        );
        if listener && dtls_link::is_client_hello(&datagram) {
            // The peer started over from the same address: as on the listener's own socket.
            if self
                .hello_limiter
                .allow(remote.ip(), self.started.elapsed())
            {
                self.limit_counters.dtls_hellos_looked_at += 1;
                self.accept_dtls(endpoint, (remote, local), datagram);
            } else {
                self.limit_counters.dtls_hellos_rate_limited += 1;
            }
            return;
        }
        let now = self.started.elapsed();
        let Some(Link {
            transport: Transport::Dtls(d),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        match d.association.handle_datagram(now, &mut datagram) {
            Ok(received) => {
                // Only without the fast path would the association open records itself.
                for r in received.iter() {
                    if let Some(message) = datagram.get_mut(r) {
                        if is_ip_packet(message) {
                            self.route_link_packet(link, message);
                        } else {
                            let now = self.now();
                            self.node.handle_link_message(now, link, message);
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%link, %error, "dtls failed"),
        }
        self.after_dtls_io(link);
    }

    /// A worker thread gave a link back (it stops), with a DTLS link's receiving direction:
    /// the main loop receives the link until the next turn gives it to a running worker
    /// thread (if any is left).
    fn take_back_receive(&mut self, link: LinkId, opener: Option<Box<connectopus_dtls::Opener>>) {
        let rx_worker = match (self.links.get_mut(&link).map(|l| &mut l.transport), opener) {
            (Some(Transport::Dtls(d)), Some(opener)) => {
                d.association.restore_opener(*opener);
                &mut d.rx_worker
            }
            (Some(Transport::PlainUdp(p)), None) => &mut p.rx_worker,
            _ => return,
        };
        if let Some(index) = rx_worker.take() {
            self.dataplane.count_receive(index, false);
        }
        self.dataplane.links_dirty = true;
    }
}
