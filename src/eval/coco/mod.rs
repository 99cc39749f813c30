//! COCO box metrics: what pycocotools' `COCOeval` (iouType `"bbox"`) computes, written from its
//! definition, single-threaded and without Python's per-box overhead.
//!
//! ```text
//! pycocotools COCOeval                              tchcv
//! params: iouThrs linspace(.5, .95, 10),            CocoParams::default (numpy's linspace:
//!   recThrs linspace(0, 1, 101), maxDets 1/10/100,    i * step + start, the last = stop)
//!   areaRng all/small/medium/large
//! _prepare: ignore = iscrowd                        ignored = iscrowd || ignore (see below)
//! computeIoU: dt by -score (mergesort), [:100];     matching::Matcher (stable sort, f64 IoU as
//!   maskUtils.iou, crowd: / detection area            bbIou computes it)
//! evaluateImg: gt ignore-last, greedy per thr       matching::Matcher::image
//! accumulate: concat per image (sorted img ids),    accumulate::Accumulator::category
//!   mergesort -score, cumsum, tp/(tp+fp+eps),
//!   envelope from the right, searchsorted 'left'
//! summarize: mean of precision > -1                 summary: numpy's pairwise sum, / count
//! ```
//!
//! Semantics, precisely (ground truth `G`, detections `D`, per image and category):
//! - Images and categories are taken in ascending id order. A category's detections in one image
//!   are ranked by score, highest first, ties in input order (a stable sort), and only the best
//!   `max(max_detections)` (100) take part; `maxDets` 1 and 10 keep the first 1 and 10 of them.
//!   So the limit is per image *and category*, as in pycocotools.
//! - IoU: `[x, y, w, h]` boxes in f64; intersection `iw * ih` (0 when `iw <= 0` or `ih <= 0`),
//!   divided by `area_d + area_g - inter`, or by `area_d` alone for a crowd region.
//! - Per area range, an object is *ignored* when it is a crowd region, has `ignore` set, or its
//!   area (the annotation's `area`, else `w * h`) is outside `[min, max]` (both inclusive).
//!   Objects are tried with the non-ignored first (stable). Per IoU threshold `t`, each detection
//!   in rank order takes, among objects not taken (crowd regions are never taken), the one of
//!   highest IoU >= t (on equal IoUs the later one), stopping at the ignored objects once it holds
//!   a non-ignored one. Matched to a non-ignored object: true positive. Matched to an ignored one:
//!   ignored. Unmatched: false positive, unless its own area (`w * h`) is outside the range
//!   (then ignored).
//! - Per category, area range and `maxDets`: the detections of all images, ordered by score
//!   (stable: ties in image-id order, then rank), give `recall = tp / n_pos` and
//!   `precision = tp / (tp + fp + 2^-52)` after each one (f64, as numpy), made non-increasing
//!   from the right; the interpolated precision at each recall threshold `r` is the precision at
//!   the first detection whose recall is >= r, 0 when none reaches r. `n_pos` counts the
//!   non-ignored objects. A category without any non-ignored object (or without any object or
//!   detection) has precision and recall -1: undefined, left out of the means.
//! - The twelve numbers are means of the defined (> -1) entries of the precision table (AP) or
//!   recall table (AR), summed as numpy sums (pairwise), so they equal pycocotools' to the bit;
//!   -1 when no entry is defined. Per-class AP is the mean over IoU thresholds and recall
//!   thresholds at area "all", maxDets 100 (detectron2's recipe), -1 for a class without ground
//!   truth.
//!
//! Where tchcv differs from pycocotools on purpose:
//! - An annotation's `ignore` field is honoured (ignored = `iscrowd || ignore`); pycocotools
//!   overwrites it with `iscrowd`. COCO's own files carry no `ignore`, so their numbers are the
//!   same. It is how VOC's `difficult` objects come through ([`from_voc`]).
//! - Matches are kept as flags, not as ids: pycocotools takes a detection matched to a ground
//!   truth of id 0 for unmatched (a false positive); some exporters number annotations from 0.
//! - Bad input (unknown image or category in the results, non-finite numbers, negative box
//!   sides, duplicate ids) is an error naming it; pycocotools asserts on unknown images and
//!   silently drops unknown categories.

mod accumulate;
pub mod dataset;
pub use crate::data::coco::format;
pub mod from_voc;
mod matching;
pub mod summary;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use dataset::{evaluate_detector_voc_coco, CocoView};
pub use format::{
    check_detections, read_coco_results, write_coco_results, CocoAnnotation, CocoCategory,
    CocoDetection, CocoGroundTruth, CocoImage, CocoIndex,
};
pub use from_voc::{
    coco_detections_from_images, coco_detections_from_voc, coco_from_voc, voc_detections_from_coco,
};
pub use matching::box_iou;
pub use summary::{CocoClassAp, CocoEvalResult, CocoStat};

use crate::bail_input;

/// An object-size bin: areas in `[min, max]` pixels², both ends inclusive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaRange {
    pub label: String,
    pub min: f64,
    pub max: f64,
}

/// What the evaluation sweeps over (pycocotools' `Params` for boxes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoParams {
    /// `[T]` ascending IoU thresholds. Default `linspace(0.5, 0.95, 10)`.
    pub iou_thresholds: Vec<f64>,
    /// `[R]` ascending recall thresholds in [0, 1]. Default `linspace(0, 1, 101)`.
    pub recall_thresholds: Vec<f64>,
    /// `[M]` ascending limits on detections per image and category. Default 1, 10, 100.
    pub max_detections: Vec<usize>,
    /// `[A]` default all `[0, 1e10]`, small `[0, 32²]`, medium `[32², 96²]`, large `[96², 1e10]`.
    pub area_ranges: Vec<AreaRange>,
}

/// numpy's `linspace(start, stop, num)`: `i * ((stop - start) / (num - 1)) + start`, the last
/// value set to `stop` (bit for bit what numpy returns).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

impl Default for CocoParams {
    fn default() -> Self {
        let range = |label: &str, min: f64, max: f64| AreaRange {
            label: label.into(),
            min,
            max,
        };
        Self {
            iou_thresholds: linspace(0.5, 0.95, 10),
            recall_thresholds: linspace(0.0, 1.0, 101),
            max_detections: vec![1, 10, 100],
            area_ranges: vec![
                range("all", 0.0, 1e10),
                range("small", 0.0, 1024.0),
                range("medium", 1024.0, 9216.0),
                range("large", 9216.0, 1e10),
            ],
        }
    }
}

fn ascending(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1]) && v.iter().all(|x| x.is_finite())
}

impl CocoParams {
    /// Non-empty, ascending, thresholds in [0, 1]: else a bad-input error naming the field.
    pub fn check(&self) -> Result<()> {
        let unit = |v: &[f64]| v.iter().all(|x| (0.0..=1.0).contains(x));
        if self.iou_thresholds.is_empty()
            || !ascending(&self.iou_thresholds)
            || !unit(&self.iou_thresholds)
        {
            bail_input!(
                "iou_thresholds {:?}: expected ascending values in [0, 1]",
                self.iou_thresholds
            );
        }
        if self.recall_thresholds.is_empty()
            || !ascending(&self.recall_thresholds)
            || !unit(&self.recall_thresholds)
        {
            bail_input!("recall_thresholds: expected ascending values in [0, 1]");
        }
        let m = &self.max_detections;
        if m.is_empty() || m[0] == 0 || m.windows(2).any(|w| w[0] >= w[1]) {
            bail_input!("max_detections {m:?}: expected ascending values > 0");
        }
        if self.area_ranges.is_empty()
            || self
                .area_ranges
                .iter()
                .any(|a| a.min.is_nan() || a.max.is_nan() || a.min > a.max)
        {
            bail_input!("area_ranges: expected at least one, each with min <= max");
        }
        Ok(())
    }

    /// `(T, R, K, A, M)` for `k` categories.
    fn dims(&self, k: usize) -> [usize; 5] {
        [
            self.iou_thresholds.len(),
            self.recall_thresholds.len(),
            k,
            self.area_ranges.len(),
            self.max_detections.len(),
        ]
    }
}

/// The result of [`evaluate`]: pycocotools' `eval['precision']` and `eval['recall']` tables
/// and the counts behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoEvaluation {
    pub params: CocoParams,
    /// Images in the ground truth.
    pub n_images: usize,
    /// `[K]` the categories in ascending id order (the tables' K axis).
    pub categories: Vec<CocoCategory>,
    /// `[K]` objects neither crowd nor ignored.
    pub n_gt: Vec<usize>,
    /// `[K]` crowd regions and ignored objects.
    pub n_ignored: Vec<usize>,
    /// `[K]` detections (all of them, before the per-image limit).
    pub n_det: Vec<usize>,
    /// `[T, R, K, A, M]` row-major: interpolated precision; -1 where undefined.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]` row-major: recall after the last detection; -1 where undefined.
    pub recall: Vec<f64>,
}

impl CocoEvaluation {
    /// `(T, R, K, A, M)`.
    pub fn dims(&self) -> [usize; 5] {
        self.params.dims(self.categories.len())
    }
}

/// Evaluate `detections` against `gt` with pycocotools' box metric (module docs).
///
/// gt: checked here ([`CocoGroundTruth::index`]); detections: any order, each of an image and
/// category of `gt`. Errors (bad input) name the annotation id or the detection's position.
pub fn evaluate(
    gt: &CocoGroundTruth,
    detections: &[CocoDetection],
    params: &CocoParams,
) -> Result<CocoEvaluation> {
    params.check()?;
    let index = gt.index("ground truth")?;
    check_detections(detections, &index, "detections")?;
    let order = matching::Order::new(gt, detections);
    let mut categories: Vec<CocoCategory> = gt.categories.clone();
    categories.sort_by_key(|c| c.id);
    let k_total = categories.len();
    let mut acc = accumulate::Accumulator::new(params, k_total);
    let mut matcher = matching::Matcher::new(params);
    let mut counts = (vec![0; k_total], vec![0; k_total], vec![0; k_total]);
    for k in 0..k_total {
        let matches = matcher.category(&order, k, gt, detections);
        counts.0[k] = matches.n_gt;
        counts.1[k] = matches.n_ignored;
        counts.2[k] = matches.n_det;
        acc.category(k, matches);
    }
    let (precision, recall) = acc.into_tables();
    Ok(CocoEvaluation {
        params: params.clone(),
        n_images: gt.images.len(),
        categories,
        n_gt: counts.0,
        n_ignored: counts.1,
        n_det: counts.2,
        precision,
        recall,
    })
}
