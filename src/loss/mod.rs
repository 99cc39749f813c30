//! Detection losses: torchcv's `loss/` on `tch::Tensor`.
//!
//! | torchcv | here |
//! |---|---|
//! | `loss/ssd_loss.py` `SSDLoss` | [`SsdLoss`] (mining in [`mining`]) |
//! | `loss/focal_loss.py` `FocalLoss` | [`FocalLoss`] (sigmoid, fvcore semantics) |
//! | softmax focal loss (Faster R-CNN heads) | [`SoftmaxFocalLoss`] |
//! | torchvision `RegionProposalNetwork.compute_loss` | [`RpnLoss`]; with the sampler, [`SampledRpnLoss`] |
//! | torchvision `roi_heads.fastrcnn_loss` (and focal, OHEM's per-RoI loss) | [`RcnnLoss`] |
//!
//! Every loss takes the same four tensors ([`LossInputs`]) and returns a [`LossOutput`]: the
//! differentiable `total` plus the summed parts and counts that torchcv only printed. The
//! normaliser is the batch-total number of positives, `D = max(normalizer_min, num_pos)` (for
//! the RPN loss the sampled anchors, [`NormalizeBy`]); a loss in `strict` mode returns an error
//! where torchcv would have crashed (no positives).
//!
//! Losses are pure tensor code: they know nothing of files, datasets or networks.

mod focal;
mod inputs;
pub mod mining;
mod rcnn;
mod rpn;
mod softmax_focal;
mod ssd;

pub use focal::{focal_sum, sigmoid_focal_loss, FocalLoss, FocalLossConfig};
pub use inputs::LossInputs;
pub use mining::NegativeMining;
pub use rcnn::{own_class_deltas, RcnnClsLoss, RcnnLoss, RcnnLossConfig, RcnnLossInputs};
pub use rpn::{RpnLoss, RpnLossConfig, RpnLossInputs, SampledRpnLoss, SampledRpnLossConfig};
pub use softmax_focal::{
    class_weights_from_histogram, BackgroundWeight, ClassWeighting, ClsReduction, SoftmaxFocalLoss,
    SoftmaxFocalLossConfig,
};
pub use ssd::{SsdLoss, SsdLossConfig};

use anyhow::Result;
use serde::Serialize;
use tch::{Kind, Reduction, Tensor};

/// The label that marks an anchor to be ignored (neither positive nor negative).
pub const IGNORE_LABEL: i64 = -1;

/// A detection loss over dense anchors.
pub trait DetectionLoss: std::fmt::Debug {
    /// The un-normalised parts of the loss (what a distributed run all-reduces).
    fn sums(&self, inputs: &LossInputs) -> Result<LossSums>;

    /// Normalise the parts by this batch's own positives (or sampled anchors, per
    /// [`Self::normalize_by`]; or fail in strict mode).
    fn forward(&self, inputs: &LossInputs) -> Result<LossOutput> {
        let sums = self.sums(inputs)?;
        let count = self.normalize_by().count(&sums);
        let normalizer = self.normalization().normalizer(count)?;
        let valid = sums.num_valid.max(1) as f64;
        Ok(sums.finish(normalizer, valid))
    }

    /// How the count ([`Self::normalize_by`]) becomes the normaliser.
    fn normalization(&self) -> Normalization;

    /// What the normaliser counts: the positives (the SSD and focal losses), or the sampled
    /// anchors (the RPN loss).
    fn normalize_by(&self) -> NormalizeBy {
        NormalizeBy::Positives
    }

    /// Continue any random stream (random negative mining) as if `calls` calls had been made:
    /// a resumed run draws what an uninterrupted one would have.
    fn set_calls(&self, _calls: u64) {}
}

/// What a loss's normaliser counts in the batch (in a distributed run, the global batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormalizeBy {
    /// `num_pos`: torchcv's `/ num_pos`.
    #[default]
    Positives,
    /// `num_valid`, which the RPN loss sets to the sampled anchors: torchvision's
    /// `/ sampled_inds.numel()`.
    Sampled,
}

impl NormalizeBy {
    /// The count of `sums` this normaliser divides by.
    pub fn count(self, sums: &LossSums) -> i64 {
        self.of(sums.num_pos, sums.num_valid)
    }

    /// The count among `num_pos` and `num_valid`.
    pub fn of(self, num_pos: i64, num_valid: i64) -> i64 {
        match self {
            Self::Positives => num_pos,
            Self::Sampled => num_valid,
        }
    }
}

/// How the batch-total positive (or sampled) count becomes the loss normaliser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// `D = max(min, num_pos)`. torchcv divides by `num_pos` itself (min 1 keeps it when > 0).
    pub min: f64,
    /// Fail on a batch without positives, as torchcv does (`ZeroDivisionError`).
    pub strict: bool,
}

impl Normalization {
    /// The normaliser for `num_pos` positives.
    pub fn normalizer(&self, num_pos: i64) -> Result<f64> {
        if self.strict && num_pos == 0 {
            crate::bail_input!(
                "strict (torchcv) mode: the batch has no positive anchors, so the loss \
                 would divide by zero (cls_targets has no label > 0)"
            );
        }
        Ok((num_pos as f64).max(self.min))
    }
}

/// Un-normalised loss parts of one batch.
#[derive(Debug)]
pub struct LossSums {
    /// Smooth-L1 summed over positive anchors, scalar f32 (differentiable).
    pub loc_sum: Tensor,
    /// Classification loss summed over the anchors the loss keeps, scalar f32 (differentiable).
    pub cls_sum: Tensor,
    /// Positive anchors in the batch.
    pub num_pos: i64,
    /// Negative anchors that entered the classification loss.
    pub num_neg: i64,
    /// Anchors that are not ignored (label != -1).
    pub num_valid: i64,
    /// Whether `cls_sum` is normalised by the valid anchors (`mean`) instead of by `D`.
    pub cls_mean: bool,
    /// The negatives kept by mining, `[N, A]` bool (SSD loss only).
    pub neg_mask: Option<Tensor>,
}

impl LossSums {
    /// The parts of an empty batch (a distributed rank whose images were all unreadable still
    /// takes part in the step's collectives with these).
    pub fn zero(device: tch::Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self {
            loc_sum: zero(),
            cls_sum: zero(),
            num_pos: 0,
            num_neg: 0,
            num_valid: 0,
            cls_mean: false,
            neg_mask: None,
        }
    }

    /// Divide by `normalizer` (`D`, usually the batch positives) and, for a `mean` classification
    /// reduction, the classification part by `cls_mean_normalizer` (the valid anchors).
    pub fn finish(self, normalizer: f64, cls_mean_normalizer: f64) -> LossOutput {
        let cls_normalizer = if self.cls_mean {
            cls_mean_normalizer
        } else {
            normalizer
        };
        let total = &self.loc_sum / normalizer + &self.cls_sum / cls_normalizer;
        LossOutput {
            total,
            loc_sum: self.loc_sum,
            cls_sum: self.cls_sum,
            num_pos: self.num_pos,
            num_neg: self.num_neg,
            normalizer,
            neg_mask: self.neg_mask,
        }
    }
}

/// A normalised loss.
#[derive(Debug)]
pub struct LossOutput {
    /// The loss to backpropagate, scalar f32.
    pub total: Tensor,
    /// Smooth-L1 summed over positives, scalar f32.
    pub loc_sum: Tensor,
    /// Classification loss summed over kept anchors, scalar f32.
    pub cls_sum: Tensor,
    /// Positive anchors in the batch.
    pub num_pos: i64,
    /// Negative anchors that entered the classification loss.
    pub num_neg: i64,
    /// `D = max(normalizer_min, num_pos)`.
    pub normalizer: f64,
    /// The negatives kept by mining, `[N, A]` bool (SSD loss only).
    pub neg_mask: Option<Tensor>,
}

impl LossOutput {
    /// Plain numbers for logging (reads the scalars back from the device).
    pub fn stats(&self) -> LossStats {
        let loc_sum = self.loc_sum.double_value(&[]);
        let cls_sum = self.cls_sum.double_value(&[]);
        LossStats {
            total: self.total.double_value(&[]),
            loc_sum,
            cls_sum,
            num_pos: self.num_pos,
            num_neg: self.num_neg,
            loc_per_pos: loc_sum / self.normalizer,
            cls_per_pos: cls_sum / self.normalizer,
            second_stage: None,
        }
    }
}

/// What torchcv printed each step, and more, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LossStats {
    pub total: f64,
    pub loc_sum: f64,
    pub cls_sum: f64,
    pub num_pos: i64,
    pub num_neg: i64,
    /// `loc_sum / D`: torchcv's printed `loc_loss`.
    pub loc_per_pos: f64,
    /// `cls_sum / D`: torchcv's printed `cls_loss`.
    pub cls_per_pos: f64,
    /// A two-stage detector's second stage (Faster R-CNN's box head); the fields above are
    /// then its first stage's (the RPN's), except `total`, which is both stages' sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_stage: Option<StageStats>,
}

/// One stage's normalised loss parts, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct StageStats {
    /// The Smooth-L1 part over its normaliser (torchvision's `loss_box_reg`).
    pub loc_per_pos: f64,
    /// The classification part over its normaliser (`loss_classifier`).
    pub cls_per_pos: f64,
    /// Foreground RoIs.
    pub num_pos: i64,
    /// Background RoIs in the loss.
    pub num_neg: i64,
}

impl LossStats {
    /// `self` (the first stage's) with `second`'s parts: its total added, its per-positive
    /// parts and counts kept in [`Self::second_stage`].
    pub fn with_second_stage(self, second: &LossStats) -> LossStats {
        LossStats {
            total: self.total + second.total,
            second_stage: Some(StageStats {
                loc_per_pos: second.loc_per_pos,
                cls_per_pos: second.cls_per_pos,
                num_pos: second.num_pos,
                num_neg: second.num_neg,
            }),
            ..self
        }
    }
}

/// `F.smooth_l1_loss(loc_preds[mask], loc_targets[mask], reduction='sum', beta)` with
/// `mask = pos.unsqueeze(2).expand_as(loc_preds)`.
///
/// loc_preds, loc_targets: `[N, A, 4]`; pos: `[N, A]` bool with `num_pos` trues. Returns a
/// scalar. Only positive anchors are read, so targets of other anchors may hold anything (even
/// inf). The positive rows are gathered with `index_select` (the same elements in the same order
/// as the masked selection, without its slow path for an expanded mask).
pub(crate) fn smooth_l1_over_positives(
    loc_preds: &Tensor,
    loc_targets: &Tensor,
    pos: &Tensor,
    num_pos: i64,
    beta: f64,
) -> Tensor {
    let rows = indices_of(pos, num_pos);
    let preds = loc_preds.reshape([-1, 4]).index_select(0, &rows);
    let targets = loc_targets.reshape([-1, 4]).index_select(0, &rows);
    preds.smooth_l1_loss(&targets, Reduction::Sum, beta)
}

/// `(cls_preds[valid].view(-1, C), cls_targets[valid])` with `valid = cls_targets > -1`.
///
/// cls_preds: `[N, A, C]`; cls_targets: `[N, A]` with `dims.num_valid` labels > -1. Returns
/// `[V, C]` and `[V]` in anchor order. Rows are gathered with `index_select` (whose backward is
/// a cheap `index_add`), and not at all when nothing is ignored.
pub(crate) fn valid_rows(
    cls_preds: &Tensor,
    cls_targets: &Tensor,
    dims: &inputs::BatchDims,
) -> (Tensor, Tensor) {
    let rows = cls_preds.reshape([-1, dims.c]);
    let labels = cls_targets.reshape([-1]);
    if !dims.has_ignored {
        return (rows, labels);
    }
    let keep = indices_of(&labels.gt(IGNORE_LABEL), dims.num_valid);
    (rows.index_select(0, &keep), labels.index_select(0, &keep))
}

/// The flat indices `[count]` int64 of the trues of `mask` (any shape) in order, which the
/// caller knows to number `count`: `nonzero_static`, which on CUDA does not wait for the device
/// to learn the output size as `nonzero` does.
pub(crate) fn indices_of(mask: &Tensor, count: i64) -> Tensor {
    mask.reshape([-1]).nonzero_static(count, -1).reshape([-1])
}

/// An option that must be a finite number above `min` (`>= min` when `inclusive`).
pub(crate) fn check_option(name: &str, value: f64, min: f64, inclusive: bool) -> Result<()> {
    let above = if inclusive { value >= min } else { value > min };
    if !(above && value.is_finite()) {
        let op = if inclusive { ">=" } else { ">" };
        crate::bail_input!("{name}: expected a finite number {op} {min}, got {value}");
    }
    Ok(())
}

/// The kind losses compute in: f64 stays f64, everything else (f32, f16, bf16) becomes f32.
pub(crate) fn compute_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// `t` in its compute kind; gradients flow back to the original (possibly half) tensor.
pub(crate) fn in_compute_kind(t: &Tensor) -> Tensor {
    let kind = compute_kind(t);
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

/// The losses by name, as the CLI and the parity reference name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// [`SsdLoss`]: softmax CE with hard negative mining.
    Ssd,
    /// [`FocalLoss`]: sigmoid focal loss (no background column).
    Focal,
    /// [`SoftmaxFocalLoss`]: softmax focal loss with histogram class weights.
    SoftmaxFocal,
    /// [`SampledRpnLoss`]: Faster R-CNN's RPN loss on a 256-anchor sample per image
    /// (objectness `[N, A, 1]`, labels 1 / 0 / -1).
    Rpn,
}

impl std::str::FromStr for LossKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ssd" => Ok(Self::Ssd),
            "focal" => Ok(Self::Focal),
            "softmax-focal" | "softmax_focal" => Ok(Self::SoftmaxFocal),
            "rpn" => Ok(Self::Rpn),
            _ => Err(crate::bad_input(format!(
                "loss {s:?}: expected ssd, focal, softmax-focal or rpn"
            ))),
        }
    }
}

impl LossKind {
    /// Whether `cls_preds` carries a background column 0 (SSD, softmax focal) or not (focal,
    /// the RPN's objectness).
    pub fn has_background_column(self) -> bool {
        !matches!(self, Self::Focal | Self::Rpn)
    }

    /// The JSON options with every missing key at its default (what [`Self::build`] uses), for
    /// reports; unknown keys are an error naming the key.
    pub fn options_with_defaults(self, options: serde_json::Value) -> Result<serde_json::Value> {
        fn fill<T>(kind: LossKind, v: serde_json::Value) -> Result<serde_json::Value>
        where
            T: serde::de::DeserializeOwned + Serialize,
        {
            let config: T = serde_json::from_value(v)
                .map_err(|e| crate::bad_input(format!("{kind:?} loss options: {e}")))?;
            Ok(serde_json::to_value(config)?)
        }
        match self {
            Self::Ssd => fill::<SsdLossConfig>(self, options),
            Self::Focal => fill::<FocalLossConfig>(self, options),
            Self::SoftmaxFocal => fill::<SoftmaxFocalLossConfig>(self, options),
            Self::Rpn => fill::<SampledRpnLossConfig>(self, options),
        }
    }

    /// Build the loss from its JSON options (missing keys take their defaults; unknown keys
    /// are an error naming the key).
    pub fn build(self, options: serde_json::Value) -> Result<Box<dyn DetectionLoss + Send + Sync>> {
        fn parse<T: serde::de::DeserializeOwned>(
            kind: LossKind,
            v: serde_json::Value,
        ) -> Result<T> {
            serde_json::from_value(v)
                .map_err(|e| crate::bad_input(format!("{kind:?} loss options: {e}")))
        }
        Ok(match self {
            Self::Ssd => Box::new(SsdLoss::new(parse(self, options)?)?),
            Self::Focal => Box::new(FocalLoss::new(parse(self, options)?)?),
            Self::SoftmaxFocal => Box::new(SoftmaxFocalLoss::new(parse(self, options)?)?),
            Self::Rpn => Box::new(SampledRpnLoss::new(parse(self, options)?)?),
        })
    }
}
