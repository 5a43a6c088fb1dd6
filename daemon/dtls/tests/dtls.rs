//! In-memory tests of the DTLS association: handshakes, verification, interop, replay, loss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use connectopus_dtls::{
    Accept, ClientConfig, CloseReason, DtlsAssociation, ExpectedName, PeerVerification, PskSuite,
    RecordSuite, ServerConfig, State,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Each PSK suite choice between two nodes of this version: the cipher, record layout and
/// key-exchange share it negotiates, and records both ways on the fast path.
#[test]
fn psk_handshakes_negotiate_their_suite_and_run_the_fast_path_both_ways() {
    for (suite, cipher, record, offset, overhead, share_bits) in [
        (
            PskSuite::EcdhePskChaCha20Poly1305,
            "ECDHE-PSK-CHACHA20-POLY1305",
            RecordSuite::ChaCha20Poly1305,
            13,
            29,
            253,
        ),
        // The default: the server's DHE share is from a 2048-bit group (security level 2).
        (
            PskSuite::default(),
            "DHE-PSK-AES128-GCM-SHA256",
            RecordSuite::Aes128Gcm,
            21,
            37,
            2048,
        ),
    ] {
        let clock = Clock::new();
        let cfg = psk(KEY, suite, true);
        let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
        assert!(
            handshake(&mut c, &mut s, &clock),
            "handshake: {:?} {:?}",
            c.state(),
            s.state()
        );
        for a in [&c, &s] {
            assert_eq!(a.cipher_name(), Some(cipher));
            assert_eq!(a.record_suite(), Some(record));
            assert!(a.fast_path_active(), "{:?}", a.stats());
            assert_eq!(a.payload_offset(), Some(offset));
            assert_eq!(a.overhead(), Some(overhead));
        }
        assert_eq!(c.peer_key_exchange_bits(), Some(share_bits));
        for len in [1400, 100, 1] {
            send_ok(&mut c, &mut s, &clock, &payload(len, 1));
            send_ok(&mut s, &mut c, &clock, &payload(len, 2));
        }
        assert_eq!(c.stats().records_sealed, 3);
        assert_eq!(s.stats().records_opened, 3);
    }
}

/// A node with the default suites and one that offers only ECDHE-PSK-ChaCha20 (as nodes
/// before the AES-GCM default did) agree on ChaCha20, whichever end is the server.
#[test]
fn default_psk_suite_meets_a_chacha_only_peer_on_chacha() {
    let clock = Clock::new();
    let default = psk(KEY, PskSuite::default(), true);
    let chacha_only = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    for (client, server) in [(&default, &chacha_only), (&chacha_only, &default)] {
        let (mut c, mut s) = new_pair(client, server, &clock);
        assert!(
            handshake(&mut c, &mut s, &clock),
            "handshake: {:?} {:?}",
            c.state(),
            s.state()
        );
        for a in [&c, &s] {
            assert_eq!(a.cipher_name(), Some("ECDHE-PSK-CHACHA20-POLY1305"));
            assert_eq!(a.record_suite(), Some(RecordSuite::ChaCha20Poly1305));
            assert!(a.fast_path_active(), "{:?}", a.stats());
        }
        send_ok(&mut c, &mut s, &clock, &payload(1400, 3));
        send_ok(&mut s, &mut c, &clock, &payload(1400, 4));
    }
}

#[test]
fn wrong_psk_never_establishes_and_both_sides_fail() {
    let clock = Clock::new();
    let ccfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let scfg = psk(
        b"another key entirely",
        PskSuite::EcdhePskChaCha20Poly1305,
        true,
    );
    let (mut c, mut s) = new_pair(&ccfg, &scfg, &clock);
    let handshake_timeout = Duration::from_secs(2);
    let mut ever_established = false;
    pump(
        &mut c,
        &mut s,
        &clock,
        |_, _, _| false,
        |c, s| {
            if *c.state() == State::Established || *s.state() == State::Established {
                return true;
            }
            // Done once both sides report failure, OpenSSL's or the caller's timeout.
            let failed = |a: &DtlsAssociation| {
                matches!(a.state(), State::Closed(_))
                    || clock.now() - a.handshake_started_at() > handshake_timeout
            };
            failed(c) && failed(s)
        },
        Duration::from_secs(10),
    );
    for a in [&c, &s] {
        ever_established |=
            *a.state() == State::Established || a.export_keying_material("x", None, 8).is_ok();
    }
    assert!(!ever_established);
    // DTLS drops the unauthentic Finished silently, so neither side gets an alert: both run
    // out of retransmissions (12 timeouts) and OpenSSL reports "read timeout expired".
    for a in [&c, &s] {
        assert!(
            matches!(a.state(), State::Closed(CloseReason::HandshakeFailed(why)) if why.contains("timeout")),
            "{:?}",
            a.state()
        );
    }
    assert!(s.seal_in_place(&mut [0u8; 64], 1).is_err());
}

/// Builds a CA, a server cert for `node1.mesh` / `fd00::1` and a client cert.
struct Pki {
    ca: (
        openssl::x509::X509,
        openssl::pkey::PKey<openssl::pkey::Private>,
    ),
    server: (
        openssl::x509::X509,
        openssl::pkey::PKey<openssl::pkey::Private>,
    ),
    client: (
        openssl::x509::X509,
        openssl::pkey::PKey<openssl::pkey::Private>,
    ),
}

fn pki() -> Pki {
    let ca = make_cert("mesh ca", &[], &[], true, None);
    let server = make_cert(
        "node1",
        &["node1.mesh"],
        &["fd00::1"],
        false,
        Some((&ca.0, &ca.1)),
    );
    let client = make_cert("node2", &["node2.mesh"], &[], false, Some((&ca.0, &ca.1)));
    Pki { ca, server, client }
}

fn cert_handshake(
    client: &connectopus_dtls::DtlsConfig,
    server: &connectopus_dtls::DtlsConfig,
) -> (DtlsAssociation, DtlsAssociation, bool) {
    let clock = Clock::new();
    let (mut c, mut s) = new_pair(client, server, &clock);
    let ok = pump(
        &mut c,
        &mut s,
        &clock,
        |_, _, _| false,
        |c, s| {
            both_established(c, s)
                || matches!(c.state(), State::Closed(_))
                || matches!(s.state(), State::Closed(_))
        },
        Duration::from_secs(5),
    );
    assert!(ok, "handshake neither completed nor failed");
    let est = both_established(&c, &s);
    if !est {
        // Let the alert reach the other side; neither end may be established.
        let _ = pump(
            &mut c,
            &mut s,
            &clock,
            |_, _, _| false,
            |_, _| false,
            Duration::from_millis(200),
        );
        assert_ne!(*c.state(), State::Established);
        assert_ne!(*s.state(), State::Established);
    }
    (c, s, est)
}

#[test]
fn certificates_with_ca_and_host_name() {
    let p = pki();
    let server = cert_config(
        Some((&p.server.0, &p.server.1)),
        ca_verify(&p.ca.0, None),
        true,
        true,
    );
    let client = cert_config(
        Some((&p.client.0, &p.client.1)),
        ca_verify(&p.ca.0, Some(ExpectedName::Dns("node1.mesh".into()))),
        false,
        true,
    );
    let (mut c, mut s, ok) = cert_handshake(&client, &server);
    assert!(ok);
    assert_eq!(c.cipher_name(), Some("ECDHE-ECDSA-AES128-GCM-SHA256"));
    assert!(c.fast_path_active() && s.fast_path_active());
    assert_eq!((c.payload_offset(), c.overhead()), (Some(21), Some(37)));
    let clock = Clock::new();
    send_ok(&mut c, &mut s, &clock, &payload(1400, 3));
    send_ok(&mut s, &mut c, &clock, &payload(1400, 4));
    // The server saw the client's certificate (mutual authentication).
    assert_eq!(
        s.peer_certificate().unwrap().to_der().unwrap(),
        p.client.0.to_der().unwrap()
    );

    // An IP address SAN is checked too.
    let client_ip = cert_config(
        Some((&p.client.0, &p.client.1)),
        ca_verify(&p.ca.0, Some(ExpectedName::Ip("fd00::1".parse().unwrap()))),
        false,
        true,
    );
    assert!(cert_handshake(&client_ip, &server).2);
}

#[test]
fn certificates_wrong_host_name_fails() {
    let p = pki();
    let server = cert_config(
        Some((&p.server.0, &p.server.1)),
        ca_verify(&p.ca.0, None),
        false,
        true,
    );
    for name in [
        ExpectedName::Dns("node9.mesh".into()),
        ExpectedName::Ip("fd00::9".parse().unwrap()),
    ] {
        let client = cert_config(None, ca_verify(&p.ca.0, Some(name)), false, true);
        let (c, _s, ok) = cert_handshake(&client, &server);
        assert!(!ok);
        assert!(
            matches!(c.state(), State::Closed(CloseReason::HandshakeFailed(_))),
            "{:?}",
            c.state()
        );
    }
}

#[test]
fn certificates_untrusted_fails_both_directions() {
    let p = pki();
    let other_ca = make_cert("other ca", &[], &[], true, None);
    let rogue = make_cert(
        "node1",
        &["node1.mesh"],
        &[],
        false,
        Some((&other_ca.0, &other_ca.1)),
    );
    // Untrusted server certificate.
    let server = cert_config(
        Some((&rogue.0, &rogue.1)),
        ca_verify(&p.ca.0, None),
        false,
        true,
    );
    let client = cert_config(
        None,
        ca_verify(&p.ca.0, Some(ExpectedName::Dns("node1.mesh".into()))),
        false,
        true,
    );
    assert!(!cert_handshake(&client, &server).2);
    // Untrusted client certificate.
    let server = cert_config(
        Some((&p.server.0, &p.server.1)),
        ca_verify(&p.ca.0, None),
        true,
        true,
    );
    let client = cert_config(
        Some((&rogue.0, &rogue.1)),
        ca_verify(&p.ca.0, Some(ExpectedName::Dns("node1.mesh".into()))),
        false,
        true,
    );
    let (_c, s, ok) = cert_handshake(&client, &server);
    assert!(!ok);
    assert!(
        matches!(s.state(), State::Closed(CloseReason::HandshakeFailed(_))),
        "{:?}",
        s.state()
    );
}

#[test]
fn certificates_pinned_ok_and_other_fails() {
    let a = make_cert("a", &[], &[], false, None);
    let b = make_cert("b", &[], &[], false, None);
    let other = make_cert("x", &[], &[], false, None);
    let spki = |c: &openssl::x509::X509| c.public_key().unwrap().public_key_to_der().unwrap();
    // Mutual pinning of self-signed certificates.
    let server = cert_config(
        Some((&a.0, &a.1)),
        PeerVerification::PinnedCertificate(b.0.clone()),
        true,
        true,
    );
    let client = cert_config(
        Some((&b.0, &b.1)),
        PeerVerification::PinnedCertificate(a.0.clone()),
        false,
        true,
    );
    assert!(cert_handshake(&client, &server).2);
    // Public key pinning.
    let client_pk = cert_config(
        Some((&b.0, &b.1)),
        PeerVerification::PinnedPublicKey(spki(&a.0)),
        false,
        true,
    );
    assert!(cert_handshake(&client_pk, &server).2);
    // The client pins another certificate.
    let client_bad = cert_config(
        Some((&b.0, &b.1)),
        PeerVerification::PinnedCertificate(other.0.clone()),
        false,
        true,
    );
    assert!(!cert_handshake(&client_bad, &server).2);
    let client_bad_pk = cert_config(
        Some((&b.0, &b.1)),
        PeerVerification::PinnedPublicKey(spki(&other.0)),
        false,
        true,
    );
    assert!(!cert_handshake(&client_bad_pk, &server).2);
    // The server pins another client certificate.
    let server_bad = cert_config(
        Some((&a.0, &a.1)),
        PeerVerification::PinnedCertificate(other.0),
        true,
        true,
    );
    assert!(!cert_handshake(&client, &server_bad).2);
}

#[test]
fn certificates_mutual_auth_required_and_client_without_cert_fails() {
    let p = pki();
    let server = cert_config(
        Some((&p.server.0, &p.server.1)),
        ca_verify(&p.ca.0, None),
        true,
        true,
    );
    let client = cert_config(
        None,
        ca_verify(&p.ca.0, Some(ExpectedName::Dns("node1.mesh".into()))),
        false,
        true,
    );
    let (_c, s, ok) = cert_handshake(&client, &server);
    assert!(!ok);
    assert!(
        matches!(s.state(), State::Closed(CloseReason::HandshakeFailed(_))),
        "{:?}",
        s.state()
    );
    // Without the requirement the same client is accepted.
    let server = cert_config(
        Some((&p.server.0, &p.server.1)),
        ca_verify(&p.ca.0, None),
        false,
        true,
    );
    assert!(cert_handshake(&client, &server).2);
}

#[test]
fn client_ca_mode_requires_expected_name() {
    let p = pki();
    let client = cert_config(None, ca_verify(&p.ca.0, None), false, true);
    assert!(ClientConfig::new(&client).is_err());
}

/// Interop matrix: fast-path sender/receiver against an association forced onto OpenSSL's
/// SSL_read/SSL_write, for both record formats.
#[test]
fn interop_fast_path_against_openssl_record_layer() {
    let p = pki();
    type Make = Box<dyn Fn(bool, bool) -> connectopus_dtls::DtlsConfig>;
    let pins = (p.server.clone(), p.client);
    let suites: Vec<(&str, Make)> = vec![
        (
            "ECDHE-PSK-CHACHA20-POLY1305",
            Box::new(|fast, _| psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, fast)),
        ),
        (
            "PSK-AES128-GCM-SHA256",
            Box::new(|fast, _| psk(KEY, PskSuite::PskAes128GcmNoForwardSecrecy, fast)),
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            Box::new(move |fast, server| {
                let (me, peer) = if server {
                    (&pins.0, &pins.1)
                } else {
                    (&pins.1, &pins.0)
                };
                cert_config(
                    Some((&me.0, &me.1)),
                    PeerVerification::PinnedCertificate(peer.0.clone()),
                    server,
                    fast,
                )
            }),
        ),
    ];
    for (name, make) in &suites {
        for (client_fast, server_fast) in [(true, false), (false, true), (false, false)] {
            let clock = Clock::new();
            let (mut c, mut s) =
                new_pair(&make(client_fast, false), &make(server_fast, true), &clock);
            assert!(handshake(&mut c, &mut s, &clock), "{name}");
            assert_eq!(c.cipher_name(), Some(*name));
            assert_eq!(c.fast_path_active(), client_fast, "{name} {:?}", c.stats());
            assert_eq!(s.fast_path_active(), server_fast, "{name} {:?}", s.stats());
            assert_eq!(c.overhead(), s.overhead());
            for i in 0..1000usize {
                let len = 1 + (i * 7919) % 1400;
                send_ok(&mut c, &mut s, &clock, &payload(len, i as u8));
                send_ok(&mut s, &mut c, &clock, &payload(len, !(i as u8)));
            }
            // A replayed and a bit-flipped record are dropped by either record layer.
            let rec = seal(&mut c, b"once");
            assert_eq!(deliver(&mut s, &clock, rec.clone()), vec![b"once".to_vec()]);
            assert!(deliver(&mut s, &clock, rec).is_empty());
            let mut flipped = seal(&mut s, b"flip");
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(deliver(&mut c, &clock, flipped).is_empty());
            send_ok(&mut s, &mut c, &clock, b"still fine");
            // close_notify from either end reaches the other as PeerClosed.
            let (closer, other) = if client_fast {
                (&mut c, &mut s)
            } else {
                (&mut s, &mut c)
            };
            closer.close();
            assert_eq!(*closer.state(), State::Closed(CloseReason::LocalClose));
            let mut n = 0;
            while let Some(d) = closer.poll_transmit() {
                n += 1;
                deliver(other, &clock, d);
            }
            assert!(n >= 1, "{name}: no close_notify");
            assert_eq!(
                *other.state(),
                State::Closed(CloseReason::PeerClosed),
                "{name}"
            );
        }
    }
}

#[test]
fn replay_window_accepts_once_reorders_and_drops_old() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    assert!(handshake(&mut c, &mut s, &clock));
    // The same record twice is opened once.
    let rec = seal(&mut c, b"hello");
    assert_eq!(deliver(&mut s, &clock, rec.clone()).len(), 1);
    assert!(deliver(&mut s, &clock, rec).is_empty());
    assert_eq!(s.stats().replayed, 1);
    // Reordering inside the window is accepted.
    let recs: Vec<_> = (0..50u8).map(|i| seal(&mut c, &[i; 10])).collect();
    for (i, r) in recs.into_iter().enumerate().rev() {
        assert_eq!(deliver(&mut s, &clock, r), vec![vec![i as u8; 10]]);
    }
    // A record older than the window is dropped.
    let old = seal(&mut c, b"old");
    for _ in 0..2000 {
        let r = seal(&mut c, b"x");
        assert_eq!(deliver(&mut s, &clock, r).len(), 1);
    }
    assert!(deliver(&mut s, &clock, old).is_empty());
    assert_eq!(s.stats().replayed, 2);
    send_ok(&mut c, &mut s, &clock, b"after");
}

#[test]
fn lost_flights_are_retransmitted_by_timers() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    // Drop the first ClientHello, the first HelloVerifyRequest and the first server flight.
    let ok = pump(
        &mut c,
        &mut s,
        &clock,
        |dir, n, _| {
            (dir == Dir::ClientToServer && n == 0) || (dir == Dir::ServerToClient && n <= 2)
        },
        both_established,
        Duration::from_secs(5),
    );
    assert!(ok, "{:?} {:?}", c.state(), s.state());
    send_ok(&mut c, &mut s, &clock, b"after loss");
    send_ok(&mut s, &mut c, &clock, b"after loss");
}

/// The reference's risk 1: the server's final flight is lost after the server already took
/// over and sent application records; the retransmitted Finished must be re-sealed.
#[test]
fn lost_final_flight_after_takeover_is_resealed() {
    for client_fast in [true, false] {
        let clock = Clock::new();
        let ccfg = psk(KEY, PskSuite::PskAes128GcmNoForwardSecrecy, client_fast);
        let scfg = psk(KEY, PskSuite::PskAes128GcmNoForwardSecrecy, true);
        let (mut c, mut s) = new_pair(&ccfg, &scfg, &clock);
        // Run until the server is established, dropping everything it sends from then on.
        let mut server_done = false;
        let ok = pump(
            &mut c,
            &mut s,
            &clock,
            |dir, _, d| {
                // The server's final flight carries an epoch-1 record.
                dir == Dir::ServerToClient && d.len() > 5 && {
                    server_done = true;
                    d.windows(1).next().is_some() && contains_epoch1(d)
                }
            },
            |_, s| *s.state() == State::Established,
            Duration::from_secs(5),
        );
        assert!(ok && server_done);
        assert_eq!(*c.state(), State::Handshaking);
        // The server sends three records the client cannot use yet.
        let early: Vec<_> = (0..3u8).map(|i| seal(&mut s, &[i; 20])).collect();
        let mut early_delivered = Vec::new();
        for r in early {
            early_delivered.extend(deliver(&mut c, &clock, r));
        }
        assert!(early_delivered.is_empty());
        // Timers: the client retransmits, the server's OpenSSL answers with its flight, re-sealed.
        assert!(
            handshake(&mut c, &mut s, &clock),
            "client_fast={client_fast}: {:?}",
            c.state()
        );
        assert!(s.stats().resealed >= 1, "{:?}", s.stats());
        // A plain OpenSSL client returns the buffered early records after it completed.
        for i in 0..100u8 {
            send_ok(&mut s, &mut c, &clock, &[i; 100]);
            send_ok(&mut c, &mut s, &clock, &[i; 100]);
        }
    }
}

fn contains_epoch1(d: &[u8]) -> bool {
    let mut pos = 0;
    while pos + 13 <= d.len() {
        if u16::from_be_bytes([d[pos + 3], d[pos + 4]]) == 1 {
            return true;
        }
        pos += 13 + usize::from(u16::from_be_bytes([d[pos + 11], d[pos + 12]]));
    }
    false
}

#[test]
fn garbage_and_truncation_never_panic_nor_disturb() {
    for (suite, fast) in [
        (PskSuite::DhePskAes128GcmOrEcdhePskChaCha20, true),
        (PskSuite::PskAes128GcmNoForwardSecrecy, true),
        (PskSuite::EcdhePskChaCha20Poly1305, true),
        (PskSuite::PskAes128GcmNoForwardSecrecy, false),
        (PskSuite::EcdhePskChaCha20Poly1305, false),
    ] {
        garbage_case(suite, fast);
    }
}

fn garbage_case(suite: PskSuite, fast: bool) {
    let clock = Clock::new();
    let cfg = psk(KEY, suite, fast);
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    // A truncated handshake datagram during the handshake is survived.
    let mut hello = c.poll_transmit().unwrap();
    for cut in [0, 1, 12, 13, 20, hello.len() - 1] {
        let mut t = hello[..cut].to_vec();
        let _ = s.handle_datagram(clock.now(), &mut t);
        assert_eq!(*s.state(), State::Handshaking);
    }
    let _ = s.handle_datagram(clock.now(), &mut hello);
    assert!(handshake(&mut c, &mut s, &clock));

    let good = seal(&mut c, &payload(1400, 9));
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![23],
        good[..12].to_vec(),
        good[..13].to_vec(),
        good[..good.len() - 1].to_vec(),
        good[..40].to_vec(),
    ];
    // Valid header, nonsense body, several epochs and types.
    for ctype in 20u8..=24 {
        for epoch in [0u16, 1, 2, 0xFFFF] {
            let len = rng.below(64);
            let mut d = vec![ctype, 0xFE, 0xFD];
            d.extend_from_slice(&epoch.to_be_bytes());
            d.extend_from_slice(&rng.bytes(6));
            d.extend_from_slice(&(len as u16).to_be_bytes());
            d.extend_from_slice(&rng.bytes(len));
            cases.push(d);
        }
    }
    // A length field larger than the datagram, a huge length, and random bytes.
    let mut long = good.clone();
    long[11] = 0xFF;
    cases.push(long);
    for _ in 0..500 {
        let n = rng.below(1500);
        cases.push(rng.bytes(n));
    }
    // Bit flips of a valid record.
    for _ in 0..200 {
        let mut d = good.clone();
        let i = rng.below(d.len());
        d[i] ^= 1 << rng.below(8);
        cases.push(d);
    }
    for (i, d) in cases.into_iter().enumerate() {
        for a in [&mut c, &mut s] {
            let mut d2 = d.clone();
            let got = a.handle_datagram(clock.now(), &mut d2).unwrap();
            assert!(got.is_empty());
            assert_eq!(*a.state(), State::Established, "case {i}: {d:02x?}");
        }
    }
    if fast {
        assert!(
            s.stats().malformed > 0 && s.stats().auth_failed > 0,
            "{:?}",
            s.stats()
        );
    }
    // Nothing was disturbed: the original record still opens, traffic flows both ways.
    assert_eq!(
        deliver(&mut s, &clock, good),
        vec![payload(1400, 9)],
        "{suite:?} fast={fast} {:?}",
        s.stats()
    );
    send_ok(&mut c, &mut s, &clock, b"fine");
    send_ok(&mut s, &mut c, &clock, b"fine");
    // Several records in one datagram are all opened, in place.
    let mut multi = seal(&mut c, b"first");
    multi.extend(seal(&mut c, b"second"));
    assert_eq!(
        deliver(&mut s, &clock, multi),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
}

#[test]
fn keying_material_agrees_and_differs_between_sessions() {
    let cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let mut exported = Vec::new();
    for _ in 0..2 {
        let clock = Clock::new();
        let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
        assert!(
            c.export_keying_material("EXPORTER-connectopus", None, 32)
                .is_err()
        );
        assert!(handshake(&mut c, &mut s, &clock));
        let a = c
            .export_keying_material("EXPORTER-connectopus", Some(b"node-id"), 32)
            .unwrap();
        let b = s
            .export_keying_material("EXPORTER-connectopus", Some(b"node-id"), 32)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            c.export_keying_material("EXPORTER-connectopus", Some(b"other"), 32)
                .unwrap()
        );
        assert_ne!(
            a,
            c.export_keying_material("EXPORTER-other", Some(b"node-id"), 32)
                .unwrap()
        );
        exported.push(a);
    }
    assert_ne!(exported[0], exported[1]);
}

#[test]
fn stateless_cookie_exchange_on_accept() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let server_cfg = ServerConfig::new(&cfg).unwrap();
    let mut c = DtlsAssociation::client(&ClientConfig::new(&cfg).unwrap(), clock.now()).unwrap();
    let hello = c.poll_transmit().unwrap();
    // Garbage is ignored without state.
    assert!(matches!(
        DtlsAssociation::accept(&server_cfg, PEER, clock.now(), b"garbage").unwrap(),
        Accept::Ignored
    ));
    // The first ClientHello gets a HelloVerifyRequest and no association.
    let Accept::HelloVerifyRequest(mut hvr) =
        DtlsAssociation::accept(&server_cfg, PEER, clock.now(), &hello).unwrap()
    else {
        panic!("expected a HelloVerifyRequest");
    };
    assert_eq!(hvr[0], 22);
    assert_eq!(hvr[13], 3, "handshake type hello_verify_request");
    assert!(c.handle_datagram(clock.now(), &mut hvr).unwrap().is_empty());
    let hello2 = c.poll_transmit().unwrap();
    // The cookie is bound to the address: from another port it does not create an association.
    let other = std::net::SocketAddr::new(PEER.ip(), PEER.port() + 1);
    assert!(!matches!(
        DtlsAssociation::accept(&server_cfg, other, clock.now(), &hello2).unwrap(),
        Accept::Association(_)
    ));
    // From the right address it does, and the handshake completes.
    let Accept::Association(mut s) =
        DtlsAssociation::accept(&server_cfg, PEER, clock.now(), &hello2).unwrap()
    else {
        panic!("expected an association");
    };
    assert!(
        handshake(&mut c, &mut s, &clock),
        "{:?} {:?}",
        c.state(),
        s.state()
    );
    send_ok(&mut c, &mut s, &clock, b"via accept");
    send_ok(&mut s, &mut c, &clock, b"via accept");
}

/// With the default PSK suites a server asks before it computes a DHE key exchange, only once
/// a cookie proved the address; refused, the association gets the X25519 suite instead.
#[test]
fn a_server_asks_before_a_dhe_handshake_and_falls_back_to_x25519() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::default(), true);
    let server_cfg = ServerConfig::new(&cfg).unwrap();
    for allow in [true, false] {
        let mut c =
            DtlsAssociation::client(&ClientConfig::new(&cfg).unwrap(), clock.now()).unwrap();
        let hello = c.poll_transmit().unwrap();
        let Accept::HelloVerifyRequest(mut hvr) =
            DtlsAssociation::accept_admitting(&server_cfg, PEER, clock.now(), &hello, || {
                panic!("asked before the cookie proved the address")
            })
            .unwrap()
        else {
            panic!("expected a HelloVerifyRequest");
        };
        assert!(c.handle_datagram(clock.now(), &mut hvr).unwrap().is_empty());
        let hello2 = c.poll_transmit().unwrap();
        let mut asked = 0;
        let Accept::Association(mut s) =
            DtlsAssociation::accept_admitting(&server_cfg, PEER, clock.now(), &hello2, || {
                asked += 1;
                allow
            })
            .unwrap()
        else {
            panic!("expected an association");
        };
        assert_eq!(asked, 1);
        assert!(handshake(&mut c, &mut s, &clock), "{:?}", s.state());
        let (cipher, suite, bits) = if allow {
            ("DHE-PSK-AES128-GCM-SHA256", RecordSuite::Aes128Gcm, 2048)
        } else {
            (
                "ECDHE-PSK-CHACHA20-POLY1305",
                RecordSuite::ChaCha20Poly1305,
                253,
            )
        };
        for a in [&c, &s] {
            assert_eq!(a.cipher_name(), Some(cipher));
            assert_eq!(a.record_suite(), Some(suite));
        }
        assert_eq!(c.peer_key_exchange_bits(), Some(bits));
        send_ok(&mut c, &mut s, &clock, b"either way");
        send_ok(&mut s, &mut c, &clock, b"either way");
    }
}

/// A spoofed protected record long enough for ChaCha20 but shorter than AES-GCM's nonce and
/// tag, slipped into the client's last flight after its ChangeCipherSpec: OpenSSL would take it
/// as a fatal error, so the server must keep it away once AES-GCM is chosen, even though the
/// configuration also offers ChaCha20 (whose shorter records set the bound before that).
#[test]
fn a_record_too_short_for_the_chosen_suite_never_ends_the_handshake() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::default(), true);
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    let mut injected = false;
    for _ in 0..20 {
        while let Some(d) = c.poll_transmit() {
            let mut out = Vec::new();
            let mut at = 0;
            while at + 13 <= d.len() {
                let len = usize::from(u16::from_be_bytes([d[at + 11], d[at + 12]]));
                let end = (at + 13 + len).min(d.len());
                out.extend_from_slice(&d[at..end]);
                if d[at] == 20 && !injected {
                    // Epoch 1, a sequence number of its own, a 20-byte body.
                    out.extend_from_slice(&[22, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 9, 0, 20]);
                    out.extend_from_slice(&[0x5A; 20]);
                    injected = true;
                }
                at = end;
            }
            let _ = s.handle_datagram(clock.now(), &mut out);
        }
        while let Some(mut d) = s.poll_transmit() {
            let _ = c.handle_datagram(clock.now(), &mut d);
        }
        if *c.state() == State::Established && *s.state() == State::Established {
            break;
        }
    }
    assert!(injected, "the client's flight had no ChangeCipherSpec");
    assert_eq!(*s.state(), State::Established, "{:?}", s.stats());
    assert_eq!(*c.state(), State::Established);
    assert_eq!(s.record_suite(), Some(RecordSuite::Aes128Gcm));
    assert!(s.stats().malformed >= 1, "{:?}", s.stats());
    send_ok(&mut c, &mut s, &clock, b"still fine");
}

#[test]
fn seal_checks_buffer_and_state() {
    let clock = Clock::new();
    let cfg = psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, true);
    let (mut c, mut s) = new_pair(&cfg, &cfg, &clock);
    assert!(matches!(
        c.seal_in_place(&mut [0u8; 100], 10),
        Err(connectopus_dtls::DtlsError::NotEstablished)
    ));
    assert!(handshake(&mut c, &mut s, &clock));
    assert!(matches!(
        c.seal_in_place(&mut [0u8; 30], 2),
        Err(connectopus_dtls::DtlsError::BufferTooSmall { need: 31, have: 30 })
    ));
    assert!(c.seal_in_place(&mut vec![0u8; 20000], 16385).is_err());
    c.close();
    assert!(c.seal_in_place(&mut [0u8; 100], 10).is_err());
    assert!(c.handle_datagram(clock.now(), &mut [0u8; 10]).is_err());
}

#[test]
fn close_notify_reaches_the_peer_on_every_path() {
    // (closer fast, other fast): our sealed alert to OpenSSL, OpenSSL's alert to the fast
    // path, and fast to fast.
    for (closer_fast, other_fast) in [(true, false), (false, true), (true, true)] {
        let clock = Clock::new();
        let (mut c, mut s) = new_pair(
            &psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, closer_fast),
            &psk(KEY, PskSuite::EcdhePskChaCha20Poly1305, other_fast),
            &clock,
        );
        assert!(handshake(&mut c, &mut s, &clock));
        for i in 0..5u8 {
            send_ok(&mut c, &mut s, &clock, &[i; 64]);
            send_ok(&mut s, &mut c, &clock, &[i; 64]);
        }
        c.close();
        let mut n = 0;
        while let Some(d) = c.poll_transmit() {
            n += 1;
            assert!(deliver(&mut s, &clock, d).is_empty());
        }
        assert_eq!(n, 1);
        assert_eq!(
            *s.state(),
            State::Closed(CloseReason::PeerClosed),
            "{closer_fast} {other_fast}"
        );
        assert!(s.seal_in_place(&mut [0u8; 64], 1).is_err());
    }
}
