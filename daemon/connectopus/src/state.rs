//! What a node keeps on disk across restarts, next to its config file (like the routing epoch
//! in `<config>.epoch`):
//!
//! - **The config and its signature, as a pair that survives a crash.** Two files cannot be
//!   replaced in one atomic step, so [`persist_pair`] writes them in an order where a crash at
//!   any point leaves a pair that verifies once [`recover_pair`] has run at the next start:
//!
//!   1. the new signature goes to `<config>.sig.new` (temp file, fsync, rename, fsync dir):
//!      the old pair is untouched;
//!   2. the new config replaces `<config>` (same way): now `<config>` and `<config>.sig.new`
//!      are the valid pair;
//!   3. the new signature replaces `<config>.sig`: both signatures match the new config;
//!   4. `<config>.sig.new` is removed.
//!
//!   At start, when `<config>.sig.new` exists: if `<config>` verifies with `<config>.sig`
//!   (a crash before 2 or after 3) the leftover is removed; otherwise, if it verifies with
//!   `<config>.sig.new` (a crash between 2 and 3), that signature is moved into place.
//!
//! - **The highest config version the node applied**, in `<config>.version`. A node refuses
//!   to start on an older config ([`check_rollback`]): restoring an old signed pair (a backup,
//!   a configuration management tool, someone with write access to the config but not to the
//!   state) would otherwise bring back whatever later versions removed, revoked keys
//!   included. The record is written after the pair, so a crash never leaves it ahead of the
//!   config on disk.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// `<path><suffix>`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// The signature file of a config (`<config>.sig`).
fn signature_path(config: &Path) -> PathBuf {
    with_suffix(config, ".sig")
}

/// The next signature while a pair is being replaced (`<config>.sig.new`).
pub fn pending_signature_path(config: &Path) -> PathBuf {
    with_suffix(config, ".sig.new")
}

/// Where the highest applied version is recorded (`<config>.version`).
pub fn version_path(config: &Path) -> PathBuf {
    with_suffix(config, ".version")
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent(path);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Replaces `path` with `bytes` (mode 0600): a temp file with a name of its own in the same
/// directory, fsynced, renamed over `path`, and the directory fsynced. Readers see the old
/// file or the new one; two processes writing the same path do not collide.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = parent(path).join(temp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .with_context(|| format!("writing {}", temp.display()))
        .and_then(|()| {
            std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    sync_dir(path)
}

/// Writes a new config and its signature so that a crash at any point leaves a pair that
/// verifies after [`recover_pair`] (the module documentation has the steps).
///
/// # Errors
/// A file cannot be written.
pub fn persist_pair(config: &Path, bytes: &[u8], signature: &[u8]) -> Result<()> {
    persist_steps(config, bytes, signature, usize::MAX)
}

/// [`persist_pair`], stopping after `steps` steps (tests simulate a crash with it).
fn persist_steps(config: &Path, bytes: &[u8], signature: &[u8], steps: usize) -> Result<()> {
    let pending = pending_signature_path(config);
    let actions: [&dyn Fn() -> Result<()>; 4] = [
        &|| replace_file(&pending, signature),
        &|| replace_file(config, bytes),
        &|| replace_file(&signature_path(config), signature),
        &|| match std::fs::remove_file(&pending) {
            Ok(()) => sync_dir(config),
            // Another writer of the same pair already removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", pending.display())),
        },
    ];
    for action in actions.iter().take(steps) {
        action()?;
    }
    Ok(())
}

/// What [`recover_pair`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No replacement was under way.
    Clean,
    /// A replacement was cut off before the config changed, or after both signatures did:
    /// the leftover `.sig.new` was removed.
    DiscardedPending,
    /// A replacement was cut off between the config and its signature: the pending
    /// signature, which matches the config on disk, was moved into place.
    CompletedPending,
    /// A `.sig.new` exists but verifies the config no better than `.sig`; left alone.
    Unresolved,
}

/// Finishes or discards a pair replacement cut off by a crash. `verifies(config, signature)`
/// tells whether the signature file verifies the config file.
///
/// # Errors
/// The leftover cannot be removed or moved.
pub fn recover_pair(config: &Path, verifies: impl Fn(&Path, &Path) -> bool) -> Result<Recovery> {
    let pending = pending_signature_path(config);
    if std::fs::symlink_metadata(&pending).is_err() {
        return Ok(Recovery::Clean);
    }
    let current = signature_path(config);
    if verifies(config, &current) {
        std::fs::remove_file(&pending)
            .with_context(|| format!("removing {}", pending.display()))?;
        sync_dir(config)?;
        return Ok(Recovery::DiscardedPending);
    }
    if verifies(config, &pending) {
        std::fs::rename(&pending, &current)
            .with_context(|| format!("replacing {}", current.display()))?;
        sync_dir(config)?;
        return Ok(Recovery::CompletedPending);
    }
    Ok(Recovery::Unresolved)
}

/// The version recorded as applied, if any.
///
/// # Errors
/// The record exists but cannot be read or is not a number.
pub fn recorded_version(config: &Path) -> Result<Option<u64>> {
    let path = version_path(config);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .with_context(|| format!("{} does not hold a version number", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Records `version` as applied, unless a higher one is recorded already.
///
/// # Errors
/// The record cannot be read or written.
pub fn record_version(config: &Path, version: u64) -> Result<()> {
    if recorded_version(config)?.is_some_and(|r| r >= version) {
        return Ok(());
    }
    replace_file(&version_path(config), format!("{version}\n").as_bytes())
}

/// A config older than the node already applied.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start on {config}: it is configuration version {found}, older than version {applied} that this node already applied (recorded in {record}); an older signed config may re-authorize keys that later versions revoked.\n  Start the node on version {applied} or newer (`connectopus config get` on a neighbour fetches the mesh's current one); to go back to older content on purpose, sign it as a new version: connectopus config sign {config} --version {next}",
    config = config.display(),
    record = record.display(),
    next = applied.saturating_add(1)
)]
pub struct RollbackError {
    /// The config file.
    pub config: PathBuf,
    /// Its version.
    pub found: u64,
    /// The highest version the node applied.
    pub applied: u64,
    /// Where that is recorded.
    pub record: PathBuf,
}

/// At start: refuses a config older than the highest version applied before, and records the
/// version otherwise.
///
/// # Errors
/// [`RollbackError`], or the record cannot be read or written.
pub fn check_rollback(config: &Path, version: u64) -> Result<()> {
    if let Some(applied) = recorded_version(config)?
        && version < applied
    {
        return Err(RollbackError {
            config: config.to_owned(),
            found: version,
            applied,
            record: version_path(config),
        }
        .into());
    }
    record_version(config, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cx-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stand-in for SSHSIG: the signature of `c` is `sig(c)`.
    fn sign(config: &[u8]) -> Vec<u8> {
        [b"sig(", config, b")"].concat()
    }

    fn verifies(config: &Path, signature: &Path) -> bool {
        match (std::fs::read(config), std::fs::read(signature)) {
            (Ok(c), Ok(s)) => s == sign(&c),
            _ => false,
        }
    }

    #[test]
    fn a_crash_at_any_step_leaves_a_pair_that_verifies() {
        let dir = scratch("crash");
        let config = dir.join("mesh.yml");
        let (old, new) = (b"version: 2".as_slice(), b"version: 3".as_slice());
        for steps in 0..=4 {
            persist_pair(&config, old, &sign(old)).unwrap();
            persist_steps(&config, new, &sign(new), steps).unwrap();
            let recovery = recover_pair(&config, verifies).unwrap();
            assert!(
                verifies(&config, &signature_path(&config)),
                "after {steps} steps ({recovery:?}) the pair does not verify"
            );
            let on_disk = std::fs::read(&config).unwrap();
            assert_eq!(on_disk, if steps >= 2 { new } else { old }, "{steps}");
            let expected = match steps {
                0 | 4 => Recovery::Clean,
                2 => Recovery::CompletedPending,
                _ => Recovery::DiscardedPending,
            };
            assert_eq!(recovery, expected, "after {steps} steps");
            assert!(!pending_signature_path(&config).exists());
            // No temp files are left either.
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["mesh.yml", "mesh.yml.sig"]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_old_write_order_could_leave_no_valid_pair() {
        // What `persist` did before: signature first, then config, no pending file. A crash
        // between the two leaves the new signature with the old config, and nothing to
        // recover from; the new order never does.
        let dir = scratch("old-order");
        let config = dir.join("mesh.yml");
        persist_pair(&config, b"v2", &sign(b"v2")).unwrap();
        replace_file(&signature_path(&config), &sign(b"v3")).unwrap();
        assert_eq!(recover_pair(&config, verifies).unwrap(), Recovery::Clean);
        assert!(!verifies(&config, &signature_path(&config)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_version_is_refused_naming_both() {
        let dir = scratch("rollback");
        let config = dir.join("mesh.yml");
        assert_eq!(recorded_version(&config).unwrap(), None);
        check_rollback(&config, 2).unwrap();
        check_rollback(&config, 3).unwrap();
        assert_eq!(recorded_version(&config).unwrap(), Some(3));
        check_rollback(&config, 3).unwrap();
        let e = check_rollback(&config, 2).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("version 3"), "{e}");
        assert!(
            e.contains("mesh.yml.version") && e.contains("--version 4"),
            "{e}"
        );
        // A refusal records nothing; a lower record never replaces a higher one.
        record_version(&config, 1).unwrap();
        assert_eq!(recorded_version(&config).unwrap(), Some(3));
        std::fs::write(version_path(&config), "garbage").unwrap();
        let e = format!("{:#}", check_rollback(&config, 5).unwrap_err());
        assert!(e.contains("does not hold a version number"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
