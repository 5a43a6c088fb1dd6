use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const LEASE: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(7);

fn config(pool: &str) -> LeaseTableConfig {
    LeaseTableConfig {
        pool: pool.parse().unwrap(),
        lease: LEASE,
        grace: GRACE,
    }
}

fn key(n: u8) -> HolderKey {
    [n; 32]
}

fn at(secs: u64) -> Time {
    Time::from_duration(Duration::from_secs(secs))
}

fn addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn never(_: Ipv6Addr) -> bool {
    false
}

#[test]
fn allocation_order_and_epochs() {
    let mut t = LeaseTable::new(config("fd00:cafe:0:e1::/112"), 100);
    // Hash with probing: some address of the pool, never offset 0.
    let a = t.allocate(at(0), key(1), "a", None, never).unwrap();
    assert!(t.in_pool(a.address));
    assert_eq!((a.epoch, a.renewal, a.expires), (100, 0, at(20)));
    // The hint wins over the hash when free; offset 0 and addresses outside are no hints.
    let b = t
        .allocate(at(1), key(2), "b", Some(addr("fd00:cafe:0:e1::7")), never)
        .unwrap();
    assert_eq!((b.address, b.epoch), (addr("fd00:cafe:0:e1::7"), 101));
    let c = t
        .allocate(at(1), key(3), "c", Some(addr("fd00:cafe:0:e1::")), never)
        .unwrap();
    assert_ne!(c.address, addr("fd00:cafe:0:e1::"));
    // A taken hint falls through to the hash.
    let d = t
        .allocate(at(1), key(4), "d", Some(b.address), never)
        .unwrap();
    assert_ne!(d.address, b.address);
    // Joining again while active: the same address, a higher epoch, the new name.
    let again = t.allocate(at(2), key(2), "b2", None, never).unwrap();
    assert_eq!(
        (again.address, again.epoch, again.name.as_str()),
        (b.address, 104, "b2")
    );
    assert_eq!(t.lease_of(&key(2)), Some(&again));
    assert_eq!(t.leases().count(), 4);
    // Busy addresses (an origin there updates) are skipped, also as a hint.
    let busy_hint = addr("fd00:cafe:0:e1::9");
    let e = t
        .allocate(at(3), key(5), "e", Some(busy_hint), |a| a == busy_hint)
        .unwrap();
    assert_ne!(e.address, busy_hint);
}

#[test]
fn hash_probing_is_deterministic_per_key() {
    let mut one = LeaseTable::new(config("fd00::/64"), 1);
    let mut two = LeaseTable::new(config("fd00::/64"), 1);
    let a = one.allocate(at(0), key(9), "a", None, never).unwrap();
    let b = two.allocate(at(0), key(9), "a", None, never).unwrap();
    assert_eq!(a.address, b.address);
    // Probing steps past a busy hashed address to the next one.
    let mut three = LeaseTable::new(config("fd00::/64"), 1);
    let c = three
        .allocate(at(0), key(9), "a", None, |x| x == a.address)
        .unwrap();
    assert_eq!(u128::from(c.address), u128::from(a.address) + 1);
}

#[test]
fn exhaustion_and_names() {
    // A /126 holds three addresses besides offset 0.
    let mut t = LeaseTable::new(config("fd00::/126"), 1);
    for n in 1..=3 {
        t.allocate(at(0), key(n), &format!("n{n}"), None, never)
            .unwrap();
    }
    assert_eq!(
        t.allocate(at(0), key(4), "n4", None, never),
        Err(AllocError::PoolExhausted)
    );
    assert_eq!(
        t.allocate(at(0), key(4), "n1", None, never),
        Err(AllocError::NameTaken)
    );
    let addresses: Vec<_> = t.leases().map(|l| l.address).collect();
    assert!(!addresses.contains(&addr("fd00::")));
}

#[test]
fn release_and_expiry_hold_addresses_down_for_grace() {
    let mut t = LeaseTable::new(config("fd00::/126"), 1);
    let a = t
        .allocate(at(0), key(1), "a", Some(addr("fd00::1")), never)
        .unwrap();
    // A release by the wrong key or epoch does nothing.
    assert_eq!(t.release(at(5), key(2), a.address, a.epoch), None);
    assert_eq!(t.release(at(5), key(1), a.address, a.epoch + 1), None);
    assert_eq!(
        t.release(at(5), key(1), a.address, a.epoch),
        Some(a.clone())
    );
    assert!(!t.is_free(at(11), a.address));
    assert!(t.is_free(at(12), a.address));
    // Another key asking for it before the hold-down ends gets another address.
    let b = t
        .allocate(at(11), key(2), "b", Some(a.address), never)
        .unwrap();
    assert_ne!(b.address, a.address);
    assert_eq!(t.expire(at(12)), Vec::new());
    assert_eq!(t.hold_down_len(), 0);
    // Expiry: at its end the lease goes, and its address waits until expiry + grace.
    assert_eq!(t.next_deadline(), Some(b.expires));
    let expired = t.expire(b.expires);
    assert_eq!(expired, vec![b.clone()]);
    assert!(!t.is_free(b.expires + (GRACE - Duration::from_millis(1)), b.address));
    assert!(t.is_free(b.expires + GRACE, b.address));
    assert_eq!(t.next_deadline(), Some(b.expires + GRACE));
}

#[test]
fn renewals() {
    let mut t = LeaseTable::new(config("fd00::/120"), 1);
    let a = t.allocate(at(0), key(1), "a", None, never).unwrap();
    let r = t.renew(at(10), key(1), a.address, a.epoch, 0, "a").unwrap();
    assert_eq!((r.renewal, r.expires), (1, at(30)));
    let generation = t.generation();
    for (k, epoch, address) in [
        (key(2), a.epoch, a.address),
        (key(1), a.epoch + 1, a.address),
        (key(1), a.epoch, addr("fd00::ff")),
        (key(1), a.epoch, addr("fd01::1")),
    ] {
        assert_eq!(
            t.renew(at(11), k, address, epoch, 1, "a"),
            Err(RenewError::UnknownLease)
        );
    }
    assert_eq!(t.generation(), generation);
    // Too late: the lease is over even before `expire` ran.
    assert_eq!(
        t.renew(at(30), key(1), a.address, a.epoch, 1, "a"),
        Err(RenewError::UnknownLease)
    );
}

#[test]
fn restart_with_the_persisted_table() {
    let cfg = config("fd00::/120");
    let mut t = LeaseTable::new(cfg, 50);
    let a = t.allocate(at(0), key(1), "a", None, never).unwrap();
    let b = t.allocate(at(0), key(2), "b", None, never).unwrap();
    t.renew(at(15), key(2), b.address, b.epoch, 0, "b").unwrap();
    let c = t.allocate(at(1), key(3), "c", None, never).unwrap();
    t.release(at(2), key(3), c.address, c.epoch).unwrap();
    // Written at t=16 s, Unix 1_000_000 ms.
    let disk = t.persisted(at(16), 1_000_000);
    assert_eq!(disk.next_epoch, 53);
    assert_eq!(disk.leases.len(), 2);
    // A hold-down already over when written is written as over (the current time).
    assert_eq!(disk.hold_down, vec![(c.address, 1_000_000)]);
    let mine = disk.leases.iter().find(|l| l.key == key(2)).unwrap();
    assert_eq!(mine.expires_unix_ms, 1_019_000);
    // Restarted at Unix 1_010_000 with a lower routing epoch: a renewal after the write is
    // covered by `now + lease`, the epoch does not go back.
    let r = LeaseTable::restore(cfg, Some(&disk), 10, at(0), 1_010_000);
    assert_eq!(r.next_epoch(), 53);
    assert_eq!(r.lease_of(&key(1)).unwrap().expires, at(20));
    assert_eq!(r.lease_of(&key(2)).unwrap().expires, at(20));
    assert_eq!(r.lease_of(&key(1)).unwrap().address, a.address);
    assert!(r.quarantined(at(0)).is_none());
    // A shrunk pool drops the leases outside it.
    let small = LeaseTableConfig {
        pool: "fd00::/127".parse().unwrap(),
        ..cfg
    };
    let r = LeaseTable::restore(small, Some(&disk), 10, at(0), 1_010_000);
    assert!(r.leases().all(|l| l.address == addr("fd00::1")));
}

#[test]
fn restart_without_the_table_quarantines_and_re_adopts() {
    let cfg = config("fd00::/120");
    let mut t = LeaseTable::restore(cfg, None, 10, at(100), 0);
    let until = at(127);
    assert_eq!(t.quarantined(at(100)), Some(until));
    assert_eq!(
        t.allocate(at(126), key(1), "a", None, never),
        Err(AllocError::Restarting { until })
    );
    // A live holder renews: its lease is adopted with its epoch, and epochs stay above it.
    let l = t
        .renew(at(101), key(1), addr("fd00::5"), 900, 3, "a")
        .unwrap();
    assert_eq!((l.epoch, l.renewal, l.expires), (900, 4, at(121)));
    assert_eq!(t.next_epoch(), 901);
    // Another key cannot adopt the same address, nor the same key a second one.
    assert_eq!(
        t.renew(at(102), key(2), addr("fd00::5"), 901, 0, "b"),
        Err(RenewError::UnknownLease)
    );
    assert_eq!(
        t.renew(at(102), key(1), addr("fd00::6"), 900, 0, "a"),
        Err(RenewError::UnknownLease)
    );
    // Nor another key a second lease of the same name (an old certificate for a name that
    // went to another key since): the table would refuse its own file at the next start.
    assert_eq!(
        t.renew(at(102), key(3), addr("fd00::8"), 902, 0, "a"),
        Err(RenewError::UnknownLease)
    );
    t.expire(until);
    assert_eq!(t.quarantined(until), None);
    let b = t.allocate(until, key(2), "b", None, never).unwrap();
    assert_eq!(b.epoch, 901);
    // After the quarantine nothing is adopted any more.
    assert_eq!(
        t.renew(until, key(3), addr("fd00::7"), 5, 0, "c"),
        Err(RenewError::UnknownLease)
    );
}

/// One step of the proptest.
#[derive(Debug, Clone)]
enum Op {
    Allocate { key: u8, hint: u8 },
    Renew { key: u8 },
    Release { key: u8 },
    Advance { ms: u32 },
    Restart { with_disk: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..10).prop_map(|(key, hint)| Op::Allocate { key, hint }),
        3 => (0u8..6).prop_map(|key| Op::Renew { key }),
        1 => (0u8..6).prop_map(|key| Op::Release { key }),
        3 => (0u32..15_000).prop_map(|ms| Op::Advance { ms }),
        1 => any::<bool>().prop_map(|with_disk| Op::Restart { with_disk }),
    ]
}

/// What a holder believes: it stops using the address at `until`, unconditionally.
#[derive(Debug, Clone)]
struct Holder {
    address: Ipv6Addr,
    epoch: u64,
    renewal: u32,
    until: Time,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// §1.9: never two active leases for one address, no reissue to another key before the
    /// last holder's end plus grace, grant epochs only grow, across restarts with and without
    /// the persisted table.
    #[test]
    fn never_two_holders_and_epochs_only_grow(ops in proptest::collection::vec(op(), 1..120)) {
        let cfg = config("fd00::/125");
        let mut now = at(1);
        let mut unix_ms = 1_000_000u64;
        let mut floor = 1_000u64;
        let mut table = LeaseTable::new(cfg, floor);
        // The last write: grants are persisted before they are answered, nothing else is.
        let mut disk = table.persisted(now, unix_ms);
        let mut holders: BTreeMap<u8, Holder> = BTreeMap::new();
        // Per address: when another key may get it (last holder's end + grace), and who.
        let mut free_at: BTreeMap<Ipv6Addr, (Time, u8)> = BTreeMap::new();
        let mut last_epoch = 0u64;
        for op in ops {
            match op {
                Op::Allocate { key: k, hint } => {
                    let hint = Some(Ipv6Addr::from(u128::from(addr("fd00::")) + u128::from(hint)));
                    if let Ok(lease) = table.allocate(now, key(k), &format!("n{k}"), hint, never) {
                        prop_assert!(table.in_pool(lease.address));
                        prop_assert!(lease.epoch > last_epoch, "epoch {} after {}", lease.epoch, last_epoch);
                        last_epoch = lease.epoch;
                        if let Some(&(when, who)) = free_at.get(&lease.address) {
                            prop_assert!(who == k || now >= when,
                                "{} to key {} at {} but key {} holds it until {} + grace", lease.address, k, now, who, when);
                        }
                        for (other, h) in &holders {
                            if *other != k && h.until > now {
                                prop_assert_ne!(h.address, lease.address, "a live holder has it");
                            }
                        }
                        disk = table.persisted(now, unix_ms);
                        holders.insert(k, Holder { address: lease.address, epoch: lease.epoch, renewal: 0, until: now + LEASE });
                        free_at.insert(lease.address, (now + LEASE + GRACE, k));
                    }
                }
                Op::Renew { key: k } => {
                    let Some(h) = holders.get_mut(&k).filter(|h| h.until > now) else { continue };
                    match table.renew(now, key(k), h.address, h.epoch, h.renewal, &format!("n{k}")) {
                        Ok(lease) => {
                            prop_assert_eq!(lease.address, h.address);
                            prop_assert!(lease.expires >= now + LEASE);
                            h.renewal = lease.renewal;
                            h.until = now + LEASE;
                            free_at.insert(h.address, (now + LEASE + GRACE, k));
                        }
                        Err(RenewError::UnknownLease) => {
                            // The holder lets go at once.
                            h.until = now;
                        }
                    }
                }
                Op::Release { key: k } => {
                    let Some(h) = holders.get_mut(&k).filter(|h| h.until > now) else { continue };
                    table.release(now, key(k), h.address, h.epoch);
                    h.until = now;
                    free_at.insert(h.address, (now + GRACE, k));
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(u64::from(ms));
                    unix_ms += u64::from(ms);
                    for lease in table.expire(now) {
                        // The issuer never lets a lease go while its holder still uses it.
                        if let Some(h) = holders.values().find(|h| h.address == lease.address && h.epoch == lease.epoch) {
                            prop_assert!(h.until <= now);
                        }
                    }
                }
                Op::Restart { with_disk } => {
                    // The routing epoch is the wall clock in nanoseconds: far above any grant.
                    floor += 1_000_000;
                    table = LeaseTable::restore(cfg, with_disk.then_some(&disk), floor, now, unix_ms);
                    disk = table.persisted(now, unix_ms);
                }
            }
            // One lease per key, each inside the pool, and the holders' view agrees: every
            // live holder's lease is still in the table or the table is quarantined.
            let mut keys = std::collections::BTreeSet::new();
            for l in table.leases() {
                prop_assert!(keys.insert(l.key));
                prop_assert!(table.in_pool(l.address));
            }
            for h in holders.values().filter(|h| h.until > now) {
                let held = table.lease_at(h.address).is_some_and(|l| l.epoch == h.epoch && l.expires >= h.until);
                prop_assert!(held || table.quarantined(now).is_some(), "{h:?} lost at {now}");
            }
        }
    }
}
