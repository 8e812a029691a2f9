//! A directory readyd's pod writes to (a volume, a cache, a spool): it exists,
//! a file can really be created, written, synced and removed in it (mode bits
//! do not reveal a read-only mount, a full disk or an exhausted quota), and
//! the space left to unprivileged users is at least `min_free`. The file
//! system calls block, so they run on tokio's blocking pool.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;

use super::describe_io;

/// What the probe file holds.
const PROBE_CONTENT: &[u8] = b"readyd write check\n";

/// Probes a directory.
pub struct FileRunner {
    /// The directory.
    path: PathBuf,
    /// Free bytes required (0: only writability).
    min_free: u64,
}

impl fmt::Debug for FileRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileRunner({}, {})", self.path.display(), self.min_free)
    }
}

impl FileRunner {
    /// A runner for the directory `path`, requiring `min_free` free bytes.
    pub fn new(path: PathBuf, min_free: u64) -> Self {
        Self { path, min_free }
    }

    /// One probe. Dropped midway, the blocking part still finishes on its
    /// own, removing its probe file.
    pub async fn run(&self) -> Result<(), String> {
        let path = self.path.clone();
        let min_free = self.min_free;
        tokio::task::spawn_blocking(move || check_dir(&path, min_free))
            .await
            .map_err(|err| format!("the file check did not finish: {err}"))?
    }
}

/// The whole check, blocking.
fn check_dir(path: &Path, min_free: u64) -> Result<(), String> {
    let metadata = fs::metadata(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("{}: {}", path.display(), describe_io(&err)),
    })?;
    if !metadata.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    write_probe(path)
        .map_err(|err| format!("cannot write in {}: {}", path.display(), describe_io(&err)))?;
    if min_free > 0 {
        let free = free_bytes(path).map_err(|err| {
            format!(
                "cannot read the free space of {}: {}",
                path.display(),
                describe_io(&err)
            )
        })?;
        if free < min_free {
            return Err(format!(
                "{} free, {} required",
                ByteSize(free).display().si(),
                ByteSize(min_free).display().si()
            ));
        }
    }
    Ok(())
}

/// Creates a uniquely named hidden file in `dir`, writes and syncs it, and
/// removes it again (also when writing failed).
fn write_probe(dir: &Path) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let name = format!(
        ".readyd-check-{}-{}-{nanos}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let probe = dir.join(name);
    // create_new: never clobber a file that is not ours.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let written = file.write_all(PROBE_CONTENT).and_then(|()| file.sync_all());
    drop(file);
    let removed = fs::remove_file(&probe);
    written.and(removed)
}

/// Bytes available to unprivileged users on the file system of `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(to_u64(stat.blocks_available()).saturating_mul(to_u64(stat.fragment_size())))
}

/// A statvfs count as u64 (its C type differs between platforms).
fn to_u64<T: TryInto<u64>>(value: T) -> u64 {
    value.try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_named() {
        let err = check_dir(Path::new("/nonexistent/readyd/dir"), 0).unwrap_err();
        assert_eq!(err, "/nonexistent/readyd/dir does not exist");
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = check_dir(&file, 0).unwrap_err();
        assert!(err.ends_with("is not a directory"), "{err}");
    }

    #[test]
    fn the_probe_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path(), 1).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
