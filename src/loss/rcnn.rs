//! The second-stage (box head) loss of Faster R-CNN: torchvision `roi_heads.fastrcnn_loss`, with
//! tchcv's softmax focal loss as an alternative classification loss, and the per-RoI loss OHEM
//! ranks by.
//!
//! ```text
//! torchvision fastrcnn_loss                                RcnnLoss (cross entropy)
//! labels = cat(labels); targets = cat(targets)              labels [R], regression_targets [R, 4]
//! classification_loss = cross_entropy(class_logits, labels) cls_sum = CE(.., sum); / R
//! pos = where(labels > 0)                                   pos = labels > 0
//! box_regression.reshape(N, C, 4)[pos, labels[pos]]         own_class_deltas (gather)
//! box_loss = smooth_l1(.., targets[pos], beta=1/9, sum)     loc_sum (beta 1/9)
//!            / labels.numel()                                 / R
//! ```
//!
//! `R` is the number of sampled RoIs in the batch (`max(1, R)`: 0 instead of NaN on an empty
//! sample). With [`RcnnClsLoss::SoftmaxFocal`] the rows go through
//! [`SoftmaxFocalLoss`] as one image of `R` anchors (cls_preds `[1, R, C]`, the own-class
//! deltas as loc_preds), normalised as that loss normalises (per positive by default).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::{check_option, in_compute_kind, smooth_l1_over_positives};
use super::{DetectionLoss, LossInputs, LossOutput, LossSums, SoftmaxFocalLoss};
use super::{Normalization, NormalizeBy};
use super::{SoftmaxFocalLossConfig, IGNORE_LABEL};
use crate::bail_input;

/// The classification part of the second-stage loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RcnnClsLoss {
    /// torchvision's cross entropy, divided by the sampled RoIs.
    #[default]
    CrossEntropy,
    /// tchcv's softmax focal loss (its options; its `beta` is replaced by the loss's).
    SoftmaxFocal(SoftmaxFocalLossConfig),
}

/// Options of [`RcnnLoss`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RcnnLossConfig {
    pub cls: RcnnClsLoss,
    /// Smooth-L1 transition point (torchvision: 1/9).
    pub beta: f64,
    /// Fail on NaN or inf logits or deltas (training turns it off: it skips a non-finite step
    /// itself, on every rank alike).
    pub check_finite: bool,
}

impl Default for RcnnLossConfig {
    fn default() -> Self {
        Self {
            cls: RcnnClsLoss::CrossEntropy,
            beta: 1.0 / 9.0,
            check_finite: true,
        }
    }
}

/// The box head's outputs for `R` sampled RoIs (all images concatenated) and their targets.
pub struct RcnnLossInputs<'a> {
    /// `[R, C]` float: class logits, background column 0.
    pub class_logits: &'a Tensor,
    /// `[R, C * 4]` float: class-specific deltas.
    pub box_regression: &'a Tensor,
    /// `[R]` int64 in `0..C`: 0 background, k > 0 class k.
    pub labels: &'a Tensor,
    /// `[R, 4]` float: deltas to the matched GT (read at foreground only).
    pub regression_targets: &'a Tensor,
}

/// Faster R-CNN's second-stage loss.
#[derive(Debug, Clone)]
pub struct RcnnLoss {
    config: RcnnLossConfig,
    focal: Option<SoftmaxFocalLoss>,
}

/// Shapes, kinds, devices and label range; returns `(R, C)`.
fn check_inputs(inputs: &RcnnLossInputs) -> Result<(i64, i64)> {
    let s = inputs.class_logits.size();
    let [r, c] = s[..] else {
        bail_input!("class_logits: expected [R, C] (C with the background column), got {s:?}");
    };
    let floats = [
        ("class_logits", inputs.class_logits, vec![r, c]),
        ("box_regression", inputs.box_regression, vec![r, c * 4]),
        ("regression_targets", inputs.regression_targets, vec![r, 4]),
    ];
    let device = inputs.class_logits.device();
    for (name, t, want) in floats {
        if !crate::device::is_float(t.kind()) {
            bail_input!("{name}: expected a float tensor, got {:?}", t.kind());
        }
        if t.size() != want || t.device() != device {
            bail_input!(
                "{name}: expected {want:?} on {device:?}, got {:?} on {:?}",
                t.size(),
                t.device()
            );
        }
    }
    let labels = inputs.labels;
    if labels.size() != [r] || labels.kind() != Kind::Int64 || labels.device() != device {
        bail_input!(
            "labels: expected [{r}] int64 on {device:?}, got {:?} {:?} on {:?}",
            labels.kind(),
            labels.size(),
            labels.device()
        );
    }
    Ok((r, c))
}

/// Each RoI's deltas for its own label: box_regression `[R, C * 4]`, labels `[R]` i64 in
/// `0..C` -> `[R, 4]` (torchvision's `box_regression[pos, labels[pos]]` for every row).
pub fn own_class_deltas(box_regression: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let [r] = labels.size()[..] else {
        bail_input!("labels: expected [R], got {:?}", labels.size());
    };
    if labels.kind() != Kind::Int64 {
        bail_input!("labels: expected int64, got {:?}", labels.kind());
    }
    let columns = box_regression.size().get(1).copied().unwrap_or(0) / 4;
    let index = labels.view([r, 1, 1]).expand([r, 1, 4], false);
    Ok(box_regression
        .f_view([r, columns, 4])?
        .f_gather(1, &index, false)?
        .squeeze_dim(1))
}

impl RcnnLoss {
    pub fn new(config: RcnnLossConfig) -> Result<Self> {
        check_option("beta", config.beta, 0.0, true)?;
        let focal = match &config.cls {
            RcnnClsLoss::CrossEntropy => None,
            RcnnClsLoss::SoftmaxFocal(f) => Some(SoftmaxFocalLoss::new(SoftmaxFocalLossConfig {
                beta: config.beta,
                check_finite: f.check_finite && config.check_finite,
                ..f.clone()
            })?),
        };
        Ok(Self { config, focal })
    }

    /// Counts read back once: (foreground, labels outside `0..C`, non-finite inputs).
    fn counts(inputs: &RcnnLossInputs, c: i64) -> Result<(i64, i64, i64)> {
        let _no_grad = tch::no_grad_guard();
        let l = inputs.labels;
        let bad = |t: &Tensor| t.isfinite().logical_not().sum(Kind::Int64);
        let scalars = [
            l.gt(0).sum(Kind::Int64),
            l.lt(0).logical_or(&l.ge(c)).sum(Kind::Int64),
            bad(inputs.class_logits) + bad(inputs.box_regression),
        ];
        let v = Vec::<i64>::try_from(Tensor::stack(&scalars, 0).to_device(Device::Cpu))?;
        Ok((v[0], v[1], v[2]))
    }

    /// How [`Self::sums`] is normalised: cross entropy by the sampled RoIs (`num_valid`, at
    /// least 1), focal as [`SoftmaxFocalLoss`] is (per positive by default). A data-parallel
    /// run takes the counts of the global batch.
    pub fn normalization(&self) -> (Normalization, NormalizeBy) {
        match &self.focal {
            Some(focal) => (focal.normalization(), focal.normalize_by()),
            None => (
                Normalization {
                    min: 1.0,
                    strict: false,
                },
                NormalizeBy::Sampled,
            ),
        }
    }

    /// The un-normalised parts: `loc_sum` (Smooth-L1 of the foreground's own-class deltas),
    /// `cls_sum` (cross entropy or focal, summed), `num_pos`, `num_neg`, `num_valid = R`.
    pub fn sums(&self, inputs: &RcnnLossInputs) -> Result<LossSums> {
        let (r, c) = check_inputs(inputs)?;
        let (num_pos, bad_labels, bad_values) = Self::counts(inputs, c)?;
        if bad_labels > 0 {
            bail_input!("labels: {bad_labels} values outside 0..{c} (0 background, k class k)");
        }
        if bad_values > 0 && self.config.check_finite {
            bail_input!("class_logits, box_regression: {bad_values} values are NaN or inf");
        }
        let deltas = own_class_deltas(&in_compute_kind(inputs.box_regression), inputs.labels)?;
        let targets = inputs.regression_targets.to_kind(deltas.kind());
        if let Some(focal) = &self.focal {
            return focal.sums(&LossInputs {
                loc_preds: &deltas.unsqueeze(0),
                loc_targets: &targets.unsqueeze(0),
                cls_preds: &inputs.class_logits.unsqueeze(0),
                cls_targets: &inputs.labels.unsqueeze(0),
            });
        }
        let pos = inputs.labels.gt(0);
        let loc_sum = smooth_l1_over_positives(&deltas, &targets, &pos, num_pos, self.config.beta);
        let logits = in_compute_kind(inputs.class_logits);
        let cls_sum = logits.f_cross_entropy_loss::<Tensor>(
            inputs.labels,
            None,
            Reduction::Sum,
            IGNORE_LABEL,
            0.0,
        )?;
        Ok(LossSums {
            loc_sum,
            cls_sum,
            num_pos,
            num_neg: r - num_pos,
            num_valid: r,
            cls_mean: false,
            neg_mask: None,
        })
    }

    /// The loss of this batch. Cross entropy: both parts divided by `max(1, R)` (torchvision's
    /// `loss_classifier` is `cls_per_pos` of [`LossOutput::stats`], `loss_box_reg`
    /// `loc_per_pos`); focal: normalised as [`SoftmaxFocalLoss`] is.
    pub fn forward(&self, inputs: &RcnnLossInputs) -> Result<LossOutput> {
        let sums = self.sums(inputs)?;
        let (normalization, by) = self.normalization();
        let normalizer = normalization.normalizer(by.count(&sums))?;
        let valid = sums.num_valid.max(1) as f64;
        Ok(sums.finish(normalizer, valid))
    }

    /// Each RoI's loss without gradient, `[R]` f32 (OHEM's ranking): cross entropy plus, at
    /// foreground, the Smooth-L1 of its own-class deltas summed over the four coordinates.
    pub fn per_roi(&self, inputs: &RcnnLossInputs) -> Result<Tensor> {
        check_inputs(inputs)?;
        let _no_grad = tch::no_grad_guard();
        let logits = inputs.class_logits.detach().to_kind(Kind::Float);
        let cls = logits.f_cross_entropy_loss::<Tensor>(
            inputs.labels,
            None,
            Reduction::None,
            IGNORE_LABEL,
            0.0,
        )?;
        let deltas = own_class_deltas(
            &inputs.box_regression.detach().to_kind(Kind::Float),
            inputs.labels,
        )?;
        let targets = inputs.regression_targets.to_kind(Kind::Float);
        let loc = deltas
            .smooth_l1_loss(&targets, Reduction::None, self.config.beta)
            .sum_dim_intlist([1].as_slice(), false, Kind::Float);
        let fg = inputs.labels.gt(0).to_kind(Kind::Float);
        Ok(cls + loc * fg)
    }
}
