//! The record layer against rustls and against itself: interop, key updates, records cut
//! anywhere, forged and malformed records, and sealing into a ring queue.

use std::io::Read;

use super::*;
use crate::links::tcp::{CHANNEL_BINDING_LABEL, TcpCodec, TcpLinkError};
use crate::links::tls;

/// A listener's and a dialer's configuration as the node builds them.
fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server, client, _) = tls::tests::configs();
    (server, client)
}

fn name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("link.test").unwrap()
}

/// Feeds bytes to a rustls connection (it reads at most 4 KiB at a time) and returns the
/// plaintext they carried.
fn deliver(theirs: &mut rustls::Connection, mut bytes: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !bytes.is_empty() {
        if theirs.read_tls(&mut bytes).unwrap() == 0 {
            break;
        }
        theirs.process_new_packets().unwrap();
        let _ = theirs.reader().read_to_end(&mut got);
    }
    got
}

fn written(theirs: &mut rustls::Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    while theirs.wants_write() {
        theirs.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Has rustls seal `plaintext` (in turns: it buffers at most 64 KiB) and returns the wire.
fn sealed_by(theirs: &mut rustls::Connection, plaintext: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for chunk in plaintext.chunks(16 * 1024) {
        std::io::Write::write_all(&mut theirs.writer(), chunk).unwrap();
        wire.extend(written(theirs));
    }
    wire.extend(written(theirs));
    wire
}

fn frames(codec: &mut TcpCodec) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(r) = codec.pop_message() {
        got.push(codec.buffer_mut()[r].to_vec());
    }
    got
}

fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for m in messages {
        wire.extend_from_slice(&(m.len() as u16).to_be_bytes());
        wire.extend_from_slice(m);
    }
    wire
}

/// Our codec against a plain rustls connection (a node that keeps its records in
/// rustls), dialing or listening; handshake done.
fn against_rustls(we_dial: bool) -> (TcpCodec, rustls::Connection) {
    against_rustls_writing_early(we_dial, &[])
}

/// As [`against_rustls`], with rustls given `early` plaintext before the handshake: it sends
/// it in the same flight as its last handshake record (the client behind its Finished, the
/// server behind its own, before the client's).
fn against_rustls_writing_early(we_dial: bool, early: &[u8]) -> (TcpCodec, rustls::Connection) {
    let (server, client) = configs();
    let (mut ours, mut theirs) = if we_dial {
        let theirs = rustls::ServerConnection::new(server).unwrap();
        (
            TcpCodec::tls(TlsSession::client(&client, name()).unwrap()),
            rustls::Connection::Server(theirs),
        )
    } else {
        let theirs = rustls::ClientConnection::new(client, name()).unwrap();
        (
            TcpCodec::tls(TlsSession::server(&server).unwrap()),
            rustls::Connection::Client(theirs),
        )
    };
    if !early.is_empty() {
        std::io::Write::write_all(&mut theirs.writer(), early).unwrap();
    }
    for _ in 0..10 {
        let mut to_them = Vec::new();
        ours.poll_handshake(&mut to_them);
        deliver(&mut theirs, &to_them);
        let to_us = written(&mut theirs);
        let mut back = Vec::new();
        ours.receive(&to_us, &mut back).unwrap();
        deliver(&mut theirs, &back);
        if ours.is_ready() && !theirs.is_handshaking() && !theirs.wants_write() {
            break;
        }
    }
    assert!(ours.is_ready() && !theirs.is_handshaking());
    (ours, theirs)
}

/// Runs the handshake between a dialer's and a listener's codec (three flights).
fn handshake(a: &mut TcpCodec, b: &mut TcpCodec) {
    let mut to_b = Vec::new();
    a.poll_handshake(&mut to_b);
    let mut to_a = Vec::new();
    b.receive(&to_b, &mut to_a).unwrap();
    let mut to_b = Vec::new();
    a.receive(&to_a, &mut to_b).unwrap();
    b.receive(&to_b, &mut Vec::new()).unwrap();
    assert!(a.is_ready() && b.is_ready());
}

/// Two of our codecs, handshake done.
pub(crate) fn pair() -> (TcpCodec, TcpCodec) {
    let (server, client) = configs();
    let mut a = TcpCodec::tls(TlsSession::client(&client, name()).unwrap());
    let mut b = TcpCodec::tls(TlsSession::server(&server).unwrap());
    handshake(&mut a, &mut b);
    (a, b)
}

/// Queues `messages` on `codec`, each framed, then flushes them into `wire`.
pub(crate) fn queue(codec: &mut TcpCodec, messages: &[Vec<u8>], wire: &mut Vec<u8>) {
    for m in messages {
        let queued = codec
            .queue_with(
                m.len(),
                |slot| {
                    slot.copy_from_slice(m);
                    Some(m.len())
                },
                wire,
            )
            .unwrap();
        assert!(queued);
    }
    codec.flush(wire).unwrap();
}

fn some_messages(seed: u8) -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = (0..45u8)
        .map(|i| vec![i.wrapping_add(seed); 1400])
        .collect();
    messages.push(vec![seed; 60_000]);
    messages.push(vec![seed ^ 0x55; 7]);
    messages
}

#[test]
fn records_interoperate_with_a_peer_that_keeps_its_records_in_rustls() {
    for we_dial in [true, false] {
        let (mut ours, mut theirs) = against_rustls(we_dial);
        // Both ends derive the same channel binding.
        let mut expected = [0u8; 32];
        match &theirs {
            rustls::Connection::Client(c) => {
                c.export_keying_material(&mut expected, CHANNEL_BINDING_LABEL.as_bytes(), None)
            }
            rustls::Connection::Server(c) => {
                c.export_keying_material(&mut expected, CHANNEL_BINDING_LABEL.as_bytes(), None)
            }
        }
        .unwrap();
        assert_eq!(ours.channel_binding().unwrap(), Some(expected));
        // Ours → theirs.
        let messages = some_messages(1);
        let mut wire = Vec::new();
        queue(&mut ours, &messages, &mut wire);
        assert_eq!(
            deliver(&mut theirs, &wire),
            framed(&messages),
            "we dial: {we_dial}"
        );
        // Theirs → ours, in records rustls cut.
        let messages = some_messages(2);
        let wire = sealed_by(&mut theirs, &framed(&messages));
        let mut ignored = Vec::new();
        ours.receive(&wire, &mut ignored).unwrap();
        assert_eq!(frames(&mut ours), messages, "we dial: {we_dial}");
        assert!(ignored.is_empty());
    }
}

#[test]
fn application_data_right_behind_the_last_handshake_record_is_kept() {
    let messages = vec![vec![1u8; 300], vec![2u8; 5000]];
    for we_dial in [true, false] {
        let (mut ours, _theirs) = against_rustls_writing_early(we_dial, &framed(&messages));
        assert_eq!(frames(&mut ours), messages, "we dial: {we_dial}");
    }
}

#[test]
fn key_updates_both_ways_keep_the_stream_with_a_rustls_peer() {
    let (mut ours, mut theirs) = against_rustls(true);
    // Ours moves its keys on every 3 records: rustls follows.
    let layer = ours.record_layer().unwrap();
    layer.set_records_per_key(3);
    let messages = some_messages(3);
    let mut wire = Vec::new();
    for _ in 0..4 {
        queue(&mut ours, &messages, &mut wire);
    }
    let (tx, _) = ours.record_layer().unwrap().sequences();
    assert!(tx <= 3, "the sending key moved on (seq {tx})");
    assert_eq!(deliver(&mut theirs, &wire), framed(&messages).repeat(4));
    // rustls asks for an update: ours follows, answers, and rustls reads what follows.
    theirs.refresh_traffic_keys().unwrap();
    let messages = some_messages(4);
    let wire = sealed_by(&mut theirs, &framed(&messages));
    let mut answer = Vec::new();
    ours.receive(&wire, &mut answer).unwrap();
    assert_eq!(frames(&mut ours), messages);
    let (_, rx) = ours.record_layer().unwrap().sequences();
    assert!(rx < 10, "the receiving key moved on (seq {rx})");
    assert!(!answer.is_empty(), "a requested update is answered");
    let mut wire = answer;
    queue(&mut ours, &messages, &mut wire);
    assert_eq!(deliver(&mut theirs, &wire), framed(&messages));
}

#[test]
fn key_updates_between_two_record_layers_keep_the_stream() {
    let (mut a, mut b) = pair();
    a.record_layer().unwrap().set_records_per_key(2);
    let messages = some_messages(5);
    let mut wire = Vec::new();
    a.record_layer()
        .unwrap()
        .request_key_update(&mut wire)
        .unwrap();
    queue(&mut a, &messages, &mut wire);
    queue(&mut a, &messages, &mut wire);
    let mut answer = Vec::new();
    b.receive(&wire, &mut answer).unwrap();
    assert_eq!(
        frames(&mut b),
        [messages.clone(), messages.clone()].concat()
    );
    assert!(!answer.is_empty());
    queue(&mut b, &messages, &mut answer);
    let mut ignored = Vec::new();
    a.receive(&answer, &mut ignored).unwrap();
    assert_eq!(frames(&mut a), messages);
}

#[test]
fn records_cut_anywhere_open_whole() {
    let messages = some_messages(6);
    for chunk in [1, 2, 4, 5, 6, 17, 100, 16_405, 16_406, 70_000] {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        queue(&mut a, &messages, &mut wire);
        queue(&mut a, &messages, &mut wire);
        let mut ignored = Vec::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            b.receive(piece, &mut ignored).unwrap();
            got.extend(frames(&mut b));
        }
        assert_eq!(
            got,
            [messages.clone(), messages.clone()].concat(),
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_forged_replayed_or_malformed_record_ends_the_link() {
    let messages = some_messages(7);
    /// Spoils the wire of records given the length of its first record.
    type Spoil = fn(&mut Vec<u8>, usize);
    let cases: [(&str, Spoil, RecordError); 4] = [
        (
            "a flipped bit",
            |wire, _| wire[100] ^= 1,
            RecordError::Decrypt,
        ),
        (
            "the first record again",
            |wire, first| {
                let again = wire[..first].to_vec();
                wire.splice(first..first, again);
            },
            RecordError::Decrypt,
        ),
        (
            "a record longer than TLS allows",
            |wire, _| wire[3..5].copy_from_slice(&20_000u16.to_be_bytes()),
            RecordError::Malformed("record longer than 2^14 + 256 bytes"),
        ),
        (
            "a handshake record after the handshake",
            |wire, _| wire[0] = HANDSHAKE,
            RecordError::Malformed("not an application-data record"),
        ),
    ];
    for (what, spoil, expected) in cases {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        queue(&mut a, &messages, &mut wire);
        let first = record_len(&wire).unwrap().unwrap();
        spoil(&mut wire, first);
        let mut ignored = Vec::new();
        let error = b.receive(&wire, &mut ignored).unwrap_err();
        assert_eq!(record_error(error), expected, "{what}");
    }
}

#[test]
fn close_notify_and_alerts_end_the_link() {
    let (mut ours, mut theirs) = against_rustls(false);
    theirs.send_close_notify();
    let mut ignored = Vec::new();
    let error = ours
        .receive(&written(&mut theirs), &mut ignored)
        .unwrap_err();
    assert_eq!(record_error(error), RecordError::Closed);
}

#[test]
fn records_sealed_across_the_end_of_a_ring_queue_are_intact() {
    let (mut a, mut b) = pair();
    let mut expected = Vec::new();
    let mut received = Vec::new();
    let mut ring: VecDeque<u8> = VecDeque::with_capacity(96 * 1024);
    let capacity = ring.capacity();
    let mut wrapped = 0;
    let mut ignored = Vec::new();
    // Queue, then send all but a remainder that moves the ring's head on, in sizes that
    // do not divide the ring: records land across its end (and everywhere else).
    for round in 0..200usize {
        let message = vec![round as u8; 1000 + 997 * (round % 13)];
        a.queue_with(
            message.len(),
            |slot| {
                slot.copy_from_slice(&message);
                Some(message.len())
            },
            &mut Vec::new(),
        )
        .unwrap();
        a.flush(&mut ring).unwrap();
        expected.push(message);
        if !ring.as_slices().1.is_empty() {
            wrapped += 1;
        }
        let keep = (round * 7919) % 9000;
        let sent: Vec<u8> = ring.drain(..ring.len().saturating_sub(keep)).collect();
        b.receive(&sent, &mut ignored).unwrap();
        received.extend(frames(&mut b));
    }
    let rest: Vec<u8> = ring.drain(..).collect();
    b.receive(&rest, &mut ignored).unwrap();
    received.extend(frames(&mut b));
    assert_eq!(received, expected);
    assert_eq!(ring.capacity(), capacity, "the ring never grew");
    assert!(wrapped > 5, "the ring wrapped {wrapped} times");
}

/// The record layer's error that ended a link.
fn record_error(error: TcpLinkError) -> RecordError {
    match error {
        TcpLinkError::Records(e) => e,
        other => panic!("not a record layer error: {other}"),
    }
}

/// The records in `wire`, each as its bytes.
fn records(mut wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Ok(Some(len)) = record_len(wire) {
        let (record, rest) = wire.split_at(len);
        out.push(record);
        wire = rest;
    }
    out
}

#[test]
fn key_update_requests_get_one_answer_a_read_and_a_flood_ends_the_link() {
    let (mut a, mut b) = pair();
    let mut wire = Vec::new();
    for _ in 0..5 {
        a.record_layer()
            .unwrap()
            .request_key_update(&mut wire)
            .unwrap();
    }
    let mut answer = Vec::new();
    b.receive(&wire, &mut answer).unwrap();
    assert_eq!(records(&answer).len(), 1, "one answer for five requests");
    let mut ignored = Vec::new();
    a.receive(&answer, &mut ignored).unwrap();
    // The stream goes on both ways under the new keys.
    let messages = some_messages(9);
    let mut wire = Vec::new();
    queue(&mut b, &messages, &mut wire);
    a.receive(&wire, &mut ignored).unwrap();
    assert_eq!(frames(&mut a), messages);
    let mut wire = Vec::new();
    queue(&mut a, &messages, &mut wire);
    b.receive(&wire, &mut ignored).unwrap();
    assert_eq!(frames(&mut b), messages);
    // Past 32 requests without data in between, the link ends.
    let mut wire = Vec::new();
    for _ in 0..=MAX_KEY_UPDATE_REQUESTS {
        a.record_layer()
            .unwrap()
            .request_key_update(&mut wire)
            .unwrap();
    }
    let error = b.receive(&wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("too many key update requests without data")
    );
}

#[test]
fn an_oversized_record_plaintext_or_a_ticket_sent_to_the_listener_ends_the_link() {
    // 16,390 bytes of content: within the ciphertext bound, past the plaintext one.
    let (mut a, mut b) = pair();
    let mut wire = Vec::new();
    a.record_layer()
        .unwrap()
        .seal_record(APPLICATION_DATA, &[7u8; MAX_PLAINTEXT + 6], &mut wire)
        .unwrap();
    let error = b.receive(&wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("record plaintext longer than 2^14 + 1 bytes")
    );
    // A NewSessionTicket: ignored by the dialer, refused by the listener.
    let (mut a, mut b) = pair();
    let ticket = [NEW_SESSION_TICKET, 0, 0, 0];
    let mut to_dialer = Vec::new();
    b.record_layer()
        .unwrap()
        .seal_record(HANDSHAKE, &ticket, &mut to_dialer)
        .unwrap();
    a.receive(&to_dialer, &mut Vec::new()).unwrap();
    let mut to_listener = Vec::new();
    a.record_layer()
        .unwrap()
        .seal_record(HANDSHAKE, &ticket, &mut to_listener)
        .unwrap();
    let error = b.receive(&to_listener, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("unexpected handshake message")
    );
}

#[test]
fn frames_queued_before_the_handshake_are_bounded_and_leave_after_it() {
    let (server, client) = configs();
    let mut a = TcpCodec::tls(TlsSession::client(&client, name()).unwrap());
    let mut b = TcpCodec::tls(TlsSession::server(&server).unwrap());
    let message = vec![3u8; 1400];
    let mut queued = 0;
    let refused = loop {
        match a.queue_with(
            message.len(),
            |slot| {
                slot.copy_from_slice(&message);
                Some(message.len())
            },
            &mut Vec::new(),
        ) {
            Ok(_) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued < 1000, "nothing bounds what waits for the handshake");
    };
    assert!(matches!(refused, TcpLinkError::Overflow), "{refused}");
    assert_eq!(
        queued,
        crate::links::tcp::MAX_STAGED_BEFORE_HANDSHAKE / 1402
    );
    // What was queued leaves right behind the dialer's Finished.
    handshake(&mut a, &mut b);
    assert_eq!(frames(&mut b), vec![message; queued]);
}

/// Seals `fragments` as handshake records, one each (what a peer that splits a post-handshake
/// message sends).
fn handshake_records(codec: &mut TcpCodec, fragments: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    let layer = codec.record_layer().unwrap();
    for fragment in fragments {
        layer.seal_record(HANDSHAKE, fragment, &mut wire).unwrap();
    }
    wire
}

#[test]
fn a_post_handshake_message_split_across_records_is_gathered() {
    // A KeyUpdate that asks for an answer, in two records: followed, and answered.
    let (mut a, mut b) = pair();
    let wire = handshake_records(&mut a, &[&[KEY_UPDATE, 0], &[0, 1, 1]]);
    let layer = a.record_layer().unwrap();
    layer.tx = layer.tx.next().unwrap();
    let mut answer = Vec::new();
    b.receive(&wire, &mut answer).unwrap();
    assert_eq!(records(&answer).len(), 1, "the request is answered");
    a.receive(&answer, &mut Vec::new()).unwrap();
    let messages = some_messages(3);
    let mut wire = Vec::new();
    queue(&mut a, &messages, &mut wire);
    b.receive(&wire, &mut Vec::new()).unwrap();
    assert_eq!(
        frames(&mut b),
        messages,
        "under the new keys, dialer to listener"
    );
    let mut wire = Vec::new();
    queue(&mut b, &messages, &mut wire);
    a.receive(&wire, &mut Vec::new()).unwrap();
    assert_eq!(frames(&mut a), messages, "and back");

    // A NewSessionTicket to the dialer in three records, its header cut too, then data.
    let ticket: &[u8] = &[NEW_SESSION_TICKET, 0, 0, 6, 1, 2, 3, 4, 5, 6];
    let mut wire = handshake_records(&mut b, &[&ticket[..2], &ticket[2..5], &ticket[5..]]);
    queue(&mut b, &messages, &mut wire);
    // Delivered in reads cut anywhere, as a socket would.
    for chunk in wire.chunks(7) {
        a.receive(chunk, &mut Vec::new()).unwrap();
    }
    assert_eq!(frames(&mut a), messages, "data after the ticket");
}

#[test]
fn a_split_post_handshake_message_admits_no_other_record_and_no_giant() {
    // Application data between the pieces of a ticket ends the link.
    let (mut a, mut b) = pair();
    let mut wire = handshake_records(&mut b, &[&[NEW_SESSION_TICKET, 0, 0, 6, 1]]);
    queue(&mut b, &some_messages(4), &mut wire);
    let error = a.receive(&wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("another record inside a split handshake message")
    );

    // A message declaring more than 64 KiB is not gathered.
    let (mut a, mut b) = pair();
    let wire = handshake_records(&mut b, &[&[NEW_SESSION_TICKET, 1, 0, 0, 0]]);
    let error = a.receive(&wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("post-handshake message longer than 64 KiB")
    );

    // A key update must still end its record.
    let (mut a, mut b) = pair();
    let wire = handshake_records(&mut b, &[&[KEY_UPDATE, 0, 0], &[1, 0, NEW_SESSION_TICKET]]);
    let error = a.receive(&wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        record_error(error),
        RecordError::Malformed("data after a key update")
    );
}
