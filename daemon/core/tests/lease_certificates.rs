//! Lease certificates in the deterministic simulator (`docs/dynamic-mesh.md` §1.6): a node
//! without a static grant is a member only while an issuer's current certificate grants it
//! its address and name. Forged, foreign, out-of-pool, superseded and expired certificates are
//! refused in hellos and in updates; an issuer may publish /128s of its pool under names that
//! are not reserved.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::identity::{self, Grant, NodeKey, TrustPolicy, sign_certificate};
use connectopus_core::node::{NodeConfig, UpdateRejection};
use connectopus_core::session::CloseReason;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim};
use connectopus_wire::{
    Cost, LeaseCertificate, LinkStateUpdate, LsuExtension, NameBinding, Prefix, PrefixAdvert,
    SignedUpdate,
};

const SECOND: Duration = Duration::from_secs(1);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const ISSUER: u8 = 1;
const BACKBONE: u8 = 2;
const OTHER: u8 = 3;
const HOLDER: u8 = 10;

/// Static nodes: the issuer `i` (pool fd00:0:0:e1::/112), `b` and `o` (no pool); `svc` is an
/// attachment name.
fn policy() -> TrustPolicy {
    let mut issuer = Grant::new("i", a("fd00::1"));
    issuer.issue_pools.push(pool());
    let mut p = TrustPolicy::new()
        .with_grant(key(ISSUER).public(), issuer)
        .with_grant(key(BACKBONE).public(), Grant::new("b", a("fd00::2")))
        .with_grant(key(OTHER).public(), Grant::new("o", a("fd00::3")));
    p.reserved_names = ["i", "b", "o", "svc"].map(String::from).into();
    p
}

fn pool() -> Prefix {
    "fd00:0:0:e1::/112".parse().unwrap()
}

fn static_config(name: &str, seed: u8, trust: &TrustPolicy) -> NodeConfig {
    let grant = trust.by_key(&key(seed).public()).unwrap();
    let mut c = NodeConfig::new(grant.address, name, 1, u64::from(seed) * 7919);
    c.identity = Some(key(seed));
    c.trust = Some(trust.clone());
    c
}

/// A certificate for `holder` at `address`, signed by `signer` in the name of `issuer`.
fn certificate(
    holder: u8,
    address: &str,
    name: &str,
    epoch: u64,
    lease: Duration,
    signer: u8,
    issuer: &str,
) -> LeaseCertificate {
    let mut c = LeaseCertificate {
        address: a(address),
        epoch,
        renewal: 0,
        lease_ms: u32::try_from(lease.as_millis()).unwrap(),
        issuer: a(issuer),
        holder_key: key(holder).public(),
        name: name.into(),
        signature: None,
    };
    sign_certificate(&key(signer), &mut c);
    c
}

fn ephemeral_config(
    holder: u8,
    cert: &LeaseCertificate,
    trust: &TrustPolicy,
    seed: u64,
) -> NodeConfig {
    let mut c = NodeConfig::new(cert.address, cert.name.clone(), cert.epoch, seed);
    c.identity = Some(key(holder));
    c.trust = Some(trust.clone());
    c.certificate = Some(cert.clone());
    c
}

/// i — b, both static; returns the simulator and their indices.
fn backbone(seed: u64) -> (Sim, NodeIdx, NodeIdx) {
    let trust = policy();
    let mut sim = Sim::new(seed);
    let i = sim.add_node_with(static_config("i", ISSUER, &trust));
    let b = sim.add_node_with(static_config("b", BACKBONE, &trust));
    sim.connect(i, b, LinkParams::default().with_channel_binding([1; 32]));
    sim.run_for(2 * SECOND);
    (sim, i, b)
}

fn hellos_rejected(sim: &Sim, at: NodeIdx, reason: &str) -> u64 {
    let counters = sim.node(at).unwrap().counters();
    counters.hellos_rejected.get(reason).copied().unwrap_or(0)
}

fn updates_rejected(sim: &Sim, at: NodeIdx, reason: UpdateRejection) -> u64 {
    let counters = sim.node(at).unwrap().counters();
    counters.updates_rejected.get(&reason).copied().unwrap_or(0)
}

fn knows(sim: &Sim, at: NodeIdx, origin: Ipv6Addr) -> bool {
    sim.node(at)
        .unwrap()
        .known_nodes()
        .any(|(u, _)| u.origin == origin)
}

fn resolves(sim: &Sim, at: NodeIdx, name: &str) -> Option<Ipv6Addr> {
    sim.node(at).unwrap().names().get(name).map(|e| e.address)
}

fn has_peer(sim: &Sim, at: NodeIdx, peer: Ipv6Addr) -> bool {
    sim.node(at)
        .unwrap()
        .sessions()
        .any(|s| s.is_established() && s.peer().is_some_and(|p| p.address == peer))
}

/// Runs in 100 ms steps until `done` holds; returns the time it took, or `None` after `limit`.
fn wait_for(sim: &mut Sim, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
    let start = sim.now();
    while sim.now() - start < limit {
        if done(sim) {
            return Some(sim.now() - start);
        }
        sim.run_for(SECOND / 10);
    }
    done(sim).then(|| sim.now() - start)
}

#[test]
fn a_certified_ephemeral_node_joins_routing_and_names() {
    let trust = policy();
    let (mut sim, i, b) = backbone(1);
    let cert = certificate(
        HOLDER,
        "fd00:0:0:e1::5",
        "job-1",
        100,
        20 * SECOND,
        ISSUER,
        "fd00::1",
    );
    let e = sim.add_node_with(ephemeral_config(HOLDER, &cert, &trust, 5));
    sim.connect(e, b, LinkParams::default().with_channel_binding([2; 32]));
    let took = wait_for(&mut sim, 5 * SECOND, |sim| {
        resolves(sim, i, "job-1") == Some(cert.address)
    });
    assert!(took.is_some(), "the issuer never resolved job-1");
    assert!(has_peer(&sim, b, cert.address));
    assert_eq!(sim.trace(i, e).unwrap(), vec![i, b, e]);
    assert_eq!(sim.trace(e, i).unwrap(), vec![e, b, i]);
    // The session knows the holder's key, and it came with the certificate.
    let session_key = sim
        .node(b)
        .unwrap()
        .sessions()
        .find_map(|s| s.peer().filter(|p| p.address == cert.address)?.key);
    assert_eq!(session_key, Some(key(HOLDER).public()));
    // Its update carries the certificate (LSU extension kind 1).
    let raw = sim
        .node(i)
        .unwrap()
        .raw_update_for_test(cert.address)
        .unwrap();
    let update = LinkStateUpdate::parse_body(SignedUpdate::parse(&raw).unwrap().body).unwrap();
    assert_eq!(update.lease_certificate().unwrap().unwrap(), cert);
    for at in [i, b] {
        assert!(sim.node(at).unwrap().counters().hellos_rejected.is_empty());
        assert!(sim.node(at).unwrap().counters().updates_rejected.is_empty());
    }
}

#[test]
fn forged_foreign_and_out_of_pool_certificates_are_refused_in_hellos() {
    let trust = policy();
    let lease = 20 * SECOND;
    let cases = [
        // Signed by the holder itself in the issuer's name.
        (
            "forged",
            certificate(
                HOLDER,
                "fd00:0:0:e1::5",
                "job-1",
                100,
                lease,
                HOLDER,
                "fd00::1",
            ),
            "bad_lease",
        ),
        // Signed by a static node that has no pool.
        (
            "foreign",
            certificate(
                HOLDER,
                "fd00:0:0:e1::5",
                "job-1",
                100,
                lease,
                OTHER,
                "fd00::3",
            ),
            "bad_lease",
        ),
        // Signed by the issuer, but outside its pool.
        (
            "outside the pool",
            certificate(
                HOLDER,
                "fd00:0:0:e2::5",
                "job-1",
                100,
                lease,
                ISSUER,
                "fd00::1",
            ),
            "bad_lease",
        ),
        // Signed by the issuer, but for a static node's name.
        (
            "reserved name",
            certificate(
                HOLDER,
                "fd00:0:0:e1::5",
                "svc",
                100,
                lease,
                ISSUER,
                "fd00::1",
            ),
            "bad_lease",
        ),
    ];
    for (what, cert, reason) in cases {
        let (mut sim, i, b) = backbone(2);
        let e = sim.add_node_with(ephemeral_config(HOLDER, &cert, &trust, 5));
        sim.connect(e, b, LinkParams::default().with_channel_binding([2; 32]));
        sim.run_for(5 * SECOND);
        assert!(hellos_rejected(&sim, b, reason) >= 1, "{what}");
        assert!(!has_peer(&sim, b, cert.address), "{what}");
        assert!(!knows(&sim, i, cert.address), "{what}");
        assert!(resolves(&sim, i, &cert.name).is_none_or(|x| x != cert.address));
        assert_eq!(sim.node(b).unwrap().lease_sightings(), 0, "{what}");
    }
    // Without a certificate the key is simply unknown.
    let (mut sim, _, b) = backbone(3);
    let mut c = NodeConfig::new(a("fd00:0:0:e1::5"), "job-1", 100, 5);
    c.identity = Some(key(HOLDER));
    c.trust = Some(trust);
    let e = sim.add_node_with(c);
    sim.connect(e, b, LinkParams::default().with_channel_binding([2; 32]));
    sim.run_for(5 * SECOND);
    assert!(hellos_rejected(&sim, b, "unknown_key") >= 1);
    assert!(!has_peer(&sim, b, a("fd00:0:0:e1::5")));
}

/// The update an ephemeral holder would originate, with `cert` as its extension.
fn ephemeral_update(cert: &LeaseCertificate, origin: Ipv6Addr, sequence: u64) -> LinkStateUpdate {
    let mut u = LinkStateUpdate {
        origin,
        epoch: cert.epoch,
        sequence,
        name: cert.name.clone(),
        config_version: 0,
        adjacencies: Vec::new(),
        prefixes: Vec::new(),
        names: Vec::new(),
        names4: Vec::new(),
        extensions: vec![LsuExtension {
            kind: LsuExtension::LEASE_CERTIFICATE,
            value: cert.encode(),
        }],
    };
    u.canonicalize();
    u
}

#[test]
fn updates_need_a_valid_certificate_signed_over_by_its_holder() {
    let (mut sim, i, b) = backbone(4);
    let lease = 20 * SECOND;
    let good = certificate(
        HOLDER,
        "fd00:0:0:e1::5",
        "job-1",
        100,
        lease,
        ISSUER,
        "fd00::1",
    );
    let forged = certificate(
        HOLDER,
        "fd00:0:0:e1::6",
        "job-2",
        100,
        lease,
        HOLDER,
        "fd00::1",
    );
    let foreign = certificate(
        HOLDER,
        "fd00:0:0:e1::7",
        "job-3",
        100,
        lease,
        OTHER,
        "fd00::3",
    );
    let sign = |k: u8, u: &LinkStateUpdate| identity::sign_update(Some(&key(k)), &u.encode_body());
    let floods: Vec<(Vec<u8>, UpdateRejection)> = vec![
        // Certificate signed by no issuer.
        (
            sign(HOLDER, &ephemeral_update(&forged, forged.address, 1)),
            UpdateRejection::BadLease,
        ),
        // Certificate from a static node without a pool.
        (
            sign(HOLDER, &ephemeral_update(&foreign, foreign.address, 1)),
            UpdateRejection::BadLease,
        ),
        // A genuine certificate for another origin address.
        (
            sign(HOLDER, &ephemeral_update(&good, a("fd00:0:0:e1::9"), 1)),
            UpdateRejection::BadLease,
        ),
        // A genuine certificate, the update signed by someone else.
        (
            sign(OTHER, &ephemeral_update(&good, good.address, 1)),
            UpdateRejection::WrongKey,
        ),
        // A genuine certificate, but the update claims a prefix besides its /128.
        (
            sign(HOLDER, &{
                let mut u = ephemeral_update(&good, good.address, 2);
                u.prefixes.push(PrefixAdvert {
                    prefix: "fd00:77::/64".parse().unwrap(),
                    cost: Cost::DEFAULT,
                });
                u
            }),
            UpdateRejection::UnauthorizedContent,
        ),
        // ... or an attachment name.
        (
            sign(HOLDER, &{
                let mut u = ephemeral_update(&good, good.address, 3);
                u.names.push(NameBinding {
                    name: "extra".into(),
                    address: good.address,
                });
                u
            }),
            UpdateRejection::UnauthorizedContent,
        ),
        // No certificate at all.
        (
            sign(HOLDER, &{
                let mut u = ephemeral_update(&good, good.address, 4);
                u.extensions.clear();
                u
            }),
            UpdateRejection::UnknownOrigin,
        ),
    ];
    for (raw, reason) in floods {
        let before = updates_rejected(&sim, i, reason);
        sim.with_node(b, |node, now| node.flood_raw_update_for_test(now, &raw));
        sim.run_for(SECOND / 2);
        assert_eq!(updates_rejected(&sim, i, reason), before + 1, "{reason:?}");
    }
    for addr in [
        "fd00:0:0:e1::5",
        "fd00:0:0:e1::6",
        "fd00:0:0:e1::7",
        "fd00:0:0:e1::9",
    ] {
        assert!(!knows(&sim, i, a(addr)), "{addr}");
    }
    // The genuine update itself is accepted.
    let raw = sign(HOLDER, &ephemeral_update(&good, good.address, 5));
    sim.with_node(b, |node, now| node.flood_raw_update_for_test(now, &raw));
    sim.run_for(SECOND / 2);
    assert!(knows(&sim, i, good.address));
}

#[test]
fn an_unrenewed_certificate_expires_and_its_holder_is_evicted_a_renewed_one_stays() {
    let trust = policy();
    let lease = 6 * SECOND;
    let (mut sim, i, b) = backbone(5);
    let stale = certificate(
        HOLDER,
        "fd00:0:0:e1::5",
        "job-1",
        100,
        lease,
        ISSUER,
        "fd00::1",
    );
    let renewed_cert = certificate(
        HOLDER + 1,
        "fd00:0:0:e1::6",
        "job-2",
        100,
        lease,
        ISSUER,
        "fd00::1",
    );
    let e = sim.add_node_with(ephemeral_config(HOLDER, &stale, &trust, 5));
    let r = sim.add_node_with(ephemeral_config(HOLDER + 1, &renewed_cert, &trust, 6));
    sim.connect(e, b, LinkParams::default().with_channel_binding([2; 32]));
    sim.connect(r, b, LinkParams::default().with_channel_binding([3; 32]));
    let joined = wait_for(&mut sim, 3 * SECOND, |sim| {
        knows(sim, i, stale.address) && knows(sim, i, renewed_cert.address)
    });
    assert!(joined.is_some());
    let start = sim.now();
    // `r` renews every 2 s (the issuer would send these); `e` never does.
    let mut cert = renewed_cert.clone();
    while sim.now() - start < 3 * lease {
        sim.run_for(2 * SECOND);
        cert.renewal += 1;
        sign_certificate(&key(ISSUER), &mut cert);
        let next = cert.clone();
        sim.with_node(r, |node, now| node.set_certificate(now, Some(next)));
        let elapsed = sim.now() - start;
        if elapsed < lease - SECOND {
            assert!(has_peer(&sim, b, stale.address), "at {elapsed:?}");
        }
        // First sight was at most `joined` before `start`; allow one prune interval (2 s) and
        // a flood after the lease.
        if elapsed > lease + 3 * SECOND {
            assert!(!has_peer(&sim, b, stale.address), "at {elapsed:?}");
            assert!(!knows(&sim, i, stale.address), "at {elapsed:?}");
            assert!(resolves(&sim, i, "job-1").is_none(), "at {elapsed:?}");
        }
        assert!(has_peer(&sim, b, cert.address), "at {elapsed:?}");
        assert_eq!(resolves(&sim, i, "job-2"), Some(cert.address));
    }
    // The expired holder keeps redialling; its hellos are refused as expired.
    assert!(hellos_rejected(&sim, b, "expired_lease") >= 2);
    let closed = sim
        .take_events(b)
        .into_iter()
        .filter(|ev| {
            matches!(
                ev,
                connectopus_core::node::Event::SessionClosed {
                    reason: CloseReason::LeaseExpired,
                    ..
                }
            )
        })
        .count();
    assert!(closed >= 1);
}

#[test]
fn a_later_holder_of_an_address_supersedes_the_earlier_one() {
    let trust = policy();
    let lease = 30 * SECOND;
    let (mut sim, i, b) = backbone(6);
    let first = certificate(
        HOLDER,
        "fd00:0:0:e1::5",
        "job-1",
        100,
        lease,
        ISSUER,
        "fd00::1",
    );
    let second = certificate(
        HOLDER + 1,
        "fd00:0:0:e1::5",
        "job-2",
        101,
        lease,
        ISSUER,
        "fd00::1",
    );
    let e1 = sim.add_node_with(ephemeral_config(HOLDER, &first, &trust, 5));
    sim.connect(e1, b, LinkParams::default().with_channel_binding([2; 32]));
    assert!(
        wait_for(&mut sim, 3 * SECOND, |sim| resolves(sim, i, "job-1")
            .is_some())
        .is_some()
    );
    // The address's next holder (a higher epoch) appears at the issuer.
    let e2 = sim.add_node_with(ephemeral_config(HOLDER + 1, &second, &trust, 6));
    sim.connect(e2, i, LinkParams::default().with_channel_binding([3; 32]));
    let took = wait_for(&mut sim, 5 * SECOND, |sim| {
        [i, b].iter().all(|at| {
            resolves(sim, *at, "job-2") == Some(second.address)
                && resolves(sim, *at, "job-1").is_none()
        }) && !has_peer(sim, b, first.address)
    });
    assert!(
        took.is_some(),
        "the later holder did not take over everywhere"
    );
    sim.run_for(5 * SECOND);
    // The earlier holder stays out: its hellos and updates carry a superseded epoch.
    assert!(!has_peer(&sim, b, first.address));
    assert!(hellos_rejected(&sim, b, "expired_lease") >= 1);
    assert_eq!(sim.trace(b, e2).unwrap(), vec![b, i, e2]);
    let stored_epoch = sim
        .node(b)
        .unwrap()
        .known_nodes()
        .find(|(u, _)| u.origin == second.address)
        .map(|(u, _)| u.epoch);
    assert_eq!(stored_epoch, Some(101));
}

#[test]
fn an_issuer_publishes_names_inside_its_pool_but_not_reserved_ones() {
    let (mut sim, i, b) = backbone(7);
    let pod = a("fd00:0:0:e1::100");
    let set = |sim: &mut Sim, prefix: Prefix, name: &str, address: Ipv6Addr| {
        let binding = NameBinding {
            name: name.into(),
            address,
        };
        sim.with_node(i, |node, now| {
            node.set_attachments(
                now,
                vec![PrefixAdvert {
                    prefix,
                    cost: Cost::DEFAULT,
                }],
                vec![binding],
            )
        });
        sim.run_for(SECOND);
    };
    set(&mut sim, Prefix::host(pod), "web-pod", pod);
    assert_eq!(resolves(&sim, b, "web-pod"), Some(pod));
    assert_eq!(
        updates_rejected(&sim, b, UpdateRejection::UnauthorizedContent),
        0
    );
    // A reserved name, even inside the pool.
    set(&mut sim, Prefix::host(pod), "svc", pod);
    assert_eq!(
        updates_rejected(&sim, b, UpdateRejection::UnauthorizedContent),
        1
    );
    assert!(resolves(&sim, b, "svc").is_none());
    // More than a /128 of the pool, or an address outside it.
    set(&mut sim, pool(), "web-pod", pod);
    assert_eq!(
        updates_rejected(&sim, b, UpdateRejection::UnauthorizedContent),
        2
    );
    let outside = a("fd00:0:0:e2::1");
    set(&mut sim, Prefix::host(outside), "web-pod", outside);
    assert_eq!(
        updates_rejected(&sim, b, UpdateRejection::UnauthorizedContent),
        3
    );
}

#[test]
fn a_policy_without_the_issuers_pool_drops_its_holders_at_once() {
    let trust = policy();
    let (mut sim, i, b) = backbone(8);
    let cert = certificate(
        HOLDER,
        "fd00:0:0:e1::5",
        "job-1",
        100,
        60 * SECOND,
        ISSUER,
        "fd00::1",
    );
    let e = sim.add_node_with(ephemeral_config(HOLDER, &cert, &trust, 5));
    sim.connect(e, b, LinkParams::default().with_channel_binding([2; 32]));
    assert!(
        wait_for(&mut sim, 3 * SECOND, |sim| resolves(sim, i, "job-1")
            .is_some())
        .is_some()
    );
    // A new configuration: the issuer keeps its node grant but no longer issues.
    let mut shrunk = trust.clone();
    shrunk
        .grants
        .get_mut(&key(ISSUER).public())
        .unwrap()
        .issue_pools
        .clear();
    for at in [i, b] {
        let policy = shrunk.clone();
        sim.with_node(at, |node, now| node.set_trust(now, Some(policy)));
    }
    // At once: the session is closed and the origin gone, before any timer runs.
    assert!(!has_peer(&sim, b, cert.address));
    for at in [i, b] {
        assert!(!knows(&sim, at, cert.address));
        assert!(resolves(&sim, at, "job-1").is_none());
    }
    sim.run_for(3 * SECOND);
    assert!(!has_peer(&sim, b, cert.address));
    assert!(
        hellos_rejected(&sim, b, "bad_lease") >= 1,
        "its redials are refused"
    );
    // The same policy again with the pool: the holder is admitted again.
    for at in [i, b] {
        let policy = trust.clone();
        sim.with_node(at, |node, now| node.set_trust(now, Some(policy)));
    }
    assert!(
        wait_for(&mut sim, 5 * SECOND, |sim| resolves(sim, i, "job-1")
            .is_some())
        .is_some()
    );
}
