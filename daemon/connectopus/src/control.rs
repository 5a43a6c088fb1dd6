//! The local control socket: a Unix socket (mode 0600, so root only) that answers requests
//! such as `status` with one JSON line.
//!
//! Protocol: the client writes one JSON request terminated by a newline; the node answers with
//! one JSON reply terminated by a newline and closes the connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::backends::{LoopMessage, LoopSender};

mod reply;
mod request;
pub use reply::*;
pub use request::{CniAttachment, ControlRequest, parse_request};

/// Where a node's control socket lives by default.
pub fn default_socket_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/connectopus/{node}.sock"))
}

/// The first line of the file a node with `cpctl.no_socket` leaves where its socket would
/// be, so that a client can say why it cannot reach the node.
const NO_SOCKET_MARKER: &str = "connectopus: no control socket (cpctl.no_socket)";

/// Leaves the `cpctl.no_socket` marker for `node` at `path` (a stale socket or marker there is
/// replaced); what fails is only logged. [`remove_no_socket_marker`] takes it away.
pub fn mark_no_socket(path: &Path, node: &str) {
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            tracing::warn!(path = %path.display(), "another node serves a control socket here; not marking it");
            return;
        }
        let _ = std::fs::remove_file(path);
    }
    let text = format!("{NO_SOCKET_MARKER}\nnode {node}\n");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(error) = written {
        tracing::debug!(path = %path.display(), %error, "cannot leave the no_socket marker");
    }
}

/// Removes the marker [`mark_no_socket`] left (and nothing else).
pub fn remove_no_socket_marker(path: &Path) {
    if no_socket_marker(path).is_some() {
        let _ = std::fs::remove_file(path);
    }
}

/// The node named by a `cpctl.no_socket` marker at `path`, if there is one.
fn no_socket_marker(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    (lines.next()? == NO_SOCKET_MARKER).then_some(())?;
    Some(lines.next()?.strip_prefix("node ")?.to_owned())
}

/// Why no node answers at `path`, for a client's error.
fn unreachable(path: &Path) -> String {
    if let Some(node) = no_socket_marker(path) {
        return format!(
            "node {node} serves no control socket at {}: its configuration sets \
             nodes.{node}.cpctl.no_socket (with cpctl.port set, `--node {node}` through \
             another node reaches it; or remove no_socket)",
            path.display()
        );
    }
    format!(
        "connecting to {}: is the node running (and are you root)? A node whose configuration \
         sets cpctl.socket_file serves its socket there instead (pass --socket PATH)",
        path.display()
    )
}

/// Binds the control socket (replacing a stale one) and serves it on a thread.
///
/// # Errors
/// The socket cannot be created.
pub fn spawn_server(
    path: &Path,
    to_loop: LoopSender,
    http: crate::api::Handoff,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "control socket {} is in use: is another node with this id running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = bind_private(path)?;
    let handle = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, to_loop, http, stop))
        .context("spawning control thread")?;
    Ok(handle)
}

/// Binds a Unix socket at `path` that only this user can connect to, with no moment at which
/// anyone else could: the socket is bound inside a fresh 0700 directory (`mkdtemp` beside
/// `path`), set to 0600 there, and only then renamed to `path`. A bind-then-chmod at `path`
/// itself would leave it open to every local user for the time between the two calls.
///
/// # Errors
/// The directory or the socket cannot be created, or the rename fails.
pub fn bind_private(path: &Path) -> Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        bail!("{} is not a socket path", path.display());
    }
    let private = crate::edit::PrivateDir::new(parent, ".cx-sock-")?;
    // A one-letter name: the staged path must fit in sun_path (108 bytes) like the final one.
    let staged = private.path().join("s");
    let listener =
        UnixListener::bind(&staged).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("placing {}", path.display()))?;
    Ok(listener)
}

fn serve(
    listener: UnixListener,
    to_loop: LoopSender,
    http: crate::api::Handoff,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        // Wakes every 200 ms to notice `stop`.
        if !crate::backends::readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if let Err(error) = answer(stream, &to_loop, &http) {
            tracing::debug!(error = %format!("{error:#}"), "control request failed");
        }
    }
}

fn answer(stream: UnixStream, to_loop: &LoopSender, http: &crate::api::Handoff) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    // A request may carry a whole mesh configuration.
    let mut reader = BufReader::new((&stream).take(256 * 1024 * 1024));
    // An HTTP request line (`GET / HTTP/1.1`) instead of a JSON one: the API serves it.
    if reader
        .fill_buf()?
        .first()
        .is_some_and(u8::is_ascii_uppercase)
    {
        let prefix = reader.buffer().to_vec();
        drop(reader);
        http.unix(stream, prefix);
        return Ok(());
    }
    reader.read_line(&mut line)?;
    drop(reader);
    let reply = match parse_request(&line) {
        Ok(request) => {
            let (tx, rx) = mpsc::channel();
            if !to_loop.send(LoopMessage::Control { request, reply: tx }) {
                ControlReply::Error("node is shutting down".into())
            } else {
                rx.recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| ControlReply::Error("node did not answer".into()))
            }
        }
        Err(error) => ControlReply::Error(format!("bad request: {error}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

/// Sends `request` to the node listening on `path`, or with `--node` to that node through
/// the mesh (`api::client`), and returns its answer.
///
/// # Errors
/// The node is not running or answered garbage.
pub fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    if let Some(reply) = crate::api::client::request_remote(path, request) {
        return reply;
    }
    request_local(path, request)
}

/// Sends `request` to the node listening on `path` and returns its answer.
///
/// # Errors
/// The node is not running or answered garbage.
pub fn request_local(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    let stream = UnixStream::connect(path).with_context(|| unreachable(path))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(anyhow!("the node closed the control connection"));
    }
    serde_json::from_str(&answer).context("parsing the node's answer")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    #[test]
    fn a_no_socket_marker_says_why_and_is_replaced_by_a_socket() {
        let dir = std::env::temp_dir().join(format!("cx-nosocket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("foo.sock");
        mark_no_socket(&path, "foo");
        let error = format!(
            "{:#}",
            request_local(&path, &ControlRequest::Status).unwrap_err()
        );
        assert!(
            error.contains("node foo serves no control socket")
                && error.contains("nodes.foo.cpctl.no_socket"),
            "{error}"
        );
        // Not a marker: the generic reason, and the file stays.
        std::fs::write(dir.join("other.sock"), "x").unwrap();
        remove_no_socket_marker(&dir.join("other.sock"));
        assert!(dir.join("other.sock").exists());
        let error = format!(
            "{:#}",
            request_local(&dir.join("other.sock"), &ControlRequest::Status).unwrap_err()
        );
        assert!(error.contains("cpctl.socket_file"), "{error}");
        remove_no_socket_marker(&path);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_control_socket_is_born_private_and_works() {
        let dir = std::env::temp_dir().join(format!("cx-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // The staging directory is gone: only the socket is left.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.sock")]);
        // It accepts connections at its final path.
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        (&client).write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        (&server).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
