//! Sending a super-packet on a UDP link: cut into its segments, each written (plaintext) or
//! sealed (a DTLS record) into the slots of send buffers one stride apart, each buffer sent with
//! one UDP GSO `sendmsg`. The one function the main loop and the worker threads both send
//! super-packets through ([`Worker::send_segments`]); what differs between them is only who
//! seals a record ([`Records`]): nobody on a plaintext link, the association on the main
//! loop, the link's shared sending direction (one reservation of sequence numbers per send) on
//! a worker thread.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

use connectopus_core::forward::DropReason;
use connectopus_dtls::{DtlsAssociation, DtlsError, Reservation, Sealer};
use connectopus_offload::{Segments, VnetHeader};
use uring_io::{BufId, PacketIo, Token};

use super::TOKEN_UDP_SEND;
use super::dtls::datagrams_per_send;
use super::worker::Worker;

/// Where a link's datagrams go.
#[derive(Debug, Clone, Copy)]
pub(super) struct UdpTarget {
    /// The UDP socket of the link's port.
    pub(super) fd: RawFd,
    /// The port's endpoint (the send completion's token names it).
    pub(super) endpoint: usize,
    pub(super) destination: SocketAddr,
    /// The address to send from (a listener bound to a wildcard answers from the address the
    /// peer wrote to).
    pub(super) source: Option<IpAddr>,
}

impl UdpTarget {
    /// Sends `buf[range]` to the target: one datagram, or with `segment_size` a UDP GSO batch
    /// of datagrams that long (the last maybe shorter). Takes ownership of `buf`.
    pub(super) fn send(
        &self,
        io: &mut PacketIo,
        buf: BufId,
        range: Range<usize>,
        segment_size: Option<u16>,
    ) {
        io.send_to(
            self.fd,
            Token(TOKEN_UDP_SEND | self.endpoint as u64),
            uring_io::Transmit {
                destination: self.destination,
                buf,
                range,
                segment_size,
                source: self.source,
            },
        );
    }
}

/// Who makes a link's datagrams out of segments.
pub(super) trait Records {
    /// Seals the records of one send.
    type Send<'a>: SealRecord
    where
        Self: 'a;

    /// Where a record's payload starts.
    fn payload_offset(&self) -> usize;

    /// A record's bytes besides its payload.
    fn overhead(&self) -> usize;

    /// Gets ready to seal `count` records into one send.
    fn begin(&mut self, count: usize) -> Result<Self::Send<'_>, DtlsError>;
}

/// Seals the records of one send.
pub(super) trait SealRecord {
    /// Seals record `i` of the send, whose `len` payload bytes lie at the record's payload
    /// offset in `record`; returns the record's length.
    fn seal(&mut self, i: usize, record: &mut [u8], len: usize) -> Result<usize, DtlsError>;
}

/// Plaintext datagrams: a segment is the datagram.
#[derive(Debug)]
pub(super) struct Plaintext;

impl Records for Plaintext {
    type Send<'a> = Plaintext;

    fn payload_offset(&self) -> usize {
        0
    }

    fn overhead(&self) -> usize {
        0
    }

    fn begin(&mut self, _count: usize) -> Result<Plaintext, DtlsError> {
        Ok(Plaintext)
    }
}

impl SealRecord for Plaintext {
    fn seal(&mut self, _i: usize, _record: &mut [u8], len: usize) -> Result<usize, DtlsError> {
        Ok(len)
    }
}

/// Records the main loop seals through the link's association.
#[derive(Debug)]
pub(super) struct ByAssociation<'a> {
    association: &'a mut DtlsAssociation,
    payload_offset: usize,
    overhead: usize,
}

impl<'a> ByAssociation<'a> {
    /// `None` while the association has no record suite (not established).
    pub(super) fn new(association: &'a mut DtlsAssociation) -> Option<Self> {
        Some(Self {
            payload_offset: association.payload_offset()?,
            overhead: association.overhead()?,
            association,
        })
    }
}

impl Records for ByAssociation<'_> {
    type Send<'b>
        = &'b mut DtlsAssociation
    where
        Self: 'b;

    fn payload_offset(&self) -> usize {
        self.payload_offset
    }

    fn overhead(&self) -> usize {
        self.overhead
    }

    fn begin(&mut self, _count: usize) -> Result<&mut DtlsAssociation, DtlsError> {
        Ok(self.association)
    }
}

impl SealRecord for &mut DtlsAssociation {
    fn seal(&mut self, _i: usize, record: &mut [u8], len: usize) -> Result<usize, DtlsError> {
        self.seal_in_place(record, len)
    }
}

/// Records a worker thread seals through the link's shared sending direction: one atomic add
/// reserves the sequence numbers of a whole send.
impl Records for Sealer {
    type Send<'a> = Reservation<'a>;

    fn payload_offset(&self) -> usize {
        Sealer::payload_offset(self)
    }

    fn overhead(&self) -> usize {
        Sealer::overhead(self)
    }

    fn begin(&mut self, count: usize) -> Result<Reservation<'_>, DtlsError> {
        self.reserve(count)
    }
}

impl SealRecord for Reservation<'_> {
    fn seal(&mut self, i: usize, record: &mut [u8], len: usize) -> Result<usize, DtlsError> {
        Reservation::seal(self, i, record, len)
    }
}

impl Worker {
    /// Cuts the super-packet at `src[range]` (described by `header`) into segments, makes each
    /// a datagram of `records` in the slots of send buffers and sends each buffer to `target`
    /// with one UDP GSO `sendmsg`; takes ownership of `src`. What cannot be sent is counted as
    /// dropped: a malformed super-packet, no free buffer, a record that does not fit a buffer,
    /// a record that cannot be sealed.
    pub(super) fn send_segments<R: Records>(
        &mut self,
        link: connectopus_core::LinkId,
        target: UdpTarget,
        records: &mut R,
        (src, range, header): (BufId, Range<usize>, &VnetHeader),
    ) {
        let Worker {
            io,
            forwarder,
            offloads,
            offload_counters,
            ..
        } = self;
        let shape = io
            .buf(&src)
            .get(range.clone())
            .and_then(|p| Segments::new(header, p).ok())
            .map(|s| (s.count(), s.max_segment_len()));
        let Some((count, max_len)) = shape.filter(|(_, len)| *len > 0) else {
            io.free(src);
            forwarder.count_drop(DropReason::Malformed);
            return;
        };
        let payload_offset = records.payload_offset();
        let stride = max_len + records.overhead();
        let start = io.pool().headroom();
        let room = io.pool().buf_size() - start;
        let per_send = datagrams_per_send(room, stride, offloads.udp_gso.is_ok());
        let mut i = 0;
        while i < count {
            let batch = per_send.min(count - i);
            let Some(out) = io.alloc() else {
                forwarder.count_drop(DropReason::LinkCongested);
                break;
            };
            let mut sealing = match records.begin(batch) {
                Ok(s) => s,
                Err(error) => {
                    io.free(out);
                    tracing::debug!(%link, %error, "no sequence numbers for a send");
                    forwarder.count_drop(DropReason::LinkDown);
                    break;
                }
            };
            let mut sent = 0usize;
            let mut end = start;
            let mut failure = None;
            {
                let (from, to) = io.buf_pair(&src, &out);
                let segments = from
                    .get(range.clone())
                    .and_then(|p| Segments::new(header, p).ok());
                let Some(segments) = segments else {
                    // Parsed above; the buffer did not change.
                    io.free(out);
                    forwarder.count_drop(DropReason::Malformed);
                    break;
                };
                while sent < batch {
                    let slot = start + sent * stride;
                    let Some(record) = to.get_mut(slot..slot + stride) else {
                        break;
                    };
                    let Some(payload) = record.get_mut(payload_offset..) else {
                        break;
                    };
                    let Ok(n) = segments.write(i, payload) else {
                        failure = Some(DropReason::Malformed);
                        break;
                    };
                    let len = match sealing.seal(sent, record, n) {
                        Ok(len) => len,
                        Err(error) => {
                            tracing::debug!(%link, %error, "dtls seal failed");
                            failure = Some(DropReason::LinkDown);
                            break;
                        }
                    };
                    end = slot + len;
                    i += 1;
                    sent += 1;
                    if len < stride {
                        // Only the last datagram of a GSO send may be shorter (it is the
                        // super-packet's last segment).
                        break;
                    }
                }
            }
            if sent == 0 {
                io.free(out);
                forwarder.count_drop(failure.unwrap_or(DropReason::TooBig));
                break;
            }
            if sent > 1 {
                offload_counters.udp_gso_sends += 1;
            }
            target.send(io, out, start..end, (sent > 1).then_some(stride as u16));
            if let Some(reason) = failure {
                forwarder.count_drop(reason);
                break;
            }
        }
        io.free(src);
    }
}
