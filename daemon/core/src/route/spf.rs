//! Shortest-path-first over the link-state database.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use connectopus_wire::{Adjacency, Prefix, PrefixAdvert};

/// What the router needs to know about one node: its latest adjacencies and prefixes.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The node's address.
    pub address: Ipv6Addr,
    /// Directed edges from this node, as it advertised them.
    pub adjacencies: &'a [Adjacency],
    /// Prefixes this node delivers.
    pub prefixes: &'a [PrefixAdvert],
}

/// Route computation settings.
#[derive(Debug, Clone, Copy)]
pub struct SpfOptions {
    /// Use an edge A→B only if B also lists A. The mesh always sets this (a session is up only
    /// if both ends say so); the upstream test vectors describe one-way edges and clear it.
    pub require_bidirectional: bool,
}

/// The best path from this node to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRoute {
    /// The neighbour to send to; `None` for this node itself.
    pub first_hop: Option<Ipv6Addr>,
    /// Total path cost in thousandths (sum of edge costs).
    pub cost: u64,
}

/// The best advertiser of a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRoute {
    /// The node chosen to deliver the prefix.
    pub advertiser: Ipv6Addr,
    /// The neighbour to send to; `None` if this node is the chosen advertiser.
    pub first_hop: Option<Ipv6Addr>,
    /// Path cost to the advertiser plus the advertised prefix cost.
    pub cost: u64,
}

/// The result of one route computation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSet {
    /// Every node reachable from this node (this node included, with `first_hop: None`).
    pub nodes: BTreeMap<Ipv6Addr, NodeRoute>,
    /// Every prefix advertised by a reachable node.
    pub prefixes: BTreeMap<Prefix, PrefixRoute>,
}

/// Computes shortest paths from `self_addr` over `nodes` (which should include this node's own
/// view) with Dijkstra, then chooses a route for every advertised prefix.
///
/// Deterministic: the same inputs in any order give the same `RouteSet`.
pub fn compute_routes<'a>(
    self_addr: Ipv6Addr,
    nodes: impl IntoIterator<Item = NodeView<'a>>,
    options: SpfOptions,
) -> RouteSet {
    let _ = (self_addr, options);
    let _ = nodes.into_iter().count();
    todo!("route: compute_routes")
}
