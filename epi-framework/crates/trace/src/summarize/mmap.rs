//! The optional memory map of the trace (`TraceOptions::mmap`): mapped read-only, populated a
//! block at a time, pages released once merged. A mapping that cannot be made is `None` (the
//! positional reads are used instead).

use std::fs::File;

/// A read-only memory map of the whole trace. Pages are dropped from the process (not from the
/// page cache) once their blocks are merged, so resident memory stays at a few blocks.
pub(super) struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// The mapping is read-only and outlives every reference handed out.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(super) fn new(file: &File, len: u64) -> Option<Mapping> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a fresh private read-only mapping of an open file; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Some(Mapping { ptr, len })
    }

    pub(super) fn data(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped readable for the life of `self`. The file could be
        // truncated by another process meanwhile (SIGBUS), as with any mmap reader; epi-bench
        // reads finished traces.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Maps the pages of `[from, to)` in one call (`MADV_POPULATE_READ`, Linux 5.14) instead of
    /// one page fault per few pages; a kernel without it just leaves them to the faults.
    pub(super) fn populate(&self, from: usize, to: usize) {
        const MADV_POPULATE_READ: libc::c_int = 22;
        let page = 4096usize;
        let start = (from / page) * page;
        let end = to.min(self.len);
        if end > start {
            // SAFETY: advice on a range inside our own mapping; failure is harmless.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(start) as *mut libc::c_void,
                    end - start,
                    MADV_POPULATE_READ,
                )
            };
        }
        // Ask for the next few MiB to be read ahead (a no-op where they are cached already), so
        // a file partly evicted from the page cache is not read one block at a time.
        // Only the newest MiB of that window: each page is looked up once, not eight times.
        let ahead_end = (end + (8 << 20)).min(self.len);
        let ahead_start = (end + (7 << 20)).div_ceil(page) * page;
        if ahead_end > ahead_start {
            // SAFETY: as above.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(ahead_start) as *mut libc::c_void,
                    ahead_end - ahead_start,
                    libc::MADV_WILLNEED,
                )
            };
        }
    }

    /// Drops the pages of `[0, upto)` from this process.
    pub(super) fn release_before(&self, upto: usize) {
        let page = 4096usize;
        let end = (upto.min(self.len) / page) * page;
        if end > 0 {
            // SAFETY: a page-aligned range inside our mapping; later reads fault pages back in.
            unsafe { libc::madvise(self.ptr, end, libc::MADV_DONTNEED) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
