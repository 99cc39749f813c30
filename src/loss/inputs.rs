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

/// Sizes and counts of a validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchDims {
    pub n: i64,
    pub a: i64,
    pub c: i64,
    /// Whether any anchor is labelled -1 (ignore).
    pub has_ignored: bool,
    /// Positive anchors (label > 0) in the batch.
    pub num_pos: i64,
    /// Anchors that are not ignored (label >= 0) in the batch.
    pub num_valid: i64,
}

/// The labels a loss accepts: `-1 ..= C-1` with a background column, `-1 ..= C` without.
pub(crate) struct LabelRule {
    pub background_column: bool,
    /// How the loss reads labels, for error messages.
    pub meaning: &'static str,
}

/// What every loss starts from: the batch's sizes and counts, the classification logits in the
/// compute kind, the positives and the Smooth-L1 sum over them.
pub(crate) struct Prepared {
    pub dims: BatchDims,
    /// The loss's own integer scalars (see [`LossInputs::prepare`]), read with the counts.
    pub extra: Vec<i64>,
    /// `[N, A, C]` in the compute kind.
    pub cls_preds: Tensor,
    /// `[N, A]` bool: `cls_targets > 0`.
    pub pos: Tensor,
    /// Smooth-L1 summed over the positive anchors, scalar.
    pub loc_sum: Tensor,
}

fn check_float(name: &str, t: &Tensor) -> Result<()> {
    if !crate::device::is_float(t.kind()) {
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

/// `t`'s NaN and inf elements, as a bool mask of its shape.
fn non_finite(t: &Tensor) -> Tensor {
    t.isfinite().logical_not()
}

/// One tensor `check_finite` looks at.
///
/// The test on the device is one reduction: a sum is NaN or inf whenever an element is (no
/// mix of NaN and inf adds up to a finite number), so `flag = !isfinite(sum)` is 0 for a finite
/// tensor. It is read back with the other counts: no extra wait. A raised flag may also come
/// from a sum that overflowed over finite elements; only then are the elements themselves
/// counted (a second wait, on that path alone), which names the tensor or clears it.
struct FiniteCheck<'a> {
    name: &'static str,
    /// The tensor named in the message.
    tensor: &'a Tensor,
    /// The values tested: `tensor`, or the part of it that is read (others zeroed).
    values: Tensor,
    /// Where the values were tested, for the message.
    place: &'static str,
    /// `[]` int64 on the device: 1 when the sum of `values` is not finite.
    flag: Tensor,
}

impl<'a> FiniteCheck<'a> {
    /// `values` (a part of `tensor`, or all of it) must be finite.
    fn new(name: &'static str, tensor: &'a Tensor, values: Tensor, place: &'static str) -> Self {
        let _no_grad = tch::no_grad_guard();
        let sum = values.sum(super::compute_kind(&values));
        let flag = sum.isfinite().logical_not().to_kind(Kind::Int64);
        Self {
            name,
            tensor,
            values,
            place,
            flag,
        }
    }

    /// Every element of `tensor`.
    fn whole(name: &'static str, tensor: &'a Tensor) -> Self {
        Self::new(name, tensor, tensor.shallow_clone(), "")
    }

    /// The error for a raised `flag` (as read back), when an element is NaN or inf.
    fn check(&self, flag: i64) -> Result<()> {
        if flag == 0 {
            return Ok(());
        }
        let bad = non_finite(&self.values)
            .sum(Kind::Int64)
            .f_int64_value(&[])?;
        if bad > 0 {
            bail_input!(
                "{}: {bad} non-finite values (NaN or inf){} in shape {:?}",
                self.name,
                self.place,
                self.tensor.size()
            );
        }
        Ok(())
    }
}

impl LossInputs<'_> {
    /// Check shapes, dtypes and devices (no device work). Returns `(N, A, C)`.
    fn check_shapes(&self) -> Result<(i64, i64, i64)> {
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
        Ok((n, a, cls[2]))
    }

    /// With `check_finite`: the predictions, and the targets at the positive anchors (the only
    /// ones read), must hold no NaN or inf.
    fn finite_checks(&self, pos: &Tensor) -> Vec<FiniteCheck<'_>> {
        let at_positives = self
            .loc_targets
            .masked_fill(&pos.unsqueeze(2).logical_not(), 0.0);
        vec![
            FiniteCheck::whole("loc_preds", self.loc_preds),
            FiniteCheck::whole("cls_preds", self.cls_preds),
            FiniteCheck::new(
                "loc_targets",
                self.loc_targets,
                at_positives,
                " at positive anchors",
            ),
        ]
    }

    /// Validate the batch, then the predictions in the compute kind, the positives and the
    /// Smooth-L1 sum over them (`beta`): the start every loss shares.
    ///
    /// Everything the host must know about the targets (the label range, the positive and the
    /// valid counts, with `check_finite` the non-finite counts) and the integer scalars
    /// `extra(pos)` a loss adds are read back in one transfer: on CUDA, the loss then waits for
    /// the device once, here.
    pub(crate) fn prepare(
        &self,
        labels: &LabelRule,
        check_finite: bool,
        beta: f64,
        extra: impl FnOnce(&Tensor) -> Vec<Tensor>,
    ) -> Result<Prepared> {
        let (n, a, c) = self.check_shapes()?;
        let max_label = if labels.background_column { c - 1 } else { c };
        let targets = self.cls_targets;
        let pos = targets.gt(0);
        let (lo, hi) = if targets.numel() > 0 {
            targets.aminmax(None, false)
        } else {
            let zero = targets.new_zeros([], (Kind::Int64, targets.device()));
            (zero.shallow_clone(), zero)
        };
        let mut scalars = vec![lo, hi, pos.sum(Kind::Int64), targets.ge(0).sum(Kind::Int64)];
        let finite_checks = if check_finite {
            self.finite_checks(&pos)
        } else {
            Vec::new()
        };
        scalars.extend(finite_checks.iter().map(|f| f.flag.shallow_clone()));
        let extra_start = scalars.len();
        scalars.extend(extra(&pos).into_iter().map(|t| match t.kind() {
            Kind::Int64 => t,
            _ => t.to_kind(Kind::Int64),
        }));
        let values = crate::device::read_back(&Tensor::stack(&scalars, 0))?;
        let (lo, hi, num_pos, num_valid) = (values[0], values[1], values[2], values[3]);
        if lo < -1 || hi > max_label {
            let bad = if lo < -1 { lo } else { hi };
            bail_input!(
                "cls_targets: label {bad} out of range [-1, {max_label}] for cls_preds with C = {c} ({})",
                labels.meaning
            );
        }
        for (f, &flag) in finite_checks.iter().zip(&values[4..extra_start]) {
            f.check(flag)?;
        }
        let dims = BatchDims {
            n,
            a,
            c,
            has_ignored: lo == -1,
            num_pos,
            num_valid,
        };
        let loc_preds = in_compute_kind(self.loc_preds);
        let loc_targets = in_compute_kind(self.loc_targets).to_kind(loc_preds.kind());
        let loc_sum = smooth_l1_over_positives(&loc_preds, &loc_targets, &pos, num_pos, beta);
        Ok(Prepared {
            dims,
            extra: values[extra_start..].to_vec(),
            cls_preds: in_compute_kind(self.cls_preds),
            pos,
            loc_sum,
        })
    }

    /// [`Self::prepare`] for a loss that reads back no integer scalars of its own.
    pub(crate) fn prepare_plain(
        &self,
        labels: &LabelRule,
        check_finite: bool,
        beta: f64,
    ) -> Result<Prepared> {
        self.prepare(labels, check_finite, beta, |_| Vec::new())
    }
}
