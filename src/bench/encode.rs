//! `tchcv bench encode`: encoding a batch of ground-truth sets into SSD targets, tchcv's
//! encoder against the torchcv-style per-image PyTorch encode (`bench/encode_reference.py`,
//! which imports `tests/reference/box_coder.py`) on the same boxes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use super::{median_ms, run_reference, Comparison};
use crate::bbox::BoxCoder;
use crate::rng::Rng;
use crate::spec::ModelSpec;

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeBench {
    /// The model spec (models/ssd300.json: 8732 anchors).
    #[arg(long, default_value = "models/ssd300.json")]
    pub model: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Boxes per image: 1 to this many.
    #[arg(long, default_value_t = 20)]
    pub max_boxes: usize,
    /// Seed of the random ground truth.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 10)]
    pub repeat: usize,
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
}

/// Random ground truth: per image 1..=max_boxes boxes of 5-90% of the input side, labels 0..20.
pub fn random_ground_truth(
    spec: &ModelSpec,
    images: usize,
    max_boxes: usize,
    seed: u64,
) -> Vec<(Vec<[f32; 4]>, Vec<i64>)> {
    let (w, h) = (spec.input_width() as f64, spec.input_height() as f64);
    (0..images)
        .map(|i| {
            let mut rng = Rng::keyed(seed, &[i as u64]);
            let n = 1 + rng.below(max_boxes.max(1) as u64) as usize;
            let boxes = (0..n)
                .map(|_| {
                    let (bw, bh) = (rng.uniform(0.05, 0.9) * w, rng.uniform(0.05, 0.9) * h);
                    let (x, y) = (rng.uniform(0.0, w - bw), rng.uniform(0.0, h - bh));
                    [x as f32, y as f32, (x + bw) as f32, (y + bh) as f32]
                })
                .collect();
            let labels = (0..n).map(|_| rng.below(20) as i64).collect();
            (boxes, labels)
        })
        .collect()
}

/// The spec path as given, or under the crate's source tree.
fn resolve(path: &Path) -> PathBuf {
    if path.is_relative() && !path.exists() {
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if beside.exists() {
            return beside;
        }
    }
    path.to_path_buf()
}

/// Time tchcv's `encode_batch` (and the reference's per-image encode on the same boxes).
/// Encoding is host work, so `device` only names the row.
pub fn run(b: &EncodeBench, device: Device) -> Result<Comparison> {
    let model = resolve(&b.model);
    let spec = ModelSpec::load(&model)?;
    let coder = BoxCoder::from_spec(&spec)?;
    let images = random_ground_truth(&spec, b.images, b.max_boxes, b.seed);
    let num_boxes: usize = images.iter().map(|(bx, _)| bx.len()).sum();
    let tchcv_ms = median_ms(2, b.repeat, || coder.encode_batch(&images).map(|_| ()))?;
    let (_, cls) = coder.encode_batch(&images)?;
    let num_pos = cls.gt(0).sum(tch::Kind::Int64).int64_value(&[]);
    let pytorch_ms = if b.no_reference {
        None
    } else {
        let dir = std::env::temp_dir().join(format!("tchcv-bench-encode-{}", std::process::id()));
        let case = dir.join("case.safetensors");
        let flat: Vec<[f32; 4]> = images.iter().flat_map(|(bx, _)| bx.clone()).collect();
        let labels: Vec<i64> = images.iter().flat_map(|(_, l)| l.clone()).collect();
        let counts: Vec<i64> = images.iter().map(|(bx, _)| bx.len() as i64).collect();
        crate::io::write_safetensors(
            &case,
            &[
                ("boxes", &crate::bbox::ops::boxes_tensor(&flat)),
                ("labels", &Tensor::from_slice(&labels)),
                ("counts", &Tensor::from_slice(&counts)),
            ],
        )?;
        let args: Vec<String> = vec![
            "--spec".into(),
            model.display().to_string(),
            "--case".into(),
            case.display().to_string(),
            "--repeat".into(),
            b.repeat.to_string(),
            "--threads".into(),
            tch::get_num_threads().to_string(),
        ];
        let report = run_reference("encode", &args);
        let _ = std::fs::remove_dir_all(&dir);
        let report = report?;
        let ref_pos = report["num_pos"].as_i64().unwrap_or(-1);
        if ref_pos != num_pos {
            bail!("the reference found {ref_pos} positive anchors, tchcv {num_pos}: not the same work");
        }
        Some(report["median_ms"].as_f64().unwrap_or(f64::NAN))
    };
    let size = format!(
        "{} N={} boxes={} A={}",
        spec.name,
        b.images,
        num_boxes,
        coder.num_anchors()
    );
    let mut row = Comparison::new(
        "encode batch (host)",
        &size,
        &crate::device::device_name(device),
        tchcv_ms,
        pytorch_ms,
    );
    row.extra = serde_json::json!({
        "num_pos": num_pos,
        "tchcv_us_per_image": tchcv_ms * 1e3 / b.images.max(1) as f64,
        "tchcv_threads": 1,
        "pytorch_threads": tch::get_num_threads(),
    });
    Ok(row)
}
