//! What an idle process keeps mapped of its own binary. Start-up runs code that serving never
//! runs again (reading and checking the config, loading certificates, detaching, the privilege
//! drop), and every page fault on the binary maps a window of up to 16 pages around it, so a
//! freshly started daemon has most of its code mapped although it waits for nothing but the
//! next event. Once start-up is over, each process (the reactor and the helper) unmaps the
//! binary's read-only pages it has not modified; the ones serving needs come back at their
//! first use, from the page cache, without reading the disk.
//!
//! Only mappings of the executable that are not writable and hold no private (anonymous) page
//! are released: there unmapping loses nothing, the file is what the pages held. Relocated
//! read-only data (RELRO) was written before it was made read-only, so it has anonymous pages
//! and is kept, as is everything writable.

use std::ops::Range;

/// One mapping from `/proc/self/smaps` that is safe to release: the executable's, read-only,
/// with no anonymous page.
fn releasable(smaps: &str, exe_dev: (u32, u32), exe_inode: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_of(line, exe_dev, exe_inode) {
            current = range;
            continue;
        }
        if let Some(kib) = line.strip_prefix("Anonymous:") {
            let anonymous = kib.trim().trim_end_matches("kB").trim();
            if let Some(range) = current.take() {
                if anonymous == "0" {
                    out.push(range);
                }
            }
        }
    }
    out
}

/// For a mapping's header line: `Some(Some(range))` when it maps the executable read-only,
/// `Some(None)` for any other mapping, `None` when the line is not a header (a field line).
fn mapping_of(line: &str, exe_dev: (u32, u32), exe_inode: u64) -> Option<Option<Range<usize>>> {
    let mut fields = line.split_ascii_whitespace();
    let (span, perms, _offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let (start, end) = span.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode: u64 = inode.parse().ok()?;
    let read_only = perms.as_bytes()[1] == b'-';
    let private = perms.as_bytes()[3] == b'p';
    let ours = dev == exe_dev && inode == exe_inode && inode != 0;
    Some((ours && read_only && private && start < end).then_some(start..end))
}

/// Unmaps the executable's clean read-only pages from this process (see the module doc).
/// Returns the bytes of address space released; nothing on any error (this is only an
/// optimisation: a process that keeps its pages works the same).
pub fn release_startup_code() -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata("/proc/self/exe") else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let dev = meta.dev();
    let exe_dev = (libc::major(dev), libc::minor(dev));
    let mut released = 0;
    for range in releasable(&smaps, exe_dev, meta.ino()) {
        let len = range.end - range.start;
        // SAFETY: the range is a whole private, read-only mapping of the executable with no
        // anonymous page, so MADV_DONTNEED only drops page-table entries whose contents the
        // file still holds; the next access maps them again from the page cache.
        let rc =
            unsafe { libc::madvise(range.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += len;
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
555574cbc000-555574cde000 rw-p 00000000 00:00 0                          [heap]
Rss:                  40 kB
Anonymous:            40 kB
7f03f2e00000-7f03f2ecb000 r--p 00000000 fe:00 5595886                    /usr/sbin/postling
Rss:                 448 kB
Anonymous:             0 kB
7f03f2ecb000-7f03f30df000 r-xp 000ca000 fe:00 5595886                    /usr/sbin/postling
Rss:                1876 kB
Anonymous:             0 kB
7f03f30df000-7f03f30f1000 r--p 002dd000 fe:00 5595886                    /usr/sbin/postling
Rss:                  72 kB
Anonymous:            72 kB
7f03f30f1000-7f03f30f4000 rw-p 002ee000 fe:00 5595886                    /usr/sbin/postling
Rss:                  12 kB
Anonymous:            12 kB
7f03f3100000-7f03f3200000 r-xp 00000000 fe:00 777                        /usr/lib/other.so
Rss:                  12 kB
Anonymous:             0 kB
7f03f32be000-7f03f32c1000 rw-s 00000000 00:10 4446866                    anon_inode:[io_uring]
Rss:                  12 kB
Anonymous:             0 kB
";

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_released() {
        let ranges = releasable(SMAPS, (0xfe, 0), 5595886);
        assert_eq!(
            ranges,
            vec![
                0x7f03f2e00000..0x7f03f2ecb000,
                0x7f03f2ecb000..0x7f03f30df000
            ]
        );
    }

    #[test]
    fn relocated_read_only_data_and_writable_data_are_kept() {
        // The third mapping (RELRO: read-only now, but written by the relocations) has
        // anonymous pages; the fourth is writable.
        let ranges = releasable(SMAPS, (0xfe, 0), 5595886);
        assert!(!ranges.iter().any(|r| r.start == 0x7f03f30df000));
        assert!(!ranges.iter().any(|r| r.start == 0x7f03f30f1000));
    }

    #[test]
    fn another_file_or_device_is_never_released() {
        assert!(releasable(SMAPS, (0xfe, 1), 5595886).is_empty());
        assert!(releasable(SMAPS, (0xfe, 0), 777).len() == 1);
        assert!(releasable("", (0xfe, 0), 5595886).is_empty());
        assert!(releasable("garbage line\nAnonymous: 0 kB\n", (0xfe, 0), 5595886).is_empty());
    }

    #[test]
    fn releasing_keeps_this_process_working() {
        // Run for real on the test binary: code and constants are mapped again on use.
        assert!(super::release_startup_code() > 0);
        let words: Vec<String> = (0..100).map(|n| format!("{n:x}")).collect();
        assert_eq!(words[99], "63");
    }
}
