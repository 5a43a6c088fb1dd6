//! The attach helper: a process the node starts before it drops its capabilities and installs
//! its seccomp filter (`connectopus attach-helper`, hidden), which does on its behalf what the
//! confined node may not: create network namespaces (see `holder`) and start the programs the
//! configuration names (inetd services, per connection). It runs with the privileges the node
//! started with, and exits when the node does (its socket closes; `PR_SET_PDEATHSIG` too).
//!
//! The two talk over a `SOCK_SEQPACKET` socket pair (the helper's stdin): one JSON message per
//! packet, descriptors attached with `SCM_RIGHTS` (a namespace's TUN device, a connection).
//! The helper keeps a registry of namespaces for `connectopus nsenter`: `<control socket>.netns/
//! <name>` holds the pid of the process whose namespaces are the namespace's. It logs the
//! stderr of inetd connection processes line by line, with the service's name.
//!
//! A node that restarts its mesh instance re-executes itself already confined (fewer
//! capabilities, `no_new_privs`, seccomp), so a helper it started then could not make
//! namespaces. Instead the helper outlives the re-exec: the old image leaves its end of the
//! socket open across `execve` and names it, with the helper's pid, in `CONNECTOPUS_ATTACH_HELPER`
//! ([`Client::hand_over`]); the new image takes it over ([`Client::start`]) after checking
//! that the descriptor is a `SOCK_SEQPACKET` unix socket and the pid its own child, and asks
//! the helper to `Reset`: every namespace of the old image stops, and the new image starts
//! its own. No privilege is regained: the helper only ever had those the node started with.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sys;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "attach-helper";

/// Largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;

/// How long a stopping namespace may take before its process is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The environment variable in which a node hands its helper to its re-executed self:
/// `<descriptor>:<pid>`.
pub const HANDOVER_ENV: &str = "CONNECTOPUS_ATTACH_HELPER";

/// How long a re-executed node waits for the helper it took over to reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest stderr line of a connection process logged whole; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;

/// What the node asks for: a namespace as its holder sets it up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceSetup {
    /// The namespace's name.
    pub name: String,
    /// Its address (a /128 on its TUN device).
    pub address: Ipv6Addr,
    /// Its IPv4 address (a /32 on its TUN device, with an IPv4 default route).
    #[serde(default)]
    pub address4: Option<std::net::Ipv4Addr>,
    /// The TUN device's MTU.
    pub mtu: u16,
    /// The search domain of its `resolv.conf`.
    pub domain: String,
    /// The name server of its `resolv.conf`.
    pub dns_server: Option<Ipv6Addr>,
    /// Long-running commands started inside, by name.
    pub services: BTreeMap<String, Vec<String>>,
}

impl NamespaceSetup {
    /// The namespace as the node's configuration describes it.
    pub fn from_spec(spec: &connectopus_config::attach::NamespaceSpec) -> Self {
        Self {
            name: spec.name.clone(),
            address: spec.address,
            address4: spec.address4,
            mtu: spec.mtu,
            domain: spec.domain.clone(),
            dns_server: spec.dns_server,
            services: spec.services.clone(),
        }
    }

    /// The TUN device's name inside the namespace: `cx-<name>`, cut to 15 bytes.
    pub fn ifname(&self) -> String {
        connectopus_config::model::default_tun_name(&self.name)
    }
}

/// A request of the node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToHelper {
    /// Create a namespace; answered with `NamespaceReady` (and its TUN device) or
    /// `NamespaceFailed`.
    StartNamespace {
        /// Names this start in the answers.
        generation: u64,
        /// What to set up.
        setup: NamespaceSetup,
    },
    /// Stop a namespace's services and let it go.
    StopNamespace {
        /// The namespace.
        name: String,
    },
    /// Stop every namespace (of a previous image of the node) and forget its connections;
    /// answered with `ResetDone`.
    Reset,
    /// Run `argv` with the attached connection as its stdin and stdout; answered with
    /// `Exited` (or `SpawnFailed`).
    Spawn {
        /// Names this connection in the answers.
        id: u64,
        /// The service, for logs.
        service: String,
        /// The command.
        argv: Vec<String>,
    },
}

/// What the helper tells the node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromHelper {
    /// The namespace runs; its TUN device is attached.
    NamespaceReady {
        /// The namespace.
        name: String,
        /// The start this answers.
        generation: u64,
        /// The process that holds it.
        pid: i32,
    },
    /// The namespace could not be made, or ended.
    NamespaceFailed {
        /// The namespace.
        name: String,
        /// The start this answers.
        generation: u64,
        /// Why.
        error: String,
    },
    /// A namespace service started (`pid`) or exited (no `pid`).
    ServiceState {
        /// The namespace.
        name: String,
        /// The start of the namespace this is about.
        generation: u64,
        /// The service.
        service: String,
        /// Its process, while it runs.
        pid: Option<i32>,
        /// How many times it was started again.
        restarts: u32,
    },
    /// The helper stopped what it ran for a previous image of the node.
    ResetDone,
    /// A connection's process could not start.
    SpawnFailed {
        /// The connection.
        id: u64,
        /// Why.
        error: String,
    },
    /// A connection's process ended.
    Exited {
        /// The connection.
        id: u64,
    },
}

/// A message and the descriptor it carried.
#[derive(Debug)]
pub struct Received<T> {
    /// The message.
    pub message: T,
    /// The descriptor, if any.
    pub fd: Option<OwnedFd>,
}

fn send<T: Serialize>(sock: RawFd, message: &T, fd: Option<RawFd>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    sys::send_message(sock, &bytes, fd)
}

/// Receives one message; `Ok(None)` at end of file.
fn recv<T: for<'de> Deserialize<'de>>(sock: RawFd) -> std::io::Result<Option<Received<T>>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fd) = sys::recv_message(sock, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let message =
        serde_json::from_slice(buf.get(..n).unwrap_or_default()).map_err(std::io::Error::other)?;
    Ok(Some(Received { message, fd }))
}

/// The registry directory of the node serving `control_socket`.
pub fn registry_dir(control_socket: &Path) -> PathBuf {
    let mut dir = control_socket.as_os_str().to_owned();
    dir.push(".netns");
    PathBuf::from(dir)
}

mod client;
mod process;

pub use client::Client;
pub use process::run;
