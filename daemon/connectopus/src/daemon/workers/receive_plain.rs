//! A worker thread receiving a plaintext udp link (`udp-dialer`/`udp-listener`): each datagram
//! of a receive (a UDP GRO batch, split in place) is one link message as it is. An IPv6 packet
//! is forwarded by the snapshot where it lies (to the thread's TUN queue, or on to the next
//! link); a control datagram (hello, keepalive, the routing stream) goes to the main loop.
//!
//! With the node's eBPF fast path on, a peer's eBPF may send what this node's programs leave to
//! userspace: a packet whose checksum its kernel left partial (completed here), or a TCP/UDP
//! super-packet encapsulated whole (`daemon/super_packets.rs`), which is routed once and cut
//! for a link, or written whole to the TUN queue. Only a super-packet for one of the node's
//! other TUN devices (namespaces, `tun_devs`) goes to the main loop, which owns those devices.

use connectopus_offload::{Segments, VNET_HDR_LEN, VnetHeader};

use super::super::plain_udp::{Datagram, classify};
use super::super::super_packets::{WholeDatagram, is_one_long_packet};
use super::*;

impl WorkerThread {
    /// The datagrams at `buf[range]` from the plaintext udp link of `slot` (a GRO batch of
    /// `segment_size` bytes each, the last maybe shorter); takes ownership of `buf`.
    pub(super) fn receive_plain(
        &mut self,
        slot: usize,
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        let Some((link, mtu)) = self
            .receiving
            .get(slot)
            .and_then(Option::as_ref)
            .map(|r| (r.link, r.mtu))
        else {
            self.worker.io.free(buf);
            return;
        };
        let whole = self.fastpath
            && self
                .worker
                .io
                .buf(&buf)
                .get(range.clone())
                .is_some_and(|d| is_one_long_packet(d, segment_size, mtu));
        if whole {
            return self.route_super_packet(link, buf, range, segment_size);
        }
        for piece in self.worker.gro_pieces(range, segment_size) {
            let kind = self
                .worker
                .io
                .buf(&buf)
                .get(piece.clone())
                .map_or(Datagram::Malformed, classify);
            match kind {
                Datagram::Data => {
                    self.complete_partial_checksum(&buf, piece.clone());
                    self.datagrams_received += 1;
                    self.on_opened(link, &buf, piece);
                }
                Datagram::Control => {
                    let message = self
                        .worker
                        .io
                        .buf(&buf)
                        .get(piece)
                        .unwrap_or_default()
                        .to_vec();
                    self.pass_to_main(FromWorker::LinkMessage { link, message });
                }
                Datagram::Malformed => {
                    self.plain_counters.malformed_dropped += 1;
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                }
            }
        }
        self.worker.io.free(buf);
    }

    /// With the fast path on: completes the checksum of the packet at `buf[r]` if the peer's
    /// eBPF left it partial.
    fn complete_partial_checksum(&mut self, buf: &BufId, r: Range<usize>) {
        if self.fastpath
            && let Some(packet) = self.worker.io.buf_mut(buf).get_mut(r)
            && connectopus_offload::complete_partial_checksum(packet)
        {
            self.plain_counters.partial_checksums_completed += 1;
        }
    }

    /// Routes the super-packet at `buf[range]`, received whole from `from` (a peer's eBPF
    /// encapsulated it); as `Daemon::route_link_super_packet` on the main loop. Takes
    /// ownership of `buf`.
    fn route_super_packet(
        &mut self,
        from: LinkId,
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        if self.hairpin && self.is_local(&buf, range.clone()) {
            // Maybe for one of the node's other TUN devices: the main loop owns them.
            let datagram = self
                .worker
                .io
                .buf(&buf)
                .get(range)
                .unwrap_or_default()
                .to_vec();
            self.worker.io.free(buf);
            return self.hand_to_main(FromWorker::LinkSuperPacket {
                link: from,
                datagram,
                segment_size,
            });
        }
        let tun_mtu = if self.tun_mtu > 0 {
            self.tun_mtu
        } else {
            crate::DTLS_LINK_MTU
        };
        let read = self.worker.read_whole_datagram(
            &buf,
            range.clone(),
            segment_size,
            tun_mtu,
            &mut self.plain_counters,
        );
        let (header, segment_len) = match read {
            WholeDatagram::Super {
                header,
                segment_len,
            } => {
                self.datagrams_received += 1;
                (header, segment_len)
            }
            WholeDatagram::One => {
                self.datagrams_received += 1;
                self.on_opened(from, &buf, range);
                self.worker.io.free(buf);
                return;
            }
            WholeDatagram::Malformed => {
                self.worker.io.free(buf);
                return;
            }
        };
        let now = Time::from_duration(self.started.elapsed());
        let forwarded = match self.worker.io.buf_mut(&buf).get_mut(range.clone()) {
            Some(p) => {
                self.worker
                    .forwarder
                    .forward_packet(now, p, Ingress::Link(from), Some(segment_len))
            }
            None => Forwarded::Done,
        };
        match forwarded {
            Forwarded::Send(link) => {
                self.plain_counters.super_packets.cut += 1;
                match self.links.get(&link) {
                    Some(LinkSend::Dtls { .. }) => self.seal_segments(link, buf, range, header),
                    Some(LinkSend::Plain { .. }) => {
                        self.send_plain_segments(link, buf, range, header);
                    }
                    None => {
                        if self.frame_tcp_from_buf(link, &buf, range.clone(), Some(header)) {
                            self.worker.io.free(buf);
                            return;
                        }
                        // A TCP link of another worker: the main loop hands it to the owner.
                        let packet = self
                            .worker
                            .io
                            .buf(&buf)
                            .get(range)
                            .unwrap_or_default()
                            .to_vec();
                        self.worker.io.free(buf);
                        self.hand_to_main(FromWorker::ToLink {
                            link,
                            packet,
                            header: Some(header),
                        });
                    }
                }
            }
            Forwarded::Deliver => self.deliver_super_packet(buf, range, header),
            Forwarded::Done => self.worker.io.free(buf),
        }
    }

    /// Writes a super-packet to this thread's TUN queue: whole behind its virtio-net header
    /// when the queue takes it, else cut into segments written one by one. Takes ownership of
    /// `buf`.
    fn deliver_super_packet(&mut self, buf: BufId, range: Range<usize>, header: VnetHeader) {
        let takes_it = self.vnet
            && match self.tun.offload() {
                crate::tun::Offload::On { uso } => header.gso_type != GsoType::UdpL4 || *uso,
                crate::tun::Offload::Off(_) => false,
            };
        // Keep the flow in order: what is open goes first.
        self.flush_tun_writes();
        // The receive left headroom in front of the datagram for the virtio-net header.
        let start = range.start.checked_sub(VNET_HDR_LEN);
        if takes_it && let Some(start) = start {
            let written = self
                .worker
                .io
                .buf_mut(&buf)
                .get_mut(start..range.start)
                .map(|slot| header.write(slot));
            if let Some(Ok(())) = written {
                self.plain_counters.super_packets.delivered_whole += 1;
                self.worker.write_tun(self.tun.fd(), buf, start..range.end);
            } else {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                self.worker.io.free(buf);
            }
            return;
        }
        self.plain_counters.super_packets.cut += 1;
        let count = self
            .worker
            .io
            .buf(&buf)
            .get(range.clone())
            .and_then(|p| Segments::new(&header, p).ok())
            .map_or(0, |s| s.count());
        let vnet = if self.vnet { VNET_HDR_LEN } else { 0 };
        for i in 0..count {
            let io = &mut self.worker.io;
            let Some(out) = io.alloc() else {
                self.worker.forwarder.count_drop(DropReason::LinkCongested);
                break;
            };
            let start = io.pool().headroom();
            let written = {
                let (from, to) = io.buf_pair(&buf, &out);
                let segments = from
                    .get(range.clone())
                    .and_then(|p| Segments::new(&header, p).ok());
                match (segments, to.get_mut(start..)) {
                    (Some(segments), Some(slot)) if slot.len() > vnet => {
                        let (vnet_header, body) = slot.split_at_mut(vnet);
                        let header_ok = vnet == 0 || VnetHeader::NONE.write(vnet_header).is_ok();
                        segments.write(i, body).ok().filter(|_| header_ok)
                    }
                    _ => None,
                }
            };
            match written {
                Some(n) => self
                    .worker
                    .write_tun(self.tun.fd(), out, start..start + vnet + n),
                None => {
                    io.free(out);
                    self.worker.forwarder.count_drop(DropReason::Malformed);
                    break;
                }
            }
        }
        self.worker.io.free(buf);
    }
}
