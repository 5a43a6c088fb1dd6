//! The TCP/TLS links a worker thread owns: once a link's session is established, the main
//! loop hands it the stream, the codec (framing, the TLS record layer) and the unsent bytes
//! (`ToWorker::OwnTcp`), between two complete reads and writes. The thread reads and writes
//! the stream on its own ring, decrypts and unframes what it reads, forwards the packets by
//! the snapshot (to its TUN queue, or on to the next link) and hands the other messages
//! (hellos, keepalives, the routing stream) to the main loop, which owns the core. The node's
//! own messages for the link, and the packets other workers forwarded to it, come back as
//! `ToWorker::TcpSend` and are framed into the same ordered byte stream; packets this thread
//! forwards to the link itself are framed from where they lie.
//!
//! Reads wait, as on the main loop, while no more than a quarter of the thread's pool is free
//! ([`Worker::start_stream_read`]), behind the links already waiting, and start again at the
//! end of the turn ([`WorkerThread::resume_tcp`]). A stopping thread (a failed ring, or the test fault) stops
//! arming reads, lets what is in flight complete, and gives each link back
//! (`FromWorker::ReturnedTcp`); the main loop continues the stream where it was.

use std::io::Write;

use connectopus_wire::message::is_ip_packet;

use super::super::handshake_limits::MAX_TCP_QUEUE;
use super::*;

/// Why a link whose peer lets more than [`MAX_TCP_QUEUE`] bytes queue up is closed (counted
/// by the main loop as `tcp_queue_overflow_closed`).
pub(super) const PEER_DOES_NOT_READ: &str = "peer does not read";

/// How long a stopping thread waits for its TCP links' reads and writes in flight.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(5);

/// A TCP/TLS link this thread owns.
#[derive(Debug)]
pub(in crate::daemon) struct OwnedTcp {
    own: OwnTcp,
    read_in_flight: bool,
    write_in_flight: bool,
    /// The link ended: the stream closes once nothing is in flight on it.
    closed: bool,
}

impl OwnedTcp {
    fn idle(&self) -> bool {
        !self.read_in_flight && !self.write_in_flight
    }
}

impl WorkerThread {
    fn tcp_slot(&self, link: LinkId) -> Option<usize> {
        self.tcp
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.own.link == link && !t.closed))
    }

    /// How many TCP/TLS links this thread reads and writes.
    pub(super) fn tcp_links(&self) -> usize {
        self.tcp.iter().flatten().filter(|t| !t.closed).count()
    }

    /// Takes a TCP/TLS link over from the main loop and starts its read and write.
    pub(super) fn own_tcp(&mut self, own: OwnTcp) {
        if self.tcp_stopping {
            self.pass_ownership_to_main(FromWorker::ReturnedTcp(Box::new(own)));
            return;
        }
        tracing::debug!(worker = self.index, link = %own.link, "reading and writing tcp link");
        let owned = OwnedTcp {
            own,
            read_in_flight: false,
            write_in_flight: false,
            closed: false,
        };
        let slot = match self.tcp.iter().position(Option::is_none) {
            Some(slot) => {
                self.tcp[slot] = Some(owned);
                slot
            }
            None => {
                self.tcp.push(Some(owned));
                self.tcp.len() - 1
            }
        };
        self.start_tcp_read(slot);
        self.pump_tcp_write(slot);
    }

    /// A message for a TCP link, from the main loop (`ToWorker::TcpSend`).
    pub(super) fn tcp_send(&mut self, link: LinkId, message: &[u8], header: Option<VnetHeader>) {
        self.tcp_queued.fetch_sub(
            message.len().min(self.tcp_queued.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let Some(slot) = self.tcp_slot(link) else {
            // Closed meanwhile (or given back: the main loop holds what follows).
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        self.frame_tcp(slot, Message::Bytes(message), header);
    }

    /// Frames the packet at `buf[r]` (a super-packet behind `header`) onto TCP `link` if this
    /// thread owns it; false if it does not. `buf` stays the caller's.
    pub(super) fn frame_tcp_from_buf(
        &mut self,
        link: LinkId,
        buf: &BufId,
        r: Range<usize>,
        header: Option<VnetHeader>,
    ) -> bool {
        let Some(slot) = self.tcp_slot(link) else {
            return false;
        };
        // Framed (and encrypted) from where it lies into the link's queue.
        self.frame_tcp(slot, Message::Pool(buf, r), header);
        true
    }

    /// Frames one message (or each segment of a super-packet) into the link's byte queue and
    /// starts its write.
    fn frame_tcp(&mut self, slot: usize, message: Message<'_>, header: Option<VnetHeader>) {
        let WorkerThread { worker, tcp, .. } = self;
        let Some(t) = tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let message = match message {
            Message::Bytes(bytes) => bytes,
            Message::Pool(buf, r) => worker.io.buf(buf).get(r).unwrap_or_default(),
        };
        let data = header.is_some() || is_ip_packet(message);
        if data && t.own.tx.len() > MAX_TCP_BACKLOG {
            worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        }
        worker.scratch_out.clear();
        let framed = match header {
            None => t.own.codec.send_message(message, &mut worker.scratch_out),
            Some(header) => {
                let Ok(segments) = Segments::new(&header, message) else {
                    worker.forwarder.count_drop(DropReason::Malformed);
                    return;
                };
                let max_len = segments.max_segment_len();
                for i in 0..segments.count() {
                    let queued = t.own.codec.queue_with(
                        max_len,
                        |out| segments.write(i, out).ok(),
                        &mut worker.scratch_out,
                    );
                    if !matches!(queued, Ok(true)) {
                        worker.forwarder.count_drop(DropReason::Malformed);
                        break;
                    }
                }
                // Plain TCP: the frames are in `scratch_out`; TLS: they were staged in the
                // codec and its records go straight into the send queue.
                t.own.codec.flush(&mut t.own.tx)
            }
        };
        if let Err(error) = framed {
            tracing::debug!(link = %t.own.link, %error, "dropping message");
            return;
        }
        t.own.tx.extend(worker.scratch_out.iter());
        if t.own.tx.len() > MAX_TCP_QUEUE {
            self.close_tcp(slot, PEER_DOES_NOT_READ);
            return;
        }
        self.pump_tcp_write(slot);
    }

    /// Starts a write of the link's queued bytes if none is in flight.
    fn pump_tcp_write(&mut self, slot: usize) {
        let WorkerThread {
            worker,
            tcp,
            tcp_stopping,
            ..
        } = self;
        let Some(t) = tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if t.closed || *tcp_stopping || t.write_in_flight || t.own.tx.is_empty() {
            return;
        }
        let fd = t.own.stream.as_raw_fd();
        let token = Token(TOKEN_TCP_WRITE | slot as u64);
        t.write_in_flight = worker.start_stream_write(t.own.link, fd, &t.own.tx, token);
    }

    /// Arms the link's read if none is in flight, behind the links already waiting for
    /// buffers (so a link whose read just completed cannot overtake them).
    fn start_tcp_read(&mut self, slot: usize) {
        let Some(t) = self.tcp.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let link = t.own.link;
        let waiting = &mut self.worker.tcp_waiting;
        if !waiting.is_empty() && !waiting.contains(&link) {
            if !t.read_in_flight && !t.closed && !self.tcp_stopping {
                self.worker.offload_counters.tcp_reads_deferred += 1;
                waiting.push(link);
            }
            return;
        }
        self.try_tcp_read(slot);
    }

    /// Arms the link's read now if the pool has more than the reserve free
    /// ([`Worker::start_stream_read`]); otherwise the link waits (once in the list) for the
    /// end of the turn ([`WorkerThread::resume_tcp`]).
    fn try_tcp_read(&mut self, slot: usize) {
        let WorkerThread {
            worker,
            tcp,
            tcp_stopping,
            ..
        } = self;
        let Some(t) = tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if t.closed || *tcp_stopping || t.read_in_flight {
            return;
        }
        let fd = t.own.stream.as_raw_fd();
        let token = Token(TOKEN_TCP_READ | slot as u64);
        t.read_in_flight = worker.start_stream_read(t.own.link, fd, token);
    }

    /// Retries, in the order they began to wait, the reads and writes that found too few free
    /// buffers (once a turn, after the turn's completions returned their buffers): a link with
    /// nothing in flight gets no completion.
    pub(super) fn resume_tcp(&mut self) {
        if self.worker.tcp_waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.worker.tcp_waiting);
        for link in waiting.drain(..) {
            if let Some(slot) = self.tcp_slot(link) {
                self.try_tcp_read(slot);
                self.pump_tcp_write(slot);
            }
        }
        waiting.append(&mut self.worker.tcp_waiting);
        self.worker.tcp_waiting = waiting;
    }

    /// Shrinks the queues of its TCP links that a burst grew (once a second, with the pool's
    /// trim): a write in flight was copied into a pool buffer, so no queue is borrowed.
    pub(super) fn shrink_tcp_queues(&mut self) {
        for t in self.tcp.iter_mut().flatten() {
            crate::links::tcp::shrink_idle_queue(&mut t.own.tx);
            t.own.codec.shrink_idle();
        }
    }

    pub(super) fn on_tcp_written(&mut self, slot: usize, completion: Completion) {
        if let Some(buf) = completion.buf {
            self.worker.io.free(buf);
        }
        let Some(t) = self.tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        t.write_in_flight = false;
        if t.closed {
            self.reap_tcp(slot);
            return;
        }
        match completion.result {
            Ok(n) => {
                t.own.tx.drain(..n.min(t.own.tx.len()));
                self.pump_tcp_write(slot);
            }
            Err(errno) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => {
                self.pump_tcp_write(slot);
            }
            Err(errno) => {
                tracing::debug!(link = %t.own.link, error = %errno.into_io(), "tcp write failed");
                self.close_tcp(slot, "write error");
            }
        }
    }

    pub(super) fn on_tcp_read(&mut self, slot: usize, completion: Completion) {
        let range = completion.data_range();
        let Some(buf) = completion.buf else {
            return;
        };
        let WorkerThread { worker, tcp, .. } = self;
        let Some(t) = tcp.get_mut(slot).and_then(Option::as_mut) else {
            worker.io.free(buf);
            return;
        };
        t.read_in_flight = false;
        if t.closed {
            worker.io.free(buf);
            self.reap_tcp(slot);
            return;
        }
        let result = match (completion.result, range) {
            (Ok(0), _) => Err("closed by peer".to_owned()),
            (Ok(_), Some(range)) => {
                worker.scratch_out.clear();
                let data = worker.io.buf(&buf).get(range).unwrap_or_default();
                let r = t
                    .own
                    .codec
                    .receive(data, &mut worker.scratch_out)
                    .map_err(|e| e.to_string());
                t.own.tx.extend(worker.scratch_out.iter());
                r
            }
            (Err(errno), _) if errno.0 == libc::EAGAIN || errno.0 == libc::EINTR => Ok(()),
            (Err(errno), _) => Err(errno.into_io().to_string()),
            (Ok(_), None) => Ok(()),
        };
        worker.io.free(buf);
        if let Err(reason) = result {
            tracing::debug!(link = %t.own.link, %reason, "tcp link ends");
            self.close_tcp(slot, "transport closed");
            return;
        }
        let link = t.own.link;
        worker.ranges.clear();
        while let Some(r) = t.own.codec.pop_message() {
            worker.ranges.push(r);
        }
        self.worker.tcp_reads += 1;
        let ranges = std::mem::take(&mut self.worker.ranges);
        for r in &ranges {
            self.on_tcp_message(slot, link, r.clone());
        }
        self.worker.ranges = ranges;
        let over = self
            .tcp
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.own.tx.len() > MAX_TCP_QUEUE);
        if over {
            self.close_tcp(slot, PEER_DOES_NOT_READ);
            return;
        }
        self.pump_tcp_write(slot);
        self.start_tcp_read(slot);
    }

    /// Routes one message the link's codec unframed at `r` of its buffer: a packet by the
    /// snapshot (copied once into a pool buffer, as the main loop copies it out), anything
    /// else to the main loop.
    fn on_tcp_message(&mut self, slot: usize, link: LinkId, r: Range<usize>) {
        let WorkerThread { worker, tcp, .. } = self;
        let Some(t) = tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(message) = t.own.codec.buffer_mut().get(r) else {
            return;
        };
        if !is_ip_packet(message) {
            let message = message.to_vec();
            self.pass_to_main(FromWorker::LinkMessage { link, message });
            return;
        }
        let Some(buf) = worker.io.alloc() else {
            worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = worker.io.pool().headroom();
        let end = start + message.len();
        let copied = worker
            .io
            .buf_mut(&buf)
            .get_mut(start..end)
            .map(|slot| slot.copy_from_slice(message))
            .is_some();
        if copied {
            self.on_opened(link, &buf, start..end);
        } else {
            worker.forwarder.count_drop(DropReason::TooBig);
        }
        self.worker.io.free(buf);
    }

    /// Ends a link this thread owns (the main loop is told): its stream shuts down now and
    /// closes once nothing is in flight on it.
    fn close_tcp(&mut self, slot: usize, reason: &'static str) {
        let Some(t) = self.tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if t.closed {
            return;
        }
        let link = t.own.link;
        self.pass_ownership_to_main(FromWorker::TcpClosed { link, reason });
        self.forget_tcp_slot(slot);
    }

    /// The main loop closed the link.
    pub(super) fn forget_tcp(&mut self, link: LinkId) {
        if let Some(slot) = self.tcp_slot(link) {
            self.forget_tcp_slot(slot);
        }
    }

    fn forget_tcp_slot(&mut self, slot: usize) {
        let Some(t) = self.tcp.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        t.closed = true;
        let _ = t.own.stream.shutdown(Shutdown::Both);
        self.reap_tcp(slot);
    }

    /// Drops a closed link's stream once nothing is in flight on it.
    fn reap_tcp(&mut self, slot: usize) {
        if self
            .tcp
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.closed && t.idle())
        {
            self.tcp[slot] = None;
        }
    }

    /// The thread stops (its ring failed, or the test fault): no more reads are armed and no
    /// more writes started; once the reads and writes in flight completed (at most
    /// [`GIVE_BACK_WAIT`]) each link goes back to the main loop with its unsent bytes. A link
    /// whose read is still in flight then (its ring is gone, or its peer silent for that
    /// long, or the ring failed) cannot be continued safely (that read may take bytes of the stream): it closes.
    pub(super) fn give_back_tcp(&mut self) {
        self.tcp_stopping = true;
        // From now on the main loop holds the links' messages itself.
        self.door.close();
        let deadline = Instant::now() + GIVE_BACK_WAIT;
        let mut completions = Vec::new();
        loop {
            // Messages sent before the door closed, and links handed over meanwhile.
            let _ = self.take_from_main();
            let busy = self.tcp.iter().flatten().any(|t| !t.idle());
            if !busy || Instant::now() >= deadline {
                break;
            }
            completions.clear();
            if self
                .worker
                .io
                .submit_and_wait(&mut completions, Some(WAIT))
                .is_err()
            {
                break;
            }
            // Handled as before (what was read is forwarded); nothing new is armed.
            for completion in completions.drain(..) {
                let _ = self.handle(completion);
            }
            self.flush_tun_writes();
            self.flush_transit();
        }
        for slot in 0..self.tcp.len() {
            let Some(t) = self.tcp[slot].take() else {
                continue;
            };
            if t.closed {
                continue;
            }
            if t.idle() {
                tracing::debug!(worker = self.index, link = %t.own.link, "giving tcp link back");
                self.pass_ownership_to_main(FromWorker::ReturnedTcp(Box::new(t.own)));
            } else {
                let _ = t.own.stream.shutdown(Shutdown::Both);
                self.pass_ownership_to_main(FromWorker::TcpClosed {
                    link: t.own.link,
                    reason: "its worker stopped",
                });
            }
        }
    }

    /// The node stops: what the links still have queued (the goodbyes) is written as far as
    /// the sockets take it, without waiting.
    pub(super) fn flush_tcp_at_exit(&mut self) {
        self.door.close();
        let _ = self.take_from_main();
        for t in self.tcp.iter_mut().flatten() {
            if t.closed || t.write_in_flight {
                continue;
            }
            let (front, back) = t.own.tx.as_slices();
            for part in [front, back] {
                if (&t.own.stream).write_all(part).is_err() {
                    break;
                }
            }
        }
    }
}

/// A message to frame: bytes the main loop handed over, or a packet in this thread's pool.
enum Message<'a> {
    Bytes(&'a [u8]),
    Pool(&'a BufId, Range<usize>),
}
