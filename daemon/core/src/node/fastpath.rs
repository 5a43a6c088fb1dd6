//! The fast path's entries, derived from the forwarding table the node already computed (one
//! routing logic, not two): which destination prefixes the eBPF fast path may carry itself, and
//! on which plaintext UDP link.
//!
//! A prefix gets an entry when this node's fast path is on ([`NodeConfig::fastpath`]) and
//! - its route leads to a link that is a plaintext UDP link ([`LinkInfo::plain_udp`]) whose
//!   session is established and whose peer said in its hello that it decapsulates in eBPF
//!   ([`Session::peer_decapsulates_in_ebpf`]): the fast path encapsulates and sends;
//! - or it is delivered locally (this node's own address and attached prefixes): the fast path
//!   decapsulates what arrives for it.
//!
//! Everything else (no entry) goes through userspace as before. The whole set is recomputed
//! whenever its inputs may have changed (a new forwarding table, a session established, closed
//! or restarted by its peer, the fast path switched) and issued as
//! [`Command::SetFastpathRoutes`] in the same turn, if it differs from the last one.
//!
//! [`NodeConfig::fastpath`]: super::NodeConfig::fastpath
//! [`Session::peer_decapsulates_in_ebpf`]: crate::session::Session::peer_decapsulates_in_ebpf

use std::sync::Arc;

use connectopus_wire::{Hello, Prefix};

use super::{Command, Node};
use crate::LinkId;
use crate::forward::RouteTarget;
use crate::session::LinkInfo;
use crate::time::Time;

/// One prefix the fast path handles without userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FastpathEntry {
    /// The destination prefix (longest match wins, as in the forwarding table).
    pub prefix: Prefix,
    /// What the fast path does with a packet for it.
    pub target: FastpathTarget,
}

/// What the fast path does with a packet for a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FastpathTarget {
    /// Delivered by this node: decapsulate and hand to the TUN device.
    Local,
    /// Encapsulate and send on this plaintext UDP link (the driver knows its underlay
    /// addresses, ports and interface).
    Link {
        /// The link.
        link: LinkId,
        /// Largest IPv6 packet the link carries.
        mtu: u16,
    },
}

/// The capability bits this node's hello carries on a link.
pub(super) fn hello_capabilities(fastpath: bool, info: &LinkInfo) -> u32 {
    if fastpath && info.plain_udp {
        Hello::CAP_EBPF_DECAP
    } else {
        0
    }
}

impl Node {
    /// Switches this node's fast path on or off (the driver loaded or lost its eBPF programs).
    /// Hellos of sessions that start from now on advertise it; entries are re-derived now.
    pub fn set_fastpath(&mut self, now: Time, enabled: bool) {
        self.config.fastpath = enabled;
        self.fastpath_dirty = true;
        self.after_input(now);
    }

    /// Returns the fast-path entries last issued ([`Command::SetFastpathRoutes`]).
    pub fn fastpath_entries(&self) -> &Arc<[FastpathEntry]> {
        &self.fastpath_entries
    }

    /// Derives the entries from the forwarding table and the sessions, sorted by prefix.
    fn derive_fastpath(&self) -> Vec<FastpathEntry> {
        if !self.config.fastpath {
            return Vec::new();
        }
        let mut entries: Vec<FastpathEntry> = self
            .table
            .routes
            .iter()
            .filter_map(|(prefix, target)| {
                let target = match *target {
                    RouteTarget::Local => FastpathTarget::Local,
                    RouteTarget::Link { link, mtu } => {
                        let session = self.sessions.get(&link)?;
                        if !(session.info().plain_udp && session.peer_decapsulates_in_ebpf()) {
                            return None;
                        }
                        FastpathTarget::Link { link, mtu }
                    }
                };
                Some(FastpathEntry { prefix, target })
            })
            .collect();
        entries.sort_unstable();
        entries
    }

    /// Issues the entries if their inputs changed and they differ from the last ones.
    pub(super) fn update_fastpath(&mut self) {
        if !self.fastpath_dirty {
            return;
        }
        self.fastpath_dirty = false;
        let entries = self.derive_fastpath();
        if *entries != *self.fastpath_entries {
            let entries: Arc<[FastpathEntry]> = Arc::from(entries);
            self.fastpath_entries = entries.clone();
            self.commands.push_back(Command::SetFastpathRoutes(entries));
        }
    }
}
