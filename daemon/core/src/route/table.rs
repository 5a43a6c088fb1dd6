//! Longest-prefix-match table.
//!
//! Entries live in a dense vector; for every prefix length present there is one hash map from
//! the masked network address to the entry's position. A lookup masks the address once per
//! present length, longest first, and probes: its cost is bounded by the number of distinct
//! lengths (at most 129, in practice two or three: /128 node addresses and a few subnet sizes)
//! and does not grow with the number of prefixes.

use std::net::Ipv6Addr;

use connectopus_wire::Prefix;
use connectopus_wire::addr::mask;
use rustc_hash::FxHashMap;

/// A map from IPv6 prefixes to values with longest-prefix-match lookup.
///
/// Lookup cost does not grow with the number of prefixes, and lookup never allocates.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    /// Every (prefix, value), in no particular order.
    entries: Vec<(Prefix, V)>,
    /// One level per prefix length present, longest first; no level is empty.
    levels: Vec<Level>,
}

/// The prefixes of one length.
#[derive(Debug, Clone)]
struct Level {
    /// Prefix length in bits.
    len: u8,
    /// `mask(len)`, kept so that lookup does not recompute it.
    mask: u128,
    /// Network address to position in `entries`.
    slots: FxHashMap<u128, usize>,
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> PrefixTable<V> {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            levels: Vec::new(),
        }
    }

    /// Finds the level for `len`: `Ok(position)` or `Err(insertion point)`.
    fn level_pos(&self, len: u8) -> Result<usize, usize> {
        // Levels are sorted by descending length.
        self.levels.binary_search_by(|l| len.cmp(&l.len))
    }

    /// Inserts or replaces the value for `prefix`, returning the old value.
    pub fn insert(&mut self, prefix: Prefix, value: V) -> Option<V> {
        let pos = match self.level_pos(prefix.len()) {
            Ok(pos) => pos,
            Err(pos) => {
                let level = Level {
                    len: prefix.len(),
                    mask: mask(prefix.len()),
                    slots: FxHashMap::default(),
                };
                self.levels.insert(pos, level);
                pos
            }
        };
        let key = u128::from(prefix.addr());
        let next = self.entries.len();
        let slot = *self.levels[pos].slots.entry(key).or_insert(next);
        if slot == next {
            self.entries.push((prefix, value));
            None
        } else {
            Some(std::mem::replace(&mut self.entries[slot].1, value))
        }
    }

    /// Removes `prefix` (exact match), returning its value.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<V> {
        let pos = self.level_pos(prefix.len()).ok()?;
        let slot = self.levels[pos].slots.remove(&u128::from(prefix.addr()))?;
        if self.levels[pos].slots.is_empty() {
            // Keeps lookup from probing lengths that no longer hold anything.
            self.levels.remove(pos);
        }
        let (_, value) = self.entries.swap_remove(slot);
        // The former last entry now sits at `slot`: repoint its level.
        if let Some((moved, _)) = self.entries.get(slot)
            && let Ok(moved_pos) = self.level_pos(moved.len())
            && let Some(s) = self.levels[moved_pos]
                .slots
                .get_mut(&u128::from(moved.addr()))
        {
            *s = slot;
        }
        Some(value)
    }

    /// Returns the value for exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&V> {
        let pos = self.level_pos(prefix.len()).ok()?;
        let slot = *self.levels[pos].slots.get(&u128::from(prefix.addr()))?;
        self.entries.get(slot).map(|(_, v)| v)
    }

    /// Returns the longest prefix containing `addr`, and its value.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<(Prefix, &V)> {
        let a = u128::from(addr);
        for level in &self.levels {
            if let Some(&slot) = level.slots.get(&(a & level.mask)) {
                return self.entries.get(slot).map(|(p, v)| (*p, v));
            }
        }
        None
    }

    /// Returns the number of prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns true if the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns every (prefix, value) in ascending prefix order.
    ///
    /// Sorts a list of references on each call: meant for status output, not the data path.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &V)> {
        let mut sorted: Vec<&(Prefix, V)> = self.entries.iter().collect();
        sorted.sort_unstable_by_key(|(p, _)| *p);
        sorted.into_iter().map(|(p, v)| (*p, v))
    }
}
