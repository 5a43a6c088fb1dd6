//! Checking candidate configurations off the dataplane thread.
//!
//! A neighbour's offer, or a configuration set on the control socket, must be authenticated
//! (an SSH signature over up to 64 MiB) and parsed before the node can use it; on the main
//! loop that would stall every link (a debug build spends seconds on a config with tens of
//! thousands of nodes, and under CPU load that outlasts the dead interval, so the node's
//! sessions would time out). The core already rate-limits offers per peer and drops replays
//! of the running configuration (see `connectopus_core::node`); what remains goes to one
//! `config-check` thread, which verifies and parses it and hands the result back to the loop
//! through its channel. One check runs at a time; at most one neighbour offer waits (a later
//! offer replaces it), so a burst costs at most two checks, and `config set` requests wait in
//! order ahead of it (each has a client waiting for its answer). The loop then persists and
//! applies the configuration, if the running one has not changed meanwhile (otherwise the
//! candidate is checked again against the new one).

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use connectopus_config::{MeshConfig, SshPublicKey};
use connectopus_core::LinkId;

use crate::backends::{LoopMessage, LoopSender};
use crate::control::ControlReply;

/// Where a candidate configuration came from, and so who hears the outcome.
#[derive(Debug)]
pub(crate) enum Candidate {
    /// A neighbour offered it on this link.
    Offer(LinkId),
    /// `connectopus config set`: the client waits for the answer on this channel.
    ConfigSet(Sender<ControlReply>),
}

/// A candidate to check against the configuration the node ran when it arrived.
#[derive(Debug)]
pub(crate) struct OfferJob {
    pub(crate) from: Candidate,
    /// The version an offer claims (its configuration says the real one); `config set` claims
    /// none (0).
    pub(crate) claimed_version: u64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    /// The running configuration's version and keys when the job was made.
    pub(crate) running_version: u64,
    pub(crate) authorized_keys: Vec<SshPublicKey>,
    pub(crate) revoked_keys: Vec<SshPublicKey>,
    /// The file name diagnostics use.
    pub(crate) file_name: String,
}

/// A checked offer, back on the main loop.
#[derive(Debug)]
pub(crate) struct CheckedOffer {
    pub(crate) job: OfferJob,
    /// The parsed configuration and the signer, or why it was refused.
    pub(crate) result: Result<(MeshConfig, String)>,
}

/// Verifies a candidate configuration: its signature against the running keys (never the
/// candidate's own), that it loads, that its signer stays authorized in it, and the version
/// rule. Returns the configuration and the signer.
///
/// # Errors
/// Any of those checks failing, with what and why.
pub(crate) fn check_candidate(
    bytes: &[u8],
    signature: &[u8],
    running_version: u64,
    authorized_keys: &[SshPublicKey],
    revoked_keys: &[SshPublicKey],
    file_name: &str,
) -> Result<(MeshConfig, String)> {
    // Authenticate before parsing: only configurations from an authorized key are read.
    let signature_text = std::str::from_utf8(signature).context("the signature is not text")?;
    let signer = connectopus_config::verify(bytes, signature_text, authorized_keys, revoked_keys)
        .context("configuration signature check failed")?;
    let new = connectopus_config::load(file_name, bytes)
        .map_err(|d| anyhow::anyhow!("the configuration does not load:\n{d}"))?;
    // The signer must stay authorized in the new config too, or the node could not verify
    // its own persisted file at the next start: rotating keys takes two configs.
    connectopus_config::verify(
        bytes,
        signature_text,
        &new.global.authorized_keys,
        &new.global.revoked_keys,
    )
    .context("the new configuration does not authorize the key that signed it")?;
    connectopus_config::check_version(running_version, new.global.version)?;
    Ok((new, signer.to_string()))
}

/// The loop's handle on the `config-check` thread.
#[derive(Debug)]
pub(crate) struct OfferChecker {
    jobs: Sender<OfferJob>,
    /// A job is with the thread.
    busy: bool,
    /// `config set` requests that arrived while busy, in order; they go before `waiting`.
    waiting_sets: VecDeque<OfferJob>,
    /// The next neighbour offer, if one arrived while busy.
    waiting: Option<OfferJob>,
    /// Checks started (for tests and status).
    started: u64,
}

impl OfferChecker {
    /// Starts the thread; it ends when the checker is dropped.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub(crate) fn spawn(to_loop: LoopSender) -> Result<(Self, JoinHandle<()>)> {
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("config-check".into())
            .spawn(move || run(&rx, &to_loop))
            .context("starting the config-check thread")?;
        Ok((
            Self {
                jobs,
                busy: false,
                waiting_sets: VecDeque::new(),
                waiting: None,
                started: 0,
            },
            thread,
        ))
    }

    /// Queues a candidate: checked at once if the thread is idle, otherwise it waits: a
    /// `config set` in order, an offer in the one slot, replacing a waiting offer that claims
    /// a lower version.
    pub(crate) fn submit(&mut self, job: OfferJob) {
        if self.busy {
            if matches!(job.from, Candidate::ConfigSet(_)) {
                self.waiting_sets.push_back(job);
            } else if self
                .waiting
                .as_ref()
                .is_none_or(|w| w.claimed_version <= job.claimed_version)
            {
                self.waiting = Some(job);
            }
            return;
        }
        self.start(job);
    }

    /// Notes that the thread finished a check; starts the next waiting one, if any.
    pub(crate) fn finished(&mut self) {
        self.busy = false;
        if let Some(job) = self
            .waiting_sets
            .pop_front()
            .or_else(|| self.waiting.take())
        {
            self.start(job);
        }
    }

    /// Returns how many checks were started.
    pub(crate) fn checks_started(&self) -> u64 {
        self.started
    }

    fn start(&mut self, job: OfferJob) {
        self.started += 1;
        match self.jobs.send(job) {
            Ok(()) => self.busy = true,
            Err(mpsc::SendError(job)) => {
                self.busy = false;
                if let Candidate::ConfigSet(reply) = job.from {
                    let _ = reply.send(ControlReply::Error(
                        "the config-check thread has stopped".to_owned(),
                    ));
                }
            }
        }
    }
}

fn run(jobs: &Receiver<OfferJob>, to_loop: &LoopSender) {
    while let Ok(job) = jobs.recv() {
        let result = check_candidate(
            &job.bytes,
            &job.signature,
            job.running_version,
            &job.authorized_keys,
            &job.revoked_keys,
            &job.file_name,
        );
        if !to_loop.send(LoopMessage::OfferChecked(Box::new(CheckedOffer {
            job,
            result,
        }))) {
            return;
        }
    }
}

impl super::Daemon {
    /// Sends a neighbour's offer (already gated by the core) to the `config-check` thread.
    pub(super) fn check_offer(
        &mut self,
        link: LinkId,
        claimed_version: u64,
        bytes: Vec<u8>,
        signature: Vec<u8>,
    ) {
        self.check_candidate(Candidate::Offer(link), claimed_version, bytes, signature);
    }

    /// Sends a candidate to the `config-check` thread, to be checked against the newest
    /// configuration taken.
    pub(super) fn check_candidate(
        &mut self,
        from: Candidate,
        claimed_version: u64,
        bytes: Vec<u8>,
        signature: Vec<u8>,
    ) {
        let job = OfferJob {
            from,
            claimed_version,
            bytes,
            signature,
            running_version: self.newest_config_version(),
            authorized_keys: self.newest_config().global.authorized_keys.clone(),
            revoked_keys: self.newest_config().global.revoked_keys.clone(),
            file_name: self.config_path.display().to_string(),
        };
        self.offer_checker.submit(job);
    }

    /// Takes a checked candidate back on the loop: commits it if the running configuration is
    /// still the one it was checked against, checks it again otherwise; a `config set` client
    /// gets the outcome.
    pub(super) fn offer_checked(&mut self, checked: CheckedOffer) {
        self.offer_checker.finished();
        let CheckedOffer { job, result } = checked;
        let OfferJob {
            from,
            claimed_version,
            bytes,
            signature,
            running_version,
            ..
        } = job;
        let outcome = match result {
            Err(error) => Err(error),
            Ok(_) if running_version != self.newest_config_version() => {
                // Checked against a configuration that is no longer the newest: again,
                // against the one that is (an offer only if it still claims to be newer).
                if matches!(from, Candidate::ConfigSet(_))
                    || claimed_version > self.newest_config_version()
                {
                    self.check_candidate(from, claimed_version, bytes, signature);
                }
                return;
            }
            Ok((new, signer)) => {
                let source = match from {
                    Candidate::Offer(_) => super::reconcile::ConfigSource::Mesh,
                    Candidate::ConfigSet(_) => super::reconcile::ConfigSource::Control,
                };
                self.commit_config(&bytes, &signature, new, &signer, source)
            }
        };
        match (from, outcome) {
            (Candidate::Offer(link), Err(error)) => {
                tracing::warn!(%link, error = %format!("{error:#}"), "offered configuration refused");
            }
            (Candidate::Offer(_), Ok(_)) => {}
            (Candidate::ConfigSet(reply), outcome) => {
                let answer = match outcome {
                    Ok(version) => ControlReply::Accepted { version },
                    Err(error) => ControlReply::Error(format!("{error:#}")),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(claimed_version: u64) -> OfferJob {
        OfferJob {
            from: Candidate::Offer(LinkId(1)),
            claimed_version,
            bytes: b"global: {}".to_vec(),
            signature: b"forged".to_vec(),
            running_version: 1,
            authorized_keys: Vec::new(),
            revoked_keys: Vec::new(),
            file_name: "offer.yml".into(),
        }
    }

    /// `config set` requests wait in order, ahead of a waiting offer, and none is replaced:
    /// each has a client waiting for its answer.
    #[test]
    fn config_sets_wait_in_order_ahead_of_offers() {
        let (jobs, rx) = mpsc::channel();
        let mut checker = OfferChecker {
            jobs,
            busy: false,
            waiting_sets: VecDeque::new(),
            waiting: None,
            started: 0,
        };
        let set = |version| {
            let (reply, _) = mpsc::channel();
            OfferJob {
                from: Candidate::ConfigSet(reply),
                ..job(version)
            }
        };
        checker.submit(job(100));
        checker.submit(job(300));
        checker.submit(set(1));
        checker.submit(set(2));
        checker.submit(job(200));
        let mut order = Vec::new();
        for _ in 0..4 {
            order.extend(rx.try_iter().map(|j| {
                let kind = if matches!(j.from, Candidate::ConfigSet(_)) {
                    "set"
                } else {
                    "offer"
                };
                (kind, j.claimed_version)
            }));
            checker.finished();
        }
        assert_eq!(
            order,
            [("offer", 100), ("set", 1), ("set", 2), ("offer", 300)]
        );
        assert_eq!(checker.checks_started(), 4);
    }

    /// A burst of offers while a check runs costs one more check, of the highest claim.
    #[test]
    fn a_burst_of_offers_waits_in_one_slot() {
        let (jobs, rx) = mpsc::channel();
        let mut checker = OfferChecker {
            jobs,
            busy: false,
            waiting_sets: VecDeque::new(),
            waiting: None,
            started: 0,
        };
        for v in 0..100 {
            checker.submit(job(100 + v));
        }
        assert_eq!(checker.checks_started(), 1);
        assert_eq!(
            rx.try_iter().map(|j| j.claimed_version).collect::<Vec<_>>(),
            [100]
        );
        checker.finished();
        assert_eq!(checker.checks_started(), 2);
        assert_eq!(
            rx.try_iter().map(|j| j.claimed_version).collect::<Vec<_>>(),
            [199]
        );
        checker.finished();
        assert_eq!(checker.checks_started(), 2);
    }

    /// A forged offer is refused before it is parsed.
    #[test]
    fn a_forged_offer_is_refused_by_its_signature() {
        let j = job(5);
        let error = check_candidate(&j.bytes, &j.signature, 1, &[], &[], "offer.yml")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("signature check failed")),
            "{error:?}"
        );
    }
}
