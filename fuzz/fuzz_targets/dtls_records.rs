//! A DTLS association fed a hostile peer's datagrams in every state: the stateless listener
//! (`accept`), a fresh client, a fresh server, either side part-way through a real handshake,
//! and an established pair (fast path on and off, both PSK suites).
//!
//! Never a panic. And for an established pair: garbage nobody could have sealed does not
//! hurt the session: a genuine record from the real peer still opens afterwards, intact.

#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use connectopus_dtls::{
    Accept, ClientConfig, Credentials, DtlsAssociation, DtlsConfig, PskCredentials, PskSuite,
    ServerConfig, State,
};
use libfuzzer_sys::fuzz_target;

const PEER: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4242);

struct Configs {
    client: ClientConfig,
    server: ServerConfig,
}

fn configs(suite: PskSuite, fast_path: bool) -> Configs {
    let mut creds = PskCredentials::new("fuzz", b"0123456789abcdef0123456789abcdef".to_vec());
    creds.suite = suite;
    let mut config = DtlsConfig::new(Credentials::Psk(creds));
    config.fast_path = fast_path;
    Configs {
        client: ClientConfig::new(&config).expect("client config"),
        server: ServerConfig::new(&config).expect("server config"),
    }
}

thread_local! {
    static CONFIGS: [Configs; 4] = [
        configs(PskSuite::DhePskAes128GcmOrEcdhePskChaCha20, true),
        configs(PskSuite::EcdhePskChaCha20Poly1305, true),
        configs(PskSuite::PskAes128GcmNoForwardSecrecy, true),
        configs(PskSuite::EcdhePskChaCha20Poly1305, false),
    ];
    static START: Instant = Instant::now();
}

fn now() -> Duration {
    START.with(Instant::elapsed)
}

/// Splits the input into datagrams, each prefixed by a one-byte length.
fn datagrams(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len).min(rest.len());
        out.push(rest[..len].to_vec());
        data = &rest[len..];
        if out.len() == 16 {
            break;
        }
    }
    out
}

/// Moves the datagrams each side has queued to the other, `steps` times (or until quiet).
fn exchange(c: &mut DtlsAssociation, s: &mut DtlsAssociation, steps: usize) {
    for _ in 0..steps {
        let mut moved = false;
        while let Some(mut d) = c.poll_transmit() {
            moved = true;
            let _ = s.handle_datagram(now(), &mut d);
        }
        while let Some(mut d) = s.poll_transmit() {
            moved = true;
            let _ = c.handle_datagram(now(), &mut d);
        }
        if !moved {
            break;
        }
    }
}

fn feed(a: &mut DtlsAssociation, inputs: &[Vec<u8>]) {
    for d in inputs {
        let mut d = d.clone();
        let _ = a.handle_datagram(now(), &mut d);
        while a.poll_transmit().is_some() {}
        a.handle_timeout(now());
    }
}

fn seal(a: &mut DtlsAssociation, payload: &[u8]) -> Option<Vec<u8>> {
    let off = a.payload_offset()?;
    let mut buf = vec![0u8; payload.len() + a.overhead()?];
    buf[off..off + payload.len()].copy_from_slice(payload);
    let n = a.seal_in_place(&mut buf, payload.len()).ok()?;
    buf.truncate(n);
    Some(buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let inputs = datagrams(rest);
    CONFIGS.with(|configs| {
        let cfg = &configs[usize::from(mode >> 6) % configs.len()];
        match mode % 6 {
            0 => {
                for d in &inputs {
                    if let Ok(Accept::Association(mut a)) =
                        DtlsAssociation::accept(&cfg.server, PEER, now(), d)
                    {
                        feed(&mut a, &inputs);
                    }
                }
            }
            1 => {
                if let Ok(mut c) = DtlsAssociation::client(&cfg.client, now()) {
                    feed(&mut c, &inputs);
                }
            }
            2 => {
                if let Ok(mut s) = DtlsAssociation::server(&cfg.server, PEER, now()) {
                    feed(&mut s, &inputs);
                }
            }
            3 | 4 => {
                // Part-way through a real handshake: 0 to 3 exchanges, then the attacker.
                let (Ok(mut c), Ok(mut s)) = (
                    DtlsAssociation::client(&cfg.client, now()),
                    DtlsAssociation::server(&cfg.server, PEER, now()),
                ) else {
                    return;
                };
                exchange(&mut c, &mut s, usize::from(mode >> 3) % 4);
                feed(if mode % 6 == 3 { &mut c } else { &mut s }, &inputs);
                exchange(&mut c, &mut s, 8);
            }
            _ => {
                let (Ok(mut c), Ok(mut s)) = (
                    DtlsAssociation::client(&cfg.client, now()),
                    DtlsAssociation::server(&cfg.server, PEER, now()),
                ) else {
                    return;
                };
                exchange(&mut c, &mut s, 16);
                if *c.state() != State::Established || *s.state() != State::Established {
                    return;
                }
                let (victim, peer) = if mode & 8 == 0 {
                    (&mut c, &mut s)
                } else {
                    (&mut s, &mut c)
                };
                // The attacker also replays genuine records of the peer, and mixes them in.
                let genuine = seal(peer, b"before").expect("sealing on an established association");
                let mut replays = inputs.clone();
                replays.push(genuine.clone());
                feed(victim, &replays);
                let mut d = seal(peer, b"a genuine record").expect("sealing");
                let received = victim
                    .handle_datagram(now(), &mut d)
                    .expect("garbage must not close an established association");
                let got: Vec<&[u8]> = received.iter().map(|r| &d[r]).collect();
                assert_eq!(got, vec![&b"a genuine record"[..]]);
            }
        }
    });
});
