//! Root test: the `SO_REUSEPORT` steering program `cx_udp_steer` with real sockets. A group of
//! four UDP sockets shares a port on loopback (in a namespace of the test's own); the owner map
//! names a socket per client, and every datagram must arrive at the socket its client's entry
//! names (with the kernel's hash alone, twelve clients land where the map says with probability
//! 4^-12). Then owners move, entries go, a slot empties, an entry names another port's group, and
//! an IPv4 client reaches a dual-stack group: each case lands where the program says (or where
//! the hash says, counted as such).
//!
//! Skips (passes, saying what is missing) unless it runs as root and the object was built.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use connectopus_fastpath::{SteerCounts, UdpSteering};
use socket2::{Domain, Protocol, Socket, Type};
use support::NetNs;

/// A group member: bound to `addr` with `SO_REUSEPORT`, non-blocking.
fn member(addr: SocketAddr, dual_stack: bool) -> UdpSocket {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    socket.set_only_v6(!dual_stack).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.into()
}

/// A group of `n` sockets on one port of `ip` (the first picks the port).
fn group(ip: Ipv6Addr, n: usize, dual_stack: bool) -> (u16, Vec<UdpSocket>) {
    let first = member(SocketAddr::new(ip.into(), 0), dual_stack);
    let port = first.local_addr().unwrap().port();
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(member(SocketAddr::new(ip.into(), port), dual_stack));
    }
    (port, sockets)
}

/// Waits until `expected` datagrams have arrived on `sockets`; returns, for each payload (one
/// byte, the client's number), the index of the socket that got it.
fn collect(sockets: &[UdpSocket], expected: usize) -> Vec<(u8, usize)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} datagrams arrived: {got:?}",
            got.len()
        );
        let mut idle = true;
        for (i, socket) in sockets.iter().enumerate() {
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                assert_eq!(n, 1);
                got.push((buf[0], i));
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    got.sort_unstable();
    got
}

fn counts(steering: &UdpSteering) -> SteerCounts {
    steering.outcomes().unwrap()
}

#[test]
fn each_peer_s_datagrams_reach_the_socket_its_owner_entry_names() {
    let Some(object) =
        support::prerequisites("each_peer_s_datagrams_reach_the_socket_its_owner_entry_names")
    else {
        return;
    };
    drop(object);
    let netns = NetNs::create("st");
    let _inside = netns.enter();
    // As the node loads it: in a helper process, which hands back the fds.
    let mut steering =
        UdpSteering::load_via_helper(helper_command(), support::object_path().as_deref()).unwrap();

    // Group A: four sockets on [::1]:port_a, slots 0..4.
    let (port_a, a) = group(Ipv6Addr::LOCALHOST, 4, false);
    steering.attach(a[0].as_fd()).unwrap();
    for (slot, socket) in a.iter().enumerate() {
        steering.set_socket(slot as u32, socket.as_fd()).unwrap();
    }
    let server_a = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port_a);
    let clients: Vec<UdpSocket> = (0..12)
        .map(|_| UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap())
        .collect();
    // Deliberately not round robin: slot = (7 * i + 3) mod 4.
    let owner = |i: usize| ((7 * i + 3) % 4) as u32;
    for (i, client) in clients.iter().enumerate() {
        steering
            .set_owner(client.local_addr().unwrap(), port_a, owner(i))
            .unwrap();
        assert_eq!(
            steering
                .owner(client.local_addr().unwrap(), port_a)
                .unwrap(),
            Some(owner(i))
        );
    }
    let send_all = || {
        for (i, client) in clients.iter().enumerate() {
            client.send_to(&[i as u8], server_a).unwrap();
        }
    };
    // Each client twice: one peer's datagrams keep landing on its owner.
    send_all();
    send_all();
    let got = collect(&a, 24);
    for (client, socket) in &got {
        assert_eq!(
            *socket as u32,
            owner(*client as usize),
            "client {client} landed on socket {socket}, its owner entry says {}: {got:?}",
            owner(*client as usize)
        );
    }
    assert_eq!(counts(&steering).steered, 24);

    // An owner moves: its next datagram goes to the new slot.
    let moved = (owner(0) + 1) % 4;
    steering
        .set_owner(clients[0].local_addr().unwrap(), port_a, moved)
        .unwrap();
    clients[0].send_to(&[0], server_a).unwrap();
    assert_eq!(collect(&a, 1), vec![(0, moved as usize)]);

    // An entry removed: the hash picks (some socket of the group), counted as no owner.
    assert!(
        steering
            .remove_owner(clients[1].local_addr().unwrap(), port_a)
            .unwrap()
    );
    assert!(
        !steering
            .remove_owner(clients[1].local_addr().unwrap(), port_a)
            .unwrap()
    );
    let before = counts(&steering);
    clients[1].send_to(&[1], server_a).unwrap();
    assert_eq!(collect(&a, 1).len(), 1);
    let after = counts(&steering);
    assert_eq!(after.no_owner, before.no_owner + 1);
    assert_eq!(after.steered, before.steered);

    // A slot emptied: its clients fall back to the hash, counted as owner gone; nothing lost.
    let emptied = owner(2);
    assert!(steering.clear_socket(emptied).unwrap());
    let before = counts(&steering);
    clients[2].send_to(&[2], server_a).unwrap();
    assert_eq!(collect(&a, 1).len(), 1);
    assert_eq!(counts(&steering).owner_gone, before.owner_gone + 1);

    // Group B, dual-stack on [::]:port_b, slots 8 and 9 of the same array; an IPv4 client is
    // keyed by its IPv4-mapped address.
    let (port_b, b) = group(Ipv6Addr::UNSPECIFIED, 2, true);
    steering.attach(b[0].as_fd()).unwrap();
    steering.set_socket(8, b[0].as_fd()).unwrap();
    steering.set_socket(9, b[1].as_fd()).unwrap();
    let v4_clients: Vec<UdpSocket> = (0..6)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    let server_b = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port_b);
    for (i, client) in v4_clients.iter().enumerate() {
        let slot = if i % 3 == 0 { 8 } else { 9 };
        steering
            .set_owner(client.local_addr().unwrap(), port_b, slot)
            .unwrap();
    }
    let before = counts(&steering);
    for (i, client) in v4_clients.iter().enumerate() {
        client.send_to(&[i as u8], server_b).unwrap();
    }
    for (client, socket) in collect(&b, 6) {
        let slot = if client % 3 == 0 { 0 } else { 1 };
        assert_eq!(
            socket, slot,
            "IPv4 client {client} landed on socket {socket}"
        );
    }
    assert_eq!(counts(&steering).steered, before.steered + 6);

    // An entry naming a socket of another port's group: the kernel refuses the choice, the hash
    // picks within the right group, counted as owner gone.
    steering
        .set_owner(clients[3].local_addr().unwrap(), port_a, 8)
        .unwrap();
    let before = counts(&steering);
    clients[3].send_to(&[3], server_a).unwrap();
    assert_eq!(collect(&a, 1).len(), 1);
    assert_eq!(counts(&steering).owner_gone, before.owner_gone + 1);
}

#[test]
fn the_program_loads_in_this_process_too() {
    let Some(object) = support::prerequisites("the_program_loads_in_this_process_too") else {
        return;
    };
    let steering = UdpSteering::load(&object).unwrap();
    assert_eq!(steering.outcomes().unwrap(), SteerCounts::default());
    let error = UdpSteering::load(b"not an object").unwrap_err().to_string();
    assert!(error.contains("cargo xtask build-ebpf"), "{error}");
}

/// Set in the environment of this test binary when it is re-run as the helper process.
const HELPER_ENV: &str = "CX_UDP_STEERING_HELPER";

/// Not a check of its own: when [`HELPER_ENV`] is set, this process is the helper that
/// `load_via_helper` started, and serves its request.
#[test]
fn helper_process() {
    support::serve_if_helper(HELPER_ENV);
}

fn helper_command() -> Command {
    support::helper_command(HELPER_ENV)
}
