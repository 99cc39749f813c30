//! PASCAL VOC average precision: the devkit algorithm (`VOCevaldet.m`), as torchcv's
//! `evaluations/voc_eval.py` (a ChainerCV port) computes it.
//!
//! ```text
//! torchcv / ChainerCV voc_eval                        tchcv
//! for each class l:
//!   sort the class's detections by score (desc)       rank_detections (stable: ties keep input order)
//!   pred[:, 2:] += 1; gt[:, 2:] += 1                  Box::iou with legacy_plus_one
//!   gt_index = iou.argmax(1); < thresh -> -1          best_match (first of equal IoUs; TP needs >=)
//!   difficult -> -1, selected -> 0, else 1            Outcome::{Ignored, Fp, Tp}
//!   prec = tp / (tp + fp); rec = tp / n_pos           ClassMatches::{precision, recall}
//! calc_detection_voc_ap(use_07_metric=True)           ap_voc07
//! calc_detection_voc_ap(use_07_metric=False)          ap_area
//! np.nanmean(ap)                                      VocEvalResult::{map_voc07, map_area}
//! ```
//!
//! Semantics, precisely:
//! - A class's detections (over all images) are ranked by score, highest first. **Ties keep the
//!   order of the input** (for results files: the order of the lines), as the devkit's stable
//!   MATLAB `sort` does. ChainerCV's numpy `argsort` leaves tie order unspecified.
//! - Each detection, in rank order, takes the ground-truth object of its class in its image with
//!   the highest IoU (the first one on equal IoUs). With [`Matching::Devkit`] every object is a
//!   candidate, so a detection whose best object is already taken is a duplicate; with
//!   [`Matching::Unmatched`] objects already taken are skipped (a COCO-style greedy rule).
//! - IoU >= `iou_threshold` with a non-difficult object not yet taken: true positive (the object
//!   is taken). With a difficult object: ignored (neither TP nor FP; difficult objects are never
//!   taken). With a taken object: false positive (duplicate). Below the threshold: false positive.
//! - `legacy_plus_one` (default, as the devkit): boxes are inclusive integer pixel ranges, so
//!   widths and heights are `x2 - x1 + 1`. IoU is computed in f64 from the f32 coordinates; a
//!   degenerate union (<= 0, only possible without the +1) gives IoU 0.
//! - `n_gt` counts the non-difficult objects. A class with `n_gt == 0` (no objects, or only
//!   difficult ones) has AP NaN and is left out of the mAP (`np.nanmean`, as torchcv does). A
//!   class with objects but no detections has AP 0.
//! - precision is NaN while nothing has been counted yet (leading ignored detections); both AP
//!   rules read it as 0 (`np.nan_to_num`).
//! - VOC07 11-point: the thresholds are `np.arange(0, 1.1, 0.1)`, i.e. `k * 0.1` in f64, so
//!   the fourth is 0.30000000000000004 and a recall of exactly 3/10 does not reach it.

use std::collections::HashMap;

use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize};

use crate::bail_input;

/// The annotated objects of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub image_id: String,
    /// `[M]` boxes, xyxy in pixels as annotated (VOC: 1-based, inclusive).
    pub boxes: Vec<[f32; 4]>,
    /// `[M]` 0-based class indices into the class names.
    pub labels: Vec<usize>,
    /// `[M]` the VOC `difficult` flags.
    pub difficult: Vec<bool>,
}

/// One scored box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub image_id: String,
    /// 0-based class index into the class names.
    pub class: usize,
    pub score: f32,
    /// xyxy in the pixel frame of the ground truth.
    pub bbox: [f32; 4],
}

/// Which ground-truth object a detection is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Matching {
    /// The VOC devkit and ChainerCV: the object of highest IoU among all of the class's objects
    /// in the image; if it is already taken, the detection is a duplicate (false positive).
    #[default]
    Devkit,
    /// The object of highest IoU among those not yet taken (COCO-style greedy matching).
    Unmatched,
}

/// How detections are scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VocEvalConfig {
    /// A detection is a true positive when its IoU is >= this, in (0, 1]. Default 0.5.
    pub iou_threshold: f64,
    /// Widths and heights are `x2 - x1 + 1` (the devkit's inclusive pixel boxes). Default true.
    pub legacy_plus_one: bool,
    /// Default [`Matching::Devkit`].
    pub matching: Matching,
}

impl Default for VocEvalConfig {
    fn default() -> Self {
        Self {
            iou_threshold: 0.5,
            legacy_plus_one: true,
            matching: Matching::Devkit,
        }
    }
}

/// What a ranked detection counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// True positive.
    Tp,
    /// False positive: no object above the threshold, or a duplicate.
    Fp,
    /// Matched a difficult object: neither TP nor FP.
    Ignored,
}

/// The AP rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// VOC2007 11-point interpolated AP.
    Voc07,
    /// Area under the precision envelope (VOC2010 onwards).
    Area,
}

/// One class's detections in rank order with what each counted as.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMatches {
    /// `[D]` scores, highest first.
    pub scores: Vec<f32>,
    /// `[D]` the outcome of each ranked detection.
    pub outcomes: Vec<Outcome>,
    /// Non-difficult objects of the class.
    pub n_gt: usize,
    /// Difficult objects of the class.
    pub n_difficult: usize,
}

impl ClassMatches {
    /// `[D]` f64: `tp / (tp + fp)` after each ranked detection; NaN while both are 0.
    pub fn precision(&self) -> Vec<f64> {
        self.cumulative()
            .map(|(tp, fp)| tp as f64 / (tp + fp) as f64)
            .collect()
    }

    /// `[D]` f64: `tp / n_gt` after each ranked detection; None when `n_gt == 0`.
    pub fn recall(&self) -> Option<Vec<f64>> {
        if self.n_gt == 0 {
            return None;
        }
        let n_gt = self.n_gt as f64;
        Some(self.cumulative().map(|(tp, _)| tp as f64 / n_gt).collect())
    }

    /// The AP by `metric`; NaN when `n_gt == 0`.
    pub fn ap(&self, metric: Metric) -> f64 {
        match self.recall() {
            None => f64::NAN,
            Some(recall) => {
                let precision = self.precision();
                match metric {
                    Metric::Voc07 => ap_voc07(&precision, &recall),
                    Metric::Area => ap_area(&precision, &recall),
                }
            }
        }
    }

    /// Running (tp, fp) counts.
    fn cumulative(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.outcomes.iter().scan((0, 0), |(tp, fp), outcome| {
            match outcome {
                Outcome::Tp => *tp += 1,
                Outcome::Fp => *fp += 1,
                Outcome::Ignored => {}
            }
            Some((*tp, *fp))
        })
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.iter().filter(|&&o| o == outcome).count()
    }

    /// The corners of the PR curve: every point where recall rises, the point just before it,
    /// and the last point (NaN precisions dropped). Joined by straight segments they draw the
    /// exact curve, in at most `2 * n_gt + 2` points.
    pub fn curve(&self) -> PrCurve {
        let mut curve = PrCurve::default();
        let (Some(recall), precision) = (self.recall(), self.precision()) else {
            return curve;
        };
        let n = self.outcomes.len();
        let rises = |i: usize| self.outcomes.get(i) == Some(&Outcome::Tp);
        for i in 0..n {
            let keep = i == 0 || i + 1 == n || rises(i) || rises(i + 1);
            if keep && precision[i].is_finite() {
                curve.recall.push(recall[i]);
                curve.precision.push(precision[i]);
            }
        }
        curve
    }
}

/// The VOC2007 11-point AP: the mean over `t` in {0, 0.1, ..., 1} of the highest precision at
/// recall >= t (0 where no recall reaches t). NaN precision counts as 0.
///
/// precision, recall: `[D]` f64, in rank order.
pub fn ap_voc07(precision: &[f64], recall: &[f64]) -> f64 {
    let mut ap = 0.0;
    for k in 0..11 {
        let t = k as f64 * 0.1;
        let p = precision
            .iter()
            .zip(recall)
            .filter(|(_, &r)| r >= t)
            .map(|(&p, _)| nan_to_zero(p))
            .fold(0.0, f64::max);
        ap += p / 11.0;
    }
    ap
}

/// The area under the precision envelope: with `mrec = [0, recall, 1]` and
/// `mpre = [0, precision, 0]` made non-increasing from the right, the sum over recall steps of
/// `(mrec[i+1] - mrec[i]) * mpre[i+1]`. NaN precision counts as 0.
///
/// precision, recall: `[D]` f64, in rank order.
pub fn ap_area(precision: &[f64], recall: &[f64]) -> f64 {
    let mut mpre: Vec<f64> = std::iter::once(0.0)
        .chain(precision.iter().map(|&p| nan_to_zero(p)))
        .chain(std::iter::once(0.0))
        .collect();
    let mrec: Vec<f64> = std::iter::once(0.0)
        .chain(recall.iter().copied())
        .chain(std::iter::once(1.0))
        .collect();
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (0..mrec.len() - 1)
        .filter(|&i| mrec[i + 1] != mrec[i])
        .map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1])
        .sum()
}

fn nan_to_zero(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x
    }
}

/// IoU of two xyxy boxes in f64; `one` is 1 for the legacy inclusive-pixel convention, else 0.
/// The +1 is added to x2, y2 first (as ChainerCV does), and a union <= 0 gives 0.
pub fn box_iou(a: [f32; 4], b: [f32; 4], one: f64) -> f64 {
    let [ax1, ay1, ax2, ay2] = a.map(f64::from);
    let [bx1, by1, bx2, by2] = b.map(f64::from);
    let (ax2, ay2, bx2, by2) = (ax2 + one, ay2 + one, bx2 + one, by2 + one);
    let iw = ax2.min(bx2) - ax1.max(bx1);
    let ih = ay2.min(by2) - ay1.max(by1);
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let inter = iw * ih;
    let union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Ground truth checked and indexed by image id.
struct GroundTruthIndex<'a> {
    by_image: HashMap<&'a str, usize>,
    /// `[class][image]` the object indices of that class in that image.
    objects: Vec<Vec<Vec<usize>>>,
}

fn check_box(b: &[f32; 4], what: impl FnOnce() -> String) -> Result<()> {
    if b.iter().any(|v| !v.is_finite()) {
        bail_input!("{}: box {b:?} has a non-finite coordinate", what());
    }
    Ok(())
}

impl<'a> GroundTruthIndex<'a> {
    fn new(n_classes: usize, ground_truth: &'a [GroundTruth]) -> Result<Self> {
        let mut by_image = HashMap::with_capacity(ground_truth.len());
        let mut objects = vec![vec![Vec::new(); ground_truth.len()]; n_classes];
        for (i, gt) in ground_truth.iter().enumerate() {
            let id = gt.image_id.as_str();
            if by_image.insert(id, i).is_some() {
                bail_input!("ground truth: image {id:?} appears more than once");
            }
            let m = gt.boxes.len();
            if gt.labels.len() != m || gt.difficult.len() != m {
                bail_input!(
                    "ground truth of image {id:?}: {m} boxes but {} labels and {} difficult flags",
                    gt.labels.len(),
                    gt.difficult.len()
                );
            }
            for (j, (b, &label)) in gt.boxes.iter().zip(&gt.labels).enumerate() {
                if label >= n_classes {
                    bail_input!(
                        "ground truth of image {id:?}, object {j}: label {label} out of range \
                         for {n_classes} classes"
                    );
                }
                check_box(b, || format!("ground truth of image {id:?}, object {j}"))?;
                if b[2] < b[0] || b[3] < b[1] {
                    bail_input!(
                        "ground truth of image {id:?}, object {j}: box {b:?} has x2 < x1 or y2 < y1"
                    );
                }
                objects[label][i].push(j);
            }
        }
        Ok(Self { by_image, objects })
    }
}

/// Detection indices per class, each ranked by score (highest first, ties in input order).
fn rank_detections(
    class_names: &[String],
    index: &GroundTruthIndex,
    detections: &[Detection],
) -> Result<Vec<Vec<usize>>> {
    let mut per_class = vec![Vec::new(); class_names.len()];
    for (k, d) in detections.iter().enumerate() {
        if d.class >= class_names.len() {
            bail_input!(
                "detection {k} (image {:?}): class {} out of range for {} classes",
                d.image_id,
                d.class,
                class_names.len()
            );
        }
        let name = &class_names[d.class];
        if !index.by_image.contains_key(d.image_id.as_str()) {
            bail_input!(
                "detection {k} ({name}): image {:?} is not in the ground truth (wrong image set?)",
                d.image_id
            );
        }
        if !d.score.is_finite() {
            bail_input!(
                "detection {k} ({name}, image {:?}): score {} is not finite",
                d.image_id,
                d.score
            );
        }
        check_box(&d.bbox, || {
            format!("detection {k} ({name}, image {:?})", d.image_id)
        })?;
        per_class[d.class].push(k);
    }
    for ranked in &mut per_class {
        // Stable: equal scores keep their input order.
        ranked.sort_by(|&a, &b| {
            detections[b]
                .score
                .partial_cmp(&detections[a].score)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    Ok(per_class)
}

/// Match every class's detections to the ground truth (see the module docs).
///
/// class_names: `[C]`; ground_truth: one entry per image of the set (images without objects
/// count too); detections: any order, every `image_id` must be in the ground truth.
/// Returns `[C]` matches.
pub fn match_detections(
    class_names: &[String],
    ground_truth: &[GroundTruth],
    detections: &[Detection],
    config: &VocEvalConfig,
) -> Result<Vec<ClassMatches>> {
    if !(config.iou_threshold > 0.0 && config.iou_threshold <= 1.0) {
        bail_input!(
            "iou threshold {}: expected a value in (0, 1]",
            config.iou_threshold
        );
    }
    let index = GroundTruthIndex::new(class_names.len(), ground_truth)?;
    let ranked = rank_detections(class_names, &index, detections)?;
    let one = if config.legacy_plus_one { 1.0 } else { 0.0 };
    let matches = ranked
        .iter()
        .enumerate()
        .map(|(class, order)| {
            let objects = &index.objects[class];
            let mut taken: Vec<Vec<bool>> = objects.iter().map(|o| vec![false; o.len()]).collect();
            let mut n_gt = 0;
            let mut n_difficult = 0;
            for (image, objs) in objects.iter().enumerate() {
                for &j in objs {
                    if ground_truth[image].difficult[j] {
                        n_difficult += 1;
                    } else {
                        n_gt += 1;
                    }
                }
            }
            let mut scores = Vec::with_capacity(order.len());
            let mut outcomes = Vec::with_capacity(order.len());
            for &k in order {
                let d = &detections[k];
                let image = index.by_image[d.image_id.as_str()];
                let gt = &ground_truth[image];
                let taken = &mut taken[image];
                let mut best: Option<(usize, f64)> = None;
                for (slot, &j) in objects[image].iter().enumerate() {
                    let candidate = match config.matching {
                        Matching::Devkit => true,
                        Matching::Unmatched => !taken[slot] || gt.difficult[j],
                    };
                    if !candidate {
                        continue;
                    }
                    let iou = box_iou(d.bbox, gt.boxes[j], one);
                    if best.is_none_or(|(_, b)| iou > b) {
                        best = Some((slot, iou));
                    }
                }
                let outcome = match best {
                    Some((slot, iou)) if iou >= config.iou_threshold => {
                        if gt.difficult[objects[image][slot]] {
                            Outcome::Ignored
                        } else if taken[slot] {
                            Outcome::Fp
                        } else {
                            taken[slot] = true;
                            Outcome::Tp
                        }
                    }
                    _ => Outcome::Fp,
                };
                scores.push(d.score);
                outcomes.push(outcome);
            }
            ClassMatches {
                scores,
                outcomes,
                n_gt,
                n_difficult,
            }
        })
        .collect();
    Ok(matches)
}

/// A precision-recall curve: `[P]` points in rank order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrCurve {
    pub recall: Vec<f64>,
    pub precision: Vec<f64>,
}

/// One class's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    pub class: String,
    /// VOC07 11-point AP; NaN (JSON null) when the class has no non-difficult object.
    #[serde(deserialize_with = "nan_from_null")]
    pub ap_voc07: f64,
    /// Area AP; NaN (JSON null) when the class has no non-difficult object.
    #[serde(deserialize_with = "nan_from_null")]
    pub ap_area: f64,
    /// Non-difficult objects.
    pub n_gt: usize,
    /// Difficult objects (ignored).
    pub n_difficult: usize,
    /// Detections of the class.
    pub n_det: usize,
    /// True positives among them.
    pub n_tp: usize,
    /// Detections that matched a difficult object.
    pub n_ignored: usize,
    /// The PR curve's corners ([`ClassMatches::curve`]), for plots.
    pub curve: PrCurve,
}

/// A VOC evaluation: per-class AP by both rules, and their means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocEvalResult {
    pub config: VocEvalConfig,
    /// Images in the ground truth.
    pub n_images: usize,
    pub classes: Vec<ClassAp>,
    /// Mean VOC07 AP over the classes whose AP is not NaN (NaN if none).
    #[serde(deserialize_with = "nan_from_null")]
    pub map_voc07: f64,
    /// Mean area AP over the classes whose AP is not NaN (NaN if none).
    #[serde(deserialize_with = "nan_from_null")]
    pub map_area: f64,
}

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
fn nan_from_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The mean of the values that are not NaN (`np.nanmean`); NaN when all are.
pub fn nan_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Evaluate detections against ground truth: per-class AP by both rules and the mAPs.
///
/// class_names: `[C]`; ground_truth: one entry per image of the set; detections: any order.
/// Errors (bad input) name the offending image, object or detection.
pub fn evaluate(
    class_names: &[String],
    ground_truth: &[GroundTruth],
    detections: &[Detection],
    config: &VocEvalConfig,
) -> Result<VocEvalResult> {
    let matches = match_detections(class_names, ground_truth, detections, config)?;
    let classes: Vec<ClassAp> = class_names
        .iter()
        .zip(&matches)
        .map(|(name, m)| ClassAp {
            class: name.clone(),
            ap_voc07: m.ap(Metric::Voc07),
            ap_area: m.ap(Metric::Area),
            n_gt: m.n_gt,
            n_difficult: m.n_difficult,
            n_det: m.outcomes.len(),
            n_tp: m.count(Outcome::Tp),
            n_ignored: m.count(Outcome::Ignored),
            curve: m.curve(),
        })
        .collect();
    Ok(VocEvalResult {
        config: *config,
        n_images: ground_truth.len(),
        map_voc07: nan_mean(classes.iter().map(|c| c.ap_voc07)),
        map_area: nan_mean(classes.iter().map(|c| c.ap_area)),
        classes,
    })
}

impl ClassAp {
    /// The AP by `metric`.
    pub fn ap(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Voc07 => self.ap_voc07,
            Metric::Area => self.ap_area,
        }
    }
}

impl VocEvalResult {
    /// The mAP by `metric`.
    pub fn map(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Voc07 => self.map_voc07,
            Metric::Area => self.map_area,
        }
    }

    /// A per-class table (class, AP by each of `metrics`, ground truths, detections) ending
    /// with the mAP row. NaN APs print as `-`.
    pub fn table(&self, metrics: &[Metric]) -> String {
        let width = self
            .classes
            .iter()
            .map(|c| c.class.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let heading = |m: &Metric| match m {
            Metric::Voc07 => "AP voc07",
            Metric::Area => "AP area",
        };
        let ap = |v: f64| {
            if v.is_nan() {
                format!("{:>9}", "-")
            } else {
                format!("{v:>9.4}")
            }
        };
        let mut out = format!("{:<width$}", "class");
        for m in metrics {
            out += &format!(" {:>9}", heading(m));
        }
        out += &format!(" {:>13} {:>10}\n", "ground truths", "detections");
        for c in &self.classes {
            out += &format!("{:<width$}", c.class);
            for m in metrics {
                out += &format!(" {}", ap(c.ap(*m)));
            }
            out += &format!(" {:>13} {:>10}\n", c.n_gt, c.n_det);
        }
        out += &format!("{:<width$}", "mAP");
        for m in metrics {
            out += &format!(" {}", ap(self.map(*m)));
        }
        let n_gt: usize = self.classes.iter().map(|c| c.n_gt).sum();
        let n_det: usize = self.classes.iter().map(|c| c.n_det).sum();
        out += &format!(" {n_gt:>13} {n_det:>10}\n");
        out
    }

    /// Pretty JSON (NaN written as null).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Write as pretty JSON, atomically.
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        crate::io::write_bytes_atomic(path, self.to_json()?.as_bytes())
    }

    /// Read a result written by [`VocEvalResult::write_json`].
    pub fn read_json(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            crate::bad_input(format!(
                "{}: not a VOC evaluation result: {e}",
                path.display()
            ))
        })
    }
}
