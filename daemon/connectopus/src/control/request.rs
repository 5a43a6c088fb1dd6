//! The control socket's request: one JSON line from a local client, parsed without the node
//! (so `fuzz/fuzz_targets/control_request.rs` compiles this file on its own: serde only).

use serde::{Deserialize, Serialize};

/// A request to a running node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Report the node's state.
    Status,
    /// Return the running configuration: its exact signed bytes and signature.
    GetConfig,
    /// Take a new signed configuration (verified against the running one, then spread).
    SetConfig {
        /// The configuration file's text.
        config: String,
        /// The signature file's text.
        signature: String,
    },
    /// Re-read the configuration file and its signature, like SIGHUP, and say what happened.
    Reload,
    /// Change the log level (`error`, `warning`/`warn`, `info`, `debug`, `trace`).
    LogLevel {
        /// The new level.
        level: String,
    },
    /// List an issuer's lease table (docs/dynamic-mesh.md §1.8).
    Leases,
    /// Give the mesh prefix this node holds by DHCPv6 prefix delegation back to the server
    /// now (an RFC 8415 Release) and withdraw it from the mesh; the client then stays idle
    /// until the node's mesh instance restarts (docs/dynamic-mesh.md §2.4).
    PdRelease,
    /// The CNI plugin's ADD: a lease for the container (the same again for the same key).
    /// Local only (docs/dynamic-mesh.md §3.3), like every `cni_*` request.
    CniAdd {
        /// The CNI network (the configuration's `name`).
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS` (informational).
        #[serde(default)]
        netns: Option<String>,
        /// The container's name in the mesh, as asked for.
        name: String,
        /// The host side of its veth pair (informational: the node derives it).
        #[serde(default)]
        host_ifname: Option<String>,
    },
    /// The CNI plugin's DEL: the node releases the container's lease (none is no error).
    CniDel {
        /// The CNI network.
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// The CNI plugin's CHECK: the node still holds `address` for the container.
    CniCheck {
        /// The CNI network.
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// The address ADD gave.
        address: std::net::Ipv6Addr,
    },
    /// The CNI plugin's GC: the node releases the network's leases not in `keep`.
    CniGc {
        /// The CNI network.
        network: String,
        /// The attachments that stay (`cni.dev/valid-attachments`).
        keep: Vec<CniAttachment>,
    },
    /// The CNI plugin's STATUS: whether the node serves containers and has room.
    CniStatus {
        /// The CNI network.
        network: String,
    },
}

/// One attachment a `cni_gc` keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl ControlRequest {
    /// Tells whether the request is the CNI plugin's (`cni_*`): served on the control
    /// socket only, never from the mesh.
    pub fn is_cni(&self) -> bool {
        matches!(
            self,
            ControlRequest::CniAdd { .. }
                | ControlRequest::CniDel { .. }
                | ControlRequest::CniCheck { .. }
                | ControlRequest::CniGc { .. }
                | ControlRequest::CniStatus { .. }
        )
    }
}

/// Parses one request line (untrusted bytes from the socket, read as UTF-8). Unknown
/// commands, missing fields and anything but one JSON object are errors.
///
/// # Errors
/// The line is not a request; the message says why.
pub fn parse_request(line: &str) -> Result<ControlRequest, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_and_garbage_is_refused() {
        assert_eq!(
            parse_request("{\"cmd\":\"status\"}\n").ok(),
            Some(ControlRequest::Status)
        );
        assert_eq!(
            parse_request(r#"{"cmd":"log_level","level":"debug"}"#).ok(),
            Some(ControlRequest::LogLevel {
                level: "debug".into()
            })
        );
        let add = parse_request(
            r#"{"cmd":"cni_add","network":"mesh","container_id":"c1","ifname":"eth0","netns":"/run/netns/x","name":"web-1","host_ifname":"cx1a2b3c4d"}"#,
        )
        .unwrap();
        assert!(add.is_cni() && !ControlRequest::Status.is_cni());
        let gc = parse_request(
            r#"{"cmd":"cni_gc","network":"mesh","keep":[{"container_id":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert!(matches!(gc, ControlRequest::CniGc { ref keep, .. } if keep.len() == 1));
        for bad in [
            r#"{"cmd":"cni_check","network":"mesh","container_id":"c","ifname":"eth0","address":"10.0.0.1"}"#,
            r#"{"cmd":"cni_gc","network":"mesh"}"#,
            "",
            "{}",
            r#"{"cmd":"shutdown"}"#,
            r#"{"cmd":"set_config","config":"x"}"#,
            r#"{"cmd":"status"} {"cmd":"status"}"#,
            "[1,2]",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
