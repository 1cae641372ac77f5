//! Allocator settings for training processes: keep freed memory for reuse.
//!
//! Every tensor operation allocates its output, and the activations of a CNN step are megabytes
//! each. glibc's malloc serves such blocks with fresh `mmap`s and unmaps them on free, so each
//! operation pays page faults on first touch of its output again: on the seed CNN at batch 128
//! that was more time than the arithmetic of the pure-Rust backend's max-pool (README, Benchmark).
//! Raising the mmap threshold to its maximum (32 MiB) and the trim threshold far above it keeps
//! freed blocks in the heap for the next operation. The process's resident memory then stays at
//! its peak instead of falling between steps. `CT_KEEP_FREED_MEMORY=0` keeps glibc's defaults.

/// The environment variable that turns the setting off (`0`).
pub const ENV: &str = "CT_KEEP_FREED_MEMORY";

/// Blocks up to this size come from the heap, not from their own mapping (glibc's maximum).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap is returned to the system only beyond this.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the setting unless `CT_KEEP_FREED_MEMORY=0`; returns whether it is in effect. Call
/// it first thing in `main`. Only glibc has these knobs: elsewhere this does nothing.
pub fn keep_freed_memory() -> bool {
    if std::env::var(ENV).is_ok_and(|v| v.trim() == "0") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only sets malloc's tunables; it takes the arena lock and is safe to call
    // at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    let _ = (MMAP_THRESHOLD, TRIM_THRESHOLD);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_thresholds() {
        // mallopt refuses an mmap threshold above its maximum: this checks the value is legal.
        assert!(apply());
    }
}
