//! The dataplane worker: what moves packets, apart from the control plane.
//!
//! A [`Worker`] owns an io_uring with its buffer pool, the per-packet path of the core (a
//! [`Forwarder`] over an immutable [`connectopus_core::forwarder::ForwardingSnapshot`]), the
//! offload state (TUN super-packets being merged, DTLS records being batched for GSO) and its
//! counters. It never calls the [`Node`]: the control plane installs each new snapshot the node
//! publishes and takes the worker's [`connectopus_core::forwarder::DataplaneReport`] back once
//! a turn ([`Daemon::absorb_worker`]), so per packet nothing is locked or shared.
//!
//! The main loop has a worker of its own, next to the control plane: with one worker it is
//! worker 0; with worker threads (`workers`) it is the slow path only (links before their
//! session, the DTLS associations' handshakes, the node's other TUN devices, what the threads
//! hand over), and workers 0.. run on threads of their own, each with a queue of the node's
//! TUN device, receiving (or, for TCP/TLS, owning) the established links the main loop gives
//! them. See docs/architecture.md, "Threads" and "The control plane on its own thread".

use connectopus_core::forwarder::Forwarder;
use connectopus_core::icmp::IcmpRateLimiter;
use connectopus_core::node::Forwarded;
use connectopus_offload::{GsoType, VNET_HDR_LEN, VnetHeader};
use std::os::fd::RawFd;
use uring_io::BufId;

use super::*;

/// One dataplane worker. See the module documentation.
pub(super) struct Worker {
    pub(super) io: PacketIo,
    /// The core's per-packet path and the snapshot it forwards by.
    pub(super) forwarder: Forwarder,
    /// What the dataplane offloads (TUN super-packets, UDP GSO/GRO), and why not.
    pub(super) offloads: datapath::Offloads,
    /// Received TCP segments being merged into super-packets for the TUN devices.
    pub(super) coalescing: datapath::TunCoalescing,
    /// Records for DTLS links sealed into GSO batches, sent when the turn ends.
    pub(super) dtls_batches: dtls_batch::DtlsBatches,
    pub(super) offload_counters: datapath::OffloadCounters,
    pub(super) completions: Vec<Completion>,
    pub(super) scratch: Vec<u8>,
    pub(super) scratch_out: Vec<u8>,
    pub(super) ranges: Vec<Range<usize>>,
    /// When the pool next gives idle buffers back ([`Worker::trim_if_due`]).
    pub(super) trim_at: Instant,
    /// Reads from its TUN queues so far.
    pub(super) tun_reads: u64,
    /// DTLS records opened on this worker so far.
    pub(super) records_opened: u64,
    /// Plaintext udp data datagrams received on the main loop's sockets.
    pub(super) datagrams_received: u64,
    /// TCP links whose read or write waits for buffers, in the order they began to wait
    /// ([`Daemon::resume_tcp_io`]).
    pub(super) tcp_waiting: Vec<LinkId>,
    /// Reads from the streams of the TCP/TLS links it owns so far.
    pub(super) tcp_reads: u64,
}

/// The calling thread's id (Linux `gettid`), which `status` shows for each worker and the
/// control plane.
pub(super) fn thread_id() -> u64 {
    // SAFETY: gettid takes no arguments, touches no memory and cannot fail.
    let tid = unsafe { libc::gettid() };
    u64::try_from(tid).unwrap_or(0)
}

/// The free buffers a TCP read leaves in the pool: a read starts only while more than a
/// quarter of the pool is free. TCP links read into buffers taken from the pool (not from the
/// kernel's provided-buffer ring, which the working set bounds), and what they read becomes
/// TUN writes and sends that hold buffers until they complete; under CPU load io_uring runs
/// TUN writes late, and without a reserve the reads once took 248 of 256 buffers. Past the
/// reserve the TCP socket buffers and the peer's window hold the rest. Other traffic cannot
/// keep the pool that low (its receives stop at the working set), so a waiting link reads
/// again once the writes complete.
pub(super) fn tcp_read_reserve(capacity: usize) -> usize {
    capacity / 4
}

/// How often a worker's pool releases the buffers that stayed idle since the last time and
/// re-sizes its posted receive buffers (see `uring_io::PacketIo::trim`).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// `SO_REUSEPORT` for `status`: on when there are worker threads (the DTLS link sockets have
/// it, and each thread receives its links on sockets of its own).
fn reuse_port(dataplane: &workers::Dataplane) -> String {
    match &dataplane.multi_queue {
        Ok(_) if dataplane.has_threads() => "on".to_owned(),
        Ok(_) => "off: one dataplane worker".to_owned(),
        Err(why) => format!("off: {why}"),
    }
}

/// A duration in whole microseconds, for `status`.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a TUN read holds ([`Worker::read_tun`]).
#[derive(Debug, Clone)]
pub(super) struct TunRead {
    /// The packet (behind the virtio-net header, if the device has them).
    pub(super) packet: Range<usize>,
    /// A super-packet's header; `None` for one complete packet.
    pub(super) header: Option<VnetHeader>,
}

/// The datagrams of one receive, as ranges of its buffer: a GRO batch of `segment_size` bytes
/// each (the last maybe shorter), or the one datagram ([`Worker::gro_pieces`]).
#[derive(Debug, Clone)]
pub(super) struct GroPieces {
    at: usize,
    end: usize,
    step: usize,
}

impl GroPieces {
    fn new(range: Range<usize>, segment_size: Option<u16>) -> Self {
        let step = segment_size
            .map(usize::from)
            .filter(|s| *s > 0)
            .unwrap_or(range.len().max(1));
        Self {
            at: range.start,
            end: range.end,
            step,
        }
    }
}

impl Iterator for GroPieces {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.at >= self.end {
            return None;
        }
        let piece = self.at..(self.at + self.step).min(self.end);
        self.at = piece.end;
        Some(piece)
    }
}

impl Worker {
    /// The datagrams of the receive at `range` (see [`GroPieces`]); counts a batch of more
    /// than one.
    pub(super) fn gro_pieces(
        &mut self,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) -> GroPieces {
        let pieces = GroPieces::new(range, segment_size);
        if pieces.end.saturating_sub(pieces.at) > pieces.step {
            self.offload_counters.udp_gro_batches += 1;
        }
        pieces
    }

    /// What the TUN read at `buf[range]` holds: from a device with virtio-net headers
    /// (`vnet`), one packet whose checksum the kernel left to an offload, completed now, or a
    /// super-packet behind its header (counted); from one without, the packet as read. `None`
    /// (counted as dropped, malformed) for a header that does not parse or a checksum that
    /// cannot be completed; the buffer stays the caller's.
    pub(super) fn read_tun(
        &mut self,
        buf: &BufId,
        range: Range<usize>,
        vnet: bool,
    ) -> Option<TunRead> {
        if !vnet {
            return Some(TunRead {
                packet: range,
                header: None,
            });
        }
        let header = VnetHeader::parse(self.io.buf(buf).get(range.clone()).unwrap_or_default());
        let packet = range.start + VNET_HDR_LEN..range.end;
        let read = match header {
            Ok(h) if h.gso_type == GsoType::None => {
                let completed = self
                    .io
                    .buf_mut(buf)
                    .get_mut(packet.clone())
                    .map(|p| connectopus_offload::complete_checksum(&h, p));
                matches!(completed, Some(Ok(()))).then_some(TunRead {
                    packet,
                    header: None,
                })
            }
            Ok(h) => {
                self.offload_counters.tun_super_packets_read += 1;
                Some(TunRead {
                    packet,
                    header: Some(h),
                })
            }
            Err(_) => None,
        };
        if read.is_none() {
            self.forwarder.count_drop(DropReason::Malformed);
        }
        read
    }

    /// A pool buffer holding a copy of `bytes` after the headroom (where a receive would have
    /// left them), and their range in it; `None`, counted as dropped, when no buffer is free
    /// or `bytes` do not fit one.
    pub(super) fn copy_to_buf(&mut self, bytes: &[u8]) -> Option<(BufId, Range<usize>)> {
        let Some(buf) = self.io.alloc() else {
            self.forwarder.count_drop(DropReason::LinkCongested);
            return None;
        };
        let range = self.io.pool().headroom()..self.io.pool().headroom() + bytes.len();
        let Some(slot) = self.io.buf_mut(&buf).get_mut(range.clone()) else {
            self.io.free(buf);
            self.forwarder.count_drop(DropReason::TooBig);
            return None;
        };
        slot.copy_from_slice(bytes);
        Some((buf, range))
    }

    /// What the main loop's worker runs on, for `status`: worker 0 with one worker, else the
    /// control plane's slow path.
    pub(super) fn report(
        &self,
        tuns: &tun_devs::TunSet,
        dataplane: &workers::Dataplane,
        tcp_links: usize,
    ) -> control::WorkerReport {
        control::WorkerReport {
            index: 0,
            thread: "main loop".to_owned(),
            thread_id: thread_id(),
            io_uring: match self.io.fallback_reason() {
                None => "on".to_owned(),
                Some(why) => format!("off: {why}"),
            },
            tun_multi_queue: match &dataplane.multi_queue {
                Ok(_) => "on".to_owned(),
                Err(why) => format!("off: {why}"),
            },
            tun_offload: tuns
                .iter()
                .map(|t| (t.name().to_owned(), t.offload().describe()))
                .collect(),
            udp_gso: datapath::Offloads::describe(&self.offloads.udp_gso),
            udp_gro: datapath::Offloads::describe(&self.offloads.udp_gro),
            udp_reuseport: reuse_port(dataplane),
            state: "running".to_owned(),
            tun_reads: self.tun_reads,
            handed_to_main: 0,
            records_opened: self.records_opened,
            datagrams_received: self.datagrams_received,
            receive_links: dataplane.receive_load(0) as u64,
            received_for_main: 0,
            tcp_links: tcp_links as u64,
            tcp_reads: self.tcp_reads,
            buffers_peak: self.io.usage().peak_in_use as u64,
            buffers_touched: self.io.usage().touched as u64,
            idle_wake_us: micros(self.io.waiting().idle_wake),
            busy_poll_us: micros(self.io.waiting().busy_poll),
            cpu: "not pinned".to_owned(),
        }
    }

    pub(super) fn new(io: PacketIo, offloads: datapath::Offloads, icmp: IcmpRateLimiter) -> Self {
        Self {
            io,
            forwarder: Forwarder::new(icmp),
            offloads,
            coalescing: datapath::TunCoalescing::default(),
            dtls_batches: dtls_batch::DtlsBatches::default(),
            offload_counters: datapath::OffloadCounters::default(),
            completions: Vec::with_capacity(uring_io::BATCH_SIZE * 4),
            scratch: Vec::with_capacity(u16::MAX as usize),
            scratch_out: Vec::with_capacity(u16::MAX as usize + 64),
            ranges: Vec::new(),
            trim_at: Instant::now() + TRIM_INTERVAL,
            tun_reads: 0,
            records_opened: 0,
            datagrams_received: 0,
            tcp_waiting: Vec::new(),
            tcp_reads: 0,
        }
    }

    /// Writes `buf[range]` to the TUN device (or queue) `fd`; [`Worker::tun_written`] takes
    /// the completion.
    pub(super) fn write_tun(&mut self, fd: RawFd, buf: BufId, range: Range<usize>) {
        self.io.write(fd, Token(TOKEN_TUN_WRITE), buf, range);
    }

    /// A TUN write completed: its buffer goes back.
    pub(super) fn tun_written(&mut self, completion: Completion) {
        if let Some(buf) = completion.buf {
            self.io.free(buf);
        }
    }

    /// Starts a write to the stream `fd` of as much of the front of `queued` as one pool
    /// buffer holds, completing with `token`. With no free buffer, `link` waits for buffers
    /// instead ([`Worker::wait_for_buffers`]) and this returns `false`. TCP/TLS links on the
    /// main loop and on worker threads write through this.
    pub(super) fn start_stream_write(
        &mut self,
        link: LinkId,
        fd: RawFd,
        queued: &VecDeque<u8>,
        token: Token,
    ) -> bool {
        let Some(buf) = self.io.alloc() else {
            self.wait_for_buffers(link);
            return false;
        };
        let n = queued.len().min(self.io.pool().buf_size());
        let out = &mut self.io.buf_mut(&buf)[..n];
        let (front, back) = queued.as_slices();
        let from_front = front.len().min(n);
        out[..from_front].copy_from_slice(&front[..from_front]);
        out[from_front..].copy_from_slice(&back[..n - from_front]);
        self.io.write(fd, token, buf, 0..n);
        true
    }

    /// Starts a read of the stream `fd` into a pool buffer, completing with `token`, if more
    /// than the reserve is free ([`tcp_read_reserve`]); otherwise `link` waits for buffers
    /// (counted once in `tcp_reads_deferred`) and this returns `false`.
    pub(super) fn start_stream_read(&mut self, link: LinkId, fd: RawFd, token: Token) -> bool {
        let pool = self.io.pool();
        let reserved = pool.n_free() <= tcp_read_reserve(pool.capacity());
        let Some(buf) = (!reserved).then(|| self.io.alloc()).flatten() else {
            if self.wait_for_buffers(link) {
                self.offload_counters.tcp_reads_deferred += 1;
            }
            return false;
        };
        self.io.read(fd, token, buf);
        true
    }

    /// Puts `link` on the list of TCP links waiting for buffers, once; says whether it was
    /// not on it yet.
    pub(super) fn wait_for_buffers(&mut self, link: LinkId) -> bool {
        let new = !self.tcp_waiting.contains(&link);
        if new {
            self.tcp_waiting.push(link);
        }
        new
    }

    /// Gives the pool's idle memory back once per [`TRIM_INTERVAL`]; call it once a turn (the
    /// loop wakes at least once a second).
    /// Whether it trimmed now: the caller then shrinks its TCP links' queues too.
    pub(super) fn trim_if_due(&mut self, now: Instant) -> bool {
        if now < self.trim_at {
            return false;
        }
        self.trim_at = now + TRIM_INTERVAL;
        self.io.trim();
        true
    }
}

impl Daemon {
    /// What the main loop's worker runs on, for `status`.
    fn main_loop_report(&self) -> control::WorkerReport {
        let on_main = self
            .links
            .values()
            .filter(|l| matches!(l.transport, Transport::Tcp(_)))
            .count();
        self.worker.report(&self.tuns, &self.dataplane, on_main)
    }

    /// The control plane's own report when the workers are threads (its slow path: links no
    /// worker receives, TCP links before their session, the node's other TUN devices, what
    /// the workers hand over); `None` with one worker, which is the main loop itself.
    pub(super) fn control_plane_report(&self) -> Option<control::WorkerReport> {
        if !self.dataplane.has_threads() {
            return None;
        }
        let mut report = self.main_loop_report();
        report.thread = "main loop (control plane)".to_owned();
        Some(report)
    }

    /// What every worker runs on, for `status`: worker 0 on the main loop with one worker;
    /// else every worker is a thread, numbered from 0.
    pub(super) fn worker_reports(&self) -> Vec<control::WorkerReport> {
        if !self.dataplane.has_threads() {
            return vec![self.main_loop_report()];
        }
        let mut reports = Vec::new();
        let own_tun = self.tuns.get(0);
        for index in 1..=self.dataplane.threads() {
            let Some(status) = self.dataplane.status(index) else {
                continue;
            };
            let label = workers::Dataplane::label(index);
            reports.push(control::WorkerReport {
                index: label,
                thread: format!("worker-{label}"),
                thread_id: status.thread_id,
                io_uring: status.io_uring,
                tun_multi_queue: "on".to_owned(),
                tun_offload: own_tun
                    .map(|t| (t.name().to_owned(), t.offload().describe()))
                    .into_iter()
                    .collect(),
                udp_gso: status.udp_gso,
                udp_gro: datapath::Offloads::describe(&self.worker.offloads.udp_gro),
                udp_reuseport: reuse_port(&self.dataplane),
                tun_reads: status.tun_reads,
                handed_to_main: status.handed_to_main,
                records_opened: status.records_opened,
                datagrams_received: status.datagrams_received,
                receive_links: status.receive_links,
                received_for_main: status.received_for_main,
                tcp_links: status.tcp_links,
                tcp_reads: status.tcp_reads,
                buffers_peak: status.buffers_peak,
                buffers_touched: status.buffers_touched,
                idle_wake_us: micros(status.waiting.idle_wake),
                busy_poll_us: micros(status.waiting.busy_poll),
                cpu: status.cpu,
                state: match status.stopped {
                    None => "running".to_owned(),
                    Some(why) => format!("stopped: {why}"),
                },
            });
        }
        reports
    }

    /// Gives the worker the node's newest forwarding snapshot, if it does not have it yet
    /// (one pointer comparison): a session established by one completion carries the data of
    /// the next.
    pub(super) fn sync_forwarding(&mut self) {
        let latest = self.node.forwarding_snapshot();
        if !Arc::ptr_eq(latest, self.worker.forwarder.snapshot()) {
            self.worker.forwarder.install(latest.clone());
            let latest = latest.clone();
            self.dataplane.publish_snapshot(&latest);
        }
    }

    /// Hands what the worker counted to the node (link traffic keeps sessions alive) and moves
    /// the ICMPv6 errors its forwarder built.
    pub(super) fn absorb_worker(&mut self) {
        self.node
            .absorb_dataplane(self.worker.forwarder.report_mut());
        while let Some((forwarded, packet)) = self.worker.forwarder.poll_originated() {
            match forwarded {
                Forwarded::Deliver => self.write_tun(&packet),
                Forwarded::Send(link) => self.send_packet(link, &packet),
                Forwarded::Done => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GRO batch is cut into datagrams of the segment size, the last one shorter; without a
    /// segment size (or with 0) the receive is one datagram.
    #[test]
    fn gro_pieces_cut_a_batch_at_the_segment_size() {
        let pieces: Vec<_> = GroPieces::new(10..17, Some(3)).collect();
        assert_eq!(pieces, vec![10..13, 13..16, 16..17]);
        assert_eq!(GroPieces::new(10..16, Some(3)).count(), 2);
        assert_eq!(GroPieces::new(4..9, None).collect::<Vec<_>>(), vec![4..9]);
        assert_eq!(
            GroPieces::new(4..9, Some(0)).collect::<Vec<_>>(),
            vec![4..9]
        );
        assert_eq!(
            GroPieces::new(4..9, Some(1500)).collect::<Vec<_>>(),
            vec![4..9]
        );
        assert_eq!(GroPieces::new(4..4, Some(3)).count(), 0);
    }
}
