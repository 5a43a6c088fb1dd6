//! Anti-replay sliding window (RFC 6347 §4.1.2.6) as a ring bitmap.

/// Number of 64-bit words in the ring.
const WORDS: usize = 16;
/// Records this far behind the highest accepted sequence number are still accepted
/// (one word of the ring is kept as slack so that advancing never clears live bits).
pub(crate) const WINDOW: u64 = ((WORDS - 1) * 64) as u64;

/// A replay window of [`WINDOW`] records; check before decryption, update after the tag verified.
#[derive(Clone, Debug)]
pub(crate) struct ReplayWindow {
    bits: [u64; WORDS],
    /// Highest sequence number accepted so far; `None` before the first.
    top: Option<u64>,
}

impl ReplayWindow {
    /// Creates an empty window.
    pub(crate) fn new() -> Self {
        Self {
            bits: [0; WORDS],
            top: None,
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let word = ((seq / 64) % WORDS as u64) as usize;
        (word, 1u64 << (seq % 64))
    }

    /// Returns whether `seq` is new and inside the window; does not change the window.
    pub(crate) fn check(&self, seq: u64) -> bool {
        let Some(top) = self.top else { return true };
        if seq > top {
            return true;
        }
        if top - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::slot(seq);
        self.bits[w] & b == 0
    }

    /// Marks `seq` as received; call only after [`Self::check`] passed and the record authenticated.
    pub(crate) fn update(&mut self, seq: u64) {
        match self.top {
            None => {
                self.bits = [0; WORDS];
                self.top = Some(seq);
            }
            Some(top) if seq > top => {
                let old_word = top / 64;
                let new_word = seq / 64;
                let advance = (new_word - old_word).min(WORDS as u64);
                for i in 1..=advance {
                    let w = ((old_word + i) % WORDS as u64) as usize;
                    self.bits[w] = 0;
                }
                self.top = Some(seq);
            }
            Some(_) => {}
        }
        let (w, b) = Self::slot(seq);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_once_and_reorders() {
        let mut w = ReplayWindow::new();
        for s in [5u64, 3, 4, 10, 6] {
            assert!(w.check(s), "{s}");
            w.update(s);
            assert!(!w.check(s), "{s} replay");
        }
        assert!(w.check(9));
        assert!(w.check(0));
    }

    #[test]
    fn drops_too_old_and_survives_big_jumps() {
        let mut w = ReplayWindow::new();
        w.update(1000);
        assert!(w.check(1000 - WINDOW + 1));
        assert!(!w.check(1000 - WINDOW));
        w.update(1000 + (1 << 20));
        assert!(!w.check(1000));
        assert!(w.check(1000 + (1 << 20) - 1));
        // Bits from before the jump must not leak into the new window.
        let top = 1000 + (1 << 20);
        for s in top - WINDOW + 1..top {
            assert!(w.check(s), "{s}");
        }
    }

    #[test]
    fn sliding_clears_reused_words() {
        let mut w = ReplayWindow::new();
        for s in 0..5000u64 {
            assert!(w.check(s));
            w.update(s);
        }
        for s in 5000 - WINDOW + 1..5000 {
            assert!(!w.check(s));
        }
        for s in 5000..6000u64 {
            assert!(w.check(s));
        }
    }
}
