//! The device-level settings tch does not bind (`csrc/torch_ext.cpp`): autocast regions on CPU
//! and CUDA, memory formats, cuDNN's autotuner flag, and the CUDA caching allocator's counters.
//! Model-level parity under autocast and channels-last, against PyTorch, is in
//! tests/models_parity.rs.

mod common;

use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use tchcv::device::autocast::{autocast_state, AutocastState};
use tchcv::device::layout::is_memory_format;
use tchcv::device::{
    autocast, convert_variables, to_memory_format, AutocastDtype, AutocastGuard, MemoryFormat,
};

/// The CUDA tests hold this: the allocator counters are the process's, so a test that allocates
/// on the GPU must not run beside the one that counts (plain `cargo test` runs tests in
/// parallel; `make test` and the GPU script use one thread anyway).
static CUDA: Mutex<()> = Mutex::new(());

fn cuda_lock() -> MutexGuard<'static, ()> {
    CUDA.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A 3x3 convolution of random data on `device`: an op on autocast's lower-precision list.
fn conv_kind(device: Device) -> Kind {
    let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, device));
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, device));
    x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
        .kind()
}

/// Autocast on `device`: off by default, on with the chosen dtype inside a guard (a
/// convolution then runs in that dtype, a softmax stays float32), off again inside a nested
/// `None` guard, and restored exactly when each guard drops.
///
/// Smooth-L1 is on autocast's float32 list on both devices: its result is float32 even for
/// lower-precision inputs.
fn autocast_regions(device: Device) {
    let before = autocast_state(device).unwrap();
    assert!(!before.enabled, "autocast is on before any region");
    assert_eq!(conv_kind(device), Kind::Float);
    for dtype in [AutocastDtype::Bf16, AutocastDtype::F16] {
        let kind = if dtype == AutocastDtype::Bf16 {
            Kind::BFloat16
        } else {
            Kind::Half
        };
        {
            let _outer = AutocastGuard::enter(device, Some(dtype)).unwrap();
            assert_eq!(
                autocast_state(device).unwrap(),
                AutocastState {
                    enabled: true,
                    dtype: Some(dtype)
                }
            );
            assert_eq!(conv_kind(device), kind, "{dtype} conv under autocast");
            let x = Tensor::randn([4, 5], (Kind::Float, device)).to_kind(kind);
            assert_eq!(
                x.smooth_l1_loss(&x.zeros_like(), tch::Reduction::Sum, 1.0)
                    .kind(),
                Kind::Float,
                "smooth_l1_loss is on autocast's float32 list"
            );
            {
                let _inner = AutocastGuard::enter(device, None).unwrap();
                assert!(!autocast_state(device).unwrap().enabled);
                assert_eq!(conv_kind(device), Kind::Float);
            }
            assert!(
                autocast_state(device).unwrap().enabled,
                "inner guard restored"
            );
            assert_eq!(conv_kind(device), kind);
        }
        assert_eq!(
            autocast_state(device).unwrap(),
            before,
            "outer guard restored"
        );
        assert_eq!(conv_kind(device), Kind::Float);
    }
    // The closure form, and an error inside it still closes the region.
    let kind = autocast(device, Some(AutocastDtype::Bf16), || Ok(conv_kind(device))).unwrap();
    assert_eq!(kind, Kind::BFloat16);
    let failed: anyhow::Result<()> = autocast(device, Some(AutocastDtype::Bf16), || {
        anyhow::bail!("inside the region")
    });
    assert!(failed.is_err());
    assert_eq!(autocast_state(device).unwrap(), before);
    assert_eq!(
        autocast(device, None, || Ok(conv_kind(device))).unwrap(),
        Kind::Float
    );
}

#[test]
fn autocast_regions_on_cpu() {
    autocast_regions(Device::Cpu);
}

#[test]
fn autocast_regions_on_cuda() {
    let Some(device) = common::cuda_or_skip("autocast regions on CUDA") else {
        return;
    };
    let _gpu = cuda_lock();
    autocast_regions(device);
    // A CPU region leaves CUDA alone and the other way round.
    let _cpu = AutocastGuard::enter(Device::Cpu, Some(AutocastDtype::Bf16)).unwrap();
    assert_eq!(conv_kind(device), Kind::Float);
    let _cuda = AutocastGuard::enter(device, Some(AutocastDtype::Bf16)).unwrap();
    assert!(autocast_state(Device::Cpu).unwrap().enabled);
    assert_eq!(conv_kind(device), Kind::BFloat16);
}

#[test]
fn autocast_dtype_names_parse() {
    for (name, dtype) in [
        ("bf16", AutocastDtype::Bf16),
        ("bfloat16", AutocastDtype::Bf16),
        ("f16", AutocastDtype::F16),
        ("fp16", AutocastDtype::F16),
    ] {
        assert_eq!(name.parse::<AutocastDtype>().unwrap(), dtype);
    }
    let err = "fp8".parse::<AutocastDtype>().unwrap_err();
    assert!(tchcv::is_bad_input(&err), "{err}");
    assert!(err.to_string().contains("fp8"), "{err}");
}

/// Channels-last strides of `[N, C, H, W]`: `[H*W*C, 1, W*C, C]`.
fn channels_last_strides(size: &[i64]) -> Vec<i64> {
    let (c, h, w) = (size[1], size[2], size[3]);
    vec![h * w * c, 1, w * c, c]
}

fn memory_formats(device: Device) {
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, device));
    assert!(is_memory_format(&x, MemoryFormat::Contiguous).unwrap());
    assert!(!is_memory_format(&x, MemoryFormat::ChannelsLast).unwrap());
    let y = to_memory_format(&x, MemoryFormat::ChannelsLast).unwrap();
    assert_eq!(y.size(), x.size(), "the shape stays NCHW");
    assert_eq!(y.stride(), channels_last_strides(&x.size()));
    assert!(is_memory_format(&y, MemoryFormat::ChannelsLast).unwrap());
    assert!(!y.is_contiguous());
    assert_eq!(common::max_abs_diff(&x, &y), 0.0, "same values");
    let back = to_memory_format(&y, MemoryFormat::Contiguous).unwrap();
    assert_eq!(back.stride(), x.stride());
    assert_eq!(common::max_abs_diff(&x, &back), 0.0);
    // Differentiable: the gradient reaches the input in the input's layout.
    let leaf = Tensor::randn([2, 3, 4, 5], (Kind::Float, device)).set_requires_grad(true);
    let cl = to_memory_format(&leaf, MemoryFormat::ChannelsLast).unwrap();
    (&cl * &cl).sum(Kind::Float).backward();
    common::assert_close("d/dx sum(x^2)", &leaf.grad(), &(&leaf * 2.0), 0.0, 1e-6);
    // Channels-last needs four dimensions.
    let err = to_memory_format(
        &Tensor::zeros([3, 4, 5], (Kind::Float, device)),
        MemoryFormat::ChannelsLast,
    )
    .unwrap_err();
    assert!(tchcv::is_bad_input(&err), "{err}");
    assert!(err.to_string().contains("[3, 4, 5]"), "{err}");
}

#[test]
fn memory_formats_on_cpu() {
    memory_formats(Device::Cpu);
}

#[test]
fn memory_formats_on_cuda() {
    if let Some(device) = common::cuda_or_skip("memory formats on CUDA") {
        let _gpu = cuda_lock();
        memory_formats(device);
    }
}

#[test]
fn convert_variables_changes_4d_variables_in_place() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let conv = tch::nn::conv2d(vs.root() / "conv", 3, 8, 3, Default::default());
    let norm = tch::nn::batch_norm2d(vs.root() / "bn", 8, Default::default());
    let weight = conv.ws.shallow_clone();
    let x = Tensor::randn([2, 3, 10, 10], (Kind::Float, Device::Cpu));
    let before = tch::no_grad(|| x.apply(&conv).apply_t(&norm, false));
    let converted = convert_variables(&vs, MemoryFormat::ChannelsLast).unwrap();
    assert_eq!(converted, 1, "one 4-D variable (the conv weight)");
    assert_eq!(
        weight.stride(),
        channels_last_strides(&weight.size()),
        "a handle taken before sees the new layout"
    );
    assert!(weight.requires_grad(), "still a trainable variable");
    assert_eq!(
        norm.running_mean.stride(),
        vec![1],
        "1-D variables untouched"
    );
    let x_cl = to_memory_format(&x, MemoryFormat::ChannelsLast).unwrap();
    let after = tch::no_grad(|| x_cl.apply(&conv).apply_t(&norm, false));
    assert!(
        is_memory_format(&after, MemoryFormat::ChannelsLast).unwrap(),
        "a channels-last conv gives channels-last activations"
    );
    common::assert_close(
        "conv+bn channels-last vs contiguous",
        &after,
        &before,
        1e-5,
        1e-5,
    );
    assert_eq!(
        convert_variables(&vs, MemoryFormat::ChannelsLast).unwrap(),
        0
    );
    assert_eq!(convert_variables(&vs, MemoryFormat::Contiguous).unwrap(), 1);
    assert!(weight.is_contiguous());
}

/// cuDNN's autotuner flag as libtorch holds it: off by default, then what
/// `set_cudnn_benchmark` set (a process-wide flag: the test puts it back).
#[test]
fn cudnn_benchmark_flag_round_trips() {
    let _lock = cuda_lock();
    let before = tchcv::device::cudnn_benchmark();
    assert!(
        !before,
        "libtorch starts with torch.backends.cudnn.benchmark off"
    );
    for on in [true, false, true] {
        tchcv::device::set_cudnn_benchmark(on);
        assert_eq!(tchcv::device::cudnn_benchmark(), on);
    }
    tchcv::device::set_cudnn_benchmark(before);
}

/// On the CPU the training step's copy is the plain one: the same values, kind and device
/// (on CUDA, `tests/data_loader.rs` copies the loader's pinned batches this way).
#[test]
fn to_device_async_on_cpu_is_a_plain_copy() {
    for t in [
        Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu)),
        Tensor::arange(7, (Kind::Int64, Device::Cpu)),
    ] {
        let out = tchcv::device::to_device_async(&t, Device::Cpu);
        assert_eq!((out.device(), out.kind()), (Device::Cpu, t.kind()));
        assert!(out.equal(&t));
    }
}

#[test]
fn device_memory_is_none_on_cpu() {
    assert_eq!(tchcv::memory::device_memory(Device::Cpu).unwrap(), None);
    tchcv::memory::reset_device_peak(Device::Cpu).unwrap();
}

#[test]
fn cuda_memory_counts_allocations() {
    let Some(device) = common::cuda_or_skip("CUDA allocator counters") else {
        return;
    };
    let _gpu = cuda_lock();
    const MIB: i64 = 1 << 20;
    let warm = Tensor::zeros([1], (Kind::Float, device));
    tchcv::memory::reset_device_peak(device).unwrap();
    let base = tchcv::memory::device_memory(device).unwrap().unwrap();
    assert!(base.allocated >= 4, "{base:?}");
    assert_eq!(base.peak_allocated, base.allocated, "reset: {base:?}");
    let big = Tensor::zeros([64 * MIB / 4], (Kind::Float, device));
    let held = tchcv::memory::device_memory(device).unwrap().unwrap();
    assert!(
        held.allocated >= base.allocated + 64 * MIB,
        "{held:?} after 64 MiB"
    );
    assert!(held.reserved >= held.allocated, "{held:?}");
    drop(big);
    let freed = tchcv::memory::device_memory(device).unwrap().unwrap();
    assert_eq!(freed.allocated, base.allocated, "{freed:?}");
    assert!(
        freed.peak_allocated >= base.allocated + 64 * MIB,
        "{freed:?}"
    );
    assert!((freed.peak_allocated_mib() - freed.peak_allocated as f64 / MIB as f64).abs() < 1e-9);
    tchcv::memory::reset_device_peak(device).unwrap();
    let reset = tchcv::memory::device_memory(device).unwrap().unwrap();
    assert_eq!(reset.peak_allocated, reset.allocated, "{reset:?}");
    drop(warm);
}
