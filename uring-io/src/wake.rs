//! Cross-thread wake-ups through an eventfd that the driver keeps a read armed on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Wakes a [`PacketIo`](crate::PacketIo) blocked in
/// [`submit_and_wait`](crate::PacketIo::submit_and_wait) from any thread.
///
/// The wake-up arrives as one [`OpKind::Wake`](crate::OpKind::Wake) completion; several wakes
/// before the driver runs coalesce into one. Typical use: the control plane pushes work into a
/// channel, then calls [`wake`](Self::wake).
#[derive(Debug, Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Wakes the driver.
    ///
    /// # Errors
    ///
    /// Returns the `write(2)` error on the eventfd; a full counter (`EAGAIN`) is not an error,
    /// since a wake-up is then pending anyway.
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd this handle keeps open.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) {
                return Err(err);
            }
        }
        Ok(())
    }

    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd: Arc::new(fd) })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Resets the counter (used by the syscall backend after poll reports it readable).
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local from a nonblocking eventfd; the
        // result does not matter (EAGAIN when already drained).
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&raw mut v).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}
