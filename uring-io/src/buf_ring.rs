//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`) that io_uring receives take their
//! buffers from, and how many buffers it keeps posted ([`RxTarget`]). See the ownership rule in
//! `ring/mod.rs`: a buffer posted here is in the pool's `Kernel` state until a completion returns it.

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

use crate::pool::BufferPool;
use crate::ring::BGID;

/// The fewest buffers kept posted for receives on an on-demand pool.
pub(crate) const RX_FLOOR: usize = 8;

/// Buffers posted for receives even when the pool is over its working-set budget, so that
/// receives never stop for good (a TCP link's read holds a buffer for as long as it waits).
pub(crate) const RX_ALWAYS: usize = 2;

/// How many buffers to keep posted for receives.
///
/// Every posted buffer cycles through the ring (the kernel takes them in order), so all of
/// them become resident under traffic, and the pool cannot release them while they are posted
/// (only the kernel may touch them then). So on an on-demand pool the target follows the
/// traffic: it doubles, up to `max`, whenever a receive ran out of posted buffers, and at each
/// `adapt` (the daemon's trim, about once a second) it becomes twice the most buffers any one
/// turn took since the previous `adapt`, within `floor..=max`. Buffers freed while more than
/// the target are posted go to the free list, where the pool can release them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RxTarget {
    pub(crate) now: usize,
    floor: usize,
    max: usize,
    /// Buffers the kernel filled since the current turn began.
    pub(crate) turn_taken: usize,
    /// The most any turn took since the last `adapt`.
    peak_taken: usize,
    /// A receive ran out of buffers since the last `adapt`.
    starved: bool,
}

impl RxTarget {
    pub(crate) fn new(floor: usize, max: usize) -> Self {
        Self {
            now: floor,
            floor,
            max,
            turn_taken: 0,
            peak_taken: 0,
            starved: false,
        }
    }

    pub(crate) fn took_one(&mut self) {
        self.turn_taken += 1;
        self.peak_taken = self.peak_taken.max(self.turn_taken);
    }

    pub(crate) fn grow(&mut self) {
        self.starved = true;
        self.now = (self.now * 2).min(self.max);
    }

    pub(crate) fn adapt(&mut self) {
        if !self.starved {
            self.now = (self.peak_taken * 2)
                .next_power_of_two()
                .clamp(self.floor, self.max);
        }
        self.peak_taken = 0;
        self.starved = false;
    }
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) in its own page-aligned mapping.
pub(crate) struct BufRing {
    base: NonNull<io_uring::types::BufRingEntry>,
    map_len: usize,
    mask: u16,
    tail: u16,
    pub(crate) posted: usize,
    pub(crate) target: RxTarget,
    /// The most pool buffers out of the free list (posted ones included) at which more are
    /// still posted: past it, receives get only [`RX_ALWAYS`] posted buffers until buffers
    /// held elsewhere (sends in flight, packets being merged) come back. Back-pressure.
    pub(crate) budget: usize,
    pub(crate) pool_base: *mut u8,
    pub(crate) stride: usize,
    pub(crate) headroom: usize,
    pub(crate) rx_len: u32,
}

impl BufRing {
    pub(crate) fn new(ring: &IoUring, target: usize, pool: &BufferPool) -> io::Result<Self> {
        let entries = target.next_power_of_two().max(2);
        let map_len = entries * std::mem::size_of::<io_uring::types::BufRingEntry>();
        // SAFETY: an anonymous private mapping with a null hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut me = Self {
            base,
            map_len,
            mask: (entries - 1) as u16,
            tail: 0,
            posted: 0,
            target: RxTarget::new(target, target),
            budget: pool.capacity(),
            pool_base: pool.base(),
            stride: pool.stride(),
            headroom: pool.headroom(),
            rx_len: pool.rx_capacity() as u32,
        };
        // SAFETY: the mapping is page aligned, holds `entries` entries and stays mapped until
        // `unmap`, which runs after the ring is quiesced (or never, when leaking).
        let r = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, entries as u16, BGID, 0)
        };
        if let Err(e) = r {
            me.unmap();
            return Err(e);
        }
        Ok(me)
    }

    /// Tells whether one more buffer should be posted, when `in_use` buffers are out of the
    /// pool's free list not counting that one: below the target, and within the budget (or
    /// fewer than [`RX_ALWAYS`] posted).
    pub(crate) fn wants(&self, in_use: usize) -> bool {
        self.posted < self.target.now && (self.posted < RX_ALWAYS || in_use < self.budget)
    }

    /// Posts free buffers until the target or the budget is reached or the pool has none.
    pub(crate) fn top_up(&mut self, pool: &mut BufferPool) {
        while self.wants(pool.capacity() - pool.n_free()) {
            let Some(idx) = pool.take_for_kernel() else {
                break;
            };
            self.push(pool, idx);
        }
    }

    /// Posts pool buffer `idx` (already in the `Kernel` state) to the ring.
    pub(crate) fn push(&mut self, pool: &BufferPool, idx: u16) {
        debug_assert!(self.posted <= self.mask as usize);
        // SAFETY: `tail & mask` indexes inside the mapping. The kernel only reads entries between
        // its head and the published tail, and this entry is beyond the published tail.
        unsafe {
            let e = &mut *self.base.as_ptr().add((self.tail & self.mask) as usize);
            e.set_addr(pool.ptr(idx).add(self.headroom) as u64);
            e.set_len(self.rx_len);
            e.set_bid(idx);
        }
        self.tail = self.tail.wrapping_add(1);
        self.posted += 1;
        // SAFETY: the tail field lives in the first entry (`resv`), a u16 that only this thread
        // writes and the kernel reads with acquire semantics; the release store publishes the
        // entry written above.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.base.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    pub(crate) fn unmap(&mut self) {
        if self.map_len > 0 {
            // SAFETY: the mapping was created in `new` with this length; `map_len` is zeroed so
            // it is unmapped once.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
            self.map_len = 0;
        }
    }
}
