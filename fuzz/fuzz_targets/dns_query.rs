//! The DNS responder: any message in (as a UDP datagram or a TCP query), at most one answer
//! out, never a panic. An answer echoes the query id, has QR set, and a UDP answer fits the
//! 1232-byte EDNS limit the server advertises (512 without EDNS is enforced by truncation).

#![no_main]

use std::sync::OnceLock;

use connectopus_dns::{NameTable, ZoneConfig};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static NameTable {
    static TABLE: OnceLock<NameTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let ip = |s: &str| s.parse().expect("a literal address");
        let zone = ZoneConfig::new(
            "connectopus.test",
            ip("fd00:cafe::"),
            62,
            "node1",
            ip("fd00:cafe::1"),
        );
        let table = NameTable::for_zone(&zone).expect("a valid zone");
        table.update([
            ("bar", ip("fd00:cafe::2")),
            ("baz", ip("fd00:cafe::3")),
            ("multi", ip("fd00:cafe::4")),
            ("multi", ip("fd00:cafe::5")),
            ("a.b", ip("fd00:cafe::6")),
            ("outside", ip("2001:db8::1")),
        ]);
        table
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, query)) = data.split_first() else {
        return;
    };
    let over_tcp = mode & 1 == 1;
    let Some(answer) = table().respond(query, over_tcp) else {
        return;
    };
    assert!(answer.len() >= 12, "an answer has a header");
    assert_eq!(answer[..2], query[..2], "the answer echoes the query id");
    assert!(answer[2] & 0x80 != 0, "QR is set");
    if !over_tcp {
        assert!(
            answer.len() <= 1232,
            "a UDP answer of {} bytes",
            answer.len()
        );
    }
});
