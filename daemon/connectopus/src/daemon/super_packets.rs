//! TCP and UDP super-packets that arrive whole from a plaintext udp link.
//!
//! A peer's eBPF fast path encapsulates what its TUN device hands the kernel as it is, GSO
//! super-packets included (`FIXED_GSO`: up to 64 KiB, checksum left to an offload). When this
//! node's own programs leave such a datagram to userspace (no entry: the route leads to a DTLS
//! or TCP link or to another TUN device of the node; hop limit 1; ...), the UDP socket
//! (`UDP_GRO` on) receives it as one datagram holding one long IPv6 packet; for a UDP
//! super-packet the socket's `UDP_GRO` control message carries the sender's segment size.
//!
//! Here it becomes what a TUN read of the same packet would have been
//! ([`connectopus_offload::received_super_packet`]: a virtio-net header, the pseudo-header sum
//! in the checksum field), is routed once by its first header with the segment length checked
//! against the link MTU, and then takes the transmit side's paths: cut into segments for a
//! DTLS, TCP or plaintext udp link ([`connectopus_offload::Segments`], full checksums), written
//! whole behind its header to a TUN device with offloads, or cut for one without.

use connectopus_core::node::Forwarded;
use connectopus_offload::{GsoType, Segments, VNET_HDR_LEN, VnetHeader};
use uring_io::BufId;

use super::plain_udp::PlainUdpCounters;
use super::worker::Worker;
use super::*;

/// What happened to super-packets received whole from plaintext udp links (`status`
/// counters).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SuperPacketCounters {
    /// Super-packets received whole (a peer's eBPF encapsulated a GSO packet).
    pub(super) received: u64,
    /// Of those, written whole to a TUN device with offloads.
    pub(super) delivered_whole: u64,
    /// Of those, cut into segments (for a link, or a TUN device without offloads).
    pub(super) cut: u64,
}

impl SuperPacketCounters {
    pub(super) fn report(&self, map: &mut BTreeMap<String, u64>) {
        map.insert("udp_super_packets_received".to_owned(), self.received);
        map.insert(
            "udp_super_packets_delivered_whole".to_owned(),
            self.delivered_whole,
        );
        map.insert("udp_super_packets_cut".to_owned(), self.cut);
    }
}

/// True when `datagram`, one receive of `len` bytes from a link whose MTU is `link_mtu`, is a
/// single IPv6 packet longer than one segment: longer than the link MTU, or than the segment
/// size the receive reported. A GRO batch of several datagrams is not (its first packet is
/// shorter than the receive).
pub(super) fn is_one_long_packet(
    datagram: &[u8],
    segment_size: Option<u16>,
    link_mtu: u16,
) -> bool {
    let len = datagram.len();
    let whole = datagram.first().is_some_and(|b| b >> 4 == 6)
        && datagram
            .get(4..6)
            .is_some_and(|l| usize::from(u16::from_be_bytes([l[0], l[1]])) + 40 == len);
    whole
        && (len > usize::from(link_mtu)
            || segment_size.is_some_and(|s| s > 0 && usize::from(s) < len))
}

/// A datagram received whole from a plaintext udp link, as [`Worker::read_whole_datagram`]
/// found it.
#[derive(Debug)]
pub(super) enum WholeDatagram {
    /// One packet after all (a UDP datagram without the sender's segment size, or a packet
    /// that fits one segment), its partial checksum completed: the ordinary path.
    One,
    /// A super-packet, now behind `header` as a TUN read would have been, to be cut into
    /// segments of at most `segment_len` bytes.
    Super {
        header: VnetHeader,
        segment_len: usize,
    },
    /// Malformed: counted as dropped.
    Malformed,
}

impl Worker {
    /// Reads the datagram at `buf[range]`, received whole from a plaintext udp link (a peer's
    /// eBPF may have encapsulated a super-packet; `segment_size` is what the receive reported)
    /// and makes a super-packet of it what a TUN read would have been; counts it in
    /// `counters`. `tun_mtu` bounds the segments when the destination is not behind a link.
    /// The buffer stays the caller's.
    pub(super) fn read_whole_datagram(
        &mut self,
        buf: &BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
        tun_mtu: u16,
        counters: &mut PlainUdpCounters,
    ) -> WholeDatagram {
        let max_segment_len = self.segment_mtu(buf, range.clone(), tun_mtu);
        let described =
            self.io.buf_mut(buf).get_mut(range.clone()).map(|p| {
                connectopus_offload::received_super_packet(p, segment_size, max_segment_len)
            });
        let header = match described {
            Some(Ok(Some(header))) => header,
            Some(Ok(None)) => {
                if let Some(packet) = self.io.buf_mut(buf).get_mut(range)
                    && connectopus_offload::complete_partial_checksum(packet)
                {
                    counters.partial_checksums_completed += 1;
                }
                return WholeDatagram::One;
            }
            Some(Err(_)) | None => {
                counters.malformed_dropped += 1;
                self.forwarder.count_drop(DropReason::Malformed);
                return WholeDatagram::Malformed;
            }
        };
        counters.super_packets.received += 1;
        let segment_len = self
            .io
            .buf(buf)
            .get(range)
            .and_then(|p| Segments::new(&header, p).ok())
            .map(|s| s.max_segment_len());
        match segment_len {
            Some(segment_len) => WholeDatagram::Super {
                header,
                segment_len,
            },
            None => {
                self.forwarder.count_drop(DropReason::Malformed);
                WholeDatagram::Malformed
            }
        }
    }

    /// The longest segment the super-packet at `buf[range]` may be cut into: the MTU of the
    /// link its destination routes to, else `tun_mtu`.
    fn segment_mtu(&self, buf: &BufId, range: Range<usize>, tun_mtu: u16) -> usize {
        let destination = self
            .io
            .buf(buf)
            .get(range)
            .and_then(forward::addresses)
            .map(|(_, dst)| dst);
        let snapshot = self.forwarder.snapshot();
        let mtu = match destination.and_then(|d| snapshot.table.routes.lookup(d)) {
            Some((_, forward::RouteTarget::Link { mtu, .. })) => *mtu,
            _ => tun_mtu,
        };
        usize::from(mtu)
    }
}

impl Daemon {
    /// Routes the super-packet at `buf[range]`, received whole from plaintext udp link `from`
    /// (see the module documentation); `segment_size` is what the receive reported. Takes
    /// ownership of `buf`.
    pub(super) fn route_link_super_packet(
        &mut self,
        from: LinkId,
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        let tun_mtu = self.fastpath.tun_mtu().unwrap_or(crate::DTLS_LINK_MTU);
        let read = self.worker.read_whole_datagram(
            &buf,
            range.clone(),
            segment_size,
            tun_mtu,
            &mut self.plain_udp_counters,
        );
        let (header, segment_len) = match read {
            WholeDatagram::Super {
                header,
                segment_len,
            } => (header, segment_len),
            WholeDatagram::One => {
                // The ordinary path, too big ones answered with Packet Too Big.
                self.route_link_packet_in_buf(from, &buf, range);
                self.worker.io.free(buf);
                return;
            }
            WholeDatagram::Malformed => {
                self.worker.io.free(buf);
                return;
            }
        };
        match self.forward(&buf, range.clone(), Ingress::Link(from), Some(segment_len)) {
            Forwarded::Send(link) if self.is_plain_udp(link) => {
                self.plain_udp_counters.super_packets.cut += 1;
                self.send_plain_segments(link, buf, range, header);
            }
            Forwarded::Send(link) if self.is_dtls(link) => {
                self.plain_udp_counters.super_packets.cut += 1;
                self.seal_segments(link, buf, range, header);
            }
            Forwarded::Send(link) => {
                self.plain_udp_counters.super_packets.cut += 1;
                self.send_segments_tcp(link, &buf, range, header);
                self.worker.io.free(buf);
            }
            Forwarded::Deliver => self.deliver_super_packet(buf, range, header),
            Forwarded::Done => self.worker.io.free(buf),
        }
    }

    /// Delivers a super-packet to its TUN device: whole behind its virtio-net header when the
    /// device takes them, else cut into segments written one by one. Takes ownership of `buf`.
    fn deliver_super_packet(&mut self, buf: BufId, range: Range<usize>, header: VnetHeader) {
        let tun = self
            .worker
            .io
            .buf(&buf)
            .get(range.clone())
            .and_then(|p| self.tun_for(p));
        let Some((tun, fd, offload)) =
            tun.and_then(|t| self.tuns.get(t).map(|d| (t, d.fd(), d.offload().clone())))
        else {
            self.worker.forwarder.count_drop(DropReason::NoRoute);
            self.worker.io.free(buf);
            return;
        };
        let takes_it = match offload {
            crate::tun::Offload::On { uso } => header.gso_type != GsoType::UdpL4 || uso,
            crate::tun::Offload::Off(_) => false,
        };
        // The receive put its own header in front of the datagram, so there is room for the
        // virtio-net header before the packet.
        let start = range.start.checked_sub(VNET_HDR_LEN);
        if takes_it && let Some(start) = start {
            // Keep the flow in order: what is open for this device goes first.
            self.flush_tun_writes(Some(tun));
            let written = self
                .worker
                .io
                .buf_mut(&buf)
                .get_mut(start..range.start)
                .map(|slot| header.write(slot));
            if let Some(Ok(())) = written {
                self.plain_udp_counters.super_packets.delivered_whole += 1;
                self.worker.write_tun(fd, buf, start..range.end);
            } else {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                self.worker.io.free(buf);
            }
            return;
        }
        self.plain_udp_counters.super_packets.cut += 1;
        let mut segment = std::mem::take(&mut self.worker.scratch);
        let count = self
            .worker
            .io
            .buf(&buf)
            .get(range.clone())
            .and_then(|p| Segments::new(&header, p).ok())
            .map_or(0, |s| s.count());
        for i in 0..count {
            segment.clear();
            let cut = self
                .worker
                .io
                .buf(&buf)
                .get(range.clone())
                .and_then(|p| Segments::new(&header, p).ok())
                .and_then(|s| {
                    segment.resize(s.segment_len(i), 0);
                    s.write(i, &mut segment).ok()
                });
            if cut.is_none() {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                break;
            }
            self.write_tun_packet(tun, &segment);
        }
        self.worker.scratch = segment;
        self.worker.io.free(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv6(total: usize) -> Vec<u8> {
        let mut p = vec![0u8; total];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p
    }

    #[test]
    fn one_packet_longer_than_the_mtu_or_the_segment_size() {
        // A TCP super-packet: no segment size, longer than the link MTU.
        assert!(is_one_long_packet(&ipv6(30_000), None, 1400));
        // A UDP super-packet: the sender's segment size is below its length.
        assert!(is_one_long_packet(&ipv6(1300), Some(1000), 1400));
        // An ordinary datagram, with or without a GRO segment size of its own length.
        assert!(!is_one_long_packet(&ipv6(1400), None, 1400));
        assert!(!is_one_long_packet(&ipv6(1300), Some(1300), 1400));
        // A GRO batch: the first packet is shorter than the receive.
        let mut batch = ipv6(1300);
        batch.extend_from_slice(&ipv6(1300));
        assert!(!is_one_long_packet(&batch, Some(1300), 1400));
        // Control messages and garbage.
        assert!(!is_one_long_packet(&[1, 2, 3], None, 1400));
        assert!(!is_one_long_packet(&[], Some(5), 1400));
    }
}
