//! The routing stream (the ARQ of `daemon/core/src/stream.rs`) against a hostile peer: any
//! segments (conn, seq, ack, sack, window, payload of its choosing, near the real numbers or
//! anywhere), interleaved with time passing, our own sends and reads.
//!
//! Never a panic and no unbounded work: each poll loop ends; the send buffer holds exactly
//! what was queued minus what was cumulatively acknowledged; the bytes read never exceed
//! the payload bytes the peer sent; what was read stays read (the stream is ordered).

#![no_main]

use arbitrary::Arbitrary;
use connectopus_core::Time;
use connectopus_core::stream::{ReliableStream, StreamConfig};
use connectopus_wire::StreamSegment;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    /// A segment near the numbers in use (offsets from the real ones).
    Near {
        seq: i8,
        ack: i8,
        sack: u32,
        window: u16,
        len: u8,
        wrong_conn: bool,
    },
    /// A segment with any numbers.
    Raw {
        conn: u32,
        seq: u32,
        ack: u32,
        sack: u32,
        window: u16,
        len: u8,
    },
    /// The peer acknowledges what we sent, honestly, with a window.
    HonestAck {
        window: u16,
    },
    Send {
        len: u16,
    },
    Advance {
        millis: u16,
    },
    Read,
}

#[derive(Arbitrary, Debug)]
struct Script {
    local_conn: u32,
    peer_conn: u32,
    window: u8,
    steps: Vec<Step>,
}

fuzz_target!(|script: Script| {
    let config = StreamConfig {
        max_segment_payload: 64,
        receive_window: u16::from(script.window % 32),
        max_in_flight: 16,
        max_send_buffer: 16 * 1024,
        ..StreamConfig::default()
    };
    let (local, peer) = (script.local_conn, script.peer_conn);
    let mut now = Time::from_nanos(1_000_000_000);
    let mut stream = ReliableStream::new(config, local, peer, now);
    let payload = [0x5au8; 256];
    let (mut queued, mut peer_bytes, mut read) = (0usize, 0usize, Vec::new());
    // The highest segment number we have seen ourselves send, plus one.
    let mut our_next = peer;
    let mut peer_seq = local;
    for step in script.steps.iter().take(256) {
        match *step {
            Step::Near {
                seq,
                ack,
                sack,
                window,
                len,
                wrong_conn,
            } => {
                let len = usize::from(len) % 80;
                peer_bytes += len;
                let segment = StreamSegment {
                    conn: if wrong_conn {
                        local.wrapping_add(1)
                    } else {
                        local
                    },
                    seq: peer_seq.wrapping_add_signed(i32::from(seq)),
                    ack: our_next.wrapping_add_signed(i32::from(ack)),
                    sack,
                    window,
                    payload: &payload[..len],
                };
                if seq == 0 && !wrong_conn && len > 0 {
                    peer_seq = peer_seq.wrapping_add(1);
                }
                stream.handle_segment(now, &segment);
            }
            Step::Raw {
                conn,
                seq,
                ack,
                sack,
                window,
                len,
            } => {
                let len = usize::from(len) % 80;
                peer_bytes += len;
                let segment = StreamSegment {
                    conn,
                    seq,
                    ack,
                    sack,
                    window,
                    payload: &payload[..len],
                };
                stream.handle_segment(now, &segment);
            }
            Step::HonestAck { window } => {
                let segment = StreamSegment {
                    conn: local,
                    seq: peer_seq,
                    ack: our_next,
                    sack: 0,
                    window,
                    payload: &[],
                };
                stream.handle_segment(now, &segment);
            }
            Step::Send { len } => {
                let len = usize::from(len) % 2048;
                if stream.send(&vec![7u8; len]).is_ok() {
                    queued += len;
                }
            }
            Step::Advance { millis } => {
                now = Time::from_nanos(now.as_nanos() + u64::from(millis) * 1_000_000);
                if stream.poll_timeout().is_some_and(|t| t <= now) {
                    stream.handle_timeout(now);
                }
            }
            Step::Read => {
                let before = read.len();
                stream.read(&mut read);
                assert!(read.len() >= before);
            }
        }
        // Drain what the stream wants to send; it must stop.
        let mut sent = 0;
        while let Some(segment) = stream.poll_transmit(now) {
            assert_eq!(segment.conn, peer, "segments carry the peer's conn");
            assert!(segment.payload.len() <= 64);
            if !segment.payload.is_empty() {
                let end = segment.seq.wrapping_add(1);
                if end.wrapping_sub(peer) > our_next.wrapping_sub(peer) {
                    our_next = end;
                }
            }
            sent += 1;
            assert!(sent <= 1000, "poll_transmit does not stop");
        }
        assert!(stream.unacknowledged_bytes() <= queued);
        assert!(
            stream.segments_in_flight() <= 16 + 1,
            "in flight: {}",
            stream.segments_in_flight()
        );
    }
    stream.read(&mut read);
    assert!(
        read.len() <= peer_bytes,
        "read {} of {peer_bytes} bytes sent",
        read.len()
    );
});
