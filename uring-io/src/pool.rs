//! The buffer pool: one anonymous mapping cut into equal buffers, handed out by id.
//!
//! # Memory on demand
//!
//! A pool made with `populate` false (the 64 KiB buffers of a dataplane with offloads) costs
//! resident memory only for the buffers traffic has touched, and gives it back:
//! [`BufferPool::trim`] releases (`MADV_DONTNEED`) the pages of every free buffer that was not
//! handed out since the previous trim. The free list is a stack, so the buffers a burst used
//! are on top and are reused first; those below the lowest the stack came down to since the
//! last trim (`low_water`) were idle for the whole interval. Only buffers on the free list are
//! ever released: no kernel operation holds them and no [`BufId`] names them, so the pages can
//! go without anyone seeing it, and the next use faults in zeroed pages. Such a pool is never
//! registered as io_uring fixed buffers (whose pages the kernel pins), and each of its buffers
//! starts on a page boundary (the stride is rounded up to the page size) so releasing one never
//! touches its neighbours.

use std::io;
use std::ptr::NonNull;

/// Identifies one buffer of a [`BufferPool`] and stands for the right to use it.
///
/// A `BufId` is deliberately neither `Copy` nor `Clone`: whoever holds it owns the buffer.
/// Passing it to an operation moves the ownership into the operation (and so to the kernel) until
/// the operation's [`Completion`](crate::Completion) hands it back. Dropping a `BufId` without
/// returning it through [`PacketIo::free`](crate::PacketIo::free) leaks the buffer (safely).
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a dropped BufId leaks its buffer; return it with PacketIo::free"]
pub struct BufId(u16);

impl BufId {
    /// Returns the buffer's index in its pool.
    pub fn index(&self) -> u16 {
        self.0
    }
}

/// Who may touch a buffer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufState {
    /// In the pool's free list.
    Free,
    /// Handed to the application (a `BufId` for it exists).
    App,
    /// Owned by the kernel: attached to an in-flight operation or posted to a provided-buffer ring.
    Kernel,
}

/// Pre-allocated packet buffers of one size, owned by one dataplane thread.
///
/// All buffers live in a single anonymous mapping made at start (page aligned, populated), so
/// the pool can be registered with io_uring as one fixed buffer and the per-packet path never
/// allocates. The free list is a plain stack: the pool belongs to one thread, so no lock or atomic
/// is needed.
///
/// Each buffer is laid out as `[headroom | packet area | tailroom]`. Receives place data after
/// the headroom and never write into the tailroom, so a protocol header (DTLS record header,
/// virtio-net header, TCP length prefix) can be written in front of a received packet and a
/// trailer (AEAD tag) behind it without copying.
#[derive(Debug)]
pub struct BufferPool {
    base: NonNull<u8>,
    map_len: usize,
    buf_size: usize,
    /// Bytes from one buffer's start to the next: `buf_size`, rounded up to the page size when
    /// the pool is on demand.
    stride: usize,
    /// Pages become resident on first touch and idle buffers can be released ([`Self::trim`]).
    on_demand: bool,
    /// Per buffer: handed out since its pages were last released (on-demand pools only).
    touched: Box<[bool]>,
    /// The fewest buffers on the free list since the last [`Self::trim`].
    low_water: usize,
    /// The fewest buffers on the free list ever: `count` minus it is the most that were in use
    /// (held by the application, in flight, or posted for receives) at once.
    least_free: usize,
    headroom: usize,
    tailroom: usize,
    count: usize,
    state: Box<[BufState]>,
    free: Vec<u16>,
    leaked: bool,
}

// SAFETY: the pool exclusively owns its mapping; the raw pointer is only dereferenced through
// `&self`/`&mut self` methods, so moving the pool to another thread moves that ownership with it.
unsafe impl Send for BufferPool {}

impl BufferPool {
    /// Maps `count` buffers of `buf_size` bytes each.
    ///
    /// # Errors
    ///
    /// Fails with `InvalidInput` when the geometry is unusable (no buffers, more than 32768, or
    /// headroom plus tailroom leaving no packet area) and with the `mmap` error otherwise.
    pub fn new(
        count: usize,
        buf_size: usize,
        headroom: usize,
        tailroom: usize,
    ) -> io::Result<Self> {
        Self::with_residency(count, buf_size, headroom, tailroom, true)
    }

    /// Maps the pool like [`new`](Self::new); with `populate` false, pages become resident only
    /// when first touched, so a pool sized for 64 KiB super-packets costs memory in proportion to
    /// what traffic uses, not to its worst case.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_residency(
        count: usize,
        buf_size: usize,
        headroom: usize,
        tailroom: usize,
        populate: bool,
    ) -> io::Result<Self> {
        if count == 0 || count > MAX_BUFFERS {
            return Err(invalid("buffer count must be between 1 and 32768"));
        }
        if buf_size > u32::MAX as usize || headroom + tailroom >= buf_size {
            return Err(invalid(
                "headroom + tailroom must be smaller than the buffer size",
            ));
        }
        let stride = if populate {
            buf_size
        } else {
            buf_size.next_multiple_of(page_size())
        };
        let map_len = count
            .checked_mul(stride)
            .ok_or_else(|| invalid("pool size overflows"))?;
        // SAFETY: an anonymous private mapping with a null hint has no preconditions; the result
        // is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | if populate { libc::MAP_POPULATE } else { 0 },
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| invalid("mmap returned null"))?;
        // Popped from the end: hand out low indices first (nicer to read in tests and traces).
        let free = (0..count as u16).rev().collect();
        Ok(Self {
            base,
            map_len,
            buf_size,
            stride,
            on_demand: !populate,
            touched: vec![false; count].into_boxed_slice(),
            low_water: count,
            least_free: count,
            headroom,
            tailroom,
            count,
            state: vec![BufState::Free; count].into_boxed_slice(),
            free,
            leaked: false,
        })
    }

    /// Takes a free buffer, or returns `None` when the pool is exhausted.
    pub fn alloc(&mut self) -> Option<BufId> {
        let idx = self.pop_free()?;
        self.state[idx as usize] = BufState::App;
        Some(BufId(idx))
    }

    /// Releases the pages of the free buffers that were not handed out since the last call
    /// (see the module docs); returns how many buffers it released. Does nothing on a
    /// populated pool. Called now and then (the daemon: about once a second), never per packet.
    pub fn trim(&mut self) -> usize {
        let idle = std::mem::replace(&mut self.low_water, self.free.len());
        if !self.on_demand || self.leaked {
            return 0;
        }
        let mut released = 0;
        for &idx in &self.free[..idle.min(self.free.len())] {
            let idx = idx as usize;
            if !self.touched[idx] {
                continue;
            }
            // SAFETY: the range is buffer `idx`'s stride, page aligned (on-demand pools round the
            // stride up to the page size, and the mapping starts on a page) and inside the
            // mapping. The buffer is on the free list: no `BufId` names it and no kernel
            // operation or provided-buffer ring holds it, so nothing reads or writes it; its next
            // user gets zeroed pages, which every user overwrites before reading.
            let rc = unsafe {
                libc::madvise(
                    self.base.as_ptr().add(idx * self.stride).cast(),
                    self.stride,
                    libc::MADV_DONTNEED,
                )
            };
            if rc == 0 {
                self.touched[idx] = false;
                released += 1;
            }
        }
        released
    }

    /// Returns how many buffers may have resident pages: all of a populated pool, and on an
    /// on-demand pool those handed out since they were last released.
    pub fn touched(&self) -> usize {
        if self.on_demand {
            self.touched.iter().filter(|&&t| t).count()
        } else {
            self.count
        }
    }

    /// Returns the most buffers that were out of the free list at once since the pool was made
    /// (held by the application, attached to an operation, or posted for receives): the
    /// working set a pool of this size needed.
    pub fn peak_in_use(&self) -> usize {
        self.count - self.least_free
    }

    /// Tells whether pages become resident on first touch and can be released ([`Self::trim`]).
    pub fn is_on_demand(&self) -> bool {
        self.on_demand
    }

    fn pop_free(&mut self) -> Option<u16> {
        let idx = self.free.pop()?;
        self.low_water = self.low_water.min(self.free.len());
        self.least_free = self.least_free.min(self.free.len());
        self.touched[idx as usize] = true;
        Some(idx)
    }

    /// Puts a buffer back on the free list.
    ///
    /// # Panics
    ///
    /// Panics when `buf` does not belong to this pool (its slot is not held by the application).
    pub fn free(&mut self, buf: BufId) {
        self.assert_app(&buf);
        self.state[buf.0 as usize] = BufState::Free;
        // Cannot grow past `count`: every index is either here or owned elsewhere.
        self.free.push(buf.0);
    }

    /// Returns the whole buffer, headroom and tailroom included.
    ///
    /// # Panics
    ///
    /// Panics when `buf` does not belong to this pool.
    pub fn buf(&self, buf: &BufId) -> &[u8] {
        self.assert_app(buf);
        // SAFETY: the index is in bounds (checked by `assert_app`), and the buffer is held by the
        // application, so no kernel operation writes to it while the shared borrow lives.
        unsafe { std::slice::from_raw_parts(self.ptr(buf.0), self.buf_size) }
    }

    /// Returns the whole buffer mutably, headroom and tailroom included.
    ///
    /// # Panics
    ///
    /// Panics when `buf` does not belong to this pool.
    pub fn buf_mut(&mut self, buf: &BufId) -> &mut [u8] {
        self.assert_app(buf);
        // SAFETY: as in `buf`; `&mut self` guarantees no other slice of the pool is alive, and
        // distinct indices never overlap.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(buf.0), self.buf_size) }
    }

    /// Returns one buffer to read and another to write at the same time: how a super-packet
    /// is cut from its receive buffer into record slots of a send buffer without a copy between.
    ///
    /// # Panics
    ///
    /// Panics when either buffer does not belong to this pool, or both name the same buffer.
    pub fn buf_pair(&mut self, src: &BufId, dst: &BufId) -> (&[u8], &mut [u8]) {
        self.assert_app(src);
        self.assert_app(dst);
        assert_ne!(src.0, dst.0, "buf_pair needs two different buffers");
        // SAFETY: both indices are in bounds and held by the application (`assert_app`), they
        // differ, and distinct buffers never overlap; `&mut self` guarantees no other slice of
        // the pool is alive while these two are.
        unsafe {
            (
                std::slice::from_raw_parts(self.ptr(src.0), self.buf_size),
                std::slice::from_raw_parts_mut(self.ptr(dst.0), self.buf_size),
            )
        }
    }

    /// Returns the size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Returns the number of bytes reserved in front of received data.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Returns the number of bytes at the end of each buffer that receives never fill.
    pub fn tailroom(&self) -> usize {
        self.tailroom
    }

    /// Returns the total number of buffers.
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Returns the number of buffers on the free list.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Returns the number of bytes a receive may fill: the buffer minus headroom and tailroom.
    pub fn rx_capacity(&self) -> usize {
        self.buf_size - self.headroom - self.tailroom
    }

    pub(crate) fn ptr(&self, idx: u16) -> *mut u8 {
        debug_assert!((idx as usize) < self.count);
        // SAFETY: `idx < count`, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(idx as usize * self.stride) }
    }

    /// Returns the bytes from one buffer's start to the next.
    pub fn stride(&self) -> usize {
        self.stride
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn map_len(&self) -> usize {
        self.map_len
    }

    /// Takes a free buffer for the kernel (an operation or a provided-buffer ring).
    pub(crate) fn take_for_kernel(&mut self) -> Option<u16> {
        let idx = self.pop_free()?;
        self.state[idx as usize] = BufState::Kernel;
        Some(idx)
    }

    /// Moves an application-held buffer to the kernel, consuming its id.
    pub(crate) fn give_to_kernel(&mut self, buf: BufId) -> u16 {
        self.assert_app(&buf);
        self.state[buf.0 as usize] = BufState::Kernel;
        buf.0
    }

    /// Hands a buffer the kernel is done with back to the application.
    pub(crate) fn take_from_kernel(&mut self, idx: u16) -> BufId {
        assert!(
            self.state.get(idx as usize) == Some(&BufState::Kernel),
            "kernel returned buffer {idx} that it does not own"
        );
        self.state[idx as usize] = BufState::App;
        BufId(idx)
    }

    /// Returns a buffer the kernel is done with straight to the free list.
    pub(crate) fn free_kernel(&mut self, idx: u16) {
        debug_assert_eq!(self.state[idx as usize], BufState::Kernel);
        self.state[idx as usize] = BufState::Free;
        self.free.push(idx);
    }

    /// Keeps the mapping alive forever: used when the kernel might still write into it.
    pub(crate) fn leak(&mut self) {
        self.leaked = true;
    }

    fn assert_app(&self, buf: &BufId) {
        assert!(
            self.state.get(buf.0 as usize) == Some(&BufState::App),
            "buffer {} does not belong to this pool or is not held by the application",
            buf.0
        );
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: the mapping was created in `new` with this length and is unmapped once. The
        // owner (`PacketIo`) quiesces the ring before dropping the pool, or calls `leak`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
        }
    }
}

/// Returns the system's page size (4 KiB when it cannot be read).
fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// The largest pool: buffer ids are `u16` and provided-buffer rings hold at most 2^15 entries.
pub const MAX_BUFFERS: usize = 32768;

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn never_hands_out_a_buffer_twice() {
        let mut pool = BufferPool::new(16, 256, 16, 16).unwrap();
        let mut seen = HashSet::new();
        let mut held = Vec::new();
        while let Some(b) = pool.alloc() {
            assert!(seen.insert(b.index()));
            held.push(b);
        }
        assert_eq!(held.len(), 16);
        assert_eq!(pool.n_free(), 0);
        assert!(pool.alloc().is_none(), "exhaustion is reported as None");
        for b in held.drain(..8) {
            pool.free(b);
        }
        let mut again = HashSet::new();
        while let Some(b) = pool.alloc() {
            assert!(again.insert(b.index()));
            assert!(!held.iter().any(|h| h.index() == b.index()));
        }
        assert_eq!(again.len(), 8);
    }

    #[test]
    fn buffers_do_not_overlap() {
        let mut pool = BufferPool::new(4, 128, 8, 8).unwrap();
        let ids: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
        for (i, id) in ids.iter().enumerate() {
            pool.buf_mut(id).fill(i as u8);
        }
        for (i, id) in ids.iter().enumerate() {
            assert!(pool.buf(id).iter().all(|&b| b == i as u8));
            assert_eq!(pool.buf(id).len(), 128);
        }
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(BufferPool::new(0, 2048, 0, 0).is_err());
        assert!(BufferPool::new(40000, 2048, 0, 0).is_err());
        assert!(BufferPool::new(4, 64, 32, 32).is_err());
    }

    #[test]
    #[allow(clippy::panic, reason = "checks the misuse panic")]
    fn foreign_id_is_refused() {
        let mut a = BufferPool::new(2, 64, 0, 0).unwrap();
        let mut b = BufferPool::new(2, 64, 0, 0).unwrap();
        let id = a.alloc().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.buf_mut(&id).len()));
        assert!(r.is_err());
        a.free(id);
    }

    #[test]
    fn buf_pair_reads_one_buffer_and_writes_another() {
        let mut pool = BufferPool::with_residency(2, 64, 0, 0, false).unwrap();
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.buf_mut(&a)[..3].copy_from_slice(b"abc");
        let (src, dst) = pool.buf_pair(&a, &b);
        dst[..3].copy_from_slice(&src[..3]);
        assert_eq!(&pool.buf(&b)[..3], b"abc");
        pool.free(a);
        pool.free(b);
    }

    #[test]
    fn trim_releases_only_buffers_idle_since_the_last_trim() {
        let mut pool = BufferPool::with_residency(4, 65_000, 64, 64, false).unwrap();
        assert_eq!(pool.stride() % page_size(), 0, "buffers start on pages");
        assert_eq!(pool.touched(), 0, "nothing resident before use");
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.buf_mut(&a).fill(0xab);
        pool.buf_mut(&b).fill(0xcd);
        let (ia, ib) = (a.index(), b.index());
        pool.free(b);
        pool.free(a);
        assert_eq!(pool.touched(), 2);
        // Both were used since the pool was made: kept.
        assert_eq!(pool.trim(), 0);
        // `a` is used again in this interval, `b` is not.
        let a = pool.alloc().unwrap();
        assert_eq!(a.index(), ia, "the free list is a stack");
        assert!(pool.buf(&a).iter().all(|&x| x == 0xab), "a kept its pages");
        pool.free(a);
        assert_eq!(pool.trim(), 1, "only b was idle for a whole interval");
        assert_eq!(pool.touched(), 1);
        // `b` comes back zeroed (its pages were released), `a` with its bytes.
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!((a.index(), b.index()), (ia, ib));
        assert!(pool.buf(&a).iter().all(|&x| x == 0xab));
        assert!(
            pool.buf(&b).iter().all(|&x| x == 0),
            "b's pages were released"
        );
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.trim(), 2, "idle for a whole interval");
        assert_eq!(pool.touched(), 0);
    }

    #[test]
    fn trim_never_releases_a_populated_pool_or_held_buffers() {
        let mut pool = BufferPool::new(4, 4096, 0, 0).unwrap();
        let a = pool.alloc().unwrap();
        pool.buf_mut(&a).fill(7);
        pool.free(a);
        assert_eq!((pool.trim(), pool.trim()), (0, 0));
        assert_eq!(pool.touched(), 4);
        let a = pool.alloc().unwrap();
        assert!(pool.buf(&a).iter().all(|&x| x == 7));

        let mut pool = BufferPool::with_residency(2, 8192, 0, 0, false).unwrap();
        let held = pool.alloc().unwrap();
        pool.buf_mut(&held).fill(9);
        assert_eq!((pool.trim(), pool.trim()), (0, 0));
        assert!(
            pool.buf(&held).iter().all(|&x| x == 9),
            "a held buffer is never released"
        );
        pool.free(held);
    }

    #[test]
    #[should_panic(expected = "two different buffers")]
    fn buf_pair_refuses_the_same_buffer_twice() {
        let mut pool = BufferPool::new(1, 64, 0, 0).unwrap();
        let a = pool.alloc().unwrap();
        let _ = pool.buf_pair(&a, &a);
    }
}
