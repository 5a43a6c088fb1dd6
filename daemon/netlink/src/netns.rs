//! Network namespaces by descriptor, work done inside one on a thread of its own, and
//! sysctls (which `/proc/sys/net` shows for the namespace of the thread that opens them).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

/// A network namespace, held open by a descriptor (of `/run/netns/<name>`,
/// `/proc/<pid>/ns/net` or one received from elsewhere).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// Opens the namespace at `path`; fails unless it is a network namespace.
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = std::fs::File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening network namespace {}: {e}", path.display()),
            )
        })?;
        let netns = Netns {
            fd: OwnedFd::from(file),
        };
        netns
            .check_type()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(netns)
    }

    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Takes a descriptor that refers to a network namespace.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Netns> {
        let netns = Netns { fd };
        netns.check_type()?;
        Ok(netns)
    }

    fn check_type(&self) -> io::Result<()> {
        const NSIO: libc::c_ulong = 0xb7;
        const NS_GET_NSTYPE: libc::c_ulong = (NSIO << 8) | 0x3;
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type of the
        // namespace behind the descriptor, or fails for anything else.
        let kind = unsafe { libc::ioctl(self.fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a namespace: {e}"),
            ));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a network namespace",
            ));
        }
        Ok(())
    }

    /// The descriptor, for `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Runs `work` on a new thread that has entered this namespace, and returns its result.
    /// The calling thread stays where it is; the other thread ends with `work`.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    // SAFETY: setns takes a descriptor we hold and a namespace type; it moves
                    // only this thread, which nothing else runs on.
                    let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc < 0 {
                        let e = io::Error::last_os_error();
                        return Err(io::Error::new(
                            e.kind(),
                            format!("entering the network namespace: {e}"),
                        ));
                    }
                    Ok(work())
                })?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether this is the namespace `other` refers to as well.
    pub fn is_same(&self, other: &Netns) -> io::Result<bool> {
        let stat = |fd: BorrowedFd<'_>| -> io::Result<(u64, u64)> {
            // SAFETY: an all-zero stat is valid; fstat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes into `st`, which lives across the call.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok((st.st_dev, st.st_ino))
        };
        Ok(stat(self.fd.as_fd())? == stat(other.fd.as_fd())?)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn sysctl_path(key: &str) -> io::Result<std::path::PathBuf> {
    // Slash-separated, because interface names may hold dots (`eth0.100`).
    if key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|part| part.is_empty() || part == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sysctl `{key}` is not a path under /proc/sys"),
        ));
    }
    Ok(Path::new("/proc/sys").join(key))
}

/// Writes sysctl `key` (slash-separated: `net/ipv6/conf/eth0/accept_dad`) in the calling
/// thread's network namespace.
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = sysctl_path(key)?;
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// Reads sysctl `key` (see [`write_sysctl`]), without the trailing newline.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    let path = sysctl_path(key)?;
    std::fs::read_to_string(&path)
        .map(|s| s.trim_end().to_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}
