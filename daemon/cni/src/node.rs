//! The local node, through its control socket: one JSON line out, one back (as `status`).
//! Requests and replies of dynamic-mesh.md §3.3.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv6Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// Where nodes serve their control sockets by default.
pub const SOCKET_DIR: &str = "/run/connectopus";

/// The environment variable that names a control socket (as for the `connectopus` CLI).
pub const SOCKET_ENV: &str = "CONNECTOPUS_SOCKET";

/// How long the node may take to answer (it persists a lease before it does).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A lease the node gave a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    pub address: Ipv6Addr,
    #[serde(default)]
    pub mirrors: Vec<Ipv6Addr>,
    /// Prefixes (`fd00:cafe::/48`) the container routes via the node.
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub nameserver: Option<Ipv6Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub existing: bool,
}

/// Why the node did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// Nobody answers on the socket (or there is none): the node is down.
    Unreachable(String),
    /// The node refused, with a CNI code when it gave one (`cni_error`), or its message (an
    /// `error` reply: a node that does not know the request does not serve containers).
    Refused { code: Option<u32>, msg: String },
    /// The answer could not be read.
    Garbled(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Unreachable(why) => write!(f, "the node is unreachable: {why}"),
            NodeError::Refused { msg, .. } => write!(f, "the node refused: {msg}"),
            NodeError::Garbled(why) => write!(f, "the node's answer is garbled: {why}"),
        }
    }
}

/// The control socket to use: `socket`, else `node`'s, else `$CONNECTOPUS_SOCKET`, else the
/// only socket in [`SOCKET_DIR`] that answers.
pub fn resolve_socket(
    socket: Option<&Path>,
    node: Option<&str>,
    env: Option<&str>,
) -> Result<PathBuf, NodeError> {
    if let Some(path) = socket {
        return Ok(path.to_path_buf());
    }
    if let Some(node) = node {
        return Ok(Path::new(SOCKET_DIR).join(format!("{node}.sock")));
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let live: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .filter(|p| UnixStream::connect(p).is_ok())
                .collect()
        })
        .unwrap_or_default();
    match live.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(NodeError::Unreachable(format!(
            "no running node has a control socket in {SOCKET_DIR}; set `node` or `socket`"
        ))),
        many => Err(NodeError::Refused {
            code: None,
            msg: format!(
                "{} nodes run here ({}); set `node` or `socket` in the network configuration",
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Sends one request, returns the reply object.
fn request(socket: &Path, body: &Value) -> Result<Value, NodeError> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| NodeError::Unreachable(format!("{}: {e}", socket.display())))?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| NodeError::Unreachable(e.to_string()))?;
    let mut line = body.to_string();
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| NodeError::Unreachable(format!("{}: {e}", socket.display())))?;
    let mut answer = String::new();
    // A reply is a few hundred bytes; a node that sends more is not read further.
    BufReader::new(Read::take(&stream, 1024 * 1024))
        .read_line(&mut answer)
        .map_err(|e| NodeError::Unreachable(format!("{}: {e}", socket.display())))?;
    if answer.is_empty() {
        return Err(NodeError::Unreachable(
            "the node closed the connection".into(),
        ));
    }
    parse_reply(&answer)
}

/// Parses one reply line from the node (untrusted bytes): the reply object, or the node's
/// refusal (`error`, or `cni_error` with its code and message).
pub fn parse_reply(answer: &str) -> Result<Value, NodeError> {
    let reply: Value =
        serde_json::from_str(answer).map_err(|e| NodeError::Garbled(e.to_string()))?;
    if let Some(msg) = reply.get("error") {
        return Err(NodeError::Refused {
            code: None,
            msg: msg.as_str().unwrap_or_default().to_owned(),
        });
    }
    if let Some(err) = reply.get("cni_error") {
        return Err(NodeError::Refused {
            code: err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok()),
            msg: err
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    Ok(reply)
}

/// The lease in a reply to `cni_add`.
pub fn parse_lease(reply: &Value) -> Result<Lease, NodeError> {
    let lease = reply
        .get("cni_lease")
        .ok_or_else(|| NodeError::Garbled(format!("expected cni_lease, got {reply}")))?;
    serde_json::from_value(lease.clone()).map_err(|e| NodeError::Garbled(e.to_string()))
}

/// The released leases in a reply to `cni_gc`.
pub fn parse_released(reply: &Value) -> Result<Vec<Released>, NodeError> {
    let released = reply
        .get("cni_released")
        .ok_or_else(|| NodeError::Garbled(format!("expected cni_released, got {reply}")))?;
    serde_json::from_value(released.clone()).map_err(|e| NodeError::Garbled(e.to_string()))
}

/// The key a container's lease is held under.
#[derive(Debug, Clone)]
pub struct ContainerKey<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// `cni_add`: a lease for the container (the same one again for the same key).
pub fn add(
    socket: &Path,
    key: &ContainerKey<'_>,
    netns: &str,
    name: &str,
    host_ifname: &str,
) -> Result<Lease, NodeError> {
    let reply = request(
        socket,
        &json!({"cmd": "cni_add", "network": key.network, "container_id": key.container_id,
                "ifname": key.ifname, "netns": netns, "name": name, "host_ifname": host_ifname}),
    )?;
    parse_lease(&reply)
}

/// `cni_del`: the node releases the container's lease (nothing held is no error).
pub fn del(socket: &Path, key: &ContainerKey<'_>) -> Result<(), NodeError> {
    request(
        socket,
        &json!({"cmd": "cni_del", "network": key.network, "container_id": key.container_id,
                "ifname": key.ifname}),
    )
    .map(drop)
}

/// `cni_check`: the node still holds `address` for the container.
pub fn check(socket: &Path, key: &ContainerKey<'_>, address: Ipv6Addr) -> Result<(), NodeError> {
    request(
        socket,
        &json!({"cmd": "cni_check", "network": key.network, "container_id": key.container_id,
                "ifname": key.ifname, "address": address.to_string()}),
    )
    .map(drop)
}

/// `cni_status`: what the node says about serving containers of `network`.
pub fn status(socket: &Path, network: &str) -> Result<String, NodeError> {
    let reply = request(socket, &json!({"cmd": "cni_status", "network": network}))?;
    Ok(reply
        .get("done")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// A lease the node released in `cni_gc`, and the host side it had.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Released {
    pub container_id: String,
    pub host_ifname: String,
}

/// `cni_gc`: the node releases the leases of `network` not in `keep` and says which.
pub fn gc(
    socket: &Path,
    network: &str,
    keep: &[crate::spec::Attachment],
) -> Result<Vec<Released>, NodeError> {
    let keep: Vec<Value> = keep
        .iter()
        .map(|a| json!({"container_id": a.container_id, "ifname": a.ifname}))
        .collect();
    let reply = request(
        socket,
        &json!({"cmd": "cni_gc", "network": network, "keep": keep}),
    )?;
    parse_released(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_the_node_parse_and_refusals_carry_their_code() {
        let reply = parse_reply(
            r#"{"cni_lease":{"address":"fd00:cafe:0:e1::7","mirrors":["fd00:beef::7"],
                "routes":["fd00:cafe::/48"],"mtu":1400,"existing":true}}"#,
        )
        .unwrap();
        let lease = parse_lease(&reply).unwrap();
        assert_eq!(
            lease.address,
            "fd00:cafe:0:e1::7".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!((lease.mtu, lease.existing), (Some(1400), true));
        assert!(matches!(parse_released(&reply), Err(NodeError::Garbled(_))));
        let gc =
            parse_reply(r#"{"cni_released":[{"container_id":"c1","host_ifname":"cx1"}]}"#).unwrap();
        assert_eq!(parse_released(&gc).unwrap()[0].host_ifname, "cx1");
        assert_eq!(
            parse_reply(r#"{"cni_error":{"code":100,"msg":"pool exhausted"}}"#),
            Err(NodeError::Refused {
                code: Some(100),
                msg: "pool exhausted".into()
            })
        );
        // A code that does not fit a u32 is no code at all.
        assert!(matches!(
            parse_reply(r#"{"cni_error":{"code":4294967296}}"#),
            Err(NodeError::Refused { code: None, .. })
        ));
        assert!(matches!(
            parse_reply(r#"{"error":"unknown command"}"#),
            Err(NodeError::Refused { code: None, .. })
        ));
        assert!(matches!(
            parse_reply("{\"cni_lease\""),
            Err(NodeError::Garbled(_))
        ));
        let bad_address = parse_reply(r#"{"cni_lease":{"address":"10.0.0.1"}}"#).unwrap();
        assert!(matches!(
            parse_lease(&bad_address),
            Err(NodeError::Garbled(_))
        ));
    }
}
