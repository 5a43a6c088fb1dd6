//! Human-readable rendering of a node's status report.

use std::fmt::Write;

use crate::control::StatusReport;

/// Renders the report the way `connectopus status` prints it; `verbose` shows authorized keys
/// in full.
pub fn render(report: &StatusReport, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} [{}]  domain {}  subnet {}  up {:.0}s",
        report.name, report.address, report.domain, report.subnet, report.uptime_secs
    );
    let _ = writeln!(out, "config version {}", report.config_version);
    if let Some(lease) = &report.lease {
        let _ = writeln!(out, "{}", render_lease(lease));
    }
    for plane in &report.mesh_prefixes {
        let _ = writeln!(out, "{}", render_mesh_prefix(plane));
    }
    let _ = writeln!(out, "authorized keys:");
    if report.authorized_keys.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for key in &report.authorized_keys {
        if verbose {
            let _ = writeln!(out, "  {key}");
        } else {
            let _ = writeln!(out, "  {}", abbreviate_key(key));
        }
    }
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
    if !report.fastpath.is_empty() {
        let _ = writeln!(out, "fastpath {}", report.fastpath);
    }
    let fallbacks: Vec<String> = report
        .fastpath_fallbacks
        .iter()
        .filter(|(_, n)| verbose && **n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !fallbacks.is_empty() {
        let _ = writeln!(out, "fastpath to userspace: {}", fallbacks.join(", "));
    }
    let caps = if report.capabilities.is_empty() {
        "none".to_owned()
    } else {
        report.capabilities.join(",")
    };
    let _ = writeln!(
        out,
        "privileges: capabilities {caps}  no_new_privs {}  seccomp {}",
        if report.no_new_privs { "on" } else { "off" },
        report.seccomp
    );
    for (tun, state) in &report.offload.tun {
        let _ = writeln!(out, "offload {tun}: {state}");
    }
    let _ = writeln!(
        out,
        "offload udp gso: {}  udp gro: {}",
        report.offload.udp_gso, report.offload.udp_gro
    );
    if !report.workers.is_empty() {
        let _ = writeln!(
            out,
            "workers: {} on {} core{}",
            report.workers.len(),
            report.cores,
            if report.cores == 1 { "" } else { "s" }
        );
        if !report.idle_wake.is_empty() {
            let _ = writeln!(out, "  idle wake-ups: {}", report.idle_wake);
        }
        if !report.cpu_local.is_empty() {
            let _ = writeln!(out, "  cpu-local: {}", report.cpu_local);
        }
    }
    for w in &report.workers {
        let _ = writeln!(
            out,
            "  worker {} ({}){}: io_uring {}; tun multi-queue {}; udp gso {}; udp gro {}; \
             so_reuseport {}; idle wake {}{}{}",
            w.index,
            w.thread,
            if w.state.is_empty() || w.state == "running" {
                String::new()
            } else {
                format!(" {}", w.state)
            },
            w.io_uring,
            w.tun_multi_queue,
            w.udp_gso,
            w.udp_gro,
            w.udp_reuseport,
            match w.idle_wake_us {
                0 => "off".to_owned(),
                us => format!("{us} µs"),
            },
            match w.busy_poll_us {
                0 => String::new(),
                us => format!("; busy poll {us} µs"),
            },
            // Pinned, or why not when it was asked for (`cpu-local` above).
            if w.cpu.is_empty() || w.cpu == "not pinned" {
                String::new()
            } else {
                format!("; {}", w.cpu)
            }
        );
    }
    if let Some(c) = &report.control_plane {
        let _ = writeln!(
            out,
            "  control plane ({}, thread {}): slow path only; receives {} link{}, holds {} tcp \
             link{}, {} TUN reads",
            c.thread,
            c.thread_id,
            c.receive_links,
            if c.receive_links == 1 { "" } else { "s" },
            c.tcp_links,
            if c.tcp_links == 1 { "" } else { "s" },
            c.tun_reads
        );
    }
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
        let since = l
            .since_unix
            .map(|t| format!("  since {}", utc(t)))
            .unwrap_or_default();
        let epochs = l
            .dtls_epochs
            .map(|[tx, rx]| format!("  epoch tx {tx} rx {rx}"))
            .unwrap_or_default();
        let cipher = l
            .dtls_cipher
            .as_deref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let fastpath = match &l.fastpath {
            Some(f) if f.active => {
                format!("  fastpath on {} pkts {} B", f.packets, f.bytes)
            }
            Some(f) => format!(
                "  fastpath off ({})",
                f.reason.as_deref().unwrap_or("not set up")
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  link{} {} ({}) {} -> {}  {}{}  cost {:.2} mtu {}{}  in {} B out {} B{}{}{}",
            l.link,
            l.backend,
            l.kind,
            l.remote,
            peer,
            l.state,
            since,
            l.cost,
            l.mtu,
            rtt,
            l.bytes_in,
            l.bytes_out,
            epochs,
            cipher,
            fastpath
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
    render_attachments(&mut out, report);
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

/// The namespaces and services sections, when the node has any.
/// `mesh prefix 2001:db8:100::/64 from gw (delegated 2001:db8:100::/56), active, valid 38s,
/// mirror 2001:db8:100::3`.
fn render_mesh_prefix(plane: &crate::control::MeshPrefixReport) -> String {
    let mut line = format!(
        "mesh prefix {} from {} (delegated {}), {}, valid {:.0}s",
        plane.prefix,
        plane.origin_name.as_deref().unwrap_or(&plane.origin),
        plane.delegated,
        plane.state,
        plane.valid_for_secs
    );
    if let Some(mirror) = &plane.mirror {
        line.push_str(&format!(", mirror {mirror}"));
    }
    line
}

/// `lease fd00:cafe:0:e1::7 from fd00:cafe::1, expires in 52s`, `issuing fd00:cafe:0:e1::/112: 3 leases`.
fn render_lease(lease: &crate::control::LeaseReport) -> String {
    match (&lease.address, &lease.pool) {
        (_, Some(pool)) => format!(
            "issuing {pool}: {} leases ({} tables written, {} write errors)",
            lease.leases.unwrap_or(0),
            lease.tables_written,
            lease.table_write_errors
        ),
        (Some(address), None) => format!(
            "lease {address} from {} ({}), expires in {:.0}s",
            lease.issuer.as_deref().unwrap_or("?"),
            lease.state,
            lease.expires_in_secs.unwrap_or(0.0)
        ),
        (None, None) => format!("lease: {}", lease.state),
    }
}

fn render_attachments(out: &mut String, report: &StatusReport) {
    if !report.namespaces.is_empty() {
        let _ = writeln!(out, "\nnamespaces:");
    }
    for ns in &report.namespaces {
        let address4 = ns
            .address4
            .as_deref()
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        let pid = ns.pid.map(|p| format!("  pid {p}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} [{}{}] {}{}",
            ns.name, ns.address, address4, ns.state, pid
        );
        for svc in &ns.services {
            let pid = svc
                .pid
                .map_or_else(|| "not running".to_owned(), |p| format!("pid {p}"));
            let _ = writeln!(
                out,
                "    service {}: {pid}, {} restarts",
                svc.name, svc.restarts
            );
        }
    }
    if !report.services.is_empty() {
        let _ = writeln!(out, "\nservices:");
    }
    for svc in &report.services {
        let _ = writeln!(
            out,
            "  {} port {} {}  active {}/{}  served {}  refused {}",
            svc.name,
            svc.port,
            if svc.listening {
                "listening"
            } else {
                "not listening"
            },
            svc.active,
            svc.max_connections,
            svc.served,
            svc.refused
        );
    }
}

/// How many trailing characters of a key's base64 an abbreviated key shows: enough to tell
/// keys apart (the leading ones only spell the key type).
const KEY_TAIL: usize = 12;

/// Shortens an authorized_keys line to `type …tail comment`.
fn abbreviate_key(line: &str) -> String {
    let mut fields = line.split_whitespace();
    let (Some(kind), Some(data)) = (fields.next(), fields.next()) else {
        return line.to_owned();
    };
    let comment: Vec<&str> = fields.collect();
    let tail = data
        .char_indices()
        .rev()
        .nth(KEY_TAIL - 1)
        .map_or(data, |(i, _)| &data[i..]);
    let mut short = if tail.len() < data.len() {
        format!("{kind} …{tail}")
    } else {
        format!("{kind} {data}")
    };
    if !comment.is_empty() {
        short.push(' ');
        short.push_str(&comment.join(" "));
    }
    short
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(unix: f64) -> String {
    if !unix.is_finite() || unix < 0.0 {
        return "?".to_owned();
    }
    let secs = unix as u64;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::LinkReport;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@laptop";

    fn report() -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "name": "foo", "address": "fd00::1", "subnet": "fd00::/64", "domain": "mesh.test",
            "authorized_keys": [KEY, "ssh-rsa AAAAB3Nza"],
            "epoch": 1, "sequence": 1, "uptime_secs": 5.0, "config_version": 3, "removed": null,
            "names": [], "name_conflicts": [], "dns": "off", "tun": "cx-foo",
            "dataplane": "uring", "dataplane_fallback_reason": null, "ebpf": "off",
            "links": [], "routes": [], "nodes": [], "drops": {}, "counters": {}
        }))
        .unwrap()
    }

    fn link(since_unix: Option<f64>) -> LinkReport {
        LinkReport {
            link: 1,
            backend: "b1".into(),
            kind: "dtls dialer".into(),
            remote: "[2001:db8::2]:4444".into(),
            state: "established".into(),
            peer_address: Some("fd00::2".into()),
            peer_name: Some("bar".into()),
            since_unix,
            rtt_ms: None,
            cost: 1.0,
            mtu: 1400,
            bytes_in: 0,
            bytes_out: 0,
            packets_in: 0,
            packets_out: 0,
            dtls_epochs: None,
            dtls_cipher: None,
            fastpath: None,
        }
    }

    #[test]
    fn shows_the_fast_path_per_link_and_why_it_is_off() {
        let mut r = report();
        r.fastpath = "off: disabled by CONNECTOPUS_DISABLE_FASTPATH=1".into();
        let mut on = link(None);
        on.fastpath = Some(crate::daemon::LinkFastpathReport {
            active: true,
            packets: 12,
            bytes: 3456,
            reason: None,
        });
        let mut off = link(None);
        off.fastpath = Some(crate::daemon::LinkFastpathReport {
            reason: Some("IPv4 underlay".into()),
            ..Default::default()
        });
        r.links = vec![on, off];
        r.fastpath_fallbacks.insert("eg_miss".into(), 7);
        let text = render(&r, true);
        assert!(text.contains("fastpath off: disabled by CONNECTOPUS_DISABLE_FASTPATH=1"));
        assert!(text.contains("fastpath on 12 pkts 3456 B"), "{text}");
        assert!(text.contains("fastpath off (IPv4 underlay)"), "{text}");
        assert!(text.contains("fastpath to userspace: eg_miss 7"), "{text}");
        assert!(!render(&r, false).contains("eg_miss"));
    }

    #[test]
    fn shows_the_domain_and_abbreviated_keys_or_full_ones_when_verbose() {
        let mut r = report();
        r.links = vec![link(Some(1_796_505_662.9)), link(None)];
        let text = render(&r, false);
        assert!(text.starts_with("node foo [fd00::1]  domain mesh.test  subnet fd00::/64"));
        let data = KEY.split_whitespace().nth(1).unwrap();
        let tail = &data[data.len() - KEY_TAIL..];
        assert!(
            text.contains(&format!("\n  ssh-ed25519 …{tail} admin@laptop\n")),
            "{text}"
        );
        assert!(!text.contains(KEY), "{text}");
        // A key too short to abbreviate is shown as it is.
        assert!(text.contains("\n  ssh-rsa AAAAB3Nza\n"), "{text}");
        let verbose = render(&r, true);
        assert!(verbose.contains(&format!("\n  {KEY}\n")), "{verbose}");
        // Established links say since when; the others do not.
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("link1")).collect();
        assert!(
            lines[0].contains("established  since 2026-12-05 21:21:02 UTC"),
            "{text}"
        );
        assert!(!lines[1].contains("since"), "{text}");
    }

    #[test]
    fn shows_each_worker_and_why_a_feature_is_off() {
        let mut r = report();
        r.cores = 2;
        r.idle_wake = "a wake-up across CPUs costs 25 µs after 3 ms idle, 16 µs after 100 µs: \
                       nothing to keep warm"
            .to_owned();
        r.workers = vec![crate::control::WorkerReport {
            index: 0,
            thread: "main loop".into(),
            thread_id: 100,
            io_uring: "off: CONNECTOPUS_DISABLE_URING=1".into(),
            tun_multi_queue: "off: one worker".into(),
            tun_offload: std::collections::BTreeMap::new(),
            udp_gso: "on".into(),
            udp_gro: "off: kernel said no".into(),
            udp_reuseport: "off: one worker".into(),
            state: "running".into(),
            tun_reads: 0,
            handed_to_main: 0,
            records_opened: 0,
            datagrams_received: 0,
            receive_links: 0,
            received_for_main: 0,
            tcp_links: 0,
            tcp_reads: 0,
            buffers_peak: 0,
            buffers_touched: 0,
            idle_wake_us: 0,
            busy_poll_us: 0,
            cpu: "not pinned".to_owned(),
        }];
        r.workers.push(crate::control::WorkerReport {
            index: 1,
            thread: "worker-1".into(),
            state: "stopped: ring failed".into(),
            idle_wake_us: 200,
            busy_poll_us: 50,
            cpu: "CPU 1".to_owned(),
            ..r.workers[0].clone()
        });
        let text = render(&r, false);
        assert!(text.contains("workers: 2 on 2 cores\n"), "{text}");
        assert!(!text.contains("cpu-local"), "no line while unknown: {text}");
        assert!(
            text.contains("\n  idle wake-ups: a wake-up across CPUs costs 25 µs after 3 ms idle"),
            "{text}"
        );
        assert!(
            text.contains("  worker 1 (worker-1) stopped: ring failed: io_uring off"),
            "{text}"
        );
        assert!(
            text.contains(
                "so_reuseport off: one worker; idle wake 200 µs; busy poll 50 µs; CPU 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  worker 0 (main loop): io_uring off: CONNECTOPUS_DISABLE_URING=1; tun multi-queue off: one worker; udp gso on; udp gro off: kernel said no; so_reuseport off: one worker; idle wake off\n"),
            "{text}"
        );
        assert!(!text.contains("control plane"), "{text}");
        // With worker threads, the main loop is the control plane.
        r.control_plane = Some(crate::control::WorkerReport {
            thread: "main loop (control plane)".into(),
            thread_id: 99,
            receive_links: 1,
            ..r.workers[0].clone()
        });
        let text = render(&r, false);
        assert!(
            text.contains("  control plane (main loop (control plane), thread 99): slow path only; receives 1 link, holds 0 tcp links"),
            "{text}"
        );
        // An older node's report has no workers: nothing to show.
        let text = render(&report(), false);
        assert!(!text.contains("workers"), "{text}");
    }

    #[test]
    fn shows_privileges_and_dtls_epochs() {
        let mut r = report();
        r.capabilities = vec!["cap_net_bind_service".into(), "cap_net_admin".into()];
        r.no_new_privs = true;
        r.seccomp = "on (143 syscalls)".into();
        let mut l = link(Some(1_796_505_662.9));
        l.dtls_epochs = Some([3, 2]);
        l.dtls_cipher = Some("DHE-PSK-AES128-GCM-SHA256".into());
        r.links = vec![l];
        let text = render(&r, false);
        assert!(
            text.contains("privileges: capabilities cap_net_bind_service,cap_net_admin  no_new_privs on  seccomp on (143 syscalls)\n"),
            "{text}"
        );
        assert!(
            text.contains("out 0 B  epoch tx 3 rx 2 DHE-PSK-AES128-GCM-SHA256\n"),
            "{text}"
        );
        // An older node's report has neither.
        let old = report();
        let text = render(&old, false);
        assert!(
            text.contains("privileges: capabilities none  no_new_privs off  seccomp \n"),
            "{text}"
        );
    }

    #[test]
    fn shows_namespaces_with_their_services_and_the_inetd_services() {
        let mut r = report();
        let text = render(&r, false);
        assert!(
            !text.contains("namespaces:") && !text.contains("services:"),
            "{text}"
        );
        r.namespaces = vec![crate::control::NamespaceReport {
            name: "sandbox".into(),
            address: "fd00::1:3".into(),
            address4: Some("198.19.1.3".into()),
            state: "up".into(),
            pid: Some(42),
            services: vec![crate::control::NamespaceServiceReport {
                name: "web".into(),
                pid: Some(43),
                restarts: 1,
            }],
        }];
        r.services = vec![crate::control::ServiceReport {
            name: "echo".into(),
            port: 7,
            listening: true,
            active: 2,
            max_connections: 50,
            served: 9,
            refused: 1,
        }];
        let text = render(&r, false);
        assert!(
            text.contains("sandbox [fd00::1:3 198.19.1.3] up  pid 42"),
            "{text}"
        );
        assert!(text.contains("service web: pid 43, 1 restarts"), "{text}");
        assert!(
            text.contains("echo port 7 listening  active 2/50  served 9  refused 1"),
            "{text}"
        );
    }

    #[test]
    fn dates_are_gregorian_utc() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199.5), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc(4_102_444_800.0), "2100-01-01 00:00:00 UTC");
        assert_eq!(utc(-1.0), "?");
    }

    #[test]
    fn an_older_node_without_the_new_fields_still_renders() {
        let mut value = serde_json::to_value(report()).unwrap();
        let map = value.as_object_mut().unwrap();
        map.remove("domain");
        map.remove("authorized_keys");
        map.remove("backends");
        let old: StatusReport = serde_json::from_value(value).unwrap();
        assert!(render(&old, false).contains("authorized keys:\n  (none)"));
    }
}
