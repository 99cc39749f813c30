//! `tchcv bench data`: decode + augment + encode throughput of the loader against a PyTorch
//! pipeline (`bench/data_reference.py`: PIL + torch, torchcv's SSD transforms, a torch
//! `DataLoader` with the same number of workers) on the same images, in the same run.
//!
//! Encoding: tchcv's [`BoxCoder`] for the spec given (SSD300 by default: 8732 default boxes,
//! greedy bipartite matching then IoU >= 0.5, variances 0.1/0.2); the reference runs torchcv's
//! `SSDBoxCoder.encode` for the same layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::Device;

use super::{run_reference, Comparison};
use crate::bbox::BoxCoder;
use crate::data::synth::{write_dataset, SynthConfig};
use crate::data::{Loader, LoaderConfig, ReadOptions, SetSpec, VocDataset};
use crate::spec::ModelSpec;

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct DataBench {
    /// A VOC folder; default: a synthetic one (500x375 JPEGs) written to a temporary folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Sets of --data.
    #[arg(long, default_value = "trainval")]
    pub sets: String,
    /// Images per epoch (the first N of the sets).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// The model spec whose input size and anchors are used.
    #[arg(long, default_value = "models/ssd300.json")]
    pub model: PathBuf,
    /// Worker threads (Rust) and DataLoader workers (Python).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed epochs (median reported), after one warm-up epoch.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
}

/// Milliseconds per image of whole epochs of `loader` (median of `repeat`, after one warm-up).
pub fn time_loader(loader: &Loader, repeat: usize) -> Result<f64> {
    let mut times = Vec::new();
    for epoch in 0..=repeat.max(1) as u64 {
        let start = Instant::now();
        let mut n = 0;
        for batch in loader.epoch(epoch) {
            n += batch?.len();
        }
        if epoch > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The images of `dataset` as the PyTorch references read them: per image
/// `{"path", "boxes": [[x0, y0, x1, y1], ...] (0-based pixels), "labels": [class id, ...]}`,
/// difficult objects left out unless `use_difficult` (as tchcv's training loader).
pub fn reference_images(dataset: &VocDataset, use_difficult: bool) -> Vec<serde_json::Value> {
    dataset
        .records
        .iter()
        .map(|r| {
            let kept: Vec<_> = r
                .objects
                .iter()
                .filter(|o| use_difficult || !o.difficult)
                .collect();
            let boxes: Vec<[f32; 4]> = kept.iter().map(|o| o.pixel_box()).collect();
            let labels: Vec<usize> = kept.iter().map(|o| o.class_id).collect();
            serde_json::json!({ "path": r.image_path, "boxes": boxes, "labels": labels })
        })
        .collect()
}

/// The benchmark's images: `--data`, or synthetic 500x375 images written to `scratch`.
fn benchmark_root(b: &DataBench, scratch: &Path) -> Result<PathBuf> {
    if let Some(d) = &b.data {
        return Ok(d.clone());
    }
    let config = SynthConfig {
        train: b.images,
        test: 0,
        size: (500, 375),
        ..SynthConfig::default()
    };
    write_dataset(scratch, &config).context("writing the synthetic benchmark images")?;
    Ok(scratch.to_path_buf())
}

/// Time the PyTorch pipeline (`bench/reference.py data`) on the same images: ms per image.
fn time_reference(b: &DataBench, dataset: &VocDataset, size: u32, scratch: &Path) -> Result<f64> {
    let list = scratch.join("images.json");
    let items = reference_images(dataset, false);
    crate::io::write_bytes_atomic(&list, serde_json::to_string(&items)?.as_bytes())?;
    let args: Vec<String> = vec![
        "--list".into(),
        list.display().to_string(),
        "--size".into(),
        size.to_string(),
        "--workers".into(),
        b.workers.to_string(),
        "--batch".into(),
        b.batch.to_string(),
        "--repeat".into(),
        b.repeat.to_string(),
    ];
    let report = run_reference("data", &args)?;
    Ok(report["ms_per_image"].as_f64().unwrap_or(f64::NAN))
}

/// Time tchcv (and the PyTorch pipeline on the same images).
pub fn run(b: &DataBench, _device: Device) -> Result<Comparison> {
    let scratch = std::env::temp_dir().join(format!("tchcv-bench-data-{}", std::process::id()));
    let root = benchmark_root(b, &scratch)?;
    let (mut dataset, _) = VocDataset::open(
        &root,
        &SetSpec::parse_list(&b.sets)?,
        &ReadOptions::default(),
    )?;
    dataset.records.truncate(b.images);
    let dataset = Arc::new(dataset);
    let n = dataset.len();
    let spec = ModelSpec::load(&b.model)?;
    let [w, h] = spec.input_size;
    if w != h {
        crate::bail_input!(
            "{}: bench data compares square inputs, got {w}x{h}",
            b.model.display()
        );
    }
    let size = w as u32;
    let config = LoaderConfig {
        batch_size: b.batch,
        workers: b.workers,
        input_size: [size, size],
        ..LoaderConfig::default()
    };
    let loader = Loader::new(
        Arc::clone(&dataset),
        Arc::new(BoxCoder::from_spec(&spec)?),
        config,
    )?;
    let tchcv_ms = time_loader(&loader, b.repeat)?;
    let pytorch_ms = if b.no_reference {
        None
    } else {
        Some(time_reference(b, &dataset, size, &scratch))
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let pytorch_ms = pytorch_ms.transpose()?;
    let mut row = Comparison::new(
        "data decode+augment+encode",
        &format!("{n} imgs -> {size}x{size}, {} workers", b.workers),
        "cpu",
        tchcv_ms,
        pytorch_ms,
    );
    let per_s = |ms: f64| 1e3 / ms;
    row.extra = serde_json::json!({
        "tchcv_images_per_s": per_s(tchcv_ms),
        "pytorch_images_per_s": pytorch_ms.map(per_s),
        "workers": b.workers,
        "cores": std::thread::available_parallelism().map_or(1, |c| c.get()),
        "encoder": format!("tchcv BoxCoder, {} ({} anchors)", spec.name, spec.num_anchors()),
    });
    Ok(row)
}
