//! The control socket's configuration keys on real nodes: `cpctl.socket_file` moves foo's
//! socket (no `--control-socket` on its command line), and `cpctl.no_socket` leaves bar
//! without one, its clients told why.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, StdinMode, Topology, require_root, run_test, run_with_timeout,
    wait_until, workspace_binary,
};

/// `connectopus status --json --socket SOCKET`, whatever its exit status.
fn status(socket: &Path) -> Result<Output> {
    let mut command = Command::new(workspace_binary("connectopus")?);
    command.args(["status", "--json", "--socket"]).arg(socket);
    run_with_timeout(command, Duration::from_secs(10))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn socket_file_moves_the_control_socket_and_no_socket_turns_it_off() {
    require_root!();
    run_test("cpctl_socket", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let moved = dir.join("admin").join("foo-admin.sock");
        let foo_extra = format!("    cpctl:\n      socket_file: \"{}\"\n", moved.display());
        let bar_extra = "    cpctl:\n      no_socket: true\n";
        let mut mesh = Mesh::configure_with(
            &topo,
            &[MeshLink::new("bar", "foo", LinkKind::Tcp)],
            &[("foo", &foo_extra), ("bar", bar_extra)],
        )?;
        // foo runs without --control-socket: its socket is where socket_file says.
        let binary = workspace_binary("connectopus")?.display().to_string();
        let config = mesh.config_path().display().to_string();
        let command = topo.ns("foo").command(
            &binary,
            &["node", "--config", config.as_str(), "--id", "foo"],
        )?;
        let foo = topo.ns("foo").spawn_with(command, "foo", StdinMode::Null)?;
        // bar with no_socket: the path the harness names gets the marker, not a socket.
        mesh.start("bar")?;
        let bar_path = mesh.socket("bar");

        let mut last = String::new();
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || match status(&moved) {
                Ok(out) => {
                    last = text(&out);
                    out.status.success()
                        && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|s| {
                            s["name"] == "foo"
                                && s["links"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|l| l["peer_name"] == "bar" && l["state"] == "established")
                        })
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            },
        )
        .with_context(|| {
            format!(
                "foo should answer at {} with a link to bar: {last}\n{}",
                moved.display(),
                foo.log_tails()
            )
        })?;

        // bar runs (foo's link to it is up) but serves no socket, and a client says why.
        let meta = std::fs::symlink_metadata(&bar_path)
            .with_context(|| format!("no marker at {}", bar_path.display()))?;
        ensure!(
            meta.is_file(),
            "{} should be a plain file",
            bar_path.display()
        );
        let out = status(&bar_path)?;
        ensure!(
            !out.status.success()
                && text(&out).contains("node bar serves no control socket")
                && text(&out).contains("nodes.bar.cpctl.no_socket"),
            "status of bar: {}",
            text(&out)
        );
        ensure!(
            mesh.process("bar")
                .context("bar")?
                .stderr()
                .contains("no control socket (cpctl.no_socket)"),
            "bar should log that it serves no control socket"
        );

        // Both clean up after themselves.
        mesh.stop("bar")?;
        ensure!(!bar_path.exists(), "bar left its marker behind");
        foo.terminate()?;
        ensure!(!moved.exists(), "foo left its moved socket behind");
        Ok(())
    });
}
