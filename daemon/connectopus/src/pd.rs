//! The DHCPv6 prefix-delegation driver (docs/dynamic-mesh.md §2.5): runs the sans-IO client
//! of `connectopus-dhcp6` over a UDP socket on port 546 of one interface, with the real clock,
//! and saves its state (DUID, IAID, delegations) after every event.
//!
//! `connectopus pd-client` runs it in the foreground and prints what it is delegated, so an
//! operator can check that an upstream router delegates before the mesh relies on it (and the
//! netns tests drive it against Kea and ISC dhcpd). The node will run the same [`PdDriver`]
//! for `global.delegated` (§2.5; not wired yet).

use std::io::ErrorKind;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use connectopus_core::Time;
use connectopus_dhcp6::{
    Client, ClientConfig, Duid, Lease, PdEvent, PdState, State, iaid_for_interface,
};

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// `IFA_F_TENTATIVE` and `IFA_F_DADFAILED` in `/proc/net/if_inet6`.
const TENTATIVE: u32 = 0x40;
const DAD_FAILED: u32 = 0x08;

/// Arguments of `connectopus pd-client`.
#[derive(Debug, clap::Args)]
pub struct PdClientArgs {
    /// The upstream interface to ask on.
    #[arg(long)]
    pub interface: String,
    /// Where the DUID and the delegations are kept (made on first use).
    #[arg(long)]
    pub state: PathBuf,
    /// The prefix length to ask for.
    #[arg(long, default_value_t = 56)]
    pub length: u8,
    /// Releases the saved delegation and exits, instead of asking for one.
    #[arg(long)]
    pub release: bool,
    /// How long to wait for the interface's link-local address to leave DAD, in seconds.
    #[arg(long, default_value_t = 10)]
    pub link_wait: u64,
}

/// Whether `interface` has a link-local address that finished duplicate address detection,
/// from the text of `/proc/net/if_inet6` (address, ifindex, prefix length, scope, flags,
/// name, in hex except the name).
fn usable_link_local(if_inet6: &str, interface: &str) -> bool {
    if_inet6.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _, _, scope, flags, name] = f.as_slice() else {
            return false;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(TENTATIVE);
        *name == interface
            && *scope == "20"
            && addr.starts_with("fe80")
            && flags & (TENTATIVE | DAD_FAILED) == 0
    })
}

/// Waits until `interface` can send from its link-local address (a DHCPv6 server on the
/// link answers there; sending from a tentative address fails).
fn wait_link_local(interface: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        if usable_link_local(&text, interface) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{interface} has no link-local address out of DAD after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The wall clock to read a saved state's Unix-millisecond deadlines against: now, or the
/// file's last write (its mtime, from the same clock) if the clock reads earlier, i.e. is
/// behind. A clock wrong at boot then never makes a saved delegation last longer than it had
/// left when it was saved (`docs/dynamic-mesh.md` §1.7 "Wall clock").
pub(crate) fn unix_ms_for_saved(path: &Path) -> u64 {
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    unix_ms().max(written)
}

fn mac_of(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// Writes `state` through a temporary file and a rename, so a crash never leaves half of it.
fn save(path: &Path, state: &PdState) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, state.encode())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("saving {}", path.display()))
}

/// The saved state, or a new one with a new DUID (DUID-LLT from the interface's MAC, else
/// DUID-UUID), saved at once so the DUID never changes.
fn load_state(path: &Path, interface: &str) -> Result<PdState> {
    match std::fs::read(path) {
        Ok(bytes) => {
            PdState::decode(&bytes).with_context(|| format!("DHCPv6 state file {}", path.display()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let duid = match mac_of(interface) {
                Some(mac) => Duid::llt(now.as_secs(), mac),
                None => {
                    let mut random = [0u8; 16];
                    getrandom(&mut random)?;
                    Duid::uuid(random)
                }
            };
            let state = PdState {
                duid,
                iaid: iaid_for_interface(interface),
                server_id: Vec::new(),
                delegations: Vec::new(),
            };
            save(path, &state)?;
            Ok(state)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// The client on a socket: [`PdDriver::step`] sends what is due, waits for one datagram or
/// the next timer, and returns the events.
#[derive(Debug)]
pub struct PdDriver {
    socket: UdpSocket,
    server: SocketAddrV6,
    client: Client,
    start: Instant,
    state_path: PathBuf,
    duid: Duid,
    iaid: u32,
    buf: Vec<u8>,
}

impl PdDriver {
    /// Opens `[::]:546` bound to `interface` (`SO_BINDTODEVICE`) once its link-local address
    /// is usable, and starts the client from the state at `state_path`: Rebinding a saved,
    /// still-valid delegation, else Soliciting.
    ///
    /// # Errors
    /// The interface is missing or never gets a link-local address, the socket cannot be
    /// opened (port 546 needs `CAP_NET_BIND_SERVICE`), or the state file is unreadable.
    pub fn open(
        interface: &str,
        state_path: &Path,
        length: Option<u8>,
        link_wait: Duration,
    ) -> Result<PdDriver> {
        let c_name = std::ffi::CString::new(interface).context("interface name")?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {interface}");
        }
        wait_link_local(interface, link_wait)?;
        let saved = load_state(state_path, interface)?;
        let socket = UdpSocket::bind("[::]:546").context("binding UDP [::]:546")?;
        let name = interface.as_bytes();
        // SAFETY: SO_BINDTODEVICE reads `name.len()` bytes from a live slice; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                libc::socklen_t::try_from(name.len()).unwrap_or(0),
            )
        };
        if rc != 0 {
            bail!(
                "binding the DHCPv6 socket to {interface}: {}",
                std::io::Error::last_os_error()
            );
        }
        let start = Instant::now();
        let now = Time::ZERO;
        let mut seed = [0u8; 8];
        getrandom(&mut seed)?;
        let config = ClientConfig {
            duid: saved.duid.clone(),
            iaid: saved.iaid,
            length_hint: length,
            prefix_hint: None,
        };
        let client = Client::resume(
            config,
            saved.delegations_at(now, unix_ms_for_saved(state_path)),
            saved.server_id.clone(),
            now,
            u64::from_le_bytes(seed),
        );
        Ok(PdDriver {
            socket,
            server: SocketAddrV6::new(ALL_SERVERS, 547, 0, ifindex),
            client,
            start,
            state_path: state_path.to_path_buf(),
            duid: saved.duid,
            iaid: saved.iaid,
            buf: vec![0; 65_536],
        })
    }

    /// The client's clock: time since the driver opened.
    pub fn now(&self) -> Time {
        Time::from_duration(self.start.elapsed())
    }

    /// Our DUID.
    pub fn duid(&self) -> &Duid {
        &self.duid
    }

    /// The client (state, lease, ignored datagrams).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts a Release of the current delegations (see [`Client::release`]). The lease is
    /// dropped at once, and saved so: a restart before the exchange ends does not resume it.
    pub fn release(&mut self) {
        let now = self.now();
        self.client.release(now);
        if let Err(error) = self.save_state() {
            tracing::warn!(error = %format!("{error:#}"), "dhcp6 state not saved after the release");
        }
    }

    /// Saves the DUID, IAID and current lease to the state file.
    fn save_state(&self) -> Result<()> {
        let state = PdState::new(
            self.duid.clone(),
            self.iaid,
            self.client.lease(),
            self.now(),
            unix_ms(),
        );
        save(&self.state_path, &state)
    }

    /// Sends what is due, waits at most `max_wait` for a datagram or the client's next timer,
    /// and returns the events, having saved the state if there were any (a failed save is
    /// logged; the events are returned all the same).
    ///
    /// # Errors
    /// The socket fails.
    pub fn step(&mut self, max_wait: Duration) -> Result<Vec<PdEvent>> {
        while let Some(datagram) = self.client.poll_transmit() {
            if let Err(e) = self.socket.send_to(&datagram, self.server) {
                // A link that is down now may be back at the next retransmission.
                tracing::warn!(server = %self.server, "dhcp6 send failed: {e}");
            }
        }
        let wait = self
            .client
            .poll_timeout()
            .map(|(t, _)| t.saturating_since(self.now()))
            .unwrap_or(max_wait)
            .clamp(
                Duration::from_millis(1),
                max_wait.max(Duration::from_millis(1)),
            );
        self.socket.set_read_timeout(Some(wait))?;
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => {
                let now = self.now();
                let before = self.client.ignored().0;
                let bytes = self.buf.get(..n).unwrap_or_default();
                self.client.handle_datagram(now, bytes);
                let (count, why) = self.client.ignored();
                if count != before {
                    tracing::debug!(%from, reason = why.unwrap_or("?"), "dhcp6 datagram ignored");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("receiving DHCPv6"),
        }
        if let Some((t, _)) = self.client.poll_timeout()
            && t <= self.now()
        {
            let now = self.now();
            self.client.handle_timeout(now);
        }
        let events: Vec<PdEvent> = std::iter::from_fn(|| self.client.poll_event()).collect();
        // A state file that cannot be written (disk full, read-only) must not lose the events:
        // the delegation changed all the same.
        if !events.is_empty()
            && let Err(error) = self.save_state()
        {
            tracing::warn!(error = %format!("{error:#}"), state = %self.state_path.display(), "dhcp6 state not saved");
        }
        // Datagrams queued by the events' transitions go out at the next step at once.
        Ok(events)
    }
}

fn lease_line(kind: &str, lease: &Lease) -> String {
    let mut line = kind.to_owned();
    for d in &lease.delegations {
        line += &format!(
            " {} preferred={} valid={}",
            d.prefix,
            d.preferred.as_secs(),
            d.valid.as_secs()
        );
    }
    let server: String = lease.server_id.iter().map(|b| format!("{b:02x}")).collect();
    line += &format!(
        " t1={} t2={} server={server}",
        lease.t1.as_secs(),
        lease.t2.as_secs()
    );
    line
}

/// One line per event, as `pd-client` prints them.
pub fn describe(event: &PdEvent) -> String {
    match event {
        PdEvent::Bound(l) => lease_line("bound", l),
        PdEvent::Renewed(l) => lease_line("renewed", l),
        PdEvent::Rebound(l) => lease_line("rebound", l),
        PdEvent::Expired(prefixes) => {
            let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
            format!("expired {}", list.join(" "))
        }
        PdEvent::Released { acknowledged: true } => "released".to_owned(),
        PdEvent::Released {
            acknowledged: false,
        } => "released (no answer from the server)".to_owned(),
    }
}

/// `connectopus pd-client`: asks for a prefix on an interface and prints what happens (one
/// line per event and state change) until stopped; with `--release`, gives the saved
/// delegation back and exits.
///
/// # Errors
/// As [`PdDriver::open`] and [`PdDriver::step`].
pub fn run(args: &PdClientArgs) -> Result<()> {
    let mut driver = PdDriver::open(
        &args.interface,
        &args.state,
        Some(args.length),
        Duration::from_secs(args.link_wait),
    )?;
    println!(
        "duid {} iaid {}",
        driver.duid(),
        driver.client().config().iaid
    );
    if let Some(lease) = driver.client().lease() {
        let list: Vec<String> = lease.prefixes().iter().map(ToString::to_string).collect();
        println!("resumed {}", list.join(" "));
    }
    if args.release {
        driver.release();
    }
    let mut state = None;
    loop {
        let before = driver.client().state();
        if state != Some(before) {
            state = Some(before);
            println!("state {}", before.name());
        }
        for event in driver.step(Duration::from_millis(200))? {
            println!("{}", describe(&event));
            if args.release && matches!(event, PdEvent::Released { .. }) {
                return Ok(());
            }
        }
        if args.release && driver.client().state() == State::Idle {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_must_be_out_of_dad() {
        let text = "\
fe800000000000000000000000000001 02 40 20 c0 wan0
20010db8000000000000000000000001 02 40 00 80 wan0
fe800000000000000000000000000002 03 40 20 80 lan0
";
        assert!(!usable_link_local(text, "wan0"), "tentative (0x40)");
        assert!(usable_link_local(text, "lan0"));
        assert!(!usable_link_local(text, "other"));
        let failed = "fe800000000000000000000000000001 02 40 20 88 wan0\n";
        assert!(!usable_link_local(failed, "wan0"), "DAD failed (0x08)");
        assert!(!usable_link_local("garbage\n\n", "wan0"));
    }
}
