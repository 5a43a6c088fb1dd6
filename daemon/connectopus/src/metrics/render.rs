//! The status report in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use crate::control::StatusReport;

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the exposition text one metric family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// One family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

/// Counters of the status report's `counters` map, by key prefix: (prefix, metric, label,
/// help).
const LABELLED_COUNTERS: &[(&str, &str, &str, &str)] = &[
    (
        "updates_rejected_",
        "connectopus_routing_updates_rejected_total",
        "reason",
        "Link-state updates received and not accepted, by reason.",
    ),
    (
        "hellos_rejected_",
        "connectopus_hellos_rejected_total",
        "reason",
        "Hellos refused, by reason.",
    ),
    (
        "malformed_messages_",
        "connectopus_malformed_messages_total",
        "error",
        "Link messages that did not parse, by error.",
    ),
    (
        "lease_messages_",
        "connectopus_lease_messages_total",
        "what",
        "Lease messages and outcomes (joins, grants, renewals, releases, refusals), by kind.",
    ),
];

/// Counters of the status report's `counters` map taken one to one: (key, metric, help).
const PLAIN_COUNTERS: &[(&str, &str, &str)] = &[
    (
        "updates_accepted",
        "connectopus_routing_updates_received_total",
        "Link-state updates received and accepted.",
    ),
    (
        "updates_originated",
        "connectopus_routing_updates_originated_total",
        "Link-state updates this node originated and sent to its neighbours.",
    ),
    (
        "spf_runs",
        "connectopus_spf_runs_total",
        "Route computations (SPF) run.",
    ),
    (
        "icmp_errors_sent",
        "connectopus_icmp_errors_sent_total",
        "ICMPv6 errors sent.",
    ),
    (
        "tun_super_packets_read",
        "connectopus_offload_tun_super_packets_read_total",
        "TUN reads that held a TCP or UDP super-packet (TSO/USO).",
    ),
    (
        "tun_super_packets_written",
        "connectopus_offload_tun_super_packets_written_total",
        "TUN writes of a super-packet merged from two or more segments.",
    ),
    (
        "udp_gso_sends",
        "connectopus_offload_udp_gso_sends_total",
        "UDP sends that carried two or more DTLS records (GSO).",
    ),
    (
        "udp_gro_batches",
        "connectopus_offload_udp_gro_batches_total",
        "UDP receives that carried two or more DTLS records (GRO).",
    ),
    (
        "code_pages_unmapped_bytes",
        "connectopus_code_pages_unmapped_bytes_total",
        "Resident bytes of code and read-only data given back after start-up and reconfigurations (they fault back in from the page cache when they run again).",
    ),
    (
        "tcp_reads_deferred",
        "connectopus_tcp_reads_deferred_total",
        "Times a TCP link began to wait for a read until buffers came back (back-pressure).",
    ),
    (
        "dtls_hellos_rate_limited",
        "connectopus_dtls_hellos_rate_limited_total",
        "ClientHellos from unknown addresses refused by the limiter before anything was allocated.",
    ),
    (
        "dtls_hellos_looked_at",
        "connectopus_dtls_hellos_looked_at_total",
        "ClientHellos from unknown addresses handed to OpenSSL.",
    ),
    (
        "dtls_handshakes_without_dhe",
        "connectopus_dtls_handshakes_without_dhe_total",
        "DTLS handshakes given the X25519 suite because their prefix's or the node's DHE budget was spent.",
    ),
    (
        "dtls_hello_filter_engaged",
        "connectopus_dtls_hello_filter_engaged_total",
        "ClientHello floods that put the kernel filter on the DTLS listeners.",
    ),
    (
        "dtls_listener_kernel_drops",
        "connectopus_dtls_listener_kernel_drops_total",
        "Datagrams the kernel dropped on the DTLS listener sockets (the hello filter, full buffers).",
    ),
];

/// Renders a status report as Prometheus text; `now_unix` is the wall clock, for session
/// uptimes.
pub fn render(report: &StatusReport, now_unix: f64) -> String {
    let mut x = Exposition {
        out: String::with_capacity(8 * 1024),
    };
    x.family(
        "connectopus_build_info",
        "gauge",
        "The running binary's version (always 1).",
    );
    x.sample(
        "connectopus_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    x.family(
        "connectopus_node_info",
        "gauge",
        "This node's name and mesh address (always 1).",
    );
    x.sample(
        "connectopus_node_info",
        &[("node", &report.name), ("address", &report.address)],
        1.0,
    );
    x.single(
        "connectopus_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        report.uptime_secs,
    );
    x.single(
        "connectopus_config_version",
        "gauge",
        "Version of the mesh configuration the node runs.",
        report.config_version as f64,
    );
    x.single(
        "connectopus_forwarding",
        "gauge",
        "1 while the node forwards, 0 once the running configuration no longer contains it.",
        if report.removed.is_some() { 0.0 } else { 1.0 },
    );
    x.family(
        "connectopus_dataplane_info",
        "gauge",
        "The packet I/O backend in use (always 1).",
    );
    x.sample(
        "connectopus_dataplane_info",
        &[("mode", &report.dataplane)],
        1.0,
    );
    x.family(
        "connectopus_offload_enabled",
        "gauge",
        "1 when a dataplane offload is on, 0 when it is off.",
    );
    // "on", "on (csum, tso4, ...)", or "off: <why>".
    let on = |state: &str| {
        if state == "on" || state.starts_with("on ") {
            1.0
        } else {
            0.0
        }
    };
    for (device, state) in &report.offload.tun {
        x.sample(
            "connectopus_offload_enabled",
            &[("offload", "tun"), ("device", device)],
            on(state),
        );
    }
    x.sample(
        "connectopus_offload_enabled",
        &[("offload", "udp_gso"), ("device", "")],
        on(&report.offload.udp_gso),
    );
    x.sample(
        "connectopus_offload_enabled",
        &[("offload", "udp_gro"), ("device", "")],
        on(&report.offload.udp_gro),
    );

    x.family(
        "connectopus_backend_up",
        "gauge",
        "1 when a configured backend runs, 0 while it is retried after a failed start.",
    );
    for b in &report.backends {
        x.sample(
            "connectopus_backend_up",
            &[("backend", &b.name), ("type", &b.kind)],
            if b.state == "up" { 1.0 } else { 0.0 },
        );
    }

    links(&mut x, report, now_unix);

    x.single(
        "connectopus_routes",
        "gauge",
        "Entries in the forwarding table.",
        report.routes.len() as f64,
    );
    x.single(
        "connectopus_known_nodes",
        "gauge",
        "Nodes in the link-state database, this one included.",
        report.nodes.len() as f64,
    );
    x.single(
        "connectopus_reachable_nodes",
        "gauge",
        "Nodes with a path from this one, this one included.",
        report.nodes.iter().filter(|n| n.cost.is_some()).count() as f64,
    );
    x.single(
        "connectopus_names",
        "gauge",
        "Names the mesh resolves.",
        report.names.len() as f64,
    );
    x.single(
        "connectopus_spf_duration_seconds_total",
        "counter",
        "Seconds spent in the loop turns that ran a route computation (an upper bound of the SPF time).",
        report.spf_seconds_total,
    );

    x.family(
        "connectopus_packets_dropped_total",
        "counter",
        "Packets the node dropped, by reason.",
    );
    for (reason, n) in &report.drops {
        x.sample(
            "connectopus_packets_dropped_total",
            &[("reason", reason)],
            *n as f64,
        );
    }

    for (key, name, help) in PLAIN_COUNTERS {
        x.single(
            name,
            "counter",
            help,
            report.counters.get(*key).copied().unwrap_or(0) as f64,
        );
    }
    for (prefix, name, label, help) in LABELLED_COUNTERS {
        x.family(name, "counter", help);
        for (key, n) in &report.counters {
            if let Some(value) = key.strip_prefix(prefix) {
                x.sample(name, &[(label, value)], *n as f64);
            }
        }
    }
    if let Some(lease) = &report.lease {
        if let Some(n) = lease.leases {
            x.single(
                "connectopus_leases_active",
                "gauge",
                "Active leases in this issuer's table.",
                n as f64,
            );
        }
        if lease.pool.is_none() {
            x.single(
                "connectopus_lease_bound",
                "gauge",
                "1 while this ephemeral node holds a leased address, else 0.",
                f64::from(u8::from(lease.address.is_some())),
            );
        }
        x.single(
            "connectopus_lease_tables_written_total",
            "counter",
            "Lease tables written to <config>.leases.",
            lease.tables_written as f64,
        );
        x.single(
            "connectopus_lease_table_write_errors_total",
            "counter",
            "Lease tables that could not be written (their grants wait).",
            lease.table_write_errors as f64,
        );
    }

    if !report.mesh_prefixes.is_empty() {
        x.family(
            "connectopus_mesh_prefix_info",
            "gauge",
            "1 for each mesh prefix plane the node holds (DHCPv6-PD), by plane, delegated prefix and state.",
        );
        for plane in &report.mesh_prefixes {
            x.sample(
                "connectopus_mesh_prefix_info",
                &[
                    ("prefix", &plane.prefix),
                    ("delegated", &plane.delegated),
                    ("state", &plane.state),
                ],
                1.0,
            );
        }
        x.family(
            "connectopus_mesh_prefix_valid_seconds",
            "gauge",
            "Seconds until a mesh prefix plane is withdrawn, by this node's clock.",
        );
        for plane in &report.mesh_prefixes {
            x.sample(
                "connectopus_mesh_prefix_valid_seconds",
                &[("prefix", &plane.prefix)],
                plane.valid_for_secs,
            );
        }
    }

    x.family(
        "connectopus_fastpath_userspace_packets_total",
        "counter",
        "Packets the eBPF fast path left to userspace, by reason (ebpf/README.md, Counters).",
    );
    for (reason, n) in &report.fastpath_fallbacks {
        x.sample(
            "connectopus_fastpath_userspace_packets_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
    x.family(
        "connectopus_dns_queries_total",
        "counter",
        "DNS queries the node's server handled, by result (dropped: no response).",
    );
    for (result, n) in &report.dns_queries {
        x.sample(
            "connectopus_dns_queries_total",
            &[("result", result)],
            *n as f64,
        );
    }
    x.out
}

/// Per-link families.
fn links(x: &mut Exposition, report: &StatusReport, now_unix: f64) {
    type Field = fn(&crate::control::LinkReport) -> Option<f64>;
    let families: [(&str, &str, &str, Field); 10] = [
        (
            "connectopus_link_receive_bytes_total",
            "counter",
            "Bytes received on a link's session.",
            |l| Some(l.bytes_in as f64),
        ),
        (
            "connectopus_link_transmit_bytes_total",
            "counter",
            "Bytes sent on a link's session.",
            |l| Some(l.bytes_out as f64),
        ),
        (
            "connectopus_link_receive_packets_total",
            "counter",
            "Messages (data packets and routing messages) received on a link's session.",
            |l| Some(l.packets_in as f64),
        ),
        (
            "connectopus_link_transmit_packets_total",
            "counter",
            "Messages (data packets and routing messages) sent on a link's session.",
            |l| Some(l.packets_out as f64),
        ),
        (
            "connectopus_link_rtt_seconds",
            "gauge",
            "Latest round-trip time measured on a link's session.",
            |l| l.rtt_ms.map(|ms| ms / 1000.0),
        ),
        (
            "connectopus_link_cost",
            "gauge",
            "A link's routing cost.",
            |l| Some(l.cost),
        ),
        (
            "connectopus_link_mtu_bytes",
            "gauge",
            "A link's MTU.",
            |l| Some(f64::from(l.mtu)),
        ),
        (
            "connectopus_link_fastpath_active",
            "gauge",
            "1 when the eBPF fast path carries a plaintext udp link, 0 otherwise.",
            |l| l.fastpath.as_ref().map(|f| f64::from(u8::from(f.active))),
        ),
        (
            "connectopus_link_fastpath_packets_total",
            "counter",
            "Packets the eBPF fast path carried on a plaintext udp link (both directions).",
            |l| l.fastpath.as_ref().map(|f| f.packets as f64),
        ),
        (
            "connectopus_link_fastpath_bytes_total",
            "counter",
            "Bytes (inner IPv6 packets) the eBPF fast path carried on a plaintext udp link.",
            |l| l.fastpath.as_ref().map(|f| f.bytes as f64),
        ),
    ];
    let labels = |l: &crate::control::LinkReport| -> [(String, String); 4] {
        [
            ("link".to_owned(), l.link.to_string()),
            ("backend".to_owned(), l.backend.clone()),
            ("type".to_owned(), l.kind.clone()),
            ("peer".to_owned(), l.peer_name.clone().unwrap_or_default()),
        ]
    };
    let sample = |x: &mut Exposition, name: &str, l, extra: &[(&str, &str)], value: f64| {
        let owned = labels(l);
        let mut all: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(extra);
        x.sample(name, &all, value);
    };
    for (name, kind, help, field) in families {
        x.family(name, kind, help);
        for l in &report.links {
            if let Some(value) = field(l) {
                sample(x, name, l, &[], value);
            }
        }
    }
    x.family(
        "connectopus_link_session_established",
        "gauge",
        "1 when a link's session is established, 0 otherwise; state names the session or transport state.",
    );
    for l in &report.links {
        let up = if l.state == "established" { 1.0 } else { 0.0 };
        sample(
            x,
            "connectopus_link_session_established",
            l,
            &[("state", &l.state)],
            up,
        );
    }
    x.family(
        "connectopus_link_session_uptime_seconds",
        "gauge",
        "Seconds since a link's session was established.",
    );
    for l in &report.links {
        if let Some(since) = l.since_unix {
            sample(
                x,
                "connectopus_link_session_uptime_seconds",
                l,
                &[],
                (now_unix - since).max(0.0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "name": "foo", "address": "fd00::1", "subnet": "fd00::/64", "domain": "mesh.test",
            "epoch": 1, "sequence": 1, "uptime_secs": 5.0, "config_version": 3, "removed": null,
            "names": [], "name_conflicts": [], "dns": "off", "tun": "cx-foo",
            "dataplane": "io_uring", "dataplane_fallback_reason": null, "ebpf": "off",
            "links": [{
                "link": 7, "backend": "we\"ird\\b\nx", "kind": "dtls dialer",
                "remote": "[2001:db8::2]:4444", "state": "established",
                "peer_address": "fd00::2", "peer_name": "bar", "since_unix": 100.0,
                "rtt_ms": 2.5, "cost": 1.0, "mtu": 1400, "bytes_in": 10, "bytes_out": 20,
                "packets_in": 1, "packets_out": 2
            }],
            "routes": [], "nodes": [], "drops": {"no_route": 4}, "counters": {
                "spf_runs": 3, "updates_rejected_stale": 2
            },
            "dns_queries": {"noerror": 5},
            "mesh_prefixes": [{"prefix": "2001:db8:100::/64", "delegated": "2001:db8:100::/56",
                "origin": "fd00::9", "origin_name": "gw", "state": "deprecated",
                "valid_for_secs": 3.5, "mirror": "2001:db8:100::1"}],
            "offload": {"tun": {"cx-foo": "on (csum, tso4)"}, "udp_gso": "on", "udp_gro": "off: old kernel"}
        }))
        .unwrap()
    }

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let text = render(&report(), 160.0);
        assert!(text.contains(
            "connectopus_link_receive_bytes_total{link=\"7\",backend=\"we\\\"ird\\\\b\\nx\",type=\"dtls dialer\",peer=\"bar\"} 10\n"
        ));
        assert!(text.contains("connectopus_link_rtt_seconds{link=\"7\""));
        assert!(text.contains("} 0.0025\n"));
        assert!(text.contains("connectopus_link_session_uptime_seconds{link=\"7\""));
        assert!(text.contains("} 60\n"));
        assert!(text.contains("connectopus_packets_dropped_total{reason=\"no_route\"} 4\n"));
        assert!(text.contains("connectopus_spf_runs_total 3\n"));
        assert!(text.contains("connectopus_routing_updates_rejected_total{reason=\"stale\"} 2\n"));
        assert!(text.contains("connectopus_dns_queries_total{result=\"noerror\"} 5\n"));
        assert!(text.contains("connectopus_config_version 3\n"));
        assert!(text.contains(
            "connectopus_mesh_prefix_info{prefix=\"2001:db8:100::/64\",delegated=\"2001:db8:100::/56\",state=\"deprecated\"} 1\n"
        ));
        assert!(
            text.contains(
                "connectopus_mesh_prefix_valid_seconds{prefix=\"2001:db8:100::/64\"} 3.5\n"
            )
        );
        assert!(
            text.contains("connectopus_offload_enabled{offload=\"tun\",device=\"cx-foo\"} 1\n")
        );
        assert!(text.contains("connectopus_offload_enabled{offload=\"udp_gso\",device=\"\"} 1\n"));
        assert!(text.contains("connectopus_offload_enabled{offload=\"udp_gro\",device=\"\"} 0\n"));
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap();
                assert!(typed.insert(name.to_owned()), "{name} typed twice");
                if parts.next() == Some("counter") {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE before it");
            }
        }
    }
}
