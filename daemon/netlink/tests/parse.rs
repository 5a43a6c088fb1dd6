//! The parsers take whatever bytes arrive: arbitrary input, and valid messages cut or
//! corrupted anywhere, give values or errors, never a panic.

use connectopus_netlink::message::{Reply, attributes, messages};
use connectopus_netlink::{Address, Link, Route, Rule, VethSpec};
use proptest::prelude::*;

fn parse_everything(bytes: &[u8]) {
    for message in messages(bytes) {
        let Ok((header, payload)) = message else {
            continue;
        };
        let _ = Reply::parse(header.flags, payload);
        let _ = Link::parse(payload);
        let _ = Address::parse(payload);
        let _ = Route::parse(payload);
        let _ = Rule::parse(payload);
        for attr in attributes(payload) {
            let Ok((_, data)) = attr else { break };
            for inner in attributes(data) {
                if inner.is_err() {
                    break;
                }
            }
        }
    }
    let _ = Link::parse(bytes);
    let _ = Address::parse(bytes);
    let _ = Route::parse(bytes);
    let _ = Rule::parse(bytes);
    let _ = Reply::parse(0x300, bytes);
}

fn samples() -> Vec<Vec<u8>> {
    let veth = connectopus_netlink::link::veth_request(&VethSpec {
        name: "cx1a2b3c4d",
        peer: "eth0",
        mtu: Some(1400),
        peer_netns: Some(3),
    });
    let address = connectopus_netlink::address::add_request(
        7,
        "fd00:cafe::7"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into()),
        128,
        2,
    );
    let route = Route::host("198.18.0.1".parse().unwrap_or([0u8; 4].into()), 3)
        .with_gateway([198, 18, 0, 2].into())
        .add_request();
    let rule = Rule::from_source(
        "2001:db8:100::"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into()),
        56,
        4242,
    )
    .with_priority(900)
    .add_request();
    vec![
        veth.finish(1),
        address.finish(2),
        route.finish(3),
        rule.finish(4),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&bytes);
    }

    #[test]
    fn corrupted_messages_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = samples().swap_remove(which);
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let keep = cut % (bytes.len() + 1);
        bytes.truncate(keep);
        parse_everything(&bytes);
    }
}
