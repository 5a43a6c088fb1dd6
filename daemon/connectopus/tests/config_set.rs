//! `connectopus config set` against a running node (no root: the node has no TUN device and
//! no DNS server): the file from standard input, signed on the fly with `--key` or by
//! ssh-agent, and `config get` returning exactly what the node runs.

#![allow(clippy::unwrap_used)]

#[path = "../../config/tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Agent, TempDir, keygen, public_line, require_openssh};

const BIN: &str = env!("CARGO_BIN_EXE_connectopus");

/// A node process, killed when dropped.
struct Node(Child, PathBuf);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }

    /// Waits until the node on `socket` runs configuration `version`.
    fn wait_version(&mut self, socket: &Path, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("the node exited ({status}):\n{}", self.log());
            }
            let out = Command::new(BIN)
                .args(["status", "--json", "--socket"])
                .arg(socket)
                .output()
                .unwrap();
            if out.status.success() {
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if status["config_version"] == version {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the node never ran version {version}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn mesh_file(key: &Path, version: u64, comment: &str) -> String {
    format!(
        "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n  version: {version}\n  authorized_keys:\n    - \"{}\"\nnodes:\n  foo:\n    address: fd00:cafe::1\n    tun: {{disable: true}}\n    dns: {{disable: true}}\n  bar:\n    address: fd00:cafe::2\n# {comment}\n",
        public_line(key)
    )
}

/// Runs `connectopus args...` with `stdin` and `env`; returns (exit code, stdout, stderr).
fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config get -o` into `dir/name`; returns the file's text after `config verify` passed.
fn get_and_verify(dir: &TempDir, socket: &str, name: &str) -> String {
    let out = dir.join(name);
    let out = out.to_str().unwrap();
    let (code, _, stderr) = run(&["config", "get", "--socket", socket, "-o", out], b"", &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&["config", "verify", out], b"", &[]);
    assert_eq!(
        code, 0,
        "config get gave a pair that does not verify: {stdout}{stderr}"
    );
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn config_set_reads_stdin_and_signs_with_a_key_or_the_agent() {
    require_openssh();
    let dir = TempDir::new("cli-config-set");
    let admin = keygen(&dir, "admin", "ed25519", "admin");
    let config = dir.join("mesh.yml");
    std::fs::write(&config, mesh_file(&admin, 1, "first")).unwrap();
    let (code, _, stderr) = run(
        &[
            "config",
            "sign",
            config.to_str().unwrap(),
            "--key",
            admin.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let socket = dir.join("foo.sock");
    let socket_arg = socket.to_str().unwrap();
    let log = dir.join("foo.stderr");
    let child = Command::new(BIN)
        .args(["node", "--id", "foo", "--config"])
        .arg(&config)
        .arg("--control-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut node = Node(child, log);
    node.wait_version(&socket, 2);

    // From standard input, version 1 (older than the node's 2), signed with --key: stamped 3.
    let text = mesh_file(&admin, 1, "from stdin");
    let (code, stdout, stderr) = run(
        &[
            "config",
            "set",
            "--socket",
            socket_arg,
            "-",
            "--key",
            admin.to_str().unwrap(),
        ],
        text.as_bytes(),
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("version 3 accepted"), "{stdout}");
    node.wait_version(&socket, 3);
    let running = get_and_verify(&dir, socket_arg, "got3.yml");
    assert!(
        running.contains("# from stdin") && running.contains("version: 3"),
        "{running}"
    );

    // A file without a .sig, signed by the agent ($SSH_AUTH_SOCK).
    let agent = Agent::start(&dir);
    agent.add(&admin);
    let file = dir.join("next.yml");
    std::fs::write(&file, mesh_file(&admin, 1, "signed by the agent")).unwrap();
    let (code, stdout, stderr) = run(
        &[
            "config",
            "set",
            "--socket",
            socket_arg,
            file.to_str().unwrap(),
        ],
        b"",
        &[("SSH_AUTH_SOCK", agent.socket().to_str().unwrap())],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    node.wait_version(&socket, 4);
    let running = get_and_verify(&dir, socket_arg, "got4.yml");
    assert!(running.contains("# signed by the agent"), "{running}");
    assert!(
        !file.with_extension("yml.sig").exists(),
        "set must not write a signature file"
    );

    // Nothing to sign with: refused before anything is sent, and the node is unchanged.
    let (code, stdout, stderr) = run(
        &["config", "set", "--socket", socket_arg, "-"],
        mesh_file(&admin, 9, "unsigned").as_bytes(),
        &[],
    );
    assert_ne!(code, 0, "{stdout}");
    assert!(stderr.contains("no signature"), "{stderr}");
    let running = get_and_verify(&dir, socket_arg, "still4.yml");
    assert!(running.contains("version: 4"), "{running}");
}
