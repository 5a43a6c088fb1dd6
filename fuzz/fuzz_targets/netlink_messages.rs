//! rtnetlink replies as `connectopus-netlink` reads them from the kernel (`daemon/netlink`):
//! the bytes are one received datagram, split into messages (multi-part dumps, `NLMSG_DONE`,
//! errors and acks with extended-ack attributes) and each payload read as a link, an
//! address, a route and an error, whatever its type says. Never a panic; every message and
//! attribute lies inside the datagram, 4-byte aligned, with the length its header claims;
//! an address or route that parses encodes (as the crate's own request) to a message that
//! parses back to it.

#![no_main]

use connectopus_netlink::address::{self, Address};
use connectopus_netlink::message::{HEADER_LEN, Header, Reply, attr_string, attributes, messages};
use connectopus_netlink::{Link, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut end_of_last = 0;
    for message in messages(data) {
        let Ok((header, payload)) = message else {
            break;
        };
        let at = offset_in(data, payload);
        // The payload follows its header, after the previous message (padded to 4 bytes).
        assert!(at >= end_of_last + HEADER_LEN, "overlapping messages");
        assert_eq!((at - HEADER_LEN) % 4, 0, "unaligned message at {at}");
        let claimed = &data[at - HEADER_LEN..at - HEADER_LEN + 4];
        let claimed = u32::from_ne_bytes(claimed.try_into().expect("4 bytes"));
        assert_eq!(claimed as usize, HEADER_LEN + payload.len());
        end_of_last = at + payload.len();
        every_reading(header, payload);
    }
    // The attribute walker on its own, nested one level as IFLA_LINKINFO is.
    for attr in attributes(data) {
        let Ok((_, inner)) = attr else {
            break;
        };
        offset_in(data, inner);
        for nested in attributes(inner).map_while(Result::ok) {
            offset_in(inner, nested.1);
            let _ = attr_string(nested.1);
        }
    }
});

/// Where `part` starts in `whole`, checking that it lies inside it.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    let start = whole.as_ptr() as usize;
    let at = (part.as_ptr() as usize).wrapping_sub(start);
    assert!(
        at <= whole.len() && part.len() <= whole.len() - at,
        "a slice of {} bytes at {at} outside the {} byte buffer",
        part.len(),
        whole.len()
    );
    at
}

fn every_reading(header: Header, payload: &[u8]) {
    if let Ok(link) = Link::parse(payload) {
        assert!(link.mac.len() <= payload.len());
        assert!(link.name.len() <= payload.len() * 3);
        let _ = (link.is_up(), link.mac_string());
    }
    if let Ok(Some(parsed)) = Address::parse(payload) {
        let request = address::add_request(
            parsed.index,
            parsed.address,
            parsed.prefix_len,
            parsed.flags,
        );
        let again = reparse(request.finish(7), Address::parse).expect("our address request");
        assert_eq!(
            (again.index, again.address, again.prefix_len, again.flags),
            (
                parsed.index,
                parsed.address,
                parsed.prefix_len,
                parsed.flags
            )
        );
    }
    if let Ok(Some(route)) = Route::parse(payload) {
        let _ = route.destination_string();
        // A route's destination is sent only with a prefix length above 0.
        if route.prefix_len > 0 || route.destination.is_unspecified() {
            let again =
                reparse(route.add_request().finish(7), Route::parse).expect("our route request");
            assert_eq!(again, route);
        }
    }
    let flags = header.flags;
    match Reply::parse(flags, payload) {
        Ok(Reply::Error { errno, message }) => {
            assert_ne!(errno, 0);
            if let Some(message) = message {
                assert!(message.len() <= payload.len() * 3);
                assert!(!message.contains('\0'));
            }
        }
        Ok(Reply::Ack) => assert_eq!(&payload[..4], &[0, 0, 0, 0]),
        Err(_) => assert!(
            payload.len() < 4,
            "an error of {} bytes refused",
            payload.len()
        ),
    }
}

/// Parses the one message of a request the crate built, with `parse`.
fn reparse<T, E: std::fmt::Debug>(
    bytes: Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Option<T> {
    let mut all = messages(&bytes);
    let (_, payload) = all.next()?.expect("our own header parses");
    assert!(all.next().is_none());
    parse(payload).expect("our own message parses")
}
