//! The sending side of a worker thread: what it reads from its TUN queue is forwarded by the
//! snapshot and sealed into DTLS records (or sent as plaintext UDP datagrams) where it lies.

use super::super::gso_send::{Plaintext, UdpTarget};
use super::*;

impl WorkerThread {
    /// Routes what the TUN queue handed over in `buf[range]`; takes ownership of `buf`.
    pub(super) fn on_tun_read(&mut self, buf: BufId, range: Range<usize>) {
        match self.worker.read_tun(&buf, range.clone(), self.vnet) {
            Some(read) => self.forward(buf, range, read.packet, read.header),
            None => self.worker.io.free(buf),
        }
    }

    /// Forwards the packet (or super-packet with `header`) at `buf[packet]`, read as
    /// `buf[read]`; takes ownership of `buf`.
    pub(super) fn forward(
        &mut self,
        buf: BufId,
        read: Range<usize>,
        packet: Range<usize>,
        header: Option<VnetHeader>,
    ) {
        let segment_len = match &header {
            None => None,
            Some(h) => {
                let len = self
                    .worker
                    .io
                    .buf(&buf)
                    .get(packet.clone())
                    .and_then(|p| Segments::new(h, p).ok())
                    .map(|s| s.max_segment_len());
                if len.is_none() {
                    self.worker.io.free(buf);
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                    return;
                }
                len
            }
        };
        if self.hairpin && self.is_local(&buf, packet.clone()) {
            // For one of the node's namespaces (or a loop): the main loop decides.
            return self.hand_read_to_main(buf, read, header.is_none());
        }
        let now = Time::from_duration(self.started.elapsed());
        let forwarded = match self.worker.io.buf_mut(&buf).get_mut(packet.clone()) {
            Some(p) => self
                .worker
                .forwarder
                .forward_packet(now, p, Ingress::Tun, segment_len),
            None => {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                Forwarded::Done
            }
        };
        match forwarded {
            Forwarded::Send(link) => match self.links.get(&link) {
                Some(LinkSend::Dtls { .. }) => match header {
                    None => return self.seal_one(link, buf, packet),
                    Some(h) => return self.seal_segments(link, buf, packet, h),
                },
                Some(LinkSend::Plain { .. }) => match header {
                    None => return self.send_plain(link, buf, packet),
                    Some(h) => return self.send_plain_segments(link, buf, packet, h),
                },
                None => {
                    if self.frame_tcp_from_buf(link, &buf, packet.clone(), header) {
                        self.worker.io.free(buf);
                        return;
                    }
                    let bytes = self
                        .worker
                        .io
                        .buf(&buf)
                        .get(packet)
                        .unwrap_or_default()
                        .to_vec();
                    self.hand_to_main(FromWorker::ToLink {
                        link,
                        packet: bytes,
                        header,
                    });
                }
            },
            Forwarded::Deliver => {
                return self.hand_read_to_main(buf, read, header.is_none());
            }
            Forwarded::Done => {}
        }
        self.worker.io.free(buf);
    }

    /// Whether the packet at `buf[packet]` is for an address this node delivers itself.
    pub(super) fn is_local(&self, buf: &BufId, packet: Range<usize>) -> bool {
        let Some(p) = self.worker.io.buf(buf).get(packet) else {
            return false;
        };
        let destination = if p.first().is_some_and(|b| b >> 4 == 4) {
            connectopus_core::forward4::addresses4(p).map(|(_, d)| d.to_ipv6_mapped())
        } else {
            forward::addresses(p).map(|(_, d)| d)
        };
        destination.is_some_and(|d| {
            matches!(
                self.worker.forwarder.snapshot().table.routes.lookup(d),
                Some((_, forward::RouteTarget::Local))
            )
        })
    }

    /// Hands the TUN read at `buf[read]` to the main loop as it came (its checksum marked
    /// complete when `completed`); takes ownership of `buf`.
    pub(super) fn hand_read_to_main(&mut self, buf: BufId, read: Range<usize>, completed: bool) {
        let mut bytes = self
            .worker
            .io
            .buf(&buf)
            .get(read)
            .unwrap_or_default()
            .to_vec();
        self.worker.io.free(buf);
        if self.vnet && completed {
            // Its checksum is complete now: the main loop must not complete it again.
            let _ = VnetHeader::NONE.write(&mut bytes);
        }
        self.hand_to_main(FromWorker::FromTun(bytes));
    }

    /// Seals the packet at `buf[packet]` into one record where it lies and sends it.
    pub(super) fn seal_one(&mut self, link: LinkId, buf: BufId, packet: Range<usize>) {
        let Some((target, sealer)) = self.links.get_mut(&link).and_then(LinkSend::sealing) else {
            self.worker.io.free(buf);
            return;
        };
        let io = &mut self.worker.io;
        let Some(record_start) = packet.start.checked_sub(sealer.payload_offset()) else {
            io.free(buf);
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let sealed = sealer.reserve(1).and_then(|r| {
            let record = io.buf_mut(&buf).get_mut(record_start..).unwrap_or_default();
            r.seal(0, record, packet.len())
        });
        match sealed {
            Ok(n) => target.send(io, buf, record_start..record_start + n, None),
            Err(error) => {
                io.free(buf);
                tracing::debug!(%link, %error, worker = self.index, "dtls seal failed");
                self.worker.forwarder.count_drop(DropReason::LinkDown);
            }
        }
    }

    /// Cuts the super-packet at `src[range]` into segments, seals them as records into send
    /// buffers (one reservation of sequence numbers per send) and sends each buffer with one
    /// UDP GSO `sendmsg`; takes ownership of `src`.
    pub(super) fn seal_segments(
        &mut self,
        link: LinkId,
        src: BufId,
        range: Range<usize>,
        header: VnetHeader,
    ) {
        let Some((target, sealer)) = self.links.get_mut(&link).and_then(LinkSend::sealing) else {
            self.worker.io.free(src);
            return;
        };
        self.worker
            .send_segments(link, target, sealer, (src, range, &header));
    }

    /// Where plaintext udp link `link`'s datagrams go.
    fn plain_target(&self, link: LinkId) -> Option<UdpTarget> {
        match self.links.get(&link)? {
            send @ LinkSend::Plain { .. } => Some(send.target()),
            LinkSend::Dtls { .. } => None,
        }
    }

    /// Sends the packet at `buf[packet]` as one plaintext datagram where it lies.
    pub(super) fn send_plain(&mut self, link: LinkId, buf: BufId, packet: Range<usize>) {
        match self.plain_target(link) {
            Some(target) => target.send(&mut self.worker.io, buf, packet, None),
            None => self.worker.io.free(buf),
        }
    }

    /// Cuts a super-packet into plaintext datagrams, back to back, one GSO send per buffer.
    pub(super) fn send_plain_segments(
        &mut self,
        link: LinkId,
        src: BufId,
        range: Range<usize>,
        header: VnetHeader,
    ) {
        let Some(target) = self.plain_target(link) else {
            self.worker.io.free(src);
            return;
        };
        self.worker
            .send_segments(link, target, &mut Plaintext, (src, range, &header));
    }
}
