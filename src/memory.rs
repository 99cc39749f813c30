//! Memory: the allocator policy for CPU tensor work, peak memory of the process, and the CUDA
//! caching allocator's counters.
//!
//! libtorch's CPU tensors come from `malloc`. glibc serves blocks above its mmap threshold
//! (128 KiB to 32 MiB) with fresh `mmap`s and unmaps them on free, so every large temporary of
//! every step (activations, loss terms, gradients) costs a page fault per 4 KiB page when it is
//! first written: for the loss benchmarks that was over half the time. [`tune_allocator`] keeps
//! such blocks in the heap for reuse instead. The `tchcv` command line calls it at start-up
//! (`TCHCV_SYSTEM_MALLOC=1` opts out); library users may call it themselves. The cost: memory
//! freed by tensors stays with the process (its peak RSS) instead of going back to the system.
//! Measured (BENCHMARKS.md, 2-core CPU): training SSD300 at batch 8, 8.23 s a step and 3071 MiB
//! peak RSS with the policy, 10.38 s and 2192 MiB without.

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

/// A device caching allocator's counters, in bytes (`torch.cuda.memory_stats()`'s
/// `allocated_bytes.all.*` and `reserved_bytes.all.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Held by tensors now (`torch.cuda.memory_allocated`).
    pub allocated: i64,
    /// The most held by tensors since the start or the last [`reset_device_peak`]
    /// (`torch.cuda.max_memory_allocated`).
    pub peak_allocated: i64,
    /// Held by the allocator's cache now (`torch.cuda.memory_reserved`).
    pub reserved: i64,
    /// The most held by the cache (`torch.cuda.max_memory_reserved`).
    pub peak_reserved: i64,
}

impl DeviceMemory {
    /// `peak_allocated` in MiB.
    pub fn peak_allocated_mib(&self) -> f64 {
        self.peak_allocated as f64 / (1024.0 * 1024.0)
    }
}

/// The caching allocator's counters of a CUDA `device`; `Ok(None)` on the CPU, which has no
/// such allocator (see [`peak_rss_mib`]).
pub fn device_memory(device: tch::Device) -> anyhow::Result<Option<DeviceMemory>> {
    if device == tch::Device::Cpu {
        return Ok(None);
    }
    let (device_type, index) = crate::device::ext::device_type(device)?;
    let (mut allocated, mut peak_allocated, mut reserved, mut peak_reserved) = (0, 0, 0, 0);
    // SAFETY: integer arguments and out-pointers to locals.
    crate::device::ext::check(unsafe {
        crate::device::ext::tchcv_device_memory(
            device_type,
            index,
            &mut allocated,
            &mut peak_allocated,
            &mut reserved,
            &mut peak_reserved,
        )
    })?;
    Ok(Some(DeviceMemory {
        allocated,
        peak_allocated,
        reserved,
        peak_reserved,
    }))
}

/// Start the peaks of a CUDA `device`'s allocator afresh (`torch.cuda.reset_peak_memory_stats`);
/// a no-op on the CPU.
pub fn reset_device_peak(device: tch::Device) -> anyhow::Result<()> {
    if device == tch::Device::Cpu {
        return Ok(());
    }
    let (device_type, index) = crate::device::ext::device_type(device)?;
    // SAFETY: integer arguments only.
    crate::device::ext::check(unsafe {
        crate::device::ext::tchcv_device_memory_reset_peak(device_type, index)
    })
}
