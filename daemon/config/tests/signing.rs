//! Config signatures against the real OpenSSH tools: our signatures verify with
//! `ssh-keygen -Y verify`, ssh-keygen's verify with ours, agent signing picks the right key,
//! and every kind of bad signature is refused with its own error.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use connectopus_config::signature::NAMESPACE;
use connectopus_config::{
    ConfigSignature, ConfigSigner, SignError, SignatureError, SshPublicKey, verify,
};
use support::{
    Agent, TempDir, fingerprint, keygen, keygen_with_passphrase, public_line, require_openssh,
    ssh_keygen_sign, ssh_keygen_verify,
};

fn mesh_yaml(authorized: &[String], revoked: &[String]) -> String {
    let list = |keys: &[String]| {
        keys.iter()
            .map(|k| format!("    - {k}\n"))
            .collect::<String>()
    };
    format!(
        "# signed mesh config\nglobal:\n  domain: connectopus.test\n  subnet: fd00::/16\n  authorized_keys:\n{}  revoked_keys:{}\n{}  version: 3\nnodes:\n  foo:\n    address: fd00::1  # foo\n",
        list(authorized),
        if revoked.is_empty() { " []" } else { "" },
        list(revoked),
    )
}

fn keys(lines: &[String]) -> Vec<SshPublicKey> {
    lines.iter().map(|l| SshPublicKey(l.clone())).collect()
}

/// Writes `yaml` as mesh.yml and checks it loads.
fn write_mesh(dir: &TempDir, yaml: &str) -> std::path::PathBuf {
    connectopus_config::load("mesh.yml", yaml.as_bytes()).unwrap();
    let path = dir.join("mesh.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn sign_file_and_check_with_ssh_keygen(kind: &str, expected_algorithm: &str) {
    require_openssh();
    let dir = TempDir::new(&format!("sign-{kind}"));
    let key = keygen(&dir, "id", kind, "admin@mesh");
    let line = public_line(&key);
    let yaml = mesh_yaml(std::slice::from_ref(&line), &[]);
    let mesh = write_mesh(&dir, &yaml);

    let signer = ConfigSigner::from_key_file(&key).unwrap();
    assert_eq!(signer.authorized_keys_line().0, line);
    assert_eq!(signer.fingerprint(), fingerprint(&key));
    let sig = signer.sign(yaml.as_bytes()).unwrap();
    assert_eq!(sig.algorithm(), expected_algorithm);
    let armored = sig.to_armored();
    assert!(armored.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
    let sig_path = dir.join("mesh.yml.sig");
    std::fs::write(&sig_path, &armored).unwrap();

    let (good, out) = ssh_keygen_verify(&dir, &key, NAMESPACE, &mesh, &sig_path);
    assert!(good, "ssh-keygen refused our {kind} signature: {out}");
    let (good, _) = ssh_keygen_verify(&dir, &key, "other", &mesh, &sig_path);
    assert!(
        !good,
        "ssh-keygen accepted our signature under another namespace"
    );

    // Our own verifier: the algorithm read back from the file, and the signer named.
    let reread = ConfigSignature::parse(&std::fs::read_to_string(&sig_path).unwrap()).unwrap();
    assert_eq!(reread.algorithm(), expected_algorithm);
    let by = verify(
        yaml.as_bytes(),
        &armored,
        &keys(std::slice::from_ref(&line)),
        &[],
    )
    .unwrap();
    assert_eq!(by.key.0, line);
    assert_eq!(by.fingerprint, fingerprint(&key));
    assert_eq!(by.algorithm, expected_algorithm);
}

#[test]
fn ed25519_key_file_signature_verifies_with_ssh_keygen() {
    sign_file_and_check_with_ssh_keygen("ed25519", "ssh-ed25519");
}

#[test]
fn ecdsa_p256_key_file_signature_verifies_with_ssh_keygen() {
    sign_file_and_check_with_ssh_keygen("ecdsa", "ecdsa-sha2-nistp256");
}

#[test]
fn rsa_key_file_signs_rsa_sha2_512_and_verifies_with_ssh_keygen() {
    sign_file_and_check_with_ssh_keygen("rsa", "rsa-sha2-512");
}

#[test]
fn ssh_keygen_signatures_verify_in_both_forms() {
    require_openssh();
    let dir = TempDir::new("keygen-sign");
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let key = keygen(&dir, &format!("id_{kind}"), kind, &format!("{kind}@mesh"));
        let line = public_line(&key);
        let yaml = mesh_yaml(std::slice::from_ref(&line), &[]);
        let mesh = write_mesh(&dir, &yaml);
        let armored = ssh_keygen_sign(&key, NAMESPACE, &mesh, &[]);
        let by = verify(
            yaml.as_bytes(),
            &armored,
            &keys(std::slice::from_ref(&line)),
            &[],
        )
        .unwrap();
        assert_eq!(by.key.0, line, "{kind}");
        assert_eq!(by.fingerprint, fingerprint(&key));

        // Upstream's form: the raw blob as base64url without padding, no newline.
        let upstream = upstream_form(&armored);
        assert!(
            upstream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        verify(
            yaml.as_bytes(),
            &upstream,
            &keys(std::slice::from_ref(&line)),
            &[],
        )
        .unwrap();
        let parsed = ConfigSignature::parse(&upstream).unwrap();
        assert_eq!(parsed.to_base64url(), upstream);
        assert_eq!(
            parsed.to_armored().replace('\n', ""),
            armored.replace('\n', "")
        );
    }
}

/// Converts armored text to upstream's `config.sig` form, the way upstream does.
fn upstream_form(armored: &str) -> String {
    let b64: String = armored
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    b64.trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[test]
fn agent_signing_picks_the_key_named_by_text() {
    require_openssh();
    let dir = TempDir::new("agent");
    let agent = Agent::start(&dir);
    let alice = keygen(&dir, "alice", "ed25519", "alice@ops");
    let robot = keygen(&dir, "robot", "rsa", "robot@ops-ci");
    agent.add(&alice);
    agent.add(&robot);
    let lines = vec![public_line(&alice), public_line(&robot)];
    let yaml = mesh_yaml(&lines, &[]);
    let mesh = write_mesh(&dir, &yaml);

    for (text, key, algorithm) in [
        ("alice", &alice, "ssh-ed25519"),
        ("robot@", &robot, "rsa-sha2-512"),
    ] {
        let signer = ConfigSigner::from_agent(agent.socket(), Some(text)).unwrap();
        assert_eq!(signer.fingerprint(), fingerprint(key), "{text}");
        let sig = signer.sign(yaml.as_bytes()).unwrap();
        assert_eq!(sig.algorithm(), algorithm);
        let sig_path = dir.join("mesh.yml.sig");
        std::fs::write(&sig_path, sig.to_armored()).unwrap();
        let (good, out) = ssh_keygen_verify(&dir, key, NAMESPACE, &mesh, &sig_path);
        assert!(
            good,
            "ssh-keygen refused the agent's {algorithm} signature: {out}"
        );
        let by = verify(yaml.as_bytes(), &sig.to_armored(), &keys(&lines), &[]).unwrap();
        assert_eq!(by.fingerprint, fingerprint(key));
    }

    // Both keys match "@ops": an error that lists both.
    let err = ConfigSigner::from_agent(agent.socket(), Some("@ops")).unwrap_err();
    let SignError::AmbiguousKey { candidates, .. } = &err else {
        panic!("expected AmbiguousKey, got {err:?}");
    };
    assert_eq!(candidates.len(), 2);
    let message = err.to_string();
    assert!(message.contains(&fingerprint(&alice)) && message.contains(&fingerprint(&robot)));
    assert!(message.contains("--text"), "{message}");

    // No --text with two keys is ambiguous too.
    assert!(matches!(
        ConfigSigner::from_agent(agent.socket(), None),
        Err(SignError::AmbiguousKey { text: None, .. })
    ));

    // Nothing matches: the error lists every agent key.
    let err = ConfigSigner::from_agent(agent.socket(), Some("mallory")).unwrap_err();
    let SignError::NoMatchingKey { candidates, .. } = &err else {
        panic!("expected NoMatchingKey, got {err:?}");
    };
    assert_eq!(candidates.len(), 2);
    assert!(err.to_string().contains("alice@ops") && err.to_string().contains("robot@ops-ci"));
}

#[test]
fn empty_agent_and_missing_agent_are_clear_errors() {
    require_openssh();
    let dir = TempDir::new("agent-empty");
    let agent = Agent::start(&dir);
    assert!(matches!(
        ConfigSigner::from_agent(agent.socket(), None),
        Err(SignError::NoAgentKeys)
    ));
    assert!(matches!(
        ConfigSigner::from_agent(&dir.join("nope.sock"), None),
        Err(SignError::Agent(_))
    ));
}

struct Fixture {
    dir: TempDir,
    key: std::path::PathBuf,
    line: String,
    yaml: String,
    mesh: std::path::PathBuf,
}

fn fixture(tag: &str) -> Fixture {
    require_openssh();
    let dir = TempDir::new(tag);
    let key = keygen(&dir, "id", "ed25519", "admin@mesh");
    let line = public_line(&key);
    let yaml = mesh_yaml(std::slice::from_ref(&line), &[]);
    let mesh = write_mesh(&dir, &yaml);
    Fixture {
        dir,
        key,
        line,
        yaml,
        mesh,
    }
}

#[test]
fn one_flipped_byte_in_the_yaml_is_a_bad_signature() {
    let f = fixture("flip");
    let sig = ssh_keygen_sign(&f.key, NAMESPACE, &f.mesh, &[]);
    let mut bytes = f.yaml.clone().into_bytes();
    let at = f.yaml.find("fd00::1").unwrap() + 6;
    bytes[at] ^= 0x01; // fd00::1 -> fd00::0
    let err = verify(&bytes, &sig, &keys(std::slice::from_ref(&f.line)), &[]).unwrap_err();
    assert_eq!(
        err,
        SignatureError::BadSignature {
            fingerprint: fingerprint(&f.key)
        }
    );
    // ssh-keygen agrees.
    std::fs::write(&f.mesh, &bytes).unwrap();
    let sig_path = f.dir.join("flipped.sig");
    std::fs::write(&sig_path, &sig).unwrap();
    assert!(!ssh_keygen_verify(&f.dir, &f.key, NAMESPACE, &f.mesh, &sig_path).0);
}

#[test]
fn a_key_not_in_authorized_keys_is_refused_with_its_fingerprint() {
    let f = fixture("unauthorized");
    let other = keygen(&f.dir, "other", "ed25519", "mallory");
    let sig = ssh_keygen_sign(&other, NAMESPACE, &f.mesh, &[]);
    let err = verify(
        f.yaml.as_bytes(),
        &sig,
        &keys(std::slice::from_ref(&f.line)),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::NotAuthorized {
            fingerprint: fingerprint(&other),
            key_type: "ssh-ed25519".into()
        }
    );
    assert!(err.to_string().contains(&fingerprint(&other)));
    // No authorized keys at all: the same.
    assert!(matches!(
        verify(f.yaml.as_bytes(), &sig, &[], &[]),
        Err(SignatureError::NotAuthorized { .. })
    ));
}

#[test]
fn a_revoked_key_is_refused() {
    let f = fixture("revoked");
    let old = keygen(&f.dir, "old", "ed25519", "old-admin");
    let old_line = public_line(&old);
    let yaml = mesh_yaml(
        std::slice::from_ref(&f.line),
        std::slice::from_ref(&old_line),
    );
    let mesh = write_mesh(&f.dir, &yaml);
    let sig = ssh_keygen_sign(&old, NAMESPACE, &mesh, &[]);
    let cfg = connectopus_config::load("mesh.yml", yaml.as_bytes()).unwrap();
    let err = verify(
        yaml.as_bytes(),
        &sig,
        &cfg.global.authorized_keys,
        &cfg.global.revoked_keys,
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::Revoked {
            fingerprint: fingerprint(&old)
        }
    );
    // Revocation wins even if a stale list still authorizes the key (comment differs).
    let stale = keys(&[old_line.replace("old-admin", "renamed")]);
    assert!(matches!(
        verify(yaml.as_bytes(), &sig, &stale, &keys(&[old_line])),
        Err(SignatureError::Revoked { .. })
    ));
}

#[test]
fn the_wrong_namespace_is_refused() {
    let f = fixture("namespace");
    let sig = ssh_keygen_sign(&f.key, "other", &f.mesh, &[]);
    let err = verify(
        f.yaml.as_bytes(),
        &sig,
        &keys(std::slice::from_ref(&f.line)),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::WrongNamespace {
            found: "other".into()
        }
    );
}

#[test]
fn a_sha256_signature_is_refused() {
    let f = fixture("sha256");
    let sig = ssh_keygen_sign(&f.key, NAMESPACE, &f.mesh, &["-O", "hashalg=sha256"]);
    let err = verify(
        f.yaml.as_bytes(),
        &sig,
        &keys(std::slice::from_ref(&f.line)),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::UnsupportedHash {
            found: "sha256".into()
        }
    );
}

#[test]
fn truncated_signatures_are_refused() {
    let f = fixture("truncated");
    let sig = ssh_keygen_sign(&f.key, NAMESPACE, &f.mesh, &[]);
    let authorized = keys(std::slice::from_ref(&f.line));
    // Cut-off armored file: no END line.
    let half = &sig[..sig.len() / 2];
    assert!(matches!(
        verify(f.yaml.as_bytes(), half, &authorized, &[]),
        Err(SignatureError::Truncated(_))
    ));
    // Armor intact, blob shortened.
    let upstream = upstream_form(&sig);
    for cut in [upstream.len() - 8, upstream.len() / 2, 40, 12] {
        let short = &upstream[..cut];
        let blob_len = cut * 3 / 4;
        let err = verify(f.yaml.as_bytes(), short, &authorized, &[]).unwrap_err();
        assert!(
            matches!(err, SignatureError::Truncated(_)),
            "cut at {cut} ({blob_len} bytes): {err:?}"
        );
    }
    let rearmored = armor(&upstream[..upstream.len() - 20]);
    assert!(matches!(
        verify(f.yaml.as_bytes(), &rearmored, &authorized, &[]),
        Err(SignatureError::Truncated(_))
    ));
}

/// Re-armors base64url text (upstream form) into the PEM form.
fn armor(b64url: &str) -> String {
    let mut b64 = b64url.replace('-', "+").replace('_', "/");
    // Drop a dangling sextet so the base64 stays decodable, then pad.
    if b64.len() % 4 == 1 {
        b64.pop();
    }
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    let body: Vec<String> = b64
        .as_bytes()
        .chunks(70)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
        body.join("\n")
    )
}

#[test]
fn garbage_is_malformed() {
    let f = fixture("garbage");
    let authorized = keys(std::slice::from_ref(&f.line));
    for text in [
        "",
        "not a signature at all",
        "-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &f.line,
    ] {
        let err = verify(f.yaml.as_bytes(), text, &authorized, &[]).unwrap_err();
        assert!(
            matches!(err, SignatureError::Malformed(_)),
            "{text:?}: {err:?}"
        );
    }
}

#[test]
fn encrypted_and_wrong_key_files_give_clear_errors() {
    require_openssh();
    let dir = TempDir::new("keyfiles");
    let enc = keygen_with_passphrase(&dir, "enc", "ed25519", "x", "correct horse");
    let err = ConfigSigner::from_key_file(&enc).unwrap_err();
    assert!(matches!(err, SignError::EncryptedKey { .. }), "{err:?}");
    assert!(err.to_string().contains("ssh-agent"), "{err}");

    let plain = keygen(&dir, "plain", "ed25519", "x");
    let mut pub_path = plain.clone().into_os_string();
    pub_path.push(".pub");
    let err = ConfigSigner::from_key_file(Path::new(&pub_path)).unwrap_err();
    assert!(err.to_string().contains("public key"), "{err}");

    let err = ConfigSigner::from_key_file(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, SignError::ReadKey { .. }));

    // The Debug output of a signer never contains the private key.
    let signer = ConfigSigner::from_key_file(&plain).unwrap();
    let private = std::fs::read_to_string(&plain).unwrap();
    let debug = format!("{signer:?}");
    for line in private.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line));
    }
}
