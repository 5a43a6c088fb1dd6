//! The CPU-local receive (`--cpu-local`, see `crate::cpu_local`): every worker thread has a
//! socket of its own on each DTLS port, in the port's `SO_REUSEPORT` group, and the group's
//! program gives it the application-data records the kernel received on its CPU, of every
//! established link. The link's receiving direction ([`Opener`]: replay windows, receive
//! epochs) is shared by the threads behind a lock (`LinkSend::Dtls::rx`), taken once per
//! receive (a GRO batch of one peer); records of one link received on two CPUs at once
//! wait for each other there, and one replay window sees them all.
//!
//! A datagram from an address with no link here goes to the main loop only while the main
//! loop still holds the link's receiving direction (just established); from an unknown
//! address it is dropped (the main loop would drop it too, and the channel to it is not for
//! floods).

use super::*;

impl Dataplane {
    /// Gives every running worker thread a socket of its own on the DTLS port of `endpoint`
    /// (`shared`, the main loop's, bound first) and has the port's group send each
    /// application-data record to the thread on the CPU that received it (the CPU-local
    /// receive). False when the data path is not CPU-local or no thread got a socket.
    pub(in crate::daemon) fn open_ports(
        &mut self,
        endpoint: usize,
        shared: &UdpSocket,
        gro: bool,
    ) -> bool {
        let Ok(cpus) = &self.cpu_local else {
            return false;
        };
        let cpus = cpus.clone();
        let running = |i: usize| self.status(i).is_some_and(|s| s.stopped.is_none());
        // Group index k + 1 is the k-th socket bound here, so the program lists the CPUs of
        // the threads that got one, in that order. It goes on the group first (the main
        // loop's socket alone), so that no worker socket ever receives by the group's hash,
        // which would give it handshakes; where it cannot, the port stays the main loop's.
        let all: Vec<usize> = (1..=self.threads.len())
            .filter(|&i| running(i))
            .filter_map(|i| cpus.get(i - 1).copied())
            .collect();
        let fd = std::os::fd::AsRawFd::as_raw_fd(shared);
        if let Err(error) =
            crate::cpu_local::reuseport::attach(fd, &crate::cpu_local::reuseport::program(&all))
        {
            tracing::warn!(endpoint, %error, "no reuseport program on the port: the main loop receives it");
            return false;
        }
        let mut bound = Vec::new();
        for index in 1..=self.threads.len() {
            let Some(&cpu) = cpus.get(index - 1) else {
                break;
            };
            if !running(index) {
                continue;
            }
            let socket = match crate::dtls_link::bind_port_member(shared, gro) {
                Ok(socket) => socket,
                Err(error) => {
                    tracing::warn!(endpoint, worker = Self::label(index), %error, "no socket on the port for the worker");
                    break;
                }
            };
            if self
                .send_to(index, ToWorker::Port { endpoint, socket })
                .is_err()
            {
                break;
            }
            bound.push(cpu);
        }
        if bound != all {
            // A socket the program counted is missing: index it by what was bound.
            let program = crate::cpu_local::reuseport::program(&bound);
            if let Err(error) = crate::cpu_local::reuseport::attach(fd, &program) {
                tracing::warn!(endpoint, %error, "re-attaching the port's reuseport program");
            }
        }
        self.ports.insert(endpoint);
        !bound.is_empty()
    }

    /// Whether the worker threads receive on the DTLS port of `endpoint` themselves (some
    /// thread still runs).
    pub(in crate::daemon) fn has_ports(&self, endpoint: usize) -> bool {
        self.ports.contains(&endpoint) && self.any_running() > 0
    }

    /// Whether links shared by the worker threads have nobody left to open their records:
    /// every worker thread stopped.
    pub(in crate::daemon) fn shared_receives_orphaned(&self) -> bool {
        !self.ports.is_empty() && self.any_running() == 0
    }

    /// The DTLS port of `endpoint` closed: the worker threads close their sockets on it.
    pub(in crate::daemon) fn forget_ports(&mut self, endpoint: usize) {
        if self.ports.remove(&endpoint) {
            for index in 1..=self.threads.len() {
                let _ = self.send_to(index, ToWorker::ForgetPort(endpoint));
            }
        }
    }

    /// A running worker thread, to open a record of a link every thread receives that arrived
    /// at the main loop's socket; 0 when none runs.
    pub(in crate::daemon) fn any_running(&self) -> usize {
        (1..=self.threads.len())
            .find(|&i| self.status(i).is_some_and(|s| s.stopped.is_none()))
            .unwrap_or(0)
    }
}

/// A worker thread's socket on one DTLS port.
#[derive(Debug)]
pub(super) struct PortSocket {
    endpoint: usize,
    socket: UdpSocket,
    /// The port closed: the socket closes once its receive is no longer armed.
    forgotten: bool,
}

impl WorkerThread {
    fn port_token(slot: usize) -> Token {
        Token(TOKEN_PORT_RECV | slot as u64)
    }

    /// Receives on `socket`, this thread's member of the port of `endpoint`.
    pub(super) fn start_port(&mut self, endpoint: usize, socket: UdpSocket) {
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.ports.push(None);
                self.ports.len() - 1
            }
        };
        if let Err(error) = self
            .worker
            .io
            .recv_datagrams(socket.as_raw_fd(), Self::port_token(slot))
        {
            // Closing it leaves its share of the port's records to the others (the group
            // picks by hash where the program's choice is gone).
            tracing::warn!(worker = self.index, endpoint, %error, "cannot receive on the port here");
            return;
        }
        self.ports[slot] = Some(PortSocket {
            endpoint,
            socket,
            forgotten: false,
        });
    }

    /// The port of `endpoint` closed.
    pub(super) fn forget_port(&mut self, endpoint: usize) {
        for slot in 0..self.ports.len() {
            if !self.ports[slot]
                .as_ref()
                .is_some_and(|p| p.endpoint == endpoint && !p.forgotten)
            {
                continue;
            }
            if self.worker.io.disarm(Self::port_token(slot)) {
                if let Some(p) = self.ports[slot].as_mut() {
                    p.forgotten = true;
                }
            } else {
                self.ports[slot] = None;
            }
        }
    }

    /// Indexes the DTLS links by `(endpoint, peer)`, and whether their receiving direction is
    /// shared yet, after the link table or the peers changed.
    pub(super) fn index_shared_receives(&mut self) {
        self.shared_rx.clear();
        for (key, link) in self.peers.iter() {
            let shared = matches!(
                self.links.get(link),
                Some(LinkSend::Dtls { rx: Some(_), .. })
            );
            self.shared_rx.insert(*key, (*link, shared));
        }
    }

    /// A receive on this thread's socket of a DTLS port.
    pub(super) fn on_port_datagram(&mut self, slot: usize, completion: Completion) -> Result<()> {
        let armed = completion.armed;
        let range = completion.data_range();
        let endpoint = self
            .ports
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|p| !p.forgotten)
            .map(|p| p.endpoint);
        match (completion.buf, range, completion.src, endpoint) {
            (Some(buf), Some(range), Some(src), Some(endpoint)) => {
                let remote = super::super::dtls::normalize(src);
                match self.shared_rx.get(&(endpoint, remote)).copied() {
                    Some((link, true)) => {
                        let from = (link, endpoint, remote, completion.local);
                        self.open_shared(from, buf, range, completion.segment_size);
                    }
                    Some((link, false)) => {
                        // Just established: the main loop still opens its records.
                        let datagram = self.worker.io.buf(&buf).get(range).unwrap_or_default();
                        let datagram = datagram.to_vec();
                        self.worker.io.free(buf);
                        self.pass_to_main(FromWorker::ForAssociation {
                            link,
                            endpoint,
                            remote,
                            local: completion.local,
                            datagram,
                        });
                    }
                    // As on the main loop's socket: not the start of an association.
                    None => self.worker.io.free(buf),
                }
            }
            (Some(buf), ..) => self.worker.io.free(buf),
            (None, ..) => {}
        }
        if armed {
            return Ok(());
        }
        let Some(p) = self.ports.get(slot).and_then(Option::as_ref) else {
            return Ok(());
        };
        if p.forgotten {
            self.ports[slot] = None;
            return Ok(());
        }
        let fd = p.socket.as_raw_fd();
        if let Err(error) = self.worker.io.recv_datagrams(fd, Self::port_token(slot)) {
            tracing::warn!(worker = self.index, %error, "re-arming a port's receive failed");
            self.ports[slot] = None;
        }
        Ok(())
    }

    /// The shared receiving direction of `link`, if the link is received that way.
    pub(super) fn shared_opener(&self, link: LinkId) -> Option<Arc<Mutex<Opener>>> {
        match self.links.get(&link) {
            Some(LinkSend::Dtls { rx: Some(rx), .. }) => Some(rx.clone()),
            _ => None,
        }
    }

    /// Opens the datagrams at `buf[range]` of a link whose receiving direction is shared, in
    /// place, and routes what they carried; takes ownership of `buf`.
    pub(super) fn open_shared(
        &mut self,
        from: (LinkId, usize, SocketAddr, Option<std::net::IpAddr>),
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        let Some(opener) = self.shared_opener(from.0) else {
            self.worker.io.free(buf);
            return;
        };
        let now = self.started.elapsed();
        // Every write under this lock is the opener's own, complete per record: a poisoned
        // lock (a panicking thread) leaves it consistent.
        let mut opener = opener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for piece in self.worker.gro_pieces(range, segment_size) {
            let Some(datagram) = self.worker.io.buf_mut(&buf).get_mut(piece.clone()) else {
                break;
            };
            let opened = opener.open(now, datagram);
            if !self.route_opened(from, &buf, piece.start, opened) {
                break;
            }
        }
        opener.flush_counts();
        drop(opener);
        self.worker.io.free(buf);
    }
}

impl Daemon {
    /// Every worker thread stopped: the main loop takes back the receiving direction of each
    /// link the threads shared (once no published link table and no thread holds it any
    /// more; the table it publishes now leaves it out) and opens the links' records itself,
    /// from its own socket (the threads' sockets closed with them).
    pub(in crate::daemon) fn reclaim_shared_receives(&mut self) {
        if !self.dataplane.shared_receives_orphaned() {
            return;
        }
        for (id, l) in self.links.iter_mut() {
            let Transport::Dtls(d) = &mut l.transport else {
                continue;
            };
            let Some(shared) = d.shared_rx.take() else {
                continue;
            };
            match Arc::try_unwrap(shared) {
                Ok(opener) => {
                    let opener = opener
                        .into_inner()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    d.association.restore_opener(opener);
                    d.rx_worker = Some(0);
                    tracing::info!(link = %id, "no worker thread left: the main loop receives the link");
                }
                Err(shared) => {
                    // Still in the published table (or a stopping thread's copy of it).
                    d.shared_rx = Some(shared);
                    self.dataplane.links_dirty = true;
                }
            }
        }
    }
}
