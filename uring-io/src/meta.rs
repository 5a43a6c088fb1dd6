//! Values that cross the API: completions, transmits, tokens, errnos, and socket-address and
//! control-message helpers shared by both backends.

use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::RawFd;

use crate::pool::BufId;

/// Identifies the caller's object (a TUN queue, a UDP socket, a TCP connection) in completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// An `errno` value reported by a failed operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Reports that no buffer was available for a receive (the pool or buffer ring ran dry).
    pub const NOBUFS: Errno = Errno(libc::ENOBUFS);

    /// Converts the errno into an `io::Error`.
    pub fn into_io(self) -> io::Error {
        io::Error::from_raw_os_error(self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, self.into_io())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.into_io(), f)
    }
}

/// Names the operation a [`Completion`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A one-shot read into a caller-supplied buffer ([`PacketIo::read`](crate::PacketIo::read)).
    Read,
    /// A write of a buffer range ([`PacketIo::write`](crate::PacketIo::write)).
    Write,
    /// A packet from an armed packet receive
    /// ([`PacketIo::recv_packets`](crate::PacketIo::recv_packets)).
    RecvPacket,
    /// A datagram from an armed datagram receive
    /// ([`PacketIo::recv_datagrams`](crate::PacketIo::recv_datagrams)).
    RecvDatagram,
    /// A datagram send ([`PacketIo::send_to`](crate::PacketIo::send_to)).
    Send,
    /// A wake-up from a [`Waker`](crate::Waker).
    Wake,
}

impl OpKind {
    /// Whether the operation brought data in (a read or a receive), as opposed to the node's
    /// own output or a wake-up from another thread.
    pub fn is_receive(self) -> bool {
        matches!(self, Self::Read | Self::RecvPacket | Self::RecvDatagram)
    }
}

/// Reports the end of one operation, or one result of an armed receive.
///
/// Buffers travel with completions: `buf` hands the buffer of a read, receive, write or send back
/// to the caller, who must [`free`](crate::PacketIo::free) it or pass it to another operation.
#[derive(Debug)]
pub struct Completion {
    /// Names the operation.
    pub kind: OpKind,
    /// Carries the token given when the operation was queued.
    pub token: Token,
    /// Names the file descriptor the operation ran on (`-1` for [`OpKind::Wake`]).
    pub fd: RawFd,
    /// Returns the buffer the operation used, now owned by the caller again.
    pub buf: Option<BufId>,
    /// Gives the number of bytes transferred, or the error.
    pub result: Result<usize, Errno>,
    /// Gives where received data starts in `buf` (at least the pool's headroom).
    pub offset: usize,
    /// Gives the source address of a received datagram.
    pub src: Option<SocketAddr>,
    /// Gives the GRO segment size of a received datagram that holds several coalesced datagrams
    /// (from the `UDP_GRO` control message; the socket must have `UDP_GRO` enabled).
    pub segment_size: Option<u16>,
    /// Gives the local address a received datagram was sent to (from the `IPV6_PKTINFO` or
    /// `IP_PKTINFO` control message; the socket must have `IPV6_RECVPKTINFO` / `IP_PKTINFO`
    /// enabled, see [`enable_pktinfo`](crate::enable_pktinfo)). A reply sent from it
    /// ([`Transmit::source`]) leaves from the address the peer talked to, also on a socket
    /// bound to a wildcard address of a host with several.
    pub local: Option<IpAddr>,
    /// Tells, for receives, whether the receive is still armed; `false` after an error that the
    /// driver does not retry (call `recv_*` again to re-arm). Always `false` for other kinds.
    pub armed: bool,
}

impl Completion {
    /// Returns the byte range of `buf` that holds received data, if the operation succeeded.
    pub fn data_range(&self) -> Option<Range<usize>> {
        match self.result {
            Ok(len) => Some(self.offset..self.offset + len),
            Err(_) => None,
        }
    }

    pub(crate) fn new(kind: OpKind, token: Token, fd: RawFd) -> Self {
        Self {
            kind,
            token,
            fd,
            buf: None,
            result: Ok(0),
            offset: 0,
            src: None,
            segment_size: None,
            local: None,
            armed: false,
        }
    }
}

/// One queued operation, as both drivers record it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op {
    pub(crate) kind: OpKind,
    pub(crate) token: Token,
    pub(crate) fd: RawFd,
    /// The pool index of the buffer, if the operation has one.
    pub(crate) buf: u16,
    /// The first byte of the buffer the operation uses (writes and sends).
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// Describes one outgoing datagram (or GSO batch) held in a pool buffer.
#[derive(Debug)]
pub struct Transmit {
    /// Names the destination address.
    pub destination: SocketAddr,
    /// Holds the payload; ownership moves to the send until its completion.
    pub buf: BufId,
    /// Selects the payload bytes inside `buf`.
    pub range: Range<usize>,
    /// Asks the kernel to split the payload into datagrams of this size (UDP GSO,
    /// `UDP_SEGMENT`); only the last may be shorter.
    pub segment_size: Option<u16>,
    /// Sends from this local address (`IPV6_PKTINFO`, or `IP_PKTINFO` for an IPv4 address to
    /// an IPv4-mapped destination) instead of the one the kernel's route picks; `None`: the
    /// route's.
    pub source: Option<IpAddr>,
}

/// Space for a socket address of either family, laid out as the kernel expects.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union SockAddrBuf {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddrBuf {
    pub(crate) fn zeroed() -> Self {
        // SAFETY: both variants are plain C structs for which all-zero bytes are valid.
        unsafe { mem::zeroed() }
    }

    /// Stores `addr` and returns the length to pass as `msg_namelen`.
    pub(crate) fn set(&mut self, addr: &SocketAddr) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                self.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                self.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// The name length used for receives: room for an IPv6 address (IPv4 ones are shorter).
pub(crate) const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();

/// Space reserved for control messages on receive (`UDP_GRO` now; packet info and ECN later).
pub(crate) const CONTROL_LEN: usize = 64;

/// An aligned control-message buffer.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf<const N: usize>(pub(crate) [u8; N]);

/// Parses a socket address from raw `sockaddr` bytes (which need not be aligned).
pub(crate) fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    if bytes.len() < mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    match i32::from(family) {
        libc::AF_INET if bytes.len() >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the length is checked above; `read_unaligned` tolerates any alignment and
            // `sockaddr_in` is valid for any bytes.
            let sa = unsafe { bytes.as_ptr().cast::<libc::sockaddr_in>().read_unaligned() };
            let ip = Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sa.sin_port),
            )))
        }
        libc::AF_INET6 if bytes.len() >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sa = unsafe { bytes.as_ptr().cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                u32::from_be(sa.sin6_flowinfo),
                sa.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Walks received control-message bytes (which need not be aligned) and calls `f` with each
/// message's level, type and data; stops at the first malformed header.
fn for_each_cmsg(mut control: &[u8], mut f: impl FnMut(i32, i32, &[u8])) {
    let hdr_len = mem::size_of::<libc::cmsghdr>();
    while control.len() >= hdr_len {
        // SAFETY: at least `hdr_len` bytes remain; `read_unaligned` tolerates any alignment and
        // `cmsghdr` is valid for any bytes.
        let hdr = unsafe { control.as_ptr().cast::<libc::cmsghdr>().read_unaligned() };
        #[allow(
            clippy::unnecessary_cast,
            reason = "cmsg_len is not usize on every libc"
        )]
        let len = hdr.cmsg_len as usize;
        if len < hdr_len || len > control.len() {
            return;
        }
        f(hdr.cmsg_level, hdr.cmsg_type, &control[hdr_len..len]);
        let next = cmsg_align(len);
        if next >= control.len() {
            return;
        }
        control = &control[next..];
    }
}

/// Finds the GRO segment size in received control-message bytes (which need not be aligned).
pub(crate) fn parse_gro(control: &[u8]) -> Option<u16> {
    let mut found = None;
    for_each_cmsg(control, |level, kind, data| {
        if level == libc::SOL_UDP
            && kind == libc::UDP_GRO
            && let Some(d) = data.get(..4)
        {
            found = u16::try_from(i32::from_ne_bytes([d[0], d[1], d[2], d[3]])).ok();
        }
    });
    found
}

/// Finds the local (destination) address of a received datagram in its `IPV6_PKTINFO` or
/// `IP_PKTINFO` control message.
pub(crate) fn parse_local(control: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for_each_cmsg(control, |level, kind, data| {
        if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
            // struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
            if let Some(a) = data.get(..16).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
                let v6 = Ipv6Addr::from(a);
                // IPv4 traffic of a dual-stack socket reports a mapped address.
                found = Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
            }
        } else if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
            // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
            if let Some(a) = data.get(8..12).and_then(|a| <[u8; 4]>::try_from(a).ok()) {
                found = Some(IpAddr::V4(Ipv4Addr::from(a)));
            }
        }
    });
    found
}

/// Appends one control message at `at` of `buf`; returns the end (aligned), or `at` unchanged
/// when it does not fit.
fn put_cmsg<const N: usize>(
    buf: &mut CmsgBuf<N>,
    at: usize,
    level: i32,
    kind: i32,
    data: &[u8],
) -> usize {
    let hdr_len = mem::size_of::<libc::cmsghdr>();
    let end = at + cmsg_align(hdr_len + data.len());
    if end > N {
        return at;
    }
    // SAFETY: `cmsghdr` is a plain C struct; all-zero bytes are valid.
    let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
    hdr.cmsg_len = (hdr_len + data.len()) as _;
    hdr.cmsg_level = level;
    hdr.cmsg_type = kind;
    // SAFETY: `at` is a multiple of the alignment inside an 8-byte aligned buffer, and
    // `at + hdr_len <= end <= N`, so the header fits.
    unsafe {
        buf.0
            .as_mut_ptr()
            .add(at)
            .cast::<libc::cmsghdr>()
            .write(hdr)
    };
    buf.0[at + hdr_len..at + hdr_len + data.len()].copy_from_slice(data);
    buf.0[at + hdr_len + data.len()..end].fill(0);
    end
}

/// Writes a `UDP_SEGMENT` control message and returns its length (`msg_controllen`).
pub(crate) fn write_gso<const N: usize>(buf: &mut CmsgBuf<N>, segment_size: u16) -> usize {
    const { assert!(N >= 24) };
    put_cmsg(
        buf,
        0,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &segment_size.to_ne_bytes(),
    )
}

/// Writes the control messages of a send (UDP GSO segment size, source address) and returns
/// their length (`msg_controllen`, 0 for none). The source is written as `IP_PKTINFO` when
/// both it and the destination are IPv4 (or IPv4-mapped), else as `IPV6_PKTINFO`.
pub(crate) fn write_send_control<const N: usize>(
    buf: &mut CmsgBuf<N>,
    segment_size: Option<u16>,
    source: Option<IpAddr>,
    destination: &SocketAddr,
) -> usize {
    const { assert!(N >= 64) };
    let mut at = match segment_size {
        Some(seg) => write_gso(buf, seg),
        None => 0,
    };
    let to_v4 = match destination {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    match source {
        Some(IpAddr::V4(v4)) if to_v4 => {
            let mut data = [0u8; 12];
            data[4..8].copy_from_slice(&v4.octets());
            at = put_cmsg(buf, at, libc::IPPROTO_IP, libc::IP_PKTINFO, &data);
        }
        Some(IpAddr::V6(v6)) if !to_v4 => {
            let mut data = [0u8; 20];
            data[..16].copy_from_slice(&v6.octets());
            at = put_cmsg(buf, at, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data);
        }
        _ => {}
    }
    at
}

fn cmsg_align(len: usize) -> usize {
    let a = mem::size_of::<usize>();
    (len + a - 1) & !(a - 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sockaddr_round_trips() {
        for addr in ["[fd00::1]:4433", "127.0.0.1:53", "[::1]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = SockAddrBuf::zeroed();
            let len = buf.set(&addr) as usize;
            // SAFETY (test): the union is at least `len` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts((&raw const buf).cast::<u8>(), len) };
            assert_eq!(parse_sockaddr(bytes), Some(addr));
        }
    }

    #[test]
    fn gro_cmsg_is_found() {
        let mut buf = CmsgBuf([0u8; 32]);
        let len = write_gso(&mut buf, 1400);
        // Same layout as UDP_GRO except the type and the int payload.
        let mut c = buf.0;
        c[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        c[16..20].copy_from_slice(&1400i32.to_ne_bytes());
        c[0..8].copy_from_slice(&20usize.to_ne_bytes());
        assert_eq!(parse_gro(&c[..len]), Some(1400));
        assert_eq!(parse_gro(&[]), None);
    }

    #[test]
    fn pktinfo_written_for_a_send_is_parsed_back() {
        let dst: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let local: IpAddr = "2001:db8::2".parse().unwrap();
        let mut buf = CmsgBuf([0u8; 64]);
        let len = write_send_control(&mut buf, Some(1400), Some(local), &dst);
        assert_eq!(len, 64);
        assert_eq!(&buf.0[12..16], &libc::UDP_SEGMENT.to_ne_bytes());
        assert_eq!(&buf.0[16..18], &1400u16.to_ne_bytes());
        assert_eq!(parse_local(&buf.0[..len]), Some(local));
        // IPv4 to a mapped destination: IP_PKTINFO, whose ipi_spec_dst is at 4..8 (the parser
        // reads ipi_addr at 8..12, as a receive fills it).
        let dst: SocketAddr = "[::ffff:198.18.0.1]:4000".parse().unwrap();
        let local: IpAddr = "198.18.0.2".parse().unwrap();
        let mut buf = CmsgBuf([0u8; 64]);
        let len = write_send_control(&mut buf, None, Some(local), &dst);
        assert_eq!(len, 32);
        assert_eq!(&buf.0[16 + 4..16 + 8], &[198, 18, 0, 2]);
        // A family mismatch writes nothing rather than a message the kernel refuses.
        let len = write_send_control(
            &mut buf,
            None,
            Some(local),
            &"[2001:db8::1]:1".parse().unwrap(),
        );
        assert_eq!(len, 0);
    }
}
