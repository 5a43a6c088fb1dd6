//! `cargo xtask bench`: the end-to-end benchmark.
//!
//! Installs what it needs (as root: the test tools, and the peer VPNs Debian packages —
//! wireguard-go, nebula, wireguard-tools; with `--install-peers` also boringtun-cli from
//! crates.io, which compiles for a few minutes), builds the eBPF object (see `ebpf.rs`; the
//! node loads it when present) and the node and the harness in release mode, and runs the harness (`bench/src/bin/e2e/`) with the remaining arguments. Results
//! go to `target/bench/`. `cargo xtask bench --short` is the quick mode CI runs;
//! `cargo xtask bench --flood` measures forwarding quiet and under a spoofed ClientHello flood
//! instead (`bench/src/bin/e2e/flood.rs`, docs/performance.md).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Peer VPNs from Debian: package names.
const PEER_PACKAGES: &[&str] = &["wireguard-go", "nebula", "wireguard-tools"];

/// Whether xtask runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The workspace's target directory.
pub(crate) fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .map(|root| root.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Runs the end-to-end benchmark; `args` are passed to the harness, except
/// `--install-peers`.
pub fn bench(args: &[String]) -> Result<()> {
    let install_peers = args.iter().any(|a| a == "--install-peers");
    let mut pass: Vec<String> = args
        .iter()
        .filter(|a| *a != "--install-peers")
        .cloned()
        .collect();
    if is_root() {
        crate::install_packages()?;
        install_peer_packages(install_peers)?;
    } else {
        eprintln!("xtask: not root: installing nothing (the harness itself needs root)");
    }
    // The node loads its eBPF TUN counters when the object is built, as `cargo xtask test`
    // and a deployment do; without it the node runs (and is measured) without them.
    if let Err(e) = crate::ebpf::build_ebpf() {
        eprintln!("xtask: no eBPF object ({e:#}); the nodes run without their TUN counters");
    }
    crate::build_release()?;
    let target = target_dir();
    let release = target.join("release");
    if !pass.iter().any(|a| a == "--out") {
        pass.push("--out".into());
        pass.push(target.join("bench").display().to_string());
    }
    // Ctrl-C reaches the harness too, which stops and removes everything it started; wait
    // for it rather than returning to the shell while it cleans up.
    if let Err(e) = ctrlc::set_handler(|| {}) {
        eprintln!("xtask: cannot defer Ctrl-C to the harness: {e}");
    }
    let e2e = release.join("e2e");
    eprintln!("xtask: {} {}", e2e.display(), pass.join(" "));
    let status = Command::new(&e2e)
        .args(&pass)
        .env("CONNECTOPUS_BIN_DIR", &release)
        .status()
        .with_context(|| format!("running {}", e2e.display()))?;
    if !status.success() {
        bail!("the end-to-end benchmark failed ({status})");
    }
    Ok(())
}

/// Installs the peer VPNs that can be had: the Debian packages with apt-get, and (only when
/// asked, as it compiles) boringtun-cli with `cargo install`. Whatever cannot be installed
/// is reported and then skipped by the harness, never an error.
fn install_peer_packages(build_boringtun: bool) -> Result<()> {
    let missing: Vec<&str> = PEER_PACKAGES
        .iter()
        .copied()
        .filter(|p| !crate::package_installed(p))
        .collect();
    if !missing.is_empty() {
        if crate::which("apt-get").is_some() {
            eprintln!("xtask: installing peer VPNs {}", missing.join(" "));
            let _ = Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            let status = Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!(
                    "xtask: could not install {}; the benchmark skips those peers",
                    missing.join(" ")
                );
            }
        } else {
            eprintln!(
                "xtask: no apt-get; peers {} are skipped unless installed",
                missing.join(" ")
            );
        }
    }
    let have_boringtun = crate::which("boringtun-cli").is_some()
        || std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cargo/bin/boringtun-cli"))
            .is_some_and(|p| p.is_file());
    if have_boringtun {
        return Ok(());
    }
    if build_boringtun {
        eprintln!("xtask: cargo install boringtun-cli (a few minutes)");
        let status = Command::new("cargo")
            .args(["install", "--locked", "boringtun-cli"])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("xtask: could not install boringtun-cli; the benchmark skips it");
        }
    } else {
        eprintln!(
            "xtask: boringtun-cli is not installed; `cargo xtask bench --install-peers` \
             builds it (cargo install boringtun-cli), else the benchmark skips it"
        );
    }
    Ok(())
}
