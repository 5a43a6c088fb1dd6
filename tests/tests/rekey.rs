//! DTLS key update end to end: with a short key-update interval (a test-only environment
//! variable), a ping flow across a DTLS link keeps going while both directions move through
//! several epochs, with nothing lost (the link received and opened on a worker thread), in the
//! default PSK suite (DHE-PSK-AES128-GCM); and a listener's `psk_cipher` choosing ChaCha20.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, Topology, ping6, require_root, require_tools, run_test, wait_until,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// The epochs (tx, rx) of a node's only DTLS link.
fn epochs(status: &Value) -> Option<(u64, u64)> {
    let e = &status["links"].as_array()?.first()?["dtls_epochs"];
    Some((e[0].as_u64()?, e[1].as_u64()?))
}

#[test]
fn a_ping_flow_continues_across_dtls_key_updates() {
    require_root!();
    require_tools(&["ping"]);
    run_test("rekey_ping_flow", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.set_env("CONNECTOPUS_TEST_DTLS_REKEY_SECS", "1");
        // Each node receives its link on worker 1's own socket: the epochs are followed by
        // the receiving direction on that thread (the main loop derives the keys ahead).
        mesh.add_args_all(&["--workers", "2"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let before = epochs(&mesh.status("foo")?).context("foo's dtls epochs")?;
        let link_of = |node: &str| -> Result<Value> {
            let status = mesh.status(node)?;
            let links = status["links"].as_array().cloned().unwrap_or_default();
            ensure!(links.len() == 1, "{node}: {status}");
            ensure!(links[0]["state"] == "established", "{node}: {status}");
            // The default PSK suites negotiate AES-128-GCM records (DHE-PSK).
            ensure!(
                links[0]["dtls_cipher"] == "DHE-PSK-AES128-GCM-SHA256",
                "{node}: {status}"
            );
            Ok(links[0]["link"].clone())
        };
        let (foo_link, bar_link) = (link_of("foo")?, link_of("bar")?);
        // 40 pings 0.2 s apart: 8 s, so each direction moves on about 8 times meanwhile.
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 40, 1000, &[])?;
        ensure!(ping.all_received(), "ping across key updates: {ping:?}");
        let foo = epochs(&mesh.status("foo")?).context("foo's dtls epochs")?;
        let bar = epochs(&mesh.status("bar")?).context("bar's dtls epochs")?;
        ensure!(
            foo.0 >= before.0 + 4 && foo.1 >= before.1 + 4,
            "foo's epochs {before:?} -> {foo:?}"
        );
        ensure!(bar.0 >= 5 && bar.1 >= 5, "bar's epochs {bar:?}");
        for node in ["foo", "bar"] {
            let opened_on_thread = || {
                let status = mesh.status(node).ok()?;
                let w1 = status["workers"].as_array()?.get(1)?.clone();
                (w1["receive_links"] == 1).then(|| w1["records_opened"].as_u64())?
            };
            wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                opened_on_thread().is_some_and(|n| n >= 40)
            })
            .with_context(|| {
                format!(
                    "{node}'s worker 1 opened the pings: {:?}",
                    mesh.status(node)
                )
            })?;
        }
        // The same link carried it all: no new handshake, the session stayed up.
        ensure!(link_of("foo")? == foo_link, "foo's link was replaced");
        ensure!(link_of("bar")? == bar_link, "bar's link was replaced");
        // Each side follows the other within a couple of intervals.
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let (Ok(f), Ok(b)) = (mesh.status("foo"), mesh.status("bar")) else {
                return false;
            };
            matches!((epochs(&f), epochs(&b)), (Some(f), Some(b)) if f.1 + 2 >= b.0 && b.1 + 2 >= f.0)
        })?;
        Ok(())
    });
}

#[test]
fn a_listener_that_chooses_chacha20_gets_it_from_a_default_dialer() {
    require_root!();
    require_tools(&["ping"]);
    run_test("psk_cipher_chacha20", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let link = MeshLink::new("bar", "foo", LinkKind::DtlsPsk)
            .listener_key("psk_cipher", "chacha20-poly1305");
        let mut mesh = Mesh::configure(&topo, &[link])?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        for node in ["foo", "bar"] {
            let status = mesh.status(node)?;
            let cipher = status["links"][0]["dtls_cipher"].clone();
            ensure!(
                cipher == "ECDHE-PSK-CHACHA20-POLY1305",
                "{node}'s link negotiated {cipher}: {status}"
            );
        }
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 5, 200, &[])?;
        ensure!(ping.all_received(), "ping over ChaCha20 records: {ping:?}");
        Ok(())
    });
}

/// With one worker (the default on a one-CPU machine) the main loop is the dataplane: it seals
/// and opens the records itself, and under a stream of pings 5 ms apart (a packet turn every
/// few milliseconds) its timer-driven key updates still come on time, with nothing lost.
#[test]
fn key_updates_keep_their_time_while_the_main_loop_forwards() {
    require_root!();
    require_tools(&["ping"]);
    run_test("rekey_main_loop", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.set_env("CONNECTOPUS_TEST_DTLS_REKEY_SECS", "1");
        mesh.add_args_all(&["--workers", "1"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let status = mesh.status("foo")?;
        ensure!(
            status["workers"].as_array().map(Vec::len) == Some(1)
                && status["control_plane"].is_null(),
            "foo should run its one worker on the main loop: {status}"
        );
        let link = status["links"][0]["link"].clone();
        let before = epochs(&status).context("foo's dtls epochs")?;
        // 1,200 pings 5 ms apart: about 6 s, six key updates each way at one a second.
        let ping = ping6(
            topo.ns("foo"),
            mesh.address("bar"),
            1200,
            56,
            &["-i", "0.005"],
        )?;
        ensure!(ping.all_received(), "pings across key updates: {ping:?}");
        let status = mesh.status("foo")?;
        let after = epochs(&status).context("foo's dtls epochs")?;
        ensure!(
            after.0 >= before.0 + 4 && after.1 >= before.1 + 4,
            "foo's epochs {before:?} -> {after:?} over 6 s of pings"
        );
        ensure!(
            status["links"][0]["link"] == link,
            "foo's link was replaced: {status}"
        );
        Ok(())
    });
}
