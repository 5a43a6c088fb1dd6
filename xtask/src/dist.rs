//! `cargo xtask dist`: the Debian package `<target>/dist/connectopus_<version>_<arch>.deb`.
//!
//! Steps:
//! 1. The eBPF object (`cargo xtask build-ebpf`), so the release build embeds it.
//! 2. `cargo build --release --locked -p connectopus -p connectopus-cni`; the node's binary
//!    must contain the object.
//! 3. A staging tree: `/usr/bin/connectopus` and the CNI plugin `/usr/bin/connectopus-cni`
//!    (debug info stripped) with the symlink `/usr/lib/cni/connectopus` (a CNI plugin's
//!    type is its file name, and runtimes look in `/usr/lib/cni`), the systemd unit
//!    `connectopus@.service`, man pages (`connectopus man-pages`, gzipped), bash, zsh and fish
//!    completions (`connectopus completions`), the docs, and the maintainer scripts from
//!    `packaging/debian/`. Nothing in `/etc`: the operator's files there are never the
//!    package's, so `dpkg -r` leaves them.
//! 4. `Depends:` from `dpkg-shlibdeps` (dpkg-dev), then `dpkg-deb --build --root-owner-group`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The package name.
const PACKAGE: &str = "connectopus";

/// Runs `cargo xtask dist`; returns the package's path.
pub fn dist() -> Result<PathBuf> {
    let root = workspace_root()?;
    crate::ebpf::build_ebpf()?;
    crate::build_release()?;
    let target = target_dir(&root);
    let binary = target.join("release").join("connectopus");
    let object = std::fs::read(root.join("target/ebpf/connectopus-ebpf.o"))
        .context("reading the eBPF object")?;
    let built = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if !contains(&built, &object) {
        bail!(
            "{} does not embed the eBPF object: was it built before `cargo xtask build-ebpf`? \
             touch target/ebpf/connectopus-ebpf.o and run `cargo xtask dist` again",
            binary.display()
        );
    }

    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let dist = target.join("dist");
    let stage = dist.join(format!("{PACKAGE}_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }

    let bin = stage.join("usr/bin/connectopus");
    copy(&binary, &bin, 0o755)?;
    crate::run("strip", &["--strip-debug", &bin.display().to_string()])?;
    let cni = stage.join("usr/bin/connectopus-cni");
    copy(&target.join("release").join("connectopus-cni"), &cni, 0o755)?;
    crate::run("strip", &["--strip-debug", &cni.display().to_string()])?;
    let cni_link = stage.join("usr/lib/cni/connectopus");
    std::fs::create_dir_all(cni_link.parent().context("symlink path")?)?;
    std::os::unix::fs::symlink("../../bin/connectopus-cni", &cni_link)
        .with_context(|| format!("creating {}", cni_link.display()))?;

    let man = stage.join("usr/share/man/man1");
    output(Command::new(&bin).arg("man-pages").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        let page = page?.path();
        crate::run("gzip", &["-9n", &page.display().to_string()])?;
    }

    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/connectopus"),
        ("zsh", "usr/share/zsh/vendor-completions/_connectopus"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/connectopus.fish",
        ),
    ] {
        let script = output_raw(Command::new(&bin).args(["completions", shell]))?;
        write(&stage.join(path), &script, 0o644)?;
    }

    let packaging = root.join("packaging");
    copy(
        &packaging.join("connectopus@.service"),
        &stage.join("usr/lib/systemd/system/connectopus@.service"),
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/connectopus");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    copy(
        &root.join("docs/operations.md"),
        &doc.join("operations.md"),
        0o644,
    )?;
    copy(&root.join("docs/config.md"), &doc.join("config.md"), 0o644)?;
    copy(
        &packaging.join("debian/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &packaging.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    let depends = shlib_depends(&[&bin, &cni])?;
    let installed_size = du_kib(&stage)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: Connectopus developers <connectopus@example.invalid>\n\
         Installed-Size: {installed_size}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: IPv6 mesh network daemon for Linux gateways\n \
         Connectopus links Linux gateways over DTLS/UDP and TCP (optionally TLS 1.3) and\n \
         routes IPv6 between them with a link-state protocol; one signed YAML file\n \
         configures the whole mesh. Run a node with `systemctl enable --now\n \
         connectopus@NAME` once /etc/connectopus/NAME.yml and its signature are in place.\n"
    );
    write(&debian.join("control"), control.as_bytes(), 0o644)?;

    let deb = dist.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    crate::run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &stage.display().to_string(),
            &deb.display().to_string(),
        ],
    )?;
    eprintln!("xtask: wrote {}", deb.display());
    Ok(deb)
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), PathBuf::from)
}

/// `Depends:` for the binaries' shared libraries, from `dpkg-shlibdeps` (which wants a
/// `debian/control` in its working directory: a throwaway one).
fn shlib_depends(binaries: &[&Path]) -> Result<String> {
    let scratch = binaries
        .first()
        .context("no binaries")?
        .ancestors()
        .nth(3)
        .context("staging path too short")?
        .join("shlibdeps");
    std::fs::create_dir_all(scratch.join("debian"))?;
    std::fs::write(
        scratch.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let mut command = Command::new("dpkg-shlibdeps");
    command.current_dir(&scratch).arg("-O");
    for binary in binaries {
        command.arg("-e").arg(binary);
    }
    let line = output(&mut command).context("dpkg-shlibdeps (package dpkg-dev)")?;
    let _ = std::fs::remove_dir_all(&scratch);
    line.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("no shlibs:Depends in dpkg-shlibdeps output {line:?}"))
}

/// The size of `dir` in KiB, as `Installed-Size` wants.
fn du_kib(dir: &Path) -> Result<u64> {
    let out = output(Command::new("du").args(["-sk"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("parsing du output {out:?}"))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `command` and returns its stdout, trimmed; fails with its stderr.
fn output(command: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output_raw(command)?)
        .trim()
        .to_owned())
}

fn output_raw(command: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
