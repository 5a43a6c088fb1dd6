//! The receiving half of a [`ReliableStream`]: data segments taken in order or held out of
//! order, what the stream acknowledges and the window it offers.

use super::*;

impl ReliableStream {
    /// Segments this end could buffer now, given the bytes the application has not read.
    pub(super) fn available_window(&self) -> u32 {
        let segment = self.config.max_segment_payload.max(1);
        let unread = u32::try_from(self.ready.len().div_ceil(segment)).unwrap_or(u32::MAX);
        u32::from(self.config.receive_window.max(1)).saturating_sub(unread)
    }

    /// Returns (ack, sack, window) for an outgoing segment; the ack is no longer pending.
    pub(super) fn ack_fields(&mut self) -> (u32, u32, u16) {
        let right = self.rcv_nxt.wrapping_add(self.available_window());
        if seq_lt(self.adv_right, right) {
            self.adv_right = right;
        }
        let window = u16::try_from(self.adv_right.wrapping_sub(self.rcv_nxt)).unwrap_or(u16::MAX);
        let mut sack = 0u32;
        for (i, slot) in self
            .out_of_order
            .iter()
            .skip(1)
            .take(SACK_BITS as usize)
            .enumerate()
        {
            if slot.is_some() {
                sack |= 1 << i;
            }
        }
        self.ack_pending = false;
        (self.rcv_nxt, sack, window)
    }

    pub(super) fn on_data(&mut self, seq: u32, payload: &[u8]) {
        self.stats.segments_received += 1;
        // Duplicates and out-of-window segments are answered too: the peer's view may be stale.
        self.ack_pending = true;
        let offset = seq.wrapping_sub(self.rcv_nxt);
        if offset >= self.adv_right.wrapping_sub(self.rcv_nxt) {
            // Already delivered (offset "negative") or beyond the offered window.
            return;
        }
        if offset == 0 {
            self.deliver(payload);
            self.out_of_order.pop_front();
            while matches!(self.out_of_order.front(), Some(Some(_))) {
                if let Some(Some(p)) = self.out_of_order.pop_front() {
                    self.out_of_order_bytes -= p.len();
                    self.deliver(&p);
                }
            }
        } else {
            let offset = offset as usize;
            if self.out_of_order.get(offset).is_some_and(Option::is_some) {
                return;
            }
            if self.out_of_order_bytes + payload.len() > self.out_of_order_cap() {
                // Over the window in bytes (segments larger than ours): drop it; the peer
                // sends it again once it is next in order, and in-order data is always taken.
                return;
            }
            if self.out_of_order.len() <= offset {
                self.out_of_order.resize(offset + 1, None);
            }
            self.out_of_order_bytes += payload.len();
            self.out_of_order[offset] = Some(payload.to_vec());
        }
    }

    pub(super) fn deliver(&mut self, payload: &[u8]) {
        self.ready.extend_from_slice(payload);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.stats.bytes_delivered += payload.len() as u64;
    }
}
