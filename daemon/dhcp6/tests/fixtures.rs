//! Decode fixtures: datagrams Kea 2.2 and ISC dhcpd 4.4 (-6) sent to this client in a network
//! namespace (captured with `dhcp6_client --capture`, see tests/src/bin/dhcp6_client.rs).
//! Kea delegated 2001:db8:100::/56 with timers 2/4/6/8 s; dhcpd fd42:beef:100::/56 with T1 =
//! T2 = 0 and lifetimes 6/8 s. Each is read by our parser and, as a cross-check, by dhcproto.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;

use connectopus_dhcp6::codec::{msg, parse_server_message, status};
use dhcproto::v6::{DhcpOption, Message, OptionCode};
use dhcproto::{Decodable, Decoder};

const KEA_ADVERTISE: &[u8] = include_bytes!("fixtures/kea-advertise.bin");
const KEA_REPLY: &[u8] = include_bytes!("fixtures/kea-reply.bin");
const KEA_RELEASE_REPLY: &[u8] = include_bytes!("fixtures/kea-release-reply.bin");
const KEA_DUID: &[u8] = include_bytes!("fixtures/kea-client.duid");
const DHCPD_ADVERTISE: &[u8] = include_bytes!("fixtures/dhcpd-advertise.bin");
const DHCPD_REPLY: &[u8] = include_bytes!("fixtures/dhcpd-reply.bin");
const DHCPD_DUID: &[u8] = include_bytes!("fixtures/dhcpd-client.duid");
/// `iaid_for_interface("d6n0")`, the capture's interface.
const IAID: u32 = 3_568_565_161;

fn check(bytes: &[u8], kind: u8, duid: &[u8], prefix: &str, timers: (u32, u32), life: (u32, u32)) {
    let m = parse_server_message(bytes).unwrap();
    assert_eq!(m.msg_type, kind);
    assert_eq!(m.client_id.as_deref(), Some(duid));
    assert!(m.server_id.is_some());
    assert_eq!(m.ia_pds.len(), 1);
    let ia = &m.ia_pds[0];
    assert_eq!(ia.iaid, IAID);
    assert_eq!(connectopus_dhcp6::iaid_for_interface("d6n0"), IAID);
    assert_eq!((ia.t1, ia.t2), timers);
    assert_eq!(ia.prefixes.len(), 1);
    let p = &ia.prefixes[0];
    assert_eq!((p.prefix, p.len), (prefix.parse::<Ipv6Addr>().unwrap(), 56));
    assert_eq!((p.preferred, p.valid), life);

    // dhcproto reads the same.
    let d = Message::decode(&mut Decoder::new(bytes)).unwrap();
    assert_eq!(u8::from(d.msg_type()), kind);
    assert_eq!(d.xid_num(), m.xid);
    let Some(DhcpOption::IAPD(dia)) = d.opts().get(OptionCode::IAPD) else {
        panic!("dhcproto finds no IA_PD")
    };
    assert_eq!((dia.id, dia.t1, dia.t2), (ia.iaid, ia.t1, ia.t2));
    let Some(DhcpOption::ServerId(sid)) = d.opts().get(OptionCode::ServerId) else {
        panic!("dhcproto finds no server id")
    };
    assert_eq!(Some(sid), m.server_id.as_ref());
}

#[test]
fn kea_advertise_and_reply() {
    check(
        KEA_ADVERTISE,
        msg::ADVERTISE,
        KEA_DUID,
        "2001:db8:100::",
        (2, 4),
        (6, 8),
    );
    check(
        KEA_REPLY,
        msg::REPLY,
        KEA_DUID,
        "2001:db8:100::",
        (2, 4),
        (6, 8),
    );
}

#[test]
fn kea_reply_to_release_carries_a_status() {
    let m = parse_server_message(KEA_RELEASE_REPLY).unwrap();
    assert_eq!(m.msg_type, msg::REPLY);
    assert_eq!(m.client_id.as_deref(), Some(KEA_DUID));
    let in_ia = m.ia_pds.first().and_then(|ia| ia.status);
    assert!(
        m.status == Some(status::SUCCESS) || in_ia == Some(status::SUCCESS),
        "{m:?}"
    );
}

#[test]
fn dhcpd_advertise_and_reply_with_zero_timers() {
    check(
        DHCPD_ADVERTISE,
        msg::ADVERTISE,
        DHCPD_DUID,
        "fd42:beef:100::",
        (0, 0),
        (6, 8),
    );
    check(
        DHCPD_REPLY,
        msg::REPLY,
        DHCPD_DUID,
        "fd42:beef:100::",
        (0, 0),
        (6, 8),
    );
}
