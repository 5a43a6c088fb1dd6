//! The names the mesh resolves: this node's, its attachments' and those of every reachable
//! origin, with conflicts settled the same way on every node (the lowest claimant address wins).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use connectopus_wire::NameBinding4;

use super::{Event, Node};

/// A name the mesh resolves, and the node that published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The address the name resolves to.
    pub address: Ipv6Addr,
    /// Its IPv4 address, if the name's owner published one.
    pub address4: Option<Ipv4Addr>,
    /// The node whose update published the name.
    pub owner: Ipv6Addr,
}

/// Two or more nodes claim one name, or one address under different names. Every node resolves
/// it the same way: the claim of the node with the lowest address wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameConflict {
    /// The contested name, or the contested address as text.
    pub contested: String,
    /// The nodes that claim it, lowest address (the winner) first.
    pub claimants: Vec<Ipv6Addr>,
}

impl Node {
    /// Returns every name the mesh resolves right now: this node's, its attachments', and
    /// those of every reachable node (a node that becomes unreachable takes its names with it).
    pub fn names(&self) -> &BTreeMap<String, NameEntry> {
        &self.names
    }

    /// Returns the current name conflicts.
    pub fn name_conflicts(&self) -> &[NameConflict] {
        &self.name_conflicts
    }

    /// Rebuilds the name table from this node and every reachable origin, resolving conflicts
    /// by the lowest claimant address.
    pub(super) fn rebuild_names(&mut self) {
        // (name, address, owner) claims, from this node first.
        let mut claims: Vec<(String, Ipv6Addr, Ipv6Addr)> = Vec::new();
        let own = self.config.address;
        claims.push((self.config.name.clone(), own, own));
        for binding in &self.config.names {
            claims.push((binding.name.clone(), binding.address, own));
        }
        for binding in self.container_names() {
            claims.push((binding.name, binding.address, own));
        }
        for entry in self.database.values() {
            let origin = entry.update.origin;
            if !self.routes.nodes.contains_key(&origin) {
                continue;
            }
            claims.push((entry.update.name.clone(), origin, origin));
            for binding in &entry.update.names {
                claims.push((binding.name.clone(), binding.address, origin));
            }
        }
        let mut by_name: BTreeMap<String, Vec<(Ipv6Addr, Ipv6Addr)>> = BTreeMap::new();
        let mut by_address: BTreeMap<Ipv6Addr, Vec<(Ipv6Addr, String)>> = BTreeMap::new();
        for (name, address, owner) in claims {
            by_address
                .entry(address)
                .or_default()
                .push((owner, name.clone()));
            by_name.entry(name).or_default().push((owner, address));
        }
        let mut names = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (name, mut owners) in by_name {
            owners.sort();
            owners.dedup();
            let Some(&(owner, address)) = owners.first() else {
                continue;
            };
            let mut claimants: Vec<Ipv6Addr> = owners.iter().map(|(o, _)| *o).collect();
            claimants.dedup();
            if claimants.len() > 1 {
                conflicts.push(NameConflict {
                    contested: name.clone(),
                    claimants,
                });
            }
            let address4 = self
                .names4_of(owner)
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a);
            names.insert(
                name,
                NameEntry {
                    address,
                    address4,
                    owner,
                },
            );
        }
        for (address, mut owners) in by_address {
            owners.sort();
            owners.dedup_by(|a, b| a.0 == b.0);
            if owners.len() > 1 {
                conflicts.push(NameConflict {
                    contested: address.to_string(),
                    claimants: owners.iter().map(|(o, _)| *o).collect(),
                });
                // The address belongs to the lowest claimant: drop other owners' names for it.
                let winner = owners[0].0;
                names.retain(|_, e| e.address != address || e.owner == winner);
            }
        }
        for conflict in &conflicts {
            if !self.name_conflicts.contains(conflict) {
                tracing::warn!(contested = %conflict.contested, claimants = ?conflict.claimants, "name conflict");
                self.events.push_back(Event::NameConflict(conflict.clone()));
            }
        }
        self.name_conflicts = conflicts;
        if names != self.names {
            self.names = names;
            self.events.push_back(Event::NamesChanged {
                n_names: self.names.len(),
            });
        }
    }

    /// The IPv4 names this node publishes: its own name at `address4` and its attachments'.
    pub(super) fn own_names4(&self) -> Vec<NameBinding4> {
        let mut names4 = self.config.names4.clone();
        if let Some(address) = self.config.address4 {
            names4.push(NameBinding4 {
                name: self.config.name.clone(),
                address,
            });
        }
        names4
    }

    /// The IPv4 names `owner` (this node or a known origin) publishes.
    pub(super) fn names4_of(&self, owner: Ipv6Addr) -> impl Iterator<Item = (&str, Ipv4Addr)> + '_ {
        let own = (owner == self.config.address).then(|| {
            let attachments = self
                .config
                .names4
                .iter()
                .map(|b| (b.name.as_str(), b.address));
            let node = self.config.address4.map(|a| (self.config.name.as_str(), a));
            node.into_iter().chain(attachments)
        });
        let origin = self
            .database
            .get(&owner)
            .filter(|_| owner != self.config.address)
            .map(|e| e.update.names4.iter().map(|b| (b.name.as_str(), b.address)));
        own.into_iter()
            .flatten()
            .chain(origin.into_iter().flatten())
    }
}
