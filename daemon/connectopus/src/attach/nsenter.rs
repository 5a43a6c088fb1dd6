//! `connectopus nsenter [--id NODE] [--netns NS] [-- CMD ARGS…]`: runs a command (a shell
//! when none is given) inside one of a running node's namespaces, whose only network is the
//! mesh.
//!
//! The node's attach helper registers each namespace as `<control socket>.netns/<name>`
//! holding the pid of the process whose namespaces it is; this command joins that process's
//! user namespace (when it has its own: a node not run as root), then its network, mount and
//! UTS namespaces, and executes the command there, as the calling user.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::sys;

/// Arguments of `connectopus nsenter`.
#[derive(Debug, clap::Args)]
pub struct NsenterArgs {
    /// The node whose namespace to enter.
    #[arg(long)]
    pub id: Option<String>,
    /// Its control socket, instead of the one named by --id.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The namespace (needed when the node has more than one).
    #[arg(long)]
    pub netns: Option<String>,
    /// The command and its arguments [default: $SHELL, else /bin/sh].
    #[arg(last = true)]
    pub command: Vec<OsString>,
}

/// Runs the command inside the namespace; returns only on failure.
///
/// # Errors
/// No such namespace, or it could not be entered, or the command could not run.
pub fn run(socket: &Path, args: &NsenterArgs) -> Result<ExitCode> {
    let registry = super::helper::registry_dir(socket);
    let pid = find(&registry, args.netns.as_deref())?;
    enter(pid)?;
    let (program, rest) = match args.command.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => (
            std::env::var_os("SHELL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| OsString::from("/bin/sh")),
            Vec::new(),
        ),
    };
    let error = std::process::Command::new(&program).args(rest).exec();
    Err(error).with_context(|| format!("running {}", program.to_string_lossy()))
}

/// Returns the pid registered for `netns`, or for the only namespace.
fn find(registry: &Path, netns: Option<&str>) -> Result<i32> {
    let mut names: Vec<String> = match std::fs::read_dir(registry) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let name = match netns {
        Some(n) => {
            if !names.iter().any(|x| x == n) {
                bail!(
                    "the node has no running namespace `{n}` (running: {})",
                    list(&names)
                );
            }
            n.to_owned()
        }
        None => match names.as_slice() {
            [only] => only.clone(),
            [] => bail!(
                "the node runs no namespace (nothing in {})",
                registry.display()
            ),
            _ => bail!(
                "the node runs several namespaces; pick one with --netns ({})",
                list(&names)
            ),
        },
    };
    let path = registry.join(&name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid", path.display()))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Joins the namespaces of process `pid`: its user namespace first when it differs from ours.
fn enter(pid: i32) -> Result<()> {
    let open = |kind: &str| -> Result<std::os::fd::OwnedFd> {
        let path = format!("/proc/{pid}/ns/{kind}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(file.into())
    };
    let same = |kind: &str| -> bool {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{kind}"));
        matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
    };
    // Open them all first: after joining the mount namespace, /proc may be another one.
    let user = (!same("user")).then(|| open("user")).transpose()?;
    let net = open("net")?;
    let mnt = open("mnt")?;
    let uts = open("uts")?;
    if let Some(user) = &user {
        sys::setns(user, libc::CLONE_NEWUSER).context("joining the user namespace")?;
    }
    sys::setns(&net, libc::CLONE_NEWNET).context("joining the network namespace")?;
    sys::setns(&mnt, libc::CLONE_NEWNS).context("joining the mount namespace")?;
    sys::setns(&uts, libc::CLONE_NEWUTS).context("joining the UTS namespace")?;
    // The working directory may not exist in the new mount namespace's view: keep it if it does.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    if std::env::set_current_dir(&cwd).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    Ok(())
}
