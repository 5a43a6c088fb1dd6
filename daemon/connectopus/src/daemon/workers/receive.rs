//! The receiving side of a worker thread: the links the control plane gave it, each with a
//! socket connected to the peer. For a DTLS link, with the association's receiving direction
//! ([`connectopus_dtls::Opener`]), it opens every record of a receive (a UDP GRO batch) in
//! place, forwards the packets by the snapshot (to its own TUN queue, or sealed on to the next
//! link) and hands the rest to the main loop: link messages that are not packets (hellos, the
//! routing stream), records only the association handles (handshake, other epochs) and the
//! peer's close. Plaintext udp links: `receive_plain`.

use connectopus_offload::{Append, Coalescer};
use connectopus_wire::message::is_ip_packet;

use super::*;

/// A link this thread receives.
#[derive(Debug)]
pub(in crate::daemon) struct Receiving {
    pub(super) link: LinkId,
    endpoint: usize,
    remote: SocketAddr,
    local: Option<std::net::IpAddr>,
    socket: UdpSocket,
    /// `None`: a plaintext udp link.
    pub(super) opener: Option<Opener>,
    pub(super) mtu: u16,
    /// The main loop forgot the link: the socket closes once its receive is no longer armed.
    forgotten: bool,
}

impl WorkerThread {
    /// Takes what the main loop handed over (once a turn).
    pub(super) fn take_from_main(&mut self) -> Result<()> {
        while let Ok(message) = self.from_main.try_recv() {
            match message {
                ToWorker::Receive(receive) if self.tcp_stopping => {
                    let LinkReceive { link, opener, .. } = *receive;
                    self.give_back(link, opener);
                }
                ToWorker::Receive(receive) => self.start_receiving(*receive),
                ToWorker::Datagram { link, datagram } => self.open_stray(link, &datagram),
                ToWorker::Forget(link) => self.forget(link),
                ToWorker::OwnTcp(own) => self.own_tcp(*own),
                ToWorker::TcpSend {
                    link,
                    message,
                    header,
                } => self.tcp_send(link, &message, header),
                ToWorker::ForgetTcp(link) => self.forget_tcp(link),
                ToWorker::Port { endpoint, socket } => self.start_port(endpoint, socket),
                ToWorker::ForgetPort(endpoint) => self.forget_port(endpoint),
            }
        }
        Ok(())
    }

    fn token(slot: usize) -> Token {
        Token(TOKEN_UDP_RECV | slot as u64)
    }

    fn start_receiving(&mut self, receive: LinkReceive) {
        let LinkReceive {
            link,
            endpoint,
            remote,
            local,
            socket,
            opener,
            mtu,
        } = receive;
        let slot = match self.receiving.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.receiving.push(None);
                self.receiving.len() - 1
            }
        };
        if let Err(error) = self
            .worker
            .io
            .recv_datagrams(socket.as_raw_fd(), Self::token(slot))
        {
            // The main loop's socket receives the peer again once this one closes.
            tracing::warn!(worker = self.index, %link, %error, "cannot receive the link here");
            self.give_back(link, opener);
            return;
        }
        tracing::debug!(worker = self.index, %link, %remote, "receiving link");
        self.receiving[slot] = Some(Receiving {
            link,
            endpoint,
            remote,
            local,
            socket,
            opener,
            mtu,
            forgotten: false,
        });
    }

    pub(super) fn slot_of(&self, link: LinkId) -> Option<usize> {
        self.receiving
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.link == link && !r.forgotten))
    }

    /// The link closed: its socket closes once no receive is armed on it.
    fn forget(&mut self, link: LinkId) {
        let Some(slot) = self.slot_of(link) else {
            return;
        };
        if self.worker.io.disarm(Self::token(slot)) {
            if let Some(r) = self.receiving[slot].as_mut() {
                r.forgotten = true;
            }
        } else {
            self.receiving[slot] = None;
        }
    }

    /// Gives a link back to the main loop (with its receiving direction, for the association
    /// of a DTLS link).
    fn give_back(&mut self, link: LinkId, mut opener: Option<Opener>) {
        if let Some(opener) = opener.as_mut() {
            opener.flush_counts();
        }
        self.pass_ownership_to_main(FromWorker::Returned {
            link,
            opener: opener.map(Box::new),
        });
    }

    /// Gives every link back (the thread ends; its sockets close with it), also the links the
    /// main loop handed over that the thread had not taken yet.
    pub(super) fn return_links(&mut self) {
        while let Ok(message) = self.from_main.try_recv() {
            match message {
                ToWorker::Receive(receive) => {
                    let LinkReceive { link, opener, .. } = *receive;
                    self.give_back(link, opener);
                }
                ToWorker::OwnTcp(own) => self.pass_ownership_to_main(FromWorker::ReturnedTcp(own)),
                // Bytes for a TCP link it owns join the link's queue, which goes back with the
                // link (`give_back_tcp`): dropping them would skip messages in its stream.
                ToWorker::TcpSend {
                    link,
                    message,
                    header,
                } => self.tcp_send(link, &message, header),
                ToWorker::ForgetTcp(link) => self.forget_tcp(link),
                ToWorker::Datagram { .. }
                | ToWorker::Forget(_)
                | ToWorker::Port { .. }
                | ToWorker::ForgetPort(_) => {}
            }
        }
        for slot in 0..self.receiving.len() {
            // Its socket closes now (not when the ring goes): the peer's datagrams go to the
            // main loop's socket while the thread waits for its TCP links (`give_back_tcp`).
            self.worker.io.disarm(Self::token(slot));
            if let Some(r) = self.receiving[slot].take()
                && !r.forgotten
            {
                self.give_back(r.link, r.opener);
            }
        }
    }

    /// A datagram of one of this thread's links that arrived at the main loop's socket.
    fn open_stray(&mut self, link: LinkId, datagram: &[u8]) {
        let slot = self.slot_of(link);
        if slot.is_none() && self.shared_opener(link).is_none() {
            return;
        }
        let Some((buf, range)) = self.worker.copy_to_buf(datagram) else {
            return;
        };
        if let Some(slot) = slot {
            return self.open_batch(slot, buf, range, None);
        }
        let from = self.links.get(&link).and_then(|send| match send {
            LinkSend::Dtls {
                endpoint,
                remote,
                source,
                ..
            } => Some((link, *endpoint, *remote, *source)),
            LinkSend::Plain { .. } => None,
        });
        match from {
            Some(from) => self.open_shared(from, buf, range, None),
            None => self.worker.io.free(buf),
        }
    }

    /// A receive on the socket of `slot`.
    pub(super) fn on_datagram(&mut self, slot: usize, completion: Completion) -> Result<()> {
        let armed = completion.armed;
        let range = completion.data_range();
        match (completion.buf, range) {
            (Some(buf), Some(range)) if self.slot_of_live(slot) => {
                let plain = self
                    .receiving
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|r| r.opener.is_none());
                if plain {
                    self.receive_plain(slot, buf, range, completion.segment_size);
                } else {
                    self.open_batch(slot, buf, range, completion.segment_size);
                }
            }
            (Some(buf), _) => self.worker.io.free(buf),
            (None, _) => {}
        }
        if armed {
            return Ok(());
        }
        let Some(r) = self.receiving.get(slot).and_then(Option::as_ref) else {
            return Ok(());
        };
        if r.forgotten {
            // Its last completion: the socket may close now.
            self.receiving[slot] = None;
            return Ok(());
        }
        let fd = r.socket.as_raw_fd();
        if let Err(error) = self.worker.io.recv_datagrams(fd, Self::token(slot)) {
            tracing::warn!(worker = self.index, %error, "re-arming a link's receive failed");
            if let Some(r) = self.receiving[slot].take() {
                self.give_back(r.link, r.opener);
            }
        }
        Ok(())
    }

    fn slot_of_live(&self, slot: usize) -> bool {
        self.receiving
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|r| !r.forgotten)
    }

    /// Opens the datagrams at `buf[range]` (a GRO batch of `segment_size` bytes each, the last
    /// maybe shorter) in place and routes what they carried; takes ownership of `buf`.
    fn open_batch(
        &mut self,
        slot: usize,
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        let now = self.started.elapsed();
        for piece in self.worker.gro_pieces(range, segment_size) {
            let Some(r) = self.receiving.get_mut(slot).and_then(Option::as_mut) else {
                break;
            };
            let (Some(opener), Some(datagram)) = (
                r.opener.as_mut(),
                self.worker.io.buf_mut(&buf).get_mut(piece.clone()),
            ) else {
                break;
            };
            let opened = opener.open(now, datagram);
            let from = (r.link, r.endpoint, r.remote, r.local);
            if !self.route_opened(from, &buf, piece.start, opened) {
                break;
            }
        }
        // The counts reach the association once a receive.
        if let Some(opener) = self
            .receiving
            .get_mut(slot)
            .and_then(Option::as_mut)
            .and_then(|r| r.opener.as_mut())
        {
            opener.flush_counts();
        }
        self.worker.io.free(buf);
    }

    /// Routes what one datagram at `buf[start..]` of link `from` opened to: its packets by the
    /// snapshot, the rest to the main loop. False once the peer closed the association.
    pub(super) fn route_opened(
        &mut self,
        (link, endpoint, remote, local): (LinkId, usize, SocketAddr, Option<std::net::IpAddr>),
        buf: &BufId,
        start: usize,
        opened: connectopus_dtls::Opened,
    ) -> bool {
        self.records_opened += opened.data.len() as u64;
        if opened.advanced {
            // The main loop derives the keys of the epochs after the new one.
            self.woke_main = true;
        }
        for pt in opened.data.iter() {
            self.on_opened(link, buf, start + pt.start..start + pt.end);
        }
        if !opened.for_association.is_empty() {
            let bytes = self.worker.io.buf(buf);
            let mut datagram = Vec::new();
            for r in opened.for_association.iter() {
                let r = start + r.start..start + r.end;
                datagram.extend_from_slice(bytes.get(r).unwrap_or_default());
            }
            self.pass_to_main(FromWorker::ForAssociation {
                link,
                endpoint,
                remote,
                local,
                datagram,
            });
        }
        if let Some(reason) = opened.closed {
            self.pass_to_main(FromWorker::PeerClosed { link, reason });
            return false;
        }
        true
    }

    /// Routes one link message opened at `buf[r]` from `link`: an IP packet by the snapshot,
    /// anything else to the main loop; `buf` stays the caller's.
    pub(super) fn on_opened(&mut self, link: LinkId, buf: &BufId, r: Range<usize>) {
        let io = &mut self.worker.io;
        if !io.buf(buf).get(r.clone()).is_some_and(is_ip_packet) {
            let message = io.buf(buf).get(r).unwrap_or_default().to_vec();
            self.pass_to_main(FromWorker::LinkMessage { link, message });
            return;
        }
        let now = Time::from_duration(self.started.elapsed());
        let forwarded = match io.buf_mut(buf).get_mut(r.clone()) {
            Some(p) => self
                .worker
                .forwarder
                .forward_packet(now, p, Ingress::Link(link), None),
            None => Forwarded::Done,
        };
        match forwarded {
            Forwarded::Deliver if self.hairpin => {
                // Maybe for one of the node's namespaces: the main loop picks the device.
                let packet = self.worker.io.buf(buf).get(r).unwrap_or_default().to_vec();
                self.hand_to_main(FromWorker::Originated(Forwarded::Deliver, packet));
            }
            Forwarded::Deliver => self.write_own_tun(buf, r),
            Forwarded::Send(out) => self.send_on(out, buf, r),
            Forwarded::Done => {}
        }
    }

    /// Writes the packet at `buf[r]` to this thread's TUN queue: a TCP segment merged into
    /// an open super-packet of its flow when the queue takes them (written when the turn
    /// ends), anything else on its own; `buf` stays the caller's.
    pub(super) fn write_own_tun(&mut self, buf: &BufId, r: Range<usize>) {
        let coalescable = self.vnet
            && self
                .worker
                .io
                .buf(buf)
                .get(r.clone())
                .is_some_and(connectopus_offload::is_coalescable);
        if coalescable && self.coalesce(buf, r.clone()) {
            return;
        }
        if self.vnet {
            // Keep each flow in order: what is open goes first.
            self.flush_tun_writes();
        }
        self.write_tun_single(buf, r);
    }

    /// Merges the TCP segment at `src[r]` into an open super-packet of its flow, or opens one;
    /// false when it must be written on its own.
    fn coalesce(&mut self, src: &BufId, r: Range<usize>) -> bool {
        let headroom = self.worker.io.pool().headroom();
        let mut i = 0;
        while i < self.worker.coalescing.open.len() {
            let open = &mut self.worker.coalescing.open[i];
            let append = {
                let (from, to) = self.worker.io.buf_pair(src, &open.buf);
                let packet = from.get(r.clone()).unwrap_or_default();
                open.coalescer
                    .try_append(to.get_mut(headroom..).unwrap_or_default(), packet)
            };
            match append {
                Append::Appended => return true,
                Append::NotSameFlow => i += 1,
                Append::Flush => {
                    let open = self.worker.coalescing.open.remove(i);
                    self.write_super_packet(open);
                    break;
                }
            }
        }
        if self.worker.coalescing.open.len() >= datapath::MAX_OPEN_SUPER_PACKETS {
            let oldest = self.worker.coalescing.open.remove(0);
            self.write_super_packet(oldest);
        }
        let Some(out) = self.worker.io.alloc() else {
            return false;
        };
        let started = {
            let (from, to) = self.worker.io.buf_pair(src, &out);
            let packet = from.get(r).unwrap_or_default();
            Coalescer::start(to.get_mut(headroom..).unwrap_or_default(), packet)
        };
        match started {
            Some(coalescer) => {
                self.worker.coalescing.open.push(datapath::OpenSuperPacket {
                    tun: 0,
                    buf: out,
                    coalescer,
                });
                true
            }
            None => {
                self.worker.io.free(out);
                false
            }
        }
    }

    /// Writes the super-packets still open (at the end of each turn, and before a packet
    /// written on its own).
    pub(super) fn flush_tun_writes(&mut self) {
        while !self.worker.coalescing.open.is_empty() {
            let open = self.worker.coalescing.open.remove(0);
            self.write_super_packet(open);
        }
    }

    fn write_super_packet(&mut self, open: datapath::OpenSuperPacket) {
        let datapath::OpenSuperPacket { buf, coalescer, .. } = open;
        let start = self.worker.io.pool().headroom();
        let len = coalescer.finish(
            self.worker
                .io
                .buf_mut(&buf)
                .get_mut(start..)
                .unwrap_or_default(),
        );
        if coalescer.segments() > 1 {
            self.worker.offload_counters.tun_super_packets_written += 1;
        }
        self.worker
            .write_tun(self.tun.fd(), buf, start..start + len);
    }

    /// Writes the packet at `buf[r]` to this thread's TUN queue on its own (behind an empty
    /// virtio-net header when the queue has them); `buf` stays the caller's.
    fn write_tun_single(&mut self, buf: &BufId, r: Range<usize>) {
        let io = &mut self.worker.io;
        let Some(out) = io.alloc() else {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = io.pool().headroom();
        let header = if self.vnet { VNET_HDR_LEN } else { 0 };
        let end = start + header + r.len();
        let written = {
            let (from, to) = io.buf_pair(buf, &out);
            match (from.get(r), to.get_mut(start..end)) {
                (Some(packet), Some(slot)) => {
                    let (vnet_header, body) = slot.split_at_mut(header);
                    body.copy_from_slice(packet);
                    header == 0 || VnetHeader::NONE.write(vnet_header).is_ok()
                }
                _ => false,
            }
        };
        if written {
            self.worker.write_tun(self.tun.fd(), out, start..end);
        } else {
            io.free(out);
            self.worker.forwarder.count_drop(DropReason::Malformed);
        }
    }

    /// Sends the packet at `buf[r]` on `link`: into the link's batch for a DTLS or plaintext
    /// udp link (`transit`), else to the main loop; `buf` stays the caller's.
    fn send_on(&mut self, link: LinkId, buf: &BufId, r: Range<usize>) {
        if self.batch_transit(link, buf, r.clone())
            || self.frame_tcp_from_buf(link, buf, r.clone(), None)
        {
            return;
        }
        let packet = self.worker.io.buf(buf).get(r).unwrap_or_default().to_vec();
        self.hand_to_main(FromWorker::ToLink {
            link,
            packet,
            header: None,
        });
    }

    /// Hands a link (or the news that one closed) back to the main loop. Unlike received
    /// messages these are not dropped when the channel is full, which would leave the link
    /// owned by nobody: the thread waits for room (the main loop drains the channel every
    /// turn), up to [`OWNERSHIP_SEND_WAIT`], and gives up only once the node is stopping (the
    /// main loop may be joining this thread then) or after that wait (logged).
    pub(super) fn pass_ownership_to_main(&mut self, mut message: FromWorker) {
        let deadline = std::time::Instant::now() + OWNERSHIP_SEND_WAIT;
        loop {
            match self.to_main.try_send(message) {
                Ok(()) => {
                    let _ = self.main.wake();
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    if self.shared.stop.load(Ordering::Acquire)
                        || std::time::Instant::now() >= deadline
                    {
                        self.channel_drops.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            worker = Dataplane::label(self.index),
                            "the main loop took no link back within the wait: the link is closed"
                        );
                        return;
                    }
                    message = back;
                    let _ = self.main.wake();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Hands a received message to the main loop; counts it when the channel is full.
    pub(super) fn pass_to_main(&mut self, message: FromWorker) {
        match self.to_main.try_send(message) {
            Ok(()) => {
                self.woke_main = true;
                self.received_for_main += 1;
            }
            Err(TrySendError::Full(_)) => {
                self.channel_drops.fetch_add(1, Ordering::Relaxed);
                self.worker.forwarder.count_drop(DropReason::LinkCongested);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}
