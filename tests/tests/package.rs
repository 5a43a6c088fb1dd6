//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it before the
//! tests): its contents, the binary installed from it into a scratch root, its systemd unit,
//! and a node started from that root (not the checkout) with only the unit's capabilities,
//! which must load the eBPF programs embedded in the binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, StdinMode, Topology, poll_until, require_root, require_tools, run_ok,
    run_test, target_dir, tool,
};

const CONVERGE: Duration = Duration::from_secs(20);

/// The newest `connectopus_*.deb` in `<target>/dist`, if any.
fn find_package() -> Result<Option<PathBuf>> {
    let dist = target_dir()?
        .parent()
        .context("target directory has no parent")?
        .join("dist");
    let Ok(entries) = std::fs::read_dir(&dist) else {
        return Ok(None);
    };
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("connectopus_") && n.ends_with(".deb"))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    Ok(debs.pop().map(|(_, p)| p))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new(tool(program)?);
    command.args(args);
    run_ok(command, Duration::from_secs(60))
}

/// The capabilities in the unit's `CapabilityBoundingSet=`, as setpriv spells them
/// (`net_admin`, ...).
fn unit_capabilities(unit: &str) -> Result<Vec<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet")?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect())
}

#[test]
fn the_package_installs_and_its_node_runs_with_the_embedded_ebpf() {
    require_root!();
    require_tools(&["dpkg-deb", "setpriv"]);
    let Some(deb) = find_package().unwrap() else {
        eprintln!("package: skipped: no target/dist/connectopus_*.deb; run `cargo xtask dist`");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI builds the package (`cargo xtask test` runs `dist`) before the tests"
        );
        return;
    };
    run_test("package", |dir| check_package(dir, &deb));
}

fn check_package(dir: &connectopus_tests::TestDir, deb: &Path) -> Result<()> {
    let deb_arg = deb.display().to_string();
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        run("dpkg-deb", &["--field", &deb_arg, "Version"])?.trim() == version,
        "package version is not {version}"
    );
    let depends = run("dpkg-deb", &["--field", &deb_arg, "Depends"])?;
    ensure!(depends.contains("libc6"), "Depends: {depends}");

    // Contents.
    let listing = run("dpkg-deb", &["--contents", &deb_arg])?;
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for wanted in [
        "./usr/bin/connectopus",
        "./usr/bin/connectopus-cni",
        "./usr/lib/cni/connectopus",
        "./usr/lib/systemd/system/connectopus@.service",
        "./usr/share/bash-completion/completions/connectopus",
        "./usr/share/zsh/vendor-completions/_connectopus",
        "./usr/share/fish/vendor_completions.d/connectopus.fish",
        "./usr/share/doc/connectopus/operations.md",
        "./usr/share/doc/connectopus/copyright",
    ] {
        ensure!(
            files.contains(&wanted),
            "{wanted} not in the package:\n{listing}"
        );
    }
    // Nothing under /etc: the operator's keys and configs are never the package's, so
    // `dpkg -r` cannot remove them.
    ensure!(
        !files.iter().any(|f| f.starts_with("./etc/")),
        "the package ships files in /etc:\n{listing}"
    );
    for line in listing.lines() {
        ensure!(line.contains(" root/root "), "not owned by root: {line}");
    }

    // Installed into a scratch root by dpkg itself, maintainer scripts included (they honour
    // DPKG_ROOT, so they touch nothing outside it). The root has no libc6 and friends.
    let root = dir.join("root");
    for sub in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(root.join("var/lib/dpkg").join(sub))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    let root_arg = format!("--root={}", root.display());
    let dpkg = |action: &[&str]| -> Result<String> {
        let mut args = vec![
            root_arg.as_str(),
            "--force-script-chrootless",
            "--force-depends",
        ];
        args.extend_from_slice(action);
        run("dpkg", &args)
    };
    dpkg(&["--install", &deb_arg])?;
    let etc = root.join("etc/connectopus");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&etc)
            .context("postinst made no /etc/connectopus")?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o700, "/etc/connectopus has mode {mode:o}");
    }
    let bin = root.join("usr/bin/connectopus");
    let mut command = Command::new(&bin);
    command.arg("--version").current_dir(&root);
    let out = run_ok(command, Duration::from_secs(10))?;
    ensure!(
        out.trim() == format!("connectopus {version}"),
        "--version: {out}"
    );
    // The CNI plugin answers under its type's name, through the package's relative symlink.
    let plugin = root.join("usr/lib/cni/connectopus");
    ensure!(
        std::fs::read_link(&plugin)? == Path::new("../../bin/connectopus-cni"),
        "{} is not the relative symlink",
        plugin.display()
    );
    let mut command = Command::new(&plugin);
    command.env_clear().env("CNI_COMMAND", "VERSION");
    let out = run_ok(command, Duration::from_secs(10))?;
    ensure!(
        out.contains(r#""supportedVersions":["1.0.0","1.1.0"]"#),
        "VERSION: {out}"
    );
    let mut command = Command::new(&bin);
    command.args(["completions", "bash"]);
    let bash = run_ok(command, Duration::from_secs(10))?;
    ensure!(bash.contains("complete -F _connectopus"), "{bash}");
    let packaged_bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/connectopus"))?;
    ensure!(
        packaged_bash == bash,
        "the packaged bash completion is stale"
    );

    // A man page for every command: the binary's own list of pages, all in the package.
    let mut command = Command::new(&bin);
    command.arg("man-pages").arg(dir.join("man"));
    let pages = run_ok(command, Duration::from_secs(10))?;
    let pages: Vec<String> = pages
        .lines()
        .filter_map(|p| Path::new(p).file_name()?.to_str().map(str::to_owned))
        .collect();
    ensure!(pages.len() > 10, "too few man pages: {pages:?}");
    for page in [
        "connectopus.1",
        "connectopus-node.1",
        "connectopus-config-sign.1",
    ] {
        ensure!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }
    for page in &pages {
        let packaged = format!("./usr/share/man/man1/{page}.gz");
        ensure!(
            files.contains(&packaged.as_str()),
            "{packaged} not in the package"
        );
    }

    let unit_path = root.join("usr/lib/systemd/system/connectopus@.service");
    let unit = std::fs::read_to_string(&unit_path)?;
    check_unit(&root, &unit)?;

    node_from_the_package(dir, &root, &bin, &unit)?;

    // `dpkg -r` removes the program and leaves the node's files (and so does --purge).
    dpkg(&["--remove", "connectopus"])?;
    ensure!(!bin.exists(), "dpkg -r left the binary");
    dpkg(&["--purge", "connectopus"])?;
    for kept in ["foo.yml", "foo.yml.sig", "foo.yml.version"] {
        ensure!(etc.join(kept).is_file(), "dpkg -r/--purge removed {kept}");
    }
    Ok(())
}

/// `systemd-analyze verify` on an instance of the unit, with the scratch root's binary in
/// place of /usr/bin/connectopus (verify checks that the command exists).
fn check_unit(root: &Path, unit: &str) -> Result<()> {
    ensure!(unit.contains("\nType=notify\n"), "{unit}");
    ensure!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "{unit}"
    );
    let Ok(analyze) = tool("systemd-analyze") else {
        eprintln!("package: systemd-analyze missing (package systemd): unit not verified");
        ensure!(std::env::var_os("CI").is_none(), "CI installs systemd");
        return Ok(());
    };
    let units = root.join("verify");
    std::fs::create_dir_all(&units)?;
    let bin = root.join("usr/bin/connectopus").display().to_string();
    let instance = units.join("connectopus@foo.service");
    std::fs::write(&instance, unit.replace("/usr/bin/connectopus", &bin))?;
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()?;
    let messages = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && messages.trim().is_empty(),
        "systemd-analyze verify:\n{messages}"
    );
    Ok(())
}

/// Runs node foo from the installed binary, in the scratch root as its working directory, with
/// only the capabilities the unit gives it, and waits for its eBPF counters and its link.
fn node_from_the_package(
    dir: &connectopus_tests::TestDir,
    root: &Path,
    bin: &Path,
    unit: &str,
) -> Result<()> {
    let topo = Topology::line(dir, &["foo", "bar"])?;
    let mut mesh = Mesh::configure(&topo, &[MeshLink::new("bar", "foo", LinkKind::Tcp)])?;
    mesh.start("bar")?;
    let etc = root.join("etc/connectopus");
    std::fs::create_dir_all(&etc)?;
    let config = etc.join("foo.yml");
    std::fs::copy(mesh.config_path(), &config)?;
    std::fs::copy(
        format!("{}.sig", mesh.config_path().display()),
        etc.join("foo.yml.sig"),
    )?;
    let socket = dir.join("foo.sock");
    let caps = unit_capabilities(unit)?;
    let bounding = format!("-all,+{}", caps.join(",+"));
    let bin_arg = bin.display().to_string();
    let config_arg = config.display().to_string();
    let socket_arg = socket.display().to_string();
    let mut command = topo.ns("foo").command(
        "setpriv",
        &[
            "--no-new-privs",
            "--bounding-set",
            bounding.as_str(),
            bin_arg.as_str(),
            "node",
            "--id",
            "foo",
            "--config",
            config_arg.as_str(),
            "--control-socket",
            socket_arg.as_str(),
        ],
    )?;
    command.current_dir(root);
    let node = topo
        .ns("foo")
        .spawn_with(command, "packaged-foo", StdinMode::Null)?;

    // `status` finds the node through CONNECTOPUS_SOCKET, without --id.
    let status = poll_until(CONVERGE, Duration::from_millis(200), || {
        let mut command = Command::new(bin);
        command
            .args(["status", "--json"])
            .env("CONNECTOPUS_SOCKET", &socket)
            .current_dir(root);
        let out = command.output().ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let up = status["links"]
            .as_array()?
            .iter()
            .any(|l| l["state"] == "established");
        up.then_some(status)
    });
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            let log = std::fs::read_to_string(node.stderr_path()).unwrap_or_default();
            bail!("{error:#}; the packaged node's log:\n{log}");
        }
    };
    let ebpf = status["ebpf"].as_str().unwrap_or_default();
    ensure!(
        ebpf.starts_with("tc counters on cx-foo"),
        "the packaged node did not load its eBPF programs: {ebpf}"
    );
    // Port 53 needs CAP_NET_BIND_SERVICE, which the unit grants.
    let dns = status["dns"].as_str().unwrap_or_default();
    ensure!(dns.starts_with("udp [fd00:cafe::1]:53 "), "DNS: {dns}");
    let log = std::fs::read_to_string(node.stderr_path())?;
    ensure!(
        log.lines()
            .any(|l| l.contains("ebpf counters attached") && l.contains("object=embedded")),
        "the object was not the embedded one:\n{log}"
    );
    let status = node.terminate()?;
    ensure!(status.success(), "the packaged node exited with {status}");
    Ok(())
}
