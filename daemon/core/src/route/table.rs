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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut t = PrefixTable::new();
        assert!(t.is_empty());
        assert_eq!(t.insert(p("fd00::/64"), 1), None);
        assert_eq!(t.insert(p("fd00::1/128"), 2), None);
        assert_eq!(t.insert(p("fd00::/64"), 3), Some(1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&p("fd00::/64")), Some(&3));
        assert_eq!(t.get(&p("fd00::/63")), None);
        assert_eq!(t.remove(&p("fd00::/63")), None);
        assert_eq!(t.remove(&p("fd00::/64")), Some(3));
        assert_eq!(t.remove(&p("fd00::/64")), None);
        assert_eq!(t.get(&p("fd00::1/128")), Some(&2));
        assert_eq!(t.lookup(ip("fd00::1")), Some((p("fd00::1/128"), &2)));
        assert_eq!(t.lookup(ip("fd00::2")), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::new();
        t.insert(p("::/0"), "default");
        t.insert(p("fd00::/16"), "16");
        t.insert(p("fd00:1::/64"), "64");
        t.insert(p("fd00:1::aaaa:0:0/96"), "96");
        t.insert(p("fd00:1::aaaa:0:1/128"), "128");
        let hit = |s| t.lookup(ip(s)).map(|(_, v)| *v);
        assert_eq!(hit("fd00:1::aaaa:0:1"), Some("128"));
        assert_eq!(hit("fd00:1::aaaa:0:2"), Some("96"));
        assert_eq!(hit("fd00:1::1"), Some("64"));
        assert_eq!(hit("fd00:2::1"), Some("16"));
        assert_eq!(hit("2001:db8::1"), Some("default"));
        let (prefix, _) = t.lookup(ip("fd00:1::aaaa:0:2")).unwrap();
        assert_eq!(prefix, p("fd00:1::aaaa:0:0/96"));
    }

    #[test]
    fn iter_is_sorted_and_clone_is_independent() {
        let mut t = PrefixTable::default();
        for (i, s) in ["fd02::/64", "fd00::1/128", "fd00::/64", "fd01::/16"]
            .iter()
            .enumerate()
        {
            t.insert(p(s), i);
        }
        let snapshot = t.clone();
        t.remove(&p("fd00::/64"));
        let got: Vec<Prefix> = snapshot.iter().map(|(p, _)| p).collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(snapshot.len(), 4);
        assert_eq!(t.len(), 3);
        assert_eq!(snapshot.lookup(ip("fd00::5")), Some((p("fd00::/64"), &2)));
        assert_eq!(t.lookup(ip("fd00::5")), None);
    }

    /// Clustered addresses, so that generated prefixes nest and share lengths.
    fn clustered_addr() -> impl Strategy<Value = u128> {
        const BASES: [u128; 3] = [
            0xfd00_0000_0000_0001_0000_0000_0000_0000,
            0xfd00_0000_0000_0002_0000_0000_0000_0000,
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
        ];
        (0..BASES.len(), any::<u128>(), 0u32..=128)
            .prop_map(|(i, noise, shift)| BASES[i] ^ noise.checked_shr(shift).unwrap_or(0))
    }

    fn prefix() -> impl Strategy<Value = Prefix> {
        let len = prop_oneof![
            prop::sample::select(vec![0u8, 16, 48, 64, 96, 127, 128]),
            0u8..=128,
        ];
        (clustered_addr(), len)
            .prop_map(|(a, len)| Prefix::new_truncating(Ipv6Addr::from(a), len).unwrap())
    }

    /// The obvious longest-prefix match: scan everything.
    fn naive_lookup<V>(model: &BTreeMap<Prefix, V>, addr: Ipv6Addr) -> Option<(Prefix, &V)> {
        model
            .iter()
            .filter(|(p, _)| p.contains(addr))
            .max_by_key(|(p, _)| p.len())
            .map(|(p, v)| (*p, v))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Prefix, u32),
        Remove(Prefix),
    }

    proptest! {
        #[test]
        fn lookup_matches_linear_scan(
            prefixes in prop::collection::vec(prefix(), 0..60),
            probes in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<u128>(), clustered_addr(), any::<bool>()),
                1..60,
            ),
        ) {
            let mut table = PrefixTable::new();
            let mut model = BTreeMap::new();
            for (i, prefix) in prefixes.iter().enumerate() {
                table.insert(*prefix, i);
                model.insert(*prefix, i);
            }
            for (index, host, random, inside) in probes {
                // Half the probes land inside a known prefix, with random host bits.
                let addr = if inside && !prefixes.is_empty() {
                    let prefix = prefixes[index.index(prefixes.len())];
                    u128::from(prefix.addr()) | (host & !mask(prefix.len()))
                } else {
                    random
                };
                let addr = Ipv6Addr::from(addr);
                prop_assert_eq!(table.lookup(addr), naive_lookup(&model, addr));
            }
        }

        #[test]
        fn insert_remove_matches_btreemap(
            ops in prop::collection::vec(
                prop_oneof![
                    (prefix(), any::<u32>()).prop_map(|(p, v)| Op::Insert(p, v)),
                    prefix().prop_map(Op::Remove),
                ],
                0..100,
            ),
        ) {
            let mut table = PrefixTable::new();
            let mut model = BTreeMap::new();
            let mut seen = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(prefix, v) => {
                        seen.push(prefix);
                        prop_assert_eq!(table.insert(prefix, v), model.insert(prefix, v));
                    }
                    Op::Remove(prefix) => {
                        // Mostly remove something that may be present.
                        let prefix = seen.pop().unwrap_or(prefix);
                        prop_assert_eq!(table.remove(&prefix), model.remove(&prefix));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                for prefix in &seen {
                    prop_assert_eq!(table.get(prefix), model.get(prefix));
                    prop_assert_eq!(table.lookup(prefix.addr()), naive_lookup(&model, prefix.addr()));
                }
            }
            let got: Vec<(Prefix, u32)> = table.iter().map(|(p, v)| (p, *v)).collect();
            let want: Vec<(Prefix, u32)> = model.iter().map(|(p, v)| (*p, *v)).collect();
            prop_assert_eq!(got, want);
            prop_assert!(table.levels.iter().all(|l| !l.slots.is_empty()));
        }
    }
}
