//! Gives back the resident pages of code and read-only data that only start-up used.
//!
//! A node's resident set (`VmRSS`) counts every page of its binary and shared libraries it
//! ever touched, and they stay mapped until the kernel reclaims them under memory pressure:
//! after start-up that is most of the binary (configuration, YAML, SSH signatures, the CLI,
//! TLS set-up; fault-around maps 64 KiB around each fault), though forwarding runs a small
//! part of it (docs/performance.md, "Memory"). [`unmap_idle_code`] drops the page-table
//! entries of the read-only segments of the loaded objects (the binary, its libraries) with
//! `MADV_DONTNEED`: the pages stay in the page cache (until reclaim takes them, as it would
//! anyway), and what runs again faults back in with the same contents. What the node then
//! keeps resident is what it runs. The pages stay charged to the node's cgroup while cached.
//!
//! What may be dropped is decided twice, and both must agree:
//! - the dynamic loader's list of loaded objects (`dl_iterate_phdr`): only `PT_LOAD`
//!   segments without `PF_W`. Relocated read-only data (RELRO) lies inside a writable
//!   segment, so it is never a candidate; the callback runs under the loader's lock, so no
//!   object can be unloaded (and its range reused) while it works;
//! - `/proc/self/smaps`: only private, non-writable mappings of a file with `Anonymous: 0 kB`
//!   and `Swap: 0 kB` (a copy-on-write page, resident or swapped out, would go back to the
//!   file's bytes), not locked, I/O or PFN-mapped, and wholly inside one such segment.
//!
//! The daemon calls this a few seconds after start-up and after each configuration change it
//! applies in place (`Daemon::unmap_idle_code_if_due`).

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

/// Drops the page-table entries of the read-only segments of this process's loaded objects
/// that `/proc/self/smaps` shows as private file mappings without anonymous or swapped pages.
///
/// # Errors
/// `/proc/self/smaps` cannot be read. A mapping `madvise` refuses is skipped.
pub fn unmap_idle_code() -> io::Result<Unmapped> {
    use std::io::BufRead;
    let smaps = std::io::BufReader::new(std::fs::File::open("/proc/self/smaps")?);
    let mut lines = Vec::new();
    for line in smaps.lines() {
        lines.push(line?);
    }
    let mut walk = SegmentWalk {
        candidates: idle_mappings(lines.iter().map(String::as_str)),
        done: Unmapped::default(),
    };
    // SAFETY: `on_object` only reads the `dl_phdr_info` the loader passes (valid for the call)
    // and `walk`, which outlives the call; it never unwinds (no panicking operation).
    unsafe {
        libc::dl_iterate_phdr(Some(on_object), (&raw mut walk).cast::<libc::c_void>());
    }
    Ok(walk.done)
}

/// What [`on_object`] works through: the mappings smaps allows, and what was dropped.
struct SegmentWalk {
    candidates: Vec<IdleMapping>,
    done: Unmapped,
}

/// `dl_iterate_phdr`'s callback for one loaded object: drops each candidate mapping that lies
/// wholly inside one of its `PT_LOAD` segments without `PF_W`.
unsafe extern "C" fn on_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `SegmentWalk` `unmap_idle_code` passed, alive and not otherwise
    // used during `dl_iterate_phdr`; `info` is the loader's, valid during this call.
    let (walk, info) = unsafe { (&mut *data.cast::<SegmentWalk>(), &*info) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader's program headers of this object: `dlpi_phnum` entries.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let page = 4096usize;
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        let (Ok(base), Ok(vaddr), Ok(size)) = (
            usize::try_from(info.dlpi_addr),
            usize::try_from(h.p_vaddr),
            usize::try_from(h.p_memsz),
        ) else {
            continue;
        };
        let Some(start) = base.checked_add(vaddr) else {
            continue;
        };
        let Some(end) = start.checked_add(size) else {
            continue;
        };
        let (start, end) = (
            start & !(page - 1),
            end.saturating_add(page - 1) & !(page - 1),
        );
        for m in &walk.candidates {
            let Some(m_end) = m.start.checked_add(m.len) else {
                continue;
            };
            if m.start < start || m_end > end {
                continue;
            }
            // SAFETY: `m` is a private, non-writable file mapping without anonymous or swapped
            // pages (smaps), wholly inside a read-only `PT_LOAD` segment of an object the
            // loader holds loaded while this callback runs. MADV_DONTNEED on it only removes
            // page-table entries: the next access maps the same file bytes again, so no memory
            // that Rust code refers to changes.
            let rc =
                unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
            if rc == 0 {
                walk.done.mappings += 1;
                walk.done.resident_bytes += m.resident;
            }
        }
    }
    0
}

/// The mappings of an smaps text that [`unmap_idle_code`] may drop: private (`p`), readable,
/// not writable, of a file by path (not `[heap]`, `[vdso]`, anonymous, a memfd or a deleted
/// file), with `Anonymous: 0 kB` and `Swap: 0 kB`, some `Rss`, and not locked, I/O or
/// PFN-mapped (`VmFlags` `lo`, `io`, `pf`). A line that looks like a mapping's header but does
/// not parse ends the mapping before it and starts none (its fields count for nothing).
fn idle_mappings<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<IdleMapping> {
    /// The mapping being read: its range, whether it still qualifies, and the counts seen.
    struct Current {
        mapping: IdleMapping,
        eligible: bool,
        anonymous: Option<u64>,
        swap: Option<u64>,
    }
    let mut out = Vec::new();
    let mut current: Option<Current> = None;
    let mut finish = |c: Option<Current>| {
        if let Some(c) = c
            && c.eligible
            && c.anonymous == Some(0)
            && c.swap == Some(0)
            && c.mapping.resident > 0
        {
            out.push(c.mapping);
        }
    };
    for line in lines {
        if looks_like_header(line) {
            finish(current.take());
            current = mapping_header(line).map(|(mapping, eligible)| Current {
                mapping,
                eligible,
                anonymous: None,
                swap: None,
            });
            continue;
        }
        let Some(c) = current.as_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Rss:") {
            c.mapping.resident = kib * 1024;
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            c.anonymous = Some(kib);
        } else if let Some(kib) = field_kib(line, "Swap:") {
            c.swap = Some(kib);
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && flags
                .split_whitespace()
                .any(|f| matches!(f, "lo" | "io" | "pf"))
        {
            c.eligible = false;
        }
    }
    finish(current.take());
    out
}

/// Whether a line is a mapping's header rather than a `Name: value` field: its first word
/// has a `-` and no `:`.
fn looks_like_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| w.contains('-') && !w.contains(':'))
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
Swap:                  0 kB
VmFlags: rd mr mw me dw sd
55d0c0b00000-55d0c0c00000 r-xp 00100000 fd:01 1234                       /usr/bin/connectopus
Size:               1024 kB
Rss:                 800 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me dw sd
55d0c0c00000-55d0c0c10000 r--p 00200000 fd:01 1234                       /usr/bin/connectopus
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw ac sd
55d0c0c10000-55d0c0c20000 rw-p 00210000 fd:01 1234                       /usr/bin/connectopus
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me dw ac sd
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 100 kB
Anonymous:           100 kB
Swap:                  0 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Rss:                 500 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me lo sd
7f0000100000-7f0000110000 r--p 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Rss:                   4 kB
Anonymous:             0 kB
Swap:                 60 kB
VmFlags: rd mr mw me sd
7f0000200000-7f0000300000 r-xp 00000000 fd:01 98                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 300 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me sd
7f0000300000-7f0000310000 r--s 00000000 00:05 97                         /memfd:pool (deleted)
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0000400000-7f0000410000 r--p 00000000 fd:01 96                         /tmp/gone (deleted)
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0000500000-7f0000510000 r--p 00000000 fd:01 95                         /usr/lib/locale/C.utf8/LC_CTYPE
Rss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
Swap:                  0 kB
";

    #[test]
    fn only_private_read_only_file_mappings_without_copied_pages_qualify() {
        let found = idle_mappings(SMAPS.lines());
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
    fn what_does_not_parse_counts_for_nothing() {
        assert!(idle_mappings("".lines()).is_empty());
        let one = "1000-2000 r-xp 0 fd:01 5 /x\nRss: 4 kB\nAnonymous: 0 kB\nSwap: 0 kB\n";
        assert_eq!(idle_mappings(one.lines()).len(), 1);
        assert!(idle_mappings("Rss: 4 kB\nAnonymous: 0 kB\nSwap: 0 kB\n".lines()).is_empty());
        // No Anonymous or no Swap line: not known to be free of copied pages.
        assert!(
            idle_mappings("1000-2000 r-xp 0 fd:01 5 /x\nRss: 4 kB\nSwap: 0 kB\n".lines())
                .is_empty()
        );
        assert!(
            idle_mappings("1000-2000 r-xp 0 fd:01 5 /x\nRss: 4 kB\nAnonymous: 0 kB\n".lines())
                .is_empty()
        );
        // A header that does not parse ends the mapping before it: its own fields (here a
        // RELRO-like mapping's) cannot be read as the earlier mapping's.
        let garbled = "1000-2000 r-xp 0 fd:01 5 /x\nRss: 4 kB\nzz-yy r--p 0 fd:01 5 /x\nAnonymous: 0 kB\nSwap: 0 kB\n";
        assert!(idle_mappings(garbled.lines()).is_empty());
    }

    /// The running test binary: its code mapping is resident (this test runs in it), and after
    /// `unmap_idle_code` it holds less (what runs faults back in), while a private read-only
    /// mapping of a file that is no loaded object keeps its pages: only the loader's read-only
    /// segments are dropped.
    #[test]
    fn the_binary_gives_code_back_and_other_mappings_keep_theirs() {
        use std::os::fd::AsRawFd;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap().to_owned();
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
        assert_eq!(mapped, &bytes[..]);
        // Resident bytes of the binary's code mappings, and of the test's file mapping.
        let resident = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut exe_code = 0u64;
            let mut file = 0u64;
            let mut which = 0;
            for line in smaps.lines() {
                if looks_like_header(line) {
                    which = if line.ends_with(&exe) && line.contains(" r-xp ") {
                        1
                    } else if line.starts_with(&format!("{:x}-", base as usize)) {
                        2
                    } else {
                        0
                    };
                } else if let Some(kib) = field_kib(line, "Rss:") {
                    match which {
                        1 => exe_code += kib,
                        2 => file += kib,
                        _ => {}
                    }
                }
            }
            (exe_code, file)
        };
        let (code_before, file_before) = resident();
        assert!(
            code_before > 0 && file_before == 256,
            "{code_before} {file_before}"
        );
        let done = unmap_idle_code().unwrap();
        let (code_after, file_after) = resident();
        assert!(done.mappings >= 1 && done.resident_bytes > 0, "{done:?}");
        assert!(
            code_after < code_before,
            "code {code_before} -> {code_after} KiB"
        );
        assert_eq!(
            file_after, 256,
            "a mapping of no loaded object lost its pages"
        );
        assert_eq!(mapped, &bytes[..]);
        // SAFETY: `base` is the mapping made above, no longer used.
        unsafe { libc::munmap(base, bytes.len()) };
        let _ = std::fs::remove_file(&path);
    }
}
