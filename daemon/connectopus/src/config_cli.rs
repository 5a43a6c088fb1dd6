//! `connectopus config sign`, `connectopus config verify` and `connectopus init`, plus
//! [`load_signed`], which the daemon calls at start.
//!
//! A config is signed over its exact bytes (SSHSIG, namespace `connectopus`, sha512) and the
//! signature is stored beside it as `<file>.sig` in the armored form `ssh-keygen -Y verify`
//! reads. `config sign` bumps `global.version` in place (one counter, no clocks), so the
//! operator's comments and layout are what gets signed. See `docs/config.md`, "Signing and
//! versions".

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::Ipv6Addr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use connectopus_config::version::yaml_scalar;
use connectopus_config::{
    ConfigSigner, Diagnostics, EditError, Ipv6Net, MeshConfig, SignatureError, SshPublicKey,
    VersionError, add_authorized_key, check_version, set_version, verify,
};

/// Where `init` puts a node's data directory when `--datadir` is not given.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/connectopus";

/// The name of the config file inside a node's data directory.
pub const DATADIR_CONFIG: &str = "config.yml";

/// How to sign `file`, shown in every "not signed" message.
fn how_to_sign(file: &Path) -> String {
    format!(
        "run: connectopus config sign {} --key ~/.ssh/id_ed25519",
        file.display()
    )
}

/// Which key signs: a private key file, or a key held by ssh-agent.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// Signs with this private key file (OpenSSH format, ed25519, ECDSA or RSA, without a
    /// passphrase). Without it, ssh-agent signs.
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    pub key: Option<PathBuf>,
    /// Picks the ssh-agent key whose public key line (`type base64 comment`) contains this text;
    /// needed when the agent holds more than one key.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// The ssh-agent socket.
    #[arg(long, value_name = "PATH", env = "SSH_AUTH_SOCK", value_parser = agent_socket)]
    pub agent_socket: Option<PathBuf>,
}

/// Parses `--agent-socket` (or `$SSH_AUTH_SOCK`). Unlike clap's path parser it takes an empty
/// value, which shells leave behind (`SSH_AUTH_SOCK=`), so that signing then says there is
/// no agent, as when the variable is unset, instead of failing to parse the command line.
fn agent_socket(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

/// `connectopus config sign FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The mesh configuration to sign; `global.version` is updated in place and the signature
    /// is written to FILE.sig.
    pub file: PathBuf,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Sets `global.version` to N instead of the file's current version + 1.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    /// Writes even a version that nodes running the file's current version would refuse (not
    /// newer, or more than 2^32 ahead).
    #[arg(long)]
    pub force: bool,
}

/// `connectopus config verify FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The mesh configuration to check.
    pub file: PathBuf,
    /// The signature file [default: FILE.sig].
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
}

/// `connectopus init --id NAME`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// This node's name (its `nodes.<NAME>` entry).
    #[arg(long)]
    pub id: String,
    /// Starts from this whole-mesh config file instead of generating a one-node config.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["domain", "subnet", "ip", "backend"])]
    pub config: Option<PathBuf>,
    /// DNS domain of a generated config [default: connectopus.test].
    #[arg(long)]
    pub domain: Option<String>,
    /// Mesh subnet of a generated config [default: a random /64 in fd00::/8].
    #[arg(long)]
    pub subnet: Option<String>,
    /// This node's address in a generated config [default: the subnet's ::1].
    #[arg(long)]
    pub ip: Option<Ipv6Addr>,
    /// A backend `b1` for a generated config, as `key=value,key=value` (e.g.
    /// `type=dtls-dialer,peer=hub.example.net:4444,psk_file=/etc/connectopus/link.psk`).
    #[arg(long, value_name = "K=V,...")]
    pub backend: Option<String>,
    /// The node's data directory [default: /var/lib/connectopus/<NAME>].
    #[arg(long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Reuses an existing data directory: replaces its config.yml and config.yml.sig (other
    /// files in it are left alone).
    #[arg(long)]
    pub force: bool,
}

/// Returns the signature file of a config: the same path with `.sig` appended.
pub fn signature_path(config: &Path) -> PathBuf {
    let mut s = OsString::from(config.as_os_str());
    s.push(".sig");
    PathBuf::from(s)
}

/// Why [`load_signed`] refused a config.
#[derive(Debug, thiserror::Error)]
pub enum SignedConfigError {
    /// The config file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The config does not load.
    #[error("{diagnostics}")]
    Invalid {
        /// Every finding, with file, line and column.
        diagnostics: Diagnostics,
    },
    /// There is no signature file.
    #[error("{} is not signed ({} does not exist)\n  {}", config.display(), signature.display(), how_to_sign(config))]
    Unsigned {
        /// The config file.
        config: PathBuf,
        /// The missing signature file.
        signature: PathBuf,
    },
    /// The signature file exists but could not be read.
    #[error("reading {}: {source}", signature.display())]
    ReadSignature {
        /// The signature file.
        signature: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The signature does not verify against the config's own keys.
    #[error("{}: refusing the config: {error}\n  {}", config.display(), how_to_sign(config))]
    Refused {
        /// The config file.
        config: PathBuf,
        /// Why the signature was refused.
        #[source]
        error: SignatureError,
    },
}

/// Loads a config for the daemon: it must load cleanly and its signature (at `sig_path`) must
/// verify against the config's own `authorized_keys` and `revoked_keys` (trust on first use of
/// the file; a running node verifies updates against the keys it is running instead).
pub fn load_signed(config_path: &Path, sig_path: &Path) -> Result<MeshConfig, SignedConfigError> {
    let bytes = fs::read(config_path).map_err(|source| SignedConfigError::Read {
        path: config_path.to_owned(),
        source,
    })?;
    let mesh = connectopus_config::load(&config_path.display().to_string(), &bytes)
        .map_err(|diagnostics| SignedConfigError::Invalid { diagnostics })?;
    let text = match fs::read_to_string(sig_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignedConfigError::Unsigned {
                config: config_path.to_owned(),
                signature: sig_path.to_owned(),
            });
        }
        Err(source) => {
            return Err(SignedConfigError::ReadSignature {
                signature: sig_path.to_owned(),
                source,
            });
        }
    };
    verify(
        &bytes,
        &text,
        &mesh.global.authorized_keys,
        &mesh.global.revoked_keys,
    )
    .map_err(|error| SignedConfigError::Refused {
        config: config_path.to_owned(),
        error,
    })?;
    Ok(mesh)
}

/// Runs `connectopus config sign`: checks the file, bumps `global.version`, and writes the file
/// and its `.sig`.
pub fn config_sign(args: &SignArgs) -> Result<ExitCode> {
    match sign_config(args)? {
        Outcome::Done(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "signed {} with {}\n  version {} (was {})\n  wrote {}",
                report.file.display(),
                report.signer,
                report.new_version,
                report.old_version,
                report.signature.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Diagnostics(d) => {
            eprint!("{d}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `connectopus config verify`: exit code 0 when the signature verifies against the file's
/// own `authorized_keys`, 1 otherwise.
pub fn config_verify(args: &VerifyArgs) -> Result<ExitCode> {
    match verify_config(args)? {
        Outcome::Done(Ok(report)) => {
            println!(
                "{}: good {} signature by {}; version {}",
                args.file.display(),
                report.algorithm,
                report.signer,
                report.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Done(Err(message)) => {
            eprintln!("{}: {message}", args.file.display());
            Ok(ExitCode::FAILURE)
        }
        Outcome::Diagnostics(d) => {
            eprint!("{d}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `connectopus init`: creates the node's data directory with a signed `config.yml`.
pub fn init(args: &InitArgs) -> Result<ExitCode> {
    match init_datadir(args)? {
        Outcome::Done(report) => {
            println!("Using SSH key {}", report.signer);
            println!(
                "created {} for node {} (version {}) and {}",
                report.config.display(),
                args.id,
                report.version,
                report.signature.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Diagnostics(d) => {
            eprint!("{d}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A handler's result: done, or refused with config diagnostics to print.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// The command ran; its report.
    Done(T),
    /// The config has errors; print them.
    Diagnostics(Diagnostics),
}

/// What `config sign` did (the file, its signature, the signer, old and new version).
#[derive(Debug)]
pub(crate) struct SignReport {
    pub(crate) file: PathBuf,
    pub(crate) signature: PathBuf,
    pub(crate) signer: String,
    pub(crate) old_version: u64,
    pub(crate) new_version: u64,
    pub(crate) warnings: Vec<String>,
}

pub(crate) fn sign_config(args: &SignArgs) -> Result<Outcome<SignReport>> {
    // Write through a symlink to its target, so the link stays a link.
    let file =
        fs::canonicalize(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let bytes = fs::read(&file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = args.file.display().to_string();
    let mesh = match connectopus_config::load(&name, &bytes) {
        Ok(mesh) => mesh,
        Err(d) => return Ok(Outcome::Diagnostics(d)),
    };
    let mut warnings: Vec<String> = mesh.warnings().iter().map(|w| w.to_string()).collect();
    let signer = signer(&args.key)?;
    let signer_line = signer.authorized_keys_line();
    if mesh
        .global
        .revoked_keys
        .iter()
        .any(|k| k.same_key(&signer_line))
    {
        bail!(
            "the signing key {} is listed in global.revoked_keys of {name}",
            signer.describe()
        );
    }
    if !mesh
        .global
        .authorized_keys
        .iter()
        .any(|k| k.same_key(&signer_line))
    {
        warnings.push(format!(
            "the signing key {} is not in global.authorized_keys of {name}: nodes running a config that authorizes it accept this file, but `connectopus config verify` and a node starting from this file refuse it",
            signer.describe()
        ));
    }

    let old = mesh.global.version;
    let new = match args.version {
        Some(n) => n,
        None => old.checked_add(1).ok_or_else(|| {
            anyhow!("global.version is already {old}, the largest possible; it cannot be bumped")
        })?,
    };
    if let Err(e) = check_version(old, new) {
        let why = match e {
            VersionError::NotNewer { .. } => format!(
                "version {new} is not newer than the file's version {old}: nodes running version {old} would ignore it"
            ),
            VersionError::ImplausibleJump { .. } => format!(
                "version {new} is more than 2^32 ahead of the file's version {old}: nodes running version {old} would refuse it as an implausible jump"
            ),
        };
        if !args.force {
            bail!("{why}; use --force to write it anyway");
        }
        warnings.push(format!("{why} (written because of --force)"));
    }

    let edited = match set_version(&name, &bytes, new) {
        Ok(edited) => edited,
        Err(EditError::Invalid(d)) => return Ok(Outcome::Diagnostics(d)),
        Err(e) => return Err(e.into()),
    };
    let signature = signer.sign(&edited)?;
    let sig_text = signature.to_armored();

    let sig_path = signature_path(&file);
    let mode = fs::metadata(&file)?.mode() & 0o7777;
    let sig_mode = fs::metadata(&sig_path).map_or(0o644, |m| m.mode() & 0o7777);
    let staged_config = Staged::new(&file, &edited, mode)?;
    let staged_sig = Staged::new(&sig_path, sig_text.as_bytes(), sig_mode)?;
    staged_config.commit()?;
    staged_sig.commit()?;

    Ok(Outcome::Done(SignReport {
        file: args.file.clone(),
        signature: signature_path(&args.file),
        signer: signer.describe(),
        old_version: old,
        new_version: new,
        warnings,
    }))
}

/// What `config verify` found.
#[derive(Debug)]
pub(crate) struct VerifyReport {
    pub(crate) signer: String,
    pub(crate) algorithm: String,
    pub(crate) version: u64,
}

pub(crate) fn verify_config(args: &VerifyArgs) -> Result<Outcome<Result<VerifyReport, String>>> {
    let bytes = fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mesh = match connectopus_config::load(&args.file.display().to_string(), &bytes) {
        Ok(mesh) => mesh,
        Err(d) => return Ok(Outcome::Diagnostics(d)),
    };
    let sig_path = args
        .signature
        .clone()
        .unwrap_or_else(|| signature_path(&args.file));
    let text = match fs::read_to_string(&sig_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Outcome::Done(Err(format!(
                "not signed: {} does not exist\n  {}",
                sig_path.display(),
                how_to_sign(&args.file)
            ))));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    Ok(Outcome::Done(
        match verify(
            &bytes,
            &text,
            &mesh.global.authorized_keys,
            &mesh.global.revoked_keys,
        ) {
            Ok(by) => Ok(VerifyReport {
                signer: by.to_string(),
                algorithm: by.algorithm,
                version: mesh.global.version,
            }),
            Err(e) => Err(format!("signature refused: {e}")),
        },
    ))
}

/// What `init` did.
#[derive(Debug)]
pub(crate) struct InitReport {
    pub(crate) config: PathBuf,
    pub(crate) signature: PathBuf,
    pub(crate) signer: String,
    pub(crate) version: u64,
}

pub(crate) fn init_datadir(args: &InitArgs) -> Result<Outcome<InitReport>> {
    if !connectopus_config::types::is_dns_label(&args.id, true) {
        bail!(
            "invalid --id {:?}: use 1 to 63 of a-z, 0-9 and `-`, not starting or ending with `-`",
            args.id
        );
    }
    let datadir = args
        .datadir
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_DATA_ROOT).join(&args.id));
    if datadir.exists() && !args.force {
        bail!("data dir {} already exists; use --force", datadir.display());
    }
    let signer = signer(&args.key)?;
    let key_line = signer.authorized_keys_line();

    let (name, bytes) = match &args.config {
        Some(path) => {
            let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.display().to_string();
            let mesh = match connectopus_config::load(&name, &bytes) {
                Ok(mesh) => mesh,
                Err(d) => return Ok(Outcome::Diagnostics(d)),
            };
            if let Err(d) = mesh.node(&args.id) {
                return Ok(Outcome::Diagnostics(Diagnostics(vec![d])));
            }
            let with_key = match add_authorized_key(&name, &bytes, &key_line) {
                Ok(edited) => edited,
                Err(EditError::Invalid(d)) => return Ok(Outcome::Diagnostics(d)),
                Err(e) => return Err(e.into()),
            };
            // A version above the file's (and above the config this data directory held, on
            // --force), as `config sign` stamps it: the mesh's other nodes, initialised with
            // minimal configs or running the file's version, then take this one when it is
            // offered, so one node initialised from the whole file bootstraps the mesh.
            let previous = datadir_version(&datadir.join(DATADIR_CONFIG));
            let base = mesh.global.version.max(previous.unwrap_or(0));
            let version = base.checked_add(1).ok_or_else(|| {
                anyhow!(
                    "global.version is already {base}, the largest possible; it cannot be bumped"
                )
            })?;
            match set_version(&name, &with_key, version) {
                Ok(edited) => (name, edited),
                Err(EditError::Invalid(d)) => return Ok(Outcome::Diagnostics(d)),
                Err(e) => return Err(e.into()),
            }
        }
        None => (
            "generated config".to_owned(),
            minimal_config(args, &key_line)?.into_bytes(),
        ),
    };
    let mesh = match connectopus_config::load(&name, &bytes) {
        Ok(mesh) => mesh,
        Err(d) => return Ok(Outcome::Diagnostics(d)),
    };
    if let Err(d) = mesh.node(&args.id) {
        return Ok(Outcome::Diagnostics(Diagnostics(vec![d])));
    }
    let signature = signer.sign(&bytes)?;

    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&datadir)
    {
        Ok(()) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", datadir.display())),
    }
    // The directory may have existed (--force) or been created by a looser umask.
    fs::set_permissions(&datadir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", datadir.display()))?;
    let config = datadir.join(DATADIR_CONFIG);
    let sig = signature_path(&config);
    let staged_config = Staged::new(&config, &bytes, 0o600)?;
    let staged_sig = Staged::new(&sig, signature.to_armored().as_bytes(), 0o600)?;
    staged_config.commit()?;
    staged_sig.commit()?;
    Ok(Outcome::Done(InitReport {
        config,
        signature: sig,
        signer: signer.describe(),
        version: mesh.global.version,
    }))
}

/// The version of the config a data directory holds, if it holds one that loads.
fn datadir_version(config: &Path) -> Option<u64> {
    let bytes = fs::read(config).ok()?;
    connectopus_config::load(&config.display().to_string(), &bytes)
        .ok()
        .map(|mesh| mesh.global.version)
}

/// Generates a one-node config: the given or default domain, the given or a random /64 in
/// fd00::/8, the node at the given address or the subnet's ::1, an optional backend `b1`, and
/// the signing key as the only authorized key. Its version is 0, so any signed mesh config
/// (version 1 and up) replaces it.
fn minimal_config(args: &InitArgs, key: &SshPublicKey) -> Result<String> {
    let domain = args.domain.as_deref().unwrap_or("connectopus.test");
    let subnet = match &args.subnet {
        Some(s) => s
            .parse::<Ipv6Net>()
            .map_err(|e| anyhow!("invalid --subnet: {e}"))?,
        None => random_subnet()?,
    };
    let address = args
        .ip
        .unwrap_or_else(|| Ipv6Addr::from(u128::from(subnet.network()) | 1));
    let mut yaml = format!(
        "global:\n  domain: {}\n  subnet: {}/{}\n  authorized_keys:\n    - {}\n  version: 0\nnodes:\n  {}:\n    address: {address}\n",
        yaml_scalar(domain),
        subnet.network(),
        subnet.prefix_len(),
        yaml_scalar(key.0.trim()),
        args.id,
    );
    if let Some(spec) = &args.backend {
        yaml.push_str("    backends:\n      b1:\n");
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid --backend item {pair:?}: expected key=value"))?;
            let k = k.trim();
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                bail!("invalid --backend key {k:?}");
            }
            yaml.push_str(&format!("        {k}: {}\n", backend_value(v.trim())));
        }
    }
    Ok(yaml)
}

/// A backend value as YAML: numbers and booleans plain (they are typed), anything else as a
/// string.
fn backend_value(v: &str) -> String {
    let typed = v.parse::<f64>().is_ok() || matches!(v, "true" | "false");
    if typed {
        v.to_owned()
    } else {
        let s = yaml_scalar(v);
        // A plain string YAML would read as something else (`null`, `yes`, `~`): quote it.
        if s == v
            && matches!(
                v,
                "null" | "Null" | "NULL" | "~" | "yes" | "no" | "on" | "off"
            )
        {
            format!("\"{v}\"")
        } else {
            s
        }
    }
}

/// A random /64 inside fd00::/8 (RFC 4193 style: 56 random bits after `fd`).
fn random_subnet() -> Result<Ipv6Net> {
    let mut bytes = [0u8; 7];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let mut addr = [0u8; 16];
    addr[0] = 0xfd;
    addr[1..8].copy_from_slice(&bytes);
    Ipv6Net::new(Ipv6Addr::from(addr), 64).ok_or_else(|| anyhow!("bad prefix length"))
}

pub(crate) fn signer(key: &KeyArgs) -> Result<ConfigSigner> {
    Ok(match (&key.key, &key.agent_socket) {
        (Some(path), _) => ConfigSigner::from_key_file(path)?,
        (None, Some(socket)) if !socket.as_os_str().is_empty() => {
            ConfigSigner::from_agent(socket, key.text.as_deref())?
        }
        (None, _) => ConfigSigner::from_env_agent(key.text.as_deref())?,
    })
}

/// A file written to a temporary name beside its target, fsynced, then renamed over it, so a
/// reader sees the old file or the new one, never a mix.
struct Staged {
    temp: PathBuf,
    target: PathBuf,
}

impl Staged {
    fn new(target: &Path, bytes: &[u8], mode: u32) -> Result<Staged> {
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a file path", target.display()))?;
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp{}", std::process::id()));
        let temp = dir.join(temp_name);
        let _ = fs::remove_file(&temp);
        let staged = Staged {
            temp,
            target: target.to_owned(),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged.temp)
            .with_context(|| format!("creating {}", staged.temp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", staged.temp.display()))?;
        // Keep the target's owner when we may (root editing someone's file); not fatal.
        if let Ok(old) = fs::metadata(target) {
            let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
        }
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", staged.temp.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", staged.temp.display()))?;
        Ok(staged)
    }

    /// Renames the temporary file over the target (dropping `self` then finds nothing to
    /// remove).
    fn commit(self) -> Result<()> {
        fs::rename(&self.temp, &self.target)
            .with_context(|| format!("replacing {}", self.target.display()))?;
        if let Some(dir) = self.target.parent()
            && let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}
