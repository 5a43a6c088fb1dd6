//! A new configuration is offered to every neighbour and acknowledged before the node applies
//! it (`Node::propose_config`), so a configuration that removes a link still reaches the node
//! at its other end. In the deterministic simulator.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use connectopus_core::node::{Event, NodeConfig};
use connectopus_core::sim::{ConfigApplied, LinkParams, NodeIdx, Sim};

const SECOND: Duration = Duration::from_secs(1);
const STEP: Duration = Duration::from_millis(1);

fn slow_link() -> LinkParams {
    LinkParams {
        latency: Duration::from_millis(30),
        ..LinkParams::default()
    }
}

/// Plays the driver: every node proposes every newer configuration it is offered.
fn propose_offers(sim: &mut Sim, nodes: &[NodeIdx]) {
    for &i in nodes {
        for event in sim.take_events(i) {
            if let Event::ConfigOffered {
                version,
                config,
                signature,
                ..
            } = event
            {
                sim.with_node(i, |node, now| {
                    node.propose_config(now, version, &config, &signature);
                });
            }
        }
    }
}

fn converge(sim: &mut Sim) {
    assert!(
        sim.run_until_converged(Duration::from_millis(100), 5 * SECOND)
            .is_some(),
        "the mesh did not converge"
    );
    sim.run_for(SECOND);
}

/// origin ("foo")—far ("bar"): origin proposes a configuration that removes their link, and the
/// driver drops the link as soon as origin applies it. Returns the version far runs at that
/// moment, the version it runs in the end, what origin applied, and how long origin waited.
fn remove_link_after_apply(rollout_timeout: Duration) -> (u64, u64, ConfigApplied, Duration) {
    let mut sim = Sim::new(80);
    let mut foo_config = NodeConfig::new("fd00::1".parse().unwrap(), "foo", 1, 1);
    foo_config.timers.config_rollout_timeout = rollout_timeout;
    let origin = sim.add_node_with(foo_config);
    let far = sim.add_node("bar");
    let link = sim.connect(origin, far, slow_link());
    converge(&mut sim);
    let config = b"global: {version: 2}  # foo-bar link removed\n".to_vec();
    let proposed_at = sim.now();
    sim.with_node(origin, |node, now| {
        node.propose_config(now, 2, &config, b"sig");
    });
    let mut applied = None;
    let mut bar_at_apply = None;
    for _ in 0..3000 {
        if applied.is_none()
            && let Some(a) = sim.take_config_applications(origin).pop()
        {
            // origin applies the configuration: the link goes away at once.
            sim.cut(link);
            bar_at_apply = Some(sim.node(far).unwrap().config_version());
            applied = Some(a);
        }
        sim.run_for(STEP);
        propose_offers(&mut sim, &[origin, far]);
    }
    let applied = applied.expect("foo never applied the configuration");
    assert_eq!(applied.version, 2);
    assert_eq!(sim.node(origin).unwrap().config_version(), 2);
    let waited = applied.at - proposed_at;
    (
        bar_at_apply.unwrap(),
        sim.node(far).unwrap().config_version(),
        applied,
        waited,
    )
}

#[test]
fn a_config_that_removes_a_link_reaches_its_far_end_before_the_link_goes() {
    let (at_apply, bar_version, applied, waited) = remove_link_after_apply(5 * SECOND);
    assert_eq!(at_apply, 2, "foo applied before far had the configuration");
    assert_eq!(bar_version, 2, "bar was stranded on the old configuration");
    assert!(applied.unacknowledged.is_empty(), "{applied:?}");
    // The offer crossed the link and its acknowledgement came back: one round trip at least,
    // and no more than a few (it did not wait for the timeout).
    assert!(
        waited >= Duration::from_millis(60) && waited < SECOND,
        "foo applied after {waited:?}"
    );
}

#[test]
fn applying_at_once_would_strand_the_far_end() {
    // The same scenario without waiting (a zero timeout applies at once): far never gets it,
    // which is what the rollout prevents.
    let (at_apply, _, applied, _) = remove_link_after_apply(Duration::ZERO);
    assert_eq!(at_apply, 0);
    assert_eq!(
        applied.unacknowledged,
        vec!["fd00::2".parse::<std::net::Ipv6Addr>().unwrap()]
    );
}

#[test]
fn a_neighbour_that_already_offered_the_config_is_not_waited_for() {
    let mut sim = Sim::new(81);
    let origin = sim.add_node("foo");
    let far = sim.add_node("bar");
    sim.connect(origin, far, slow_link());
    converge(&mut sim);
    sim.with_node(origin, |node, now| {
        node.propose_config(now, 3, b"v3", b"sig")
    });
    let mut bar_applied = None;
    let mut offered_at = None;
    for _ in 0..1000 {
        sim.run_for(STEP);
        for event in sim.take_events(far) {
            if let Event::ConfigOffered {
                version,
                config,
                signature,
                ..
            } = event
            {
                offered_at = Some(sim.now());
                sim.with_node(far, |node, now| {
                    node.propose_config(now, version, &config, &signature);
                });
            }
        }
        if let Some(a) = sim.take_config_applications(far).pop() {
            bar_applied = Some(a);
        }
    }
    let applied = bar_applied.expect("bar never applied");
    // far's only neighbour is origin, which gave it the configuration: nothing to wait for.
    assert_eq!(Some(applied.at), offered_at);
    assert_eq!(sim.node(far).unwrap().config_version(), 3);
}

#[test]
fn a_silent_neighbour_delays_the_apply_by_the_timeout_only() {
    let mut sim = Sim::new(82);
    let origin = sim.add_node("foo");
    let far = sim.add_node("bar");
    let third = sim.add_node("baz");
    let to_bar = sim.connect(origin, far, LinkParams::default());
    sim.connect(origin, third, LinkParams::default());
    converge(&mut sim);
    // The origin—far link dies silently: origin's session stays up until the dead interval (7 s).
    sim.cut(to_bar);
    let proposed_at = sim.now();
    sim.with_node(origin, |node, now| {
        node.propose_config(now, 2, b"v2", b"sig")
    });
    let mut applied = None;
    for _ in 0..100 {
        sim.run_for(Duration::from_millis(100));
        propose_offers(&mut sim, &[origin, far, third]);
        if let Some(a) = sim.take_config_applications(origin).pop() {
            applied = Some(a);
            break;
        }
        assert_eq!(sim.node(origin).unwrap().pending_config_version(), Some(2));
    }
    let applied = applied.expect("foo never applied the configuration");
    assert_eq!(applied.at - proposed_at, 5 * SECOND);
    assert_eq!(applied.unacknowledged, vec![sim.address(far)]);
    assert_eq!(sim.node(origin).unwrap().config_version(), 2);
    assert_eq!(sim.node(origin).unwrap().pending_config_version(), None);
    // third acknowledged and got it.
    sim.run_for(SECOND);
    propose_offers(&mut sim, &[third]);
    sim.run_for(SECOND);
    assert_eq!(sim.node(third).unwrap().config_version(), 2);
}
