//! The node's memory of removed origins.
//!
//! When an origin is removed (dead for `node_dead_after`, or no longer granted), the node
//! remembers its last (epoch, sequence) so that copies of its old updates still circulating are
//! not taken back. That memory is bounded: an entry is forgotten after `forget_pruned_after`
//! (by then every node has long removed the origin too, so no honest node still floods its old
//! updates), and the map never holds more than `max_pruned_origins` entries (the oldest go
//! first). Without a trust policy a peer can invent origins at will, so the bound is what keeps
//! it from growing the node's memory; with one, only granted addresses are ever stored.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv6Addr;
use std::time::Duration;

use crate::time::Time;

/// Removed origins and their last (epoch, sequence), bounded in count and age.
#[derive(Debug)]
pub(super) struct PrunedOrigins {
    entries: BTreeMap<Ipv6Addr, PrunedOrigin>,
    /// Insertion order, oldest first; entries replaced or removed since are skipped.
    order: VecDeque<(Time, Ipv6Addr)>,
    max: usize,
    forget_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct PrunedOrigin {
    last: (u64, u64),
    at: Time,
}

impl PrunedOrigins {
    pub(super) fn new(max: usize, forget_after: Duration) -> Self {
        Self {
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
            forget_after,
        }
    }

    /// Remembers `origin` as removed at `now` with its last (epoch, sequence).
    pub(super) fn insert(&mut self, origin: Ipv6Addr, last: (u64, u64), now: Time) {
        let previous = self.entries.insert(origin, PrunedOrigin { last, at: now });
        if previous.is_none_or(|p| p.at != now) {
            self.order.push_back((now, origin));
        }
        while self.entries.len() > self.max {
            self.pop_oldest();
        }
        if self.order.len() > 2 * self.max {
            // Drop the skipped entries so the order list stays proportional to the map.
            let entries = &self.entries;
            self.order
                .retain(|(at, o)| entries.get(o).is_some_and(|e| e.at == *at));
        }
    }

    /// Returns the last (epoch, sequence) of a removed origin.
    pub(super) fn get(&self, origin: &Ipv6Addr) -> Option<(u64, u64)> {
        self.entries.get(origin).map(|e| e.last)
    }

    /// Forgets `origin` (it is back in the database).
    pub(super) fn remove(&mut self, origin: &Ipv6Addr) {
        self.entries.remove(origin);
    }

    /// Forgets the entries older than `forget_after`.
    pub(super) fn expire(&mut self, now: Time) {
        while let Some(&(at, origin)) = self.order.front() {
            if now.saturating_since(at) < self.forget_after {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&origin).is_some_and(|e| e.at == at) {
                self.entries.remove(&origin);
            }
        }
    }

    /// Returns how many origins are remembered.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn pop_oldest(&mut self) {
        while let Some((at, origin)) = self.order.pop_front() {
            if self.entries.get(&origin).is_some_and(|e| e.at == at) {
                self.entries.remove(&origin);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)
    }

    #[test]
    fn bounded_in_count_and_age() {
        let t0 = Time::ZERO;
        let mut p = PrunedOrigins::new(3, Duration::from_secs(600));
        for i in 0..10 {
            p.insert(
                a(i),
                (1, u64::from(i)),
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(&a(6)), None, "the oldest went first");
        assert_eq!(p.get(&a(9)), Some((1, 9)));
        // Re-inserting one refreshes it; the order list stays small.
        for _ in 0..100 {
            p.insert(a(9), (1, 10), t0 + Duration::from_secs(20));
        }
        assert!(p.order.len() <= 6);
        assert_eq!(p.get(&a(7)), Some((1, 7)));
        p.expire(t0 + Duration::from_secs(609));
        assert_eq!(p.get(&a(7)), None);
        assert_eq!(p.get(&a(9)), Some((1, 10)));
        p.expire(t0 + Duration::from_secs(620));
        assert_eq!(p.len(), 0);
    }
}
