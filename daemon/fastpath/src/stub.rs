//! [`TunCounters`] where eBPF does not exist: same API, every call fails with
//! [`FastpathError::Unsupported`].

use std::path::Path;

use crate::{AttachMode, CounterSnapshot, FastpathError, HelperOutcome};

/// Fails: eBPF needs Linux.
///
/// # Errors
///
/// Always [`FastpathError::Unsupported`].
pub fn serve_helper() -> Result<HelperOutcome, FastpathError> {
    Err(FastpathError::Unsupported)
}

/// Packet and byte counters on a TUN device; needs Linux, so this one can never be created.
#[derive(Debug)]
pub struct TunCounters {
    _never: (),
}

impl TunCounters {
    /// Fails: eBPF needs Linux.
    ///
    /// # Errors
    ///
    /// Always [`FastpathError::Unsupported`].
    pub fn attach(_ifname: &str, _object: &[u8]) -> Result<Self, FastpathError> {
        Err(FastpathError::Unsupported)
    }

    /// Fails: eBPF needs Linux.
    ///
    /// # Errors
    ///
    /// Always [`FastpathError::Unsupported`].
    pub fn attach_via_helper(
        _helper: impl Into<crate::HelperStart>,
        _ifname: &str,
        _object: Option<&Path>,
    ) -> Result<Self, FastpathError> {
        Err(FastpathError::Unsupported)
    }

    /// Returns whether a helper process loaded the programs (never reached).
    pub fn loaded_by_helper(&self) -> bool {
        false
    }

    /// Fails: eBPF needs Linux.
    ///
    /// # Errors
    ///
    /// Always [`FastpathError::Unsupported`].
    pub fn read(&self) -> Result<CounterSnapshot, FastpathError> {
        Err(FastpathError::Unsupported)
    }

    /// Returns the interface name (never reached).
    pub fn ifname(&self) -> &str {
        ""
    }

    /// Returns the attach mode (never reached).
    pub fn attach_mode(&self) -> AttachMode {
        AttachMode::Tcx
    }
}
