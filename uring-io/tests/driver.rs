//! Driver behaviour independent of the device: pool exhaustion, bursts larger than the pool,
//! wake-ups from other threads, timeouts, reads and writes on a stream socket.
#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{BACKENDS, collect, free_other, new_io, payload};
use uring_io::{Config, Errno, OpKind, Token, Waiting};

#[test]
fn alloc_reports_exhaustion_and_never_hands_out_twice() {
    for backend in BACKENDS {
        let config = Config {
            buffers: 32,
            rx_buffers: 8,
            ..Config::default()
        };
        let Some(mut io) = new_io(backend, config) else {
            continue;
        };
        let mut seen = HashSet::new();
        let mut held = Vec::new();
        while let Some(b) = io.alloc() {
            assert!(
                seen.insert(b.index()),
                "{backend:?}: buffer {} handed out twice",
                b.index()
            );
            held.push(b);
        }
        assert!(!held.is_empty());
        assert!(
            io.alloc().is_none(),
            "{backend:?}: exhaustion is None, not a panic"
        );
        for b in held {
            io.free(b);
        }
    }
}

#[test]
fn burst_larger_than_pool_is_received_after_buffers_return() {
    const BURST: usize = 64;
    for backend in BACKENDS {
        let config = Config {
            buffers: 16,
            rx_buffers: 16,
            ..Config::default()
        };
        let Some(mut io) = new_io(backend, config) else {
            continue;
        };
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        io.recv_datagrams(rx.as_raw_fd(), Token(1)).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        for i in 0..BURST {
            tx.send_to(&payload(i), rx.local_addr().unwrap()).unwrap();
        }

        // Hold every buffer until the driver reports it ran dry, then return them all.
        let mut held = Vec::new();
        let mut received = Vec::new();
        let mut saw_nobufs = 0;
        let mut out = Vec::with_capacity(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < BURST && Instant::now() < deadline {
            io.submit_and_wait(&mut out, Some(Duration::from_millis(20)))
                .unwrap();
            for c in out.drain(..) {
                assert_eq!(c.kind, OpKind::RecvDatagram);
                match c.result {
                    Err(Errno::NOBUFS) => {
                        assert!(c.buf.is_none() && c.armed);
                        saw_nobufs += 1;
                        for b in held.drain(..) {
                            io.free(b);
                        }
                    }
                    Ok(_) => {
                        let r = c.data_range().unwrap();
                        let b = c.buf.unwrap();
                        received.push(io.buf(&b)[r].to_vec());
                        held.push(b);
                    }
                    Err(e) => panic!("{backend:?}: {e}"),
                }
            }
            assert!(held.len() <= 16);
        }
        assert!(saw_nobufs > 0, "{backend:?}: exhaustion is reported");
        assert_eq!(received.len(), BURST, "{backend:?}: nothing lost");
        for (i, d) in received.iter().enumerate() {
            assert_eq!(d, &payload(i), "{backend:?}: datagram {i}");
        }
    }
}

#[test]
fn waker_interrupts_a_wait() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        let waker = io.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake().unwrap();
        });
        let start = Instant::now();
        let mut out = Vec::with_capacity(8);
        io.submit_and_wait(&mut out, Some(Duration::from_secs(10)))
            .unwrap();
        t.join().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{backend:?}: woke early"
        );
        assert_eq!(out.len(), 1, "{backend:?}: {out:?}");
        assert_eq!(out[0].kind, OpKind::Wake);

        // Wakes coalesce, and the wake read is re-armed.
        io.waker().wake().unwrap();
        io.waker().wake().unwrap();
        let got = collect(&mut io, OpKind::Wake, 1, free_other);
        assert_eq!(got.len(), 1, "{backend:?}: second wake");
        out.clear();
        io.submit_and_wait(&mut out, Some(Duration::from_millis(30)))
            .unwrap();
        assert!(out.is_empty(), "{backend:?}: wakes coalesce: {out:?}");
    }
}

#[test]
fn timeout_returns_empty() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        let mut out = Vec::with_capacity(8);
        let start = Instant::now();
        let n = io
            .submit_and_wait(&mut out, Some(Duration::from_millis(100)))
            .unwrap();
        let took = start.elapsed();
        assert_eq!(n, 0, "{backend:?}");
        assert!(
            took >= Duration::from_millis(90),
            "{backend:?}: returned after {took:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "{backend:?}: returned after {took:?}"
        );
    }
}

/// A wait's timeout is a timer kept on the ring: armed once for a deadline and kept while later
/// waits' deadlines are no nearer (no timer started and cancelled per wait), moved when a wait
/// must end sooner, and armed again once it fired.
#[test]
fn the_wait_timer_is_armed_once_per_deadline_and_moved_when_one_comes_nearer() {
    let Some(mut io) = new_io(uring_io::Backend::Uring, Config::default()) else {
        return;
    };
    let mut out = Vec::with_capacity(8);
    for round in 0..20 {
        io.waker().wake().unwrap();
        out.clear();
        while out.is_empty() {
            io.submit_and_wait(&mut out, Some(Duration::from_secs(30)))
                .unwrap();
        }
        assert_eq!(out[0].kind, OpKind::Wake, "round {round}: {out:?}");
    }
    assert_eq!(
        io.deadline_timers_programmed(),
        1,
        "twenty waits for a later deadline keep the one timer"
    );

    // A nearer deadline moves the armed timer: the wait ends long before the 30 s one.
    let start = Instant::now();
    out.clear();
    io.submit_and_wait(&mut out, Some(Duration::from_millis(50)))
        .unwrap();
    let took = start.elapsed();
    assert!(out.is_empty(), "{out:?}");
    assert!(
        took >= Duration::from_millis(40) && took < Duration::from_secs(15),
        "a 50 ms wait behind a 30 s timer returned after {took:?}"
    );
    assert_eq!(io.deadline_timers_programmed(), 2, "moved once");

    // It fired: the next wait arms a new one, and sleeps its whole timeout.
    let start = Instant::now();
    out.clear();
    while out.is_empty() && start.elapsed() < Duration::from_millis(100) {
        io.submit_and_wait(&mut out, Some(Duration::from_millis(100)))
            .unwrap();
    }
    let took = start.elapsed();
    assert!(out.is_empty(), "{out:?}");
    assert!(took >= Duration::from_millis(90), "returned after {took:?}");
    assert_eq!(
        io.deadline_timers_programmed(),
        3,
        "armed again after it fired"
    );

    let syscall = new_io(uring_io::Backend::Syscall, Config::default()).unwrap();
    assert_eq!(syscall.deadline_timers_programmed(), 0);
}

/// `status` shows how each worker waits: a driver reports the busy polling and idle wake-ups
/// in force, and none on the syscall backend, which ignores both.
#[test]
fn waiting_reports_what_the_backend_does() {
    if [uring_io::BUSY_POLL_ENV, uring_io::IDLE_WAKE_ENV]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        eprintln!("SKIP: the environment overrides the configured waiting");
        return;
    }
    let config = Config {
        busy_poll: Duration::from_micros(7),
        idle_wake: Duration::from_micros(300),
        ..Config::default()
    };
    if let Some(io) = new_io(uring_io::Backend::Uring, config.clone()) {
        assert_eq!(
            io.waiting(),
            Waiting {
                busy_poll: Duration::from_micros(7),
                idle_wake: Duration::from_micros(300),
            }
        );
    }
    let io = new_io(uring_io::Backend::Syscall, config).unwrap();
    assert_eq!(io.waiting(), Waiting::default());
}

#[test]
fn idle_wake_caps_sleeps_only_for_a_while_after_a_receive() {
    let Some(mut io) = new_io(
        uring_io::Backend::Uring,
        Config {
            idle_wake: Duration::from_millis(5),
            ..Config::default()
        },
    ) else {
        return;
    };
    let mut out = Vec::with_capacity(8);
    let sleeps = |io: &mut uring_io::PacketIo, out: &mut Vec<_>, timeout| {
        let start = Instant::now();
        io.submit_and_wait(out, Some(timeout)).unwrap();
        start.elapsed()
    };
    // Nothing received yet: the caller's timeout stands.
    let took = sleeps(&mut io, &mut out, Duration::from_millis(200));
    assert!(
        took >= Duration::from_millis(190),
        "capped before any receive: {took:?}"
    );

    let rx = UdpSocket::bind("[::1]:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    io.recv_datagrams(rx.as_raw_fd(), Token(1)).unwrap();
    let tx = UdpSocket::bind("[::1]:0").unwrap();
    tx.send_to(b"wake", rx.local_addr().unwrap()).unwrap();
    let got = collect(&mut io, OpKind::RecvDatagram, 1, free_other);
    for c in got {
        if let Some(b) = c.buf {
            io.free(b);
        }
    }
    // Right after a receive a long wait comes back, empty, well before its timeout.
    out.clear();
    let took = sleeps(&mut io, &mut out, Duration::from_secs(20));
    assert!(out.is_empty(), "{out:?}");
    assert!(
        took < Duration::from_secs(10),
        "not capped after a receive: {took:?}"
    );

    // Once the window has passed without a receive, the caller's timeout stands again: 200 ms
    // of waits return at most twice more (a timer an earlier wait armed may end one early),
    // where 5 ms caps would return forty times.
    std::thread::sleep(uring_io::IDLE_WAKE_WINDOW + Duration::from_millis(10));
    let start = Instant::now();
    let mut returns = 0;
    while start.elapsed() < Duration::from_millis(200) {
        let left = Duration::from_millis(200).saturating_sub(start.elapsed());
        io.submit_and_wait(&mut out, Some(left)).unwrap();
        returns += 1;
    }
    assert!(out.is_empty(), "{out:?}");
    assert!(
        returns <= 3,
        "still capped after the window: {returns} returns in 200 ms"
    );
}

#[test]
fn read_and_write_on_a_stream_socket() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        let l = TcpListener::bind("[::1]:0").unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (conn, _) = l.accept().unwrap();
        conn.set_nonblocking(true).unwrap();

        let buf = io.alloc().unwrap();
        let msg = b"hello over tcp";
        io.buf_mut(&buf)[100..100 + msg.len()].copy_from_slice(msg);
        io.write(conn.as_raw_fd(), Token(5), buf, 100..100 + msg.len());
        let w = collect(&mut io, OpKind::Write, 1, free_other);
        assert_eq!(w[0].result, Ok(msg.len()), "{backend:?}");
        let mut got = [0u8; 64];
        let n = peer.read(&mut got).unwrap();
        assert_eq!(&got[..n], msg);

        // Queue the read before the data exists: it must wait, not fail with EAGAIN.
        let buf = w.into_iter().next().unwrap().buf.unwrap();
        io.read(conn.as_raw_fd(), Token(6), buf);
        let mut out = Vec::with_capacity(4);
        io.submit_and_wait(&mut out, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(out.is_empty(), "{backend:?}: read completed early: {out:?}");
        peer.write_all(b"reply").unwrap();
        let r = collect(&mut io, OpKind::Read, 1, free_other);
        assert_eq!(r[0].token, Token(6));
        let c = r.into_iter().next().unwrap();
        assert_eq!(common::take_data(&mut io, c), b"reply", "{backend:?}");
    }
}

#[test]
fn packet_io_moves_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<uring_io::PacketIo>();
    assert_send_sync::<uring_io::Waker>();
}

#[test]
fn drop_with_operations_in_flight_and_queued() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        io.recv_datagrams(udp.as_raw_fd(), Token(1)).unwrap();
        let l = TcpListener::bind("[::1]:0").unwrap();
        let _peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (conn, _) = l.accept().unwrap();
        conn.set_nonblocking(true).unwrap();
        let buf = io.alloc().unwrap();
        io.read(conn.as_raw_fd(), Token(2), buf);
        let mut out = Vec::with_capacity(8);
        io.submit_and_wait(&mut out, Some(Duration::from_millis(10)))
            .unwrap();
        // One more queued but never submitted.
        let buf = io.alloc().unwrap();
        io.read(conn.as_raw_fd(), Token(3), buf);

        // The thread that drops must not hang, and the moved driver must still work.
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            drop(io);
            start.elapsed()
        });
        let took = t.join().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "{backend:?}: drop took {took:?}"
        );
    }
}

#[test]
fn disarm_stops_a_receive_and_rearm_works() {
    for backend in BACKENDS {
        let Some(mut io) = new_io(backend, Config::default()) else {
            continue;
        };
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        let to = rx.local_addr().unwrap();
        io.recv_datagrams(rx.as_raw_fd(), Token(4)).unwrap();
        tx.send_to(b"one", to).unwrap();
        let got = collect(&mut io, OpKind::RecvDatagram, 1, free_other);
        assert_eq!(
            common::take_data(&mut io, got.into_iter().next().unwrap()),
            b"one"
        );

        assert!(io.disarm(Token(4)), "{backend:?}");
        assert!(!io.disarm(Token(99)));
        let end = collect(&mut io, OpKind::RecvDatagram, 1, free_other);
        assert_eq!(end.len(), 1, "{backend:?}");
        assert_eq!(end[0].result, Err(Errno(libc::ECANCELED)), "{backend:?}");
        assert!(!end[0].armed);

        // Nothing is received while disarmed; the datagram waits in the socket.
        tx.send_to(b"two", to).unwrap();
        let mut out = Vec::with_capacity(8);
        io.submit_and_wait(&mut out, Some(Duration::from_millis(30)))
            .unwrap();
        assert!(out.is_empty(), "{backend:?}: {out:?}");

        io.recv_datagrams(rx.as_raw_fd(), Token(5)).unwrap();
        let got = collect(&mut io, OpKind::RecvDatagram, 1, free_other);
        assert_eq!(got[0].token, Token(5));
        assert_eq!(
            common::take_data(&mut io, got.into_iter().next().unwrap()),
            b"two"
        );
    }
}

#[test]
fn an_on_demand_pool_follows_the_traffic_and_gives_idle_buffers_back() {
    const BURST: usize = 64;
    for backend in BACKENDS {
        let config = Config {
            buffers: 64,
            buffer_size: 65_536,
            headroom: 64,
            tailroom: 64,
            rx_buffers: 32,
            fixed_buffers: false,
            ..Config::default()
        };
        let Some(mut io) = new_io(backend, config) else {
            continue;
        };
        let uring = backend == uring_io::Backend::Uring;
        let usage = io.usage();
        assert_eq!(
            usage.buffer_bytes % 4096,
            0,
            "{backend:?}: page-aligned buffers"
        );
        if uring {
            assert_eq!((usage.rx_posted, usage.rx_target), (8, 8), "starts small");
        }
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        io.recv_datagrams(rx.as_raw_fd(), Token(1)).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        // A burst of 64 datagrams before the first turn: 8 posted buffers run out, the target
        // grows, and nothing is lost.
        for i in 0..BURST {
            tx.send_to(&payload(i), rx.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < BURST && Instant::now() < deadline {
            for c in collect(&mut io, OpKind::RecvDatagram, 1, free_other) {
                if c.result != Err(Errno::NOBUFS) {
                    got.push(common::take_data(&mut io, c));
                }
            }
        }
        assert_eq!(got.len(), BURST, "{backend:?}: datagrams lost");
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &payload(i), "{backend:?}: datagram {i}");
        }
        if uring {
            assert!(
                io.usage().rx_target > 8,
                "{backend:?}: grew: {:?}",
                io.usage()
            );
        }
        let touched = io.usage().touched;
        assert!(touched > 0, "{backend:?}: {:?}", io.usage());

        // Idle: two trims release the free buffers and bring the target back to the floor.
        io.trim();
        io.trim();
        io.trim();
        let idle = io.usage();
        if uring {
            assert_eq!(idle.rx_target, 8, "{backend:?}: shrank back: {idle:?}");
            // Only what is still posted may stay resident (posted buffers are the kernel's).
            assert!(idle.touched <= idle.rx_posted, "{backend:?}: {idle:?}");
        } else {
            assert_eq!(idle.touched, 0, "{backend:?}: {idle:?}");
        }

        // Released buffers come back as zeroed pages and carry data as before.
        let mut again = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        for i in BURST..2 * BURST {
            tx.send_to(&payload(i), rx.local_addr().unwrap()).unwrap();
            while again.len() <= i - BURST && Instant::now() < deadline {
                for c in collect(&mut io, OpKind::RecvDatagram, 1, free_other) {
                    if c.result != Err(Errno::NOBUFS) {
                        again.push(common::take_data(&mut io, c));
                    }
                }
            }
        }
        for (k, d) in again.iter().enumerate() {
            assert_eq!(
                d,
                &payload(BURST + k),
                "{backend:?}: datagram {}",
                BURST + k
            );
        }
        assert_eq!(again.len(), BURST, "{backend:?}");
    }
}

/// Back-pressure: a pool with more buffers out than its working set keeps only two posted for
/// receives, so what arrives meanwhile waits in the socket buffer, not in the pool; once the
/// held buffers come back, receives take posted buffers up to the target again and nothing
/// was lost. io_uring only (the syscall backend receives into free buffers per batch).
#[test]
fn over_its_working_set_a_pool_posts_two_receive_buffers_until_held_ones_return() {
    const BURST: usize = 48;
    const WORKING_SET: usize = 12;
    const HELD: usize = 16;
    let config = Config {
        buffers: 64,
        buffer_size: 65_536,
        headroom: 64,
        tailroom: 64,
        rx_buffers: 16,
        working_set: WORKING_SET,
        fixed_buffers: false,
        ..Config::default()
    };
    let Some(mut io) = new_io(uring_io::Backend::Uring, config) else {
        return;
    };
    // Held by the application (as sends in flight or super-packets being merged would be).
    let held: Vec<_> = (0..HELD).map(|_| io.alloc().unwrap()).collect();
    let rx = UdpSocket::bind("[::1]:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    io.recv_datagrams(rx.as_raw_fd(), Token(1)).unwrap();
    let tx = UdpSocket::bind("[::1]:0").unwrap();
    for i in 0..BURST {
        tx.send_to(&payload(i), rx.local_addr().unwrap()).unwrap();
    }
    // Over budget: every turn receives through at most the two buffers still posted.
    let mut got = Vec::new();
    for _ in 0..8 {
        for c in collect(&mut io, OpKind::RecvDatagram, 1, free_other) {
            if c.result != Err(Errno::NOBUFS) {
                got.push(common::take_data(&mut io, c));
            }
        }
        let usage = io.usage();
        assert!(usage.rx_posted <= 2, "over budget: {usage:?}");
    }
    assert!(!got.is_empty(), "receives continue over budget");
    // The 8 posted at the start, then the held ones: nothing more was posted over budget.
    assert!(
        io.usage().peak_in_use <= HELD + 8,
        "posted beyond the working set: {:?}",
        io.usage()
    );
    // The held buffers come back: the rest of the burst arrives, in order, none lost.
    for b in held {
        io.free(b);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < BURST && Instant::now() < deadline {
        for c in collect(&mut io, OpKind::RecvDatagram, 1, free_other) {
            if c.result != Err(Errno::NOBUFS) {
                got.push(common::take_data(&mut io, c));
            }
        }
    }
    assert_eq!(got.len(), BURST, "datagrams lost");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d, &payload(i), "datagram {i}");
    }
    assert!(
        io.usage().rx_posted > 2,
        "posts again below budget: {:?}",
        io.usage()
    );
    assert!(
        io.usage().peak_in_use <= HELD + 8,
        "{:?} (working set {WORKING_SET})",
        io.usage()
    );
}
