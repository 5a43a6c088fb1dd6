//! The receiving direction of an association, as one thread owns it (docs/dtls.md, "Threads
//! and sequence numbers").
//!
//! An [`Opener`] holds everything that changes per received record: the replay window of each
//! receive epoch, which epoch is current, the previous one during its grace period
//! ([`RX_GRACE`]). Exactly one thread owns it: the association itself (the control plane), or
//! the dataplane worker whose socket receives the peer's datagrams
//! ([`crate::DtlsAssociation::take_opener`]). Nothing on its per-record path is locked or
//! allocated.
//!
//! What it shares with the association is [`RxShared`]: the keys of the epochs ahead of the
//! current one, which only the association can derive (they come from the session's exporter,
//! inside OpenSSL), published behind a generation counter; the epoch the opener made current
//! (so the association knows which keys to derive next); and the counters. The opener reads the
//! generation once per datagram and takes the lock only when it changed (after an epoch
//! switch); it adds its counters to the shared ones once per [`Opener::flush_counts`] (a batch).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::association::Received;
use crate::error::CloseReason;
use crate::fastpath::RecordSuite;
use crate::record::{CT_ALERT, CT_APPLICATION_DATA, RECORD_HEADER_LEN, next_record};
use crate::rekey::{LOOKAHEAD, RX_GRACE};
use crate::replay::ReplayWindow;
use crate::sealer::EpochKey;

/// What an opener counted (see [`crate::Stats`] for the meaning of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RxCounts {
    pub records_opened: u64,
    pub replayed: u64,
    pub auth_failed: u64,
    pub unknown_epoch: u64,
    pub malformed: u64,
    pub rx_rekeys: u64,
}

/// The shared counters, added to by the opener once per batch.
#[derive(Debug, Default)]
struct SharedCounts {
    records_opened: AtomicU64,
    replayed: AtomicU64,
    auth_failed: AtomicU64,
    unknown_epoch: AtomicU64,
    malformed: AtomicU64,
    rx_rekeys: AtomicU64,
}

/// What the association and the opener of one receiving direction share: the keys of the
/// epochs ahead (published by the association), the opener's current epoch, the counters.
#[derive(Debug)]
pub struct RxShared {
    suite: RecordSuite,
    /// The receive epoch the opener made current.
    epoch: AtomicU32,
    /// Bumped each time [`Self::publish_ahead`] adds keys.
    generation: AtomicU64,
    /// Keys of epochs after the opener's current one, in order, at most [`LOOKAHEAD`]
    /// beyond it.
    ahead: Mutex<Vec<Arc<EpochKey>>>,
    counts: SharedCounts,
}

impl RxShared {
    pub(crate) fn new(suite: RecordSuite, epoch: u16) -> Self {
        Self {
            suite,
            epoch: AtomicU32::new(u32::from(epoch)),
            generation: AtomicU64::new(0),
            ahead: Mutex::new(Vec::with_capacity(LOOKAHEAD)),
            counts: SharedCounts::default(),
        }
    }

    fn ahead(&self) -> MutexGuard<'_, Vec<Arc<EpochKey>>> {
        // Every write under this lock is a push or a retain: a poisoned lock is consistent.
        self.ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record format.
    pub fn suite(&self) -> RecordSuite {
        self.suite
    }

    /// The receive epoch the opener made current.
    pub fn epoch(&self) -> u16 {
        self.epoch.load(Ordering::Acquire) as u16
    }

    /// The epoch whose key the association should derive next, if the look-ahead is short
    /// of one.
    pub(crate) fn wants(&self) -> Option<u16> {
        let current = self.epoch();
        let mut ahead = self.ahead();
        ahead.retain(|k| k.epoch() > current);
        if ahead.len() >= LOOKAHEAD {
            return None;
        }
        let last = ahead.last().map_or(current, |k| k.epoch());
        last.checked_add(1)
    }

    /// Publishes the key of the epoch [`Self::wants`] named.
    pub(crate) fn publish_ahead(&self, key: Arc<EpochKey>) {
        let mut ahead = self.ahead();
        let last = ahead.last().map_or(self.epoch(), |k| k.epoch());
        if last.checked_add(1) == Some(key.epoch()) {
            ahead.push(key);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The counts so far (of every opener of this direction).
    pub(crate) fn counts(&self) -> RxCounts {
        let c = &self.counts;
        RxCounts {
            records_opened: c.records_opened.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            auth_failed: c.auth_failed.load(Ordering::Relaxed),
            unknown_epoch: c.unknown_epoch.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            rx_rekeys: c.rx_rekeys.load(Ordering::Relaxed),
        }
    }
}

/// One receive epoch: its key and replay window.
#[derive(Debug)]
struct RxEpoch {
    key: Arc<EpochKey>,
    window: ReplayWindow,
}

impl RxEpoch {
    fn new(key: Arc<EpochKey>) -> Self {
        Self {
            key,
            window: ReplayWindow::new(),
        }
    }

    fn epoch(&self) -> u16 {
        self.key.epoch()
    }
}

/// What [`Opener::open`] found in one datagram.
#[derive(Debug)]
pub struct Opened {
    /// The application records, opened in place: plaintext ranges of the datagram.
    pub data: Received,
    /// Whole records (header included, untouched) that only the association can handle:
    /// handshake messages, change cipher spec, records of epochs without a key here. Hand
    /// them to [`crate::DtlsAssociation::handle_datagram`] on the thread that owns it.
    pub for_association: Received,
    /// The peer closed the association (an authentic close_notify or fatal alert); tell the
    /// association ([`crate::DtlsAssociation::peer_closed`]).
    pub closed: Option<CloseReason>,
    /// A record of a later epoch authenticated: the receive epoch moved on, and the
    /// association should derive the keys of the epochs after it (it also notices by itself
    /// in [`crate::DtlsAssociation::poll_timeout`]).
    pub advanced: bool,
}

/// The receiving direction of one association: replay windows and receive epochs, owned by
/// one thread. See the module documentation.
#[derive(Debug)]
pub struct Opener {
    shared: Arc<RxShared>,
    current: RxEpoch,
    /// Epochs `current + 1 ..`, in order, at most [`LOOKAHEAD`] (capacity reserved: advancing
    /// never allocates).
    ahead: Vec<RxEpoch>,
    /// The epoch before the current one, until the caller time it retires.
    previous: Option<(RxEpoch, Duration)>,
    generation_seen: u64,
    /// Counted since the last [`Self::flush_counts`].
    counts: RxCounts,
    /// Body length of the shortest valid protected record of the suite.
    min_sealed_body: usize,
}

impl Opener {
    pub(crate) fn new(shared: Arc<RxShared>, current: Arc<EpochKey>, window: ReplayWindow) -> Self {
        let min_sealed_body = shared.suite.overhead() - RECORD_HEADER_LEN;
        Self {
            shared,
            current: RxEpoch {
                key: current,
                window,
            },
            ahead: Vec::with_capacity(LOOKAHEAD),
            previous: None,
            generation_seen: u64::MAX,
            counts: RxCounts::default(),
            min_sealed_body,
        }
    }

    /// The shared state of this direction.
    pub fn shared(&self) -> &Arc<RxShared> {
        &self.shared
    }

    /// The current receive epoch.
    pub fn epoch(&self) -> u16 {
        self.current.epoch()
    }

    /// When the previous epoch's key retires, if one is kept.
    pub fn retire_at(&self) -> Option<Duration> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    /// Drops the previous epoch's key once its grace period is over.
    pub fn expire(&mut self, now: Duration) {
        if self.retire_at().is_some_and(|until| now >= until) {
            self.previous = None;
        }
    }

    /// Takes the keys the association published since the last look (one atomic load; the
    /// lock only when there are new ones).
    fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.generation_seen {
            return;
        }
        self.generation_seen = generation;
        let published = self.shared.ahead();
        for key in published.iter() {
            if self.ahead.len() >= LOOKAHEAD {
                break;
            }
            let last = self
                .ahead
                .last()
                .map_or(self.current.epoch(), RxEpoch::epoch);
            if key.epoch() > last {
                self.ahead.push(RxEpoch::new(key.clone()));
            }
        }
    }

    fn get_mut(&mut self, epoch: u16) -> Option<&mut RxEpoch> {
        if epoch == self.current.epoch() {
            return Some(&mut self.current);
        }
        if let Some((prev, _)) = self.previous.as_mut()
            && prev.epoch() == epoch
        {
            return Some(prev);
        }
        self.ahead.iter_mut().find(|e| e.epoch() == epoch)
    }

    fn holds(&self, epoch: u16) -> bool {
        epoch == self.current.epoch()
            || self
                .previous
                .as_ref()
                .is_some_and(|(p, _)| p.epoch() == epoch)
            || self.ahead.iter().any(|e| e.epoch() == epoch)
    }

    /// Makes `epoch` (one of the look-ahead epochs) current; the old current epoch stays
    /// until `now + RX_GRACE`, epochs skipped over are dropped. Allocates nothing.
    fn advance(&mut self, epoch: u16, now: Duration) {
        let Some(i) = self.ahead.iter().position(|e| e.epoch() == epoch) else {
            return;
        };
        self.ahead.drain(..i);
        let new_current = self.ahead.remove(0);
        let old = std::mem::replace(&mut self.current, new_current);
        self.previous = Some((old, now.saturating_add(RX_GRACE)));
        self.shared.epoch.store(u32::from(epoch), Ordering::Release);
        self.counts.rx_rekeys += 1;
    }

    /// Opens the records of one datagram in place: application records (their plaintext
    /// ranges in [`Opened::data`]) and alerts of the epochs it holds keys for; anything else is
    /// left for the association ([`Opened::for_association`]). Malformed, replayed and
    /// unauthentic records are counted and dropped. `now` is the caller's clock (the grace
    /// period of the previous epoch).
    pub fn open(&mut self, now: Duration, datagram: &mut [u8]) -> Opened {
        self.expire(now);
        self.refresh();
        let mut opened = Opened {
            data: Received::new(),
            for_association: Received::new(),
            closed: None,
            advanced: false,
        };
        let mut pos = 0;
        loop {
            let (h, r) = match next_record(datagram, pos) {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(_) => {
                    self.counts.malformed += 1;
                    break;
                }
            };
            pos = r.end;
            let record_layer = h.ctype == CT_APPLICATION_DATA || h.ctype == CT_ALERT;
            if !record_layer || !self.holds(h.epoch) {
                if record_layer && h.epoch >= 1 {
                    // A protected record of an epoch without a key (retired, or beyond the
                    // look-ahead): OpenSSL has none either, and would only buffer it.
                    self.counts.unknown_epoch += 1;
                } else if h.epoch >= 1 && h.len < self.min_sealed_body {
                    // OpenSSL 3.0 treats a protected record shorter than nonce + tag as fatal.
                    self.counts.malformed += 1;
                } else {
                    opened.for_association.push(r);
                }
                continue;
            }
            let Some(rx) = self.get_mut(h.epoch) else {
                continue;
            };
            if !rx.window.check(h.seq) {
                self.counts.replayed += 1;
                continue;
            }
            let Some(pt) = rx
                .key
                .key()
                .open(h.epoch_seq(), h.ctype, &mut datagram[r.clone()])
            else {
                self.counts.auth_failed += 1;
                continue;
            };
            rx.window.update(h.seq);
            if h.epoch > self.current.epoch() {
                // The peer moved on: this authentic record proves it.
                self.advance(h.epoch, now);
                opened.advanced = true;
            }
            let pt = r.start + pt.start..r.start + pt.end;
            if h.ctype == CT_APPLICATION_DATA {
                self.counts.records_opened += 1;
                opened.data.push(pt);
                continue;
            }
            match datagram.get(pt) {
                // close_notify (any level) or any fatal alert ends the association.
                Some([_, 0]) => opened.closed = Some(CloseReason::PeerClosed),
                Some([2, desc]) => opened.closed = Some(CloseReason::PeerAlert(*desc)),
                Some([_, _]) => {}
                _ => self.counts.malformed += 1,
            }
        }
        opened
    }

    /// What this opener counted since the last [`Self::flush_counts`].
    pub(crate) fn pending_counts(&self) -> RxCounts {
        self.counts
    }

    /// Adds what this opener counted since the last call to the shared counters (call once a
    /// batch; the association's [`crate::Stats`] read them).
    pub fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        if c == RxCounts::default() {
            return;
        }
        let s = &self.shared.counts;
        for (total, n) in [
            (&s.records_opened, c.records_opened),
            (&s.replayed, c.replayed),
            (&s.auth_failed, c.auth_failed),
            (&s.unknown_epoch, c.unknown_epoch),
            (&s.malformed, c.malformed),
            (&s.rx_rekeys, c.rx_rekeys),
        ] {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fastpath::derive_keys;
    use crate::record::CT_HANDSHAKE;

    const SUITE: RecordSuite = RecordSuite::ChaCha20Poly1305;

    /// The keys of `epoch` (both ends derive the same).
    fn key(epoch: u16) -> Arc<EpochKey> {
        let pair = derive_keys(SUITE, &[epoch as u8; 48], &[1; 32], &[2; 32]).unwrap();
        EpochKey::new(epoch, pair.client_write)
    }

    /// An opener at epoch 1 whose association keeps the look-ahead filled, as the control
    /// plane does.
    fn opener() -> Opener {
        let shared = Arc::new(RxShared::new(SUITE, 1));
        let o = Opener::new(shared, key(1), ReplayWindow::new());
        fill(&o.shared);
        o
    }

    fn fill(shared: &RxShared) {
        while let Some(e) = shared.wants() {
            shared.publish_ahead(key(e));
        }
    }

    fn record(epoch: u16, seq: u64, ctype: u8, payload: &[u8]) -> Vec<u8> {
        let off = SUITE.payload_offset();
        let mut rec = vec![0u8; SUITE.overhead() + payload.len()];
        rec[off..off + payload.len()].copy_from_slice(payload);
        let es = (u64::from(epoch) << 48) | seq;
        let n = key(epoch)
            .key()
            .seal(es, ctype, &mut rec, payload.len())
            .unwrap();
        rec.truncate(n);
        rec
    }

    fn data(epoch: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
        record(epoch, seq, CT_APPLICATION_DATA, payload)
    }

    /// Opens `datagram` and returns the plaintexts.
    fn open(o: &mut Opener, now: Duration, mut datagram: Vec<u8>) -> Vec<Vec<u8>> {
        let opened = o.open(now, &mut datagram);
        opened.data.iter().map(|r| datagram[r].to_vec()).collect()
    }

    fn counts(o: &mut Opener) -> RxCounts {
        o.flush_counts();
        o.shared.counts()
    }

    #[test]
    fn each_record_opens_once_within_the_window() {
        let mut o = opener();
        let t = Duration::ZERO;
        for seq in [5u64, 3, 4, 900] {
            assert_eq!(
                open(&mut o, t, data(1, seq, &[seq as u8; 20])),
                vec![vec![seq as u8; 20]]
            );
        }
        // Replays and records behind the window are dropped.
        assert!(open(&mut o, t, data(1, 4, &[4; 20])).is_empty());
        assert!(open(&mut o, t, data(1, 900, &[0; 20])).is_empty());
        let mut late = data(1, 2000, &[1; 20]);
        assert_eq!(o.open(t, &mut late).data.len(), 1);
        assert!(open(&mut o, t, data(1, 3, &[3; 20])).is_empty());
        // A forgery neither opens nor moves the window.
        let mut forged = data(1, 2001, &[1; 20]);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(open(&mut o, t, forged).is_empty());
        assert_eq!(open(&mut o, t, data(1, 2001, &[9; 20])), vec![vec![9; 20]]);
        let c = counts(&mut o);
        assert_eq!(
            (c.records_opened, c.replayed, c.auth_failed),
            (6, 3, 1),
            "{c:?}"
        );
    }

    #[test]
    fn an_authentic_record_of_a_later_epoch_switches_and_the_old_one_has_a_grace_period() {
        let mut o = opener();
        let t = Duration::from_secs(100);
        assert_eq!(open(&mut o, t, data(1, 7, b"one")), vec![b"one".to_vec()]);
        // A forged record of epoch 2 does not move the epoch.
        let mut forged = data(2, 0, b"two");
        forged[RECORD_HEADER_LEN] ^= 1;
        let opened = o.open(t, &mut forged);
        assert!(opened.data.is_empty() && !opened.advanced);
        assert_eq!(o.epoch(), 1);
        // The authentic one does; the shared state says so.
        let mut two = data(2, 0, b"two");
        let opened = o.open(t, &mut two);
        assert!(opened.advanced);
        assert_eq!((o.epoch(), o.shared.epoch()), (2, 2));
        // A late record of epoch 1 still opens (once) during the grace period.
        assert_eq!(open(&mut o, t, data(1, 8, b"late")), vec![b"late".to_vec()]);
        assert!(open(&mut o, t, data(1, 8, b"late")).is_empty());
        assert_eq!(o.retire_at(), Some(t + RX_GRACE));
        // After it, epoch 1 is unknown.
        let after = t + RX_GRACE;
        assert!(open(&mut o, after, data(1, 9, b"too late")).is_empty());
        assert_eq!(open(&mut o, after, data(2, 1, b"on")), vec![b"on".to_vec()]);
        let c = counts(&mut o);
        assert_eq!(
            (c.rx_rekeys, c.unknown_epoch, c.replayed, c.auth_failed),
            (1, 1, 1, 1),
            "{c:?}"
        );
    }

    #[test]
    fn epochs_beyond_the_look_ahead_wait_for_the_association_to_derive_them() {
        let mut o = opener();
        let t = Duration::ZERO;
        // Epochs 2..=5 are held; 6 is not.
        assert!(open(&mut o, t, data(6, 0, b"six")).is_empty());
        assert_eq!(counts(&mut o).unknown_epoch, 1);
        // Skipping to epoch 5 drops 2..4; the association publishes 6..=9 and the opener
        // takes them with its next datagram.
        assert_eq!(open(&mut o, t, data(5, 0, b"five")), vec![b"five".to_vec()]);
        assert_eq!(o.shared.wants(), Some(6));
        fill(&o.shared);
        assert_eq!(o.shared.wants(), None);
        let before = o.ahead.as_ptr();
        assert_eq!(open(&mut o, t, data(9, 0, b"nine")), vec![b"nine".to_vec()]);
        assert_eq!(o.ahead.as_ptr(), before, "advancing allocates nothing");
        assert!(open(&mut o, t, data(4, 1, b"four")).is_empty());
    }

    #[test]
    fn handshake_records_and_alerts_are_told_apart() {
        let mut o = opener();
        let t = Duration::ZERO;
        // A retransmitted handshake message (epoch 1, protected) and an epoch-0 record are
        // for the association, untouched; an app record next to them still opens.
        let hs = record(1, 3, CT_HANDSHAKE, &[20; 24]);
        let mut datagram = hs.clone();
        datagram.extend_from_slice(&data(1, 4, b"data"));
        let mut plain = vec![CT_HANDSHAKE, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2];
        datagram.append(&mut plain);
        let opened = o.open(t, &mut datagram);
        let passed: Vec<_> = opened.for_association.iter().collect();
        assert_eq!(passed.len(), 2);
        assert_eq!(&datagram[passed[0].clone()], &hs[..]);
        assert_eq!(datagram[passed[1].start], CT_HANDSHAKE);
        assert_eq!(opened.data.len(), 1);
        // A too-short protected handshake record never reaches OpenSSL.
        let mut short = record(1, 5, CT_HANDSHAKE, &[]);
        short.truncate(RECORD_HEADER_LEN + 4);
        short[11..13].copy_from_slice(&4u16.to_be_bytes());
        assert!(o.open(t, &mut short).for_association.is_empty());
        // A warning alert is ignored; close_notify closes.
        let mut warning = record(1, 6, CT_ALERT, &[1, 90]);
        assert!(o.open(t, &mut warning).closed.is_none());
        let mut close = record(1, 7, CT_ALERT, &[1, 0]);
        assert_eq!(o.open(t, &mut close).closed, Some(CloseReason::PeerClosed));
        let mut fatal = record(1, 8, CT_ALERT, &[2, 40]);
        assert_eq!(
            o.open(t, &mut fatal).closed,
            Some(CloseReason::PeerAlert(40))
        );
        // A forged alert closes nothing.
        let mut forged = record(1, 9, CT_ALERT, &[2, 40]);
        forged[RECORD_HEADER_LEN] ^= 1;
        assert!(o.open(t, &mut forged).closed.is_none());
    }

    /// The opener moves to another thread with its windows: what was seen before is still
    /// refused there, and its counts reach the shared state.
    #[test]
    fn an_opener_keeps_its_windows_across_threads() {
        let mut o = opener();
        let t = Duration::ZERO;
        assert_eq!(open(&mut o, t, data(1, 1, b"a")).len(), 1);
        let shared = o.shared.clone();
        let handle = std::thread::spawn(move || {
            let replay = open(&mut o, t, data(1, 1, b"a"));
            let fresh = open(&mut o, t, data(1, 2, b"b"));
            o.flush_counts();
            (replay.len(), fresh.len())
        });
        assert_eq!(handle.join().unwrap(), (0, 1));
        let c = shared.counts();
        // The first record was counted before the move and flushed on the other thread.
        assert_eq!((c.records_opened, c.replayed), (2, 1), "{c:?}");
    }
}
