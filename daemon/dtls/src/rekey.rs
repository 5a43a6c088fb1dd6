//! Key update inside an association: each direction moves to a new epoch whose keys both
//! ends derive from the session's exporter (RFC 5705), without a handshake and without a
//! message (see docs/dtls.md, "Rekeying").
//!
//! - Keys of epoch `e` (both directions, laid out like the TLS 1.2 key block):
//!   `export_keying_material("EXPORTER-connectopus-rekey", context = e as u16 big-endian)`.
//! - A sender switches its own direction when the epoch has sealed
//!   [`RekeyPolicy::max_records`] records or is [`RekeyPolicy::interval`] old: the next record
//!   carries epoch `e + 1` and sequence number 0.
//! - A receiver holds the keys of its current epoch and of the next [`LOOKAHEAD`] ones; the
//!   first record of a later epoch that authenticates makes that epoch current. The previous
//!   epoch's key and replay window stay for [`RX_GRACE`], so reordered records still open.

use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::SslRef;
use zeroize::Zeroizing;

use crate::association::Role;
use crate::fastpath::{DirectionKey, KeyPair, RecordSuite};
use crate::sealer::{EpochKey, Sealer, TxShared};

/// The RFC 5705 exporter label of the per-epoch keys.
pub const REKEY_LABEL: &str = "EXPORTER-connectopus-rekey";

/// Records one epoch may seal before its direction moves on (AES-GCM's usage bound, also
/// applied to ChaCha20-Poly1305).
pub const DEFAULT_REKEY_RECORDS: u64 = 1 << 28;

/// Age at which an epoch's direction moves on.
pub const DEFAULT_REKEY_INTERVAL: Duration = Duration::from_secs(3600);

/// How long the previous receive epoch's key still opens reordered records.
pub const RX_GRACE: Duration = Duration::from_secs(10);

/// Epochs beyond the current one whose receive keys are derived ahead (records of a whole
/// epoch may be lost; a spoofed record of an unknown epoch never costs a derivation).
pub(crate) const LOOKAHEAD: usize = 4;

/// When the fast path moves a direction to new keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Records sealed in one epoch before the next record starts a new one.
    pub max_records: u64,
    /// Age of an epoch (from its first use on this side) at which the next one starts.
    pub interval: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_REKEY_RECORDS,
            interval: DEFAULT_REKEY_INTERVAL,
        }
    }
}

impl RekeyPolicy {
    /// Never moves to a new epoch on its own (for a peer that is plain OpenSSL, which cannot
    /// follow); the 48-bit sequence space still ends the association when it runs out.
    pub fn never() -> Self {
        Self {
            max_records: u64::MAX,
            interval: Duration::MAX,
        }
    }
}

/// Derives the write keys of `epoch` for both directions and returns (ours, the peer's).
pub(crate) fn epoch_keys(
    ssl: &SslRef,
    suite: RecordSuite,
    role: Role,
    epoch: u16,
) -> Option<(DirectionKey, DirectionKey)> {
    let mut block = Zeroizing::new(vec![0u8; suite.key_block_len()]);
    ssl.export_keying_material(&mut block, REKEY_LABEL, Some(&epoch.to_be_bytes()))
        .ok()?;
    let pair = KeyPair::from_block(suite, &block).ok()?;
    Some(match role {
        Role::Client => (pair.client_write, pair.server_write),
        Role::Server => (pair.server_write, pair.client_write),
    })
}

/// The sending direction as the association (the control plane) keeps it: the state shared
/// with every sealer ([`TxShared`]: keys per epoch, the one counter), its own [`Sealer`], and
/// what only it does: date epochs for the clock's trigger, derive the next epoch's key ahead,
/// re-seal what OpenSSL writes in the handshake epoch.
#[derive(Debug)]
pub(crate) struct TxKeys {
    pub shared: Arc<TxShared>,
    pub sealer: Sealer,
    /// The epoch the association last saw current (a sealer may have switched since).
    pub epoch: u16,
    /// Caller time at which `epoch` started (as far as the association saw it).
    since: Duration,
    /// The handshake epoch's key, kept only to open what OpenSSL still writes (it is
    /// re-sealed under the current key and counter; it never seals again after a switch).
    handshake_key: Arc<EpochKey>,
    /// The epoch OpenSSL writes in (the one the handshake established).
    pub handshake_epoch: u16,
    /// Set when a switch is impossible (exporter error or epoch space used up): the epoch
    /// then runs to the end of its sequence space.
    pub stuck: bool,
    /// Switches of the shared state already counted.
    pub switches_seen: u64,
}

impl TxKeys {
    pub(crate) fn new(
        key: DirectionKey,
        epoch: u16,
        next_seq: u64,
        policy: &RekeyPolicy,
        now: Duration,
    ) -> Self {
        let suite = key.suite();
        let key = EpochKey::new(epoch, key);
        let shared = Arc::new(TxShared::new(
            suite,
            key.clone(),
            next_seq,
            policy.max_records,
        ));
        Self {
            sealer: Sealer::new(shared.clone()),
            shared,
            epoch,
            since: now,
            handshake_key: key,
            handshake_epoch: epoch,
            stuck: false,
            switches_seen: 0,
        }
    }

    /// Whether this direction may move to new epochs at all.
    pub(crate) fn rekeys(policy: &RekeyPolicy) -> bool {
        policy.max_records < (1 << 48) || policy.interval != Duration::MAX
    }

    /// Returns whether the current epoch is too old.
    pub(crate) fn due_by_clock(&self, policy: &RekeyPolicy, now: Duration) -> bool {
        !self.stuck && now.saturating_sub(self.since) >= policy.interval
    }

    /// Returns when the current epoch becomes too old.
    pub(crate) fn rekey_at(&self, policy: &RekeyPolicy) -> Option<Duration> {
        if self.stuck {
            return None;
        }
        self.since.checked_add(policy.interval)
    }

    /// Returns whether the shared state moved on since the association last looked, or
    /// still needs the next epoch's key.
    pub(crate) fn needs_upkeep(&self, policy: &RekeyPolicy) -> bool {
        self.shared.switches() != self.switches_seen
            || (!self.stuck && Self::rekeys(policy) && !self.shared.has_next())
    }

    /// Notes a switch a sealer (or the clock) made: the new epoch is dated `now`.
    pub(crate) fn follow(&mut self, now: Duration) -> u64 {
        let switches = self.shared.switches();
        let new = switches - self.switches_seen;
        if new > 0 {
            self.switches_seen = switches;
            self.epoch = self.shared.epoch();
            self.since = now;
        }
        new
    }

    /// Returns the key that opens records OpenSSL wrote in the handshake epoch.
    pub(crate) fn handshake_key(&self) -> &DirectionKey {
        self.handshake_key.key()
    }
}
