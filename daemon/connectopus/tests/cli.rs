//! The `connectopus` binary's command line.

#![allow(clippy::unwrap_used)]

#[path = "../../config/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use support::TempDir;

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
