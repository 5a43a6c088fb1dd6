//! `config sign`, `config verify`, `init` and `load_signed` against real ssh-keygen and
//! ssh-agent.
//!
//! The handlers live in the binary crate (`src/config_cli.rs`); this test compiles that file
//! directly, so it runs whether or not `main.rs` wires the subcommands yet.

#![allow(clippy::unwrap_used)]

#[allow(
    dead_code,
    reason = "the binary uses the entry points; the tests use a subset"
)]
#[path = "../src/config_cli.rs"]
mod config_cli;

#[path = "../../config/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use config_cli::{
    InitArgs, KeyArgs, Outcome, SignArgs, SignedConfigError, VerifyArgs, init_datadir, load_signed,
    sign_config, signature_path, verify_config,
};
use connectopus_config::SignatureError;
use support::{
    Agent, TempDir, fingerprint, keygen, public_line, require_openssh, ssh_keygen_verify,
};

/// The wiring proposed for `main.rs`, checked by clap.
#[derive(Debug, Parser)]
#[command(name = "connectopus")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Creates a node's data directory with a signed config.
    Init(InitArgs),
    /// Works with mesh configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommands,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommands {
    /// Bumps global.version and signs the file (writes FILE.sig).
    Sign(SignArgs),
    /// Verifies FILE.sig against the file's own authorized_keys.
    Verify(VerifyArgs),
}

#[test]
fn clap_definitions_are_consistent_and_parse() {
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "connectopus",
        "config",
        "sign",
        "mesh.yml",
        "--key",
        "k",
        "--version",
        "5",
        "--force",
    ])
    .unwrap();
    let Commands::Config {
        command: ConfigCommands::Sign(a),
    } = cli.command
    else {
        panic!()
    };
    assert_eq!(a.version, Some(5));
    assert!(a.force && a.key.key.is_some());
    assert!(
        Cli::try_parse_from([
            "connectopus",
            "config",
            "sign",
            "m",
            "--key",
            "k",
            "--text",
            "t"
        ])
        .is_err()
    );
    assert!(
        Cli::try_parse_from(["connectopus", "config", "verify", "m", "--signature", "s"]).is_ok()
    );
    assert!(
        Cli::try_parse_from([
            "connectopus",
            "init",
            "--id",
            "a",
            "--config",
            "m",
            "--subnet",
            "fd00::/64"
        ])
        .is_err()
    );
    assert!(
        Cli::try_parse_from([
            "connectopus",
            "init",
            "--id",
            "a",
            "--domain",
            "x.test",
            "--backend",
            "type=tcp-listener,port=1",
            "--text",
            "alice",
            "--datadir",
            "/tmp/x",
            "--force",
        ])
        .is_ok()
    );
}

const COMMENTED: &str = "\
# The mesh. Comments, blank lines and odd spacing must survive signing.

global:                          # mesh-wide
  domain: connectopus.test       # DNS zone
  subnet: fd00:cafe::/64
  authorized_keys:
    - KEY
  version: 6    # do not hand-edit

# the nodes
nodes:
  foo:   {address: \"fd00:cafe::1\"}   # flow style
  bar:
    address: fd00:cafe::2
";

fn key_args(key: &Path) -> KeyArgs {
    KeyArgs {
        key: Some(key.to_owned()),
        text: None,
        agent_socket: None,
    }
}

fn sign_args(file: &Path, key: KeyArgs) -> SignArgs {
    SignArgs {
        file: file.to_owned(),
        key,
        version: None,
        force: false,
    }
}

fn done<T: std::fmt::Debug>(o: Outcome<T>) -> T {
    match o {
        Outcome::Done(t) => t,
        Outcome::Diagnostics(d) => panic!("unexpected diagnostics:\n{d}"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn sign_bumps_the_version_in_place_and_ssh_keygen_agrees() {
    require_openssh();
    let dir = TempDir::new("cli-sign");
    let key = keygen(&dir, "id", "ed25519", "admin@mesh");
    let original = COMMENTED.replace("KEY", &public_line(&key));
    let mesh = dir.join("mesh.yml");
    std::fs::write(&mesh, &original).unwrap();
    std::fs::set_permissions(&mesh, std::fs::Permissions::from_mode(0o640)).unwrap();

    let report = done(sign_config(&sign_args(&mesh, key_args(&key))).unwrap());
    assert_eq!((report.old_version, report.new_version), (6, 7));
    assert!(report.signer.contains(&fingerprint(&key)));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let signed = std::fs::read_to_string(&mesh).unwrap();
    assert_eq!(
        signed,
        original.replace("version: 6    #", "version: 7    #"),
        "only the version may change"
    );
    assert_eq!(mode(&mesh), 0o640, "mode preserved");
    let sig = signature_path(&mesh);
    assert_eq!(sig, dir.join("mesh.yml.sig"));
    assert_eq!(mode(&sig), 0o644);
    assert!(
        std::fs::read_to_string(&sig)
            .unwrap()
            .starts_with("-----BEGIN SSH SIGNATURE-----")
    );
    let (good, out) = ssh_keygen_verify(&dir, &key, "connectopus", &mesh, &sig);
    assert!(good, "{out}");
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // verify and load_signed accept it; the exit code of `config verify` is 0.
    let verify_args = VerifyArgs {
        file: mesh.clone(),
        signature: None,
    };
    let v = done(verify_config(&verify_args).unwrap()).unwrap();
    assert_eq!(v.version, 7);
    assert!(v.signer.contains("admin@mesh"));
    assert_eq!(
        config_cli::config_verify(&verify_args).unwrap(),
        ExitCode::SUCCESS
    );
    assert_eq!(load_signed(&mesh, &sig).unwrap().global.version, 7);

    // Signing again bumps again.
    let report = done(sign_config(&sign_args(&mesh, key_args(&key))).unwrap());
    assert_eq!(report.new_version, 8);
}

#[test]
fn sign_refuses_a_file_with_errors_and_writes_nothing() {
    require_openssh();
    let dir = TempDir::new("cli-sign-bad");
    let key = keygen(&dir, "id", "ed25519", "admin");
    let bad = COMMENTED
        .replace("KEY", &public_line(&key))
        .replace("address: fd00:cafe::2", "address: 198.18.0.2");
    let mesh = dir.join("mesh.yml");
    std::fs::write(&mesh, &bad).unwrap();
    match sign_config(&sign_args(&mesh, key_args(&key))).unwrap() {
        Outcome::Diagnostics(d) => {
            let text = d.to_string();
            assert!(text.contains("mesh.yml:14:14"), "{text}");
        }
        Outcome::Done(r) => panic!("signed a bad file: {r:?}"),
    }
    assert_eq!(std::fs::read_to_string(&mesh).unwrap(), bad);
    assert!(!signature_path(&mesh).exists());
}

#[test]
fn sign_refuses_implausible_or_stale_versions_unless_forced() {
    require_openssh();
    let dir = TempDir::new("cli-sign-version");
    let key = keygen(&dir, "id", "ed25519", "admin");
    let mesh = dir.join("mesh.yml");
    std::fs::write(&mesh, COMMENTED.replace("KEY", &public_line(&key))).unwrap();
    let jump = 6 + (1u64 << 32) + 1;
    for n in [jump, 6, 2] {
        let mut args = sign_args(&mesh, key_args(&key));
        args.version = Some(n);
        let err = sign_config(&args).unwrap_err().to_string();
        assert!(err.contains("--force"), "{n}: {err}");
        assert!(!signature_path(&mesh).exists());
    }
    let mut args = sign_args(&mesh, key_args(&key));
    args.version = Some(6 + (1u64 << 32));
    assert_eq!(done(sign_config(&args).unwrap()).new_version, 6 + (1 << 32));
    args.version = Some(3);
    args.force = true;
    let r = done(sign_config(&args).unwrap());
    assert_eq!(r.new_version, 3);
    assert!(
        r.warnings.iter().any(|w| w.contains("not newer")),
        "{:?}",
        r.warnings
    );
    assert_eq!(
        load_signed(&mesh, &signature_path(&mesh))
            .unwrap()
            .global
            .version,
        3
    );
}

#[test]
fn sign_with_the_agent_key_named_by_text() {
    require_openssh();
    let dir = TempDir::new("cli-agent");
    let agent = Agent::start(&dir);
    let alice = keygen(&dir, "alice", "ed25519", "alice@ops");
    let robot = keygen(&dir, "robot", "ecdsa", "robot@ops");
    agent.add(&alice);
    agent.add(&robot);
    let mesh = dir.join("mesh.yml");
    std::fs::write(
        &mesh,
        COMMENTED.replace("KEY", &public_line(&alice)).replace(
            "  version:",
            &format!("    - {}\n  version:", public_line(&robot)),
        ),
    )
    .unwrap();
    let agent_key = |text: Option<&str>| KeyArgs {
        key: None,
        text: text.map(str::to_owned),
        agent_socket: Some(agent.socket().to_owned()),
    };
    let r = done(sign_config(&sign_args(&mesh, agent_key(Some("robot")))).unwrap());
    assert!(r.signer.contains(&fingerprint(&robot)));
    let by = done(
        verify_config(&VerifyArgs {
            file: mesh.clone(),
            signature: None,
        })
        .unwrap(),
    )
    .unwrap();
    assert!(by.signer.contains(&fingerprint(&robot)));
    assert_eq!(by.algorithm, "ecdsa-sha2-nistp256");

    let err = sign_config(&sign_args(&mesh, agent_key(Some("@ops"))))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&fingerprint(&alice)) && err.contains(&fingerprint(&robot)),
        "{err}"
    );
    let err = sign_config(&sign_args(&mesh, agent_key(None)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--text"), "{err}");
}

#[test]
fn verify_and_load_signed_refuse_with_the_reason_and_how_to_sign() {
    require_openssh();
    let dir = TempDir::new("cli-verify");
    let key = keygen(&dir, "id", "ed25519", "admin");
    let other = keygen(&dir, "other", "ed25519", "mallory");
    let mesh = dir.join("mesh.yml");
    let sig = signature_path(&mesh);
    std::fs::write(&mesh, COMMENTED.replace("KEY", &public_line(&key))).unwrap();
    let args = VerifyArgs {
        file: mesh.clone(),
        signature: None,
    };

    // Unsigned.
    let message = done(verify_config(&args).unwrap()).unwrap_err();
    assert!(
        message.contains("not signed") && message.contains("config sign"),
        "{message}"
    );
    assert_eq!(config_cli::config_verify(&args).unwrap(), ExitCode::FAILURE);
    let err = load_signed(&mesh, &sig).unwrap_err();
    assert!(matches!(err, SignedConfigError::Unsigned { .. }));
    assert!(
        err.to_string().contains(&format!(
            "run: connectopus config sign {} --key ~/.ssh/id_ed25519",
            mesh.display()
        )),
        "{err}"
    );

    // Signed by a key the file does not authorize (the sign warns about it).
    let r = done(sign_config(&sign_args(&mesh, key_args(&other))).unwrap());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("not in global.authorized_keys"))
    );
    let message = done(verify_config(&args).unwrap()).unwrap_err();
    assert!(message.contains(&fingerprint(&other)), "{message}");
    match load_signed(&mesh, &sig).unwrap_err() {
        SignedConfigError::Refused {
            error: SignatureError::NotAuthorized { fingerprint: f, .. },
            ..
        } => assert_eq!(f, fingerprint(&other)),
        e => panic!("{e:?}"),
    }

    // Properly signed, then changed by hand.
    done(sign_config(&sign_args(&mesh, key_args(&key))).unwrap());
    load_signed(&mesh, &sig).unwrap();
    let text = std::fs::read_to_string(&mesh).unwrap();
    std::fs::write(&mesh, text.replace("fd00:cafe::2", "fd00:cafe::3")).unwrap();
    let message = done(verify_config(&args).unwrap()).unwrap_err();
    assert!(message.contains("bad signature"), "{message}");
    let err = load_signed(&mesh, &sig).unwrap_err();
    assert!(matches!(
        err,
        SignedConfigError::Refused {
            error: SignatureError::BadSignature { .. },
            ..
        }
    ));
    assert!(err.to_string().contains("run: connectopus config sign"));

    // An explicit --signature path is honoured.
    std::fs::write(&mesh, text).unwrap();
    std::fs::rename(&sig, dir.join("elsewhere.sig")).unwrap();
    let moved = VerifyArgs {
        file: mesh,
        signature: Some(dir.join("elsewhere.sig")),
    };
    done(verify_config(&moved).unwrap()).unwrap();
}

fn init_args(id: &str, datadir: &Path, key: &Path) -> InitArgs {
    InitArgs {
        id: id.to_owned(),
        config: None,
        domain: None,
        subnet: None,
        ip: None,
        backend: None,
        datadir: Some(datadir.to_owned()),
        key: key_args(key),
        force: false,
    }
}

#[test]
fn init_creates_a_private_datadir_with_a_signed_minimal_config() {
    require_openssh();
    let dir = TempDir::new("cli-init");
    let key = keygen(&dir, "id", "ed25519", "admin@laptop");
    let datadir = dir.join("node/foo");
    let mut args = init_args("foo", &datadir, &key);
    args.backend = Some("type=tcp-listener,port=4445".into());
    let report = done(init_datadir(&args).unwrap());
    assert_eq!(report.config, datadir.join("config.yml"));
    assert_eq!(report.signature, datadir.join("config.yml.sig"));
    assert_eq!(mode(&datadir), 0o700);
    assert_eq!(mode(&report.config), 0o600);
    assert_eq!(mode(&report.signature), 0o600);

    let cfg = load_signed(&report.config, &report.signature).unwrap();
    assert_eq!(cfg.global.version, 0);
    assert_eq!(cfg.global.domain, "connectopus.test");
    assert_eq!(cfg.global.authorized_keys[0].0, public_line(&key));
    let subnet = cfg.global.subnet;
    assert_eq!(subnet.prefix_len(), 64);
    assert_eq!(subnet.network().octets()[0], 0xfd);
    let foo = cfg.node("foo").unwrap();
    assert_eq!(u128::from(foo.address), u128::from(subnet.network()) | 1);
    assert!(foo.backends.contains_key("b1"));
    let (good, out) =
        ssh_keygen_verify(&dir, &key, "connectopus", &report.config, &report.signature);
    assert!(good, "{out}");

    // Two inits pick different random subnets.
    let other = done(init_datadir(&init_args("foo", &dir.join("again"), &key)).unwrap());
    let other_cfg = load_signed(&other.config, &other.signature).unwrap();
    assert_ne!(other_cfg.global.subnet, subnet);

    // A second init without --force is refused and changes nothing.
    let before = std::fs::read(&report.config).unwrap();
    let err = init_datadir(&init_args("foo", &datadir, &key))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data dir") && err.contains("already exists; use --force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&report.config).unwrap(), before);

    // With --force it replaces the config, and the given subnet and address are used.
    let mut forced = init_args("foo", &datadir, &key);
    forced.force = true;
    forced.subnet = Some("fd00:1:2:3::/64".into());
    forced.ip = Some("fd00:1:2:3::42".parse().unwrap());
    forced.domain = Some("lab.example".into());
    let r = done(init_datadir(&forced).unwrap());
    let cfg = load_signed(&r.config, &r.signature).unwrap();
    assert_eq!(cfg.global.subnet.to_string(), "fd00:1:2:3::/64");
    assert_eq!(
        cfg.node("foo").unwrap().address.to_string(),
        "fd00:1:2:3::42"
    );
    assert_eq!(cfg.global.domain, "lab.example");
    assert_eq!(mode(&datadir), 0o700);

    // A bad --id never reaches the file system.
    assert!(init_datadir(&init_args("../etc", &dir.join("x"), &key)).is_err());
    assert!(!dir.join("x").exists());
}

#[test]
fn init_from_a_mesh_file_adds_the_key_and_stamps_a_newer_version() {
    require_openssh();
    let dir = TempDir::new("cli-init-config");
    let admin = keygen(&dir, "admin", "ed25519", "admin");
    let newcomer = keygen(&dir, "new", "rsa", "new@host");
    let original = COMMENTED.replace("KEY", &public_line(&admin));
    let mesh = dir.join("mesh.yml");
    std::fs::write(&mesh, &original).unwrap();

    let mut args = init_args("bar", &dir.join("bar"), &newcomer);
    args.config = Some(mesh.clone());
    let r = done(init_datadir(&args).unwrap());
    let written = std::fs::read_to_string(&r.config).unwrap();
    // The key is added and the version bumped in place; every other byte stays.
    assert_eq!(
        written,
        original
            .replace(
                &format!("    - {}\n", public_line(&admin)),
                &format!(
                    "    - {}\n    - {}\n",
                    public_line(&admin),
                    public_line(&newcomer)
                )
            )
            .replace("version: 6    #", "version: 7    #")
    );
    let cfg = load_signed(&r.config, &r.signature).unwrap();
    assert_eq!(
        cfg.global.version, 7,
        "init stamps a version above the file's, so nodes running the file take it"
    );
    assert_eq!(r.version, 7);
    assert_eq!(
        std::fs::read_to_string(&mesh).unwrap(),
        original,
        "the source file is untouched"
    );

    // Re-initialising over that data directory (--force) goes above what it held, even when
    // the file's own version is lower.
    let older = original.replace("version: 6", "version: 2");
    std::fs::write(&mesh, &older).unwrap();
    let mut again = init_args("bar", &dir.join("bar"), &newcomer);
    again.config = Some(mesh.clone());
    again.force = true;
    let r = done(init_datadir(&again).unwrap());
    assert_eq!(
        load_signed(&r.config, &r.signature).unwrap().global.version,
        8
    );

    // A file without a version (0, like a minimal config) becomes version 1, which minimal
    // configs (version 0) take; the line is inserted after `global:`.
    let unversioned = original.replace("  version: 6    # do not hand-edit\n", "");
    std::fs::write(&mesh, &unversioned).unwrap();
    let mut fresh = init_args("foo", &dir.join("foo"), &admin);
    fresh.config = Some(mesh.clone());
    let r = done(init_datadir(&fresh).unwrap());
    let cfg = load_signed(&r.config, &r.signature).unwrap();
    assert_eq!(cfg.global.version, 1);
    assert!(connectopus_config::check_version(0, cfg.global.version).is_ok());
    std::fs::write(&mesh, &original).unwrap();

    // A node the file does not name is refused with the known names.
    let mut args = init_args("qux", &dir.join("qux"), &newcomer);
    args.config = Some(mesh);
    match init_datadir(&args).unwrap() {
        Outcome::Diagnostics(d) => assert!(d.to_string().contains("qux"), "{d}"),
        Outcome::Done(r) => panic!("{r:?}"),
    }
    assert!(!dir.join("qux").exists());
}
