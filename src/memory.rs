//! Giving freed memory back to the operating system after a burst.
//!
//! glibc's allocator keeps the memory it frees for later reuse instead of
//! returning it, so after many Watch streams close (10,000 held about
//! 150 MiB) a readyd stays that large although nearly all of it is free.
//! A sidecar's memory counts against its pod's limit, so readyd asks the
//! allocator to return free memory (`malloc_trim`) a moment after streams
//! have closed: one trim per burst, not one per stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Returns free heap memory to the system at once, on this thread. For the
/// two moments that leave a few MiB freed but resident, where waiting for a
/// burst to settle would only keep them longer:
///
/// - the end of start-up: loading the snapshot decodes every row, builds the
///   flags and drops the rows, so the heap peaks at about twice what stays
///   live (1,000 flags and 1,000 config rows: a 5.6 MiB peak, 2.7 MiB live);
/// - after the snapshot is saved to disk, on the blocking thread that
///   encoded it: the encoding (0.5 MiB of JSON for 1,000 flags, in a buffer
///   grown by doubling) is freed into that thread's arena, which glibc
///   keeps.
///
/// The walk covers every arena; on a heap of a few MiB it took 3 ms (about
/// 30 `madvise` calls, timed under `strace`). After a burst of streams, use
/// [`released`] instead.
pub fn trim_now() {
    trim();
}

/// Set when memory worth returning may have been freed; cleared by a trim.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Whether a trimming task is running.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// How long the trim waits after a release, so a burst costs one trim.
const SETTLE: Duration = Duration::from_secs(2);

/// Notes that a large amount of memory may have been freed (a stream
/// ended); free memory is returned to the system within about [`SETTLE`].
/// Outside a tokio runtime, does nothing.
pub fn released() {
    PENDING.store(true, Ordering::Release);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(trim_while_released());
        }
        Err(_) => RUNNING.store(false, Ordering::Release),
    }
}

/// Trims after each quiet [`SETTLE`] that follows a release; ends when a
/// whole [`SETTLE`] passes without one.
async fn trim_while_released() {
    loop {
        tokio::time::sleep(SETTLE).await;
        if PENDING.swap(false, Ordering::AcqRel) {
            // Walks the heap: off the async workers.
            let _ = tokio::task::spawn_blocking(trim).await;
            continue;
        }
        RUNNING.store(false, Ordering::Release);
        // A release between the check and the store found RUNNING still
        // set and started nothing: carry on for it.
        if !PENDING.load(Ordering::Acquire) || RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

/// Returns free heap memory to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory that the allocator
    // holds; it has no preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory by themselves (or offer no such call).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
