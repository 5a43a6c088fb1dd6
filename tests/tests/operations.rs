//! Operating a running node: Prometheus `/metrics`, the run-time log level, and the
//! diagnostics `ping`, `traceroute`, `status --check` and `reload`, on a foo—bar—baz line of
//! real nodes in network namespaces.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, iperf3_client, iperf3_server,
    poll_until, require_root, require_tools, run_test, run_with_timeout, ssh_sign, wait_until,
    workspace_binary,
};

const CONVERGE: Duration = Duration::from_secs(20);
const METRICS: &str = "[::1]:9469";

/// Runs `connectopus ARGS` inside `ns` and returns its output, whatever its exit status.
fn cli(ns: &NetNs, args: &[&str], timeout: Duration) -> Result<Output> {
    let binary = workspace_binary("connectopus")?.display().to_string();
    let command = ns.command(&binary, args)?;
    run_with_timeout(command, timeout)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Fetches `/metrics` of the node in `ns`.
fn scrape(ns: &NetNs) -> Result<String> {
    ns.exec_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-g",
            &format!("http://{METRICS}/metrics"),
        ],
    )
}

/// The value of the first sample of `family` whose labels contain `label`.
fn sample(metrics: &str, family: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_count_an_iperf3_run_and_the_log_level_changes_at_run_time() {
    require_root!();
    require_tools(&["curl", "promtool", "iperf3"]);
    run_test("metrics_and_log_level", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
            &[(
                "bar",
                &format!("    metrics:\n      listen: \"{METRICS}\"\n"),
            )],
        )?;
        mesh.set_log_level("info");
        // foo has no metrics key: the command line turns them on.
        mesh.add_args("foo", &["--metrics-listen", METRICS]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let bar = topo.ns("bar");

        // The node renders its metrics at most once a second: wait for a rendering made
        // after the link to baz came up, not just for the routes.
        let to_baz = "peer=\"baz\"";
        let before = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
            scrape(bar)
                .ok()
                .filter(|m| sample(m, "connectopus_link_transmit_bytes_total", to_baz).is_some())
        })
        .context("no link to baz in the metrics")?;
        check_with_promtool(dir, &before)?;
        for family in [
            "connectopus_link_receive_bytes_total",
            "connectopus_link_rtt_seconds",
            "connectopus_link_session_established",
            "connectopus_packets_dropped_total",
            "connectopus_spf_runs_total",
            "connectopus_dns_queries_total",
            "connectopus_dataplane_info",
            "connectopus_offload_enabled",
            "connectopus_config_version",
        ] {
            ensure!(
                before.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{before}"
            );
        }
        let sent_before = sample(&before, "connectopus_link_transmit_bytes_total", to_baz)
            .context("no link to baz in the metrics")?;

        let baz_addr = mesh.address("baz");
        let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz_addr)), 5201)?;
        let result = iperf3_client(topo.ns("foo"), baz_addr, &IperfOptions::default())?;
        drop(server);
        let moved = result.bits_per_second() * 2.0 / 8.0;
        ensure!(
            moved > 1e6,
            "iperf3 foo -> baz moved too little: {result:?}"
        );
        // The loop publishes once a second: wait for the snapshot that saw the run.
        let mut after = String::new();
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            after = scrape(bar).unwrap_or_default();
            sample(&after, "connectopus_link_transmit_bytes_total", to_baz)
                .is_some_and(|sent| sent - sent_before > moved / 2.0)
        })
        .with_context(|| format!("bar's bytes to baz did not grow by {moved} B:\n{after}"))?;
        ensure!(
            sample(
                &after,
                "connectopus_link_receive_bytes_total",
                "peer=\"foo\""
            )
            .is_some_and(|got| got > moved / 2.0),
            "bar's bytes from foo did not grow:\n{after}"
        );
        check_with_promtool(dir, &after)?;

        let foo_metrics = scrape(topo.ns("foo"))?;
        ensure!(
            foo_metrics.contains("connectopus_node_info{node=\"foo\""),
            "{foo_metrics}"
        );
        check_with_promtool(dir, &foo_metrics)?;

        log_level_changes_what_is_logged(&mesh, &topo)
    });
}

/// `promtool check metrics` on `text` (it lints names, units, HELP and TYPE too).
fn check_with_promtool(dir: &TestDir, text: &str) -> Result<()> {
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text)?;
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "promtool check metrics < '{}' 2>&1",
        file.display()
    ));
    let output = run_with_timeout(command, Duration::from_secs(30))?;
    ensure!(
        output.status.success() && output.stdout.is_empty(),
        "promtool check metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(())
}

/// At `info`, accepting a TCP connection (a debug line) is not logged; after
/// `connectopus log-level debug` it is, and after `log-level info` again it is not.
fn log_level_changes_what_is_logged(mesh: &Mesh, topo: &Topology) -> Result<()> {
    let bar = topo.ns("bar");
    let log = || mesh.process("bar").map(|p| p.stderr()).unwrap_or_default();
    let count = |needle: &str| log().matches(needle).count();
    // Port 4001 is bar's TCP listener facing baz (the second link); a connection that never
    // says hello is accepted and becomes a link ("link up" at info).
    let listener = format!("[{}]:4001", topo.link_addr("bar", "baz"));
    let knock = || -> Result<()> {
        let links = count("link up");
        let url = format!("http://{listener}/");
        let _ = topo
            .ns("baz")
            .exec("curl", &["-sS", "--max-time", "1", "-g", &url]);
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            count("link up") > links
        })
        .context("bar did not take the connection")
    };
    let socket = mesh.socket("bar").display().to_string();
    let set = |level: &str| -> Result<String> {
        let output = cli(
            bar,
            &["log-level", "--socket", &socket, level],
            Duration::from_secs(10),
        )?;
        ensure!(
            output.status.success(),
            "log-level {level}: {}",
            text(&output)
        );
        Ok(text(&output))
    };

    knock()?;
    ensure!(count(": accepted ") == 0, "debug line at info:\n{}", log());
    let said = set("debug")?;
    ensure!(said.trim() == "log level debug", "{said}");
    knock()?;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        count(": accepted ") >= 1
    })
    .with_context(|| format!("no debug line after log-level debug:\n{}", log()))?;
    set("Warning")?;
    set("info")?;
    let seen = count(": accepted ");
    knock()?;
    ensure!(
        count(": accepted ") == seen,
        "debug line after info:\n{}",
        log()
    );
    let refused = cli(
        bar,
        &["log-level", "--socket", &socket, "verbose"],
        Duration::from_secs(10),
    )?;
    ensure!(!refused.status.success(), "{}", text(&refused));
    Ok(())
}

#[test]
fn ping_traceroute_status_check_and_reload_through_the_mesh() {
    require_root!();
    run_test("diagnostics", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::Tcp),
            ],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let foo_ns = topo.ns("foo");
        let foo_socket = mesh.socket("foo").display().to_string();
        let baz_addr = mesh.address("baz").to_string();

        // ping: by name, resolved with foo's name table, from foo's host through the mesh.
        let output = cli(
            foo_ns,
            &[
                "ping",
                "baz",
                "--socket",
                &foo_socket,
                "-c",
                "3",
                "-i",
                "0.2",
            ],
            Duration::from_secs(20),
        )?;
        let said = text(&output);
        eprintln!("{said}");
        ensure!(output.status.success(), "ping baz: {said}");
        ensure!(
            said.matches(&format!("from baz ({baz_addr}): icmp_seq="))
                .count()
                == 3
                && said.matches(" time=").count() == 3,
            "ping baz should print three RTTs: {said}"
        );
        ensure!(
            said.contains("3 packets transmitted, 3 received, 0% packet loss")
                && said.contains("rtt min/avg/max = "),
            "ping summary: {said}"
        );
        // An address works too, and an unknown name is a clear error.
        let output = cli(
            foo_ns,
            &["ping", &baz_addr, "-c", "1"],
            Duration::from_secs(20),
        )?;
        ensure!(
            output.status.success(),
            "ping {baz_addr}: {}",
            text(&output)
        );
        let output = cli(
            foo_ns,
            &["ping", "qux", "--socket", &foo_socket, "-c", "1"],
            Duration::from_secs(20),
        )?;
        ensure!(
            !output.status.success() && text(&output).contains("no node or name \"qux\""),
            "{}",
            text(&output)
        );

        // traceroute: bar, then baz, each named.
        let output = cli(
            foo_ns,
            &[
                "traceroute",
                "baz.connectopus.test",
                "--socket",
                &foo_socket,
            ],
            Duration::from_secs(60),
        )?;
        let said = text(&output);
        eprintln!("{said}");
        ensure!(output.status.success(), "traceroute baz: {said}");
        let hops: Vec<&str> = said.lines().skip(1).collect();
        let bar_addr = mesh.address("bar").to_string();
        ensure!(
            hops.len() == 2
                && hops[0].starts_with(" 1  bar (")
                && hops[0].contains(&bar_addr)
                && hops[0].matches(" ms").count() == 3
                && hops[1].starts_with(" 2  baz (")
                && hops[1].matches(" ms").count() == 3,
            "traceroute should show bar then baz: {said}"
        );

        status_check_follows_baz_link(&mesh, &topo)?;
        reload_reports_its_outcome(&mesh, &topo)
    });
}

/// `status --check` on baz: 0 while its only link has a session, non-zero with a line
/// naming the backend while the link is cut, 0 again once it is back.
fn status_check_follows_baz_link(mesh: &Mesh, topo: &Topology) -> Result<()> {
    let baz_ns = topo.ns("baz");
    let socket = mesh.socket("baz").display().to_string();
    let check = || {
        cli(
            baz_ns,
            &["status", "--check", "--socket", &socket],
            Duration::from_secs(10),
        )
    };
    let output = check()?;
    ensure!(output.status.success(), "healthy baz: {}", text(&output));

    let link = &topo.link("bar", "baz").veth;
    link.set_up(false)?;
    let mut last = String::new();
    wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        check().is_ok_and(|o| {
            last = text(&o);
            !o.status.success()
        })
    })
    .with_context(|| format!("status --check stayed healthy with the link cut: {last}"))?;
    ensure!(
        last.lines().count() == 1 && last.starts_with("backend d1 (tcp-dialer) has no session"),
        "one line naming the backend: {last}"
    );

    link.set_up(true)?;
    wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        check().is_ok_and(|o| {
            last = text(&o);
            o.status.success()
        })
    })
    .with_context(|| format!("status --check did not recover: {last}"))?;

    // A node that does not run fails the check too.
    let gone = dir_socket(mesh, "nobody");
    let output = cli(
        baz_ns,
        &["status", "--check", "--socket", &gone],
        Duration::from_secs(10),
    )?;
    ensure!(
        !output.status.success() && text(&output).starts_with("the node is not running"),
        "{}",
        text(&output)
    );
    Ok(())
}

fn dir_socket(mesh: &Mesh, node: &str) -> String {
    mesh.socket(node).display().to_string()
}

/// `connectopus reload` on baz: unchanged, then a signed edit (a backend cost) applied with
/// the change listed, then a tampered file refused with the reason.
fn reload_reports_its_outcome(mesh: &Mesh, topo: &Topology) -> Result<()> {
    let baz_ns = topo.ns("baz");
    let socket = mesh.socket("baz").display().to_string();
    let reload = || {
        cli(
            baz_ns,
            &["reload", "--socket", &socket],
            Duration::from_secs(30),
        )
    };

    let output = reload()?;
    ensure!(
        output.status.success() && text(&output).starts_with("unchanged:"),
        "{}",
        text(&output)
    );

    let file = mesh.node_config_path("baz");
    let yaml = std::fs::read_to_string(&file)?;
    let edited = yaml
        .replacen("  version: 1\n", "  version: 2\n", 1)
        .replacen(
            "      d1:\n        type: tcp-dialer\n        peer: ",
            "      d1:\n        type: tcp-dialer\n        cost: 3\n        peer: ",
            1,
        );
    // The dialer's own `cost: 1` line comes after `peer`; drop it so `cost: 3` stands.
    let edited = remove_after(&edited, "        cost: 3\n", "        cost: 1\n");
    ensure!(edited != yaml, "the edit did not apply to:\n{yaml}");
    std::fs::write(&file, &edited)?;
    ssh_sign(&file, mesh.admin_key(), "connectopus")?;
    let output = reload()?;
    let said = text(&output);
    eprintln!("{said}");
    ensure!(output.status.success(), "{said}");
    // baz offers it to its neighbour first and applies it once bar has it.
    ensure!(
        said.starts_with("accepted configuration version 2")
            && said.contains("  global.version 1 -> 2")
            && said.contains("  nodes.baz.backends.d1 changed (cost 1 -> 3)"),
        "{said}"
    );
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        mesh.config_version("baz").is_ok_and(|v| v == 2)
    })
    .context("baz should run version 2")?;

    std::fs::write(&file, edited.replacen("version: 2", "version: 3", 1))?;
    let output = reload()?;
    let said = text(&output);
    ensure!(
        !output.status.success() && said.starts_with("refused: ") && said.contains("signature"),
        "{said}"
    );
    ensure!(
        mesh.config_version("baz")? == 2,
        "a refusal changes nothing"
    );
    Ok(())
}

/// Removes the first `needle` that follows `marker` in `text`.
fn remove_after(text: &str, marker: &str, needle: &str) -> String {
    let Some(at) = text.find(marker) else {
        return text.to_owned();
    };
    let start = at + marker.len();
    match text[start..].find(needle) {
        Some(i) => format!(
            "{}{}",
            &text[..start + i],
            &text[start + i + needle.len()..]
        ),
        None => text.to_owned(),
    }
}
