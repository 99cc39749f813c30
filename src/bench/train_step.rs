//! `tchcv bench train-step`: one training step of a detector (forward, loss with hard negative
//! mining, backward, SGD update), tchcv against the same network, the torchcv loss and
//! `torch.optim.SGD` in PyTorch eager (`bench/train_step_reference.py`, which builds the network
//! with the parity reference's modules, `tests/reference/ssd_net.py`), on the same images and
//! targets, the same machine and threads. Also the peak memory of each process (RSS on CPU).

use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::{median_ms, run_reference, Comparison};
use crate::bbox::BoxCoder;
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
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
}

/// Random images and SSD targets: 1-8 random boxes per image, encoded by the spec's coder.
fn batch(spec: &ModelSpec, b: &TrainStepBench, device: Device) -> Result<[Tensor; 3]> {
    let coder = BoxCoder::from_spec(spec)?;
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
    let (loc_targets, cls_targets) = coder.encode_batch(&images)?;
    tch::manual_seed(0);
    let pixels = Tensor::f_randn([b.batch, 3, h, w], (Kind::Float, Device::Cpu))?;
    Ok([
        pixels.to_device(device),
        loc_targets.to_device(device),
        cls_targets.to_device(device),
    ])
}

/// Time tchcv (and the reference) on `device`.
pub fn run(b: &TrainStepBench, device: Device) -> Result<Comparison> {
    let spec = ModelSpec::load(&b.model)?;
    let kind: LossKind = spec.loss.parse()?;
    if kind != LossKind::Ssd {
        crate::bail_input!(
            "{}: bench train-step times the SSD loss; this spec uses {kind:?}",
            b.model.display()
        );
    }
    let [images, loc_targets, cls_targets] = batch(&spec, b, device)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let detector = build(vs.root(), &spec, b.classes)?;
    let params = trainable_params(&vs);
    let parameters: i64 = params.iter().map(|p| p.tensor.numel() as i64).sum();
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), params);
    let loss = kind.build(serde_json::json!({ "check_finite": false }))?;
    let tchcv_ms = median_ms(b.warmup, b.repeat, || {
        let (loc_preds, cls_preds) = detector.forward_t(&images, true)?;
        let inputs = LossInputs {
            loc_preds: &loc_preds,
            loc_targets: &loc_targets,
            cls_preds: &cls_preds,
            cls_targets: &cls_targets,
        };
        let out = loss.forward(&inputs)?;
        optimizer.zero_grad();
        out.total.backward();
        optimizer.step(1e-4);
        crate::device::synchronize(device);
        Ok(())
    })?;
    let tchcv_peak = crate::memory::peak_rss_mib();
    let (pytorch_ms, pytorch_peak) = if b.no_reference {
        (None, None)
    } else {
        let dir = std::env::temp_dir().join(format!("tchcv-bench-step-{}", std::process::id()));
        let case = dir.join("batch.safetensors");
        crate::io::write_safetensors(
            &case,
            &[
                ("images", &images),
                ("loc_targets", &loc_targets),
                ("cls_targets", &cls_targets),
            ],
        )?;
        let args: Vec<String> = [
            "--spec",
            &b.model.display().to_string(),
            "--batch-file",
            &case.display().to_string(),
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
        (Some(ms), report["peak_rss_mib"].as_f64())
    };
    let [w, h] = spec.input_size;
    let mut row = Comparison::new(
        &format!("{} train step", spec.name),
        &format!("N={} {w}x{h} C={}", b.batch, b.classes + 1),
        &crate::device::device_name(device),
        tchcv_ms,
        pytorch_ms,
    );
    row.extra = serde_json::json!({
        "parameters": parameters,
        "tchcv_images_per_s": b.batch as f64 * 1e3 / tchcv_ms,
        "tchcv_peak_rss_mib": tchcv_peak,
        "pytorch_peak_rss_mib": pytorch_peak,
        "threads": tch::get_num_threads(),
    });
    Ok(row)
}
