//! `cargo xtask build-ebpf`: installs the eBPF toolchain if it is missing, then builds
//! `ebpf/connectopus-ebpf` and copies the object to [`OBJECT`].
//!
//! Steps, each skipped quickly when already done (ebpf/README.md explains the pins):
//! 1. Debian packages ([`PACKAGES`]), as root with apt-get.
//! 2. The pinned nightly with `rust-src` ([`NIGHTLY`]): `bpfel-unknown-none` is tier 3 and needs
//!    `-Z build-std=core`. `RUSTUP_AUTO_INSTALL=0` machines never install it by themselves.
//! 3. bpf-linker [`BPF_LINKER_VERSION`] with `--features llvm-22`, linked against the nightly's
//!    own libLLVM through a directory of symlinks (the "shim"), installed with
//!    `cargo install --locked` under `$CARGO_HOME/connectopus-ebpf/` (shared by every checkout,
//!    kept across `cargo clean`).
//! 4. `cargo build --release --locked` in the eBPF crate (its `.cargo/config.toml` selects the
//!    target and build-std), with BTF, into `target/ebpf-build/`.
//!
//! Measured on 2 vCPUs (Debian 12, kernel 6.18): about 100 s when only stable Rust is installed
//! (nightly download 19 s, bpf-linker build 51–66 s, eBPF crate 18–27 s), 0.2 s when everything
//! is in place.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The nightly that builds the eBPF crate; same as `ebpf/connectopus-ebpf/rust-toolchain.toml`.
/// Its LLVM major (22) must match [`BPF_LINKER_LLVM_FEATURE`].
pub(crate) const NIGHTLY: &str = "nightly-2026-05-20";

/// bpf-linker release installed from crates.io.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The bpf-linker feature naming the LLVM major of [`NIGHTLY`].
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Debian packages the eBPF build and the fastpath root test need: a C toolchain for
/// bpf-linker's build scripts, `ip` and `ping` for the test.
const PACKAGES: &[&str] = &["gcc", "libc6-dev", "iproute2", "iputils-ping"];

/// The eBPF crate, relative to the workspace root.
const EBPF_CRATE: &str = "ebpf/connectopus-ebpf";

/// Where the built object is copied, relative to the workspace root; `connectopus-fastpath`
/// looks here by default.
const OBJECT: &str = "target/ebpf/connectopus-ebpf.o";

/// Cargo's target directory for the eBPF build, relative to the workspace root.
const BUILD_DIR: &str = "target/ebpf-build";

/// Extra rustc flags for the eBPF build: debug info, turned into BTF by bpf-linker. The kernel
/// accepts bpf-linker 0.13's BTF (it rejects 0.10's); `EBPF_RUSTFLAGS` replaces these.
const DEFAULT_EBPF_RUSTFLAGS: &str = "-C debuginfo=2 -C link-arg=--btf";

/// Runs `cargo xtask build-ebpf`.
pub fn build_ebpf() -> Result<()> {
    let started = Instant::now();
    let root = workspace_root()?;
    step("debian packages", || ensure_packages(PACKAGES))?;
    step("nightly toolchain", ensure_nightly)?;
    let linker = step("bpf-linker", ensure_bpf_linker)?;
    let object = step("eBPF crate", || build_object(&root, &linker))?;
    eprintln!(
        "xtask: build-ebpf done in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        object.display()
    );
    Ok(())
}

/// Runs one step and prints how long it took.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let value = f().with_context(|| format!("build-ebpf: {name}"))?;
    eprintln!(
        "xtask: build-ebpf: {name}: ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(value)
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Installs the missing packages of `packages` as root with apt-get; elsewhere says which are
/// missing and goes on (the build then fails with the tool's own message if one was needed).
fn ensure_packages(packages: &[&str]) -> Result<()> {
    if super::which("dpkg-query").is_none() {
        eprintln!("xtask: not a Debian system; make sure these are installed: {packages:?}");
        return Ok(());
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !super::package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || super::which("apt-get").is_none() {
        eprintln!(
            "xtask: not installing missing packages (needs root and apt-get): {}",
            missing.join(" ")
        );
        return Ok(());
    }
    super::run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    run(Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs [`NIGHTLY`] with `rust-src` unless both are already there.
fn ensure_nightly() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup: install it from rustup.rs")?;
    let components = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && components.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Returns the path of a working bpf-linker [`BPF_LINKER_VERSION`], installing it if needed.
fn ensure_bpf_linker() -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    let libllvm = find_libllvm(&sysroot)?;
    // One directory per (version, LLVM, nightly): the binary's RUNPATH points at this directory's
    // shim, whose symlinks point into this nightly, so changing any pin installs afresh.
    let tools = cargo_home()?.join("connectopus-ebpf").join(format!(
        "bpf-linker-{BPF_LINKER_VERSION}-{BPF_LINKER_LLVM_FEATURE}-{NIGHTLY}"
    ));
    let linker = tools.join("bin").join("bpf-linker");
    if linker_version_ok(&linker) {
        eprintln!("xtask: using {}", linker.display());
        return Ok(linker);
    }

    let shim_lib = tools.join("llvm").join("lib");
    std::fs::create_dir_all(&shim_lib)
        .with_context(|| format!("creating {}", shim_lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    // `libLLVM.so` satisfies `-lLLVM` at link time; the SONAME name satisfies the loader at run
    // time through the RUNPATH that bpf-linker's build script sets to this directory.
    for name in [OsString::from("libLLVM.so"), soname.to_os_string()] {
        let link = shim_lib.join(&name);
        if std::fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }

    let mut install = Command::new("cargo");
    install
        // Away from the eBPF crate's rust-toolchain.toml, whatever directory xtask runs in.
        .current_dir(workspace_root()?)
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args([
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", tools.join("llvm"))
        // Build with the default (stable) toolchain, whatever cargo xtask was started with.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run(&mut install)?;
    if !linker_version_ok(&linker) {
        bail!(
            "{} does not run after installing it; remove {} and run `cargo xtask build-ebpf` again",
            linker.display(),
            tools.display()
        );
    }
    Ok(linker)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .arg(format!("+{NIGHTLY}"))
        .args(["--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc")?;
    if !out.status.success() {
        bail!(
            "`rustc +{NIGHTLY} --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Finds the nightly's `libLLVM.so.<major>.<minor>-rust-<version>` (the file with the SONAME).
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_versioned_libllvm = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libLLVM.so."));
        if is_versioned_libllvm {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is {NIGHTLY} a complete toolchain? try `rustup toolchain \
         uninstall {NIGHTLY}` and run `cargo xtask build-ebpf` again",
        lib.display()
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Returns whether `linker` runs and reports [`BPF_LINKER_VERSION`] (running it also proves
/// that the shim resolves to a loadable libLLVM).
fn linker_version_ok(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim()
                    == format!("bpf-linker {BPF_LINKER_VERSION}")
        })
        .unwrap_or(false)
}

/// Builds the eBPF crate in release and copies the object to [`OBJECT`]; returns its path.
fn build_object(root: &Path, linker: &Path) -> Result<PathBuf> {
    let crate_dir = root.join(EBPF_CRATE);
    let build_dir = root.join(BUILD_DIR);
    let rustflags =
        std::env::var("EBPF_RUSTFLAGS").unwrap_or_else(|_| DEFAULT_EBPF_RUSTFLAGS.to_owned());
    let linker_dir = linker.parent().context("bpf-linker path has no parent")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(linker_dir.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .context("building PATH")?;

    let mut build = Command::new("cargo");
    build
        .current_dir(&crate_dir)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&build_dir)
        // The crate's rust-toolchain.toml picks the nightly; nothing from the outer (stable)
        // cargo may leak into the nested one.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", &rustflags)
        .env("PATH", path);
    eprintln!("xtask: (in {EBPF_CRATE}, RUSTFLAGS for bpfel-unknown-none: {rustflags})");
    run(&mut build)?;

    let built = build_dir
        .join("bpfel-unknown-none")
        .join("release")
        .join("connectopus-ebpf");
    let object = root.join(OBJECT);
    let dir = object.parent().context("object path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The node embeds the object (daemon/fastpath/build.rs): rewriting the same bytes would
    // rebuild it for nothing.
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&object).is_ok_and(|old| old == fresh) {
        eprintln!("xtask: {} is up to date", object.display());
        return Ok(object);
    }
    // Copy then rename, so a reader (a running test or daemon) never sees a half-written file.
    let partial = object.with_extension("o.partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    std::fs::rename(&partial, &object)
        .with_context(|| format!("renaming {} to {}", partial.display(), object.display()))?;
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let has_btf = bytes.windows(5).any(|w| w == b".BTF\0");
    eprintln!(
        "xtask: wrote {} ({} bytes, {})",
        object.display(),
        bytes.len(),
        if has_btf { "with BTF" } else { "no BTF" }
    );
    Ok(object)
}

/// Runs `command`, printing it first; fails if it does not exit successfully.
fn run(command: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("xtask: {shown}");
    let status = command
        .status()
        .with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}
