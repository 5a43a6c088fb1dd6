//! The verbs: the environment and the network configuration in, a result or an error out
//! (dynamic-mesh.md §3.2).

use std::net::Ipv6Addr;
use std::path::Path;

use connectopus_netlink::Netns;
use connectopus_netlink::link::check_name;

use crate::netns::{GATEWAY, Plan, attach, detach, host_ifname, verify};
use crate::node::{self, ContainerKey, NodeError};
use crate::spec::{
    CniError, CniResult, Dns, Interface, IpConfig, NEWEST_VERSION, NetConf, RouteConfig,
    SUPPORTED_VERSIONS, VersionInfo, VersionOnly, code,
};

/// The CNI environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// `CONNECTOPUS_SOCKET`, the fallback for finding the node.
    pub socket: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            socket: var(node::SOCKET_ENV),
        }
    }
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
    value
        .as_deref()
        .ok_or_else(|| CniError::new(code::MISSING_ENV, format!("{name} is not set")))
}

/// Runs the verb `CNI_COMMAND` names: `Ok(Some(json))` to print, `Ok(None)` for a success
/// without output (DEL, CHECK).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let command = required(&env.command, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(version(stdin)));
    }
    let conf = parse_conf(stdin)?;
    let outcome = match command {
        "ADD" => add(env, &conf).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "STATUS" => status(env, &conf).map(|()| None),
        "GC" => gc(env, &conf).map(|()| None),
        other => Err(CniError::new(
            code::MISSING_ENV,
            format!("CNI_COMMAND `{other}` is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
        )),
    };
    outcome.map_err(|e| e.with_version(&conf.cni_version))
}

/// The answer to VERSION: the version stdin asks for when this plugin speaks it, else the
/// newest. Any bytes (VERSION's stdin may be empty or not JSON at all).
pub fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    let info = VersionInfo {
        cni_version: asked.unwrap_or_else(|| NEWEST_VERSION.to_owned()),
        supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
    };
    serde_json::to_string(&info).unwrap_or_default()
}

/// Parses the network configuration on stdin: JSON, a supported `cniVersion`, `routes`
/// `mesh` or `default`. Untrusted bytes; an error is the CNI error to print.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::UNDECODABLE, format!("stdin is not JSON: {e}")))?;
    let conf: NetConf = serde_json::from_value(value)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("network configuration: {e}")))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI version {} is not supported (this plugin speaks {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    match conf.routes.as_deref() {
        None | Some("mesh" | "default") => {}
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("`routes` is `{other}`: it is `mesh` or `default`"),
            ));
        }
    }
    Ok(conf)
}

/// The container's name in the mesh: `K8S_POD_NAME` from `CNI_ARGS`, else `c-` and 12
/// characters of the container id; lowercase, other bytes `-`, at most 63 bytes.
pub fn container_name(container_id: &str, args: Option<&str>) -> String {
    let pod = args.and_then(|args| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, v)| *k == "K8S_POD_NAME" && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    });
    let raw =
        pod.unwrap_or_else(|| format!("c-{}", container_id.chars().take(12).collect::<String>()));
    let mut name: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() {
        name.push('c');
    }
    name
}

fn ifname(env: &Env) -> Result<&str, CniError> {
    let name = required(&env.ifname, "CNI_IFNAME")?;
    check_name(name)
        .map_err(|why| CniError::new(code::MISSING_ENV, format!("CNI_IFNAME: {why}")))?;
    Ok(name)
}

fn socket(conf: &NetConf, env: &Env) -> Result<std::path::PathBuf, NodeError> {
    node::resolve_socket(
        conf.socket.as_deref(),
        conf.node.as_deref(),
        env.socket.as_deref(),
    )
}

fn node_error(e: NodeError) -> CniError {
    match &e {
        NodeError::Unreachable(_) | NodeError::Garbled(_) => {
            CniError::new(code::TRY_AGAIN_LATER, e.to_string())
        }
        NodeError::Refused { code: Some(c), msg } => CniError::new(*c, msg.clone()),
        NodeError::Refused { code: None, msg } => CniError::new(
            code::NOT_SERVED,
            format!("the node does not serve containers: {msg}"),
        ),
    }
}

fn netlink_error(e: connectopus_netlink::Error) -> CniError {
    let details = e.errno().map(|n| format!("errno {n}")).unwrap_or_default();
    CniError::new(code::NETLINK, e.to_string()).with_details(details)
}

fn current_netns() -> Result<Netns, CniError> {
    Netns::current().map_err(|e| {
        CniError::new(
            code::NETLINK,
            format!("opening the node's network namespace: {e}"),
        )
    })
}

/// `fd00::1/128` (from a node's routes or a `prevResult`): the address and a length of at
/// most 128.
pub fn parse_prefix(text: &str) -> Option<(Ipv6Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 128)?;
    Some((addr.parse().ok()?, len))
}

fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let container_id = required(&env.container_id, "CNI_CONTAINERID")?;
    let netns_path = required(&env.netns, "CNI_NETNS")?;
    let ifname = ifname(env)?;
    let container = Netns::open(Path::new(netns_path))
        .map_err(|e| CniError::new(code::MISSING_ENV, format!("CNI_NETNS: {e}")))?;
    let host = current_netns()?;
    let name = container_name(container_id, env.args.as_deref());
    let host_ifname = host_ifname(container_id, ifname);
    let key = ContainerKey {
        network: &conf.name,
        container_id,
        ifname,
    };
    let socket = socket(conf, env).map_err(node_error)?;
    let lease = node::add(&socket, &key, netns_path, &name, &host_ifname).map_err(node_error)?;

    let routes: Vec<(Ipv6Addr, u8)> = if conf.routes.as_deref() == Some("default") {
        vec![(Ipv6Addr::UNSPECIFIED, 0)]
    } else {
        lease
            .routes
            .iter()
            .filter_map(|r| parse_prefix(r))
            .collect()
    };
    let plan = Plan {
        host_ifname: &host_ifname,
        ifname,
        address: lease.address,
        mirrors: &lease.mirrors,
        routes: &routes,
        mtu: lease.mtu,
    };
    // A second ADD for the same container finds its pair: take it down and make it again.
    let _ = detach(&host, &host_ifname);
    let attached = match attach(&host, &container, &plan) {
        Ok(attached) => attached,
        Err(e) => {
            let _ = detach(&host, &host_ifname);
            let _ = node::del(&socket, &key);
            return Err(netlink_error(e));
        }
    };
    let gateway = GATEWAY.to_string();
    // `interfaces[].mtu` is new in 1.1.0.
    let mtu = lease.mtu.filter(|_| conf.cni_version != "1.0.0");
    let result = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host_ifname.clone(),
                mac: attached.host_mac,
                sandbox: None,
                mtu,
            },
            Interface {
                name: ifname.to_owned(),
                mac: attached.container_mac,
                sandbox: Some(netns_path.to_owned()),
                mtu,
            },
        ],
        ips: std::iter::once(&lease.address)
            .chain(&lease.mirrors)
            .map(|address| IpConfig {
                interface: Some(1),
                address: format!("{address}/128"),
                gateway: Some(gateway.clone()),
            })
            .collect(),
        routes: routes
            .iter()
            .map(|(dst, len)| RouteConfig {
                dst: format!("{dst}/{len}"),
                gw: Some(gateway.clone()),
            })
            .collect(),
        dns: Dns {
            nameservers: lease.nameserver.iter().map(ToString::to_string).collect(),
            domain: lease.domain.clone(),
            search: lease.domain.iter().cloned().collect(),
        },
    };
    serde_json::to_string(&result)
        .map_err(|e| CniError::new(code::NETLINK, format!("encoding the result: {e}")))
}

/// DEL: every part may find nothing and still succeed; with the node down the pair is
/// removed and the node releases the lease when it reconciles at start.
fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = required(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = ifname(env)?;
    let key = ContainerKey {
        network: &conf.name,
        container_id,
        ifname,
    };
    match socket(conf, env).and_then(|socket| node::del(&socket, &key)) {
        Ok(()) => {}
        Err(e) => eprintln!("connectopus-cni: DEL {container_id}: {e}; removing the veth only"),
    }
    let host = current_netns()?;
    detach(&host, &host_ifname(container_id, ifname))
        .map(drop)
        .map_err(netlink_error)
}

/// The `prevResult` of CHECK, as a result of ADD.
pub fn parse_prev_result(prev: &serde_json::Value) -> Result<CniResult, CniError> {
    serde_json::from_value(prev.clone())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("`prevResult`: {e}")))
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs `prevResult`"))?;
    let prev = parse_prev_result(prev)?;
    let container_id = required(&env.container_id, "CNI_CONTAINERID")?;
    let netns_path = required(&env.netns, "CNI_NETNS")?;
    let ifname = ifname(env)?;
    let sandbox = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    let address = prev
        .ips
        .iter()
        .filter(|ip| sandbox.is_none() || ip.interface == sandbox)
        .find_map(|ip| parse_prefix(&ip.address).filter(|(_, len)| *len == 128))
        .map(|(addr, _)| addr)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("`prevResult` has no /128 address for `{ifname}`"),
            )
        })?;
    let container = Netns::open(Path::new(netns_path))
        .map_err(|e| CniError::new(code::MISSING_ENV, format!("CNI_NETNS: {e}")))?;
    let host = current_netns()?;
    let key = ContainerKey {
        network: &conf.name,
        container_id,
        ifname,
    };
    let socket = socket(conf, env).map_err(node_error)?;
    match node::check(&socket, &key, address) {
        Ok(()) => {}
        Err(NodeError::Refused { msg, .. }) => {
            return Err(CniError::new(
                code::CHECK_MISMATCH,
                format!("the node does not hold {address} for the container: {msg}"),
            ));
        }
        Err(e) => return Err(node_error(e)),
    }
    let host_ifname = host_ifname(container_id, ifname);
    let plan = Plan {
        host_ifname: &host_ifname,
        ifname,
        address,
        mirrors: &[],
        routes: &[],
        mtu: None,
    };
    verify(&host, &container, &plan).map_err(|what| CniError::new(code::CHECK_MISMATCH, what))
}

/// STATUS (1.1.0): 0 when the node answers and has room; 50 when it cannot serve ADD; 51
/// when it is unreachable (existing containers have lost the mesh too).
fn status(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let socket =
        socket(conf, env).map_err(|e| CniError::new(code::LIMITED_CONNECTIVITY, e.to_string()))?;
    match node::status(&socket, &conf.name) {
        Ok(_) => Ok(()),
        Err(e @ NodeError::Unreachable(_)) => {
            Err(CniError::new(code::LIMITED_CONNECTIVITY, e.to_string()))
        }
        Err(NodeError::Refused { code: Some(c), msg }) => Err(CniError::new(c, msg)),
        Err(NodeError::Refused { code: None, msg }) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("the node does not serve containers: {msg}"),
        )),
        Err(e @ NodeError::Garbled(_)) => Err(CniError::new(code::NOT_AVAILABLE, e.to_string())),
    }
}

/// GC (1.1.0): the node releases the network's leases that are not in
/// `cni.dev/valid-attachments` and names their host sides, which are deleted here.
fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let keep = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs `cni.dev/valid-attachments` (an empty list releases everything)",
        )
    })?;
    let socket = socket(conf, env).map_err(node_error)?;
    let released = node::gc(&socket, &conf.name, keep).map_err(node_error)?;
    let host = current_netns()?;
    for gone in released {
        // Only what this plugin makes: a node's answer does not delete other links.
        if gone.host_ifname.starts_with("cx") && check_name(&gone.host_ifname).is_ok() {
            detach(&host, &gone.host_ifname).map_err(netlink_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_cni_args_or_the_container_id() {
        assert_eq!(
            container_name(
                "abc",
                Some("IgnoreUnknown=1;K8S_POD_NAME=Web_1;K8S_POD_NAMESPACE=x")
            ),
            "web-1"
        );
        assert_eq!(
            container_name("0123456789abcdef0123", None),
            "c-0123456789ab"
        );
        assert_eq!(container_name("x", Some("K8S_POD_NAME=")), "c-x");
        assert_eq!(
            container_name("x", Some(&format!("K8S_POD_NAME={}", "a".repeat(99)))).len(),
            63
        );
    }

    #[test]
    fn version_and_errors_without_a_node() {
        let env = |cmd: &str| Env {
            command: Some(cmd.into()),
            ..Env::default()
        };
        let v = run(&env("VERSION"), b"{\"cniVersion\":\"1.0.0\"}")
            .unwrap()
            .unwrap();
        assert_eq!(
            v,
            r#"{"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]}"#
        );
        let v = run(&env("VERSION"), b"").unwrap().unwrap();
        assert!(v.starts_with(r#"{"cniVersion":"1.1.0""#), "{v}");
        assert_eq!(
            run(&Env::default(), b"").unwrap_err().code,
            code::MISSING_ENV
        );
        assert_eq!(
            run(&env("ADD"), b"not json").unwrap_err().code,
            code::UNDECODABLE
        );
        assert_eq!(
            run(&env("ADD"), b"{}").unwrap_err().code,
            code::INVALID_CONFIG
        );
        let old = br#"{"cniVersion":"0.4.0","name":"mesh","type":"connectopus"}"#;
        assert_eq!(
            run(&env("ADD"), old).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let conf = br#"{"cniVersion":"1.0.0","name":"mesh","type":"connectopus"}"#;
        let e = run(&env("ADD"), conf).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (code::MISSING_ENV, "CNI_CONTAINERID is not set")
        );
        let e = run(&env("CHECK"), conf).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let bad_routes =
            br#"{"cniVersion":"1.0.0","name":"mesh","type":"connectopus","routes":"all"}"#;
        assert_eq!(
            run(&env("DEL"), bad_routes).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            run(&env("GC"), conf).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(run(&env("FOO"), conf).unwrap_err().code, code::MISSING_ENV);
    }
}
