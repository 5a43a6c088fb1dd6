//! `cargo xtask soak --minutes N`: the soak (`tests/src/bin/soak.rs`).
//!
//! Installs the test tools (as root), builds the eBPF object if it can (the node loads it when
//! present), builds the node and the soak in release mode, and runs the soak: a three-node
//! mesh under iperf3 and DNS load with 5 % loss on one link and a signed config change every
//! minute, which fails on a crash or a growth trend. CI (`cargo xtask test`) runs
//! `--minutes 2`; docs/testing.md records a long run.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs the soak with `args` (`--minutes N`).
pub(crate) fn soak(args: &[String]) -> Result<()> {
    let minutes = match args {
        [flag, n] if flag == "--minutes" => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("--minutes {n}: a whole number of minutes, at least 1"))?,
        _ => bail!("usage: cargo xtask soak --minutes N"),
    };
    if !crate::bench::is_root() {
        bail!("the soak creates network namespaces and TUN devices: run it as root");
    }
    crate::install_packages()?;
    if let Err(e) = crate::ebpf::build_ebpf() {
        eprintln!("xtask: no eBPF object ({e:#}); the nodes run without their TUN counters");
    }
    crate::build_release()?;
    let release = crate::bench::target_dir().join("release");
    let soak = release.join("soak");
    let minutes = minutes.to_string();
    eprintln!("xtask: {} --minutes {minutes}", soak.display());
    let status = Command::new(&soak)
        .args(["--minutes", &minutes])
        .env("CONNECTOPUS_BIN_DIR", &release)
        .status()
        .with_context(|| format!("running {}", soak.display()))?;
    if !status.success() {
        bail!("the soak failed ({status})");
    }
    Ok(())
}
