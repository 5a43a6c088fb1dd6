//! Project tasks, run as `cargo xtask <task>`.
//!
//! - `test`: installs what the tests need (as root, on Debian), then runs formatting, lints
//!   and every test. This is the command CI runs (`.ci/run`).
//! - `demo`: builds the node and runs a three-node mesh in network namespaces (`--once` to
//!   exit after showing it).
//! - `build-ebpf`: installs the eBPF toolchain if missing and builds the eBPF object (`ebpf.rs`).
//! - `dist`: the Debian package `target/dist/connectopus_<version>_<arch>.deb` (`dist.rs`).
//! - `bench`: the end-to-end benchmark (see `bench.rs`); `bench --short` is its CI mode,
//!   which `test` runs last when root.
//! - `fuzz`: the cargo-fuzz targets (see `fuzz.rs`); `fuzz --smoke` is its CI mode, which
//!   `test` runs after the tests.
//! - `soak --minutes N`: the three-node mesh under load, loss and config changes (see
//!   `soak.rs`); `test` runs `--minutes 2` when root.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod bench;
mod dist;
mod ebpf;
mod fuzz;
mod soak;

/// Debian packages the tests and the demo use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "traceroute",
    "iperf3",
    "openssl",
    "libssl-dev",
    "pkg-config",
    "dnsutils",
    "nftables",
    "python3",
    // ssh-keygen and ssh-agent for the config-signing tests.
    "openssh-client",
    "dnsperf",
    // promtool, which checks the node's /metrics; curl, which fetches it and the attach
    // test's page from a namespace.
    "prometheus",
    "curl",
    // dpkg-shlibdeps for `dist`; systemd-analyze for the package test.
    "dpkg-dev",
    "systemd",
    // Headless Chromium loads the web UI in the API test and takes docs/ui.png.
    "chromium",
    // DHCPv6 servers delegating prefixes to the DHCPv6-PD client in the pd test.
    "kea-dhcp6-server",
    "isc-dhcp-server",
    // The reference CNI plugins (ptp), which the CNI test compares the plugin with.
    "containernetworking-plugins",
    // podman 4.3 (CNI backend) with runc and conmon, and a static busybox as its image, for
    // the CNI test that runs real containers on the mesh.
    "podman",
    "runc",
    "conmon",
    "busybox-static",
    // libcni (Debian packages it as golang-github-appc-cni-dev) and the Go that builds the
    // `minicni` driver on it offline, the oracle of the CNI runtime tests; and containerd 1.6
    // with `ctr`, the other runtime they run containers with.
    "golang-go",
    "golang-github-appc-cni-dev",
    "containerd",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("install-deps") => install_packages(),
        Some("build-ebpf") => ebpf::build_ebpf(),
        Some("bench") => bench::bench(&args[1..]),
        Some("dist") => dist::dist().map(|_| ()),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        other => Err(anyhow::anyhow!(
            "unknown task {other:?}; tasks: test, demo, install-deps, build-ebpf, dist, bench, fuzz, soak"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything CI checks, timing each phase: the log ends with where the minutes went
/// (CI has a budget, README "Tests").
fn test() -> Result<()> {
    let mut phases = Phases::default();
    let result = test_phases(&mut phases);
    phases.report();
    result
}

fn test_phases(phases: &mut Phases) -> Result<()> {
    phases.run("install packages", install_packages)?;
    // The node and the fastpath root test load the eBPF object; build it first.
    phases.run("eBPF object", ebpf::build_ebpf)?;
    phases.run("fmt", || run("cargo", &["fmt", "--all", "--", "--check"]))?;
    phases.run("clippy", || {
        run(
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    // The end-to-end tests run the node binary, which `cargo test` alone does not build.
    phases.run("build", || {
        run("cargo", &["build", "--workspace", "--bins", "--locked"])
    })?;
    // The package, which the packaging test (tests/tests/package.rs) installs and runs; its
    // release build is the one the benchmark below uses too.
    if which("dpkg-deb").is_some() && which("dpkg-shlibdeps").is_some() {
        phases.run("dist (release build, package)", || dist::dist().map(|_| ()))?;
    } else {
        eprintln!("xtask: skipping `dist`: it needs dpkg-deb and dpkg-shlibdeps (dpkg-dev)");
    }
    phases.run("tests", || {
        run("cargo", &["test", "--workspace", "--locked"])
    })?;
    // Fails if the DTLS packet path allocates per packet (bench/benches/packet_path.rs). The
    // same packages as the release build, so cargo reuses what it built (`build_release`).
    phases.run("packet path allocations", || {
        let mut args = vec!["bench", "--locked"];
        args.extend(RELEASE_PACKAGES);
        args.extend(["--bench", "packet_path", "--", "--test"]);
        run("cargo", &args)
    })?;
    phases.run("fuzz smoke", || fuzz::fuzz(&["--smoke".to_owned()]))?;
    // The end-to-end benchmark in its short mode, so the harness cannot rot. It needs root
    // (namespaces); peer VPNs that are missing are skipped, not failures.
    if bench::is_root() {
        phases.run("bench --short", || bench::bench(&["--short".to_owned()]))?;
        // Two minutes of the soak, so it cannot rot and a fast leak or crash shows.
        phases.run("soak --minutes 2", || {
            soak::soak(&["--minutes".to_owned(), "2".to_owned()])
        })?;
    } else {
        eprintln!("xtask: skipping `bench --short` and `soak --minutes 2`: they need root");
    }
    Ok(())
}

/// How long each phase of `test` took, in the order they ran.
#[derive(Default)]
struct Phases {
    done: Vec<(&'static str, std::time::Duration, bool)>,
}

impl Phases {
    fn run(&mut self, name: &'static str, phase: impl FnOnce() -> Result<()>) -> Result<()> {
        let started = std::time::Instant::now();
        let result = phase();
        self.done.push((name, started.elapsed(), result.is_ok()));
        result
    }

    fn report(&self) {
        let total: std::time::Duration = self.done.iter().map(|(_, took, _)| *took).sum();
        eprintln!("xtask: phases (seconds):");
        for (name, took, ok) in &self.done {
            let failed = if *ok { "" } else { "  (failed)" };
            eprintln!("xtask: {:>6.0}  {name}{failed}", took.as_secs_f64());
        }
        eprintln!("xtask: {:>6.0}  in all", total.as_secs_f64());
    }
}

/// Runs the demo: builds the node in release and starts a three-node mesh in network
/// namespaces (see `tests/src/bin/demo.rs`); extra arguments (`--once`) go to the demo.
fn demo() -> Result<()> {
    install_packages()?;
    build_release()?;
    // Ctrl-C stops the demo, which then removes everything it made: wait for it.
    if let Err(e) = ctrlc::set_handler(|| {}) {
        eprintln!("xtask: cannot defer Ctrl-C to the demo: {e}");
    }
    let demo = bench::target_dir().join("release").join("demo");
    let extra: Vec<String> = std::env::args().skip(2).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    run(&demo.display().to_string(), &extra)
}

/// The packages of every release binary the tasks run: the node and the CNI plugin (`dist`
/// packages them), the harness and its flooder (`bench`), the soak and the demo.
const RELEASE_PACKAGES: [&str; 8] = [
    "-p",
    "connectopus",
    "-p",
    "connectopus-cni",
    "-p",
    "bench",
    "-p",
    "connectopus-tests",
];

/// Builds, in release, every binary the tasks run, and the per-packet allocation benchmark
/// `test` runs. One command for all of them, because cargo unifies the dependencies' features
/// over the packages and targets it is asked for: two commands with different packages each
/// rebuild `connectopus` (about a minute here, and CI ran four of them), and the benchmark
/// alone (criterion, without the node) rebuilt 50 crates, aws-lc among them (100 s of CI).
pub(crate) fn build_release() -> Result<()> {
    let mut args = vec!["build", "--release", "--locked"];
    args.extend(RELEASE_PACKAGES);
    args.extend(["--bins", "--bench", "packet_path"]);
    run("cargo", &args)
}

/// Installs missing Debian packages when running as root on a Debian-like system; elsewhere
/// says which are missing and goes on (tests that need them skip with a message).
fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root || which("apt-get").is_none() {
        eprintln!(
            "xtask: not installing missing packages (needs root and apt-get): {}",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install failed with {status}");
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}
