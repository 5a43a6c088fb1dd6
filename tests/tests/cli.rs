//! The command line refuses bad configurations with the file, line and column at fault.
//! These run without root: the node stops before it touches the network.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use connectopus_tests::{TestDir, workspace_binary};

fn node(dir: &TestDir, yaml: &str, id: &str) -> Output {
    let path = dir.join("mesh.yml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(workspace_binary("connectopus").unwrap())
        .args(["node", "--config"])
        .arg(&path)
        .args(["--id", id, "--control-socket"])
        .arg(dir.join("x.sock"))
        .output()
        .unwrap()
}

fn assert_refused(yaml: &str, id: &str, location: &str, message: &str) {
    let dir = TestDir::new("cli").unwrap();
    let out = node(&dir, yaml, id);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains(&format!("mesh.yml:{location}")),
        "expected mesh.yml:{location} in:\n{stderr}"
    );
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
}

const GOOD: &str = "global:
  domain: connectopus.test
  subnet: fd00:cafe::/64
  authorized_keys: []
nodes:
  foo:
    address: fd00:cafe::1
  bar:
    address: fd00:cafe::2
";

#[test]
fn unknown_key_is_refused_with_its_position() {
    let yaml = GOOD.replace(
        "    address: fd00:cafe::2\n",
        "    address: fd00:cafe::2\n    colour: blue\n",
    );
    assert_refused(&yaml, "foo", "10:5", "colour");
}

#[test]
fn duplicate_key_is_refused_at_the_second_occurrence() {
    let yaml = GOOD.replace("  bar:\n", "  foo:\n");
    assert_refused(&yaml, "foo", "8:3", "duplicate");
}

#[test]
fn non_ipv6_address_is_refused() {
    let yaml = GOOD.replace("fd00:cafe::2", "198.18.0.2");
    assert_refused(&yaml, "foo", "9:14", "198.18.0.2");
}

#[test]
fn unknown_id_names_the_known_nodes() {
    // A correctly signed config, so that the only fault is the --id.
    let dir = TestDir::new("cli_unknown_id").unwrap();
    let key = dir.join("admin");
    let public = connectopus_tests::ssh_keygen(&key, "admin").unwrap();
    let yaml = GOOD.replace(
        "  authorized_keys: []\n",
        &format!("  authorized_keys:\n    - \"{public}\"\n"),
    );
    let path = dir.join("mesh.yml");
    std::fs::write(&path, &yaml).unwrap();
    connectopus_tests::ssh_sign(&path, &key, "connectopus").unwrap();
    let out = Command::new(workspace_binary("connectopus").unwrap())
        .args(["node", "--config"])
        .arg(&path)
        .args(["--id", "qux", "--control-socket"])
        .arg(dir.join("x.sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains("mesh.yml:6:1"),
        "expected mesh.yml:6:1 in:\n{stderr}"
    );
    assert!(stderr.contains("qux") && stderr.contains("foo"), "{stderr}");
}

#[test]
fn config_check_accepts_a_good_file_and_rejects_a_bad_one() {
    let dir = TestDir::new("cli_check").unwrap();
    let path = dir.join("mesh.yml");
    std::fs::write(&path, GOOD).unwrap();
    let binary = workspace_binary("connectopus").unwrap();
    let ok = Command::new(&binary)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    std::fs::write(&path, GOOD.replace("fd00:cafe::2", "fd01::2")).unwrap();
    let bad = Command::new(&binary)
        .args(["config", "check", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let json: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    let text = json.to_string();
    assert!(text.contains("outside"), "{text}");
    assert!(text.contains("\"line\":9"), "{text}");
}
