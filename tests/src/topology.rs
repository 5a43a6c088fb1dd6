//! Named nodes in namespaces joined by veth links: [`Topology`].

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

use crate::netns::{NetNs, Veth, VethConfig};
use crate::plan::{host_in_24, host_in_64};
use crate::tempdir::TestDir;

/// The mesh subnet the node tests give the nodes' TUN devices; distinct from the underlay.
pub const MESH_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xcafe, 0, 0, 0, 0, 0, 0);

/// The underlay /64 of link number `link` (1-based): `2001:db8:<link>::/64`.
pub fn underlay_prefix(link: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0x0db8, link, 0, 0, 0, 0, 0)
}

/// The IPv4 underlay /24 of link number `link` (1..=255): `198.18.<link>.0/24`.
pub fn underlay_prefix_v4(link: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, u8::try_from(link).unwrap_or(u8::MAX), 0)
}

/// A node: a name and its namespace.
#[derive(Debug)]
pub struct Node {
    /// The node name (`foo`, `bar`...).
    pub name: String,
    /// Its namespace.
    pub ns: NetNs,
}

/// A link of a [`Topology`].
#[derive(Debug)]
pub struct Link {
    /// Link number, from 1, which is also the underlay subnet: `2001:db8:<index>::/64`.
    pub index: u16,
    /// The node at end A.
    pub a: String,
    /// The node at end B.
    pub b: String,
    /// The veth pair.
    pub veth: Veth,
}

/// Nodes in their own namespaces joined by veth links.
///
/// Address plan (underlay): link number `k` (from 1, in the order links were added) is
/// `2001:db8:<k>::/64`, and node number `i` (from 1, in the order nodes were added) is host
/// `::<i>` on every link it has, so `2001:db8:2::3` is node 3 on link 2. With IPv4 on, link
/// `k` is also `198.18.<k>.0/24` with hosts `.<i>`. The mesh itself lives elsewhere
/// ([`MESH_PREFIX`], `fd00:cafe::/64`).
///
/// Dropping the topology deletes every namespace, which kills their processes and links.
#[derive(Debug)]
pub struct Topology {
    // Nodes first: deleting the namespaces also removes the links, so the veth guards
    // dropped after them have nothing left to do.
    nodes: Vec<Node>,
    links: Vec<Link>,
    dir: TestDir,
}

/// Builds a [`Topology`]: add nodes and links, then [`build`](Self::build).
#[derive(Clone, Debug, Default)]
pub struct TopologyBuilder {
    nodes: Vec<String>,
    links: Vec<(String, String)>,
    ipv4: bool,
    routed: bool,
    mtu: Option<u32>,
}

impl TopologyBuilder {
    /// Adds a node (no-op if it exists).
    pub fn node(mut self, name: &str) -> Self {
        if !self.nodes.iter().any(|n| n == name) {
            self.nodes.push(name.to_owned());
        }
        self
    }

    /// Adds a link between `a` and `b`, adding the nodes if new.
    pub fn link(self, a: &str, b: &str) -> Self {
        let mut this = self.node(a).node(b);
        this.links.push((a.to_owned(), b.to_owned()));
        this
    }

    /// Also gives every link an IPv4 /24 from 198.18.0.0/15.
    pub fn ipv4(mut self, on: bool) -> Self {
        self.ipv4 = on;
        self
    }

    /// Makes the underlay routed: forwarding on in every namespace and static routes to
    /// every link subnet along shortest paths, so any node reaches any underlay address.
    /// Off by default: then only neighbours reach each other, as mesh tests usually want.
    pub fn routed(mut self, on: bool) -> Self {
        self.routed = on;
        self
    }

    /// Link MTU for every link.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Creates the namespaces and links.
    pub fn build(self, dir: &TestDir) -> Result<Topology> {
        if self.nodes.len() > 250 || self.links.len() > 250 {
            bail!("topology too large for the address plan");
        }
        let mut topo = Topology {
            nodes: Vec::with_capacity(self.nodes.len()),
            links: Vec::with_capacity(self.links.len()),
            dir: dir.clone(),
        };
        for name in &self.nodes {
            let ns = NetNs::new(dir, name)?;
            if self.routed {
                ns.enable_forwarding()?;
            }
            topo.nodes.push(Node {
                name: name.clone(),
                ns,
            });
        }
        for (k, (a, b)) in self.links.iter().enumerate() {
            let index = u16::try_from(k + 1)?;
            let (ia, ib) = (topo.index(a)?, topo.index(b)?);
            let config = VethConfig {
                prefix: underlay_prefix(index),
                v4: self.ipv4.then(|| underlay_prefix_v4(index)),
                host_a: u8::try_from(ia + 1)?,
                host_b: u8::try_from(ib + 1)?,
                mtu: self.mtu,
            };
            let veth = Veth::with_config(&topo.nodes[ia].ns, &topo.nodes[ib].ns, &config)?;
            topo.links.push(Link {
                index,
                a: a.clone(),
                b: b.clone(),
                veth,
            });
        }
        if self.routed {
            topo.add_static_routes(self.ipv4)?;
        }
        Ok(topo)
    }
}

impl Topology {
    /// An empty builder.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// `nodes[0] — nodes[1] — ... — nodes[n-1]`, not routed.
    pub fn line(dir: &TestDir, nodes: &[&str]) -> Result<Topology> {
        Topology::line_builder(nodes).build(dir)
    }

    /// The builder of [`line`](Self::line), to add options (e.g. `.routed(true)`).
    pub fn line_builder(nodes: &[&str]) -> TopologyBuilder {
        let mut builder = nodes.iter().fold(Topology::builder(), |b, n| b.node(n));
        for pair in nodes.windows(2) {
            builder = builder.link(pair[0], pair[1]);
        }
        builder
    }

    /// Three nodes, each linked to the other two (links a–b, b–c, c–a).
    pub fn triangle(dir: &TestDir, nodes: [&str; 3]) -> Result<Topology> {
        Topology::builder()
            .link(nodes[0], nodes[1])
            .link(nodes[1], nodes[2])
            .link(nodes[2], nodes[0])
            .build(dir)
    }

    fn index(&self, node: &str) -> Result<usize> {
        match self.nodes.iter().position(|n| n.name == node) {
            Some(i) => Ok(i),
            None => bail!("no node {node:?} in the topology"),
        }
    }

    fn node(&self, node: &str) -> &Node {
        match self.nodes.iter().find(|n| n.name == node) {
            Some(n) => n,
            None => panic!("no node {node:?} in the topology"),
        }
    }

    /// The test directory.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// The node names, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The links, in order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The namespace of `node`. Panics on an unknown node (a bug in the test).
    pub fn ns(&self, node: &str) -> &NetNs {
        &self.node(node).ns
    }

    /// The first link between `a` and `b` (either orientation). Panics if there is none.
    pub fn link(&self, a: &str, b: &str) -> &Link {
        match self
            .links
            .iter()
            .find(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
        {
            Some(link) => link,
            None => panic!("no link between {a:?} and {b:?}"),
        }
    }

    /// `node`'s underlay address on its link to `peer`.
    pub fn link_addr(&self, node: &str, peer: &str) -> Ipv6Addr {
        let link = self.link(node, peer);
        if link.a == node {
            link.veth.a.v6
        } else {
            link.veth.b.v6
        }
    }

    /// `node`'s IPv4 underlay address on its link to `peer`, if the topology has IPv4.
    pub fn link_addr_v4(&self, node: &str, peer: &str) -> Option<Ipv4Addr> {
        let link = self.link(node, peer);
        if link.a == node {
            link.veth.a.v4
        } else {
            link.veth.b.v4
        }
    }

    /// `node`'s interface name on its link to `peer`.
    pub fn iface(&self, node: &str, peer: &str) -> &str {
        let link = self.link(node, peer);
        if link.a == node {
            &link.veth.a.ifname
        } else {
            &link.veth.b.ifname
        }
    }

    /// `node`'s underlay address: its address on its first link. Panics on a node without
    /// links.
    pub fn underlay(&self, node: &str) -> Ipv6Addr {
        match self.links.iter().find(|l| l.a == node || l.b == node) {
            Some(l) if l.a == node => l.veth.a.v6,
            Some(l) => l.veth.b.v6,
            None => panic!("node {node:?} has no links"),
        }
    }

    /// Every underlay address of `node`, one per link, in link order.
    pub fn underlay_addrs(&self, node: &str) -> Vec<Ipv6Addr> {
        self.links
            .iter()
            .filter_map(|l| {
                if l.a == node {
                    Some(l.veth.a.v6)
                } else if l.b == node {
                    Some(l.veth.b.v6)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Installs, in every namespace, a route to every link subnet it is not on, via the
    /// neighbour on a shortest path (breadth-first, ties to the earliest link).
    fn add_static_routes(&self, ipv4: bool) -> Result<()> {
        let n = self.nodes.len();
        // adjacency: (neighbour, link position)
        let mut adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for (pos, link) in self.links.iter().enumerate() {
            let (a, b) = (self.index(&link.a)?, self.index(&link.b)?);
            adj[a].push((b, pos));
            adj[b].push((a, pos));
        }
        for src in 0..n {
            // first[v] = link position of the first hop from src towards v
            let mut first: Vec<Option<usize>> = vec![None; n];
            let mut dist: Vec<Option<usize>> = vec![None; n];
            dist[src] = Some(0);
            let mut queue = VecDeque::from([src]);
            while let Some(u) = queue.pop_front() {
                let du = dist[u].unwrap_or(0);
                for &(v, pos) in &adj[u] {
                    if dist[v].is_none() {
                        dist[v] = Some(du + 1);
                        first[v] = if u == src { Some(pos) } else { first[u] };
                        queue.push_back(v);
                    }
                }
            }
            let src_name = &self.nodes[src].name;
            for link in &self.links {
                if link.a == *src_name || link.b == *src_name {
                    continue;
                }
                let (a, b) = (self.index(&link.a)?, self.index(&link.b)?);
                // Towards the nearer end of the link.
                let near = match (dist[a], dist[b]) {
                    (Some(da), Some(db)) if db < da => b,
                    (Some(_), _) => a,
                    _ => b,
                };
                let Some(hop) = first[near] else {
                    continue; // unreachable part of the graph
                };
                let hop_link = &self.links[hop];
                let via_end = if hop_link.a == *src_name {
                    &hop_link.veth.b
                } else {
                    &hop_link.veth.a
                };
                let ns = &self.nodes[src].ns;
                let dst = format!("{}/64", underlay_prefix(link.index));
                let via = via_end.v6.to_string();
                ns.ip(&["-6", "route", "add", &dst, "via", &via])?;
                if ipv4 && let Some(via4) = via_end.v4 {
                    let dst4 = format!("{}/24", host_in_24(underlay_prefix_v4(link.index), 0));
                    ns.ip(&["route", "add", &dst4, "via", &via4.to_string()])?;
                }
            }
        }
        Ok(())
    }
}

/// Node `i`'s (1-based) address on link `k`: `2001:db8:<k>::<i>`.
pub fn underlay_addr(link: u16, node: u8) -> Ipv6Addr {
    host_in_64(underlay_prefix(link), node.into())
}
