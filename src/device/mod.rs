//! Devices: parsing `--device`, waiting for a device, and the device-level settings of a
//! training step: mixed precision ([`autocast`]), memory formats ([`layout`]) and cuDNN's
//! autotuner ([`set_cudnn_benchmark`]); counting the
//! operators a region dispatches ([`op_count`]) and timing them ([`op_time`]); libtorch's fused
//! optimizer kernels ([`fused`]).

use anyhow::Result;
use tch::{Device, Tensor};

use crate::bail_input;

pub mod autocast;
pub(crate) mod ext;
pub mod fused;
pub mod layout;
pub mod op_count;
pub mod op_time;

pub use autocast::{autocast, AutocastDtype, AutocastGuard};
pub use layout::{convert_variables, to_memory_format, MemoryFormat};
pub use op_count::{count_ops, OpCounts};

/// Whether tensors of `kind` are floating point (f32, f64, f16, bf16): what the losses, box
/// operations and RoIAlign take.
pub fn is_float(kind: tch::Kind) -> bool {
    matches!(
        kind,
        tch::Kind::Float | tch::Kind::Double | tch::Kind::Half | tch::Kind::BFloat16
    )
}

/// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(0),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => Device::Cuda(i),
            None => bail_input!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
        },
    };
    let Device::Cuda(i) = device else {
        unreachable!()
    };
    if !tch::Cuda::is_available() {
        bail_input!("--device {s}: CUDA is not available on this machine (tchcv info tells why)");
    }
    let count = tch::Cuda::device_count();
    if i as i64 >= count {
        bail_input!("--device {s}: this machine has {count} CUDA device(s)");
    }
    Ok(device)
}

/// Turn cuDNN's autotuner on or off (`torch.backends.cudnn.benchmark`): with it on, the first
/// convolution of each shape times cuDNN's algorithms and later ones use the fastest, which pays
/// off when every batch has the same size (detection training at a fixed input size). A
/// process-wide libtorch flag; only CUDA convolutions read it.
pub fn set_cudnn_benchmark(on: bool) {
    tch::Cuda::cudnn_set_benchmark(on);
}

/// Whether cuDNN's autotuner is on (libtorch's default: off).
pub fn cudnn_benchmark() -> bool {
    // SAFETY: plain C call reading a global flag.
    unsafe { ext::tchcv_cudnn_benchmark() != 0 }
}

/// `t` on `device`, copied without making the host wait where it can
/// (`tensor.to(device, non_blocking=True)` for host-to-CUDA copies): from pinned host memory the
/// copy is queued on the current stream, the kernels queued after it see its result, and the
/// caching host allocator keeps the pinned block until the copy is done; from pageable memory
/// CUDA stages the copy and the call returns once the source has been read (safe, no faster).
/// Any other copy is the ordinary one.
pub fn to_device_async(t: &Tensor, device: Device) -> Tensor {
    let non_blocking = device.is_cuda() && t.device() == Device::Cpu;
    t.to_device_(device, t.kind(), non_blocking, false)
}

/// Wait for queued work on `device` to finish (for timing).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The values of an integer tensor (any shape, any device) as int64, in one device-to-host
/// transfer: where a loss needs several counts, one wait for the device instead of one per
/// `int64_value`. Operator counts see it as `tchcv::read_back`.
pub fn read_back(t: &Tensor) -> Result<Vec<i64>> {
    let len = t.numel();
    let mut out = vec![0i64; len];
    // SAFETY: `out` holds `len` int64s; the extension checks the tensor's size against it.
    ext::check(unsafe { ext::tchcv_read_back_i64(ext::raw(t), out.as_mut_ptr(), len as i64) })?;
    Ok(out)
}

/// A short name: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}
