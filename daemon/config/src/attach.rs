//! What a node runs to attach applications to the mesh, as plain data: the network namespaces
//! it keeps (`nodes.N.namespaces`) and the inetd-style services it serves (`nodes.N.services`).
//!
//! The daemon's reconcilers compare the desired state computed here with what runs
//! ([`changes`]) and start or stop the difference; nothing here does I/O.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::{GlobalConfig, NodeConfig};

/// A network namespace the node keeps: a TUN device holding `address`, a default route into
/// the mesh, `lo` up, and a `resolv.conf` for the mesh's DNS.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceSpec {
    /// The namespace's name (its DNS name).
    pub name: String,
    /// Its mesh address (a /128 on its TUN device).
    pub address: Ipv6Addr,
    /// Its IPv4 mesh address (a /32 on its TUN device, with an IPv4 default route), when the
    /// mesh has `global.subnet4`.
    pub address4: Option<Ipv4Addr>,
    /// The cost the node advertises for the address.
    pub cost: f64,
    /// The MTU of its TUN device (the node's).
    pub mtu: u16,
    /// The mesh domain: the search domain of its `resolv.conf`.
    pub domain: String,
    /// The name server of its `resolv.conf` (the node's address), when the node serves DNS.
    pub dns_server: Option<Ipv6Addr>,
    /// Long-running commands started inside, by name, split into arguments.
    pub services: BTreeMap<String, Vec<String>>,
}

impl NamespaceSpec {
    /// Tells whether running `self` as `other` needs a new namespace: anything but the
    /// advertised cost differs.
    pub fn needs_restart(&self, other: &NamespaceSpec) -> bool {
        let mut same_cost = other.clone();
        same_cost.cost = self.cost;
        *self != same_cost
    }
}

/// An inetd-style TCP service on the node's mesh address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name (for logs).
    pub name: String,
    /// The address it listens on: the node's mesh address.
    pub address: Ipv6Addr,
    /// Its TCP port.
    pub port: u16,
    /// The command run per connection, split into arguments.
    pub argv: Vec<String>,
    /// Most connections served at once.
    pub max_connections: u32,
}

/// Splits a command line shell-style (quotes and backslashes, no expansion, no shell).
///
/// # Errors
/// Unbalanced quotes, a trailing backslash, or nothing to run.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    match shlex::split(command) {
        None => Err("unbalanced quotes or a trailing backslash".to_owned()),
        Some(argv) if argv.is_empty() => Err("command is empty".to_owned()),
        Some(argv) => Ok(argv),
    }
}

/// The namespaces node `node` keeps; `mtu` is its TUN MTU. Entries whose commands do not
/// split are left out (validation refuses such configurations).
pub fn namespaces(
    global: &GlobalConfig,
    node: &NodeConfig,
    mtu: u16,
) -> BTreeMap<String, NamespaceSpec> {
    node.namespaces
        .iter()
        .map(|(name, ns)| {
            let services = ns
                .services
                .iter()
                .filter_map(|(s, svc)| split_command(&svc.command).ok().map(|a| (s.clone(), a)))
                .collect();
            let spec = NamespaceSpec {
                name: name.clone(),
                address: ns.address,
                address4: global.subnet4.and(ns.address4),
                cost: ns.cost,
                mtu,
                domain: global.domain.clone(),
                dns_server: (!node.dns.disable).then_some(node.address),
                services,
            };
            (name.clone(), spec)
        })
        .collect()
}

/// The inetd-style services node `node` serves.
pub fn services(node: &NodeConfig) -> BTreeMap<String, ServiceSpec> {
    node.services
        .iter()
        .filter_map(|(name, svc)| {
            let argv = split_command(&svc.command).ok()?;
            Some((
                name.clone(),
                ServiceSpec {
                    name: name.clone(),
                    address: node.address,
                    port: svc.port,
                    argv,
                    max_connections: svc.max_connections,
                },
            ))
        })
        .collect()
}

/// What to stop and start to go from `running` to `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Names to stop: gone, or changed so that they must restart.
    pub stop: Vec<String>,
    /// Names to start: new, or restarted.
    pub start: Vec<String>,
}

/// Compares `running` with `desired`; `restart(old, new)` says whether an entry present in
/// both must restart.
pub fn changes<V>(
    running: &BTreeMap<String, V>,
    desired: &BTreeMap<String, V>,
    restart: impl Fn(&V, &V) -> bool,
) -> Changes {
    let mut out = Changes::default();
    for (name, old) in running {
        match desired.get(name) {
            None => out.stop.push(name.clone()),
            Some(new) if restart(old, new) => {
                out.stop.push(name.clone());
                out.start.push(name.clone());
            }
            Some(_) => {}
        }
    }
    for name in desired.keys() {
        if !running.contains_key(name) {
            out.start.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "global:\n  domain: mesh.test\n  subnet: fd00::/64\nnodes:\n  foo:\n    address: fd00::1\n    services:\n      echo: {port: 7, command: /bin/cat, max_connections: 50}\n      greet: {port: 8, command: \"printf '%s\\\\n' 'hello world'\"}\n    namespaces:\n      sandbox:\n        address: fd00::1:3\n        cost: 2\n        services:\n          web: {command: python3 -m http.server 8080}\n";

    fn load() -> crate::MeshConfig {
        crate::load("t.yml", YAML.as_bytes()).unwrap()
    }

    #[test]
    fn commands_split_like_a_shell_without_one() {
        assert_eq!(
            split_command("printf '%s\\n' \"a b\" c\\ d $HOME").unwrap(),
            vec!["printf", "%s\\n", "a b", "c d", "$HOME"]
        );
        assert!(split_command("echo 'open").is_err());
        assert!(split_command("   ").is_err());
    }

    #[test]
    fn the_desired_state_follows_the_node_entry() {
        let config = load();
        let node = config.node("foo").unwrap();
        let ns = namespaces(&config.global, node, 1400);
        let sandbox = &ns["sandbox"];
        assert_eq!(sandbox.address, "fd00::1:3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(sandbox.cost, 2.0);
        assert_eq!(sandbox.mtu, 1400);
        assert_eq!(sandbox.domain, "mesh.test");
        assert_eq!(sandbox.dns_server, Some(node.address));
        assert_eq!(
            sandbox.services["web"],
            vec!["python3", "-m", "http.server", "8080"]
        );
        let svc = services(node);
        assert_eq!(svc["echo"].max_connections, 50);
        assert_eq!(svc["echo"].argv, vec!["/bin/cat"]);
        assert_eq!(
            svc["greet"].max_connections,
            crate::model::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(svc["greet"].argv, vec!["printf", "%s\\n", "hello world"]);
    }

    #[test]
    fn changes_stop_the_gone_start_the_new_and_restart_the_changed() {
        let config = load();
        let node = config.node("foo").unwrap();
        let running = namespaces(&config.global, node, 1400);
        let mut desired = running.clone();
        assert_eq!(
            changes(&running, &desired, NamespaceSpec::needs_restart),
            Changes::default()
        );
        // A new cost is re-advertised, not restarted.
        if let Some(s) = desired.get_mut("sandbox") {
            s.cost = 5.0;
        }
        assert_eq!(
            changes(&running, &desired, NamespaceSpec::needs_restart),
            Changes::default()
        );
        if let Some(s) = desired.get_mut("sandbox") {
            s.services.clear();
        }
        let mut other = desired["sandbox"].clone();
        other.name = "box2".to_owned();
        desired.insert("box2".to_owned(), other);
        assert_eq!(
            changes(&running, &desired, NamespaceSpec::needs_restart),
            Changes {
                stop: vec!["sandbox".to_owned()],
                start: vec!["sandbox".to_owned(), "box2".to_owned()],
            }
        );
        assert_eq!(
            changes(&running, &BTreeMap::new(), NamespaceSpec::needs_restart).stop,
            vec!["sandbox".to_owned()]
        );
    }
}
