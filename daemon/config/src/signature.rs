//! Config signatures: OpenSSH SSHSIG, namespace `connectopus`, SHA-512, over the exact bytes
//! of the YAML file.
//!
//! Storage is the armored form `ssh-keygen -Y sign` writes (`-----BEGIN SSH SIGNATURE-----`),
//! so `ssh-keygen -Y verify -n connectopus` checks our files as they are. [`verify`] also
//! accepts the upstream Go form: the raw SSHSIG blob as base64url without padding.
//!
//! Verification checks, in order: the blob is well formed, its namespace is `connectopus`, its
//! hash is sha512, the key inside it is not revoked, that key is one of the authorized keys
//! (upstream skipped this), its signature algorithm is acceptable, and the signature matches
//! the bytes.

use std::fmt;
use std::path::{Path, PathBuf};

use ssh_encoding::base64::{Base64, Base64UrlUnpadded, Encoding};
use ssh_encoding::{Decode, Encode, LineEnding};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, SshSig};

use crate::agent::{AgentClient, AgentError, Identity, SSH_AGENT_RSA_SHA2_512, WireReader};
use crate::types::SshPublicKey;

/// The SSHSIG namespace of config signatures (`ssh-keygen -Y ... -n connectopus`).
pub const NAMESPACE: &str = "connectopus";

/// The only SSHSIG hash accepted and produced.
pub const HASH: &str = "sha512";

const PEM_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const PEM_END: &str = "-----END SSH SIGNATURE-----";

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The text is not an SSH signature at all, or its structure is wrong.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature ends early (a cut-off file or copy-paste).
    #[error("truncated signature: {0}")]
    Truncated(String),
    /// The signature was made for another namespace.
    #[error(
        "signature is for namespace `{found}`, not `{NAMESPACE}` (sign with `ssh-keygen -Y sign -n {NAMESPACE}` or `connectopus config sign`)"
    )]
    WrongNamespace {
        /// The namespace in the signature.
        found: String,
    },
    /// The signature hashes the data with something other than sha512.
    #[error("signature uses hash `{found}`; only `{HASH}` is accepted")]
    UnsupportedHash {
        /// The hash named in the signature.
        found: String,
    },
    /// The signature algorithm is not acceptable for the key (RSA with SHA-1).
    #[error(
        "signature algorithm `{found}` is not accepted (RSA keys must sign rsa-sha2-512 or rsa-sha2-256)"
    )]
    UnsupportedAlgorithm {
        /// The signature algorithm.
        found: String,
    },
    /// The signing key is not in `authorized_keys`.
    #[error("signed by {key_type} key {fingerprint}, which is not in global.authorized_keys")]
    NotAuthorized {
        /// SHA-256 fingerprint of the signing key, as `ssh-keygen -l` prints it.
        fingerprint: String,
        /// The signing key's type.
        key_type: String,
    },
    /// The signing key is in `revoked_keys`.
    #[error("signed by key {fingerprint}, which is listed in global.revoked_keys")]
    Revoked {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// The key is authorized but the signature does not match the bytes.
    #[error(
        "bad signature by {fingerprint}: it does not match the file (the file changed after it was signed)"
    )]
    BadSignature {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
    },
}

/// Who signed a configuration that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBy {
    /// The matching `authorized_keys` entry, as written in the config (with its comment).
    pub key: SshPublicKey,
    /// SHA-256 fingerprint of the key, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The signature algorithm, such as `ssh-ed25519` or `rsa-sha2-512`.
    pub algorithm: String,
}

impl fmt::Display for VerifiedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key.key_type(), self.fingerprint)?;
        if let Some(comment) = self.key.comment() {
            write!(f, " ({comment})")?;
        }
        Ok(())
    }
}

/// A parsed config signature: a well-formed SSHSIG blob with namespace `connectopus` and hash
/// sha512. Parsing does not check who signed or what.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSignature {
    sig: SshSig,
}

impl fmt::Debug for ConfigSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSignature")
            .field("signer", &self.fingerprint())
            .field("algorithm", &self.algorithm())
            .finish()
    }
}

impl ConfigSignature {
    /// Parses either storage form: armored `-----BEGIN SSH SIGNATURE-----` text, or the raw
    /// blob as base64url without padding (upstream). Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<ConfigSignature, SignatureError> {
        let blob = decode_text(text)?;
        Ok(ConfigSignature {
            sig: decode_blob(&blob, NAMESPACE)?,
        })
    }

    /// Returns the armored form, as `ssh-keygen -Y sign` writes it (with a final newline).
    pub fn to_armored(&self) -> String {
        // Encoding an in-memory signature cannot fail short of allocation failure.
        self.sig.to_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Returns the upstream form: the raw SSHSIG blob as base64url without padding.
    pub fn to_base64url(&self) -> String {
        let mut blob = Vec::new();
        match self.sig.encode(&mut blob) {
            Ok(()) => Base64UrlUnpadded::encode_string(&blob),
            Err(_) => String::new(),
        }
    }

    /// Returns the signing key as `type base64` (no comment).
    pub fn signer(&self) -> SshPublicKey {
        SshPublicKey(key_line(self.sig.public_key()))
    }

    /// Returns the SHA-256 fingerprint of the signing key (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        self.sig
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Returns the signature algorithm, such as `ssh-ed25519` or `rsa-sha2-512`.
    pub fn algorithm(&self) -> String {
        self.sig.algorithm().to_string()
    }
}

/// Verifies `signature_text` over `bytes`: the signing key must be in `authorized_keys`, not in
/// `revoked_keys`, and the signature must match.
///
/// At startup a node passes its config's own key lists (trust on first use); for an update it
/// passes the keys of the config it is running.
pub fn verify(
    bytes: &[u8],
    signature_text: &str,
    authorized_keys: &[SshPublicKey],
    revoked_keys: &[SshPublicKey],
) -> Result<VerifiedBy, SignatureError> {
    let parsed = ConfigSignature::parse(signature_text)?;
    let signer = parsed.signer();
    let fingerprint = parsed.fingerprint();
    if revoked_keys.iter().any(|k| k.same_key(&signer)) {
        return Err(SignatureError::Revoked { fingerprint });
    }
    let Some(authorized) = authorized_keys.iter().find(|k| k.same_key(&signer)) else {
        return Err(SignatureError::NotAuthorized {
            fingerprint,
            key_type: signer.key_type().to_owned(),
        });
    };
    let sig = &parsed.sig;
    if let Algorithm::Rsa { hash: None } = sig.algorithm() {
        return Err(SignatureError::UnsupportedAlgorithm {
            found: sig.algorithm().to_string(),
        });
    }
    PublicKey::from(sig.public_key().clone())
        .verify(NAMESPACE, bytes, sig)
        .map_err(|_| SignatureError::BadSignature {
            fingerprint: fingerprint.clone(),
        })?;
    Ok(VerifiedBy {
        key: authorized.clone(),
        fingerprint,
        algorithm: parsed.algorithm(),
    })
}

/// Turns either text form into the raw blob.
fn decode_text(text: &str) -> Result<Vec<u8>, SignatureError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SignatureError::Malformed("the signature is empty".into()));
    }
    if text.starts_with("-----BEGIN") {
        let first = text.lines().next().unwrap_or_default().trim_end();
        if first != PEM_BEGIN {
            return Err(SignatureError::Malformed(format!(
                "expected `{PEM_BEGIN}`, found `{first}`"
            )));
        }
        if !text.contains(PEM_END) {
            return Err(SignatureError::Truncated(format!("no `{PEM_END}` line")));
        }
        // De-armor by hand: any line width (ssh-keygen wraps at 70, other tools at 64 or 76).
        let mut lines = text.lines().map(str::trim);
        lines.next();
        let mut body = String::new();
        for line in lines.by_ref() {
            if line == PEM_END {
                break;
            }
            body.push_str(line);
        }
        if lines.any(|l| !l.is_empty()) {
            return Err(SignatureError::Malformed(format!("text after `{PEM_END}`")));
        }
        return Base64::decode_vec(&body).map_err(|_| {
            undecodable(
                &body,
                |t| Base64::decode_vec(t).ok(),
                "base64 inside the armor",
            )
        });
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(SignatureError::Malformed(format!(
            "neither `{PEM_BEGIN}` armor nor base64url text (found {c:?})"
        )));
    }
    Base64UrlUnpadded::decode_vec(text)
        .map_err(|_| undecodable(text, |t| Base64UrlUnpadded::decode_vec(t).ok(), "base64url"))
}

/// Classifies base64 text that does not decode: when a whole-quantum prefix of it decodes
/// into the start of an SSHSIG blob that ends early, the text was cut off; otherwise it is
/// malformed.
fn undecodable(text: &str, decode: impl Fn(&str) -> Option<Vec<u8>>, what: &str) -> SignatureError {
    // The last quantum may hold padding or non-canonical bits where the text was cut.
    let whole = text.len() - text.len() % 4;
    for cut in [whole, whole.saturating_sub(4)] {
        if let Some(blob) = text.get(..cut).and_then(&decode)
            && blob.starts_with(b"SSHSIG")
            && let Err(e @ SignatureError::Truncated(_)) = check_blob(&blob)
        {
            return e;
        }
    }
    SignatureError::Malformed(format!("invalid {what}"))
}

/// Decodes a raw SSHSIG blob made for `namespace` (sha512), with the checks of
/// [`ConfigSignature::parse`]; tokens use it with their own namespace.
pub(crate) fn decode_blob(blob: &[u8], namespace: &str) -> Result<SshSig, SignatureError> {
    check_blob_in(blob, namespace)?;
    SshSig::decode(&mut &blob[..])
        .map_err(|e| SignatureError::Malformed(format!("SSHSIG blob: {e}")))
}

/// Checks the SSHSIG header fields (PROTOCOL.sshsig §2) before the full decode, so that the
/// errors say exactly what is wrong.
fn check_blob(blob: &[u8]) -> Result<(), SignatureError> {
    check_blob_in(blob, NAMESPACE)
}

fn check_blob_in(blob: &[u8], expected_namespace: &str) -> Result<(), SignatureError> {
    let mut r = WireReader::new(blob);
    let truncated = |r: &WireReader<'_>, field: &str| {
        SignatureError::Truncated(format!(
            "the blob ends after {} bytes, inside the {field}",
            r.consumed()
        ))
    };
    let Some(magic) = r.take(6) else {
        return Err(truncated(&r, "magic preamble"));
    };
    if magic != b"SSHSIG" {
        return Err(SignatureError::Malformed(
            "not an SSHSIG blob (no `SSHSIG` preamble)".into(),
        ));
    }
    let version = r.u32().ok_or_else(|| truncated(&r, "version"))?;
    if version != 1 {
        return Err(SignatureError::Malformed(format!(
            "SSHSIG version {version} is not supported (expected 1)"
        )));
    }
    let public_key = r.string().ok_or_else(|| truncated(&r, "public key"))?;
    let namespace = r.string().ok_or_else(|| truncated(&r, "namespace"))?;
    let _reserved = r.string().ok_or_else(|| truncated(&r, "reserved field"))?;
    let hash = r.string().ok_or_else(|| truncated(&r, "hash algorithm"))?;
    let signature = r.string().ok_or_else(|| truncated(&r, "signature"))?;
    if !r.is_empty() {
        return Err(SignatureError::Malformed(
            "trailing bytes after the signature".into(),
        ));
    }
    if namespace != expected_namespace.as_bytes() {
        return Err(SignatureError::WrongNamespace {
            found: String::from_utf8_lossy(namespace).into_owned(),
        });
    }
    if hash != HASH.as_bytes() {
        return Err(SignatureError::UnsupportedHash {
            found: String::from_utf8_lossy(hash).into_owned(),
        });
    }
    KeyData::decode(&mut &public_key[..])
        .map_err(|e| SignatureError::Malformed(format!("public key in the signature: {e}")))?;
    ssh_key::Signature::try_from(signature)
        .map_err(|e| SignatureError::Malformed(format!("signature value: {e}")))?;
    Ok(())
}

/// Formats key data as `type base64`.
fn key_line(key: &KeyData) -> String {
    PublicKey::from(key.clone())
        .to_openssh()
        .unwrap_or_default()
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The key file could not be read.
    #[error("reading key file {}: {source}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not an OpenSSH private key.
    #[error("{}: {reason}", path.display())]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file is protected by a passphrase.
    #[error(
        "{} is encrypted with a passphrase; load it into ssh-agent (`ssh-add {}`) and sign with --text instead of --key",
        path.display(), path.display()
    )]
    EncryptedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The agent could not be used.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent holds no keys.
    #[error("ssh-agent holds no keys; add one with `ssh-add`")]
    NoAgentKeys,
    /// No agent key matches `--text`.
    #[error("no ssh-agent key contains {text:?}; the agent holds:\n{}", candidates.join("\n"))]
    NoMatchingKey {
        /// The `--text` filter.
        text: String,
        /// Every agent key, one line each.
        candidates: Vec<String>,
    },
    /// Several agent keys match (or no `--text` was given and the agent holds several).
    #[error("{} ssh-agent keys match{}; pick one with --text:\n{}",
        candidates.len(),
        text.as_ref().map(|t| format!(" {t:?}")).unwrap_or_default(),
        candidates.join("\n"))]
    AmbiguousKey {
        /// The `--text` filter, if any.
        text: Option<String>,
        /// The matching keys, one line each.
        candidates: Vec<String>,
    },
    /// The key cannot make the signature (unsupported algorithm, hardware key, ...).
    #[error("signing with the {algorithm} key failed: {reason}")]
    Signing {
        /// The key algorithm.
        algorithm: String,
        /// What failed.
        reason: String,
    },
}

enum KeySource {
    File(Box<PrivateKey>),
    Agent(Box<AgentKey>),
}

struct AgentKey {
    client: std::cell::RefCell<AgentClient>,
    identity: Identity,
}

/// A key that can sign configs: a private key file or a key held by ssh-agent.
///
/// Its `Debug` output shows the public key only.
pub struct ConfigSigner {
    source: KeySource,
    public: PublicKey,
}

impl fmt::Debug for ConfigSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSigner")
            .field(
                "source",
                &match self.source {
                    KeySource::File(_) => "file",
                    KeySource::Agent(_) => "ssh-agent",
                },
            )
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl ConfigSigner {
    /// Loads an unencrypted OpenSSH private key file (ed25519, ECDSA or RSA).
    pub fn from_key_file(path: &Path) -> Result<ConfigSigner, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::ReadKey {
            path: path.to_owned(),
            source,
        })?;
        let format = |reason: &str| SignError::KeyFormat {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = text.trim_start();
        if !trimmed.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            if PublicKey::from_openssh(trimmed.trim()).is_ok() {
                return Err(format(
                    "this is a public key; --key needs the private key file (without .pub)",
                ));
            }
            if trimmed.starts_with("-----BEGIN") && trimmed.contains("PRIVATE KEY-----") {
                return Err(format(
                    "not in OpenSSH format; convert it with `ssh-keygen -p -f FILE` (rewrites it in OpenSSH format) or load it into ssh-agent",
                ));
            }
            return Err(format("not an OpenSSH private key"));
        }
        let key = PrivateKey::from_openssh(trimmed)
            .map_err(|e| format(&format!("unreadable OpenSSH private key: {e}")))?;
        if key.is_encrypted() {
            return Err(SignError::EncryptedKey {
                path: path.to_owned(),
            });
        }
        let public = key.public_key().clone();
        Ok(ConfigSigner {
            source: KeySource::File(Box::new(key)),
            public,
        })
    }

    /// Picks a key from the agent at `$SSH_AUTH_SOCK`; see [`ConfigSigner::from_agent`].
    pub fn from_env_agent(text: Option<&str>) -> Result<ConfigSigner, SignError> {
        Self::with_agent(AgentClient::from_env()?, text)
    }

    /// Picks the one agent key whose authorized_keys line (`type base64 comment`) contains
    /// `text`; without `text`, the agent must hold exactly one key.
    pub fn from_agent(socket: &Path, text: Option<&str>) -> Result<ConfigSigner, SignError> {
        Self::with_agent(AgentClient::connect(socket)?, text)
    }

    fn with_agent(mut client: AgentClient, text: Option<&str>) -> Result<ConfigSigner, SignError> {
        let identities = client.identities()?;
        if identities.is_empty() {
            return Err(SignError::NoAgentKeys);
        }
        let describe = |i: &Identity| describe_key(&i.key);
        let mut matching: Vec<&Identity> = identities
            .iter()
            .filter(|i| text.is_none_or(|t| i.authorized_keys_line().contains(t)))
            .collect();
        match (matching.len(), text) {
            (0, Some(t)) => Err(SignError::NoMatchingKey {
                text: t.to_owned(),
                candidates: identities.iter().map(describe).collect(),
            }),
            (1, _) => {
                let identity = matching.remove(0).clone();
                Ok(ConfigSigner {
                    public: identity.key.clone(),
                    source: KeySource::Agent(Box::new(AgentKey {
                        client: std::cell::RefCell::new(client),
                        identity,
                    })),
                })
            }
            _ => Err(SignError::AmbiguousKey {
                text: text.map(str::to_owned),
                candidates: matching.into_iter().map(describe).collect(),
            }),
        }
    }

    /// Returns the public key as an authorized_keys line, with the key's comment.
    pub fn authorized_keys_line(&self) -> SshPublicKey {
        SshPublicKey(self.public.to_openssh().unwrap_or_default())
    }

    /// Returns the SHA-256 fingerprint of the key (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Returns a one-line description: type, fingerprint and comment.
    pub fn describe(&self) -> String {
        describe_key(&self.public)
    }

    /// Signs `bytes` (SSHSIG, namespace `connectopus`, sha512; RSA keys sign rsa-sha2-512).
    /// The result is verified against the public key before it is returned.
    pub fn sign(&self, bytes: &[u8]) -> Result<ConfigSignature, SignError> {
        Ok(ConfigSignature {
            sig: self.sign_in(NAMESPACE, bytes)?,
        })
    }

    /// Signs `bytes` as SSHSIG in `namespace` (sha512; RSA keys sign rsa-sha2-512), and
    /// checks the result against the public key.
    pub(crate) fn sign_in(&self, namespace: &str, bytes: &[u8]) -> Result<SshSig, SignError> {
        let algorithm = self.public.algorithm().to_string();
        let failed = |reason: String| SignError::Signing {
            algorithm: algorithm.clone(),
            reason,
        };
        let sig = match &self.source {
            KeySource::File(key) => match key.key_data().rsa() {
                // ssh-key 0.6.7 builds its RSA private key from (p, p) instead of (p, q), so
                // its RSA signing always fails; sign RSA through the `rsa` crate directly.
                Some(rsa_key) => {
                    let data = SshSig::signed_data(namespace, HashAlg::Sha512, bytes)
                        .map_err(|e| failed(e.to_string()))?;
                    let signature = rsa_sha2_512(rsa_key, &data).map_err(failed)?;
                    SshSig::new(
                        self.public.key_data().clone(),
                        namespace,
                        HashAlg::Sha512,
                        signature,
                    )
                    .map_err(|e| failed(e.to_string()))?
                }
                None => key
                    .sign(namespace, HashAlg::Sha512, bytes)
                    .map_err(|e| failed(e.to_string()))?,
            },
            KeySource::Agent(agent) => {
                let data = SshSig::signed_data(namespace, HashAlg::Sha512, bytes)
                    .map_err(|e| failed(e.to_string()))?;
                let flags = if matches!(self.public.algorithm(), Algorithm::Rsa { .. }) {
                    SSH_AGENT_RSA_SHA2_512
                } else {
                    0
                };
                let signature = agent
                    .client
                    .borrow_mut()
                    .sign(&agent.identity, &data, flags)?;
                SshSig::new(
                    self.public.key_data().clone(),
                    namespace,
                    HashAlg::Sha512,
                    signature,
                )
                .map_err(|e| failed(e.to_string()))?
            }
        };
        if let Algorithm::Rsa { hash } = sig.algorithm()
            && hash != Some(HashAlg::Sha512)
        {
            return Err(failed(format!(
                "expected an rsa-sha2-512 signature, got {}",
                sig.algorithm()
            )));
        }
        self.public
            .verify(namespace, bytes, &sig)
            .map_err(|e| failed(format!("the new signature does not verify: {e}")))?;
        Ok(sig)
    }
}

/// Signs `data` with an RSA key as `rsa-sha2-512` (PKCS#1 v1.5 over SHA-512), with blinding.
fn rsa_sha2_512(
    key: &ssh_key::private::RsaKeypair,
    data: &[u8],
) -> Result<ssh_key::Signature, String> {
    use rsa::signature::{RandomizedSigner, SignatureEncoding};
    use rsa::traits::PublicKeyParts;
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or_else(|| "RSA key component is not a positive integer".to_owned())
    };
    let private = rsa::RsaPrivateKey::from_components(
        int(&key.public.n)?,
        int(&key.public.e)?,
        int(&key.private.d)?,
        vec![int(&key.private.p)?, int(&key.private.q)?],
    )
    .map_err(|e| format!("invalid RSA key: {e}"))?;
    if private.size() * 8 < 2048 {
        return Err("RSA keys shorter than 2048 bits are not accepted".to_owned());
    }
    let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha512>::new(private);
    let signature = signer
        .try_sign_with_rng(&mut ssh_key::rand_core::OsRng, data)
        .map_err(|e| format!("RSA signing failed: {e}"))?;
    ssh_key::Signature::new(
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        signature.to_vec(),
    )
    .map_err(|e| e.to_string())
}

/// `type SHA256:fingerprint comment`, for messages and candidate lists.
fn describe_key(key: &PublicKey) -> String {
    let mut s = format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256));
    if !key.comment().is_empty() {
        s.push(' ');
        s.push_str(key.comment());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_are_malformed() {
        for text in [
            "",
            "   \n",
            "hello world",
            "-----BEGIN PGP SIGNATURE-----\nxx\n",
        ] {
            assert!(
                matches!(
                    ConfigSignature::parse(text),
                    Err(SignatureError::Malformed(_))
                ),
                "{text:?}"
            );
        }
        // Valid base64url, but not an SSHSIG blob.
        assert!(matches!(
            ConfigSignature::parse("aGVsbG8gd29ybGQgaGVsbG8"),
            Err(SignatureError::Malformed(_))
        ));
        // A preamble and nothing else.
        assert!(matches!(
            ConfigSignature::parse(&Base64UrlUnpadded::encode_string(b"SSHSIG\0\0")),
            Err(SignatureError::Truncated(_))
        ));
    }
}
