//! What `tchcv info` reports: versions, where libtorch was loaded from, CUDA devices, threads.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The build and runtime environment.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub tchcv_version: String,
    /// libtorch's version as the wheel states it (`torch/version.py`), e.g. `2.11.0+cu130`.
    pub libtorch_version: Option<String>,
    /// The directory `libtorch_cpu.so` was loaded from.
    pub libtorch_path: Option<PathBuf>,
    /// Whether this binary was linked to keep `libtorch_cuda.so` (see build.rs).
    pub cuda_linked: bool,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_device_count: i64,
    pub cuda_devices: Vec<String>,
    /// libtorch intra-op threads.
    pub threads: i32,
    pub cpu_cores: usize,
    /// Whether the c10d binding (distributed training) was compiled in.
    pub distributed: bool,
    /// The c10d backends compiled in (`gloo`, `nccl`).
    pub distributed_backends: Vec<crate::dist::Backend>,
    /// Why distributed support or a backend is missing (empty when all are there).
    pub distributed_note: String,
}

/// The directory of the loaded `libtorch_cpu.so`, from `/proc/self/maps`.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| Path::new(path).parent().map(Path::to_path_buf))
}

/// `__version__ = '2.11.0+cu130'` from the wheel's `torch/version.py` next to `lib/`.
fn wheel_version(lib_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// CUDA device names through the driver API (`libcuda.so.1`, `cuDeviceGetName`).
fn cuda_device_names(count: i64) -> Vec<String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut libc::c_char, i32, i32) -> i32;
    let mut names = Vec::new();
    // SAFETY: dlopen/dlsym of the CUDA driver; the three functions have these C signatures in
    // every CUDA version, and the name buffer is larger than the length we pass.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            return names;
        }
        let init = libc::dlsym(handle, c"cuInit".as_ptr());
        let get = libc::dlsym(handle, c"cuDeviceGet".as_ptr());
        let get_name = libc::dlsym(handle, c"cuDeviceGetName".as_ptr());
        if init.is_null() || get.is_null() || get_name.is_null() {
            return names;
        }
        let init: CuInit = std::mem::transmute(init);
        let get: CuDeviceGet = std::mem::transmute(get);
        let get_name: CuDeviceGetName = std::mem::transmute(get_name);
        if init(0) != 0 {
            return names;
        }
        for ordinal in 0..count as i32 {
            let mut dev = 0;
            let mut buf = [0 as libc::c_char; 256];
            if get(&mut dev, ordinal) == 0 && get_name(buf.as_mut_ptr(), 255, dev) == 0 {
                let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                names.push(name);
            }
        }
    }
    names
}

/// Collect [`Info`] (initialises CUDA when it is available).
pub fn collect() -> Info {
    let libtorch_path = loaded_libtorch_dir();
    let cuda_available = tch::Cuda::is_available();
    let cuda_device_count = if cuda_available {
        tch::Cuda::device_count()
    } else {
        0
    };
    Info {
        tchcv_version: crate::version().to_string(),
        libtorch_version: libtorch_path.as_deref().and_then(wheel_version),
        libtorch_path,
        cuda_linked: env!("TCHCV_CUDA_LINKED") == "1",
        cuda_available,
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_device_count,
        cuda_devices: cuda_device_names(cuda_device_count),
        threads: tch::get_num_threads(),
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        distributed: crate::dist::available(),
        distributed_backends: crate::dist::backends(),
        distributed_note: crate::dist::build_note().to_string(),
    }
}

/// Which error a CUDA tensor request gives: tells whether libtorch's CUDA library is loaded
/// on a machine without a GPU ("no NVIDIA driver") or was dropped by the linker
/// ("could not run ... CUDA backend"). `None` when CUDA works.
pub fn cuda_probe_error() -> Option<String> {
    tch::Tensor::f_zeros([2], (tch::Kind::Float, tch::Device::Cuda(0)))
        .err()
        .map(|e| e.to_string())
}
