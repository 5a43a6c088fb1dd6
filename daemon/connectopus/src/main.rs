//! `connectopus`: the mesh node daemon and its command-line tool.
//!
//! Layout:
//! - `daemon`: the node's main loop (TUN, links, the protocol core) on io_uring.
//! - `backends`: threads that accept and dial TCP connections; dialer backoff.
//! - `links`: link codecs (TCP framing, TLS configuration).
//! - `tun`: the TUN device.
//! - `control`: the local control socket and the `status` report.
//! - `api`: the HTTP API and web UI (control socket and mesh port), tokens, `--node`.
//! - `status`: human-readable rendering of the report.
//! - `edit`: `config edit` in a private scratch directory.
//! - `secrets`: the node's secret files, checked before start.
//! - `state`: the config pair written crash-safely, and the rollback guard.
//! - `ebpf_helper`: the hidden `ebpf-attach` subcommand, which loads the eBPF programs for a node.
//! - `notify`: systemd's readiness notifications (`Type=notify`).
//! - `logging`: `--log-format text|json|journald`.
//! - `completions`: `completions SHELL` and the man pages.
//! - `discovery`: which node a client command talks to without `--id`.
//! - `attach`: namespaces, services and `nsenter` (applications attached to the mesh).
//! - `setup_tunnel`: `setup-tunnel`, persistent TUN devices for a node run without root.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod api;
mod attach;
mod backends;
mod boot_clock;
mod code_pages;
mod completions;
mod config_cli;
mod config_set;
mod control;
mod cpu_local;
mod daemon;
mod diagnostics;
mod discovery;
mod dtls_link;
mod ebpf_helper;
mod edit;
mod identity;
mod links;
mod log_level;
mod logging;
mod metrics;
mod notify;
mod pd;
mod ping;
mod privilege;
mod secrets;
mod setup_tunnel;
mod state;
mod status;
mod tun;
mod wake_cost;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

/// Default MTU of a DTLS link: a 1500-byte underlay path minus IPv6, UDP and DTLS overheads.
pub const DTLS_LINK_MTU: u16 = 1400;

/// Connectopus: an IPv6 mesh network for Linux gateways.
#[derive(Debug, Parser)]
#[command(name = "connectopus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
    #[command(flatten)]
    remote: api::client::RemoteArgs,
}

/// `connectopus node`: which node to run, and how.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The signed mesh configuration (YAML; its signature is FILE.sig). Newer
    /// configurations the node accepts are written back to it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's data directory made by `connectopus init` (it holds config.yml and
    /// config.yml.sig) [default: /var/lib/connectopus/<id>, when --config is not given].
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// This node's name in the configuration.
    #[arg(
        long,
        required_unless_present = "ephemeral",
        conflicts_with = "ephemeral"
    )]
    id: Option<String>,
    /// Joins the mesh as the ephemeral node NAME (not in the configuration): an issuer grants
    /// its address (docs/dynamic-mesh.md). Its key is `--identity-file`, else
    /// `<datadir>/node.key` (made on first run; keeping it keeps the address).
    #[arg(long, value_name = "NAME")]
    ephemeral: Option<String>,
    /// With `--ephemeral`: a shared join key (OpenSSH ed25519 private key) listed in
    /// `global.ephemeral.join_keys`, when the node's own key is not in `identities`.
    #[arg(long, value_name = "FILE", requires = "ephemeral")]
    join_key: Option<PathBuf>,
    /// Where to serve the control socket [default: the node's `cpctl.socket_file`, else
    /// /run/connectopus/<id>.sock]; `cpctl.no_socket` turns it off.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// An eBPF object file to load instead of the one embedded in the binary (built by
    /// `cargo xtask build-ebpf` before the node); the node runs without eBPF when it has none.
    #[arg(long, env = "CONNECTOPUS_EBPF_OBJECT")]
    ebpf_object: Option<PathBuf>,
    /// The node key (OpenSSH ed25519), needed when the node's config entry has an
    /// `identity` [default: /var/lib/connectopus/<id>/identity.key].
    #[arg(long)]
    identity_file: Option<PathBuf>,
    /// How much to log. RUST_LOG, when set, refines it with tracing directives
    /// (e.g. `connectopus::daemon=trace`).
    #[arg(long, value_name = "LEVEL", value_enum, ignore_case = true, default_value_t = LogLevel::Info, env = "CONNECTOPUS_LOG")]
    log_level: LogLevel,
    /// Serves Prometheus metrics at http://ADDR/metrics (e.g. `[::1]:9469`), instead of the
    /// node's `metrics.listen`.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Dataplane worker threads (1 to 64), instead of the node's `workers` (default: one per
    /// CPU, at most 8); 1 runs the dataplane on the main loop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: Option<u32>,
    /// Pins each dataplane worker thread to a CPU of its own and keeps a packet on the
    /// worker of the CPU it appeared on (TUN steering program, DTLS ports' reuseport program;
    /// docs/architecture.md, "The CPU-local data path"), as the node's `cpu_local: true` does.
    /// Needs worker threads, one CPU each.
    #[arg(long)]
    cpu_local: bool,
    /// System calls outside the node's allow-list, once it runs: `enforce` refuses them
    /// with EPERM (the kernel logs each), `log` allows and logs them, `off` installs no
    /// filter (docs/security.md, "Least privilege").
    #[arg(long, value_name = "MODE", value_enum, default_value_t = privilege::SeccompMode::Enforce, env = privilege::SECCOMP_ENV)]
    seccomp: privilege::SeccompMode,
    /// Same as `--seccomp off`: for debugging.
    #[arg(long)]
    no_seccomp: bool,
    /// Keeps every capability the node started with (debugging); by default it keeps only
    /// CAP_NET_ADMIN, and CAP_NET_BIND_SERVICE when it binds ports below 1024.
    #[arg(long, env = "CONNECTOPUS_KEEP_CAPABILITIES")]
    keep_capabilities: bool,
    /// How to log: text on stderr (no timestamps when stderr goes to journald), JSON lines on
    /// stderr, or native journald entries.
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value_t,
        env = "CONNECTOPUS_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Runs one node of the mesh described by a config file.
    Node(NodeArgs),
    /// Shows a running node's links, routes, known nodes and counters.
    Status {
        /// The node to ask (its control socket is /run/connectopus/<id>.sock).
        #[arg(long)]
        id: Option<String>,
        /// The control socket to ask, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Prints the report as JSON.
        #[arg(long)]
        json: bool,
        /// Shows authorized keys in full, not abbreviated.
        #[arg(long, short)]
        verbose: bool,
        /// Prints only problems, one per line, and exits non-zero unless the node runs and
        /// every configured backend has a session.
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Lists an issuing node's active leases: the ephemeral nodes' addresses, names and
    /// keys, and when each lease ends.
    Leases {
        /// The issuing node to ask.
        #[arg(long)]
        id: Option<String>,
        /// Its control socket, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Prints the leases as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sends ICMPv6 echo requests to a node through the mesh and shows each reply's RTT.
    Ping(ping::PingArgs),
    /// Shows the nodes on the path to a node through the mesh, with RTTs.
    Traceroute(ping::TracerouteArgs),
    /// Asks a running node to re-read its configuration files (like SIGHUP) and prints what
    /// changed, or why it was refused.
    Reload {
        /// The node to reload.
        #[arg(long)]
        id: Option<String>,
        /// Its control socket, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Changes a running node's log level.
    LogLevel {
        /// The node.
        #[arg(long)]
        id: Option<String>,
        /// Its control socket, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        args: diagnostics::LogLevelArgs,
    },
    /// Prints a token for the node's API port (`cpctl.port`) and web UI, signed by an SSH
    /// key of global.authorized_keys (a key file or ssh-agent), valid at most 24h.
    Token(api::client::TokenArgs),
    /// Creates a node's data directory holding a signed config (and, with --run, starts
    /// the node on it).
    Init {
        #[command(flatten)]
        args: config_cli::InitArgs,
        /// Starts the node on the new data directory afterwards, like
        /// `connectopus node --datadir DIR --id NAME`.
        #[arg(long)]
        run: bool,
        /// With --run: where to serve the control socket [default:
        /// /run/connectopus/<id>.sock].
        #[arg(long, requires = "run")]
        control_socket: Option<PathBuf>,
        /// With --run: how much to log.
        #[arg(long, value_name = "LEVEL", value_enum, ignore_case = true, default_value_t = LogLevel::Info, env = "CONNECTOPUS_LOG")]
        log_level: LogLevel,
    },
    /// Creates or shows a node key.
    Identity {
        #[command(subcommand)]
        command: identity::IdentityCommand,
    },
    /// Works with mesh configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommands,
    },
    /// Runs a command (default: a shell) inside a namespace of a running node, whose only
    /// network is the mesh.
    Nsenter(attach::nsenter::NsenterArgs),
    /// As root: creates a node's TUN devices as persistent devices owned by a user, with their
    /// addresses, MTU and routes, so the node can run as that user without privileges; with
    /// --check, only verifies them.
    SetupTunnel(setup_tunnel::SetupTunnelArgs),
    /// Asks for a prefix by DHCPv6 prefix delegation on an interface and prints what the
    /// upstream delegates, renews and rebinds until stopped; with --release, gives the saved
    /// delegation back.
    PdClient(pd::PdClientArgs),
    /// Acts on a running node's DHCPv6 prefix delegation (the node `global.delegated` names).
    Pd {
        #[command(subcommand)]
        command: PdCommands,
    },
    /// Creates namespaces and starts service processes for a node (the node runs this itself).
    #[command(name = attach::helper::SUBCOMMAND, hide = true)]
    AttachHelper {
        /// Where namespaces are registered for `nsenter`.
        #[arg(long)]
        registry: PathBuf,
    },
    /// Loads and attaches a node's eBPF programs for it (the node runs this itself).
    #[command(name = ebpf_helper::SUBCOMMAND, hide = true)]
    EbpfAttach,
    /// Writes a shell completion script to stdout.
    Completions(completions::CompletionsArgs),
    /// Writes the man pages of every command into a directory.
    #[command(hide = true)]
    ManPages(completions::ManPagesArgs),
}

/// `connectopus pd …`.
#[derive(Debug, Subcommand)]
enum PdCommands {
    /// Gives the delegated prefix back to the upstream server now (a DHCPv6 Release) and
    /// withdraws it from the mesh; the node asks for none again until its mesh instance
    /// restarts (a restart, or a configuration change that needs one).
    Release {
        /// The delegating node.
        #[arg(long)]
        id: Option<String>,
        /// Its control socket, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommands {
    /// Bumps global.version and signs the file with an SSH key (writes FILE.sig).
    Sign(config_cli::SignArgs),
    /// Verifies FILE.sig against the file's own authorized_keys; exits 1 if it does not verify.
    Verify(config_cli::VerifyArgs),
    /// Prints a running node's configuration (its exact signed bytes).
    Get {
        /// The node to ask.
        #[arg(long)]
        id: Option<String>,
        /// The control socket to ask, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Writes the configuration to this file and its signature to FILE.sig.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Opens a running node's configuration in $VISUAL or $EDITOR; when it changed, signs it
    /// (next version) and submits it like `config set`.
    Edit {
        /// The node to edit.
        #[arg(long)]
        id: Option<String>,
        /// The control socket to use, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        key: config_cli::KeyArgs,
    },
    /// Submits a configuration to a running node, which checks it against the configuration
    /// it runs, offers it to its neighbours, applies it and spreads it through the mesh. FILE
    /// may be `-` (standard input); without FILE.sig (or with --key/--text) the command signs
    /// it, one version above the node's when the file's is not newer.
    Set {
        /// The node to give it to.
        #[arg(long)]
        id: Option<String>,
        /// The control socket to use, instead of the one named by --id.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        args: config_set::SetArgs,
    },
    /// Validates a configuration file offline; exits non-zero on any error.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Prints diagnostics as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if cli.remote.node.is_some() {
        let client = matches!(
            cli.command,
            Commands::Status { .. }
                | Commands::Ping(_)
                | Commands::Traceroute(_)
                | Commands::Reload { .. }
                | Commands::LogLevel { .. }
                | Commands::Config {
                    command: ConfigCommands::Get { .. }
                        | ConfigCommands::Set { .. }
                        | ConfigCommands::Edit { .. }
                }
        );
        if !client {
            anyhow::bail!(
                "--node runs client commands (status, ping, traceroute, reload, log-level, config get/set/edit) on another node; it does not apply here"
            );
        }
        api::client::set_remote(&cli.remote);
    }
    match cli.command {
        Commands::Token(args) => api::client::token(&args),
        Commands::Node(args) => run_node(args),
        Commands::EbpfAttach => Ok(ebpf_helper::run()),
        Commands::AttachHelper { registry } => {
            let level = std::env::var("CONNECTOPUS_LOG")
                .ok()
                .and_then(|l| <LogLevel as clap::ValueEnum>::from_str(&l, true).ok())
                .unwrap_or(LogLevel::Info);
            let format = std::env::var("CONNECTOPUS_LOG_FORMAT")
                .ok()
                .and_then(|f| <logging::LogFormat as clap::ValueEnum>::from_str(&f, true).ok())
                .unwrap_or_default();
            init_logging(level, format)?;
            Ok(attach::helper::run(registry))
        }
        Commands::Nsenter(args) => {
            let socket = socket_path(args.socket.clone(), args.id.clone())?;
            attach::nsenter::run(&socket, &args)
        }
        Commands::SetupTunnel(args) => setup_tunnel::run(&args),
        Commands::PdClient(args) => pd::run(&args).map(|()| ExitCode::SUCCESS),
        Commands::Pd {
            command: PdCommands::Release { id, socket },
        } => diagnostics::pd_release(&socket_path(socket, id)?),
        Commands::Status {
            id,
            socket,
            json,
            verbose,
            check,
        } => {
            if check {
                return diagnostics::status_check(socket_path(socket, id));
            }
            let path = socket_path(socket, id)?;
            match control::request(&path, &control::ControlRequest::Status)? {
                control::ControlReply::Status(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", status::render(&report, verbose));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                control::ControlReply::Error(message) => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
        }
        Commands::Ping(args) => {
            let socket = socket_path(args.local.socket.clone(), args.local.id.clone());
            if let Some(result) = api::client::ping_remote(&args, &socket) {
                return result;
            }
            ping::ping(&args, socket)
        }
        Commands::Traceroute(args) => {
            let socket = socket_path(args.local.socket.clone(), args.local.id.clone());
            if let Some(result) = api::client::traceroute_remote(&args, &socket) {
                return result;
            }
            ping::traceroute(&args, socket)
        }
        Commands::Reload { id, socket } => diagnostics::reload(&socket_path(socket, id)?),
        Commands::Leases { id, socket, json } => {
            diagnostics::leases(&socket_path(socket, id)?, json)
        }
        Commands::LogLevel { id, socket, args } => {
            diagnostics::log_level(&socket_path(socket, id)?, &args)
        }
        Commands::Init {
            args,
            run,
            control_socket,
            log_level,
        } => {
            let code = config_cli::init(&args)?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            // The node key lives in the data directory too; the config only pins its public half.
            let datadir = args
                .datadir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/var/lib/connectopus/{}", args.id)));
            let key = datadir.join("identity.key");
            if key.exists() {
                let line = identity::public_line(&identity::load(&key)?)?;
                println!("node key {} (kept): {line}", key.display());
            } else {
                let line = identity::create(&key, &args.id)?;
                println!("node key {}: {line}", key.display());
                println!("  pin it in the mesh config as nodes.{}.identity", args.id);
            }
            if !run {
                return Ok(ExitCode::SUCCESS);
            }
            println!("starting node {} on {}", args.id, datadir.display());
            run_node(NodeArgs {
                config: None,
                datadir: Some(datadir),
                id: Some(args.id),
                ephemeral: None,
                join_key: None,
                control_socket,
                ebpf_object: None,
                identity_file: None,
                log_level,
                metrics_listen: None,
                workers: None,
                cpu_local: false,
                seccomp: privilege::SeccompMode::Enforce,
                no_seccomp: false,
                keep_capabilities: false,
                log_format: logging::LogFormat::default(),
            })
        }
        Commands::Identity { command } => identity::run(command),
        Commands::Completions(args) => completions::completions(&args, Cli::command()),
        Commands::ManPages(args) => completions::man_pages(&args, Cli::command()),
        Commands::Config {
            command: ConfigCommands::Sign(args),
        } => config_cli::config_sign(&args),
        Commands::Config {
            command: ConfigCommands::Verify(args),
        } => config_cli::config_verify(&args),
        Commands::Config {
            command: ConfigCommands::Get { id, socket, output },
        } => {
            let path = socket_path(socket, id)?;
            match control::request(&path, &control::ControlRequest::GetConfig)? {
                control::ControlReply::Config { config, signature } => {
                    match output {
                        Some(file) => {
                            std::fs::write(&file, &config)
                                .with_context(|| format!("writing {}", file.display()))?;
                            let sig = config_cli::signature_path(&file);
                            std::fs::write(&sig, &signature)
                                .with_context(|| format!("writing {}", sig.display()))?;
                        }
                        None => print!("{config}"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                control::ControlReply::Error(message) => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
        }
        Commands::Config {
            command: ConfigCommands::Edit { id, socket, key },
        } => edit::edit_config(&socket_path(socket, id)?, key),
        Commands::Config {
            command: ConfigCommands::Set { id, socket, args },
        } => config_set::config_set(&socket_path(socket, id)?, &args),
        Commands::Config {
            command: ConfigCommands::Check { file, json },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let diagnostics = connectopus_config::check(&file.display().to_string(), &bytes);
            if json {
                println!("{}", serde_json::to_string_pretty(&diagnostics)?);
            } else if diagnostics.0.is_empty() {
                println!("{}: ok", file.display());
            } else {
                print!("{diagnostics}");
            }
            Ok(if diagnostics.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Runs `connectopus node` until it is stopped.
fn run_node(args: NodeArgs) -> Result<ExitCode> {
    let NodeArgs {
        config,
        datadir,
        id,
        ephemeral,
        join_key,
        control_socket,
        ebpf_object,
        identity_file,
        log_level,
        metrics_listen,
        workers,
        cpu_local,
        seccomp,
        no_seccomp,
        keep_capabilities,
        log_format,
    } = args;
    init_logging(log_level, log_format)?;
    if config.is_some() && datadir.is_some() && ephemeral.is_none() {
        logging::startup_error(
            "--config and --datadir exclude each other (--datadir holds config.yml), \
             except with --ephemeral, where --datadir holds node.key",
        );
        return Ok(ExitCode::FAILURE);
    }
    let Some(id) = id.or_else(|| ephemeral.clone()) else {
        logging::startup_error("--id or --ephemeral is required");
        return Ok(ExitCode::FAILURE);
    };
    let ephemeral = ephemeral.map(|_| daemon::EphemeralOptions {
        key_file: identity_file.clone().unwrap_or_else(|| {
            datadir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/var/lib/connectopus/{id}")))
                .join("node.key")
        }),
        join_key_file: join_key,
    });
    let identity_file = identity_file.or_else(|| {
        datadir
            .as_ref()
            .map(|d| d.join("identity.key"))
            .filter(|k| k.exists())
    });
    let config = config.unwrap_or_else(|| {
        datadir
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/connectopus/{id}")))
            .join("config.yml")
    });
    let sig_path = config_cli::signature_path(&config);
    match state::recover_pair(&config, |c, s| config_cli::load_signed(c, s).is_ok()) {
        Ok(state::Recovery::Clean) => {}
        Ok(recovery) => tracing::warn!(
            config = %config.display(),
            ?recovery,
            "an interrupted configuration update was cleaned up"
        ),
        Err(error) => {
            logging::startup_error(format_args!("{error:#}"));
            return Ok(ExitCode::FAILURE);
        }
    }
    let mesh = match config_cli::load_signed(&config, &sig_path) {
        Ok(mesh) => mesh,
        Err(error) => {
            logging::startup_error(error);
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in mesh.warnings() {
        logging::startup_warning(warning);
    }
    if ephemeral.is_some() {
        if let Err(error) = daemon::ephemeral_entry(&mesh, &id) {
            logging::startup_error(format_args!("{error:#}"));
            return Ok(ExitCode::FAILURE);
        }
    } else if let Err(diagnostic) = mesh.node(&id) {
        logging::startup_fatal(diagnostic);
        return Ok(ExitCode::FAILURE);
    }
    if let Err(error) = state::check_rollback(&config, mesh.global.version) {
        logging::startup_error(format_args!("{error:#}"));
        return Ok(ExitCode::FAILURE);
    }
    if ephemeral.is_none()
        && let Err(error) = secrets::check(&mesh, &id)
    {
        logging::startup_error(error);
        return Ok(ExitCode::FAILURE);
    }
    let signature =
        std::fs::read(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
    // `--control-socket` wins over `cpctl.socket_file` (relative: under /run/connectopus).
    let cpctl = mesh.node(&id).map(|n| n.cpctl.clone()).unwrap_or_default();
    let control_socket = control_socket.unwrap_or_else(|| {
        cpctl.socket_path(&discovery::socket_dir(), control::default_socket_path(&id))
    });
    daemon::run(daemon::NodeOptions {
        config: mesh,
        signature,
        config_path: config,
        id,
        control_socket,
        serve_control_socket: !cpctl.no_socket,
        ebpf_object,
        identity_file,
        metrics_listen,
        workers,
        cpu_local,
        seccomp: if no_seccomp {
            privilege::SeccompMode::Off
        } else {
            seccomp
        },
        drop_capabilities: !keep_capabilities,
        ephemeral,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Returns the control socket named by `--socket`, `--id` or CONNECTOPUS_SOCKET, else the
/// only running node's (see `discovery`).
fn socket_path(socket: Option<PathBuf>, id: Option<String>) -> Result<PathBuf> {
    discovery::resolve(socket, id)
}

/// The levels `--log-level` takes: upstream's words (`warning`), and `warn` as tracing spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    #[value(alias = "warn")]
    Warning,
    /// The node's life: links, sessions, configurations (the default).
    Info,
    /// Per-link and per-message detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warning => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Logs at `level` in `format`, refined by the tracing directives in RUST_LOG when it is set.
/// The level can change later (`connectopus log-level`): see `log_level`.
fn init_logging(level: LogLevel, format: logging::LogFormat) -> Result<()> {
    logging::init(log_level::reloadable(level.filter())?, format)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tracing_subscriber::filter::LevelFilter;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn log_levels_are_upstreams_words_and_mean_tracing_levels() {
        let level = |word: &str| match Cli::try_parse_from([
            "connectopus",
            "node",
            "--id",
            "foo",
            "--log-level",
            word,
        ]) {
            Ok(Cli {
                command: Commands::Node(args),
                ..
            }) => Some(args.log_level.filter()),
            _ => None,
        };
        assert_eq!(level("error"), Some(LevelFilter::ERROR));
        assert_eq!(level("warning"), Some(LevelFilter::WARN));
        assert_eq!(level("warn"), Some(LevelFilter::WARN));
        assert_eq!(level("Warning"), Some(LevelFilter::WARN));
        assert_eq!(level("info"), Some(LevelFilter::INFO));
        assert_eq!(level("debug"), Some(LevelFilter::DEBUG));
        assert_eq!(level("trace"), Some(LevelFilter::TRACE));
        assert_eq!(level("connectopus=debug"), None);
        assert_eq!(level("verbose"), None);
    }
}
