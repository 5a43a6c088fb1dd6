//! Limits on peers that have not proved anything yet: how many connections and DTLS
//! associations may wait for a session, per listener and per source address, which one
//! gives way to a newcomer, how fast ClientHellos from one source prefix are looked at, and
//! the counters that show these limits at work (`status` counters).
//!
//! Everything here is pure bookkeeping over values the loop passes in (links, addresses and
//! the loop's clock); the loop applies the decisions.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use connectopus_core::LinkId;

/// A link must carry an established session this long after its transport connected, or it
/// is closed; keepalives do not extend it.
pub(super) const SESSION_DEADLINE: Duration = Duration::from_secs(15);

/// Most links of one listener waiting for a session that one source address may hold.
pub(super) const MAX_PENDING_PER_SOURCE: usize = 8;

/// Most TCP connections of one listener waiting for a session.
pub(super) const MAX_TCP_PENDING_PER_LISTENER: usize = 128;

/// Most bytes queued for one TCP link, all message kinds together: past it the peer does not
/// read, and the link is closed (data packets are dropped earlier, at `MAX_TCP_BACKLOG`).
pub(super) const MAX_TCP_QUEUE: usize = super::MAX_TCP_BACKLOG + 1024 * 1024;

/// A link of a listener that waits for its session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) link: LinkId,
    pub(super) source: IpAddr,
    pub(super) since: Instant,
}

/// Chooses the waiting link that gives way when one more arrives from `source`: the oldest of
/// `source` once it holds `per_source`; else, when the listener holds `per_listener`, the
/// oldest of the source that holds the most (so one busy source cannot keep others out).
pub(super) fn eviction(
    pending: &[Pending],
    source: IpAddr,
    per_source: usize,
    per_listener: usize,
) -> Option<LinkId> {
    let source = canonical(source);
    let mut per: BTreeMap<IpAddr, (usize, Pending)> = BTreeMap::new();
    for p in pending {
        let entry = per.entry(canonical(p.source)).or_insert((0, *p));
        entry.0 += 1;
        if p.since < entry.1.since {
            entry.1 = *p;
        }
    }
    if let Some((n, oldest)) = per.get(&source)
        && *n >= per_source
    {
        return Some(oldest.link);
    }
    if pending.len() < per_listener {
        return None;
    }
    per.values()
        .max_by(|(n1, o1), (n2, o2)| n1.cmp(n2).then(o2.since.cmp(&o1.since)))
        .map(|(_, oldest)| oldest.link)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The source prefix a ClientHello is rate-limited by: /64 for IPv6 (one subnet, one host's
/// worth of addresses), /24 for IPv4.
pub(super) fn hello_prefix(ip: IpAddr) -> (bool, u64) {
    match canonical(ip) {
        IpAddr::V4(v4) => (false, u64::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => (true, (u128::from(v6) >> 64) as u64),
    }
}

/// Number of per-prefix buckets: a fixed table, so a flood from many prefixes costs no memory.
const HELLO_BUCKETS: usize = 1024;
/// ClientHellos per second (and burst) one source prefix may have looked at.
const HELLO_RATE_PER_PREFIX: f64 = 20.0;
const HELLO_BURST_PER_PREFIX: f64 = 40.0;
/// ClientHellos per second (and burst) one listener looks at from all sources together.
const HELLO_RATE_TOTAL: f64 = 1000.0;
const HELLO_BURST_TOTAL: f64 = 1000.0;

/// DHE key exchanges per second (and burst) a node computes for peers whose address a cookie
/// proved but whose prefix never had a session with it, all together. The DHE-PSK suite's
/// key exchange costs the server milliseconds of CPU (docs/dtls.md); a handshake past the
/// budget gets the X25519 suite instead, so nobody is turned away.
const DHE_RATE_NEW_PREFIXES: f64 = 20.0;
const DHE_BURST_NEW_PREFIXES: f64 = 40.0;
/// DHE key exchanges per second (and burst) for one source prefix, known or not: one address
/// replaying its cookie cannot spend the node's whole budget.
const DHE_RATE_PER_PREFIX: f64 = 2.0;
const DHE_BURST_PER_PREFIX: f64 = 8.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// The prefix the bucket counts for (`None`: unused).
    key: Option<(bool, u64)>,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        key: None,
        tokens: 0.0,
        last: Duration::ZERO,
    };

    fn take(&mut self, now: Duration, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets for the datagrams from unknown addresses that a DTLS listener hands to
/// OpenSSL (each costs an `SSL` object and an HMAC): one per source prefix, in a fixed table
/// indexed by a keyed hash (a prefix that lands on a slot another uses takes it over), and one
/// for the listener. Checked before anything is allocated.
///
/// Prefixes that completed a session with this node before (at most
/// [`super::hello_filter::MAX_FILTER_PREFIXES`], the most recent kept) have a bucket of their
/// own and do not draw on the node's total: a flood from many other prefixes cannot keep a
/// known peer from coming back (a restart, a new association).
#[derive(Debug)]
pub(super) struct HelloLimiter {
    hasher: std::collections::hash_map::RandomState,
    buckets: Box<[Bucket]>,
    total: Bucket,
    /// Prefixes that had a session, each with its own hello and DHE buckets and when it last
    /// had one.
    known: Vec<(Bucket, Bucket, Duration)>,
    /// DHE buckets of other prefixes (the same fixed table and hash as `buckets`).
    dhe_buckets: Box<[Bucket]>,
    /// DHE key exchanges for prefixes that never had a session, all together.
    dhe_new_prefixes: Bucket,
    /// ClientHellos (datagrams from unknown addresses) looked at, allowed or not.
    seen: u64,
}

impl HelloLimiter {
    pub(super) fn new() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            buckets: vec![Bucket::EMPTY; HELLO_BUCKETS].into_boxed_slice(),
            total: Bucket {
                key: None,
                tokens: HELLO_BURST_TOTAL,
                last: Duration::ZERO,
            },
            known: Vec::new(),
            dhe_buckets: vec![Bucket::EMPTY; HELLO_BUCKETS].into_boxed_slice(),
            dhe_new_prefixes: Bucket {
                key: None,
                tokens: DHE_BURST_NEW_PREFIXES,
                last: Duration::ZERO,
            },
            seen: 0,
        }
    }

    /// Returns whether the node may compute a DHE key exchange for a peer at `source` whose
    /// cookie proved its address (else the handshake gets the X25519 suite): each prefix has
    /// a small bucket of its own, and prefixes that never had a session also share the
    /// node's budget for them.
    pub(super) fn allow_dhe(&mut self, source: IpAddr, now: Duration) -> bool {
        let key = hello_prefix(source);
        if let Some((_, dhe, _)) = self.known.iter_mut().find(|(b, _, _)| b.key == Some(key)) {
            return dhe.take(now, DHE_RATE_PER_PREFIX, DHE_BURST_PER_PREFIX);
        }
        let slot = self.slot(key);
        take_prefix(
            &mut self.dhe_buckets,
            slot,
            key,
            now,
            DHE_RATE_PER_PREFIX,
            DHE_BURST_PER_PREFIX,
        ) && self
            .dhe_new_prefixes
            .take(now, DHE_RATE_NEW_PREFIXES, DHE_BURST_NEW_PREFIXES)
    }

    /// Returns whether a datagram from `source` may be looked at now (`now`: the loop's clock).
    pub(super) fn allow(&mut self, source: IpAddr, now: Duration) -> bool {
        self.seen += 1;
        let key = hello_prefix(source);
        if let Some((bucket, _, _)) = self.known.iter_mut().find(|(b, _, _)| b.key == Some(key)) {
            return bucket.take(now, HELLO_RATE_PER_PREFIX, HELLO_BURST_PER_PREFIX);
        }
        let slot = self.slot(key);
        take_prefix(
            &mut self.buckets,
            slot,
            key,
            now,
            HELLO_RATE_PER_PREFIX,
            HELLO_BURST_PER_PREFIX,
        ) && self.total.take(now, HELLO_RATE_TOTAL, HELLO_BURST_TOTAL)
    }

    /// The slot of a prefix in the fixed bucket tables (a keyed hash).
    fn slot(&self, key: (bool, u64)) -> usize {
        (self.hasher.hash_one(key) % HELLO_BUCKETS as u64) as usize
    }

    /// Remembers that a peer at `source` completed a session; returns whether the list of
    /// known prefixes changed.
    pub(super) fn remember(&mut self, source: IpAddr, now: Duration) -> bool {
        let key = hello_prefix(source);
        if let Some((_, _, when)) = self.known.iter_mut().find(|(b, _, _)| b.key == Some(key)) {
            *when = now;
            return false;
        }
        let bucket = Bucket {
            key: Some(key),
            tokens: HELLO_BURST_PER_PREFIX,
            last: now,
        };
        let dhe = Bucket {
            key: Some(key),
            tokens: DHE_BURST_PER_PREFIX,
            last: now,
        };
        if self.known.len() < super::hello_filter::MAX_FILTER_PREFIXES {
            self.known.push((bucket, dhe, now));
        } else if let Some(oldest) = self.known.iter_mut().min_by_key(|(_, _, when)| *when) {
            *oldest = (bucket, dhe, now);
        }
        true
    }

    /// The prefixes that had a session, for the kernel filter.
    pub(super) fn known_prefixes(&self) -> Vec<(bool, u64)> {
        self.known.iter().filter_map(|(b, _, _)| b.key).collect()
    }

    /// ClientHellos looked at so far.
    pub(super) fn seen(&self) -> u64 {
        self.seen
    }
}

/// Takes a token from the bucket of prefix `key` in a fixed table at `slot`; a prefix that
/// lands on a slot another uses takes it over with a full burst.
fn take_prefix(
    table: &mut [Bucket],
    slot: usize,
    key: (bool, u64),
    now: Duration,
    rate: f64,
    burst: f64,
) -> bool {
    let Some(bucket) = table.get_mut(slot) else {
        return false;
    };
    if bucket.key != Some(key) {
        *bucket = Bucket {
            key: Some(key),
            tokens: burst,
            last: now,
        };
    }
    bucket.take(now, rate, burst)
}

impl Default for HelloLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// What the limits on unauthenticated peers did, for `status` and for tests that must see them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LimitCounters {
    /// Datagrams from unknown addresses a DTLS listener dropped before looking at them.
    pub(super) dtls_hellos_rate_limited: u64,
    /// Datagrams from unknown addresses a DTLS listener handed to OpenSSL (past the limiter).
    pub(super) dtls_hellos_looked_at: u64,
    /// DTLS handshakes that got the X25519 suite because their prefix's or the node's DHE
    /// budget was spent.
    pub(super) dtls_handshakes_without_dhe: u64,
    /// Times the kernel's ClientHello filter went on (a flood began).
    pub(super) dtls_hello_filter_engaged: u64,
    /// Waiting links (TCP or DTLS) closed to make room for a newcomer.
    pub(super) handshakes_evicted: u64,
    /// Links closed because no session was established within [`SESSION_DEADLINE`].
    pub(super) session_deadline_closed: u64,
    /// TCP links closed because their peer let more than [`MAX_TCP_QUEUE`] bytes queue up.
    pub(super) tcp_queue_overflow_closed: u64,
}

impl LimitCounters {
    /// Adds the counters to a status counter map.
    pub(super) fn report(&self, map: &mut BTreeMap<String, u64>) {
        for (name, value) in [
            ("dtls_hellos_rate_limited", self.dtls_hellos_rate_limited),
            ("dtls_hellos_looked_at", self.dtls_hellos_looked_at),
            (
                "dtls_handshakes_without_dhe",
                self.dtls_handshakes_without_dhe,
            ),
            ("dtls_hello_filter_engaged", self.dtls_hello_filter_engaged),
            ("handshakes_evicted", self.handshakes_evicted),
            ("session_deadline_closed", self.session_deadline_closed),
            ("tcp_queue_overflow_closed", self.tcp_queue_overflow_closed),
        ] {
            map.insert(name.to_owned(), value);
        }
    }
}

impl super::Daemon {
    /// Closes links that have not had an established session within [`SESSION_DEADLINE`] of
    /// connecting: a peer that completes the transport and then only sends keepalives (or
    /// nothing, or hellos that are refused) is not kept.
    pub(super) fn enforce_session_deadline(&mut self) {
        let late: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.had_session && l.connected_at.elapsed() > SESSION_DEADLINE)
            .map(|(id, _)| *id)
            .collect();
        for link in late {
            tracing::info!(%link, deadline = ?SESSION_DEADLINE, "no session in time");
            self.limit_counters.session_deadline_closed += 1;
            self.close_link(link, "no session within the deadline");
        }
    }

    /// Makes room on DTLS listener `endpoint` for one more half-open association from `source`.
    pub(super) fn make_room_for_dtls(&mut self, endpoint: usize, source: IpAddr) {
        let pending: Vec<Pending> = self
            .links
            .iter()
            .filter(|(_, l)| {
                !l.announced
                    && matches!(&l.transport, super::Transport::Dtls(d) if d.endpoint == endpoint)
            })
            .map(|(id, l)| Pending {
                link: *id,
                source: l.remote.ip(),
                since: l.connected_at,
            })
            .collect();
        let limit = crate::dtls_link::MAX_HALF_OPEN;
        self.evict(&pending, source, limit);
    }

    /// Makes room on TCP listener `backend` for one more connection from `source` that waits
    /// for its session.
    pub(super) fn make_room_for_tcp(&mut self, backend: &str, source: IpAddr) {
        let pending: Vec<Pending> = self
            .links
            .iter()
            .filter(|(_, l)| {
                !l.had_session
                    && l.ended.is_none()
                    && l.backend == backend
                    && matches!(
                        l.transport,
                        super::Transport::Tcp(_) | super::Transport::TcpOnWorker { .. }
                    )
            })
            .map(|(id, l)| Pending {
                link: *id,
                source: l.remote.ip(),
                since: l.connected_at,
            })
            .collect();
        self.evict(&pending, source, MAX_TCP_PENDING_PER_LISTENER);
    }

    fn evict(&mut self, pending: &[Pending], source: IpAddr, per_listener: usize) {
        if let Some(link) = eviction(pending, source, MAX_PENDING_PER_SOURCE, per_listener) {
            tracing::debug!(%link, %source, "evicting a waiting link for a newcomer");
            self.limit_counters.handshakes_evicted += 1;
            self.close_link(link, "evicted for a newer handshake");
        }
    }

    /// Closes a TCP link whose peer lets its queue grow past [`MAX_TCP_QUEUE`] (it does not
    /// read); returns whether it did.
    pub(super) fn close_if_tcp_queue_overflows(&mut self, link: LinkId) -> bool {
        let over = self.links.get(&link).is_some_and(
            |l| matches!(&l.transport, super::Transport::Tcp(t) if t.tx.len() > MAX_TCP_QUEUE),
        );
        if over {
            tracing::info!(%link, limit = MAX_TCP_QUEUE, "peer does not read: closing");
            self.limit_counters.tcp_queue_overflow_closed += 1;
            self.close_link(link, "peer does not read");
        }
        over
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pending(link: u64, source: &str, age_ms: u64, now: Instant) -> Pending {
        Pending {
            link: LinkId(link),
            source: source.parse().unwrap(),
            since: now - Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn a_source_at_its_share_gives_way_to_itself() {
        let now = Instant::now();
        let list: Vec<Pending> = (0..3)
            .map(|i| pending(i, "2001:db8::1", 100 - i * 10, now))
            .collect();
        let new = "2001:db8::1".parse().unwrap();
        assert_eq!(eviction(&list, new, 3, 100), Some(LinkId(0)));
        assert_eq!(eviction(&list, new, 4, 100), None);
        // Another address is not held back by it.
        assert_eq!(
            eviction(&list, "2001:db8::2".parse().unwrap(), 3, 100),
            None
        );
    }

    #[test]
    fn a_full_listener_evicts_the_oldest_of_the_busiest_source() {
        let now = Instant::now();
        let mut list = vec![pending(1, "2001:db8::9", 1000, now)];
        list.extend((0..4).map(|i| pending(10 + i, "2001:db8::1", 500 - i * 10, now)));
        let new = "2001:db8::2".parse().unwrap();
        // The oldest overall (link 1) belongs to a quiet source: the flood's oldest goes.
        assert_eq!(eviction(&list, new, 8, 5), Some(LinkId(10)));
        assert_eq!(eviction(&list, new, 8, 6), None);
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_source() {
        let now = Instant::now();
        let list = vec![pending(1, "::ffff:198.18.0.1", 10, now)];
        assert_eq!(
            eviction(&list, "198.18.0.1".parse().unwrap(), 1, 100),
            Some(LinkId(1))
        );
    }

    #[test]
    fn hellos_are_limited_per_prefix_and_refill_with_time() {
        let mut limiter = HelloLimiter::new();
        let t0 = Duration::from_secs(100);
        let mut allowed = 0;
        for host in 0..1000u32 {
            // One /64, many addresses and ports.
            let ip: IpAddr = format!("2001:db8:1::{host:x}").parse().unwrap();
            allowed += usize::from(limiter.allow(ip, t0));
        }
        assert_eq!(allowed, HELLO_BURST_PER_PREFIX as usize);
        // Another prefix is unaffected.
        assert!(limiter.allow("2001:db8:2::1".parse().unwrap(), t0));
        // A second later the prefix has its rate back.
        let t1 = t0 + Duration::from_secs(1);
        let again = (0..100)
            .filter(|_| limiter.allow("2001:db8:1::1".parse().unwrap(), t1))
            .count();
        assert_eq!(again, HELLO_RATE_PER_PREFIX as usize);
    }

    #[test]
    fn hellos_from_many_prefixes_are_capped_in_total() {
        let mut limiter = HelloLimiter::new();
        let t0 = Duration::from_secs(5);
        let allowed = (0..20_000u32)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
                    .parse()
                    .unwrap();
                limiter.allow(ip, t0)
            })
            .count();
        assert_eq!(allowed, HELLO_BURST_TOTAL as usize);
    }

    #[test]
    fn a_prefix_that_had_a_session_is_not_held_back_by_a_flood_from_others() {
        let mut limiter = HelloLimiter::new();
        let t0 = Duration::from_secs(5);
        assert!(limiter.remember("2001:db8:7::5".parse().unwrap(), t0));
        assert!(!limiter.remember("2001:db8:7::6".parse().unwrap(), t0));
        assert_eq!(
            limiter.known_prefixes(),
            vec![(true, 0x2001_0db8_0007_0000)]
        );
        // The node's total is spent by others.
        for i in 0..5_000u32 {
            let ip: IpAddr = format!("2001:db8:99:{i:x}::1").parse().unwrap();
            limiter.allow(ip, t0);
        }
        assert!(!limiter.allow("2001:db8:98::1".parse().unwrap(), t0));
        // The known prefix still has its own share, and only that.
        let known: IpAddr = "2001:db8:7::9".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.allow(known, t0)).count();
        assert_eq!(allowed, HELLO_BURST_PER_PREFIX as usize);
        assert_eq!(limiter.seen(), 5_000 + 1 + 100);
    }

    #[test]
    fn dhe_key_exchanges_are_limited_per_prefix_and_for_new_prefixes_together() {
        let mut limiter = HelloLimiter::new();
        let t0 = Duration::from_secs(5);
        assert!(limiter.remember("2001:db8:7::5".parse().unwrap(), t0));
        // One address replaying its cookie: its prefix's burst, then nothing.
        let one: IpAddr = "2001:db8:55::1".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.allow_dhe(one, t0)).count();
        assert_eq!(allowed, DHE_BURST_PER_PREFIX as usize);
        // A thousand new prefixes share the node's budget (less what `one` took).
        let allowed = (0..1000u32)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8:99:{i:x}::1").parse().unwrap();
                limiter.allow_dhe(ip, t0)
            })
            .count();
        assert_eq!(
            allowed,
            (DHE_BURST_NEW_PREFIXES - DHE_BURST_PER_PREFIX) as usize
        );
        // A prefix that had a session has its own bucket, outside the node's budget.
        let known: IpAddr = "2001:db8:7::9".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.allow_dhe(known, t0)).count();
        assert_eq!(allowed, DHE_BURST_PER_PREFIX as usize);
        // A second later new prefixes have the node's rate back, and only that.
        let t1 = t0 + Duration::from_secs(1);
        let again = (0..1000u32)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8:98:{i:x}::1").parse().unwrap();
                limiter.allow_dhe(ip, t1)
            })
            .count();
        assert_eq!(again, DHE_RATE_NEW_PREFIXES as usize);
    }

    #[test]
    fn the_known_prefixes_are_bounded_and_the_oldest_goes() {
        let mut limiter = HelloLimiter::new();
        let max = crate::daemon::hello_filter::MAX_FILTER_PREFIXES as u64;
        for i in 0..=max {
            let ip: IpAddr = format!("2001:db8:{i:x}::1").parse().unwrap();
            assert!(limiter.remember(ip, Duration::from_secs(i)));
        }
        let known = limiter.known_prefixes();
        assert_eq!(known.len() as u64, max);
        assert!(!known.contains(&(true, 0x2001_0db8_0000_0000)));
        assert!(known.contains(&(true, 0x2001_0db8_0000_0000 | (max << 16))));
    }
}
