use std::collections::BTreeMap;

use super::*;
use crate::identity::{Claim, Grant, TrustPolicy};

const SECOND: Duration = Duration::from_secs(1);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const ISSUER: u8 = 1;
const MEMBER: u8 = 10;
const JOIN_KEY: u8 = 20;

fn issuer(pool: &str) -> LeaseIssuer {
    let mut policy = JoinPolicy::default();
    policy.identities.insert(key(MEMBER).public());
    policy.join_keys.insert(key(JOIN_KEY).public());
    policy.names.push(NamePattern::new("job-*").unwrap());
    policy.reserved_names.insert("job-static".into());
    LeaseIssuer::fresh(
        IssuerConfig {
            address: a("fd00::1"),
            table: LeaseTableConfig {
                pool: pool.parse().unwrap(),
                lease: 20 * SECOND,
                grace: 8 * SECOND,
            },
            policy,
            epoch_floor: 1000,
        },
        Some(key(ISSUER)),
    )
}

fn session(holder: u8, token: u64) -> JoinSession {
    JoinSession {
        token,
        holder_key: key(holder).public(),
        binding: [token as u8; 32],
    }
}

fn t(secs: u64) -> Time {
    Time::ZERO + Duration::from_secs(secs)
}

/// Joins `holder` and persists at once; returns the certificate.
fn join(i: &mut LeaseIssuer, now: Time, holder: u8, name: &str) -> LeaseCertificate {
    let refused = i.handle_join(
        now,
        // One joining session per holder (the binding stays [1; 32]).
        session(holder, 1 + 256 * u64::from(holder)),
        7,
        Ipv6Addr::UNSPECIFIED,
        name,
        None,
        |_| None,
        |_| false,
    );
    assert_eq!(refused, None);
    let (generation, _) = i.poll_persist(now, 0).unwrap();
    let mut granted = i.leases_persisted(generation);
    assert_eq!(granted.len(), 1);
    match granted.pop().unwrap().1.body {
        LeaseBody::Grant { cert, t1_ms } => {
            assert_eq!(t1_ms, 10_000);
            cert
        }
        other => panic!("{other:?}"),
    }
}

fn refusal(m: Option<LeaseMessage>) -> RefuseCode {
    match m.map(|m| m.body) {
        Some(LeaseBody::Refuse { code, .. }) => code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn name_patterns_need_one_or_more_characters_at_the_star() {
    let p = NamePattern::new("job-*").unwrap();
    assert!(p.matches("job-1"));
    assert!(!p.matches("job-"));
    assert!(!p.matches("ci-1"));
    let p = NamePattern::new("*-h1").unwrap();
    assert!(p.matches("a-h1") && !p.matches("-h1"));
    assert!(NamePattern::new("a*b*").is_none());
    assert!(NamePattern::new("plain").is_none());
}

#[test]
fn a_grant_waits_for_persistence_and_carries_a_certificate_nodes_accept() {
    let mut i = issuer("fd00:0:0:e1::/112");
    let answer = i.handle_join(
        t(1),
        session(MEMBER, 42),
        7,
        Ipv6Addr::UNSPECIFIED,
        "job-1",
        None,
        |_| None,
        |_| false,
    );
    assert_eq!(answer, None);
    assert_eq!(i.pending_grants(), 1);
    // Nothing is answered before the table that records the lease is written.
    let (generation, table) = i.poll_persist(t(1), 1_000).unwrap();
    assert_eq!(table.leases.len(), 1);
    assert!(
        i.poll_persist(t(1), 1_000).is_none(),
        "asked once per change"
    );
    assert!(i.leases_persisted(generation - 1).is_empty());
    let granted = i.leases_persisted(generation);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].0, 42);
    assert_eq!(granted[0].1.xid, 7);
    let LeaseBody::Grant { cert, .. } = &granted[0].1.body else {
        panic!("not a grant");
    };
    assert_eq!(cert.epoch, 1000, "epochs start at the floor");
    assert_eq!(cert.holder_key, key(MEMBER).public());
    // The certificate passes the checks every node makes.
    let mut grant = Grant::new("i", a("fd00::1"));
    grant.issue_pools.push("fd00:0:0:e1::/112".parse().unwrap());
    let policy = TrustPolicy::new().with_grant(key(ISSUER).public(), grant);
    let claim = Claim {
        key: &cert.holder_key,
        address: cert.address,
        name: &cert.name,
        epoch: cert.epoch,
    };
    assert_eq!(
        policy.check_certificate(&policy.issuers(), cert, claim),
        Ok(())
    );
    let empty: BTreeMap<Ipv6Addr, crate::identity::Issuer> = BTreeMap::new();
    assert!(policy.check_certificate(&empty, cert, claim).is_err());
}

#[test]
fn joins_are_never_anonymous_and_names_are_policed() {
    let mut i = issuer("fd00:0:0:e1::/112");
    let join = |i: &mut LeaseIssuer, holder: u8, name: &str, proof: Option<&JoinProof>| {
        i.handle_join(
            t(1),
            session(holder, 3 + 256 * u64::from(holder)),
            9,
            Ipv6Addr::UNSPECIFIED,
            name,
            proof,
            |n| (n == "job-live").then_some([77; 32]),
            |_| false,
        )
    };
    assert_eq!(
        refusal(join(&mut i, 30, "job-1", None)),
        RefuseCode::NotAuthorized
    );
    // A join-key proof over this session, key, xid and name admits an unknown key...
    let binding = [3u8; 32];
    let message = join_proof_message(&binding, &key(30).public(), 9, "job-1");
    let proof = JoinProof {
        join_key: key(JOIN_KEY).public(),
        signature: key(JOIN_KEY).sign(&message),
    };
    assert_eq!(join(&mut i, 30, "job-1", Some(&proof)), None);
    // ...but is worthless for another name, another key or another session.
    assert_eq!(
        refusal(join(&mut i, 30, "job-2", Some(&proof))),
        RefuseCode::NotAuthorized
    );
    assert_eq!(
        refusal(join(&mut i, 31, "job-1", Some(&proof))),
        RefuseCode::NotAuthorized
    );
    let elsewhere = i.handle_join(
        t(1),
        session(30, 4),
        9,
        Ipv6Addr::UNSPECIFIED,
        "job-1",
        Some(&proof),
        |_| None,
        |_| false,
    );
    assert_eq!(refusal(elsewhere), RefuseCode::NotAuthorized);
    // A proof signed by a key that is not a join key.
    let forged = JoinProof {
        join_key: key(31).public(),
        signature: key(31).sign(&message),
    };
    assert_eq!(
        refusal(join(&mut i, 30, "job-1", Some(&forged))),
        RefuseCode::NotAuthorized
    );
    // Names: the pattern, reserved names, names another key holds live or by lease.
    assert_eq!(
        refusal(join(&mut i, MEMBER, "web-1", None)),
        RefuseCode::NameNotAllowed
    );
    assert_eq!(
        refusal(join(&mut i, MEMBER, "job-static", None)),
        RefuseCode::NameNotAllowed
    );
    assert_eq!(
        refusal(join(&mut i, MEMBER, "job-live", None)),
        RefuseCode::NameTaken
    );
    assert_eq!(
        refusal(join(&mut i, MEMBER, "job-1", None)),
        RefuseCode::NameTaken
    );
}

#[test]
fn renewals_need_our_certificate_and_the_holders_signature() {
    let mut i = issuer("fd00:0:0:e1::/112");
    let cert = join(&mut i, t(1), MEMBER, "job-1");
    let renew = |i: &mut LeaseIssuer, now: Time, cert: &LeaseCertificate, signer: u8| {
        let sig = key(signer).sign(&renew_message(5, cert));
        i.handle_renew(now, 5, cert, &sig)
    };
    let renewed = match renew(&mut i, t(11), &cert, MEMBER).body {
        LeaseBody::Renewed { cert, .. } => cert,
        other => panic!("{other:?}"),
    };
    assert_eq!((renewed.epoch, renewed.renewal), (cert.epoch, 1));
    assert_eq!(i.table().lease_at(cert.address).unwrap().expires, t(31));
    let code = |m: LeaseMessage| refusal(Some(m));
    // Signed by another key than the holder's.
    assert_eq!(
        code(renew(&mut i, t(12), &renewed, 30)),
        RefuseCode::UnknownLease
    );
    // Altered after the issuer signed it.
    let mut altered = renewed.clone();
    altered.lease_ms *= 10;
    assert_eq!(
        code(renew(&mut i, t(12), &altered, MEMBER)),
        RefuseCode::UnknownLease
    );
    // Past its expiry the lease is gone.
    i.expire(t(40));
    assert_eq!(
        code(renew(&mut i, t(40), &renewed, MEMBER)),
        RefuseCode::UnknownLease
    );
}

#[test]
fn a_release_frees_the_address_after_the_grace_and_only_its_holder_may_release() {
    let mut i = issuer("fd00:0:0:e1::/126");
    let cert = join(&mut i, t(1), MEMBER, "job-1");
    let release = |i: &mut LeaseIssuer, signer: u8| {
        let sig = key(signer).sign(&release_message(3, cert.address, cert.epoch));
        i.handle_release(t(2), 3, cert.address, cert.epoch, &sig)
    };
    assert!(!release(&mut i, 30));
    assert!(i.table().lease_at(cert.address).is_some());
    assert!(release(&mut i, MEMBER));
    assert!(
        !i.table().is_free(t(9), cert.address),
        "held down for the grace"
    );
    assert!(i.table().is_free(t(10), cert.address));
}

#[test]
fn a_small_pool_runs_out() {
    // A /126 holds offsets 1..=3.
    let mut i = issuer("fd00:0:0:e1::/126");
    let mut addresses = BTreeSet::new();
    for (n, holder) in [40u8, 41, 42].iter().enumerate() {
        i.config.policy.identities.insert(key(*holder).public());
        let cert = join(&mut i, t(1), *holder, &format!("job-{n}"));
        assert!(addresses.insert(cert.address));
    }
    i.config.policy.identities.insert(key(43).public());
    let answer = i.handle_join(
        t(1),
        session(43, 1),
        7,
        Ipv6Addr::UNSPECIFIED,
        "job-9",
        None,
        |_| None,
        |_| false,
    );
    assert_eq!(refusal(answer), RefuseCode::PoolExhausted);
}

#[test]
fn a_replayed_renew_is_refused_and_a_resent_one_does_not_extend_the_lease() {
    let mut i = issuer("fd00:0:0:e1::/112");
    let cert = join(&mut i, t(1), MEMBER, "job-1");
    let sig = key(MEMBER).sign(&renew_message(5, &cert));
    let renewed = match i.handle_renew(t(11), 5, &cert, &sig).body {
        LeaseBody::Renewed { cert, .. } => cert,
        other => panic!("{other:?}"),
    };
    assert_eq!(i.table().lease_at(cert.address).unwrap().expires, t(31));
    // The same Renew again (its answer was lost): the current certificate, no extension.
    match i.handle_renew(t(12), 5, &cert, &sig).body {
        LeaseBody::Renewed { cert: again, .. } => assert_eq!(again, renewed),
        other => panic!("{other:?}"),
    }
    assert_eq!(i.table().lease_at(cert.address).unwrap().expires, t(31));
    // A second renewal, then the first Renew replayed: refused, nothing changes.
    let sig2 = key(MEMBER).sign(&renew_message(7, &renewed));
    assert!(matches!(
        i.handle_renew(t(21), 7, &renewed, &sig2).body,
        LeaseBody::Renewed { .. }
    ));
    assert_eq!(i.table().lease_at(cert.address).unwrap().expires, t(41));
    let replay = i.handle_renew(t(30), 5, &cert, &sig);
    assert_eq!(refusal(Some(replay)), RefuseCode::UnknownLease);
    assert_eq!(i.table().lease_at(cert.address).unwrap().expires, t(41));
    assert_eq!(i.table().lease_at(cert.address).unwrap().renewal, 2);
}
