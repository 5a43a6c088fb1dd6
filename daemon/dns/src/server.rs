//! The server thread: a current-thread tokio runtime running one UDP loop and one TCP
//! accept loop, with one task per TCP connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::timeout;

use crate::answer::{Kind, Transport, respond};
use crate::config::{ZoneConfig, ZoneSpec};
use crate::error::{Error, Result};
use crate::table::{NameTable, UpdateOutcome};

/// Largest TCP query read. A DNS query is one question plus at most an OPT record, a few
/// hundred bytes at most; a longer length prefix closes the connection without reading.
pub const MAX_TCP_QUERY: usize = 4096;
/// Pause after a socket error before trying again, so a persistent error cannot spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);

/// A running DNS server. Dropping it (or [`stop`](DnsServer::stop)) stops the server and
/// joins its thread.
#[derive(Debug)]
pub struct DnsServer {
    table: NameTable,
    counters: Arc<Counters>,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts serving `zone` on the given sockets, on a new thread named `connectopus-dns`.
    ///
    /// The sockets must already be bound (and the listener listening); the caller chooses
    /// the address, port and network namespace. They are switched to non-blocking mode.
    /// Initially only the node's own name is served; feed names with
    /// [`update`](DnsServer::update).
    ///
    /// Fails if the zone configuration is invalid or the sockets cannot be registered.
    pub fn start(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        zone: ZoneConfig,
    ) -> Result<Self> {
        let spec = ZoneSpec::new(&zone)?;
        let table = NameTable::new(spec.clone());
        let counters = Arc::new(Counters::default());
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp_addr = udp.local_addr()?;
        let tcp_addr = tcp.local_addr()?;

        let (shutdown, stopped) = oneshot::channel::<()>();
        let serve = Serve {
            table: table.clone(),
            counters: counters.clone(),
            max_connections: spec.tcp_max_connections,
            idle: spec.tcp_idle_timeout,
        };
        // The runtime is built, used and dropped on the server thread only, so `start` and
        // `stop` work from any thread, including one inside another tokio runtime.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name("connectopus-dns".into())
            .spawn(move || {
                let prepared = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .and_then(|runtime| {
                        let _context = runtime.enter();
                        let udp = UdpSocket::from_std(udp)?;
                        let tcp = TcpListener::from_std(tcp)?;
                        Ok((runtime, udp, tcp))
                    });
                let (runtime, udp, tcp) = match prepared {
                    Ok(prepared) => prepared,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(async move {
                    tokio::select! {
                        () = serve.udp(udp) => {}
                        () = serve.tcp(tcp) => {}
                        // Fires on stop(), and on drop of the sender.
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels the per-connection tasks.
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error.into());
            }
            Err(_) => {
                // The thread ended without reporting: it panicked while preparing.
                let _ = thread.join();
                return Err(Error::ThreadPanicked);
            }
        }
        Ok(Self {
            table,
            counters,
            udp_addr,
            tcp_addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Replaces the whole set of served names; see [`NameTable::update`].
    pub fn update<I, S, A>(&self, names: I) -> UpdateOutcome
    where
        I: IntoIterator<Item = (S, A)>,
        S: AsRef<str>,
        A: Into<std::net::IpAddr>,
    {
        self.table.update(names)
    }

    /// A handle to the name table, for updating it from another thread.
    pub fn names(&self) -> NameTable {
        self.table.clone()
    }

    /// The SOA serial now served.
    pub fn serial(&self) -> u32 {
        self.table.serial()
    }

    /// The address the UDP socket is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The address the TCP listener is bound to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Stops the server, closes its sockets and joins its thread. This blocks only for
    /// as long as the server thread takes to notice (it is never busy for long).
    ///
    /// Returns [`Error::ThreadPanicked`] if the server thread had panicked.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown_and_join()
    }

    fn shutdown_and_join(&mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the thread already ended; join tells why.
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| Error::ThreadPanicked),
            None => Ok(()),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.shutdown_and_join();
    }
}

/// Counters of what the server has seen, from [`DnsServer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// UDP datagrams received.
    pub udp_queries: u64,
    /// TCP messages received (length prefix within bounds).
    pub tcp_queries: u64,
    /// Responses with NOERROR (answers or NODATA).
    pub noerror: u64,
    /// Responses with NXDOMAIN.
    pub nxdomain: u64,
    /// Responses with REFUSED (outside the zones, non-IN class, zone transfer).
    pub refused: u64,
    /// Responses with FORMERR, NOTIMP, BADVERS or SERVFAIL.
    pub errors: u64,
    /// Messages dropped without a response (shorter than a header, or QR set).
    pub dropped: u64,
    /// TCP connections closed at once because `tcp_max_connections` were open.
    pub tcp_rejected: u64,
    /// TCP connections closed because a length prefix was below 12 or above
    /// [`MAX_TCP_QUERY`].
    pub tcp_bad_length: u64,
}

#[derive(Debug, Default)]
struct Counters {
    udp_queries: AtomicU64,
    tcp_queries: AtomicU64,
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    tcp_rejected: AtomicU64,
    tcp_bad_length: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            udp_queries: get(&self.udp_queries),
            tcp_queries: get(&self.tcp_queries),
            noerror: get(&self.noerror),
            nxdomain: get(&self.nxdomain),
            refused: get(&self.refused),
            errors: get(&self.errors),
            dropped: get(&self.dropped),
            tcp_rejected: get(&self.tcp_rejected),
            tcp_bad_length: get(&self.tcp_bad_length),
        }
    }

    fn record(&self, kind: Option<Kind>) {
        bump(match kind {
            Some(Kind::NoError) => &self.noerror,
            Some(Kind::NxDomain) => &self.nxdomain,
            Some(Kind::Refused) => &self.refused,
            Some(Kind::Error) => &self.errors,
            None => &self.dropped,
        });
    }
}

/// What the serving tasks share.
#[derive(Clone)]
struct Serve {
    table: NameTable,
    counters: Arc<Counters>,
    max_connections: usize,
    idle: Duration,
}

impl Serve {
    /// Answers one query from the current snapshot and counts the outcome.
    fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let snapshot = self.table.snapshot();
        let response = respond(&snapshot, query, transport);
        self.counters
            .record(response.as_ref().map(|(_, kind)| *kind));
        response.map(|(bytes, _)| bytes)
    }

    /// One datagram at a time: receive, answer, send. Memory use is one receive buffer
    /// whatever the load; under a flood the kernel's socket buffer overflows and drops,
    /// which is the right place to shed load for a UDP service.
    async fn udp(&self, socket: UdpSocket) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (len, src) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(_) => {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                }
            };
            bump(&self.counters.udp_queries);
            if src.port() == 0 {
                bump(&self.counters.dropped);
                continue;
            }
            if let Some(response) = self.answer(&buf[..len], Transport::Udp) {
                // A lost response is a lost datagram: the client retries.
                let _ = socket.send_to(&response, src).await;
            }
        }
    }

    /// Accepts connections; beyond `max_connections` open ones, a new connection is closed
    /// at once (rather than left waiting in the backlog) so the client fails fast.
    async fn tcp(&self, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    if error.kind() != io::ErrorKind::ConnectionAborted {
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                bump(&self.counters.tcp_rejected);
                drop(stream);
                continue;
            };
            let serve = self.clone();
            tokio::spawn(async move {
                serve.connection(stream).await;
                drop(permit);
            });
        }
    }

    /// Serves queries on one connection in order until the client closes it, stalls for
    /// longer than the idle timeout, or sends a length prefix out of bounds.
    async fn connection(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::new();
        loop {
            let mut prefix = [0u8; 2];
            if !matches!(
                timeout(self.idle, stream.read_exact(&mut prefix)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let len = usize::from(u16::from_be_bytes(prefix));
            if !(12..=MAX_TCP_QUERY).contains(&len) {
                bump(&self.counters.tcp_bad_length);
                return;
            }
            buf.resize(len, 0);
            if !matches!(
                timeout(self.idle, stream.read_exact(&mut buf)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            bump(&self.counters.tcp_queries);
            let Some(response) = self.answer(&buf, Transport::Tcp) else {
                continue;
            };
            // The encoder keeps TCP responses within 65535 bytes.
            let Ok(len) = u16::try_from(response.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(response.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&response);
            if !matches!(timeout(self.idle, stream.write_all(&out)).await, Ok(Ok(()))) {
                return;
            }
        }
    }
}
