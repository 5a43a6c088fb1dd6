//! Plaintext UDP links (`udp-dialer`/`udp-listener`) end to end: real nodes with node identities
//! in network namespaces. A foo—bar—baz line carries ping, traceroute (bar answers), iperf3 and
//! a checked 100 MB transfer on the offloaded paths; a data datagram from an address:port that
//! is no link's peer is dropped and counted, while the same bytes from the peer's own
//! address:port are delivered; and UDP and DTLS links mix in one mesh.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, Topology, checked_transfer, iperf3_client,
    iperf3_server, ping6, require_root, require_tools, run_test, traceroute6, wait_until,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// The kinds of `node`'s links, sorted.
fn link_kinds(mesh: &Mesh, node: &str) -> Result<Vec<String>> {
    let status = mesh.status(node)?;
    let mut kinds: Vec<String> = status["links"]
        .as_array()
        .context("links")?
        .iter()
        .filter_map(|l| l["kind"].as_str().map(str::to_owned))
        .collect();
    kinds.sort();
    Ok(kinds)
}

#[test]
fn line_over_plain_udp() {
    require_root!();
    require_tools(&["ping", "traceroute", "iperf3", "python3"]);
    run_test("line_over_plain_udp", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::Udp),
            ],
            &[],
        )?;
        mesh.set_log_level("info");
        // This test covers the userspace dataplane (GSO sends, GRO batches); the eBPF fast
        // path has tests/tests/fastpath.rs.
        mesh.set_env("CONNECTOPUS_DISABLE_FASTPATH", "1");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let (foo_addr, bar_addr, baz_addr) = (
            mesh.address("foo"),
            mesh.address("bar"),
            mesh.address("baz"),
        );
        ensure!(
            link_kinds(&mesh, "bar")? == ["udp listener", "udp listener"],
            "bar: {}",
            mesh.status("bar")?
        );
        ensure!(link_kinds(&mesh, "foo")? == ["udp dialer"]);
        ensure!(
            mesh.status_text("bar")?.contains("udp listener"),
            "status shows the link kind"
        );

        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(ping.all_received(), "foo -> baz: {ping:?}");
        let ping = ping6(topo.ns("baz"), foo_addr, 3, 56, &[])?;
        ensure!(ping.all_received(), "baz -> foo: {ping:?}");
        let hops = traceroute6(topo.ns("foo"), baz_addr)?;
        ensure!(
            hops == vec![Some(bar_addr), Some(baz_addr)],
            "traceroute foo -> baz should show bar then baz: {hops:?}"
        );

        let there = checked_transfer(
            topo.ns("foo"),
            topo.ns("baz"),
            baz_addr,
            7001,
            100_000_000,
            1,
            Duration::from_secs(120),
        )?;
        ensure!(
            there.intact(),
            "foo -> baz lost or changed bytes: {there:?}"
        );

        let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz_addr)), 5201)?;
        let result = iperf3_client(
            topo.ns("foo"),
            baz_addr,
            &IperfOptions {
                seconds: 2,
                ..IperfOptions::default()
            },
        )?;
        drop(server);
        ensure!(
            result.bits_per_second() > 1e6,
            "iperf3 foo -> baz: {result:?}"
        );

        // The transfer went the offloaded way: TUN super-packets cut into one GSO send, GRO
        // batches split in place, in transit too.
        let foo = mesh.status("foo")?;
        let bar = mesh.status("bar")?;
        for (name, status, c) in [
            ("foo", &foo, "udp_gso_sends"),
            ("bar", &bar, "udp_gro_batches"),
            ("bar", &bar, "udp_gso_sends"),
        ] {
            ensure!(
                counter(status, c) > 0,
                "{name}: no {c}: {}",
                status["counters"]
            );
        }
        for (name, status) in [("foo", &foo), ("bar", &bar)] {
            ensure!(
                counter(status, "udp_send_errors") == 0
                    && counter(status, "udp_malformed_dropped") == 0,
                "{name}: {}",
                status["counters"]
            );
        }
        Ok(())
    });
}

/// Sends, from the namespace it runs in, one UDP datagram from source port `sport` to the
/// listener `[lip]:lport` whose payload is an inner IPv6/UDP packet `isrc -> [idst]:iport`
/// carrying `text`. A raw socket writes the outer UDP header itself, so the source port can be
/// any, including the one the node's dialer socket holds.
const SEND_DATAGRAM: &str = r#"
import socket, struct, sys
lip, lport, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
isrc, idst, iport, text = sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7].encode()
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
src = socket.inet_pton(socket.AF_INET6, isrc)
dst = socket.inet_pton(socket.AF_INET6, idst)
ulen = 8 + len(text)
udp = struct.pack("!HHHH", 40000, iport, ulen, 0) + text
c = csum(src + dst + struct.pack("!I3xB", ulen, 17) + udp) or 0xffff
udp = udp[:6] + struct.pack("!H", c) + udp[8:]
inner = struct.pack("!IHBB", 0x60000000, ulen, 17, 64) + src + dst + udp
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IPV6, 7, 6)  # IPV6_CHECKSUM at offset 6: the kernel fills it
s.sendto(struct.pack("!HHHH", sport, lport, 8 + len(inner), 0) + inner, (lip, 0))
print("sent", flush=True)
"#;

/// Prints every datagram received on `[addr]:port`.
const RECEIVE_DATAGRAMS: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data, _ = s.recvfrom(2048)
    print("got", data.decode(errors="replace"), flush=True)
"#;

#[test]
fn a_data_datagram_from_an_address_that_is_not_the_peer_is_dropped() {
    require_root!();
    require_tools(&["python3"]);
    run_test("udp_spoofed_data", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[MeshLink::new("bar", "foo", LinkKind::Udp)],
            &[],
        )?;
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let (foo_addr, bar_addr) = (mesh.address("foo"), mesh.address("bar"));
        // bar's listener, and the address:port foo's dialer sends from, as bar sees it.
        let bar = mesh.status("bar")?;
        let remote: SocketAddr = bar["links"][0]["remote"]
            .as_str()
            .context("bar's link")?
            .parse()?;
        let listener = topo.link_addr("bar", "foo");
        let receiver = topo.ns("bar").spawn(
            "python3",
            &["-c", RECEIVE_DATAGRAMS, &bar_addr.to_string(), "9999"],
        )?;
        receiver.wait_for_output("listening", Duration::from_secs(10))?;
        let send = |sport: u16, text: &str| -> Result<()> {
            topo.ns("foo").exec_ok(
                "python3",
                &[
                    "-c",
                    SEND_DATAGRAM,
                    &listener.to_string(),
                    "4000",
                    &sport.to_string(),
                    &foo_addr.to_string(),
                    &bar_addr.to_string(),
                    "9999",
                    text,
                ],
            )?;
            Ok(())
        };
        ensure!(remote.ip() == IpAddr::V6(topo.link_addr("foo", "bar")));
        let spoofed_port = if remote.port() == 65535 {
            remote.port() - 1
        } else {
            remote.port() + 1
        };

        // From foo's address but another port: no link's peer. Dropped and counted.
        let before = counter(&bar, "udp_unknown_source_dropped");
        send(spoofed_port, "spoofed")?;
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            mesh.status("bar")
                .is_ok_and(|s| counter(&s, "udp_unknown_source_dropped") > before)
        })
        .context("bar never counted the spoofed datagram")?;

        // The same bytes from the peer's own address:port are data of the link: delivered.
        send(remote.port(), "genuine")?;
        receiver.wait_for_output("got genuine", Duration::from_secs(10))?;
        ensure!(
            !receiver.stdout().contains("spoofed"),
            "the spoofed datagram was delivered: {}",
            receiver.stdout()
        );
        Ok(())
    });
}

#[test]
fn a_mesh_mixes_udp_and_dtls_links() {
    require_root!();
    require_tools(&["ping", "python3"]);
    run_test("udp_and_dtls_mesh", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::Udp),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
            ],
            &[],
        )?;
        mesh.set_log_level("info");
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        ensure!(link_kinds(&mesh, "bar")? == ["dtls listener", "udp listener"]);
        let (foo_addr, baz_addr): (Ipv6Addr, Ipv6Addr) = (mesh.address("foo"), mesh.address("baz"));
        let ping = ping6(topo.ns("foo"), baz_addr, 3, 56, &[])?;
        ensure!(ping.all_received(), "foo -> baz: {ping:?}");
        for (from, to, dst, seed) in [("foo", "baz", baz_addr, 1), ("baz", "foo", foo_addr, 2)] {
            let t = checked_transfer(
                topo.ns(from),
                topo.ns(to),
                dst,
                7001,
                20_000_000,
                seed,
                Duration::from_secs(60),
            )?;
            ensure!(t.intact(), "{from} -> {to}: {t:?}");
        }
        Ok(())
    });
}
