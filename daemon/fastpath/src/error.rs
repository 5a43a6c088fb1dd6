//! [`FastpathError`]: every way loading, attaching or reading can fail, with the fix in the
//! message.

use std::path::PathBuf;

/// The underlying cause, boxed so that aya's types stay out of this crate's API.
pub(crate) type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from [`crate::find_object`], [`crate::load_object`], [`crate::TunCounters`] or
/// [`crate::serve_helper`].
///
/// Messages say what to do; print them with their sources (`{:#}` with anyhow), which include
/// the kernel's verifier log when a program is rejected.
#[derive(Debug, thiserror::Error)]
pub enum FastpathError {
    /// No object was configured and none exists at the default places: the daemon can run
    /// without eBPF (see [`FastpathError::is_not_built`]).
    #[error("eBPF object not built (looked for {}): run `cargo xtask build-ebpf`", display_paths(.searched))]
    NotBuilt {
        /// Every path that was tried, in order.
        searched: Vec<PathBuf>,
    },
    /// The binary was built without the object (before `cargo xtask build-ebpf`), and no
    /// object file was given.
    #[error(
        "no embedded eBPF object: this binary was built before `cargo xtask build-ebpf`; build \
         the object, then rebuild the node (or pass --ebpf-object FILE)"
    )]
    NotEmbedded,
    /// The configured object path does not exist.
    #[error(
        "eBPF object {} does not exist: fix the configured path, or run `cargo xtask build-ebpf` \
         to build {}", .path.display(), crate::DEFAULT_OBJECT_PATH
    )]
    ObjectNotFound {
        /// The configured path.
        path: PathBuf,
    },
    /// The object exists but could not be read.
    #[error("reading eBPF object {}: check its permissions", .path.display())]
    ReadObject {
        /// The object's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF object, or aya cannot parse it.
    #[error("{what} is not a usable eBPF object: rebuild it with `cargo xtask build-ebpf`")]
    BadObject {
        /// The file, or "the object" when only bytes were given.
        what: String,
        /// The parser's error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The object has no program or map of this name: it was built from another version.
    #[error(
        "the eBPF object has no {kind} `{name}`: it was built from another version; rebuild it \
         with `cargo xtask build-ebpf`"
    )]
    MissingInObject {
        /// `"program"` or `"map"`.
        kind: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// The kernel refused to load a program (missing privileges, or the verifier rejected it).
    #[error(
        "loading eBPF program `{program}` into the kernel: needs root (or CAP_BPF and \
         CAP_NET_ADMIN); if the verifier rejected it, its log follows"
    )]
    Load {
        /// The program's name.
        program: &'static str,
        /// aya's error, with the verifier log.
        #[source]
        source: Source,
    },
    /// A program could not be attached to the interface.
    #[error(
        "attaching eBPF program `{program}` to {direction} of `{ifname}`: check that the interface \
         exists in this network namespace; attaching needs CAP_NET_ADMIN"
    )]
    Attach {
        /// The program's name.
        program: &'static str,
        /// `"ingress"` or `"egress"`.
        direction: &'static str,
        /// The interface.
        ifname: String,
        /// aya's error.
        #[source]
        source: Source,
    },
    /// A map could not be read.
    #[error("reading eBPF map `{map}`")]
    ReadMap {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Source,
    },
    /// A map could not be written (full, or the kernel refused).
    #[error("writing eBPF map `{map}`")]
    WriteMap {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Source,
    },
    /// An argument the maps cannot hold.
    #[error("invalid fast-path entry: {what}")]
    Invalid {
        /// What is wrong, with the value.
        what: String,
    },
    /// The helper process that loads the object for the node could not be started, did not
    /// answer, or could not talk to the node.
    #[error("eBPF helper process `{program}`: {what}")]
    Helper {
        /// The helper's program (the node's own binary).
        program: String,
        /// What went wrong.
        what: String,
        /// The I/O error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The helper process reported an error loading or attaching the programs.
    #[error("{message} (in the eBPF helper process)")]
    HelperFailed {
        /// The helper's error, with its causes.
        message: String,
    },
    /// eBPF programs need Linux.
    #[error("the eBPF fast path needs Linux; run the daemon without it")]
    Unsupported,
}

impl FastpathError {
    /// Returns whether this error only means "the object was never built", so the daemon can run
    /// without eBPF and say so, rather than fail.
    pub fn is_not_built(&self) -> bool {
        matches!(self, FastpathError::NotBuilt { .. })
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
