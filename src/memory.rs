//! The C allocator's free memory, given back to the kernel.
//!
//! glibc's malloc keeps the memory a burst of work freed: a node that took
//! puts for a few seconds held 11-20 MiB afterwards, of which 3.4 MiB was in
//! use (malloc_stats). Its heap gives back only what lies free at its top,
//! and the writes leave live blocks above the free ones. So:
//! - [`configure`] fixes the threshold above which a block gets its own
//!   mapping, which is unmapped when freed. glibc raises the threshold after
//!   each such free (up to 32 MiB), and later blocks of that size then stay in
//!   the heap: a snapshot or a large listing would leave its size behind.
//! - [`trim`] hands every free page inside the heaps back (`malloc_trim`).
//!   The replica calls it once writes have stopped and the state machine is
//!   checkpointed (`PartitionReplica::maybe_trim`), not under load, where
//!   the pages would be faulted back in at once.
//!
//! Elsewhere (musl, other systems) both do nothing.

/// Blocks of this size or more get a mapping of their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Sets the allocator up for a long-running node; call once, before the
/// node starts its threads.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; it is safe to
    // call at any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the allocator's free pages back to the kernel. It holds each
/// arena's lock while it walks it, which can take a millisecond on a large
/// heap: run it off the executor, at rest.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to
    // call at any time, from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
