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
        let _ = (prefix, value);
        todo!("route: PrefixTable::insert")
    }

    /// Removes `prefix` (exact match), returning its value.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<V> {
        let _ = prefix;
        todo!("route: PrefixTable::remove")
    }

    /// Returns the value for exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&V> {
        let _ = prefix;
        todo!("route: PrefixTable::get")
    }

    /// Returns the longest prefix containing `addr`, and its value.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<(Prefix, &V)> {
        let _ = addr;
        todo!("route: PrefixTable::lookup")
    }

    /// Returns the number of prefixes.
    pub fn len(&self) -> usize {
        todo!("route: PrefixTable::len")
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
