//! Process memory: the allocator policy for tensor work, and peak memory.
//!
//! libtorch's CPU tensors come from `malloc`. glibc serves blocks above its mmap threshold
//! (128 KiB to 32 MiB) with fresh `mmap`s and unmaps them on free, so every large temporary of
//! every step (activations, loss terms, gradients) costs a page fault per 4 KiB page when it is
//! first written: for the loss benchmarks that was over half the time. [`tune_allocator`] keeps
//! such blocks in the heap for reuse instead. The `tchcv` command line calls it at start-up
//! (`TCHCV_SYSTEM_MALLOC=1` opts out); library users may call it themselves. The cost: memory
//! freed by tensors stays with the process (its peak RSS) instead of going back to the system.

/// Make glibc keep large blocks for reuse (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD = 2 GiB`).
/// Returns whether the policy was applied (glibc only; a no-op elsewhere or when
/// `TCHCV_SYSTEM_MALLOC` is set).
pub fn tune_allocator() -> bool {
    if std::env::var_os("TCHCV_SYSTEM_MALLOC").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; both values are valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Peak resident memory of this process in MiB (`VmHWM` of `/proc/self/status`), Linux only.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
