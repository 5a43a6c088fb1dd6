//! Writing an issuer's lease table off the main loop (`docs/dynamic-mesh.md` §1.7).
//!
//! Every grant and renewal waits until the table that records it is on disk (temporary file,
//! fsync, rename, directory fsync). On the loop, a slow disk stalled everything the loop
//! serves (the control plane, links before their session, and with `workers: 1` the whole
//! dataplane), and an fsync longer than a joiner's Join timeout (2 s) could keep joiners from
//! ever binding. The
//! `lease-writer` thread does the writing instead: the loop hands it the newest table
//! ([`LeaseWriter::submit`], returns at once; a newer table replaces one not yet started, so
//! a burst costs one write in flight plus one), and hears back through its channel when a
//! generation is durable ([`WriterReport::Persisted`], then `Node::leases_persisted`). A
//! failed write is retried by the thread with a backoff (100 ms doubling to 10 s), or
//! replaced by a newer table, so unanswered grants do not wait for the next change.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use connectopus_core::lease_table::PersistedLeases;

/// Sleeps this long before each table write (tests only: a slow disk).
pub(crate) const WRITE_DELAY_ENV: &str = "CONNECTOPUS_TEST_LEASE_WRITE_DELAY_MS";

/// First wait before a failed write is tried again; it doubles up to [`RETRY_MAX`].
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between attempts of a failing write.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the writer tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriterReport {
    /// The table of this generation (and so every older one) is on disk.
    Persisted(u64),
    /// Writing this generation failed; the thread tries again after `retry_in` (or writes a
    /// newer table).
    Failed {
        generation: u64,
        error: String,
        retry_in: Duration,
    },
}

/// Encodes a table as the file holds it.
pub(crate) type EncodeFn = fn(&PersistedLeases) -> std::io::Result<Vec<u8>>;
/// Writes one encoded table to its path (atomically, durably).
pub(crate) type WriteFn = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send>;
/// Hands a report to the loop; false once the loop is gone.
pub(crate) type ReportFn = Box<dyn Fn(WriterReport) -> bool + Send>;

#[derive(Debug, Default)]
struct Slot {
    /// The newest table not yet taken by the thread.
    newest: Option<(u64, Arc<PersistedLeases>)>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
}

/// The loop's handle on the `lease-writer` thread; the thread ends when this is dropped.
#[derive(Debug)]
pub(crate) struct LeaseWriter {
    shared: Arc<Shared>,
    /// Tables handed to the thread.
    pub(crate) submitted: u64,
}

impl LeaseWriter {
    /// Starts the thread that writes with `write` and reports with `report`.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub(crate) fn spawn(encode: EncodeFn, write: WriteFn, report: ReportFn) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || run(&thread_shared, encode, write, &report))
            .context("starting the lease-writer thread")?;
        Ok(Self {
            shared,
            submitted: 0,
        })
    }

    /// The default writer for `path`: [`super::lease_file::write_atomically`], after the
    /// test delay of [`WRITE_DELAY_ENV`] if set.
    pub(crate) fn file_writer(path: PathBuf) -> WriteFn {
        let delay = std::env::var(WRITE_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        Box::new(move |bytes: &[u8]| {
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            super::lease_file::write_atomically(&path, bytes)
        })
    }

    /// Hands the thread a table to write; a newer generation replaces one it has not taken
    /// yet. Never blocks on the disk.
    pub(crate) fn submit(&mut self, generation: u64, table: Arc<PersistedLeases>) {
        self.submitted += 1;
        let Ok(mut slot) = self.shared.slot.lock() else {
            return;
        };
        if slot.newest.as_ref().is_none_or(|(g, _)| *g < generation) {
            slot.newest = Some((generation, table));
        }
        drop(slot);
        self.shared.wake.notify_one();
    }
}

impl Drop for LeaseWriter {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.shared.slot.lock() {
            slot.stop = true;
        }
        self.shared.wake.notify_one();
    }
}

/// The thread: takes the newest table, writes it, reports; retries a failure with a backoff
/// unless a newer table arrives meanwhile.
fn run(shared: &Shared, encode: EncodeFn, mut write: WriteFn, report: &ReportFn) {
    // A table that failed to be written, and how long to wait before the next attempt.
    let mut failed: Option<(u64, Arc<PersistedLeases>, Duration)> = None;
    loop {
        let (generation, table) = {
            let Ok(mut slot) = shared.slot.lock() else {
                return;
            };
            loop {
                if slot.stop {
                    return;
                }
                if let Some(newest) = slot.newest.take() {
                    break newest;
                }
                match &failed {
                    None => {
                        slot = match shared.wake.wait(slot) {
                            Ok(slot) => slot,
                            Err(_) => return,
                        };
                    }
                    Some((generation, table, backoff)) => {
                        let (next, timeout) = match shared.wake.wait_timeout(slot, *backoff) {
                            Ok(woken) => woken,
                            Err(_) => return,
                        };
                        slot = next;
                        if timeout.timed_out() && slot.newest.is_none() && !slot.stop {
                            break (*generation, Arc::clone(table));
                        }
                    }
                }
            }
        };
        let backoff = match &failed {
            Some((g, _, backoff)) if *g == generation => (*backoff * 2).min(RETRY_MAX),
            _ => RETRY_FIRST,
        };
        match encode(&table).and_then(|bytes| write(&bytes)) {
            Ok(()) => {
                failed = None;
                if !report(WriterReport::Persisted(generation)) {
                    return;
                }
            }
            Err(error) => {
                let retry_in = match &failed {
                    Some((g, _, _)) if *g == generation => backoff,
                    _ => RETRY_FIRST,
                };
                failed = Some((generation, table, retry_in));
                if !report(WriterReport::Failed {
                    generation,
                    error: error.to_string(),
                    retry_in,
                }) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use connectopus_wire::Prefix;

    use super::*;

    fn table(next_epoch: u64) -> Arc<PersistedLeases> {
        Arc::new(PersistedLeases {
            pool: Prefix::new("fd00:cafe:0:e1::".parse().unwrap(), 112).unwrap(),
            next_epoch,
            leases: Vec::new(),
            hold_down: Vec::new(),
            quarantine_until_unix_ms: None,
            written_unix_ms: 1,
        })
    }

    fn encode(t: &PersistedLeases) -> std::io::Result<Vec<u8>> {
        Ok(t.next_epoch.to_be_bytes().to_vec())
    }

    fn reporter() -> (ReportFn, mpsc::Receiver<WriterReport>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(move |r| tx.send(r).is_ok()), rx)
    }

    #[test]
    fn a_slow_write_never_blocks_submit_and_the_newest_table_wins() {
        // The first write blocks until the test lets it go; meanwhile three newer tables come.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (written_tx, written_rx) = mpsc::channel::<u64>();
        let release_rx = Mutex::new(release_rx);
        let write: WriteFn = Box::new(move |bytes: &[u8]| {
            let _ = release_rx.lock().unwrap().recv();
            let epoch = u64::from_be_bytes(bytes.try_into().unwrap());
            written_tx.send(epoch).unwrap();
            Ok(())
        });
        let (report, reports) = reporter();
        let mut writer = LeaseWriter::spawn(encode, write, report).unwrap();
        writer.submit(1, table(10));
        // The thread takes generation 1 and blocks in the write.
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        for g in 2..=4 {
            writer.submit(g, table(10 + g));
        }
        // An older generation never replaces a newer one.
        writer.submit(3, table(99));
        // Submitting took no disk time (the write is still blocked); nothing was reported.
        assert!(reports.try_recv().is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(
            reports.recv_timeout(Duration::from_secs(10)),
            Ok(WriterReport::Persisted(1))
        );
        assert_eq!(
            reports.recv_timeout(Duration::from_secs(10)),
            Ok(WriterReport::Persisted(4))
        );
        // Two writes for five tables: the first, and the newest (generations 2 and 3 were
        // replaced before the thread took them).
        assert_eq!(written_rx.try_iter().collect::<Vec<_>>(), vec![10, 14]);
        assert_eq!(writer.submitted, 5);
    }

    #[test]
    fn a_failed_write_is_retried_with_a_backoff_without_a_new_table() {
        // The disk fails three times, then works.
        let attempts = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let seen = Arc::clone(&attempts);
        let write: WriteFn = Box::new(move |_: &[u8]| {
            let mut a = seen.lock().unwrap();
            a.push(Instant::now());
            if a.len() <= 3 {
                Err(std::io::Error::other("disk full"))
            } else {
                Ok(())
            }
        });
        let (report, reports) = reporter();
        let mut writer = LeaseWriter::spawn(encode, write, report).unwrap();
        writer.submit(7, table(1));
        let mut retries = Vec::new();
        loop {
            match reports.recv_timeout(Duration::from_secs(20)).unwrap() {
                WriterReport::Failed {
                    generation,
                    retry_in,
                    error,
                } => {
                    assert_eq!(generation, 7);
                    assert!(error.contains("disk full"));
                    retries.push(retry_in);
                }
                WriterReport::Persisted(generation) => {
                    assert_eq!(generation, 7);
                    break;
                }
            }
        }
        // Nothing new was submitted: the thread retried by itself, waiting longer each time.
        assert_eq!(retries, vec![RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4]);
        let a = attempts.lock().unwrap();
        assert_eq!(a.len(), 4);
        for (i, pair) in a.windows(2).enumerate() {
            assert!(
                pair[1] - pair[0] >= retries[i],
                "attempt {} came early",
                i + 2
            );
        }
    }
}
