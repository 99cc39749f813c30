//! `tchcv bench model`: one training step's forward and backward through a detector (no loss
//! or optimizer: the gradient of `mean(loc^2) + mean(cls^2)` w.r.t. every trainable tensor),
//! tchcv against the same network in PyTorch (`bench/model_reference.py`, which builds it with
//! the parity reference's modules, `tests/reference/ssd_net.py`), on the same machine and
//! threads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::{median_ms, run_reference, Comparison};
use crate::models::{build, Detector};
use crate::spec::ModelSpec;

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelBench {
    /// The model spec.
    #[arg(long, default_value = "models/ssd_small.json")]
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

/// `mean(loc^2) + mean(cls^2)` and its gradient w.r.t. `params` (nothing accumulated).
fn step(detector: &dyn Detector, images: &Tensor, params: &[Tensor]) -> Result<()> {
    let (loc, cls) = detector.forward_t(images, true)?;
    let loss = loc.f_square()?.f_mean(Kind::Float)? + cls.f_square()?.f_mean(Kind::Float)?;
    Tensor::f_run_backward(&[&loss], params, false, false)?;
    Ok(())
}

/// Time tchcv (and the reference) on `device`.
pub fn run(b: &ModelBench, device: Device) -> Result<Comparison> {
    let spec = ModelSpec::load(&b.model)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let detector = build(vs.root(), &spec, b.classes)?;
    let params = vs.trainable_variables();
    let parameters: i64 = params.iter().map(|t| t.numel() as i64).sum();
    let [w, h] = spec.input_size;
    let images = Tensor::f_randn([b.batch, 3, h, w], (Kind::Float, device))?;
    let tchcv_ms = median_ms(b.warmup, b.repeat, || {
        step(detector.as_ref(), &images, &params)?;
        crate::device::synchronize(device);
        Ok(())
    })?;
    let pytorch_ms = if b.no_reference {
        None
    } else {
        let args: Vec<String> = vec![
            "--spec".into(),
            b.model.display().to_string(),
            "--batch".into(),
            b.batch.to_string(),
            "--classes".into(),
            b.classes.to_string(),
            "--device".into(),
            if device.is_cuda() { "cuda" } else { "cpu" }.into(),
            "--repeat".into(),
            b.repeat.to_string(),
            "--warmup".into(),
            b.warmup.to_string(),
            "--threads".into(),
            tch::get_num_threads().to_string(),
        ];
        let report = run_reference("model_reference.py", &args)?;
        let ms = report["median_ms"]
            .as_f64()
            .context("model_reference.py: no median_ms")?;
        if report["parameters"].as_i64() != Some(parameters) {
            anyhow::bail!(
                "model_reference.py built {} parameters, tchcv {parameters}: not the same network",
                report["parameters"]
            );
        }
        Some(ms)
    };
    let mut row = Comparison::new(
        &format!("{} fwd+bwd (train)", spec.name),
        &format!("N={} {w}x{h} C={}", b.batch, b.classes),
        &crate::device::device_name(device),
        tchcv_ms,
        pytorch_ms,
    );
    row.extra = serde_json::json!({
        "parameters": parameters,
        "tchcv_images_per_s": b.batch as f64 * 1e3 / tchcv_ms,
        "threads": tch::get_num_threads(),
    });
    Ok(row)
}
