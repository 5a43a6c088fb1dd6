//! Link-state route computation: shortest paths over the mesh graph, and longest-prefix match.
//!
//! - [`spf`]: builds the directed, costed graph from every node's latest link-state update and
//!   runs Dijkstra from this node; picks, for every prefix, the advertiser with the lowest
//!   *total* path cost.
//! - [`table`]: [`PrefixTable`], a longest-prefix-match map that never scans its entries.
//!
//! Nothing here knows about links or sessions: routes name the first-hop *node*; the node maps
//! first hops to links when it builds its forwarding table.

pub mod spf;
pub mod table;

pub use spf::{NodeRoute, NodeView, PrefixRoute, RouteSet, SpfOptions, compute_routes};
pub use table::PrefixTable;
