//! UDP on `[::1]`: batches through the driver, and between the driver and std sockets.
#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{BACKENDS, collect, free_other, new_io, payload, take_data};
use uring_io::{Backend, Config, OpKind, PacketIo, Token, Transmit};

const N: usize = 64;

#[test]
fn batch_of_64_between_drivers() {
    for backend in BACKENDS {
        let (Some(mut tx), Some(mut rx)) = (
            new_io(backend, Config::default()),
            new_io(backend, Config::default()),
        ) else {
            continue;
        };
        let a = bind();
        let b = bind();
        rx.recv_datagrams(b.as_raw_fd(), Token(2)).unwrap();

        queue_sends(&mut tx, &a, b.local_addr().unwrap(), None);
        let sent = collect(&mut tx, OpKind::Send, N, free_other);
        assert_eq!(sent.len(), N, "{backend:?}: all sends complete");
        for (i, c) in sent.into_iter().enumerate() {
            assert_eq!(c.result, Ok(payload(i).len()), "{backend:?}: send {i}");
            tx.free(c.buf.unwrap());
        }

        let got = collect(&mut rx, OpKind::RecvDatagram, N, free_other);
        assert_eq!(got.len(), N, "{backend:?}: all datagrams arrive");
        for (i, c) in got.into_iter().enumerate() {
            assert_eq!(c.token, Token(2));
            assert_eq!(
                c.src,
                Some(a.local_addr().unwrap()),
                "{backend:?}: source of {i}"
            );
            assert!(c.armed);
            assert!(c.offset >= rx.pool().headroom());
            assert_eq!(
                take_data(&mut rx, c),
                payload(i),
                "{backend:?}: datagram {i}"
            );
        }
        assert_full_pool_after_idle(&mut rx, backend);
    }
}

#[test]
fn std_socket_to_driver() {
    for backend in BACKENDS {
        let Some(mut rx) = new_io(backend, Config::default()) else {
            continue;
        };
        let b = bind();
        rx.recv_datagrams(b.as_raw_fd(), Token(1)).unwrap();
        let s = bind();
        for i in 0..N {
            s.send_to(&payload(i), b.local_addr().unwrap()).unwrap();
        }
        let got = collect(&mut rx, OpKind::RecvDatagram, N, free_other);
        assert_eq!(got.len(), N, "{backend:?}");
        for (i, c) in got.into_iter().enumerate() {
            assert_eq!(c.src, Some(s.local_addr().unwrap()));
            assert_eq!(
                take_data(&mut rx, c),
                payload(i),
                "{backend:?}: datagram {i}"
            );
        }
    }
}

#[test]
fn driver_to_std_socket() {
    for backend in BACKENDS {
        let Some(mut tx) = new_io(backend, Config::default()) else {
            continue;
        };
        let a = bind();
        let r = bind();
        r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        queue_sends(&mut tx, &a, r.local_addr().unwrap(), None);
        let sent = collect(&mut tx, OpKind::Send, N, free_other);
        assert_eq!(sent.len(), N);
        for c in sent {
            assert!(c.result.is_ok(), "{backend:?}: {:?}", c.result);
            tx.free(c.buf.unwrap());
        }
        let mut buf = [0u8; 2048];
        for i in 0..N {
            let (n, from) = r.recv_from(&mut buf).unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(&buf[..n], &payload(i)[..], "{backend:?}: datagram {i}");
        }
    }
}

#[test]
fn gso_send_and_gro_receive() {
    const SEG: usize = 1000;
    const SEGS: usize = 5;
    for backend in BACKENDS {
        let config = Config {
            buffers: 64,
            buffer_size: 16384,
            rx_buffers: 32,
            ..Config::default()
        };
        let (Some(mut tx), Some(mut rx)) =
            (new_io(backend, config.clone()), new_io(backend, config))
        else {
            continue;
        };
        let a = bind();
        let plain = bind();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let gro = bind();
        enable_gro(&gro);
        rx.recv_datagrams(gro.as_raw_fd(), Token(9)).unwrap();

        let data: Vec<u8> = (0..SEG * SEGS)
            .map(|i| (i / SEG) as u8 + (i % 7) as u8)
            .collect();
        for dest in [plain.local_addr().unwrap(), gro.local_addr().unwrap()] {
            let buf = tx.alloc().unwrap();
            let h = tx.pool().headroom();
            tx.buf_mut(&buf)[h..h + data.len()].copy_from_slice(&data);
            tx.send_to(
                a.as_raw_fd(),
                Token(1),
                Transmit {
                    destination: dest,
                    buf,
                    range: h..h + data.len(),
                    segment_size: Some(SEG as u16),
                    source: None,
                },
            );
        }
        for c in collect(&mut tx, OpKind::Send, 2, free_other) {
            assert_eq!(c.result, Ok(data.len()), "{backend:?}: GSO send");
            tx.free(c.buf.unwrap());
        }

        // Without GRO the kernel splits the batch into SEGS datagrams.
        let mut buf = [0u8; 4096];
        for s in 0..SEGS {
            let (n, _) = plain.recv_from(&mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                &data[s * SEG..(s + 1) * SEG],
                "{backend:?}: segment {s}"
            );
        }

        // With GRO the driver sees coalesced data and the segment size.
        let mut joined = Vec::new();
        let mut sizes = Vec::new();
        while joined.len() < data.len() {
            let got = collect(&mut rx, OpKind::RecvDatagram, 1, free_other);
            assert_eq!(got.len(), 1, "{backend:?}: GRO receive");
            for c in got {
                sizes.push(c.segment_size);
                joined.extend(take_data(&mut rx, c));
            }
        }
        assert_eq!(joined, data, "{backend:?}");
        assert!(
            sizes.contains(&Some(SEG as u16)),
            "{backend:?}: segment size reported: {sizes:?}"
        );
    }
}

fn bind() -> UdpSocket {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

fn queue_sends(io: &mut PacketIo, from: &UdpSocket, to: SocketAddr, segment_size: Option<u16>) {
    for i in 0..N {
        let buf = io.alloc().unwrap();
        let h = io.pool().headroom();
        let p = payload(i);
        io.buf_mut(&buf)[h..h + p.len()].copy_from_slice(&p);
        io.send_to(
            from.as_raw_fd(),
            Token(1),
            Transmit {
                destination: to,
                buf,
                range: h..h + p.len(),
                segment_size,
                source: None,
            },
        );
    }
}

fn enable_gro(s: &UdpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int from a live local.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "UDP_GRO: {}", std::io::Error::last_os_error());
}

/// After everything was freed, buffers are either free or posted for receive: none leaked.
fn assert_full_pool_after_idle(io: &mut PacketIo, backend: Backend) {
    let mut out = Vec::with_capacity(16);
    io.submit_and_wait(&mut out, Some(Duration::from_millis(1)))
        .unwrap();
    assert!(
        out.iter().all(|c| c.buf.is_none()),
        "{backend:?}: stray completions"
    );
    let free = io.pool().n_free();
    match backend {
        Backend::Syscall => assert_eq!(free, io.pool().capacity()),
        Backend::Uring => assert_eq!(free, io.pool().capacity() - Config::default().rx_buffers),
    }
}

#[test]
fn a_wildcard_socket_learns_the_local_address_and_replies_from_it() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        // Dual-stack on the wildcard; 127.0.0.2 is local (all of 127/8 is) but is not the
        // address the route back to 127.0.0.1 picks, so only an explicit source replies from it.
        let server = UdpSocket::bind("[::]:0").unwrap();
        server.set_nonblocking(true).unwrap();
        uring_io::enable_pktinfo(server.as_raw_fd(), true).unwrap();
        let port = server.local_addr().unwrap().port();
        io.recv_datagrams(server.as_raw_fd(), Token(3)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let v6_client = bind();
        v6_client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.send_to(b"hello", ("127.0.0.2", port)).unwrap();
        v6_client.send_to(b"hello6", ("::1", port)).unwrap();
        let got = collect(&mut io, OpKind::RecvDatagram, 2, free_other);
        assert_eq!(got.len(), 2, "{backend:?}");
        let mut seen = Vec::new();
        for c in got {
            let src = c.src.unwrap();
            seen.push(c.local);
            let buf = io.alloc().unwrap();
            let h = io.pool().headroom();
            io.buf_mut(&buf)[h..h + 5].copy_from_slice(b"reply");
            io.send_to(
                server.as_raw_fd(),
                Token(4),
                Transmit {
                    destination: src,
                    buf,
                    range: h..h + 5,
                    segment_size: None,
                    source: c.local,
                },
            );
            take_data(&mut io, c);
        }
        assert!(
            seen.contains(&Some("127.0.0.2".parse().unwrap())),
            "{backend:?}: {seen:?}"
        );
        assert!(
            seen.contains(&Some("::1".parse().unwrap())),
            "{backend:?}: {seen:?}"
        );
        for c in collect(&mut io, OpKind::Send, 2, free_other) {
            assert!(c.result.is_ok(), "{backend:?}: {:?}", c.result);
            io.free(c.buf.unwrap());
        }
        let mut buf = [0u8; 64];
        let (_, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(
            from,
            SocketAddr::from(([127, 0, 0, 2], port)),
            "{backend:?}: the reply leaves from the address the client sent to"
        );
        let (_, from) = v6_client.recv_from(&mut buf).unwrap();
        assert_eq!(from.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    }
}
