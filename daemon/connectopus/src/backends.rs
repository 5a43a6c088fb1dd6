//! Backends: the threads that accept and dial TCP connections, and the dialer backoff.
//!
//! Accepting and connecting are not per-packet work, so they run on small blocking threads;
//! each established connection is handed to the main loop ([`LoopMessage::TcpConnected`]),
//! which owns it from then on. A dialer waits for its link to end, then dials again:
//! at once after a link that carried a session, otherwise after a backoff of 1 s that grows by
//! 1.2× up to 60 s. Peer host names are resolved at every dial.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use connectopus_config::PeerAddr;
use connectopus_wire::Cost;
use rustls::pki_types::ServerName;
use uring_io::Waker;

use crate::control::{ControlReply, ControlRequest};

/// Dialer retry delays: 1 s, growing by 1.2× per failure, capped at 60 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    /// Creates a backoff at its initial delay.
    pub fn new() -> Self {
        Self {
            next: Self::INITIAL,
        }
    }

    /// Returns the delay before the next attempt and grows it.
    pub fn failure(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.mul_f64(1.2).min(Self::MAX);
        delay
    }

    /// Returns to the initial delay (after a link that carried a session).
    pub fn reset(&mut self) {
        self.next = Self::INITIAL;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// How a TCP link ended, as the dialer that made it needs to know.
#[derive(Debug, Clone, Copy)]
pub struct LinkEnded {
    /// The link carried an established session at some point.
    pub had_session: bool,
}

/// A TCP connection ready for the main loop.
#[derive(Debug)]
pub struct TcpConnected {
    /// Name of the backend that made it.
    pub backend: String,
    /// The connection (nonblocking).
    pub stream: TcpStream,
    /// The remote underlay address.
    pub remote: SocketAddr,
    /// TLS state, when the backend uses TLS.
    pub tls: Option<crate::links::tls_records::TlsSession>,
    /// Cost of the link.
    pub cost: Cost,
    /// MTU of the link.
    pub mtu: u16,
    /// Where to report the end of the link (dialers).
    pub ended: Option<Sender<LinkEnded>>,
}

/// What the backend and control threads send to the main loop.
#[derive(Debug)]
pub enum LoopMessage {
    /// A TCP connection is ready.
    TcpConnected(Box<TcpConnected>),
    /// A control request and where to send the answer.
    Control {
        /// The request.
        request: ControlRequest,
        /// The answer channel.
        reply: Sender<ControlReply>,
    },
    /// A DTLS dialer's peer host name resolved (or failed to), off the loop.
    DtlsPeerResolved {
        /// Index of the dialer's UDP endpoint.
        endpoint: usize,
        /// The address, or why there is none.
        result: std::result::Result<SocketAddr, String>,
    },
    /// Stop the node (SIGINT, SIGTERM).
    Shutdown,
    /// Re-read the configuration file (SIGHUP).
    Reload,
    /// A local program sent a control datagram into the mesh.
    LocalDatagram(Box<crate::daemon::LocalDatagram>),
    /// The `config-check` thread checked a neighbour's configuration offer.
    OfferChecked(Box<crate::daemon::CheckedOffer>),
    /// The attach helper said something about a namespace.
    Attach(Box<crate::attach::helper::Received<crate::attach::helper::FromHelper>>),
    /// The DHCPv6 prefix-delegation thread's client changed its delegations.
    Delegations(crate::daemon::PdUpdate),
    /// The `lease-writer` thread wrote an issuer's lease table, or failed to.
    LeaseWriter(crate::daemon::WriterReport),
    /// Tests only (SIGUSR2 with `CONNECTOPUS_TEST_STALL_CONTROL_MS` set): the main loop
    /// sleeps this long, as if the control plane were busy.
    TestStall(std::time::Duration),
}

/// Sends messages to the main loop and wakes it.
#[derive(Debug, Clone)]
pub struct LoopSender {
    tx: Sender<LoopMessage>,
    waker: Waker,
}

impl LoopSender {
    /// Creates a sender.
    pub fn new(tx: Sender<LoopMessage>, waker: Waker) -> Self {
        Self { tx, waker }
    }

    /// Sends a message; returns false if the loop is gone.
    pub fn send(&self, message: LoopMessage) -> bool {
        if self.tx.send(message).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }
}

/// Common settings of a TCP backend thread.
#[derive(Debug, Clone)]
pub struct TcpBackend {
    /// Backend name.
    pub name: String,
    /// Link cost.
    pub cost: Cost,
    /// Link MTU.
    pub mtu: u16,
}

/// Binds a TCP listener now (so a busy port fails at start) and accepts on a thread.
///
/// # Errors
/// The address cannot be bound.
pub fn spawn_tcp_listener(
    backend: TcpBackend,
    bind: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    to_loop: LoopSender,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(bind)
        .with_context(|| format!("backend {}: binding {bind}", backend.name))?;
    tracing::info!(backend = %backend.name, %bind, tls = tls.is_some(), "tcp listener up");
    let handle = std::thread::Builder::new()
        .name(format!("listen-{}", backend.name))
        .spawn(move || accept_loop(backend, listener, tls, to_loop, stop))
        .context("spawning listener thread")?;
    Ok(handle)
}

fn accept_loop(
    backend: TcpBackend,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    to_loop: LoopSender,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        let (stream, remote) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                // Keep accepting: one failed accept (EMFILE, ECONNABORTED) must not end the
                // backend.
                tracing::warn!(backend = %backend.name, %error, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let tls = match &tls {
            None => None,
            Some(config) => match crate::links::tls_records::TlsSession::server(config) {
                Ok(session) => Some(session),
                Err(error) => {
                    tracing::warn!(backend = %backend.name, %error, "tls setup failed");
                    continue;
                }
            },
        };
        if let Err(error) = prepare(&stream) {
            tracing::warn!(backend = %backend.name, %error, "socket setup failed");
            continue;
        }
        tracing::debug!(backend = %backend.name, %remote, "accepted");
        let sent = to_loop.send(LoopMessage::TcpConnected(Box::new(TcpConnected {
            backend: backend.name.clone(),
            stream,
            remote,
            tls,
            cost: backend.cost,
            mtu: backend.mtu,
            ended: None,
        })));
        if !sent {
            return;
        }
    }
}

/// Starts a thread that keeps one TCP link to `peer` up.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn_tcp_dialer(
    backend: TcpBackend,
    peer: PeerAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    to_loop: LoopSender,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let handle = std::thread::Builder::new()
        .name(format!("dial-{}", backend.name))
        .spawn(move || dial_loop(backend, peer, tls, to_loop, stop))
        .context("spawning dialer thread")?;
    Ok(handle)
}

fn dial_loop(
    backend: TcpBackend,
    peer: PeerAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    to_loop: LoopSender,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::new();
    while !stop.load(Ordering::Relaxed) {
        match dial(&peer) {
            Ok((stream, remote)) => {
                let tls = match &tls {
                    None => None,
                    Some((config, name)) => {
                        match crate::links::tls_records::TlsSession::client(config, name.clone()) {
                            Ok(session) => Some(session),
                            Err(error) => {
                                tracing::warn!(backend = %backend.name, %error, "tls setup failed");
                                sleep_unless_stopped(backoff.failure(), &stop);
                                continue;
                            }
                        }
                    }
                };
                let (ended_tx, ended_rx) = mpsc::channel();
                tracing::debug!(backend = %backend.name, %remote, "connected");
                let sent = to_loop.send(LoopMessage::TcpConnected(Box::new(TcpConnected {
                    backend: backend.name.clone(),
                    stream,
                    remote,
                    tls,
                    cost: backend.cost,
                    mtu: backend.mtu,
                    ended: Some(ended_tx),
                })));
                if !sent {
                    return;
                }
                match wait_for_end(&ended_rx, &stop) {
                    Some(LinkEnded { had_session: true }) => backoff.reset(),
                    Some(LinkEnded { had_session: false }) => {
                        sleep_unless_stopped(backoff.failure(), &stop);
                    }
                    None => return,
                }
            }
            Err(error) => {
                let delay = backoff.failure();
                tracing::debug!(backend = %backend.name, %peer, %error, retry_in = ?delay, "dial failed");
                sleep_unless_stopped(delay, &stop);
            }
        }
    }
}

fn dial(peer: &PeerAddr) -> io::Result<(TcpStream, SocketAddr)> {
    let target = peer.to_string();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(stream) => {
                prepare(&stream)?;
                return Ok((stream, addr));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)
}

fn wait_for_end(rx: &Receiver<LinkEnded>, stop: &AtomicBool) -> Option<LinkEnded> {
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ended) => return Some(ended),
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => return None,
        }
    }
}

fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < delay && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub(crate) fn readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is a valid, initialised pollfd that lives across the call, and the count
    // passed is exactly one.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_a_fifth_to_a_minute_and_resets() {
        let mut b = Backoff::new();
        assert_eq!(b.failure(), Duration::from_secs(1));
        assert_eq!(b.failure(), Duration::from_millis(1200));
        assert_eq!(b.failure(), Duration::from_millis(1440));
        for _ in 0..100 {
            b.failure();
        }
        assert_eq!(b.failure(), Duration::from_secs(60));
        b.reset();
        assert_eq!(b.failure(), Duration::from_secs(1));
    }
}
