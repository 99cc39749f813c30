//! Softmax focal loss for heads with a background column (Faster R-CNN style), with class
//! weights from the class histogram, `w_c = 1 / ln(1.10 + f_c)`.
//!
//! ```text
//! x = cls_preds[valid]          [V, C]     valid = cls_targets > -1
//! log_p_t = log_softmax(x)[y]   [V]        y = cls_targets[valid]
//! p_t = exp(log_p_t)
//! loss = -w[y] (1 - p_t)^gamma log_p_t     summed
//! ```
//!
//! With `gamma = 0` this is the class-weighted cross entropy (the focal paper's alpha-balanced
//! CE, eq. 3, with `w` as alpha); with `gamma = 0` and no class weights, plain cross entropy.
//!
//! The weights come from a histogram `h` over the C classes (background at 0): the whole
//! dataset's (static, [`ClassWeighting::Static`]) or this batch's targets
//! ([`ClassWeighting::Batch`]); `f_c = h_c / sum(h)`. The background weight may instead be the
//! sum of the foreground weights divided by 3.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::focal::focal_modulator;
use super::inputs::LabelRule;
use super::{check_option, valid_rows, DetectionLoss, LossInputs, LossSums, Normalization};

/// Where the class weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeighting {
    /// All classes weigh 1.
    #[default]
    None,
    /// From a fixed histogram (`class_counts`), e.g. of the whole dataset.
    Static,
    /// From the histogram of each batch's targets.
    Batch,
}

/// The weight of the background class (column 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundWeight {
    /// `1 / ln(1.10 + f_0)` like every other class.
    #[default]
    Histogram,
    /// The sum of the foreground weights divided by 3.
    #[serde(rename = "fg_sum_over_3")]
    FgSumOver3,
}

/// How the classification sum is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClsReduction {
    /// Divided by `max(normalizer_min, num_pos)`, like the localisation part.
    #[default]
    PerPositive,
    /// Divided by the number of valid (non-ignored) anchors.
    Mean,
}

/// Options of [`SoftmaxFocalLoss`]; the JSON names are those of the parity reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoftmaxFocalLossConfig {
    /// Focusing exponent; 0 gives the alpha-balanced cross entropy (focal paper, eq. 3).
    pub gamma: f64,
    pub class_weights: ClassWeighting,
    /// The histogram for [`ClassWeighting::Static`], one count per class including background.
    pub class_counts: Option<Vec<f64>>,
    pub background_weight: BackgroundWeight,
    pub reduction: ClsReduction,
    /// The loss is divided by `max(normalizer_min, num_pos)`.
    pub normalizer_min: f64,
    /// Smooth-L1 transition point.
    pub beta: f64,
    /// An error instead of a finite loss on a batch without positives.
    pub strict: bool,
    /// Check that predictions (and targets at positives) hold no NaN or inf.
    pub check_finite: bool,
}

impl Default for SoftmaxFocalLossConfig {
    fn default() -> Self {
        Self {
            gamma: 2.0,
            class_weights: ClassWeighting::None,
            class_counts: None,
            background_weight: BackgroundWeight::Histogram,
            reduction: ClsReduction::PerPositive,
            normalizer_min: 1.0,
            beta: 1.0,
            strict: false,
            check_finite: true,
        }
    }
}

/// `w_c = 1 / ln(1.10 + f_c)` with `f_c = h_c / sum(h)`.
///
/// histogram: `[C]` counts (background at 0). Returns `[C]` weights in the histogram's kind.
pub fn class_weights_from_histogram(histogram: &Tensor, background: BackgroundWeight) -> Tensor {
    let share = histogram / histogram.sum(histogram.kind()).clamp_min(f64::MIN_POSITIVE);
    let weights = (share + 1.10).log().reciprocal();
    match background {
        BackgroundWeight::Histogram => weights,
        BackgroundWeight::FgSumOver3 => {
            let c = weights.size()[0];
            let bg = weights.narrow(0, 1, c - 1).sum(weights.kind()) / 3.0;
            Tensor::cat(&[bg.reshape([1]), weights.narrow(0, 1, c - 1)], 0)
        }
    }
}

/// Softmax focal loss with histogram class weights.
#[derive(Debug, Clone)]
pub struct SoftmaxFocalLoss {
    pub config: SoftmaxFocalLossConfig,
}

impl SoftmaxFocalLoss {
    pub fn new(config: SoftmaxFocalLossConfig) -> Result<Self> {
        check_option("gamma", config.gamma, 0.0, true)?;
        check_option("beta", config.beta, 0.0, true)?;
        check_option("normalizer_min", config.normalizer_min, 0.0, false)?;
        match (&config.class_weights, &config.class_counts) {
            (ClassWeighting::Static, None) => {
                crate::bail_input!("class_counts: required when class_weights is \"static\"")
            }
            (_, Some(counts)) if counts.iter().any(|&h| !(h >= 0.0 && h.is_finite())) => {
                crate::bail_input!("class_counts: expected finite counts >= 0, got {counts:?}")
            }
            (_, Some(counts)) if counts.iter().sum::<f64>() <= 0.0 => {
                crate::bail_input!("class_counts: all counts are zero")
            }
            _ => {}
        }
        Ok(Self { config })
    }

    /// The class-weighted cross entropy (the focal paper's α-balanced CE, eq. 3, with the class
    /// weights as α): this loss with `gamma = 0`. Without class weights, plain cross entropy.
    pub fn alpha_balanced_ce(mut config: SoftmaxFocalLossConfig) -> Result<Self> {
        config.gamma = 0.0;
        Self::new(config)
    }

    /// The `[C]` class weights for targets `y` (`[V]`, the valid anchors), or None for 1.
    fn weights(&self, y: &Tensor, c: i64, kind: Kind) -> Result<Option<Tensor>> {
        let histogram = match self.config.class_weights {
            ClassWeighting::None => return Ok(None),
            ClassWeighting::Static => {
                let counts = self.config.class_counts.as_deref().unwrap_or_default();
                if counts.len() as i64 != c {
                    crate::bail_input!(
                        "class_counts: {} counts for cls_preds with C = {c} classes (background included)",
                        counts.len()
                    );
                }
                Tensor::from_slice(counts)
                    .to_kind(kind)
                    .to_device(y.device())
            }
            ClassWeighting::Batch => y.bincount::<Tensor>(None, c).to_kind(kind),
        };
        Ok(Some(class_weights_from_histogram(
            &histogram,
            self.config.background_weight,
        )))
    }
}

impl DetectionLoss for SoftmaxFocalLoss {
    /// loc_preds, loc_targets: `[N, A, 4]`; cls_preds: `[N, A, C]` with background column 0;
    /// cls_targets: `[N, A]` int64 in `-1 ..= C-1`.
    fn sums(&self, inputs: &LossInputs) -> Result<LossSums> {
        let rule = LabelRule {
            background_column: true,
            meaning: "softmax focal loss: 0 = background column, 1..C-1 = classes, -1 = ignore",
        };
        let p = inputs.prepare_plain(&rule, self.config.check_finite, self.config.beta)?;
        let (c, cls_preds, loc_sum) = (p.dims.c, p.cls_preds, p.loc_sum);
        let (num_pos, num_valid) = (p.dims.num_pos, p.dims.num_valid);

        let (x, y) = valid_rows(&cls_preds, inputs.cls_targets, &p.dims);
        let log_p_t = x
            .log_softmax(1, x.kind())
            .gather(1, &y.unsqueeze(1), false)
            .squeeze_dim(1);
        let p_t = log_p_t.exp();
        let one_minus_p_t: Tensor = 1.0 - p_t;
        // Finite gradients where p_t saturates to 1, also for 0 < gamma < 1.
        let modulator = focal_modulator(&one_minus_p_t, self.config.gamma);
        let loss = match self.weights(&y, c, x.kind())? {
            Some(w) => -w.index_select(0, &y) * modulator * &log_p_t,
            None => -modulator * &log_p_t,
        };
        let cls_sum = loss.sum(x.kind());

        Ok(LossSums {
            loc_sum,
            cls_sum,
            num_pos,
            num_neg: num_valid - num_pos,
            num_valid,
            cls_mean: self.config.reduction == ClsReduction::Mean,
            neg_mask: None,
        })
    }

    fn normalization(&self) -> Normalization {
        Normalization {
            min: self.config.normalizer_min,
            strict: self.config.strict,
        }
    }
}
