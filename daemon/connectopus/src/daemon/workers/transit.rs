//! Transit records of a worker thread: packets it opened from one link that leave on a DTLS
//! link are copied into the record slots of one send buffer, one record stride apart, and
//! sealed together when the batch is full or the turn ends (one reservation of sequence
//! numbers, one atomic add, for the whole batch), then sent with one UDP GSO `sendmsg`. So a
//! transit node keeps the batching of its ends, as the main loop does (`dtls_batch`).
//! Packets that leave on a plaintext udp link are batched the same way, back to back without
//! a record around them (each datagram is the packet).
//!
//! UDP GSO needs every datagram of a send but the last to have the same length: a batch takes
//! packets of its first packet's length; a shorter one ends it, a longer one starts a new one.

use super::*;

/// One open batch of records for a link.
#[derive(Debug)]
pub(super) struct TransitBatch {
    link: LinkId,
    buf: BufId,
    /// The payload length of every record but (possibly) the last.
    payload: usize,
    /// The payload length of the last record.
    last: usize,
    count: usize,
    /// The most records this batch may hold.
    limit: usize,
}

impl WorkerThread {
    /// Copies the packet at `src[r]` into the open batch of DTLS or plaintext udp link `link`
    /// (opening one); false when `link` is not a link this thread sends on. `src` stays the
    /// caller's.
    pub(super) fn batch_transit(&mut self, link: LinkId, src: &BufId, r: Range<usize>) -> bool {
        let (offset, overhead) = match self.links.get(&link) {
            Some(LinkSend::Dtls { sealer, .. }) => (sealer.payload_offset(), sealer.overhead()),
            Some(LinkSend::Plain { .. }) => (0, 0),
            None => return false,
        };
        let len = r.len();
        let start = self.worker.io.pool().headroom();
        if let Some(i) = self.transit.iter().position(|b| b.link == link) {
            let batch = &self.transit[i];
            if batch.count < batch.limit && len <= batch.payload {
                let slot = start + batch.count * (batch.payload + overhead) + offset;
                let (from, to) = self.worker.io.buf_pair(src, &batch.buf);
                let copied = match (from.get(r), to.get_mut(slot..slot + len)) {
                    (Some(p), Some(s)) => {
                        s.copy_from_slice(p);
                        true
                    }
                    _ => false,
                };
                if !copied {
                    self.worker.forwarder.count_drop(DropReason::TooBig);
                    return true;
                }
                let batch = &mut self.transit[i];
                batch.count += 1;
                batch.last = len;
                if len < batch.payload || batch.count >= batch.limit {
                    // A shorter record must be the last of a GSO send.
                    let batch = self.transit.swap_remove(i);
                    self.send_transit(batch);
                }
                return true;
            }
            let batch = self.transit.swap_remove(i);
            self.send_transit(batch);
        }
        let Some(buf) = self.worker.io.alloc() else {
            self.worker.forwarder.count_drop(DropReason::LinkCongested);
            return true;
        };
        let room = self.worker.io.pool().buf_size() - start;
        let limit =
            dtls::datagrams_per_send(room, len + overhead, self.worker.offloads.udp_gso.is_ok());
        let slot = start + offset;
        let (from, to) = self.worker.io.buf_pair(src, &buf);
        let copied = match (from.get(r), to.get_mut(slot..slot + len)) {
            (Some(p), Some(s)) => {
                s.copy_from_slice(p);
                true
            }
            _ => false,
        };
        if !copied {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::TooBig);
            return true;
        }
        let batch = TransitBatch {
            link,
            buf,
            payload: len,
            last: len,
            count: 1,
            limit,
        };
        if limit <= 1 {
            self.send_transit(batch);
        } else {
            self.transit.push(batch);
        }
        true
    }

    /// Seals the records of a batch where they lie (for a DTLS link) and sends them with one
    /// `sendmsg`.
    fn send_transit(&mut self, batch: TransitBatch) {
        let TransitBatch {
            link,
            buf,
            payload,
            last,
            count,
            ..
        } = batch;
        if let Some(send @ LinkSend::Plain { .. }) = self.links.get(&link) {
            if count > 1 {
                self.worker.offload_counters.udp_gso_sends += 1;
            }
            let start = self.worker.io.pool().headroom();
            send.target().send(
                &mut self.worker.io,
                buf,
                start..start + (count - 1) * payload + last,
                (count > 1).then_some(payload as u16),
            );
            return;
        }
        let Some((target, sealer)) = self.links.get_mut(&link).and_then(LinkSend::sealing) else {
            self.worker.io.free(buf);
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        };
        let io = &mut self.worker.io;
        let stride = payload + sealer.overhead();
        let start = io.pool().headroom();
        let mut end = start;
        // One atomic add reserves the sequence numbers of the whole send.
        let sealed = sealer.reserve(count).and_then(|reservation| {
            let records = io.buf_mut(&buf);
            for i in 0..count {
                let slot = start + i * stride;
                let len = if i + 1 == count { last } else { payload };
                let record = records
                    .get_mut(slot..slot + stride)
                    .ok_or(connectopus_dtls::DtlsError::Internal("record slot"))?;
                end = slot + reservation.seal(i, record, len)?;
            }
            Ok(())
        });
        if let Err(error) = sealed {
            io.free(buf);
            tracing::debug!(%link, %error, worker = self.index, "dtls seal failed");
            self.worker.forwarder.count_drop(DropReason::LinkDown);
            return;
        }
        if count > 1 {
            self.worker.offload_counters.udp_gso_sends += 1;
        }
        target.send(io, buf, start..end, (count > 1).then_some(stride as u16));
    }

    /// Sends every open batch (at the end of each turn).
    pub(super) fn flush_transit(&mut self) {
        while let Some(batch) = self.transit.pop() {
            self.send_transit(batch);
        }
    }
}
