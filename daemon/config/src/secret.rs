//! Secrets and PEM material: written inline in the config or referenced by file path.
//!
//! Inline values never appear in `Debug`, `Display`, serialization or diagnostics. File
//! references are read only when the daemon needs them ([`Secret::resolve`]).
//!
//! Files holding confidential values (PSKs and private keys) must be private to the node: not
//! readable or writable by group or others, and owned by the user the node runs as; a PSK must
//! be at least [`MIN_PSK_LEN`] bytes. Resolved bytes are wiped from memory when dropped.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// The shortest pre-shared key accepted, in bytes (128 bits of key material at best).
pub const MIN_PSK_LEN: usize = 16;

/// What a secret slot holds; used to word messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// A DTLS pre-shared key.
    Psk,
    /// A PEM private key (`server_key`, `client_key`).
    PrivateKey,
    /// A PEM certificate or certificate chain.
    Certificate,
    /// A PEM bundle of CA certificates used to verify the other side.
    CaBundle,
}

impl SecretKind {
    /// Tells whether a value of this kind must stay confidential (PSKs and private keys).
    pub fn is_confidential(&self) -> bool {
        matches!(self, SecretKind::Psk | SecretKind::PrivateKey)
    }
}

/// Where a secret's bytes come from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config itself (and so distributed to every node).
    Inline(Arc<str>),
    /// A path on the local node, read at use time.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// A PSK or PEM value, inline or by file reference, with its inline text redacted everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    kind: SecretKind,
    source: SecretSource,
}

impl Secret {
    /// Builds an inline secret.
    pub fn inline(kind: SecretKind, value: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            source: SecretSource::Inline(value.into()),
        }
    }

    /// Builds a secret read from `path` at use time.
    pub fn file(kind: SecretKind, path: impl Into<PathBuf>) -> Self {
        Self {
            kind,
            source: SecretSource::File(path.into()),
        }
    }

    /// Returns what the secret holds.
    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    /// Returns where the bytes come from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Tells whether the value is written in the config.
    pub fn is_inline(&self) -> bool {
        matches!(self.source, SecretSource::Inline(_))
    }

    /// Returns the referenced file, for file secrets.
    pub fn file_path(&self) -> Option<&Path> {
        match &self.source {
            SecretSource::File(p) => Some(p),
            SecretSource::Inline(_) => None,
        }
    }

    /// Returns the secret bytes, reading the file for file references.
    ///
    /// # Errors
    /// The file cannot be read or is empty; a PSK or private key file is accessible to group
    /// or others or owned by another user than the caller's effective user; a PSK is shorter
    /// than [`MIN_PSK_LEN`] bytes.
    pub fn resolve(&self) -> Result<SecretBytes, SecretError> {
        let bytes = match &self.source {
            SecretSource::Inline(v) => SecretBytes(Zeroizing::new(v.as_bytes().to_vec())),
            SecretSource::File(p) => read_secret_file(p, self.kind.is_confidential())?,
        };
        if self.kind == SecretKind::Psk && bytes.0.len() < MIN_PSK_LEN {
            return Err(SecretError::ShortPsk {
                what: match &self.source {
                    SecretSource::Inline(_) => "the inline psk".to_owned(),
                    SecretSource::File(p) => format!("psk file {}", p.display()),
                },
                len: bytes.0.len(),
            });
        }
        Ok(bytes)
    }
}

/// Checks that an open file may hold a secret of this node: no permission bits for group or
/// others, and owned by the effective user of this process. `path` is for messages.
///
/// # Errors
/// [`SecretError::Exposed`], [`SecretError::Owner`], or [`SecretError::Read`] when the file
/// cannot be inspected.
pub fn check_private_file(file: &std::fs::File, path: &Path) -> Result<(), SecretError> {
    let meta = file.metadata().map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = effective_uid().map_err(|source| SecretError::Read {
        path: PathBuf::from("/proc/self/status"),
        source,
    })?;
    if meta.uid() != euid {
        return Err(SecretError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}

/// Returns the effective user id of this process (the second `Uid:` field of
/// `/proc/self/status`; this crate has no `unsafe` for `geteuid`).
pub fn effective_uid() -> std::io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| std::io::Error::other("no effective uid in /proc/self/status"))
}

/// Reads a secret file; `private` files must pass [`check_private_file`] (checked on the open
/// file, so the file checked is the file read).
fn read_secret_file(path: &Path, private: bool) -> Result<SecretBytes, SecretError> {
    let read_error = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    if private {
        check_private_file(&file, path)?;
    }
    // Sized up front so the buffer is not reallocated, which would leave copies behind.
    let len = file.metadata().map_err(read_error)?.len();
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(len).unwrap_or(0).saturating_add(1),
    ));
    file.read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(SecretBytes(bytes))
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::Inline(_) => f.write_str("<inline, redacted>"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Resolved secret bytes, wiped from memory when dropped; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Returns the bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        /// The file named in the config.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is empty.
    #[error("secret file {} is empty", path.display())]
    Empty {
        /// The file named in the config.
        path: PathBuf,
    },
    /// A PSK or private key file that group or others may access.
    #[error(
        "secret file {} is accessible to group or others (mode {mode:04o}); it must be private to the node: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PSK or private key file owned by another user than the node's.
    #[error(
        "secret file {} is owned by uid {owner}, not by the node's user (uid {euid}): whoever owns it can change the node's keys; chown it to uid {euid}",
        path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user id of the node.
        euid: u32,
    },
    /// A pre-shared key too short to resist guessing.
    #[error(
        "{what} holds {len} bytes; a PSK must be at least {MIN_PSK_LEN} bytes (make one with: head -c 32 /dev/urandom | base64)"
    )]
    ShortPsk {
        /// `psk file <path>` or `the inline psk`.
        what: String,
        /// Its length.
        len: usize,
    },
}

macro_rules! secret_de {
    ($inline:ident, $file:ident, $kind:expr) => {
        pub(crate) fn $inline<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
            let s = String::deserialize(d)?;
            Ok(Some(Secret::inline($kind, s)))
        }

        pub(crate) fn $file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
            let s = PathBuf::deserialize(d)?;
            Ok(Some(Secret::file($kind, s)))
        }
    };
}

/// Deserializers for the `X` / `X_file` pairs, one per kind.
pub(crate) mod de {
    use super::*;

    secret_de!(psk, psk_file, SecretKind::Psk);
    secret_de!(key, key_file, SecretKind::PrivateKey);
    secret_de!(cert, cert_file, SecretKind::Certificate);
    secret_de!(ca, ca_file, SecretKind::CaBundle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_inline_values() {
        let s = Secret::inline(SecretKind::Psk, "hunter2 hunter2 hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let b = s.resolve().unwrap();
        assert_eq!(b.expose(), b"hunter2 hunter2 hunter2");
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn file_errors_name_the_file() {
        let s = Secret::file(SecretKind::PrivateKey, "/nonexistent/connectopus/key.pem");
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/connectopus/key.pem"), "{e}");
    }

    /// A scratch directory with one file per case.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("cx-secret-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PSK: &[u8] = b"correct horse battery staple";

    #[test]
    fn a_private_psk_file_resolves() {
        let dir = Scratch::new("ok");
        let path = dir.file("link.psk", PSK, 0o600);
        let b = Secret::file(SecretKind::Psk, &path).resolve().unwrap();
        assert_eq!(b.expose(), PSK);
        let path = dir.file("owner-only.psk", PSK, 0o400);
        assert!(Secret::file(SecretKind::Psk, &path).resolve().is_ok());
    }

    #[test]
    fn group_or_world_accessible_psk_and_key_files_are_refused() {
        let dir = Scratch::new("mode");
        for (kind, mode) in [
            (SecretKind::Psk, 0o644),
            (SecretKind::Psk, 0o640),
            (SecretKind::Psk, 0o604),
            (SecretKind::PrivateKey, 0o644),
            (SecretKind::PrivateKey, 0o620),
        ] {
            let path = dir.file(&format!("s{mode:o}"), PSK, mode);
            let e = Secret::file(kind, &path).resolve().unwrap_err();
            assert!(
                matches!(e, SecretError::Exposed { .. }),
                "{kind:?} {mode:o}: {e}"
            );
            let m = e.to_string();
            assert!(m.contains(&path.display().to_string()), "{m}");
            assert!(m.contains(&format!("mode 0{mode:o}")), "{m}");
            assert!(m.contains("chmod 600"), "{m}");
        }
        // Certificates and CA bundles are public: their mode does not matter.
        let cert = dir.file("ca.pem", b"-----BEGIN CERTIFICATE-----", 0o644);
        assert!(Secret::file(SecretKind::CaBundle, &cert).resolve().is_ok());
        assert!(
            Secret::file(SecretKind::Certificate, &cert)
                .resolve()
                .is_ok()
        );
    }

    #[test]
    fn a_secret_file_owned_by_another_user_is_refused() {
        if effective_uid().unwrap() != 0 {
            eprintln!("skipped: needs root to give a file to another user");
            return;
        }
        let dir = Scratch::new("owner");
        let path = dir.file("link.psk", PSK, 0o600);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let e = Secret::file(SecretKind::Psk, &path).resolve().unwrap_err();
        assert!(
            matches!(
                e,
                SecretError::Owner {
                    owner: 65534,
                    euid: 0,
                    ..
                }
            ),
            "{e}"
        );
        let m = e.to_string();
        assert!(
            m.contains(&path.display().to_string()) && m.contains("uid 65534"),
            "{m}"
        );
        let key = dir.file("server.key", b"-----BEGIN PRIVATE KEY-----", 0o600);
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let e = Secret::file(SecretKind::PrivateKey, &key)
            .resolve()
            .unwrap_err();
        assert!(matches!(e, SecretError::Owner { .. }), "{e}");
    }

    #[test]
    fn psks_shorter_than_16_bytes_are_refused() {
        let dir = Scratch::new("short");
        let path = dir.file("short.psk", b"fifteen bytes!!", 0o600);
        let e = Secret::file(SecretKind::Psk, &path).resolve().unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, SecretError::ShortPsk { len: 15, .. }), "{m}");
        assert!(
            m.contains(&path.display().to_string()) && m.contains("at least 16"),
            "{m}"
        );
        let path = dir.file("sixteen.psk", b"sixteen bytes!!!", 0o600);
        assert!(Secret::file(SecretKind::Psk, &path).resolve().is_ok());
        let e = Secret::inline(SecretKind::Psk, "short")
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("inline psk holds 5 bytes"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "the message leaks the PSK: {e}"
        );
    }
}
