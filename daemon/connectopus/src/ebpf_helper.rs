//! `connectopus ebpf-attach` (hidden): the short-lived helper process in which a node loads
//! and attaches its eBPF programs, so that what aya parses while loading (the kernel's BTF,
//! about 30 MiB of peak resident memory) never touches the node's own memory. The node starts
//! it with a socket as stdin and receives the programs' fds over it; see
//! `connectopus_fastpath::serve_helper`.

use std::process::{Command, ExitCode};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "ebpf-attach";

/// The command that starts the helper: this very binary (`/proc/self/exe`, which still works
/// when the file was replaced by an upgrade since the node started).
pub fn command() -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.arg(SUBCOMMAND);
    command
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
