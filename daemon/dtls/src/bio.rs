//! The memory "BIO" between OpenSSL and the association: datagram queues, no sockets.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Datagram queues OpenSSL reads from and writes to (one `write` = one datagram).
#[derive(Debug, Default)]
pub(crate) struct MemoryBio {
    /// Datagrams waiting for OpenSSL to read.
    pub inbound: VecDeque<Vec<u8>>,
    /// Datagrams OpenSSL wrote.
    pub outbound: VecDeque<Vec<u8>>,
    /// Emptied buffers kept for reuse, so the fallback path does not allocate per record.
    pub spare: Vec<Vec<u8>>,
}

/// At most this many spare buffers are kept.
const MAX_SPARE: usize = 8;

impl MemoryBio {
    /// Returns an empty buffer, reusing a spare one if there is one.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `buf` for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < MAX_SPARE {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

impl Read for MemoryBio {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.pop_front() {
            Some(d) => {
                // Like recv(2) on a datagram socket: excess bytes are discarded.
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                self.recycle(d);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for MemoryBio {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut d = self.buffer();
        d.extend_from_slice(buf);
        self.outbound.push_back(d);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
