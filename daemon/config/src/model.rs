//! The typed configuration: what the daemon reads after a successful [`crate::load`].
//!
//! Every struct denies unknown keys. Defaults are applied here; cross-field rules live in
//! `validate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{Secret, de as sde};
use crate::types::{ConfigDuration, Ipv4Net, Ipv6Net, PeerAddr, SshPublicKey};

/// The whole document as deserialized, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMesh {
    pub global: GlobalConfig,
    pub nodes: BTreeMap<String, NodeConfig>,
}

/// Mesh-wide settings (`global:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// DNS zone served by every node; names are `<name>.<domain>`.
    pub domain: String,
    /// Mesh prefix; every node address and prefix must lie inside it.
    pub subnet: Ipv6Net,
    /// IPv4 mesh prefix: with it, nodes and `tun_devs` may have an `address4` inside it and the
    /// mesh carries IPv4 too. Without it the mesh is IPv6-only.
    #[serde(default)]
    pub subnet4: Option<Ipv4Net>,
    /// OpenSSH public keys allowed to sign configs and obtain control-plane tokens.
    #[serde(default)]
    pub authorized_keys: Vec<SshPublicKey>,
    /// Public keys that must no longer be trusted, as signers or as node identities.
    #[serde(default)]
    pub revoked_keys: Vec<SshPublicKey>,
    /// Config version; the signed-config work defines how it is compared.
    #[serde(default)]
    pub version: u64,
    /// Protocol timers.
    #[serde(default)]
    pub timers: Timers,
    /// Who may join as an ephemeral node; without it nobody may (`docs/dynamic-mesh.md`).
    #[serde(default)]
    pub ephemeral: Option<crate::dynamic::EphemeralConfig>,
    /// Prefixes delegated to the mesh by DHCPv6 prefix delegation, one entry per delegating
    /// node (`docs/dynamic-mesh.md` §2).
    #[serde(default)]
    pub delegated: Vec<crate::dynamic::DelegatedConfig>,
}

/// Protocol timers (`global.timers`); every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// Idle time on a link after which a keepalive is sent (default 3s).
    pub keepalive_idle: ConfigDuration,
    /// Idle time after which a link is declared dead (default 7s).
    pub dead_interval: ConfigDuration,
    /// Period of the node's own routing update (default 10s).
    pub update_interval: ConfigDuration,
    /// Time without an update after which a node is removed from the routing table (default 60s).
    pub node_dead_after: ConfigDuration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            keepalive_idle: ConfigDuration(Duration::from_secs(3)),
            dead_interval: ConfigDuration(Duration::from_secs(7)),
            update_interval: ConfigDuration(Duration::from_secs(10)),
            node_dead_after: ConfigDuration(Duration::from_secs(60)),
        }
    }
}

/// One node of the mesh (`nodes.<name>:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's mesh address (a /128 on its own stack).
    pub address: Ipv6Addr,
    /// The node's IPv4 mesh address (a /32 on its TUN), inside `global.subnet4`.
    #[serde(default)]
    pub address4: Option<Ipv4Addr>,
    /// The node's public key; binds the name and address to a key.
    #[serde(default)]
    pub identity: Option<SshPublicKey>,
    /// Extra prefixes this node may originate (for namespaces, pods, ...).
    #[serde(default)]
    pub prefixes: Vec<Ipv6Net>,
    /// The node's own TUN device; enabled by default.
    #[serde(default)]
    pub tun: TunConfig,
    /// The node's DNS server.
    #[serde(default)]
    pub dns: DnsConfig,
    /// The local control server.
    #[serde(default)]
    pub cpctl: CpctlConfig,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Links to other nodes, by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// inetd-style TCP services on the node's mesh address, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Extra kernel TUN devices that give the host an address in the mesh, by DNS name.
    #[serde(default)]
    pub tun_devs: BTreeMap<String, TunDevConfig>,
    /// Rootless network namespaces attached to the mesh, by DNS name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The eBPF fast path for plaintext udp links.
    #[serde(default)]
    pub fastpath: FastpathConfig,
    /// This node's address pool for ephemeral nodes and containers (`docs/dynamic-mesh.md`).
    #[serde(default)]
    pub issue: Option<crate::dynamic::IssueConfig>,
    /// Dataplane worker threads (1 to [`MAX_WORKERS`]); `None`: one per CPU, at most
    /// [`DEFAULT_MAX_WORKERS`].
    #[serde(default)]
    pub workers: Option<u32>,
    /// The CPU-local data path: each worker thread pinned to a CPU of its own, a packet kept on
    /// the worker of the CPU it appeared on (`connectopus node --cpu-local` turns it on too).
    #[serde(default)]
    pub cpu_local: bool,
}

/// The most dataplane workers a node may be given (`nodes.<name>.workers`).
pub const MAX_WORKERS: u32 = 64;

/// The most dataplane workers a node runs when `workers` is not set (one per CPU up to this).
pub const DEFAULT_MAX_WORKERS: usize = 8;

/// Longest Linux interface name.
pub const MAX_IFNAME_LEN: usize = 15;

impl NodeConfig {
    /// Returns the name of the node's own TUN device, or `None` when it is disabled.
    ///
    /// Without `tun.name` the name is `cx-<node>`, cut to 15 bytes.
    pub fn tun_name(&self, node_name: &str) -> Option<String> {
        if self.tun.disable {
            return None;
        }
        Some(
            self.tun
                .name
                .clone()
                .unwrap_or_else(|| default_tun_name(node_name)),
        )
    }
}

/// Derives the default TUN device name of a node: `cx-<node>` cut to 15 bytes.
pub fn default_tun_name(node_name: &str) -> String {
    let mut name = format!("cx-{node_name}");
    name.truncate(MAX_IFNAME_LEN);
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// The node's own TUN device (`nodes.N.tun`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunConfig {
    /// Interface name, at most 15 bytes; defaults to `cx-<node>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Turns the device off.
    #[serde(default)]
    pub disable: bool,
}

/// The node's DNS server (`nodes.N.dns`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Turns the DNS server off on this node.
    #[serde(default)]
    pub disable: bool,
}

/// The eBPF fast path for plaintext udp links (`nodes.N.fastpath`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastpathConfig {
    /// Turns the fast path off on this node: every packet goes through userspace.
    #[serde(default)]
    pub disable: bool,
}

/// The local control server (`nodes.N.cpctl`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpctlConfig {
    /// Unix socket path; a relative path is under the control-socket directory
    /// (`/run/connectopus`, see [`CpctlConfig::socket_path`]).
    #[serde(default)]
    pub socket_file: Option<PathBuf>,
    /// Turns the unix socket off (the HTTP API on `port` still serves).
    #[serde(default)]
    pub no_socket: bool,
    /// TCP port of the HTTP listener (UI and API); off when absent.
    #[serde(default)]
    pub port: Option<u16>,
}

impl CpctlConfig {
    /// Where the node serves its control socket: `socket_file` when set (a relative path
    /// under `socket_dir`), else `default` (`/run/connectopus/<node>.sock`).
    pub fn socket_path(&self, socket_dir: &std::path::Path, default: PathBuf) -> PathBuf {
        match &self.socket_file {
            Some(file) if file.is_absolute() => file.clone(),
            Some(file) => socket_dir.join(file),
            None => default,
        }
    }
}

/// The Prometheus metrics endpoint (`nodes.N.metrics`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`: `"[addr]:port"` or `"ipv4:port"`; off when absent.
    /// Validation checks that it parses (see [`MetricsConfig::listen_addr`]).
    #[serde(default)]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// Returns the address to serve `/metrics` on, when one is set and valid.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|s| s.trim().parse().ok())
    }
}

/// An inetd-style service (`nodes.N.services.S`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// TCP port on the node's mesh address.
    pub port: u16,
    /// Command line, split shell-style without a shell, spawned per connection.
    pub command: String,
    /// Most connections served at once; more are accepted and closed at once (default 64).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// Default of `services.S.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

/// A kernel TUN device for the host (`nodes.N.tun_devs.T`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunDevConfig {
    /// Interface name, at most 15 bytes.
    pub device: String,
    /// Host-side address (/128), inside `global.subnet`.
    pub address: Ipv6Addr,
    /// Host-side IPv4 address (/32), inside `global.subnet4`.
    #[serde(default)]
    pub address4: Option<Ipv4Addr>,
    /// Advertised cost of the /128 (default 1.0, must be > 0).
    #[serde(default = "one")]
    pub cost: f64,
}

/// A rootless network namespace (`nodes.N.namespaces.NS`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Address inside the namespace (/128), inside `global.subnet`.
    pub address: Ipv6Addr,
    /// IPv4 address inside the namespace (/32, with an IPv4 default route into the mesh),
    /// inside `global.subnet4`.
    #[serde(default)]
    pub address4: Option<Ipv4Addr>,
    /// Advertised cost (default 1.0, must be > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Long-running commands started inside the namespace, by name.
    #[serde(default)]
    pub services: BTreeMap<String, NamespaceServiceConfig>,
}

/// A command run inside a namespace (`nodes.N.namespaces.NS.services.X`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceServiceConfig {
    /// Command line, split shell-style without a shell.
    pub command: String,
}

fn one() -> f64 {
    1.0
}

/// A link to a peer (`nodes.N.backends.B`), chosen by its `type` key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum BackendConfig {
    /// Dials a DTLS listener over UDP.
    DtlsDialer(DtlsDialer),
    /// Accepts DTLS sessions over UDP.
    DtlsListener(DtlsListener),
    /// Dials a TCP listener, optionally with TLS.
    TcpDialer(TcpDialer),
    /// Accepts TCP connections, optionally with TLS.
    TcpListener(TcpListener),
    /// Dials a plaintext UDP listener (IPv6-in-UDP, for a trusted or already encrypted
    /// underlay).
    UdpDialer(UdpDialer),
    /// Accepts plaintext UDP links.
    UdpListener(UdpListener),
}

/// The names of the backend types, as written in `type:`.
pub const BACKEND_TYPES: &[&str] = &[
    "dtls-dialer",
    "dtls-listener",
    "tcp-dialer",
    "tcp-listener",
    "udp-dialer",
    "udp-listener",
];

macro_rules! pairs {
    ($($(#[$doc:meta])* $name:ident / $file:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Option<&Secret> {
                self.$name.as_ref().or(self.$file.as_ref())
            }
        )*

        /// Lists every secret slot as `(key, value)`, inline and file variants separately.
        pub(crate) fn secret_slots(&self) -> Vec<(&'static str, Option<&Secret>)> {
            vec![$((stringify!($name), self.$name.as_ref()), (stringify!($file), self.$file.as_ref())),*]
        }
    };
}

/// The record cipher of a DTLS link in PSK mode (`psk_cipher`). Both choices are forward
/// secret; a link between a node that offers both and one that offers ChaCha20-Poly1305 only
/// gets ChaCha20-Poly1305, whichever end dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PskCipher {
    /// `DHE-PSK-AES128-GCM-SHA256` first, `ECDHE-PSK-CHACHA20-POLY1305` for peers that offer
    /// only that (the default).
    #[serde(rename = "aes-128-gcm")]
    Aes128Gcm,
    /// `ECDHE-PSK-CHACHA20-POLY1305` only: for CPUs without AES instructions, where
    /// ChaCha20 is the faster record cipher (and X25519 the cheaper handshake).
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl PskCipher {
    /// The values the key accepts, as written in the mesh file.
    pub const NAMES: [&'static str; 2] = ["aes-128-gcm", "chacha20-poly1305"];
}

/// `type: dtls-dialer`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsDialer {
    /// Underlay address to dial.
    pub peer: PeerAddr,
    /// Node expected at the other end.
    #[serde(default)]
    pub peer_node: Option<String>,
    /// Cost this node advertises for the link (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Name checked against the listener's certificate (certificate mode).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skips certificate verification (certificate mode); unsafe.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, deserialize_with = "sde::psk")]
    psk: Option<Secret>,
    #[serde(default, deserialize_with = "sde::psk_file")]
    psk_file: Option<Secret>,
    /// The record cipher a PSK link prefers (PSK mode only; default AES-128-GCM).
    #[serde(default)]
    pub psk_cipher: Option<PskCipher>,
    #[serde(default, deserialize_with = "sde::ca")]
    root_ca: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca_file")]
    root_ca_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert")]
    client_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    client_cert_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key")]
    client_key: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key_file")]
    client_key_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert")]
    pinned_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    pinned_cert_file: Option<Secret>,
}

impl DtlsDialer {
    pairs! {
        /// Returns the pre-shared key (`psk` or `psk_file`); PSK mode when set.
        psk / psk_file;
        /// Returns the CA bundle that verifies the listener (`root_ca` or `root_ca_file`).
        root_ca / root_ca_file;
        /// Returns the client certificate (`client_cert` or `client_cert_file`).
        client_cert / client_cert_file;
        /// Returns the client private key (`client_key` or `client_key_file`).
        client_key / client_key_file;
        /// Returns the exact certificate the listener must present (`pinned_cert[_file]`).
        pinned_cert / pinned_cert_file;
    }
}

/// `type: dtls-listener`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsListener {
    /// UDP port to listen on (required).
    #[serde(default)]
    pub port: Option<u16>,
    /// Bind address (default: all).
    #[serde(default)]
    pub listen_ip: Option<IpAddr>,
    /// Cost this node advertises for sessions on this backend (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Requires dialers to present a certificate signed by `client_ca`.
    #[serde(default)]
    pub require_client_cert: bool,
    #[serde(default, deserialize_with = "sde::psk")]
    psk: Option<Secret>,
    #[serde(default, deserialize_with = "sde::psk_file")]
    psk_file: Option<Secret>,
    /// The record cipher a PSK link prefers (PSK mode only; default AES-128-GCM).
    #[serde(default)]
    pub psk_cipher: Option<PskCipher>,
    #[serde(default, deserialize_with = "sde::cert")]
    server_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    server_cert_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key")]
    server_key: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key_file")]
    server_key_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca")]
    client_ca: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca_file")]
    client_ca_file: Option<Secret>,
}

impl DtlsListener {
    pairs! {
        /// Returns the pre-shared key (`psk` or `psk_file`); PSK mode when set.
        psk / psk_file;
        /// Returns the server certificate chain (`server_cert` or `server_cert_file`).
        server_cert / server_cert_file;
        /// Returns the server private key (`server_key` or `server_key_file`).
        server_key / server_key_file;
        /// Returns the CA bundle that verifies client certificates (`client_ca[_file]`).
        client_ca / client_ca_file;
    }
}

/// `type: tcp-dialer`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpDialer {
    /// Underlay address to dial.
    pub peer: PeerAddr,
    /// Node expected at the other end.
    #[serde(default)]
    pub peer_node: Option<String>,
    /// Cost this node advertises for the link (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Wraps the connection in TLS (1.2 or later).
    #[serde(default)]
    pub tls: bool,
    /// Name checked against the listener's certificate (defaults to the peer host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skips certificate verification; unsafe.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, deserialize_with = "sde::ca")]
    root_ca: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca_file")]
    root_ca_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert")]
    client_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    client_cert_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key")]
    client_key: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key_file")]
    client_key_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert")]
    pinned_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    pinned_cert_file: Option<Secret>,
}

impl TcpDialer {
    pairs! {
        /// Returns the CA bundle that verifies the listener (`root_ca` or `root_ca_file`).
        root_ca / root_ca_file;
        /// Returns the client certificate (`client_cert` or `client_cert_file`).
        client_cert / client_cert_file;
        /// Returns the client private key (`client_key` or `client_key_file`).
        client_key / client_key_file;
        /// Returns the exact certificate the listener must present (`pinned_cert[_file]`).
        pinned_cert / pinned_cert_file;
    }
}

/// `type: tcp-listener`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// TCP port to listen on (required).
    #[serde(default)]
    pub port: Option<u16>,
    /// Bind address (default: all).
    #[serde(default)]
    pub listen_ip: Option<IpAddr>,
    /// Cost this node advertises for sessions on this backend (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Wraps connections in TLS (1.2 or later).
    #[serde(default)]
    pub tls: bool,
    /// Requires dialers to present a certificate signed by `client_ca`.
    #[serde(default)]
    pub require_client_cert: bool,
    #[serde(default, deserialize_with = "sde::cert")]
    server_cert: Option<Secret>,
    #[serde(default, deserialize_with = "sde::cert_file")]
    server_cert_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key")]
    server_key: Option<Secret>,
    #[serde(default, deserialize_with = "sde::key_file")]
    server_key_file: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca")]
    client_ca: Option<Secret>,
    #[serde(default, deserialize_with = "sde::ca_file")]
    client_ca_file: Option<Secret>,
}

impl TcpListener {
    pairs! {
        /// Returns the server certificate chain (`server_cert` or `server_cert_file`).
        server_cert / server_cert_file;
        /// Returns the server private key (`server_key` or `server_key_file`).
        server_key / server_key_file;
        /// Returns the CA bundle that verifies client certificates (`client_ca[_file]`).
        client_ca / client_ca_file;
    }
}

/// `type: udp-dialer`: a plaintext link; the underlay must already be trusted or encrypted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpDialer {
    /// Underlay address to dial.
    pub peer: PeerAddr,
    /// Node expected at the other end.
    #[serde(default)]
    pub peer_node: Option<String>,
    /// Cost this node advertises for the link (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// `type: udp-listener`: accepts plaintext links.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpListener {
    /// UDP port to listen on (required).
    #[serde(default)]
    pub port: Option<u16>,
    /// Bind address (default: all).
    #[serde(default)]
    pub listen_ip: Option<IpAddr>,
    /// Cost this node advertises for links on this backend (default 1.0, > 0).
    #[serde(default = "one")]
    pub cost: f64,
    /// Override of the backend MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl BackendConfig {
    /// Returns the `type` name, such as `dtls-dialer`.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::DtlsDialer(_) => "dtls-dialer",
            BackendConfig::DtlsListener(_) => "dtls-listener",
            BackendConfig::TcpDialer(_) => "tcp-dialer",
            BackendConfig::TcpListener(_) => "tcp-listener",
            BackendConfig::UdpDialer(_) => "udp-dialer",
            BackendConfig::UdpListener(_) => "udp-listener",
        }
    }

    /// Returns the link cost this node advertises (default 1.0).
    pub fn cost(&self) -> f64 {
        match self {
            BackendConfig::DtlsDialer(b) => b.cost,
            BackendConfig::DtlsListener(b) => b.cost,
            BackendConfig::TcpDialer(b) => b.cost,
            BackendConfig::TcpListener(b) => b.cost,
            BackendConfig::UdpDialer(b) => b.cost,
            BackendConfig::UdpListener(b) => b.cost,
        }
    }

    /// Returns the MTU override, if any.
    pub fn mtu(&self) -> Option<u32> {
        match self {
            BackendConfig::DtlsDialer(b) => b.mtu,
            BackendConfig::DtlsListener(b) => b.mtu,
            BackendConfig::TcpDialer(b) => b.mtu,
            BackendConfig::TcpListener(b) => b.mtu,
            BackendConfig::UdpDialer(b) => b.mtu,
            BackendConfig::UdpListener(b) => b.mtu,
        }
    }

    /// Returns the node expected at the other end, for dialers that name one.
    pub fn peer_node(&self) -> Option<&str> {
        match self {
            BackendConfig::DtlsDialer(b) => b.peer_node.as_deref(),
            BackendConfig::TcpDialer(b) => b.peer_node.as_deref(),
            BackendConfig::UdpDialer(b) => b.peer_node.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn secret_slots(&self) -> Vec<(&'static str, Option<&Secret>)> {
        match self {
            BackendConfig::DtlsDialer(b) => b.secret_slots(),
            BackendConfig::DtlsListener(b) => b.secret_slots(),
            BackendConfig::TcpDialer(b) => b.secret_slots(),
            BackendConfig::TcpListener(b) => b.secret_slots(),
            BackendConfig::UdpDialer(_) | BackendConfig::UdpListener(_) => Vec::new(),
        }
    }

    /// Returns the secrets this backend sets, with their keys (`psk_file`, `server_key`, ...).
    pub fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        self.secret_slots()
            .into_iter()
            .filter_map(|(key, secret)| secret.map(|s| (key, s)))
            .collect()
    }
}

/// Every key each backend type accepts, used to explain unknown-key errors.
pub(crate) const BACKEND_KEYS: &[(&str, &[&str])] = &[
    (
        "dtls-dialer",
        &[
            "type",
            "peer",
            "peer_node",
            "cost",
            "mtu",
            "server_name",
            "insecure_skip_verify",
            "psk",
            "psk_file",
            "psk_cipher",
            "root_ca",
            "root_ca_file",
            "client_cert",
            "client_cert_file",
            "client_key",
            "client_key_file",
            "pinned_cert",
            "pinned_cert_file",
        ],
    ),
    (
        "dtls-listener",
        &[
            "type",
            "port",
            "listen_ip",
            "cost",
            "mtu",
            "require_client_cert",
            "psk",
            "psk_file",
            "psk_cipher",
            "server_cert",
            "server_cert_file",
            "server_key",
            "server_key_file",
            "client_ca",
            "client_ca_file",
        ],
    ),
    (
        "tcp-dialer",
        &[
            "type",
            "peer",
            "peer_node",
            "cost",
            "mtu",
            "tls",
            "server_name",
            "insecure_skip_verify",
            "root_ca",
            "root_ca_file",
            "client_cert",
            "client_cert_file",
            "client_key",
            "client_key_file",
            "pinned_cert",
            "pinned_cert_file",
        ],
    ),
    (
        "tcp-listener",
        &[
            "type",
            "port",
            "listen_ip",
            "cost",
            "mtu",
            "tls",
            "require_client_cert",
            "server_cert",
            "server_cert_file",
            "server_key",
            "server_key_file",
            "client_ca",
            "client_ca_file",
        ],
    ),
    ("udp-dialer", &["type", "peer", "peer_node", "cost", "mtu"]),
    (
        "udp-listener",
        &["type", "port", "listen_ip", "cost", "mtu"],
    ),
];
