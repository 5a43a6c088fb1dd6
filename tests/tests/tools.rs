//! The harness's tool wrappers against real namespaces. Needs root (skips otherwise) and the
//! Debian packages listed in `connectopus_tests::TOOLS` (fails naming them otherwise).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use connectopus_tests::{
    Delay, DigOutcome, Direction, IperfOptions, Loss, NetNs, Pki, San, Topology, Veth, dig,
    iperf3_client, iperf3_server, ping6, require_root, require_tools, run_test, tls_client,
    tls_server, traceroute6,
};

#[test]
fn ping_between_two_namespaces() {
    require_root!();
    require_tools(&["ip", "ping"]);
    run_test("ping_between_two_namespaces", |dir| {
        let a = NetNs::new(dir, "a")?;
        let b = NetNs::new(dir, "b")?;
        let veth = Veth::new(&a, &b, "fd00:1::".parse()?, Some("198.18.1.0".parse()?))?;
        let result = ping6(&a, veth.b.v6, 3, 56, &[])?;
        ensure!(result.all_received(), "{result:?}");
        ensure!(
            result.transmitted == 3 && result.rtts_ms.len() == 3,
            "{result:?}"
        );
        // IPv4 from the benchmarking range is there too.
        let v4 = veth.b.v4.context("no IPv4")?.to_string();
        let out = a.exec_ok("ping", &["-4", "-n", "-c", "1", "-W", "2", &v4])?;
        ensure!(out.contains("1 received"), "{out}");
        Ok(())
    });
}

#[test]
fn traceroute_over_a_routed_line() {
    require_root!();
    require_tools(&["ip", "traceroute"]);
    run_test("traceroute_over_a_routed_line", |dir| {
        let topo = Topology::line_builder(&["foo", "bar", "baz"])
            .routed(true)
            .ipv4(true)
            .build(dir)?;
        let dst = topo.link_addr("baz", "bar");
        let hops = traceroute6(topo.ns("foo"), dst)?;
        let middle = topo.link_addr("bar", "foo");
        ensure!(
            hops == vec![Some(middle), Some(dst)],
            "expected [{middle}, {dst}], got {hops:?}"
        );
        // The routed underlay carries IPv4 (198.18.0.0/15) end to end too.
        let v4 = topo
            .link_addr_v4("baz", "bar")
            .context("no IPv4")?
            .to_string();
        let out = topo
            .ns("foo")
            .exec_ok("ping", &["-4", "-n", "-c", "1", "-W", "2", &v4])?;
        ensure!(out.contains("1 received"), "{out}");
        Ok(())
    });
}

#[test]
fn iperf3_between_two_namespaces() {
    require_root!();
    require_tools(&["ip", "iperf3"]);
    run_test("iperf3_between_two_namespaces", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let server = iperf3_server(topo.ns("bar"), None, 5201)?;
        let options = IperfOptions {
            seconds: 2,
            parallel: 2,
            ..IperfOptions::default()
        };
        let result = iperf3_client(topo.ns("foo"), topo.underlay("bar"), &options)?;
        ensure!(result.bits_per_second() > 0.0, "{result:?}");
        // The one-off server exits by itself after the test.
        server.wait_timeout(Duration::from_secs(5))?;
        Ok(())
    });
}

#[test]
fn dig_without_a_server_reports_not_panics() {
    require_root!();
    require_tools(&["ip", "dig"]);
    run_test("dig_without_a_server", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let foo = topo.ns("foo");
        // An address on the link that nobody has: no answer at all.
        let absent: IpAddr = "2001:db8:1::99".parse()?;
        let started = Instant::now();
        let result = dig(foo, absent, "foo.mesh.", "AAAA", false)?;
        ensure!(result.timed_out(), "{result:?}");
        ensure!(result.rcode.is_none() && result.answers.is_empty());
        ensure!(started.elapsed() < Duration::from_secs(8));
        // A host that is there but has no DNS server refuses (ICMP port unreachable).
        let bar = IpAddr::V6(topo.underlay("bar"));
        let result = dig(foo, bar, "foo.mesh.", "AAAA", false)?;
        ensure!(
            matches!(result.outcome, DigOutcome::Unreachable(_)),
            "{result:?}"
        );
        let result = dig(foo, bar, "foo.mesh.", "AAAA", true)?;
        ensure!(result.rcode.is_none(), "{result:?}");
        Ok(())
    });
}

#[test]
fn tls_between_two_namespaces_verifies_the_certificate() {
    require_root!();
    require_tools(&["ip", "openssl"]);
    run_test("tls_between_two_namespaces", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let addr = IpAddr::V6(topo.underlay("bar"));
        let pki = Pki::new(dir)?;
        let cert = pki.issue("bar", &[San::Ip(addr), San::Dns("bar".into())])?;
        let server = tls_server(topo.ns("bar"), addr, 4433, &cert)?;
        let result = tls_client(
            topo.ns("foo"),
            addr,
            4433,
            pki.ca_cert(),
            "hello mesh",
            Duration::from_secs(5),
        )?;
        ensure!(result.ok(), "{result:?}");
        server.wait_timeout(Duration::from_secs(5))?;

        // A certificate for another address must not verify.
        let wrong = pki.issue("other", &[San::Ip("2001:db8:99::1".parse()?)])?;
        let _server = tls_server(topo.ns("bar"), addr, 4434, &wrong)?;
        let result = tls_client(
            topo.ns("foo"),
            addr,
            4434,
            pki.ca_cert(),
            "hello",
            Duration::from_secs(5),
        )?;
        ensure!(!result.ok() && result.verify_code != Some(0), "{result:?}");
        Ok(())
    });
}

#[test]
fn nftables_loss() {
    require_root!();
    require_tools(&["ip", "ping", "nft"]);
    run_test("nftables_loss", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let foo = topo.ns("foo");
        let dst = topo.underlay("bar");
        let mut loss = Loss::new(foo, topo.iface("foo", "bar"), Direction::Both, 100)?;
        let lost = ping6(foo, dst, 3, 56, &[])?;
        ensure!(lost.received == 0 && lost.transmitted == 3, "{lost:?}");
        loss.set(0)?;
        let fine = ping6(foo, dst, 3, 56, &[])?;
        ensure!(fine.all_received(), "{fine:?}");
        loss.set(100)?;
        drop(loss);
        let removed = ping6(foo, dst, 2, 56, &[])?;
        ensure!(
            removed.all_received(),
            "dropping the guard removes the loss: {removed:?}"
        );
        Ok(())
    });
}

#[test]
fn userspace_delay() {
    require_root!();
    require_tools(&["ip", "ping", "tc"]);
    run_test("userspace_delay", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let (foo, bar) = (topo.ns("foo"), topo.ns("bar"));
        let dst = topo.underlay("bar");
        // 50 ± 20 ms on each end: a round trip takes at least 2 × 30 ms.
        let delays = [
            Delay::new(foo, topo.iface("foo", "bar"), 50, 20, 1)?,
            Delay::new(bar, topo.iface("bar", "foo"), 50, 20, 2)?,
        ];
        let slow = ping6(foo, dst, 5, 56, &["-i", "0.2"])?;
        ensure!(slow.all_received(), "{slow:?}");
        ensure!(slow.rtts_ms.iter().all(|ms| *ms >= 60.0), "{slow:?}");
        // Large packets too: the relay carries whole frames.
        let big = ping6(foo, dst, 2, 1400, &[])?;
        ensure!(big.all_received(), "{big:?}");
        drop(delays);
        let fast = ping6(foo, dst, 3, 56, &["-i", "0.2"])?;
        ensure!(
            fast.all_received(),
            "dropping the guards removes the delay: {fast:?}"
        );
        Ok(())
    });
}
