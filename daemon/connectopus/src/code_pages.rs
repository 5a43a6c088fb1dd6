//! Gives back the resident pages of code and read-only data that only start-up used.
//!
//! A node's resident set (`VmRSS`) counts every page of its binary and shared libraries it
//! ever touched, and they stay mapped until the kernel reclaims them under memory pressure:
//! after start-up that is most of the binary (configuration, YAML, SSH signatures, the CLI,
//! TLS set-up; fault-around maps 64 KiB around each fault), though forwarding runs a small
//! part of it (docs/performance.md, "Memory"). [`unmap_idle_code`] drops the page-table
//! entries of the node's private, read-only file mappings with `MADV_DONTNEED`: the pages
//! stay in the page cache, and what runs again faults back in from there (a minor fault, no
//! I/O) with the same contents. What the node then keeps resident is what it runs.
//!
//! Only a mapping that holds no anonymous page qualifies: read-only data that was relocated
//! (RELRO) or written before it was made read-only is anonymous (copy-on-write), and
//! `MADV_DONTNEED` would turn it back into the file's bytes. The daemon calls this a few
//! seconds after start-up and after each configuration change (`Daemon::unmap_idle_code`).

use std::io;

/// A mapping [`unmap_idle_code`] may drop: its range and resident bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdleMapping {
    start: usize,
    len: usize,
    resident: u64,
}

/// What one call gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unmapped {
    /// Mappings dropped.
    pub mappings: usize,
    /// Their resident bytes before (what left `VmRSS`, less what ran again since).
    pub resident_bytes: u64,
}

/// Drops the page-table entries of this process's private, read-only file mappings without
/// anonymous pages (its binary's code and read-only data, its shared libraries'), as found
/// in `/proc/self/smaps`.
///
/// # Errors
/// `/proc/self/smaps` cannot be read. A mapping `madvise` refuses is skipped.
pub fn unmap_idle_code() -> io::Result<Unmapped> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut done = Unmapped::default();
    for m in idle_mappings(&smaps) {
        // SAFETY: `m` is a whole mapping of this process as the kernel listed it just now:
        // private, not writable, backed by a regular file, with no anonymous page. For such a
        // mapping MADV_DONTNEED only removes page-table entries; the pages stay in the page
        // cache and the next access maps the same bytes again, so no memory that Rust code
        // refers to changes. The node never unmaps its binary or the libraries it loaded, so
        // the range cannot have been replaced since the read.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            done.mappings += 1;
            done.resident_bytes += m.resident;
        }
    }
    Ok(done)
}

/// The mappings of an smaps text that [`unmap_idle_code`] may drop: private (`p`), readable,
/// not writable, of a file by path (not `[heap]`, `[vdso]`, anonymous or a deleted file), with
/// `Anonymous: 0 kB`, some `Rss`, and not locked, I/O or PFN-mapped (`VmFlags` `lo`, `io`,
/// `pf`).
fn idle_mappings(smaps: &str) -> Vec<IdleMapping> {
    let mut out = Vec::new();
    let mut current: Option<(IdleMapping, bool)> = None;
    let mut anonymous_kib: Option<u64> = None;
    let mut finish = |current: &mut Option<(IdleMapping, bool)>, anonymous: Option<u64>| {
        if let Some((m, eligible)) = current.take()
            && eligible
            && anonymous == Some(0)
            && m.resident > 0
        {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(&mut current, anonymous_kib.take());
            current = Some(header);
            continue;
        }
        let Some((m, eligible)) = current.as_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Rss:") {
            m.resident = kib * 1024;
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            anonymous_kib = Some(kib);
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && flags
                .split_whitespace()
                .any(|f| matches!(f, "lo" | "io" | "pf"))
        {
            *eligible = false;
        }
    }
    finish(&mut current, anonymous_kib.take());
    out
}

/// A mapping's header line (`start-end perms offset dev inode path`): its range, and whether
/// its permissions and path qualify.
fn mapping_header(line: &str) -> Option<(IdleMapping, bool)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if perms.len() != 4 || end <= start {
        return None;
    }
    let eligible = perms[0] == b'r'
        && perms[1] == b'-'
        && perms[3] == b'p'
        && inode != "0"
        && path.starts_with('/')
        && !path.ends_with("(deleted)")
        && !path.starts_with("/memfd:");
    Some((
        IdleMapping {
            start,
            len: end - start,
            resident: 0,
        },
        eligible,
    ))
}

/// `Name:   123 kB` → 123.
fn field_kib(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fd:01 1234                       /usr/bin/connectopus
Size:               1024 kB
Rss:                 600 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c0b00000-55d0c0c00000 r-xp 00100000 fd:01 1234                       /usr/bin/connectopus
Size:               1024 kB
Rss:                 800 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
55d0c0c00000-55d0c0c10000 r--p 00200000 fd:01 1234                       /usr/bin/connectopus
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
VmFlags: rd mr mw me dw ac sd
55d0c0c10000-55d0c0c20000 rw-p 00210000 fd:01 1234                       /usr/bin/connectopus
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
VmFlags: rd wr mr mw me dw ac sd
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 100 kB
Anonymous:           100 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Rss:                 500 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7f0000200000-7f0000300000 r-xp 00000000 fd:01 98                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 300 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000300000-7f0000310000 r--s 00000000 00:05 97                         /memfd:pool (deleted)
Rss:                  64 kB
Anonymous:             0 kB
7f0000400000-7f0000410000 r--p 00000000 fd:01 96                         /tmp/gone (deleted)
Rss:                  64 kB
Anonymous:             0 kB
7f0000500000-7f0000510000 r--p 00000000 fd:01 95                         /usr/lib/locale/C.utf8/LC_CTYPE
Rss:                   0 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_private_read_only_file_mappings_without_anonymous_pages_qualify() {
        let found = idle_mappings(SMAPS);
        let starts: Vec<usize> = found.iter().map(|m| m.start).collect();
        assert_eq!(
            starts,
            vec![0x55d0_c0a0_0000, 0x55d0_c0b0_0000, 0x7f00_0020_0000],
            "{found:?}"
        );
        assert_eq!(found[0].len, 0x10_0000);
        assert_eq!(found[1].resident, 800 * 1024);
        assert_eq!(found[2].resident, 300 * 1024);
    }

    #[test]
    fn garbage_lines_are_no_mapping() {
        assert!(idle_mappings("").is_empty());
        assert!(idle_mappings("zz-yy r-xp 0 0 1 /x\nRss: 4 kB\nAnonymous: 0 kB\n").is_empty());
        assert!(idle_mappings("Rss: 4 kB\nAnonymous: 0 kB\n").is_empty());
        // No Anonymous line: not known to be free of anonymous pages.
        assert!(idle_mappings("1000-2000 r-xp 0 fd:01 5 /x\nRss: 4 kB\n").is_empty());
    }

    /// A real private read-only mapping of a file: once touched its pages are resident (its
    /// `Rss` in smaps); after `unmap_idle_code` none is, and reading it again gives the file's
    /// bytes.
    #[test]
    fn a_touched_file_mapping_is_dropped_and_reads_the_same_after() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("cx-code-pages-{}", std::process::id()));
        let bytes: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private read-only mapping of a file this test owns and does not
        // change while it is mapped; unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes.len(),
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the mapping is `bytes.len()` readable bytes, alive until the munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(base as *const u8, bytes.len()) };
        let sum = |s: &[u8]| s.iter().map(|b| u64::from(*b)).sum::<u64>();
        assert_eq!(sum(mapped), sum(&bytes));
        let resident = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            idle_mappings(&smaps)
                .into_iter()
                .find(|m| m.start == base as usize)
                .map_or(0, |m| m.resident)
        };
        assert_eq!(resident(), bytes.len() as u64);
        let done = unmap_idle_code().unwrap();
        assert!(done.mappings >= 1 && done.resident_bytes >= bytes.len() as u64);
        assert_eq!(resident(), 0, "the mapping's pages are still mapped");
        assert_eq!(mapped, &bytes[..]);
        // SAFETY: `base` is the mapping made above, no longer used.
        unsafe { libc::munmap(base, bytes.len()) };
        let _ = std::fs::remove_file(&path);
    }
}
