//! Running the node under a service manager: systemd's notification protocol (`Type=notify`)
//! on a test socket, and `--log-format json` for log collectors.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{LinkKind, Mesh, MeshLink, Topology, require_root, run_test, wait_until};

const CONVERGE: Duration = Duration::from_secs(20);

/// Receives notification datagrams until one satisfies `wanted`; returns every message read,
/// that one last.
fn receive_until(
    socket: &UnixDatagram,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no matching notification within {timeout:?}; got {seen:?}");
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = wanted(&message);
        seen.push(message);
        if done {
            return Ok(seen);
        }
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) with a pid of a child this test started; no memory is involved.
    let rc = unsafe { libc::kill(pid, signal) };
    ensure!(rc == 0, "kill {pid}: {}", std::io::Error::last_os_error());
    Ok(())
}

#[test]
fn notify_socket_gets_ready_status_watchdog_and_reload() {
    require_root!();
    run_test("notify_socket", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start("bar")?;
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        mesh.set_env("NOTIFY_SOCKET", &path.display().to_string());
        // Every 2 s: the node pets the watchdog every second.
        mesh.set_env("WATCHDOG_USEC", "2000000");
        mesh.start("foo")?;
        let pid = mesh.process("foo").context("foo")?.pid();

        let seen = receive_until(&socket, CONVERGE, |m| has_line(m, "READY=1"))?;
        // Ready means the TUN device and the control socket are up.
        ensure!(
            mesh.socket("foo").exists(),
            "READY=1 before the control socket: {seen:?}"
        );
        let links = topo.ns("foo").ip(&["-o", "link", "show"])?;
        ensure!(
            links.contains("cx-foo"),
            "READY=1 before the TUN device: {links}"
        );
        let ready = seen.last().context("no message")?;
        ensure!(
            ready
                .lines()
                .any(|l| l.starts_with("STATUS=") && l.ends_with("1 backend configured")),
            "{ready}"
        );

        // The link comes up: the status line says so, and the watchdog is petted meanwhile.
        let seen = receive_until(&socket, CONVERGE, |m| {
            has_line(m, "STATUS=1 link up, 1 backend configured")
        })?;
        let watchdog = receive_until(&socket, Duration::from_secs(5), |m| {
            has_line(m, "WATCHDOG=1")
        })?;
        ensure!(!watchdog.is_empty(), "{seen:?}");

        // A reload is bracketed by RELOADING=1 (with the monotonic clock) and READY=1.
        signal(pid, libc::SIGHUP)?;
        let seen = receive_until(&socket, Duration::from_secs(10), |m| {
            has_line(m, "RELOADING=1")
        })?;
        let reloading = seen.last().context("no message")?;
        ensure!(
            reloading.lines().any(|l| l
                .strip_prefix("MONOTONIC_USEC=")
                .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
            "{reloading}"
        );
        let seen = receive_until(&socket, Duration::from_secs(10), |m| has_line(m, "READY=1"))?;
        ensure!(
            !seen.iter().any(|m| has_line(m, "RELOADING=1")),
            "a second reload? {seen:?}"
        );

        // A change that restarts the mesh instance (a new domain) re-executes the node under the
        // same pid: a reload for systemd, never STOPPING=1, which would make it kill the node.
        let config = mesh.config_path().clone();
        let text = std::fs::read_to_string(&config)?
            .replace("version: 1", "version: 2")
            .replace("domain: connectopus.test", "domain: restarted.test");
        std::fs::write(&config, text)?;
        mesh.sign()?;
        let (accepted, output) = mesh.config_set("foo", &config)?;
        ensure!(accepted, "{output}");
        let seen = receive_until(&socket, CONVERGE, |m| has_line(m, "RELOADING=1"))?;
        ensure!(!seen.iter().any(|m| has_line(m, "STOPPING=1")), "{seen:?}");
        let seen = receive_until(&socket, CONVERGE, |m| has_line(m, "READY=1"))?;
        ensure!(!seen.iter().any(|m| has_line(m, "STOPPING=1")), "{seen:?}");
        ensure!(
            mesh.process("foo").context("foo")?.is_running(),
            "foo exited instead of restarting"
        );
        wait_until(CONVERGE, Duration::from_millis(200), || {
            mesh.status("foo")
                .is_ok_and(|s| s["domain"] == "restarted.test")
        })?;

        // Shutdown says STOPPING=1.
        signal(pid, libc::SIGTERM)?;
        receive_until(&socket, Duration::from_secs(10), |m| {
            has_line(m, "STOPPING=1")
        })?;
        Ok(())
    });
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    require_root!();
    run_test("json_logs", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::DtlsPsk)])?;
        mesh.add_args_all(&["--log-format", "json"]);
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        // A reload and a shutdown log too.
        let pid = mesh.process("foo").context("foo")?.pid();
        signal(pid, libc::SIGHUP)?;
        let stderr = mesh.process("foo").context("foo")?.stderr_path().to_owned();
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            std::fs::read_to_string(&stderr)
                .is_ok_and(|s| s.contains("configuration file is unchanged"))
        })?;
        let status = mesh.stop("foo")?;
        ensure!(status.success(), "foo exited with {status}");

        let text = std::fs::read_to_string(&stderr)?;
        let mut messages = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {} of foo's log is not JSON: {line}", i + 1))?;
            ensure!(
                value["level"].is_string() && value["timestamp"].is_string(),
                "{line}"
            );
            messages.push(
                value["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        for wanted in ["tun device up", "session established", "stopped"] {
            ensure!(
                messages.iter().any(|m| m == wanted),
                "no {wanted:?} in {messages:?}"
            );
        }
        Ok(())
    });
}

/// Node `foo`'s command line on `mesh`'s config (as [`Mesh::start`] makes it).
fn node_args(mesh: &Mesh, dir: &connectopus_tests::TestDir) -> Result<Vec<String>> {
    let config = dir.join("foo-own.yml");
    std::fs::copy(mesh.config_path(), &config)?;
    std::fs::copy(
        format!("{}.sig", mesh.config_path().display()),
        format!("{}.sig", config.display()),
    )?;
    Ok(vec![
        "node".into(),
        "--id".into(),
        "foo".into(),
        "--config".into(),
        config.display().to_string(),
        "--control-socket".into(),
        mesh.socket("foo").display().to_string(),
    ])
}

#[test]
fn text_logs_leave_out_timestamps_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    run_test("journal_stream", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start("bar")?;
        // foo's stderr is a file that JOURNAL_STREAM names, as systemd does with the journal's
        // stream socket.
        let log = dir.join("foo-journal.stderr");
        let file = std::fs::File::create(&log)?;
        let meta = file.metadata()?;
        let binary = connectopus_tests::workspace_binary("connectopus")?;
        let args = node_args(&mesh, dir)?;
        let mut command = topo
            .ns("foo")
            .command(&binary.display().to_string(), &args)?;
        command
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stdout(std::process::Stdio::null())
            .stderr(file);
        // Killed with the namespace if the test fails before the end.
        let mut child = command.spawn()?;
        let up = wait_until(CONVERGE, Duration::from_millis(100), || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("session established"))
        });
        signal(child.id(), libc::SIGTERM)?;
        child.wait()?;
        up?;
        let text = std::fs::read_to_string(&log)?;
        for line in text.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            ensure!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first),
                "a line that does not start with its level: {line:?}"
            );
            ensure!(
                !line.contains('\u{1b}'),
                "colours for the journal: {line:?}"
            );
        }
        // bar's stderr is a plain file: its lines carry timestamps.
        let bar = std::fs::read_to_string(mesh.process("bar").context("bar")?.stderr_path())?;
        let first = bar.lines().next().context("bar logged nothing")?;
        ensure!(first.starts_with("20") && first.contains('T'), "{first:?}");
        Ok(())
    });
}

/// Parses one datagram of the journal's native protocol: `KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value, `\n`.
fn parse_journal_entry(mut bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .context("field without end")?;
        let name = String::from_utf8_lossy(&bytes[..end]).into_owned();
        if bytes[end] == b'=' {
            let rest = &bytes[end + 1..];
            let nl = rest
                .iter()
                .position(|&b| b == b'\n')
                .context("value without newline")?;
            fields.push((name, String::from_utf8_lossy(&rest[..nl]).into_owned()));
            bytes = &rest[nl + 1..];
        } else {
            let rest = &bytes[end + 1..];
            ensure!(rest.len() >= 8, "truncated length");
            let len = usize::try_from(u64::from_le_bytes(rest[..8].try_into()?))?;
            ensure!(rest.len() > 8 + len, "truncated value");
            fields.push((
                name,
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            ));
            bytes = &rest[8 + len + 1..];
        }
    }
    Ok(fields)
}

#[test]
fn journald_format_sends_native_entries_with_fields() {
    require_root!();
    run_test("journald", |dir| {
        let topo = Topology::line(dir, &["foo", "bar"])?;
        let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
        mesh.start("bar")?;
        // A stand-in for journald: foo runs in a private mount namespace where a fresh /run
        // holds this socket at the journal's path, /run/systemd/journal/socket.
        let journal_path = dir.join("journal.sock");
        let journal = UnixDatagram::bind(&journal_path)?;
        let binary = connectopus_tests::workspace_binary("connectopus")?;
        let mut args = vec![
            "--mount".to_owned(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-ec".into(),
            "mount -t tmpfs cx-run /run; mkdir -p /run/systemd/journal; \
             touch /run/systemd/journal/socket; mount --bind \"$0\" /run/systemd/journal/socket; \
             exec \"$@\""
                .into(),
            journal_path.display().to_string(),
            binary.display().to_string(),
        ];
        args.extend(node_args(&mesh, dir)?);
        args.extend(["--log-format".into(), "journald".into()]);
        let command = topo.ns("foo").command("unshare", &args)?;
        let _foo = topo
            .ns("foo")
            .spawn_with(command, "foo", connectopus_tests::StdinMode::Null)?;

        let mut entries = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + CONVERGE;
        let established = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "no 'session established' entry; got {entries:?}"
            );
            journal.set_read_timeout(Some(left))?;
            let Ok(n) = journal.recv(&mut buf) else {
                continue;
            };
            let entry = parse_journal_entry(&buf[..n])?;
            let done = entry
                .iter()
                .any(|(k, v)| k == "MESSAGE" && v == "session established");
            entries.push(entry);
            if done {
                break entries.last().context("no entry")?.clone();
            }
        };
        let field = |entry: &[(String, String)], key: &str| {
            entry
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        ensure!(field(&established, "PRIORITY") == "6", "{established:?}");
        ensure!(
            field(&established, "SYSLOG_IDENTIFIER") == "connectopus",
            "{established:?}"
        );
        ensure!(field(&established, "F_NAME") == "bar", "{established:?}");
        ensure!(!field(&established, "F_LINK").is_empty(), "{established:?}");
        let tun_up = entries
            .iter()
            .find(|e| field(e, "MESSAGE") == "tun device up")
            .context("no 'tun device up' entry")?;
        ensure!(field(tun_up, "F_TUN") == "cx-foo", "{tun_up:?}");
        Ok(())
    });
}
