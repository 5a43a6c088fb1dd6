//! The node's HTTP API and web UI (docs/api.md).
//!
//! The same control requests as the unix socket, as JSON over HTTP/1.1, plus read-only views
//! for the web UI. Served on the control socket (an HTTP request line instead of a JSON line
//! is handed here, no token needed: the socket is root's only) and, when
//! `nodes.<name>.cpctl.port` is set, on TCP at the node's mesh address, where every API
//! request needs a token (`connectopus token`) signed by a key in the running
//! configuration's `authorized_keys`.
//!
//! Off the main loop: an accept thread and a fixed pool of [`WORKERS`] threads, all started
//! before the node drops its privileges. Connections wait in a queue of [`QUEUE`]; beyond it
//! they are closed with a 503. Each connection carries one request, read within
//! [`REQUEST_DEADLINE`] and [`request::MAX_HEAD`]/[`request::MAX_BODY`] bytes. Control
//! requests reach the loop through its channel, like the control socket's; status and graph
//! views come from the snapshot the loop publishes every second, so polling UIs never wait
//! for the loop.

pub mod client;
pub mod graph;
pub mod probe;
mod proxy;
pub mod request;
pub mod state;
mod ui;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use connectopus_config::token::Token;
use serde::Serialize;

use crate::backends::{LoopMessage, LoopSender};
use crate::control::{ControlReply, ControlRequest};
use request::{Head, HttpError, Route};
pub use state::{ApiState, AuthKeys};

/// Threads answering requests.
pub const WORKERS: usize = 4;
/// Connections waiting for a worker; more are refused with a 503.
pub const QUEUE: usize = 16;
/// How long a client may take to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long one write of the answer may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a control request may wait for the loop.
const LOOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection on either transport.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, read: Option<Duration>, write: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(write))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(write))
            }
        }
    }

    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }

    fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => (&*s).write_all(buf),
            Stream::Unix(s) => (&*s).write_all(buf),
        }
    }
}

/// One accepted connection, with the bytes already read from it.
#[derive(Debug)]
struct Conn {
    stream: Stream,
    prefix: Vec<u8>,
    /// From the mesh port (a token is required), not the root-only unix socket.
    remote: bool,
    peer: String,
}

/// Hands HTTP connections of the control socket to the API workers.
#[derive(Debug, Clone)]
pub struct Handoff {
    queue: SyncSender<Conn>,
}

impl Handoff {
    /// Queues a unix-socket connection whose first bytes (`prefix`) were already read.
    pub fn unix(&self, stream: UnixStream, prefix: Vec<u8>) {
        let conn = Conn {
            stream: Stream::Unix(stream),
            prefix,
            remote: false,
            peer: "control socket".into(),
        };
        enqueue(&self.queue, conn);
    }
}

fn enqueue(queue: &SyncSender<Conn>, conn: Conn) {
    match queue.try_send(conn) {
        Ok(()) => {}
        Err(TrySendError::Full(conn) | TrySendError::Disconnected(conn)) => {
            tracing::debug!(peer = %conn.peer, "api busy: connection refused");
            // Best effort, without blocking the caller: the socket buffer takes it or not.
            let _ = match &conn.stream {
                Stream::Tcp(s) => s.set_nonblocking(true),
                Stream::Unix(s) => s.set_nonblocking(true),
            };
            let _ = conn.stream.write_all(&response(
                "503 Service Unavailable",
                "application/json",
                &[],
                br#"{"error":"the node is busy; try again"}"#,
                true,
            ));
        }
    }
}

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// The main loop.
    pub to_loop: LoopSender,
    /// What the loop publishes.
    pub state: ApiState,
    /// This node's name.
    pub node: String,
    /// The raw ICMPv6 socket for ping and traceroute, opened at start.
    pub probe: probe::ProbeSocket,
    /// Where other nodes serve their API, from the running configuration (for the proxy).
    pub directory: Arc<Mutex<proxy::Directory>>,
}

/// Starts the workers and, with `listen`, the mesh-port listener; returns the handoff for
/// the control socket, where the listener is bound, and the threads.
///
/// # Errors
/// The port cannot be bound or a thread cannot start.
pub fn start(
    context: ApiContext,
    listen: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> Result<(Handoff, Option<SocketAddr>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = mpsc::sync_channel::<Conn>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::new();
    for i in 0..WORKERS {
        let rx = rx.clone();
        let context = context.clone();
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("api-{i}"))
                .spawn(move || work(&rx, &context, &stop))
                .context("spawning an api thread")?,
        );
    }
    let mut bound = None;
    if let Some(addr) = listen {
        let listener = bind(addr)?;
        bound = Some(listener.local_addr().unwrap_or(addr));
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("api-accept".into())
                .spawn(move || accept(&listener, &tx, &stop))
                .context("spawning the api accept thread")?,
        );
    }
    Ok((Handoff { queue: tx }, bound, threads))
}

/// Binds the mesh port; with IPV6_FREEBIND, so the node's address need not be usable yet.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).context("api socket")?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_freebind_v6(true);
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding the api port {addr}"))?;
    socket.listen(64).context("api listen")?;
    Ok(socket.into())
}

fn accept(listener: &TcpListener, queue: &SyncSender<Conn>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !crate::backends::readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => enqueue(
                queue,
                Conn {
                    stream: Stream::Tcp(stream),
                    prefix: Vec::new(),
                    remote: true,
                    peer: peer.to_string(),
                },
            ),
            Err(error) => {
                tracing::debug!(%error, "api accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn work(rx: &Mutex<Receiver<Conn>>, context: &ApiContext, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(200)),
            Err(_) => return,
        };
        let conn = match next {
            Ok(conn) => conn,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let peer = conn.peer.clone();
        if let Err(error) = serve(conn, context) {
            tracing::debug!(%peer, %error, "api request failed");
        }
    }
}

/// A request that was read whole.
struct Request {
    head: Head,
    body: Vec<u8>,
}

fn read_request(conn: &Conn) -> Result<Request, HttpError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = conn.prefix.clone();
    let mut chunk = [0u8; 8192];
    let timeout = HttpError {
        status: "408 Request Timeout",
        message: "the request did not arrive in time".into(),
    };
    let read_more = |buf: &mut Vec<u8>, chunk: &mut [u8]| -> Result<(), HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout.clone());
        }
        conn.stream
            .set_timeouts(Some(left), WRITE_TIMEOUT)
            .map_err(|e| HttpError::bad(e.to_string()))?;
        match conn.stream.read(chunk) {
            Ok(0) => Err(HttpError::bad("the connection closed mid-request")),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(timeout.clone())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(HttpError::bad(e.to_string())),
        }
    };
    let end = loop {
        if let Some(end) = request::head_end(&buf) {
            break end;
        }
        if buf.len() > request::MAX_HEAD {
            return Err(HttpError {
                status: "431 Request Header Fields Too Large",
                message: format!(
                    "the request head is longer than {} bytes",
                    request::MAX_HEAD
                ),
            });
        }
        read_more(&mut buf, &mut chunk)?;
    };
    let head = request::parse_head(&buf[..end])?;
    let mut body = buf.split_off(end);
    while body.len() < head.content_length {
        read_more(&mut body, &mut chunk)?;
    }
    body.truncate(head.content_length);
    Ok(Request { head, body })
}

fn serve(conn: Conn, context: &ApiContext) -> std::io::Result<()> {
    let request = match read_request(&conn) {
        Ok(request) => request,
        Err(error) => {
            return conn
                .stream
                .write_all(&json_error(error.status, &error.message, true));
        }
    };
    let with_body = request.head.method != "HEAD";
    let route = Route::parse(&request.head.method, &request.head.path);
    let holder = if conn.remote && route.needs_token() {
        match authorize(&request.head, &context.state) {
            Ok(holder) => Some(holder),
            Err(message) => {
                tracing::debug!(peer = %conn.peer, %message, "api token refused");
                return conn
                    .stream
                    .write_all(&json_error("401 Unauthorized", &message, with_body));
            }
        }
    } else {
        None
    };
    let answer = answer(&route, &request, holder.as_ref(), conn.remote, context);
    conn.stream.write_all(&answer.finish(with_body))
}

/// Checks the request's bearer token against the running configuration.
fn authorize(
    head: &Head,
    state: &ApiState,
) -> Result<connectopus_config::token::TokenHolder, String> {
    let Some(text) = head.bearer() else {
        return Err(
            "no token: send `Authorization: Bearer <token>` (make one with `connectopus token`)"
                .into(),
        );
    };
    let token = Token::parse(text).map_err(|e| e.to_string())?;
    let keys = state.keys();
    token
        .verify(&keys.scope, unix_now(), &keys.authorized, &keys.revoked)
        .map_err(|e| e.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An answer before it is written.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: Serialize>(value: &T) -> Answer {
        match serde_json::to_vec(value) {
            Ok(body) => Answer {
                status: "200 OK",
                content_type: "application/json",
                extra: Vec::new(),
                body,
            },
            Err(error) => Answer::error("500 Internal Server Error", &error.to_string()),
        }
    }

    fn error(status: &'static str, message: &str) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            extra: Vec::new(),
            body: serde_json::json!({ "error": message })
                .to_string()
                .into_bytes(),
        }
    }

    fn finish(self, with_body: bool) -> Vec<u8> {
        response(
            self.status,
            self.content_type,
            &self.extra,
            &self.body,
            with_body,
        )
    }
}

fn json_error(status: &'static str, message: &str, with_body: bool) -> Vec<u8> {
    Answer::error(status, message).finish(with_body)
}

fn response(
    status: &str,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    if status.starts_with("401") {
        out.push_str("WWW-Authenticate: Bearer realm=\"connectopus\"\r\n");
    }
    for (name, value) in extra {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// Sends a control request to the loop and waits for its answer.
fn ask_loop(to_loop: &LoopSender, request: ControlRequest) -> ControlReply {
    let (tx, rx) = mpsc::channel();
    if !to_loop.send(LoopMessage::Control { request, reply: tx }) {
        return ControlReply::Error("node is shutting down".into());
    }
    rx.recv_timeout(LOOP_TIMEOUT)
        .unwrap_or_else(|_| ControlReply::Error("node did not answer".into()))
}

/// How old a published status report may be before the loop is asked for a fresh one.
const STATUS_MAX_AGE: Duration = Duration::from_millis(1500);

/// The status report: the published one while fresh, else (or with `fresh`) from the loop.
fn status_report(
    context: &ApiContext,
    fresh: bool,
) -> Result<Arc<crate::control::StatusReport>, String> {
    if !fresh && let Some(report) = context.state.status(STATUS_MAX_AGE) {
        return Ok(report);
    }
    match ask_loop(&context.to_loop, ControlRequest::Status) {
        ControlReply::Status(report) => Ok(Arc::new(*report)),
        ControlReply::Error(message) => Err(message),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// Runs a probe with the node's names; bad targets and a busy socket are 4xx/5xx answers.
fn probe_answer(
    context: &ApiContext,
    run: impl FnOnce(&crate::ping::Names) -> Result<probe::ProbeOutcome, String>,
) -> Answer {
    let names = match status_report(context, true) {
        Ok(report) => crate::ping::Names::from_report(&report),
        Err(message) => return Answer::error("503 Service Unavailable", &message),
    };
    match run(&names) {
        Ok(outcome) => Answer::json(&outcome),
        Err(message) if message.contains("try again") => {
            Answer::error("503 Service Unavailable", &message)
        }
        Err(message) => Answer::error("422 Unprocessable Content", &message),
    }
}

/// Who is asking, for `/api/v1/whoami`.
#[derive(Debug, Serialize)]
struct Whoami<'a> {
    node: &'a str,
    local: bool,
    key: Option<String>,
    fingerprint: Option<String>,
    expires_unix: Option<u64>,
}

fn answer(
    route: &Route,
    request: &Request,
    holder: Option<&connectopus_config::token::TokenHolder>,
    remote: bool,
    context: &ApiContext,
) -> Answer {
    match route {
        Route::Asset(path) => ui::asset(path),
        Route::NotFound => Answer::error(
            "404 Not Found",
            &format!("no API at {}; see docs/api.md", request.head.path),
        ),
        Route::WrongMethod(allowed) => {
            let mut a = Answer::error(
                "405 Method Not Allowed",
                &format!("{} takes {allowed}", request.head.path),
            );
            a.extra.push(("Allow", (*allowed).to_owned()));
            a
        }
        Route::Control => {
            let request: ControlRequest = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(error) => {
                    return Answer::error("400 Bad Request", &format!("bad request: {error}"));
                }
            };
            if remote && request.is_local_only() {
                // The CNI plugin's requests allocate and release addresses, and `pd_release`
                // takes the mesh's prefix away: the node's own root only (docs/dynamic-mesh.md
                // §3.3), whatever token comes from the mesh.
                return Answer::error(
                    "403 Forbidden",
                    "local only: cni and pd_release requests are served on the control socket",
                );
            }
            Answer::json(&ask_loop(&context.to_loop, request))
        }
        Route::Status => match status_report(context, false) {
            Ok(report) => Answer::json(&*report),
            Err(message) => Answer::error("503 Service Unavailable", &message),
        },
        Route::Graph => match status_report(context, false) {
            Ok(report) => Answer::json(&graph::Graph::of(&report)),
            Err(message) => Answer::error("503 Service Unavailable", &message),
        },
        Route::Config => match ask_loop(&context.to_loop, ControlRequest::GetConfig) {
            reply @ ControlReply::Config { .. } => Answer::json(&reply),
            ControlReply::Error(message) => Answer::error("503 Service Unavailable", &message),
            other => Answer::error("500 Internal Server Error", &format!("{other:?}")),
        },
        Route::Proxy { node, path } if *node == context.node => {
            answer(&Route::parse("GET", path), request, holder, remote, context)
        }
        Route::Proxy { node, path } => proxy::fetch(context, request, node, path),
        Route::Ping => match serde_json::from_slice::<probe::PingRequest>(&request.body) {
            Ok(ping) => probe_answer(context, |names| probe::ping(&context.probe, names, &ping)),
            Err(error) => Answer::error("400 Bad Request", &format!("bad request: {error}")),
        },
        Route::Traceroute => {
            match serde_json::from_slice::<probe::TracerouteRequest>(&request.body) {
                Ok(trace) => probe_answer(context, |names| {
                    probe::traceroute(&context.probe, names, &trace)
                }),
                Err(error) => Answer::error("400 Bad Request", &format!("bad request: {error}")),
            }
        }
        Route::Whoami => Answer::json(&Whoami {
            node: &context.node,
            local: !remote,
            key: holder.map(|h| h.key.to_string()),
            fingerprint: holder.map(|h| h.fingerprint.clone()),
            expires_unix: holder.map(|h| h.expires),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// An API on 127.0.0.1 (as the mesh port: tokens required) whose "loop" answers every
    /// control request with an error.
    fn server() -> (SocketAddr, Arc<AtomicBool>, uring_io::PacketIo) {
        let io = uring_io::PacketIo::new(uring_io::Config::default()).unwrap();
        let (tx, rx) = mpsc::channel::<LoopMessage>();
        std::thread::spawn(move || {
            for message in rx {
                if let LoopMessage::Control { reply, .. } = message {
                    let _ = reply.send(ControlReply::Error("test loop".into()));
                }
            }
        });
        let state = ApiState::new(AuthKeys {
            scope: connectopus_config::token::TokenScope {
                domain: "mesh.test".into(),
                subnet: "fd00::/64".into(),
            },
            authorized: Vec::new(),
            revoked: Vec::new(),
        });
        let context = ApiContext {
            to_loop: LoopSender::new(tx, io.waker()),
            state,
            node: "foo".into(),
            probe: Arc::new(Mutex::new(Err("no probes in tests".into()))),
            directory: Arc::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (_, bound, _threads) =
            start(context, Some("127.0.0.1:0".parse().unwrap()), stop.clone()).unwrap();
        (bound.unwrap(), stop, io)
    }

    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(request);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn hostile_clients_get_errors_and_never_stall_the_others() {
        let (addr, stop, _io) = server();
        // Slow clients hold a worker at most REQUEST_DEADLINE; the others are served meanwhile.
        let silent: Vec<TcpStream> = (0..WORKERS - 1)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let started = Instant::now();
        let answer = ask(addr, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(started.elapsed() < REQUEST_DEADLINE);
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        assert!(answer.contains("no token"), "{answer}");
        drop(silent);
        let bad = ask(
            addr,
            b"GET /api/v1/status HTTP/1.1\r\nAuthorization: Bearer cxt1.x.y\r\n\r\n",
        );
        assert!(
            bad.starts_with("HTTP/1.1 401 ") && bad.contains("malformed token"),
            "{bad}"
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', request::MAX_HEAD + 10));
        assert!(ask(addr, &big).starts_with("HTTP/1.1 431 "));
        assert!(ask(addr, b"BREW / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(ask(addr, b"GET /api/v9 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(addr, b"\x00\x01\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let page = ask(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 ") && page.contains("<svg id=\"graph\""));
        // Every worker and queue slot held by silent clients: the ones beyond are refused at
        // once, without waiting for a worker. Which ones those are depends on when the
        // workers take their first connections from the queue (under load the queue may fill
        // before they do, and the refusals fall in the middle), so every connection is
        // watched, until four 503s came or the held workers' deadline could free one.
        let hold: Vec<TcpStream> = (0..WORKERS + QUEUE + 4)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        for s in &hold {
            s.set_nonblocking(true).unwrap();
        }
        let deadline = Instant::now() + REQUEST_DEADLINE.mul_f32(0.8);
        let mut answers = vec![Vec::new(); hold.len()];
        let refused = loop {
            for (s, answer) in hold.iter().zip(answers.iter_mut()) {
                let mut buf = [0u8; 512];
                if let Ok(n) = (&*s).read(&mut buf) {
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            let refused = answers
                .iter()
                .filter(|a| a.starts_with(b"HTTP/1.1 503 "))
                .count();
            if refused >= 4 || Instant::now() >= deadline {
                break refused;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            refused >= 4,
            "{refused} of the excess connections were refused"
        );
        stop.store(true, Ordering::Relaxed);
    }
}
