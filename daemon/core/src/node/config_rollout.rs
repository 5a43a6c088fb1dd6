//! Rolling out a new mesh configuration before applying it.
//!
//! A configuration can remove the very link over which a neighbour would learn it: applied at
//! once, the node drops the link first and the neighbour is stranded on the old version. So
//! the driver hands a verified, newer configuration to [`Node::propose_config`] instead of
//! applying it: the node offers it on every established session (except to peers known to have
//! it already) and waits until each of those sessions' routing streams has acknowledged every
//! byte up to and including the offer. Then, or once `config_rollout_timeout` has passed, it
//! runs the configuration itself (as [`Node::set_config`]) and asks the driver to apply it with
//! [`Command::ApplyConfig`], naming the neighbours that did not acknowledge in time. A session
//! that closes meanwhile is not waited for; one established meanwhile is offered the
//! configuration too and waited for within the same deadline.

use super::*;

/// A configuration offered to the neighbours and not applied yet.
#[derive(Debug)]
pub(super) struct Rollout {
    version: u64,
    config: Vec<u8>,
    signature: Vec<u8>,
    /// The offer as a framed routing-stream record.
    offer: Arc<[u8]>,
    deadline: Time,
    /// Sessions that must acknowledge the offer: when the session was established (a new
    /// stream starts its offsets again) and the stream offset just past the offer.
    waiting: BTreeMap<LinkId, (Option<Time>, u64)>,
}

impl Node {
    /// Offers a verified configuration, newer than the running one, to every neighbour, and
    /// applies it once they all acknowledged it or `config_rollout_timeout` passed: then the
    /// node emits [`Command::ApplyConfig`] and runs the configuration as [`Node::set_config`]
    /// would. A newer proposal replaces one still pending; an older or equal one is ignored.
    pub fn propose_config(&mut self, now: Time, version: u64, config: &[u8], signature: &[u8]) {
        if version <= self.config.config_version
            || self.rollout.as_ref().is_some_and(|r| version <= r.version)
        {
            return;
        }
        let offer = connectopus_wire::ConfigOffer {
            version,
            config,
            signature,
        };
        let Ok(body) = offer.encode() else {
            // Too large to offer: nobody can be waited for; run it here.
            self.apply_rollout_now(now, version, config, signature, Vec::new());
            return;
        };
        let mut framed = Vec::with_capacity(body.len() + 5);
        Record {
            kind: RecordKind::ConfigOffer,
            body,
        }
        .encode_into(&mut framed);
        tracing::debug!(
            version,
            "configuration proposed; offering it before applying"
        );
        self.rollout = Some(Rollout {
            version,
            config: config.to_vec(),
            signature: signature.to_vec(),
            offer: Arc::from(framed),
            deadline: now + self.config.timers.config_rollout_timeout,
            waiting: BTreeMap::new(),
        });
        self.after_input(now);
    }

    /// Returns the version of the configuration being rolled out, if one is.
    pub fn pending_config_version(&self) -> Option<u64> {
        self.rollout.as_ref().map(|r| r.version)
    }

    /// Returns when the pending rollout gives up waiting.
    pub(super) fn rollout_deadline(&self) -> Option<Time> {
        self.rollout.as_ref().map(|r| r.deadline)
    }

    /// Notes that `link`'s peer offered `version` (so it has it and need not be offered it);
    /// returns true if the offer is newer than both the running and the pending configuration.
    pub(super) fn offer_is_news(&mut self, link: LinkId, version: u64) -> bool {
        let known = self.offered.entry(link).or_insert(version);
        *known = (*known).max(version);
        version > self.config.config_version
            && self.rollout.as_ref().is_none_or(|r| version > r.version)
    }

    /// Offers the pending configuration to sessions that have not had it, drops sessions that
    /// acknowledged it or went away, and applies it when nobody is left or the deadline passed.
    pub(super) fn progress_rollout(&mut self, now: Time) {
        let Some(rollout) = self.rollout.as_ref() else {
            return;
        };
        let version = rollout.version;
        let offer = rollout.offer.clone();
        let peer_has = |node: &Node, peer: Ipv6Addr| {
            node.database
                .get(&peer)
                .is_some_and(|e| e.update.config_version >= version)
        };
        let newcomers: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(link, s)| {
                s.is_established()
                    && !self.is_joining_session(**link)
                    && self.offered.get(link).is_none_or(|v| *v < version)
                    && s.peer().is_some_and(|p| !peer_has(self, p.address))
            })
            .map(|(link, _)| *link)
            .collect();
        for link in newcomers {
            self.offered.insert(link, version);
            let Some(session) = self.sessions.get_mut(&link) else {
                continue;
            };
            if session.send_record(&offer).is_err() {
                self.close_session(now, link, CloseReason::StreamFailed, true);
                continue;
            }
            let established_at = session.established_at();
            if let (Some(rollout), Some((_, end))) =
                (self.rollout.as_mut(), session.stream_offsets())
            {
                rollout.waiting.insert(link, (established_at, end));
            }
        }
        let sessions = &self.sessions;
        let Some(rollout) = self.rollout.as_mut() else {
            return;
        };
        rollout.waiting.retain(|link, (established_at, end)| {
            sessions.get(link).is_some_and(|s| {
                s.is_established()
                    && s.established_at() == *established_at
                    && s.stream_offsets().is_some_and(|(acked, _)| acked < *end)
            })
        });
        if !rollout.waiting.is_empty() && now < rollout.deadline {
            return;
        }
        let Some(rollout) = self.rollout.take() else {
            return;
        };
        let unacknowledged: Vec<Ipv6Addr> = rollout
            .waiting
            .keys()
            .filter_map(|link| self.sessions.get(link)?.peer().map(|p| p.address))
            .collect();
        self.apply_rollout_now(
            now,
            rollout.version,
            &rollout.config,
            &rollout.signature,
            unacknowledged,
        );
    }

    fn apply_rollout_now(
        &mut self,
        now: Time,
        version: u64,
        config: &[u8],
        signature: &[u8],
        unacknowledged: Vec<Ipv6Addr>,
    ) {
        self.rollout = None;
        if unacknowledged.is_empty() {
            tracing::debug!(version, "every neighbour acknowledged the configuration");
        } else {
            tracing::debug!(version, ?unacknowledged, "configuration rollout timed out");
        }
        self.commands.push_back(Command::ApplyConfig {
            version,
            unacknowledged,
        });
        self.set_config(now, version, config, signature);
    }
}
