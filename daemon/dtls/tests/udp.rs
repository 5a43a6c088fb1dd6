//! One handshake and traffic over real UDP sockets on [::1], with the stateless cookie path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use connectopus_dtls::{Accept, ClientConfig, DtlsAssociation, PskSuite, ServerConfig, State};

#[test]
fn psk_over_udp_loopback() {
    let clock = Clock::new();
    let mut cfg = psk(
        b"udp test key 0123456789",
        PskSuite::EcdhePskChaCha20Poly1305,
        true,
    );
    cfg.retransmit_initial = Duration::from_millis(200);
    cfg.retransmit_max = Duration::from_millis(400);
    let server_sock = UdpSocket::bind("[::1]:0").unwrap();
    let client_sock = UdpSocket::bind("[::1]:0").unwrap();
    client_sock
        .connect(server_sock.local_addr().unwrap())
        .unwrap();
    for s in [&server_sock, &client_sock] {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    }
    let server_cfg = ServerConfig::new(&cfg).unwrap();
    let mut client =
        DtlsAssociation::client(&ClientConfig::new(&cfg).unwrap(), clock.now()).unwrap();
    let mut server: Option<Box<DtlsAssociation>> = None;
    let mut hello_verify_requests = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Duration::from_secs(5);
    let mut received_by_server = Vec::new();
    let mut received_by_client = Vec::new();
    let mut sent = false;
    while clock.now() < deadline && (received_by_client.len() < 10 || received_by_server.len() < 10)
    {
        while let Some(d) = client.poll_transmit() {
            client_sock.send(&d).unwrap();
        }
        if let Some(s) = server.as_mut() {
            while let Some(d) = s.poll_transmit() {
                let peer = client_sock.local_addr().unwrap();
                server_sock.send_to(&d, peer).unwrap();
            }
        }
        if let Ok((n, from)) = server_sock.recv_from(&mut buf) {
            match server.as_mut() {
                None => match DtlsAssociation::accept(&server_cfg, from, clock.now(), &buf[..n])
                    .unwrap()
                {
                    Accept::HelloVerifyRequest(hvr) => {
                        hello_verify_requests += 1;
                        server_sock.send_to(&hvr, from).unwrap();
                    }
                    Accept::Association(a) => server = Some(a),
                    Accept::Ignored => {}
                },
                Some(s) => {
                    let got = s.handle_datagram(clock.now(), &mut buf[..n]).unwrap();
                    received_by_server.extend(got.iter().map(|r| buf[r].to_vec()));
                }
            }
        }
        if let Ok(n) = client_sock.recv(&mut buf) {
            let got = client.handle_datagram(clock.now(), &mut buf[..n]).unwrap();
            received_by_client.extend(got.iter().map(|r| buf[r].to_vec()));
        }
        client.handle_timeout(clock.now());
        if let Some(s) = server.as_mut() {
            s.handle_timeout(clock.now());
            if !sent && *client.state() == State::Established && *s.state() == State::Established {
                sent = true;
                for i in 0..10u8 {
                    client_sock
                        .send(&seal(&mut client, &payload(1400, i)))
                        .unwrap();
                    let d = seal(s, &payload(700, i));
                    server_sock
                        .send_to(&d, client_sock.local_addr().unwrap())
                        .unwrap();
                }
            }
        }
    }
    // One per ClientHello without a cookie (more if the client's timer fired meanwhile).
    assert!(hello_verify_requests >= 1);
    let server = server.expect("no association was created");
    assert_eq!(server.cipher_name(), Some("ECDHE-PSK-CHACHA20-POLY1305"));
    assert!(server.fast_path_active() && client.fast_path_active());
    // Loopback UDP does not lose these few datagrams in practice; accept order as it came.
    assert_eq!(received_by_server.len(), 10);
    assert_eq!(received_by_client.len(), 10);
    for i in 0..10u8 {
        assert!(received_by_server.contains(&payload(1400, i)));
        assert!(received_by_client.contains(&payload(700, i)));
    }
}
