//! Containers' leases (`docs/dynamic-mesh.md` §3.3): the same table and pool as ephemeral
//! nodes, held under a key derived from the container's CNI key, never expiring; they end by
//! detach or garbage collection.

use std::net::Ipv6Addr;

use sha2::{Digest, Sha512};

use super::{AllocError, HolderKey, Lease, LeaseTable};
use crate::Time;

/// Who holds a container's lease: the CNI network, the container and its interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerKey {
    /// The CNI network name (the configuration's `name`).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl ContainerKey {
    /// The table key a container's lease is held under: a hash of the three parts, which no
    /// ephemeral node can hold (it would need the private key of that value).
    pub fn holder_key(&self) -> HolderKey {
        let mut hash = Sha512::new();
        hash.update(b"connectopus container lease\0");
        for part in [&self.network, &self.container_id, &self.ifname] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let digest = hash.finalize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest[..32]);
        key
    }
}

impl LeaseTable {
    /// Returns the lease `container` holds, if any.
    pub fn container_lease(&self, container: &ContainerKey) -> Option<&Lease> {
        self.lease_of(&container.holder_key())
            .filter(|l| l.container.as_ref() == Some(container))
    }

    /// Returns the containers' leases.
    pub fn container_leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values().filter(|l| l.container.is_some())
    }

    /// Grants `container` an address under `name`: its lease again if it has one (unchanged,
    /// `true`), else a new one (`false`), chosen like a joiner's (its last address, then a
    /// hash of its key) among addresses free and not `busy`. Refused while the table is
    /// quarantined: joiners re-adopting their leases are not known yet.
    pub fn attach_container(
        &mut self,
        now: Time,
        container: &ContainerKey,
        name: &str,
        busy: impl Fn(Ipv6Addr) -> bool,
    ) -> Result<(Lease, bool), AllocError> {
        if let Some(lease) = self.container_lease(container) {
            return Ok((lease.clone(), true));
        }
        let key = container.holder_key();
        let mut lease = self.allocate(now, key, name, None, busy)?;
        lease.container = Some(container.clone());
        if let Some(stored) = self.leases.get_mut(&lease.address) {
            stored.container = Some(container.clone());
        }
        Ok((lease, false))
    }

    /// Ends `container`'s lease; its address is held down for the grace like a released one.
    pub fn detach_container(&mut self, now: Time, container: &ContainerKey) -> Option<Lease> {
        let lease = self.container_lease(container)?.clone();
        self.release(now, lease.key, lease.address, lease.epoch)
    }

    /// Ends the leases of `network`'s containers not in `keep` and returns them.
    pub fn gc_containers(&mut self, now: Time, network: &str, keep: &[ContainerKey]) -> Vec<Lease> {
        let gone: Vec<ContainerKey> = self
            .container_leases()
            .filter_map(|l| l.container.clone())
            .filter(|c| c.network == network && !keep.contains(c))
            .collect();
        gone.iter()
            .filter_map(|c| self.detach_container(now, c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::LeaseTableConfig;
    use super::*;

    fn table() -> LeaseTable {
        LeaseTable::new(
            LeaseTableConfig {
                pool: "fd00:0:0:e1::/125".parse().unwrap(),
                lease: Duration::from_secs(20),
                grace: Duration::from_secs(7),
            },
            1,
        )
    }

    fn c(id: &str) -> ContainerKey {
        ContainerKey {
            network: "mesh".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn at(secs: u64) -> Time {
        Time::from_duration(Duration::from_secs(secs))
    }

    #[test]
    fn containers_hold_addresses_until_detached_and_never_expire() {
        let mut t = table();
        let (a, existing) = t
            .attach_container(at(0), &c("a"), "web", |_| false)
            .unwrap();
        assert!(!existing && t.in_pool(a.address));
        let (again, existing) = t.attach_container(at(1), &c("a"), "x", |_| false).unwrap();
        assert!(existing);
        assert_eq!((again.address, again.name.as_str()), (a.address, "web"));
        // Another interface of the same container is another lease.
        let mut eth1 = c("a");
        eth1.ifname = "eth1".into();
        let (b, _) = t
            .attach_container(at(1), &eth1, "web-b", |_| false)
            .unwrap();
        assert_ne!(a.address, b.address);
        assert_eq!(
            t.attach_container(at(1), &c("z"), "web", |_| false)
                .unwrap_err(),
            AllocError::NameTaken
        );
        // Far past the lease: still there, and no deadline for it.
        assert!(t.expire(at(10_000)).is_empty());
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.container_leases().count(), 2);
        let gone = t.detach_container(at(10_000), &c("a")).unwrap();
        assert_eq!(gone.address, a.address);
        assert!(t.detach_container(at(10_000), &c("a")).is_none());
        assert!(!t.is_free(at(10_000), a.address), "held down for the grace");
        assert!(t.is_free(at(10_007), a.address));
    }

    #[test]
    fn gc_ends_unlisted_containers_of_its_network_only() {
        let mut t = table();
        let mut other = c("o");
        other.network = "other".into();
        for (k, name) in [(c("a"), "a"), (c("b"), "b"), (other.clone(), "o")] {
            t.attach_container(at(0), &k, name, |_| false).unwrap();
        }
        let gone = t.gc_containers(at(1), "mesh", &[c("b")]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].container, Some(c("a")));
        assert!(t.container_lease(&c("b")).is_some());
        assert!(t.container_lease(&other).is_some());
        assert_eq!(t.gc_containers(at(1), "mesh", &[]).len(), 1);
        assert_eq!(t.container_leases().count(), 1);
    }

    #[test]
    fn containers_survive_a_restart_from_the_persisted_table_and_quarantine_refuses_them() {
        let mut t = table();
        let (a, _) = t
            .attach_container(at(0), &c("a"), "web", |_| false)
            .unwrap();
        let persisted = t.persisted(at(5), 1_000_000);
        let mut restored =
            LeaseTable::restore(*t.config(), Some(&persisted), 1, at(100), 9_000_000);
        let lease = restored.container_lease(&c("a")).unwrap();
        assert_eq!((lease.address, lease.name.as_str()), (a.address, "web"));
        // Restored leases expire by their persisted times; a container's never does.
        assert!(restored.expire(at(1_000_000)).is_empty());
        assert_eq!(restored.next_deadline(), None);
        let mut lost = LeaseTable::restore(*t.config(), None, 1, at(100), 9_000_000);
        assert!(matches!(
            lost.attach_container(at(100), &c("a"), "web", |_| false),
            Err(AllocError::Restarting { .. })
        ));
    }
}
