//! An ephemeral node's side of its lease (`docs/dynamic-mesh.md` §1.4, §1.5): join, renew,
//! let go on time, release.
//!
//! Pure: every call takes `now`; the lease messages to send and what became of the address
//! leave as data ([`HolderOutput`]). The holder counts its lease from when it *sent* the Join
//! or Renew (`expires = sent_at + lease`), so it always lets go before the issuer (which counts
//! from when it granted) could give the address to anyone else. The node (step 5 of §4, not
//! wired yet) sends the messages on its joining session or routing stream and re-addresses
//! itself on [`HolderOutput::Bound`] and [`HolderOutput::Lost`].

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::lease::{join_proof_message, release_message, renew_message};
use connectopus_wire::{JoinProof, LeaseBody, LeaseCertificate, LeaseMessage, RefuseCode};

use crate::identity::NodeKey;
use crate::time::Time;

/// How long a Join waits for its answer before the next issuer is tried.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// First resend interval of an unanswered Renew; it doubles up to [`RENEW_RESEND_MAX`].
pub const RENEW_RESEND: Duration = Duration::from_secs(1);
/// Longest resend interval of an unanswered Renew.
pub const RENEW_RESEND_MAX: Duration = Duration::from_secs(10);

/// What an ephemeral node joins as.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The name it asks for.
    pub name: String,
    /// A shared join key it proves to hold, if it is not listed by its own key.
    pub join_key: Option<NodeKey>,
}

/// Where the holder is (§1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderState {
    /// No address.
    Unbound,
    /// A Join to `issuer` is out.
    Requesting {
        /// The issuer asked.
        issuer: Ipv6Addr,
        /// Its transaction id.
        xid: u64,
        /// When it was sent.
        sent_at: Time,
    },
    /// Holding `cert` until `expires`; renew at `t1`.
    Bound {
        /// The current certificate.
        cert: LeaseCertificate,
        /// When the holder lets go, by its own count.
        expires: Time,
        /// When it asks to renew.
        t1: Time,
    },
    /// Holding `cert`; a Renew is out.
    Renewing {
        /// The current certificate.
        cert: LeaseCertificate,
        /// When the holder lets go, by its own count.
        expires: Time,
        /// The Renew's transaction id.
        xid: u64,
        /// When the first Renew of this round was sent (the new lease counts from it).
        sent_at: Time,
        /// When to resend it.
        resend_at: Time,
        /// The current resend interval.
        backoff: Duration,
    },
}

/// What the holder asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderOutput {
    /// Send `message` to `issuer` (on the routing stream, or as a control datagram to port 0).
    Send {
        /// The issuer.
        issuer: Ipv6Addr,
        /// The message.
        message: LeaseMessage,
    },
    /// The node holds `cert`'s address, name and epoch until `expires` (a grant, or a renewal
    /// with the same address and epoch).
    Bound {
        /// The certificate to carry in hellos and updates.
        cert: LeaseCertificate,
        /// When the holder lets go unless renewed.
        expires: Time,
    },
    /// The address is gone (expired, or refused at renewal): stop originating, drop it.
    Lost,
    /// The issuer refused the Join; ask again (it or another) after `retry_at`.
    Refused {
        /// The issuer that refused.
        issuer: Ipv6Addr,
        /// Why.
        code: RefuseCode,
        /// Not before this time.
        retry_at: Time,
    },
}

/// One ephemeral node's lease.
#[derive(Debug)]
pub struct LeaseHolder {
    config: JoinConfig,
    key: NodeKey,
    state: HolderState,
    next_xid: u64,
    /// The address held last, offered as the hint of the next Join.
    last_address: Option<Ipv6Addr>,
}

impl LeaseHolder {
    /// Creates an unbound holder signing with `key`; `xid_seed` makes its transaction ids
    /// differ from another instance's.
    pub fn new(config: JoinConfig, key: NodeKey, xid_seed: u64) -> Self {
        Self {
            config,
            key,
            state: HolderState::Unbound,
            next_xid: xid_seed | 1,
            last_address: None,
        }
    }

    /// Returns the state.
    pub fn state(&self) -> &HolderState {
        &self.state
    }

    /// Returns the certificate while the holder has an address.
    pub fn certificate(&self) -> Option<&LeaseCertificate> {
        match &self.state {
            HolderState::Bound { cert, .. } | HolderState::Renewing { cert, .. } => Some(cert),
            _ => None,
        }
    }

    fn xid(&mut self) -> u64 {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(2);
        xid
    }

    /// A joining session to `issuer` is established (channel binding `binding`): returns the
    /// Join to send on it, if the holder is unbound.
    pub fn start_join(
        &mut self,
        now: Time,
        issuer: Ipv6Addr,
        binding: &[u8; 32],
    ) -> Option<LeaseMessage> {
        if self.state != HolderState::Unbound {
            return None;
        }
        let join = self.join_message(binding);
        self.state = HolderState::Requesting {
            issuer,
            xid: join.xid,
            sent_at: now,
        };
        Some(join)
    }

    /// For tests that play a joiner flooding `issuer` with valid Joins: a Join with a new xid
    /// (and the join-key proof over `binding`), while the holder waits, from `now`, for an
    /// xid it never sent, so it ignores every answer and sends no Join of its own until
    /// [`JOIN_TIMEOUT`] after the flood.
    pub fn flood_join_for_test(
        &mut self,
        now: Time,
        issuer: Ipv6Addr,
        binding: &[u8; 32],
    ) -> Option<LeaseMessage> {
        if !matches!(
            self.state,
            HolderState::Unbound | HolderState::Requesting { .. }
        ) {
            return None;
        }
        let join = self.join_message(binding);
        self.state = HolderState::Requesting {
            issuer,
            xid: self.xid(),
            sent_at: now,
        };
        Some(join)
    }

    /// A Join with a new xid and, with a join key, its proof over `binding`.
    fn join_message(&mut self, binding: &[u8; 32]) -> LeaseMessage {
        let xid = self.xid();
        let name = self.config.name.clone();
        let proof = self.config.join_key.as_ref().map(|join_key| JoinProof {
            join_key: join_key.public(),
            signature: join_key.sign(&join_proof_message(binding, &self.key.public(), xid, &name)),
        });
        LeaseMessage {
            xid,
            body: LeaseBody::Join {
                hint: self.last_address.unwrap_or(Ipv6Addr::UNSPECIFIED),
                name,
                proof,
            },
        }
    }

    /// Handles a lease message from `issuer`; answers to other transactions are ignored.
    pub fn handle_message(
        &mut self,
        now: Time,
        issuer: Ipv6Addr,
        message: &LeaseMessage,
    ) -> Vec<HolderOutput> {
        let ours = |cert: &LeaseCertificate, key: &NodeKey, name: &str| {
            cert.holder_key == key.public() && cert.name == name && cert.issuer == issuer
        };
        match (&self.state, &message.body) {
            (
                HolderState::Requesting {
                    issuer: asked,
                    xid,
                    sent_at,
                },
                LeaseBody::Grant { t1_ms, cert },
            ) if *asked == issuer
                && *xid == message.xid
                && ours(cert, &self.key, &self.config.name) =>
            {
                let sent_at = *sent_at;
                self.bind(cert.clone(), sent_at, *t1_ms)
            }
            (
                HolderState::Requesting {
                    issuer: asked, xid, ..
                },
                LeaseBody::Refuse {
                    code,
                    retry_after_ms,
                    ..
                },
            ) if *asked == issuer && *xid == message.xid => {
                self.state = HolderState::Unbound;
                vec![HolderOutput::Refused {
                    issuer,
                    code: *code,
                    retry_at: now + Duration::from_millis(u64::from(*retry_after_ms)),
                }]
            }
            (
                HolderState::Renewing {
                    cert: current,
                    xid,
                    sent_at,
                    ..
                },
                LeaseBody::Renewed { t1_ms, cert },
            ) if *xid == message.xid
                && current.issuer == issuer
                && cert.address == current.address
                && cert.epoch == current.epoch
                && cert.renewal > current.renewal
                && ours(cert, &self.key, &self.config.name) =>
            {
                let sent_at = *sent_at;
                self.bind(cert.clone(), sent_at, *t1_ms)
            }
            (HolderState::Renewing { cert, xid, .. }, LeaseBody::Refuse { code, .. })
                if *xid == message.xid
                    && cert.issuer == issuer
                    && matches!(code, RefuseCode::UnknownLease | RefuseCode::NotAuthorized) =>
            {
                self.lose()
            }
            _ => Vec::new(),
        }
    }

    fn bind(&mut self, cert: LeaseCertificate, sent_at: Time, t1_ms: u32) -> Vec<HolderOutput> {
        let lease = Duration::from_millis(u64::from(cert.lease_ms));
        let expires = sent_at + lease;
        // Renew at T1 (half the lease by default), and never later than the lease itself.
        let t1 = sent_at + Duration::from_millis(u64::from(t1_ms)).min(lease / 2 + lease / 4);
        self.last_address = Some(cert.address);
        self.state = HolderState::Bound {
            cert: cert.clone(),
            expires,
            t1,
        };
        vec![HolderOutput::Bound { cert, expires }]
    }

    fn lose(&mut self) -> Vec<HolderOutput> {
        self.state = HolderState::Unbound;
        vec![HolderOutput::Lost]
    }

    fn renew_message(&mut self, xid: u64, cert: &LeaseCertificate) -> LeaseMessage {
        LeaseMessage {
            xid,
            body: LeaseBody::Renew {
                cert: cert.clone(),
                holder_sig: self.key.sign(&renew_message(xid, cert)),
            },
        }
    }

    /// Runs the holder's timers: the Join timeout, T1, Renew resends, and the expiry, at
    /// which the holder lets go unconditionally.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<HolderOutput> {
        match self.state.clone() {
            HolderState::Unbound => Vec::new(),
            HolderState::Requesting {
                issuer, sent_at, ..
            } => {
                if now >= sent_at + JOIN_TIMEOUT {
                    self.state = HolderState::Unbound;
                    return vec![HolderOutput::Refused {
                        issuer,
                        code: RefuseCode::Busy,
                        retry_at: now,
                    }];
                }
                Vec::new()
            }
            HolderState::Bound { cert, expires, t1 } => {
                if now >= expires {
                    return self.lose();
                }
                if now < t1 {
                    return Vec::new();
                }
                let xid = self.xid();
                let message = self.renew_message(xid, &cert);
                let issuer = cert.issuer;
                self.state = HolderState::Renewing {
                    cert,
                    expires,
                    xid,
                    sent_at: now,
                    resend_at: now + RENEW_RESEND,
                    backoff: RENEW_RESEND,
                };
                vec![HolderOutput::Send { issuer, message }]
            }
            HolderState::Renewing {
                cert,
                expires,
                xid,
                sent_at,
                resend_at,
                backoff,
            } => {
                if now >= expires {
                    return self.lose();
                }
                if now < resend_at {
                    return Vec::new();
                }
                // The same transaction again: the lease still counts from the first send.
                let message = self.renew_message(xid, &cert);
                let issuer = cert.issuer;
                let backoff = (backoff * 2).min(RENEW_RESEND_MAX);
                self.state = HolderState::Renewing {
                    cert,
                    expires,
                    xid,
                    sent_at,
                    resend_at: now + backoff,
                    backoff,
                };
                vec![HolderOutput::Send { issuer, message }]
            }
        }
    }

    /// When [`LeaseHolder::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Time> {
        match &self.state {
            HolderState::Unbound => None,
            HolderState::Requesting { sent_at, .. } => Some(*sent_at + JOIN_TIMEOUT),
            HolderState::Bound { expires, t1, .. } => Some((*t1).min(*expires)),
            HolderState::Renewing {
                expires, resend_at, ..
            } => Some((*resend_at).min(*expires)),
        }
    }

    /// Shuts down: returns the Release to send (on the stream, or three datagrams 1 s apart)
    /// and lets go of the address.
    pub fn release(&mut self) -> Option<(Ipv6Addr, LeaseMessage)> {
        let cert = self.certificate()?.clone();
        let xid = self.xid();
        let message = LeaseMessage {
            xid,
            body: LeaseBody::Release {
                address: cert.address,
                epoch: cert.epoch,
                holder_sig: self
                    .key
                    .sign(&release_message(xid, cert.address, cert.epoch)),
            },
        };
        self.state = HolderState::Unbound;
        Some((cert.issuer, message))
    }
}

#[cfg(test)]
mod tests;
