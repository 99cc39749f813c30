//! The four tensors every detection loss takes, and their validation.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{in_compute_kind, smooth_l1_over_positives};
use crate::bail_input;

/// Predictions and encoded targets for a batch of `N` images with `A` anchors.
pub struct LossInputs<'a> {
    /// `[N, A, 4]` float: predicted box offsets.
    pub loc_preds: &'a Tensor,
    /// `[N, A, 4]` float: encoded target offsets (read at positive anchors only).
    pub loc_targets: &'a Tensor,
    /// `[N, A, C]` float: class logits.
    pub cls_preds: &'a Tensor,
    /// `[N, A]` int64: 0 = background, k > 0 = class, -1 = ignore.
    pub cls_targets: &'a Tensor,
}

/// Sizes of a validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchDims {
    pub n: i64,
    pub a: i64,
    pub c: i64,
    /// Whether any anchor is labelled -1 (ignore).
    pub has_ignored: bool,
}

/// The labels a loss accepts: `-1 ..= C-1` with a background column, `-1 ..= C` without.
pub(crate) struct LabelRule {
    pub background_column: bool,
    /// How the loss reads labels, for error messages.
    pub meaning: &'static str,
}

/// What every loss starts from: the batch's sizes, the classification logits in the compute
/// kind, the positives and the Smooth-L1 sum over them.
pub(crate) struct Prepared {
    pub dims: BatchDims,
    /// `[N, A, C]` in the compute kind.
    pub cls_preds: Tensor,
    /// `[N, A]` bool: `cls_targets > 0`.
    pub pos: Tensor,
    /// Smooth-L1 summed over the positive anchors, scalar.
    pub loc_sum: Tensor,
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

fn check_float(name: &str, t: &Tensor) -> Result<()> {
    if !is_float(t.kind()) {
        bail_input!(
            "{name}: expected a float tensor (f32, f64, f16 or bf16), got {:?} with shape {:?}",
            t.kind(),
            t.size()
        );
    }
    Ok(())
}

fn check_device(name: &str, t: &Tensor, device: Device) -> Result<()> {
    if t.device() != device {
        bail_input!(
            "{name}: on {:?} but loc_preds is on {device:?}; move all four tensors to one device",
            t.device()
        );
    }
    Ok(())
}

fn count_non_finite(t: &Tensor) -> i64 {
    t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[])
}

impl LossInputs<'_> {
    /// Check shapes, dtypes, devices and the label range; with `check_finite`, also that the
    /// predictions and the positive anchors' targets hold no NaN or inf.
    pub(crate) fn validate(&self, labels: &LabelRule, check_finite: bool) -> Result<BatchDims> {
        let loc = self.loc_preds.size();
        if loc.len() != 3 || loc[2] != 4 {
            bail_input!("loc_preds: expected shape [N, A, 4], got {loc:?}");
        }
        let (n, a) = (loc[0], loc[1]);
        let loc_t = self.loc_targets.size();
        if loc_t != loc {
            bail_input!("loc_targets: expected shape {loc:?} (as loc_preds), got {loc_t:?}");
        }
        let cls = self.cls_preds.size();
        if cls.len() != 3 || cls[0] != n || cls[1] != a || cls[2] < 1 {
            bail_input!(
                "cls_preds: expected shape [N, A, C] = [{n}, {a}, C] with C >= 1 (N and A from \
                 loc_preds {loc:?}), got {cls:?}"
            );
        }
        let c = cls[2];
        let max_label = if labels.background_column { c - 1 } else { c };
        let tgt = self.cls_targets.size();
        if tgt != [n, a] {
            bail_input!(
                "cls_targets: expected shape [{n}, {a}] (N and A from loc_preds), got {tgt:?}"
            );
        }
        check_float("loc_preds", self.loc_preds)?;
        check_float("loc_targets", self.loc_targets)?;
        check_float("cls_preds", self.cls_preds)?;
        if self.cls_targets.kind() != Kind::Int64 {
            bail_input!(
                "cls_targets: expected int64 labels, got {:?} with shape {tgt:?}",
                self.cls_targets.kind()
            );
        }
        let device = self.loc_preds.device();
        check_device("loc_targets", self.loc_targets, device)?;
        check_device("cls_preds", self.cls_preds, device)?;
        check_device("cls_targets", self.cls_targets, device)?;
        let mut has_ignored = false;
        if self.cls_targets.numel() > 0 {
            let lo = self.cls_targets.min().int64_value(&[]);
            has_ignored = lo == -1;
            let hi = self.cls_targets.max().int64_value(&[]);
            if lo < -1 || hi > max_label {
                let bad = if lo < -1 { lo } else { hi };
                bail_input!(
                    "cls_targets: label {bad} out of range [-1, {max_label}] for cls_preds with C = {c} ({})",
                    labels.meaning
                );
            }
        }
        if check_finite {
            for (name, t) in [("loc_preds", self.loc_preds), ("cls_preds", self.cls_preds)] {
                let bad = count_non_finite(t);
                if bad > 0 {
                    bail_input!(
                        "{name}: {bad} non-finite values (NaN or inf) in shape {:?}",
                        t.size()
                    );
                }
            }
            let pos = self
                .cls_targets
                .gt(0)
                .unsqueeze(2)
                .expand_as(self.loc_targets);
            let bad = count_non_finite(&self.loc_targets.masked_select(&pos));
            if bad > 0 {
                bail_input!(
                    "loc_targets: {bad} non-finite values (NaN or inf) at positive anchors in shape {loc:?}"
                );
            }
        }
        Ok(BatchDims {
            n,
            a,
            c,
            has_ignored,
        })
    }

    /// [`Self::validate`], then the predictions in the compute kind, the positives and the
    /// Smooth-L1 sum over them (`beta`): the start every loss shares.
    pub(crate) fn prepare(
        &self,
        labels: &LabelRule,
        check_finite: bool,
        beta: f64,
    ) -> Result<Prepared> {
        let dims = self.validate(labels, check_finite)?;
        let loc_preds = in_compute_kind(self.loc_preds);
        let loc_targets = in_compute_kind(self.loc_targets).to_kind(loc_preds.kind());
        let pos = self.cls_targets.gt(0);
        let loc_sum = smooth_l1_over_positives(&loc_preds, &loc_targets, &pos, beta);
        Ok(Prepared {
            dims,
            cls_preds: in_compute_kind(self.cls_preds),
            pos,
            loc_sum,
        })
    }
}
