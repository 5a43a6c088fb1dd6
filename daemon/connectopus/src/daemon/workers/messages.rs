//! What the main loop and the worker threads hand each other: the messages of both
//! channels, and the table of links the workers send on.

use super::super::gso_send::UdpTarget;
use super::*;

/// Something a worker thread hands to the main loop.
#[derive(Debug)]
pub(in crate::daemon) enum FromWorker {
    /// A packet (or a super-packet behind its virtio-net header) for a link the worker does
    /// not send on; the forwarder already took its decision and counted it.
    ToLink {
        link: LinkId,
        packet: Vec<u8>,
        header: Option<VnetHeader>,
    },
    /// A TUN read for a local destination (another of the node's TUN devices), as read
    /// (with its virtio-net header when the device has one).
    FromTun(Vec<u8>),
    /// An ICMPv6 error the worker's forwarder built.
    Originated(Forwarded, Vec<u8>),
    /// A link message that is not an IPv6 packet (hello, routing stream), opened by the worker
    /// that receives the link.
    LinkMessage { link: LinkId, message: Vec<u8> },
    /// Records of a link's datagram that only the association handles (handshake, other
    /// epochs), or a ClientHello from the peer's address; as received from `remote` on
    /// `endpoint`'s port.
    ForAssociation {
        link: LinkId,
        endpoint: usize,
        remote: SocketAddr,
        local: Option<std::net::IpAddr>,
        datagram: Vec<u8>,
    },
    /// The peer closed the association (an authentic alert the worker opened).
    PeerClosed { link: LinkId, reason: CloseReason },
    /// A link given back (the worker stops), with its receiving direction for a DTLS link.
    Returned {
        link: LinkId,
        opener: Option<Box<Opener>>,
    },
    /// A TCP/TLS link given back (the worker stops) between two complete reads and writes:
    /// its stream, codec (with a partly read frame) and unsent bytes (`tcp`).
    ReturnedTcp(Box<OwnTcp>),
    /// A TCP/TLS link this worker owned ended (the peer closed it, an I/O or TLS error, or
    /// the peer does not read); its stream is closed.
    TcpClosed { link: LinkId, reason: &'static str },
    /// A super-packet a peer's eBPF encapsulated whole, received on a plaintext udp link, for
    /// one of the node's other TUN devices: the main loop routes it (`super_packets`).
    LinkSuperPacket {
        link: LinkId,
        datagram: Vec<u8>,
        segment_size: Option<u16>,
    },
    /// What the worker counted since its last report.
    Report {
        index: usize,
        report: DataplaneReport,
        offload: datapath::OffloadCounters,
        plain: PlainUdpCounters,
    },
}

/// A message for a TCP/TLS link the main loop holds while the link's worker gives it back:
/// the bytes, and the virtio-net header of a super-packet.
pub(in crate::daemon) type HeldMessage = (Vec<u8>, Option<VnetHeader>);

/// A link whose datagrams a worker thread receives from now on.
#[derive(Debug)]
pub(in crate::daemon) struct LinkReceive {
    pub(in crate::daemon) link: LinkId,
    pub(in crate::daemon) endpoint: usize,
    pub(in crate::daemon) remote: SocketAddr,
    pub(in crate::daemon) local: Option<std::net::IpAddr>,
    /// Connected to the peer, on the link's port ([`crate::dtls_link::connect_peer`]).
    pub(in crate::daemon) socket: UdpSocket,
    /// The association's receiving direction; `None` for a plaintext udp link (each datagram
    /// is a link message as it is).
    pub(in crate::daemon) opener: Option<Opener>,
    /// The link's MTU (a longer plaintext datagram is a peer's eBPF super-packet).
    pub(in crate::daemon) mtu: u16,
}

/// A TCP/TLS link whose stream a worker thread reads and writes from now on (or gives back):
/// handed over only while no read or write is in flight on it (see `tcp`).
#[derive(Debug)]
pub(in crate::daemon) struct OwnTcp {
    pub(in crate::daemon) link: LinkId,
    pub(in crate::daemon) stream: TcpStream,
    /// Framing and TLS, with what is read of a frame not complete yet.
    pub(in crate::daemon) codec: TcpCodec,
    /// Bytes for the socket not written yet, in order.
    pub(in crate::daemon) tx: VecDeque<u8>,
}

/// What the main loop hands a worker thread.
#[derive(Debug)]
pub(in crate::daemon) enum ToWorker {
    /// Receive this link from now on.
    Receive(Box<LinkReceive>),
    /// Read and write this TCP/TLS link from now on.
    OwnTcp(Box<OwnTcp>),
    /// A message for a TCP/TLS link this worker owns: the node's own (hello, the routing
    /// stream) or a packet another worker forwarded to it (a super-packet behind `header`),
    /// framed into the link's byte stream in the order it arrives.
    TcpSend {
        link: LinkId,
        message: Vec<u8>,
        header: Option<VnetHeader>,
    },
    /// The TCP/TLS link closed: close its stream.
    ForgetTcp(LinkId),
    /// A datagram of a link this worker receives that arrived at the main loop's socket.
    Datagram { link: LinkId, datagram: Vec<u8> },
    /// The link closed: close its socket, drop its receiving direction.
    Forget(LinkId),
    /// Receive on this socket of the DTLS port of `endpoint` (the CPU-local receive).
    Port { endpoint: usize, socket: UdpSocket },
    /// The DTLS port of `endpoint` closed.
    ForgetPort(usize),
}

/// `rx_worker` of a link every worker thread receives (the CPU-local receive).
pub(in crate::daemon) const EVERY_WORKER: usize = usize::MAX;

/// How a worker thread sends on a link.
#[derive(Debug, Clone)]
pub(in crate::daemon) enum LinkSend {
    Dtls {
        socket: Arc<UdpSocket>,
        endpoint: usize,
        remote: SocketAddr,
        source: Option<std::net::IpAddr>,
        sealer: Sealer,
        /// The receiving direction, shared by the worker threads (the CPU-local receive).
        rx: Option<Arc<Mutex<Opener>>>,
    },
    Plain {
        socket: Arc<UdpSocket>,
        endpoint: usize,
        remote: SocketAddr,
        source: Option<std::net::IpAddr>,
    },
}

impl LinkSend {
    /// Where the link's datagrams go (the socket stays open while the table holds the link).
    pub(in crate::daemon) fn target(&self) -> UdpTarget {
        use std::os::fd::AsRawFd;
        let (Self::Dtls {
            socket,
            endpoint,
            remote,
            source,
            ..
        }
        | Self::Plain {
            socket,
            endpoint,
            remote,
            source,
        }) = self;
        UdpTarget {
            fd: socket.as_raw_fd(),
            endpoint: *endpoint,
            destination: *remote,
            source: *source,
        }
    }

    /// Where a DTLS link's records go, and its sending direction; `None` for a plaintext link.
    pub(in crate::daemon) fn sealing(&mut self) -> Option<(UdpTarget, &mut Sealer)> {
        let target = self.target();
        match self {
            Self::Dtls { sealer, .. } => Some((target, sealer)),
            Self::Plain { .. } => None,
        }
    }
}

/// The links worker threads send on themselves.
pub(in crate::daemon) type LinkTable = HashMap<LinkId, LinkSend>;
