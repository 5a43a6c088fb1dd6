//! Secrets and PEM material: written inline in the config or referenced by file path.
//!
//! Inline values never appear in `Debug`, `Display`, serialization or diagnostics. File
//! references are read only when the daemon needs them ([`Secret::resolve`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub fn resolve(&self) -> Result<SecretBytes, SecretError> {
        match &self.source {
            SecretSource::Inline(v) => Ok(SecretBytes(v.as_bytes().to_vec())),
            SecretSource::File(p) => match std::fs::read(p) {
                Ok(bytes) if bytes.is_empty() => Err(SecretError::Empty { path: p.clone() }),
                Ok(bytes) => Ok(SecretBytes(bytes)),
                Err(source) => Err(SecretError::Read {
                    path: p.clone(),
                    source,
                }),
            },
        }
    }
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

/// Resolved secret bytes; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

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
        let s = Secret::inline(SecretKind::Psk, "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let b = s.resolve().unwrap();
        assert_eq!(b.expose(), b"hunter2");
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn file_errors_name_the_file() {
        let s = Secret::file(SecretKind::PrivateKey, "/nonexistent/connectopus/key.pem");
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/connectopus/key.pem"), "{e}");
    }
}
