//! What this node has seen of lease certificates (`docs/dynamic-mesh.md` §1.6): per address,
//! the highest `(epoch, renewal)` and when it first saw that. A certificate is current while
//! its epoch is the highest seen for its address and at most its lease has passed since the
//! first sight of the highest renewal. This evicts an expired holder without a shared clock and
//! can only err generously: first sight is never before the grant. The next holder of the
//! address is protected by its higher epoch, not by this timer.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_wire::LeaseCertificate;

use crate::identity::CertificateError;
use crate::time::Time;

/// The latest certificate seen for one address.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    /// The certificate with the highest `(epoch, renewal)`.
    pub(super) cert: LeaseCertificate,
    /// When this node first saw it.
    pub(super) first_seen: Time,
}

impl Sighting {
    /// When the holder's lease runs out, by this node's count.
    pub(super) fn expires(&self) -> Time {
        self.first_seen + Duration::from_millis(u64::from(self.cert.lease_ms))
    }
}

/// Certificates seen, by address.
#[derive(Debug, Default)]
pub(super) struct Sightings {
    by_address: BTreeMap<Ipv6Addr, Sighting>,
}

impl Sightings {
    /// Returns whether `cert` (already checked by `TrustPolicy::check_certificate`) is current
    /// at `now`: not superseded by a higher epoch, and not past its lease. A lower renewal of
    /// the current epoch passes (an older hello or update), timed by the highest renewal seen.
    pub(super) fn check(&self, cert: &LeaseCertificate, now: Time) -> Result<(), CertificateError> {
        let Some(seen) = self.by_address.get(&cert.address) else {
            return Ok(());
        };
        if cert.epoch < seen.cert.epoch {
            return Err(CertificateError::Superseded);
        }
        if (cert.epoch, cert.renewal) > (seen.cert.epoch, seen.cert.renewal) {
            return Ok(());
        }
        if now > seen.expires() {
            return Err(CertificateError::Expired);
        }
        Ok(())
    }

    /// Records `cert` (which passed [`Sightings::check`]) as seen at `now`.
    pub(super) fn record(&mut self, cert: &LeaseCertificate, now: Time) {
        match self.by_address.get_mut(&cert.address) {
            Some(seen) if (cert.epoch, cert.renewal) <= (seen.cert.epoch, seen.cert.renewal) => {}
            Some(seen) => {
                seen.cert = cert.clone();
                seen.first_seen = now;
            }
            None => {
                self.by_address.insert(
                    cert.address,
                    Sighting {
                        cert: cert.clone(),
                        first_seen: now,
                    },
                );
            }
        }
    }

    /// Returns the latest sighting for `address`.
    pub(super) fn get(&self, address: Ipv6Addr) -> Option<&Sighting> {
        self.by_address.get(&address)
    }

    /// Forgets sightings whose lease ended more than `keep` ago (a replayed older certificate
    /// is then judged afresh, but its holder key must still sign, and a later holder's epoch
    /// still wins).
    pub(super) fn expire(&mut self, now: Time, keep: Duration) {
        self.by_address.retain(|_, s| now <= s.expires() + keep);
    }

    /// Returns how many addresses are remembered.
    pub(super) fn len(&self) -> usize {
        self.by_address.len()
    }
}
