//! Containers on this node (`docs/dynamic-mesh.md` §3.3): the CNI plugin asks the node (through
//! the driver) for an address per container interface. Their leases live in the issuer's table
//! from its pool, so they are persisted (and answered only once persisted) like joiners'
//! grants and survive a restart; the node advertises each lease's /128 and name in its own
//! update, inside its `issue_pools`, where the other nodes' trust checks accept them, and
//! delivers their traffic to its TUN device, from where the kernel routes it to the
//! container's veth.

use std::net::Ipv6Addr;

use connectopus_wire::{Cost, NameBinding, Prefix, PrefixAdvert};

use super::Node;
use crate::lease_table::{AllocError, ContainerKey, Lease};
use crate::time::Time;

/// A container's lease, as the driver answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLease {
    /// Who holds it.
    pub key: ContainerKey,
    /// The container's address.
    pub address: Ipv6Addr,
    /// Its name in the mesh (the one asked for, or with a `-<4 hex>` suffix if that was held).
    pub name: String,
    /// The container held it already (a repeated ADD).
    pub existing: bool,
    /// The lease table generation that must be persisted before the lease is answered
    /// ([`Node::leases_persisted_generation`]).
    pub generation: u64,
}

/// Why a container gets no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerError {
    /// This node issues no addresses (no `issue`).
    NotServed,
    /// The pool is full, the table was lost and waits out its quarantine, or no name is free.
    Alloc(AllocError),
}

impl From<AllocError> for ContainerError {
    fn from(e: AllocError) -> Self {
        ContainerError::Alloc(e)
    }
}

/// How many suffixed names are tried before a name counts as taken.
const NAME_TRIES: usize = 16;

/// `name` as a mesh name: lowercase, other bytes `-`, no `-` at either end, at most 63 bytes;
/// `c` if nothing is left.
fn normalize(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let mut name: String = trimmed.chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        name.push('c');
    }
    name
}

fn container_lease(lease: &Lease, existing: bool, generation: u64) -> Option<ContainerLease> {
    Some(ContainerLease {
        key: lease.container.clone()?,
        address: lease.address,
        name: lease.name.clone(),
        existing,
        generation,
    })
}

impl Node {
    /// Gives `key`'s container an address of the issuer's pool under `name` (normalized; with
    /// a `-<4 hex>` suffix when another holder or a reserved name has it), and advertises both.
    /// Idempotent on `key`: a container that holds a lease gets it again (`existing`).
    pub fn attach_container(
        &mut self,
        now: Time,
        key: ContainerKey,
        name: &str,
    ) -> Result<ContainerLease, ContainerError> {
        let Some(state) = self.issuer.as_ref() else {
            return Err(ContainerError::NotServed);
        };
        let table = state.issuer.table();
        let holder = key.holder_key();
        let existing = table.container_lease(&key).is_some();
        let chosen = if existing {
            String::new()
        } else {
            let base = normalize(name);
            let taken = |candidate: &str| {
                candidate == self.config.name
                    || self.names.get(candidate).is_some_and(|e| {
                        // A container's name detached a moment ago stays in the name table
                        // until the next route computation: it is free.
                        let gone = e.owner == self.config.address
                            && table.in_pool(e.address)
                            && table.lease_at(e.address).is_none();
                        !gone
                    })
                    || state.issuer.reserved_names().contains(candidate)
                    || self
                        .config
                        .trust
                        .as_ref()
                        .is_some_and(|t| t.reserved_names.contains(candidate))
                    || table
                        .leases()
                        .any(|l| l.name == candidate && l.key != holder)
            };
            let mut stem: String = base.chars().take(58).collect();
            while stem.ends_with('-') {
                stem.pop();
            }
            let suffixed = holder
                .chunks_exact(2)
                .take(NAME_TRIES)
                .map(|pair| format!("{stem}-{:02x}{:02x}", pair[0], pair[1]));
            std::iter::once(base)
                .chain(suffixed)
                .find(|candidate| !taken(candidate))
                .ok_or(ContainerError::Alloc(AllocError::NameTaken))?
        };
        let database = &self.database;
        let recent = self.config.timers.update_interval * 2;
        // As for joiners: without identities an address whose origin still sends updates is
        // not given out.
        let guard_busy = self.config.trust.is_none();
        let Some(state) = self.issuer.as_mut() else {
            return Err(ContainerError::NotServed);
        };
        let (lease, existing, generation) =
            state
                .issuer
                .attach_container(now, &key, &chosen, |address| {
                    guard_busy
                        && database
                            .get(&address)
                            .is_some_and(|e| now.saturating_since(e.received_at) < recent)
                })?;
        if !existing {
            self.count_lease("container_attached");
            self.containers_changed(now);
        }
        container_lease(&lease, existing, generation).ok_or(ContainerError::NotServed)
    }

    /// Ends `key`'s container lease and withdraws its /128 and name; `None` if it had none.
    pub fn detach_container(&mut self, now: Time, key: &ContainerKey) -> Option<ContainerLease> {
        let state = self.issuer.as_mut()?;
        let lease = state.issuer.detach_container(now, key)?;
        let generation = state.issuer.table().generation();
        self.count_lease("container_detached");
        self.containers_changed(now);
        container_lease(&lease, true, generation)
    }

    /// Ends the leases of `network`'s containers that are not in `keep` (CNI GC) and returns
    /// them.
    pub fn gc_containers(
        &mut self,
        now: Time,
        network: &str,
        keep: &[ContainerKey],
    ) -> Vec<ContainerLease> {
        let Some(state) = self.issuer.as_mut() else {
            return Vec::new();
        };
        let gone = state.issuer.gc_containers(now, network, keep);
        let generation = state.issuer.table().generation();
        if !gone.is_empty() {
            *self
                .counters
                .leases
                .entry("container_detached")
                .or_default() += gone.len() as u64;
            self.containers_changed(now);
        }
        gone.iter()
            .filter_map(|l| container_lease(l, true, generation))
            .collect()
    }

    /// Returns the lease `key`'s container holds, if any.
    pub fn container(&self, key: &ContainerKey) -> Option<ContainerLease> {
        let table = self.leases()?;
        container_lease(table.container_lease(key)?, true, 0)
    }

    /// Returns every container's lease.
    pub fn containers(&self) -> Vec<ContainerLease> {
        self.leases()
            .map(|t| {
                t.container_leases()
                    .filter_map(|l| container_lease(l, true, 0))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Returns the highest lease table generation the driver reported persisted (0 without an
    /// issuer): a container's lease is answered once this reaches its `generation`.
    pub fn leases_persisted_generation(&self) -> u64 {
        self.issuer
            .as_ref()
            .map_or(0, |s| s.issuer.persisted_generation())
    }

    /// The /128s of this node's containers, advertised with its own prefixes.
    pub(super) fn container_prefixes(&self) -> impl Iterator<Item = PrefixAdvert> + '_ {
        self.leases().into_iter().flat_map(|t| {
            t.container_leases().map(|l| PrefixAdvert {
                prefix: Prefix::host(l.address),
                cost: Cost(0),
            })
        })
    }

    /// The names of this node's containers, published with its attachments' names.
    pub(super) fn container_names(&self) -> impl Iterator<Item = NameBinding> + '_ {
        self.leases().into_iter().flat_map(|t| {
            t.container_leases().map(|l| NameBinding {
                name: l.name.clone(),
                address: l.address,
            })
        })
    }

    /// A container came or went: persist the table, re-advertise, recompute routes and names.
    fn containers_changed(&mut self, now: Time) {
        self.poll_lease_persist(now);
        self.trigger_update(now);
        self.schedule_spf(now);
        self.after_input(now);
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names_are_normalized_to_mesh_names() {
        assert_eq!(normalize("Web_1"), "web-1");
        assert_eq!(normalize("-web-"), "web");
        assert_eq!(normalize("__"), "c");
        assert_eq!(normalize(&"a".repeat(99)).len(), 63);
        let long = format!("{}-b", "a".repeat(62));
        assert_eq!(normalize(&long), "a".repeat(62));
    }
}
