//! A [`ReliableStream`]'s sending half taking acknowledgements: what the peer acknowledged,
//! cumulatively and selectively, frees the send buffer, feeds the RTT estimate (RFC 6298) and
//! queues the holes for a fast retransmission.

use super::*;

impl ReliableStream {
    pub(super) fn on_ack(&mut self, now: Time, ack: u32, sack: u32, window: u16) {
        let advance = ack.wrapping_sub(self.snd_una) as i32;
        if advance > self.in_flight.len() as i32 {
            // Acknowledges segments never sent: not from a sane peer; ignore the ack fields.
            return;
        }
        // RTT sampling: take the newest newly acknowledged segment, if it was sent once
        // (Karn's rule), is the top of what this ack covers (so its own arrival most likely
        // triggered the ack) and the ack covers no retransmission (an ack for a filled hole
        // covers segments that arrived long before). Offsets are from the old `snd_una`.
        let shift = advance.max(0) as u32;
        let mut newest: Option<(u32, Time, bool)> = None;
        let mut top: Option<u32> = None;
        let mut covers_retransmission = false;
        let mut progress = false;
        if advance > 0 {
            let mut freed = 0usize;
            for k in 0..shift {
                if let Some(s) = self.in_flight.pop_front() {
                    if !s.sacked {
                        newest = Some((k, s.last_sent, s.retransmitted));
                        covers_retransmission |= s.retransmitted;
                    }
                    freed += s.len;
                }
            }
            self.send_buf.drain(..freed);
            self.send_base += freed as u64;
            self.snd_una = ack;
            top = Some(shift - 1);
            progress = true;
        }
        let mut bits = sack;
        while bits != 0 {
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            let Some(idx) = self.index_of(ack.wrapping_add(1 + i)) else {
                continue;
            };
            let k = shift + idx as u32;
            top = Some(top.map_or(k, |t| t.max(k)));
            let s = &mut self.in_flight[idx];
            if !s.sacked {
                s.sacked = true;
                s.deadline = None;
                newest = Some((k, s.last_sent, s.retransmitted));
                covers_retransmission |= s.retransmitted;
                progress = true;
            }
        }
        if let Some((k, sent, false)) = newest
            && !covers_retransmission
            && top == Some(k)
        {
            self.rtt_sample(now.saturating_since(sent));
        } else if progress {
            // New data acknowledged proves the path delivers, even when Karn's rule forbids
            // an RTT sample (under heavy loss nearly every ack covers a retransmitted hole):
            // keep backing off and the RTO climbs to `max_rto` and stays there, collapsing
            // throughput (a 10 MiB transfer at 30 % loss each way took 6 virtual minutes).
            self.backoff = 0;
        }

        let right = ack.wrapping_add(u32::from(window));
        if seq_lt(self.peer_right, right) {
            self.peer_right = right;
        }
        if let Some(p) = self.probe_seq {
            match self.index_of(p) {
                None => self.probe_seq = None,
                Some(i) if seq_lt(p, self.peer_right) => {
                    // The receiver dropped the probe as out of window; now it fits, resend it
                    // rather than waiting out a backed-off RTO.
                    self.probe_seq = None;
                    let s = &mut self.in_flight[i];
                    if !s.sacked && !s.queued {
                        s.queued = true;
                        s.deadline = None;
                        self.retx_queue.push_back(p);
                    }
                }
                Some(i) => {
                    // The peer answered with its window still closed: it is alive, only slow
                    // to read, so the probe must not count towards `max_transmissions`.
                    if advance >= 0 {
                        self.in_flight[i].transmissions = 1;
                    }
                }
            }
        }

        if sack != 0 {
            self.fast_retransmit(now);
        }
        if progress || sack != 0 {
            self.recompute_deadline();
        }
    }

    /// Queues holes with at least [`DUP_THRESHOLD`] later segments selectively acknowledged,
    /// at most once per smoothed RTT each.
    pub(super) fn fast_retransmit(&mut self, now: Time) {
        // Every SACK ever received was relative to an ack <= snd_una, so selectively
        // acknowledged segments all lie within the first SACK_BITS + 1 in flight.
        let end = self.in_flight.len().min(SACK_BITS as usize + 1);
        let mut later = self.in_flight.range(..end).filter(|s| s.sacked).count() as u32;
        let rtt = self.srtt.unwrap_or(self.rto);
        let max_transmissions = self.config.max_transmissions;
        for i in 0..end {
            if later < DUP_THRESHOLD {
                break;
            }
            let s = &mut self.in_flight[i];
            if s.sacked {
                later -= 1;
                continue;
            }
            let due = s.transmissions == 1 || now.saturating_since(s.last_sent) >= rtt;
            if due && !s.queued && s.transmissions < max_transmissions {
                s.queued = true;
                s.deadline = None;
                self.retx_queue
                    .push_back(self.snd_una.wrapping_add(i as u32));
            }
        }
    }

    /// Folds one RTT measurement into SRTT/RTTVAR and recomputes the RTO (RFC 6298).
    pub(super) fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                self.rttvar = (self.rttvar * 3 + srtt.abs_diff(r)) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + (self.rttvar * 4).max(CLOCK_GRANULARITY))
            .max(self.config.min_rto)
            .min(self.config.max_rto);
        self.backoff = 0;
    }
}
