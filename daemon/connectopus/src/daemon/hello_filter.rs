//! The kernel's share of the ClientHello rate limit: while a listener is flooded, a classic BPF
//! socket filter (`SO_ATTACH_FILTER`) on every DTLS listener socket drops most ClientHellos in
//! the kernel's UDP receive, before they are queued on the socket, so the node is not even
//! woken for them.
//!
//! The filter passes every datagram that is not an epoch-0 DTLS ClientHello (records of
//! established links, the rest of a handshake), every ClientHello from a source prefix that
//! completed a session with this node before (the prefixes [`super::handshake_limits`] keeps;
//! at most [`MAX_FILTER_PREFIXES`]), and one in [`SAMPLE_ONE_IN`] of the others, picked at
//! random (`SKF_AD_RANDOM`), for the userspace limiter. It is attached when the limiter refuses
//! more than [`ENGAGE_REFUSALS_PER_SECOND`] and taken off once the sampled rate, scaled back,
//! has stayed below half of that for [`QUIET_SECONDS_TO_DETACH`].
//!
//! A classic filter needs no capability and no map; the kernel JIT-compiles it. The
//! datagram's bytes are addressed from the UDP header (the payload starts at 8); the source
//! address through `SKF_NET_OFF`. A load past the end of a datagram ends the program with 0
//! (drop): so while the filter is on, an empty datagram, and one that starts like a handshake
//! record but is shorter than the record and handshake headers (22 bytes), are dropped too;
//! no DTLS peer sends either.

use std::os::fd::RawFd;
use std::time::Duration;

/// The sources a filter lets through whole: (IPv6, the /64 or the /24 as in
/// [`super::handshake_limits`]).
pub(super) type Prefix = (bool, u64);

/// Of the ClientHellos from other sources, one in this many reaches the node while the filter
/// is on (100,000 a second become about 780).
pub(super) const SAMPLE_ONE_IN: u32 = 128;

/// Limiter refusals in one second that mean a flood: the filter goes on.
pub(super) const ENGAGE_REFUSALS_PER_SECOND: u64 = 2_000;

/// Seconds the (estimated) hello rate must stay below half the engage level before the filter
/// comes off.
pub(super) const QUIET_SECONDS_TO_DETACH: u32 = 10;

/// Most source prefixes a filter lets through whole (each costs the kernel five instructions
/// per ClientHello).
pub(super) const MAX_FILTER_PREFIXES: usize = 32;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_AND: u16 = 0x50;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_K: u16 = 0x00;
/// `SKF_NET_OFF`: loads relative to the network (IP) header.
const SKF_NET_OFF: i32 = -0x10_0000;
/// `SKF_AD_OFF + SKF_AD_RANDOM`: a random 32-bit number.
const SKF_AD_RANDOM: i32 = -0x1000 + 56;
/// Where the UDP payload starts in the filter's view.
const PAYLOAD: u32 = 8;
/// Return values: keep the whole datagram, or drop it.
const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program: see the module documentation. `prefixes` beyond
/// [`MAX_FILTER_PREFIXES`] are left out; `one_in` of 0 or 1 keeps every hello.
pub(super) fn program(prefixes: &[Prefix], one_in: u32) -> Vec<libc::sock_filter> {
    let mut p = vec![
        // Content type 22 (handshake), epoch 0, handshake type 1 (client_hello): else keep.
        stmt(BPF_LD | BPF_B | BPF_ABS, PAYLOAD),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 22, 1, 0),
        stmt(BPF_RET | BPF_K, KEEP),
        stmt(BPF_LD | BPF_H | BPF_ABS, PAYLOAD + 3),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        stmt(BPF_RET | BPF_K, KEEP),
        stmt(BPF_LD | BPF_B | BPF_ABS, PAYLOAD + 13),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 1, 0),
        stmt(BPF_RET | BPF_K, KEEP),
    ];
    let prefixes = &prefixes[..prefixes.len().min(MAX_FILTER_PREFIXES)];
    let (v6, v4): (Vec<Prefix>, Vec<Prefix>) = prefixes.iter().partition(|(v6, _)| *v6);
    let net = |offset: i32| (SKF_NET_OFF + offset) as u32;
    if !prefixes.is_empty() {
        // The IP version: the high nibble of the network header's first byte.
        let v6_checks = 5 * v6.len() as u32;
        let v4_checks = 4 * v4.len() as u32;
        p.push(stmt(BPF_LD | BPF_B | BPF_ABS, net(0)));
        p.push(stmt(BPF_ALU | BPF_AND | BPF_K, 0xf0));
        // Not IPv6: skip the IPv6 checks (a relative jump of at most 255 instructions, so
        // jump over them through an unconditional `ja` when the list is long).
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 0x60, 1, 0));
        p.push(stmt(BPF_JMP, v6_checks)); // `ja`: BPF_JMP | BPF_JA (0)
        for (_, prefix) in &v6 {
            // The source /64: bytes 8..16 of the IPv6 header.
            p.push(stmt(BPF_LD | BPF_W | BPF_ABS, net(8)));
            p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, (prefix >> 32) as u32, 0, 3));
            p.push(stmt(BPF_LD | BPF_W | BPF_ABS, net(12)));
            p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *prefix as u32, 0, 1));
            p.push(stmt(BPF_RET | BPF_K, KEEP));
        }
        // IPv4 (also reached by IPv6 after its checks: the version test below fails).
        p.push(stmt(BPF_LD | BPF_B | BPF_ABS, net(0)));
        p.push(stmt(BPF_ALU | BPF_AND | BPF_K, 0xf0));
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 0x40, 1, 0));
        p.push(stmt(BPF_JMP, v4_checks));
        for (_, prefix) in &v4 {
            // The source /24: the top three bytes of the IPv4 source (bytes 12..16).
            p.push(stmt(BPF_LD | BPF_W | BPF_ABS, net(12)));
            p.push(stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff_ff00));
            p.push(jump(
                BPF_JMP | BPF_JEQ | BPF_K,
                ((*prefix as u32) << 8) & 0xffff_ff00,
                0,
                1,
            ));
            p.push(stmt(BPF_RET | BPF_K, KEEP));
        }
    }
    if one_in <= 1 {
        p.push(stmt(BPF_RET | BPF_K, KEEP));
        return p;
    }
    // Keep when random <= u32::MAX / one_in.
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_RANDOM as u32));
    p.push(jump(BPF_JMP | BPF_JGT | BPF_K, u32::MAX / one_in, 1, 0));
    p.push(stmt(BPF_RET | BPF_K, KEEP));
    p.push(stmt(BPF_RET | BPF_K, DROP));
    p
}

/// Attaches (or replaces) `program` as the socket filter of `fd`.
pub(super) fn attach(fd: RawFd, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, alive across the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the socket filter off `fd` (no filter: not an error).
pub(super) fn detach(fd: RawFd) -> std::io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: plain setsockopt with an int argument, alive across the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DETACH_FILTER,
            (&raw const zero).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let error = std::io::Error::last_os_error();
    if r == 0 || error.raw_os_error() == Some(libc::ENOENT) {
        Ok(())
    } else {
        Err(error)
    }
}

/// The number of datagrams the kernel dropped on socket `fd` (its filter's drops and those
/// that found the receive buffer full), from `SO_MEMINFO`.
pub(super) fn kernel_drops(fd: RawFd) -> Option<u64> {
    /// `SK_MEMINFO_DROPS` and the array's length (linux/sock_diag.h).
    const SK_MEMINFO_DROPS: usize = 8;
    const SK_MEMINFO_VARS: usize = 9;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    (r == 0 && len as usize > SK_MEMINFO_DROPS * 4).then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// The environment variable that turns the filter off (`off`), for measurements and as an
/// escape hatch: the userspace limiter still runs.
pub(super) const DISABLE_ENV: &str = "CONNECTOPUS_HELLO_FILTER";

/// When the filter is on, from the limiter's per-second counts.
#[derive(Debug, Default)]
pub(super) struct FloodDetector {
    /// The filter is never attached (`CONNECTOPUS_HELLO_FILTER=off`).
    disabled: bool,
    /// Whether the filter should be on.
    engaged: bool,
    /// Consecutive quiet seconds while engaged.
    quiet_seconds: u32,
    /// The counts at the start of the current second, and when it started.
    window: Option<(Duration, u64, u64)>,
}

/// What the loop should do about the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FilterChange {
    Attach,
    Detach,
}

impl FloodDetector {
    /// A detector, off when the environment says so ([`DISABLE_ENV`]).
    pub(super) fn from_env() -> Self {
        let disabled = std::env::var(DISABLE_ENV).is_ok_and(|v| v == "off");
        if disabled {
            tracing::info!("{DISABLE_ENV}=off: no kernel filter against ClientHello floods");
        }
        Self {
            disabled,
            ..Self::default()
        }
    }

    /// Whether the filter should be on.
    pub(super) fn engaged(&self) -> bool {
        self.engaged
    }

    /// Looks at the limiter's running totals (`seen`: ClientHellos that reached the node,
    /// `refused`: those it dropped) once the current second is over.
    pub(super) fn observe(
        &mut self,
        now: Duration,
        seen: u64,
        refused: u64,
    ) -> Option<FilterChange> {
        let Some((start, seen0, refused0)) = self.window else {
            self.window = Some((now, seen, refused));
            return None;
        };
        let elapsed = now.saturating_sub(start);
        if elapsed < Duration::from_secs(1) {
            return None;
        }
        self.window = Some((now, seen, refused));
        let per_second = |n: u64| (n as f64 / elapsed.as_secs_f64()) as u64;
        if !self.engaged {
            if !self.disabled
                && per_second(refused.saturating_sub(refused0)) > ENGAGE_REFUSALS_PER_SECOND
            {
                self.engaged = true;
                self.quiet_seconds = 0;
                return Some(FilterChange::Attach);
            }
            return None;
        }
        // Engaged: what reaches the node is a sample; scale it back.
        let estimated =
            per_second(seen.saturating_sub(seen0)).saturating_mul(u64::from(SAMPLE_ONE_IN));
        if estimated < ENGAGE_REFUSALS_PER_SECOND / 2 {
            self.quiet_seconds += 1;
            if self.quiet_seconds >= QUIET_SECONDS_TO_DETACH {
                self.engaged = false;
                return Some(FilterChange::Detach);
            }
        } else {
            self.quiet_seconds = 0;
        }
        None
    }
}

impl super::Daemon {
    /// Once a second: puts the ClientHello filter on the DTLS listeners when a flood begins,
    /// takes it off when it is over.
    pub(super) fn watch_for_hello_floods(&mut self) {
        let change = self.flood_detector.observe(
            self.started.elapsed(),
            self.hello_limiter.seen(),
            self.limit_counters.dtls_hellos_rate_limited,
        );
        match change {
            Some(FilterChange::Attach) => {
                tracing::warn!(
                    refusals_per_second = ENGAGE_REFUSALS_PER_SECOND,
                    sample_one_in = SAMPLE_ONE_IN,
                    "ClientHello flood: the kernel filter on the DTLS listeners drops most hellos"
                );
                self.limit_counters.dtls_hello_filter_engaged += 1;
                self.attach_hello_filters();
            }
            Some(FilterChange::Detach) => {
                tracing::info!("ClientHello flood over: the kernel filter is off");
                for fd in self.listener_fds() {
                    if let Err(error) = detach(fd) {
                        tracing::warn!(%error, "taking the ClientHello filter off failed");
                    }
                }
            }
            None => {}
        }
    }

    /// Attaches the filter (with the current known prefixes) to every DTLS listener socket.
    pub(super) fn attach_hello_filters(&mut self) {
        let program = program(&self.hello_limiter.known_prefixes(), SAMPLE_ONE_IN);
        for fd in self.listener_fds() {
            if let Err(error) = attach(fd, &program) {
                tracing::warn!(%error, "attaching the ClientHello filter failed");
            }
        }
    }

    fn listener_fds(&self) -> Vec<RawFd> {
        use std::os::fd::AsRawFd;
        self.udp
            .iter()
            .flatten()
            .filter(|e| matches!(e.role, crate::dtls_link::UdpRole::Listener(_)))
            .map(|e| e.socket.as_raw_fd())
            .collect()
    }

    /// Datagrams the kernel dropped on the live DTLS listener sockets (the filter's, and those
    /// that found a full receive buffer).
    pub(super) fn listener_kernel_drops(&self) -> u64 {
        self.listener_fds()
            .into_iter()
            .filter_map(kernel_drops)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A DTLS ClientHello's first bytes (record and handshake headers), padded.
    fn client_hello() -> Vec<u8> {
        let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 1];
        d.resize(80, 0);
        d
    }

    fn data_record(tag: u8) -> Vec<u8> {
        let mut d = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4];
        d.extend_from_slice(&[tag; 4]);
        d
    }

    /// Sends `datagrams` to `rx` in order, then a data record with tag 0xee as a marker, and
    /// returns what `rx` received up to the marker (loopback keeps the order).
    fn through(rx: &UdpSocket, tx: &UdpSocket, datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let to = rx.local_addr().unwrap();
        for d in datagrams {
            tx.send_to(d, to).unwrap();
        }
        tx.send_to(&data_record(0xee), to).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        loop {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            if buf[..n] == data_record(0xee)[..] {
                return got;
            }
            got.push(buf[..n].to_vec());
        }
    }

    fn pair() -> Option<(UdpSocket, UdpSocket)> {
        // Loopback IPv6 may be off in a container; the IPv4 case below still runs.
        let rx = UdpSocket::bind("[::1]:0").ok()?;
        let tx = UdpSocket::bind("[::1]:0").ok()?;
        Some((rx, tx))
    }

    #[test]
    fn the_filter_drops_client_hellos_and_keeps_everything_else() {
        let Some((rx, tx)) = pair() else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        attach(rx.as_raw_fd(), &program(&[], u32::MAX)).unwrap();
        let hello = client_hello();
        let mut later_epoch = client_hello();
        later_epoch[4] = 1;
        let mut finished = client_hello();
        finished[13] = 20;
        let got = through(
            &rx,
            &tx,
            &[
                hello.clone(),
                data_record(1),
                later_epoch.clone(),
                finished.clone(),
            ],
        );
        assert_eq!(got, vec![data_record(1), later_epoch, finished]);
        // Off again: hellos pass.
        detach(rx.as_raw_fd()).unwrap();
        assert_eq!(through(&rx, &tx, std::slice::from_ref(&hello)), vec![hello]);
        assert!(kernel_drops(rx.as_raw_fd()).unwrap() >= 1);
    }

    #[test]
    fn hellos_from_a_listed_prefix_pass_whole() {
        let Some((rx, tx)) = pair() else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        // ::1 is in the /64 0:0:0:0::/64.
        let listed = [
            (false, 0x00c6_1200),
            (true, 0xfd00_0000_0000_0001),
            (true, 0),
        ];
        attach(rx.as_raw_fd(), &program(&listed, u32::MAX)).unwrap();
        let hello = client_hello();
        assert_eq!(
            through(&rx, &tx, std::slice::from_ref(&hello)),
            vec![hello.clone()]
        );
        // Without the loopback prefix in the list, dropped.
        attach(rx.as_raw_fd(), &program(&listed[..2], u32::MAX)).unwrap();
        assert_eq!(through(&rx, &tx, &[hello]), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn ipv4_prefixes_are_matched_by_their_24_bits() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hello = client_hello();
        // 127.0.0.0/24 is 0x7f0000.
        attach(
            rx.as_raw_fd(),
            &program(&[(true, 0x7f00_0000), (false, 0x7f_0000)], u32::MAX),
        )
        .unwrap();
        assert_eq!(
            through(&rx, &tx, std::slice::from_ref(&hello)),
            vec![hello.clone()]
        );
        attach(rx.as_raw_fd(), &program(&[(false, 0x7f_0001)], u32::MAX)).unwrap();
        assert_eq!(through(&rx, &tx, &[hello]), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn about_one_in_n_hellos_is_sampled() {
        let Some((rx, tx)) = pair() else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        attach(rx.as_raw_fd(), &program(&[], 8)).unwrap();
        let hellos = vec![client_hello(); 800];
        let mut got = 0;
        // In rounds, so the receive buffer never fills.
        for chunk in hellos.chunks(100) {
            got += through(&rx, &tx, chunk).len();
        }
        // 100 expected; far outside this range only if the sampling is broken.
        assert!((40..=200).contains(&got), "{got} of 800 passed");
    }

    #[test]
    fn a_flood_engages_the_filter_and_a_quiet_spell_releases_it() {
        let mut d = FloodDetector::default();
        let s = Duration::from_secs;
        assert_eq!(d.observe(s(0), 0, 0), None);
        assert_eq!(d.observe(s(1), 1_000, 900), None);
        assert_eq!(d.observe(s(2), 50_000, 40_000), Some(FilterChange::Attach));
        assert!(d.engaged());
        // Engaged: 800 sampled a second stand for 100,000.
        let mut seen = 50_000;
        for t in 3..30 {
            seen += 800;
            assert_eq!(d.observe(s(t), seen, 40_000), None);
        }
        // Quiet: a few a second (a few hundred estimated) for ten seconds.
        for t in 30..39 {
            seen += 2;
            assert_eq!(d.observe(s(t), seen, 40_000), None);
        }
        assert_eq!(
            d.observe(s(39), seen + 2, 40_000),
            Some(FilterChange::Detach)
        );
        assert!(!d.engaged());
    }
}
