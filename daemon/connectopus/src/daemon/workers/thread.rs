//! A worker thread's loop: its ring, its slots, what it hands to the main loop.

use super::*;

/// One worker thread: a [`Worker`] and its TUN queue.
pub(super) struct WorkerThread {
    pub(super) index: usize,
    pub(super) worker: Worker,
    pub(super) tun: TunQueue,
    pub(super) vnet: bool,
    pub(super) shared: Arc<Shared>,
    pub(super) snapshot_seen: u64,
    pub(super) links_seen: u64,
    /// The generation of `Shared::dtls_peers` last read.
    pub(super) peers_seen: u64,
    /// The DTLS links by `(endpoint, peer)` (the CPU-local receive).
    pub(super) peers: Arc<HashMap<(usize, SocketAddr), LinkId>>,
    /// This thread's copy of the link table (its sealers cache their epoch's key).
    pub(super) links: LinkTable,
    pub(super) to_main: SyncSender<FromWorker>,
    pub(super) main: Waker,
    pub(super) channel_drops: Arc<AtomicU64>,
    pub(super) started: crate::boot_clock::BootInstant,
    pub(super) reported: Instant,
    pub(super) woke_main: bool,
    pub(super) status: Arc<Mutex<ThreadStatus>>,
    pub(super) fail_after: Option<u64>,
    pub(super) handed_to_main: u64,
    /// A copy of [`Shared::hairpin`], taken once per turn.
    pub(super) hairpin: bool,
    /// What the main loop hands this thread (links to receive, their stray datagrams).
    pub(super) from_main: Receiver<ToWorker>,
    /// The links this thread receives, by slot (the slot is in the receive's token).
    pub(super) receiving: Vec<Option<receive::Receiving>>,
    /// DTLS records opened here.
    pub(super) records_opened: u64,
    /// Received messages handed to the main loop.
    pub(super) received_for_main: u64,
    /// Records for DTLS links being batched for one GSO send each (see `transit`).
    pub(super) transit: Vec<transit::TransitBatch>,
    /// Copies of [`Shared::fastpath`] and [`Shared::tun_mtu`], taken once per turn.
    pub(super) fastpath: bool,
    pub(super) tun_mtu: u16,
    /// Plaintext udp data datagrams received here.
    pub(super) datagrams_received: u64,
    /// What the plaintext udp receive counted since the last report (`receive_plain`).
    pub(super) plain_counters: PlainUdpCounters,
    /// Closed before the thread's last look at `from_main` (see [`Door`]).
    pub(super) door: Arc<Door>,
    /// Bytes of `ToWorker::TcpSend` messages not taken yet (the main loop drops data beyond
    /// a bound).
    pub(super) tcp_queued: Arc<AtomicUsize>,
    /// The TCP/TLS links this thread reads and writes, by slot (the slot is in the tokens).
    pub(super) tcp: Vec<Option<tcp::OwnedTcp>>,
    /// The thread stops: no TCP read or write is started any more.
    pub(super) tcp_stopping: bool,
    /// Its sockets on the node's DTLS ports, by slot (the CPU-local receive).
    pub(super) ports: Vec<Option<receive_local::PortSocket>>,
    /// The DTLS links by `(endpoint, peer)`, and whether their receiving direction is shared
    /// (else the main loop still holds it).
    pub(super) shared_rx: HashMap<(usize, SocketAddr), (LinkId, bool)>,
}

impl WorkerThread {
    /// Pins the calling thread to `pin` (the CPU-local data path); returns what `status`
    /// says of it. `Dataplane::start` waits for it.
    pub(super) fn pin(index: usize, pin: Option<usize>) -> String {
        match pin.map(|cpu| (cpu, crate::cpu_local::pin_this_thread(cpu))) {
            None => "not pinned".to_owned(),
            Some((cpu, Ok(()))) => format!("CPU {cpu}"),
            Some((cpu, Err(error))) => {
                tracing::warn!(worker = Dataplane::label(index), cpu, %error, "cannot pin the worker");
                format!("not pinned: CPU {cpu}: {error}")
            }
        }
    }

    pub(super) fn run(mut self, cpu: String) {
        {
            let mut status = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            status.thread_id = super::super::worker::thread_id();
            status.cpu = cpu;
        }
        let reason = match self.serve() {
            Ok(()) => None,
            Err(error) => Some(format!("{error:#}")),
        };
        if let Some(why) = &reason {
            tracing::error!(worker = Dataplane::label(self.index), reason = %why, "dataplane worker stopped; its flows move to the other workers");
            // Stopped before its links go back: the main loop hands them on to a running
            // worker thread, never to this one (`Dataplane::least_loaded`).
            self.status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .stopped = Some(why.clone());
            // Its udp links go back at once; its TCP links between two complete reads and
            // writes.
            self.tcp_stopping = true;
            self.return_links();
            self.give_back_tcp();
        } else {
            self.flush_tcp_at_exit();
        }
        // Its links' receiving directions go back to their associations: their peers'
        // datagrams arrive at the main loop's socket once this thread's sockets close.
        self.return_links();
        // Whatever it counted still reaches the node.
        self.report(true);
        let status = self.status.clone();
        status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped = Some(reason.unwrap_or_else(|| "node stopping".to_owned()));
        // Dropping `self` closes the ring and the TUN queue's descriptor: the kernel moves
        // its flows to the others, and worker 0's queue may be read by the main loop.
        drop(self);
        status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .queue_released = true;
    }

    pub(super) fn serve(&mut self) -> Result<()> {
        self.worker
            .io
            .recv_packets(self.tun.fd(), Token(TOKEN_TUN_RECV))
            .context("arming the TUN queue's receive")?;
        let mut completions = Vec::with_capacity(uring_io::BATCH_SIZE * 4);
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            completions.clear();
            self.worker
                .io
                .submit_and_wait(&mut completions, Some(WAIT))
                .context("waiting for I/O")?;
            // Once per turn: a newer snapshot or link table.
            if let Some(snapshot) = self.shared.snapshot.newer(&mut self.snapshot_seen) {
                self.worker.forwarder.install(snapshot);
            }
            let mut reindex = false;
            if let Some(links) = self.shared.links.newer(&mut self.links_seen) {
                self.links = (*links).clone();
                reindex = true;
            }
            if let Some(peers) = self.shared.dtls_peers.newer(&mut self.peers_seen) {
                self.peers = peers;
                reindex = true;
            }
            if reindex {
                self.index_shared_receives();
            }
            self.hairpin = self.shared.hairpin.load(Ordering::Relaxed);
            self.fastpath = self.shared.fastpath.load(Ordering::Relaxed);
            self.tun_mtu =
                u16::try_from(self.shared.tun_mtu.load(Ordering::Relaxed)).unwrap_or(u16::MAX);
            self.take_from_main()?;
            // After a failure the batch is still handled: a TCP read in it holds bytes of
            // its stream, which must not be lost before the link goes back.
            let mut failed = None;
            for completion in completions.drain(..) {
                if let Err(error) = self.handle(completion) {
                    failed.get_or_insert(error);
                }
            }
            // Everything received this turn is merged: write the super-packets.
            self.flush_tun_writes();
            self.flush_transit();
            if let Some(error) = failed {
                return Err(error);
            }
            self.resume_tcp();
            if self.reported.elapsed() >= REPORT_EVERY {
                self.report(false);
            }
            // Idle pool buffers go back to the kernel once a second, as on worker 0, and so
            // does what a burst grew its TCP links' queues to.
            if self.worker.trim_if_due(Instant::now()) {
                self.shrink_tcp_queues();
            }
            if std::mem::take(&mut self.woke_main) {
                let _ = self.main.wake();
            }
        }
    }

    pub(super) fn handle(&mut self, completion: Completion) -> Result<()> {
        match (completion.kind, completion.token.0 & TOKEN_KIND_MASK) {
            (OpKind::RecvPacket, TOKEN_TUN_RECV) => {
                let armed = completion.armed;
                let range = completion.data_range();
                let (buf, completion_buf_without_data) = match range {
                    Some(_) => (completion.buf, None),
                    None => (None, completion.buf),
                };
                if let (Some(buf), Some(range)) = (buf, range) {
                    // A thread giving its TCP links back still forwards what its queue reads
                    // until it ends (the kernel steers the queue's flows here until then).
                    if !self.tcp_stopping
                        && self.fail_after.is_some_and(|n| self.worker.tun_reads >= n)
                    {
                        self.worker.io.free(buf);
                        anyhow::bail!(
                            "test fault ({FAIL_WORKER_ENV}) after {} TUN packets",
                            self.worker.tun_reads
                        );
                    }
                    self.worker.tun_reads += 1;
                    self.on_tun_read(buf, range);
                } else if let Some(buf) = completion_buf_without_data {
                    self.worker.io.free(buf);
                }
                if !armed {
                    self.worker
                        .io
                        .recv_packets(self.tun.fd(), Token(TOKEN_TUN_RECV))
                        .context("re-arming the TUN queue's receive")?;
                }
            }
            (OpKind::RecvDatagram, TOKEN_UDP_RECV) => {
                let slot = (completion.token.0 & !TOKEN_KIND_MASK) as usize;
                self.on_datagram(slot, completion)?;
            }
            (OpKind::RecvDatagram, TOKEN_PORT_RECV) => {
                let slot = (completion.token.0 & !TOKEN_KIND_MASK) as usize;
                self.on_port_datagram(slot, completion)?;
            }
            (OpKind::Send, _) => {
                if completion.result.is_err() {
                    self.worker.offload_counters.udp_send_errors += 1;
                }
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
            (OpKind::Write, TOKEN_TUN_WRITE) => self.worker.tun_written(completion),
            (OpKind::Read, TOKEN_TCP_READ) => {
                let slot = (completion.token.0 & !TOKEN_KIND_MASK) as usize;
                self.on_tcp_read(slot, completion);
            }
            (OpKind::Write, TOKEN_TCP_WRITE) => {
                let slot = (completion.token.0 & !TOKEN_KIND_MASK) as usize;
                self.on_tcp_written(slot, completion);
            }
            _ => {
                if let Some(buf) = completion.buf {
                    self.worker.io.free(buf);
                }
            }
        }
        Ok(())
    }

    /// Hands something to the main loop; counts it when the channel is full.
    pub(super) fn hand_to_main(&mut self, message: FromWorker) {
        match self.to_main.try_send(message) {
            Ok(()) => {
                self.woke_main = true;
                self.handed_to_main += 1;
            }
            Err(TrySendError::Full(_)) => {
                self.channel_drops.fetch_add(1, Ordering::Relaxed);
                self.worker.forwarder.count_drop(DropReason::LinkCongested);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(super) fn report(&mut self, last: bool) {
        self.reported = Instant::now();
        {
            let mut status = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            status.tun_reads = self.worker.tun_reads;
            status.handed_to_main = self.handed_to_main;
            status.records_opened = self.records_opened;
            status.received_for_main = self.received_for_main;
            status.datagrams_received = self.datagrams_received;
            status.receive_links = self.receiving.iter().flatten().count() as u64;
            status.tcp_links = self.tcp_links() as u64;
            status.tcp_reads = self.worker.tcp_reads;
            let usage = self.worker.io.usage();
            status.buffers_peak = usage.peak_in_use as u64;
            status.buffers_touched = usage.touched as u64;
        }
        while let Some((forwarded, packet)) = self.worker.forwarder.poll_originated() {
            self.hand_to_main(FromWorker::Originated(forwarded, packet));
        }
        let report = std::mem::take(self.worker.forwarder.report_mut());
        let offload = std::mem::take(&mut self.worker.offload_counters);
        let plain = std::mem::take(&mut self.plain_counters);
        let _ = self.to_main.try_send(FromWorker::Report {
            index: self.index,
            report,
            offload,
            plain,
        });
        self.woke_main = true;
        if last {
            let _ = self.main.wake();
        }
    }
}
