//! The region proposal network's loss for a given sample: torchvision
//! `RegionProposalNetwork.compute_loss` (Faster R-CNN's first stage).
//!
//! ```text
//! torchvision compute_loss                               RpnLoss::sums / forward
//! pos, neg = fg_bg_sampler(labels)                       sampled_labels [N, A] (tchcv::bbox::sampler)
//! sampled_pos_inds = where(cat(pos))[0]                  pos = sampled_labels == 1, flat indices
//! sampled_neg_inds = where(cat(neg))[0]                  neg = sampled_labels == 0, flat indices
//! sampled_inds = cat([sampled_pos_inds, ..neg_inds])     kept = cat(pos, neg) (the same order)
//! box_loss = smooth_l1_loss(deltas[pos], targets[pos],   loc_sum = smooth_l1_over_positives(..,
//!            beta=1/9, reduction="sum")                            beta 1/9)
//!            / sampled_inds.numel()                        / D
//! objectness_loss = binary_cross_entropy_with_logits(    cls_sum = BCE(objectness[kept],
//!     objectness[sampled_inds], labels[sampled_inds])              labels[kept], sum)
//!     (mean: / sampled_inds.numel())                       / D
//! loss = objectness_loss + box_loss                      total = (loc_sum + cls_sum) / D
//! ```
//!
//! `D = max(1, num_sampled)`, the sampled anchors of the whole batch (torchvision concatenates the
//! images' samples, so it is a batch total there too). With nothing sampled the loss is 0 instead
//! of torchvision's NaN. The logged `loc_per_pos` and `cls_per_pos` of [`LossOutput::stats`] are
//! torchvision's `loss_rpn_box_reg` and `loss_objectness`: for this loss the normaliser is the
//! sample, not the positives ([`RpnLoss::normalizer`]; a distributed run all-reduces
//! `num_valid`, which counts the sampled anchors).
//!
//! [`SampledRpnLoss`] is what training uses (`LossKind::Rpn`): the sampler
//! ([`crate::bbox::sampler`]) and [`RpnLoss`] behind the [`DetectionLoss`] interface, so the
//! trainer feeds it like the other losses (`cls_preds [N, A, 1]` objectness, `cls_targets`
//! the labels 1 / 0 / -1 before sampling, `loc_targets` the regression targets).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::{check_option, in_compute_kind, indices_of, smooth_l1_over_positives};
use super::{DetectionLoss, LossInputs, LossOutput, LossSums, Normalization, NormalizeBy};
use crate::bail_input;
use crate::bbox::sampler::{sample_batch_of, SamplerConfig, SamplerKind};

/// Options of [`RpnLoss`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpnLossConfig {
    /// Smooth-L1 transition point (torchvision's RPN: 1/9).
    pub beta: f64,
    /// Check that the sampled objectness and the positives' deltas and targets are finite.
    pub check_finite: bool,
}

impl Default for RpnLossConfig {
    fn default() -> Self {
        Self {
            beta: 1.0 / 9.0,
            check_finite: true,
        }
    }
}

/// One batch's RPN outputs and sampled targets (`N` images, `A` anchors, the anchor order of
/// `tchcv anchors`).
pub struct RpnLossInputs<'a> {
    /// `[N, A]` float: objectness logits.
    pub objectness: &'a Tensor,
    /// `[N, A, 4]` float: predicted deltas.
    pub deltas: &'a Tensor,
    /// `[N, A, 4]` float: encoded targets (read at sampled positives only).
    pub regression_targets: &'a Tensor,
    /// `[N, A]` int64: 1 sampled positive, 0 sampled negative, -1 not sampled.
    pub sampled_labels: &'a Tensor,
}

/// torchvision's RPN loss: BCE over the sampled anchors' objectness plus Smooth-L1 (beta 1/9)
/// over the sampled positives' deltas, both divided by the number of sampled anchors.
#[derive(Debug, Clone, Default)]
pub struct RpnLoss {
    pub config: RpnLossConfig,
}

/// Shapes, kinds and devices of the inputs; returns `(N, A)`.
fn check_inputs(inputs: &RpnLossInputs) -> Result<(i64, i64)> {
    let o = inputs.objectness.size();
    let [n, a] = o[..] else {
        bail_input!("objectness: expected [N, A] logits, got shape {o:?}");
    };
    let device = inputs.objectness.device();
    let boxes = [
        ("deltas", inputs.deltas),
        ("regression_targets", inputs.regression_targets),
    ];
    for (name, t) in [("objectness", inputs.objectness)].into_iter().chain(boxes) {
        if !crate::device::is_float(t.kind()) {
            bail_input!("{name}: expected a float tensor, got {:?}", t.kind());
        }
    }
    for (name, t) in boxes {
        if t.size() != [n, a, 4] {
            bail_input!("{name}: expected [{n}, {a}, 4], got {:?}", t.size());
        }
    }
    let labels = inputs.sampled_labels;
    if labels.size() != [n, a] || labels.kind() != Kind::Int64 {
        bail_input!(
            "sampled_labels: expected [{n}, {a}] int64 (1, 0, -1), got {:?} {:?}",
            labels.kind(),
            labels.size()
        );
    }
    for (name, t) in boxes.into_iter().chain([("sampled_labels", labels)]) {
        if t.device() != device {
            bail_input!(
                "{name}: on {:?} but objectness is on {device:?}",
                t.device()
            );
        }
    }
    Ok((n, a))
}

/// `[]` int64: the number of `mask` rows (`[N, A]`) where `t` (`[N, A]` or `[N, A, 4]`) is not
/// finite.
fn non_finite_at(t: &Tensor, mask: &Tensor) -> Tensor {
    let bad = t.isfinite().logical_not();
    let bad = if bad.dim() == 3 {
        bad.any_dim(2, false)
    } else {
        bad
    };
    bad.logical_and(mask).sum(Kind::Int64)
}

impl RpnLoss {
    pub fn new(config: RpnLossConfig) -> Result<Self> {
        check_option("beta", config.beta, 0.0, true)?;
        Ok(Self { config })
    }

    /// The normaliser for `num_sampled` sampled anchors: `max(1, num_sampled)`.
    pub fn normalizer(num_sampled: i64) -> f64 {
        (num_sampled as f64).max(1.0)
    }

    /// The un-normalised parts: `loc_sum` (Smooth-L1 over sampled positives), `cls_sum` (BCE
    /// over sampled anchors), `num_pos`, `num_neg`, `num_valid = num_pos + num_neg` (the
    /// sample), `cls_mean: true`, `neg_mask`: the sampled negatives `[N, A]` bool.
    pub fn sums(&self, inputs: &RpnLossInputs) -> Result<LossSums> {
        check_inputs(inputs)?;
        let labels = inputs.sampled_labels;
        let (pos, neg) = (labels.eq(1), labels.eq(0));
        let counts = {
            let _no_grad = tch::no_grad_guard();
            let mut scalars = vec![
                pos.sum(Kind::Int64),
                neg.sum(Kind::Int64),
                labels.lt(-1).logical_or(&labels.gt(1)).sum(Kind::Int64),
            ];
            if self.config.check_finite {
                let sampled = pos.logical_or(&neg);
                scalars.push(non_finite_at(inputs.objectness, &sampled));
                scalars.push(non_finite_at(inputs.deltas, &pos));
                scalars.push(non_finite_at(inputs.regression_targets, &pos));
            }
            Vec::<i64>::try_from(Tensor::stack(&scalars, 0).to_device(Device::Cpu))?
        };
        let (num_pos, num_neg) = (counts[0], counts[1]);
        if counts[2] > 0 {
            bail_input!(
                "sampled_labels: {} values are not 1, 0 or -1 (1 sampled positive, 0 sampled \
                 negative, -1 not sampled)",
                counts[2]
            );
        }
        for (name, &bad) in ["objectness", "deltas", "regression_targets"]
            .iter()
            .zip(counts.get(3..).unwrap_or(&[]))
        {
            if bad > 0 {
                bail_input!("{name}: NaN or inf at {bad} sampled anchors");
            }
        }
        let deltas = in_compute_kind(inputs.deltas);
        let targets = inputs.regression_targets.to_kind(deltas.kind());
        let loc_sum = smooth_l1_over_positives(&deltas, &targets, &pos, num_pos, self.config.beta);
        let kept = Tensor::cat(&[indices_of(&pos, num_pos), indices_of(&neg, num_neg)], 0);
        let logits = in_compute_kind(inputs.objectness)
            .reshape([-1])
            .f_index_select(0, &kept)?;
        let wanted = labels
            .reshape([-1])
            .f_index_select(0, &kept)?
            .to_kind(logits.kind());
        let cls_sum =
            logits.binary_cross_entropy_with_logits::<Tensor>(&wanted, None, None, Reduction::Sum);
        Ok(LossSums {
            loc_sum,
            cls_sum,
            num_pos,
            num_neg,
            num_valid: num_pos + num_neg,
            cls_mean: true,
            neg_mask: Some(neg),
        })
    }

    /// The loss of this batch: both parts divided by `D = max(1, num_sampled)`; `stats()` gives
    /// torchvision's `loss_rpn_box_reg` as `loc_per_pos` and `loss_objectness` as `cls_per_pos`.
    pub fn forward(&self, inputs: &RpnLossInputs) -> Result<LossOutput> {
        let sums = self.sums(inputs)?;
        let d = Self::normalizer(sums.num_valid);
        Ok(sums.finish(d, d))
    }
}

/// Options of [`SampledRpnLoss`] (`LossKind::Rpn`; JSON keys are the field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampledRpnLossConfig {
    /// `random` (torchvision's balanced sampler), `hard` (OHEM negatives) or `all`.
    pub sampler: SamplerKind,
    /// Anchors sampled per image (torchvision: 256).
    pub batch_size_per_image: i64,
    /// At most this share of an image's sample is positive (torchvision: 0.5).
    pub positive_fraction: f64,
    /// Seed of the draws: image `g` of call `c` (the training step) draws from
    /// `Rng::keyed(seed, [c, g])`.
    pub seed: u64,
    /// Smooth-L1 transition point (torchvision's RPN: 1/9).
    pub beta: f64,
    /// Check that the sampled objectness and the positives' deltas and targets are finite.
    pub check_finite: bool,
    /// This process's rank in a data-parallel run of `world_size` processes: image `i` of its
    /// batch is image `g = i * world_size + rank` of the global batch (the loader's sharding),
    /// so the ranks together draw the sample one process with the global batch would.
    pub rank: u64,
    pub world_size: u64,
}

impl Default for SampledRpnLossConfig {
    fn default() -> Self {
        let sampler = SamplerConfig::default();
        let loss = RpnLossConfig::default();
        Self {
            sampler: sampler.kind,
            batch_size_per_image: sampler.batch_size_per_image,
            positive_fraction: sampler.positive_fraction,
            seed: sampler.seed,
            beta: loss.beta,
            check_finite: loss.check_finite,
            rank: 0,
            world_size: 1,
        }
    }
}

/// Faster R-CNN's RPN loss as training runs it: per image a sample of the labelled anchors
/// ([`sample_batch_of`]), then [`RpnLoss`] on it, normalised by the sampled anchors
/// ([`NormalizeBy::Sampled`]). Each call draws a new sample (call `c` is the step; a resumed
/// run continues with [`DetectionLoss::set_calls`]).
#[derive(Debug)]
pub struct SampledRpnLoss {
    sampler: SamplerConfig,
    loss: RpnLoss,
    rank: u64,
    world_size: u64,
    /// Calls made so far: the stream index of the sampler.
    calls: AtomicU64,
}

impl SampledRpnLoss {
    pub fn new(config: SampledRpnLossConfig) -> Result<Self> {
        if config.world_size == 0 || config.rank >= config.world_size {
            bail_input!(
                "rank {} of world_size {}: out of range",
                config.rank,
                config.world_size
            );
        }
        if config.batch_size_per_image < 0 || !(0.0..=1.0).contains(&config.positive_fraction) {
            bail_input!(
                "batch_size_per_image must be >= 0 and positive_fraction in [0, 1], got {} and {}",
                config.batch_size_per_image,
                config.positive_fraction
            );
        }
        let loss = RpnLoss::new(RpnLossConfig {
            beta: config.beta,
            check_finite: config.check_finite,
        })?;
        Ok(Self {
            sampler: SamplerConfig {
                kind: config.sampler,
                batch_size_per_image: config.batch_size_per_image,
                positive_fraction: config.positive_fraction,
                seed: config.seed,
            },
            loss,
            rank: config.rank,
            world_size: config.world_size,
            calls: AtomicU64::new(0),
        })
    }

    /// The sampler's settings.
    pub fn sampler(&self) -> &SamplerConfig {
        &self.sampler
    }
}

/// cls_preds `[N, A, 1]` -> the objectness logits `[N, A]`, after checking that cls_targets
/// is `[N, A]` int64.
fn objectness_of(inputs: &LossInputs) -> Result<Tensor> {
    let size = inputs.cls_preds.size();
    let [n, a, 1] = size[..] else {
        bail_input!(
            "cls_preds: expected [N, A, 1] objectness logits (the RPN head's), got {size:?}"
        );
    };
    let targets = inputs.cls_targets;
    if targets.size() != [n, a] || targets.kind() != Kind::Int64 {
        bail_input!(
            "cls_targets: expected [{n}, {a}] int64 anchor labels (1 object, 0 background, -1 \
             ignored), got {:?} {:?}",
            targets.kind(),
            targets.size()
        );
    }
    Ok(inputs.cls_preds.f_squeeze_dim(2)?)
}

impl DetectionLoss for SampledRpnLoss {
    /// loc_preds, loc_targets: `[N, A, 4]` deltas and regression targets; cls_preds:
    /// `[N, A, 1]` objectness logits; cls_targets: `[N, A]` int64 labels before sampling
    /// (1, 0, -1: `RpnCoder::label`). Returns [`RpnLoss::sums`] of this call's sample.
    fn sums(&self, inputs: &LossInputs) -> Result<LossSums> {
        let objectness = objectness_of(inputs)?;
        let n = objectness.size()[0] as u64;
        let images: Vec<u64> = (0..n).map(|i| i * self.world_size + self.rank).collect();
        let call = self.calls.load(Ordering::Relaxed);
        let hard = (self.sampler.kind == SamplerKind::Hard).then_some(&objectness);
        let sampled = sample_batch_of(inputs.cls_targets, hard, &self.sampler, &[call], &images)?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.loss.sums(&RpnLossInputs {
            objectness: &objectness,
            deltas: inputs.loc_preds,
            regression_targets: inputs.loc_targets,
            sampled_labels: &sampled,
        })
    }

    /// `D = max(1, sampled anchors)`, never strict.
    fn normalization(&self) -> Normalization {
        Normalization {
            min: 1.0,
            strict: false,
        }
    }

    fn normalize_by(&self) -> NormalizeBy {
        NormalizeBy::Sampled
    }

    /// Continue the sampler's streams from call `calls` (for an exact resume).
    fn set_calls(&self, calls: u64) {
        self.calls.store(calls, Ordering::Relaxed);
    }
}
