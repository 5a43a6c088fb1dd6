use super::*;
use crate::lease_issuer::{IssuerConfig, JoinPolicy, JoinSession, LeaseIssuer};
use crate::lease_table::LeaseTableConfig;

const SECOND: Duration = Duration::from_secs(1);
const ISSUER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

/// An issuer (lease 20 s, grace 8 s) that admits join key 20.
fn issuer() -> LeaseIssuer {
    let mut policy = JoinPolicy::default();
    policy.join_keys.insert(key(20).public());
    LeaseIssuer::fresh(
        IssuerConfig {
            address: ISSUER,
            table: LeaseTableConfig {
                pool: "fd00:0:0:e1::/112".parse().unwrap(),
                lease: 20 * SECOND,
                grace: 8 * SECOND,
            },
            policy,
            epoch_floor: 1,
        },
        Some(key(1)),
    )
}

fn holder(n: u8) -> LeaseHolder {
    LeaseHolder::new(
        JoinConfig {
            name: format!("job-{n}"),
            join_key: Some(key(20)),
        },
        key(n),
        u64::from(n) << 32,
    )
}

/// Runs a join: the Join is sent at `sent`, granted and persisted at `granted`.
fn join(h: &mut LeaseHolder, i: &mut LeaseIssuer, sent: Time, granted: Time) -> LeaseCertificate {
    let binding = [9; 32];
    let join = h.start_join(sent, ISSUER, &binding).unwrap();
    let LeaseBody::Join { hint, name, proof } = &join.body else {
        panic!("not a join");
    };
    let session = JoinSession {
        token: 5,
        holder_key: h.key.public(),
        binding,
    };
    let answer = i.handle_join(
        granted,
        session,
        join.xid,
        *hint,
        name,
        proof.as_ref(),
        |_| None,
        |_| false,
    );
    assert_eq!(answer, None, "refused");
    let (generation, _) = i.poll_persist(granted, 0).unwrap();
    let (_, grant) = i.leases_persisted(generation).pop().unwrap();
    match h.handle_message(granted, ISSUER, &grant).as_slice() {
        [HolderOutput::Bound { cert, expires }] => {
            assert_eq!(*expires, sent + 20 * SECOND, "counted from the send");
            cert.clone()
        }
        other => panic!("{other:?}"),
    }
}

/// Delivers every Send of `outputs` to the issuer at `now` and returns the answers.
fn deliver(i: &mut LeaseIssuer, now: Time, outputs: &[HolderOutput]) -> Vec<LeaseMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            HolderOutput::Send { message, .. } => Some(message),
            _ => None,
        })
        .map(|m| match &m.body {
            LeaseBody::Renew { cert, holder_sig } => i.handle_renew(now, m.xid, cert, holder_sig),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn join_renew_and_the_holder_always_lets_go_before_the_issuer() {
    let mut i = issuer();
    let mut h = holder(30);
    // 300 ms between the Join and its grant: the holder's lease counts from the send.
    let cert = join(&mut h, &mut i, at(1_000), at(1_300));
    let issuer_expires = i.table().lease_at(cert.address).unwrap().expires;
    assert!(at(21_000) <= issuer_expires);
    assert_eq!(h.poll_timeout(), Some(at(11_000)), "T1 = lease / 2");
    // T1: a Renew goes out; the issuer answers after 200 ms.
    let out = h.handle_timeout(at(11_000));
    let answers = deliver(&mut i, at(11_200), &out);
    let renewed = h.handle_message(at(11_200), ISSUER, &answers[0]);
    let [HolderOutput::Bound { cert: c, expires }] = renewed.as_slice() else {
        panic!("{renewed:?}");
    };
    assert_eq!((c.epoch, c.renewal), (cert.epoch, 1));
    assert_eq!(*expires, at(31_000));
    assert!(*expires <= i.table().lease_at(cert.address).unwrap().expires);
    // The issuer goes silent: resends 1 s, 2 s, 4 s, 8 s, 10 s apart, then the holder lets go
    // at its own expiry, before the issuer's lease (and long before its grace) ends.
    let mut sends = Vec::new();
    let mut now = at(21_000);
    let lost_at = loop {
        let out = h.handle_timeout(now);
        if out.contains(&HolderOutput::Lost) {
            break now;
        }
        if !out.is_empty() {
            sends.push(now);
        }
        now = h.poll_timeout().unwrap();
    };
    assert_eq!(sends, [at(21_000), at(22_000), at(24_000), at(28_000)]);
    assert_eq!(lost_at, at(31_000));
    assert!(lost_at <= i.table().lease_at(cert.address).unwrap().expires);
    assert_eq!(h.state(), &HolderState::Unbound);
    assert_eq!(h.poll_timeout(), None);
}

#[test]
fn a_refused_renewal_loses_the_address_at_once() {
    let mut i = issuer();
    let mut h = holder(31);
    let cert = join(&mut h, &mut i, at(0), at(100));
    // The issuer lost the lease (it expired there: say the holder was suspended).
    i.expire(at(40_000));
    let out = h.handle_timeout(at(10_000));
    let answers = deliver(&mut i, at(40_000), &out);
    assert!(matches!(
        answers[0].body,
        LeaseBody::Refuse {
            code: RefuseCode::UnknownLease,
            ..
        }
    ));
    assert_eq!(
        h.handle_message(at(10_100), ISSUER, &answers[0]),
        [HolderOutput::Lost]
    );
    assert!(h.certificate().is_none());
    // The next Join offers the old address as its hint, and gets it back (it is free).
    let again = join(&mut h, &mut i, at(50_000), at(50_100));
    assert_eq!(again.address, cert.address);
    assert!(
        again.epoch > cert.epoch,
        "a later holder always has a higher epoch"
    );
}

#[test]
fn answers_to_other_transactions_or_issuers_are_ignored_and_joins_time_out() {
    let mut i = issuer();
    let mut h = holder(32);
    let join = h.start_join(at(0), ISSUER, &[1; 32]).unwrap();
    assert!(
        h.start_join(at(0), ISSUER, &[1; 32]).is_none(),
        "one at a time"
    );
    let refuse = LeaseMessage {
        xid: join.xid,
        body: LeaseBody::Refuse {
            code: RefuseCode::PoolExhausted,
            retry_after_ms: 3_000,
            text: String::new(),
        },
    };
    let other_issuer: Ipv6Addr = "fd00::2".parse().unwrap();
    assert!(h.handle_message(at(10), other_issuer, &refuse).is_empty());
    let wrong_xid = LeaseMessage {
        xid: join.xid + 2,
        ..refuse.clone()
    };
    assert!(h.handle_message(at(10), ISSUER, &wrong_xid).is_empty());
    assert_eq!(
        h.handle_message(at(10), ISSUER, &refuse),
        [HolderOutput::Refused {
            issuer: ISSUER,
            code: RefuseCode::PoolExhausted,
            retry_at: at(3_010),
        }]
    );
    // Unanswered, a Join gives up after 2 s.
    h.start_join(at(5_000), ISSUER, &[1; 32]).unwrap();
    assert!(h.handle_timeout(at(6_999)).is_empty());
    assert_eq!(h.handle_timeout(at(7_000)).len(), 1);
    assert_eq!(h.state(), &HolderState::Unbound);
    // A grant for another key is not taken.
    let mut other = holder(33);
    let cert = super::tests::join(&mut other, &mut i, at(8_000), at(8_000));
    h.start_join(at(8_000), ISSUER, &[1; 32]).unwrap();
    let HolderState::Requesting { xid, .. } = *h.state() else {
        panic!("not requesting");
    };
    let foreign = LeaseMessage {
        xid,
        body: LeaseBody::Grant {
            t1_ms: 10_000,
            cert,
        },
    };
    assert!(h.handle_message(at(8_100), ISSUER, &foreign).is_empty());
}

#[test]
fn release_is_signed_by_the_holder_and_frees_the_address_after_the_grace() {
    let mut i = issuer();
    let mut h = holder(34);
    let cert = join(&mut h, &mut i, at(0), at(0));
    let (to, message) = h.release().unwrap();
    assert_eq!(to, ISSUER);
    let LeaseBody::Release {
        address,
        epoch,
        holder_sig,
    } = message.body
    else {
        panic!("not a release");
    };
    assert!(i.handle_release(at(1_000), message.xid, address, epoch, &holder_sig));
    assert_eq!(h.state(), &HolderState::Unbound);
    assert!(!i.table().is_free(at(8_999), cert.address));
    assert!(i.table().is_free(at(9_000), cert.address));
}
