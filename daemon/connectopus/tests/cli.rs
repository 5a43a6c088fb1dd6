//! The `connectopus` binary's command line: `--log-level`, an empty `SSH_AUTH_SOCK`,
//! `init --run`, and a node that keeps running when one of its backends cannot start.
//!
//! The nodes started here have no TUN device and no DNS server, so they need no root: they
//! only serve their control socket (in a temporary directory) and their backends.

#![allow(clippy::unwrap_used)]

#[path = "../../config/tests/support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{TempDir, keygen, public_line, require_openssh};

const BIN: &str = env!("CARGO_BIN_EXE_connectopus");

fn connectopus(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    command
}

fn output(command: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = command.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A node process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Node {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Node {
    fn spawn(mut command: Command, dir: &TempDir, name: &str) -> Node {
        let stderr = dir.join(&format!("{name}.stderr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(&format!("{name}.stdout"))).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Node { child, stderr }
    }

    /// Asks the node on `socket` for `status --json` until `ready` holds (or panics with the
    /// node's log after 20 s).
    fn wait_status(
        &mut self,
        socket: &Path,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the node exited ({status}):\n{}", self.log());
            }
            let out = connectopus(&["status", "--json", "--socket"])
                .arg(socket)
                .output()
                .unwrap();
            if out.status.success() {
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if ready(&status) {
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the node's status never got ready:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node with SIGTERM and returns its exit code and log.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: plain signal delivery to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "SIGTERM did not stop the node");
            std::thread::sleep(Duration::from_millis(50));
        };
        (code, self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mesh file whose node `foo` has no TUN device and no DNS server, plus `backends` (YAML
/// lines indented under `backends:`), authorizing `key`.
fn mesh_file(key: &Path, version: u64, backends: &str) -> String {
    let backends = if backends.is_empty() {
        String::new()
    } else {
        format!("    backends:\n{backends}")
    };
    format!(
        "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n  version: {version}\n  authorized_keys:\n    - \"{}\"\nnodes:\n  foo:\n    address: fd00:cafe::1\n    tun: {{disable: true}}\n    dns: {{disable: true}}\n{backends}  bar:\n    address: fd00:cafe::2\n",
        public_line(key)
    )
}

/// Writes `yaml` to `dir/name` and signs it with `key` (`config sign`, which bumps the
/// version by one).
fn signed(dir: &TempDir, name: &str, yaml: &str, key: &Path) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let (code, stderr) = output(
        connectopus(&["config", "sign"])
            .arg(&path)
            .arg("--key")
            .arg(key),
    );
    assert_eq!(code, 0, "{stderr}");
    path
}

#[test]
fn log_level_takes_upstreams_words_and_refuses_anything_else() {
    let dir = TempDir::new("cli-log-level");
    let missing = dir.join("missing.yml");
    for level in [
        "error", "warning", "warn", "info", "debug", "trace", "WARNING",
    ] {
        let (code, stderr) = output(
            connectopus(&["node", "--id", "foo", "--log-level", level, "--config"]).arg(&missing),
        );
        // Accepted: the node gets as far as reading its (missing) config.
        assert_eq!(code, 1, "--log-level {level}: {stderr}");
        assert!(stderr.contains("missing.yml"), "{level}: {stderr}");
    }
    // `warning` used to be taken as a target filter that hid almost everything; unknown words
    // and tracing directives are now refused by the command line, listing the levels.
    for level in ["warnings", "verbose", "warning,connectopus=debug", ""] {
        let (code, stderr) = output(
            connectopus(&["node", "--id", "foo", "--log-level", level, "--config"]).arg(&missing),
        );
        assert_eq!(code, 2, "--log-level {level:?}: {stderr}");
        assert!(
            stderr.contains("[possible values: error, warning, info, debug, trace]"),
            "{level:?}: {stderr}"
        );
    }
    let (code, stderr) = output(
        connectopus(&["node", "--id", "foo", "--config"])
            .arg(&missing)
            .env("CONNECTOPUS_LOG", "loud"),
    );
    assert_eq!(code, 2, "CONNECTOPUS_LOG=loud: {stderr}");
    // RUST_LOG refines the level with tracing directives; a bad one is a clear error.
    let (code, stderr) = output(
        connectopus(&["node", "--id", "foo", "--config"])
            .arg(&missing)
            .env("RUST_LOG", "connectopus=loud"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid RUST_LOG"), "{stderr}");
}

#[test]
fn a_node_whose_listener_port_is_taken_keeps_running_and_warning_level_shows_why() {
    require_openssh();
    let dir = TempDir::new("cli-port-taken");
    let admin = keygen(&dir, "admin", "ed25519", "admin");
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let backends = format!(
        "      tl:\n        type: tcp-listener\n        listen_ip: 127.0.0.1\n        port: {port}\n"
    );
    let config = signed(&dir, "mesh.yml", &mesh_file(&admin, 1, &backends), &admin);
    for level in ["warning", "info"] {
        let socket = dir.join(&format!("{level}.sock"));
        let mut command = connectopus(&["node", "--id", "foo", "--log-level", level, "--config"]);
        command.arg(&config).arg("--control-socket").arg(&socket);
        let mut node = Node::spawn(command, &dir, level);
        let status = node.wait_status(&socket, |s| s["backends"][0]["state"] == "retrying");
        let tl = &status["backends"][0];
        assert_eq!(tl["name"], "tl");
        assert!(
            tl["error"]
                .as_str()
                .is_some_and(|e| e.contains("Address already in use")),
            "{tl}"
        );
        let (code, log) = node.stop();
        assert_eq!(code, Some(0), "{log}");
        let warned = log
            .lines()
            .any(|l| l.contains("WARN") && l.contains("backend failed to start"));
        assert!(warned, "--log-level {level} shows the warning:\n{log}");
        let infos = log.lines().filter(|l| l.contains(" INFO ")).count();
        if level == "warning" {
            assert_eq!(infos, 0, "--log-level warning hides info:\n{log}");
        } else {
            assert!(infos > 0, "--log-level info shows info:\n{log}");
        }
    }
    drop(holder);
}

#[test]
fn a_backend_added_by_a_new_config_is_retried_until_its_port_is_free() {
    require_openssh();
    let dir = TempDir::new("cli-reload-retry");
    let admin = keygen(&dir, "admin", "ed25519", "admin");
    let config = signed(&dir, "mesh.yml", &mesh_file(&admin, 1, ""), &admin);
    let socket = dir.join("foo.sock");
    let mut command = connectopus(&["node", "--id", "foo", "--log-level", "debug", "--config"]);
    command.arg(&config).arg("--control-socket").arg(&socket);
    let mut node = Node::spawn(command, &dir, "foo");
    node.wait_status(&socket, |s| s["config_version"] == 2);

    // A new configuration adds a listener on a port someone holds.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let backends = format!(
        "      tl:\n        type: tcp-listener\n        listen_ip: 127.0.0.1\n        port: {port}\n"
    );
    let update = signed(&dir, "v3.yml", &mesh_file(&admin, 2, &backends), &admin);
    let (code, stderr) = output(
        connectopus(&["config", "set", "--socket"])
            .arg(&socket)
            .arg(&update),
    );
    assert_eq!(code, 0, "{stderr}");
    let status = node.wait_status(&socket, |s| {
        s["config_version"] == 3 && s["backends"][0]["failed_attempts"].as_u64() >= Some(2)
    });
    assert_eq!(status["backends"][0]["state"], "retrying", "{status}");

    // Once the port is free, the next try starts it (at most 5 s later).
    drop(holder);
    let freed = Instant::now();
    node.wait_status(&socket, |s| s["backends"][0]["state"] == "up");
    assert!(
        freed.elapsed() < Duration::from_secs(7),
        "{:?}",
        freed.elapsed()
    );
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_err(),
        "the node holds the port now"
    );
    let (code, log) = node.stop();
    assert_eq!(code, Some(0), "{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("backend failed to start"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for the same error, however many tries:\n{log}"
    );
    assert!(log.contains("backend started"), "{log}");
}

#[test]
fn an_empty_ssh_auth_sock_is_the_same_as_none() {
    let dir = TempDir::new("cli-empty-agent");
    let file = dir.join("mesh.yml");
    std::fs::write(
        &file,
        "global: {domain: x.test, subnet: \"fd00::/64\", authorized_keys: []}\nnodes: {foo: {address: \"fd00::1\"}}\n",
    )
    .unwrap();
    let sign = |sock: Option<&str>| {
        let mut command = connectopus(&["config", "sign"]);
        command.arg(&file).env_remove("SSH_AUTH_SOCK");
        if let Some(sock) = sock {
            command.env("SSH_AUTH_SOCK", sock);
        }
        output(&mut command)
    };
    let (unset_code, unset) = sign(None);
    let (empty_code, empty) = sign(Some(""));
    assert_eq!(unset_code, 1, "{unset}");
    assert!(unset.contains("SSH_AUTH_SOCK is not set"), "{unset}");
    assert_eq!((empty_code, &empty), (unset_code, &unset));

    let init = |sock: Option<&str>| {
        let mut command = connectopus(&["init", "--id", "foo", "--datadir"]);
        command.arg(dir.join("foo")).env_remove("SSH_AUTH_SOCK");
        if let Some(sock) = sock {
            command.env("SSH_AUTH_SOCK", sock);
        }
        output(&mut command)
    };
    let (code, stderr) = init(Some(""));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr, init(None).1);
    assert!(stderr.contains("SSH_AUTH_SOCK is not set"), "{stderr}");
    assert!(!dir.join("foo").exists());
}

#[test]
fn init_run_starts_the_node_on_the_new_data_directory() {
    require_openssh();
    let dir = TempDir::new("cli-init-run");
    let admin = keygen(&dir, "admin", "ed25519", "admin");
    let mesh = dir.join("mesh.yml");
    std::fs::write(&mesh, mesh_file(&admin, 3, "")).unwrap();
    let socket = dir.join("foo.sock");
    let datadir = dir.join("foo");
    let mut command = connectopus(&["init", "--id", "foo", "--run", "--key"]);
    command
        .arg(&admin)
        .arg("--config")
        .arg(&mesh)
        .arg("--datadir")
        .arg(&datadir)
        .arg("--control-socket")
        .arg(&socket);
    let mut node = Node::spawn(command, &dir, "init");
    let status = node.wait_status(&socket, |s| s["name"] == "foo");
    assert_eq!(
        status["config_version"], 4,
        "the node runs the data directory's config, stamped above the file's version 3"
    );
    let (code, log) = node.stop();
    assert_eq!(code, Some(0), "{log}");
    let stdout = std::fs::read_to_string(dir.join("init.stdout")).unwrap();
    assert!(stdout.contains("starting node foo"), "{stdout}");
    assert!(datadir.join("config.yml.sig").exists());

    // --control-socket means nothing without --run.
    let (code, stderr) = output(
        connectopus(&["init", "--id", "bar", "--control-socket", "x.sock", "--key"])
            .arg(&admin)
            .arg("--datadir")
            .arg(dir.join("bar")),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--run"), "{stderr}");
}
