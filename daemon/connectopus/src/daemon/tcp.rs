//! TCP links of the main loop: reads, writes, framing and TLS; and handing an established
//! link to a worker thread (`workers::tcp`) and taking it back.

use connectopus_offload::VnetHeader;

use super::workers::{OwnTcp, ToWorker};
use super::*;

impl Daemon {
    /// Starts a write of the link's queued bytes if none is in flight.
    pub(super) fn pump_tcp_write(&mut self, link: LinkId) {
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if tcp.moving() {
            self.hand_over_tcp_if_idle(link);
            return;
        }
        if tcp.write_in_flight || tcp.tx.is_empty() {
            return;
        }
        let fd = tcp.stream.as_raw_fd();
        let token = Token(TOKEN_TCP_WRITE | link.0);
        tcp.write_in_flight = self.worker.start_stream_write(link, fd, &tcp.tx, token);
    }

    /// Starts a read on the link if none is in flight, behind the links already waiting for
    /// buffers (so a link whose read just completed cannot overtake them).
    pub(super) fn start_tcp_read(&mut self, link: LinkId) {
        if !self.worker.tcp_waiting.is_empty() && !self.worker.tcp_waiting.contains(&link) {
            if self.tcp_read_in_flight(link) == Some(false) {
                self.worker.offload_counters.tcp_reads_deferred += 1;
                self.worker.tcp_waiting.push(link);
            }
            return;
        }
        self.try_tcp_read(link);
    }

    /// `Some(in flight)` for a TCP link, `None` for anything else.
    fn tcp_read_in_flight(&self, link: LinkId) -> Option<bool> {
        match self.links.get(&link) {
            Some(Link {
                transport: Transport::Tcp(tcp),
                ..
            }) => Some(tcp.read_in_flight),
            _ => None,
        }
    }

    /// Starts a read now if the pool has more than the reserve free; otherwise the link waits
    /// (once in the list) for [`Daemon::resume_tcp_io`].
    fn try_tcp_read(&mut self, link: LinkId) {
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if tcp.moving() {
            self.hand_over_tcp_if_idle(link);
            return;
        }
        if tcp.read_in_flight {
            return;
        }
        let fd = tcp.stream.as_raw_fd();
        let token = Token(TOKEN_TCP_READ | link.0);
        tcp.read_in_flight = self.worker.start_stream_read(link, fd, token);
    }

    /// Retries, in the order they began to wait, the reads and writes of TCP links that found
    /// too few free buffers ([`Worker::start_stream_read`]): once a turn, after the turn's
    /// completions returned their buffers. Nothing else would: a link with no read or write in flight
    /// gets no completion, and stays silent until its peer times it out.
    pub(super) fn resume_tcp_io(&mut self) {
        if self.worker.tcp_waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.worker.tcp_waiting);
        for link in waiting.drain(..) {
            self.try_tcp_read(link);
            self.pump_tcp_write(link);
        }
        // Those that still wait were added again; keep the allocation.
        waiting.append(&mut self.worker.tcp_waiting);
        self.worker.tcp_waiting = waiting;
    }

    pub(super) fn on_tcp_written(&mut self, link: LinkId, completion: Completion) {
        if let Some(buf) = completion.buf {
            self.worker.io.free(buf);
        }
        if let Some((_, tcp)) = self.closing.iter_mut().find(|(id, _)| *id == link) {
            tcp.write_in_flight = false;
            return;
        }
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        tcp.write_in_flight = false;
        match completion.result {
            Ok(n) => {
                tcp.tx.drain(..n.min(tcp.tx.len()));
                self.pump_tcp_write(link);
            }
            Err(errno) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => {
                self.pump_tcp_write(link);
            }
            Err(errno) => {
                tracing::debug!(%link, error = %errno.into_io(), "tcp write failed");
                self.close_link(link, "write error");
            }
        }
    }

    pub(super) fn on_tcp_read(&mut self, link: LinkId, completion: Completion) {
        if let Some((_, tcp)) = self.closing.iter_mut().find(|(id, _)| *id == link) {
            tcp.read_in_flight = false;
            if let Some(buf) = completion.buf {
                self.worker.io.free(buf);
            }
            return;
        }
        let range = completion.data_range();
        let Some(buf) = completion.buf else {
            return;
        };
        let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        else {
            self.worker.io.free(buf);
            return;
        };
        // `read_in_flight` stays set until its messages are handled: the link must not go to
        // a worker thread (`hand_over_tcp_if_idle`) with messages of this read not handled.
        self.worker.tcp_reads += 1;
        let result = match (completion.result, range) {
            (Ok(0), _) => Err("closed by peer".to_owned()),
            (Ok(_), Some(range)) => {
                self.worker.scratch_out.clear();
                let data = &self.worker.io.buf(&buf)[range];
                let r = tcp
                    .codec
                    .receive(data, &mut self.worker.scratch_out)
                    .map_err(|e| e.to_string());
                tcp.tx.extend(self.worker.scratch_out.iter());
                r
            }
            (Err(errno), _) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => Ok(()),
            (Err(errno), _) => Err(errno.into_io().to_string()),
            (Ok(_), None) => Ok(()),
        };
        self.worker.io.free(buf);
        if let Err(reason) = result {
            tracing::debug!(%link, %reason, "tcp link ends");
            self.tcp_read_done(link);
            self.close_link(link, "transport closed");
            return;
        }
        self.announce_if_ready(link);
        self.worker.ranges.clear();
        if let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        {
            while let Some(r) = tcp.codec.pop_message() {
                self.worker.ranges.push(r);
            }
        }
        let ranges = std::mem::take(&mut self.worker.ranges);
        for r in &ranges {
            let Some(Link {
                transport: Transport::Tcp(tcp),
                ..
            }) = self.links.get_mut(&link)
            else {
                break;
            };
            let Some(message) = tcp.codec.buffer_mut().get(r.clone()) else {
                continue;
            };
            // Copied out once so the core and the other links can be reached while this
            // link's codec buffer is borrowed by nobody.
            self.worker.scratch.clear();
            self.worker.scratch.extend_from_slice(message);
            self.handle_link_message_in_scratch(link);
        }
        self.worker.ranges = ranges;
        self.tcp_read_done(link);
        if self.close_if_tcp_queue_overflows(link) {
            return;
        }
        self.pump_tcp_write(link);
        self.start_tcp_read(link);
    }

    /// The read of `link` and the messages it carried are handled (the link may have been
    /// closed meanwhile: its stream closes once nothing is in flight).
    fn tcp_read_done(&mut self, link: LinkId) {
        if let Some(Link {
            transport: Transport::Tcp(tcp),
            ..
        }) = self.links.get_mut(&link)
        {
            tcp.read_in_flight = false;
        } else if let Some((_, tcp)) = self.closing.iter_mut().find(|(id, _)| *id == link) {
            tcp.read_in_flight = false;
        }
    }

    pub(super) fn add_tcp_link(&mut self, connected: Box<TcpConnected>) {
        let connected = *connected;
        if self.stopping.is_some() {
            return;
        }
        let kind = match (connected.ended.is_some(), connected.tls.is_some()) {
            (true, true) => "tcp+tls dialer",
            (true, false) => "tcp dialer",
            (false, true) => "tcp+tls listener",
            (false, false) => "tcp listener",
        };
        let mut codec = match connected.tls {
            Some(tls) => TcpCodec::tls(tls),
            None => TcpCodec::plain(),
        };
        if connected.ended.is_none() {
            self.make_room_for_tcp(&connected.backend, connected.remote.ip());
        }
        self.worker.scratch_out.clear();
        codec.poll_handshake(&mut self.worker.scratch_out);
        let tx: VecDeque<u8> = self.worker.scratch_out.iter().copied().collect();
        let id = self.new_link(Link {
            backend: connected.backend,
            kind,
            remote: connected.remote,
            cost: connected.cost,
            mtu: connected.mtu,
            connected_at: Instant::now(),
            announced: false,
            had_session: false,
            ended: connected.ended,
            transport: Transport::Tcp(Box::new(TcpLink {
                stream: connected.stream,
                codec,
                tx,
                write_in_flight: false,
                read_in_flight: false,
                worker: None,
            })),
        });
        self.announce_if_ready(id);
        self.pump_tcp_write(id);
        self.start_tcp_read(id);
    }
}

impl Daemon {
    /// Chooses a worker for each TCP/TLS link whose session is established and that has none
    /// yet: the one with the fewest links. For a worker thread the link stops starting reads
    /// and writes, and goes over once those in flight completed ([`Daemon::hand_over_tcp_if_idle`];
    /// a link's read completes at the latest with the peer's next keepalive).
    pub(super) fn assign_tcp_owners(&mut self) {
        let waiting: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.had_session && matches!(&l.transport, Transport::Tcp(t) if t.worker.is_none())
            })
            .map(|(id, _)| *id)
            .collect();
        for link in waiting {
            let index = self.dataplane.least_loaded();
            if let Some(Link {
                transport: Transport::Tcp(tcp),
                ..
            }) = self.links.get_mut(&link)
            {
                tcp.worker = Some(index);
                self.dataplane.count_tcp(index, true);
                tracing::debug!(%link, worker = index, "tcp link goes to worker");
            }
            self.hand_over_tcp_if_idle(link);
        }
    }

    /// Hands TCP `link` to the worker thread chosen for it if nothing is in flight on its
    /// stream: the stream, the codec (with a partly read frame) and the unsent bytes go over
    /// together, so no frame is split between two owners. If the thread takes nothing any
    /// more, the main loop keeps the link.
    pub(super) fn hand_over_tcp_if_idle(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let index = match &l.transport {
            Transport::Tcp(tcp) if tcp.moving() && tcp.idle() => tcp.worker.unwrap_or(0),
            _ => return,
        };
        let tcp =
            match std::mem::replace(&mut l.transport, Transport::TcpOnWorker { worker: index }) {
                Transport::Tcp(tcp) => tcp,
                other => {
                    l.transport = other;
                    return;
                }
            };
        let TcpLink {
            stream, codec, tx, ..
        } = *tcp;
        let own = OwnTcp {
            link,
            stream,
            codec,
            tx,
        };
        match self
            .dataplane
            .send_to(index, ToWorker::OwnTcp(Box::new(own)))
        {
            Ok(()) => tracing::debug!(%link, worker = index, "tcp link handed over"),
            Err(ToWorker::OwnTcp(own)) => {
                self.dataplane.count_tcp(index, false);
                self.keep_tcp_on_main(*own);
            }
            Err(_) => {}
        }
    }

    /// The main loop reads and writes the link (again) from where its stream is.
    fn keep_tcp_on_main(&mut self, own: OwnTcp) {
        let OwnTcp {
            link,
            stream,
            codec,
            tx,
        } = own;
        let Some(l) = self.links.get_mut(&link) else {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        };
        l.transport = Transport::Tcp(Box::new(TcpLink {
            stream,
            codec,
            tx,
            write_in_flight: false,
            read_in_flight: false,
            worker: Some(0),
        }));
        self.dataplane.count_tcp(0, true);
        for (message, header) in self.dataplane.tcp_held.remove(&link).unwrap_or_default() {
            self.send_from_worker(link, &message, header);
        }
        self.pump_tcp_write(link);
        self.start_tcp_read(link);
    }

    /// A worker thread gave a TCP link back (it stops): the main loop continues its stream,
    /// and the next turn gives it to a running worker thread (if any is left), as a link
    /// whose session was just established.
    pub(super) fn take_back_tcp(&mut self, own: OwnTcp) {
        match self.links.get(&own.link).map(|l| &l.transport) {
            Some(Transport::TcpOnWorker { worker }) => {
                let worker = *worker;
                let link = own.link;
                tracing::info!(%link, worker, "tcp link back on the main loop");
                self.dataplane.count_tcp(worker, false);
                self.keep_tcp_on_main(own);
                if let Some(Link {
                    transport: Transport::Tcp(tcp),
                    ..
                }) = self.links.get_mut(&link)
                    && tcp.worker == Some(0)
                {
                    tcp.worker = None;
                    self.dataplane.count_tcp(0, false);
                    self.dataplane.links_dirty = true;
                }
            }
            // Closed meanwhile.
            _ => {
                let _ = own.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// TCP `link`, owned by worker thread `worker`, closed: the thread closes its stream.
    pub(super) fn forget_tcp_owner(&mut self, link: LinkId, worker: usize) {
        self.dataplane.count_tcp(worker, false);
        self.dataplane.tcp_held.remove(&link);
        let _ = self.dataplane.send_to(worker, ToWorker::ForgetTcp(link));
    }

    /// Hands a message for TCP `link` to worker thread `index`, which owns it; while the
    /// thread gives its links back, the main loop holds the message until the link is back.
    pub(super) fn send_to_tcp_owner(
        &mut self,
        link: LinkId,
        index: usize,
        message: Vec<u8>,
        header: Option<VnetHeader>,
    ) {
        match self.dataplane.send_tcp(index, link, message, header) {
            Ok(true) => {}
            Ok(false) => self.worker.forwarder.count_drop(DropReason::LinkCongested),
            Err((message, header)) => {
                let held = self.dataplane.tcp_held.entry(link).or_default();
                let bytes: usize = held.iter().map(|(m, _)| m.len()).sum();
                if bytes > MAX_TCP_BACKLOG && (header.is_some() || is_ip_packet(&message)) {
                    self.worker.forwarder.count_drop(DropReason::LinkCongested);
                } else {
                    held.push((message, header));
                }
            }
        }
    }
}
