//! [`Received`]: the application records one datagram carried, as ranges of the caller's
//! buffer (inline up to a few, so the per-datagram path does not allocate).

use std::ops::Range;

/// Inline capacity of [`Received`]; more application records in one datagram spill to the heap.
const INLINE_RANGES: usize = 8;

/// Application plaintexts found in one datagram, as byte ranges within the caller's buffer.
#[derive(Clone, Debug)]
pub struct Received {
    inline: [Range<usize>; INLINE_RANGES],
    len: usize,
    spill: Vec<Range<usize>>,
}

impl Received {
    pub(crate) fn new() -> Self {
        Self {
            inline: [const { 0..0 }; INLINE_RANGES],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, r: Range<usize>) {
        if self.len < INLINE_RANGES {
            self.inline[self.len] = r;
        } else {
            self.spill.push(r);
        }
        self.len += 1;
    }

    /// Returns the number of application records received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true when the datagram carried nothing for the application.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the plaintext range of the `i`-th application record.
    pub fn get(&self, i: usize) -> Option<Range<usize>> {
        if i < INLINE_RANGES {
            (i < self.len).then(|| self.inline[i].clone())
        } else {
            self.spill.get(i - INLINE_RANGES).cloned()
        }
    }

    /// Iterates over the plaintext ranges in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.inline[..self.len.min(INLINE_RANGES)]
            .iter()
            .cloned()
            .chain(self.spill.iter().cloned())
    }
}
