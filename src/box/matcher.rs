//! Assigning anchors to ground-truth boxes: torchcv's greedy bipartite matching, the
//! forced-best-prior rule of ssd.pytorch / torchvision, and RetinaNet's max-IoU with an ignore
//! band. Host code over an IoU table, one image at a time.
//!
//! ```text
//! torchcv SSDBoxCoder.encode                          Matcher::Bipartite
//! ious = box_iou(default_boxes, boxes)                IouTable::new(anchors, boxes)
//! while True:                                         loop {
//!   i, j = argmax(masked_ious)                          j = first GT with the largest column max,
//!                                                       i = first anchor holding it
//!   if masked_ious[i,j] < 1e-6: break                   if best < MIN_MATCH_IOU { break }
//!   index[i] = j                                        matched[i] = j
//!   masked_ious[i,:] = 0; masked_ious[:,j] = 0          anchor i taken, GT j done
//! mask = (index<0) & (ious.max(1)[0] >= 0.5)          unmatched anchors with best IoU >= threshold
//! index[mask] = ious[mask].max(1)[1]                  take their best GT (first on ties)
//! ```
//! Ties break as torch's `max(dim)` does: the first index wins.

use crate::spec::{IgnoreBand, MatchingSpec};

use super::ops;

/// An anchor that is neither positive nor ignored.
pub const BACKGROUND: i64 = -1;
/// An anchor in RetinaNet's ignore band.
pub const IGNORED: i64 = -2;
/// A GT whose best IoU is below this owns no anchor through the bipartite, forced or
/// low-quality rules (torchcv's bipartite stop rule `masked_ious[i,j] < 1e-6`).
pub const MIN_MATCH_IOU: f32 = 1e-6;

/// IoU of every ground-truth box with every anchor, GT-major (`values[g * A + a]`), f32.
#[derive(Debug, Clone)]
pub struct IouTable {
    pub num_anchors: usize,
    pub num_gt: usize,
    pub values: Vec<f32>,
}

impl IouTable {
    /// anchors: `[A]` xyxy with their areas; gt: `[G]` xyxy.
    pub fn new(anchors: &[[f32; 4]], anchor_areas: &[f32], gt: &[[f32; 4]]) -> Self {
        let mut values = Vec::with_capacity(anchors.len() * gt.len());
        for g in gt {
            let g_area = ops::area(g);
            values.extend(
                anchors
                    .iter()
                    .zip(anchor_areas)
                    .map(|(a, &a_area)| ops::iou_with_areas(a, a_area, g, g_area)),
            );
        }
        Self {
            num_anchors: anchors.len(),
            num_gt: gt.len(),
            values,
        }
    }

    /// The IoUs of GT `g` with every anchor, `[A]`.
    pub fn column(&self, g: usize) -> &[f32] {
        &self.values[g * self.num_anchors..(g + 1) * self.num_anchors]
    }

    /// Per anchor, the best IoU over GTs and the first GT reaching it (`ious.max(1)`).
    /// Requires at least one GT.
    pub fn best_gt_per_anchor(&self) -> (Vec<f32>, Vec<usize>) {
        let mut best = self.column(0).to_vec();
        let mut arg = vec![0usize; self.num_anchors];
        for g in 1..self.num_gt {
            for ((b, a), &v) in best.iter_mut().zip(arg.iter_mut()).zip(self.column(g)) {
                if v > *b {
                    *b = v;
                    *a = g;
                }
            }
        }
        (best, arg)
    }

    /// The best IoU of GT `g` among anchors not `taken`, and the first anchor reaching it.
    fn best_anchor(&self, g: usize, taken: &[bool]) -> (f32, usize) {
        let mut best = (f32::NEG_INFINITY, 0);
        for (a, (&v, &t)) in self.column(g).iter().zip(taken).enumerate() {
            if !t && v > best.0 {
                best = (v, a);
            }
        }
        best
    }
}

/// A matching rule with its thresholds in f32 (the precision the IoUs are compared in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Matcher {
    Bipartite {
        threshold: f32,
    },
    ForcedBest {
        threshold: f32,
    },
    MaxIou {
        pos_iou: f32,
        neg_iou: f32,
        band: IgnoreBand,
        allow_low_quality: bool,
    },
}

impl Matcher {
    pub fn from_spec(spec: &MatchingSpec) -> Self {
        match *spec {
            MatchingSpec::Bipartite { threshold } => Matcher::Bipartite {
                threshold: threshold as f32,
            },
            MatchingSpec::ForcedBest { threshold } => Matcher::ForcedBest {
                threshold: threshold as f32,
            },
            MatchingSpec::MaxIou {
                pos_iou,
                neg_iou,
                band,
                allow_low_quality,
            } => Matcher::MaxIou {
                pos_iou: pos_iou as f32,
                neg_iou: neg_iou as f32,
                band,
                allow_low_quality,
            },
        }
    }

    /// Per anchor `[A]`: the matched GT index, [`BACKGROUND`] or [`IGNORED`].
    pub fn assign(&self, ious: &IouTable) -> Vec<i64> {
        let mut matched = vec![BACKGROUND; ious.num_anchors];
        if ious.num_gt == 0 {
            return matched;
        }
        let (best_iou, best_gt) = ious.best_gt_per_anchor();
        match *self {
            Matcher::Bipartite { threshold } => {
                bipartite(ious, &mut matched);
                for (a, m) in matched.iter_mut().enumerate() {
                    if *m == BACKGROUND && best_iou[a] >= threshold {
                        *m = best_gt[a] as i64;
                    }
                }
            }
            Matcher::ForcedBest { threshold } => {
                for (a, m) in matched.iter_mut().enumerate() {
                    if best_iou[a] >= threshold {
                        *m = best_gt[a] as i64;
                    }
                }
                let none_taken = vec![false; ious.num_anchors];
                for g in 0..ious.num_gt {
                    let (iou, a) = ious.best_anchor(g, &none_taken);
                    if iou >= MIN_MATCH_IOU {
                        matched[a] = g as i64; // a later GT wins a shared anchor
                    }
                }
            }
            Matcher::MaxIou {
                pos_iou,
                neg_iou,
                band,
                allow_low_quality,
            } => {
                for (a, m) in matched.iter_mut().enumerate() {
                    let v = best_iou[a];
                    let in_band = match band {
                        IgnoreBand::Torchvision => v >= neg_iou,
                        IgnoreBand::Torchcv => v > neg_iou,
                    };
                    *m = if v >= pos_iou {
                        best_gt[a] as i64
                    } else if in_band {
                        IGNORED
                    } else {
                        BACKGROUND
                    };
                }
                if allow_low_quality {
                    low_quality_matches(ious, &best_gt, &mut matched);
                }
            }
        }
        matched
    }
}

/// torchcv's greedy bipartite matching: repeatedly take the largest remaining IoU (first GT,
/// then first anchor, on ties), give that anchor to that GT, and retire both; stop when the
/// largest remaining IoU is below [`MIN_MATCH_IOU`]. Each GT gets at most one anchor.
fn bipartite(ious: &IouTable, matched: &mut [i64]) {
    let mut taken = vec![false; ious.num_anchors];
    let mut done = vec![false; ious.num_gt];
    // Per GT: its best IoU among free anchors and the first anchor holding it.
    let mut column_best: Vec<(f32, usize)> = (0..ious.num_gt)
        .map(|g| ious.best_anchor(g, &taken))
        .collect();
    loop {
        let mut pick: Option<(f32, usize)> = None;
        for (g, &(v, _)) in column_best.iter().enumerate() {
            let v = if done[g] { 0.0 } else { v };
            if pick.is_none_or(|(best, _)| v > best) {
                pick = Some((v, g));
            }
        }
        let Some((_, g)) = pick.filter(|&(v, _)| v >= MIN_MATCH_IOU) else {
            return;
        };
        let a = column_best[g].1;
        matched[a] = g as i64;
        taken[a] = true;
        done[g] = true;
        for other in 0..ious.num_gt {
            if !done[other] && column_best[other].1 == a {
                column_best[other] = ious.best_anchor(other, &taken);
            }
        }
    }
}

/// torchvision's `allow_low_quality_matches`: every anchor tied for a GT's best IoU becomes
/// positive with its own best GT (GTs whose best IoU is below [`MIN_MATCH_IOU`] are skipped).
fn low_quality_matches(ious: &IouTable, best_gt: &[usize], matched: &mut [i64]) {
    for g in 0..ious.num_gt {
        let column = ious.column(g);
        let top = column.iter().copied().fold(0.0f32, f32::max);
        if top < MIN_MATCH_IOU {
            continue;
        }
        for (a, &v) in column.iter().enumerate() {
            if v == top {
                matched[a] = best_gt[a] as i64;
            }
        }
    }
}
