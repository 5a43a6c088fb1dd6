//! `<config>.leases`, an issuer's lease table on disk (`docs/dynamic-mesh.md` §1.7): the JSON
//! form, the checks a loaded table must pass (a damaged but parsable file is refused, saying
//! what is wrong, and the pool is quarantined as for a lost table), and the atomic write.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use connectopus_core::identity::hex;
use connectopus_core::lease_table::{ContainerKey, MAX_LEASES, PersistedLease, PersistedLeases};
use connectopus_wire::Prefix;
use serde::{Deserialize, Serialize};

/// `<config>.leases` on disk (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    pool: String,
    next_epoch: u64,
    leases: Vec<LeaseEntry>,
    hold_down: Vec<HoldDownEntry>,
    quarantine_until_unix_ms: Option<u64>,
    /// The wall clock at the write (Unix ms; absent in older files).
    #[serde(default)]
    written_unix_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseEntry {
    address: Ipv6Addr,
    /// The holder's ed25519 key, hex.
    key: String,
    name: String,
    epoch: u64,
    renewal: u32,
    expires_unix_ms: u64,
    /// The xid of the Renew that made the current renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_xid: Option<u64>,
    /// A container's lease: its CNI key (absent for ephemeral nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerEntry>,
}

/// The CNI key of a container's lease.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerEntry {
    network: String,
    container_id: String,
    ifname: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldDownEntry {
    address: Ipv6Addr,
    until_unix_ms: u64,
}

/// Encodes a table as `<config>.leases` holds it.
pub(crate) fn encode(table: &PersistedLeases) -> std::io::Result<Vec<u8>> {
    let file = LeaseFile {
        version: 1,
        pool: table.pool.to_string(),
        next_epoch: table.next_epoch,
        leases: table
            .leases
            .iter()
            .map(|l| LeaseEntry {
                address: l.address,
                key: hex(&l.key),
                name: l.name.clone(),
                epoch: l.epoch,
                renewal: l.renewal,
                expires_unix_ms: l.expires_unix_ms,
                renew_xid: l.renew_xid,
                container: l.container.as_ref().map(|c| ContainerEntry {
                    network: c.network.clone(),
                    container_id: c.container_id.clone(),
                    ifname: c.ifname.clone(),
                }),
            })
            .collect(),
        hold_down: table
            .hold_down
            .iter()
            .map(|(address, until)| HoldDownEntry {
                address: *address,
                until_unix_ms: *until,
            })
            .collect(),
        quarantine_until_unix_ms: table.quarantine_until_unix_ms,
        written_unix_ms: table.written_unix_ms,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Decodes `<config>.leases` and checks that it is a table this node could have written;
/// any error means the table is lost (and says what is wrong).
pub(crate) fn decode(bytes: &[u8]) -> Result<PersistedLeases> {
    let file: LeaseFile = serde_json::from_slice(bytes).context("not a lease table")?;
    if file.version != 1 {
        anyhow::bail!("lease table version {} is unknown", file.version);
    }
    let pool = parse_prefix(&file.pool)?;
    let mut leases = Vec::with_capacity(file.leases.len().min(MAX_LEASES));
    for l in file.leases {
        leases.push(PersistedLease {
            address: l.address,
            key: parse_key(&l.key)?,
            name: l.name,
            epoch: l.epoch,
            renewal: l.renewal,
            expires_unix_ms: l.expires_unix_ms,
            renew_xid: l.renew_xid,
            container: l.container.map(|c| ContainerKey {
                network: c.network,
                container_id: c.container_id,
                ifname: c.ifname,
            }),
        });
    }
    let table = PersistedLeases {
        pool,
        next_epoch: file.next_epoch,
        leases,
        hold_down: file
            .hold_down
            .into_iter()
            .map(|h| (h.address, h.until_unix_ms))
            .collect(),
        quarantine_until_unix_ms: file.quarantine_until_unix_ms,
        written_unix_ms: file.written_unix_ms,
    };
    validate(&table)?;
    Ok(table)
}

/// The highest `next_epoch` a table may hold: epochs are wall-clock nanoseconds (year 2262
/// at 2^63), and grants count up from it without wrapping.
pub(crate) const MAX_NEXT_EPOCH: u64 = 1 << 63;
/// How far after its write a time in the table may lie: a lease is at most 1 h, and a grace
/// or a quarantine (lease + grace) is far shorter than a day.
pub(crate) const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Checks what parsing cannot: bounds and consistency (`docs/dynamic-mesh.md` §1.7).
fn validate(t: &PersistedLeases) -> Result<()> {
    let in_pool = |a: Ipv6Addr| t.pool.contains(a) && a != t.pool.addr();
    if t.next_epoch == 0 || t.next_epoch > MAX_NEXT_EPOCH {
        anyhow::bail!("next_epoch {} is out of range (1..=2^63)", t.next_epoch);
    }
    if t.leases.len() > MAX_LEASES || t.hold_down.len() > MAX_LEASES {
        anyhow::bail!(
            "{} leases and {} hold-downs: more than {MAX_LEASES}",
            t.leases.len(),
            t.hold_down.len()
        );
    }
    // Times lie at most a day after the write (older files, without it, are not bounded).
    let late = |what: &str, at: u64| -> Result<()> {
        if t.written_unix_ms != 0 && at > t.written_unix_ms.saturating_add(MAX_AHEAD_MS) {
            anyhow::bail!(
                "{what} ends at {at} ms, more than a day after the table was written ({} ms)",
                t.written_unix_ms
            );
        }
        Ok(())
    };
    let mut addresses = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut names = BTreeSet::new();
    for l in &t.leases {
        let what = format!("lease of {}", l.address);
        if !in_pool(l.address) {
            anyhow::bail!("{what}: not an address of the pool {}", t.pool);
        }
        if !addresses.insert(l.address) {
            anyhow::bail!("{what}: the address is leased twice");
        }
        if !keys.insert(l.key) {
            anyhow::bail!("{what}: its key holds another lease too");
        }
        if connectopus_wire::check_name(&l.name).is_err() {
            anyhow::bail!("{what}: `{}` is not a valid name", l.name.escape_debug());
        }
        if !names.insert(l.name.as_str()) {
            anyhow::bail!("{what}: the name `{}` is leased twice", l.name);
        }
        if l.epoch == 0 || l.epoch >= t.next_epoch {
            anyhow::bail!(
                "{what}: epoch {} is not below next_epoch {}",
                l.epoch,
                t.next_epoch
            );
        }
        match &l.container {
            // A container's lease never expires: its `expires_unix_ms` is not bounded. Its key
            // is derived from its CNI key, which must be one the node accepts in an ADD.
            Some(container) => {
                check_container(container).with_context(|| what.clone())?;
                if l.key != container.holder_key() {
                    anyhow::bail!("{what}: its key is not its container's");
                }
                if l.renew_xid.is_some() {
                    anyhow::bail!("{what}: a container's lease has no renewal");
                }
            }
            None => late(&what, l.expires_unix_ms)?,
        }
    }
    let mut held = BTreeSet::new();
    for &(address, until) in &t.hold_down {
        if !in_pool(address) || !held.insert(address) {
            anyhow::bail!(
                "hold-down of {address}: not in the pool {}, or listed twice",
                t.pool
            );
        }
        late(&format!("hold-down of {address}"), until)?;
    }
    if let Some(until) = t.quarantine_until_unix_ms {
        late("the quarantine", until)?;
    }
    Ok(())
}

/// Checks a container's CNI key as the node checks an ADD's (`cni.rs`).
fn check_container(c: &ContainerKey) -> Result<()> {
    let max = super::cni::MAX_KEY_PART;
    if c.network.is_empty() || c.network.len() > max {
        anyhow::bail!(
            "container network `{}` is empty or too long",
            c.network.escape_debug()
        );
    }
    if c.container_id.is_empty() || c.container_id.len() > max {
        anyhow::bail!(
            "container id `{}` is empty or too long",
            c.container_id.escape_debug()
        );
    }
    connectopus_netlink::link::check_name(&c.ifname)
        .map_err(|why| anyhow::anyhow!("container {why}"))
}

fn parse_prefix(text: &str) -> Result<Prefix> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("pool `{text}` is not a prefix"))?;
    let addr: Ipv6Addr = addr.parse().with_context(|| format!("pool `{text}`"))?;
    let len: u8 = len.parse().with_context(|| format!("pool `{text}`"))?;
    Prefix::new(addr, len).map_err(|e| anyhow::anyhow!("pool `{text}`: {e:?}"))
}

fn parse_key(text: &str) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        anyhow::bail!("holder key `{text}` is not 64 hex digits");
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("holder key `{text}` is not hex"))?;
    }
    Ok(key)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, then
/// fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is: a failure here is a failed write (the
    // writer retries), not a table on disk.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A table with one joiner's lease, a held-down address and a quarantine: the lease file's
/// and the issuer's start-up tests share it.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) fn test_table() -> PersistedLeases {
    PersistedLeases {
        pool: Prefix::new("fd00:cafe:0:e1::".parse().unwrap(), 112).unwrap(),
        next_epoch: 1_796_556_438_859_683_088,
        leases: vec![PersistedLease {
            address: "fd00:cafe:0:e1::7".parse().unwrap(),
            key: [0xab; 32],
            name: "job-1".to_owned(),
            epoch: 1_796_556_438_859_683_087,
            renewal: 3,
            expires_unix_ms: 1_796_556_460_961,
            renew_xid: Some(42),
            container: None,
        }],
        hold_down: vec![("fd00:cafe:0:e1::9".parse().unwrap(), 1_796_556_470_000)],
        quarantine_until_unix_ms: Some(1_796_556_480_000),
        written_unix_ms: 1_796_556_440_961,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_table as table;

    #[test]
    fn the_lease_file_round_trips() {
        let t = table();
        assert_eq!(decode(&encode(&t).unwrap()).unwrap(), t);
    }

    /// The test table with a container's lease beside the joiner's.
    fn with_container() -> PersistedLeases {
        let mut t = table();
        let container = ContainerKey {
            network: "mesh".to_owned(),
            container_id: "0123456789abcdef".to_owned(),
            ifname: "eth0".to_owned(),
        };
        t.leases.push(PersistedLease {
            address: "fd00:cafe:0:e1::8".parse().unwrap(),
            key: container.holder_key(),
            name: "web-1".to_owned(),
            epoch: 1_796_556_438_859_683_086,
            renewal: 0,
            // Meaningless for a container: far past the day after the write, which is no
            // reason to refuse the table.
            expires_unix_ms: u64::MAX,
            renew_xid: None,
            container: Some(container),
        });
        t
    }

    #[test]
    fn a_lease_file_with_a_container_lease_round_trips_and_passes_the_checks() {
        let t = with_container();
        assert!(validate(&t).is_ok());
        let text = String::from_utf8(encode(&t).unwrap()).unwrap();
        assert!(
            text.contains("\"container_id\": \"0123456789abcdef\""),
            "{text}"
        );
        // Only the container's entry names one; the joiner's has none.
        assert_eq!(text.matches("\"container\"").count(), 1, "{text}");
        assert_eq!(decode(text.as_bytes()).unwrap(), t);
        // An expiry long past the write (a container's lease was written long ago, its
        // expiry never moves) loads too.
        let mut old = with_container();
        old.leases[1].expires_unix_ms = 0;
        assert_eq!(decode(&encode(&old).unwrap()).unwrap(), old);
    }

    #[test]
    fn a_damaged_container_lease_is_refused_saying_what() {
        type Damage = Box<dyn Fn(&mut PersistedLease)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("not its container's", Box::new(|l| l.key = [0xcd; 32])),
            (
                "not its container's",
                Box::new(|l| {
                    if let Some(c) = l.container.as_mut() {
                        c.container_id = "another".to_owned();
                    }
                }),
            ),
            (
                "container network",
                Box::new(|l| {
                    if let Some(c) = l.container.as_mut() {
                        c.network = String::new();
                    }
                    l.key = l
                        .container
                        .as_ref()
                        .map_or([0; 32], ContainerKey::holder_key);
                }),
            ),
            (
                "container id",
                Box::new(|l| {
                    if let Some(c) = l.container.as_mut() {
                        c.container_id = "x".repeat(257);
                    }
                    l.key = l
                        .container
                        .as_ref()
                        .map_or([0; 32], ContainerKey::holder_key);
                }),
            ),
            (
                "interface name",
                Box::new(|l| {
                    if let Some(c) = l.container.as_mut() {
                        c.ifname = "eth/0".to_owned();
                    }
                    l.key = l
                        .container
                        .as_ref()
                        .map_or([0; 32], ContainerKey::holder_key);
                }),
            ),
            ("has no renewal", Box::new(|l| l.renew_xid = Some(7))),
            (
                "not a valid name",
                Box::new(|l| l.name = "Web 1".to_owned()),
            ),
            (
                "the name `job-1` is leased twice",
                Box::new(|l| l.name = "job-1".to_owned()),
            ),
            ("is not below next_epoch", Box::new(|l| l.epoch = u64::MAX)),
        ];
        for (what, damage) in cases {
            let mut t = with_container();
            damage(&mut t.leases[1]);
            let error = decode(&encode(&t).unwrap()).expect_err(what);
            let text = format!("{error:#}");
            assert!(text.contains(what), "expected `{what}` in: {text}");
            assert!(
                text.contains("fd00:cafe:0:e1::8"),
                "names the lease: {text}"
            );
        }
        // A joiner's lease is still bounded: the exemption is the container's alone.
        let mut t = with_container();
        t.leases[0].expires_unix_ms = u64::MAX;
        assert!(decode(&encode(&t).unwrap()).is_err());
    }

    #[test]
    fn a_damaged_lease_file_is_refused_not_half_read() {
        let bytes = encode(&table()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for bad in [
            bytes[..bytes.len() / 2].to_vec(),
            text.replace("\"version\": 1", "\"version\": 2")
                .into_bytes(),
            text.replace("abab", "zzzz").into_bytes(),
            text.replace("/112", "/129").into_bytes(),
            text.replace("\"renewal\": 3", "\"renewal\": -3")
                .into_bytes(),
            b"".to_vec(),
            b"null".to_vec(),
        ] {
            assert!(decode(&bad).is_err(), "{}", String::from_utf8_lossy(&bad));
        }
    }

    #[test]
    fn a_damaged_but_parsable_lease_file_is_refused_saying_what() {
        let good = table();
        assert!(validate(&good).is_ok());
        let other_lease = |t: &mut PersistedLeases| {
            let mut l = t.leases[0].clone();
            l.address = "fd00:cafe:0:e1::8".parse().unwrap();
            l.key = [0xcd; 32];
            l.name = "job-2".to_owned();
            t.leases.push(l);
        };
        type Damage = Box<dyn Fn(&mut PersistedLeases)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("next_epoch", Box::new(|t| t.next_epoch = u64::MAX - 1)),
            ("next_epoch", Box::new(|t| t.next_epoch = 0)),
            (
                "is not below next_epoch",
                Box::new(|t| t.leases[0].epoch = t.next_epoch),
            ),
            (
                "not an address of the pool",
                Box::new(|t| t.leases[0].address = "fd00:cafe:0:e2::7".parse().unwrap()),
            ),
            (
                "not an address of the pool",
                Box::new(|t| t.leases[0].address = t.pool.addr()),
            ),
            (
                "not a valid name",
                Box::new(|t| t.leases[0].name = "bad name\n".to_owned()),
            ),
            (
                "not a valid name",
                Box::new(|t| t.leases[0].name = String::new()),
            ),
            (
                "more than a day after",
                Box::new(|t| t.leases[0].expires_unix_ms = u64::MAX),
            ),
            (
                "more than a day after",
                Box::new(|t| t.hold_down[0].1 = t.written_unix_ms + MAX_AHEAD_MS + 1),
            ),
            (
                "the quarantine",
                Box::new(|t| t.quarantine_until_unix_ms = Some(u64::MAX)),
            ),
            (
                "hold-down of",
                Box::new(|t| t.hold_down.push(t.hold_down[0])),
            ),
            (
                "leased twice",
                Box::new(move |t| {
                    other_lease(t);
                    t.leases[1].address = t.leases[0].address;
                }),
            ),
            (
                "holds another lease",
                Box::new(move |t| {
                    other_lease(t);
                    t.leases[1].key = t.leases[0].key;
                }),
            ),
            (
                "name `job-1` is leased twice",
                Box::new(move |t| {
                    other_lease(t);
                    t.leases[1].name = "job-1".to_owned();
                }),
            ),
        ];
        for (what, damage) in cases {
            let mut t = table();
            damage(&mut t);
            let error = decode(&encode(&t).unwrap()).expect_err(what);
            let text = format!("{error:#}");
            assert!(text.contains(what), "expected `{what}` in: {text}");
        }
        // A file from before `written_unix_ms` and `renew_xid` still loads.
        let old = String::from_utf8(encode(&good).unwrap())
            .unwrap()
            .replace(
                "\"written_unix_ms\": 1796556440961",
                "\"written_unix_ms\": 0",
            )
            .replace(",\n      \"renew_xid\": 42", "");
        let old = decode(old.as_bytes()).unwrap();
        assert_eq!((old.written_unix_ms, old.leases[0].renew_xid), (0, None));
    }
}
