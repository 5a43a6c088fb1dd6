//! Exact bytes, round trips and refusals of the link messages.

use super::*;
use proptest::prelude::*;

const A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
const B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];

fn sample_hello() -> Hello {
    Hello {
        capabilities: 0x0102_0304,
        session_id: 0x1112_1314_1516_1718,
        echo_session_id: 0x2122_2324_2526_2728,
        epoch: 0x3132_3334_3536_3738,
        address: Ipv6Addr::from(A),
        name: "ab".to_owned(),
        extensions: vec![HelloExtension {
            kind: 7,
            value: vec![0xaa, 0xbb],
        }],
    }
}

fn sample_hello_bytes() -> Vec<u8> {
    let mut v = vec![
        0x01, // type
        0x02, // version
        0x00, 0x00, // flags
        0x01, 0x02, 0x03, 0x04, // capabilities
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // session_id
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // echo_session_id
        0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, // epoch
    ];
    v.extend_from_slice(&A); // address
    v.extend_from_slice(&[2, b'a', b'b']); // name
    v.extend_from_slice(&[7, 0x00, 0x02, 0xaa, 0xbb]); // extension
    v
}

#[test]
fn hello_layout() {
    let bytes = sample_hello_bytes();
    assert_eq!(bytes[48], 2, "name length sits at offset 48");
    assert_eq!(sample_hello().encode(), bytes);
    assert_eq!(
        LinkMessage::parse(&bytes),
        Ok(LinkMessage::Hello(sample_hello()))
    );
}

#[test]
fn hello_ignores_flags_and_keeps_unknown_extensions_in_order() {
    let mut bytes = sample_hello_bytes();
    bytes[2] = 0xff;
    bytes[3] = 0x01;
    bytes.extend_from_slice(&[HelloExtension::NODE_KEY, 0, 0, 200, 0, 1, 9]);
    let Ok(LinkMessage::Hello(hello)) = LinkMessage::parse(&bytes) else {
        panic!("hello did not parse");
    };
    let kinds: Vec<u8> = hello.extensions.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [7, HelloExtension::NODE_KEY, 200]);
    assert_eq!(hello.extensions[2].value, [9]);
}

#[test]
fn hello_errors() {
    let good = sample_hello_bytes();
    let parse = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        LinkMessage::parse(&b).map(|_| ())
    };
    assert_eq!(parse(&|_| ()), Ok(()));
    assert_eq!(
        parse(&|b| b[1] = 1),
        Err(WireError::UnsupportedVersion),
        "version 1"
    );
    assert_eq!(parse(&|b| b[1] = 0), Err(WireError::UnsupportedVersion));
    assert_eq!(
        parse(&|b| b[8..16].fill(0)),
        Err(WireError::BadValue),
        "zero session id"
    );
    assert_eq!(parse(&|b| b[49] = b'A'), Err(WireError::BadName));
    assert_eq!(parse(&|b| b[49] = 0xff), Err(WireError::BadName));
    assert_eq!(parse(&|b| b[48] = 0), Err(WireError::BadName));
    // Truncated inside the fixed part, the name, and an extension header and value.
    for cut in [1, 2, 30, 48, 49, 50, 52, 53, 54] {
        assert_eq!(
            LinkMessage::parse(&good[..cut]),
            Err(WireError::Truncated),
            "cut at {cut}"
        );
    }
    // Zero-length extension values are fine.
    assert!(parse(&|b| b.extend_from_slice(&[9, 0, 0])).is_ok());
    // An extension that claims more than is left.
    assert_eq!(
        parse(&|b| b.extend_from_slice(&[9, 0, 5, 1])),
        Err(WireError::Truncated)
    );
}

#[test]
fn keepalive_layout() {
    let ka = Keepalive {
        nonce: 0x0102_0304_0506_0708,
    };
    let probe = [0x02, 1, 2, 3, 4, 5, 6, 7, 8];
    let reply = [0x03, 1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(ka.encode_probe(), probe);
    assert_eq!(ka.encode_reply(), reply);
    assert_eq!(LinkMessage::parse(&probe), Ok(LinkMessage::Keepalive(ka)));
    assert_eq!(
        LinkMessage::parse(&reply),
        Ok(LinkMessage::KeepaliveReply(ka))
    );
    assert_eq!(
        LinkMessage::parse(&[0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        Err(WireError::TrailingBytes)
    );
    assert_eq!(
        LinkMessage::parse(&[0x03, 1, 2, 3, 4, 5, 6, 7]),
        Err(WireError::Truncated)
    );
}

#[test]
fn segment_layout() {
    let seg = StreamSegment {
        conn: 0x0405_0607,
        seq: 0x0809_0a0b,
        ack: 0x0c0d_0e0f,
        sack: 0x1011_1213,
        window: 0x0203,
        payload: b"xy",
    };
    let bytes = [
        0x04, 0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, b'x', b'y',
    ];
    assert_eq!(seg.encode(), bytes);
    assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Segment(seg)));
    // Header only: an empty payload (pure acknowledgement).
    let ack_only = &bytes[..StreamSegment::HEADER_LEN];
    let Ok(LinkMessage::Segment(parsed)) = LinkMessage::parse(ack_only) else {
        panic!("ack-only segment did not parse");
    };
    assert!(parsed.payload.is_empty());
    // Reserved flags are ignored on parse.
    let mut flagged = bytes;
    flagged[1] = 0x80;
    assert_eq!(LinkMessage::parse(&flagged), Ok(LinkMessage::Segment(seg)));
    assert_eq!(
        LinkMessage::parse(&bytes[..StreamSegment::HEADER_LEN - 1]),
        Err(WireError::Truncated)
    );
}

#[test]
fn control_datagram_layout() {
    let dg = ControlDatagram {
        hop_limit: 64,
        src: Ipv6Addr::from(A),
        src_port: 0x0102,
        dst: Ipv6Addr::from(B),
        dst_port: 0x0304,
        payload: b"z",
    };
    let mut bytes = vec![0x05, 64];
    bytes.extend_from_slice(&A);
    bytes.extend_from_slice(&[0x01, 0x02]);
    bytes.extend_from_slice(&B);
    bytes.extend_from_slice(&[0x03, 0x04]);
    assert_eq!(bytes.len(), ControlDatagram::HEADER_LEN);
    bytes.push(b'z');
    assert_eq!(dg.encode(), bytes);
    assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Control(dg)));
    assert_eq!(
        LinkMessage::parse(&bytes[..ControlDatagram::HEADER_LEN - 1]),
        Err(WireError::Truncated)
    );
}

#[test]
fn goodbye_layout() {
    let bye = Goodbye {
        reason: GoodbyeReason::Replaced,
    };
    assert_eq!(bye.encode(), [0x06, 0x02]);
    assert_eq!(
        LinkMessage::parse(&[0x06, 0x02]),
        Ok(LinkMessage::Goodbye(bye))
    );
    assert_eq!(
        LinkMessage::parse(&[0x06, 0x63]),
        Ok(LinkMessage::Goodbye(Goodbye {
            reason: GoodbyeReason::Other(0x63)
        }))
    );
    assert_eq!(
        LinkMessage::parse(&[0x06, 0x01, 0x00]),
        Err(WireError::TrailingBytes)
    );
    assert_eq!(LinkMessage::parse(&[0x06]), Err(WireError::Truncated));
}

#[test]
fn demultiplexing() {
    assert_eq!(LinkMessage::parse(&[]), Err(WireError::Truncated));
    // Any first byte 0x60..=0x6f is IPv6, whatever follows; nothing else is checked.
    for first in 0x60..=0x6f {
        let buf = [first, 0xff];
        assert!(is_ipv6(&buf));
        assert_eq!(LinkMessage::parse(&buf), Ok(LinkMessage::Ipv6(&buf)));
    }
    assert_eq!(LinkMessage::parse(&[0x60]), Ok(LinkMessage::Ipv6(&[0x60])));
    // Any first byte 0x40..=0x4f is IPv4.
    for first in 0x40..=0x4f {
        let buf = [first, 0xff];
        assert!(is_ipv4(&buf) && is_ip_packet(&buf) && !is_ipv6(&buf));
        assert_eq!(LinkMessage::parse(&buf), Ok(LinkMessage::Ipv4(&buf)));
    }
    for first in [0x00, 0x07, 0x3f, 0x5f, 0x70, 0xff] {
        assert!(!is_ipv6(&[first]) && !is_ip_packet(&[first]));
        assert_eq!(LinkMessage::parse(&[first]), Err(WireError::UnknownType));
    }
    assert!(!is_ipv6(&[]));
}

#[test]
fn message_type_values_round_trip() {
    for v in 0..=u8::MAX {
        if let Some(t) = MessageType::from_u8(v) {
            assert_eq!(t as u8, v);
        }
    }
    assert_eq!(MessageType::from_u8(0), None);
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn addr() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u32>(),
        1..=u64::MAX,
        any::<u64>(),
        any::<u64>(),
        addr(),
        name(),
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(kind, value)| HelloExtension { kind, value }),
            0..4,
        ),
    )
        .prop_map(
            |(capabilities, session_id, echo_session_id, epoch, address, name, extensions)| Hello {
                capabilities,
                session_id,
                echo_session_id,
                epoch,
                address,
                name,
                extensions,
            },
        )
}

fn reason() -> impl Strategy<Value = GoodbyeReason> {
    any::<u8>().prop_map(GoodbyeReason::from_u8)
}

proptest! {
    #[test]
    fn hello_round_trips(h in hello()) {
        let bytes = h.encode();
        prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Hello(h)));
    }

    #[test]
    fn keepalive_round_trips(nonce in any::<u64>()) {
        let ka = Keepalive { nonce };
        let (probe, reply) = (ka.encode_probe(), ka.encode_reply());
        prop_assert_eq!(LinkMessage::parse(&probe), Ok(LinkMessage::Keepalive(ka)));
        prop_assert_eq!(LinkMessage::parse(&reply), Ok(LinkMessage::KeepaliveReply(ka)));
    }

    #[test]
    fn segment_round_trips(
        conn in any::<u32>(),
        seq in any::<u32>(),
        ack in any::<u32>(),
        sack in any::<u32>(),
        window in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let seg = StreamSegment { conn, seq, ack, sack, window, payload: &payload };
        let bytes = seg.encode();
        prop_assert_eq!(bytes.len(), StreamSegment::HEADER_LEN + payload.len());
        prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Segment(seg)));
    }

    #[test]
    fn control_round_trips(
        hop_limit in any::<u8>(),
        src in addr(),
        src_port in any::<u16>(),
        dst in addr(),
        dst_port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let dg = ControlDatagram { hop_limit, src, src_port, dst, dst_port, payload: &payload };
        let bytes = dg.encode();
        prop_assert_eq!(bytes.len(), ControlDatagram::HEADER_LEN + payload.len());
        prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Control(dg)));
    }

    #[test]
    fn goodbye_round_trips(reason in reason()) {
        let bye = Goodbye { reason };
        let bytes = bye.encode();
        prop_assert_eq!(reason.to_u8(), bytes[1]);
        prop_assert_eq!(LinkMessage::parse(&bytes), Ok(LinkMessage::Goodbye(bye)));
    }

    #[test]
    fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(msg) = LinkMessage::parse(&buf) {
            let again = msg.encode();
            prop_assert_eq!(LinkMessage::parse(&again), Ok(msg));
        }
    }

    #[test]
    fn parse_never_panics_on_typed_input(
        ty in 0u8..8,
        rest in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut buf = vec![ty];
        buf.extend_from_slice(&rest);
        let _ = LinkMessage::parse(&buf);
    }

    #[test]
    fn truncated_hello_never_parses(h in hello(), cut in 0usize..400) {
        let bytes = h.encode();
        // Every cut inside the fixed part and name is reported as truncated.
        let fixed = Hello::FIXED_LEN + h.name.len();
        let cut = cut % fixed;
        prop_assert_eq!(LinkMessage::parse(&bytes[..cut]).err(), Some(WireError::Truncated));
    }
}
