//! Focal losses with a focusing exponent 0 < gamma < 1 at saturated logits (+-200): where p_t
//! saturates to 1, `(1 - p_t)^gamma` has an infinite derivative and the textbook autograd gives
//! `0 * inf = NaN`. tchcv's gradients there must be finite and equal their limit, 0; everywhere
//! else they must match the textbook formula evaluated in float64.

use tch::{Kind, Reduction, Tensor};
use tchcv::loss::{
    sigmoid_focal_loss, DetectionLoss, FocalLoss, FocalLossConfig, LossInputs, SoftmaxFocalLoss,
    SoftmaxFocalLossConfig,
};

const GAMMA: f64 = 0.5;
const ALPHA: f64 = 0.25;
/// A saturated logit: sigmoid and softmax round p_t to exactly 1 in f32 and f64.
const BIG: f64 = 200.0;

/// Classification logits `[V, C]` (f64), labels `[V]` and which rows are saturated to their
/// label (or ignored): rows saturated to the right answer, a row saturated to a wrong one, an
/// ignored row and moderate rows. `background` says whether column 0 is the background
/// (softmax) or label k is column k - 1 (sigmoid, 0 = background, no column).
fn batch(background: bool) -> (Tensor, Vec<i64>, Vec<bool>) {
    let c = 4;
    let col = |label: i64| if background { label } else { label - 1 };
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut labels = Vec::new();
    // Saturated and right: every class confidently right (p_t = 1 everywhere in the row).
    for label in [0, 1, 3] {
        let mut row = vec![-BIG; c as usize];
        if label > 0 || background {
            row[col(label) as usize] = BIG;
        }
        rows.push(row);
        labels.push(label);
    }
    // Saturated and wrong (p_t = 0 at the class; finite textbook gradients).
    rows.push(vec![BIG, -BIG, -BIG, -BIG]);
    labels.push(2);
    // An ignored row (no loss, no gradient) holding saturated logits.
    rows.push(vec![BIG, -BIG, BIG, -BIG]);
    labels.push(-1);
    // Moderate rows, one saturated cell among them.
    rows.push(vec![0.3, -1.2, 2.5, -BIG]);
    labels.push(2);
    rows.push(vec![-0.7, 1.1, -2.0, 0.05]);
    labels.push(0);
    rows.push(vec![1.5, 0.2, -0.4, 3.0]);
    labels.push(1);
    let flat: Vec<f64> = rows.concat();
    let x = Tensor::from_slice(&flat).view([rows.len() as i64, c]);
    let at_limit = vec![true, true, true, false, true, false, false, false];
    (x, labels, at_limit)
}

/// Gradient of the textbook sigmoid focal loss (torchvision `sigmoid_focal_loss`, fvcore) in
/// float64 for logits `x` `[V, C]` and labels (k = column k - 1, 0 = background, -1 = ignore).
fn textbook_sigmoid(x: &Tensor, labels: &[i64]) -> (f64, Tensor) {
    let x = x.to_kind(Kind::Double).detach().set_requires_grad(true);
    let (v, c) = x.size2().unwrap();
    let mut t = vec![0f64; (v * c) as usize];
    let mut valid = vec![0f64; v as usize];
    for (i, &label) in labels.iter().enumerate() {
        if label > 0 {
            t[i * c as usize + label as usize - 1] = 1.0;
        }
        valid[i] = f64::from(label >= 0);
    }
    let t = Tensor::from_slice(&t).view([v, c]);
    let valid = Tensor::from_slice(&valid).view([v, 1]);
    let p = x.sigmoid();
    let ce = x.binary_cross_entropy_with_logits::<Tensor>(&t, None, None, Reduction::None);
    let p_t: Tensor = &p * &t + (1.0 - &p) * (1.0 - &t);
    let alpha_t: Tensor = &t * ALPHA + (1.0 - &t) * (1.0 - ALPHA);
    let base: Tensor = 1.0 - p_t;
    let loss = (ce * base.pow_tensor_scalar(GAMMA) * alpha_t * valid).sum(Kind::Double);
    let grad = Tensor::run_backward(&[&loss], &[&x], false, false).remove(0);
    (loss.double_value(&[]), grad)
}

/// Gradient of the textbook softmax focal loss `-(1 - p_t)^gamma log p_t` (no class weights)
/// in float64 for logits `x` `[V, C]` with background column 0 and labels (-1 = ignore).
fn textbook_softmax(x: &Tensor, labels: &[i64]) -> (f64, Tensor) {
    let x = x.to_kind(Kind::Double).detach().set_requires_grad(true);
    let y = Tensor::from_slice(&labels.iter().map(|&l| l.max(0)).collect::<Vec<_>>());
    let valid: Vec<f64> = labels.iter().map(|&l| f64::from(l >= 0)).collect();
    let log_p_t = x
        .log_softmax(1, Kind::Double)
        .gather(1, &y.unsqueeze(1), false)
        .squeeze_dim(1);
    let p_t = log_p_t.exp();
    let base: Tensor = 1.0 - p_t;
    let loss =
        (-base.pow_tensor_scalar(GAMMA) * &log_p_t * Tensor::from_slice(&valid)).sum(Kind::Double);
    let grad = Tensor::run_backward(&[&loss], &[&x], false, false).remove(0);
    (loss.double_value(&[]), grad)
}

/// `[V, C]` true where `p_t` saturates to 1: the logit is +-BIG on the side of its target.
fn saturated_right(x: &Tensor, target: &Tensor) -> Tensor {
    let up = x.ge(BIG).logical_and(&target.eq(1.0));
    let down = x.le(-BIG).logical_and(&target.eq(0.0));
    up.logical_or(&down)
}

/// Compare a gradient with the textbook one: finite everywhere; at most `1e-30` in magnitude
/// (the limit 0) where `saturated`; elsewhere within 1e-4 relative or 1e-6 absolute.
fn check_grad(what: &str, got: &Tensor, want: &Tensor, saturated: &Tensor) {
    let got = got.to_kind(Kind::Double);
    assert!(
        got.isfinite().all().int64_value(&[]) == 1,
        "{what}: non-finite gradient {got}"
    );
    let at_saturated = got.abs().masked_select(saturated);
    assert!(
        at_saturated.numel() > 0,
        "{what}: the batch has no saturated cells"
    );
    let worst = at_saturated.max().double_value(&[]);
    assert!(
        worst <= 1e-30,
        "{what}: gradient {worst:e} at a saturated cell, expected its limit 0"
    );
    let elsewhere = saturated.logical_not();
    let (g, w) = (
        got.masked_select(&elsewhere),
        want.masked_select(&elsewhere),
    );
    assert!(
        w.isfinite().all().int64_value(&[]) == 1,
        "{what}: the reference is not finite off the saturated cells"
    );
    let excess = ((&g - &w).abs() - (w.abs() * 1e-4 + 1e-6))
        .max()
        .double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: gradient {g} differs from the float64 textbook {w}"
    );
}

/// The classification gradient and sum of `loss` on a one-image batch of rows `x` (`[V, C]`,
/// cast to `kind`) and their labels.
fn cls_grad(loss: &dyn DetectionLoss, x: &Tensor, labels: &[i64], kind: Kind) -> (f64, Tensor) {
    let v = x.size()[0];
    let cls_preds = x
        .to_kind(kind)
        .unsqueeze(0)
        .detach()
        .set_requires_grad(true);
    let loc_preds = Tensor::zeros([1, v, 4], (kind, tch::Device::Cpu)).set_requires_grad(true);
    let loc_targets = Tensor::zeros([1, v, 4], (kind, tch::Device::Cpu));
    let cls_targets = Tensor::from_slice(labels).view([1, v]);
    let inputs = LossInputs {
        loc_preds: &loc_preds,
        loc_targets: &loc_targets,
        cls_preds: &cls_preds,
        cls_targets: &cls_targets,
    };
    let sums = loss.sums(&inputs).unwrap();
    let grad = Tensor::run_backward(&[&sums.cls_sum], &[&cls_preds], false, false).remove(0);
    (sums.cls_sum.double_value(&[]), grad.squeeze_dim(0))
}

fn assert_value(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{what}: {got} vs float64 textbook {want}"
    );
}

#[test]
fn sigmoid_focal_gradients_are_finite_at_saturated_logits() {
    let (x, labels, _) = batch(false);
    let (want_value, want_grad) = textbook_sigmoid(&x, &labels);
    let (v, c) = x.size2().unwrap();
    let mut onehot = vec![0f64; (v * c) as usize];
    for (i, &label) in labels.iter().enumerate() {
        if label > 0 {
            onehot[i * c as usize + label as usize - 1] = 1.0;
        }
    }
    let t = Tensor::from_slice(&onehot).view([v, c]);
    let ignored = Tensor::from_slice(&labels.iter().map(|&l| l < 0).collect::<Vec<_>>())
        .view([v, 1])
        .expand([v, c], false);
    let saturated = saturated_right(&x, &t).logical_or(&ignored);
    let loss = FocalLoss::new(FocalLossConfig {
        gamma: GAMMA,
        ..FocalLossConfig::default()
    })
    .unwrap();
    for kind in [Kind::Float, Kind::Double] {
        let (value, grad) = cls_grad(&loss, &x, &labels, kind);
        assert_value(&format!("FocalLoss {kind:?} cls_sum"), value, want_value);
        check_grad(
            &format!("FocalLoss {kind:?}"),
            &grad,
            &want_grad,
            &saturated,
        );
    }

    // The elementwise form (torchvision's) on the valid rows, against the same textbook.
    let keep: Vec<i64> = (0..v).filter(|&i| labels[i as usize] >= 0).collect();
    let keep = Tensor::from_slice(&keep);
    let (xv, tv) = (x.index_select(0, &keep), t.index_select(0, &keep));
    let saturated_v = saturated_right(&xv, &tv);
    let xd = xv.to_kind(Kind::Double).set_requires_grad(true);
    let p = xd.sigmoid();
    let ce = xd.binary_cross_entropy_with_logits::<Tensor>(&tv, None, None, Reduction::None);
    let p_t: Tensor = &p * &tv + (1.0 - &p) * (1.0 - &tv);
    let w: Tensor = &tv * ALPHA + (1.0 - &tv) * (1.0 - ALPHA);
    let base: Tensor = 1.0 - p_t;
    let book = (ce * base.pow_tensor_scalar(GAMMA) * w).sum(Kind::Double);
    let want = Tensor::run_backward(&[&book], &[&xd], false, false).remove(0);
    for kind in [Kind::Float, Kind::Double] {
        let xk = xv.to_kind(kind).set_requires_grad(true);
        let out = sigmoid_focal_loss(&xk, &tv.to_kind(kind), Some(ALPHA), GAMMA).sum(kind);
        let grad = Tensor::run_backward(&[&out], &[&xk], false, false).remove(0);
        assert_value(
            &format!("sigmoid_focal_loss {kind:?}"),
            out.double_value(&[]),
            book.double_value(&[]),
        );
        check_grad(
            &format!("sigmoid_focal_loss {kind:?}"),
            &grad,
            &want,
            &saturated_v,
        );
    }
}

#[test]
fn softmax_focal_gradients_are_finite_at_saturated_logits() {
    let (x, labels, at_limit) = batch(true);
    let (want_value, want_grad) = textbook_softmax(&x, &labels);
    let (v, c) = x.size2().unwrap();
    // A row saturated to its label has p_t = 1: every cell of the row is at its limit (0).
    let saturated = Tensor::from_slice(&at_limit)
        .view([v, 1])
        .expand([v, c], false);
    let loss = SoftmaxFocalLoss::new(SoftmaxFocalLossConfig {
        gamma: GAMMA,
        ..SoftmaxFocalLossConfig::default()
    })
    .unwrap();
    for kind in [Kind::Float, Kind::Double] {
        let (value, grad) = cls_grad(&loss, &x, &labels, kind);
        assert_value(
            &format!("SoftmaxFocalLoss {kind:?} cls_sum"),
            value,
            want_value,
        );
        check_grad(
            &format!("SoftmaxFocalLoss {kind:?}"),
            &grad,
            &want_grad,
            &saturated,
        );
    }
}
