//! The node key: an ed25519 key kept on the node (never in the mesh config), in OpenSSH
//! private key format so `ssh-keygen -t ed25519` can make one too; and `connectopus identity`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use zeroize::Zeroizing;

/// Where a node keeps its key by default: `/var/lib/connectopus/<id>/identity.key`.
pub fn default_key_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/connectopus/{id}/identity.key"))
}

/// `connectopus identity ...`.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Creates a node key (OpenSSH ed25519, mode 0600) and prints its public line.
    New {
        /// The key file [default: /var/lib/connectopus/<id>/identity.key].
        #[arg(long)]
        file: Option<PathBuf>,
        /// The node's name (for the default path and the key comment).
        #[arg(long)]
        id: Option<String>,
        /// Replaces an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Prints the public half of a node key (`ssh-ed25519 AAAA… name`), to paste into the
    /// node's `identity` in the mesh config.
    Show {
        /// The key file [default: /var/lib/connectopus/<id>/identity.key].
        #[arg(long)]
        file: Option<PathBuf>,
        /// The node's name (for the default path).
        #[arg(long)]
        id: Option<String>,
    },
}

/// Runs `connectopus identity`.
///
/// # Errors
/// The key file cannot be written or read.
pub fn run(command: IdentityCommand) -> Result<ExitCode> {
    match command {
        IdentityCommand::New { file, id, force } => {
            let path = key_path(file, id.as_deref())?;
            if path.exists() && !force {
                bail!(
                    "{} already exists; use --force to replace it",
                    path.display()
                );
            }
            let comment = id.unwrap_or_else(|| "connectopus-node".to_owned());
            let line = create(&path, &comment)?;
            println!("{line}");
            eprintln!(
                "wrote {}; put the line above in nodes.<name>.identity",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        IdentityCommand::Show { file, id } => {
            let path = key_path(file, id.as_deref())?;
            let key = load(&path)?;
            println!("{}", public_line(&key)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key_path(file: Option<PathBuf>, id: Option<&str>) -> Result<PathBuf> {
    match (file, id) {
        (Some(file), _) => Ok(file),
        (None, Some(id)) => Ok(default_key_path(id)),
        (None, None) => bail!("say which key: --file PATH or --id NAME"),
    }
}

/// Creates a new ed25519 key at `path` (0600, its directory made 0700 if missing) and returns
/// its public line.
///
/// # Errors
/// The file cannot be written.
pub fn create(path: &Path, comment: &str) -> Result<String> {
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .context("generating an ed25519 key")?;
    key.set_comment(comment);
    let pem = key.to_openssh(LineEnding::LF).context("encoding the key")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    // A replaced key (--force) may have had a looser mode: start from a fresh file.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            // The mode given to open is filtered by the umask; 0600 exactly.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", path.display()))?;
    public_line(&key)
}

/// Reads a node key: an unencrypted OpenSSH ed25519 private key, in a file private to the
/// node (mode 0600 or stricter, owned by the node's user).
///
/// # Errors
/// Unreadable, accessible to group or others, owned by another user, encrypted, or not
/// ed25519.
pub fn load(path: &Path) -> Result<PrivateKey> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("reading the node key {}", path.display()))?;
    connectopus_config::secret::check_private_file(&file, path)
        .with_context(|| format!("refusing the node key {}", path.display()))?;
    let mut text = Zeroizing::new(String::with_capacity(4096));
    file.read_to_string(&mut text)
        .with_context(|| format!("reading the node key {}", path.display()))?;
    let key = PrivateKey::from_openssh(text.as_bytes())
        .with_context(|| format!("reading the node key {}", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{}: the node key must not have a passphrase",
            path.display()
        );
    }
    if key.algorithm() != Algorithm::Ed25519 {
        bail!(
            "{}: the node key must be ed25519 (ssh-keygen -t ed25519), not {}",
            path.display(),
            key.algorithm()
        );
    }
    Ok(key)
}

/// Returns the 32-byte ed25519 seed of a node key (wiped when dropped).
///
/// # Errors
/// The key is not ed25519.
pub fn seed(key: &PrivateKey) -> Result<Zeroizing<[u8; 32]>> {
    match key.key_data().ed25519() {
        Some(pair) => Ok(Zeroizing::new(pair.private.to_bytes())),
        None => bail!("the node key is not ed25519"),
    }
}

/// Returns the public line `ssh-ed25519 AAAA… comment`.
///
/// # Errors
/// The key cannot be encoded.
pub fn public_line(key: &PrivateKey) -> Result<String> {
    key.public_key()
        .to_openssh()
        .context("encoding the public key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_reloadable_and_ed25519() {
        let dir = std::env::temp_dir().join(format!("cx-identity-{}", std::process::id()));
        let path = dir.join("identity.key");
        let line = create(&path, "foo").unwrap();
        assert!(
            line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" foo"),
            "{line}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let key = load(&path).unwrap();
        assert_eq!(public_line(&key).unwrap(), line);
        assert_eq!(seed(&key).unwrap().len(), 32);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_directory_is_created_0700() {
        let dir = std::env::temp_dir().join(format!("cx-identity-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("node").join("identity.key");
        create(&path, "foo").unwrap();
        for d in [dir.join("node"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_key_readable_by_others_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("cx-identity-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("identity.key");
        create(&path, "foo").unwrap();
        for mode in [0o644, 0o640, 0o660, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = format!("{:#}", load(&path).unwrap_err());
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("mode 0{mode:o}")), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).is_ok());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = format!("{:#}", load(&path).unwrap_err());
            assert!(e.contains("owned by uid 65534"), "{e}");
        } else {
            eprintln!("skipped the owner case: needs root");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
