//! Client commands that ask a running node about its health or tell it to act:
//! `status --check`, `reload`, `leases` and `log-level`. (`ping` and `traceroute` are in
//! `ping`.)

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::control::{self, ControlReply, ControlRequest, ReloadResult, StatusReport};

/// `connectopus log-level`: the new level.
#[derive(Debug, Clone, clap::Args)]
pub struct LogLevelArgs {
    /// error, warning (or warn), info, debug or trace.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::log_level::LEVEL_WORDS), ignore_case = true)]
    pub level: String,
}

/// The problems that make `status --check` fail: one line each, none when healthy.
pub fn problems(report: &StatusReport) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(removed) = &report.removed {
        problems.push(format!("node {} is not forwarding: {removed}", report.name));
    }
    for b in &report.backends {
        if b.state != "up" {
            problems.push(format!(
                "backend {} ({}) is {}: {}",
                b.name,
                b.kind,
                b.state,
                b.error.as_deref().unwrap_or("no reason given")
            ));
            continue;
        }
        let session = report
            .links
            .iter()
            .any(|l| l.backend == b.name && l.state == "established");
        if !session {
            let links: Vec<String> = report
                .links
                .iter()
                .filter(|l| l.backend == b.name)
                .map(|l| format!("{} {}", l.remote, l.state))
                .collect();
            let detail = if links.is_empty() {
                "no link".to_owned()
            } else {
                format!("links: {}", links.join(", "))
            };
            problems.push(format!(
                "backend {} ({}) has no session ({detail})",
                b.name, b.kind
            ));
        }
    }
    if let Some(lease) = &report.lease
        && lease.pool.is_none()
        && lease.address.is_none()
    {
        problems.push(format!(
            "ephemeral node {} holds no address yet ({})",
            report.name, lease.state
        ));
    }
    // A plane being renumbered away is deprecated beside the new one; every plane deprecated
    // means the delegating node's upstream stopped renewing, and the mesh prefix will go.
    if !report.mesh_prefixes.is_empty() && report.mesh_prefixes.iter().all(|p| p.state != "active")
    {
        let soonest = report
            .mesh_prefixes
            .iter()
            .map(|p| p.valid_for_secs)
            .fold(f64::INFINITY, f64::min);
        problems.push(format!(
            "every mesh prefix is deprecated (the delegating node is not renewing); the last goes in {soonest:.0}s"
        ));
    }
    problems
}

/// `connectopus status --check`: exit 0 only when the node runs, every configured backend has a
/// session, an ephemeral node holds its address and not every mesh prefix plane is deprecated;
/// otherwise one line per problem on stdout and exit 1.
pub fn status_check(socket: Result<std::path::PathBuf>) -> Result<ExitCode> {
    let path = socket?;
    let report = match control::request(&path, &ControlRequest::Status) {
        Ok(ControlReply::Status(report)) => report,
        Ok(ControlReply::Error(message)) => {
            println!("the node answered with an error: {message}");
            return Ok(ExitCode::FAILURE);
        }
        Ok(other) => bail!("unexpected answer: {other:?}"),
        Err(error) => {
            println!("the node is not running: {error:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let problems = problems(&report);
    if problems.is_empty() {
        println!(
            "ok: node {} runs, {} backends with a session",
            report.name,
            report.backends.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("{problem}");
    }
    Ok(ExitCode::FAILURE)
}

/// `connectopus leases`: an issuer's table, one lease per line, soonest end first (containers'
/// leases, which do not expire, last); an error
/// (exit 1) from a node that issues nothing.
pub fn leases(path: &Path, json: bool) -> Result<ExitCode> {
    let mut leases = match control::request(path, &ControlRequest::Leases)? {
        ControlReply::Leases(leases) => leases,
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_leases(&mut leases));
    Ok(ExitCode::SUCCESS)
}

/// The text of `connectopus leases`.
fn render_leases(leases: &mut [control::LeaseEntry]) -> String {
    use std::fmt::Write as _;
    leases.sort_by(|a, b| {
        (a.container.is_some(), a.expires_in_secs)
            .partial_cmp(&(b.container.is_some(), b.expires_in_secs))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = String::new();
    if leases.is_empty() {
        out.push_str("no active leases\n");
        return out;
    }
    let width = leases.iter().map(|l| l.address.len()).max().unwrap_or(0);
    let name_width = leases.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for l in leases.iter() {
        let key = l.key.get(..16).unwrap_or(&l.key);
        if let Some(container) = &l.container {
            let _ = writeln!(
                out,
                "{:width$}  {:name_width$}  container {container}  epoch {}",
                l.address, l.name, l.epoch
            );
            continue;
        }
        let _ = writeln!(
            out,
            "{:width$}  {:name_width$}  expires in {:>5.0}s  epoch {} renewal {}  key {key}…",
            l.address, l.name, l.expires_in_secs, l.epoch, l.renewal
        );
    }
    let _ = writeln!(out, "{} active", leases.len());
    out
}

/// `connectopus reload`: asks the node to re-read its files and prints what happened.
pub fn reload(path: &Path) -> Result<ExitCode> {
    let outcome = match control::request(path, &ControlRequest::Reload)? {
        ControlReply::Reloaded(outcome) => outcome,
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    let version = outcome.version;
    match outcome.result {
        ReloadResult::Unchanged => {
            println!("unchanged: the node already runs this file (version {version})");
        }
        ReloadResult::Applied => println!("applied configuration version {version}"),
        ReloadResult::Accepted => println!(
            "accepted configuration version {version}; it applies once every neighbour has it"
        ),
        ReloadResult::Restarting => println!(
            "configuration version {version} accepted; the node restarts its mesh instance to apply it"
        ),
        ReloadResult::Removed => println!(
            "configuration version {version} accepted; it does not contain this node, which stopped forwarding"
        ),
        ReloadResult::Refused => {
            println!(
                "refused: {}",
                outcome.error.as_deref().unwrap_or("no reason given")
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    for change in &outcome.changes {
        println!("  {change}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `connectopus log-level`: changes the running node's level.
pub fn log_level(path: &Path, args: &LogLevelArgs) -> Result<ExitCode> {
    let request = ControlRequest::LogLevel {
        level: args.level.to_ascii_lowercase(),
    };
    match control::request(path, &request)? {
        ControlReply::Done(said) => {
            println!("{said}");
            Ok(ExitCode::SUCCESS)
        }
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `connectopus pd release`: the node releases its delegated prefix; prints what it gave
/// back once the server replied (or the Release was sent to its retransmission limit).
pub fn pd_release(path: &Path) -> Result<ExitCode> {
    match control::request(path, &ControlRequest::PdRelease)? {
        ControlReply::Done(said) => {
            println!("{said}");
            Ok(ExitCode::SUCCESS)
        }
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(backends: serde_json::Value, links: serde_json::Value) -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "name": "baz", "address": "fd00::3", "subnet": "fd00::/64",
            "epoch": 1, "sequence": 1, "uptime_secs": 5.0, "config_version": 3, "removed": null,
            "names": [], "name_conflicts": [], "dns": "off", "tun": "cx-baz",
            "dataplane": "io_uring", "dataplane_fallback_reason": null, "ebpf": "off",
            "backends": backends, "links": links,
            "routes": [], "nodes": [], "drops": {}, "counters": {}
        }))
        .unwrap()
    }

    fn link(backend: &str, state: &str) -> serde_json::Value {
        serde_json::json!({
            "link": 1, "backend": backend, "kind": "tcp dialer", "remote": "[2001:db8::2]:1",
            "state": state, "peer_address": null, "peer_name": null, "since_unix": null,
            "rtt_ms": null, "cost": 1.0, "mtu": 1500, "bytes_in": 0, "bytes_out": 0
        })
    }

    fn backend(name: &str, state: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "kind": "tcp-dialer", "state": state, "error": "refused",
            "failed_attempts": 1, "failing_since_unix": null, "next_attempt_secs": 3.0
        })
    }

    #[test]
    fn every_backend_needs_a_session() {
        let healthy = report(
            serde_json::json!([backend("up1", "up")]),
            serde_json::json!([link("up1", "established")]),
        );
        assert!(problems(&healthy).is_empty());
        let sick = report(
            serde_json::json!([
                backend("a", "up"),
                backend("b", "retrying"),
                backend("c", "up")
            ]),
            serde_json::json!([link("a", "handshaking")]),
        );
        let found = problems(&sick);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("backend a (tcp-dialer) has no session (links: "));
        assert_eq!(found[1], "backend b (tcp-dialer) is retrying: refused");
        assert_eq!(found[2], "backend c (tcp-dialer) has no session (no link)");
    }

    #[test]
    fn leases_render_soonest_first_with_keys_shortened() {
        let entry = |address: &str, name: &str, secs: f64| control::LeaseEntry {
            address: address.to_owned(),
            name: name.to_owned(),
            key: "ab".repeat(32),
            epoch: 3,
            renewal: 1,
            expires_in_secs: secs,
            container: None,
        };
        let mut web = entry("fd00:cafe::1:c", "web", 0.0);
        web.container = Some("mesh/0123abcd/eth0".to_owned());
        let mut leases = vec![
            web,
            entry("fd00:cafe::1:8", "job-long", 40.0),
            entry("fd00:cafe::1:a", "job", 12.4),
        ];
        let text = render_leases(&mut leases);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("fd00:cafe::1:a  job     "), "{text}");
        assert!(
            lines[0].contains("expires in    12s") && lines[0].contains("key abababababababab…")
        );
        assert!(lines[1].starts_with("fd00:cafe::1:8  job-long"), "{text}");
        // A container's lease does not expire: it comes last, with its CNI key.
        assert_eq!(
            lines[2], "fd00:cafe::1:c  web       container mesh/0123abcd/eth0  epoch 3",
            "{text}"
        );
        assert_eq!(lines[3], "3 active");
        assert_eq!(render_leases(&mut []), "no active leases\n");
    }

    #[test]
    fn an_unbound_ephemeral_node_and_an_all_deprecated_mesh_prefix_are_problems() {
        let mut r = report(serde_json::json!([]), serde_json::json!([]));
        assert!(problems(&r).is_empty());
        r.lease = Some(control::LeaseReport {
            state: "joining".to_owned(),
            ..Default::default()
        });
        assert_eq!(
            problems(&r),
            ["ephemeral node baz holds no address yet (joining)"]
        );
        r.lease = Some(control::LeaseReport {
            state: "bound".to_owned(),
            address: Some("fd00::1:7".to_owned()),
            ..Default::default()
        });
        assert!(problems(&r).is_empty());
        // An issuer holds no address of its own lease and that is fine.
        r.lease = Some(control::LeaseReport {
            state: "issuing".to_owned(),
            pool: Some("fd00::1:0/112".to_owned()),
            ..Default::default()
        });
        assert!(problems(&r).is_empty());
        let plane = |prefix: &str, state: &str, valid: f64| control::MeshPrefixReport {
            prefix: prefix.to_owned(),
            state: state.to_owned(),
            valid_for_secs: valid,
            ..Default::default()
        };
        // Renumbering: the old plane deprecated beside an active one.
        r.mesh_prefixes = vec![
            plane("2001:db8:100::/64", "deprecated", 30.0),
            plane("2001:db8:200::/64", "active", 90.0),
        ];
        assert!(problems(&r).is_empty());
        r.mesh_prefixes[1].state = "deprecated".to_owned();
        assert_eq!(
            problems(&r),
            [
                "every mesh prefix is deprecated (the delegating node is not renewing); the last goes in 30s"
            ]
        );
    }
}
