//! The signed mesh configuration end to end: real ssh-keygen signatures, nodes in network
//! namespaces, configurations submitted with `connectopus config set` and spread through the
//! mesh, refused when they must be, and applied live.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, TestDir, Topology, ping6, require_root, run_ok, run_test, wait_until,
    workspace_binary,
};

/// Writes a candidate config derived from the mesh's original file by `edit`, with its
/// version set to `version`, signed by `key` in namespace `namespace`; returns its path.
fn candidate(
    mesh: &Mesh<'_>,
    dir: &TestDir,
    name: &str,
    version: u64,
    key: &Path,
    namespace: &str,
    edit: impl FnOnce(String) -> String,
) -> Result<PathBuf> {
    let original = std::fs::read_to_string(mesh.config_path())?;
    let text = edit(original.replace("  version: 1\n", &format!("  version: {version}\n")));
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, text)?;
    sign(&path, key, namespace)?;
    Ok(path)
}

fn sign(path: &Path, key: &Path, namespace: &str) -> Result<()> {
    connectopus_tests::ssh_sign(path, key, namespace)
}

fn new_key(dir: &TestDir, name: &str) -> Result<(PathBuf, String)> {
    let key = dir.join(name);
    let public = connectopus_tests::ssh_keygen(&key, name)?;
    Ok((key, public))
}

fn versions(mesh: &Mesh<'_>, nodes: &[&str]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| mesh.config_version(n).unwrap_or(0))
        .collect()
}

fn wait_all_at(mesh: &Mesh<'_>, nodes: &[&str], version: u64, within: Duration) -> Result<()> {
    wait_until(within, Duration::from_millis(200), || {
        versions(mesh, nodes).iter().all(|v| *v == version)
    })
    .with_context(|| {
        format!(
            "not every node reached version {version}: {:?}",
            versions(mesh, nodes)
        )
    })
}

#[test]
fn a_config_set_on_one_end_of_a_five_node_line_reaches_every_node() {
    require_root!();
    run_test("config_spreads", |dir| {
        let nodes = ["n1", "n2", "n3", "n4", "n5"];
        let topo = Topology::line(dir, &nodes)?;
        let links: Vec<MeshLink> = nodes
            .windows(2)
            .map(|w| MeshLink::new(w[1], w[0], LinkKind::DtlsPsk))
            .collect();
        let mut mesh = Mesh::configure(&topo, &links)?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        ensure!(versions(&mesh, &nodes) == vec![1; 5]);

        let v2 = candidate(&mesh, dir, "v2", 2, mesh.admin_key(), "connectopus", |t| {
            t + "  # version 2\n"
        })?;
        let (ok, out) = mesh.config_set("n1", &v2)?;
        ensure!(ok, "n1 refused v2: {out}");
        wait_all_at(&mesh, &nodes, 2, Duration::from_secs(10))?;
        // Every node persisted what it accepted, byte for byte.
        let expected = std::fs::read(&v2)?;
        for node in nodes {
            ensure!(
                std::fs::read(mesh.node_config_path(node))? == expected,
                "{node}"
            );
        }

        // A multi-megabyte config (thousands of generated node entries) arrives intact.
        let big = candidate(&mesh, dir, "v3", 3, mesh.admin_key(), "connectopus", |t| {
            let mut t = t;
            for i in 0..48_000u32 {
                t.push_str(&format!(
                    "  gen{i}:\n    address: \"fd00:cafe::{:x}:{:x}\"\n",
                    0x100 + i / 0x10000,
                    i % 0x10000
                ));
            }
            t
        })?;
        let size = std::fs::metadata(&big)?.len();
        ensure!(size > 2_000_000, "the big config is only {size} bytes");
        let (ok, out) = mesh.config_set("n5", &big)?;
        ensure!(ok, "n5 refused v3: {out}");
        wait_all_at(&mesh, &nodes, 3, Duration::from_secs(60))?;
        let expected = std::fs::read(&big)?;
        for node in nodes {
            ensure!(
                std::fs::read(mesh.node_config_path(node))? == expected,
                "{node} persisted a different v3"
            );
        }
        Ok(())
    });
}

#[test]
fn bad_configs_are_refused_and_change_nothing() {
    require_root!();
    run_test("config_refusals", |dir| {
        let nodes = ["foo", "bar"];
        let topo = Topology::line(dir, &nodes)?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let admin = mesh.admin_key().clone();
        let (stranger, _) = new_key(dir, "stranger")?;

        let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();
        let flipped = candidate(&mesh, dir, "flipped", 2, &admin, "connectopus", |t| t)?;
        let mut bytes = std::fs::read(&flipped)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&flipped, bytes)?;
        cases.push(("a flipped byte", flipped, "signature"));
        cases.push((
            "an unauthorized key",
            candidate(&mesh, dir, "stranger", 2, &stranger, "connectopus", |t| t)?,
            "authorized_keys",
        ));
        cases.push((
            "the wrong namespace",
            candidate(&mesh, dir, "namespace", 2, &admin, "file", |t| t)?,
            "namespace",
        ));
        let truncated = candidate(&mesh, dir, "truncated", 2, &admin, "connectopus", |t| t)?;
        let sig_path = format!("{}.sig", truncated.display());
        let sig = std::fs::read_to_string(&sig_path)?;
        std::fs::write(&sig_path, &sig[..sig.len() / 2])?;
        cases.push(("a truncated signature", truncated, "signature"));
        cases.push((
            "an equal version",
            candidate(&mesh, dir, "equal", 1, &admin, "connectopus", |t| {
                t + "  # the same version again\n"
            })?,
            "version",
        ));
        cases.push((
            "duplicate keys",
            candidate(&mesh, dir, "duplicate", 2, &admin, "connectopus", |t| {
                t.replace(
                    "  domain: connectopus.test\n",
                    "  domain: connectopus.test\n  domain: other.test\n",
                )
            })?,
            "duplicate",
        ));
        for (what, file, reason) in &cases {
            let (ok, out) = mesh.config_set("foo", file)?;
            ensure!(!ok, "{what} was accepted: {out}");
            ensure!(
                out.to_lowercase().contains(reason),
                "{what}: expected the reason to mention {reason:?}: {out}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        ensure!(
            versions(&mesh, &nodes) == vec![1, 1],
            "{:?}",
            versions(&mesh, &nodes)
        );
        let original = std::fs::read(mesh.config_path())?;
        for node in nodes {
            ensure!(
                std::fs::read(mesh.node_config_path(node))? == original,
                "{node} changed"
            );
        }
        Ok(())
    });
}

#[test]
fn key_rotation_through_a_currently_authorized_key() {
    require_root!();
    run_test("key_rotation", |dir| {
        let nodes = ["foo", "bar"];
        let topo = Topology::line(dir, &nodes)?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let a = mesh.admin_key().clone();
        let a_pub = std::fs::read_to_string(format!("{}.pub", a.display()))?;
        let (b, b_pub) = new_key(dir, "admin-b")?;
        let add_b = |t: String| {
            t.replace(
                "  authorized_keys:\n",
                &format!("  authorized_keys:\n    - \"{b_pub}\"\n"),
            )
        };
        // N = 2, signed by A, adds B.
        let v2 = candidate(&mesh, dir, "v2", 2, &a, "connectopus", add_b)?;
        let (ok, out) = mesh.config_set("foo", &v2)?;
        ensure!(ok, "{out}");
        wait_all_at(&mesh, &nodes, 2, Duration::from_secs(10))?;
        // N + 1, signed by B, removes A.
        let a_line = a_pub.trim().to_owned();
        let v3 = candidate(&mesh, dir, "v3", 3, &b, "connectopus", |t| {
            add_b(t).replace(&format!("    - \"{a_line}\"\n"), "")
        })?;
        let (ok, out) = mesh.config_set("bar", &v3)?;
        ensure!(
            ok,
            "a config signed by the newly authorized key was refused: {out}"
        );
        wait_all_at(&mesh, &nodes, 3, Duration::from_secs(10))?;
        // A change of keys restarts the mesh instance: a node may report version 3 just
        // before it re-executes itself. Wait until both run it again with their link up, so
        // the refusals below come from the nodes, not from a control socket that is away.
        mesh.wait_converged(Duration::from_secs(30))?;
        wait_all_at(&mesh, &nodes, 3, Duration::from_secs(10))?;
        // N + 2, signed by A after A was removed: refused everywhere, for its signature.
        let v4 = candidate(&mesh, dir, "v4", 4, &a, "connectopus", |t| {
            add_b(t).replace(&format!("    - \"{a_line}\"\n"), "")
        })?;
        for node in nodes {
            let (ok, out) = mesh.config_set(node, &v4)?;
            ensure!(
                !ok && out.contains("signature"),
                "{node} should refuse a config signed by a removed key for its signature: {out}"
            );
        }
        ensure!(versions(&mesh, &nodes) == vec![3, 3]);
        Ok(())
    });
}

#[test]
fn a_cost_change_reroutes_and_other_links_keep_their_sessions() {
    require_root!();
    run_test("cost_change", |dir| {
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::TcpTls),
                MeshLink::new("baz", "foo", LinkKind::DtlsPsk).cost(5.0),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        // Each of foo's links with the time its session was established (links still
        // handshaking have none and are left out).
        let since = |node: &str| -> Result<Vec<(String, f64)>> {
            let status = mesh.status(node)?;
            Ok(status["links"]
                .as_array()
                .context("links")?
                .iter()
                .filter_map(|l| {
                    Some((l["backend"].as_str()?.to_owned(), l["since_unix"].as_f64()?))
                })
                .collect())
        };
        // The state the test compares against: both of foo's links have a session (the
        // costly direct one may still be handshaking once the route via bar exists) and
        // foo routes to baz via bar.
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            since("foo").is_ok_and(|links| links.len() == 2)
                && mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("bar")
        })
        .with_context(|| {
            format!(
                "foo should have both sessions and route to baz via bar: links {:?}, next hop {:?}",
                since("foo"),
                mesh.next_hop("foo", "baz")
            )
        })?;
        let before = since("foo")?;
        ensure!(before.len() == 2, "{before:?}");
        // The direct foo—baz link (backends l2 on baz, d2 on foo) becomes cheap.
        let v2 = candidate(&mesh, dir, "v2", 2, mesh.admin_key(), "connectopus", |t| {
            t.replace("        cost: 5\n", "        cost: 0.5\n")
        })?;
        let (ok, out) = mesh.config_set("foo", &v2)?;
        ensure!(ok, "{out}");
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("baz")
        })
        .context("the cheaper direct link should now carry foo -> baz")?;
        let after = since("foo")?;
        ensure!(
            before == after,
            "links were re-established: before {before:?}, after {after:?}"
        );
        Ok(())
    });
}

#[test]
fn secrets_as_file_references_never_leave_the_node() {
    require_root!();
    run_test("secret_files", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "foo", LinkKind::TcpTls),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let binary = workspace_binary("connectopus")?;
        for node in ["foo", "bar"] {
            let mut command = Command::new(&binary);
            command
                .args(["config", "get", "--socket"])
                .arg(mesh.socket(node));
            let text = run_ok(command, Duration::from_secs(10))?;
            ensure!(text.contains("psk_file:"), "{text}");
            for secret in ["correct horse battery staple", "PRIVATE KEY", "psk:"] {
                ensure!(
                    !text.contains(secret),
                    "{node}'s config get shows {secret:?}"
                );
            }
        }
        Ok(())
    });
}

#[test]
fn an_unsigned_or_tampered_config_is_refused_at_start() {
    require_root!();
    run_test("unsigned_start", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        let binary = workspace_binary("connectopus")?;
        let tampered = dir.join("tampered.yml");
        let text = std::fs::read_to_string(mesh.config_path())?;
        std::fs::write(&tampered, text.replace("  version: 1\n", "  version: 9\n"))?;
        std::fs::copy(
            format!("{}.sig", mesh.config_path().display()),
            format!("{}.sig", tampered.display()),
        )?;
        let unsigned = dir.join("unsigned.yml");
        std::fs::write(&unsigned, &text)?;
        for (file, expect) in [
            (&tampered, "refusing the config"),
            (&unsigned, "is not signed"),
        ] {
            let output = topo
                .ns("foo")
                .command(
                    &binary.display().to_string(),
                    &[
                        "node",
                        "--config",
                        &file.display().to_string(),
                        "--id",
                        "foo",
                        "--control-socket",
                        &dir.join("x.sock").display().to_string(),
                    ],
                )?
                .output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(!output.status.success(), "{} started", file.display());
            ensure!(stderr.contains(expect), "{stderr}");
            ensure!(
                stderr.contains("config sign"),
                "the message should say how to sign: {stderr}"
            );
        }
        Ok(())
    });
}

#[test]
fn config_edit_sighup_and_removal_from_the_config() {
    require_root!();
    run_test("edit_reload_removal", |dir| {
        let nodes = ["foo", "bar"];
        let topo = Topology::line(dir, &nodes)?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let binary = workspace_binary("connectopus")?;

        // config edit: the editor appends a comment; the node signs it as version 2.
        let mut command = Command::new(&binary);
        command
            .args(["config", "edit", "--socket"])
            .arg(mesh.socket("foo"))
            .arg("--key")
            .arg(mesh.admin_key())
            .env("VISUAL", "sed -i '$ a # edited with config edit'");
        let out = run_ok(command, Duration::from_secs(60))?;
        ensure!(out.contains("version 2 accepted"), "{out}");
        wait_all_at(&mesh, &nodes, 2, Duration::from_secs(10))?;
        let running = std::fs::read_to_string(mesh.node_config_path("bar"))?;
        ensure!(running.contains("# edited with config edit"), "{running}");

        // SIGHUP: bar re-reads its file, now version 3, and spreads it.
        let v3 = candidate(&mesh, dir, "v3", 3, mesh.admin_key(), "connectopus", |t| {
            t + "  # version 3\n"
        })?;
        std::fs::copy(&v3, mesh.node_config_path("bar"))?;
        std::fs::copy(
            format!("{}.sig", v3.display()),
            format!("{}.sig", mesh.node_config_path("bar").display()),
        )?;
        let pid = mesh.process("bar").context("bar")?.pid();
        // SAFETY: sending SIGHUP to a child process this test started.
        let sent = unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        ensure!(sent == 0, "kill -HUP failed");
        wait_all_at(&mesh, &nodes, 3, Duration::from_secs(10))?;

        // A config without bar: bar stops forwarding and says why; foo loses its route.
        let v4 = candidate(&mesh, dir, "v4", 4, mesh.admin_key(), "connectopus", |t| {
            // bar is the last node of the file: cut its entry off.
            let start = t.find("  bar:\n").unwrap_or(t.len());
            t[..start].to_owned()
        })?;
        let (ok, out) = mesh.config_set("foo", &v4)?;
        ensure!(ok, "{out}");
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            mesh.status("bar")
                .is_ok_and(|s| s["removed"].as_str().is_some_and(|r| r.contains("not in")))
        })
        .context("bar should say it is not in the configuration")?;
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            mesh.next_hop("foo", "bar").is_ok_and(|h| h.is_none())
        })
        .context("foo should lose its route to bar")?;
        Ok(())
    });
}

/// Removes the backend `name` (a block `      <name>:` and its deeper-indented lines) from a
/// mesh file made by `Mesh::configure`.
fn without_backend(text: &str, name: &str) -> String {
    let header = format!("      {name}:\n");
    let Some(start) = text.find(&header) else {
        return text.to_owned();
    };
    let rest = &text[start + header.len()..];
    let len = rest
        .split_inclusive('\n')
        .take_while(|line| line.starts_with("        "))
        .map(str::len)
        .sum::<usize>();
    format!("{}{}", &text[..start], &rest[len..])
}

#[test]
fn a_config_that_moves_a_link_still_reaches_the_node_it_cuts_off() {
    require_root!();
    run_test("config_moves_link", |dir| {
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        // d0 is foo's dialer to bar, d1 foo's dialer to baz (baz listens on l1).
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("baz", "foo", LinkKind::DtlsPsk),
            ],
        )?;
        let full = std::fs::read_to_string(mesh.config_path())?;
        // Version 1: foo—bar only; baz waits on its listener, linked to nobody.
        std::fs::write(mesh.config_path(), without_backend(&full, "d1"))?;
        mesh.sign()?;
        mesh.start_all()?;
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            mesh.next_hop("foo", "bar").ok().flatten().as_deref() == Some("bar")
        })
        .context("foo—bar never came up")?;
        ensure!(versions(&mesh, &["foo", "bar", "baz"]) == vec![1, 1, 1]);

        // Version 2 removes the foo—bar link and adds foo—baz. foo must not drop the link to
        // bar before bar has the configuration, or bar is stranded on version 1.
        let v2_text = without_backend(&full, "d0").replace("  version: 1\n", "  version: 2\n");
        ensure!(!v2_text.contains("      d0:\n") && v2_text.contains("      d1:\n"));
        let v2 = dir.join("v2.yml");
        std::fs::write(&v2, v2_text)?;
        sign(&v2, mesh.admin_key(), "connectopus")?;
        let (ok, out) = mesh.config_set("foo", &v2)?;
        ensure!(ok, "foo refused v2: {out}");
        wait_all_at(&mesh, &["foo", "bar", "baz"], 2, Duration::from_secs(20))?;
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            mesh.next_hop("foo", "baz").ok().flatten().as_deref() == Some("baz")
                && mesh.next_hop("foo", "bar").is_ok_and(|h| h.is_none())
        })
        .context("foo should reach baz directly and no longer bar")?;
        ensure!(std::fs::read(mesh.node_config_path("bar"))? == std::fs::read(&v2)?);
        Ok(())
    });
}

/// foo's links as (link id, backend, since) from `status --json`.
fn link_sessions(mesh: &Mesh<'_>, node: &str) -> Result<Vec<(u64, String, f64)>> {
    let status = mesh.status(node)?;
    Ok(status["links"]
        .as_array()
        .context("links")?
        .iter()
        .filter_map(|l| {
            Some((
                l["link"].as_u64()?,
                l["backend"].as_str()?.to_owned(),
                l["since_unix"].as_f64()?,
            ))
        })
        .collect())
}

fn has_route(mesh: &Mesh<'_>, node: &str, prefix: &str) -> bool {
    mesh.status(node).is_ok_and(|s| {
        s["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["prefix"] == prefix)
    })
}

#[test]
fn a_tun_dev_is_added_and_removed_live_and_the_links_stay_up() {
    require_root!();
    run_test("tun_devs_live", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let before = link_sessions(&mesh, "foo")?;
        ensure!(before.len() == 1, "{before:?}");
        let foo_entry = format!("  foo:\n    address: \"{}\"\n", mesh.address("foo"));
        let host = "fd00:cafe::1:2";

        // Version 2 gives foo a second device with its own mesh address.
        let v2 = candidate(&mesh, dir, "v2", 2, mesh.admin_key(), "connectopus", |t| {
            t.replace(
                &foo_entry,
                &format!(
                    "{foo_entry}    tun_devs:\n      foo-host: {{device: cxh-live, address: \"{host}\"}}\n"
                ),
            )
        })?;
        ensure!(std::fs::read_to_string(&v2)?.contains("cxh-live"));
        let (ok, out) = mesh.config_set("foo", &v2)?;
        ensure!(ok, "foo refused v2: {out}");
        wait_all_at(&mesh, &["foo", "bar"], 2, Duration::from_secs(10))?;
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            has_route(&mesh, "bar", &format!("{host}/128"))
        })
        .context("bar should learn foo's new host address")?;
        let ping = ping6(topo.ns("bar"), host.parse()?, 3, 56, &[])?;
        ensure!(
            ping.all_received(),
            "bar -> foo's new host address: {ping:?}"
        );
        let links = topo.ns("foo").ip(&["-o", "link", "show"])?;
        ensure!(links.contains("cxh-live"), "{links}");
        let names = mesh.status("bar")?["names"].to_string();
        ensure!(
            names.contains("foo-host"),
            "bar should resolve foo-host: {names}"
        );
        ensure!(
            link_sessions(&mesh, "foo")? == before,
            "foo's link was re-established"
        );

        // Version 3 removes it again: the device, the route and the name go, the link stays.
        let v3 = candidate(&mesh, dir, "v3", 3, mesh.admin_key(), "connectopus", |t| t)?;
        let (ok, out) = mesh.config_set("foo", &v3)?;
        ensure!(ok, "foo refused v3: {out}");
        wait_all_at(&mesh, &["foo", "bar"], 3, Duration::from_secs(10))?;
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            !has_route(&mesh, "bar", &format!("{host}/128"))
                && topo
                    .ns("foo")
                    .ip(&["-o", "link", "show"])
                    .is_ok_and(|l| !l.contains("cxh-live"))
        })
        .context("the device and its route should be gone")?;
        ensure!(
            link_sessions(&mesh, "foo")? == before,
            "foo's link was re-established"
        );
        Ok(())
    });
}
