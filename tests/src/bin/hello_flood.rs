//! Floods a DTLS listener with ClientHellos from spoofed IPv6 sources, for the hostile-peer
//! tests (`tests/tests/hostile.rs`) and the flood benchmark (`e2e --flood`): raw IPv6 packets
//! (the header written here, so any source address goes), each from a random address and port
//! in `SOURCE_PREFIX` (a /48: the low 80 bits are random, so every hello comes from its own
//! /64), at `RATE` per second for `SECONDS`. Needs root (a raw socket).
//!
//! The generator is meant to cost the machine as little as it can, so that what a flood costs
//! the node under test is not hidden by what it costs to make it: the packets are built (and
//! checksummed) once, 16,384 of them with distinct sources, and sent in `sendmmsg` batches of
//! 64, paced by sleeping until the next batch is due. Prints `sent N cpu S` at the end (`S`:
//! the CPU seconds this process used, user and system).
//!
//! usage: hello_flood SOURCE_PREFIX DST PORT RATE SECONDS

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Distinct prebuilt packets (sources) the flood cycles through.
const PACKETS: usize = 16_384;
/// Packets per `sendmmsg`.
const BATCH: usize = 64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prefix, dst, port, rate, seconds] = args.as_slice() else {
        bail!("usage: hello_flood SOURCE_PREFIX DST PORT RATE SECONDS");
    };
    let prefix: Ipv6Addr = prefix.parse().context("SOURCE_PREFIX")?;
    let dst: Ipv6Addr = dst.parse().context("DST")?;
    let port: u16 = port.parse().context("PORT")?;
    let rate: u64 = rate.parse().context("RATE")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    for addr in [prefix, dst] {
        connectopus_tests::check_addr(addr.into())?;
    }
    let sent = flood(prefix, dst, port, rate, Duration::from_secs_f64(seconds))?;
    println!("sent {sent} cpu {:.3}", cpu_seconds());
    Ok(())
}

/// CPU seconds (user and system) this process used so far.
fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is a plain C struct; all-zero bytes are valid, and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live, writable `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A raw IPv6 socket that takes whole packets (`IPPROTO_RAW` implies `IPV6_HDRINCL`).
struct RawSocket(libc::c_int);

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn flood(prefix: Ipv6Addr, dst: Ipv6Addr, port: u16, rate: u64, duration: Duration) -> Result<u64> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket (root needed)");
    }
    let socket = RawSocket(fd);
    // SAFETY: sockaddr_in6 is a plain C struct; all-zero bytes are valid.
    let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to.sin6_addr.s6_addr = dst.octets();
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: enough randomness for source addresses.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut packets: Vec<Vec<u8>> = Vec::with_capacity(PACKETS);
    for _ in 0..PACKETS {
        let host = (u128::from(next()) << 16) ^ u128::from(next());
        let low = (1u128 << 80) - 1;
        let src = Ipv6Addr::from((u128::from(prefix) & !low) | (host & low));
        let sport = (next() as u16) | 0x8000;
        let mut packet = Vec::with_capacity(256);
        build_packet(&mut packet, src, sport, dst, port, next());
        packets.push(packet);
    }
    let mut iovecs: Vec<libc::iovec> = packets
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: `mmsghdr` is a plain C struct; all-zero bytes are valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&raw mut to).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut at = 0usize;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent + BATCH as u64 > due {
            // Sleep until the next batch is due (at least a little, at most 10 ms).
            let wait = ((sent + BATCH as u64) as f64 / rate.max(1) as f64
                - start.elapsed().as_secs_f64())
            .clamp(50e-6, 10e-3);
            std::thread::sleep(Duration::from_secs_f64(wait));
            continue;
        }
        let n = BATCH.min(PACKETS - at);
        // SAFETY: `headers[at..at + n]` point at `to`, `iovecs` and `packets`, all alive and
        // unmoved across the call; the count passed is the slice's length.
        let r = unsafe {
            libc::sendmmsg(
                socket.0,
                headers[at..at + n].as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(error).context("sending hellos");
            }
        }
        // Counted as sent even when the kernel refused some (ENOBUFS): the rate is what was
        // offered, as a real flood's would be.
        sent += n as u64;
        at = (at + n) % PACKETS;
    }
    Ok(sent)
}

/// Writes an IPv6 + UDP packet carrying a DTLS 1.2 ClientHello without a cookie.
fn build_packet(out: &mut Vec<u8>, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, r: u64) {
    let mut hello = Vec::with_capacity(128);
    let mut body = vec![0xfe, 0xfd];
    for i in 0..4 {
        body.extend_from_slice(&(r.rotate_left(i * 16)).to_be_bytes());
    }
    body.push(0); // session id
    body.push(0); // cookie
    body.extend_from_slice(&[0, 4, 0xcc, 0xac, 0x00, 0xa8]);
    body.extend_from_slice(&[1, 0]);
    let extensions = [0u8, 10, 0, 4, 0, 2, 0, 0x1d, 0, 11, 0, 2, 1, 0];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let n = body.len() as u32;
    let mut handshake = vec![1];
    handshake.extend_from_slice(&n.to_be_bytes()[1..]);
    handshake.extend_from_slice(&[0, 0, 0, 0, 0]);
    handshake.extend_from_slice(&n.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    hello.extend_from_slice(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    hello.extend_from_slice(&handshake);

    let udp_len = (8 + hello.len()) as u16;
    out.clear();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[17, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&hello);
    let checksum = udp_checksum(src, dst, &out[40..]);
    out[46..48].copy_from_slice(&checksum.to_be_bytes());
}

fn udp_checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let sum = ones_sum(&src.octets())
        + ones_sum(&dst.octets())
        + ones_sum(&(udp.len() as u32).to_be_bytes())
        + 17
        + ones_sum(udp);
    fold(sum)
}

/// The sum of the big-endian 16-bit words of `bytes` (a last odd byte padded with zero).
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// Folds a sum into the one's-complement checksum (0 is sent as 0xffff in UDP).
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}
