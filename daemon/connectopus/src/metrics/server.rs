//! The HTTP/1.1 side of the metrics: one connection at a time, a deadline for the whole
//! request, a cap on its size and a write timeout; it serves the latest published snapshot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long a client may take to send its whole request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long one write of the response may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request (line and headers) read.
const MAX_REQUEST: usize = 8 * 1024;

/// The latest rendered metrics, shared by the main loop (writer) and the HTTP thread.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(Arc<Mutex<Arc<str>>>);

impl Snapshot {
    /// Replaces the served text.
    pub fn publish(&self, text: String) {
        let text: Arc<str> = text.into();
        match self.0.lock() {
            Ok(mut guard) => *guard = text,
            Err(poisoned) => *poisoned.into_inner() = text,
        }
    }

    /// Returns the served text (cheap: the lock is held only to clone an `Arc`).
    pub fn current(&self) -> Arc<str> {
        match self.0.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Binds `addr` and serves `snapshot` at `/metrics` on a thread until `stop` is set.
///
/// # Errors
/// The address cannot be bound.
pub fn spawn_server(
    addr: SocketAddr,
    snapshot: Snapshot,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("metrics listen {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let handle = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(listener, snapshot, stop))
        .context("spawning the metrics thread")?;
    Ok((bound, handle))
}

fn serve(listener: TcpListener, snapshot: Snapshot, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        // Wakes every 200 ms to notice `stop`.
        if !crate::backends::readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        if let Err(error) = answer(&stream, &snapshot) {
            tracing::debug!(%peer, %error, "metrics request failed");
        }
    }
}

/// Reads one request (within [`REQUEST_DEADLINE`] and [`MAX_REQUEST`]) and answers it.
fn answer(stream: &TcpStream, snapshot: &Snapshot) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = match read_head(stream) {
        Ok(head) => head,
        Err(status) => return respond(stream, status, "text/plain", status.as_bytes(), true),
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = snapshot.current();
            respond(
                stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                with_body,
            )
        }
        ("GET" | "HEAD", _) => respond(
            stream,
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics\n",
            with_body,
        ),
        _ => respond(
            stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            with_body,
        ),
    }
}

/// Reads the request line and headers, up to the blank line. Errors are HTTP statuses.
fn read_head(stream: &TcpStream) -> std::result::Result<String, &'static str> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("408 Request Timeout");
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Err("400 Bad Request");
        }
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => return Err("400 Bad Request"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("408 Request Timeout");
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err("400 Bad Request"),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_blank_line(&buf) {
            return String::from_utf8(buf[..end].to_vec()).map_err(|_| "400 Bad Request");
        }
        if buf.len() > MAX_REQUEST {
            return Err("431 Request Header Fields Too Large");
        }
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn respond(
    mut stream: &TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_or_oversized_client_gets_an_error_and_the_next_one_is_served() {
        let snapshot = Snapshot::default();
        snapshot.publish("connectopus_up 1\n".to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, thread) =
            spawn_server("127.0.0.1:0".parse().unwrap(), snapshot, stop.clone()).unwrap();
        let get = |request: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(request).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        };
        // A silent client holds the server at most REQUEST_DEADLINE.
        let silent = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let ok = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(started.elapsed() < REQUEST_DEADLINE + Duration::from_secs(2));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nconnectopus_up 1\n"), "{ok}");
        drop(silent);
        // Exactly one byte over the cap, so the server reads it all before answering.
        let big = get(&vec![b'a'; MAX_REQUEST + 1]);
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
        assert!(get(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
