//! How the spool and the Maildir deliverer make their writes durable: file by file
//! (`fdatasync` of each file, `fsync` of each directory), or a whole filesystem at once
//! (`syncfs`), which costs one device cache flush per batch instead of one per file.
//!
//! Callers keep the order that makes a crash harmless: the data of every file of a batch is
//! made durable first, then the files are renamed into place, then the directories are made
//! durable, and only then is the result reported (a `250`, a removed queue entry).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// The `fsync` config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fdatasync/fsync per file and directory: touches nothing but postling's own files.
    #[default]
    File,
    /// One syncfs per filesystem and batch: far fewer waits for the disk, but it also writes
    /// out whatever else is pending on that filesystem.
    Filesystem,
}

/// Makes the data of each file durable. One result per file, in order.
pub fn files(mode: SyncMode, files: &[&File]) -> Vec<io::Result<()>> {
    match mode {
        // Callers start the writeback of a whole batch early (`start_writeback`), so these
        // mostly wait for I/O already under way.
        SyncMode::File => files.iter().map(|f| f.sync_data()).collect(),
        SyncMode::Filesystem => per_filesystem(files),
    }
}

/// Makes the entries of each directory durable (after renames into it). One result each.
pub fn dirs(mode: SyncMode, dirs: &[&File]) -> Vec<io::Result<()>> {
    match mode {
        SyncMode::File => dirs.iter().map(|d| d.sync_all()).collect(),
        SyncMode::Filesystem => per_filesystem(dirs),
    }
}

/// One syncfs for each distinct filesystem among `files`; each file gets its filesystem's
/// result.
fn per_filesystem(files: &[&File]) -> Vec<io::Result<()>> {
    let mut synced: Vec<(u64, Option<i32>)> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    files
        .iter()
        .map(|f| {
            let dev = f.metadata()?.dev();
            if seen.insert(dev) {
                synced.push((dev, syncfs(f).err().and_then(|e| e.raw_os_error())));
            }
            match synced.iter().find(|(d, _)| *d == dev) {
                Some((_, None)) => Ok(()),
                Some((_, Some(errno))) => Err(io::Error::from_raw_os_error(*errno)),
                None => Err(io::Error::other("filesystem not synced")),
            }
        })
        .collect()
}

fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: a valid open descriptor; syncfs reads nothing else.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to start writing the file out now (Linux); a failure only loses the head
/// start, the fdatasync that follows does the work.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    // SAFETY: a valid open descriptor; offset 0 / nbytes 0 means the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn both_modes_report_one_result_per_file() {
        let d = tempfile::tempdir().unwrap();
        let mut fs_: Vec<File> = (0..3)
            .map(|i| File::create(d.path().join(format!("f{i}"))).unwrap())
            .collect();
        for f in &mut fs_ {
            f.write_all(b"data").unwrap();
        }
        let refs: Vec<&File> = fs_.iter().collect();
        for mode in [SyncMode::File, SyncMode::Filesystem] {
            let r = files(mode, &refs);
            assert_eq!(r.len(), 3);
            assert!(r.iter().all(|r| r.is_ok()), "{mode:?}: {r:?}");
            let dir = File::open(d.path()).unwrap();
            let r = dirs(mode, &[&dir]);
            assert!(r.len() == 1 && r[0].is_ok());
        }
        assert!(files(SyncMode::Filesystem, &[]).is_empty());
    }
}
