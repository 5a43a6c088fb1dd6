//! Values that cross the API: completions, transmits, tokens, errnos, and socket-address and
//! control-message helpers shared by both backends.

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// Finds the GRO segment size in received control-message bytes (which need not be aligned).
pub(crate) fn parse_gro(mut control: &[u8]) -> Option<u16> {
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
            return None;
        }
        if hdr.cmsg_level == libc::SOL_UDP && hdr.cmsg_type == libc::UDP_GRO && len >= hdr_len + 4 {
            let d = &control[hdr_len..hdr_len + 4];
            let size = i32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
            return u16::try_from(size).ok();
        }
        let next = cmsg_align(len);
        if next >= control.len() {
            return None;
        }
        control = &control[next..];
    }
    None
}

/// Writes a `UDP_SEGMENT` control message and returns its length (`msg_controllen`).
pub(crate) fn write_gso<const N: usize>(buf: &mut CmsgBuf<N>, segment_size: u16) -> usize {
    const { assert!(N >= 24) };
    let hdr_len = mem::size_of::<libc::cmsghdr>();
    let data_len = mem::size_of::<u16>();
    // SAFETY: `cmsghdr` is a plain C struct; all-zero bytes are valid.
    let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
    hdr.cmsg_len = (hdr_len + data_len) as _;
    hdr.cmsg_level = libc::SOL_UDP;
    hdr.cmsg_type = libc::UDP_SEGMENT;
    // SAFETY: the buffer is 8-byte aligned and N >= 24 >= hdr_len (16) + 2.
    unsafe { buf.0.as_mut_ptr().cast::<libc::cmsghdr>().write(hdr) };
    buf.0[hdr_len..hdr_len + data_len].copy_from_slice(&segment_size.to_ne_bytes());
    cmsg_align(hdr_len + data_len)
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
}
