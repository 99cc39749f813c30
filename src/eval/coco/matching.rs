//! Per image and category: detections ranked, IoUs, and the greedy matching at every area range
//! and IoU threshold (pycocotools' `computeIoU` and `evaluateImg`; semantics in [`super`]).

use std::cmp::Ordering;
use std::collections::HashMap;

use super::format::{CocoAnnotation, CocoDetection, CocoGroundTruth};
use super::CocoParams;

/// What a detection counted as at one (area range, IoU threshold).
pub(super) const FP: u8 = 0;
pub(super) const TP: u8 = 1;
pub(super) const IGNORED: u8 = 2;

/// IoU of detection `d` with object `g`, both `[x, y, w, h]` f64, as pycocotools' `bbIou`
/// computes it: a crowd object divides the intersection by the detection's area alone.
pub fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let da = d[2] * d[3];
    let union = if crowd { da } else { da + g[2] * g[3] - inter };
    inter / union
}

/// Annotations and detections grouped by (category, image), both in ascending id order, each
/// group in input order.
pub(super) struct Order {
    /// `(category position, image position, annotation index)`, sorted by the first two.
    gts: Vec<(u32, u32, u32)>,
    /// `(category position, image position, detection index)`, sorted by the first two.
    dets: Vec<(u32, u32, u32)>,
    /// `[K + 1]` where each category starts in `gts`.
    gt_start: Vec<usize>,
    /// `[K + 1]` where each category starts in `dets`.
    det_start: Vec<usize>,
}

/// Id -> position in ascending id order.
fn ranks(ids: impl Iterator<Item = i64>) -> HashMap<i64, u32> {
    let mut sorted: Vec<i64> = ids.collect();
    sorted.sort_unstable();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i as u32))
        .collect()
}

/// Sort `(category, image, index)` keys stably and find where each category starts.
fn group(mut keys: Vec<(u32, u32, u32)>, k_total: usize) -> (Vec<(u32, u32, u32)>, Vec<usize>) {
    keys.sort_by_key(|&(k, i, _)| (k, i));
    let mut start = vec![0; k_total + 1];
    for &(k, _, _) in &keys {
        start[k as usize + 1] += 1;
    }
    for k in 0..k_total {
        start[k + 1] += start[k];
    }
    (keys, start)
}

impl Order {
    /// `gt` and `detections` must have been checked (every id known).
    pub(super) fn new(gt: &CocoGroundTruth, detections: &[CocoDetection]) -> Self {
        let image = ranks(gt.images.iter().map(|i| i.id));
        let category = ranks(gt.categories.iter().map(|c| c.id));
        let k_total = gt.categories.len();
        let key = |c: i64, i: i64, n: usize| (category[&c], image[&i], n as u32);
        let gts = gt
            .annotations
            .iter()
            .enumerate()
            .map(|(n, a)| key(a.category_id, a.image_id, n))
            .collect();
        let dets = detections
            .iter()
            .enumerate()
            .map(|(n, d)| key(d.category_id, d.image_id, n))
            .collect();
        let (gts, gt_start) = group(gts, k_total);
        let (dets, det_start) = group(dets, k_total);
        Self {
            gts,
            dets,
            gt_start,
            det_start,
        }
    }
}

/// One category's ranked detections over all images (image order, then rank), with what each
/// counted as: what the accumulation needs.
#[derive(Debug, Default)]
pub(super) struct CategoryMatches {
    /// `[D]` scores.
    pub scores: Vec<f64>,
    /// `[D]` rank within its image (0 = best).
    pub ranks: Vec<u32>,
    /// `[D, A, T]` [`FP`], [`TP`] or [`IGNORED`].
    pub status: Vec<u8>,
    /// `[A]` objects not ignored in each area range, over all images.
    pub n_positive: Vec<usize>,
    /// Whether any image has an object or a detection of the category.
    pub any: bool,
    /// Objects neither crowd nor ignored; crowd or ignored objects; all detections.
    pub n_gt: usize,
    pub n_ignored: usize,
    pub n_det: usize,
}

/// The matching at every area range and IoU threshold, with buffers kept between images.
pub(super) struct Matcher {
    /// `[T]` thresholds capped at `1 - 1e-10`, as pycocotools caps them.
    thresholds: Vec<f64>,
    /// `[A]` `(min, max)`.
    ranges: Vec<(f64, f64)>,
    max_dets: usize,
    out: CategoryMatches,
    ranked: Vec<u32>,
    ious: Vec<f64>,
    /// Objects in trial order (non-ignored first) and their flags in that order.
    trial: Vec<usize>,
    ignored: Vec<bool>,
    crowd: Vec<bool>,
    taken: Vec<bool>,
}

impl Matcher {
    pub(super) fn new(params: &CocoParams) -> Self {
        Self {
            thresholds: params
                .iou_thresholds
                .iter()
                .map(|&t| t.min(1.0 - 1e-10))
                .collect(),
            ranges: params.area_ranges.iter().map(|a| (a.min, a.max)).collect(),
            max_dets: params.max_detections.last().copied().unwrap_or(0),
            out: CategoryMatches::default(),
            ranked: Vec::new(),
            ious: Vec::new(),
            trial: Vec::new(),
            ignored: Vec::new(),
            crowd: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Match category `k` in every image that has an object or a detection of it.
    pub(super) fn category(
        &mut self,
        order: &Order,
        k: usize,
        gt: &CocoGroundTruth,
        detections: &[CocoDetection],
    ) -> &CategoryMatches {
        let gts = &order.gts[order.gt_start[k]..order.gt_start[k + 1]];
        let dets = &order.dets[order.det_start[k]..order.det_start[k + 1]];
        let out = &mut self.out;
        out.scores.clear();
        out.ranks.clear();
        out.status.clear();
        out.n_positive = vec![0; self.ranges.len()];
        out.any = !gts.is_empty() || !dets.is_empty();
        out.n_det = dets.len();
        out.n_ignored = gts
            .iter()
            .filter(|&&(_, _, n)| flagged(&gt.annotations[n as usize]))
            .count();
        out.n_gt = gts.len() - out.n_ignored;
        let (mut g, mut d) = (0, 0);
        let mut image_gts: Vec<&CocoAnnotation> = Vec::new();
        while g < gts.len() || d < dets.len() {
            let image = gts
                .get(g)
                .map_or(u32::MAX, |x| x.1)
                .min(dets.get(d).map_or(u32::MAX, |x| x.1));
            image_gts.clear();
            while g < gts.len() && gts[g].1 == image {
                image_gts.push(&gt.annotations[gts[g].2 as usize]);
                g += 1;
            }
            let d0 = d;
            while d < dets.len() && dets[d].1 == image {
                d += 1;
            }
            self.image(&image_gts, &dets[d0..d], detections);
        }
        &self.out
    }

    /// One image: rank its detections, compute IoUs, match at every range and threshold, and
    /// append the detections to `self.out`.
    fn image(
        &mut self,
        gts: &[&CocoAnnotation],
        dets: &[(u32, u32, u32)],
        detections: &[CocoDetection],
    ) {
        self.ranked.clear();
        self.ranked.extend(dets.iter().map(|x| x.2));
        // Stable, by score descending (equal scores, +0 and -0 included, keep input order).
        self.ranked.sort_by(|&a, &b| {
            let (a, b) = (detections[a as usize].score, detections[b as usize].score);
            b.partial_cmp(&a).unwrap_or(Ordering::Equal)
        });
        self.ranked.truncate(self.max_dets);
        let (n_d, n_g) = (self.ranked.len(), gts.len());
        self.ious.clear();
        for &r in &self.ranked {
            let bbox = &detections[r as usize].bbox;
            self.ious
                .extend(gts.iter().map(|a| box_iou(bbox, &a.bbox, a.iscrowd)));
        }
        let base = self.out.scores.len();
        for (rank, &r) in self.ranked.iter().enumerate() {
            self.out.scores.push(detections[r as usize].score);
            self.out.ranks.push(rank as u32);
        }
        let stride = self.ranges.len() * self.thresholds.len();
        self.out.status.resize((base + n_d) * stride, FP);
        for a in 0..self.ranges.len() {
            self.order_objects(gts, a);
            self.out.n_positive[a] += self.ignored.iter().filter(|&&i| !i).count();
            for t in 0..self.thresholds.len() {
                self.match_at(a, t, base, n_g, detections);
            }
        }
    }

    /// Objects in trial order for area range `a`: the non-ignored first, each part in input order.
    fn order_objects(&mut self, gts: &[&CocoAnnotation], a: usize) {
        let (lo, hi) = self.ranges[a];
        let ignored = |g: &CocoAnnotation| flagged(g) || g.area() < lo || g.area() > hi;
        self.trial.clear();
        self.trial
            .extend((0..gts.len()).filter(|&g| !ignored(gts[g])));
        self.trial
            .extend((0..gts.len()).filter(|&g| ignored(gts[g])));
        self.ignored.clear();
        self.ignored
            .extend(self.trial.iter().map(|&g| ignored(gts[g])));
        self.crowd.clear();
        self.crowd
            .extend(self.trial.iter().map(|&g| gts[g].iscrowd));
    }

    /// The greedy matching of one image's ranked detections at range `a`, threshold `t`.
    fn match_at(
        &mut self,
        a: usize,
        t: usize,
        base: usize,
        n_g: usize,
        detections: &[CocoDetection],
    ) {
        let (lo, hi) = self.ranges[a];
        let stride = self.ranges.len() * self.thresholds.len();
        self.taken.clear();
        self.taken.resize(n_g, false);
        for (d, &r) in self.ranked.iter().enumerate() {
            let ious = &self.ious[d * n_g..(d + 1) * n_g];
            let mut best = self.thresholds[t];
            let mut found: Option<usize> = None;
            for (p, &g) in self.trial.iter().enumerate() {
                if self.taken[p] && !self.crowd[p] {
                    continue;
                }
                // Holding a non-ignored object: the ignored ones (all after it) cannot replace it.
                if found.is_some_and(|m| !self.ignored[m]) && self.ignored[p] {
                    break;
                }
                if ious[g] < best {
                    continue;
                }
                best = ious[g];
                found = Some(p);
            }
            let status = match found {
                Some(p) => {
                    self.taken[p] = true;
                    if self.ignored[p] {
                        IGNORED
                    } else {
                        TP
                    }
                }
                None => {
                    let area = detections[r as usize].area();
                    if area < lo || area > hi {
                        IGNORED
                    } else {
                        FP
                    }
                }
            };
            self.out.status[(base + d) * stride + a * self.thresholds.len() + t] = status;
        }
    }
}

/// Crowd or ignored whatever its area.
fn flagged(a: &CocoAnnotation) -> bool {
    a.iscrowd || a.ignore
}
