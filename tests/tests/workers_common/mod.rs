//! What the worker tests share (`workers.rs`, `control_thread.rs`): topologies, status
//! readers and flow generators.

#![allow(dead_code)]

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Result, ensure};
use connectopus_tests::{LinkKind, Mesh, MeshLink, TestDir, Topology};
use serde_json::Value;

pub const CONVERGE: Duration = Duration::from_secs(20);

/// Bytes of each checked transfer.
pub const BYTES: u64 = 100_000_000;

/// Sends small UDP datagrams from 64 sockets (64 flows, so the kernel's hash spreads them over
/// every TUN queue) to `[dst]:9`, `rounds` per socket, 10 ms apart.
pub const MANY_FLOWS: &str = r#"
import socket, sys, time
dst, rounds = sys.argv[1], int(sys.argv[2])
socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(64)]
for _ in range(rounds):
    for s in socks:
        try:
            s.sendto(b"flow", (dst, 9))
        except OSError:
            pass
    time.sleep(0.01)
print("sent", flush=True)
"#;

/// Receives on `[addr]:9` until datagrams of 64 different source ports arrived (or 60 s
/// passed), then prints how many.
pub const FLOW_RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9))
s.settimeout(0.5)
print("listening", flush=True)
ports, deadline = set(), time.time() + 60
while len(ports) < 64 and time.time() < deadline:
    try:
        _, addr = s.recvfrom(100)
        ports.add(addr[1])
    except socket.timeout:
        pass
print("flows %d" % len(ports), flush=True)
"#;

/// Sends 64 flows from `from` to `dst` and checks that every one of them arrived at `to`
/// (whichever worker's queue the kernel steered it to).
pub fn every_flow_arrives(topo: &Topology, from: &str, to: &str, dst: Ipv6Addr) -> Result<()> {
    let receiver = topo
        .ns(to)
        .spawn("python3", &["-c", FLOW_RECEIVER, &dst.to_string()])?;
    receiver.wait_for_output("listening", Duration::from_secs(10))?;
    // One sender, so each flow keeps its source port (and its queue) for all its rounds.
    send_flows(topo, from, dst, 100)?;
    let said = receiver.wait_for_output("flows", Duration::from_secs(70))?;
    ensure!(
        said.contains("flows 64"),
        "not every flow from {from} arrived at {to}: {said}"
    );
    Ok(())
}

pub fn workers_of(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

/// A foo—bar—baz line over links of `kind`.
pub fn line(dir: &TestDir, kind: LinkKind) -> Result<(Topology, Vec<MeshLink>)> {
    let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
    let links = vec![
        MeshLink::new("bar", "foo", kind),
        MeshLink::new("bar", "baz", kind),
    ];
    Ok((topo, links))
}

/// The mesh of a line over `kind` links; plaintext udp links without the eBPF fast path, so
/// userspace (the workers) carries their data.
pub fn mesh_of<'a>(
    topo: &'a Topology,
    links: &[MeshLink],
    kind: LinkKind,
    workers: usize,
) -> Result<Mesh<'a>> {
    let mut mesh = Mesh::configure(topo, links)?;
    mesh.set_log_level("info");
    mesh.add_args_all(&["--workers", &workers.to_string()]);
    if kind == LinkKind::Udp {
        mesh.set_env("CONNECTOPUS_DISABLE_FASTPATH", "1");
    }
    Ok(mesh)
}

pub fn is_tcp(kind: LinkKind) -> bool {
    matches!(kind, LinkKind::Tcp | LinkKind::TcpTls)
}

/// What a worker counts of the links it receives: DTLS records it opened, plaintext udp
/// datagrams it received, reads from the TCP/TLS streams it owns.
pub fn received_by(w: &Value, kind: LinkKind) -> u64 {
    let field = match kind {
        LinkKind::Udp => "datagrams_received",
        LinkKind::Tcp | LinkKind::TcpTls => "tcp_reads",
        _ => "records_opened",
    };
    w[field].as_u64().unwrap_or(0)
}

/// What a worker received of a link carrying 20 MB or more: a record or datagram per packet,
/// a TCP read per up to 64 KiB of the stream.
pub fn many(kind: LinkKind) -> u64 {
    if is_tcp(kind) { 200 } else { 10_000 }
}

/// The links a worker receives (DTLS, plaintext udp) or reads and writes (TCP/TLS).
pub fn links_of(w: &Value) -> u64 {
    w["receive_links"].as_u64().unwrap_or(0) + w["tcp_links"].as_u64().unwrap_or(0)
}

pub fn send_flows(topo: &Topology, from: &str, dst: Ipv6Addr, rounds: u32) -> Result<()> {
    topo.ns(from).exec_ok(
        "python3",
        &["-c", MANY_FLOWS, &dst.to_string(), &rounds.to_string()],
    )?;
    Ok(())
}
