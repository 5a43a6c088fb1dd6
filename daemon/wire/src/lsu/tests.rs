//! Unit tests of the update's canonical encoding, its extensions and the signed container.

use super::*;
use proptest::prelude::*;

fn ip(last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last))
}

fn ip_bytes(last: u8) -> [u8; 16] {
    ip(last).octets()
}

fn sample() -> LinkStateUpdate {
    LinkStateUpdate {
        origin: ip(1),
        epoch: 0x0102_0304_0506_0708,
        sequence: 9,
        name: "ab".to_owned(),
        config_version: 3,
        adjacencies: vec![
            Adjacency {
                peer: ip(2),
                cost: Cost(1000),
            },
            Adjacency {
                peer: ip(3),
                cost: Cost(0x0102_0304),
            },
        ],
        prefixes: vec![PrefixAdvert {
            prefix: "fd01::/16".parse().unwrap(),
            cost: Cost(5),
        }],
        names: vec![NameBinding {
            name: "w".to_owned(),
            address: ip(4),
        }],
        names4: Vec::new(),
        extensions: Vec::new(),
    }
}

fn sample_bytes() -> Vec<u8> {
    let mut v = vec![0x01]; // version
    v.extend_from_slice(&ip_bytes(1)); // origin
    v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // epoch
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]); // sequence
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]); // config_version
    v.extend_from_slice(&[2, b'a', b'b']); // name
    v.extend_from_slice(&[0, 0, 0, 2]); // n_adjacencies
    v.extend_from_slice(&ip_bytes(2));
    v.extend_from_slice(&[0, 0, 0x03, 0xe8]);
    v.extend_from_slice(&ip_bytes(3));
    v.extend_from_slice(&[1, 2, 3, 4]);
    v.extend_from_slice(&[0, 0, 0, 1]); // n_prefixes
    v.extend_from_slice(&[0xfd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.push(16);
    v.extend_from_slice(&[0, 0, 0, 5]);
    v.extend_from_slice(&[0, 0, 0, 1]); // n_names
    v.extend_from_slice(&[1, b'w']);
    v.extend_from_slice(&ip_bytes(4));
    v
}

/// Offsets of the pieces of [`sample_bytes`], for the error tests.
const NAME_LEN_AT: usize = 41;
const ADJ_COUNT_AT: usize = 44;
const FIRST_ADJ_AT: usize = 48;
const PREFIX_COUNT_AT: usize = FIRST_ADJ_AT + 2 * 20;
const FIRST_PREFIX_AT: usize = PREFIX_COUNT_AT + 4;
const NAME_COUNT_AT: usize = FIRST_PREFIX_AT + 21;

#[test]
fn ipv4_names_make_a_version_2_body_that_extends_version_1() {
    let mut u = sample();
    u.names4 = vec![
        NameBinding4 {
            name: "w".to_owned(),
            address: Ipv4Addr::new(198, 18, 0, 4),
        },
        NameBinding4 {
            name: "x".to_owned(),
            address: Ipv4Addr::new(198, 18, 0, 5),
        },
    ];
    let mut expected = sample_bytes();
    expected[0] = LSU_VERSION_IPV4;
    expected.extend_from_slice(&[0, 0, 0, 2]); // n_names4
    expected.extend_from_slice(&[1, b'w', 198, 18, 0, 4]);
    expected.extend_from_slice(&[1, b'x', 198, 18, 0, 5]);
    assert_eq!(u.encode_body(), expected);
    assert_eq!(LinkStateUpdate::parse_body(&expected), Ok(u));
    // Without IPv4 names the body is version 1, byte for byte as before.
    assert_eq!(sample().encode_body()[0], LSU_VERSION);
    // Version 2 with an empty list, unsorted names and version 1 with a trailer are refused.
    let mut empty = sample_bytes();
    empty[0] = LSU_VERSION_IPV4;
    empty.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        LinkStateUpdate::parse_body(&empty),
        Err(WireError::NotCanonical)
    );
    let mut unsorted = sample_bytes();
    unsorted[0] = LSU_VERSION_IPV4;
    unsorted.extend_from_slice(&[0, 0, 0, 2, 1, b'x', 198, 18, 0, 5, 1, b'w', 198, 18, 0, 4]);
    assert_eq!(
        LinkStateUpdate::parse_body(&unsorted),
        Err(WireError::NotCanonical)
    );
    let mut v1_trailer = expected.clone();
    v1_trailer[0] = LSU_VERSION;
    assert!(LinkStateUpdate::parse_body(&v1_trailer).is_err());
    let mut v4 = expected;
    v4[0] = 4;
    assert_eq!(
        LinkStateUpdate::parse_body(&v4),
        Err(WireError::UnsupportedVersion)
    );
}

#[test]
fn extensions_make_a_version_3_body_that_extends_version_2() {
    let mut u = sample();
    u.extensions = vec![
        LsuExtension {
            kind: LsuExtension::LEASE_CERTIFICATE,
            value: vec![0xaa, 0xbb],
        },
        LsuExtension {
            kind: 0x80,
            value: Vec::new(),
        },
    ];
    let mut expected = sample_bytes();
    expected[0] = LSU_VERSION_EXTENDED;
    expected.extend_from_slice(&[0, 0, 0, 0]); // n_names4 may be 0
    expected.extend_from_slice(&[0, 0, 0, 2]); // n_extensions
    expected.extend_from_slice(&[1, 0, 2, 0xaa, 0xbb]);
    expected.extend_from_slice(&[0x80, 0, 0]);
    assert_eq!(u.encode_body(), expected);
    assert_eq!(LinkStateUpdate::parse_body(&expected), Ok(u.clone()));
    assert_eq!(u.extension(1), Some(&[0xaa, 0xbb][..]));
    assert_eq!(u.extension(2), None);
    assert_eq!(
        u.lease_certificate(),
        Some(Err(WireError::UnsupportedVersion))
    );
    // With IPv4 names too: the names4 list comes first.
    u.names4 = vec![NameBinding4 {
        name: "w".to_owned(),
        address: Ipv4Addr::new(198, 18, 0, 4),
    }];
    let mut with4 = sample_bytes();
    with4[0] = LSU_VERSION_EXTENDED;
    with4.extend_from_slice(&[0, 0, 0, 1, 1, b'w', 198, 18, 0, 4]);
    with4.extend_from_slice(&expected[expected.len() - 12..]);
    assert_eq!(u.encode_body(), with4);
    assert_eq!(LinkStateUpdate::parse_body(&with4), Ok(u));

    let refused = |tail: &[u8]| {
        let mut b = sample_bytes();
        b[0] = LSU_VERSION_EXTENDED;
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(tail);
        LinkStateUpdate::parse_body(&b)
    };
    // An empty extension list must be version 1 or 2.
    assert_eq!(refused(&[0, 0, 0, 0]), Err(WireError::NotCanonical));
    // Kinds out of order, or repeated.
    assert_eq!(
        refused(&[0, 0, 0, 2, 2, 0, 0, 1, 0, 0]),
        Err(WireError::NotCanonical)
    );
    assert_eq!(
        refused(&[0, 0, 0, 2, 1, 0, 0, 1, 0, 0]),
        Err(WireError::NotCanonical)
    );
    // A value cut short, a lying count, trailing bytes, a missing list.
    assert_eq!(
        refused(&[0, 0, 0, 1, 1, 0, 2, 0]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        refused(&[0xff, 0xff, 0xff, 0xff]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        refused(&[0, 0, 0, 1, 1, 0, 0, 9]),
        Err(WireError::TrailingBytes)
    );
    assert_eq!(refused(&[]), Err(WireError::Truncated));
    // A real certificate comes back typed.
    let cert = crate::LeaseCertificate {
        address: ip(1),
        epoch: 0x0102_0304_0506_0708,
        renewal: 0,
        lease_ms: 20_000,
        issuer: ip(9),
        holder_key: [7; 32],
        name: "ab".to_owned(),
        signature: None,
    };
    let mut e = sample();
    e.extensions = vec![LsuExtension {
        kind: LsuExtension::LEASE_CERTIFICATE,
        value: cert.encode(),
    }];
    let parsed = LinkStateUpdate::parse_body(&e.encode_body()).unwrap();
    assert_eq!(parsed.lease_certificate(), Some(Ok(cert)));
    assert_eq!(sample().lease_certificate(), None);
    // Version 2 with an extension list is trailing bytes.
    let mut v2 = expected.clone();
    v2[0] = LSU_VERSION_IPV4;
    assert!(LinkStateUpdate::parse_body(&v2).is_err());
}

#[test]
fn body_layout() {
    let bytes = sample_bytes();
    assert_eq!(bytes[NAME_LEN_AT], 2);
    assert_eq!(bytes[NAME_COUNT_AT + 3], 1);
    assert_eq!(sample().encode_body(), bytes);
    assert_eq!(LinkStateUpdate::parse_body(&bytes), Ok(sample()));
}

#[test]
fn empty_lists() {
    let mut u = sample();
    u.adjacencies.clear();
    u.prefixes.clear();
    u.names.clear();
    let bytes = u.encode_body();
    assert_eq!(bytes.len(), 44 + 12);
    assert_eq!(LinkStateUpdate::parse_body(&bytes), Ok(u));
}

fn parse_modified(f: impl FnOnce(&mut Vec<u8>)) -> Result<LinkStateUpdate, WireError> {
    let mut b = sample_bytes();
    f(&mut b);
    LinkStateUpdate::parse_body(&b)
}

#[test]
fn body_errors() {
    assert_eq!(
        parse_modified(|b| b[0] = 4),
        Err(WireError::UnsupportedVersion)
    );
    assert_eq!(
        parse_modified(|b| b[NAME_LEN_AT + 1] = b'-'),
        Err(WireError::BadName)
    );
    // A name entry with an upper-case letter.
    assert_eq!(
        parse_modified(|b| b[NAME_COUNT_AT + 5] = b'W'),
        Err(WireError::BadName)
    );
    assert_eq!(parse_modified(|b| b.push(0)), Err(WireError::TrailingBytes));
    assert_eq!(
        parse_modified(|b| b.truncate(b.len() - 1)),
        Err(WireError::Truncated)
    );
    assert_eq!(LinkStateUpdate::parse_body(&[]), Err(WireError::Truncated));
    // Prefix with host bits set past its length, and a length above 128.
    assert_eq!(
        parse_modified(|b| b[FIRST_PREFIX_AT + 15] = 1),
        Err(WireError::BadPrefix)
    );
    assert_eq!(
        parse_modified(|b| b[FIRST_PREFIX_AT + 16] = 129),
        Err(WireError::BadPrefix)
    );
}

#[test]
fn lying_counts_do_not_allocate() {
    // Huge counts are rejected before any list is allocated.
    for at in [ADJ_COUNT_AT, PREFIX_COUNT_AT, NAME_COUNT_AT] {
        assert_eq!(
            parse_modified(|b| b[at..at + 4].copy_from_slice(&[0xff; 4])),
            Err(WireError::Truncated)
        );
    }
}

#[test]
fn non_canonical_lists_are_rejected() {
    // Swap the two adjacencies: wrong order.
    let swapped = parse_modified(|b| {
        let (first, second) = b[FIRST_ADJ_AT..FIRST_ADJ_AT + 40].split_at_mut(20);
        first.swap_with_slice(second);
    });
    assert_eq!(swapped, Err(WireError::NotCanonical));
    // Same peer twice.
    let mut u = sample();
    u.adjacencies[1].peer = u.adjacencies[0].peer;
    assert_eq!(
        LinkStateUpdate::parse_body(&u.encode_body()),
        Err(WireError::NotCanonical)
    );
    // Prefixes: same address, shorter length after longer is out of order.
    let mut u = sample();
    u.prefixes = vec![
        PrefixAdvert {
            prefix: "fd01::/32".parse().unwrap(),
            cost: Cost(1),
        },
        PrefixAdvert {
            prefix: "fd01::/16".parse().unwrap(),
            cost: Cost(1),
        },
    ];
    assert_eq!(
        LinkStateUpdate::parse_body(&u.encode_body()),
        Err(WireError::NotCanonical)
    );
    u.prefixes.swap(0, 1);
    assert!(LinkStateUpdate::parse_body(&u.encode_body()).is_ok());
    u.prefixes[1] = u.prefixes[0];
    assert_eq!(
        LinkStateUpdate::parse_body(&u.encode_body()),
        Err(WireError::NotCanonical)
    );
    // Names: "b" before "a", and a duplicate name with different addresses.
    let mut u = sample();
    let binding = |name: &str, last| NameBinding {
        name: name.to_owned(),
        address: ip(last),
    };
    u.names = vec![binding("b", 1), binding("a", 2)];
    assert_eq!(
        LinkStateUpdate::parse_body(&u.encode_body()),
        Err(WireError::NotCanonical)
    );
    u.names = vec![binding("a", 1), binding("a", 2)];
    assert_eq!(
        LinkStateUpdate::parse_body(&u.encode_body()),
        Err(WireError::NotCanonical)
    );
    // Name order is byte order: "a-b" < "a0" < "ab" < "b".
    u.names = vec![
        binding("a-b", 1),
        binding("a0", 1),
        binding("ab", 1),
        binding("b", 1),
    ];
    assert!(LinkStateUpdate::parse_body(&u.encode_body()).is_ok());
}

#[test]
fn canonicalize_sorts_and_keeps_the_first_duplicate() {
    let mut u = sample();
    u.adjacencies = vec![
        Adjacency {
            peer: ip(3),
            cost: Cost(1),
        },
        Adjacency {
            peer: ip(2),
            cost: Cost(2),
        },
        Adjacency {
            peer: ip(3),
            cost: Cost(3),
        },
    ];
    let p16: Prefix = "fd01::/16".parse().unwrap();
    let p8: Prefix = "fd00::/8".parse().unwrap();
    u.prefixes = vec![
        PrefixAdvert {
            prefix: p16,
            cost: Cost(9),
        },
        PrefixAdvert {
            prefix: p8,
            cost: Cost(1),
        },
        PrefixAdvert {
            prefix: p16,
            cost: Cost(1),
        },
    ];
    u.names = vec![
        NameBinding {
            name: "z".to_owned(),
            address: ip(9),
        },
        NameBinding {
            name: "a".to_owned(),
            address: ip(9),
        },
        NameBinding {
            name: "z".to_owned(),
            address: ip(1),
        },
    ];
    assert!(!u.is_canonical());
    u.canonicalize();
    assert!(u.is_canonical());
    assert_eq!(
        u.adjacencies,
        [
            Adjacency {
                peer: ip(2),
                cost: Cost(2)
            },
            Adjacency {
                peer: ip(3),
                cost: Cost(1)
            }
        ]
    );
    assert_eq!(
        u.prefixes,
        [
            PrefixAdvert {
                prefix: p8,
                cost: Cost(1)
            },
            PrefixAdvert {
                prefix: p16,
                cost: Cost(9)
            }
        ]
    );
    assert_eq!(u.names[1].address, ip(9));
    assert_eq!(LinkStateUpdate::parse_body(&u.encode_body()), Ok(u));
}

#[test]
fn signed_update_layout() {
    let body = [0xaa, 0xbb];
    let none = SignedUpdate {
        body: &body,
        signature: None,
    };
    assert_eq!(none.encode(), [0, 0, 0, 2, 0xaa, 0xbb, 0]);
    assert_eq!(SignedUpdate::parse(&none.encode()), Ok(none));

    let sig = UpdateSignature {
        key: [0x11; 32],
        signature: [0x22; 64],
    };
    let signed = SignedUpdate {
        body: &body,
        signature: Some(sig),
    };
    let mut want = vec![0, 0, 0, 2, 0xaa, 0xbb, 1];
    want.extend_from_slice(&[0x11; 32]);
    want.extend_from_slice(&[0x22; 64]);
    assert_eq!(signed.encode(), want);
    assert_eq!(SignedUpdate::parse(&want), Ok(signed));
}

#[test]
fn signed_update_errors() {
    assert_eq!(SignedUpdate::parse(&[]), Err(WireError::Truncated));
    assert_eq!(
        SignedUpdate::parse(&[0, 0, 0, 9, 1, 2]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        SignedUpdate::parse(&[0, 0, 0, 0]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        SignedUpdate::parse(&[0, 0, 0, 0, 2]),
        Err(WireError::BadValue)
    );
    assert_eq!(
        SignedUpdate::parse(&[0, 0, 0, 0, 0, 0]),
        Err(WireError::TrailingBytes)
    );
    let mut short_sig = vec![0, 0, 0, 0, 1];
    short_sig.extend_from_slice(&[0; 95]);
    assert_eq!(SignedUpdate::parse(&short_sig), Err(WireError::Truncated));
    short_sig.extend_from_slice(&[0; 2]);
    assert_eq!(
        SignedUpdate::parse(&short_sig),
        Err(WireError::TrailingBytes)
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn addr() -> impl Strategy<Value = Ipv6Addr> {
    // Few distinct values, so that duplicates and shared prefixes are common.
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        (0u8..8).prop_map(ip),
    ]
}

fn update() -> impl Strategy<Value = LinkStateUpdate> {
    let adjacency = (addr(), any::<u32>()).prop_map(|(peer, c)| Adjacency {
        peer,
        cost: Cost(c),
    });
    let prefix = (addr(), 0u8..=128, any::<u32>()).prop_map(|(a, len, c)| PrefixAdvert {
        prefix: Prefix::new_truncating(a, len).unwrap(),
        cost: Cost(c),
    });
    let binding = (prop_oneof![name(), "[ab]{1,2}"], addr())
        .prop_map(|(name, address)| NameBinding { name, address });
    (
        addr(),
        any::<u64>(),
        any::<u64>(),
        name(),
        any::<u64>(),
        proptest::collection::vec(adjacency, 0..12),
        proptest::collection::vec(prefix, 0..12),
        proptest::collection::vec(binding, 0..12),
        proptest::collection::vec((name(), any::<u32>()), 0..4),
        proptest::collection::vec(
            (0u8..4, proptest::collection::vec(any::<u8>(), 0..40)),
            0..4,
        ),
    )
        .prop_map(
            |(
                origin,
                epoch,
                sequence,
                name,
                config_version,
                adjacencies,
                prefixes,
                names,
                v4,
                ext,
            )| {
                let names4 = v4
                    .into_iter()
                    .map(|(name, a)| NameBinding4 {
                        name,
                        address: Ipv4Addr::from(a),
                    })
                    .collect();
                let mut u = LinkStateUpdate {
                    origin,
                    epoch,
                    sequence,
                    name,
                    config_version,
                    adjacencies,
                    prefixes,
                    names,
                    names4,
                    extensions: ext
                        .into_iter()
                        .map(|(kind, value)| LsuExtension { kind, value })
                        .collect(),
                };
                u.canonicalize();
                u
            },
        )
}

proptest! {
    #[test]
    fn body_round_trips(u in update()) {
        prop_assert!(u.is_canonical());
        let bytes = u.encode_body();
        let parsed = LinkStateUpdate::parse_body(&bytes);
        prop_assert_eq!(parsed.as_ref(), Ok(&u));
        // Canonical: re-encoding gives the same bytes.
        prop_assert_eq!(parsed.unwrap().encode_body(), bytes);
    }

    #[test]
    fn canonicalize_is_idempotent(u in update()) {
        let mut again = u.clone();
        again.canonicalize();
        prop_assert_eq!(again, u);
    }

    #[test]
    fn signed_update_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..200),
        sig in proptest::option::of((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 64))),
    ) {
        let signature = sig.map(|(key, s)| {
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&s);
            UpdateSignature { key, signature }
        });
        let signed = SignedUpdate { body: &body, signature };
        let bytes = signed.encode();
        prop_assert_eq!(SignedUpdate::parse(&bytes), Ok(signed));
    }

    #[test]
    fn signed_update_of_an_update_round_trips(u in update()) {
        let body = u.encode_body();
        let bytes = SignedUpdate { body: &body, signature: None }.encode();
        let signed = SignedUpdate::parse(&bytes).unwrap();
        prop_assert_eq!(LinkStateUpdate::parse_body(signed.body), Ok(u));
    }

    #[test]
    fn parse_body_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(u) = LinkStateUpdate::parse_body(&buf) {
            prop_assert_eq!(u.encode_body(), buf);
        }
    }

    #[test]
    fn mutated_bodies_never_panic(u in update(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut bytes = u.encode_body();
        let i = at.index(bytes.len());
        bytes[i] = v;
        if let Ok(parsed) = LinkStateUpdate::parse_body(&bytes) {
            prop_assert_eq!(parsed.encode_body(), bytes);
        }
    }

    #[test]
    fn signed_parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(s) = SignedUpdate::parse(&buf) {
            prop_assert_eq!(s.encode(), buf);
        }
    }
}
