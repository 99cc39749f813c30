//! `tchcv bench coco-eval`: COCO box evaluation of synthetic detections (5000 images x 100
//! detections by default), tchcv's evaluator against pycocotools' `COCOeval`
//! (`bench/coco_eval_reference.py`) on the same files, both on one thread. The two sides must
//! agree on the twelve numbers, or the benchmark fails.

use std::path::Path;

use anyhow::{bail, Result};
use tch::Device;

use super::{median_ms, run_reference, Comparison};
use crate::eval::coco::{
    self, CocoAnnotation, CocoCategory, CocoDetection, CocoGroundTruth, CocoImage, CocoParams,
};
use crate::rng::Rng;

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct CocoEvalBench {
    /// Images.
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// Detections per image.
    #[arg(long, default_value_t = 100)]
    pub detections: usize,
    /// Categories (ids with gaps, as COCO's).
    #[arg(long, default_value_t = 80)]
    pub categories: usize,
    /// Seed of the synthetic ground truth and detections.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timed repetitions of tchcv (median reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Timed repetitions of pycocotools (median reported; one takes minutes at full size).
    #[arg(long, default_value_t = 1)]
    pub reference_repeat: usize,
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 480.0;

/// A box of side log-uniform in [4, 400] pixels (every COCO area range), inside the image.
fn random_box(rng: &mut Rng) -> [f64; 4] {
    let side = rng.uniform(4f64.ln(), 400f64.ln()).exp();
    let aspect = rng.uniform(0.5, 2.0);
    let (w, h) = ((side * aspect).min(WIDTH), (side / aspect).min(HEIGHT));
    [
        rng.uniform(0.0, WIDTH - w),
        rng.uniform(0.0, HEIGHT - h),
        w,
        h,
    ]
}

fn jitter(rng: &mut Rng, b: [f64; 4], amount: f64) -> [f64; 4] {
    let mut d = |size: f64| rng.uniform(-amount, amount) * size;
    let (dx, dy, dw, dh) = (d(b[2]), d(b[3]), d(b[2]), d(b[3]));
    [
        b[0] + dx,
        b[1] + dy,
        (b[2] + dw).max(1.0),
        (b[3] + dh).max(1.0),
    ]
}

/// One image: 1 to 14 objects (1% crowd regions), each found once (90%) and again (40%),
/// the rest of the `n_dets` detections false positives, half of them of the image's categories.
fn image(
    rng: &mut Rng,
    image_id: i64,
    n_dets: usize,
    category_ids: &[i64],
    annotations: &mut Vec<CocoAnnotation>,
    dets: &mut Vec<CocoDetection>,
) {
    let start = dets.len();
    let mut present = Vec::new();
    for _ in 0..1 + rng.below(14) {
        let category_id = category_ids[rng.below(category_ids.len() as u64) as usize];
        let bbox = random_box(rng);
        present.push(category_id);
        annotations.push(CocoAnnotation {
            id: annotations.len() as i64 + 1,
            image_id,
            category_id,
            bbox,
            area: Some(bbox[2] * bbox[3] * rng.uniform(0.5, 1.0)),
            iscrowd: rng.chance(0.01),
            ignore: false,
        });
        for (p, amount) in [(0.9, 0.15), (0.4, 0.3)] {
            if rng.chance(p) {
                let bbox = jitter(rng, bbox, amount);
                let score = rng.uniform(0.2, 1.0);
                dets.push(CocoDetection {
                    image_id,
                    category_id,
                    bbox,
                    score,
                });
            }
        }
    }
    dets.truncate(start + n_dets);
    while dets.len() < start + n_dets {
        let category_id = if rng.chance(0.5) {
            present[rng.below(present.len() as u64) as usize]
        } else {
            category_ids[rng.below(category_ids.len() as u64) as usize]
        };
        let (bbox, score) = (random_box(rng), rng.uniform(0.0, 0.6));
        dets.push(CocoDetection {
            image_id,
            category_id,
            bbox,
            score,
        });
    }
}

/// Synthetic COCO ground truth and `n_dets` detections per image (seeded; the same on every
/// machine).
pub fn synthetic(
    n_images: usize,
    n_dets: usize,
    n_categories: usize,
    seed: u64,
) -> (CocoGroundTruth, Vec<CocoDetection>) {
    let category_ids: Vec<i64> = (0..n_categories as i64).map(|c| c + 1 + c / 11).collect();
    let categories = category_ids
        .iter()
        .map(|&id| CocoCategory {
            id,
            name: format!("class{id}"),
        })
        .collect();
    let (mut annotations, mut dets) = (Vec::new(), Vec::new());
    let mut images = Vec::with_capacity(n_images);
    for i in 0..n_images {
        let image_id = 100_000 + 7 * i as i64;
        let mut rng = Rng::keyed(seed, &[i as u64]);
        image(
            &mut rng,
            image_id,
            n_dets,
            &category_ids,
            &mut annotations,
            &mut dets,
        );
        images.push(CocoImage {
            id: image_id,
            file_name: format!("{image_id:012}.jpg"),
            width: Some(WIDTH as u32),
            height: Some(HEIGHT as u32),
        });
    }
    let gt = CocoGroundTruth {
        images,
        annotations,
        categories,
    };
    (gt, dets)
}

/// pycocotools on the same data, through files; returns (median ms, its twelve numbers).
fn reference(
    b: &CocoEvalBench,
    gt: &CocoGroundTruth,
    dets: &[CocoDetection],
) -> Result<(f64, Vec<f64>, String)> {
    let dir = std::env::temp_dir().join(format!("tchcv-bench-coco-{}", std::process::id()));
    let (gt_path, res_path) = (dir.join("instances.json"), dir.join("results.json"));
    gt.write_json(&gt_path)?;
    coco::write_coco_results(&res_path, dets)?;
    let arg = |p: &Path| p.display().to_string();
    let args = vec![
        "--gt".into(),
        arg(&gt_path),
        "--results".into(),
        arg(&res_path),
        "--repeat".into(),
        b.reference_repeat.to_string(),
    ];
    let report = run_reference("coco-eval", &args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let stats = report["stats"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let version = report["pycocotools"].as_str().unwrap_or("?").to_string();
    Ok((
        report["median_ms"].as_f64().unwrap_or(f64::NAN),
        stats,
        version,
    ))
}

/// Time tchcv's COCO evaluation (validation, matching, accumulation and the twelve numbers)
/// and pycocotools' `evaluate(); accumulate(); summarize()` on the same data. Host work on
/// one thread: `device` only names the row.
pub fn run(b: &CocoEvalBench, device: Device) -> Result<Comparison> {
    let (gt, dets) = synthetic(b.images, b.detections, b.categories, b.seed);
    let params = CocoParams::default();
    let evaluate = || -> Result<Vec<f64>> {
        let result = coco::evaluate(&gt, &dets, &params)?.result();
        Ok(result.stats.iter().map(|s| s.value).collect())
    };
    let ours = evaluate()?;
    let tchcv_ms = median_ms(1, b.repeat, || evaluate().map(|_| ()))?;
    let mut extra = serde_json::json!({
        "images": b.images,
        "detections": dets.len(),
        "objects": gt.annotations.len(),
        "categories": b.categories,
        "tchcv_threads": 1,
        "tchcv_stats": ours,
    });
    let mut detail = None;
    let pytorch_ms = if b.no_reference {
        None
    } else {
        let (ms, theirs, version) = reference(b, &gt, &dets)?;
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, t)| (a - t).abs())
            .fold(0.0, f64::max);
        let same = theirs.len() == ours.len()
            && ours.iter().zip(&theirs).all(|(a, t)| (a - t).abs() <= 1e-9);
        if !same {
            bail!(
                "pycocotools gave the twelve numbers {theirs:?}, tchcv {ours:?}: not the same work"
            );
        }
        extra["pycocotools_stats_max_abs_diff"] = diff.into();
        extra["pycocotools"] = version.clone().into();
        extra["pycocotools_threads"] = 1.into();
        detail = Some(format!(
            "reference: pycocotools {version} COCOeval evaluate+accumulate+summarize (files loaded \
             untimed), AP {:.4}; tchcv: validation+matching+tables+summary; same twelve numbers \
             (max |diff| {diff:.1e}); both one thread",
            ours[0]
        ));
        Some(ms)
    };
    let size = format!(
        "{} images x {} dets, {} classes",
        b.images, b.detections, b.categories
    );
    let mut row = Comparison::new(
        "coco eval (bbox, vs pycocotools)",
        &size,
        &crate::device::device_name(device),
        tchcv_ms,
        pytorch_ms,
    );
    row.extra = extra;
    row.detail = detail;
    Ok(row)
}
