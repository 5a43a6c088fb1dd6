//! TUN inside a fresh network namespace (needs root): the kernel's packets reach the driver, and
//! the driver's packets reach a kernel socket.
#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{BACKENDS, Tun, collect, free_other, in_netns, ipv6_udp, new_io, require_root};
use uring_io::{Backend, Config, Errno, OpKind, Token};

const N: usize = 32;
const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);

#[test]
fn driver_reads_packets_the_kernel_routes_into_tun() {
    if !require_root("driver_reads_packets_the_kernel_routes_into_tun") {
        return;
    }
    for backend in BACKENDS {
        in_netns(move || read_from_tun(backend, Config::default()));
        // A ring smaller than the burst: exercises the ENOBUFS end and re-arm of the receive.
        let small = Config {
            buffers: 8,
            rx_buffers: 8,
            ..Config::default()
        };
        in_netns(move || read_from_tun(backend, small));
    }
    // The pre-6.7 path: one-shot buffer-select reads re-armed per packet.
    let oneshot = Config {
        read_multishot: false,
        ..Config::default()
    };
    in_netns(move || read_from_tun(Backend::Uring, oneshot));
}

#[test]
fn driver_writes_packets_the_kernel_delivers() {
    if !require_root("driver_writes_packets_the_kernel_delivers") {
        return;
    }
    for backend in BACKENDS {
        in_netns(move || write_to_tun(backend));
    }
}

fn read_from_tun(backend: Backend, config: Config) {
    let Some(mut io) = new_io(backend, config) else {
        return;
    };
    let tun = Tun::create("fd00:1::1/64");
    io.recv_packets(tun.raw(), Token(7)).unwrap();

    let s = UdpSocket::bind(SocketAddr::new(LOCAL.into(), 0)).unwrap();
    let sport = s.local_addr().unwrap().port();
    for i in 0..N {
        s.send_to(&common::payload(i), SocketAddr::new(REMOTE.into(), 9999))
            .unwrap();
    }

    // The kernel also sends its own packets (MLD, router solicitations): keep only ours.
    // Buffers go back at once, so a small pool keeps cycling through the ring.
    let mut ours = Vec::new();
    let mut out = Vec::with_capacity(64);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ours.len() < N && Instant::now() < deadline {
        io.submit_and_wait(&mut out, Some(Duration::from_millis(50)))
            .unwrap();
        for c in out.drain(..) {
            assert_eq!(c.kind, OpKind::RecvPacket);
            assert_eq!(c.token, Token(7));
            assert!(c.armed, "{backend:?}: {:?}", c.result);
            if c.result == Err(Errno::NOBUFS) {
                eprintln!("{backend:?}: pool ran dry, receive re-arms when buffers return");
                continue;
            }
            assert_eq!(c.offset, io.pool().headroom());
            let p = common::take_data(&mut io, c);
            assert_eq!(p[0] >> 4, 6, "{backend:?}: an IPv6 packet");
            let is_ours = p.len() >= 48
                && p[6] == 17
                && p[24..40] == REMOTE.octets()
                && u16::from_be_bytes([p[40], p[41]]) == sport
                && u16::from_be_bytes([p[42], p[43]]) == 9999;
            if is_ours {
                assert_eq!(p[8..24], LOCAL.octets());
                ours.push(p[48..].to_vec());
            }
        }
    }
    assert_eq!(
        ours.len(),
        N,
        "{backend:?}: all datagrams read from the TUN"
    );
    for (i, p) in ours.iter().enumerate() {
        assert_eq!(p, &common::payload(i), "{backend:?}: packet {i}");
    }
}

fn write_to_tun(backend: Backend) {
    let Some(mut io) = new_io(backend, Config::default()) else {
        return;
    };
    let tun = Tun::create("fd00:1::1/64");
    let r = UdpSocket::bind(SocketAddr::new(LOCAL.into(), 0)).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dport = r.local_addr().unwrap().port();

    for i in 0..N {
        let pkt = ipv6_udp(REMOTE, LOCAL, 7777, dport, &common::payload(i));
        let buf = io.alloc().unwrap();
        let h = io.pool().headroom();
        io.buf_mut(&buf)[h..h + pkt.len()].copy_from_slice(&pkt);
        io.write(tun.raw(), Token(3), buf, h..h + pkt.len());
    }
    let done = collect(&mut io, OpKind::Write, N, free_other);
    assert_eq!(done.len(), N, "{backend:?}");
    for c in done {
        assert!(c.result.is_ok(), "{backend:?}: {:?}", c.result);
        io.free(c.buf.unwrap());
    }

    let mut buf = [0u8; 2048];
    for i in 0..N {
        let (n, from) = r.recv_from(&mut buf).unwrap();
        assert_eq!(from, SocketAddr::new(REMOTE.into(), 7777));
        assert_eq!(
            &buf[..n],
            &common::payload(i)[..],
            "{backend:?}: datagram {i}"
        );
    }
    assert!(tun.fd.as_raw_fd() >= 0);
}
