//! Mesh control datagrams between local programs on two nodes, through real unix datagram
//! sockets (`<base>.port.<N>` bound by the program, `<base>.dgram` bound by the node; see
//! docs/protocol.md, "Control datagrams").

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{LinkKind, Mesh, MeshLink, Topology, require_root, run_test};

fn base(mesh: &Mesh<'_>, node: &str) -> PathBuf {
    mesh.socket(node).with_extension("")
}

fn path(mesh: &Mesh<'_>, node: &str, suffix: &str) -> PathBuf {
    let mut p = base(mesh, node).into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

/// Binds local port `port` of `node`.
fn bind_port(mesh: &Mesh<'_>, node: &str, port: u16) -> Result<UnixDatagram> {
    let socket = UnixDatagram::bind(path(mesh, node, &format!(".port.{port}")))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(socket)
}

fn send(
    socket: &UnixDatagram,
    mesh: &Mesh<'_>,
    via: &str,
    dst: Ipv6Addr,
    port: u16,
    payload: &[u8],
) -> Result<()> {
    let mut datagram = dst.octets().to_vec();
    datagram.extend_from_slice(&port.to_be_bytes());
    datagram.extend_from_slice(payload);
    socket
        .send_to(&datagram, path(mesh, via, ".dgram"))
        .context("sending to the node's datagram socket")?;
    Ok(())
}

/// Receives one datagram: (source address, source port, payload).
fn receive(socket: &UnixDatagram) -> Result<(Ipv6Addr, u16, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let len = socket.recv(&mut buf).context("no datagram arrived")?;
    ensure!(len >= 18, "short datagram: {len} bytes");
    let address: [u8; 16] = buf[..16].try_into()?;
    let port = u16::from_be_bytes([buf[16], buf[17]]);
    Ok((Ipv6Addr::from(address), port, buf[18..len].to_vec()))
}

#[test]
fn local_programs_on_two_nodes_exchange_control_datagrams() {
    require_root!();
    run_test("control_datagrams", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("baz", "bar", LinkKind::Tcp),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let (foo, baz) = (mesh.address("foo"), mesh.address("baz"));

        // A program on foo (port 9) sends to one on baz (port 7), two hops away, and back.
        let on_foo = bind_port(&mesh, "foo", 9)?;
        let on_baz = bind_port(&mesh, "baz", 7)?;
        send(&on_foo, &mesh, "foo", baz, 7, b"ping")?;
        let (src, src_port, payload) = receive(&on_baz)?;
        ensure!((src, src_port) == (foo, 9), "from {src} port {src_port}");
        ensure!(payload == b"ping", "{payload:?}");
        send(&on_baz, &mesh, "baz", foo, 9, b"pong")?;
        let (src, src_port, payload) = receive(&on_foo)?;
        ensure!((src, src_port, payload.as_slice()) == (baz, 7, &b"pong"[..]));

        // Nobody on port 8: dropped, and the node still delivers the next one.
        send(&on_foo, &mesh, "foo", baz, 8, b"lost")?;
        send(&on_foo, &mesh, "foo", baz, 7, b"again")?;
        let (_, _, payload) = receive(&on_baz)?;
        ensure!(payload == b"again", "{payload:?}");

        // A sender not bound to a port path is ignored.
        let anonymous = UnixDatagram::unbound()?;
        send(&anonymous, &mesh, "foo", baz, 7, b"anonymous")?;
        send(&on_foo, &mesh, "foo", baz, 7, b"bound")?;
        let (_, _, payload) = receive(&on_baz)?;
        ensure!(payload == b"bound", "{payload:?}");

        // A node that stops removes its datagram socket.
        let dgram = path(&mesh, "foo", ".dgram");
        ensure!(dgram.exists());
        mesh.stop("foo")?;
        ensure!(!dgram.exists(), "{} left behind", dgram.display());
        Ok(())
    });
}
