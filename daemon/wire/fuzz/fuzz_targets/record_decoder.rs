//! Feeds arbitrary bytes to a record decoder in pieces whose sizes come from the input, and
//! checks that every record returned re-encodes to the bytes it came from.

#![no_main]

use connectopus_wire::record::RecordDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // A small limit so that the "too long" path is reachable.
    let max = 1 + usize::from(first) * 4;
    let chunk = 1 + usize::from(first % 17);
    let mut decoder = RecordDecoder::new(max);
    let mut framed = Vec::new();
    let mut failed = false;
    for piece in rest.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    assert!(record.body.len() < max);
                    record.encode_into(&mut framed);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    // Records returned so far are exactly a prefix of the input stream.
    assert_eq!(rest.get(..framed.len()), Some(&framed[..]));
    if !failed {
        assert_eq!(framed.len() + decoder.buffered_len(), rest.len());
    }
});
