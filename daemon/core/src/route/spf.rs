//! Shortest-path-first over the link-state database.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv6Addr;

use connectopus_wire::{Adjacency, Prefix, PrefixAdvert};
use rustc_hash::FxHashMap;

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
/// Deterministic: the same inputs in any order give the same `RouteSet`. Views that share an
/// address are merged (their adjacencies and prefixes are united).
///
/// Tie-breaks:
/// - Among equal-cost paths to a node, the path whose first hop has the lowest address wins.
/// - Among advertisers of a prefix with equal total cost (path cost plus advertised prefix
///   cost), the advertiser with the lowest address wins.
///
/// `self_addr` is always in `nodes` of the result (cost 0, no first hop), even if no view
/// describes it; it then has no outgoing edges.
pub fn compute_routes<'a>(
    self_addr: Ipv6Addr,
    nodes: impl IntoIterator<Item = NodeView<'a>>,
    options: SpfOptions,
) -> RouteSet {
    let views: Vec<NodeView<'a>> = nodes.into_iter().collect();
    let graph = Graph::build(self_addr, &views, options);
    let paths = graph.dijkstra();
    graph.route_set(&views, &paths)
}

/// Marks "no first hop" (this node, or not reached) in [`Paths::first_hop`].
const NO_HOP: u32 = u32::MAX;

/// The mesh as a compressed adjacency list over dense node indices.
///
/// Indices follow ascending address order, so comparing indices compares addresses; that keeps
/// the tie-breaks cheap and makes the result independent of the input order.
struct Graph {
    /// Node addresses, ascending; the position is the node's index.
    addrs: Vec<Ipv6Addr>,
    /// Address to index.
    index: FxHashMap<Ipv6Addr, u32>,
    /// Edges of node `i` are `edges[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    /// (target index, cost), sorted by target then cost within each node.
    edges: Vec<(u32, u64)>,
    /// Index of this node.
    source: u32,
}

/// Dijkstra's result, indexed like [`Graph::addrs`].
struct Paths {
    /// Path cost, `u64::MAX` if unreachable.
    dist: Vec<u64>,
    /// Index of the first hop; [`NO_HOP`] for the source and unreachable nodes.
    first_hop: Vec<u32>,
}

impl Graph {
    fn build(self_addr: Ipv6Addr, views: &[NodeView<'_>], options: SpfOptions) -> Graph {
        let mut addrs: Vec<Ipv6Addr> = views.iter().map(|v| v.address).collect();
        addrs.push(self_addr);
        addrs.sort_unstable();
        addrs.dedup();
        let mut index = FxHashMap::default();
        index.reserve(addrs.len());
        for (i, a) in addrs.iter().enumerate() {
            index.insert(*a, i as u32);
        }
        // Every view's address is in `index`, so `from` is always found; `to` may be unknown.
        let mut raw: Vec<(u32, u32, u64)> = Vec::new();
        for view in views {
            let Some(&from) = index.get(&view.address) else {
                continue;
            };
            for adj in view.adjacencies {
                if let Some(&to) = index.get(&adj.peer)
                    && to != from
                {
                    raw.push((from, to, u64::from(adj.cost.0)));
                }
            }
        }
        // Sorting puts each node's edges together (and by target), whatever the input order;
        // parallel edges stay and Dijkstra simply uses the cheapest.
        raw.sort_unstable();
        let mut offsets = vec![0usize; addrs.len() + 1];
        for &(from, _, _) in &raw {
            offsets[from as usize + 1] += 1;
        }
        for i in 0..addrs.len() {
            offsets[i + 1] += offsets[i];
        }
        let mut graph = Graph {
            source: index.get(&self_addr).copied().unwrap_or(0),
            addrs,
            index,
            offsets,
            edges: raw.iter().map(|&(_, to, cost)| (to, cost)).collect(),
        };
        if options.require_bidirectional {
            graph.drop_one_way(&raw);
        }
        graph
    }

    /// Targets of node `i`'s edges, ascending.
    fn edges_of(&self, i: u32) -> &[(u32, u64)] {
        let i = i as usize;
        &self.edges[self.offsets[i]..self.offsets[i + 1]]
    }

    /// True if `from` lists `to` as a peer.
    fn has_edge(&self, from: u32, to: u32) -> bool {
        self.edges_of(from)
            .binary_search_by(|&(t, _)| t.cmp(&to))
            .is_ok()
    }

    /// Removes every edge A→B for which B does not list A.
    fn drop_one_way(&mut self, raw: &[(u32, u32, u64)]) {
        let keep: Vec<bool> = raw
            .iter()
            .map(|&(from, to, _)| self.has_edge(to, from))
            .collect();
        let mut offsets = vec![0usize; self.addrs.len() + 1];
        let mut edges = Vec::with_capacity(raw.len());
        for (&(from, to, cost), keep) in raw.iter().zip(keep) {
            if keep {
                offsets[from as usize + 1] += 1;
                edges.push((to, cost));
            }
        }
        for i in 0..self.addrs.len() {
            offsets[i + 1] += offsets[i];
        }
        self.offsets = offsets;
        self.edges = edges;
    }

    /// Runs Dijkstra from the source with a lazy-deletion binary heap.
    ///
    /// A node's label is (cost, first-hop index) compared lexicographically; extending a path
    /// keeps its first hop and adds the same weight, so the order is preserved and Dijkstra
    /// finds, for each node, the cheapest path and among those the one with the lowest
    /// first-hop address.
    fn dijkstra(&self) -> Paths {
        let n = self.addrs.len();
        let mut dist = vec![u64::MAX; n];
        let mut first_hop = vec![NO_HOP; n];
        let mut done = vec![false; n];
        let mut heap = BinaryHeap::with_capacity(n);
        dist[self.source as usize] = 0;
        heap.push(Reverse((0u64, NO_HOP, self.source)));
        while let Some(Reverse((d, hop, u))) = heap.pop() {
            let ui = u as usize;
            if done[ui] || d != dist[ui] || hop != first_hop[ui] {
                continue;
            }
            done[ui] = true;
            for &(v, w) in self.edges_of(u) {
                let vi = v as usize;
                if done[vi] {
                    continue;
                }
                let nd = d.saturating_add(w);
                let nh = if u == self.source { v } else { hop };
                if (nd, nh) < (dist[vi], first_hop[vi]) {
                    dist[vi] = nd;
                    first_hop[vi] = nh;
                    heap.push(Reverse((nd, nh, v)));
                }
            }
        }
        Paths { dist, first_hop }
    }

    /// Turns Dijkstra's result into the public form and picks an advertiser for each prefix.
    fn route_set(&self, views: &[NodeView<'_>], paths: &Paths) -> RouteSet {
        let hop_addr = |i: usize| {
            let h = paths.first_hop[i];
            (h != NO_HOP).then(|| self.addrs[h as usize])
        };
        let nodes: BTreeMap<Ipv6Addr, NodeRoute> = (0..self.addrs.len())
            .filter(|&i| paths.dist[i] != u64::MAX)
            .map(|i| {
                let route = NodeRoute {
                    first_hop: hop_addr(i),
                    cost: paths.dist[i],
                };
                (self.addrs[i], route)
            })
            .collect();

        // (prefix, total cost, advertiser index): after sorting, the first entry of each prefix
        // is its best advertiser (lowest total, then lowest address).
        let mut offers: Vec<(Prefix, u64, u32)> = Vec::new();
        for view in views {
            let Some(&adv) = self.index.get(&view.address) else {
                continue;
            };
            let base = paths.dist[adv as usize];
            if base == u64::MAX {
                continue;
            }
            for advert in view.prefixes {
                let total = base.saturating_add(u64::from(advert.cost.0));
                offers.push((advert.prefix, total, adv));
            }
        }
        offers.sort_unstable();
        offers.dedup_by_key(|o| o.0);
        let prefixes: BTreeMap<Prefix, PrefixRoute> = offers
            .into_iter()
            .map(|(prefix, cost, adv)| {
                let route = PrefixRoute {
                    advertiser: self.addrs[adv as usize],
                    first_hop: hop_addr(adv as usize),
                    cost,
                };
                (prefix, route)
            })
            .collect();
        RouteSet { nodes, prefixes }
    }
}
