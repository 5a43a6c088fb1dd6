//! `connectopus config edit`, and the private scratch directory it edits in.
//!
//! The running configuration is written into a fresh directory made by `mkdtemp(3)`: an
//! unpredictable name, created atomically with mode 0700 (it fails rather than reuse anything
//! that already exists), so another local user can neither pre-create it, nor plant a symlink
//! in its place, nor read or swap the file while the editor has it open. The file itself is
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{config_cli, control};

/// A directory only this user can enter, removed with its contents when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `<parent>/<prefix>XXXXXX` with `mkdtemp(3)`: a random suffix, mode 0700, and
    /// an error (never reuse) if the name exists, as a directory, a file or a symlink.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(parent: &Path, prefix: &str) -> Result<PrivateDir> {
        let mut template = parent.as_os_str().as_bytes().to_vec();
        template.push(b'/');
        template.extend_from_slice(prefix.as_bytes());
        template.extend_from_slice(b"XXXXXX");
        let template = CString::new(template)
            .with_context(|| format!("{} contains a NUL byte", parent.display()))?;
        let mut raw = template.into_bytes_with_nul();
        // SAFETY: `raw` is a NUL-terminated, writable buffer ending in "XXXXXX\0", as mkdtemp
        // requires; it only rewrites those six bytes in place and returns either null or a
        // pointer into `raw`, which we do not keep.
        let made = unsafe { libc::mkdtemp(raw.as_mut_ptr().cast::<libc::c_char>()) };
        if made.is_null() {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating a private directory in {}", parent.display()));
        }
        raw.pop(); // the NUL
        Ok(PrivateDir {
            path: PathBuf::from(OsString::from_vec(raw)),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` with mode 0600 and writes `bytes`; fails if anything (a file, a symlink)
/// is already there.
///
/// # Errors
/// The file exists or cannot be written.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `config edit`: get, edit, and if changed, sign and set.
pub fn edit_config(socket: &Path, key: config_cli::KeyArgs) -> Result<ExitCode> {
    let config = match control::request(socket, &control::ControlRequest::GetConfig)? {
        control::ControlReply::Config { config, .. } => config,
        control::ControlReply::Error(message) => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    let dir = PrivateDir::new(&std::env::temp_dir(), "connectopus-edit-")?;
    let file = dir.path().join("mesh.yml");
    write_new_private(&file, config.as_bytes())?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_owned());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .with_context(|| format!("running {editor}"))?;
    anyhow::ensure!(status.success(), "{editor} exited with {status}");
    let edited =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    if edited == config {
        println!("configuration unchanged; not updating");
        return Ok(ExitCode::SUCCESS);
    }
    let signed = config_cli::config_sign(&config_cli::SignArgs {
        file: file.clone(),
        key,
        version: None,
        force: false,
    })?;
    if signed != ExitCode::SUCCESS {
        return Ok(signed);
    }
    let sig_path = config_cli::signature_path(&file);
    let request = control::ControlRequest::SetConfig {
        config: std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?,
        signature: std::fs::read_to_string(&sig_path)
            .with_context(|| format!("reading {}", sig_path.display()))?,
    };
    match control::request(socket, &request)? {
        control::ControlReply::Accepted { version } => {
            println!("configuration version {version} accepted; it spreads through the mesh");
            Ok(ExitCode::SUCCESS)
        }
        control::ControlReply::Error(message) => {
            eprintln!("refused: {message}");
            Ok(ExitCode::FAILURE)
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cx-edit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn private_dirs_are_0700_unpredictable_and_removed() {
        let parent = scratch("dirs");
        let a = PrivateDir::new(&parent, "x-").unwrap();
        let b = PrivateDir::new(&parent, "x-").unwrap();
        assert_ne!(a.path(), b.path());
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        let name = a.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("x-") && name.len() == 8, "{name}");
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
        drop(b);
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn private_files_are_0600_and_never_follow_or_reuse() {
        let parent = scratch("files");
        let file = parent.join("f");
        write_new_private(&file, b"one").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert!(write_new_private(&file, b"two").is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"one");
        let victim = parent.join("victim");
        let link = parent.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_new_private(&link, b"three").is_err());
        assert!(!victim.exists(), "followed a dangling symlink");
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
