//! systemd's service notification protocol (`sd_notify(3)`), by hand: each message is one
//! datagram of `KEY=value` lines sent to the Unix socket named by `NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace). Without `NOTIFY_SOCKET` (not started by systemd with
//! `Type=notify`) every call does nothing.
//!
//! The node sends `READY=1` once its TUN devices, listeners and control socket are up,
//! `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) then `READY=1` around a
//! reload, `STATUS=` with its links and backends when that changes, `WATCHDOG=1` every half
//! `WATCHDOG_USEC` when systemd's watchdog is on (`WatchdogSec=`), and `STOPPING=1` on shutdown.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// How often the status line is recomputed at most.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Talks to systemd, if it listens.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    next_status: Instant,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            match open(&name) {
                Ok(target) => Some(target),
                Err(error) => {
                    tracing::warn!(socket = %name, %error, "cannot use NOTIFY_SOCKET; not notifying systemd");
                    None
                }
            }
        });
        let watchdog = target
            .as_ref()
            .and_then(|_| watchdog_interval(std::env::var("WATCHDOG_USEC").ok().as_deref()))
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            });
        let now = Instant::now();
        Notifier {
            target,
            watchdog,
            next_watchdog: now,
            next_status: now,
            last_status: String::new(),
        }
    }

    /// The node is up: `READY=1`, with its status line.
    pub fn ready(&mut self, status: String) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.last_status = status;
    }

    /// A reload begins; [`Notifier::ready`] ends it.
    pub fn reloading(&mut self) {
        self.send(&format!(
            "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={}",
            monotonic_usec()
        ));
    }

    /// The node is shutting down.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// Called from the loop's timers: pets the watchdog when due, and sends the status line
    /// (made by `status` at most once a second) when it changed.
    pub fn tick(&mut self, status: impl FnOnce() -> String) {
        if self.target.is_none() {
            return;
        }
        let now = Instant::now();
        if let Some(interval) = self.watchdog
            && now >= self.next_watchdog
        {
            self.send("WATCHDOG=1");
            self.next_watchdog = now + interval / 2;
        }
        if now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            let status = status();
            if status != self.last_status {
                self.send(&format!("STATUS={status}"));
                self.last_status = status;
            }
        }
    }

    /// How long the loop may sleep before [`Notifier::tick`] must run again.
    pub fn next_tick_in(&self) -> Option<Duration> {
        self.watchdog
            .map(|_| self.next_watchdog.saturating_duration_since(Instant::now()))
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::debug!(%error, "sending to NOTIFY_SOCKET failed");
        }
    }
}

/// Opens an unbound datagram socket and the address of `name` (`/path` or `@abstract`).
fn open(name: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(abstract_name) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abstract_name.as_bytes())?
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)?
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "only /path and @abstract notification sockets are supported",
        ));
    };
    let socket = UnixDatagram::unbound()?;
    Ok((socket, addr))
}

/// `WATCHDOG_USEC` as a duration; `None` when unset, zero or not a number.
fn watchdog_interval(usec: Option<&str>) -> Option<Duration> {
    usec?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&u| u > 0)
        .map(Duration::from_micros)
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd wants with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_usec_is_read_as_microseconds() {
        assert_eq!(
            watchdog_interval(Some("30000000")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval(Some("0")), None);
        assert_eq!(watchdog_interval(Some("soon")), None);
        assert_eq!(watchdog_interval(None), None);
    }

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("cx-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let abstract_name = format!("cx-notify-test-{}", std::process::id());
        let abstract_server = {
            use std::os::linux::net::SocketAddrExt;
            let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        for (name, server) in [
            (path.display().to_string(), &server),
            (format!("@{abstract_name}"), &abstract_server),
        ] {
            let mut notifier = Notifier {
                target: Some(open(&name).unwrap()),
                watchdog: Some(Duration::from_secs(10)),
                next_watchdog: Instant::now(),
                next_status: Instant::now(),
                last_status: String::new(),
            };
            notifier.ready("1 link up".to_owned());
            notifier.reloading();
            notifier.tick(|| "2 links up".to_owned());
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            for _ in 0..4 {
                let n = server.recv(&mut buf).unwrap();
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            assert_eq!(got[0], "READY=1\nSTATUS=1 link up");
            assert!(got[1].starts_with("RELOADING=1\n"), "{got:?}");
            assert!(got[1].contains("\nMONOTONIC_USEC="), "{got:?}");
            assert_eq!(got[2], "WATCHDOG=1");
            assert_eq!(got[3], "STATUS=2 links up");
            // The same status is not sent again, and the watchdog is not due yet.
            notifier.next_status = Instant::now();
            notifier.tick(|| "2 links up".to_owned());
            server.set_nonblocking(true).unwrap();
            assert!(server.recv(&mut buf).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
