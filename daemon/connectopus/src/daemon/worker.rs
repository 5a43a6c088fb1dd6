//! The dataplane worker: what moves packets, apart from the control plane.
//!
//! A [`Worker`] owns an io_uring with its buffer pool, the per-packet path of the core (a
//! [`Forwarder`] over an immutable [`connectopus_core::forwarder::ForwardingSnapshot`]), the
//! offload state (TUN super-packets being merged, DTLS records being batched for GSO) and its
//! counters. It never calls the [`Node`]: the control plane installs each new snapshot the node
//! publishes and takes the worker's [`connectopus_core::forwarder::DataplaneReport`] back once
//! a turn ([`Daemon::absorb_worker`]), so per packet nothing is locked or shared.
//!
//! Today the node runs one worker on the main loop's thread, next to the control plane; the
//! links (TCP streams, DTLS associations) and sockets still belong to the loop. See
//! docs/architecture.md, "Threads", for the plan to run one worker per core.

use connectopus_core::forwarder::Forwarder;
use connectopus_core::icmp::IcmpRateLimiter;
use connectopus_core::node::Forwarded;

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
}

/// How often a worker's pool releases the buffers that stayed idle since the last time and
/// re-sizes its posted receive buffers (see `uring_io::PacketIo::trim`).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Why a worker has no TUN queue and link sockets of its own.
const ONE_WORKER: &str = "off: one dataplane worker per node (several are not built yet)";

impl Worker {
    /// What this worker runs on, for `status`.
    pub(super) fn report(&self, index: usize, tuns: &tun_devs::TunSet) -> control::WorkerReport {
        control::WorkerReport {
            index,
            thread: "main loop".to_owned(),
            io_uring: match self.io.fallback_reason() {
                None => "on".to_owned(),
                Some(why) => format!("off: {why}"),
            },
            tun_multi_queue: ONE_WORKER.to_owned(),
            tun_offload: tuns
                .iter()
                .map(|t| (t.name().to_owned(), t.offload().describe()))
                .collect(),
            udp_gso: datapath::Offloads::describe(&self.offloads.udp_gso),
            udp_gro: datapath::Offloads::describe(&self.offloads.udp_gro),
            udp_reuseport: ONE_WORKER.to_owned(),
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
        }
    }

    /// Gives the pool's idle memory back once per [`TRIM_INTERVAL`]; call it once a turn (the
    /// loop wakes at least once a second).
    pub(super) fn trim_if_due(&mut self, now: Instant) {
        if now >= self.trim_at {
            self.trim_at = now + TRIM_INTERVAL;
            self.io.trim();
        }
    }
}

impl Daemon {
    /// Gives the worker the node's newest forwarding snapshot, if it does not have it yet
    /// (one pointer comparison): a session established by one completion carries the data of
    /// the next.
    pub(super) fn sync_forwarding(&mut self) {
        let latest = self.node.forwarding_snapshot();
        if !Arc::ptr_eq(latest, self.worker.forwarder.snapshot()) {
            self.worker.forwarder.install(latest.clone());
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
