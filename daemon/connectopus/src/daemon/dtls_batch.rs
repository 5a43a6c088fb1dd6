//! Batches of DTLS records for one link: packets that leave on a DTLS link one by one (transit
//! packets opened from another link's GRO batch, packets from TCP links) are sealed one after
//! another into the slots of one send buffer and sent with one UDP GSO `sendmsg` when the
//! loop's turn ends, so a node in the middle of a path keeps the batching of its ends.
//!
//! UDP GSO needs every datagram of a send but the last to have the same length: a batch takes
//! records of its first record's length; a shorter one ends it, a longer one starts a new one.
//! Records are sealed in the order they are sent: anything sealed for a link outside its batch
//! first sends the batch ([`Daemon::flush_dtls_batches`]).
//!
//! Plaintext UDP links batch the same way, with records that are the packets themselves (no
//! header, no tag, nothing to seal).

use uring_io::BufId;

use super::dtls::datagrams_per_send;
use super::*;

/// The open batches, at most one per link.
#[derive(Debug, Default)]
pub(super) struct DtlsBatches {
    open: Vec<OpenBatch>,
}

impl DtlsBatches {
    /// Tells whether `link` has an open batch (cheap: usually there is none).
    pub(super) fn has(&self, link: LinkId) -> bool {
        self.open.iter().any(|b| b.link == link)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[derive(Debug)]
struct OpenBatch {
    link: LinkId,
    buf: BufId,
    /// The length of every record of the batch but (possibly) the last.
    stride: usize,
    count: usize,
    /// The most records this batch may hold.
    limit: usize,
    /// Where the last record ends in `buf`.
    end: usize,
}

impl Daemon {
    /// Seals the packet at `src[range]` as one DTLS record for `link` into the link's batch;
    /// `src` stays the caller's.
    pub(super) fn batch_record(&mut self, link: LinkId, src: &BufId, range: Range<usize>) {
        let Some((payload_offset, overhead)) =
            self.links.get(&link).and_then(|l| match &l.transport {
                Transport::Dtls(d) => d.association.payload_offset().zip(d.association.overhead()),
                Transport::PlainUdp(_) => Some((0, 0)),
                Transport::Tcp(_) | Transport::TcpOnWorker { .. } => None,
            })
        else {
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        let len = range.len();
        let record_len = overhead + len;
        if let Some(i) = self
            .worker
            .dtls_batches
            .open
            .iter()
            .position(|b| b.link == link)
        {
            let batch = &self.worker.dtls_batches.open[i];
            if batch.count < batch.limit && record_len <= batch.stride {
                // Every record before this one is exactly `stride` long.
                let slot = batch.end;
                if self.seal_into(link, src, range, i, slot, payload_offset) {
                    let batch = &mut self.worker.dtls_batches.open[i];
                    batch.count += 1;
                    if record_len < batch.stride {
                        // A shorter record must be the last of a GSO send.
                        let batch = self.worker.dtls_batches.open.remove(i);
                        self.send_batch(batch);
                    }
                }
                return;
            }
            let batch = self.worker.dtls_batches.open.remove(i);
            self.send_batch(batch);
        }
        let Some(buf) = self.worker.io.alloc() else {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return;
        };
        let start = self.worker.io.pool().headroom();
        let room = self.worker.io.pool().buf_size() - start;
        let limit = datagrams_per_send(room, record_len, self.worker.offloads.udp_gso.is_ok());
        self.worker.dtls_batches.open.push(OpenBatch {
            link,
            buf,
            stride: record_len,
            count: 0,
            limit,
            end: start,
        });
        let i = self.worker.dtls_batches.open.len() - 1;
        if self.seal_into(link, src, range, i, start, payload_offset) {
            let batch = &mut self.worker.dtls_batches.open[i];
            batch.count = 1;
            if batch.count >= batch.limit {
                let batch = self.worker.dtls_batches.open.remove(i);
                self.send_batch(batch);
            }
        } else {
            let batch = self.worker.dtls_batches.open.remove(i);
            self.worker.io.free(batch.buf);
        }
    }

    /// Copies the packet into the record slot at `slot` of batch `i` and seals it there;
    /// returns false (counted) when it could not.
    fn seal_into(
        &mut self,
        link: LinkId,
        src: &BufId,
        range: Range<usize>,
        i: usize,
        slot: usize,
        payload_offset: usize,
    ) -> bool {
        let Daemon { worker, links, .. } = self;
        let Worker {
            io,
            forwarder,
            dtls_batches,
            ..
        } = worker;
        let Some(batch) = dtls_batches.open.get_mut(i) else {
            return false;
        };
        let dtls = match links.get_mut(&link).map(|l| &mut l.transport) {
            Some(Transport::Dtls(dtls)) => Some(dtls),
            // A plaintext link's record is the packet as it is.
            Some(Transport::PlainUdp(_)) => None,
            _ => {
                forwarder.count_drop(DropReason::LinkDown);
                return false;
            }
        };
        let len = range.len();
        let (from, to) = io.buf_pair(src, &batch.buf);
        let (Some(packet), Some(record)) = (from.get(range), to.get_mut(slot..slot + batch.stride))
        else {
            forwarder.count_drop(DropReason::TooBig);
            return false;
        };
        let Some(payload) = record.get_mut(payload_offset..payload_offset + len) else {
            forwarder.count_drop(DropReason::TooBig);
            return false;
        };
        payload.copy_from_slice(packet);
        let Some(dtls) = dtls else {
            batch.end = slot + len;
            return true;
        };
        match dtls.association.seal_in_place(record, len) {
            Ok(n) => {
                batch.end = slot + n;
                true
            }
            Err(error) => {
                tracing::debug!(%link, %error, "dtls seal failed");
                forwarder.count_drop(DropReason::LinkDown);
                false
            }
        }
    }

    /// Sends the open batches: those of `only`, or all.
    pub(super) fn flush_dtls_batches(&mut self, only: Option<LinkId>) {
        let mut i = 0;
        while i < self.worker.dtls_batches.open.len() {
            if only.is_some_and(|l| l != self.worker.dtls_batches.open[i].link) {
                i += 1;
                continue;
            }
            let batch = self.worker.dtls_batches.open.remove(i);
            self.send_batch(batch);
        }
    }

    fn send_batch(&mut self, batch: OpenBatch) {
        let OpenBatch {
            link,
            buf,
            stride,
            count,
            end,
            ..
        } = batch;
        let Some(target) = self.udp_target(link) else {
            self.worker.io.free(buf);
            return;
        };
        if count == 0 {
            self.worker.io.free(buf);
            return;
        }
        if count > 1 {
            self.worker.offload_counters.udp_gso_sends += 1;
        }
        let start = self.worker.io.pool().headroom();
        target.send(
            &mut self.worker.io,
            buf,
            start..end,
            (count > 1).then_some(stride as u16),
        );
    }
}
