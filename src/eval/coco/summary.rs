//! The twelve standard numbers (pycocotools' `summarize`), per-class AP, the printed lines and the
//! JSON result.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::CocoEvaluation;

/// numpy's pairwise summation of a contiguous float64 array (what `np.sum` and `np.mean` do):
/// under 8 values a plain loop from 0; up to 128, eight running sums over blocks of eight,
/// combined as `((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`, then the rest; above 128,
/// the two halves (the first a multiple of 8 long) summed so and added.
pub fn pairwise_sum(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 8 {
        return v.iter().fold(0.0, |s, &x| s + x);
    }
    if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&v[..8]);
        let blocks_end = n - n % 8;
        for block in v[8..blocks_end].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[blocks_end..] {
            res += x;
        }
        return res;
    }
    let mut half = n / 2;
    half -= half % 8;
    pairwise_sum(&v[..half]) + pairwise_sum(&v[half..])
}

/// The mean of the values > -1 (numpy's sum, then `/ count`), or -1 when there are none:
/// pycocotools' `np.mean(s[s > -1])`.
pub fn mean_of_defined(values: impl IntoIterator<Item = f64>) -> f64 {
    let defined: Vec<f64> = values.into_iter().filter(|&v| v > -1.0).collect();
    if defined.is_empty() {
        -1.0
    } else {
        pairwise_sum(&defined) / defined.len() as f64
    }
}

/// One of the twelve standard numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoStat {
    /// `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`, `AR100`, `ARs`, `ARm`, `ARl`.
    pub name: String,
    /// The line pycocotools prints for it.
    pub line: String,
    /// In [0, 1]; -1 when undefined (no ground truth).
    pub value: f64,
}

/// One class's AP at area "all" and the largest maxDets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoClassAp {
    pub category_id: i64,
    pub class: String,
    /// AP@[.5:.95]; -1 when the class has no ground truth (neither crowd nor ignored).
    pub ap: f64,
    /// AP at IoU 0.5; -1 as `ap`.
    pub ap50: f64,
    /// AP at IoU 0.75; -1 as `ap`.
    pub ap75: f64,
    /// Objects neither crowd nor ignored.
    pub n_gt: usize,
    /// Crowd regions and ignored objects.
    pub n_ignored: usize,
    /// Detections (before the per-image limit).
    pub n_det: usize,
}

/// A COCO evaluation as `tchcv eval --metric coco` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoEvalResult {
    /// "coco_bbox".
    pub metric: String,
    pub n_images: usize,
    pub n_detections: usize,
    /// The twelve standard numbers, in pycocotools' order.
    pub stats: Vec<CocoStat>,
    /// Per class, in ascending category id order.
    pub classes: Vec<CocoClassAp>,
}

/// `(name, AP?, IoU threshold, area label, index into maxDets)` of the twelve numbers.
const STATS: [(&str, bool, Option<f64>, &str, usize); 12] = [
    ("AP", true, None, "all", 2),
    ("AP50", true, Some(0.5), "all", 2),
    ("AP75", true, Some(0.75), "all", 2),
    ("APs", true, None, "small", 2),
    ("APm", true, None, "medium", 2),
    ("APl", true, None, "large", 2),
    ("AR1", false, None, "all", 0),
    ("AR10", false, None, "all", 1),
    ("AR100", false, None, "all", 2),
    ("ARs", false, None, "small", 2),
    ("ARm", false, None, "medium", 2),
    ("ARl", false, None, "large", 2),
];

impl CocoEvaluation {
    /// Indices of the IoU thresholds to average: all, or those equal to `iou` (exact equality,
    /// as pycocotools' `np.where(iouThr == p.iouThrs)`).
    fn threshold_indices(&self, iou: Option<f64>) -> Vec<usize> {
        let all = &self.params.iou_thresholds;
        (0..all.len())
            .filter(|&t| iou.is_none_or(|v| all[t] == v))
            .collect()
    }

    /// pycocotools' `_summarize`: the mean of the defined precision (`ap`) or recall entries
    /// at IoU `iou` (None: all), area range `area` (a label) and `max_dets`; -1 when none.
    pub fn summarize(&self, ap: bool, iou: Option<f64>, area: &str, max_dets: usize) -> f64 {
        let [_, n_r, n_k, n_a, n_m] = self.dims();
        let a = self.params.area_ranges.iter().position(|r| r.label == area);
        let m = self
            .params
            .max_detections
            .iter()
            .position(|&d| d == max_dets);
        let (Some(a), Some(m)) = (a, m) else {
            return -1.0;
        };
        let ts = self.threshold_indices(iou);
        if ap {
            let at = |t: usize, r: usize, k: usize| {
                self.precision[(((t * n_r + r) * n_k + k) * n_a + a) * n_m + m]
            };
            mean_of_defined(
                ts.iter()
                    .flat_map(|&t| (0..n_r).flat_map(move |r| (0..n_k).map(move |k| at(t, r, k)))),
            )
        } else {
            let at = |t: usize, k: usize| self.recall[((t * n_k + k) * n_a + a) * n_m + m];
            mean_of_defined(ts.iter().flat_map(|&t| (0..n_k).map(move |k| at(t, k))))
        }
    }

    /// The twelve standard numbers with pycocotools' lines.
    pub fn stats(&self) -> Vec<CocoStat> {
        let p = &self.params;
        let max_det = |i: usize| {
            p.max_detections
                .get(i)
                .or(p.max_detections.last())
                .copied()
                .unwrap_or(0)
        };
        STATS
            .iter()
            .map(|&(name, ap, iou, area, m)| {
                // stats[0] asks for maxDets=100 literally; the others for params.maxDets[i].
                let md = if name == "AP" { 100 } else { max_det(m) };
                let value = self.summarize(ap, iou, area, md);
                CocoStat {
                    name: name.to_string(),
                    line: self.line(ap, iou, area, md, value),
                    value,
                }
            })
            .collect()
    }

    /// pycocotools' line `' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'`.
    fn line(&self, ap: bool, iou: Option<f64>, area: &str, max_dets: usize, value: f64) -> String {
        let (title, kind) = if ap {
            ("Average Precision", "(AP)")
        } else {
            ("Average Recall", "(AR)")
        };
        let t = &self.params.iou_thresholds;
        let iou = match iou {
            Some(v) => format!("{v:.2}"),
            None => format!("{:.2}:{:.2}", t[0], t[t.len() - 1]),
        };
        format!(" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {value:.3}")
    }

    /// Per-class AP at area "all" and the largest maxDets (detectron2's recipe): the mean of
    /// the class's defined precision entries over IoU thresholds and recall thresholds.
    pub fn class_aps(&self) -> Vec<CocoClassAp> {
        let [_, n_r, n_k, n_a, n_m] = self.dims();
        let a = self
            .params
            .area_ranges
            .iter()
            .position(|r| r.label == "all")
            .unwrap_or(0);
        let m = n_m - 1;
        let ap = |k: usize, iou: Option<f64>| {
            let at = |t: usize, r: usize| {
                self.precision[(((t * n_r + r) * n_k + k) * n_a + a) * n_m + m]
            };
            mean_of_defined(
                self.threshold_indices(iou)
                    .into_iter()
                    .flat_map(|t| (0..n_r).map(move |r| at(t, r))),
            )
        };
        self.categories
            .iter()
            .enumerate()
            .map(|(k, c)| CocoClassAp {
                category_id: c.id,
                class: c.name.clone(),
                ap: ap(k, None),
                ap50: ap(k, Some(0.5)),
                ap75: ap(k, Some(0.75)),
                n_gt: self.n_gt[k],
                n_ignored: self.n_ignored[k],
                n_det: self.n_det[k],
            })
            .collect()
    }

    /// The reportable result: the twelve numbers and per-class AP.
    pub fn result(&self) -> CocoEvalResult {
        CocoEvalResult {
            metric: "coco_bbox".into(),
            n_images: self.n_images,
            n_detections: self.n_det.iter().sum(),
            stats: self.stats(),
            classes: self.class_aps(),
        }
    }
}

impl CocoEvalResult {
    /// The value of stat `name` (`AP`, `AP50`, ...), if present.
    pub fn stat(&self, name: &str) -> Option<f64> {
        self.stats.iter().find(|s| s.name == name).map(|s| s.value)
    }

    /// The twelve lines as pycocotools prints them, each ending in a newline.
    pub fn lines(&self) -> String {
        self.stats.iter().map(|s| format!("{}\n", s.line)).collect()
    }

    /// A per-class table: AP, AP50, AP75, ground truths (and ignored), detections; `-` for -1.
    pub fn table(&self) -> String {
        let width = self
            .classes
            .iter()
            .map(|c| c.class.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let ap = |v: f64| {
            if v < 0.0 {
                format!("{:>7}", "-")
            } else {
                format!("{v:>7.4}")
            }
        };
        let mut out = format!(
            "{:<width$} {:>7} {:>7} {:>7} {:>13} {:>8} {:>10}\n",
            "class", "AP", "AP50", "AP75", "ground truths", "ignored", "detections"
        );
        for c in &self.classes {
            out += &format!(
                "{:<width$} {} {} {} {:>13} {:>8} {:>10}\n",
                c.class,
                ap(c.ap),
                ap(c.ap50),
                ap(c.ap75),
                c.n_gt,
                c.n_ignored,
                c.n_det
            );
        }
        out
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Write as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::io::write_bytes_atomic(path, self.to_json()?.as_bytes())
    }

    /// Read a result written by [`CocoEvalResult::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            crate::bad_input(format!(
                "{}: not a COCO evaluation result: {e}",
                path.display()
            ))
        })
    }
}
