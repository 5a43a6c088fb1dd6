//! `cargo xtask fuzz`: the cargo-fuzz targets of every fuzz workspace.
//!
//! - `fuzz --smoke [--seconds N]`: builds every target and runs each for N seconds (default
//!   [`SMOKE_SECONDS`]) from its committed seeds; any crash fails. `test` runs this.
//! - `fuzz <target> [--seconds N] [--no-asan]`: one target for longer (default 600 s), at
//!   `nice -n 19`. `--no-asan` builds without AddressSanitizer (into `fuzz/target/no-asan`, so
//!   the ASan build stays cached) for targets whose code under test is safe Rust; about twice
//!   the executions a second. Refused for [`NEEDS_ASAN`].
//!
//! Fuzz workspaces ([`FUZZ_ROOTS`]) are their own Cargo workspaces, excluded from the main
//! one: cargo-fuzz needs the nightly compiler (the pinned one the eBPF build uses) and
//! sanitizer flags. Each target's seeds are committed in `<root>/fuzz/seeds/<target>/`; the
//! growing corpus (`<root>/fuzz/corpus/<target>/`) and crash artifacts stay local.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::ebpf::NIGHTLY;

/// Seconds per target in `--smoke` mode, as issue 17 asks. 19 targets at 30 s take 9.5
/// minutes (3.2 more than at 20 s), plus building the two fuzz workspaces with
/// AddressSanitizer; CI stays within its 45-minute budget (docs/testing.md).
pub(crate) const SMOKE_SECONDS: u32 = 30;

/// Targets whose code under test calls C (OpenSSL, aws-lc): AddressSanitizer is what finds
/// their memory errors, so `--no-asan` refuses them. Every other target fuzzes safe Rust (the
/// crates it reaches have no `unsafe` of their own), where a bounds or overflow error is a
/// panic with or without ASan.
const NEEDS_ASAN: &[&str] = &["dtls_records", "tcp_codec"];

/// Directories (relative to the workspace root) whose `fuzz/` is a cargo-fuzz workspace.
const FUZZ_ROOTS: &[&str] = &["daemon/wire", "."];

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Runs the fuzz task with its arguments (after `fuzz`).
pub(crate) fn fuzz(args: &[String]) -> Result<()> {
    let mut smoke = false;
    let mut asan = true;
    let mut seconds = None;
    let mut target = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--no-asan" => asan = false,
            "--seconds" => {
                let value = it.next().context("--seconds needs a number")?;
                seconds = Some(
                    value
                        .parse::<u32>()
                        .with_context(|| format!("--seconds {value}"))?,
                );
            }
            name if !name.starts_with('-') && target.is_none() => target = Some(name.to_owned()),
            other => bail!(
                "unknown fuzz argument {other:?}; use --smoke, --seconds N, --no-asan or a target"
            ),
        }
    }
    if !smoke && target.is_none() {
        bail!("say `--smoke` (every target briefly) or name a target");
    }
    if !asan {
        match &target {
            None => bail!("--no-asan is for one target's long run; the smoke keeps ASan"),
            Some(t) if NEEDS_ASAN.contains(&t.as_str()) => {
                bail!("{t} fuzzes C code (OpenSSL, aws-lc): it keeps AddressSanitizer")
            }
            Some(_) => {}
        }
    }

    ensure_cargo_fuzz()?;
    let root = workspace_root()?;
    let seconds = seconds.unwrap_or(if smoke { SMOKE_SECONDS } else { 600 });
    let mut ran = 0;
    for dir in FUZZ_ROOTS {
        let dir = root.join(dir);
        let targets = list_targets(&dir)?;
        let chosen: Vec<&String> = targets
            .iter()
            .filter(|t| target.as_ref().is_none_or(|want| want == *t))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        // What `build` and `run` take to choose the sanitizer (and keep its build apart).
        let no_asan_dir = dir.join("fuzz/target/no-asan").display().to_string();
        let sanitizer: &[&str] = if asan {
            &[]
        } else {
            &["--sanitizer", "none", "--target-dir", &no_asan_dir]
        };
        cargo_fuzz(&dir, &[&["build", "-O"], sanitizer].concat(), false)?;
        for t in chosen {
            run_target(&dir, t, seconds, sanitizer, !smoke)?;
            ran += 1;
        }
    }
    if ran == 0 {
        bail!(
            "no fuzz target named {:?}; `cargo +{NIGHTLY} fuzz list` in daemon/wire or here lists them",
            target.unwrap_or_default()
        );
    }
    Ok(())
}

fn cargo_fuzz(dir: &Path, args: &[&str], nice: bool) -> Result<()> {
    let toolchain = format!("+{NIGHTLY}");
    let mut command = if nice {
        let mut c = Command::new("nice");
        c.args(["-n", "19", "cargo"]);
        c
    } else {
        Command::new("cargo")
    };
    command
        .arg(&toolchain)
        .arg("fuzz")
        .args(args)
        .current_dir(dir);
    eprintln!(
        "xtask: (in {}) cargo {toolchain} fuzz {}",
        dir.display(),
        args.join(" ")
    );
    let status = command.status().context("running cargo fuzz")?;
    if !status.success() {
        bail!(
            "cargo fuzz {} failed with {status} (in {})",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}

fn list_targets(dir: &Path) -> Result<Vec<String>> {
    let output = Command::new("cargo")
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", "list"])
        .current_dir(dir)
        .output()
        .context("running cargo fuzz list")?;
    if !output.status.success() {
        bail!(
            "cargo fuzz list failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Runs one target for `seconds` from its corpus and seeds; a crash fails.
fn run_target(
    dir: &Path,
    target: &str,
    seconds: u32,
    sanitizer: &[&str],
    nice: bool,
) -> Result<()> {
    let fuzz_dir = dir.join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let corpus = corpus.display().to_string();
    let seeds = seeds.display().to_string();
    let time = format!("-max_total_time={seconds}");
    let mut args = vec!["run", "-O"];
    args.extend(sanitizer);
    args.extend([target, corpus.as_str()]);
    if Path::new(&seeds).is_dir() {
        args.push(seeds.as_str());
    }
    args.extend([
        "--",
        time.as_str(),
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    cargo_fuzz(dir, &args, nice)
}

/// Installs cargo-fuzz with `cargo install --locked` unless the nightly already runs it.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz --locked failed with {status}");
    }
    Ok(())
}
