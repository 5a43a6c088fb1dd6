//! `connectopus ebpf-attach` (hidden): the short-lived helper process in which a node loads
//! and attaches its eBPF programs, so that what aya parses while loading (the kernel's BTF,
//! about 30 MiB of peak resident memory) never touches the node's own memory. The node starts
//! it with a socket as stdin and receives the programs' fds over it; see
//! `connectopus_fastpath::serve_helper`.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "ebpf-attach";

/// The command that starts the helper: this very binary (`/proc/self/exe`, which still works
/// when the file was replaced by an upgrade since the node started).
pub fn command() -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.arg(SUBCOMMAND);
    command
}

/// How the node has its helper started: by the attach helper when there is one, which keeps
/// the rights the node started with (`CAP_BPF`, `CAP_SYS_ADMIN`), also across the node's
/// re-exec for a restart of its mesh instance, after which the node runs without them and
/// under its seccomp filter (a child of its own could load nothing); else as the node's own
/// child, with the node's rights.
pub fn start(
    attach_helper: Option<&Arc<crate::attach::helper::Client>>,
) -> connectopus_fastpath::HelperStart {
    let Some(client) = attach_helper.cloned() else {
        return command().into();
    };
    connectopus_fastpath::HelperStart::Delegate {
        program: format!("{SUBCOMMAND} (started by the attach helper)"),
        start: Box::new(move |socket| {
            // The attach helper runs the same binary; it reaps the process.
            let argv = ["/proc/self/exe".to_owned(), SUBCOMMAND.to_owned()];
            let running = Arc::new(AtomicU32::new(0));
            client.spawn_connection(SUBCOMMAND, &argv, socket, &running)
        }),
    }
}

/// Serves the node's request; exits non-zero if the programs could not be attached (the node
/// got and logs the error) or if there was no node to answer (said on stderr).
pub fn run() -> ExitCode {
    match connectopus_fastpath::serve_helper() {
        Ok(connectopus_fastpath::HelperOutcome::Attached) => ExitCode::SUCCESS,
        Ok(connectopus_fastpath::HelperOutcome::Reported) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}
