//! The mesh as a graph for the web UI: every node of the link-state database once, every
//! adjacency once (undirected), and this node's own links with their RTT and byte counters
//! (the UI turns counter deltas into throughput). Compact, so a 1,000-node mesh polls in a
//! few hundred kilobytes.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::control::StatusReport;

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    /// Name.
    pub name: String,
    /// Mesh address.
    pub address: String,
    /// Path cost from the serving node, when reachable.
    pub cost: Option<f64>,
}

/// One adjacency, between `nodes[a]` and `nodes[b]` (`a < b`).
#[derive(Debug, Clone, Serialize)]
pub struct GraphEdge {
    /// Index of one end.
    pub a: usize,
    /// Index of the other end.
    pub b: usize,
    /// Its cost (the larger, when the two ends disagree).
    pub cost: f64,
}

/// One of the serving node's links.
#[derive(Debug, Clone, Serialize)]
pub struct GraphLink {
    /// Index of the peer in `nodes`, once its hello arrived.
    pub peer: Option<usize>,
    /// Backend name.
    pub backend: String,
    /// Session state.
    pub state: String,
    /// Latest RTT.
    pub rtt_ms: Option<f64>,
    /// Cost.
    pub cost: f64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// The whole graph.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// The serving node's index in `nodes`.
    pub me: usize,
    /// The serving node's configuration version.
    pub config_version: u64,
    /// Its uptime, for throughput from counter deltas.
    pub uptime_secs: f64,
    /// Nodes, sorted by name.
    pub nodes: Vec<GraphNode>,
    /// Adjacencies.
    pub edges: Vec<GraphEdge>,
    /// The serving node's links.
    pub links: Vec<GraphLink>,
}

impl Graph {
    /// Builds the graph from a status report.
    pub fn of(report: &StatusReport) -> Graph {
        let mut nodes: BTreeMap<&str, GraphNode> = BTreeMap::new();
        nodes.insert(
            &report.name,
            GraphNode {
                name: report.name.clone(),
                address: report.address.clone(),
                cost: Some(0.0),
            },
        );
        for n in &report.nodes {
            nodes.entry(&n.name).or_insert_with(|| GraphNode {
                name: n.name.clone(),
                address: n.address.clone(),
                cost: n.cost,
            });
        }
        let nodes: Vec<GraphNode> = nodes.into_values().collect();
        let by_address: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.address.as_str(), i))
            .collect();
        let mut edges: BTreeMap<(usize, usize), f64> = BTreeMap::new();
        for n in &report.nodes {
            let Some(&from) = by_address.get(n.address.as_str()) else {
                continue;
            };
            for (peer, cost) in &n.adjacencies {
                let Some(&to) = by_address.get(peer.as_str()) else {
                    continue;
                };
                if to == from {
                    continue;
                }
                let key = (from.min(to), from.max(to));
                let entry = edges.entry(key).or_insert(*cost);
                *entry = entry.max(*cost);
            }
        }
        let links = report
            .links
            .iter()
            .map(|l| GraphLink {
                peer: l
                    .peer_address
                    .as_deref()
                    .and_then(|a| by_address.get(a).copied()),
                backend: l.backend.clone(),
                state: l.state.clone(),
                rtt_ms: l.rtt_ms,
                cost: l.cost,
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
            })
            .collect();
        Graph {
            me: by_address
                .get(report.address.as_str())
                .copied()
                .unwrap_or(0),
            config_version: report.config_version,
            uptime_secs: report.uptime_secs,
            nodes,
            edges: edges
                .into_iter()
                .map(|((a, b), cost)| GraphEdge { a, b, cost })
                .collect(),
            links,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status report of a generated mesh: `n` nodes on a ring with chords.
    pub(crate) fn big_report(n: usize) -> StatusReport {
        let address = |i: usize| format!("fd00::{:x}", i + 1);
        let nodes: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let peers = [(i + 1) % n, (i + n - 1) % n, (i * 7 + 3) % n];
                serde_json::json!({
                    "address": address(i), "name": format!("n{i}"), "epoch": 1, "sequence": 1,
                    "age_secs": 1.0, "cost": i as f64,
                    "adjacencies": peers.iter().filter(|&&p| p != i)
                        .map(|&p| (address(p), 1.0)).collect::<Vec<_>>()
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": "n0", "address": address(0), "subnet": "fd00::/64", "domain": "mesh.test",
            "epoch": 1, "sequence": 1, "uptime_secs": 5.0, "config_version": 3, "removed": null,
            "names": [], "name_conflicts": [], "dns": "off", "tun": "cx",
            "dataplane": "io_uring", "dataplane_fallback_reason": null, "ebpf": "off",
            "links": [{
                "link": 1, "backend": "b", "kind": "dtls dialer", "remote": "[2001:db8::2]:1",
                "state": "established", "peer_address": address(1), "peer_name": "n1",
                "since_unix": 1.0, "rtt_ms": 0.5, "cost": 1.0, "mtu": 1400,
                "bytes_in": 10, "bytes_out": 20
            }],
            "routes": [], "nodes": nodes, "drops": {}, "counters": {}
        }))
        .unwrap()
    }

    #[test]
    fn each_adjacency_is_one_edge_and_a_thousand_nodes_stay_small() {
        let graph = Graph::of(&big_report(1000));
        assert_eq!(graph.nodes.len(), 1000);
        assert_eq!(graph.nodes[graph.me].name, "n0");
        // Ring edges (1000) plus distinct chords, each pair once.
        let mut pairs = std::collections::BTreeSet::new();
        for e in &graph.edges {
            assert!(e.a < e.b);
            assert!(pairs.insert((e.a, e.b)));
        }
        assert!(graph.edges.len() >= 1000, "{}", graph.edges.len());
        assert_eq!(
            graph.links[0].peer.map(|i| graph.nodes[i].name.as_str()),
            Some("n1")
        );
        let json = serde_json::to_string(&graph).unwrap();
        assert!(json.len() < 200_000, "{} bytes", json.len());
    }
}
