//! SSD multibox loss with hard negative mining: torchcv `loss/ssd_loss.py` `SSDLoss`.
//!
//! ```text
//! torchcv                                             tchcv
//! pos = cls_targets > 0                               pos = cls_targets.gt(0)
//! num_pos = pos.sum().item()                          num_pos = pos.sum()        (batch total)
//!                                                     (all counts read back at once)
//! loc_loss = smooth_l1_loss(loc_preds[mask],          loc_sum = smooth_l1_over_positives(..)
//!                           loc_targets[mask], sum)
//! cls_loss = cross_entropy(cls_preds.view(-1,C),      ce = no_grad(cross_entropy_rows(..))
//!                          cls_targets.view(-1))            (ignore_index = -1)
//! neg = _hard_negative_mining(cls_loss, pos)          neg = mine_negatives(ce, targets, num_pos_i)
//! cls_loss = cls_loss[pos|neg].sum()                  cls_sum = cross_entropy_rows(kept rows).sum()
//! return (loc_loss + cls_loss) / num_pos              (loc_sum + cls_sum) / max(1, num_pos)
//! ```
//!
//! The value and gradients are torchcv's; the work is less: mining is one `topk` instead of two
//! full sorts ([`super::mining`]), and the differentiable cross entropy is computed on the kept
//! anchors only, so the backward pass skips the ~95% of rows that were not selected. On CUDA
//! the loss waits for the device once: every count the host needs (label range, positives,
//! negatives per image) is read back in one transfer, and the row selections use
//! `nonzero_static` with those counts.
//!
//! Beyond torchcv: ignored anchors (-1) take no part in the CE, the mining or `num_pos`; a batch
//! without positives gives a finite loss (or an error in `strict` mode); `min_negatives` keeps
//! background training in such batches; the negatives may be `hard` (default), `random` or `all`.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use super::inputs::LabelRule;
use super::mining::{top_k_per_row, NegativeMining};
use super::{
    check_option, indices_of, DetectionLoss, LossInputs, LossSums, Normalization, IGNORE_LABEL,
};
use crate::rng::Rng;

/// `F.cross_entropy(logits, targets, reduction='none', ignore_index=-1)`: logits `[R, C]`,
/// targets `[R]` -> `[R]`.
fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(targets, None, Reduction::None, IGNORE_LABEL, 0.0)
}

/// Options of [`SsdLoss`]; the JSON names are those of the parity reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsdLossConfig {
    /// Negatives kept per positive in each image (torchcv: 3).
    pub neg_pos_ratio: f64,
    /// How negatives are chosen.
    pub mining: NegativeMining,
    /// At least this many negatives per image (when it has that many), so images without
    /// positives still train the background. torchcv: 0.
    pub min_negatives: i64,
    /// The loss is divided by `max(normalizer_min, num_pos)`.
    pub normalizer_min: f64,
    /// Smooth-L1 transition point (torchcv: 1).
    pub beta: f64,
    /// torchcv behaviour on a batch without positives: an error instead of a finite loss.
    pub strict: bool,
    /// Seed of `random` mining; each call draws from the next stream.
    pub seed: u64,
    /// Check that predictions (and targets at positives) hold no NaN or inf.
    pub check_finite: bool,
}

impl Default for SsdLossConfig {
    fn default() -> Self {
        Self {
            neg_pos_ratio: 3.0,
            mining: NegativeMining::Hard,
            min_negatives: 0,
            normalizer_min: 1.0,
            beta: 1.0,
            strict: false,
            seed: 0,
            check_finite: true,
        }
    }
}

/// torchcv `SSDLoss`: Smooth-L1 over positives plus cross entropy over positives and mined
/// negatives, divided by the batch's positives.
#[derive(Debug)]
pub struct SsdLoss {
    pub config: SsdLossConfig,
    /// Calls made so far: the stream index of `random` mining.
    calls: AtomicU64,
}

impl SsdLoss {
    pub fn new(config: SsdLossConfig) -> Result<Self> {
        let c = &config;
        check_option("neg_pos_ratio", c.neg_pos_ratio, 0.0, true)?;
        check_option("min_negatives", c.min_negatives as f64, 0.0, true)?;
        check_option("beta", c.beta, 0.0, true)?;
        check_option("normalizer_min", c.normalizer_min, 0.0, false)?;
        Ok(Self {
            config,
            calls: AtomicU64::new(0),
        })
    }

    /// How many negatives each image keeps: cls_targets `[N, A]`, pos `[N, A]` bool ->
    /// the candidates (label 0) `[N, A]` bool and `k` `[N]` int64,
    /// `k = min(#candidates, max(floor(ratio * num_pos), min_negatives))` (every candidate for
    /// `all`).
    fn negatives_per_image(&self, cls_targets: &Tensor, pos: &Tensor) -> (Tensor, Tensor) {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let candidates = cls_targets.eq(0);
        let num_candidates = candidates.sum_dim_intlist(1, false, Kind::Int64);
        if c.mining == NegativeMining::All {
            return (candidates, num_candidates);
        }
        let num_pos = pos.sum_dim_intlist(1, false, Kind::Int64);
        let k = (num_pos.to_kind(Kind::Double) * c.neg_pos_ratio)
            .floor()
            .to_kind(Kind::Int64)
            .clamp_min(c.min_negatives)
            .minimum(&num_candidates);
        (candidates, k)
    }

    /// `neg = _hard_negative_mining(cls_loss, pos)`, generalised: the `k[i]` hardest (or
    /// random) candidates of each image, `k_max = max(k)`.
    ///
    /// ce: `[N, A]` per-anchor cross entropy; candidates: `[N, A]` bool; k: `[N]` int64.
    /// Returns `[N, A]` bool.
    fn mine_negatives(&self, ce: &Tensor, candidates: &Tensor, k: &Tensor, k_max: i64) -> Tensor {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let scores = match c.mining {
            NegativeMining::All => return candidates.shallow_clone(),
            NegativeMining::Hard => ce.detach(),
            NegativeMining::Random => {
                let call = self.calls.load(Ordering::Relaxed);
                let mut rng = Rng::keyed(c.seed, &[call]);
                let keys: Vec<f32> = (0..ce.numel()).map(|_| rng.next_f32()).collect();
                Tensor::from_slice(&keys)
                    .view(ce.size().as_slice())
                    .to_device(ce.device())
            }
        };
        top_k_per_row(&scores, candidates, k, k_max)
    }
}

impl DetectionLoss for SsdLoss {
    /// loc_preds, loc_targets: `[N, A, 4]`; cls_preds: `[N, A, C]` with background column 0;
    /// cls_targets: `[N, A]` int64 in `-1 ..= C-1`.
    fn sums(&self, inputs: &LossInputs) -> Result<LossSums> {
        let rule = LabelRule {
            background_column: true,
            meaning: "SSD loss: 0 = background column, 1..C-1 = classes, -1 = ignore",
        };
        let cls_targets = inputs.cls_targets;
        // The per-image negative counts are read back with the batch's counts: one wait for
        // the device for the whole loss.
        let mut per_image = None;
        let p = inputs.prepare(&rule, self.config.check_finite, self.config.beta, |pos| {
            let (candidates, k) = self.negatives_per_image(cls_targets, pos);
            let k_max = if k.numel() > 0 {
                k.max()
            } else {
                k.sum(Kind::Int64)
            };
            let scalars = vec![k_max, k.sum(Kind::Int64)];
            per_image = Some((candidates, k));
            scalars
        })?;
        let (Some((candidates, k)), &[k_max, num_neg]) = (per_image, p.extra.as_slice()) else {
            unreachable!("prepare reads back the two scalars it was given");
        };
        let (n, a, c) = (p.dims.n, p.dims.a, p.dims.c);
        let (cls_preds, pos, loc_sum) = (p.cls_preds, p.pos, p.loc_sum);

        // Per-anchor cross entropy for the mining, without gradient.
        let ce = tch::no_grad(|| {
            cross_entropy_rows(
                &cls_preds.reshape([n * a, c]),
                &cls_targets.reshape([n * a]),
            )
        })
        .reshape([n, a]);
        let neg = self.mine_negatives(&ce, &candidates, &k, k_max);
        self.calls.fetch_add(1, Ordering::Relaxed);
        // cls_loss[pos|neg].sum(): the same cross entropy again, with gradient, on the kept
        // anchors only (a few percent), so the backward pass touches only their rows.
        let kept = indices_of(&pos.logical_or(&neg), p.dims.num_pos + num_neg);
        // (Fallible: a mask with another count than the one read back would pad `kept` with -1.)
        let kept_ce = cross_entropy_rows(
            &cls_preds.reshape([n * a, c]).f_index_select(0, &kept)?,
            &cls_targets.reshape([n * a]).f_index_select(0, &kept)?,
        );
        let cls_sum = kept_ce.sum(kept_ce.kind());

        Ok(LossSums {
            loc_sum,
            cls_sum,
            num_pos: p.dims.num_pos,
            num_neg,
            num_valid: p.dims.num_valid,
            cls_mean: false,
            neg_mask: Some(neg),
        })
    }

    fn normalization(&self) -> Normalization {
        Normalization {
            min: self.config.normalizer_min,
            strict: self.config.strict,
        }
    }

    /// Continue the `random` mining streams from call `calls` (for an exact resume).
    fn set_calls(&self, calls: u64) {
        self.calls.store(calls, Ordering::Relaxed);
    }
}
