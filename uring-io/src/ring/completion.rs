//! Reaping completions: each CQE's slot and buffer back to their owners, a multishot receive's
//! datagram parsed out of its provided buffer, and the ring drained of what a shutdown cancelled.
//! The ownership rule of `mod.rs` holds here: a buffer leaves the `Kernel` state only once its
//! completion has been reaped.

use io_uring::cqueue;

use super::deadline::TIMER_UD;
use super::{RECVMSG_PAYLOAD_OFFSET, SlotState, UringDriver};
use crate::is_transient;
use crate::meta::{
    CONTROL_LEN, Completion, Errno, NAME_LEN, OpKind, parse_gro, parse_local, parse_sockaddr,
};
use crate::pool::{BufId, BufferPool};

impl UringDriver {
    pub(super) fn reap(&mut self, pool: &mut BufferPool, out: &mut Vec<Completion>, limit: usize) {
        while out.len() < limit {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            if cqe.user_data() == TIMER_UD {
                self.deadline.fired();
                continue;
            }
            let Ok(i) = u32::try_from(cqe.user_data()) else {
                continue;
            };
            if i as usize >= self.slots.len() {
                continue;
            }
            self.complete(pool, out, i, cqe.result(), cqe.flags());
        }
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Completion>,
        i: u32,
        res: i32,
        flags: u32,
    ) {
        let s = self.slots[i as usize];
        let result = if res < 0 {
            Err(Errno(-res))
        } else {
            Ok(res as usize)
        };
        match s.kind {
            OpKind::Read | OpKind::Write | OpKind::Send => {
                let mut c = Completion::new(s.kind, s.token, s.fd);
                c.buf = Some(pool.take_from_kernel(s.buf));
                c.result = result;
                c.offset = if s.kind == OpKind::Read {
                    self.buf_ring.headroom
                } else {
                    s.start as usize
                };
                out.push(c);
                self.n_in_flight -= 1;
                self.release(i);
            }
            OpKind::Wake => {
                out.push(Completion::new(OpKind::Wake, s.token, -1));
                self.n_in_flight -= 1;
                self.slots[i as usize].state = SlotState::Pending;
                self.pending.push_back(i);
            }
            OpKind::RecvPacket | OpKind::RecvDatagram => {
                self.complete_recv(pool, out, i, res, flags)
            }
        }
    }

    fn complete_recv(
        &mut self,
        pool: &mut BufferPool,
        out: &mut Vec<Completion>,
        i: u32,
        res: i32,
        flags: u32,
    ) {
        let s = self.slots[i as usize];
        let more = cqueue::more(flags);
        let mut c = Completion::new(s.kind, s.token, s.fd);
        c.armed = true;
        c.offset = self.buf_ring.headroom;
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.buf_ring.posted -= 1;
            self.buf_ring.target.took_one();
            let buf = pool.take_from_kernel(bid);
            if res < 0 {
                c.result = Err(Errno(-res));
            } else if s.kind == OpKind::RecvPacket {
                c.result = Ok(res as usize);
                if res == 0 {
                    // End of file: re-arming would spin.
                    c.armed = false;
                }
            } else {
                self.parse_recvmsg(pool, &buf, res as usize, &mut c);
            }
            c.buf = Some(buf);
        } else if res < 0 {
            c.result = Err(Errno(-res));
            if !is_transient(-res) {
                c.armed = false;
            }
        } else {
            c.result = Ok(0);
            if s.kind == OpKind::RecvPacket {
                c.armed = false;
            }
        }

        if !more {
            self.n_in_flight -= 1;
            if s.cancel {
                c.armed = false;
            }
            if !c.armed {
                self.n_armed -= 1;
                self.release(i);
            } else if res == -libc::ENOBUFS {
                self.slots[i as usize].state = SlotState::Starved;
                self.starved.push(i);
                // The traffic took every posted buffer between two turns: post more.
                self.buf_ring.target.grow();
            } else {
                self.slots[i as usize].state = SlotState::Pending;
                self.pending.push_back(i);
            }
        }
        out.push(c);
    }

    fn parse_recvmsg(&self, pool: &BufferPool, buf: &BufId, res: usize, c: &mut Completion) {
        let area = &pool.buf(buf)[self.buf_ring.headroom..][..self.buf_ring.rx_len as usize];
        let area = &area[..res.min(area.len())];
        let mut hdr: libc::msghdr =
            // SAFETY: `msghdr` is a plain C struct; all-zero bytes are valid.
            unsafe { std::mem::zeroed() };
        hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        hdr.msg_controllen = CONTROL_LEN as _;
        match io_uring::types::RecvMsgOut::parse(area, &hdr) {
            Ok(msg) => {
                c.src = parse_sockaddr(msg.name_data());
                c.segment_size = parse_gro(msg.control_data());
                c.local = parse_local(msg.control_data());
                c.offset = self.buf_ring.headroom + RECVMSG_PAYLOAD_OFFSET;
                c.result = if msg.is_payload_truncated() {
                    Err(Errno(libc::EMSGSIZE))
                } else {
                    Ok(msg.payload_data().len())
                };
            }
            Err(()) => c.result = Err(Errno(libc::EMSGSIZE)),
        }
    }

    /// Reaps without reporting: used at shutdown.
    pub(super) fn reap_discard(&mut self, pool: &mut BufferPool) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let Ok(i) = u32::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(s) = self.slots.get(i as usize).copied() else {
                continue;
            };
            if s.state != SlotState::InFlight {
                continue;
            }
            let flags = cqe.flags();
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.buf_ring.posted -= 1;
                let b = pool.take_from_kernel(bid);
                pool.free(b);
            }
            let last = match s.kind {
                OpKind::Read | OpKind::Write | OpKind::Send => {
                    let b = pool.take_from_kernel(s.buf);
                    pool.free(b);
                    true
                }
                OpKind::Wake => true,
                OpKind::RecvPacket | OpKind::RecvDatagram => !cqueue::more(flags),
            };
            if last {
                self.n_in_flight -= 1;
                self.release(i);
            }
        }
    }
}
