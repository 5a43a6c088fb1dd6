//! Semantic checks that need more than one value: addresses against the subnet, uniqueness
//! across nodes, backend parameter combinations, secrets written inline.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{MAX_IFNAME_LEN, NodeConfig, RawMesh};
use crate::span::{Pos, SNode};
use crate::types::{Ipv6Net, SshPublicKey, is_dns_label, is_dns_name};

mod backends;
mod dynamic;
mod identities;

/// Which part of a mapping entry a diagnostic points at.
#[derive(Clone, Copy)]
enum At {
    Key,
    Value,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    tree: &'a SNode,
    out: Diagnostics,
}

impl Ctx<'_> {
    fn pos(&self, path: &[&str], at: At) -> Pos {
        let exact = match at {
            At::Value => self.tree.find(path).map(|n| n.pos),
            At::Key => self.tree.key_pos(path),
        };
        if let Some(p) = exact.filter(Pos::is_known) {
            return p;
        }
        // The key is absent (a default applies): point at the closest enclosing key.
        (1..path.len())
            .rev()
            .find_map(|n| self.tree.key_pos(&path[..n]).filter(Pos::is_known))
            .unwrap_or(Pos::UNKNOWN)
    }

    fn place(&self, d: Diagnostic, path: &[&str], at: At) -> Diagnostic {
        let p = self.pos(path, at);
        d.at(self.file, self.text, p.line, p.column, p.len)
            .with_path(path.join("."))
    }

    fn error(&mut self, path: &[&str], at: At, message: impl Into<String>) {
        let d = self.place(Diagnostic::error(message), path, at);
        self.out.push(d);
    }

    fn warn(&mut self, path: &[&str], at: At, message: impl Into<String>) {
        let d = self.place(Diagnostic::warning(message), path, at);
        self.out.push(d);
    }

    fn loc(&self, path: &[&str], at: At) -> String {
        let p = self.pos(path, at);
        format!("{}:{}:{}", self.file, p.line, p.column)
    }
}

pub(crate) fn validate(file: &str, text: &str, tree: &SNode, raw: &RawMesh) -> Diagnostics {
    let mut cx = Ctx {
        file,
        text,
        tree,
        out: Diagnostics::default(),
    };
    global(&mut cx, raw);
    let mut owners = Owners::default();
    for (name, node) in in_source_order(tree, &["nodes"], &raw.nodes) {
        node_checks(&mut cx, raw, name, node, &mut owners);
    }
    mesh_wide(&mut cx, &owners);
    dynamic::check(&mut cx, raw, &owners);
    identities::all_or_none(&mut cx, raw);
    cx.out
}

/// Returns the map's entries in the order the document lists them (maps are sorted by name).
fn in_source_order<'m, V>(
    tree: &SNode,
    path: &[&str],
    map: &'m BTreeMap<String, V>,
) -> Vec<(&'m String, &'m V)> {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    if let Some(node) = tree.find(path) {
        // One index of the document order, so that large meshes sort in O(n log n).
        let order: HashMap<&str, usize> = node
            .entries()
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (key.name.as_str(), i))
            .collect();
        entries.sort_by_key(|(k, _)| order.get(k.as_str()).copied());
    }
    entries
}

fn global(cx: &mut Ctx<'_>, raw: &RawMesh) {
    let g = &raw.global;
    if !is_dns_name(&g.domain, true) {
        cx.error(
            &["global", "domain"],
            At::Value,
            format!(
                "domain `{}` is not a lowercase DNS name (labels of a-z, 0-9 and `-`)",
                g.domain
            ),
        );
    }
    if g.subnet.has_host_bits() {
        cx.warn(
            &["global", "subnet"],
            At::Value,
            format!(
                "subnet {} has host bits set; it is used as {}/{}",
                g.subnet,
                g.subnet.network(),
                g.subnet.prefix_len()
            ),
        );
    }
    if let Some(subnet4) = g.subnet4
        && subnet4.has_host_bits()
    {
        cx.warn(
            &["global", "subnet4"],
            At::Value,
            format!(
                "subnet4 {subnet4} has host bits set; it is used as {}/{}",
                subnet4.network(),
                subnet4.prefix_len()
            ),
        );
    }
    if g.authorized_keys.is_empty() {
        cx.warn(
            &["global", "authorized_keys"],
            At::Key,
            "no authorized_keys: nobody can sign config updates or use the control API",
        );
    }
    ssh_keys(cx, "authorized_keys", &g.authorized_keys);
    ssh_keys(cx, "revoked_keys", &g.revoked_keys);
    for (i, k) in g.authorized_keys.iter().enumerate() {
        if g.revoked_keys.iter().any(|r| r.same_key(k)) {
            let idx = i.to_string();
            cx.error(
                &["global", "authorized_keys", &idx],
                At::Value,
                "this key is also listed in global.revoked_keys",
            );
        }
    }
    let t = &g.timers;
    let timers = [
        ("keepalive_idle", t.keepalive_idle),
        ("dead_interval", t.dead_interval),
        ("update_interval", t.update_interval),
        ("node_dead_after", t.node_dead_after),
    ];
    for (key, d) in timers {
        if d.0.is_zero() {
            cx.error(
                &["global", "timers", key],
                At::Value,
                format!("{key} must be > 0"),
            );
        }
    }
    // A link silent for an hour is dead; the bound also keeps the issuers' grace (dead
    // interval + lease/1000) well inside the day a lease file may look ahead.
    if t.dead_interval.0 > std::time::Duration::from_secs(3600) {
        cx.error(
            &["global", "timers", "dead_interval"],
            At::Value,
            format!("dead_interval ({}) must be at most 1h", t.dead_interval),
        );
    }
    if t.dead_interval <= t.keepalive_idle {
        cx.error(
            &["global", "timers", "dead_interval"],
            At::Value,
            format!(
                "dead_interval ({}) must be longer than keepalive_idle ({})",
                t.dead_interval, t.keepalive_idle
            ),
        );
    }
    if t.node_dead_after <= t.update_interval {
        cx.error(
            &["global", "timers", "node_dead_after"],
            At::Value,
            format!(
                "node_dead_after ({}) must be longer than update_interval ({})",
                t.node_dead_after, t.update_interval
            ),
        );
    }
    if raw.nodes.is_empty() {
        cx.error(&["nodes"], At::Key, "the mesh has no nodes");
    }
}

fn ssh_keys(cx: &mut Ctx<'_>, list: &str, keys: &[SshPublicKey]) {
    let mut seen: Vec<&SshPublicKey> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let idx = i.to_string();
        let path = ["global", list, &idx];
        if let Err(e) = k.check() {
            cx.error(&path, At::Value, format!("malformed key in {list}: {e}"));
        } else if seen.iter().any(|s| s.same_key(k)) {
            cx.warn(&path, At::Value, format!("key listed twice in {list}"));
        }
        seen.push(k);
    }
}

/// Who claimed an address, prefix, identity or DNS name first (path of the claiming value).
#[derive(Default)]
struct Owners {
    addresses: HashMap<Ipv6Addr, Vec<String>>,
    addresses4: HashMap<std::net::Ipv4Addr, Vec<String>>,
    prefixes: Vec<(Ipv6Net, String, Vec<String>)>,
    identities: Vec<(SshPublicKey, Vec<String>)>,
    dns_names: BTreeMap<String, Vec<String>>,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn node_checks(
    cx: &mut Ctx<'_>,
    raw: &RawMesh,
    name: &str,
    node: &NodeConfig,
    owners: &mut Owners,
) {
    let subnet = raw.global.subnet;
    let base = |rest: &[&str]| -> Vec<String> {
        ["nodes", name]
            .iter()
            .chain(rest)
            .map(|s| (*s).to_owned())
            .collect()
    };
    if !is_dns_label(name, true) {
        cx.error(
            &["nodes", name],
            At::Key,
            format!(
                "node name `{name}` is invalid: use 1 to 63 of a-z, 0-9 and `-`, not starting or ending with `-`"
            ),
        );
    }
    claim_dns(cx, owners, name, base(&[]));

    // Addresses: the node's own, then tun_devs and namespaces.
    let mut addrs: Vec<(Ipv6Addr, Vec<String>)> = vec![(node.address, base(&["address"]))];
    let tun_devs = in_source_order(cx.tree, &["nodes", name, "tun_devs"], &node.tun_devs);
    let namespaces = in_source_order(cx.tree, &["nodes", name, "namespaces"], &node.namespaces);
    let services = in_source_order(cx.tree, &["nodes", name, "services"], &node.services);
    let backends = in_source_order(cx.tree, &["nodes", name, "backends"], &node.backends);
    for (t, dev) in &tun_devs {
        addrs.push((dev.address, base(&["tun_devs", t, "address"])));
    }
    for (n, ns) in &namespaces {
        addrs.push((ns.address, base(&["namespaces", n, "address"])));
    }
    for (addr, path) in addrs {
        let p = strs(&path);
        if !subnet.contains(addr) {
            cx.error(
                &p,
                At::Value,
                format!("address {addr} is outside global.subnet {subnet}"),
            );
        }
        if let Some(first) = owners.addresses.get(&addr) {
            let msg = format!(
                "duplicate address {addr}: already used by {} at {}",
                first.join("."),
                cx.loc(&strs(first), At::Value)
            );
            cx.error(&p, At::Value, msg);
        } else {
            owners.addresses.insert(addr, path.clone());
        }
    }

    // IPv4 addresses: the node's own, its tun_devs' and its namespaces'.
    let mut addrs4: Vec<(std::net::Ipv4Addr, Vec<String>)> = Vec::new();
    if let Some(a) = node.address4 {
        addrs4.push((a, base(&["address4"])));
    }
    for (t, dev) in &tun_devs {
        if let Some(a) = dev.address4 {
            addrs4.push((a, base(&["tun_devs", t, "address4"])));
        }
    }
    for (n, ns) in &namespaces {
        if let Some(a) = ns.address4 {
            addrs4.push((a, base(&["namespaces", n, "address4"])));
        }
    }
    for (addr, path) in addrs4 {
        let p = strs(&path);
        match raw.global.subnet4 {
            None => cx.error(
                &p,
                At::Value,
                format!("address4 {addr} needs global.subnet4 (the mesh has no IPv4 prefix)"),
            ),
            Some(subnet4) if !subnet4.contains(addr) => cx.error(
                &p,
                At::Value,
                format!("address4 {addr} is outside global.subnet4 {subnet4}"),
            ),
            Some(_) => {}
        }
        if let Some(first) = owners.addresses4.get(&addr) {
            let msg = format!(
                "duplicate address4 {addr}: already used by {} at {}",
                first.join("."),
                cx.loc(&strs(first), At::Value)
            );
            cx.error(&p, At::Value, msg);
        } else {
            owners.addresses4.insert(addr, path.clone());
        }
    }

    if let Some(id) = &node.identity {
        let path = base(&["identity"]);
        if let Err(e) = id.check() {
            cx.error(&strs(&path), At::Value, format!("malformed identity: {e}"));
        } else if raw.global.revoked_keys.iter().any(|r| r.same_key(id)) {
            cx.error(
                &strs(&path),
                At::Value,
                "identity key is listed in global.revoked_keys",
            );
        } else if let Some((_, first)) = owners.identities.iter().find(|(k, _)| k.same_key(id)) {
            let msg = format!(
                "duplicate identity: the same key is the identity of {} ({})",
                first.get(1).map_or("", String::as_str),
                cx.loc(&strs(first), At::Value)
            );
            cx.error(&strs(&path), At::Value, msg);
        } else {
            owners.identities.push((id.clone(), path));
        }
    }

    for (i, prefix) in node.prefixes.iter().enumerate() {
        let idx = i.to_string();
        let path = base(&["prefixes", &idx]);
        let p = strs(&path);
        if !subnet.contains_net(prefix) {
            cx.error(
                &p,
                At::Value,
                format!("prefix {prefix} is outside global.subnet {subnet}"),
            );
        }
        if prefix.has_host_bits() {
            cx.warn(
                &p,
                At::Value,
                format!(
                    "prefix {prefix} has host bits set; it is used as {}/{}",
                    prefix.network(),
                    prefix.prefix_len()
                ),
            );
        }
        if let Some((other, owner, first)) = owners
            .prefixes
            .iter()
            .find(|(o, owner, _)| owner != name && o.overlaps(prefix))
        {
            let msg = format!(
                "prefix {prefix} overlaps {other} of node {owner} ({})",
                cx.loc(&strs(first), At::Value)
            );
            cx.error(&p, At::Value, msg);
        }
        owners.prefixes.push((*prefix, name.to_owned(), path));
    }

    // Own TUN device.
    if let Some(tun) = &node.tun.name
        && !valid_ifname(tun)
    {
        cx.error(
            &["nodes", name, "tun", "name"],
            At::Value,
            format!(
                "interface name `{tun}` is invalid: 1 to {MAX_IFNAME_LEN} bytes, no `/`, `:` or whitespace"
            ),
        );
    }
    let own_tun = node.tun_name(name);

    // Child names share one namespace (upstream flaw 20); tun_devs and namespaces are DNS names.
    let mut children: BTreeMap<&str, &str> = BTreeMap::new();
    let kinds: [(&str, Vec<&String>); 4] = [
        ("backends", backends.iter().map(|(k, _)| *k).collect()),
        ("services", services.iter().map(|(k, _)| *k).collect()),
        ("tun_devs", tun_devs.iter().map(|(k, _)| *k).collect()),
        ("namespaces", namespaces.iter().map(|(k, _)| *k).collect()),
    ];
    for (kind, names) in kinds {
        for child in names {
            let path = ["nodes", name, kind, child.as_str()];
            if let Some(first) = children.get(child.as_str()) {
                cx.error(
                    &path,
                    At::Key,
                    format!("name `{child}` is already used by nodes.{name}.{first}.{child}; backends, services, tun_devs and namespaces of a node need distinct names"),
                );
            } else {
                children.insert(child, kind);
            }
            let dns = kind == "tun_devs" || kind == "namespaces";
            let ok = if dns {
                is_dns_label(child, true)
            } else {
                !child.is_empty()
                    && child
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !ok {
                let rule = if dns {
                    "it becomes a DNS name: use a-z, 0-9 and `-`"
                } else {
                    "use letters, digits, `-` and `_`"
                };
                cx.error(&path, At::Key, format!("name `{child}` is invalid: {rule}"));
            }
            if dns {
                claim_dns(
                    cx,
                    owners,
                    child,
                    path.iter().map(|s| (*s).to_owned()).collect(),
                );
            }
        }
    }

    let mut ifnames: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    if let Some(t) = &own_tun {
        ifnames.insert(t.as_str(), base(&["tun", "name"]));
    }
    for (t, dev) in &tun_devs {
        let path = base(&["tun_devs", t, "device"]);
        if !valid_ifname(&dev.device) {
            cx.error(
                &strs(&path),
                At::Value,
                format!(
                    "interface name `{}` is invalid: 1 to {MAX_IFNAME_LEN} bytes, no `/`, `:` or whitespace",
                    dev.device
                ),
            );
        }
        if let Some(first) = ifnames.get(dev.device.as_str()) {
            let msg = format!(
                "interface `{}` is already used by {}",
                dev.device,
                first.join(".")
            );
            cx.error(&strs(&path), At::Value, msg);
        } else {
            ifnames.insert(dev.device.as_str(), path);
        }
        cost(cx, &["nodes", name, "tun_devs", t, "cost"], dev.cost);
    }
    for (n, ns) in &namespaces {
        cost(cx, &["nodes", name, "namespaces", n, "cost"], ns.cost);
        for (s, svc) in &ns.services {
            if let Err(why) = crate::attach::split_command(&svc.command) {
                cx.error(
                    &["nodes", name, "namespaces", n, "services", s, "command"],
                    At::Value,
                    format!("command cannot run: {why}"),
                );
            }
        }
    }

    let mut tcp_ports: BTreeMap<u16, String> = BTreeMap::new();
    let mut udp_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (s, svc) in &services {
        let path = ["nodes", name, "services", s.as_str(), "port"];
        if svc.port == 0 {
            cx.error(&path, At::Value, "service port must be 1..=65535");
        }
        if let Some(first) = tcp_ports.get(&svc.port) {
            cx.error(
                &path,
                At::Value,
                format!("port {} is already used by {first}", svc.port),
            );
        } else {
            tcp_ports.insert(svc.port, format!("nodes.{name}.services.{s}"));
        }
        if let Err(why) = crate::attach::split_command(&svc.command) {
            cx.error(
                &["nodes", name, "services", s, "command"],
                At::Value,
                format!("command cannot run: {why}"),
            );
        }
        if svc.max_connections == 0 {
            cx.error(
                &["nodes", name, "services", s, "max_connections"],
                At::Value,
                "max_connections must be at least 1",
            );
        }
    }
    // `cpctl.socket_file` must name a file: a relative one is under /run/connectopus.
    if let Some(file) = &node.cpctl.socket_file {
        let text = file.as_os_str().to_string_lossy();
        if text.is_empty() || text.ends_with('/') || file.file_name().is_none() {
            cx.error(
                &["nodes", name, "cpctl", "socket_file"],
                At::Value,
                format!("socket_file `{text}` does not name a file for the control socket"),
            );
        }
    }
    if node.cpctl.port == Some(0) {
        cx.error(
            &["nodes", name, "cpctl", "port"],
            At::Value,
            "cpctl port must be 1..=65535",
        );
    }
    if let Some(workers) = node.workers
        && !(1..=crate::model::MAX_WORKERS).contains(&workers)
    {
        cx.error(
            &["nodes", name, "workers"],
            At::Value,
            format!(
                "workers must be 1..={} (dataplane threads), not {workers}",
                crate::model::MAX_WORKERS
            ),
        );
    }
    if node.cpu_local && node.workers == Some(1) {
        cx.warn(
            &["nodes", name, "cpu_local"],
            At::Value,
            "cpu_local needs worker threads: with workers: 1 the one worker runs on the main loop, unpinned",
        );
    }

    for (b, backend) in &backends {
        backends::backend_checks(
            cx,
            raw,
            ["nodes", name, "backends", b],
            backend,
            &mut udp_ports,
            &mut tcp_ports,
        );
    }
    metrics_checks(cx, name, &node.metrics, &tcp_ports);
}

/// `nodes.N.metrics.listen` must be `"[addr]:port"` (or `ipv4:port`) with a port the node's
/// TCP listeners do not use.
fn metrics_checks(
    cx: &mut Ctx<'_>,
    name: &str,
    metrics: &crate::model::MetricsConfig,
    tcp_ports: &BTreeMap<u16, String>,
) {
    let Some(listen) = &metrics.listen else {
        return;
    };
    let path = ["nodes", name, "metrics", "listen"];
    match metrics.listen_addr() {
        None => cx.error(
            &path,
            At::Value,
            format!(
                "metrics listen `{listen}` is not an address and port: write \"[::1]:9469\" or \"127.0.0.1:9469\""
            ),
        ),
        Some(addr) if addr.port() == 0 => {
            cx.error(&path, At::Value, "metrics port must be 1..=65535");
        }
        Some(addr) => {
            if let Some(first) = tcp_ports.get(&addr.port()) {
                cx.error(
                    &path,
                    At::Value,
                    format!("tcp port {} is already used by {first}", addr.port()),
                );
            }
        }
    }
}

fn claim_dns(cx: &mut Ctx<'_>, owners: &mut Owners, dns: &str, path: Vec<String>) {
    if let Some(first) = owners.dns_names.get(dns) {
        let msg = format!(
            "DNS name `{dns}` is already used by {} ({})",
            first.join("."),
            cx.loc(&strs(first), At::Key)
        );
        cx.error(&strs(&path), At::Key, msg);
    } else {
        owners.dns_names.insert(dns.to_owned(), path);
    }
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IFNAME_LEN
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

fn cost(cx: &mut Ctx<'_>, path: &[&str], cost: f64) {
    if !cost.is_finite() || cost <= 0.0 {
        cx.error(
            path,
            At::Value,
            format!("cost must be a finite number > 0, not {cost}"),
        );
    }
}

fn mesh_wide(cx: &mut Ctx<'_>, owners: &Owners) {
    // A prefix must not cover another node's addresses.
    for (prefix, owner, path) in &owners.prefixes {
        for (addr, addr_path) in &owners.addresses {
            let addr_node = addr_path.get(1).map_or("", String::as_str);
            if addr_node != owner && prefix.contains(*addr) {
                let msg = format!(
                    "prefix {prefix} of node {owner} contains {addr}, used by {} ({})",
                    addr_path.join("."),
                    cx.loc(&strs(addr_path), At::Value)
                );
                cx.error(&strs(path), At::Value, msg);
            }
        }
    }
}
