//! The client side of the API: `--node NAME` runs a client command on another node through
//! the mesh, and `connectopus token` prints a token.
//!
//! With `--node`, every control request the command makes goes to
//! `http://[<NAME's mesh address>]:<its cpctl.port>/api/v1/control` instead of the local
//! control socket, with a token made on the fly (5 minutes) from the operator's key
//! (`--token-key FILE`, else ssh-agent) or given with `--token`/`CONNECTOPUS_TOKEN`. The
//! local node (found as usual: `--id`, `--socket`, ...) supplies the mesh configuration that
//! says where NAME is and which mesh the token is for.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use connectopus_config::token::{self, TokenScope};
use connectopus_config::{ConfigDuration, ConfigSigner, MeshConfig};

use crate::control::{self, ControlReply, ControlRequest};

/// Lifetime of the token `--node` makes for one command.
const COMMAND_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How long a remote request may take (a configuration change waits for the neighbours).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest answer read.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Options of every client command for running it on another node.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RemoteArgs {
    /// Runs the command on node NAME of the mesh, through its API port
    /// (`nodes.NAME.cpctl.port`), with a token made from your SSH key.
    #[arg(long = "node", id = "remote_node", value_name = "NAME", global = true)]
    pub node: Option<String>,
    /// With --node: the private key that signs the token (default: ssh-agent).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_key: Option<PathBuf>,
    /// With --node: picks the ssh-agent key whose public key line contains this text.
    #[arg(long, value_name = "TEXT", global = true)]
    pub token_key_text: Option<String>,
    /// With --node: a token (from `connectopus token`) instead of making one.
    #[arg(long, env = "CONNECTOPUS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Where `--node` requests go, once worked out.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    token: String,
}

#[derive(Debug)]
struct Remote {
    args: RemoteArgs,
    target: Mutex<Option<Target>>,
}

static REMOTE: OnceLock<Remote> = OnceLock::new();

/// Sends this command's control requests to `args.node`, when set.
pub fn set_remote(args: &RemoteArgs) {
    if args.node.is_some() {
        let _ = REMOTE.set(Remote {
            args: args.clone(),
            target: Mutex::new(None),
        });
    }
}

/// Sends `request` to the `--node` target when there is one (`local` is the local node's
/// control socket, asked once for the mesh configuration); `None` without `--node`.
pub fn request_remote(local: &Path, request: &ControlRequest) -> Option<Result<ControlReply>> {
    let remote = REMOTE.get()?;
    Some(remote.request(local, request))
}

impl Remote {
    fn target(&self, local: &Path) -> Result<Target> {
        let mut guard = self
            .target
            .lock()
            .map_err(|_| anyhow!("remote target lock poisoned"))?;
        if let Some(target) = &*guard {
            return Ok(target.clone());
        }
        let name = self.args.node.clone().unwrap_or_default();
        let config = running_config(local)?;
        let node = config.nodes.get(&name).ok_or_else(|| {
            anyhow!(
                "no node named {name:?} in the mesh (known: {})",
                config.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let Some(port) = node.cpctl.port else {
            bail!(
                "node {name} serves no API: set nodes.{name}.cpctl.port in the mesh configuration"
            );
        };
        let token = match &self.args.token {
            Some(token) => token.trim().to_owned(),
            None => {
                let signer = signer(
                    self.args.token_key.as_deref(),
                    self.args.token_key_text.as_deref(),
                )?;
                token::issue(&signer, &scope(&config), unix_now(), COMMAND_TOKEN_LIFETIME)?
            }
        };
        let target = Target {
            name,
            addr: SocketAddr::new(node.address.into(), port),
            token,
        };
        *guard = Some(target.clone());
        Ok(target)
    }

    fn request(&self, local: &Path, request: &ControlRequest) -> Result<ControlReply> {
        self.post(local, "/api/v1/control", request)
    }

    /// POSTs `body` as JSON to `path` on the target and parses a 200 answer.
    fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        local: &Path,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let target = self.target(local)?;
        let body = serde_json::to_vec(body)?;
        let (status, answer) = http(target.addr, "POST", path, Some(&target.token), &body)
            .with_context(|| format!("asking node {} at {}", target.name, target.addr))?;
        if status == 200 {
            return serde_json::from_slice(&answer)
                .with_context(|| format!("parsing node {}'s answer", target.name));
        }
        let message = error_message(&answer);
        if status == 401 {
            bail!("node {} refused the token: {message}", target.name);
        }
        bail!("node {} answered {status}: {message}", target.name)
    }
}

/// `ping --node NAME`: the node NAME pings; `None` without `--node`.
pub fn ping_remote(
    args: &crate::ping::PingArgs,
    local: &Result<PathBuf>,
) -> Option<Result<ExitCode>> {
    let remote = REMOTE.get()?;
    let request = super::probe::PingRequest {
        target: args.node.clone(),
        count: args.count,
        interval: args.interval,
        timeout: args.timeout,
        size: args.size,
    };
    Some(run_probe(remote, local, "/api/v1/ping", &request))
}

/// `traceroute --node NAME`: the node NAME traces; `None` without `--node`.
pub fn traceroute_remote(
    args: &crate::ping::TracerouteArgs,
    local: &Result<PathBuf>,
) -> Option<Result<ExitCode>> {
    let remote = REMOTE.get()?;
    let request = super::probe::TracerouteRequest {
        target: args.node.clone(),
        max_hops: args.max_hops,
        probes: args.probes,
        wait: args.wait,
    };
    Some(run_probe(remote, local, "/api/v1/traceroute", &request))
}

fn run_probe<B: serde::Serialize>(
    remote: &Remote,
    local: &Result<PathBuf>,
    path: &str,
    request: &B,
) -> Result<ExitCode> {
    let local = match local {
        Ok(path) => path,
        Err(error) => bail!("{error:#}"),
    };
    let outcome: super::probe::ProbeOutcome = remote.post(local, path, request)?;
    print!("{}", outcome.output);
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

fn running_config(local: &Path) -> Result<MeshConfig> {
    match control::request_local(local, &ControlRequest::GetConfig)? {
        ControlReply::Config { config, .. } => {
            connectopus_config::load("running configuration", config.as_bytes())
                .map_err(|d| anyhow!("the local node's configuration does not load: {d}"))
        }
        ControlReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn scope(config: &MeshConfig) -> TokenScope {
    TokenScope {
        domain: config.global.domain.clone(),
        subnet: config.global.subnet.to_string(),
    }
}

fn signer(key: Option<&Path>, text: Option<&str>) -> Result<ConfigSigner> {
    Ok(match key {
        Some(path) => ConfigSigner::from_key_file(path)?,
        None => ConfigSigner::from_env_agent(text)?,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One HTTP/1.1 request; returns the status code and the body.
///
/// # Errors
/// The connection fails or the answer is not HTTP.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    http_within(addr, method, path, token, body, REMOTE_TIMEOUT)
}

/// [`http`] with a timeout for connecting and for each read and write.
///
/// # Errors
/// The connection fails or the answer is not HTTP.
pub fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    (&stream).take(MAX_ANSWER).read_to_end(&mut answer)?;
    let end = super::request::head_end(&answer).context("the answer is not HTTP")?;
    let status_line = String::from_utf8_lossy(&answer[..end]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("the answer has no status")?;
    Ok((status, answer.split_off(end)))
}

/// `connectopus token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// How long the token is valid (at most 24h): e.g. `30m`, `1h`, `8h`.
    #[arg(long, default_value = "1h")]
    pub duration: ConfigDuration,
    /// The mesh configuration file that names the mesh; without it, the local node's
    /// running configuration (--id, --socket).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The local node to ask for the mesh.
    #[arg(long)]
    pub id: Option<String>,
    /// Its control socket, instead of the one named by --id.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub key: crate::config_cli::KeyArgs,
}

/// Prints a token for the mesh, signed by `--key` or the ssh-agent key.
///
/// # Errors
/// The mesh cannot be read or the key cannot sign.
pub fn token(args: &TokenArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            connectopus_config::load(&file.display().to_string(), &bytes)
                .map_err(|d| anyhow!("{d}"))?
        }
        None => running_config(&crate::discovery::resolve(
            args.socket.clone(),
            args.id.clone(),
        )?)?,
    };
    let signer = match (&args.key.key, &args.key.agent_socket) {
        (Some(path), _) => ConfigSigner::from_key_file(path)?,
        (None, Some(socket)) if !socket.as_os_str().is_empty() => {
            ConfigSigner::from_agent(socket, args.key.text.as_deref())?
        }
        (None, _) => ConfigSigner::from_env_agent(args.key.text.as_deref())?,
    };
    let text = token::issue(&signer, &scope(&config), unix_now(), args.duration.get())?;
    let line = signer.authorized_keys_line();
    if !config
        .global
        .authorized_keys
        .iter()
        .any(|k| k.same_key(&line))
    {
        eprintln!(
            "warning: {} is not in this mesh's global.authorized_keys: nodes will refuse the token",
            signer.describe()
        );
    }
    eprintln!(
        "token for mesh {} signed by {}, valid for {}",
        scope(&config),
        signer.describe(),
        args.duration
    );
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
