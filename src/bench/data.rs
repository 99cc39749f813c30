//! `tchcv bench data`: decode + augment + encode throughput of the loader against a PyTorch
//! pipeline (`bench/data_reference.py`: PIL + torch, torchcv's SSD transforms, a torch
//! `DataLoader` with the same number of workers) on the same images, in the same run.
//!
//! Encoding uses [`StandInSsdEncoder`] on both sides: torchcv's `SSDBoxCoder.encode` (IoU
//! against the 8732 SSD300 default boxes, greedy bipartite matching, then IoU >= 0.5, offsets
//! with variances 0.1/0.2). It stands in for `tchcv::bbox::BoxCoder` until that lands: same
//! per-image cost class, and the only thing to swap is the encoder passed to [`time_loader`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::{run_reference, Comparison};
use crate::data::synth::{write_dataset, SynthConfig};
use crate::data::{Loader, LoaderConfig, ReadOptions, SetSpec, TargetEncoder, VocDataset};

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
    /// Square model input side.
    #[arg(long, default_value_t = 300)]
    pub size: u32,
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

/// torchcv's SSD300 default boxes, xyxy in pixels of a `size` x `size` input: `[8732, 4]`.
pub fn ssd300_default_boxes(size: u32) -> Vec<[f32; 4]> {
    let steps = [8.0f32, 16.0, 32.0, 64.0, 100.0, 300.0];
    let sizes = [30.0f32, 60.0, 111.0, 162.0, 213.0, 264.0, 315.0];
    let ratios: [&[f32]; 6] = [
        &[2.0],
        &[2.0, 3.0],
        &[2.0, 3.0],
        &[2.0, 3.0],
        &[2.0],
        &[2.0],
    ];
    let maps = [38usize, 19, 10, 5, 3, 1];
    let k = size as f32 / 300.0;
    let mut out = Vec::with_capacity(8732);
    for (i, &m) in maps.iter().enumerate() {
        for h in 0..m {
            for w in 0..m {
                let (cx, cy) = ((w as f32 + 0.5) * steps[i], (h as f32 + 0.5) * steps[i]);
                let mut push = |bw: f32, bh: f32| {
                    out.push([
                        (cx - bw / 2.0) * k,
                        (cy - bh / 2.0) * k,
                        (cx + bw / 2.0) * k,
                        (cy + bh / 2.0) * k,
                    ])
                };
                push(sizes[i], sizes[i]);
                let s = (sizes[i] * sizes[i + 1]).sqrt();
                push(s, s);
                for &ar in ratios[i] {
                    push(sizes[i] * ar.sqrt(), sizes[i] / ar.sqrt());
                    push(sizes[i] / ar.sqrt(), sizes[i] * ar.sqrt());
                }
            }
        }
    }
    out
}

/// torchcv's `SSDBoxCoder.encode` on tensors (see the module docs). A benchmark stand-in for
/// the box module's coder.
///
/// `tch::Tensor` is not `Sync`, so the anchors are kept as plain floats (`[A * 4]` xyxy) and
/// become a tensor in each call (a 140 KB copy for SSD300).
pub struct StandInSsdEncoder {
    anchors: Vec<f32>,
}

impl StandInSsdEncoder {
    pub fn new(size: u32) -> Self {
        Self {
            anchors: ssd300_default_boxes(size).concat(),
        }
    }
}

/// `[N, 4]` xyxy -> `(centre [N, 2], size [N, 2])`.
fn centre_size(b: &Tensor) -> (Tensor, Tensor) {
    let lo = b.narrow(1, 0, 2);
    let hi = b.narrow(1, 2, 2);
    ((&lo + &hi) / 2.0, hi - lo)
}

impl TargetEncoder for StandInSsdEncoder {
    fn num_anchors(&self) -> i64 {
        self.anchors.len() as i64 / 4
    }

    fn encode(&self, boxes: &[[f32; 4]], labels: &[i64]) -> Result<(Tensor, Tensor)> {
        let a = self.num_anchors();
        if boxes.is_empty() {
            return Ok((
                Tensor::zeros([a, 4], (Kind::Float, Device::Cpu)),
                Tensor::zeros([a], (Kind::Int64, Device::Cpu)),
            ));
        }
        let anchors = Tensor::from_slice(&self.anchors).view([a, 4]);
        let m = boxes.len() as i64;
        let gt = Tensor::from_slice(&boxes.concat()).view([m, 4]);
        // IoU [A, M].
        let lt = anchors
            .narrow(1, 0, 2)
            .unsqueeze(1)
            .maximum(&gt.narrow(1, 0, 2).unsqueeze(0));
        let rb = anchors
            .narrow(1, 2, 2)
            .unsqueeze(1)
            .minimum(&gt.narrow(1, 2, 2).unsqueeze(0));
        let wh = (rb - lt).clamp_min(0.0);
        let inter = wh.select(2, 0) * wh.select(2, 1);
        let area =
            |t: &Tensor| (t.select(1, 2) - t.select(1, 0)) * (t.select(1, 3) - t.select(1, 1));
        let ious = &inter / (area(&anchors).unsqueeze(1) + area(&gt).unsqueeze(0) - &inter);
        // Greedy bipartite matching, then every anchor with IoU >= 0.5.
        let mut index = vec![-1i64; a as usize];
        let masked = ious.copy();
        for _ in 0..m {
            let flat = masked.argmax(None, false).int64_value(&[]);
            let (i, j) = (flat / m, flat % m);
            if masked.double_value(&[i, j]) < 1e-6 {
                break;
            }
            index[i as usize] = j;
            let _ = masked.get(i).fill_(0.0);
            let _ = masked.select(1, j).fill_(0.0);
        }
        let (best, best_j) = ious.max_dim(1, false);
        let best: Vec<f32> = Vec::try_from(&best)?;
        let best_j: Vec<i64> = Vec::try_from(&best_j)?;
        for i in 0..a as usize {
            if index[i] < 0 && best[i] >= 0.5 {
                index[i] = best_j[i];
            }
        }
        let idx = Tensor::from_slice(&index);
        let matched = gt.index_select(0, &idx.clamp_min(0));
        let (gc, gs) = centre_size(&matched);
        let (ac, asz) = centre_size(&anchors);
        let loc_xy = (gc - &ac) / &asz / 0.1;
        let loc_wh = (gs / &asz).log() / 0.2;
        let loc = Tensor::cat(&[loc_xy, loc_wh], 1);
        let labels = Tensor::from_slice(labels);
        let cls = (labels.index_select(0, &idx.clamp_min(0)) + 1)
            .where_self(&idx.ge(0), &Tensor::from(0i64));
        Ok((loc, cls))
    }
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

/// Time tchcv (and the PyTorch pipeline on the same images).
pub fn run(b: &DataBench, _device: Device) -> Result<Comparison> {
    let scratch = std::env::temp_dir().join(format!("tchcv-bench-data-{}", std::process::id()));
    let root = match &b.data {
        Some(d) => d.clone(),
        None => {
            let config = SynthConfig {
                train: b.images,
                test: 0,
                size: (500, 375),
                ..SynthConfig::default()
            };
            write_dataset(&scratch, &config).context("writing the synthetic benchmark images")?;
            scratch.clone()
        }
    };
    let (mut dataset, _) = VocDataset::open(
        &root,
        &SetSpec::parse_list(&b.sets)?,
        &ReadOptions::default(),
    )?;
    dataset.records.truncate(b.images);
    let dataset = Arc::new(dataset);
    let n = dataset.len();
    let config = LoaderConfig {
        batch_size: b.batch,
        workers: b.workers,
        input_size: [b.size, b.size],
        ..LoaderConfig::default()
    };
    let loader = Loader::new(
        Arc::clone(&dataset),
        Arc::new(StandInSsdEncoder::new(b.size)),
        config,
    )?;
    let tchcv_ms = time_loader(&loader, b.repeat)?;
    let pytorch_ms = if b.no_reference {
        None
    } else {
        let list = scratch.join("images.json");
        let items: Vec<serde_json::Value> = dataset
            .records
            .iter()
            .map(|r| {
                let boxes: Vec<[f32; 4]> = r
                    .objects
                    .iter()
                    .filter(|o| !o.difficult)
                    .map(|o| o.pixel_box())
                    .collect();
                let labels: Vec<usize> = r
                    .objects
                    .iter()
                    .filter(|o| !o.difficult)
                    .map(|o| o.class_id)
                    .collect();
                serde_json::json!({ "path": r.image_path, "boxes": boxes, "labels": labels })
            })
            .collect();
        crate::io::write_bytes_atomic(&list, serde_json::to_string(&items)?.as_bytes())?;
        let args: Vec<String> = vec![
            "--list".into(),
            list.display().to_string(),
            "--size".into(),
            b.size.to_string(),
            "--workers".into(),
            b.workers.to_string(),
            "--batch".into(),
            b.batch.to_string(),
            "--repeat".into(),
            b.repeat.to_string(),
        ];
        let report = run_reference("data_reference.py", &args);
        Some(report?["ms_per_image"].as_f64().unwrap_or(f64::NAN))
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let mut row = Comparison::new(
        "data decode+augment+encode",
        &format!("{n} imgs -> {0}x{0}, {1} workers", b.size, b.workers),
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
        "encoder": "StandInSsdEncoder (torchcv SSDBoxCoder.encode, 8732 anchors)",
    });
    Ok(row)
}
