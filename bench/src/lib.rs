//! Shared helpers for the Connectopus benchmarks.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use connectopus_dtls::{
    ClientConfig, Credentials, DtlsAssociation, DtlsConfig, PskCredentials, PskSuite, ServerConfig,
    State,
};

/// The address the benchmarks' server associations take their client to be.
pub const PEER: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4242);

/// Runs an in-memory handshake between a client and a server association of `suite`, with
/// the record fast path on or off, and returns them established.
///
/// # Panics
///
/// When the handshake does not complete, or the fast path is not in the state asked for (a
/// benchmark of the wrong path would mislead).
#[allow(clippy::expect_used)]
pub fn dtls_pair(suite: PskSuite, fast_path: bool) -> (DtlsAssociation, DtlsAssociation) {
    let mut creds = PskCredentials::new("bench", b"benchmark pre-shared key 0123456".to_vec());
    creds.suite = suite;
    let mut cfg = DtlsConfig::new(Credentials::Psk(creds));
    cfg.fast_path = fast_path;
    let now = Duration::ZERO;
    let client_cfg = ClientConfig::new(&cfg).expect("client config");
    let server_cfg = ServerConfig::new(&cfg).expect("server config");
    let mut c = DtlsAssociation::client(&client_cfg, now).expect("client");
    let mut s = DtlsAssociation::server(&server_cfg, PEER, now).expect("server");
    for _ in 0..100 {
        if *c.state() == State::Established && *s.state() == State::Established {
            break;
        }
        while let Some(mut d) = c.poll_transmit() {
            let _ = s.handle_datagram(now, &mut d);
        }
        while let Some(mut d) = s.poll_transmit() {
            let _ = c.handle_datagram(now, &mut d);
        }
    }
    assert_eq!(*c.state(), State::Established, "handshake failed");
    assert_eq!(
        c.fast_path_active(),
        fast_path,
        "the record fast path is not as asked"
    );
    (c, s)
}
