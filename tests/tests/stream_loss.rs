//! The routing stream under heavy loss with real nodes: a 10 MB signed configuration spreads
//! across a link that drops 30 % of its packets in each direction (nftables, see
//! `tests/src/loss.rs`) and arrives intact, byte for byte, at every node.

#![allow(clippy::unwrap_used)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use connectopus_tests::{
    Direction, LinkKind, Loss, Mesh, MeshLink, Topology, require_root, run_test, wait_until,
};

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[test]
fn a_10_mb_config_crosses_a_link_with_30_percent_loss_intact() {
    require_root!();
    run_test("config_under_loss", |dir| {
        let nodes = ["foo", "bar", "baz"];
        let topo = Topology::line(dir, &nodes)?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::TcpTls),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;

        // Version 2: the original file plus 10 MB of comment lines (comments are signed
        // bytes like any other; the schema ignores them, so the load stays cheap).
        let original = std::fs::read_to_string(mesh.config_path())?;
        let mut text = original.replace("  version: 1\n", "  version: 2\n");
        let mut line = 0u32;
        while text.len() < 10_000_000 {
            text.push_str(&format!(
                "# padding line {line:08}: the quick brown fox jumps over the lazy dog, 0123456789\n"
            ));
            line += 1;
        }
        let v2 = dir.join("v2.yml");
        std::fs::write(&v2, &text)?;
        connectopus_tests::ssh_sign(&v2, mesh.admin_key(), "connectopus")?;
        let expected = std::fs::read(&v2)?;

        // 30 % of foo's packets on its link to bar are dropped in each direction.
        let loss = Loss::new(
            topo.ns("foo"),
            topo.iface("foo", "bar"),
            Direction::Both,
            30,
        )?;
        let start = Instant::now();
        let (ok, out) = mesh.config_set("baz", &v2)?;
        ensure!(ok, "baz refused the 10 MB config: {out}");
        let version = |node: &str| mesh.config_version(node).unwrap_or(0);
        wait_until(Duration::from_secs(150), Duration::from_millis(500), || {
            nodes.iter().all(|n| version(n) == 2)
        })
        .with_context(|| {
            format!(
                "not every node reached version 2 across the lossy link: {:?}",
                nodes.map(version)
            )
        })?;
        let took = start.elapsed();
        ensure!(loss.percent() == 30, "the loss was in place throughout");
        for node in nodes {
            let got = std::fs::read(mesh.node_config_path(node))?;
            ensure!(
                got.len() == expected.len() && digest(&got) == digest(&expected),
                "{node} holds {} bytes (hash {:x}), expected {} (hash {:x})",
                got.len(),
                digest(&got),
                expected.len(),
                digest(&expected)
            );
        }
        eprintln!(
            "{} bytes reached every node across 30 % loss in {took:.1?} (hash {:x})",
            expected.len(),
            digest(&expected)
        );
        drop(loss);
        Ok(())
    });
}
