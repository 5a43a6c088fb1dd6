//! Control tokens against the real OpenSSH tools: tokens made with every key type, from a
//! key file or through ssh-agent, verify on a node and with `ssh-keygen -Y verify -n
//! connectopus-token` over their claims; only the mesh's authorized keys are accepted.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use connectopus_config::token::{self, Token, TokenError, TokenScope};
use connectopus_config::{ConfigSigner, SshPublicKey};
use ssh_encoding::base64::{Base64, Base64UrlUnpadded, Encoding};
use support::{
    Agent, TempDir, fingerprint, keygen, public_line, require_openssh, ssh_keygen_verify,
};

const NOW: u64 = 1_800_000_000;

fn scope() -> TokenScope {
    TokenScope {
        domain: "connectopus.test".into(),
        subnet: "fd00:cafe::/64".into(),
    }
}

/// Checks `text` on a node and with ssh-keygen: the claims and SSHSIG are plain OpenSSH.
fn check(dir: &TempDir, text: &str, key: &std::path::Path, authorized: &[SshPublicKey]) {
    let parsed = Token::parse(text).unwrap();
    let holder = parsed.verify(&scope(), NOW + 5, authorized, &[]).unwrap();
    assert_eq!(holder.fingerprint, fingerprint(key));
    let rest = text.strip_prefix(token::PREFIX).unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    let claims_path = dir.join("claims.json");
    std::fs::write(&claims_path, Base64UrlUnpadded::decode_vec(claims).unwrap()).unwrap();
    let blob = Base64UrlUnpadded::decode_vec(sig).unwrap();
    let body = Base64::encode_string(&blob);
    let mut armored = String::from("-----BEGIN SSH SIGNATURE-----\n");
    for line in body.as_bytes().chunks(70) {
        armored.push_str(std::str::from_utf8(line).unwrap());
        armored.push('\n');
    }
    armored.push_str("-----END SSH SIGNATURE-----\n");
    let sig_path = dir.join("claims.json.sig");
    std::fs::write(&sig_path, armored).unwrap();
    let (good, out) = ssh_keygen_verify(dir, key, token::NAMESPACE, &claims_path, &sig_path);
    assert!(good, "ssh-keygen refused the token's signature: {out}");
}

#[test]
fn tokens_from_key_files_of_every_type_verify_with_ssh_keygen() {
    require_openssh();
    let dir = TempDir::new("tokens-files");
    let other = keygen(&dir, "other", "ed25519", "other");
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let key = keygen(&dir, kind, kind, "ops");
        let authorized = [SshPublicKey(public_line(&key))];
        let signer = ConfigSigner::from_key_file(&key).unwrap();
        let text = token::issue(&signer, &scope(), NOW, Duration::from_secs(600)).unwrap();
        check(&dir, &text, &key, &authorized);
        // Another mesh's key list does not hold it.
        let err = Token::parse(&text)
            .unwrap()
            .verify(&scope(), NOW, &[SshPublicKey(public_line(&other))], &[])
            .unwrap_err();
        assert!(matches!(err, TokenError::NotAuthorized { .. }), "{err}");
    }
}

#[test]
fn tokens_signed_through_ssh_agent_verify() {
    require_openssh();
    let dir = TempDir::new("tokens-agent");
    let agent = Agent::start(&dir);
    let alice = keygen(&dir, "alice", "ed25519", "alice@ops");
    let robot = keygen(&dir, "robot", "rsa", "robot@ops-ci");
    agent.add(&alice);
    agent.add(&robot);
    let authorized = [
        SshPublicKey(public_line(&alice)),
        SshPublicKey(public_line(&robot)),
    ];
    for (text, key) in [("alice", &alice), ("robot@", &robot)] {
        let signer = ConfigSigner::from_agent(agent.socket(), Some(text)).unwrap();
        let token = token::issue(&signer, &scope(), NOW, Duration::from_secs(60)).unwrap();
        check(&dir, &token, key, &authorized);
    }
}
