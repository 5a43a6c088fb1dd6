//! DTLS backends: building association configurations from the mesh config, and the
//! listener and dialer state the main loop keeps for them.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{Context, Result, anyhow, bail};
use connectopus_config::{DtlsDialer, DtlsListener, PeerAddr, PeerHost, PskCipher, Secret};
use connectopus_dtls::{
    CertificateCredentials, CertifiedKey, ClientConfig, Credentials, DtlsConfig, ExpectedName,
    PeerVerification, PskCredentials, PskSuite, RekeyPolicy, ServerConfig,
};
use openssl::pkey::PKey;
use openssl::x509::X509;

use crate::backends::Backoff;

/// The PSK identity every node presents; the PSK itself is the secret.
const PSK_IDENTITY: &[u8] = b"connectopus";

/// Most handshaking associations one listener keeps at once.
pub const MAX_HALF_OPEN: usize = 256;

fn x509s(secret: &Secret, what: &str) -> Result<Vec<X509>> {
    let bytes = secret
        .resolve()
        .with_context(|| format!("reading {what}"))?;
    let certs = X509::stack_from_pem(bytes.expose())
        .map_err(|e| anyhow!("{what}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        bail!("{what}: no certificate found");
    }
    Ok(certs)
}

fn certified_key(
    cert: &Secret,
    key: &Secret,
    cert_what: &str,
    key_what: &str,
) -> Result<CertifiedKey> {
    let mut chain = x509s(cert, cert_what)?;
    let certificate = chain.remove(0);
    let key_bytes = key
        .resolve()
        .with_context(|| format!("reading {key_what}"))?;
    let private_key = PKey::private_key_from_pem(key_bytes.expose())
        .map_err(|e| anyhow!("{key_what}: not a PEM private key: {e}"))?;
    Ok(CertifiedKey {
        certificate,
        chain,
        private_key,
    })
}

fn psk(secret: &Secret, cipher: Option<PskCipher>) -> Result<Credentials> {
    let key = secret.resolve().context("reading psk")?;
    if key.expose().is_empty() {
        bail!("psk is empty");
    }
    let mut credentials = PskCredentials::new(PSK_IDENTITY, key.expose().to_vec());
    credentials.suite = psk_suite(cipher);
    Ok(Credentials::Psk(credentials))
}

/// The PSK suites a `psk_cipher` offers (both forward secret).
fn psk_suite(cipher: Option<PskCipher>) -> PskSuite {
    match cipher {
        None | Some(PskCipher::Aes128Gcm) => PskSuite::DhePskAes128GcmOrEcdhePskChaCha20,
        Some(PskCipher::ChaCha20Poly1305) => PskSuite::EcdhePskChaCha20Poly1305,
    }
}

/// Builds the server configuration of a DTLS listener.
///
/// # Errors
/// Missing or unreadable credentials, named by their config key.
pub fn listener_config(l: &DtlsListener, mtu: u16) -> Result<ServerConfig> {
    let credentials = if let Some(secret) = l.psk() {
        psk(secret, l.psk_cipher)?
    } else {
        let (Some(cert), Some(key)) = (l.server_cert(), l.server_key()) else {
            bail!("a DTLS listener needs psk, or server_cert and server_key");
        };
        let verify = match l.client_ca() {
            Some(ca) => PeerVerification::CaBundle {
                roots: x509s(ca, "client_ca")?,
                expected_name: None,
            },
            None if l.require_client_cert => bail!("require_client_cert needs client_ca"),
            None => PeerVerification::Insecure,
        };
        Credentials::Certificate(CertificateCredentials {
            identity: Some(certified_key(cert, key, "server_cert", "server_key")?),
            verify,
            require_client_cert: l.require_client_cert,
        })
    };
    let mut config = DtlsConfig::new(credentials);
    config.mtu = mtu;
    config.rekey = rekey_policy();
    ServerConfig::new(&config).map_err(|e| anyhow!("dtls: {e}"))
}

/// Environment variable (tests only, undocumented for users): seconds between key updates of
/// each DTLS link direction instead of the hour.
pub const REKEY_INTERVAL_ENV: &str = "CONNECTOPUS_TEST_DTLS_REKEY_SECS";

/// The key update policy: an hour or 2^28 records, or a shorter interval for tests.
fn rekey_policy() -> RekeyPolicy {
    let mut policy = RekeyPolicy::default();
    if let Some(secs) = std::env::var(REKEY_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.05)
    {
        policy.interval = std::time::Duration::from_secs_f64(secs);
    }
    policy
}

/// Builds the client configuration of a DTLS dialer.
///
/// # Errors
/// Missing or unreadable credentials, or no way to verify the listener.
pub fn dialer_config(d: &DtlsDialer, mtu: u16) -> Result<ClientConfig> {
    let credentials = if let Some(secret) = d.psk() {
        psk(secret, d.psk_cipher)?
    } else {
        let verify = if d.insecure_skip_verify {
            PeerVerification::Insecure
        } else if let Some(pinned) = d.pinned_cert() {
            PeerVerification::PinnedCertificate(x509s(pinned, "pinned_cert")?.remove(0))
        } else if let Some(ca) = d.root_ca() {
            let name = d.server_name.clone().map_or_else(
                || match &d.peer.host {
                    PeerHost::Ip(ip) => ExpectedName::Ip(*ip),
                    PeerHost::Name(n) => ExpectedName::Dns(n.clone()),
                },
                |n| match n.parse::<IpAddr>() {
                    Ok(ip) => ExpectedName::Ip(ip),
                    Err(_) => ExpectedName::Dns(n),
                },
            );
            PeerVerification::CaBundle {
                roots: x509s(ca, "root_ca")?,
                expected_name: Some(name),
            }
        } else {
            bail!("a DTLS dialer needs psk, or root_ca or pinned_cert (or insecure_skip_verify)");
        };
        let identity = match (d.client_cert(), d.client_key()) {
            (Some(c), Some(k)) => Some(certified_key(c, k, "client_cert", "client_key")?),
            (None, None) => None,
            _ => bail!("client_cert and client_key go together"),
        };
        Credentials::Certificate(CertificateCredentials {
            identity,
            verify,
            require_client_cert: false,
        })
    };
    let mut config = DtlsConfig::new(credentials);
    config.mtu = mtu;
    config.rekey = rekey_policy();
    ClientConfig::new(&config).map_err(|e| anyhow!("dtls: {e}"))
}

/// A UDP socket the main loop serves: a listener's, or a dialer's.
#[derive(Debug)]
pub struct UdpEndpoint {
    /// The socket (nonblocking).
    pub socket: std::sync::Arc<UdpSocket>,
    /// Backend name.
    pub backend: String,
    /// Link cost.
    pub cost: connectopus_wire::Cost,
    /// Link MTU.
    pub mtu: u16,
    /// What the socket is for.
    pub role: UdpRole,
}

impl UdpEndpoint {
    /// Returns true for a plaintext UDP backend (`udp-dialer`, `udp-listener`): its datagrams
    /// are link messages as they are, without DTLS.
    pub fn is_plain(&self) -> bool {
        match &self.role {
            UdpRole::PlainListener => true,
            UdpRole::Dialer(d) => d.config.is_none(),
            UdpRole::Listener(_) => false,
        }
    }
}

/// What a UDP socket is for.
#[derive(Debug)]
pub enum UdpRole {
    /// Accepts associations from many peers.
    Listener(Box<ServerConfig>),
    /// Accepts plaintext links from many peers (`udp-listener`).
    PlainListener,
    /// Keeps one association to one peer up.
    Dialer(Box<DialerState>),
}

/// The state of a DTLS dialer.
#[derive(Debug)]
pub struct DialerState {
    /// Where to dial.
    pub peer: PeerAddr,
    /// The association settings; `None` for a plaintext `udp-dialer`.
    pub config: Option<ClientConfig>,
    /// Retry delays.
    pub backoff: Backoff,
    /// When to try next, if no attempt is running.
    pub next_attempt: Option<std::time::Instant>,
}

/// Binds a listener's UDP socket.
///
/// # Errors
/// The address cannot be bound.
pub fn bind_listener(bind: SocketAddr, reuse_port: bool) -> Result<UdpSocket> {
    if reuse_port {
        // `SO_REUSEPORT` would let this bind share a port another process holds (and steal
        // some of its peers): a plain bind first finds out, as without it.
        drop(UdpSocket::bind(bind).with_context(|| format!("binding udp {bind}"))?);
    }
    let socket = bind_udp(bind, reuse_port).with_context(|| format!("binding udp {bind}"))?;
    socket.set_nonblocking(true)?;
    enlarge_buffers(&socket);
    // Each datagram's destination address, so that answers leave from it (a listener bound
    // to a wildcard address on a host with several must answer from the one dialled).
    uring_io::enable_pktinfo(std::os::fd::AsRawFd::as_raw_fd(&socket), bind.is_ipv6())
        .with_context(|| format!("udp {bind}: enabling packet info"))?;
    Ok(socket)
}

/// Socket buffer size for link sockets: bursts from a TUN batch must not overflow the default
/// (about 200 KiB).
const SOCKET_BUFFER: libc::c_int = 4 * 1024 * 1024;

/// Raises the socket's send and receive buffers (past the sysctl limits when root).
fn enlarge_buffers(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = SOCKET_BUFFER;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by `socket` for the duration of the call, and
        // the option value points at a live c_int whose size is passed.
        let forced =
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, force, (&raw const size).cast(), len) };
        if forced != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, (&raw const size).cast(), len);
            }
        }
    }
}

/// Asks the kernel to hand over consecutive datagrams of one peer as one GRO batch
/// (`UDP_GRO`); each receive then reports its segment size.
///
/// # Errors
/// The kernel refuses the option (older than 5.0).
pub fn enable_gro(socket: &UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is an open socket owned by `socket` for the duration of the call, and the
    // option value points at a live c_int whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds a dialer's UDP socket on an ephemeral port (dual-stack: IPv4 peers are reached
/// through mapped addresses).
///
/// # Errors
/// No socket can be bound.
pub fn bind_dialer(reuse_port: bool) -> Result<UdpSocket> {
    let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let socket = bind_udp(any, reuse_port).context("binding udp [::]:0")?;
    socket.set_nonblocking(true)?;
    enlarge_buffers(&socket);
    Ok(socket)
}

/// Binds a UDP socket, with `SO_REUSEPORT` when `reuse_port` (then the dataplane workers can
/// bind sockets of their own, connected to one peer each, on the same port: see
/// [`connect_peer`]).
fn bind_udp(bind: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    if !reuse_port {
        return UdpSocket::bind(bind);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if bind.is_ipv6() {
        // As `UdpSocket::bind` leaves it: dual-stack (IPv4 peers as mapped addresses).
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// Opens a socket that receives the datagrams of one peer only: bound with `SO_REUSEPORT` to
/// the port of `shared` (which must have it too) and the local address the peer talks to
/// (`local`, else the one `shared` is bound to), and connected to `remote`. The kernel hands a
/// datagram to the connected socket whose addresses match it exactly before the others of the
/// port, so the dataplane worker that holds this socket receives everything the peer sends.
///
/// # Errors
/// The kernel refuses the socket, the bind or the connect.
pub fn connect_peer(
    shared: &UdpSocket,
    local: Option<std::net::IpAddr>,
    remote: SocketAddr,
    gro: bool,
) -> std::io::Result<UdpSocket> {
    let bound = shared.local_addr()?;
    let v6 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let (local, remote) = match bound {
        SocketAddr::V6(_) => (
            std::net::IpAddr::V6(v6(local.unwrap_or(bound.ip()))),
            SocketAddr::new(std::net::IpAddr::V6(v6(remote.ip())), remote.port()),
        ),
        SocketAddr::V4(_) => (
            local
                .filter(std::net::IpAddr::is_ipv4)
                .unwrap_or(bound.ip()),
            remote,
        ),
    };
    let socket = bind_udp(SocketAddr::new(local, bound.port()), true)?;
    socket.connect(remote)?;
    socket.set_nonblocking(true)?;
    enlarge_buffers(&socket);
    if gro {
        enable_gro(&socket)?;
    }
    Ok(socket)
}

/// Opens another member of the `SO_REUSEPORT` group of `shared` (bound to the same address
/// and port, unconnected): a dataplane worker's socket on the port for the CPU-local receive
/// (`crate::cpu_local::reuseport`).
///
/// # Errors
/// The kernel refuses the socket or the bind (`shared` has no `SO_REUSEPORT`).
pub fn bind_port_member(shared: &UdpSocket, gro: bool) -> std::io::Result<UdpSocket> {
    let bound = shared.local_addr()?;
    let socket = bind_udp(bound, true)?;
    socket.set_nonblocking(true)?;
    enlarge_buffers(&socket);
    if gro {
        enable_gro(&socket)?;
    }
    uring_io::enable_pktinfo(std::os::fd::AsRawFd::as_raw_fd(&socket), bound.is_ipv6())?;
    Ok(socket)
}

/// Resolves a dialer's peer to one address.
///
/// # Errors
/// The name does not resolve.
pub fn resolve(peer: &PeerAddr) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addr = peer
        .to_string()
        .to_socket_addrs()
        .with_context(|| format!("resolving {peer}"))?
        .next()
        .ok_or_else(|| anyhow!("{peer} has no address"))?;
    // An IPv6 socket reaches IPv4 peers through mapped addresses.
    Ok(match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    })
}

/// Returns true if a datagram starts with a DTLS ClientHello (handshake record of epoch 0
/// whose first message is a client_hello), the sign of a new association from that address.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    datagram.len() > 25
        && datagram[0] == 22
        && datagram[3] == 0
        && datagram[4] == 0
        && datagram[13] == 1
}
