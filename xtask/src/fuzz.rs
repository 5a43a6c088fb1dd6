//! `cargo xtask fuzz`: the cargo-fuzz targets of every fuzz workspace.
//!
//! - `fuzz --smoke [--seconds N]`: builds every target and runs each for N seconds (default
//!   [`SMOKE_SECONDS`]) from its committed seeds, one per CPU at a time; any crash fails.
//!   `test` runs this.
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
/// minutes one after the other, about 5 on CI's 2 CPUs (one target per CPU at a time), plus
/// building the two fuzz workspaces with AddressSanitizer; CI stays within its 45-minute
/// budget (docs/testing.md).
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
    // The smoke's targets, run after both workspaces are built, one per CPU at a time.
    let mut smoke_jobs: Vec<(PathBuf, String)> = Vec::new();
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
            if smoke {
                smoke_jobs.push((dir.clone(), t.clone()));
            } else {
                run_target(&dir, t, seconds, sanitizer, true)?;
            }
            ran += 1;
        }
    }
    if smoke {
        run_smoke(&root, &smoke_jobs, seconds)?;
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
    let args = run_args(dir, target, seconds, sanitizer)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cargo_fuzz(dir, &args, nice)
}

/// The `cargo fuzz` arguments that run `target` for `seconds` from its corpus and seeds.
fn run_args(dir: &Path, target: &str, seconds: u32, sanitizer: &[&str]) -> Result<Vec<String>> {
    let fuzz_dir = dir.join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let mut args: Vec<String> = vec!["run".into(), "-O".into()];
    args.extend(sanitizer.iter().map(|s| (*s).to_owned()));
    args.push(target.to_owned());
    args.push(corpus.display().to_string());
    if seeds.is_dir() {
        args.push(seeds.display().to_string());
    }
    args.extend([
        "--".to_owned(),
        format!("-max_total_time={seconds}"),
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
    ]);
    Ok(args)
}

/// Runs every smoke target for `seconds`, as many at a time as there are CPUs (each fuzzer is
/// one thread, so each still gets a core for its whole `seconds`; on CI's 2 cores this halves
/// the smoke's wall time). Each target's output goes to `target/fuzz-smoke/<target>.log`; a
/// failing target's last lines are printed, and any failure fails the smoke after all ran.
fn run_smoke(root: &Path, jobs: &[(PathBuf, String)], seconds: u32) -> Result<()> {
    let logs = root.join("target/fuzz-smoke");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let parallel = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
        .max(1);
    eprintln!(
        "xtask: fuzz smoke: {} targets, {seconds} s each, {parallel} at a time; logs in {}",
        jobs.len(),
        logs.display()
    );
    let mut pending = jobs.iter();
    let mut running: Vec<(String, PathBuf, std::process::Child)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    loop {
        while running.len() < parallel {
            let Some((dir, target)) = pending.next() else {
                break;
            };
            let log_path = logs.join(format!("{target}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let args = run_args(dir, target, seconds, &[])?;
            let child = Command::new("cargo")
                .arg(format!("+{NIGHTLY}"))
                .arg("fuzz")
                .args(&args)
                .current_dir(dir)
                .stdout(log.try_clone().context("duplicating the log's fd")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting cargo fuzz run {target}"))?;
            eprintln!("xtask: fuzz smoke: {target} started");
            running.push((target.clone(), log_path, child));
        }
        if running.is_empty() {
            break;
        }
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .2
                .try_wait()
                .with_context(|| format!("waiting for {}", running[i].0))?;
            match status {
                None => i += 1,
                Some(status) => {
                    let (target, log_path, _) = running.swap_remove(i);
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let executed = log
                        .lines()
                        .find(|l| l.starts_with("stat::number_of_executed_units"))
                        .unwrap_or("no final stats")
                        .to_owned();
                    if status.success() {
                        eprintln!("xtask: fuzz smoke: {target} ok ({executed})");
                    } else {
                        eprintln!(
                            "xtask: fuzz smoke: {target} FAILED with {status}; the end of {}:",
                            log_path.display()
                        );
                        let lines: Vec<&str> = log.lines().collect();
                        for line in &lines[lines.len().saturating_sub(60)..] {
                            eprintln!("    {line}");
                        }
                        failed.push(target);
                    }
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !failed.is_empty() {
        bail!("fuzz smoke failed for {}", failed.join(", "));
    }
    Ok(())
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
