//! The live name table and the immutable zone snapshots built from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};

use crate::config::{
    ZoneSpec, normalize_name, qualify, reverse_name, reverse_name4, reverse_zones,
};
use crate::error::NameError;

/// SOA timers. Nothing transfers these zones (every node serves its own copy), so they only
/// need to be plausible.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// A handle to the names a [`DnsServer`](crate::DnsServer) serves; cheap to clone and safe
/// to use from any thread.
///
/// Every [`update`](NameTable::update) replaces the whole set at once: a query sees either
/// the old set or the new one, never a mix.
#[derive(Debug, Clone)]
pub struct NameTable {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    spec: ZoneSpec,
    /// Serialises updaters so each builds on the snapshot it compared against.
    update_lock: Mutex<()>,
    current: RwLock<Arc<Snapshot>>,
}

/// What an [`update`](NameTable::update) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdateOutcome {
    /// Whether the served set changed (and with it the SOA serial).
    pub changed: bool,
    /// The SOA serial now served.
    pub serial: u32,
    /// Entries that are not served, with the reason. The rest of the update still applies.
    pub rejected: Vec<(String, NameError)>,
}

impl NameTable {
    pub(crate) fn new(spec: ZoneSpec) -> Self {
        // Start the serial at the clock so a restarted node does not go back to an older
        // serial (unless it made more than one change per second for its whole last life).
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let snapshot = Snapshot::build(&spec, BTreeMap::new(), Vec::new(), serial);
        Self {
            shared: Arc::new(Shared {
                spec,
                update_lock: Mutex::new(()),
                current: RwLock::new(Arc::new(snapshot)),
            }),
        }
    }

    /// A table for `zone` that no server serves: for answering queries offline with
    /// [`NameTable::respond`] (the fuzzer does).
    ///
    /// # Errors
    /// The zone configuration is invalid (as [`crate::DnsServer::start`] would say).
    pub fn for_zone(zone: &crate::ZoneConfig) -> crate::Result<Self> {
        Ok(Self::new(ZoneSpec::new(zone)?))
    }

    /// Answers one DNS message exactly as the server does for a UDP datagram
    /// (`over_tcp == false`, size-limited and truncated with TC) or a TCP query; `None` when
    /// nothing must be sent (shorter than a header, or a response).
    pub fn respond(&self, query: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
        let transport = if over_tcp {
            crate::answer::Transport::Tcp
        } else {
            crate::answer::Transport::Udp
        };
        crate::answer::respond(&self.snapshot(), query, transport).map(|(bytes, _)| bytes)
    }

    /// Replaces the whole set of served names with `names`: pairs of a name relative to the
    /// mesh domain (`bar`, `foo-tun`) and its address.
    ///
    /// Names are lower-cased. A name given with several addresses gets several AAAA (IPv6)
    /// or A (IPv4) records; an address given for several names gets several PTR records. The
    /// node's own name always maps to its configured addresses and need not be listed. PTR
    /// records are served only for addresses inside the mesh subnet (IPv4: `subnet4`).
    ///
    /// The SOA serial goes up by one if, and only if, the served set changes.
    pub fn update<I, S, A>(&self, names: I) -> UpdateOutcome
    where
        I: IntoIterator<Item = (S, A)>,
        S: AsRef<str>,
        A: Into<IpAddr>,
    {
        let planes = self.snapshot().planes.clone();
        self.replace(names, planes)
    }

    /// Like [`update`](NameTable::update), and sets the mirror planes the zone also answers
    /// for: further IPv6 prefixes (a mesh prefix delegated by DHCPv6, docs/dynamic-mesh.md
    /// §2) whose addresses' PTR records are served, from reverse zones of their own, and in
    /// which the node's own name also has its mirror address (the plane's prefix with the
    /// host bits of the node's address). The names' mirror addresses come in `names` like any
    /// other address. A prefix longer than 124 bits or overlapping the subnet is ignored.
    pub fn update_with_planes<I, S, A>(&self, names: I, planes: &[(Ipv6Addr, u8)]) -> UpdateOutcome
    where
        I: IntoIterator<Item = (S, A)>,
        S: AsRef<str>,
        A: Into<IpAddr>,
    {
        let spec = &self.shared.spec;
        let planes = planes
            .iter()
            .filter_map(|(network, len)| Plane::new(spec, *network, *len))
            .collect();
        self.replace(names, planes)
    }

    fn replace<I, S, A>(&self, names: I, planes: Vec<Plane>) -> UpdateOutcome
    where
        I: IntoIterator<Item = (S, A)>,
        S: AsRef<str>,
        A: Into<IpAddr>,
    {
        let spec = &self.shared.spec;
        let domain = Name::from(spec.domain.clone());
        let mut set: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut rejected = Vec::new();
        for (name, addr) in names {
            let name = name.as_ref();
            let addr: IpAddr = addr.into();
            let own = match addr {
                IpAddr::V6(a) => {
                    a == spec.node_address
                        || planes.iter().any(|p| p.mirror(spec.node_address) == a)
                }
                IpAddr::V4(a) => Some(a) == spec.node_address4,
            };
            match normalize_name(name, &domain) {
                Ok(n) if n == spec.node_name => {
                    if !own {
                        rejected.push((name.to_owned(), NameError::OwnName));
                    }
                }
                Ok(n) => {
                    set.entry(n).or_default().insert(addr);
                }
                Err(e) => rejected.push((name.to_owned(), e)),
            }
        }

        let _guard = self
            .shared
            .update_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.snapshot();
        if current.names == set && current.planes == planes {
            return UpdateOutcome {
                changed: false,
                serial: current.serial,
                rejected,
            };
        }
        let serial = next_serial(current.serial);
        let next = Arc::new(Snapshot::build(spec, set, planes, serial));
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        UpdateOutcome {
            changed: true,
            serial,
            rejected,
        }
    }

    /// The SOA serial now served.
    pub fn serial(&self) -> u32 {
        self.snapshot().serial
    }

    /// The addresses served for `name` (relative to the domain, any case); empty if unknown.
    pub fn lookup(&self, name: &str) -> Vec<Ipv6Addr> {
        let name = name.to_ascii_lowercase();
        let spec = &self.shared.spec;
        if name == spec.node_name {
            return vec![spec.node_address];
        }
        self.snapshot()
            .names
            .get(&name)
            .map(|addrs| {
                addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V6(a) => Some(*a),
                        IpAddr::V4(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current snapshot; queries answer from one snapshot from start to end.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The next serial: one more, skipping 0 so a serial is never "unset"-looking after wrap.
fn next_serial(serial: u32) -> u32 {
    match serial.wrapping_add(1) {
        0 => 1,
        s => s,
    }
}

/// A mirror plane of the subnet the zone also answers for (see
/// [`NameTable::update_with_planes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plane {
    network: u128,
    mask: u128,
    reverse: Vec<LowerName>,
}

impl Plane {
    fn new(spec: &ZoneSpec, network: Ipv6Addr, len: u8) -> Option<Self> {
        if len > 124 {
            return None;
        }
        let mask = match len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        let network = u128::from(network) & mask;
        // Overlapping the subnet: its reverse zones would shadow or be shadowed by ours.
        let common = mask & spec.subnet_mask;
        if network & common == spec.subnet_network & common {
            return None;
        }
        let reverse = reverse_zones(Ipv6Addr::from(network), len)
            .ok()?
            .into_iter()
            .map(LowerName::from)
            .collect();
        Some(Self {
            network,
            mask,
            reverse,
        })
    }

    /// `addr`'s host bits under the plane's prefix.
    fn mirror(&self, addr: Ipv6Addr) -> Ipv6Addr {
        Ipv6Addr::from(self.network | (u128::from(addr) & !self.mask))
    }

    fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask == self.network
    }
}

/// One zone's apex records.
#[derive(Debug)]
pub(crate) struct Zone {
    pub apex: LowerName,
    pub soa: Record,
    pub ns: Record,
}

/// The records at one owner name. Both empty: an empty non-terminal (exists, no data).
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub aaaa: Vec<Record>,
    pub a: Vec<Record>,
    pub ptr: Vec<Record>,
}

/// Everything a query is answered from, built once per change and never mutated.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub serial: u32,
    /// The served set as given (normalised, without the node's own name): compared on
    /// update to tell whether anything changed.
    names: BTreeMap<String, BTreeSet<IpAddr>>,
    /// The mirror planes, whose reverse zones follow the subnet's in `zones`.
    planes: Vec<Plane>,
    /// The domain zone first, then the reverse zones.
    pub zones: Vec<Zone>,
    pub nodes: HashMap<LowerName, Node>,
    /// `<node_name>.<domain>.`, the name server name, for glue.
    pub ns_name: LowerName,
}

impl Snapshot {
    fn build(
        spec: &ZoneSpec,
        names: BTreeMap<String, BTreeSet<IpAddr>>,
        planes: Vec<Plane>,
        serial: u32,
    ) -> Self {
        let ttl = spec.ttl;
        let zones: Vec<Zone> = spec
            .apexes()
            .chain(planes.iter().flat_map(|p| p.reverse.iter()))
            .map(|apex| {
                let owner = Name::from(apex.clone());
                let soa = SOA::new(
                    spec.ns_name.clone(),
                    spec.rname.clone(),
                    serial,
                    SOA_REFRESH,
                    SOA_RETRY,
                    SOA_EXPIRE,
                    ttl,
                );
                Zone {
                    apex: apex.clone(),
                    soa: Record::from_rdata(owner.clone(), ttl, RData::SOA(soa)),
                    ns: Record::from_rdata(owner, ttl, RData::NS(NS(spec.ns_name.clone()))),
                }
            })
            .collect();
        let domain = Name::from(spec.domain.clone());
        let mut nodes: HashMap<LowerName, Node> = HashMap::new();
        let mut own_addrs = BTreeSet::from([IpAddr::V6(spec.node_address)]);
        own_addrs.extend(spec.node_address4.map(IpAddr::V4));
        own_addrs.extend(
            planes
                .iter()
                .map(|p| IpAddr::V6(p.mirror(spec.node_address))),
        );
        let own = (&spec.node_name, &own_addrs);
        for (name, addrs) in names.iter().chain([own]) {
            let fqdn = qualify(name, &domain);
            add_empty_ancestors(&mut nodes, &fqdn, &zones);
            let node = nodes.entry(LowerName::new(&fqdn)).or_default();
            for addr in addrs {
                match addr {
                    IpAddr::V6(a) => {
                        node.aaaa
                            .push(Record::from_rdata(fqdn.clone(), ttl, RData::AAAA(AAAA(*a))))
                    }
                    IpAddr::V4(a) => {
                        node.a
                            .push(Record::from_rdata(fqdn.clone(), ttl, RData::A(A(*a))));
                    }
                }
            }
            let reverses = addrs.iter().filter_map(|addr| match addr {
                IpAddr::V6(a) if spec.in_subnet(*a) || planes.iter().any(|p| p.contains(*a)) => {
                    Some(reverse_name(*a))
                }
                IpAddr::V4(a) if spec.in_subnet4(*a) => Some(reverse_name4(*a)),
                _ => None,
            });
            for reverse in reverses {
                add_empty_ancestors(&mut nodes, &reverse, &zones);
                nodes
                    .entry(LowerName::new(&reverse))
                    .or_default()
                    .ptr
                    .push(Record::from_rdata(
                        reverse,
                        ttl,
                        RData::PTR(PTR(fqdn.clone())),
                    ));
            }
        }
        Self {
            serial,
            names,
            planes,
            zones,
            nodes,
            ns_name: LowerName::new(&spec.ns_name),
        }
    }

    /// The most specific zone containing `name`, if any.
    pub fn zone_for(&self, name: &LowerName) -> Option<&Zone> {
        self.zones
            .iter()
            .filter(|z| z.apex.zone_of(name))
            .max_by_key(|z| z.apex.num_labels())
    }
}

/// Registers the names strictly between `name` and its zone's apex as existing (empty
/// non-terminals), so they answer NODATA rather than NXDOMAIN (RFC 8020).
fn add_empty_ancestors(nodes: &mut HashMap<LowerName, Node>, name: &Name, zones: &[Zone]) {
    let lower = LowerName::new(name);
    let Some(apex_labels) = zones
        .iter()
        .filter(|z| z.apex.zone_of(&lower))
        .map(|z| z.apex.num_labels())
        .max()
    else {
        return;
    };
    let mut ancestor = name.base_name();
    while ancestor.num_labels() > apex_labels {
        nodes.entry(LowerName::new(&ancestor)).or_default();
        ancestor = ancestor.base_name();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::ZoneConfig;

    fn table() -> NameTable {
        let config = ZoneConfig::new(
            "connectopus.test",
            "fd00::".parse().unwrap(),
            64,
            "node1",
            "fd00::1".parse().unwrap(),
        );
        NameTable::new(ZoneSpec::new(&config).unwrap())
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn serial_moves_only_on_change() {
        let t = table();
        let s0 = t.serial();
        let o = t.update([("bar", ip("fd00::2"))]);
        assert!(o.changed);
        assert_eq!(o.serial, s0.wrapping_add(1));
        // Same set, different case and order and duplicates: no change.
        let o = t.update([("BAR", ip("fd00::2")), ("bar", ip("fd00::2"))]);
        assert!(!o.changed);
        assert_eq!(o.serial, s0.wrapping_add(1));
        let o = t.update(Vec::<(String, Ipv6Addr)>::new());
        assert!(o.changed);
        assert_eq!(t.serial(), s0.wrapping_add(2));
    }

    #[test]
    fn own_name_is_fixed_and_rejections_are_reported() {
        let t = table();
        let o = t.update([
            ("node1", ip("fd00::1")),
            ("NODE1", ip("fd00::99")),
            ("bad name", ip("fd00::3")),
            ("ok", ip("fd00::4")),
        ]);
        assert_eq!(
            o.rejected,
            [
                ("NODE1".to_string(), NameError::OwnName),
                ("bad name".to_string(), NameError::BadCharacter(' ')),
            ]
        );
        assert_eq!(t.lookup("Node1"), [ip("fd00::1")]);
        assert_eq!(t.lookup("ok"), [ip("fd00::4")]);
        assert!(t.lookup("bad name").is_empty());
    }

    #[test]
    fn snapshot_has_records_and_empty_non_terminals() {
        let t = table();
        t.update([("a.b", ip("fd00::2")), ("far", ip("2001:db8::1"))]);
        let s = t.snapshot();
        let get = |n: &str| s.nodes.get(&LowerName::new(&Name::from_ascii(n).unwrap()));
        assert_eq!(get("a.b.connectopus.test.").unwrap().aaaa.len(), 1);
        let ent = get("b.connectopus.test.").unwrap();
        assert!(ent.aaaa.is_empty() && ent.ptr.is_empty());
        assert!(get("connectopus.test.").is_none(), "the apex is not a node");
        // PTR only inside the subnet.
        let rev = LowerName::new(&reverse_name(ip("fd00::2")));
        assert_eq!(s.nodes.get(&rev).unwrap().ptr.len(), 1);
        let far = LowerName::new(&reverse_name(ip("2001:db8::1")));
        assert!(!s.nodes.contains_key(&far));
        // The reverse path down from the /64 apex exists as empty non-terminals.
        let mid = LowerName::new(&reverse_name(ip("fd00::2")).trim_to(20));
        assert!(s.nodes.contains_key(&mid));
    }
}
