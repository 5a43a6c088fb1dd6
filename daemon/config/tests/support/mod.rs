//! Test helpers around the real OpenSSH tools: temporary directories, keys made by
//! `ssh-keygen`, and a private `ssh-agent` per test that is killed on drop.
//!
//! Shared with the `connectopus` crate's unit tests through `#[path]`.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop (kept if the test panics).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "cx-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Fails clearly when the OpenSSH client tools are missing.
pub fn require_openssh() {
    for tool in ["ssh-keygen", "ssh-agent", "ssh-add"] {
        let found = Command::new(tool)
            .arg("-?")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "{tool} not found: install openssh-client (apt-get install -y openssh-client)"
        );
    }
}

/// Generates a key with ssh-keygen: `kind` is `ed25519`, `ecdsa` (P-256) or `rsa` (3072 bits).
/// Returns the private key path; the public key is beside it with `.pub`.
pub fn keygen(dir: &TempDir, name: &str, kind: &str, comment: &str) -> PathBuf {
    keygen_with_passphrase(dir, name, kind, comment, "")
}

pub fn keygen_with_passphrase(
    dir: &TempDir,
    name: &str,
    kind: &str,
    comment: &str,
    passphrase: &str,
) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-C", comment, "-N", passphrase, "-f"])
        .arg(&path);
    match kind {
        "ecdsa" => {
            cmd.args(["-b", "256"]);
        }
        "rsa" => {
            cmd.args(["-b", "3072"]);
        }
        _ => {}
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    path
}

/// The `type base64 comment` line of a generated key.
pub fn public_line(key: &Path) -> String {
    let mut pub_path = key.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::read_to_string(pub_path).unwrap().trim().to_owned()
}

/// `SHA256:...` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Runs `ssh-keygen -Y verify -n <namespace>` on `data` and `sig`; returns (success, output).
pub fn ssh_keygen_verify(
    dir: &TempDir,
    allowed_key: &Path,
    namespace: &str,
    data: &Path,
    sig: &Path,
) -> (bool, String) {
    let allowed = dir.join("allowed_signers");
    std::fs::write(&allowed, format!("x {}\n", public_line(allowed_key))).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&allowed)
        .args(["-I", "x", "-n", namespace, "-s"])
        .arg(sig)
        .stdin(std::fs::File::open(data).unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("Good"), text)
}

/// Runs `ssh-keygen -Y sign -n <namespace> -f key data` plus `extra` options; returns the
/// armored signature text (ssh-keygen writes `data.sig`).
pub fn ssh_keygen_sign(key: &Path, namespace: &str, data: &Path, extra: &[&str]) -> String {
    let mut sig = data.as_os_str().to_owned();
    sig.push(".sig");
    let _ = std::fs::remove_file(&sig);
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace])
        .args(extra)
        .arg("-f")
        .arg(key)
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -Y sign: {out:?}");
    std::fs::read_to_string(sig).unwrap()
}

/// A private ssh-agent on a unique socket, killed on drop.
pub struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    pub fn start(dir: &TempDir) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ssh-add key`.
    pub fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-add: {out:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
