//! Exact bytes, round trips and refusals of the lease messages and certificate.

use super::*;
use proptest::prelude::*;

fn ip(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xcafe, 0xe1, 0, 0, 0, 0, last)
}

fn cert() -> LeaseCertificate {
    LeaseCertificate {
        address: ip(7),
        epoch: 0x0102_0304_0506_0708,
        renewal: 2,
        lease_ms: 120_000,
        issuer: Ipv6Addr::new(0xfd00, 0xcafe, 0, 0, 0, 0, 0, 1),
        holder_key: [0x11; 32],
        name: "job-1".to_owned(),
        signature: Some([0x22; 64]),
    }
}

fn cert_bytes() -> Vec<u8> {
    let mut v = vec![1]; // version
    v.extend_from_slice(&ip(7).octets());
    v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // epoch
    v.extend_from_slice(&[0, 0, 0, 2]); // renewal
    v.extend_from_slice(&[0, 1, 0xd4, 0xc0]); // lease_ms = 120000
    v.extend_from_slice(&[0xfd, 0, 0xca, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.extend_from_slice(&[0x11; 32]);
    v.extend_from_slice(&[5, b'j', b'o', b'b', b'-', b'1']);
    v.push(1); // sig_kind
    v.extend_from_slice(&[0x22; 64]);
    v
}

#[test]
fn certificate_layout() {
    let bytes = cert_bytes();
    assert_eq!(bytes.len(), 83 + 5 + 64);
    assert_eq!(cert().encode(), bytes);
    assert_eq!(LeaseCertificate::parse(&bytes), Ok(cert()));
    // The signature covers the label and bytes [0, 82 + N).
    let mut signed = b"connectopus-lease-v1\0".to_vec();
    signed.extend_from_slice(&bytes[..82 + 5]);
    assert_eq!(cert().signed_message(), signed);
    // Unsigned (a mesh without identities).
    let unsigned = LeaseCertificate {
        signature: None,
        ..cert()
    };
    let mut want = bytes[..82 + 5].to_vec();
    want.push(0);
    assert_eq!(unsigned.encode(), want);
    assert_eq!(LeaseCertificate::parse(&want), Ok(unsigned));
}

#[test]
fn certificate_refusals() {
    let modified = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = cert_bytes();
        f(&mut b);
        LeaseCertificate::parse(&b)
    };
    assert_eq!(modified(&|b| b[0] = 2), Err(WireError::UnsupportedVersion));
    assert_eq!(modified(&|b| b[82] = b'J'), Err(WireError::BadName));
    assert_eq!(modified(&|b| b[87] = 2), Err(WireError::BadValue));
    assert_eq!(modified(&|b| b.push(0)), Err(WireError::TrailingBytes));
    assert_eq!(modified(&|b| b.truncate(100)), Err(WireError::Truncated));
    // Unsigned with a signature after it is not canonical: trailing bytes.
    assert_eq!(modified(&|b| b[87] = 0), Err(WireError::TrailingBytes));
    assert_eq!(LeaseCertificate::parse(&[]), Err(WireError::Truncated));
}

#[test]
fn message_layouts() {
    let xid = [0, 0, 0, 0, 0, 0, 0x12, 0x34];
    let join = LeaseMessage {
        xid: 0x1234,
        body: LeaseBody::Join {
            hint: Ipv6Addr::UNSPECIFIED,
            name: "a".to_owned(),
            proof: None,
        },
    };
    let mut want = vec![1];
    want.extend_from_slice(&xid);
    want.push(0);
    want.extend_from_slice(&[0; 16]);
    want.extend_from_slice(&[1, b'a']);
    assert_eq!(join.encode(), want);
    assert_eq!(LeaseMessage::parse(&want), Ok(join));

    let proof = JoinProof {
        join_key: [3; 32],
        signature: [4; 64],
    };
    let join = LeaseMessage {
        xid: 0x1234,
        body: LeaseBody::Join {
            hint: ip(9),
            name: "a".to_owned(),
            proof: Some(proof),
        },
    };
    let mut want = vec![1];
    want.extend_from_slice(&xid);
    want.push(1);
    want.extend_from_slice(&ip(9).octets());
    want.extend_from_slice(&[1, b'a']);
    want.extend_from_slice(&[3; 32]);
    want.extend_from_slice(&[4; 64]);
    assert_eq!(join.encode(), want);
    assert_eq!(LeaseMessage::parse(&want), Ok(join));

    for (msg, body) in [
        (
            2,
            LeaseBody::Grant {
                t1_ms: 60_000,
                cert: cert(),
            },
        ),
        (
            4,
            LeaseBody::Renewed {
                t1_ms: 60_000,
                cert: cert(),
            },
        ),
    ] {
        let m = LeaseMessage { xid: 0x1234, body };
        let mut want = vec![msg];
        want.extend_from_slice(&xid);
        want.extend_from_slice(&[0, 0, 0xea, 0x60]);
        want.extend_from_slice(&(cert_bytes().len() as u16).to_be_bytes());
        want.extend_from_slice(&cert_bytes());
        assert_eq!(m.encode(), want);
        assert_eq!(LeaseMessage::parse(&want), Ok(m));
    }

    let renew = LeaseMessage {
        xid: 0x1234,
        body: LeaseBody::Renew {
            cert: cert(),
            holder_sig: [5; 64],
        },
    };
    let mut want = vec![3];
    want.extend_from_slice(&xid);
    want.extend_from_slice(&(cert_bytes().len() as u16).to_be_bytes());
    want.extend_from_slice(&cert_bytes());
    want.extend_from_slice(&[5; 64]);
    assert_eq!(renew.encode(), want);
    assert_eq!(LeaseMessage::parse(&want), Ok(renew));

    let release = LeaseMessage {
        xid: 0x1234,
        body: LeaseBody::Release {
            address: ip(7),
            epoch: 9,
            holder_sig: [6; 64],
        },
    };
    let mut want = vec![5];
    want.extend_from_slice(&xid);
    want.extend_from_slice(&ip(7).octets());
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
    want.extend_from_slice(&[6; 64]);
    assert_eq!(release.encode(), want);
    assert_eq!(LeaseMessage::parse(&want), Ok(release));

    let refuse = LeaseMessage {
        xid: 0x1234,
        body: LeaseBody::Refuse {
            code: RefuseCode::PoolExhausted,
            retry_after_ms: 2000,
            text: "full".to_owned(),
        },
    };
    let mut want = vec![6];
    want.extend_from_slice(&xid);
    want.extend_from_slice(&[4, 0, 0, 0x07, 0xd0, 4]);
    want.extend_from_slice(b"full");
    assert_eq!(refuse.encode(), want);
    assert_eq!(LeaseMessage::parse(&want), Ok(refuse));
}

#[test]
fn message_refusals() {
    let grant = LeaseMessage {
        xid: 1,
        body: LeaseBody::Grant {
            t1_ms: 1,
            cert: cert(),
        },
    }
    .encode();
    // cert_len one too long and one too short.
    let mut long = grant.clone();
    long[14] += 1;
    long.push(0);
    assert_eq!(LeaseMessage::parse(&long), Err(WireError::BadLength));
    let mut short = grant.clone();
    short[14] -= 1;
    assert_eq!(LeaseMessage::parse(&short), Err(WireError::BadLength));
    let mut trailing = grant.clone();
    trailing.push(0);
    assert_eq!(
        LeaseMessage::parse(&trailing),
        Err(WireError::TrailingBytes)
    );
    assert_eq!(
        LeaseMessage::parse(&grant[..grant.len() - 1]),
        Err(WireError::Truncated)
    );
    // Unknown msg values, unknown join flags, a bad Refuse text.
    for msg in [0, 7, 0xff] {
        let mut b = grant.clone();
        b[0] = msg;
        assert_eq!(LeaseMessage::parse(&b), Err(WireError::UnknownType));
    }
    let mut join = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 2];
    join.extend_from_slice(&[0; 16]);
    join.extend_from_slice(&[1, b'a']);
    assert_eq!(LeaseMessage::parse(&join), Err(WireError::BadValue));
    join[9] = 0;
    assert!(LeaseMessage::parse(&join).is_ok());
    join[27] = b'_';
    assert_eq!(LeaseMessage::parse(&join), Err(WireError::BadName));
    let refuse = [6, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0xff];
    assert_eq!(LeaseMessage::parse(&refuse), Err(WireError::BadValue));
    assert_eq!(
        LeaseMessage::parse(&[0; MAX_LEASE_MESSAGE_LEN + 1]),
        Err(WireError::BadLength)
    );
    assert_eq!(LeaseMessage::parse(&[]), Err(WireError::Truncated));
}

#[test]
fn refuse_codes_and_texts() {
    for v in 0..=u8::MAX {
        assert_eq!(RefuseCode::from_u8(v).to_u8(), v);
    }
    assert_eq!(RefuseCode::from_u8(7).as_str(), "busy");
    assert_eq!(RefuseCode::from_u8(0), RefuseCode::Other(0));
    // Text over 255 bytes is cut at a character boundary.
    let m = LeaseMessage {
        xid: 1,
        body: LeaseBody::Refuse {
            code: RefuseCode::Busy,
            retry_after_ms: 0,
            text: "é".repeat(200),
        },
    };
    let LeaseBody::Refuse { text, .. } = LeaseMessage::parse(&m.encode()).unwrap().body else {
        panic!("not a refuse");
    };
    assert_eq!(text, "é".repeat(127));
}

#[test]
fn signed_messages_have_their_labels() {
    let m = join_proof_message(&[1; 32], &[2; 32], 3, "ab");
    let mut want = b"connectopus-join-v1\0".to_vec();
    want.extend_from_slice(&[1; 32]);
    want.extend_from_slice(&[2; 32]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 2, b'a', b'b']);
    assert_eq!(m, want);
    let m = renew_message(3, &cert());
    assert_eq!(&m[..21], b"connectopus-renew-v1\0");
    assert_eq!(&m[21..29], &[0, 0, 0, 0, 0, 0, 0, 3]);
    assert_eq!(&m[29..], &cert_bytes()[..]);
    let m = release_message(3, ip(7), 9);
    assert_eq!(&m[..23], b"connectopus-release-v1\0");
    assert_eq!(m.len(), 23 + 8 + 16 + 8);
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn certificate() -> impl Strategy<Value = LeaseCertificate> {
    (
        any::<u128>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u128>(),
        any::<[u8; 32]>(),
        name(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 64)),
    )
        .prop_map(
            |(address, epoch, renewal, lease_ms, issuer, holder_key, name, sig)| LeaseCertificate {
                address: Ipv6Addr::from(address),
                epoch,
                renewal,
                lease_ms,
                issuer: Ipv6Addr::from(issuer),
                holder_key,
                name,
                signature: sig.map(|s| {
                    let mut out = [0u8; 64];
                    out.copy_from_slice(&s);
                    out
                }),
            },
        )
}

fn sig() -> impl Strategy<Value = [u8; 64]> {
    proptest::collection::vec(any::<u8>(), 64).prop_map(|s| {
        let mut out = [0u8; 64];
        out.copy_from_slice(&s);
        out
    })
}

fn message() -> impl Strategy<Value = LeaseMessage> {
    let body = prop_oneof![
        (
            any::<u128>(),
            name(),
            proptest::option::of((any::<[u8; 32]>(), sig()))
        )
            .prop_map(|(hint, name, proof)| LeaseBody::Join {
                hint: Ipv6Addr::from(hint),
                name,
                proof: proof.map(|(join_key, signature)| JoinProof {
                    join_key,
                    signature
                }),
            }),
        (any::<u32>(), certificate()).prop_map(|(t1_ms, cert)| LeaseBody::Grant { t1_ms, cert }),
        (certificate(), sig()).prop_map(|(cert, holder_sig)| LeaseBody::Renew { cert, holder_sig }),
        (any::<u32>(), certificate()).prop_map(|(t1_ms, cert)| LeaseBody::Renewed { t1_ms, cert }),
        (any::<u128>(), any::<u64>(), sig()).prop_map(|(a, epoch, holder_sig)| {
            LeaseBody::Release {
                address: Ipv6Addr::from(a),
                epoch,
                holder_sig,
            }
        }),
        (any::<u8>(), any::<u32>(), "\\PC{0,60}").prop_map(|(c, retry_after_ms, text)| {
            LeaseBody::Refuse {
                code: RefuseCode::from_u8(c),
                retry_after_ms,
                text,
            }
        }),
    ];
    (any::<u64>(), body).prop_map(|(xid, body)| LeaseMessage { xid, body })
}

proptest! {
    #[test]
    fn certificates_round_trip(c in certificate()) {
        let bytes = c.encode();
        prop_assert_eq!(LeaseCertificate::parse(&bytes), Ok(c));
    }

    #[test]
    fn messages_round_trip(m in message()) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_LEASE_MESSAGE_LEN);
        prop_assert_eq!(LeaseMessage::parse(&bytes), Ok(m));
    }

    #[test]
    fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = LeaseMessage::parse(&buf) {
            prop_assert_eq!(m.encode(), buf.clone());
        }
        if let Ok(c) = LeaseCertificate::parse(&buf) {
            prop_assert_eq!(c.encode(), buf);
        }
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut bytes = m.encode();
        let i = at.index(bytes.len());
        bytes[i] = v;
        if let Ok(parsed) = LeaseMessage::parse(&bytes) {
            prop_assert_eq!(parsed.encode(), bytes);
        }
    }
}
