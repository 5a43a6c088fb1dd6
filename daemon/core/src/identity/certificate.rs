//! Lease certificates (`docs/dynamic-mesh.md` §1.3, §1.6): an issuer's signed statement that a
//! key holds an address of its pool under a name and an epoch. This module signs them and makes
//! the checks that need no memory (who signed, which pool, what the hello or update claims);
//! the node adds the one that does (superseded or expired, see `node::sightings`).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use connectopus_wire::{LeaseCertificate, Prefix};

use super::{NodeKey, PublicKey, TrustPolicy, verify};

/// A static node that may issue leases: its key and its pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// The key its grant is held by.
    pub key: PublicKey,
    /// The pools it issues from (`Grant::issue_pools`).
    pub pools: Vec<Prefix>,
}

/// Why a certificate does not make its holder a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertificateError {
    /// The value does not parse.
    Malformed,
    /// The certificate carries no signature, but the node checks identities.
    Unsigned,
    /// The named issuer is no static node with a pool (or its key is revoked or ambiguous).
    UnknownIssuer,
    /// The issuer's signature does not verify.
    BadSignature,
    /// The address lies in none of the issuer's pools.
    OutsidePool,
    /// The hello or update claims another address, key, name or epoch than the certificate.
    Mismatch,
    /// The holder key is revoked or is a static node's key, or the name is a static node's or
    /// an attachment's.
    Reserved,
    /// A certificate with a higher epoch for the same address has been seen: another holder
    /// has it now.
    Superseded,
    /// More than the lease has passed since this node first saw the latest renewal.
    Expired,
}

impl CertificateError {
    /// Returns a short, stable name for logs and counters: `expired_lease` for a lease that is
    /// over (superseded or expired), `bad_lease` otherwise.
    pub fn reason(self) -> &'static str {
        match self {
            CertificateError::Superseded | CertificateError::Expired => "expired_lease",
            _ => "bad_lease",
        }
    }
}

/// Signs `cert` as `issuer`: sets its signature over [`LeaseCertificate::signed_message`].
pub fn sign_certificate(issuer: &NodeKey, cert: &mut LeaseCertificate) {
    cert.signature = Some(issuer.sign(&cert.signed_message()));
}

/// What a hello or an update claims for its sender, to be matched against its certificate.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The key that signed the hello or update.
    pub key: &'a PublicKey,
    /// The claimed node address.
    pub address: Ipv6Addr,
    /// The claimed name.
    pub name: &'a str,
    /// The claimed epoch.
    pub epoch: u64,
}

impl TrustPolicy {
    /// Returns every issuer by its static address: unrevoked keys whose grant has issue pools,
    /// unless the address is granted to more than one key.
    pub fn issuers(&self) -> BTreeMap<Ipv6Addr, Issuer> {
        let index = self.address_index();
        self.grants
            .iter()
            .filter(|(key, grant)| {
                !grant.issue_pools.is_empty()
                    && index.get(&grant.address).copied().flatten() == Some(**key)
            })
            .map(|(key, grant)| {
                (
                    grant.address,
                    Issuer {
                        key: *key,
                        pools: grant.issue_pools.clone(),
                    },
                )
            })
            .collect()
    }

    /// Checks everything about `cert` that needs no memory of earlier certificates: a known
    /// issuer signed it, its address lies in that issuer's pool, it matches `claim`, and its
    /// holder key and name are nobody else's. `issuers` is [`TrustPolicy::issuers`].
    ///
    /// # Errors
    /// The first rule it breaks.
    pub fn check_certificate(
        &self,
        issuers: &BTreeMap<Ipv6Addr, Issuer>,
        cert: &LeaseCertificate,
        claim: Claim<'_>,
    ) -> Result<(), CertificateError> {
        if cert.address != claim.address
            || cert.holder_key != *claim.key
            || cert.name != claim.name
            || cert.epoch != claim.epoch
        {
            return Err(CertificateError::Mismatch);
        }
        if self.revoked.contains(&cert.holder_key)
            || self.grants.contains_key(&cert.holder_key)
            || self.reserved_names.contains(&cert.name)
            || self.grants.values().any(|g| g.name == cert.name)
        {
            return Err(CertificateError::Reserved);
        }
        let issuer = issuers
            .get(&cert.issuer)
            .ok_or(CertificateError::UnknownIssuer)?;
        if !issuer.pools.iter().any(|p| p.contains(cert.address)) {
            return Err(CertificateError::OutsidePool);
        }
        let signature = cert.signature.ok_or(CertificateError::Unsigned)?;
        if !verify(&issuer.key, &cert.signed_message(), &signature) {
            return Err(CertificateError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Grant;
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed(&[n; 32])
    }

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn policy() -> TrustPolicy {
        let mut issuer = Grant::new("hub", a("fd00::1"));
        issuer
            .issue_pools
            .push("fd00:0:0:e1::/112".parse().unwrap());
        let mut p = TrustPolicy::new()
            .with_grant(key(1).public(), issuer)
            .with_grant(key(2).public(), Grant::new("plain", a("fd00::2")));
        p.reserved_names.insert("web".into());
        p
    }

    fn cert(holder: &NodeKey, address: &str, name: &str) -> LeaseCertificate {
        let mut c = LeaseCertificate {
            address: a(address),
            epoch: 7,
            renewal: 0,
            lease_ms: 20_000,
            issuer: a("fd00::1"),
            holder_key: holder.public(),
            name: name.into(),
            signature: None,
        };
        sign_certificate(&key(1), &mut c);
        c
    }

    fn claim<'a>(c: &'a LeaseCertificate) -> Claim<'a> {
        Claim {
            key: &c.holder_key,
            address: c.address,
            name: &c.name,
            epoch: c.epoch,
        }
    }

    #[test]
    fn only_a_pool_owner_signature_on_matching_claims_passes() {
        let p = policy();
        let issuers = p.issuers();
        assert_eq!(issuers.len(), 1);
        let good = cert(&key(9), "fd00:0:0:e1::5", "job-1");
        assert_eq!(p.check_certificate(&issuers, &good, claim(&good)), Ok(()));

        let mut forged = good.clone();
        forged.renewal = 1; // changed after signing
        assert_eq!(
            p.check_certificate(&issuers, &forged, claim(&forged)),
            Err(CertificateError::BadSignature)
        );
        let mut by_holder = good.clone();
        sign_certificate(&key(9), &mut by_holder);
        assert_eq!(
            p.check_certificate(&issuers, &by_holder, claim(&by_holder)),
            Err(CertificateError::BadSignature)
        );
        let mut foreign = good.clone();
        foreign.issuer = a("fd00::2");
        sign_certificate(&key(2), &mut foreign);
        assert_eq!(
            p.check_certificate(&issuers, &foreign, claim(&foreign)),
            Err(CertificateError::UnknownIssuer)
        );
        let outside = cert(&key(9), "fd00:0:0:e2::5", "job-1");
        assert_eq!(
            p.check_certificate(&issuers, &outside, claim(&outside)),
            Err(CertificateError::OutsidePool)
        );
        let mut unsigned = good.clone();
        unsigned.signature = None;
        assert_eq!(
            p.check_certificate(&issuers, &unsigned, claim(&unsigned)),
            Err(CertificateError::Unsigned)
        );
        let other_epoch = Claim {
            epoch: 8,
            ..claim(&good)
        };
        assert_eq!(
            p.check_certificate(&issuers, &good, other_epoch),
            Err(CertificateError::Mismatch)
        );
        for c in [
            cert(&key(9), "fd00:0:0:e1::5", "web"),
            cert(&key(9), "fd00:0:0:e1::5", "plain"),
            cert(&key(2), "fd00:0:0:e1::5", "job-1"),
        ] {
            assert_eq!(
                p.check_certificate(&issuers, &c, claim(&c)),
                Err(CertificateError::Reserved)
            );
        }
        let revoked = p.with_revoked(key(1).public());
        assert!(revoked.issuers().is_empty());
        assert_eq!(CertificateError::Expired.reason(), "expired_lease");
        assert_eq!(CertificateError::OutsidePool.reason(), "bad_lease");
    }
}
