//! Test helpers: configurations, certificates, and an in-memory datagram pump.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use connectopus_dtls::{
    CertificateCredentials, CertifiedKey, ClientConfig, Credentials, DtlsAssociation, DtlsConfig,
    ExpectedName, PeerVerification, PskCredentials, PskSuite, ServerConfig, State,
};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

pub const PEER: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4242);

/// A real monotonic clock: OpenSSL's DTLS timer runs on the system clock.
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

pub fn fast_timers(mut c: DtlsConfig) -> DtlsConfig {
    c.retransmit_initial = Duration::from_millis(20);
    c.retransmit_max = Duration::from_millis(40);
    c
}

pub fn psk(key: &[u8], suite: PskSuite, fast_path: bool) -> DtlsConfig {
    let mut creds = PskCredentials::new("node-a", key.to_vec());
    creds.suite = suite;
    let mut c = fast_timers(DtlsConfig::new(Credentials::Psk(creds)));
    c.fast_path = fast_path;
    c
}

pub fn cert_config(
    identity: Option<(&X509, &PKey<Private>)>,
    verify: PeerVerification,
    require_client_cert: bool,
    fast_path: bool,
) -> DtlsConfig {
    let creds = CertificateCredentials {
        identity: identity.map(|(c, k)| CertifiedKey {
            certificate: c.clone(),
            chain: Vec::new(),
            private_key: k.clone(),
        }),
        verify,
        require_client_cert,
    };
    let mut c = fast_timers(DtlsConfig::new(Credentials::Certificate(creds)));
    c.fast_path = fast_path;
    c
}

pub fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// Makes a certificate for `cn` with DNS/IP SANs, signed by `issuer` (or self-signed).
pub fn make_cert(
    cn: &str,
    dns: &[&str],
    ips: &[&str],
    is_ca: bool,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> (X509, PKey<Private>) {
    let key = ec_key();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    if is_ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().unwrap())
            .unwrap();
    } else {
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        for ip in ips {
            san.ip(ip);
        }
        if !dns.is_empty() || !ips.is_empty() {
            let ext = san
                .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
    }
    let signer = issuer.map_or(&key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

pub fn ca_verify(ca: &X509, name: Option<ExpectedName>) -> PeerVerification {
    PeerVerification::CaBundle {
        roots: vec![ca.clone()],
        expected_name: name,
    }
}

pub fn new_pair(
    client: &DtlsConfig,
    server: &DtlsConfig,
    clock: &Clock,
) -> (DtlsAssociation, DtlsAssociation) {
    let c = DtlsAssociation::client(&ClientConfig::new(client).unwrap(), clock.now()).unwrap();
    let s =
        DtlsAssociation::server(&ServerConfig::new(server).unwrap(), PEER, clock.now()).unwrap();
    (c, s)
}

/// Direction of a datagram in the pump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ClientToServer,
    ServerToClient,
}

/// Moves datagrams between the two ends, firing timers in real time, until `done` holds,
/// nothing can happen any more, or `limit` passed. `drop_it(dir, n, datagram)` may drop the
/// n-th datagram of a direction. Returns whether `done` held.
pub fn pump(
    c: &mut DtlsAssociation,
    s: &mut DtlsAssociation,
    clock: &Clock,
    mut drop_it: impl FnMut(Dir, usize, &[u8]) -> bool,
    done: impl Fn(&DtlsAssociation, &DtlsAssociation) -> bool,
    limit: Duration,
) -> bool {
    let start = clock.now();
    let (mut n_cs, mut n_sc) = (0, 0);
    loop {
        if done(c, s) {
            return true;
        }
        if clock.now() - start > limit {
            return false;
        }
        let mut moved = false;
        while let Some(mut d) = c.poll_transmit() {
            moved = true;
            n_cs += 1;
            if !drop_it(Dir::ClientToServer, n_cs - 1, &d) {
                let _ = s.handle_datagram(clock.now(), &mut d);
            }
        }
        while let Some(mut d) = s.poll_transmit() {
            moved = true;
            n_sc += 1;
            if !drop_it(Dir::ServerToClient, n_sc - 1, &d) {
                let _ = c.handle_datagram(clock.now(), &mut d);
            }
        }
        if moved {
            continue;
        }
        let next = [c.poll_timeout(), s.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else {
            return done(c, s);
        };
        let now = clock.now();
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
        }
        let now = clock.now();
        c.handle_timeout(now);
        s.handle_timeout(now);
    }
}

pub fn both_established(c: &DtlsAssociation, s: &DtlsAssociation) -> bool {
    *c.state() == State::Established && *s.state() == State::Established
}

pub fn handshake(c: &mut DtlsAssociation, s: &mut DtlsAssociation, clock: &Clock) -> bool {
    pump(
        c,
        s,
        clock,
        |_, _, _| false,
        both_established,
        Duration::from_secs(5),
    )
}

/// Seals `payload` on `from` into a fresh record buffer; returns the record.
pub fn seal(from: &mut DtlsAssociation, payload: &[u8]) -> Vec<u8> {
    let off = from.payload_offset().unwrap();
    let mut buf = vec![0u8; payload.len() + from.overhead().unwrap()];
    buf[off..off + payload.len()].copy_from_slice(payload);
    let n = from.seal_in_place(&mut buf, payload.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

/// Delivers one datagram and returns the application payloads it carried.
pub fn deliver(to: &mut DtlsAssociation, clock: &Clock, mut datagram: Vec<u8>) -> Vec<Vec<u8>> {
    let rec = to.handle_datagram(clock.now(), &mut datagram).unwrap();
    rec.iter().map(|r| datagram[r].to_vec()).collect()
}

/// Sends `payload` from one end to the other and asserts it arrives intact.
pub fn send_ok(
    from: &mut DtlsAssociation,
    to: &mut DtlsAssociation,
    clock: &Clock,
    payload: &[u8],
) {
    let rec = seal(from, payload);
    let got = deliver(to, clock, rec);
    assert_eq!(got.len(), 1, "one record expected");
    assert_eq!(got[0], payload);
}

pub fn payload(len: usize, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect()
}

/// A tiny deterministic xorshift generator for fuzz-style tests.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
