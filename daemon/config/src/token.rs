//! Control-plane tokens: a short claims document signed with an SSH key (SSHSIG, namespace
//! `connectopus-token`, sha512), which a node accepts on its HTTP API port.
//!
//! Text form (docs/protocol.md, "Control tokens"):
//!
//! ```text
//! cxt1.<base64url(claims JSON)>.<base64url(SSHSIG blob)>
//! ```
//!
//! The signature covers the exact claims bytes carried in the token. The claims name the mesh
//! (`domain` and `subnet`), when the token was issued and when it expires (at most
//! [`MAX_LIFETIME`] apart: there are no unlimited tokens), the signing key's fingerprint and a
//! random nonce. A node accepts a token only when, in this order: its signing key is in the
//! running configuration's `authorized_keys` and not in `revoked_keys` (checked at every
//! request, so a revocation applies at once), the signature matches, the claims name this
//! mesh and that key, and the current time is inside `[iat, exp]` give or take
//! [`CLOCK_SKEW`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ssh_encoding::base64::{Base64UrlUnpadded, Encoding};
use ssh_encoding::{Decode, Encode};
use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

use crate::signature::{ConfigSigner, SignError, SignatureError, decode_blob};
use crate::types::SshPublicKey;

/// The SSHSIG namespace of tokens: a config signature is never a token, nor the reverse.
pub const NAMESPACE: &str = "connectopus-token";

/// The prefix of the text form, which names the format version.
pub const PREFIX: &str = "cxt1.";

/// The longest lifetime a token may have.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The default lifetime of `connectopus token`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// How far the issuer's clock may be off from the node's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The longest token text accepted (an RSA-4096 token is about 1.5 KiB).
pub const MAX_TEXT: usize = 8 * 1024;

/// Why a token was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is not a token.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature inside the token is not a token signature.
    #[error("malformed token signature: {0}")]
    Signature(SignatureError),
    /// The signing key is not in the running configuration's `authorized_keys`.
    #[error(
        "token signed by {key_type} key {fingerprint}, which is not in this mesh's global.authorized_keys"
    )]
    NotAuthorized {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
        /// Its type.
        key_type: String,
    },
    /// The signing key is revoked.
    #[error("token signed by key {fingerprint}, which is listed in global.revoked_keys")]
    Revoked {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// RSA with SHA-1.
    #[error("token signature algorithm `{0}` is not accepted (RSA keys must sign rsa-sha2-*)")]
    UnsupportedAlgorithm(String),
    /// The signature does not match the claims: the token was altered.
    #[error("bad token signature by {fingerprint}: the claims were altered after signing")]
    BadSignature {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// The claims name another key than the one that signed.
    #[error("token claims key {claimed} but was signed by {actual}")]
    KeyMismatch {
        /// The fingerprint in the claims.
        claimed: String,
        /// The signing key's fingerprint.
        actual: String,
    },
    /// The token was issued for another mesh.
    #[error("token is for mesh {domain} ({subnet}), not this one ({expected})")]
    WrongMesh {
        /// The claimed domain.
        domain: String,
        /// The claimed subnet.
        subnet: String,
        /// This mesh, as `domain (subnet)`.
        expected: String,
    },
    /// The token expired.
    #[error(
        "token expired {ago}s ago (at unix time {exp}); make a new one with `connectopus token`"
    )]
    Expired {
        /// Its expiry, in seconds since the Unix epoch.
        exp: u64,
        /// Seconds since then.
        ago: u64,
    },
    /// The token was issued in the future (clocks too far apart).
    #[error("token is issued {ahead}s in the future: the issuer's clock is ahead of this node's")]
    NotYetValid {
        /// Seconds ahead.
        ahead: u64,
    },
    /// The lifetime is longer than [`MAX_LIFETIME`] or not positive.
    #[error("token lifetime of {0}s is not accepted: it must be between 1s and 24h")]
    Lifetime(u64),
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(String),
}

impl From<SignError> for TokenError {
    fn from(error: SignError) -> Self {
        TokenError::Sign(error.to_string())
    }
}

/// Which mesh a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    /// `global.domain`.
    pub domain: String,
    /// `global.subnet`, as written by `Ipv6Net`'s `Display`.
    pub subnet: String,
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.domain, self.subnet)
    }
}

/// The signed claims document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Format version: 1.
    pub v: u32,
    /// The mesh's `global.domain`.
    pub domain: String,
    /// The mesh's `global.subnet`.
    pub subnet: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// SHA-256 fingerprint of the signing key (`SHA256:...`).
    pub key: String,
    /// 16 random bytes, hex: two tokens are never equal.
    pub nonce: String,
}

/// A token whose structure parsed: nothing about it is trusted yet.
#[derive(Clone)]
pub struct Token {
    claims_bytes: Vec<u8>,
    claims: Claims,
    sig: SshSig,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("claims", &self.claims)
            .field("signer", &self.fingerprint())
            .finish()
    }
}

/// Who a verified token lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    /// The matching `authorized_keys` entry, with its comment.
    pub key: SshPublicKey,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// When the token expires (Unix seconds).
    pub expires: u64,
}

impl Token {
    /// Parses the text form (surrounding whitespace ignored). Checks structure only: the
    /// claims are JSON of the right shape and the signature is an SSHSIG blob in the token
    /// namespace.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TEXT {
            return Err(TokenError::Malformed(format!(
                "{} bytes, longer than the {MAX_TEXT} accepted",
                text.len()
            )));
        }
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Err(TokenError::Malformed(format!(
                "a token starts with `{PREFIX}` (make one with `connectopus token`)"
            )));
        };
        let Some((claims_text, sig_text)) = rest.split_once('.') else {
            return Err(TokenError::Malformed(
                "expected `cxt1.<claims>.<signature>`: no second `.`".into(),
            ));
        };
        let claims_bytes = Base64UrlUnpadded::decode_vec(claims_text)
            .map_err(|_| TokenError::Malformed("the claims are not base64url".into()))?;
        let claims: Claims = serde_json::from_slice(&claims_bytes)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if claims.v != 1 {
            return Err(TokenError::Malformed(format!(
                "claims version {} is not supported (expected 1)",
                claims.v
            )));
        }
        let blob = Base64UrlUnpadded::decode_vec(sig_text)
            .map_err(|_| TokenError::Malformed("the signature is not base64url".into()))?;
        let sig = decode_blob(&blob, NAMESPACE).map_err(TokenError::Signature)?;
        Ok(Token {
            claims_bytes,
            claims,
            sig,
        })
    }

    /// Returns the claims (not verified unless [`Token::verify`] succeeded).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Returns the SHA-256 fingerprint of the key inside the signature.
    pub fn fingerprint(&self) -> String {
        self.sig
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Returns the text form.
    pub fn to_text(&self) -> String {
        let mut blob = Vec::new();
        // Encoding an in-memory signature only fails on allocation failure.
        let _ = self.sig.encode(&mut blob);
        format!(
            "{PREFIX}{}.{}",
            Base64UrlUnpadded::encode_string(&self.claims_bytes),
            Base64UrlUnpadded::encode_string(&blob)
        )
    }

    /// Checks the token against the running configuration's keys, this mesh and the time
    /// `now_unix` (seconds since the Unix epoch).
    pub fn verify(
        &self,
        scope: &TokenScope,
        now_unix: u64,
        authorized_keys: &[SshPublicKey],
        revoked_keys: &[SshPublicKey],
    ) -> Result<TokenHolder, TokenError> {
        let signer = SshPublicKey(
            PublicKey::from(self.sig.public_key().clone())
                .to_openssh()
                .unwrap_or_default(),
        );
        let fingerprint = self.fingerprint();
        if revoked_keys.iter().any(|k| k.same_key(&signer)) {
            return Err(TokenError::Revoked { fingerprint });
        }
        let Some(authorized) = authorized_keys.iter().find(|k| k.same_key(&signer)) else {
            return Err(TokenError::NotAuthorized {
                fingerprint,
                key_type: signer.key_type().to_owned(),
            });
        };
        if let Algorithm::Rsa { hash: None } = self.sig.algorithm() {
            return Err(TokenError::UnsupportedAlgorithm(
                self.sig.algorithm().to_string(),
            ));
        }
        PublicKey::from(self.sig.public_key().clone())
            .verify(NAMESPACE, &self.claims_bytes, &self.sig)
            .map_err(|_| TokenError::BadSignature {
                fingerprint: fingerprint.clone(),
            })?;
        let c = &self.claims;
        if c.key != fingerprint {
            return Err(TokenError::KeyMismatch {
                claimed: c.key.clone(),
                actual: fingerprint,
            });
        }
        if c.domain != scope.domain || c.subnet != scope.subnet {
            return Err(TokenError::WrongMesh {
                domain: c.domain.clone(),
                subnet: c.subnet.clone(),
                expected: scope.to_string(),
            });
        }
        check_lifetime(c.iat, c.exp)?;
        let skew = CLOCK_SKEW.as_secs();
        if c.iat > now_unix.saturating_add(skew) {
            return Err(TokenError::NotYetValid {
                ahead: c.iat - now_unix,
            });
        }
        if now_unix > c.exp.saturating_add(skew) {
            return Err(TokenError::Expired {
                exp: c.exp,
                ago: now_unix - c.exp,
            });
        }
        Ok(TokenHolder {
            key: authorized.clone(),
            fingerprint,
            expires: c.exp,
        })
    }
}

fn check_lifetime(iat: u64, exp: u64) -> Result<(), TokenError> {
    let lifetime = exp.saturating_sub(iat);
    if exp <= iat || lifetime > MAX_LIFETIME.as_secs() {
        return Err(TokenError::Lifetime(if exp <= iat { 0 } else { lifetime }));
    }
    Ok(())
}

/// Makes a token for `scope`, valid from `now_unix` for `lifetime` (1 s to 24 h).
pub fn issue(
    signer: &ConfigSigner,
    scope: &TokenScope,
    now_unix: u64,
    lifetime: Duration,
) -> Result<String, TokenError> {
    let exp = now_unix.saturating_add(lifetime.as_secs());
    check_lifetime(now_unix, exp)?;
    let mut nonce = [0u8; 16];
    ssh_key::rand_core::RngCore::fill_bytes(&mut ssh_key::rand_core::OsRng, &mut nonce);
    let claims = Claims {
        v: 1,
        domain: scope.domain.clone(),
        subnet: scope.subnet.clone(),
        iat: now_unix,
        exp,
        key: signer.fingerprint(),
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let claims_bytes =
        serde_json::to_vec(&claims).map_err(|e| TokenError::Sign(format!("claims: {e}")))?;
    let sig = signer.sign_in(NAMESPACE, &claims_bytes)?;
    // Round-trip through the parser, so that what we print is what nodes read.
    let mut blob = Vec::new();
    sig.encode(&mut blob)
        .map_err(|e| TokenError::Sign(e.to_string()))?;
    let sig = SshSig::decode(&mut &blob[..]).map_err(|e| TokenError::Sign(e.to_string()))?;
    Ok(Token {
        claims_bytes,
        claims,
        sig,
    }
    .to_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, name: &str, algorithm: Algorithm) -> ConfigSigner {
        let key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, algorithm).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, key.to_openssh(ssh_key::LineEnding::LF).unwrap()).unwrap();
        ConfigSigner::from_key_file(&path).unwrap()
    }

    fn scope() -> TokenScope {
        TokenScope {
            domain: "mesh.test".into(),
            subnet: "fd00::/64".into(),
        }
    }

    #[test]
    fn a_token_verifies_only_for_its_key_mesh_and_time() {
        let dir = std::env::temp_dir().join(format!("cx-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let admin = key_file(&dir, "admin", Algorithm::Ed25519);
        let other = key_file(
            &dir,
            "other",
            Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        );
        let keys = [admin.authorized_keys_line()];
        let now = 1_800_000_000;
        let text = issue(&admin, &scope(), now, DEFAULT_LIFETIME).unwrap();
        assert!(text.starts_with(PREFIX));
        let token = Token::parse(&text).unwrap();
        assert_eq!(token.to_text(), text);
        let holder = token.verify(&scope(), now + 10, &keys, &[]).unwrap();
        assert_eq!(holder.fingerprint, admin.fingerprint());
        // Revoked wins over authorized.
        assert!(matches!(
            token.verify(&scope(), now, &keys, &keys),
            Err(TokenError::Revoked { .. })
        ));
        // Another key.
        let foreign = issue(&other, &scope(), now, DEFAULT_LIFETIME).unwrap();
        assert!(matches!(
            Token::parse(&foreign)
                .unwrap()
                .verify(&scope(), now, &keys, &[]),
            Err(TokenError::NotAuthorized { .. })
        ));
        // Another mesh.
        let elsewhere = TokenScope {
            domain: "other.test".into(),
            ..scope()
        };
        assert!(matches!(
            token.verify(&elsewhere, now, &keys, &[]),
            Err(TokenError::WrongMesh { .. })
        ));
        // Expired, with the skew allowance.
        let exp = now + DEFAULT_LIFETIME.as_secs();
        assert!(token.verify(&scope(), exp + 60, &keys, &[]).is_ok());
        let error = token.verify(&scope(), exp + 61, &keys, &[]).unwrap_err();
        assert!(matches!(error, TokenError::Expired { .. }));
        assert!(error.to_string().contains("expired 61s ago"), "{error}");
        assert!(matches!(
            token.verify(&scope(), now - 61, &keys, &[]),
            Err(TokenError::NotYetValid { .. })
        ));
        // Tampered claims: a later expiry.
        let (_, rest) = text.split_at(PREFIX.len());
        let (_, sig) = rest.split_once('.').unwrap();
        let mut claims = token.claims().clone();
        claims.exp += 3600;
        let forged = format!(
            "{PREFIX}{}.{sig}",
            Base64UrlUnpadded::encode_string(&serde_json::to_vec(&claims).unwrap())
        );
        assert!(matches!(
            Token::parse(&forged)
                .unwrap()
                .verify(&scope(), now, &keys, &[]),
            Err(TokenError::BadSignature { .. })
        ));
        // No unlimited tokens.
        assert!(matches!(
            issue(&admin, &scope(), now, MAX_LIFETIME + Duration::from_secs(1)),
            Err(TokenError::Lifetime(_))
        ));
        assert!(issue(&admin, &scope(), now, MAX_LIFETIME).is_ok());
        // A config signature is not a token signature.
        let config_sig = admin.sign(b"x").unwrap().to_base64url();
        let wrong = format!("{PREFIX}{}.{config_sig}", rest.split_once('.').unwrap().0);
        assert!(matches!(
            Token::parse(&wrong),
            Err(TokenError::Signature(SignatureError::WrongNamespace { .. }))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_malformed() {
        for text in [
            "",
            "cxt1.",
            "cxt1.a",
            "cxt1.!!.x",
            "cxt2.e30.e30",
            "cxt1.e30.e30",
        ] {
            assert!(Token::parse(text).is_err(), "{text}");
        }
        let long = format!("{PREFIX}{}", "a".repeat(MAX_TEXT));
        assert!(matches!(Token::parse(&long), Err(TokenError::Malformed(_))));
    }
}
