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
