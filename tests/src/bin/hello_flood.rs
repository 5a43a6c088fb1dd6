//! Floods a DTLS listener with ClientHellos from spoofed IPv6 sources, for the hostile-peer
//! tests (`tests/tests/hostile.rs`): raw IPv6 packets (the header written here, so any source
//! address goes), each from a random address and port in `SOURCE_PREFIX` (a /48: the low 80
//! bits are random, so every hello comes from its own /64), at `RATE` per second for `SECONDS`.
//! Needs root (a raw socket). Prints `sent N` at the end.
//!
//! usage: hello_flood SOURCE_PREFIX DST PORT RATE SECONDS

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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
    println!("sent {sent}");
    Ok(())
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
    let start = Instant::now();
    let mut sent = 0u64;
    // One packet, patched per hello: source address, source port, random, checksum.
    let mut packet = Vec::with_capacity(256);
    build_packet(&mut packet, prefix, 0, dst, port, 0);
    let base_sum = {
        packet[46..48].copy_from_slice(&[0, 0]);
        packet[8..24].copy_from_slice(&[0; 16]);
        packet[40..42].copy_from_slice(&[0, 0]);
        ones_sum(&packet[24..40])
            + ones_sum(&packet[40..])
            + u32::from(packet[4]) * 256
            + u32::from(packet[5])
            + 17
    };
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let host = (u128::from(next()) << 16) ^ u128::from(next());
        let low = (1u128 << 80) - 1;
        let src = Ipv6Addr::from((u128::from(prefix) & !low) | (host & low));
        let sport = (next() as u16) | 0x8000;
        packet[8..24].copy_from_slice(&src.octets());
        packet[40..42].copy_from_slice(&sport.to_be_bytes());
        let sum = base_sum + ones_sum(&src.octets()) + u32::from(sport);
        packet[46..48].copy_from_slice(&fold(sum).to_be_bytes());
        // SAFETY: the buffer and address live across the call and their lengths are passed.
        let n = unsafe {
            libc::sendto(
                socket.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(error).context("sending a hello");
            }
        }
        sent += 1;
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
