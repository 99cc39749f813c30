//! Loss behaviour beyond parity: bad input gives errors naming the tensor, strict mode, half
//! precision, mining tie-breaks, random-mining streams, zero-positive batches.

use tch::{Device, Kind, Tensor};
use tchcv::loss::mining::top_k_per_row;
use tchcv::loss::{DetectionLoss, LossInputs, LossKind, SsdLoss, SsdLossConfig};

struct Batch {
    loc_preds: Tensor,
    loc_targets: Tensor,
    cls_preds: Tensor,
    cls_targets: Tensor,
}

impl Batch {
    /// N images, A anchors, C classes (with background), `pos_every`-th anchor positive.
    fn new(n: i64, a: i64, c: i64, pos_every: i64) -> Self {
        tch::manual_seed(3);
        let idx = Tensor::arange(a, (Kind::Int64, Device::Cpu)).repeat([n, 1]);
        let cls_targets =
            idx.remainder(pos_every).eq(0).to_kind(Kind::Int64) * (idx.remainder(c - 1) + 1);
        Self {
            loc_preds: Tensor::randn([n, a, 4], (Kind::Float, Device::Cpu)),
            loc_targets: Tensor::randn([n, a, 4], (Kind::Float, Device::Cpu)),
            cls_preds: Tensor::randn([n, a, c], (Kind::Float, Device::Cpu)),
            cls_targets,
        }
    }

    fn inputs(&self) -> LossInputs<'_> {
        LossInputs {
            loc_preds: &self.loc_preds,
            loc_targets: &self.loc_targets,
            cls_preds: &self.cls_preds,
            cls_targets: &self.cls_targets,
        }
    }
}

/// A copy of `targets` with label `v` at image 1, anchor 2.
fn with_label(targets: &Tensor, v: i64) -> Tensor {
    let t = targets.copy();
    let _ = t.get(1).get(2).fill_(v);
    t
}

fn ssd(config: SsdLossConfig) -> SsdLoss {
    SsdLoss::new(config).unwrap()
}

fn error_of(loss: &dyn DetectionLoss, inputs: &LossInputs) -> String {
    let err = loss
        .forward(inputs)
        .expect_err("bad input must be an error");
    assert!(tchcv::is_bad_input(&err), "marked as bad input: {err:#}");
    format!("{err:#}")
}

#[test]
fn bad_inputs_name_the_tensor() {
    let b = Batch::new(2, 50, 5, 7);
    let loss = ssd(SsdLossConfig::default());
    let wrong_cls = Tensor::zeros([2, 51, 5], (Kind::Float, Device::Cpu));
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_preds: &wrong_cls,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("cls_preds") && msg.contains("[2, 51, 5]"),
        "{msg}"
    );

    let wrong_loc = Tensor::zeros([2, 50, 3], (Kind::Float, Device::Cpu));
    let msg = error_of(
        &loss,
        &LossInputs {
            loc_preds: &wrong_loc,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("loc_preds") && msg.contains("[2, 50, 3]"),
        "{msg}"
    );

    let float_targets = b.cls_targets.to_kind(Kind::Float);
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_targets: &float_targets,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("cls_targets") && msg.contains("int64"),
        "{msg}"
    );

    let too_big = with_label(&b.cls_targets, 5);
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_targets: &too_big,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("cls_targets") && msg.contains("label 5") && msg.contains("[-1, 4]"),
        "{msg}"
    );

    let too_small = with_label(&b.cls_targets, -2);
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_targets: &too_small,
            ..b.inputs()
        },
    );
    assert!(msg.contains("label -2"), "{msg}");

    let nan = b.cls_preds.copy();
    let _ = nan.get(1).get(3).get(2).fill_(f64::NAN);
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_preds: &nan,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("cls_preds") && msg.contains("1 non-finite"),
        "{msg}"
    );

    // The check sums each tensor on the device and counts elements only when a sum is not
    // finite: a sum that overflows over finite values (f32 max is 3.4e38) is not an error, and
    // NaN and inf together (whose sum is NaN) are counted as two.
    let huge = b.cls_preds.copy();
    let _ = huge.get(0).fill_(3e38);
    loss.forward(&LossInputs {
        cls_preds: &huge,
        ..b.inputs()
    })
    .expect("finite predictions whose sum overflows pass the check");
    let _ = huge.get(1).get(0).get(0).fill_(f64::NAN);
    let _ = huge.get(1).get(2).get(1).fill_(f64::NEG_INFINITY);
    let msg = error_of(
        &loss,
        &LossInputs {
            cls_preds: &huge,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("cls_preds") && msg.contains("2 non-finite"),
        "{msg}"
    );
    let inf_loc = b.loc_preds.copy();
    let _ = inf_loc.get(0).get(5).get(3).fill_(f64::INFINITY);
    let msg = error_of(
        &loss,
        &LossInputs {
            loc_preds: &inf_loc,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("loc_preds") && msg.contains("1 non-finite"),
        "{msg}"
    );

    // Non-finite targets are only an error where they are read (positive anchors).
    let inf_targets = b.loc_targets.copy();
    let _ = inf_targets.get(0).get(1).fill_(f64::INFINITY); // anchor 1: background
    loss.forward(&LossInputs {
        loc_targets: &inf_targets,
        ..b.inputs()
    })
    .expect("inf at a negative is ignored");
    let _ = inf_targets.get(0).get(0).fill_(f64::INFINITY); // anchor 0: positive
    let msg = error_of(
        &loss,
        &LossInputs {
            loc_targets: &inf_targets,
            ..b.inputs()
        },
    );
    assert!(
        msg.contains("loc_targets") && msg.contains("positive"),
        "{msg}"
    );

    // The focal loss has no background column: labels may reach C.
    let focal = LossKind::Focal.build(serde_json::json!({})).unwrap();
    focal
        .forward(&LossInputs {
            cls_targets: &too_big,
            ..b.inputs()
        })
        .expect("label C is valid for focal");
    let beyond = with_label(&b.cls_targets, 6);
    let msg = error_of(
        focal.as_ref(),
        &LossInputs {
            cls_targets: &beyond,
            ..b.inputs()
        },
    );
    assert!(msg.contains("label 6") && msg.contains("[-1, 5]"), "{msg}");
}

#[test]
fn bad_options_are_named() {
    let err = LossKind::Ssd
        .build(serde_json::json!({"alpha": 0.25}))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown field `alpha`"),
        "{err:#}"
    );
    let err = LossKind::Focal
        .build(serde_json::json!({"alpha": 1.5}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("alpha"), "{err:#}");
    let err = LossKind::SoftmaxFocal
        .build(serde_json::json!({"class_weights": "static"}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("class_counts"), "{err:#}");
    let err = LossKind::Ssd
        .build(serde_json::json!({"neg_pos_ratio": -1.0}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("neg_pos_ratio"), "{err:#}");
}

#[test]
fn zero_positive_batch_is_finite_and_strict_mode_errors() {
    let mut b = Batch::new(2, 40, 4, 5);
    b.cls_targets = b.cls_targets.zeros_like();
    for kind in [LossKind::Ssd, LossKind::Focal, LossKind::SoftmaxFocal] {
        let loss = kind.build(serde_json::json!({})).unwrap();
        let out = loss.forward(&b.inputs()).unwrap();
        let stats = out.stats();
        assert!(stats.total.is_finite(), "{kind:?}: {stats:?}");
        assert_eq!(stats.num_pos, 0);
        assert_eq!(out.normalizer, 1.0);
        let strict = kind.build(serde_json::json!({"strict": true})).unwrap();
        let msg = error_of(strict.as_ref(), &b.inputs());
        assert!(msg.contains("no positive anchors"), "{msg}");
    }
    // SSD without positives and without min_negatives trains nothing; with it, the background.
    let plain = ssd(SsdLossConfig::default()).forward(&b.inputs()).unwrap();
    assert_eq!((plain.num_neg, plain.stats().total), (0, 0.0));
    let cfg = SsdLossConfig {
        min_negatives: 5,
        ..Default::default()
    };
    let out = ssd(cfg).forward(&b.inputs()).unwrap();
    assert_eq!(out.num_neg, 10, "5 per image");
    assert!(out.stats().cls_sum > 0.0);
}

#[test]
fn half_precision_predictions_compute_in_f32() {
    let b = Batch::new(2, 64, 6, 9);
    for kind in [Kind::Half, Kind::BFloat16] {
        let loc_h = b.loc_preds.to_kind(kind).set_requires_grad(true);
        let cls_h = b.cls_preds.to_kind(kind).set_requires_grad(true);
        let loc_f = loc_h.detach().to_kind(Kind::Float);
        let cls_f = cls_h.detach().to_kind(Kind::Float);
        for loss_kind in [LossKind::Ssd, LossKind::Focal, LossKind::SoftmaxFocal] {
            let loss = loss_kind.build(serde_json::json!({})).unwrap();
            let half = loss
                .forward(&LossInputs {
                    loc_preds: &loc_h,
                    cls_preds: &cls_h,
                    ..b.inputs()
                })
                .unwrap();
            let full = loss
                .forward(&LossInputs {
                    loc_preds: &loc_f,
                    cls_preds: &cls_f,
                    ..b.inputs()
                })
                .unwrap();
            assert_eq!(
                half.total.kind(),
                Kind::Float,
                "{loss_kind:?} computes in f32"
            );
            assert_eq!(
                half.stats().total,
                full.stats().total,
                "{loss_kind:?} {kind:?}"
            );
            let g = Tensor::run_backward(&[&half.total], &[&cls_h], false, false);
            assert_eq!(
                g[0].kind(),
                kind,
                "gradient flows back to the {kind:?} input"
            );
        }
    }
}

/// top_k_per_row equals a stable double sort (torchcv with stable=True), ties included.
#[test]
fn mining_equals_stable_double_sort_with_ties() {
    tch::manual_seed(11);
    let (n, a) = (6, 300);
    // Few distinct values: many ties.
    let scores = Tensor::randint(5, [n, a], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);
    let candidates = Tensor::rand([n, a], (Kind::Float, Device::Cpu)).gt(0.2);
    let num_candidates = candidates.sum_dim_intlist(1, false, Kind::Int64);
    let k = (Tensor::from_slice(&[0i64, 1, 17, 40, 100, 1000])).minimum(&num_candidates);
    let k_max = k.max().int64_value(&[]);
    let mask = top_k_per_row(&scores, &candidates, &k, k_max);

    // torchcv: sort -score ascending (non-candidates last), rank = argsort of the order.
    let key = (-&scores).masked_fill(&candidates.logical_not(), f64::INFINITY);
    let (_, order) = key.sort_stable(true, 1, false);
    let (_, rank) = order.sort_stable(true, 1, false);
    let want = rank.lt_tensor(&k.unsqueeze(1));
    assert!(
        mask.equal(&want),
        "mask differs from the stable double sort"
    );
    let per_row = mask.sum_dim_intlist(1, false, Kind::Int64);
    assert!(per_row.equal(&k));
}

/// NaN scores (a diverged model's cross entropy) rank as the largest (tied with +inf) and every
/// row still gets exactly k: the SSD loss selects the kept rows with that count
/// (`nonzero_static`).
#[test]
fn mining_keeps_exactly_k_per_row_with_nan_and_inf_scores() {
    tch::manual_seed(12);
    let (n, a) = (4, 50);
    let scores = Tensor::rand([n, a], (Kind::Float, Device::Cpu));
    let nan = Tensor::rand([n, a], (Kind::Float, Device::Cpu)).lt(0.3);
    let inf = Tensor::rand([n, a], (Kind::Float, Device::Cpu)).lt(0.1);
    let scores = scores
        .masked_fill(&nan, f64::NAN)
        .masked_fill(&inf, f64::INFINITY);
    // Row 3: every score NaN.
    let _ = scores.get(3).fill_(f64::NAN);
    let candidates = Tensor::rand([n, a], (Kind::Float, Device::Cpu)).gt(0.2);
    let num_candidates = candidates.sum_dim_intlist(1, false, Kind::Int64);
    let k = Tensor::from_slice(&[3i64, 10, 25, 7]).minimum(&num_candidates);
    let k_max = k.max().int64_value(&[]);
    let mask = top_k_per_row(&scores, &candidates, &k, k_max);
    let per_row = mask.sum_dim_intlist(1, false, Kind::Int64);
    assert!(per_row.equal(&k), "{per_row:?} != {k:?}");
    let count = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]);
    let outside = mask.logical_and(&candidates.logical_not());
    assert_eq!(count(&outside), 0, "a non-candidate was kept");
    // Row 0 keeps 3: NaN and +inf candidates rank first.
    let row0_top = nan
        .get(0)
        .logical_or(&inf.get(0))
        .logical_and(&candidates.get(0));
    assert!(
        count(&row0_top) >= 3,
        "this seed gives too few NaN/inf candidates"
    );
    let kept_elsewhere = mask.get(0).logical_and(&row0_top.logical_not());
    assert_eq!(count(&kept_elsewhere), 0, "row 0 kept a finite score first");
}

#[test]
fn random_mining_draws_a_new_stream_each_call() {
    let b = Batch::new(2, 200, 4, 10);
    let cfg = SsdLossConfig {
        mining: tchcv::loss::NegativeMining::Random,
        seed: 5,
        ..Default::default()
    };
    let loss = ssd(cfg.clone());
    let first = loss.forward(&b.inputs()).unwrap().neg_mask.unwrap();
    let second = loss.forward(&b.inputs()).unwrap().neg_mask.unwrap();
    assert!(
        !first.equal(&second),
        "the second call draws other negatives"
    );
    // Resuming at call 1 reproduces the second draw.
    let resumed = ssd(cfg.clone());
    resumed.set_calls(1);
    assert!(resumed
        .forward(&b.inputs())
        .unwrap()
        .neg_mask
        .unwrap()
        .equal(&second));
    let other_seed = ssd(SsdLossConfig { seed: 6, ..cfg });
    assert!(!other_seed
        .forward(&b.inputs())
        .unwrap()
        .neg_mask
        .unwrap()
        .equal(&first));
}

#[test]
fn ignored_anchors_take_no_part() {
    let b = Batch::new(2, 120, 5, 6);
    let loss = ssd(SsdLossConfig::default());
    let base = loss.forward(&b.inputs()).unwrap();
    // Mark some negatives as ignored, and make them the "hardest" by far.
    let ignore = Tensor::arange(120, (Kind::Int64, Device::Cpu))
        .remainder(6)
        .eq(1)
        .repeat([2, 1]);
    let targets = b.cls_targets.masked_fill(&ignore, -1);
    let boosted = b.cls_preds.copy();
    let _ = boosted.select(2, 0).masked_fill_(&ignore, -50.0);
    let out = loss
        .forward(&LossInputs {
            cls_targets: &targets,
            cls_preds: &boosted,
            ..b.inputs()
        })
        .unwrap();
    let mask = out.neg_mask.as_ref().unwrap();
    assert_eq!(
        mask.logical_and(&ignore).sum(Kind::Int64).int64_value(&[]),
        0,
        "never mined"
    );
    assert_eq!(out.num_pos, base.num_pos);
    let cls_preds = b.cls_preds.copy().set_requires_grad(true);
    let out = loss
        .forward(&LossInputs {
            cls_targets: &targets,
            cls_preds: &cls_preds,
            ..b.inputs()
        })
        .unwrap();
    let g = Tensor::run_backward(&[&out.total], &[&cls_preds], false, false);
    let g_ignored = g[0]
        .abs()
        .sum_dim_intlist(2, false, Kind::Float)
        .masked_select(&ignore);
    assert_eq!(
        g_ignored.max().double_value(&[]),
        0.0,
        "no gradient at ignored anchors"
    );
}

/// The focal loss's sparse arrangement equals the textbook one-hot elementwise sum.
#[test]
fn focal_sum_equals_the_one_hot_elementwise_sum() {
    tch::manual_seed(5);
    let (v, c) = (500, 7);
    let x = Tensor::randn([v, c], (Kind::Double, Device::Cpu)) * 4.0;
    let _ = x.narrow(0, 0, 10).fill_(100.0);
    let _ = x.narrow(0, 10, 10).fill_(-100.0);
    let y = Tensor::randint(c + 1, [v], (Kind::Int64, Device::Cpu))
        * Tensor::rand([v], (Kind::Double, Device::Cpu)).lt(0.3);
    let t = y.one_hot(c + 1).narrow(1, 1, c).to_kind(Kind::Double);
    for (alpha, gamma) in [
        (Some(0.25), 2.0),
        (None, 2.0),
        (Some(0.5), 0.0),
        (None, 1.5),
    ] {
        let want = tchcv::loss::sigmoid_focal_loss(&x, &t, alpha, gamma)
            .sum(Kind::Double)
            .double_value(&[]);
        let got = tchcv::loss::focal_sum(&x, &y, alpha, gamma).double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-9 * want.abs(),
            "alpha {alpha:?} gamma {gamma}: {got} vs {want}"
        );
    }
}
