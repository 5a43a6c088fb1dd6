//! The CNI specification's shapes (1.0.0 and 1.1.0), hand-written (the `cni-plugin` crate
//! stops at 1.0.0): the network configuration the runtime passes on stdin, the result of ADD,
//! the answer to VERSION and the error object.

use serde::{Deserialize, Serialize};

/// The versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The newest of them, what VERSION answers with unless asked in another.
pub const NEWEST_VERSION: &str = "1.1.0";

/// Spec error codes, and ours (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A required environment variable is missing or invalid.
    pub const MISSING_ENV: u32 = 4;
    /// Stdin could not be decoded.
    pub const UNDECODABLE: u32 = 6;
    /// Invalid network configuration (also: CHECK without `prevResult`).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the node is unreachable or busy.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (the pool is exhausted, the node serves no
    /// containers).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the node is unreachable, so existing containers have lost the mesh too.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The node's pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The node does not serve containers.
    pub const NOT_SERVED: u32 = 101;
    /// A netlink operation failed (`details` has the errno).
    pub const NETLINK: u32 = 102;
    /// CHECK found the container's attachment not as ADD left it.
    pub const CHECK_MISMATCH: u32 = 103;
}

/// A failure, as the plugin prints it on stdout (with exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: SUPPORTED_VERSIONS[0].to_owned(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn with_version(mut self, version: &str) -> CniError {
        if SUPPORTED_VERSIONS.contains(&version) {
            version.clone_into(&mut self.cni_version);
        }
        self
    }
}

/// The network configuration of the `connectopus` plugin (one entry of a conflist, with the
/// runtime's `name`, `cniVersion` and, for CHECK and chained plugins, `prevResult`).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node to ask; default: the only one running.
    #[serde(default)]
    pub node: Option<String>,
    /// Its control socket, overriding `node`.
    #[serde(default)]
    pub socket: Option<std::path::PathBuf>,
    /// `mesh` (the mesh subnet and its mirrors) or `default` (`::/0`).
    #[serde(default)]
    pub routes: Option<String>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC (1.1.0): the attachments the runtime still knows; the others are released.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Only the version, for VERSION (whose stdin may carry nothing else).
#[derive(Debug, Clone, Deserialize)]
pub struct VersionOnly {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// CIDR: `fd00:cafe:0:e1::7/128`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// The result of ADD (and the `prevResult` of CHECK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub dns: Dns,
}

/// The answer to VERSION.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_the_reference_plugin_and_of_the_design_parse() {
        // /usr/lib/cni/ptp's ADD result, verbatim (shared/reference/cni-dhcpv6.md §1.3): a
        // CHECK or a chained plugin hands results of this shape back.
        let ptp = r#"{"cniVersion":"1.0.0",
 "interfaces":[{"name":"veth1b59c5ce","mac":"c2:60:77:d5:4f:04"},
               {"name":"eth0","mac":"ce:44:eb:f0:f3:2a","sandbox":"/run/netns/cnitest-c1"}],
 "ips":[{"interface":1,"address":"fd42:cafe:1::10/64","gateway":"fd42:cafe:1::1"}],
 "routes":[{"dst":"::/0"}],
 "dns":{}}"#;
        let parsed: CniResult = serde_json::from_str(ptp).unwrap();
        assert_eq!(
            parsed.interfaces[1].sandbox.as_deref(),
            Some("/run/netns/cnitest-c1")
        );
        assert_eq!(parsed.ips[0].interface, Some(1));
        assert_eq!(parsed.routes[0].gw, None);
        // Ours (dynamic-mesh.md §3.2) round-trips, and empty fields are left out.
        let ours = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "cx1a2b3c4d".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: None,
                mtu: None,
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "fd00:cafe:0:e1::7/128".into(),
                gateway: Some("fe80::1".into()),
            }],
            routes: vec![RouteConfig {
                dst: "fd00:cafe::/48".into(),
                gw: Some("fe80::1".into()),
            }],
            dns: Dns::default(),
        };
        let text = serde_json::to_string(&ours).unwrap();
        assert!(
            !text.contains("sandbox") && text.contains(r#""dns":{}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<CniResult>(&text).unwrap(), ours);
        let error = CniError::new(code::INVALID_CONFIG, "bad").with_version("1.0.0");
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"bad"}"#
        );
    }
}
