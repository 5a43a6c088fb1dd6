//! The sending direction of an association, shared by every thread that seals for it
//! (docs/dtls.md, "Threads and sequence numbers").
//!
//! - The keys of each epoch are immutable ([`EpochKey`], behind an `Arc`); the association
//!   (the control plane) derives the next epoch's key ahead and publishes it.
//! - The send counter is one `AtomicU64`, `epoch << 48 | sequence`. A sealer reserves the
//!   numbers of a whole batch with one `fetch_add(k)`: consecutive numbers, never handed out
//!   twice, nothing locked.
//! - A reservation that crosses the epoch's record limit seals nothing: under the key lock the
//!   first thread to get there makes the published next key current and stores
//!   `(epoch + 1) << 48` into the counter; everyone retries. A number fetched before that store
//!   belongs to the old epoch, one fetched after it to the new one, so no (epoch, sequence) pair
//!   repeats. Numbers that crossed the limit are skipped, never reused (the receiver's window
//!   takes gaps).
//! - Each [`Sealer`] (one per thread and association) caches the `Arc` of the epoch it sealed
//!   last, so the lock is taken only when the epoch changes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::DtlsError;
use crate::fastpath::{DirectionKey, RecordSuite};
use crate::record::{CT_APPLICATION_DATA, MAX_SEQ};

/// Sequence numbers per epoch (48 bits).
const SEQ_SPACE: u64 = MAX_SEQ + 1;

/// How often one reservation retries after losing a race with an epoch switch.
const MAX_ATTEMPTS: usize = 8;

/// The immutable sending key of one epoch.
#[derive(Debug)]
pub struct EpochKey {
    epoch: u16,
    key: DirectionKey,
}

impl EpochKey {
    pub(crate) fn new(epoch: u16, key: DirectionKey) -> Arc<Self> {
        Arc::new(Self { epoch, key })
    }

    /// The epoch this key seals in.
    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    pub(crate) fn key(&self) -> &DirectionKey {
        &self.key
    }
}

/// The published keys: the one the counter's epoch seals with, the one before it (a sealer
/// that reserved just before a switch still finds it) and the next one, derived ahead.
#[derive(Debug)]
struct Published {
    previous: Option<Arc<EpochKey>>,
    current: Arc<EpochKey>,
    next: Option<Arc<EpochKey>>,
}

/// The sending direction of one association, shared by its sealers.
#[derive(Debug)]
pub struct TxShared {
    suite: RecordSuite,
    /// `epoch << 48 | next sequence number`.
    counter: AtomicU64,
    /// Records an epoch may seal before the next one starts; [`SEQ_SPACE`] when it may not
    /// switch (no key updates, or no next key can be derived): then crossing it ends the
    /// association.
    limit: AtomicU64,
    keys: Mutex<Published>,
    /// The sequence space of the last epoch ran out: nothing seals any more.
    exhausted: AtomicBool,
    /// Epoch switches made (by count or by the clock).
    switches: AtomicU64,
}

impl TxShared {
    pub(crate) fn new(
        suite: RecordSuite,
        current: Arc<EpochKey>,
        next_seq: u64,
        limit: u64,
    ) -> Self {
        let epoch = current.epoch;
        let shared = Self {
            suite,
            counter: AtomicU64::new(u64::from(epoch) << 48),
            limit: AtomicU64::new(limit.min(SEQ_SPACE)),
            keys: Mutex::new(Published {
                previous: None,
                current,
                next: None,
            }),
            exhausted: AtomicBool::new(false),
            switches: AtomicU64::new(0),
        };
        shared.set_next_seq(next_seq);
        shared
    }

    fn keys(&self) -> MutexGuard<'_, Published> {
        // A panic while holding this lock leaves consistent data (every write is one
        // assignment), so a poisoned lock is still usable.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record format.
    pub fn suite(&self) -> RecordSuite {
        self.suite
    }

    /// The epoch records are sealed in now.
    pub fn epoch(&self) -> u16 {
        self.keys().current.epoch
    }

    /// Epoch switches so far.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Whether the next epoch's key is published.
    pub(crate) fn has_next(&self) -> bool {
        self.keys().next.is_some()
    }

    /// Publishes the key of the epoch after the current one.
    pub(crate) fn publish_next(&self, key: Arc<EpochKey>) {
        let mut keys = self.keys();
        if keys.current.epoch.checked_add(1) == Some(key.epoch) {
            keys.next = Some(key);
        }
    }

    /// No further epoch can be derived: the current one runs to the end of its sequence
    /// space.
    pub(crate) fn set_stuck(&self) {
        self.limit.store(SEQ_SPACE, Ordering::Release);
    }

    /// Whether the sequence space ran out.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }

    /// Moves to the published next epoch now (the clock's trigger); false if there is none.
    pub(crate) fn switch_now(&self) -> bool {
        let mut keys = self.keys();
        self.switch_locked(&mut keys)
    }

    fn switch_locked(&self, keys: &mut Published) -> bool {
        let Some(next) = keys.next.take() else {
            return false;
        };
        let epoch = next.epoch;
        keys.previous = Some(std::mem::replace(&mut keys.current, next));
        self.counter
            .store(u64::from(epoch) << 48, Ordering::Release);
        self.switches.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sets the next sequence number of the current epoch (tests of the key update only).
    pub(crate) fn set_next_seq(&self, seq: u64) {
        let epoch = self.keys().current.epoch;
        if seq > MAX_SEQ {
            self.exhausted.store(true, Ordering::Release);
            return;
        }
        self.counter
            .store((u64::from(epoch) << 48) | seq, Ordering::Release);
    }

    /// Finds the key of `epoch` among the published ones (the current and the previous).
    fn key_of(&self, epoch: u16) -> Option<Arc<EpochKey>> {
        let keys = self.keys();
        if keys.current.epoch == epoch {
            return Some(keys.current.clone());
        }
        keys.previous.as_ref().filter(|k| k.epoch == epoch).cloned()
    }
}

/// One thread's handle on an association's sending direction: reserves sequence numbers and
/// seals records with them. Cheap to create ([`crate::DtlsAssociation::sealer`]); keeps the
/// key of the epoch it sealed last.
#[derive(Debug, Clone)]
pub struct Sealer {
    shared: Arc<TxShared>,
    cached: Option<Arc<EpochKey>>,
}

/// `count` consecutive sequence numbers of one epoch, reserved for one batch of records.
#[derive(Debug)]
pub struct Reservation<'a> {
    key: &'a EpochKey,
    first: u64,
    count: u64,
}

impl Sealer {
    /// A sealer of the sending direction `shared`.
    pub fn new(shared: Arc<TxShared>) -> Self {
        Self {
            shared,
            cached: None,
        }
    }

    /// The shared sending direction.
    pub fn shared(&self) -> &Arc<TxShared> {
        &self.shared
    }

    /// Bytes before the payload in a record.
    pub fn payload_offset(&self) -> usize {
        self.shared.suite.payload_offset()
    }

    /// Bytes a record adds to its payload.
    pub fn overhead(&self) -> usize {
        self.shared.suite.overhead()
    }

    /// Reserves `count` (at least 1) consecutive sequence numbers of one epoch with one
    /// atomic add; moves to the next epoch when the current one reached its record limit.
    ///
    /// # Errors
    /// [`DtlsError::SequenceExhausted`] when the sequence space ran out (the association must
    /// close); [`DtlsError::Internal`] when the next epoch's key is not published yet (the
    /// control plane derives it right after each switch; the batch is dropped).
    pub fn reserve(&mut self, count: usize) -> Result<Reservation<'_>, DtlsError> {
        let k = count.max(1) as u64;
        let shared = &*self.shared;
        for _ in 0..MAX_ATTEMPTS {
            if shared.is_exhausted() {
                return Err(DtlsError::SequenceExhausted);
            }
            let value = shared.counter.fetch_add(k, Ordering::AcqRel);
            let (epoch, seq) = ((value >> 48) as u16, value & MAX_SEQ);
            let limit = shared.limit.load(Ordering::Acquire);
            if seq + k <= limit {
                if self.cached.as_ref().is_none_or(|c| c.epoch != epoch) {
                    match shared.key_of(epoch) {
                        Some(key) => self.cached = Some(key),
                        None if epoch > shared.epoch() => {
                            // Only a counter carried past the end of the sequence space can be
                            // ahead of the published epoch.
                            shared.exhausted.store(true, Ordering::Release);
                            return Err(DtlsError::SequenceExhausted);
                        }
                        // Two switches since the reservation: skip these numbers.
                        None => continue,
                    }
                }
                let key = self
                    .cached
                    .as_deref()
                    .ok_or(DtlsError::Internal("no key"))?;
                return Ok(Reservation {
                    key,
                    first: seq,
                    count: k,
                });
            }
            if limit >= SEQ_SPACE {
                shared.exhausted.store(true, Ordering::Release);
                return Err(DtlsError::SequenceExhausted);
            }
            let mut keys = shared.keys();
            if keys.current.epoch != epoch {
                // Someone else switched already.
                continue;
            }
            if !shared.switch_locked(&mut keys) {
                return Err(DtlsError::Internal("the next epoch's key is not ready"));
            }
        }
        Err(DtlsError::Internal(
            "sequence reservation kept losing races",
        ))
    }
}

impl Reservation<'_> {
    /// The epoch of the reserved numbers.
    pub fn epoch(&self) -> u16 {
        self.key.epoch
    }

    /// The first reserved sequence number.
    pub fn first_seq(&self) -> u64 {
        self.first
    }

    /// How many numbers are reserved.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Seals the application payload at `rec[payload_offset..][..len]` in place as the
    /// `i`-th record of the reservation; returns the record length.
    ///
    /// # Errors
    /// `i` is outside the reservation, the payload is too large or `rec` too small.
    pub fn seal(&self, i: usize, rec: &mut [u8], len: usize) -> Result<usize, DtlsError> {
        if i as u64 >= self.count {
            return Err(DtlsError::Internal("record outside its reservation"));
        }
        self.seal_as(i, CT_APPLICATION_DATA, rec, len)
    }

    pub(crate) fn seal_as(
        &self,
        i: usize,
        ctype: u8,
        rec: &mut [u8],
        len: usize,
    ) -> Result<usize, DtlsError> {
        if len > crate::MAX_PAYLOAD {
            return Err(DtlsError::PayloadTooLarge(len));
        }
        let suite = self.key.key().suite();
        let need = suite.overhead() + len;
        if rec.len() < need {
            return Err(DtlsError::BufferTooSmall {
                need,
                have: rec.len(),
            });
        }
        let es = (u64::from(self.key.epoch) << 48) | (self.first + i as u64);
        self.key.key().seal(es, ctype, rec, len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::fastpath::derive_keys;

    const SUITE: RecordSuite = RecordSuite::ChaCha20Poly1305;

    fn key(epoch: u16) -> Arc<EpochKey> {
        let pair = derive_keys(SUITE, &[epoch as u8; 48], &[1; 32], &[2; 32]).unwrap();
        EpochKey::new(epoch, pair.client_write)
    }

    /// Publishes each next epoch's key as soon as the previous one became current, like the
    /// association does on the control plane.
    fn keep_next_published(shared: &TxShared, last_epoch: u16) {
        let epoch = shared.epoch();
        if epoch < last_epoch && !shared.has_next() {
            shared.publish_next(key(epoch + 1));
        }
    }

    /// Several threads seal batches concurrently through a small record limit, so the epoch
    /// switches many times under them: every (epoch, sequence) pair that sealed is unique,
    /// every record carries what its reservation said, and batches never straddle epochs.
    #[test]
    fn concurrent_sealers_never_repeat_an_epoch_and_sequence_pair() {
        const THREADS: usize = 4;
        const BATCHES: usize = 2_000;
        const LAST_EPOCH: u16 = 10_000;
        const LIMIT: u64 = 2_000;
        let shared = Arc::new(TxShared::new(SUITE, key(1), 0, LIMIT));
        shared.publish_next(key(2));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    keep_next_published(&shared, LAST_EPOCH);
                    std::thread::yield_now();
                }
            })
        };
        let sealers: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut sealer = Sealer::new(shared.clone());
                std::thread::spawn(move || {
                    let mut pairs = Vec::new();
                    let mut rec = vec![0u8; 64 + SUITE.overhead()];
                    for b in 0..BATCHES {
                        let k = 1 + (t + b) % 45;
                        // The next key may not be published yet: wait for the publisher.
                        let reservation = loop {
                            match sealer.reserve(k) {
                                Ok(r) => break r,
                                Err(DtlsError::Internal(_)) => std::thread::yield_now(),
                                Err(e) => panic!("{e}"),
                            }
                        };
                        for i in 0..reservation.count() {
                            let n = reservation.seal(i, &mut rec, 64).unwrap();
                            let (epoch, seq) = header(&rec[..n]);
                            assert_eq!(epoch, reservation.epoch());
                            assert_eq!(seq, reservation.first_seq() + i as u64);
                            pairs.push((epoch, seq));
                        }
                    }
                    pairs
                })
            })
            .collect();
        let mut seen = HashSet::new();
        let mut total = 0;
        for s in sealers {
            for p in s.join().unwrap() {
                assert!(seen.insert(p), "{p:?} sealed twice");
                total += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
        // Every batch sealed: 4 × 2,000 batches of 1..=45 records, over 2,000 per epoch.
        assert!(total > 80_000, "{total}");
        let epochs: HashSet<u16> = seen.iter().map(|(e, _)| *e).collect();
        assert!(
            epochs.len() > 40,
            "the epoch switched under the sealers: {}",
            epochs.len()
        );
        assert!(
            seen.iter().all(|(_, s)| *s < LIMIT),
            "no record beyond the limit"
        );
    }

    /// The clock's switch, racing with sealers, keeps pairs unique too.
    #[test]
    fn a_switch_by_the_clock_during_sealing_repeats_nothing() {
        let shared = Arc::new(TxShared::new(SUITE, key(1), 7, 1 << 28));
        let switcher = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for _ in 0..30 {
                    keep_next_published(&shared, 100);
                    assert!(shared.switch_now());
                    std::thread::yield_now();
                }
            })
        };
        let sealers: Vec<_> = (0..3)
            .map(|_| {
                let mut sealer = Sealer::new(shared.clone());
                std::thread::spawn(move || {
                    let mut rec = vec![0u8; 16 + SUITE.overhead()];
                    let mut pairs = Vec::new();
                    for _ in 0..3_000 {
                        let r = sealer.reserve(3).unwrap();
                        for i in 0..r.count() {
                            let n = r.seal(i, &mut rec, 16).unwrap();
                            pairs.push(header(&rec[..n]));
                        }
                    }
                    pairs
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for s in sealers {
            for p in s.join().unwrap() {
                assert!(seen.insert(p), "{p:?} sealed twice");
            }
        }
        switcher.join().unwrap();
        assert_eq!(shared.epoch(), 31);
    }

    #[test]
    fn the_end_of_the_sequence_space_is_final() {
        let shared = Arc::new(TxShared::new(SUITE, key(1), MAX_SEQ - 1, u64::MAX));
        let mut sealer = Sealer::new(shared.clone());
        assert_eq!(sealer.reserve(2).unwrap().first_seq(), MAX_SEQ - 1);
        assert!(matches!(
            sealer.reserve(1),
            Err(DtlsError::SequenceExhausted)
        ));
        assert!(shared.is_exhausted());
        assert!(matches!(
            sealer.reserve(1),
            Err(DtlsError::SequenceExhausted)
        ));
    }

    #[test]
    fn without_the_next_key_a_crossing_batch_seals_nothing() {
        let shared = Arc::new(TxShared::new(SUITE, key(1), 8, 10));
        let mut sealer = Sealer::new(shared.clone());
        assert!(sealer.reserve(3).is_err());
        shared.publish_next(key(2));
        let r = sealer.reserve(3).unwrap();
        assert_eq!((r.epoch(), r.first_seq()), (2, 0));
    }

    fn header(rec: &[u8]) -> (u16, u64) {
        let epoch = u16::from_be_bytes([rec[3], rec[4]]);
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&rec[5..11]);
        (epoch, u64::from_be_bytes(seq))
    }
}
