//! The detectors train: every trainable variable gets a gradient through the loss, and a few
//! optimizer steps on one fixed batch bring the detection loss down.

mod common;

use std::path::PathBuf;

use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
use tchcv::loss::{LossInputs, LossKind};
use tchcv::models::build_from_file;
use tchcv::spec::ModelSpec;

/// A shipped spec with `edit` applied, written to scratch dir `name`.
fn edited(name: &str, from: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let from = common::repo().join("models").join(from);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
    edit(&mut value);
    let path = common::scratch(&format!("models_training/{name}")).join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    path
}

/// A RetinaNet small enough for the CPU: 128x128, ResNet-18, 64 channels, two head convs.
fn tiny_retina() -> PathBuf {
    edited("retina", "retinanet.json", |v| {
        v["input_size"] = serde_json::json!([128, 128]);
        v["anchors"]["feature_maps"] = serde_json::json!([16, 8, 4, 2, 1]);
        v.as_object_mut().unwrap().remove("num_anchors");
        v["backbone"] = serde_json::json!("resnet18");
        v["network"] =
            serde_json::json!({"fpn_channels": 64, "head_convs": 2, "head_norm": "group_norm"});
    })
}

/// Random targets for a batch: every 7th anchor and the last one positive (so every map has
/// positives), with random labels 1..=classes.
fn targets(n: i64, a: i64, classes: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let loc_targets = Tensor::randn([n, a, 4], (Kind::Float, Device::Cpu)) * 0.5;
    let index = Tensor::arange(a, (Kind::Int64, Device::Cpu));
    let positive = index.remainder(7).eq(0).logical_or(&index.eq(a - 1));
    let labels = Tensor::randint_low(1, classes + 1, [n, a], (Kind::Int64, Device::Cpu));
    (loc_targets, labels * positive.to_kind(Kind::Int64))
}

/// Build `spec_path`, then run `steps` Adam steps on one batch; returns the first loss and the
/// least of the last three.
/// Before the first step, checks that every trainable variable has a non-zero gradient.
fn fit(spec_path: &std::path::Path, classes: i64, n: i64, steps: usize) -> (f64, f64) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let (spec, detector) = build_from_file(vs.root(), spec_path, classes).unwrap();
    let loss_kind: LossKind = spec.loss.parse().unwrap();
    // Every negative in the SSD loss, so every anchor's scores get a gradient.
    let options = match loss_kind {
        LossKind::Ssd => serde_json::json!({"mining": "all"}),
        _ => serde_json::json!({}),
    };
    let loss = loss_kind.build(options).unwrap();
    let [w, h] = spec.input_size;
    let images = Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu));
    let (loc_targets, cls_targets) = targets(n, spec.num_anchors(), classes, 11);
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let mut losses = Vec::new();
    for step in 0..steps {
        let (loc_preds, cls_preds) = detector.forward_t(&images, true).unwrap();
        let out = loss
            .forward(&LossInputs {
                loc_preds: &loc_preds,
                loc_targets: &loc_targets,
                cls_preds: &cls_preds,
                cls_targets: &cls_targets,
            })
            .unwrap();
        opt.zero_grad();
        out.total.backward();
        if step == 0 {
            check_gradients(&vs, &spec);
        }
        opt.step();
        losses.push(out.total.double_value(&[]));
    }
    eprintln!("{}: losses {losses:.3?}", spec.name);
    let tail = &losses[steps.saturating_sub(3)..];
    (
        losses[0],
        tail.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

fn check_gradients(vs: &nn::VarStore, spec: &ModelSpec) {
    let mut without = Vec::new();
    let mut trainable = 0;
    for (name, var) in vs.variables() {
        if !var.requires_grad() {
            continue;
        }
        trainable += 1;
        let grad = var.grad();
        if !grad.defined() || grad.abs().max().double_value(&[]) == 0.0 {
            without.push(name);
        }
    }
    assert!(trainable > 0);
    without.sort();
    assert!(
        without.is_empty(),
        "{}: no gradient for {without:?}",
        spec.name
    );
}

#[test]
fn the_small_ssd_fits_a_fixed_batch() {
    let path = common::repo().join("models/ssd_small.json");
    let (first, last) = fit(&path, 3, 4, 12);
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn a_retinanet_fits_a_fixed_batch() {
    let (first, last) = fit(&tiny_retina(), 3, 2, 12);
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn ssd300_passes_gradients_to_every_layer() {
    // One step only (VGG16 at 300x300 on a CPU).
    let path = common::repo().join("models/ssd300.json");
    fit(&path, 20, 1, 1);
}
