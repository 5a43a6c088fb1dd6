//! An issuer's answers to lease messages (`docs/dynamic-mesh.md` §1.4, §1.5, §1.7): who may
//! join under which name, the grant with its signed certificate (held back until the table it
//! changed is persisted), renewals, releases.
//!
//! Pure like [`crate::lease_table`]: every call takes `now`; the table to persist leaves as data
//! ([`LeaseIssuer::poll_persist`]) and the driver reports it written
//! ([`LeaseIssuer::leases_persisted`]). The node (step 5 of §4, not wired yet) feeds it the Join,
//! Renew and Release messages of its joining sessions and routing streams and sends the answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::lease::{join_proof_message, release_message, renew_message};
use connectopus_wire::{JoinProof, LeaseBody, LeaseCertificate, LeaseMessage, RefuseCode};

use crate::identity::{NodeKey, PublicKey, sign_certificate, verify};
use crate::lease_table::{AllocError, LeaseTable, LeaseTableConfig, PersistedLeases, RenewError};
use crate::time::Time;

/// A name pattern of `global.ephemeral.names` or `issue.names`: exactly one `*`, standing for
/// one or more characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    prefix: String,
    suffix: String,
}

impl NamePattern {
    /// Parses `pattern`; `None` unless it has exactly one `*`.
    pub fn new(pattern: &str) -> Option<Self> {
        let (prefix, suffix) = pattern.split_once('*')?;
        if suffix.contains('*') {
            return None;
        }
        Some(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// Tells whether `name` matches: the prefix, one or more characters, the suffix.
    pub fn matches(&self, name: &str) -> bool {
        name.len() > self.prefix.len() + self.suffix.len()
            && name.starts_with(&self.prefix)
            && name.ends_with(&self.suffix)
    }
}

/// Who may join, under which names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinPolicy {
    /// Keys that may join as themselves (`global.ephemeral.identities`).
    pub identities: BTreeSet<PublicKey>,
    /// Shared join keys: whoever proves to hold one may join (`global.ephemeral.join_keys`).
    pub join_keys: BTreeSet<PublicKey>,
    /// Allowed names; empty allows any valid name that is not reserved.
    pub names: Vec<NamePattern>,
    /// Names of static nodes and attachments: never given out.
    pub reserved_names: BTreeSet<String>,
}

/// What an issuer is configured with.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The issuer's own (static) node address, named in its certificates.
    pub address: Ipv6Addr,
    /// Its pool, lease and grace.
    pub table: LeaseTableConfig,
    /// Who may join.
    pub policy: JoinPolicy,
    /// The issuer's routing epoch: grant epochs start above it.
    pub epoch_floor: u64,
}

/// The joining session a Join arrived on, as the node knows it.
#[derive(Debug, Clone, Copy)]
pub struct JoinSession {
    /// Chosen by the caller (the link); handed back with a grant released by persistence.
    pub token: u64,
    /// The key the join hello proved.
    pub holder_key: PublicKey,
    /// The session's channel binding (the join-key proof must cover it).
    pub binding: [u8; 32],
}

/// A grant or renewal waiting for the table that records it to be persisted.
#[derive(Debug, Clone)]
struct PendingAnswer {
    generation: u64,
    token: u64,
    answer: LeaseMessage,
}

/// One issuer's lease state and answers.
#[derive(Debug)]
pub struct LeaseIssuer {
    config: IssuerConfig,
    key: Option<NodeKey>,
    table: LeaseTable,
    pending: Vec<PendingAnswer>,
    /// The table generation last handed out for persisting.
    persist_requested: u64,
    /// The highest generation the driver reported persisted.
    persisted: u64,
    /// Per leased address, the xid of the Renew that made its current renewal (a resend of
    /// that Renew, its answer lost, is answered again without extending the lease) and the
    /// table generation that recorded it (its answer waits for that generation on disk).
    last_renew: BTreeMap<Ipv6Addr, (u64, u64)>,
    /// Per joining session (token), when a Join on it last allocated: the next may allocate
    /// [`JOIN_INTERVAL`] later (older entries are dropped).
    last_join: BTreeMap<u64, Time>,
    /// The table generation the latest container change needs persisted (see the
    /// `containers` module): a container's lease is answered only once it is.
    container_wait: u64,
}

/// A joining session's Joins allocate (and so make the table to persist change) at most once
/// per this interval; a Join while the session's grant waits for the disk answers that grant
/// instead (`docs/dynamic-mesh.md` §1.4).
pub const JOIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refused joiner should wait before asking again, by default.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl LeaseIssuer {
    /// Creates an issuer with an empty table (or `restored` from disk, see
    /// [`LeaseTable::restore`]); `key` signs certificates (`None` in a mesh without
    /// identities).
    pub fn new(config: IssuerConfig, key: Option<NodeKey>, table: LeaseTable) -> Self {
        let persisted = table.generation();
        // Restored renewals are on disk: their answers need not wait.
        let last_renew = table
            .leases()
            .filter_map(|l| table.renew_xid(l.address).map(|xid| (l.address, (xid, 0))))
            .collect();
        Self {
            config,
            key,
            table,
            pending: Vec::new(),
            persist_requested: persisted,
            persisted,
            last_renew,
            last_join: BTreeMap::new(),
            container_wait: persisted,
        }
    }

    /// Creates an issuer with a new, empty table.
    pub fn fresh(config: IssuerConfig, key: Option<NodeKey>) -> Self {
        let table = LeaseTable::new(config.table, config.epoch_floor);
        Self::new(config, key, table)
    }

    /// Returns the lease table.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// Returns who may join.
    pub fn policy(&self) -> &JoinPolicy {
        &self.config.policy
    }

    /// Tells whether an answer with `token` waits for the disk.
    pub fn waits(&self, token: u64) -> bool {
        self.pending.iter().any(|p| p.token == token)
    }

    /// Returns how many grants wait for persistence.
    pub fn pending_grants(&self) -> usize {
        self.pending.len()
    }

    fn refuse(xid: u64, code: RefuseCode, retry_after: Duration, text: &str) -> LeaseMessage {
        LeaseMessage {
            xid,
            body: LeaseBody::Refuse {
                code,
                retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
                text: text.to_owned(),
            },
        }
    }

    fn t1_ms(&self) -> u32 {
        u32::try_from(self.config.table.lease.as_millis() / 2).unwrap_or(u32::MAX)
    }

    fn certificate(&self, lease: &crate::lease_table::Lease) -> LeaseCertificate {
        let mut cert = LeaseCertificate {
            address: lease.address,
            epoch: lease.epoch,
            renewal: lease.renewal,
            lease_ms: u32::try_from(self.config.table.lease.as_millis()).unwrap_or(u32::MAX),
            issuer: self.config.address,
            holder_key: lease.key,
            name: lease.name.clone(),
            signature: None,
        };
        if let Some(key) = &self.key {
            sign_certificate(key, &mut cert);
        }
        cert
    }

    /// Answers a Join. Returns a Refuse at once, or `None`: the grant is allocated and waits
    /// for [`LeaseIssuer::leases_persisted`] of the generation [`LeaseIssuer::poll_persist`]
    /// hands out. `name_held` tells the key that holds a name live in the node's name table
    /// (another key's name is refused); `busy` tells addresses whose origin updated recently.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_join(
        &mut self,
        now: Time,
        session: JoinSession,
        xid: u64,
        hint: Ipv6Addr,
        name: &str,
        proof: Option<&JoinProof>,
        name_held: impl Fn(&str) -> Option<PublicKey>,
        busy: impl Fn(Ipv6Addr) -> bool,
    ) -> Option<LeaseMessage> {
        let policy = &self.config.policy;
        let authorised = policy.identities.contains(&session.holder_key)
            || proof.is_some_and(|p| {
                policy.join_keys.contains(&p.join_key)
                    && verify(
                        &p.join_key,
                        &join_proof_message(&session.binding, &session.holder_key, xid, name),
                        &p.signature,
                    )
            });
        if !authorised {
            return Some(Self::refuse(
                xid,
                RefuseCode::NotAuthorized,
                RETRY_AFTER,
                "key not allowed to join",
            ));
        }
        let name_ok = connectopus_wire::check_name(name).is_ok()
            && !policy.reserved_names.contains(name)
            && (policy.names.is_empty() || policy.names.iter().any(|p| p.matches(name)));
        if !name_ok {
            return Some(Self::refuse(
                xid,
                RefuseCode::NameNotAllowed,
                RETRY_AFTER,
                "name not allowed",
            ));
        }
        if name_held(name).is_some_and(|k| k != session.holder_key) {
            return Some(Self::refuse(
                xid,
                RefuseCode::NameTaken,
                RETRY_AFTER,
                "name held by another node",
            ));
        }
        // The session's grant still waits for the disk (a slow write outlasted the joiner's
        // Join timeout, or a joiner floods): this Join gets that grant; nothing is allocated,
        // so no new epoch and no new table to write.
        if let Some(waiting) = self.pending.iter_mut().find(|p| {
            p.token == session.token
                && matches!(&p.answer.body, LeaseBody::Grant { cert, .. }
                    if cert.holder_key == session.holder_key && cert.name == name)
        }) {
            waiting.answer.xid = xid;
            return None;
        }
        self.last_join
            .retain(|_, at| now.saturating_since(*at) < JOIN_INTERVAL);
        if let Some(at) = self.last_join.get(&session.token) {
            let wait = JOIN_INTERVAL.saturating_sub(now.saturating_since(*at));
            return Some(Self::refuse(
                xid,
                RefuseCode::Busy,
                wait,
                "joining too often on this session",
            ));
        }
        let hint = (!hint.is_unspecified()).then_some(hint);
        match self
            .table
            .allocate(now, session.holder_key, name, hint, busy)
        {
            Ok(lease) => {
                self.last_join.insert(session.token, now);
                let answer = LeaseMessage {
                    xid,
                    body: LeaseBody::Grant {
                        t1_ms: self.t1_ms(),
                        cert: self.certificate(&lease),
                    },
                };
                self.pending.push(PendingAnswer {
                    generation: self.table.generation(),
                    token: session.token,
                    answer,
                });
                None
            }
            Err(AllocError::PoolExhausted) => Some(Self::refuse(
                xid,
                RefuseCode::PoolExhausted,
                RETRY_AFTER,
                "pool exhausted",
            )),
            Err(AllocError::NameTaken) => Some(Self::refuse(
                xid,
                RefuseCode::NameTaken,
                RETRY_AFTER,
                "name held by another lease",
            )),
            Err(AllocError::Restarting { until }) => Some(Self::refuse(
                xid,
                RefuseCode::Restarting,
                until - now,
                "issuer restarting",
            )),
        }
    }

    /// Returns the table to persist if it changed since the last request and a grant or a
    /// container's lease waits for it: the driver writes it and calls
    /// [`LeaseIssuer::leases_persisted`] with the generation.
    pub fn poll_persist(&mut self, now: Time, now_unix_ms: u64) -> Option<(u64, PersistedLeases)> {
        let generation = self.table.generation();
        let containers_wait = self.container_wait > self.persist_requested;
        if generation == self.persist_requested || (self.pending.is_empty() && !containers_wait) {
            return None;
        }
        self.persist_requested = generation;
        Some((generation, self.table.persisted(now, now_unix_ms)))
    }

    /// The driver wrote the table of `generation`: returns the grants it covers, each with the
    /// token of its joining session.
    pub fn leases_persisted(&mut self, generation: u64) -> Vec<(u64, LeaseMessage)> {
        self.persisted = self.persisted.max(generation);
        let persisted = self.persisted;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.generation <= persisted);
        self.pending = waiting;
        ready.into_iter().map(|p| (p.token, p.answer)).collect()
    }

    /// Decides a Renew: the certificate must be this issuer's, signed by it (with a key), and
    /// the holder's signature must cover the request; the holder must still be allowed to
    /// join. A renewal changes the table, which must be on disk before the holder hears of it
    /// (§1.7: otherwise a restarted issuer would take a replay of the Renew that made it):
    /// pass the answer through [`LeaseIssuer::hold_until_persisted`].
    pub fn handle_renew(
        &mut self,
        now: Time,
        xid: u64,
        cert: &LeaseCertificate,
        holder_sig: &[u8; 64],
    ) -> LeaseMessage {
        let ours = cert.issuer == self.config.address
            && match &self.key {
                Some(key) => cert
                    .signature
                    .is_some_and(|s| verify(&key.public(), &cert.signed_message(), &s)),
                None => true,
            };
        if !ours || !verify(&cert.holder_key, &renew_message(xid, cert), holder_sig) {
            return Self::refuse(xid, RefuseCode::UnknownLease, RETRY_AFTER, "not our lease");
        }
        let policy = &self.config.policy;
        // A holder admitted by its own key must still be listed; of one admitted by a join key
        // only whether join keys remain can be checked (the table does not record which).
        let still_allowed =
            policy.identities.contains(&cert.holder_key) || !policy.join_keys.is_empty();
        if policy.reserved_names.contains(&cert.name) || !still_allowed {
            return Self::refuse(xid, RefuseCode::NotAuthorized, RETRY_AFTER, "not allowed");
        }
        // A Renew must carry the current certificate. One renewal older is a resend of the
        // Renew whose answer was lost (same xid): it gets the current certificate again, and
        // the lease is not extended, so replaying a holder's Renew cannot keep a vanished
        // holder's address out of the pool.
        if let Some(lease) = self.table.lease_at(cert.address)
            && lease.key == cert.holder_key
            && lease.epoch == cert.epoch
            && cert.renewal < lease.renewal
        {
            let resend = cert.renewal.saturating_add(1) == lease.renewal
                && self.last_renew.get(&cert.address).map(|r| r.0) == Some(xid)
                && lease.expires > now;
            if !resend {
                return Self::refuse(xid, RefuseCode::UnknownLease, RETRY_AFTER, "stale lease");
            }
            let lease = lease.clone();
            return LeaseMessage {
                xid,
                body: LeaseBody::Renewed {
                    t1_ms: self.t1_ms(),
                    cert: self.certificate(&lease),
                },
            };
        }
        match self.table.renew(
            now,
            cert.holder_key,
            cert.address,
            cert.epoch,
            cert.renewal,
            &cert.name,
        ) {
            Ok(lease) => {
                self.table.set_renew_xid(lease.address, xid);
                self.last_renew
                    .insert(lease.address, (xid, self.table.generation()));
                LeaseMessage {
                    xid,
                    body: LeaseBody::Renewed {
                        t1_ms: self.t1_ms(),
                        cert: self.certificate(&lease),
                    },
                }
            }
            Err(RenewError::UnknownLease) => {
                Self::refuse(xid, RefuseCode::UnknownLease, RETRY_AFTER, "unknown lease")
            }
        }
    }

    /// Returns `answer` (of [`LeaseIssuer::handle_renew`]) if it may go out now, or keeps it
    /// until the table that records its renewal is persisted: [`LeaseIssuer::leases_persisted`]
    /// then hands it back with `token`. A resend of a Renew whose answer still waits is
    /// dropped (the waiting answer carries the same certificate).
    pub fn hold_until_persisted(
        &mut self,
        token: u64,
        answer: LeaseMessage,
    ) -> Option<LeaseMessage> {
        let LeaseBody::Renewed { cert, .. } = &answer.body else {
            return Some(answer);
        };
        let generation = match self.last_renew.get(&cert.address) {
            Some(&(xid, generation)) if xid == answer.xid => generation,
            _ => return Some(answer),
        };
        if generation <= self.persisted {
            return Some(answer);
        }
        let waiting = self.pending.iter().any(|p| {
            p.answer.xid == answer.xid
                && matches!(&p.answer.body, LeaseBody::Renewed { cert: c, .. } if c.address == cert.address)
        });
        if !waiting {
            self.pending.push(PendingAnswer {
                generation,
                token,
                answer,
            });
        }
        None
    }

    /// Handles a Release signed by the holder of a lease in the table; returns whether a lease
    /// ended (its address is then held down for the grace).
    pub fn handle_release(
        &mut self,
        now: Time,
        xid: u64,
        address: Ipv6Addr,
        epoch: u64,
        holder_sig: &[u8; 64],
    ) -> bool {
        let Some(lease) = self.table.lease_at(address) else {
            return false;
        };
        if lease.epoch != epoch
            || !verify(
                &lease.key,
                &release_message(xid, address, epoch),
                holder_sig,
            )
        {
            return false;
        }
        let key = lease.key;
        self.table.release(now, key, address, epoch).is_some()
    }

    /// Expires leases and hold-downs that are over; returns how many leases ended.
    pub fn expire(&mut self, now: Time) -> usize {
        let expired = self.table.expire(now).len();
        if expired > 0 {
            let table = &self.table;
            self.last_renew
                .retain(|address, _| table.lease_at(*address).is_some());
        }
        expired
    }
}

mod containers;

#[cfg(test)]
mod tests;
