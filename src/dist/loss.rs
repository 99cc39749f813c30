//! The loss normaliser of a data-parallel step: the positives of the whole global batch.
//!
//! torchcv trains with `nn.DataParallel`: one process, one loss over the whole batch, divided by
//! the batch's positives `D`. With W processes of batch B each, rank r computes the
//! un-normalised parts of its slice ([`DetectionLoss::sums`](crate::loss::DetectionLoss::sums)),
//! and [`global_normalizer`] all-reduces the counts and sums so that every rank divides by the
//! same global `D`:
//!
//! ```text
//! L        = sum_r (loc_sum_r + cls_sum_r) / D,   D = max(min, sum_r num_pos_r)
//! L_r      = (loc_sum_r + cls_sum_r) / D          (rank r's share: sum_r L_r = L)
//! dL/dθ    = sum_r dL_r/dθ                        -> GradReduction::Sum
//! ```
//!
//! So each rank backpropagates its share `L_r` and the gradients are **summed** over ranks
//! ([`GradReduction::Sum`](super::GradReduction::Sum)): the result is the gradient of one
//! process with batch W*B, up to float summation order. (With PyTorch DDP's averaging, the
//! share would have to be multiplied by W; summing avoids that scale.) The loader gives rank r
//! every W-th image of the shuffled order from position r, so the ranks' batches k together
//! hold the images of global batch k of W*B.
//!
//! The RPN loss divides by the sampled anchors instead ([`NormalizeBy::Sampled`]):
//! [`global_normalizer_by`] then takes `D = max(1, sum_r num_sampled_r)`, the global sample.

use anyhow::Result;

use super::ProcessGroup;
use crate::loss::{LossOutput, LossStats, LossSums, Normalization, NormalizeBy};

/// The global batch's counts and loss parts, and the normalisers
/// [`LossSums::finish`] takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalNormalizer {
    /// Positive anchors in the global batch.
    pub num_pos: i64,
    /// Negatives kept by the loss in the global batch.
    pub num_neg: i64,
    /// Anchors not ignored in the global batch.
    pub num_valid: i64,
    /// Smooth-L1 summed over the global batch's positives.
    pub loc_sum: f64,
    /// Classification loss summed over the global batch's kept anchors.
    pub cls_sum: f64,
    /// Whether the classification part is normalised by the valid anchors.
    pub cls_mean: bool,
    /// `D = max(min, num_pos)` of the global batch (`num_valid`, the sample, for
    /// [`NormalizeBy::Sampled`]).
    pub normalizer: f64,
    /// The valid anchors of the global batch (at least 1), for a `mean` classification part.
    pub cls_mean_normalizer: f64,
}

/// All-reduce the counts and sums of this rank's `sums` (one small collective) and compute the
/// global normalisers. `group = None`: a single process, nothing to reduce. A strict loss fails
/// on every rank alike when the *global* batch has no positives.
pub fn global_normalizer(
    group: Option<&ProcessGroup>,
    sums: &LossSums,
    normalization: Normalization,
) -> Result<GlobalNormalizer> {
    global_normalizer_by(group, sums, normalization, NormalizeBy::Positives)
}

/// [`global_normalizer`] with `D` counting what `by` says: the global positives, or the global
/// sampled anchors (`num_valid`) for the RPN loss.
pub fn global_normalizer_by(
    group: Option<&ProcessGroup>,
    sums: &LossSums,
    normalization: Normalization,
    by: NormalizeBy,
) -> Result<GlobalNormalizer> {
    let _no_grad = tch::no_grad_guard();
    let mut values = [
        sums.num_pos as f64,
        sums.num_neg as f64,
        sums.num_valid as f64,
        sums.loc_sum.f_double_value(&[])?,
        sums.cls_sum.f_double_value(&[])?,
    ];
    if let Some(group) = group {
        group.all_reduce_f64(&mut values)?;
    }
    let [num_pos, num_neg, num_valid, loc_sum, cls_sum] = values;
    let num_pos = num_pos.round() as i64;
    let num_valid_count = num_valid.round() as i64;
    Ok(GlobalNormalizer {
        num_pos,
        num_neg: num_neg.round() as i64,
        num_valid: num_valid_count,
        loc_sum,
        cls_sum,
        cls_mean: sums.cls_mean,
        normalizer: normalization.normalizer(by.of(num_pos, num_valid_count))?,
        cls_mean_normalizer: num_valid.max(1.0),
    })
}

impl GlobalNormalizer {
    /// This rank's share of the global loss: its sums divided by the global normalisers.
    pub fn finish(&self, sums: LossSums) -> LossOutput {
        sums.finish(self.normalizer, self.cls_mean_normalizer)
    }

    /// The global batch's loss as torchcv logged it (`loc_per_pos`, `cls_per_pos` are per
    /// global positive): the same numbers on every rank, and those of one process with the
    /// whole batch.
    pub fn stats(&self) -> LossStats {
        let cls_normalizer = if self.cls_mean {
            self.cls_mean_normalizer
        } else {
            self.normalizer
        };
        LossStats {
            total: self.loc_sum / self.normalizer + self.cls_sum / cls_normalizer,
            loc_sum: self.loc_sum,
            cls_sum: self.cls_sum,
            num_pos: self.num_pos,
            num_neg: self.num_neg,
            loc_per_pos: self.loc_sum / self.normalizer,
            cls_per_pos: self.cls_sum / self.normalizer,
            second_stage: None,
        }
    }
}
