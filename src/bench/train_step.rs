//! `tchcv bench train-step`: one training step of a detector (forward, loss with hard negative
//! mining, backward, SGD update), tchcv against the same network, the torchcv loss and
//! `torch.optim.SGD` in PyTorch eager (`bench/train_step_reference.py`, which builds the network
//! with the parity reference's modules, `tests/reference/ssd_net.py`), on the same images and
//! targets, the same machine and threads. Also the peak memory of each process: RSS on the
//! CPU, and on CUDA the caching allocator's peak allocated bytes over the warm-up and timed
//! steps (as `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`), the model, its
//! optimizer state and the batch included.
//!
//! Variants, the same on both sides: `--autocast bf16` runs the forward pass and the loss under
//! autocast (`torch.autocast(device_type, dtype=torch.bfloat16)`; backward and the update
//! outside it), and `--channels-last` lays out the weights and the images channels-last
//! (`model.to(memory_format=torch.channels_last)`), and `--cudnn-benchmark` turns on cuDNN's
//! autotuner (`torch.backends.cudnn.benchmark = True`, as `tchcv train` does on CUDA; off by
//! default on both sides, libtorch's default).

use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::{median_ms, run_reference, Comparison};
use crate::bbox::BoxCoder;
use crate::device::{autocast, convert_variables, to_memory_format, AutocastDtype, MemoryFormat};
use crate::loss::{LossInputs, LossKind};
use crate::models::build;
use crate::rng::Rng;
use crate::spec::ModelSpec;
use crate::train::optim::{trainable_params, Optimizer, OptimizerConfig};

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainStepBench {
    /// The model spec.
    #[arg(long, default_value = "models/ssd300.json")]
    pub model: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    /// Foreground classes.
    #[arg(long, default_value_t = 20)]
    pub classes: i64,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Run the forward pass and the loss under autocast in this dtype (bf16 or f16).
    #[arg(long)]
    pub autocast: Option<AutocastDtype>,
    /// Lay out the weights and the images channels-last (NHWC strides).
    #[arg(long)]
    pub channels_last: bool,
    /// Turn on cuDNN's autotuner (`torch.backends.cudnn.benchmark`); CUDA only.
    #[arg(long)]
    pub cudnn_benchmark: bool,
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
}

impl TrainStepBench {
    pub(super) fn memory_format(&self) -> MemoryFormat {
        MemoryFormat::channels_last_if(self.channels_last)
    }

    /// `""`, `" bf16"`, `" channels-last"`, `" bf16 channels-last"`, each maybe followed by
    /// `" cudnn-benchmark"`.
    fn variant(&self) -> String {
        let mut v = String::new();
        if let Some(dtype) = self.autocast {
            v += &format!(" {dtype}");
        }
        if self.channels_last {
            v += " channels-last";
        }
        if self.cudnn_benchmark {
            v += " cudnn-benchmark";
        }
        v
    }
}

/// Random images and SSD targets: 1-8 random boxes per image, encoded by the spec's coder.
fn batch(spec: &ModelSpec, b: &TrainStepBench, device: Device) -> Result<[Tensor; 3]> {
    let coder = BoxCoder::from_spec(spec)?;
    let (pixels, images) = random_batch(spec, b)?;
    let (loc_targets, cls_targets) = coder.encode_batch(&images)?;
    Ok([
        pixels.to_device(device),
        loc_targets.to_device(device),
        cls_targets.to_device(device),
    ])
}

/// One image's boxes `[K, 4]` (xyxy, model-input pixels) and 0-based labels `[K]`.
pub(super) type ImageObjects = (Vec<[f32; 4]>, Vec<i64>);

/// Random pixels `[N, 3, H, W]` (CPU) and per image 1-8 random boxes (10-60% of each side,
/// model-input pixels) with 0-based labels.
pub(super) fn random_batch(
    spec: &ModelSpec,
    b: &TrainStepBench,
) -> Result<(Tensor, Vec<ImageObjects>)> {
    let [w, h] = spec.input_size;
    let mut rng = Rng::new(7);
    let images: Vec<(Vec<[f32; 4]>, Vec<i64>)> = (0..b.batch)
        .map(|_| {
            let n = 1 + rng.below(8) as usize;
            let boxes = (0..n)
                .map(|_| {
                    let (bw, bh) = (
                        rng.uniform(0.1, 0.6) * w as f64,
                        rng.uniform(0.1, 0.6) * h as f64,
                    );
                    let (x, y) = (
                        rng.uniform(0.0, w as f64 - bw),
                        rng.uniform(0.0, h as f64 - bh),
                    );
                    [x as f32, y as f32, (x + bw) as f32, (y + bh) as f32]
                })
                .collect();
            let labels = (0..n).map(|_| rng.below(b.classes as u64) as i64).collect();
            (boxes, labels)
        })
        .collect();
    tch::manual_seed(0);
    let pixels = Tensor::f_randn([b.batch, 3, h, w], (Kind::Float, Device::Cpu))?;
    Ok((pixels, images))
}

/// Time tchcv (and the reference) on `device`.
pub fn run(b: &TrainStepBench, device: Device) -> Result<Comparison> {
    let spec = ModelSpec::load(&b.model)?;
    if spec.is_two_stage() {
        return super::train_step_rcnn::run(b, &spec, device);
    }
    let kind: LossKind = spec.loss.parse()?;
    if kind != LossKind::Ssd {
        crate::bail_input!(
            "{}: bench train-step times the SSD loss or a Faster R-CNN; this spec uses {kind:?}",
            b.model.display()
        );
    }
    let tensors = batch(&spec, b, device)?;
    let cudnn_before = crate::device::cudnn_benchmark();
    crate::device::set_cudnn_benchmark(b.cudnn_benchmark);
    let row = time_both(b, &spec, kind, device, tensors);
    crate::device::set_cudnn_benchmark(cudnn_before);
    row
}

/// [`run`] once the batch is made and cuDNN's autotuner set.
fn time_both(
    b: &TrainStepBench,
    spec: &ModelSpec,
    kind: LossKind,
    device: Device,
    [images, loc_targets, cls_targets]: [Tensor; 3],
) -> Result<Comparison> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let detector = build(vs.root(), spec, b.classes)?;
    convert_variables(&vs, b.memory_format())?;
    let images_in_format = to_memory_format(&images, b.memory_format())?;
    let params = trainable_params(&vs);
    let parameters: i64 = params.iter().map(|p| p.tensor.numel() as i64).sum();
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), params);
    let loss = kind.build(serde_json::json!({ "check_finite": false }))?;
    crate::memory::reset_device_peak(device)?;
    let tchcv_ms = median_ms(b.warmup, b.repeat, || {
        let total = autocast(device, b.autocast, || {
            let (loc_preds, cls_preds) = detector.forward_t(&images_in_format, true)?;
            let inputs = LossInputs {
                loc_preds: &loc_preds,
                loc_targets: &loc_targets,
                cls_preds: &cls_preds,
                cls_targets: &cls_targets,
            };
            Ok(loss.forward(&inputs)?.total)
        })?;
        optimizer.zero_grad();
        total.backward();
        optimizer.step(1e-4)?;
        crate::device::synchronize(device);
        Ok(())
    })?;
    let case = [
        ("images", &images),
        ("loc_targets", &loc_targets),
        ("cls_targets", &cls_targets),
    ];
    let timed = Timed {
        tchcv_ms,
        parameters,
    };
    compare_with_reference(b, spec, device, timed, &case)
}

/// tchcv's side of a comparison: its median step and its network's parameters.
pub(super) struct Timed {
    pub tchcv_ms: f64,
    pub parameters: i64,
}

/// After tchcv's timed steps: its peak memory, the reference on the batch `case` (named
/// tensors), and the report row.
pub(super) fn compare_with_reference(
    b: &TrainStepBench,
    spec: &ModelSpec,
    device: Device,
    timed: Timed,
    case: &[(&str, &Tensor)],
) -> Result<Comparison> {
    let tchcv_peak = crate::memory::peak_rss_mib();
    let tchcv_device_peak = crate::memory::device_memory(device)?.map(|m| m.peak_allocated_mib());
    let (pytorch_ms, pytorch_report) = reference_step(b, device, case, timed.parameters)?;
    let measured = Measured {
        tchcv_ms: timed.tchcv_ms,
        tchcv_peak,
        tchcv_device_peak,
        parameters: timed.parameters,
        pytorch_ms,
        pytorch_report,
    };
    Ok(comparison_row(b, spec, device, measured))
}

/// What one side-by-side run measured.
struct Measured {
    pub tchcv_ms: f64,
    pub tchcv_peak: Option<f64>,
    pub tchcv_device_peak: Option<f64>,
    pub parameters: i64,
    pub pytorch_ms: Option<f64>,
    pub pytorch_report: Option<serde_json::Value>,
}

/// The report row of a train-step comparison.
fn comparison_row(b: &TrainStepBench, spec: &ModelSpec, device: Device, m: Measured) -> Comparison {
    let [w, h] = spec.input_size;
    let mut row = Comparison::new(
        &format!("{} train step{}", spec.name, b.variant()),
        &format!("N={} {w}x{h} C={}", b.batch, b.classes + 1),
        &crate::device::device_name(device),
        m.tchcv_ms,
        m.pytorch_ms,
    );
    let report = m.pytorch_report.as_ref();
    row.extra = serde_json::json!({
        "parameters": m.parameters,
        "tchcv_images_per_s": b.batch as f64 * 1e3 / m.tchcv_ms,
        "tchcv_peak_rss_mib": m.tchcv_peak,
        "pytorch_peak_rss_mib": report.and_then(|r| r["peak_rss_mib"].as_f64()),
        "tchcv_peak_cuda_allocated_mib": m.tchcv_device_peak,
        "pytorch_peak_cuda_allocated_mib": report
            .and_then(|r| r["peak_cuda_allocated_mib"].as_f64()),
        "autocast": b.autocast.map(|d| d.name()),
        "memory_format": b.memory_format().name(),
        "cudnn_benchmark": b.cudnn_benchmark,
        "threads": tch::get_num_threads(),
    });
    row
}

/// Time the PyTorch reference (`train_step_reference.py`) on the batch `case` (named tensors)
/// unless `--no-reference`; checks it built `parameters` parameters. Returns its median ms and
/// report.
fn reference_step(
    b: &TrainStepBench,
    device: Device,
    case: &[(&str, &Tensor)],
    parameters: i64,
) -> Result<(Option<f64>, Option<serde_json::Value>)> {
    if b.no_reference {
        return Ok((None, None));
    }
    let dir = std::env::temp_dir().join(format!("tchcv-bench-step-{}", std::process::id()));
    let file = dir.join("batch.safetensors");
    crate::io::write_safetensors(&file, case)?;
    let args: Vec<String> = [
        "--spec",
        &b.model.display().to_string(),
        "--batch-file",
        &file.display().to_string(),
        "--classes",
        &b.classes.to_string(),
        "--device",
        if device.is_cuda() { "cuda" } else { "cpu" },
        "--repeat",
        &b.repeat.to_string(),
        "--warmup",
        &b.warmup.to_string(),
        "--threads",
        &tch::get_num_threads().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(b.autocast.map(|d| format!("--autocast={d}")))
    .chain(b.channels_last.then(|| "--channels-last".to_string()))
    .chain(b.cudnn_benchmark.then(|| "--cudnn-benchmark".to_string()))
    .collect();
    let report = run_reference("train-step", &args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let ms = report["median_ms"]
        .as_f64()
        .context("train_step_reference.py: no median_ms")?;
    if report["parameters"].as_i64() != Some(parameters) {
        anyhow::bail!(
            "train_step_reference.py built {} parameters, tchcv {parameters}: not the same network",
            report["parameters"]
        );
    }
    Ok((Some(ms), Some(report)))
}
