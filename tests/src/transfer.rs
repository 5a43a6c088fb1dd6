//! Bulk transfers with a checksum on both ends: the sender hashes the bytes it sends, the
//! receiver hashes the bytes it got, and the test compares the two. Both ends are small
//! `python3` programs in their namespaces, so the bytes cross the mesh through ordinary
//! sockets exactly as an application's would.

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::netns::NetNs;
use crate::plan::check_addr;
use crate::topology::Topology;

/// The receiving end: listens, takes one connection, hashes everything until EOF.
const RECEIVER: &str = r#"
import hashlib, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print("received", n, h.hexdigest(), flush=True)
"#;

/// The sending end: sends `bytes` pseudo-random bytes (seeded), hashing them as it goes; with
/// a rate (bytes a second, 0 for none) in 64 KiB chunks, never ahead of that rate.
const SENDER: &str = r#"
import hashlib, random, socket, sys, time
addr, port, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rate = int(sys.argv[5]) if len(sys.argv) > 5 else 0
rng = random.Random(seed)
c = socket.create_connection((addr, port), timeout=30)
h, n, start = hashlib.sha256(), 0, time.monotonic()
while n < total:
    chunk = rng.randbytes(min(1 << 16 if rate else 1 << 20, total - n))
    c.sendall(chunk); h.update(chunk); n += len(chunk)
    if rate:
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print("sent", n, h.hexdigest(), flush=True)
"#;

/// What both ends of a checked transfer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes and SHA-256 the sender sent.
    pub sent: (u64, String),
    /// Bytes and SHA-256 the receiver got.
    pub received: (u64, String),
}

impl Transfer {
    /// Tells whether the receiver got exactly what was sent.
    pub fn intact(&self) -> bool {
        self.sent == self.received
    }
}

/// Sends `bytes` pseudo-random bytes (from `seed`) over TCP from `from` to `[dst]:port` in
/// `to`, and returns what each end counted and hashed.
///
/// # Errors
/// A tool fails to start, the connection fails, or the transfer takes longer than `timeout`.
pub fn checked_transfer(
    from: &NetNs,
    to: &NetNs,
    dst: Ipv6Addr,
    port: u16,
    bytes: u64,
    seed: u64,
    timeout: Duration,
) -> Result<Transfer> {
    checked_transfer_paced(from, to, dst, port, bytes, seed, 0, timeout)
}

/// Sends `bytes` from node `a` to node `b` of `topo` and then back (ports `port` and
/// `port + 1`, seeds `seed` and `seed + 1`; each end named with its mesh address) with
/// [`checked_transfer`], each within three minutes; fails unless both arrive intact. `path`
/// says what lies between them, for the error.
///
/// # Errors
/// As [`checked_transfer`], or the bytes that arrived are not the bytes sent.
pub fn transfer_both_ways(
    topo: &Topology,
    a: (&str, Ipv6Addr),
    b: (&str, Ipv6Addr),
    (port, bytes, seed): (u16, u64, u64),
    path: &str,
) -> Result<()> {
    for (i, ((from, _), (to, dst))) in [(a, b), (b, a)].into_iter().enumerate() {
        let i = u16::try_from(i).unwrap_or_default();
        let transfer = checked_transfer(
            topo.ns(from),
            topo.ns(to),
            dst,
            port + i,
            bytes,
            seed + u64::from(i),
            Duration::from_secs(180),
        )?;
        ensure!(transfer.intact(), "{from} -> {to} {path}: {transfer:?}");
    }
    Ok(())
}

/// [`checked_transfer`] with the sender held to `bytes_per_second` (0: as fast as it can), so
/// a test can change the network while the transfer is under way.
///
/// # Errors
/// As [`checked_transfer`].
#[allow(clippy::too_many_arguments)]
pub fn checked_transfer_paced(
    from: &NetNs,
    to: &NetNs,
    dst: Ipv6Addr,
    port: u16,
    bytes: u64,
    seed: u64,
    bytes_per_second: u64,
    timeout: Duration,
) -> Result<Transfer> {
    check_addr(dst.into())?;
    let (dst_s, port_s) = (dst.to_string(), port.to_string());
    let receiver = to.spawn("python3", &["-c", RECEIVER, &dst_s, &port_s])?;
    receiver.wait_for_output("listening", Duration::from_secs(10))?;
    let output = from.exec_timeout(
        "python3",
        &[
            "-c",
            SENDER,
            &dst_s,
            &port_s,
            &bytes.to_string(),
            &seed.to_string(),
            &bytes_per_second.to_string(),
        ],
        timeout,
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let sent_line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .with_context(|| {
            format!(
                "the sender printed no result: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let received_line = receiver.wait_for_output("received ", Duration::from_secs(10))?;
    let parse = |line: &str| -> Result<(u64, String)> {
        let mut words = line.split_whitespace().skip(1);
        let n = words
            .next()
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("no byte count in {line:?}"))?;
        let hash = words
            .next()
            .with_context(|| format!("no hash in {line:?}"))?;
        Ok((n, hash.to_owned()))
    };
    let transfer = Transfer {
        sent: parse(sent_line)?,
        received: parse(&received_line)?,
    };
    ensure!(
        transfer.sent.0 == bytes,
        "the sender sent {} of {bytes} bytes",
        transfer.sent.0
    );
    Ok(transfer)
}
