//! The Connectopus protocol core: what a mesh node decides, without doing any I/O.
//!
//! This crate contains no networking code, spawns no threads, opens no files and never reads
//! the clock. Every input is a `handle_*` call that takes the current [`Time`]; every output
//! (messages to send on a link, packets for the TUN device, forwarding tables, events, the next
//! timer) is data the caller polls. The `connectopus` binary drives it over real sockets; the
//! [`sim`] module drives many nodes over simulated links in tests.
//!
//! Layout:
//! - [`node`]: [`node::Node`], the state machine of one mesh node: sessions per link, the
//!   link-state database, flooding, timers, the forwarding table.
//! - [`session`]: the per-link session (hello exchange, liveness, the routing stream).
//! - [`stream`]: the reliable, ordered, flow-controlled routing stream (an ARQ).
//! - [`route`]: Dijkstra over the mesh graph and the longest-prefix-match table.
//! - [`forward`]: the pure per-packet decision the dataplane calls; [`forward4`] its IPv4 rules.
//! - [`forwarder`]: one dataplane worker's per-packet path over an immutable forwarding
//!   snapshot, shared by the daemon and the simulator.
//! - [`icmp`]: ICMPv6 errors and their rate limit; [`icmp4`] ICMPv4 errors.
//! - [`lease_table`], [`lease_issuer`]: an issuer's leases and its answers to lease messages;
//!   [`lease_holder`]: an ephemeral node's side of its lease.
//! - [`identity`]: node keys, the trust policy, and the signed hello and update messages.
//! - [`sim`]: a deterministic multi-node simulator (virtual clock, lossy links) for tests.
//! - [`time`]: the core's notion of time.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod forward;
pub mod forward4;
pub mod forwarder;
pub mod icmp;
pub mod icmp4;
pub mod identity;
pub mod lease_holder;
pub mod lease_issuer;
pub mod lease_table;
pub mod node;
pub mod route;
pub mod session;
pub mod sim;
pub mod stream;
pub mod time;

pub use time::Time;

/// Identifies one link (one backend connection) of a node; chosen by the driver, never reused
/// while the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

impl core::fmt::Display for LinkId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "link{}", self.0)
    }
}
