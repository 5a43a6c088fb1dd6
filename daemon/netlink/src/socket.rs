//! The rtnetlink socket: one request at a time, its acknowledgement or its dump. The socket
//! belongs to the network namespace it was opened in, for its whole life.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::Error;
use crate::message::{
    HEADER_LEN, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, Reply,
    Request, messages,
};

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// Receive buffer: the kernel fills dump datagrams up to 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// How often a dump interrupted by a concurrent change is retried.
const DUMP_ATTEMPTS: usize = 5;

/// An `NETLINK_ROUTE` socket in one network namespace.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: socket takes integers only; the descriptor is owned below.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from `on`. Older kernels refuse the options;
            // errors then carry no kernel message, which is all they change.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    option,
                    (&raw const on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        // A reply that never comes (it always does from the kernel) must not hang a caller.
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads one timeval from `timeout`.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        // SAFETY: an all-zero sockaddr_nl is valid; the family is set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a sockaddr_nl of `len` bytes; port 0 lets the kernel choose.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        // SAFETY: getsockname writes at most `len` bytes into `addr`.
        check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) })?;
        Ok(Socket {
            fd,
            port: addr.nl_pid,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn send(&mut self, request: Request) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = request.finish(self.seq);
        // SAFETY: `bytes` is valid for its length; a socket without a destination sends to
        // the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives one datagram; its length.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for its length. MSG_TRUNC makes the kernel return the
            // datagram's real length, so a datagram larger than the buffer is noticed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(io::Error::other(format!(
                    "netlink datagram of {n} bytes is larger than the {} byte buffer",
                    self.buf.len()
                )));
            }
            return Ok(n);
        }
    }

    /// Sends a request that asked for an acknowledgement (`NLM_F_ACK`) and waits for it.
    pub fn ack(&mut self, request: Request, what: impl Fn() -> String) -> Result<(), Error> {
        let seq = self.send(request).map_err(|e| Error::io(what(), e))?;
        loop {
            let n = self.recv().map_err(|e| Error::io(what(), e))?;
            for message in messages(&self.buf[..n]) {
                let (header, payload) = message.map_err(|e| Error::parse(what(), e))?;
                if header.seq != seq || header.port != self.port {
                    continue; // a late answer to an earlier request
                }
                if header.kind == NLMSG_ERROR {
                    return match Reply::parse(header.flags, payload)
                        .map_err(|e| Error::parse(what(), e))?
                    {
                        Reply::Ack => Ok(()),
                        Reply::Error { errno, message } => {
                            Err(Error::kernel(what(), errno, message))
                        }
                    };
                }
            }
        }
    }

    /// Sends a dump request and returns the payloads of the messages of type `kind` it
    /// answers with. A dump that a concurrent change interrupted is made again.
    pub fn dump(
        &mut self,
        request: impl Fn() -> Request,
        kind: u16,
        what: impl Fn() -> String,
    ) -> Result<Vec<Vec<u8>>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.send(request()).map_err(|e| Error::io(what(), e))?;
            let mut payloads = Vec::new();
            let mut interrupted = false;
            'datagrams: loop {
                let n = self.recv().map_err(|e| Error::io(what(), e))?;
                for message in messages(&self.buf[..n]) {
                    let (header, payload) = message.map_err(|e| Error::parse(what(), e))?;
                    if header.seq != seq || header.port != self.port {
                        continue;
                    }
                    interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                    match header.kind {
                        NLMSG_DONE => break 'datagrams,
                        NLMSG_ERROR => match Reply::parse(header.flags, payload)
                            .map_err(|e| Error::parse(what(), e))?
                        {
                            Reply::Ack => break 'datagrams,
                            Reply::Error { errno, message } => {
                                return Err(Error::kernel(what(), errno, message));
                            }
                        },
                        NLMSG_OVERRUN => {
                            return Err(Error::io(
                                what(),
                                io::Error::other("netlink receive buffer overrun"),
                            ));
                        }
                        NLMSG_NOOP => {}
                        k if k == kind => payloads.push(payload.to_vec()),
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(payloads);
            }
        }
        Err(Error::io(
            what(),
            io::Error::other(format!(
                "the dump was interrupted by changes {DUMP_ATTEMPTS} times"
            )),
        ))
    }
}

const _: () = assert!(HEADER_LEN == 16);
