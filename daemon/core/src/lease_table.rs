//! One issuer's lease table: which key holds which address of its pool, until when, under
//! which epoch (`docs/dynamic-mesh.md` §1.2, §1.4, §1.7).
//!
//! Pure state: every method takes `now`, nothing here sends, persists or reads a clock. The
//! safety rules it keeps, checked by the proptest below:
//! - one active lease per address and per key;
//! - an address goes to another key only after its last holder's lease plus `grace` (after a
//!   release: release plus `grace`); a restart keeps this with the persisted table, and without
//!   it by quarantining the whole pool for `lease + grace`;
//! - grant epochs strictly increase over all grants of the issuer.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::Prefix;
use sha2::{Digest, Sha512};

use crate::Time;

/// An ed25519 node key: who holds a lease.
pub type HolderKey = [u8; 32];

/// Most leases one issuer keeps at once (`docs/dynamic-mesh.md`, open question 7).
pub const MAX_LEASES: usize = 65_536;

/// What an issuer's table is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTableConfig {
    /// The pool; offset 0 (the subnet-router anycast address) is never issued.
    pub pool: Prefix,
    /// Lease length.
    pub lease: Duration,
    /// Extra wait before an expired or released address is issued again
    /// (`dead_interval + lease / 1000`).
    pub grace: Duration,
}

/// One active lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub address: Ipv6Addr,
    /// The holder's node key.
    pub key: HolderKey,
    /// The holder's name.
    pub name: String,
    /// The holder's routing epoch under this lease.
    pub epoch: u64,
    /// 0 at the grant, one more per renewal.
    pub renewal: u32,
    /// When the issuer considers the lease over (last grant or renewal plus the lease).
    /// A container's lease never expires (it ends by detach or GC).
    pub expires: Time,
    /// The container that holds the lease (`key` is then [`ContainerKey::holder_key`]);
    /// `None` for an ephemeral node.
    pub container: Option<ContainerKey>,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free address (or [`MAX_LEASES`] reached).
    PoolExhausted,
    /// Another key holds the name.
    NameTaken,
    /// The table was lost; joins wait until this time (§1.7 "Derivation").
    Restarting {
        /// When the quarantine ends.
        until: Time,
    },
}

/// Why a renewal failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewError {
    /// The table holds no such lease (expired, released, another key's, or outside the pool).
    UnknownLease,
}

/// The table as written to disk: times are Unix milliseconds, since `Time` does not survive a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedLeases {
    /// The pool the table was for.
    pub pool: Prefix,
    /// The next grant's epoch.
    pub next_epoch: u64,
    /// Active leases.
    pub leases: Vec<PersistedLease>,
    /// Addresses in hold-down, with the Unix millisecond they become free.
    pub hold_down: Vec<(Ipv6Addr, u64)>,
    /// While the table is quarantined (it was lost before): the Unix millisecond the
    /// quarantine ends. A table written during a quarantine knows neither the leases it waits
    /// out nor those re-adopted after the write, so a restart from it quarantines again for at
    /// least a whole `lease + grace`.
    pub quarantine_until_unix_ms: Option<u64>,
    /// The wall clock when the table was made (Unix milliseconds; 0 if unknown): a restart
    /// whose clock reads earlier counts no time as passed since.
    pub written_unix_ms: u64,
}

/// One lease on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedLease {
    /// The leased address.
    pub address: Ipv6Addr,
    /// The holder's node key.
    pub key: HolderKey,
    /// The holder's name.
    pub name: String,
    /// The lease's epoch.
    pub epoch: u64,
    /// Its renewal count.
    pub renewal: u32,
    /// When it expires, in Unix milliseconds (meaningless for a container's lease).
    pub expires_unix_ms: u64,
    /// The container that holds it, if a container does.
    pub container: Option<ContainerKey>,
    /// The xid of the Renew that made its current renewal, if one did: a resend of that Renew
    /// after a restart gets the current certificate again (and nothing else does).
    pub renew_xid: Option<u64>,
}

/// One issuer's leases.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    config: LeaseTableConfig,
    next_epoch: u64,
    leases: BTreeMap<Ipv6Addr, Lease>,
    /// Address → when it may be issued again.
    hold_down: BTreeMap<Ipv6Addr, Time>,
    /// Key → the address it held last (sticky rejoin).
    last_address: BTreeMap<HolderKey, Ipv6Addr>,
    /// Set when the table was lost: joins are refused until then.
    quarantine_until: Option<Time>,
    /// Address → the xid of the Renew that made its lease's current renewal.
    renew_xids: BTreeMap<Ipv6Addr, u64>,
    /// Bumped by every change; the node persists a generation before answering a grant.
    generation: u64,
}

impl LeaseTable {
    /// An empty table whose first grant has epoch `epoch_floor` (the issuer's routing epoch).
    pub fn new(config: LeaseTableConfig, epoch_floor: u64) -> Self {
        Self {
            config,
            next_epoch: epoch_floor.max(1),
            leases: BTreeMap::new(),
            hold_down: BTreeMap::new(),
            last_address: BTreeMap::new(),
            quarantine_until: None,
            renew_xids: BTreeMap::new(),
            generation: 0,
        }
    }

    /// Rebuilds the table at start (§1.7). With the persisted table every lease gets
    /// `expires = max(persisted, now + lease)`, which covers renewals after the last write;
    /// leases outside a changed pool are dropped (refused at their next renewal). Without it
    /// the whole pool is quarantined until `now + lease + grace`, and renewals re-adopt.
    /// `now_unix_ms` is the wall clock at `now`.
    ///
    /// The file's times are Unix milliseconds, and the wall clock at start may be wrong. Time
    /// since the write counts from `max(now_unix_ms, written_unix_ms)`: a clock behind the
    /// file's write counts as no time passed, so it stretches nothing beyond what the file
    /// held at the write (§1.7 "Wall clock").
    pub fn restore(
        config: LeaseTableConfig,
        persisted: Option<&PersistedLeases>,
        epoch_floor: u64,
        now: Time,
        now_unix_ms: u64,
    ) -> Self {
        let mut table = Self::new(config, epoch_floor);
        let Some(p) = persisted else {
            table.quarantine_until = Some(now + config.lease + config.grace);
            return table;
        };
        table.next_epoch = table.next_epoch.max(p.next_epoch);
        let reference = now_unix_ms.max(p.written_unix_ms);
        let at = |unix_ms: u64| now + Duration::from_millis(unix_ms.saturating_sub(reference));
        // Written during a quarantine: the file does not list the leases it waits out, so the
        // quarantine starts again, however old the file.
        table.quarantine_until = p
            .quarantine_until_unix_ms
            .map(|until| at(until).max(now + config.lease + config.grace));
        for l in &p.leases {
            if !table.in_pool(l.address) || table.leases.contains_key(&l.address) {
                continue;
            }
            if table.leases.values().any(|other| other.key == l.key) {
                continue;
            }
            table.next_epoch = table.next_epoch.max(l.epoch.saturating_add(1));
            table.last_address.insert(l.key, l.address);
            if let Some(xid) = l.renew_xid {
                table.renew_xids.insert(l.address, xid);
            }
            table.leases.insert(
                l.address,
                Lease {
                    address: l.address,
                    key: l.key,
                    name: l.name.clone(),
                    epoch: l.epoch,
                    renewal: l.renewal,
                    expires: at(l.expires_unix_ms).max(now + config.lease),
                    container: l.container.clone(),
                },
            );
        }
        for &(address, until) in &p.hold_down {
            if !table.leases.contains_key(&address) {
                table.hold_down.insert(address, at(until));
            }
        }
        table
    }

    /// Returns the table as it is written to disk.
    pub fn persisted(&self, now: Time, now_unix_ms: u64) -> PersistedLeases {
        let unix = |t: Time| now_unix_ms.saturating_add(millis_ceil(t.saturating_since(now)));
        PersistedLeases {
            pool: self.config.pool,
            next_epoch: self.next_epoch,
            leases: self
                .leases
                .values()
                .map(|l| PersistedLease {
                    address: l.address,
                    key: l.key,
                    name: l.name.clone(),
                    epoch: l.epoch,
                    renewal: l.renewal,
                    expires_unix_ms: unix(l.expires),
                    container: l.container.clone(),
                    renew_xid: self.renew_xids.get(&l.address).copied(),
                })
                .collect(),
            hold_down: self
                .hold_down
                .iter()
                .map(|(&a, &until)| (a, unix(until)))
                .collect(),
            quarantine_until_unix_ms: self.quarantined(now).map(unix),
            written_unix_ms: now_unix_ms,
        }
    }

    /// Returns the configuration.
    pub fn config(&self) -> &LeaseTableConfig {
        &self.config
    }

    /// Returns the change counter.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Returns the epoch the next grant will get.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// Returns the active leases, by address.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Returns the lease of `address`, if any.
    pub fn lease_at(&self, address: Ipv6Addr) -> Option<&Lease> {
        self.leases.get(&address)
    }

    /// Returns the active lease of `key`, if any.
    pub fn lease_of(&self, key: &HolderKey) -> Option<&Lease> {
        let address = self.last_address.get(key)?;
        self.leases.get(address).filter(|l| &l.key == key)
    }

    /// Returns the xid of the Renew that made `address`'s current renewal, if known.
    pub fn renew_xid(&self, address: Ipv6Addr) -> Option<u64> {
        self.renew_xids.get(&address).copied()
    }

    /// Records the xid of the Renew that just renewed `address` (part of that renewal's
    /// change: the generation does not move again).
    pub fn set_renew_xid(&mut self, address: Ipv6Addr, xid: u64) {
        if self.leases.contains_key(&address) {
            self.renew_xids.insert(address, xid);
        }
    }

    /// Returns until when joins are refused as `restarting`, if they are at `now`.
    pub fn quarantined(&self, now: Time) -> Option<Time> {
        self.quarantine_until.filter(|&until| now < until)
    }

    /// Returns how many addresses are in hold-down.
    pub fn hold_down_len(&self) -> usize {
        self.hold_down.len()
    }

    /// Returns the earliest time [`LeaseTable::expire`] has work to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let leases = self
            .leases
            .values()
            .filter(|l| l.container.is_none())
            .map(|l| l.expires)
            .min();
        let holds = self.hold_down.values().copied().min();
        [leases, holds, self.quarantine_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Grants `key` an address under `name` (§1.4 "Allocation", first match wins): the key's
    /// active lease (same address, higher epoch), its last address, `hint`, then a hash of the
    /// key with linear probing. `busy` says whether an origin at an address sent an update
    /// recently (it guards meshes without identities); such addresses are skipped.
    pub fn allocate(
        &mut self,
        now: Time,
        key: HolderKey,
        name: &str,
        hint: Option<Ipv6Addr>,
        busy: impl Fn(Ipv6Addr) -> bool,
    ) -> Result<Lease, AllocError> {
        if let Some(until) = self.quarantined(now) {
            return Err(AllocError::Restarting { until });
        }
        if self.leases.values().any(|l| l.name == name && l.key != key) {
            return Err(AllocError::NameTaken);
        }
        let address = match self.lease_of(&key) {
            Some(active) => active.address,
            None => {
                if self.leases.len() >= MAX_LEASES {
                    return Err(AllocError::PoolExhausted);
                }
                let free = |a: Ipv6Addr| self.is_free(now, a) && !busy(a);
                let sticky = self.last_address.get(&key).copied();
                match sticky.into_iter().chain(hint).find(|&a| free(a)) {
                    Some(a) => a,
                    None => self.probe(&key, &free).ok_or(AllocError::PoolExhausted)?,
                }
            }
        };
        let lease = Lease {
            address,
            key,
            name: name.to_owned(),
            epoch: self.next_epoch,
            renewal: 0,
            expires: now + self.config.lease,
            container: None,
        };
        self.next_epoch = self.next_epoch.saturating_add(1);
        self.hold_down.remove(&address);
        self.renew_xids.remove(&address);
        self.last_address.insert(key, address);
        self.leases.insert(address, lease.clone());
        self.generation += 1;
        Ok(lease)
    }

    /// Extends `key`'s lease of `address` under `epoch` to `now + lease` and returns it with
    /// `renewal` one higher. While the table is quarantined, a renewal of a lease it does not
    /// know re-adopts it (the certificate was checked by the caller), unless another key holds
    /// the address or this key holds another.
    pub fn renew(
        &mut self,
        now: Time,
        key: HolderKey,
        address: Ipv6Addr,
        epoch: u64,
        renewal: u32,
        name: &str,
    ) -> Result<Lease, RenewError> {
        if !self.in_pool(address) {
            return Err(RenewError::UnknownLease);
        }
        let expires = now + self.config.lease;
        if let Some(lease) = self.leases.get_mut(&address) {
            if lease.key != key || lease.epoch != epoch || lease.expires <= now {
                return Err(RenewError::UnknownLease);
            }
            lease.renewal = lease
                .renewal
                .saturating_add(1)
                .max(renewal.saturating_add(1));
            lease.expires = expires;
            self.generation += 1;
            return Ok(lease.clone());
        }
        // Re-adopted only into a table that knows neither the key nor the name: two leases of
        // one name would make the table refuse its own file at the next start.
        if self.quarantined(now).is_none()
            || self.lease_of(&key).is_some()
            || self.leases.values().any(|l| l.name == name)
        {
            return Err(RenewError::UnknownLease);
        }
        let lease = Lease {
            address,
            key,
            name: name.to_owned(),
            epoch,
            renewal: renewal.saturating_add(1),
            expires,
            container: None,
        };
        self.next_epoch = self.next_epoch.max(epoch.saturating_add(1));
        self.hold_down.remove(&address);
        self.last_address.insert(key, address);
        self.leases.insert(address, lease.clone());
        self.generation += 1;
        Ok(lease)
    }

    /// Ends `key`'s lease of `address` under `epoch`; the address is held down for `grace`.
    /// Returns the released lease, or `None` if there was no such lease.
    pub fn release(
        &mut self,
        now: Time,
        key: HolderKey,
        address: Ipv6Addr,
        epoch: u64,
    ) -> Option<Lease> {
        let lease = self.leases.get(&address)?;
        if lease.key != key || lease.epoch != epoch {
            return None;
        }
        let lease = self.leases.remove(&address)?;
        self.renew_xids.remove(&address);
        self.hold_down.insert(address, now + self.config.grace);
        self.generation += 1;
        Some(lease)
    }

    /// Removes the leases that expired by `now` (each address is held down until its expiry
    /// plus `grace`), ends hold-downs and the quarantine that are over, and returns the expired
    /// leases.
    pub fn expire(&mut self, now: Time) -> Vec<Lease> {
        let grace = self.config.grace;
        let over: Vec<Ipv6Addr> = self
            .leases
            .values()
            .filter(|l| l.expires <= now && l.container.is_none())
            .map(|l| l.address)
            .collect();
        let mut expired = Vec::with_capacity(over.len());
        for address in over {
            if let Some(lease) = self.leases.remove(&address) {
                self.renew_xids.remove(&address);
                self.hold_down.insert(address, lease.expires + grace);
                expired.push(lease);
            }
        }
        let before = self.hold_down.len();
        self.hold_down.retain(|_, until| *until > now);
        if self.quarantine_until.is_some_and(|until| until <= now) {
            self.quarantine_until = None;
        }
        if !expired.is_empty() || self.hold_down.len() != before {
            self.generation += 1;
        }
        expired
    }

    /// Tells whether `address` may be granted at `now`: inside the pool, not offset 0, no
    /// lease, not held down.
    pub fn is_free(&self, now: Time, address: Ipv6Addr) -> bool {
        self.in_pool(address)
            && !self.leases.contains_key(&address)
            && self
                .hold_down
                .get(&address)
                .is_none_or(|&until| until <= now)
    }

    /// Tells whether `address` lies in the pool and is not its offset 0.
    pub fn in_pool(&self, address: Ipv6Addr) -> bool {
        self.config.pool.contains(address) && address != self.config.pool.addr()
    }

    /// Linear probing from `hash(key) mod (size - 1) + 1`; bounded, so a huge pool costs at
    /// most a few thousand steps beyond the addresses in use.
    fn probe(&self, key: &HolderKey, free: &impl Fn(Ipv6Addr) -> bool) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.config.pool.len());
        let usable: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if usable == 0 {
            return None;
        }
        let digest = Sha512::digest(key);
        let mut first = [0u8; 16];
        first.copy_from_slice(digest.get(..16)?);
        let start = u128::from_be_bytes(first) % usable;
        let bound = (self.leases.len() + self.hold_down.len() + 4096) as u128;
        let base = u128::from(self.config.pool.addr());
        (0..usable.min(bound))
            .map(|i| Ipv6Addr::from(base + 1 + (start + i) % usable))
            .find(|&a| free(a))
    }
}

/// Rounds a duration up to whole milliseconds.
fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

mod containers;
pub use containers::ContainerKey;

#[cfg(test)]
mod tests;
