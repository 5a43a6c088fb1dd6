//! The packet path of the main loop: packets from the TUN device to links, packets from links
//! to the TUN device or on to other links, and the writes to the TUN device.
//!
//! With offloads on (see [`crate::tun`]), a TUN read may be a TCP or UDP super-packet of up to
//! 64 KiB behind a virtio-net header. It is routed once, by its first header, and cut into
//! link-MTU segments only where the link needs it: for a DTLS link straight into the record
//! slots of one send buffer, sealed in place and sent with one UDP GSO `sendmsg`
//! ([`Daemon::seal_segments`]). On the way back, the TCP segments opened from one UDP GRO
//! receive are merged into one super-packet per flow ([`TunCoalescing`]) and written with one
//! TUN write when the loop's turn ends. Without offloads every read and write is one packet.

use connectopus_core::node::Forwarded;
use connectopus_offload::{Append, Coalescer, Segments, VNET_HDR_LEN, VnetHeader};
use uring_io::BufId;

use super::worker::TunRead;
use super::*;

/// At most this many super-packets are merged at once (one per flow); a new flow beyond it
/// writes the oldest.
pub(super) const MAX_OPEN_SUPER_PACKETS: usize = 8;

/// What the dataplane offloads, and why something is off.
#[derive(Debug, Clone)]
pub(super) struct Offloads {
    /// The operator allows offloads (no `CONNECTOPUS_DISABLE_OFFLOAD=1`).
    pub(super) wanted: bool,
    /// UDP GSO on DTLS sends: `Ok` while on, else why it is off.
    pub(super) udp_gso: Result<(), String>,
    /// UDP GRO on DTLS sockets: `Ok` while every socket took it, else why not.
    pub(super) udp_gro: Result<(), String>,
}

impl Offloads {
    pub(super) fn new(wanted: bool) -> Self {
        let off = || Err(format!("disabled by {}=1", crate::tun::DISABLE_OFFLOAD_ENV));
        Self {
            wanted,
            udp_gso: if wanted { Ok(()) } else { off() },
            udp_gro: if wanted { Ok(()) } else { off() },
        }
    }

    /// Describes a state for `status`.
    pub(super) fn describe(state: &Result<(), String>) -> String {
        match state {
            Ok(()) => "on".to_owned(),
            Err(why) => format!("off: {why}"),
        }
    }
}

/// What the offload paths did, for `status` and for tests that must see them used.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct OffloadCounters {
    /// TUN reads that held a TCP or UDP super-packet.
    pub(super) tun_super_packets_read: u64,
    /// TUN writes that held a super-packet merged from two or more segments.
    pub(super) tun_super_packets_written: u64,
    /// UDP sends that carried two or more DTLS records (GSO).
    pub(super) udp_gso_sends: u64,
    /// UDP receives that carried two or more DTLS records (GRO).
    pub(super) udp_gro_batches: u64,
    /// UDP sends the kernel refused (their datagrams are lost).
    pub(super) udp_send_errors: u64,
    /// Times a TCP link began to wait for a read: too few free buffers, or other links
    /// already waiting (retried at the end of each turn, `Daemon::resume_tcp_io`).
    pub(super) tcp_reads_deferred: u64,
}

impl OffloadCounters {
    /// Adds another worker's counts.
    pub(super) fn add(&mut self, other: &Self) {
        self.tun_super_packets_read += other.tun_super_packets_read;
        self.tun_super_packets_written += other.tun_super_packets_written;
        self.udp_gso_sends += other.udp_gso_sends;
        self.udp_gro_batches += other.udp_gro_batches;
        self.udp_send_errors += other.udp_send_errors;
        self.tcp_reads_deferred += other.tcp_reads_deferred;
    }

    /// Adds the counters to a status counter map.
    pub(super) fn report(&self, map: &mut BTreeMap<String, u64>) {
        map.insert(
            "tun_super_packets_read".to_owned(),
            self.tun_super_packets_read,
        );
        map.insert(
            "tun_super_packets_written".to_owned(),
            self.tun_super_packets_written,
        );
        map.insert("udp_gso_sends".to_owned(), self.udp_gso_sends);
        map.insert("udp_gro_batches".to_owned(), self.udp_gro_batches);
        map.insert("udp_send_errors".to_owned(), self.udp_send_errors);
        map.insert("tcp_reads_deferred".to_owned(), self.tcp_reads_deferred);
    }
}

/// The most 64 KiB buffers a worker keeps posted for receives (TUN reads, UDP GRO batches): a
/// turn takes at most this many from the kernel, the rest waits in the TUN queue and the
/// socket buffers. 16 (1 MiB) carried the same 100 MB transfers as 64 did, with half the
/// buffers in use at the peak (docs/performance.md, "Memory: the 3-node line with eBPF").
pub(super) const RX_BUFFERS: usize = 16;

/// The most 64 KiB buffers a worker has in use (posted, being sealed or merged, in flight)
/// before its receives get no more: back-pressure, so that a burst the sends cannot drain
/// stays in the kernel's queues instead of the pool (`uring_io::Config::working_set`). What
/// one turn's receives seal into send buffers comes on top: a sending worker peaks near 32 +
/// [`RX_BUFFERS`] + a few (3.5 MiB).
pub(super) const WORKING_SET: usize = 32;

/// `CONNECTOPUS_TEST_POOL_BUFFERS=<n>` (tests only, at least 24): each worker's pool of 64 KiB
/// buffers holds `n` instead of 256, so that tests reach the pool's limits with little traffic.
pub(crate) const TEST_POOL_BUFFERS_ENV: &str = "CONNECTOPUS_TEST_POOL_BUFFERS";

fn test_pool_buffers() -> Option<usize> {
    let n: usize = std::env::var(TEST_POOL_BUFFERS_ENV).ok()?.parse().ok()?;
    Some(n.max(24))
}

/// How long a dataplane thread sleeps at most for 20 ms after a receive, where that pays
/// (`uring_io::Config::idle_wake`; the node measures at start whether it does,
/// `crate::wake_cost`; `CONNECTOPUS_IDLE_WAKE_US` overrides it, 0 turns it off). On virtual
/// machines whose idle vCPUs halt, it keeps the vCPUs warm between the packets of sparse
/// traffic, so that the first wake-up of a round trip does not wait ~150 µs for the
/// hypervisor: an idle DTLS round trip there took 43 µs at p50 instead of 205
/// (docs/performance.md, "An idle round trip, hop by hop").
pub(super) const IDLE_WAKE: std::time::Duration = std::time::Duration::from_micros(200);

/// The buffer pool the dataplane needs: 64 KiB buffers, touched on demand, when TUN
/// super-packets and UDP GRO batches can arrive; the small populated default otherwise.
/// `idle_wake`: what the start-up measurement chose (`crate::wake_cost`).
pub(super) fn io_config(offload: bool, idle_wake: std::time::Duration) -> uring_io::Config {
    if !offload {
        return uring_io::Config {
            idle_wake,
            ..uring_io::Config::default()
        };
    }
    uring_io::Config {
        idle_wake,
        buffers: test_pool_buffers().unwrap_or(256),
        // A 64 KiB TUN super-packet with its virtio-net header, or a 64 KiB GRO batch with the
        // io_uring receive header in front of it.
        buffer_size: 64 + (64 << 10) + 256 + 64,
        headroom: 64,
        tailroom: 64,
        rx_buffers: RX_BUFFERS,
        working_set: WORKING_SET,
        fixed_buffers: false,
        ..uring_io::Config::default()
    }
}

/// TCP segments received from links, being merged into one super-packet per flow for the TUN.
#[derive(Debug, Default)]
pub(super) struct TunCoalescing {
    pub(super) open: Vec<OpenSuperPacket>,
}

#[derive(Debug)]
pub(super) struct OpenSuperPacket {
    /// Index of the TUN device in `Daemon::tuns` (0 on a worker thread: its own queue).
    pub(super) tun: usize,
    /// Holds `[virtio-net header | packet]` from the pool's headroom on.
    pub(super) buf: BufId,
    pub(super) coalescer: Coalescer,
}

/// Where a packet to deliver lies: in a pool buffer (opened in place from a datagram), or in
/// memory of its own (from the core or a TCP link).
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Pool(&'a BufId, usize, usize),
    Bytes(&'a [u8]),
}

/// Calls `f` with the packet of `src` and the writable buffer `dst`.
fn with_packet<R>(
    io: &mut PacketIo,
    src: Source<'_>,
    dst: &BufId,
    f: impl FnOnce(&[u8], &mut [u8]) -> R,
) -> R {
    match src {
        Source::Pool(buf, start, end) => {
            let (from, to) = io.buf_pair(buf, dst);
            f(from.get(start..end).unwrap_or_default(), to)
        }
        Source::Bytes(packet) => f(packet, io.buf_mut(dst)),
    }
}

impl Daemon {
    pub(super) fn on_tun_packet(&mut self, tun: usize, completion: Completion) {
        let armed = completion.armed;
        if self.tuns.is_removed(tun) {
            // A removed device: its fd may close once the receive is no longer armed.
            if let Some(buf) = completion.buf {
                self.worker.io.free(buf);
            }
            if !armed {
                self.tuns.reap(tun);
            }
            return;
        }
        let range = completion.data_range();
        if let Some(buf) = completion.buf {
            match range {
                Some(range) => {
                    self.worker.tun_reads += 1;
                    self.forward_from_tun(tun, buf, range);
                }
                None => self.worker.io.free(buf),
            }
        }
        if !armed
            && self.stopping.is_none()
            && let Some(fd) = self.tuns.get(tun).map(TunDevice::fd)
            && let Err(error) = self
                .worker
                .io
                .recv_packets(fd, Token(TOKEN_TUN_RECV | tun as u64))
        {
            tracing::error!(%error, "re-arming TUN receive failed");
        }
    }

    /// Routes what the TUN device `tun` handed over in `buf[range]`; takes ownership of `buf`.
    pub(super) fn forward_from_tun(&mut self, tun: usize, buf: BufId, range: Range<usize>) {
        if self.hairpin(tun, &buf, range.clone()) {
            self.worker.io.free(buf);
            return;
        }
        let vnet = self.tuns.get(tun).is_some_and(|t| t.offload().vnet_hdr());
        match self.worker.read_tun(&buf, range, vnet) {
            Some(TunRead {
                packet,
                header: None,
            }) => self.forward_tun_packet(buf, packet),
            Some(TunRead {
                packet,
                header: Some(h),
            }) => self.forward_tun_super_packet(buf, packet, h),
            None => self.worker.io.free(buf),
        }
    }

    /// Routes one complete packet from the TUN device; takes ownership of `buf`.
    fn forward_tun_packet(&mut self, buf: BufId, range: Range<usize>) {
        match self.forward(&buf, range.clone(), Ingress::Tun, None) {
            // Zero copy: a plaintext datagram is the packet where it lies.
            Forwarded::Send(link) if self.is_plain_udp(link) => {
                return self.send_plain_in_place(link, buf, range);
            }
            // Zero copy: seal the packet into a record where it lies and send it.
            Forwarded::Send(link) if self.is_dtls(link) => {
                return self.seal_and_send(link, buf, range.start, range.len());
            }
            // The TCP codec frames into its own byte queue.
            Forwarded::Send(link) => self.send_from_buf(link, &buf, range),
            // The kernel delivers the host's packets to its own addresses itself.
            Forwarded::Deliver => self.worker.forwarder.count_drop(DropReason::Loop),
            Forwarded::Done => {}
        }
        self.worker.io.free(buf);
    }

    /// The core's per-packet path ([`connectopus_core::forwarder::Forwarder::forward_packet`], the
    /// worker's own) on the packet at `buf[range]`.
    pub(super) fn forward(
        &mut self,
        buf: &BufId,
        range: Range<usize>,
        ingress: Ingress,
        segment_len: Option<usize>,
    ) -> Forwarded {
        let now = self.now();
        match self.worker.io.buf_mut(buf).get_mut(range) {
            Some(packet) => self
                .worker
                .forwarder
                .forward_packet(now, packet, ingress, segment_len),
            None => {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                Forwarded::Done
            }
        }
    }

    /// Routes a TCP or UDP super-packet from the TUN device by its first header, then cuts it
    /// into segments for the link; takes ownership of `buf`.
    fn forward_tun_super_packet(&mut self, buf: BufId, range: Range<usize>, header: VnetHeader) {
        let segment_len = self
            .worker
            .io
            .buf(&buf)
            .get(range.clone())
            .and_then(|p| Segments::new(&header, p).ok())
            .map(|s| s.max_segment_len());
        let Some(segment_len) = segment_len else {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::Malformed);
            return;
        };
        match self.forward(&buf, range.clone(), Ingress::Tun, Some(segment_len)) {
            Forwarded::Send(link) if self.is_plain_udp(link) => {
                return self.send_plain_segments(link, buf, range, header);
            }
            Forwarded::Send(link) if self.is_dtls(link) => {
                return self.seal_segments(link, buf, range, header);
            }
            // A TCP link: each segment one frame, all of them encrypted together.
            Forwarded::Send(link) => self.send_segments_tcp(link, &buf, range, header),
            Forwarded::Deliver => self.worker.forwarder.count_drop(DropReason::Loop),
            Forwarded::Done => {}
        }
        self.worker.io.free(buf);
    }

    /// Frames every segment of the super-packet at `buf[range]` as one message on the TCP
    /// `link`, cut straight into the codec's buffer, and encrypts them together (full-size
    /// TLS records); `buf` stays the caller's.
    pub(super) fn send_segments_tcp(
        &mut self,
        link: LinkId,
        buf: &BufId,
        range: Range<usize>,
        header: VnetHeader,
    ) {
        let Daemon { worker, links, .. } = self;
        let Worker {
            io,
            forwarder,
            scratch_out,
            ..
        } = worker;
        let tcp = match links.get_mut(&link).map(|l| &mut l.transport) {
            Some(Transport::Tcp(tcp)) => tcp,
            Some(Transport::TcpOnWorker { worker }) => {
                // Its owner cuts it into the byte stream (a copy through its channel).
                let (index, packet) = (*worker, io.buf(buf).get(range).unwrap_or_default());
                let packet = packet.to_vec();
                return self.send_to_tcp_owner(link, index, packet, Some(header));
            }
            _ => {
                forwarder.count_drop(DropReason::LinkDown);
                return;
            }
        };
        if tcp.tx.len() > MAX_TCP_BACKLOG {
            forwarder.count_drop(DropReason::LinkCongested);
            return;
        }
        let Some(segments) = io
            .buf(buf)
            .get(range)
            .and_then(|p| Segments::new(&header, p).ok())
        else {
            forwarder.count_drop(DropReason::Malformed);
            return;
        };
        scratch_out.clear();
        let max_len = segments.max_segment_len();
        for i in 0..segments.count() {
            let queued =
                tcp.codec
                    .queue_with(max_len, |slot| segments.write(i, slot).ok(), scratch_out);
            if !matches!(queued, Ok(true)) {
                forwarder.count_drop(DropReason::Malformed);
                break;
            }
        }
        // Plain TCP: the frames are in `scratch_out`; TLS: they were staged in the codec and
        // its records go straight into the send queue.
        if let Err(error) = tcp.codec.flush(&mut tcp.tx) {
            tracing::debug!(%link, %error, "dropping segments");
            return;
        }
        tcp.tx.extend(scratch_out.iter());
        self.pump_tcp_write(link);
    }

    pub(super) fn is_dtls(&self, link: LinkId) -> bool {
        matches!(
            self.links.get(&link).map(|l| &l.transport),
            Some(Transport::Dtls(_))
        )
    }

    /// Routes one IPv6 packet that arrived on `from`.
    pub(super) fn route_link_packet(&mut self, from: LinkId, packet: &mut [u8]) {
        let now = self.now();
        match self
            .node
            .forward_packet(now, packet, Ingress::Link(from), None)
        {
            Forwarded::Deliver => self.write_tun(packet),
            Forwarded::Send(link) => self.send_packet(link, packet),
            Forwarded::Done => {}
        }
    }

    /// Routes one IPv6 packet that was opened in place at `buf[range]` from a link, without
    /// copying it first; `buf` stays the caller's.
    pub(super) fn route_link_packet_in_buf(
        &mut self,
        from: LinkId,
        buf: &BufId,
        range: Range<usize>,
    ) {
        match self.forward(buf, range.clone(), Ingress::Link(from), None) {
            Forwarded::Deliver => self.deliver(Source::Pool(buf, range.start, range.end)),
            Forwarded::Send(link) => self.send_from_buf(link, buf, range),
            Forwarded::Done => {}
        }
    }

    /// Sends the packet at `buf[range]` on `link`, copying it once (into the link's batch of
    /// DTLS records, or the TCP link's byte queue); `buf` stays the caller's.
    fn send_from_buf(&mut self, link: LinkId, buf: &BufId, range: Range<usize>) {
        if !self.is_dtls(link) && !self.is_plain_udp(link) {
            let mut message = std::mem::take(&mut self.worker.scratch);
            message.clear();
            message.extend_from_slice(self.worker.io.buf(buf).get(range).unwrap_or_default());
            self.send_packet(link, &message);
            self.worker.scratch = message;
            return;
        }
        self.batch_record(link, buf, range);
    }

    /// Writes a packet to the TUN device that holds its destination (the node's own device for
    /// anything else).
    pub(super) fn write_tun(&mut self, packet: &[u8]) {
        self.deliver(Source::Bytes(packet));
    }

    /// Delivers the packet at `buf[start..end]` to its TUN device; `buf` stays the caller's.
    pub(super) fn deliver_pool(&mut self, buf: &BufId, start: usize, end: usize) {
        self.deliver(Source::Pool(buf, start, end));
    }

    /// Picks the TUN device for a packet: the one holding its destination, else the node's own.
    pub(super) fn tun_for(&self, packet: &[u8]) -> Option<usize> {
        if let Some(slot) = self.namespace_tun4(packet) {
            return Some(slot);
        }
        let destination = forward::addresses(packet).map(|(_, dst)| dst);
        let mut devices = self.tuns.indexed();
        let first = devices.next()?;
        std::iter::once(first)
            .chain(devices)
            .find(|(_, t)| Some(t.address()) == destination)
            .map_or(Some(first.0), |(i, _)| Some(i))
    }

    /// Delivers a packet to its TUN device: merged into an open super-packet of its flow when
    /// the device takes them, else written on its own.
    fn deliver(&mut self, src: Source<'_>) {
        let tun = match src {
            Source::Pool(buf, start, end) => {
                self.worker.io.buf(buf).get(start..end).and_then(|p| {
                    self.tun_for(p)
                        .map(|t| (t, connectopus_offload::is_coalescable(p)))
                })
            }
            Source::Bytes(p) => self
                .tun_for(p)
                .map(|t| (t, connectopus_offload::is_coalescable(p))),
        };
        let Some((tun, coalescable)) = tun else {
            self.worker.forwarder.count_drop(DropReason::NoRoute);
            return;
        };
        let vnet = self.tuns.get(tun).is_some_and(|t| t.offload().vnet_hdr());
        if vnet && coalescable && self.coalesce(tun, src) {
            return;
        }
        if vnet {
            // Keep each flow in order: what is open for this device goes first.
            self.flush_tun_writes(Some(tun));
        }
        self.write_tun_single(tun, src, vnet);
    }

    /// Merges a TCP segment into an open super-packet of its flow, or opens one; returns false
    /// when the packet must be written on its own.
    fn coalesce(&mut self, tun: usize, src: Source<'_>) -> bool {
        let headroom = self.worker.io.pool().headroom();
        let mut i = 0;
        while i < self.worker.coalescing.open.len() {
            let open = &mut self.worker.coalescing.open[i];
            if open.tun != tun {
                i += 1;
                continue;
            }
            let append = with_packet(&mut self.worker.io, src, &open.buf, |packet, out| {
                let out = out.get_mut(headroom..).unwrap_or_default();
                open.coalescer.try_append(out, packet)
            });
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
        if self.worker.coalescing.open.len() >= MAX_OPEN_SUPER_PACKETS {
            let oldest = self.worker.coalescing.open.remove(0);
            self.write_super_packet(oldest);
        }
        let Some(buf) = self.worker.io.alloc() else {
            return false;
        };
        let started = with_packet(&mut self.worker.io, src, &buf, |packet, out| {
            Coalescer::start(out.get_mut(headroom..).unwrap_or_default(), packet)
        });
        match started {
            Some(coalescer) => {
                self.worker.coalescing.open.push(OpenSuperPacket {
                    tun,
                    buf,
                    coalescer,
                });
                true
            }
            None => {
                self.worker.io.free(buf);
                false
            }
        }
    }

    /// Writes the super-packets still open: those of TUN device `only`, or all.
    pub(super) fn flush_tun_writes(&mut self, only: Option<usize>) {
        let mut i = 0;
        while i < self.worker.coalescing.open.len() {
            if only.is_some_and(|t| t != self.worker.coalescing.open[i].tun) {
                i += 1;
                continue;
            }
            let open = self.worker.coalescing.open.remove(i);
            self.write_super_packet(open);
        }
    }

    fn write_super_packet(&mut self, open: OpenSuperPacket) {
        let OpenSuperPacket {
            tun,
            buf,
            coalescer,
        } = open;
        let Some(fd) = self.tuns.get(tun).map(TunDevice::fd) else {
            self.worker.io.free(buf);
            return;
        };
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
        self.worker.write_tun(fd, buf, start..start + len);
    }

    /// Writes one complete packet to TUN device `tun` (behind an empty virtio-net header when
    /// the device has them), after what is open for it.
    pub(super) fn write_tun_packet(&mut self, tun: usize, packet: &[u8]) {
        let vnet = self.tuns.get(tun).is_some_and(|t| t.offload().vnet_hdr());
        if vnet {
            self.flush_tun_writes(Some(tun));
        }
        self.write_tun_single(tun, Source::Bytes(packet), vnet);
    }

    /// Writes one packet to TUN device `tun`, behind an empty virtio-net header when `vnet`.
    fn write_tun_single(&mut self, tun: usize, src: Source<'_>, vnet: bool) {
        let Some(fd) = self.tuns.get(tun).map(TunDevice::fd) else {
            self.worker.forwarder.count_drop(DropReason::NoRoute);
            return;
        };
        let Some(buf) = self.worker.io.alloc() else {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = self.worker.io.pool().headroom();
        let header = if vnet { VNET_HDR_LEN } else { 0 };
        let written = with_packet(&mut self.worker.io, src, &buf, |packet, out| {
            let end = start + header + packet.len();
            let slot = out.get_mut(start..end)?;
            let (vnet_header, body) = slot.split_at_mut(header);
            if vnet {
                VnetHeader::NONE.write(vnet_header).ok()?;
            }
            body.copy_from_slice(packet);
            Some(end)
        });
        match written {
            Some(end) => self.worker.write_tun(fd, buf, start..end),
            None => {
                self.worker.io.free(buf);
                self.worker.forwarder.count_drop(DropReason::Malformed);
            }
        }
    }

    /// Sends one link message (data packet or control message) on `link`.
    pub(super) fn send_packet(&mut self, link: LinkId, message: &[u8]) {
        let Some(l) = self.links.get_mut(&link) else {
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        let data = is_ip_packet(message);
        if data && l.backlog() > MAX_TCP_BACKLOG {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        }
        match &mut l.transport {
            Transport::PlainUdp(_) => self.send_plain_message(link, message),
            Transport::TcpOnWorker { worker } => {
                let index = *worker;
                self.send_to_tcp_owner(link, index, message.to_vec(), None);
            }
            Transport::Tcp(tcp) => {
                self.worker.scratch_out.clear();
                if let Err(error) = tcp
                    .codec
                    .send_message(message, &mut self.worker.scratch_out)
                {
                    tracing::debug!(%link, %error, "dropping message");
                    return;
                }
                tcp.tx.extend(self.worker.scratch_out.iter());
                if !self.close_if_tcp_queue_overflows(link) {
                    self.pump_tcp_write(link);
                }
            }
            Transport::Dtls(_) => {
                let Some((buf, range)) = self.worker.copy_to_buf(message) else {
                    return;
                };
                self.seal_and_send(link, buf, range.start, range.len());
            }
        }
    }

    /// Routes or hands to the core the link message held in `self.worker.scratch`.
    pub(super) fn handle_link_message_in_scratch(&mut self, link: LinkId) {
        let mut message = std::mem::take(&mut self.worker.scratch);
        if is_ip_packet(&message) {
            self.route_link_packet(link, &mut message);
        } else {
            let now = self.now();
            self.node.handle_link_message(now, link, &mut message);
        }
        self.worker.scratch = message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dataplane_ring_waits_as_the_node_chose() {
        // With or without offloads (the 64 KiB pool or the small default one), the node's
        // rings cap their sleeps after a receive as chosen at start.
        for offload in [false, true] {
            for chosen in [IDLE_WAKE, std::time::Duration::ZERO] {
                assert_eq!(
                    io_config(offload, chosen).idle_wake,
                    chosen,
                    "offload {offload}"
                );
            }
        }
        assert!(!IDLE_WAKE.is_zero());
        assert!(IDLE_WAKE < uring_io::IDLE_WAKE_WINDOW);
    }
}
