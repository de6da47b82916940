//! What the server asks of the C library and the scheduler so that 100,000
//! clients stay cheap: memory that does not grow with reloads, and a packet
//! loop that always gets its core. The only `unsafe` outside capture and
//! netlink: two calls, each with its reason.
//!
//! glibc's allocator serves a request of 128 KiB or more with an `mmap` of
//! its own, returned to the system when freed, until such a block is freed:
//! then it raises that threshold (up to 32 MiB) and serves the next large
//! blocks from its heaps, which it rarely returns. A reload builds a new
//! roster of 100,000 clients (tens of MiB in a few large blocks) while the old
//! one runs, then frees the old one: with the threshold raised, every reload
//! left its blocks in the heaps, and the resident size grew from about 30 to
//! 80 MiB over four reloads. Fixing the threshold keeps large blocks in
//! `mmap`s: about 30 MiB after every reload, 49 MiB at the peak of one.

/// Large blocks are always mapped on their own (and unmapped when freed).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Call once, at start, before the roster is built.
pub fn keep_large_blocks_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; M_MMAP_THRESHOLD
    // takes any value up to 32 MiB. It is called at start, from the main
    // thread, before any thread that allocates is spawned.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Work beside the packet loop (reading a reload, putting a record in
/// place, dropping a roster) yields the CPU to it: on two cores the reload
/// would otherwise take the core the loop wakes on, and knocks wait in the
/// socket for their turn. Nice 19, not SCHED_IDLE: the work still finishes
/// on a busy host.
pub fn yield_to_the_loop() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with
    // `who` 0 sets the nice value of the calling thread alone. A failure
    // leaves the thread at its priority: the packaged unit filters
    // @resources (setpriority among them) with EPERM, and allowing it would
    // raise the unit's exposure; there the reload still takes one core
    // only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}
