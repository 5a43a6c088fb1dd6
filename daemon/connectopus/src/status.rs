//! Human-readable rendering of a node's status report.

use std::fmt::Write;

use crate::control::StatusReport;

/// Renders the report the way `connectopus status` prints it.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} [{}]  subnet {}  up {:.0}s",
        report.name, report.address, report.subnet, report.uptime_secs
    );
    let _ = writeln!(out, "config version {}", report.config_version);
    if let Some(removed) = &report.removed {
        let _ = writeln!(out, "NOT FORWARDING: {removed}");
    }
    let _ = writeln!(
        out,
        "dataplane {}{}  tun {}  ebpf {}",
        report.dataplane,
        report
            .dataplane_fallback_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        report.tun,
        report.ebpf
    );
    let _ = writeln!(out, "\nbackends:");
    if report.backends.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for b in &report.backends {
        let _ = write!(out, "  {:<12} {:<14} {}", b.name, b.kind, b.state);
        if let Some(error) = &b.error {
            let next = b
                .next_attempt_secs
                .map(|s| format!(", next try in {s:.0}s"))
                .unwrap_or_default();
            let _ = write!(
                out,
                " ({} failed attempts{next}): {error}",
                b.failed_attempts
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nlinks:");
    if report.links.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for l in &report.links {
        let peer = match (&l.peer_name, &l.peer_address) {
            (Some(n), Some(a)) => format!("{n} [{a}]"),
            _ => "-".to_owned(),
        };
        let rtt = l
            .rtt_ms
            .map(|r| format!(" rtt {r:.1}ms"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  link{} {} ({}) {} -> {}  {}  cost {:.2} mtu {}{}  in {} B out {} B",
            l.link,
            l.backend,
            l.kind,
            l.remote,
            peer,
            l.state,
            l.cost,
            l.mtu,
            rtt,
            l.bytes_in,
            l.bytes_out
        );
    }
    let _ = writeln!(out, "\nroutes:");
    for r in &report.routes {
        let hop = r.next_hop.as_deref().unwrap_or("");
        let cost = r.cost.map(|c| format!(" cost {c:.2}")).unwrap_or_default();
        let _ = writeln!(out, "  {:<24} via {} {}{}", r.prefix, r.via, hop, cost);
    }
    let _ = writeln!(out, "\nnodes:");
    for n in &report.nodes {
        let adj: Vec<String> = n
            .adjacencies
            .iter()
            .map(|(peer, cost)| format!("{peer} ({cost:.2})"))
            .collect();
        let cost = n
            .cost
            .map_or("unreachable".to_owned(), |c| format!("cost {c:.2}"));
        let _ = writeln!(
            out,
            "  {} [{}] {}  epoch {} seq {}  age {:.0}s  --> {}",
            n.name,
            n.address,
            cost,
            n.epoch,
            n.sequence,
            n.age_secs,
            adj.join(", ")
        );
    }
    let _ = writeln!(out, "\nnames (dns {}):", report.dns);
    for n in &report.names {
        let _ = writeln!(out, "  {:<20} {:<28} from {}", n.name, n.address, n.owner);
    }
    for conflict in &report.name_conflicts {
        let _ = writeln!(out, "  CONFLICT: {conflict}");
    }
    let drops: Vec<String> = report
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\ndrops: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    );
    out
}
