//! Unit tests of the answer logic, without sockets.

use std::net::Ipv6Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::answer::{Transport, respond};
use crate::config::{ZoneConfig, ZoneSpec};
use crate::table::NameTable;

fn table() -> NameTable {
    let config = ZoneConfig::new(
        "connectopus.test",
        "fd00::".parse().unwrap(),
        64,
        "node1",
        "fd00::1".parse().unwrap(),
    );
    let t = NameTable::new(ZoneSpec::new(&config).unwrap());
    t.update([
        ("bar", ip("fd00::2")),
        ("Foo-Tun", ip("fd00::3")),
        ("multi", ip("fd00::4")),
        ("multi", ip("fd00::5")),
        ("a.b", ip("fd00::6")),
    ]);
    t
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn query_msg(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn ask_msg(t: &NameTable, m: &Message, transport: Transport) -> Message {
    let (bytes, _) = respond(&t.snapshot(), &m.to_vec().unwrap(), transport).expect("a response");
    Message::from_vec(&bytes).unwrap()
}

fn ask(t: &NameTable, name: &str, qtype: RecordType) -> Message {
    ask_msg(t, &query_msg(name, qtype), Transport::Udp)
}

fn aaaa(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn soa_serial(m: &Message) -> Option<u32> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

#[test]
fn aaaa_is_authoritative_case_insensitive_short_ttl() {
    let t = table();
    for name in ["bar.connectopus.test.", "BaR.CONNECTOPUS.test."] {
        let r = ask(&t, name, RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert!(!r.metadata.recursion_available);
        assert!(r.metadata.recursion_desired, "RD is copied");
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(aaaa(&r), [ip("fd00::2")]);
        assert_eq!(r.answers[0].ttl, 10);
        assert_eq!(
            r.queries[0].name().to_ascii(),
            name,
            "question echoed as asked"
        );
    }
    assert_eq!(
        aaaa(&ask(&t, "foo-tun.connectopus.test.", RecordType::AAAA)),
        [ip("fd00::3")]
    );
    assert_eq!(
        aaaa(&ask(&t, "multi.connectopus.test.", RecordType::AAAA)),
        [ip("fd00::4"), ip("fd00::5")]
    );
    assert_eq!(
        aaaa(&ask(&t, "a.b.connectopus.test.", RecordType::AAAA)),
        [ip("fd00::6")]
    );
    // The node's own name is always there.
    assert_eq!(
        aaaa(&ask(&t, "node1.connectopus.test.", RecordType::AAAA)),
        [ip("fd00::1")]
    );
}

#[test]
fn ptr_for_mesh_addresses() {
    let t = table();
    let r = ask(
        &t,
        "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.D.F.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    match &r.answers[..] {
        [rec] => match &rec.data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "bar.connectopus.test."),
            other => panic!("not a PTR: {other:?}"),
        },
        other => panic!("want one answer, got {other:?}"),
    }
    // Unknown address inside the reverse zone: NXDOMAIN with the reverse zone's SOA.
    let r = ask(
        &t,
        "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        r.authorities[0].name.to_ascii(),
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
    );
    // A nibble path above a served address: exists, no data.
    let r = ask(
        &t,
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // Outside the mesh subnet: not ours.
    let r = ask(
        &t,
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn nodata_nxdomain_refused() {
    let t = table();
    for qtype in [RecordType::A, RecordType::TXT, RecordType::MX] {
        let r = ask(&t, "bar.connectopus.test.", qtype);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert!(r.metadata.authoritative);
        assert!(soa_serial(&r).is_some(), "NODATA carries the SOA");
    }
    // Empty non-terminal.
    let r = ask(&t, "b.connectopus.test.", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());

    let r = ask(&t, "nope.connectopus.test.", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].ttl, 10);
    assert!(soa_serial(&r).is_some());
    assert!(matches!(&r.authorities[0].data, RData::SOA(soa) if soa.minimum == 10));

    for name in [
        "example.com.",
        "test.",
        ".",
        "connectopus.test.example.com.",
    ] {
        let r = ask(&t, name, RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!r.metadata.authoritative);
        assert!(!r.metadata.recursion_available);
    }
    // Zone transfers and other classes are refused.
    let r = ask(&t, "connectopus.test.", RecordType::AXFR);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    let mut m = query_msg("bar.connectopus.test.", RecordType::AAAA);
    m.queries[0].set_query_class(DNSClass::CH);
    let r = ask_msg(&t, &m, Transport::Udp);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn apex_soa_ns_with_glue() {
    let t = table();
    let r = ask(&t, "Connectopus.Test.", RecordType::SOA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(soa_serial(&r), Some(t.serial()));
    match &r.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.mname.to_ascii(), "node1.connectopus.test.");
            assert_eq!(soa.rname.to_ascii(), "hostmaster.connectopus.test.");
        }
        other => panic!("{other:?}"),
    }
    let r = ask(&t, "connectopus.test.", RecordType::NS);
    match &r.answers[..] {
        [rec] => assert!(
            matches!(&rec.data, RData::NS(ns) if ns.0.to_ascii() == "node1.connectopus.test.")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.additionals.len(), 1, "glue AAAA for the name server");
    assert!(matches!(&r.additionals[0].data, RData::AAAA(a) if a.0 == ip("fd00::1")));
    // The reverse zone has its SOA and NS too.
    let r = ask(
        &t,
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::SOA,
    );
    assert_eq!(soa_serial(&r), Some(t.serial()));
    // Apex AAAA: NODATA. ANY: SOA and NS.
    let r = ask(&t, "connectopus.test.", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    let r = ask(&t, "connectopus.test.", RecordType::ANY);
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn updates_replace_the_set() {
    let t = table();
    let before = t.serial();
    t.update([("bar", ip("fd00::2")), ("new", ip("fd00::7"))]);
    assert_eq!(t.serial(), before.wrapping_add(1));
    let r = ask(&t, "foo-tun.connectopus.test.", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        aaaa(&ask(&t, "new.connectopus.test.", RecordType::AAAA)),
        [ip("fd00::7")]
    );
    let r = ask(
        &t,
        "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    );
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "PTR withdrawn too"
    );
    assert_eq!(
        soa_serial(&ask(&t, "connectopus.test.", RecordType::SOA)),
        Some(t.serial())
    );
}

#[test]
fn edns_payload_and_truncation() {
    let t = table();
    let many: Vec<(String, Ipv6Addr)> = (0..100u16)
        .map(|i| {
            (
                "big".to_string(),
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i),
            )
        })
        .collect();
    t.update(many);
    // Plain UDP: 512 bytes max, so 100 AAAA (~2.8 KB) truncate.
    let m = query_msg("big.connectopus.test.", RecordType::AAAA);
    let r = ask_msg(&t, &m, Transport::Udp);
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    assert_eq!(r.queries.len(), 1);
    // TCP: everything.
    let r = ask_msg(&t, &m, Transport::Tcp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    // EDNS: OPT echoed with our payload size; still truncated above 1232.
    let mut m = query_msg("big.connectopus.test.", RecordType::AAAA);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.set_edns(e);
    let r = ask_msg(&t, &m, Transport::Udp);
    assert!(r.metadata.truncation);
    assert_eq!(r.edns.as_ref().map(Edns::max_payload), Some(1232));
    // EDNS version 1: BADVERS.
    let mut m = query_msg("bar.connectopus.test.", RecordType::AAAA);
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let r = ask_msg(&t, &m, Transport::Udp);
    // 16 on the wire; hickory decodes it as BADSIG, the TSIG meaning of the same code.
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.edns.is_some(), "BADVERS needs the OPT for its upper bits");
}

#[test]
fn malformed_messages() {
    let t = table();
    let snap = t.snapshot();
    // Too short: nothing.
    for len in 0..12 {
        assert!(respond(&snap, &vec![0xab; len], Transport::Udp).is_none());
    }
    let good = query_msg("bar.connectopus.test.", RecordType::AAAA)
        .to_vec()
        .unwrap();
    // A response (QR set): nothing.
    let mut resp = good.clone();
    resp[2] |= 0x80;
    assert!(respond(&snap, &resp, Transport::Udp).is_none());
    // Every truncation of a valid query: FORMERR with the id, never a panic.
    for len in 12..good.len() {
        let (bytes, _) = respond(&snap, &good[..len], Transport::Udp).expect("FORMERR");
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr, "len {len}");
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
    }
    // Zero or many questions: FORMERR, cheaply.
    let mut many = good.clone();
    many[4] = 0xff;
    many[5] = 0xff;
    let (bytes, _) = respond(&snap, &many, Transport::Udp).unwrap();
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // Other opcodes: NOTIMP.
    let mut update = good.clone();
    update[2] = (update[2] & 0x87) | (5 << 3);
    let (bytes, _) = respond(&snap, &update, Transport::Udp).unwrap();
    let r = Message::from_vec(&bytes).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(r.metadata.op_code, OpCode::Update);
    // Pseudo-random garbage of every small length: never panics.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000 {
        let len = i % 200;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = respond(&snap, &bytes, Transport::Udp);
        // Same bytes behind a valid header with one question.
        let mut framed = good[..12].to_vec();
        framed.extend_from_slice(&bytes);
        let _ = respond(&snap, &framed, Transport::Tcp);
    }
}

#[test]
fn the_public_respond_answers_like_the_server() {
    let config = ZoneConfig::new("connectopus.test", ip("fd00::"), 64, "node1", ip("fd00::1"));
    let t = NameTable::for_zone(&config).unwrap();
    t.update([("bar", ip("fd00::2"))]);
    let query = query_msg("bar.connectopus.test.", RecordType::AAAA)
        .to_vec()
        .unwrap();
    let udp = Message::from_vec(&t.respond(&query, false).unwrap()).unwrap();
    assert_eq!(aaaa(&udp), vec![ip("fd00::2")]);
    let tcp = Message::from_vec(&t.respond(&query, true).unwrap()).unwrap();
    assert_eq!(aaaa(&tcp), vec![ip("fd00::2")]);
    // Shorter than a header: no answer at all.
    assert_eq!(t.respond(&query[..11], false), None);
    let bad = ZoneConfig::new("", ip("fd00::"), 64, "node1", ip("fd00::1"));
    assert!(NameTable::for_zone(&bad).is_err());
}

/// A table with IPv4: `node1` at 198.18.0.1, `bar` at 198.18.0.2, `v6only` without IPv4.
fn table4() -> NameTable {
    let mut config = ZoneConfig::new(
        "connectopus.test",
        "fd00::".parse().unwrap(),
        64,
        "node1",
        "fd00::1".parse().unwrap(),
    );
    config.subnet4 = Some(("198.18.0.0".parse().unwrap(), 15));
    config.node_address4 = Some("198.18.0.1".parse().unwrap());
    let t = NameTable::new(ZoneSpec::new(&config).unwrap());
    let v4 = |s: &str| std::net::IpAddr::V4(s.parse().unwrap());
    let v6 = |s: &str| std::net::IpAddr::V6(s.parse().unwrap());
    let outcome = t.update([
        ("bar", v6("fd00::2")),
        ("bar", v4("198.18.0.2")),
        ("v6only", v6("fd00::3")),
        ("far", v4("10.1.2.3")),
        ("node1", v4("198.18.0.1")),
    ]);
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    t
}

fn a_records(m: &Message) -> Vec<std::net::Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn ptr_names(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_records_for_names_with_ipv4_and_nodata_without() {
    let t = table4();
    let r = ask(&t, "bar.connectopus.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(
        a_records(&r),
        ["198.18.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(aaaa(&r).is_empty(), "an A query gets no AAAA");
    let r = ask(&t, "bar.connectopus.test.", RecordType::AAAA);
    assert_eq!(aaaa(&r), [ip("fd00::2")]);
    // The node's own name has its IPv4 address from the zone config.
    let r = ask(&t, "node1.connectopus.test.", RecordType::A);
    assert_eq!(
        a_records(&r),
        ["198.18.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // A name without IPv4: NODATA (no error, no answer, the SOA in authority).
    let r = ask(&t, "v6only.connectopus.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(soa_serial(&r).is_some());
    // An unknown name: NXDOMAIN.
    let r = ask(&t, "nobody.connectopus.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // ANY has both families.
    let r = ask(&t, "bar.connectopus.test.", RecordType::ANY);
    assert_eq!((a_records(&r).len(), aaaa(&r).len()), (1, 1));
    // NS glue carries the node's A record too.
    let r = ask(&t, "connectopus.test.", RecordType::NS);
    assert!(r.additionals.iter().any(|r| matches!(r.data, RData::A(_))));
}

#[test]
fn in_addr_arpa_ptr_inside_subnet4_only() {
    let t = table4();
    let r = ask(&t, "2.0.18.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(ptr_names(&r), ["bar.connectopus.test."]);
    let r = ask(&t, "1.0.18.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr_names(&r), ["node1.connectopus.test."]);
    // 198.19/16 is the other half of the /15: ours, and unknown there is NXDOMAIN.
    let r = ask(&t, "9.9.19.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // The zone apex answers SOA; addresses outside subnet4 are refused.
    let r = ask(&t, "18.198.in-addr.arpa.", RecordType::SOA);
    assert!(soa_serial(&r).is_some());
    let r = ask(&t, "3.2.1.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    let r = ask(&t, "9.9.20.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn without_subnet4_there_are_no_ipv4_zones_or_records_for_the_node() {
    let t = table();
    let r = ask(&t, "node1.connectopus.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    let r = ask(&t, "1.0.18.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn reverse_zones4_split_at_octets() {
    let names = |net: &str, len| -> Vec<String> {
        crate::reverse_zones4(net.parse().unwrap(), len)
            .unwrap()
            .iter()
            .map(|n| n.to_ascii())
            .collect()
    };
    assert_eq!(
        names("198.18.0.0", 15),
        ["18.198.in-addr.arpa.", "19.198.in-addr.arpa."]
    );
    assert_eq!(names("198.18.5.0", 24), ["5.18.198.in-addr.arpa."]);
    assert_eq!(names("10.0.0.0", 8), ["10.in-addr.arpa."]);
    assert_eq!(names("0.0.0.0", 0), ["in-addr.arpa."]);
    assert!(crate::reverse_zones4("1.2.3.4".parse().unwrap(), 33).is_err());
}

fn ptr_of(t: &NameTable, addr: Ipv6Addr) -> Message {
    let name = crate::config::reverse_name(addr).to_ascii();
    ask(t, &name, RecordType::PTR)
}

#[test]
fn mirror_planes_answer_aaaa_and_ptr_and_go_away_with_their_plane() {
    let t = table();
    let plane = (ip("2001:db8:100::"), 64);
    let outcome = t.update_with_planes(
        [
            ("bar", ip("fd00::2")),
            ("bar", ip("2001:db8:100::2")),
            // The node's own name in the plane: its mirror, not a claim on its name.
            ("node1", ip("2001:db8:100::1")),
        ],
        &[plane],
    );
    assert!(
        outcome.changed && outcome.rejected.is_empty(),
        "{outcome:?}"
    );
    let r = ask(&t, "bar.connectopus.test.", RecordType::AAAA);
    let mut got = aaaa(&r);
    got.sort();
    assert_eq!(got, vec![ip("2001:db8:100::2"), ip("fd00::2")]);
    let own = aaaa(&ask(&t, "node1.connectopus.test.", RecordType::AAAA));
    assert!(
        own.contains(&ip("2001:db8:100::1")) && own.contains(&ip("fd00::1")),
        "{own:?}"
    );
    // PTR in the plane's own reverse zone, authoritative; the subnet's still answers.
    let r = ptr_of(&t, ip("2001:db8:100::2"));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(ptr_names(&r), vec!["bar.connectopus.test.".to_owned()]);
    assert_eq!(
        ptr_names(&ptr_of(&t, ip("2001:db8:100::1"))),
        vec!["node1.connectopus.test.".to_owned()]
    );
    assert_eq!(
        ptr_names(&ptr_of(&t, ip("fd00::2"))),
        vec!["bar.connectopus.test.".to_owned()]
    );
    // Another name's address in the plane is still not a claim on the node's own name.
    let outcome = t.update_with_planes([("node1", ip("2001:db8:100::9"))], &[plane]);
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");

    // Withdrawn: the plane's reverse zone is no longer ours (REFUSED), its AAAA gone.
    let outcome = t.update_with_planes([("bar", ip("fd00::2"))], &[]);
    assert!(outcome.changed);
    assert_eq!(
        aaaa(&ask(&t, "bar.connectopus.test.", RecordType::AAAA)),
        vec![ip("fd00::2")]
    );
    assert_eq!(
        ptr_of(&t, ip("2001:db8:100::2")).metadata.response_code,
        ResponseCode::Refused
    );
    assert_eq!(
        aaaa(&ask(&t, "node1.connectopus.test.", RecordType::AAAA)),
        vec![ip("fd00::1")]
    );
}

#[test]
fn planes_overlapping_the_subnet_or_too_long_are_ignored_and_update_keeps_planes() {
    let t = table();
    t.update_with_planes(
        [("bar", ip("fd00::2"))],
        &[
            (ip("fd00::"), 48),
            (ip("2001:db8:200::"), 126),
            (ip("2001:db8:100::"), 64),
        ],
    );
    // Only the good plane: the node's own mirror is in it, and nothing else.
    let own = aaaa(&ask(&t, "node1.connectopus.test.", RecordType::AAAA));
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own.contains(&ip("2001:db8:100::1")));
    // A plain update keeps the planes.
    t.update([("bar", ip("fd00::2")), ("bar", ip("2001:db8:100::2"))]);
    assert_eq!(
        ptr_names(&ptr_of(&t, ip("2001:db8:100::2"))),
        vec!["bar.connectopus.test.".to_owned()]
    );
}
