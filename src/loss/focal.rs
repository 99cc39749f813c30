//! Sigmoid focal loss for RetinaNet heads: torchcv `loss/focal_loss.py` `FocalLoss`, with the
//! fvcore/torchvision formula.
//!
//! ```text
//! torchcv (pre-41dcece semantics)                     tchcv
//! pos = cls_targets > 0                               pos = cls_targets.gt(0)
//! loc_loss = smooth_l1_loss(loc_preds[mask], ..)      loc_sum = smooth_l1_over_positives(..)
//! pos_neg = cls_targets > -1
//! x = cls_preds[pos_neg].view(-1, C)                  (x, y) = valid_rows(cls_preds, cls_targets)
//! t = one_hot(y, 1+C)[:, 1:]
//! p = x.sigmoid()
//! pt = p*t + (1-p)*(1-t)
//! w = alpha*t + (1-alpha)*(1-t)
//! w = w * (1-pt).pow(gamma)
//! loss = bce_with_logits(x, t, w, sum)                cls_sum = focal_sum(x, y)    (below)
//! return (loc_loss + cls_loss) / num_pos              (loc_sum + cls_sum) / max(1, num_pos)
//! ```
//!
//! `focal_sum` computes the same sum with less work. A cell `(anchor, class)` has `t = 0` except
//! at the class column of a positive anchor, and with `t` fixed the terms need no `t` at all:
//!
//! ```text
//! t = 0:  FL = (1 - alpha) softplus(x)  sigmoid(x)^gamma     (-log(1-p) = softplus(x), p = sigmoid(x))
//! t = 1:  FL =      alpha  softplus(-x) sigmoid(-x)^gamma
//! sum FL = (1 - alpha) sum_all softplus(x) sigmoid(x)^gamma  +  sum_positive_cells [FL(x, 1) - FL(x, 0)]
//! ```
//!
//! so the dense `[V, C]` logits see three elementwise ops and a sum (the weight multiplies the
//! scalar), and only the positive cells see the rest, where the one-hot formulation makes about
//! a dozen dense passes. [`sigmoid_focal_loss`] keeps the textbook elementwise form (torchvision's
//! `ops.sigmoid_focal_loss`) for targets of any shape.
//!
//! Two torchcv defects are not ported: HEAD's `one_hot_embedding(y - 1, C)` turns background
//! (y = 0) into a one-hot on the *last* class, and passing the focal weight as BCE's `weight=`
//! (which modern ATen refuses to differentiate). Gradients flow through `(1 - p_t)^gamma` as in
//! fvcore and torchvision.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use super::inputs::LabelRule;
use super::{
    check_option, indices_of, valid_rows, DetectionLoss, LossInputs, LossSums, Normalization,
};

/// Options of [`FocalLoss`]; the JSON names are those of the parity reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FocalLossConfig {
    /// Weight of positives (negatives get `1 - alpha`); `None` disables the weighting
    /// (fvcore's `alpha = -1`). torchcv: 0.25.
    pub alpha: Option<f64>,
    /// Focusing exponent (torchcv: 2). 0 gives the alpha-balanced cross entropy.
    pub gamma: f64,
    /// The loss is divided by `max(normalizer_min, num_pos)`.
    pub normalizer_min: f64,
    /// Smooth-L1 transition point (torchcv: 1).
    pub beta: f64,
    /// torchcv behaviour on a batch without positives: an error instead of a finite loss.
    pub strict: bool,
    /// Check that predictions (and targets at positives) hold no NaN or inf.
    pub check_finite: bool,
}

impl Default for FocalLossConfig {
    fn default() -> Self {
        Self {
            alpha: Some(0.25),
            gamma: 2.0,
            normalizer_min: 1.0,
            beta: 1.0,
            strict: false,
            check_finite: true,
        }
    }
}

/// Sigmoid focal loss `FL = -alpha_t (1 - p_t)^gamma log(p_t)` over every non-ignored anchor
/// and class, plus Smooth-L1 over positives, divided by the batch's positives.
#[derive(Debug, Clone)]
pub struct FocalLoss {
    pub config: FocalLossConfig,
}

impl FocalLoss {
    pub fn new(config: FocalLossConfig) -> Result<Self> {
        if let Some(alpha) = config.alpha {
            if !(0.0..=1.0).contains(&alpha) {
                crate::bail_input!(
                    "alpha: expected a number in [0, 1] or null (disabled), got {alpha}"
                );
            }
        }
        check_option("gamma", config.gamma, 0.0, true)?;
        check_option("beta", config.beta, 0.0, true)?;
        check_option("normalizer_min", config.normalizer_min, 0.0, false)?;
        Ok(Self { config })
    }
}

/// The smallest positive normal number of a float `kind` (f64's for f64, f32's for f32).
fn smallest_normal(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::MIN_POSITIVE,
        Kind::Half => 6.103_515_625e-5,
        _ => f32::MIN_POSITIVE as f64,
    }
}

/// `base^gamma` of a base `1 - p_t` in `[0, 1]`, with a finite gradient where the base is 0.
///
/// For `0 < gamma < 1`, pow's gradient `gamma base^(gamma-1)` is inf at a base of 0 (p_t
/// saturated to 1), and times the zero cross entropy there it is NaN; its limit is 0. The base
/// is clamped at the kind's smallest positive normal first: the clamp passes no gradient below
/// it, and a nonzero `1 - p_t` is never that small (it differs from 1 by at least the epsilon
/// of the kind), so only the exact zeros change, to `tiny^gamma` times a zero cross entropy.
/// Other gammas take the plain pow (no extra pass over the tensor: gamma 2 is the default and
/// the benchmarked case).
pub(super) fn focal_modulator(base: &Tensor, gamma: f64) -> Tensor {
    if gamma > 0.0 && gamma < 1.0 {
        base.clamp_min(smallest_normal(base.kind()))
            .pow_tensor_scalar(gamma)
    } else {
        base.pow_tensor_scalar(gamma)
    }
}

/// `sigmoid_focal_loss(x, t)` elementwise (torchvision `ops.sigmoid_focal_loss`, fvcore):
/// x, t `[V, C]`, t in {0, 1}. Returns `[V, C]`. For `0 < gamma < 1` the gradient stays
/// finite where `p_t` saturates to 1 (see [`focal_modulator`]).
pub fn sigmoid_focal_loss(x: &Tensor, t: &Tensor, alpha: Option<f64>, gamma: f64) -> Tensor {
    let p = x.sigmoid();
    let ce = x.binary_cross_entropy_with_logits::<Tensor>(t, None, None, Reduction::None);
    let p_t = &p * t + (1.0 - &p) * (1.0 - t);
    let one_minus_p_t: Tensor = 1.0 - p_t;
    let loss = ce * focal_modulator(&one_minus_p_t, gamma);
    match alpha {
        Some(alpha) => loss * (alpha * t + (1.0 - alpha) * (1.0 - t)),
        None => loss,
    }
}

/// `softplus(s x) sigmoid(s x)^gamma` elementwise with `s = -1` for a target of 1 and `s = 1`
/// for a target of 0: the focal loss of `x` without its alpha weight.
///
/// For `0 < gamma < 1`, `sigmoid(z)^gamma` is `exp(gamma log_sigmoid(z))`: where `sigmoid(z)`
/// underflows to 0 (p_t saturated to 1), pow's gradient `gamma s^(gamma-1)` is inf and times
/// the zero `softplus(z)` NaN, while this form's, `gamma s^gamma (1 - s)`, is finite (and 0 in
/// the limit). Other gammas keep the plain pow, which is faster (gamma 2 is the default).
fn unweighted_focal(x: &Tensor, target_one: bool, gamma: f64) -> Tensor {
    let z = if target_one { -x } else { x.shallow_clone() };
    let ce = z.softplus();
    if gamma == 0.0 {
        ce
    } else if gamma < 1.0 {
        ce * (z.log_sigmoid() * gamma).exp()
    } else {
        ce * z.sigmoid().pow_tensor_scalar(gamma)
    }
}

/// The focal loss summed over every cell of `x` (`[V, C]` logits) whose targets are the
/// one-hot of `y` (`[V]` labels, 0 = background, k = column k-1), without building the one-hot.
/// Equal to `sigmoid_focal_loss(x, one_hot(y)[:, 1:]).sum()`.
pub fn focal_sum(x: &Tensor, y: &Tensor, alpha: Option<f64>, gamma: f64) -> Tensor {
    let rows = y.gt(0).nonzero().squeeze_dim(1);
    focal_sum_at(x, y, &rows, alpha, gamma)
}

/// [`focal_sum`] with the positive rows `rows` (`[P]` int64, the rows where `y > 0`) given.
fn focal_sum_at(x: &Tensor, y: &Tensor, rows: &Tensor, alpha: Option<f64>, gamma: f64) -> Tensor {
    let (w_pos, w_neg) = alpha.map_or((1.0, 1.0), |a| (a, 1.0 - a));
    let kind = x.kind();
    let all_negative = unweighted_focal(x, false, gamma).sum(kind) * w_neg;
    let columns = (y.index_select(0, rows) - 1).unsqueeze(1);
    let x_pos = x
        .index_select(0, rows)
        .gather(1, &columns, false)
        .squeeze_dim(1);
    let correction = unweighted_focal(&x_pos, true, gamma) * w_pos
        - unweighted_focal(&x_pos, false, gamma) * w_neg;
    all_negative + correction.sum(kind)
}

impl DetectionLoss for FocalLoss {
    /// loc_preds, loc_targets: `[N, A, 4]`; cls_preds: `[N, A, C]` with **no** background
    /// column; cls_targets: `[N, A]` int64, 0 = background, k in 1..=C = column k-1, -1 = ignore.
    fn sums(&self, inputs: &LossInputs) -> Result<LossSums> {
        let rule = LabelRule {
            background_column: false,
            meaning:
                "focal loss: no background column, 0 = background, k = column k-1, -1 = ignore",
        };
        let p = inputs.prepare_plain(&rule, self.config.check_finite, self.config.beta)?;
        let (cls_preds, loc_sum) = (p.cls_preds, p.loc_sum);
        let (num_pos, num_valid) = (p.dims.num_pos, p.dims.num_valid);

        let (x, y) = valid_rows(&cls_preds, inputs.cls_targets, &p.dims);
        let positive_rows = indices_of(&y.gt(0), num_pos);
        let cls_sum = focal_sum_at(&x, &y, &positive_rows, self.config.alpha, self.config.gamma);

        Ok(LossSums {
            loc_sum,
            cls_sum,
            num_pos,
            num_neg: num_valid - num_pos,
            num_valid,
            cls_mean: false,
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
