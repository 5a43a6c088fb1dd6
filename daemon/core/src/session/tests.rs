//! Unit tests of a session: hellos, timers, state changes and counters.

use super::*;

fn session(id: u64) -> Session {
    Session::new(
        LinkId(1),
        LinkInfo::new(1400, Cost::DEFAULT, "test"),
        SessionTimers::default(),
        StreamConfig::default(),
        RecordLimits::uniform(1 << 20),
        SessionIds {
            session_id: id,
            challenge: [id as u8; 32],
        },
        Time::ZERO,
    )
}

fn hello_from(peer: &Session, address: &str) -> Hello {
    peer.hello(address.parse().unwrap(), "peer", 7, None, 0, None)
}

#[test]
fn both_ends_establish_once_each_has_seen_its_echo() {
    let mut a = session(11);
    let mut b = session(22);
    // a's first hello (echo 0) reaches b; b answers with an echo of a's id.
    assert_eq!(
        b.handle_hello(Time::ZERO, &hello_from(&a, "fd00::1"), None),
        HelloOutcome::Nothing
    );
    assert!(!b.is_established());
    let answer = hello_from(&b, "fd00::2");
    assert_eq!(answer.echo_session_id, 11);
    assert_eq!(
        a.handle_hello(Time::ZERO, &answer, None),
        HelloOutcome::Established
    );
    assert!(b.hello_due(Time::ZERO), "b must be told its echo");
    assert_eq!(
        b.handle_hello(Time::ZERO, &hello_from(&a, "fd00::1"), None),
        HelloOutcome::Established
    );
    assert_eq!(
        a.peer().unwrap().address,
        "fd00::2".parse::<Ipv6Addr>().unwrap()
    );
}

#[test]
fn a_new_session_id_on_an_established_link_is_a_peer_restart() {
    let mut a = session(11);
    let b = session(22);
    a.handle_hello(Time::ZERO, &hello_from(&b, "fd00::2"), None);
    let mut echoed = hello_from(&b, "fd00::2");
    echoed.echo_session_id = 11;
    assert_eq!(
        a.handle_hello(Time::ZERO, &echoed, None),
        HelloOutcome::Established
    );
    let restarted = session(33);
    let outcome = a.handle_hello(
        Time::from_nanos(5),
        &hello_from(&restarted, "fd00::2"),
        None,
    );
    assert!(
        matches!(outcome, HelloOutcome::PeerRestarted { ref previous } if previous.session_id == 22)
    );
    assert!(
        !a.is_established(),
        "the stream of the old session must not carry over"
    );
}

#[test]
fn idle_clock_starts_at_link_up_not_at_zero() {
    let start = Time::ZERO + Duration::from_secs(100);
    let mut s = Session::new(
        LinkId(1),
        LinkInfo::new(1400, Cost::DEFAULT, "test"),
        SessionTimers::default(),
        StreamConfig::default(),
        RecordLimits::uniform(1 << 20),
        SessionIds {
            session_id: 5,
            challenge: [5; 32],
        },
        start,
    );
    // A slow first hello (6 s) is not mistaken for a dead peer...
    assert_eq!(s.handle_timeout(start + Duration::from_secs(6), || 1), None);
    // ...but a silent one is given up after the dead interval.
    assert_eq!(
        s.handle_timeout(start + Duration::from_secs(7), || 1),
        Some(CloseReason::HandshakeTimeout)
    );
}

#[test]
fn keepalives_start_after_the_idle_interval() {
    let mut a = session(11);
    let mut echoed = hello_from(&session(22), "fd00::2");
    echoed.echo_session_id = 11;
    a.handle_hello(Time::ZERO, &echoed, None);
    let mut out = Vec::new();
    a.hello_sent(Time::ZERO);
    a.drain_outbox(Time::ZERO, &mut out);
    out.clear();
    assert_eq!(
        a.handle_timeout(Time::ZERO + Duration::from_secs(2), || 9),
        None
    );
    a.drain_outbox(Time::ZERO, &mut out);
    assert!(out.iter().all(|m| m[0] != 0x02), "no keepalive before 3 s");
    assert_eq!(
        a.handle_timeout(Time::ZERO + Duration::from_secs(3), || 9),
        None
    );
    a.drain_outbox(Time::ZERO, &mut out);
    assert!(out.iter().any(|m| m[0] == 0x02), "keepalive at 3 s");
}
