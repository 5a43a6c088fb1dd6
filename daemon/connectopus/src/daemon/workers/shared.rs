//! What the control plane shares with the worker threads (the published snapshot and link
//! table, the stop flag), what each thread shows `status`, and the door of its channel.

use super::*;

/// A value the control plane replaces whole and workers pick up once per turn.
#[derive(Debug)]
pub(super) struct Slot<T> {
    generation: AtomicU64,
    value: Mutex<Arc<T>>,
}

impl<T> Slot<T> {
    pub(super) fn new(value: Arc<T>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            value: Mutex::new(value),
        }
    }

    pub(super) fn publish(&self, value: Arc<T>) {
        *self
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The value, if it changed since generation `seen` (which it updates).
    pub(super) fn newer(&self, seen: &mut u64) -> Option<Arc<T>> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        *seen = generation;
        Some(
            self.value
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// What the control plane shares with the worker threads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) snapshot: Slot<ForwardingSnapshot>,
    pub(super) links: Slot<LinkTable>,
    /// The DTLS links by `(endpoint, peer)`, also while they shake hands (the CPU-local
    /// receive; published with the link table).
    pub(super) dtls_peers: Slot<HashMap<(usize, SocketAddr), LinkId>>,
    pub(super) stop: AtomicBool,
    /// The node has TUN devices besides its own (namespaces, `tun_devs`): packets from the TUN
    /// to a local address go to the main loop, which writes them to the namespace's device
    /// (`Daemon::hairpin`).
    pub(super) hairpin: AtomicBool,
    /// The node's eBPF fast path is on: its peers may send super-packets and partial checksums
    /// on plaintext udp links (`super_packets`).
    pub(super) fastpath: AtomicBool,
    /// The MTU of the TUN device the fast path serves (0: off).
    pub(super) tun_mtu: AtomicU32,
}

/// What `status` shows of a worker thread, kept up to date by the thread.
#[derive(Debug, Clone, Default)]
pub(in crate::daemon) struct ThreadStatus {
    pub(in crate::daemon) io_uring: String,
    /// `None` while it runs; why it stopped.
    pub(in crate::daemon) stopped: Option<String>,
    /// Its ring and TUN queue descriptor are gone: nothing of it reads its TUN queue any
    /// more (a failing thread goes on reading while it gives its TCP links back).
    pub(in crate::daemon) queue_released: bool,
    pub(in crate::daemon) udp_gso: String,
    /// Reads from its TUN queue (updated with each report).
    pub(in crate::daemon) tun_reads: u64,
    /// Packets handed to the main loop (updated with each report).
    pub(in crate::daemon) handed_to_main: u64,
    /// DTLS records it opened (updated with each report).
    pub(in crate::daemon) records_opened: u64,
    /// Links whose datagrams it receives.
    pub(in crate::daemon) receive_links: u64,
    /// Received messages handed to the main loop (hellos, the routing stream, handshake).
    pub(in crate::daemon) received_for_main: u64,
    /// The most pool buffers in use at once (updated with each report).
    pub(in crate::daemon) buffers_peak: u64,
    /// Pool buffers that may be resident (updated with each report).
    pub(in crate::daemon) buffers_touched: u64,
    /// Plaintext udp data datagrams it received (updated with each report).
    pub(in crate::daemon) datagrams_received: u64,
    /// The thread's id (Linux `gettid`), set when it starts.
    pub(in crate::daemon) thread_id: u64,
    /// TCP/TLS links it reads and writes.
    pub(in crate::daemon) tcp_links: u64,
    /// Reads from those links' streams (updated with each report).
    pub(in crate::daemon) tcp_reads: u64,
    /// How its ring waits (busy polling, idle wake-ups).
    pub(in crate::daemon) waiting: uring_io::Waiting,
    /// `CPU n` when pinned for the CPU-local data path, else why not.
    pub(in crate::daemon) cpu: String,
}

/// The door of a worker thread's channel: open while the thread takes messages. The thread
/// closes it (under the lock) before its last look at the channel, so whatever the main loop
/// sent through an open door is taken, and what it could not send stays with it (a TCP link's
/// messages wait on the main loop until the link comes back, `Daemon::hold_for_tcp`).
#[derive(Debug, Default)]
pub(super) struct Door {
    open: Mutex<bool>,
}

impl Door {
    pub(super) fn opened() -> Self {
        Self {
            open: Mutex::new(true),
        }
    }

    /// Runs `send` while the door is open; false (nothing sent) once it is closed.
    pub(super) fn send_if_open(&self, send: impl FnOnce() -> bool) -> bool {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *open && send()
    }

    pub(super) fn close(&self) {
        *self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the main loop sends through an open door reaches the thread's channel; once the
    /// thread closed it, nothing is sent and the message stays with the sender.
    #[test]
    fn a_closed_door_sends_nothing() {
        let door = Door::opened();
        let (tx, rx) = mpsc::channel::<u32>();
        assert!(door.send_if_open(|| tx.send(1).is_ok()));
        door.close();
        let mut called = false;
        assert!(!door.send_if_open(|| {
            called = true;
            tx.send(2).is_ok()
        }));
        assert!(!called);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1]);
    }
}
