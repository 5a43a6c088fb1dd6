//! A thin driver for the sans-IO DHCPv6-PD client, for the netns tests (`tests/tests/pd.rs`):
//! it runs `connectopus-dhcp6` over a real UDP socket on port 546 of one interface.
//!
//! ```text
//! dhcp6_client <interface> <state file> [--length N] [--seed N] [--capture DIR]
//! ```
//!
//! The state file holds a `PdState`: the DUID (made once, DUID-LLT from the interface's MAC)
//! and the delegations, saved after every event. Started again with it, the client Rebinds a
//! still-valid delegation (`resumed <prefix>` on stdout). Events go to stdout, one line each, for the test to wait on:
//! `bound|renewed|rebound <prefix> preferred=S valid=S t1=S t2=S server=HEX`,
//! `expired <prefix>…`, `released`, `sent <message>`, `state <name>`; ignored datagrams go to
//! stderr with the reason. Commands on stdin: `release`, `quit`. With `--capture`, every
//! received datagram is also written to `DIR/<n>-<type>.bin` (decode fixtures).

use std::io::{BufRead, ErrorKind};
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use connectopus_dhcp6::{
    Client, ClientConfig, Duid, Lease, PdEvent, PdState, Time, codec::msg, iaid_for_interface,
};

const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

fn main() {
    if let Err(e) = run() {
        eprintln!("dhcp6_client: {e:#}");
        std::process::exit(1);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The saved state, or a new one with a new DUID-LLT (DUID-UUID without a MAC), saved.
fn load_state(path: &PathBuf, interface: &str) -> Result<PdState> {
    match std::fs::read(path) {
        Ok(bytes) => {
            PdState::decode(&bytes).with_context(|| format!("state file {}", path.display()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let duid = match mac_of(interface) {
                Some(mac) => Duid::llt(now.as_secs(), mac),
                None => Duid::uuid(now.as_nanos().to_be_bytes()),
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

/// Writes `state` to `path` through a temporary file, so a crash never leaves half of it.
fn save(path: &PathBuf, state: &PdState) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, state.encode())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("saving {}", path.display()))
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
    line += &format!(
        " t1={} t2={} server={}",
        lease.t1.as_secs(),
        lease.t2.as_secs(),
        hex(&lease.server_id)
    );
    line
}

fn message_name(t: u8) -> &'static str {
    match t {
        msg::SOLICIT => "solicit",
        msg::ADVERTISE => "advertise",
        msg::REQUEST => "request",
        msg::RENEW => "renew",
        msg::REBIND => "rebind",
        msg::REPLY => "reply",
        msg::RELEASE => "release",
        msg::RECONFIGURE => "reconfigure",
        _ => "other",
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(interface), Some(state_path)) = (args.first(), args.get(1)) else {
        bail!(
            "usage: dhcp6_client <interface> <state file> [--length N] [--seed N] [--capture DIR]"
        );
    };
    let mut length = Some(56u8);
    let mut seed = u64::from(std::process::id());
    let mut capture: Option<PathBuf> = None;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--length" => length = Some(value.parse().context("--length")?),
            "--seed" => seed = value.parse().context("--seed")?,
            "--capture" => capture = Some(PathBuf::from(value)),
            _ => bail!("unknown option {flag}"),
        }
    }
    let state_path = PathBuf::from(state_path);
    let saved = load_state(&state_path, interface)?;
    let c_name = std::ffi::CString::new(interface.as_str()).context("interface name")?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {interface}");
    }

    let socket = UdpSocket::bind("[::]:546").context("binding [::]:546")?;
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
            "SO_BINDTODEVICE {interface}: {}",
            std::io::Error::last_os_error()
        );
    }
    let server = SocketAddrV6::new(ALL_SERVERS, 547, 0, ifindex);

    let (commands, command_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });

    let start = Instant::now();
    let now = || Time::from_duration(start.elapsed());
    let config = ClientConfig {
        duid: saved.duid.clone(),
        iaid: saved.iaid,
        length_hint: length,
        prefix_hint: None,
    };
    println!("duid {} iaid {}", saved.duid, saved.iaid);
    let mut client = Client::resume(
        config,
        saved.delegations_at(now(), unix_ms()),
        saved.server_id.clone(),
        now(),
        seed,
    );
    if let Some(lease) = client.lease() {
        let list: Vec<String> = lease.prefixes().iter().map(ToString::to_string).collect();
        println!("resumed {}", list.join(" "));
    }
    let mut state = client.state();
    println!("state {}", state.name());
    let mut buf = vec![0u8; 65536];
    let mut captured = 0u32;
    loop {
        while let Some(datagram) = client.poll_transmit() {
            let kind = datagram.first().copied().unwrap_or(0);
            socket
                .send_to(&datagram, server)
                .with_context(|| format!("sending to {server}"))?;
            println!("sent {}", message_name(kind));
        }
        while let Some(event) = client.poll_event() {
            let state = PdState::new(
                saved.duid.clone(),
                saved.iaid,
                client.lease(),
                now(),
                unix_ms(),
            );
            save(&state_path, &state)?;
            match event {
                PdEvent::Bound(l) => println!("{}", lease_line("bound", &l)),
                PdEvent::Renewed(l) => println!("{}", lease_line("renewed", &l)),
                PdEvent::Rebound(l) => println!("{}", lease_line("rebound", &l)),
                PdEvent::Expired(prefixes) => {
                    let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
                    println!("expired {}", list.join(" "));
                }
                PdEvent::Released => println!("released"),
            }
        }
        if client.state() != state {
            state = client.state();
            println!("state {}", state.name());
        }
        match command_rx.try_recv() {
            Ok(cmd) if cmd == "release" => {
                client.release(now());
                continue;
            }
            Ok(cmd) if cmd == "quit" => return Ok(()),
            Ok(cmd) => eprintln!("unknown command {cmd:?}"),
            Err(mpsc::TryRecvError::Empty | mpsc::TryRecvError::Disconnected) => {}
        }
        // Wake for the client's next timer, and at least every 100 ms for stdin.
        let wait = client
            .poll_timeout()
            .map(|(t, _)| t.saturating_since(now()))
            .unwrap_or(Duration::MAX)
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let bytes = &buf[..n];
                if let Some(dir) = &capture {
                    captured += 1;
                    let kind = message_name(bytes.first().copied().unwrap_or(0));
                    std::fs::write(dir.join(format!("{captured}-{kind}.bin")), bytes)?;
                }
                let before = client.ignored().0;
                client.handle_datagram(now(), bytes);
                let (count, why) = client.ignored();
                if count != before {
                    eprintln!("ignored a datagram from {from}: {}", why.unwrap_or("?"));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("receiving"),
        }
        if let Some((t, _)) = client.poll_timeout()
            && t <= now()
        {
            client.handle_timeout(now());
        }
    }
}
