//! `connectopus config set`: submits a configuration to a running node.
//!
//! The file may be `-` (standard input). Its signature is `--signature FILE`, else `FILE.sig`
//! when it exists and no key was named; otherwise the command signs it itself, with `--key` or
//! ssh-agent (`--text` picks the agent's key), as `config sign` would but without writing
//! anything: when the file's `global.version` is not newer than the node's running version, it
//! is stamped one above it first.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use crate::config_cli::{self, KeyArgs};
use crate::control::{self, ControlReply, ControlRequest};

/// `connectopus config set` arguments (besides the node to ask).
#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    /// The configuration file, or `-` to read it from standard input.
    pub file: PathBuf,
    /// Its signature [default: FILE.sig; without one, the command signs the file itself].
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Runs `config set` against the control socket `socket`.
///
/// # Errors
/// The file, its signature or the node cannot be read, or signing fails.
pub fn config_set(socket: &Path, args: &SetArgs) -> Result<ExitCode> {
    let from_stdin = args.file.as_os_str() == "-";
    let name = if from_stdin {
        "<stdin>".to_owned()
    } else {
        args.file.display().to_string()
    };
    let mut bytes = Vec::new();
    if from_stdin {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the configuration from standard input")?;
    } else {
        bytes = std::fs::read(&args.file).with_context(|| format!("reading {name}"))?;
    }
    let key_named = args.key.key.is_some() || args.key.text.is_some();
    let sig_file = match &args.signature {
        Some(path) => Some(path.clone()),
        None if !from_stdin && !key_named => {
            Some(config_cli::signature_path(&args.file)).filter(|p| p.exists())
        }
        None => None,
    };
    let (config, signature) = match sig_file {
        Some(path) => {
            let signature = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (bytes, signature)
        }
        None => sign_for(socket, &name, &bytes, &args.key)?,
    };
    let config = String::from_utf8(config).map_err(|_| anyhow!("{name} is not UTF-8 text"))?;
    let request = ControlRequest::SetConfig { config, signature };
    match control::request(socket, &request)? {
        ControlReply::Accepted { version } => {
            println!("configuration version {version} accepted; it spreads through the mesh");
            Ok(ExitCode::SUCCESS)
        }
        ControlReply::Error(message) => {
            eprintln!("refused: {message}");
            Ok(ExitCode::FAILURE)
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Signs `bytes` for the node on `socket`: stamped one version above the node's running one
/// when the file's own version is not newer. Returns the bytes to send and the signature.
fn sign_for(socket: &Path, name: &str, bytes: &[u8], key: &KeyArgs) -> Result<(Vec<u8>, String)> {
    let mesh = connectopus_config::load(name, bytes)
        .map_err(|d| anyhow!("{name} has errors; nothing was sent:\n{d}"))?;
    let running = match control::request(socket, &ControlRequest::Status)? {
        ControlReply::Status(report) => report.config_version,
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    let bytes = if mesh.global.version > running {
        bytes.to_vec()
    } else {
        let next = running
            .checked_add(1)
            .ok_or_else(|| anyhow!("the node runs version {running}, the largest possible"))?;
        connectopus_config::set_version(name, bytes, next)
            .map_err(|e| anyhow!("stamping version {next} into {name}: {e}"))?
    };
    let signer = config_cli::signer(key).with_context(|| {
        format!("{name} has no signature: give one with --signature, or a key to sign it with")
    })?;
    let signature = signer.sign(&bytes)?.to_armored();
    eprintln!("signed with {}", signer.describe());
    Ok((bytes, signature))
}
