//! Negative selection for the SSD loss (torchcv `SSDLoss._hard_negative_mining`).
//!
//! torchcv ranks every anchor with two full sorts (`idx = (-ce).sort(1)`, `rank = idx.sort(1)`)
//! and keeps `rank < 3 * num_pos`. [`top_k_per_row`] selects the same set with one `topk` of
//! the largest per-row `k` and elementwise work: the k-th largest score of each row is a
//! threshold, everything above it is kept, and ties at the threshold go to the lowest anchor
//! indices first, which is exactly what a stable ascending sort of `-ce` does.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which negatives enter the classification loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NegativeMining {
    /// The `k` negatives with the highest cross entropy (OHEM; torchcv, SSD paper).
    #[default]
    Hard,
    /// `k` negatives drawn uniformly at random, seeded. Not Faster R-CNN's RPN sampler (a fixed
    /// 256 anchors per image at up to 1:1, positives subsampled too): the count is the hard
    /// mining's `k`, only the choice is random.
    Random,
    /// Every negative (no mining).
    All,
}

impl std::str::FromStr for NegativeMining {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "hard" => Ok(Self::Hard),
            "random" => Ok(Self::Random),
            "all" => Ok(Self::All),
            _ => Err(crate::error::bad_input(format!(
                "negative mining {s:?}: expected hard, random or all"
            ))),
        }
    }
}

/// Per row, the `k[i]` candidates with the largest score, ties to the lowest index.
///
/// scores: `[N, A]` float; candidates: `[N, A]` bool; k: `[N]` int64 with
/// `0 <= k[i] <= candidates[i].sum()`, and `k_max = max(k)` (0 for N = 0), which the caller
/// reads back with its other counts. Returns a `[N, A]` bool mask with exactly `k[i]` trues in
/// row `i`, all of them candidates. NaN scores rank as the largest (as in `topk` and a
/// descending sort), so the count holds for any scores. Runs without gradient and without
/// waiting for the device.
pub fn top_k_per_row(scores: &Tensor, candidates: &Tensor, k: &Tensor, k_max: i64) -> Tensor {
    let _no_grad = tch::no_grad_guard();
    if k_max == 0 {
        return candidates.zeros_like();
    }
    // NaN compares false with everything, so it would fall out of both `above` and the ties.
    let scores = scores.nan_to_num(f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    let masked = scores.masked_fill(&candidates.logical_not(), f64::NEG_INFINITY);
    let (top, _) = masked.topk(k_max, 1, true, true);
    let k = k.unsqueeze(1);
    // The k-th largest candidate score of each row (row with k = 0: any value, masked below).
    let threshold = top.gather(1, &(&k - 1).clamp_min(0), false);
    let above = masked.gt_tensor(&threshold);
    let n_above = above.sum_dim_intlist(1, true, Kind::Int64);
    let at_threshold = masked.eq_tensor(&threshold).logical_and(candidates);
    let tie_rank = at_threshold.cumsum(1, Kind::Int64);
    let ties_taken = at_threshold.logical_and(&tie_rank.le_tensor(&(&k - n_above)));
    above.logical_or(&ties_taken).logical_and(&k.gt(0))
}
