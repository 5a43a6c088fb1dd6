//! Control datagrams for local programs: unix datagram sockets beside the control socket.
//!
//! With the control socket at `<base>.sock` (default `/run/connectopus/<id>.sock`):
//! - the node binds `<base>.dgram` (mode 0600);
//! - a local program that wants mesh port `N` binds `<base>.port.<N>` and sends datagrams to
//!   `<base>.dgram`, each `destination address (16 bytes) | destination port (2, big-endian) |
//!   payload`; the node sends them through the mesh from its address, port `N`;
//! - a control datagram that reaches this node for port `N` is sent to `<base>.port.<N>` as
//!   `source address (16) | source port (2) | payload`; with nobody bound there it is dropped.
//!
//! A receive thread hands what programs send to the main loop; the loop delivers with a
//! non-blocking send, so a slow program loses datagrams rather than stalling the node.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::*;

/// Header of a datagram between the node and a local program: an address and a port.
pub(super) const HEADER_LEN: usize = 18;

/// Largest payload sent into the mesh (a control datagram must fit one link message).
pub(super) const MAX_PAYLOAD: usize = 1200;

/// A datagram a local program sent, for the main loop.
#[derive(Debug)]
pub struct Outgoing {
    /// The program's port (from the path it is bound to).
    pub src_port: u16,
    /// Destination node address.
    pub dst: std::net::Ipv6Addr,
    /// Destination port.
    pub dst_port: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The main loop's side: delivers datagrams to local programs.
#[derive(Debug)]
pub(super) struct LocalDatagrams {
    base: PathBuf,
    sender: UnixDatagram,
    pub(super) delivered: u64,
    pub(super) undeliverable: u64,
}

/// Returns `<base>` for a control socket path `<base>.sock` (or the path itself without one).
pub(super) fn base_of(control_socket: &Path) -> PathBuf {
    match control_socket.extension() {
        Some(ext) if ext == "sock" => control_socket.with_extension(""),
        _ => control_socket.to_owned(),
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The node's socket, `<base>.dgram`.
pub(super) fn node_socket(base: &Path) -> PathBuf {
    with_suffix(base, ".dgram")
}

/// The socket of local port `port`, `<base>.port.<port>`.
pub(super) fn port_socket(base: &Path, port: u16) -> PathBuf {
    with_suffix(base, &format!(".port.{port}"))
}

/// Returns the port whose socket `path` is, if it is one.
fn port_of(base: &Path, path: &Path) -> Option<u16> {
    let prefix = with_suffix(base, ".port.");
    let rest = path.as_os_str().to_str()?.strip_prefix(prefix.to_str()?)?;
    let port: u16 = rest.parse().ok()?;
    (port != 0 && port.to_string() == rest).then_some(port)
}

/// Binds `<base>.dgram` and starts its receive thread.
///
/// # Errors
/// The socket cannot be bound or the thread cannot start.
pub(super) fn start(
    base: &Path,
    to_loop: LoopSender,
    stop: Arc<AtomicBool>,
) -> Result<(LocalDatagrams, JoinHandle<()>)> {
    let path = node_socket(base);
    let _ = std::fs::remove_file(&path);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Bound in a private directory, restricted, then moved into place (see
    // `control::bind_private`): never reachable by others, not even for a moment.
    let private = crate::edit::PrivateDir::new(parent, ".cx-dgram-")?;
    let staged = private.path().join("d");
    let socket =
        UnixDatagram::bind(&staged).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    std::fs::rename(&staged, &path).with_context(|| format!("placing {}", path.display()))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .context("setting a read timeout")?;
    let sender = UnixDatagram::unbound().context("creating the delivery socket")?;
    sender
        .set_nonblocking(true)
        .context("making the delivery socket non-blocking")?;
    let thread_base = base.to_owned();
    let thread = std::thread::Builder::new()
        .name("local-datagrams".into())
        .spawn(move || receive(socket, &thread_base, &to_loop, &stop))
        .context("spawning the local datagram thread")?;
    tracing::info!(socket = %path.display(), "control datagram socket ready");
    Ok((
        LocalDatagrams {
            base: base.to_owned(),
            sender,
            delivered: 0,
            undeliverable: 0,
        },
        thread,
    ))
}

fn receive(socket: UnixDatagram, base: &Path, to_loop: &LoopSender, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(src_port) = from.as_pathname().and_then(|p| port_of(base, p)) else {
            tracing::debug!(from = ?from, "control datagram from a socket not bound to a port path");
            continue;
        };
        let Some(datagram) = buf.get(..len).and_then(|d| parse(src_port, d)) else {
            tracing::debug!(
                src_port,
                len,
                "malformed or oversized local control datagram"
            );
            continue;
        };
        if !to_loop.send(LoopMessage::LocalDatagram(Box::new(datagram))) {
            return;
        }
    }
    let _ = std::fs::remove_file(node_socket(base));
}

fn parse(src_port: u16, datagram: &[u8]) -> Option<Outgoing> {
    let address: [u8; 16] = datagram.get(..16)?.try_into().ok()?;
    let port: [u8; 2] = datagram.get(16..HEADER_LEN)?.try_into().ok()?;
    let payload = datagram.get(HEADER_LEN..)?;
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    Some(Outgoing {
        src_port,
        dst: std::net::Ipv6Addr::from(address),
        dst_port: u16::from_be_bytes(port),
        payload: payload.to_vec(),
    })
}

impl LocalDatagrams {
    /// Hands a control datagram that reached this node to the program bound to its port.
    pub(super) fn deliver(
        &mut self,
        src: std::net::Ipv6Addr,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
    ) {
        let mut datagram = Vec::with_capacity(HEADER_LEN + payload.len());
        datagram.extend_from_slice(&src.octets());
        datagram.extend_from_slice(&src_port.to_be_bytes());
        datagram.extend_from_slice(payload);
        let path = port_socket(&self.base, dst_port);
        match self.sender.send_to(&datagram, &path) {
            Ok(_) => self.delivered += 1,
            Err(error) => {
                self.undeliverable += 1;
                tracing::debug!(%src, src_port, dst_port, %error, "control datagram not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_paths_round_trip_and_nothing_else_is_a_port() {
        let base = base_of(Path::new("/run/connectopus/foo.sock"));
        assert_eq!(base, Path::new("/run/connectopus/foo"));
        assert_eq!(node_socket(&base), Path::new("/run/connectopus/foo.dgram"));
        let seven = port_socket(&base, 7);
        assert_eq!(seven, Path::new("/run/connectopus/foo.port.7"));
        assert_eq!(port_of(&base, &seven), Some(7));
        for other in [
            "/run/connectopus/foo.port.0",
            "/run/connectopus/foo.port.07",
            "/run/connectopus/foo.port.65536",
            "/run/connectopus/foo.port.",
            "/run/connectopus/bar.port.7",
            "/tmp/foo.port.7",
        ] {
            assert_eq!(port_of(&base, Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn parse_takes_the_header_and_refuses_short_or_oversized_datagrams() {
        let mut d = std::net::Ipv6Addr::LOCALHOST.octets().to_vec();
        d.extend_from_slice(&513u16.to_be_bytes());
        d.extend_from_slice(b"hi");
        let o = parse(9, &d).unwrap();
        assert_eq!(
            (o.src_port, o.dst_port, o.payload.as_slice()),
            (9, 513, &b"hi"[..])
        );
        assert!(parse(9, &d[..17]).is_none());
        d.resize(HEADER_LEN + MAX_PAYLOAD + 1, 0);
        assert!(parse(9, &d).is_none());
    }
}
