//! Containers' leases at the issuer (`docs/dynamic-mesh.md` §3.3): allocated in the same table
//! as joiners' and answered, like grants, only once the table that records them is persisted.

use std::net::Ipv6Addr;

use super::LeaseIssuer;
use crate::lease_table::{AllocError, ContainerKey, Lease};
use crate::time::Time;

impl LeaseIssuer {
    /// Grants `container` an address (see [`crate::lease_table::LeaseTable::attach_container`]).
    /// Returns the lease, whether it existed, and the table generation that must be persisted
    /// before the lease is answered ([`LeaseIssuer::persisted_generation`]).
    pub fn attach_container(
        &mut self,
        now: Time,
        container: &ContainerKey,
        name: &str,
        busy: impl Fn(Ipv6Addr) -> bool,
    ) -> Result<(Lease, bool, u64), AllocError> {
        let (lease, existing) = self.table.attach_container(now, container, name, busy)?;
        if existing {
            if self.persisted < self.container_wait {
                // Asked again while its table is not written: ask again (the driver's writer
                // retries a failed write itself; this covers a table it could not take).
                self.persist_requested = self.persisted;
            }
        } else {
            self.container_wait = self.table.generation();
        }
        Ok((lease, existing, self.container_wait))
    }

    /// Ends `container`'s lease, if it has one; the change is persisted like an attachment.
    pub fn detach_container(&mut self, now: Time, container: &ContainerKey) -> Option<Lease> {
        let lease = self.table.detach_container(now, container)?;
        self.container_wait = self.table.generation();
        Some(lease)
    }

    /// Ends the leases of `network`'s containers not in `keep`.
    pub fn gc_containers(&mut self, now: Time, network: &str, keep: &[ContainerKey]) -> Vec<Lease> {
        let gone = self.table.gc_containers(now, network, keep);
        if !gone.is_empty() {
            self.container_wait = self.table.generation();
        }
        gone
    }

    /// Returns the names no joiner and no container may take.
    pub fn reserved_names(&self) -> &std::collections::BTreeSet<String> {
        &self.config.policy.reserved_names
    }

    /// Returns the highest table generation the driver reported persisted.
    pub fn persisted_generation(&self) -> u64 {
        self.persisted
    }
}
