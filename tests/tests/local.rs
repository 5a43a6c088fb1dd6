//! Local attackers and files (issue 12, items 10 to 12): `config edit`'s scratch files,
//! secret files with loose permissions or short PSKs, and rollback of the config across
//! restarts. The tests that need no network run as any user; the others need root.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, TestDir, Topology, require_root, run_test, run_with_timeout,
    ssh_keygen, ssh_sign, wait_until, workspace_binary, write_secret,
};

/// A control socket that plays a node for `config edit`: it answers `get_config` with
/// `config` and hands every `set_config` request to the returned channel.
fn fake_node(socket: &Path, config: String) -> mpsc::Receiver<serde_json::Value> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            let Ok(request) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let reply = match request["cmd"].as_str() {
                Some("get_config") => {
                    serde_json::json!({"config": {"config": config, "signature": ""}})
                }
                Some("set_config") => {
                    let _ = tx.send(request);
                    serde_json::json!({"accepted": {"version": 2}})
                }
                _ => serde_json::json!({"error": "unexpected"}),
            };
            let _ = writeln!(&stream, "{reply}");
        }
    });
    rx
}

/// The PID the kernel handed out last (the next ones follow it).
fn last_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `config edit` used to write into `$TMPDIR/connectopus-edit-<pid>`, accepting a directory
/// or a symlink someone else had put there. Every such name for the next PIDs is taken (a
/// world-writable directory or a symlink to a victim directory); the edit works anyway, in a
/// fresh 0700 directory of its own, and nothing lands in the traps.
#[test]
fn config_edit_never_follows_predictable_paths() {
    let dir = TestDir::new("edit_tmp").unwrap();
    let tmp = dir.join("tmp");
    let victim = dir.join("victim");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    let key = dir.join("admin");
    let public = ssh_keygen(&key, "admin").unwrap();
    let config = format!(
        "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n  version: 1\n  authorized_keys:\n    - \"{public}\"\nnodes:\n  foo:\n    address: fd00:cafe::1\n"
    );
    let socket = dir.join("fake.sock");
    let requests = fake_node(&socket, config);
    let record = dir.join("editor.log");
    let editor = dir.join("editor.sh");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" > {rec}\nstat -c '%a' \"$1\" \"$(dirname \"$1\")\" >> {rec}\necho '# edited' >> \"$1\"\n",
            rec = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The PID of the child is only known once it runs: lay traps for the next 500 and retry
    // if something else used them all up first.
    let mut traps: Vec<PathBuf> = Vec::new();
    let mut caught = false;
    for _attempt in 0..3 {
        let first = last_pid() + 1;
        let range = first..first + 500;
        for pid in range.clone() {
            let trap = tmp.join(format!("connectopus-edit-{pid}"));
            if trap.symlink_metadata().is_ok() {
                continue;
            }
            if pid % 2 == 0 {
                std::fs::create_dir(&trap).unwrap();
                std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o777)).unwrap();
            } else {
                std::os::unix::fs::symlink(&victim, &trap).unwrap();
            }
            traps.push(trap);
        }
        let child = Command::new(workspace_binary("connectopus").unwrap())
            .args(["config", "edit", "--socket"])
            .arg(&socket)
            .arg("--key")
            .arg(&key)
            .env("TMPDIR", &tmp)
            .env("VISUAL", &editor)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "config edit failed:\n{text}");
        assert!(text.contains("version 2 accepted"), "{text}");
        if range.contains(&pid) {
            caught = true;
            break;
        }
    }
    assert!(caught, "could not predict the PID of `config edit`");

    // The editor ran on a file in a private directory with an unpredictable name.
    let log = std::fs::read_to_string(&record).unwrap();
    let mut lines = log.lines();
    let edited = PathBuf::from(lines.next().unwrap());
    let parent = edited.parent().unwrap();
    assert!(
        !traps.iter().any(|t| t == parent),
        "edited in a trap: {log}"
    );
    assert_eq!(parent.parent(), Some(tmp.as_path()), "{log}");
    assert_eq!(lines.next(), Some("600"), "file mode: {log}");
    assert_eq!(lines.next(), Some("700"), "directory mode: {log}");
    // Nothing was written through the symlinks or into the directories.
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    for trap in traps.iter().filter(|t| t.is_dir() && !t.is_symlink()) {
        assert_eq!(std::fs::read_dir(trap).unwrap().count(), 0, "{trap:?}");
    }
    // The private directory is gone and the node got the signed edit.
    assert!(!parent.exists(), "{} left behind", parent.display());
    let set = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    let new = set["config"].as_str().unwrap();
    assert!(
        new.contains("# edited") && new.contains("version: 2"),
        "{new}"
    );
    assert!(
        set["signature"]
            .as_str()
            .unwrap()
            .contains("BEGIN SSH SIGNATURE")
    );
}

/// Writes `mesh.yml` with node `foo` (`foo_lines` added to its entry) and a second node,
/// signed by a fresh admin key; returns its path.
fn signed_mesh(dir: &TestDir, foo_lines: &str) -> PathBuf {
    let key = dir.join("admin");
    let public = ssh_keygen(&key, "admin").unwrap();
    let path = dir.join("mesh.yml");
    // A mesh is keyed everywhere or nowhere (`config check` refuses a mixed one).
    let bar_lines = if foo_lines.contains("identity:") {
        "    identity: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC bar\"\n"
    } else {
        ""
    };
    std::fs::write(
        &path,
        format!(
            "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n  version: 1\n  authorized_keys:\n    - \"{public}\"\nnodes:\n  foo:\n    address: fd00:cafe::1\n{foo_lines}  bar:\n    address: fd00:cafe::2\n{bar_lines}"
        ),
    )
    .unwrap();
    ssh_sign(&path, &key, "connectopus").unwrap();
    path
}

/// Runs `connectopus node --id foo` on `config` with `extra` arguments; it is expected to stop
/// before it touches the network, so it needs no root.
fn run_foo(dir: &TestDir, config: &Path, extra: &[&str]) -> Output {
    Command::new(workspace_binary("connectopus").unwrap())
        .args(["node", "--id", "foo", "--config"])
        .arg(config)
        .arg("--control-socket")
        .arg(dir.join("foo.sock"))
        .args(extra)
        .output()
        .unwrap()
}

fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the node started:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_psk_file_readable_by_others_is_refused_at_start() {
    let dir = TestDir::new("psk_mode").unwrap();
    let psk = dir.join("link.psk");
    write_secret(&psk, b"correct horse battery staple").unwrap();
    let config = signed_mesh(
        &dir,
        &format!(
            "    backends:\n      b1: {{type: dtls-listener, port: 4444, psk_file: {}}}\n",
            psk.display()
        ),
    );
    for mode in [0o644, 0o640, 0o604] {
        chmod(&psk, mode);
        let out = run_foo(&dir, &config, &[]);
        assert_refused(
            &out,
            &[
                "nodes.foo.backends.b1.psk_file",
                &psk.display().to_string(),
                &format!("mode 0{mode:o}"),
                "chmod 600",
            ],
        );
    }
}

#[test]
fn a_short_psk_is_refused_at_start() {
    let dir = TestDir::new("psk_short").unwrap();
    let psk = dir.join("link.psk");
    write_secret(&psk, b"fifteen bytes!!").unwrap();
    let config = signed_mesh(
        &dir,
        &format!(
            "    backends:\n      b1: {{type: dtls-dialer, peer: \"[fd00::2]:4444\", psk_file: {}}}\n",
            psk.display()
        ),
    );
    let out = run_foo(&dir, &config, &[]);
    assert_refused(
        &out,
        &[
            &psk.display().to_string(),
            "holds 15 bytes",
            "at least 16 bytes",
        ],
    );
}

#[test]
fn a_tls_key_file_readable_by_others_is_refused_at_start() {
    let dir = TestDir::new("key_mode").unwrap();
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    write_secret(&key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
    chmod(&key, 0o640);
    let config = signed_mesh(
        &dir,
        &format!(
            "    backends:\n      b1: {{type: tcp-listener, port: 4445, tls: true, server_cert_file: {}, server_key_file: {}}}\n",
            cert.display(),
            key.display()
        ),
    );
    let out = run_foo(&dir, &config, &[]);
    assert_refused(
        &out,
        &["server_key_file", &key.display().to_string(), "mode 0640"],
    );
}

#[test]
fn a_node_key_readable_by_others_is_refused_at_start() {
    let dir = TestDir::new("identity_mode").unwrap();
    let key = dir.join("foo.key");
    let public = ssh_keygen(&key, "foo").unwrap();
    let config = signed_mesh(&dir, &format!("    identity: \"{public}\"\n"));
    chmod(&key, 0o644);
    let key_arg = key.display().to_string();
    let out = run_foo(&dir, &config, &["--identity-file", &key_arg]);
    assert_refused(&out, &[&key_arg, "mode 0644", "chmod 600"]);
}

#[test]
fn secret_files_owned_by_another_user_are_refused_at_start() {
    if !connectopus_tests::is_root() {
        eprintln!("skipped: needs root to give files to another user");
        return;
    }
    let dir = TestDir::new("secret_owner").unwrap();
    let psk = dir.join("link.psk");
    write_secret(&psk, b"correct horse battery staple").unwrap();
    std::os::unix::fs::chown(&psk, Some(65534), Some(65534)).unwrap();
    let config = signed_mesh(
        &dir,
        &format!(
            "    backends:\n      b1: {{type: dtls-listener, port: 4444, psk_file: {}}}\n",
            psk.display()
        ),
    );
    let out = run_foo(&dir, &config, &[]);
    assert_refused(
        &out,
        &[&psk.display().to_string(), "owned by uid 65534", "uid 0"],
    );

    let dir = TestDir::new("identity_owner").unwrap();
    let key = dir.join("foo.key");
    let public = ssh_keygen(&key, "foo").unwrap();
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let config = signed_mesh(&dir, &format!("    identity: \"{public}\"\n"));
    let key_arg = key.display().to_string();
    let out = run_foo(&dir, &config, &["--identity-file", &key_arg]);
    assert_refused(&out, &[&key_arg, "owned by uid 65534"]);
}

/// Copies a config and its signature.
fn copy_pair(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)?;
    std::fs::copy(
        format!("{}.sig", from.display()),
        format!("{}.sig", to.display()),
    )?;
    Ok(())
}

fn wait_version(mesh: &Mesh<'_>, node: &str, version: u64) -> Result<()> {
    wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        mesh.config_version(node).is_ok_and(|v| v == version)
    })
    .with_context(|| format!("{node} did not reach configuration version {version}"))
}

/// A node that ran version 3 and is restarted on version 2's files (a restored backup, say)
/// refuses to start, naming both versions; on version 3 it starts again.
#[test]
fn a_node_restarted_on_an_older_config_refuses_it() {
    require_root!();
    run_test("rollback", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start("foo")?;
        wait_version(&mesh, "foo", 1)?;
        let running = mesh.node_config_path("foo");
        let original = std::fs::read_to_string(mesh.config_path())?;
        let mut backups = Vec::new();
        for version in [2u64, 3] {
            let candidate = dir.join(format!("v{version}.yml"));
            std::fs::write(
                &candidate,
                original.replace("  version: 1\n", &format!("  version: {version}\n"))
                    + &format!("# version {version}\n"),
            )?;
            ssh_sign(&candidate, mesh.admin_key(), "connectopus")?;
            let (ok, out) = mesh.config_set("foo", &candidate)?;
            ensure!(ok, "{out}");
            wait_version(&mesh, "foo", version)?;
            // What a backup of the node's files at this version holds.
            let backup = dir.join(format!("backup-v{version}.yml"));
            copy_pair(&running, &backup)?;
            ensure!(
                std::fs::read_to_string(&backup)?.contains(&format!("# version {version}")),
                "foo did not persist version {version}"
            );
            backups.push(backup);
        }
        mesh.stop("foo")?;

        copy_pair(&backups[0], &running)?;
        let binary = workspace_binary("connectopus")?;
        let command = topo.ns("foo").command(
            &binary.display().to_string(),
            &[
                "node",
                "--config",
                &running.display().to_string(),
                "--id",
                "foo",
                "--control-socket",
                &dir.join("rollback.sock").display().to_string(),
            ],
        )?;
        let out = run_with_timeout(command, Duration::from_secs(20))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "foo started on version 2:\n{stderr}");
        ensure!(
            stderr.contains("configuration version 2, older than version 3"),
            "the refusal should name both versions:\n{stderr}"
        );

        copy_pair(&backups[1], &running)?;
        mesh.start("foo")?;
        wait_version(&mesh, "foo", 3)?;
        Ok(())
    });
}
