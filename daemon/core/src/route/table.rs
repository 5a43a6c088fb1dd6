//! Longest-prefix-match table.

use std::net::Ipv6Addr;

use connectopus_wire::Prefix;

/// A map from IPv6 prefixes to values with longest-prefix-match lookup.
///
/// Lookup cost does not grow with the number of prefixes.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    _v: Vec<(Prefix, V)>,
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> PrefixTable<V> {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self { _v: Vec::new() }
    }

    /// Inserts or replaces the value for `prefix`, returning the old value.
    pub fn insert(&mut self, prefix: Prefix, value: V) -> Option<V> {
        // Placeholder linear implementation (forward worktree only); replaced on merge.
        match self._v.binary_search_by(|(p, _)| p.cmp(&prefix)) {
            Ok(i) => Some(core::mem::replace(&mut self._v[i].1, value)),
            Err(i) => {
                self._v.insert(i, (prefix, value));
                None
            }
        }
    }

    /// Removes `prefix` (exact match), returning its value.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<V> {
        match self._v.binary_search_by(|(p, _)| p.cmp(prefix)) {
            Ok(i) => Some(self._v.remove(i).1),
            Err(_) => None,
        }
    }

    /// Returns the value for exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&V> {
        self._v
            .binary_search_by(|(p, _)| p.cmp(prefix))
            .ok()
            .map(|i| &self._v[i].1)
    }

    /// Returns the longest prefix containing `addr`, and its value.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<(Prefix, &V)> {
        self._v
            .iter()
            .filter(|(p, _)| p.contains(addr))
            .max_by_key(|(p, _)| p.len())
            .map(|(p, v)| (*p, v))
    }

    /// Returns the number of prefixes.
    pub fn len(&self) -> usize {
        self._v.len()
    }

    /// Returns true if the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns every (prefix, value) in ascending prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &V)> {
        self._v.iter().map(|(p, v)| (*p, v))
    }
}
